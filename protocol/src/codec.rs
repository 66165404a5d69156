//! The one wire codec: a format-version byte, then bincode, under a size limit.
//!
//! Every message on the wire and every content id goes through [`encode`] and
//! [`decode`]. The layout is bincode 2's `standard()` configuration
//! (little-endian, variable-length integers); `docs/protocol.md` spells it out
//! byte by byte so that other implementations can produce and check the same
//! bytes.
//!
//! Each [`Message`] type declares its own `MAX_LEN`. [`decode`] refuses a longer
//! input before reading it, and bincode's limit — checked before any container
//! is allocated — bounds what decoding may allocate to the same figure.

use bincode::config::{self, Configuration, Limit, LittleEndian, Varint};
use bincode::{Decode, Encode};

/// The first byte of every encoded message.
pub const FORMAT_VERSION: u8 = 1;

/// The bincode configuration of the wire format, with a decode allocation limit.
pub type WireConfig<const LIMIT: usize> = Configuration<LittleEndian, Varint, Limit<LIMIT>>;

/// The wire configuration with a decode allocation limit of `LIMIT` bytes.
pub const fn wire_config<const LIMIT: usize>() -> WireConfig<LIMIT> {
    config::standard().with_limit::<LIMIT>()
}

/// A type that travels on the wire as one self-contained message.
///
/// Implement it with [`impl_message!`](crate::impl_message), which ties the
/// decode allocation limit to `MAX_LEN`.
pub trait Message: Encode + Decode<()> + Sized {
    /// The longest encoding accepted, version byte included. Decoding never
    /// allocates more than this many bytes for the value.
    const MAX_LEN: usize;

    /// Decodes the bincode body (after the version byte) under a limit of
    /// `MAX_LEN`. Returns the value and the number of bytes read.
    #[doc(hidden)]
    fn decode_body(body: &[u8]) -> Result<(Self, usize), bincode::error::DecodeError>;
}

/// Implements [`Message`] for a type with a given maximum encoded length.
///
/// ```
/// use bincode::{Decode, Encode};
///
/// #[derive(Debug, PartialEq, Encode, Decode)]
/// struct Ping { nonce: u64 }
/// p2ptrain_protocol::impl_message!(Ping, max_len = 16);
///
/// let bytes = p2ptrain_protocol::codec::encode(&Ping { nonce: 7 }).unwrap();
/// assert_eq!(bytes, [1, 7]);
/// assert_eq!(p2ptrain_protocol::codec::decode::<Ping>(&bytes).unwrap(), Ping { nonce: 7 });
/// ```
#[macro_export]
macro_rules! impl_message {
    ($ty:ty, max_len = $max:expr) => {
        impl $crate::codec::Message for $ty {
            const MAX_LEN: usize = $max;

            fn decode_body(
                body: &[u8],
            ) -> ::core::result::Result<(Self, usize), ::bincode::error::DecodeError> {
                ::bincode::decode_from_slice(body, $crate::codec::wire_config::<{ $max }>())
            }
        }
    };
}

/// Why a message could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The input (or the encoding) is longer than the type's `MAX_LEN`.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Length of the input or encoding.
        len: usize,
        /// The type's limit.
        max: usize,
    },
    /// The input is empty: not even a version byte.
    #[error("empty message")]
    Empty,
    /// The version byte names a format this build does not speak.
    #[error("unknown format version {0} (this build speaks {FORMAT_VERSION})")]
    UnknownVersion(u8),
    /// The body is not a valid encoding of the type.
    #[error("malformed message: {0}")]
    Malformed(#[source] bincode::error::DecodeError),
    /// A valid value was followed by bytes that belong to nothing.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// The bytes decode, but not in the shortest form (an integer written in
    /// more bytes than it needs), so they are not the value's one encoding.
    #[error("non-canonical encoding: {len} bytes where the value encodes to {canonical}")]
    NonCanonical {
        /// Length of the input.
        len: usize,
        /// Length of the value's canonical encoding.
        canonical: usize,
    },
    /// The value could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(#[source] bincode::error::EncodeError),
}

