//! A peer's own allow-list (`p2pnode join --allow`): what is signed by a key
//! off the list never reaches the round.

use std::collections::BTreeSet;

use p2ptrain_protocol::{
    Commit, Contribution, Digest, IdSet, PayloadRef, PeerKey, RunManifest, Signed, SigningKey,
};

use super::*;

fn key(byte: u8) -> SigningKey {
    SigningKey::from_bytes(&[byte; 32])
}

/// Engine of key 1 whose list holds keys 1 and 2.
fn listed_engine() -> Engine {
    let mut config = EngineConfig::new(RunManifest::default(), key(1), 4096);
    config.allow_list = Some(BTreeSet::from([
        PeerKey::from(&key(1)),
        PeerKey::from(&key(2)),
    ]));
    Engine::new(config).unwrap()
}

/// A well-formed contribution to `engine`'s round 0, signed by `author`.
fn contribution(engine: &Engine, author: &SigningKey) -> Signed<Contribution> {
    let manifest = RunManifest::default();
    let contribution = Contribution {
        run: engine.run(),
        round: 0,
        base: manifest.genesis,
        author: PeerKey::from(author),
        tokens: 1_000,
        payload: PayloadRef {
            hash: Digest::of(b"payload"),
            len: engine.config.payload_len(),
        },
        compression: manifest.compression,
    };
    Signed::sign(&contribution, author).unwrap()
}

#[test]
fn contributions_signed_off_the_allow_list_are_rejected_and_counted() {
    let mut engine = listed_engine();
    let outsider = key(3);
    let signed = contribution(&engine, &outsider);
    let outputs = engine.handle(0, Input::Announced(signed.clone()));
    assert!(
        matches!(
            outputs[..],
            [Output::Rejected(Rejection {
                id,
                author: Some(author),
                reason: RejectReason::NotAllowed,
            })] if id == signed.id() && author == PeerKey::from(&outsider)
        ),
        "{outputs:?}"
    );
    assert_eq!(engine.rejected().get(&RejectReason::NotAllowed), Some(&1));

    // A listed peer's contribution is taken: its payload is fetched.
    let member = contribution(&engine, &key(2));
    let outputs = engine.handle(1, Input::Announced(member.clone()));
    assert!(
        matches!(outputs[..], [Output::Fetch { id, from }]
            if id == member.id() && from == PeerKey::from(&key(2))),
        "{outputs:?}"
    );
    assert_eq!(engine.rejected().values().sum::<u64>(), 1);
}

#[test]
fn peers_and_commits_off_the_allow_list_are_ignored() {
    let mut engine = listed_engine();
    let outsider = PeerKey::from(&key(3));
    engine.handle(0, Input::PeerSeen(outsider));
    engine.handle(0, Input::PeerSeen(PeerKey::from(&key(2))));
    assert_eq!(
        engine.members().iter().copied().collect::<Vec<_>>(),
        vec![PeerKey::from(&key(2))]
    );

    // An outsider's commit naming a contribution: nothing is fetched, and
    // no fork is followed, however heavy.
    let commit = Commit {
        run: engine.run(),
        round: 0,
        base: RunManifest::default().genesis,
        committer: outsider,
        contributions: IdSet::new(vec![Digest::of(b"unknown")]),
        result: Digest::of(b"elsewhere"),
        chain_tokens: u64::MAX,
    };
    let signed = Signed::sign(&commit, &key(3)).unwrap();
    assert!(engine.handle(1, Input::CommitReceived(signed)).is_empty());
    let later = Commit {
        round: 5,
        contributions: IdSet::new(Vec::new()),
        ..commit
    };
    let signed = Signed::sign(&later, &key(3)).unwrap();
    assert!(engine.handle(2, Input::CommitReceived(signed)).is_empty());
}

#[test]
fn an_engine_off_its_own_allow_list_refuses_to_start() {
    let mut config = EngineConfig::new(RunManifest::default(), key(1), 4096);
    config.allow_list = Some(BTreeSet::from([PeerKey::from(&key(2))]));
    let err = Engine::new(config).unwrap_err();
    assert!(
        matches!(err, EngineError::NotOnOwnList(me) if me == PeerKey::from(&key(1))),
        "{err}"
    );
}
