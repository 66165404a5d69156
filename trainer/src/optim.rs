//! Optimizers on flat `f32` buffers in layout order: the inner AdamW each
//! peer runs, and the outer Nesterov step every peer applies identically.
//!
//! Both run on the CPU, element by element in index order, in binary32 — so
//! a peer's bits depend on its inputs only, never on its hardware.
//!
//! ```
//! use p2ptrain_trainer::optim::OuterNesterov;
//!
//! // θ = [1, 1], mean pseudo-gradient Δ = [0.5, -1], lr 0.7, momentum 0.9.
//! let mut outer = OuterNesterov::new(0.7, 0.9, 2);
//! let mut theta = vec![1.0f32, 1.0];
//! outer.step(&mut theta, &[0.5, -1.0]).unwrap();
//! // buf = Δ; update = Δ + 0.9 · buf = 1.9 · Δ; θ −= 0.7 · update.
//! assert_eq!(theta, [1.0 - 0.7 * (0.5 + 0.9 * 0.5), 1.0 - 0.7 * (-1.0 + 0.9 * -1.0)]);
//! ```

use p2ptrain_protocol::InnerOptimizer;

use crate::{Result, TrainerError};

/// AdamW with linear warm-up, cosine decay to 10% of the peak, and
/// global-norm gradient clipping (the reference DiLoCo recipe).
#[derive(Debug, Clone, PartialEq)]
pub struct AdamW {
    settings: InnerOptimizer,
    total_steps: u64,
    step: u64,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl AdamW {
    /// Fresh state for `len` parameters and a schedule of `total_steps`.
    pub fn new(settings: InnerOptimizer, total_steps: u64, len: usize) -> Self {
        Self {
            settings,
            total_steps,
            step: 0,
            m: vec![0.0; len],
            v: vec![0.0; len],
        }
    }

    /// Restores saved state.
    pub fn from_state(
        settings: InnerOptimizer,
        total_steps: u64,
        step: u64,
        m: Vec<f32>,
        v: Vec<f32>,
    ) -> Result<Self> {
        if m.len() != v.len() {
            return Err(TrainerError::Length {
                expected: m.len(),
                found: v.len(),
            });
        }
        Ok(Self {
            settings,
            total_steps,
            step,
            m,
            v,
        })
    }

    /// Steps taken so far.
    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// First and second moments, for saving.
    pub fn moments(&self) -> (&[f32], &[f32]) {
        (&self.m, &self.v)
    }

    /// The learning rate of step `step` (from 0).
    pub fn lr_at(&self, step: u64) -> f32 {
        scheduled_lr(&self.settings, self.total_steps, step)
    }

    /// The settings.
    pub fn settings(&self) -> &InnerOptimizer {
        &self.settings
    }

    /// Steps the schedule spans.
    pub fn total_steps(&self) -> u64 {
        self.total_steps
    }

    /// One update of `params` from `grads`. Returns the gradient norm before
    /// clipping.
    pub fn step(&mut self, params: &mut [f32], grads: &[f32]) -> Result<f32> {
        for len in [params.len(), grads.len()] {
            if len != self.m.len() {
                return Err(TrainerError::Length {
                    expected: self.m.len(),
                    found: len,
                });
            }
        }
        let norm = grads
            .iter()
            .map(|&g| f64::from(g) * f64::from(g))
            .sum::<f64>()
            .sqrt() as f32;
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
        for (((p, &g), m), v) in params
            .iter_mut()
            .zip(grads)
            .zip(&mut self.m)
            .zip(&mut self.v)
        {
            let g = g * coef;
            *m = beta1 * *m + (1.0 - beta1) * g;
            *v = beta2 * *v + (1.0 - beta2) * g * g;
            let denom = v.sqrt() / bias2_sqrt + eps;
            *p = *p * decay - step_size * *m / denom;
        }
        Ok(norm)
    }
}

/// The numbers one AdamW step uses, the same for every entry: the clipping
/// coefficient for a gradient of norm `norm`, the betas and epsilon, and the
/// bias-corrected step size and weight decay of step `step` (from 0).
pub(crate) struct StepScalars {
    pub coef: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub bias2_sqrt: f32,
    pub step_size: f32,
    pub decay: f32,
}

impl StepScalars {
    pub fn new(settings: &InnerOptimizer, total_steps: u64, step: u64, norm: f32) -> Self {
        let clip = settings.grad_clip;
        let coef = if clip > 0.0 && norm > clip {
            clip / (norm + 1e-6)
        } else {
            1.0
        };
        let lr = scheduled_lr(settings, total_steps, step);
        let InnerOptimizer {
            beta1,
            beta2,
            eps,
            weight_decay,
            ..
        } = *settings;
        let t = (step + 1) as i32;
        Self {
            coef,
            beta1,
            beta2,
            eps,
            bias2_sqrt: (1.0 - beta2.powi(t)).sqrt(),
            step_size: lr / (1.0 - beta1.powi(t)),
            decay: 1.0 - lr * weight_decay,
        }
    }
}

/// The learning rate of step `step` (from 0) of a schedule spanning
/// `total_steps`: linear warm-up to `settings.lr`, then cosine decay to 10%.
pub(crate) fn scheduled_lr(settings: &InnerOptimizer, total_steps: u64, step: u64) -> f32 {
    let peak = f64::from(settings.lr);
    let warmup = u64::from(settings.warmup_steps);
    if step < warmup {
        return (peak * (step + 1) as f64 / warmup as f64) as f32;
    }
    let span = total_steps.saturating_sub(warmup).max(1);
    let progress = ((step - warmup) as f64 / span as f64).min(1.0);
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    (peak * (0.1 + 0.9 * cosine)) as f32
}

/// The pseudo-gradient of a round: `θ_round − θ_local`, entry by entry.
pub fn pseudo_gradient(round_start: &[f32], local: &[f32]) -> Result<Vec<f32>> {
    if round_start.len() != local.len() {
        return Err(TrainerError::Length {
            expected: round_start.len(),
            found: local.len(),
        });
    }
    Ok(round_start.iter().zip(local).map(|(a, b)| a - b).collect())
}

/// DiLoCo's outer optimizer: SGD with Nesterov momentum, as PyTorch's
/// `SGD(nesterov=True)` defines it, on the aggregated pseudo-gradient.
#[derive(Debug, Clone, PartialEq)]
pub struct OuterNesterov {
    lr: f32,
    momentum: f32,
    buffer: Vec<f32>,
}

impl OuterNesterov {
    /// Zero momentum for `len` parameters.
    pub fn new(lr: f32, momentum: f32, len: usize) -> Self {
        Self::from_state(lr, momentum, vec![0.0; len])
    }

