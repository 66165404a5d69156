//! The round engine: the protocol of a round as a deterministic state machine.
//!
//! The engine does no I/O and keeps no clock, RNG or tasks: the host (the
//! `p2pnode` event loop, or `netsim`) passes the time and what happened as an
//! [`Input`], and carries out the [`Output`]s it returns — announce this,
//! fetch that payload, compute the outer step for this set, publish this
//! commit. The same inputs in the same order give the same outputs, which is
//! what lets `netsim` reproduce a swarm exactly.
//!
//! The rule a round follows, and why honest peers end it on the same
//! checkpoint, is written in `docs/protocol.md` ("The round").
//!
//! # Example
//!
//! One peer alone: it trains, announces, closes the round on its own
//! contribution, and is asked for the outer step.
//!
//! ```
//! use std::sync::Arc;
//! use p2ptrain_kernels::compress;
//! use p2ptrain_node::engine::{Engine, EngineConfig, Input, LocalUpdate, Output};
//! use p2ptrain_protocol::{Digest, RunManifest, SigningKey};
//!
//! let manifest = RunManifest::default();
//! let config = EngineConfig::new(manifest.clone(), SigningKey::from_bytes(&[7; 32]), 4096);
//! let mut engine = Engine::new(config)?;
//! assert!(matches!(engine.start(0)[..], [Output::StartTraining { round: 0 }]));
//!
//! let payload = compress(&vec![0.1; 4096], &mut vec![0.0; 4096], &manifest.compression)?;
//! let update = LocalUpdate { payload: Arc::from(payload.encode()?), tokens: 1000 };
//! let outputs = engine.handle(5, Input::Trained(update));
//! assert!(matches!(outputs[0], Output::Announce(_)));
//! let Some(Output::ApplyOuterStep { contributions, .. }) = outputs.last() else { panic!() };
//! assert_eq!(contributions.len(), 1);
//!
//! let outputs = engine.handle(6, Input::Applied { round: 0, result: Digest::of(b"next") });
//! assert!(matches!(outputs[0], Output::PublishCommit(_)));
//! // The commit window passes; the round is final.
//! let outputs = engine.handle(6 + manifest.rounds.commit_window_ms, Input::Tick);
//! assert!(outputs.iter().any(|o| matches!(o, Output::Finalized { .. })));
//! assert_eq!(engine.head().round, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod round;
pub mod validate;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use p2ptrain_protocol::codec::CodecError;
use p2ptrain_protocol::{
    Commit, Contribution, Digest, IdSet, PayloadRef, PeerKey, RoundRecord, RunManifest, Signed,
    SigningKey,
};

use round::{Entry, EntryState, Phase, RoundState};
pub use validate::{Checker, PayloadFacts, RejectCounts, RejectReason, Verify};

/// Milliseconds on the host's clock (virtual in `netsim`).
pub type Millis = u64;

/// Announcements held for rounds not yet reached, at most.
const MAX_FUTURE: usize = 4096;

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
        }
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
    Rejected {
        /// Its id.
        id: Digest,
        /// Its author, when the signature held.
        author: Option<PeerKey>,
        /// Why.
        reason: RejectReason,
    },
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
}

/// One peer's round engine. See the [module docs](self).
#[derive(Debug)]
pub struct Engine<C: Checker = Verify> {
    config: EngineConfig,
    checker: C,
    run: Digest,
    me: PeerKey,
    head: Head,
    members: BTreeSet<PeerKey>,
    banned: BTreeSet<PeerKey>,
    /// Ids applied in rounds this engine finalized: a replay is one of them.
    applied: HashSet<Digest>,
    round: RoundState,
    /// The previous round, kept to serve its payloads to late fetchers.
    previous: Option<RoundState>,
    future: Vec<Signed<Contribution>>,
    training: bool,
    pending: Option<LocalUpdate>,
    /// This peer's update applied in the last finalized round, should a
    /// heavier chain replace that round.
    last_applied_mine: Option<(u64, Digest, Arc<[u8]>)>,
    /// Results seen per (committer, round, base, set): two results prove
    /// equivocation.
    commit_results: BTreeMap<(PeerKey, u64, Digest, Digest), Digest>,
    adopting: Option<Digest>,
    /// This round's contributors (see `eligible_set`); `None` when the round
    /// or the membership changed.
    eligible: Option<BTreeSet<PeerKey>>,
    /// Commits that arrived while a checkpoint was being adopted: looked at
    /// again in the adopted round.
    deferred: Vec<Signed<Commit>>,
    /// Checkpoints some valid commit names (as base or result) or this peer
    /// held: a contribution trained from one of them belongs to another
    /// chain, not to a forger.
    known_checkpoints: HashSet<Digest>,
    counts: RejectCounts,
}

