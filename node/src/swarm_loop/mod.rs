//! The event loop of a running node: it owns the libp2p swarm, drives the
//! round engine with what the network says, and carries out what the engine
//! asks — train, announce, fetch, apply, commit, record. Everything else
//! talks to it through bounded channels ([`Command`] in, [`NodeEvent`] out).

mod answers;
mod backfill;
mod discovery;
mod download;
mod enrol;
mod error;
mod event;
mod fetch;
mod gossip;
mod outer;
mod persist;
mod probe;
mod repeat;
mod replica;
mod slicing;
mod status;
mod swarm_events;
mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::{gossipsub, Multiaddr, PeerId, Swarm};
use p2ptrain_protocol::{codec, Commit, Digest, PeerKey, RunManifest, Signed, SigningKey};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::chain::{self, ChainError, ChainState, DataDir, ResumedFrom};
use crate::engine::{Engine, EngineConfig, Head, Input, Millis, Output, Verify};
use crate::net::codec::FetchRequest;
use crate::net::fetch::{self as fetching, FetchAnswer, FetchId, Fetcher};
use crate::net::{build_swarm, peer_id, scoring, topics, Behaviour, NetConfig, NetError, Topics};
pub use enrol::{fetch_run, EnrolError, Enrolling};
use error::with_causes;
pub use error::NodeError;
pub use event::NodeEvent;
use persist::{restore_residual, HeadWrites, RoundWrites};
pub use replica::{Replica, ReplicaError};
pub use status::{Phase, Status};
pub use worker::{StepProgress, Worker};

/// What the node's owner may ask.
#[derive(Debug)]
pub enum Command {
    /// Connect to a peer.
    Dial(Multiaddr),
    /// Stop after the current event.
    Shutdown,
}

/// Everything a node needs to run.
pub struct NodeSetup {
    /// Its data directory (manifest and genesis written by `init`).
    pub data: DataDir,
    /// Its key.
    pub key: SigningKey,
    /// Network settings; their allow-list also rules the round engine.
    pub net: NetConfig,
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// What makes its update each round.
    pub training: Training,
}

/// What makes a node's update each round.
pub enum Training {
    /// Its own replica of the run's model.
    Replica {
        /// Its training data (one token per byte).
        tokens: Vec<u8>,
        /// Where it trains ([`p2ptrain_trainer::device::parse`] reads
        /// `cpu`, `cuda:N` or `auto`; a GPU needs a build with `--features
        /// cuda`).
        device: p2ptrain_trainer::device::Device,
        /// What its error-feedback residual keeps from one round to the
        /// next, in `[0, 1]` (usually
        /// [`RESIDUAL_DECAY`](p2ptrain_trainer::device::RESIDUAL_DECAY)).
        residual_decay: f32,
    },
    /// Any other source of updates.
    Worker(Box<dyn Worker>),
}

/// A worker back from a session, with its update.
type Trained = (
    Box<dyn Worker>,
    Result<crate::engine::LocalUpdate, ReplicaError>,
);

