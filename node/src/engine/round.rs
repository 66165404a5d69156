//! One round's working state: the contributions heard of, their payloads,
//! the commits received, and where the round is in its close.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use p2ptrain_protocol::{Commit, Contribution, Digest, IdSet, PeerKey, Signed};

use super::Millis;

/// A contribution the round has heard of.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub signed: Signed<Contribution>,
    pub contribution: Contribution,
    pub state: EntryState,
}

/// Where a contribution's payload is.
#[derive(Debug, Clone)]
pub(super) enum EntryState {
    /// Asked of this peer, not yet here.
    Fetching { from: PeerKey },
    /// Here, checked, with the norm of its update.
    Held { payload: Arc<[u8]>, norm: f64 },
    /// Dropped (the reason is counted and reported when it happens).
    Rejected,
    /// Its author left before delivering it: not held against anyone.
    Unavailable,
}

/// Where the round is in its close.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Phase {
    /// Hearing contributions until the close rule holds.
    Collecting,
    /// The host is computing the outer step for `set`; `revision` when it is
    /// a recomputation after reconciliation.
    Applying { set: IdSet, revision: bool },
    /// Committed `set` → `result`; collecting other commits until `until`.
    Window {
        until: Millis,
        set: IdSet,
        result: Digest,
    },
    /// Fetching what other commits named, until every id is settled or
    /// `until`.
    Reconciling {
        until: Millis,
        set: IdSet,
        result: Digest,
        union: IdSet,
    },
}

/// Checkpoints a peer's chain held last, the newest last.
#[derive(Debug, Clone)]
pub(super) struct RecentHeads(VecDeque<Digest>);

impl RecentHeads {
    /// How many are kept: a peer further behind than this is told apart
    /// from another branch no more, and is not waited for either.
    const KEPT: usize = 64;

    /// A chain known from `head` on (a start, or an adopted checkpoint).
    pub fn new(head: Digest) -> Self {
        Self(VecDeque::from([head]))
    }

    /// The chain moved on to `head`.
    pub fn push(&mut self, head: Digest) {
        if self.0.back() != Some(&head) {
            if self.0.len() == Self::KEPT {
                self.0.pop_front();
            }
            self.0.push_back(head);
        }
    }

    pub fn contains(&self, checkpoint: &Digest) -> bool {
        self.0.contains(checkpoint)
    }
}

/// The state of round `number`, started from checkpoint `base`.
#[derive(Debug, Clone)]
pub(super) struct RoundState {
    pub number: u64,
    pub base: Digest,
    /// When the first contribution of the round was heard of: the deadline
    /// counts from here.
    pub opened_at: Option<Millis>,
    pub entries: BTreeMap<Digest, Entry>,
    pub by_author: BTreeMap<PeerKey, Digest>,
    /// Ids named by commits whose contribution has not been seen, and whom
    /// to ask.
    pub wanted: BTreeMap<Digest, PeerKey>,
    /// This peer's own contribution.
    pub mine: Option<Digest>,
    /// This peer is not among the round's contributors (subset rule) and
    /// keeps its update.
    pub sat_out: bool,
    /// The latest valid commit of each committer for this round and base.
    pub commits: BTreeMap<PeerKey, (Signed<Commit>, Commit)>,
    /// Payloads a peer failed to deliver: not asked of that peer again.
    pub failed_sources: BTreeSet<(Digest, PeerKey)>,
    /// Peers that announced, during this round, an update trained on a
    /// checkpoint off this peer's chain (another branch, or one too old to
    /// tell): none from them for this round's base is coming until they
    /// adopt this chain, so the round does not wait for them.
    pub elsewhere: BTreeSet<PeerKey>,
    pub phase: Phase,
}

impl RoundState {
    pub fn new(number: u64, base: Digest) -> Self {
        Self {
            number,
            base,
            opened_at: None,
            entries: BTreeMap::new(),
            by_author: BTreeMap::new(),
            wanted: BTreeMap::new(),
            mine: None,
            sat_out: false,
            commits: BTreeMap::new(),
            failed_sources: BTreeSet::new(),
            elsewhere: BTreeSet::new(),
            phase: Phase::Collecting,
        }
    }

    /// Marks the round open at `now` if nothing opened it before.
    pub fn open(&mut self, now: Millis) {
        self.opened_at.get_or_insert(now);
    }

    /// Ids whose payload is held and valid, with the norm of each update.
    pub fn held_norms(&self, among: Option<&IdSet>) -> Vec<(Digest, f64)> {
        self.entries
            .iter()
            .filter(|(id, _)| among.is_none_or(|set| set.contains(id)))
            .filter_map(|(id, entry)| match entry.state {
                EntryState::Held { norm, .. } => Some((*id, norm)),
                _ => None,
            })
            .collect()
    }

    /// How many contributions are held and valid.
    pub fn held_count(&self) -> usize {
        self.entries
            .values()
            .filter(|e| matches!(e.state, EntryState::Held { .. }))
            .count()
    }

    /// Whether `author`'s contribution is settled: held, dropped, or known
    /// to be unavailable — or none is coming, the author being on another
    /// branch.
    pub fn settled_for(&self, author: &PeerKey) -> bool {
        match self
            .by_author
            .get(author)
            .and_then(|id| self.entries.get(id))
        {
            Some(entry) => !matches!(entry.state, EntryState::Fetching { .. }),
            None => self.elsewhere.contains(author),
        }
    }

    /// Whether every id of `set` is settled here.
    pub fn settled_all(&self, set: &IdSet) -> bool {
        set.as_slice().iter().all(|id| {
            self.entries
                .get(id)
                .is_some_and(|e| !matches!(e.state, EntryState::Fetching { .. }))
        })
    }

    /// The union of the id sets of every commit held.
    pub fn commit_union(&self) -> IdSet {
        let ids: BTreeSet<Digest> = self
            .commits
            .values()
            .flat_map(|(_, c)| c.contributions.as_slice().iter().copied())
            .collect();
        IdSet::new(ids.into_iter().collect())
    }

    /// A peer other than `me` that committed `id` and has not failed to
    /// deliver it: it applied the payload, so it holds it.
    pub fn another_holder(&self, id: &Digest, me: &PeerKey) -> Option<PeerKey> {
        self.commits
            .iter()
            .filter(|(committer, (_, commit))| {
                *committer != me && commit.contributions.contains(id)
            })
            .map(|(committer, _)| *committer)
            .find(|committer| !self.failed_sources.contains(&(*id, *committer)))
    }

    /// Whether some held commit names `set` with `result`.
    pub fn has_commit_for(&self, set: &IdSet, result: &Digest) -> bool {
        self.commits
            .values()
            .any(|(_, c)| &c.contributions == set && &c.result == result)
    }
}
