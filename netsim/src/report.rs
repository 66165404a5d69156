//! What a simulation writes: `summary.json`, `rounds.jsonl`, and SVG plots
//! of validation loss and bytes over virtual time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

/// `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The scenario file's name.
    pub scenario: String,
    /// The seed used.
    pub seed: u64,
    /// Rounds every live honest peer finished.
    pub rounds_completed: u64,
    /// Peers in the scenario.
    pub peers: usize,
    /// Every honest live peer's chain holds the same checkpoint hash for
    /// every round it holds.
    pub honest_replicas_agree: bool,
    /// Validation loss of the final checkpoint (`tiny` only).
    pub final_val_loss: Option<f32>,
    /// Validation loss of one replica trained on the same tokens, when the
    /// scenario asks for it.
    pub baseline_val_loss: Option<f32>,
    /// Bytes each honest peer sent per round, mean.
    pub bytes_sent_per_peer_per_round: f64,
    /// Payload bits per parameter per contribution.
    pub bits_per_param: f64,
    /// Training time ÷ time in the swarm, mean over honest peers.
    pub compute_utilization: f64,
    /// Contributions dropped by honest peers, by reason (distinct ids).
    pub rejected: BTreeMap<String, u64>,
    /// Honest contributions that honest peers dropped.
    pub honest_rejected: u64,
    /// Peers some honest peer ignores (caught signing two contributions
    /// for a round or two results for one set, or naming a checkpoint
    /// nobody could deliver).
    pub banned: u64,
    /// Of those, honest peers.
    pub honest_banned: u64,
    /// What became of the malicious contributions.
    pub adversarial: Adversarial,
    /// Times an honest peer adopted a heavier chain.
    pub forks_resolved: u64,
    /// Virtual time at the end.
    pub virtual_seconds: f64,
    /// Real time the simulation took.
    pub wall_seconds: f64,
    /// blake3 of the event trace: equal for equal scenario and seed.
    pub trace_hash: String,
}

/// Malicious contributions: sent, dropped by an honest peer, applied.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Adversarial {
    /// Distinct malicious contributions announced.
    pub sent: u64,
    /// Of those, dropped by at least one honest peer.
    pub rejected: u64,
    /// Of those, applied by the honest chain (they passed every check, so
    /// their weight and norm are within the honest bounds). One of an
    /// equivocating pair can count here and under `rejected`: applied on
    /// the branch that won its round, dropped as a duplicate by the peers
    /// that heard the other first.
    pub applied: u64,
}

/// One line of `rounds.jsonl`.
#[derive(Debug, Clone, Serialize)]
pub struct RoundLine {
    /// The round.
    pub round: u64,
    /// Virtual time the first honest peer finished it.
    pub finished_ms: u64,
    /// Contributions applied.
    pub contributors: usize,
    /// The checkpoint it produced.
    pub checkpoint: String,
    /// Its validation loss (`tiny` only).
    pub val_loss: Option<f32>,
    /// Bytes sent by all peers so far.
    pub bytes_sent_total: u64,
    /// Peers in the swarm.
    pub live_peers: usize,
}

/// Writes `summary.json`, `rounds.jsonl`, `val_loss.svg` (tiny) and
/// `bytes.svg` into `dir`, creating it.
///
/// # Errors
///
/// Any I/O error, with the file it concerns.
pub fn write(dir: &Path, summary: &Summary, rounds: &[RoundLine]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(summary).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("summary.json"), json + "\n")?;
    let mut lines = String::new();
    for line in rounds {
        lines += &serde_json::to_string(line).map_err(std::io::Error::other)?;
        lines.push('\n');
    }
    std::fs::write(dir.join("rounds.jsonl"), lines)?;
    let losses: Vec<(f64, f64)> = rounds
        .iter()
        .filter_map(|r| {
            r.val_loss
                .map(|l| (r.finished_ms as f64 / 1000.0, f64::from(l)))
        })
        .collect();
    if !losses.is_empty() {
        let svg = plot("validation loss", "virtual seconds", "loss", &losses);
        std::fs::write(dir.join("val_loss.svg"), svg)?;
    }
    let bytes: Vec<(f64, f64)> = rounds
        .iter()
        .map(|r| {
            (
                r.finished_ms as f64 / 1000.0,
                r.bytes_sent_total as f64 / 1e6,
            )
        })
        .collect();
    std::fs::write(
        dir.join("bytes.svg"),
        plot("bytes sent, all peers", "virtual seconds", "MB", &bytes),
    )?;
    Ok(())
}

/// A line plot of `points` as a standalone SVG.
pub fn plot(title: &str, x_label: &str, y_label: &str, points: &[(f64, f64)]) -> String {
    const W: f64 = 640.0;
    const H: f64 = 400.0;
    const M: f64 = 60.0;
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-9 {
        x1 = x0 + 1.0;
    }
    if y1 - y0 < 1e-9 {
        y1 = y0 + 1.0;
    }
    let sx = |x: f64| M + (x - x0) / (x1 - x0) * (W - 2.0 * M);
    let sy = |y: f64| H - M - (y - y0) / (y1 - y0) * (H - 2.0 * M);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="24" text-anchor="middle" font-size="15">{title}</text>
<line x1="{M}" y1="{}" x2="{}" y2="{}" stroke="black"/>
<line x1="{M}" y1="{M}" x2="{M}" y2="{}" stroke="black"/>
<text x="{}" y="{}" text-anchor="middle">{x_label}</text>
<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">{y_label}</text>
"##,
        W / 2.0,
        H - M,
        W - M,
        H - M,
        H - M,
        W / 2.0,
        H - 16.0,
        H / 2.0,
        H / 2.0
    );
    for i in 0..=4 {
        let fx = x0 + (x1 - x0) * f64::from(i) / 4.0;
        let fy = y0 + (y1 - y0) * f64::from(i) / 4.0;
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{fx:.4}</text><text x="{:.1}" y="{:.1}" text-anchor="end">{fy:.4}</text>"##,
            sx(fx),
            H - M + 16.0,
            M - 6.0,
            sy(fy) + 4.0
        );
    }
    let path: Vec<String> = points
        .iter()
        .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
        .collect();
    let _ = writeln!(
        svg,
        r##"<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{}"/>"##,
        path.join(" ")
    );
    svg.push_str("</svg>\n");
    svg
}
