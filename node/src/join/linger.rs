//! After `--rounds`: a node that holds every round asked of it stays up,
//! training no more, for `--linger` at most, while
//! - a peer of the run is behind it (a joiner still fetching the
//!   checkpoint, say, which could never finish once every peer holding the
//!   checkpoint had stopped),
//! - it is still fetching the records of rounds it adopted rather than
//!   closed, without which `p2pnode verify` cannot replay its directory, or
//! - once it stays, it still serves a peer what the peer asks for: a peer
//!   that has caught up may still be fetching the records of the rounds it
//!   adopted. (A request it can only answer with "not held here", such as
//!   a finished peer's question about a round this node never reached,
//!   keeps nobody up.)

use std::time::Duration;

use p2ptrain_node::swarm_loop::Status;
use tokio::time::Instant;

use super::report::Report;
use crate::words::counted;

/// How long after serving a peer's last request a staying node waits for
/// the next: more than the gap between one request and the next of a peer
/// fetching records (a round trip), and than the second a peer waits before
/// asking again for a record not yet written.
const QUIET: Duration = Duration::from_secs(3);

/// Whether, and until when, a node that has trained its rounds stays up.
pub(super) struct Linger {
    /// The longest it stays.
    limit: Duration,
    /// When it gives up, once it stays.
    until: Option<Instant>,
    /// Requests from peers served, as last seen in the status.
    served: u64,
    /// When that count last changed (or the node began to stay).
    last_served: Instant,
}

impl Linger {
    /// Staying up to `limit` after the last round (zero: not at all).
    pub(super) fn new(limit: Duration, now: Instant) -> Self {
        Self {
            limit,
            until: None,
            served: 0,
            last_served: now,
        }
    }

    /// The node holds every round asked of it: whether to stop now
    /// (nothing to stay for, or no staying asked for). Otherwise it says
    /// why it stays, and starts the clock at `now`.
    pub(super) fn done_training(&mut self, status: &Status, report: &Report, now: Instant) -> bool {
        if self.until.is_some() {
            return false;
        }
        let reasons = waiting_for(status);
        if reasons.is_empty() || self.limit.is_zero() {
            return true;
        }
        self.until = Some(now + self.limit);
        self.served = status.served;
        self.last_served = now;
        report.note(
            "lingering",
            &format!(
                "trained every round asked for; staying up to {} s, training no more, \
                 while {} (Ctrl-C stops now)",
                self.limit.as_secs(),
                reasons.join(", and while ")
            ),
        );
        false
    }

    /// Whether the node stays no longer: it was staying, nothing is left
    /// to stay for, and it has served no peer for a while (as of `now`).
    pub(super) fn nothing_left(&mut self, status: &Status, report: &Report, now: Instant) -> bool {
        if self.until.is_none() {
            return false;
        }
        if status.served != self.served {
            self.served = status.served;
            self.last_served = now;
        }
        if !waiting_for(status).is_empty() || now < self.last_served + QUIET {
            return false;
        }
        report.note(
            "lingered",
            &format!(
                "every peer of the run still connected is at round {}, this node has \
                 served no peer for {} s, and it holds every record",
                status.round,
                QUIET.as_secs()
            ),
        );
        true
    }

    /// When to look again, while staying: at the end of the quiet spell
    /// after the last request served, then when the node has stayed as long as it
    /// may.
    pub(super) fn next_look(&self, now: Instant) -> Option<Instant> {
        let until = self.until?;
        let quiet = self.last_served + QUIET;
        Some(if quiet > now { quiet.min(until) } else { until })
    }

    /// Whether the node has stayed as long as it may; if so, says that it
    /// stops with something still to stay for.
    pub(super) fn expired(&self, status: &Status, report: &Report, now: Instant) -> bool {
        if self.until.is_none_or(|until| now < until) {
            return false;
        }
        let reasons = waiting_for(status);
        let left = if reasons.is_empty() {
            "a peer still asks this node for records or checkpoint slices".to_owned()
        } else {
            reasons.join(", and ")
        };
        report.note(
            "linger_over",
            &format!(
                "stayed {} s; stopping although {left}",
                self.limit.as_secs()
            ),
        );
        true
    }
}

/// What a node that trains no more still stays up for, in words.
fn waiting_for(status: &Status) -> Vec<String> {
    let mut reasons = Vec::new();
    if status.peers_behind > 0 {
        reasons.push(format!(
            "{} of the run, not yet seen at round {}, may need this node's checkpoint",
            counted(status.peers_behind as u64, "peer"),
            status.round
        ));
    }
    if status.fetching_records {
        reasons.push(
            "the records of the rounds it adopted are still coming (verify replays them)"
                .to_owned(),
        );
    }
    reasons
}

#[cfg(test)]
mod tests {
    use p2ptrain_protocol::{PeerKey, SigningKey};

    use super::*;
    use crate::join::report::LogFormat;

    #[test]
    fn the_quiet_spell_counts_from_the_last_request_served() {
        let me = PeerKey::from(&SigningKey::from_bytes(&[1; 32]));
        let report = Report::new(LogFormat::Json, me);
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut linger = Linger::new(Duration::from_secs(60), start);
        let mut status = Status {
            round: 4,
            peers_behind: 1,
            ..Status::default()
        };
        assert!(
            !linger.done_training(&status, &report, at(0)),
            "stays for the peer"
        );
        // The peer caught up, and fetches records: one served at 2 s.
        status.peers_behind = 0;
        status.answered += 1;
        status.served += 1;
        assert!(!linger.nothing_left(&status, &report, at(2_000)));
        // At 4 s, a request for something this node does not hold.
        status.answered += 1;
        assert!(!linger.nothing_left(&status, &report, at(4_000)));
        assert_eq!(linger.next_look(at(4_000)), Some(at(5_000)));
        // 3 s after the last request served, it stops.
        assert!(linger.nothing_left(&status, &report, at(5_100)));
        assert!(!linger.expired(&status, &report, at(5_100)));
        assert!(linger.expired(&status, &report, at(60_000)));
    }

    #[test]
    fn a_node_stays_for_peers_behind_and_for_missing_records() {
        let mut status = Status {
            round: 5,
            ..Status::default()
        };
        assert!(waiting_for(&status).is_empty());
        status.peers_behind = 2;
        assert_eq!(
            waiting_for(&status),
            ["2 peers of the run, not yet seen at round 5, may need this node's checkpoint"]
        );
        status.fetching_records = true;
        assert_eq!(waiting_for(&status).len(), 2);
        status.peers_behind = 0;
        assert_eq!(waiting_for(&status).len(), 1);
    }
}
