//! Fused CPU kernels, each with its own backward pass, for the work that
//! dominates a small model's step besides the matrix products: causal
//! attention, GELU, layer norm, the cross-entropy loss, and the bias and
//! reshapes around each linear layer.
//!
//! Candle would build each of these from several operations, every one
//! allocating a tensor and walking memory again; here each is one loop
//! forward and one loop backward. On other devices the model uses the
//! composed versions in [`crate::model`], which compute the same function.

mod attention;
mod linear;
mod matmul;

pub use attention::CausalAttention;
pub use linear::Linear;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};

use crate::model::LAYER_NORM_EPS;

type Result<T> = candle_core::Result<T>;

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

const GELU_C: f32 = 0.797_884_6; // sqrt(2 / π)
const GELU_A: f32 = 0.044_715;

/// GELU, tanh approximation (GPT-2's `gelu_new`).
pub struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "fused-gelu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(storage, layout, self.name())?;
        let y = x
            .iter()
            .map(|&x| 0.5 * x * (1.0 + fast_tanh(GELU_C * (x + GELU_A * x * x * x))))
            .collect();
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            arg.apply_op2_no_bwd(&grad_res.contiguous()?, &GeluGrad)?,
        ))
    }
}

struct GeluGrad;

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "fused-gelu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, dy) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?);
        let dx = x
            .iter()
            .zip(dy)
            .map(|(&x, &dy)| {
                let t = fast_tanh(GELU_C * (x + GELU_A * x * x * x));
                let du = GELU_C * (1.0 + 3.0 * GELU_A * x * x);
                dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du)
            })
            .collect();
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Layer norm over the last dimension: `(x − mean) / sqrt(var + eps) · w + b`.
pub struct LayerNorm;

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let (w, b) = (slice(s2, l2, self.name())?, slice(s3, l3, self.name())?);
        let d = last_dim(l1)?;
        let mut y = vec![0.0f32; x.len()];
        for (row, out) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
            let (mean, rstd) = moments(row);
            for (((o, &x), &w), &b) in out.iter_mut().zip(row).zip(w).zip(b) {
                *o = (x - mean) * rstd * w + b;
            }
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = w.elem_count();
        let n = x.elem_count();
        // One pass gives dx, dw and db, laid end to end.
        let all = x.apply_op3_no_bwd(w, &grad_res.contiguous()?, &LayerNormGrad)?;
        let dx = all.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = all.narrow(0, n, d)?.reshape(w.shape())?;
        let db = all.narrow(0, n + d, d)?.reshape(w.shape())?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

fn moments(row: &[f32]) -> (f32, f32) {
    let d = row.len() as f32;
    let mean = row.iter().sum::<f32>() / d;
    let var = row.iter().map(|&x| (x - mean) * (x - mean)).sum::<f32>() / d;
    (mean, 1.0 / (var + LAYER_NORM_EPS as f32).sqrt())
}

struct LayerNormGrad;

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "fused-layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let w = slice(s2, l2, self.name())?;
        let dy = slice(s3, l3, self.name())?;
        let d = last_dim(l1)?;
        let n = x.len();
        let mut out = vec![0.0f32; n + 2 * d];
        let (dx, rest) = out.split_at_mut(n);
        let (dw, db) = rest.split_at_mut(d);
        let mut xhat = vec![0.0f32; d];
        for ((row, dy), dx) in x
            .chunks_exact(d)
            .zip(dy.chunks_exact(d))
            .zip(dx.chunks_exact_mut(d))
        {
            let (mean, rstd) = moments(row);
            let (mut sum_g, mut sum_gx) = (0.0f32, 0.0f32);
            for i in 0..d {
                xhat[i] = (row[i] - mean) * rstd;
                let g = dy[i] * w[i];
                sum_g += g;
                sum_gx += g * xhat[i];
                dw[i] += dy[i] * xhat[i];
                db[i] += dy[i];
            }
            let (mean_g, mean_gx) = (sum_g / d as f32, sum_gx / d as f32);
            for i in 0..d {
                dx[i] = rstd * (dy[i] * w[i] - mean_g - xhat[i] * mean_gx);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from(n + 2 * d)))
    }
}

/// Mean cross-entropy of logits `[n, vocab]` against the targets it holds.
pub struct CrossEntropy {
    /// One target class per row.
    pub targets: Vec<u32>,
}

impl CrossEntropy {
    fn check(&self, rows: usize, vocab: usize) -> Result<()> {
        if self.targets.len() != rows || self.targets.iter().any(|&t| t as usize >= vocab) {
            candle_core::bail!(
                "cross-entropy: {} targets for {rows} rows of {vocab} classes",
                self.targets.len()
            );
        }
        Ok(())
    }
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let logits = slice(storage, layout, self.name())?;
        let v = last_dim(layout)?;
        self.check(logits.len() / v, v)?;
        let mut total = 0.0f64;
        for (row, &target) in logits.chunks_exact(v).zip(&self.targets) {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let log_sum = row.iter().map(|&x| fast_exp(x - max)).sum::<f32>().ln();
            total += f64::from(log_sum - (row[target as usize] - max));
        }
        let mean = (total / self.targets.len().max(1) as f64) as f32;
        Ok((CpuStorage::F32(vec![mean]), Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = CrossEntropyGrad {
            targets: &self.targets,
            scale: grad_res.to_scalar::<f32>()? / self.targets.len().max(1) as f32,
        };
        Ok(Some(arg.apply_op1_no_bwd(&grad)?))
    }
}

struct CrossEntropyGrad<'a> {
    targets: &'a [u32],
    scale: f32,
}

impl CustomOp1 for CrossEntropyGrad<'_> {
    fn name(&self) -> &'static str {
        "fused-cross-entropy-grad"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let logits = slice(storage, layout, self.name())?;
        let v = last_dim(layout)?;
        let mut grad = vec![0.0f32; logits.len()];
        for ((row, out), &target) in logits
            .chunks_exact(v)
            .zip(grad.chunks_exact_mut(v))
            .zip(self.targets)
        {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            let mut sum = 0.0f32;
            for (o, &x) in out.iter_mut().zip(row) {
                *o = fast_exp(x - max);
                sum += *o;
            }
            let inv = self.scale / sum;
            out.iter_mut().for_each(|o| *o *= inv);
            out[target as usize] -= self.scale;
        }
        Ok((CpuStorage::F32(grad), layout.shape().clone()))
    }
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
    fn fast_tanh_saturates_and_is_odd() {
        assert_eq!(fast_tanh(50.0), 1.0);
        assert_eq!(fast_tanh(-50.0), -1.0);
        for u in [0.1f32, 0.7, 2.0, 5.0] {
            assert!((fast_tanh(u) - u.tanh()).abs() < 1e-6);
            assert!((fast_tanh(-u) + fast_tanh(u)).abs() < 1e-6);
        }
    }
}
