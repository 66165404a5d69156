//! What makes a run manifest one a node can run: every field in its range.
//!
//! Decoding takes any well-formed manifest, so that a record can always be
//! read back; [`RunManifest::validate`] is the check a node makes before it
//! writes a run, trains on one or fetches one's genesis checkpoint.

use crate::{InvalidSettings, ModelConfig, RunManifest};

/// Why a run manifest cannot be run. Fields are named by their path in the
/// manifest (`inner.batch_size`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidManifest {
    /// A count that must be at least 1 is 0.
    #[error("{field} must be at least 1")]
    Zero {
        /// The field.
        field: &'static str,
    },
    /// The residual stream does not split evenly between the heads.
    #[error("model.d_model ({d_model}) must be a multiple of model.n_head ({n_head})")]
    Heads {
        /// The width.
        d_model: u32,
        /// The heads.
        n_head: u32,
    },
    /// The model is larger than a run may be.
    #[error(
        "the model has {0} parameters; a run holds at most {max}",
        max = RunManifest::MAX_PARAMETERS
    )]
    Parameters(u64),
    /// An inner step's batch is larger than a run may ask for.
    #[error(
        "a batch of {batch_size} sequences of {context_len} tokens is more than {max} tokens",
        max = RunManifest::MAX_BATCH_TOKENS
    )]
    BatchTokens {
        /// Sequences per inner step.
        batch_size: u32,
        /// Tokens per sequence.
        context_len: u32,
    },
    /// A wait longer than a day.
    #[error("{field} must be at most {max} ms (a day), not {value}", max = RunManifest::MAX_WAIT_MS)]
    Wait {
        /// The field.
        field: &'static str,
        /// Its value, in milliseconds.
        value: u64,
    },
    /// The contributors' bounds are out of order or too large.
    #[error(
        "rounds.min_contributors ({min}) must be at most rounds.max_contributors ({max}), \
         and that at most {limit}",
        limit = RunManifest::MAX_CONTRIBUTORS
    )]
    Contributors {
        /// Fewest contributions a round applies.
        min: u32,
        /// Most contributions a round applies.
        max: u32,
    },
    /// An optimizer setting outside its range.
    #[error("{field} must be {range}, not {value}")]
    Setting {
        /// The field.
        field: &'static str,
        /// Its value.
        value: f32,
        /// The values allowed.
        range: &'static str,
    },
    /// The compression settings are out of range.
    #[error("compression: {0}")]
    Compression(#[from] InvalidSettings),
    /// An allow-list that names no peer: nobody could contribute.
    #[error("allow_list is empty: no peer could contribute")]
    EmptyAllowList,
}

impl RunManifest {
    /// The most parameters a run's model may have: 4 Gi, a checkpoint of
    /// 32 GiB with its momentum.
    pub const MAX_PARAMETERS: u64 = 1 << 32;
    /// The most tokens an inner step's batch may hold (16 Mi).
    pub const MAX_BATCH_TOKENS: u64 = 1 << 24;
    /// The longest a round waits for stragglers or commits: a day.
    pub const MAX_WAIT_MS: u64 = 24 * 60 * 60 * 1000;
    /// The most contributions a round may apply: their ids fit a commit,
    /// and the signed contributions a round record.
    pub const MAX_CONTRIBUTORS: u32 = 1 << 14;

    /// Checks that a node can run this manifest: the model's shape, the
    /// batch, the optimizers, the compression and the round rules are each
    /// in range.
    ///
    /// ```
    /// use p2ptrain_protocol::{InvalidManifest, RunManifest};
    ///
    /// let mut manifest = RunManifest::default();
    /// assert_eq!(manifest.validate(), Ok(()));
    /// manifest.inner_steps = 0;
    /// assert_eq!(manifest.validate(), Err(InvalidManifest::Zero { field: "inner_steps" }));
    /// ```
    ///
    /// # Errors
    ///
    /// [`InvalidManifest`] naming the first field out of range.
    pub fn validate(&self) -> Result<(), InvalidManifest> {
        validate_model(&self.model)?;
        at_least_one("inner_steps", self.inner_steps)?;
        at_least_one("inner.batch_size", self.inner.batch_size)?;
        let batch_tokens = u64::from(self.inner.batch_size) * u64::from(self.model.context_len);
        if batch_tokens > Self::MAX_BATCH_TOKENS {
            return Err(InvalidManifest::BatchTokens {
                batch_size: self.inner.batch_size,
                context_len: self.model.context_len,
            });
        }
        validate_optimizers(self)?;
        self.compression.validate()?;
        validate_rounds(self)?;
        if self.allow_list.as_ref().is_some_and(Vec::is_empty) {
            return Err(InvalidManifest::EmptyAllowList);
        }
        Ok(())
    }
}

