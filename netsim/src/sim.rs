//! The simulation: peers running the real round engine on a virtual clock,
//! over simulated links.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;

use p2ptrain_kernels::{compress, decompress_into, Payload};
use p2ptrain_node::engine::{Engine, EngineConfig, Head, Input, LocalUpdate, Output, RejectReason};
use p2ptrain_protocol::codec;
use p2ptrain_protocol::{
    Contribution, Digest, PeerKey, RoundRecord, RunManifest, Signed, SigningKey,
};
use p2ptrain_trainer::Corpus;

use crate::adversary::{self, Context};
use crate::checker::SharedChecker;
use crate::model::{self, Checkpoint, Evaluator, ModelError, Replica, Store};
use crate::network::{Millis, Network};
use crate::report::{Adversarial, RoundLine, Summary};
use crate::rng::Rng;
use crate::scenario::{ModelKind, Scenario, ScenarioError};

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
    /// Honest contributions an adversary sent again in a later round.
    replayed: BTreeSet<Digest>,
    applied_ids: BTreeSet<Digest>,
    forks_resolved: u64,
    round_payload_ms: Vec<Millis>,
    /// A head moved since the round-driven checks last ran.
    progressed: bool,
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
    sim.finish(started.elapsed().as_secs_f64())
}

impl Simulation {
    fn new(scenario: Scenario, seed: u64, without_adversaries: bool) -> Result<Self, SimError> {
        let compression = scenario.compression()?;
        let run = &scenario.run;
        let tiny = run.model == ModelKind::Tiny;
        let config = model::tiny_config();
        let proxy_len = if tiny {
            p2ptrain_trainer::ParamLayout::gpt2(&config).len()
        } else {
            run.proxy_params as usize
        };
        let params_charged = if tiny { proxy_len as u64 } else { run.params };
        let genesis = model::genesis_params(tiny, proxy_len, seed);
        let (store, genesis_hash) = Store::new(
            Checkpoint {
                params: genesis.clone(),
                momentum: vec![0.0; proxy_len],
            },
            run.outer_lr,
            run.outer_momentum,
        );
        let mut manifest = RunManifest {
            name: "netsim".into(),
            seed,
            inner_steps: run.inner_steps,
            ..RunManifest::default()
        };
        manifest.inner.lr = run.inner_lr;
        manifest.inner.batch_size = run.batch_size;
        manifest.outer.lr = run.outer_lr;
        manifest.outer.momentum = run.outer_momentum;
        manifest.compression = compression;
        manifest.rounds.deadline_ms = run.deadline_ms;
        manifest.rounds.commit_window_ms = run.commit_window_ms;
        manifest.rounds.max_contributors = run.max_contributors;
        manifest.rounds.min_contributors = run.min_contributors;
        manifest.genesis = genesis_hash;
        let tokens_per_update =
            u64::from(run.inner_steps) * u64::from(run.batch_size) * u64::from(config.context_len);
        let payload_wire_len =
            Payload::encoded_len_for(params_charged as usize, &compression) as u64;
        let corpus = tiny.then(Corpus::bundled);
        let evaluator = match &corpus {
            Some(corpus) => Some(Evaluator::new(corpus, &genesis, manifest.inner, 8)?),
            None => None,
        };
        let mut rng = Rng::derive(seed, 0);
        let mut net = Network::default();
        let mut peers = Vec::new();
        for (g, group) in scenario.groups.iter().enumerate() {
            for _ in 0..group.count {
                let index = peers.len();
                let mut secret = [0u8; 32];
                secret[..8].copy_from_slice(&seed.to_le_bytes());
                secret[8..16].copy_from_slice(&(index as u64).to_le_bytes());
                secret[16] = 0x70;
                let key = SigningKey::from_bytes(&secret);
                net.add(scenario.link_of(g), g);
                peers.push(Peer {
                    public: PeerKey::from(&key),
                    key,
                    group: g,
                    speed: group.speed,
                    role: Role::Honest,
                    live: false,
                    epoch: 0,
                    engine: None,
                    replica: None,
                    residual: vec![0.0; proxy_len],
                    session: None,
                    trained_ms: 0,
                    live_since: 0,
                    live_ms: 0,
                    chain: BTreeMap::new(),
                    bytes_sent: 0,
                    wake_handled: None,
                    wake_scheduled: None,
                    last_record: None,
                    attacked_round: None,
                    churned: false,
                });
            }
        }
        let mut excluded = BTreeSet::new();
        if let Some(adversary) = &scenario.adversary {
            let count = (adversary.fraction * peers.len() as f64).round() as usize;
            let mut order: Vec<usize> = (0..peers.len()).collect();
            for i in (1..order.len()).rev() {
                let j = (rng.next_u64() % (i as u64 + 1)) as usize;
                order.swap(i, j);
            }
            for (slot, &p) in order.iter().take(count).enumerate() {
                peers[p].role = Role::Adversary { slot };
                if without_adversaries {
                    excluded.insert(p);
                }
            }
        }
        let mut sim = Self {
            manifest,
            params_charged,
            proxy_len,
            payload_wire_len,
            tokens_per_update,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            peers,
            net,
            store,
            checker: SharedChecker::default(),
            rng,
            trace: blake3::Hasher::new(),
            corpus,
            evaluator,
            genesis,
            bodies: HashMap::new(),
            holders: HashMap::new(),
            waiting: HashMap::new(),
            in_flight: BTreeSet::new(),
            transfers: HashMap::new(),
            swarm_round: 0,
            round_lines: Vec::new(),
            rejected: BTreeMap::new(),
            honest_ids: BTreeSet::new(),
            adversary_ids: BTreeSet::new(),
            honest_rejected: BTreeSet::new(),
            replayed: BTreeSet::new(),
            applied_ids: BTreeSet::new(),
            forks_resolved: 0,
            round_payload_ms: Vec::new(),
            progressed: false,
            scenario,
            seed,
        };
        // Peers dropped for the comparison run never join.
        for p in excluded {
            sim.peers[p].churned = false;
            sim.peers[p].role = Role::Honest;
            sim.peers[p].live = false;
            sim.peers[p].epoch = u32::MAX;
        }
        Ok(sim)
    }

