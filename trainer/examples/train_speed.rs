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

/// Training throughput of one replica on the CPU.
#[derive(clap::Parser)]
struct Args {
    /// Model preset.
    #[arg(long, default_value = "tiny")]
    preset: Preset,
    /// Vocabulary size (bytes are folded into it); the preset's by default.
    #[arg(long)]
    vocab: Option<u32>,
    /// Sequences per step.
    #[arg(long, default_value_t = 32)]
    batch: u32,
    /// Timed steps (after 10 warm-up steps).
    #[arg(long, default_value_t = 50)]
    steps: usize,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    p2ptrain_trainer::allocator::keep_freed_memory();
    let Args {
        preset,
        vocab,
        batch,
        steps,
    } = clap::Parser::parse();
    let mut config = preset.config();
    config.vocab_size = vocab.unwrap_or(config.vocab_size);
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
