//! A peer's local training: the model, its inner optimizer, and the steps
//! between two outer rounds.

use std::borrow::Cow;
use std::convert::Infallible;
use std::ops::ControlFlow;

use candle_core::{Device, Tensor};
use p2ptrain_kernels::Payload;
use p2ptrain_protocol::{CompressionSettings, InnerOptimizer, ModelConfig};

use crate::device::{with_host_values, ErrorFeedback};
use crate::fused;
use crate::model::Gpt;
use crate::optim::{pseudo_gradient, AdamW};
use crate::tensor_adamw::TensorAdamW;
use crate::{Result, TrainerError};

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

/// How far an inner step that runs in passes has got (see
/// [`LocalTrainer::step_watched`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassProgress {
    /// Passes done.
    pub done: u32,
    /// Passes the step takes.
    pub passes: u32,
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

/// Bytes of activations one training pass on the host may hold (see
/// [`fused::pass_bytes_per_token`]): a batch that needs more is cut into
/// passes of whole sequences. A 124M-parameter model's batch of 32
/// sequences of 1024 tokens would hold about 45 GB at once; in passes of
/// one sequence, 1.4 GB.
const PASS_BYTES: usize = 2 << 30;

/// The loss on one batch and its flat gradient on the host, in passes of
/// equal size that each hold at most `budget` bytes (or one sequence): the
/// mean of their losses and gradients, which is the batch's up to rounding
/// (each pass's loss is the mean over its tokens, and every pass has as
/// many). `on_pass` hears of each pass done when there are several, and
/// ends the work when it breaks.
fn flat_gradient_within<B>(
    model: &Gpt,
    batch_size: usize,
    (inputs, targets): (&[u32], &[u32]),
    budget: usize,
    on_pass: &mut impl FnMut(PassProgress) -> ControlFlow<B>,
) -> Result<ControlFlow<B, (f32, Vec<f32>)>> {
    let time = inputs.len() / batch_size.max(1);
    let per_sequence = fused::pass_bytes_per_token(model.config(), time) * time;
    let sequences = sequences_per_pass(per_sequence, batch_size, budget);
    let whole = inputs.len() == batch_size * time && targets.len() == inputs.len();
    if sequences >= batch_size || !whole {
        return pass_gradient(model, batch_size, inputs, targets).map(ControlFlow::Continue);
    }
    let tokens = sequences * time;
    let passes = batch_size / sequences;
    let (mut loss_sum, mut sum) = (0.0f64, Vec::new());
    let chunks = inputs.chunks(tokens).zip(targets.chunks(tokens));
    for (done, (inputs, targets)) in (1..).zip(chunks) {
        let (loss, grads) = pass_gradient(model, sequences, inputs, targets)?;
        loss_sum += f64::from(loss);
        if sum.is_empty() {
            sum = grads;
        } else {
            sum.iter_mut().zip(&grads).for_each(|(s, g)| *s += g);
        }
        let progress = PassProgress {
            done,
            passes: u32::try_from(passes).unwrap_or(u32::MAX),
        };
        if let ControlFlow::Break(b) = on_pass(progress) {
            return Ok(ControlFlow::Break(b));
        }
    }
    let scale = 1.0 / passes as f32;
    sum.iter_mut().for_each(|s| *s *= scale);
    Ok(ControlFlow::Continue((
        (loss_sum / passes as f64) as f32,
        sum,
    )))
}

/// Sequences per pass: the most that fit `budget` bytes at
/// `bytes_per_sequence` and divide `batch` evenly (passes of one size
/// reuse one set of buffers); at least one.
fn sequences_per_pass(bytes_per_sequence: usize, batch: usize, budget: usize) -> usize {
    let fit = budget
        .checked_div(bytes_per_sequence)
        .unwrap_or(usize::MAX)
        .clamp(1, batch.max(1));
    (1..=fit)
        .rev()
        .find(|n| batch.is_multiple_of(*n))
        .unwrap_or(1)
}

