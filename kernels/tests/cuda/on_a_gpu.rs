//! The tests proper, with a GPU: each prints that it was skipped and passes
//! where the build has CUDA but the machine has no device.

use std::sync::Arc;

use p2ptrain_kernels::cuda::cudarc::driver::{CudaContext, CudaStream};
use p2ptrain_kernels::cuda::{DeviceKernels, DeviceResidual};
use p2ptrain_kernels::{aggregate, compress, decompress_into, AggregateInput, KernelError};
use p2ptrain_protocol::{CompressionSettings, Digest, ValueBits};

/// The kernels on GPU 0, or `None` (with a note) where there is none.
fn device(test: &str) -> Option<(Arc<CudaStream>, DeviceKernels)> {
    let stream = match CudaContext::new(0) {
        Ok(context) => context.default_stream(),
        Err(e) => {
            eprintln!("{test}: skipped, no CUDA device ({e})");
            return None;
        }
    };
    let kernels = DeviceKernels::new(stream.clone()).expect("the kernels compile");
    Some((stream, kernels))
}

/// A small deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Values of many magnitudes, with ties, zeros of both signs and
    /// subnormals mixed in.
    fn values(&mut self, len: usize) -> Vec<f32> {
        (0..len)
            .map(|_| match self.next() % 16 {
                0 => 0.0,
                1 => -0.0,
                2 => 0.25,
                3 => -0.25,
                4 => f32::from_bits(1 + (self.next() % 1000) as u32),
                _ => (self.unit() - 0.5) * 10f32.powi((self.next() % 9) as i32 - 6),
            })
            .collect()
    }
}

