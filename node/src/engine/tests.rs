//! Engines talking through an in-memory network that delivers everything at
//! once, in order: the round rule with no timing noise.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use p2ptrain_kernels::compress;
use p2ptrain_protocol::{
    Commit, Contribution, Digest, Equivocation, PayloadRef, PeerKey, RunManifest, Signed,
    SigningKey,
};

use super::*;

const PARAMS: usize = 4096;

fn manifest() -> RunManifest {
    let mut manifest = RunManifest::default();
    manifest.rounds.deadline_ms = 1_000;
    manifest.rounds.commit_window_ms = 100;
    manifest
}

fn key(i: usize) -> SigningKey {
    SigningKey::from_bytes(&[u8::try_from(i + 1).unwrap(); 32])
}

fn update(seed: usize, scale: f32) -> LocalUpdate {
    let delta: Vec<f32> = (0..PARAMS)
        .map(|j| scale * (((j * 7 + seed * 13) % 17) as f32 - 8.0) / 8.0)
        .collect();
    let payload = compress(&delta, &mut vec![0.0; PARAMS], &manifest().compression).unwrap();
    LocalUpdate {
        payload: Arc::from(payload.encode().unwrap()),
        tokens: 1_000,
    }
}

/// The checkpoint an outer step would produce: any deterministic function of
/// the base and the applied ids does for the engine.
fn result_of(base: &Digest, contributions: &[Accepted]) -> Digest {
    let mut bytes = base.as_bytes().to_vec();
    for c in contributions {
        bytes.extend_from_slice(c.id.as_bytes());
    }
    Digest::of(&bytes)
}

struct Swarm {
    engines: Vec<Engine>,
    now: Millis,
    queue: VecDeque<(usize, Input)>,
    /// Peers that never serve their payloads.
    withholders: BTreeSet<usize>,
    /// Links that deliver nothing (from, to).
    cut: BTreeSet<(usize, usize)>,
    /// Peers `to` cannot reach to fetch from (from, to): their fetches fail,
    /// and the failures wait in `failed_fetches` until a test delivers them.
    unreachable: BTreeSet<(usize, usize)>,
    failed_fetches: Vec<(usize, Digest)>,
    /// When set, checkpoint requests wait here (peer, head, asked of)
    /// until a test answers them; else each is adopted at once.
    held_checkpoints: Option<Vec<(usize, Head, PeerKey)>>,
    finalized: Vec<Vec<(u64, Digest, Vec<Digest>)>>,
    returned: Vec<usize>,
    rejected: Vec<(usize, RejectReason)>,
    banned: Vec<(usize, PeerKey, BanReason)>,
    key_shared: Vec<(usize, u64)>,
}

impl Swarm {
    fn new(n: usize, manifest: RunManifest) -> Self {
        let engines: Vec<Engine> = (0..n)
            .map(|i| {
                let config = EngineConfig::new(manifest.clone(), key(i), PARAMS);
                Engine::new(config).unwrap()
            })
            .collect();
        let mut swarm = Self {
            engines,
            now: 0,
            queue: VecDeque::new(),
            withholders: BTreeSet::new(),
            cut: BTreeSet::new(),
            unreachable: BTreeSet::new(),
            failed_fetches: Vec::new(),
            held_checkpoints: None,
            finalized: vec![Vec::new(); n],
            returned: vec![0; n],
            rejected: Vec::new(),
            banned: Vec::new(),
            key_shared: Vec::new(),
        };
        for i in 0..n {
            for j in 0..n {
                if i != j {
                    let peer = swarm.engines[j].me();
                    swarm.queue.push_back((i, Input::PeerSeen(peer)));
                }
            }
        }
        swarm.run();
        swarm
    }

    fn index_of(&self, peer: &PeerKey) -> usize {
        self.engines.iter().position(|e| e.me() == *peer).unwrap()
    }

    fn start(&mut self) -> Vec<usize> {
        let mut training = Vec::new();
        for i in 0..self.engines.len() {
            let outputs = self.engines[i].start(self.now);
            training.extend(self.apply(i, outputs));
        }
        training
    }

    fn broadcast(&mut self, from: usize, input: &Input) {
        for to in 0..self.engines.len() {
            if to != from && !self.cut.contains(&(from, to)) {
                self.queue.push_back((to, input.clone()));
            }
        }
    }

