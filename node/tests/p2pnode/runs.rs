//! Two runs on one network: their nodes connect (routing is shared) but
//! never wait for one another, and one run's node introduces the other's.

use crate::harness::{exclusive, round_line, run_ok, scratch, Node, Stream};

/// A run of single-contributor rounds whose deadline no test outlives: a
/// round that waited for a peer which never contributes would not end.
fn init_patient(dir: &std::path::Path, seed: &str) {
    run_ok(&[
        "init",
        "--dir",
        dir.to_str().unwrap(),
        "--seed",
        seed,
        "--inner-steps",
        "2",
        "--batch-size",
        "2",
        "--min-contributors",
        "1",
        "--deadline-ms",
        "3600000",
        "--commit-window-ms",
        "300",
    ]);
}

/// The peers of its run that the node running on `dir` counts, from
/// `p2pnode status`.
fn run_peers(dir: &std::path::Path) -> u64 {
    let status = run_ok(&["status", "--dir", dir.to_str().unwrap(), "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    status["peers"].as_u64().unwrap()
}

#[test]
fn a_peer_of_another_run_is_named_and_never_waited_for() {
    let _machine = exclusive();
    let root = scratch("other-run");
    let (ours, theirs) = (root.join("ours"), root.join("theirs"));
    init_patient(&ours, "1");
    init_patient(&theirs, "2");
    let mut them = Node::join("theirs", &theirs, &root.join("theirs.key"), &[]);
    let address = them.address();
    let mut us = Node::join(
        "ours",
        &ours,
        &root.join("ours.key"),
        &["--bootstrap", &address],
    );
    for node in [&mut us, &mut them] {
        node.wait_for("the other run named", |s, line| {
            (s == Stream::Err && line.contains("is on another run")).then_some(())
        });
        // Connected to each other, each goes on with rounds of its own.
        let next = node.rounds().last().map_or(0, |r| r.0 + 1);
        node.round(next + 1);
    }
    // Connected, but not a peer of our run: the status does not count it.
    assert_eq!(run_peers(&ours), 0);
    // A newcomer to our run that knows only their node: routing is shared,
    // so it meets ours through theirs, and takes our run's checkpoint.
    let late = root.join("late");
    init_patient(&late, "1");
    let mut newcomer = Node::join(
        "late",
        &late,
        &root.join("late.key"),
        &["--bootstrap", &address],
    );
    // Alone at first, it may close a round or two of its own; the heavier
    // chain, ours, then wins, and it agrees with us from there.
    let mut after = None;
    let agreed = (0..20).any(|_| {
        let (round, hash, _) = newcomer.wait_for("a round line", |s, line| {
            round_line(s, line).filter(|(r, _, _)| after.is_none_or(|a| *r > a))
        });
        after = Some(round);
        us.round(round) == hash
    });
    assert!(agreed, "the newcomer never joined our chain");
    assert_eq!(run_peers(&ours), 1);
    drop((us, them, newcomer));
    std::fs::remove_dir_all(root).unwrap();
}
