//! Feeds arbitrary bytes to every protocol decoder.
//!
//! Run with `cargo fuzz run decode` from `protocol/` (nightly toolchain and
//! cargo-fuzz required). Checks: no decoder panics; whatever decodes
//! re-encodes to exactly the input (one encoding per value); verifying a
//! decoded signed message returns rather than panics.

#![no_main]

use libfuzzer_sys::fuzz_target;
use p2ptrain_protocol::codec::{self, Message};
use p2ptrain_protocol::{
    CheckpointManifest, Commit, Contribution, Equivocation, RoundRecord, RunManifest, Signed,
};

fn check<T: Message>(data: &[u8]) -> Option<T> {
    let value = codec::decode::<T>(data).ok()?;
    let again = codec::encode(&value).expect("a decoded value encodes");
    assert_eq!(again, data, "decoded value re-encodes to other bytes");
    Some(value)
}

fuzz_target!(|data: &[u8]| {
    check::<RunManifest>(data);
    check::<Contribution>(data);
    check::<Commit>(data);
    check::<CheckpointManifest>(data);
    if let Some(signed) = check::<Signed<Contribution>>(data) {
        let _ = signed.verify();
    }
    if let Some(signed) = check::<Signed<Commit>>(data) {
        let _ = signed.verify();
    }
    if let Some(record) = check::<RoundRecord>(data) {
        let _ = record.verify();
    }
    if let Some(proof) = check::<Equivocation>(data) {
        let _ = proof.proven();
    }
});
