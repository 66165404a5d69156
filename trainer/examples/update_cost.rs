//! What a replica's round update costs on the CPU: the time of
//! `LocalTrainer::compress_update` (start − trained, compressed with error
//! feedback) and how far the first one raises the process's peak memory,
//! beside a copy of the parameters in the same run. Later updates reuse the
//! memory the allocator kept (as in `p2pnode join`).
//!
//! `cargo run --release -p p2ptrain-trainer --example update_cost -- [--preset small] [--runs 6]`
//!
//! The replica takes one training step first, so its parameters differ
//! from the round's start. Linux only (it reads `/proc/self/status`).

use std::time::Instant;

use candle_core::Device;
use p2ptrain_protocol::{CompressionSettings, RunManifest};
use p2ptrain_trainer::device::ErrorFeedback;
use p2ptrain_trainer::{LocalTrainer, ParamLayout, Preset};

type Error = Box<dyn std::error::Error>;

/// What a replica's round update costs on the CPU.
#[derive(clap::Parser)]
struct Args {
    /// Model preset.
    #[arg(long, default_value = "small")]
    preset: Preset,
    /// Timed updates (the first is shown apart: it faults its memory in).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(2..))]
    runs: u32,
}

fn main() -> Result<(), Error> {
    // As `p2pnode join` does.
    p2ptrain_trainer::allocator::keep_freed_memory();
    let Args { preset, runs } = clap::Parser::parse();
    let config = preset.config();
    let start = ParamLayout::gpt2(&config).initial_values(3);
    let inner = p2ptrain_protocol::InnerOptimizer {
        batch_size: 1,
        ..RunManifest::default().inner
    };
    let mut trainer = LocalTrainer::new(config, start.clone(), inner, 20, &Device::Cpu)?;
    let inputs: Vec<u32> = (0..32).collect();
    let targets: Vec<u32> = (1..33).collect();
    trainer.step(&inputs, &targets)?;
    let mut feedback = ErrorFeedback::new(&Device::Cpu, start.len())?;
    let settings = CompressionSettings::default();

    let mut copies = Vec::new();
    let mut updates = Vec::new();
    let mut first_peak_rise = 0;
    for _ in 0..runs {
        reset_peak()?;
        let before = peak_kib()?;
        let started = Instant::now();
        let payload = trainer.compress_update(&mut feedback, &settings)?;
        updates.push(started.elapsed().as_secs_f64() * 1e3);
        if updates.len() == 1 {
            first_peak_rise = peak_kib()?.saturating_sub(before) / 1024;
        }
        std::hint::black_box(payload);

        let started = Instant::now();
        let copy = std::hint::black_box(start.clone());
        copies.push(started.elapsed().as_secs_f64() * 1e3);
        drop(copy);
    }
    println!(
        "{} parameters ({} MB of f32); the first update {:.1} ms, raising peak memory by {first_peak_rise} MiB",
        start.len(),
        start.len() * 4 / 1_000_000,
        updates[0]
    );
    let (update, copy) = (median(&updates[1..]), median(&copies[1..]));
    println!(
        "compress_update median {update:.1} ms, a copy of the parameters {copy:.1} ms ({:.1} copies)",
        update / copy
    );
    Ok(())
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// Resets the process's peak resident size to its current one.
fn reset_peak() -> Result<(), Error> {
    std::fs::write("/proc/self/clear_refs", "5")?;
    Ok(())
}

/// The process's peak resident size (`VmHWM`), in KiB.
fn peak_kib() -> Result<u64, Error> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .ok_or("no VmHWM in /proc/self/status")?;
    let kib = line
        .split_whitespace()
        .nth(1)
        .ok_or("VmHWM without a value")?;
    Ok(kib.parse()?)
}
