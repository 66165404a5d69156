//! The trainer's error type.

use std::path::PathBuf;

/// What went wrong in the trainer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainerError {
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    /// The training data could not be read or sampled.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// A model configuration that cannot be built.
    #[error("invalid model configuration: {0}")]
    Config(String),
    /// A device name that is not `cpu`, `cuda:N` or `auto`, or one this build cannot use.
    #[error("device {name:?}: {reason}")]
    Device {
        /// The name given.
        name: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A buffer of the wrong length for the model's parameters.
    #[error("expected {expected} values for the model's parameters, got {found}")]
    Length {
        /// The model's parameter count.
        expected: usize,
        /// The length given.
        found: usize,
    },
    /// A checkpoint file or folder that cannot be used.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        error: std::io::Error,
    },
    /// Compressing or decompressing a pseudo-gradient failed.
    #[error("compression failed: {0}")]
    Compression(p2ptrain_kernels::KernelError),
    /// The loss or a gradient became NaN or infinite.
    #[error("training diverged: {0} is not finite")]
    NonFinite(&'static str),
}

/// Shorthand for results in this crate.
pub type Result<T, E = TrainerError> = std::result::Result<T, E>;
