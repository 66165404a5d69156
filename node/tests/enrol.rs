//! A node that holds no run fetches one from a peer of it: the manifest
//! by its id, the genesis checkpoint in slices, both checked; a run that
//! no peer holds ends in an error that says so.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::Multiaddr;
use p2ptrain_node::chain::{ChainState, DataDir};
use p2ptrain_node::net::build_swarm;
use p2ptrain_node::net::codec::FetchResponse;
use p2ptrain_node::net::fetch;
use p2ptrain_node::swarm_loop::{fetch_run, Command, EnrolError, Enrolling, Node, NodeEvent};
use p2ptrain_protocol::{codec, Digest, InvalidManifest, RunManifest, SigningKey};
use p2ptrain_trainer::{Corpus, ParamLayout};
use tokio::sync::mpsc;

mod common;

use common::{cpu_node, loopback_net as net};

/// A run of another seed than the bundled one, written into `dir`.
fn write_run(dir: &DataDir) -> (RunManifest, ChainState) {
    let mut manifest = RunManifest {
        seed: 11,
        inner_steps: 2,
        ..RunManifest::default()
    };
    manifest.inner.batch_size = 2;
    manifest.rounds.min_contributors = 1;
    let genesis = ChainState::genesis(ParamLayout::gpt2(&manifest.model).initial_values(11));
    manifest.genesis = genesis.hash();
    dir.write_run(&manifest, &genesis).unwrap();
    (manifest, genesis)
}

/// A node running on a data directory.
struct Running {
    address: Multiaddr,
    commands: mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<Result<(), p2ptrain_node::swarm_loop::NodeError>>,
}

impl Running {
    /// Stops the node and waits until it has.
    async fn stop(self) {
        self.commands.send(Command::Shutdown).await.unwrap();
        self.task.await.unwrap().unwrap();
    }
}

/// Starts a node on `dir`; returns once it listens and has closed its
/// first round alone (so that it serves its run's genesis from its data
/// directory, no longer from memory).
async fn serve(dir: DataDir) -> Running {
    let setup = cpu_node(dir, 7, net(), Corpus::bundled().tokens().to_vec());
    let (events_tx, mut events) = mpsc::channel(64);
    let node = Node::new(setup, events_tx).unwrap();
    let (commands, command_rx) = mpsc::channel(4);
    let task = tokio::spawn(node.run(command_rx));
    let mut address = None;
    loop {
        match events.recv().await {
            Some(NodeEvent::Listening(listening)) => address = Some(listening),
            Some(NodeEvent::Finalized { .. }) if address.is_some() => break,
            Some(_) => {}
            None => panic!("the node stopped before it listened and closed a round"),
        }
    }
    let address = address.unwrap();
    // Its later events are not needed; keep it from blocking on them.
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    Running {
        address,
        commands,
        task,
    }
}

/// A run written into a scratch directory of its own, and a node on it.
struct Served {
    root: std::path::PathBuf,
    dir: DataDir,
    manifest: RunManifest,
    genesis: ChainState,
    node: Running,
}

