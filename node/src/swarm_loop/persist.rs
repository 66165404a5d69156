//! What a node keeps on disk besides its records: head.ckpt, written when
//! due, and its error-feedback residual, saved when it stops.

use std::sync::Arc;
use std::time::Duration;

use p2ptrain_protocol::Digest;

use super::{Node, NodeError, Worker};
use crate::chain::{ChainError, ChainState, DataDir};
use p2ptrain_protocol::RoundRecord;

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
    /// those after head.ckpt (see [`chain::resume()`](crate::chain::resume())).
    pub(super) async fn set_state(
        &mut self,
        state: Arc<ChainState>,
        hash: Digest,
        must_write: bool,
    ) -> Result<(), NodeError> {
        // Checkpoints served of the states let go are dropped first, with
        // the states they read, so that the old state's memory is free.
        self.slicing.let_go(|held| *held == hash);
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

    /// Writes a finalized round's payloads and record off the event loop
    /// (each file synced, so a round of large payloads takes a while),
    /// after the rounds' writes already under way; see [`RoundWrites`].
    pub(super) async fn write_round(
        &mut self,
        round: u64,
        record: RoundRecord,
        payloads: Vec<Arc<[u8]>>,
    ) -> Result<(), NodeError> {
        Ok(self
            .round_writes
            .push(&self.data, round, record, payloads)
            .await?)
    }

    /// Waits for the rounds' writes under way, if any.
    pub(super) async fn finish_round_writes(&mut self) -> Result<(), NodeError> {
        Ok(self.round_writes.finish(&self.data).await?)
    }

    /// Writes the current state to head.ckpt in the background, after the
    /// write under way (if any) and the rounds' records before it have
    /// finished.
    pub(super) async fn write_head(&mut self) -> Result<(), NodeError> {
        self.finish_round_writes().await?;
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
                error: std::io::Error::other(e),
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

/// Finalized rounds' payloads and records, written off the event loop one
/// round after another, in the order asked.
///
/// A write that failed stops the node when it is next looked at: at the
/// next round's write, at the next head.ckpt (which waits for the records
/// before it), or when the node stops. A node killed while rounds are
/// being written restarts from the last round on disk and catches up, as
/// from a kill a moment earlier.
#[derive(Debug, Default)]
pub(super) struct RoundWrites {
    /// The last round's writes, which wait for those before.
    tail: Option<tokio::task::JoinHandle<Result<(), ChainError>>>,
}

impl RoundWrites {
    /// Queues round `round`'s payloads and record in `data`, after the
    /// writes under way; first reports a queued write that has failed.
    pub(super) async fn push(
        &mut self,
        data: &DataDir,
        round: u64,
        record: RoundRecord,
        payloads: Vec<Arc<[u8]>>,
    ) -> Result<(), ChainError> {
        if self.tail.as_ref().is_some_and(|w| w.is_finished()) {
            self.finish(data).await?;
        }
        let before = self.tail.take();
        let (data, root) = (data.clone(), data.clone());
        self.tail = Some(tokio::spawn(async move {
            if let Some(before) = before {
                joined(&root, before.await)?;
            }
            let write = tokio::task::spawn_blocking(move || {
                for bytes in &payloads {
                    data.write_payload(bytes)?;
                }
                data.write_record(round, &record)
            });
            joined(&root, write.await)
        }));
        Ok(())
    }

    /// Waits for every write queued; the first failure, if any.
    pub(super) async fn finish(&mut self, data: &DataDir) -> Result<(), ChainError> {
        match self.tail.take() {
            Some(writes) => joined(data, writes.await),
            None => Ok(()),
        }
    }
}

/// What a write off the event loop came to; a task that failed to finish
/// (it panicked) is a write error in `data`.
fn joined<T>(
    data: &DataDir,
    result: Result<Result<T, ChainError>, tokio::task::JoinError>,
) -> Result<T, ChainError> {
    result.unwrap_or_else(|e| {
        Err(ChainError::Write {
            path: data.root().display().to_string(),
            error: std::io::Error::other(e),
        })
    })
}

#[cfg(test)]
pub(super) mod tests {
    use p2ptrain_protocol::{Commit, IdSet, PeerKey, Signed, SigningKey};

    use super::*;
    use crate::scratch::scratch_dir;

    /// A record of `round` with no contributions, signed by a fixed key.
    pub(in crate::swarm_loop) fn record(round: u64) -> RoundRecord {
        let key = SigningKey::from_bytes(&[4; 32]);
        let commit = Commit {
            run: Digest::of(b"run"),
            round,
            base: Digest::of(&round.to_le_bytes()),
            committer: PeerKey::from(&key),
            contributions: IdSet::new(Vec::new()),
            result: Digest::of(&(round + 1).to_le_bytes()),
            chain_tokens: round,
        };
        RoundRecord {
            commit: Signed::sign(&commit, &key).unwrap(),
            contributions: Vec::new(),
        }
    }

    #[tokio::test]
    async fn every_round_queued_is_on_disk_when_the_writes_finish() {
        let data = DataDir::new(scratch_dir("round-writes"));
        let mut writes = RoundWrites::default();
        let payload = |round: u64| Arc::<[u8]>::from(vec![round as u8; 1000]);
        for round in 0..3 {
            writes
                .push(&data, round, record(round), vec![payload(round)])
                .await
                .unwrap();
        }
        writes.finish(&data).await.unwrap();
        for round in 0..3 {
            assert_eq!(data.record(round).unwrap(), Some(record(round)));
            let stored = data.payload(&Digest::of(&payload(round))).unwrap();
            assert_eq!(stored, payload(round).to_vec());
        }
        // Nothing left to wait for.
        writes.finish(&data).await.unwrap();
        let _ = std::fs::remove_dir_all(data.root());
    }

    #[tokio::test]
    async fn a_write_that_failed_is_reported_and_stops_the_rounds_after_it() {
        let root = scratch_dir("round-writes-fail");
        // A folder where round 0's record goes: its write fails.
        std::fs::create_dir_all(root.join("records").join("00000000.bin")).unwrap();
        let data = DataDir::new(root.clone());
        let mut writes = RoundWrites::default();
        writes.push(&data, 0, record(0), Vec::new()).await.unwrap();
        writes.push(&data, 1, record(1), Vec::new()).await.unwrap();
        assert!(matches!(
            writes.finish(&data).await,
            Err(ChainError::Write { .. })
        ));
        // Round 1 would have landed, leaving a hole below it.
        assert!(!data.has_record(1));
        let _ = std::fs::remove_dir_all(root);
    }
}
