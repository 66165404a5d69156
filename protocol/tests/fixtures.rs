//! Committed byte fixtures: these exact bytes must keep decoding to these
//! values, and the values must keep encoding to these bytes. A change here is
//! a wire-format change and needs a new `FORMAT_VERSION`.
//!
//! To write the files after a deliberate format change:
//! `P2PTRAIN_BLESS=1 cargo test -p p2ptrain-protocol --test fixtures`.

mod common;

use std::fmt::Debug;
use std::path::PathBuf;

use p2ptrain_protocol::codec::{self, Message};
use p2ptrain_protocol::{
    CheckpointManifest, Commit, Contribution, RoundRecord, RunManifest, Signed,
};

const RUN_ID: &str = "e4db416337ec668dfa0e4c488ba9c739a7e30d5c35cba98490ed5ff47996b45d";

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{name}.hex"))
}

fn check_fixture<T: Message + PartialEq + Debug>(name: &str, value: &T) {
    let encoded = codec::encode(value).unwrap();
    let path = fixture_path(name);
    if std::env::var_os("P2PTRAIN_BLESS").is_some() {
        std::fs::write(&path, hex::encode(&encoded) + "\n").unwrap();
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let committed = hex::decode(text.trim()).unwrap();
    assert_eq!(
        &codec::decode::<T>(&committed).unwrap(),
        value,
        "{name}: committed bytes decode to another value"
    );
    assert_eq!(
        hex::encode(&encoded),
        text.trim(),
        "{name}: value encodes to other bytes"
    );
}

#[test]
fn run_manifest_fixture() {
    let manifest = common::manifest();
    check_fixture::<RunManifest>("run_manifest", &manifest);
    // The run id is pinned too: it names the run in every contribution.
    assert_eq!(manifest.id().unwrap().to_hex(), RUN_ID);
}

#[test]
fn signed_contribution_fixture() {
    let signed = common::signed_contribution(1);
    check_fixture::<Signed<Contribution>>("signed_contribution", &signed);
    assert_eq!(signed.verify().unwrap(), common::contribution(1));
    // The id `scripts/verify_signature.py` computes with Python's blake3.
    assert_eq!(
        signed.id().to_hex(),
        "0e209f3eb9595aa91d72901aab4b4ed572d9397d966cbe986f9b662f4206c90c"
    );
}

#[test]
fn signed_commit_fixture() {
    let signed = common::signed_commit(3);
    check_fixture::<Signed<Commit>>("signed_commit", &signed);
    assert_eq!(signed.verify().unwrap(), common::commit(3));
}

#[test]
fn round_record_fixture() {
    let record = common::round_record();
    check_fixture::<RoundRecord>("round_record", &record);
    record.verify().unwrap();
}

#[test]
fn checkpoint_manifest_fixture() {
    let manifest = common::checkpoint_manifest();
    check_fixture::<CheckpointManifest>("checkpoint_manifest", &manifest);
}