impl Engine<Verify> {
    /// An engine at genesis that verifies everything itself.
    ///
    /// # Errors
    ///
    /// See [`EngineError`].
    pub fn new(config: EngineConfig) -> Result<Self, EngineError> {
        let head = Head::genesis(&config.manifest);
        Self::with_checker(config, head, Verify)
    }
}

impl<C: Checker> Engine<C> {
    /// An engine starting at `head`, checking signatures and payloads with
    /// `checker`.
    ///
    /// # Errors
    ///
    /// See [`EngineError`].
    pub fn with_checker(config: EngineConfig, head: Head, checker: C) -> Result<Self, EngineError> {
        config.manifest.compression.validate()?;
        let run = config.manifest.id().map_err(EngineError::Manifest)?;
        let me = PeerKey::from(&config.key);
        if !config.manifest.allows(&me) {
            return Err(EngineError::NotAllowed(me));
        }
        Ok(Self {
            round: RoundState::new(head.round, head.base),
            config,
            checker,
            run,
            me,
            head,
            members: BTreeSet::new(),
            banned: BTreeSet::new(),
            applied: HashSet::new(),
            previous: None,
            future: Vec::new(),
            training: false,
            pending: None,
            last_applied_mine: None,
            commit_results: BTreeMap::new(),
            adopting: None,
            eligible: None,
            deferred: Vec::new(),
            known_checkpoints: HashSet::from([head.base]),
            counts: RejectCounts::new(),
        })
    }

    /// This peer's key.
    pub fn me(&self) -> PeerKey {
        self.me
    }

    /// The run id.
    pub fn run(&self) -> Digest {
        self.run
    }

    /// The round being worked on and its base.
    pub fn head(&self) -> Head {
        self.head
    }

    /// Contributions dropped so far, by reason.
    pub fn rejected(&self) -> &RejectCounts {
        &self.counts
    }

    /// The peers this engine counts as members.
    pub fn members(&self) -> &BTreeSet<PeerKey> {
        &self.members
    }

