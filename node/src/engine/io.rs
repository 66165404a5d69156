//! What the engine is given and what it asks for: its settings, the head
//! of its chain, inputs and outputs.

use std::collections::BTreeSet;
use std::sync::Arc;

use p2ptrain_protocol::codec::CodecError;
use p2ptrain_protocol::{
    Commit, Contribution, Digest, Equivocation, PeerKey, RoundRecord, RunManifest, Signed,
    SigningKey,
};

use super::validate::RejectReason;

/// The engine's fixed settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The run.
    pub manifest: RunManifest,
    /// This peer's key: it signs contributions and commits.
    pub key: SigningKey,
    /// Entries of the flat parameter buffer every update must have.
    pub params: usize,
    /// Most tokens one contribution may claim.
    pub max_tokens: u64,
    /// Start the next round's training as soon as this round's update is
    /// announced, overlapping communication with compute (the host shifts
    /// its replica when the outer step lands).
    pub overlap: bool,
    /// This peer's own allow-list (`p2pnode join --allow`), on top of the
    /// run's: when present, contributions and commits signed by any other
    /// key are dropped and such peers are not counted as members.
    pub allow_list: Option<BTreeSet<PeerKey>>,
}

impl EngineConfig {
    /// Settings for `manifest` with a `params`-entry model; contributions may
    /// claim up to the tokens of one round (`inner_steps × batch × context`),
    /// no overlap.
    pub fn new(manifest: RunManifest, key: SigningKey, params: usize) -> Self {
        let max_tokens = u64::from(manifest.inner_steps)
            * u64::from(manifest.inner.batch_size)
            * u64::from(manifest.model.context_len);
        Self {
            manifest,
            key,
            params,
            max_tokens,
            overlap: false,
            allow_list: None,
        }
    }

    /// The length of every payload of the run: set by the model's size and
    /// the compression settings alone.
    ///
    /// ```
    /// use p2ptrain_node::engine::EngineConfig;
    /// use p2ptrain_protocol::{RunManifest, SigningKey};
    ///
    /// let config = EngineConfig::new(RunManifest::default(), SigningKey::from_bytes(&[1; 32]), 25_000_000);
    /// assert!((600_000..700_000).contains(&config.payload_len()));
    /// ```
    pub fn payload_len(&self) -> u64 {
        p2ptrain_kernels::Payload::encoded_len_for(self.params, &self.manifest.compression) as u64
    }

    /// Whether `peer` may take part: on the run's allow-list and on this
    /// peer's own, where either exists.
    ///
    /// ```
    /// use p2ptrain_node::engine::EngineConfig;
    /// use p2ptrain_protocol::{PeerKey, RunManifest, SigningKey};
    ///
    /// let me = SigningKey::from_bytes(&[1; 32]);
    /// let other = PeerKey::from(&SigningKey::from_bytes(&[2; 32]));
    /// let mut config = EngineConfig::new(RunManifest::default(), me.clone(), 4096);
    /// assert!(config.allows(&other));
    /// config.allow_list = Some([PeerKey::from(&me)].into());
    /// assert!(!config.allows(&other));
    /// ```
    pub fn allows(&self, peer: &PeerKey) -> bool {
        self.manifest.allows(peer)
            && self
                .allow_list
                .as_ref()
                .is_none_or(|allowed| allowed.contains(peer))
    }
}

/// Where a peer's chain is: the round it works on and the checkpoint that
/// round starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The round being worked on.
    pub round: u64,
    /// The checkpoint it starts from.
    pub base: Digest,
    /// Tokens contributed along the chain up to `base`.
    pub chain_tokens: u64,
    /// Contributions applied by the round that produced `base` (0 at
    /// genesis): the quorum is a majority of them.
    pub last_contributors: u32,
}

impl Head {
    /// Round 0 of `manifest`'s run.
    pub fn genesis(manifest: &RunManifest) -> Self {
        Self {
            round: 0,
            base: manifest.genesis,
            chain_tokens: 0,
            last_contributors: 0,
        }
    }

