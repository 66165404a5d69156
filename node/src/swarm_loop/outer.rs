//! The outer step, off the event loop: on a large model it takes long
//! enough (a pass over the whole state) that the loop would otherwise stop
//! serving payloads and commits to the peers that wait for them.

use std::sync::Arc;

use p2ptrain_protocol::Digest;

use super::{Node, NodeError, NodeEvent};
use crate::chain::{Buffers, ChainError, ChainState, StepInput};
use crate::engine::{Accepted, Input};

/// An outer step back from its worker thread.
pub(super) struct Stepped {
    round: u64,
    contributions: usize,
    result: Result<(ChainState, Digest), ChainError>,
    /// The memory it used, for the next step.
    buffers: Buffers,
}

impl Node {
    /// Starts the outer step of `round` from the current state on a worker
    /// thread; [`on_stepped`](Self::on_stepped) takes its result.
    pub(super) fn start_outer_step(&mut self, round: u64, contributions: Vec<Accepted>) {
        let state = Arc::clone(&self.state);
        let outer = self.manifest.outer;
        let mut buffers = std::mem::take(&mut self.buffers);
        let done = self.stepped_tx.clone();
        tokio::task::spawn_blocking(move || {
            let inputs: Vec<StepInput<'_>> = contributions.iter().map(StepInput::from).collect();
            let result = state.outer_step_reusing(&inputs, &outer, &mut buffers);
            let _ = done.blocking_send(Stepped {
                round,
                contributions: inputs.len(),
                result,
                buffers,
            });
        });
    }

    /// Keeps an outer step's result as a tentative checkpoint and tells
    /// the engine.
    pub(super) async fn on_stepped(&mut self, stepped: Stepped) -> Result<(), NodeError> {
        let Stepped {
            round,
            contributions,
            result,
            buffers,
        } = stepped;
        if self.buffers.spare.is_none() {
            self.buffers.spare = buffers.spare;
        }
        let (next, checkpoint) = result?;
        self.tentative.insert(checkpoint, Arc::new(next));
        self.report(NodeEvent::Aggregated {
            round,
            checkpoint,
            contributions,
        })
        .await;
        self.feed(Input::Applied {
            round,
            result: checkpoint,
        })
        .await
    }
}