    /// A contribution and its payload, if held (this round or the last), to
    /// serve a peer that asks.
    pub fn payload(&self, id: &Digest) -> Option<(Signed<Contribution>, Arc<[u8]>)> {
        [Some(&self.round), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find_map(|round| match round.entries.get(id) {
                Some(Entry {
                    signed,
                    state: EntryState::Held { payload, .. },
                    ..
                }) => Some((signed.clone(), payload.clone())),
                _ => None,
            })
    }

    /// When the engine next needs an [`Input::Tick`] if nothing else
    /// happens.
    pub fn next_wake(&self) -> Option<Millis> {
        match &self.round.phase {
            Phase::Collecting => {
                let opened = self.round.opened_at?;
                Some(opened + self.config.manifest.rounds.deadline_ms)
            }
            Phase::Applying { .. } => None,
            Phase::Window { until, .. } | Phase::Reconciling { until, .. } => Some(*until),
        }
    }

    /// Begins: asks for the first training session.
    pub fn start(&mut self, now: Millis) -> Vec<Output> {
        let mut out = Vec::new();
        self.maybe_start_training(&mut out);
        self.progress(now, &mut out);
        out
    }

    /// Takes one input at time `now` and returns what to do.
    pub fn handle(&mut self, now: Millis, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Tick => {}
            Input::PeerSeen(peer) => {
                let allowed = self.config.manifest.allows(&peer) && !self.banned.contains(&peer);
                if peer != self.me && allowed && self.members.insert(peer) {
                    self.eligible = None;
                }
            }
            Input::PeerGone(peer) => {
                if self.members.remove(&peer) {
                    self.eligible = None;
                }
                self.on_peer_gone(&peer);
            }
            Input::Trained(update) => {
                self.training = false;
                self.on_trained(now, update, &mut out);
            }
            Input::Announced(signed) => self.on_announced(now, signed, None, &mut out),
            Input::PayloadArrived {
                contribution,
                bytes,
            } => self.on_announced(now, contribution, Some(bytes), &mut out),
            Input::FetchFailed { id } => self.on_fetch_failed(&id),
            Input::CommitReceived(signed) => self.on_commit(now, signed, &mut out),
            Input::Applied { round, result } => self.on_applied(now, round, result, &mut out),
            Input::CheckpointAdopted(head) => self.on_adopted(now, head, &mut out),
            Input::CheckpointUnavailable { result, from } => {
                if self.adopting == Some(result) {
                    self.adopting = None;
                }
                self.banned.insert(from);
                self.members.remove(&from);
                self.eligible = None;
            }
        }
        self.progress(now, &mut out);
        out
    }

    // ----- inputs -----

    fn on_trained(&mut self, now: Millis, update: LocalUpdate, out: &mut Vec<Output>) {
        let collecting = self.round.phase == Phase::Collecting;
        if collecting && self.round.mine.is_none() && !self.round.sat_out && self.adopting.is_none()
        {
            self.contribute(now, update, out);
        } else if let Some(older) = self.pending.replace(update) {
            // Two sessions ended before a round took either: keep the newer,
            // hand the older back.
            out.push(Output::ReturnToResidual {
                payload: older.payload,
            });
        }
        self.maybe_start_training(out);
    }

    fn contribute(&mut self, now: Millis, update: LocalUpdate, out: &mut Vec<Output>) {
        let me = self.me;
        if !self.eligible(&me) {
            self.round.sat_out = true;
            out.push(Output::ReturnToResidual {
                payload: update.payload,
            });
            return;
        }
        let contribution = Contribution {
            run: self.run,
            round: self.round.number,
            base: self.round.base,
            author: self.me,
            tokens: update.tokens,
            payload: PayloadRef {
                hash: Digest::of(&update.payload),
                len: update.payload.len() as u64,
            },
            compression: self.config.manifest.compression,
        };
        let Ok(signed) = Signed::sign(&contribution, &self.config.key) else {
            // A contribution always encodes; should it not, keep the update.
            out.push(Output::ReturnToResidual {
                payload: update.payload,
            });
            return;
        };
        let id = signed.id();
        self.round.mine = Some(id);
        out.push(Output::Announce(signed.clone()));
        self.on_announced(now, signed, Some(update.payload), out);
    }