    /// Restores a saved momentum buffer.
    pub fn from_state(lr: f32, momentum: f32, buffer: Vec<f32>) -> Self {
        Self {
            lr,
            momentum,
            buffer,
        }
    }

    /// The momentum buffer, for saving.
    pub fn momentum_buffer(&self) -> &[f32] {
        &self.buffer
    }

    /// The momentum buffer, taken out without a copy.
    pub fn into_momentum(self) -> Vec<f32> {
        self.buffer
    }

    /// `buf = μ·buf + Δ; θ −= lr·(Δ + μ·buf)`, for each entry in index order.
    pub fn step(&mut self, theta: &mut [f32], delta: &[f32]) -> Result<()> {
        for len in [theta.len(), delta.len()] {
            if len != self.buffer.len() {
                return Err(TrainerError::Length {
                    expected: self.buffer.len(),
                    found: len,
                });
            }
        }
        if delta.iter().any(|d| !d.is_finite()) {
            return Err(TrainerError::NonFinite("outer pseudo-gradient"));
        }
        for ((p, &d), b) in theta.iter_mut().zip(delta).zip(&mut self.buffer) {
            (*p, *b) = nesterov(self.lr, self.momentum, *p, *b, d);
        }
        Ok(())
    }

    /// The same step on a state held elsewhere, a block at a time: writes
    /// the next parameters and momentum for `theta` and `buffer` (a
    /// momentum of this optimizer's settings) into `next_theta` and
    /// `next_buffer`, the same bits [`step`](Self::step) would leave in
    /// place. `self`'s own buffer is not used.
    ///
    /// ```
    /// use p2ptrain_trainer::optim::OuterNesterov;
    ///
    /// let (theta, buffer, delta) = ([1.0, 2.0], [0.5, 0.0], [0.1, -0.2]);
    /// let mut in_place = OuterNesterov::from_state(0.7, 0.9, buffer.to_vec());
    /// let mut stepped = theta.to_vec();
    /// in_place.step(&mut stepped, &delta)?;
    ///
    /// let (mut next_theta, mut next_buffer) = ([0.0; 2], [0.0; 2]);
    /// OuterNesterov::new(0.7, 0.9, 0).step_into((&theta, &buffer), &delta, (&mut next_theta, &mut next_buffer))?;
    /// assert_eq!((next_theta.to_vec(), next_buffer.to_vec()), (stepped, in_place.momentum_buffer().to_vec()));
    /// # Ok::<(), p2ptrain_trainer::TrainerError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`TrainerError::Length`] unless the five buffers are as long as
    /// `theta`, [`TrainerError::NonFinite`] for a NaN or infinite `delta`;
    /// the outputs are untouched then.
    pub fn step_into(
        &self,
        (theta, buffer): (&[f32], &[f32]),
        delta: &[f32],
        (next_theta, next_buffer): (&mut [f32], &mut [f32]),
    ) -> Result<()> {
        for len in [
            buffer.len(),
            delta.len(),
            next_theta.len(),
            next_buffer.len(),
        ] {
            if len != theta.len() {
                return Err(TrainerError::Length {
                    expected: theta.len(),
                    found: len,
                });
            }
        }
        if delta.iter().any(|d| !d.is_finite()) {
            return Err(TrainerError::NonFinite("outer pseudo-gradient"));
        }
        let from = theta.iter().zip(buffer).zip(delta);
        let to = next_theta.iter_mut().zip(next_buffer.iter_mut());
        for (((&p, &b), &d), (next_p, next_b)) in from.zip(to) {
            (*next_p, *next_b) = nesterov(self.lr, self.momentum, p, b, d);
        }
        Ok(())
    }

