//! Causal multi-head attention as one fused CPU kernel with its own
//! backward pass, straight from the `[batch, time, 3 × width]` output of
//! `c_attn` to the `[batch, time, width]` input of `c_proj`.
//!
//! Composed from candle operations, attention splits, transposes and copies
//! q, k and v, runs a small matrix product per head, masks, normalizes, and
//! copies back — each step a fresh tensor, and twice again backward. Here
//! each sequence is one task (spread over the rayon pool), and each head's
//! products read q, k and v where they lie in the `c_attn` output, through
//! strided views; only the `time × time` scores get a buffer, reused from
//! head to head. The backward pass recomputes the probabilities rather than
//! storing them.
//!
//! On a GPU the same op is one graph node too: it splits the heads into
//! matrices, leaves `q·kᵀ` and `p·v` to cuBLAS, runs the causal softmax
//! kernel between them and merges the heads back (`crate::device`); its
//! backward pass does the same with candle's products.

use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::heads::{HeadShape, MergeHeads, SplitHeads};
use super::matmul::{matmul, Threads, View, ViewMut};
use super::softmax::{CausalSoftmax, CausalSoftmaxGrad};
use super::{fast_exp, lane_max, lane_sum, slice};
use crate::device::gpu;

type Result<T> = candle_core::Result<T>;

/// `softmax(q·kᵀ / √d_head + causal mask) · v` for every head.
pub struct CausalAttention {
    /// Attention heads; the width must be a multiple of it.
    pub heads: usize,
}

/// The sizes of one call.
#[derive(Clone, Copy)]
pub(super) struct Dims {
    time: usize,
    width: usize,
    head_dim: usize,
    heads: usize,
    scale: f32,
}

impl Dims {
    fn of(layout: &Layout, heads: usize) -> Result<(usize, Self)> {
        let (batch, time, three_width) = layout.shape().dims3()?;
        Ok((batch, Self::new(time, three_width, heads)?))
    }

    /// The sizes for sequences of `time` rows of `three_width` (q‖k‖v).
    pub(super) fn new(time: usize, three_width: usize, heads: usize) -> Result<Self> {
        let width = three_width / 3;
        if !three_width.is_multiple_of(3) || heads == 0 || !width.is_multiple_of(heads) {
            candle_core::bail!("fused attention: width {three_width} is not 3 × heads × head size");
        }
        let head_dim = width / heads;
        Ok(Self {
            time,
            width,
            head_dim,
            heads,
            scale: 1.0 / (head_dim as f32).sqrt(),
        })
    }

    /// Checks that `qkv` holds whole sequences and `other` (the output or
    /// its gradient) matches it.
    fn check(&self, qkv: &[f32], other: &[f32]) -> Result<()> {
        let seq = self.time * 3 * self.width;
        if seq == 0 || !qkv.len().is_multiple_of(seq) || other.len() * 3 != qkv.len() {
            candle_core::bail!(
                "fused attention: {} q‖k‖v for {} outputs",
                qkv.len(),
                other.len()
            );
        }
        Ok(())
    }

    /// Checks that `len` probabilities cover every head of every sequence
    /// of `qkv`.
    fn check_probs(&self, qkv: &[f32], len: usize) -> Result<()> {
        let seqs = qkv.len() / (self.time * 3 * self.width).max(1);
        if len != seqs * self.heads * self.time * self.time {
            candle_core::bail!("fused attention: {len} probabilities for {seqs} sequences");
        }
        Ok(())
    }

    /// Probabilities for every head of every sequence of `qkv`.
    fn probs_len(&self, qkv: &[f32]) -> usize {
        qkv.len() / (self.time * 3 * self.width).max(1) * self.heads * self.time * self.time
    }

    /// Offsets of head `h`'s q, k and v within a row of `qkv`.
    fn offsets(&self, h: usize) -> (usize, usize, usize) {
        let at = h * self.head_dim;
        (at, self.width + at, 2 * self.width + at)
    }
}

/// Scores `scale · q·kᵀ` of head `h` into `p` (`time × time`), then the
/// causal softmax of each row: row `i` over keys `0..=i`, zero after.
fn probabilities(seq: &[f32], d: Dims, h: usize, p: &mut [f32]) -> Result<()> {
    let (qo, ko, _) = d.offsets(h);
    let row = 3 * d.width;
    let q = View::rows(seq, qo, row);
    // kᵀ: element (c, j) is k_j[c].
    let k_t = View::transposed(seq, ko, row);
    let scores = ViewMut::rows(p, 0, d.time);
    matmul(
        scores,
        (d.time, d.time, d.head_dim),
        q,
        k_t,
        (d.scale, false),
        Threads::One,
    )?;
    for (i, p) in p.chunks_exact_mut(d.time).enumerate() {
        let (seen, future) = p.split_at_mut(i + 1);
        let max = lane_max(seen);
        for p in seen.iter_mut() {
            *p = fast_exp(*p - max);
        }
        let inv = 1.0 / lane_sum(seen, seen, seen, |p, _, _| p);
        seen.iter_mut().for_each(|p| *p *= inv);
        future.fill(0.0);
    }
    Ok(())
}

