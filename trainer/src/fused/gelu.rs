//! GELU (GPT-2's tanh approximation) as slice kernels and as a candle op.

use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{fast_tanh, slice};
use crate::device::gpu;

type Result<T> = candle_core::Result<T>;

const GELU_C: f32 = 0.797_884_6; // sqrt(2 / π)
const GELU_A: f32 = 0.044_715;

/// Elements per parallel task: large enough that splitting costs little,
/// fixed so that the work done per element never depends on the pool.
const CHUNK: usize = 1 << 14;

/// `gelu(z) = ½ z (1 + tanh(√(2/π) (z + 0.044715 z³)))`.
#[inline(always)]
fn gelu(z: f32) -> f32 {
    0.5 * z * (1.0 + fast_tanh(GELU_C * (z + GELU_A * z * z * z)))
}

/// `d gelu(z) / dz`, given `t`, the tanh in [`gelu`].
#[inline(always)]
fn slope_with(z: f32, t: f32) -> f32 {
    let du = GELU_C * (1.0 + 3.0 * GELU_A * z * z);
    0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * du
}

/// `d gelu(z) / dz`.
#[inline(always)]
fn gelu_slope(z: f32) -> f32 {
    slope_with(z, fast_tanh(GELU_C * (z + GELU_A * z * z * z)))
}

/// `y = gelu(z)` element by element (`y` as long as `z`).
pub(super) fn gelu_forward(z: &[f32], y: &mut [f32]) {
    y.par_chunks_mut(CHUNK)
        .zip(z.par_chunks(CHUNK))
        .for_each(|(y, z)| {
            for (y, &z) in y.iter_mut().zip(z) {
                *y = gelu(z);
            }
        });
}

/// `y = gelu(z)` element by element, replacing each `z` in `z_slope` by
/// `gelu′(z)`: the slope is all that the backward pass needs
/// ([`scale_by_slope`]), and it shares the forward pass's tanh.
pub(super) fn gelu_forward_keeping_slope(z_slope: &mut [f32], y: &mut [f32]) {
    y.par_chunks_mut(CHUNK)
        .zip(z_slope.par_chunks_mut(CHUNK))
        .for_each(|(y, z_slope)| {
            for (y, zs) in y.iter_mut().zip(z_slope.iter_mut()) {
                let z = *zs;
                let t = fast_tanh(GELU_C * (z + GELU_A * z * z * z));
                *y = 0.5 * z * (1.0 + t);
                *zs = slope_with(z, t);
            }
        });
}

/// `g ← g · slope`, element by element: the backward pass of
/// [`gelu_forward_keeping_slope`].
pub(super) fn scale_by_slope(slope: &[f32], g: &mut [f32]) {
    g.par_chunks_mut(CHUNK)
        .zip(slope.par_chunks(CHUNK))
        .for_each(|(g, slope)| {
            for (g, &s) in g.iter_mut().zip(slope) {
                *g *= s;
            }
        });
}

/// `g ← g · gelu′(z)`: turns the gradient with respect to `gelu(z)` into the
/// gradient with respect to `z`, in place.
pub(super) fn gelu_backward(z: &[f32], g: &mut [f32]) {
    g.par_chunks_mut(CHUNK)
        .zip(z.par_chunks(CHUNK))
        .for_each(|(g, z)| {
            for (g, &z) in g.iter_mut().zip(z) {
                *g *= gelu_slope(z);
            }
        });
}

/// GELU, tanh approximation (GPT-2's `gelu_new`).
pub struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "fused-gelu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let z = slice(storage, layout, self.name())?;
        let mut y = vec![0.0f32; z.len()];
        gelu_forward(z, &mut y);
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        Ok((gpu::gelu(storage, layout)?, layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            arg.apply_op2_no_bwd(&grad_res.contiguous()?, &GeluGrad)?,
        ))
    }
}

/// `(z, dy) → dy · gelu′(z)`.
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
        let (z, dy) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?);
        if z.len() != dy.len() {
            candle_core::bail!(
                "fused gelu grad: {} inputs, {} gradients",
                z.len(),
                dy.len()
            );
        }
        let mut dz = dy.to_vec();
        gelu_backward(z, &mut dz);
        Ok((CpuStorage::F32(dz), l1.shape().clone()))
    }

    fn cuda_fwd(
        &self,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        Ok((gpu::gelu_grad((s1, l1), (s2, l2))?, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::*;

    #[test]
    fn the_kept_slope_gives_the_same_gradient() {
        let z: Vec<f32> = (0..40_000)
            .map(|i| (i as f32 - 20_000.0) / 2_000.0)
            .collect();
        let (mut y, mut y2) = (vec![0.0; z.len()], vec![0.0; z.len()]);
        let mut slope = z.clone();
        gelu_forward(&z, &mut y);
        gelu_forward_keeping_slope(&mut slope, &mut y2);
        assert_eq!(y, y2);
        let mut g: Vec<f32> = (0..z.len()).map(|i| (i % 13) as f32 - 6.0).collect();
        let mut g2 = g.clone();
        gelu_backward(&z, &mut g);
        scale_by_slope(&slope, &mut g2);
        assert_eq!(g, g2);
    }

    #[test]
    fn forward_and_gradient_match_candle_gelu() {
        let dev = Device::Cpu;
        let values: Vec<f32> = (0..4099).map(|i| (i as f32 - 2050.0) / 300.0).collect();
        let x = Var::from_slice(&values, (values.len(),), &dev).unwrap();
        let fused = x.apply_op1(Gelu).unwrap();
        let plain = x.as_tensor().gelu().unwrap();
        let diff = (&fused - &plain).unwrap().abs().unwrap().max(0).unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
        let weights = Tensor::arange(0f32, values.len() as f32, &dev).unwrap();
        let grad = |y: &Tensor| {
            let grads = (y * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            grads.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap()
        };
        let (f, p) = (grad(&fused), grad(&plain));
        for ((a, b), w) in f.iter().zip(&p).zip(0..) {
            assert!((a - b).abs() <= 1e-5 * w as f32 + 1e-5, "{a} vs {b}");
        }
    }
}
