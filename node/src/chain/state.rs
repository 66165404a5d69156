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

    /// The state's bytes (see the type's docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(8 * self.params.len());
        self.for_each_block(|block| bytes.extend_from_slice(block));
        bytes
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
        if bytes.len() != len.saturating_mul(8) {
            return Err(ChainError::StateLength {
                expected: len.saturating_mul(8),
                found: bytes.len(),
            });
        }
        let floats: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let (params, momentum) = floats.split_at(len);
        Ok(Self {
            params: params.to_vec(),
            momentum: momentum.to_vec(),
        })
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

/// Calls `f` on the little-endian bytes of `values`, in order, a block at a
/// time: `values`' own memory on a little-endian machine, a converted copy
/// elsewhere.
fn for_each_byte_block(values: &[f32], f: &mut impl FnMut(&[u8])) {
    if cfg!(target_endian = "little") {
        f(bytemuck::cast_slice(values));
        return;
    }
    const BLOCK: usize = 16 * 1024;
    let mut block = Vec::with_capacity(4 * BLOCK);
    for chunk in values.chunks(BLOCK) {
        block.clear();
        block.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
        f(&block);
    }
}
