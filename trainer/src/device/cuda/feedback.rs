//! The GPU side of [`ErrorFeedback`](crate::device::ErrorFeedback): the residual in
//! device memory and the kernels compiled for that device, running on the
//! stream candle queues its work on.

use std::sync::Arc;

use candle_core::{CudaDevice, Storage, Tensor};
use p2ptrain_kernels::cuda::{DeviceKernels, DeviceResidual};
use p2ptrain_kernels::Payload;
use p2ptrain_protocol::CompressionSettings;

use crate::{Result, TrainerError};

pub(crate) struct Feedback {
    kernels: Arc<DeviceKernels>,
    residual: DeviceResidual,
}

impl Feedback {
    pub fn new(device: &CudaDevice, values: &[f32]) -> Result<Self> {
        let stream = device.cuda_stream();
        let kernels = DeviceKernels::new(stream.clone())?;
        let residual = DeviceResidual::from_host(&stream, values)?;
        Ok(Self {
            kernels: Arc::new(kernels),
            residual,
        })
    }

    pub fn values(&self) -> Result<Vec<f32>> {
        Ok(self.residual.to_host(self.kernels.stream())?)
    }

    /// `delta` must be flat and contiguous.
    pub fn compress(&mut self, delta: &Tensor, settings: &CompressionSettings) -> Result<Payload> {
        let (storage, layout) = delta.storage_and_layout();
        let Storage::Cuda(storage) = &*storage else {
            return Err(TrainerError::Device {
                name: format!("{:?}", delta.device()),
                reason: "the pseudo-gradient is not on the residual's GPU".to_owned(),
            });
        };
        let start = layout.start_offset();
        let len = layout.shape().elem_count();
        let slice = storage.as_cuda_slice::<f32>()?;
        let view = slice.slice(start..start + len);
        Ok(self.kernels.compress(&view, &mut self.residual, settings)?)
    }

    pub fn decay(&mut self, factor: f32) -> Result<()> {
        Ok(self.residual.decay(self.kernels.stream(), factor)?)
    }

    pub fn add_back(&mut self, payload: &Payload) -> Result<()> {
        let residual = self.residual.values_mut();
        Ok(self.kernels.decompress_into(payload, 1.0, residual)?)
    }
}