impl Served {
    /// For the test named `test`.
    async fn start(test: &str) -> Self {
        let root = std::env::temp_dir().join(format!("p2ptrain-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = DataDir::new(root.join("held"));
        let (manifest, genesis) = write_run(&dir);
        let node = serve(dir.clone()).await;
        Self {
            root,
            dir,
            manifest,
            genesis,
            node,
        }
    }

    /// Stops the node and removes the directory.
    async fn stop(self) {
        self.node.stop().await;
        std::fs::remove_dir_all(self.root).unwrap();
    }
}

/// Fetches `run` from `peers`, which must fail within `patience`: the
/// error, and what was reported on the way.
async fn fetch_failing(
    run: Digest,
    peers: &[Multiaddr],
    patience: Duration,
) -> (EnrolError, Vec<Enrolling>) {
    let mut told = Vec::new();
    let key = SigningKey::from_bytes(&[9; 32]);
    let error = fetch_run(run, &key, &net(), peers, patience, &mut |step| {
        told.push(step);
    })
    .await
    .map(drop)
    .unwrap_err();
    (error, told)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_comes_from_a_peer_of_it_and_another_run_from_nobody() {
    let served = Served::start("enrol").await;
    let (manifest, genesis) = (&served.manifest, &served.genesis);
    let run = manifest.id().unwrap();
    let address = served.node.address.clone();
    let key = SigningKey::from_bytes(&[8; 32]);
    let patience = Duration::from_secs(60);

    let mut told = Vec::new();
    let (fetched, fetched_genesis) = fetch_run(
        run,
        &key,
        &net(),
        std::slice::from_ref(&address),
        patience,
        &mut |step| told.push(step),
    )
    .await
    .unwrap();
    assert_eq!(&fetched, manifest);
    assert_eq!(fetched_genesis.hash(), manifest.genesis);
    assert_eq!(fetched_genesis.params, genesis.params);
    let total = 8 * genesis.params.len() as u64;
    assert!(told.iter().any(|s| matches!(
        s,
        Enrolling::Manifest { genesis_len, .. } if *genesis_len == total
    )));
    // Several slices, the last of them completing the checkpoint.
    let slices: Vec<u64> = told
        .iter()
        .filter_map(|s| match s {
            Enrolling::Genesis { held, .. } => Some(*held),
            _ => None,
        })
        .collect();
    assert!(slices.len() > 1, "{told:?}");
    assert_eq!(slices.last(), Some(&total));

    // A run the peer does not hold: it says so, and the wait ends in an
    // error naming the run.
    let other = Digest::of(b"no such run");
    let (error, told) = fetch_failing(other, &[address], Duration::from_secs(5)).await;
    assert!(
        matches!(error, EnrolError::NoPeer { run, others: 1, unanswered: 0, .. } if run == other),
        "{error}"
    );
    assert!(told.iter().any(|s| matches!(s, Enrolling::NotOnRun(_))));
    assert!(error.to_string().contains(&other.to_string()));

    served.stop().await;
}

#[tokio::test]
async fn with_no_peer_to_ask_the_wait_ends_in_an_error() {
    let run = Digest::of(b"a run");
    let (error, _) = fetch_failing(run, &[], Duration::from_millis(200)).await;
    assert!(
        matches!(
            error,
            EnrolError::NoPeer {
                others: 0,
                unanswered: 0,
                ..
            }
        ),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_genesis_that_no_peer_can_send_ends_in_an_error_that_says_how_far_it_came() {
    let served = Served::start("enrol-lost").await;
    // Past genesis, the node reads it from its directory to serve it; the
    // file is gone now, so it can send the manifest but no slice.
    std::fs::remove_file(served.dir.root().join("genesis.ckpt")).unwrap();
    let run = served.manifest.id().unwrap();
    let peers = std::slice::from_ref(&served.node.address);
    let (error, _) = fetch_failing(run, peers, Duration::from_secs(3)).await;
    let total = 8 * served.genesis.params.len() as u64;
    assert!(
        matches!(error, EnrolError::Stalled { held: 0, total: t, .. } if t == total),
        "{error}"
    );
    served.stop().await;
}

#[tokio::test]
async fn a_peer_that_cannot_answer_is_counted_apart_from_one_on_another_run() {
    // A peer that serves no fetch requests, as a node that does not know
    // this one cannot answer it.
    let mut bare = build_swarm(&SigningKey::from_bytes(&[12; 32]), &net()).unwrap();
    bare.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let address = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = bare.select_next_some().await {
            break address;
        }
    };
    let serving = tokio::spawn(async move {
        loop {
            bare.select_next_some().await;
        }
    });
    let run = Digest::of(b"a run");
    let (error, told) = fetch_failing(run, &[address], Duration::from_secs(3)).await;
    assert!(
        matches!(
            error,
            EnrolError::NoPeer {
                others: 0,
                unanswered: 1,
                ..
            }
        ),
        "{error}"
    );
    assert!(told.iter().any(|s| matches!(s, Enrolling::NoAnswer { .. })));
    assert!(error.to_string().contains("1 could not answer"), "{error}");
    serving.abort();
}

#[tokio::test]
async fn a_run_whose_manifest_no_node_can_run_is_refused_before_its_genesis(
) -> Result<(), Box<dyn std::error::Error>> {
    // A run made with no inner steps: its manifest still has an id, and a
    // peer can send it, but no node could train it.
    let manifest = RunManifest {
        inner_steps: 0,
        ..RunManifest::default()
    };
    let bytes: Arc<[u8]> = codec::encode(&manifest)?.into();
    let run = Digest::of(&bytes);
    let mut peer = build_swarm(&SigningKey::from_bytes(&[13; 32]), &net())?;
    let mut requests = fetch::serve(&mut peer.behaviour().fetch.new_control())?;
    peer.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    let address = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = peer.select_next_some().await {
            break address;
        }
    };
    let serving = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = peer.select_next_some() => {}
                Some(request) = requests.recv() => request.respond(FetchResponse::Found {
                    header: Vec::new(),
                    body: bytes.clone(),
                }),
            }
        }
    });
    let (error, told) = fetch_failing(run, &[address], Duration::from_secs(30)).await;
    assert!(
        matches!(
            &error,
            EnrolError::Unrunnable { run: r, error: InvalidManifest::Zero { field: "inner_steps" } }
                if *r == run
        ),
        "{error}"
    );
    assert!(
        error.to_string().contains("inner_steps must be at least 1"),
        "{error}"
    );
    // Refused on the manifest: no genesis slice was asked for.
    assert!(!told.iter().any(|s| matches!(s, Enrolling::Manifest { .. })));
    serving.abort();
    Ok(())
}
