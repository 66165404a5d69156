//! Peer identities: ed25519 public keys.
//!
//! The same key type libp2p-identity uses, so one key both names a peer on the
//! network and signs its contributions.

use std::fmt;
use std::str::FromStr;

use bincode::{Decode, Encode};
pub use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::digest::{serde_as_hex, ParseIdError};

/// A peer's ed25519 public key as 32 bytes, as it appears on the wire.
///
/// Not every 32-byte string is a valid key; [`PeerKey::verifying_key`] checks.
///
/// ```
/// use p2ptrain_protocol::{PeerKey, SigningKey};
///
/// let key = SigningKey::from_bytes(&[7; 32]);
/// let peer = PeerKey::from(&key);
/// assert_eq!(peer.verifying_key().unwrap(), key.verifying_key());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct PeerKey([u8; 32]);

impl PeerKey {
    /// Wraps 32 raw bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The ed25519 key these bytes encode, if they encode one.
    pub fn verifying_key(&self) -> Result<VerifyingKey, ed25519_dalek::SignatureError> {
        VerifyingKey::from_bytes(&self.0)
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl From<&SigningKey> for PeerKey {
    fn from(key: &SigningKey) -> Self {
        Self(key.verifying_key().to_bytes())
    }
}

impl From<VerifyingKey> for PeerKey {
    fn from(key: VerifyingKey) -> Self {
        Self(key.to_bytes())
    }
}

impl FromStr for PeerKey {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes)?;
        Ok(Self(bytes))
    }
}

impl fmt::Display for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerKey({})", self.to_hex())
    }
}

serde_as_hex!(PeerKey);
