//! Hugging Face folders: `config.json` + `model.safetensors`, as
//! `transformers.GPT2LMHeadModel.from_pretrained` reads and writes them.
//!
//! `export` writes one; `import` reads one — ours, or an existing GPT-2 such
//! as the original `gpt2` weights — so a run can fine-tune it on local data.

use std::fs;
use std::path::Path;

use p2ptrain_protocol::ModelConfig;
use safetensors::tensor::SafeTensors;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{bad, io, model_tensors, read_model, serialize, write_atomically};
use crate::model::LAYER_NORM_EPS;
use crate::params::ParamLayout;
use crate::{config, Result, TrainerError};

/// The fields of a Hugging Face `GPT2Config` that p2ptrain reads and writes.
#[derive(Debug, Serialize, Deserialize)]
struct HfConfig {
    #[serde(default)]
    architectures: Vec<String>,
    model_type: String,
    vocab_size: u32,
    n_positions: u32,
    n_embd: u32,
    n_layer: u32,
    n_head: u32,
    #[serde(default)]
    n_inner: Option<u32>,
    #[serde(default = "gelu_new")]
    activation_function: String,
    #[serde(default = "eps")]
    layer_norm_epsilon: f64,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    resid_pdrop: f64,
    #[serde(default)]
    embd_pdrop: f64,
    #[serde(default)]
    attn_pdrop: f64,
    #[serde(default)]
    bos_token_id: Option<u32>,
    #[serde(default)]
    eos_token_id: Option<u32>,
}

/// GPT-2's end-of-text token, when the vocabulary is GPT-2's own.
fn end_of_text(vocab_size: u32) -> Option<u32> {
    (vocab_size == 50_257).then_some(50_256)
}

fn gelu_new() -> String {
    "gelu_new".into()
}

fn eps() -> f64 {
    LAYER_NORM_EPS
}

/// Writes `values` (flat, layout order) of a model shaped `config` to `dir`
/// as a Hugging Face GPT-2 folder. Creates `dir` if needed.
pub fn export(dir: &Path, config: &ModelConfig, values: &[f32]) -> Result<()> {
    config::validate(config)?;
    let layout = ParamLayout::gpt2(config);
    if values.len() != layout.len() {
        return Err(TrainerError::Length {
            expected: layout.len(),
            found: values.len(),
        });
    }
    fs::create_dir_all(dir).map_err(|source| io(dir, source))?;
    let hf = HfConfig {
        architectures: vec!["GPT2LMHeadModel".into()],
        model_type: "gpt2".into(),
        vocab_size: config.vocab_size,
        n_positions: config.context_len,
        n_embd: config.d_model,
        n_layer: config.n_layer,
        n_head: config.n_head,
        n_inner: None,
        activation_function: gelu_new(),
        layer_norm_epsilon: LAYER_NORM_EPS,
        tie_word_embeddings: Some(true),
        resid_pdrop: 0.0,
        embd_pdrop: 0.0,
        attn_pdrop: 0.0,
        bos_token_id: end_of_text(config.vocab_size),
        eos_token_id: end_of_text(config.vocab_size),
    };
    let json = serde_json::to_vec_pretty(&hf).map_err(|e| bad(dir, e.to_string()))?;
    write_atomically(&dir.join("config.json"), &json)?;
    let tensors = model_tensors(&layout, values);
    write_atomically(&dir.join("model.safetensors"), &serialize(&tensors)?)
}

/// Reads a Hugging Face GPT-2 folder. Accepts parameter names with or
/// without the `transformer.` prefix; the tied `lm_head.weight` and attention
/// mask buffers are ignored.
pub fn import(dir: &Path) -> Result<(ModelConfig, Vec<f32>)> {
    let config_path = dir.join("config.json");
    let text = fs::read(&config_path).map_err(|source| io(&config_path, source))?;
    let hf: HfConfig =
        serde_json::from_slice(&text).map_err(|e| bad(&config_path, e.to_string()))?;
    let unsupported = |what: String| {
        Err(bad(
            &config_path,
            format!("unsupported GPT-2 variant: {what}"),
        ))
    };
    if hf.model_type != "gpt2" {
        return unsupported(format!("model_type {:?}", hf.model_type));
    }
    if !matches!(
        hf.activation_function.as_str(),
        "gelu_new" | "gelu_pytorch_tanh"
    ) {
        return unsupported(format!("activation {:?}", hf.activation_function));
    }
    if hf.n_inner.is_some_and(|n| n != 4 * hf.n_embd) || hf.tie_word_embeddings == Some(false) {
        return unsupported("n_inner other than 4 × n_embd, or untied embeddings".into());
    }
    if (hf.layer_norm_epsilon - LAYER_NORM_EPS).abs() > 1e-12 {
        return unsupported(format!("layer_norm_epsilon {}", hf.layer_norm_epsilon));
    }
    let config = ModelConfig {
        vocab_size: hf.vocab_size,
        context_len: hf.n_positions,
        n_layer: hf.n_layer,
        n_head: hf.n_head,
        d_model: hf.n_embd,
    };
    config::validate(&config)?;
    let weights_path = dir.join("model.safetensors");
    let bytes = fs::read(&weights_path).map_err(|source| io(&weights_path, source))?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(&weights_path, format!("not a safetensors file: {e}")))?;
    let prefixed = file.names().iter().any(|n| n.starts_with("transformer."));
    let values = read_model(&file, &config, &weights_path, |name| {
        if prefixed {
            format!("transformer.{name}")
        } else {
            name.to_owned()
        }
    })?;
    Ok((config, values))
}
