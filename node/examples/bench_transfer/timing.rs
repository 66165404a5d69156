//! Which transfers count, and what they add up to: a connection's
//! untimed warm-up, its timed transfers, and the medians over several
//! connections.

use std::time::{Duration, Instant};

/// The middle value (the upper one of an even count).
fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Which of a connection's transfers are timed.
#[derive(Clone, Copy)]
pub struct Plan {
    /// Untimed transfers run until this much time has passed since the
    /// connection's first transfer began (and at least one has ended).
    pub warm_up: Duration,
    /// Timed transfers after the warm-up.
    pub runs: usize,
}

/// One connection's transfers as they happen, timed once it is warm.
pub struct Clock {
    plan: Plan,
    opened: Option<Instant>,
    transfers: usize,
    started: Instant,
    timed: bool,
    pub times: Vec<f64>,
}

impl Clock {
    pub fn new(plan: Plan) -> Self {
        Clock {
            plan,
            opened: None,
            transfers: 0,
            started: Instant::now(),
            timed: false,
            times: Vec::with_capacity(plan.runs),
        }
    }

    /// A transfer begins now.
    pub fn start(&mut self) {
        self.started = Instant::now();
        let opened = *self.opened.get_or_insert(self.started);
        self.timed = self.transfers > 0 && self.started - opened >= self.plan.warm_up;
    }

    /// The transfer begun last has ended: true once the plan's timed
    /// transfers are all in.
    pub fn stop(&mut self) -> bool {
        if self.timed {
            self.times.push(self.started.elapsed().as_secs_f64());
        }
        self.transfers += 1;
        self.times.len() == self.plan.runs
    }
}

/// Reads a one-byte request: false when the peer has closed the connection.
pub fn request_arrived(read: std::io::Result<()>) -> std::io::Result<bool> {
    match read {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// The timed transfers of one kind, over several connections.
#[derive(Default)]
pub struct Times {
    /// Every transfer, in seconds.
    all: Vec<f64>,
    /// Each connection's median transfer, in seconds.
    per_connection: Vec<f64>,
}

impl Times {
    pub fn add_connection(&mut self, times: Vec<f64>) {
        self.all.extend_from_slice(&times);
        self.per_connection.push(median(times));
    }

    /// The median of every transfer, all connections pooled.
    pub fn median(&self) -> f64 {
        median(self.all.clone())
    }

    /// The fastest and slowest connection's median, in milliseconds.
    pub fn connection_range(&self) -> String {
        let fastest = self
            .per_connection
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min);
        let slowest = self.per_connection.iter().copied().fold(0.0, f64::max);
        format!("{:.2}–{:.2} ms", fastest * 1e3, slowest * 1e3)
    }
}
