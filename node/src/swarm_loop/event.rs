//! What a running node reports to its owner.

use libp2p::Multiaddr;
use p2ptrain_protocol::{Digest, PeerKey};

use crate::engine::{Ban, Rejection};

/// What the node reports.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeEvent {
    /// Listening on an address.
    Listening(Multiaddr),
    /// This node announced its contribution to a round (kept on disk
    /// first, see [`DataDir::write_announcement`](crate::chain::DataDir::write_announcement)).
    Announced {
        /// The round.
        round: u64,
        /// The contribution's id.
        id: Digest,
    },
    /// This node computed the outer step of a round: its result, which it
    /// commits to (final once the commit window has passed).
    Aggregated {
        /// The round.
        round: u64,
        /// The checkpoint the step produced.
        checkpoint: Digest,
        /// Contributions in the step.
        contributions: usize,
    },
    /// A round ended on this checkpoint.
    Finalized {
        /// The round.
        round: u64,
        /// The checkpoint it produced.
        checkpoint: Digest,
        /// Contributions applied.
        contributions: usize,
        /// This node's mean training loss in its last session (nats per
        /// byte), if it has trained.
        train_loss: Option<f32>,
    },
    /// This node took a heavier chain's checkpoint from a peer: it now
    /// holds the result of `round`.
    Adopted {
        /// The round whose result it adopted.
        round: u64,
        /// The checkpoint.
        checkpoint: Digest,
    },
    /// A contribution was dropped.
    Rejected(Rejection),
    /// A peer is ignored (see [`BanReason`](crate::engine::BanReason) for
    /// when).
    Banned(Ban),
    /// Another node announced a contribution signed with this node's key.
    KeyShared {
        /// The round it was for.
        round: u64,
    },
    /// A peer connected (its first connection).
    PeerConnected(PeerKey),
    /// A peer's last connection closed.
    PeerLeft(PeerKey),
    /// A connected peer takes part in another run: it is not waited for,
    /// and nothing is exchanged with it but routing.
    OtherRun {
        /// The peer.
        peer: PeerKey,
        /// Its run's id, as its announce topic spells it.
        run: String,
    },
    /// A connection with a peer off the allow-list was refused.
    Refused(PeerKey),
    /// A dial failed.
    DialFailed(String),
    /// A connection from this address was refused: its peer holds another
    /// pre-shared key (a private swarm's key check).
    OtherSwarmKey(Multiaddr),
    /// Records of adopted rounds were fetched from peers.
    Backfilled {
        /// Rounds whose records were written.
        rounds: u64,
        /// Rounds still without a record (no peer gave them).
        missing: u64,
    },
    /// AutoNAT's verdict on whether peers can dial this node directly.
    Reachability {
        /// Reachable from outside.
        public: bool,
    },
    /// A hole punch to a peer reached over a relay ended.
    HolePunch {
        /// The peer.
        peer: PeerKey,
        /// Whether a direct connection now replaces the relayed one.
        direct: bool,
        /// Relayed connections to the peer closed for the direct one (none
        /// when the peer closed them first).
        relayed_closed: usize,
    },
}
