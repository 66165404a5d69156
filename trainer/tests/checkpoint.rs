//! Checkpoints and Hugging Face folders: exact round trips, corruption and
//! truncation refused with a clear error.

use p2ptrain_trainer::checkpoint::{Checkpoint, TrainingState};
use p2ptrain_trainer::{hf, ParamLayout, Preset, TrainerError};

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("p2ptrain-ckpt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn checkpoint(with_state: bool) -> Checkpoint {
    let config = Preset::Tiny.config();
    let values = ParamLayout::gpt2(&config).initial_values(5);
    let n = values.len();
    let ramp = |k: f32| (0..n).map(|i| k * i as f32 / n as f32).collect::<Vec<_>>();
    Checkpoint {
        config,
        values,
        state: with_state.then(|| TrainingState {
            adam_step: 1234,
            adam_m: ramp(0.1),
            adam_v: ramp(0.01),
            outer_momentum: ramp(-0.5),
            residual: ramp(1e-3),
        }),
    }
}

#[test]
fn save_and_load_are_exact_and_hashed() {
    let dir = scratch("roundtrip");
    for with_state in [false, true] {
        let original = checkpoint(with_state);
        let path = dir.join(format!("ckpt-{with_state}.safetensors"));
        let hash = original.save(&path).unwrap();
        let (loaded, loaded_hash) = Checkpoint::load(&path).unwrap();
        assert_eq!(loaded, original);
        assert_eq!(loaded_hash, hash);
        // Same checkpoint, same bytes, same hash.
        assert_eq!(original.to_bytes().unwrap(), std::fs::read(&path).unwrap());
    }
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "no temporary files left: {names:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_flipped_byte_anywhere_is_refused() {
    let bytes = checkpoint(true).to_bytes().unwrap();
    // The whole header, then ~300 positions across the tensors and checksum.
    let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let positions = (0..header)
        .chain((header..bytes.len()).step_by(bytes.len() / 300))
        .chain([bytes.len() - 1]);
    for position in positions {
        let mut corrupted = bytes.clone();
        corrupted[position] ^= 0x10;
        assert!(
            Checkpoint::from_bytes(&corrupted).is_err(),
            "flipping byte {position} went unnoticed"
        );
    }
}

#[test]
fn a_truncated_file_is_refused_with_its_path() {
    let dir = scratch("truncated");
    let path = dir.join("ckpt.safetensors");
    checkpoint(false).save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    for keep in [0, 7, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..keep]).unwrap();
        match Checkpoint::load(&path) {
            Err(TrainerError::Checkpoint { path: p, reason }) => {
                assert_eq!(p, path);
                assert!(!reason.is_empty());
            }
            other => panic!("truncated to {keep} bytes: {other:?}"),
        }
    }
    assert!(matches!(
        Checkpoint::load(&dir.join("missing")),
        Err(TrainerError::Io { .. })
    ));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn hugging_face_export_imports_back_exactly() {
    let dir = scratch("hf");
    let original = checkpoint(false);
    hf::export(&dir, &original.config, &original.values).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "gpt2");
    assert_eq!(config["activation_function"], "gelu_new");
    assert_eq!(config["n_embd"], 128);
    let (imported_config, values) = hf::import(&dir).unwrap();
    assert_eq!(imported_config, original.config);
    assert_eq!(values, original.values);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn an_import_with_a_missing_tensor_names_it() {
    let dir = scratch("hf-missing");
    let original = checkpoint(false);
    hf::export(&dir, &original.config, &original.values).unwrap();
    // Rewrite the weights without ln_f.bias.
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<_> = file
        .iter()
        .filter(|(name, _)| *name != "ln_f.bias")
        .collect();
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors::serialize(kept, None).unwrap(),
    )
    .unwrap();
    match hf::import(&dir) {
        Err(TrainerError::Checkpoint { reason, .. }) => {
            assert!(reason.contains("ln_f.bias"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn training_resumed_from_a_checkpoint_continues_bit_for_bit() {
    use candle_core::Device;
    use p2ptrain_trainer::optim::AdamW;
    use p2ptrain_trainer::{Corpus, Gpt, LocalTrainer, Sampler};

    let config = Preset::Tiny.config();
    let mut inner = p2ptrain_protocol::RunManifest::default().inner;
    inner.batch_size = 4;
    let batches: Vec<_> = {
        let mut sampler = Sampler::new(Corpus::bundled().train(), 3);
        (0..5).map(|_| sampler.next_batch(4, 64).unwrap()).collect()
    };
    let fresh = || {
        let values = ParamLayout::gpt2(&config).initial_values(9);
        LocalTrainer::new(config, values, inner, 5, &Device::Cpu).unwrap()
    };

    let mut straight = fresh();
    for b in &batches {
        straight.step(&b.inputs, &b.targets).unwrap();
    }

    let dir = scratch("resume");
    let path = dir.join("ckpt.safetensors");
    let mut first = fresh();
    for b in &batches[..3] {
        first.step(&b.inputs, &b.targets).unwrap();
    }
    let adam = first.optimizer().unwrap();
    let (m, v) = adam.moments();
    Checkpoint {
        config,
        values: first.params().unwrap().to_vec(),
        state: Some(TrainingState {
            adam_step: adam.steps_taken(),
            adam_m: m.to_vec(),
            adam_v: v.to_vec(),
            outer_momentum: vec![0.0; m.len()],
            residual: vec![0.0; m.len()],
        }),
    }
    .save(&path)
    .unwrap();
    drop(adam);
    drop(first);

    let (loaded, _) = Checkpoint::load(&path).unwrap();
    let state = loaded.state.unwrap();
    let adam = AdamW::from_state(inner, 5, state.adam_step, state.adam_m, state.adam_v).unwrap();
    let model = Gpt::new(loaded.config, &loaded.values, &Device::Cpu).unwrap();
    let mut resumed = LocalTrainer::with_optimizer(model, loaded.values, adam, 4).unwrap();
    for b in &batches[3..] {
        resumed.step(&b.inputs, &b.targets).unwrap();
    }
    let same = resumed
        .params()
        .unwrap()
        .iter()
        .zip(straight.params().unwrap().iter())
        .all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(
        same,
        "resumed training diverged from uninterrupted training"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