    /// Carries out outputs; returns the peers asked to train.
    fn apply(&mut self, i: usize, outputs: Vec<Output>) -> Vec<usize> {
        let mut training = Vec::new();
        for output in outputs {
            match output {
                Output::StartTraining { .. } => training.push(i),
                Output::Announce(signed) => self.broadcast(i, &Input::Announced(signed)),
                Output::PublishCommit(signed) => self.broadcast(i, &Input::CommitReceived(signed)),
                Output::PublishEvidence(proof) => self.broadcast(i, &Input::Evidence(proof)),
                Output::Fetch { id, from } => {
                    let from = self.index_of(&from);
                    if self.unreachable.contains(&(from, i)) {
                        self.failed_fetches.push((i, id));
                        continue;
                    }
                    if self.withholders.contains(&from) || self.cut.contains(&(from, i)) {
                        continue;
                    }
                    if let Some((contribution, bytes)) = self.engines[from].payload(&id) {
                        self.queue.push_back((
                            i,
                            Input::PayloadArrived {
                                contribution,
                                bytes,
                            },
                        ));
                    }
                }
                Output::ApplyOuterStep {
                    round,
                    base,
                    contributions,
                } => {
                    let result = result_of(&base, &contributions);
                    self.queue.push_back((i, Input::Applied { round, result }));
                }
                Output::Finalized { record, head } => {
                    let ids = record.contributions.iter().map(Signed::id).collect();
                    self.finalized[i].push((head.round - 1, head.base, ids));
                }
                Output::ReturnToResidual { .. } => self.returned[i] += 1,
                Output::RequestCheckpoint { head, from } => match &mut self.held_checkpoints {
                    Some(held) => held.push((i, head, from)),
                    None => self.queue.push_back((i, Input::CheckpointAdopted(head))),
                },
                Output::Rejected(Rejection { reason, .. }) => self.rejected.push((i, reason)),
                Output::Banned(Ban { peer, reason }) => self.banned.push((i, peer, reason)),
                Output::KeyShared { round } => self.key_shared.push((i, round)),
            }
        }
        training
    }

    /// Delivers until quiet; returns the peers asked to train.
    fn run(&mut self) -> Vec<usize> {
        let mut training = Vec::new();
        while let Some((i, input)) = self.queue.pop_front() {
            let outputs = self.engines[i].handle(self.now, input);
            training.extend(self.apply(i, outputs));
        }
        training
    }

    fn train(&mut self, peers: &[usize], scale: impl Fn(usize) -> f32) -> Vec<usize> {
        for &i in peers {
            let round = self.engines[i].head().round as usize;
            self.queue
                .push_back((i, Input::Trained(update(i * 31 + round, scale(i)))));
        }
        self.run()
    }

    fn advance(&mut self, ms: Millis) -> Vec<usize> {
        self.now += ms;
        for i in 0..self.engines.len() {
            self.queue.push_back((i, Input::Tick));
        }
        self.run()
    }

    /// Trains `peers`, then lets the windows pass, `rounds` times.
    fn rounds(&mut self, rounds: usize, peers: &[usize]) {
        for _ in 0..rounds {
            self.train(peers, |_| 1.0);
            self.advance(100);
            self.advance(1);
        }
    }

    fn heads(&self) -> Vec<Head> {
        self.engines.iter().map(Engine::head).collect()
    }

    fn all_agree(&self) -> bool {
        self.finalized.windows(2).all(|w| w[0] == w[1])
            && self.heads().windows(2).all(|w| w[0] == w[1])
    }
}

#[test]
fn honest_peers_end_every_round_on_the_same_checkpoint() {
    let mut swarm = Swarm::new(4, manifest());
    assert_eq!(swarm.start(), vec![0, 1, 2, 3]);
    swarm.rounds(3, &[0, 1, 2, 3]);
    assert_eq!(swarm.heads()[0].round, 3);
    assert!(swarm.all_agree(), "{:?}", swarm.finalized);
    assert!(swarm.finalized[0].iter().all(|(_, _, ids)| ids.len() == 4));
    assert_eq!(swarm.heads()[0].chain_tokens, 3 * 4 * 1_000);
    assert!(swarm.rejected.is_empty());
    // Each saw the others' commits of the last round: nobody is behind.
    for engine in &swarm.engines {
        assert_eq!(engine.members_behind(3).count(), 0);
        assert_eq!(engine.members_behind(4).count(), 3);
    }
}

