//! Workspace-wide and end-to-end tests of p2ptrain; the tests are the targets
//! of this package, and this library is empty.
//!
//! - `dependency_direction` — crates depend on each other one way only
//!   (`protocol <- kernels <- trainer <- node <- netsim`), and the pure crates
//!   pull in no async runtime, networking or tensor library.
