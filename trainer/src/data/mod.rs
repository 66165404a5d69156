//! Training data: byte-level tokens from the user's files (or the bundled
//! Shakespeare), a seeded document shuffle, a train/validation split, one
//! shard of the training part per peer, and seeded random batches.
//!
//! ```
//! use p2ptrain_trainer::data::{Corpus, Sampler};
//!
//! // The bundled corpus, 90% training and 10% validation.
//! let corpus = Corpus::bundled();
//! assert_eq!(corpus.train().len() + corpus.validation().len(), corpus.tokens().len());
//!
//! // Peer 1 of 4 takes the second quarter of the training part and samples it.
//! let shard = corpus.shard(1, 4)?;
//! let mut sampler = Sampler::new(shard, 7);
//! let batch = sampler.next_batch(8, 64)?;
//! assert_eq!(batch.inputs.len(), 8 * 64);
//! assert_eq!(batch.inputs[1..64], batch.targets[..63]);
//!
//! // Every peer evaluates on the same fixed validation batches.
//! let validation = corpus.validation_batches(4, 8, 64, 0)?;
//! assert_eq!(validation, corpus.validation_batches(4, 8, 64, 0)?);
//! # Ok::<(), p2ptrain_trainer::data::DataError>(())
//! ```
//!
//! A token is a byte: ids `0..=255`, [`VOCAB_SIZE`] of them, carried as
//! `u32` in a [`Batch`]; [`encode`] and [`decode`] convert text. Nothing here
//! depends on the machine: a folder is read in sorted path order, and the
//! shuffle and the sampler draw from a SplitMix64 generator seeded by the
//! caller, so the same files and seeds give the same bytes everywhere.
//!
//! # Layout
//!
//! - `corpus` — [`Corpus`]: [`Corpus::load`] (a `--data` file or folder),
//!   [`Corpus::bundled`], the split, [`Corpus::shard`],
//!   [`Corpus::validation_batches`].
//! - `walk` — the recursive, sorted folder walk.
//! - `sampler` — [`Sampler`] and [`Batch`].
//! - `rng` — the SplitMix64 generator and the Fisher–Yates shuffle.

use std::path::PathBuf;

mod corpus;
mod rng;
mod sampler;
mod walk;

pub use corpus::{Corpus, DEFAULT_VALIDATION_FRACTION};
pub use sampler::{Batch, Sampler};

/// Distinct token ids: one per byte value.
pub const VOCAB_SIZE: usize = 256;

/// Why data could not be loaded, split or sampled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A file or folder could not be read.
    #[error("reading {}: {error}", path.display())]
    Io {
        /// The file or folder that failed.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// The path holds no non-empty, visible regular file.
    #[error("no data under {}: no non-empty, visible file", path.display())]
    Empty {
        /// The path that was given.
        path: PathBuf,
    },
    /// The documents together need more memory than can be had: a node
    /// holds its data in memory while it trains.
    #[error(
        "the data is {bytes} bytes, more than this machine can hold in memory; \
         give a part of it"
    )]
    TooLarge {
        /// The bytes of the stream.
        bytes: u64,
    },
    /// A token stream is too short for one window.
    #[error("need at least {needed} tokens, found {found}")]
    TooShort {
        /// `context_len + 1`.
        needed: usize,
        /// Tokens in the stream.
        found: usize,
    },
    /// A shard request that names no shard.
    #[error("peer index {peer_index} is not below the peer count {peer_count}")]
    BadShard {
        /// The requested peer.
        peer_index: usize,
        /// The number of peers.
        peer_count: usize,
    },
    /// A validation fraction outside `[0, 1)`.
    #[error("validation fraction {fraction} is not in [0, 1)")]
    BadFraction {
        /// The fraction given.
        fraction: f64,
    },
}

/// Text as token ids: its UTF-8 bytes.
pub fn encode(text: &str) -> Vec<u32> {
    text.bytes().map(u32::from).collect()
}

/// Token ids as text: the bytes they stand for, read as UTF-8 with each
/// invalid sequence, and each id above 255, shown as `U+FFFD`.
pub fn decode(tokens: &[u32]) -> String {
    let mut bytes = Vec::with_capacity(tokens.len());
    for &token in tokens {
        match u8::try_from(token) {
            Ok(byte) => bytes.push(byte),
            Err(_) => bytes.extend_from_slice("\u{FFFD}".as_bytes()),
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::{decode, encode};

    #[test]
    fn encode_then_decode_gives_the_text_back() {
        let text = "Ay, marry, is't — ¿qué?";
        assert_eq!(decode(&encode(text)), text);
        assert_eq!(encode("Ay"), vec![65, 121]);
    }

    #[test]
    fn decode_marks_ids_above_255_and_broken_utf8() {
        assert_eq!(decode(&[72, 256, 105]), "H\u{FFFD}i");
        assert_eq!(decode(&[0xC3]), "\u{FFFD}");
    }
}