    /// The valid contributions a round from this head needs before it can
    /// close: a majority of the last round's, and at least `rules`'
    /// minimum (and one).
    pub fn quorum(&self, rules: &p2ptrain_protocol::RoundRules) -> usize {
        (self.last_contributors / 2 + 1).max(rules.min_contributors.max(1)) as usize
    }
}

/// This peer's update for a round, compressed.
#[derive(Debug, Clone)]
pub struct LocalUpdate {
    /// The encoded payload.
    pub payload: Arc<[u8]>,
    /// Tokens trained for it.
    pub tokens: u64,
}

/// A contribution the outer step applies.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// Its id.
    pub id: Digest,
    /// Its aggregation weight: the tokens it claims.
    pub tokens: u64,
    /// The encoded payload.
    pub payload: Arc<[u8]>,
}

/// What happened, for the engine.
#[derive(Debug, Clone)]
pub enum Input {
    /// Time passed; nothing else.
    Tick,
    /// A peer is reachable.
    PeerSeen(PeerKey),
    /// A peer left or cannot be reached.
    PeerGone(PeerKey),
    /// This peer's training session ended with this update.
    Trained(LocalUpdate),
    /// A contribution was announced (gossip).
    Announced(Signed<Contribution>),
    /// This peer's own contribution, with its payload, as announced before
    /// the host restarted: when it is for the current round and base, it
    /// is this peer's contribution to the round, announced again, and no
    /// other is trained for the round (two would get this peer's key
    /// ignored by every peer that saw both).
    Reannounce {
        /// The contribution.
        contribution: Signed<Contribution>,
        /// Its payload.
        bytes: Arc<[u8]>,
    },
    /// A peer passed on proof that a key signed two contributions for one
    /// round (gossip).
    Evidence(Equivocation),
    /// A payload asked for with [`Output::Fetch`] arrived, with its
    /// contribution.
    PayloadArrived {
        /// The contribution it belongs to.
        contribution: Signed<Contribution>,
        /// The payload bytes.
        bytes: Arc<[u8]>,
    },
    /// A fetch cannot complete: the peer asked is gone.
    FetchFailed {
        /// The contribution asked for.
        id: Digest,
    },
    /// A commit was received (gossip).
    CommitReceived(Signed<Commit>),
    /// A connected peer holds this peer's head, of `round`: asked, it sent
    /// its record of the round before, whose result is the head's base.
    /// The peer is then no longer behind (see
    /// [`Engine::members_behind`](super::Engine::members_behind)), although
    /// it reached the head by adopting a checkpoint and signed nothing
    /// since.
    HoldsHead {
        /// The peer.
        peer: PeerKey,
        /// The head's round.
        round: u64,
    },
    /// The outer step asked for with [`Output::ApplyOuterStep`] is done.
    Applied {
        /// The round.
        round: u64,
        /// The checkpoint it produced.
        result: Digest,
    },
    /// The host holds, verified, the checkpoint asked for with
    /// [`Output::RequestCheckpoint`], and now trains from it.
    CheckpointAdopted(Head),
    /// The checkpoint asked for cannot be had from the peer that claimed it.
    CheckpointUnavailable {
        /// The checkpoint.
        result: Digest,
        /// The peer whose commit claimed it: ignored from now on.
        from: PeerKey,
    },
}

