//! The round's compressed update: the same payload whether computed from the
//! flat buffers by hand or by the trainer where the model lives, on the CPU
//! and (with `--features cuda`, where a GPU is present) on a GPU.

use candle_core::Device;
use p2ptrain_kernels::{compress, Payload};
use p2ptrain_protocol::{CompressionSettings, InnerOptimizer, RunManifest, ValueBits};
use p2ptrain_trainer::device::{self, ErrorFeedback, RESIDUAL_DECAY};
use p2ptrain_trainer::{LocalTrainer, ParamLayout, Preset};

fn inner() -> InnerOptimizer {
    InnerOptimizer {
        batch_size: 4,
        ..RunManifest::default().inner
    }
}

fn batch() -> (Vec<u32>, Vec<u32>) {
    let text: Vec<u32> =
        b"Now is the winter of our discontent made glorious summer by this sun of York. "
            .iter()
            .cycle()
            .take(4 * 64 + 8)
            .map(|&b| u32::from(b))
            .collect();
    let (mut inputs, mut targets) = (Vec::new(), Vec::new());
    for row in 0..4 {
        inputs.extend_from_slice(&text[row * 2..row * 2 + 64]);
        targets.extend_from_slice(&text[row * 2 + 1..row * 2 + 65]);
    }
    (inputs, targets)
}

fn settings() -> CompressionSettings {
    CompressionSettings {
        chunk_len: 4096,
        density: 0.05,
        value_bits: ValueBits::Four,
    }
}

/// Trains `steps` steps from `start` on `device`, then compresses the
/// update twice, the residual decayed after each (so the residual carried
/// over and its decay count); returns both payloads, the residual, and the
/// trained parameters.
fn round(device: &Device, start: &[f32], steps: usize) -> (Vec<Payload>, Vec<f32>, Vec<f32>) {
    let config = Preset::Tiny.config();
    let mut trainer = LocalTrainer::new(config, start.to_vec(), inner(), 20, device).unwrap();
    let mut feedback = ErrorFeedback::new(device, start.len()).unwrap();
    let (x, y) = batch();
    let mut payloads = Vec::new();
    trainer.set_params(start).unwrap();
    for _ in 0..steps {
        trainer.step(&x, &y).unwrap();
    }
    for _ in 0..2 {
        payloads.push(trainer.compress_update(&mut feedback, &settings()).unwrap());
        feedback.decay(RESIDUAL_DECAY).unwrap();
    }
    let trained = trainer.params().unwrap().to_vec();
    (payloads, feedback.values().unwrap(), trained)
}

/// The same two payloads and residual computed by hand on the host.
fn by_hand(start: &[f32], trained: &[f32]) -> (Vec<Payload>, Vec<f32>) {
    let delta: Vec<f32> = start.iter().zip(trained).map(|(s, t)| s - t).collect();
    let mut residual = vec![0.0; delta.len()];
    let mut payloads = Vec::new();
    for _ in 0..2 {
        payloads.push(compress(&delta, &mut residual, &settings()).unwrap());
        for r in &mut residual {
            *r *= RESIDUAL_DECAY;
        }
    }
    (payloads, residual)
}

#[test]
fn the_update_on_the_cpu_is_start_minus_trained_compressed() {
    let start = ParamLayout::gpt2(&Preset::Tiny.config()).initial_values(3);
    let (payloads, residual, trained) = round(&Device::Cpu, &start, 3);
    assert_ne!(trained, start, "training moved the parameters");
    let (expected, expected_residual) = by_hand(&start, &trained);
    assert_eq!(payloads, expected);
    assert_eq!(residual, expected_residual);
}

#[test]
fn a_payload_added_back_returns_to_the_residual() {
    let len = 10_000;
    let delta: Vec<f32> = (0..len).map(|i| ((i * 31) % 101) as f32 - 50.0).collect();
    let tensor = candle_core::Tensor::from_slice(&delta, len, &Device::Cpu).unwrap();
    let mut feedback = ErrorFeedback::new(&Device::Cpu, len).unwrap();
    let payload = feedback.compress(&tensor, &settings()).unwrap();
    feedback.add_back(&payload).unwrap();
    for (r, d) in feedback.values().unwrap().iter().zip(&delta) {
        assert!((r - d).abs() <= 1e-5 * d.abs().max(1.0), "{r} vs {d}");
    }
}

#[test]
fn a_decay_outside_zero_to_one_is_refused_and_the_residual_kept() {
    let len = 1_000;
    let delta: Vec<f32> = (0..len).map(|i| (i % 7) as f32 - 3.0).collect();
    let tensor = candle_core::Tensor::from_slice(&delta, len, &Device::Cpu).unwrap();
    let mut feedback = ErrorFeedback::new(&Device::Cpu, len).unwrap();
    feedback.compress(&tensor, &settings()).unwrap();
    let before = feedback.values().unwrap();
    assert!(before.iter().any(|r| *r != 0.0));
    for factor in [1.5, -0.5, f32::NAN] {
        assert!(feedback.decay(factor).is_err(), "{factor}");
        assert_eq!(feedback.values().unwrap(), before);
    }
    feedback.decay(0.5).unwrap();
    let halved: Vec<f32> = before.iter().map(|r| r * 0.5).collect();
    assert_eq!(feedback.values().unwrap(), halved);
}

#[test]
fn on_a_gpu_the_update_has_the_cpu_bytes() {
    let Ok(gpu) = device::parse("cuda:0") else {
        eprintln!("on_a_gpu_the_update_has_the_cpu_bytes: skipped, no CUDA device in this build or machine");
        return;
    };
    let start = ParamLayout::gpt2(&Preset::Tiny.config()).initial_values(5);
    let (payloads, residual, trained) = round(&gpu, &start, 5);
    assert_ne!(trained, start, "training on the GPU moved the parameters");
    // The GPU trains with its own summation order; what must match is the
    // compression of whatever it trained to.
    let (expected, expected_residual) = by_hand(&start, &trained);
    assert_eq!(payloads, expected);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&residual), bits(&expected_residual));
}
