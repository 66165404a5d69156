//! Signed envelopes: the exact encoded bytes, their signer and an ed25519
//! signature over them.
//!
//! A [`Signed<T>`] carries the bytes that were signed, never a re-encoding: the
//! signature is checked on those bytes first, and only then are they decoded.

use std::fmt;
use std::marker::PhantomData;

use bincode::de::Decoder;
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{Decode, Encode};
use ed25519_dalek::{Signature, Signer, SigningKey};

use crate::codec::{self, CodecError, Message};
use crate::{Digest, PeerKey};

/// A message type that is signed.
pub trait Signable: Message {
    /// Prefix of the signed bytes, unique per type, so that a signature over
    /// one type can never be replayed as another.
    const DOMAIN: &'static [u8];

    /// The key the value itself names as its author, if it names one. A
    /// signature by any other key is refused.
    fn claimed_signer(&self) -> Option<PeerKey> {
        None
    }
}

/// Why a signed message was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignedError {
    /// The signer's 32 bytes are not a valid ed25519 public key.
    #[error("signer {0} is not a valid ed25519 key")]
    BadKey(PeerKey),
    /// The signature does not verify over the carried bytes.
    #[error("signature by {0} does not verify")]
    BadSignature(PeerKey),
    /// The signed bytes verify but do not decode.
    #[error("signed body does not decode: {0}")]
    Body(#[source] CodecError),
    /// The value names an author other than the key that signed it.
    #[error("signed by {signer} but claims author {claimed}")]
    SignerMismatch {
        /// Who signed.
        signer: PeerKey,
        /// Who the value says wrote it.
        claimed: PeerKey,
    },
}

/// A value of type `T` as encoded bytes, signed by `signer`.
///
/// The signed bytes are `T::DOMAIN` followed by `body`, where `body` is the
/// value's full [`codec::encode`] output (version byte included).
///
/// ```
/// use p2ptrain_protocol::{Signed, SigningKey, Commit, Digest, IdSet, PeerKey};
///
/// let key = SigningKey::from_bytes(&[1; 32]);
/// let commit = Commit {
///     run: Digest::of(b"run"),
///     round: 3,
///     base: Digest::of(b"base"),
///     committer: PeerKey::from(&key),
///     contributions: IdSet::new(vec![Digest::of(b"a")]),
///     result: Digest::of(b"next"),
///     chain_tokens: 4096,
/// };
/// let signed = Signed::sign(&commit, &key).unwrap();
/// assert_eq!(signed.verify().unwrap(), commit);
/// ```
pub struct Signed<T> {
    body: Vec<u8>,
    signer: PeerKey,
    signature: [u8; 64],
    value_type: PhantomData<fn() -> T>,
}

impl<T: Signable> Signed<T> {
    /// Encodes `value` and signs the encoding with `key`.
    pub fn sign(value: &T, key: &SigningKey) -> Result<Self, CodecError> {
        let body = codec::encode(value)?;
        let signature = key.sign(&signing_input::<T>(&body)).to_bytes();
        Ok(Self {
            body,
            signer: PeerKey::from(key),
            signature,
            value_type: PhantomData,
        })
    }

    /// Checks the signature over the carried bytes, then decodes them.
    pub fn verify(&self) -> Result<T, SignedError> {
        let key = self
            .signer
            .verifying_key()
            .map_err(|_| SignedError::BadKey(self.signer))?;
        let signature = Signature::from_bytes(&self.signature);
        key.verify_strict(&signing_input::<T>(&self.body), &signature)
            .map_err(|_| SignedError::BadSignature(self.signer))?;
        let value = codec::decode::<T>(&self.body).map_err(SignedError::Body)?;
        match value.claimed_signer() {
            Some(claimed) if claimed != self.signer => Err(SignedError::SignerMismatch {
                signer: self.signer,
                claimed,
            }),
            _ => Ok(value),
        }
    }
}

impl<T> Signed<T> {
    /// Reassembles an envelope from its parts, e.g. from another
    /// implementation. Nothing is checked until [`Signed::verify`].
    pub fn from_parts(body: Vec<u8>, signer: PeerKey, signature: [u8; 64]) -> Self {
        Self {
            body,
            signer,
            signature,
            value_type: PhantomData,
        }
    }

    /// The content id: blake3 of the signed body.
    pub fn id(&self) -> Digest {
        Digest::of(&self.body)
    }

    /// The encoded value, exactly as signed (after the domain prefix).
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The key that signed.
    pub fn signer(&self) -> PeerKey {
        self.signer
    }

    /// The 64-byte ed25519 signature.
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }
}

/// The exact bytes an ed25519 signature of a `T` covers: `T::DOMAIN ‖ body`.
pub fn signing_input<T: Signable>(body: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(T::DOMAIN.len() + body.len());
    input.extend_from_slice(T::DOMAIN);
    input.extend_from_slice(body);
    input
}

impl<T> Clone for Signed<T> {
    fn clone(&self) -> Self {
        Self::from_parts(self.body.clone(), self.signer, self.signature)
    }
}

impl<T> PartialEq for Signed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.body == other.body && self.signer == other.signer && self.signature == other.signature
    }
}

impl<T> Eq for Signed<T> {}

impl<T> fmt::Debug for Signed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signed")
            .field("id", &self.id())
            .field("signer", &self.signer)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl<T> Encode for Signed<T> {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.body.encode(encoder)?;
        self.signer.encode(encoder)?;
        self.signature.encode(encoder)
    }
}

impl<Context, T> Decode<Context> for Signed<T> {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let body = Vec::<u8>::decode(decoder)?;
        let signer = PeerKey::decode(decoder)?;
        let signature = <[u8; 64]>::decode(decoder)?;
        Ok(Self::from_parts(body, signer, signature))
    }
}

impl<'de, Context, T> bincode::BorrowDecode<'de, Context> for Signed<T> {
    fn borrow_decode<D: bincode::de::BorrowDecoder<'de, Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        <Self as Decode<Context>>::decode(decoder)
    }
}
