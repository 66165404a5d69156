//! SplitMix64: the small seeded generator behind the document shuffle and the
//! batch sampler, so every machine draws the same numbers from the same seed.

/// A SplitMix64 generator: a 64-bit counter stepped by the golden-ratio
/// increment, each output a mix of the new state.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator whose first output is the mix of `seed + 0x9E3779B97F4A7C15`.
    pub(crate) fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 uniform bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform integer in `0..bound`, without modulo bias: the high half of
    /// `next_u64() × bound`, redrawn while the low half falls below
    /// `2^64 mod bound`. `bound` must be non-zero; zero yields zero.
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        let threshold = bound.wrapping_neg() % bound;
        loop {
            let product = u128::from(self.next_u64()) * u128::from(bound);
            if (product as u64) >= threshold {
                return (product >> 64) as u64;
            }
        }
    }

    /// [`below`](Self::below) for `usize` bounds.
    pub(crate) fn below_usize(&mut self, bound: usize) -> usize {
        // usize is at most 64 bits on every supported target, and the result
        // is below `bound`, so both conversions are exact.
        self.below(bound as u64) as usize
    }

    /// Fisher–Yates: for `i` from the last index down to 1, swap item `i`
    /// with item `below(i + 1)`.
    pub(crate) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below_usize(i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SplitMix64;

    // Reference: the generator written out in Python,
    //
    //   M = 2**64 - 1
    //   def splitmix64(state):
    //       while True:
    //           state = (state + 0x9E3779B97F4A7C15) & M
    //           z = state
    //           z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
    //           z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
    //           yield z ^ (z >> 31)
    //
    //   g = splitmix64(0); print([next(g) for _ in range(3)])
    #[test]
    fn splitmix64_matches_reference_outputs_for_seed_zero() {
        let mut rng = SplitMix64::new(0);
        let outputs: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        assert_eq!(outputs, REFERENCE_SEED_ZERO);
    }

    const REFERENCE_SEED_ZERO: [u64; 3] = [
        16294208416658607535,
        7960286522194355700,
        487617019471545679,
    ];

    #[test]
    fn below_stays_in_range_and_reaches_every_value() {
        let mut rng = SplitMix64::new(9);
        let mut seen = [0usize; 7];
        for _ in 0..7_000 {
            let value = rng.below_usize(7);
            seen[value] += 1;
        }
        assert!(seen.iter().all(|&count| count > 0), "{seen:?}");
        assert_eq!(seen.iter().sum::<usize>(), 7_000);
        assert_eq!(rng.below(0), 0);
        assert_eq!(rng.below(1), 0);
    }

    #[test]
    fn shuffle_is_a_permutation_fixed_by_the_seed() {
        let mut a: Vec<u32> = (0..10).collect();
        let mut b = a.clone();
        SplitMix64::new(3).shuffle(&mut a);
        SplitMix64::new(3).shuffle(&mut b);
        assert_eq!(a, b);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<u32>>());
        assert_ne!(a, (0..10).collect::<Vec<u32>>());
    }
}
