//! Model shapes: the presets and the parameter table they imply.

use p2ptrain_protocol::ModelConfig;

use crate::{Result, TrainerError};

/// Named model sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// ~0.44M parameters: 2 layers, width 128, 4 heads, context 64, bytes.
    /// For tests, CPU demos and netsim.
    Tiny,
    /// ~10.8M parameters: 6 layers, width 384, 6 heads, context 256, bytes.
    Small,
    /// GPT-2 (124M): 12 layers, width 768, 12 heads, context 1024, the GPT-2
    /// BPE vocabulary of 50,257.
    Gpt2,
}

impl Preset {
    /// The shape of the preset.
    pub fn config(self) -> ModelConfig {
        let (vocab_size, context_len, n_layer, n_head, d_model) = match self {
            Self::Tiny => (256, 64, 2, 4, 128),
            Self::Small => (256, 256, 6, 6, 384),
            Self::Gpt2 => (50_257, 1024, 12, 12, 768),
        };
        ModelConfig {
            vocab_size,
            context_len,
            n_layer,
            n_head,
            d_model,
        }
    }

    /// All presets, smallest first.
    pub const ALL: [Self; 3] = [Self::Tiny, Self::Small, Self::Gpt2];

    /// The preset's name as the command line spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Tiny => "tiny",
            Self::Small => "small",
            Self::Gpt2 => "gpt2",
        }
    }
}

impl std::str::FromStr for Preset {
    type Err = TrainerError;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                TrainerError::Config(format!("unknown preset {s:?} (tiny, small, gpt2)"))
            })
    }
}

/// Checks that a configuration describes a buildable model.
pub fn validate(config: &ModelConfig) -> Result<()> {
    let fail = |why: &str| Err(TrainerError::Config(why.to_owned()));
    if config.vocab_size == 0 || config.context_len == 0 || config.n_layer == 0 {
        return fail("vocab_size, context_len and n_layer must be at least 1");
    }
    if config.n_head == 0 || !config.d_model.is_multiple_of(config.n_head) {
        return fail("d_model must be a positive multiple of n_head");
    }
    Ok(())
}
