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

mod close;
mod commits;
mod inbound;
mod io;
mod round;
mod seen;
pub mod validate;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use p2ptrain_protocol::{Commit, Contribution, Digest, Equivocation, IdSet, PeerKey, Signed};

use commits::Adopting;
pub use io::{
    Accepted, Ban, BanReason, EngineConfig, EngineError, Head, Input, LocalUpdate, Output,
    Rejection,
};
use round::{Entry, EntryState, Phase, RecentHeads, RoundState};
pub use validate::{Checker, PayloadFacts, RejectCounts, RejectReason, Verify};

/// Milliseconds on the host's clock (virtual in `netsim`).
pub type Millis = u64;

/// Announcements held for rounds not yet reached, at most.
pub(crate) const MAX_FUTURE: usize = 4096;

/// One peer's round engine. See the [module docs](self).
#[derive(Debug)]
pub struct Engine<C: Checker = Verify> {
    config: EngineConfig,
    checker: C,
    run: Digest,
    me: PeerKey,
    head: Head,
    members: BTreeSet<PeerKey>,
    /// The latest round each member was seen working on (see
    /// [`members_behind`](Self::members_behind)).
    seen_at: BTreeMap<PeerKey, u64>,
    banned: BTreeSet<PeerKey>,
    /// Keys caught signing two contributions in a round, and the round:
    /// ignored from the next round on (within it, the first contribution
    /// each peer heard stands, as for every peer, whenever it learned).
    equivocators: BTreeMap<PeerKey, u64>,
    /// Rounds in which a contribution signed with this peer's own key, not
    /// its own, was heard (reported once a round).
    key_shared: BTreeSet<u64>,
    /// Ids applied in rounds this engine finalized: a replay is one of them.
    applied: HashSet<Digest>,
    round: RoundState,
    /// The previous round, kept to serve its payloads to late fetchers.
    previous: Option<RoundState>,
    future: Vec<Signed<Contribution>>,
    training: bool,
    pending: Option<LocalUpdate>,
    /// The first round this peer contributes nothing to, if any (see
    /// [`contribute_until`](Self::contribute_until)).
    contribute_until: Option<u64>,
    /// This peer's update applied in the last finalized round, should a
    /// heavier chain replace that round.
    last_applied_mine: Option<(u64, Digest, Arc<[u8]>)>,
    /// Results seen per (committer, round, base, set): two results prove
    /// equivocation.
    commit_results: BTreeMap<(PeerKey, u64, Digest, Digest), Digest>,
    /// The heavier branch whose checkpoint is being fetched.
    adopting: Option<Adopting>,
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
    /// The latest checkpoints of this peer's own chain, the head last: a
    /// contribution from an earlier round trained on one of them is a
    /// straggler's, on anything else another branch's.
    chain: RecentHeads,
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
        if !config.allows(&me) {
            return Err(EngineError::NotOnOwnList(me));
        }
        Ok(Self {
            round: RoundState::new(head.round, head.base),
            config,
            checker,
            run,
            me,
            head,
            members: BTreeSet::new(),
            seen_at: BTreeMap::new(),
            banned: BTreeSet::new(),
            equivocators: BTreeMap::new(),
            key_shared: BTreeSet::new(),
            applied: HashSet::new(),
            previous: None,
            future: Vec::new(),
            training: false,
            pending: None,
            last_applied_mine: None,
            commit_results: BTreeMap::new(),
            adopting: None,
            contribute_until: None,
            eligible: None,
            deferred: Vec::new(),
            known_checkpoints: HashSet::from([head.base]),
            chain: RecentHeads::new(head.base),
            counts: RejectCounts::new(),
        })
    }

    /// This peer's key.
    pub fn me(&self) -> PeerKey {
        self.me
    }

    /// Contributes to no round from `round` on: an update for a later
    /// round goes back into the residual ([`Output::ReturnToResidual`]).
    /// For a node asked to train `round` rounds, whose last session, trained
    /// for an earlier round and held for the next one open, would otherwise
    /// be contributed past the end.
    pub fn contribute_until(&mut self, round: u64) {
        self.contribute_until = Some(round);
    }

    /// Whether this peer contributes to `round` (see
    /// [`contribute_until`](Self::contribute_until)).
    pub fn contributes_to(&self, round: u64) -> bool {
        self.contribute_until.is_none_or(|end| round < end)
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

    /// This peer's own contribution to the current round, if it has one: to
    /// announce again to a peer that joins the topic after it was first
    /// sent (gossip keeps no history for latecomers).
    pub fn own_announcement(&self) -> Option<Signed<Contribution>> {
        let id = self.round.mine?;
        self.round
            .entries
            .get(&id)
            .map(|entry| entry.signed.clone())
    }

    /// This peer's own contribution while its round still gathers
    /// contributions: to announce again. Gossip forwards a message along
    /// the mesh as it stands when the message passes, so a peer two hops
    /// away that joined the mesh a moment later never hears it.
    pub fn announcement_to_repeat(&self) -> Option<Signed<Contribution>> {
        match self.round.phase {
            Phase::Collecting => self.own_announcement(),
            _ => None,
        }
    }

    /// Whether `signed`, heard from `source`, is its author announcing
    /// again a contribution that a round this engine finalized applied: a
    /// repeat that crossed the round's close, to drop without counting. The
    /// same contribution sent by another peer is a replay.
    pub fn is_late_repeat(&self, signed: &Signed<Contribution>, source: Option<PeerKey>) -> bool {
        source == Some(signed.signer()) && self.applied.contains(&signed.id())
    }

    /// Whether this peer has a stake in what `key` does: a member, or the
    /// author of a contribution it heard this round or the last. Evidence
    /// about other keys is dropped unchecked.
    pub fn knows(&self, key: &PeerKey) -> bool {
        let heard =
            |round: Option<&RoundState>| round.is_some_and(|r| r.by_author.contains_key(key));
        self.members.contains(key) || heard(Some(&self.round)) || heard(self.previous.as_ref())
    }

    /// Whether `key` is caught: ignored now, or from the next round on.
    pub fn is_ignored(&self, key: &PeerKey) -> bool {
        self.banned.contains(key) || self.equivocators.contains_key(key)
    }

    /// This node's updates that no finalized round has applied: its
    /// contribution to the round under way and an update still waiting for
    /// a round. A node that stops puts them back into its residual.
    pub fn unapplied_own_payloads(&self) -> Vec<Arc<[u8]>> {
        let mine = self
            .round
            .mine
            .and_then(|id| match &self.round.entries.get(&id)?.state {
                EntryState::Held { payload, .. } => Some(payload.clone()),
                _ => None,
            });
        let waiting = self.pending.as_ref().map(|update| update.payload.clone());
        mine.into_iter().chain(waiting).collect()
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
                let allowed = self.config.allows(&peer) && !self.banned.contains(&peer);
                if peer != self.me && allowed && self.members.insert(peer) {
                    self.eligible = None;
                }
            }
            Input::PeerGone(peer) => {
                self.seen_at.remove(&peer);
                if self.members.remove(&peer) {
                    self.eligible = None;
                }
                self.on_peer_gone(&peer, &mut out);
            }
            Input::Trained(update) => {
                self.training = false;
                self.on_trained(now, update, &mut out);
            }
            Input::Announced(signed) => self.on_announced(now, signed, None, &mut out),
            Input::Reannounce {
                contribution,
                bytes,
            } => self.reannounce(now, contribution, bytes, &mut out),
            Input::Evidence(proof) => self.on_evidence(&proof, &mut out),
            Input::PayloadArrived {
                contribution,
                bytes,
            } => self.on_announced(now, contribution, Some(bytes), &mut out),
            Input::FetchFailed { id } => self.on_fetch_failed(&id, &mut out),
            Input::CommitReceived(signed) => self.on_commit(now, signed, &mut out),
            Input::HoldsHead { peer, round } => self.saw_at(peer, round),
            Input::Applied { round, result } => self.on_applied(now, round, result, &mut out),
            Input::CheckpointAdopted(head) => self.on_adopted(now, head, &mut out),
            Input::CheckpointUnavailable { result, from } => {
                self.on_checkpoint_unavailable(now, result, from, &mut out);
            }
        }
        self.progress(now, &mut out);
        out
    }

    /// Evidence from a peer that a key signed two contributions for one
    /// round, acted on when the key is one this peer has a stake in: a
    /// member, or the author of a contribution it heard this round or the
    /// last. Proofs about any other key, which anyone can mint by the
    /// thousand from fresh keys, are dropped before their signatures are
    /// checked, so that they cost neither time nor a place among the
    /// ignored. (A key this peer has not heard from has no contribution
    /// here to drop; should its contributions arrive later, both halves
    /// of an equivocation arrive with them.)
    fn on_evidence(&mut self, proof: &Equivocation, out: &mut Vec<Output>) {
        if !self.knows(&proof.first.signer()) {
            return;
        }
        if let Some(c) = proof.proven().filter(|c| c.run == self.run) {
            self.caught_equivocating(c.author, c.round, None, out);
        }
    }

    /// `author` signed two contributions for `round`: reported now, and
    /// ignored from the next round on. `proof`, when this peer found it,
    /// goes to every peer. When `author` is this peer, another node holds
    /// its key (its own contribution from before a restart is announced
    /// again, never a second one).
    fn caught_equivocating(
        &mut self,
        author: PeerKey,
        round: u64,
        proof: Option<Equivocation>,
        out: &mut Vec<Output>,
    ) {
        if author == self.me {
            if self.key_shared.insert(round) {
                out.push(Output::KeyShared { round });
            }
            return;
        }
        if self.banned.contains(&author) || self.equivocators.contains_key(&author) {
            return;
        }
        out.extend(proof.map(Output::PublishEvidence));
        let reason = BanReason::TwoContributions { round };
        out.push(Output::Banned(Ban {
            peer: author,
            reason,
        }));
        self.equivocators.insert(author, round);
        self.ignore_equivocators();
    }

    /// Ignores the equivocators caught in rounds before the current one.
    fn ignore_equivocators(&mut self) {
        let current = self.round.number;
        let due: Vec<PeerKey> = self
            .equivocators
            .iter()
            .filter(|(_, round)| **round < current)
            .map(|(k, _)| *k)
            .collect();
        for author in due {
            self.equivocators.remove(&author);
            self.ignore(author);
        }
    }

    /// Ignores `peer` from now on, and says so (once).
    fn ban(&mut self, peer: PeerKey, reason: BanReason, out: &mut Vec<Output>) {
        if peer != self.me && self.ignore(peer) {
            out.push(Output::Banned(Ban { peer, reason }));
        }
    }

    /// Ignores `peer` from now on; whether it was not yet.
    fn ignore(&mut self, peer: PeerKey) -> bool {
        self.members.remove(&peer);
        self.seen_at.remove(&peer);
        self.eligible = None;
        self.banned.insert(peer)
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
mod allow_tests;
#[cfg(test)]
mod behind_tests;
#[cfg(test)]
mod tests;
