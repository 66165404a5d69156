//! Scenario files: what to simulate, read from TOML.
//!
//! ```
//! use p2ptrain_netsim::scenario::Scenario;
//!
//! let scenario = Scenario::from_toml(r#"
//!     [run]
//!     rounds = 3
//!     inner_steps = 5
//!     model = "synthetic"
//!     params = 1_000_000
//!     step_ms = 100
//!
//!     [[groups]]
//!     count = 4
//! "#)?;
//! assert_eq!(scenario.peer_count(), 4);
//! assert!(Scenario::from_toml("[run]\nrounds = 3\ncolour = 1\n").unwrap_err().to_string().contains("colour"));
//! # Ok::<(), p2ptrain_netsim::scenario::ScenarioError>(())
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use p2ptrain_protocol::{CompressionSettings, ValueBits};
use serde::Deserialize;

/// Why a scenario cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file cannot be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        error: std::io::Error,
    },
    /// Not valid TOML, or a key is unknown or of the wrong type. (Its
    /// message is the whole report, with the line; it is not also handed
    /// on as a source, which a report would print twice.)
    #[error("{0}")]
    Parse(toml::de::Error),
    /// Valid TOML whose values do not make a scenario.
    #[error("invalid scenario: {0}")]
    Invalid(String),
}

/// A whole scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// The run: rounds, model, compression, round rules.
    pub run: RunSection,
    /// The default link of every peer.
    #[serde(default)]
    pub network: LinkProfile,
    /// Named links that groups may use instead.
    #[serde(default)]
    pub profiles: BTreeMap<String, LinkProfile>,
    /// The peers, by group.
    pub groups: Vec<Group>,
    /// Peers leaving and joining at random each round.
    #[serde(default)]
    pub churn: Churn,
    /// Groups cut off from the rest for a span of rounds.
    #[serde(default)]
    pub partitions: Vec<Partition>,
    /// Malicious peers.
    #[serde(default)]
    pub adversary: Option<Adversary>,
}

/// What each peer trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Real training of the trainer's `tiny` preset on the bundled corpus,
    /// each peer on its own shard.
    Tiny,
    /// A timing model: `params` parameters, `step_ms` per inner step, random
    /// pseudo-gradients.
    Synthetic,
}

/// `[run]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// Rounds to complete.
    pub rounds: u64,
    /// Inner steps per round (H).
    #[serde(default = "defaults::inner_steps")]
    pub inner_steps: u32,
    /// `tiny` or `synthetic`.
    #[serde(default = "defaults::model")]
    pub model: ModelKind,
    /// Parameters of the synthetic model.
    #[serde(default = "defaults::params")]
    pub params: u64,
    /// Virtual milliseconds per inner step at speed 1 (both models).
    #[serde(default = "defaults::step_ms")]
    pub step_ms: u64,
    /// Sequences per inner step (tiny).
    #[serde(default = "defaults::batch_size")]
    pub batch_size: u32,
    /// Entries each synthetic peer really compresses and exchanges; links
    /// are charged for the full `params`.
    #[serde(default = "defaults::proxy_params")]
    pub proxy_params: u32,
    /// Entries per top-k chunk.
    #[serde(default = "defaults::chunk_len")]
    pub chunk_len: u32,
    /// Fraction of each chunk sent.
    #[serde(default = "defaults::density")]
    pub density: f32,
    /// Bits per sent value: 2, 4 or 8.
    #[serde(default = "defaults::value_bits")]
    pub value_bits: u8,
    /// Outer learning rate.
    #[serde(default = "defaults::outer_lr")]
    pub outer_lr: f32,
    /// Outer (Nesterov) momentum.
    #[serde(default = "defaults::outer_momentum")]
    pub outer_momentum: f32,
    /// Inner AdamW learning rate (tiny).
    #[serde(default = "defaults::inner_lr")]
    pub inner_lr: f32,
    /// Round deadline after its first contribution, virtual ms.
    #[serde(default = "defaults::deadline_ms")]
    pub deadline_ms: u64,
    /// Commit window, virtual ms.
    #[serde(default = "defaults::commit_window_ms")]
    pub commit_window_ms: u64,
    /// Most contributions applied per round.
    #[serde(default = "defaults::max_contributors")]
    pub max_contributors: u32,
    /// Fewest contributions for a round to close.
    #[serde(default = "defaults::min_contributors")]
    pub min_contributors: u32,
    /// Train the next round while this one's updates travel.
    #[serde(default)]
    pub overlap: bool,
    /// Also train one replica on the same tokens (tiny) for comparison.
    #[serde(default)]
    pub baseline: bool,
    /// Seed of every random draw (`--seed` overrides it).
    #[serde(default)]
    pub seed: u64,
}

