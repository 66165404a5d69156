//! The p2ptrain network simulator.
//!
//! `netsim` reproduces what a swarm computes, deterministically, on one
//! machine: the same configuration and seed give the same trace hash on every
//! run. Today it simulates the exchange of a round — peers compress their
//! pseudo-gradients with error feedback, sign contributions, verify and
//! aggregate each other's — without links or a clock; scenarios with virtual
//! time, latency, churn and adversaries drive the round engine once it exists
//! (see `DESIGN.md`).
//!
//! # Layout
//!
//! - [`exchange`] — rounds of compressed, signed exchange among in-process peers.
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

pub mod exchange;
pub mod rng;
