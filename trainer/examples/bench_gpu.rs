//! GPU throughput: training steps of a preset in candle, and compression of
//! a pseudo-gradient of the same size on the device beside a plain
//! device-to-device copy of it. Also checks, at full size, that the device
//! payload and residual are bit-identical to the CPU's.
//!
//! `cargo run --release --features cuda -p p2ptrain-trainer --example bench_gpu -- [--preset gpt2] [--batch 8] [--steps 10] [--tf32] [--composed] [--train-only | --compress-only]`
//!
//! `scripts/bench-gpu.sh` runs it beside PyTorch eager on the same GPU and
//! prints the ratios.

use std::time::Instant;

use candle_core::Device;
use p2ptrain_kernels::cuda::{DeviceKernels, DeviceResidual};
use p2ptrain_protocol::{CompressionSettings, RunManifest, ValueBits};
use p2ptrain_trainer::optim::AdamW;
use p2ptrain_trainer::{device, Gpt, LocalTrainer, ParamLayout, Preset};

/// Dense fp32 rate of an H100/H200 SXM without tensor cores (FLOP/s), and
/// with TF32 tensor cores (dense), the denominators of MFU.
const PEAK_FP32: f64 = 67e12;
const PEAK_TF32: f64 = 495e12;

type Error = Box<dyn std::error::Error>;

/// GPU throughput of training and compression, beside their references.
#[derive(clap::Parser)]
struct Args {
    /// Model preset.
    #[arg(long, default_value = "gpt2")]
    preset: Preset,
    /// Sequences per step.
    #[arg(long, default_value_t = 8)]
    batch: u32,
    /// Timed training steps.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Untimed training steps before them.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Let matmuls use TF32.
    #[arg(long)]
    tf32: bool,
    /// Train with candle's composed operations instead of the fused CUDA
    /// kernels (GELU, layer norm, causal softmax, loss), for comparison.
    #[arg(long)]
    composed: bool,
    /// Measure compression only.
    #[arg(long, conflicts_with = "train_only")]
    compress_only: bool,
    /// Measure training only.
    #[arg(long)]
    train_only: bool,
}

fn main() -> Result<(), Error> {
    let Args {
        preset,
        batch,
        steps,
        warmup,
        tf32,
        composed,
        compress_only: skip_train,
        train_only: skip_compress,
    } = clap::Parser::parse();
    if steps == 0 {
        return Err("--steps must be at least 1".into());
    }
    let device = device::parse("cuda:0")?;
    candle_core::cuda::set_gemm_reduced_precision_f32(tf32);
    if !skip_train {
        train(preset, batch, (warmup, steps), (tf32, composed), &device)?;
    }
    if skip_compress {
        return Ok(());
    }
    compress(ParamLayout::gpt2(&preset.config()).len(), &device)
}

/// Times `steps` training steps after `warmup` untimed ones.
fn train(
    preset: Preset,
    batch: u32,
    (warmup, steps): (usize, usize),
    (tf32, composed): (bool, bool),
    device: &Device,
) -> Result<(), Error> {
    let config = preset.config();
    let values = ParamLayout::gpt2(&config).initial_values(0);
    let params = values.len();
    let mut inner = RunManifest::default().inner;
    inner.batch_size = batch;
    let mut model = Gpt::new(config, &values, device)?;
    if composed {
        model = model.without_fused_kernels();
    }
    let adam = AdamW::new(inner, 1000, params);
    let mut trainer = LocalTrainer::with_optimizer(model, values, adam, batch as usize)?;
    let context = config.context_len as usize;
    let tokens = batch as usize * context;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || -> (Vec<u32>, Vec<u32>) {
        let ids: Vec<u32> = (0..tokens + 1)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (rng % u64::from(config.vocab_size)) as u32
            })
            .collect();
        (ids[..tokens].to_vec(), ids[1..].to_vec())
    };
    for _ in 0..warmup {
        let (x, y) = next();
        trainer.step(&x, &y)?;
    }
    let mut times = Vec::with_capacity(steps);
    let mut last_loss = 0.0;
    for _ in 0..steps {
        let (x, y) = next();
        let started = Instant::now();
        last_loss = trainer.step(&x, &y)?.loss;
        times.push(started.elapsed().as_secs_f64());
    }
    device.synchronize()?;
    let (free, total_memory) = p2ptrain_kernels::cuda::cudarc::driver::result::mem_get_info()?;
    println!(
        "GPU memory in use after the timed steps: {:.1} of {:.1} GiB",
        (total_memory - free) as f64 / (1u64 << 30) as f64,
        total_memory as f64 / (1u64 << 30) as f64
    );
    // Where a step's time goes: the forward pass with the loss, and the
    // backward pass, each timed alone; the optimizer is the rest.
    let model = trainer.model();
    let (x, y) = next();
    let (x, y) = (
        model.tokens(&x, batch as usize)?,
        model.tokens(&y, batch as usize)?,
    );
    let mut phases = [Vec::new(), Vec::new()];
    for _ in 0..3 {
        device.synchronize()?;
        let started = Instant::now();
        let loss = model.loss(&x, &y)?;
        device.synchronize()?;
        phases[0].push(started.elapsed().as_secs_f64());
        let started = Instant::now();
        let grads = loss.backward()?;
        device.synchronize()?;
        phases[1].push(started.elapsed().as_secs_f64());
        drop(grads);
    }
    let total: f64 = times.iter().sum();
    times.sort_by(f64::total_cmp);
    let median = times[steps / 2];
    for phase in &mut phases {
        phase.sort_by(f64::total_cmp);
    }
    println!(
        "  per step: forward + loss {:.1} ms, backward {:.1} ms, AdamW and the rest {:.1} ms",
        phases[0][1] * 1e3,
        phases[1][1] * 1e3,
        (median - phases[0][1] - phases[1][1]) * 1e3
    );
    let per_second = tokens as f64 / median;
    let (l, t, d) = (config.n_layer as f64, context as f64, config.d_model as f64);
    let flops_per_token = 6.0 * params as f64 + 12.0 * l * t * d;
    let (peak, precision) = if tf32 {
        (PEAK_TF32, "tf32")
    } else {
        (PEAK_FP32, "fp32")
    };
    println!(
        "candle train {} {precision}{} params {params} batch {batch}x{context}: {steps} steps in {total:.2}s, median {:.1} ms/step -> {per_second:.0} tok/s, MFU {:.1}% of {:.0} TFLOP/s (loss {last_loss:.3})",
        preset.name(),
        if composed { " composed" } else { "" },
        median * 1e3,
        100.0 * per_second * flops_per_token / peak,
        peak / 1e12,
    );
    Ok(())
}

