//! The GPT-2 decoder in candle.
//!
//! Every operation has a backward pass. On the CPU and on a GPU, GELU,
//! layer norm, attention, the linear layers and the loss run as the fused
//! kernels of [`crate::fused`]; elsewhere, or with the fused kernels turned
//! off, they are composed here from candle primitives — never candle's
//! own `LayerNorm`, `layer_norm`, `softmax_last_dim` or `rms_norm`, which have
//! no backward pass and would silently stop gradients.
//!
//! With the fused kernels on, a training pass on the CPU skips the graph
//! altogether: `Gpt::fused_loss_and_gradient` runs the same model forward
//! and backward on flat buffers (see [`crate::fused`]).

use candle_core::{DType, Device, Tensor, Var, D};
use p2ptrain_protocol::ModelConfig;

use crate::fused;
use crate::params::ParamLayout;
use crate::{config, Result, TrainerError};

/// GPT-2's layer-norm epsilon.
pub const LAYER_NORM_EPS: f64 = 1e-5;

/// A GPT-2-architecture model whose parameters are candle variables, one per
/// entry of its [`ParamLayout`], in the same (sorted-name) order.
pub struct Gpt {
    config: ModelConfig,
    layout: ParamLayout,
    vars: Vec<Var>,
    causal_mask: Tensor,
    device: Device,
    fused: bool,
    /// Buffers the fused training pass reuses from one call to the next.
    scratch: fused::Scratch,
}

/// The variables of one transformer block, looked up once.
struct Block<'a> {
    ln_1: (&'a Tensor, &'a Tensor),
    c_attn: (&'a Tensor, &'a Tensor),
    attn_proj: (&'a Tensor, &'a Tensor),
    ln_2: (&'a Tensor, &'a Tensor),
    c_fc: (&'a Tensor, &'a Tensor),
    mlp_proj: (&'a Tensor, &'a Tensor),
}

