//! Checkpoints in verifiable slices: a joiner fetches a checkpoint a slice
//! at a time from several peers and checks every slice, as it arrives,
//! against the checkpoint hash that signed commits name.
//!
//! The checkpoint hash is the BLAKE3 of the state's bytes, and BLAKE3 is a
//! tree: a slice sent with the hashes of the subtrees beside its path (the
//! Bao slice format) proves itself against the root alone. A server keeps
//! the tree's inner nodes (the outboard, about 6% of the state) and cuts
//! slices from them and the bytes, wherever those lie ([`Content`]: in
//! memory, in a state held, in a file).
//!
//! ```
//! use p2ptrain_node::net::slices::{plan, verify_slice, Outboard};
//! use p2ptrain_protocol::Digest;
//!
//! let state: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
//! let served = Outboard::of(state.clone())?;
//! assert_eq!(served.hash(), Digest::of(&state));
//!
//! let mut rebuilt = vec![0u8; state.len()];
//! for (start, len) in plan(state.len() as u64) {
//!     let slice = served.slice(start, len)?;
//!     let bytes = verify_slice(&served.hash(), state.len() as u64, start, len, &slice)?;
//!     rebuilt[start as usize..][..bytes.len()].copy_from_slice(&bytes);
//! }
//! assert_eq!(rebuilt, state);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek};
use std::path::PathBuf;

use p2ptrain_protocol::Digest;

mod chunks;
mod tree;
mod verify;

/// Checkpoint bytes per slice request: 1 MiB (a multiple of BLAKE3's
/// 1 KiB chunk, so a slice carries no partial chunk).
pub const SLICE_LEN: u64 = 1 << 20;

/// The longest a slice of `len` checkpoint bytes can be, wherever it
/// starts and however long the checkpoint: what a fetch of one may receive.
///
/// A Bao slice is the content's 8-byte length, the chunks the range
/// touches (at most two more than it covers whole), and the parent nodes
/// (64 bytes each) of those chunks' subtree and of the two paths down to
/// its ends, each at most 64 levels deep.
pub fn longest_slice(len: u64) -> u64 {
    const CHUNK: u64 = blake3::CHUNK_LEN as u64;
    const PARENT: u64 = 64;
    let chunks = (len / CHUNK).saturating_add(2);
    let parents = chunks.saturating_add(2 * 64);
    (chunks.saturating_mul(CHUNK))
        .saturating_add(parents.saturating_mul(PARENT))
        .saturating_add(8)
}

/// Why a slice was refused.
#[derive(Debug, thiserror::Error)]
pub enum SliceError {
    /// The slice does not prove itself against the hash.
    #[error("the slice does not match the checkpoint hash: {0}")]
    Invalid(std::io::Error),
    /// The checkpoint's bytes could not be read to cut the slice.
    #[error("the checkpoint's bytes cannot be read: {0}")]
    Read(std::io::Error),
    /// The slice asked for lies outside the checkpoint.
    #[error("slice {start}+{len} is outside a checkpoint of {total} bytes")]
    OutOfRange {
        /// First byte.
        start: u64,
        /// Bytes asked for.
        len: u64,
        /// The checkpoint's length.
        total: u64,
    },
}

/// Bytes that slices are cut from, wherever they lie.
pub trait Content: Send + Sync {
    /// How many there are.
    fn len(&self) -> u64;

    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A reader of them from the first, which slicing seeks.
    ///
    /// # Errors
    ///
    /// Why they cannot be read.
    fn reader(&self) -> std::io::Result<Box<dyn ReadSeek + '_>>;
}

/// What [`Content::reader`] gives.
pub trait ReadSeek: Read + Seek {}

impl<T: Read + Seek> ReadSeek for T {}

impl Content for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }

    fn reader(&self) -> std::io::Result<Box<dyn ReadSeek + '_>> {
        Ok(Box::new(Cursor::new(self.as_slice())))
    }
}

/// A file's bytes, read from disk for each slice rather than held in
/// memory.
#[derive(Debug)]
pub struct OnDisk {
    path: PathBuf,
    len: u64,
}

