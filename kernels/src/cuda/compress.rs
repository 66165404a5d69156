//! Compression with error feedback on the device.

use cudarc::driver::{CudaSlice, CudaStream, CudaView, LaunchConfig, PushKernelArg};
use p2ptrain_protocol::CompressionSettings;

use super::{arg_u32, device_error, DeviceKernels, THREADS};
use crate::layout::Layout;
use crate::quant::half;
use crate::{KernelError, Payload};

/// Largest chunk whose values are staged in shared memory (32 KiB of it).
const MAX_STAGED_CHUNK: u32 = 8192;

/// The error-feedback residual of a peer whose pseudo-gradient lives on the
/// device. It holds two buffers: a compression writes the new residual into
/// the spare one and swaps only on success, so a failed call leaves the
/// residual as it was, as the CPU [`compress`](crate::compress) does.
pub struct DeviceResidual {
    current: CudaSlice<f32>,
    spare: CudaSlice<f32>,
    len: usize,
}

impl DeviceResidual {
    /// A zero residual of `len` entries.
    ///
    /// # Errors
    ///
    /// [`KernelError::Device`] when the allocation fails.
    pub fn zeros(stream: &CudaStream, len: usize) -> Result<Self, KernelError> {
        Ok(Self {
            current: stream.alloc_zeros(len.max(1)).map_err(device_error)?,
            spare: stream.alloc_zeros(len.max(1)).map_err(device_error)?,
            len,
        })
    }

    /// A residual holding `values`.
    ///
    /// # Errors
    ///
    /// [`KernelError::Device`] when the allocation or the copy fails.
    pub fn from_host(stream: &CudaStream, values: &[f32]) -> Result<Self, KernelError> {
        let mut residual = Self::zeros(stream, values.len())?;
        if !values.is_empty() {
            stream
                .memcpy_htod(values, &mut residual.current)
                .map_err(device_error)?;
        }
        Ok(residual)
    }

    /// Entries in the residual.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the residual is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The values, copied to the host (to save them with a checkpoint).
    ///
    /// # Errors
    ///
    /// [`KernelError::Device`] when the copy fails.
    pub fn to_host(&self, stream: &CudaStream) -> Result<Vec<f32>, KernelError> {
        let mut values = stream.clone_dtoh(&self.current).map_err(device_error)?;
        values.truncate(self.len);
        Ok(values)
    }

    /// The residual as a device buffer (at least one element long).
    pub fn values_mut(&mut self) -> &mut CudaSlice<f32> {
        &mut self.current
    }
}

impl DeviceKernels {
    /// [`compress`](crate::compress) on the device: `delta` plus the
    /// residual, compressed into a payload with the same bytes as the CPU's;
    /// the residual keeps what the payload does not carry.
    ///
    /// # Errors
    ///
    /// As the CPU function: [`KernelError::InvalidSettings`],
    /// [`KernelError::LengthMismatch`], [`KernelError::NonFinite`] (the
    /// residual is then unchanged); and [`KernelError::Device`].
    pub fn compress(
        &self,
        delta: &CudaView<'_, f32>,
        residual: &mut DeviceResidual,
        settings: &CompressionSettings,
    ) -> Result<Payload, KernelError> {
        settings.validate()?;
        let len = delta.len();
        if residual.len != len {
            return Err(KernelError::LengthMismatch {
                expected: len,
                found: residual.len,
            });
        }
        let layout = Layout::new(len, settings);
        if layout.chunks == 0 {
            return crate::compress(&[], &mut [], settings);
        }
        let scales = self.zeros::<f32>(layout.chunks)?;
        let index_bytes = self.zeros::<u8>(layout.index_bytes())?;
        let value_bytes = self.zeros::<u8>(layout.value_bytes())?;
        let kept_index = self.zeros::<u32>(layout.kept())?;
        let kept_code = self.zeros::<u32>(layout.kept())?;
        let mut first_non_finite = self.stream.clone_htod(&[u64::MAX]).map_err(device_error)?;
        let mut outputs = Outputs {
            scales,
            index_bytes,
            value_bytes,
            kept_index,
            kept_code,
        };
        self.launch_compress(
            delta,
            residual,
            &layout,
            settings,
            &mut outputs,
            &mut first_non_finite,
        )?;
        let first = self
            .stream
            .clone_dtoh(&first_non_finite)
            .map_err(device_error)?;
        if let Some(&index) = first.first().filter(|&&i| i != u64::MAX) {
            return Err(KernelError::NonFinite {
                index: index as usize,
            });
        }
        let payload = Payload {
            len,
            settings: *settings,
            scales: self.to_host(&outputs.scales, layout.chunks)?,
            indices: self.to_host(&outputs.index_bytes, layout.index_bytes())?,
            values: self.to_host(&outputs.value_bytes, layout.value_bytes())?,
        };
        std::mem::swap(&mut residual.current, &mut residual.spare);
        Ok(payload)
    }

