//! BLAKE3's chaining values of whole 1 KiB chunks, 16 chunks at a time.
//!
//! A checkpoint's tree needs the chaining value of every chunk, so chunks
//! cannot go through the `blake3` crate's `Hasher`, whose SIMD paths hash
//! many chunks at once but give back only the values of the subtrees
//! above them; one chunk at a time, it runs at about 0.7 GB/s here. Here
//! the compression state of 16 consecutive chunks is kept word by word,
//! the same word of every chunk side by side, so each step of a round is
//! one operation over 16 lanes, which the compiler turns into AVX-512 or
//! AVX2 instructions (picked at run time; plain code elsewhere). The
//! values are the same bits as the crate's: the tests compare the two.

use blake3::hazmat::ChainingValue;

/// Chunks hashed at once.
pub(super) const LANES: usize = 16;
const CHUNK_LEN: usize = blake3::CHUNK_LEN;
const BLOCK_LEN: usize = 64;
/// BLAKE3's flags for a chunk's first and last block.
const CHUNK_START: u32 = 1;
const CHUNK_END: u32 = 2;
/// BLAKE3's initial value: SHA-256's, the key of plain hashing.
const IV: [u32; 8] = [
    0x6A09_E667,
    0xBB67_AE85,
    0x3C6E_F372,
    0xA54F_F53A,
    0x510E_527F,
    0x9B05_688C,
    0x1F83_D9AB,
    0x5BE0_CD19,
];
/// The order of the message words in each round.
const SCHEDULE: [[usize; 16]; 7] = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8],
    [3, 4, 10, 12, 13, 2, 7, 14, 6, 5, 9, 0, 11, 15, 8, 1],
    [10, 7, 12, 9, 14, 3, 13, 15, 4, 0, 11, 2, 5, 8, 1, 6],
    [12, 13, 9, 11, 15, 10, 14, 8, 7, 2, 5, 3, 0, 1, 6, 4],
    [9, 14, 11, 5, 8, 12, 15, 1, 13, 3, 0, 10, 2, 6, 4, 7],
    [11, 15, 5, 0, 1, 9, 8, 6, 14, 10, 2, 12, 3, 4, 7, 13],
];

/// The chaining values of the [`LANES`] whole chunks in `chunks`, the
/// first of which is chunk number `counter` of its content.
pub(super) type Chunks = fn(&[u8; LANES * CHUNK_LEN], u64, &mut [ChainingValue; LANES]);

/// The fastest [`Chunks`] this CPU runs.
pub(super) fn best() -> Chunks {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            // SAFETY: the CPU has AVX-512 F and VL, checked just above.
            return |chunks, counter, out| unsafe { chunks_avx512(chunks, counter, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            return |chunks, counter, out| unsafe { chunks_avx2(chunks, counter, out) };
        }
    }
    chunks_lanes
}

/// One step of BLAKE3's mixing over `v[a], v[b], v[c], v[d]` with message
/// words `x` and `y`, lane by lane.
// Each step reads rows of `v` and writes one, lane by lane: an index over
// the lanes is the plain way to say it, and what the compiler vectorizes.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn mix(
    v: &mut [[u32; LANES]; 16],
    (a, b, c, d): (usize, usize, usize, usize),
    x: &[u32; LANES],
    y: &[u32; LANES],
) {
    for l in 0..LANES {
        v[a][l] = v[a][l].wrapping_add(v[b][l]).wrapping_add(x[l]);
    }
    for l in 0..LANES {
        v[d][l] = (v[d][l] ^ v[a][l]).rotate_right(16);
    }
    for l in 0..LANES {
        v[c][l] = v[c][l].wrapping_add(v[d][l]);
    }
    for l in 0..LANES {
        v[b][l] = (v[b][l] ^ v[c][l]).rotate_right(12);
    }
    for l in 0..LANES {
        v[a][l] = v[a][l].wrapping_add(v[b][l]).wrapping_add(y[l]);
    }
    for l in 0..LANES {
        v[d][l] = (v[d][l] ^ v[a][l]).rotate_right(8);
    }
    for l in 0..LANES {
        v[c][l] = v[c][l].wrapping_add(v[d][l]);
    }
    for l in 0..LANES {
        v[b][l] = (v[b][l] ^ v[c][l]).rotate_right(7);
    }
}

/// Round `R` of BLAKE3's compression: the columns, then the diagonals,
/// each mixed with the message words in that round's order (spelled out
/// per round, so that every index is known when the code is compiled).
#[inline(always)]
fn round<const R: usize>(v: &mut [[u32; LANES]; 16], m: &[[u32; LANES]; 16]) {
    let m = |i: usize| &m[SCHEDULE[R][i]];
    mix(v, (0, 4, 8, 12), m(0), m(1));
    mix(v, (1, 5, 9, 13), m(2), m(3));
    mix(v, (2, 6, 10, 14), m(4), m(5));
    mix(v, (3, 7, 11, 15), m(6), m(7));
    mix(v, (0, 5, 10, 15), m(8), m(9));
    mix(v, (1, 6, 11, 12), m(10), m(11));
    mix(v, (2, 7, 8, 13), m(12), m(13));
    mix(v, (3, 4, 9, 14), m(14), m(15));
}

