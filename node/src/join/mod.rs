//! `p2pnode join`: run a node until stopped.
//!
//! It reports on stdout one line per round it holds the result of, for
//! people and scripts alike:
//!
//! ```text
//! round 3: checkpoint 5e1f…c2 (3 contributions)
//! round 7: checkpoint 0b9a…41 (adopted from a peer)
//! ```
//!
//! and everything else (peers, refusals, dropped contributions) on stderr.

mod enrol;
mod linger;
mod report;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use libp2p::Multiaddr;
use p2ptrain_node::chain::{DataDir, ResumedFrom};
use p2ptrain_node::control;
use p2ptrain_node::keyfile;
use p2ptrain_node::net::{self, access, NetConfig};
use p2ptrain_node::swarm_loop::{Command, Node, NodeError, NodeSetup, Status, Training};
use p2ptrain_protocol::{Digest, ModelConfig, PeerKey, RunManifest};
use p2ptrain_trainer::device::RESIDUAL_DECAY;
use p2ptrain_trainer::{Corpus, Sampler};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use linger::Linger;
pub use report::LogFormat;
use report::Report;

/// The options of `p2pnode join`.
#[derive(clap::Args)]
pub struct JoinArgs {
    /// The data directory: a run made by `p2pnode init`, or an empty folder
    /// (a new run on the bundled defaults is started there, or with --run
    /// the run named is fetched from its peers). A directory that already
    /// holds rounds resumes after the last one.
    #[arg(long, default_value = "p2ptrain-data")]
    dir: PathBuf,
    /// This node's key (created if missing). It is the node's identity:
    /// one running node at a time may use it.
    #[arg(long, default_value = "node.key")]
    key: PathBuf,
    /// Addresses to listen on: TCP and QUIC on every interface unless
    /// given (a private swarm, `--psk`, speaks TCP only);
    /// `/ip4/…/p2p/RELAY_ID/p2p-circuit` listens through that peer's relay
    /// (for a node behind NAT).
    #[arg(long, default_values = ["/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1"])]
    listen: Vec<Multiaddr>,
    /// Peers to dial at start (besides those mDNS finds on the LAN).
    #[arg(long)]
    bootstrap: Vec<Multiaddr>,
    /// The run to take part in, by id (64 hex digits: a running node prints
    /// its run's id in the line that tells how to add a peer). Into a
    /// --dir that holds no run yet, the run's manifest and genesis
    /// checkpoint are fetched from its peers (--bootstrap, or the LAN),
    /// each checked against the id; a --dir that holds another run is
    /// refused.
    #[arg(long, value_name = "RUN_ID")]
    run: Option<Digest>,
    /// Train on these files or folders (recursive, all of them) instead of
    /// the bundled corpus. The data never leaves this machine.
    #[arg(long)]
    data: Option<PathBuf>,
    /// A private swarm's key file (`p2pnode swarm-key`): only TCP, inside
    /// pnet, and only peers holding the key get in.
    #[arg(long)]
    psk: Option<PathBuf>,
    /// An allow-list file: one peer key (64 hex digits, as `p2pnode pubkey`
    /// prints) per line, `#` comments. Connections with other peers are
    /// refused and contributions they sign are dropped. This node's own key
    /// must be on it.
    #[arg(long)]
    allow: Option<PathBuf>,
    /// Do not look for peers on the LAN.
    #[arg(long)]
    no_mdns: bool,
    /// Where to train: `cpu`, `cuda:N` or `auto` (the first GPU if this
    /// build has `--features cuda` and one is present). The update is
    /// compressed where the model lives, with the same bytes either way, so
    /// CPU and GPU peers share a run.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// What this node's error-feedback residual (the part of its updates
    /// that compression left out) keeps from one round to the next, 0 to 1.
    /// At 1 nothing fades: the replica learns the held-back part again each
    /// round, the residual piles up, and with top-1% compression a long
    /// run's loss climbs back after a few dozen rounds.
    #[arg(long, value_name = "FACTOR", default_value_t = RESIDUAL_DECAY, value_parser = residual_decay)]
    residual_decay: f32,
    /// Stop once the chain holds this many rounds (0: run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    rounds: u64,
    /// With `--rounds`: how long at most the node stays up after its last
    /// round, training no more, while a connected peer of the run has not
    /// shown it reached that round (a joiner still fetching the checkpoint,
    /// say) or still asks it for records, and while it fetches the records
    /// of rounds it adopted (which `verify` replays). It serves its peers
    /// meanwhile, and stops as soon as none of that holds. 0: stop at once.
    #[arg(long, value_name = "SECONDS", default_value_t = 120, requires = "rounds",
          value_parser = clap::value_parser!(u64).range(..=86_400))]
    linger: u64,
    /// How to report: `text` for people (a progress bar when stderr is a
    /// terminal), `json` for one object per line on stdout.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Serve Prometheus metrics (round, loss, peers, bytes, dropped
    /// contributions) at http://ADDR/metrics, e.g. `127.0.0.1:9464`.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
}