#[test]
fn a_straggler_past_the_deadline_is_left_out_and_contributes_next_round() {
    let mut swarm = Swarm::new(3, manifest());
    swarm.start();
    swarm.train(&[0, 1], |_| 1.0);
    assert_eq!(swarm.heads()[0].round, 0, "waits for the third member");
    swarm.advance(1_000);
    swarm.advance(100);
    swarm.advance(1_000);
    assert_eq!(swarm.heads()[0].round, 1);
    assert_eq!(swarm.finalized[0][0].2.len(), 2);
    // The straggler closed the round with the others and holds the result.
    assert!(swarm.all_agree());
    // It contributed nothing, so it committed nothing: to the others it
    // is behind until its late update, for round 1, is announced.
    let behind = |swarm: &Swarm| -> Vec<usize> {
        swarm
            .engines
            .iter()
            .map(|e| e.members_behind(1).count())
            .collect()
    };
    assert_eq!(behind(&swarm), [1, 1, 0]);
    swarm.train(&[2], |_| 1.0);
    assert_eq!(behind(&swarm), [0, 0, 0]);
    swarm.train(&[0, 1], |_| 1.0);
    swarm.advance(100);
    swarm.advance(1);
    assert!(swarm.all_agree());
    assert_eq!(swarm.finalized[0][1].2.len(), 3);
}

#[test]
fn a_member_on_another_branch_is_not_waited_for_but_a_straggler_is() {
    let mut swarm = Swarm::new(3, manifest());
    swarm.start();
    swarm.rounds(1, &[0, 1, 2]);
    assert_eq!(swarm.heads()[0].round, 1);
    // Round 1: peer 2's latest update is round 0's, on genesis, a
    // checkpoint of this chain: a straggler, waited for.
    let genesis = Head::genesis(&manifest()).base;
    let behind = forged(&swarm, 2, |c| {
        c.round = 0;
        c.base = genesis;
    });
    swarm.broadcast(2, &Input::Announced(behind));
    swarm.train(&[0, 1], |_| 1.0);
    swarm.advance(101);
    assert_eq!(swarm.heads()[0].round, 1, "waits for the straggler");
    swarm.advance(1_000);
    swarm.advance(101);
    assert_eq!(swarm.heads()[0].round, 2, "until the deadline");
    // Round 2: peer 2's update is on a checkpoint off this chain, another
    // branch's: the round closes without it, before any deadline.
    let branch = forged(&swarm, 2, |c| {
        c.round = 1;
        c.base = Digest::of(b"another branch");
    });
    swarm.broadcast(2, &Input::Announced(branch));
    swarm.train(&[0, 1], |_| 1.0);
    swarm.advance(100);
    swarm.advance(1);
    assert_eq!(swarm.heads()[0].round, 3);
    assert_eq!(swarm.heads()[1].round, 3);
    assert_eq!(swarm.finalized[0][2].2.len(), 2);
}

#[test]
fn a_contribution_one_peer_missed_reaches_it_through_the_commits() {
    let mut swarm = Swarm::new(4, manifest());
    swarm.start();
    // Peer 3's announcement never reaches peer 0; its payload can still be
    // fetched from whoever committed it.
    swarm.cut.insert((3, 0));
    swarm.train(&[0, 1, 2, 3], |_| 1.0);
    swarm.advance(1_000);
    swarm.cut.clear();
    swarm.advance(100);
    swarm.advance(1_000);
    assert!(swarm.all_agree(), "{:?}", swarm.finalized);
    assert_eq!(swarm.finalized[0][0].2.len(), 4);
}

#[test]
fn an_announcement_is_repeated_while_its_round_gathers_and_late_only_from_its_author() {
    let mut swarm = Swarm::new(3, manifest());
    swarm.start();
    // Two of three have trained: their round waits for the third.
    swarm.train(&[0, 1], |_| 1.0);
    let own = swarm.engines[0].own_announcement().unwrap();
    assert_eq!(swarm.engines[0].announcement_to_repeat(), Some(own.clone()));
    assert_eq!(swarm.engines[2].announcement_to_repeat(), None);
    // The round closes: nothing more to repeat.
    swarm.train(&[2], |_| 1.0);
    assert_eq!(swarm.engines[0].announcement_to_repeat(), None);
    swarm.advance(100);
    swarm.advance(1);
    assert_eq!(swarm.finalized[1][0].2.len(), 3);

    // Peer 1 applied peer 0's contribution: from peer 0 it is a late
    // repeat, from anyone else a replay, and a contribution never applied
    // is neither.
    let (author, other) = (swarm.engines[0].me(), swarm.engines[2].me());
    assert!(swarm.engines[1].is_late_repeat(&own, Some(author)));
    assert!(!swarm.engines[1].is_late_repeat(&own, Some(other)));
    assert!(!swarm.engines[1].is_late_repeat(&own, None));
    let unapplied = forged(&swarm, 0, |_| {});
    assert!(!swarm.engines[1].is_late_repeat(&unapplied, Some(author)));
    assert!(swarm.rejected.is_empty());
}

