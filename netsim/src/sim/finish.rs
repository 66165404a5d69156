//! The end of a run: the summary, the round lines, and the recorded chain.

use std::collections::BTreeSet;

use p2ptrain_node::chain::DataDir;
use p2ptrain_node::engine::RejectReason;
use p2ptrain_protocol::Digest;

use super::{Outcome, Peer, Role, SimError, Simulation};
use crate::model;
use crate::report::{Adversarial, Summary};

impl Simulation {
    pub(super) fn finish(mut self, wall_seconds: f64) -> Result<Outcome, SimError> {
        let rounds = self.scenario.run.rounds;
        let now = self.now;
        for peer in &mut self.peers {
            if peer.live {
                peer.live_ms += now - peer.live_since;
                peer.live_since = now;
            }
        }
        let live: Vec<usize> = (0..self.peers.len())
            .filter(|&p| self.is_live_honest(p))
            .collect();
        let rounds_completed = live
            .iter()
            .filter_map(|&p| self.peers[p].engine.as_ref().map(|e| e.head().round))
            .min()
            .unwrap_or(0)
            .min(rounds);
        let mut agree = !live.is_empty();
        for r in 0..rounds_completed {
            let hashes: BTreeSet<Digest> = live
                .iter()
                .filter_map(|&p| self.peers[p].chain.get(&r).copied())
                .collect();
            agree &= hashes.len() <= 1;
        }
        let final_base = live
            .first()
            .and_then(|&p| self.peers[p].engine.as_ref().map(|e| e.head().base));
        let final_checkpoint = final_base.and_then(|b| self.store.get(&b).map(|c| (b, c)));
        let final_val_loss = match (&mut self.evaluator, final_checkpoint) {
            (Some(evaluator), Some((hash, checkpoint))) => Some(evaluator.loss(hash, &checkpoint)?),
            _ => None,
        };
        let baseline_val_loss = match (&self.corpus, &mut self.evaluator) {
            (Some(corpus), Some(evaluator)) if self.scenario.run.baseline => {
                // As many replicas' worth of batch as honest peers started.
                let peers = self
                    .peers
                    .iter()
                    .filter(|q| {
                        q.role == Role::Honest
                            && q.epoch != u32::MAX
                            && self.scenario.groups[q.group].join_round == 0
                    })
                    .count();
                let steps = rounds * u64::from(self.scenario.run.inner_steps);
                Some(model::baseline(
                    corpus,
                    &self.genesis,
                    self.manifest.inner,
                    peers,
                    steps,
                    self.seed,
                    evaluator,
                )?)
            }
            _ => None,
        };
        let honest: Vec<&Peer> = self
            .peers
            .iter()
            .filter(|q| q.role == Role::Honest && q.epoch != u32::MAX && q.live_ms > 0)
            .collect();
        let mean = |f: &dyn Fn(&Peer) -> f64| {
            if honest.is_empty() {
                0.0
            } else {
                honest.iter().map(|q| f(q)).sum::<f64>() / honest.len() as f64
            }
        };
        let completed = rounds_completed.max(1) as f64;
        let bytes_sent_per_peer_per_round = mean(&|q| q.bytes_sent as f64) / completed;
        let compute_utilization = mean(&|q| q.trained_ms as f64 / q.live_ms.max(1) as f64);
        let rejected = self
            .rejected
            .iter()
            .map(|(reason, ids)| (reason.as_str().to_owned(), ids.len() as u64))
            .collect();
        let replays_rejected = self
            .rejected
            .get(&RejectReason::Replay)
            .map_or(0, |ids| self.replayed.intersection(ids).count());
        let adversarial = Adversarial {
            sent: (self.adversary_ids.len() + self.replayed.len()) as u64,
            rejected: (self
                .adversary_ids
                .iter()
                .filter(|id| self.rejected.values().any(|ids| ids.contains(id)))
                .count()
                + replays_rejected) as u64,
            applied: self.adversary_ids.intersection(&self.applied_ids).count() as u64,
        };
        for (p, peer) in self.peers.iter().enumerate() {
            for (round, hash) in &peer.chain {
                self.trace.update(&(p as u64).to_le_bytes());
                self.trace.update(&round.to_le_bytes());
                self.trace.update(hash.as_bytes());
            }
        }
        let summary = Summary {
            scenario: String::new(),
            seed: self.seed,
            rounds_completed,
            peers: self.peers.iter().filter(|q| q.epoch != u32::MAX).count(),
            honest_replicas_agree: agree,
            final_val_loss,
            baseline_val_loss,
            bytes_sent_per_peer_per_round,
            bits_per_param: 8.0 * self.payload_wire_len as f64 / self.params_charged as f64,
            compute_utilization,
            rejected,
            honest_rejected: self.honest_rejected.len() as u64,
            banned: self.banned.len() as u64,
            honest_banned: self.honest_banned.len() as u64,
            adversarial,
            forks_resolved: self.forks_resolved,
            virtual_seconds: now as f64 / 1000.0,
            wall_seconds,
            trace_hash: self.trace.finalize().to_hex().to_string(),
        };
        Ok(Outcome {
            summary,
            rounds: self.round_lines,
        })
    }

    /// Writes the chain of the first live honest peer as a data directory.
    pub(super) fn record(&self, dir: &DataDir) -> Result<(), SimError> {
        let Some(p) = (0..self.peers.len()).find(|&p| self.is_live_honest(p)) else {
            return Ok(());
        };
        dir.write_manifest(&self.manifest)?;
        if let Some(genesis) = self.store.get(&self.manifest.genesis) {
            dir.write_genesis(&genesis)?;
        }
        let mut head = self.manifest.genesis;
        for (&round, hash) in &self.peers[p].chain {
            let Some(record) = self.records.get(hash) else {
                continue;
            };
            for signed in &record.contributions {
                if let Some((_, bytes)) = self.bodies.get(&signed.id()) {
                    dir.write_payload(bytes)?;
                }
            }
            dir.write_record(round, record)?;
            head = *hash;
        }
        if let Some(state) = self.store.get(&head) {
            dir.write_head(&state)?;
        }
        Ok(())
    }
}
