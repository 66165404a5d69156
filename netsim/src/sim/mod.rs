//! The simulation: peers running the real round engine on a virtual clock,
//! over simulated links.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;

use p2ptrain_kernels::{compress, decay_residual, decompress_into, Payload};
use p2ptrain_node::engine::{
    Ban, Engine, Head, Input, LocalUpdate, Output, RejectReason, Rejection,
};
use p2ptrain_protocol::{
    Contribution, Digest, PeerKey, RoundRecord, RunManifest, Signed, SigningKey,
};
use p2ptrain_trainer::device::RESIDUAL_DECAY;
use p2ptrain_trainer::Corpus;

use crate::checker::SharedChecker;
use crate::model::{Evaluator, ModelError, Replica, Store};
use crate::network::{Millis, Network};
use crate::report::{RoundLine, Summary};
use crate::rng::Rng;
use crate::scenario::{Scenario, ScenarioError};

mod attack;
mod finish;
mod membership;
mod setup;
mod transfers;

/// Why a simulation stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The scenario is unusable.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// A model computation failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A peer's engine refused to start.
    #[error("engine: {0}")]
    Engine(#[from] p2ptrain_node::engine::EngineError),
    /// Compression failed.
    #[error("kernels: {0}")]
    Kernel(#[from] p2ptrain_kernels::KernelError),
    /// Encoding failed.
    #[error("codec: {0}")]
    Codec(#[from] p2ptrain_protocol::CodecError),
    /// A malicious contribution could not be built.
    #[error("adversary: {0}")]
    Craft(#[from] crate::adversary::CraftError),
    /// The data directory asked for cannot be written.
    #[error("recording the chain: {0}")]
    Record(#[from] p2ptrain_node::chain::ChainError),
    /// A peer heard a contribution signed with its own key that it did not
    /// make: every simulated peer has a key of its own, so the simulator
    /// or the engine is wrong.
    #[error("peer {peer} heard another contribution signed with its own key in round {round}")]
    KeyShared {
        /// The peer.
        peer: usize,
        /// The round.
        round: u64,
    },
}

/// What the caller sees as the simulation goes.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// The round the swarm has reached.
    pub round: u64,
    /// Rounds to run.
    pub rounds: u64,
    /// Virtual time.
    pub virtual_ms: Millis,
}

/// Everything a run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The summary (`summary.json`).
    pub summary: Summary,
    /// One line per round (`rounds.jsonl`).
    pub rounds: Vec<RoundLine>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Honest,
    Adversary { slot: usize },
}

#[derive(Debug)]
struct Peer {
    key: SigningKey,
    public: PeerKey,
    group: usize,
    speed: f64,
    role: Role,
    live: bool,
    /// Bumped on every join and leave: events for an older life are void.
    epoch: u32,
    engine: Option<Engine<SharedChecker>>,
    replica: Option<Replica>,
    residual: Vec<f32>,
    session: Option<(Digest, u64)>,
    trained_ms: u64,
    live_since: Millis,
    live_ms: u64,
    /// Checkpoint hash after each round, as this peer's chain has it.
    chain: BTreeMap<u64, Digest>,
    bytes_sent: u64,
    wake_handled: Option<Millis>,
    wake_scheduled: Option<Millis>,
    last_record: Option<RoundRecord>,
    /// Its last own contribution and payload, as a node keeps them on
    /// disk: announced again if it comes back in that round.
    announced: Option<(Signed<Contribution>, Arc<[u8]>)>,
    attacked_round: Option<u64>,
    /// Left because of churn (may come back), as opposed to its group's leave.
    churned: bool,
}

#[derive(Debug, Clone)]
enum Event {
    Deliver {
        to: usize,
        epoch: u32,
        input: Input,
    },
    TrainDone {
        peer: usize,
        epoch: u32,
    },
    Wake {
        peer: usize,
        epoch: u32,
    },
    TransferDone {
        from: usize,
        to: usize,
        epoch: u32,
        id: Digest,
    },
    CheckpointArrived {
        to: usize,
        epoch: u32,
        head: Head,
        joining: bool,
        /// The serving peer's chain up to the checkpoint: the records an
        /// adopter checks and keeps.
        history: BTreeMap<u64, Digest>,
    },
    Attack {
        peer: usize,
        epoch: u32,
        round: u64,
    },
    Retry {
        peer: usize,
        epoch: u32,
        head: Head,
        from: PeerKey,
    },
}

/// A queued event: ordered by time, then by the order it was queued.
#[derive(Debug)]
struct Queued(Millis, u64, Event);

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.0, self.1) == (other.0, other.1)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.0, self.1).cmp(&(other.0, other.1))
    }
}

