//! Speculative verification on a device backend, as host logic tested without a GPU: the
//! verify step's layout (every fed position is a decode row), where each position's
//! Gated DeltaNet state goes, and the copies that save the conv rings before the step and
//! commit the accepted state after it.
//!
//! Rows are position-major: position 0 of every sequence, then position 1 of those that
//! have one, and so on. Each row (i, q) is a decode row of sequence i at position
//! `start_i + q`: the GEMMs compute rows independently of what shares the step; rope_kv
//! writes the keys of every row before attention runs, and row (i, q) sees keys up to
//! `start_i + q + 1`, with its own copy of the block table, so attention computes it as a
//! decode step at that position. The GDN runs one launch per position: position q reads
//! the state position q - 1 wrote (the slot's own state for q = 0) and writes scratch
//! entry (i, q); the conv ring is the slot's and is updated in place, one row per
//! position. Every row is therefore a decode step bit for bit.
//!
//! After `a` of `T` positions are accepted, the commit copies scratch entry (i, a - 1)
//! into the slot's state and restores, from the ring saved before the step, the ring rows
//! the rejected positions overwrote (distinct rows while T <= conv_k). The slot then
//! holds exactly what decoding the `a` accepted tokens one by one leaves.

use super::step::{Step, StepLayout, StepLimits};
use super::VerifyChunk;
use anyhow::{ensure, Result};

/// The verify scratch of a backend: `rows` sequences of up to `positions` fed tokens each,
/// whose per-position states are recurrent-pool entries after the `slots` slot entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyShape {
    pub slots: usize,
    pub rows: usize,
    pub positions: usize,
}

impl VerifyShape {
    /// The recurrent-pool entry that holds sequence `i`'s state after its position `q`.
    pub fn entry(&self, i: usize, q: usize) -> usize {
        self.slots + i * self.positions + q
    }
    /// Scratch entries per linear layer.
    pub fn entries(&self) -> usize {
        self.rows * self.positions
    }
}

/// A verify step and, per chunk, its token row of each fed position.
#[derive(Clone, Debug)]
pub struct VerifyStep {
    pub step: Step,
    pub rows: Vec<Vec<usize>>,
}

