//! Building a simulation from a scenario: keys, links, roles, the genesis
//! checkpoint, each peer's replica.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

use p2ptrain_kernels::Payload;
use p2ptrain_protocol::{OuterOptimizer, PeerKey, RunManifest, SigningKey};
use p2ptrain_trainer::Corpus;

use super::{Peer, Role, SimError, Simulation};
use crate::checker::SharedChecker;
use crate::model::{self, Checkpoint, Evaluator, Replica, Store};
use crate::network::{Millis, Network};
use crate::rng::Rng;
use crate::scenario::{ModelKind, Scenario, ScenarioError};

impl Simulation {
    pub(super) fn new(
        scenario: Scenario,
        seed: u64,
        without_adversaries: bool,
    ) -> Result<Self, SimError> {
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
            OuterOptimizer {
                lr: run.outer_lr,
                momentum: run.outer_momentum,
                nesterov: true,
            },
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
        manifest
            .validate()
            .map_err(|e| ScenarioError::Invalid(format!("run: {e}")))?;
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
                    announced: None,
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
            banned: BTreeSet::new(),
            honest_banned: BTreeSet::new(),
            replayed: BTreeSet::new(),
            applied_ids: BTreeSet::new(),
            forks_resolved: 0,
            round_payload_ms: Vec::new(),
            progressed: false,
            records: HashMap::new(),
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

    pub(super) fn excluded(&self, p: usize) -> bool {
        self.peers[p].epoch == u32::MAX
    }

    pub(super) fn time_limit(&self) -> Millis {
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

    pub(super) fn make_replica(&self, p: usize) -> Result<Replica, SimError> {
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
}
