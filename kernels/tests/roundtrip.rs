//! Random lengths and settings: compress, encode, decode, decompress.

mod common;

use common::{bits, reference_compress, Rng};
use p2ptrain_kernels::{compress, decompress_into, Payload};
use p2ptrain_protocol::{CompressionSettings, ValueBits};
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
}
