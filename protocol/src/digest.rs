//! Content ids: blake3 digests of encoded bytes.

use std::fmt;
use std::str::FromStr;

use bincode::{Decode, Encode};

/// A 32-byte blake3 digest: the id of a run, contribution, payload or checkpoint.
///
/// Ordered by its bytes, which is the canonical order wherever a set of ids is
/// listed (commits, aggregation).
///
/// ```
/// use p2ptrain_protocol::Digest;
///
/// let id = Digest::of(b"abc");
/// assert_eq!(id.to_string(), "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85");
/// assert_eq!(id.to_string().parse::<Digest>().unwrap(), id);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }

    /// Wraps 32 raw bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// Why a hex string is not a 32-byte id.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("expected 64 hex characters for a 32-byte id: {0}")]
pub struct ParseIdError(#[from] hex::FromHexError);

impl FromStr for Digest {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes)?;
        Ok(Self(bytes))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

/// Serde as a hex string, for manifests and history files people read.
macro_rules! serde_as_hex {
    ($ty:ty) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use serde_as_hex;

serde_as_hex!(Digest);
