//! `p2pnode join`: run a node until stopped.

use std::path::{Path, PathBuf};

use anyhow::Context;
use libp2p::Multiaddr;
use p2ptrain_node::chain::DataDir;
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
    /// (a new run on the bundled defaults is started there).
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
    /// Do not look for peers on the LAN.
    #[arg(long)]
    no_mdns: bool,
    /// Stop after this many rounds (0: run until Ctrl-C).
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
        crate::init(&data, 0)?;
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
    let setup = NodeSetup {
        data,
        key: key.clone(),
        net: NetConfig {
            mdns: !args.no_mdns,
            psk,
            ..NetConfig::default()
        },
        listen: args.listen.clone(),
        tokens,
    };
    let (events_tx, mut events) = mpsc::channel(256);
    let node = Node::new(setup, events_tx).context("starting the node")?;
    let (commands, command_rx) = mpsc::channel(16);
    let running = tokio::spawn(node.run(command_rx));
    for address in args.bootstrap {
        commands.send(Command::Dial(address)).await?;
    }
    eprintln!(
        "node {} — waiting for peers; it trains alone until some join",
        PeerKey::from(&key)
    );
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(NodeEvent::Listening(address)) => {
                    eprintln!("listening on {address}/p2p/{}", p2ptrain_node::net::peer_id(&PeerKey::from(&key)).map(|p| p.to_string()).unwrap_or_default());
                    eprintln!("  add a peer: p2pnode join --dir OTHER_DIR --key OTHER.key --bootstrap {address}");
                }
                Some(NodeEvent::Finalized { round, checkpoint, contributions }) => {
                    println!("round {round}: checkpoint {checkpoint} ({contributions} contributions)");
                    if args.rounds > 0 && round + 1 >= args.rounds {
                        break;
                    }
                }
                Some(NodeEvent::Rejected(reason)) => eprintln!("dropped a contribution: {reason}"),
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let _ = commands.send(Command::Shutdown).await;
    running.await?.context("the node stopped with an error")?;
    Ok(())
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
