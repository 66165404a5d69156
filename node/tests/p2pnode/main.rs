//! `p2pnode` as a user runs it: real processes on 127.0.0.1, each with its
//! own data directory, tiny rounds, every wait bounded and driven by the
//! lines the nodes print.

mod branch;
mod data;
mod finish;
mod harness;
mod inputs;
mod keys;
mod observe;
mod rogue;
mod runs;

use std::collections::BTreeMap;
use std::path::Path;

use harness::{exclusive, init, run, run_ok, scratch, solo, Node, Stream};

/// Starts three nodes of one run in `root`; each dials those started before
/// it. `extra` goes to every node.
fn three_nodes(root: &Path, extra: &[&str]) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    let mut addresses: Vec<String> = Vec::new();
    for name in ["a", "b", "c"] {
        let dir = root.join(name);
        init(&dir, 2);
        let mut args: Vec<&str> = extra.to_vec();
        for address in &addresses {
            args.extend(["--bootstrap", address.as_str()]);
        }
        let mut node = Node::join(name, &dir, &root.join(format!("{name}.key")), &args);
        let address = node.address();
        nodes.push(node);
        addresses.push(address);
    }
    nodes
}

/// Asserts every round reported by more than one node has one hash.
fn assert_agree(nodes: &[Node]) {
    let mut by_round: BTreeMap<u64, Vec<(usize, String)>> = BTreeMap::new();
    for (i, node) in nodes.iter().enumerate() {
        for (round, hash, _) in node.rounds() {
            by_round.entry(round).or_default().push((i, hash));
        }
    }
    for (round, hashes) in by_round {
        assert!(
            hashes.windows(2).all(|w| w[0].1 == w[1].1),
            "round {round}: {hashes:?}"
        );
    }
}