/// A running node. See the module docs.
pub struct Node {
    /// Whether this node runs a private swarm (`--psk`).
    private: bool,
    swarm: Swarm<Behaviour>,
    engine: Engine,
    topics: Topics,
    data: DataDir,
    /// Held while the node lives: no other node works on `data`.
    _lock: chain::DirLock,
    manifest: RunManifest,
    /// The checkpoint of the last finalized (or adopted) round, and its
    /// hash.
    state: Arc<ChainState>,
    state_hash: Digest,
    /// Memory the next outer step reuses.
    buffers: chain::Buffers,
    /// Outer-step results of the current round, by hash, until it ends.
    tentative: HashMap<Digest, Arc<ChainState>>,
    /// Writes of head.ckpt.
    head: HeadWrites,
    /// The writes of finalized rounds' payloads and records under way.
    round_writes: RoundWrites,
    /// The worker, and what it is handed back while in a session.
    worker: worker::WorkerSlot,
    /// The worker's mean loss in its last finished session.
    train_loss: Option<f32>,
    trained_tx: mpsc::Sender<Trained>,
    trained_rx: mpsc::Receiver<Trained>,
    /// Outer steps back from their worker threads.
    stepped_tx: mpsc::Sender<outer::Stepped>,
    stepped_rx: mpsc::Receiver<outer::Stepped>,
    status: watch::Sender<Status>,
    /// Asks peers for payloads, checkpoint slices and records.
    fetcher: Fetcher,
    /// The fetcher's answers.
    fetch_answers: mpsc::Receiver<FetchAnswer>,
    /// Payloads being fetched for the engine.
    fetches: HashMap<FetchId, Digest>,
    /// The checkpoint being downloaded to adopt, if any.
    download: Option<download::Download<FetchId>>,
    /// The records of adopted rounds being fetched, if any.
    backfill: Option<backfill::Backfill>,
    /// Its requests in flight, with the peer asked.
    backfill_asks: HashMap<FetchId, PeerId>,
    /// Whether the directory was checked for missing records since start.
    backfill_checked: bool,
    /// Asks, once the node trains no more, whether the peers it counts as
    /// behind hold its head after all.
    probes: probe::Probes,
    /// Peers that relay, with their public addresses.
    relays: discovery::Relays,
    /// Whether this node listens through a relay.
    relayed: bool,
    /// Connections through a relay, by peer: closed once hole punching
    /// made a direct one.
    circuits: discovery::Circuits,
    /// Checkpoints served in slices.
    slicing: slicing::Slicing,
    /// Answers to peers being made off the event loop.
    answers: answers::Answers<fetching::InboundFetch>,
    events: mpsc::Sender<NodeEvent>,
    epoch: Instant,
    resumed_from: ResumedFrom,
    restored_residual: bool,
    /// This node's contribution announced before it stopped, to announce
    /// again if it resumes in that round.
    reannounce: Option<Input>,
    /// When this node's announcement goes out again, while its round
    /// gathers contributions.
    repeats: Option<repeat::Repeats>,
    /// The last commit this node published, sent again to each peer that
    /// subscribes to the run's commits: a node that has just joined learns
    /// the chain's head from it at once, rather than from the next commit,
    /// which a round that waits for the newcomer's contribution holds back
    /// until its deadline.
    last_commit: Option<Signed<Commit>>,
    /// Set when the node stops: a session under way ends after its step.
    stop_training: Arc<std::sync::atomic::AtomicBool>,
}

