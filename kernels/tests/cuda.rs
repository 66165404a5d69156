//! The device kernels against the CPU ones: the same payload bytes, the same
//! residual bits, the same aggregate bits, on random inputs.
//!
//! They run with `--features cuda` where a GPU is present; elsewhere each
//! test prints that it was skipped and passes.

#[cfg(not(feature = "cuda"))]
#[test]
fn device_kernels_need_the_cuda_feature() {
    eprintln!("device kernel tests skipped: built without `--features cuda`");
}

#[cfg(feature = "cuda")]
#[path = "cuda/on_a_gpu.rs"]
mod on_a_gpu;
