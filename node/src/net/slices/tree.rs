//! A checkpoint's BLAKE3 tree in the Bao outboard layout, built on every
//! core.
//!
//! The outboard is the content's length (8 bytes, little-endian), then
//! every parent node of BLAKE3's tree in pre-order, each the chaining
//! values of its two children (64 bytes). A subtree of `n` chunks has
//! `n - 1` parent nodes, so where each subtree's nodes go is known before
//! any is hashed: the two halves of a subtree are built side by side, each
//! into its own part of the outboard, down to pieces of [`PIECE_LEN`] that
//! one task reads and hashes alone.

use std::cell::RefCell;
use std::io::{self, Read, Seek, SeekFrom};

use blake3::hazmat::{
    left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};
use p2ptrain_protocol::Digest;

use super::chunks::{self, Chunks, LANES};
use super::Content;

const CHUNK_LEN: u64 = blake3::CHUNK_LEN as u64;
const PARENT_LEN: usize = 2 * blake3::OUT_LEN;
const HEADER_LEN: usize = 8;

/// The content one task reads and hashes: 1 MiB, a whole subtree wherever
/// the tree's halving puts it.
const PIECE_LEN: u64 = 1 << 20;

thread_local! {
    /// A task's piece of the content, kept for the thread's next.
    static PIECE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The chaining values of a piece's chunks, likewise.
    static VALUES: RefCell<Vec<ChainingValue>> = const { RefCell::new(Vec::new()) };
}

/// The outboard of `content` and its BLAKE3 hash, the same bytes as
/// `bao::encode::outboard` gives. Pieces are hashed on the rayon pool this
/// runs in (the global one unless installed in another), each read through
/// a reader of its own.
///
/// # Errors
///
/// Why `content` cannot be read: a short read is one, as is a content too
/// long for this machine's memory to hold its tree.
pub(super) fn build(content: &dyn Content) -> io::Result<(Vec<u8>, Digest)> {
    let len = content.len();
    let chunks = len.div_ceil(CHUNK_LEN).max(1);
    let tree_len = usize::try_from(chunks - 1)
        .ok()
        .and_then(|parents| parents.checked_mul(PARENT_LEN))
        .and_then(|parents| parents.checked_add(HEADER_LEN))
        .ok_or_else(|| io::Error::other(format!("a tree of {len} bytes is too long")))?;
    let mut tree = vec![0u8; tree_len];
    let (header, nodes) = tree.split_at_mut(HEADER_LEN);
    header.copy_from_slice(&len.to_le_bytes());
    let hash = if chunks == 1 {
        with_piece(content, 0, len, blake3::hash)?
    } else {
        let (left, right) = halves(content, nodes, 0, len, chunks::best())?;
        merge_subtrees_root(&left, &right, Mode::Hash)
    };
    Ok((tree, Digest::from_bytes(*hash.as_bytes())))
}

/// The chaining value of the subtree of `len` bytes from `start`, its
/// parent nodes written to `nodes`.
fn subtree(
    content: &dyn Content,
    nodes: &mut [u8],
    start: u64,
    len: u64,
    kernel: Chunks,
) -> io::Result<ChainingValue> {
    if len <= PIECE_LEN {
        return with_piece(content, start, len, |bytes| {
            in_memory(nodes, bytes, start, kernel)
        });
    }
    let (left, right) = halves(content, nodes, start, len, kernel)?;
    Ok(merge_subtrees_non_root(&left, &right, Mode::Hash))
}

/// The chaining values of the two halves of a subtree of more than a
/// chunk, built side by side; its own parent node (the two values) is
/// written first in `nodes`, each half's nodes after it.
fn halves(
    content: &dyn Content,
    nodes: &mut [u8],
    start: u64,
    len: u64,
    kernel: Chunks,
) -> io::Result<(ChainingValue, ChainingValue)> {
    let left_len = left_subtree_len(len);
    let (node, children) = nodes.split_at_mut(PARENT_LEN);
    let (left_nodes, right_nodes) = children.split_at_mut(nodes_len(left_len));
    let (left, right) = rayon::join(
        || subtree(content, left_nodes, start, left_len, kernel),
        || {
            subtree(
                content,
                right_nodes,
                start + left_len,
                len - left_len,
                kernel,
            )
        },
    );
    let (left, right) = (left?, right?);
    node[..blake3::OUT_LEN].copy_from_slice(&left);
    node[blake3::OUT_LEN..].copy_from_slice(&right);
    Ok((left, right))
}

/// The chaining value of `bytes`, a subtree starting at byte `offset`; its
/// parent nodes written to `nodes`.
fn in_memory(nodes: &mut [u8], bytes: &[u8], offset: u64, kernel: Chunks) -> ChainingValue {
    VALUES.with_borrow_mut(|values| {
        chunk_values(bytes, offset, kernel, values);
        parents(nodes, values)
    })
}

