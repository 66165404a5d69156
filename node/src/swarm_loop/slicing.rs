//! Serving a checkpoint in slices without stopping the event loop.
//!
//! A slice is cut from the checkpoint's bytes and its BLAKE3 tree
//! ([`Outboard`]). The tree takes a pass of hashing over the bytes to build
//! (about a third of a second for a 25M-parameter model's 200 MB, seconds
//! for larger ones), and is about 6% of their size. It is built on a worker
//! thread when a peer first asks for a checkpoint; requests for it wait
//! meanwhile. Each slice is then cut off the event loop too
//! ([`super::answers`]), from the bytes where they lie: a state the node
//! holds is read in place, not copied.
//!
//! A checkpoint's tree is kept for the next requests while the node holds
//! its state: its head, or an outer-step result of the current round. So
//! each is built at most once, and a peer asking for two of them in turn
//! cannot make the node rebuild each without end.
//!
//! Besides those, a node serves its run's genesis checkpoint, read from its
//! data directory for each slice, which a node joining the run without
//! holding it fetches before the head. Its tree is kept apart, so that a
//! joiner's fetch of it does not cost the head a rebuild, until a round ends
//! in which no one asked for it.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use p2ptrain_protocol::Digest;
use tokio::sync::mpsc;

use super::Node;
use crate::chain::{ChainState, DataDir};
use crate::net::codec::{FetchRequest, FetchResponse};
use crate::net::fetch::InboundFetch;
use crate::net::slices::{Content, OnDisk, Outboard, ReadSeek, SLICE_LEN};

/// The checkpoints served in slices.
pub(super) struct Slicing {
    /// Those built from states the node held when each was kept, genesis
    /// apart.
    held: HashMap<Digest, Arc<Outboard>>,
    /// The run's genesis checkpoint, once asked for.
    genesis: Option<Arc<Outboard>>,
    /// Whether genesis was asked for since the last round ended.
    genesis_asked: bool,
    /// Those being built, with the requests that wait for each.
    building: HashMap<Digest, Vec<InboundFetch>>,
    built_tx: mpsc::Sender<(Digest, Option<Outboard>)>,
    built_rx: mpsc::Receiver<(Digest, Option<Outboard>)>,
}

/// Where a checkpoint served in slices comes from.
enum Source {
    /// A state this node holds in memory.
    Held(Arc<ChainState>),
    /// The run's genesis checkpoint, in the data directory.
    Genesis(DataDir),
}

impl Source {
    /// The checkpoint's bytes, with their tree (built on the serving pool,
    /// ahead of training: a joiner waits for it); `None` if they cannot be
    /// read.
    fn build(self) -> Option<Outboard> {
        let build = || match self {
            Source::Held(state) => Outboard::of(HeldState(state)).ok(),
            Source::Genesis(data) => Outboard::of(OnDisk::new(data.genesis_path()).ok()?).ok(),
        };
        match crate::compute::serving_pool() {
            Some(pool) => pool.install(build),
            None => build(),
        }
    }
}

/// A state the node holds, served where it lies.
struct HeldState(Arc<ChainState>);

impl Content for HeldState {
    fn len(&self) -> u64 {
        self.0.byte_len()
    }

    fn reader(&self) -> io::Result<Box<dyn ReadSeek + '_>> {
        Ok(Box::new(self.0.reader()))
    }
}

impl Slicing {
    pub(super) fn new() -> Self {
        let (built_tx, built_rx) = mpsc::channel(2);
        Self {
            held: HashMap::new(),
            genesis: None,
            genesis_asked: false,
            building: HashMap::new(),
            built_tx,
            built_rx,
        }
    }

    /// The next checkpoint built (`None` if it could not be read), and the
    /// hash it was asked by, for [`Node::on_sliced`].
    pub(super) async fn built(&mut self) -> Option<(Digest, Option<Outboard>)> {
        self.built_rx.recv().await
    }

    /// Checkpoint `hash`, if it is built; `genesis` is the run's.
    fn served(&mut self, hash: Digest, genesis: Digest) -> Option<Arc<Outboard>> {
        if hash == genesis {
            self.genesis_asked = true;
        }
        self.held
            .get(&hash)
            .or(self.genesis.as_ref().filter(|served| served.hash() == hash))
            .cloned()
    }

