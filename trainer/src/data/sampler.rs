//! [`Sampler`]: seeded random windows of a token stream, as [`Batch`]es.

use super::rng::SplitMix64;
use super::DataError;

/// `batch_size` windows of `context_len` tokens, row-major: row `r` is
/// `inputs[r * context_len..(r + 1) * context_len]`, and each target is the
/// token that follows its input in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Batch {
    /// Token ids, `batch_size × context_len`.
    pub inputs: Vec<u32>,
    /// The next token after each input: `inputs` shifted left by one within
    /// each window, plus the token after the window.
    pub targets: Vec<u32>,
    /// Rows.
    pub batch_size: usize,
    /// Tokens per row.
    pub context_len: usize,
}

/// Draws batches of random windows from one token stream, each window start
/// uniform over every position that leaves room for `context_len + 1`
/// tokens. The same stream and seed give the same batches, call for call.
#[derive(Debug, Clone)]
pub struct Sampler {
    tokens: Vec<u8>,
    rng: SplitMix64,
}

impl Sampler {
    /// A sampler over `tokens` (one token per byte), seeded with `seed`.
    /// Peers sampling the same stream should each use their own seed.
    pub fn new(tokens: impl Into<Vec<u8>>, seed: u64) -> Self {
        Self {
            tokens: tokens.into(),
            rng: SplitMix64::new(seed),
        }
    }

    /// Whether a stream of `found` tokens holds one window of `context_len`
    /// tokens and the target after it, as [`next_batch`](Self::next_batch)
    /// needs.
    ///
    /// # Errors
    ///
    /// [`DataError::TooShort`] if it does not.
    pub fn check_fits(found: usize, context_len: usize) -> Result<(), DataError> {
        let needed = context_len.saturating_add(1);
        if found < needed {
            return Err(DataError::TooShort { needed, found });
        }
        Ok(())
    }

    /// The next batch: `batch_size` windows, each starting at a position drawn
    /// uniformly from `0..=len - context_len - 1`, in row order.
    ///
    /// # Errors
    ///
    /// [`DataError::TooShort`] if the stream holds fewer than
    /// `context_len + 1` tokens; the sampler is left unchanged.
    pub fn next_batch(
        &mut self,
        batch_size: usize,
        context_len: usize,
    ) -> Result<Batch, DataError> {
        let found = self.tokens.len();
        Self::check_fits(found, context_len)?;
        let starts = found - context_len;
        let cells = batch_size.saturating_mul(context_len);
        let mut inputs = Vec::with_capacity(cells);
        let mut targets = Vec::with_capacity(cells);
        for _ in 0..batch_size {
            let start = self.rng.below_usize(starts);
            let window = &self.tokens[start..=start + context_len];
            inputs.extend(window[..context_len].iter().map(|&t| u32::from(t)));
            targets.extend(window[1..].iter().map(|&t| u32::from(t)));
        }
        Ok(Batch {
            inputs,
            targets,
            batch_size,
            context_len,
        })
    }
}
