//! What a node keeps on disk besides its records: head.ckpt, written when
//! due, and its error-feedback residual, saved when it stops.

use std::sync::Arc;
use std::time::Duration;

use p2ptrain_protocol::Digest;

use super::{Node, NodeError, Worker};
use crate::chain::{ChainError, ChainState, DataDir};

/// Gives `worker` the residual saved in `data` if it goes with
/// `checkpoint`; whether it did.
pub(super) fn restore_residual(
    data: &DataDir,
    params: usize,
    checkpoint: Digest,
    worker: &mut dyn Worker,
) -> Result<bool, NodeError> {
    match data.residual(params)? {
        Some((tag, values)) if tag == checkpoint => {
            worker.restore_residual(&values)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// A head.ckpt write that took less than this is done in line.
const QUICK_HEAD_WRITE: Duration = Duration::from_millis(50);

/// The node's writes of head.ckpt (see `Node::set_state`).
pub(super) struct HeadWrites {
    /// The hash of the state last written or being written.
    pub(super) written: Option<Digest>,
    /// The write under way: its duration when done.
    pub(super) pending: Option<tokio::task::JoinHandle<Result<Duration, ChainError>>>,
    /// How long the last write took.
    pub(super) last_cost: Duration,
    /// When it finished.
    pub(super) last_done: std::time::Instant,
}

impl Node {
    /// Takes `state` (whose hash is `hash`) as the chain's checkpoint, and
    /// writes it to head.ckpt in the background when `must_write` (an
    /// adopted checkpoint has no records to replay) or when a write is due:
    /// writing may take a tenth of the node's time at most, so a small
    /// model's head is written every round (in line) and a large one's
    /// every few (in the background).
    /// The records are written every round, and a restarted node replays
    /// those after head.ckpt (see [`chain::resume`]).
    pub(super) async fn set_state(
        &mut self,
        state: Arc<ChainState>,
        hash: Digest,
        must_write: bool,
    ) -> Result<(), NodeError> {
        let old = std::mem::replace(&mut self.state, state);
        // Nothing else holds the old state (no session, write or fetch
        // uses it): its memory serves the next outer step.
        if let Ok(old) = Arc::try_unwrap(old) {
            self.buffers.spare = Some(old);
        }
        self.state_hash = hash;
        let due = self.head.last_done + self.head.last_cost * 10 <= std::time::Instant::now();
        if must_write || (due && self.head.pending.is_none()) {
            self.write_head().await?;
            // A quick write (a small model's) is waited for, so head.ckpt
            // is current when the round is reported.
            if self.head.last_cost < QUICK_HEAD_WRITE {
                self.finish_head_write().await?;
            }
        }
        Ok(())
    }

    /// Writes the current state to head.ckpt in the background, after the
    /// write under way (if any) has finished.
    pub(super) async fn write_head(&mut self) -> Result<(), NodeError> {
        self.finish_head_write().await?;
        if self.head.written == Some(self.state_hash) {
            return Ok(());
        }
        let (data, state) = (self.data.clone(), self.state.clone());
        self.head.written = Some(self.state_hash);
        self.head.pending = Some(tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            data.write_head(&state).map(|()| started.elapsed())
        }));
        Ok(())
    }

    /// Waits for the background write of head.ckpt, if any.
    pub(super) async fn finish_head_write(&mut self) -> Result<(), NodeError> {
        if let Some(write) = self.head.pending.take() {
            let cost = write.await.map_err(|e| ChainError::Write {
                path: self.data.root().join("head.ckpt").display().to_string(),
                reason: e.to_string(),
            })??;
            self.head.last_cost = cost;
            self.head.last_done = std::time::Instant::now();
        }
        Ok(())
    }

    /// Writes head.ckpt if it is behind, and waits for it: before stopping.
    pub(super) async fn flush_head(&mut self) -> Result<(), NodeError> {
        self.write_head().await?;
        self.finish_head_write().await
    }

    /// Stops: ends a session under way after its current step, writes
    /// head.ckpt if it is behind, and saves the residual.
    pub(super) async fn stop(&mut self) -> Result<(), NodeError> {
        self.stop_training
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if self.worker.get_mut().is_none() {
            if let Some((worker, update)) = self.trained_rx.recv().await {
                self.worker.put_back(worker)?;
                // A session that finished anyway: its update was never
                // announced, so it goes back whole.
                if let Ok(update) = update {
                    self.worker.return_to_residual(update.payload)?;
                }
            }
        }
        self.flush_head().await?;
        self.save_residual()
    }

    /// Saves the worker's residual with this node's own updates that no
    /// finalized round applied put back in, tagged with the checkpoint, so
    /// that a restart from that checkpoint loses nothing it trained.
    pub(super) fn save_residual(&mut self) -> Result<(), NodeError> {
        let Some(worker) = self.worker.get_mut() else {
            // Stopped mid-session: the update in training is lost, as in a
            // kill; the next start begins with a zero residual.
            return Ok(());
        };
        for payload in self.engine.unapplied_own_payloads() {
            worker.return_to_residual(&payload)?;
        }
        if let Some(values) = worker.residual()? {
            self.data.write_residual(&self.state_hash, &values)?;
        }
        Ok(())
    }
}
