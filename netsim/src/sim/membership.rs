//! Peers coming and going: joins (with the checkpoint they pull), leaves,
//! churn, partitions, and when the run is over.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use p2ptrain_node::engine::{Engine, EngineConfig, Head, Input};
use p2ptrain_protocol::{Digest, PeerKey};

use super::{Event, Role, SimError, Simulation};

impl Simulation {
    pub(super) fn begin(&mut self) -> Result<(), SimError> {
        for p in 0..self.peers.len() {
            if !self.excluded(p) && self.scenario.groups[self.peers[p].group].join_round == 0 {
                self.peers[p].live = true;
            }
        }
        for p in 0..self.peers.len() {
            if self.peers[p].live {
                let head = Head::genesis(&self.manifest);
                self.join_with(p, head)?;
            }
        }
        Ok(())
    }

    /// Brings peer `p` up with an engine at `head`, its checkpoint in hand.
    pub(super) fn join_with(&mut self, p: usize, head: Head) -> Result<(), SimError> {
        let mut config = EngineConfig::new(
            self.manifest.clone(),
            self.peers[p].key.clone(),
            self.proxy_len,
        );
        config.overlap = self.scenario.run.overlap;
        let engine = Engine::with_checker(config, head, self.checker.clone())?;
        if self.peers[p].replica.is_none() {
            self.peers[p].replica = Some(self.make_replica(p)?);
        }
        let peer = &mut self.peers[p];
        peer.engine = Some(engine);
        peer.chain.insert(head.round.saturating_sub(1), head.base);
        let others: Vec<usize> = (0..self.peers.len())
            .filter(|&q| q != p && self.peers[q].live && self.peers[q].engine.is_some())
            .collect();
        let me = self.peers[p].public;
        let epoch = self.peers[p].epoch;
        let mut outputs = Vec::new();
        let keys: Vec<PeerKey> = others.iter().map(|&q| self.peers[q].public).collect();
        if let Some(engine) = self.peers[p].engine.as_mut() {
            for key in keys {
                outputs.extend(engine.handle(self.now, Input::PeerSeen(key)));
            }
        }
        for &q in &others {
            let at = self.net.message(self.now, p, q, 64, &mut self.rng);
            let epoch_q = self.peers[q].epoch;
            self.push(
                at,
                Event::Deliver {
                    to: q,
                    epoch: epoch_q,
                    input: Input::PeerSeen(me),
                },
            );
        }
        let _ = epoch;
        self.carry_out(p, outputs)?;
        match self.peers[p].role {
            Role::Honest => {
                // Back in the round it left in: its contribution from then
                // stands (a second would get its key ignored).
                if let Some((contribution, bytes)) = self.peers[p].announced.clone() {
                    self.feed(
                        p,
                        Input::Reannounce {
                            contribution,
                            bytes,
                        },
                    )?;
                }
                let outputs = self.peers[p]
                    .engine
                    .as_mut()
                    .map(|e| e.start(self.now))
                    .unwrap_or_default();
                self.carry_out(p, outputs)?;
            }
            Role::Adversary { .. } => self.schedule_attack(p),
        }
        Ok(())
    }

    /// Peer `p` comes (back) into the swarm: it fetches the checkpoint of
    /// the most advanced live honest peer it can reach, then starts.
    pub(super) fn join(&mut self, p: usize) {
        let peer = &mut self.peers[p];
        peer.live = true;
        peer.epoch += 1;
        peer.live_since = self.now;
        peer.churned = false;
        peer.engine = None;
        peer.session = None;
        peer.wake_handled = None;
        peer.wake_scheduled = None;
        let donor = (0..self.peers.len())
            .filter(|&q| q != p && self.is_live_honest(q) && self.net.reachable(p, q))
            .max_by_key(|&q| {
                (
                    self.peers[q].engine.as_ref().map(|e| e.head().round),
                    Reverse(q),
                )
            });
        let head = donor
            .and_then(|q| self.peers[q].engine.as_ref().map(Engine::head))
            .unwrap_or_else(|| Head::genesis(&self.manifest));
        let (at, history) = match donor {
            Some(q) => (
                self.net
                    .side_transfer(self.now, q, p, self.params_charged * 8, &mut self.rng),
                self.history_of(q, &head),
            ),
            None => (self.now, BTreeMap::new()),
        };
        let epoch = self.peers[p].epoch;
        self.push(
            at,
            Event::CheckpointArrived {
                to: p,
                epoch,
                head,
                joining: true,
                history,
            },
        );
    }