    fn launch_compress(
        &self,
        delta: &CudaView<'_, f32>,
        residual: &mut DeviceResidual,
        layout: &Layout,
        settings: &CompressionSettings,
        out: &mut Outputs,
        first_non_finite: &mut CudaSlice<u64>,
    ) -> Result<(), KernelError> {
        let chunk_len = arg_u32(layout.chunk_len)?;
        let staged = chunk_len <= MAX_STAGED_CHUNK;
        let config = LaunchConfig {
            grid_dim: (arg_u32(layout.chunks)?, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: if staged { chunk_len * 4 } else { 0 },
        };
        let first = layout.chunk(0);
        let last = layout.chunk(layout.chunks - 1);
        let (len, chunks) = (layout.len as u64, arg_u32(layout.chunks)?);
        let (k_full, k_last) = (arg_u32(first.k)?, arg_u32(last.k)?);
        let index_bytes_full = first.indices.len() as u64;
        let value_bytes_full = first.values.len() as u64;
        let half = half(settings.value_bits);
        let max_code = settings.value_bits.levels() - 1;
        let staged = u32::from(staged);
        let mut launch = self.stream.launch_builder(&self.compress_chunks);
        launch
            .arg(delta)
            .arg(&residual.current)
            .arg(&mut residual.spare)
            .arg(&len)
            .arg(&chunk_len)
            .arg(&chunks)
            .arg(&k_full)
            .arg(&k_last)
            .arg(&layout.index_bits)
            .arg(&layout.value_bits)
            .arg(&index_bytes_full)
            .arg(&value_bytes_full)
            .arg(&half)
            .arg(&max_code)
            .arg(&staged)
            .arg(&mut out.scales)
            .arg(&mut out.index_bytes)
            .arg(&mut out.value_bytes)
            .arg(&mut out.kept_index)
            .arg(&mut out.kept_code)
            .arg(first_non_finite);
        // SAFETY: the arguments match `compress_chunks` in kernels.cu one for
        // one in type and order; every buffer is as long as the layout says
        // the kernel reads or writes (the residuals and `delta` hold `len`
        // entries, the outputs their layout sizes, at least one each).
        unsafe { launch.launch(config) }.map_err(device_error)?;
        Ok(())
    }

    /// The first `len` elements of a device buffer, on the host.
    fn to_host<T: cudarc::driver::DeviceRepr>(
        &self,
        buffer: &CudaSlice<T>,
        len: usize,
    ) -> Result<Vec<T>, KernelError> {
        if len == 0 {
            return Ok(Vec::new());
        }
        self.stream
            .clone_dtoh(&buffer.slice(..len))
            .map_err(device_error)
    }
}

/// The device buffers one compression writes.
struct Outputs {
    scales: CudaSlice<f32>,
    index_bytes: CudaSlice<u8>,
    value_bytes: CudaSlice<u8>,
    kept_index: CudaSlice<u32>,
    kept_code: CudaSlice<u32>,
}
