//! What makes a node's update each round. A real node trains its
//! [`Replica`](super::Replica); anything else that produces a compressed
//! update (a benchmark's fixed pseudo-gradient, a test's poisoned one) plugs
//! in through [`Worker`].

use std::ops::ControlFlow;
use std::sync::Arc;

pub use p2ptrain_trainer::PassProgress;

use super::ReplicaError;
use crate::engine::LocalUpdate;

/// How far a session has got, reported after every inner step and, when a
/// step runs in passes (a large model's batch on the CPU), after each pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepProgress {
    /// Steps done in this session.
    pub step: u32,
    /// Steps a session takes.
    pub steps: u32,
    /// The step under way, when it runs in passes: the passes it has done
    /// and takes. `None` in the report of a finished step.
    pub pass: Option<PassProgress>,
    /// The loss of the last step done (nats per token); `None` before the
    /// first.
    pub loss: Option<f32>,
}

/// The source of a node's update for each round.
///
/// The node calls [`session`](Worker::session) on a blocking thread once per
/// round it trains, from the round's checkpoint, and returns updates the
/// round did not apply through
/// [`return_to_residual`](Worker::return_to_residual).
pub trait Worker: Send + 'static {
    /// Produces the compressed update for one round from the parameters
    /// `start`, calling `progress` after each inner step (and each pass of
    /// a step in passes); when `progress` breaks, the session ends at once
    /// with [`ReplicaError::Stopped`], its residual untouched.
    ///
    /// # Errors
    ///
    /// [`ReplicaError`] when training or compression fails, or the session
    /// was stopped.
    fn session(
        &mut self,
        start: &[f32],
        progress: &mut dyn FnMut(StepProgress) -> ControlFlow<()>,
    ) -> Result<LocalUpdate, ReplicaError>;

    /// Mean training loss of the last session, if it trained.
    fn last_loss(&self) -> Option<f32>;

    /// Takes back an update of its own that was not applied.
    ///
    /// # Errors
    ///
    /// [`ReplicaError`] if the payload does not decode or fit.
    fn return_to_residual(&mut self, payload: &[u8]) -> Result<(), ReplicaError>;

    /// The error-feedback residual, to save when the node stops; `None` for
    /// a worker that keeps none.
    ///
    /// # Errors
    ///
    /// [`ReplicaError`] if it cannot be read (from a GPU).
    fn residual(&self) -> Result<Option<Vec<f32>>, ReplicaError>;

    /// Restores a saved residual.
    ///
    /// # Errors
    ///
    /// [`ReplicaError`] if it does not fit.
    fn restore_residual(&mut self, values: &[f32]) -> Result<(), ReplicaError>;
}

/// The node's worker, or, while it is away in a session, the updates handed
/// back meanwhile. A session owns the residual until it ends, so an update
/// that a round (or an adopted branch) left out while the worker trained
/// goes into the residual when the worker returns, and the next session
/// carries it.
pub(super) struct WorkerSlot {
    worker: Option<Box<dyn Worker>>,
    returns: Vec<Arc<[u8]>>,
}

impl WorkerSlot {
    pub fn new(worker: Box<dyn Worker>) -> Self {
        Self {
            worker: Some(worker),
            returns: Vec::new(),
        }
    }

    /// The worker, for a session; `None` while one is under way.
    pub fn take(&mut self) -> Option<Box<dyn Worker>> {
        self.worker.take()
    }

    /// The worker back from a session; it takes the updates handed back
    /// while it was away.
    ///
    /// # Errors
    ///
    /// [`ReplicaError`] if one of them does not decode or fit.
    pub fn put_back(&mut self, worker: Box<dyn Worker>) -> Result<(), ReplicaError> {
        let worker = self.worker.insert(worker);
        for payload in self.returns.drain(..) {
            worker.return_to_residual(&payload)?;
        }
        Ok(())
    }

    /// Hands back an update of this node's that no round applied: to the
    /// worker now, or when it returns from its session.
    ///
    /// # Errors
    ///
    /// [`ReplicaError`] if the payload does not decode or fit.
    pub fn return_to_residual(&mut self, payload: Arc<[u8]>) -> Result<(), ReplicaError> {
        match self.worker.as_mut() {
            Some(worker) => worker.return_to_residual(&payload),
            None => {
                self.returns.push(payload);
                Ok(())
            }
        }
    }

    /// The worker, unless it is in a session.
    pub fn get_mut(&mut self) -> Option<&mut Box<dyn Worker>> {
        self.worker.as_mut()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A worker that notes what it is handed back.
    struct Noting(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Worker for Noting {
        fn session(
            &mut self,
            _: &[f32],
            _: &mut dyn FnMut(StepProgress) -> ControlFlow<()>,
        ) -> Result<LocalUpdate, ReplicaError> {
            Err(ReplicaError::Stopped)
        }

        fn last_loss(&self) -> Option<f32> {
            None
        }

        fn return_to_residual(&mut self, payload: &[u8]) -> Result<(), ReplicaError> {
            self.0.lock().unwrap().push(payload.to_vec());
            Ok(())
        }

        fn residual(&self) -> Result<Option<Vec<f32>>, ReplicaError> {
            Ok(None)
        }

        fn restore_residual(&mut self, _: &[f32]) -> Result<(), ReplicaError> {
            Ok(())
        }
    }

    #[test]
    fn an_update_handed_back_during_a_session_reaches_the_worker_when_it_returns() {
        let noted = Arc::new(Mutex::new(Vec::new()));
        let mut slot = WorkerSlot::new(Box::new(Noting(noted.clone())));
        slot.return_to_residual(Arc::from(&b"now"[..])).unwrap();
        assert_eq!(*noted.lock().unwrap(), [b"now".to_vec()]);

        let away = slot.take().unwrap();
        assert!(slot.get_mut().is_none());
        slot.return_to_residual(Arc::from(&b"later"[..])).unwrap();
        slot.return_to_residual(Arc::from(&b"and this"[..]))
            .unwrap();
        assert_eq!(noted.lock().unwrap().len(), 1);
        slot.put_back(away).unwrap();
        assert_eq!(
            *noted.lock().unwrap(),
            [b"now".to_vec(), b"later".to_vec(), b"and this".to_vec()]
        );
        // Handed over once.
        let again = slot.take().unwrap();
        slot.put_back(again).unwrap();
        assert_eq!(noted.lock().unwrap().len(), 3);
    }
}
