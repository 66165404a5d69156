//! `netsim`: reproduce what a p2ptrain swarm computes, deterministically.

use anyhow::Context;
use clap::{Parser, Subcommand};
use p2ptrain_netsim::exchange::{self, ExchangeConfig};
use p2ptrain_protocol::{CompressionSettings, ValueBits};

/// Deterministic simulations of a p2ptrain swarm on one machine: the same
/// configuration and seed give the same trace hash on every run.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Rounds of compressed, signed pseudo-gradient exchange among in-process
    /// peers: each compresses its update with error feedback (chunked top-k,
    /// quantized), signs a contribution, and all are verified and aggregated.
    /// Prints, per round, the bytes on the wire and how far the aggregate is
    /// from the exact mean of the uncompressed updates.
    Exchange(ExchangeArgs),
}

#[derive(clap::Args)]
struct ExchangeArgs {
    /// Peers contributing each round.
    #[arg(long, default_value_t = 4)]
    peers: usize,
    /// Parameters per pseudo-gradient.
    #[arg(long, default_value_t = 1_000_000)]
    params: usize,
    /// Rounds to run.
    #[arg(long, default_value_t = 10)]
    rounds: u64,
    /// Entries per top-k chunk.
    #[arg(long, default_value_t = 4096)]
    chunk: u32,
    /// Fraction of each chunk sent, in [0, 1].
    #[arg(long, default_value_t = 0.01)]
    density: f32,
    /// Bits per sent value: 2, 4 or 8.
    #[arg(long, default_value_t = 8)]
    bits: u8,
    /// Each peer's noise relative to the direction all peers share.
    #[arg(long, default_value_t = 0.5)]
    noise: f32,
    /// Seed of every random draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl ExchangeArgs {
    fn into_config(self) -> anyhow::Result<ExchangeConfig> {
        let compression = CompressionSettings {
            chunk_len: self.chunk,
            density: self.density,
            value_bits: ValueBits::try_from(self.bits)?,
        };
        compression.validate()?;
        anyhow::ensure!(self.peers > 0, "--peers must be at least 1");
        anyhow::ensure!(self.params > 0, "--params must be at least 1");
        anyhow::ensure!(
            self.noise.is_finite() && self.noise >= 0.0,
            "--noise must be a finite number >= 0"
        );
        Ok(ExchangeConfig {
            peers: self.peers,
            params: self.params,
            rounds: self.rounds,
            noise: self.noise,
            compression,
            seed: self.seed,
        })
    }
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Exchange(args) => run_exchange(args.into_config()?),
    }
}

fn run_exchange(config: ExchangeConfig) -> anyhow::Result<()> {
    println!(
        "{} peers x {} parameters, {} rounds; chunk {}, density {}, {} bits; seed {}",
        config.peers,
        config.params,
        config.rounds,
        config.compression.chunk_len,
        config.compression.density,
        config.compression.value_bits.bits(),
        config.seed
    );
    println!(
        "{:>5} {:>12} {:>9} {:>11} {:>11} {:>12} {:>12}",
        "round",
        "bytes/peer",
        "bits/par",
        "round err",
        "cumul. err",
        "compress ms",
        "verify+agg ms"
    );
    let summary = exchange::run(&config, |r| {
        println!(
            "{:>5} {:>12} {:>9.3} {:>11.4} {:>11.4} {:>12.1} {:>12.1}",
            r.round,
            r.payload_bytes,
            r.bits_per_param,
            r.round_error,
            r.cumulative_error,
            r.compress_time.as_secs_f64() * 1e3,
            r.aggregate_time.as_secs_f64() * 1e3
        );
    })
    .context("simulating the exchange")?;
    let dense_bytes = config.params * 4;
    if let Some(last) = summary.rounds.last() {
        println!(
            "\n{:.1}x smaller than dense f32 ({} bytes); error feedback took the cumulative error from {:.4} to {:.4}",
            dense_bytes as f64 / last.payload_bytes as f64,
            dense_bytes,
            summary.rounds[0].cumulative_error,
            last.cumulative_error
        );
    }
    println!("trace hash {}", summary.trace_hash);
    Ok(())
}
