//! Per-sequence state of the CPU backend: Gated DeltaNet conv and recurrent state for
//! each linear layer, a contiguous K/V cache for each full-attention layer, and the MTP
//! head's own K/V cache with the main-model hidden states it has not consumed yet.

use crate::config::ModelConfig;

#[derive(Clone)]
pub struct SlotState {
    /// Tokens this slot has seen.
    pub len: usize,
    /// Per linear layer: [channels, kernel-1] last conv inputs.
    pub conv: Vec<Vec<f32>>,
    /// Per linear layer: [value heads, dk, dv] fp32 recurrent state.
    pub recurrent: Vec<Vec<f32>>,
    /// Per full layer: [len, kv heads, head_dim].
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    /// The MTP head's state (empty unless the model has one).
    pub mtp: MtpState,
}

/// The MTP layer's cache for one sequence. Entry t of its K/V holds the pair
/// (h_t, x_{t+1}) at RoPE position t, as SGLang and vLLM index their draft caches.
#[derive(Clone, Debug, Default)]
pub struct MtpState {
    /// [pairs, kv heads, head_dim].
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    /// Pairs in the cache; the next pair to add is (h_len, x_{len+1}).
    pub len: usize,
    /// Final-normed main-model hidden states of positions len.. (one row each), waiting
    /// for the token after them.
    pub pending_hidden: Vec<f32>,
    /// The tokens at positions len.. (same rows as `pending_hidden`).
    pub pending_tokens: Vec<u32>,
}

impl SlotState {
    pub fn new(c: &ModelConfig) -> Self {
        let nl = c.num_linear_layers();
        let nf = c.num_full_layers();
        SlotState {
            len: 0,
            conv: vec![vec![0.0; c.linear_qkv_dim() * (c.conv_kernel - 1)]; nl],
            recurrent: vec![vec![0.0; c.linear_num_value_heads * c.linear_key_head_dim * c.linear_value_head_dim]; nl],
            k: vec![Vec::new(); nf],
            v: vec![Vec::new(); nf],
            mtp: MtpState::default(),
        }
    }
}
