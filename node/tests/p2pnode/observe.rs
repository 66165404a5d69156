//! Watching a running node from outside: `status`, `--metrics`,
//! `--log-format json`, and `export` of its checkpoint.

use std::io::{Read, Write};

use p2ptrain_node::chain::{latest, DataDir};
use p2ptrain_protocol::RunManifest;
use p2ptrain_trainer::ParamLayout;

use crate::harness::{exclusive, run, run_ok, scratch, solo, Node, Stream};

/// GET `path` from `address` (host:port); the whole answer.
fn http_get(address: &str, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn a_running_node_answers_status_and_metrics_and_its_checkpoint_exports() {
    let _machine = exclusive();
    let (root, dir, key) = solo("observe");
    let dir_arg = dir.to_str().unwrap();
    let mut node = Node::join(
        "solo",
        &dir,
        &key,
        &["--log-format", "json", "--metrics", "127.0.0.1:0"],
    );
    let metrics = node.wait_for("the metrics address", |s, line| {
        let event: serde_json::Value = serde_json::from_str(line).ok()?;
        assert_eq!(s, Stream::Out, "{line}");
        let message = event["message"].as_str()?;
        Some(
            message
                .strip_prefix("metrics on http://")?
                .strip_suffix("/metrics")?
                .to_owned(),
        )
    });
    let finalized = |round: u64| {
        move |_: Stream, line: &str| {
            let event: serde_json::Value = serde_json::from_str(line).ok()?;
            (event["event"] == "finalized" && event["round"] == round)
                .then(|| event["checkpoint"].as_str().map(str::to_owned))
                .flatten()
        }
    };
    node.wait_for("round 1 finalized", finalized(1));

    let status: serde_json::Value =
        serde_json::from_str(&run_ok(&["status", "--dir", dir_arg, "--json"])).unwrap();
    assert!(status["round"].as_u64().unwrap() >= 2, "{status}");
    assert!(status["rounds_done"].as_u64().unwrap() >= 2, "{status}");
    assert_eq!(status["last_contributions"], 1, "{status}");
    let text = run_ok(&["status", "--dir", dir_arg]);
    assert!(text.contains("peers       0"), "{text}");

    let answer = http_get(&metrics, "/metrics");
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    let round: u64 = answer
        .lines()
        .find_map(|l| l.strip_prefix("p2ptrain_round "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no round metric in {answer}"));
    assert!(round >= 2, "{answer}");
    assert!(http_get(&metrics, "/other").starts_with("HTTP/1.1 404"));

    // Killed: its socket stays behind, and status says nobody answers.
    node.kill();
    let asked = run(&["status", "--dir", dir_arg]);
    assert!(!asked.status.success());
    let said = String::from_utf8_lossy(&asked.stderr);
    assert!(
        said.contains(&format!(
            "no node is running on {dir_arg}: `p2pnode join --dir"
        )),
        "{said}"
    );
    assert!(!said.contains("Caused by"), "{said}");

    let out = root.join("hf");
    let exported = run_ok(&["export", dir_arg, "--out", out.to_str().unwrap()]);
    let data = DataDir::new(&dir);
    let manifest: RunManifest = data.manifest().unwrap();
    let head = latest(&data, ParamLayout::gpt2(&manifest.model).len())
        .unwrap()
        .state;
    assert!(exported.contains(&head.hash().to_string()), "{exported}");
    let (config, values) = p2ptrain_trainer::hf::import(&out).unwrap();
    assert_eq!(config, manifest.model);
    assert_eq!(values, head.params);
    // A second export never overwrites the first.
    let again = run(&["export", dir_arg, "--out", out.to_str().unwrap()]);
    assert!(!again.status.success());

    // The export starts a new run: its weights are the new genesis.
    let tuned = root.join("tuned");
    run_ok(&[
        "init",
        "--dir",
        tuned.to_str().unwrap(),
        "--from",
        out.to_str().unwrap(),
    ]);
    let tuned = DataDir::new(&tuned);
    let genesis = tuned.genesis(values.len()).unwrap();
    assert_eq!(genesis.params, head.params);
    assert_eq!(tuned.manifest().unwrap().model, manifest.model);
    // Named by the folder alone: where it lay stays on this machine.
    assert_eq!(tuned.manifest().unwrap().name, "fine-tune of hf");
    assert_eq!(tuned.manifest().unwrap().genesis, genesis.hash());
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_new_run_that_join_starts_is_told_in_json_like_the_rest(
) -> Result<(), Box<dyn std::error::Error>> {
    let _machine = exclusive();
    let root = scratch("json-new-run");
    let dir = root.join("run");
    let key = root.join("node.key");
    let stdout = run_ok(&[
        "join",
        "--dir",
        dir.to_str().ok_or("path")?,
        "--key",
        key.to_str().ok_or("path")?,
        "--no-mdns",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--rounds",
        "1",
        "--log-format",
        "json",
    ]);
    // Every line on stdout is a JSON object, the new run's included.
    let mut events = Vec::new();
    for line in stdout.lines() {
        let event: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("not JSON: {line:?}: {e}"))?;
        events.push(event);
    }
    let run = DataDir::new(&dir).manifest()?.id()?.to_string();
    let written = events
        .iter()
        .find(|e| e["event"] == "new_run_written")
        .ok_or_else(|| format!("no new_run_written event in {stdout}"))?;
    let message = written["message"].as_str().ok_or("no message")?;
    assert!(message.contains(&run), "{message}");
    assert!(events.iter().any(|e| e["event"] == "finalized"), "{stdout}");
    std::fs::remove_dir_all(root)?;
    Ok(())
}