pub async fn join(args: JoinArgs) -> anyhow::Result<()> {
    // What the options name is read before anything is written: a mistyped
    // path leaves no new key or run behind.
    let (tokens, data_note) = training_tokens(args.data.as_deref())?;
    let psk = args
        .psk
        .as_deref()
        .map(access::load_psk)
        .transpose()
        .context("reading --psk")?;
    let allow_list = args
        .allow
        .as_deref()
        .map(access::load_allow_list)
        .transpose()
        .context("reading --allow")?;
    let device = p2ptrain_trainer::device::parse(&args.device).context("--device")?;
    let data = DataDir::new(&args.dir);
    if let Some(run) = args.run {
        enrol::check_holds_no_other_run(&data, run)?;
        if !data.holds_run() {
            enrol::check_can_find_peers(run, !args.no_mdns, &args.bootstrap)?;
        }
    }
    if let (Some(path), Some(model)) = (&args.data, model_to_train(&data, args.run)) {
        check_fits_a_window(&model, path, tokens.len())?;
    }
    let key = load_or_create_key(&args.key)?;
    let _key_held = keyfile::hold(&args.key)?;
    let me = PeerKey::from(&key);
    let report = Report::new(args.log_format, me);
    let net = NetConfig {
        mdns: !args.no_mdns,
        psk,
        allow_list,
        ..NetConfig::default()
    };
    let secrets = [
        (Some(&args.key), "sign as this node"),
        (args.psk.as_ref(), "join this private swarm"),
    ];
    for (path, power) in secrets {
        let Some(path) = path else { continue };
        let open_to_others = keyfile::readable_by_others(path)
            .with_context(|| format!("checking who may read {}", path.display()))?;
        if let Some(mode) = open_to_others {
            report.note(
                "secret_readable",
                &format!(
                    "warning: {path} can be read by other users of this machine (mode \
                     {mode:03o}): any of them can {power}; `chmod 600 {path}` makes it \
                     yours alone",
                    path = path.display()
                ),
            );
        }
    }
    // A run whose manifest cannot be read is reported by the node when it
    // starts on it, never replaced by a new one.
    match (data.holds_run(), args.run) {
        (true, _) => {}
        (false, Some(run)) => {
            let fetched = enrol::fetch(&data, run, &key, &net, &args.bootstrap, &report);
            let (manifest, genesis) = fetched.await?;
            if let Some(path) = &args.data {
                check_fits_a_window(&manifest.model, path, tokens.len())?;
            }
            data.write_run(&manifest, &genesis)
                .with_context(|| format!("writing run {run} into {}", args.dir.display()))?;
        }
        (false, None) => {
            report.note(
                "new_run",
                &format!(
                    "no run in {}: starting a new one on the bundled defaults",
                    args.dir.display()
                ),
            );
            let new = crate::write_new_run(&data, &crate::InitArgs::default())?;
            report.note(
                "new_run_written",
                &format!("run {}, genesis checkpoint {}", new.run, new.genesis),
            );
        }
    }
    // Named in the line that tells how to add a peer; a manifest that
    // cannot be read is reported by the node as it starts.
    let report = report.with_run(data.manifest().ok().and_then(|m| m.id().ok()));
    report.note("data", &data_note);
    report.note(
        "device",
        &format!(
            "training on {}",
            p2ptrain_trainer::device::describe(&device)
        ),
    );
    if let Some(keys) = &net.allow_list {
        report.note("allow_list", &format!("allow-list: {} peers", keys.len()));
    }
    let setup = NodeSetup {
        data: data.clone(),
        key,
        net,
        listen: listen_addresses(&args.listen, args.psk.is_some(), &report),
        training: Training::Replica {
            tokens,
            device,
            residual_decay: args.residual_decay,
        },
    };
    let (events_tx, mut events) = mpsc::channel(256);
    let mut node = Node::new(setup, events_tx).context("starting the node")?;
    if args.rounds > 0 {
        node.train_until(args.rounds);
    }
    tell_start(&report, &node);
    if args.rounds > 0 && node.head().round >= args.rounds {
        report.note(
            "done",
            &format!("the chain already holds {} rounds", node.head().round),
        );
        return Ok(());
    }
    let mut status = node.status();
    serve(&args, &data, &report, &status).await?;
    let (commands, command_rx) = mpsc::channel(16);
    let quorum = node.quorum();
    let running = tokio::spawn(node.run(command_rx));
    for address in args.bootstrap {
        commands.send(Command::Dial(address)).await?;
    }
    let waiting = match quorum.saturating_sub(1) {
        0 => "it trains alone until some join".to_owned(),
        1 => format!("a round needs {quorum} contributions: none closes until 1 more peer joins"),
        more => format!(
            "a round needs {quorum} contributions: none closes until {more} more peers join"
        ),
    };
    report.note(
        "waiting",
        &format!("node {me} — waiting for peers; {waiting}"),
    );
    let mut stop = std::pin::pin!(stop_requested());
    let mut asked_to_stop = false;
    let mut linger = Linger::new(Duration::from_secs(args.linger), Instant::now());
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                if let Some(round) = report.event(event) {
                    if args.rounds > 0 && round + 1 >= args.rounds
                        && linger.done_training(&status.borrow(), &report, Instant::now())
                    {
                        break;
                    }
                }
            }
            changed = status.changed() => {
                if changed.is_err() {
                    break;
                }
                let current = status.borrow_and_update();
                report.refresh(&current);
                if linger.nothing_left(&current, &report, Instant::now()) {
                    break;
                }
            }
            () = sleep_until_some(linger.next_look(Instant::now())) => {
                let (current, now) = (status.borrow(), Instant::now());
                if linger.nothing_left(&current, &report, now)
                    || linger.expired(&current, &report, now)
                {
                    break;
                }
            }
            () = &mut stop => {
                asked_to_stop = true;
                break;
            }
        }
    }
    report.finish();
    let _ = commands.send(Command::Shutdown).await;
    let socket = data.root().join(control::STATUS_SOCKET);
    let stopped = if asked_to_stop {
        let mut running = std::pin::pin!(running);
        // A request to stop that comes at once is the same one, sent twice:
        // `timeout` sends its signal to the process, then to its group.
        // Only after this moment, and the line that says so, does another
        // stop the node at once.
        let quick = tokio::select! {
            stopped = &mut running => Some(stopped),
            () = tokio::time::sleep(SAME_REQUEST) => None,
        };
        if let Some(stopped) = quick {
            stopped
        } else {
            // On a large model an inner step on the CPU takes minutes.
            report.note(
                "stopping",
                "stopping: an inner step under way ends first (a step trained in passes, \
                 at the end of its pass), then head.ckpt and the residual are written \
                 (Ctrl-C again stops at once: that step's training is lost, nothing on disk is)",
            );
            tokio::select! {
                stopped = &mut running => stopped,
                () = stop_requested() => stop_at_once(&socket, &report, &args.dir),
            }
        }
    } else {
        running.await
    };
    let _ = std::fs::remove_file(&socket);
    stopped?.map_err(|error| stop_error(error, &args.dir))?;
    let last = status.borrow();
    let held = format!(
        "{} holds {}, up to checkpoint {}",
        args.dir.display(),
        crate::words::counted(last.round, "round"),
        last.checkpoint
    );
    if asked_to_stop {
        report.note(
            "stopped",
            &format!("stopped: {held}; the same command resumes from there"),
        );
    } else {
        report.note("done", &format!("done: {held}"));
    }
    Ok(())
}

