//! The shared checkpoint of a chain: its bytes and its hash. The outer
//! step that moves it is in [`super::step`].

use std::ops::Range;

use p2ptrain_protocol::Digest;

use super::ChainError;

/// What every peer on a chain holds alike after a round: the parameters and
/// the outer optimizer's momentum, both flat `f32` buffers in the layout all
/// peers share.
///
/// Its bytes are the parameters' then the momentum's little-endian `f32`s,
/// and its hash (the checkpoint hash commits name) is blake3 of those bytes.
///
/// ```
/// use p2ptrain_node::chain::ChainState;
///
/// let state = ChainState::genesis(vec![0.5; 4]);
/// let bytes = state.to_bytes();
/// assert_eq!(bytes.len(), 32);
/// assert_eq!(ChainState::from_bytes(&bytes, 4)?, state);
/// assert_eq!(state.hash(), p2ptrain_protocol::Digest::of(&bytes));
/// # Ok::<(), p2ptrain_node::chain::ChainError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ChainState {
    /// The flat parameter buffer.
    pub params: Vec<f32>,
    /// The outer momentum, as long as `params`.
    pub momentum: Vec<f32>,
}

impl ChainState {
    /// Round 0: `params` and zero momentum.
    pub fn genesis(params: Vec<f32>) -> Self {
        let momentum = vec![0.0; params.len()];
        Self { params, momentum }
    }

    /// The length in bytes of the state of a model of `params` parameters:
    /// its parameters and its momentum, 4 bytes a value.
    pub fn len_of(params: usize) -> u64 {
        8 * params as u64
    }

    /// The length of [`to_bytes`](Self::to_bytes).
    pub fn byte_len(&self) -> u64 {
        Self::len_of(self.params.len())
    }

    /// The state's bytes (see the type's docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(8 * self.params.len());
        self.for_each_block(|block| bytes.extend_from_slice(block));
        bytes
    }

    /// A reader of the state's bytes where they lie, which seeks too: what
    /// [`to_bytes`](Self::to_bytes) returns, without the copy.
    ///
    /// ```
    /// use std::io::{Read, Seek, SeekFrom};
    /// use p2ptrain_node::chain::ChainState;
    ///
    /// let state = ChainState::genesis(vec![0.5, -2.0, 7.25]);
    /// let mut reader = state.reader();
    /// reader.seek(SeekFrom::Start(10))?;
    /// let mut rest = Vec::new();
    /// reader.read_to_end(&mut rest)?;
    /// assert_eq!(rest, state.to_bytes()[10..]);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn reader(&self) -> StateReader<'_> {
        StateReader { state: self, at: 0 }
    }

    /// Writes the state's bytes to `out`, a block at a time.
    ///
    /// # Errors
    ///
    /// What `out` returns.
    pub fn write_to(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let mut result = Ok(());
        self.for_each_block(|block| {
            if result.is_ok() {
                result = out.write_all(block);
            }
        });
        result
    }

    /// Calls `f` on the state's bytes in order, a block at a time.
    fn for_each_block(&self, mut f: impl FnMut(&[u8])) {
        for values in [&self.params, &self.momentum] {
            for_each_byte_block(values, &mut f);
        }
    }

    /// Reads a state of `len` parameters from its bytes.
    ///
    /// # Errors
    ///
    /// [`ChainError::StateLength`] unless `bytes` is exactly `8 × len` long.
    pub fn from_bytes(bytes: &[u8], len: usize) -> Result<Self, ChainError> {
        let (expected, found) = (Self::len_of(len), bytes.len() as u64);
        if found != expected {
            return Err(ChainError::StateLength { expected, found });
        }
        let (params, momentum) = bytes.split_at(4 * len);
        Ok(Self {
            params: params.chunks_exact(4).map(le_value).collect(),
            momentum: momentum.chunks_exact(4).map(le_value).collect(),
        })
    }

    /// Reads a state of `len` parameters from its bytes in `input`, a
    /// block at a time straight into the state's buffers: no copy of the
    /// bytes is held, so a checkpoint read takes the state's memory and no
    /// more.
    ///
    /// # Errors
    ///
    /// What `input` returns; [`std::io::ErrorKind::UnexpectedEof`] when it
    /// ends before `8 × len` bytes.
    pub fn read_from(input: &mut dyn std::io::Read, len: usize) -> std::io::Result<Self> {
        let mut state = Self {
            params: vec![0.0; len],
            momentum: vec![0.0; len],
        };
        let mut block = vec![0u8; 4 * BYTE_BLOCK_VALUES];
        for values in [&mut state.params, &mut state.momentum] {
            for values in values.chunks_mut(BYTE_BLOCK_VALUES) {
                let bytes = &mut block[..4 * values.len()];
                input.read_exact(bytes)?;
                decode_into(bytes, values);
            }
        }
        Ok(state)
    }

    /// Puts `bytes`, the state's bytes (see the type's docs) from `offset`
    /// on, in place. Returns `false`, and writes nothing, unless they are
    /// whole values that lie within the state.
    pub(crate) fn fill_stream_bytes(&mut self, offset: u64, bytes: &[u8]) -> bool {
        let len = self.params.len();
        let first = usize::try_from(offset / 4).unwrap_or(usize::MAX);
        let count = bytes.len() / 4;
        let whole = offset.is_multiple_of(4) && bytes.len().is_multiple_of(4);
        if !whole || first.saturating_add(count) > 2 * len {
            return false;
        }
        let in_params = len.saturating_sub(first).min(count);
        let (to_params, to_momentum) = bytes.split_at(4 * in_params);
        if in_params > 0 {
            decode_into(to_params, &mut self.params[first..first + in_params]);
        }
        let momentum_first = first.max(len) - len;
        let momentum = &mut self.momentum[momentum_first..momentum_first + count - in_params];
        decode_into(to_momentum, momentum);
        true
    }

    /// The checkpoint hash: blake3 of [`to_bytes`](Self::to_bytes), on
    /// the current rayon pool.
    pub fn hash(&self) -> Digest {
        let mut hasher = blake3::Hasher::new();
        self.for_each_block(|block| {
            hasher.update_rayon(block);
        });
        Digest::from_bytes(*hasher.finalize().as_bytes())
    }

    /// The bytes of [`to_bytes`](Self::to_bytes) in `range`, whose ends
    /// fall between values (multiples of 4); cut short where the range
    /// runs past the state.
    pub(crate) fn stream_bytes(&self, range: Range<u64>) -> Vec<u8> {
        let len = self.params.len();
        let value = |i: usize| {
            if i < len {
                self.params.get(i)
            } else {
                self.momentum.get(i - len)
            }
        };
        let first = usize::try_from(range.start / 4).unwrap_or(usize::MAX);
        let last = usize::try_from(range.end / 4).unwrap_or(usize::MAX);
        (first..last)
            .map_while(value)
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }
}

