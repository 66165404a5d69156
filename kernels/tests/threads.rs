//! The thread count never changes a result.

mod common;

use common::{bits, Rng};
use p2ptrain_kernels::{aggregate, compress, decompress_into, AggregateInput};
use p2ptrain_protocol::{CompressionSettings, Digest, ValueBits};

/// Everything the kernels produce from one seeded input, as bytes and bits.
fn run_all() -> (Vec<Vec<u8>>, Vec<Vec<u32>>) {
    let mut rng = Rng::new(40);
    let n = 300_001;
    let s = CompressionSettings {
        value_bits: ValueBits::Four,
        density: 0.03,
        ..Default::default()
    };
    let mut payloads = Vec::new();
    let mut outputs = Vec::new();
    for _ in 0..3 {
        let delta = rng.normals(n, 1e-2);
        let mut residual = rng.normals(n, 1e-3);
        payloads.push(compress(&delta, &mut residual, &s).unwrap());
        outputs.push(bits(&residual));
    }
    let mut dense = rng.normals(n, 1.0);
    decompress_into(&payloads[0], 0.7, &mut dense).unwrap();
    outputs.push(bits(&dense));
    let inputs: Vec<_> = payloads
        .iter()
        .enumerate()
        .map(|(j, payload)| AggregateInput {
            key: Digest::of(&[j as u8]),
            payload,
            weight: 1.0 + j as f32,
        })
        .collect();
    outputs.push(bits(&aggregate(&inputs).unwrap()));
    let encoded = payloads.iter().map(|p| p.encode().unwrap()).collect();
    (encoded, outputs)
}

#[test]
fn one_thread_and_many_give_the_same_bytes() {
    let pooled = run_all();
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        assert!(pool.install(run_all) == pooled, "{threads} threads differ");
    }
}