impl VerifyStep {
    /// Lays out `chunks` (each `tokens` = the sampled token and its drafts) as decode rows.
    /// With `pad = Some(b)`, the fixed shape of a captured verify graph: every position has
    /// `b` rows (padding rows name no slot, see no keys and write no KV, so every kernel
    /// skips them) and block tables have the stride `lim.max_blocks_per_seq`. Every error
    /// names the chunk's slot and the limit it breaks.
    pub fn build(chunks: &[VerifyChunk<'_>], lim: &StepLimits, shape: &VerifyShape, pad: Option<usize>) -> Result<VerifyStep> {
        ensure!(!chunks.is_empty(), "a verify step needs at least one sequence");
        ensure!(
            chunks.len() <= shape.rows,
            "{} sequences to verify, but the verify scratch holds {} (--max-running-requests bounds it)",
            chunks.len(),
            shape.rows
        );
        let limit = chunks[0].limit;
        for (i, c) in chunks.iter().enumerate() {
            ensure!(c.slot < lim.slots, "slot {} out of range ({} slots)", c.slot, lim.slots);
            ensure!(chunks[..i].iter().all(|o| o.slot != c.slot), "slot {} appears twice in one verify step", c.slot);
            ensure!(
                (1..=shape.positions).contains(&c.tokens.len()),
                "slot {}: {} tokens to verify, but a verify holds 1 to {} (--speculative-num-draft-tokens)",
                c.slot,
                c.tokens.len(),
                shape.positions
            );
            ensure!(c.limit == limit, "one verify step must use one argmax vocabulary limit");
            let end = c.start_pos + c.tokens.len();
            ensure!(end <= lim.max_seq_len, "slot {} would pass max_seq_len ({})", c.slot, lim.max_seq_len);
            ensure!(c.blocks.len() <= lim.max_blocks_per_seq, "slot {} holds more KV blocks than a sequence may ({})", c.slot, lim.max_blocks_per_seq);
            ensure!(c.blocks.len() * lim.block_size >= end, "slot {}: {} KV blocks of {} cannot hold {end} tokens", c.slot, c.blocks.len(), lim.block_size);
            ensure!(c.blocks.iter().all(|b| (*b as usize) < lim.kv_blocks), "slot {} names a KV block outside the pool", c.slot);
            if let Some(&tok) = c.tokens.iter().find(|&&t| t as usize >= lim.vocab) {
                anyhow::bail!("token id {tok} is outside the vocabulary ({})", lim.vocab);
            }
        }
        ensure!(pad.is_none_or(|b| b >= chunks.len()), "a verify graph of {} rows per position cannot hold {} sequences", pad.unwrap_or(0), chunks.len());
        let bt_stride = match pad {
            Some(_) => lim.max_blocks_per_seq,
            None => chunks.iter().map(|c| c.blocks.len()).max().unwrap_or(1).max(1),
        };
        let longest = chunks.iter().map(|c| c.tokens.len()).max().unwrap_or(1);
        let mut l = StepLayout { bt_stride, cu_seqlens: vec![0], ..Default::default() };
        let mut rows = vec![Vec::new(); chunks.len()];
        for q in 0..longest {
            let first = l.ids.len();
            for (i, c) in chunks.iter().enumerate().filter(|(_, c)| c.tokens.len() > q) {
                let (p, bs) = (c.start_pos + q, lim.block_size);
                rows[i].push(l.ids.len());
                l.logit_rows.push(l.ids.len() as i32);
                l.ids.push(c.tokens[q] as i32);
                l.pos.push(p as i32);
                l.kv_loc.push((c.blocks[p / bs] as usize * bs + p % bs) as i32);
                l.cu_seqlens.push(l.ids.len() as i32);
                l.slots.push(c.slot as i32);
                l.start_pos.push(p as i32);
                l.ctx_lens.push(p as i32 + 1);
                l.block_tables.extend(c.blocks.iter().map(|b| *b as i32));
                l.block_tables.extend(std::iter::repeat_n(0, bt_stride - c.blocks.len()));
                let read = if q == 0 { c.slot } else { shape.entry(i, q - 1) };
                l.state_io.extend([read as i32, shape.entry(i, q) as i32]);
                l.logit_counts.push(1);
                l.mask_rows.push(-1);
            }
            while pad.is_some_and(|b| l.ids.len() - first < b) {
                l.ids.push(0);
                l.pos.push(0);
                l.kv_loc.push(-1);
                l.cu_seqlens.push(l.ids.len() as i32);
                l.slots.push(-1);
                l.start_pos.push(0);
                l.ctx_lens.push(0);
                l.block_tables.extend(std::iter::repeat_n(0, bt_stride));
                l.state_io.extend([0, 0]);
            }
            l.gdn_launches.push((first, l.ids.len() - first));
        }
        ensure!(l.num_tokens() <= lim.max_tokens, "verify step of {} tokens exceeds the step budget of {}", l.num_tokens(), lim.max_tokens);
        let n = l.num_tokens();
        let step = Step::from_layout((0..n).collect(), l, Some(limit), vec![false; n]);
        Ok(VerifyStep { step, rows })
    }

    /// Each chunk's greedy token per fed position, from the step's argmax per token row.
    pub fn greedy(&self, tokens: &[i32]) -> Result<Vec<Vec<u32>>> {
        self.rows
            .iter()
            .map(|rs| {
                rs.iter()
                    .map(|&r| tokens.get(r).map(|&t| t as u32).ok_or_else(|| anyhow::anyhow!("the device returned {} greedy tokens, row {r} missing", tokens.len())))
                    .collect()
            })
            .collect()
    }
}

/// One copy of `bytes` bytes from device address `src` to `dst` (the layout
/// `kiln_copy_segments` reads: three u64s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Segment {
    pub src: u64,
    pub dst: u64,
    pub bytes: u64,
}