impl OnDisk {
    /// The bytes of the file at `path`, as long as it is now.
    ///
    /// # Errors
    ///
    /// Why its length cannot be read.
    pub fn new(path: impl Into<PathBuf>) -> std::io::Result<Self> {
        let path = path.into();
        let len = std::fs::metadata(&path)?.len();
        Ok(Self { path, len })
    }
}

impl Content for OnDisk {
    fn len(&self) -> u64 {
        self.len
    }

    fn reader(&self) -> std::io::Result<Box<dyn ReadSeek + '_>> {
        let file = File::open(&self.path)?;
        Ok(Box::new(BufReader::with_capacity(64 * 1024, file)))
    }
}

/// A checkpoint's bytes ([`Content`]) with its BLAKE3 tree, ready to serve
/// slices.
pub struct Outboard {
    content: Box<dyn Content>,
    tree: Vec<u8>,
    hash: Digest,
}

impl std::fmt::Debug for Outboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outboard")
            .field("len", &self.len())
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

impl Outboard {
    /// Hashes `content`, read once through (a piece at a time, on the
    /// threads of the rayon pool this runs in), and keeps its tree; the
    /// bytes are read again for each slice.
    ///
    /// # Errors
    ///
    /// Why `content` cannot be read; a short read is one (the tree would
    /// not be `content`'s).
    pub fn of(content: impl Content + 'static) -> std::io::Result<Self> {
        let (tree, hash) = tree::build(&content)?;
        Ok(Self {
            content: Box::new(content),
            tree,
            hash,
        })
    }

    /// The BLAKE3 of the content: the checkpoint hash.
    pub fn hash(&self) -> Digest {
        self.hash
    }

    /// The content's length in bytes.
    pub fn len(&self) -> u64 {
        self.content.len()
    }

    /// Whether the content is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The slice of `len` bytes from `start`, with the hashes that prove it.
    ///
    /// # Errors
    ///
    /// [`SliceError::OutOfRange`] unless the range lies in the content.
    pub fn slice(&self, start: u64, len: u64) -> Result<Vec<u8>, SliceError> {
        check_range(start, len, self.len())?;
        let longest = usize::try_from(longest_slice(len)).unwrap_or(0);
        let mut slice = Vec::with_capacity(longest);
        bao::encode::SliceExtractor::new_outboard(
            self.content.reader().map_err(SliceError::Read)?,
            Cursor::new(&self.tree),
            start,
            len,
        )
        .read_to_end(&mut slice)
        .map_err(SliceError::Read)?;
        Ok(slice)
    }
}

fn check_range(start: u64, len: u64, total: u64) -> Result<(), SliceError> {
    match start.checked_add(len) {
        Some(end) if len > 0 && end <= total => Ok(()),
        _ => Err(SliceError::OutOfRange { start, len, total }),
    }
}

/// The slices a checkpoint of `total` bytes is fetched in: `(start, len)`,
/// in order, [`SLICE_LEN`] each but the last.
pub fn plan(total: u64) -> Vec<(u64, u64)> {
    (0..total.div_ceil(SLICE_LEN))
        .map(|i| {
            let start = i * SLICE_LEN;
            (start, SLICE_LEN.min(total - start))
        })
        .collect()
}

