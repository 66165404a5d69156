//! Malicious contributions, one kind per attack.

use std::sync::Arc;

use p2ptrain_kernels::{compress, decompress_into, KernelError, Payload};
use p2ptrain_protocol::{
    CodecError, CompressionSettings, Contribution, Digest, PayloadRef, PeerKey, Signed, SigningKey,
};

use crate::rng::Rng;
use crate::scenario::AttackKind;

/// What an attack sends: the contribution to announce and the payload it
/// serves (`None`: it serves nothing).
#[derive(Debug, Clone)]
pub struct Attack {
    /// Announced to everyone (to half of the peers, with a twin).
    pub contribution: Signed<Contribution>,
    /// Served on request.
    pub payload: Option<Arc<[u8]>>,
    /// `equivocate`'s second contribution, for the same round and base,
    /// and its payload: announced to the other half of the peers.
    pub twin: Option<(Signed<Contribution>, Arc<[u8]>)>,
}

impl Attack {
    fn single(contribution: Signed<Contribution>, payload: Option<Arc<[u8]>>) -> Self {
        Self {
            contribution,
            payload,
            twin: None,
        }
    }
}

/// Where the attacker stands this round.
#[derive(Debug)]
pub struct Context<'a> {
    /// The attacker's key.
    pub key: &'a SigningKey,
    /// The run id.
    pub run: Digest,
    /// The round.
    pub round: u64,
    /// The round's base checkpoint.
    pub base: Digest,
    /// Tokens an honest peer claims.
    pub tokens: u64,
    /// The run's compression.
    pub settings: CompressionSettings,
    /// Entries of the dense buffer.
    pub len: usize,
    /// An honest payload of this round, if the attacker has seen one: the
    /// model for honest-looking updates.
    pub honest: Option<&'a [u8]>,
    /// A contribution applied in an earlier round, if any.
    pub applied_before: Option<&'a Signed<Contribution>>,
    /// `scaled`'s multiplier.
    pub factor: f32,
}

/// Why an attack could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CraftError {
    /// Compressing the forged update failed.
    #[error("kernels: {0}")]
    Kernel(#[from] KernelError),
    /// Encoding the forged payload or contribution failed.
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
}

/// Builds the attack of `kind`; `None` when it has nothing to send (a replay
/// before anything was applied).
///
/// # Errors
///
/// [`CraftError`] if compressing or encoding the forgery fails.
pub fn craft(
    kind: AttackKind,
    cx: &Context<'_>,
    rng: &mut Rng,
) -> Result<Option<Attack>, CraftError> {
    let honest = honest_dense(cx)?;
    let attack = match kind {
        AttackKind::Replay => {
            return Ok(cx
                .applied_before
                .map(|signed| Attack::single(signed.clone(), None)))
        }
        AttackKind::BadSignature => {
            let (signed, payload) = sign(cx, cx.base, encode(&honest, cx)?)?;
            let mut signature = *signed.signature();
            signature[0] ^= 0x5a;
            let forged = Signed::from_parts(signed.body().to_vec(), signed.signer(), signature);
            Attack::single(forged, Some(payload))
        }
        AttackKind::Nan => {
            let mut bytes = encode(&honest, cx)?;
            let at = first_scale_offset(cx.len, &cx.settings);
            bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
            let (contribution, payload) = sign(cx, cx.base, bytes)?;
            Attack::single(contribution, Some(payload))
        }
        AttackKind::Scaled => {
            let scaled: Vec<f32> = honest.iter().map(|v| v * cx.factor).collect();
            let (contribution, payload) = sign(cx, cx.base, encode(&scaled, cx)?)?;
            Attack::single(contribution, Some(payload))
        }
        AttackKind::WrongBase => {
            let base = Digest::of(&rng.next_u64().to_le_bytes());
            let (contribution, payload) = sign(cx, base, encode(&honest, cx)?)?;
            Attack::single(contribution, Some(payload))
        }
        AttackKind::WithholdPayload => {
            let (contribution, _) = sign(cx, cx.base, encode(&honest, cx)?)?;
            Attack::single(contribution, None)
        }
        AttackKind::Equivocate => {
            let (contribution, payload) = sign(cx, cx.base, encode(&honest, cx)?)?;
            // Half the update for half the tokens: a different
            // contribution even when there is no honest update to copy.
            let half: Vec<f32> = honest.iter().map(|v| 0.5 * v).collect();
            let halved = Context {
                tokens: (cx.tokens / 2).max(1),
                ..*cx
            };
            let twin = sign(&halved, cx.base, encode(&half, cx)?)?;
            Attack {
                contribution,
                payload: Some(payload),
                twin: Some(twin),
            }
        }
        AttackKind::RandomNoise => {
            let target = norm(&encode_dense(&honest, cx)?);
            let mut noise = vec![0.0f32; cx.len];
            rng.fill_normal(&mut noise, 1.0);
            // Match the honest update's norm after compression.
            let got = norm(&encode_dense(&noise, cx)?);
            if got > 0.0 {
                let s = (target / got) as f32;
                noise.iter_mut().for_each(|v| *v *= s);
            }
            let (contribution, payload) = sign(cx, cx.base, encode(&noise, cx)?)?;
            Attack::single(contribution, Some(payload))
        }
    };
    Ok(Some(attack))
}

