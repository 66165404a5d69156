//! The model: gradients reach every parameter, training is reproducible bit
//! for bit, and the composed operations agree with their definitions.

use candle_core::{Device, Tensor};
use p2ptrain_protocol::{InnerOptimizer, RunManifest};
use p2ptrain_trainer::model::{layer_norm, log_softmax_last_dim, softmax_last_dim};
use p2ptrain_trainer::{LocalTrainer, ParamLayout, Preset};

fn inner(batch_size: u32) -> InnerOptimizer {
    InnerOptimizer {
        batch_size,
        ..RunManifest::default().inner
    }
}

/// A fixed batch of full-context windows over some text.
fn batch(batch_size: usize, context: usize) -> (Vec<u32>, Vec<u32>) {
    let text: Vec<u32> =
        b"Shall I compare thee to a summer's day? Thou art more lovely and more temperate. "
            .iter()
            .cycle()
            .take(batch_size * context + 64)
            .map(|&b| u32::from(b))
            .collect();
    let mut inputs = Vec::new();
    let mut targets = Vec::new();
    for row in 0..batch_size {
        let start = row * 7;
        inputs.extend_from_slice(&text[start..start + context]);
        targets.extend_from_slice(&text[start + 1..start + context + 1]);
    }
    (inputs, targets)
}

#[test]
fn every_parameter_receives_a_nonzero_gradient() {
    // Regression: candle's fused layer norm and softmax have no backward
    // pass, so gradients stopped silently and only the head learned.
    let config = Preset::Tiny.config();
    let layout = ParamLayout::gpt2(&config);
    // Non-trivial gains and biases so that no gradient vanishes by symmetry.
    let values: Vec<f32> = layout
        .initial_values(1)
        .iter()
        .enumerate()
        .map(|(i, v)| v + 0.01 * ((i % 7) as f32 - 3.0))
        .collect();
    let trainer = LocalTrainer::new(config, values, inner(4), 10, &Device::Cpu).unwrap();
    let (inputs, targets) = batch(4, config.context_len as usize);
    let (loss, grads) = trainer.gradient(&inputs, &targets).unwrap();
    assert!(
        loss > 4.0 && loss < 7.0,
        "initial loss {loss} should be near ln 256 = 5.55"
    );
    for spec in layout.specs() {
        let g = &grads[spec.range.clone()];
        let nonzero = g.iter().filter(|x| **x != 0.0).count();
        assert!(nonzero > 0, "{} gets no gradient", spec.name);
        assert!(
            g.iter().all(|x| x.is_finite()),
            "{} has a non-finite gradient",
            spec.name
        );
    }
}

#[test]
fn the_gradient_matches_finite_differences() {
    let config = Preset::Tiny.config();
    let layout = ParamLayout::gpt2(&config);
    let values = layout.initial_values(2);
    let trainer = LocalTrainer::new(config, values.clone(), inner(2), 10, &Device::Cpu).unwrap();
    let (inputs, targets) = batch(2, 16);
    let (_, grads) = trainer.gradient(&inputs, &targets).unwrap();
    // One entry of each kind of tensor, probed with central differences.
    for name in [
        "h.0.ln_1.weight",
        "h.1.attn.c_attn.weight",
        "h.0.mlp.c_fc.bias",
        "wpe.weight",
        "ln_f.bias",
    ] {
        let index = layout.get(name).unwrap().range.start + 3;
        let loss_at = |shift: f32| {
            let mut probe = values.clone();
            probe[index] += shift;
            let t = LocalTrainer::new(config, probe, inner(2), 10, &Device::Cpu).unwrap();
            f64::from(t.gradient(&inputs, &targets).unwrap().0)
        };
        let h = 1e-2;
        let numeric = (loss_at(h) - loss_at(-h)) / (2.0 * f64::from(h));
        let analytic = f64::from(grads[index]);
        assert!(
            (numeric - analytic).abs() <= 2e-3 + 0.05 * analytic.abs(),
            "{name}: analytic {analytic} vs numeric {numeric}"
        );
    }
}

#[test]
fn the_same_seed_gives_the_same_bits_after_training() {
    let config = Preset::Tiny.config();
    let run = || {
        let values = ParamLayout::gpt2(&config).initial_values(7);
        let mut trainer = LocalTrainer::new(config, values, inner(4), 20, &Device::Cpu).unwrap();
        let (inputs, targets) = batch(4, config.context_len as usize);
        for _ in 0..5 {
            trainer.step(&inputs, &targets).unwrap();
        }
        trainer.params().unwrap().to_vec()
    };
    let (a, b) = (run(), run());
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    assert_ne!(a, ParamLayout::gpt2(&config).initial_values(7));
}

