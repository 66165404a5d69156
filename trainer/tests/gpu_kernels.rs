//! The fused ops' CUDA kernels against their CPU versions: forward values
//! and gradients on random inputs, op by op at the sizes of the `gpt2`
//! preset's rows, and for a whole model. They run where a GPU and the
//! `cuda` feature are present, and say they were skipped elsewhere.

use candle_core::{Device, Tensor, Var};
use p2ptrain_protocol::RunManifest;
use p2ptrain_trainer::fused::{
    AdamWMoment, AdamWUpdate, CausalAttention, CausalSoftmax, ColumnSums, CrossEntropy, Gelu,
    LayerNorm, Linear, MergeHeads, SplitHeads,
};
use p2ptrain_trainer::optim::AdamW;
use p2ptrain_trainer::{device, Gpt, LocalTrainer, ParamLayout, Preset};

fn gpu(test: &str) -> Option<Device> {
    match device::parse("cuda:0") {
        Ok(gpu) => Some(gpu),
        Err(_) => {
            eprintln!("{test}: skipped, no CUDA device in this build or machine");
            None
        }
    }
}

/// `n` values uniform in `[-spread, spread)` from `seed`.
fn random(n: usize, spread: f32, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * spread
        })
        .collect()
}

/// The output of `op` on `inputs` placed on `device`, then the gradient of
/// `Σ output · weights` with respect to each input, all flattened.
fn run(
    device: &Device,
    inputs: &[(&[f32], &[usize])],
    weights: &[f32],
    op: impl Fn(&[Tensor]) -> candle_core::Result<Tensor>,
) -> Vec<Vec<f32>> {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|(values, shape)| Var::from_slice(values, *shape, device).unwrap())
        .collect();
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = op(&tensors).unwrap();
    let w = Tensor::from_slice(weights, y.shape(), device).unwrap();
    let grads = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut out = vec![flat(&y)];
    out.extend(vars.iter().map(|v| flat(grads.get(v.as_tensor()).unwrap())));
    out
}

/// Every output of the GPU run within `tolerance` of the CPU's, by the
/// norm of the difference over the norm of the CPU's.
fn assert_close(what: &str, gpu: &[Vec<f32>], cpu: &[Vec<f32>], tolerance: f64) {
    assert_eq!(gpu.len(), cpu.len());
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        assert_eq!(g.len(), c.len(), "{what} output {i}");
        assert!(
            g.iter().all(|x| x.is_finite()),
            "{what} output {i}: not finite"
        );
        let diff: f64 = g.iter().zip(c).map(|(a, b)| f64::from(a - b).powi(2)).sum();
        let norm: f64 = c.iter().map(|b| f64::from(*b).powi(2)).sum();
        let relative = (diff / norm.max(f64::MIN_POSITIVE)).sqrt();
        assert!(
            relative <= tolerance,
            "{what} output {i}: relative error {relative:e}"
        );
    }
}

#[test]
fn gelu_on_the_gpu_matches_the_cpu() {
    let Some(gpu) = gpu("gelu_on_the_gpu_matches_the_cpu") else {
        return;
    };
    let n = 3 * 1_000_003;
    let (z, w) = (random(n, 8.0, 1), random(n, 1.0, 2));
    let shape = [n];
    let op = |t: &[Tensor]| t[0].apply_op1(Gelu);
    let (g, c) = (
        run(&gpu, &[(&z, &shape)], &w, op),
        run(&Device::Cpu, &[(&z, &shape)], &w, op),
    );
    assert_close("gelu", &g, &c, 1e-5);
}

#[test]
fn layer_norm_on_the_gpu_matches_the_cpu() {
    let Some(gpu) = gpu("layer_norm_on_the_gpu_matches_the_cpu") else {
        return;
    };
    // Rows not a multiple of the eight a block takes, nor of the splits.
    let (rows, d) = (1_003, 768);
    let x: Vec<f32> = random(rows * d, 3.0, 3).iter().map(|v| v + 0.5).collect();
    let (w, b) = (random(d, 1.5, 4), random(d, 0.5, 5));
    let weights = random(rows * d, 1.0, 6);
    let inputs: [(&[f32], &[usize]); 3] = [(&x, &[rows, d]), (&w, &[d]), (&b, &[d])];
    let op = |t: &[Tensor]| t[0].apply_op3(&t[1], &t[2], LayerNorm);
    let (g, c) = (
        run(&gpu, &inputs, &weights, op),
        run(&Device::Cpu, &inputs, &weights, op),
    );
    assert_close("layer norm", &g, &c, 1e-5);
}