/// Where a backend keeps the Gated DeltaNet state (device addresses, or offsets for a test).
pub trait StateAddrs {
    fn linear_layers(&self) -> usize;
    /// Recurrent state entry `entry` (a slot, or a `VerifyShape::entry`) of a linear layer.
    fn recurrent(&self, layer: usize, entry: usize) -> u64;
    fn recurrent_bytes(&self) -> usize;
    /// The conv ring of `slot` in a linear layer: `conv_k` rows of `ring_row_bytes`.
    fn ring(&self, layer: usize, slot: usize) -> u64;
    fn ring_row_bytes(&self) -> usize;
    fn conv_k(&self) -> usize;
    /// Where verify sequence `i`'s ring of a linear layer is saved.
    fn saved_ring(&self, i: usize, layer: usize) -> u64;
}

/// Copies that save every verified sequence's conv rings before the verify step.
pub fn save_rings(chunks: &[VerifyChunk<'_>], a: &impl StateAddrs) -> Vec<Segment> {
    let bytes = (a.conv_k() * a.ring_row_bytes()) as u64;
    let mut v = Vec::with_capacity(chunks.len() * a.linear_layers());
    for (i, c) in chunks.iter().enumerate() {
        for l in 0..a.linear_layers() {
            v.push(Segment { src: a.ring(l, c.slot), dst: a.saved_ring(i, l), bytes });
        }
    }
    v
}

/// Copies that commit `accepted[i]` of each chunk's fed positions: the state after the last
/// accepted position into the slot, and the saved ring rows back where rejected positions
/// wrote.
pub fn commit(chunks: &[VerifyChunk<'_>], accepted: &[usize], shape: &VerifyShape, a: &impl StateAddrs) -> Result<Vec<Segment>> {
    ensure!(accepted.len() == chunks.len(), "one accepted length per verified sequence");
    let mut v = Vec::new();
    for (i, (c, &acc)) in chunks.iter().zip(accepted).enumerate() {
        v.extend(commit_one(i, c, acc, shape, a)?);
    }
    Ok(v)
}

/// `commit`'s copies for chunk `c`, the `i`-th of its verify call, at accepted length `acc`.
pub fn commit_one(i: usize, c: &VerifyChunk<'_>, acc: usize, shape: &VerifyShape, a: &impl StateAddrs) -> Result<Vec<Segment>> {
    let (k, row) = (a.conv_k(), a.ring_row_bytes());
    let fed = c.tokens.len();
    ensure!((1..=fed).contains(&acc), "slot {}: {acc} accepted of {fed} fed positions", c.slot);
    ensure!(fed <= k, "slot {}: {fed} positions verified, but the conv ring restores at most {k}", c.slot);
    let mut v = Vec::new();
    for l in 0..a.linear_layers() {
        let bytes = a.recurrent_bytes() as u64;
        v.push(Segment { src: a.recurrent(l, shape.entry(i, acc - 1)), dst: a.recurrent(l, c.slot), bytes });
        for q in acc..fed {
            let off = (((c.start_pos + q) % k) * row) as u64;
            v.push(Segment { src: a.saved_ring(i, l) + off, dst: a.ring(l, c.slot) + off, bytes: row as u64 });
        }
    }
    Ok(v)
}

/// The CPU twin of `kiln_copy_segments` over a memory whose addresses are offsets into
/// `mem`.
pub fn apply_segments(mem: &mut [u8], segs: &[Segment]) {
    for s in segs {
        let (src, dst, n) = (s.src as usize, s.dst as usize, s.bytes as usize);
        mem.copy_within(src..src + n, dst);
    }
}

/// The segments as the u64 words the device reads.
pub fn segment_words(segs: &[Segment]) -> Vec<u64> {
    segs.iter().flat_map(|s| [s.src, s.dst, s.bytes]).collect()
}

#[cfg(test)]
#[path = "verify_step_tests.rs"]
pub(crate) mod tests;
