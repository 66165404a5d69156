//! What makes a node's update each round. A real node trains its
//! [`Replica`](super::Replica); anything else that produces a compressed
//! update (a benchmark's fixed pseudo-gradient, a test's poisoned one) plugs
//! in through [`Worker`].

use std::ops::ControlFlow;

use super::ReplicaError;
use crate::engine::LocalUpdate;

/// How far a session has got, reported after every inner step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepProgress {
    /// Steps done in this session.
    pub step: u32,
    /// Steps a session takes.
    pub steps: u32,
    /// The loss of the step just taken (nats per token).
    pub loss: f32,
}

/// The source of a node's update for each round.
///
/// The node calls [`session`](Worker::session) on a blocking thread once per
/// round it trains, from the round's checkpoint, and returns updates the
/// round did not apply through
/// [`return_to_residual`](Worker::return_to_residual).
pub trait Worker: Send + 'static {
    /// Produces the compressed update for one round from the parameters
    /// `start`, calling `progress` after each inner step; when `progress`
    /// breaks, the session ends at once with [`ReplicaError::Stopped`],
    /// its residual untouched.
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
