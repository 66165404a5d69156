//! Finding peers and staying reachable: a peer mDNS finds is dialed once,
//! addresses learned by identify feed Kademlia, peers Kademlia learns are
//! dialed, a node that AutoNAT finds private listens through a connected
//! peer's relay, and DCUtR turns a relayed connection into a direct one
//! (the relayed one is then closed).

use std::collections::BTreeMap;

use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::ConnectionId;
use libp2p::{autonat, dcutr, identify, kad, relay, Multiaddr, PeerId};

use super::{Node, NodeEvent};
use crate::net::{is_quic, peer_key};

impl Node {
    /// A peer said who it is: remember where it listens, and whether it
    /// relays.
    pub(super) fn on_identify(&mut self, event: identify::Event) {
        let identify::Event::Received { peer_id, info, .. } = event else {
            return;
        };
        if info.protocols.contains(&kad::PROTOCOL_NAME) {
            for address in &info.listen_addrs {
                self.swarm
                    .behaviour_mut()
                    .kad
                    .add_address(&peer_id, address.clone());
            }
        }
        if info.protocols.contains(&relay::HOP_PROTOCOL_NAME) {
            let public: Vec<Multiaddr> = info.listen_addrs.into_iter().filter(is_public).collect();
            if !public.is_empty() {
                self.relays.insert(peer_id, public);
                // A peer starts relaying once its own address is confirmed,
                // which may be after this node found itself private.
                self.listen_via_relay();
            }
        }
    }

    /// mDNS found peers on the LAN: each one not yet connected is dialed
    /// once, with all the addresses found for it. (A dial per address made
    /// a connection per address: two nodes on one machine held four
    /// connections, TCP and QUIC each way, and spread their fetches over
    /// all of them; now two, one each way.)
    pub(super) fn dial_discovered(&mut self, found: Vec<(PeerId, Multiaddr)>) {
        for (peer, addresses) in dial_plan(found) {
            if self.swarm.is_connected(&peer) {
                continue;
            }
            // Not dialed again while a dial is under way (the default
            // condition of a dial by peer id); a failure is reported by
            // the swarm's own event.
            let _ = self
                .swarm
                .dial(DialOpts::peer_id(peer).addresses(addresses).build());
        }
    }

    /// Kademlia learned a peer: connect to it, so that one bootstrap
    /// address is enough to meet the whole swarm.
    pub(super) fn on_kad(&mut self, event: kad::Event) {
        if let kad::Event::RoutingUpdated {
            peer,
            is_new_peer: true,
            addresses,
            ..
        } = event
        {
            if !self.swarm.is_connected(&peer) {
                let dial = DialOpts::peer_id(peer)
                    .addresses(addresses.into_vec())
                    .build();
                // A failed dial is reported by the swarm's own event.
                let _ = self.swarm.dial(dial);
            }
        }
    }

    /// AutoNAT's verdict: a private node listens through a relay.
    pub(super) async fn on_autonat(&mut self, event: autonat::Event) {
        let autonat::Event::StatusChanged { new, .. } = event else {
            return;
        };
        let public = matches!(new, autonat::NatStatus::Public(_));
        self.report(NodeEvent::Reachability { public }).await;
        self.listen_via_relay();
    }

    /// A private node not yet relayed listens through a connected peer's
    /// relay, if one offers it.
    fn listen_via_relay(&mut self) {
        let private = matches!(
            self.swarm.behaviour().autonat.nat_status(),
            autonat::NatStatus::Private
        );
        if !private || self.relayed {
            return;
        }
        let Some((relay, address)) = self
            .relays
            .iter()
            .find(|(peer, _)| self.swarm.is_connected(peer))
            .and_then(|(peer, addresses)| Some((*peer, addresses.first()?.clone())))
        else {
            return;
        };
        let circuit = address
            .with(Protocol::P2p(relay))
            .with(Protocol::P2pCircuit);
        if self.swarm.listen_on(circuit).is_ok() {
            self.relayed = true;
        }
    }