fn settings(chunk_len: u32, density: f32, value_bits: ValueBits) -> CompressionSettings {
    CompressionSettings {
        chunk_len,
        density,
        value_bits,
    }
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn compress_matches_the_cpu_bit_for_bit() {
    let Some((stream, kernels)) = device("compress_matches_the_cpu_bit_for_bit") else {
        return;
    };
    let mut rng = Rng(7);
    let cases = [
        (100_000, settings(4096, 0.01, ValueBits::Eight)),
        // The register path at its limit (k = 256), and with a short last
        // chunk.
        (100_000, settings(4096, 0.0625, ValueBits::Eight)),
        (70_001, settings(4096, 0.05, ValueBits::Four)),
        (100_003, settings(4096, 0.5, ValueBits::Four)),
        (65_536, settings(1024, 0.25, ValueBits::Two)),
        (50_001, settings(20_000, 0.03, ValueBits::Eight)),
        (4_095, settings(4096, 1.0, ValueBits::Eight)),
        (9_000, settings(1, 1.0, ValueBits::Two)),
        (12_345, settings(333, 0.0, ValueBits::Eight)),
    ];
    for (len, settings) in cases {
        let mut cpu_residual = rng.values(len);
        let mut gpu_residual = DeviceResidual::from_host(&stream, &cpu_residual).unwrap();
        // Three rounds, so the residual carried over is exercised too.
        for round in 0..3 {
            let delta = rng.values(len);
            let expected = compress(&delta, &mut cpu_residual, &settings).unwrap();
            let on_device = stream.clone_htod(&delta).unwrap();
            let found = kernels
                .compress(&on_device.as_view(), &mut gpu_residual, &settings)
                .unwrap();
            assert_eq!(
                found.encode().unwrap(),
                expected.encode().unwrap(),
                "{len} {settings:?} round {round}"
            );
            let residual = gpu_residual.to_host(&stream).unwrap();
            assert_eq!(
                bits(&residual),
                bits(&cpu_residual),
                "{len} {settings:?} round {round}"
            );
        }
    }
}

#[test]
fn ties_everywhere_match_the_cpu() {
    let Some((stream, kernels)) = device("ties_everywhere_match_the_cpu") else {
        return;
    };
    // All equal, then two magnitudes only: the kept set is decided by index.
    // Then a hundred equal largest entries per chunk among small distinct
    // ones: few enough candidates to be ranked from registers.
    let constant = vec![0.5f32; 40_000];
    let two: Vec<f32> = (0..40_000)
        .map(|i| if i % 3 == 0 { -2.0 } else { 1.0 })
        .collect();
    let few_largest: Vec<f32> = (0..40_000)
        .map(|i| {
            if i % 41 == 0 {
                2.0
            } else {
                1e-3 * (i % 977) as f32
            }
        })
        .collect();
    for delta in [constant, two, few_largest] {
        for density in [0.01, 0.3, 0.9] {
            let settings = settings(4096, density, ValueBits::Eight);
            let mut cpu_residual = vec![0.0; delta.len()];
            let expected = compress(&delta, &mut cpu_residual, &settings).unwrap();
            let mut gpu_residual = DeviceResidual::zeros(&stream, delta.len()).unwrap();
            let on_device = stream.clone_htod(&delta).unwrap();
            let found = kernels
                .compress(&on_device.as_view(), &mut gpu_residual, &settings)
                .unwrap();
            assert_eq!(found, expected, "density {density}");
            assert_eq!(
                bits(&gpu_residual.to_host(&stream).unwrap()),
                bits(&cpu_residual)
            );
        }
    }
}

#[test]
fn non_finite_input_is_refused_and_the_residual_kept() {
    let Some((stream, kernels)) = device("non_finite_input_is_refused_and_the_residual_kept")
    else {
        return;
    };
    let mut rng = Rng(11);
    let settings = CompressionSettings::default();
    let mut delta = rng.values(30_000);
    delta[20_000] = f32::INFINITY;
    delta[12_345] = f32::NAN;
    let residual = rng.values(30_000);
    let mut cpu_residual = residual.clone();
    let expected = compress(&delta, &mut cpu_residual, &settings).unwrap_err();
    assert_eq!(expected, KernelError::NonFinite { index: 12_345 });
    let mut gpu_residual = DeviceResidual::from_host(&stream, &residual).unwrap();
    let on_device = stream.clone_htod(&delta).unwrap();
    let found = kernels
        .compress(&on_device.as_view(), &mut gpu_residual, &settings)
        .unwrap_err();
    assert_eq!(found, expected);
    assert_eq!(
        bits(&gpu_residual.to_host(&stream).unwrap()),
        bits(&residual)
    );
}

#[test]
fn decompress_and_aggregate_match_the_cpu_bit_for_bit() {
    let Some((stream, kernels)) = device("decompress_and_aggregate_match_the_cpu_bit_for_bit")
    else {
        return;
    };
    let mut rng = Rng(23);
    let len = 200_001;
    let settings = settings(4096, 0.1, ValueBits::Eight);
    let payloads: Vec<_> = (0..5)
        .map(|_| compress(&rng.values(len), &mut vec![0.0; len], &settings).unwrap())
        .collect();

    let start = rng.values(len);
    let mut expected = start.clone();
    decompress_into(&payloads[0], 0.37, &mut expected).unwrap();
    let mut dense = stream.clone_htod(&start).unwrap();
    kernels
        .decompress_into(&payloads[0], 0.37, &mut dense)
        .unwrap();
    assert_eq!(bits(&stream.clone_dtoh(&dense).unwrap()), bits(&expected));

    let inputs: Vec<AggregateInput<'_>> = payloads
        .iter()
        .enumerate()
        .map(|(i, payload)| AggregateInput {
            key: Digest::of(&[i as u8]),
            payload,
            weight: 1000.0 + 37.0 * i as f32,
        })
        .collect();
    let expected = aggregate(&inputs).unwrap();
    let mut dense = stream.clone_htod(&rng.values(len)).unwrap();
    kernels.aggregate_into(&inputs, &mut dense).unwrap();
    assert_eq!(bits(&stream.clone_dtoh(&dense).unwrap()), bits(&expected));

    let mut wrong = stream.alloc_zeros::<f32>(len - 1).unwrap();
    assert!(matches!(
        kernels.aggregate_into(&inputs, &mut wrong),
        Err(KernelError::LengthMismatch { .. })
    ));
}
