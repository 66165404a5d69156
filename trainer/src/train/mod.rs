//! A peer's local training: the model, its inner optimizer, and the steps
//! between two outer rounds.

use std::borrow::Cow;
use std::convert::Infallible;
use std::ops::ControlFlow;

use candle_core::{Device, Tensor};
use p2ptrain_kernels::Payload;
use p2ptrain_protocol::{CompressionSettings, InnerOptimizer, ModelConfig};

use crate::device::{with_host_values, ErrorFeedback};
use crate::model::Gpt;
use crate::optim::{pseudo_gradient, AdamW};
use crate::tensor_adamw::TensorAdamW;
use crate::{Result, TrainerError};

mod passes;

pub use passes::PassProgress;
use passes::{flat_gradient_within, PASS_BYTES};

/// One replica with its inner AdamW.
///
/// On the CPU, parameters live twice: as candle variables for the forward
/// and backward pass, and as a flat buffer that [`AdamW`] updates in a fixed
/// order, so every CPU peer computes the same bits. On a GPU they live only
/// in the model's tensors, and AdamW runs there too: nothing but the
/// compressed pseudo-gradient leaves the device during a round.
pub struct LocalTrainer {
    model: Gpt,
    state: State,
    /// The parameters the round started from, where the model lives.
    round_start: Tensor,
    batch_size: usize,
    /// Bytes of activations one pass on the host may hold.
    pass_bytes: usize,
}

