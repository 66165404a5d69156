//! The p2ptrain wire protocol: pure data, no I/O.
//!
//! Everything peers say to each other, and the record anyone can replay to
//! check the shared checkpoint, is a type here. Each one encodes through one
//! [`codec`] (a format-version byte, then bincode, under a per-type size
//! limit), is named by the blake3 [`Digest`] of its encoding, and — when it is
//! someone's statement — travels as a [`Signed`] envelope that carries the
//! exact bytes its author signed. Decoding any byte string yields a value or a
//! typed error; it never panics and never allocates past the type's limit.
//!
//! # Layout
//!
//! - [`codec`] — `encode` / `decode`, the [`Message`] trait, size limits.
//! - [`digest`] — [`Digest`], the content id (blake3).
//! - [`identity`] — [`PeerKey`], an ed25519 public key (the libp2p key type).
//! - [`signed`] — [`Signed<T>`]: `sign` / `verify` over the encoded bytes.
//! - [`compression`] — [`CompressionSettings`] the kernels obey.
//! - [`manifest`] — [`RunManifest`]: model, optimizers, round rules; its hash
//!   is the run id.
//! - [`round`] — [`Contribution`], [`Commit`], [`RoundRecord`].
//! - [`checkpoint`] — [`CheckpointManifest`]: chunk hashes and a root.
//!
//! `docs/protocol.md` gives the byte layout and exactly which bytes are hashed
//! and signed.
//!
//! # Example
//!
//! ```
//! use p2ptrain_protocol::{
//!     codec, CompressionSettings, Contribution, Digest, PayloadRef, PeerKey, RunManifest,
//!     Signed, SigningKey,
//! };
//!
//! let key = SigningKey::from_bytes(&[42; 32]);
//! let manifest = RunManifest::default();
//! let contribution = Contribution {
//!     run: manifest.id()?,
//!     round: 0,
//!     base: manifest.genesis,
//!     author: PeerKey::from(&key),
//!     tokens: 32 * 64 * 50,
//!     payload: PayloadRef { hash: Digest::of(b"payload bytes"), len: 13 },
//!     compression: CompressionSettings::default(),
//! };
//!
//! // Sign, put on the wire, take off the wire, verify.
//! let wire = codec::encode(&Signed::sign(&contribution, &key)?)?;
//! let received: Signed<Contribution> = codec::decode(&wire)?;
//! assert_eq!(received.verify()?, contribution);
//!
//! // One flipped bit and the signature no longer verifies.
//! let mut tampered = wire.clone();
//! tampered[10] ^= 1;
//! let tampered: Signed<Contribution> = codec::decode(&tampered)?;
//! assert!(tampered.verify().is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod checkpoint;
pub mod codec;
pub mod compression;
pub mod digest;
pub mod identity;
pub mod manifest;
pub mod round;
pub mod signed;

pub use checkpoint::{CheckpointManifest, ChunkError};
pub use codec::{CodecError, Message};
pub use compression::{CompressionSettings, InvalidSettings, ValueBits};
pub use digest::{Digest, ParseIdError};
pub use identity::{PeerKey, SigningKey, VerifyingKey};
pub use manifest::{
    InnerOptimizer, InvalidManifest, ModelConfig, OuterOptimizer, RoundRules, RunManifest,
};
pub use round::{Commit, Contribution, Equivocation, IdSet, PayloadRef, RecordError, RoundRecord};
pub use signed::{Signable, Signed, SignedError};
