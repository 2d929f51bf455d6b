//! The `cpu` backend: the whole Qwen3.5 text model in f32 arithmetic over the loaded
//! weights, exactly as transformers' modeling_qwen3_5.py computes it. Slow and
//! obviously correct: the reference for the cuda backend and the engine behind the
//! embedded demo model.

pub mod ops;
mod speculative;
mod state;

use self::ops::GdnShape;
use self::state::{PagedKv, SlotState};
use super::{Backend, Capacity, ChunkLogits, DraftChunk, SeqChunk, SnapshotId, Verified, VerifyChunk, Want};
use crate::checkpoint::{FullAttnWeights, LayerWeights, LinearAttnWeights, Mixer, Weights};
use crate::config::ModelConfig;
use anyhow::{bail, ensure, Context, Result};
use std::collections::HashMap;

/// Chunk length of the UT/WY form of the Gated DeltaNet prefill (as transformers and
/// flash-linear-attention use).
pub const GDN_CHUNK: usize = 64;

/// Snapshots a CPU backend holds unless told otherwise (`with_snapshots`): a few per
/// slot (each is one slot's Gated DeltaNet state, small at the sizes the CPU runs).
pub const DEFAULT_SNAPSHOTS_PER_SLOT: usize = 8;

pub struct CpuBackend {
    cfg: ModelConfig,
    w: Weights,
    cap: Capacity,
    slots: Vec<SlotState>,
    kv: PagedKv,
    /// Saved slot states for the prefix cache, by id.
    snapshots: HashMap<SnapshotId, SlotState>,
    max_snapshots: usize,
    next_snapshot: SnapshotId,
}

impl CpuBackend {
    pub fn new(cfg: ModelConfig, w: Weights, cap: Capacity) -> Result<Self> {
        ensure!(cap.slots > 0 && cap.max_seq_len > 0, "cpu backend: capacity must have slots and a max length");
        let slots = (0..cap.slots).map(|_| SlotState::new(&cfg)).collect();
        let kv = PagedKv::new(&cfg, &cap);
        let max_snapshots = cap.slots * DEFAULT_SNAPSHOTS_PER_SLOT;
        Ok(CpuBackend { cfg, w, cap, slots, kv, snapshots: HashMap::new(), max_snapshots, next_snapshot: 1 })
    }

    /// Sets how many prefix-cache snapshots the backend holds (0: no prefix cache).
    pub fn with_snapshots(mut self, n: usize) -> Self {
        self.max_snapshots = n;
        self
    }

    pub fn weights(&self) -> &Weights {
        &self.w
    }

    /// Sets how many tokens `slot` holds without touching its state (tests that need a
    /// backend which breaks the state contract).
    #[cfg(test)]
    pub(crate) fn truncate_for_test(&mut self, slot: usize, len: usize) -> Result<()> {
        self.slots.get_mut(slot).context("slot out of range")?.len = len;
        Ok(())
    }

    /// Runs `tokens` through the decoder layers for one slot, advancing its state and
    /// writing K/V into its pages `blocks`; returns the residual stream after the last
    /// layer (before the final norm), every row.
    fn run_layers(&mut self, slot: usize, start: usize, tokens: &[u32], blocks: &[u32]) -> Result<Vec<f32>> {
        let cfg = &self.cfg;
        let h = cfg.hidden_size;
        let st = &mut self.slots[slot];
        let kv = &mut self.kv;
        ensure!(
            st.len == start,
            "cpu backend: slot {slot} holds {} tokens but the chunk starts at {start}",
            st.len
        );
        ensure!(
            start + tokens.len() <= self.cap.max_seq_len,
            "cpu backend: slot {slot} would reach {} tokens, over max_seq_len {}",
            start + tokens.len(),
            self.cap.max_seq_len
        );
        kv.check(blocks, start + tokens.len())?;
        let mut x = Vec::with_capacity(tokens.len() * h);
        for &t in tokens {
            ensure!((t as usize) < cfg.vocab_size, "token id {t} is outside the vocabulary ({})", cfg.vocab_size);
            x.extend_from_slice(&self.w.embed[t as usize * h..(t as usize + 1) * h]);
        }
        let eps = cfg.rms_norm_eps as f32;
        for (li, layer) in self.w.layers.iter().enumerate() {
            let normed = ops::rms_norm(&x, &layer.input_norm, eps, 1.0);
            let idx = cfg.kind_index(li);
            let mixed = match &layer.mixer {
                Mixer::Linear(lw) => gated_delta_net(cfg, lw, &normed, st, idx),
                Mixer::Full(fw) => full_attention(cfg, fw, &normed, KvStore::Paged { kv: &mut *kv, layer: idx, blocks }, start),
            };
            x.iter_mut().zip(&mixed).for_each(|(a, b)| *a += b);
            mlp_residual(cfg, layer, &mut x);
        }
        st.len += tokens.len();
        Ok(x)
    }

