//! Where a node restarts: the last finalized round of its data directory.
//!
//! The cheap path trusts head.ckpt when it hashes to the result of the last
//! record's commit. Otherwise — the node died between writing a record and
//! its checkpoint, or head.ckpt is missing — the records are replayed from
//! genesis (every signature, payload and outer step checked) and head.ckpt
//! is written anew.

use p2ptrain_protocol::Digest;

use super::verify::replay_records;
use super::{ChainError, ChainState, DataDir};
use crate::engine::Head;

/// The state a node restarts from, and the round it works on next.
#[derive(Debug, Clone, PartialEq)]
pub struct Resumed {
    /// The checkpoint.
    pub state: ChainState,
    /// The round to work on: one past the last finalized round (0 at
    /// genesis).
    pub round: u64,
    /// Tokens contributed along the chain up to `state`.
    pub chain_tokens: u64,
    /// Contributions the last finalized round applied.
    pub last_contributors: u32,
    /// How the state was found.
    pub from: ResumedFrom,
}

/// How [`resume`] found the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumedFrom {
    /// No records yet: the genesis checkpoint.
    Genesis,
    /// head.ckpt, which hashes to the last record's result.
    Head,
    /// A replay of the records from genesis, since head.ckpt did not match
    /// the last record.
    Replayed {
        /// The last record's round.
        last_record: u64,
        /// head.ckpt's hash; `None` if it is missing or unreadable.
        found: Option<Digest>,
    },
}

impl Resumed {
    /// The engine's head for this state.
    pub fn head(&self) -> Head {
        Head {
            round: self.round,
            base: self.state.hash(),
            chain_tokens: self.chain_tokens,
            last_contributors: self.last_contributors,
        }
    }
}

/// The last finalized state of `dir`, a run of a `params`-entry model.
///
/// Leftover temporary files of interrupted writes are removed first.
///
/// # Errors
///
/// [`ChainError`] when the manifest or genesis cannot be read, or when a
/// replay is needed and a record does not hold ([`ChainError::Record`]
/// names the first bad round).
pub fn resume(dir: &DataDir, params: usize) -> Result<Resumed, ChainError> {
    dir.remove_temporaries()?;
    let resumed = latest(dir, params)?;
    if let ResumedFrom::Replayed { .. } = resumed.from {
        dir.write_head(&resumed.state)?;
    }
    Ok(resumed)
}

/// The last finalized state of `dir`, as [`resume`] finds it, without
/// writing anything: safe beside a node running on the directory.
///
/// # Errors
///
/// As [`resume`].
pub fn latest(dir: &DataDir, params: usize) -> Result<Resumed, ChainError> {
    let manifest = dir.manifest()?;
    let Some(last) = dir.last_record()? else {
        let state = dir.genesis(params)?;
        let found = state.hash();
        if found != manifest.genesis {
            return Err(ChainError::Genesis {
                expected: manifest.genesis,
                found,
            });
        }
        return Ok(Resumed {
            state,
            round: 0,
            chain_tokens: 0,
            last_contributors: 0,
            from: ResumedFrom::Genesis,
        });
    };
    // A file that cannot be read is one more reason to replay.
    let head = dir.head(params).ok().flatten();
    let run = manifest.id()?;
    let commit = dir
        .record(last)
        .ok()
        .flatten()
        .and_then(|record| Some((record.verify().ok()?.0, record.contributions.len())));
    if let (Some(state), Some((commit, applied))) = (&head, commit) {
        if commit.run == run && commit.round == last && state.hash() == commit.result {
            return Ok(Resumed {
                state: state.clone(),
                round: last + 1,
                chain_tokens: commit.chain_tokens,
                last_contributors: u32::try_from(applied).unwrap_or(u32::MAX),
                from: ResumedFrom::Head,
            });
        }
    }
    let (verified, state) = replay_records(dir, params)?;
    Ok(Resumed {
        state,
        round: verified.rounds,
        chain_tokens: verified.chain_tokens,
        last_contributors: u32::try_from(verified.last_contributors).unwrap_or(u32::MAX),
        from: ResumedFrom::Replayed {
            last_record: last,
            found: head.map(|h| h.hash()),
        },
    })
}

#[cfg(test)]
mod tests {
    use p2ptrain_kernels::compress;
    use p2ptrain_protocol::{
        Commit, Contribution, IdSet, PayloadRef, PeerKey, RoundRecord, RunManifest, Signed,
        SigningKey,
    };

    use super::*;
    use crate::chain::StepInput;

    const PARAMS: usize = 4096;

