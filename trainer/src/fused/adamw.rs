//! The inner AdamW update of one parameter tensor as two in-place candle
//! ops, one pass each over the moments and one over the parameters, for a
//! model on a GPU (`crate::tensor_adamw`). Composed from candle operations
//! the update is a dozen passes, each allocating a tensor, per parameter.
//!
//! Both ops compute exactly the composed update's operations in its order:
//! `m ← β₁·m + (1 − β₁)·(c·g)`, `v ← β₂·v + (1 − β₂)·(c·g)²` and
//! `θ ← decay·θ − (step·m) / (√v · (1/√(1 − β₂ᵗ)) + ε)`, where `c` scales the
//! gradient for clipping.

use candle_core::{CpuStorage, CudaStorage, InplaceOp2, InplaceOp3, Layout};

use super::slice;
use crate::device::gpu;

type Result<T> = candle_core::Result<T>;

/// The contiguous f32 data of an operand updated in place.
fn slice_mut<'a>(
    storage: &'a mut CpuStorage,
    layout: &Layout,
    op: &'static str,
) -> Result<&'a mut [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(values), Some((start, end))) => Ok(&mut values[start..end]),
        (CpuStorage::F32(_), None) => {
            candle_core::bail!("{op}: the updated tensor must be contiguous")
        }
        _ => candle_core::bail!("{op}: the updated tensor must hold f32 values"),
    }
}

/// `m ← β·m + (1 − β)·(coef·g)`, or with `(coef·g)²` when `square`: the
/// first moment, or (squared) the second, updated in place from `g`.
pub struct AdamWMoment {
    pub coef: f32,
    pub beta: f32,
    pub square: bool,
}

impl InplaceOp2 for AdamWMoment {
    fn name(&self) -> &'static str {
        "adamw-moment"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let g = slice(s2, l2, self.name())?;
        let m = slice_mut(s1, l1, self.name())?;
        if m.len() != g.len() {
            candle_core::bail!(
                "{}: {} gradients for {} moments",
                self.name(),
                g.len(),
                m.len()
            );
        }
        let one_minus_beta = 1.0 - self.beta;
        for (m, &g) in m.iter_mut().zip(g) {
            let s = g * self.coef;
            let t = if self.square { s * s } else { s };
            *m = *m * self.beta + t * one_minus_beta;
        }
        Ok(())
    }

    fn cuda_fwd(
        &self,
        s1: &mut CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<()> {
        gpu::adamw_moment((s1, l1), (s2, l2), (self.coef, self.beta, self.square))
    }
}

/// `θ ← decay·θ − (step·m) / (√v · inv_bias2 + eps)`, in place, from the
/// two moments.
pub struct AdamWUpdate {
    /// `1 / √(1 − β₂ᵗ)`.
    pub inv_bias2: f32,
    pub eps: f32,
    pub step: f32,
    pub decay: f32,
}

impl InplaceOp3 for AdamWUpdate {
    fn name(&self) -> &'static str {
        "adamw-update"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let (m, v) = (slice(s2, l2, self.name())?, slice(s3, l3, self.name())?);
        let theta = slice_mut(s1, l1, self.name())?;
        if theta.len() != m.len() || m.len() != v.len() {
            candle_core::bail!(
                "{}: {} parameters, {} and {} moments",
                self.name(),
                theta.len(),
                m.len(),
                v.len()
            );
        }
        for ((theta, &m), &v) in theta.iter_mut().zip(m).zip(v) {
            let denom = v.sqrt() * self.inv_bias2 + self.eps;
            *theta = *theta * self.decay - (m * self.step) / denom;
        }
        Ok(())
    }

    fn cuda_fwd(
        &self,
        s1: &mut CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> Result<()> {
        let scalars = (self.inv_bias2, self.eps, self.step, self.decay);
        gpu::adamw_params((s1, l1), (s2, l2), (s3, l3), scalars)
    }
}
