//! The shared checkpoint of a chain and the outer step that moves it.

use p2ptrain_kernels::{aggregate, AggregateInput, Payload};
use p2ptrain_protocol::{Digest, OuterOptimizer};
use p2ptrain_trainer::optim::OuterNesterov;

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

/// One contribution as the outer step takes it.
#[derive(Debug, Clone, Copy)]
pub struct StepInput<'a> {
    /// The contribution's id: inputs are summed in ascending id order.
    pub id: Digest,
    /// Its weight: the tokens it claims.
    pub tokens: u64,
    /// The encoded payload.
    pub payload: &'a [u8],
}

impl<'a> From<&'a crate::engine::Accepted> for StepInput<'a> {
    fn from(accepted: &'a crate::engine::Accepted) -> Self {
        Self {
            id: accepted.id,
            tokens: accepted.tokens,
            payload: &accepted.payload,
        }
    }
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

    /// Calls `f` on the state's bytes in order, a block at a time.
    fn for_each_block(&self, mut f: impl FnMut(&[u8])) {
        const BLOCK: usize = 16 * 1024;
        let mut block = Vec::with_capacity(4 * BLOCK);
        for values in [&self.params, &self.momentum] {
            for chunk in values.chunks(BLOCK) {
                block.clear();
                block.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
                f(&block);
            }
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

    /// The checkpoint hash: blake3 of [`to_bytes`](Self::to_bytes).
    pub fn hash(&self) -> Digest {
        let mut hasher = blake3::Hasher::new();
        self.for_each_block(|block| {
            hasher.update(block);
        });
        Digest::from_bytes(*hasher.finalize().as_bytes())
    }

    /// The next state: the token-weighted mean of the inputs' payloads (in
    /// ascending id order), then the outer Nesterov step on the CPU in f32.
    /// With no inputs the state is unchanged.
    ///
    /// # Errors
    ///
    /// [`ChainError`] when a payload does not decode or does not fit.
    pub fn outer_step(
        &self,
        inputs: &[StepInput<'_>],
        outer: &OuterOptimizer,
    ) -> Result<Self, ChainError> {
        let mut next = self.clone();
        if inputs.is_empty() {
            return Ok(next);
        }
        let payloads = inputs
            .iter()
            .map(|c| Payload::decode(c.payload))
            .collect::<Result<Vec<_>, _>>()?;
        let weighted: Vec<AggregateInput<'_>> = inputs
            .iter()
            .zip(&payloads)
            .map(|(c, payload)| AggregateInput {
                key: c.id,
                payload,
                weight: c.tokens as f32,
            })
            .collect();
        let mean = aggregate(&weighted)?;
        let momentum = std::mem::take(&mut next.momentum);
        let mut step = OuterNesterov::from_state(outer.lr, outer.momentum, momentum);
        step.step(&mut next.params, &mean)?;
        next.momentum = step.into_momentum();
        Ok(next)
    }
}
