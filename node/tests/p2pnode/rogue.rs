//! A dishonest peer against a real `p2pnode`: it announces a signed
//! contribution, then serves other bytes than the ones it named. The node
//! drops it as `payload_mismatch`, counts it, and trains on.

use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{gossipsub, Multiaddr};
use p2ptrain_kernels::compress;
use p2ptrain_node::chain::DataDir;
use p2ptrain_node::net::codec::{FetchRequest, FetchResponse};
use p2ptrain_node::net::{build_swarm, fetch, topics, BehaviourEvent, NetConfig};
use p2ptrain_protocol::{codec, Contribution, Digest, PayloadRef, PeerKey, Signed, SigningKey};
use p2ptrain_trainer::ParamLayout;

use crate::harness::{exclusive, init, run_ok, scratch, Node, Stream};

/// The rogue peer's key.
fn rogue_key() -> SigningKey {
    SigningKey::from_bytes(&[0xbd; 32])
}

/// Runs the rogue peer until `stop`: dials `node`, announces a round-0
/// contribution of the run in `dir`, and answers its fetch with a payload
/// one byte off.
fn rogue(
    dir: &DataDir,
    node: Multiaddr,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> std::thread::JoinHandle<()> {
    let manifest = dir.manifest().unwrap();
    let run = manifest.id().unwrap();
    let params = ParamLayout::gpt2(&manifest.model).len();
    let key = rogue_key();
    let payload = compress(
        &vec![1e-3; params],
        &mut vec![0.0; params],
        &manifest.compression,
    )
    .unwrap()
    .encode()
    .unwrap();
    let contribution = Contribution {
        run,
        round: 0,
        base: manifest.genesis,
        author: PeerKey::from(&key),
        tokens: 100,
        payload: PayloadRef {
            hash: Digest::of(&payload),
            len: payload.len() as u64,
        },
        compression: manifest.compression,
    };
    let signed = Signed::sign(&contribution, &key).unwrap();
    let mut tampered = payload.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x40;
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let config = NetConfig {
                mdns: false,
                ..NetConfig::default()
            };
            let mut swarm = build_swarm(&key, &config).unwrap();
            let topics = topics(&run);
            swarm
                .behaviour_mut()
                .gossipsub
                .subscribe(&topics.announce)
                .unwrap();
            let mut requests = fetch::serve(&mut swarm.behaviour().fetch.new_control()).unwrap();
            swarm.dial(node).unwrap();
            let announcement = codec::encode(&signed).unwrap();
            loop {
                let event = tokio::select! {
                    _ = &mut stop => break,
                    event = swarm.next() => event,
                    Some(request) = requests.recv() => {
                        let response = match request.request {
                            FetchRequest::Payload(_) => FetchResponse::Found {
                                header: announcement.clone(),
                                body: tampered.clone().into(),
                            },
                            _ => FetchResponse::Missing,
                        };
                        request.respond(response);
                        continue;
                    }
                };
                if let Some(SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(
                    gossipsub::Event::Subscribed { topic, .. },
                ))) = event
                {
                    if topic == topics.announce.hash() {
                        let _ = swarm
                            .behaviour_mut()
                            .gossipsub
                            .publish(topics.announce.clone(), announcement.clone());
                    }
                }
            }
        });
    })
}

#[test]
fn a_tampered_payload_is_dropped_and_counted() {
    let _machine = exclusive();
    let root = scratch("rogue");
    let dir = root.join("honest");
    // Two contributions per round: the honest node waits for the rogue's.
    init(&dir, 2);
    let mut node = Node::join("honest", &dir, &root.join("honest.key"), &[]);
    let address: Multiaddr = node.address().parse().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let rogue = rogue(&DataDir::new(&dir), address, stopped);
    // The log names the contribution, its author and what was wrong.
    let by = format!(
        " by {}: payload_mismatch (the bytes served",
        PeerKey::from(&rogue_key())
    );
    node.wait_for("the tampered payload dropped", |s, line| {
        (s == Stream::Err && line.starts_with("dropped contribution ") && line.contains(&by))
            .then_some(())
    });
    let status = run_ok(&["status", "--dir", dir.to_str().unwrap(), "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["rejected"]["payload_mismatch"], 1, "{status}");
    // Nothing of it reached the chain: no round closed on one contribution.
    assert_eq!(status["round"], 0, "{status}");
    stop.send(()).unwrap();
    rogue.join().unwrap();
    drop(node);
    std::fs::remove_dir_all(root).unwrap();
}