    /// One entry of [`step_into`](Self::step_into): the next `(θ, buf)` of
    /// an entry at `(theta, buffer)` given its `delta`, the same bits.
    /// Unlike `step_into` it does not check that `delta` is finite.
    ///
    /// ```
    /// use p2ptrain_trainer::optim::OuterNesterov;
    ///
    /// let step = OuterNesterov::new(0.7, 0.9, 0);
    /// let (mut theta, mut buffer) = ([0.0], [0.0]);
    /// step.step_into((&[1.0], &[0.5]), &[0.1], (&mut theta, &mut buffer))?;
    /// assert_eq!(step.step_entry(1.0, 0.5, 0.1), (theta[0], buffer[0]));
    /// # Ok::<(), p2ptrain_trainer::TrainerError>(())
    /// ```
    #[inline]
    pub fn step_entry(&self, theta: f32, buffer: f32, delta: f32) -> (f32, f32) {
        nesterov(self.lr, self.momentum, theta, buffer, delta)
    }
}

/// One entry of the outer step: `buf = μ·buf + Δ; θ −= lr·(Δ + μ·buf)`,
/// each operation rounded on its own. Returns the next `(θ, buf)`.
#[inline]
fn nesterov(lr: f32, momentum: f32, theta: f32, buffer: f32, delta: f32) -> (f32, f32) {
    let buffer = momentum * buffer + delta;
    (theta - lr * (delta + momentum * buffer), buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> InnerOptimizer {
        p2ptrain_protocol::RunManifest::default().inner
    }

    #[test]
    fn schedule_warms_up_then_decays_to_a_tenth() {
        let adam = AdamW::new(settings(), 120, 1);
        assert_eq!(adam.lr_at(0), 1e-3 / 20.0);
        assert_eq!(adam.lr_at(19), 1e-3);
        assert_eq!(adam.lr_at(20), 1e-3);
        assert!((adam.lr_at(70) - 0.55e-3).abs() < 1e-9);
        assert!((adam.lr_at(120) - 1e-4).abs() < 1e-9);
        assert!((adam.lr_at(500) - 1e-4).abs() < 1e-9);
    }

    #[test]
    fn adamw_first_step_matches_hand_computation() {
        let mut s = settings();
        s.warmup_steps = 0;
        s.grad_clip = 0.0;
        let mut adam = AdamW::new(s, 10, 2);
        let mut p = vec![1.0f32, -2.0];
        adam.step(&mut p, &[0.5, -0.25]).unwrap();
        // Step 1: m̂ = g, v̂ = g², update = lr · g / (|g| + eps) ≈ lr · sign(g),
        // after decoupled decay p · (1 − lr · wd).
        let lr = 1e-3f32;
        let (one_minus_b1, one_minus_b2) = (1.0 - 0.9f32, 1.0 - 0.95f32);
        let expect = |p: f32, g: f32| {
            let m = one_minus_b1 * g;
            let v = one_minus_b2 * g * g;
            p * (1.0 - lr * 0.1) - (lr / one_minus_b1) * m / (v.sqrt() / one_minus_b2.sqrt() + 1e-8)
        };
        assert_eq!(p, [expect(1.0, 0.5), expect(-2.0, -0.25)]);
    }

    #[test]
    fn clipping_scales_large_gradients() {
        let mut s = settings();
        s.weight_decay = 0.0;
        let mut clipped = AdamW::new(s, 10, 1);
        let mut p = vec![0.0f32];
        assert_eq!(clipped.step(&mut p, &[10.0]).unwrap(), 10.0);
        assert_eq!(
            clipped.moments().0,
            [(1.0 - 0.9f32) * (10.0 * (1.0 / (10.0 + 1e-6)))]
        );
    }

    #[test]
    fn outer_nesterov_two_steps_by_hand() {
        let mut outer = OuterNesterov::new(0.7, 0.9, 1);
        let mut theta = vec![2.0f32];
        outer.step(&mut theta, &[1.0]).unwrap();
        // buf = 1; θ = 2 − 0.7 · (1 + 0.9) = 0.67
        assert_eq!(theta[0], 2.0 - 0.7 * (1.0 + 0.9 * 1.0));
        let after_first = theta[0];
        outer.step(&mut theta, &[0.5]).unwrap();
        // buf = 0.9 · 1 + 0.5 = 1.4; θ −= 0.7 · (0.5 + 0.9 · 1.4)
        let buf = 0.9f32 * 1.0 + 0.5;
        assert_eq!(theta[0], after_first - 0.7 * (0.5 + 0.9 * buf));
        assert_eq!(outer.momentum_buffer(), [buf]);
    }

    #[test]
    fn refuses_bad_lengths_and_non_finite_updates() {
        let mut outer = OuterNesterov::new(0.7, 0.9, 2);
        assert!(outer.step(&mut [0.0], &[0.0]).is_err());
        assert!(matches!(
            outer.step(&mut [0.0, 0.0], &[f32::NAN, 0.0]),
            Err(TrainerError::NonFinite(_))
        ));
        assert_eq!(outer.momentum_buffer(), [0.0, 0.0]);
        assert!(pseudo_gradient(&[1.0], &[1.0, 2.0]).is_err());
        assert_eq!(
            pseudo_gradient(&[1.0, 2.0], &[0.5, 3.0]).unwrap(),
            [0.5, -1.0]
        );
    }
}