enum State {
    Host { params: Vec<f32>, adam: AdamW },
    Device { adam: TensorAdamW },
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
        let round_start = Tensor::from_slice(&params, params.len(), model.device())?;
        let state = if model.device().is_cpu() {
            State::Host { params, adam }
        } else {
            let adam = TensorAdamW::from_host(&adam, model.vars(), model.layout())?;
            State::Device { adam }
        };
        Ok(Self {
            model,
            state,
            round_start,
            batch_size,
            pass_bytes: PASS_BYTES,
        })
    }

    /// The model.
    pub fn model(&self) -> &Gpt {
        &self.model
    }

    /// The device the replica trains on.
    pub fn device(&self) -> &Device {
        self.model.device()
    }

    /// The inner optimizer's state (copied from the GPU when it lives there).
    pub fn optimizer(&self) -> Result<Cow<'_, AdamW>> {
        match &self.state {
            State::Host { adam, .. } => Ok(Cow::Borrowed(adam)),
            State::Device { adam } => Ok(Cow::Owned(adam.to_host()?)),
        }
    }

    /// The parameters, flat, in layout order (copied from the GPU when they
    /// live there).
    pub fn params(&self) -> Result<Cow<'_, [f32]>> {
        match &self.state {
            State::Host { params, .. } => Ok(Cow::Borrowed(params)),
            State::Device { .. } => Ok(Cow::Owned(self.model.flat_values()?)),
        }
    }

    /// Starts a round from `values` (the agreed checkpoint after an outer
    /// step): the parameters become `values`, and the pseudo-gradient that
    /// [`compress_update`](Self::compress_update) sends is measured from them.
    pub fn set_params(&mut self, values: &[f32]) -> Result<()> {
        self.model.set_flat_values(values)?;
        self.round_start = Tensor::from_slice(values, values.len(), self.model.device())?;
        if let State::Host { params, .. } = &mut self.state {
            params.copy_from_slice(values);
        }
        Ok(())
    }

    /// Sequences per step.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Sets the bytes of activations one pass on the host may hold
    /// (2 GiB unless set): a step whose batch needs more runs in passes of
    /// whole sequences (see [`step_watched`](Self::step_watched)).
    pub fn set_pass_bytes(&mut self, bytes: usize) {
        self.pass_bytes = bytes;
    }

    /// The flat gradient of the loss on one batch (on the host), and the loss.
    pub fn gradient(&self, inputs: &[u32], targets: &[u32]) -> Result<(f32, Vec<f32>)> {
        let never = &mut |_| ControlFlow::<Infallible>::Continue(());
        let batch = (inputs, targets);
        match flat_gradient_within(&self.model, self.batch_size, batch, self.pass_bytes, never)? {
            ControlFlow::Continue(gradient) => Ok(gradient),
            ControlFlow::Break(never) => match never {},
        }
    }

    /// One inner step on a batch of `batch_size × time` token ids.
    pub fn step(&mut self, inputs: &[u32], targets: &[u32]) -> Result<StepReport> {
        let never = &mut |_| ControlFlow::<Infallible>::Continue(());
        match self.step_watched(inputs, targets, never)? {
            ControlFlow::Continue(report) => Ok(report),
            ControlFlow::Break(never) => match never {},
        }
    }

    /// [`step`](Self::step), telling `on_pass` after each pass when the
    /// batch is too large for one (on the host, a batch whose activations
    /// need more than the pass budget); a step in one pass does not call
    /// it. When `on_pass` breaks, the step ends there, the parameters and
    /// the optimizer as they were before it.
    ///
    /// ```
    /// use std::ops::ControlFlow;
    /// use candle_core::Device;
    /// use p2ptrain_protocol::{InnerOptimizer, RunManifest};
    /// use p2ptrain_trainer::{LocalTrainer, ParamLayout, Preset};
    ///
    /// let config = Preset::Tiny.config();
    /// let values = ParamLayout::gpt2(&config).initial_values(1);
    /// let inner = InnerOptimizer { batch_size: 4, ..RunManifest::default().inner };
    /// let mut trainer = LocalTrainer::new(config, values, inner, 10, &Device::Cpu)?;
    /// trainer.set_pass_bytes(1); // one sequence a pass
    /// let time = config.context_len as usize;
    /// let ids: Vec<u32> = (0..4 * time as u32).map(|i| i % 256).collect();
    /// let mut seen = Vec::new();
    /// let flow = trainer.step_watched(&ids, &ids, &mut |pass| {
    ///     seen.push(pass.done);
    ///     ControlFlow::<()>::Continue(())
    /// })?;
    /// assert!(matches!(flow, ControlFlow::Continue(report) if report.loss > 0.0));
    /// assert_eq!(seen, [1, 2, 3, 4]);
    /// # Ok::<(), p2ptrain_trainer::TrainerError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`TrainerError`] when the batch does not fit the model or the loss
    /// is not finite.
    pub fn step_watched<B>(
        &mut self,
        inputs: &[u32],
        targets: &[u32],
        on_pass: &mut impl FnMut(PassProgress) -> ControlFlow<B>,
    ) -> Result<ControlFlow<B, StepReport>> {
        let model = &self.model;
        let (loss, grad_norm) = match &mut self.state {
            State::Host { params, adam } => {
                let batch = (inputs, targets);
                let (loss, grads) = match flat_gradient_within(
                    model,
                    self.batch_size,
                    batch,
                    self.pass_bytes,
                    on_pass,
                )? {
                    ControlFlow::Continue(gradient) => gradient,
                    ControlFlow::Break(b) => return Ok(ControlFlow::Break(b)),
                };
                let grad_norm = adam.step(params, &grads)?;
                model.set_flat_values(params)?;
                (loss, grad_norm)
            }
            State::Device { adam } => {
                let (loss, grads) = backward(model, self.batch_size, inputs, targets)?;
                (loss, adam.step(model.vars(), &grads)?)
            }
        };
        Ok(ControlFlow::Continue(StepReport { loss, grad_norm }))
    }

    /// The round's compressed pseudo-gradient: `start − θ` (plus what
    /// `feedback` carried over), computed and compressed where the model
    /// lives; `feedback` keeps what the payload leaves out.
    ///
    /// # Errors
    ///
    /// [`TrainerError::Compression`] when the update is not finite or does
    /// not fit `feedback`.
    pub fn compress_update(
        &self,
        feedback: &mut ErrorFeedback,
        settings: &CompressionSettings,
    ) -> Result<Payload> {
        if let State::Host { params, .. } = &self.state {
            // The round's start and the delta are read and written where
            // they lie: one buffer of the model's size, not three.
            let delta =
                with_host_values(&self.round_start, |start| pseudo_gradient(start, params))?;
            let delta = Tensor::from_vec(delta, params.len(), &Device::Cpu)?;
            return feedback.compress(&delta, settings);
        }
        let flat: Vec<Tensor> = self
            .model
            .vars()
            .iter()
            .map(|var| var.as_tensor().flatten_all())
            .collect::<candle_core::Result<_>>()?;
        let delta = (&self.round_start - Tensor::cat(&flat, 0)?)?;
        feedback.compress(&delta, settings)
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

/// The loss and candle's gradients on one batch, where the model lives.
fn backward(
    model: &Gpt,
    batch_size: usize,
    inputs: &[u32],
    targets: &[u32],
) -> Result<(f32, candle_core::backprop::GradStore)> {
    let x = model.tokens(inputs, batch_size)?;
    let y = model.tokens(targets, batch_size)?;
    let loss = model.loss(&x, &y)?;
    let loss_value = loss.to_scalar::<f32>()?;
    if !loss_value.is_finite() {
        return Err(TrainerError::NonFinite("loss"));
    }
    Ok((loss_value, loss.backward()?))
}

#[cfg(test)]
mod tests {
    use super::passes::tests::token_ids;
    use super::*;
    use crate::{ParamLayout, Preset};

    #[test]
    fn a_step_stopped_between_passes_leaves_the_replica_as_it_was() {
        let config = Preset::Tiny.config();
        let values = ParamLayout::gpt2(&config).initial_values(3);
        let inner = InnerOptimizer {
            batch_size: 4,
            ..p2ptrain_protocol::RunManifest::default().inner
        };
        let trainer = || {
            let mut t = LocalTrainer::new(config, values.clone(), inner, 10, &Device::Cpu).unwrap();
            t.set_pass_bytes(1);
            t
        };
        let time = config.context_len as usize;
        let (inputs, targets) = (token_ids(4 * time, 3), token_ids(4 * time, 4));

        let mut stopped = trainer();
        let mut heard = Vec::new();
        let flow = stopped
            .step_watched(&inputs, &targets, &mut |pass| {
                heard.push(pass);
                if pass.done == 2 {
                    ControlFlow::Break("asked to stop")
                } else {
                    ControlFlow::Continue(())
                }
            })
            .unwrap();
        assert_eq!(flow, ControlFlow::Break("asked to stop"));
        assert_eq!(heard, [1, 2].map(|done| PassProgress { done, passes: 4 }));
        assert_eq!(stopped.params().unwrap().as_ref(), &values[..]);

        // Its next step is a fresh replica's first, to the bit: the
        // optimizer did not move either.
        let next = stopped.step(&inputs, &targets).unwrap();
        let mut fresh = trainer();
        assert_eq!(fresh.step(&inputs, &targets).unwrap(), next);
        assert_eq!(fresh.params().unwrap(), stopped.params().unwrap());
        assert_ne!(fresh.params().unwrap().as_ref(), &values[..]);
    }
}