    fn excluded(&self, p: usize) -> bool {
        self.peers[p].epoch == u32::MAX
    }

    fn time_limit(&self) -> Millis {
        let run = &self.scenario.run;
        let slowest = self
            .scenario
            .groups
            .iter()
            .map(|g| g.speed)
            .fold(f64::INFINITY, f64::min);
        let train = (f64::from(run.inner_steps) * run.step_ms as f64 / slowest) as Millis;
        let per_round = train + 2 * run.deadline_ms + 2 * run.commit_window_ms + 60_000;
        (run.rounds + 2) * per_round * 4
    }

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

    fn begin(&mut self) -> Result<(), SimError> {
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

    fn train_ms(&self, p: usize) -> Millis {
        let run = &self.scenario.run;
        (f64::from(run.inner_steps) * run.step_ms as f64 / self.peers[p].speed).round() as Millis
    }

    /// Brings peer `p` up with an engine at `head`, its checkpoint in hand.
    fn join_with(&mut self, p: usize, head: Head) -> Result<(), SimError> {
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

    fn make_replica(&self, p: usize) -> Result<Replica, SimError> {
        match &self.corpus {
            Some(corpus) => {
                let total = self.scenario.run.rounds * u64::from(self.scenario.run.inner_steps);
                Ok(Replica::tiny(
                    corpus,
                    (p, self.peers.len()),
                    &self.genesis,
                    self.manifest.inner,
                    total.max(1),
                    self.seed ^ ((p as u64 + 1) * 0x9e37_79b9),
                )?)
            }
            None => Ok(Replica::Synthetic {
                rng: Rng::derive(self.seed, 10_000 + p as u64),
                seed: self.seed,
            }),
        }
    }

    /// Peer `p` comes (back) into the swarm: it fetches the checkpoint of
    /// the most advanced live honest peer it can reach, then starts.
    fn join(&mut self, p: usize) {
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

    fn leave(&mut self, p: usize, churned: bool) {
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
    fn history_of(&self, q: usize, head: &Head) -> BTreeMap<u64, Digest> {
        let upto = head.round.saturating_sub(1);
        self.peers[q]
            .chain
            .range(..upto)
            .map(|(r, h)| (*r, *h))
            .collect()
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
            Output::Rejected { id, author, reason } => {
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
        }
        Ok(None)
    }

    fn broadcast(&mut self, p: usize, input: Input) -> Result<(), SimError> {
        let bytes = match &input {
            Input::Announced(s) => codec::encoded_len(s)?,
            Input::CommitReceived(s) => codec::encoded_len(s)?,
            _ => 64,
        } as u64;
        for q in 0..self.peers.len() {
            if q == p || !self.peers[q].live || !self.net.reachable(p, q) {
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

    fn wire_len(&self, id: &Digest) -> u64 {
        if self.scenario.run.model == ModelKind::Synthetic {
            self.payload_wire_len
        } else {
            self.bodies
                .get(id)
                .map_or(self.payload_wire_len, |(_, b)| b.len() as u64)
        }
    }

    fn fetch(&mut self, to: usize, id: Digest, from: PeerKey) {
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

    fn start_transfer(&mut self, from: usize, to: usize, id: Digest) {
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
    fn serve_waiting(&mut self, server: usize, id: Digest) {
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

    fn fetch_checkpoint(&mut self, p: usize, head: Head, from: PeerKey) {
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
        let update = LocalUpdate {
            payload: Arc::from(payload.encode()?),
            tokens: self.tokens_per_update,
        };
        self.feed(p, Input::Trained(update))
    }

    fn schedule_attack(&mut self, p: usize) {
        let Some(round) = self.peers[p].engine.as_ref().map(|e| e.head().round) else {
            return;
        };
        if self.peers[p].attacked_round.is_some_and(|r| r >= round) {
            return;
        }
        self.peers[p].attacked_round = Some(round);
        // Attack once honest updates of the round are about.
        let at = self.now + self.train_ms(p) + 200;
        let epoch = self.peers[p].epoch;
        self.push(
            at,
            Event::Attack {
                peer: p,
                epoch,
                round,
            },
        );
    }

    fn attack(&mut self, p: usize, round: u64) -> Result<(), SimError> {
        let Role::Adversary { slot } = self.peers[p].role else {
            return Ok(());
        };
        let Some(adversary) = self.scenario.adversary.clone() else {
            return Ok(());
        };
        let Some(head) = self.peers[p].engine.as_ref().map(Engine::head) else {
            return Ok(());
        };
        if head.round != round {
            return Ok(());
        }
        let kind = adversary.kinds[(slot + round as usize) % adversary.kinds.len()];
        let Some(run) = self.peers[p].engine.as_ref().map(Engine::run) else {
            return Ok(());
        };
        // The lowest-id honest payload of this round the attacker can see.
        let honest = self
            .bodies
            .iter()
            .filter(|(id, _)| self.honest_ids.contains(id))
            .filter_map(|(id, (signed, bytes))| {
                let c = self.checker_contribution(signed)?;
                (c.round == round && c.base == head.base).then_some((*id, bytes.clone()))
            })
            .min_by_key(|(id, _)| *id)
            .map(|(_, bytes)| bytes);
        let applied_before = self.peers[p]
            .last_record
            .as_ref()
            .and_then(|r| r.contributions.first().cloned());
        let key = self.peers[p].key.clone();
        let cx = Context {
            key: &key,
            run,
            round,
            base: head.base,
            tokens: self.tokens_per_update,
            settings: self.manifest.compression,
            len: self.proxy_len,
            honest: honest.as_deref(),
            applied_before: applied_before.as_ref(),
            factor: adversary.factor,
        };
        let Some(attack) = adversary::craft(kind, &cx, &mut self.rng)? else {
            return Ok(());
        };
        let id = attack.contribution.id();
        if self.honest_ids.contains(&id) {
            // A replay re-sends an honest peer's old contribution.
            self.replayed.insert(id);
        } else {
            self.adversary_ids.insert(id);
        }
        if let Some(payload) = attack.payload {
            self.bodies
                .insert(id, (attack.contribution.clone(), payload));
            self.holders.insert(id, vec![p]);
        } else if !self.bodies.contains_key(&id) {
            self.holders.remove(&id);
        }
        self.broadcast(p, Input::Announced(attack.contribution))
    }

    fn checker_contribution(&self, signed: &Signed<Contribution>) -> Option<Contribution> {
        use p2ptrain_node::engine::Checker;
        self.checker.contribution(signed).ok()
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

    /// Round-driven changes: groups joining and leaving, churn, partitions.
    fn after_event(&mut self) -> Result<(), SimError> {
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
    fn tell_reachability(&mut self, seen: bool) {
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

    fn round_reached(&mut self, round: u64) -> Result<(), SimError> {
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

    fn done(&self) -> bool {
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

    fn finish(mut self, wall_seconds: f64) -> Result<Outcome, SimError> {
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
}

fn input_id(input: &Input) -> Option<Digest> {
    match input {
        Input::Announced(s) => Some(s.id()),
        Input::PayloadArrived { contribution, .. } => Some(contribution.id()),
        Input::CommitReceived(s) => Some(s.id()),
        Input::FetchFailed { id } => Some(*id),
        Input::CheckpointAdopted(head) => Some(head.base),
        Input::CheckpointUnavailable { result, .. } => Some(*result),
        Input::PeerSeen(k) | Input::PeerGone(k) => Some(Digest::from_bytes(*k.as_bytes())),
        Input::Trained(u) => Some(Digest::of(&u.payload)),
        Input::Applied { result, .. } => Some(*result),
        Input::Tick => None,
    }
}
