//! The p2ptrain trainer: the model each peer trains and the optimizers around
//! it, with no knowledge of the network.
//!
//! Its job, per `DESIGN.md`: a GPT-2-style decoder in candle, a byte-level
//! tokenizer and a loader over the user's own files, the inner AdamW steps,
//! and the outer DiLoCo step (Nesterov momentum on the CPU in f32, parameters
//! walked in sorted-name order so every peer computes the same bits). The
//! pseudo-gradient it produces is the flat `f32` buffer that
//! [`p2ptrain_kernels`] compresses.
//!
//! The crate is filled by the trainer issue; it has no items yet.
