//! `p2pnode`: run a p2ptrain peer.

mod init;
mod join;
mod status;
mod words;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use p2ptrain_node::chain::{self, DataDir};
use p2ptrain_node::{cli::error_report, keyfile, net};
use p2ptrain_protocol::{PeerKey, RunManifest};
use p2ptrain_trainer::ParamLayout;

pub(crate) use init::{init, write_new_run, InitArgs};

/// A peer of a p2ptrain swarm: trains a shared model with other peers, no
/// server in between.
///
/// Start with `p2pnode join` (a new run on the bundled defaults in
/// ./p2ptrain-data, or the run already there); a second machine joins with
/// `p2pnode join --bootstrap ADDRESS`, using an address the first prints.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a node identity: an ed25519 key that names this peer on the
    /// network and signs its contributions. Prints the public key.
    Keygen {
        /// Where to write the key (created owner-readable only; an existing
        /// file is never overwritten).
        #[arg(long, default_value = "node.key")]
        out: PathBuf,
    },
    /// Print the public key of an existing key file.
    Pubkey {
        /// The key file.
        #[arg(long, default_value = "node.key")]
        key: PathBuf,
    },
    /// Create the pre-shared key of a private swarm (the swarm.key format
    /// of IPFS and go-libp2p), readable by its owner only. Give the file to
    /// every member; `--psk FILE` then keeps everyone else out.
    SwarmKey {
        /// Where to write it (never overwrites).
        #[arg(long, default_value = "swarm.key")]
        out: PathBuf,
    },
    /// Run a node: train on local data, exchange compressed updates with the
    /// swarm, and keep the chain of rounds in the data directory.
    Join(join::JoinArgs),
    /// Start a new run in a data directory: write the run manifest (the
    /// bundled defaults: tiny model, H = 50, top-1% 8-bit compression,
    /// unless changed below) and its genesis checkpoint, initialized from
    /// --seed.
    Init(InitArgs),
    /// Replay a data directory's chain from genesis: every signature,
    /// payload hash, outer step and checkpoint hash. Exits non-zero, naming
    /// the first bad round, on any mismatch.
    Verify {
        /// The data directory.
        dir: PathBuf,
    },
    /// Show what the node running on a data directory is doing: round,
    /// inner step, loss, peers, bytes in and out, dropped contributions.
    Status {
        /// The running node's data directory.
        #[arg(long, default_value = "p2ptrain-data")]
        dir: PathBuf,
        /// Print the status as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a data directory's latest checkpoint as a Hugging Face GPT-2
    /// folder (config.json + model.safetensors) that
    /// `transformers.GPT2LMHeadModel.from_pretrained` loads. Safe to run
    /// beside a node working on the directory.
    Export {
        /// The data directory.
        dir: PathBuf,
        /// The folder to create (it must not exist, or be empty).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a data directory's round records: a table of rounds (how many
    /// contributions, the chain's tokens, the resulting checkpoint), or with
    /// --json every field, in hex: run, base, result, committer and each
    /// contribution's author, payload and signature.
    History {
        /// The data directory.
        dir: PathBuf,
        /// One JSON array of the whole records instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{}", error_report(&error));
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Join(args) => {
            // A node allocates the same large buffers round after round
            // (training tensors, payloads and checkpoints it receives):
            // keep freed memory rather than fault fresh pages in each time.
            p2ptrain_trainer::allocator::keep_freed_memory();
            // Training and the outer step yield the cores to the event
            // loop, which serves peers, whenever it has work.
            p2ptrain_node::compute::start_compute_pool()?;
            tokio::runtime::Runtime::new()?.block_on(join::join(args))?
        }
        Command::Keygen { out } => {
            let key = keyfile::generate()?;
            keyfile::save(&out, &key).context("writing the new key")?;
            println!("{}", PeerKey::from(&key));
            eprintln!("wrote {}", out.display());
        }
        Command::Pubkey { key: path } => {
            let key = match keyfile::load(&path) {
                Err(keyfile::KeyFileError::Io { error, .. })
                    if error.kind() == std::io::ErrorKind::NotFound =>
                {
                    anyhow::bail!(
                        "no key file at {0}: `p2pnode keygen --out {0}` creates one",
                        path.display()
                    )
                }
                loaded => loaded?,
            };
            println!("{}", PeerKey::from(&key));
        }
        Command::SwarmKey { out } => swarm_key(&out)?,
        Command::Init(args) => init(&DataDir::new(&args.dir), &args)?,
        Command::Verify { dir } => verify(&DataDir::new(dir))?,
        Command::History { dir, json } => history(&DataDir::new(dir), json)?,
        Command::Status { dir, json } => {
            tokio::runtime::Runtime::new()?.block_on(status::show(&dir, json))?;
        }
        Command::Export { dir, out } => export(&DataDir::new(dir), &out)?,
    }
    Ok(())
}

/// Entries of the flat parameter buffer of `manifest`'s model.
fn params_of(manifest: &RunManifest) -> usize {
    ParamLayout::gpt2(&manifest.model).len()
}

fn swarm_key(out: &std::path::Path) -> anyhow::Result<()> {
    let mut key = [0u8; 32];
    getrandom::getrandom(&mut key)
        .map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    keyfile::create_secret_file(out, net::access::psk_file(&key).as_bytes())
        .with_context(|| format!("creating {} (it must not exist yet)", out.display()))?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

fn verify(dir: &DataDir) -> anyhow::Result<()> {
    let manifest = dir
        .manifest()
        .with_context(|| format!("{} is not a data directory", dir.root().display()))?;
    // A bar on a terminal: a large model's chain takes a while to replay.
    let rounds = dir.last_record()?.map_or(0, |last| last + 1);
    let bar = indicatif::ProgressBar::new(rounds).with_style(
        indicatif::ProgressStyle::with_template("replaying round {pos}/{len} [{bar:32}] {eta}")?
            .progress_chars("=> "),
    );
    let verified = chain::replay_with_progress(dir, params_of(&manifest), &mut |done| {
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let verified =
        verified.with_context(|| format!("verification of {} failed", dir.root().display()))?;
    println!(
        "ok: {}, {}, {} tokens; checkpoint {}",
        words::counted(verified.rounds, "round"),
        words::counted(verified.contributions, "contribution"),
        verified.chain_tokens,
        verified.head
    );
    Ok(())
}

fn export(dir: &DataDir, out: &std::path::Path) -> anyhow::Result<()> {
    let manifest = dir
        .manifest()
        .with_context(|| format!("{} is not a data directory", dir.root().display()))?;
    if std::fs::read_dir(out).is_ok_and(|mut entries| entries.next().is_some()) {
        anyhow::bail!(
            "{} exists and is not empty: choose a new folder",
            out.display()
        );
    }
    let latest = chain::latest(dir, params_of(&manifest))
        .with_context(|| format!("reading the latest checkpoint of {}", dir.root().display()))?;
    p2ptrain_trainer::hf::export(out, &manifest.model, &latest.state.params)
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "exported round {} (checkpoint {}) to {}",
        latest.round.saturating_sub(1),
        latest.state.hash(),
        out.display()
    );
    Ok(())
}

fn history(dir: &DataDir, json: bool) -> anyhow::Result<()> {
    dir.manifest()
        .with_context(|| format!("{} is not a data directory", dir.root().display()))?;
    let records = chain::history(dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(());
    }
    if records.as_array().is_none_or(Vec::is_empty) {
        println!(
            "no rounds yet: {} holds only its genesis checkpoint",
            dir.root().display()
        );
        return Ok(());
    }
    println!(
        "{:>6} {:>13} {:>14} {:>66}",
        "round", "contributions", "chain tokens", "result"
    );
    for r in records.as_array().into_iter().flatten() {
        println!(
            "{:>6} {:>13} {:>14} {:>66}",
            r["round"].as_u64().unwrap_or_default(),
            r["contributions"].as_array().map_or(0, Vec::len),
            r["chain_tokens"].as_u64().unwrap_or_default(),
            r["result"].as_str().unwrap_or("")
        );
    }
    Ok(())
}
