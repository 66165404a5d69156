//! A small seeded generator: the same seed gives the same stream on every
//! machine, so a simulation's trace depends on its seed alone.

/// SplitMix64, with a Gaussian sampler on top.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// A generator for one stream derived from `seed` and `stream`, so that
    /// peers draw independent numbers whatever order they run in.
    pub fn derive(seed: u64, stream: u64) -> Self {
        let mut mixer = Self::new(seed ^ stream.wrapping_mul(0xa076_1d64_78bd_642f));
        Self::new(mixer.next_u64())
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Approximately standard normal: the sum of four uniforms, recentred and
    /// rescaled (Irwin–Hall). Only additions, so it is bit-exact everywhere.
    pub fn normal(&mut self) -> f32 {
        let sum: f64 = (0..4).map(|_| self.uniform()).sum();
        ((sum - 2.0) * 3f64.sqrt()) as f32
    }

    /// Fills `out` with [`Rng::normal`] samples times `scale`.
    pub fn fill_normal(&mut self, out: &mut [f32], scale: f32) {
        for x in out {
            *x = self.normal() * scale;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let a: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::new(3);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::new(3);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(Rng::derive(3, 0).next_u64(), Rng::derive(3, 1).next_u64());
    }

    #[test]
    fn normal_has_unit_variance() {
        let mut rng = Rng::new(11);
        let n = 100_000;
        let samples: Vec<f64> = (0..n).map(|_| f64::from(rng.normal())).collect();
        let mean = samples.iter().sum::<f64>() / n as f64;
        let var = samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
    }
}