#[test]
fn causal_softmax_on_the_gpu_matches_the_cpu() {
    let Some(gpu) = gpu("causal_softmax_on_the_gpu_matches_the_cpu") else {
        return;
    };
    for (time, seed) in [(1, 7), (33, 8), (300, 9), (1024, 10)] {
        let shape = [2, 3, time, time];
        let n = shape.iter().product();
        let (x, w) = (random(n, 10.0, seed), random(n, 1.0, seed + 100));
        let op = |t: &[Tensor]| t[0].apply_op1(CausalSoftmax { scale: 0.125 });
        let (g, c) = (
            run(&gpu, &[(&x, &shape)], &w, op),
            run(&Device::Cpu, &[(&x, &shape)], &w, op),
        );
        assert_close(&format!("causal softmax, time {time}"), &g, &c, 1e-5);
        // Above the diagonal, exact zeros.
        if time > 1 {
            assert_eq!((g[0][1], g[1][1]), (0.0, 0.0), "time {time}");
        }
    }
}

#[test]
fn cross_entropy_on_the_gpu_matches_the_cpu() {
    let Some(gpu) = gpu("cross_entropy_on_the_gpu_matches_the_cpu") else {
        return;
    };
    // GPT-2's vocabulary, more than the 1,024 threads that share a row.
    let (rows, vocab) = (97, 50_257);
    let logits = random(rows * vocab, 6.0, 11);
    let targets: Vec<u32> = random(rows, 1.0, 12)
        .iter()
        .map(|v| ((v + 1.0) / 2.0 * vocab as f32) as u32 % vocab as u32)
        .collect();
    let shape = [rows, vocab];
    let op = |t: &[Tensor]| {
        t[0].apply_op1(CrossEntropy {
            targets: targets.clone(),
        })
    };
    let (g, c) = (
        run(&gpu, &[(&logits, &shape)], &[0.75], op),
        run(&Device::Cpu, &[(&logits, &shape)], &[0.75], op),
    );
    assert_close("cross-entropy", &g, &c, 1e-5);
    // A target outside the vocabulary is an error on the device too.
    let bad = Tensor::from_slice(&logits[..vocab], (1, vocab), &gpu).unwrap();
    let out_of_range = CrossEntropy {
        targets: vec![vocab as u32],
    };
    assert!(bad.apply_op1(out_of_range).is_err());
}

#[test]
fn a_model_on_the_gpu_has_the_cpu_loss_and_gradient() {
    let Some(gpu) = gpu("a_model_on_the_gpu_has_the_cpu_loss_and_gradient") else {
        return;
    };
    let config = Preset::Tiny.config();
    let layout = ParamLayout::gpt2(&config);
    let values = layout.initial_values(4);
    let (batch, context) = (4, config.context_len as usize);
    let ids: Vec<u32> = random(batch * context + 1, 1.0, 13)
        .iter()
        .map(|v| ((v + 1.0) * 127.0) as u32 % config.vocab_size)
        .collect();
    let (inputs, targets) = (&ids[..batch * context], &ids[1..]);
    let gradient = |device: &Device, fused: bool| {
        let mut model = Gpt::new(config, &values, device).unwrap();
        if !fused {
            model = model.without_fused_kernels();
        }
        let mut inner = RunManifest::default().inner;
        inner.batch_size = batch as u32;
        let adam = AdamW::new(inner, 10, values.len());
        let trainer = LocalTrainer::with_optimizer(model, values.clone(), adam, batch).unwrap();
        trainer.gradient(inputs, targets).unwrap()
    };
    let (loss_cpu, grad_cpu) = gradient(&Device::Cpu, true);
    for fused in [true, false] {
        let (loss, grad) = gradient(&gpu, fused);
        assert!(
            (loss - loss_cpu).abs() < 1e-4,
            "fused {fused}: loss {loss} vs {loss_cpu}"
        );
        for spec in layout.specs() {
            let range = spec.range.clone();
            let (g, c) = (grad[range.clone()].to_vec(), grad_cpu[range].to_vec());
            assert_close(&format!("fused {fused}: {}", spec.name), &[g], &[c], 1e-3);
        }
    }
}

#[test]
fn a_linear_layer_on_the_gpu_matches_the_cpu() {
    let Some(gpu) = gpu("a_linear_layer_on_the_gpu_matches_the_cpu") else {
        return;
    };
    let (batch, time, d_in, d_out) = (3, 333, 768, 2304);
    let x = random(batch * time * d_in, 2.0, 14);
    let (w, b) = (random(d_in * d_out, 0.05, 15), random(d_out, 0.5, 16));
    let weights = random(batch * time * d_out, 1.0, 17);
    let inputs: [(&[f32], &[usize]); 3] = [
        (&x, &[batch, time, d_in]),
        (&w, &[d_in, d_out]),
        (&b, &[d_out]),
    ];
    let op = |t: &[Tensor]| t[0].apply_op3(&t[1], &t[2], Linear);
    let (g, c) = (
        run(&gpu, &inputs, &weights, op),
        run(&Device::Cpu, &inputs, &weights, op),
    );
    assert_close("linear", &g, &c, 1e-5);
    // The bias gradient alone, over more rows than the splits.
    let rows = random(5_000 * 77, 1.0, 18);
    let sums = |device: &Device| {
        let t = Tensor::from_slice(&rows, (5_000, 77), device).unwrap();
        let s = t.apply_op1_no_bwd(&ColumnSums).unwrap();
        vec![s.to_vec1::<f32>().unwrap()]
    };
    assert_close("column sums", &sums(&gpu), &sums(&Device::Cpu), 1e-5);
}

