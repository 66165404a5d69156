//! `compress`: the definition, error feedback, quantization error, edge cases.

mod common;

use common::{bits, reference_compress, Rng};
use p2ptrain_kernels::{compress, decompress_into, KernelError, Payload};
use p2ptrain_protocol::{CompressionSettings, InvalidSettings, ValueBits};

fn settings(chunk_len: u32, density: f32, value_bits: ValueBits) -> CompressionSettings {
    CompressionSettings {
        chunk_len,
        density,
        value_bits,
    }
}

/// Compresses and checks the result against the reference bit for bit.
fn compress_checked(delta: &[f32], residual: &mut [f32], s: &CompressionSettings) -> Payload {
    let expected = reference_compress(delta, residual, s);
    let payload = compress(delta, residual, s).unwrap();
    let kept: Vec<(usize, u32)> = payload.entries().map(|(i, v)| (i, v.to_bits())).collect();
    let expected_kept: Vec<(usize, u32)> = expected
        .kept
        .iter()
        .map(|&(i, v)| (i, v.to_bits()))
        .collect();
    assert_eq!(kept, expected_kept);
    assert_eq!(bits(residual), bits(&expected.residual));
    payload
}

fn decompressed(payload: &Payload) -> Vec<f32> {
    let mut dense = vec![0.0; payload.len()];
    decompress_into(payload, 1.0, &mut dense).unwrap();
    dense
}

#[test]
fn matches_the_definition_bit_for_bit() {
    let mut rng = Rng::new(1);
    for s in [
        CompressionSettings::default(),
        settings(4096, 0.05, ValueBits::Four),
        settings(1000, 0.013, ValueBits::Two),
        settings(7, 0.5, ValueBits::Eight),
    ] {
        let delta = rng.normals(30_011, 0.01);
        let mut residual = rng.normals(30_011, 0.001);
        compress_checked(&delta, &mut residual, &s);
    }
}

#[test]
fn error_feedback_conserves_to_rounding() {
    let mut rng = Rng::new(2);
    let delta = rng.normals(50_000, 1e-3);
    let before = rng.normals(50_000, 1e-4);
    let mut residual = before.clone();
    let payload = compress(&delta, &mut residual, &CompressionSettings::default()).unwrap();
    let sent = decompressed(&payload);
    let kept: Vec<usize> = payload.entries().map(|(i, _)| i).collect();
    assert_eq!(kept.len(), 12 * 41 + 8); // 50,000 = 12 × 4096 + 848; round(8.48) = 8
    for i in 0..delta.len() {
        let acc = before[i] + delta[i];
        if kept.binary_search(&i).is_ok() {
            // residual = acc − value, rounded once.
            assert_eq!(residual[i], acc - sent[i]);
            let scale = acc.abs().max(sent[i].abs());
            assert!((sent[i] + residual[i] - acc).abs() <= 2.0 * scale * f32::EPSILON);
        } else {
            assert_eq!((sent[i], residual[i].to_bits()), (0.0, acc.to_bits()));
        }
    }
}

#[test]
fn error_feedback_over_rounds_adds_up_to_the_deltas() {
    let mut rng = Rng::new(3);
    let n = 20_000;
    let s = settings(4096, 0.02, ValueBits::Four);
    let mut residual = vec![0.0f32; n];
    let (mut sent, mut total) = (vec![0.0f64; n], vec![0.0f64; n]);
    for _ in 0..8 {
        let delta = rng.normals(n, 1e-2);
        let payload = compress(&delta, &mut residual, &s).unwrap();
        for (i, v) in payload.entries() {
            sent[i] += f64::from(v);
        }
        for (t, &d) in total.iter_mut().zip(&delta) {
            *t += f64::from(d);
        }
    }
    let worst = (0..n)
        .map(|i| (sent[i] + f64::from(residual[i]) - total[i]).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-7, "worst drift {worst}");
}

#[test]
fn quantization_error_is_half_a_step_per_bit_width() {
    let mut rng = Rng::new(4);
    let delta = rng.normals(40_000, 0.1);
    for (value_bits, half) in [
        (ValueBits::Eight, 127.5f32),
        (ValueBits::Four, 7.5),
        (ValueBits::Two, 1.5),
    ] {
        let s = settings(4096, 0.05, value_bits);
        let mut residual = vec![0.0; delta.len()];
        let payload = compress(&delta, &mut residual, &s).unwrap();
        let entries: Vec<(usize, f32)> = payload.entries().collect();
        for chunk in entries.chunk_by(|a, b| a.0 / 4096 == b.0 / 4096) {
            let absmax = chunk
                .iter()
                .map(|&(i, _)| delta[i].abs())
                .fold(0.0, f32::max);
            let step = absmax / half;
            for &(i, v) in chunk {
                let err = (delta[i] - v).abs();
                assert!(
                    err <= step * 0.5 * (1.0 + 1e-5),
                    "{value_bits:?}: {err} > {step}/2"
                );
                assert_eq!(residual[i], delta[i] - v);
            }
        }
    }
}