/// A simulation in progress. See [`run`].
pub struct Simulation {
    scenario: Scenario,
    seed: u64,
    manifest: RunManifest,
    params_charged: u64,
    proxy_len: usize,
    payload_wire_len: u64,
    tokens_per_update: u64,
    now: Millis,
    seq: u64,
    queue: BinaryHeap<Reverse<Queued>>,
    peers: Vec<Peer>,
    net: Network,
    store: Store,
    checker: SharedChecker,
    rng: Rng,
    trace: blake3::Hasher,
    corpus: Option<Corpus>,
    evaluator: Option<Evaluator>,
    genesis: Vec<f32>,
    /// Payloads by contribution id, and who can serve each.
    bodies: HashMap<Digest, (Signed<Contribution>, Arc<[u8]>)>,
    holders: HashMap<Digest, Vec<usize>>,
    waiting: HashMap<Digest, VecDeque<usize>>,
    in_flight: BTreeSet<(usize, Digest)>,
    /// Transfers of each payload under way.
    transfers: HashMap<Digest, usize>,
    swarm_round: u64,
    round_lines: Vec<RoundLine>,
    rejected: BTreeMap<RejectReason, BTreeSet<Digest>>,
    honest_ids: BTreeSet<Digest>,
    adversary_ids: BTreeSet<Digest>,
    honest_rejected: BTreeSet<Digest>,
    /// Peers an honest peer ignores from now on, and which of them are
    /// honest.
    banned: BTreeSet<PeerKey>,
    honest_banned: BTreeSet<PeerKey>,
    /// Honest contributions an adversary sent again in a later round.
    replayed: BTreeSet<Digest>,
    applied_ids: BTreeSet<Digest>,
    forks_resolved: u64,
    round_payload_ms: Vec<Millis>,
    /// A head moved since the round-driven checks last ran.
    progressed: bool,
    /// Each round record honest peers finalized, by the checkpoint it
    /// produced.
    records: HashMap<Digest, RoundRecord>,
}

/// Runs `scenario` with `seed`, calling `progress` as rounds complete.
/// `without_adversaries` drops the malicious peers (the comparison run).
///
/// # Errors
///
/// [`SimError`] when the scenario is invalid or a computation fails.
pub fn run(
    scenario: &Scenario,
    seed: u64,
    without_adversaries: bool,
    progress: impl FnMut(Progress),
) -> Result<Outcome, SimError> {
    simulate(scenario, seed, without_adversaries, None, progress)
}

/// [`run`], then writes the first live honest peer's chain as a node's data
/// directory (manifest, genesis, every round's record, the payloads, the
/// head checkpoint) into `record`, for `p2pnode verify` to replay.
///
/// # Errors
///
/// As [`run`], and [`SimError::Record`] when the directory cannot be
/// written.
pub fn run_and_record(
    scenario: &Scenario,
    seed: u64,
    without_adversaries: bool,
    record: &std::path::Path,
    progress: impl FnMut(Progress),
) -> Result<Outcome, SimError> {
    simulate(scenario, seed, without_adversaries, Some(record), progress)
}

fn simulate(
    scenario: &Scenario,
    seed: u64,
    without_adversaries: bool,
    record: Option<&std::path::Path>,
    mut progress: impl FnMut(Progress),
) -> Result<Outcome, SimError> {
    let started = std::time::Instant::now();
    let mut sim = Simulation::new(scenario.clone(), seed, without_adversaries)?;
    sim.begin()?;
    let limit = sim.time_limit();
    let mut reported = 0;
    while let Some(Reverse(Queued(time, seq, event))) = sim.queue.pop() {
        if time > limit {
            break;
        }
        sim.now = time;
        sim.trace_event(seq, &event);
        sim.dispatch(event)?;
        if !std::mem::take(&mut sim.progressed) {
            continue;
        }
        sim.after_event()?;
        if sim.swarm_round != reported {
            reported = sim.swarm_round;
            progress(Progress {
                round: reported.min(sim.scenario.run.rounds),
                rounds: sim.scenario.run.rounds,
                virtual_ms: sim.now,
            });
        }
        if sim.done() {
            break;
        }
    }
    if let Some(dir) = record {
        sim.record(&p2ptrain_node::chain::DataDir::new(dir))?;
    }
    sim.finish(started.elapsed().as_secs_f64())
}

