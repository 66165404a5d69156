//! pnet's cipher, XSalsa20, as a private swarm's nodes run it
//! (`net::private::XSalsa20`), beside the `salsa20` crate that libp2p's own
//! pnet uses, in the same run: every byte a private swarm moves passes it
//! once on each end.
//!
//! `cargo run --release -p p2ptrain-node --example bench_xsalsa20 -- [--kib 1024] [--runs 200]`
//!
//! Prints the throughput of each on one thread (median of five timings of
//! `runs` buffers each) and the ratio.

use std::time::Instant;

use p2ptrain_node::net::private::XSalsa20;
use salsa20::cipher::{KeyIvInit, StreamCipher};

/// XSalsa20 here beside the crate libp2p-pnet uses.
#[derive(clap::Parser)]
struct Args {
    /// Size of each buffer encrypted, in KiB.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1 << 20))]
    kib: u32,
    /// Buffers per timing.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
}

fn main() {
    let args: Args = clap::Parser::parse();
    let (key, nonce) = ([7u8; 32], [9u8; 24]);
    let mut buffer = vec![0u8; (args.kib as usize) << 10];
    let mut ours = XSalsa20::new(&key, &nonce);
    let mut theirs = salsa20::XSalsa20::new(&key.into(), &nonce.into());
    let ours_bps = throughput(&mut buffer, args.runs, |b| ours.apply_keystream(b));
    let theirs_bps = throughput(&mut buffer, args.runs, |b| theirs.apply_keystream(b));
    println!("buffers of {} KiB, one thread", args.kib);
    println!(
        "  salsa20 crate (libp2p-pnet): {:7.0} MB/s",
        theirs_bps / 1e6
    );
    println!("  p2pnode's XSalsa20:          {:7.0} MB/s", ours_bps / 1e6);
    println!(
        "  ratio:                       {:7.2}x",
        ours_bps / theirs_bps
    );
}

/// Bytes per second of `apply` over `buffer`, median of five timings.
fn throughput(buffer: &mut [u8], runs: u32, mut apply: impl FnMut(&mut [u8])) -> f64 {
    apply(buffer);
    let mut rates: Vec<f64> = (0..5)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..runs {
                apply(buffer);
            }
            (buffer.len() as f64 * f64::from(runs)) / started.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    rates[2]
}