#[test]
fn attention_on_the_gpu_matches_the_cpu() {
    let Some(gpu) = gpu("attention_on_the_gpu_matches_the_cpu") else {
        return;
    };
    // GPT-2's heads, a shorter context.
    let (batch, time, heads, dim) = (2, 200, 12, 64);
    let width = heads * dim;
    let qkv = random(batch * time * 3 * width, 1.5, 19);
    let weights = random(batch * time * width, 1.0, 20);
    let shape = [batch, time, 3 * width];
    let op = |t: &[Tensor]| t[0].apply_op1(CausalAttention { heads });
    let (g, c) = (
        run(&gpu, &[(&qkv, &shape)], &weights, op),
        run(&Device::Cpu, &[(&qkv, &shape)], &weights, op),
    );
    assert_close("attention", &g, &c, 1e-5);
    // The head layouts are copies: the same values, exactly.
    let permuted = |device: &Device| {
        let t = Tensor::from_slice(&qkv, (batch, time, 3 * width), device).unwrap();
        let split = t.apply_op1_no_bwd(&SplitHeads { parts: 3, heads }).unwrap();
        let merged = split.apply_op1_no_bwd(&MergeHeads).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (flat(&split), flat(&merged))
    };
    let ((split_g, merged_g), (split_c, _)) = (permuted(&gpu), permuted(&Device::Cpu));
    assert!(split_g == split_c, "split heads differ");
    assert!(
        merged_g == qkv,
        "merging the split heads does not give them back"
    );
}

#[test]
fn adamw_on_the_gpu_matches_the_cpu() {
    let Some(gpu) = gpu("adamw_on_the_gpu_matches_the_cpu") else {
        return;
    };
    let n = 1_234_567;
    let (theta, g) = (random(n, 1.0, 21), random(n, 1e-2, 22));
    let (m, v) = (
        random(n, 1e-3, 23),
        random(n, 1e-5, 24)
            .iter()
            .map(|x| x.abs())
            .collect::<Vec<_>>(),
    );
    let step = |device: &Device| {
        let t = |values: &[f32]| Tensor::from_slice(values, n, device).unwrap();
        let (theta, g, m, v) = (t(&theta), t(&g), t(&m), t(&v));
        for square in [false, true] {
            let moment = AdamWMoment {
                coef: 0.7,
                beta: if square { 0.95 } else { 0.9 },
                square,
            };
            let target = if square { &v } else { &m };
            target.inplace_op2(&g, &moment).unwrap();
        }
        let update = AdamWUpdate {
            inv_bias2: 3.2,
            eps: 1e-8,
            step: 6e-4,
            decay: 0.99999,
        };
        theta.inplace_op3(&m, &v, &update).unwrap();
        [theta, m, v].map(|t| t.to_vec1::<f32>().unwrap()).to_vec()
    };
    assert_close("adamw", &step(&gpu), &step(&Device::Cpu), 1e-6);
}

#[test]
fn training_steps_on_the_gpu_follow_the_cpu() {
    let Some(gpu) = gpu("training_steps_on_the_gpu_follow_the_cpu") else {
        return;
    };
    let config = Preset::Tiny.config();
    let start = ParamLayout::gpt2(&config).initial_values(6);
    let (batch, context) = (4, config.context_len as usize);
    let train = |device: &Device| {
        let mut inner = RunManifest::default().inner;
        inner.batch_size = batch as u32;
        let mut trainer = LocalTrainer::new(config, start.clone(), inner, 100, device).unwrap();
        let mut losses = Vec::new();
        for seed in 0..3 {
            let ids: Vec<u32> = random(batch * context + 1, 1.0, 30 + seed)
                .iter()
                .map(|v| ((v + 1.0) * 127.0) as u32 % config.vocab_size)
                .collect();
            let report = trainer.step(&ids[..batch * context], &ids[1..]).unwrap();
            losses.push(report.loss);
        }
        (losses, trainer.params().unwrap().into_owned())
    };
    let ((losses_g, theta_g), (losses_c, theta_c)) = (train(&gpu), train(&Device::Cpu));
    for (g, c) in losses_g.iter().zip(&losses_c) {
        assert!((g - c).abs() < 1e-3, "losses {losses_g:?} vs {losses_c:?}");
    }
    // The moves away from the start agree, up to the gradients' rounding.
    let moved =
        |theta: &[f32]| -> Vec<f32> { theta.iter().zip(&start).map(|(t, s)| t - s).collect() };
    assert_close("update", &[moved(&theta_g)], &[moved(&theta_c)], 1e-2);
}
