//! A node's data directory: the run manifest, the genesis and latest
//! checkpoints, every round's record and the payloads they apply.
//!
//! ```text
//! DIR/manifest.bin              RunManifest (protocol codec)
//! DIR/genesis.ckpt              ChainState bytes of round 0
//! DIR/head.ckpt                 ChainState bytes after the last record
//! DIR/records/00000007.bin      RoundRecord of round 7 (protocol codec)
//! DIR/payloads/<blake3 hex>.bin a payload, named by its hash
//! DIR/announced.bin             the node's last announced contribution:
//!                               u32 LE length, the signed contribution
//!                               (protocol codec), its payload
//! DIR/node.lock                 locked by the node working on DIR
//! ```
//!
//! Every file is written atomically (temporary file, fsync, rename), so a
//! node killed at any moment leaves each file whole or absent. One node at
//! a time works on a directory ([`DataDir::lock`]).

use std::path::{Path, PathBuf};

use p2ptrain_protocol::{
    codec, CodecError, Contribution, Digest, RoundRecord, RunManifest, Signed,
};
use p2ptrain_trainer::checkpoint::{write_atomically, write_atomically_with};
use p2ptrain_trainer::TrainerError;

use super::{ChainError, ChainState};

/// A node's own contribution and its payload, as kept by
/// [`DataDir::write_announcement`].
#[derive(Debug, Clone)]
pub struct Announcement {
    /// The signed contribution.
    pub contribution: Signed<Contribution>,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// The file of [`DataDir::write_announcement`].
const ANNOUNCED: &str = "announced.bin";

/// The hold of one process on a data directory, from
/// [`DataDir::lock`]: released when dropped, or when the process ends,
/// however it ends.
#[derive(Debug)]
pub struct DirLock {
    _file: std::fs::File,
}

/// A data directory. See the module docs for its layout.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The directory at `root` (created by the first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Its path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn record_path(&self, round: u64) -> PathBuf {
        self.root.join("records").join(format!("{round:08}.bin"))
    }

    fn payload_path(&self, hash: &Digest) -> PathBuf {
        self.root
            .join("payloads")
            .join(format!("{}.bin", hash.to_hex()))
    }

    fn write(&self, path: &Path, bytes: &[u8]) -> Result<(), ChainError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| ChainError::io(dir, e))?;
        }
        write_atomically(path, bytes).map_err(|e| write_error(path, e))
    }

    fn read(&self, path: &Path) -> Result<Vec<u8>, ChainError> {
        std::fs::read(path).map_err(|e| ChainError::io(path, e))
    }

    /// Takes the directory (creating it) for this process alone, as a node
    /// must before it reads or writes: a second node on it would remove the
    /// first one's unfinished writes and write records beside its own.
    ///
    /// # Errors
    ///
    /// [`ChainError::InUse`] if another process holds it, [`ChainError::Io`]
    /// if the lock file cannot be opened or locked.
    pub fn lock(&self) -> Result<DirLock, ChainError> {
        std::fs::create_dir_all(&self.root).map_err(|e| ChainError::io(&self.root, e))?;
        let path = self.file("node.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| ChainError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => {
                Err(ChainError::InUse(self.root.display().to_string()))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(ChainError::io(&path, e)),
        }
    }

    /// Whether a run was started here: its manifest is present, readable
    /// or not. `init` writes the manifest last, so a genesis checkpoint
    /// alone is an interrupted `init`, which may be done again.
    pub fn holds_run(&self) -> bool {
        self.file("manifest.bin").exists()
    }

    /// Writes the run manifest.
    ///
    /// # Errors
    ///
    /// [`ChainError`] on an encoding or I/O failure, or a manifest no node
    /// can run ([`RunManifest::validate`]), which is not written.
    pub fn write_manifest(&self, manifest: &RunManifest) -> Result<(), ChainError> {
        self.runnable(manifest)?;
        self.write(&self.file("manifest.bin"), &codec::encode(manifest)?)
    }

    /// `manifest`, checked as [`DataDir::manifest`] checks the one it reads.
    fn runnable(&self, manifest: &RunManifest) -> Result<(), ChainError> {
        manifest.validate().map_err(|error| ChainError::Manifest {
            path: self.file("manifest.bin").display().to_string(),
            error,
        })
    }

    /// Reads the run manifest, and checks that a node can run it.
    ///
    /// # Errors
    ///
    /// [`ChainError`] if it is missing, does not decode, or has a field out
    /// of range ([`RunManifest::validate`]).
    pub fn manifest(&self) -> Result<RunManifest, ChainError> {
        let path = self.file("manifest.bin");
        let manifest: RunManifest =
            codec::decode(&self.read(&path)?).map_err(|e| ChainError::Decode {
                path: path.display().to_string(),
                error: e,
            })?;
        self.runnable(&manifest)?;
        Ok(manifest)
    }

    /// Writes a new run: its genesis checkpoint, then its manifest (so that
    /// a directory holds a run only once both are whole).
    ///
    /// # Errors
    ///
    /// [`ChainError`] on an encoding or I/O failure, or a manifest no node
    /// can run, before anything is written.
    pub fn write_run(
        &self,
        manifest: &RunManifest,
        genesis: &ChainState,
    ) -> Result<(), ChainError> {
        self.runnable(manifest)?;
        self.write_genesis(genesis)?;
        self.write_manifest(manifest)
    }

    /// Writes the genesis checkpoint.
    ///
    /// # Errors
    ///
    /// [`ChainError`] on an I/O failure.
    pub fn write_genesis(&self, state: &ChainState) -> Result<(), ChainError> {
        self.write_state("genesis.ckpt", state)
    }

    /// Writes the latest checkpoint.
    ///
    /// # Errors
    ///
    /// [`ChainError`] on an I/O failure.
    pub fn write_head(&self, state: &ChainState) -> Result<(), ChainError> {
        self.write_state("head.ckpt", state)
    }

    /// Writes `state` to the file `name` atomically, a block of its bytes
    /// at a time (no copy of the whole is made).
    fn write_state(&self, name: &str, state: &ChainState) -> Result<(), ChainError> {
        let path = self.file(name);
        std::fs::create_dir_all(&self.root).map_err(|e| ChainError::io(&self.root, e))?;
        write_atomically_with(&path, |out| state.write_to(out)).map_err(|e| write_error(&path, e))
    }

    /// Reads the genesis checkpoint of a `len`-parameter model.
    ///
    /// # Errors
    ///
    /// [`ChainError`] if it is missing or not `8 × len` bytes.
    pub fn genesis(&self, len: usize) -> Result<ChainState, ChainError> {
        self.checkpoint(&self.file("genesis.ckpt"), len)
    }

    /// The genesis checkpoint's file, to serve its bytes as they lie on
    /// disk (a peer checks what it receives against the run's genesis
    /// hash).
    pub fn genesis_path(&self) -> PathBuf {
        self.file("genesis.ckpt")
    }

    /// Reads the latest checkpoint, if one was written.
    ///
    /// # Errors
    ///
    /// [`ChainError`] if it exists but cannot be read or has the wrong size.
    pub fn head(&self, len: usize) -> Result<Option<ChainState>, ChainError> {
        let path = self.file("head.ckpt");
        if !path.exists() {
            return Ok(None);
        }
        self.checkpoint(&path, len).map(Some)
    }

    /// The checkpoint in the file at `path`, of a `len`-parameter model,
    /// read straight into the state's buffers.
    fn checkpoint(&self, path: &Path, len: usize) -> Result<ChainState, ChainError> {
        let io = |e| ChainError::io(path, e);
        let mut file = std::fs::File::open(path).map_err(io)?;
        let found = file.metadata().map_err(io)?.len();
        let expected = ChainState::len_of(len);
        if found != expected {
            return Err(ChainError::CheckpointLength {
                path: path.display().to_string(),
                expected,
                found,
            });
        }
        ChainState::read_from(&mut file, len).map_err(io)
    }

    /// Whether round `round`'s record is on disk (not read or checked).
    pub fn has_record(&self, round: u64) -> bool {
        self.record_path(round).exists()
    }

    /// Writes this node's error-feedback residual, tagged with the
    /// checkpoint it goes with (see [`residual`](Self::residual)).
    ///
    /// # Errors
    ///
    /// [`ChainError`] on an I/O failure.
    pub fn write_residual(&self, checkpoint: &Digest, values: &[f32]) -> Result<(), ChainError> {
        let mut bytes = Vec::with_capacity(32 + 4 * values.len());
        bytes.extend_from_slice(checkpoint.as_bytes());
        for v in values {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        self.write(&self.file("residual.bin"), &bytes)
    }

    /// The saved residual of a `len`-parameter model and the checkpoint it
    /// goes with, if one was saved; `None` too for a file of another size.
    ///
    /// # Errors
    ///
    /// [`ChainError`] if it exists but cannot be read.
    pub fn residual(&self, len: usize) -> Result<Option<(Digest, Vec<f32>)>, ChainError> {
        let path = self.file("residual.bin");
        if !path.exists() {
            return Ok(None);
        }
        let bytes = self.read(&path)?;
        if bytes.len() != 32 + 4 * len {
            return Ok(None);
        }
        let (tag, values) = bytes.split_at(32);
        let tag = Digest::from_bytes(tag.try_into().unwrap_or([0; 32]));
        let values = values
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(Some((tag, values)))
    }

    /// Keeps this node's contribution and its payload, written before the
    /// contribution is announced: a node restarted in the same round
    /// announces it again instead of signing a second one.
    ///
    /// # Errors
    ///
    /// [`ChainError`] on an encoding or I/O failure.
    pub fn write_announcement(
        &self,
        signed: &Signed<Contribution>,
        payload: &[u8],
    ) -> Result<(), ChainError> {
        let header = codec::encode(signed)?;
        let len = u32::try_from(header.len()).map_err(|_| CodecError::TooLarge {
            len: header.len(),
            max: u32::MAX as usize,
        })?;
        let mut bytes = Vec::with_capacity(4 + header.len() + payload.len());
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(payload);
        self.write(&self.file(ANNOUNCED), &bytes)
    }

    /// The contribution and payload kept by
    /// [`write_announcement`](Self::write_announcement), if any.
    ///
    /// # Errors
    ///
    /// [`ChainError`] if the file exists but cannot be read or decoded.
    pub fn announcement(&self) -> Result<Option<Announcement>, ChainError> {
        let path = self.file(ANNOUNCED);
        if !path.exists() {
            return Ok(None);
        }
        let bytes = self.read(&path)?;
        let truncated = || ChainError::Truncated {
            path: path.display().to_string(),
        };
        let (len, rest) = bytes.split_first_chunk::<4>().ok_or_else(truncated)?;
        let len = u32::from_le_bytes(*len) as usize;
        let header = rest.get(..len).ok_or_else(truncated)?;
        let payload = &rest[len..];
        let contribution = codec::decode(header).map_err(|error| ChainError::Decode {
            path: path.display().to_string(),
            error,
        })?;
        Ok(Some(Announcement {
            contribution,
            payload: payload.to_vec(),
        }))
    }

    /// Writes round `round`'s record.
    ///
    /// # Errors
    ///
    /// [`ChainError`] on an encoding or I/O failure.
    pub fn write_record(&self, round: u64, record: &RoundRecord) -> Result<(), ChainError> {
        self.write(&self.record_path(round), &codec::encode(record)?)
    }

    /// Reads round `round`'s record, `None` past the last one.
    ///
    /// # Errors
    ///
    /// [`ChainError`] if it exists but does not decode.
    pub fn record(&self, round: u64) -> Result<Option<RoundRecord>, ChainError> {
        let path = self.record_path(round);
        if !path.exists() {
            return Ok(None);
        }
        codec::decode(&self.read(&path)?)
            .map(Some)
            .map_err(|e| ChainError::Decode {
                path: path.display().to_string(),
                error: e,
            })
    }

    /// The highest round with a record, `None` with none: the last round
    /// this directory saw finalized.
    ///
    /// # Errors
    ///
    /// [`ChainError::Io`] if the records folder exists but cannot be listed.
    pub fn last_record(&self) -> Result<Option<u64>, ChainError> {
        let folder = self.root.join("records");
        if !folder.exists() {
            return Ok(None);
        }
        let entries = std::fs::read_dir(&folder).map_err(|e| ChainError::io(&folder, e))?;
        let mut last = None;
        for entry in entries {
            let entry = entry.map_err(|e| ChainError::io(&folder, e))?;
            let name = entry.file_name();
            let round = name
                .to_str()
                .and_then(|n| n.strip_suffix(".bin"))
                .filter(|n| n.len() == 8)
                .and_then(|n| n.parse::<u64>().ok());
            last = last.max(round);
        }
        Ok(last)
    }

    /// Removes the records of round `first` and after, the newest first
    /// (those of a branch this node left); returns how many there were.
    ///
    /// # Errors
    ///
    /// [`ChainError::Io`] if the folder cannot be listed or a file removed.
    pub fn remove_records_from(&self, first: u64) -> Result<u64, ChainError> {
        let Some(last) = self.last_record()? else {
            return Ok(0);
        };
        let mut removed = 0;
        for round in (first..=last).rev() {
            let path = self.record_path(round);
            if path.exists() {
                std::fs::remove_file(&path).map_err(|e| ChainError::io(&path, e))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes the temporary files an interrupted atomic write left behind
    /// (`NAME.tmpPID`); returns how many. The files they were meant to
    /// replace are whole: either the old version or the new.
    ///
    /// # Errors
    ///
    /// [`ChainError::Io`] if a folder cannot be listed or a file removed.
    pub fn remove_temporaries(&self) -> Result<usize, ChainError> {
        let mut removed = 0;
        for folder in [
            self.root.clone(),
            self.root.join("records"),
            self.root.join("payloads"),
        ] {
            if !folder.exists() {
                continue;
            }
            let entries = std::fs::read_dir(&folder).map_err(|e| ChainError::io(&folder, e))?;
            for entry in entries {
                let path = entry.map_err(|e| ChainError::io(&folder, e))?.path();
                if is_temporary(&path) {
                    std::fs::remove_file(&path).map_err(|e| ChainError::io(&path, e))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Stores a payload under its hash.
    ///
    /// # Errors
    ///
    /// [`ChainError`] on an I/O failure.
    pub fn write_payload(&self, bytes: &[u8]) -> Result<Digest, ChainError> {
        let hash = Digest::of(bytes);
        let path = self.payload_path(&hash);
        if !path.exists() {
            self.write(&path, bytes)?;
        }
        Ok(hash)
    }

    /// The payload stored under `hash`, as stored (not yet checked).
    ///
    /// # Errors
    ///
    /// [`ChainError`] if it is missing.
    pub fn payload(&self, hash: &Digest) -> Result<Vec<u8>, ChainError> {
        self.read(&self.payload_path(hash))
    }
}

/// A temporary file of an atomic write: `NAME.tmp` and digits.
fn is_temporary(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    name.rsplit_once(".tmp").is_some_and(|(stem, pid)| {
        !stem.is_empty() && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())
    })
}

/// The error of an atomic write of `path` that failed.
fn write_error(path: &Path, error: TrainerError) -> ChainError {
    let error = match error {
        TrainerError::Io { error, .. } => error,
        other => std::io::Error::other(other),
    };
    ChainError::Write {
        path: path.display().to_string(),
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_holds_a_directory_at_a_time() {
        let root = crate::scratch::scratch_dir("lock");
        let dir = DataDir::new(root.join("new"));
        let held = dir.lock().unwrap();
        // Another hold (another open file, as another process has) fails
        // while the first lasts, and succeeds once it is dropped.
        assert!(matches!(dir.lock(), Err(ChainError::InUse(_))));
        drop(held);
        let _again = dir.lock().unwrap();
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_manifest_no_node_can_run_is_neither_written_nor_read() -> crate::TestResult {
        let root = crate::scratch::scratch_dir("unrunnable");
        let dir = DataDir::new(&root);
        let manifest = RunManifest {
            inner_steps: 0,
            ..RunManifest::default()
        };
        let genesis = ChainState::genesis(vec![0.0; 4]);
        let refused = dir.write_run(&manifest, &genesis);
        assert!(
            matches!(refused, Err(ChainError::Manifest { .. })),
            "{refused:?}"
        );
        // Refused before anything was written.
        assert!(!dir.holds_run() && !dir.genesis_path().exists());

        // One written by other means is refused as it is read, naming the
        // field.
        std::fs::create_dir_all(&root)?;
        std::fs::write(root.join("manifest.bin"), codec::encode(&manifest)?)?;
        let error = dir
            .manifest()
            .map(drop)
            .err()
            .ok_or("an unrunnable manifest was read")?;
        assert!(
            error.to_string().contains("inner_steps must be at least 1"),
            "{error}"
        );
        std::fs::write(
            root.join("manifest.bin"),
            codec::encode(&RunManifest::default())?,
        )?;
        assert_eq!(dir.manifest()?, RunManifest::default());
        std::fs::remove_dir_all(&root)?;
        Ok(())
    }

    #[test]
    fn an_announcement_comes_back_whole_and_a_truncated_one_is_an_error() {
        use p2ptrain_protocol::{PayloadRef, PeerKey, SigningKey};

        let root = crate::scratch::scratch_dir("announced");
        let dir = DataDir::new(&root);
        assert!(dir.announcement().unwrap().is_none());
        let key = SigningKey::from_bytes(&[3; 32]);
        let payload = b"payload bytes".to_vec();
        let contribution = Contribution {
            run: Digest::of(b"run"),
            round: 7,
            base: Digest::of(b"base"),
            author: PeerKey::from(&key),
            tokens: 64,
            payload: PayloadRef {
                hash: Digest::of(&payload),
                len: payload.len() as u64,
            },
            compression: Default::default(),
        };
        let signed = Signed::sign(&contribution, &key).unwrap();
        dir.write_announcement(&signed, &payload).unwrap();
        let back = dir.announcement().unwrap().unwrap();
        assert_eq!(
            (back.contribution.id(), back.payload),
            (signed.id(), payload)
        );
        let path = root.join(ANNOUNCED);
        let whole = std::fs::read(&path).unwrap();
        std::fs::write(&path, &whole[..10]).unwrap();
        assert!(matches!(
            dir.announcement(),
            Err(ChainError::Truncated { .. })
        ));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn records_from_a_round_on_are_removed_and_the_rest_kept() {
        use p2ptrain_protocol::{Commit, IdSet, PeerKey, SigningKey};

        let root = crate::scratch::scratch_dir("remove-records");
        let dir = DataDir::new(&root);
        assert_eq!(dir.remove_records_from(0).unwrap(), 0);
        let key = SigningKey::from_bytes(&[4; 32]);
        for round in [0, 1, 2, 4] {
            let commit = Commit {
                run: Digest::of(b"run"),
                round,
                base: Digest::of(b"base"),
                committer: PeerKey::from(&key),
                contributions: IdSet::new(vec![]),
                result: Digest::of(b"result"),
                chain_tokens: round,
            };
            let record = RoundRecord {
                commit: Signed::sign(&commit, &key).unwrap(),
                contributions: vec![],
            };
            dir.write_record(round, &record).unwrap();
        }
        assert_eq!(dir.remove_records_from(2).unwrap(), 2);
        assert_eq!(dir.last_record().unwrap(), Some(1));
        assert!(dir.has_record(0) && dir.has_record(1));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_residual_comes_back_with_its_tag_and_a_wrong_size_is_ignored() {
        let root = crate::scratch::scratch_dir("residual");
        let dir = DataDir::new(&root);
        assert_eq!(dir.residual(3).unwrap(), None);
        let tag = Digest::of(b"checkpoint");
        let values = [1.5f32, -0.0, f32::MIN_POSITIVE];
        dir.write_residual(&tag, &values).unwrap();
        let (found, back) = dir.residual(3).unwrap().unwrap();
        assert_eq!(found, tag);
        assert_eq!(
            back.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            values.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert_eq!(dir.residual(4).unwrap(), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
