//! A batch too large for one pass on the host, cut into passes of whole
//! sequences that each fit a budget of activation memory.

use std::ops::ControlFlow;

use super::backward;
use crate::fused;
use crate::model::Gpt;
use crate::{Result, TrainerError};

/// How far an inner step that runs in passes has got (see
/// [`LocalTrainer::step_watched`](super::LocalTrainer::step_watched)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassProgress {
    /// Passes done.
    pub done: u32,
    /// Passes the step takes.
    pub passes: u32,
}

/// Bytes of activations one training pass on the host may hold (see
/// [`fused::pass_bytes_per_token`]): a batch that needs more is cut into
/// passes of whole sequences. A 124M-parameter model's batch of 32
/// sequences of 1024 tokens would hold about 45 GB at once; in passes of
/// one sequence, 1.4 GB.
pub(super) const PASS_BYTES: usize = 2 << 30;

/// The loss on one batch and its flat gradient on the host, in passes of
/// equal size that each hold at most `budget` bytes (or one sequence): the
/// mean of their losses and gradients, which is the batch's up to rounding
/// (each pass's loss is the mean over its tokens, and every pass has as
/// many). `on_pass` hears of each pass done when there are several, and
/// ends the work when it breaks.
pub(super) fn flat_gradient_within<B>(
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

#[cfg(test)]
pub(super) mod tests {
    use candle_core::Device;

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

    pub(in crate::train) fn token_ids(count: usize, salt: u32) -> Vec<u32> {
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
}