/// Checks a slice received for bytes `start..start + len` of a checkpoint
/// of `total` bytes hashing to `hash`; returns those bytes.
///
/// # Errors
///
/// [`SliceError::Invalid`] if any byte or hash in it does not match, or it
/// is for a checkpoint of another length; [`SliceError::OutOfRange`] for a
/// range outside the checkpoint.
pub fn verify_slice(
    hash: &Digest,
    total: u64,
    start: u64,
    len: u64,
    slice: &[u8],
) -> Result<Vec<u8>, SliceError> {
    check_range(start, len, total)?;
    verify::verify(hash, total, start..start + len, slice).map_err(|why| {
        SliceError::Invalid(std::io::Error::new(std::io::ErrorKind::InvalidData, why))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `len` bytes of a content that repeats only every 253 bytes.
    pub(super) fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 253) as u8).collect()
    }

    #[test]
    fn the_plan_covers_the_checkpoint_once_in_order() {
        assert_eq!(plan(0), vec![]);
        assert_eq!(plan(10), vec![(0, 10)]);
        let total = 3 * SLICE_LEN + 5;
        let slices = plan(total);
        assert_eq!(slices.len(), 4);
        assert_eq!(slices[3], (3 * SLICE_LEN, 5));
        assert_eq!(slices.iter().map(|s| s.1).sum::<u64>(), total);
    }

    #[test]
    fn no_slice_is_longer_than_its_bound() -> crate::TestResult {
        for total in [1, 1_024, 5_000, 3 * SLICE_LEN + 5] {
            let served = Outboard::of(content(total as usize))?;
            // One byte short of a chunk boundary, across two boundaries.
            let unaligned = 1_023.min(total - 1);
            let ranges = [
                (0, total),
                (0, 1),
                (total - 1, 1),
                (total / 3, total / 3 + 1),
                (unaligned, (total - unaligned).min(2_050)),
            ];
            for (start, len) in ranges {
                let slice = served.slice(start, len)?;
                let bound = longest_slice(len);
                assert!(slice.len() as u64 <= bound, "{total}: {start}+{len}");
            }
        }
        // The bound is close: for a slice of 1 MiB, 8% over its bytes.
        assert!(longest_slice(SLICE_LEN) < SLICE_LEN * 108 / 100);
        assert_eq!(longest_slice(u64::MAX), u64::MAX);
        Ok(())
    }

    #[test]
    fn a_flipped_byte_or_a_wrong_hash_or_length_is_refused() -> crate::TestResult {
        let bytes = content(2 * SLICE_LEN as usize + 100);
        let total = bytes.len() as u64;
        let served = Outboard::of(bytes)?;
        let slice = served.slice(SLICE_LEN, SLICE_LEN)?;
        assert!(verify_slice(&served.hash(), total, SLICE_LEN, SLICE_LEN, &slice).is_ok());
        for at in [20, slice.len() / 2, slice.len() - 1] {
            let mut bad = slice.clone();
            bad[at] ^= 1;
            let result = verify_slice(&served.hash(), total, SLICE_LEN, SLICE_LEN, &bad);
            assert!(matches!(result, Err(SliceError::Invalid(_))), "byte {at}");
        }
        let other = Digest::of(b"another checkpoint");
        assert!(verify_slice(&other, total, SLICE_LEN, SLICE_LEN, &slice).is_err());
        assert!(verify_slice(&served.hash(), total + 1, SLICE_LEN, SLICE_LEN, &slice).is_err());
        // A slice served for another range does not pass for this one.
        assert!(verify_slice(&served.hash(), total, 0, SLICE_LEN, &slice).is_err());
        assert!(matches!(
            served.slice(total, 1),
            Err(SliceError::OutOfRange { .. })
        ));
        Ok(())
    }

    #[test]
    fn a_file_or_a_reader_serves_the_slices_its_bytes_in_memory_do() -> crate::TestResult {
        let bytes = content(2 * SLICE_LEN as usize + 5_000);
        let path = crate::scratch::scratch_dir("slices-on-disk").join("genesis.ckpt");
        std::fs::write(&path, &bytes)?;
        let in_memory = Outboard::of(bytes.clone())?;
        let on_disk = Outboard::of(OnDisk::new(&path)?)?;
        assert_eq!(on_disk.hash(), in_memory.hash());
        assert_eq!(on_disk.len(), in_memory.len());
        for (start, len) in [
            (0, SLICE_LEN),
            (SLICE_LEN, SLICE_LEN),
            (2 * SLICE_LEN, 5_000),
            (1_023, 2_050),
        ] {
            assert_eq!(on_disk.slice(start, len)?, in_memory.slice(start, len)?);
        }
        // A file cut short after it was hashed serves no slice of what is gone.
        std::fs::write(&path, &bytes[..SLICE_LEN as usize])?;
        assert!(on_disk.slice(0, SLICE_LEN).is_ok());
        assert!(matches!(
            on_disk.slice(SLICE_LEN, SLICE_LEN),
            Err(SliceError::Read(_))
        ));
        std::fs::remove_file(&path)?;
        Ok(())
    }
}
