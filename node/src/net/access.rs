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

use p2ptrain_protocol::PeerKey;

/// A private swarm's pre-shared key: the 32 bytes every member holds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SwarmKey([u8; 32]);

impl SwarmKey {
    /// The key of these bytes.
    #[must_use]
    pub const fn new(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The key's bytes.
    #[must_use]
    pub const fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// Never the bytes: a key is a secret.
impl std::fmt::Debug for SwarmKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SwarmKey(..)")
    }
}

/// The first two lines of a swarm key file.
const PSK_HEADER: [&str; 2] = ["/key/swarm/psk/1.0.0/", "/base16/"];

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
    Psk(&'static str),
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
    format!(
        "{}\n{}\n{}\n",
        PSK_HEADER[0],
        PSK_HEADER[1],
        hex::encode(key)
    )
}

/// Parses a swarm key file's text: `/key/swarm/psk/1.0.0/`, `/base16/`
/// and the key in 64 hex digits, a line each (spaces at the ends of lines
/// and blank lines after the key are ignored).
///
/// # Errors
///
/// [`AccessError::Psk`] for anything else, saying which line is wrong.
pub fn parse_psk(text: &str) -> Result<SwarmKey, AccessError> {
    let mut lines = text.lines().map(str::trim);
    if lines.next() != Some(PSK_HEADER[0]) {
        return Err(AccessError::Psk(
            "the first line is not /key/swarm/psk/1.0.0/",
        ));
    }
    if lines.next() != Some(PSK_HEADER[1]) {
        return Err(AccessError::Psk("the second line is not /base16/"));
    }
    let digits = lines.next().unwrap_or_default();
    let mut key = [0u8; 32];
    hex::decode_to_slice(digits, &mut key)
        .map_err(|_| AccessError::Psk("the third line is not 64 hex digits"))?;
    if lines.any(|line| !line.is_empty()) {
        return Err(AccessError::Psk("more follows the key"));
    }
    Ok(SwarmKey(key))
}

/// Reads a swarm key file.
///
/// # Errors
///
/// [`AccessError`] if it cannot be read or parsed.
pub fn load_psk(path: &Path) -> Result<SwarmKey, AccessError> {
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
        let digits = "0a".repeat(32);
        let good = format!("/key/swarm/psk/1.0.0/\r\n/base16/  \n{digits}\n\n");
        assert_eq!(parse_psk(&good).unwrap(), SwarmKey::new([10; 32]));
        assert_eq!(
            parse_psk(&psk_file(&[10; 32])).unwrap(),
            SwarmKey::new([10; 32])
        );
        for (text, wrong) in [
            (format!("/base16/\n{digits}\n"), "first"),
            (format!("/key/swarm/psk/1.0.0/\n{digits}\n"), "second"),
            (
                format!("/key/swarm/psk/1.0.0/\n/base16/\n{}\n", &digits[2..]),
                "third",
            ),
            (
                format!("/key/swarm/psk/1.0.0/\n/base16/\n{digits}zz\n"),
                "third",
            ),
            ("/key/swarm/psk/1.0.0/\n/base16/\n".to_owned(), "third"),
            (
                format!("/key/swarm/psk/1.0.0/\n/base16/\n{digits}\n{digits}\n"),
                "more",
            ),
        ] {
            let error = parse_psk(&text).unwrap_err().to_string();
            assert!(error.contains(wrong), "{text:?}: {error}");
        }
        assert_eq!(format!("{:?}", SwarmKey::new([10; 32])), "SwarmKey(..)");
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