impl Node {
    /// Sets a node up from its data directory, at its last finalized round
    /// (see [`chain::resume`]): genesis for a new run.
    ///
    /// # Errors
    ///
    /// [`NodeError`] if the directory, the network or the model cannot be
    /// set up.
    pub fn new(setup: NodeSetup, events: mpsc::Sender<NodeEvent>) -> Result<Self, NodeError> {
        let lock = setup.data.lock()?;
        let manifest = setup.data.manifest()?;
        let params = p2ptrain_trainer::ParamLayout::gpt2(&manifest.model).len();
        let resumed = chain::resume(&setup.data, params)?;
        let head = resumed.head();
        let state = Arc::new(resumed.state);
        let mut swarm = build_swarm(&setup.key, &setup.net)?;
        let run = manifest.id().map_err(ChainError::from)?;
        let topics = topics(&run);
        for topic in topics.all() {
            let gossip = &mut swarm.behaviour_mut().gossipsub;
            gossip
                .subscribe(topic)
                .map_err(|e| NetError::Behaviour(e.to_string()))?;
            gossip
                .set_topic_params(topic.clone(), scoring::topic_params())
                .map_err(|e| NetError::Behaviour(e.to_owned()))?;
        }
        for address in &setup.listen {
            swarm
                .listen_on(address.clone())
                .map_err(|e| NodeError::Address(address.clone(), with_causes(&e)))?;
        }
        let worker: Box<dyn Worker> = match setup.training {
            Training::Replica {
                tokens,
                device,
                residual_decay,
            } => {
                let seed =
                    u64::from_le_bytes(setup.key.to_bytes()[..8].try_into().unwrap_or([0; 8]));
                Box::new(Replica::new(
                    &manifest,
                    state.params.clone(),
                    tokens,
                    seed,
                    1_000 * u64::from(manifest.inner_steps),
                    &device,
                    residual_decay,
                )?)
            }
            Training::Worker(worker) => worker,
        };
        let mut worker = worker;
        let restored = restore_residual(&setup.data, params, head.base, worker.as_mut())?;
        // Only a contribution to the round resumed in is announced again.
        let me = PeerKey::from(&setup.key);
        let reannounce = setup
            .data
            .announcement()?
            .filter(|kept| {
                kept.contribution
                    .verify()
                    .is_ok_and(|c| (c.author, c.round, c.base) == (me, head.round, head.base))
            })
            .map(|kept| Input::Reannounce {
                contribution: kept.contribution,
                bytes: Arc::from(kept.payload),
            });
        let (status, _) = watch::channel(Status {
            key: me.to_string(),
            round: head.round,
            checkpoint: head.base.to_string(),
            inner_steps: manifest.inner_steps,
            ..Status::default()
        });
        let mut config = EngineConfig::new(manifest.clone(), setup.key, params);
        config.allow_list = setup.net.allow_list.map(|keys| keys.into_iter().collect());
        let payload_len = config.payload_len();
        let engine = Engine::with_checker(config, head, Verify)?;
        let (trained_tx, trained_rx) = mpsc::channel(1);
        let (stepped_tx, stepped_rx) = mpsc::channel(4);
        let control = swarm.behaviour().fetch.new_control();
        let (fetcher, fetch_answers) = Fetcher::new(control, setup.net.fetch_timeout, payload_len);
        let private = setup.net.psk.is_some();
        Ok(Self {
            swarm,
            private,
            engine,
            topics,
            data: setup.data,
            _lock: lock,
            manifest,
            state,
            state_hash: head.base,
            buffers: chain::Buffers::default(),
            tentative: HashMap::new(),
            head: HeadWrites {
                written: None,
                pending: None,
                last_cost: Duration::ZERO,
                last_done: std::time::Instant::now(),
            },
            round_writes: RoundWrites::default(),
            worker: worker::WorkerSlot::new(worker),
            train_loss: None,
            trained_tx,
            trained_rx,
            stepped_tx,
            stepped_rx,
            status,
            fetcher,
            fetch_answers,
            fetches: HashMap::new(),
            download: None,
            backfill: None,
            backfill_asks: HashMap::new(),
            probes: probe::Probes::default(),
            backfill_checked: false,
            relays: discovery::Relays::new(),
            relayed: false,
            circuits: discovery::Circuits::new(),
            slicing: slicing::Slicing::new(),
            answers: answers::Answers::new(),
            events,
            epoch: Instant::now(),
            resumed_from: resumed.from,
            restored_residual: restored,
            reannounce,
            repeats: None,
            last_commit: None,
            stop_training: Arc::default(),
        })
    }

    /// Where the chain stands: the round to work on and its checkpoint.
    pub fn head(&self) -> Head {
        self.engine.head()
    }

    /// The contributions the current round needs before it can close (see
    /// [`Head::quorum`]): more than one, and this node cannot go on alone.
    pub fn quorum(&self) -> usize {
        self.engine.head().quorum(&self.manifest.rounds)
    }

    /// Whether the residual saved when the node last stopped was restored
    /// (it is only when it goes with the checkpoint resumed from).
    pub fn restored_residual(&self) -> bool {
        self.restored_residual
    }

    /// Whether the node announces again, as it starts, its contribution to
    /// the round it resumes in, made before it stopped.
    pub fn reannounces(&self) -> bool {
        self.reannounce.is_some()
    }

