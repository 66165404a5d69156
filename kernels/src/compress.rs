//! Compression with error feedback.

use p2ptrain_protocol::CompressionSettings;
use rayon::prelude::*;

use crate::layout::Layout;
use crate::pack::pack;
use crate::quant::Quantizer;
use crate::topk::{self, magnitude, top_k};
use crate::{KernelError, Payload};

/// Entries checked for finiteness per parallel task.
const CHECK_BLOCK: usize = 1 << 16;

/// Fewest chunks a parallel task compresses.
const MIN_CHUNKS_PER_TASK: usize = 8;

/// Compresses `delta` plus the carried-over `residual`, and leaves in
/// `residual` what the payload does not carry (error feedback).
///
/// Per chunk of `settings.chunk_len` entries (the last may be shorter), with
/// `k = settings.k_for(chunk length)`, every operation in binary32 rounded on
/// its own:
///
/// 1. `acc[i] = residual[i] + delta[i]` for every entry.
/// 2. Keep the `k` entries of largest `|acc[i]|`, the lower index winning a
///    tie (exactly: the `k` largest keys `(bits(acc[i]) & 0x7fff_ffff) << 32 |
///    !i` as unsigned integers, `i` the index within the chunk).
/// 3. `absmax` = the largest `|acc[i]|` kept (0 if none), `scale = absmax /
///    half`, and for each kept entry `code = min(L − 1, u32(((acc[i] / scale) +
///    half) + 0.5))`, or 0 when `scale` is 0 — with `L = 2^value_bits`, `half =
///    (L − 1) / 2` and `u32` truncating, negatives to 0.
/// 4. `residual[i] = acc[i] − (f32(code) − half) × scale` for kept entries,
///    `residual[i] = acc[i]` for the others.
///
/// So `decompress(payload) + residual_after = delta + residual_before`, entry
/// by entry, up to one rounding of the subtraction in step 4.
///
/// Chunks are compressed in parallel on the current rayon pool; each chunk's
/// work is independent, so the payload and the residual are the same bytes
/// whatever the number of threads.
///
/// # Errors
///
/// Nothing is written to `residual` unless the call succeeds.
/// [`KernelError::InvalidSettings`] for out-of-range settings,
/// [`KernelError::LengthMismatch`] when `residual` is not as long as `delta`,
/// [`KernelError::NonFinite`] with the lowest index where `residual + delta`
/// is NaN or infinite.
pub fn compress(
    delta: &[f32],
    residual: &mut [f32],
    settings: &CompressionSettings,
) -> Result<Payload, KernelError> {
    settings.validate()?;
    if residual.len() != delta.len() {
        return Err(KernelError::LengthMismatch {
            expected: delta.len(),
            found: residual.len(),
        });
    }
    if let Some(index) = first_non_finite(delta, residual) {
        return Err(KernelError::NonFinite { index });
    }
    let layout = Layout::new(delta.len(), settings);
    let mut scales = vec![0.0f32; layout.chunks];
    let mut indices = vec![0u8; layout.index_bytes()];
    let mut values = vec![0u8; layout.value_bytes()];
    let outputs = split_outputs(&layout, &mut scales, &mut indices, &mut values);
    residual
        .par_chunks_mut(layout.chunk_len)
        .zip(delta.par_chunks(layout.chunk_len))
        .zip(outputs)
        .with_min_len(MIN_CHUNKS_PER_TASK)
        .for_each_init(Scratch::default, |scratch, ((residual, delta), out)| {
            compress_chunk(delta, residual, out, &layout, settings, scratch);
        });
    Ok(Payload {
        len: delta.len(),
        settings: *settings,
        scales,
        indices,
        values,
    })
}

/// One chunk's share of the payload being written.
struct ChunkOut<'a> {
    k: usize,
    scale: &'a mut f32,
    indices: &'a mut [u8],
    values: &'a mut [u8],
}

/// Per-task working memory, reused from chunk to chunk.
#[derive(Default)]
struct Scratch {
    top_k: topk::Scratch,
    kept: Vec<u32>,
    codes: Vec<u32>,
}

/// Cuts the payload's buffers into each chunk's part, in chunk order.
fn split_outputs<'a>(
    layout: &Layout,
    scales: &'a mut [f32],
    mut indices: &'a mut [u8],
    mut values: &'a mut [u8],
) -> Vec<ChunkOut<'a>> {
    let mut outputs = Vec::with_capacity(layout.chunks);
    for (chunk, scale) in layout.iter().zip(scales) {
        let (chunk_indices, rest) = std::mem::take(&mut indices).split_at_mut(chunk.indices.len());
        indices = rest;
        let (chunk_values, rest) = std::mem::take(&mut values).split_at_mut(chunk.values.len());
        values = rest;
        outputs.push(ChunkOut {
            k: chunk.k,
            scale,
            indices: chunk_indices,
            values: chunk_values,
        });
    }
    outputs
}