/// Values converted from bytes, or to them, at a time.
const BYTE_BLOCK_VALUES: usize = 16 * 1024;

/// The value of four little-endian bytes.
fn le_value(bytes: &[u8]) -> f32 {
    f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// Writes into `values` the little-endian values of `bytes` (four bytes
/// each, as many as `values`).
fn decode_into(bytes: &[u8], values: &mut [f32]) {
    for (value, bytes) in values.iter_mut().zip(bytes.chunks_exact(4)) {
        *value = le_value(bytes);
    }
}

/// Calls `f` on the little-endian bytes of `values`, in order, a block at a
/// time: `values`' own memory on a little-endian machine, a converted copy
/// elsewhere.
fn for_each_byte_block(values: &[f32], f: &mut impl FnMut(&[u8])) {
    if cfg!(target_endian = "little") {
        f(bytemuck::cast_slice(values));
        return;
    }
    let mut block = Vec::with_capacity(4 * BYTE_BLOCK_VALUES);
    for chunk in values.chunks(BYTE_BLOCK_VALUES) {
        block.clear();
        block.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
        f(&block);
    }
}

/// Reads a [`ChainState`]'s bytes in place: see [`ChainState::reader`].
#[derive(Debug)]
pub struct StateReader<'a> {
    state: &'a ChainState,
    /// The next byte read.
    at: u64,
}

impl std::io::Read for StateReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let params_len = 4 * self.state.params.len() as u64;
        let read = if self.at < params_len {
            copy_le_bytes(&self.state.params, self.at, out)
        } else {
            copy_le_bytes(&self.state.momentum, self.at - params_len, out)
        };
        self.at += read as u64;
        Ok(read)
    }
}

impl std::io::Seek for StateReader<'_> {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        use std::io::SeekFrom;
        let at = match to {
            SeekFrom::Start(at) => Some(at),
            SeekFrom::End(by) => self.state.byte_len().checked_add_signed(by),
            SeekFrom::Current(by) => self.at.checked_add_signed(by),
        };
        self.at = at.ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a seek before the first byte",
            )
        })?;
        Ok(self.at)
    }
}