    /// Trains no round from round `rounds` on: once the chain holds that
    /// many rounds, the node stays in the swarm only to serve its peers
    /// (checkpoints, payloads, records and commits), its status in
    /// [`Phase::Finished`], until it is shut down. A peer still catching
    /// up can then reach the last checkpoint after the others stop. An
    /// update trained for an earlier round and still waiting for a round
    /// to take it goes back into the residual.
    pub fn train_until(&mut self, rounds: u64) {
        self.engine.contribute_until(rounds);
    }

    /// Whether the chain holds the rounds of [`train_until`](Self::train_until),
    /// so the node trains no more.
    fn finished(&self) -> bool {
        !self.engine.contributes_to(self.engine.head().round)
    }

    /// A live view of what the node is doing.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// How the starting state was found in the data directory.
    pub fn resumed_from(&self) -> ResumedFrom {
        self.resumed_from
    }

    fn now(&self) -> Millis {
        self.epoch.elapsed().as_millis() as Millis
    }

    /// Runs until [`Command::Shutdown`] or the command channel closes.
    ///
    /// # Errors
    ///
    /// [`NodeError`] when training or the data directory fails.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) -> Result<(), NodeError> {
        let mut control = self.swarm.behaviour().fetch.new_control();
        let mut inbound_fetches = fetching::serve(&mut control)
            .map_err(|e| NetError::Behaviour(format!("fetch streams: {e}")))?;
        if let Some(own) = self.reannounce.take() {
            self.feed(own).await?;
        }
        let outputs = self.engine.start(self.now());
        self.carry_out(outputs).await?;
        // The engine's last deadline that a tick was fed for.
        let mut ticked = None;
        loop {
            let due = next_tick(self.engine.next_wake(), ticked);
            let wake = due
                .map(|ms| self.epoch + Duration::from_millis(ms))
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let repeat_at = self.repeats.map(|r| r.due());
            let backfill_at = self.backfill_retry_at();
            let probe_at = self.probe_at();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Dial(address)) => {
                        self.swarm
                            .dial(address.clone())
                            .map_err(|e| NodeError::Address(address, with_causes(&e)))?;
                    }
                    Some(Command::Shutdown) | None => return self.stop().await,
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event).await?,
                Some(inbound) = inbound_fetches.recv() => self.on_inbound_fetch(inbound),
                Some(answer) = self.fetch_answers.recv() => self.on_fetch_answer(answer).await?,
                Some((hash, served)) = self.slicing.built() => self.on_sliced(hash, served),
                Some((inbound, response)) = self.answers.made() => self.respond(inbound, response),
                Some(stepped) = self.stepped_rx.recv() => self.on_stepped(stepped).await?,
                Some((worker, update)) = self.trained_rx.recv() => {
                    self.train_loss = worker.last_loss().or(self.train_loss);
                    self.worker.put_back(worker)?;
                    let train_loss = self.train_loss;
                    self.status.send_modify(|s| {
                        s.phase = Phase::Exchanging;
                        s.train_loss = train_loss;
                    });
                    self.feed(Input::Trained(update?)).await?;
                }
                () = tokio::time::sleep_until(wake) => {
                    ticked = due;
                    self.feed(Input::Tick).await?;
                }
                () = tokio::time::sleep_until(repeat_at.unwrap_or(wake)), if repeat_at.is_some() => {
                    self.repeat_announcement();
                }
                () = tokio::time::sleep_until(backfill_at.unwrap_or(wake)), if backfill_at.is_some() => {
                    self.wake_backfill();
                }
                () = tokio::time::sleep_until(probe_at.unwrap_or(wake)), if probe_at.is_some() => {
                    self.probe_behind();
                }
            }
        }
    }

    async fn feed(&mut self, input: Input) -> Result<(), NodeError> {
        let outputs = self.engine.handle(self.now(), input);
        self.carry_out(outputs).await?;
        // Membership changes only through inputs: the count of the run's
        // peers follows it (a relay, or a peer of another run, is
        // connected but not counted).
        let members = self.engine.members().len();
        let behind = self.engine.members_behind(self.engine.head().round).count();
        self.status.send_if_modified(|s| {
            let changed = (s.peers, s.peers_behind) != (members, behind);
            s.peers = members;
            s.peers_behind = behind;
            changed
        });
        Ok(())
    }

    async fn carry_out(&mut self, outputs: Vec<Output>) -> Result<(), NodeError> {
        let mut work: std::collections::VecDeque<Output> = outputs.into();
        while let Some(output) = work.pop_front() {
            if let Some(input) = self.output(output).await? {
                work.extend(self.engine.handle(self.now(), input));
            }
        }
        Ok(())
    }

    async fn output(&mut self, output: Output) -> Result<Option<Input>, NodeError> {
        match output {
            Output::StartTraining { round } if !self.engine.contributes_to(round) => {
                self.status.send_modify(|s| s.phase = Phase::Finished);
            }
            Output::StartTraining { round } => {
                if let Some(mut worker) = self.worker.take() {
                    let start = self.state.clone();
                    let tx = self.trained_tx.clone();
                    let status = self.status.clone();
                    let base = self.engine.head().base.to_string();
                    status.send_modify(|s| {
                        s.phase = Phase::Training;
                        s.round = round;
                        s.checkpoint = base;
                        s.inner_step = 0;
                        s.passes = None;
                    });
                    let stop = self.stop_training.clone();
                    tokio::task::spawn_blocking(move || {
                        let update = worker.session(&start.params, &mut |p| {
                            status.send_modify(|s| {
                                s.inner_step = p.step;
                                s.inner_steps = p.steps;
                                s.passes = p.pass.map(|p| (p.done, p.passes));
                                s.step_loss = p.loss.or(s.step_loss);
                            });
                            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                                std::ops::ControlFlow::Break(())
                            } else {
                                std::ops::ControlFlow::Continue(())
                            }
                        });
                        let _ = tx.blocking_send((worker, update));
                    });
                }
            }
            Output::Announce(signed) => {
                // Kept before it leaves: restarted in this round, the node
                // announces it again rather than a second contribution.
                let id = signed.id();
                if let Some((_, payload)) = self.engine.payload(&id) {
                    self.data.write_announcement(&signed, &payload)?;
                }
                self.publish(&self.topics.announce.clone(), &signed);
                self.repeats = Some(repeat::Repeats::after(Instant::now()));
                let round = self.engine.head().round;
                self.report(NodeEvent::Announced { round, id }).await;
            }
            Output::PublishCommit(signed) => {
                self.publish(&self.topics.commit.clone(), &signed);
                self.last_commit = Some(signed);
            }
            Output::PublishEvidence(proof) => self.publish(&self.topics.evidence.clone(), &proof),
            Output::Fetch { id, from } => {
                // The engine asks one peer at a time: an earlier request for
                // the payload (to a peer that left) is no longer its, and
                // its failure must not count against the peer asked now.
                self.fetches.retain(|_, asked| *asked != id);
                if let Some(peer) = peer_id(&from) {
                    let request = self.fetcher.send(peer, FetchRequest::Payload(id));
                    self.fetches.insert(request, id);
                } else {
                    return Ok(Some(Input::FetchFailed { id }));
                }
            }
            Output::ApplyOuterStep {
                round,
                contributions,
                ..
            } => self.start_outer_step(round, contributions),
            Output::Finalized { record, head } => {
                let payloads = record
                    .contributions
                    .iter()
                    .filter_map(|signed| self.engine.payload(&signed.id()))
                    .map(|(_, bytes)| bytes)
                    .collect();
                let contributions = record.contributions.len();
                self.write_round(head.round - 1, record, payloads).await?;
                if let Some(next) = self.tentative.remove(&head.base) {
                    self.set_state(next, head.base, false).await?;
                }
                // Before the results are let go, so that their memory is
                // free for the next outer step.
                let held = self.state_hash;
                self.slicing.round_ended(|hash| *hash == held);
                for (_, unused) in self.tentative.drain() {
                    self.buffers.spare = Arc::try_unwrap(unused).ok().or(self.buffers.spare.take());
                }
                self.round_done(head, Some(contributions));
                self.wake_backfill();
                let _ = self
                    .events
                    .send(NodeEvent::Finalized {
                        round: head.round - 1,
                        checkpoint: head.base,
                        contributions,
                        train_loss: self.train_loss,
                    })
                    .await;
            }
            Output::ReturnToResidual { payload } => self.worker.return_to_residual(payload)?,
            Output::RequestCheckpoint { head, from } => return Ok(self.start_download(head, from)),
            Output::Rejected(rejection) => {
                let rejected = self.engine.rejected().clone();
                self.status.send_modify(|s| {
                    s.rejected = rejected
                        .iter()
                        .map(|(reason, n)| (reason.as_str().to_owned(), *n))
                        .collect();
                });
                self.report(NodeEvent::Rejected(rejection)).await;
            }
            Output::Banned(ban) => self.report(NodeEvent::Banned(ban)).await,
            Output::KeyShared { round } => self.report(NodeEvent::KeyShared { round }).await,
        }
        Ok(None)
    }

    /// Notes in the status that a round ended on `head` (`contributions`
    /// applied, when this node finalized it).
    fn round_done(&self, head: Head, contributions: Option<usize>) {
        let behind = self.engine.members_behind(head.round).count();
        self.status.send_modify(|s| {
            s.rounds_done += 1;
            s.round = head.round;
            s.peers_behind = behind;
            s.checkpoint = head.base.to_string();
            if let Some(n) = contributions {
                s.last_contributions = n;
            }
        });
    }

    /// Adds to the status' byte counters.
    fn count_bytes(&self, received: usize, sent: usize) {
        self.status.send_modify(|s| {
            s.bytes_in += received as u64;
            s.bytes_out += sent as u64;
        });
    }

    /// Announces this node's contribution again if its round still gathers
    /// contributions; otherwise stops repeating it.
    fn repeat_announcement(&mut self) {
        match (self.engine.announcement_to_repeat(), self.repeats) {
            (Some(signed), Some(repeats)) => {
                self.publish(&self.topics.announce.clone(), &signed);
                self.repeats = Some(repeats.next(Instant::now()));
            }
            _ => self.repeats = None,
        }
    }

    fn publish<T: codec::Message>(&mut self, topic: &gossipsub::IdentTopic, value: &T) {
        if let Ok(bytes) = codec::encode(value) {
            self.count_bytes(0, bytes.len());
            // No peer subscribed yet is not an error: the round's deadline
            // and the commits carry on without this message.
            let _ = self
                .swarm
                .behaviour_mut()
                .gossipsub
                .publish(topic.clone(), bytes);
        }
    }

    async fn report(&mut self, event: NodeEvent) {
        let _ = self.events.send(event).await;
    }
}

/// When to feed the engine its next tick: at the deadline it reports, unless
/// that deadline was already ticked for. A round past its deadline without
/// enough contributions stays there until something arrives; waking for
/// the same deadline again would spin.
fn next_tick(due: Option<Millis>, ticked: Option<Millis>) -> Option<Millis> {
    due.filter(|at| ticked.is_none_or(|done| *at > done))
}

#[cfg(test)]
mod tests {
    use super::next_tick;

    #[test]
    fn a_deadline_is_ticked_for_once() {
        assert_eq!(next_tick(Some(5_000), None), Some(5_000));
        // Ticked at its deadline and the round still waits for
        // contributions: no timed wake until something changes.
        assert_eq!(next_tick(Some(5_000), Some(5_000)), None);
        // A later deadline (a commit window, the next round) is waited for.
        assert_eq!(next_tick(Some(7_000), Some(5_000)), Some(7_000));
        assert_eq!(next_tick(None, Some(5_000)), None);
    }
}
