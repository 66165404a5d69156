//! Joining a run that the data directory does not hold yet: the run's
//! manifest and genesis checkpoint, fetched from peers of the run and
//! checked against the run id before the node starts on them.
//!
//! The manifest's blake3 is the run id, so any peer may send it: a peer
//! that runs another run answers that it holds none. The genesis checkpoint
//! comes in slices from every peer that sent the manifest, each slice
//! checked against the manifest's genesis hash as it arrives (the download
//! a node catching up uses, [`super::download`]).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use futures::StreamExt;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::SwarmEvent;
use libp2p::{mdns, Multiaddr, PeerId, Swarm};
use p2ptrain_protocol::{codec, Digest, InvalidManifest, RunManifest, SigningKey};
use tokio::time::Instant;

use super::download::{Download, Progress};
use super::error::{dial_failure, with_causes};
use crate::chain::ChainState;
use crate::engine::Head;
use crate::net::codec::{FetchRequest, FetchResponse};
use crate::net::fetch::{FetchAnswer, FetchError, FetchId, Fetcher};
use crate::net::{build_swarm, Behaviour, BehaviourEvent, NetConfig, NetError};

/// What [`fetch_run`] reports as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrolling {
    /// A peer was asked for the run's manifest.
    Asked(PeerId),
    /// A peer holds no manifest of the run: it runs another one.
    NotOnRun(PeerId),
    /// A peer could not answer the request (an older p2pnode that does not
    /// know it, or a connection that failed).
    NoAnswer {
        /// The peer.
        peer: PeerId,
        /// What went wrong.
        why: String,
    },
    /// The manifest arrived and matched the run id.
    Manifest {
        /// The peer that sent it first.
        from: PeerId,
        /// The run's name.
        name: String,
        /// The genesis checkpoint's length in bytes.
        genesis_len: u64,
    },
    /// Bytes of the genesis checkpoint held so far, and its length.
    Genesis {
        /// Bytes held.
        held: u64,
        /// Bytes in all.
        total: u64,
    },
    /// A dial failed (the text says why).
    DialFailed(String),
}

impl fmt::Display for Enrolling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Asked(peer) => write!(f, "asking {peer} for the run"),
            Self::NotOnRun(peer) => write!(f, "{peer} does not run it"),
            Self::NoAnswer { peer, why } => write!(f, "{peer} could not answer: {why}"),
            Self::Manifest {
                from,
                name,
                genesis_len,
            } => write!(
                f,
                "manifest of \"{name}\" from {from}; fetching its genesis checkpoint ({})",
                bytes(*genesis_len)
            ),
            Self::Genesis { held, total } => {
                write!(
                    f,
                    "genesis checkpoint: {} of {}",
                    bytes(*held),
                    bytes(*total)
                )
            }
            Self::DialFailed(why) => write!(f, "could not connect: {why}"),
        }
    }
}

/// `n` bytes for people.
fn bytes(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / f64::from(1 << 20))
    } else {
        format!("{n} bytes")
    }
}

/// Why [`fetch_run`] brought no run.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    /// The network could not be set up.
    #[error(transparent)]
    Net(#[from] NetError),
    /// No peer sent the manifest in time.
    #[error(
        "no peer of run {run} sent it within {} s: of the peers reached, {others} are on \
         another run and {unanswered} could not answer (a p2pnode older than this request \
         cannot); give the address of a node of this run with --bootstrap",
        waited.as_secs()
    )]
    NoPeer {
        /// The run.
        run: Digest,
        /// How long it waited.
        waited: Duration,
        /// Peers that answered that they run another run.
        others: usize,
        /// Peers that could not answer.
        unanswered: usize,
    },
    /// The run's manifest, checked against the id, is one no node can run.
    #[error("run {run} is not one a node can run: {error}")]
    Unrunnable {
        /// The run.
        run: Digest,
        /// The field out of range.
        error: InvalidManifest,
    },
    /// The genesis checkpoint stopped arriving.
    #[error(
        "the genesis checkpoint stopped arriving at {} of {}: no slice came for {} s",
        bytes(*held),
        bytes(*total),
        waited.as_secs()
    )]
    Stalled {
        /// Bytes held.
        held: u64,
        /// Bytes in all.
        total: u64,
        /// How long nothing came.
        waited: Duration,
    },
}

