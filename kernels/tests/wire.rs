//! Payload bytes: round trips, sizes, and every way decoding refuses.

mod common;

use bincode::error::DecodeError;
use common::{pack, unpack, Rng};
use p2ptrain_kernels::{compress, Payload};
use p2ptrain_protocol::codec::{CodecError, FORMAT_VERSION};
use p2ptrain_protocol::{CompressionSettings, ValueBits};

/// A payload's fields as they appear on the wire, to build bytes by hand.
type Parts = (u64, CompressionSettings, Vec<f32>, Vec<u8>, Vec<u8>);

fn parts(payload: &Payload) -> Parts {
    let bytes = payload.encode().unwrap();
    let (parts, read) =
        bincode::decode_from_slice(&bytes[1..], bincode::config::standard()).unwrap();
    assert_eq!(read, bytes.len() - 1);
    parts
}

fn wire(parts: &Parts) -> Vec<u8> {
    let mut bytes = vec![FORMAT_VERSION];
    bytes.extend(bincode::encode_to_vec(parts, bincode::config::standard()).unwrap());
    bytes
}

fn sample(len: usize, s: &CompressionSettings, seed: u64) -> Payload {
    let delta = Rng::new(seed).normals(len, 1.0);
    compress(&delta, &mut vec![0.0; len], s).unwrap()
}

/// Decodes `bytes`, expecting a refusal that names `rule`.
fn refused(bytes: &[u8], rule: &str) {
    match Payload::decode(bytes) {
        Err(CodecError::Malformed(DecodeError::Other(message))) => {
            assert!(message.contains(rule), "{message:?} does not name {rule:?}")
        }
        other => panic!("expected a refusal naming {rule:?}, got {other:?}"),
    }
}

#[test]
fn round_trips_and_knows_its_size() {
    for (len, s) in [
        (0, CompressionSettings::default()),
        (1, CompressionSettings::default()),
        (100_000, CompressionSettings::default()),
        (
            33_333,
            CompressionSettings {
                chunk_len: 1000,
                density: 0.3,
                value_bits: ValueBits::Two,
            },
        ),
        (
            777,
            CompressionSettings {
                chunk_len: 1,
                density: 1.0,
                value_bits: ValueBits::Four,
            },
        ),
    ] {
        let payload = sample(len, &s, 20);
        let bytes = payload.encode().unwrap();
        assert_eq!(payload.encoded_len(), bytes.len());
        assert_eq!(Payload::decode(&bytes).unwrap(), payload);
        assert_eq!(wire(&parts(&payload)), bytes);
    }
}

#[test]
fn bits_per_param_counts_every_byte() {
    // 8192 entries: version 1, len 3, settings 3 + 4 + 1, 2 scales 1 + 8,
    // indices 1 + 2 × 62, values 1 + 2 × 41 = 229 bytes.
    let payload = sample(8192, &CompressionSettings::default(), 21);
    assert_eq!(payload.encode().unwrap().len(), 229);
    assert_eq!(payload.bits_per_param(), 229.0 * 8.0 / 8192.0);
    // At scale, about 0.21 bits per parameter: 150× smaller than f32.
    let big = sample(1 << 20, &CompressionSettings::default(), 22);
    assert!(
        (0.205..0.21).contains(&big.bits_per_param()),
        "{}",
        big.bits_per_param()
    );
}

#[test]
fn decode_refuses_disordered_indices() {
    let payload = sample(10_000, &CompressionSettings::default(), 23);
    let (len, s, scales, indices, values) = parts(&payload);
    let mut first = unpack(&indices[..62], 12, 41);
    first.swap(3, 4);
    let mut swapped = indices.clone();
    swapped[..62].copy_from_slice(&pack(&first, 12, 62));
    refused(
        &wire(&(len, s, scales.clone(), swapped, values.clone())),
        "strictly ascending",
    );
    first.swap(3, 4);
    first[4] = first[3];
    let mut duplicated = indices;
    duplicated[..62].copy_from_slice(&pack(&first, 12, 62));
    refused(
        &wire(&(len, s, scales, duplicated, values)),
        "strictly ascending",
    );
}

#[test]
fn decode_refuses_an_index_past_its_chunk() {
    // Chunks of 100 take 7-bit indices, which reach 127; the last chunk has 50.
    let s = CompressionSettings {
        chunk_len: 100,
        density: 0.1,
        value_bits: ValueBits::Eight,
    };
    let payload = sample(250, &s, 24);
    let (len, s, scales, mut indices, values) = parts(&payload);
    let mut first = unpack(&indices[..9], 7, 10);
    first[9] = 100;
    indices[..9].copy_from_slice(&pack(&first, 7, 9));
    refused(&wire(&(len, s, scales, indices, values)), "past the end");
}

