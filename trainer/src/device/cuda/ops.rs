//! Launches of the training kernels (`train.cu`) on candle's CUDA storage:
//! the device side of the fused ops in [`crate::fused`].
//!
//! The source is compiled by NVRTC once per process, on first use, and
//! loaded once per GPU; every launch runs on the stream candle queues its
//! own work on.

use std::sync::{Arc, Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, LaunchArgs, LaunchConfig,
    PushKernelArg,
};
use candle_core::cuda::cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};
use candle_core::cuda::{CudaDevice, WrapErr};
use candle_core::{bail, CudaStorage, Layout, Result};

use crate::fused::HeadShape;

const SOURCE: &str = include_str!("train.cu");

/// Threads per block of the row kernels (eight warps, a row each).
const THREADS: u32 = 256;
const WARPS: u32 = THREADS / 32;
/// Threads per block of the cross-entropy kernels (one block per row).
const ROW_THREADS: u32 = 1024;
/// Row splits of the layer-norm parameter gradients.
const SPLITS: u32 = 64;

/// The kernels' PTX, compiled on first use.
fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    PTX.get_or_init(|| {
        let options = CompileOptions {
            name: Some("p2ptrain_train.cu".to_owned()),
            ..Default::default()
        };
        compile_ptx_with_opts(SOURCE, options)
            .map(|ptx| ptx.to_src())
            .map_err(|e| format!("{e:?}"))
    })
    .as_deref()
    .map_err(|e| candle_core::Error::Msg(format!("compiling the training kernels: {e}")))
}

/// A kernel and the stream it runs on.
struct Kernel {
    stream: Arc<CudaStream>,
    function: CudaFunction,
}

/// The kernel `name` on `device`'s stream, the module loaded once per GPU.
fn kernel(device: &CudaDevice, name: &str) -> Result<Kernel> {
    static MODULES: Mutex<Vec<(usize, Arc<CudaModule>)>> = Mutex::new(Vec::new());
    let stream = device.cuda_stream();
    let context = stream.context();
    let ordinal = context.ordinal();
    let module = {
        let mut modules = MODULES.lock().map_err(|_| {
            candle_core::Error::Msg("the training kernels' modules: poisoned".into())
        })?;
        match modules.iter().find(|(o, _)| *o == ordinal) {
            Some((_, module)) => module.clone(),
            None => {
                let module = context.load_module(Ptx::from_src(ptx()?)).w()?;
                modules.push((ordinal, module.clone()));
                module
            }
        }
    };
    let function = module.load_function(name).w()?;
    Ok(Kernel { stream, function })
}

/// Launches `kernel` with the arguments `push` gives it.
fn launch<'a>(
    kernel: &'a Kernel,
    config: LaunchConfig,
    push: impl FnOnce(&mut LaunchArgs<'a>),
) -> Result<()> {
    let mut builder = kernel.stream.launch_builder(&kernel.function);
    push(&mut builder);
    // SAFETY: each caller pushes the arguments its kernel declares, with
    // buffers of the lengths the kernel indexes (checked by the caller).
    unsafe { builder.launch(config) }.w()?;
    Ok(())
}

/// The contiguous f32 data of an input.
fn input<'a>(storage: &'a CudaStorage, layout: &Layout, op: &str) -> Result<CudaView<'a, f32>> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(storage.as_cuda_slice::<f32>()?.slice(start..end)),
        None => bail!("{op}: input must be contiguous"),
    }
}

/// An uninitialized device buffer of `len` floats, every one of which the
/// caller's kernel writes.
fn output(device: &CudaDevice, len: usize) -> Result<CudaSlice<f32>> {
    // SAFETY: the kernel launched next writes each element before anything
    // reads it.
    unsafe { device.alloc::<f32>(len.max(1)) }
}

fn wrap(slice: CudaSlice<f32>, device: &CudaDevice) -> CudaStorage {
    CudaStorage::wrap_cuda_slice(slice, device.clone())
}

fn blocks(n: usize, per_block: u32) -> Result<u32> {
    u32::try_from(n.div_ceil(per_block as usize).max(1))
        .map_err(|_| candle_core::Error::Msg(format!("{n} items are too many for one launch")))
}

fn int(n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| candle_core::Error::Msg(format!("{n} is too large a size")))
}

fn config(grid: (u32, u32), threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid.0, grid.1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Blocks for a grid-stride loop over `n` elements.
fn elementwise(n: usize) -> LaunchConfig {
    let grid = n.div_ceil(THREADS as usize).clamp(1, 132 * 16) as u32;
    config((grid, 1), THREADS)
}

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

/// Rows of `d` in `len` values, or an error.
fn rows_of(len: usize, d: usize, op: &str) -> Result<usize> {
    if d == 0 || !len.is_multiple_of(d) {
        bail!("{op}: {len} values are not rows of {d}");
    }
    Ok(len / d)
}

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
