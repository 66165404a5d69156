//! A node that has trained all the rounds asked of it: which of the run's
//! connected peers it stays up for, and that it contributes nothing more.

use p2ptrain_protocol::{
    Commit, Contribution, Digest, IdSet, PayloadRef, PeerKey, RunManifest, Signed, SigningKey,
};

use super::*;

fn key(byte: u8) -> SigningKey {
    SigningKey::from_bytes(&[byte; 32])
}

fn peer(byte: u8) -> PeerKey {
    PeerKey::from(&key(byte))
}

/// The checkpoint round `round` starts from, in these tests.
fn checkpoint(round: u64) -> Digest {
    Digest::of(&round.to_le_bytes())
}

/// Engine of key 1 working on round 3.
fn engine_at_round_3() -> Result<Engine, EngineError> {
    let config = EngineConfig::new(RunManifest::default(), key(1), 4096);
    let head = Head {
        round: 3,
        base: checkpoint(3),
        chain_tokens: 9_000,
        last_contributors: 3,
    };
    Engine::with_checker(config, head, Verify)
}

/// `author`'s contribution to `round`, trained from that round's checkpoint.
fn contribution(
    engine: &Engine,
    author: u8,
    round: u64,
) -> Result<Signed<Contribution>, p2ptrain_protocol::CodecError> {
    let contribution = Contribution {
        run: engine.run(),
        round,
        base: checkpoint(round),
        author: peer(author),
        tokens: 1_000,
        payload: PayloadRef {
            hash: Digest::of(&[author]),
            len: engine.config.payload_len(),
        },
        compression: RunManifest::default().compression,
    };
    Signed::sign(&contribution, &key(author))
}

/// `committer`'s commit of `round`.
fn commit(
    engine: &Engine,
    committer: u8,
    round: u64,
) -> Result<Signed<Commit>, p2ptrain_protocol::CodecError> {
    let commit = Commit {
        run: engine.run(),
        round,
        base: checkpoint(round),
        committer: peer(committer),
        contributions: IdSet::new(vec![Digest::of(b"applied")]),
        result: checkpoint(round + 1),
        chain_tokens: 1_000 * (round + 1),
    };
    Signed::sign(&commit, &key(committer))
}

#[test]
fn members_not_seen_at_this_round_are_behind() -> crate::TestResult {
    let mut engine = engine_at_round_3()?;
    for member in 2..=5 {
        engine.handle(0, Input::PeerSeen(peer(member)));
    }
    // Not heard from yet: all four are behind.
    assert_eq!(engine.members_behind(3).count(), 4);
    // 2 contributes to this round; 3 commits the round before it.
    engine.handle(1, Input::Announced(contribution(&engine, 2, 3)?));
    engine.handle(2, Input::CommitReceived(commit(&engine, 3, 2)?));
    assert_eq!(engine.members_behind(3).count(), 2);
    // 4 is still on round 1, and later rounds' word counts over earlier.
    engine.handle(3, Input::CommitReceived(commit(&engine, 4, 0)?));
    engine.handle(4, Input::Announced(contribution(&engine, 4, 1)?));
    engine.handle(5, Input::CommitReceived(commit(&engine, 2, 1)?));
    assert_eq!(engine.members_behind(3).count(), 2);
    // A commit of round 1 shows 4 at round 2: still behind. 5 says
    // nothing. Both gone, nobody is behind.
    engine.handle(6, Input::CommitReceived(commit(&engine, 4, 1)?));
    assert_eq!(engine.members_behind(3).count(), 2);
    assert_eq!(
        engine.members_behind(2).count(),
        1,
        "4 is at round 2; 5 unheard"
    );
    engine.handle(7, Input::PeerGone(peer(4)));
    engine.handle(8, Input::PeerGone(peer(5)));
    assert_eq!(engine.members_behind(3).count(), 0);
    Ok(())
}

#[test]
fn only_members_are_noted_and_a_member_that_returns_starts_unseen() -> crate::TestResult {
    let mut engine = engine_at_round_3()?;
    // 6 is not connected when its contribution is relayed: not noted, so
    // when it connects it is behind until it is heard again.
    engine.handle(0, Input::Announced(contribution(&engine, 6, 3)?));
    engine.handle(1, Input::PeerSeen(peer(6)));
    assert_eq!(engine.members_behind(3).count(), 1);
    engine.handle(2, Input::CommitReceived(commit(&engine, 6, 2)?));
    assert_eq!(engine.members_behind(3).count(), 0);
    // Gone and back: what it said before is forgotten.
    engine.handle(3, Input::PeerGone(peer(6)));
    engine.handle(4, Input::PeerSeen(peer(6)));
    assert_eq!(engine.members_behind(3).count(), 1);
    Ok(())
}

#[test]
fn what_a_peer_did_not_sign_says_nothing_of_where_it_is() -> crate::TestResult {
    let mut engine = engine_at_round_3()?;
    engine.handle(0, Input::PeerSeen(peer(2)));
    // A commit of round 2 naming 2 as its committer, signed by key 3.
    let mut forged = commit(&engine, 3, 2)?;
    let body = Commit {
        committer: peer(2),
        ..forged.verify()?
    };
    forged = Signed::sign(&body, &key(3))?;
    engine.handle(1, Input::CommitReceived(forged));
    assert_eq!(engine.members_behind(3).count(), 1);
    Ok(())
}

#[test]
fn a_member_that_holds_the_head_is_not_behind_though_it_signed_nothing() -> crate::TestResult {
    let mut engine = engine_at_round_3()?;
    for member in [2, 3] {
        engine.handle(0, Input::PeerSeen(peer(member)));
    }
    let behind: Vec<PeerKey> = engine.members_behind(3).collect();
    assert_eq!(behind.len(), 2);
    assert!(behind.contains(&peer(2)) && behind.contains(&peer(3)));
    // 2 holds round 3's head (it adopted it); 3 holds only round 2's.
    engine.handle(
        1,
        Input::HoldsHead {
            peer: peer(2),
            round: 3,
        },
    );
    engine.handle(
        2,
        Input::HoldsHead {
            peer: peer(3),
            round: 2,
        },
    );
    assert_eq!(engine.members_behind(3).collect::<Vec<_>>(), [peer(3)]);
    // A peer that is not connected is not noted.
    engine.handle(
        3,
        Input::HoldsHead {
            peer: peer(4),
            round: 3,
        },
    );
    engine.handle(4, Input::PeerSeen(peer(4)));
    assert_eq!(engine.members_behind(3).count(), 2);
    Ok(())
}

#[test]
fn an_update_for_a_round_past_the_end_goes_back_into_the_residual() -> crate::TestResult {
    let update = || LocalUpdate {
        payload: Arc::from(vec![0u8; 8]),
        tokens: 1_000,
    };
    let announced = |out: &[Output]| out.iter().any(|o| matches!(o, Output::Announce(_)));
    let returned = |out: &[Output]| {
        out.iter()
            .any(|o| matches!(o, Output::ReturnToResidual { .. }))
    };
    // Asked to contribute to rounds 0 to 3: round 3 takes its update.
    let mut engine = engine_at_round_3()?;
    engine.contribute_until(4);
    let out = engine.handle(0, Input::Trained(update()));
    assert!(announced(&out) && !returned(&out));
    // Asked to contribute to rounds 0 to 2: the update, trained for an
    // earlier round, is not contributed to round 3.
    let mut engine = engine_at_round_3()?;
    engine.contribute_until(3);
    let out = engine.handle(0, Input::Trained(update()));
    assert!(!announced(&out) && returned(&out));
    assert!(engine.unapplied_own_payloads().is_empty());
    Ok(())
}
