//! Everything derived from a buffer length and the compression settings: how
//! the buffer is cut into chunks, how many entries each chunk keeps, and where
//! each chunk's packed indices and values sit in the payload.
//!
//! Chunk `c` covers entries `c × chunk_len ..` up to `chunk_len` of them (the
//! last chunk may be shorter) and keeps `k = settings.k_for(its length)`
//! entries. Its indices (relative to the chunk start, `index_bits` each) and its
//! value codes (`value_bits` each) are packed into their own runs of whole
//! bytes, so every chunk can be written and read on its own. The runs are laid
//! end to end in chunk order: all chunks but the last have the same sizes.

use std::ops::Range;

use p2ptrain_protocol::CompressionSettings;

/// The bytes needed for `count` fields of `bits` bits, padded to a whole byte.
pub(crate) fn packed_len(count: usize, bits: u32) -> usize {
    (count * bits as usize).div_ceil(8)
}

/// Sizes of one chunk's part of a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sizes {
    len: usize,
    k: usize,
    index_bytes: usize,
    value_bytes: usize,
}

impl Sizes {
    fn of(len: usize, settings: &CompressionSettings) -> Self {
        let k = settings.k_for(len);
        Self {
            len,
            k,
            index_bytes: packed_len(k, settings.index_bits()),
            value_bytes: packed_len(k, settings.value_bits.bits()),
        }
    }
}

/// One chunk's place in the flat buffer and in the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chunk {
    /// First entry of the chunk in the flat buffer.
    pub start: usize,
    /// Entries in the chunk.
    pub len: usize,
    /// Entries kept.
    pub k: usize,
    /// Its packed indices within the payload's index bytes.
    pub indices: Range<usize>,
    /// Its packed value codes within the payload's value bytes.
    pub values: Range<usize>,
}

/// The layout of a payload for a buffer of `len` entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Entries in the flat buffer.
    pub len: usize,
    /// Entries per chunk (the last may have fewer).
    pub chunk_len: usize,
    /// Number of chunks: `ceil(len / chunk_len)`.
    pub chunks: usize,
    /// Bits per packed index.
    pub index_bits: u32,
    /// Bits per packed value code.
    pub value_bits: u32,
    full: Sizes,
    last: Sizes,
}

impl Layout {
    /// The layout for `len` entries. `settings` must be valid (a chunk length
    /// of at least 1).
    pub fn new(len: usize, settings: &CompressionSettings) -> Self {
        let chunk_len = settings.chunk_len as usize;
        let chunks = len.div_ceil(chunk_len);
        let last_len = match len % chunk_len {
            0 => chunk_len.min(len),
            rest => rest,
        };
        Self {
            len,
            chunk_len,
            chunks,
            index_bits: settings.index_bits(),
            value_bits: settings.value_bits.bits(),
            full: Sizes::of(chunk_len, settings),
            last: Sizes::of(last_len, settings),
        }
    }

    /// Chunk `c`, which must be below [`chunks`](Self::chunks).
    pub fn chunk(&self, c: usize) -> Chunk {
        debug_assert!(c < self.chunks, "chunk {c} of {}", self.chunks);
        let sizes = if c + 1 == self.chunks {
            self.last
        } else {
            self.full
        };
        let index_start = c * self.full.index_bytes;
        let value_start = c * self.full.value_bytes;
        Chunk {
            start: c * self.chunk_len,
            len: sizes.len,
            k: sizes.k,
            indices: index_start..index_start + sizes.index_bytes,
            values: value_start..value_start + sizes.value_bytes,
        }
    }

    /// All chunks in order.
    pub fn iter(&self) -> impl Iterator<Item = Chunk> + '_ {
        (0..self.chunks).map(|c| self.chunk(c))
    }

    fn total(&self, full: usize, last: usize) -> usize {
        match self.chunks {
            0 => 0,
            n => (n - 1) * full + last,
        }
    }

    /// Entries kept over all chunks.
    pub fn kept(&self) -> usize {
        self.total(self.full.k, self.last.k)
    }

    /// Length of the payload's packed indices.
    pub fn index_bytes(&self) -> usize {
        self.total(self.full.index_bytes, self.last.index_bytes)
    }

    /// Length of the payload's packed value codes.
    pub fn value_bytes(&self) -> usize {
        self.total(self.full.value_bytes, self.last.value_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2ptrain_protocol::ValueBits;

    #[test]
    fn default_settings_on_25m_entries() {
        let layout = Layout::new(25_000_000, &CompressionSettings::default());
        assert_eq!(layout.chunks, 6104);
        assert_eq!((layout.index_bits, layout.value_bits), (12, 8));
        // 41 indices of 12 bits = 492 bits -> 62 bytes; 41 codes -> 41 bytes.
        let first = layout.chunk(0);
        assert_eq!((first.start, first.len, first.k), (0, 4096, 41));
        assert_eq!((first.indices, first.values), (0..62, 0..41));
        // 25,000,000 - 6103 × 4096 = 2112 entries, k = round(21.12) = 21.
        let last = layout.chunk(6103);
        assert_eq!((last.start, last.len, last.k), (24_997_888, 2112, 21));
        assert_eq!(last.indices, 6103 * 62..6103 * 62 + 32);
        assert_eq!(last.values, 6103 * 41..6103 * 41 + 21);
        assert_eq!(layout.kept(), 6103 * 41 + 21);
        assert_eq!(layout.index_bytes(), 6103 * 62 + 32);
        assert_eq!(layout.value_bytes(), 6103 * 41 + 21);
    }

    #[test]
    fn exact_multiple_has_a_full_last_chunk() {
        let settings = CompressionSettings {
            chunk_len: 8,
            density: 0.5,
            value_bits: ValueBits::Two,
        };
        let layout = Layout::new(24, &settings);
        assert_eq!(layout.chunks, 3);
        let chunks: Vec<_> = layout.iter().collect();
        // 4 indices of 3 bits -> 2 bytes; 4 codes of 2 bits -> 1 byte.
        assert_eq!(chunks[2].len, 8);
        assert_eq!(
            (chunks[2].indices.clone(), chunks[2].values.clone()),
            (4..6, 2..3)
        );
        assert_eq!((layout.index_bytes(), layout.value_bytes()), (6, 3));
    }

    #[test]
    fn empty_and_short_buffers() {
        let settings = CompressionSettings::default();
        let empty = Layout::new(0, &settings);
        assert_eq!((empty.chunks, empty.kept(), empty.index_bytes()), (0, 0, 0));
        let one = Layout::new(1, &settings);
        assert_eq!(one.chunks, 1);
        assert_eq!((one.chunk(0).len, one.chunk(0).k), (1, 0));
        let dense = CompressionSettings {
            density: 1.0,
            ..settings
        };
        let one = Layout::new(1, &dense);
        assert_eq!(
            (one.chunk(0).k, one.index_bytes(), one.value_bytes()),
            (1, 2, 1)
        );
    }

    #[test]
    fn packed_len_rounds_up_to_bytes() {
        assert_eq!(packed_len(0, 12), 0);
        assert_eq!(packed_len(1, 12), 2);
        assert_eq!(packed_len(2, 12), 3);
        assert_eq!(packed_len(3, 2), 1);
        assert_eq!(packed_len(5, 2), 2);
    }
}
