//! Property tests: every value encodes, decodes back to itself, and signed
//! values verify after a trip over the wire.

mod common;

use p2ptrain_protocol::codec::{self, Message};
use p2ptrain_protocol::{
    CheckpointManifest, Commit, CompressionSettings, Contribution, Digest, IdSet, InnerOptimizer,
    ModelConfig, OuterOptimizer, PayloadRef, PeerKey, RoundRules, RunManifest, Signed, ValueBits,
};
use proptest::prelude::*;

fn digest() -> impl Strategy<Value = Digest> {
    any::<[u8; 32]>().prop_map(Digest::from_bytes)
}

fn settings() -> impl Strategy<Value = CompressionSettings> {
    (
        1..=CompressionSettings::MAX_CHUNK_LEN,
        0.0f32..=1.0,
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

fn contribution(author: PeerKey) -> impl Strategy<Value = Contribution> {
    (
        digest(),
        any::<u64>(),
        digest(),
        any::<u64>(),
        digest(),
        any::<u64>(),
        settings(),
    )
        .prop_map(
            move |(run, round, base, tokens, hash, len, compression)| Contribution {
                run,
                round,
                base,
                author,
                tokens,
                payload: PayloadRef { hash, len },
                compression,
            },
        )
}

fn manifest() -> impl Strategy<Value = RunManifest> {
    (
        ".{0,40}",
        any::<u64>(),
        any::<[u32; 5]>(),
        any::<u32>(),
        any::<[f32; 6]>(),
        (
            any::<u32>(),
            any::<u32>(),
            any::<f32>(),
            any::<f32>(),
            any::<bool>(),
        ),
        settings(),
        any::<[u64; 2]>(),
        proptest::option::of(proptest::collection::vec(any::<[u8; 32]>(), 0..8)),
        digest(),
    )
        .prop_map(
            |(
                name,
                seed,
                m,
                inner_steps,
                f,
                (warm, batch, olr, mom, nesterov),
                compression,
                t,
                allow,
                genesis,
            )| {
                RunManifest {
                    name,
                    seed,
                    model: ModelConfig {
                        vocab_size: m[0],
                        context_len: m[1],
                        n_layer: m[2],
                        n_head: m[3],
                        d_model: m[4],
                    },
                    inner_steps,
                    inner: InnerOptimizer {
                        lr: f[0],
                        warmup_steps: warm,
                        weight_decay: f[1],
                        beta1: f[2],
                        beta2: f[3],
                        eps: f[4],
                        grad_clip: f[5],
                        batch_size: batch,
                    },
                    outer: OuterOptimizer {
                        lr: olr,
                        momentum: mom,
                        nesterov,
                    },
                    compression,
                    rounds: RoundRules {
                        deadline_ms: t[0],
                        commit_window_ms: t[1],
                        min_contributors: m[0],
                        max_contributors: m[1],
                    },
                    allow_list: allow
                        .map(|keys| keys.into_iter().map(PeerKey::from_bytes).collect()),
                    genesis,
                }
            },
        )
}

/// Equality by encoding, so that NaN floats compare equal to themselves.
fn assert_round_trips<T: Message>(value: &T) {
    let bytes = codec::encode(value).unwrap();
    assert_eq!(codec::encoded_len(value).unwrap(), bytes.len());
    let back: T = codec::decode(&bytes).unwrap();
    assert_eq!(codec::encode(&back).unwrap(), bytes);
}

proptest! {
    #[test]
    fn manifests_round_trip(manifest in manifest()) {
        assert_round_trips(&manifest);
        let bytes = codec::encode(&manifest).unwrap();
        prop_assert_eq!(manifest.id().unwrap(), Digest::of(&bytes));
    }

    #[test]
    fn signed_contributions_round_trip_and_verify(
        seed in any::<[u8; 32]>(),
        template in contribution(PeerKey::from_bytes([0; 32])),
    ) {
        let key = p2ptrain_protocol::SigningKey::from_bytes(&seed);
        let value = Contribution { author: PeerKey::from(&key), ..template };
        let signed = Signed::sign(&value, &key).unwrap();
        assert_round_trips(&signed);
        let wire = codec::encode(&signed).unwrap();
        let back: Signed<Contribution> = codec::decode(&wire).unwrap();
        prop_assert_eq!(back.verify().unwrap(), value);
        prop_assert_eq!(back.id(), Digest::of(signed.body()));
    }

    #[test]
    fn commits_keep_ids_sorted_and_round_trip(
        seed in any::<[u8; 32]>(),
        ids in proptest::collection::vec(digest(), 0..50),
        (round, chain_tokens) in (any::<u64>(), any::<u64>()),
        (run, base, result) in (digest(), digest(), digest()),
    ) {
        let key = p2ptrain_protocol::SigningKey::from_bytes(&seed);
        let commit = Commit {
            run,
            round,
            base,
            committer: PeerKey::from(&key),
            contributions: IdSet::new(ids.clone()),
            result,
            chain_tokens,
        };
        prop_assert!(commit.contributions.as_slice().windows(2).all(|w| w[0] < w[1]));
        prop_assert!(ids.iter().all(|id| commit.contributions.contains(id)));
        let signed = Signed::sign(&commit, &key).unwrap();
        assert_round_trips(&signed);
        prop_assert_eq!(signed.verify().unwrap(), commit);
    }

    #[test]
    fn checkpoint_manifests_round_trip_and_check_chunks(
        bytes in proptest::collection::vec(any::<u8>(), 0..5000),
        chunk_len in 1u32..700,
    ) {
        let manifest = CheckpointManifest::build(&bytes, chunk_len).unwrap();
        assert_round_trips(&manifest);
        prop_assert_eq!(manifest.root(), Digest::of(&codec::encode(&manifest).unwrap()));
        for index in 0..manifest.chunk_count() {
            let range = manifest.chunk_range(index).unwrap();
            let chunk = &bytes[range.start as usize..range.end as usize];
            prop_assert!(manifest.verify_chunk(index, chunk).is_ok());
        }
        prop_assert!(manifest.chunk_range(manifest.chunk_count()).is_none());
    }
}

#[test]
fn a_record_round_trips_and_verifies() {
    let record = common::round_record();
    assert_round_trips(&record);
    let (commit, contributions) = record.verify().unwrap();
    assert_eq!(commit, common::commit(3));
    assert_eq!(contributions.len(), 2);
}