/// Stops the process now, on a second request to stop: what is on disk
/// is whole, the inner step under way is lost.
fn stop_at_once(socket: &Path, report: &Report, dir: &Path) -> ! {
    let _ = std::fs::remove_file(socket);
    report.note(
        "stopped_at_once",
        &format!(
            "stopped at once: {} holds what was on disk; the same command resumes from there",
            dir.display()
        ),
    );
    std::process::exit(130);
}

/// How soon after a request to stop another is taken as the same one.
const SAME_REQUEST: Duration = Duration::from_millis(150);

/// Resolves at `at`; never when there is none.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reads `--residual-decay`: a number from 0 to 1.
fn residual_decay(text: &str) -> Result<f32, String> {
    let factor: f32 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    p2ptrain_kernels::validate_residual_decay(factor).map_err(|e| e.to_string())?;
    Ok(factor)
}

/// The error a node stopped with, for its user: when the disk is full,
/// what to do about it first.
fn stop_error(error: NodeError, dir: &Path) -> anyhow::Error {
    let disk_full = error.is_disk_full();
    let error = anyhow::Error::new(error).context("the node stopped with an error");
    if !disk_full {
        return error;
    }
    error.context(format!(
        "the disk holding {} is full: free some space, and the same command goes on \
         from what the directory holds (no file in it is half-written)",
        dir.display()
    ))
}

