//! Checkpoints: safetensors files with GPT-2's parameter names, written
//! atomically and named by their blake3 hash.
//!
//! A checkpoint holds the model and, optionally, the state a peer needs to
//! resume training exactly: the inner AdamW moments and step, the outer
//! momentum and the error-feedback residual. Besides the model's tensors it
//! carries `p2ptrain.*` tensors: the model shape, the state, and a blake3
//! checksum of everything else, so a flipped byte anywhere is caught on load.
//!
//! ```
//! use p2ptrain_trainer::checkpoint::Checkpoint;
//! use p2ptrain_trainer::{ParamLayout, Preset};
//!
//! let config = Preset::Tiny.config();
//! let values = ParamLayout::gpt2(&config).initial_values(0);
//! let checkpoint = Checkpoint { config, values, state: None };
//! let bytes = checkpoint.to_bytes()?;
//! assert_eq!(Checkpoint::from_bytes(&bytes)?, checkpoint);
//!
//! let mut corrupted = bytes.clone();
//! *corrupted.last_mut().unwrap() ^= 1;
//! assert!(Checkpoint::from_bytes(&corrupted).is_err());
//! # Ok::<(), p2ptrain_trainer::TrainerError>(())
//! ```

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use p2ptrain_protocol::{Digest, ModelConfig};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::params::ParamLayout;
use crate::{Result, TrainerError};

const CONFIG: &str = "p2ptrain.config";
const CHECKSUM: &str = "p2ptrain.blake3";
const ADAM_STEP: &str = "p2ptrain.adam.step";
const ADAM_M: &str = "p2ptrain.adam.m";
const ADAM_V: &str = "p2ptrain.adam.v";
const OUTER_MOMENTUM: &str = "p2ptrain.outer.momentum";
const RESIDUAL: &str = "p2ptrain.residual";

/// What a peer needs besides the weights to resume exactly where it stopped.
/// Every buffer is flat, in layout order.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingState {
    /// Inner AdamW steps taken.
    pub adam_step: u64,
    /// AdamW first moments.
    pub adam_m: Vec<f32>,
    /// AdamW second moments.
    pub adam_v: Vec<f32>,
    /// Outer Nesterov momentum.
    pub outer_momentum: Vec<f32>,
    /// Error-feedback residual of the compressor.
    pub residual: Vec<f32>,
}

/// A model (and optionally its training state) as stored on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The model's shape.
    pub config: ModelConfig,
    /// Parameters, flat, in layout order.
    pub values: Vec<f32>,
    /// Training state, when saved for resuming.
    pub state: Option<TrainingState>,
}

