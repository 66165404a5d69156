//! The whole model's training pass on the CPU — forward, loss and backward —
//! on flat buffers, without candle's autograd.
//!
//! Candle's backward pass gives every node of the graph a zero-filled
//! gradient tensor and adds each contribution into it, and every op
//! allocates its output afresh. For a small model that bookkeeping costs as
//! much as a kernel. Here the forward pass keeps exactly the activations the
//! backward pass needs, the residual stream's gradient is one buffer updated
//! in place, each parameter's gradient is written straight into its range of
//! the flat gradient, and the kernels are the same ones the candle ops of
//! this module run. Every sum runs in a fixed order, whatever the threads
//! do, so the same inputs always give the same bits.

use std::ops::Range;

use p2ptrain_protocol::ModelConfig;

use super::attention::{attention_backward, attention_forward, Dims as AttentionDims};
use super::gelu::{gelu_forward_keeping_slope, scale_by_slope};
use super::layer_norm::{layer_norm_backward, layer_norm_forward};
use super::linear::{linear_backward, linear_forward, Dims};
use super::loss::cross_entropy_backward;
use super::matmul::{matmul, Threads, View, ViewMut};
use super::scratch::{Pool, Scratch};
use crate::params::ParamLayout;

type Result<T> = candle_core::Result<T>;

/// Where one transformer block's parameters lie in the flat buffer.
struct Block {
    ln_1: (Range<usize>, Range<usize>),
    c_attn: (Range<usize>, Range<usize>),
    attn_proj: (Range<usize>, Range<usize>),
    ln_2: (Range<usize>, Range<usize>),
    c_fc: (Range<usize>, Range<usize>),
    mlp_proj: (Range<usize>, Range<usize>),
}

/// Where every parameter lies in the flat buffer.
struct Offsets {
    wte: Range<usize>,
    wpe: Range<usize>,
    ln_f: (Range<usize>, Range<usize>),
    blocks: Vec<Block>,
}