/// [`Chunks`] in code the compiler vectorizes for whatever instructions
/// the caller enables.
#[inline(always)]
fn chunks_lanes(chunks: &[u8; LANES * CHUNK_LEN], counter: u64, out: &mut [ChainingValue; LANES]) {
    let chunk = |lane: usize| counter.wrapping_add(lane as u64);
    let counter_low: [u32; LANES] = std::array::from_fn(|lane| chunk(lane) as u32);
    let counter_high: [u32; LANES] = std::array::from_fn(|lane| (chunk(lane) >> 32) as u32);
    let mut h = IV.map(|word| [word; LANES]);
    for block in 0..CHUNK_LEN / BLOCK_LEN {
        let mut flags = 0;
        if block == 0 {
            flags |= CHUNK_START;
        }
        if block == CHUNK_LEN / BLOCK_LEN - 1 {
            flags |= CHUNK_END;
        }
        let m: [[u32; LANES]; 16] = std::array::from_fn(|word| {
            std::array::from_fn(|lane| {
                let at = lane * CHUNK_LEN + block * BLOCK_LEN + 4 * word;
                u32::from_le_bytes([chunks[at], chunks[at + 1], chunks[at + 2], chunks[at + 3]])
            })
        });
        let mut v = [[0u32; LANES]; 16];
        v[..8].copy_from_slice(&h);
        for (word, iv) in IV[..4].iter().enumerate() {
            v[8 + word] = [*iv; LANES];
        }
        v[12] = counter_low;
        v[13] = counter_high;
        v[14] = [BLOCK_LEN as u32; LANES];
        v[15] = [flags; LANES];
        round::<0>(&mut v, &m);
        round::<1>(&mut v, &m);
        round::<2>(&mut v, &m);
        round::<3>(&mut v, &m);
        round::<4>(&mut v, &m);
        round::<5>(&mut v, &m);
        round::<6>(&mut v, &m);
        for (word, lanes) in h.iter_mut().enumerate() {
            for (lane, value) in lanes.iter_mut().enumerate() {
                *value = v[word][lane] ^ v[word + 8][lane];
            }
        }
    }
    for (lane, value) in out.iter_mut().enumerate() {
        for (word, bytes) in value.chunks_exact_mut(4).enumerate() {
            bytes.copy_from_slice(&h[word][lane].to_le_bytes());
        }
    }
}

/// [`chunks_lanes`] with AVX-512 (rotations in one instruction).
///
/// # Safety
///
/// The CPU must have AVX-512 F and VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2")]
unsafe fn chunks_avx512(
    chunks: &[u8; LANES * CHUNK_LEN],
    counter: u64,
    out: &mut [ChainingValue; LANES],
) {
    chunks_lanes(chunks, counter, out);
}

/// [`chunks_lanes`] with AVX2.
///
/// # Safety
///
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn chunks_avx2(
    chunks: &[u8; LANES * CHUNK_LEN],
    counter: u64,
    out: &mut [ChainingValue; LANES],
) {
    chunks_lanes(chunks, counter, out);
}

/// Every [`Chunks`] this CPU runs, named.
#[cfg(test)]
pub(super) fn kernels() -> Vec<(&'static str, Chunks)> {
    let mut found: Vec<(&'static str, Chunks)> = vec![("portable", chunks_lanes)];
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            found.push(("avx2", |c, n, o| unsafe { chunks_avx2(c, n, o) }));
        }
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            // SAFETY: the CPU has AVX-512 F and VL, checked just above.
            found.push(("avx512", |c, n, o| unsafe { chunks_avx512(c, n, o) }));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use blake3::hazmat::HasherExt;

    use super::*;

    #[test]
    fn every_kernel_gives_the_crate_s_chaining_values() -> crate::TestResult {
        let chunks: Box<[u8; LANES * CHUNK_LEN]> = (0..LANES * CHUNK_LEN)
            .map(|i| (i * 131 % 251) as u8)
            .collect::<Vec<u8>>()
            .try_into()
            .map_err(|_| "not 16 chunks")?;
        // Counters whose lanes cross into the counter's high word, too.
        for counter in [0, 7, (1 << 32) - 5, 3 << 40] {
            let expected: Vec<ChainingValue> = chunks
                .chunks_exact(CHUNK_LEN)
                .enumerate()
                .map(|(lane, chunk)| {
                    blake3::Hasher::new()
                        .set_input_offset((counter + lane as u64) * CHUNK_LEN as u64)
                        .update(chunk)
                        .finalize_non_root()
                })
                .collect();
            for (name, kernel) in kernels() {
                let mut out = [[0u8; 32]; LANES];
                kernel(&chunks, counter, &mut out);
                assert_eq!(
                    out.as_slice(),
                    expected.as_slice(),
                    "{name}, chunk {counter}"
                );
            }
        }
        Ok(())
    }
}