    fn scratch(name: &str) -> DataDir {
        let root =
            std::env::temp_dir().join(format!("p2ptrain-resume-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        DataDir::new(root)
    }

    /// Writes a run of `rounds` one-contribution rounds into `dir`, as a
    /// node does (payload, record, head); returns every state from genesis.
    fn write_chain(dir: &DataDir, rounds: u64) -> Vec<ChainState> {
        let genesis = ChainState::genesis(vec![0.25; PARAMS]);
        let manifest = RunManifest {
            genesis: genesis.hash(),
            ..RunManifest::default()
        };
        dir.write_manifest(&manifest).unwrap();
        dir.write_genesis(&genesis).unwrap();
        let key = SigningKey::from_bytes(&[4; 32]);
        let run = manifest.id().unwrap();
        let mut states = vec![genesis];
        for round in 0..rounds {
            let state = states.last().unwrap();
            let delta = vec![0.01 * (round + 1) as f32; PARAMS];
            let payload = compress(&delta, &mut vec![0.0; PARAMS], &manifest.compression)
                .unwrap()
                .encode()
                .unwrap();
            let hash = dir.write_payload(&payload).unwrap();
            let contribution = Contribution {
                run,
                round,
                base: state.hash(),
                author: PeerKey::from(&key),
                tokens: 100,
                payload: PayloadRef {
                    hash,
                    len: payload.len() as u64,
                },
                compression: manifest.compression,
            };
            let signed = Signed::sign(&contribution, &key).unwrap();
            let input = StepInput {
                id: signed.id(),
                tokens: 100,
                payload: &payload,
            };
            let next = state.outer_step(&[input], &manifest.outer).unwrap();
            let commit = Commit {
                run,
                round,
                base: state.hash(),
                committer: PeerKey::from(&key),
                contributions: IdSet::new(vec![signed.id()]),
                result: next.hash(),
                chain_tokens: 100 * (round + 1),
            };
            let record = RoundRecord {
                commit: Signed::sign(&commit, &key).unwrap(),
                contributions: vec![signed],
            };
            dir.write_record(round, &record).unwrap();
            dir.write_head(&next).unwrap();
            states.push(next);
        }
        states
    }

    #[test]
    fn a_head_that_matches_the_last_record_is_resumed_as_is() {
        let dir = scratch("head");
        let states = write_chain(&dir, 3);
        let resumed = resume(&dir, PARAMS).unwrap();
        assert_eq!(resumed.from, ResumedFrom::Head);
        assert_eq!(resumed.state, states[3]);
        let head = resumed.head();
        assert_eq!((head.round, head.base), (3, states[3].hash()));
        assert_eq!((head.chain_tokens, head.last_contributors), (300, 1));
        std::fs::remove_dir_all(dir.root()).unwrap();
    }

    #[test]
    fn a_head_left_behind_by_a_kill_between_record_and_head_is_replayed() {
        let dir = scratch("behind");
        let states = write_chain(&dir, 3);
        // Killed after writing round 2's record, before its checkpoint.
        dir.write_head(&states[2]).unwrap();
        let resumed = resume(&dir, PARAMS).unwrap();
        assert_eq!(
            resumed.from,
            ResumedFrom::Replayed {
                last_record: 2,
                found: Some(states[2].hash())
            }
        );
        assert_eq!(resumed.state, states[3]);
        assert_eq!(resumed.head(), resume(&dir, PARAMS).unwrap().head());
        assert_eq!(dir.head(PARAMS).unwrap(), Some(states[3].clone()));
        std::fs::remove_dir_all(dir.root()).unwrap();
    }

    #[test]
    fn a_fresh_run_starts_at_genesis_and_leftover_temporaries_are_removed() {
        let dir = scratch("fresh");
        let states = write_chain(&dir, 0);
        std::fs::create_dir_all(dir.root().join("records")).unwrap();
        std::fs::write(dir.root().join("records/00000000.bin.tmp123"), b"half").unwrap();
        std::fs::write(dir.root().join("head.ckpt.tmp9"), b"half").unwrap();
        let resumed = resume(&dir, PARAMS).unwrap();
        assert_eq!(resumed.from, ResumedFrom::Genesis);
        assert_eq!(resumed.head().base, states[0].hash());
        assert_eq!(dir.remove_temporaries().unwrap(), 0);
        assert_eq!(dir.last_record().unwrap(), None);
        std::fs::remove_dir_all(dir.root()).unwrap();
    }

    #[test]
    fn a_bad_record_stops_the_replay_and_is_named() {
        let dir = scratch("bad");
        write_chain(&dir, 2);
        std::fs::remove_file(dir.root().join("head.ckpt")).unwrap();
        let path = dir.root().join("records/00000001.bin");
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let err = resume(&dir, PARAMS).unwrap_err();
        assert!(matches!(err, ChainError::Record { round: 1, .. }), "{err}");
        std::fs::remove_dir_all(dir.root()).unwrap();
    }
}
