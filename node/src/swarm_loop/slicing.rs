//! Serving a checkpoint in slices without stopping the event loop.
//!
//! A slice is cut from the checkpoint's bytes and its BLAKE3 tree
//! ([`Outboard`]), which take a copy of the whole state and a pass of
//! hashing to build: about a third of a second for a 25M-parameter model's
//! 200 MB, seconds for larger ones. They are built on a worker thread when a
//! peer first asks for a checkpoint; requests for it wait meanwhile and are
//! answered when it is ready. The last checkpoint built is kept for the
//! next requests. Besides its head and the current round's outer-step
//! results, a node serves its run's genesis checkpoint (read from its data
//! directory), which a node joining the run without holding it fetches.

use std::collections::HashMap;
use std::sync::Arc;

use p2ptrain_protocol::Digest;
use tokio::sync::mpsc;

use super::Node;
use crate::chain::{ChainState, DataDir};
use crate::net::codec::{FetchRequest, FetchResponse};
use crate::net::fetch::InboundFetch;
use crate::net::slices::Outboard;

/// The checkpoints served in slices.
pub(super) struct Slicing {
    /// The last one built.
    ready: Option<Arc<Outboard>>,
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
    /// The checkpoint's bytes, with their tree; `None` if they cannot be
    /// read.
    fn build(self) -> Option<Outboard> {
        let bytes = match self {
            Source::Held(state) => state.to_bytes(),
            Source::Genesis(data) => data.genesis_bytes().ok()?,
        };
        Some(Outboard::new(bytes))
    }
}

impl Slicing {
    pub(super) fn new() -> Self {
        let (built_tx, built_rx) = mpsc::channel(2);
        Self {
            ready: None,
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
}

/// The answer to a slice request from `served`.
fn slice(served: &Outboard, start: u64, len: u64) -> FetchResponse {
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
        if let Some(served) = slicing.ready.as_ref().filter(|s| s.hash() == hash) {
            let response = slice(served, start, len);
            return self.respond(inbound, response);
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
            let response = match (&served, inbound.request) {
                (Some(served), FetchRequest::CheckpointSlice { start, len, .. }) => {
                    slice(served, start, len)
                }
                _ => FetchResponse::Missing,
            };
            self.respond(inbound, response);
        }
        if served.is_some() {
            self.slicing.ready = served;
        }
    }
}
