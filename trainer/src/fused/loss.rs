//! The mean cross-entropy loss of logits against target classes, as slice
//! kernels and as a candle op.

use candle_core::{CpuStorage, CudaStorage, CustomOp1, Layout, Shape, Tensor};

use super::{fast_exp, lane_max, lane_sum, last_dim, slice};
use crate::device::gpu;

type Result<T> = candle_core::Result<T>;

/// Checks that there is one target per row and each names a class.
fn check(targets: &[u32], rows: usize, vocab: usize) -> Result<()> {
    if targets.len() != rows || targets.iter().any(|&t| t as usize >= vocab) {
        candle_core::bail!(
            "cross-entropy: {} targets for {rows} rows of {vocab} classes",
            targets.len()
        );
    }
    Ok(())
}

/// Mean over rows of `log Σ_j e^{x_j} − x_target` for logits `[rows, vocab]`.
pub(super) fn cross_entropy_loss(logits: &[f32], targets: &[u32], vocab: usize) -> Result<f32> {
    check(targets, logits.len() / vocab.max(1), vocab)?;
    let mut exp = vec![0.0f32; vocab];
    let mut total = 0.0f64;
    for (row, &target) in logits.chunks_exact(vocab).zip(targets) {
        let max = lane_max(row);
        for (e, &x) in exp.iter_mut().zip(row) {
            *e = fast_exp(x - max);
        }
        let log_sum = lane_sum(&exp, &exp, &exp, |e, _, _| e).ln();
        total += f64::from(log_sum - (row[target as usize] - max));
    }
    Ok((total / targets.len().max(1) as f64) as f32)
}

/// Replaces logits `[rows, vocab]`, in place, by `scale` times the gradient
/// of each row's loss, `scale · (softmax(row) − onehot(target))`, and
/// returns the mean loss (as [`cross_entropy_loss`] computes it).
pub(super) fn cross_entropy_backward(
    logits: &mut [f32],
    targets: &[u32],
    vocab: usize,
    scale: f32,
) -> Result<f32> {
    check(targets, logits.len() / vocab.max(1), vocab)?;
    let mut total = 0.0f64;
    for (row, &target) in logits.chunks_exact_mut(vocab).zip(targets) {
        let max = lane_max(row);
        let picked = row[target as usize] - max;
        for x in row.iter_mut() {
            *x = fast_exp(*x - max);
        }
        let sum = lane_sum(row, row, row, |e, _, _| e);
        total += f64::from(sum.ln() - picked);
        let inv = scale / sum;
        row.iter_mut().for_each(|x| *x *= inv);
        row[target as usize] -= scale;
    }
    Ok((total / targets.len().max(1) as f64) as f32)
}

/// Mean cross-entropy of logits `[n, vocab]` against the targets it holds.
pub struct CrossEntropy {
    /// One target class per row.
    pub targets: Vec<u32>,
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let logits = slice(storage, layout, self.name())?;
        let mean = cross_entropy_loss(logits, &self.targets, last_dim(layout)?)?;
        Ok((CpuStorage::F32(vec![mean]), Shape::from(())))
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        let mean = gpu::cross_entropy((storage, layout), &self.targets)?;
        Ok((mean, Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = CrossEntropyGrad {
            targets: &self.targets,
            scale: grad_res.to_scalar::<f32>()? / self.targets.len().max(1) as f32,
        };
        Ok(Some(arg.apply_op1_no_bwd(&grad)?))
    }
}

/// `logits → scale · (softmax − onehot(target))`, row by row.
struct CrossEntropyGrad<'a> {
    targets: &'a [u32],
    scale: f32,
}

impl CustomOp1 for CrossEntropyGrad<'_> {
    fn name(&self) -> &'static str {
        "fused-cross-entropy-grad"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut grad = slice(storage, layout, self.name())?.to_vec();
        cross_entropy_backward(&mut grad, self.targets, last_dim(layout)?, self.scale)?;
        Ok((CpuStorage::F32(grad), layout.shape().clone()))
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        let grad = gpu::cross_entropy_grad((storage, layout), self.targets, self.scale)?;
        Ok((grad, layout.shape().clone()))
    }
}
