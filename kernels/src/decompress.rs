//! Decompression: adding a payload's kept values into a dense buffer, and
//! the weighted mean of several payloads, the same bits in any arrival order.

use p2ptrain_protocol::Digest;
use rayon::prelude::*;

use crate::layout::Layout;
use crate::{KernelError, Payload};

/// Fewest chunks a parallel task adds in: a chunk holds only `k` entries.
const MIN_CHUNKS_PER_TASK: usize = 64;

/// Adds `weight` × the payload's values into `dense`.
///
/// For each kept entry `i` of a chunk with scale `s` and code `q`, in
/// binary32, each operation rounded on its own (no fused multiply-add):
///
/// ```text
/// dense[i] = dense[i] + weight × ((f32(q) − half) × s)
/// ```
///
/// with `half = (2^value_bits − 1) / 2`; other entries are left as they are.
/// Each entry is touched at most once, so the result does not depend on the
/// order of the work, and chunks are processed in parallel on the current
/// rayon pool.
///
/// # Errors
///
/// [`KernelError::LengthMismatch`] when `dense` is not as long as the
/// payload's buffer, [`KernelError::InvalidWeight`] for a NaN or infinite
/// weight. `dense` is untouched on error.
pub fn decompress_into(
    payload: &Payload,
    weight: f32,
    dense: &mut [f32],
) -> Result<(), KernelError> {
    if dense.len() != payload.len() {
        return Err(KernelError::LengthMismatch {
            expected: payload.len(),
            found: dense.len(),
        });
    }
    if !weight.is_finite() {
        return Err(KernelError::InvalidWeight(weight));
    }
    let layout = payload.layout();
    dense
        .par_chunks_mut(layout.chunk_len)
        .enumerate()
        .with_min_len(MIN_CHUNKS_PER_TASK)
        .for_each(|(c, dense)| add_chunk(payload, &layout, c, weight, dense));
    Ok(())
}

/// Adds `weight` × chunk `c` of `payload` (whose layout is `layout`) into
/// `dense`, that chunk's part of the dense buffer.
#[inline]
fn add_chunk(payload: &Payload, layout: &Layout, c: usize, weight: f32, dense: &mut [f32]) {
    let chunk = layout.chunk(c);
    let (quantizer, entries) = payload.chunk_entries(c, &chunk);
    for (i, code) in entries {
        if let Some(slot) = dense.get_mut(i as usize) {
            *slot += weight * quantizer.value(code);
        }
    }
}

/// One contribution to an [`aggregate`] or [`aggregate_into`].
#[derive(Debug, Clone, Copy)]
pub struct AggregateInput<'a> {
    /// The contribution's id. Inputs are summed in ascending key order, so the
    /// result does not depend on the order they are listed in.
    pub key: Digest,
    /// The compressed pseudo-gradient.
    pub payload: &'a Payload,
    /// Its weight (tokens trained on, say): finite and positive.
    pub weight: f32,
}