fn forged(swarm: &Swarm, author: usize, edit: impl Fn(&mut Contribution)) -> Signed<Contribution> {
    let engine = &swarm.engines[author];
    let head = engine.head();
    let payload = update(99, 1.0).payload;
    let mut contribution = Contribution {
        run: engine.run(),
        round: head.round,
        base: head.base,
        author: engine.me(),
        tokens: 1_000,
        payload: PayloadRef {
            hash: Digest::of(&payload),
            len: payload.len() as u64,
        },
        compression: manifest().compression,
    };
    edit(&mut contribution);
    Signed::sign(&contribution, &key(author)).unwrap()
}

#[test]
fn bad_contributions_are_dropped_and_counted_by_reason() {
    let mut swarm = Swarm::new(6, manifest());
    swarm.start();
    swarm.rounds(1, &[0, 1, 2, 3, 4, 5]);
    let old = swarm.engines[0]
        .previous
        .as_ref()
        .unwrap()
        .entries
        .values()
        .next()
        .unwrap()
        .signed
        .clone();

    // Honest 0..=2; 3 sends a wrong base, 4 a scaled update, 5 withholds.
    let wrong_base = forged(&swarm, 3, |c| c.base = Digest::of(b"elsewhere"));
    let tokens = forged(&swarm, 3, |c| c.tokens = u64::MAX);
    let mut bad_signature = forged(&swarm, 3, |_| {});
    bad_signature = Signed::from_parts(
        bad_signature.body().to_vec(),
        bad_signature.signer(),
        [7; 64],
    );
    for input in [wrong_base, tokens, bad_signature, old] {
        swarm.broadcast(3, &Input::Announced(input));
    }
    swarm.withholders.insert(5);
    swarm.train(&[0, 1, 2], |_| 1.0);
    swarm.train(&[4], |_| 50.0);
    swarm.train(&[5], |_| 1.0);
    swarm.advance(1_000);
    swarm.advance(100);
    swarm.advance(1_000);

    let honest = [0, 1, 2];
    for &i in &honest {
        let (round, _, ids) = &swarm.finalized[i][1];
        assert_eq!(*round, 1);
        assert_eq!(ids.len(), 3, "only the honest three are applied");
        assert_eq!(swarm.finalized[i], swarm.finalized[0]);
        let counts = swarm.engines[i].rejected();
        for reason in [
            RejectReason::WrongBase,
            RejectReason::TokensOutOfRange,
            RejectReason::BadSignature,
            RejectReason::Replay,
            RejectReason::NormOutlier,
            RejectReason::WithheldPayload,
        ] {
            assert_eq!(counts.get(&reason), Some(&1), "peer {i}: {reason}");
        }
    }
}

/// Peers 3 and 4 on a lighter chain, cut off from 0, 1 and 2 for a round
/// (the majority went on, the two could not reach a quorum of the last
/// round's five); the link is back.
fn behind_on_a_lighter_chain() -> Swarm {
    let mut swarm = Swarm::new(5, manifest());
    swarm.start();
    swarm.rounds(1, &[0, 1, 2, 3, 4]);
    for a in 0..5 {
        for b in 0..5 {
            if (a < 3) != (b < 3) {
                swarm.cut.insert((a, b));
            }
        }
    }
    swarm.train(&[0, 1, 2, 3, 4], |_| 1.0);
    for _ in 0..3 {
        swarm.advance(1_000);
    }
    assert_eq!(swarm.heads()[0].round, 2);
    assert_eq!(swarm.heads()[3].round, 1);
    swarm.cut.clear();
    swarm
}

#[test]
fn a_peer_on_a_lighter_chain_adopts_the_heavier_one() {
    let mut swarm = behind_on_a_lighter_chain();
    majority_round(&mut swarm);
    // The cut-off peers adopted the majority's chain when its commits
    // arrived.
    let heads = swarm.heads();
    assert_eq!(heads[0].round, 3);
    assert_eq!(heads[3].base, heads[0].base, "{heads:?}");
    assert_eq!(heads[4].base, heads[0].base);
}

