//! A linear layer's forward pass (cuBLAS's product, then the bias) and its
//! bias gradient.

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::PushKernelArg;
use candle_core::{bail, CudaStorage, Layout, Result};

use super::{
    blocks, config, elementwise, input, int, kernel, launch, output, rows_of, wrap, SPLITS, THREADS,
};

/// `x · W + b` for `x` `[rows, in]` (any leading dimensions) and `W`
/// `[in, out]`: the product by cuBLAS through candle, the bias added by a
/// kernel.
pub fn linear(
    (x, lx): (&CudaStorage, &Layout),
    (w, lw): (&CudaStorage, &Layout),
    (b, lb): (&CudaStorage, &Layout),
    (rows, d_in, d_out): (usize, usize, usize),
) -> Result<CudaStorage> {
    let device = &x.device;
    let op = "linear";
    let Some((start, _)) = lx.contiguous_offsets() else {
        bail!("{op}: input must be contiguous");
    };
    let bias = input(b, lb, op)?;
    if bias.len() != d_out || lw.shape().elem_count() != d_in * d_out {
        bail!(
            "{op}: a bias of {} for weights [{d_in}, {d_out}]",
            bias.len()
        );
    }
    let x_rows = Layout::contiguous_with_offset((rows, d_in), start);
    let mut y = x.matmul(w, (1, rows, d_out, d_in), &x_rows, lw)?;
    let n = rows * d_out;
    let (count, cols) = (n as u64, int(d_out)?);
    let out = y.as_cuda_slice_mut::<f32>()?;
    launch(&kernel(device, "add_bias")?, elementwise(n), |l| {
        l.arg(out).arg(&bias).arg(&count).arg(&cols);
    })?;
    Ok(y)
}

/// The sum of the rows of `x` `[rows, cols]`, in a fixed order.
pub fn column_sums((x, lx): (&CudaStorage, &Layout), cols: usize) -> Result<CudaStorage> {
    let device = &x.device;
    let op = "column sums";
    let x = input(x, lx, op)?;
    let rows = rows_of(x.len(), cols, op)?;
    let splits = SPLITS.min(rows.max(1) as u32);
    let per_split = int(rows.div_ceil(splits as usize).max(1))?;
    let mut partial = output(device, splits as usize * cols)?;
    let (rows_arg, cols_arg) = (int(rows)?, int(cols)?);
    let grid = (blocks(cols, 32)?, splits);
    launch(
        &kernel(device, "column_sum_partials")?,
        config(grid, THREADS),
        |l| {
            l.arg(&x)
                .arg(&mut partial)
                .arg(&rows_arg)
                .arg(&cols_arg)
                .arg(&per_split);
        },
    )?;
    let mut sums = output(device, cols)?;
    let splits_arg = splits as i32;
    let grid = (blocks(cols, THREADS)?, 1);
    launch(&kernel(device, "sum_splits")?, config(grid, THREADS), |l| {
        l.arg(&partial)
            .arg(&mut sums)
            .arg(&splits_arg)
            .arg(&cols_arg);
    })?;
    Ok(wrap(sums, device))
}
