//! A node that built a branch of its own and then meets a heavier one
//! adopts it, and its directory holds the chain it adopted: its records of
//! the branch it left are replaced, and `verify` replays it from genesis.

use p2ptrain_node::chain::DataDir;
use p2ptrain_protocol::Digest;

use crate::harness::{exclusive, init, round_line, run_ok, scratch, Node, Stream};

/// The result of round `round` in the records of `dir`.
fn result(dir: &std::path::Path, round: u64) -> Digest {
    let record = DataDir::new(dir).record(round).unwrap().unwrap();
    record.verify().unwrap().0.result
}

#[test]
fn a_node_that_adopts_a_heavier_branch_replaces_its_records_and_verifies() {
    let _machine = exclusive();
    let root = scratch("branch");
    let (a_dir, b_dir) = (root.join("a"), root.join("b"));
    // Rounds of one contribution: a node alone builds a chain of its own.
    init(&a_dir, 1);
    init(&b_dir, 1);
    let b_key = root.join("b.key");
    let mut b = Node::join("b alone", &b_dir, &b_key, &[]);
    b.wait_for("b's round 2", |s, line| {
        round_line(s, line).filter(|(round, _, _)| *round == 2)
    });
    b.kill();
    let left = result(&b_dir, 0);
    // a alone builds a longer chain, so a heavier one.
    let mut a = Node::join("a", &a_dir, &root.join("a.key"), &[]);
    a.wait_for("a's round 8", |s, line| {
        round_line(s, line).filter(|(round, _, _)| *round == 8)
    });
    let address = a.address();
    let mut b = Node::join("b", &b_dir, &b_key, &["--bootstrap", &address]);
    b.wait_for("the adopted rounds' records", |s, line| {
        (s == Stream::Err && line.starts_with("fetched the records of"))
            .then(|| assert!(line.ends_with("verify replays the whole chain"), "{line}"))
    });
    b.kill();
    a.kill();
    // b's round 0 is a's now, and its whole directory replays.
    assert_eq!(result(&b_dir, 0), result(&a_dir, 0));
    assert_ne!(result(&b_dir, 0), left);
    let verified = run_ok(&["verify", b_dir.to_str().unwrap()]);
    assert!(verified.starts_with("ok: "), "{verified}");
    drop((a, b));
    std::fs::remove_dir_all(root).unwrap();
}