    fn on_announced(
        &mut self,
        now: Millis,
        signed: Signed<Contribution>,
        bytes: Option<Arc<[u8]>>,
        out: &mut Vec<Output>,
    ) {
        let id = signed.id();
        let contribution = match self.checker.contribution(&signed) {
            Ok(c) => c,
            Err(_) => return self.reject(id, None, RejectReason::BadSignature, out),
        };
        let author = contribution.author;
        if let Some(reason) = self.header_fault(&contribution) {
            return self.reject(id, Some(author), reason, out);
        }
        if contribution.round < self.round.number {
            if self.applied.contains(&id) {
                self.reject(id, Some(author), RejectReason::Replay, out);
            }
            return;
        }
        if contribution.round > self.round.number {
            if self.future.len() < MAX_FUTURE && self.future.iter().all(|s| s.id() != id) {
                self.future.push(signed);
            }
            return;
        }
        if contribution.base != self.round.base {
            if self.known_checkpoints.contains(&contribution.base) {
                // Trained on another chain; fork choice settles chains.
                return;
            }
            return self.reject(id, Some(author), RejectReason::WrongBase, out);
        }
        self.round.wanted.remove(&id);
        let known = self.round.entries.get(&id).map(|e| e.state.clone());
        match (known, bytes) {
            (None, bytes) => {
                if let Some(first) = self.round.by_author.get(&author) {
                    if *first != id {
                        return self.reject(id, Some(author), RejectReason::Duplicate, out);
                    }
                }
                self.round.open(now);
                self.round.by_author.insert(author, id);
                let state = EntryState::Fetching { from: author };
                self.round.entries.insert(
                    id,
                    Entry {
                        signed,
                        contribution,
                        state,
                    },
                );
                match bytes {
                    Some(bytes) => self.on_payload(id, bytes, out),
                    None => out.push(Output::Fetch { id, from: author }),
                }
            }
            (Some(EntryState::Fetching { .. }), Some(bytes)) => self.on_payload(id, bytes, out),
            // Already known: a repeated announcement or delivery.
            _ => {}
        }
    }

    /// Checks that need only the contribution itself.
    fn header_fault(&self, c: &Contribution) -> Option<RejectReason> {
        if c.run != self.run {
            Some(RejectReason::WrongRun)
        } else if !self.config.manifest.allows(&c.author) || self.banned.contains(&c.author) {
            Some(RejectReason::NotAllowed)
        } else if c.compression != self.config.manifest.compression {
            Some(RejectReason::SettingsMismatch)
        } else if c.tokens == 0 || c.tokens > self.config.max_tokens {
            Some(RejectReason::TokensOutOfRange)
        } else {
            None
        }
    }

    fn on_payload(&mut self, id: Digest, bytes: Arc<[u8]>, out: &mut Vec<Output>) {
        let Some(entry) = self.round.entries.get(&id) else {
            return;
        };
        let expected = entry.contribution.payload;
        let author = entry.contribution.author;
        let verdict = if bytes.len() as u64 != expected.len || Digest::of(&bytes) != expected.hash {
            Err(RejectReason::PayloadMismatch)
        } else {
            self.checker.payload(&bytes).and_then(|facts| {
                let settings_match = facts.settings == self.config.manifest.compression
                    && facts.len == self.config.params;
                if settings_match {
                    Ok(facts.norm)
                } else {
                    Err(RejectReason::SettingsMismatch)
                }
            })
        };
        match verdict {
            Ok(norm) => {
                if let Some(entry) = self.round.entries.get_mut(&id) {
                    entry.state = EntryState::Held {
                        payload: bytes,
                        norm,
                    };
                }
            }
            Err(reason) => self.reject(id, Some(author), reason, out),
        }
    }

    fn on_fetch_failed(&mut self, id: &Digest) {
        if let Some(entry) = self.round.entries.get_mut(id) {
            if matches!(entry.state, EntryState::Fetching { .. }) {
                entry.state = EntryState::Unavailable;
            }
        }
    }

    fn on_peer_gone(&mut self, peer: &PeerKey) {
        for entry in self.round.entries.values_mut() {
            if matches!(entry.state, EntryState::Fetching { from } if from == *peer) {
                entry.state = EntryState::Unavailable;
            }
        }
    }