/// Encodes a message: the version byte, then its bincode body.
pub fn encode<T: Message>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut bytes = vec![FORMAT_VERSION];
    bincode::encode_into_std_write(value, &mut bytes, config::standard())
        .map_err(CodecError::Encode)?;
    if bytes.len() > T::MAX_LEN {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            max: T::MAX_LEN,
        });
    }
    Ok(bytes)
}

/// Decodes a message produced by [`encode`].
///
/// Any input gives a value or a [`CodecError`]: the length is checked against
/// `T::MAX_LEN` before anything is read, the version byte next; trailing
/// bytes and integers written longer than needed are refused, so a value has
/// exactly one encoding and one content id.
pub fn decode<T: Message>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > T::MAX_LEN {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            max: T::MAX_LEN,
        });
    }
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion(version));
    }
    let (value, read) = T::decode_body(body).map_err(CodecError::Malformed)?;
    if read != body.len() {
        return Err(CodecError::TrailingBytes(body.len() - read));
    }
    // Every other field is fixed-size or strictly checked (bools, option and
    // enum tags, UTF-8), so the input is canonical exactly when it is as short
    // as the value's own encoding.
    let canonical = encoded_len(&value)?;
    if canonical != bytes.len() {
        return Err(CodecError::NonCanonical {
            len: bytes.len(),
            canonical,
        });
    }
    Ok(value)
}

/// The number of bytes [`encode`] would produce, without allocating them.
pub fn encoded_len<T: Message>(value: &T) -> Result<usize, CodecError> {
    let mut size = bincode::enc::write::SizeWriter::default();
    bincode::encode_into_writer(value, &mut size, config::standard())
        .map_err(CodecError::Encode)?;
    Ok(1 + size.bytes_written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Encode, Decode)]
    struct Blob {
        bytes: Vec<u8>,
    }
    crate::impl_message!(Blob, max_len = 64);

    #[test]
    fn round_trips_and_counts_length() {
        let blob = Blob {
            bytes: vec![1, 2, 3],
        };
        let bytes = encode(&blob).unwrap();
        assert_eq!(bytes, [FORMAT_VERSION, 3, 1, 2, 3]);
        assert_eq!(encoded_len(&blob).unwrap(), bytes.len());
        assert_eq!(decode::<Blob>(&bytes).unwrap(), blob);
    }

    #[test]
    fn refuses_long_input_before_reading_it() {
        let bytes = vec![0xff; 65];
        assert!(matches!(
            decode::<Blob>(&bytes),
            Err(CodecError::TooLarge { len: 65, max: 64 })
        ));
    }

    #[test]
    fn refuses_encoding_past_the_limit() {
        let blob = Blob {
            bytes: vec![0; 100],
        };
        assert!(matches!(encode(&blob), Err(CodecError::TooLarge { .. })));
    }

    #[test]
    fn refuses_unknown_version_empty_and_trailing_bytes() {
        assert!(matches!(decode::<Blob>(&[]), Err(CodecError::Empty)));
        assert!(matches!(
            decode::<Blob>(&[2, 0]),
            Err(CodecError::UnknownVersion(2))
        ));
        assert!(matches!(
            decode::<Blob>(&[1, 0, 9]),
            Err(CodecError::TrailingBytes(1))
        ));
    }

    #[test]
    fn refuses_an_integer_written_longer_than_needed() {
        // Length 3 written as 0xfb + u16 instead of one byte.
        assert!(matches!(
            decode::<Blob>(&[1, 0xfb, 3, 0, 1, 2, 3]),
            Err(CodecError::NonCanonical {
                len: 7,
                canonical: 5
            })
        ));
    }

    #[test]
    fn a_claimed_length_past_the_limit_is_refused_without_allocating() {
        // Length prefix 0xfc = u32 follows: claims 1 GiB of bytes.
        let bytes = [1, 0xfc, 0, 0, 0, 0x40];
        assert!(matches!(
            decode::<Blob>(&bytes),
            Err(CodecError::Malformed(
                bincode::error::DecodeError::LimitExceeded
            ))
        ));
    }
}
