//! Uniform midrise quantization with one scale per chunk.
//!
//! With `L = 2^bits` levels and `half = (L − 1) / 2` (127.5, 7.5 or 1.5), a
//! chunk whose kept values reach `absmax` in magnitude gets
//!
//! ```text
//! scale = absmax / half
//! code  = min(L − 1, u32(((v / scale) + half) + 0.5))   (0 when scale = 0)
//! value = (f32(code) − half) × scale
//! ```
//!
//! every operation in binary32 with round-to-nearest-even, each rounded on its
//! own (no fused multiply-add), and `u32(x)` truncating toward zero with
//! negatives going to 0. The levels are the midpoints `±0.5, ±1.5, …` times
//! `scale`, so `|v − value| ≤ scale / 2` up to a few ulps of rounding.

use p2ptrain_protocol::ValueBits;

/// Quantizes and dequantizes the values of one chunk.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Quantizer {
    half: f32,
    max_code: u32,
    scale: f32,
}

impl Quantizer {
    /// The quantizer of a chunk whose kept values reach `absmax` (≥ 0).
    pub fn for_absmax(bits: ValueBits, absmax: f32) -> Self {
        let half = half(bits);
        Self::with_scale(bits, absmax / half)
    }

    /// The quantizer with a given scale, as read from a payload.
    pub fn with_scale(bits: ValueBits, scale: f32) -> Self {
        Self {
            half: half(bits),
            max_code: bits.levels() - 1,
            scale,
        }
    }

    /// The chunk's scale.
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// The code of `v`.
    #[inline]
    pub fn code(&self, v: f32) -> u32 {
        if self.scale == 0.0 {
            return 0;
        }
        (((v / self.scale) + self.half + 0.5) as u32).min(self.max_code)
    }

    /// The value a code stands for.
    #[inline]
    pub fn value(&self, code: u32) -> f32 {
        (code as f32 - self.half) * self.scale
    }
}

/// `(2^bits − 1) / 2`, exactly.
pub(crate) fn half(bits: ValueBits) -> f32 {
    match bits {
        ValueBits::Two => 1.5,
        ValueBits::Four => 7.5,
        ValueBits::Eight => 127.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_bits_on_exact_numbers() {
        // absmax 3 -> scale 2; levels -3, -1, 1, 3.
        let q = Quantizer::for_absmax(ValueBits::Two, 3.0);
        assert_eq!(q.scale(), 2.0);
        let codes: Vec<u32> = [-3.0, -2.5, -1.0, 0.0, 1.9, 3.0]
            .iter()
            .map(|&v| q.code(v))
            .collect();
        assert_eq!(codes, [0, 0, 1, 2, 2, 3]);
        let values: Vec<f32> = (0..4).map(|c| q.value(c)).collect();
        assert_eq!(values, [-3.0, -1.0, 1.0, 3.0]);
    }

    #[test]
    fn extremes_map_to_the_end_codes() {
        for bits in [ValueBits::Two, ValueBits::Four, ValueBits::Eight] {
            for absmax in [1e-30, 0.37, 1.0, 6.0e4, 3.0e38] {
                let q = Quantizer::for_absmax(bits, absmax);
                assert_eq!(q.code(-absmax), 0, "{bits:?} {absmax}");
                assert_eq!(q.code(absmax), bits.levels() - 1, "{bits:?} {absmax}");
            }
        }
    }

    #[test]
    fn zero_scale_gives_code_zero() {
        let q = Quantizer::for_absmax(ValueBits::Eight, 0.0);
        assert_eq!(q.scale(), 0.0);
        assert_eq!(q.code(0.0), 0);
        assert_eq!(q.code(-0.0), 0);
        assert_eq!(q.value(0), 0.0);
    }

    #[test]
    fn error_is_at_most_half_a_step() {
        for bits in [ValueBits::Two, ValueBits::Four, ValueBits::Eight] {
            let absmax = 1.7f32;
            let q = Quantizer::for_absmax(bits, absmax);
            for i in 0..=10_000 {
                let v = -absmax + 2.0 * absmax * (i as f32 / 10_000.0);
                let v = v.clamp(-absmax, absmax);
                let err = (v - q.value(q.code(v))).abs();
                assert!(err <= q.scale() * 0.5001, "{bits:?} v {v} err {err}");
            }
        }
    }
}