    fn on_commit(&mut self, now: Millis, signed: Signed<Commit>, out: &mut Vec<Output>) {
        let Ok(commit) = self.checker.commit(&signed) else {
            return;
        };
        let committer = commit.committer;
        if commit.run != self.run
            || !self.config.manifest.allows(&committer)
            || self.banned.contains(&committer)
        {
            return;
        }
        let key = (
            committer,
            commit.round,
            commit.base,
            set_digest(&commit.contributions),
        );
        self.known_checkpoints.insert(commit.base);
        self.known_checkpoints.insert(commit.result);
        match self.commit_results.get(&key) {
            Some(result) if *result != commit.result => {
                // Two results for one set from one key: equivocation.
                self.banned.insert(committer);
                self.members.remove(&committer);
                self.eligible = None;
                self.round.commits.remove(&committer);
                return;
            }
            Some(_) => {}
            None => {
                self.commit_results.insert(key, commit.result);
            }
        }
        if commit.round == self.round.number && commit.base == self.round.base {
            for id in commit.contributions.as_slice() {
                if !self.round.entries.contains_key(id) && !self.round.wanted.contains_key(id) {
                    self.round.wanted.insert(*id, committer);
                    out.push(Output::Fetch {
                        id: *id,
                        from: committer,
                    });
                }
            }
            self.round.open(now);
            self.round.commits.insert(committer, (signed, commit));
            return;
        }
        if self.adopting.is_some() {
            if self.deferred.len() < MAX_FUTURE {
                self.deferred.push(signed);
            }
            return;
        }
        self.consider_fork(&commit, out);
    }

    /// Fork choice: a commit off this peer's chain whose chain carries more
    /// tokens (ties: the lower checkpoint hash) is adopted.
    fn consider_fork(&mut self, commit: &Commit, out: &mut Vec<Output>) {
        if commit.result == self.head.base || self.adopting.is_some() {
            return;
        }
        let heavier = (commit.chain_tokens, std::cmp::Reverse(commit.result))
            > (self.head.chain_tokens, std::cmp::Reverse(self.head.base));
        if !heavier {
            return;
        }
        self.adopting = Some(commit.result);
        out.push(Output::RequestCheckpoint {
            head: Head {
                round: commit.round + 1,
                base: commit.result,
                chain_tokens: commit.chain_tokens,
                last_contributors: u32::try_from(commit.contributions.len()).unwrap_or(u32::MAX),
            },
            from: commit.committer,
        });
    }

    fn on_applied(&mut self, now: Millis, round: u64, result: Digest, out: &mut Vec<Output>) {
        let Phase::Applying { set, revision } = &self.round.phase else {
            return;
        };
        if round != self.round.number {
            return;
        }
        let (set, revision) = (set.clone(), *revision);
        let Some(signed) = self.sign_commit(&set, result) else {
            return;
        };
        if !revision {
            if self.round.mine.is_some() {
                out.push(Output::PublishCommit(signed.clone()));
            }
            if let Ok(commit) = self.checker.commit(&signed) {
                self.round.commits.insert(self.me, (signed, commit));
            }
            self.round.phase = Phase::Window {
                until: now + self.config.manifest.rounds.commit_window_ms,
                set,
                result,
            };
        } else {
            // A recomputation: say so if no one else has.
            if self.round.mine.is_some() || !self.round.has_commit_for(&set, &result) {
                out.push(Output::PublishCommit(signed.clone()));
            }
            self.finalize(now, set, result, signed, out);
        }
    }

    fn on_adopted(&mut self, now: Millis, head: Head, out: &mut Vec<Output>) {
        self.adopting = None;
        if let Some(id) = self.round.mine {
            if let Some(Entry {
                state: EntryState::Held { payload, .. },
                ..
            }) = self.round.entries.get(&id)
            {
                out.push(Output::ReturnToResidual {
                    payload: payload.clone(),
                });
            }
        }
        if let Some((round, _, payload)) = self.last_applied_mine.take() {
            // The round that applied it is replaced by the adopted chain.
            if round + 1 >= head.round.min(self.head.round) && head.round <= self.head.round {
                out.push(Output::ReturnToResidual { payload });
            }
        }
        self.enter(now, head, out);
    }

    // ----- the close of a round -----

