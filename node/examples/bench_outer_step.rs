//! The outer step of a round on one thread, the work every peer repeats
//! after the exchange: the token-weighted mean of four payloads (top-1% at
//! 8 bits) and the Nesterov step of a 25.5M-parameter state, with the
//! blake3 hash of the 204 MB result taken as it is written. Beside it, in
//! the same run, a plain copy of the state (what moving its bytes once
//! costs) and the hash alone.
//!
//! `cargo run --release -p p2ptrain-node --example bench_outer_step -- [--runs 9] [--threads 1]`
//!
//! Prints the median of each, after two warm-up steps that fault in the
//! spare state's pages.

use std::time::Instant;

use p2ptrain_kernels::compress;
use p2ptrain_node::chain::{Buffers, ChainState, StepInput};
use p2ptrain_protocol::{CompressionSettings, Digest, RunManifest};
use p2ptrain_trainer::ParamLayout;

use common::MODEL;

mod common;

/// Payloads in the mean.
const PEERS: usize = 4;

/// The outer step on one thread, beside a copy and a hash of the state.
#[derive(clap::Parser)]
struct Args {
    /// Timed runs of each.
    #[arg(long, default_value_t = 9, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Threads of the rayon pool the step and the hash use.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    threads: u16,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Args { runs, threads } = clap::Parser::parse();
    let params = ParamLayout::gpt2(&MODEL).len();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(usize::from(threads))
        .build()?;
    // xorshift64*: uniform in [-1e-3, 1e-3).
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut uniform = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let bits = state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
        (bits as f32 / (1u64 << 24) as f32 - 0.5) * 2e-3
    };
    let settings = CompressionSettings::default();
    let mut payloads = Vec::new();
    for _ in 0..PEERS {
        let delta: Vec<f32> = (0..params).map(|_| uniform()).collect();
        payloads.push(compress(&delta, &mut vec![0.0; params], &settings)?.encode()?);
    }
    let inputs: Vec<StepInput<'_>> = payloads
        .iter()
        .enumerate()
        .map(|(k, payload)| StepInput {
            id: Digest::of(&[k as u8]),
            tokens: 1_000,
            payload,
        })
        .collect();
    let outer = RunManifest::default().outer;
    let start = ChainState::genesis((0..params).map(|_| uniform()).collect());
    let (base, _) = start.outer_step(&inputs, &outer)?;
    let mut buffers = Buffers::default();
    let mut copy = ChainState::genesis(vec![0.0; params]);

    let (mut steps, mut hashes, mut copies) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs + 2 {
        let started = Instant::now();
        let (next, _) = pool.install(|| base.outer_step_reusing(&inputs, &outer, &mut buffers))?;
        let step = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let _ = pool.install(|| next.hash());
        let hash = started.elapsed().as_secs_f64();
        buffers.spare = Some(next);
        let started = Instant::now();
        copy.params.copy_from_slice(&base.params);
        copy.momentum.copy_from_slice(&base.momentum);
        let copied = started.elapsed().as_secs_f64();
        if run >= 2 {
            steps.push(step);
            hashes.push(hash);
            copies.push(copied);
        }
    }
    let median = |times: &mut Vec<f64>| {
        times.sort_by(f64::total_cmp);
        times[times.len() / 2] * 1e3
    };
    let (step, hash, copied) = (median(&mut steps), median(&mut hashes), median(&mut copies));
    println!(
        "{:.1}M parameters, {PEERS} payloads, {threads} thread(s), median of {runs}:",
        params as f64 / 1e6
    );
    println!("  outer step and hash      {step:6.1} ms (each group hashed as it is written)");
    println!("  the hash alone           {hash:6.1} ms (the whole state, from memory)");
    println!(
        "  the step beyond the hash {:6.1} ms ({:.1}x a copy of the state, {copied:.1} ms)",
        step - hash,
        (step - hash) / copied
    );
    Ok(())
}
