//! `p2pnode status`: ask the node running on a data directory what it is
//! doing.

use std::path::Path;

use anyhow::Context;
use p2ptrain_node::control;
use p2ptrain_node::swarm_loop::{Phase, Status};

/// Prints the status of the node running on `dir`.
pub async fn show(dir: &Path, json: bool) -> anyhow::Result<()> {
    let socket = dir.join(control::STATUS_SOCKET);
    let status = match control::read_status(&socket).await {
        // Nothing listens (or a killed node's socket is left): say how to
        // start one rather than what connecting said.
        Err(control::ControlError::NotRunning { .. }) => anyhow::bail!(
            "no node is running on {dir}: `p2pnode join --dir {dir}` starts one",
            dir = dir.display()
        ),
        answer => answer.with_context(|| format!("asking the node on {}", dir.display()))?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", describe(&status));
    }
    Ok(())
}

/// The status for people, a few lines.
fn describe(s: &Status) -> String {
    let doing = match s.phase {
        Phase::Training => {
            let loss = s
                .step_loss
                .map_or_else(String::new, |l| format!(", loss {l:.3}"));
            let pass = s.passes.map_or_else(String::new, |(done, passes)| {
                format!(", pass {done}/{passes} of step {}", s.inner_step + 1)
            });
            format!(
                "training, step {}/{}{pass}{loss}",
                s.inner_step, s.inner_steps
            )
        }
        Phase::Exchanging => "exchanging updates and commits".to_owned(),
        Phase::Finished => "trained all its rounds; serving its peers".to_owned(),
        Phase::Starting => "starting".to_owned(),
    };
    let mut text = format!(
        "node        {}\nround       {} ({doing})\ncheckpoint  {}\n",
        s.key, s.round, s.checkpoint
    );
    if let Some((held, total)) = s.downloading {
        text.push_str(&format!(
            "catching up {} of {} of the swarm's checkpoint\n",
            indicatif::HumanBytes(held),
            indicatif::HumanBytes(total)
        ));
    }
    if let Some(loss) = s.train_loss {
        text.push_str(&format!("train loss  {loss:.3} (last session)\n"));
    }
    let behind = match s.peers_behind {
        0 => String::new(),
        n => format!(" ({n} not yet at round {})", s.round),
    };
    text.push_str(&format!(
        "peers       {}{behind}\nrounds      {} ended since start, {} in the last\n\
         traffic     {} in, {} out ({} from peers answered)\n",
        s.peers,
        s.rounds_done,
        crate::words::counted(s.last_contributions as u64, "contribution"),
        indicatif::HumanBytes(s.bytes_in),
        indicatif::HumanBytes(s.bytes_out),
        crate::words::counted(s.answered, "request"),
    ));
    if !s.rejected.is_empty() {
        let dropped: Vec<String> = s.rejected.iter().map(|(r, n)| format!("{r} {n}")).collect();
        text.push_str(&format!("dropped     {}\n", dropped.join(", ")));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_training_node_shows_its_step_and_what_it_dropped() {
        let status = Status {
            round: 3,
            phase: Phase::Training,
            inner_step: 12,
            inner_steps: 50,
            step_loss: Some(2.5),
            rejected: [("payload_mismatch".to_owned(), 2)].into(),
            ..Status::default()
        };
        let text = describe(&status);
        assert!(text.contains("round       3 (training, step 12/50, loss 2.500)"));
        assert!(text.contains("dropped     payload_mismatch 2"));
    }

    #[test]
    fn a_finished_node_shows_the_peers_it_waits_for() {
        let status = Status {
            round: 6,
            phase: Phase::Finished,
            peers: 3,
            peers_behind: 1,
            answered: 1,
            ..Status::default()
        };
        let text = describe(&status);
        assert!(
            text.contains("out (1 request from peers answered)"),
            "{text}"
        );
        assert!(text.contains("round       6 (trained all its rounds; serving its peers)"));
        assert!(text.contains("peers       3 (1 not yet at round 6)"));
        assert!(status.prometheus().contains("\np2ptrain_peers_behind 1\n"));
        let caught_up = Status {
            peers_behind: 0,
            ..status
        };
        assert!(describe(&caught_up).contains("peers       3\n"));
    }

    #[test]
    fn a_step_in_passes_shows_its_pass() {
        let status = Status {
            phase: Phase::Training,
            inner_step: 0,
            inner_steps: 50,
            passes: Some((3, 32)),
            ..Status::default()
        };
        assert!(describe(&status).contains("(training, step 0/50, pass 3/32 of step 1)"));
        assert!(status.prometheus().contains("\np2ptrain_inner_pass 3\n"));
        let between = Status {
            passes: None,
            ..status
        };
        assert!(!between.prometheus().contains("p2ptrain_inner_pass"));
    }
}
