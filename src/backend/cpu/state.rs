//! Per-sequence state of the CPU backend: Gated DeltaNet conv and recurrent state for
//! each linear layer, and a contiguous K/V cache for each full-attention layer.

use crate::config::ModelConfig;

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
        }
    }
}