    /// Runs `tokens` through the model for one slot; returns the logits of the rows
    /// `want` asks for.
    fn run_sequence(&mut self, c: &SeqChunk<'_>) -> Result<ChunkLogits> {
        let (slot, start, tokens, blocks, want) = (c.slot, c.start_pos, c.tokens, c.blocks, c.want);
        let x = self.run_layers(slot, start, tokens, blocks)?;
        let h = self.cfg.hidden_size;
        let eps = self.cfg.rms_norm_eps as f32;
        if self.w.mtp.is_some() {
            // The MTP head drafts from the final-normed hidden state of every position.
            let normed = ops::rms_norm(&x, &self.w.norm, eps, 1.0);
            speculative::record_hidden(&mut self.slots[slot].mtp, tokens, &normed);
        }
        let rows: &[f32] = match want {
            Want::Nothing => return Ok(ChunkLogits::default()),
            Want::Last | Want::Argmax { .. } => &x[(tokens.len() - 1) * h..],
            Want::All => &x,
        };
        let normed = ops::rms_norm(rows, &self.w.norm, eps, 1.0);
        let data = ops::matmul_wt(&normed, self.w.lm_head(), h);
        let argmax = match want {
            Want::Argmax { limit } => Some(ops::greedy(&data, limit, c.allowed) as u32),
            _ => None,
        };
        Ok(ChunkLogits { rows: normed.len() / h, data, argmax })
    }
}

/// The second half of a decoder layer, in place: x += down(silu(gate(n)) * up(n)) with
/// n = post_attention_layernorm(x).
fn mlp_residual(cfg: &ModelConfig, layer: &LayerWeights, x: &mut [f32]) {
    let h = cfg.hidden_size;
    let normed = ops::rms_norm(x, &layer.post_norm, cfg.rms_norm_eps as f32, 1.0);
    let gate = ops::matmul_wt(&normed, &layer.mlp.gate, h);
    let up = ops::matmul_wt(&normed, &layer.mlp.up, h);
    let down = ops::matmul_wt(&ops::silu_mul(&gate, &up), &layer.mlp.down, cfg.intermediate_size);
    x.iter_mut().zip(&down).for_each(|(a, b)| *a += b);
}

