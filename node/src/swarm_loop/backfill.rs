//! Filling in the records of rounds a node adopted rather than closed: a
//! node that took a heavier chain's checkpoint holds no record of the rounds
//! that led to it, so it fetches them (and the payloads they name) from its
//! peers, one round at a time, and writes them beside its own. Then
//! `p2pnode verify` replays its directory from genesis like any other.
//!
//! The rounds are fetched from the newest back, each record anchored to the
//! one above it: its result must be the base of the round after (for the
//! newest, the adopted checkpoint), and round 0 must start from genesis.
//! A record of its own that a fetched one does not follow (its result is
//! not the fetched one's base) is from a branch this node left: that round
//! is fetched too, and so on down to where the two chains meet. Records of
//! the left branch from the adopted round on are removed at adoption
//! ([`DataDir::remove_records_from`](crate::chain::DataDir::remove_records_from)).
//!
//! Each record is checked before it is written: its signatures, its run
//! and round, its place in the chain, and every payload against the hash
//! its contribution names. The outer steps themselves are replayed by
//! `p2pnode verify`.

use std::collections::VecDeque;
use std::time::Duration;

use libp2p::PeerId;
use p2ptrain_protocol::{codec, Commit, Digest, RoundRecord};
use tokio::time::Instant;

use super::{Node, NodeError, NodeEvent};
use crate::chain::DataDir;
use crate::engine::Head;
use crate::net::codec::FetchRequest;

/// Failed asks per peer before the backfill waits for the next round (a
/// peer writes a round's record only once its commit window has passed).
const PATIENCE_PER_PEER: usize = 3;

/// Rounds the backfill waits through before it gives up.
const ROUNDS_TO_WAIT: u32 = 5;

/// The records being fetched.
#[derive(Debug)]
pub(super) struct Backfill {
    /// Rounds to fetch, descending.
    missing: VecDeque<u64>,
    /// The adopted head: the last record must lead to its checkpoint.
    head: Head,
    /// The record of the first missing round and its base, while its
    /// payloads come.
    record: Option<(RoundRecord, Digest)>,
    /// Payloads of that record still to fetch.
    wanted: Vec<Digest>,
    peers: Vec<PeerId>,
    next_peer: usize,
    failures: usize,
    filled: u64,
    /// Waiting, since then, for the next round before asking again.
    parked: Option<Instant>,
    rounds_waited: u32,
}

impl Node {
    /// Starts fetching the records of the rounds before `head` that this
    /// node's directory lacks, asking `first` first.
    pub(super) fn start_backfill(&mut self, first: Option<PeerId>, head: Head) {
        // The record below the head must lead to it; one that does not is
        // of a branch this node left.
        let stale_top = head
            .round
            .checked_sub(1)
            .filter(|&r| self.data.has_record(r) && result_of(&self.data, r) != Some(head.base));
        let missing: VecDeque<u64> = (0..head.round)
            .rev()
            .filter(|&r| !self.data.has_record(r) || Some(r) == stale_top)
            .collect();
        self.backfill_asks.clear();
        if missing.is_empty() {
            self.backfill = None;
            self.status.send_modify(|s| s.fetching_records = false);
            return;
        }
        self.status.send_modify(|s| s.fetching_records = true);
        let mut peers: Vec<PeerId> = first.into_iter().collect();
        peers.extend(self.run_peers().into_iter().filter(|p| Some(*p) != first));
        self.backfill = Some(Backfill {
            missing,
            head,
            record: None,
            wanted: Vec::new(),
            peers,
            next_peer: 0,
            failures: 0,
            filled: 0,
            parked: None,
            rounds_waited: 0,
        });
        self.backfill_next();
    }

    /// A round ended: a parked backfill asks again (and meets peers that
    /// connected since).
    pub(super) fn wake_backfill(&mut self) {
        let connected = self.run_peers();
        let Some(backfill) = self.backfill.as_mut().filter(|b| b.parked.is_some()) else {
            return;
        };
        backfill.parked = None;
        backfill.failures = 0;
        backfill.rounds_waited += 1;
        for peer in connected {
            if !backfill.peers.contains(&peer) {
                backfill.peers.push(peer);
            }
        }
        self.backfill_next();
    }

    /// When a parked backfill asks again although no round ended: on a
    /// node that trains no more (see [`Node::train_until`]), whose rounds
    /// have stopped ending, once a commit window (a second at least) has
    /// passed — a peer writes a round's record when its window closes.
    pub(super) fn backfill_retry_at(&self) -> Option<Instant> {
        if !self.finished() {
            return None;
        }
        let parked = self.backfill.as_ref()?.parked?;
        let window = self.manifest.rounds.commit_window_ms.max(1_000);
        Some(parked + Duration::from_millis(window))
    }

    /// Asks for the next record or payload, or writes a completed record.
    fn backfill_next(&mut self) {
        loop {
            let Some(backfill) = self.backfill.as_mut() else {
                return;
            };
            if backfill.peers.is_empty() {
                self.end_backfill();
                return;
            }
            let peer = backfill.peers[backfill.next_peer % backfill.peers.len()];
            let ask = match (
                &backfill.record,
                backfill.wanted.last(),
                backfill.missing.front(),
            ) {
                (Some(_), Some(hash), _) => FetchRequest::StoredPayload(*hash),
                (Some(_), None, _) => {
                    if self.write_backfilled().is_err() {
                        self.end_backfill();
                        return;
                    }
                    continue;
                }
                (None, _, Some(round)) => FetchRequest::Record(*round),
                (None, _, None) => {
                    self.end_backfill();
                    return;
                }
            };
            let request = self.fetcher.send(peer, ask);
            self.backfill_asks.insert(request, peer);
            return;
        }
    }