impl ModelConfig {
    /// The number of parameters of this GPT-2 shape (the output head tied
    /// to the token embedding), saturating at `u64::MAX`.
    ///
    /// ```
    /// use p2ptrain_protocol::RunManifest;
    ///
    /// assert_eq!(RunManifest::default().model.parameter_count(), 437_760);
    /// ```
    pub fn parameter_count(&self) -> u64 {
        let d = u128::from(self.d_model);
        let embeddings = (u128::from(self.vocab_size) + u128::from(self.context_len)) * d;
        // Per block: two layer norms (4d), attention (3d² + 3d, d² + d),
        // the MLP (4d² + 4d, 4d² + d).
        let block = 12 * d * d + 13 * d;
        let total = embeddings + u128::from(self.n_layer) * block + 2 * d;
        u64::try_from(total).unwrap_or(u64::MAX)
    }
}

fn validate_model(model: &ModelConfig) -> Result<(), InvalidManifest> {
    at_least_one("model.vocab_size", model.vocab_size)?;
    at_least_one("model.context_len", model.context_len)?;
    at_least_one("model.n_layer", model.n_layer)?;
    at_least_one("model.n_head", model.n_head)?;
    at_least_one("model.d_model", model.d_model)?;
    if !model.d_model.is_multiple_of(model.n_head) {
        return Err(InvalidManifest::Heads {
            d_model: model.d_model,
            n_head: model.n_head,
        });
    }
    let parameters = model.parameter_count();
    if parameters > RunManifest::MAX_PARAMETERS {
        return Err(InvalidManifest::Parameters(parameters));
    }
    Ok(())
}

fn validate_optimizers(manifest: &RunManifest) -> Result<(), InvalidManifest> {
    let inner = &manifest.inner;
    let outer = &manifest.outer;
    positive("inner.lr", inner.lr)?;
    non_negative("inner.weight_decay", inner.weight_decay)?;
    below_one("inner.beta1", inner.beta1)?;
    below_one("inner.beta2", inner.beta2)?;
    positive("inner.eps", inner.eps)?;
    non_negative("inner.grad_clip", inner.grad_clip)?;
    positive("outer.lr", outer.lr)?;
    below_one("outer.momentum", outer.momentum)
}

fn validate_rounds(manifest: &RunManifest) -> Result<(), InvalidManifest> {
    let rounds = &manifest.rounds;
    for (field, value) in [
        ("rounds.deadline_ms", rounds.deadline_ms),
        ("rounds.commit_window_ms", rounds.commit_window_ms),
    ] {
        if value > RunManifest::MAX_WAIT_MS {
            return Err(InvalidManifest::Wait { field, value });
        }
    }
    at_least_one("rounds.min_contributors", rounds.min_contributors)?;
    if rounds.min_contributors > rounds.max_contributors
        || rounds.max_contributors > RunManifest::MAX_CONTRIBUTORS
    {
        return Err(InvalidManifest::Contributors {
            min: rounds.min_contributors,
            max: rounds.max_contributors,
        });
    }
    Ok(())
}

fn at_least_one(field: &'static str, value: u32) -> Result<(), InvalidManifest> {
    if value == 0 {
        return Err(InvalidManifest::Zero { field });
    }
    Ok(())
}

fn in_range(
    field: &'static str,
    value: f32,
    range: &'static str,
    holds: impl Fn(f32) -> bool,
) -> Result<(), InvalidManifest> {
    if value.is_finite() && holds(value) {
        Ok(())
    } else {
        Err(InvalidManifest::Setting {
            field,
            value,
            range,
        })
    }
}

fn positive(field: &'static str, value: f32) -> Result<(), InvalidManifest> {
    in_range(field, value, "a number above 0", |v| v > 0.0)
}

fn non_negative(field: &'static str, value: f32) -> Result<(), InvalidManifest> {
    in_range(field, value, "a number at least 0", |v| v >= 0.0)
}

