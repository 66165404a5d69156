//! Round sync among 4 peers on loopback with a 25M-parameter model: each
//! peer compresses its pseudo-gradient (top-1% at 8 bits with error
//! feedback, the run's defaults), announces it, fetches and verifies the
//! others' payloads, aggregates them in the outer step and commits the
//! result — the work Hivemind's all-reduce does for its peers.
//!
//! `cargo run --release -p p2ptrain-node --example bench_round_sync -- [--rounds 6] [--peers 4] [--density 0.01]`
//!
//! The peers are full nodes (`swarm_loop::Node`) in one process, each with
//! its own data directory, TCP + TLS + yamux on 127.0.0.1; only training
//! is replaced, by a fixed random pseudo-gradient, so the clock measures the
//! exchange. As in Hivemind's benchmark, the peers start together: each
//! round's sessions wait for one another (peers that finished training at
//! the same time), and the clock runs from then to the last peer holding
//! the agreed checkpoint. It prints each round and, over the rounds after
//! the first (connections and allocations settle in round 0), the median
//! of two spans: the whole round, compression included, and the exchange
//! alone — announce, fetch, verify, aggregate, commit — from the last
//! peer's update being ready to the last peer holding the agreed
//! checkpoint. `scripts/bench-round-sync.sh` runs Hivemind beside it.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use libp2p::Multiaddr;
use p2ptrain_kernels::compress;
use p2ptrain_node::chain::{ChainState, DataDir};
use p2ptrain_node::engine::LocalUpdate;
use p2ptrain_node::net::NetConfig;
use p2ptrain_node::swarm_loop::{
    Command, Node, NodeEvent, NodeSetup, ReplicaError, StepProgress, Training, Worker,
};
use p2ptrain_protocol::{CompressionSettings, Digest, RunManifest, SigningKey};
use p2ptrain_trainer::ParamLayout;
use tokio::sync::mpsc;

use common::MODEL;

mod common;

type Error = Box<dyn std::error::Error>;

/// Round sync among peers on loopback with a 25M-parameter model.
#[derive(clap::Parser)]
struct Args {
    /// Rounds to run (the first is not counted).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u64).range(2..))]
    rounds: u64,
    /// Peers in the swarm.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(2..=255))]
    peers: u16,
    /// Top-k density of each payload.
    #[arg(long, default_value_t = 0.01)]
    density: f32,
}

/// When a peer started and finished compressing its update for a round.
#[derive(Debug, Clone, Copy)]
struct Compressed {
    peer: usize,
    round: u64,
    started: Instant,
    finished: Instant,
    bytes: usize,
}

/// Where the peers' sessions wait for one another, so that a round starts
/// for all of them at once.
struct StartLine {
    peers: usize,
    /// Peers waiting, and how many times the line has opened.
    waiting: Mutex<(usize, u64)>,
    opened: Condvar,
}

impl StartLine {
    fn new(peers: usize) -> Self {
        Self {
            peers,
            waiting: Mutex::new((0, 0)),
            opened: Condvar::new(),
        }
    }

    /// Waits until every peer is here, or for at most `limit` (a peer that
    /// stopped does not hold the others forever).
    fn wait(&self, limit: Duration) {
        let Ok(mut waiting) = self.waiting.lock() else {
            return;
        };
        let generation = waiting.1;
        waiting.0 += 1;
        if waiting.0 == self.peers {
            *waiting = (0, generation + 1);
            self.opened.notify_all();
            return;
        }
        let _ = self
            .opened
            .wait_timeout_while(waiting, limit, |w| w.1 == generation);
    }
}

/// A peer's "training": the same random pseudo-gradient every round,
/// compressed with error feedback as a trained replica's would be.
struct FixedDelta {
    peer: usize,
    sessions: u64,
    delta: Vec<f32>,
    residual: Vec<f32>,
    settings: CompressionSettings,
    log: Arc<Mutex<Vec<Compressed>>>,
    start: Arc<StartLine>,
}

impl FixedDelta {
    fn new(
        peer: usize,
        len: usize,
        settings: CompressionSettings,
        log: Arc<Mutex<Vec<Compressed>>>,
        start: Arc<StartLine>,
    ) -> Self {
        // xorshift64*: uniform in [-1e-3, 1e-3), different for every peer.
        let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (peer as u64 + 1);
        let delta = (0..len)
            .map(|_| {
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                let bits = state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
                (bits as f32 / (1u64 << 24) as f32 - 0.5) * 2e-3
            })
            .collect();
        Self {
            peer,
            sessions: 0,
            delta,
            residual: vec![0.0; len],
            settings,
            log,
            start,
        }
    }
}

