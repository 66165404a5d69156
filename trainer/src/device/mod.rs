//! Choosing the device (`cpu`, `cuda:N` or `auto`, at run time) and
//! compressing a pseudo-gradient where it lives.
//!
//! This is the trainer's one place that knows whether the `cuda` feature is
//! on; without it, asking for a GPU is a clear error, never a build failure.
//! With it, a replica on a GPU compresses its pseudo-gradient on the device
//! ([`ErrorFeedback`]), and only the payload comes back to the host; and
//! the fused ops of [`crate::fused`] run their CUDA kernels (`gpu`, a
//! module of this one built with the feature).

#[cfg(feature = "cuda")]
mod cuda;

/// The training kernels of the fused ops on a GPU (`train.cu`).
#[cfg(feature = "cuda")]
pub(crate) use cuda::ops as gpu;

/// Without the `cuda` feature, entry points that only say so.
#[cfg(not(feature = "cuda"))]
pub(crate) mod no_cuda;
#[cfg(not(feature = "cuda"))]
pub(crate) use no_cuda as gpu;

pub use candle_core::Device;

use candle_core::Tensor;
use p2ptrain_kernels::{KernelError, Payload};
use p2ptrain_protocol::CompressionSettings;

use crate::{Result, TrainerError};

/// What a replica keeps of its error-feedback residual from one round to
/// the next ([`ErrorFeedback::decay`]) unless told otherwise.
///
/// A replica restarts each round from the shared checkpoint and learns
/// again the part of its update that compression held back: a residual
/// that keeps all of it sends that part twice, and grows. Validation loss
/// after 60 rounds with the `diloco` example on the bundled corpus (one
/// replica, top-1% at 8 bits, H = 50): 2.78 keeping everything (1.0, and
/// swinging between 2.7 and 3.7 on the way), 2.15–2.17 at 0.9, 1.93 at 0.8,
/// 1.85 at 0.5, 1.96 at 0 (no error feedback); uncompressed, 1.62. A node
/// trained alone keeping everything saw its training loss climb from 2.4
/// to 5.1 over 135 rounds.
pub const RESIDUAL_DECAY: f32 = 0.5;

/// Parses a device name: `cpu`, `cuda` (= `cuda:0`), `cuda:N`, or `auto`
/// (the first GPU when this build has CUDA and one is present, else the CPU).
///
/// ```
/// let device = p2ptrain_trainer::device::parse("cpu").unwrap();
/// assert!(device.is_cpu());
/// assert!(p2ptrain_trainer::device::parse("tpu").is_err());
/// ```
pub fn parse(name: &str) -> Result<Device> {
    let fail = |reason: &str| TrainerError::Device {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    match name {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(auto()),
        _ => {
            let ordinal = match name.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| fail("expected cpu, cuda:N or auto"))?,
                None => return Err(fail("expected cpu, cuda:N or auto")),
            };
            cuda(ordinal).map_err(|reason| fail(&reason))
        }
    }
}

