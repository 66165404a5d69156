//! The compressed form of a flat `f32` buffer; its byte format is specified
//! on [`Payload`].

use p2ptrain_protocol::codec::{self, CodecError};
use p2ptrain_protocol::CompressionSettings;

use crate::layout::{Chunk, Layout};
use crate::pack::{unpack, Unpack};
use crate::quant::Quantizer;

/// A compressed flat buffer: per chunk, the top-k entries by magnitude, their
/// positions bit-packed and their values quantized against one scale.
///
/// Made only by [`compress`](crate::compress()) or by [`Payload::decode`], so it
/// always satisfies the rules of the format below.
///
/// # Format
///
/// A payload travels as a protocol message (`docs/protocol.md`: a version
/// byte, then bincode's standard configuration) with the body
///
/// ```text
/// Payload = len:u64 settings:CompressionSettings
///           scales:Vec<f32> indices:Vec<u8> values:Vec<u8>
/// ```
///
/// The buffer of `len` entries is cut into `n = ceil(len / chunk_len)` chunks
/// (the last may be shorter); a chunk of `m` entries keeps
/// `k = settings.k_for(m)` of them. Then, chunk by chunk in order:
///
/// - `scales[c]`: the chunk's quantization scale, finite and `+0.0` or
///   positive; `+0.0` when the chunk keeps nothing.
/// - `indices`: the chunk's `k` kept positions relative to its start, strictly
///   ascending, each below `m`, in `settings.index_bits()` bits, packed least
///   significant bit first and padded with zero bits to a whole byte.
/// - `values`: the chunk's `k` codes in the same order, `value_bits` each,
///   packed the same way; all zero when the scale is zero.
///
/// Code `q` of a chunk with scale `s` stands for `(q − half) × s` with
/// `half = (2^value_bits − 1) / 2` (see [`compress`](crate::compress()) for how
/// codes are chosen). Every length is fixed by `len` and `settings`, and
/// decoding refuses anything that breaks a rule above, so a payload has exactly
/// one encoding and the blake3 of that encoding names it.
///
/// # Example
///
/// ```
/// use p2ptrain_kernels::{compress, Payload};
/// use p2ptrain_protocol::CompressionSettings;
///
/// let delta: Vec<f32> = (0..10_000).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
/// let mut residual = vec![0.0; delta.len()];
/// let payload = compress(&delta, &mut residual, &CompressionSettings::default())?;
/// assert_eq!((payload.len(), payload.chunk_count(), payload.kept()), (10_000, 3, 41 + 41 + 18));
/// assert!(payload.bits_per_param() < 0.25);
/// assert_eq!(Payload::decode(&payload.encode()?)?, payload);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq)]
pub struct Payload {
    pub(crate) len: usize,
    pub(crate) settings: CompressionSettings,
    pub(crate) scales: Vec<f32>,
    pub(crate) indices: Vec<u8>,
    pub(crate) values: Vec<u8>,
}

p2ptrain_protocol::impl_message!(Payload, max_len = 1 << 30);

impl Payload {
    /// Entries in the flat buffer this payload compresses.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the flat buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The settings it was compressed with.
    pub fn settings(&self) -> CompressionSettings {
        self.settings
    }

    /// Number of chunks.
    pub fn chunk_count(&self) -> usize {
        self.scales.len()
    }

    /// Number of entries kept over all chunks.
    pub fn kept(&self) -> usize {
        self.layout().kept()
    }

