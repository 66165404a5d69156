//! [`Corpus`]: the shuffled token stream, its train/validation split and the
//! per-peer shards of the training part.

use std::borrow::Cow;
use std::path::Path;

use super::rng::SplitMix64;
use super::sampler::{Batch, Sampler};
use super::{walk, DataError};

/// The share of the stream held out for validation unless
/// [`Corpus::with_validation_fraction`] says otherwise.
pub const DEFAULT_VALIDATION_FRACTION: f64 = 0.1;

/// The bundled corpus: Shakespeare plays from Project Gutenberg, public
/// domain; `corpus/README.md` in this crate gives the source and licence.
const BUNDLED: &[u8] = include_bytes!("../../corpus/shakespeare.txt");

/// A token stream (one token per byte) split into a training part and the
/// validation part that follows it.
///
/// The stream is the documents in a seeded shuffled order joined by `\n`;
/// the last [`validation_fraction`](Self::with_validation_fraction) of it
/// (rounded to the nearest token) is validation, the rest training.
#[derive(Debug, Clone)]
pub struct Corpus {
    tokens: Cow<'static, [u8]>,
    documents: usize,
    train_len: usize,
}

impl Corpus {
    /// Reads the file or folder at `path` and shuffles its documents with
    /// `seed`; the split is [`DEFAULT_VALIDATION_FRACTION`].
    ///
    /// A folder is walked recursively and its files are taken in sorted path
    /// order before the shuffle, so the same tree and seed give the same
    /// stream on every machine. Inside the folder, hidden entries (name
    /// starting with `.`), symbolic links and other non-regular files are
    /// skipped, and empty files are dropped.
    ///
    /// # Errors
    ///
    /// [`DataError::Io`] naming the path that could not be read (a missing
    /// `path` included); [`DataError::Empty`] if no non-empty file was found;
    /// [`DataError::TooLarge`] if the memory for the stream cannot be had.
    pub fn load(path: impl AsRef<Path>, seed: u64) -> Result<Self, DataError> {
        let mut documents = walk::list_documents(path.as_ref())?;
        SplitMix64::new(seed).shuffle(&mut documents);
        let stream = walk::read_joined(&documents)?;
        Ok(Self::split(Cow::Owned(stream), documents.len()))
    }

    /// The corpus bundled with the crate (about 1.9 MB of Shakespeare, one
    /// document), split [`DEFAULT_VALIDATION_FRACTION`]. Needs no files.
    pub fn bundled() -> Self {
        Self::split(Cow::Borrowed(BUNDLED), 1)
    }

    /// One in-memory document, split [`DEFAULT_VALIDATION_FRACTION`].
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Self {
        Self::split(Cow::Owned(bytes.into()), 1)
    }

    /// The same stream split again, with the last `fraction` of it (rounded
    /// to the nearest token) as validation.
    ///
    /// # Errors
    ///
    /// [`DataError::BadFraction`] unless `0 <= fraction < 1`.
    pub fn with_validation_fraction(mut self, fraction: f64) -> Result<Self, DataError> {
        if !(0.0..1.0).contains(&fraction) {
            return Err(DataError::BadFraction { fraction });
        }
        self.train_len = train_len(self.tokens.len(), fraction);
        Ok(self)
    }

    fn split(tokens: Cow<'static, [u8]>, documents: usize) -> Self {
        let train_len = train_len(tokens.len(), DEFAULT_VALIDATION_FRACTION);
        Self {
            tokens,
            documents,
            train_len,
        }
    }

    /// How many documents (non-empty files) went into the stream.
    pub fn documents(&self) -> usize {
        self.documents
    }

    /// The whole stream: training then validation.
    pub fn tokens(&self) -> &[u8] {
        &self.tokens
    }

    /// The whole stream, taken out of the corpus: no copy of a loaded one.
    pub fn into_tokens(self) -> Vec<u8> {
        self.tokens.into_owned()
    }

    /// The training part: the stream up to the split.
    pub fn train(&self) -> &[u8] {
        &self.tokens[..self.train_len]
    }

    /// The validation part: the stream after the split.
    pub fn validation(&self) -> &[u8] {
        &self.tokens[self.train_len..]
    }

    /// Peer `peer_index`'s contiguous share of the training part: tokens
    /// `⌊len·i/n⌋ .. ⌊len·(i+1)/n⌋`, so the `n` shards are disjoint, in
    /// order, and cover the training part exactly. A shard too short for a
    /// window is refused later, by [`Sampler::next_batch`], with
    /// [`DataError::TooShort`].
    ///
    /// # Errors
    ///
    /// [`DataError::BadShard`] if `peer_count` is zero or `peer_index` is not
    /// below it.
    pub fn shard(&self, peer_index: usize, peer_count: usize) -> Result<&[u8], DataError> {
        if peer_index >= peer_count {
            return Err(DataError::BadShard {
                peer_index,
                peer_count,
            });
        }
        let len = self.train_len;
        let start = boundary(len, peer_index, peer_count);
        let end = boundary(len, peer_index + 1, peer_count);
        Ok(&self.tokens[start..end])
    }

    /// A fixed evaluation set: `count` batches drawn from the validation
    /// part by a [`Sampler`] seeded with `seed`, so the same arguments give
    /// the same batches on every call and every machine.
    ///
    /// # Errors
    ///
    /// [`DataError::TooShort`] if the validation part is shorter than
    /// `context_len + 1` tokens.
    pub fn validation_batches(
        &self,
        count: usize,
        batch_size: usize,
        context_len: usize,
        seed: u64,
    ) -> Result<Vec<Batch>, DataError> {
        let mut sampler = Sampler::new(self.validation(), seed);
        (0..count)
            .map(|_| sampler.next_batch(batch_size, context_len))
            .collect()
    }
}

/// Training tokens for a stream of `len` with `fraction` held out.
fn train_len(len: usize, fraction: f64) -> usize {
    // Exact for any stream below 2^53 bytes; the result is at most `len`.
    let held_out = (len as f64 * fraction).round() as usize;
    len - held_out.min(len)
}

/// `⌊len · i / n⌋` without overflow; `n` is non-zero and `i <= n`.
fn boundary(len: usize, i: usize, n: usize) -> usize {
    (len as u128 * i as u128 / n as u128) as usize
}

#[cfg(test)]
mod tests {
    use super::{boundary, train_len};

    #[test]
    fn train_len_rounds_the_held_out_part_to_the_nearest_token() {
        assert_eq!(train_len(1_000, 0.1), 900);
        assert_eq!(train_len(1_005, 0.1), 904);
        assert_eq!(train_len(100, 0.29), 71);
        assert_eq!(train_len(7, 0.0), 7);
        assert_eq!(train_len(0, 0.1), 0);
    }

    #[test]
    fn boundary_does_not_overflow_for_large_streams() {
        assert_eq!(boundary(usize::MAX, 3, 4), usize::MAX / 4 * 3 + 2);
        assert_eq!(boundary(10, 4, 4), 10);
        assert_eq!(boundary(10, 1, 3), 3);
    }
}
