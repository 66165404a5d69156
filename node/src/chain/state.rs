//! The shared checkpoint of a chain and the outer step that moves it.

use p2ptrain_kernels::{aggregate_into, AggregateInput, Payload};
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

/// Memory an outer step may reuse: a state no longer needed and the
/// buffer of the mean.
#[derive(Debug, Default)]
pub struct Buffers {
    /// A state whose buffers the next step may overwrite.
    pub spare: Option<ChainState>,
    /// The weighted mean of a step's payloads.
    pub mean: Vec<f32>,
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
        self.outer_step_reusing(inputs, outer, &mut Buffers::default())
    }

    /// [`outer_step`](Self::outer_step), writing into `buffers`' spare
    /// state and mean instead of fresh memory when they fit (on a large
    /// model, first-touch page faults on fresh buffers cost more than the
    /// step). The result is the same bit for bit.
    ///
    /// # Errors
    ///
    /// As [`outer_step`](Self::outer_step).
    pub fn outer_step_reusing(
        &self,
        inputs: &[StepInput<'_>],
        outer: &OuterOptimizer,
        buffers: &mut Buffers,
    ) -> Result<Self, ChainError> {
        let mut next = match buffers.spare.take() {
            Some(mut spare) if spare.params.len() == self.params.len() => {
                spare.params.copy_from_slice(&self.params);
                spare.momentum.copy_from_slice(&self.momentum);
                spare
            }
            _ => self.clone(),
        };
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
        buffers.mean.resize(self.params.len(), 0.0);
        aggregate_into(&weighted, &mut buffers.mean)?;
        let momentum = std::mem::take(&mut next.momentum);
        let mut step = OuterNesterov::from_state(outer.lr, outer.momentum, momentum);
        step.step(&mut next.params, &buffers.mean)?;
        next.momentum = step.into_momentum();
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use p2ptrain_kernels::compress;
    use p2ptrain_protocol::CompressionSettings;

    use super::*;

    #[test]
    fn a_step_into_reused_buffers_equals_a_fresh_one_bit_for_bit() {
        let len = 10_000;
        let outer = OuterOptimizer {
            lr: 0.7,
            momentum: 0.9,
            nesterov: true,
        };
        let settings = CompressionSettings::default();
        let payloads: Vec<Vec<u8>> = (0..3)
            .map(|k| {
                let delta: Vec<f32> = (0..len)
                    .map(|i| ((i * (k + 3)) % 17) as f32 - 8.0)
                    .collect();
                compress(&delta, &mut vec![0.0; len], &settings)
                    .unwrap()
                    .encode()
                    .unwrap()
            })
            .collect();
        let inputs: Vec<StepInput<'_>> = payloads
            .iter()
            .enumerate()
            .map(|(k, payload)| StepInput {
                id: Digest::of(&[k as u8]),
                tokens: 100 + k as u64,
                payload,
            })
            .collect();
        let start = ChainState::genesis((0..len).map(|i| i as f32 * 1e-3).collect());
        let mut buffers = Buffers::default();
        let mut fresh = start.clone();
        let mut reused = start;
        for round in 0..3 {
            fresh = fresh.outer_step(&inputs[..=round], &outer).unwrap();
            let next = reused
                .outer_step_reusing(&inputs[..=round], &outer, &mut buffers)
                .unwrap();
            buffers.spare = Some(std::mem::replace(&mut reused, next));
            assert_eq!(reused.hash(), fresh.hash(), "round {round}");
        }
        // A spare of another size is not used.
        buffers.spare = Some(ChainState::genesis(vec![1.0; 3]));
        let next = reused
            .outer_step_reusing(&inputs, &outer, &mut buffers)
            .unwrap();
        assert_eq!(
            next.hash(),
            reused.outer_step(&inputs, &outer).unwrap().hash()
        );
    }
}
