//! What a simulated peer computes: its replica's pseudo-gradient (real
//! training of the `tiny` preset, or a synthetic one), the outer step, and
//! the checkpoints they produce.

use std::collections::HashMap;
use std::sync::Arc;

use p2ptrain_kernels::KernelError;
use p2ptrain_node::chain::{ChainError, ChainState, StepInput};
use p2ptrain_node::engine::Accepted;
use p2ptrain_protocol::{Digest, InnerOptimizer, ModelConfig, OuterOptimizer};
use p2ptrain_trainer::{device, Corpus, LocalTrainer, ParamLayout, Sampler, TrainerError};

use crate::rng::Rng;

/// Why a computation failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Training or evaluation failed.
    #[error("training: {0}")]
    Trainer(#[from] TrainerError),
    /// Compression, decoding or aggregation failed.
    #[error("kernels: {0}")]
    Kernel(#[from] KernelError),
    /// The data cannot feed the model.
    #[error("data: {0}")]
    Data(#[from] p2ptrain_trainer::DataError),
    /// A payload the engine accepted does not decode.
    #[error("payload: {0}")]
    Payload(#[from] p2ptrain_protocol::CodecError),
    /// The outer step failed.
    #[error("outer step: {0}")]
    Chain(#[from] ChainError),
    /// The outer step names a base the store does not hold.
    #[error("no checkpoint {0}")]
    MissingBase(Digest),
}

/// A checkpoint: the parameters and the outer momentum, the node's
/// [`ChainState`] (its hash is the one commits name).
pub type Checkpoint = ChainState;

/// Every checkpoint produced, by hash, and the outer steps already computed:
/// the step is a pure function of the base and the contributions, so peers
/// on one chain share the work (the engines still decide everything).
#[derive(Debug)]
pub struct Store {
    checkpoints: HashMap<Digest, Arc<Checkpoint>>,
    steps: HashMap<(Digest, Digest), Digest>,
    outer: OuterOptimizer,
}

impl Store {
    /// A store holding `genesis`; returns it and the genesis hash.
    pub fn new(genesis: Checkpoint, outer: OuterOptimizer) -> (Self, Digest) {
        let hash = genesis.hash();
        let mut checkpoints = HashMap::new();
        checkpoints.insert(hash, Arc::new(genesis));
        let store = Self {
            checkpoints,
            steps: HashMap::new(),
            outer,
        };
        (store, hash)
    }

    /// The checkpoint with this hash, if any peer ever produced it.
    pub fn get(&self, hash: &Digest) -> Option<Arc<Checkpoint>> {
        self.checkpoints.get(hash).cloned()
    }

    /// The outer step from `base` with `contributions` (ascending ids): the
    /// token-weighted mean of their payloads, then Nesterov momentum.
    ///
    /// # Errors
    ///
    /// [`ModelError`] for a missing base or an undecodable payload.
    pub fn apply(
        &mut self,
        base: &Digest,
        contributions: &[Accepted],
    ) -> Result<Digest, ModelError> {
        let mut key_bytes = Vec::with_capacity(32 * contributions.len());
        for c in contributions {
            key_bytes.extend_from_slice(c.id.as_bytes());
        }
        let key = (*base, Digest::of(&key_bytes));
        if let Some(result) = self.steps.get(&key) {
            return Ok(*result);
        }
        let start = self.get(base).ok_or(ModelError::MissingBase(*base))?;
        let inputs: Vec<StepInput<'_>> = contributions.iter().map(StepInput::from).collect();
        let (next, hash) = start.outer_step(&inputs, &self.outer)?;
        self.checkpoints
            .entry(hash)
            .or_insert_with(|| Arc::new(next));
        self.steps.insert(key, hash);
        Ok(hash)
    }
}

/// The tiny preset's model configuration.
pub fn tiny_config() -> ModelConfig {
    p2ptrain_trainer::Preset::Tiny.config()
}

/// What a peer trains.
#[derive(Debug)]
pub enum Replica {
    /// A real `tiny` replica with its own data shard.
    Tiny(Box<TinyReplica>),
    /// Random pseudo-gradients: a direction every peer shares each round
    /// plus noise of its own.
    Synthetic {
        /// This peer's noise.
        rng: Rng,
        /// The run's seed (the shared direction).
        seed: u64,
    },
}

/// A real replica: the trainer and its data.
pub struct TinyReplica {
    trainer: LocalTrainer,
    sampler: Sampler,
    context: usize,
}

impl std::fmt::Debug for TinyReplica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TinyReplica")
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

impl Replica {
    /// A real replica on shard `shard` of `shards` of the bundled corpus.
    ///
    /// # Errors
    ///
    /// [`ModelError`] if the model cannot be built or the shard is empty.
    pub fn tiny(
        corpus: &Corpus,
        shard: (usize, usize),
        genesis: &[f32],
        inner: InnerOptimizer,
        total_steps: u64,
        seed: u64,
    ) -> Result<Self, ModelError> {
        let config = tiny_config();
        let tokens = corpus.shard(shard.0, shard.1)?.to_vec();
        let trainer = LocalTrainer::new(
            config,
            genesis.to_vec(),
            inner,
            total_steps,
            &device::parse("cpu")?,
        )?;
        Ok(Self::Tiny(Box::new(TinyReplica {
            trainer,
            sampler: Sampler::new(tokens, seed),
            context: config.context_len as usize,
        })))
    }

    /// The pseudo-gradient of one session of `steps` inner steps from
    /// `start` (`start − trained`), for `round`.
    ///
    /// # Errors
    ///
    /// [`ModelError`] when training fails.
    pub fn session(
        &mut self,
        start: &[f32],
        round: u64,
        steps: u32,
    ) -> Result<Vec<f32>, ModelError> {
        match self {
            Self::Tiny(replica) => {
                let TinyReplica {
                    trainer,
                    sampler,
                    context,
                } = replica.as_mut();
                trainer.set_params(start)?;
                let batch = trainer.batch_size();
                for _ in 0..steps {
                    let b = sampler.next_batch(batch, *context)?;
                    trainer.step(&b.inputs, &b.targets)?;
                }
                Ok(start
                    .iter()
                    .zip(trainer.params()?.iter())
                    .map(|(s, t)| s - t)
                    .collect())
            }
            Self::Synthetic { rng, seed } => {
                let mut shared = Rng::derive(*seed, 1_000_000 + round);
                let mut delta = vec![0.0; start.len()];
                shared.fill_normal(&mut delta, 1e-3);
                for d in &mut delta {
                    *d += 5e-4 * rng.normal();
                }
                Ok(delta)
            }
        }
    }
}

/// Validation loss of checkpoints, on fixed batches.
pub struct Evaluator {
    trainer: LocalTrainer,
    batches: Vec<p2ptrain_trainer::Batch>,
    cache: HashMap<Digest, f32>,
}

impl std::fmt::Debug for Evaluator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evaluator")
            .field("batches", &self.batches.len())
            .finish_non_exhaustive()
    }
}

impl Evaluator {
    /// An evaluator on `count` validation batches of the corpus.
    ///
    /// # Errors
    ///
    /// [`ModelError`] if the model cannot be built or the validation part is
    /// too short.
    pub fn new(
        corpus: &Corpus,
        genesis: &[f32],
        inner: InnerOptimizer,
        count: usize,
    ) -> Result<Self, ModelError> {
        let config = tiny_config();
        let batches = corpus.validation_batches(count, 16, config.context_len as usize, 7)?;
        let trainer =
            LocalTrainer::new(config, genesis.to_vec(), inner, 1, &device::parse("cpu")?)?;
        Ok(Self {
            trainer,
            batches,
            cache: HashMap::new(),
        })
    }

    /// The mean validation loss of `checkpoint`.
    ///
    /// # Errors
    ///
    /// [`ModelError`] when evaluation fails.
    pub fn loss(&mut self, hash: Digest, checkpoint: &Checkpoint) -> Result<f32, ModelError> {
        if let Some(loss) = self.cache.get(&hash) {
            return Ok(*loss);
        }
        self.trainer.set_params(&checkpoint.params)?;
        let batches = self
            .batches
            .iter()
            .map(|b| (b.inputs.as_slice(), b.targets.as_slice()));
        let loss = self.trainer.evaluate(batches, 16)?;
        self.cache.insert(hash, loss);
        Ok(loss)
    }
}

/// One replica trained alone on the same tokens the swarm saw: `peers ×
/// batch` sequences per step, `steps` steps, over the whole training part.
///
/// # Errors
///
/// [`ModelError`] when training fails.
pub fn baseline(
    corpus: &Corpus,
    genesis: &[f32],
    mut inner: InnerOptimizer,
    peers: usize,
    steps: u64,
    seed: u64,
    evaluator: &mut Evaluator,
) -> Result<f32, ModelError> {
    let config = tiny_config();
    inner.batch_size = inner.batch_size.saturating_mul(peers as u32);
    let mut trainer = LocalTrainer::new(
        config,
        genesis.to_vec(),
        inner,
        steps,
        &device::parse("cpu")?,
    )?;
    let mut sampler = Sampler::new(corpus.train().to_vec(), seed);
    for _ in 0..steps {
        let b = sampler.next_batch(inner.batch_size as usize, config.context_len as usize)?;
        trainer.step(&b.inputs, &b.targets)?;
    }
    let checkpoint = Checkpoint {
        params: trainer.params()?.to_vec(),
        momentum: Vec::new(),
    };
    evaluator.loss(checkpoint.hash(), &checkpoint)
}

/// The genesis parameters of a run: the tiny preset's initialization from
/// `seed`, or zeros of the synthetic proxy's length.
pub fn genesis_params(tiny: bool, proxy_len: usize, seed: u64) -> Vec<f32> {
    if tiny {
        ParamLayout::gpt2(&tiny_config()).initial_values(seed)
    } else {
        vec![0.0; proxy_len]
    }
}
