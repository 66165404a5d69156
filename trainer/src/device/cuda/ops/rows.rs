//! The kernels that reduce along rows: layer norm, the causal softmax of
//! attention scores and the cross-entropy loss, each with its gradient.

use candle_core::cuda::cudarc::driver::{CudaSlice, CudaView, PushKernelArg};
use candle_core::{bail, CudaStorage, Layout, Result};

use super::{
    blocks, config, input, int, kernel, launch, output, rows_of, wrap, ROW_THREADS, SPLITS,
    THREADS, WARPS,
};

/// Layer norm of each row of `x` (as wide as `w` and `b`).
pub fn layer_norm(
    (x, lx): (&CudaStorage, &Layout),
    (w, lw): (&CudaStorage, &Layout),
    (b, lb): (&CudaStorage, &Layout),
    eps: f32,
) -> Result<CudaStorage> {
    let device = &x.device;
    let op = "layer norm";
    let (x, w, b) = (input(x, lx, op)?, input(w, lw, op)?, input(b, lb, op)?);
    let d = w.len();
    if b.len() != d {
        bail!("{op}: weights of {d} and a bias of {}", b.len());
    }
    let rows = rows_of(x.len(), d, op)?;
    let mut y = output(device, x.len())?;
    let (rows_arg, d_arg) = (int(rows)?, int(d)?);
    let grid = (blocks(rows, WARPS)?, 1);
    launch(
        &kernel(device, "layer_norm_forward")?,
        config(grid, THREADS),
        |l| {
            l.arg(&x)
                .arg(&w)
                .arg(&b)
                .arg(&mut y)
                .arg(&rows_arg)
                .arg(&d_arg)
                .arg(&eps);
        },
    )?;
    Ok(wrap(y, device))
}

/// `dx ‖ dw ‖ db` of layer norm, from its input, weights and the output
/// gradient.
pub fn layer_norm_grad(
    (x, lx): (&CudaStorage, &Layout),
    (w, lw): (&CudaStorage, &Layout),
    (dy, ldy): (&CudaStorage, &Layout),
    eps: f32,
) -> Result<CudaStorage> {
    let device = &x.device;
    let op = "layer norm grad";
    let (x, w, dy) = (input(x, lx, op)?, input(w, lw, op)?, input(dy, ldy, op)?);
    let (n, d) = (x.len(), w.len());
    let rows = rows_of(n, d, op)?;
    if dy.len() != n {
        bail!("{op}: {} gradients for {n} inputs", dy.len());
    }
    let mut out = output(device, n + 2 * d)?;
    let mut stats = output(device, 2 * rows)?;
    let (rows_arg, d_arg) = (int(rows)?, int(d)?);
    {
        let mut dx = out.slice_mut(0..n);
        let grid = (blocks(rows, WARPS)?, 1);
        launch(
            &kernel(device, "layer_norm_backward_input")?,
            config(grid, THREADS),
            |l| {
                l.arg(&x)
                    .arg(&w)
                    .arg(&dy)
                    .arg(&mut dx)
                    .arg(&mut stats)
                    .arg(&rows_arg)
                    .arg(&d_arg)
                    .arg(&eps);
            },
        )?;
    }
    let splits = SPLITS.min(rows.max(1) as u32);
    let per_split = int(rows.div_ceil(splits as usize))?;
    let mut partial = output(device, splits as usize * 2 * d)?;
    let grid = (blocks(d, 32)?, splits);
    launch(
        &kernel(device, "layer_norm_backward_params")?,
        config(grid, THREADS),
        |l| {
            l.arg(&x)
                .arg(&dy)
                .arg(&stats)
                .arg(&mut partial)
                .arg(&rows_arg)
                .arg(&d_arg)
                .arg(&per_split);
        },
    )?;
    let mut params = out.slice_mut(n..n + 2 * d);
    let (splits_arg, width) = (splits as i32, int(2 * d)?);
    let grid = (blocks(2 * d, THREADS)?, 1);
    launch(&kernel(device, "sum_splits")?, config(grid, THREADS), |l| {
        l.arg(&partial)
            .arg(&mut params)
            .arg(&splits_arg)
            .arg(&width);
    })?;
    Ok(wrap(out, device))
}

/// The sizes of scores `[.., time, time]`: rows and time.
fn score_rows(layout: &Layout, op: &str) -> Result<(usize, usize)> {
    let dims = layout.dims();
    match dims {
        [.., a, b] if a == b && *a > 0 => Ok((layout.shape().elem_count() / b, *b)),
        _ => bail!("{op}: scores of shape {dims:?} are not square in their last two dimensions"),
    }
}