/// The loss on `batch_size` sequences and their flat gradient on the
/// host, in one pass: the fused CPU pass where it runs, else candle's
/// autograd.
fn pass_gradient(
    model: &Gpt,
    batch_size: usize,
    inputs: &[u32],
    targets: &[u32],
) -> Result<(f32, Vec<f32>)> {
    if let Some((loss, grads)) = model.fused_loss_and_gradient(inputs, targets, batch_size)? {
        if !loss.is_finite() {
            return Err(TrainerError::NonFinite("loss"));
        }
        return Ok((loss, grads));
    }
    let (loss, grads) = backward(model, batch_size, inputs, targets)?;
    let mut flat = vec![0.0f32; model.layout().len()];
    for (var, spec) in model.vars().iter().zip(model.layout().specs()) {
        if let Some(grad) = grads.get(var.as_tensor()) {
            let values = grad.flatten_all()?.to_vec1::<f32>()?;
            flat[spec.range.clone()].copy_from_slice(&values);
        }
    }
    Ok((loss, flat))
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
    use super::*;
    use crate::{ParamLayout, Preset};

    #[test]
    fn a_pass_takes_the_most_sequences_that_fit_and_divide_the_batch() {
        assert_eq!(sequences_per_pass(10, 32, 1000), 32);
        assert_eq!(sequences_per_pass(10, 32, 35), 2);
        assert_eq!(sequences_per_pass(10, 30, 35), 3);
        assert_eq!(sequences_per_pass(10, 7, 60), 1);
        // One sequence even when it does not fit; no batch, one pass.
        assert_eq!(sequences_per_pass(10, 32, 5), 1);
        assert_eq!(sequences_per_pass(10, 0, 100), 1);
        assert_eq!(sequences_per_pass(0, 4, 0), 4);
    }

    /// A batch's loss and flat gradient.
    type Gradient = (f32, Vec<f32>);

    /// The gradient through `flat_gradient_within`, and the passes it
    /// reported.
    fn gradient_in_passes(
        model: &Gpt,
        batch: usize,
        ids: (&[u32], &[u32]),
        budget: usize,
    ) -> Result<(Gradient, Vec<PassProgress>)> {
        let mut passes = Vec::new();
        let flow = flat_gradient_within(model, batch, ids, budget, &mut |pass| {
            passes.push(pass);
            ControlFlow::<()>::Continue(())
        })?;
        match flow {
            ControlFlow::Continue(gradient) => Ok((gradient, passes)),
            ControlFlow::Break(()) => panic!("nothing breaks"),
        }
    }

    fn token_ids(count: usize, salt: u32) -> Vec<u32> {
        (0..count as u32)
            .map(|i| (i * 29 + salt * 11 + i / 7) % 256)
            .collect()
    }

    #[test]
    fn a_batch_cut_into_passes_has_the_whole_batch_loss_and_gradient() {
        let config = Preset::Tiny.config();
        let values = ParamLayout::gpt2(&config).initial_values(5);
        let model = Gpt::new(config, &values, &Device::Cpu).unwrap();
        let (batch, time) = (8, 32);
        let (inputs, targets) = (token_ids(batch * time, 1), token_ids(batch * time, 2));
        let ids = (&inputs[..], &targets[..]);
        let (whole, none) = gradient_in_passes(&model, batch, ids, usize::MAX).unwrap();
        // One pass is not reported.
        assert!(none.is_empty());
        // Room for three sequences: passes of two.
        let per_sequence = fused::pass_bytes_per_token(&config, time) * time;
        let (cut, passes) = gradient_in_passes(&model, batch, ids, 3 * per_sequence).unwrap();
        let done: Vec<_> = passes.iter().map(|p| (p.done, p.passes)).collect();
        assert_eq!(done, [(1, 4), (2, 4), (3, 4), (4, 4)]);
        assert!((whole.0 - cut.0).abs() < 1e-5, "{} vs {}", whole.0, cut.0);
        let scale = whole.1.iter().fold(0.0f32, |m, g| m.max(g.abs()));
        for (a, b) in whole.1.iter().zip(&cut.1) {
            assert!((a - b).abs() <= 1e-5 * scale, "{a} vs {b}");
        }
        // The passes are not the whole batch's pass done again.
        assert_ne!(whole.1, cut.1);
        // A batch that does not split into whole sequences is refused.
        let short = (&inputs[1..], &targets[1..]);
        assert!(gradient_in_passes(&model, 3, short, 1).is_err());
    }

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
