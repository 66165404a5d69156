//! What `p2pnode` does with bad input: it says what is wrong, exits
//! non-zero and leaves nothing behind — no new key or run for a mistyped
//! option, never a new run over a damaged one (an interrupted `init` may
//! be done again).

use std::fs;
use std::path::Path;

use super::harness::{exclusive, init, run, run_ok, scratch, solo, Node};

/// `p2pnode join` on `dir` with `key`, alone (no mDNS), for one round,
/// with `extra`.
fn join_args<'a>(dir: &'a Path, key: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "join",
        "--dir",
        dir.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--no-mdns",
        "--rounds",
        "1",
    ];
    args.extend_from_slice(extra);
    args
}

/// Runs `p2pnode args`, which must fail with `said` on stderr.
fn fails_saying(args: &[&str], said: &str) {
    let output = run(args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "p2pnode {args:?} succeeded");
    assert!(stderr.contains(said), "p2pnode {args:?}: {stderr}");
}

#[test]
fn a_mistyped_option_of_join_leaves_no_key_or_run_behind() {
    let root = scratch("mistyped");
    let dir = root.join("run");
    let key = root.join("node.key");
    let missing = root.join("missing");
    let missing = missing.to_str().unwrap();
    let not_an_allow_list = root.join("allow.txt");
    fs::write(&not_an_allow_list, "zz\n").unwrap();
    let too_short = root.join("short.txt");
    fs::write(&too_short, "thirty-one bytes of own text..\n").unwrap();
    for (option, value, said) in [
        ("--psk", missing, "reading --psk"),
        ("--data", missing, "reading --data"),
        (
            "--data",
            too_short.to_str().unwrap(),
            "is too short for the run's model, which reads windows of 64 tokens (one per \
             byte)\n\nCaused by:\n    need at least 65 tokens, found 31",
        ),
        (
            "--allow",
            not_an_allow_list.to_str().unwrap(),
            "\"zz\" is not a peer key",
        ),
        (
            "--device",
            "gpu",
            "device \"gpu\": expected cpu, cuda:N or auto",
        ),
        ("--residual-decay", "1.5", "must be between 0 and 1"),
    ] {
        fails_saying(&join_args(&dir, &key, &[option, value]), said);
        assert!(!dir.exists(), "{option}: a run was started");
        assert!(!key.exists(), "{option}: a key was created");
    }
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_run_to_fetch_with_no_way_to_find_its_peers_is_refused_at_once(
) -> Result<(), Box<dyn std::error::Error>> {
    let root = scratch("no-way");
    let dir = root.join("run");
    let key = root.join("node.key");
    let run = "3367cb9c405ae40e9d12599a706cb76fad9b5552454e299ce6f41a921a5d7f39";
    fails_saying(
        &join_args(&dir, &key, &["--run", run]),
        "needs a peer of it to ask: give --bootstrap ADDRESS",
    );
    assert!(!dir.exists() && !key.exists());
    fs::remove_dir_all(root)?;
    Ok(())
}

#[test]
fn init_refuses_settings_no_node_can_run_and_writes_nothing(
) -> Result<(), Box<dyn std::error::Error>> {
    let root = scratch("unrunnable");
    let dir = root.join("run");
    let dir_arg = dir.to_str().ok_or("not UTF-8")?;
    for (option, value, said) in [
        ("--inner-steps", "0", "invalid value '0' for '--inner-steps"),
        ("--batch-size", "0", "invalid value '0' for '--batch-size"),
        (
            "--batch-size",
            "300000",
            "a batch of 300000 sequences of 64 tokens is more than 16777216 tokens",
        ),
        (
            "--min-contributors",
            "0",
            "invalid value '0' for '--min-contributors",
        ),
        (
            "--deadline-ms",
            "86400001",
            "invalid value '86400001' for '--deadline-ms",
        ),
    ] {
        fails_saying(&["init", "--dir", dir_arg, option, value], said);
        assert!(
            !dir.join("genesis.ckpt").exists(),
            "{option} {value}: a genesis was written"
        );
        assert!(
            !dir.join("manifest.bin").exists(),
            "{option} {value}: a run was written"
        );
    }
    fs::remove_dir_all(root)?;
    Ok(())
}

#[test]
fn a_missing_key_and_an_empty_chain_are_explained() {
    let (root, dir, key) = solo("explained");
    fails_saying(
        &["pubkey", "--key", key.to_str().unwrap()],
        "`p2pnode keygen --out",
    );
    fs::write(&key, "not hex\n").unwrap();
    fails_saying(
        &["pubkey", "--key", key.to_str().unwrap()],
        "is not a key file",
    );
    let table = run_ok(&["history", dir.to_str().unwrap()]);
    assert!(table.starts_with("no rounds yet"), "{table}");
    let json = run_ok(&["history", "--json", dir.to_str().unwrap()]);
    assert_eq!(json.trim(), "[]");
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_run_whose_manifest_is_damaged_is_never_replaced() {
    let (root, dir, key) = solo("damaged");
    let genesis = fs::read(dir.join("genesis.ckpt")).unwrap();
    let manifest = dir.join("manifest.bin");
    fs::write(&manifest, b"not a manifest").unwrap();
    fails_saying(
        &["init", "--dir", dir.to_str().unwrap()],
        "manifest cannot be read",
    );
    fails_saying(&join_args(&dir, &key, &[]), "manifest.bin");
    assert_eq!(fs::read(&manifest).unwrap(), b"not a manifest");
    assert_eq!(fs::read(dir.join("genesis.ckpt")).unwrap(), genesis);
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn an_interrupted_init_is_done_again() {
    let (root, dir, _) = solo("interrupted");
    // Killed between its two writes: the genesis checkpoint is there, the
    // manifest (written last) is not.
    fs::remove_file(dir.join("manifest.bin")).unwrap();
    init(&dir, 1);
    assert!(dir.join("manifest.bin").exists());
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_second_node_on_a_working_directory_or_key_is_refused_and_the_first_goes_on() {
    let _machine = exclusive();
    let (root, dir, key) = solo("second");
    let mut first = Node::join("first", &dir, &key, &["--rounds", "3"]);
    first.round(0);
    let other_key = root.join("other.key");
    fails_saying(
        &join_args(&dir, &other_key, &[]),
        "another node is working on",
    );
    // Another directory, the same key: one identity for two nodes.
    let elsewhere = root.join("elsewhere");
    fails_saying(
        &join_args(&elsewhere, &key, &[]),
        "is in use by another node on this machine",
    );
    assert!(!elsewhere.exists(), "a run was started with a key in use");
    assert!(first.exit().success());
    let verified = String::from_utf8(run(&["verify", dir.to_str().unwrap()]).stdout).unwrap();
    assert!(verified.starts_with("ok: 3 rounds"), "{verified}");
    fs::remove_dir_all(root).unwrap();
}

#[test]
fn a_swarm_key_is_the_owners_alone_and_never_replaced() {
    let root = scratch("swarm-key");
    let path = root.join("swarm.key");
    let out = path.to_str().unwrap();
    run_ok(&["swarm-key", "--out", out]);
    let written = fs::read_to_string(&path).unwrap();
    assert!(p2ptrain_node::net::access::parse_psk(&written).is_ok());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    fails_saying(&["swarm-key", "--out", out], "it must not exist yet");
    assert_eq!(fs::read_to_string(&path).unwrap(), written);
    // Nothing else is left beside it.
    assert_eq!(fs::read_dir(&root).unwrap().count(), 1);
    fs::remove_dir_all(root).unwrap();
}

#[cfg(unix)]
#[test]
fn secrets_that_other_users_can_read_are_pointed_out() {
    use std::os::unix::fs::PermissionsExt;
    let (root, dir, key) = solo("secrets-readable");
    let psk = root.join("swarm.key");
    run_ok(&["swarm-key", "--out", psk.to_str().unwrap()]);
    let readable = |path: &Path, mode: u32| {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    };
    // The node's key is created owner-only on the first run: no warning.
    let first = run(&join_args(&dir, &key, &["--psk", psk.to_str().unwrap()]));
    assert!(first.status.success());
    assert!(!String::from_utf8_lossy(&first.stderr).contains("warning"));
    readable(&key, 0o644);
    readable(&psk, 0o640);
    let second = run(&join_args(&dir, &key, &["--psk", psk.to_str().unwrap()]));
    assert!(second.status.success());
    let said = String::from_utf8_lossy(&second.stderr);
    let warning = |path: &Path, mode: &str, power: &str| {
        format!(
            "warning: {} can be read by other users of this machine (mode {mode}): any of \
             them can {power}; `chmod 600 {}` makes it yours alone",
            path.display(),
            path.display()
        )
    };
    assert!(
        said.contains(&warning(&key, "644", "sign as this node")),
        "{said}"
    );
    assert!(
        said.contains(&warning(&psk, "640", "join this private swarm")),
        "{said}"
    );
    fs::remove_dir_all(root).unwrap();
}
