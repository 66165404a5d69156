//! XSalsa20, the stream cipher of libp2p's pnet, 32 blocks at a time.
//!
//! libp2p-pnet's own cipher (the `salsa20` crate) computes one 64-byte
//! block at a time in scalar code: under 1 GB/s on one core, which bounds
//! a private swarm's transfers well below its TLS. Here the Salsa20 state
//! of 32 consecutive blocks is kept word by word, the same word of every
//! block side by side, so each step of a round is one operation over 32
//! lanes, which the compiler turns into AVX-512 or AVX2 instructions
//! (picked at run time; plain code elsewhere). The keystream is the same
//! bits as the crate's: the tests compare the two.
//!
//! ```
//! use p2ptrain_node::net::private::XSalsa20;
//!
//! let (key, nonce) = ([7u8; 32], [9u8; 24]);
//! let mut message = *b"the same keystream both ways";
//! XSalsa20::new(&key, &nonce).apply_keystream(&mut message);
//! assert_ne!(&message, b"the same keystream both ways");
//! // Split anywhere, the stream goes on where it stopped.
//! let mut decrypt = XSalsa20::new(&key, &nonce);
//! let (head, tail) = message.split_at_mut(5);
//! decrypt.apply_keystream(head);
//! decrypt.apply_keystream(tail);
//! assert_eq!(&message, b"the same keystream both ways");
//! ```

/// Blocks computed at once.
const LANES: usize = 32;
/// Keystream bytes computed at once.
const BATCH: usize = 64 * LANES;
/// "expand 32-byte k", Salsa20's constant words.
const SIGMA: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];

/// Computes the keystream of blocks `counter..counter + LANES` of the
/// Salsa20 state `input` into `out`.
type Blocks = fn(&[u32; 16], u64, &mut [u8; BATCH]);

/// An XSalsa20 keystream, applied by XOR to the bytes given, in order.
pub struct XSalsa20 {
    /// Salsa20's state for the subkey and the nonce's last 8 bytes (its
    /// block counter, words 8 and 9, left at zero).
    input: [u32; 16],
    /// The first block of the next batch.
    counter: u64,
    /// The current batch of keystream.
    keystream: Box<[u8; BATCH]>,
    /// Bytes of `keystream` already applied.
    used: usize,
    blocks: Blocks,
}

impl XSalsa20 {
    /// The keystream of `key` and `nonce`, from its first byte.
    #[must_use]
    pub fn new(key: &[u8; 32], nonce: &[u8; 24]) -> Self {
        let (head, tail) = nonce.split_at(16);
        let subkey = hsalsa20(key, words(head));
        let tail = words::<2>(tail);
        Self {
            input: state(&subkey, [tail[0], tail[1], 0, 0]),
            counter: 0,
            keystream: Box::new([0; BATCH]),
            used: BATCH,
            blocks: best_blocks(),
        }
    }

    /// XORs the next `data.len()` bytes of the keystream into `data`.
    pub fn apply_keystream(&mut self, mut data: &mut [u8]) {
        while !data.is_empty() {
            if self.used == BATCH {
                (self.blocks)(&self.input, self.counter, &mut self.keystream);
                // 2⁶⁴ blocks: never reached.
                self.counter = self.counter.wrapping_add(LANES as u64);
                self.used = 0;
            }
            let take = data.len().min(BATCH - self.used);
            let (now, rest) = data.split_at_mut(take);
            for (byte, key) in now.iter_mut().zip(&self.keystream[self.used..]) {
                *byte ^= key;
            }
            self.used += take;
            data = rest;
        }
    }
}

/// The little-endian words of `bytes` (`N` × 4 of them).
fn words<const N: usize>(bytes: &[u8]) -> [u32; N] {
    std::array::from_fn(|i| {
        u32::from_le_bytes([
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ])
    })
}

/// Salsa20's starting state: the constants, `key`, and the four words of
/// nonce and counter.
fn state(key: &[u8; 32], middle: [u32; 4]) -> [u32; 16] {
    let k: [u32; 8] = words(key);
    [
        SIGMA[0], k[0], k[1], k[2], k[3], SIGMA[1], middle[0], middle[1], middle[2], middle[3],
        SIGMA[2], k[4], k[5], k[6], k[7], SIGMA[3],
    ]
}

