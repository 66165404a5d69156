//! The workspace's dependencies point one way, as `DESIGN.md` draws them:
//!
//! ```text
//! protocol  <-  kernels  <-  trainer  <-  node  <-  netsim
//! ```
//!
//! and the pure crates (protocol, kernels) never depend, even indirectly, on
//! tokio, libp2p or candle: they must build anywhere and stay free of I/O.

use std::process::Command;

const LAYERS: [&str; 5] = [
    "p2ptrain-protocol",
    "p2ptrain-kernels",
    "p2ptrain-trainer",
    "p2ptrain-node",
    "p2ptrain-netsim",
];

/// Names of every package `package` depends on (normal and build
/// dependencies, transitively, for this platform), itself excluded.
fn dependencies_of(package: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args([
            "tree",
            "--edges",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .args(["--package", package])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut names: Vec<String> = String::from_utf8(output.stdout)
        .expect("cargo tree prints UTF-8")
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != package)
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

fn is_forbidden_in_pure_crates(name: &str) -> bool {
    name == "tokio"
        || name.starts_with("tokio-")
        || name.starts_with("libp2p")
        || name.starts_with("candle")
}

#[test]
fn pure_crates_pull_in_no_runtime_network_or_tensor_library() {
    for package in ["p2ptrain-protocol", "p2ptrain-kernels"] {
        let deps = dependencies_of(package);
        assert!(
            deps.iter().any(|d| d == "blake3"),
            "{package}: tree looks empty: {deps:?}"
        );
        let forbidden: Vec<_> = deps
            .iter()
            .filter(|d| is_forbidden_in_pure_crates(d))
            .collect();
        assert!(forbidden.is_empty(), "{package} depends on {forbidden:?}");
    }
}

#[test]
fn workspace_crates_depend_only_on_lower_layers() {
    for (layer, package) in LAYERS.iter().enumerate() {
        let deps = dependencies_of(package);
        for higher in &LAYERS[layer + 1..] {
            assert!(
                !deps.iter().any(|d| d == higher),
                "{package} depends on {higher}, a layer above it"
            );
        }
        for lower in &LAYERS[..layer] {
            // Every layer builds on the one below, directly or not.
            assert!(
                deps.iter().any(|d| d == lower),
                "{package} does not reach {lower}"
            );
        }
    }
}

#[test]
fn the_forbidden_list_catches_what_it_names() {
    for name in [
        "tokio",
        "tokio-util",
        "libp2p",
        "libp2p-gossipsub",
        "candle-core",
        "candle-nn",
    ] {
        assert!(is_forbidden_in_pure_crates(name), "{name}");
    }
    for name in ["blake3", "bincode", "rayon", "ed25519-dalek"] {
        assert!(!is_forbidden_in_pure_crates(name), "{name}");
    }
}
