//! A node's TCP stack (its own TLS set-up, noise, its own yamux set-up)
//! against a stock libp2p peer: a payload crosses each way, over libp2p's
//! TLS and over noise.

use std::time::Duration;

use futures::StreamExt;
use libp2p::request_response::{self, Message, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, Multiaddr, PeerId, Swarm};
use p2ptrain_protocol::{Digest, SigningKey};

use super::codec::{FetchCodec, FetchRequest, FetchResponse, FETCH_PROTOCOL};
use super::{build_swarm, Behaviour, BehaviourEvent, NetConfig};

/// Larger than yamux's initial window and many of this side's frames.
const PAYLOAD_BYTES: usize = 3 << 20;

type Stock = request_response::Behaviour<FetchCodec>;

/// The security a stock peer offers.
#[derive(Debug, Clone, Copy)]
enum Security {
    Tls,
    Noise,
}

fn stock_peer(security: Security) -> Swarm<Stock> {
    let behaviour = |_: &libp2p::identity::Keypair| {
        request_response::Behaviour::with_codec(
            FetchCodec,
            [(FETCH_PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default(),
        )
    };
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
    received: Option<Vec<u8>>,
}

impl Seen {
    fn on_response(&mut self, response: FetchResponse) {
        if let FetchResponse::Found { body, .. } = response {
            self.received = Some(body.to_vec());
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
/// payload once connected and serves its own.
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
    let (node_payload, stock_payload) = (payload(1), payload(2));
    let (mut node_seen, mut stock_seen) = (Seen::default(), Seen::default());
    let wanted = FetchRequest::Payload(Digest::of(b"any"));
    while node_seen.received.is_none() || stock_seen.received.is_none() {
        tokio::select! {
            event = node.select_next_some() => match event {
                SwarmEvent::NewListenAddr { address, .. } => {
                    let address: Multiaddr = address;
                    stock.dial(address).unwrap();
                }
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    node_seen.connected = Some(peer_id);
                    node.behaviour_mut().fetch.send_request(&peer_id, wanted);
                }
                SwarmEvent::Behaviour(BehaviourEvent::Fetch(request_response::Event::Message {
                    message, ..
                })) => match message {
                    Message::Request { channel, .. } => {
                        let _ = node.behaviour_mut().fetch.send_response(channel, found(&node_payload));
                    }
                    Message::Response { response, .. } => node_seen.on_response(response),
                },
                _ => {}
            },
            event = stock.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    stock_seen.connected = Some(peer_id);
                    stock.behaviour_mut().send_request(&peer_id, wanted);
                }
                SwarmEvent::Behaviour(request_response::Event::Message { message, .. }) => {
                    match message {
                        Message::Request { channel, .. } => {
                            let _ = stock.behaviour_mut().send_response(channel, found(&stock_payload));
                        }
                        Message::Response { response, .. } => stock_seen.on_response(response),
                    }
                }
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    panic!("the stock peer could not connect over {security:?}: {error}")
                }
                _ => {}
            },
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
        node_seen.received == Some(payload(2)),
        "node got other bytes"
    );
    assert!(
        stock_seen.received == Some(payload(1)),
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
