//! Three nodes in one process, on loopback, each with its own data
//! directory: they train, exchange, and end every round on the same
//! checkpoint; one node's directory then replays from genesis. And a node
//! whose round waits announces its contribution again.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{gossipsub, Multiaddr};
use p2ptrain_node::chain::{replay, ChainState, DataDir};
use p2ptrain_node::net::{build_swarm, topics, BehaviourEvent};
use p2ptrain_node::swarm_loop::{Command, Node, NodeEvent};
use p2ptrain_protocol::{codec, Contribution, Digest, RunManifest, Signed, SigningKey};
use p2ptrain_trainer::{Corpus, ParamLayout};
use tokio::sync::mpsc;

mod common;

use common::{cpu_node, loopback_net};

fn manifest() -> RunManifest {
    let mut manifest = RunManifest {
        inner_steps: 2,
        ..RunManifest::default()
    };
    manifest.inner.batch_size = 2;
    manifest.inner.warmup_steps = 2;
    manifest.compression.density = 0.1;
    manifest.rounds.deadline_ms = 20_000;
    manifest.rounds.commit_window_ms = 500;
    // All three start at once: none may close a round alone before the
    // others are connected.
    manifest.rounds.min_contributors = 3;
    let genesis = ChainState::genesis(ParamLayout::gpt2(&manifest.model).initial_values(5));
    manifest.genesis = genesis.hash();
    manifest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_agree_on_every_round_and_the_record_replays() {
    let manifest = manifest();
    let genesis = ChainState::genesis(ParamLayout::gpt2(&manifest.model).initial_values(5));
    let corpus = Corpus::bundled();
    let root = std::env::temp_dir().join(format!("p2ptrain-swarm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (events_tx, mut events) = mpsc::channel(256);
    let mut commands = Vec::new();
    let mut running = Vec::new();
    let mut dirs = Vec::new();
    let mut statuses = Vec::new();
    for i in 0..3u8 {
        let dir = DataDir::new(root.join(format!("node{i}")));
        dir.write_manifest(&manifest).unwrap();
        dir.write_genesis(&genesis).unwrap();
        dirs.push(dir.clone());
        let tokens = corpus.shard(usize::from(i), 3).unwrap().to_vec();
        let setup = cpu_node(dir, i + 1, loopback_net(), tokens);
        let (node_events, mut from_node) = mpsc::channel(64);
        let node = Node::new(setup, node_events).unwrap();
        statuses.push(node.status());
        let (command_tx, command_rx) = mpsc::channel(8);
        commands.push(command_tx);
        running.push(tokio::spawn(node.run(command_rx)));
        let tx = events_tx.clone();
        tokio::spawn(async move {
            while let Some(event) = from_node.recv().await {
                if tx.send((i, event)).await.is_err() {
                    break;
                }
            }
        });
    }

    let mut listening: BTreeMap<u8, Multiaddr> = BTreeMap::new();
    let mut finalized: BTreeMap<u64, BTreeMap<u8, Digest>> = BTreeMap::new();
    let rounds = 2;
    tokio::time::timeout(Duration::from_secs(240), async {
        while let Some((i, event)) = events.recv().await {
            match event {
                NodeEvent::Listening(address) => {
                    // Each node dials the ones that listened before it.
                    for (&j, other) in &listening {
                        if j != i {
                            commands[usize::from(i)]
                                .send(Command::Dial(other.clone()))
                                .await
                                .unwrap();
                        }
                    }
                    listening.insert(i, address);
                }
                NodeEvent::Finalized {
                    round, checkpoint, ..
                } => {
                    finalized.entry(round).or_default().insert(i, checkpoint);
                    let done = (0..rounds).all(|r| finalized.get(&r).is_some_and(|m| m.len() == 3));
                    if done {
                        return;
                    }
                }
                NodeEvent::Rejected(rejection) => {
                    panic!(
                        "node {i} rejected an honest contribution: {}",
                        rejection.reason
                    )
                }
                _ => {}
            }
        }
    })
    .await
    .expect("two rounds within four minutes");
    for command in &commands {
        let _ = command.send(Command::Shutdown).await;
    }
    for node in running {
        node.await.unwrap().unwrap();
    }
    // Each served the others its payloads, and counted them.
    for (i, status) in statuses.iter().enumerate() {
        let status = status.borrow();
        assert!(
            status.served >= 1 && status.answered >= status.served,
            "node {i}: {} served of {} answered",
            status.served,
            status.answered
        );
    }
    for r in 0..rounds {
        let hashes: Vec<&Digest> = finalized[&r].values().collect();
        assert!(
            hashes.windows(2).all(|w| w[0] == w[1]),
            "round {r}: {hashes:?}"
        );
    }
    let params = ParamLayout::gpt2(&manifest.model).len();
    let verified = replay(&dirs[0], params).unwrap();
    assert!(verified.rounds >= rounds);
    assert_eq!(verified.head, finalized[&(verified.rounds - 1)][&0]);
    std::fs::remove_dir_all(&root).unwrap();
}

/// A node whose round waits for another contribution announces its own
/// again and again: a peer that never contributes hears it three times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_repeats_its_announcement_while_its_round_waits() {
    let mut manifest = manifest();
    manifest.rounds.min_contributors = 2;
    let genesis = ChainState::genesis(ParamLayout::gpt2(&manifest.model).initial_values(5));
    let root = std::env::temp_dir().join(format!("p2ptrain-repeat-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let dir = DataDir::new(root.join("node"));
    dir.write_manifest(&manifest).unwrap();
    dir.write_genesis(&genesis).unwrap();
    let net = loopback_net();
    let tokens = Corpus::bundled().shard(0, 1).unwrap().to_vec();
    let setup = cpu_node(dir, 1, net.clone(), tokens);
    let (node_events, mut events) = mpsc::channel(64);
    let node = Node::new(setup, node_events).unwrap();
    let (command_tx, command_rx) = mpsc::channel(8);
    let running = tokio::spawn(node.run(command_rx));

    let mut observer = build_swarm(&SigningKey::from_bytes(&[2; 32]), &net).unwrap();
    let announce = topics(&manifest.id().unwrap()).announce;
    observer
        .behaviour_mut()
        .gossipsub
        .subscribe(&announce)
        .unwrap();
    let mut heard: Vec<Digest> = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            tokio::select! {
                Some(event) = events.recv() => {
                    if let NodeEvent::Listening(address) = event {
                        observer.dial(address).unwrap();
                    }
                }
                event = observer.select_next_some() => {
                    if let SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(
                        gossipsub::Event::Message { message, .. },
                    )) = event
                    {
                        let signed: Signed<Contribution> = codec::decode(&message.data).unwrap();
                        heard.push(signed.id());
                        if heard.len() == 3 {
                            return;
                        }
                    }
                }
            }
        }
    })
    .await
    .expect("three announcements within two minutes");
    assert!(heard.windows(2).all(|w| w[0] == w[1]), "{heard:?}");
    command_tx.send(Command::Shutdown).await.unwrap();
    running.await.unwrap().unwrap();
    std::fs::remove_dir_all(&root).unwrap();
}
