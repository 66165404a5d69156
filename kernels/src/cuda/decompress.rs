//! Decompression and aggregation into device buffers.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::{arg_u32, device_error, DeviceKernels, THREADS};
use crate::decompress::WeightedMean;
use crate::layout::Layout;
use crate::quant::half;
use crate::{AggregateInput, KernelError, Payload};

impl DeviceKernels {
    /// [`decompress_into`](crate::decompress_into) on the device:
    /// `dense += weight × payload`, the same bits as the CPU. `dense` must
    /// hold exactly the payload's length (or one entry for an empty payload).
    ///
    /// # Errors
    ///
    /// [`KernelError::LengthMismatch`], [`KernelError::InvalidWeight`] (with
    /// `dense` untouched), [`KernelError::Device`].
    pub fn decompress_into(
        &self,
        payload: &Payload,
        weight: f32,
        dense: &mut CudaSlice<f32>,
    ) -> Result<(), KernelError> {
        check_len(payload.len(), dense)?;
        if !weight.is_finite() {
            return Err(KernelError::InvalidWeight(weight));
        }
        self.add(payload, &payload.layout(), weight, dense)
    }

    /// [`aggregate_into`](crate::aggregate_into) on the device: overwrites
    /// `dense` with the weighted mean of the payloads, summed in key order,
    /// the same bits as the CPU.
    ///
    /// # Errors
    ///
    /// As the CPU function, and [`KernelError::Device`].
    pub fn aggregate_into(
        &self,
        inputs: &[AggregateInput<'_>],
        dense: &mut CudaSlice<f32>,
    ) -> Result<(), KernelError> {
        let mean = WeightedMean::new(inputs)?;
        check_len(mean.len, dense)?;
        self.stream.memset_zeros(dense).map_err(device_error)?;
        for (payload, layout, weight) in &mean.terms {
            self.add(payload, layout, *weight, dense)?;
        }
        Ok(())
    }

    /// Queues `dense += weight × payload`, its layout `layout`.
    fn add(
        &self,
        payload: &Payload,
        layout: &Layout,
        weight: f32,
        dense: &mut CudaSlice<f32>,
    ) -> Result<(), KernelError> {
        let total_kept = layout.kept();
        if total_kept == 0 {
            return Ok(());
        }
        let upload = |bytes: &[u8]| -> Result<CudaSlice<u8>, KernelError> {
            match bytes.is_empty() {
                true => self.zeros(1),
                false => self.stream.clone_htod(bytes).map_err(device_error),
            }
        };
        let scales = self
            .stream
            .clone_htod(&payload.scales)
            .map_err(device_error)?;
        let index_bytes = upload(&payload.indices)?;
        let value_bytes = upload(&payload.values)?;
        let first = layout.chunk(0);
        let last = layout.chunk(layout.chunks - 1);
        let (len, chunk_len, chunks) = (
            layout.len as u64,
            arg_u32(layout.chunk_len)?,
            arg_u32(layout.chunks)?,
        );
        let (k_full, k_last) = (arg_u32(first.k)?, arg_u32(last.k)?);
        let index_bytes_full = first.indices.len() as u64;
        let value_bytes_full = first.values.len() as u64;
        let half = half(payload.settings.value_bits);
        let total_kept = total_kept as u64;
        let config = LaunchConfig {
            grid_dim: (
                arg_u32(total_kept.div_ceil(u64::from(THREADS)) as usize)?,
                1,
                1,
            ),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.stream.launch_builder(&self.add_payload);
        launch
            .arg(dense)
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
            .arg(&weight)
            .arg(&scales)
            .arg(&index_bytes)
            .arg(&value_bytes)
            .arg(&total_kept);
        // SAFETY: the arguments match `add_payload` in kernels.cu one for one
        // in type and order; `dense` holds `len` entries (checked by the
        // callers), and the payload's buffers are as long as its layout says
        // (a decoded or computed payload always is).
        unsafe { launch.launch(config) }.map_err(device_error)?;
        // The uploads are freed in stream order, after the kernel has run.
        Ok(())
    }
}

/// Checks that `dense` holds `len` entries (one, for an empty buffer).
fn check_len(len: usize, dense: &CudaSlice<f32>) -> Result<(), KernelError> {
    if dense.len() != len.max(1) {
        return Err(KernelError::LengthMismatch {
            expected: len,
            found: dense.len(),
        });
    }
    Ok(())
}