    /// Writes the record whose payloads are all here; if this node's
    /// record of the round below does not lead to it, that round is next.
    fn write_backfilled(&mut self) -> Result<(), NodeError> {
        let Some(backfill) = self.backfill.as_mut() else {
            return Ok(());
        };
        let (Some((record, base)), Some(round)) =
            (backfill.record.take(), backfill.missing.pop_front())
        else {
            return Ok(());
        };
        self.data.write_record(round, &record)?;
        backfill.filled += 1;
        if let Some(below) = round.checked_sub(1) {
            let queued = backfill.missing.front() == Some(&below);
            if !queued && result_of(&self.data, below) != Some(base) {
                backfill.missing.push_front(below);
            }
        }
        Ok(())
    }

    /// Reports how the backfill ended, and drops it.
    fn end_backfill(&mut self) {
        if let Some(backfill) = self.backfill.take() {
            let event = NodeEvent::Backfilled {
                rounds: backfill.filled,
                missing: backfill.missing.len() as u64,
            };
            // The event channel is bounded; a full one loses this report,
            // not the records.
            let _ = self.events.try_send(event);
            self.status.send_modify(|s| s.fetching_records = false);
        }
        self.backfill_asks.clear();
    }

    /// Takes an answer to a backfill ask: a record, a payload, or `None`
    /// for a peer that lacked it or failed.
    pub(super) async fn on_backfill(
        &mut self,
        request: crate::net::fetch::FetchId,
        body: Option<&[u8]>,
    ) -> Result<(), NodeError> {
        if self.backfill_asks.remove(&request).is_none() {
            return Ok(());
        }
        let accepted = match body {
            Some(bytes) => self.take_backfill_answer(bytes)?,
            None => false,
        };
        if let Some(backfill) = self.backfill.as_mut() {
            if accepted {
                backfill.failures = 0;
            } else {
                backfill.failures += 1;
                backfill.next_peer += 1;
                if backfill.failures > PATIENCE_PER_PEER * backfill.peers.len() {
                    if backfill.rounds_waited >= ROUNDS_TO_WAIT {
                        self.end_backfill();
                    } else {
                        backfill.parked = Some(Instant::now());
                    }
                    return Ok(());
                }
            }
        }
        self.backfill_next();
        Ok(())
    }

    /// Checks and keeps a record or payload; whether it was good.
    fn take_backfill_answer(&mut self, bytes: &[u8]) -> Result<bool, NodeError> {
        let run = self.engine.run();
        let genesis = self.manifest.genesis;
        let Some(backfill) = self.backfill.as_mut() else {
            return Ok(false);
        };
        if backfill.record.is_some() {
            let Some(hash) = backfill.wanted.last().copied() else {
                return Ok(false);
            };
            if Digest::of(bytes) != hash {
                return Ok(false);
            }
            self.data.write_payload(bytes)?;
            backfill.wanted.pop();
            return Ok(true);
        }
        let Some(&round) = backfill.missing.front() else {
            return Ok(false);
        };
        let Ok(record) = codec::decode::<RoundRecord>(bytes) else {
            return Ok(false);
        };
        let Ok((commit, contributions)) = record.verify() else {
            return Ok(false);
        };
        // The round above is written (or is the adopted checkpoint): the
        // record must lead to it. What comes below follows this record.
        let before = (round == 0).then_some(genesis);
        let after = if round + 1 == backfill.head.round {
            Some(backfill.head.base)
        } else {
            base_of(&self.data, round + 1)
        };
        if after.is_none() || !links(&commit, run, round, before, after) {
            return Ok(false);
        }
        backfill.wanted = contributions
            .iter()
            .map(|c| c.payload.hash)
            .filter(|hash| self.data.payload(hash).is_err())
            .collect();
        backfill.record = Some((record, commit.base));
        Ok(true)
    }
}

/// The result of this node's record of `round`, if it holds a valid one.
fn result_of(data: &DataDir, round: u64) -> Option<Digest> {
    let record = data.record(round).ok()??;
    Some(record.verify().ok()?.0.result)
}

/// The base of this node's record of `round`, if it holds a valid one.
fn base_of(data: &DataDir, round: u64) -> Option<Digest> {
    let record = data.record(round).ok()??;
    Some(record.verify().ok()?.0.base)
}

/// Whether `commit` is round `round` of `run` and sits between `before` (the
/// result of the round before) and `after` (the base of the round after),
/// each where known.
pub(super) fn links(
    commit: &Commit,
    run: Digest,
    round: u64,
    before: Option<Digest>,
    after: Option<Digest>,
) -> bool {
    commit.run == run
        && commit.round == round
        && before.is_none_or(|b| b == commit.base)
        && after.is_none_or(|a| a == commit.result)
}

#[cfg(test)]
mod tests {
    use p2ptrain_protocol::{IdSet, PeerKey, SigningKey};

    use super::*;

    #[test]
    fn a_record_links_only_between_its_neighbours() {
        let key = SigningKey::from_bytes(&[4; 32]);
        let run = Digest::of(b"run");
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let commit = Commit {
            run,
            round: 5,
            base: a,
            committer: PeerKey::from(&key),
            contributions: IdSet::new(vec![]),
            result: b,
            chain_tokens: 10,
        };
        assert!(links(&commit, run, 5, Some(a), Some(b)));
        assert!(links(&commit, run, 5, None, None));
        assert!(!links(&commit, run, 4, Some(a), Some(b)));
        assert!(!links(&commit, Digest::of(b"other"), 5, None, None));
        assert!(!links(&commit, run, 5, Some(b), None));
        assert!(!links(&commit, run, 5, None, Some(a)));
    }
}
