//! State of the CPU backend: per-sequence Gated DeltaNet conv and recurrent state for
//! each linear layer and the MTP head's own K/V cache with the main-model hidden states
//! it has not consumed yet (a slot; snapshots of it for the prefix cache), and the paged
//! K/V cache of the full-attention layers, addressed through each chunk's block list as
//! the cuda backend addresses its pages (so shared prefix blocks have a CPU twin).

use super::super::Capacity;
use crate::config::ModelConfig;
use anyhow::{ensure, Result};

#[derive(Clone)]
pub struct SlotState {
    /// Tokens this slot has seen.
    pub len: usize,
    /// Per linear layer: [channels, kernel-1] last conv inputs.
    pub conv: Vec<Vec<f32>>,
    /// Per linear layer: [value heads, dk, dv] fp32 recurrent state.
    pub recurrent: Vec<Vec<f32>>,
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
        SlotState {
            len: 0,
            conv: vec![vec![0.0; c.linear_qkv_dim() * (c.conv_kernel - 1)]; nl],
            recurrent: vec![vec![0.0; c.linear_num_value_heads * c.linear_key_head_dim * c.linear_value_head_dim]; nl],
            mtp: MtpState::default(),
        }
    }
}

/// Keys and values of every full-attention layer in `kv_blocks` pages of `block_size`
/// token rows ([kv heads, head_dim] per row).
pub struct PagedKv {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    row: usize,
    block_size: usize,
    blocks: usize,
}

impl PagedKv {
    pub fn new(c: &ModelConfig, cap: &Capacity) -> Self {
        let row = c.num_kv_heads * c.head_dim;
        let n = cap.kv_blocks * cap.block_size * row;
        let layers = c.num_full_layers();
        // One zeroed allocation per layer (not clones of one): pages are only touched
        // when a block is written.
        let pool = || (0..layers).map(|_| vec![0.0f32; n]).collect::<Vec<_>>();
        PagedKv { k: pool(), v: pool(), row, block_size: cap.block_size, blocks: cap.kv_blocks }
    }

    /// Checks that `blocks` are real pages that hold `tokens` tokens.
    pub fn check(&self, blocks: &[u32], tokens: usize) -> Result<()> {
        ensure!(
            blocks.len() * self.block_size >= tokens,
            "cpu backend: {} KV blocks of {} cannot hold {tokens} tokens",
            blocks.len(),
            self.block_size
        );
        if let Some(b) = blocks.iter().find(|&&b| b as usize >= self.blocks) {
            anyhow::bail!("cpu backend: KV block {b} is out of range ({} blocks)", self.blocks);
        }
        Ok(())
    }

    fn at(&self, blocks: &[u32], pos: usize) -> usize {
        (blocks[pos / self.block_size] as usize * self.block_size + pos % self.block_size) * self.row
    }

    /// Stores rows of `k` and `v` for positions start.. of layer `layer`.
    pub fn write(&mut self, layer: usize, blocks: &[u32], start: usize, k: &[f32], v: &[f32]) {
        for (i, (kr, vr)) in k.chunks_exact(self.row).zip(v.chunks_exact(self.row)).enumerate() {
            let at = self.at(blocks, start + i);
            self.k[layer][at..at + self.row].copy_from_slice(kr);
            self.v[layer][at..at + self.row].copy_from_slice(vr);
        }
    }

    /// Keys and values of positions 0..len of layer `layer`, contiguous.
    pub fn gather(&self, layer: usize, blocks: &[u32], len: usize) -> (Vec<f32>, Vec<f32>) {
        let (mut k, mut v) = (Vec::with_capacity(len * self.row), Vec::with_capacity(len * self.row));
        for p in 0..len {
            let at = self.at(blocks, p);
            k.extend_from_slice(&self.k[layer][at..at + self.row]);
            v.extend_from_slice(&self.v[layer][at..at + self.row]);
        }
        (k, v)
    }
}
