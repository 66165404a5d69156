//! Moving bytes: gossip of small messages, payload transfers that spread
//! peer to peer, checkpoint downloads.

use p2ptrain_node::engine::{Head, Input};
use p2ptrain_protocol::codec;
use p2ptrain_protocol::{Digest, PeerKey};

use super::{Event, SimError, Simulation};
use crate::network::Millis;
use crate::scenario::ModelKind;

impl Simulation {
    pub(super) fn broadcast(&mut self, p: usize, input: Input) -> Result<(), SimError> {
        self.broadcast_to(p, &input, |_| true)
    }

    /// Sends `input` from `p` to the live peers it reaches whose index
    /// passes `to`.
    pub(super) fn broadcast_to(
        &mut self,
        p: usize,
        input: &Input,
        to: impl Fn(usize) -> bool,
    ) -> Result<(), SimError> {
        let bytes = match input {
            Input::Announced(s) => codec::encoded_len(s)?,
            Input::CommitReceived(s) => codec::encoded_len(s)?,
            Input::Evidence(proof) => codec::encoded_len(proof)?,
            _ => 64,
        } as u64;
        for q in 0..self.peers.len() {
            if q == p || !to(q) || !self.peers[q].live || !self.net.reachable(p, q) {
                continue;
            }
            let at = self.net.message(self.now, p, q, bytes, &mut self.rng);
            self.peers[p].bytes_sent += bytes;
            let epoch = self.peers[q].epoch;
            self.push(
                at,
                Event::Deliver {
                    to: q,
                    epoch,
                    input: input.clone(),
                },
            );
        }
        Ok(())
    }

    pub(super) fn wire_len(&self, id: &Digest) -> u64 {
        if self.scenario.run.model == ModelKind::Synthetic {
            self.payload_wire_len
        } else {
            self.bodies
                .get(id)
                .map_or(self.payload_wire_len, |(_, b)| b.len() as u64)
        }
    }

    pub(super) fn fetch(&mut self, to: usize, id: Digest, from: PeerKey) {
        if !self.in_flight.insert((to, id)) {
            return;
        }
        let sources: Vec<usize> = self
            .holders
            .get(&id)
            .map(|h| {
                h.iter()
                    .copied()
                    .filter(|&s| s != to && self.peers[s].live && self.net.reachable(s, to))
                    .collect()
            })
            .unwrap_or_default();
        let Some(&best) = sources
            .iter()
            .min_by_key(|&&s| (self.net.port(s).up_free, s))
        else {
            self.in_flight.remove(&(to, id));
            let gone = !self.peers.iter().any(|q| q.public == from && q.live);
            if gone {
                let at = self.now + 1;
                let epoch = self.peers[to].epoch;
                self.push(
                    at,
                    Event::Deliver {
                        to,
                        epoch,
                        input: Input::FetchFailed { id },
                    },
                );
            }
            return;
        };
        let bytes = self.wire_len(&id);
        let plan = self.net.plan(self.now, best, to, bytes);
        let idle = self.net.idle_duration(best, to, bytes);
        let busy = plan.start > self.now + idle + 2 * self.net.latency(best, to).ceil() as Millis;
        if busy && self.transfers.get(&id).is_some_and(|&n| n > 0) {
            // Every holder is busy for longer than a transfer and a copy is
            // on its way somewhere: fetch from the next peer to finish
            // downloading it.
            self.waiting.entry(id).or_default().push_back(to);
            return;
        }
        self.start_transfer(best, to, id);
    }

    pub(super) fn start_transfer(&mut self, from: usize, to: usize, id: Digest) {
        let bytes = self.wire_len(&id);
        let transfer = self.net.book(self.now, from, to, bytes, &mut self.rng);
        *self.transfers.entry(id).or_default() += 1;
        self.peers[from].bytes_sent += bytes;
        let epoch = self.peers[to].epoch;
        self.push(
            transfer.arrival,
            Event::TransferDone {
                from,
                to,
                epoch,
                id,
            },
        );
    }

    /// Lets `server`, which just finished a transfer of `id`, serve the
    /// first waiting peer it can reach; waiters it cannot reach stay queued
    /// for another server.
    pub(super) fn serve_waiting(&mut self, server: usize, id: Digest) {
        let Some(queue) = self.waiting.get_mut(&id) else {
            return;
        };
        let mut dropped = Vec::new();
        queue.retain(|&to| {
            let alive = self.peers[to].live;
            if !alive {
                dropped.push(to);
            }
            alive
        });
        let pick = queue.iter().position(|&to| self.net.reachable(server, to));
        let to = pick.and_then(|i| queue.remove(i));
        for gone in dropped {
            self.in_flight.remove(&(gone, id));
        }
        if let Some(to) = to {
            self.start_transfer(server, to, id);
        }
    }

    pub(super) fn fetch_checkpoint(&mut self, p: usize, head: Head, from: PeerKey) {
        let epoch = self.peers[p].epoch;
        if self.store.get(&head.base).is_none() {
            let at = self.now + 1;
            let input = Input::CheckpointUnavailable {
                result: head.base,
                from,
            };
            self.push(
                at,
                Event::Deliver {
                    to: p,
                    epoch,
                    input,
                },
            );
            return;
        }
        // Any live honest peer holding it serves it; spread the load by
        // taking the one that has sent least.
        let source = (0..self.peers.len())
            .filter(|&q| {
                q != p
                    && self.is_live_honest(q)
                    && self.net.reachable(p, q)
                    && self.peers[q].chain.values().any(|h| *h == head.base)
            })
            .min_by_key(|&q| (self.peers[q].bytes_sent, q));
        match source {
            Some(q) => {
                let bytes = self.params_charged * 8;
                let at = self.net.side_transfer(self.now, q, p, bytes, &mut self.rng);
                self.peers[q].bytes_sent += bytes;
                let history = self.history_of(q, &head);
                self.push(
                    at,
                    Event::CheckpointArrived {
                        to: p,
                        epoch,
                        head,
                        joining: false,
                        history,
                    },
                );
            }
            None => {
                let at = self.now + 1_000;
                self.push(
                    at,
                    Event::Retry {
                        peer: p,
                        epoch,
                        head,
                        from,
                    },
                );
            }
        }
    }
}
