//! The export loads in Hugging Face transformers and gives the same logits
//! as candle. The fixture folder was written by
//! `cargo run --release -p p2ptrain-trainer --example hf_fixture` and its
//! `logits.json` by `scripts/check_hf_export.py` (transformers 5.24.0,
//! torch 2.15.0): `GPT2LMHeadModel.from_pretrained` on the folder, fed the
//! 32 bytes of `TEXT`.

use candle_core::{Device, Tensor};
use p2ptrain_trainer::{hf, Gpt};

const FOLDER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/hf-gpt2-micro");

#[derive(serde::Deserialize)]
struct Reference {
    input_ids: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

#[test]
fn candle_matches_transformers_logits() {
    let (config, values) = hf::import(FOLDER.as_ref()).unwrap();
    let text = std::fs::read_to_string(format!("{FOLDER}/logits.json")).unwrap();
    let reference: Reference = serde_json::from_str(&text).unwrap();
    assert_eq!(
        reference.input_ids,
        b"To be, or not to be, that is the".map(u32::from)
    );
    let ids = Tensor::new(reference.input_ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    for fused in [true, false] {
        let mut model = Gpt::new(config, &values, &Device::Cpu).unwrap();
        if !fused {
            model = model.without_fused_kernels();
        }
        let logits = model
            .forward(&ids)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let mut worst = 0.0f32;
        for (row, expected) in logits.iter().zip(&reference.logits) {
            for (a, b) in row.iter().zip(expected) {
                worst = worst.max((a - b).abs());
            }
        }
        assert!(
            worst <= 1e-4,
            "fused {fused}: max |candle − transformers| = {worst}"
        );
    }
}
