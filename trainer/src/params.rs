//! The parameter table: every tensor's GPT-2 name, shape and place in the
//! flat buffer that peers exchange.
//!
//! Names sort as byte strings and the flat buffer lays the tensors end to end
//! in that order, row-major — the layout every peer shares, whatever device
//! it trains on.

use std::collections::BTreeMap;
use std::ops::Range;

use p2ptrain_protocol::ModelConfig;

/// How a tensor is initialized.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// All zeros (biases).
    Zeros,
    /// All ones (layer-norm gains).
    Ones,
    /// Normal with mean 0 and this standard deviation.
    Normal(f32),
}

/// One parameter tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// GPT-2 name, e.g. `h.0.attn.c_attn.weight`.
    pub name: String,
    /// Shape, as GPT-2 checkpoints store it.
    pub shape: Vec<usize>,
    /// Initialization.
    pub init: Init,
    /// Range in the flat buffer.
    pub range: Range<usize>,
}

/// All parameters of a model, in sorted-name order.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamLayout {
    specs: Vec<ParamSpec>,
    len: usize,
}

impl ParamLayout {
    /// The table of a GPT-2-shaped model. Linear layers are stored as GPT-2's
    /// `Conv1D` stores them: weight `[in, out]`, so `y = x · W + b`. The
    /// output head is tied to `wte` and has no entry of its own.
    pub fn gpt2(config: &ModelConfig) -> Self {
        let d = config.d_model as usize;
        let std = 0.02;
        let proj_std = 0.02 / (2.0 * config.n_layer as f32).sqrt();
        let mut table: BTreeMap<String, (Vec<usize>, Init)> = BTreeMap::new();
        let mut add = |name: String, shape: Vec<usize>, init| {
            table.insert(name, (shape, init));
        };
        add(
            "wte.weight".into(),
            vec![config.vocab_size as usize, d],
            Init::Normal(std),
        );
        add(
            "wpe.weight".into(),
            vec![config.context_len as usize, d],
            Init::Normal(0.01),
        );
        add("ln_f.weight".into(), vec![d], Init::Ones);
        add("ln_f.bias".into(), vec![d], Init::Zeros);
        for i in 0..config.n_layer {
            let h = |rest: &str| format!("h.{i}.{rest}");
            add(h("ln_1.weight"), vec![d], Init::Ones);
            add(h("ln_1.bias"), vec![d], Init::Zeros);
            add(h("attn.c_attn.weight"), vec![d, 3 * d], Init::Normal(std));
            add(h("attn.c_attn.bias"), vec![3 * d], Init::Zeros);
            add(h("attn.c_proj.weight"), vec![d, d], Init::Normal(proj_std));
            add(h("attn.c_proj.bias"), vec![d], Init::Zeros);
            add(h("ln_2.weight"), vec![d], Init::Ones);
            add(h("ln_2.bias"), vec![d], Init::Zeros);
            add(h("mlp.c_fc.weight"), vec![d, 4 * d], Init::Normal(std));
            add(h("mlp.c_fc.bias"), vec![4 * d], Init::Zeros);
            add(
                h("mlp.c_proj.weight"),
                vec![4 * d, d],
                Init::Normal(proj_std),
            );
            add(h("mlp.c_proj.bias"), vec![d], Init::Zeros);
        }
        let mut len = 0;
        let specs = table
            .into_iter()
            .map(|(name, (shape, init))| {
                let n: usize = shape.iter().product();
                let range = len..len + n;
                len += n;
                ParamSpec {
                    name,
                    shape,
                    init,
                    range,
                }
            })
            .collect();
        Self { specs, len }
    }

    /// The parameters, sorted by name.
    pub fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }

    /// Total number of parameters (length of the flat buffer).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the model has no parameters (never, for a valid config).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The spec named `name`.
    pub fn get(&self, name: &str) -> Option<&ParamSpec> {
        self.specs
            .binary_search_by(|s| s.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.specs[i])
    }

    /// A fresh flat buffer, initialized from `seed` the same way on every
    /// machine.
    pub fn initial_values(&self, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64(seed);
        let mut values = Vec::with_capacity(self.len);
        for spec in &self.specs {
            let n = spec.range.len();
            match spec.init {
                Init::Zeros => values.extend(std::iter::repeat_n(0.0, n)),
                Init::Ones => values.extend(std::iter::repeat_n(1.0, n)),
                Init::Normal(std) => values.extend((0..n).map(|_| rng.normal() * std)),
            }
        }
        values
    }
}

/// SplitMix64 with a Box–Muller normal sampler.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn uniform_open(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform_open(), self.uniform_open());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Preset;

    #[test]
    fn tiny_layout_is_pinned() {
        let layout = ParamLayout::gpt2(&Preset::Tiny.config());
        let names: Vec<&str> = layout.specs().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "h.0.attn.c_attn.bias",
                "h.0.attn.c_attn.weight",
                "h.0.attn.c_proj.bias",
                "h.0.attn.c_proj.weight",
                "h.0.ln_1.bias",
                "h.0.ln_1.weight",
                "h.0.ln_2.bias",
                "h.0.ln_2.weight",
                "h.0.mlp.c_fc.bias",
                "h.0.mlp.c_fc.weight",
                "h.0.mlp.c_proj.bias",
                "h.0.mlp.c_proj.weight",
                "h.1.attn.c_attn.bias",
                "h.1.attn.c_attn.weight",
                "h.1.attn.c_proj.bias",
                "h.1.attn.c_proj.weight",
                "h.1.ln_1.bias",
                "h.1.ln_1.weight",
                "h.1.ln_2.bias",
                "h.1.ln_2.weight",
                "h.1.mlp.c_fc.bias",
                "h.1.mlp.c_fc.weight",
                "h.1.mlp.c_proj.bias",
                "h.1.mlp.c_proj.weight",
                "ln_f.bias",
                "ln_f.weight",
                "wpe.weight",
                "wte.weight",
            ]
        );
        assert_eq!(layout.len(), 437_760);
        assert_eq!(
            layout.get("h.0.attn.c_attn.weight").unwrap().range,
            384..49_536
        );
        assert_eq!(
            layout.get("wte.weight").unwrap().range,
            (437_760 - 32_768)..437_760
        );
    }

    #[test]
    fn preset_sizes() {
        let count = |p: Preset| ParamLayout::gpt2(&p.config()).len();
        assert_eq!(count(Preset::Small), 10_844_160);
        assert_eq!(count(Preset::Gpt2), 124_439_808);
    }

    /// The manifest's check bounds a model by the count the protocol
    /// computes; it must be this layout's length.
    #[test]
    fn the_protocols_parameter_count_is_this_layouts_length() {
        for preset in [Preset::Tiny, Preset::Small, Preset::Gpt2] {
            let config = preset.config();
            assert_eq!(
                ParamLayout::gpt2(&config).len() as u64,
                config.parameter_count()
            );
        }
        let odd = ModelConfig {
            vocab_size: 7,
            context_len: 5,
            n_layer: 3,
            n_head: 2,
            d_model: 6,
        };
        assert_eq!(ParamLayout::gpt2(&odd).len() as u64, odd.parameter_count());
    }

    #[test]
    fn initialization_depends_on_the_seed_only() {
        let layout = ParamLayout::gpt2(&Preset::Tiny.config());
        assert_eq!(layout.initial_values(3), layout.initial_values(3));
        assert_ne!(layout.initial_values(3), layout.initial_values(4));
        let values = layout.initial_values(3);
        let gain = layout.get("ln_f.weight").unwrap().range.clone();
        assert!(values[gain].iter().all(|&v| v == 1.0));
    }
}
