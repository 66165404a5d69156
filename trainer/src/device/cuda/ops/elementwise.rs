//! The element-by-element kernels: GELU and its gradient, and the AdamW
//! update in place.

use candle_core::cuda::cudarc::driver::PushKernelArg;
use candle_core::{bail, CudaStorage, Layout, Result};

use super::{elementwise, input, kernel, launch, output, wrap};

/// `y = gelu(z)`, element by element.
pub fn gelu(z: &CudaStorage, layout: &Layout) -> Result<CudaStorage> {
    let device = &z.device;
    let z = input(z, layout, "gelu")?;
    let n = z.len();
    let mut y = output(device, n)?;
    let count = n as u64;
    launch(&kernel(device, "gelu_forward")?, elementwise(n), |b| {
        b.arg(&z).arg(&mut y).arg(&count);
    })?;
    Ok(wrap(y, device))
}

/// `dz = dy · gelu′(z)`.
pub fn gelu_grad(
    (z, lz): (&CudaStorage, &Layout),
    (dy, ldy): (&CudaStorage, &Layout),
) -> Result<CudaStorage> {
    let device = &z.device;
    let (z, dy) = (input(z, lz, "gelu grad")?, input(dy, ldy, "gelu grad")?);
    if z.len() != dy.len() {
        bail!("gelu grad: {} inputs, {} gradients", z.len(), dy.len());
    }
    let n = z.len();
    let mut dz = output(device, n)?;
    let count = n as u64;
    launch(&kernel(device, "gelu_backward")?, elementwise(n), |b| {
        b.arg(&z).arg(&dy).arg(&mut dz).arg(&count);
    })?;
    Ok(wrap(dz, device))
}

/// One AdamW moment in place: `m ← β·m + (1 − β)·(coef·g)`, with `(coef·g)²`
/// when `square`.
pub fn adamw_moment(
    (m, lm): (&mut CudaStorage, &Layout),
    (g, lg): (&CudaStorage, &Layout),
    (coef, beta, square): (f32, f32, bool),
) -> Result<()> {
    let device = m.device.clone();
    let op = "adamw moment";
    let g = input(g, lg, op)?;
    let Some((start, end)) = lm.contiguous_offsets() else {
        bail!("{op}: the moment must be contiguous");
    };
    if end - start != g.len() {
        bail!("{op}: {} gradients for {} moments", g.len(), end - start);
    }
    let mut m = m.as_cuda_slice_mut::<f32>()?.slice_mut(start..end);
    let n = g.len();
    let (count, square) = (n as u64, i32::from(square));
    let one_minus_beta = 1.0 - beta;
    launch(&kernel(&device, "adamw_moment")?, elementwise(n), |l| {
        l.arg(&mut m)
            .arg(&g)
            .arg(&count)
            .arg(&coef)
            .arg(&beta)
            .arg(&one_minus_beta)
            .arg(&square);
    })
}

/// The AdamW parameter update in place:
/// `θ ← decay·θ − (step·m) / (√v · inv_bias2 + eps)`.
pub fn adamw_params(
    (theta, lt): (&mut CudaStorage, &Layout),
    (m, lm): (&CudaStorage, &Layout),
    (v, lv): (&CudaStorage, &Layout),
    (inv_bias2, eps, step, decay): (f32, f32, f32, f32),
) -> Result<()> {
    let device = theta.device.clone();
    let op = "adamw update";
    let (m, v) = (input(m, lm, op)?, input(v, lv, op)?);
    let Some((start, end)) = lt.contiguous_offsets() else {
        bail!("{op}: the parameters must be contiguous");
    };
    if end - start != m.len() || m.len() != v.len() {
        bail!(
            "{op}: {} parameters, {} and {} moments",
            end - start,
            m.len(),
            v.len()
        );
    }
    let mut theta = theta.as_cuda_slice_mut::<f32>()?.slice_mut(start..end);
    let count = m.len() as u64;
    launch(
        &kernel(&device, "adamw_params")?,
        elementwise(m.len()),
        |l| {
            l.arg(&mut theta)
                .arg(&m)
                .arg(&v)
                .arg(&count)
                .arg(&inv_bias2)
                .arg(&eps)
                .arg(&step)
                .arg(&decay);
        },
    )
}