mod defaults {
    use super::ModelKind;
    pub fn inner_steps() -> u32 {
        10
    }
    pub fn model() -> ModelKind {
        ModelKind::Tiny
    }
    pub fn params() -> u64 {
        1_000_000
    }
    pub fn step_ms() -> u64 {
        50
    }
    pub fn batch_size() -> u32 {
        8
    }
    pub fn proxy_params() -> u32 {
        4096
    }
    pub fn chunk_len() -> u32 {
        4096
    }
    pub fn density() -> f32 {
        0.5
    }
    pub fn value_bits() -> u8 {
        8
    }
    pub fn outer_lr() -> f32 {
        0.7
    }
    pub fn outer_momentum() -> f32 {
        0.9
    }
    pub fn inner_lr() -> f32 {
        1e-3
    }
    pub fn deadline_ms() -> u64 {
        30_000
    }
    pub fn commit_window_ms() -> u64 {
        1_000
    }
    pub fn max_contributors() -> u32 {
        64
    }
    pub fn min_contributors() -> u32 {
        1
    }
    pub fn latency_ms() -> f64 {
        10.0
    }
    pub fn bandwidth_mbps() -> f64 {
        1000.0
    }
    pub fn speed() -> f64 {
        1.0
    }
    pub fn factor() -> f32 {
        10.0
    }
}

/// A link: `[network]` and each `[profiles.NAME]`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkProfile {
    /// One-way latency to any peer, ms.
    #[serde(default = "defaults::latency_ms")]
    pub latency_ms: f64,
    /// Upload and download bandwidth, Mbit/s.
    #[serde(default = "defaults::bandwidth_mbps")]
    pub bandwidth_mbps: f64,
    /// Chance that a transmission is lost and sent again, in [0, 1).
    #[serde(default)]
    pub loss: f64,
}

impl Default for LinkProfile {
    fn default() -> Self {
        Self {
            latency_ms: defaults::latency_ms(),
            bandwidth_mbps: defaults::bandwidth_mbps(),
            loss: 0.0,
        }
    }
}

/// `[[groups]]`: peers alike.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// How many.
    pub count: u32,
    /// Compute speed factor: 0.5 trains half as fast.
    #[serde(default = "defaults::speed")]
    pub speed: f64,
    /// A `[profiles]` name; `[network]` when absent.
    #[serde(default)]
    pub profile: Option<String>,
    /// The swarm round at which they join.
    #[serde(default)]
    pub join_round: u64,
    /// The swarm round at which they leave.
    #[serde(default)]
    pub leave_round: Option<u64>,
}

/// `[churn]`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Churn {
    /// Chance per round that a live peer leaves.
    #[serde(default)]
    pub leave_prob: f64,
    /// Chance per round that a peer that left comes back.
    #[serde(default)]
    pub join_prob: f64,
}

/// `[[partitions]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    /// The swarm round at which the cut starts.
    pub round: u64,
    /// The swarm round at which it heals.
    pub heal_round: u64,
    /// Indices of the `[[groups]]` cut off from the others.
    pub groups: Vec<usize>,
}

