//! How `p2pnode join` shows what its node does: lines for people (a round
//! line on stdout per round, everything else on stderr, under a progress
//! bar when stderr is a terminal), or one JSON object per line on stdout
//! for log collectors.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use p2ptrain_node::engine::{Ban, BanReason, Rejection};
use p2ptrain_node::swarm_loop::{NodeEvent, Phase, Status};
use p2ptrain_protocol::{Digest, PeerKey};
use serde_json::json;

/// The output format of `p2pnode join`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people, and a progress bar on a terminal.
    Text,
    /// One JSON object per line on stdout, each with an `event` field.
    Json,
}

/// Writes a node's events in the chosen format.
pub struct Report {
    format: LogFormat,
    bar: ProgressBar,
    me: PeerKey,
    /// The node's run, named in the line that tells how to add a peer.
    run: Option<Digest>,
}

impl Report {
    /// A report for node `me`; the bar draws only on a terminal, and never
    /// in JSON.
    pub fn new(format: LogFormat, me: PeerKey) -> Self {
        let target = match format {
            LogFormat::Text => ProgressDrawTarget::stderr(),
            LogFormat::Json => ProgressDrawTarget::hidden(),
        };
        let bar = ProgressBar::with_draw_target(Some(1), target);
        let style = ProgressStyle::with_template(
            "{spinner} round {prefix} [{bar:24}] step {pos}/{len} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(200));
        Self {
            format,
            bar,
            me,
            run: None,
        }
    }

    /// The same report, for a node of run `run`.
    pub fn with_run(self, run: Option<Digest>) -> Self {
        Self { run, ..self }
    }

    /// A message for people (`kind` names it in JSON).
    pub fn note(&self, kind: &str, text: &str) {
        match self.format {
            LogFormat::Text => self.bar.suspend(|| eprintln!("{text}")),
            LogFormat::Json => line(json!({ "event": kind, "message": text })),
        }
    }

    /// Shows the node's state on the bar.
    pub fn refresh(&self, status: &Status) {
        self.bar.set_prefix(status.round.to_string());
        self.bar.set_length(u64::from(status.inner_steps.max(1)));
        self.bar.set_position(u64::from(status.inner_step));
        let loss = status
            .step_loss
            .map_or_else(String::new, |l| format!("loss {l:.3} "));
        let doing = match status.downloading {
            Some((held, total)) => format!(
                "catching up {}/{}",
                indicatif::HumanBytes(held),
                indicatif::HumanBytes(total)
            ),
            None => match status.passes {
                Some((done, passes)) if status.phase == Phase::Training => {
                    format!("training, pass {done}/{passes} of the step")
                }
                _ => status.phase.as_str().to_owned(),
            },
        };
        self.bar.set_message(format!(
            "{loss}· {doing} · {} · in {} out {}",
            crate::words::counted(status.peers as u64, "peer"),
            indicatif::HumanBytes(status.bytes_in),
            indicatif::HumanBytes(status.bytes_out),
        ));
    }

    /// Clears the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    /// Shows one event; returns the round whose result the node now holds,
    /// if it is such an event.
    pub fn event(&self, event: NodeEvent) -> Option<u64> {
        let round = match &event {
            NodeEvent::Finalized { round, .. } | NodeEvent::Adopted { round, .. } => Some(*round),
            _ => None,
        };
        match self.format {
            LogFormat::Text => self.text(event),
            LogFormat::Json => line(self.json(event)),
        }
        round
    }

    fn text(&self, event: NodeEvent) {
        let out = |text: String| self.bar.suspend(|| println!("{text}"));
        let err = |text: String| self.bar.suspend(|| eprintln!("{text}"));
        match event {
            NodeEvent::Listening(address) => {
                let id = p2ptrain_node::net::peer_id(&self.me).map(|p| p.to_string());
                let run = self
                    .run
                    .map_or(String::new(), |run| format!(" --run {run}"));
                err(format!(
                    "listening on {address}/p2p/{}\n  add a peer: p2pnode join --dir OTHER_DIR \
                     --key OTHER.key{run} --bootstrap {address}",
                    id.unwrap_or_default()
                ));
            }
            NodeEvent::Aggregated { .. } | NodeEvent::Announced { .. } => {}
            NodeEvent::Finalized {
                round,
                checkpoint,
                contributions,
                train_loss,
            } => {
                let loss = train_loss.map_or(String::new(), |l| format!(", train loss {l:.3}"));
                out(format!(
                    "round {round}: checkpoint {checkpoint} ({}{loss})",
                    crate::words::counted(contributions as u64, "contribution")
                ));
            }
            NodeEvent::Adopted { round, checkpoint } => {
                out(format!(
                    "round {round}: checkpoint {checkpoint} (adopted from a peer)"
                ));
            }
            NodeEvent::Rejected(Rejection { id, author, reason }) => {
                let by = author.map_or_else(String::new, |a| format!(" by {a}"));
                err(format!(
                    "dropped contribution {id}{by}: {reason} ({})",
                    reason.explain()
                ))
            }
            NodeEvent::Banned(Ban { peer, reason }) => {
                err(format!("peer {peer} is ignored: {reason}"))
            }
            NodeEvent::KeyShared { round } => err(format!(
                "another node uses this node's key: it announced a contribution to round \
                 {round} signed with it. Peers ignore a key that signs two; give each node \
                 its own (p2pnode keygen)"
            )),
            NodeEvent::PeerConnected(peer) => err(format!("peer {peer} connected")),
            NodeEvent::PeerLeft(peer) => err(format!("peer {peer} left")),
            NodeEvent::OtherRun { peer, run } => err(format!(
                "peer {peer} is on another run ({run}): the two do not train together \
                 (each run is its own swarm; `p2pnode join --dir NEW_DIR --run {run}` \
                 joins that one)"
            )),
            NodeEvent::Refused(peer) => {
                err(format!("refused peer {peer}: not on the allow-list"));
            }
            NodeEvent::DialFailed(error) => err(format!("could not connect: {error}")),
            NodeEvent::OtherSwarmKey(from) => err(format!(
                "refused a connection from {from}: the peer holds another pre-shared key \
                 (in a private swarm every node needs the same --psk file)"
            )),
            NodeEvent::Backfilled { rounds, missing: 0 } => err(format!(
                "fetched the records of {rounds} adopted rounds: verify replays the whole chain"
            )),
            NodeEvent::Backfilled { rounds, missing } => err(format!(
                "fetched the records of {rounds} adopted rounds; {missing} are still missing \
                 (no peer gave them): verify stops at the first"
            )),
            NodeEvent::Reachability { public: true } => {
                err("peers can reach this node directly".to_owned());
            }
            NodeEvent::Reachability { public: false } => err(
                "peers cannot reach this node directly (NAT or firewall): it listens \
                 through a connected peer's relay when one offers it"
                    .to_owned(),
            ),
            NodeEvent::HolePunch {
                peer, direct: true, ..
            } => {
                err(format!("direct connection to {peer} after hole punching"));
            }
            NodeEvent::HolePunch {
                peer,
                direct: false,
                ..
            } => err(format!("hole punching to {peer} failed: staying relayed")),
        }
    }

    fn json(&self, event: NodeEvent) -> serde_json::Value {
        match event {
            NodeEvent::Listening(address) => json!({
                "event": "listening",
                "address": address.to_string(),
                "peer_id": p2ptrain_node::net::peer_id(&self.me).map(|p| p.to_string()),
                "run": self.run.map(|run| run.to_string()),
            }),
            NodeEvent::Announced { round, id } => json!({
                "event": "announced",
                "round": round,
                "id": id.to_string(),
            }),
            NodeEvent::Aggregated {
                round,
                checkpoint,
                contributions,
            } => json!({
                "event": "aggregated",
                "round": round,
                "checkpoint": checkpoint.to_string(),
                "contributions": contributions,
            }),
            NodeEvent::Finalized {
                round,
                checkpoint,
                contributions,
                train_loss,
            } => json!({
                "event": "finalized",
                "round": round,
                "checkpoint": checkpoint.to_string(),
                "contributions": contributions,
                "train_loss": train_loss,
            }),
            NodeEvent::Adopted { round, checkpoint } => json!({
                "event": "adopted",
                "round": round,
                "checkpoint": checkpoint.to_string(),
            }),
            NodeEvent::Rejected(Rejection { id, author, reason }) => json!({
                "event": "rejected",
                "id": id.to_string(),
                "author": author.map(|a| a.to_string()),
                "reason": reason.as_str(),
            }),
            NodeEvent::Banned(Ban { peer, reason }) => {
                let mut event = json!({
                    "event": "banned",
                    "peer": peer.to_string(),
                    "message": reason.to_string(),
                });
                match reason {
                    BanReason::Equivocated { round } => {
                        event["reason"] = "equivocated".into();
                        event["round"] = round.into();
                    }
                    BanReason::TwoContributions { round } => {
                        event["reason"] = "two_contributions".into();
                        event["round"] = round.into();
                    }
                    BanReason::CheckpointUnavailable { result } => {
                        event["reason"] = "checkpoint_unavailable".into();
                        event["checkpoint"] = result.to_string().into();
                    }
                }
                event
            }
            NodeEvent::KeyShared { round } => json!({ "event": "key_shared", "round": round }),
            NodeEvent::PeerConnected(peer) => {
                json!({ "event": "peer_connected", "peer": peer.to_string() })
            }
            NodeEvent::PeerLeft(peer) => json!({ "event": "peer_left", "peer": peer.to_string() }),
            NodeEvent::OtherRun { peer, run } => json!({
                "event": "other_run",
                "peer": peer.to_string(),
                "run": run,
            }),
            NodeEvent::Refused(peer) => json!({ "event": "refused", "peer": peer.to_string() }),
            NodeEvent::DialFailed(error) => json!({ "event": "dial_failed", "error": error }),
            NodeEvent::OtherSwarmKey(from) => {
                json!({ "event": "other_swarm_key", "from": from.to_string() })
            }
            NodeEvent::Reachability { public } => {
                json!({ "event": "reachability", "public": public })
            }
            NodeEvent::Backfilled { rounds, missing } => {
                json!({ "event": "backfilled", "rounds": rounds, "missing": missing })
            }
            NodeEvent::HolePunch {
                peer,
                direct,
                relayed_closed,
            } => json!({
                "event": "hole_punch",
                "peer": peer.to_string(),
                "direct": direct,
                "relayed_closed": relayed_closed,
            }),
        }
    }
}

/// Writes one JSON line on stdout.
fn line(value: serde_json::Value) {
    println!("{value}");
}

#[cfg(test)]
mod tests {
    use p2ptrain_node::engine::RejectReason;
    use p2ptrain_protocol::{Digest, SigningKey};

    use super::*;

    #[test]
    fn a_dropped_contribution_is_reported_with_its_id_author_and_reason() {
        let author = PeerKey::from(&SigningKey::from_bytes(&[7; 32]));
        let report = Report::new(LogFormat::Json, author);
        let id = Digest::of(b"a contribution");
        let event = NodeEvent::Rejected(Rejection {
            id,
            author: Some(author),
            reason: RejectReason::Duplicate,
        });
        assert_eq!(
            report.json(event),
            json!({
                "event": "rejected",
                "id": id.to_string(),
                "author": author.to_string(),
                "reason": "duplicate",
            })
        );
        let unsigned = NodeEvent::Rejected(Rejection {
            id,
            author: None,
            reason: RejectReason::BadSignature,
        });
        assert_eq!(report.json(unsigned)["author"], serde_json::Value::Null);
    }
}