/// The chaining value of `bytes`, a subtree starting at byte `offset`,
/// and its parent nodes in pre-order: what a slice carries of a subtree it
/// covers whole.
pub(super) fn subtree_nodes(bytes: &[u8], offset: u64, kernel: Chunks) -> (ChainingValue, Vec<u8>) {
    let mut nodes = vec![0; nodes_len(bytes.len() as u64)];
    let value = in_memory(&mut nodes, bytes, offset, kernel);
    (value, nodes)
}

/// Sets `values` to the chaining values of the chunks of `bytes`, which
/// start at byte `offset` of their content (a multiple of a chunk).
fn chunk_values(bytes: &[u8], offset: u64, kernel: Chunks, values: &mut Vec<ChainingValue>) {
    values.clear();
    let first = offset / CHUNK_LEN;
    let (groups, rest) = bytes.as_chunks::<{ LANES * blake3::CHUNK_LEN }>();
    for (group, chunks) in (first..).step_by(LANES).zip(groups) {
        let mut group_values = [[0; blake3::OUT_LEN]; LANES];
        kernel(chunks, group, &mut group_values);
        values.extend_from_slice(&group_values);
    }
    let rest_first = first + (groups.len() * LANES) as u64;
    for (chunk, bytes) in (rest_first..).zip(rest.chunks(blake3::CHUNK_LEN)) {
        values.push(chunk_value(bytes, chunk * CHUNK_LEN));
    }
}

/// The chaining value of one chunk (or the last, shorter one) starting at
/// byte `offset`, not the root.
pub(super) fn chunk_value(bytes: &[u8], offset: u64) -> ChainingValue {
    blake3::Hasher::new()
        .set_input_offset(offset)
        .update(bytes)
        .finalize_non_root()
}

/// The chaining value of the subtree over the chunks whose `values` are
/// given, its parent nodes written to `nodes`.
fn parents(nodes: &mut [u8], values: &[ChainingValue]) -> ChainingValue {
    match values {
        // An empty content's one chunk.
        [] => chunk_value(&[], 0),
        [value] => *value,
        _ => {
            // The left subtree holds the largest power of two of the
            // chunks short of all.
            let left_count = 1 << (values.len() - 1).ilog2();
            let (node, children) = nodes.split_at_mut(PARENT_LEN);
            let (left_nodes, right_nodes) = children.split_at_mut((left_count - 1) * PARENT_LEN);
            let (left_values, right_values) = values.split_at(left_count);
            let left = parents(left_nodes, left_values);
            let right = parents(right_nodes, right_values);
            node[..blake3::OUT_LEN].copy_from_slice(&left);
            node[blake3::OUT_LEN..].copy_from_slice(&right);
            merge_subtrees_non_root(&left, &right, Mode::Hash)
        }
    }
}

/// The bytes of the parent nodes of a subtree of `len` bytes: part of a
/// tree whose length [`build`] checked, or of bytes in memory (the nodes
/// are a sixteenth of them).
fn nodes_len(len: u64) -> usize {
    (len.div_ceil(CHUNK_LEN).max(1) - 1) as usize * PARENT_LEN
}

/// `f` of the `len` bytes of `content` from `start`, read into this
/// thread's piece buffer.
fn with_piece<R>(
    content: &dyn Content,
    start: u64,
    len: u64,
    f: impl FnOnce(&[u8]) -> R,
) -> io::Result<R> {
    PIECE.with_borrow_mut(|piece| {
        piece.resize(len as usize, 0);
        let mut reader = content.reader()?;
        reader.seek(SeekFrom::Start(start))?;
        reader.read_exact(piece)?;
        Ok(f(piece))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::slices::tests::content;

    #[test]
    fn the_tree_is_bao_s_outboard_at_every_shape() -> crate::TestResult {
        let piece = PIECE_LEN as usize;
        let chunk = CHUNK_LEN as usize;
        for len in [
            0,
            1,
            chunk - 1,
            chunk,
            chunk + 1,
            3 * chunk,
            5 * chunk + 17,
            piece - 1,
            piece,
            piece + 1,
            piece + chunk,
            2 * piece,
            3 * piece + 5 * chunk + 3,
            8 * piece + 1,
        ] {
            let bytes = content(len);
            let (tree, hash) = build(&bytes)?;
            let (expected, expected_hash) = bao::encode::outboard(&bytes);
            assert_eq!(tree, expected, "{len} bytes");
            assert_eq!(
                hash,
                Digest::from_bytes(*expected_hash.as_bytes()),
                "{len} bytes"
            );
            assert_eq!(hash, Digest::of(&bytes), "{len} bytes");
        }
        Ok(())
    }

    #[test]
    fn a_content_shorter_than_it_says_is_refused() {
        struct Short(Vec<u8>);
        impl Content for Short {
            fn len(&self) -> u64 {
                self.0.len() as u64 + 1
            }
            fn reader(&self) -> io::Result<Box<dyn super::super::ReadSeek + '_>> {
                Ok(Box::new(io::Cursor::new(&self.0)))
            }
        }
        for len in [10, 3 * PIECE_LEN as usize] {
            let error = build(&Short(content(len))).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{len} bytes");
        }
    }
}