/// Peers 0, 1 and 2 close a round, past the deadline for 3 and 4.
fn majority_round(swarm: &mut Swarm) {
    swarm.train(&[0, 1, 2], |_| 1.0);
    swarm.advance(1_000);
    swarm.advance(100);
    swarm.advance(1);
}

/// The checkpoint peer 3 asks for, and of whom, once the majority has
/// closed a round; the request is held, unanswered.
fn asked_by_3_after_a_majority_round(swarm: &mut Swarm) -> Result<(Head, PeerKey), &'static str> {
    swarm.held_checkpoints = Some(Vec::new());
    majority_round(swarm);
    let asked = swarm.held_checkpoints.take().unwrap_or_default();
    asked
        .iter()
        .find(|(i, _, _)| *i == 3)
        .map(|(_, head, from)| (*head, *from))
        .ok_or("peer 3 asked for no checkpoint")
}

#[test]
fn a_checkpoint_gone_because_its_committer_moved_on_sends_the_node_to_the_newer_one(
) -> crate::TestResult {
    let mut swarm = behind_on_a_lighter_chain();
    // The majority closes a round: peer 3 asks for its checkpoint...
    let (first, committer) = asked_by_3_after_a_majority_round(&mut swarm)?;
    assert_eq!(first.base, swarm.heads()[0].base);
    // ...and while it waits, the majority closes the next, on top of it.
    swarm.held_checkpoints = Some(Vec::new());
    majority_round(&mut swarm);
    let newest = swarm.heads()[0];
    assert!(swarm.held_checkpoints.as_ref().is_some_and(Vec::is_empty));
    // The first checkpoint is no longer served.
    swarm.queue.push_back((
        3,
        Input::CheckpointUnavailable {
            result: first.base,
            from: committer,
        },
    ));
    swarm.run();
    // The committer moved on: not ignored. Peer 3 goes for the newest.
    assert!(swarm.banned.is_empty(), "{:?}", swarm.banned);
    let asked = swarm.held_checkpoints.take().unwrap_or_default();
    let bases: Vec<Digest> = asked
        .iter()
        .filter(|(i, _, _)| *i == 3)
        .map(|(_, head, _)| head.base)
        .collect();
    assert_eq!(bases, [newest.base]);
    swarm
        .queue
        .push_back((3, Input::CheckpointAdopted(asked[0].1)));
    swarm.run();
    assert_eq!(swarm.heads()[3], newest);
    Ok(())
}

#[test]
fn a_checkpoint_its_committer_never_served_gets_the_committer_ignored() -> crate::TestResult {
    let mut swarm = behind_on_a_lighter_chain();
    let (head, committer) = asked_by_3_after_a_majority_round(&mut swarm)?;
    swarm.queue.push_back((
        3,
        Input::CheckpointUnavailable {
            result: head.base,
            from: committer,
        },
    ));
    swarm.run();
    assert_eq!(swarm.banned.len(), 1);
    assert_eq!((swarm.banned[0].0, swarm.banned[0].1), (3, committer));
    Ok(())
}

#[test]
fn above_the_limit_a_subset_chosen_by_the_base_contributes() {
    let mut manifest = manifest();
    manifest.rounds.max_contributors = 2;
    let mut swarm = Swarm::new(7, manifest);
    swarm.start();
    swarm.rounds(2, &[0, 1, 2, 3, 4, 5, 6]);
    assert!(swarm.all_agree(), "{:?}", swarm.finalized);
    for (_, _, ids) in &swarm.finalized[0] {
        assert_eq!(ids.len(), 2);
    }
    // The others kept their updates.
    assert!(swarm.returned.iter().sum::<usize>() >= 2 * 5);
}

