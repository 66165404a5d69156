//! The p2ptrain peer: what `p2pnode` runs.
//!
//! A node holds an ed25519 identity — the same key names it on the network
//! and signs its contributions — and, as the project grows, the sans-IO round
//! engine and the event loop that owns the libp2p swarm (see `DESIGN.md`).
//!
//! # Layout
//!
//! - [`compute`] — the compute threads, started below the network's.
//! - [`control`] — a running node's status for `p2pnode status` and its
//!   Prometheus metrics.
//! - [`chain`] — the shared checkpoint, the outer step, the data directory
//!   of round records, and the replay that verifies it.
//! - [`engine`] — the sans-IO round engine: a round's protocol as a
//!   deterministic state machine, driven by `p2pnode` and `netsim` alike.
//! - [`keyfile`] — create, save and load a node's identity key.
//! - [`net`] — the libp2p identity, protocols and swarm.
//! - [`swarm_loop`] — the event loop of a running node: swarm and engine.
//!
//! # Example
//!
//! ```
//! use p2ptrain_node::keyfile;
//!
//! let dir = std::env::temp_dir().join(format!("p2ptrain-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let path = dir.join("node.key");
//! # let _ = std::fs::remove_file(&path);
//! let key = keyfile::generate()?;
//! keyfile::save(&path, &key)?;
//! assert_eq!(keyfile::load(&path)?.to_bytes(), key.to_bytes());
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod chain;
pub mod cli;
pub mod compute;
pub mod control;
pub mod engine;
pub mod keyfile;
pub mod net;
pub mod swarm_loop;

#[cfg(test)]
mod scratch;

/// What a unit test returns that stops at its first error.
#[cfg(test)]
type TestResult = Result<(), Box<dyn std::error::Error>>;