/// Where a device trains, in words, with the name [`parse`] takes for it.
///
/// ```
/// use p2ptrain_trainer::device::{describe, Device};
///
/// assert_eq!(describe(&Device::Cpu), "the CPU (cpu)");
/// ```
pub fn describe(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "the CPU (cpu)".to_owned(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("GPU {gpu_id} (cuda:{gpu_id})"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("Metal GPU {gpu_id}"),
    }
}

#[cfg(feature = "cuda")]
fn cuda(ordinal: usize) -> Result<Device, String> {
    let device = Device::new_cuda(ordinal).map_err(|e| e.to_string())?;
    if let Device::Cuda(gpu) = &device {
        // Candle queues all of its work, and the kernels here all of theirs,
        // on the one stream of the thread that runs them; cudarc only acts on
        // the events it records per buffer when a context has several streams.
        // Creating and destroying two events for every tensor is then pure
        // host overhead, several thousand times a training step.
        // SAFETY: nothing here uses a second stream; see above.
        unsafe { gpu.disable_event_tracking() };
    }
    Ok(device)
}

/// A replica's error-feedback residual, kept on the device its model lives
/// on, with the compression kernels of that device.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use p2ptrain_protocol::CompressionSettings;
/// use p2ptrain_trainer::device::ErrorFeedback;
///
/// let delta: Vec<f32> = (0..10_000).map(|i| (i % 89) as f32 - 44.0).collect();
/// let mut feedback = ErrorFeedback::new(&Device::Cpu, delta.len())?;
/// let tensor = Tensor::from_slice(&delta, delta.len(), &Device::Cpu)?;
/// let payload = feedback.compress(&tensor, &CompressionSettings::default())?;
/// assert_eq!(payload.kept(), 2 * 41 + 18);
/// // What was not sent waits for the next round: sent + kept back = delta.
/// let mut sent = vec![0.0; delta.len()];
/// p2ptrain_kernels::decompress_into(&payload, 1.0, &mut sent)?;
/// for ((s, r), d) in sent.iter().zip(feedback.values()?).zip(&delta) {
///     assert!((s + r - d).abs() <= 1e-5);
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ErrorFeedback(Feedback);

enum Feedback {
    Host(Vec<f32>),
    #[cfg(feature = "cuda")]
    Cuda(cuda::Feedback),
}

impl std::fmt::Debug for ErrorFeedback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let place = match &self.0 {
            Feedback::Host(_) => "host",
            #[cfg(feature = "cuda")]
            Feedback::Cuda(_) => "cuda",
        };
        f.debug_struct("ErrorFeedback").field("on", &place).finish()
    }
}

impl ErrorFeedback {
    /// A zero residual of `len` entries on `device`.
    ///
    /// # Errors
    ///
    /// [`TrainerError::Device`] when the device cannot hold it or compile
    /// the kernels.
    pub fn new(device: &Device, len: usize) -> Result<Self> {
        Self::from_values(device, &vec![0.0; len])
    }

    /// A residual holding `values` (restored from disk), on `device`.
    ///
    /// # Errors
    ///
    /// As [`ErrorFeedback::new`].
    pub fn from_values(device: &Device, values: &[f32]) -> Result<Self> {
        match device {
            Device::Cpu => Ok(Self(Feedback::Host(values.to_vec()))),
            #[cfg(feature = "cuda")]
            Device::Cuda(gpu) => Ok(Self(Feedback::Cuda(cuda::Feedback::new(gpu, values)?))),
            #[allow(unreachable_patterns)]
            other => Err(unsupported(other)),
        }
    }

    /// The residual, on the host.
    ///
    /// # Errors
    ///
    /// [`TrainerError::Device`] when the copy from the device fails.
    pub fn values(&self) -> Result<Vec<f32>> {
        match &self.0 {
            Feedback::Host(values) => Ok(values.clone()),
            #[cfg(feature = "cuda")]
            Feedback::Cuda(feedback) => feedback.values(),
        }
    }

    /// Compresses `delta` (a flat `f32` tensor on the residual's device)
    /// plus the residual, which keeps what the payload leaves out. On a GPU
    /// only the payload crosses to the host, and its bytes are those the
    /// CPU would produce.
    ///
    /// # Errors
    ///
    /// [`TrainerError::Compression`] when the kernels refuse (a non-finite
    /// entry, a length mismatch), [`TrainerError::Tensor`] or
    /// [`TrainerError::Device`] when `delta` is on another device.
    pub fn compress(&mut self, delta: &Tensor, settings: &CompressionSettings) -> Result<Payload> {
        let delta = delta.flatten_all()?.contiguous()?;
        match &mut self.0 {
            Feedback::Host(residual) => {
                let delta = delta.to_device(&Device::Cpu)?;
                with_host_values(&delta, |values| {
                    Ok(p2ptrain_kernels::compress(values, residual, settings)?)
                })
            }
            #[cfg(feature = "cuda")]
            Feedback::Cuda(feedback) => feedback.compress(&delta, settings),
        }
    }

