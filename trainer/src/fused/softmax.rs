//! The causal softmax of attention scores as a candle op: row `i` of each
//! `time × time` matrix becomes `softmax(scale · x)` over columns `0..=i`,
//! and zero after. Between two of candle's matrix products it is attention
//! on a GPU: the backward pass of [`super::CausalAttention`] recomputes the
//! probabilities with it and takes their gradient with its own. It stands
//! for the scaling, the masking and the five operations of a composed
//! softmax, forward and backward.

use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{fast_exp, lane_max, lane_sum, slice};
use crate::device::gpu;

type Result<T> = candle_core::Result<T>;

/// The width of the square matrices in the last two dimensions.
fn time_of(layout: &Layout, op: &str) -> Result<usize> {
    match layout.dims() {
        [.., a, b] if a == b && *a > 0 => Ok(*b),
        dims => candle_core::bail!("{op}: scores of shape {dims:?} are not square matrices"),
    }
}

/// `softmax(scale · x)` over each row's first `row % time + 1` columns.
pub struct CausalSoftmax {
    /// What the scores are multiplied by first (`1 / √d_head`).
    pub scale: f32,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "fused-causal-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let time = time_of(layout, self.name())?;
        let x = slice(storage, layout, self.name())?;
        let mut y = vec![0.0f32; x.len()];
        y.par_chunks_mut(time)
            .zip(x.par_chunks(time))
            .enumerate()
            .for_each(|(row, (y, x))| {
                let seen = row % time + 1;
                let (y, x) = (&mut y[..seen], &x[..seen]);
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = self.scale * x;
                }
                let max = lane_max(y);
                for y in y.iter_mut() {
                    *y = fast_exp(*y - max);
                }
                let inv = 1.0 / lane_sum(y, y, y, |p, _, _| p);
                y.iter_mut().for_each(|y| *y *= inv);
            });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        // The launch checks the shape itself (attention calls it directly).
        let y = gpu::causal_softmax(storage, layout, self.scale)?;
        Ok((y, layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = CausalSoftmaxGrad { scale: self.scale };
        Ok(Some(res.apply_op2_no_bwd(&grad_res.contiguous()?, &grad)?))
    }
}

/// `(y, dy) → scale · y · (dy − Σ_j y_j dy_j)`, row by row: the gradient
/// of [`CausalSoftmax`] from its output.
pub(super) struct CausalSoftmaxGrad {
    pub scale: f32,
}

impl CustomOp2 for CausalSoftmaxGrad {
    fn name(&self) -> &'static str {
        "fused-causal-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let time = time_of(l1, self.name())?;
        let (y, dy) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?);
        if y.len() != dy.len() {
            candle_core::bail!("{}: {} gradients for {}", self.name(), dy.len(), y.len());
        }
        let mut dx = vec![0.0f32; y.len()];
        dx.par_chunks_mut(time)
            .zip(y.par_chunks(time).zip(dy.par_chunks(time)))
            .enumerate()
            .for_each(|(row, (dx, (y, dy)))| {
                let seen = row % time + 1;
                let dot = lane_sum(&y[..seen], &dy[..seen], y, |p, g, _| p * g);
                for ((dx, &p), &g) in dx.iter_mut().zip(y).zip(dy).take(seen) {
                    *dx = self.scale * p * (g - dot);
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let dx = gpu::causal_softmax_grad((s1, l1), (s2, l2), self.scale)?;
        Ok((dx, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::CausalSoftmax;
    use crate::model::softmax_last_dim;

    #[test]
    fn forward_and_gradient_match_the_composed_masked_softmax() {
        let dev = Device::Cpu;
        let (matrices, time, scale) = (6, 37, 0.3f32);
        let n = matrices * time * time;
        let vals: Vec<f32> = (0..n).map(|i| (i as f32 * 0.61).sin() * 4.0).collect();
        let x = Var::from_slice(&vals, (2, 3, time, time), &dev).unwrap();
        let mask: Vec<f32> = (0..time * time)
            .map(|i| {
                if i % time > i / time {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_slice(&mask, (time, time), &dev).unwrap();
        let g: Vec<f32> = (0..n).map(|i| (i as f32 * 0.23).cos()).collect();
        let g = Tensor::from_slice(&g, (2, 3, time, time), &dev).unwrap();
        let run = |fused: bool| {
            let y = if fused {
                x.apply_op1(CausalSoftmax { scale }).unwrap()
            } else {
                let scaled = (x.as_tensor() * f64::from(scale)).unwrap();
                softmax_last_dim(&scaled.broadcast_add(&mask).unwrap()).unwrap()
            };
            let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            [flat(&y), flat(grads.get(x.as_tensor()).unwrap())]
        };
        let (fused, composed) = (run(true), run(false));
        for (f, c) in fused.iter().zip(&composed) {
            for (a, b) in f.iter().zip(c) {
                assert!((a - b).abs() <= 1e-5, "{a} vs {b}");
            }
        }
        // Above the diagonal both are exact zeros.
        assert_eq!(fused[0][1], 0.0);
        assert_eq!(fused[1][1], 0.0);
    }

    #[test]
    fn scores_that_are_not_square_are_refused() {
        let x = Tensor::zeros((2, 3, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(x.apply_op1(CausalSoftmax { scale: 1.0 }).is_err());
    }
}
