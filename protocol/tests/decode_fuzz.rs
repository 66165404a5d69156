//! One million random and mutated inputs through every decoder: each gives a
//! value or an error, never a panic, and no decode allocates more than its
//! type's `MAX_LEN`.
//!
//! This file holds a single test so that the counting allocator below sees
//! only the decoding under test.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use p2ptrain_protocol::codec::{self, Message};
use p2ptrain_protocol::{
    CheckpointManifest, Commit, Contribution, Equivocation, RoundRecord, RunManifest, Signed,
};

struct CountingAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let live = LIVE.fetch_add(new_size, Ordering::Relaxed) + new_size;
        PEAK.fetch_max(live, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

/// xorshift64*: a fixed stream, so a failure names a reproducible input.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Decodes `input` as `T` and returns the most it allocated at once.
fn decode_measured<T: Message>(input: &[u8], accepted: &mut usize) -> usize {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let result = codec::decode::<T>(input);
    let peak = PEAK.load(Ordering::Relaxed) - before;
    if let Ok(value) = &result {
        *accepted += 1;
        assert_eq!(
            codec::encode(value).unwrap(),
            input,
            "a decoded value re-encodes to other bytes"
        );
    }
    drop(result);
    assert!(
        peak <= T::MAX_LEN,
        "decoding {} bytes as {} allocated {peak} bytes (limit {})\ninput: {}",
        input.len(),
        std::any::type_name::<T>(),
        T::MAX_LEN,
        hex::encode(input),
    );
    peak
}

/// Length prefixes that claim far more than the input holds.
const BOMBS: [&[u8]; 4] = [
    &[0xfb, 0xff, 0xff],
    &[0xfc, 0xff, 0xff, 0xff, 0x7f],
    &[0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f],
    &[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let seed = &seeds[rng.below(seeds.len())];
    let mut input = seed.clone();
    match rng.below(7) {
        0 => (0..rng.below(300)).map(|_| rng.next() as u8).collect(),
        1 => {
            for _ in 0..=rng.below(4) {
                let at = rng.below(input.len());
                input[at] ^= 1 << rng.below(8);
            }
            input
        }
        2 => {
            let at = rng.below(input.len());
            input[at] = [0x00, 0xfb, 0xfc, 0xfd, 0xfe, 0xff][rng.below(6)];
            input
        }
        3 => {
            input.truncate(rng.below(input.len()));
            input
        }
        4 => {
            let at = rng.below(input.len());
            let bomb = BOMBS[rng.below(BOMBS.len())];
            input.splice(at..at, bomb.iter().copied());
            input
        }
        5 => {
            let other = &seeds[rng.below(seeds.len())];
            let cut = rng.below(input.len());
            input.truncate(cut);
            input.extend_from_slice(&other[rng.below(other.len())..]);
            input
        }
        _ => {
            let at = rng.below(input.len());
            let len = rng.below(input.len() - at + 1);
            input.drain(at..at + len);
            input
        }
    }
}

#[test]
fn a_million_hostile_inputs_never_panic_nor_overallocate() {
    let seeds: Vec<Vec<u8>> = vec![
        codec::encode(&common::manifest()).unwrap(),
        codec::encode(&common::contribution(1)).unwrap(),
        codec::encode(&common::signed_contribution(2)).unwrap(),
        codec::encode(&common::commit(1)).unwrap(),
        codec::encode(&common::signed_commit(3)).unwrap(),
        codec::encode(&common::round_record()).unwrap(),
        codec::encode(&common::checkpoint_manifest()).unwrap(),
        codec::encode(&Equivocation {
            first: common::signed_contribution(2),
            second: common::signed_contribution(4),
        })
        .unwrap(),
    ];
    let mut rng = Rng(0x0005_eed0_f9e7);
    let mut accepted = 0;
    let mut largest = 0;
    const INPUTS: usize = 1_000_000;
    for _ in 0..INPUTS {
        let input = mutate(&mut rng, &seeds);
        let acc = &mut accepted;
        largest = largest
            .max(decode_measured::<RunManifest>(&input, acc))
            .max(decode_measured::<Contribution>(&input, acc))
            .max(decode_measured::<Signed<Contribution>>(&input, acc))
            .max(decode_measured::<Commit>(&input, acc))
            .max(decode_measured::<Signed<Commit>>(&input, acc))
            .max(decode_measured::<RoundRecord>(&input, acc))
            .max(decode_measured::<CheckpointManifest>(&input, acc))
            .max(decode_measured::<Equivocation>(&input, acc));
    }
    // The mutations must reach past the first checks: some inputs still
    // decode, most do not.
    assert!(accepted > INPUTS / 100, "only {accepted} inputs decoded");
    assert!(accepted < INPUTS, "{accepted} of {INPUTS} inputs decoded");
    assert!(largest > 0);
    eprintln!(
        "decoded {accepted} of {} attempts; largest allocation {largest} bytes",
        8 * INPUTS
    );
}