#[test]
fn three_nodes_agree_on_the_checkpoint_of_every_round() {
    let _machine = exclusive();
    let root = scratch("agree");
    let mut nodes = three_nodes(&root, &["--rounds", "4"]);
    for node in &mut nodes {
        assert!(node.exit().success());
    }
    let last: Vec<String> = nodes.iter_mut().map(|n| n.round(3)).collect();
    assert!(last.windows(2).all(|w| w[0] == w[1]), "{last:?}");
    assert_agree(&nodes);
    // Several rounds were closed together, not only adopted.
    let finalized = nodes[0].rounds().iter().filter(|r| !r.2).count();
    assert!(finalized >= 3, "{:?}", nodes[0].rounds());
    // Rounds of two contributions: the first node said it cannot go alone.
    assert!(nodes[0].said("a round needs 2 contributions: none closes until 1 more peer joins"));
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_node_killed_mid_round_resumes_from_its_directory_and_agrees_again() {
    let _machine = exclusive();
    let root = scratch("kill");
    let mut nodes = three_nodes(&root, &[]);
    // A round it closed itself is on its disk (one it adopted is not).
    let (closed, _, _) = nodes[2].wait_for("a round it closed", |s, line| {
        harness::round_line(s, line).filter(|(_, _, adopted)| !adopted)
    });
    // The next round is under way.
    nodes[2].kill();
    // The other two finish it and go on without it. (The slower of them
    // may take a later round's checkpoint from the other rather than close
    // a round itself: either way they agree.)
    let (b_round, b_hash, _) = nodes[1].wait_for("a round after the kill", |s, line| {
        harness::round_line(s, line).filter(|(r, _, _)| *r >= closed + 2)
    });
    assert_eq!(nodes[0].round(b_round), b_hash);

    let addresses = [nodes[0].address(), nodes[1].address()];
    let dir = root.join("c");
    let mut c = Node::join(
        "c again",
        &dir,
        &root.join("c.key"),
        &["--bootstrap", &addresses[0], "--bootstrap", &addresses[1]],
    );
    let (round, hash) = c.wait_for("resume line", |s, line| {
        let rest = line.strip_prefix("resuming from round ")?;
        let (round, hash) = rest.split_once(", checkpoint ")?;
        (s == Stream::Err).then(|| (round.parse::<u64>().unwrap(), hash.to_owned()))
    });
    assert!(
        round > closed,
        "it had closed round {closed} before the kill"
    );
    assert_eq!(
        hash,
        nodes[0].round(round - 1),
        "resumed on the swarm's chain"
    );
    // head.ckpt is the result of one of its records: at most the rounds
    // after it are replayed, never the whole chain.
    assert!(!c.said("from genesis"), "head.ckpt matched a record");
    // It catches up (adopting the swarm's checkpoint), then closes rounds
    // with the others, on the same checkpoints.
    let (first, _, _) = c.wait_for("a round after the restart", harness::round_line);
    let (next, _, _) = c.wait_for("a round closed with the others", |s, line| {
        let (r, hash, adopted) = harness::round_line(s, line)?;
        (!adopted && r > first).then_some((r, hash, adopted))
    });
    // The others reach that round too (closing it, or taking a later
    // checkpoint), and whoever printed it printed c's hash.
    for node in &mut nodes[..2] {
        node.wait_for("the same round", |s, line| {
            harness::round_line(s, line).filter(|(r, _, _)| *r >= next)
        });
    }
    let c_hash = c.round(next);
    let others: Vec<String> = nodes
        .iter()
        .flat_map(Node::rounds)
        .filter(|(r, _, _)| *r == next)
        .map(|(_, hash, _)| hash)
        .collect();
    assert!(!others.is_empty(), "nobody else printed round {next}");
    assert!(
        others.iter().all(|h| *h == c_hash),
        "round {next}: {others:?} vs {c_hash}"
    );
    nodes.push(c);
    assert_agree(&nodes);
    drop(nodes);
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_fourth_node_started_late_downloads_the_checkpoint_and_agrees() {
    let _machine = exclusive();
    let root = scratch("late");
    let mut nodes = three_nodes(&root, &[]);
    nodes[0].round(2);
    let addresses: Vec<String> = nodes.iter_mut().map(Node::address).collect();
    let dir = root.join("d");
    init(&dir, 2);
    let mut args = vec![];
    for address in &addresses {
        args.extend(["--bootstrap", address.as_str()]);
    }
    let mut d = Node::join("d", &dir, &root.join("d.key"), &args);
    // It starts at genesis, takes the swarm's checkpoint (in slices from
    // the three), then closes rounds with them.
    let (adopted, _, _) = d.wait_for("the adopted checkpoint", |s, line| {
        harness::round_line(s, line).filter(|(_, _, adopted)| *adopted)
    });
    assert!(adopted >= 2, "it adopted round {adopted}");
    let (closed, _, _) = d.wait_for("a round closed with the others", |s, line| {
        harness::round_line(s, line).filter(|(r, _, was_adopted)| !was_adopted && *r > adopted)
    });
    // The others reach that round too; whoever printed it (and the
    // round d adopted) printed d's hash — `assert_agree` below.
    for node in &mut nodes {
        node.wait_for("the same round", |s, line| {
            harness::round_line(s, line).filter(|(r, _, _)| *r >= closed)
        });
    }
    let printed = nodes
        .iter()
        .flat_map(Node::rounds)
        .filter(|(r, _, _)| *r == closed)
        .count();
    assert!(printed > 0, "nobody else printed round {closed}");
    // It fetches the records of the rounds it adopted, so its directory
    // replays from genesis like the others'.
    d.wait_for("the adopted rounds' records", |s, line| {
        (s == Stream::Err && line.starts_with("fetched the records of"))
            .then(|| assert!(line.ends_with("verify replays the whole chain"), "{line}"))
    });
    d.kill();
    let verified = run_ok(&["verify", dir.to_str().unwrap()]);
    assert!(verified.starts_with("ok: "), "{verified}");
    nodes.push(d);
    assert_agree(&nodes);
    drop(nodes);
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn one_bootstrap_address_is_enough_to_meet_the_swarm() {
    let _machine = exclusive();
    let root = scratch("discovery");
    let start = |name: &str, bootstrap: &[&str]| {
        let dir = root.join(name);
        init(&dir, 1);
        let mut args = vec![];
        for address in bootstrap {
            args.extend(["--bootstrap", *address]);
        }
        Node::join(name, &dir, &root.join(format!("{name}.key")), &args)
    };
    let mut a = start("a", &[]);
    let address = a.address();
    let mut b = start("b", &[&address]);
    b.address();
    let mut c = start("c", &[&address]);
    c.address();
    // c was told only of a; Kademlia, through a, tells it of b.
    let key_of = |name: &str| {
        let key = root.join(format!("{name}.key"));
        run_ok(&["pubkey", "--key", key.to_str().unwrap()])
            .trim()
            .to_owned()
    };
    let b_key = key_of("b");
    c.wait_for("b connected", |s, line| {
        (s == Stream::Err && line == format!("peer {b_key} connected")).then_some(())
    });
    drop((a, b, c));
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn nodes_connect_over_quic() {
    let _machine = exclusive();
    let root = scratch("quic");
    let (a_dir, b_dir) = (root.join("a"), root.join("b"));
    init(&a_dir, 1);
    init(&b_dir, 1);
    let quic = "/ip4/127.0.0.1/udp/0/quic-v1";
    let mut a = Node::join("a", &a_dir, &root.join("a.key"), &["--listen", quic]);
    let address = a.wait_for("a QUIC address", |s, line| {
        let address = line.strip_prefix("listening on ")?;
        (s == Stream::Err && address.contains("/quic-v1/")).then(|| address.to_owned())
    });
    // b knows only a's QUIC address, so its first connection is over QUIC.
    let mut b = Node::join("b", &b_dir, &root.join("b.key"), &["--bootstrap", &address]);
    let a_key = run_ok(&["pubkey", "--key", root.join("a.key").to_str().unwrap()]);
    let a_key = a_key.trim();
    b.wait_for("a connected", |s, line| {
        (s == Stream::Err && line == format!("peer {a_key} connected")).then_some(())
    });
    drop((a, b));
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_node_with_another_pre_shared_key_cannot_connect() {
    let _machine = exclusive();
    let root = scratch("psk");
    let key_file = |name: &str| {
        let path = root.join(name);
        run_ok(&["swarm-key", "--out", path.to_str().unwrap()]);
        path.to_str().unwrap().to_owned()
    };
    let (ours, theirs) = (key_file("ours.psk"), key_file("theirs.psk"));
    let pubkey = |name: &str| {
        let path = root.join(format!("{name}.key"));
        run_ok(&["keygen", "--out", path.to_str().unwrap()])
            .trim()
            .to_owned()
    };
    let (member_key, outsider_key) = (pubkey("member"), pubkey("outsider"));
    // Rounds of two contributions: host and member close none without each
    // other's payload, fetched through the private transport.
    let start = |name: &str, psk: &str, bootstrap: Option<&str>| {
        let dir = root.join(name);
        init(&dir, 2);
        let mut args = vec!["--psk", psk];
        args.extend(bootstrap.iter().flat_map(|b| ["--bootstrap", b]));
        Node::join(name, &dir, &root.join(format!("{name}.key")), &args)
    };
    let mut host = start("host", &ours, None);
    let address = host.address();
    let mut member = start("member", &ours, Some(&address));
    let mut outsider = start("outsider", &theirs, Some(&address));

    member.wait_for("a connection", |_, l| {
        l.contains(" connected").then_some(())
    });
    host.wait_for("the member", |_, l| {
        (l == format!("peer {member_key} connected")).then_some(())
    });
    let failed = outsider.wait_for("a failed dial", |_, l| {
        l.starts_with("could not connect").then(|| l.to_owned())
    });
    // The line points at the likely cause.
    assert!(failed.ends_with("needs the same --psk file)"), "{failed}");
    assert!(
        failed.contains("the peer holds another pre-shared key"),
        "{failed}"
    );
    // The host names the refused connection too.
    host.wait_for("the refused connection", |_, l| {
        (l.starts_with("refused a connection from /ip4/127.0.0.1/tcp/")
            && l.contains("the peer holds another pre-shared key"))
        .then_some(())
    });
    // The members train together.
    assert_eq!(host.round(1), member.round(1));
    assert!(
        member.rounds().iter().any(|(_, _, adopted)| !adopted),
        "the member closed no round itself: {:?}",
        member.rounds()
    );
    assert!(!outsider.said(" connected"));
    assert!(!host.said(&format!("peer {outsider_key} connected")));
    drop((host, member, outsider));
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_node_off_the_allow_list_is_refused_and_never_contributes() {
    let _machine = exclusive();
    let root = scratch("allow");
    let mut keys = BTreeMap::new();
    for name in ["a", "b", "c"] {
        let path = root.join(format!("{name}.key"));
        let key = run_ok(&["keygen", "--out", path.to_str().unwrap()]);
        keys.insert(name, key.trim().to_owned());
    }
    let list = root.join("allow.txt");
    std::fs::write(&list, format!("# the lab\n{}\n{}\n", keys["a"], keys["b"])).unwrap();
    let list = list.to_str().unwrap();
    let start = |name: &str, args: &[&str]| {
        let dir = root.join(name);
        init(&dir, 2);
        Node::join(name, &dir, &root.join(format!("{name}.key")), args)
    };
    let mut a = start("a", &["--allow", list]);
    let a_address = a.address();
    let mut b = start("b", &["--allow", list, "--bootstrap", &a_address]);
    let b_address = b.address();
    let mut c = start("c", &["--bootstrap", &a_address, "--bootstrap", &b_address]);

    let refused = format!("refused peer {}: not on the allow-list", keys["c"]);
    a.wait_for("the outsider refused", |_, l| (l == refused).then_some(()));
    b.wait_for("the outsider refused", |_, l| (l == refused).then_some(()));
    for round in 0..2 {
        assert_eq!(a.round(round), b.round(round), "round {round}");
    }
    let outsider_in = format!("peer {} connected", keys["c"]);
    assert!(!a.said(&outsider_in) && !b.said(&outsider_in));
    a.kill();
    b.kill();
    c.kill();
    // Every contribution on the chain is a member's.
    let history = run_ok(&["history", "--json", root.join("a").to_str().unwrap()]);
    let authors: Vec<&str> = history
        .lines()
        .filter_map(|l| l.trim().strip_prefix("\"author\": \""))
        .map(|l| l.trim_end_matches(['"', ',']))
        .collect();
    assert!(authors.len() >= 4, "{history}");
    assert!(
        authors.iter().all(|a| *a == keys["a"] || *a == keys["b"]),
        "{authors:?}"
    );
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_restarted_node_resumes_after_its_last_round_and_replays_a_lost_head() {
    let _machine = exclusive();
    let (root, dir, key) = solo("resume");
    let mut first = Node::join("first", &dir, &key, &["--rounds", "2"]);
    assert!(first.exit().success());
    let round1 = first.round(1);

    let mut second = Node::join("second", &dir, &key, &["--rounds", "4"]);
    assert!(second.exit().success());
    assert!(second.said(&format!("resuming from round 2, checkpoint {round1}")));
    assert!(second.said("restored the error-feedback residual"));
    assert_eq!(second.rounds().first().map(|r| r.0), Some(2));
    let round3 = second.round(3);

    // As if killed between writing round 3's record and its checkpoint.
    std::fs::remove_file(dir.join("head.ckpt")).unwrap();
    let mut third = Node::join("third", &dir, &key, &["--rounds", "5"]);
    assert!(third.exit().success());
    assert!(third.said("(missing) is not the result of round 3: replayed the records from genesis"));
    assert!(third.said(&format!("resuming from round 4, checkpoint {round3}")));
    let verified = run_ok(&["verify", dir.to_str().unwrap()]);
    assert!(verified.starts_with("ok: 5 rounds"), "{verified}");
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn sigterm_stops_a_node_cleanly_and_it_resumes_with_its_residual() {
    let _machine = exclusive();
    let (root, dir, key) = solo("sigterm");
    let mut first = Node::join("first", &dir, &key, &[]);
    first.round(1);
    first.terminate();
    assert!(first.exit().success());
    let last = first.rounds().last().map(|r| r.0).unwrap();

    let until = (last + 2).to_string();
    let mut second = Node::join("second", &dir, &key, &["--rounds", &until]);
    assert!(second.exit().success());
    assert!(second.said(&format!("resuming from round {}", last + 1)));
    // Saved on the way out, which a killed node cannot do.
    assert!(second.said("restored the error-feedback residual"));
    // Each says where it stopped: asked to, and at its --rounds.
    let held = |rounds: u64| {
        let s = if rounds == 1 { "" } else { "s" };
        format!("{} holds {rounds} round{s}", dir.display())
    };
    assert!(first.said(&format!("stopped: {}", held(last + 1))));
    assert!(second.said(&format!("done: {}", held(last + 2))));
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_sigterm_sent_twice_at_once_is_one_request_to_stop() -> Result<(), std::io::Error> {
    let _machine = exclusive();
    let (root, dir, key) = solo("double-sigterm");
    let mut node = Node::join("node", &dir, &key, &[]);
    node.round(0);
    // As `timeout` does: to the process, then to its process group.
    node.terminate();
    node.terminate();
    assert!(node.exit().success());
    assert!(node.said(&format!("stopped: {} holds", dir.display())));
    assert!(!node.said("stopped at once"));
    std::fs::remove_dir_all(root)
}

#[test]
fn a_second_sigterm_stops_a_node_at_once_and_it_resumes_from_disk() {
    let _machine = exclusive();
    let root = scratch("second-sigterm");
    let (dir, key) = (root.join("node"), root.join("node.key"));
    // An inner step of 1024 sequences takes seconds, as a large model's
    // does: the first request to stop finds one under way.
    run_ok(&[
        "init",
        "--dir",
        dir.to_str().unwrap(),
        "--inner-steps",
        "1",
        "--batch-size",
        "1024",
        "--commit-window-ms",
        "300",
    ]);
    let mut node = Node::join("node", &dir, &key, &[]);
    node.wait_for("the node training", |s, line| {
        (s == Stream::Err && line.contains("waiting for peers")).then_some(())
    });
    node.terminate();
    node.wait_for("the line that says the step ends first", |s, line| {
        (s == Stream::Err && line.starts_with("stopping: an inner step under way")).then_some(())
    });
    node.terminate();
    assert_eq!(node.exit().code(), Some(130));
    assert!(node.said(&format!("stopped at once: {} holds", dir.display())));
    // What was on disk is whole: the same command goes on from there.
    let mut again = Node::join("again", &dir, &key, &["--rounds", "1"]);
    assert!(again.exit().success());
    let verified = run_ok(&["verify", dir.to_str().unwrap()]);
    assert!(verified.starts_with("ok: 1 round"), "{verified}");
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn verify_passes_on_a_finished_directory_and_names_a_flipped_byte() {
    let _machine = exclusive();
    let (root, dir, key) = solo("verify");
    let mut node = Node::join("solo", &dir, &key, &["--rounds", "3"]);
    assert!(node.exit().success());
    assert!(node.said("it trains alone until some join"));
    let dir_arg = dir.to_str().unwrap();
    let verified = run_ok(&["verify", dir_arg]);
    assert!(
        verified.starts_with("ok: 3 rounds, 3 contributions"),
        "{verified}"
    );
    assert!(verified.trim_end().ends_with(&node.round(2)), "{verified}");

    let record = dir.join("records").join("00000001.bin");
    let mut bytes = std::fs::read(&record).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&record, bytes).unwrap();
    let output = run(&["verify", dir_arg]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("round 1:"), "{stderr}");

    // A record missing in the middle is named, not read as the chain's end.
    std::fs::remove_file(&record).unwrap();
    let output = run(&["verify", dir_arg]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("round 1: no record, though the records go on to round 2"),
        "{stderr}"
    );

    // A folder that holds no run is refused, not read as an empty chain.
    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    for command in ["verify", "history"] {
        let output = run(&[command, empty.to_str().unwrap()]);
        assert!(!output.status.success(), "{command} on an empty folder");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("is not a data directory"), "{stderr}");
    }
    std::fs::remove_dir_all(root).unwrap();
}
