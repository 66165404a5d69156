//! A node's TCP stack (its own TLS set-up, noise, its own yamux set-up)
//! against a stock libp2p peer (libp2p's TLS or noise, libp2p's yamux,
//! libp2p's stream behaviour): a payload crosses each way on the fetch
//! streams, twice, over libp2p's TLS and over noise.

use std::time::Duration;

use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, Multiaddr, PeerId, Swarm};
use p2ptrain_protocol::{Digest, SigningKey};

use super::codec::{FetchRequest, FetchResponse};
use super::fetch::{self, Fetcher};
use super::{build_swarm, Behaviour, NetConfig};

/// Larger than yamux's initial window and many of this side's frames.
const PAYLOAD_BYTES: usize = 3 << 20;

type Stock = libp2p_stream::Behaviour;

/// Each side fetches this many times over its one stream.
const FETCHES: usize = 2;

/// The security a stock peer offers.
#[derive(Debug, Clone, Copy)]
enum Security {
    Tls,
    Noise,
}

fn stock_peer(security: Security) -> Swarm<Stock> {
    let behaviour = |_: &libp2p::identity::Keypair| libp2p_stream::Behaviour::new();
    let builder = libp2p::SwarmBuilder::with_new_identity().with_tokio();
    let idle = |c: libp2p::swarm::Config| c.with_idle_connection_timeout(Duration::from_secs(60));
    match security {
        Security::Tls => builder
            .with_tcp(
                tcp::Config::default(),
                libp2p::tls::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(behaviour)
            .unwrap()
            .with_swarm_config(idle)
            .build(),
        Security::Noise => builder
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(behaviour)
            .unwrap()
            .with_swarm_config(idle)
            .build(),
    }
}

fn payload(seed: u8) -> Vec<u8> {
    (0..PAYLOAD_BYTES).map(|i| (i % 251) as u8 ^ seed).collect()
}

/// What one side of the exchange saw.
#[derive(Debug, Default)]
struct Seen {
    connected: Option<PeerId>,
    received: Vec<Vec<u8>>,
}

impl Seen {
    fn on_answer(&mut self, answer: fetch::FetchAnswer) {
        if let Ok(FetchResponse::Found { body, .. }) = answer.result {
            self.received.push(body.to_vec());
        }
    }
}

fn found(body: &[u8]) -> FetchResponse {
    FetchResponse::Found {
        header: Vec::new(),
        body: body.into(),
    }
}

/// The node listens, the stock peer dials; each asks the other for its
/// payload [`FETCHES`] times once connected and serves its own.
async fn exchange(security: Security) -> (Seen, Seen) {
    let config = NetConfig {
        mdns: false,
        ..NetConfig::default()
    };
    let mut node: Swarm<Behaviour> =
        build_swarm(&SigningKey::from_bytes(&[7; 32]), &config).unwrap();
    let mut stock = stock_peer(security);
    node.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let mut node_control = node.behaviour().fetch.new_control();
    let mut stock_control = stock.behaviour().new_control();
    let mut node_requests = fetch::serve(&mut node_control).unwrap();
    let mut stock_requests = fetch::serve(&mut stock_control).unwrap();
    let (mut node_fetcher, mut node_answers) =
        Fetcher::new(node_control, config.fetch_timeout, PAYLOAD_BYTES as u64);
    let (mut stock_fetcher, mut stock_answers) =
        Fetcher::new(stock_control, config.fetch_timeout, PAYLOAD_BYTES as u64);
    let (node_payload, stock_payload) = (payload(1), payload(2));
    let (mut node_seen, mut stock_seen) = (Seen::default(), Seen::default());
    let wanted = FetchRequest::Payload(Digest::of(b"any"));
    while node_seen.received.len() < FETCHES || stock_seen.received.len() < FETCHES {
        tokio::select! {
            event = node.select_next_some() => match event {
                SwarmEvent::NewListenAddr { address, .. } => {
                    let address: Multiaddr = address;
                    stock.dial(address).unwrap();
                }
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    node_seen.connected = Some(peer_id);
                    for _ in 0..FETCHES {
                        node_fetcher.send(peer_id, wanted);
                    }
                }
                _ => {}
            },
            event = stock.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    stock_seen.connected = Some(peer_id);
                    for _ in 0..FETCHES {
                        stock_fetcher.send(peer_id, wanted);
                    }
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    panic!("the stock peer could not connect over {security:?}: {error}")
                }
                _ => {}
            },
            Some(request) = node_requests.recv() => request.respond(found(&node_payload)),
            Some(request) = stock_requests.recv() => request.respond(found(&stock_payload)),
            Some(answer) = node_answers.recv() => node_seen.on_answer(answer),
            Some(answer) = stock_answers.recv() => stock_seen.on_answer(answer),
        }
    }
    assert_eq!(node_seen.connected, Some(*stock.local_peer_id()));
    assert_eq!(stock_seen.connected, Some(*node.local_peer_id()));
    (node_seen, stock_seen)
}

async fn payloads_cross_each_way(security: Security) {
    let (node_seen, stock_seen) = tokio::time::timeout(Duration::from_secs(60), exchange(security))
        .await
        .expect("the exchange finished within a minute");
    assert!(
        node_seen.received == vec![payload(2); FETCHES],
        "node got other bytes"
    );
    assert!(
        stock_seen.received == vec![payload(1); FETCHES],
        "stock peer got other bytes"
    );
}

#[tokio::test]
async fn a_payload_crosses_each_way_with_a_stock_peer_over_libp2p_tls() {
    payloads_cross_each_way(Security::Tls).await;
}

#[tokio::test]
async fn a_payload_crosses_each_way_with_a_stock_peer_over_noise() {
    payloads_cross_each_way(Security::Noise).await;
}
