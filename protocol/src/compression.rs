//! Compression settings shared by the run manifest, each contribution and the
//! kernels that compress.

use bincode::de::Decoder;
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

/// Bits per quantized value in a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum ValueBits {
    /// 2 bits: 4 levels.
    Two,
    /// 4 bits: 16 levels.
    Four,
    /// 8 bits: 256 levels (the default).
    Eight,
}

impl ValueBits {
    /// The number of bits, 2, 4 or 8.
    pub const fn bits(self) -> u32 {
        match self {
            Self::Two => 2,
            Self::Four => 4,
            Self::Eight => 8,
        }
    }

    /// The number of quantization levels, `2^bits`.
    pub const fn levels(self) -> u32 {
        1 << self.bits()
    }
}

/// The error for a bit width other than 2, 4 or 8.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("value bits must be 2, 4 or 8, not {0}")]
pub struct InvalidValueBits(pub u8);

impl TryFrom<u8> for ValueBits {
    type Error = InvalidValueBits;

    fn try_from(bits: u8) -> Result<Self, Self::Error> {
        match bits {
            2 => Ok(Self::Two),
            4 => Ok(Self::Four),
            8 => Ok(Self::Eight),
            other => Err(InvalidValueBits(other)),
        }
    }
}

impl From<ValueBits> for u8 {
    fn from(bits: ValueBits) -> u8 {
        bits.bits() as u8
    }
}

/// How a pseudo-gradient is compressed: chunked top-k, then quantized values.
///
/// The flat parameter buffer is cut into chunks of `chunk_len` (the last may be
/// shorter); from a chunk of length `n` the `k = round(density × n)` entries of
/// largest magnitude are kept.
///
/// ```
/// use p2ptrain_protocol::{CompressionSettings, ValueBits};
///
/// let settings = CompressionSettings::default();
/// assert_eq!((settings.chunk_len, settings.value_bits), (4096, ValueBits::Eight));
/// assert_eq!(settings.k_for(4096), 41);
/// assert_eq!(settings.index_bits(), 12);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionSettings {
    /// Entries per chunk, 1 to 2^24.
    pub chunk_len: u32,
    /// Fraction of each chunk kept, in [0, 1].
    pub density: f32,
    /// Bits per kept value.
    pub value_bits: ValueBits,
}

impl Default for CompressionSettings {
    fn default() -> Self {
        Self {
            chunk_len: 4096,
            density: 0.01,
            value_bits: ValueBits::Eight,
        }
    }
}

/// Why compression settings are unusable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidSettings {
    /// `chunk_len` is 0 or above [`CompressionSettings::MAX_CHUNK_LEN`].
    #[error("chunk length must be 1 to {max}, not {0}", max = CompressionSettings::MAX_CHUNK_LEN)]
    ChunkLen(u32),
    /// `density` is not a finite number in [0, 1].
    #[error("density must be in [0, 1], not {0}")]
    Density(f32),
}

impl CompressionSettings {
    /// The largest chunk length: indices then fit in 24 bits.
    pub const MAX_CHUNK_LEN: u32 = 1 << 24;

    /// Checks the ranges of every field.
    pub fn validate(&self) -> Result<(), InvalidSettings> {
        if self.chunk_len == 0 || self.chunk_len > Self::MAX_CHUNK_LEN {
            return Err(InvalidSettings::ChunkLen(self.chunk_len));
        }
        if !(0.0..=1.0).contains(&self.density) {
            return Err(InvalidSettings::Density(self.density));
        }
        Ok(())
    }

    /// The number of entries kept from a chunk of `len` entries:
    /// `round(density × len)` computed in f64, never more than `len`.
    pub fn k_for(&self, len: usize) -> usize {
        let k = (f64::from(self.density) * len as f64).round() as usize;
        k.min(len)
    }

    /// Bits per packed index: enough for `chunk_len − 1`, at least 1.
    pub fn index_bits(&self) -> u32 {
        (u32::BITS - self.chunk_len.saturating_sub(1).leading_zeros()).max(1)
    }
}

impl Encode for CompressionSettings {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.chunk_len.encode(encoder)?;
        self.density.encode(encoder)?;
        u8::from(self.value_bits).encode(encoder)
    }
}

impl<Context> Decode<Context> for CompressionSettings {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let chunk_len = u32::decode(decoder)?;
        let density = f32::decode(decoder)?;
        let value_bits = ValueBits::try_from(u8::decode(decoder)?)
            .map_err(|_| DecodeError::Other("value bits must be 2, 4 or 8"))?;
        let settings = Self {
            chunk_len,
            density,
            value_bits,
        };
        settings
            .validate()
            .map_err(|_| DecodeError::Other("compression settings out of range"))?;
        Ok(settings)
    }
}

bincode::impl_borrow_decode!(CompressionSettings);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_covers_the_edges() {
        let mut s = CompressionSettings::default();
        assert_eq!(s.k_for(1), 0);
        assert_eq!(s.k_for(100), 1);
        assert_eq!(s.k_for(149), 1);
        assert_eq!(s.k_for(151), 2);
        s.density = 0.0;
        assert_eq!(s.k_for(4096), 0);
        s.density = 1.0;
        assert_eq!(s.k_for(4096), 4096);
    }

    #[test]
    fn index_bits_fit_the_chunk() {
        let bits = |chunk_len| {
            CompressionSettings {
                chunk_len,
                ..Default::default()
            }
            .index_bits()
        };
        assert_eq!(bits(1), 1);
        assert_eq!(bits(2), 1);
        assert_eq!(bits(3), 2);
        assert_eq!(bits(4096), 12);
        assert_eq!(bits(4097), 13);
        assert_eq!(bits(1 << 24), 24);
    }

    #[test]
    fn validate_refuses_out_of_range() {
        let bad_chunk = CompressionSettings {
            chunk_len: 0,
            ..Default::default()
        };
        assert_eq!(bad_chunk.validate(), Err(InvalidSettings::ChunkLen(0)));
        let nan = CompressionSettings {
            density: f32::NAN,
            ..Default::default()
        };
        assert!(matches!(nan.validate(), Err(InvalidSettings::Density(_))));
    }
}
