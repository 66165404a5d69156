//! Swarms on loopback: an announcement crosses gossipsub and the payload it
//! names comes back over `/p2ptrain/fetch/2`; a private swarm keeps an
//! outsider out; a node behind a relay serves a fetch.

use std::time::Duration;

use futures::StreamExt;
use libp2p::gossipsub;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use p2ptrain_node::net::codec::{FetchRequest, FetchResponse};
use p2ptrain_node::net::fetch::{self, Fetcher};
use p2ptrain_node::net::{build_swarm, peer_key, topics, BehaviourEvent, NetConfig};
use p2ptrain_protocol::{Digest, PeerKey, SigningKey};

#[tokio::test]
async fn an_announcement_crosses_gossip_and_its_payload_is_fetched() {
    let config = NetConfig {
        mdns: false,
        ..NetConfig::default()
    };
    let (key_a, key_b) = (
        SigningKey::from_bytes(&[1; 32]),
        SigningKey::from_bytes(&[2; 32]),
    );
    let mut a = build_swarm(&key_a, &config).unwrap();
    let mut b = build_swarm(&key_b, &config).unwrap();
    assert_eq!(peer_key(a.local_peer_id()), Some(PeerKey::from(&key_a)));
    let topics = topics(&Digest::of(b"run"));
    a.behaviour_mut()
        .gossipsub
        .subscribe(&topics.announce)
        .unwrap();
    b.behaviour_mut()
        .gossipsub
        .subscribe(&topics.announce)
        .unwrap();
    a.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let payload = vec![7u8; 3 << 20];
    let (mut fetcher, mut answers) = Fetcher::new(
        a.behaviour().fetch.new_control(),
        config.fetch_timeout,
        payload.len() as u64,
    );
    let mut requests = fetch::serve(&mut b.behaviour().fetch.new_control()).unwrap();

    let id = Digest::of(b"a contribution");
    let announcement = id.as_bytes().to_vec();
    let outcome = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            tokio::select! {
                event = a.select_next_some() => match event {
                    SwarmEvent::NewListenAddr { address, .. } => b.dial(address).unwrap(),
                    SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                        propagation_source, message, ..
                    })) => {
                        assert_eq!(message.data, announcement);
                        let wanted = Digest::from_bytes(message.data[..32].try_into().unwrap());
                        fetcher.send(propagation_source, FetchRequest::Payload(wanted));
                    }
                    _ => {}
                },
                Some(answer) = answers.recv() => return answer.result.unwrap(),
                event = b.select_next_some() => match event {
                    SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed {
                        topic, ..
                    })) if topic == topics.announce.hash() => {
                        b.behaviour_mut()
                            .gossipsub
                            .publish(topics.announce.clone(), announcement.clone())
                            .unwrap();
                    }
                    _ => {}
                },
                Some(request) = requests.recv() => {
                    assert_eq!(request.request, FetchRequest::Payload(id));
                    let found = FetchResponse::Found { header: vec![1, 2], body: payload.clone().into() };
                    request.respond(found);
                }
            }
        }
    })
    .await
    .expect("the exchange finishes within a minute");
    assert_eq!(
        outcome,
        FetchResponse::Found {
            header: vec![1, 2],
            body: payload.into()
        }
    );
}

fn psk(byte: u8) -> p2ptrain_node::net::access::SwarmKey {
    p2ptrain_node::net::access::SwarmKey::new([byte; 32])
}

#[tokio::test]
async fn a_node_with_another_pre_shared_key_cannot_connect() {
    let private = |byte| NetConfig {
        mdns: false,
        psk: Some(psk(byte)),
        ..NetConfig::default()
    };
    let mut host = build_swarm(&SigningKey::from_bytes(&[1; 32]), &private(7)).unwrap();
    let mut member = build_swarm(&SigningKey::from_bytes(&[2; 32]), &private(7)).unwrap();
    let mut outsider = build_swarm(&SigningKey::from_bytes(&[3; 32]), &private(8)).unwrap();
    host.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let outsider_id = *outsider.local_peer_id();
    let (mut member_in, mut outsider_refused) = (false, false);
    tokio::time::timeout(Duration::from_secs(60), async {
        while !(member_in && outsider_refused) {
            tokio::select! {
                event = host.select_next_some() => match event {
                    SwarmEvent::NewListenAddr { address, .. } => {
                        member.dial(address.clone()).unwrap();
                        outsider.dial(address).unwrap();
                    }
                    SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                        assert_ne!(peer_id, outsider_id, "the outsider got in");
                    }
                    _ => {}
                },
                event = member.select_next_some() => {
                    if let SwarmEvent::ConnectionEstablished { .. } = event {
                        member_in = true;
                    }
                }
                event = outsider.select_next_some() => match event {
                    SwarmEvent::OutgoingConnectionError { .. } => outsider_refused = true,
                    SwarmEvent::ConnectionEstablished { .. } => panic!("the outsider connected"),
                    _ => {}
                },
            }
        }
    })
    .await
    .expect("both dials end within a minute");
}

#[tokio::test]
async fn a_node_reached_only_through_a_relay_serves_a_fetch() {
    let config = NetConfig {
        mdns: false,
        ..NetConfig::default()
    };
    let swarm = |byte| build_swarm(&SigningKey::from_bytes(&[byte; 32]), &config).unwrap();
    let (mut relay, mut hidden, mut dialer) = (swarm(11), swarm(12), swarm(13));
    let (relay_id, hidden_id) = (*relay.local_peer_id(), *hidden.local_peer_id());
    relay
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let body = vec![5u8; 4096];
    let (mut fetcher, mut answers) = Fetcher::new(
        dialer.behaviour().fetch.new_control(),
        config.fetch_timeout,
        body.len() as u64,
    );
    let mut requests = fetch::serve(&mut hidden.behaviour().fetch.new_control()).unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            tokio::select! {
                event = relay.select_next_some() => {
                    if let SwarmEvent::NewListenAddr { address, .. } = event {
                        // A node relays once its address is confirmed
                        // reachable (AutoNAT does that on the internet).
                        relay.add_external_address(address.clone());
                        // The hidden node listens only through the relay.
                        let circuit = address
                            .with(Protocol::P2p(relay_id))
                            .with(Protocol::P2pCircuit);
                        hidden.listen_on(circuit).unwrap();
                    }
                }
                event = hidden.select_next_some() => {
                    if let SwarmEvent::NewListenAddr { address, .. } = event {
                        // The relay accepted the reservation: dial through it
                        // (the address ends in the hidden node's id).
                        assert!(address.iter().any(|p| p == Protocol::P2pCircuit), "{address}");
                        dialer.dial(address).unwrap();
                    }
                }
                Some(request) = requests.recv() => {
                    request.respond(FetchResponse::Found { header: vec![], body: body.clone().into() });
                }
                event = dialer.select_next_some() => match event {
                    SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. }
                        if peer_id == hidden_id =>
                    {
                        assert!(endpoint.is_relayed(), "{endpoint:?}");
                        fetcher.send(hidden_id, FetchRequest::Payload(Digest::of(b"x")));
                    }
                    _ => {}
                },
                Some(answer) = answers.recv() => return answer.result.unwrap(),
            }
        }
    })
    .await
    .expect("the relayed fetch ends within a minute");
    assert_eq!(
        outcome,
        FetchResponse::Found {
            header: vec![],
            body: body.into()
        }
    );
}