    pub(super) fn leave(&mut self, p: usize, churned: bool) {
        let peer = &mut self.peers[p];
        if !peer.live {
            return;
        }
        peer.live = false;
        peer.epoch += 1;
        peer.churned = churned;
        peer.live_ms += self.now - peer.live_since;
        peer.engine = None;
        peer.session = None;
        let me = peer.public;
        for q in 0..self.peers.len() {
            if q != p && self.peers[q].live {
                let at = self.net.message(self.now, p, q, 64, &mut self.rng);
                let epoch = self.peers[q].epoch;
                self.push(
                    at,
                    Event::Deliver {
                        to: q,
                        epoch,
                        input: Input::PeerGone(me),
                    },
                );
            }
        }
    }

    /// Peer `q`'s chain up to (not including) the round that produced
    /// `head`'s checkpoint.
    pub(super) fn history_of(&self, q: usize, head: &Head) -> BTreeMap<u64, Digest> {
        let upto = head.round.saturating_sub(1);
        self.peers[q]
            .chain
            .range(..upto)
            .map(|(r, h)| (*r, *h))
            .collect()
    }

    /// Round-driven changes: groups joining and leaving, churn, partitions.
    pub(super) fn after_event(&mut self) -> Result<(), SimError> {
        let reached = (0..self.peers.len())
            .filter(|&p| self.is_live_honest(p))
            .filter_map(|p| self.peers[p].engine.as_ref().map(|e| e.head().round))
            .max()
            .unwrap_or(0);
        while self.swarm_round < reached {
            self.swarm_round += 1;
            self.round_reached(self.swarm_round)?;
        }
        Ok(())
    }

    /// After a cut (`seen == false`) tells every live peer of the peers it
    /// can no longer reach; after a heal, of those it reaches again.
    pub(super) fn tell_reachability(&mut self, seen: bool) {
        for p in 0..self.peers.len() {
            if !self.peers[p].live {
                continue;
            }
            for q in 0..self.peers.len() {
                if q == p || !self.peers[q].live || self.net.reachable(p, q) != seen {
                    continue;
                }
                let key = self.peers[q].public;
                let input = if seen {
                    Input::PeerSeen(key)
                } else {
                    Input::PeerGone(key)
                };
                let epoch = self.peers[p].epoch;
                let at = self.now + 1;
                self.push(
                    at,
                    Event::Deliver {
                        to: p,
                        epoch,
                        input,
                    },
                );
            }
        }
    }

    pub(super) fn round_reached(&mut self, round: u64) -> Result<(), SimError> {
        for cut in self.scenario.partitions.clone() {
            if cut.round == round {
                self.net.cut(cut.groups.clone());
                // Connections across the cut drop: each side sees the other go.
                self.tell_reachability(false);
            }
            if cut.heal_round == round {
                self.net.heal(&cut.groups);
                self.tell_reachability(true);
            }
        }
        for p in 0..self.peers.len() {
            if self.excluded(p) {
                continue;
            }
            let group = &self.scenario.groups[self.peers[p].group];
            let (joins, leaves) = (group.join_round == round, group.leave_round == Some(round));
            if joins && !self.peers[p].live {
                self.join(p);
            }
            if leaves {
                self.leave(p, false);
            }
        }
        let churn = self.scenario.churn;
        if churn.leave_prob > 0.0 || churn.join_prob > 0.0 {
            for p in 0..self.peers.len() {
                if self.excluded(p) {
                    continue;
                }
                let draw = self.rng.uniform();
                let live_honest = (0..self.peers.len())
                    .filter(|&q| self.is_live_honest(q))
                    .count();
                if self.peers[p].live && draw < churn.leave_prob && live_honest > 2 {
                    self.leave(p, true);
                } else if !self.peers[p].live && self.peers[p].churned && draw < churn.join_prob {
                    self.join(p);
                }
            }
        }
        Ok(())
    }

    pub(super) fn done(&self) -> bool {
        let rounds = self.scenario.run.rounds;
        let live: Vec<usize> = (0..self.peers.len())
            .filter(|&p| self.is_live_honest(p))
            .collect();
        let reached = live.iter().all(|&p| {
            self.peers[p]
                .engine
                .as_ref()
                .is_some_and(|e| e.head().round >= rounds)
        });
        // Run on while a fork is still being settled.
        let last: BTreeSet<Option<&Digest>> = live
            .iter()
            .map(|&p| self.peers[p].chain.get(&(rounds - 1)))
            .collect();
        !live.is_empty() && reached && last.len() == 1
    }
}
