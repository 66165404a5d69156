//! Random lengths and settings: compress, encode, decode, decompress.

mod common;

use common::{bits, reference_compress, Rng};
use p2ptrain_kernels::{aggregate, compress, decompress_into, AggregateInput, Payload};
use p2ptrain_protocol::{CompressionSettings, Digest, ValueBits};
use proptest::prelude::*;

fn settings() -> impl Strategy<Value = CompressionSettings> {
    (
        1u32..600,
        prop_oneof![Just(0.0f32), Just(1.0f32), 0.0f32..=1.0],
        prop_oneof![
            Just(ValueBits::Two),
            Just(ValueBits::Four),
            Just(ValueBits::Eight)
        ],
    )
        .prop_map(|(chunk_len, density, value_bits)| CompressionSettings {
            chunk_len,
            density,
            value_bits,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn compress_encode_decode_decompress(
        len in 0usize..5_000,
        s in settings(),
        seed in any::<u64>(),
        magnitude in prop_oneof![Just(0.0f32), Just(1e-30f32), Just(1.0f32), Just(1e30f32)],
    ) {
        let mut rng = Rng::new(seed);
        let delta = rng.normals(len, magnitude);
        let before = rng.normals(len, magnitude / 10.0);
        let expected = reference_compress(&delta, &before, &s);

        let mut residual = before.clone();
        let payload = compress(&delta, &mut residual, &s).unwrap();
        prop_assert_eq!(bits(&residual), bits(&expected.residual));

        let bytes = payload.encode().unwrap();
        prop_assert_eq!(bytes.len(), payload.encoded_len());
        let received = Payload::decode(&bytes).unwrap();
        prop_assert_eq!(&received, &payload);

        let mut dense = vec![0.0f32; len];
        decompress_into(&received, 1.0, &mut dense).unwrap();
        let mut want = vec![0.0f32; len];
        for &(i, v) in &expected.kept {
            want[i] += v;
        }
        prop_assert_eq!(bits(&dense), bits(&want));
        let entries: Vec<(usize, u32)> = received.entries().map(|(i, v)| (i, v.to_bits())).collect();
        let want_entries: Vec<(usize, u32)> =
            expected.kept.iter().map(|&(i, v)| (i, v.to_bits())).collect();
        prop_assert_eq!(entries, want_entries);
    }

    /// A peer may send any bytes as a payload: decoding refuses them or
    /// gives a payload that re-encodes to exactly those bytes, and that
    /// decompresses and aggregates without a panic.
    #[test]
    fn damaged_payload_bytes_are_refused_or_used_safely(
        len in 1usize..3_000,
        s in settings(),
        seed in any::<u64>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in prop_oneof![Just(None), any::<prop::sample::Index>().prop_map(Some)],
    ) {
        let mut rng = Rng::new(seed);
        let delta = rng.normals(len, 1.0);
        let payload = compress(&delta, &mut vec![0.0; len], &s).unwrap();
        let mut bytes = payload.encode().unwrap();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= value;
        }
        if let Some(at) = cut {
            bytes.truncate(at.index(bytes.len()));
        }
        let Ok(received) = Payload::decode(&bytes) else {
            return Ok(());
        };
        prop_assert_eq!(received.encode().unwrap(), bytes);
        let mut dense = vec![0.0f32; received.len()];
        decompress_into(&received, 0.5, &mut dense).unwrap();
        // Beside an intact payload: refused unless the two agree in length
        // and chunk length.
        let inputs = [
            AggregateInput { key: Digest::of(b"a"), payload: &payload, weight: 1.0 },
            AggregateInput { key: Digest::of(b"b"), payload: &received, weight: 2.0 },
        ];
        let mean = aggregate(&inputs);
        let alike = received.len() == len
            && received.settings().chunk_len == payload.settings().chunk_len;
        prop_assert_eq!(mean.is_ok(), alike);
    }
}