impl Simulation {
    fn push(&mut self, at: Millis, event: Event) {
        self.seq += 1;
        self.queue
            .push(Reverse(Queued(at.max(self.now), self.seq, event)));
    }

    fn trace_event(&mut self, seq: u64, event: &Event) {
        let (tag, peer, id): (u8, usize, Option<Digest>) = match event {
            Event::Deliver { to, input, .. } => (1, *to, input_id(input)),
            Event::TrainDone { peer, .. } => (2, *peer, None),
            Event::Wake { peer, .. } => (3, *peer, None),
            Event::TransferDone { to, id, .. } => (4, *to, Some(*id)),
            Event::CheckpointArrived { to, head, .. } => (5, *to, Some(head.base)),
            Event::Attack { peer, .. } => (6, *peer, None),
            Event::Retry { peer, .. } => (7, *peer, None),
        };
        let _ = seq;
        self.trace.update(&self.now.to_le_bytes());
        self.trace.update(&[tag]);
        self.trace.update(&(peer as u64).to_le_bytes());
        if let Some(id) = id {
            self.trace.update(id.as_bytes());
        }
    }

    fn train_ms(&self, p: usize) -> Millis {
        let run = &self.scenario.run;
        (f64::from(run.inner_steps) * run.step_ms as f64 / self.peers[p].speed).round() as Millis
    }

    fn is_live_honest(&self, p: usize) -> bool {
        let peer = &self.peers[p];
        peer.live && peer.role == Role::Honest && peer.engine.is_some()
    }

    fn dispatch(&mut self, event: Event) -> Result<(), SimError> {
        match event {
            Event::Deliver { to, epoch, input } => {
                if self.current(to, epoch) {
                    self.feed(to, input)?;
                }
            }
            Event::Wake { peer, epoch } => {
                if self.current(peer, epoch) {
                    self.peers[peer].wake_handled = Some(self.now);
                    self.peers[peer].wake_scheduled = None;
                    self.feed(peer, Input::Tick)?;
                }
            }
            Event::TrainDone { peer, epoch } => {
                if self.current(peer, epoch) {
                    self.train_done(peer)?;
                }
            }
            Event::TransferDone {
                from,
                to,
                epoch,
                id,
            } => {
                self.in_flight.remove(&(to, id));
                if let Some(n) = self.transfers.get_mut(&id) {
                    *n = n.saturating_sub(1);
                }
                if self.current(to, epoch) {
                    if self.peers[to].role == Role::Honest {
                        self.holders.entry(id).or_default().push(to);
                    }
                    if let Some((contribution, bytes)) = self.bodies.get(&id).cloned() {
                        self.feed(
                            to,
                            Input::PayloadArrived {
                                contribution,
                                bytes,
                            },
                        )?;
                    }
                }
                for server in [to, from] {
                    if self.peers[server].live
                        && (server == from || self.peers[to].role == Role::Honest)
                    {
                        self.serve_waiting(server, id);
                    }
                }
            }
            Event::CheckpointArrived {
                to,
                epoch,
                head,
                joining,
                history,
            } => {
                let peer = &self.peers[to];
                if joining && peer.live && peer.epoch == epoch && peer.engine.is_none() {
                    self.peers[to].chain = history;
                    self.join_with(to, head)?;
                } else if !joining && self.current(to, epoch) {
                    {
                        let peer = &mut self.peers[to];
                        peer.chain = history;
                        peer.chain.insert(head.round.saturating_sub(1), head.base);
                        if peer.role == Role::Honest {
                            self.forks_resolved += 1;
                        }
                        self.progressed = true;
                        self.feed(to, Input::CheckpointAdopted(head))?;
                        if matches!(self.peers[to].role, Role::Adversary { .. }) {
                            self.schedule_attack(to);
                        }
                    }
                }
            }
            Event::Attack { peer, epoch, round } => {
                if self.current(peer, epoch) {
                    self.attack(peer, round)?;
                }
            }
            Event::Retry {
                peer,
                epoch,
                head,
                from,
            } => {
                if self.current(peer, epoch) {
                    self.fetch_checkpoint(peer, head, from);
                }
            }
        }
        Ok(())
    }

