//! Bit packing: fields of 1 to 24 bits, least significant bit first.
//!
//! Field `j` of a run occupies bits `j × bits .. (j + 1) × bits` of the run,
//! where bit `b` of the run is bit `b % 8` of byte `b / 8`. A run is padded
//! with zero bits to a whole byte. For 12-bit fields `a`, `b` this gives the
//! bytes `a & 0xff`, `(a >> 8) | (b & 0xf) << 4`, `b >> 4`.

/// Packs `fields`, each below `2^bits`, into `out`, which must be exactly
/// [`packed_len`](crate::layout::packed_len)`(count, bits)` bytes long. The
/// padding bits are zero.
pub(crate) fn pack(fields: impl IntoIterator<Item = u32>, bits: u32, out: &mut [u8]) {
    debug_assert!((1..=24).contains(&bits));
    let mut acc = 0u64;
    let mut filled = 0u32;
    let mut bytes = out.iter_mut();
    let mut emit = |byte: u8| {
        let slot = bytes.next();
        debug_assert!(slot.is_some(), "packed run longer than its buffer");
        if let Some(slot) = slot {
            *slot = byte;
        }
    };
    for field in fields {
        debug_assert!(field >> bits == 0, "field {field} wider than {bits} bits");
        acc |= u64::from(field) << filled;
        filled += bits;
        while filled >= 8 {
            emit(acc as u8);
            acc >>= 8;
            filled -= 8;
        }
    }
    if filled > 0 {
        emit(acc as u8);
    }
}

/// Reads `count` fields of `bits` bits back from a run written by [`pack`].
/// Bytes past the end of `bytes` read as zero.
pub(crate) fn unpack(bytes: &[u8], bits: u32, count: usize) -> Unpack<'_> {
    debug_assert!((1..=24).contains(&bits));
    Unpack {
        bytes,
        pos: 0,
        acc: 0,
        filled: 0,
        bits,
        mask: (1u64 << bits) - 1,
        remaining: count,
    }
}

/// Whether the padding bits after `count` fields of `bits` bits in `bytes`
/// are all zero.
pub(crate) fn padding_is_zero(bytes: &[u8], bits: u32, count: usize) -> bool {
    let used = count * bits as usize;
    match (used % 8, bytes.get(used / 8)) {
        (0, _) | (_, None) => true,
        (tail, Some(&last)) => last >> tail == 0,
    }
}

/// Iterator over packed fields; see [`unpack`].
#[derive(Debug, Clone)]
pub(crate) struct Unpack<'a> {
    bytes: &'a [u8],
    pos: usize,
    acc: u64,
    filled: u32,
    bits: u32,
    mask: u64,
    remaining: usize,
}

impl Iterator for Unpack<'_> {
    type Item = u32;

    #[inline]
    fn next(&mut self) -> Option<u32> {
        if self.remaining == 0 {
            return None;
        }
        if self.filled < self.bits {
            self.refill();
        }
        let field = (self.acc & self.mask) as u32;
        self.acc >>= self.bits;
        self.filled -= self.bits;
        self.remaining -= 1;
        Some(field)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for Unpack<'_> {}

impl Unpack<'_> {
    /// Tops the held bits up to at least one field: as many whole bytes
    /// as fit above them in one load where eight bytes are left, else a
    /// byte at a time (bytes past the end reading as zero).
    #[inline]
    fn refill(&mut self) {
        // Fewer than 24 bits are held, so 5 to 8 bytes fit.
        let room = ((64 - self.filled) / 8) as usize;
        let window = self.bytes.get(self.pos..self.pos + 8);
        if let Some(word) = window.and_then(|w| <[u8; 8]>::try_from(w).ok()) {
            let word = u64::from_le_bytes(word);
            let word = if room == 8 {
                word
            } else {
                word & ((1u64 << (8 * room)) - 1)
            };
            self.acc |= word << self.filled;
            self.pos += room;
            self.filled += 8 * room as u32;
            return;
        }
        while self.filled < self.bits {
            let byte = self.bytes.get(self.pos).copied().unwrap_or(0);
            self.acc |= u64::from(byte) << self.filled;
            self.pos += 1;
            self.filled += 8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::packed_len;

    fn packed(fields: &[u32], bits: u32) -> Vec<u8> {
        let mut out = vec![0xaa; packed_len(fields.len(), bits)];
        pack(fields.iter().copied(), bits, &mut out);
        out
    }

    #[test]
    fn twelve_bit_fields_share_a_middle_byte() {
        assert_eq!(packed(&[0xabc, 0x123], 12), [0xbc, 0x3a, 0x12]);
        assert_eq!(packed(&[0xabc], 12), [0xbc, 0x0a]);
    }

    #[test]
    fn small_fields_fill_bytes_from_the_low_end() {
        assert_eq!(packed(&[1, 2, 3], 2), [0b00_11_10_01]);
        assert_eq!(packed(&[3, 0, 0, 0, 1], 2), [0b11, 0b01]);
        assert_eq!(packed(&[0xf, 0x1, 0x8], 4), [0x1f, 0x08]);
        assert_eq!(packed(&[1, 0, 1], 1), [0b101]);
    }

    #[test]
    fn long_runs_round_trip_and_read_zeros_past_the_end() {
        // Long enough for the eight-byte loads, with tails of every length.
        for bits in 1..=24u32 {
            let mask = (1u32 << bits) - 1;
            for count in [1000usize, 1001, 1003, 1007] {
                let fields: Vec<u32> = (0..count as u32)
                    .map(|i| i.wrapping_mul(0x85eb_ca6b).rotate_left(bits) & mask)
                    .collect();
                let bytes = packed(&fields, bits);
                let back: Vec<u32> = unpack(&bytes, bits, count).collect();
                assert_eq!(back, fields, "bits {bits}, {count} fields");
                let mut past = fields.clone();
                past.extend([0; 9]);
                assert_eq!(unpack(&bytes, bits, count + 9).collect::<Vec<_>>(), past);
            }
        }
    }

    #[test]
    fn round_trips_every_width() {
        for bits in 1..=24u32 {
            let mask = (1u32 << bits) - 1;
            let fields: Vec<u32> = (0..37u32)
                .map(|i| i.wrapping_mul(0x9e37_79b9) & mask)
                .collect();
            let bytes = packed(&fields, bits);
            assert_eq!(bytes.len(), packed_len(fields.len(), bits));
            let back: Vec<u32> = unpack(&bytes, bits, fields.len()).collect();
            assert_eq!(back, fields, "bits {bits}");
            assert!(padding_is_zero(&bytes, bits, fields.len()));
        }
    }

    #[test]
    fn padding_check_sees_stray_bits() {
        let mut bytes = packed(&[0xabc], 12);
        assert!(padding_is_zero(&bytes, 12, 1));
        bytes[1] |= 0x10;
        assert!(!padding_is_zero(&bytes, 12, 1));
        // A run that ends on a byte boundary has no padding.
        assert!(padding_is_zero(&[0xff], 8, 1));
        assert!(padding_is_zero(&[], 12, 0));
    }

    #[test]
    fn reading_past_the_end_gives_zeros() {
        let back: Vec<u32> = unpack(&[0xff], 8, 3).collect();
        assert_eq!(back, [0xff, 0, 0]);
    }
}
