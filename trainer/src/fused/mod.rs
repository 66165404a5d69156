//! Fused kernels, each with its own backward pass, for the work that
//! dominates a small model's step besides the matrix products: causal
//! attention, GELU, layer norm, the cross-entropy loss, the bias and
//! reshapes around each linear layer, and the AdamW update.
//!
//! Candle would build each of these from several operations, every one
//! allocating a tensor, walking memory again and, backward, costing a
//! zeroed gradient and an add; here each is one graph node, one loop
//! forward and one loop backward.
//!
//! On a GPU (feature `cuda`) the same ops run CUDA kernels of their own
//! (launched by [`crate::device`]) and leave the matrix products to candle,
//! which hands them to cuBLAS: a linear layer is a product and a bias
//! kernel, attention splits its heads ([`SplitHeads`]), multiplies, takes
//! the causal softmax ([`CausalSoftmax`]), multiplies and merges them back
//! ([`MergeHeads`]). Elsewhere the model uses the composed versions in
//! [`crate::model`], which compute the same function.
//!
//! A training pass on the CPU goes further: the same kernels, called on
//! plain slices, run the whole model forward and backward without candle's
//! graph (`step`), which is where [`crate::LocalTrainer::gradient`] gets its
//! gradient. The candle ops serve the forward-only uses (evaluation,
//! logits).

mod adamw;
mod attention;
mod gelu;
mod heads;
mod layer_norm;
mod linear;
mod loss;
mod matmul;
mod scratch;
mod softmax;
mod step;

pub use adamw::{AdamWMoment, AdamWUpdate};
pub use attention::CausalAttention;
pub use gelu::Gelu;
pub use heads::{HeadShape, MergeHeads, SplitHeads};
pub use layer_norm::LayerNorm;
pub use linear::{ColumnSums, Linear};
pub use loss::CrossEntropy;
pub(crate) use scratch::Scratch;
pub use softmax::CausalSoftmax;
pub(crate) use step::{loss_and_gradient, pass_bytes_per_token};

use candle_core::{CpuStorage, Layout, Tensor};

type Result<T> = candle_core::Result<T>;

/// The three gradients of an op of `(x, w, b)` from one gradient op's
/// output, `dx ‖ dw ‖ db` laid end to end, each shaped as its input.
fn split_gradients(
    all: &Tensor,
    (x, w, b): (&Tensor, &Tensor, &Tensor),
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let (n, nw, nb) = (x.elem_count(), w.elem_count(), b.elem_count());
    let dx = all.narrow(0, 0, n)?.reshape(x.shape())?;
    let dw = all.narrow(0, n, nw)?.reshape(w.shape())?;
    let db = all.narrow(0, n + nw, nb)?.reshape(b.shape())?;
    Ok((Some(dx), Some(dw), Some(db)))
}

/// The contiguous f32 data of a storage, or an error naming the op.
fn slice<'a>(storage: &'a CpuStorage, layout: &Layout, op: &'static str) -> Result<&'a [f32]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&storage.as_slice::<f32>()?[start..end]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

fn last_dim(layout: &Layout) -> Result<usize> {
    layout
        .dims()
        .last()
        .copied()
        .ok_or_else(|| candle_core::Error::Msg("scalar input".into()))
}

/// Partial sums kept by [`lane_sum`] and [`lane_max`]: one per element of a
/// vector register, so the loops vectorize.
const LANES: usize = 8;

