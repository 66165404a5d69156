//! What a running node is doing, as one snapshot that the event loop keeps
//! current: the progress display, `p2pnode status` and the Prometheus
//! metrics all read it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What the node is busy with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Setting up, before the first round starts.
    #[default]
    Starting,
    /// Running inner steps on its replica.
    Training,
    /// Trained: exchanging updates and commits for the round.
    Exchanging,
    /// Holds every round it was asked to train (see
    /// [`Node::train_until`](super::Node::train_until)): trains no more,
    /// and serves checkpoints, payloads and records to peers.
    Finished,
}

impl Phase {
    /// The phase's name, as in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Training => "training",
            Self::Exchanging => "exchanging",
            Self::Finished => "finished",
        }
    }
}

/// A running node's state, as `p2pnode status` prints it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The node's public key, hex.
    pub key: String,
    /// The round being worked on.
    pub round: u64,
    /// The checkpoint that round starts from, hex.
    pub checkpoint: String,
    /// What the node is doing.
    pub phase: Phase,
    /// Inner steps done in the current session.
    pub inner_step: u32,
    /// Inner steps per session.
    pub inner_steps: u32,
    /// The inner step under way, when it runs in passes (a large model's
    /// batch on the CPU): passes done, and passes it takes.
    #[serde(default)]
    pub passes: Option<(u32, u32)>,
    /// Loss of the last inner step (nats per token).
    pub step_loss: Option<f32>,
    /// Mean loss of the last finished session.
    pub train_loss: Option<f32>,
    /// Peers of this run connected now (subscribed to its announcements;
    /// not a relay, nor a peer of another run).
    pub peers: usize,
    /// Of those, the peers not yet seen at this node's round (see
    /// [`Engine::members_behind`](crate::engine::Engine::members_behind)):
    /// a node that has trained its rounds stays up for them.
    #[serde(default)]
    pub peers_behind: usize,
    /// Rounds this process has seen end (finalized or adopted).
    pub rounds_done: u64,
    /// Contributions applied in the last round it finalized.
    pub last_contributions: usize,
    /// Payload and checkpoint bytes fetched from peers, plus gossip received.
    pub bytes_in: u64,
    /// Payload and checkpoint bytes served to peers, plus gossip published.
    pub bytes_out: u64,
    /// Requests from peers answered (payloads, checkpoint slices, records;
    /// found or not).
    #[serde(default)]
    pub answered: u64,
    /// Of those, the ones answered with what was asked for: a peer that
    /// is still served, not one told that this node holds nothing for it.
    #[serde(default)]
    pub served: u64,
    /// Whether the records of rounds it adopted rather than closed are
    /// being fetched (`p2pnode verify` replays the directory once they are
    /// in).
    #[serde(default)]
    pub fetching_records: bool,
    /// A checkpoint being downloaded to catch up: bytes held, and its
    /// length.
    pub downloading: Option<(u64, u64)>,
    /// Contributions dropped since start, by reason.
    pub rejected: BTreeMap<String, u64>,
}

impl Status {
    /// The snapshot in Prometheus' text exposition format.
    ///
    /// ```
    /// use p2ptrain_node::swarm_loop::Status;
    ///
    /// let status = Status { round: 4, peers: 2, ..Status::default() };
    /// let text = status.prometheus();
    /// assert!(text.contains("\np2ptrain_round 4\n"));
    /// assert!(text.contains("\np2ptrain_peers 2\n"));
    /// ```
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            ));
        };
        metric(
            "p2ptrain_round",
            "gauge",
            "The round the node works on.",
            self.round.to_string(),
        );
        metric(
            "p2ptrain_inner_step",
            "gauge",
            "Inner steps done in the current session.",
            self.inner_step.to_string(),
        );
        if let Some((done, _)) = self.passes {
            metric(
                "p2ptrain_inner_pass",
                "gauge",
                "Passes done of the inner step under way, when it runs in passes.",
                done.to_string(),
            );
        }
        if let Some(loss) = self.step_loss {
            metric(
                "p2ptrain_step_loss",
                "gauge",
                "Loss of the last inner step, nats per token.",
                loss.to_string(),
            );
        }
        if let Some(loss) = self.train_loss {
            metric(
                "p2ptrain_train_loss",
                "gauge",
                "Mean loss of the last training session, nats per token.",
                loss.to_string(),
            );
        }
        metric(
            "p2ptrain_peers",
            "gauge",
            "Peers of this run connected.",
            self.peers.to_string(),
        );
        metric(
            "p2ptrain_peers_behind",
            "gauge",
            "Peers of this run connected and not yet seen at this node's round.",
            self.peers_behind.to_string(),
        );
        metric(
            "p2ptrain_rounds_done_total",
            "counter",
            "Rounds ended (finalized or adopted) since start.",
            self.rounds_done.to_string(),
        );
        metric(
            "p2ptrain_last_round_contributions",
            "gauge",
            "Contributions applied in the last finalized round.",
            self.last_contributions.to_string(),
        );
        metric(
            "p2ptrain_received_bytes_total",
            "counter",
            "Payload, checkpoint and gossip bytes received.",
            self.bytes_in.to_string(),
        );
        metric(
            "p2ptrain_answered_requests_total",
            "counter",
            "Requests from peers answered: payloads, checkpoint slices, records.",
            self.answered.to_string(),
        );
        metric(
            "p2ptrain_sent_bytes_total",
            "counter",
            "Payload, checkpoint and gossip bytes sent.",
            self.bytes_out.to_string(),
        );
        out.push_str("# HELP p2ptrain_rejected_total Contributions dropped, by reason.\n");
        out.push_str("# TYPE p2ptrain_rejected_total counter\n");
        for (reason, count) in &self.rejected {
            out.push_str(&format!(
                "p2ptrain_rejected_total{{reason=\"{reason}\"}} {count}\n"
            ));
        }
        out
    }
}