impl Worker for FixedDelta {
    fn session(
        &mut self,
        _start: &[f32],
        _progress: &mut dyn FnMut(StepProgress) -> std::ops::ControlFlow<()>,
    ) -> Result<LocalUpdate, ReplicaError> {
        self.start.wait(Duration::from_secs(10));
        let started = Instant::now();
        let payload = compress(&self.delta, &mut self.residual, &self.settings)?.encode()?;
        let entry = Compressed {
            peer: self.peer,
            round: self.sessions,
            started,
            finished: Instant::now(),
            bytes: payload.len(),
        };
        if let Ok(mut log) = self.log.lock() {
            log.push(entry);
        }
        self.sessions += 1;
        Ok(LocalUpdate {
            payload: Arc::from(payload),
            tokens: 1_000,
        })
    }

    fn last_loss(&self) -> Option<f32> {
        None
    }

    fn return_to_residual(&mut self, payload: &[u8]) -> Result<(), ReplicaError> {
        let payload = p2ptrain_kernels::Payload::decode(payload)?;
        p2ptrain_kernels::decompress_into(&payload, 1.0, &mut self.residual)?;
        Ok(())
    }

    fn residual(&self) -> Result<Option<Vec<f32>>, ReplicaError> {
        Ok(Some(self.residual.clone()))
    }

    fn restore_residual(&mut self, values: &[f32]) -> Result<(), ReplicaError> {
        self.residual.copy_from_slice(values);
        Ok(())
    }
}

