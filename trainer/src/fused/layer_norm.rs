//! Layer norm over the last dimension as slice kernels and as a candle op.
//!
//! The forward kernel keeps each row's mean and reciprocal standard
//! deviation, so the backward kernel needs no second pass over the row to
//! find them.

use candle_core::{CpuStorage, CudaStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{lane_sum, last_dim, slice, split_gradients};
use crate::device::gpu;
use crate::model::LAYER_NORM_EPS;

type Result<T> = candle_core::Result<T>;

/// Rows per parallel task (fixed, so results never depend on the pool).
const ROWS: usize = 64;

/// A row's mean and `1 / sqrt(variance + eps)`.
fn moments(row: &[f32]) -> (f32, f32) {
    let d = row.len() as f32;
    let mean = lane_sum(row, row, row, |x, _, _| x) / d;
    let var = lane_sum(row, row, row, |x, _, _| (x - mean) * (x - mean)) / d;
    (mean, 1.0 / (var + LAYER_NORM_EPS as f32).sqrt())
}

/// `y = (x − mean) · rstd · w + b` for each row of `x` (rows as wide as
/// `w`), storing each row's `(mean, rstd)` in `stats` (two per row).
pub(super) fn layer_norm_forward(
    x: &[f32],
    (w, b): (&[f32], &[f32]),
    y: &mut [f32],
    stats: &mut [f32],
) {
    let d = w.len();
    y.par_chunks_mut(ROWS * d)
        .zip(x.par_chunks(ROWS * d))
        .zip(stats.par_chunks_mut(ROWS * 2))
        .for_each(|((y, x), stats)| {
            for ((out, row), stat) in y
                .chunks_exact_mut(d)
                .zip(x.chunks_exact(d))
                .zip(stats.chunks_exact_mut(2))
            {
                let (mean, rstd) = moments(row);
                stat[0] = mean;
                stat[1] = rstd;
                for (((o, &x), &w), &b) in out.iter_mut().zip(row).zip(w).zip(b) {
                    *o = (x - mean) * rstd * w + b;
                }
            }
        });
}

/// The backward pass of [`layer_norm_forward`]: adds the input gradient
/// into `dx` and the weight and bias gradients into `dw` and `db`, from the
/// output gradient `dy` and the saved `stats`.
pub(super) fn layer_norm_backward(
    (x, w, stats): (&[f32], &[f32], &[f32]),
    dy: &[f32],
    dx: &mut [f32],
    (dw, db): (&mut [f32], &mut [f32]),
) {
    let d = w.len();
    dx.par_chunks_mut(ROWS * d)
        .zip(x.par_chunks(ROWS * d))
        .zip(dy.par_chunks(ROWS * d))
        .zip(stats.par_chunks(ROWS * 2))
        .for_each(|(((dx, x), dy), stats)| {
            for (((dx, row), dy), stat) in dx
                .chunks_exact_mut(d)
                .zip(x.chunks_exact(d))
                .zip(dy.chunks_exact(d))
                .zip(stats.chunks_exact(2))
            {
                let (mean, rstd) = (stat[0], stat[1]);
                let sum_g = lane_sum(dy, w, w, |dy, w, _| dy * w);
                let sum_gx = lane_sum(row, dy, w, |x, dy, w| dy * w * (x - mean) * rstd);
                let (mean_g, mean_gx) = (sum_g / d as f32, sum_gx / d as f32);
                for (((dx, &x), &dy), &w) in dx.iter_mut().zip(row).zip(dy).zip(w) {
                    let xhat = (x - mean) * rstd;
                    *dx += rstd * (dy * w - mean_g - xhat * mean_gx);
                }
            }
        });
    // The parameter gradients sum over rows: in row order, on this thread.
    for ((row, dy), stat) in x
        .chunks_exact(d)
        .zip(dy.chunks_exact(d))
        .zip(stats.chunks_exact(2))
    {
        let (mean, rstd) = (stat[0], stat[1]);
        for (((dw, db), &x), &dy) in dw.iter_mut().zip(db.iter_mut()).zip(row).zip(dy) {
            *dw += dy * (x - mean) * rstd;
            *db += dy;
        }
    }
}

/// Each row's `(mean, rstd)`, two per row.
fn row_stats(x: &[f32], d: usize) -> Vec<f32> {
    let mut stats = vec![0.0f32; 2 * (x.len() / d.max(1))];
    for (row, stat) in x.chunks_exact(d).zip(stats.chunks_exact_mut(2)) {
        let (mean, rstd) = moments(row);
        stat[0] = mean;
        stat[1] = rstd;
    }
    stats
}

/// Checks that `x` is rows of `w`'s width and `b` matches `w`.
fn check(x: &[f32], w: &[f32], b_len: usize, op: &str) -> Result<()> {
    if w.is_empty() || !x.len().is_multiple_of(w.len()) || b_len != w.len() {
        candle_core::bail!(
            "{op}: {} inputs for weights of {} and a bias of {b_len}",
            x.len(),
            w.len()
        );
    }
    Ok(())
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
        check(x, w, b.len(), self.name())?;
        if last_dim(l1)? != w.len() {
            candle_core::bail!("{}: rows do not match the weights", self.name());
        }
        let mut y = vec![0.0f32; x.len()];
        let mut stats = vec![0.0f32; 2 * (x.len() / w.len())];
        layer_norm_forward(x, (w, b), &mut y, &mut stats);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        if last_dim(l1)? != l2.shape().elem_count() {
            candle_core::bail!("{}: rows do not match the weights", self.name());
        }
        let eps = LAYER_NORM_EPS as f32;
        let y = gpu::layer_norm((s1, l1), (s2, l2), (s3, l3), eps)?;
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // One pass gives dx, dw and db, laid end to end.
        let all = x.apply_op3_no_bwd(w, &grad_res.contiguous()?, &LayerNormGrad)?;
        split_gradients(&all, (x, w, b))
    }
}

