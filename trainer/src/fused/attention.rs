//! Causal multi-head attention as one fused CPU kernel with its own
//! backward pass, straight from the `[batch, time, 3 × width]` output of
//! `c_attn` to the `[batch, time, width]` input of `c_proj`.
//!
//! Composed from candle operations, attention splits, transposes and copies
//! q, k and v, runs a small matrix product per head, masks, normalizes, and
//! copies back — each step a fresh tensor, and twice again backward. Here
//! each sequence is one task (spread over the rayon pool): for every head,
//! scores, the causal softmax and the weighted sum of values in one pass,
//! and in the backward pass the probabilities are recomputed rather than
//! stored.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{fast_exp, slice};

type Result<T> = candle_core::Result<T>;

/// `softmax(q·kᵀ / √d_head + causal mask) · v` for every head.
pub struct CausalAttention {
    /// Attention heads; the width must be a multiple of it.
    pub heads: usize,
}

/// The sizes of one call.
#[derive(Clone, Copy)]
struct Dims {
    time: usize,
    width: usize,
    head_dim: usize,
    heads: usize,
    scale: f32,
}

impl Dims {
    fn of(layout: &Layout, heads: usize) -> Result<(usize, Self)> {
        let (batch, time, three_width) = layout.shape().dims3()?;
        let width = three_width / 3;
        if three_width % 3 != 0 || heads == 0 || width % heads != 0 {
            candle_core::bail!("fused attention: width {three_width} is not 3 × heads × head size");
        }
        let head_dim = width / heads;
        let dims = Self {
            time,
            width,
            head_dim,
            heads,
            scale: 1.0 / (head_dim as f32).sqrt(),
        };
        Ok((batch, dims))
    }

    /// Offsets of head `h`'s q, k and v within a row of `qkv`.
    fn offsets(&self, h: usize) -> (usize, usize, usize) {
        let at = h * self.head_dim;
        (at, self.width + at, 2 * self.width + at)
    }
}

/// `a · b`, summed in eight interleaved lanes so that it vectorizes (a
/// plain running sum cannot be reordered by the compiler).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for k in 0..8 {
            lanes[k] += x[k] * y[k];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Causal softmax probabilities of query `i` over keys `0..=i` into `p`.
fn probabilities(seq: &[f32], d: Dims, h: usize, i: usize, p: &mut [f32]) {
    let (qo, ko, _) = d.offsets(h);
    let row = 3 * d.width;
    let q = &seq[i * row + qo..][..d.head_dim];
    let mut max = f32::NEG_INFINITY;
    for (j, p) in p[..=i].iter_mut().enumerate() {
        *p = d.scale * dot(q, &seq[j * row + ko..][..d.head_dim]);
        max = max.max(*p);
    }
    let mut sum = 0.0;
    for p in &mut p[..=i] {
        *p = fast_exp(*p - max);
        sum += *p;
    }
    let inv = 1.0 / sum;
    p[..=i].iter_mut().for_each(|p| *p *= inv);
}

impl CustomOp1 for CausalAttention {
    fn name(&self) -> &'static str {
        "fused-causal-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = slice(storage, layout, self.name())?;
        let (batch, d) = Dims::of(layout, self.heads)?;
        let row = 3 * d.width;
        let mut out = vec![0.0f32; batch * d.time * d.width];
        out.par_chunks_mut(d.time * d.width)
            .zip(qkv.par_chunks(d.time * row))
            .for_each_init(
                || vec![0.0f32; d.time],
                |p, (out, seq)| {
                    for h in 0..d.heads {
                        let (_, _, vo) = d.offsets(h);
                        for i in 0..d.time {
                            probabilities(seq, d, h, i, p);
                            let y = &mut out[i * d.width + h * d.head_dim..][..d.head_dim];
                            for (j, &pj) in p[..=i].iter().enumerate() {
                                let v = &seq[j * row + vo..][..d.head_dim];
                                y.iter_mut().zip(v).for_each(|(y, v)| *y += pj * v);
                            }
                        }
                    }
                },
            );
        Ok((CpuStorage::F32(out), Shape::from((batch, d.time, d.width))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = CausalAttentionGrad { heads: self.heads };
        Ok(Some(arg.apply_op2_no_bwd(&grad_res.contiguous()?, &grad)?))
    }
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
        let row = 3 * d.width;
        let mut dqkv = vec![0.0f32; qkv.len()];
        dqkv.par_chunks_mut(d.time * row)
            .zip(qkv.par_chunks(d.time * row))
            .zip(dy.par_chunks(d.time * d.width))
            .for_each_init(
                || (vec![0.0f32; d.time], vec![0.0f32; d.time]),
                |(p, ds), ((dseq, seq), dy)| {
                    for h in 0..d.heads {
                        let (qo, ko, vo) = d.offsets(h);
                        for i in 0..d.time {
                            probabilities(seq, d, h, i, p);
                            let dy_i = &dy[i * d.width + h * d.head_dim..][..d.head_dim];
                            // dP_ij = dy_i · v_j; dS_ij = P_ij (dP_ij − Σ_k P_ik dP_ik).
                            let mut weighted = 0.0;
                            for j in 0..=i {
                                ds[j] = dot(dy_i, &seq[j * row + vo..][..d.head_dim]);
                                weighted += p[j] * ds[j];
                            }
                            for j in 0..=i {
                                ds[j] = p[j] * (ds[j] - weighted) * d.scale;
                            }
                            let q_i = &seq[i * row + qo..][..d.head_dim];
                            for j in 0..=i {
                                // dv_j += P_ij dy_i; dk_j += dS_ij q_i.
                                let dv = &mut dseq[j * row + vo..][..d.head_dim];
                                dv.iter_mut().zip(dy_i).for_each(|(g, y)| *g += p[j] * y);
                                let dk = &mut dseq[j * row + ko..][..d.head_dim];
                                dk.iter_mut().zip(q_i).for_each(|(g, q)| *g += ds[j] * q);
                            }
                            // dq_i = Σ_j dS_ij k_j.
                            let dq_i = &mut dseq[i * row + qo..][..d.head_dim];
                            for j in 0..=i {
                                let k = &seq[j * row + ko..][..d.head_dim];
                                dq_i.iter_mut().zip(k).for_each(|(g, k)| *g += ds[j] * k);
                            }
                        }
                    }
                },
            );
        Ok((CpuStorage::F32(dqkv), l1.shape().clone()))
    }
}