/// Compression of `len` random floats on the device against a copy of the
/// same buffer, and the bit-for-bit check against the CPU.
fn compress(len: usize, device: &Device) -> Result<(), Error> {
    let Device::Cuda(gpu) = device else {
        return Err("compression needs a CUDA device".into());
    };
    let stream = gpu.cuda_stream();
    let kernels = DeviceKernels::new(stream.clone())?;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let host: Vec<f32> = (0..len)
        .map(|_| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            ((rng >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 1e-3
        })
        .collect();
    let delta = stream.clone_htod(&host)?;
    let mut copy = stream.alloc_zeros::<f32>(len)?;
    let time = |f: &mut dyn FnMut() -> Result<(), Error>| -> Result<f64, Error> {
        for _ in 0..3 {
            f()?;
        }
        let mut runs = Vec::new();
        for _ in 0..20 {
            stream.synchronize()?;
            let started = Instant::now();
            f()?;
            stream.synchronize()?;
            runs.push(started.elapsed().as_secs_f64());
        }
        runs.sort_by(f64::total_cmp);
        Ok(runs[runs.len() / 2])
    };
    let copy_s = time(&mut || Ok(stream.memcpy_dtod(&delta, &mut copy)?))?;
    let gb = (len * 4) as f64 / 1e9;
    println!(
        "d2d copy {len} f32: {:.3} ms -> {:.0} GB/s of buffer ({:.0} GB/s read + written)",
        copy_s * 1e3,
        gb / copy_s,
        2.0 * gb / copy_s
    );
    for (density, bits) in [(0.01, ValueBits::Eight), (0.1, ValueBits::Four)] {
        let settings = CompressionSettings {
            density,
            value_bits: bits,
            ..CompressionSettings::default()
        };
        let mut residual = DeviceResidual::zeros(&stream, len)?;
        let on_device_s = time(&mut || {
            kernels.compress_on_device(&delta.as_view(), &mut residual, &settings)?;
            Ok(())
        })?;
        let compress_s = time(&mut || {
            kernels.compress(&delta.as_view(), &mut residual, &settings)?;
            Ok(())
        })?;
        println!(
            "compress {len} f32 chunk {} density {density} {}-bit: {:.3} ms with the payload copied to the host -> {:.0} GB/s of buffer, {:.0}% of copy ({:.3} ms on the device alone, {:.0}% of copy)",
            settings.chunk_len,
            bits.bits(),
            compress_s * 1e3,
            gb / compress_s,
            100.0 * copy_s / compress_s,
            on_device_s * 1e3,
            100.0 * copy_s / on_device_s,
        );
        let mut fresh = DeviceResidual::zeros(&stream, len)?;
        let on_device = kernels.compress(&delta.as_view(), &mut fresh, &settings)?;
        let mut cpu_residual = vec![0.0; len];
        let started = Instant::now();
        let on_cpu = p2ptrain_kernels::compress(&host, &mut cpu_residual, &settings)?;
        let cpu_s = started.elapsed().as_secs_f64();
        let same_payload = on_device.encode()? == on_cpu.encode()?;
        let device_residual = fresh.to_host(&stream)?;
        let same_residual = device_residual
            .iter()
            .zip(&cpu_residual)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        println!(
            "  same as the CPU ({:.1} ms there, {} threads): payload {} ({} bytes), residual {}",
            cpu_s * 1e3,
            rayon::current_num_threads(),
            if same_payload {
                "identical"
            } else {
                "DIFFERENT"
            },
            on_cpu.encoded_len(),
            if same_residual {
                "identical"
            } else {
                "DIFFERENT"
            },
        );
        if !(same_payload && same_residual) {
            return Err("the device result differs from the CPU's".into());
        }
    }
    Ok(())
}