impl Offsets {
    fn of(layout: &ParamLayout, layers: u32) -> Result<Self> {
        let range = |name: &str| -> Result<Range<usize>> {
            layout
                .get(name)
                .map(|spec| spec.range.clone())
                .ok_or_else(|| candle_core::Error::Msg(format!("no parameter named {name}")))
        };
        let pair = |prefix: &str| -> Result<_> {
            Ok((
                range(&format!("{prefix}.weight"))?,
                range(&format!("{prefix}.bias"))?,
            ))
        };
        let blocks = (0..layers)
            .map(|i| {
                Ok(Block {
                    ln_1: pair(&format!("h.{i}.ln_1"))?,
                    c_attn: pair(&format!("h.{i}.attn.c_attn"))?,
                    attn_proj: pair(&format!("h.{i}.attn.c_proj"))?,
                    ln_2: pair(&format!("h.{i}.ln_2"))?,
                    c_fc: pair(&format!("h.{i}.mlp.c_fc"))?,
                    mlp_proj: pair(&format!("h.{i}.mlp.c_proj"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            wte: range("wte.weight")?,
            wpe: range("wpe.weight")?,
            ln_f: pair("ln_f")?,
            blocks,
        })
    }
}

/// The sizes of one pass.
#[derive(Clone, Copy)]
struct Sizes {
    rows: usize,
    d: usize,
    /// Attention probabilities: batch × heads × time × time.
    probs: usize,
}

impl Sizes {
    fn linear(&self, d_in: usize, d_out: usize) -> Dims {
        Dims {
            rows: self.rows,
            d_in,
            d_out,
        }
    }
}

/// What one block's forward pass keeps for its backward pass.
struct Saved {
    /// The residual stream entering the block, `[rows, d]`.
    x_in: Vec<f32>,
    h1: Vec<f32>,
    stats1: Vec<f32>,
    qkv: Vec<f32>,
    /// Every head's attention probabilities.
    probs: Vec<f32>,
    attention: Vec<f32>,
    /// The residual stream after attention.
    x_mid: Vec<f32>,
    h2: Vec<f32>,
    stats2: Vec<f32>,
    /// The MLP's GELU and its slope at the pre-activation, `[rows, 4d]`.
    act: Vec<f32>,
    slope: Vec<f32>,
}

impl Saved {
    fn give_to(self, pool: &mut Pool) {
        let Saved {
            x_in,
            h1,
            stats1,
            qkv,
            probs,
            attention,
            x_mid,
            h2,
            stats2,
            act,
            slope,
        } = self;
        for buf in [
            x_in, h1, stats1, qkv, probs, attention, x_mid, h2, stats2, act, slope,
        ] {
            pool.give(buf);
        }
    }
}

/// Two disjoint ranges of `buf`, mutably.
fn two_mut(buf: &mut [f32], a: Range<usize>, b: Range<usize>) -> (&mut [f32], &mut [f32]) {
    if a.start < b.start {
        let (lo, hi) = buf.split_at_mut(b.start);
        (&mut lo[a], &mut hi[..b.end - b.start])
    } else {
        let (lo, hi) = buf.split_at_mut(a.start);
        (&mut hi[..a.end - a.start], &mut lo[b])
    }
}

/// Bytes of buffers the pass holds at most per token of a batch whose
/// sequences are `time` tokens long: each block's saved activations
/// (sixteen `d`-wide rows, with the MLP's four-wide ones) and attention
/// probabilities (`heads × time`), the logits, and the backward pass's
/// working rows. A bound, for cutting a large batch into passes that fit
/// in memory; the flat gradient, one value per parameter, comes on top.
pub(crate) fn pass_bytes_per_token(config: &ModelConfig, time: usize) -> usize {
    let d = config.d_model as usize;
    let per_block = 16 * d + config.n_head as usize * time + 4;
    4 * (config.n_layer as usize * per_block + config.vocab_size as usize + 12 * d)
}

/// The mean cross-entropy of predicting `targets` from `inputs` (both
/// `batch` rows of token ids, laid end to end) with the model `config`
/// holding `params` (flat, in `layout` order), and its gradient with
/// respect to every parameter, flat in the same order.
pub(crate) fn loss_and_gradient(
    (config, layout): (&ModelConfig, &ParamLayout),
    params: &[f32],
    (inputs, targets): (&[u32], &[u32]),
    batch: usize,
    scratch: &Scratch,
) -> Result<(f32, Vec<f32>)> {
    let mut pool = scratch.take();
    // The pass runs on a worker of the rayon pool, so that each parallel
    // kernel inside it splits by work stealing, without waking this thread
    // up after every one.
    let result = rayon::scope(|_| {
        pass(
            (config, layout),
            params,
            (inputs, targets),
            batch,
            &mut pool,
        )
    });
    scratch.give_back(pool);
    result
}

/// [`loss_and_gradient`] with its buffers from `pool`.
fn pass(
    (config, layout): (&ModelConfig, &ParamLayout),
    params: &[f32],
    (inputs, targets): (&[u32], &[u32]),
    batch: usize,
    pool: &mut Pool,
) -> Result<(f32, Vec<f32>)> {
    let (d, vocab) = (config.d_model as usize, config.vocab_size as usize);
    if params.len() != layout.len() {
        candle_core::bail!(
            "{} parameters for a layout of {}",
            params.len(),
            layout.len()
        );
    }
    if batch == 0 || inputs.is_empty() || inputs.len() % batch != 0 {
        candle_core::bail!("{} token ids do not split into {batch} rows", inputs.len());
    }
    let time = inputs.len() / batch;
    if time > config.context_len as usize {
        candle_core::bail!("{time} tokens exceed the context of {}", config.context_len);
    }
    if targets.len() != inputs.len() || inputs.iter().any(|&id| id as usize >= vocab) {
        candle_core::bail!("token ids out of the vocabulary of {vocab}, or targets do not match");
    }
    let at = Offsets::of(layout, config.n_layer)?;
    let s = Sizes {
        rows: inputs.len(),
        d,
        probs: batch * config.n_head as usize * time * time,
    };
    let attention = AttentionDims::new(time, 3 * d, config.n_head as usize)?;
    let p = |r: &Range<usize>| &params[r.clone()];

    // Forward.
    let mut x = pool.any(s.rows * d);
    let (wte, wpe) = (p(&at.wte), p(&at.wpe));
    for (r, (row, &id)) in x.chunks_exact_mut(d).zip(inputs).enumerate() {
        let (token, position) = (id as usize * d, (r % time) * d);
        for ((x, &t), &q) in row
            .iter_mut()
            .zip(&wte[token..token + d])
            .zip(&wpe[position..position + d])
        {
            *x = t + q;
        }
    }
    let mut saved = Vec::with_capacity(at.blocks.len());
    for block in &at.blocks {
        let (kept, out) = block_forward(block, params, x, s, attention, pool)?;
        saved.push(kept);
        x = out;
    }
    let mut hf = pool.any(s.rows * d);
    let mut stats_f = pool.any(2 * s.rows);
    layer_norm_forward(&x, (p(&at.ln_f.0), p(&at.ln_f.1)), &mut hf, &mut stats_f);
    // Logits against the tied embedding: hf · wteᵀ.
    let mut logits = pool.any(s.rows * vocab);
    matmul(
        ViewMut::rows(&mut logits, 0, vocab),
        (s.rows, vocab, d),
        View::rows(&hf, 0, d),
        View::transposed(wte, 0, d),
        (1.0, false),
        Threads::Pool,
    )?;

    // Backward, starting from the loss, which comes with its gradient.
    let mut grad = vec![0.0f32; params.len()];
    let mut dlogits = logits;
    let loss = cross_entropy_backward(&mut dlogits, targets, vocab, 1.0 / s.rows as f32)?;
    // The head's part of the embedding gradient: dlogitsᵀ · hf.
    matmul(
        ViewMut::rows(&mut grad[at.wte.clone()], 0, d),
        (vocab, d, s.rows),
        View::transposed(&dlogits, 0, vocab),
        View::rows(&hf, 0, d),
        (1.0, false),
        Threads::Pool,
    )?;
    let mut dh = hf;
    matmul(
        ViewMut::rows(&mut dh, 0, d),
        (s.rows, d, vocab),
        View::rows(&dlogits, 0, vocab),
        View::rows(wte, 0, d),
        (1.0, false),
        Threads::Pool,
    )?;
    // The gradient of the residual stream, updated in place block by block.
    let mut dx = pool.zeros(s.rows * d);
    let (gw, gb) = two_mut(&mut grad, at.ln_f.0.clone(), at.ln_f.1.clone());
    layer_norm_backward((&x, p(&at.ln_f.0), &stats_f), &dh, &mut dx, (gw, gb));
    for (block, kept) in at.blocks.iter().zip(&saved).rev() {
        block_backward(
            block,
            params,
            kept,
            (&mut dx, &mut grad),
            s,
            (attention, pool),
        )?;
    }
    // The embeddings' part, row by row in order.
    for (r, (row, &id)) in dx.chunks_exact(d).zip(inputs).enumerate() {
        let token = at.wte.start + id as usize * d;
        grad[token..token + d]
            .iter_mut()
            .zip(row)
            .for_each(|(g, &dx)| *g += dx);
        let position = at.wpe.start + (r % time) * d;
        grad[position..position + d]
            .iter_mut()
            .zip(row)
            .for_each(|(g, &dx)| *g += dx);
    }
    for kept in saved {
        kept.give_to(pool);
    }
    for buf in [x, stats_f, dlogits, dh, dx] {
        pool.give(buf);
    }
    Ok((loss, grad))
}

/// One block forward from the residual stream `x_in`: what the backward pass
/// needs, and the block's output.
fn block_forward(
    b: &Block,
    params: &[f32],
    x_in: Vec<f32>,
    s: Sizes,
    attention: AttentionDims,
    pool: &mut Pool,
) -> Result<(Saved, Vec<f32>)> {
    let p = |r: &Range<usize>| &params[r.clone()];
    let (rows, d) = (s.rows, s.d);
    let mut h1 = pool.any(rows * d);
    let mut stats1 = pool.any(2 * rows);
    layer_norm_forward(&x_in, (p(&b.ln_1.0), p(&b.ln_1.1)), &mut h1, &mut stats1);
    let mut qkv = pool.any(rows * 3 * d);
    let (w, bias) = (p(&b.c_attn.0), p(&b.c_attn.1));
    linear_forward(&h1, (w, bias), &mut qkv, s.linear(d, 3 * d), false)?;
    let mut att = pool.any(rows * d);
    let mut probs = pool.any(s.probs);
    attention_forward(&qkv, attention, &mut att, &mut probs)?;
    // x_mid = x_in + att · W + b: the projection adds onto the residual.
    let mut x_mid = pool.copy(&x_in);
    let (w, bias) = (p(&b.attn_proj.0), p(&b.attn_proj.1));
    linear_forward(&att, (w, bias), &mut x_mid, s.linear(d, d), true)?;
    let mut h2 = pool.any(rows * d);
    let mut stats2 = pool.any(2 * rows);
    layer_norm_forward(&x_mid, (p(&b.ln_2.0), p(&b.ln_2.1)), &mut h2, &mut stats2);
    let mut pre = pool.any(rows * 4 * d);
    let (w, bias) = (p(&b.c_fc.0), p(&b.c_fc.1));
    linear_forward(&h2, (w, bias), &mut pre, s.linear(d, 4 * d), false)?;
    let mut act = pool.any(rows * 4 * d);
    // The pre-activation's buffer takes GELU's slope.
    let mut slope = pre;
    gelu_forward_keeping_slope(&mut slope, &mut act);
    let mut out = pool.copy(&x_mid);
    let (w, bias) = (p(&b.mlp_proj.0), p(&b.mlp_proj.1));
    linear_forward(&act, (w, bias), &mut out, s.linear(4 * d, d), true)?;
    let saved = Saved {
        x_in,
        h1,
        stats1,
        qkv,
        probs,
        attention: att,
        x_mid,
        h2,
        stats2,
        act,
        slope,
    };
    Ok((saved, out))
}

/// One block backward: turns `dx`, the gradient of the block's output, into
/// that of its input, and writes the block's parameter gradients into
/// `grad`.
fn block_backward(
    b: &Block,
    params: &[f32],
    kept: &Saved,
    (dx, grad): (&mut [f32], &mut [f32]),
    s: Sizes,
    (attention, pool): (AttentionDims, &mut Pool),
) -> Result<()> {
    let p = |r: &Range<usize>| &params[r.clone()];
    let (rows, d) = (s.rows, s.d);
    // MLP: out = x_mid + gelu(h2 · W_fc + b_fc) · W_proj + b_proj.
    let mut dact = pool.any(rows * 4 * d);
    let (gw, gb) = two_mut(grad, b.mlp_proj.0.clone(), b.mlp_proj.1.clone());
    let dims = s.linear(4 * d, d);
    linear_backward(
        (&kept.act, p(&b.mlp_proj.0)),
        dx,
        Some(&mut dact),
        (gw, gb),
        dims,
    )?;
    scale_by_slope(&kept.slope, &mut dact);
    let mut dh = pool.any(rows * d);
    let (gw, gb) = two_mut(grad, b.c_fc.0.clone(), b.c_fc.1.clone());
    let dims = s.linear(d, 4 * d);
    linear_backward(
        (&kept.h2, p(&b.c_fc.0)),
        &dact,
        Some(&mut dh),
        (gw, gb),
        dims,
    )?;
    let (gw, gb) = two_mut(grad, b.ln_2.0.clone(), b.ln_2.1.clone());
    let ln = (&kept.x_mid[..], p(&b.ln_2.0), &kept.stats2[..]);
    layer_norm_backward(ln, &dh, dx, (gw, gb));
    // Attention: x_mid = x_in + attention(h1 · W_attn + b_attn) · W_proj + b_proj.
    let mut datt = dh;
    let (gw, gb) = two_mut(grad, b.attn_proj.0.clone(), b.attn_proj.1.clone());
    let dims = s.linear(d, d);
    let x = (&kept.attention[..], p(&b.attn_proj.0));
    linear_backward(x, dx, Some(&mut datt), (gw, gb), dims)?;
    let mut dqkv = pool.any(rows * 3 * d);
    attention_backward((&kept.qkv, &kept.probs), &datt, attention, &mut dqkv)?;
    let mut dh = datt;
    let (gw, gb) = two_mut(grad, b.c_attn.0.clone(), b.c_attn.1.clone());
    let dims = s.linear(d, 3 * d);
    linear_backward(
        (&kept.h1, p(&b.c_attn.0)),
        &dqkv,
        Some(&mut dh),
        (gw, gb),
        dims,
    )?;
    let (gw, gb) = two_mut(grad, b.ln_1.0.clone(), b.ln_1.1.clone());
    let ln = (&kept.x_in[..], p(&b.ln_1.0), &kept.stats1[..]);
    layer_norm_backward(ln, &dh, dx, (gw, gb));
    for buf in [dact, dqkv, dh] {
        pool.give(buf);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::{loss_and_gradient, pass_bytes_per_token, two_mut, Scratch};
    use crate::{Gpt, ParamLayout, Preset};

    /// Token ids for `batch` rows of `time`, below `vocab`.
    fn ids(batch: usize, time: usize, vocab: u32, salt: u32) -> Vec<u32> {
        (0..(batch * time) as u32)
            .map(|i| (i * 31 + salt * 7 + i / 5) % vocab)
            .collect()
    }

    #[test]
    fn matches_candle_autograd_through_the_fused_ops() {
        let config = Preset::Tiny.config();
        let layout = ParamLayout::gpt2(&config);
        let values = layout.initial_values(3);
        let (batch, time) = (3, 40);
        let (inputs, targets) = (ids(batch, time, 256, 1), ids(batch, time, 256, 2));
        let scratch = Scratch::default();
        let run = |inputs: &[u32], targets: &[u32]| {
            let pass = (&config, &layout);
            loss_and_gradient(pass, &values, (inputs, targets), batch, &scratch).unwrap()
        };
        // A pass on other tokens first, so that the checked pass runs on
        // reused buffers.
        run(&targets, &inputs);
        let (loss, grad) = run(&inputs, &targets);

        let model = Gpt::new(config, &values, &Device::Cpu).unwrap();
        let x = Tensor::from_slice(&inputs, (batch, time), &Device::Cpu).unwrap();
        let y = Tensor::from_slice(&targets, (batch, time), &Device::Cpu).unwrap();
        let reference = model.loss(&x, &y).unwrap();
        assert!((reference.to_scalar::<f32>().unwrap() - loss).abs() < 1e-5);
        let grads = reference.backward().unwrap();
        for (var, spec) in model.vars().iter().zip(layout.specs()) {
            let expected = grads.get(var.as_tensor()).unwrap();
            let expected = expected.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let got = &grad[spec.range.clone()];
            let scale = expected.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            for (a, b) in got.iter().zip(&expected) {
                assert!(
                    (a - b).abs() <= 1e-4 * scale + 1e-8,
                    "{}: {a} vs {b}",
                    spec.name
                );
            }
        }
    }

    #[test]
    fn the_pass_holds_no_more_than_its_bound_and_not_far_below() {
        let config = Preset::Tiny.config();
        let layout = ParamLayout::gpt2(&config);
        let values = layout.initial_values(1);
        for (batch, time) in [(1, 64), (4, 64), (8, 16)] {
            let (inputs, targets) = (ids(batch, time, 256, 3), ids(batch, time, 256, 4));
            let scratch = Scratch::default();
            let pass = (&config, &layout);
            loss_and_gradient(pass, &values, (&inputs, &targets), batch, &scratch).unwrap();
            // Every buffer the pass took is back in the scratch.
            let held = 4 * scratch.held_values();
            let bound = pass_bytes_per_token(&config, time) * batch * time;
            assert!(held <= bound, "{batch}x{time}: {held} > {bound}");
            assert!(
                2 * held >= bound,
                "{batch}x{time}: {held} far below {bound}"
            );
        }
    }

    #[test]
    fn bad_batches_are_errors() {
        let config = Preset::Tiny.config();
        let layout = ParamLayout::gpt2(&config);
        let values = layout.initial_values(0);
        let good = ids(2, 8, 256, 0);
        let scratch = Scratch::default();
        let run = |inputs: &[u32], targets: &[u32], batch| {
            let pass = (&config, &layout);
            loss_and_gradient(pass, &values, (inputs, targets), batch, &scratch)
        };
        assert!(run(&good, &good, 2).is_ok());
        assert!(run(&good, &good, 0).is_err());
        assert!(run(&good, &good, 3).is_err());
        assert!(run(&good, &good[1..], 2).is_err());
        let mut out_of_vocab = good.clone();
        out_of_vocab[3] = 256;
        assert!(run(&out_of_vocab, &good, 2).is_err());
        assert!(run(&good, &out_of_vocab, 2).is_err());
        let too_long = ids(1, 65, 256, 0);
        assert!(run(&too_long, &too_long, 1).is_err());
        let pass = (&config, &layout);
        let short = &values[1..];
        assert!(loss_and_gradient(pass, short, (&good, &good), 2, &scratch).is_err());
    }

    #[test]
    fn two_mut_gives_both_ranges_in_either_order() {
        let mut buf: Vec<f32> = (0..10).map(|i| i as f32).collect();
        let (a, b) = two_mut(&mut buf, 6..8, 1..3);
        assert_eq!((&a[..], &b[..]), (&[6.0, 7.0][..], &[1.0, 2.0][..]));
        let (a, b) = two_mut(&mut buf, 0..2, 2..5);
        assert_eq!((a.len(), b.len()), (2, 3));
    }
}
