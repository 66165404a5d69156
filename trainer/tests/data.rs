//! The data layer through its public API: the folder walk, the seeded
//! shuffle, the split, the shards, the sampler and the errors.
//!
//! Pinned orders and window starts come from this reference script, which
//! writes out SplitMix64, the unbiased bounded draw and the Fisher–Yates
//! shuffle independently of the crate:
//!
//! ```python
//! M = 2**64 - 1
//! class R:
//!     def __init__(s, seed): s.s = seed
//!     def next(s):
//!         s.s = (s.s + 0x9E3779B97F4A7C15) & M
//!         z = s.s
//!         z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
//!         z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
//!         return z ^ (z >> 31)
//!     def below(s, b):
//!         t = (2**64 - b) % b
//!         while True:
//!             p = s.next() * b
//!             if p & M >= t: return p >> 64
//! def shuffle(seed, items):
//!     r = R(seed); items = list(items)
//!     for i in range(len(items) - 1, 0, -1):
//!         j = r.below(i + 1); items[i], items[j] = items[j], items[i]
//!     return items
//! shuffle(7, "abcde")   # ['d', 'e', 'c', 'a', 'b']
//! shuffle(8, "abcde")   # ['a', 'b', 'e', 'c', 'd']
//! shuffle(3, ["a/y/x.txt", "a/z.txt", "b.txt"])  # ['b.txt', 'a/z.txt', 'a/y/x.txt']
//! r = R(42); [r.below(252) for _ in range(5)]    # [186, 40, 70, 86, 9]
//! r = R(43); [r.below(252) for _ in range(5)]    # [183, 154, 109, 209, 0]
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use p2ptrain_trainer::data::{Corpus, DataError, Sampler, VOCAB_SIZE};

/// An empty folder of this test's own under the target's scratch space.
fn fresh_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("data-tests")
        .join(name);
    if dir.exists() {
        fs::remove_dir_all(&dir).unwrap();
    }
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `contents` at `dir/relative`, creating folders on the way.
fn write(dir: &Path, relative: &str, contents: &str) {
    let path = dir.join(relative);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, contents).unwrap();
}

/// Offset of `part` inside `whole`, which must contain it.
fn offset(whole: &[u8], part: &[u8]) -> usize {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    assert!(start + part.len() <= whole.len());
    start
}

/// Row `r` of a batch as the `context_len + 1` tokens it was cut from.
fn window(inputs: &[u32], targets: &[u32], context_len: usize, r: usize) -> Vec<u8> {
    let row = r * context_len..(r + 1) * context_len;
    let mut tokens: Vec<u8> = inputs[row.clone()]
        .iter()
        .map(|&t| u8::try_from(t).unwrap())
        .collect();
    tokens.push(u8::try_from(targets[row.end - 1]).unwrap());
    tokens
}