/// `Σ f(a_i, b_i, c_i)` over the three slices' common length, summed in
/// [`LANES`] interleaved partial sums that are then added in a fixed order.
/// Unlike a plain left-to-right sum this vectorizes; the order is still
/// fixed, so the same inputs always give the same bits.
#[inline(always)]
fn lane_sum(a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let n = a.len().min(b.len()).min(c.len());
    let (a, b, c) = (&a[..n], &b[..n], &c[..n]);
    let mut acc = [0.0f32; LANES];
    let (ca, cb, cc) = (
        a.chunks_exact(LANES),
        b.chunks_exact(LANES),
        c.chunks_exact(LANES),
    );
    let (ra, rb, rc) = (ca.remainder(), cb.remainder(), cc.remainder());
    for ((a, b), c) in ca.zip(cb).zip(cc) {
        for l in 0..LANES {
            acc[l] += f(a[l], b[l], c[l]);
        }
    }
    for ((acc, &a), (&b, &c)) in acc.iter_mut().zip(ra).zip(rb.iter().zip(rc)) {
        *acc += f(a, b, c);
    }
    let half = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    (half[0] + half[2]) + (half[1] + half[3])
}

/// The largest element of `xs` (−∞ when empty), vectorized as
/// [`lane_sum`].
#[inline(always)]
fn lane_max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            acc[l] = acc[l].max(c[l]);
        }
    }
    for (acc, &x) in acc.iter_mut().zip(rest) {
        *acc = acc.max(x);
    }
    acc.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x))
}

/// `e^x` in binary32 without a libm call, so loops over it vectorize:
/// `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, a degree-6 polynomial for `e^r`,
/// and `2^n` put into the exponent bits. Within 4 ulp of `exp` on
/// [−87, 88]; inputs are clamped to that range first, so the result is
/// never 0 or infinite (except for NaN, which stays NaN).
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    // Adding 1.5 · 2²³ rounds to an integer (to nearest, ties to even) and
    // leaves it in the low mantissa bits: the sum's bits are 0x4B40_0000 + n.
    // No float-to-int conversion, which would stop the loop vectorizing on
    // the baseline x86-64 target.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    // ln 2 split in two so that n·ln 2 is exact to f32 precision.
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_67
                    + r * (0.041_666_668 + r * (0.008_333_334 + r * 0.001_388_889)))));
    // 2^n: n + 127 in the exponent bits; the shift drops the sum's
    // 0x4B40_0000 along with everything above the exponent (n ∈ [−126, 127]).
    p * f32::from_bits(shifted.to_bits().wrapping_add(127) << 23)
}

/// `tanh(u) = 1 − 2 / (e^{2u} + 1)`, through [`fast_exp`].
#[inline(always)]
fn fast_tanh(u: f32) -> f32 {
    1.0 - 2.0 / (fast_exp(2.0 * u) + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_within_four_ulp_of_exp() {
        let mut x = -87.0f32;
        while x < 88.0 {
            let (fast, exact) = (fast_exp(x), x.exp());
            let ulps = (fast.to_bits() as i64 - exact.to_bits() as i64).abs();
            assert!(ulps <= 4, "exp({x}): {fast} vs {exact} ({ulps} ulp)");
            x += 0.013;
        }
        assert!(fast_exp(-200.0) < 1e-37 && fast_exp(200.0).is_finite());
        assert!(fast_exp(f32::NAN).is_nan());
    }

    #[test]
    fn lane_sum_and_max_match_plain_loops() {
        for n in [0usize, 1, 7, 8, 9, 63, 130] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.7).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.3).cos()).collect();
            let plain: f64 = a.iter().zip(&b).map(|(&x, &y)| f64::from(x * y)).sum();
            let fused = lane_sum(&a, &b, &a, |x, y, _| x * y);
            assert!(
                (f64::from(fused) - plain).abs() < 1e-5,
                "{n}: {fused} vs {plain}"
            );
            let max = a.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            assert_eq!(lane_max(&a), max);
        }
    }

    #[test]
    fn fast_tanh_saturates_and_is_odd() {
        assert_eq!(fast_tanh(50.0), 1.0);
        assert_eq!(fast_tanh(-50.0), -1.0);
        for u in [0.1f32, 0.7, 2.0, 5.0] {
            assert!((fast_tanh(u) - u.tanh()).abs() < 1e-6);
            assert!((fast_tanh(-u) + fast_tanh(u)).abs() < 1e-6);
        }
    }
}
