//! The MTP head's rows on a device backend, as host logic tested without a GPU.
//!
//! The MTP layer keeps its own KV cache, which must cover every pair (h_t, x_{t+1}) of a
//! sequence: h_t the main model's final-normed hidden state at position t, x_{t+1} the
//! token after it, the pair at RoPE position t (see `cpu/speculative.rs` for the
//! semantics). A device backend computes the pairs eagerly, inside the step that feeds
//! x_{t+1}: a step row feeding token x at position p > 0 is the pair (h_{p-1}, x) at MTP
//! position p - 1, where h_{p-1} is the previous row of the same chunk, or, for a chunk's
//! first row, the slot's *pending* hidden state (the last position the slot was fed,
//! whose pair needed a token not yet known). After the step, each chunk's last row
//! becomes its slot's pending hidden state. A row at position 0 has no pair.
//!
//! A draft is then one MTP step per draft token from the pending state: step 0 pairs the
//! pending h_{p-1} with the sampled x_p at position p - 1; step j pairs the MTP's own
//! output of step j - 1 with its draft at position p - 1 + j.

use super::step::{MetaOffsets, StepLayout};
use super::verify_step::{segment_words, Segment};
use super::DraftChunk;

/// The MTP layer's rows for one pass: a step layout of pairs (ids = x_{t+1}, pos = t,
/// kv_loc of t; chunks with their slots and block tables), where each row's h_t comes
/// from, and which rows become pending afterwards.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MtpRows {
    pub layout: StepLayout,
    /// Per MTP row: the source row of its h_t (a main step row, or a previous MTP output
    /// row for a chained draft step), or `-1 - slot` for the slot's pending hidden state.
    pub hidden: Vec<i32>,
    /// (main step row, slot): the rows whose hidden state becomes their slot's pending one.
    pub pending: Vec<(usize, usize)>,
}

/// `hidden` entry naming slot `slot`'s pending hidden state.
pub fn pending_of(slot: usize) -> i32 {
    -1 - slot as i32
}

/// KV row of position `p` of sequence `s` in `l`'s block tables.
fn kv_row(l: &StepLayout, s: usize, p: usize, block_size: usize) -> i32 {
    let b = l.block_tables[s * l.bt_stride + p / block_size] as usize;
    (b * block_size + p % block_size) as i32
}

impl MtpRows {
    /// The pairs a forward step feeds (prefill chunks and decode rows; `l` as laid out,
    /// padding rows with slot < 0 included: they stay padding rows).
    pub fn for_step(l: &StepLayout, block_size: usize) -> MtpRows {
        let mut m = MtpRows { layout: StepLayout { bt_stride: l.bt_stride, cu_seqlens: vec![0], ..Default::default() }, ..Default::default() };
        for s in 0..l.num_seqs() {
            let (r0, r1) = (l.cu_seqlens[s] as usize, l.cu_seqlens[s + 1] as usize);
            let slot = l.slots[s];
            let table = &l.block_tables[s * l.bt_stride..(s + 1) * l.bt_stride];
            if slot >= 0 {
                m.pending.push((r1 - 1, slot as usize));
            }
            if slot < 0 || (r1 - r0 == 1 && l.pos[r0] == 0) {
                // A padding row of a captured decode graph, or a one-token prompt: a
                // padding MTP row (no pair, no KV write, no keys), so a decode-shaped step
                // keeps one MTP row per row.
                m.push_padding(table);
                continue;
            }
            // A prompt's first row (position 0) has no pair.
            let first = if l.pos[r0] == 0 { r0 + 1 } else { r0 };
            for r in first..r1 {
                let t = l.pos[r] as usize - 1;
                let hidden = if r == r0 { pending_of(slot as usize) } else { (r - 1) as i32 };
                m.push_row(l.ids[r], t as i32, hidden, kv_row(l, s, t, block_size));
            }
            m.close_chunk(slot, l.pos[first] - 1, l.pos[r1 - 1], table);
        }
        m
    }

    /// The pairs of a verify step (`l` from `VerifyStep`: every row its own single-row
    /// sequence, position-major; `rows[i]` sequence i's row per position). Row (i, q)
    /// pairs the hidden state of row (i, q - 1), or the pending one for q = 0. No row
    /// becomes pending here: the commit sets it from the last accepted position.
    pub fn for_verify(l: &StepLayout, rows: &[Vec<usize>], block_size: usize) -> MtpRows {
        let mut m = MtpRows { layout: StepLayout { bt_stride: l.bt_stride, cu_seqlens: vec![0], ..Default::default() }, ..Default::default() };
        let mut prev = vec![usize::MAX; l.num_tokens()];
        for rs in rows {
            for w in rs.windows(2) {
                prev[w[1]] = w[0];
            }
        }
        for r in 0..l.num_tokens() {
            let table = &l.block_tables[r * l.bt_stride..(r + 1) * l.bt_stride];
            if l.slots[r] < 0 {
                // A padding row of a captured verify graph.
                m.push_padding(table);
                continue;
            }
            let (slot, t) = (l.slots[r], l.pos[r] as usize - 1);
            let hidden = if prev[r] == usize::MAX { pending_of(slot as usize) } else { prev[r] as i32 };
            m.push_row(l.ids[r], t as i32, hidden, kv_row(l, r, t, block_size));
            m.close_chunk(slot, t as i32, t as i32 + 1, table);
        }
        m
    }

