//! Small versions of the shipped scenarios: each runs in seconds and checks
//! what its full version must show (`scripts/netsim-all.sh` runs the full
//! ones).

use std::path::Path;

use p2ptrain_netsim::scenario::{ModelKind, Scenario};
use p2ptrain_netsim::sim::{self, Outcome};

fn shipped(name: &str) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(format!("{name}.toml"));
    Scenario::load(&path).unwrap()
}

fn run(scenario: &Scenario) -> Outcome {
    sim::run(scenario, scenario.run.seed, false, |_| {}).unwrap()
}

/// The shipped scenario `name`, cut to `rounds` rounds of the timing model.
fn synthetic(name: &str, rounds: u64) -> Outcome {
    let mut scenario = shipped(name);
    scenario.run.rounds = rounds;
    scenario.run.model = ModelKind::Synthetic;
    scenario.run.params = 100_000;
    run(&scenario)
}

fn assert_honest(outcome: &Outcome, rounds: u64) {
    let s = &outcome.summary;
    assert_eq!(s.rounds_completed, rounds, "{s:#?}");
    assert!(s.honest_replicas_agree, "{s:#?}");
    assert_eq!(s.honest_rejected, 0, "{s:#?}");
    assert_eq!(s.honest_banned, 0, "{s:#?}");
}

#[test]
fn the_same_scenario_and_seed_give_the_same_trace() {
    let mut scenario = shipped("churn");
    scenario.run.rounds = 4;
    scenario.run.params = 1_000_000;
    let first = run(&scenario);
    let second = run(&scenario);
    assert_eq!(first.summary.trace_hash, second.summary.trace_hash);
    assert_eq!(first.rounds.len(), second.rounds.len());
    let other = sim::run(&scenario, scenario.run.seed + 1, false, |_| {}).unwrap();
    assert_ne!(first.summary.trace_hash, other.summary.trace_hash);
}

#[test]
fn quickstart_trains_for_real_and_the_loss_falls() {
    let mut scenario = shipped("quickstart");
    // Four rounds: at three, the whole inner schedule is one warm-up and a
    // short decay, and the outer momentum overshoots in the last round.
    scenario.run.rounds = 4;
    scenario.run.baseline = false;
    let outcome = run(&scenario);
    assert_honest(&outcome, 4);
    let losses: Vec<f32> = outcome.rounds.iter().filter_map(|r| r.val_loss).collect();
    assert_eq!(losses.len(), 4);
    assert!(losses.windows(2).all(|w| w[1] < w[0]), "{losses:?}");
    assert_eq!(outcome.summary.final_val_loss, losses.last().copied());
    // Same scenario, same trace, with real training too.
    assert_eq!(
        run(&scenario).summary.trace_hash,
        outcome.summary.trace_hash
    );
}

#[test]
fn wan_overlaps_communication_with_compute() {
    let mut scenario = shipped("wan");
    let outcome = run(&scenario);
    assert_honest(&outcome, 10);
    assert!(
        outcome.summary.compute_utilization >= 0.95,
        "{:#?}",
        outcome.summary
    );
    scenario.run.overlap = false;
    let serial = run(&scenario);
    assert!(serial.summary.compute_utilization < outcome.summary.compute_utilization);
}

#[test]
fn stragglers_are_waited_for() {
    let mut scenario = shipped("stragglers");
    scenario.run.rounds = 2;
    scenario.run.model = ModelKind::Synthetic;
    let outcome = run(&scenario);
    assert_honest(&outcome, 2);
    assert!(outcome.rounds.iter().all(|r| r.contributors == 8));
}

#[test]
fn churn_keeps_the_replicas_together() {
    let mut scenario = shipped("churn");
    scenario.run.rounds = 6;
    let outcome = run(&scenario);
    assert_honest(&outcome, 6);
    assert!(
        outcome.rounds.iter().any(|r| r.live_peers < 20),
        "someone left"
    );
}

#[test]
fn after_a_partition_heals_there_is_one_chain() {
    let scenario = shipped("partition-heal");
    let outcome = run(&scenario);
    assert_honest(&outcome, 10);
    // The four cut off caught up by adopting the majority's chain.
    assert!(
        outcome.summary.forks_resolved >= 4,
        "{:#?}",
        outcome.summary
    );
    let during: Vec<usize> = outcome.rounds[3..6]
        .iter()
        .map(|r| r.contributors)
        .collect();
    assert!(during.iter().all(|&c| c <= 8), "{during:?}");
    assert_eq!(outcome.rounds.last().unwrap().contributors, 12);
}

