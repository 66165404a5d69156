//! The p2ptrain network simulator.
//!
//! `netsim` reproduces what a swarm computes, deterministically, on one
//! machine: the same configuration and seed give the same trace hash on every
//! run. A scenario file ([`scenario`]) names the peers, their links and
//! speeds, churn, partitions and adversaries; [`sim::run`] drives one real
//! round engine per peer ([`p2ptrain_node::engine`]) on a virtual clock over
//! simulated links, training the `tiny` model for real or a synthetic model
//! for scale, and [`report`] writes what happened.
//!
//! # Layout
//!
//! - [`scenario`] — scenario files (TOML).
//! - [`sim`] — the simulation: events, peers, engines.
//! - [`network`] — links with latency, bandwidth, loss; partitions.
//! - [`model`] — replicas, the outer step and checkpoints.
//! - [`adversary`] — malicious contributions.
//! - [`checker`] — signature and payload checks shared by all engines.
//! - [`report`] — `summary.json`, `rounds.jsonl`, plots.
//! - [`exchange`] — rounds of compressed, signed exchange without links or
//!   clock (the compression's error over rounds).
//! - [`rng`] — the seeded generator every random draw comes from.
//!
//! # Example
//!
//! ```
//! use p2ptrain_netsim::exchange::{run, ExchangeConfig};
//! use p2ptrain_protocol::CompressionSettings;
//!
//! let config = ExchangeConfig {
//!     peers: 4,
//!     params: 10_000,
//!     rounds: 3,
//!     noise: 0.5,
//!     compression: CompressionSettings::default(),
//!     seed: 1,
//! };
//! let summary = run(&config, |round| println!("{round:?}"))?;
//! assert_eq!(summary.rounds.len(), 3);
//! assert_eq!(summary.trace_hash, run(&config, |_| {})?.trace_hash);
//! # Ok::<(), p2ptrain_netsim::exchange::ExchangeError>(())
//! ```

pub mod adversary;
pub mod checker;
pub mod exchange;
pub mod model;
pub mod network;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod sim;