/// Resolves when the node is asked to stop: Ctrl-C, or SIGTERM (what
/// `kill` and service managers send). Either way it stops as after
/// `--rounds`: head.ckpt and the residual are written first.
async fn stop_requested() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut terminate) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            return;
        }
    }
    ctrl_c().await;
}

/// Ctrl-C; never, if no handler can be installed for it.
async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Starts the status socket in the data directory and, with `--metrics`,
/// the Prometheus endpoint.
async fn serve(
    args: &JoinArgs,
    data: &DataDir,
    report: &Report,
    status: &watch::Receiver<Status>,
) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let socket = data.root().join(control::STATUS_SOCKET);
        let listener = control::bind_status(&socket)?;
        tokio::spawn(control::serve_status(listener, status.clone()));
    }
    #[cfg(not(unix))]
    let _ = data;
    if let Some(address) = args.metrics {
        let listener = control::bind_metrics(address)
            .await
            .with_context(|| format!("serving metrics on {address}"))?;
        report.note(
            "metrics",
            &format!("metrics on http://{}/metrics", listener.local_addr()?),
        );
        tokio::spawn(control::serve_metrics(listener, status.clone()));
    }
    Ok(())
}

/// Says where the chain starts: genesis, or a resumed round.
fn tell_start(report: &Report, node: &Node) {
    let head = node.head();
    if node.restored_residual() {
        report.note(
            "residual",
            "restored the error-feedback residual saved when this node last stopped",
        );
    }
    match node.resumed_from() {
        ResumedFrom::Genesis => report.note(
            "start",
            &format!("starting at genesis, checkpoint {}", head.base),
        ),
        ResumedFrom::Head => report.note(
            "resume",
            &format!(
                "resuming from round {}, checkpoint {}",
                head.round, head.base
            ),
        ),
        ResumedFrom::Replayed {
            last_record,
            found,
            head_round,
        } => {
            let replayed = match head_round {
                Some(r) => format!(
                    "head.ckpt is the result of round {r}: replayed rounds {}..={last_record} \
                     after it",
                    r + 1
                ),
                None => {
                    let found = found.map_or_else(|| "missing".to_owned(), |h| h.to_string());
                    format!(
                        "head.ckpt ({found}) is not the result of round {last_record}: \
                         replayed the records from genesis"
                    )
                }
            };
            report.note(
                "resume",
                &format!(
                    "{replayed}\nresuming from round {}, checkpoint {}",
                    head.round, head.base
                ),
            );
        }
    }
    if node.reannounces() {
        report.note(
            "reannounce",
            &format!(
                "announcing again its contribution to round {}, made before it stopped \
                 (a second one would get its key ignored)",
                head.round
            ),
        );
    }
}