impl Checkpoint {
    /// The safetensors bytes. The same checkpoint always gives the same bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let layout = ParamLayout::gpt2(&self.config);
        check_len(layout.len(), self.values.len())?;
        let mut tensors = model_tensors(&layout, &self.values);
        let c = &self.config;
        let config = [c.vocab_size, c.context_len, c.n_layer, c.n_head, c.d_model];
        let config_bytes = config.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.push((CONFIG.into(), Dtype::U32, vec![5], config_bytes));
        if let Some(state) = &self.state {
            for buffer in [
                &state.adam_m,
                &state.adam_v,
                &state.outer_momentum,
                &state.residual,
            ] {
                check_len(layout.len(), buffer.len())?;
            }
            let n = layout.len();
            tensors.push((
                ADAM_STEP.into(),
                Dtype::U64,
                vec![1],
                state.adam_step.to_le_bytes().to_vec(),
            ));
            tensors.push((ADAM_M.into(), Dtype::F32, vec![n], f32_bytes(&state.adam_m)));
            tensors.push((ADAM_V.into(), Dtype::F32, vec![n], f32_bytes(&state.adam_v)));
            tensors.push((
                OUTER_MOMENTUM.into(),
                Dtype::F32,
                vec![n],
                f32_bytes(&state.outer_momentum),
            ));
            tensors.push((
                RESIDUAL.into(),
                Dtype::F32,
                vec![n],
                f32_bytes(&state.residual),
            ));
        }
        let checksum = checksum(
            tensors
                .iter()
                .map(|(name, _, _, data)| (name.as_str(), data.as_slice())),
        );
        tensors.push((CHECKSUM.into(), Dtype::U8, vec![32], checksum.to_vec()));
        serialize(&tensors)
    }

    /// Parses and checks bytes written by [`Checkpoint::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let path = Path::new("<bytes>");
        let file = SafeTensors::deserialize(bytes)
            .map_err(|e| bad(path, format!("not a safetensors file: {e}")))?;
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(path, format!("not a safetensors file: {e}")))?;
        let expected_metadata = HashMap::from([("format".to_owned(), "pt".to_owned())]);
        if header.metadata().as_ref() != Some(&expected_metadata) {
            return Err(bad(
                path,
                "unexpected header metadata: the file is corrupted or not a p2ptrain checkpoint"
                    .into(),
            ));
        }
        let mut named: Vec<(&str, &[u8])> = file
            .iter()
            .map(|(name, view)| (name, view.data()))
            .collect();
        named.retain(|(name, _)| *name != CHECKSUM);
        named.sort_by_key(|(name, _)| *name);
        let stored = file.tensor(CHECKSUM).map_err(|_| {
            bad(
                path,
                "no p2ptrain checksum: not a p2ptrain checkpoint".into(),
            )
        })?;
        if stored.data() != checksum(named.iter().copied()) {
            return Err(bad(path, "checksum mismatch: the file is corrupted".into()));
        }
        let config_view = tensor(&file, CONFIG, Dtype::U32, &[5], path)?;
        let v: Vec<u32> = config_view
            .data()
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let config = ModelConfig {
            vocab_size: v[0],
            context_len: v[1],
            n_layer: v[2],
            n_head: v[3],
            d_model: v[4],
        };
        crate::config::validate(&config)?;
        let values = read_model(&file, &config, path, |name| name.to_owned())?;
        let n = values.len();
        let state = match file.tensor(ADAM_STEP) {
            Err(_) => None,
            Ok(_) => {
                let step = tensor(&file, ADAM_STEP, Dtype::U64, &[1], path)?.data();
                let mut step_bytes = [0u8; 8];
                step_bytes.copy_from_slice(step);
                let flat = |name| {
                    tensor(&file, name, Dtype::F32, &[n], path).map(|t| f32_values(t.data()))
                };
                Some(TrainingState {
                    adam_step: u64::from_le_bytes(step_bytes),
                    adam_m: flat(ADAM_M)?,
                    adam_v: flat(ADAM_V)?,
                    outer_momentum: flat(OUTER_MOMENTUM)?,
                    residual: flat(RESIDUAL)?,
                })
            }
        };
        Ok(Self {
            config,
            values,
            state,
        })
    }

    /// Writes the checkpoint atomically and returns its hash (blake3 of the
    /// file's bytes).
    pub fn save(&self, path: &Path) -> Result<Digest> {
        let bytes = self.to_bytes()?;
        write_atomically(path, &bytes)?;
        Ok(Digest::of(&bytes))
    }

    /// Reads and checks a checkpoint file.
    pub fn load(path: &Path) -> Result<(Self, Digest)> {
        let bytes = fs::read(path).map_err(|source| io(path, source))?;
        let checkpoint = Self::from_bytes(&bytes).map_err(|e| match e {
            TrainerError::Checkpoint { reason, .. } => bad(path, reason),
            other => other,
        })?;
        Ok((checkpoint, Digest::of(&bytes)))
    }
}

/// A tensor ready for [`serialize`]: name, dtype, shape, little-endian bytes.
pub(crate) type NamedTensor = (String, Dtype, Vec<usize>, Vec<u8>);

/// The model's tensors under their GPT-2 names, from a flat buffer.
pub(crate) fn model_tensors(layout: &ParamLayout, values: &[f32]) -> Vec<NamedTensor> {
    layout
        .specs()
        .iter()
        .map(|s| {
            let bytes = f32_bytes(&values[s.range.clone()]);
            (s.name.clone(), Dtype::F32, s.shape.clone(), bytes)
        })
        .collect()
}