fn below_one(field: &'static str, value: f32) -> Result<(), InvalidManifest> {
    in_range(field, value, "in [0, 1)", |v| (0.0..1.0).contains(&v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        codec, Commit, CompressionSettings, Contribution, Digest, Message, PayloadRef, PeerKey,
        RoundRecord, Signed, SigningKey,
    };

    fn with(change: impl FnOnce(&mut RunManifest)) -> Result<(), InvalidManifest> {
        let mut manifest = RunManifest::default();
        change(&mut manifest);
        manifest.validate()
    }

    #[test]
    fn counts_of_zero_are_refused_by_name() {
        let zero = |field| Err(InvalidManifest::Zero { field });
        assert_eq!(with(|m| m.inner_steps = 0), zero("inner_steps"));
        assert_eq!(with(|m| m.inner.batch_size = 0), zero("inner.batch_size"));
        assert_eq!(with(|m| m.model.n_head = 0), zero("model.n_head"));
        assert_eq!(with(|m| m.model.context_len = 0), zero("model.context_len"));
        assert_eq!(
            with(|m| m.rounds.min_contributors = 0),
            zero("rounds.min_contributors")
        );
    }

    #[test]
    fn the_model_must_split_into_heads_and_fit() {
        assert_eq!(
            with(|m| m.model.n_head = 3),
            Err(InvalidManifest::Heads {
                d_model: 128,
                n_head: 3
            })
        );
        // GPT-2 XL fits; a model past 4 Gi parameters does not.
        let xl = |m: &mut RunManifest| {
            m.model = ModelConfig {
                vocab_size: 50_257,
                context_len: 1024,
                n_layer: 48,
                n_head: 25,
                d_model: 1600,
            };
        };
        assert_eq!(with(xl), Ok(()));
        let huge = with(|m| {
            m.model.n_layer = u32::MAX;
            m.model.d_model = u32::MAX - u32::MAX % 4;
        });
        assert_eq!(huge, Err(InvalidManifest::Parameters(u64::MAX)));
    }

    #[test]
    fn gpt2_small_has_its_known_parameter_count() {
        let gpt2 = ModelConfig {
            vocab_size: 50_257,
            context_len: 1024,
            n_layer: 12,
            n_head: 12,
            d_model: 768,
        };
        assert_eq!(gpt2.parameter_count(), 124_439_808);
    }

    #[test]
    fn a_batch_past_the_limit_is_refused() {
        let limit = RunManifest::MAX_BATCH_TOKENS as u32 / 64;
        assert_eq!(with(|m| m.inner.batch_size = limit), Ok(()));
        assert_eq!(
            with(|m| m.inner.batch_size = limit + 1),
            Err(InvalidManifest::BatchTokens {
                batch_size: limit + 1,
                context_len: 64
            })
        );
    }

    #[test]
    fn optimizer_settings_out_of_range_are_refused() {
        let setting = |m: Result<(), InvalidManifest>| match m {
            Err(InvalidManifest::Setting { field, .. }) => Some(field),
            _ => None,
        };
        assert_eq!(setting(with(|m| m.inner.lr = 0.0)), Some("inner.lr"));
        assert_eq!(setting(with(|m| m.inner.lr = f32::NAN)), Some("inner.lr"));
        assert_eq!(setting(with(|m| m.inner.beta2 = 1.0)), Some("inner.beta2"));
        assert_eq!(setting(with(|m| m.inner.eps = -1e-8)), Some("inner.eps"));
        assert_eq!(
            setting(with(|m| m.inner.weight_decay = f32::INFINITY)),
            Some("inner.weight_decay")
        );
        assert_eq!(
            setting(with(|m| m.outer.momentum = -0.1)),
            Some("outer.momentum")
        );
        assert_eq!(with(|m| m.inner.grad_clip = 0.0), Ok(()));
        assert_eq!(with(|m| m.outer.momentum = 0.0), Ok(()));
    }

    #[test]
    fn round_rules_out_of_range_are_refused() {
        let day = RunManifest::MAX_WAIT_MS;
        assert_eq!(with(|m| m.rounds.deadline_ms = day), Ok(()));
        assert_eq!(
            with(|m| m.rounds.commit_window_ms = day + 1),
            Err(InvalidManifest::Wait {
                field: "rounds.commit_window_ms",
                value: day + 1
            })
        );
        assert_eq!(
            with(|m| m.rounds.min_contributors = 65),
            Err(InvalidManifest::Contributors { min: 65, max: 64 })
        );
        let most = RunManifest::MAX_CONTRIBUTORS;
        assert_eq!(with(|m| m.rounds.max_contributors = most), Ok(()));
        assert!(with(|m| m.rounds.max_contributors = most + 1).is_err());
        assert_eq!(
            with(|m| m.allow_list = Some(Vec::new())),
            Err(InvalidManifest::EmptyAllowList)
        );
        assert_eq!(
            with(|m| m.compression.density = 2.0),
            Err(InvalidManifest::Compression(InvalidSettings::Density(2.0)))
        );
    }

    /// The most contributions a round may apply fit a commit's id set and
    /// a round record's signed contributions, with room to spare.
    #[test]
    fn the_most_contributors_fit_the_messages_that_carry_them(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let key = SigningKey::from_bytes(&[9; 32]);
        let contribution = Contribution {
            run: Digest::of(b"run"),
            round: u64::MAX,
            base: Digest::of(b"base"),
            author: PeerKey::from(&key),
            tokens: u64::MAX,
            payload: PayloadRef {
                hash: Digest::of(b"payload"),
                len: u64::MAX,
            },
            compression: CompressionSettings::default(),
        };
        let signed = codec::encode(&Signed::sign(&contribution, &key)?)?.len();
        let most = RunManifest::MAX_CONTRIBUTORS as usize;
        assert!(most * signed < RoundRecord::MAX_LEN / 2);
        assert!(most * 32 <= Commit::MAX_LEN / 2);
        Ok(())
    }
}
