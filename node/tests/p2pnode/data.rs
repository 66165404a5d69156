//! A node's own training data: `--data` names files or folders, read whole
//! and never sent anywhere.

use std::fs;

use crate::harness::{exclusive, solo, Node};

#[test]
fn a_node_trains_on_the_files_given_with_data() {
    let _machine = exclusive();
    let (root, dir, key) = solo("own-data");
    let texts = root.join("texts");
    fs::create_dir_all(texts.join("more")).unwrap();
    fs::write(texts.join("a.txt"), "x".repeat(100)).unwrap();
    fs::write(texts.join("more").join("b.txt"), "y".repeat(50)).unwrap();
    let data = texts.to_str().unwrap();
    let mut node = Node::join("own-data", &dir, &key, &["--data", data, "--rounds", "1"]);
    assert!(node.exit().success());
    // Both files, one newline between them: all of it, none held out.
    assert!(
        node.said(&format!("training on {data}: 2 files, 151 tokens")),
        "{:?}",
        node.seen
    );
    // Where it trains: the harness's nodes train on the CPU.
    assert!(node.said("training on the CPU (cpu)"), "{:?}", node.seen);
    assert_eq!(node.rounds().len(), 1);
    fs::remove_dir_all(root).unwrap();
}