/// The dense update of the honest payload (zeros without one).
fn honest_dense(cx: &Context<'_>) -> Result<Vec<f32>, KernelError> {
    let mut dense = vec![0.0f32; cx.len];
    if let Some(bytes) = cx.honest {
        if let Ok(payload) = Payload::decode(bytes) {
            if payload.len() == cx.len {
                decompress_into(&payload, 1.0, &mut dense)?;
            }
        }
    }
    Ok(dense)
}

fn encode(dense: &[f32], cx: &Context<'_>) -> Result<Vec<u8>, CraftError> {
    let payload = compress(dense, &mut vec![0.0; dense.len()], &cx.settings)?;
    Ok(payload.encode()?)
}

/// `dense` after a round trip through compression.
fn encode_dense(dense: &[f32], cx: &Context<'_>) -> Result<Vec<f32>, KernelError> {
    let payload = compress(dense, &mut vec![0.0; dense.len()], &cx.settings)?;
    let mut out = vec![0.0f32; dense.len()];
    decompress_into(&payload, 1.0, &mut out)?;
    Ok(out)
}

fn norm(v: &[f32]) -> f64 {
    v.iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt()
}

fn sign(
    cx: &Context<'_>,
    base: Digest,
    bytes: Vec<u8>,
) -> Result<(Signed<Contribution>, Arc<[u8]>), CodecError> {
    let contribution = Contribution {
        run: cx.run,
        round: cx.round,
        base,
        author: PeerKey::from(cx.key),
        tokens: cx.tokens,
        payload: PayloadRef {
            hash: Digest::of(&bytes),
            len: bytes.len() as u64,
        },
        compression: cx.settings,
    };
    let signed = Signed::sign(&contribution, cx.key)?;
    Ok((signed, Arc::from(bytes)))
}

/// Bytes of bincode's variable-length integer encoding of `v`.
fn varint_len(v: u64) -> usize {
    match v {
        0..=250 => 1,
        251..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// Where the first chunk scale sits in an encoded payload: after the format
/// version, the buffer length, the settings and the scale count.
fn first_scale_offset(len: usize, settings: &CompressionSettings) -> usize {
    let chunks = len.div_ceil(settings.chunk_len as usize);
    1 + varint_len(len as u64)
        + varint_len(u64::from(settings.chunk_len))
        + 4
        + 1
        + varint_len(chunks as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2ptrain_node::engine::{validate::payload_facts, RejectReason};

    #[test]
    fn each_attack_breaks_the_rule_it_targets() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let settings = CompressionSettings::default();
        let honest = encode(
            &vec![0.01; 8192],
            &Context {
                key: &key,
                run: Digest::of(b"run"),
                round: 1,
                base: Digest::of(b"base"),
                tokens: 10,
                settings,
                len: 8192,
                honest: None,
                applied_before: None,
                factor: 10.0,
            },
        )
        .unwrap();
        let cx = Context {
            key: &key,
            run: Digest::of(b"run"),
            round: 1,
            base: Digest::of(b"base"),
            tokens: 10,
            settings,
            len: 8192,
            honest: Some(&honest),
            applied_before: None,
            factor: 10.0,
        };
        let mut rng = Rng::new(1);
        let nan = craft(AttackKind::Nan, &cx, &mut rng).unwrap().unwrap();
        assert_eq!(
            payload_facts(&nan.payload.unwrap()),
            Err(RejectReason::NonFinite)
        );
        let bad = craft(AttackKind::BadSignature, &cx, &mut rng)
            .unwrap()
            .unwrap();
        assert!(bad.contribution.verify().is_err());
        let scaled = craft(AttackKind::Scaled, &cx, &mut rng).unwrap().unwrap();
        let honest_norm = payload_facts(&honest).unwrap().norm;
        let scaled_norm = payload_facts(&scaled.payload.unwrap()).unwrap().norm;
        assert!((scaled_norm / honest_norm - 10.0).abs() < 0.5);
        let noise = craft(AttackKind::RandomNoise, &cx, &mut rng)
            .unwrap()
            .unwrap();
        let noise_norm = payload_facts(&noise.payload.unwrap()).unwrap().norm;
        assert!(
            (noise_norm / honest_norm - 1.0).abs() < 0.1,
            "{noise_norm} vs {honest_norm}"
        );
        let withheld = craft(AttackKind::WithholdPayload, &cx, &mut rng)
            .unwrap()
            .unwrap();
        assert!(withheld.payload.is_none());
        assert!(craft(AttackKind::Replay, &cx, &mut rng).unwrap().is_none());
        let wrong = craft(AttackKind::WrongBase, &cx, &mut rng)
            .unwrap()
            .unwrap();
        assert_ne!(wrong.contribution.verify().unwrap().base, cx.base);
        let two = craft(AttackKind::Equivocate, &cx, &mut rng)
            .unwrap()
            .unwrap();
        let (twin, _) = two.twin.unwrap();
        let (a, b) = (two.contribution.verify().unwrap(), twin.verify().unwrap());
        assert_ne!(two.contribution.id(), twin.id());
        assert_eq!((a.round, a.base, a.author), (b.round, b.base, b.author));
        assert!(payload_facts(&two.payload.unwrap()).is_ok());
    }
}
