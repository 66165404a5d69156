//! The protocols a node speaks, and the swarm that runs them.

use std::time::Duration;

use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    allow_block_list, autonat, connection_limits, dcutr, gossipsub, identify, kad, mdns, noise,
    ping, relay, tcp, Swarm,
};
use p2ptrain_protocol::{Digest, PeerKey, SigningKey};

use super::access::SwarmKey;
use super::mux::Yamux;
use super::private::private_tcp;
use super::tls::Tls;

/// How often Kademlia refreshes its view of the swarm (libp2p's default
/// is five minutes).
const KAD_BOOTSTRAP_INTERVAL: Duration = Duration::from_secs(30);

/// Connections one peer may have with a node at once: enough for a direct
/// connection over each transport, a relayed one, and two peers dialing each
/// other at the same moment; each connection is a multiplexer with streams
/// of its own, so a peer cannot open them without end.
pub const MAX_CONNECTIONS_PER_PEER: u32 = 8;

/// Incoming connections still in their handshake at once: each costs a
/// key exchange, so a flood of them is cut off here, not at the CPU.
pub const MAX_PENDING_INCOMING: u32 = 128;

/// Why a swarm cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The node key cannot serve as a libp2p identity.
    #[error("identity: {0}")]
    Identity(String),
    /// A transport could not be set up.
    #[error("transport: {0}")]
    Transport(String),
    /// A behaviour could not be set up.
    #[error("behaviour: {0}")]
    Behaviour(String),
}

/// How to build a node's swarm.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Find peers on the LAN by mDNS.
    pub mdns: bool,
    /// Largest gossip message: twice the largest announcement or commit
    /// (gossipsub drops large messages in bursts below that).
    pub max_gossip: usize,
    /// How long a fetch may take.
    pub fetch_timeout: Duration,
    /// A private swarm's pre-shared key: every connection is then TCP
    /// inside pnet ([`super::private`]; QUIC cannot carry it), and peers
    /// without the key cannot connect.
    pub psk: Option<SwarmKey>,
    /// An allow-list of peers: when present, connections with any other
    /// peer are denied, both ways.
    pub allow_list: Option<Vec<PeerKey>>,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            mdns: true,
            max_gossip: 2 << 20,
            fetch_timeout: Duration::from_secs(120),
            psk: None,
            allow_list: None,
        }
    }
}

/// Everything a node speaks.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// At most `MAX_CONNECTIONS_PER_PEER` connections with a peer, and
    /// `MAX_PENDING_INCOMING` incoming ones in their handshake.
    pub limits: connection_limits::Behaviour,
    /// Connections only with the allow-list's peers, when there is one.
    pub allow: Toggle<allow_block_list::Behaviour<allow_block_list::AllowedPeers>>,
    /// Announcements and commits.
    pub gossipsub: gossipsub::Behaviour,
    /// The streams that carry payloads, checkpoint slices and records
    /// ([`super::fetch`]).
    pub fetch: libp2p_stream::Behaviour,
    /// Who is this peer, and where.
    pub identify: identify::Behaviour,
    /// Liveness.
    pub ping: ping::Behaviour,
    /// Peer routing: peers learned from those already known (bootstrap,
    /// mDNS, identify) are dialed, so one bootstrap address is enough.
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    /// Peers on the LAN.
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    /// Whether this node is reachable from outside, as other peers see it.
    pub autonat: autonat::Behaviour,
    /// Relays connections for peers behind NAT (circuit relay v2, with
    /// libp2p's default limits).
    pub relay: relay::Behaviour,
    /// Listens and dials through another peer's relay
    /// (`…/p2p/RELAY/p2p-circuit` addresses).
    pub relay_client: relay::client::Behaviour,
    /// Upgrades a relayed connection to a direct one by hole punching.
    pub dcutr: dcutr::Behaviour,
}

/// The gossip topics of one run.
#[derive(Debug, Clone)]
pub struct Topics {
    /// Contribution announcements.
    pub announce: gossipsub::IdentTopic,
    /// Commits.
    pub commit: gossipsub::IdentTopic,
    /// Proofs that a key signed two contributions for one round.
    pub evidence: gossipsub::IdentTopic,
}

impl Topics {
    /// Every topic, in a fixed order.
    pub fn all(&self) -> [&gossipsub::IdentTopic; 3] {
        [&self.announce, &self.commit, &self.evidence]
    }
}

/// The topics of run `run`: `/p2ptrain/<run id>/announce`, `.../commit`
/// and `.../evidence`.
pub fn topics(run: &Digest) -> Topics {
    Topics {
        announce: gossipsub::IdentTopic::new(format!("/p2ptrain/{run}/announce")),
        commit: gossipsub::IdentTopic::new(format!("/p2ptrain/{run}/commit")),
        evidence: gossipsub::IdentTopic::new(format!("/p2ptrain/{run}/evidence")),
    }
}

/// The run whose announcements `topic` carries, if it is a run's announce
/// topic: the run id as the topic spells it.
///
/// ```
/// # use p2ptrain_node::net::{announced_run, topics};
/// # use p2ptrain_protocol::Digest;
/// let run = Digest::of(b"a run");
/// let topic = topics(&run).announce.hash();
/// assert_eq!(announced_run(topic.as_str()), Some(run.to_string().as_str()));
/// assert_eq!(announced_run("/ipfs/pubsub"), None);
/// ```
pub fn announced_run(topic: &str) -> Option<&str> {
    topic
        .strip_prefix("/p2ptrain/")?
        .strip_suffix("/announce")
        .filter(|run| !run.is_empty() && !run.contains('/'))
}

