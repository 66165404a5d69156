//! The GPU entry points of the fused ops in a build without the `cuda`
//! feature. There is no CUDA storage to run on, so candle never calls a
//! fused op's `cuda_fwd`; each of these only says that the build lacks it.

use candle_core::{CudaStorage, Layout, Result};

use crate::fused::HeadShape;

type Input<'a> = (&'a CudaStorage, &'a Layout);

fn absent<T>() -> Result<T> {
    candle_core::bail!("this build has no CUDA support; rebuild with `--features cuda`")
}

pub fn gelu(_: &CudaStorage, _: &Layout) -> Result<CudaStorage> {
    absent()
}

pub fn gelu_grad(_: Input<'_>, _: Input<'_>) -> Result<CudaStorage> {
    absent()
}

pub fn layer_norm(_: Input<'_>, _: Input<'_>, _: Input<'_>, _: f32) -> Result<CudaStorage> {
    absent()
}

pub fn layer_norm_grad(_: Input<'_>, _: Input<'_>, _: Input<'_>, _: f32) -> Result<CudaStorage> {
    absent()
}

pub fn causal_softmax(_: &CudaStorage, _: &Layout, _: f32) -> Result<CudaStorage> {
    absent()
}

pub fn causal_softmax_grad(_: Input<'_>, _: Input<'_>, _: f32) -> Result<CudaStorage> {
    absent()
}

pub fn cross_entropy(_: Input<'_>, _: &[u32]) -> Result<CudaStorage> {
    absent()
}

pub fn cross_entropy_grad(_: Input<'_>, _: &[u32], _: f32) -> Result<CudaStorage> {
    absent()
}

pub fn linear(
    _: Input<'_>,
    _: Input<'_>,
    _: Input<'_>,
    _: (usize, usize, usize),
) -> Result<CudaStorage> {
    absent()
}

pub fn column_sums(_: Input<'_>, _: usize) -> Result<CudaStorage> {
    absent()
}

pub fn split_heads(_: Input<'_>, _: HeadShape) -> Result<CudaStorage> {
    absent()
}

pub fn merge_heads(_: Input<'_>, _: HeadShape) -> Result<CudaStorage> {
    absent()
}

pub fn causal_attention(_: Input<'_>, _: HeadShape, _: f32) -> Result<CudaStorage> {
    absent()
}

pub fn adamw_moment(
    _: (&mut CudaStorage, &Layout),
    _: Input<'_>,
    _: (f32, f32, bool),
) -> Result<()> {
    absent()
}

pub fn adamw_params(
    _: (&mut CudaStorage, &Layout),
    _: Input<'_>,
    _: Input<'_>,
    _: (f32, f32, f32, f32),
) -> Result<()> {
    absent()
}