/// What a malicious peer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttackKind {
    /// A contribution whose signature does not verify.
    BadSignature,
    /// A payload with NaN in it.
    Nan,
    /// An honest-looking update multiplied by `factor`.
    Scaled,
    /// A contribution already applied in an earlier round, sent again.
    Replay,
    /// An update trained from a checkpoint that is not the round's.
    WrongBase,
    /// Announce, then never deliver the payload.
    WithholdPayload,
    /// Random values with an honest update's norm.
    RandomNoise,
    /// Two different honest-looking updates for one round and base, each
    /// announced to half of the peers.
    Equivocate,
}

impl AttackKind {
    /// The kind's name in scenario files and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadSignature => "bad_signature",
            Self::Nan => "nan",
            Self::Scaled => "scaled",
            Self::Replay => "replay",
            Self::WrongBase => "wrong_base",
            Self::WithholdPayload => "withhold_payload",
            Self::RandomNoise => "random_noise",
            Self::Equivocate => "equivocate",
        }
    }
}

/// `[adversary]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adversary {
    /// Fraction of the peers that are malicious, chosen by the seed.
    pub fraction: f64,
    /// The attacks; each malicious peer cycles through them, round by round.
    pub kinds: Vec<AttackKind>,
    /// Multiplier of `scaled`.
    #[serde(default = "defaults::factor")]
    pub factor: f32,
}

