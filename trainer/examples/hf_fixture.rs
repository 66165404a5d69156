//! Writes the Hugging Face fixture that `scripts/check_hf_export.py` checks
//! against `transformers`: a small GPT-2 trained for a few steps on the
//! bundled corpus, exported with `hf::export`.
//!
//! `cargo run --release -p p2ptrain-trainer --example hf_fixture -- [DIR]`
//! (default `trainer/tests/fixtures/hf-gpt2-micro`).

use p2ptrain_protocol::{ModelConfig, RunManifest};
use p2ptrain_trainer::{device, hf, Corpus, LocalTrainer, ParamLayout, Sampler};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "trainer/tests/fixtures/hf-gpt2-micro".to_owned());
    let config = ModelConfig {
        vocab_size: 256,
        context_len: 32,
        n_layer: 2,
        n_head: 2,
        d_model: 32,
    };
    let mut inner = RunManifest::default().inner;
    inner.batch_size = 8;
    inner.lr = 3e-3;
    let values = ParamLayout::gpt2(&config).initial_values(11);
    let mut trainer = LocalTrainer::new(config, values, inner, 30, &device::parse("cpu")?)?;
    let mut sampler = Sampler::new(Corpus::bundled().train(), 11);
    for _ in 0..30 {
        let batch = sampler.next_batch(8, 32)?;
        trainer.step(&batch.inputs, &batch.targets)?;
    }
    hf::export(dir.as_ref(), &config, &trainer.params()?)?;
    println!("wrote {dir}");
    Ok(())
}
