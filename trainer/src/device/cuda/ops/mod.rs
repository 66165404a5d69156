//! Launches of the training kernels (`train.cu`) on candle's CUDA storage:
//! the device side of the fused ops in [`crate::fused`].
//!
//! The source is compiled by NVRTC once per process, on first use, and
//! loaded once per GPU; every launch runs on the stream candle queues its
//! own work on.

use std::sync::{Arc, Mutex, OnceLock};

use candle_core::cuda::cudarc::driver::{
    CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, LaunchArgs, LaunchConfig,
};
use candle_core::cuda::cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};
use candle_core::cuda::{CudaDevice, WrapErr};
use candle_core::{bail, CudaStorage, Layout, Result};

mod attention;
mod elementwise;
mod linear;
mod rows;

pub use attention::{causal_attention, merge_heads, split_heads};
pub use elementwise::{adamw_moment, adamw_params, gelu, gelu_grad};
pub use linear::{column_sums, linear};
pub use rows::{
    causal_softmax, causal_softmax_grad, cross_entropy, cross_entropy_grad, layer_norm,
    layer_norm_grad,
};

const SOURCE: &str = include_str!("../train.cu");

/// Threads per block of the row kernels (eight warps, a row each).
const THREADS: u32 = 256;
const WARPS: u32 = THREADS / 32;
/// Threads per block of the cross-entropy kernels (one block per row).
const ROW_THREADS: u32 = 1024;
/// Row splits of the column sums (layer norm's parameter gradients, a
/// linear layer's bias gradient).
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

/// Rows of `d` in `len` values, or an error.
fn rows_of(len: usize, d: usize, op: &str) -> Result<usize> {
    if d == 0 || !len.is_multiple_of(d) {
        bail!("{op}: {len} values are not rows of {d}");
    }
    Ok(len / d)
}
