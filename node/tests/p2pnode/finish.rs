//! `--rounds`: a node that has trained every round asked of it stays up
//! while a peer of the run is behind it, so that the peer can still fetch
//! the last checkpoint and the records that lead to it.

use std::path::Path;

use crate::harness::{exclusive, run_ok, scratch, Node, Stream};

/// A new run in `dir`: rounds of 2 contributions at least, which wait at
/// most 1.5 s for a contributor that said nothing.
fn init_quick(dir: &Path) -> Result<(), String> {
    let dir = dir.to_str().ok_or("a path that is not UTF-8")?;
    run_ok(&[
        "init",
        "--dir",
        dir,
        "--inner-steps",
        "2",
        "--batch-size",
        "2",
        "--min-contributors",
        "2",
        "--deadline-ms",
        "1500",
        "--commit-window-ms",
        "300",
    ]);
    Ok(())
}

#[test]
fn finished_nodes_stay_up_until_frozen_peers_have_caught_up(
) -> Result<(), Box<dyn std::error::Error>> {
    let _machine = exclusive();
    let root = scratch("linger");
    for name in ["a", "b", "d", "e"] {
        init_quick(&root.join(name))?;
    }
    // Each dials those started before it: a and b meet directly, as
    // they must to go on while d and e are frozen.
    let join = |name: &str, bootstrap: &[&str]| {
        let mut args = vec!["--rounds", "4", "--linger", "40"];
        for address in bootstrap {
            args.extend(["--bootstrap", address]);
        }
        Node::join(
            name,
            &root.join(name),
            &root.join(format!("{name}.key")),
            &args,
        )
    };
    let mut d = join("d", &[]);
    let d_address = d.address();
    let mut e = join("e", &[&d_address]);
    let e_address = e.address();
    let mut a = join("a", &[&d_address, &e_address]);
    let a_address = a.address();
    let mut b = join("b", &[&d_address, &e_address, &a_address]);
    // The four close round 0 together; then e freezes, seen at round 1
    // at most. a, b and d close round 1 (three of round 0's four, the
    // quorum); then d freezes too, seen at round 2 at most.
    e.round(0);
    e.pause();
    d.round(1);
    d.pause();
    // a and b close rounds 2 and 3 without them (each round waits out its
    // deadline for them), and then stay up for them.
    let staying = |s: Stream, line: &str| {
        (s == Stream::Err && line.starts_with("trained every round asked for; staying up"))
            .then(|| line.to_owned())
    };
    // (b too, should b's last commit reach a after a closed the round.)
    let a_stays = a.wait_for("a staying up for d and e", staying);
    assert!(
        a_stays.contains("of the run, not yet seen at round 4"),
        "{a_stays}"
    );
    b.wait_for("b staying up for d and e", staying);
    // d and e go on: each takes a checkpoint of theirs (and may close
    // round 3 itself from it), fetches the records of the rounds it
    // missed, and stops, its directory whole. Neither signs anything at
    // round 4, so each learns that the other holds it by asking for its
    // record of round 3, rather than staying up for it until `--linger`
    // runs out.
    d.resume();
    e.resume();
    for node in [&mut d, &mut e] {
        assert!(node.exit().success());
        assert!(node.rounds().iter().any(|(_, _, adopted)| *adopted));
        assert!(
            node.said("every peer of the run still connected is at round 4"),
            "{}",
            node.log()
        );
    }
    for name in ["d", "e"] {
        let verified = run_ok(&["verify", root.join(name).to_str().ok_or("path")?]);
        assert!(verified.starts_with("ok: 4 rounds"), "{name}: {verified}");
    }
    // a and b stop too, having trained nothing past round 3.
    for node in [&mut a, &mut b] {
        assert!(node.exit().success());
        assert!(node.said("every peer of the run still connected is at round 4"));
        let last = node.rounds().into_iter().map(|(round, _, _)| round).max();
        assert_eq!(last, Some(3));
    }
    let hashes: Vec<Option<String>> = [&a, &b, &d, &e]
        .iter()
        .map(|node| {
            let rounds = node.rounds();
            rounds
                .iter()
                .find(|(round, _, _)| *round == 3)
                .map(|(_, hash, _)| hash.clone())
        })
        .collect();
    assert!(
        hashes.iter().all(|h| h.is_some() && *h == hashes[0]),
        "{hashes:?}"
    );
    drop((a, b, d, e));
    std::fs::remove_dir_all(root)?;
    Ok(())
}
