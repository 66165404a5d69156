//! Exact top-k by magnitude within one chunk.
//!
//! The entries kept are the `k` of largest `|x|`; between equal magnitudes the
//! lower index wins. For finite `f32` the order of `|x|` is the order of the
//! bit pattern with the sign cleared, read as an integer, so the selection
//! compares integers only and any implementation gets the same set:
//! sort the keys `(|x| bits) << 32 | !index` descending and take the first
//! `k`.
//!
//! Two exact strategies, chosen by how many entries are kept:
//!
//! - Sparse (`k` at most a quarter of the chunk's columns): read the chunk as
//!   16 rows and take the largest magnitude of each column. The `k`-th largest
//!   of those column maxima, `t`, is reached by `k` distinct entries, so the
//!   `k`-th largest magnitude of the chunk is at least `t`: only entries of
//!   magnitude `≥ t` — found in the few columns whose maximum is `≥ t` — can be
//!   kept, and the keys of those candidates are selected directly.
//! - Dense: one scan with a min-heap of the `k` best keys so far. An entry can
//!   only enter if its magnitude is strictly above the heap's smallest (an equal
//!   magnitude loses on its higher index); a block of 16 entries is first
//!   tested as a whole against that floor, which compiles to vector compares.

/// Entries per block tested at once against the heap's floor.
const BLOCK: usize = 16;

/// Entries per column of the sparse strategy.
const ROWS: usize = 16;

/// The sparse strategy runs when `k × SPARSE_RATIO ≤ columns`.
const SPARSE_RATIO: usize = 4;

/// Working memory for [`top_k`], reused from chunk to chunk.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    keys: Vec<u64>,
    maxima: Vec<f32>,
    order: Vec<u32>,
}

/// The magnitude of `x` as an integer that orders like `|x|` (for finite `x`).
#[inline(always)]
pub(crate) fn magnitude(x: f32) -> u32 {
    x.to_bits() & 0x7fff_ffff
}

/// The selection key of entry `index` with magnitude `mag`: larger is better.
#[inline(always)]
fn key(mag: u32, index: usize) -> u64 {
    (u64::from(mag) << 32) | u64::from(!(index as u32))
}

#[inline(always)]
fn index_of(key: u64) -> u32 {
    !(key as u32)
}

#[inline(always)]
fn floor_of(heap: &[u64]) -> u32 {
    (heap[0] >> 32) as u32
}

/// Whether any entry of `block` has a magnitude above `floor`. Magnitudes are
/// below 2^31, so a signed compare is exact (and is the one SSE2 has).
#[inline(always)]
fn any_above(block: &[f32; BLOCK], floor: u32) -> bool {
    let floor = floor as i32;
    let mut hit = false;
    for &x in block {
        hit |= magnitude(x) as i32 > floor;
    }
    hit
}

/// Restores the min-heap property below position `i`.
#[inline]
fn sift_down(heap: &mut [u64], mut i: usize) {
    let n = heap.len();
    let moving = heap[i];
    loop {
        let left = 2 * i + 1;
        if left >= n {
            break;
        }
        let right = left + 1;
        let child = if right < n && heap[right] < heap[left] {
            right
        } else {
            left
        };
        if heap[child] >= moving {
            break;
        }
        heap[i] = heap[child];
        i = child;
    }
    heap[i] = moving;
}

/// Offers entry `index` (magnitude `mag`) to the heap; returns the new floor.
#[inline]
fn offer(heap: &mut [u64], mag: u32, index: usize, floor: u32) -> u32 {
    if mag > floor {
        heap[0] = key(mag, index);
        sift_down(heap, 0);
        floor_of(heap)
    } else {
        floor
    }
}

/// Writes to `out` the indices of the `k` entries of `chunk` with the largest
/// magnitude, ascending. `chunk` must be finite and shorter than 2^32.
pub(crate) fn top_k(chunk: &[f32], k: usize, scratch: &mut Scratch, out: &mut Vec<u32>) {
    out.clear();
    if k == 0 {
        return;
    }
    if k >= chunk.len() {
        out.extend(0..chunk.len() as u32);
        return;
    }
    if k * SPARSE_RATIO <= chunk.len().div_ceil(ROWS) {
        by_block_maxima(chunk, k, scratch);
    } else {
        by_heap(chunk, k, &mut scratch.keys);
    }
    out.extend(scratch.keys.iter().map(|&key| index_of(key)));
    out.sort_unstable();
}