/// One Gated DeltaNet mixer over T tokens of one sequence, advancing its conv and
/// recurrent state.
fn gated_delta_net(cfg: &ModelConfig, w: &LinearAttnWeights, x: &[f32], st: &mut SlotState, idx: usize) -> Vec<f32> {
    let h = cfg.hidden_size;
    let t_len = x.len() / h;
    let s = GdnShape {
        nk: cfg.linear_num_key_heads,
        nv: cfg.linear_num_value_heads,
        dk: cfg.linear_key_head_dim,
        dv: cfg.linear_value_head_dim,
    };
    let channels = cfg.linear_qkv_dim();
    let key_dim = s.nk * s.dk;
    let qkv = ops::matmul_wt(x, &w.in_qkv, h);
    let z = ops::matmul_wt(x, &w.in_z, h);
    let b = ops::matmul_wt(x, &w.in_b, h);
    let a = ops::matmul_wt(x, &w.in_a, h);
    let conv = ops::causal_conv1d_silu(&qkv, channels, &w.conv, &mut st.conv[idx]);

    let mut q = Vec::with_capacity(t_len * key_dim);
    let mut k = Vec::with_capacity(t_len * key_dim);
    let mut v = Vec::with_capacity(t_len * s.nv * s.dv);
    for row in conv.chunks_exact(channels) {
        q.extend_from_slice(&row[..key_dim]);
        k.extend_from_slice(&row[key_dim..2 * key_dim]);
        v.extend_from_slice(&row[2 * key_dim..]);
    }
    ops::l2norm_rows(&mut q, s.dk, 1e-6);
    ops::l2norm_rows(&mut k, s.dk, 1e-6);
    let scale = 1.0 / (s.dk as f32).sqrt();
    q.iter_mut().for_each(|v| *v *= scale);
    let beta: Vec<f32> = b.iter().map(|v| ops::sigmoid(*v)).collect();
    let g: Vec<f32> = a
        .iter()
        .enumerate()
        .map(|(i, av)| {
            let hd = i % s.nv;
            -w.a_log[hd].exp() * ops::softplus(av + w.dt_bias[hd])
        })
        .collect();
    // transformers: the recurrent form for a single cached token, the chunked form otherwise.
    let core = if t_len == 1 {
        ops::gdn_recurrent(&q, &k, &v, &g, &beta, s, &mut st.recurrent[idx])
    } else {
        ops::gdn_chunked(&q, &k, &v, &g, &beta, s, GDN_CHUNK, &mut st.recurrent[idx])
    };
    // Gated RMSNorm per value head: w * norm(core) * silu(z).
    let mut normed = ops::rms_norm(&core, &w.norm, cfg.rms_norm_eps as f32, 0.0);
    normed.iter_mut().zip(&z).for_each(|(o, zv)| *o *= ops::silu(*zv));
    ops::matmul_wt(&normed, &w.out, s.nv * s.dv)
}

/// Where a full-attention layer keeps its keys and values.
enum KvStore<'a> {
    /// The main model's layer `layer` in the sequence's pages `blocks`.
    Paged { kv: &'a mut PagedKv, layer: usize, blocks: &'a [u32] },
    /// A contiguous cache holding `start` positions, appended to (the MTP layer's).
    Contiguous { k: &'a mut Vec<f32>, v: &'a mut Vec<f32> },
}