/// `(needed, found)` of a [`DataError::TooShort`].
fn too_short(err: DataError) -> (usize, usize) {
    match err {
        DataError::TooShort { needed, found } => (needed, found),
        other => panic!("expected TooShort, got {other:?}"),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn folder_walk_is_recursive_sorted_and_skips_hidden_and_empty_files() {
    let dir = fresh_dir("walk");
    write(&dir, "b.txt", "B");
    write(&dir, "a/z.txt", "AZ");
    write(&dir, "a/y/x.txt", "AYX");
    write(&dir, ".hidden.txt", "hidden");
    write(&dir, ".git/config", "git");
    write(&dir, "a/.secret", "secret");
    write(&dir, "a/empty.txt", "");

    // Sorted: a/y/x.txt, a/z.txt, b.txt; seed 3 puts them in reverse.
    let corpus = Corpus::load(&dir, 3).unwrap();
    assert_eq!(corpus.documents(), 3);
    assert_eq!(corpus.tokens(), b"B\nAZ\nAYX");
}

#[test]
fn file_creation_order_does_not_change_the_stream() {
    let first = fresh_dir("order-first");
    let second = fresh_dir("order-second");
    for name in ["m.txt", "c/d.txt", "k.txt", "c/a.txt", "z/q.txt"] {
        write(&first, name, name);
    }
    for name in ["z/q.txt", "c/a.txt", "k.txt", "c/d.txt", "m.txt"] {
        write(&second, name, name);
    }
    let a = Corpus::load(&first, 11).unwrap();
    let b = Corpus::load(&second, 11).unwrap();
    assert_eq!(a.tokens(), b.tokens());
    assert_eq!(a.documents(), 5);
}

#[cfg(unix)]
#[test]
fn symbolic_links_inside_a_folder_are_skipped_but_a_linked_root_is_followed() {
    let dir = fresh_dir("links");
    write(&dir, "data/real.txt", "real");
    write(&dir, "outside.txt", "outside");
    std::os::unix::fs::symlink(dir.join("outside.txt"), dir.join("data/link.txt")).unwrap();
    std::os::unix::fs::symlink(dir.join("data"), dir.join("data/loop")).unwrap();
    std::os::unix::fs::symlink(dir.join("data"), dir.join("root")).unwrap();

    let corpus = Corpus::load(dir.join("root"), 0).unwrap();
    assert_eq!(corpus.documents(), 1);
    assert_eq!(corpus.tokens(), b"real");
}

#[test]
fn a_single_file_is_one_document() {
    let dir = fresh_dir("single");
    write(&dir, ".notes.txt", "to be, or not to be");
    // A hidden path named directly is still read.
    let corpus = Corpus::load(dir.join(".notes.txt"), 5).unwrap();
    assert_eq!(corpus.documents(), 1);
    assert_eq!(corpus.tokens(), b"to be, or not to be");
}

#[test]
fn same_seed_gives_the_same_shuffle_and_another_seed_another() {
    let dir = fresh_dir("shuffle");
    for name in ["a", "b", "c", "d", "e"] {
        write(&dir, &format!("{name}.txt"), name);
    }
    let seven = Corpus::load(&dir, 7).unwrap();
    assert_eq!(seven.tokens(), b"d\ne\nc\na\nb");
    assert_eq!(Corpus::load(&dir, 7).unwrap().tokens(), seven.tokens());
    assert_eq!(Corpus::load(&dir, 8).unwrap().tokens(), b"a\nb\ne\nc\nd");
    assert_eq!(seven.into_tokens(), b"d\ne\nc\na\nb");
}

#[test]
fn split_sizes_are_exact() {
    let text: Vec<u8> = (0..1_000u32).map(|i| (i % 251) as u8).collect();
    let corpus = Corpus::from_bytes(text.clone());
    assert_eq!(corpus.train().len(), 900);
    assert_eq!(corpus.validation().len(), 100);
    assert_eq!([corpus.train(), corpus.validation()].concat(), text);

    let quarter = corpus.with_validation_fraction(0.25).unwrap();
    assert_eq!(quarter.train(), &text[..750]);
    assert_eq!(quarter.validation(), &text[750..]);

    let none = quarter.with_validation_fraction(0.0).unwrap();
    assert_eq!(none.train().len(), 1_000);
    assert_eq!(none.validation().len(), 0);

    // Three files of 10, 20 and 30 bytes and two separators: 62 tokens, of
    // which round(6.2) = 6 are validation.
    let dir = fresh_dir("split");
    write(&dir, "a.txt", &"a".repeat(10));
    write(&dir, "b.txt", &"b".repeat(20));
    write(&dir, "c.txt", &"c".repeat(30));
    let loaded = Corpus::load(&dir, 1).unwrap();
    assert_eq!(loaded.tokens().len(), 62);
    assert_eq!(loaded.train().len(), 56);
    assert_eq!(loaded.validation().len(), 6);
}

#[test]
fn validation_fraction_outside_zero_to_one_is_refused() {
    for fraction in [1.0, -0.1, 1.5, f64::NAN] {
        let err = Corpus::from_bytes("abc")
            .with_validation_fraction(fraction)
            .unwrap_err();
        assert!(matches!(err, DataError::BadFraction { .. }), "{err:?}");
    }
}

#[test]
fn shards_are_disjoint_in_order_and_cover_the_training_part() {
    let text: Vec<u8> = (0..1_003u32).map(|i| (i % 256) as u8).collect();
    let corpus = Corpus::from_bytes(text);
    let train = corpus.train();
    assert_eq!(train.len(), 903);

    let lens: Vec<usize> = (0..4).map(|i| corpus.shard(i, 4).unwrap().len()).collect();
    assert_eq!(lens, [225, 226, 226, 226]);

    for peers in 1..=7 {
        let mut next = 0;
        for peer in 0..peers {
            let shard = corpus.shard(peer, peers).unwrap();
            assert_eq!(offset(train, shard), next, "peer {peer} of {peers}");
            next += shard.len();
        }
        assert_eq!(next, train.len(), "{peers} peers");
    }
}

#[test]
fn shard_requests_naming_no_peer_are_refused() {
    let corpus = Corpus::from_bytes("some text to shard");
    for (peer_index, peer_count) in [(0, 0), (4, 4), (5, 4)] {
        let err = corpus.shard(peer_index, peer_count).unwrap_err();
        assert!(
            matches!(err, DataError::BadShard { peer_index: i, peer_count: n } if i == peer_index && n == peer_count),
            "{err:?}"
        );
    }
}

#[test]
fn a_shard_shorter_than_one_window_is_too_short() {
    let corpus = Corpus::from_bytes("twenty bytes of text")
        .with_validation_fraction(0.0)
        .unwrap();
    let shard = corpus.shard(3, 4).unwrap();
    assert_eq!(shard, b" text");
    let err = Sampler::new(shard, 0).next_batch(1, 8).unwrap_err();
    assert_eq!(too_short(err), (9, 5));
}

#[test]
fn sampler_draws_the_pinned_window_starts() {
    let stream: Vec<u8> = (0..=255).collect();
    for (seed, starts) in [(42, [186, 40, 70, 86, 9]), (43, [183, 154, 109, 209, 0])] {
        let batch = Sampler::new(stream.clone(), seed).next_batch(5, 4).unwrap();
        let inputs: Vec<u32> = starts.iter().flat_map(|&s| s..s + 4).collect();
        let targets: Vec<u32> = starts.iter().flat_map(|&s| s + 1..s + 5).collect();
        assert_eq!(batch.inputs, inputs, "seed {seed}");
        assert_eq!(batch.targets, targets, "seed {seed}");
        assert_eq!((batch.batch_size, batch.context_len), (5, 4));
    }
}

#[test]
fn same_seed_gives_the_same_batches_and_another_seed_others() {
    let shard = Corpus::bundled().shard(0, 2).unwrap().to_vec();
    let mut a = Sampler::new(shard.clone(), 5);
    let mut b = Sampler::new(shard.clone(), 5);
    let mut c = Sampler::new(shard, 6);
    for _ in 0..3 {
        let batch = a.next_batch(4, 32).unwrap();
        assert_eq!(batch, b.next_batch(4, 32).unwrap());
        assert_ne!(batch, c.next_batch(4, 32).unwrap());
    }
}

#[test]
fn targets_are_inputs_shifted_by_one_and_windows_come_from_the_shard() {
    let corpus = Corpus::bundled();
    let shard = corpus.shard(2, 3).unwrap();
    let context_len = 32;
    let batch = Sampler::new(shard, 1).next_batch(16, context_len).unwrap();
    assert_eq!(batch.inputs.len(), 16 * context_len);
    assert_eq!(batch.targets.len(), 16 * context_len);
    for r in 0..16 {
        let row = r * context_len..(r + 1) * context_len;
        assert_eq!(
            batch.inputs[row.start + 1..row.end],
            batch.targets[row.start..row.end - 1]
        );
        assert!(contains(
            shard,
            &window(&batch.inputs, &batch.targets, context_len, r)
        ));
    }
    assert!(batch.inputs.iter().all(|&t| (t as usize) < VOCAB_SIZE));
}

#[test]
fn a_stream_of_exactly_one_window_always_yields_it() {
    let batch = Sampler::new("abcde", 99).next_batch(3, 4).unwrap();
    assert_eq!(batch.inputs, [97, 98, 99, 100].repeat(3));
    assert_eq!(batch.targets, [98, 99, 100, 101].repeat(3));
}

#[test]
fn too_short_stream_is_refused_and_leaves_the_sampler_unchanged() {
    let mut sampler = Sampler::new("abcd", 3);
    let err = sampler.next_batch(2, 4).unwrap_err();
    assert_eq!(too_short(err), (5, 4));
    let after = sampler.next_batch(8, 2).unwrap();
    assert_eq!(after, Sampler::new("abcd", 3).next_batch(8, 2).unwrap());
}

#[test]
fn validation_batches_are_fixed_and_drawn_from_the_validation_part() {
    let corpus = Corpus::bundled();
    let batches = corpus.validation_batches(3, 4, 16, 9).unwrap();
    assert_eq!(batches.len(), 3);
    assert_eq!(batches, corpus.validation_batches(3, 4, 16, 9).unwrap());
    assert_ne!(batches, corpus.validation_batches(3, 4, 16, 10).unwrap());
    for batch in &batches {
        assert_eq!((batch.batch_size, batch.context_len), (4, 16));
        for r in 0..4 {
            let tokens = window(&batch.inputs, &batch.targets, 16, r);
            assert!(contains(corpus.validation(), &tokens));
        }
    }
}

#[test]
fn validation_batches_without_a_validation_part_are_too_short() {
    let corpus = Corpus::from_bytes("all of it is training")
        .with_validation_fraction(0.0)
        .unwrap();
    let err = corpus.validation_batches(1, 1, 16, 0).unwrap_err();
    assert_eq!(too_short(err), (17, 0));
}

#[test]
fn empty_folder_is_refused_with_its_path() {
    let dir = fresh_dir("empty");
    let err = Corpus::load(&dir, 0).unwrap_err();
    assert!(
        matches!(&err, DataError::Empty { path } if path == &dir),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "no data under {}: no non-empty, visible file",
            dir.display()
        )
    );

    // Only hidden and empty files count as nothing too.
    write(&dir, ".hidden", "hidden");
    write(&dir, "sub/empty.txt", "");
    let err = Corpus::load(&dir, 0).unwrap_err();
    assert!(
        matches!(&err, DataError::Empty { path } if path == &dir),
        "{err:?}"
    );
}

#[test]
fn missing_path_is_an_io_error_naming_it() {
    let missing = fresh_dir("missing").join("nowhere");
    let err = Corpus::load(&missing, 0).unwrap_err();
    match &err {
        DataError::Io { path, error } => {
            assert_eq!(path, &missing);
            assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Io, got {other:?}"),
    }
    assert!(err
        .to_string()
        .starts_with(&format!("reading {}: ", missing.display())));
}

#[test]
fn bundled_corpus_is_non_empty_and_at_most_two_megabytes() {
    let corpus = Corpus::bundled();
    assert_eq!(corpus.tokens().len(), 1_946_353);
    assert!(corpus.tokens().len() <= 2_000_000);
    assert_eq!(corpus.documents(), 1);
    assert!(corpus.tokens().starts_with(b"ALL'S WELL THAT ENDS WELL\n"));
    assert!(!corpus.tokens().contains(&b'\r'));
    assert_eq!(corpus.train().len(), 1_751_718);
    assert_eq!(corpus.validation().len(), 194_635);
}
