//! Scratch directories for the crate's unit tests.

use std::path::PathBuf;

/// An empty directory of its own for the test named `name`, in the
/// system's temporary directory (what an earlier run left there is
/// removed first).
pub(crate) fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("p2ptrain-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a scratch directory");
    dir
}