    /// Chained draft step `j` of `chunks` (one row per sequence): step 0 pairs each slot's
    /// pending hidden state with its sampled token; step j > 0 pairs MTP output row i of
    /// step j - 1 with its draft (the ids then come from the device; `ids` here are 0).
    /// Step j >= a chunk's `steps` gives that chunk a padding row (its drafts end there).
    /// With `pad = Some((rows, bt_stride))`, the fixed shape of a captured draft graph:
    /// `rows` rows (padding rows name no slot, see no keys and write no KV) and block
    /// tables of stride `bt_stride`.
    pub fn for_draft(chunks: &[DraftChunk<'_>], j: usize, block_size: usize, pad: Option<(usize, usize)>) -> MtpRows {
        let longest = chunks.iter().map(|c| c.blocks.len()).max().unwrap_or(1).max(1);
        let bt_stride = pad.map_or(longest, |p| p.1.max(longest));
        let mut m = MtpRows { layout: StepLayout { bt_stride, cu_seqlens: vec![0], ..Default::default() }, ..Default::default() };
        let zeros = vec![0; bt_stride];
        for (i, c) in chunks.iter().enumerate() {
            if j >= c.steps {
                // This sequence drafts fewer steps than the call (it is near its token or
                // context limit, and its KV blocks may end there): a padding row.
                m.push_padding(&zeros);
                continue;
            }
            let t = c.pos - 1 + j;
            let (id, hidden) = if j == 0 { (c.next as i32, pending_of(c.slot)) } else { (0, i as i32) };
            let kv = (c.blocks[t / block_size] as usize * block_size + t % block_size) as i32;
            m.push_row(id, t as i32, hidden, kv);
            let mut table: Vec<i32> = c.blocks.iter().map(|&b| b as i32).collect();
            table.resize(bt_stride, 0);
            m.close_chunk(c.slot as i32, t as i32, t as i32 + 1, &table);
        }
        for _ in chunks.len()..pad.map_or(0, |p| p.0) {
            m.push_padding(&zeros);
        }
        m
    }

    /// A padding row, its own chunk: no slot, no pair, no KV write, no keys (a captured
    /// graph's fixed shape, or a sequence with nothing to compute at this step).
    fn push_padding(&mut self, table: &[i32]) {
        self.push_row(0, 0, 0, -1);
        self.close_chunk(-1, 0, 0, table);
    }

    fn push_row(&mut self, id: i32, pos: i32, hidden: i32, kv_loc: i32) {
        let l = &mut self.layout;
        l.ids.push(id);
        l.pos.push(pos);
        l.kv_loc.push(kv_loc);
        self.hidden.push(hidden);
    }

    /// Ends the current chunk: the rows pushed since the last call, with its slot, the
    /// position of its first row and the keys its last row sees.
    fn close_chunk(&mut self, slot: i32, start: i32, ctx: i32, table: &[i32]) {
        let l = &mut self.layout;
        l.cu_seqlens.push(l.ids.len() as i32);
        l.slots.push(slot);
        l.start_pos.push(start);
        l.ctx_lens.push(ctx);
        l.block_tables.extend_from_slice(table);
    }
}

/// An MTP pass's metadata image, uploaded beside the step's: the layout's arrays at
/// `meta`, then the `hidden` rows, then the pending copies as u64 triples.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MtpImage {
    pub meta: MetaOffsets,
    pub hidden: usize,
    pub segs: usize,
    pub nsegs: usize,
    pub packed: Vec<i32>,
}

impl MtpImage {
    /// i32s the image of a pass over `t` rows and `s` chunks (block-table stride `bt`)
    /// takes at most (the device buffer's size).
    pub fn len(t: usize, s: usize, bt: usize) -> usize {
        let r = |x: usize| x.div_ceil(16) * 16;
        MetaOffsets::layout(t, s, bt, 0, 0).end + r(t) + r(6 * s)
    }
}

impl MtpRows {
    /// The image with the pending copies `segs` (from `pending`, by the backend, which
    /// knows the addresses), padded with empty copies to one per chunk so that a decode
    /// graph's copy launch keeps its size.
    pub fn image(&self, segs: &[Segment]) -> MtpImage {
        let r = |x: usize| x.div_ceil(16) * 16;
        let l = &self.layout;
        let meta = MetaOffsets::layout(l.num_tokens(), l.num_seqs(), l.bt_stride, 0, 0);
        let mut packed = meta.pack(l);
        let hidden = packed.len();
        packed.extend(&self.hidden);
        packed.resize(hidden + r(self.hidden.len()), 0);
        let segs_at = packed.len();
        let nsegs = segs.len().max(l.num_seqs());
        let mut words = segment_words(segs);
        words.resize(3 * nsegs, 0);
        packed.extend(words.iter().flat_map(|w| [*w as u32 as i32, (*w >> 32) as u32 as i32]));
        MtpImage { meta, hidden, segs: segs_at, nsegs, packed }
    }
}

#[cfg(test)]
#[path = "mtp_rows_tests.rs"]
mod tests;
