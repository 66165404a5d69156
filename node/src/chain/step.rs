//! The outer step: the token-weighted mean of a round's payloads and the
//! Nesterov step that moves the shared checkpoint, with the next
//! checkpoint's hash taken as it is written.

use blake3::hazmat::ChainingValue;
use p2ptrain_kernels::{AggregateInput, KernelError, Payload, WeightedMean};
use p2ptrain_protocol::{Digest, OuterOptimizer};
use p2ptrain_trainer::optim::OuterNesterov;
use p2ptrain_trainer::TrainerError;
use rayon::prelude::*;

use super::tree_hash::{group_value, GroupHashes, GROUP_LEN};
use super::{ChainError, ChainState};

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

    /// Writes the outer step from `self` into `next` (as long as `self`)
    /// and returns its hash.
    ///
    /// The state is cut into spans of whole blocks, stepped in parallel on
    /// the current rayon pool, a block at a time within a span. The mean
    /// is `+0.0` at every entry no payload keeps (all but a few percent),
    /// so each block is first stepped whole with a mean of `+0.0`, a pass
    /// the compiler vectorizes, and then the entries the payloads keep are
    /// stepped again from the base with their mean while the block is
    /// still in cache. No dense mean is written or read. Each group of the
    /// next state's bytes ([`GroupHashes`]) is hashed as soon as the span
    /// has written all of it, also from cache; the few that straddle two
    /// spans, or the parameters and the momentum, are hashed at the end.
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
        let blocks = len.div_ceil(block_len).max(1);
        let spans = blocks.min(SPANS_PER_THREAD * rayon::current_num_threads());
        let span_len = blocks.div_ceil(spans) * block_len;
        let stream_len = Self::len_of(len);
        let groups = GroupHashes::new(stream_len).filter(|_| cfg!(target_endian = "little"));
        let walk = Walk {
            step: OuterNesterov::new(outer.lr, outer.momentum, 0),
            mean: &mean,
            block_len,
            momentum_offset: 4 * len as u64,
            stream_len: groups.as_ref().map(|_| stream_len),
        };
        let from = self.params.par_chunks(span_len);
        let from = from.zip(self.momentum.par_chunks(span_len));
        let to = next.params.par_chunks_mut(span_len);
        let to = to.zip(next.momentum.par_chunks_mut(span_len));
        let hashed = from
            .zip(to)
            .enumerate()
            .map(|(s, (from, to))| walk.span(s * span_len, from, to))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(mut groups) = groups else {
            return Ok(next.hash());
        };
        for (index, value) in hashed.into_iter().flatten() {
            groups.insert(index, value);
        }
        Ok(groups.root(|range| next.stream_bytes(range)))
    }
}

/// One outer step's walk over the state, a span at a time.
struct Walk<'a> {
    step: OuterNesterov,
    mean: &'a WeightedMean<'a>,
    block_len: usize,
    /// Where the momentum's bytes start in the state's bytes.
    momentum_offset: u64,
    /// The length of the state's bytes, when its groups are hashed as
    /// they are written.
    stream_len: Option<u64>,
}

