//! `netsim`: reproduce what a p2ptrain swarm computes, deterministically.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use p2ptrain_netsim::exchange::{self, ExchangeConfig};
use p2ptrain_netsim::report;
use p2ptrain_netsim::scenario::{Scenario, ScenarioError};
use p2ptrain_netsim::sim;
use p2ptrain_node::cli::error_report;
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
    /// Run a scenario: one real round engine per peer on a virtual clock,
    /// over simulated links with latency, bandwidth and loss; churn,
    /// partitions, stragglers and adversaries as the file says. Writes
    /// summary.json, rounds.jsonl and SVG plots to --out and prints a table.
    /// The same file and seed give the same trace hash.
    Run(RunArgs),
    /// Rounds of compressed, signed pseudo-gradient exchange among in-process
    /// peers: each compresses its update with error feedback (chunked top-k,
    /// quantized), signs a contribution, and all are verified and aggregated.
    /// Prints, per round, the bytes on the wire and how far the aggregate is
    /// from the exact mean of the uncompressed updates.
    Exchange(ExchangeArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// The scenario file (TOML), e.g. netsim/scenarios/quickstart.toml.
    scenario: PathBuf,
    /// Seed of every random draw; the file's `run.seed` when absent.
    #[arg(long)]
    seed: Option<u64>,
    /// Where to write the results; `netsim-out/<scenario name>` when absent.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Leave the malicious peers out (the comparison run for an
    /// `[adversary]` scenario).
    #[arg(long)]
    without_adversaries: bool,
    /// Also write the chain of one honest peer as a node data directory
    /// (records, payloads, checkpoints) here; `p2pnode verify DIR` replays it.
    #[arg(long, value_name = "DIR")]
    record: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
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

fn main() -> std::process::ExitCode {
    let done = match Cli::parse().command {
        Command::Run(args) => run_scenario(args),
        Command::Exchange(args) => args.into_config().and_then(run_exchange),
    };
    match done {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{}", error_report(&error));
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_scenario(args: RunArgs) -> anyhow::Result<()> {
    let scenario = Scenario::load(&args.scenario).map_err(|error| match error {
        ScenarioError::Read { .. } => anyhow::Error::from(error),
        error => anyhow::Error::from(error)
            .context(format!("{} is not a scenario", args.scenario.display())),
    })?;
    let name = args.scenario.file_stem().map_or_else(
        || "scenario".to_owned(),
        |s| s.to_string_lossy().into_owned(),
    );
    let seed = args.seed.unwrap_or(scenario.run.seed);
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from("netsim-out").join(&name));
    let rounds = scenario.run.rounds;
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(rounds)
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] round {pos}/{len} {msg} ({elapsed})")
            .context("progress template")?
            .progress_chars("=> "),
    );
    bar.set_prefix(name.clone());
    let show = |p: sim::Progress| {
        bar.set_position(p.round);
        bar.set_message(format!("virtual {:.0} s", p.virtual_ms as f64 / 1000.0));
    };
    let outcome = match &args.record {
        Some(dir) => sim::run_and_record(&scenario, seed, args.without_adversaries, dir, show),
        None => sim::run(&scenario, seed, args.without_adversaries, show),
    };
    let mut outcome = outcome.with_context(|| format!("simulating {}", args.scenario.display()))?;
    bar.finish_and_clear();
    outcome.summary.scenario = name.clone();
    report::write(&out, &outcome.summary, &outcome.rounds)
        .with_context(|| format!("writing results to {}", out.display()))?;
    print_table(&outcome);
    println!("results in {}", out.display());
    if let Some(dir) = &args.record {
        println!(
            "chain recorded in {} (check it: p2pnode verify {})",
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

fn print_table(outcome: &sim::Outcome) {
    let s = &outcome.summary;
    let loss = |l: Option<f32>| l.map_or_else(|| "-".to_owned(), |l| format!("{l:.4}"));
    println!(
        "{:>6} {:>12} {:>6} {:>9} {:>12}",
        "round", "virtual s", "peers", "val loss", "MB sent"
    );
    for r in &outcome.rounds {
        println!(
            "{:>6} {:>12.1} {:>6} {:>9} {:>12.1}",
            r.round,
            r.finished_ms as f64 / 1000.0,
            r.contributors,
            loss(r.val_loss),
            r.bytes_sent_total as f64 / 1e6
        );
    }
    let rejected: Vec<String> = s.rejected.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!();
    println!("scenario               {} (seed {})", s.scenario, s.seed);
    println!(
        "rounds completed       {} with {} peers",
        s.rounds_completed, s.peers
    );
    println!("honest replicas agree  {}", s.honest_replicas_agree);
    println!(
        "final val loss         {} (baseline {})",
        loss(s.final_val_loss),
        loss(s.baseline_val_loss)
    );
    println!(
        "sent per peer per round {:.3} MB, {:.3} bits/param",
        s.bytes_sent_per_peer_per_round / 1e6,
        s.bits_per_param
    );
    println!("compute utilization    {:.3}", s.compute_utilization);
    println!(
        "rejected               {}",
        if rejected.is_empty() {
            "none".to_owned()
        } else {
            rejected.join(", ")
        }
    );
    println!("honest rejected        {}", s.honest_rejected);
    println!(
        "peers ignored          {} (honest: {})",
        s.banned, s.honest_banned
    );
    println!(
        "adversarial            sent {}, rejected {}, applied {}",
        s.adversarial.sent, s.adversarial.rejected, s.adversarial.applied
    );
    println!("forks resolved         {}", s.forks_resolved);
    println!(
        "virtual / wall         {:.1} s / {:.1} s",
        s.virtual_seconds, s.wall_seconds
    );
    println!("trace hash             {}", s.trace_hash);
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
