//! Choosing the device: `cpu`, `cuda:N` or `auto`, at run time.
//!
//! This is the trainer's one place that knows whether the `cuda` feature is
//! on; without it, asking for a GPU is a clear error, never a build failure.

use candle_core::Device;

use crate::{Result, TrainerError};

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

#[cfg(feature = "cuda")]
fn cuda(ordinal: usize) -> Result<Device, String> {
    Device::new_cuda(ordinal).map_err(|e| e.to_string())
}

#[cfg(not(feature = "cuda"))]
fn cuda(_ordinal: usize) -> Result<Device, String> {
    Err("this build has no CUDA support; rebuild with `--features cuda`".to_owned())
}

#[cfg(feature = "cuda")]
fn auto() -> Device {
    Device::new_cuda(0).unwrap_or(Device::Cpu)
}

#[cfg(not(feature = "cuda"))]
fn auto() -> Device {
    Device::Cpu
}