/// `(x, w, dy) → dx ‖ dw ‖ db`.
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
        check(x, w, w.len(), self.name())?;
        if dy.len() != x.len() {
            candle_core::bail!("{}: {} gradients for {}", self.name(), dy.len(), x.len());
        }
        let (d, n) = (w.len(), x.len());
        let stats = row_stats(x, d);
        let mut out = vec![0.0f32; n + 2 * d];
        let (dx, rest) = out.split_at_mut(n);
        let (dw, db) = rest.split_at_mut(d);
        layer_norm_backward((x, w, &stats), dy, dx, (dw, db));
        Ok((CpuStorage::F32(out), Shape::from(n + 2 * d)))
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let eps = LAYER_NORM_EPS as f32;
        let all = gpu::layer_norm_grad((s1, l1), (s2, l2), (s3, l3), eps)?;
        let len = l1.shape().elem_count() + 2 * l2.shape().elem_count();
        Ok((all, Shape::from(len)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::LayerNorm;
    use crate::model::layer_norm;

    #[test]
    fn forward_and_gradients_match_the_composed_layer_norm() {
        let dev = Device::Cpu;
        let (rows, d) = (150, 24);
        let vals = |n: usize, k: f32| -> Vec<f32> {
            (0..n).map(|i| ((i as f32 * k).sin() * 2.0) + 0.3).collect()
        };
        let x = Var::from_slice(&vals(rows * d, 0.37), (3, rows / 3, d), &dev).unwrap();
        let w = Var::from_slice(&vals(d, 1.3), d, &dev).unwrap();
        let b = Var::from_slice(&vals(d, 0.7), d, &dev).unwrap();
        let g = Tensor::from_slice(&vals(rows * d, 0.11), (3, rows / 3, d), &dev).unwrap();
        let run = |fused: bool| {
            let y = if fused {
                x.apply_op3(&w, &b, LayerNorm).unwrap()
            } else {
                layer_norm(&x, &w, &b).unwrap()
            };
            let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let grad = |v: &Var| flat(grads.get(v.as_tensor()).unwrap());
            [flat(&y), grad(&x), grad(&w), grad(&b)]
        };
        for (f, c) in run(true).iter().zip(run(false).iter()) {
            let scale = c.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (a, b) in f.iter().zip(c) {
                assert!((a - b).abs() <= 1e-4 * scale, "{a} vs {b}");
            }
        }
    }
}
