//! Finding and reading the documents under a `--data` path.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::DataError;

/// A document found under a `--data` path, not yet read (or, when the file
/// system gave no size for it, read already).
pub(crate) enum Document {
    /// A regular file of `len` bytes when it was listed.
    File {
        /// The file.
        path: PathBuf,
        /// Its size when listed.
        len: u64,
    },
    /// A file whose size was given as 0 (as some pseudo-file systems give),
    /// read to see whether it holds anything.
    Read(Vec<u8>),
}

/// The documents under `root`, in sorted path order, unread.
///
/// `root` may be a file (one document) or a folder, walked recursively.
/// Inside a folder, entries whose name starts with `.` are skipped, and so is
/// everything that is not a regular file or a folder (symbolic links
/// included, so a walk cannot loop). `root` itself is followed wherever it
/// points. Empty files are dropped; if nothing is left the result is
/// [`DataError::Empty`].
pub(crate) fn list_documents(root: &Path) -> Result<Vec<Document>, DataError> {
    let metadata = fs::metadata(root).map_err(|source| io_error(root, source))?;
    let mut files = Vec::new();
    if metadata.is_dir() {
        collect_files(root, &mut files)?;
        // Component-wise order: the same on every machine for the same tree.
        files.sort();
    } else if metadata.is_file() {
        files.push(root.to_path_buf());
    }

    let mut documents = Vec::with_capacity(files.len());
    for path in files {
        let len = fs::metadata(&path)
            .map_err(|source| io_error(&path, source))?
            .len();
        if len > 0 {
            documents.push(Document::File { path, len });
            continue;
        }
        let bytes = fs::read(&path).map_err(|source| io_error(&path, source))?;
        if !bytes.is_empty() {
            documents.push(Document::Read(bytes));
        }
    }
    if documents.is_empty() {
        return Err(DataError::Empty {
            path: root.to_path_buf(),
        });
    }
    Ok(documents)
}

/// `documents` read in their order into one stream, joined by `\n`.
///
/// Each file is read straight into the stream, which is sized for them all
/// first: the data is in memory once, never twice.
pub(crate) fn read_joined(documents: &[Document]) -> Result<Vec<u8>, DataError> {
    let separators = documents.len().saturating_sub(1) as u64;
    let listed = documents
        .iter()
        .map(|document| match document {
            Document::File { len, .. } => *len,
            Document::Read(bytes) => bytes.len() as u64,
        })
        .fold(separators, u64::saturating_add);
    let mut stream = Vec::new();
    stream
        .try_reserve_exact(usize::try_from(listed).unwrap_or(usize::MAX))
        .map_err(|_| DataError::TooLarge { bytes: listed })?;
    for (i, document) in documents.iter().enumerate() {
        if i > 0 {
            stream.push(b'\n');
        }
        match document {
            Document::File { path, .. } => {
                fs::File::open(path)
                    .and_then(|mut file| file.read_to_end(&mut stream))
                    .map_err(|source| io_error(path, source))?;
            }
            Document::Read(bytes) => stream.extend_from_slice(bytes),
        }
    }
    Ok(stream)
}

/// Pushes every visible regular file under `dir` onto `files`.
fn collect_files(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let entries = fs::read_dir(dir).map_err(|source| io_error(dir, source))?;
    for entry in entries {
        let entry = entry.map_err(|source| io_error(dir, source))?;
        if entry.file_name().as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let path = entry.path();
        let file_type = entry
            .file_type()
            .map_err(|source| io_error(&path, source))?;
        if file_type.is_dir() {
            collect_files(&path, files)?;
        } else if file_type.is_file() {
            files.push(path);
        }
    }
    Ok(())
}

fn io_error(path: &Path, source: std::io::Error) -> DataError {
    DataError::Io {
        path: path.to_path_buf(),
        error: source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_past_what_memory_can_hold_is_refused_before_any_read() {
        // A file the size of the address space: refused as the stream is
        // sized, so the path, which does not exist, is never opened.
        let documents = [
            Document::Read(b"kept".to_vec()),
            Document::File {
                path: PathBuf::from("no such file"),
                len: u64::MAX,
            },
        ];
        let refused = read_joined(&documents);
        assert!(
            matches!(refused, Err(DataError::TooLarge { bytes: u64::MAX })),
            "{refused:?}"
        );
    }

    #[test]
    fn documents_are_joined_in_their_order_into_a_stream_sized_for_them(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let root = std::env::temp_dir().join(format!("p2ptrain-walk-{}", std::process::id()));
        fs::create_dir_all(&root)?;
        let file = root.join("b.txt");
        fs::write(&file, b"bb")?;
        let documents = [
            Document::File {
                path: file.clone(),
                len: 2,
            },
            Document::Read(b"a".to_vec()),
        ];
        let stream = read_joined(&documents)?;
        assert_eq!(stream, b"bb\na");
        assert_eq!(stream.capacity(), 4);
        fs::remove_dir_all(&root)?;
        Ok(())
    }
}
