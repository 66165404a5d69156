//! The libp2p side of a node: its identity (the same ed25519 key that signs
//! its contributions), the protocols it speaks, and the swarm that carries
//! them. The event loop that drives the round engine sits on top of this.
//!
//! - Gossipsub carries the small messages (announcements, commits) on the
//!   run's topics, and graylists a peer whose messages this node rejects
//!   ([`scoring`]); payloads and checkpoints move by `/p2ptrain/fetch/2`
//!   ([`fetch`], over a stream kept open per peer; [`codec`] is its wire
//!   format), fetched from whichever peer has them and checked by blake3
//!   on arrival.
//! - TCP connections are secured by libp2p's TLS 1.3 handshake ([`tls`],
//!   AES-GCM first where the CPU has AES instructions; noise is offered
//!   too) and carry their streams in yamux frames of up to 256 KiB
//!   ([`mux`]). QUIC connections use libp2p's QUIC as it comes.
//! - In a private swarm every connection is TCP inside pnet, under the TLS,
//!   and both ends first show that they hold the swarm's key ([`private`]).
//! - Identify, ping and Kademlia speak the standard protocol ids, so any
//!   libp2p peer can connect, identify, ping and read the announcements;
//!   mDNS finds peers on a LAN.

pub mod access;
pub mod buffer;
pub mod codec;
pub mod fetch;
#[cfg(test)]
mod interop;
#[cfg(test)]
mod loopback;
pub mod mux;
pub mod private;
pub mod scoring;
pub mod slices;
mod swarm;
pub mod tls;

use libp2p::multiaddr::Protocol;
use libp2p::{identity, Multiaddr, PeerId};
use p2ptrain_protocol::{PeerKey, SigningKey};

pub use swarm::{
    announced_run, build_swarm, topics, Behaviour, BehaviourEvent, NetConfig, NetError, Topics,
};

/// The libp2p keypair of a node key: the same ed25519 key.
///
/// ```
/// use p2ptrain_node::net::{keypair, peer_id};
/// use p2ptrain_protocol::{PeerKey, SigningKey};
///
/// let key = SigningKey::from_bytes(&[3; 32]);
/// let keypair = keypair(&key)?;
/// assert_eq!(peer_id(&PeerKey::from(&key)), Some(keypair.public().to_peer_id()));
/// # Ok::<(), p2ptrain_node::net::NetError>(())
/// ```
///
/// # Errors
///
/// [`NetError::Identity`] if libp2p refuses the key bytes.
pub fn keypair(key: &SigningKey) -> Result<identity::Keypair, NetError> {
    let mut secret = key.to_bytes();
    identity::Keypair::ed25519_from_bytes(&mut secret)
        .map_err(|e| NetError::Identity(e.to_string()))
}

/// The libp2p peer id of a node's public key; `None` for bytes that are not
/// an ed25519 public key.
pub fn peer_id(key: &PeerKey) -> Option<PeerId> {
    let public = identity::ed25519::PublicKey::try_from_bytes(key.as_bytes()).ok()?;
    Some(identity::PublicKey::from(public).to_peer_id())
}

/// The node key behind a libp2p peer id, when the id embeds an ed25519
/// public key (as every p2ptrain node's does).
pub fn peer_key(id: &PeerId) -> Option<PeerKey> {
    let public = identity::PublicKey::try_decode_protobuf(id.to_bytes().get(2..)?).ok()?;
    let ed = public.try_into_ed25519().ok()?;
    Some(PeerKey::from_bytes(ed.to_bytes()))
}

/// Whether `address` is a QUIC one.
pub fn is_quic(address: &Multiaddr) -> bool {
    address.iter().any(|p| matches!(p, Protocol::QuicV1))
}
