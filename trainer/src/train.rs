//! A peer's local training: the model, its inner optimizer, and the steps
//! between two outer rounds.

use candle_core::Device;
use p2ptrain_protocol::{InnerOptimizer, ModelConfig};

use crate::model::Gpt;
use crate::optim::AdamW;
use crate::{Result, TrainerError};

/// One replica with its inner AdamW. Parameters live twice: as candle
/// variables for the forward and backward pass, and as a flat CPU buffer
/// that the optimizer updates in a fixed order.
pub struct LocalTrainer {
    model: Gpt,
    params: Vec<f32>,
    adam: AdamW,
    batch_size: usize,
}

/// What one inner step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// Training loss of the batch (nats per token).
    pub loss: f32,
    /// Gradient norm before clipping.
    pub grad_norm: f32,
}

impl LocalTrainer {
    /// A trainer for a model holding `values`, with a fresh optimizer whose
    /// schedule spans `total_steps`.
    pub fn new(
        config: ModelConfig,
        values: Vec<f32>,
        inner: InnerOptimizer,
        total_steps: u64,
        device: &Device,
    ) -> Result<Self> {
        let model = Gpt::new(config, &values, device)?;
        let adam = AdamW::new(inner, total_steps, values.len());
        Self::with_optimizer(model, values, adam, inner.batch_size as usize)
    }

    /// A trainer from a model and an optimizer (restored from a checkpoint).
    pub fn with_optimizer(
        model: Gpt,
        params: Vec<f32>,
        adam: AdamW,
        batch_size: usize,
    ) -> Result<Self> {
        if params.len() != model.layout().len() {
            return Err(TrainerError::Length {
                expected: model.layout().len(),
                found: params.len(),
            });
        }
        model.set_flat_values(&params)?;
        Ok(Self {
            model,
            params,
            adam,
            batch_size,
        })
    }

    /// The model.
    pub fn model(&self) -> &Gpt {
        &self.model
    }

    /// The inner optimizer.
    pub fn optimizer(&self) -> &AdamW {
        &self.adam
    }

    /// The parameters, flat, in layout order.
    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// Replaces the parameters (after an outer step).
    pub fn set_params(&mut self, values: &[f32]) -> Result<()> {
        self.model.set_flat_values(values)?;
        self.params.copy_from_slice(values);
        Ok(())
    }

    /// Sequences per step.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The flat gradient of the loss on one batch, and the loss.
    pub fn gradient(&self, inputs: &[u32], targets: &[u32]) -> Result<(f32, Vec<f32>)> {
        let fused = self
            .model
            .fused_loss_and_gradient(inputs, targets, self.batch_size)?;
        if let Some((loss, grads)) = fused {
            if !loss.is_finite() {
                return Err(TrainerError::NonFinite("loss"));
            }
            return Ok((loss, grads));
        }
        let x = self.model.tokens(inputs, self.batch_size)?;
        let y = self.model.tokens(targets, self.batch_size)?;
        let loss = self.model.loss(&x, &y)?;
        let loss_value = loss.to_scalar::<f32>()?;
        if !loss_value.is_finite() {
            return Err(TrainerError::NonFinite("loss"));
        }
        let grads = loss.backward()?;
        let mut flat = vec![0.0f32; self.params.len()];
        for (var, spec) in self.model.vars().iter().zip(self.model.layout().specs()) {
            if let Some(grad) = grads.get(var.as_tensor()) {
                let values = grad.flatten_all()?.to_vec1::<f32>()?;
                flat[spec.range.clone()].copy_from_slice(&values);
            }
        }
        Ok((loss_value, flat))
    }

    /// One inner step on a batch of `batch_size × time` token ids.
    pub fn step(&mut self, inputs: &[u32], targets: &[u32]) -> Result<StepReport> {
        let (loss, grads) = self.gradient(inputs, targets)?;
        let grad_norm = self.adam.step(&mut self.params, &grads)?;
        self.model.set_flat_values(&self.params)?;
        Ok(StepReport { loss, grad_norm })
    }

    /// Mean loss over batches of `batch` sequences each, without training.
    pub fn evaluate<'a>(
        &self,
        batches: impl IntoIterator<Item = (&'a [u32], &'a [u32])>,
        batch: usize,
    ) -> Result<f32> {
        let (mut total, mut count) = (0.0f64, 0usize);
        for (inputs, targets) in batches {
            let x = self.model.tokens(inputs, batch)?;
            let y = self.model.tokens(targets, batch)?;
            total += f64::from(self.model.loss(&x, &y)?.to_scalar::<f32>()?);
            count += 1;
        }
        Ok((total / count.max(1) as f64) as f32)
    }
}
