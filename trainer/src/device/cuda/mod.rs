//! The GPU side of the trainer: the error-feedback residual in device
//! memory ([`Feedback`]) and the training kernels of the fused ops
//! ([`ops`]).

mod feedback;
pub(crate) mod ops;

pub(crate) use feedback::Feedback;