/// Fetches run `run` from its peers: its manifest, checked against the id,
/// and its genesis checkpoint, checked against the manifest. Dials
/// `bootstrap` (and, if `net` says so, the peers mDNS finds); gives up when
/// nothing new has arrived for `patience`. `progress` hears each step.
///
/// ```no_run
/// # async fn enrol(
/// #     key: p2ptrain_protocol::SigningKey,
/// #     run: p2ptrain_protocol::Digest,
/// #     peer: libp2p::Multiaddr,
/// # ) -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use p2ptrain_node::chain::DataDir;
/// use p2ptrain_node::net::NetConfig;
/// use p2ptrain_node::swarm_loop::fetch_run;
///
/// let patience = Duration::from_secs(120);
/// let (manifest, genesis) =
///     fetch_run(run, &key, &NetConfig::default(), &[peer], patience, &mut |e| eprintln!("{e}"))
///         .await?;
/// DataDir::new("run1").write_run(&manifest, &genesis)?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`EnrolError`]: no peer of the run, a download that stalled, or a
/// network that could not be set up.
pub async fn fetch_run(
    run: Digest,
    key: &SigningKey,
    net: &NetConfig,
    bootstrap: &[Multiaddr],
    patience: Duration,
    progress: &mut dyn FnMut(Enrolling),
) -> Result<(RunManifest, ChainState), EnrolError> {
    let mut swarm = build_swarm(key, net)?;
    for address in bootstrap {
        if let Err(error) = swarm.dial(address.clone()) {
            progress(Enrolling::DialFailed(format!(
                "{address}: {}",
                with_causes(&error)
            )));
        }
    }
    // Enrolment asks for the run's manifest and checkpoint slices, never a
    // payload: no payload answer is taken.
    let (fetcher, mut answers) =
        Fetcher::new(swarm.behaviour().fetch.new_control(), net.fetch_timeout, 0);
    let mut enrolment = Enrolment {
        run,
        fetcher,
        asked: BTreeMap::new(),
        manifest: None,
        others: 0,
        unanswered: 0,
        progress,
    };
    let private = net.psk.is_some();
    let mut last_news = Instant::now();
    loop {
        let news = tokio::select! {
            event = swarm.select_next_some() => enrolment.on_swarm_event(&mut swarm, event, private),
            Some(answer) = answers.recv() => enrolment.on_answer(answer),
            () = tokio::time::sleep_until(last_news + patience) => {
                return Err(enrolment.gave_up(patience));
            }
        };
        match news {
            News::None => {}
            News::Some => last_news = Instant::now(),
            News::Done(manifest, genesis) => return Ok((*manifest, genesis)),
            News::Unrunnable(error) => return Err(EnrolError::Unrunnable { run, error }),
        }
    }
}

/// What an event brought.
enum News {
    /// Nothing that counts as progress.
    None,
    /// Progress: the wait starts again.
    Some,
    /// The run, whole.
    Done(Box<RunManifest>, ChainState),
    /// The run's manifest, which no node can run.
    Unrunnable(InvalidManifest),
}

/// The run held so far, once its manifest is here.
struct Fetched {
    manifest: RunManifest,
    genesis: Download<FetchId>,
}

/// The state of [`fetch_run`].
struct Enrolment<'a> {
    run: Digest,
    fetcher: Fetcher,
    /// Manifest requests in flight, and the peer asked.
    asked: BTreeMap<FetchId, PeerId>,
    manifest: Option<Fetched>,
    /// Peers that answered without the manifest.
    others: usize,
    /// Peers whose answer failed.
    unanswered: usize,
    progress: &'a mut dyn FnMut(Enrolling),
}

