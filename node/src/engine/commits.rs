//! Commits: collecting them, fork choice between branches, the outer
//! step's answer, and adopting a heavier branch's checkpoint.

use p2ptrain_protocol::{Commit, Digest, IdSet, PeerKey, Signed};

use super::round::{Entry, EntryState, Phase, RecentHeads};
use super::validate::Checker;
use super::{set_digest, BanReason, Engine, Head, Millis, Output, MAX_FUTURE};

impl<C: Checker> Engine<C> {
    pub(super) fn on_commit(&mut self, now: Millis, signed: Signed<Commit>, out: &mut Vec<Output>) {
        let Ok(commit) = self.checker.commit(&signed) else {
            return;
        };
        let committer = commit.committer;
        if commit.run != self.run
            || !self.config.allows(&committer)
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
        self.saw_at(committer, commit.round.saturating_add(1));
        self.known_checkpoints.insert(commit.base);
        self.known_checkpoints.insert(commit.result);
        match self.commit_results.get(&key) {
            Some(result) if *result != commit.result => {
                // Two results for one set from one key: equivocation.
                let reason = BanReason::Equivocated {
                    round: commit.round,
                };
                self.ban(committer, reason, out);
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
                let fetch = match self.round.entries.get_mut(id) {
                    // Its author could not deliver (gone, say): the
                    // committer held it, so ask the committer.
                    Some(entry) if matches!(entry.state, EntryState::Unavailable) => {
                        entry.state = EntryState::Fetching { from: committer };
                        true
                    }
                    Some(_) => false,
                    None if self.round.wanted.contains_key(id) => false,
                    None => {
                        self.round.wanted.insert(*id, committer);
                        true
                    }
                };
                if fetch {
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
    pub(super) fn consider_fork(&mut self, commit: &Commit, out: &mut Vec<Output>) {
        if commit.result == self.head.base || self.adopting.is_some() {
            return;
        }
        let heavier = (commit.chain_tokens, std::cmp::Reverse(commit.result))
            > (self.head.chain_tokens, std::cmp::Reverse(self.head.base));
        if !heavier {
            return;
        }
        self.adopting = Some(Adopting {
            result: commit.result,
            round: commit.round,
            base: commit.base,
            applied: commit.contributions.clone(),
        });
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

    /// The checkpoint `result`, named by `from`'s commit, could not be
    /// had. A committer that has since committed a round on top of it
    /// moved on, as an honest peer does once the next round ends, and
    /// stopped serving it: it is not ignored. One that did not claimed a
    /// checkpoint it cannot serve, and is. The commits that waited while
    /// the checkpoint was sought are then weighed again, heaviest chain
    /// first, so a node left behind goes for the newest checkpoint it has
    /// heard of rather than waiting on the next round's end.
    pub(super) fn on_checkpoint_unavailable(
        &mut self,
        now: Millis,
        result: Digest,
        from: PeerKey,
        out: &mut Vec<Output>,
    ) {
        let waiting: Vec<(Signed<Commit>, Commit)> = std::mem::take(&mut self.deferred)
            .into_iter()
            .filter_map(|signed| {
                let commit = self.checker.commit(&signed).ok()?;
                Some((signed, commit))
            })
            .collect();
        let moved_on = waiting
            .iter()
            .any(|(_, c)| c.committer == from && c.base == result);
        if !moved_on {
            self.ban(from, BanReason::CheckpointUnavailable { result }, out);
        }
        if self.adopting.as_ref().is_none_or(|a| a.result != result) {
            // Another checkpoint is being sought: its commits wait on.
            self.deferred = waiting.into_iter().map(|(signed, _)| signed).collect();
            return;
        }
        self.adopting = None;
        let mut waiting = waiting;
        waiting
            .sort_by_key(|(_, c)| std::cmp::Reverse((c.chain_tokens, std::cmp::Reverse(c.result))));
        for (signed, _) in waiting {
            self.on_commit(now, signed, out);
        }
    }

    pub(super) fn on_applied(
        &mut self,
        now: Millis,
        round: u64,
        result: Digest,
        out: &mut Vec<Output>,
    ) {
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

    pub(super) fn on_adopted(&mut self, now: Millis, head: Head, out: &mut Vec<Output>) {
        let adopted = self.adopting.take();
        // Whether the adopted branch lacks this peer's update of `round`.
        // Known when the adopted commit closed that round, or closed the
        // round after this one, this peer's, starting from the result of a
        // commit of this round that this peer holds (a straggler adopting
        // the branch that went on without it): then an update it applied
        // is not put back (in a split the branches mostly apply the same
        // updates, and put back it would count twice, and the next update,
        // carrying it again, would be dropped as an outlier). Otherwise
        // assumed: a branch that grew apart over rounds, across a partition
        // say, most likely never had it.
        let applied_in = |round: u64| -> Option<&IdSet> {
            let adopted = adopted.as_ref()?;
            if adopted.round == round {
                return Some(&adopted.applied);
            }
            let before = round == self.round.number && adopted.round == round + 1;
            let mut commits = self.round.commits.values().map(|(_, c)| c);
            before
                .then(|| commits.find(|c| c.result == adopted.base))
                .flatten()
                .map(|c| &c.contributions)
        };
        let left_out = |round: u64, id: &Digest| applied_in(round).is_none_or(|s| !s.contains(id));
        let mut returned = Vec::new();
        if let Some(id) = self.round.mine {
            if let Some(Entry {
                state: EntryState::Held { payload, .. },
                ..
            }) = self.round.entries.get(&id)
            {
                if left_out(self.round.number, &id) {
                    returned.push(payload.clone());
                }
            }
        }
        if let Some((round, id, payload)) = &self.last_applied_mine {
            // The round that applied it is replaced by the adopted chain.
            let replaced =
                round + 1 >= head.round.min(self.head.round) && head.round <= self.head.round;
            if replaced && left_out(*round, id) {
                returned.push(payload.clone());
            }
        }
        self.last_applied_mine = None;
        out.extend(
            returned
                .into_iter()
                .map(|payload| Output::ReturnToResidual { payload }),
        );
        // The chain is the adopted one from here; of its past only the
        // adopted checkpoint is known.
        self.chain = RecentHeads::new(head.base);
        self.enter(now, head, out);
    }
}

/// A heavier branch being adopted: the checkpoint fetched, and the round
/// and updates of the commit that named it.
#[derive(Debug, Clone)]
pub(super) struct Adopting {
    /// The checkpoint.
    pub(super) result: Digest,
    /// The round the commit closed.
    pub(super) round: u64,
    /// The checkpoint that round started from.
    pub(super) base: Digest,
    /// The updates it applied.
    pub(super) applied: IdSet,
}