/// A tokio swarm identified by `key` with every behaviour: over TCP (TLS,
/// yamux) and QUIC, or, with a pre-shared key, over TCP inside pnet only.
///
/// # Errors
///
/// [`NetError`] if a transport or behaviour cannot be set up.
pub fn build_swarm(key: &SigningKey, config: &NetConfig) -> Result<Swarm<Behaviour>, NetError> {
    let keypair = super::keypair(key)?;
    let transport = |e: &dyn std::fmt::Display| NetError::Transport(e.to_string());
    let behaviour_error = |e: &dyn std::fmt::Display| NetError::Behaviour(e.to_string());
    let idle = |c: libp2p::swarm::Config| c.with_idle_connection_timeout(Duration::from_secs(600));
    let builder = libp2p::SwarmBuilder::with_existing_identity(keypair).with_tokio();
    let swarm = match config.psk {
        None => builder
            .with_tcp(
                tcp::Config::default().nodelay(true),
                (Tls::new, noise::Config::new),
                Yamux::default,
            )
            .map_err(|e| transport(&e))?
            .with_quic()
            .with_relay_client((Tls::new, noise::Config::new), Yamux::default)
            .map_err(|e| transport(&e))?
            .with_behaviour(|key, relay_client| behaviour(key, relay_client, config))
            .map_err(|e| behaviour_error(&e))?
            .with_swarm_config(idle)
            .build(),
        Some(psk) => builder
            .with_other_transport(|key| private_tcp(key, psk))
            .map_err(|e| transport(&e))?
            .with_relay_client((Tls::new, noise::Config::new), Yamux::default)
            .map_err(|e| transport(&e))?
            .with_behaviour(|key, relay_client| behaviour(key, relay_client, config))
            .map_err(|e| behaviour_error(&e))?
            .with_swarm_config(idle)
            .build(),
    };
    Ok(swarm)
}

fn behaviour(
    key: &libp2p::identity::Keypair,
    relay_client: relay::client::Behaviour,
    config: &NetConfig,
) -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    let peer = key.public().to_peer_id();
    let gossip_config = gossipsub::ConfigBuilder::default()
        .max_transmit_size(config.max_gossip)
        .validation_mode(gossipsub::ValidationMode::Strict)
        // The node judges each message before it is relayed (see
        // `swarm_loop::gossip`).
        .validate_messages()
        .heartbeat_interval(Duration::from_millis(500))
        .build()?;
    let mut gossipsub = gossipsub::Behaviour::new(
        gossipsub::MessageAuthenticity::Signed(key.clone()),
        gossip_config,
    )?;
    gossipsub.with_peer_score(super::scoring::params(), super::scoring::thresholds())?;
    let identify = identify::Behaviour::new(identify::Config::new(
        "/p2ptrain/1.0.0".to_owned(),
        key.public(),
    ));
    // Peers behind NATs gain their relayed addresses only after they start:
    // a bootstrap query every half minute learns them and dials through the
    // relay, and DCUtR then makes the connection direct.
    let mut kad_config = kad::Config::new(kad::PROTOCOL_NAME);
    kad_config.set_periodic_bootstrap_interval(Some(KAD_BOOTSTRAP_INTERVAL));
    let mut kad = kad::Behaviour::with_config(peer, kad::store::MemoryStore::new(peer), kad_config);
    // Every node is an equal peer: each answers routing queries, on a LAN
    // or loopback too (libp2p's default waits for a confirmed public
    // address).
    kad.set_mode(Some(kad::Mode::Server));
    let allow = match &config.allow_list {
        Some(keys) => {
            let mut allow =
                allow_block_list::Behaviour::<allow_block_list::AllowedPeers>::default();
            for key in keys {
                let peer =
                    super::peer_id(key).ok_or("an allow-list entry is not an ed25519 key")?;
                allow.allow_peer(peer);
            }
            Some(allow)
        }
        None => None,
    };
    let mdns = if config.mdns {
        Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer)?)
    } else {
        None
    };
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
        .with_max_pending_incoming(Some(MAX_PENDING_INCOMING));
    Ok(Behaviour {
        limits: connection_limits::Behaviour::new(limits),
        allow: allow.into(),
        gossipsub,
        fetch: libp2p_stream::Behaviour::new(),
        identify,
        ping: ping::Behaviour::default(),
        kad,
        mdns: mdns.into(),
        autonat: autonat::Behaviour::new(peer, autonat::Config::default()),
        relay: relay::Behaviour::new(peer, relay::Config::default()),
        relay_client,
        dcutr: dcutr::Behaviour::new(peer),
    })
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
    use libp2p::swarm::{DialError, SwarmEvent};

    use super::*;
    use crate::net::loopback::swarm_pair;

    #[tokio::test]
    async fn a_peer_past_its_connections_is_denied() {
        let (mut asking, mut serving, address) = swarm_pair([31, 32]).await;
        let server = *serving.local_peer_id();
        tokio::spawn(async move {
            loop {
                serving.select_next_some().await;
            }
        });
        let dials = MAX_CONNECTIONS_PER_PEER + 1;
        for _ in 0..dials {
            let dial = DialOpts::peer_id(server)
                .addresses(vec![address.clone()])
                .condition(PeerCondition::Always)
                .build();
            asking.dial(dial).unwrap();
        }
        let (mut established, mut denied) = (0, 0);
        while established + denied < dials {
            match asking.select_next_some().await {
                SwarmEvent::ConnectionEstablished { .. } => established += 1,
                SwarmEvent::OutgoingConnectionError { error, .. } => {
                    assert!(matches!(error, DialError::Denied { .. }), "{error}");
                    denied += 1;
                }
                _ => {}
            }
        }
        assert_eq!((established, denied), (MAX_CONNECTIONS_PER_PEER, 1));
    }
}