#[test]
fn two_results_for_one_set_from_one_key_get_the_key_ignored() {
    let mut swarm = Swarm::new(2, manifest());
    swarm.start();
    let engine = &swarm.engines[0];
    let commit = |result: &[u8]| {
        let c = Commit {
            run: engine.run(),
            round: 0,
            base: engine.head().base,
            committer: PeerKey::from(&key(1)),
            contributions: IdSet::default(),
            result: Digest::of(result),
            chain_tokens: 0,
        };
        Signed::sign(&c, &key(1)).unwrap()
    };
    let (a, b, c) = (commit(b"a"), commit(b"b"), commit(b"c"));
    for signed in [a, b, c] {
        swarm.queue.push_back((0, Input::CommitReceived(signed)));
    }
    swarm.run();
    let equivocator = PeerKey::from(&key(1));
    assert!(swarm.engines[0].banned.contains(&equivocator));
    assert!(!swarm.engines[0].members().contains(&equivocator));
    // Said once, when the ban starts.
    let reason = BanReason::Equivocated { round: 0 };
    assert_eq!(swarm.banned, vec![(0, equivocator, reason)]);
}

#[test]
fn overlapping_peers_train_the_next_round_while_this_one_closes() {
    let mut manifest = manifest();
    manifest.rounds.min_contributors = 2;
    let engines = (0..2)
        .map(|i| {
            let mut config = EngineConfig::new(manifest.clone(), key(i), PARAMS);
            config.overlap = true;
            Engine::new(config).unwrap()
        })
        .collect();
    let mut swarm = Swarm::new(0, manifest);
    swarm.engines = engines;
    swarm.finalized = vec![Vec::new(); 2];
    swarm.returned = vec![0; 2];
    for (i, j) in [(0, 1), (1, 0)] {
        let peer = swarm.engines[j].me();
        swarm.queue.push_back((i, Input::PeerSeen(peer)));
    }
    swarm.run();
    assert_eq!(swarm.start(), vec![0, 1]);
    // Announcing round 0 starts the session for round 1 at once.
    let training = swarm.train(&[0], |_| 1.0);
    assert_eq!(training, vec![0]);
    // Round 1's update is held until round 0 is final, then announced.
    swarm.train(&[0], |_| 1.0);
    swarm.train(&[1], |_| 1.0);
    swarm.advance(100);
    assert_eq!(swarm.heads()[0].round, 1);
    assert!(swarm.engines[0].round.mine.is_some());
}

mod split;
mod unreachable;

/// A contribution by peer `author` for its current round, with payload
/// `update`.
fn signed_update(swarm: &Swarm, author: usize, update: &LocalUpdate) -> Input {
    let engine = &swarm.engines[author];
    let head = engine.head();
    let contribution = Contribution {
        run: engine.run(),
        round: head.round,
        base: head.base,
        author: engine.me(),
        tokens: update.tokens,
        payload: PayloadRef {
            hash: Digest::of(&update.payload),
            len: update.payload.len() as u64,
        },
        compression: manifest().compression,
    };
    Input::PayloadArrived {
        contribution: Signed::sign(&contribution, &key(author)).unwrap(),
        bytes: update.payload.clone(),
    }
}

#[test]
fn a_key_that_signs_two_contributions_in_a_round_is_ignored_by_every_peer_from_the_next() {
    // Peer 4 equivocates: peers 0 and 1 hear one update, 2 and 3 another.
    let mut swarm = Swarm::new(5, manifest());
    swarm.start();
    let first = signed_update(&swarm, 4, &update(50, 1.0));
    let second = signed_update(&swarm, 4, &update(51, 1.0));
    for (peer, input) in [(0, &first), (1, &first), (2, &second), (3, &second)] {
        swarm.queue.push_back((peer, input.clone()));
    }
    swarm.run();
    swarm.train(&[0, 1, 2, 3], |_| 1.0);
    for _ in 0..4 {
        swarm.advance(1_000);
    }
    // The commits brought each side the other's: every peer holds the
    // proof, or was sent it, and ignores the key from round 1 on.
    let heads = swarm.heads();
    assert_eq!(heads[0].round, 1);
    assert!(heads[..4].windows(2).all(|w| w[0] == w[1]), "{heads:?}");
    let equivocator = swarm.engines[4].me();
    let reason = BanReason::TwoContributions { round: 0 };
    let mut banned_by: Vec<usize> = swarm
        .banned
        .iter()
        .filter(|(_, peer, why)| *peer == equivocator && *why == reason)
        .map(|(i, _, _)| *i)
        .collect();
    banned_by.sort_unstable();
    assert_eq!(banned_by, vec![0, 1, 2, 3]);
    // Round 1: its contribution is dropped by all, the others' applied.
    let next = signed_update(&swarm, 4, &update(52, 1.0));
    for peer in 0..4 {
        swarm.queue.push_back((peer, next.clone()));
    }
    swarm.rejected.clear();
    swarm.rounds(1, &[0, 1, 2, 3]);
    assert_eq!(
        swarm.rejected,
        (0..4)
            .map(|i| (i, RejectReason::NotAllowed))
            .collect::<Vec<_>>()
    );
    assert!(swarm.heads()[..4].windows(2).all(|w| w[0] == w[1]));
    assert!(swarm.finalized[..4].iter().all(|f| f[1].2.len() == 4));
}

