//! Who may join a private swarm: the pre-shared key file (the format IPFS
//! and go-libp2p use) and the allow-list of peer keys.
//!
//! ```
//! use p2ptrain_node::net::access::{parse_allow_list, parse_psk, psk_file};
//!
//! let text = psk_file(&[7; 32]);
//! assert!(text.starts_with("/key/swarm/psk/1.0.0/\n/base16/\n"));
//! assert!(parse_psk(&text).is_ok());
//!
//! let allowed = parse_allow_list(
//!     "# lab machines\n0303030303030303030303030303030303030303030303030303030303030303\n",
//! )?;
//! assert_eq!(allowed.len(), 1);
//! # Ok::<(), p2ptrain_node::net::access::AccessError>(())
//! ```

use std::path::Path;
use std::str::FromStr;

use libp2p::pnet::PreSharedKey;
use p2ptrain_protocol::PeerKey;

/// Why a key file or allow-list cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The file cannot be read.
    #[error("{path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// What went wrong.
        error: std::io::Error,
    },
    /// Not a pre-shared key file.
    #[error("not a swarm key file (want /key/swarm/psk/1.0.0/, /base16/, 64 hex digits): {0}")]
    Psk(String),
    /// A line of the allow-list is not a peer key.
    #[error("allow-list line {line}: {text:?} is not a peer key (64 hex digits)")]
    AllowLine {
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
}

/// The text of a swarm key file holding `key`.
pub fn psk_file(key: &[u8; 32]) -> String {
    format!("/key/swarm/psk/1.0.0/\n/base16/\n{}\n", hex::encode(key))
}

/// Parses a swarm key file's text.
///
/// # Errors
///
/// [`AccessError::Psk`] for anything but the three-line base16 format.
pub fn parse_psk(text: &str) -> Result<PreSharedKey, AccessError> {
    PreSharedKey::from_str(text).map_err(|e| AccessError::Psk(e.to_string()))
}

/// Reads a swarm key file.
///
/// # Errors
///
/// [`AccessError`] if it cannot be read or parsed.
pub fn load_psk(path: &Path) -> Result<PreSharedKey, AccessError> {
    parse_psk(&read(path)?)
}

/// Parses an allow-list: one peer key (64 hex digits) per line; blank lines
/// and `#` comments are skipped.
///
/// # Errors
///
/// [`AccessError::AllowLine`] naming the first line that is not a key.
pub fn parse_allow_list(text: &str) -> Result<Vec<PeerKey>, AccessError> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or_default().trim();
        if entry.is_empty() {
            continue;
        }
        let key = PeerKey::from_str(entry).map_err(|_| AccessError::AllowLine {
            line: i + 1,
            text: entry.to_owned(),
        })?;
        keys.push(key);
    }
    keys.sort();
    keys.dedup();
    Ok(keys)
}

/// Reads an allow-list file.
///
/// # Errors
///
/// [`AccessError`] if it cannot be read or a line is not a key.
pub fn load_allow_list(path: &Path) -> Result<Vec<PeerKey>, AccessError> {
    parse_allow_list(&read(path)?)
}

fn read(path: &Path) -> Result<String, AccessError> {
    std::fs::read_to_string(path).map_err(|source| AccessError::Read {
        path: path.display().to_string(),
        error: source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_key_files_and_allow_lists_are_named() {
        assert!(matches!(
            parse_psk("/key/swarm/psk/1.0.0/\n/base64/\nAAAA\n"),
            Err(AccessError::Psk(_))
        ));
        assert!(matches!(parse_psk("hello"), Err(AccessError::Psk(_))));
        let err = parse_allow_list("\n# ok\nnot-a-key\n").unwrap_err();
        assert!(
            matches!(err, AccessError::AllowLine { line: 3, .. }),
            "{err}"
        );
        let key = "0101010101010101010101010101010101010101010101010101010101010101";
        let twice = format!("{key}\n{key}  # again\n");
        assert_eq!(parse_allow_list(&twice).unwrap().len(), 1);
    }
}