    /// The kept entries as `(position in the flat buffer, value)`, ascending
    /// by position.
    pub fn entries(&self) -> impl Iterator<Item = (usize, f32)> + '_ {
        let layout = self.layout();
        (0..layout.chunks).flat_map(move |c| {
            let chunk = layout.chunk(c);
            let start = chunk.start;
            let (quantizer, kept) = self.chunk_entries(c, &chunk);
            kept.map(move |(i, code)| (start + i as usize, quantizer.value(code)))
        })
    }

    /// The kept entries' values, in the order of [`entries`](Self::entries)
    /// (without reading their positions).
    ///
    /// ```
    /// use p2ptrain_kernels::compress;
    /// use p2ptrain_protocol::CompressionSettings;
    ///
    /// let settings = CompressionSettings { chunk_len: 4, density: 0.5, ..Default::default() };
    /// let payload = compress(&[0.0, 2.0, 0.0, -1.0], &mut [0.0; 4], &settings)?;
    /// let values: Vec<f32> = payload.kept_values().collect();
    /// assert_eq!(values, payload.entries().map(|(_, v)| v).collect::<Vec<_>>());
    /// assert_eq!(values.len(), 2);
    /// # Ok::<(), p2ptrain_kernels::KernelError>(())
    /// ```
    pub fn kept_values(&self) -> impl Iterator<Item = f32> + '_ {
        let layout = self.layout();
        let bits = self.settings.value_bits;
        (0..layout.chunks).flat_map(move |c| {
            let chunk = layout.chunk(c);
            let quantizer = Quantizer::with_scale(bits, self.scales[c]);
            let codes = unpack(&self.values[chunk.values.clone()], bits.bits(), chunk.k);
            codes.map(move |code| quantizer.value(code))
        })
    }

    /// The length of [`encode`](Self::encode)'s output, computed without
    /// encoding.
    pub fn encoded_len(&self) -> usize {
        Self::encoded_len_for(self.len, &self.settings)
    }

    /// The encoded length of any payload of a `len`-entry buffer compressed
    /// with `settings` (it depends on nothing else): what a simulator charges
    /// a link for a model it does not materialize.
    ///
    /// ```
    /// use p2ptrain_kernels::{compress, Payload};
    /// use p2ptrain_protocol::CompressionSettings;
    ///
    /// let settings = CompressionSettings::default();
    /// let delta = vec![0.5f32; 10_000];
    /// let payload = compress(&delta, &mut vec![0.0; 10_000], &settings)?;
    /// assert_eq!(Payload::encoded_len_for(10_000, &settings), payload.encode()?.len());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn encoded_len_for(len: usize, settings: &CompressionSettings) -> usize {
        let layout = Layout::new(len, settings);
        let vec_len = |n: usize| varint_len(n as u64) + n;
        let settings_len = varint_len(u64::from(settings.chunk_len)) + 4 + 1;
        1 + varint_len(len as u64)
            + settings_len
            + varint_len(layout.chunks as u64)
            + 4 * layout.chunks
            + vec_len(layout.index_bytes())
            + vec_len(layout.value_bytes())
    }

    /// Bits on the wire per entry of the flat buffer: `8 × encoded_len / len`
    /// (0 for an empty buffer).
    pub fn bits_per_param(&self) -> f64 {
        if self.len == 0 {
            return 0.0;
        }
        8.0 * self.encoded_len() as f64 / self.len as f64
    }

    /// The wire bytes: the protocol codec's encoding.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        codec::encode(self)
    }

    /// Reads a payload from wire bytes, refusing any byte string that is not
    /// the exact encoding of a valid payload. Never allocates more than the
    /// input's length.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode(bytes)
    }

    pub(crate) fn layout(&self) -> Layout {
        Layout::new(self.len, &self.settings)
    }

    /// Chunk `c`'s quantizer and its `(index in chunk, code)` pairs.
    pub(crate) fn chunk_entries(&self, c: usize, chunk: &Chunk) -> (Quantizer, ChunkEntries<'_>) {
        let bits = self.settings.value_bits;
        let quantizer = Quantizer::with_scale(bits, self.scales[c]);
        let index_bits = self.settings.index_bits();
        let indices = unpack(&self.indices[chunk.indices.clone()], index_bits, chunk.k);
        let codes = unpack(&self.values[chunk.values.clone()], bits.bits(), chunk.k);
        (quantizer, indices.zip(codes))
    }
}

/// The `(index in chunk, code)` pairs of one chunk.
pub(crate) type ChunkEntries<'a> = std::iter::Zip<Unpack<'a>, Unpack<'a>>;

/// Bytes of bincode's variable-length encoding of `v`.
fn varint_len(v: u64) -> usize {
    match v {
        0..=250 => 1,
        251..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payload")
            .field("len", &self.len)
            .field("settings", &self.settings)
            .field("chunks", &self.scales.len())
            .field("index_bytes", &self.indices.len())
            .field("value_bytes", &self.values.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_lengths_follow_bincode() {
        for v in [0u64, 250, 251, 65_535, 65_536, u32::MAX as u64, 1 << 32] {
            let mut size = bincode::enc::write::SizeWriter::default();
            bincode::encode_into_writer(v, &mut size, bincode::config::standard()).unwrap();
            assert_eq!(varint_len(v), size.bytes_written, "{v}");
        }
    }
}
