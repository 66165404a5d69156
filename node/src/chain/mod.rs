//! The chain of rounds as a node keeps it: the shared checkpoint
//! ([`ChainState`]) and the outer step that moves it, the data directory
//! that holds the records ([`DataDir`]), and the replay that checks them
//! ([`replay`]) — what `p2pnode verify` runs — [`resume()`], where a
//! restarted node picks up, and [`history()`], the records as JSON.

mod datadir;
mod history;
mod resume;
mod state;
mod step;
mod tree_hash;
mod verify;

use std::path::Path;

use p2ptrain_protocol::{CodecError, Digest, InvalidManifest};

pub use datadir::{Announcement, DataDir, DirLock};
pub use history::history;
pub use resume::{latest, resume, Resumed, ResumedFrom};
pub use state::{ChainState, StateReader};
pub use step::{Buffers, StepInput};
pub use verify::{replay, replay_with_progress, Verified};

/// Why a chain cannot be read, stored or verified.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// A file cannot be read or a folder created.
    #[error("{path}: {error}")]
    Io {
        /// The file or folder.
        path: String,
        /// What went wrong.
        error: std::io::Error,
    },
    /// A file cannot be written atomically.
    #[error("writing {path}: {error}")]
    Write {
        /// The file.
        path: String,
        /// What went wrong.
        error: std::io::Error,
    },
    /// A stored message does not decode.
    #[error("{path}: {error}")]
    Decode {
        /// The file.
        path: String,
        /// The codec's complaint.
        error: CodecError,
    },
    /// The run manifest decodes, but no node can run it.
    #[error("{path}: not a run a node can run: {error}")]
    Manifest {
        /// The file.
        path: String,
        /// The field out of range.
        error: InvalidManifest,
    },
    /// A file ends before what its header says it holds.
    #[error("{path}: truncated")]
    Truncated {
        /// The file.
        path: String,
    },
    /// A value cannot be encoded.
    #[error("encoding: {0}")]
    Encode(#[from] CodecError),
    /// Checkpoint bytes of the wrong size for the model.
    #[error("a checkpoint of this model is {expected} bytes, found {found}")]
    StateLength {
        /// Bytes expected.
        expected: u64,
        /// Bytes found.
        found: u64,
    },
    /// A checkpoint file has the wrong size for the model.
    #[error("{path}: a checkpoint of this model is {expected} bytes, found {found}")]
    CheckpointLength {
        /// The file.
        path: String,
        /// Bytes expected.
        expected: u64,
        /// Bytes found.
        found: u64,
    },
    /// A payload cannot be decoded or aggregated.
    #[error("kernels: {0}")]
    Kernel(#[from] p2ptrain_kernels::KernelError),
    /// The outer step failed.
    #[error("outer step: {0}")]
    Trainer(#[from] p2ptrain_trainer::TrainerError),
    /// The genesis checkpoint is not the one the manifest names.
    #[error("genesis.ckpt hashes to {found}, the manifest names {expected}")]
    Genesis {
        /// The manifest's genesis.
        expected: Digest,
        /// The file's hash.
        found: Digest,
    },
    /// Another process works on the directory.
    #[error("another node is working on {0}: one node per data directory")]
    InUse(String),
    /// A round's record does not hold.
    #[error("round {round}: {what}")]
    Record {
        /// The first bad round.
        round: u64,
        /// What is wrong with it.
        what: String,
    },
    /// The head checkpoint is not where the records lead.
    #[error("head.ckpt hashes to {found}, the records lead to {expected}")]
    Head {
        /// Where the records lead.
        expected: Digest,
        /// The file's hash.
        found: Digest,
    },
}

impl ChainError {
    /// Whether a file could not be written for want of disk space: once
    /// some is freed, a node goes on from what its directory holds.
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self,
            Self::Io { error, .. } | Self::Write { error, .. }
                if error.kind() == std::io::ErrorKind::StorageFull
        )
    }

    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            error: source,
        }
    }
}
