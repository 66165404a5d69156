//! Where a node restarts: the last finalized round of its data directory.
//!
//! The cheap path trusts head.ckpt when it hashes to the result of the last
//! record's commit. Otherwise — the node died between writing a record and
//! its checkpoint, or head.ckpt is missing — the records are replayed from
//! genesis (every signature, payload and outer step checked) and head.ckpt
//! is written anew.

use p2ptrain_protocol::Digest;

use super::verify::{replay_after, replay_records, Verified};
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
    /// A replay of the records after head.ckpt's round (or from genesis),
    /// since head.ckpt was not the last record's result.
    Replayed {
        /// The last record's round.
        last_record: u64,
        /// head.ckpt's hash; `None` if it is missing or unreadable.
        found: Option<Digest>,
        /// The round head.ckpt is the result of, where the replay started;
        /// `None` when it matched no record and the replay started at
        /// genesis.
        head_round: Option<u64>,
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
    let commit_of = |round: u64| {
        let record = dir.record(round).ok().flatten()?;
        let applied = record.contributions.len();
        let commit = record.verify().ok()?.0;
        (commit.run == run && commit.round == round).then_some((commit, applied))
    };
    let Some(state) = head else {
        return from_genesis(dir, params, last, None);
    };
    let found = state.hash();
    // head.ckpt is written every round or, for large models, every few
    // rounds: find the round it is the result of, newest first.
    let mut round = last;
    while let Some((commit, applied)) = commit_of(round) {
        if commit.result == found {
            let at = Verified {
                rounds: round + 1,
                contributions: 0,
                chain_tokens: commit.chain_tokens,
                head: found,
                last_contributors: applied,
            };
            if round == last {
                return Ok(resumed(state, &at, ResumedFrom::Head));
            }
            let (verified, state) = replay_after(dir, &manifest, at, state, &mut |_| {})?;
            let from = ResumedFrom::Replayed {
                last_record: last,
                found: Some(found),
                head_round: Some(round),
            };
            return Ok(resumed(state, &verified, from));
        }
        if round == 0 {
            break;
        }
        round -= 1;
    }
    from_genesis(dir, params, last, Some(found))
}

/// Replays every record from genesis.
fn from_genesis(
    dir: &DataDir,
    params: usize,
    last_record: u64,
    found: Option<Digest>,
) -> Result<Resumed, ChainError> {
    let (verified, state) = replay_records(dir, params, &mut |_| {})?;
    let from = ResumedFrom::Replayed {
        last_record,
        found,
        head_round: None,
    };
    Ok(resumed(state, &verified, from))
}

fn resumed(state: ChainState, verified: &Verified, from: ResumedFrom) -> Resumed {
    Resumed {
        state,
        round: verified.rounds,
        chain_tokens: verified.chain_tokens,
        last_contributors: u32::try_from(verified.last_contributors).unwrap_or(u32::MAX),
        from,
    }
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
        DataDir::new(crate::scratch::scratch_dir(&format!("resume-{name}")))
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
            let (next, _) = state.outer_step(&[input], &manifest.outer).unwrap();
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
        // verify's replay tells of each round as it goes.
        let mut told = Vec::new();
        let verified =
            crate::chain::replay_with_progress(&dir, PARAMS, &mut |done| told.push(done)).unwrap();
        assert_eq!((verified.rounds, told), (3, vec![1, 2, 3]));
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
                found: Some(states[2].hash()),
                head_round: Some(1),
            }
        );
        assert_eq!(resumed.state, states[3]);
        assert_eq!(resumed.head(), resume(&dir, PARAMS).unwrap().head());
        assert_eq!(dir.head(PARAMS).unwrap(), Some(states[3].clone()));
        std::fs::remove_dir_all(dir.root()).unwrap();
    }

    #[test]
    fn a_head_several_rounds_behind_replays_only_the_records_after_it() {
        let dir = scratch("several");
        let states = write_chain(&dir, 4);
        // head.ckpt last written after round 0, as for a large model.
        dir.write_head(&states[1]).unwrap();
        let resumed = latest(&dir, PARAMS).unwrap();
        assert_eq!(
            resumed.from,
            ResumedFrom::Replayed {
                last_record: 3,
                found: Some(states[1].hash()),
                head_round: Some(0),
            }
        );
        assert_eq!(resumed.state, states[4]);
        let head = resumed.head();
        assert_eq!(
            (head.round, head.chain_tokens, head.last_contributors),
            (4, 400, 1)
        );
        // `latest` writes nothing.
        assert_eq!(dir.head(PARAMS).unwrap(), Some(states[1].clone()));

        // A record after the head that does not hold is named.
        let mut record = dir.record(2).unwrap().unwrap();
        record.contributions.clear();
        dir.write_record(2, &record).unwrap();
        let error = latest(&dir, PARAMS).unwrap_err().to_string();
        assert!(error.contains("round 2"), "{error}");
        std::fs::remove_dir_all(dir.root()).unwrap();
    }

    #[test]
    fn a_head_that_is_no_record_s_result_replays_from_genesis() {
        let dir = scratch("stranger");
        let states = write_chain(&dir, 2);
        let stranger = ChainState::genesis(vec![0.5; PARAMS]);
        dir.write_head(&stranger).unwrap();
        let resumed = resume(&dir, PARAMS).unwrap();
        assert_eq!(
            resumed.from,
            ResumedFrom::Replayed {
                last_record: 1,
                found: Some(stranger.hash()),
                head_round: None,
            }
        );
        assert_eq!(resumed.state, states[2]);
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
