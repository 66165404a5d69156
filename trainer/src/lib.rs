//! The p2ptrain trainer: the model each peer trains and the optimizers around
//! it. It knows nothing of the network.
//!
//! A GPT-2-architecture decoder in candle ([`Gpt`]) with GPT-2's parameter
//! names and layouts; a parameter table ([`ParamLayout`]) that lays every
//! tensor end to end in sorted-name order — the flat `f32` buffer that peers
//! exchange and [`p2ptrain_kernels`] compresses; the inner AdamW and the outer
//! DiLoCo Nesterov step on that buffer, on the CPU in a fixed order, so every
//! peer computes the same bits; checkpoints in safetensors, and Hugging Face
//! folders that `transformers` loads.
//!
//! # Layout
//!
//! - [`allocator`] — keep freed tensor memory for reuse (binaries opt in).
//! - [`config`] — presets (`tiny`, `small`, `gpt2`) and their checks.
//! - [`params`] — [`ParamLayout`]: names, shapes, flat ranges, initialization.
//! - [`model`] — [`Gpt`]: forward pass and loss, built only from candle
//!   operations that have a backward pass.
//! - [`fused`] — fused CPU kernels with their own backward pass.
//! - [`optim`] — [`AdamW`](optim::AdamW), [`OuterNesterov`](optim::OuterNesterov),
//!   [`pseudo_gradient`](optim::pseudo_gradient).
//! - [`train`] — [`LocalTrainer`]: a replica and its inner optimizer.
//! - [`data`] — [`Corpus`] (a `--data` file or folder, or the bundled
//!   Shakespeare), the split, per-peer shards, [`Sampler`]/[`Batch`], byte tokens.
//! - [`checkpoint`] — atomic, checksummed safetensors checkpoints.
//! - [`hf`] — export to and import from Hugging Face GPT-2 folders.
//! - [`device`] — `cpu`, `cuda:N` or `auto`, chosen at run time, and
//!   [`ErrorFeedback`](device::ErrorFeedback): the residual and the
//!   compression kernels on the model's device.
//!
//! # Example
//!
//! ```
//! use p2ptrain_trainer::{device, LocalTrainer, ParamLayout, Preset};
//! use p2ptrain_protocol::RunManifest;
//!
//! let config = Preset::Tiny.config();
//! let manifest = RunManifest::default();
//! let values = ParamLayout::gpt2(&config).initial_values(0);
//! let mut inner = manifest.inner;
//! inner.batch_size = 2;
//! let mut trainer = LocalTrainer::new(config, values, inner, 10, &device::parse("cpu")?)?;
//!
//! // Two sequences of 64 bytes: predict each next byte.
//! let text: Vec<u32> = b"to be or not to be, that is the question. ".iter().cycle().take(130).map(|&b| u32::from(b)).collect();
//! let inputs: Vec<u32> = [&text[0..64], &text[60..124]].concat();
//! let targets: Vec<u32> = [&text[1..65], &text[61..125]].concat();
//! let first = trainer.step(&inputs, &targets)?.loss;
//! for _ in 0..5 {
//!     trainer.step(&inputs, &targets)?;
//! }
//! assert!(trainer.step(&inputs, &targets)?.loss < first);
//! # Ok::<(), p2ptrain_trainer::TrainerError>(())
//! ```

pub mod allocator;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
mod error;
pub mod fused;
pub mod hf;
pub mod model;
pub mod optim;
pub mod params;
mod tensor_adamw;
pub mod train;

pub use config::Preset;
pub use data::{Batch, Corpus, DataError, Sampler};
pub use error::{Result, TrainerError};
pub use model::Gpt;
pub use params::ParamLayout;
pub use train::{LocalTrainer, PassProgress, StepReport};