    /// Keeps a checkpoint just built for the next requests: in the genesis
    /// slot if it is the run's `genesis`, else beside the others whose
    /// states the node still `holds`, if it holds this one (those it no
    /// longer holds are dropped).
    fn keep(&mut self, served: Arc<Outboard>, genesis: Digest, holds: impl Fn(&Digest) -> bool) {
        if served.hash() == genesis {
            self.genesis = Some(served);
            return;
        }
        self.held.retain(|hash, _| holds(hash));
        if holds(&served.hash()) {
            self.held.insert(served.hash(), served);
        }
    }

    /// The node keeps only the states it `holds`: the others' checkpoints
    /// are dropped (and with them the states they read).
    pub(super) fn let_go(&mut self, holds: impl Fn(&Digest) -> bool) {
        self.held.retain(|hash, _| holds(hash));
    }

    /// A round ends, after which the node `holds` only what it says: the
    /// other states' checkpoints are dropped (see [`Self::let_go`]), and
    /// genesis if no one asked for it during the round.
    pub(super) fn round_ended(&mut self, holds: impl Fn(&Digest) -> bool) {
        self.let_go(holds);
        if !std::mem::take(&mut self.genesis_asked) {
            self.genesis = None;
        }
    }
}

/// The answer to a slice request from `served`: `Missing` for a range
/// outside it, or longer than [`SLICE_LEN`], the slice nodes ask for (a
/// longer one would make this node build an answer as large as the whole
/// checkpoint, one per request).
fn slice(served: &Outboard, start: u64, len: u64) -> FetchResponse {
    if len > SLICE_LEN {
        return FetchResponse::Missing;
    }
    match served.slice(start, len) {
        Ok(body) => FetchResponse::Found {
            header: Vec::new(),
            body: Arc::from(body),
        },
        Err(_) => FetchResponse::Missing,
    }
}

impl Node {
    /// Answers a request for a slice of checkpoint `hash`: now if it is
    /// ready, once it is built if this node holds it (its head, a result of
    /// the current round, or its run's genesis), `Missing` otherwise.
    pub(super) fn serve_slice(&mut self, inbound: InboundFetch) {
        let FetchRequest::CheckpointSlice { hash, start, len } = inbound.request else {
            return;
        };
        let slicing = &mut self.slicing;
        if let Some(served) = slicing.served(hash, self.manifest.genesis) {
            return self
                .answers
                .start(inbound.peer, inbound, move || slice(&served, start, len));
        }
        if let Some(waiting) = slicing.building.get_mut(&hash) {
            waiting.push(inbound);
            return;
        }
        let source = if self.state_hash == hash {
            Source::Held(self.state.clone())
        } else if let Some(state) = self.tentative.get(&hash) {
            Source::Held(state.clone())
        } else if self.manifest.genesis == hash {
            Source::Genesis(self.data.clone())
        } else {
            return self.respond(inbound, FetchResponse::Missing);
        };
        slicing.building.insert(hash, vec![inbound]);
        let built = slicing.built_tx.clone();
        tokio::task::spawn_blocking(move || {
            let _ = built.blocking_send((hash, source.build()));
        });
    }

