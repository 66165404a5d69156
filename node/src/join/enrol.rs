//! `p2pnode join --run RUN_ID`: a run the data directory does not hold yet,
//! fetched from the run's peers ([`p2ptrain_node::swarm_loop::fetch_run`]),
//! with what it does told as it goes.

use std::time::Duration;

use anyhow::Context;
use libp2p::Multiaddr;
use p2ptrain_node::chain::{ChainState, DataDir};
use p2ptrain_node::net::NetConfig;
use p2ptrain_node::swarm_loop::{fetch_run, Enrolling};
use p2ptrain_protocol::{Digest, RunManifest, SigningKey};

use super::report::Report;

/// How long the fetch waits for anything new (a peer of the run, a slice)
/// before it gives up.
const PATIENCE: Duration = Duration::from_secs(120);

/// Refuses a directory that holds a run other than `run`.
pub fn check_holds_no_other_run(data: &DataDir, run: Digest) -> anyhow::Result<()> {
    if !data.holds_run() {
        return Ok(());
    }
    let held = data
        .manifest()
        .and_then(|manifest| Ok(manifest.id()?))
        .with_context(|| format!("reading the run in {}", data.root().display()))?;
    anyhow::ensure!(
        held == run,
        "{} holds run {held}, not run {run}: choose another --dir to join {run}",
        data.root().display()
    );
    Ok(())
}

/// Refuses to wait for peers of `run` that cannot be found: with no
/// `--bootstrap` address and mDNS switched off, no peer is ever asked.
pub fn check_can_find_peers(
    run: Digest,
    mdns: bool,
    bootstrap: &[Multiaddr],
) -> anyhow::Result<()> {
    anyhow::ensure!(
        mdns || !bootstrap.is_empty(),
        "fetching run {run} needs a peer of it to ask: give --bootstrap ADDRESS \
         (a node of the run prints its address), or drop --no-mdns to look on the LAN"
    );
    Ok(())
}

/// Fetches run `run` from its peers for `data`, which holds no run: its
/// manifest and genesis checkpoint, both checked, not yet written.
pub async fn fetch(
    data: &DataDir,
    run: Digest,
    key: &SigningKey,
    net: &NetConfig,
    bootstrap: &[Multiaddr],
    report: &Report,
) -> anyhow::Result<(RunManifest, ChainState)> {
    report.note(
        "fetching_run",
        &format!(
            "no run in {}: fetching run {run} from its peers",
            data.root().display()
        ),
    );
    if bootstrap.is_empty() {
        report.note(
            "fetching_run",
            &format!(
                "no --bootstrap address: looking for peers of the run on the LAN (mDNS) for \
                 up to {} s; --bootstrap ADDRESS asks a node of the run directly",
                PATIENCE.as_secs()
            ),
        );
    }
    // A line per tenth of the checkpoint, not per slice.
    let mut tenths_told = 0;
    let mut tell = |step: Enrolling| match step {
        Enrolling::Genesis { held, total } => {
            let tenths = (held * 10).checked_div(total).unwrap_or(10);
            if tenths > tenths_told {
                tenths_told = tenths;
                report.note("fetching_run", &step.to_string());
            }
        }
        other => report.note("fetching_run", &other.to_string()),
    };
    let (manifest, genesis) = fetch_run(run, key, net, bootstrap, PATIENCE, &mut tell)
        .await
        .with_context(|| format!("fetching run {run}"))?;
    report.note(
        "run_fetched",
        &format!(
            "fetched run {run} (\"{}\"): manifest and genesis checkpoint {}, both checked",
            manifest.name, manifest.genesis
        ),
    );
    Ok((manifest, genesis))
}