/// What the host should do.
#[derive(Debug, Clone)]
pub enum Output {
    /// Start a training session (inner steps) for `round` or, when
    /// overlapping, for the round after the one still closing.
    StartTraining {
        /// The round the update is meant for.
        round: u64,
    },
    /// Announce this contribution to all peers; serve its payload.
    Announce(Signed<Contribution>),
    /// Fetch a contribution's payload (and the contribution) from a peer.
    Fetch {
        /// The contribution.
        id: Digest,
        /// Who to ask.
        from: PeerKey,
    },
    /// Compute the outer step from the round's base with these
    /// contributions, in this (ascending id) order, and answer
    /// [`Input::Applied`] with the resulting checkpoint's hash.
    ApplyOuterStep {
        /// The round.
        round: u64,
        /// The checkpoint it starts from.
        base: Digest,
        /// The contributions, ascending by id.
        contributions: Vec<Accepted>,
    },
    /// Publish this commit to all peers.
    PublishCommit(Signed<Commit>),
    /// Publish this proof of equivocation to all peers.
    PublishEvidence(Equivocation),
    /// A contribution signed with this peer's own key, and not its own,
    /// was heard for `round`: another node holds the key.
    KeyShared {
        /// The round.
        round: u64,
    },
    /// The round is over: its record, and the new head to train from.
    Finalized {
        /// The commit that closed it and the contributions it applied.
        record: RoundRecord,
        /// The next round and its base.
        head: Head,
    },
    /// This update was not applied: add it back into the error-feedback
    /// residual.
    ReturnToResidual {
        /// The encoded payload.
        payload: Arc<[u8]>,
    },
    /// Another chain is heavier: fetch and verify its checkpoint `result`
    /// (of `round`) from `from`, then answer [`Input::CheckpointAdopted`].
    RequestCheckpoint {
        /// The head to adopt if the checkpoint checks out.
        head: Head,
        /// Who claimed it.
        from: PeerKey,
    },
    /// A contribution was dropped.
    Rejected(Rejection),
    /// A peer is ignored (from now on, or, for two contributions in one
    /// round, from the next round on): its contributions and commits are
    /// dropped, and rounds no longer wait for it.
    Banned(Ban),
}

/// A dropped contribution, as the engine reports it (and the node passes
/// it on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    /// Its id.
    pub id: Digest,
    /// Its author, when the signature held.
    pub author: Option<PeerKey>,
    /// Why.
    pub reason: RejectReason,
}

/// A peer the engine ignores, as it reports it (and the node passes it on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ban {
    /// The peer.
    pub peer: PeerKey,
    /// What it did.
    pub reason: BanReason,
}

/// Why a peer is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BanReason {
    /// It signed two commits of one round with the same base and set but
    /// different results: a faulty peer, or two nodes sharing one key.
    Equivocated {
        /// The round.
        round: u64,
    },
    /// It signed two different contributions for one round and base: a
    /// faulty peer, or two nodes sharing one key (a node restarted in a
    /// round announces the contribution it announced before).
    TwoContributions {
        /// The round.
        round: u64,
    },
    /// Its commit named a checkpoint that could not be had from it (nor
    /// from any other peer).
    CheckpointUnavailable {
        /// The checkpoint.
        result: Digest,
    },
}

impl std::fmt::Display for BanReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Equivocated { round } => write!(
                f,
                "it signed two different results for one set of round {round} (a faulty \
                 peer, or two nodes sharing one key)"
            ),
            Self::TwoContributions { round } => write!(
                f,
                "it signed two different contributions for round {round}, and nothing it \
                 sends after that round counts (a faulty peer, or two nodes sharing one key)"
            ),
            Self::CheckpointUnavailable { result } => write!(
                f,
                "its commit named checkpoint {result}, which no peer could deliver"
            ),
        }
    }
}

/// Why an engine cannot start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The manifest cannot be encoded, so the run has no id.
    #[error("the run manifest cannot be encoded: {0}")]
    Manifest(#[source] CodecError),
    /// The run's compression settings are invalid.
    #[error("the run's compression settings are invalid: {0}")]
    Settings(#[from] p2ptrain_protocol::InvalidSettings),
    /// This peer's key is not on the run's allow-list.
    #[error("this peer ({0}) is not on the run's allow-list")]
    NotAllowed(PeerKey),
    /// This peer's key is not on the allow-list it was given.
    #[error("this peer ({0}) is not on its own allow-list; add it, as every member's list must")]
    NotOnOwnList(PeerKey),
}
