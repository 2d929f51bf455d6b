//! Fixed device pools, sized once at start-up: Gated DeltaNet state slots (fp32
//! recurrent state and conv ring per linear layer) and paged KV blocks for the
//! full-attention layers; plus the per-step scratch buffers.

use super::kernels::{ArgmaxScratch, DevPtr, GemmScratch, Kernels, GEMM_MAX_M};
use super::memory::DevBuf;
use crate::backend::step::MetaOffsets;
use crate::config::ModelConfig;
use anyhow::Result;

pub struct StatePools {
    /// [linear layer][entry][nv][dk][dv] fp32: the slots' states, then `spec_entries`
    /// scratch entries per layer (speculative verification's per-position states).
    pub recurrent: DevBuf,
    /// [linear layer][slot][conv_k][channels] fp32 ring.
    pub conv: DevBuf,
    /// [full layer][block][nkv][block_size][head_dim] bf16, keys and values.
    pub k_cache: DevBuf,
    pub v_cache: DevBuf,
    pub slots: usize,
    /// Recurrent entries per linear layer: the slots, then the verify scratch.
    pub entries: usize,
    pub block_size: usize,
    recurrent_per_slot: usize,
    conv_per_slot: usize,
    kv_per_layer: usize,
}

/// Bytes of one linear layer's fp32 recurrent state of one sequence.
pub fn recurrent_entry_bytes(c: &ModelConfig) -> usize {
    c.linear_num_value_heads * c.linear_key_head_dim * c.linear_value_head_dim * 4
}

/// Bytes of one linear layer's fp32 conv ring of one sequence (conv_k rows).
pub fn conv_ring_bytes(c: &ModelConfig) -> usize {
    c.conv_kernel * c.linear_qkv_dim() * 4
}

/// Bytes one slot of state takes across all linear layers.
pub fn slot_bytes(c: &ModelConfig) -> usize {
    c.num_linear_layers() * (recurrent_entry_bytes(c) + conv_ring_bytes(c))
}

/// Bytes one KV block takes across `kv_layers` full-attention layers (keys and values).
pub fn block_bytes(c: &ModelConfig, block_size: usize, kv_layers: usize) -> usize {
    kv_layers * 2 * 2 * c.num_kv_heads * block_size * c.head_dim
}

impl StatePools {
    /// Pools for `slots` sequences, `spec_entries` verify scratch states per linear layer
    /// and `kv_blocks` KV blocks of `kv_layers` layers (the full-attention layers, and the
    /// MTP layer's after them when it runs).
    pub fn new(c: &ModelConfig, slots: usize, spec_entries: usize, kv_blocks: usize, block_size: usize, kv_layers: usize) -> Result<Self> {
        let (recurrent_per_slot, conv_per_slot) = (recurrent_entry_bytes(c), conv_ring_bytes(c));
        let kv_per_layer = kv_blocks * c.num_kv_heads * block_size * c.head_dim * 2;
        let nl = c.num_linear_layers();
        let nf = kv_layers;
        Ok(StatePools {
            recurrent: DevBuf::zeroed(nl * (slots + spec_entries) * recurrent_per_slot, "the Gated DeltaNet state pool")?,
            conv: DevBuf::zeroed(nl * slots * conv_per_slot, "the conv state pool")?,
            k_cache: DevBuf::zeroed(nf * kv_per_layer, "the key cache")?,
            v_cache: DevBuf::zeroed(nf * kv_per_layer, "the value cache")?,
            slots,
            entries: slots + spec_entries,
            block_size,
            recurrent_per_slot,
            conv_per_slot,
            kv_per_layer,
        })
    }
    /// Base of linear layer `l`'s recurrent state ([entry][nv][dk][dv]).
    pub fn recurrent_layer(&self, l: usize) -> DevPtr {
        self.recurrent.at(l * self.entries * self.recurrent_per_slot)
    }
    /// Recurrent entry `e` (a slot, or a verify scratch entry) of linear layer `l`, and its
    /// size in bytes.
    pub fn recurrent_slot(&self, l: usize, e: usize) -> (DevPtr, usize) {
        debug_assert!(e < self.entries);
        (self.recurrent.at((l * self.entries + e) * self.recurrent_per_slot), self.recurrent_per_slot)
    }
    /// Linear layer `l`'s conv ring of `slot`, and its size in bytes.
    pub fn conv_slot(&self, l: usize, slot: usize) -> (DevPtr, usize) {
        (self.conv.at((l * self.slots + slot) * self.conv_per_slot), self.conv_per_slot)
    }
    pub fn conv_layer(&self, l: usize) -> DevPtr {
        self.conv.at(l * self.slots * self.conv_per_slot)
    }
    pub fn k_layer(&self, f: usize) -> DevPtr {
        self.k_cache.at(f * self.kv_per_layer)
    }
    pub fn v_layer(&self, f: usize) -> DevPtr {
        self.v_cache.at(f * self.kv_per_layer)
    }
}