    /// Multiplies the residual by `factor`, in `[0, 1]` (see
    /// [`p2ptrain_kernels::decay_residual`]), where it lives.
    ///
    /// # Errors
    ///
    /// [`TrainerError::Compression`] for a factor outside `[0, 1]` (the
    /// residual is unchanged), or when a copy to or from the GPU fails.
    pub fn decay(&mut self, factor: f32) -> Result<()> {
        match &mut self.0 {
            Feedback::Host(residual) => Ok(p2ptrain_kernels::decay_residual(residual, factor)?),
            #[cfg(feature = "cuda")]
            Feedback::Cuda(feedback) => feedback.decay(factor),
        }
    }

    /// Adds a payload that was not applied back into the residual (a
    /// contribution the swarm did not take).
    ///
    /// # Errors
    ///
    /// [`TrainerError::Compression`] when the payload does not fit.
    pub fn add_back(&mut self, payload: &Payload) -> Result<()> {
        match &mut self.0 {
            Feedback::Host(residual) => {
                Ok(p2ptrain_kernels::decompress_into(payload, 1.0, residual)?)
            }
            #[cfg(feature = "cuda")]
            Feedback::Cuda(feedback) => feedback.add_back(payload),
        }
    }
}

/// Runs `f` on the values of `tensor`, a contiguous `f32` tensor in host
/// memory, where they lie: on a model of hundreds of millions of
/// parameters, a copy is hundreds of megabytes more at the peak and a pass
/// over them.
///
/// # Errors
///
/// [`TrainerError::Device`] when `tensor` is not in host memory or not
/// contiguous, [`TrainerError::Tensor`] when it does not hold `f32`, and
/// whatever `f` returns.
pub(crate) fn with_host_values<R>(
    tensor: &Tensor,
    f: impl FnOnce(&[f32]) -> Result<R>,
) -> Result<R> {
    let (storage, layout) = tensor.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (candle_core::Storage::Cpu(values), Some((start, end))) => {
            f(&values.as_slice::<f32>()?[start..end])
        }
        _ => Err(TrainerError::Device {
            name: format!("{:?}", tensor.device()),
            reason: "expected a contiguous tensor in host memory".to_owned(),
        }),
    }
}

/// The error for a device this build has no path for.
fn unsupported(device: &Device) -> TrainerError {
    TrainerError::Device {
        name: format!("{device:?}"),
        reason: "not supported by this build".to_owned(),
    }
}

impl From<KernelError> for TrainerError {
    fn from(e: KernelError) -> Self {
        TrainerError::Compression(e)
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda(_ordinal: usize) -> Result<Device, String> {
    Err("this build has no CUDA support; rebuild with `--features cuda`".to_owned())
}

#[cfg(feature = "cuda")]
fn auto() -> Device {
    cuda(0).unwrap_or(Device::Cpu)
}

#[cfg(not(feature = "cuda"))]
fn auto() -> Device {
    Device::Cpu
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_values_are_the_tensor_s_own_from_its_offset() {
        let all = Tensor::arange(0f32, 10.0, &Device::Cpu).unwrap();
        let middle = all.narrow(0, 3, 5).unwrap();
        let seen = with_host_values(&middle, |values| Ok(values.to_vec())).unwrap();
        assert_eq!(seen, [3.0, 4.0, 5.0, 6.0, 7.0]);
    }

    #[test]
    fn a_strided_tensor_or_other_values_are_refused() {
        let grid = Tensor::arange(0f32, 6.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let columns = grid.t().unwrap();
        let strided = with_host_values(&columns, |_| Ok(()));
        assert!(matches!(strided, Err(TrainerError::Device { .. })));
        let integers = Tensor::arange(0u32, 4, &Device::Cpu).unwrap();
        assert!(with_host_values(&integers, |_| Ok(())).is_err());
    }
}
