//! p2ptrain's compression kernels: what a peer does to its pseudo-gradient
//! before sending it, and what everyone does with the payloads received.
//!
//! Everything works on one flat `f32` buffer — the model's parameters laid end
//! to end in sorted-name order. [`compress()`] cuts it into chunks
//! (`CompressionSettings::chunk_len`, 4096 by default), keeps the top
//! `density` fraction of each chunk by magnitude (1% by default), packs the
//! kept positions in as few bits as the chunk needs (12 for 4096) and
//! quantizes the kept values to 8 bits (or 4, or 2) against one scale per
//! chunk. What the payload does not carry stays in a residual that is added to
//! the next round's delta (error feedback). [`decompress_into`] adds a weighted
//! payload into a dense buffer; [`aggregate`] takes the weighted mean of many,
//! with the same bits whatever order they arrive in.
//!
//! Every floating-point step is spelled out in the function docs — plain
//! binary32 operations, each rounded on its own — so that another
//! implementation (a GPU one, say) can produce the same payload bytes and the
//! same aggregate bits. Work is spread over the current rayon pool chunk by
//! chunk; chunks are independent, so the thread count never changes a result.
//!
//! # Layout
//!
//! - `compress` — [`compress()`]: residual + delta → [`Payload`], residual
//!   updated in place.
//! - `decompress` — [`decompress_into`]: `dense += weight × payload`;
//!   [`aggregate`], [`aggregate_into`], [`AggregateInput`]: the weighted mean
//!   in canonical (key) order.
//! - `payload` — [`Payload`]: accessors, `bits_per_param`, `encode`/`decode`;
//!   its docs specify the byte format.
//! - `wire` — the payload's bincode `Encode`/`Decode`, with every validity
//!   check.
//! - `layout` — chunk boundaries, `k` per chunk, byte ranges of each chunk's
//!   packed indices and values.
//! - `topk` — exact per-chunk top-k by magnitude.
//! - `quant` — per-chunk uniform quantization.
//! - `pack` — LSB-first bit packing.
//! - `error` — [`KernelError`].
//! - `cuda` (feature `cuda`) — the same compress, decompress-into and
//!   aggregate on an NVIDIA GPU, bit for bit; the crate's only CUDA code.
//!
//! # Example
//!
//! ```
//! use p2ptrain_kernels::{aggregate, compress, decompress_into, AggregateInput, Payload};
//! use p2ptrain_protocol::{CompressionSettings, Digest};
//!
//! let settings = CompressionSettings::default();
//! let delta: Vec<f32> = (0..20_000).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
//! let mut residual = vec![0.0; delta.len()];
//!
//! // Compress; the residual keeps what was not sent.
//! let payload = compress(&delta, &mut residual, &settings)?;
//! assert_eq!(payload.kept(), 4 * 41 + 36);
//!
//! // Over the wire and back.
//! let received = Payload::decode(&payload.encode()?)?;
//! assert_eq!(received, payload);
//!
//! // Sent + kept back = delta, up to rounding.
//! let mut sent = vec![0.0; delta.len()];
//! decompress_into(&received, 1.0, &mut sent)?;
//! for i in 0..delta.len() {
//!     assert!((sent[i] + residual[i] - delta[i]).abs() <= 1e-6);
//! }
//!
//! // The mean of two contributions, keyed by their ids.
//! let inputs = [
//!     AggregateInput { key: Digest::of(b"a"), payload: &payload, weight: 1000.0 },
//!     AggregateInput { key: Digest::of(b"b"), payload: &received, weight: 1000.0 },
//! ];
//! let mean = aggregate(&inputs)?;
//! assert_eq!(mean, sent);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod compress;
#[cfg(feature = "cuda")]
pub mod cuda;
mod decay;
mod decompress;
mod error;
mod layout;
mod pack;
mod payload;
mod quant;
mod topk;
mod wire;

pub use compress::compress;
pub use decay::{decay_residual, validate_residual_decay};
pub use decompress::{aggregate, aggregate_into, decompress_into, AggregateInput, WeightedMean};
pub use error::KernelError;
pub use payload::Payload;
pub use wire::NON_FINITE_SCALE;