/// A contribution to `engine`'s run signed by `key` for `(round, base)`,
/// claiming `tokens`, its payload a stand-in never fetched.
fn stand_in(
    engine: &Engine,
    key: &SigningKey,
    (round, base): (u64, Digest),
    tokens: u64,
) -> Signed<Contribution> {
    let c = Contribution {
        run: engine.run(),
        round,
        base,
        author: PeerKey::from(key),
        tokens,
        payload: PayloadRef {
            hash: Digest::of(b"p"),
            len: 1,
        },
        compression: manifest().compression,
    };
    Signed::sign(&c, key).unwrap()
}

#[test]
fn proof_of_two_contributions_from_a_peer_gets_the_key_ignored_from_the_next_round() {
    let mut swarm = Swarm::new(2, manifest());
    swarm.start();
    let outsider = key(7);
    let signed = |swarm: &Swarm, tokens| {
        let head = swarm.engines[0].head();
        stand_in(
            &swarm.engines[0],
            &outsider,
            (head.round, head.base),
            tokens,
        )
    };
    let delivered = |swarm: &Swarm| {
        let update = update(60, 1.0);
        let mut c = signed(swarm, update.tokens).verify().unwrap();
        c.payload = PayloadRef {
            hash: Digest::of(&update.payload),
            len: update.payload.len() as u64,
        };
        Input::PayloadArrived {
            contribution: Signed::sign(&c, &outsider).unwrap(),
            bytes: update.payload,
        }
    };
    let proof = |swarm: &Swarm| Equivocation {
        first: signed(swarm, 10),
        second: signed(swarm, 20),
    };
    // A proof about a key peer 0 has not heard from is dropped.
    swarm.queue.push_back((0, Input::Evidence(proof(&swarm))));
    swarm.run();
    assert!(swarm.banned.is_empty());
    // The outsider contributes to round 0, and is judged as everyone is.
    swarm.queue.push_back((0, delivered(&swarm)));
    swarm.run();
    assert!(swarm.rejected.is_empty(), "{:?}", swarm.rejected);
    // Not a proof: one contribution twice.
    let same = Equivocation {
        first: signed(&swarm, 10),
        second: signed(&swarm, 10),
    };
    swarm.queue.push_back((0, Input::Evidence(same)));
    swarm.run();
    assert!(swarm.banned.is_empty());
    swarm.queue.push_back((0, Input::Evidence(proof(&swarm))));
    swarm.run();
    let reason = BanReason::TwoContributions { round: 0 };
    assert_eq!(swarm.banned, vec![(0, PeerKey::from(&outsider), reason)]);
    // From round 1 on its contributions are dropped.
    swarm.rounds(1, &[0, 1]);
    swarm.queue.push_back((0, delivered(&swarm)));
    swarm.run();
    assert_eq!(swarm.rejected, vec![(0, RejectReason::NotAllowed)]);
}

#[test]
fn a_proof_about_a_key_heard_last_round_is_acted_on_after_the_round_closed() {
    let mut swarm = Swarm::new(2, manifest());
    swarm.start();
    let outsider = key(7);
    let contribution = |swarm: &Swarm, round: u64, base: Digest, tokens| {
        stand_in(&swarm.engines[0], &outsider, (round, base), tokens)
    };
    let base = swarm.engines[0].head().base;
    let update = update(60, 1.0);
    let mut heard = contribution(&swarm, 0, base, update.tokens)
        .verify()
        .unwrap();
    heard.payload = PayloadRef {
        hash: Digest::of(&update.payload),
        len: update.payload.len() as u64,
    };
    swarm.queue.push_back((
        0,
        Input::PayloadArrived {
            contribution: Signed::sign(&heard, &outsider).unwrap(),
            bytes: update.payload,
        },
    ));
    swarm.run();
    swarm.rounds(1, &[0, 1]);
    assert_eq!(swarm.engines[0].head().round, 1);
    // Round 0 is over; its second half reaches peer 0 only as a proof.
    let proof = Equivocation {
        first: contribution(&swarm, 0, base, 10),
        second: contribution(&swarm, 0, base, 20),
    };
    swarm.queue.push_back((0, Input::Evidence(proof)));
    swarm.run();
    let reason = BanReason::TwoContributions { round: 0 };
    assert_eq!(swarm.banned, vec![(0, PeerKey::from(&outsider), reason)]);
    // Two rounds on, a proof about a key last heard then is dropped.
    swarm.rounds(2, &[0, 1]);
    let later = key(8);
    let c = |tokens| {
        let c = Contribution {
            author: PeerKey::from(&later),
            ..contribution(&swarm, 0, base, tokens).verify().unwrap()
        };
        Signed::sign(&c, &later).unwrap()
    };
    swarm.queue.push_back((
        0,
        Input::Evidence(Equivocation {
            first: c(1),
            second: c(2),
        }),
    ));
    swarm.run();
    assert_eq!(swarm.banned.len(), 1);
}