/// One gated full-attention mixer over T tokens at positions start.., storing their K/V
/// in `store` and attending over positions 0..start+T.
fn full_attention(cfg: &ModelConfig, w: &FullAttnWeights, x: &[f32], store: KvStore<'_>, start: usize) -> Vec<f32> {
    let h = cfg.hidden_size;
    let (nh, nkv, hd) = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim);
    let t_len = x.len() / h;
    let eps = cfg.rms_norm_eps as f32;
    let qg = ops::matmul_wt(x, &w.q, h);
    let mut q = Vec::with_capacity(t_len * nh * hd);
    let mut gate = Vec::with_capacity(t_len * nh * hd);
    // q_proj rows are [head][query hd, gate hd].
    for head in qg.chunks_exact(2 * hd) {
        q.extend_from_slice(&head[..hd]);
        gate.extend_from_slice(&head[hd..]);
    }
    let mut q = ops::rms_norm(&q, &w.q_norm, eps, 1.0);
    let mut k = ops::rms_norm(&ops::matmul_wt(x, &w.k, h), &w.k_norm, eps, 1.0);
    let v = ops::matmul_wt(x, &w.v, h);
    for t in 0..t_len {
        for head in q[t * nh * hd..(t + 1) * nh * hd].chunks_exact_mut(hd) {
            ops::rope_partial(head, start + t, cfg.rotary_dim, cfg.rope_theta);
        }
        for head in k[t * nkv * hd..(t + 1) * nkv * hd].chunks_exact_mut(hd) {
            ops::rope_partial(head, start + t, cfg.rotary_dim, cfg.rope_theta);
        }
    }
    let mut o = match store {
        KvStore::Paged { kv, layer, blocks } => {
            kv.write(layer, blocks, start, &k, &v);
            let (keys, values) = kv.gather(layer, blocks, start + t_len);
            ops::attention_causal(&q, &keys, &values, start, nh, nkv, hd)
        }
        KvStore::Contiguous { k: k_cache, v: v_cache } => {
            k_cache.extend_from_slice(&k);
            v_cache.extend_from_slice(&v);
            ops::attention_causal(&q, k_cache, v_cache, start, nh, nkv, hd)
        }
    };
    o.iter_mut().zip(&gate).for_each(|(a, g)| *a *= ops::sigmoid(*g));
    ops::matmul_wt(&o, &w.o, nh * hd)
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    fn capacity(&self) -> Capacity {
        self.cap
    }
    fn forward(&mut self, chunks: &[SeqChunk<'_>]) -> Result<Vec<ChunkLogits>> {
        for (i, c) in chunks.iter().enumerate() {
            ensure!(c.slot < self.slots.len(), "slot {} out of range ({} slots)", c.slot, self.slots.len());
            ensure!(!c.tokens.is_empty(), "chunk for slot {} has no tokens", c.slot);
            if chunks[..i].iter().any(|o| o.slot == c.slot) {
                bail!("slot {} appears twice in one step", c.slot);
            }
            c.check_mask()?;
        }
        // Sequences are independent, so a batch is the same computation as each alone:
        // batch invariance holds by construction here.
        chunks.iter().map(|c| self.run_sequence(c)).collect()
    }
    fn reset_slot(&mut self, slot: usize) -> Result<()> {
        ensure!(slot < self.slots.len(), "slot {slot} out of range");
        self.slots[slot] = SlotState::new(&self.cfg);
        Ok(())
    }
    fn supports_speculation(&self) -> bool {
        self.w.mtp.is_some()
    }
    fn draft(&mut self, seqs: &[DraftChunk<'_>]) -> Result<Vec<Vec<u32>>> {
        self.check_distinct_slots(seqs.iter().map(|s| s.slot))?;
        seqs.iter().map(|s| self.draft_one(s)).collect()
    }
    fn verify(&mut self, seqs: &[VerifyChunk<'_>]) -> Result<Vec<Verified>> {
        self.check_distinct_slots(seqs.iter().map(|s| s.slot))?;
        seqs.iter().map(|s| self.verify_one(s)).collect()
    }
    fn snapshot_capacity(&self) -> usize {
        self.max_snapshots
    }
    fn snapshot_state(&mut self, slot: usize) -> Result<SnapshotId> {
        ensure!(slot < self.slots.len(), "slot {slot} out of range");
        ensure!(
            self.snapshots.len() < self.max_snapshots,
            "cpu backend: all {} snapshots are in use; drop one first",
            self.max_snapshots
        );
        let id = self.next_snapshot;
        self.next_snapshot += 1;
        self.snapshots.insert(id, self.slots[slot].clone());
        Ok(id)
    }
    fn restore_state(&mut self, snapshot: SnapshotId, slot: usize) -> Result<()> {
        ensure!(slot < self.slots.len(), "slot {slot} out of range");
        let saved = self.snapshots.get(&snapshot).with_context(|| format!("cpu backend: no snapshot {snapshot}"))?;
        self.slots[slot].clone_from(saved);
        Ok(())
    }
    fn drop_snapshot(&mut self, snapshot: SnapshotId) -> Result<()> {
        self.snapshots.remove(&snapshot).map(|_| ()).with_context(|| format!("cpu backend: no snapshot {snapshot} to drop"))
    }
}

#[cfg(test)]
mod tests;
