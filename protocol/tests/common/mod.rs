//! Sample values shared by the protocol tests. Everything is deterministic:
//! fixed keys, fixed contents, so fixtures and signatures never change.
#![allow(dead_code)]

use p2ptrain_protocol::{
    CheckpointManifest, Commit, CompressionSettings, Contribution, Digest, IdSet, PayloadRef,
    PeerKey, RoundRecord, RunManifest, Signed, SigningKey, ValueBits,
};

pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

pub fn manifest() -> RunManifest {
    RunManifest {
        allow_list: Some(vec![PeerKey::from(&key(1)), PeerKey::from(&key(2))]),
        genesis: Digest::of(b"genesis checkpoint"),
        ..RunManifest::default()
    }
}

pub fn contribution(author: u8) -> Contribution {
    let manifest = manifest();
    Contribution {
        run: manifest.id().unwrap(),
        round: 7,
        base: Digest::of(b"round 7 checkpoint"),
        author: PeerKey::from(&key(author)),
        tokens: 102_400,
        payload: PayloadRef {
            hash: Digest::of(&[author; 64]),
            len: 1_310_720,
        },
        compression: CompressionSettings {
            chunk_len: 4096,
            density: 0.02,
            value_bits: ValueBits::Four,
        },
    }
}

pub fn signed_contribution(author: u8) -> Signed<Contribution> {
    Signed::sign(&contribution(author), &key(author)).unwrap()
}

pub fn commit(committer: u8) -> Commit {
    let ids = (1..=2).map(|a| signed_contribution(a).id()).collect();
    Commit {
        run: manifest().id().unwrap(),
        round: 7,
        base: Digest::of(b"round 7 checkpoint"),
        committer: PeerKey::from(&key(committer)),
        contributions: IdSet::new(ids),
        result: Digest::of(b"round 8 checkpoint"),
        chain_tokens: 1 << 20,
    }
}

pub fn signed_commit(committer: u8) -> Signed<Commit> {
    Signed::sign(&commit(committer), &key(committer)).unwrap()
}

pub fn round_record() -> RoundRecord {
    let mut contributions = vec![signed_contribution(1), signed_contribution(2)];
    contributions.sort_by_key(Signed::id);
    RoundRecord {
        commit: signed_commit(3),
        contributions,
    }
}

pub fn checkpoint_bytes() -> Vec<u8> {
    (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect()
}

pub fn checkpoint_manifest() -> CheckpointManifest {
    CheckpointManifest::build(&checkpoint_bytes(), 4096).unwrap()
}