impl Enrolment<'_> {
    fn on_swarm_event(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        event: SwarmEvent<BehaviourEvent>,
        private: bool,
    ) -> News {
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                ..
            } if num_established.get() == 1 => {
                let id = self
                    .fetcher
                    .send(peer_id, FetchRequest::RunManifest(self.run));
                self.asked.insert(id, peer_id);
                (self.progress)(Enrolling::Asked(peer_id));
            }
            SwarmEvent::OutgoingConnectionError { error, .. } => {
                (self.progress)(Enrolling::DialFailed(dial_failure(&error, private)));
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                let mut by_peer: BTreeMap<PeerId, Vec<Multiaddr>> = BTreeMap::new();
                for (peer, address) in found {
                    by_peer.entry(peer).or_default().push(address);
                }
                for (peer, addresses) in by_peer {
                    if !swarm.is_connected(&peer) {
                        let _ = swarm.dial(DialOpts::peer_id(peer).addresses(addresses).build());
                    }
                }
            }
            _ => {}
        }
        News::None
    }

    fn on_answer(&mut self, answer: FetchAnswer) -> News {
        if let Some(peer) = self.asked.remove(&answer.id) {
            return self.on_manifest(peer, answer.result);
        }
        let body = match answer.result {
            Ok(FetchResponse::Found { body, .. }) => Some(body),
            Ok(FetchResponse::Missing) | Err(_) => None,
        };
        let Some(fetched) = &mut self.manifest else {
            return News::None;
        };
        if !fetched.genesis.owns(&answer.id) {
            return News::None;
        }
        let arrived = body.is_some();
        match fetched.genesis.answer(answer.id, body.as_deref()) {
            Progress::Done(genesis) => {
                let total = genesis.byte_len();
                (self.progress)(Enrolling::Genesis { held: total, total });
                let Some(fetched) = self.manifest.take() else {
                    return News::None;
                };
                News::Done(Box::new(fetched.manifest), genesis)
            }
            // Slices left with no peer to ask wait for another peer of the
            // run to connect.
            Progress::Going | Progress::Failed => {
                self.pump();
                let (held, total) = self
                    .manifest
                    .as_ref()
                    .map_or((0, 0), |f| f.genesis.progress());
                if arrived {
                    (self.progress)(Enrolling::Genesis { held, total });
                }
                if arrived {
                    News::Some
                } else {
                    News::None
                }
            }
        }
    }

    /// Takes `peer`'s answer to the manifest request: a peer of the run is
    /// asked for genesis slices from then on.
    fn on_manifest(&mut self, peer: PeerId, answer: Result<FetchResponse, FetchError>) -> News {
        let body = match answer {
            Ok(FetchResponse::Found { body, .. }) => Some(body),
            Ok(FetchResponse::Missing) => None,
            Err(error) => {
                self.unanswered += 1;
                let why = error.to_string();
                (self.progress)(Enrolling::NoAnswer { peer, why });
                return News::None;
            }
        };
        // A body that is not the run's manifest counts as a "not held".
        let manifest = body
            .filter(|bytes| Digest::of(bytes) == self.run)
            .and_then(|bytes| codec::decode::<RunManifest>(&bytes).ok());
        let Some(manifest) = manifest else {
            self.others += 1;
            (self.progress)(Enrolling::NotOnRun(peer));
            return News::None;
        };
        if let Err(error) = manifest.validate() {
            return News::Unrunnable(error);
        }
        match &mut self.manifest {
            Some(fetched) => fetched.genesis.add_peer(peer),
            None => {
                let params = p2ptrain_trainer::ParamLayout::gpt2(&manifest.model).len();
                let total = ChainState::len_of(params);
                let genesis = Head {
                    round: 0,
                    base: manifest.genesis,
                    chain_tokens: 0,
                    last_contributors: 0,
                };
                (self.progress)(Enrolling::Manifest {
                    from: peer,
                    name: manifest.name.clone(),
                    genesis_len: total,
                });
                self.manifest = Some(Fetched {
                    manifest,
                    genesis: Download::new(genesis, params, peer, []),
                });
            }
        }
        self.pump();
        News::Some
    }

    /// Sends the genesis download's next slice requests.
    fn pump(&mut self) {
        let Some(fetched) = &mut self.manifest else {
            return;
        };
        let fetcher = &mut self.fetcher;
        let hash = fetched.manifest.genesis;
        fetched.genesis.pump(|peer, start, len| {
            Some(fetcher.send(peer, FetchRequest::CheckpointSlice { hash, start, len }))
        });
    }

    /// Why nothing came for `waited`.
    fn gave_up(&self, waited: Duration) -> EnrolError {
        match &self.manifest {
            None => EnrolError::NoPeer {
                run: self.run,
                waited,
                others: self.others,
                unanswered: self.unanswered,
            },
            Some(fetched) => {
                let (held, total) = fetched.genesis.progress();
                EnrolError::Stalled {
                    held,
                    total,
                    waited,
                }
            }
        }
    }
}