impl Scenario {
    /// Reads and checks a scenario file.
    ///
    /// # Errors
    ///
    /// [`ScenarioError::Read`] naming the file, or those of
    /// [`from_toml`](Self::from_toml): the unknown key or the bad value.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            error: source,
        })?;
        Self::from_toml(&text)
    }

    /// Parses and checks a scenario.
    ///
    /// # Errors
    ///
    /// [`ScenarioError::Parse`] for bad TOML or unknown keys,
    /// [`ScenarioError::Invalid`] for values out of range.
    pub fn from_toml(text: &str) -> Result<Self, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(ScenarioError::Parse)?;
        scenario.check()?;
        Ok(scenario)
    }

    /// Peers in all groups.
    pub fn peer_count(&self) -> usize {
        self.groups.iter().map(|g| g.count as usize).sum()
    }

    /// The compression settings of `[run]`.
    ///
    /// # Errors
    ///
    /// [`ScenarioError::Invalid`] for bits other than 2, 4, 8 or settings out
    /// of range.
    pub fn compression(&self) -> Result<CompressionSettings, ScenarioError> {
        let value_bits = ValueBits::try_from(self.run.value_bits)
            .map_err(|e| ScenarioError::Invalid(format!("run.value_bits: {e}")))?;
        let settings = CompressionSettings {
            chunk_len: self.run.chunk_len,
            density: self.run.density,
            value_bits,
        };
        settings
            .validate()
            .map_err(|e| ScenarioError::Invalid(format!("run compression: {e}")))?;
        Ok(settings)
    }

    /// The link profile of group `g`.
    pub fn link_of(&self, g: usize) -> LinkProfile {
        self.groups[g]
            .profile
            .as_ref()
            .and_then(|name| self.profiles.get(name).copied())
            .unwrap_or(self.network)
    }

    fn check(&self) -> Result<(), ScenarioError> {
        let invalid = |what: String| Err(ScenarioError::Invalid(what));
        let run = &self.run;
        if run.rounds == 0 {
            return invalid("run.rounds must be at least 1".into());
        }
        if run.inner_steps == 0 {
            return invalid("run.inner_steps must be at least 1".into());
        }
        if run.model == ModelKind::Synthetic && (run.params == 0 || run.proxy_params == 0) {
            return invalid("run.params and run.proxy_params must be at least 1".into());
        }
        if run.batch_size == 0 {
            return invalid("run.batch_size must be at least 1".into());
        }
        if !(run.outer_lr.is_finite() && run.outer_lr > 0.0) {
            return invalid("run.outer_lr must be a positive number".into());
        }
        if !(0.0..1.0).contains(&run.outer_momentum) {
            return invalid("run.outer_momentum must be in [0, 1)".into());
        }
        if !(run.inner_lr.is_finite() && run.inner_lr > 0.0) {
            return invalid("run.inner_lr must be a positive number".into());
        }
        self.compression()?;
        if self.groups.is_empty() || self.peer_count() == 0 {
            return invalid("at least one [[groups]] with count >= 1 is needed".into());
        }
        for (name, link) in std::iter::once(("network".to_owned(), &self.network)).chain(
            self.profiles
                .iter()
                .map(|(n, l)| (format!("profiles.{n}"), l)),
        ) {
            if !(link.latency_ms.is_finite() && link.latency_ms >= 0.0) {
                return invalid(format!("{name}.latency_ms must be >= 0"));
            }
            if !(link.bandwidth_mbps.is_finite() && link.bandwidth_mbps > 0.0) {
                return invalid(format!("{name}.bandwidth_mbps must be > 0"));
            }
            if !(0.0..1.0).contains(&link.loss) {
                return invalid(format!("{name}.loss must be in [0, 1)"));
            }
        }
        for (i, group) in self.groups.iter().enumerate() {
            if !(group.speed.is_finite() && group.speed > 0.0) {
                return invalid(format!("groups[{i}].speed must be > 0"));
            }
            if let Some(profile) = &group.profile {
                if !self.profiles.contains_key(profile) {
                    return invalid(format!("groups[{i}].profile: no [profiles.{profile}]"));
                }
            }
            if group
                .leave_round
                .is_some_and(|leave| leave <= group.join_round)
            {
                return invalid(format!("groups[{i}].leave_round must be after join_round"));
            }
        }
        for p in [self.churn.leave_prob, self.churn.join_prob] {
            if !(0.0..=1.0).contains(&p) {
                return invalid("churn probabilities must be in [0, 1]".into());
            }
        }
        for (i, cut) in self.partitions.iter().enumerate() {
            if cut.heal_round <= cut.round {
                return invalid(format!("partitions[{i}].heal_round must be after round"));
            }
            if let Some(g) = cut.groups.iter().find(|&&g| g >= self.groups.len()) {
                return invalid(format!("partitions[{i}].groups: no group {g}"));
            }
        }
        if let Some(adversary) = &self.adversary {
            if !(0.0..1.0).contains(&adversary.fraction) {
                return invalid("adversary.fraction must be in [0, 1)".into());
            }
            if adversary.kinds.is_empty() {
                return invalid("adversary.kinds must name at least one attack".into());
            }
            if !(adversary.factor.is_finite() && adversary.factor > 0.0) {
                return invalid("adversary.factor must be > 0".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let parse = Scenario::from_toml("[run]\nrounds = 1\n[[groups]]\ncount = 1\nsped = 2\n")
            .unwrap_err();
        // The whole report is the message; no source repeats it.
        assert!(std::error::Error::source(&parse).is_none());
        let err = parse.to_string();
        assert!(err.contains("sped"), "{err}");
        let err = Scenario::from_toml("[run]\nrounds = 1\nvalue_bits = 3\n[[groups]]\ncount = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("value_bits"), "{err}");
        let err =
            Scenario::from_toml("[run]\nrounds = 1\n[[groups]]\ncount = 1\nprofile = \"x\"\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("profiles.x"), "{err}");
        let err = Scenario::from_toml(
            "[run]\nrounds = 1\n[[groups]]\ncount = 1\n[adversary]\nfraction = 0.2\nkinds = [\"teleport\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("teleport"), "{err}");
    }

    #[test]
    fn shipped_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut count = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            count += 1;
        }
        assert_eq!(count, 8);
    }
}