impl Gpt {
    /// A model of shape `config` holding `values` (a flat buffer in layout
    /// order), on `device`.
    pub fn new(config: ModelConfig, values: &[f32], device: &Device) -> Result<Self> {
        config::validate(&config)?;
        let layout = ParamLayout::gpt2(&config);
        if values.len() != layout.len() {
            return Err(TrainerError::Length {
                expected: layout.len(),
                found: values.len(),
            });
        }
        let vars = layout
            .specs()
            .iter()
            .map(|spec| {
                let t =
                    Tensor::from_slice(&values[spec.range.clone()], spec.shape.as_slice(), device)?;
                Var::from_tensor(&t)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let t = config.context_len as usize;
        let mask: Vec<f32> = (0..t * t)
            .map(|i| {
                if i % t > i / t {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let causal_mask = Tensor::from_vec(mask, (t, t), device)?;
        Ok(Self {
            config,
            layout,
            vars,
            causal_mask,
            device: device.clone(),
            fused: true,
            scratch: fused::Scratch::default(),
        })
    }

    /// A freshly initialized model.
    pub fn init(config: ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        let values = ParamLayout::gpt2(&config).initial_values(seed);
        Self::new(config, &values, device)
    }

    /// The model's shape.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The parameter table.
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// The variables, in layout order.
    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// The device the model lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    fn var(&self, name: &str) -> candle_core::Result<&Tensor> {
        let index = self
            .layout
            .specs()
            .binary_search_by(|s| s.name.as_str().cmp(name))
            .map_err(|_| candle_core::Error::Msg(format!("no parameter named {name}")))?;
        Ok(self.vars[index].as_tensor())
    }

    fn block(&self, i: u32) -> candle_core::Result<Block<'_>> {
        let pair = |rest: &str| -> candle_core::Result<_> {
            Ok((
                self.var(&format!("h.{i}.{rest}.weight"))?,
                self.var(&format!("h.{i}.{rest}.bias"))?,
            ))
        };
        Ok(Block {
            ln_1: pair("ln_1")?,
            c_attn: pair("attn.c_attn")?,
            attn_proj: pair("attn.c_proj")?,
            ln_2: pair("ln_2")?,
            c_fc: pair("mlp.c_fc")?,
            mlp_proj: pair("mlp.c_proj")?,
        })
    }

    /// Logits `[batch, time, vocab]` for token ids `[batch, time]` (u32).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (batch, time) = ids.dims2()?;
        let vocab = self.config.vocab_size as usize;
        Ok(self.logit_rows(ids)?.reshape((batch, time, vocab))?)
    }

    /// Logits `[batch × time, vocab]`, one row per token: what the loss
    /// takes, with no reshape in between (each one would cost the backward
    /// pass a zeroed gradient and an add the size of the logits).
    fn logit_rows(&self, ids: &Tensor) -> Result<Tensor> {
        let (batch, time) = ids.dims2()?;
        if time > self.config.context_len as usize {
            return Err(TrainerError::Config(format!(
                "{time} tokens exceed the context of {}",
                self.config.context_len
            )));
        }
        let d = self.config.d_model as usize;
        let wte = self.var("wte.weight")?;
        let tokens = wte
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((batch, time, d))?;
        let positions = self.var("wpe.weight")?.narrow(0, 0, time)?;
        let mut x = tokens.broadcast_add(&positions)?;
        let mask = self.causal_mask.narrow(0, 0, time)?.narrow(1, 0, time)?;
        for i in 0..self.config.n_layer {
            x = self.block_forward(&self.block(i)?, &x, &mask)?;
        }
        let x = self.layer_norm(&x, self.var("ln_f.weight")?, self.var("ln_f.bias")?)?;
        Ok(x.reshape((batch * time, d))?.matmul(&wte.t()?)?)
    }

    fn block_forward(&self, block: &Block<'_>, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let heads = self.config.n_head as usize;
        let h = self.layer_norm(x, block.ln_1.0, block.ln_1.1)?;
        let qkv = self.linear(&h, block.c_attn)?;
        let attention = if self.fused() {
            qkv.apply_op1(fused::CausalAttention { heads })?
        } else {
            composed_attention(&qkv, heads, mask)?
        };
        let x = (x + self.linear(&attention, block.attn_proj)?)?;
        let h = self.layer_norm(&x, block.ln_2.0, block.ln_2.1)?;
        let h = self.linear(&h, block.c_fc)?;
        let h = if self.fused() {
            h.apply_op1(fused::Gelu)?
        } else {
            h.gelu()?
        };
        let h = self.linear(&h, block.mlp_proj)?;
        Ok((x + h)?)
    }

    /// Mean cross-entropy (nats per token) of predicting `targets` from
    /// `inputs`, both `[batch, time]` u32.
    pub fn loss(&self, inputs: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let logits = self.logit_rows(inputs)?;
        if self.fused() {
            let targets = targets.flatten_all()?.to_vec1::<u32>()?;
            return Ok(logits.apply_op1(fused::CrossEntropy { targets })?);
        }
        let targets = targets.flatten_all()?.unsqueeze(1)?;
        let picked = log_softmax_last_dim(&logits)?.gather(&targets, 1)?;
        Ok(picked.mean_all()?.neg()?)
    }

    /// Whether the fused kernels of [`crate::fused`] replace the composed
    /// operations (they do on the CPU and on a GPU, unless turned off).
    fn fused(&self) -> bool {
        self.fused && (self.device.is_cpu() || self.device.is_cuda())
    }

    /// The loss on one batch and its flat gradient (in layout order) from
    /// the fused whole-model pass of [`crate::fused`], or `None` where the
    /// fused kernels are off (the caller then runs candle's autograd).
    pub(crate) fn fused_loss_and_gradient(
        &self,
        inputs: &[u32],
        targets: &[u32],
        batch: usize,
    ) -> Result<Option<(f32, Vec<f32>)>> {
        if !(self.fused() && self.device.is_cpu()) {
            return Ok(None);
        }
        let params = self.flat_values()?;
        let model = (&self.config, &self.layout);
        let ids = (inputs, targets);
        let out = fused::loss_and_gradient(model, &params, ids, batch, &self.scratch)?;
        Ok(Some(out))
    }

    /// Uses the composed operations even on the CPU or a GPU: slower, the same
    /// function; for checking the fused kernels against.
    pub fn without_fused_kernels(mut self) -> Self {
        self.fused = false;
        self
    }

    fn linear(
        &self,
        x: &Tensor,
        (weight, bias): (&Tensor, &Tensor),
    ) -> candle_core::Result<Tensor> {
        if self.fused() {
            x.contiguous()?.apply_op3(weight, bias, fused::Linear)
        } else {
            linear(x, (weight, bias))
        }
    }

    fn layer_norm(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
    ) -> candle_core::Result<Tensor> {
        if self.fused() {
            x.contiguous()?.apply_op3(weight, bias, fused::LayerNorm)
        } else {
            layer_norm(x, weight, bias)
        }
    }

    /// Token ids as a `[batch, time]` tensor on the model's device.
    pub fn tokens(&self, ids: &[u32], batch: usize) -> Result<Tensor> {
        let time = ids.len() / batch.max(1);
        Ok(Tensor::from_slice(ids, (batch, time), &self.device)?)
    }

    /// All parameters as one flat buffer in layout order.
    pub fn flat_values(&self) -> Result<Vec<f32>> {
        let mut flat = Vec::with_capacity(self.layout.len());
        for var in &self.vars {
            flat.extend(
                var.as_tensor()
                    .flatten_all()?
                    .to_dtype(DType::F32)?
                    .to_vec1::<f32>()?,
            );
        }
        Ok(flat)
    }

    /// Replaces every parameter from a flat buffer in layout order.
    pub fn set_flat_values(&self, values: &[f32]) -> Result<()> {
        if values.len() != self.layout.len() {
            return Err(TrainerError::Length {
                expected: self.layout.len(),
                found: values.len(),
            });
        }
        for (var, spec) in self.vars.iter().zip(self.layout.specs()) {
            let t = Tensor::from_slice(
                &values[spec.range.clone()],
                spec.shape.as_slice(),
                &self.device,
            )?;
            var.set(&t)?;
        }
        Ok(())
    }
}

/// Causal multi-head attention from candle primitives: `[batch, time,
/// 3 × width]` q‖k‖v in, `[batch, time, width]` out.
fn composed_attention(qkv: &Tensor, heads: usize, mask: &Tensor) -> candle_core::Result<Tensor> {
    let (batch, time, three_width) = qkv.dims3()?;
    let d = three_width / 3;
    let head_dim = d / heads;
    let split = |part: usize| -> candle_core::Result<Tensor> {
        qkv.narrow(2, part * d, d)?
            .reshape((batch, time, heads, head_dim))?
            .transpose(1, 2)?
            .contiguous()
    };
    let (q, k, v) = (split(0)?, split(1)?, split(2)?);
    let scale = 1.0 / (head_dim as f64).sqrt();
    let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(mask)?;
    let attention = softmax_last_dim(&scores)?.matmul(&v)?;
    attention.transpose(1, 2)?.reshape((batch, time, d))
}

/// `x · W + b` with GPT-2's `[in, out]` weight layout, for `[batch, time, in]`.
fn linear(x: &Tensor, (weight, bias): (&Tensor, &Tensor)) -> candle_core::Result<Tensor> {
    let (batch, time, d_in) = x.dims3()?;
    let d_out = weight.dim(1)?;
    x.reshape((batch * time, d_in))?
        .matmul(weight)?
        .broadcast_add(bias)?
        .reshape((batch, time, d_out))
}

/// Layer norm over the last dimension, from primitives with a backward pass.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    let centered = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let variance = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let inv_std = (variance + LAYER_NORM_EPS)?.sqrt()?.recip()?;
    centered
        .broadcast_mul(&inv_std)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)
}

/// Softmax over the last dimension, from primitives with a backward pass.
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    // Subtracting the (detached) maximum changes nothing mathematically and
    // keeps `exp` finite.
    let shifted = x.broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?;
    let exp = shifted.exp()?;
    exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)
}

/// Log-softmax over the last dimension, from primitives with a backward pass.
pub fn log_softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    let shifted = x.broadcast_sub(&x.max_keepdim(D::Minus1)?.detach())?;
    let log_sum = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&log_sum)
}
