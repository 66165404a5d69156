//! A node's own replica: inner training on its data, the pseudo-gradient,
//! compression with error feedback.

use std::sync::Arc;

use p2ptrain_kernels::{compress, decompress_into, Payload};
use p2ptrain_protocol::RunManifest;
use p2ptrain_trainer::{device, LocalTrainer, Sampler};

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
}

/// The replica a node trains: its trainer, its data, its residual.
pub struct Replica {
    trainer: LocalTrainer,
    sampler: Sampler,
    manifest: RunManifest,
    residual: Vec<f32>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("params", &self.residual.len())
            .finish_non_exhaustive()
    }
}

impl Replica {
    /// A replica of `manifest`'s model at `params`, training on `tokens`
    /// (one per byte), its batches drawn with `seed`.
    ///
    /// # Errors
    ///
    /// [`ReplicaError`] if the model cannot be built.
    pub fn new(
        manifest: &RunManifest,
        params: Vec<f32>,
        tokens: Vec<u8>,
        seed: u64,
        total_steps: u64,
    ) -> Result<Self, ReplicaError> {
        let residual = vec![0.0; params.len()];
        let trainer = LocalTrainer::new(
            manifest.model,
            params,
            manifest.inner,
            total_steps,
            &device::parse("cpu")?,
        )?;
        Ok(Self {
            trainer,
            sampler: Sampler::new(tokens, seed),
            manifest: manifest.clone(),
            residual,
        })
    }

    /// One session: `inner_steps` steps from `start`, then the compressed
    /// pseudo-gradient `start − trained` (plus the residual).
    ///
    /// # Errors
    ///
    /// [`ReplicaError`] when training or compression fails.
    pub fn session(&mut self, start: &[f32]) -> Result<LocalUpdate, ReplicaError> {
        self.trainer.set_params(start)?;
        let batch = self.trainer.batch_size();
        let context = self.manifest.model.context_len as usize;
        for _ in 0..self.manifest.inner_steps {
            let b = self.sampler.next_batch(batch, context)?;
            self.trainer.step(&b.inputs, &b.targets)?;
        }
        let delta: Vec<f32> = start
            .iter()
            .zip(self.trainer.params()?.iter())
            .map(|(s, t)| s - t)
            .collect();
        let payload = compress(&delta, &mut self.residual, &self.manifest.compression)?;
        let tokens = u64::from(self.manifest.inner_steps) * (batch * context) as u64;
        Ok(LocalUpdate {
            payload: Arc::from(payload.encode()?),
            tokens,
        })
    }

    /// Puts an update that was not applied back into the residual.
    ///
    /// # Errors
    ///
    /// [`ReplicaError`] if the payload does not decode or fit.
    pub fn return_to_residual(&mut self, payload: &[u8]) -> Result<(), ReplicaError> {
        let payload = Payload::decode(payload)?;
        decompress_into(&payload, 1.0, &mut self.residual)?;
        Ok(())
    }
}