#[test]
fn a_chunk_of_zeros_keeps_its_first_entries_at_scale_zero() {
    let s = settings(100, 0.05, ValueBits::Eight);
    let mut rng = Rng::new(5);
    let mut delta = vec![0.0f32; 200];
    delta[100..].copy_from_slice(&rng.normals(100, 1.0));
    let mut residual = vec![0.0; 200];
    let payload = compress_checked(&delta, &mut residual, &s);
    let zero_chunk: Vec<(usize, f32)> = payload.entries().take(5).collect();
    assert_eq!(
        zero_chunk,
        [(0, 0.0), (1, 0.0), (2, 0.0), (3, 0.0), (4, 0.0)]
    );
    assert!(residual[..100].iter().all(|&r| r == 0.0));
    assert_eq!(
        Payload::decode(&payload.encode().unwrap()).unwrap(),
        payload
    );
}

#[test]
fn non_finite_input_is_refused_and_the_residual_is_untouched() {
    let mut rng = Rng::new(6);
    let delta = rng.normals(10_000, 1.0);
    let residual = rng.normals(10_000, 1.0);
    let s = CompressionSettings::default();
    let cases = [
        (9_000, f32::NAN, 0.0),
        (4_096, f32::INFINITY, 0.0),
        (17, 0.0, f32::NEG_INFINITY),
        (5_000, f32::MAX, f32::MAX), // finite, but the sum overflows
    ];
    for (index, d, r) in cases {
        let mut delta = delta.clone();
        let mut after = residual.clone();
        delta[index] = d;
        after[index] = r;
        let before = bits(&after);
        assert_eq!(
            compress(&delta, &mut after, &s),
            Err(KernelError::NonFinite { index })
        );
        assert_eq!(bits(&after), before);
    }
}

#[test]
fn lengths_that_are_not_a_multiple_of_the_chunk() {
    let mut rng = Rng::new(7);
    for len in [4095, 4097, 10_000, 3 * 4096 + 1] {
        let delta = rng.normals(len, 1.0);
        let mut residual = vec![0.0; len];
        let payload = compress_checked(&delta, &mut residual, &CompressionSettings::default());
        let tail = len % 4096;
        let s = CompressionSettings::default();
        assert_eq!(payload.kept(), len / 4096 * 41 + s.k_for(tail));
        assert!(payload.entries().all(|(i, _)| i < len));
    }
}

#[test]
fn a_one_element_tensor() {
    // Default density keeps round(0.01) = 0 entries: all stays in the residual.
    let mut residual = [0.25f32];
    let payload = compress(&[0.5], &mut residual, &CompressionSettings::default()).unwrap();
    assert_eq!((payload.len(), payload.kept()), (1, 0));
    assert_eq!(residual, [0.75]);
    // Density 1 keeps it: absmax 0.75, code 255, value 127.5 × (0.75 / 127.5).
    let s = settings(4096, 1.0, ValueBits::Eight);
    let mut residual = [0.25f32];
    let payload = compress_checked(&[0.5], &mut residual, &s);
    let value = 127.5 * (0.75f32 / 127.5);
    assert_eq!(payload.entries().collect::<Vec<_>>(), [(0, value)]);
    assert_eq!(residual, [0.75 - value]);
    assert_eq!(decompressed(&payload), [value]);
}

#[test]
fn density_giving_k_zero_sends_nothing() {
    let mut rng = Rng::new(8);
    let delta = rng.normals(9_000, 1.0);
    let residual = vec![0.5; 9_000];
    for density in [0.0, 1e-4] {
        let mut after = residual.clone();
        let payload = compress(
            &delta,
            &mut after,
            &settings(4096, density, ValueBits::Eight),
        )
        .unwrap();
        assert_eq!(payload.kept(), 0);
        assert_eq!(decompressed(&payload), vec![0.0; 9_000]);
        let expected: Vec<f32> = delta.iter().map(|d| 0.5 + d).collect();
        assert_eq!(bits(&after), bits(&expected));
        // Header and one zero scale per chunk: 3 chunks.
        assert_eq!(
            payload.encode().unwrap().len(),
            1 + 3 + (3 + 4 + 1) + 1 + 12 + 1 + 1
        );
    }
}

#[test]
fn density_giving_k_equal_to_the_chunk_keeps_everything() {
    let mut rng = Rng::new(9);
    let delta = rng.normals(5_000, 1.0);
    let mut residual = vec![0.0; 5_000];
    let payload = compress_checked(&delta, &mut residual, &settings(512, 1.0, ValueBits::Two));
    assert_eq!(payload.kept(), 5_000);
    let positions: Vec<usize> = payload.entries().map(|(i, _)| i).collect();
    assert_eq!(positions, (0..5_000).collect::<Vec<_>>());
}

#[test]
fn bad_arguments_are_refused() {
    let bad = settings(0, 0.01, ValueBits::Eight);
    assert_eq!(
        compress(&[1.0], &mut [0.0], &bad),
        Err(KernelError::InvalidSettings(InvalidSettings::ChunkLen(0)))
    );
    let mut residual = [0.0; 3];
    assert_eq!(
        compress(&[1.0, 2.0], &mut residual, &CompressionSettings::default()),
        Err(KernelError::LengthMismatch {
            expected: 2,
            found: 3
        })
    );
    let empty = compress(&[], &mut [], &CompressionSettings::default()).unwrap();
    assert_eq!(
        (empty.len(), empty.chunk_count(), empty.bits_per_param()),
        (0, 0, 0.0)
    );
}
