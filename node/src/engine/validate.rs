//! What a contribution must pass before its update is applied, and the
//! reasons one is dropped.

use std::collections::BTreeMap;
use std::fmt;

use p2ptrain_kernels::{Payload, NON_FINITE_SCALE};
use p2ptrain_protocol::codec::CodecError;
use p2ptrain_protocol::{Commit, CompressionSettings, Contribution, Signed, SignedError};

/// Why a contribution was dropped. Every drop is counted by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// The signature does not verify, or the signer is not the author.
    BadSignature,
    /// For another run.
    WrongRun,
    /// For the current round but trained from another checkpoint.
    WrongBase,
    /// The author is not on the run's allow-list or this peer's own, or was
    /// caught equivocating.
    NotAllowed,
    /// Compression settings or buffer length differ from the run manifest.
    SettingsMismatch,
    /// Claims no tokens, or more than a round can train.
    TokensOutOfRange,
    /// The payload's blake3 or length is not what the contribution names.
    PayloadMismatch,
    /// The payload bytes are not a valid payload.
    MalformedPayload,
    /// The payload holds NaN or infinite values.
    NonFinite,
    /// The update's norm is far above the round's median.
    NormOutlier,
    /// A contribution already applied in an earlier round, sent again.
    Replay,
    /// A second, different contribution from one author in one round.
    Duplicate,
    /// Announced, but its author never delivered the payload.
    WithheldPayload,
}

impl RejectReason {
    /// Every reason, in a fixed order.
    pub const ALL: [RejectReason; 13] = [
        Self::BadSignature,
        Self::WrongRun,
        Self::WrongBase,
        Self::NotAllowed,
        Self::SettingsMismatch,
        Self::TokensOutOfRange,
        Self::PayloadMismatch,
        Self::MalformedPayload,
        Self::NonFinite,
        Self::NormOutlier,
        Self::Replay,
        Self::Duplicate,
        Self::WithheldPayload,
    ];

    /// The reason's name in reports: `bad_signature`, `wrong_base`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadSignature => "bad_signature",
            Self::WrongRun => "wrong_run",
            Self::WrongBase => "wrong_base",
            Self::NotAllowed => "not_allowed",
            Self::SettingsMismatch => "settings_mismatch",
            Self::TokensOutOfRange => "tokens_out_of_range",
            Self::PayloadMismatch => "payload_mismatch",
            Self::MalformedPayload => "malformed_payload",
            Self::NonFinite => "non_finite",
            Self::NormOutlier => "norm_outlier",
            Self::Replay => "replay",
            Self::Duplicate => "duplicate",
            Self::WithheldPayload => "withheld_payload",
        }
    }
}

impl RejectReason {
    /// What the reason means, for people reading a node's log.
    pub fn explain(self) -> &'static str {
        match self {
            Self::BadSignature => "its signature does not verify",
            Self::WrongRun => "it names another run",
            Self::WrongBase => "trained from a checkpoint that no valid commit names",
            Self::NotAllowed => "its author is off the allow-list, or was caught equivocating",
            Self::SettingsMismatch => "its compression settings or length differ from the run's",
            Self::TokensOutOfRange => "it claims no tokens, or more than a round trains",
            Self::PayloadMismatch => "the bytes served are not the payload it names",
            Self::MalformedPayload => "its payload does not decode",
            Self::NonFinite => "its update holds NaN or infinite values",
            Self::NormOutlier => "its update's norm is over 3 times the round's median",
            Self::Replay => "it was applied in an earlier round",
            Self::Duplicate => {
                "its author sent a different one this round: a faulty peer, or two nodes \
                 sharing one key"
            }
            Self::WithheldPayload => "its author never delivered the payload",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counts of dropped contributions by reason.
pub type RejectCounts = BTreeMap<RejectReason, u64>;

/// What a valid payload tells the round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PayloadFacts {
    /// Entries of the dense buffer it updates.
    pub len: usize,
    /// How it was compressed.
    pub settings: CompressionSettings,
    /// L2 norm of the update it carries.
    pub norm: f64,
}

/// The pure checks the engine needs: signatures and payload decoding.
///
/// [`Verify`] does the work every time. A host that runs many engines in one
/// process (the simulator) may answer from a cache, since every answer is a
/// function of the bytes alone.
pub trait Checker {
    /// Verifies a signed contribution and decodes it.
    fn contribution(&self, signed: &Signed<Contribution>) -> Result<Contribution, SignedError>;
    /// Verifies a signed commit and decodes it.
    fn commit(&self, signed: &Signed<Commit>) -> Result<Commit, SignedError>;
    /// Decodes payload bytes and measures the update.
    fn payload(&self, bytes: &[u8]) -> Result<PayloadFacts, RejectReason>;
}

/// The [`Checker`] that verifies and decodes on every call.
#[derive(Debug, Clone, Copy, Default)]
pub struct Verify;

impl Checker for Verify {
    fn contribution(&self, signed: &Signed<Contribution>) -> Result<Contribution, SignedError> {
        signed.verify()
    }

