//! Checkpoint manifests: a checkpoint cut into chunks that can be fetched from
//! several peers at once and checked one by one.

use std::ops::Range;

use bincode::de::Decoder;
use bincode::error::DecodeError;
use bincode::{Decode, Encode};

use crate::codec::{self, Message};
use crate::Digest;

/// The chunk hashes of a checkpoint file. Its [`root`](Self::root) — the
/// blake3 of its encoding — is the checkpoint hash that commits name, so a
/// manifest received from anyone is checked against a commit first, and each
/// chunk against the manifest as it arrives.
///
/// ```
/// use p2ptrain_protocol::CheckpointManifest;
///
/// let checkpoint = vec![7u8; 10_000];
/// let manifest = CheckpointManifest::build(&checkpoint, 4096).unwrap();
/// assert_eq!(manifest.chunk_count(), 3);
/// assert_eq!(manifest.chunk_range(2), Some(8192..10_000));
/// assert!(manifest.verify_chunk(2, &checkpoint[8192..]).is_ok());
/// assert!(manifest.verify_chunk(1, &checkpoint[8192..]).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Encode)]
pub struct CheckpointManifest {
    total_len: u64,
    chunk_len: u32,
    chunks: Vec<Digest>,
}

crate::impl_message!(CheckpointManifest, max_len = 1 << 20);

/// Why a chunk or a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError {
    /// Chunk length 0.
    #[error("chunk length must be at least 1")]
    ZeroChunkLen,
    /// So many chunks that the manifest would exceed its size limit.
    #[error("{chunks} chunks exceed the manifest limit; use larger chunks")]
    TooManyChunks {
        /// Chunks needed.
        chunks: u64,
    },
    /// No chunk with this index.
    #[error("chunk {index} out of range ({count} chunks)")]
    OutOfRange {
        /// Index asked for.
        index: usize,
        /// Chunks in the manifest.
        count: usize,
    },
    /// The bytes do not hash to the manifest's entry (or have the wrong length).
    #[error("chunk {index} does not match its hash")]
    Mismatch {
        /// The chunk.
        index: usize,
    },
}

impl CheckpointManifest {
    /// Largest chunk count that fits the manifest's size limit.
    pub const MAX_CHUNKS: u64 = ((Self::MAX_LEN - 32) / 32) as u64;

    /// Cuts `checkpoint` into chunks of `chunk_len` bytes (the last may be
    /// shorter) and hashes each.
    pub fn build(checkpoint: &[u8], chunk_len: u32) -> Result<Self, ChunkError> {
        if chunk_len == 0 {
            return Err(ChunkError::ZeroChunkLen);
        }
        let chunks = checkpoint.len().div_ceil(chunk_len as usize) as u64;
        if chunks > Self::MAX_CHUNKS {
            return Err(ChunkError::TooManyChunks { chunks });
        }
        Ok(Self {
            total_len: checkpoint.len() as u64,
            chunk_len,
            chunks: checkpoint
                .chunks(chunk_len as usize)
                .map(Digest::of)
                .collect(),
        })
    }

    /// The checkpoint hash: blake3 of this manifest's encoding.
    pub fn root(&self) -> Digest {
        let bytes = codec::encode(self).expect("build and decode bound the manifest's size");
        Digest::of(&bytes)
    }

    /// Length of the whole checkpoint in bytes.
    pub fn total_len(&self) -> u64 {
        self.total_len
    }

    /// Length of every chunk but the last.
    pub fn chunk_len(&self) -> u32 {
        self.chunk_len
    }

    /// The number of chunks.
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// The chunk hashes, in order.
    pub fn chunks(&self) -> &[Digest] {
        &self.chunks
    }

    /// Byte range of chunk `index` within the checkpoint.
    pub fn chunk_range(&self, index: usize) -> Option<Range<u64>> {
        (index < self.chunks.len()).then(|| {
            let start = index as u64 * u64::from(self.chunk_len);
            start..(start + u64::from(self.chunk_len)).min(self.total_len)
        })
    }

    /// Checks chunk `index` against its hash and length.
    pub fn verify_chunk(&self, index: usize, bytes: &[u8]) -> Result<(), ChunkError> {
        let range = self.chunk_range(index).ok_or(ChunkError::OutOfRange {
            index,
            count: self.chunks.len(),
        })?;
        let right_len = bytes.len() as u64 == range.end - range.start;
        if right_len && Digest::of(bytes) == self.chunks[index] {
            Ok(())
        } else {
            Err(ChunkError::Mismatch { index })
        }
    }
}

impl<Context> Decode<Context> for CheckpointManifest {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let total_len = u64::decode(decoder)?;
        let chunk_len = u32::decode(decoder)?;
        if chunk_len == 0 {
            return Err(DecodeError::Other("checkpoint chunk length is 0"));
        }
        let chunks = Vec::<Digest>::decode(decoder)?;
        if chunks.len() as u64 != total_len.div_ceil(u64::from(chunk_len)) {
            return Err(DecodeError::Other(
                "checkpoint chunk count does not match its length",
            ));
        }
        Ok(Self {
            total_len,
            chunk_len,
            chunks,
        })
    }
}

bincode::impl_borrow_decode!(CheckpointManifest);
