//! Tampering: any single changed byte of a signed message is caught, and
//! records that do not hold together are refused with the right reason.

mod common;

use p2ptrain_protocol::codec::{self, CodecError};
use p2ptrain_protocol::signed::Signable;
use p2ptrain_protocol::{
    CheckpointManifest, ChunkError, Commit, Contribution, RecordError, Signed, SignedError,
};

/// Flips every byte of the wire encoding, with every single-bit mask and with
/// 0xff; each variant must fail to decode or fail to verify.
fn assert_every_flip_is_caught<T: Signable + PartialEq + std::fmt::Debug>(signed: &Signed<T>)
where
    Signed<T>: p2ptrain_protocol::Message,
{
    let wire = codec::encode(signed).unwrap();
    let original = signed.verify().unwrap();
    for position in 0..wire.len() {
        for mask in [1u8, 2, 4, 8, 16, 32, 64, 128, 0xff] {
            let mut tampered = wire.clone();
            tampered[position] ^= mask;
            let verified = codec::decode::<Signed<T>>(&tampered)
                .ok()
                .and_then(|s| s.verify().ok());
            assert!(
                verified.is_none(),
                "byte {position} ^ {mask:#04x} still verifies as {verified:?} (was {original:?})"
            );
        }
    }
}

#[test]
fn every_flipped_byte_of_a_contribution_is_caught() {
    assert_every_flip_is_caught(&common::signed_contribution(1));
}

#[test]
fn every_flipped_byte_of_a_commit_is_caught() {
    assert_every_flip_is_caught(&common::signed_commit(3));
}

#[test]
fn a_signature_by_someone_other_than_the_author_is_refused() {
    let contribution = common::contribution(1);
    let forged = Signed::sign(&contribution, &common::key(2)).unwrap();
    assert!(matches!(
        forged.verify(),
        Err(SignedError::SignerMismatch { .. })
    ));
}

#[test]
fn a_signature_cannot_be_moved_to_another_message_type() {
    // Same key, same bytes, other domain: a commit's signature over a body
    // never verifies as a contribution's.
    let signed = common::signed_commit(3);
    let moved = Signed::<Contribution>::from_parts(
        signed.body().to_vec(),
        signed.signer(),
        *signed.signature(),
    );
    assert!(matches!(moved.verify(), Err(SignedError::BadSignature(_))));
    assert_ne!(Contribution::DOMAIN, Commit::DOMAIN);
}

#[test]
fn an_invalid_signer_key_is_refused() {
    let signed = common::signed_contribution(1);
    // The y-coordinate 2 is not on the curve.
    let mut bad_key = [0u8; 32];
    bad_key[0] = 2;
    let moved = Signed::<Contribution>::from_parts(
        signed.body().to_vec(),
        p2ptrain_protocol::PeerKey::from_bytes(bad_key),
        *signed.signature(),
    );
    assert!(matches!(
        moved.verify(),
        Err(SignedError::BadKey(_) | SignedError::BadSignature(_))
    ));
}

#[test]
fn a_record_missing_a_contribution_is_refused() {
    let mut record = common::round_record();
    record.contributions.pop();
    assert!(matches!(record.verify(), Err(RecordError::IdsMismatch)));
}

#[test]
fn a_record_with_a_tampered_contribution_is_refused() {
    let mut record = common::round_record();
    let first = &record.contributions[0];
    let mut body = first.body().to_vec();
    let last = body.len() - 1;
    body[last] ^= 1;
    record.contributions[0] = Signed::from_parts(body, first.signer(), *first.signature());
    // The id changes with the body, so the record no longer matches its commit.
    assert!(matches!(record.verify(), Err(RecordError::IdsMismatch)));
}

#[test]
fn a_checkpoint_chunk_with_wrong_bytes_or_length_is_refused() {
    let bytes = common::checkpoint_bytes();
    let manifest = common::checkpoint_manifest();
    let mut chunk = bytes[..4096].to_vec();
    assert_eq!(manifest.verify_chunk(0, &chunk), Ok(()));
    chunk[100] ^= 1;
    assert_eq!(
        manifest.verify_chunk(0, &chunk),
        Err(ChunkError::Mismatch { index: 0 })
    );
    assert_eq!(
        manifest.verify_chunk(0, &bytes[..4095]),
        Err(ChunkError::Mismatch { index: 0 })
    );
    assert_eq!(
        manifest.verify_chunk(9, &bytes[..10]),
        Err(ChunkError::OutOfRange { index: 9, count: 3 })
    );
    assert_eq!(
        CheckpointManifest::build(&bytes, 0),
        Err(ChunkError::ZeroChunkLen)
    );
}

#[test]
fn unsorted_commit_ids_do_not_decode() {
    let commit = common::commit(3);
    let mut wire = codec::encode(&commit).unwrap();
    // Swap the two 32-byte ids: run(32) round(1) base(32) committer(32) len(1).
    let ids_at = 1 + 32 + 1 + 32 + 32 + 1;
    let (first, second) = wire[ids_at..ids_at + 64].split_at_mut(32);
    first.swap_with_slice(second);
    assert!(matches!(
        codec::decode::<Commit>(&wire),
        Err(CodecError::Malformed(_))
    ));
}