#[test]
fn composed_operations_match_their_definitions() {
    let x = Tensor::new(&[[1.0f32, 2.0, 4.0], [-1.0, 0.0, 0.5]], &Device::Cpu).unwrap();
    let rows = x.to_vec2::<f32>().unwrap();

    let soft = softmax_last_dim(&x).unwrap().to_vec2::<f32>().unwrap();
    let log_soft = log_softmax_last_dim(&x).unwrap().to_vec2::<f32>().unwrap();
    for ((row, s), l) in rows.iter().zip(&soft).zip(&log_soft) {
        let z: f64 = row.iter().map(|&v| f64::from(v).exp()).sum();
        for ((&v, &s), &l) in row.iter().zip(s).zip(l) {
            let expected = f64::from(v).exp() / z;
            assert!((f64::from(s) - expected).abs() < 1e-6);
            assert!((f64::from(l) - expected.ln()).abs() < 1e-6);
        }
    }

    let w = Tensor::new(&[2.0f32, 1.0, 0.5], &Device::Cpu).unwrap();
    let b = Tensor::new(&[0.0f32, 1.0, -1.0], &Device::Cpu).unwrap();
    let normed = layer_norm(&x, &w, &b).unwrap().to_vec2::<f32>().unwrap();
    for (row, out) in rows.iter().zip(&normed) {
        let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / 3.0;
        let var = row
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / 3.0;
        for (i, (&v, &o)) in row.iter().zip(out).enumerate() {
            let expected = (f64::from(v) - mean) / (var + 1e-5).sqrt() * [2.0, 1.0, 0.5][i]
                + [0.0, 1.0, -1.0][i];
            assert!((f64::from(o) - expected).abs() < 1e-5, "{o} vs {expected}");
        }
    }
}

#[test]
fn a_context_longer_than_the_model_is_refused() {
    let config = Preset::Tiny.config();
    let values = ParamLayout::gpt2(&config).initial_values(0);
    let trainer = LocalTrainer::new(config, values, inner(1), 10, &Device::Cpu).unwrap();
    let too_long = vec![1u32; 65];
    assert!(trainer.gradient(&too_long, &too_long).is_err());
}

#[test]
fn loss_falls_on_the_bundled_corpus() {
    use p2ptrain_trainer::{Corpus, Sampler};
    let config = Preset::Tiny.config();
    let context = config.context_len as usize;
    let corpus = Corpus::bundled();
    let validation = corpus.validation_batches(4, 16, context, 1234).unwrap();
    let values = ParamLayout::gpt2(&config).initial_values(0);
    let mut trainer = LocalTrainer::new(config, values, inner(16), 60, &Device::Cpu).unwrap();
    let eval = |t: &LocalTrainer| {
        t.evaluate(
            validation
                .iter()
                .map(|b| (b.inputs.as_slice(), b.targets.as_slice())),
            16,
        )
        .unwrap()
    };
    let before = eval(&trainer);
    let mut sampler = Sampler::new(corpus.shard(0, 1).unwrap(), 0);
    for _ in 0..60 {
        let batch = sampler.next_batch(16, context).unwrap();
        trainer.step(&batch.inputs, &batch.targets).unwrap();
    }
    let after = eval(&trainer);
    // From uniform over 256 bytes (ln 256 = 5.55) to well below the
    // ~4.4 nats of English letter frequencies alone.
    assert!(before > 5.0, "before {before}");
    assert!(after < 3.3, "after 60 steps: {after} (before {before})");
}

#[test]
fn fused_kernels_give_the_gradient_of_the_composed_operations() {
    use p2ptrain_trainer::optim::AdamW;
    use p2ptrain_trainer::Gpt;
    let config = Preset::Tiny.config();
    let values = ParamLayout::gpt2(&config).initial_values(4);
    let (inputs, targets) = batch(4, 48);
    let gradient = |fused: bool| {
        let mut model = Gpt::new(config, &values, &Device::Cpu).unwrap();
        if !fused {
            model = model.without_fused_kernels();
        }
        let adam = AdamW::new(inner(4), 10, values.len());
        let trainer = LocalTrainer::with_optimizer(model, values.clone(), adam, 4).unwrap();
        trainer.gradient(&inputs, &targets).unwrap()
    };
    let ((loss_f, grad_f), (loss_c, grad_c)) = (gradient(true), gradient(false));
    assert!((loss_f - loss_c).abs() < 1e-5, "loss {loss_f} vs {loss_c}");
    let layout = ParamLayout::gpt2(&config);
    for spec in layout.specs() {
        let (f, c) = (&grad_f[spec.range.clone()], &grad_c[spec.range.clone()]);
        let scale = c.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let worst = f
            .iter()
            .zip(c)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            worst <= 1e-3 * scale + 1e-7,
            "{}: differs by {worst} (scale {scale})",
            spec.name
        );
    }
}
