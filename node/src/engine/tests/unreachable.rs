//! Authors some peers cannot reach (behind NATs, say): their payloads come
//! from the peers that committed them.

use super::*;

/// Three peers; 1 and 2 cannot fetch from each other, 0 reaches both. The
/// fetches between 1 and 2 fail only after 0's commit has arrived, as a
/// dial to a peer behind a NAT fails after its timeout.
fn hub_and_two_hidden(min_contributors: u32) -> Swarm {
    let mut manifest = manifest();
    manifest.rounds.min_contributors = min_contributors;
    let mut swarm = Swarm::new(3, manifest);
    swarm.unreachable.extend([(1, 2), (2, 1)]);
    swarm.start();
    swarm
}

#[test]
fn a_payload_its_author_cannot_deliver_comes_from_a_committer() {
    let mut swarm = hub_and_two_hidden(3);
    for round in 0..3 {
        swarm.train(&[0, 1, 2], |_| 1.0);
        // 0 held all three, applied them and committed; 1 and 2 still wait
        // on each other.
        assert_eq!(swarm.finalized[1].len(), round, "{:?}", swarm.finalized);
        assert_eq!(swarm.failed_fetches.len(), 2);
        for (peer, id) in std::mem::take(&mut swarm.failed_fetches) {
            swarm.queue.push_back((peer, Input::FetchFailed { id }));
        }
        swarm.run();
        swarm.advance(100);
        swarm.advance(1);
    }
    assert!(swarm.all_agree(), "{:?}", swarm.finalized);
    assert!(swarm.finalized.iter().all(|rounds| rounds.len() == 3));
    assert!(swarm.finalized[1].iter().all(|(_, _, ids)| ids.len() == 3));
}

#[test]
fn a_source_that_failed_is_not_asked_again() {
    let mut swarm = hub_and_two_hidden(3);
    swarm.withholders.insert(0);
    swarm.train(&[0, 1, 2], |_| 1.0);
    for (peer, id) in std::mem::take(&mut swarm.failed_fetches) {
        swarm.queue.push_back((peer, Input::FetchFailed { id }));
    }
    swarm.run();
    // 0 withholds: 1 and 2 asked it once each after the author failed, and
    // with no other holder left the payloads are unavailable, not asked
    // for in a loop.
    let stuck = swarm.engines[1].round.entries.values();
    let unavailable = stuck
        .filter(|e| matches!(e.state, EntryState::Unavailable))
        .count();
    assert_eq!(unavailable, 0, "0's fetch has not failed yet");
    let id = swarm.engines[2].round.mine.unwrap();
    let zero = swarm.engines[0].me();
    swarm.queue.push_back((1, Input::FetchFailed { id }));
    swarm.run();
    assert!(matches!(
        swarm.engines[1].round.entries[&id].state,
        EntryState::Unavailable
    ));
    assert!(swarm.engines[1].round.failed_sources.contains(&(id, zero)));
}