/// Causal attention of every sequence of `qkv` (`[seq, time, 3 × width]`)
/// into `out` (`[seq, time, width]`), keeping the probabilities of every
/// sequence and head in `probs` (`[seq, heads, time, time]`) for the
/// backward pass.
pub(super) fn attention_forward(
    qkv: &[f32],
    d: Dims,
    out: &mut [f32],
    probs: &mut [f32],
) -> Result<()> {
    d.check(qkv, out)?;
    d.check_probs(qkv, probs.len())?;
    let row = 3 * d.width;
    let tt = d.time * d.time;
    out.par_chunks_mut(d.time * d.width)
        .zip(qkv.par_chunks(d.time * row))
        .zip(probs.par_chunks_mut(d.heads * tt))
        .try_for_each(|((out, seq), probs)| -> Result<()> {
            for (h, p) in probs.chunks_exact_mut(tt).enumerate() {
                probabilities(seq, d, h, p)?;
                let (_, _, vo) = d.offsets(h);
                // y = P · v, into this head's columns of the output.
                let y = ViewMut::rows(out, h * d.head_dim, d.width);
                let p = View::rows(p, 0, d.time);
                let v = View::rows(seq, vo, row);
                let dims = (d.time, d.head_dim, d.time);
                matmul(y, dims, p, v, (1.0, false), Threads::One)?;
            }
            Ok(())
        })
}

/// The gradient with respect to `qkv` of [`attention_forward`], from the
/// probabilities it kept and the output gradient `dy`, into `dqkv`
/// (overwritten).
pub(super) fn attention_backward(
    (qkv, probs): (&[f32], &[f32]),
    dy: &[f32],
    d: Dims,
    dqkv: &mut [f32],
) -> Result<()> {
    d.check(qkv, dy)?;
    d.check_probs(qkv, probs.len())?;
    let row = 3 * d.width;
    let tt = d.time * d.time;
    if dqkv.len() != qkv.len() {
        candle_core::bail!("fused attention grad: {} for {}", dqkv.len(), qkv.len());
    }
    dqkv.par_chunks_mut(d.time * row)
        .zip(qkv.par_chunks(d.time * row))
        .zip(dy.par_chunks(d.time * d.width))
        .zip(probs.par_chunks(d.heads * tt))
        .try_for_each_init(
            || vec![0.0f32; tt],
            |ds, (((dseq, seq), dy), probs)| -> Result<()> {
                for (h, p) in probs.chunks_exact(tt).enumerate() {
                    head_backward(d, h, (seq, dy, p), ds, dseq)?;
                }
                Ok(())
            },
        )
}

impl CustomOp1 for CausalAttention {
    fn name(&self) -> &'static str {
        "fused-causal-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = slice(storage, layout, self.name())?;
        let (batch, d) = Dims::of(layout, self.heads)?;
        let mut out = vec![0.0f32; batch * d.time * d.width];
        let mut probs = vec![0.0f32; d.probs_len(qkv)];
        attention_forward(qkv, d, &mut out, &mut probs)?;
        Ok((CpuStorage::F32(out), Shape::from((batch, d.time, d.width))))
    }

    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        let (batch, d) = Dims::of(layout, self.heads)?;
        let shape = HeadShape {
            batch,
            time: d.time,
            parts: 3,
            heads: d.heads,
            dim: d.head_dim,
        };
        let out = gpu::causal_attention((storage, layout), shape, d.scale)?;
        Ok((out, Shape::from((batch, d.time, d.width))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad_res = grad_res.contiguous()?;
        if arg.device().is_cpu() {
            let grad = CausalAttentionGrad { heads: self.heads };
            return Ok(Some(arg.apply_op2_no_bwd(&grad_res, &grad)?));
        }
        Ok(Some(attention_gradient_by_products(
            arg, &grad_res, self.heads,
        )?))
    }
}

