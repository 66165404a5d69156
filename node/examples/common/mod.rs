//! What the benchmark examples share.

use p2ptrain_protocol::ModelConfig;

/// The model of the round benchmarks: a GPT-2 shape of 25.5M parameters
/// (Hivemind's all-reduce beside them averages as many).
pub const MODEL: ModelConfig = ModelConfig {
    vocab_size: 256,
    context_len: 256,
    n_layer: 8,
    n_head: 8,
    d_model: 512,
};
