//! Two runs on one network: their nodes connect (routing is shared) but
//! never wait for one another.

use crate::harness::{exclusive, run_ok, scratch, Node, Stream};

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
    drop((us, them));
    std::fs::remove_dir_all(root).unwrap();
}
