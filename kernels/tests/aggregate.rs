//! `decompress_into`, `aggregate`, `aggregate_into` and `WeightedMean`: the formula, canonical
//! order, refusals.

mod common;

use common::{bits, Rng};
use p2ptrain_kernels::{
    aggregate, aggregate_into, compress, decompress_into, AggregateInput, KernelError, Payload,
    WeightedMean,
};
use p2ptrain_protocol::{CompressionSettings, Digest, ValueBits};

fn payloads(n: usize, len: usize, s: &CompressionSettings, seed: u64) -> Vec<Payload> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let delta = rng.normals(len, 0.01);
            let mut residual = rng.normals(len, 0.001);
            compress(&delta, &mut residual, s).unwrap()
        })
        .collect()
}

fn inputs<'a>(payloads: &'a [Payload], weights: &[f32]) -> Vec<AggregateInput<'a>> {
    payloads
        .iter()
        .zip(weights)
        .enumerate()
        .map(|(j, (payload, &weight))| AggregateInput {
            key: Digest::of(&[j as u8]),
            payload,
            weight,
        })
        .collect()
}

/// Every ordering of `0..n`, by Heap's algorithm.
fn permutations(n: usize) -> Vec<Vec<usize>> {
    fn go(k: usize, items: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if k <= 1 {
            out.push(items.clone());
            return;
        }
        for i in 0..k {
            go(k - 1, items, out);
            let j = if k.is_multiple_of(2) { i } else { 0 };
            items.swap(j, k - 1);
        }
    }
    let mut out = Vec::new();
    go(n, &mut (0..n).collect(), &mut out);
    out
}

#[test]
fn aggregation_is_the_same_bits_in_every_order() {
    let s = CompressionSettings {
        density: 0.2,
        ..Default::default()
    };
    let payloads = payloads(5, 12_345, &s, 10);
    // Weights that make the order of the float sums matter.
    let listed = inputs(&payloads, &[3.0, 1e-3, 7.25, 0.1, 1234.5]);
    let expected = bits(&aggregate(&listed).unwrap());
    let orders = permutations(5);
    assert_eq!(orders.len(), 120);
    for order in orders {
        let shuffled: Vec<_> = order.iter().map(|&j| listed[j]).collect();
        assert_eq!(
            bits(&aggregate(&shuffled).unwrap()),
            expected,
            "order {order:?}"
        );
    }
}

#[test]
fn aggregation_follows_its_formula() {
    let s = CompressionSettings::default();
    let payloads = payloads(3, 9_000, &s, 11);
    let weights = [2.0f32, 5.0, 0.3];
    let listed = inputs(&payloads, &weights);
    let mut sorted = listed.clone();
    sorted.sort_by_key(|input| input.key);
    let total = sorted.iter().fold(0.0f32, |t, input| t + input.weight);
    let mut expected = vec![0.0f32; 9_000];
    for input in &sorted {
        for (i, v) in input.payload.entries() {
            expected[i] += (input.weight / total) * v;
        }
    }
    assert_eq!(bits(&aggregate(&listed).unwrap()), bits(&expected));
}

#[test]
fn aggregation_refuses_bad_inputs() {
    let s = CompressionSettings::default();
    let same = payloads(2, 5_000, &s, 12);
    assert_eq!(aggregate(&[]), Err(KernelError::NoInputs));

    let mut dup = inputs(&same, &[1.0, 1.0]);
    dup[1].key = dup[0].key;
    assert_eq!(aggregate(&dup), Err(KernelError::DuplicateKey(dup[0].key)));

    for weight in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let bad = inputs(&same, &[1.0, weight]);
        assert!(matches!(
            aggregate(&bad),
            Err(KernelError::InvalidWeight(_))
        ));
    }
    let overflow = inputs(&same, &[f32::MAX, f32::MAX]);
    assert_eq!(
        aggregate(&overflow),
        Err(KernelError::InvalidWeight(f32::INFINITY))
    );

    let shorter = payloads(1, 4_999, &s, 13);
    let other_chunk = payloads(
        1,
        5_000,
        &CompressionSettings {
            chunk_len: 1024,
            ..s
        },
        14,
    );
    for odd in [&shorter[0], &other_chunk[0]] {
        let mixed = [same[0].clone(), odd.clone()];
        let listed = inputs(&mixed, &[1.0, 1.0]);
        assert_eq!(
            aggregate(&listed),
            Err(KernelError::MismatchedPayloads {
                key: listed[1].key,
                len: odd.len(),
                chunk_len: odd.settings().chunk_len,
            })
        );
    }
}

#[test]
fn mixed_densities_and_bit_widths_aggregate() {
    let base = CompressionSettings::default();
    let four = CompressionSettings {
        density: 0.1,
        value_bits: ValueBits::Four,
        ..base
    };
    let mut mixed = payloads(1, 6_000, &base, 15);
    mixed.extend(payloads(1, 6_000, &four, 16));
    let mean = aggregate(&inputs(&mixed, &[1.0, 1.0])).unwrap();
    let mut expected = vec![0.0; 6_000];
    for payload in &mixed {
        decompress_into(payload, 0.5, &mut expected).unwrap();
    }
    assert_eq!(bits(&mean), bits(&expected));
}