#[test]
fn byzantine_peers_are_rejected_or_bounded() {
    let outcome = synthetic("byzantine", 7);
    assert_honest(&outcome, 7);
    let s = &outcome.summary;
    assert!(s.adversarial.sent >= 10, "{s:#?}");
    // Every malicious contribution is dropped by an honest peer or applied
    // within the bounds; one of an equivocating pair can be both (applied
    // on the branch that won its round, a duplicate to the others).
    let (sent, rejected, applied) = (
        s.adversarial.sent,
        s.adversarial.rejected,
        s.adversarial.applied,
    );
    assert!(rejected + applied >= sent, "{s:#?}");
    assert!(rejected <= sent && applied <= sent, "{s:#?}");
    assert!(s.banned >= 1, "an equivocating key is ignored: {s:#?}");
    for reason in [
        "bad_signature",
        "duplicate",
        "non_finite",
        "norm_outlier",
        "wrong_base",
        "withheld_payload",
    ] {
        assert!(
            s.rejected.get(reason).is_some_and(|&n| n > 0),
            "{reason}: {s:#?}"
        );
    }
}

#[test]
fn among_every_attack_with_real_training_no_honest_update_is_dropped() {
    // After an equivocation split, a peer on the losing branch once put its
    // own update back into its residual although the winning branch had
    // applied it; its next update carried it twice and was dropped as an
    // outlier. With real training the norms show it.
    let outcome = run(&shipped("byzantine"));
    assert_honest(&outcome, 10);
    let s = &outcome.summary;
    assert!(
        s.rejected.get("duplicate").is_some_and(|&n| n > 0),
        "{s:#?}"
    );
    assert!(s.forks_resolved > 0, "{s:#?}");
}

#[test]
fn a_key_that_signs_two_contributions_in_a_round_is_ignored_by_every_honest_peer() {
    let outcome = synthetic("equivocation", 5);
    assert_honest(&outcome, 5);
    let s = &outcome.summary;
    // Both adversaries equivocate in round 0: every honest peer drops one
    // of each pair, and ignores both keys from round 1 on.
    assert_eq!(s.banned, 2, "{s:#?}");
    assert!(
        s.rejected.get("duplicate").is_some_and(|&n| n > 0),
        "{s:#?}"
    );
    assert!(
        s.rejected.get("not_allowed").is_some_and(|&n| n > 0),
        "{s:#?}"
    );
}

#[test]
fn a_thousand_peers_take_a_bounded_subset_per_round() {
    let mut scenario = shipped("scale-1000");
    scenario.run.rounds = 2;
    scenario.groups[0].count = 120;
    let outcome = run(&scenario);
    assert_honest(&outcome, 2);
    assert!(
        outcome.rounds.iter().all(|r| r.contributors == 32),
        "{:?}",
        outcome.rounds
    );
}

#[test]
fn a_recorded_chain_replays_and_a_flipped_byte_is_named() {
    use p2ptrain_node::chain::{replay, ChainError, DataDir};

    let mut scenario = shipped("quickstart");
    scenario.run.rounds = 2;
    scenario.run.baseline = false;
    let root = std::env::temp_dir().join(format!("p2ptrain-record-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let outcome = sim::run_and_record(&scenario, 1, false, &root, |_| {}).unwrap();
    let dir = DataDir::new(&root);
    let params = p2ptrain_trainer::ParamLayout::gpt2(&dir.manifest().unwrap().model).len();
    let verified = replay(&dir, params).unwrap();
    assert_eq!(verified.rounds, 2);
    assert_eq!(verified.contributions, 8);
    assert_eq!(
        verified.head.to_hex(),
        outcome.rounds.last().unwrap().checkpoint
    );

    // One flipped byte in round 1's record: its signatures no longer hold.
    let record = root.join("records/00000001.bin");
    let mut bytes = std::fs::read(&record).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(&record, &bytes).unwrap();
    match replay(&dir, params) {
        Err(ChainError::Record { round: 1, .. } | ChainError::Decode { .. }) => {}
        other => panic!("{other:?}"),
    }
    bytes[at] ^= 0x01;
    std::fs::write(&record, &bytes).unwrap();

    // One flipped bit in the head checkpoint.
    let head = root.join("head.ckpt");
    let mut bytes = std::fs::read(&head).unwrap();
    bytes[0] ^= 0x80;
    std::fs::write(&head, &bytes).unwrap();
    assert!(matches!(replay(&dir, params), Err(ChainError::Head { .. })));
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_run_no_node_could_run_is_refused_before_it_starts() {
    let mut scenario = shipped("quickstart");
    scenario.run.model = ModelKind::Synthetic;
    scenario.run.min_contributors = 0;
    let refused = sim::run(&scenario, scenario.run.seed, false, |_| {})
        .map(drop)
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("rounds.min_contributors must be at least 1"),
        "{refused}"
    );
}
