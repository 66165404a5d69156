//! Training throughput of one replica on the CPU: tokens per second of
//! forward + backward + AdamW, on the bundled corpus.
//!
//! `cargo run --release -p p2ptrain-trainer --example train_speed -- [--preset tiny] [--vocab 96] [--batch 32] [--steps 50]`
//!
//! `--vocab 96` matches the PyTorch reference (`chargpt_diloco.py speed`),
//! whose vocabulary is newline + printable ASCII; bytes are folded into it.
//! `scripts/bench-train.sh` runs both back to back and prints the ratio.

use std::time::Instant;

use p2ptrain_protocol::RunManifest;
use p2ptrain_trainer::{device, Corpus, LocalTrainer, ParamLayout, Preset, Sampler};

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    p2ptrain_trainer::allocator::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let preset: Preset = arg(&args, "--preset", "tiny".to_string()).parse()?;
    let batch: u32 = arg(&args, "--batch", 32);
    let steps: usize = arg(&args, "--steps", 50);
    let mut config = preset.config();
    config.vocab_size = arg(&args, "--vocab", config.vocab_size);
    let vocab = config.vocab_size;
    let context = config.context_len as usize;

    let mut inner = RunManifest::default().inner;
    inner.batch_size = batch;
    let values = ParamLayout::gpt2(&config).initial_values(0);
    let params = values.len();
    let mut trainer = LocalTrainer::new(config, values, inner, 1000, &device::parse("cpu")?)?;
    let corpus = Corpus::bundled();
    let mut sampler = Sampler::new(corpus.train(), 0);
    let mut next = || -> Result<_, Box<dyn std::error::Error>> {
        let b = sampler.next_batch(batch as usize, context)?;
        let fold = |t: &Vec<u32>| t.iter().map(|x| x % vocab).collect::<Vec<_>>();
        Ok((fold(&b.inputs), fold(&b.targets)))
    };
    for _ in 0..10 {
        let (x, y) = next()?;
        trainer.step(&x, &y)?;
    }
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        let (x, y) = next()?;
        let started = Instant::now();
        trainer.step(&x, &y)?;
        times.push(started.elapsed().as_secs_f64());
    }
    let total: f64 = times.iter().sum();
    times.sort_by(f64::total_cmp);
    let tokens = (batch as usize * context * steps) as f64;
    println!(
        "candle preset {} vocab {vocab} params {params} batch {batch}x{context}: {steps} steps in {total:.2}s -> {:.0} tok/s (median {:.1} ms/step)",
        preset.name(),
        tokens / total,
        times[steps / 2] * 1e3
    );
    Ok(())
}