/// Reads the model tensors of `config` from `file`, where `stored_name` maps
/// a GPT-2 name to the name in the file.
pub(crate) fn read_model(
    file: &SafeTensors<'_>,
    config: &ModelConfig,
    path: &Path,
    stored_name: impl Fn(&str) -> String,
) -> Result<Vec<f32>> {
    let layout = ParamLayout::gpt2(config);
    let mut values = Vec::with_capacity(layout.len());
    for spec in layout.specs() {
        let view = tensor(
            file,
            &stored_name(&spec.name),
            Dtype::F32,
            &spec.shape,
            path,
        )?;
        values.extend(f32_values(view.data()));
    }
    Ok(values)
}

fn tensor<'a>(
    file: &SafeTensors<'a>,
    name: &str,
    dtype: Dtype,
    shape: &[usize],
    path: &Path,
) -> Result<TensorView<'a>> {
    let view = file
        .tensor(name)
        .map_err(|_| bad(path, format!("tensor {name} is missing")))?;
    if view.dtype() != dtype || view.shape() != shape {
        return Err(bad(
            path,
            format!(
                "tensor {name} is {:?} {:?}, expected {dtype:?} {shape:?}",
                view.dtype(),
                view.shape()
            ),
        ));
    }
    Ok(view)
}

/// Serializes named tensors with the one metadata entry Hugging Face
/// expects; safetensors orders tensors by dtype and name, so the bytes are
/// deterministic.
pub(crate) fn serialize(tensors: &[NamedTensor]) -> Result<Vec<u8>> {
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            TensorView::new(*dtype, shape.clone(), data).map(|view| (name.as_str(), view))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(Path::new("<bytes>"), e.to_string()))?;
    let metadata = HashMap::from([("format".to_owned(), "pt".to_owned())]);
    safetensors::serialize(views, Some(metadata))
        .map_err(|e| bad(Path::new("<bytes>"), e.to_string()))
}

/// blake3 over `name ‖ 0 ‖ len (u64 LE) ‖ data` for each tensor, in sorted-name order.
fn checksum<'a>(tensors: impl Iterator<Item = (&'a str, &'a [u8])>) -> [u8; 32] {
    let mut sorted: Vec<_> = tensors.collect();
    sorted.sort_by_key(|(name, _)| *name);
    let mut hasher = blake3::Hasher::new();
    for (name, data) in sorted {
        hasher.update(name.as_bytes());
        hasher.update(&[0]);
        hasher.update(&(data.len() as u64).to_le_bytes());
        hasher.update(data);
    }
    *hasher.finalize().as_bytes()
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, renames it
/// over `path` and syncs the directory: `path` holds the old or the new
/// contents, never a mix.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically_with(path, |file| file.write_all(bytes))
}

/// [`write_atomically`] of what `write` writes to the file, for contents
/// better streamed than built in memory first.
pub fn write_atomically_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(format!(".tmp{}", std::process::id()));
    let tmp = dir.join(name);
    let written = File::create(&tmp).and_then(|file| {
        let mut buffered = std::io::BufWriter::with_capacity(1 << 20, file);
        write(&mut buffered)?;
        buffered
            .into_inner()
            .map_err(std::io::IntoInnerError::into_error)?
            .sync_all()
    });
    if let Err(source) = written.and_then(|()| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(io(path, source));
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| io(dir, source))
}

pub(crate) fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub(crate) fn f32_values(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn check_len(expected: usize, found: usize) -> Result<()> {
    if expected == found {
        Ok(())
    } else {
        Err(TrainerError::Length { expected, found })
    }
}

pub(crate) fn bad(path: &Path, reason: String) -> TrainerError {
    TrainerError::Checkpoint {
        path: PathBuf::from(path),
        reason,
    }
}

pub(crate) fn io(path: &Path, source: std::io::Error) -> TrainerError {
    TrainerError::Io {
        path: PathBuf::from(path),
        error: source,
    }
}