/// The causal softmax of `scale · x` along each row.
pub fn causal_softmax(x: &CudaStorage, layout: &Layout, scale: f32) -> Result<CudaStorage> {
    let device = &x.device;
    let op = "causal softmax";
    let (rows, time) = score_rows(layout, op)?;
    let x = input(x, layout, op)?;
    let mut y = output(device, x.len())?;
    let (rows_arg, time_arg) = (rows as i64, int(time)?);
    let grid = (blocks(rows, WARPS)?, 1);
    launch(
        &kernel(device, "causal_softmax_forward")?,
        config(grid, THREADS),
        |l| {
            l.arg(&x)
                .arg(&mut y)
                .arg(&rows_arg)
                .arg(&time_arg)
                .arg(&scale);
        },
    )?;
    Ok(wrap(y, device))
}

/// The gradient of [`causal_softmax`] from its output `y` and `dy`.
pub fn causal_softmax_grad(
    (y, ly): (&CudaStorage, &Layout),
    (dy, ldy): (&CudaStorage, &Layout),
    scale: f32,
) -> Result<CudaStorage> {
    let device = &y.device;
    let op = "causal softmax grad";
    let (rows, time) = score_rows(ly, op)?;
    let (y, dy) = (input(y, ly, op)?, input(dy, ldy, op)?);
    if dy.len() != y.len() {
        bail!("{op}: {} gradients for {} outputs", dy.len(), y.len());
    }
    let mut dx = output(device, y.len())?;
    let (rows_arg, time_arg) = (rows as i64, int(time)?);
    let grid = (blocks(rows, WARPS)?, 1);
    launch(
        &kernel(device, "causal_softmax_backward")?,
        config(grid, THREADS),
        |l| {
            l.arg(&y)
                .arg(&dy)
                .arg(&mut dx)
                .arg(&rows_arg)
                .arg(&time_arg)
                .arg(&scale);
        },
    )?;
    Ok(wrap(dx, device))
}

/// Logits `[rows, vocab]` and their targets, checked and uploaded.
fn logits_and_targets<'a>(
    (logits, layout): (&'a CudaStorage, &Layout),
    targets: &[u32],
    op: &str,
) -> Result<(CudaView<'a, f32>, CudaSlice<u32>, usize)> {
    let vocab = *layout.dims().last().unwrap_or(&0);
    let view = input(logits, layout, op)?;
    let rows = rows_of(view.len(), vocab, op)?;
    if targets.len() != rows || targets.iter().any(|&t| t as usize >= vocab) {
        bail!(
            "{op}: {} targets for {rows} rows of {vocab} classes",
            targets.len()
        );
    }
    let on_device = logits.device.clone_htod(targets)?;
    Ok((view, on_device, vocab))
}

/// The mean cross-entropy of logits `[rows, vocab]` against `targets`, as
/// a one-element buffer.
pub fn cross_entropy(
    (logits, layout): (&CudaStorage, &Layout),
    targets: &[u32],
) -> Result<CudaStorage> {
    let device = &logits.device;
    let op = "cross-entropy";
    let (x, targets, vocab) = logits_and_targets((logits, layout), targets, op)?;
    let rows = targets.len();
    let mut losses = output(device, rows)?;
    let vocab_arg = int(vocab)?;
    let grid = (
        u32::try_from(rows).map_err(|_| candle_core::Error::Msg(format!("{rows} rows")))?,
        1,
    );
    launch(
        &kernel(device, "cross_entropy_rows")?,
        config(grid, ROW_THREADS),
        |l| {
            l.arg(&x).arg(&targets).arg(&mut losses).arg(&vocab_arg);
        },
    )?;
    let mut mean = output(device, 1)?;
    let rows_arg = int(rows)?;
    launch(
        &kernel(device, "mean_of")?,
        config((1, 1), ROW_THREADS),
        |l| {
            l.arg(&losses).arg(&mut mean).arg(&rows_arg);
        },
    )?;
    Ok(wrap(mean, device))
}

/// `scale · (softmax(row) − onehot(target))` for each row of the logits.
pub fn cross_entropy_grad(
    (logits, layout): (&CudaStorage, &Layout),
    targets: &[u32],
    scale: f32,
) -> Result<CudaStorage> {
    let device = &logits.device;
    let op = "cross-entropy grad";
    let (x, targets, vocab) = logits_and_targets((logits, layout), targets, op)?;
    let rows = targets.len();
    let mut grad = output(device, x.len())?;
    let vocab_arg = int(vocab)?;
    let grid = (
        u32::try_from(rows).map_err(|_| candle_core::Error::Msg(format!("{rows} rows")))?,
        1,
    );
    launch(
        &kernel(device, "cross_entropy_backward")?,
        config(grid, ROW_THREADS),
        |l| {
            l.arg(&x)
                .arg(&targets)
                .arg(&mut grad)
                .arg(&vocab_arg)
                .arg(&scale);
        },
    )?;
    Ok(wrap(grad, device))
}