    fn current(&self, p: usize, epoch: u32) -> bool {
        let peer = &self.peers[p];
        peer.live && peer.epoch == epoch && peer.engine.is_some()
    }

    /// Hands `input` to peer `p`'s engine and carries out what it says.
    fn feed(&mut self, p: usize, input: Input) -> Result<(), SimError> {
        let now = self.now;
        let Some(engine) = self.peers[p].engine.as_mut() else {
            return Ok(());
        };
        let outputs = engine.handle(now, input);
        self.carry_out(p, outputs)
    }

    fn carry_out(&mut self, p: usize, outputs: Vec<Output>) -> Result<(), SimError> {
        let mut work: VecDeque<Output> = outputs.into();
        while let Some(output) = work.pop_front() {
            if let Some(input) = self.output(p, output)? {
                let now = self.now;
                if let Some(engine) = self.peers[p].engine.as_mut() {
                    work.extend(engine.handle(now, input));
                }
            }
        }
        self.schedule_wake(p);
        Ok(())
    }

    fn schedule_wake(&mut self, p: usize) {
        let Some(wake) = self.peers[p].engine.as_ref().and_then(Engine::next_wake) else {
            return;
        };
        let peer = &self.peers[p];
        let handled = peer.wake_handled.is_some_and(|t| t >= wake);
        let scheduled = peer.wake_scheduled.is_some_and(|t| t <= wake.max(self.now));
        if handled || scheduled {
            return;
        }
        let epoch = peer.epoch;
        self.peers[p].wake_scheduled = Some(wake.max(self.now));
        self.push(wake, Event::Wake { peer: p, epoch });
    }

    /// Carries out one output; returns an input to feed straight back.
    fn output(&mut self, p: usize, output: Output) -> Result<Option<Input>, SimError> {
        let honest = self.peers[p].role == Role::Honest;
        match output {
            Output::StartTraining { round } => {
                let base = self.peers[p].engine.as_ref().map(|e| e.head().base);
                if let (Some(base), true) = (base, honest) {
                    self.peers[p].session = Some((base, round));
                    let at = self.now + self.train_ms(p);
                    let epoch = self.peers[p].epoch;
                    self.push(at, Event::TrainDone { peer: p, epoch });
                }
            }
            Output::Announce(signed) => {
                if honest {
                    let id = signed.id();
                    self.honest_ids.insert(id);
                    if let Some(body) = self.peers[p].engine.as_ref().and_then(|e| e.payload(&id)) {
                        self.peers[p].announced = Some(body.clone());
                        self.bodies.insert(id, body);
                        self.holders.insert(id, vec![p]);
                    }
                    self.broadcast(p, Input::Announced(signed))?;
                }
            }
            Output::PublishCommit(signed) => {
                if honest {
                    self.broadcast(p, Input::CommitReceived(signed))?;
                }
            }
            // An adversary signs its attacks outside its engine, which may
            // hear them.
            Output::KeyShared { round } if honest => {
                return Err(SimError::KeyShared { peer: p, round })
            }
            Output::KeyShared { .. } => {}
            Output::PublishEvidence(proof) => {
                if honest {
                    self.broadcast(p, Input::Evidence(proof))?;
                }
            }
            Output::Fetch { id, from } => self.fetch(p, id, from),
            Output::ApplyOuterStep {
                round,
                base,
                contributions,
            } => {
                let result = self.store.apply(&base, &contributions)?;
                return Ok(Some(Input::Applied { round, result }));
            }
            Output::Finalized { record, head } => self.finalized(p, record, head)?,
            Output::ReturnToResidual { payload } => {
                if let Ok(payload) = Payload::decode(&payload) {
                    if payload.len() == self.peers[p].residual.len() {
                        decompress_into(&payload, 1.0, &mut self.peers[p].residual)?;
                    }
                }
            }
            Output::RequestCheckpoint { head, from } => self.fetch_checkpoint(p, head, from),
            Output::Rejected(Rejection { id, author, reason }) => {
                if honest {
                    self.rejected.entry(reason).or_default().insert(id);
                    let author_honest = author
                        .and_then(|a| self.peers.iter().find(|q| q.public == a))
                        .is_some_and(|q| q.role == Role::Honest);
                    let replay = reason == RejectReason::Replay && self.replayed.contains(&id);
                    if author_honest && self.honest_ids.contains(&id) && !replay {
                        self.honest_rejected.insert(id);
                    }
                }
            }
            Output::Banned(Ban { peer, .. }) => {
                if honest {
                    self.banned.insert(peer);
                    if self
                        .peers
                        .iter()
                        .any(|q| q.public == peer && q.role == Role::Honest)
                    {
                        self.honest_banned.insert(peer);
                    }
                }
            }
        }
        Ok(None)
    }

