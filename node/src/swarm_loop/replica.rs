//! A node's own replica: inner training on its data, the pseudo-gradient,
//! compression with error feedback.

use std::ops::ControlFlow;
use std::sync::Arc;

use p2ptrain_kernels::Payload;
use p2ptrain_protocol::RunManifest;
use p2ptrain_trainer::device::{Device, ErrorFeedback};
use p2ptrain_trainer::{LocalTrainer, Sampler};

use super::worker::{StepProgress, Worker};
use crate::engine::LocalUpdate;

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The trainer failed.
    #[error("training: {0}")]
    Trainer(#[from] p2ptrain_trainer::TrainerError),
    /// The data cannot feed the model.
    #[error("data: {0}")]
    Data(#[from] p2ptrain_trainer::DataError),
    /// Compression failed.
    #[error("compression: {0}")]
    Kernel(#[from] p2ptrain_kernels::KernelError),
    /// Encoding the payload failed.
    #[error("encoding: {0}")]
    Codec(#[from] p2ptrain_protocol::CodecError),
    /// The node is stopping: the session ended early, without an update.
    #[error("stopped")]
    Stopped,
}

/// The replica a node trains: its trainer, its data, its residual (kept on
/// the device it trains on).
pub struct Replica {
    trainer: LocalTrainer,
    sampler: Sampler,
    manifest: RunManifest,
    feedback: ErrorFeedback,
    /// What the residual keeps from one session to the next.
    residual_decay: f32,
    /// Mean training loss of the last session.
    last_loss: Option<f32>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("device", self.trainer.device())
            .finish_non_exhaustive()
    }
}

impl Replica {
    /// A replica of `manifest`'s model at `params` on `device`, training on
    /// `tokens` (one per byte), its batches drawn with `seed`; after each
    /// update it sends, its error-feedback residual is multiplied by
    /// `residual_decay` (see [`RESIDUAL_DECAY`](p2ptrain_trainer::device::RESIDUAL_DECAY)).
    ///
    /// # Errors
    ///
    /// [`ReplicaError`] if the model or its residual cannot be built there,
    /// `residual_decay` is not in `[0, 1]`, or `tokens` are fewer than one
    /// window of the model's context plus its target
    /// ([`DataError::TooShort`](p2ptrain_trainer::DataError::TooShort)).
    pub fn new(
        manifest: &RunManifest,
        params: Vec<f32>,
        tokens: Vec<u8>,
        seed: u64,
        total_steps: u64,
        device: &Device,
        residual_decay: f32,
    ) -> Result<Self, ReplicaError> {
        p2ptrain_kernels::validate_residual_decay(residual_decay)?;
        Sampler::check_fits(tokens.len(), manifest.model.context_len as usize)?;
        let feedback = ErrorFeedback::new(device, params.len())?;
        let trainer =
            LocalTrainer::new(manifest.model, params, manifest.inner, total_steps, device)?;
        Ok(Self {
            trainer,
            sampler: Sampler::new(tokens, seed),
            manifest: manifest.clone(),
            feedback,
            residual_decay,
            last_loss: None,
        })
    }
}

impl Worker for Replica {
    /// One session: `inner_steps` steps from `start`, then the compressed
    /// pseudo-gradient `start − trained` (plus the residual), and the
    /// residual's decay.
    fn session(
        &mut self,
        start: &[f32],
        progress: &mut dyn FnMut(StepProgress) -> ControlFlow<()>,
    ) -> Result<LocalUpdate, ReplicaError> {
        self.trainer.set_params(start)?;
        let batch = self.trainer.batch_size();
        let context = self.manifest.model.context_len as usize;
        let steps = self.manifest.inner_steps;
        let (mut total, mut loss) = (0.0f64, None);
        for step in 1..=steps {
            let b = self.sampler.next_batch(batch, context)?;
            let mut on_pass = |pass| {
                progress(StepProgress {
                    step: step - 1,
                    steps,
                    pass: Some(pass),
                    loss,
                })
            };
            let ControlFlow::Continue(report) =
                self.trainer
                    .step_watched(&b.inputs, &b.targets, &mut on_pass)?
            else {
                return Err(ReplicaError::Stopped);
            };
            total += f64::from(report.loss);
            loss = Some(report.loss);
            let done = StepProgress {
                step,
                steps,
                pass: None,
                loss,
            };
            if progress(done).is_break() {
                return Err(ReplicaError::Stopped);
            }
        }
        self.last_loss = Some((total / f64::from(self.manifest.inner_steps.max(1))) as f32);
        let payload = self
            .trainer
            .compress_update(&mut self.feedback, &self.manifest.compression)?;
        self.feedback.decay(self.residual_decay)?;
        let tokens = u64::from(self.manifest.inner_steps) * (batch * context) as u64;
        Ok(LocalUpdate {
            payload: Arc::from(payload.encode()?),
            tokens,
        })
    }

    /// Mean training loss (nats per byte) over the last session's steps.
    fn last_loss(&self) -> Option<f32> {
        self.last_loss
    }

    /// Puts an update that was not applied back into the residual.
    fn return_to_residual(&mut self, payload: &[u8]) -> Result<(), ReplicaError> {
        let payload = Payload::decode(payload)?;
        self.feedback.add_back(&payload)?;
        Ok(())
    }

    fn residual(&self) -> Result<Option<Vec<f32>>, ReplicaError> {
        Ok(Some(self.feedback.values()?))
    }

    fn restore_residual(&mut self, values: &[f32]) -> Result<(), ReplicaError> {
        let device = self.trainer.device().clone();
        self.feedback = ErrorFeedback::from_values(&device, values)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use p2ptrain_trainer::{DataError, ParamLayout};

    use super::*;

    fn replica(tokens: usize) -> Result<Replica, ReplicaError> {
        let manifest = RunManifest::default();
        let params = ParamLayout::gpt2(&manifest.model).initial_values(1);
        Replica::new(
            &manifest,
            params,
            vec![b'a'; tokens],
            7,
            100,
            &Device::Cpu,
            0.5,
        )
    }

    #[test]
    fn data_shorter_than_one_window_is_refused_at_once() {
        let needed = RunManifest::default().model.context_len as usize + 1;
        let refused = replica(needed - 1).expect_err("one token short of a window");
        assert!(
            matches!(
                refused,
                ReplicaError::Data(DataError::TooShort { needed: n, found })
                    if n == needed && found == needed - 1
            ),
            "{refused}"
        );
        assert!(replica(needed).is_ok());
    }

    #[test]
    fn a_session_in_passes_reports_each_pass_and_stops_between_them() {
        let mut replica = replica(4096).unwrap();
        replica.manifest.inner_steps = 2;
        let batch = replica.trainer.batch_size() as u32;
        replica.trainer.set_pass_bytes(1);
        let start = replica.trainer.params().unwrap().into_owned();

        let mut heard = Vec::new();
        let update = replica.session(&start, &mut |p| {
            heard.push(p);
            ControlFlow::Continue(())
        });
        assert!(update.is_ok());
        let passes: Vec<_> = heard
            .iter()
            .map(|p| (p.step, p.pass.map(|p| p.done)))
            .collect();
        let expected: Vec<_> = (0..2u32)
            .flat_map(|step| {
                (1..=batch)
                    .map(move |done| (step, Some(done)))
                    .chain([(step + 1, None)])
            })
            .collect();
        assert_eq!(passes, expected);
        assert!(heard
            .iter()
            .all(|p| p.steps == 2 && p.pass.is_none_or(|p| p.passes == batch)));
        // The loss is the last finished step's.
        assert_eq!(heard[0].loss, None);
        let first = heard[batch as usize].loss;
        assert!(first.is_some());
        assert_eq!(heard[batch as usize + 1].loss, first);

        // Stopped in its first step's second pass: no update, the
        // residual as it was.
        let residual = replica.residual().unwrap();
        let stopped = replica.session(&start, &mut |p| {
            if p.pass.is_some_and(|p| p.done == 2) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        assert!(matches!(stopped, Err(ReplicaError::Stopped)));
        assert_eq!(replica.residual().unwrap(), residual);
    }
}