#[test]
fn decode_refuses_nonzero_padding() {
    let s = CompressionSettings {
        value_bits: ValueBits::Two,
        ..Default::default()
    };
    let payload = sample(4096, &s, 25);
    // 41 indices × 12 bits = 492 bits: the top 4 bits of byte 61 are padding;
    // 41 codes × 2 bits = 82 bits: the top 6 bits of byte 10.
    let (len, s, scales, indices, values) = parts(&payload);
    let mut bad = indices.clone();
    bad[61] |= 0x80;
    refused(
        &wire(&(len, s, scales.clone(), bad, values.clone())),
        "padding",
    );
    let mut bad = values;
    bad[10] |= 0x04;
    refused(&wire(&(len, s, scales, indices, bad)), "padding");
}

#[test]
fn decode_refuses_wrong_lengths() {
    let payload = sample(5000, &CompressionSettings::default(), 26);
    let (len, s, scales, indices, values) = parts(&payload);
    let mut longer = indices.clone();
    longer.push(0);
    refused(
        &wire(&(len, s, scales.clone(), longer, values.clone())),
        "index byte count",
    );
    refused(
        &wire(&(
            len,
            s,
            scales.clone(),
            indices.clone(),
            values[1..].to_vec(),
        )),
        "value byte count",
    );
    refused(
        &wire(&(
            len,
            s,
            scales[1..].to_vec(),
            indices.clone(),
            values.clone(),
        )),
        "scale count",
    );
    refused(
        &wire(&(len + 4096, s, scales, indices, values)),
        "scale count",
    );
}

#[test]
fn decode_refuses_bad_scales() {
    let payload = sample(5000, &CompressionSettings::default(), 27);
    let (len, s, scales, indices, values) = parts(&payload);
    for bad in [-1.0, -0.0, f32::NAN, f32::INFINITY, -f32::MIN_POSITIVE] {
        let mut scales = scales.clone();
        scales[1] = bad;
        refused(
            &wire(&(len, s, scales, indices.clone(), values.clone())),
            "scale is not finite",
        );
    }
    // A zero scale with nonzero codes.
    let mut zero = scales.clone();
    zero[0] = 0.0;
    refused(
        &wire(&(len, s, zero, indices, values)),
        "zero scale has nonzero codes",
    );
    // A chunk that keeps nothing with a nonzero scale.
    let empty = sample(40, &CompressionSettings::default(), 28);
    let (len, s, mut scales, indices, values) = parts(&empty);
    scales[0] = 1.0;
    refused(&wire(&(len, s, scales, indices, values)), "keeps nothing");
}

#[test]
fn decode_refuses_bad_settings_and_huge_lengths() {
    let payload = sample(300, &CompressionSettings::default(), 29);
    let mut bytes = payload.encode().unwrap();
    // version, len (3 bytes), chunk_len (3), density (4), then value_bits.
    assert_eq!(bytes[11], 8);
    bytes[11] = 3;
    assert!(matches!(
        Payload::decode(&bytes),
        Err(CodecError::Malformed(_))
    ));

    let one = CompressionSettings {
        chunk_len: 1,
        density: 0.0,
        value_bits: ValueBits::Eight,
    };
    refused(
        &wire(&(1 << 40, one, vec![], vec![], vec![])),
        "more chunks",
    );
    refused(
        &wire(&(u64::MAX, one, vec![], vec![], vec![])),
        "more chunks",
    );
    // 2^27 chunks claimed, a few bytes present: refused without allocating
    // the 512 MiB the scales would take.
    let mut bytes = vec![FORMAT_VERSION, 0xfc, 0, 0, 0, 8]; // len 2^27
    bytes.extend([1, 0, 0, 0, 0, 8]); // chunk_len 1, density 0, 8 bits
    bytes.extend([0xfc, 0, 0, 0, 8]); // 2^27 scales
    bytes.extend([0; 16]);
    assert!(Payload::decode(&bytes).is_err());
}

#[test]
fn decode_refuses_every_truncation_and_trailing_bytes() {
    let s = CompressionSettings {
        chunk_len: 64,
        density: 0.1,
        value_bits: ValueBits::Four,
    };
    let bytes = sample(1000, &s, 30).encode().unwrap();
    for cut in 0..bytes.len() {
        assert!(
            Payload::decode(&bytes[..cut]).is_err(),
            "prefix of {cut} bytes"
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        Payload::decode(&longer),
        Err(CodecError::TrailingBytes(1))
    ));
}

#[test]
fn decode_never_panics_and_accepts_only_canonical_bytes() {
    let s = CompressionSettings {
        chunk_len: 50,
        density: 0.2,
        value_bits: ValueBits::Two,
    };
    let bytes = sample(400, &s, 31).encode().unwrap();
    let mut rng = Rng::new(32);
    for _ in 0..20_000 {
        let mut mutated = bytes.clone();
        for _ in 0..1 + rng.next_u64() % 3 {
            let at = (rng.next_u64() % mutated.len() as u64) as usize;
            mutated[at] ^= 1 << (rng.next_u64() % 8);
        }
        if let Ok(payload) = Payload::decode(&mutated) {
            assert_eq!(payload.encode().unwrap(), mutated);
        }
    }
}