    fn progress(&mut self, now: Millis, out: &mut Vec<Output>) {
        loop {
            match self.round.phase.clone() {
                Phase::Collecting => {
                    if self.adopting.is_some() {
                        return;
                    }
                    if let Some(union) = self.followed_union() {
                        // A quorum already committed this round: take their
                        // set once its payloads are here, rather than extend
                        // a round the others have closed.
                        let deadline = self
                            .round
                            .opened_at
                            .map(|t| t + self.config.manifest.rounds.deadline_ms);
                        let late = deadline.is_some_and(|d| now >= d);
                        if !self.round.settled_all(&union) && !late {
                            return;
                        }
                        let (set, _) = self.final_set(Some(&union));
                        self.ask_outer_step(set, false, out);
                    } else if self.should_close(now) {
                        self.close(out);
                    } else {
                        return;
                    }
                }
                Phase::Applying { .. } => return,
                Phase::Window { until, set, result } => {
                    if now < until {
                        return;
                    }
                    let union = self.round.commit_union();
                    self.round.phase = Phase::Reconciling {
                        until: now + self.config.manifest.rounds.deadline_ms,
                        set,
                        result,
                        union,
                    };
                }
                Phase::Reconciling {
                    until,
                    set,
                    result,
                    union,
                } => {
                    if now < until && !self.round.settled_all(&union) {
                        return;
                    }
                    let (last, _) = self.final_set(Some(&union));
                    if last == set {
                        let Some(signed) = self.own_commit(&set, result) else {
                            return;
                        };
                        self.finalize(now, set, result, signed, out);
                    } else {
                        self.ask_outer_step(last, true, out);
                    }
                }
            }
        }
    }

    /// A majority of the last round's contributors (at least
    /// `min_contributors`): fewer cannot close a round.
    fn quorum(&self) -> usize {
        let rules = &self.config.manifest.rounds;
        (self.head.last_contributors / 2 + 1).max(rules.min_contributors.max(1)) as usize
    }

    /// The union of other peers' commits for this round, once a quorum of
    /// peers has committed it.
    fn followed_union(&self) -> Option<IdSet> {
        let others = self.round.commits.keys().filter(|k| **k != self.me).count();
        (others >= self.quorum()).then(|| self.round.commit_union())
    }

    /// The close rule: a quorum held, and either every expected contributor
    /// settled or the deadline passed.
    fn should_close(&mut self, now: Millis) -> bool {
        let rules = &self.config.manifest.rounds;
        if self.round.held_count() < self.quorum() {
            return false;
        }
        let Some(opened) = self.round.opened_at else {
            return false;
        };
        if now >= opened + rules.deadline_ms {
            return true;
        }
        let me = self.me;
        let me_expected = self.eligible(&me);
        let me_settled = self.round.mine.is_some() || self.round.sat_out || !me_expected;
        let (round, members) = (&self.round, &self.members);
        me_settled
            && self.eligible.as_ref().is_some_and(|set| {
                set.iter()
                    .filter(|peer| **peer != me && members.contains(peer))
                    .all(|peer| round.settled_for(peer))
            })
    }

    fn close(&mut self, out: &mut Vec<Output>) {
        // Payloads still missing: withheld if the author is here, else lost.
        let missing: Vec<(Digest, PeerKey)> = self
            .round
            .entries
            .iter()
            .filter_map(|(id, e)| match e.state {
                EntryState::Fetching { from } => Some((*id, from)),
                _ => None,
            })
            .collect();
        for (id, from) in missing {
            if self.members.contains(&from) {
                self.reject_entry(id, RejectReason::WithheldPayload, out);
            } else if let Some(entry) = self.round.entries.get_mut(&id) {
                entry.state = EntryState::Unavailable;
            }
        }
        let (set, _) = self.final_set(None);
        self.ask_outer_step(set, false, out);
    }

    fn ask_outer_step(&mut self, set: IdSet, revision: bool, out: &mut Vec<Output>) {
        let contributions = set
            .as_slice()
            .iter()
            .filter_map(|id| match self.round.entries.get(id) {
                Some(Entry {
                    contribution,
                    state: EntryState::Held { payload, .. },
                    ..
                }) => Some(Accepted {
                    id: *id,
                    tokens: contribution.tokens,
                    payload: payload.clone(),
                }),
                _ => None,
            })
            .collect();
        out.push(Output::ApplyOuterStep {
            round: self.round.number,
            base: self.round.base,
            contributions,
        });
        self.round.phase = Phase::Applying { set, revision };
    }

