//! Asking the peers a finished node counts as behind whether they have
//! caught up after all. A peer that reached the head by adopting a
//! checkpoint signs nothing that shows it: two such peers, each counting
//! the other as behind, would stay up for each other until `--linger` ran
//! out. So a node that trains no more asks each member it counts as behind,
//! once a second, for its record of the round before the head. A record
//! whose result is the head's checkpoint shows that the peer holds it
//! ([`Input::HoldsHead`]); a peer still catching up answers that it holds
//! none.
//!
//! ```text
//! finished at round 4, peer e behind:  Record(3) -> e: Missing   (e still downloading)
//!                           1 s later: Record(3) -> e: the record of round 3, result = head 4
//!                                      => e holds round 4: behind no more
//! ```

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use p2ptrain_protocol::{codec, Digest, PeerKey, RoundRecord};
use tokio::time::Instant;

use super::backfill::links;
use super::{Node, NodeError};
use crate::engine::{Head, Input};
use crate::net::codec::FetchRequest;
use crate::net::fetch::FetchId;
use crate::net::peer_id;

/// How long after one round of asks the next goes out.
const GAP: Duration = Duration::from_secs(1);

/// The asks in flight, and when the next go out.
#[derive(Debug, Default)]
pub(super) struct Probes {
    /// Requests in flight: the peer asked, and the round of the head it
    /// was asked about.
    asks: HashMap<FetchId, (PeerKey, u64)>,
    /// When the next asks go out; at once when none went out yet.
    next: Option<Instant>,
}

impl Node {
    /// When to ask the members behind this node whether they hold its
    /// head: only on a node that trains no more (see
    /// [`Node::train_until`]), and while one is behind.
    pub(super) fn probe_at(&self) -> Option<Instant> {
        let round = self.engine.head().round;
        if !self.finished() || round == 0 || self.engine.members_behind(round).next().is_none() {
            return None;
        }
        Some(self.probes.next.unwrap_or_else(Instant::now))
    }

    /// Asks each member behind, not being asked already, for its record of
    /// the round before the head.
    pub(super) fn probe_behind(&mut self) {
        self.probes.next = Some(Instant::now() + GAP);
        let round = self.engine.head().round;
        let Some(before) = round.checked_sub(1) else {
            return;
        };
        let asked: BTreeSet<PeerKey> = self.probes.asks.values().map(|(key, _)| *key).collect();
        let behind: Vec<PeerKey> = self
            .engine
            .members_behind(round)
            .filter(|key| !asked.contains(key))
            .collect();
        for key in behind {
            if let Some(peer) = peer_id(&key) {
                let id = self.fetcher.send(peer, FetchRequest::Record(before));
                self.probes.asks.insert(id, (key, round));
            }
        }
    }

    /// Whether request `id` is one of the probes'.
    pub(super) fn is_probe(&self, id: &FetchId) -> bool {
        self.probes.asks.contains_key(id)
    }

    /// Takes the answer to a probe (`None` for a peer that holds no such
    /// record, or did not answer): a record that leads to the head, if it
    /// is still this node's, shows that the peer holds it.
    pub(super) async fn on_probe(
        &mut self,
        id: FetchId,
        body: Option<&[u8]>,
    ) -> Result<(), NodeError> {
        let Some((peer, round)) = self.probes.asks.remove(&id) else {
            return Ok(());
        };
        let head = self.engine.head();
        let run = self.engine.run();
        if head.round == round && body.is_some_and(|bytes| leads_to(bytes, run, head)) {
            self.feed(Input::HoldsHead { peer, round }).await?;
        }
        Ok(())
    }
}

/// Whether `bytes` is a valid record of `run`'s round before `head`, whose
/// result is the head's checkpoint.
fn leads_to(bytes: &[u8], run: Digest, head: Head) -> bool {
    let Ok(record) = codec::decode::<RoundRecord>(bytes) else {
        return false;
    };
    let Ok((commit, _)) = record.verify() else {
        return false;
    };
    let before_head = head.round.checked_sub(1);
    before_head.is_some_and(|round| links(&commit, run, round, None, Some(head.base)))
}

#[cfg(test)]
mod tests {
    use p2ptrain_protocol::{Commit, IdSet, Signed, SigningKey};

    use super::*;

    fn record(
        run: Digest,
        round: u64,
        result: Digest,
    ) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
        let key = SigningKey::from_bytes(&[9; 32]);
        let commit = Commit {
            run,
            round,
            base: Digest::of(b"base"),
            committer: PeerKey::from(&key),
            contributions: IdSet::new(vec![]),
            result,
            chain_tokens: 10,
        };
        let record = RoundRecord {
            commit: Signed::sign(&commit, &key)?,
            contributions: Vec::new(),
        };
        Ok(codec::encode(&record)?)
    }

    #[test]
    fn only_a_record_of_the_round_before_that_ends_on_the_head_shows_it_held(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let run = Digest::of(b"run");
        let head = Head {
            round: 4,
            base: Digest::of(b"head"),
            chain_tokens: 40,
            last_contributors: 2,
        };
        assert!(leads_to(&record(run, 3, head.base)?, run, head));
        assert!(!leads_to(&record(run, 3, Digest::of(b"other"))?, run, head));
        assert!(!leads_to(&record(run, 2, head.base)?, run, head));
        assert!(!leads_to(
            &record(Digest::of(b"x"), 3, head.base)?,
            run,
            head
        ));
        // The commit's signature (64 bytes before the count of
        // contributions) with a bit flipped.
        let mut forged = record(run, 3, head.base)?;
        let in_signature = forged.len() - 2;
        forged[in_signature] ^= 1;
        assert!(!leads_to(&forged, run, head));
        assert!(!leads_to(b"not a record", run, head));
        Ok(())
    }
}
