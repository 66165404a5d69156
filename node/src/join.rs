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

use std::path::{Path, PathBuf};

use anyhow::Context;
use libp2p::Multiaddr;
use p2ptrain_node::chain::{DataDir, ResumedFrom};
use p2ptrain_node::keyfile;
use p2ptrain_node::net::{access, NetConfig};
use p2ptrain_node::swarm_loop::{Command, Node, NodeEvent, NodeSetup};
use p2ptrain_protocol::PeerKey;
use p2ptrain_trainer::Corpus;
use tokio::sync::mpsc;

/// The options of `p2pnode join`.
#[derive(clap::Args)]
pub struct JoinArgs {
    /// The data directory: a run made by `p2pnode init`, or an empty folder
    /// (a new run on the bundled defaults is started there). A directory
    /// that already holds rounds resumes after the last one.
    #[arg(long, default_value = "p2ptrain-data")]
    dir: PathBuf,
    /// This node's key (created if missing).
    #[arg(long, default_value = "node.key")]
    key: PathBuf,
    /// Addresses to listen on.
    #[arg(long, default_value = "/ip4/0.0.0.0/tcp/0")]
    listen: Vec<Multiaddr>,
    /// Peers to dial at start (besides those mDNS finds on the LAN).
    #[arg(long)]
    bootstrap: Vec<Multiaddr>,
    /// Train on these files or folders (recursive) instead of the bundled
    /// corpus. The data never leaves this machine.
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
    /// Stop once the chain holds this many rounds (0: run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    rounds: u64,
}

pub async fn join(args: JoinArgs) -> anyhow::Result<()> {
    let data = DataDir::new(&args.dir);
    if data.manifest().is_err() {
        eprintln!(
            "no run in {}: starting a new one on the bundled defaults",
            args.dir.display()
        );
        crate::init(&data, &crate::InitArgs::default())?;
    }
    let key = load_or_create_key(&args.key)?;
    let tokens = match &args.data {
        Some(path) => Corpus::load(path, 0)
            .with_context(|| format!("reading --data {}", path.display()))?
            .train()
            .to_vec(),
        None => Corpus::bundled().train().to_vec(),
    };
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
    if let Some(keys) = &allow_list {
        eprintln!("allow-list: {} peers", keys.len());
    }
    let setup = NodeSetup {
        data,
        key: key.clone(),
        net: NetConfig {
            mdns: !args.no_mdns,
            psk,
            allow_list,
            ..NetConfig::default()
        },
        listen: args.listen.clone(),
        tokens,
        device: args.device.clone(),
    };
    let (events_tx, mut events) = mpsc::channel(256);
    let node = Node::new(setup, events_tx).context("starting the node")?;
    tell_start(&node);
    if args.rounds > 0 && node.head().round >= args.rounds {
        eprintln!("the chain already holds {} rounds", node.head().round);
        return Ok(());
    }
    let (commands, command_rx) = mpsc::channel(16);
    let running = tokio::spawn(node.run(command_rx));
    for address in args.bootstrap {
        commands.send(Command::Dial(address)).await?;
    }
    let me = PeerKey::from(&key);
    eprintln!("node {me} — waiting for peers; it trains alone until some join");
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                if let Some(round) = tell(&me, event) {
                    if args.rounds > 0 && round + 1 >= args.rounds {
                        break;
                    }
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let _ = commands.send(Command::Shutdown).await;
    running.await?.context("the node stopped with an error")?;
    Ok(())
}

/// Says where the chain starts: genesis, or a resumed round.
fn tell_start(node: &Node) {
    let head = node.head();
    match node.resumed_from() {
        ResumedFrom::Genesis => eprintln!("starting at genesis, checkpoint {}", head.base),
        ResumedFrom::Head => {
            eprintln!(
                "resuming from round {}, checkpoint {}",
                head.round, head.base
            );
        }
        ResumedFrom::Replayed { last_record, found } => {
            let found = found.map_or_else(|| "missing".to_owned(), |h| h.to_string());
            eprintln!(
                "head.ckpt ({found}) is not the result of round {last_record}: \
                 replayed the records from genesis"
            );
            eprintln!(
                "resuming from round {}, checkpoint {}",
                head.round, head.base
            );
        }
    }
}

/// Prints one event; returns the round whose result the node now holds,
/// if it is such an event.
fn tell(me: &PeerKey, event: NodeEvent) -> Option<u64> {
    match event {
        NodeEvent::Listening(address) => {
            let id = p2ptrain_node::net::peer_id(me).map(|p| p.to_string());
            eprintln!("listening on {address}/p2p/{}", id.unwrap_or_default());
            eprintln!(
                "  add a peer: p2pnode join --dir OTHER_DIR --key OTHER.key --bootstrap {address}"
            );
        }
        NodeEvent::Finalized {
            round,
            checkpoint,
            contributions,
            train_loss,
        } => {
            let loss = train_loss.map_or(String::new(), |l| format!(", train loss {l:.3}"));
            println!(
                "round {round}: checkpoint {checkpoint} ({contributions} contributions{loss})"
            );
            return Some(round);
        }
        NodeEvent::Adopted { round, checkpoint } => {
            println!("round {round}: checkpoint {checkpoint} (adopted from a peer)");
            return Some(round);
        }
        NodeEvent::Rejected(reason) => eprintln!("dropped a contribution: {reason}"),
        NodeEvent::PeerConnected(peer) => eprintln!("peer {peer} connected"),
        NodeEvent::PeerLeft(peer) => eprintln!("peer {peer} left"),
        NodeEvent::Refused(peer) => eprintln!("refused peer {peer}: not on the allow-list"),
        NodeEvent::DialFailed(error) => eprintln!("could not connect: {error}"),
    }
    None
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
