//! A node's identity key on disk.
//!
//! The file holds the 32-byte ed25519 secret as 64 lowercase hex characters
//! and a newline. It is created with owner-only permissions and never
//! overwritten: losing a key means losing the identity that signed a run's
//! records.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use p2ptrain_protocol::SigningKey;

/// Why a key could not be made, saved or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// The operating system's random source failed.
    #[error("cannot draw randomness for a new key: {0}")]
    Random(getrandom::Error),
    /// A file already exists where a new key would go.
    #[error("{0} already exists; refusing to overwrite an identity key")]
    Exists(PathBuf),
    /// Reading or writing the file failed.
    #[error("{path}: {error}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// What failed.
        error: io::Error,
    },
    /// The file is not 64 hex characters.
    #[error("{0} is not a key file (expected 64 hex characters)")]
    Malformed(PathBuf),
    /// Another node on this machine runs with this key.
    #[error(
        "{} is in use by another node on this machine: each node needs a key of its \
         own (`--key OTHER.key`, created if missing)", .0.display()
    )]
    InUse(PathBuf),
}

/// A key file held by this process while its node runs; released when
/// dropped (or when the process ends, however it ends).
#[derive(Debug)]
pub struct KeyHold {
    _file: fs::File,
}

/// Holds the key file at `path` for this process alone. Two nodes with one
/// key are one peer to the network: they never connect to each other, and
/// every other peer sees one author with two updates a round. Readers of
/// the file (`p2pnode pubkey`) are not affected.
///
/// # Errors
///
/// [`KeyFileError::InUse`] if another process holds it, [`KeyFileError::Io`]
/// if it cannot be opened or locked.
pub fn hold(path: &Path) -> Result<KeyHold, KeyFileError> {
    let io_err = |error| KeyFileError::Io {
        path: path.to_owned(),
        error,
    };
    let file = fs::File::open(path).map_err(io_err)?;
    match file.try_lock() {
        Ok(()) => Ok(KeyHold { _file: file }),
        Err(fs::TryLockError::WouldBlock) => Err(KeyFileError::InUse(path.to_owned())),
        Err(fs::TryLockError::Error(error)) => Err(io_err(error)),
    }
}

/// A new key from the operating system's random source.
pub fn generate() -> Result<SigningKey, KeyFileError> {
    let mut secret = [0u8; 32];
    getrandom::getrandom(&mut secret).map_err(KeyFileError::Random)?;
    Ok(SigningKey::from_bytes(&secret))
}

/// Writes `key` to a new file at `path`, readable by its owner only.
///
/// Refuses to replace an existing file. The key is written to a temporary
/// file in the same directory, flushed to disk and then linked into place,
/// so `path` holds either nothing or the whole key.
pub fn save(path: &Path, key: &SigningKey) -> Result<(), KeyFileError> {
    let text = format!("{}\n", hex::encode(key.to_bytes()));
    match create_secret_file(path, text.as_bytes()) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Err(KeyFileError::Exists(path.to_owned()))
        }
        other => other.map_err(|error| KeyFileError::Io {
            path: path.to_owned(),
            error,
        }),
    }
}

/// Writes `contents` to a new file at `path`, readable by its owner only:
/// to a temporary file in the same directory, flushed to disk, then linked
/// into place, so `path` holds either nothing or all of `contents`. A
/// node's key ([`save`]) and a private swarm's key are written this way.
///
/// # Errors
///
/// [`io::ErrorKind::AlreadyExists`] if `path` exists (it is never
/// replaced); any other error of the file system.
pub fn create_secret_file(path: &Path, contents: &[u8]) -> io::Result<()> {
    if path.exists() {
        return Err(io::ErrorKind::AlreadyExists.into());
    }
    let tmp = temporary_path(path);
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&tmp).and_then(|mut file| {
        file.write_all(contents)?;
        file.sync_all()
    });
    // A hard link fails if `path` appeared meanwhile, unlike a rename.
    let linked = written.and_then(|()| fs::hard_link(&tmp, path));
    let removed = fs::remove_file(&tmp);
    linked.and(removed)
}

/// Reads a key written by [`save`].
pub fn load(path: &Path) -> Result<SigningKey, KeyFileError> {
    let text = fs::read_to_string(path).map_err(|source| KeyFileError::Io {
        path: path.to_owned(),
        error: source,
    })?;
    let mut secret = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut secret)
        .map_err(|_| KeyFileError::Malformed(path.to_owned()))?;
    Ok(SigningKey::from_bytes(&secret))
}

/// The permission bits of the file at `path` when users other than its
/// owner may read it (a secret's file should be its owner's alone), `None`
/// when they may not or the system has no such bits.
///
/// # Errors
///
/// The file's metadata cannot be read.
pub fn readable_by_others(path: &Path) -> io::Result<Option<u32>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path)?.permissions().mode() & 0o777;
        Ok((mode & 0o044 != 0).then_some(mode))
    }
    #[cfg(not(unix))]
    {
        fs::metadata(path).map(|_| None)
    }
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch_dir(name: &str) -> PathBuf {
        crate::scratch::scratch_dir(&format!("keyfile-{name}"))
    }

    #[test]
    fn saves_and_loads_the_same_key() {
        let dir = scratch_dir("roundtrip");
        let path = dir.join("node.key");
        let key = SigningKey::from_bytes(&[9; 32]);
        save(&path, &key).unwrap();
        assert_eq!(load(&path).unwrap().to_bytes(), key.to_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary file left"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn never_overwrites_a_key() {
        let dir = scratch_dir("overwrite");
        let path = dir.join("node.key");
        save(&path, &SigningKey::from_bytes(&[1; 32])).unwrap();
        let err = save(&path, &SigningKey::from_bytes(&[2; 32])).unwrap_err();
        assert!(matches!(err, KeyFileError::Exists(_)));
        assert_eq!(load(&path).unwrap().to_bytes(), [1; 32]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refuses_a_file_that_is_not_a_key() {
        let dir = scratch_dir("malformed");
        let path = dir.join("node.key");
        fs::write(&path, "not a key\n").unwrap();
        assert!(matches!(load(&path), Err(KeyFileError::Malformed(_))));
        let missing = load(&dir.join("missing.key")).unwrap_err();
        assert!(matches!(missing, KeyFileError::Io { .. }));
        // The message names the file and the reason, once: the reason is
        // not also handed on as a source (a report would print it twice).
        let message = missing.to_string();
        assert!(message.contains("missing.key"), "{message}");
        assert!(std::error::Error::source(&missing).is_none());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_key_is_held_by_one_node_at_a_time() {
        let dir = scratch_dir("hold");
        let path = dir.join("node.key");
        save(&path, &SigningKey::from_bytes(&[3; 32])).unwrap();
        let first = hold(&path).unwrap();
        let second = hold(&path).unwrap_err();
        assert!(matches!(second, KeyFileError::InUse(_)), "{second}");
        assert!(second.to_string().contains("--key OTHER.key"), "{second}");
        // Readers do not hold it.
        assert_eq!(load(&path).unwrap().to_bytes(), [3; 32]);
        drop(first);
        hold(&path).unwrap();
        assert!(matches!(
            hold(&dir.join("missing.key")),
            Err(KeyFileError::Io { .. })
        ));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn generated_keys_differ() {
        assert_ne!(
            generate().unwrap().to_bytes(),
            generate().unwrap().to_bytes()
        );
    }
}
