//! The one error type of the kernels.

use p2ptrain_protocol::{Digest, InvalidSettings};

/// Why a kernel refused its input.
///
/// Every check happens before any output is written: a call that returns an
/// error has left its buffers (the residual of [`compress`](crate::compress()),
/// the dense buffer of [`decompress_into`](crate::decompress_into)) as they
/// were.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum KernelError {
    /// The compression settings are out of range.
    #[error("invalid compression settings: {0}")]
    InvalidSettings(#[from] InvalidSettings),
    /// Two buffers that must be the same length are not.
    #[error("length mismatch: expected {expected} entries, found {found}")]
    LengthMismatch {
        /// The length the call requires (the delta's, or the payload's).
        expected: usize,
        /// The length it was given.
        found: usize,
    },
    /// `residual[index] + delta[index]` is NaN or infinite (either input is,
    /// or their sum overflows). The lowest such index is reported.
    #[error("non-finite value at index {index}")]
    NonFinite {
        /// Position in the flat buffer.
        index: usize,
    },
    /// A weight is NaN or infinite, or (for aggregation) not positive.
    #[error("invalid weight {0}: must be finite (and positive to aggregate)")]
    InvalidWeight(f32),
    /// A residual decay factor outside `[0, 1]`.
    #[error("invalid residual decay {0}: must be between 0 and 1")]
    InvalidDecay(f32),
    /// Aggregation was asked for the mean of nothing.
    #[error("nothing to aggregate")]
    NoInputs,
    /// Two aggregation inputs carry the same key.
    #[error("duplicate aggregation key {0}")]
    DuplicateKey(Digest),
    /// An aggregation input's payload does not have the length or chunk
    /// length of the others.
    #[error("payload {key} has length {len} and chunk length {chunk_len}, unlike the others")]
    MismatchedPayloads {
        /// Key of the input that differs from the first in canonical order.
        key: Digest,
        /// Its payload's length.
        len: usize,
        /// Its payload's chunk length.
        chunk_len: u32,
    },
    /// The GPU or its driver failed (feature `cuda`): a launch, a copy or
    /// the run-time compilation of the kernels.
    #[error("GPU error: {0}")]
    Device(String),
}