impl Walk<'_> {
    /// Steps the span of entries from `start`, block by block, and returns
    /// the chaining values of the groups that lie wholly in the bytes it
    /// wrote, each hashed once its last block is written.
    fn span(
        &self,
        start: usize,
        from: (&[f32], &[f32]),
        (params, momentum): (&mut [f32], &mut [f32]),
    ) -> Result<Vec<(usize, ChainingValue)>, ChainError> {
        let offsets = (4 * start as u64, self.momentum_offset + 4 * start as u64);
        let mut next_group = (
            GroupHashes::first_at_or_after(offsets.0),
            GroupHashes::first_at_or_after(offsets.1),
        );
        let mut hashed = Vec::new();
        let mut mean_block = vec![0.0f32; self.block_len];
        let mut kept = Vec::new();
        let mut done = 0;
        while done < from.0.len() {
            let end = (done + self.block_len).min(from.0.len());
            let block = &mut mean_block[..end - done];
            kept.clear();
            self.mean
                .write_block_sparse(start + done, block, &mut kept)?;
            let base = (&from.0[done..end], &from.1[done..end]);
            let to = (&mut params[done..end], &mut momentum[done..end]);
            step_without_mean(&self.step, base, (&mut *to.0, &mut *to.1));
            let stepped = step_kept(&self.step, base, block, &kept, to);
            // The scratch is all zeros again for the next block.
            for &i in &kept {
                block[i] = 0.0;
            }
            stepped?;
            done = end;
            if let Some(stream_len) = self.stream_len {
                let written = 4 * done as u64;
                let mut hash = |values: &[f32], offset: u64, next: &mut usize| {
                    let bytes: &[u8] = bytemuck::cast_slice(values);
                    hash_written(
                        &bytes[..written as usize],
                        offset,
                        stream_len,
                        next,
                        &mut hashed,
                    );
                };
                hash(params, offsets.0, &mut next_group.0);
                hash(momentum, offsets.1, &mut next_group.1);
            }
        }
        Ok(hashed)
    }
}

/// Hashes the groups from `*next` on that lie wholly in `written`, bytes
/// that start at `offset` in a stream of `stream_len`, and moves `*next`
/// past them.
fn hash_written(
    written: &[u8],
    offset: u64,
    stream_len: u64,
    next: &mut usize,
    hashed: &mut Vec<(usize, ChainingValue)>,
) {
    loop {
        let start = *next as u64 * GROUP_LEN;
        let end = (start + GROUP_LEN).min(stream_len);
        if start < offset || end <= start || end > offset + written.len() as u64 {
            return;
        }
        let bytes = &written[(start - offset) as usize..(end - offset) as usize];
        hashed.push((*next, group_value(start, bytes)));
        *next += 1;
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

/// Spans of the state per thread in an outer step: enough for the threads
/// to share the work evenly, few enough that the groups straddling two
/// spans, hashed at the end, are few.
const SPANS_PER_THREAD: usize = 4;

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
    fn the_hash_taken_while_stepping_is_the_hash_of_the_next_state() {
        let outer = OuterOptimizer {
            lr: 0.5,
            momentum: 0.8,
            nesterov: true,
        };
        // Lengths where the momentum starts inside a chunk and inside a
        // group, exactly on a group, and a state of one group or less;
        // blocks of whole groups and blocks that end inside chunks.
        for len in [100, 8_192, 16_384, 16_385, 70_001, 262_144] {
            for chunk_len in [256, 3_000] {
                let settings = CompressionSettings {
                    chunk_len,
                    density: 0.05,
                    ..CompressionSettings::default()
                };
                let delta: Vec<f32> = (0..len).map(|i| ((i % 13) as f32 - 6.0) * 0.1).collect();
                let payload = compress(&delta, &mut vec![0.0; len], &settings)
                    .unwrap()
                    .encode()
                    .unwrap();
                let inputs = [StepInput {
                    id: Digest::of(b"a"),
                    tokens: 7,
                    payload: &payload,
                }];
                let mut start = ChainState::genesis((0..len).map(|i| i as f32 * 1e-4).collect());
                start
                    .momentum
                    .iter_mut()
                    .enumerate()
                    .for_each(|(i, m)| *m = (i % 5) as f32);
                let (expected, expected_hash) = stepped_by_definition(&start, &inputs, &outer);
                for threads in [1, 2, 3] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let (next, hash) = pool.install(|| start.outer_step(&inputs, &outer).unwrap());
                    let case = format!("{len} entries, chunks of {chunk_len}, {threads} threads");
                    assert_eq!(next, expected, "{case}");
                    assert_eq!(hash, expected_hash, "{case}");
                }
            }
        }
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