fn compress_chunk(
    delta: &[f32],
    residual: &mut [f32],
    out: ChunkOut<'_>,
    layout: &Layout,
    settings: &CompressionSettings,
    scratch: &mut Scratch,
) {
    for (acc, &d) in residual.iter_mut().zip(delta) {
        *acc += d;
    }
    top_k(residual, out.k, &mut scratch.top_k, &mut scratch.kept);
    let kept = &scratch.kept;
    if kept.is_empty() {
        return;
    }
    let absmax = kept
        .iter()
        .map(|&i| magnitude(residual[i as usize]))
        .max()
        .map_or(0.0, f32::from_bits);
    let quantizer = Quantizer::for_absmax(settings.value_bits, absmax);
    *out.scale = quantizer.scale();
    scratch.codes.clear();
    for &i in kept {
        let acc = &mut residual[i as usize];
        let code = quantizer.code(*acc);
        *acc -= quantizer.value(code);
        scratch.codes.push(code);
    }
    pack(kept.iter().copied(), layout.index_bits, out.indices);
    pack(scratch.codes.iter().copied(), layout.value_bits, out.values);
}

/// The lowest index where `residual + delta` is not finite, if any.
fn first_non_finite(delta: &[f32], residual: &[f32]) -> Option<usize> {
    delta
        .par_chunks(CHECK_BLOCK)
        .zip(residual.par_chunks(CHECK_BLOCK))
        .enumerate()
        .filter_map(|(b, (delta, residual))| {
            block_first_non_finite(delta, residual).map(|i| b * CHECK_BLOCK + i)
        })
        .min()
}

fn block_first_non_finite(delta: &[f32], residual: &[f32]) -> Option<usize> {
    const LANES: usize = 16;
    let mut all_finite = true;
    let (d_blocks, r_blocks) = (delta.chunks_exact(LANES), residual.chunks_exact(LANES));
    let (d_rest, r_rest) = (d_blocks.remainder(), r_blocks.remainder());
    for (d, r) in d_blocks.zip(r_blocks) {
        let mut finite = true;
        for j in 0..LANES {
            finite &= (d[j] + r[j]).abs() < f32::INFINITY;
        }
        all_finite &= finite;
    }
    for (&d, &r) in d_rest.iter().zip(r_rest) {
        all_finite &= (d + r).is_finite();
    }
    if all_finite {
        return None;
    }
    delta
        .iter()
        .zip(residual)
        .position(|(&d, &r)| !(d + r).is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_lowest_non_finite_sum() {
        let n = 3 * CHECK_BLOCK + 5;
        let mut delta = vec![1.0f32; n];
        let residual = vec![-1.0f32; n];
        assert_eq!(first_non_finite(&delta, &residual), None);
        delta[3 * CHECK_BLOCK + 4] = f32::NAN;
        assert_eq!(
            first_non_finite(&delta, &residual),
            Some(3 * CHECK_BLOCK + 4)
        );
        delta[CHECK_BLOCK + 17] = f32::NEG_INFINITY;
        assert_eq!(first_non_finite(&delta, &residual), Some(CHECK_BLOCK + 17));
        // Finite inputs whose sum overflows.
        let big = vec![f32::MAX; 40];
        assert_eq!(first_non_finite(&big, &big), Some(0));
    }

    #[test]
    fn splits_outputs_along_the_layout() {
        let settings = CompressionSettings {
            chunk_len: 100,
            density: 0.05,
            ..Default::default()
        };
        let layout = Layout::new(250, &settings);
        let mut scales = vec![0.0; layout.chunks];
        let mut indices = vec![0; layout.index_bytes()];
        let mut values = vec![0; layout.value_bytes()];
        let outputs = split_outputs(&layout, &mut scales, &mut indices, &mut values);
        let sizes: Vec<_> = outputs
            .iter()
            .map(|o| (o.k, o.indices.len(), o.values.len()))
            .collect();
        // 0.05 in binary32 is a little above 0.05: the 50-entry tail keeps
        // round(2.50000004) = 3. Indices take 7 bits.
        assert_eq!(sizes, [(5, 5, 5), (5, 5, 5), (3, 3, 3)]);
    }
}