/// Salsa20's quarter round over `x[a], x[b], x[c], x[d]`, lane by lane.
// Each step reads two rows of `x` and writes a third, lane by lane: an
// index over the lanes is the plain way to say it (and iterators over
// copies of the rows kept the compiler from vectorizing it).
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn quarter<const L: usize>(x: &mut [[u32; L]; 16], a: usize, b: usize, c: usize, d: usize) {
    for l in 0..L {
        x[b][l] ^= x[a][l].wrapping_add(x[d][l]).rotate_left(7);
    }
    for l in 0..L {
        x[c][l] ^= x[b][l].wrapping_add(x[a][l]).rotate_left(9);
    }
    for l in 0..L {
        x[d][l] ^= x[c][l].wrapping_add(x[b][l]).rotate_left(13);
    }
    for l in 0..L {
        x[a][l] ^= x[d][l].wrapping_add(x[c][l]).rotate_left(18);
    }
}

/// Salsa20's twenty rounds (ten column and row rounds).
#[inline(always)]
fn rounds<const L: usize>(x: &mut [[u32; L]; 16]) {
    for _ in 0..10 {
        quarter(x, 0, 4, 8, 12);
        quarter(x, 5, 9, 13, 1);
        quarter(x, 10, 14, 2, 6);
        quarter(x, 15, 3, 7, 11);
        quarter(x, 0, 1, 2, 3);
        quarter(x, 5, 6, 7, 4);
        quarter(x, 10, 11, 8, 9);
        quarter(x, 15, 12, 13, 14);
    }
}

/// HSalsa20: the subkey XSalsa20 derives from `key` and the nonce's first
/// 16 bytes.
fn hsalsa20(key: &[u8; 32], nonce: [u32; 4]) -> [u8; 32] {
    let mut x = state(key, nonce).map(|word| [word]);
    rounds(&mut x);
    let mut subkey = [0u8; 32];
    for (out, word) in subkey.chunks_exact_mut(4).zip([0, 5, 10, 15, 6, 7, 8, 9]) {
        out.copy_from_slice(&x[word][0].to_le_bytes());
    }
    subkey
}

/// The blocks of [`Blocks`], in code the compiler vectorizes for whatever
/// instructions the caller enables.
#[inline(always)]
fn blocks_lanes(input: &[u32; 16], counter: u64, out: &mut [u8; BATCH]) {
    let mut x = input.map(|word| [word; LANES]);
    let block = |lane: usize| counter.wrapping_add(lane as u64);
    x[8] = std::array::from_fn(|lane| block(lane) as u32);
    x[9] = std::array::from_fn(|lane| (block(lane) >> 32) as u32);
    rounds(&mut x);
    // The feed-forward: the starting state, added back (its words are the
    // input's but for the counter, recomputed rather than kept).
    for (word, lanes) in x.iter_mut().enumerate() {
        if word != 8 && word != 9 {
            for value in lanes.iter_mut() {
                *value = value.wrapping_add(input[word]);
            }
        }
    }
    let (before, after) = x.split_at_mut(9);
    for (lane, (low, high)) in before[8].iter_mut().zip(&mut after[0]).enumerate() {
        *low = low.wrapping_add(block(lane) as u32);
        *high = high.wrapping_add((block(lane) >> 32) as u32);
    }
    for (lane, block) in out.chunks_exact_mut(64).enumerate() {
        for (word, bytes) in block.chunks_exact_mut(4).enumerate() {
            bytes.copy_from_slice(&x[word][lane].to_le_bytes());
        }
    }
}

/// [`blocks_lanes`] with AVX-512 (rotations in one instruction).
///
/// # Safety
///
/// The CPU must have AVX-512 F and VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2")]
unsafe fn blocks_avx512(input: &[u32; 16], counter: u64, out: &mut [u8; BATCH]) {
    blocks_lanes(input, counter, out);
}

/// [`blocks_lanes`] with AVX2.
///
/// # Safety
///
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn blocks_avx2(input: &[u32; 16], counter: u64, out: &mut [u8; BATCH]) {
    blocks_lanes(input, counter, out);
}