/// The sparse strategy: leaves the `k` best keys in `scratch.keys`.
///
/// The chunk is read as `ROWS` rows of `width = ceil(len / ROWS)` entries (the
/// last row may be short) and a block is a column: entries `c, c + width,
/// c + 2 × width, …`. Column maxima are then an entry-wise max of rows, which
/// compiles to vector `max` instructions (magnitudes are compared as floats:
/// for finite values that is the order of their bits).
fn by_block_maxima(chunk: &[f32], k: usize, scratch: &mut Scratch) {
    let Scratch {
        keys,
        maxima,
        order,
    } = scratch;
    let width = chunk.len().div_ceil(ROWS);
    let mut rows = chunk.chunks(width);
    maxima.clear();
    maxima.extend(rows.next().unwrap_or_default().iter().map(|x| x.abs()));
    for row in rows {
        for (max, &x) in maxima.iter_mut().zip(row) {
            let a = x.abs();
            *max = if a > *max { a } else { *max };
        }
    }
    order.clear();
    order.extend(maxima.iter().map(|max| max.to_bits()));
    let at = order.len() - k;
    let (_, &mut floor, _) = order.select_nth_unstable(at);

    // The candidates: entries of magnitude ≥ floor, which lie in the columns
    // whose maximum is ≥ floor. Written without branches, then cut to length.
    keys.clear();
    let mut found = 0;
    for (c, max) in maxima.iter().enumerate() {
        if max.to_bits() < floor {
            continue;
        }
        keys.resize(found + ROWS, 0);
        for i in (c..chunk.len()).step_by(width) {
            let mag = magnitude(chunk[i]);
            keys[found] = key(mag, i);
            found += usize::from(mag >= floor);
        }
    }
    keys.truncate(found);
    if found > k {
        keys.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
        keys.truncate(k);
    }
}

/// The dense strategy: leaves the `k` best keys in `heap`.
fn by_heap(chunk: &[f32], k: usize, heap: &mut Vec<u64>) {
    heap.clear();
    heap.extend(
        chunk[..k]
            .iter()
            .enumerate()
            .map(|(i, &x)| key(magnitude(x), i)),
    );
    for i in (0..k / 2).rev() {
        sift_down(heap, i);
    }
    let mut floor = floor_of(heap);
    let rest = &chunk[k..];
    let mut blocks = rest.chunks_exact(BLOCK);
    for (b, block) in blocks.by_ref().enumerate() {
        let Ok(block) = <&[f32; BLOCK]>::try_from(block) else {
            continue;
        };
        if any_above(block, floor) {
            let base = k + b * BLOCK;
            for (j, &x) in block.iter().enumerate() {
                floor = offer(heap, magnitude(x), base + j, floor);
            }
        }
    }
    let base = k + rest.len() / BLOCK * BLOCK;
    for (j, &x) in blocks.remainder().iter().enumerate() {
        floor = offer(heap, magnitude(x), base + j, floor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition: sort every key descending, keep `k`, sort the indices.
    fn by_sorting(chunk: &[f32], k: usize) -> Vec<u32> {
        let mut keys: Vec<u64> = chunk
            .iter()
            .enumerate()
            .map(|(i, &x)| key(magnitude(x), i))
            .collect();
        keys.sort_unstable_by(|a, b| b.cmp(a));
        let mut kept: Vec<u32> = keys[..k.min(chunk.len())]
            .iter()
            .map(|&key| index_of(key))
            .collect();
        kept.sort_unstable();
        kept
    }

    fn select(chunk: &[f32], k: usize) -> Vec<u32> {
        let (mut scratch, mut out) = (Scratch::default(), Vec::new());
        top_k(chunk, k, &mut scratch, &mut out);
        out
    }

    #[test]
    fn keeps_the_largest_magnitudes_in_index_order() {
        let chunk = [0.5, -3.0, 1.0, 2.5, -0.25, 3.0, 0.0];
        assert_eq!(select(&chunk, 3), [1, 3, 5]);
        assert_eq!(select(&chunk, 1), [1]);
    }

    #[test]
    fn ties_go_to_the_lower_index() {
        let chunk = [1.0, -1.0, 1.0, 0.5, -1.0];
        assert_eq!(select(&chunk, 2), [0, 1]);
        assert_eq!(select(&[0.0; 40], 3), [0, 1, 2]);
        assert_eq!(select(&[-0.0, 0.0, -0.0], 2), [0, 1]);
        // Both strategies on a chunk of zeros.
        assert_eq!(select(&[0.0; 4096], 41), (0..41).collect::<Vec<u32>>());
        assert_eq!(select(&[0.0; 4096], 400), (0..400).collect::<Vec<u32>>());
    }

    #[test]
    fn k_zero_and_k_all() {
        assert!(select(&[1.0, 2.0], 0).is_empty());
        assert_eq!(select(&[1.0, 2.0, 0.0], 3), [0, 1, 2]);
        assert_eq!(select(&[7.0], 1), [0]);
    }

    #[test]
    fn magnitude_orders_like_abs() {
        let xs = [0.0, 1e-45, 1e-38, 0.1, 1.0, 3.5, 1e30, f32::MAX];
        for pair in xs.windows(2) {
            assert!(magnitude(pair[0]) < magnitude(pair[1]));
            assert!(magnitude(-pair[0]) < magnitude(pair[1]));
        }
    }

    #[test]
    fn matches_sorting_on_varied_chunks() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for len in [1usize, 5, 16, 17, 100, 1000, 4096, 5000] {
            let chunk: Vec<f32> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    // Few distinct values, so that ties are common.
                    ((state >> 40) % 64) as f32 - 32.0
                })
                .collect();
            for k in [
                0,
                1,
                2,
                3,
                len / 80,
                len / 64,
                len / 3,
                len / 2,
                len.saturating_sub(1),
                len,
            ] {
                assert_eq!(select(&chunk, k), by_sorting(&chunk, k), "len {len} k {k}");
            }
        }
    }
}
