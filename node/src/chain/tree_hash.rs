//! The checkpoint hash from pieces. BLAKE3 is a tree of 1 KiB chunks, so a
//! state's bytes can be hashed in aligned groups of chunks apart, on any
//! thread and in any order (the outer step hashes each group while the
//! bytes it just wrote are still in cache), and the groups' chaining values
//! joined into the digest that hashing the whole stream at once gives.

use std::ops::Range;

use blake3::hazmat::{
    left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};
use p2ptrain_protocol::Digest;

/// Bytes in a group: 64 chunks, a whole subtree of BLAKE3's tree wherever
/// it starts on a multiple of its length, and enough chunks for BLAKE3's
/// widest SIMD path.
pub(crate) const GROUP_LEN: u64 = 64 * blake3::CHUNK_LEN as u64;

/// The chaining values of a byte stream's groups, filled in any order.
#[derive(Debug)]
pub(crate) struct GroupHashes {
    stream_len: u64,
    groups: Vec<Option<ChainingValue>>,
}

impl GroupHashes {
    /// The groups of a stream of `stream_len` bytes; `None` when the stream
    /// is a single group or less, which is hashed whole.
    pub(crate) fn new(stream_len: u64) -> Option<Self> {
        if stream_len <= GROUP_LEN {
            return None;
        }
        let count = usize::try_from(stream_len.div_ceil(GROUP_LEN)).ok()?;
        Some(Self {
            stream_len,
            groups: vec![None; count],
        })
    }

    /// The byte range of group `index` in the stream (the last may be
    /// short).
    pub(crate) fn range(&self, index: usize) -> Range<u64> {
        let start = index as u64 * GROUP_LEN;
        start..(start + GROUP_LEN).min(self.stream_len)
    }

    /// The first group starting at or after byte `offset`.
    pub(crate) fn first_at_or_after(offset: u64) -> usize {
        usize::try_from(offset.div_ceil(GROUP_LEN)).unwrap_or(usize::MAX)
    }

    /// The number of groups.
    #[cfg(test)]
    pub(crate) fn count(&self) -> usize {
        self.groups.len()
    }

    /// Keeps group `index`'s chaining value (from [`group_value`]).
    pub(crate) fn insert(&mut self, index: usize, value: ChainingValue) {
        if let Some(slot) = self.groups.get_mut(index) {
            *slot = Some(value);
        }
    }

    /// The stream's BLAKE3 hash: the groups' chaining values joined as
    /// BLAKE3's tree joins them, each group not inserted hashed from the
    /// bytes `read` gives for its range.
    pub(crate) fn root(mut self, read: impl Fn(Range<u64>) -> Vec<u8>) -> Digest {
        for index in 0..self.groups.len() {
            if self.groups[index].is_none() {
                let range = self.range(index);
                let bytes = read(range.clone());
                self.groups[index] = Some(group_value(range.start, &bytes));
            }
        }
        let values: Vec<ChainingValue> = self.groups.iter().flatten().copied().collect();
        // More than one group, so the root is a parent node.
        let left = left_subtree_len(self.stream_len);
        let left_value = subtree(&values, left);
        let right_value = subtree(&values[group_index(left)..], self.stream_len - left);
        Digest::from_bytes(*merge_subtrees_root(&left_value, &right_value, Mode::Hash).as_bytes())
    }
}

/// The chaining value of the group whose bytes start at `offset` in the
/// stream: `offset` a multiple of [`GROUP_LEN`], `bytes` at most
/// [`GROUP_LEN`] long and not empty (only the stream's last group is
/// short).
pub(crate) fn group_value(offset: u64, bytes: &[u8]) -> ChainingValue {
    debug_assert!(
        offset.is_multiple_of(GROUP_LEN) && !bytes.is_empty() && bytes.len() as u64 <= GROUP_LEN
    );
    blake3::Hasher::new()
        .set_input_offset(offset)
        .update(bytes)
        .finalize_non_root()
}

/// The chaining value of the subtree of `len` bytes whose groups' values
/// start `values`: a group, or the join of BLAKE3's left and right
/// subtrees, which start on group boundaries as groups are whole subtrees.
fn subtree(values: &[ChainingValue], len: u64) -> ChainingValue {
    if len <= GROUP_LEN {
        return values[0];
    }
    let left = left_subtree_len(len);
    let left_value = subtree(values, left);
    let right_value = subtree(&values[group_index(left)..], len - left);
    merge_subtrees_non_root(&left_value, &right_value, Mode::Hash)
}

fn group_index(offset: u64) -> usize {
    (offset / GROUP_LEN) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 1000) as u8).collect()
    }

    #[test]
    fn groups_hashed_apart_join_into_the_hash_of_the_whole() {
        let group = GROUP_LEN as usize;
        for len in [
            group + 1,
            2 * group,
            2 * group + 1,
            3 * group - 5,
            5 * group,
            7 * group + 1023,
            13 * group + 4096,
        ] {
            let bytes = stream(len);
            let mut groups = GroupHashes::new(len as u64).unwrap();
            // Every other group inserted, the rest read when joining.
            for index in (0..groups.count()).step_by(2) {
                let range = groups.range(index);
                let value = group_value(
                    range.start,
                    &bytes[range.start as usize..range.end as usize],
                );
                groups.insert(index, value);
            }
            let root =
                groups.root(|range| bytes[range.start as usize..range.end as usize].to_vec());
            assert_eq!(root, Digest::of(&bytes), "{len} bytes");
        }
    }

    #[test]
    fn a_stream_of_one_group_or_less_is_hashed_whole() {
        assert!(GroupHashes::new(0).is_none());
        assert!(GroupHashes::new(GROUP_LEN).is_none());
        assert_eq!(GroupHashes::new(GROUP_LEN + 1).map(|g| g.count()), Some(2));
        assert_eq!(GroupHashes::first_at_or_after(0), 0);
        assert_eq!(GroupHashes::first_at_or_after(1), 1);
        assert_eq!(GroupHashes::first_at_or_after(GROUP_LEN), 1);
    }
}
