//! The inner AdamW on the model's own tensors, for a model on a GPU: the
//! same schedule, clipping and update as [`AdamW`], run as in-place candle
//! ops ([`AdamWMoment`], [`AdamWUpdate`]: one pass over each moment and one
//! over the parameters) so that parameters, gradients and moments never
//! leave the device during a round.
//!
//! The CPU path keeps [`AdamW`] on flat buffers, whose bits are fixed; on a
//! GPU the order of floating-point sums inside candle's kernels is the
//! device's, so only the payload (compressed bit for bit as on the CPU) is
//! the same whatever the hardware.

use candle_core::{backprop::GradStore, Tensor, Var};
use p2ptrain_protocol::InnerOptimizer;

use crate::fused::{AdamWMoment, AdamWUpdate};
use crate::optim::{AdamW, StepScalars};
use crate::params::ParamLayout;
use crate::{Result, TrainerError};

/// AdamW state as one pair of moment tensors per variable.
pub(crate) struct TensorAdamW {
    settings: InnerOptimizer,
    total_steps: u64,
    step: u64,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl TensorAdamW {
    /// The state of `adam` (fresh or restored), moved onto the variables'
    /// device and shapes.
    pub fn from_host(adam: &AdamW, vars: &[Var], layout: &ParamLayout) -> Result<Self> {
        let (m, v) = adam.moments();
        let upload = |flat: &[f32]| -> Result<Vec<Tensor>> {
            vars.iter()
                .zip(layout.specs())
                .map(|(var, spec)| {
                    let values = flat.get(spec.range.clone()).ok_or(TrainerError::Length {
                        expected: layout.len(),
                        found: flat.len(),
                    })?;
                    Ok(Tensor::from_slice(
                        values,
                        spec.shape.as_slice(),
                        var.device(),
                    )?)
                })
                .collect()
        };
        Ok(Self {
            settings: *adam.settings(),
            total_steps: adam.total_steps(),
            step: adam.steps_taken(),
            m: upload(m)?,
            v: upload(v)?,
        })
    }

    /// The state as a host [`AdamW`], for a checkpoint.
    pub fn to_host(&self) -> Result<AdamW> {
        let download = |tensors: &[Tensor]| -> Result<Vec<f32>> {
            let mut flat = Vec::new();
            for t in tensors {
                flat.extend(t.flatten_all()?.to_vec1::<f32>()?);
            }
            Ok(flat)
        };
        AdamW::from_state(
            self.settings,
            self.total_steps,
            self.step,
            download(&self.m)?,
            download(&self.v)?,
        )
    }

    /// One update of `vars` from their gradients in `grads` (a variable
    /// without one counts as a zero gradient). Returns the gradient norm
    /// before clipping.
    pub fn step(&mut self, vars: &[Var], grads: &GradStore) -> Result<f32> {
        // Gradients, moments and parameters are detached: a tensor that kept
        // its op would keep the whole step's graph (every activation) alive
        // into the next step.
        let grads: Vec<Tensor> = vars
            .iter()
            .map(|var| match grads.get(var.as_tensor()) {
                Some(g) => g.detach().contiguous(),
                None => var.as_tensor().zeros_like(),
            })
            .collect::<candle_core::Result<_>>()?;
        let squares: Vec<Tensor> = grads
            .iter()
            .map(|g| g.sqr()?.sum_all())
            .collect::<candle_core::Result<_>>()?;
        let norm = Tensor::stack(&squares, 0)?
            .sum_all()?
            .to_scalar::<f32>()?
            .sqrt();
        if !norm.is_finite() {
            return Err(TrainerError::NonFinite("gradient norm"));
        }
        let StepScalars {
            coef,
            beta1,
            beta2,
            eps,
            bias2_sqrt,
            step_size,
            decay,
        } = StepScalars::new(&self.settings, self.total_steps, self.step, norm);
        self.step += 1;
        let first = AdamWMoment {
            coef,
            beta: beta1,
            square: false,
        };
        let second = AdamWMoment {
            coef,
            beta: beta2,
            square: true,
        };
        let update = AdamWUpdate {
            inv_bias2: (1.0 / f64::from(bias2_sqrt)) as f32,
            eps,
            step: step_size,
            decay,
        };
        for (((var, g), m), v) in vars.iter().zip(&grads).zip(&self.m).zip(&self.v) {
            m.inplace_op2(g, &first)?;
            v.inplace_op2(g, &second)?;
            var.as_tensor().inplace_op3(m, v, &update)?;
        }
        Ok(norm)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use p2ptrain_protocol::RunManifest;

    use super::*;
    use crate::{Gpt, Preset};

    /// The tensor AdamW follows the flat one step for step (up to the
    /// rounding of its fused scalings), and keeps no graph between steps.
    #[test]
    fn follows_the_flat_adamw_and_keeps_no_graph() {
        let config = Preset::Tiny.config();
        let model = Gpt::init(config, 1, &Device::Cpu)
            .unwrap()
            .without_fused_kernels();
        let layout = model.layout().clone();
        let mut flat = model.flat_values().unwrap();
        let settings = RunManifest::default().inner;
        let mut host = AdamW::new(settings, 10, flat.len());
        let mut on_tensors = TensorAdamW::from_host(&host, model.vars(), &layout).unwrap();
        let ids: Vec<u32> = (0..2 * 64).map(|i| (i * 7 % 96) as u32).collect();
        let targets: Vec<u32> = ids.iter().map(|i| (i + 1) % 96).collect();
        for _ in 0..3 {
            let x = model.tokens(&ids, 2).unwrap();
            let y = model.tokens(&targets, 2).unwrap();
            let loss = model.loss(&x, &y).unwrap();
            let grads = loss.backward().unwrap();
            let mut grad_flat = vec![0.0f32; flat.len()];
            for (var, spec) in model.vars().iter().zip(layout.specs()) {
                let g = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap();
                grad_flat[spec.range.clone()].copy_from_slice(&g.to_vec1::<f32>().unwrap());
            }
            let host_norm = host.step(&mut flat, &grad_flat).unwrap();
            let norm = on_tensors.step(model.vars(), &grads).unwrap();
            assert!(
                (norm - host_norm).abs() <= 1e-4 * host_norm,
                "{norm} vs {host_norm}"
            );
        }
        let stepped = model.flat_values().unwrap();
        let worst = stepped
            .iter()
            .zip(&flat)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-6, "largest difference {worst}");
        assert!(on_tensors
            .m
            .iter()
            .chain(&on_tensors.v)
            .all(|t| !t.track_op()));
        let restored = on_tensors.to_host().unwrap();
        assert_eq!(restored.steps_taken(), 3);
    }
}