/// What the collector saw of one round.
#[derive(Debug, Default)]
struct RoundSeen {
    /// Each peer's result and when it reported it.
    aggregated: BTreeMap<usize, (Digest, Instant, usize)>,
    finalized: BTreeMap<usize, Instant>,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Error> {
    let Args {
        rounds,
        peers,
        density,
    } = clap::Parser::parse();
    let peers = usize::from(peers);
    // As `p2pnode join` does.
    p2ptrain_trainer::allocator::keep_freed_memory();
    p2ptrain_node::compute::start_compute_pool()?;

    let mut manifest = RunManifest {
        name: "bench-round-sync".to_owned(),
        model: MODEL,
        ..RunManifest::default()
    };
    manifest.compression.density = density;
    manifest.rounds.min_contributors = u32::try_from(peers)?;
    manifest.rounds.deadline_ms = 60_000;
    manifest.rounds.commit_window_ms = 200;
    let layout = ParamLayout::gpt2(&MODEL);
    let params = layout.len();
    eprintln!(
        "{peers} peers, {:.1}M parameters, top-{:.0}% at {} bits, {rounds} rounds",
        params as f64 / 1e6,
        density * 100.0,
        manifest.compression.value_bits.bits()
    );
    let genesis = ChainState::genesis(layout.initial_values(1));
    manifest.genesis = genesis.hash();

    let root = std::env::temp_dir().join(format!("p2ptrain-round-sync-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let log = Arc::new(Mutex::new(Vec::new()));
    let start_line = Arc::new(StartLine::new(peers));
    let (events_tx, mut events) = mpsc::channel(1024);
    let mut commands = Vec::new();
    let mut running = Vec::new();
    for peer in 0..peers {
        let dir = DataDir::new(root.join(format!("peer{peer}")));
        dir.write_manifest(&manifest)?;
        dir.write_genesis(&genesis)?;
        let worker = FixedDelta::new(
            peer,
            params,
            manifest.compression,
            log.clone(),
            start_line.clone(),
        );
        let setup = NodeSetup {
            data: dir,
            key: SigningKey::from_bytes(&[u8::try_from(peer)? + 1; 32]),
            net: NetConfig {
                mdns: false,
                ..NetConfig::default()
            },
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
            training: Training::Worker(Box::new(worker)),
        };
        let (node_events, mut from_node) = mpsc::channel(256);
        let node = Node::new(setup, node_events)?;
        let (command_tx, command_rx) = mpsc::channel(8);
        commands.push(command_tx);
        running.push(tokio::spawn(node.run(command_rx)));
        let tx = events_tx.clone();
        tokio::spawn(async move {
            while let Some(event) = from_node.recv().await {
                if tx.send((peer, event, Instant::now())).await.is_err() {
                    break;
                }
            }
        });
    }

    let mut listening: BTreeMap<usize, Multiaddr> = BTreeMap::new();
    let mut seen: BTreeMap<u64, RoundSeen> = BTreeMap::new();
    let limit = Duration::from_secs(60 + 30 * rounds);
    let finished = tokio::time::timeout(limit, async {
        while let Some((peer, event, at)) = events.recv().await {
            match event {
                NodeEvent::Listening(address) => {
                    for (&other, address) in &listening {
                        if other != peer {
                            let _ = commands[peer].send(Command::Dial(address.clone())).await;
                        }
                    }
                    listening.insert(peer, address);
                }
                NodeEvent::Aggregated {
                    round,
                    checkpoint,
                    contributions,
                } => {
                    seen.entry(round)
                        .or_default()
                        .aggregated
                        .insert(peer, (checkpoint, at, contributions));
                }
                NodeEvent::Finalized { round, .. } => {
                    let round_seen = seen.entry(round).or_default();
                    round_seen.finalized.insert(peer, at);
                    if round + 1 >= rounds
                        && (0..rounds)
                            .all(|r| seen.get(&r).is_some_and(|s| s.finalized.len() == peers))
                    {
                        return true;
                    }
                }
                NodeEvent::Rejected(rejection) => {
                    eprintln!("peer {peer} dropped a contribution: {}", rejection.reason)
                }
                NodeEvent::Adopted { round, .. } => eprintln!("peer {peer} adopted round {round}"),
                _ => {}
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    for command in &commands {
        let _ = command.send(Command::Shutdown).await;
    }
    for node in running {
        node.await??;
    }
    let _ = std::fs::remove_dir_all(&root);
    if !finished {
        return Err(format!("the {rounds} rounds did not all finish within {limit:?}").into());
    }
    let compressed = log.lock().map_err(|_| "log poisoned")?.clone();
    report(&seen, &compressed, peers)
}

/// Prints each round and the median of the rounds after the first.
fn report(seen: &BTreeMap<u64, RoundSeen>, log: &[Compressed], peers: usize) -> Result<(), Error> {
    let (mut syncs, mut exchanges) = (Vec::new(), Vec::new());
    for (&round, round_seen) in seen {
        let compressed: Vec<&Compressed> = log.iter().filter(|c| c.round == round).collect();
        let results: Vec<&Digest> = round_seen.aggregated.values().map(|(d, _, _)| d).collect();
        if results.len() != peers || results.windows(2).any(|w| w[0] != w[1]) {
            return Err(format!("round {round}: peers did not agree: {results:?}").into());
        }
        let start = compressed
            .iter()
            .map(|c| c.started)
            .min()
            .ok_or("no start")?;
        let last_start = compressed
            .iter()
            .map(|c| c.started)
            .max()
            .ok_or("no start")?;
        let compress_ms = compressed
            .iter()
            .map(|c| (c.finished - c.started).as_secs_f64() * 1e3)
            .fold(0.0, f64::max);
        let agreed = round_seen
            .aggregated
            .values()
            .map(|(_, at, _)| *at)
            .max()
            .ok_or("no result")?;
        let last_compressed = compressed
            .iter()
            .map(|c| c.finished)
            .max()
            .ok_or("no end")?;
        let sync = (agreed - start).as_secs_f64();
        let bytes = compressed.iter().map(|c| c.bytes).max().unwrap_or(0);
        let applied = round_seen
            .aggregated
            .values()
            .map(|(_, _, n)| *n)
            .max()
            .unwrap_or(0);
        println!(
            "round {round}: starts spread {:5.1} ms, compress {compress_ms:5.1} ms, \
             exchange+aggregate {:5.1} ms, all {peers} on one checkpoint after {:6.1} ms \
             ({applied} contributions, payload {:.2} MB per peer; {})",
            (last_start - start).as_secs_f64() * 1e3,
            (agreed - last_compressed).as_secs_f64() * 1e3,
            sync * 1e3,
            bytes as f64 / 1e6,
            &results[0].to_string()[..16],
        );
        if round > 0 {
            syncs.push(sync);
            exchanges.push((agreed - last_compressed).as_secs_f64());
        }
        // Peers read by log order: one entry per peer per round.
        debug_assert!(compressed.iter().all(|c| c.peer < peers));
    }
    syncs.sort_by(f64::total_cmp);
    exchanges.sort_by(f64::total_cmp);
    let median = |spans: &[f64]| spans[spans.len() / 2];
    println!(
        "SUMMARY p2ptrain peers={peers}: round sync median {:.3}s (min {:.3}s) over {} rounds; \
         exchange median {:.3}s (min {:.3}s)",
        median(&syncs),
        syncs[0],
        syncs.len(),
        median(&exchanges),
        exchanges[0],
    );
    Ok(())
}