    /// The set a round applies, from the held valid contributions (among
    /// `among` when given): the norm rule, then at most `max_contributors`
    /// with the lowest scores for this base. Returns it and the ids the norm
    /// rule dropped.
    fn final_set(&self, among: Option<&IdSet>) -> (IdSet, Vec<Digest>) {
        let norms = self.round.held_norms(among);
        let (kept, dropped) = validate::within_norm_limit(&norms);
        let max = self.config.manifest.rounds.max_contributors as usize;
        let mut kept: Vec<Digest> = kept;
        if max > 0 && kept.len() > max {
            let base = self.round.base;
            kept.sort_by_key(|id| {
                let author = self.round.entries[id].contribution.author;
                (score(&base, &author), *id)
            });
            kept.truncate(max);
        }
        (IdSet::new(kept), dropped)
    }

    fn sign_commit(&self, set: &IdSet, result: Digest) -> Option<Signed<Commit>> {
        let tokens: u64 = set
            .as_slice()
            .iter()
            .filter_map(|id| self.round.entries.get(id))
            .map(|e| e.contribution.tokens)
            .sum();
        let commit = Commit {
            run: self.run,
            round: self.round.number,
            base: self.round.base,
            committer: self.me,
            contributions: set.clone(),
            result,
            chain_tokens: self.head.chain_tokens.saturating_add(tokens),
        };
        Signed::sign(&commit, &self.config.key).ok()
    }

    fn own_commit(&self, set: &IdSet, result: Digest) -> Option<Signed<Commit>> {
        match self.round.commits.get(&self.me) {
            Some((signed, c)) if &c.contributions == set && c.result == result => {
                Some(signed.clone())
            }
            _ => self.sign_commit(set, result),
        }
    }

    fn finalize(
        &mut self,
        now: Millis,
        set: IdSet,
        result: Digest,
        commit: Signed<Commit>,
        out: &mut Vec<Output>,
    ) {
        let contributions: Vec<Signed<Contribution>> = set
            .as_slice()
            .iter()
            .filter_map(|id| self.round.entries.get(id).map(|e| e.signed.clone()))
            .collect();
        let tokens: u64 = set
            .as_slice()
            .iter()
            .filter_map(|id| self.round.entries.get(id))
            .map(|e| e.contribution.tokens)
            .sum();
        self.last_applied_mine = None;
        if let Some(mine) = self.round.mine {
            if let Some(Entry {
                state: EntryState::Held { payload, .. },
                ..
            }) = self.round.entries.get(&mine)
            {
                if set.contains(&mine) {
                    self.last_applied_mine = Some((self.round.number, mine, payload.clone()));
                } else {
                    out.push(Output::ReturnToResidual {
                        payload: payload.clone(),
                    });
                }
            }
        }
        // Outliers are reported once the round is over, measured against
        // everything the round held, so a count never names an update that
        // was applied in the end.
        let (_, outliers) = validate::within_norm_limit(&self.round.held_norms(None));
        for id in outliers.into_iter().filter(|id| !set.contains(id)) {
            self.reject_entry(id, RejectReason::NormOutlier, out);
        }
        self.applied.extend(set.as_slice().iter().copied());
        let head = Head {
            round: self.round.number + 1,
            base: result,
            chain_tokens: self.head.chain_tokens.saturating_add(tokens),
            last_contributors: u32::try_from(set.len()).unwrap_or(u32::MAX),
        };
        out.push(Output::Finalized {
            record: RoundRecord {
                commit,
                contributions,
            },
            head,
        });
        self.enter(now, head, out);
    }

