//! One key, one contribution a round: a node restarted in a round announces
//! again the contribution it made before, and two nodes sharing one key are
//! caught by the peers that hear both.

use p2ptrain_node::chain::DataDir;

use crate::harness::{exclusive, init, round_line, run_ok, scratch, Node, Stream};

/// The line a peer prints when it starts ignoring a key that signed two
/// contributions for one round.
const CAUGHT: &str = "is ignored: it signed two different contributions";

#[test]
fn a_node_restarted_in_a_round_announces_its_contribution_again() {
    let _machine = exclusive();
    let root = scratch("reannounce");
    let (b_dir, a_dir) = (root.join("b"), root.join("a"));
    // Rounds of two contributions: b, alone, announces and waits.
    init(&b_dir, 2);
    init(&a_dir, 2);
    let b_key = root.join("b.key");
    let mut b = Node::join("b", &b_dir, &b_key, &["--log-format", "json"]);
    let announced = b.wait_for("b's announcement", |s, line| {
        let event: serde_json::Value = serde_json::from_str(line).ok()?;
        (s == Stream::Out && event["event"] == "announced" && event["round"] == 0)
            .then(|| event["id"].as_str().map(str::to_owned))
            .flatten()
    });
    b.kill();
    // Kept on disk before it was announced.
    let data = DataDir::new(&b_dir);
    let before = data.announcement().unwrap().unwrap();
    assert_eq!(before.contribution.id().to_string(), announced);
    let mut b = Node::join("b again", &b_dir, &b_key, &[]);
    b.wait_for("the announcement again", |s, line| {
        (s == Stream::Err && line.starts_with("announcing again its contribution to round 0"))
            .then_some(())
    });
    let address = b.address();
    let mut a = Node::join("a", &a_dir, &root.join("a.key"), &["--bootstrap", &address]);
    let (_, hash, _) = b.wait_for("round 0", |s, line| {
        round_line(s, line).filter(|(round, _, _)| *round == 0)
    });
    assert_eq!(a.round(0), hash);
    // Round 0 applied the contribution b made before it was killed, and
    // a never took b for two nodes.
    let record = data.record(0).unwrap().unwrap();
    let ids: Vec<_> = record.contributions.iter().map(|c| c.id()).collect();
    assert!(ids.contains(&before.contribution.id()), "{ids:?}");
    assert_eq!(ids.len(), 2);
    assert!(!a.said(CAUGHT));
    drop((a, b));
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn two_nodes_sharing_a_key_are_caught_by_the_peers_that_hear_both() {
    let _machine = exclusive();
    let root = scratch("twins");
    // Rounds of four contributions: with one key between them, a and b
    // are one peer, so round 0 stays open while both are heard.
    for name in ["c", "d", "a", "b"] {
        init(&root.join(name), 4);
    }
    let mut c = Node::join("c", &root.join("c"), &root.join("c.key"), &[]);
    let c_address = c.address();
    let mut d = Node::join(
        "d",
        &root.join("d"),
        &root.join("d.key"),
        &["--bootstrap", &c_address],
    );
    let d_address = d.address();
    // Two machines cloned from one image: one key file, copied; each
    // trains on data of its own, so their updates differ. Each meets the
    // swarm through another peer.
    let key = root.join("a.key");
    run_ok(&["keygen", "--out", key.to_str().unwrap()]);
    let copy = root.join("b.key");
    std::fs::copy(&key, &copy).unwrap();
    let twin = |name: &str, key: &std::path::Path, text: &str, via: &str| {
        let data = root.join(format!("{name}.txt"));
        std::fs::write(&data, text.repeat(40)).unwrap();
        let data = data.to_str().unwrap().to_owned();
        let dir = root.join(name);
        Node::join(name, &dir, key, &["--bootstrap", via, "--data", &data])
    };
    let twins = [
        twin("a", &key, "the first machine's text. ", &c_address),
        twin("b", &copy, "THE SECOND MACHINE'S TEXT! ", &d_address),
    ];
    // Whichever peer hears both passes the proof on: both ignore the key.
    let shared = run_ok(&["pubkey", "--key", key.to_str().unwrap()]);
    for node in [&mut c, &mut d] {
        let caught = node.wait_for("the key caught", |s, line| {
            (s == Stream::Err && line.contains(CAUGHT)).then(|| line.to_owned())
        });
        assert!(
            caught.starts_with(&format!("peer {} ", shared.trim())),
            "{caught}"
        );
        assert!(
            caught.ends_with("(a faulty peer, or two nodes sharing one key)"),
            "{caught}"
        );
    }
    drop((c, d, twins));
    std::fs::remove_dir_all(root).unwrap();
}
