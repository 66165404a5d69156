//! A contributor that dies once some peers hold its payload and others do
//! not: the round must not split, and if it does, fork choice must heal it
//! and each peer put its own update back into its residual only if the
//! adopted branch left it out.

use super::*;

/// Three peers; peer 2's update reaches peer 0 only, then peer 2 dies.
/// Peer 0 serves it on if `serving`.
fn author_dies_after_one_fetch(serving: bool) -> Swarm {
    let mut swarm = Swarm::new(3, manifest());
    swarm.start();
    swarm.withholders.insert(2);
    swarm.train(&[0, 1, 2], |_| 1.0);
    let id = swarm.engines[2].round.mine.unwrap();
    let (contribution, bytes) = swarm.engines[2].payload(&id).unwrap();
    swarm.queue.push_back((
        0,
        Input::PayloadArrived {
            contribution,
            bytes,
        },
    ));
    if !serving {
        swarm.withholders.insert(0);
    }
    let gone = swarm.engines[2].me();
    swarm.queue.push_back((0, Input::PeerGone(gone)));
    swarm.queue.push_back((1, Input::PeerGone(gone)));
    swarm.run();
    swarm
}

#[test]
fn a_payload_its_dead_author_never_delivered_is_fetched_from_a_committer() {
    let mut swarm = author_dies_after_one_fetch(true);
    swarm.advance(100);
    swarm.advance(1_000);
    assert_eq!(swarm.finalized[0].len(), 1);
    assert_eq!(swarm.finalized[1], swarm.finalized[0]);
    assert_eq!(
        swarm.finalized[0][0].2.len(),
        3,
        "the dead peer's update too"
    );
}

#[test]
fn a_round_that_ended_split_is_healed_by_fork_choice_on_its_commits() {
    // Peer 0 cannot serve it either: peer 1 ends the round without it.
    let mut swarm = author_dies_after_one_fetch(false);
    swarm.advance(100);
    swarm.advance(1_000);
    assert_eq!(swarm.finalized[0][0].2.len(), 3);
    assert_eq!(swarm.finalized[1][0].2.len(), 2);
    // Peer 1 saw the heavier commit in that round and adopted its result,
    // rather than waiting forever on a round its peer is not in.
    assert_eq!(swarm.heads()[1], swarm.heads()[0]);
    swarm.withholders.clear();
    swarm.train(&[0, 1], |_| 1.0);
    swarm.advance(100);
    swarm.advance(1);
    assert_eq!(swarm.heads()[1], swarm.heads()[0]);
    assert_eq!(swarm.heads()[0].round, 2, "{:#?}", swarm.finalized);
}

/// Peers 0 and 1 close round 0 on both their updates; then peer 0 hears a
/// heavier branch's commit for that round, by a third key, applying `applied`
/// (indices of peers whose updates it names). Returns how many updates peer
/// 0 put back into its residual.
fn adopt_a_branch_applying(applied: &[usize]) -> usize {
    let mut swarm = Swarm::new(2, manifest());
    let genesis = swarm.engines[0].head().base;
    swarm.start();
    swarm.rounds(1, &[0, 1]);
    assert_eq!(swarm.finalized[0][0].2.len(), 2);
    let head = swarm.engines[0].head();
    assert_eq!(head.round, 1);
    let ids: Vec<Digest> = swarm.finalized[0][0].2.clone();
    let id_of = |peer: usize| {
        let author = swarm.engines[peer].me();
        let by_author = |id: &&Digest| {
            swarm.engines[0]
                .payload(id)
                .is_some_and(|(c, _)| c.signer() == author)
        };
        *ids.iter().find(by_author).unwrap()
    };
    let commit = Commit {
        run: swarm.engines[0].run(),
        round: 0,
        base: genesis,
        committer: PeerKey::from(&key(2)),
        contributions: IdSet::new(applied.iter().map(|&p| id_of(p)).collect()),
        result: Digest::of(b"the heavier branch"),
        chain_tokens: head.chain_tokens + 1_000,
    };
    let signed = Signed::sign(&commit, &key(2)).unwrap();
    swarm.returned = vec![0; 2];
    swarm.queue.push_back((0, Input::CommitReceived(signed)));
    swarm.run();
    assert_eq!(swarm.engines[0].head().base, commit.result, "adopted");
    swarm.returned[0]
}

#[test]
fn an_update_the_adopted_branch_applied_is_not_put_back_into_the_residual() {
    // Put back, it would count twice, and the next update, carrying it
    // again, would be dropped as an outlier.
    assert_eq!(adopt_a_branch_applying(&[0, 1]), 0);
}

#[test]
fn an_update_the_adopted_branch_left_out_goes_back_into_the_residual() {
    assert_eq!(adopt_a_branch_applying(&[1]), 1);
}

/// Peer 0 announces its update for round 0 and waits for peer 1's. A
/// branch by a third key goes on without it: it closes round 0 applying
/// `applied` (indices of peers whose updates it names) and round 1 from
/// that result, and peer 0 hears both commits. Returns how many updates
/// peer 0 put back into its residual as it adopted the branch.
fn straggler_adopts_a_branch_applying(applied: &[usize]) -> usize {
    let mut swarm = Swarm::new(2, manifest());
    let genesis = swarm.engines[0].head().base;
    swarm.start();
    swarm.train(&[0], |_| 1.0);
    let mine = swarm.engines[0].round.mine.unwrap();
    assert_eq!(swarm.engines[0].head().round, 0, "waiting for peer 1");
    let run = swarm.engines[0].run();
    let third = key(2);
    let commit = |round: u64, base: Digest, contributions: Vec<Digest>, tokens: u64| {
        let commit = Commit {
            run,
            round,
            base,
            committer: PeerKey::from(&third),
            contributions: IdSet::new(contributions),
            result: Digest::of(format!("the branch's round {round}").as_bytes()),
            chain_tokens: tokens,
        };
        (Signed::sign(&commit, &third).unwrap(), commit.result)
    };
    let ids = applied.iter().map(|&p| {
        assert_eq!(p, 0, "only peer 0's update exists");
        mine
    });
    let (round_0, result_0) = commit(0, genesis, ids.collect(), 1_000);
    let (round_1, result_1) = commit(1, result_0, Vec::new(), 2_000);
    swarm.returned = vec![0; 2];
    swarm.queue.push_back((0, Input::CommitReceived(round_0)));
    swarm.queue.push_back((0, Input::CommitReceived(round_1)));
    swarm.run();
    assert_eq!(swarm.engines[0].head().base, result_1, "adopted");
    assert_eq!(swarm.engines[0].head().round, 2);
    swarm.returned[0]
}

#[test]
fn a_straggler_keeps_out_of_its_residual_the_update_the_branch_that_went_on_applied() {
    assert_eq!(straggler_adopts_a_branch_applying(&[0]), 0);
}

#[test]
fn a_straggler_puts_back_the_update_the_branch_that_went_on_left_out() {
    assert_eq!(straggler_adopts_a_branch_applying(&[]), 1);
}