/// The addresses to listen on: in a private swarm QUIC ones are left out,
/// with a note (pnet runs over TCP only).
fn listen_addresses(addresses: &[Multiaddr], private: bool, report: &Report) -> Vec<Multiaddr> {
    if !private {
        return addresses.to_vec();
    }
    for address in addresses.iter().filter(|a| net::is_quic(a)) {
        report.note(
            "listen",
            &format!("not listening on {address}: a private swarm speaks TCP only"),
        );
    }
    addresses
        .iter()
        .filter(|a| !net::is_quic(a))
        .cloned()
        .collect()
}

/// The tokens this node trains on, and a line saying what they are. A node
/// does not evaluate, so it trains on all of the user's data (`path`); of
/// the bundled corpus, on the training part, the rest being the validation
/// set that netsim and the benchmarks report on.
fn training_tokens(path: Option<&Path>) -> anyhow::Result<(Vec<u8>, String)> {
    let Some(path) = path else {
        let tokens = Corpus::bundled().train().to_vec();
        let note = format!(
            "training on the bundled Shakespeare: {} tokens (--data PATH for your own files)",
            tokens.len()
        );
        return Ok((tokens, note));
    };
    let corpus =
        Corpus::load(path, 0).with_context(|| format!("reading --data {}", path.display()))?;
    let note = format!(
        "training on {}: {}, {} tokens (one per byte); they never leave this machine",
        path.display(),
        crate::words::counted(corpus.documents() as u64, "file"),
        corpus.tokens().len()
    );
    Ok((corpus.into_tokens(), note))
}

/// The model the node will train, as far as it is known before the run is
/// settled: the run in `data`, or the one a new run would get; `None` for a
/// run still to be fetched (checked once it is here), or one whose manifest
/// cannot be read (left for the node to report).
fn model_to_train(data: &DataDir, run: Option<Digest>) -> Option<ModelConfig> {
    match (data.holds_run(), run) {
        (true, _) => data.manifest().ok().map(|manifest| manifest.model),
        (false, Some(_)) => None,
        (false, None) => Some(RunManifest::default().model),
    }
}

/// Refuses `--data` too short for one window of `model`, before anything
/// of the run is written.
fn check_fits_a_window(model: &ModelConfig, path: &Path, tokens: usize) -> anyhow::Result<()> {
    Sampler::check_fits(tokens, model.context_len as usize).with_context(|| {
        format!(
            "--data {} is too short for the run's model, which reads windows of {} tokens \
             (one per byte)",
            path.display(),
            model.context_len
        )
    })
}

fn load_or_create_key(path: &Path) -> anyhow::Result<p2ptrain_protocol::SigningKey> {
    if path.exists() {
        return Ok(keyfile::load(path)?);
    }
    let key = keyfile::generate()?;
    keyfile::save(path, &key).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("created key {}", path.display());
    Ok(key)
}

#[cfg(test)]
mod tests {
    use p2ptrain_node::chain::ChainError;

    use super::*;

    fn write_failed(kind: std::io::ErrorKind) -> NodeError {
        NodeError::Chain(ChainError::Write {
            path: "d/head.ckpt".to_owned(),
            error: std::io::Error::from(kind),
        })
    }

    #[test]
    fn a_full_disk_is_told_with_what_to_do() {
        let dir = Path::new("d");
        let full = format!(
            "{:#}",
            stop_error(write_failed(std::io::ErrorKind::StorageFull), dir)
        );
        let told = "the disk holding d is full: free some space, and the same command goes on \
                    from what the directory holds (no file in it is half-written): \
                    the node stopped with an error: writing d/head.ckpt";
        assert!(full.starts_with(told), "{full}");
        let denied = format!(
            "{:#}",
            stop_error(write_failed(std::io::ErrorKind::PermissionDenied), dir)
        );
        assert!(
            denied.starts_with("the node stopped with an error: writing d/head.ckpt"),
            "{denied}"
        );
    }
}
