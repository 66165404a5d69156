//! The kernels on an NVIDIA GPU (feature `cuda`): compress, decompress-into
//! and aggregate for buffers that live in device memory, with the same
//! payload bytes and the same aggregate bits as the CPU functions.
//!
//! ```no_run
//! use p2ptrain_kernels::cuda::{cudarc::driver::CudaContext, DeviceKernels, DeviceResidual};
//! use p2ptrain_protocol::CompressionSettings;
//!
//! let stream = CudaContext::new(0)?.default_stream();
//! let kernels = DeviceKernels::new(stream.clone())?;
//! let delta: Vec<f32> = (0..20_000).map(|i| (i % 97) as f32 - 48.0).collect();
//! let on_device = stream.clone_htod(&delta)?;
//! let mut residual = DeviceResidual::zeros(&stream, delta.len())?;
//! let payload = kernels.compress(&on_device.as_view(), &mut residual, &CompressionSettings::default())?;
//!
//! // The very bytes the CPU produces.
//! let on_host = p2ptrain_kernels::compress(&delta, &mut vec![0.0; delta.len()], &CompressionSettings::default())?;
//! assert_eq!(payload, on_host);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The kernels are CUDA C (`kernels.cu`), compiled by NVRTC when
//! [`DeviceKernels::new`] runs. Every floating-point operation in them is an
//! explicit round-to-nearest intrinsic, so the compiler cannot fuse a
//! multiply and an add, and top-k compares integer keys exactly as the CPU
//! does. Only the payload (and an 8-byte finiteness flag) crosses from the
//! device to the host.

mod compress;
mod decompress;

use std::sync::{Arc, Mutex};

pub use cudarc;
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, DriverError, PinnedHostSlice};
use cudarc::nvrtc::{CompileError, CompileOptions};

pub use compress::{DevicePayload, DeviceResidual};

use crate::KernelError;

/// The CUDA source of the kernels.
const SOURCE: &str = include_str!("kernels.cu");

/// Threads per block; `THREADS` in the source.
const THREADS: u32 = 256;

/// Entries per thread on the compression kernel's register path;
/// `PER_THREAD` in the source.
const PER_THREAD: u32 = 16;

/// The compiled kernels, bound to one stream: every call is ordered on it,
/// after whatever was queued there before (a candle step, say).
pub struct DeviceKernels {
    stream: Arc<CudaStream>,
    compress_chunks: CudaFunction,
    compress_chunks_in_registers: CudaFunction,
    add_payload: CudaFunction,
    staging: Arc<Staging>,
}

impl std::fmt::Debug for DeviceKernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceKernels")
            .field("device", &self.stream.context().ordinal())
            .finish_non_exhaustive()
    }
}

impl DeviceKernels {
    /// Compiles the kernels for `stream`'s device.
    ///
    /// # Errors
    ///
    /// [`KernelError::Device`] when NVRTC or the driver fails.
    pub fn new(stream: Arc<CudaStream>) -> Result<Self, KernelError> {
        let options = CompileOptions {
            fmad: Some(false),
            prec_div: Some(true),
            ftz: Some(false),
            name: Some("p2ptrain_kernels.cu".to_owned()),
            ..Default::default()
        };
        let ptx = cudarc::nvrtc::compile_ptx_with_opts(SOURCE, options).map_err(compile_error)?;
        let module = stream.context().load_module(ptx).map_err(device_error)?;
        Ok(Self {
            compress_chunks: module
                .load_function("compress_chunks")
                .map_err(device_error)?,
            compress_chunks_in_registers: module
                .load_function("compress_chunks_in_registers")
                .map_err(device_error)?,
            add_payload: module.load_function("add_payload").map_err(device_error)?,
            stream,
            staging: Arc::default(),
        })
    }

    /// The stream every call runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// A zeroed device buffer of `len` floats (at least one element is
    /// allocated, since the driver refuses empty allocations).
    fn zeros<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        len: usize,
    ) -> Result<CudaSlice<T>, KernelError> {
        self.stream.alloc_zeros(len.max(1)).map_err(device_error)
    }
}

/// Page-locked host memory that payloads are copied into from the device:
/// copies into ordinary (pageable) memory go through the driver's own
/// bounce buffers, several times slower. Grown as needed, reused after.
#[derive(Default)]
struct Staging(Mutex<Option<PinnedHostSlice<u8>>>);

impl Staging {
    /// Copies `source` to the host and hands its bytes to `read`.
    fn download<T>(
        &self,
        stream: &Arc<CudaStream>,
        source: &CudaSlice<u8>,
        read: impl FnOnce(&[u8]) -> T,
    ) -> Result<T, KernelError> {
        let mut guard = self
            .0
            .lock()
            .map_err(|_| KernelError::Device("staging buffer poisoned".to_owned()))?;
        if guard
            .as_ref()
            .is_none_or(|pinned| pinned.len() < source.len())
        {
            *guard = None;
            // SAFETY: the memory is written by the copy below before it is
            // read, and only the first `source.len()` bytes are read.
            let pinned = unsafe {
                stream
                    .context()
                    .alloc_pinned_with_flags::<u8>(source.len(), 0)
            }
            .map_err(device_error)?;
            *guard = Some(pinned);
        }
        let pinned = guard
            .as_mut()
            .ok_or_else(|| KernelError::Device("no staging buffer".to_owned()))?;
        let len = source.len();
        let bytes = &mut pinned.as_mut_slice().map_err(device_error)?[..len];
        stream.memcpy_dtoh(source, bytes).map_err(device_error)?;
        // The copy into page-locked memory is asynchronous: wait for it.
        stream.synchronize().map_err(device_error)?;
        Ok(read(bytes))
    }
}

/// A driver failure as a kernel error.
pub(crate) fn device_error(e: DriverError) -> KernelError {
    KernelError::Device(e.to_string())
}

fn compile_error(e: CompileError) -> KernelError {
    KernelError::Device(format!("compiling the kernels: {e:?}"))
}

/// A count as a kernel argument.
fn arg_u32(n: usize) -> Result<u32, KernelError> {
    u32::try_from(n).map_err(|_| KernelError::Device(format!("{n} is too large for one launch")))
}