    /// Takes a checkpoint built for slicing: answers the requests that
    /// waited for it, and keeps it for the next ones.
    pub(super) fn on_sliced(&mut self, hash: Digest, served: Option<Outboard>) {
        let waiting = self.slicing.building.remove(&hash).unwrap_or_default();
        // A state is kept by its hash, so the two agree; were they not to
        // (a genesis file changed on disk), nothing is served from it.
        let served = served.map(Arc::new).filter(|s| s.hash() == hash);
        for inbound in waiting {
            match (&served, inbound.request) {
                (Some(served), FetchRequest::CheckpointSlice { start, len, .. }) => {
                    let served = served.clone();
                    self.answers
                        .start(inbound.peer, inbound, move || slice(&served, start, len));
                }
                _ => self.respond(inbound, FetchResponse::Missing),
            }
        }
        if let Some(served) = served {
            let (head, tentative) = (self.state_hash, &self.tentative);
            let holds = |hash: &Digest| *hash == head || tentative.contains_key(hash);
            self.slicing.keep(served, self.manifest.genesis, holds);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(seed: u8) -> io::Result<Arc<Outboard>> {
        Outboard::of(vec![seed; 5_000]).map(Arc::new)
    }

    #[test]
    fn a_slice_longer_than_nodes_ask_for_is_not_served() -> crate::TestResult {
        let served = Outboard::of(vec![7; 3 * SLICE_LEN as usize])?;
        let found = |response| matches!(response, FetchResponse::Found { .. });
        assert!(found(slice(&served, 0, SLICE_LEN)));
        assert!(found(slice(&served, 2 * SLICE_LEN, SLICE_LEN)));
        assert!(!found(slice(&served, 0, SLICE_LEN + 1)));
        assert!(!found(slice(&served, 0, 3 * SLICE_LEN)));
        assert!(!found(slice(&served, 3 * SLICE_LEN, 1)));
        Ok(())
    }

    #[test]
    fn genesis_is_kept_apart_from_the_head_until_a_round_ends_unasked() -> crate::TestResult {
        let (genesis, head, next) = (built(1)?, built(2)?, built(3)?);
        let mut slicing = Slicing::new();
        let holds = |held: Digest| move |hash: &Digest| *hash == held;
        slicing.keep(head.clone(), genesis.hash(), holds(head.hash()));
        assert!(slicing.served(genesis.hash(), genesis.hash()).is_none());
        slicing.keep(genesis.clone(), genesis.hash(), holds(head.hash()));
        // A joiner fetches genesis, then the head: neither is rebuilt.
        for hash in [genesis.hash(), head.hash(), genesis.hash()] {
            let served = slicing.served(hash, genesis.hash()).unwrap();
            assert_eq!(served.hash(), hash);
        }
        // A newer head takes the place of one no longer held, not genesis'.
        slicing.keep(next.clone(), genesis.hash(), holds(next.hash()));
        assert!(slicing.served(head.hash(), genesis.hash()).is_none());
        assert!(slicing.served(next.hash(), genesis.hash()).is_some());
        // Asked for in a round: kept through its end, and asked for again.
        slicing.round_ended(holds(next.hash()));
        assert!(slicing.served(genesis.hash(), genesis.hash()).is_some());
        slicing.round_ended(holds(next.hash()));
        // A round in which only the head is asked for: genesis is dropped.
        assert!(slicing.served(next.hash(), genesis.hash()).is_some());
        slicing.round_ended(holds(next.hash()));
        assert!(slicing.served(genesis.hash(), genesis.hash()).is_none());
        assert!(slicing.served(next.hash(), genesis.hash()).is_some());
        Ok(())
    }

    #[test]
    fn each_state_held_is_built_once_and_dropped_when_no_longer_held() -> crate::TestResult {
        let (genesis, head, result, other) = (built(1)?, built(2)?, built(3)?, built(4)?);
        let (head_hash, result_hash) = (head.hash(), result.hash());
        let mut slicing = Slicing::new();
        // The head and two results of the round are held.
        let in_round = |hash: &Digest| *hash != genesis.hash();
        for served in [&head, &result, &other] {
            slicing.keep(served.clone(), genesis.hash(), in_round);
        }
        // Asked for in turn, each is served as built, none rebuilt.
        for _ in 0..3 {
            for served in [&head, &result, &other] {
                let kept = slicing.served(served.hash(), genesis.hash()).unwrap();
                assert!(Arc::ptr_eq(&kept, served));
            }
        }
        // The round ends on `result`: the others' are dropped.
        slicing.round_ended(|hash| *hash == result_hash);
        assert!(slicing.served(result_hash, genesis.hash()).is_some());
        assert!(slicing.served(head_hash, genesis.hash()).is_none());
        assert!(slicing.served(other.hash(), genesis.hash()).is_none());
        // Keeping one drops those no longer held, without a round's end.
        let next = built(5)?;
        let next_hash = next.hash();
        slicing.keep(next, genesis.hash(), |hash| *hash == next_hash);
        assert!(slicing.served(result_hash, genesis.hash()).is_none());
        assert!(slicing.served(next_hash, genesis.hash()).is_some());
        // One built from a state let go meanwhile is not kept.
        let gone = built(6)?;
        let gone_hash = gone.hash();
        slicing.keep(gone, genesis.hash(), |hash| *hash == next_hash);
        assert!(slicing.served(gone_hash, genesis.hash()).is_none());
        assert!(slicing.served(next_hash, genesis.hash()).is_some());
        Ok(())
    }
}
