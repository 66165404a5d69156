//! Throughput of the kernels on a 25M-entry `f32` buffer (100 MB), beside a
//! plain copy of the same buffer measured in the same run.
//!
//! `cargo bench -p p2ptrain-kernels` runs the criterion group, then prints a
//! summary table from its own median-of-N timings: milliseconds, GB/s of f32
//! input (100 MB over the time), the ratio to the copy's GB/s, and the target.
//! The copy is `copy_from_slice` on one thread; the kernels use the rayon pool.

use std::hint::black_box;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};
use p2ptrain_kernels::{
    aggregate, aggregate_into, compress, decompress_into, AggregateInput, Payload,
};
use p2ptrain_protocol::{CompressionSettings, Digest};

#[path = "../tests/common/mod.rs"]
mod common;

/// Entries in the buffer: a model of 25M parameters.
const N: usize = 25_000_000;
/// Bytes of f32 input.
const BYTES: u64 = 4 * N as u64;
/// Payloads averaged by the aggregate benchmark.
const PEERS: usize = 4;
/// Timed runs per operation in the summary.
const RUNS: usize = 15;

struct Data {
    delta: Vec<f32>,
    residual: Vec<f32>,
    payloads: Vec<Payload>,
}

fn data() -> &'static Data {
    static DATA: OnceLock<Data> = OnceLock::new();
    DATA.get_or_init(|| {
        let mut rng = common::Rng::new(2024);
        let delta = rng.normals(N, 1e-3);
        let residual = rng.normals(N, 1e-4);
        let payloads = (0..PEERS)
            .map(|_| {
                let delta = rng.normals(N, 1e-3);
                let mut residual = vec![0.0; N];
                compress(&delta, &mut residual, &CompressionSettings::default())
                    .expect("finite input")
            })
            .collect();
        Data {
            delta,
            residual,
            payloads,
        }
    })
}

fn inputs(payloads: &[Payload]) -> Vec<AggregateInput<'_>> {
    payloads
        .iter()
        .enumerate()
        .map(|(j, payload)| AggregateInput {
            key: Digest::of(&j.to_le_bytes()),
            payload,
            weight: 1.0 + j as f32,
        })
        .collect()
}

/// The operations, each a closure over its own buffers.
struct Ops {
    dst: Vec<f32>,
    residual: Vec<f32>,
    dense: Vec<f32>,
}

impl Ops {
    fn new() -> Self {
        let data = data();
        Self {
            dst: vec![1.0; N],
            residual: data.residual.clone(),
            dense: vec![0.0; N],
        }
    }

    fn copy(&mut self) {
        self.dst.copy_from_slice(black_box(&data().delta));
    }

    fn compress(&mut self) -> Payload {
        let settings = CompressionSettings::default();
        compress(black_box(&data().delta), &mut self.residual, &settings).expect("finite input")
    }

    fn decompress_into(&mut self) {
        decompress_into(&data().payloads[0], 1.0, &mut self.dense).expect("same length");
    }

    fn aggregate(&mut self) -> Vec<f32> {
        aggregate(&inputs(&data().payloads)).expect("valid inputs")
    }

    fn aggregate_into(&mut self) {
        aggregate_into(&inputs(&data().payloads), &mut self.dense).expect("valid inputs");
    }
}

fn kernels(c: &mut Criterion) {
    let mut ops = Ops::new();
    let mut group = c.benchmark_group("kernels_25M_f32");
    group.throughput(Throughput::Bytes(BYTES));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("copy", |b| b.iter(|| ops.copy()));
    group.bench_function("compress", |b| b.iter(|| ops.compress()));
    group.bench_function("decompress_into", |b| b.iter(|| ops.decompress_into()));
    group.bench_function(BenchmarkId::new("aggregate", PEERS), |b| {
        b.iter(|| ops.aggregate())
    });
    group.bench_function(BenchmarkId::new("aggregate_into", PEERS), |b| {
        b.iter(|| ops.aggregate_into())
    });
    group.finish();
}

criterion_group!(benches, kernels);

/// Median wall time of `RUNS` calls of `op`, after one untimed call.
fn median(mut op: impl FnMut()) -> Duration {
    op();
    let mut times: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            op();
            start.elapsed()
        })
        .collect();
    times.sort_unstable();
    times[RUNS / 2]
}

fn gbps(time: Duration) -> f64 {
    BYTES as f64 / time.as_secs_f64() / 1e9
}

fn summary() {
    let mut ops = Ops::new();
    let copy = median(|| ops.copy());
    let compress = median(|| drop(black_box(ops.compress())));
    let decompress = median(|| ops.decompress_into());
    let aggregate = median(|| drop(black_box(ops.aggregate())));
    let aggregate_into = median(|| ops.aggregate_into());
    let rows = [
        ("copy", copy, "", None),
        (
            "compress",
            compress,
            "<= 50 ms",
            Some(compress <= Duration::from_millis(50)),
        ),
        (
            "decompress_into",
            decompress,
            ">= 0.40 x copy",
            Some(gbps(decompress) >= 0.4 * gbps(copy)),
        ),
        ("aggregate (4, new buffer)", aggregate, "", None),
        ("aggregate_into (4)", aggregate_into, "", None),
    ];
    println!();
    println!(
        "25M f32 (100 MB), default settings (chunk 4096, density 1%, 8-bit), \
         {} rayon threads, median of {RUNS}",
        rayon::current_num_threads()
    );
    println!(
        "{:<26} {:>9} {:>8} {:>8}  {:<15} result",
        "op", "ms", "GB/s", "x copy", "target"
    );
    for (name, time, target, pass) in rows {
        let verdict = match pass {
            Some(true) => "pass",
            Some(false) => "FAIL",
            None => "",
        };
        println!(
            "{:<26} {:>9.2} {:>8.2} {:>8.2}  {:<15} {}",
            name,
            time.as_secs_f64() * 1e3,
            gbps(time),
            gbps(time) / gbps(copy),
            target,
            verdict
        );
    }
    let payload = &data().payloads[0];
    println!(
        "payload: {} bytes, {:.3} bits per parameter ({:.0}x smaller than f32)",
        payload.encoded_len(),
        payload.bits_per_param(),
        32.0 / payload.bits_per_param()
    );
    println!(
        "reference on this machine (shared/reference): PyTorch top-1% + int8 encode \
         509 ms; Hivemind Uniform8Bit compress 91 ms (no top-k)"
    );
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
