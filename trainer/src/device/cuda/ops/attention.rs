//! Attention's head layouts and its forward pass: the heads split, the two
//! products by cuBLAS with the causal softmax between, the heads merged.

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{CudaSlice, CudaView, PushKernelArg};
use candle_core::cuda::CudaDevice;
use candle_core::{bail, CudaStorage, Layout, Result};

use super::rows::causal_softmax;
use super::{elementwise, input, int, kernel, launch, output, wrap};
use crate::fused::HeadShape;

/// Launches the head permutation `name` on `x`, of `shape`.
fn permute_heads(
    device: &CudaDevice,
    name: &str,
    x: &CudaView<'_, f32>,
    shape: HeadShape,
) -> Result<CudaSlice<f32>> {
    if x.len() != shape.elements() {
        bail!("{name}: {} values for {shape:?}", x.len());
    }
    let mut y = output(device, x.len())?;
    let (b, t, p) = (int(shape.batch)?, int(shape.time)?, int(shape.parts)?);
    let (h, d) = (int(shape.heads)?, int(shape.dim)?);
    launch(&kernel(device, name)?, elementwise(x.len()), |l| {
        l.arg(x).arg(&mut y).arg(&b).arg(&t).arg(&p).arg(&h).arg(&d);
    })?;
    Ok(y)
}

/// `[batch, time, parts, heads, dim]` → `[parts, batch, heads, time, dim]`.
pub fn split_heads((x, lx): (&CudaStorage, &Layout), shape: HeadShape) -> Result<CudaStorage> {
    let device = &x.device;
    let y = permute_heads(device, "split_heads", &input(x, lx, "split heads")?, shape)?;
    Ok(wrap(y, device))
}

/// The inverse of [`split_heads`].
pub fn merge_heads((x, lx): (&CudaStorage, &Layout), shape: HeadShape) -> Result<CudaStorage> {
    let device = &x.device;
    let y = permute_heads(device, "merge_heads", &input(x, lx, "merge heads")?, shape)?;
    Ok(wrap(y, device))
}

/// Causal attention of `qkv` `[batch, time, 3 × width]` to `[batch, time,
/// width]`: heads split, `q·kᵀ` and `p·v` by cuBLAS, the causal softmax of
/// `scale · q·kᵀ` in between, heads merged.
pub fn causal_attention(
    (qkv, layout): (&CudaStorage, &Layout),
    shape: HeadShape,
    scale: f32,
) -> Result<CudaStorage> {
    let HeadShape {
        batch,
        time,
        heads,
        dim,
        ..
    } = shape;
    let split = split_heads((qkv, layout), HeadShape { parts: 3, ..shape })?;
    let (matrices, part) = (batch * heads, batch * heads * time * dim);
    let q = Layout::contiguous((matrices, time, dim));
    let k_t = Layout::contiguous_with_offset((matrices, time, dim), part).transpose(1, 2)?;
    let v = Layout::contiguous_with_offset((matrices, time, dim), 2 * part);
    let scores = split.matmul(&split, (matrices, time, time, dim), &q, &k_t)?;
    let square = Layout::contiguous((matrices, time, time));
    let p = causal_softmax(&scores, &square, scale)?;
    drop(scores);
    let out = p.matmul(&split, (matrices, time, dim, time), &square, &v)?;
    let heads_first = Layout::contiguous((1, batch, heads, time, dim));
    merge_heads((&out, &heads_first), HeadShape { parts: 1, ..shape })
}
