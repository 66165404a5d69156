//! Compression with error feedback on the device.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, CudaView, LaunchConfig, PushKernelArg};
use p2ptrain_protocol::CompressionSettings;

use super::{arg_u32, device_error, DeviceKernels, Staging, PER_THREAD, THREADS};
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
    pub fn zeros(stream: &Arc<CudaStream>, len: usize) -> Result<Self, KernelError> {
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
    pub fn from_host(stream: &Arc<CudaStream>, values: &[f32]) -> Result<Self, KernelError> {
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
    pub fn to_host(&self, stream: &Arc<CudaStream>) -> Result<Vec<f32>, KernelError> {
        let mut values = stream.clone_dtoh(&self.current).map_err(device_error)?;
        values.truncate(self.len);
        Ok(values)
    }

    /// Multiplies the residual by `factor` ([`decay_residual`](crate::decay_residual)'s
    /// rule), through the host: once a round, a copy each way.
    ///
    /// # Errors
    ///
    /// [`KernelError::InvalidDecay`] unless `0 ≤ factor ≤ 1` (nothing
    /// changes), [`KernelError::Device`] when a copy fails.
    pub fn decay(&mut self, stream: &Arc<CudaStream>, factor: f32) -> Result<(), KernelError> {
        crate::validate_residual_decay(factor)?;
        if factor == 1.0 || self.len == 0 {
            return Ok(());
        }
        let mut values = self.to_host(stream)?;
        crate::decay_residual(&mut values, factor)?;
        stream
            .memcpy_htod(&values, &mut self.current)
            .map_err(device_error)
    }

    /// The residual as a device buffer (at least one element long).
    pub fn values_mut(&mut self) -> &mut CudaSlice<f32> {
        &mut self.current
    }
}

impl DeviceKernels {
    /// [`compress`](crate::compress) on the device: `delta` plus the
    /// residual, compressed into a payload with the same bytes as the CPU's;
    /// the residual keeps what the payload does not carry. Only the payload
    /// (and an 8-byte finiteness flag before it) crosses to the host.
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
        self.compress_on_device(delta, residual, settings)?
            .to_host()
    }

    /// [`compress`](Self::compress), leaving the payload in device memory
    /// (only the finiteness flag is read back).
    ///
    /// # Errors
    ///
    /// As [`compress`](Self::compress).
    pub fn compress_on_device(
        &self,
        delta: &CudaView<'_, f32>,
        residual: &mut DeviceResidual,
        settings: &CompressionSettings,
    ) -> Result<DevicePayload, KernelError> {
        settings.validate()?;
        let len = delta.len();
        if residual.len != len {
            return Err(KernelError::LengthMismatch {
                expected: len,
                found: residual.len,
            });
        }
        let layout = Layout::new(len, settings);
        let offsets = Offsets::of(&layout);
        // SAFETY: the kernel writes every byte of `bytes` past the flag
        // (every chunk's scale and whole packed runs) and every kept slot
        // before reading it; the flag is zeroed below.
        let mut bytes = unsafe { self.stream.alloc::<u8>(offsets.total) }.map_err(device_error)?;
        self.stream
            .memset_zeros(&mut bytes.slice_mut(..FLAG_BYTES))
            .map_err(device_error)?;
        if layout.chunks > 0 {
            self.launch_compress(delta, residual, &layout, settings, &mut bytes, &offsets)?;
        }
        let flag = self
            .stream
            .clone_dtoh(&bytes.slice(..FLAG_BYTES))
            .map_err(device_error)?;
        let flag =
            u64::from_le_bytes(flag.try_into().map_err(|_| {
                KernelError::Device("short read of the finiteness flag".to_owned())
            })?);
        if flag != 0 {
            return Err(KernelError::NonFinite {
                index: !flag as usize,
            });
        }
        if layout.chunks > 0 {
            std::mem::swap(&mut residual.current, &mut residual.spare);
        }
        Ok(DevicePayload {
            bytes,
            offsets,
            len,
            settings: *settings,
            stream: self.stream.clone(),
            staging: self.staging.clone(),
        })
    }

    fn launch_compress(
        &self,
        delta: &CudaView<'_, f32>,
        residual: &mut DeviceResidual,
        layout: &Layout,
        settings: &CompressionSettings,
        bytes: &mut CudaSlice<u8>,
        offsets: &Offsets,
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
        let (scales_offset, index_offset, value_offset) = (
            offsets.scales as u64,
            offsets.indices as u64,
            offsets.values as u64,
        );
        // SAFETY: written by the kernel before it reads them.
        let mut kept_index =
            unsafe { self.stream.alloc::<u32>(layout.kept().max(1)) }.map_err(device_error)?;
        // SAFETY: as above.
        let mut kept_code =
            unsafe { self.stream.alloc::<u32>(layout.kept().max(1)) }.map_err(device_error)?;
        // Chunks of up to THREADS × PER_THREAD entries keeping at most
        // THREADS are selected from registers (the kernel checks each chunk
        // again and falls back to the radix select where that does not
        // apply); the other kernel keeps full occupancy for the rest.
        let kernel = if chunk_len <= THREADS * PER_THREAD && k_full <= THREADS {
            &self.compress_chunks_in_registers
        } else {
            &self.compress_chunks
        };
        let mut launch = self.stream.launch_builder(kernel);
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
            .arg(bytes)
            .arg(&scales_offset)
            .arg(&index_offset)
            .arg(&value_offset)
            .arg(&mut kept_index)
            .arg(&mut kept_code);
        // SAFETY: the arguments match `compress_chunks` in kernels.cu one for
        // one in type and order; the residuals and `delta` hold `len`
        // entries, `bytes` holds the flag, the scales (4-byte aligned) and
        // the packed runs at the offsets given, and the kept buffers hold a
        // slot per kept entry.
        unsafe { launch.launch(config) }.map_err(device_error)?;
        Ok(())
    }
}

/// Bytes of the finiteness flag at the start of a device payload.
const FLAG_BYTES: usize = 8;

/// Where each part of a payload sits in its device buffer.
#[derive(Debug, Clone, Copy)]
struct Offsets {
    scales: usize,
    indices: usize,
    values: usize,
    total: usize,
}

impl Offsets {
    fn of(layout: &Layout) -> Self {
        let scales = FLAG_BYTES;
        let indices = scales + 4 * layout.chunks;
        let values = indices + layout.index_bytes();
        Self {
            scales,
            indices,
            values,
            total: values + layout.value_bytes(),
        }
    }
}

/// A payload computed on the device and not yet copied to the host.
pub struct DevicePayload {
    bytes: CudaSlice<u8>,
    offsets: Offsets,
    len: usize,
    settings: CompressionSettings,
    stream: Arc<CudaStream>,
    staging: Arc<Staging>,
}

impl DevicePayload {
    /// The payload on the host: one copy of its bytes from the device.
    ///
    /// # Errors
    ///
    /// [`KernelError::Device`] when the copy fails.
    pub fn to_host(&self) -> Result<Payload, KernelError> {
        self.staging
            .download(&self.stream, &self.bytes, |bytes| Payload {
                len: self.len,
                settings: self.settings,
                scales: bytes[self.offsets.scales..self.offsets.indices]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                indices: bytes[self.offsets.indices..self.offsets.values].to_vec(),
                values: bytes[self.offsets.values..self.offsets.total].to_vec(),
            })
    }
}
