//! Encoding and strict decoding of [`Payload`] (the format is in its docs).
//!
//! Decoding reads `len` and the settings first and derives from them the exact
//! length of every field. A length prefix that differs is refused before
//! anything is allocated, and, reading from a byte slice, the bytes a field
//! claims are checked to be present before its buffer is allocated, so a short
//! input cannot make the decoder allocate more than the input holds. The
//! content is then checked against every rule of the format; a failure is a
//! [`DecodeError::Other`] naming the rule.

use bincode::de::read::Reader;
use bincode::de::Decoder;
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{Decode, Encode};
use p2ptrain_protocol::{CompressionSettings, Message};

use crate::layout::Layout;
use crate::pack::{padding_is_zero, unpack};
use crate::Payload;

/// More chunks than this cannot fit a payload's size limit (4 bytes of scale
/// each), so such a length is refused before any layout arithmetic.
const MAX_CHUNKS: u64 = (Payload::MAX_LEN / 4) as u64;

/// Bytes read at a time from a reader that cannot show what it holds.
const READ_STEP: usize = 8 * 1024;

impl Encode for Payload {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        (self.len as u64).encode(encoder)?;
        self.settings.encode(encoder)?;
        self.scales.encode(encoder)?;
        self.indices.encode(encoder)?;
        self.values.encode(encoder)
    }
}

impl<Context> Decode<Context> for Payload {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let len = u64::decode(decoder)?;
        let settings = CompressionSettings::decode(decoder)?;
        if len.div_ceil(u64::from(settings.chunk_len)) > MAX_CHUNKS {
            return Err(DecodeError::Other(
                "payload length needs more chunks than fit the size limit",
            ));
        }
        let len = usize::try_from(len).map_err(|_| DecodeError::OutsideUsizeRange(len))?;
        let layout = Layout::new(len, &settings);
        let scales = decode_scales(decoder, layout.chunks)?;
        let indices = decode_bytes(
            decoder,
            layout.index_bytes(),
            "index byte count does not match the payload's layout",
        )?;
        let values = decode_bytes(
            decoder,
            layout.value_bytes(),
            "value byte count does not match the payload's layout",
        )?;
        let payload = Self {
            len,
            settings,
            scales,
            indices,
            values,
        };
        check(&payload, &layout)?;
        Ok(payload)
    }
}

bincode::impl_borrow_decode!(Payload);

/// Reads a length prefix; anything but `expected` is refused with `mismatch`.
fn expect_len<D: Decoder>(
    decoder: &mut D,
    expected: usize,
    mismatch: &'static str,
) -> Result<(), DecodeError> {
    if u64::decode(decoder)? == expected as u64 {
        Ok(())
    } else {
        Err(DecodeError::Other(mismatch))
    }
}

fn decode_scales<D: Decoder>(decoder: &mut D, n: usize) -> Result<Vec<f32>, DecodeError> {
    expect_len(
        decoder,
        n,
        "scale count does not match the payload's layout",
    )?;
    decoder.claim_container_read::<f32>(n)?;
    let present = decoder.reader().peek_read(4 * n).is_some();
    let mut scales = Vec::with_capacity(if present { n } else { 0 });
    for _ in 0..n {
        scales.push(f32::decode(decoder)?);
    }
    Ok(scales)
}

fn decode_bytes<D: Decoder>(
    decoder: &mut D,
    n: usize,
    mismatch: &'static str,
) -> Result<Vec<u8>, DecodeError> {
    expect_len(decoder, n, mismatch)?;
    decoder.claim_bytes_read(n)?;
    if let Some(bytes) = decoder.reader().peek_read(n) {
        let bytes = bytes.to_vec();
        decoder.reader().consume(n);
        return Ok(bytes);
    }
    // A reader that cannot show its bytes ahead (or a short slice): read in
    // steps, so the buffer grows only with bytes that really arrived.
    let mut bytes = Vec::new();
    let mut step = [0u8; READ_STEP];
    while bytes.len() < n {
        let take = (n - bytes.len()).min(READ_STEP);
        decoder.reader().read(&mut step[..take])?;
        bytes.extend_from_slice(&step[..take]);
    }
    Ok(bytes)
}

/// The rule a payload breaks when a chunk's scale is NaN, infinite or
/// negative: decoding refuses it with [`DecodeError::Other`] carrying this
/// text, so a validator can tell a non-finite update from other malformed
/// bytes.
pub const NON_FINITE_SCALE: &str = "a scale is not finite and non-negative (+0.0 for zero)";

/// Checks every content rule of the format.
fn check(payload: &Payload, layout: &Layout) -> Result<(), DecodeError> {
    let refuse = |rule: &'static str| Err(DecodeError::Other(rule));
    for (c, chunk) in layout.iter().enumerate() {
        let scale = payload.scales[c];
        if !scale.is_finite() || scale.is_sign_negative() {
            return refuse(NON_FINITE_SCALE);
        }
        if chunk.k == 0 && scale != 0.0 {
            return refuse("a chunk that keeps nothing has a nonzero scale");
        }
        let index_bytes = &payload.indices[chunk.indices.clone()];
        let value_bytes = &payload.values[chunk.values.clone()];
        if !padding_is_zero(index_bytes, layout.index_bits, chunk.k)
            || !padding_is_zero(value_bytes, layout.value_bits, chunk.k)
        {
            return refuse("nonzero padding bits after a chunk's indices or values");
        }
        let mut next = 0usize;
        for index in unpack(index_bytes, layout.index_bits, chunk.k) {
            let index = index as usize;
            if index < next {
                return refuse("a chunk's indices are not strictly ascending");
            }
            if index >= chunk.len {
                return refuse("an index is past the end of its chunk");
            }
            next = index + 1;
        }
        if scale == 0.0 && unpack(value_bytes, layout.value_bits, chunk.k).any(|code| code != 0) {
            return refuse("a chunk with zero scale has nonzero codes");
        }
    }
    Ok(())
}