/// Copies the little-endian bytes of `values` from byte `from` into `out`,
/// as many as fit; how many (0 from the end on).
fn copy_le_bytes(values: &[f32], from: u64, out: &mut [u8]) -> usize {
    let len = 4 * values.len();
    let Some(from) = usize::try_from(from).ok().filter(|from| *from < len) else {
        return 0;
    };
    let copied = out.len().min(len - from);
    if cfg!(target_endian = "little") {
        let bytes: &[u8] = bytemuck::cast_slice(values);
        out[..copied].copy_from_slice(&bytes[from..from + copied]);
    } else {
        for (i, byte) in out[..copied].iter_mut().enumerate() {
            let at = from + i;
            *byte = values[at / 4].to_le_bytes()[at % 4];
        }
    }
    copied
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state whose values all differ, of `len` parameters.
    fn varied(len: usize) -> ChainState {
        ChainState {
            params: (0..len).map(|i| i as f32 * 0.5 - 3.0).collect(),
            momentum: (0..len).map(|i| -(i as f32) * 1e-3).collect(),
        }
    }

    #[test]
    fn the_reader_reads_the_bytes_from_anywhere_in_any_pieces() {
        use std::io::{Read, Seek, SeekFrom};
        let state = varied(1_000);
        let bytes = state.to_bytes();
        let total = bytes.len() as u64;
        for (from, piece) in [
            (0, 1),
            (0, 7),
            (3_998, 5),
            (4_000, 3),
            (7_990, 64),
            (5, 8_000),
        ] {
            let mut reader = state.reader();
            assert_eq!(reader.seek(SeekFrom::Start(from)).unwrap(), from);
            let mut read = Vec::new();
            let mut buffer = vec![0; piece];
            loop {
                let n = reader.read(&mut buffer).unwrap();
                if n == 0 {
                    break;
                }
                read.extend_from_slice(&buffer[..n]);
            }
            assert_eq!(
                read,
                bytes[from as usize..],
                "from {from} in pieces of {piece}"
            );
        }
        let mut reader = state.reader();
        assert_eq!(reader.seek(SeekFrom::End(-3)).unwrap(), total - 3);
        assert_eq!(reader.seek(SeekFrom::Current(1)).unwrap(), total - 2);
        assert!(reader.seek(SeekFrom::Current(-(total as i64))).is_err());
        // Past the end reads nothing.
        reader.seek(SeekFrom::Start(total + 10)).unwrap();
        assert_eq!(reader.read(&mut [0; 4]).unwrap(), 0);
    }

    #[test]
    fn a_state_read_from_its_bytes_is_the_state() {
        // Blocks of the read: fewer values than one, and several, the last
        // short.
        for len in [0, 3, 2 * BYTE_BLOCK_VALUES + 5] {
            let state = varied(len);
            let bytes = state.to_bytes();
            let read = ChainState::read_from(&mut &bytes[..], len).unwrap();
            assert_eq!(read, state, "{len}");
            assert_eq!(ChainState::from_bytes(&bytes, len).unwrap(), state);
            if let Some(short) = bytes.len().checked_sub(1) {
                let error = ChainState::read_from(&mut &bytes[..short], len)
                    .map(drop)
                    .unwrap_err();
                assert_eq!(error.kind(), std::io::ErrorKind::UnexpectedEof);
            }
        }
    }

    #[test]
    fn stream_bytes_fill_both_halves_in_place_and_nothing_else() {
        let state = varied(10);
        let bytes = state.to_bytes();
        let mut filled = ChainState::genesis(vec![0.0; 10]);
        // Slices that end in the parameters, straddle into the momentum, and
        // lie in the momentum, in any order.
        for range in [48..80, 0..24, 24..48] {
            let offset = range.start as u64;
            assert!(filled.fill_stream_bytes(offset, &bytes[range]));
        }
        assert_eq!(filled, state);
        let before = filled.clone();
        // Not whole values, or past the end: refused, nothing written.
        assert!(!filled.fill_stream_bytes(2, &[0; 4]));
        assert!(!filled.fill_stream_bytes(0, &[0; 6]));
        assert!(!filled.fill_stream_bytes(76, &[0; 8]));
        assert!(!filled.fill_stream_bytes(u64::MAX - 3, &[0; 4]));
        assert_eq!(filled, before);
    }
}
