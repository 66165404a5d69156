//! What the engine does with contributions and payloads as they arrive:
//! its own update, announcements, payloads, peers leaving.

use std::sync::Arc;

use p2ptrain_protocol::{Contribution, Digest, Equivocation, PayloadRef, PeerKey, Signed};

use super::round::{Entry, EntryState, Phase};
use super::validate::{Checker, RejectReason};
use super::{Engine, LocalUpdate, Millis, Output, MAX_FUTURE};

impl<C: Checker> Engine<C> {
    pub(super) fn on_trained(&mut self, now: Millis, update: LocalUpdate, out: &mut Vec<Output>) {
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

    pub(super) fn contribute(&mut self, now: Millis, update: LocalUpdate, out: &mut Vec<Output>) {
        let me = self.me;
        if !self.contributes_to(self.round.number) || !self.eligible(&me) {
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

    /// [`Input::Reannounce`](super::Input::Reannounce): this peer's contribution from before a
    /// restart, if it is for the current round and base.
    pub(super) fn reannounce(
        &mut self,
        now: Millis,
        signed: Signed<Contribution>,
        bytes: Arc<[u8]>,
        out: &mut Vec<Output>,
    ) {
        let Ok(contribution) = self.checker.contribution(&signed) else {
            return;
        };
        let current =
            contribution.round == self.round.number && contribution.base == self.round.base;
        if contribution.author != self.me || !current || self.round.mine.is_some() {
            return;
        }
        self.round.mine = Some(signed.id());
        out.push(Output::Announce(signed.clone()));
        self.on_announced(now, signed, Some(bytes), out);
    }

    pub(super) fn on_announced(
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
        // A commit of this round named it: whatever becomes of it, the
        // round must count it settled.
        let named = self.round.wanted.remove(&id).is_some();
        if let Some(reason) = self.header_fault(&contribution) {
            return self.drop_named(signed, contribution, reason, named, out);
        }
        self.saw_at(author, contribution.round);
        if contribution.round < self.round.number {
            if self.applied.contains(&id) {
                self.reject(id, Some(author), RejectReason::Replay, out);
            } else if !self.chain.contains(&contribution.base) {
                // Behind, and not on this chain: a branch that will adopt
                // this one (a straggler trains from a checkpoint of it).
                self.round.elsewhere.insert(author);
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
            self.round.elsewhere.insert(author);
            if self.known_checkpoints.contains(&contribution.base) {
                // Trained on another chain; fork choice settles chains.
                return;
            }
            return self.reject(id, Some(author), RejectReason::WrongBase, out);
        }
        let known = self.round.entries.get(&id).map(|e| e.state.clone());
        match (known, bytes) {
            (None, bytes) => {
                if let Some(first) = self.round.by_author.get(&author).filter(|f| **f != id) {
                    // Two contributions signed by one key for one round
                    // and base. The first heard stands this round (a peer
                    // that heard the other first ends on another result,
                    // and fork choice settles it); the key is ignored from
                    // the next round on, by every peer the proof reaches.
                    let round = contribution.round;
                    let proof = self.round.entries.get(first).map(|e| Equivocation {
                        first: e.signed.clone(),
                        second: signed.clone(),
                    });
                    self.drop_named(signed, contribution, RejectReason::Duplicate, named, out);
                    return self.caught_equivocating(author, round, proof, out);
                }
                self.round.by_author.insert(author, id);
                self.round.open(now);
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

    /// Drops a contribution; one that a commit named is kept, dropped, so
    /// that the union of the round's commits counts it as settled (else the
    /// round would wait for it until the deadline).
    fn drop_named(
        &mut self,
        signed: Signed<Contribution>,
        contribution: Contribution,
        reason: RejectReason,
        named: bool,
        out: &mut Vec<Output>,
    ) {
        let (id, author) = (signed.id(), contribution.author);
        if named && !self.round.entries.contains_key(&id) {
            let entry = Entry {
                signed,
                contribution,
                state: EntryState::Rejected,
            };
            self.round.entries.insert(id, entry);
        }
        self.reject(id, Some(author), reason, out);
    }

    /// Checks that need only the contribution itself.
    pub(super) fn header_fault(&self, c: &Contribution) -> Option<RejectReason> {
        if c.run != self.run {
            Some(RejectReason::WrongRun)
        } else if !self.config.allows(&c.author) || self.banned.contains(&c.author) {
            Some(RejectReason::NotAllowed)
        } else if c.compression != self.config.manifest.compression
            || c.payload.len != self.config.payload_len()
        {
            Some(RejectReason::SettingsMismatch)
        } else if c.tokens == 0 || c.tokens > self.config.max_tokens {
            Some(RejectReason::TokensOutOfRange)
        } else {
            None
        }
    }

    pub(super) fn on_payload(&mut self, id: Digest, bytes: Arc<[u8]>, out: &mut Vec<Output>) {
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

    /// The peer asked for `id` did not deliver it: ask another peer that
    /// committed it, or mark it unavailable until a commit names a holder.
    pub(super) fn on_fetch_failed(&mut self, id: &Digest, out: &mut Vec<Output>) {
        let source = match self.round.entries.get(id) {
            Some(Entry {
                state: EntryState::Fetching { from },
                ..
            }) => *from,
            _ => return,
        };
        self.fetch_elsewhere(*id, source, out);
    }

    pub(super) fn on_peer_gone(&mut self, peer: &PeerKey, out: &mut Vec<Output>) {
        let stranded: Vec<Digest> = self
            .round
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.state, EntryState::Fetching { from } if from == *peer))
            .map(|(id, _)| *id)
            .collect();
        for id in stranded {
            self.fetch_elsewhere(id, *peer, out);
        }
    }

    /// `failed` will not deliver `id`: a commit received while the fetch was
    /// under way may name a peer that holds it (an author behind a NAT is
    /// out of reach of some peers, but not of the peers that committed it).
    fn fetch_elsewhere(&mut self, id: Digest, failed: PeerKey, out: &mut Vec<Output>) {
        self.round.failed_sources.insert((id, failed));
        let next = self.round.another_holder(&id, &self.me);
        let Some(entry) = self.round.entries.get_mut(&id) else {
            return;
        };
        match next {
            Some(from) => {
                entry.state = EntryState::Fetching { from };
                out.push(Output::Fetch { id, from });
            }
            None => entry.state = EntryState::Unavailable,
        }
    }
}