    fn train_done(&mut self, p: usize) -> Result<(), SimError> {
        let Some((base, round)) = self.peers[p].session.take() else {
            return Ok(());
        };
        self.peers[p].trained_ms += self.train_ms(p);
        let start = self
            .store
            .get(&base)
            .map(|c| c.params.clone())
            .unwrap_or_else(|| self.genesis.clone());
        let steps = self.scenario.run.inner_steps;
        let Some(replica) = self.peers[p].replica.as_mut() else {
            return Ok(());
        };
        let delta = replica.session(&start, round, steps)?;
        let payload = compress(
            &delta,
            &mut self.peers[p].residual,
            &self.manifest.compression,
        )?;
        // As a node's replica does with its residual after each update.
        decay_residual(&mut self.peers[p].residual, RESIDUAL_DECAY)?;
        let update = LocalUpdate {
            payload: Arc::from(payload.encode()?),
            tokens: self.tokens_per_update,
        };
        self.feed(p, Input::Trained(update))
    }

    fn finalized(&mut self, p: usize, record: RoundRecord, head: Head) -> Result<(), SimError> {
        let round = head.round - 1;
        self.progressed = true;
        self.peers[p].chain.insert(round, head.base);
        if self.peers[p].role != Role::Honest {
            self.peers[p].last_record = Some(record);
            self.schedule_attack(p);
            return Ok(());
        }
        for c in &record.contributions {
            self.applied_ids.insert(c.id());
        }
        self.records
            .entry(head.base)
            .or_insert_with(|| record.clone());
        self.peers[p].last_record = Some(record.clone());
        while self.round_lines.len() as u64 <= round {
            let r = self.round_lines.len() as u64;
            let checkpoint = self.store.get(&head.base);
            let val_loss = match (&mut self.evaluator, checkpoint) {
                (Some(evaluator), Some(checkpoint)) if r == round => {
                    Some(evaluator.loss(head.base, &checkpoint)?)
                }
                _ => None,
            };
            let bytes: u64 = self.peers.iter().map(|q| q.bytes_sent).sum();
            let live = self.peers.iter().filter(|q| q.live).count();
            self.round_lines.push(RoundLine {
                round: r,
                finished_ms: self.now,
                contributors: record.contributions.len(),
                checkpoint: head.base.to_hex(),
                val_loss,
                bytes_sent_total: bytes,
                live_peers: live,
            });
            self.round_payload_ms.push(self.now);
        }
        Ok(())
    }
}

fn input_id(input: &Input) -> Option<Digest> {
    match input {
        Input::Announced(s) => Some(s.id()),
        Input::Reannounce { contribution, .. } => Some(contribution.id()),
        Input::PayloadArrived { contribution, .. } => Some(contribution.id()),
        Input::CommitReceived(s) => Some(s.id()),
        Input::Evidence(proof) => Some(proof.second.id()),
        Input::FetchFailed { id } => Some(*id),
        Input::CheckpointAdopted(head) => Some(head.base),
        Input::CheckpointUnavailable { result, .. } => Some(*result),
        Input::PeerSeen(k) | Input::PeerGone(k) | Input::HoldsHead { peer: k, .. } => {
            Some(Digest::from_bytes(*k.as_bytes()))
        }
        Input::Trained(u) => Some(Digest::of(&u.payload)),
        Input::Applied { result, .. } => Some(*result),
        Input::Tick => None,
    }
}
