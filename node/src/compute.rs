//! The node's compute threads, below its network threads.
//!
//! A node's heavy work (training, compression, the outer step and the
//! checkpoint hash) runs on rayon's global pool, its event loop on tokio's
//! threads, on the same cores. When peers close a round, those that hold
//! every payload start their outer steps while others are still fetching
//! or serving payloads, and an event loop that waits for a core delays
//! every peer that waits on it. [`start_compute_pool`] starts rayon's
//! global pool with its threads at a lower priority (a higher nice value,
//! on Linux), so the event loops, busy only in short bursts, get a core as
//! soon as they have work; the pool still takes every core the loops
//! leave idle. It is a process-wide setting, so binaries call it, before
//! any parallel work, never the library itself.
//!
//! ```
//! // The first parallel work starts the global pool; start it first.
//! let lowered = p2ptrain_node::compute::start_compute_pool()?;
//! assert_eq!(lowered, cfg!(target_os = "linux"));
//! let sum: u64 = rayon::prelude::ParallelIterator::sum(
//!     rayon::prelude::IntoParallelIterator::into_par_iter(1..=4u64),
//! );
//! assert_eq!(sum, 10);
//! # Ok::<(), rayon::ThreadPoolBuildError>(())
//! ```

use std::sync::OnceLock;

/// How much a compute thread's nice value is raised (19 at most).
pub const NICE_INCREMENT: i32 = 10;

/// Starts rayon's global pool (one thread per core) with each thread's
/// priority lowered by [`NICE_INCREMENT`]. Returns whether the threads'
/// priority is lowered: not on platforms other than Linux, where the pool
/// starts as usual.
///
/// # Errors
///
/// rayon's error when the global pool has already started (some parallel
/// work ran first).
pub fn start_compute_pool() -> Result<bool, rayon::ThreadPoolBuildError> {
    rayon::ThreadPoolBuilder::new()
        .start_handler(|_| {
            lower_this_thread();
        })
        .build_global()?;
    Ok(cfg!(target_os = "linux"))
}

/// The pool for work a peer waits on while the node trains: the tree of a
/// checkpoint a joiner asked for, built before its first slice is served.
/// One thread per core, at the priority of the thread that first asks for
/// it (not lowered like the compute pool's), so it runs ahead of training.
/// Started on first use; `None` if its threads cannot be started.
pub fn serving_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("serving-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}

/// Raises the calling thread's nice value by [`NICE_INCREMENT`] (Linux
/// keeps one per thread). Returns the new value, or `None` where it is not
/// set.
fn lower_this_thread() -> Option<i32> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: getpriority and setpriority only read and set the
        // scheduling priority of the calling thread (`who` 0 on Linux).
        unsafe {
            *libc::__errno_location() = 0;
            let current = libc::getpriority(libc::PRIO_PROCESS, 0);
            if current == -1 && *libc::__errno_location() != 0 {
                return None;
            }
            let lowered = (current + NICE_INCREMENT).min(19);
            (libc::setpriority(libc::PRIO_PROCESS, 0, lowered) == 0).then_some(lowered)
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn nice_of_this_thread() -> i32 {
        // SAFETY: reads the calling thread's priority.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
    }

    #[test]
    fn pool_threads_run_below_the_thread_that_started_them() {
        let before = nice_of_this_thread();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .start_handler(|_| {
                lower_this_thread();
            })
            .build()
            .unwrap();
        let in_pool = pool.install(nice_of_this_thread);
        assert_eq!(in_pool, (before + NICE_INCREMENT).min(19));
        // The thread that started the pool keeps its priority.
        assert_eq!(nice_of_this_thread(), before);
    }

    #[test]
    fn the_serving_pool_runs_at_the_priority_of_the_thread_that_starts_it() -> crate::TestResult {
        let before = nice_of_this_thread();
        let pool = serving_pool().ok_or("the serving pool did not start")?;
        assert_eq!(pool.current_num_threads(), rayon::current_num_threads());
        assert_eq!(pool.install(nice_of_this_thread), before);
        assert!(serving_pool().is_some_and(|again| std::ptr::eq(pool, again)));
        Ok(())
    }
}
