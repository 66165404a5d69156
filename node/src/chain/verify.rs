//! Replaying a data directory's chain from genesis: every signature, every
//! payload hash, every outer step, and the final checkpoint hash.

use p2ptrain_protocol::{Digest, RunManifest};

use super::{ChainError, ChainState, DataDir, StepInput};

/// What a successful replay established.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// Records replayed (rounds `0..rounds`).
    pub rounds: u64,
    /// Contributions applied in all.
    pub contributions: u64,
    /// Tokens contributed along the chain.
    pub chain_tokens: u64,
    /// The checkpoint after the last record.
    pub head: Digest,
    /// Contributions the last record applied (0 with no records).
    pub last_contributors: usize,
}

/// Replays `dir` from its genesis checkpoint.
///
/// The model size comes from the manifest (`params` entries per buffer).
///
/// # Errors
///
/// [`ChainError::Record`] naming the first round whose record does not hold
/// (with what is wrong), or another [`ChainError`] for the manifest, the
/// genesis, or a head checkpoint that is no result of the chain.
pub fn replay(dir: &DataDir, params: usize) -> Result<Verified, ChainError> {
    replay_with_progress(dir, params, &mut |_| {})
}

/// [`replay`], calling `on_round` with the number of rounds replayed so far
/// after each one (for a progress bar: a large model's chain takes a while).
///
/// # Errors
///
/// As [`replay`].
pub fn replay_with_progress(
    dir: &DataDir,
    params: usize,
    on_round: &mut dyn FnMut(u64),
) -> Result<Verified, ChainError> {
    let (verified, _) = replay_records(dir, params, on_round)?;
    // The chain ends at its first missing record; a record after that one
    // belongs to no chain this directory can show.
    if let Some(last) = dir.last_record()? {
        if last >= verified.rounds {
            return Err(ChainError::Record {
                round: verified.rounds,
                what: format!("no record, though the records go on to round {last}"),
            });
        }
    }
    if let Some(head) = dir.head(params)? {
        let found = head.hash();
        // head.ckpt is the last result, or, for a model large enough that
        // it is written every few rounds, an earlier one of this chain.
        if found != verified.head && !is_result_on_chain(dir, &found, verified.rounds) {
            return Err(ChainError::Head {
                expected: verified.head,
                found,
            });
        }
    }
    Ok(verified)
}

/// Whether `hash` is the result of one of the first `rounds` records.
fn is_result_on_chain(dir: &DataDir, hash: &Digest, rounds: u64) -> bool {
    (0..rounds).rev().any(|round| {
        dir.record(round)
            .ok()
            .flatten()
            .and_then(|record| record.verify().ok())
            .is_some_and(|(commit, _)| commit.result == *hash)
    })
}

/// The replay of every record from genesis, head.ckpt left aside: what it
/// established, and the state it ends on; `on_round` hears of each round
/// replayed.
pub(super) fn replay_records(
    dir: &DataDir,
    params: usize,
    on_round: &mut dyn FnMut(u64),
) -> Result<(Verified, ChainState), ChainError> {
    let manifest = dir.manifest()?;
    let state = dir.genesis(params)?;
    let hash = state.hash();
    if hash != manifest.genesis {
        return Err(ChainError::Genesis {
            expected: manifest.genesis,
            found: hash,
        });
    }
    let genesis = Verified {
        rounds: 0,
        contributions: 0,
        chain_tokens: 0,
        head: hash,
        last_contributors: 0,
    };
    replay_after(dir, &manifest, genesis, state, on_round)
}

