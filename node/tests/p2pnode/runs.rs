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
            (s == Stream::Err && line.contains("is on another run"))
                .then(|| assert!(line.contains("joins that one"), "{line}"))
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

#[test]
fn a_node_told_the_run_fetches_it_into_an_empty_directory() {
    let _machine = exclusive();
    let root = scratch("fetch-run");
    let (host_dir, joiner_dir) = (root.join("host"), root.join("joiner"));
    // Not the bundled run: the joiner could not make it itself. Its
    // rounds wait an hour for an expected contribution, so the joiner must
    // learn where the chain stands from the host's last commit, sent again
    // when it subscribes, not from a round that its deadline closed.
    init_patient(&host_dir, "3");
    let mut host = Node::join("host", &host_dir, &root.join("host.key"), &[]);
    // The line that tells how to add a peer names the run.
    let hint = host.wait_for("the line that tells how to add a peer", |s, line| {
        let hint = line.trim().strip_prefix("add a peer: ")?;
        (s == Stream::Err).then(|| hint.to_owned())
    });
    let after = |flag: &str| {
        let words: Vec<&str> = hint.split_whitespace().collect();
        let at = words.iter().position(|w| *w == flag).unwrap();
        words[at + 1].to_owned()
    };
    let (run, address) = (after("--run"), after("--bootstrap"));
    host.round(3);
    let args = ["--run", &run, "--bootstrap", &address];
    let mut joiner = Node::join("joiner", &joiner_dir, &root.join("joiner.key"), &args);
    joiner.wait_for("the fetched run", |s, line| {
        (s == Stream::Err && line.starts_with(&format!("fetched run {run}"))).then_some(())
    });
    // It catches up with the host's chain, records included.
    joiner.wait_for("the adopted rounds' records", |s, line| {
        (s == Stream::Err && line.starts_with("fetched the records of")).then_some(())
    });
    joiner.kill();
    host.kill();
    let file = |dir: &std::path::Path, name: &str| std::fs::read(dir.join(name)).unwrap();
    for name in ["manifest.bin", "genesis.ckpt"] {
        assert!(file(&host_dir, name) == file(&joiner_dir, name), "{name}");
    }
    let verified = run_ok(&["verify", joiner_dir.to_str().unwrap()]);
    assert!(verified.starts_with("ok: "), "{verified}");
    // Told another run than the one its directory holds, a node refuses.
    let refused = crate::harness::run(&[
        "join",
        "--dir",
        joiner_dir.to_str().unwrap(),
        "--key",
        root.join("joiner.key").to_str().unwrap(),
        "--run",
        &"0".repeat(64),
    ]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains(&format!("holds run {run}, not run")),
        "{said}"
    );
    drop((host, joiner));
    std::fs::remove_dir_all(root).unwrap();
}
