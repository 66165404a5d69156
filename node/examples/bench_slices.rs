//! A checkpoint's slices, each end's work: the BLAKE3 tree a node builds
//! before it serves a checkpoint's first slice to a joiner
//! (`net::slices::Outboard::of`), and the joiner's check of every slice it
//! receives (`net::slices::verify_slice`). Beside each, in the same run,
//! the `bao` crate's encoder and decoder over the same bytes (how the node
//! did both before: one chunk after another, on one thread).
//!
//! `cargo run --release -p p2ptrain-node --example bench_slices -- [--mb 204] [--runs 5] [--threads N]`
//!
//! 204 MB is the checkpoint of the 25.5M-parameter model of the round-sync
//! benchmark; GPT-2 small's is 995 MB. The slices are checked one after
//! another on one thread, as a joiner's event loop checks them. Prints the
//! median of each and the ratio, after checking that both ways agree.

use std::io::{Cursor, Read};
use std::sync::Arc;
use std::time::Instant;

use p2ptrain_node::net::slices::{plan, verify_slice, Content, Outboard, ReadSeek};

/// A checkpoint's tree built and its slices checked, two ways each.
#[derive(clap::Parser)]
struct Args {
    /// The checkpoint's size in MB (10^6 bytes).
    #[arg(long, default_value_t = 204, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    mb: u64,
    /// Timed runs of each.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// Threads of the rayon pool (default: one per core).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Args { mb, runs, threads } = clap::Parser::parse();
    let mut pool = rayon::ThreadPoolBuilder::new();
    if let Some(threads) = threads {
        pool = pool.num_threads(usize::from(threads));
    }
    let pool = pool.build()?;
    let len = usize::try_from(mb * 1_000_000)?;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let bytes: Arc<Vec<u8>> = (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect::<Vec<u8>>()
        .into();

    let (mut built, mut encoded, mut checked, mut decoded) = (vec![], vec![], vec![], vec![]);
    let slices = plan(bytes.len() as u64);
    for run in 0..=runs {
        let started = Instant::now();
        let outboard = pool.install(|| Outboard::of(Shared(bytes.clone())))?;
        let built_s = started.elapsed().as_secs_f64();

        let started = Instant::now();
        let (tree, hash) = bao_encoder(&bytes)?;
        let encoded_s = started.elapsed().as_secs_f64();
        drop(tree);
        if hash.as_bytes() != outboard.hash().as_bytes() {
            return Err("the two trees disagree on the hash".into());
        }

        let cut: Vec<Vec<u8>> = slices
            .iter()
            .map(|&(start, len)| outboard.slice(start, len))
            .collect::<Result<_, _>>()?;
        let started = Instant::now();
        for (&(start, len), slice) in slices.iter().zip(&cut) {
            let bytes = verify_slice(&outboard.hash(), outboard.len(), start, len, slice)?;
            std::hint::black_box(bytes);
        }
        let checked_s = started.elapsed().as_secs_f64();

        let started = Instant::now();
        for (&(start, len), slice) in slices.iter().zip(&cut) {
            let mut bytes = Vec::with_capacity(len as usize);
            bao::decode::SliceDecoder::new(&slice[..], &hash, start, len)
                .read_to_end(&mut bytes)?;
            std::hint::black_box(bytes);
        }
        let decoded_s = started.elapsed().as_secs_f64();

        if run > 0 {
            built.push(built_s);
            encoded.push(encoded_s);
            checked.push(checked_s);
            decoded.push(decoded_s);
        }
    }
    let threads = pool.current_num_threads();
    let line = |what: &str, ours: f64, ours_how: &str, theirs: f64, theirs_what: &str| {
        println!(
            "{mb} MB, {what}: {:.1} ms ({:.2} GB/s, {ours_how}), bao's {theirs_what} {:.1} ms ({:.2} GB/s, one thread): {:.2}x",
            ours * 1e3,
            mb as f64 / 1e3 / ours,
            theirs * 1e3,
            mb as f64 / 1e3 / theirs,
            theirs / ours,
        );
    };
    line(
        "the tree built (Outboard::of)",
        median(&mut built),
        &format!("{threads} threads"),
        median(&mut encoded),
        "encoder",
    );
    line(
        "every slice checked (verify_slice)",
        median(&mut checked),
        "one thread",
        median(&mut decoded),
        "decoder",
    );
    Ok(())
}

/// Bytes in memory, shared with the benchmark (as a node's state is
/// shared with the tree that serves it).
struct Shared(Arc<Vec<u8>>);

impl Content for Shared {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }

    fn reader(&self) -> std::io::Result<Box<dyn ReadSeek + '_>> {
        Ok(Box::new(Cursor::new(self.0.as_slice())))
    }
}

/// The tree as the node built it before: `bao`'s outboard encoder fed
/// through a reader.
fn bao_encoder(bytes: &[u8]) -> std::io::Result<(Vec<u8>, bao::Hash)> {
    let mut tree = Vec::new();
    let mut encoder = bao::encode::Encoder::new_outboard(Cursor::new(&mut tree));
    std::io::copy(
        &mut Cursor::new(bytes).take(bytes.len() as u64),
        &mut encoder,
    )?;
    let hash = encoder.finalize()?;
    drop(encoder);
    Ok((tree, hash))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