/// The gradient of [`CausalAttention`] with respect to `qkv`, from the
/// output gradient `dy`, through candle's batched matrix products (cuBLAS
/// on a GPU) and the causal softmax's own gradient: the backward pass
/// where the CPU kernels do not run. Like them, it recomputes the
/// probabilities rather than keeping them from the forward pass.
fn attention_gradient_by_products(qkv: &Tensor, dy: &Tensor, heads: usize) -> Result<Tensor> {
    let (_, _, three_width) = qkv.dims3()?;
    let scale = Dims::new(1, three_width, heads)?.scale;
    let split = qkv.apply_op1_no_bwd(&SplitHeads { parts: 3, heads })?;
    let (q, k, v) = (split.get(0)?, split.get(1)?, split.get(2)?);
    let p = q
        .matmul(&k.t()?)?
        .apply_op1_no_bwd(&CausalSoftmax { scale })?;
    let d_out = dy
        .apply_op1_no_bwd(&SplitHeads { parts: 1, heads })?
        .get(0)?;
    let dv = p.t()?.matmul(&d_out)?;
    let dp = d_out.matmul(&v.t()?)?;
    let ds = p.apply_op2_no_bwd(&dp, &CausalSoftmaxGrad { scale })?;
    let dq = ds.matmul(&k)?;
    let dk = ds.t()?.matmul(&q)?;
    Tensor::stack(&[dq, dk, dv], 0)?.apply_op1_no_bwd(&MergeHeads)
}

struct CausalAttentionGrad {
    heads: usize,
}

impl CustomOp2 for CausalAttentionGrad {
    fn name(&self) -> &'static str {
        "fused-causal-attention-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let qkv = slice(s1, l1, self.name())?;
        let dy = slice(s2, l2, self.name())?;
        let (_, d) = Dims::of(l1, self.heads)?;
        // The candle op keeps nothing between passes: recompute the
        // probabilities.
        let mut probs = vec![0.0f32; d.probs_len(qkv)];
        let mut unused = vec![0.0f32; dy.len()];
        attention_forward(qkv, d, &mut unused, &mut probs)?;
        let mut dqkv = vec![0.0f32; qkv.len()];
        attention_backward((qkv, &probs), dy, d, &mut dqkv)?;
        Ok((CpuStorage::F32(dqkv), l1.shape().clone()))
    }
}

/// The gradient of head `h` of one sequence into `dseq` (q, k and v parts),
/// from its probabilities `p`, with `ds` as `time × time` scratch.
fn head_backward(
    d: Dims,
    h: usize,
    (seq, dy, p): (&[f32], &[f32], &[f32]),
    ds: &mut [f32],
    dseq: &mut [f32],
) -> Result<()> {
    let (qo, ko, vo) = d.offsets(h);
    let row = 3 * d.width;
    let (t, hd) = (d.time, d.head_dim);
    let dy_h = View::rows(dy, h * hd, d.width);
    // dP = dy · vᵀ.
    let dp = ViewMut::rows(ds, 0, t);
    matmul(
        dp,
        (t, t, hd),
        dy_h,
        View::transposed(seq, vo, row),
        (1.0, false),
        Threads::One,
    )?;
    // dS_ij = P_ij (dP_ij − Σ_k P_ik dP_ik), times the score scale.
    for (p, ds) in p.chunks_exact(t).zip(ds.chunks_exact_mut(t)) {
        let weighted = lane_sum(p, ds, ds, |p, g, _| p * g);
        for (g, &p) in ds.iter_mut().zip(p) {
            *g = p * (*g - weighted) * d.scale;
        }
    }
    let ds = &*ds;
    let once = (1.0, false);
    // dq = dS · k; dk = dSᵀ · q; dv = Pᵀ · dy.
    let (ds_rows, ds_t) = (View::rows(ds, 0, t), View::transposed(ds, 0, t));
    matmul(
        ViewMut::rows(dseq, qo, row),
        (t, hd, t),
        ds_rows,
        View::rows(seq, ko, row),
        once,
        Threads::One,
    )?;
    matmul(
        ViewMut::rows(dseq, ko, row),
        (t, hd, t),
        ds_t,
        View::rows(seq, qo, row),
        once,
        Threads::One,
    )?;
    matmul(
        ViewMut::rows(dseq, vo, row),
        (t, hd, t),
        View::transposed(p, 0, t),
        dy_h,
        once,
        Threads::One,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::{attention_gradient_by_products, CausalAttentionGrad};

    #[test]
    fn the_gradient_by_products_is_the_cpu_kernels_gradient() {
        let (batch, time, heads, head_dim) = (2, 19, 3, 8);
        let width = heads * head_dim;
        let values =
            |n: usize, k: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * k).sin() * 1.5).collect() };
        let dev = Device::Cpu;
        let qkv = values(batch * time * 3 * width, 0.37);
        let qkv = Tensor::from_slice(&qkv, (batch, time, 3 * width), &dev).unwrap();
        let dy = values(batch * time * width, 0.11);
        let dy = Tensor::from_slice(&dy, (batch, time, width), &dev).unwrap();
        let by_kernel = qkv
            .apply_op2_no_bwd(&dy, &CausalAttentionGrad { heads })
            .unwrap();
        let by_products = attention_gradient_by_products(&qkv, &dy, heads).unwrap();
        assert_eq!(by_products.dims(), by_kernel.dims());
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (a, b) = (flat(&by_products), flat(&by_kernel));
        let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(scale > 0.0);
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-5 * scale, "{x} vs {y}");
        }
    }
}