#[test]
fn a_contribution_signed_with_its_own_key_but_not_its_own_is_reported() {
    let mut swarm = Swarm::new(3, manifest());
    swarm.start();
    swarm.train(&[0], |_| 1.0);
    // Another node holding peer 0's key announces its own update.
    let twin = signed_update(&swarm, 0, &update(77, 1.0));
    swarm.queue.push_back((1, twin.clone()));
    swarm.queue.push_back((0, twin));
    swarm.run();
    assert_eq!(swarm.key_shared, vec![(0, 0)]);
    // Peer 1 heard both: it ignores the key; peer 0 never bans itself.
    let key = swarm.engines[0].me();
    let reason = BanReason::TwoContributions { round: 0 };
    assert!(
        swarm.banned.contains(&(1, key, reason)),
        "{:?}",
        swarm.banned
    );
    assert!(swarm.banned.iter().all(|(i, _, _)| *i != 0));
}

#[test]
fn a_contribution_naming_a_payload_of_another_length_is_rejected_unfetched() {
    let mut engine = Engine::new(EngineConfig::new(manifest(), key(0), PARAMS)).unwrap();
    let author = key(1);
    let announced = |engine: &Engine, len: u64| {
        let c = Contribution {
            run: engine.run(),
            round: 0,
            base: manifest().genesis,
            author: PeerKey::from(&author),
            tokens: 1_000,
            payload: PayloadRef {
                hash: Digest::of(&len.to_le_bytes()),
                len,
            },
            compression: manifest().compression,
        };
        Signed::sign(&c, &author).unwrap()
    };
    let expected = engine.config.payload_len();
    for len in [expected - 1, expected + 1, 1 << 30] {
        let signed = announced(&engine, len);
        let outputs = engine.handle(0, Input::Announced(signed.clone()));
        assert!(
            matches!(outputs[..], [Output::Rejected(Rejection {
                id,
                reason: RejectReason::SettingsMismatch,
                ..
            })] if id == signed.id()),
            "{len}: {outputs:?}"
        );
    }
    let signed = announced(&engine, expected);
    let outputs = engine.handle(0, Input::Announced(signed.clone()));
    assert!(
        matches!(outputs[..], [Output::Fetch { id, .. }] if id == signed.id()),
        "{outputs:?}"
    );
}

#[test]
fn a_peer_past_its_last_round_does_not_hold_a_round_for_its_own_update() {
    let mut swarm = Swarm::new(3, manifest());
    swarm.engines[2].contribute_until(1);
    swarm.start();
    swarm.rounds(1, &[0, 1, 2]);
    assert_eq!(swarm.heads()[2].round, 1);
    // Round 1: only 0 and 1 train. Peer 2 waits for no update of its own,
    // so it closes the round once theirs are in; they wait for peer 2
    // until the deadline (one commit is not a quorum to follow), and end
    // on the same checkpoint.
    let training = swarm.train(&[0, 1], |_| 1.0);
    assert!(!training.contains(&2), "{training:?}");
    swarm.advance(100);
    swarm.advance(1);
    let rounds: Vec<u64> = swarm.heads().iter().map(|h| h.round).collect();
    assert_eq!(rounds, [1, 1, 2]);
    swarm.advance(1_000);
    swarm.advance(100);
    swarm.advance(1);
    assert_eq!(swarm.heads()[0].round, 2);
    assert!(swarm.all_agree(), "{:?}", swarm.heads());
    assert_eq!(swarm.finalized[2][1].2.len(), 2);
}
