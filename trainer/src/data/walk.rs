//! Finding and reading the documents under a `--data` path.

use std::fs;
use std::path::{Path, PathBuf};

use super::DataError;

/// The documents under `root`, in sorted path order, each read whole.
///
/// `root` may be a file (one document) or a folder, walked recursively.
/// Inside a folder, entries whose name starts with `.` are skipped, and so is
/// everything that is not a regular file or a folder (symbolic links
/// included, so a walk cannot loop). `root` itself is followed wherever it
/// points. Empty files are dropped; if nothing is left the result is
/// [`DataError::Empty`].
pub(crate) fn read_documents(root: &Path) -> Result<Vec<Vec<u8>>, DataError> {
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
    for file in &files {
        let bytes = fs::read(file).map_err(|source| io_error(file, source))?;
        if !bytes.is_empty() {
            documents.push(bytes);
        }
    }
    if documents.is_empty() {
        return Err(DataError::Empty {
            path: root.to_path_buf(),
        });
    }
    Ok(documents)
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