    /// Moves to `head`: a fresh round, with what was waiting for it.
    fn enter(&mut self, now: Millis, head: Head, out: &mut Vec<Output>) {
        let finished = std::mem::replace(&mut self.round, RoundState::new(head.round, head.base));
        self.previous = Some(finished);
        self.head = head;
        self.eligible = None;
        self.known_checkpoints.insert(head.base);
        let future = std::mem::take(&mut self.future);
        for signed in future {
            let round = self.checker.contribution(&signed).map(|c| c.round);
            match round {
                Ok(r) if r == head.round => {
                    let id = signed.id();
                    if !self.round.entries.contains_key(&id) {
                        self.on_announced(now, signed, None, out);
                    }
                }
                Ok(r) if r > head.round => self.future.push(signed),
                _ => {}
            }
        }
        if let Some(update) = self.pending.take() {
            self.contribute(now, update, out);
        }
        for signed in std::mem::take(&mut self.deferred) {
            self.on_commit(now, signed, out);
        }
        self.maybe_start_training(out);
    }

    fn maybe_start_training(&mut self, out: &mut Vec<Output>) {
        if self.training || self.pending.is_some() {
            return;
        }
        let this_round_open = self.round.phase == Phase::Collecting
            && self.round.mine.is_none()
            && !self.round.sat_out;
        if this_round_open {
            self.training = true;
            out.push(Output::StartTraining {
                round: self.round.number,
            });
        } else if self.config.overlap {
            self.training = true;
            out.push(Output::StartTraining {
                round: self.round.number + 1,
            });
        }
    }

    // ----- helpers -----

    /// The peers that contribute this round: all members and this peer when
    /// they fit `max_contributors` with room to spare, else the
    /// `1.5 × max_contributors` whose scores for this base are lowest (the
    /// final cut keeps `max_contributors`). Computed once per round and
    /// membership.
    fn eligible_set(&mut self) -> &BTreeSet<PeerKey> {
        let max = self.config.manifest.rounds.max_contributors as usize;
        let room = if max == 0 { usize::MAX } else { max + max / 2 };
        let (members, me, base) = (&self.members, self.me, self.round.base);
        self.eligible.get_or_insert_with(|| {
            let everyone = members.iter().copied().chain(std::iter::once(me));
            if members.len() < room {
                return everyone.collect();
            }
            let mut ranked: Vec<(Digest, PeerKey)> =
                everyone.map(|peer| (score(&base, &peer), peer)).collect();
            ranked.sort_unstable();
            ranked
                .into_iter()
                .take(room)
                .map(|(_, peer)| peer)
                .collect()
        })
    }

    fn eligible(&mut self, peer: &PeerKey) -> bool {
        self.eligible_set().contains(peer)
    }

    fn reject(
        &mut self,
        id: Digest,
        author: Option<PeerKey>,
        reason: RejectReason,
        out: &mut Vec<Output>,
    ) {
        *self.counts.entry(reason).or_default() += 1;
        out.push(Output::Rejected { id, author, reason });
    }

    /// Drops an entry already in the round.
    fn reject_entry(&mut self, id: Digest, reason: RejectReason, out: &mut Vec<Output>) {
        let Some(entry) = self.round.entries.get_mut(&id) else {
            return;
        };
        if matches!(entry.state, EntryState::Rejected) {
            return;
        }
        entry.state = EntryState::Rejected;
        let author = entry.contribution.author;
        self.reject(id, Some(author), reason, out);
    }
}

/// A peer's rank key for the contributor subset of a round with base
/// `base`: blake3 of the base and the key, the same on every peer.
pub fn score(base: &Digest, peer: &PeerKey) -> Digest {
    let mut bytes = [0u8; 64];
    bytes[..32].copy_from_slice(base.as_bytes());
    bytes[32..].copy_from_slice(peer.as_bytes());
    Digest::of(&bytes)
}

/// A short name for an id set, for equivocation bookkeeping.
fn set_digest(set: &IdSet) -> Digest {
    let bytes: Vec<u8> = set
        .as_slice()
        .iter()
        .flat_map(|d| d.as_bytes().iter().copied())
        .collect();
    Digest::of(&bytes)
}

#[cfg(test)]
mod tests;
