//! `p2pnode init`: a new run's manifest and genesis checkpoint.

use std::path::PathBuf;

use anyhow::Context;

use p2ptrain_node::chain::{ChainState, DataDir};
use p2ptrain_protocol::{Digest, RunManifest};
use p2ptrain_trainer::ParamLayout;

/// The options of `p2pnode init`. Every setting left out keeps the bundled
/// run's value; every peer of a run must use the same ones (the run id is
/// the manifest's hash).
#[derive(clap::Args, Default)]
pub struct InitArgs {
    /// The data directory (created; an existing run there is kept).
    #[arg(long, default_value = "p2ptrain-data")]
    pub dir: PathBuf,
    /// Seed of the genesis initialization.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Start from a Hugging Face GPT-2 folder (config.json +
    /// model.safetensors, as `p2pnode export` writes or transformers saves)
    /// instead of a fresh model: its shape becomes the run's model and its
    /// weights the genesis checkpoint, to fine-tune it. Training reads the
    /// data one token per byte.
    #[arg(long, value_name = "HF_DIR")]
    pub from: Option<PathBuf>,
    /// Inner steps per round (H) [default: 50].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub inner_steps: Option<u32>,
    /// Sequences per inner step [default: 32]; with the model's context,
    /// at most 16 Mi tokens.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: Option<u32>,
    /// Fewest contributions a round applies, 1 to 16384 [default: 1]. A
    /// round applies at most 64, or this many if more.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(RunManifest::MAX_CONTRIBUTORS)))]
    pub min_contributors: Option<u32>,
    /// Milliseconds after a round's first contribution before it closes
    /// without stragglers, at most a day [default: 30000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(..=RunManifest::MAX_WAIT_MS))]
    pub deadline_ms: Option<u64>,
    /// Milliseconds to collect the other peers' commits, at most a day
    /// [default: 2000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(..=RunManifest::MAX_WAIT_MS))]
    pub commit_window_ms: Option<u64>,
}

impl InitArgs {
    /// The manifest these options describe, genesis not yet set.
    fn manifest(&self) -> RunManifest {
        let mut manifest = RunManifest {
            seed: self.seed,
            ..RunManifest::default()
        };
        let rounds = &mut manifest.rounds;
        manifest.inner_steps = self.inner_steps.unwrap_or(manifest.inner_steps);
        manifest.inner.batch_size = self.batch_size.unwrap_or(manifest.inner.batch_size);
        rounds.min_contributors = self.min_contributors.unwrap_or(rounds.min_contributors);
        rounds.max_contributors = rounds.max_contributors.max(rounds.min_contributors);
        rounds.deadline_ms = self.deadline_ms.unwrap_or(rounds.deadline_ms);
        rounds.commit_window_ms = self.commit_window_ms.unwrap_or(rounds.commit_window_ms);
        manifest
    }
}

/// `p2pnode init`: writes a new run into `dir` (refusing a directory that
/// holds one) and prints its id, its genesis checkpoint and where it is.
pub fn init(dir: &DataDir, args: &InitArgs) -> anyhow::Result<()> {
    let new = write_new_run(dir, args)?;
    println!("run {}", new.run);
    println!("genesis {}", new.genesis);
    println!("wrote {}", dir.root().display());
    Ok(())
}

/// A run just written into a data directory.
pub struct NewRun {
    /// Its id.
    pub run: Digest,
    /// Its genesis checkpoint.
    pub genesis: Digest,
}

/// Writes a new run into `dir`, refusing a directory that holds one;
/// prints nothing.
pub fn write_new_run(dir: &DataDir, args: &InitArgs) -> anyhow::Result<NewRun> {
    if dir.holds_run() {
        match dir.manifest() {
            Ok(existing) => anyhow::bail!(
                "{} already holds run {} ({}); choose another --dir",
                dir.root().display(),
                existing.id()?,
                existing.name
            ),
            Err(error) => anyhow::bail!(
                "{} already holds a run, whose manifest cannot be read ({error}); \
                 not writing a new run over it: choose another --dir",
                dir.root().display()
            ),
        }
    }
    let mut manifest = args.manifest();
    let genesis = match &args.from {
        Some(folder) => {
            let (model, values) = p2ptrain_trainer::hf::import(folder)
                .with_context(|| format!("reading the model in {}", folder.display()))?;
            manifest.model = model;
            manifest.name = format!("fine-tune of {}", folder_name(folder));
            runnable(&manifest)?;
            ChainState::genesis(values)
        }
        None => {
            runnable(&manifest)?;
            ChainState::genesis(ParamLayout::gpt2(&manifest.model).initial_values(args.seed))
        }
    };
    manifest.genesis = genesis.hash();
    dir.write_run(&manifest, &genesis)?;
    Ok(NewRun {
        run: manifest.id()?,
        genesis: manifest.genesis,
    })
}

/// Checks `manifest` before any genesis is made or written; the error
/// names the setting that no node could run.
fn runnable(manifest: &RunManifest) -> anyhow::Result<()> {
    manifest
        .validate()
        .context("these settings make a run no node can run")
}

/// The name a run fine-tuning `folder` goes by: the folder's own name, not
/// where it lies on this machine (the manifest, and so the name, goes to
/// every peer, and is part of the run id).
fn folder_name(folder: &std::path::Path) -> String {
    folder
        .canonicalize()
        .ok()
        .as_deref()
        .unwrap_or(folder)
        .file_name()
        .map_or_else(
            || "a Hugging Face folder".to_owned(),
            |name| name.to_string_lossy().into_owned(),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_applies_at_least_as_many_contributions_as_it_needs() {
        let needs = |min| {
            let args = InitArgs {
                min_contributors: Some(min),
                ..InitArgs::default()
            };
            let manifest = args.manifest();
            (manifest.rounds.max_contributors, manifest.validate())
        };
        assert_eq!(needs(3), (64, Ok(())));
        assert_eq!(needs(100), (100, Ok(())));
    }
}
