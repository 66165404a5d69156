//! The shared checkpoint of a chain and the outer step that moves it.

use p2ptrain_kernels::{AggregateInput, KernelError, Payload, WeightedMean};
use p2ptrain_protocol::{Digest, OuterOptimizer};
use p2ptrain_trainer::optim::OuterNesterov;
use p2ptrain_trainer::TrainerError;
use rayon::prelude::*;

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

/// Memory an outer step may reuse: a state no longer needed.
#[derive(Debug, Default)]
pub struct Buffers {
    /// A state whose buffers the next step may overwrite.
    pub spare: Option<ChainState>,
}

impl Buffers {
    /// The spare if it holds `len` parameters, else a new zero state.
    fn take_state(&mut self, len: usize) -> ChainState {
        match self.spare.take() {
            Some(spare) if spare.params.len() == len && spare.momentum.len() == len => spare,
            _ => ChainState::genesis(vec![0.0; len]),
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

    /// The next state and its hash: the token-weighted mean of the inputs'
    /// payloads (in ascending id order), then the outer Nesterov step on
    /// the CPU in f32. With no inputs the state is unchanged.
    ///
    /// # Errors
    ///
    /// [`ChainError`] when a payload does not decode or does not fit.
    pub fn outer_step(
        &self,
        inputs: &[StepInput<'_>],
        outer: &OuterOptimizer,
    ) -> Result<(Self, Digest), ChainError> {
        self.outer_step_reusing(inputs, outer, &mut Buffers::default())
    }

    /// [`outer_step`](Self::outer_step), writing into `buffers`' spare
    /// state instead of fresh memory when it fits (on a large model,
    /// first-touch page faults on fresh buffers cost more than the step).
    ///
    /// The step is one pass over the state, blocks in parallel on the
    /// current rayon pool: each block's mean, then its Nesterov step from
    /// the base (only read) into the next state; then the hash, also in
    /// parallel. The result is the same bits as taking the whole mean and
    /// stepping a copy, whatever the number of threads.
    ///
    /// # Errors
    ///
    /// As [`outer_step`](Self::outer_step). The spare is kept on error.
    pub fn outer_step_reusing(
        &self,
        inputs: &[StepInput<'_>],
        outer: &OuterOptimizer,
        buffers: &mut Buffers,
    ) -> Result<(Self, Digest), ChainError> {
        let mut next = buffers.take_state(self.params.len());
        if inputs.is_empty() {
            next.params.copy_from_slice(&self.params);
            next.momentum.copy_from_slice(&self.momentum);
            let hash = next.hash();
            return Ok((next, hash));
        }
        match self.step_into(inputs, outer, &mut next) {
            Ok(hash) => Ok((next, hash)),
            Err(e) => {
                buffers.spare = Some(next);
                Err(e)
            }
        }
    }

    /// Writes the outer step from `self` into `next` (as long as `self`),
    /// block by block in parallel on the current rayon pool, and returns
    /// its hash.
    ///
    /// The mean is `+0.0` at every entry no payload keeps (all but a few
    /// percent), so each block is first stepped whole with a mean of
    /// `+0.0`, a pass the compiler vectorizes, and then the entries the
    /// payloads keep are stepped again from the base with their mean while
    /// the block is still in cache. No dense mean is written or read.
    fn step_into(
        &self,
        inputs: &[StepInput<'_>],
        outer: &OuterOptimizer,
        next: &mut Self,
    ) -> Result<Digest, ChainError> {
        let payloads = inputs
            .iter()
            .map(|c| Payload::decode(c.payload))
            .collect::<Result<Vec<_>, _>>()?;
        let mean = WeightedMean::new(&weighted(inputs, &payloads))?;
        let len = self.params.len();
        if mean.len() != len {
            return Err(KernelError::LengthMismatch {
                expected: len,
                found: mean.len(),
            }
            .into());
        }
        let block_len = mean.chunk_len() * (STEP_BLOCK / mean.chunk_len()).max(1);
        let step = OuterNesterov::new(outer.lr, outer.momentum, 0);
        let from = self.params.par_chunks(block_len);
        let from = from.zip(self.momentum.par_chunks(block_len));
        let to = next.params.par_chunks_mut(block_len);
        let to = to.zip(next.momentum.par_chunks_mut(block_len));
        from.zip(to).enumerate().try_for_each_init(
            || (vec![0.0f32; block_len], Vec::new()),
            |(scratch, kept), (b, (from, to))| -> Result<(), ChainError> {
                let mean_block = &mut scratch[..from.0.len()];
                kept.clear();
                mean.write_block_sparse(b * block_len, mean_block, kept)?;
                step_without_mean(&step, from, (&mut *to.0, &mut *to.1));
                let stepped = step_kept(&step, from, mean_block, kept, to);
                // The scratch is all zeros again for the next block.
                for &i in kept.iter() {
                    mean_block[i] = 0.0;
                }
                stepped
            },
        )?;
        Ok(next.hash())
    }
}

/// Writes into `to` the step of every entry of `from` with a mean of
/// `+0.0`.
fn step_without_mean(
    step: &OuterNesterov,
    (params, momentum): (&[f32], &[f32]),
    (next_params, next_momentum): (&mut [f32], &mut [f32]),
) {
    let from = params.iter().zip(momentum);
    let to = next_params.iter_mut().zip(next_momentum);
    for ((&p, &m), (next_p, next_m)) in from.zip(to) {
        (*next_p, *next_m) = step.step_entry(p, m, 0.0);
    }
}

/// Writes into `to` the step of the entries of `from` at the `kept`
/// offsets, with their mean in `mean`.
fn step_kept(
    step: &OuterNesterov,
    (params, momentum): (&[f32], &[f32]),
    mean: &[f32],
    kept: &[usize],
    (next_params, next_momentum): (&mut [f32], &mut [f32]),
) -> Result<(), ChainError> {
    for &i in kept {
        let delta = mean[i];
        if !delta.is_finite() {
            return Err(TrainerError::NonFinite("outer pseudo-gradient").into());
        }
        (next_params[i], next_momentum[i]) = step.step_entry(params[i], momentum[i], delta);
    }
    Ok(())
}

/// The inputs as the mean takes them: each decoded payload (`payloads`,
/// in the inputs' order) weighted by its tokens.
fn weighted<'a>(inputs: &[StepInput<'_>], payloads: &'a [Payload]) -> Vec<AggregateInput<'a>> {
    inputs
        .iter()
        .zip(payloads)
        .map(|(c, payload)| AggregateInput {
            key: c.id,
            payload,
            weight: c.tokens as f32,
        })
        .collect()
}

/// Entries the outer step takes at a time (rounded to whole chunks): the
/// block's mean, base and next state stay in a core's L2 cache.
const STEP_BLOCK: usize = 16 * 1024;

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

#[cfg(test)]
mod tests {
    use p2ptrain_kernels::compress;
    use p2ptrain_protocol::CompressionSettings;

    use super::*;

    /// The outer step as its definition reads: the whole mean, the
    /// Nesterov step on a copy, then the hash of the copy.
    fn stepped_by_definition(
        state: &ChainState,
        inputs: &[StepInput<'_>],
        outer: &OuterOptimizer,
    ) -> (ChainState, Digest) {
        let payloads: Vec<Payload> = inputs
            .iter()
            .map(|c| Payload::decode(c.payload).unwrap())
            .collect();
        let mean = p2ptrain_kernels::aggregate(&weighted(inputs, &payloads)).unwrap();
        let mut next = state.clone();
        let mut step = OuterNesterov::from_state(outer.lr, outer.momentum, next.momentum);
        step.step(&mut next.params, &mean).unwrap();
        next.momentum = step.into_momentum();
        let hash = Digest::of(&next.to_bytes());
        (next, hash)
    }

    #[test]
    fn the_fused_step_is_the_step_by_definition_bit_for_bit() {
        // Three blocks of 64 chunks, the last one short.
        let len = 40_000;
        let outer = OuterOptimizer {
            lr: 0.7,
            momentum: 0.9,
            nesterov: true,
        };
        let settings = CompressionSettings {
            chunk_len: 256,
            ..CompressionSettings::default()
        };
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
        let mut start = ChainState::genesis((0..len).map(|i| i as f32 * 1e-3).collect());
        // Momentum of both signs, and negative zeros, which a step with a
        // mean of -0.0 instead of +0.0 would keep.
        for (i, m) in start.momentum.iter_mut().enumerate() {
            *m = [-0.0, 0.5, -0.25][i % 3];
        }
        let mut buffers = Buffers::default();
        let mut expected = start.clone();
        let mut reused = start;
        for round in 0..3 {
            let (by_definition, expected_hash) =
                stepped_by_definition(&expected, &inputs[..=round], &outer);
            expected = by_definition;
            let (next, hash) = reused
                .outer_step_reusing(&inputs[..=round], &outer, &mut buffers)
                .unwrap();
            assert_eq!(hash, expected_hash, "round {round}");
            assert_eq!(hash, next.hash(), "round {round}");
            assert_eq!(next, expected, "round {round}");
            buffers.spare = Some(std::mem::replace(&mut reused, next));
        }
        // Any number of threads gives the same bits.
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let (_, hash) = pool.install(|| reused.outer_step(&inputs, &outer).unwrap());
            let (_, expected_hash) = stepped_by_definition(&reused, &inputs, &outer);
            assert_eq!(hash, expected_hash, "{threads} threads");
        }
        // A spare of another size is not used; no inputs leave the state.
        buffers.spare = Some(ChainState::genesis(vec![1.0; 3]));
        let (next, hash) = reused
            .outer_step_reusing(&inputs, &outer, &mut buffers)
            .unwrap();
        assert_eq!(hash, reused.outer_step(&inputs, &outer).unwrap().1);
        assert_eq!(hash, next.hash());
        let (same, same_hash) = reused.outer_step(&[], &outer).unwrap();
        assert_eq!((same_hash, &same), (reused.hash(), &reused));
    }

    #[test]
    fn a_payload_of_another_length_is_refused_and_the_spare_kept() {
        let settings = CompressionSettings::default();
        let payload = compress(&[1.0; 10], &mut [0.0; 10], &settings)
            .unwrap()
            .encode()
            .unwrap();
        let input = StepInput {
            id: Digest::of(b"a"),
            tokens: 1,
            payload: &payload,
        };
        let outer = p2ptrain_protocol::RunManifest::default().outer;
        let mut buffers = Buffers {
            spare: Some(ChainState::genesis(vec![0.0; 11])),
        };
        let state = ChainState::genesis(vec![0.5; 11]);
        assert!(state
            .outer_step_reusing(&[input], &outer, &mut buffers)
            .is_err());
        assert!(buffers.spare.is_some());
    }
}