/// Scratch for one step of up to `max_tokens` tokens (all fp32 activations: the
/// residual stream and every GEMM input stay fp32, which costs nothing at decode where
/// the weights dominate the traffic).
pub struct Scratch {
    pub max_tokens: usize,
    pub resid: DevBuf,
    pub normed: DevBuf,
    /// Widest projection output: qkvzba, qgkv or gate_up.
    pub wide: DevBuf,
    pub conv_out: DevBuf,
    pub core: DevBuf,
    pub q: DevBuf,
    pub mix_in: DevBuf,
    pub delta: DevBuf,
    /// bf16 copy of a GEMM input for cuBLASLt: [T][widest K].
    pub x_bf16: DevBuf,
    /// i32 metadata image of the step (ids, positions, tables...), see `MetaOffsets`.
    pub meta: DevBuf,
    pub meta_len: usize,
    /// Rows whose logits are wanted, gathered: [64][hidden] fp32; logits
    /// [logit rows][vocab] fp32 (64, or the largest decode graph's batch).
    pub sel: DevBuf,
    pub logits: DevBuf,
    /// i32 greedy token per logit row.
    pub argmax: DevBuf,
    _argmax_keys: DevBuf,
    _argmax_counters: DevBuf,
    pub argmax_ws: ArgmaxScratch,
    pub part_acc: DevBuf,
    pub part_ml: DevBuf,
    pub max_parts: usize,
    /// GDN prefill pre-pass output (Kernels::gdn_prefill_workspace).
    pub gdn_ws: DevBuf,
    _gemm_ws: DevBuf,
    _gemm_counters: DevBuf,
    pub gemm: GemmScratch,
}

/// Rows the lm_head GEMM takes at once (the skinny GEMM's limit).
pub const LOGIT_ROWS: usize = 64;

impl Scratch {
    /// Scratch for steps of up to `max_tokens` rows and `max_seqs` sequences, and an
    /// lm_head output of `logit_rows` rows.
    pub fn new(c: &ModelConfig, k: &Kernels, max_tokens: usize, max_seqs: usize, max_blocks_per_seq: usize, max_parts: usize, logit_rows: usize) -> Result<Self> {
        let t = max_tokens;
        let f = 4usize;
        let h = c.hidden_size;
        let qkvz = c.linear_qkv_dim() + c.linear_value_dim() + 2 * c.linear_num_value_heads;
        let qgkv = (2 * c.num_heads + 2 * c.num_kv_heads) * c.head_dim;
        let wide_w = qkvz.max(qgkv).max(2 * c.intermediate_size);
        let attn_w = c.num_heads * c.head_dim;
        let mix_in_w = c.linear_value_dim().max(attn_w).max(c.intermediate_size);
        // Every GEMM the model runs, for the split-K workspace size.
        let shapes = [
            (qkvz, h),
            (h, c.linear_value_dim()),
            (qgkv, h),
            (h, attn_w),
            (2 * c.intermediate_size, h),
            (h, c.intermediate_size),
            (c.vocab_size, h),
            // The MTP head's fc, and the k/v rows of its projection alone (`mtp_layer_kv`).
            (h, 2 * h),
            (2 * c.num_kv_heads * c.head_dim, h),
        ];
        let ws = shapes.iter().map(|(n, kk)| k.gemm_workspace_floats(GEMM_MAX_M, *n, *kk)).max().unwrap_or(0);
        let counters = shapes.iter().map(|(n, _)| Kernels::gemm_counters_len(*n)).max().unwrap_or(1);
        let gemm_ws = DevBuf::zeroed(ws * 4, "the GEMM split-K workspace")?;
        let gemm_counters = DevBuf::zeroed(counters * 4, "the GEMM counters")?;
        let gemm = GemmScratch { ws: gemm_ws.ptr, ws_floats: ws, counters: gemm_counters.ptr, counters_len: counters };
        let argmax_rows = t.max(logit_rows).max(LOGIT_ROWS);
        let (key_bytes, counter_bytes) = ArgmaxScratch::bytes(argmax_rows);
        let argmax_keys = DevBuf::zeroed(key_bytes, "the argmax keys")?;
        let argmax_counters = DevBuf::zeroed(counter_bytes, "the argmax counters")?;
        let argmax_ws = ArgmaxScratch { keys: argmax_keys.ptr, counters: argmax_counters.ptr, rows: argmax_rows };
        let (acc, ml) = k.attn_decode_scratch(max_seqs, max_parts);
        let meta_len = MetaOffsets::len(max_tokens, max_seqs, max_blocks_per_seq, c.vocab_size);
        Ok(Scratch {
            max_tokens,
            resid: DevBuf::zeroed(t * h * f, "the residual stream")?,
            normed: DevBuf::zeroed(t * h * f, "normed activations")?,
            wide: DevBuf::zeroed(t * wide_w * f, "projection outputs")?,
            conv_out: DevBuf::zeroed(t * c.linear_qkv_dim() * f, "conv outputs")?,
            core: DevBuf::zeroed(t * c.linear_value_dim().max(attn_w) * f, "mixer core outputs")?,
            q: DevBuf::zeroed(t * attn_w * f, "attention queries")?,
            mix_in: DevBuf::zeroed(t * mix_in_w * f, "mixer outputs")?,
            delta: DevBuf::zeroed(t * h * f, "residual updates")?,
            x_bf16: DevBuf::zeroed(t * h.max(mix_in_w) * 2, "bf16 GEMM inputs")?,
            meta: DevBuf::zeroed(meta_len * 4, "step metadata")?,
            meta_len,
            sel: DevBuf::zeroed(LOGIT_ROWS * h * f, "selected rows")?,
            logits: DevBuf::zeroed(logit_rows.max(LOGIT_ROWS) * c.vocab_size * f, "logits")?,
            argmax: DevBuf::zeroed(t.max(logit_rows) * 4, "greedy tokens")?,
            _argmax_keys: argmax_keys,
            _argmax_counters: argmax_counters,
            argmax_ws,
            part_acc: DevBuf::zeroed(acc * f, "decode attention partials")?,
            part_ml: DevBuf::zeroed(ml * f, "decode attention partials")?,
            max_parts,
            gdn_ws: DevBuf::zeroed(k.gdn_prefill_workspace(max_tokens, max_seqs), "the GDN prefill workspace")?,
            _gemm_ws: gemm_ws,
            _gemm_counters: gemm_counters,
            gemm,
        })
    }
}