    fn commit(&self, signed: &Signed<Commit>) -> Result<Commit, SignedError> {
        signed.verify()
    }

    fn payload(&self, bytes: &[u8]) -> Result<PayloadFacts, RejectReason> {
        payload_facts(bytes)
    }
}

/// Decodes `bytes` as a payload and measures its update's L2 norm.
///
/// # Errors
///
/// [`RejectReason::NonFinite`] when a chunk's scale is NaN or infinite,
/// [`RejectReason::MalformedPayload`] for any other invalid encoding.
pub fn payload_facts(bytes: &[u8]) -> Result<PayloadFacts, RejectReason> {
    let payload = Payload::decode(bytes).map_err(|error| match error {
        CodecError::Malformed(bincode::error::DecodeError::Other(rule))
            if rule == NON_FINITE_SCALE =>
        {
            RejectReason::NonFinite
        }
        _ => RejectReason::MalformedPayload,
    })?;
    let squares: f64 = payload
        .kept_values()
        .map(|v| f64::from(v) * f64::from(v))
        .sum();
    let norm = squares.sqrt();
    if !norm.is_finite() {
        return Err(RejectReason::NonFinite);
    }
    Ok(PayloadFacts {
        len: payload.len(),
        settings: payload.settings(),
        norm,
    })
}

/// How far above the median norm an update may be: beyond
/// `NORM_LIMIT × median` it is dropped as an outlier.
pub const NORM_LIMIT: f64 = 3.0;

/// Fewest updates in a set before the norm rule applies: a median of one or
/// two says little.
pub const NORM_RULE_MIN_SET: usize = 3;

/// The ids among `norms` that the norm rule keeps: all when the set is
/// smaller than [`NORM_RULE_MIN_SET`], otherwise those at most
/// [`NORM_LIMIT`] times the median (the lower middle for an even count).
/// A function of the set alone, so every peer holding the same set agrees.
pub fn within_norm_limit<K: Copy>(norms: &[(K, f64)]) -> (Vec<K>, Vec<K>) {
    if norms.len() < NORM_RULE_MIN_SET {
        return (norms.iter().map(|&(k, _)| k).collect(), Vec::new());
    }
    let mut sorted: Vec<f64> = norms.iter().map(|&(_, n)| n).collect();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[(sorted.len() - 1) / 2];
    let limit = NORM_LIMIT * median;
    let (kept, dropped): (Vec<_>, Vec<_>) = norms.iter().partition(|&&(_, n)| n <= limit);
    (
        kept.into_iter().map(|(k, _)| k).collect(),
        dropped.into_iter().map(|(k, _)| k).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2ptrain_kernels::compress;

    #[test]
    fn the_norm_rule_drops_only_far_outliers() {
        let norms = [(1, 1.0), (2, 1.2), (3, 0.9), (4, 2.9), (5, 10.0)];
        let (kept, dropped) = within_norm_limit(&norms);
        assert_eq!(kept, vec![1, 2, 3, 4]);
        assert_eq!(dropped, vec![5]);
        let (kept, dropped) = within_norm_limit(&[(1, 1.0), (2, 100.0)]);
        assert_eq!((kept, dropped), (vec![1, 2], vec![]));
    }

    #[test]
    fn payload_facts_measure_the_update_and_name_bad_bytes() {
        let settings = CompressionSettings::default();
        let delta = vec![3.0f32; 4096];
        let payload = compress(&delta, &mut vec![0.0; 4096], &settings).unwrap();
        let bytes = payload.encode().unwrap();
        let facts = payload_facts(&bytes).unwrap();
        assert_eq!(facts.len, 4096);
        assert_eq!(facts.settings, settings);
        let kept = settings.k_for(4096) as f64;
        assert!((facts.norm - 3.0 * kept.sqrt()).abs() < 0.05 * facts.norm);

        assert_eq!(
            payload_facts(&bytes[..bytes.len() - 1]),
            Err(RejectReason::MalformedPayload)
        );
        // The first scale follows the version (1 byte), the length 4096 (3),
        // the settings (3 + 4 + 1) and the chunk count (1).
        let mut nan = bytes.clone();
        nan[13..17].copy_from_slice(&f32::NAN.to_le_bytes());
        assert_eq!(payload_facts(&nan), Err(RejectReason::NonFinite));
    }
}