/// Replays the records that follow `from` (the chain up to round
/// `from.rounds - 1`, ending on `state`), checking each as
/// [`replay`] does; `from.contributions` counts only what `from` says.
/// `on_round` is told the rounds replayed, `from`'s included, after each.
pub(super) fn replay_after(
    dir: &DataDir,
    manifest: &RunManifest,
    from: Verified,
    mut state: ChainState,
    on_round: &mut dyn FnMut(u64),
) -> Result<(Verified, ChainState), ChainError> {
    let run = manifest.id()?;
    let mut hash = from.head;
    let max_tokens = u64::from(manifest.inner_steps)
        * u64::from(manifest.inner.batch_size)
        * u64::from(manifest.model.context_len);
    let (mut rounds, mut contributions, mut chain_tokens) =
        (from.rounds, from.contributions, from.chain_tokens);
    let mut last_contributors = from.last_contributors;
    let mut buffers = super::Buffers::default();
    while let Some(record) = dir.record(rounds).map_err(|e| ChainError::Record {
        round: rounds,
        what: e.to_string(),
    })? {
        let bad = |what: String| ChainError::Record {
            round: rounds,
            what,
        };
        let (commit, applied) = record.verify().map_err(|e| bad(e.to_string()))?;
        if commit.run != run {
            return Err(bad("the commit is for another run".into()));
        }
        if commit.round != rounds {
            return Err(bad(format!("the commit is for round {}", commit.round)));
        }
        if commit.base != hash {
            return Err(bad(format!(
                "the commit starts from {}, the chain is at {}",
                commit.base, hash
            )));
        }
        let mut payloads = Vec::with_capacity(applied.len());
        for (c, signed) in applied.iter().zip(&record.contributions) {
            check_contribution(manifest, c, max_tokens).map_err(&bad)?;
            let bytes = dir
                .payload(&c.payload.hash)
                .map_err(|e| bad(format!("payload {}: {e}", c.payload.hash)))?;
            if bytes.len() as u64 != c.payload.len || Digest::of(&bytes) != c.payload.hash {
                return Err(bad(format!(
                    "payload {} of contribution {} does not match its hash or length",
                    c.payload.hash,
                    signed.id()
                )));
            }
            payloads.push((signed.id(), c.tokens, bytes));
        }
        let inputs: Vec<StepInput<'_>> = payloads
            .iter()
            .map(|(id, tokens, bytes)| StepInput {
                id: *id,
                tokens: *tokens,
                payload: bytes,
            })
            .collect();
        let (next, next_hash) = state
            .outer_step_reusing(&inputs, &manifest.outer, &mut buffers)
            .map_err(|e| bad(format!("outer step: {e}")))?;
        buffers.spare = Some(std::mem::replace(&mut state, next));
        hash = next_hash;
        if hash != commit.result {
            return Err(bad(format!(
                "the outer step gives {hash}, the commit says {}",
                commit.result
            )));
        }
        chain_tokens += applied.iter().map(|c| c.tokens).sum::<u64>();
        if commit.chain_tokens != chain_tokens {
            return Err(bad(format!(
                "the commit claims {} chain tokens, the records add up to {chain_tokens}",
                commit.chain_tokens
            )));
        }
        contributions += applied.len() as u64;
        last_contributors = applied.len();
        rounds += 1;
        on_round(rounds);
    }
    let verified = Verified {
        rounds,
        contributions,
        chain_tokens,
        head: hash,
        last_contributors,
    };
    Ok((verified, state))
}

fn check_contribution(
    manifest: &RunManifest,
    c: &p2ptrain_protocol::Contribution,
    max_tokens: u64,
) -> Result<(), String> {
    if !manifest.allows(&c.author) {
        return Err(format!("author {} is not on the allow-list", c.author));
    }
    if c.compression != manifest.compression {
        return Err(format!(
            "contribution by {} uses other compression settings",
            c.author
        ));
    }
    if c.tokens == 0 || c.tokens > max_tokens {
        return Err(format!(
            "contribution by {} claims {} tokens",
            c.author, c.tokens
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_run_replays_to_its_genesis_and_a_wrong_genesis_is_refused() {
        let root = crate::scratch::scratch_dir("verify");
        let dir = DataDir::new(&root);
        let genesis = ChainState::genesis(vec![0.25; 16]);
        let manifest = RunManifest {
            genesis: genesis.hash(),
            ..RunManifest::default()
        };
        dir.write_manifest(&manifest).unwrap();
        dir.write_genesis(&genesis).unwrap();
        let verified = replay(&dir, 16).unwrap();
        assert_eq!((verified.rounds, verified.head), (0, genesis.hash()));

        dir.write_genesis(&ChainState::genesis(vec![0.5; 16]))
            .unwrap();
        assert!(matches!(replay(&dir, 16), Err(ChainError::Genesis { .. })));
        assert!(matches!(
            replay(&dir, 15),
            Err(ChainError::CheckpointLength {
                expected: 120,
                found: 128,
                ..
            })
        ));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