    /// The outcome of a hole punch.
    pub(super) async fn on_dcutr(&mut self, event: dcutr::Event) {
        let direct = event.result.is_ok();
        let mut relayed_closed = 0;
        if direct {
            // The direct connection replaces the relayed ones: a relay
            // carries only so many bytes per circuit, and requests to a peer
            // take turns over its connections, so a payload sent the
            // relayed way could be cut off halfway.
            for circuit in self
                .circuits
                .remove(&event.remote_peer_id)
                .unwrap_or_default()
            {
                relayed_closed += usize::from(self.swarm.close_connection(circuit));
            }
        }
        if let Some(peer) = peer_key(&event.remote_peer_id) {
            self.report(NodeEvent::HolePunch {
                peer,
                direct,
                relayed_closed,
            })
            .await;
        }
    }

    /// Keeps track of the connections that go through a relay.
    pub(super) fn on_connection(&mut self, peer: PeerId, id: ConnectionId, relayed: bool) {
        if relayed {
            self.circuits.entry(peer).or_default().push(id);
        }
    }

    /// Forgets a closed connection.
    pub(super) fn on_connection_closed(&mut self, peer: PeerId, id: ConnectionId) {
        if let Some(circuits) = self.circuits.get_mut(&peer) {
            circuits.retain(|c| *c != id);
            if circuits.is_empty() {
                self.circuits.remove(&peer);
            }
        }
    }
}

/// Whether `address` can be reached from the internet (not loopback,
/// private or link-local).
fn is_public(address: &Multiaddr) -> bool {
    address.iter().all(|p| match p {
        Protocol::Ip4(ip) => !(ip.is_loopback() || ip.is_private() || ip.is_link_local()),
        Protocol::Ip6(ip) => !(ip.is_loopback() || ip.is_unicast_link_local()),
        _ => true,
    })
}

/// Peers that relay, and their public addresses.
pub(super) type Relays = std::collections::HashMap<PeerId, Vec<Multiaddr>>;

/// Open connections through a relay, by peer.
pub(super) type Circuits = std::collections::HashMap<PeerId, Vec<ConnectionId>>;

/// The addresses found for each peer, each once, TCP ones first: libp2p
/// starts a dial's attempts in this order, several at once, and keeps the
/// first connection made (a payload moves faster over TCP than over QUIC,
/// docs/performance.md).
fn dial_plan(found: Vec<(PeerId, Multiaddr)>) -> BTreeMap<PeerId, Vec<Multiaddr>> {
    let mut plan: BTreeMap<PeerId, Vec<Multiaddr>> = BTreeMap::new();
    for (peer, address) in found {
        let addresses = plan.entry(peer).or_default();
        if !addresses.contains(&address) {
            addresses.push(address);
        }
    }
    for addresses in plan.values_mut() {
        addresses.sort_by_key(is_quic);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_internet_addresses_are_public() {
        let public: Multiaddr = "/ip4/8.8.8.8/tcp/4001".parse().unwrap();
        assert!(is_public(&public));
        for private in [
            "/ip4/127.0.0.1/tcp/4001",
            "/ip4/192.168.1.5/udp/4001/quic-v1",
            "/ip6/::1/tcp/1",
        ] {
            assert!(!is_public(&private.parse().unwrap()), "{private}");
        }
    }

    #[test]
    fn a_peer_found_at_many_addresses_is_dialed_once_tcp_first() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let address = |s: &str| s.parse::<Multiaddr>().unwrap();
        let found = vec![
            (a, address("/ip4/192.168.1.5/udp/4001/quic-v1")),
            (b, address("/ip4/192.168.1.6/tcp/4001")),
            (a, address("/ip4/192.168.1.5/tcp/4001")),
            (a, address("/ip4/10.0.0.5/udp/4001/quic-v1")),
            (a, address("/ip4/192.168.1.5/tcp/4001")),
        ];
        let plan = dial_plan(found);
        assert_eq!(plan.len(), 2);
        assert_eq!(
            plan[&a],
            [
                address("/ip4/192.168.1.5/tcp/4001"),
                address("/ip4/192.168.1.5/udp/4001/quic-v1"),
                address("/ip4/10.0.0.5/udp/4001/quic-v1"),
            ]
        );
        assert_eq!(plan[&b], [address("/ip4/192.168.1.6/tcp/4001")]);
    }
}