#[test]
fn decompress_into_adds_weighted_values() {
    let s = CompressionSettings::default();
    let payload = &payloads(1, 7_000, &s, 17)[0];
    let mut dense = vec![1.0f32; 7_000];
    decompress_into(payload, -2.5, &mut dense).unwrap();
    let mut expected = vec![1.0f32; 7_000];
    for (i, v) in payload.entries() {
        expected[i] += -2.5 * v;
    }
    assert_eq!(bits(&dense), bits(&expected));
}

#[test]
fn decompress_into_refuses_bad_arguments_and_leaves_the_buffer() {
    let payload = &payloads(1, 100, &CompressionSettings::default(), 18)[0];
    let mut short = vec![3.0; 99];
    assert_eq!(
        decompress_into(payload, 1.0, &mut short),
        Err(KernelError::LengthMismatch {
            expected: 100,
            found: 99
        })
    );
    let mut dense = vec![3.0; 100];
    for weight in [f32::NAN, f32::NEG_INFINITY] {
        assert!(matches!(
            decompress_into(payload, weight, &mut dense),
            Err(KernelError::InvalidWeight(_))
        ));
    }
    assert_eq!(dense, vec![3.0; 100]);
}

#[test]
fn aggregate_into_overwrites_the_buffer() {
    let s = CompressionSettings::default();
    let payloads = payloads(3, 10_000, &s, 19);
    let listed = inputs(&payloads, &[1.0, 2.0, 3.0]);
    let mut dense = Rng::new(20).normals(10_000, 5.0);
    aggregate_into(&listed, &mut dense).unwrap();
    assert_eq!(bits(&dense), bits(&aggregate(&listed).unwrap()));

    let mut short = vec![7.0; 9_999];
    assert_eq!(
        aggregate_into(&listed, &mut short),
        Err(KernelError::LengthMismatch {
            expected: 10_000,
            found: 9_999
        })
    );
    assert_eq!(short, vec![7.0; 9_999]);
}

#[test]
fn the_mean_written_in_blocks_is_the_whole_mean() {
    let s = CompressionSettings {
        chunk_len: 256,
        ..CompressionSettings::default()
    };
    // 10_000 is not a multiple of the chunk: the last block is short.
    let payloads = payloads(3, 10_000, &s, 21);
    let listed = inputs(&payloads, &[3.0, 1.0, 2.0]);
    let whole = aggregate(&listed).unwrap();
    let mean = WeightedMean::new(&listed).unwrap();
    assert_eq!((mean.len(), mean.chunk_len()), (10_000, 256));
    for block_chunks in [1, 3, 40] {
        let mut blocks = Vec::new();
        let mut start = 0;
        while start < mean.len() {
            let len = (block_chunks * 256).min(mean.len() - start);
            let mut block = vec![f32::NAN; len];
            mean.write_block(start, &mut block).unwrap();
            blocks.extend(block);
            start += len;
        }
        assert_eq!(bits(&blocks), bits(&whole), "{block_chunks} chunks a block");
    }

    let mut block = vec![7.0; 256];
    let refused = [(100, 256), (256, 100), (9_984, 256)];
    for (start, len) in refused {
        let mut block = vec![7.0; len];
        assert!(
            mean.write_block(start, &mut block).is_err(),
            "{start}+{len}"
        );
        assert_eq!(block, vec![7.0; len]);
    }
    mean.write_block(9_984, &mut block[..16]).unwrap();
    assert_eq!(bits(&block[..16]), bits(&whole[9_984..]));
}

#[test]
fn the_mean_written_sparsely_is_the_whole_mean_at_the_entries_kept() {
    let s = CompressionSettings {
        chunk_len: 256,
        density: 0.05,
        ..CompressionSettings::default()
    };
    let payloads = payloads(3, 10_000, &s, 22);
    let listed = inputs(&payloads, &[3.0, 1.0, 2.0]);
    let whole = aggregate(&listed).unwrap();
    let mean = WeightedMean::new(&listed).unwrap();
    // Reused from block to block, as the outer step does: zeroed again at
    // the offsets written.
    let mut scratch = vec![0.0f32; 3 * 256];
    let mut touched = Vec::new();
    let mut sparse = vec![0.0f32; 10_000];
    let mut start = 0;
    while start < mean.len() {
        let len = (3 * 256).min(mean.len() - start);
        touched.clear();
        mean.write_block_sparse(start, &mut scratch[..len], &mut touched)
            .unwrap();
        assert!(touched.iter().all(|&i| i < len));
        for &i in &touched {
            sparse[start + i] = scratch[i];
        }
        for &i in &touched {
            scratch[i] = 0.0;
        }
        start += len;
    }
    assert_eq!(bits(&sparse), bits(&whole));
    // Every entry a payload keeps was written: three payloads of 5% keep
    // more than 12% of the entries between them, some more than once.
    let kept = sparse.iter().filter(|v| **v != 0.0).count();
    assert!(kept > 1_200, "{kept} entries");

    let mut touched = Vec::new();
    for (start, len) in [(100, 256), (256, 100), (9_984, 256)] {
        let mut block = vec![7.0; len];
        assert!(mean
            .write_block_sparse(start, &mut block, &mut touched)
            .is_err());
        assert_eq!((block, touched.len()), (vec![7.0; len], 0));
    }
}