/// The weighted mean of the inputs' payloads, as a new dense buffer.
///
/// The same as [`aggregate_into`] on a buffer of the payloads' length; see
/// there for the exact formula and the errors.
pub fn aggregate(inputs: &[AggregateInput<'_>]) -> Result<Vec<f32>, KernelError> {
    let mean = WeightedMean::new(inputs)?;
    let mut dense = vec![0.0f32; mean.len];
    mean.write(&mut dense);
    Ok(dense)
}

/// Overwrites `dense` with the weighted mean of the inputs' payloads.
///
/// With the inputs sorted by ascending key, `1..=n`, in binary32 with each
/// operation rounded on its own (no fused multiply-add):
///
/// ```text
/// total   = (…((0 + w_1) + w_2) + …) + w_n
/// wn_j    = w_j / total
/// dense   = +0.0 everywhere, then for j = 1..=n, for each kept entry i of
///           payload j (code q, chunk scale s, half = (2^value_bits − 1) / 2):
///           dense[i] = dense[i] + wn_j × ((f32(q) − half) × s)
/// ```
///
/// That is [`decompress_into`] of each payload with weight `wn_j`, in key
/// order, into a zeroed buffer. Chunks are processed in parallel, each zeroed
/// and then given the inputs in key order, so the result is the same bits
/// whatever the listing order and the number of threads. Reusing one buffer
/// from round to round spares the cost of fresh memory (on a 100 MB buffer,
/// first-touch page faults cost more than the work).
///
/// # Errors
///
/// [`KernelError::NoInputs`] for an empty list, [`KernelError::DuplicateKey`]
/// when two inputs share a key, [`KernelError::InvalidWeight`] for a weight
/// that is not finite and positive (or weights whose sum overflows),
/// [`KernelError::MismatchedPayloads`] when the payloads differ in length or
/// chunk length, and [`KernelError::LengthMismatch`] when `dense` is not as
/// long as the payloads' buffer. `dense` is untouched on error.
pub fn aggregate_into(inputs: &[AggregateInput<'_>], dense: &mut [f32]) -> Result<(), KernelError> {
    let mean = WeightedMean::new(inputs)?;
    if dense.len() != mean.len {
        return Err(KernelError::LengthMismatch {
            expected: mean.len,
            found: dense.len(),
        });
    }
    mean.write(dense);
    Ok(())
}

/// The weighted mean of several payloads, checked once and then written a
/// block at a time: the same bits as [`aggregate_into`], for a caller that
/// consumes the mean as it goes (the outer step) instead of holding all of
/// it.
///
/// ```
/// use p2ptrain_kernels::{aggregate, compress, AggregateInput, WeightedMean};
/// use p2ptrain_protocol::{CompressionSettings, Digest};
///
/// let settings = CompressionSettings { chunk_len: 64, ..CompressionSettings::default() };
/// let delta: Vec<f32> = (0..200).map(|i| (i % 7) as f32 - 3.0).collect();
/// let payload = compress(&delta, &mut vec![0.0; 200], &settings)?;
/// let inputs = [AggregateInput { key: Digest::of(b"a"), payload: &payload, weight: 1.0 }];
/// let mean = WeightedMean::new(&inputs)?;
/// let mut block = vec![0.0; 128];
/// mean.write_block(64, &mut block)?; // entries 64..192
/// assert_eq!(block, aggregate(&inputs)?[64..192]);
/// # Ok::<(), p2ptrain_kernels::KernelError>(())
/// ```
pub struct WeightedMean<'a> {
    /// Entries in each payload's buffer.
    pub(crate) len: usize,
    chunk_len: usize,
    /// Each payload with its layout and normalized weight, in key order.
    pub(crate) terms: Vec<(&'a Payload, Layout, f32)>,
}

impl<'a> WeightedMean<'a> {
    /// Checks the inputs: the errors of [`aggregate_into`], but for the
    /// buffer's length.
    ///
    /// # Errors
    ///
    /// As [`aggregate_into`].
    pub fn new(inputs: &[AggregateInput<'a>]) -> Result<Self, KernelError> {
        let mut sorted: Vec<&AggregateInput<'a>> = inputs.iter().collect();
        sorted.sort_unstable_by_key(|input| input.key);
        let first = sorted.first().ok_or(KernelError::NoInputs)?.payload;
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0].key == pair[1].key) {
            return Err(KernelError::DuplicateKey(pair[0].key));
        }
        let chunk_len = first.settings().chunk_len;
        for input in &sorted {
            if !(input.weight.is_finite() && input.weight > 0.0) {
                return Err(KernelError::InvalidWeight(input.weight));
            }
            let payload = input.payload;
            if payload.len() != first.len() || payload.settings().chunk_len != chunk_len {
                return Err(KernelError::MismatchedPayloads {
                    key: input.key,
                    len: payload.len(),
                    chunk_len: payload.settings().chunk_len,
                });
            }
        }
        let total = sorted
            .iter()
            .fold(0.0f32, |total, input| total + input.weight);
        if !total.is_finite() {
            return Err(KernelError::InvalidWeight(total));
        }
        Ok(Self {
            len: first.len(),
            chunk_len: chunk_len as usize,
            terms: sorted
                .iter()
                .map(|input| (input.payload, input.payload.layout(), input.weight / total))
                .collect(),
        })
    }

    /// Entries in the mean.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mean has no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The payloads' chunk length: blocks start on a multiple of it.
    pub fn chunk_len(&self) -> usize {
        self.chunk_len
    }

    /// Overwrites `dense` with entries `start..start + dense.len()` of the
    /// mean.
    ///
    /// # Errors
    ///
    /// [`KernelError::LengthMismatch`] when `start` is not a multiple of
    /// the chunk length (`found` is `start`), or when the block runs past the
    /// end of the mean or stops inside a chunk before its end (`found` is
    /// the block's end). `dense` is untouched on error.
    pub fn write_block(&self, start: usize, dense: &mut [f32]) -> Result<(), KernelError> {
        self.check_block(start, dense.len())?;
        let first = start / self.chunk_len;
        for (c, dense) in dense.chunks_mut(self.chunk_len).enumerate() {
            self.write_chunk(first + c, dense);
        }
        Ok(())
    }

    /// [`write_block`](Self::write_block) without a pass over the whole
    /// block: writes the mean only at the entries some payload keeps, and
    /// appends their offsets in `dense` to `touched` (an offset once per
    /// payload that keeps it). Elsewhere the mean is 0 and `dense` is left
    /// as it is.
    ///
    /// `dense` must hold `+0.0` wherever a payload keeps an entry — a zeroed
    /// buffer, zeroed again at the touched offsets after use — for the
    /// entries written to be the bits `write_block` writes.
    ///
    /// ```
    /// use p2ptrain_kernels::{compress, AggregateInput, WeightedMean};
    /// use p2ptrain_protocol::{CompressionSettings, Digest};
    ///
    /// let settings = CompressionSettings { chunk_len: 4, density: 0.25, ..Default::default() };
    /// let payload = compress(&[0.0, 3.0, 1.0, 0.0, -2.0, 0.0, 0.0, 1.0], &mut [0.0; 8], &settings)?;
    /// let input = AggregateInput { key: Digest::of(b"a"), payload: &payload, weight: 1.0 };
    /// let mean = WeightedMean::new(&[input])?;
    ///
    /// let (mut dense, mut touched) = (vec![0.0; 8], Vec::new());
    /// mean.write_block_sparse(0, &mut dense, &mut touched)?;
    /// assert_eq!(touched, [1, 4]);
    /// assert_eq!(dense, [0.0, 3.0, 0.0, 0.0, -2.0, 0.0, 0.0, 0.0]);
    /// # Ok::<(), p2ptrain_kernels::KernelError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`write_block`](Self::write_block); nothing is written then.
    pub fn write_block_sparse(
        &self,
        start: usize,
        dense: &mut [f32],
        touched: &mut Vec<usize>,
    ) -> Result<(), KernelError> {
        self.check_block(start, dense.len())?;
        let first = start / self.chunk_len;
        for (c, dense) in dense.chunks_mut(self.chunk_len).enumerate() {
            let offset = c * self.chunk_len;
            for (payload, layout, weight) in &self.terms {
                let chunk = layout.chunk(first + c);
                let (quantizer, entries) = payload.chunk_entries(first + c, &chunk);
                for (i, code) in entries {
                    if let Some(slot) = dense.get_mut(i as usize) {
                        *slot += *weight * quantizer.value(code);
                        touched.push(offset + i as usize);
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks that entries `start..start + len` are whole chunks of the
    /// mean (the last may be the mean's short one).
    fn check_block(&self, start: usize, len: usize) -> Result<(), KernelError> {
        let end = start.saturating_add(len);
        if !start.is_multiple_of(self.chunk_len) {
            return Err(KernelError::LengthMismatch {
                expected: start - start % self.chunk_len,
                found: start,
            });
        }
        if end > self.len || (end < self.len && !end.is_multiple_of(self.chunk_len)) {
            return Err(KernelError::LengthMismatch {
                expected: (end - end % self.chunk_len).min(self.len),
                found: end,
            });
        }
        Ok(())
    }

    /// Writes the mean into `dense`, which is `len` long.
    fn write(&self, dense: &mut [f32]) {
        dense
            .par_chunks_mut(self.chunk_len)
            .enumerate()
            .with_min_len(MIN_CHUNKS_PER_TASK)
            .for_each(|(c, dense)| self.write_chunk(c, dense));
    }

    /// Overwrites `dense`, chunk `c`'s part of the buffer, with its mean.
    #[inline]
    fn write_chunk(&self, c: usize, dense: &mut [f32]) {
        dense.fill(0.0);
        for (payload, layout, weight) in &self.terms {
            add_chunk(payload, layout, c, *weight, dense);
        }
    }
}
