//! The run manifest: everything peers must agree on before round 0.

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::{CompressionSettings, Digest, PeerKey};

mod limits;

pub use limits::InvalidManifest;

/// Shape of the model every replica trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Tokens in the vocabulary (256 for bytes).
    pub vocab_size: u32,
    /// Longest context in tokens.
    pub context_len: u32,
    /// Transformer blocks.
    pub n_layer: u32,
    /// Attention heads per block.
    pub n_head: u32,
    /// Width of the residual stream.
    pub d_model: u32,
}

/// The inner optimizer each peer runs locally: AdamW with warm-up, cosine
/// decay and gradient clipping.
#[derive(Debug, Clone, Copy, PartialEq, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InnerOptimizer {
    /// Peak learning rate.
    pub lr: f32,
    /// Steps of linear warm-up.
    pub warmup_steps: u32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Denominator epsilon.
    pub eps: f32,
    /// Global gradient-norm clip; 0 disables.
    pub grad_clip: f32,
    /// Sequences per inner step.
    pub batch_size: u32,
}

/// The outer optimizer every peer applies identically (DiLoCo).
#[derive(Debug, Clone, Copy, PartialEq, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OuterOptimizer {
    /// Outer learning rate.
    pub lr: f32,
    /// Momentum.
    pub momentum: f32,
    /// Nesterov momentum rather than heavy-ball.
    pub nesterov: bool,
}

/// When a round closes and how many contributions it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundRules {
    /// Time after the first contribution of a round before it closes without
    /// stragglers.
    pub deadline_ms: u64,
    /// Time to collect other peers' commits after one's own.
    pub commit_window_ms: u64,
    /// Fewest contributions for the round to apply an outer step.
    pub min_contributors: u32,
    /// Most contributions applied per round; above it a subset is chosen from
    /// the round's base hash.
    pub max_contributors: u32,
}

/// The run: model, optimizers, compression and round rules, fixed at genesis.
///
/// Its id is the blake3 of its encoding, and every contribution names it.
/// Any well-formed manifest decodes; [`RunManifest::validate`] says whether
/// a node can run it.
///
/// ```
/// use p2ptrain_protocol::RunManifest;
///
/// let manifest = RunManifest::default();
/// let id = manifest.id().unwrap();
/// let mut other = manifest.clone();
/// other.inner_steps += 1;
/// assert_ne!(other.id().unwrap(), id);
/// ```
#[derive(Debug, Clone, PartialEq, Encode, Decode, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunManifest {
    /// A name for people; not interpreted.
    pub name: String,
    /// Seed of the genesis initialization and data order.
    pub seed: u64,
    /// The model.
    pub model: ModelConfig,
    /// Inner steps per round (H).
    pub inner_steps: u32,
    /// Inner optimizer.
    pub inner: InnerOptimizer,
    /// Outer optimizer.
    pub outer: OuterOptimizer,
    /// How pseudo-gradients are compressed.
    pub compression: CompressionSettings,
    /// Round closing rules.
    pub rounds: RoundRules,
    /// When present, only these peers may contribute.
    pub allow_list: Option<Vec<PeerKey>>,
    /// The checkpoint of round 0.
    pub genesis: Digest,
}

crate::impl_message!(RunManifest, max_len = 1 << 20);

impl RunManifest {
    /// The run id: blake3 of the manifest's encoding.
    pub fn id(&self) -> Result<Digest, CodecError> {
        codec::encode(self).map(|bytes| Digest::of(&bytes))
    }

    /// Whether `peer` may contribute to this run.
    pub fn allows(&self, peer: &PeerKey) -> bool {
        self.allow_list
            .as_ref()
            .is_none_or(|allowed| allowed.contains(peer))
    }
}

impl Default for RunManifest {
    /// The bundled defaults: the tiny byte-level model, H = 50, AdamW 1e-3,
    /// Nesterov 0.7 / 0.9, top-1% of 4096-chunks at 8 bits. `genesis` is
    /// all zeros until a genesis checkpoint is written.
    fn default() -> Self {
        Self {
            name: "p2ptrain-tiny".to_owned(),
            seed: 0,
            model: ModelConfig {
                vocab_size: 256,
                context_len: 64,
                n_layer: 2,
                n_head: 4,
                d_model: 128,
            },
            inner_steps: 50,
            inner: InnerOptimizer {
                lr: 1e-3,
                warmup_steps: 20,
                weight_decay: 0.1,
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                grad_clip: 1.0,
                batch_size: 32,
            },
            outer: OuterOptimizer {
                lr: 0.7,
                momentum: 0.9,
                nesterov: true,
            },
            compression: CompressionSettings::default(),
            rounds: RoundRules {
                deadline_ms: 30_000,
                commit_window_ms: 2_000,
                min_contributors: 1,
                max_contributors: 64,
            },
            allow_list: None,
            genesis: Digest::from_bytes([0; 32]),
        }
    }
}
