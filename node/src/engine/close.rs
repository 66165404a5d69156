//! The close of a round: the close rule and quorum, the applied set,
//! commit, reconciliation, finalization, and the contributor subset.

use std::collections::BTreeSet;

use p2ptrain_protocol::{Commit, Contribution, Digest, IdSet, PeerKey, RoundRecord, Signed};

use super::round::{Entry, EntryState, Phase, RoundState};
use super::validate::{self, Checker, RejectReason};
use super::{score, Accepted, Engine, Head, Millis, Output, Rejection};

impl<C: Checker> Engine<C> {
    pub(super) fn progress(&mut self, now: Millis, out: &mut Vec<Output>) {
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
    pub(super) fn quorum(&self) -> usize {
        self.head.quorum(&self.config.manifest.rounds)
    }

    /// The union of other peers' commits for this round, once a quorum of
    /// peers has committed it.
    pub(super) fn followed_union(&self) -> Option<IdSet> {
        let others = self.round.commits.keys().filter(|k| **k != self.me).count();
        (others >= self.quorum()).then(|| self.round.commit_union())
    }

    /// The close rule: a quorum held, and either every expected contributor
    /// settled or the deadline passed.
    pub(super) fn should_close(&mut self, now: Millis) -> bool {
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
        // (`eligible` also computes the round's set, read below.)
        let me_expected = self.eligible(&me) && self.contributes_to(self.round.number);
        let me_settled = self.round.mine.is_some() || self.round.sat_out || !me_expected;
        let (round, members) = (&self.round, &self.members);
        me_settled
            && self.eligible.as_ref().is_some_and(|set| {
                set.iter()
                    .filter(|peer| **peer != me && members.contains(peer))
                    .all(|peer| round.settled_for(peer))
            })
    }

    pub(super) fn close(&mut self, out: &mut Vec<Output>) {
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

    pub(super) fn ask_outer_step(&mut self, set: IdSet, revision: bool, out: &mut Vec<Output>) {
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
    pub(super) fn final_set(&self, among: Option<&IdSet>) -> (IdSet, Vec<Digest>) {
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

    /// The tokens the contributions of `set` that this round holds claim.
    fn tokens_of(&self, set: &IdSet) -> u64 {
        set.as_slice()
            .iter()
            .filter_map(|id| self.round.entries.get(id))
            .map(|e| e.contribution.tokens)
            .sum()
    }

    pub(super) fn sign_commit(&self, set: &IdSet, result: Digest) -> Option<Signed<Commit>> {
        let tokens = self.tokens_of(set);
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

    pub(super) fn own_commit(&self, set: &IdSet, result: Digest) -> Option<Signed<Commit>> {
        match self.round.commits.get(&self.me) {
            Some((signed, c)) if &c.contributions == set && c.result == result => {
                Some(signed.clone())
            }
            _ => self.sign_commit(set, result),
        }
    }

    pub(super) fn finalize(
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
        let tokens = self.tokens_of(&set);
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
        // Commits of this round that ended elsewhere: a disagreement the
        // reconciliation did not settle is settled by fork choice, heaviest
        // first.
        let mut elsewhere: Vec<Commit> = self
            .round
            .commits
            .values()
            .filter(|(_, c)| c.result != result)
            .map(|(_, c)| c.clone())
            .collect();
        elsewhere.sort_by_key(|c| (std::cmp::Reverse(c.chain_tokens), c.result));
        self.enter(now, head, out);
        for commit in elsewhere {
            self.consider_fork(&commit, out);
        }
    }

    /// Moves to `head`: a fresh round, with what was waiting for it.
    pub(super) fn enter(&mut self, now: Millis, head: Head, out: &mut Vec<Output>) {
        let finished = std::mem::replace(&mut self.round, RoundState::new(head.round, head.base));
        self.previous = Some(finished);
        self.head = head;
        self.eligible = None;
        self.known_checkpoints.insert(head.base);
        self.chain.push(head.base);
        self.ignore_equivocators();
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

    pub(super) fn maybe_start_training(&mut self, out: &mut Vec<Output>) {
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

    /// The peers that contribute this round: all members and this peer when
    /// they fit `max_contributors` with room to spare, else the
    /// `1.5 × max_contributors` whose scores for this base are lowest (the
    /// final cut keeps `max_contributors`). Computed once per round and
    /// membership.
    pub(super) fn eligible_set(&mut self) -> &BTreeSet<PeerKey> {
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

    pub(super) fn eligible(&mut self, peer: &PeerKey) -> bool {
        self.eligible_set().contains(peer)
    }

    pub(super) fn reject(
        &mut self,
        id: Digest,
        author: Option<PeerKey>,
        reason: RejectReason,
        out: &mut Vec<Output>,
    ) {
        *self.counts.entry(reason).or_default() += 1;
        out.push(Output::Rejected(Rejection { id, author, reason }));
    }

    /// Drops an entry already in the round.
    pub(super) fn reject_entry(&mut self, id: Digest, reason: RejectReason, out: &mut Vec<Output>) {
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