/// The fastest [`Blocks`] this CPU runs.
fn best_blocks() -> Blocks {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            // SAFETY: the CPU has AVX-512 F and VL, checked just above.
            return |input, counter, out| unsafe { blocks_avx512(input, counter, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            return |input, counter, out| unsafe { blocks_avx2(input, counter, out) };
        }
    }
    blocks_lanes
}

/// Every [`Blocks`] this CPU runs, named.
#[cfg(test)]
fn kernels() -> Vec<(&'static str, Blocks)> {
    let mut found: Vec<(&'static str, Blocks)> = vec![("portable", blocks_lanes)];
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            found.push(("avx2", |i, c, o| unsafe { blocks_avx2(i, c, o) }));
        }
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
        {
            // SAFETY: the CPU has AVX-512 F and VL, checked just above.
            found.push(("avx512", |i, c, o| unsafe { blocks_avx512(i, c, o) }));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use salsa20::cipher::{KeyIvInit, StreamCipher};

    use super::{kernels, XSalsa20, BATCH};

    /// The `salsa20` crate's keystream (libp2p-pnet's cipher).
    fn reference(key: &[u8; 32], nonce: &[u8; 24], len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        salsa20::XSalsa20::new(key.into(), nonce.into()).apply_keystream(&mut bytes);
        bytes
    }

    fn ours(cipher: &mut XSalsa20, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        cipher.apply_keystream(&mut bytes);
        bytes
    }

    #[test]
    fn every_kernel_gives_the_crates_keystream() {
        let found = kernels();
        assert!(!found.is_empty());
        for seed in 0..4u8 {
            let key: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(29) ^ seed);
            let nonce: [u8; 24] = std::array::from_fn(|i| (i as u8).wrapping_mul(53) ^ !seed);
            // Three batches and a bit: the counter carries across batches.
            let len = 3 * BATCH + 77;
            let expected = reference(&key, &nonce, len);
            for (name, kernel) in &found {
                let mut cipher = XSalsa20::new(&key, &nonce);
                cipher.blocks = *kernel;
                let got = ours(&mut cipher, len);
                assert!(got == expected, "kernel {name}, seed {seed}");
            }
        }
    }

    #[test]
    fn a_keystream_split_anywhere_is_the_same_keystream() {
        let (key, nonce) = ([3u8; 32], [4u8; 24]);
        let expected = reference(&key, &nonce, 4 * BATCH);
        let mut cipher = XSalsa20::new(&key, &nonce);
        let mut got = Vec::new();
        // Pieces of 0, 1, 63, 64, 65 bytes, a whole batch and more.
        for piece in [0, 1, 63, 64, 65, BATCH - 5, 7, BATCH + 3, 1000]
            .iter()
            .cycle()
        {
            let left = expected.len() - got.len();
            if left == 0 {
                break;
            }
            got.extend(ours(&mut cipher, (*piece).min(left)));
        }
        assert!(got == expected);
    }

    #[test]
    fn applying_the_keystream_twice_gives_the_bytes_back() {
        let message: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut bytes = message.clone();
        XSalsa20::new(&[1; 32], &[2; 24]).apply_keystream(&mut bytes);
        assert_ne!(bytes, message);
        XSalsa20::new(&[1; 32], &[2; 24]).apply_keystream(&mut bytes);
        assert_eq!(bytes, message);
    }

    #[test]
    fn the_block_counter_carries_into_its_high_word() {
        // Blocks 2³² − 1 and 2³²: the 64-bit counter's two words. The
        // crate seeks there; ours starts its batch there.
        let (key, nonce) = ([5u8; 32], [6u8; 24]);
        let first = (1u64 << 32) - 16;
        let mut expected = vec![0u8; BATCH];
        let mut crates = salsa20::XSalsa20::new((&key).into(), (&nonce).into());
        salsa20::cipher::StreamCipherSeek::seek(&mut crates, first * 64);
        crates.apply_keystream(&mut expected);
        for (name, kernel) in kernels() {
            let mut cipher = XSalsa20::new(&key, &nonce);
            cipher.blocks = kernel;
            cipher.counter = first;
            assert!(ours(&mut cipher, BATCH) == expected, "kernel {name}");
        }
    }
}
