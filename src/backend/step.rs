//! One step of a device backend, built once from the scheduler's chunks and read by
//! everyone after: the chunks checked against the backend's limits, laid out decode
//! rows first (`RowGroups`), flattened into device-ready arrays (`StepLayout`: token
//! rows, positions, KV locations, block tables, logit rows), packed into one i32 image
//! for a single upload (`MetaOffsets`), and the way results go back to the caller
//! (`Step::finish`). Pure host logic, tested without a GPU.

use super::{ChunkLogits, SeqChunk, Want};
use anyhow::{bail, ensure, Result};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepLayout {
    /// Token ids of all chunks, concatenated [T].
    pub ids: Vec<i32>,
    /// Absolute position of each token [T].
    pub pos: Vec<i32>,
    /// Sequence s owns token rows cu_seqlens[s]..cu_seqlens[s+1] [nseq + 1].
    pub cu_seqlens: Vec<i32>,
    /// State slot of each sequence [nseq].
    pub slots: Vec<i32>,
    /// Tokens each sequence had seen before this step [nseq].
    pub start_pos: Vec<i32>,
    /// Keys visible to each sequence's last token after this step [nseq].
    pub ctx_lens: Vec<i32>,
    /// KV cache row (block * block_size + offset) of each token [T].
    pub kv_loc: Vec<i32>,
    /// Physical KV blocks per sequence, padded with 0 to `bt_stride` [nseq * bt_stride].
    pub block_tables: Vec<i32>,
    pub bt_stride: usize,
    /// Token rows whose logits are returned, in output order.
    pub logit_rows: Vec<i32>,
    /// Per chunk: how many of `logit_rows` are its own (0, 1 or its length).
    pub logit_counts: Vec<usize>,
    /// Per logit row: the index of its token mask in `masks`, or -1 (no mask).
    pub mask_rows: Vec<i32>,
    /// The greedy rows' token masks (`SeqChunk::allowed`), `mask_words` words each: cut
    /// or zero-padded to the argmax limit, as i32 bit patterns for the metadata image.
    pub masks: Vec<i32>,
    pub mask_words: usize,
    /// Speculative verification only (`Step::build_verify`), else empty: per token row, the
    /// Gated DeltaNet state entry it reads and the one it writes, as i32 pairs.
    pub state_io: Vec<i32>,
    /// Speculative verification only, else empty: the decode rows go through the GDN in
    /// these sequential launches (first row, rows), one per verified position, so each
    /// position reads the state its predecessor wrote.
    pub gdn_launches: Vec<(usize, usize)>,
}

impl StepLayout {
    pub fn new(chunks: &[SeqChunk<'_>], block_size: usize) -> Result<Self> {
        let mut l = StepLayout { bt_stride: 1, ..Default::default() };
        l.bt_stride = chunks.iter().map(|c| c.blocks.len()).max().unwrap_or(1).max(1);
        l.cu_seqlens.push(0);
        for c in chunks {
            ensure!(!c.tokens.is_empty(), "chunk for slot {} has no tokens", c.slot);
            let end = c.start_pos + c.tokens.len();
            ensure!(
                c.blocks.len() * block_size >= end,
                "slot {}: {} KV blocks of {block_size} cannot hold {end} tokens",
                c.slot,
                c.blocks.len()
            );
            let row0 = l.ids.len();
            for (i, &t) in c.tokens.iter().enumerate() {
                let p = c.start_pos + i;
                l.ids.push(t as i32);
                l.pos.push(p as i32);
                l.kv_loc.push((c.blocks[p / block_size] as usize * block_size + p % block_size) as i32);
            }
            l.cu_seqlens.push(l.ids.len() as i32);
            l.slots.push(c.slot as i32);
            l.start_pos.push(c.start_pos as i32);
            l.ctx_lens.push(end as i32);
            l.block_tables.extend(c.blocks.iter().map(|b| *b as i32));
            l.block_tables.extend(std::iter::repeat_n(0, l.bt_stride - c.blocks.len()));
            let rows: Vec<i32> = match c.want {
                Want::Nothing => vec![],
                Want::Last | Want::Argmax { .. } => vec![(l.ids.len() - 1) as i32],
                Want::All => (row0..l.ids.len()).map(|r| r as i32).collect(),
            };
            match (c.allowed, c.want) {
                (Some(mask), Want::Argmax { limit }) => {
                    // One step has one argmax limit (Step::build checks), so one mask size.
                    l.mask_words = limit.div_ceil(32);
                    l.mask_rows.push((l.masks.len() / l.mask_words) as i32);
                    let words = mask.iter().map(|&w| w as i32).chain(std::iter::repeat(0));
                    l.masks.extend(words.take(l.mask_words));
                }
                (Some(_), _) => c.check_mask()?,
                (None, _) => l.mask_rows.extend(std::iter::repeat_n(-1, rows.len())),
            }
            l.logit_counts.push(rows.len());
            l.logit_rows.extend(rows);
        }
        Ok(l)
    }

    pub fn num_tokens(&self) -> usize {
        self.ids.len()
    }
    pub fn num_seqs(&self) -> usize {
        self.slots.len()
    }
    /// Every sequence contributes exactly one token: the decode path (and its graphs).
    pub fn is_decode(&self) -> bool {
        self.num_tokens() == self.num_seqs()
    }
    /// This decode layout padded to `b` sequences with table stride `bt_stride`, the fixed
    /// shape of a captured decode graph. Padding rows name no slot (-1), see no keys
    /// (ctx_len 0) and write no KV (kv_loc -1): every kernel skips them. `logit_rows` and
    /// `logit_counts` stay those of the real sequences.
    pub fn padded_decode(&self, b: usize, bt_stride: usize) -> Result<StepLayout> {
        let n = self.num_seqs();
        ensure!(self.is_decode() && n <= b && self.bt_stride <= bt_stride, "padded_decode: not a decode layout that fits {b} x {bt_stride}");
        let pad = |v: &[i32], fill: i32| -> Vec<i32> { v.iter().copied().chain(std::iter::repeat_n(fill, b - n)).collect() };
        let mut block_tables = vec![0i32; b * bt_stride];
        for s in 0..n {
            let row = &self.block_tables[s * self.bt_stride..(s + 1) * self.bt_stride];
            block_tables[s * bt_stride..s * bt_stride + self.bt_stride].copy_from_slice(row);
        }
        Ok(StepLayout {
            ids: pad(&self.ids, 0),
            pos: pad(&self.pos, 0),
            cu_seqlens: (0..=b as i32).collect(),
            slots: pad(&self.slots, -1),
            start_pos: pad(&self.start_pos, 0),
            ctx_lens: pad(&self.ctx_lens, 0),
            kv_loc: pad(&self.kv_loc, -1),
            block_tables,
            bt_stride,
            logit_rows: self.logit_rows.clone(),
            logit_counts: self.logit_counts.clone(),
            mask_rows: self.mask_rows.clone(),
            masks: self.masks.clone(),
            mask_words: self.mask_words,
            state_io: Vec::new(),
            gdn_launches: Vec::new(),
        })
    }

    /// Where each logit row's values go on the host: `(chunk, row within the chunk)`,
    /// or None for a chunk that wants only its argmax. `wants_data[c]` per chunk.
    pub fn logit_destinations(&self, wants_data: &[bool]) -> Vec<Option<(usize, usize)>> {
        self.logit_counts
            .iter()
            .zip(wants_data)
            .enumerate()
            .flat_map(|(c, (&n, &want))| (0..n).map(move |j| want.then_some((c, j))))
            .collect()
    }

    pub fn max_seq_tokens(&self) -> usize {
        self.cu_seqlens.windows(2).map(|w| (w[1] - w[0]) as usize).max().unwrap_or(0)
    }
}

/// One device-to-host copy: `rows` logit rows starting at logit row `row` go to rows
/// `chunk_row..` of chunk `chunk`'s host buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowCopy {
    pub row: usize,
    pub rows: usize,
    pub chunk: usize,
    pub chunk_row: usize,
}

/// Groups the logit rows `range` (with `dest` from `logit_destinations`) into as few
/// copies as possible: consecutive rows of one chunk travel together.
pub fn row_copies(dest: &[Option<(usize, usize)>], range: std::ops::Range<usize>) -> Vec<RowCopy> {
    let mut out: Vec<RowCopy> = Vec::new();
    for r in range {
        let Some((chunk, chunk_row)) = dest[r] else { continue };
        match out.last_mut() {
            Some(c) if c.chunk == chunk && c.row + c.rows == r && c.chunk_row + c.rows == chunk_row => c.rows += 1,
            _ => out.push(RowCopy { row: r, rows: 1, chunk, chunk_row }),
        }
    }
    out
}

/// Longest chunk the decode GEMMs take; a longer one (prefill) goes to cuBLASLt with bf16
/// activations (`cuda::model`).
pub const SKINNY_MAX_CHUNK: usize = 64;

/// The order in which a step lays out its chunks: single-token chunks (decode) first, then
/// the other chunks of at most `SKINNY_MAX_CHUNK` tokens, then the longer ones, each group
/// in the caller's order. `order[i]` is the caller's index of the i-th laid-out chunk.
/// The long chunks last make their rows one run (`StepLayout::long_rows_from`), which the
/// CUDA layers write as bf16 GEMM inputs directly. A chunk's rows compute the same
/// wherever it lies in the step, so the order changes no result.
pub fn decode_first(chunks: &[SeqChunk<'_>]) -> Vec<usize> {
    let class = |i: usize| match chunks[i].tokens.len() {
        1 => 0,
        n if n <= SKINNY_MAX_CHUNK => 1,
        _ => 2,
    };
    let mut order: Vec<usize> = (0..chunks.len()).collect();
    order.sort_by_key(|&i| class(i)); // stable: the caller's order within a group
    order
}

/// Per-chunk results in laid-out order back in the caller's order (`order` from
/// `decode_first`).
pub fn in_caller_order<T>(order: &[usize], laid_out: Vec<T>) -> Vec<T> {
    let mut v: Vec<(usize, T)> = order.iter().copied().zip(laid_out).collect();
    v.sort_unstable_by_key(|(i, _)| *i);
    v.into_iter().map(|(_, x)| x).collect()
}

impl StepLayout {
    /// The first row of the trailing run of chunks longer than `SKINNY_MAX_CHUNK` (the
    /// rows cuBLASLt multiplies), or the number of rows when the last chunk is not long.
    pub fn long_rows_from(&self) -> usize {
        let mut from = self.num_tokens();
        for w in self.cu_seqlens.windows(2).rev() {
            if (w[1] - w[0]) as usize <= SKINNY_MAX_CHUNK {
                break;
            }
            from = w[0] as usize;
        }
        from
    }

    /// How many leading sequences have exactly one token (the decode rows).
    pub fn decode_seqs(&self) -> usize {
        self.cu_seqlens.windows(2).take_while(|w| w[1] - w[0] == 1).count()
    }
}

/// What one step may hold: the backend's fixed limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepLimits {
    pub slots: usize,
    pub block_size: usize,
    pub kv_blocks: usize,
    pub max_seq_len: usize,
    pub max_blocks_per_seq: usize,
    pub vocab: usize,
    /// Token rows one step may carry (the scratch buffers' size).
    pub max_tokens: usize,
}

/// The named row groups of a laid-out step, in row order: first `decode_seqs`
/// single-token sequences (one row each, computed by the decode kernels, so a decode row
/// comes out the same whatever shares its step), then `prefill_seqs` chunks (the prefill
/// kernels). Speculative verify rows will form a third group computed like decode rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowGroups {
    pub decode_seqs: usize,
    pub prefill_seqs: usize,
}

/// Offsets (in i32 elements) of each array of a step's metadata image (`Step::packed`),
/// which the device reads from one buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaOffsets {
    pub ids: usize,
    pub pos: usize,
    pub kv_loc: usize,
    pub cu_seqlens: usize,
    pub slots: usize,
    pub start_pos: usize,
    pub ctx_lens: usize,
    pub block_tables: usize,
    /// Token rows whose logits are wanted (at most one per token row).
    pub logit_rows: usize,
    /// Per logit row: its token mask's index, or -1 (`StepLayout::mask_rows`).
    pub mask_rows: usize,
    /// Per token row, an i32 pair (`StepLayout::state_io`; none outside verification).
    pub state_io: usize,
    /// The token masks (`StepLayout::masks`), last: the arrays before them keep their
    /// offsets whatever the masks, so a captured decode graph reads the same addresses.
    pub masks: usize,
    pub end: usize,
}

impl MetaOffsets {
    /// Offsets for `t` token rows, `s` sequences, block-table stride `bt`, `io_len` i32s of
    /// state entries and `mask_len` i32s of token masks.
    pub fn layout(t: usize, s: usize, bt: usize, io_len: usize, mask_len: usize) -> Self {
        // Each array starts on a 16-element boundary (64 bytes).
        let r = |x: usize| x.div_ceil(16) * 16;
        let ids = 0;
        let pos = ids + r(t);
        let kv_loc = pos + r(t);
        let cu_seqlens = kv_loc + r(t);
        let slots = cu_seqlens + r(s + 1);
        let start_pos = slots + r(s);
        let ctx_lens = start_pos + r(s);
        let block_tables = ctx_lens + r(s);
        let logit_rows = block_tables + r(s * bt);
        let mask_rows = logit_rows + r(t);
        let state_io = mask_rows + r(t);
        let masks = state_io + r(io_len);
        let end = masks + r(mask_len);
        MetaOffsets { ids, pos, kv_loc, cu_seqlens, slots, start_pos, ctx_lens, block_tables, logit_rows, mask_rows, state_io, masks, end }
    }
    /// i32 elements the image of the largest step takes (the device buffer's size), with
    /// a token mask for each of its `s` sequences over a vocabulary of `vocab`.
    pub fn len(t: usize, s: usize, bt: usize, vocab: usize) -> usize {
        Self::layout(t, s, bt, 2 * t, s * vocab.div_ceil(32)).end
    }
    /// The per-sequence arrays seen from sequence `d` on (`bt`: the block-table stride);
    /// token rows keep their absolute numbers (cu_seqlens holds row numbers).
    pub fn skip_seqs(&self, d: usize, bt: usize) -> Self {
        MetaOffsets {
            cu_seqlens: self.cu_seqlens + d,
            slots: self.slots + d,
            start_pos: self.start_pos + d,
            ctx_lens: self.ctx_lens + d,
            block_tables: self.block_tables + d * bt,
            ..*self
        }
    }
    /// The host image of `l`'s arrays at these offsets (padding between arrays is 0).
    pub fn pack(&self, l: &StepLayout) -> Vec<i32> {
        let mut host = vec![0i32; self.end];
        let mut put = |at: usize, v: &[i32]| host[at..at + v.len()].copy_from_slice(v);
        put(self.ids, &l.ids);
        put(self.pos, &l.pos);
        put(self.kv_loc, &l.kv_loc);
        put(self.cu_seqlens, &l.cu_seqlens);
        put(self.slots, &l.slots);
        put(self.start_pos, &l.start_pos);
        put(self.ctx_lens, &l.ctx_lens);
        put(self.block_tables, &l.block_tables);
        put(self.logit_rows, &l.logit_rows);
        put(self.mask_rows, &l.mask_rows);
        put(self.state_io, &l.state_io);
        put(self.masks, &l.masks);
        host
    }
}

/// One step, built once by `Step::build` and read by the backend's every stage.
#[derive(Clone, Debug)]
pub struct Step {
    /// `order[i]`: the caller's index of the i-th laid-out chunk (decode first).
    pub order: Vec<usize>,
    pub layout: StepLayout,
    pub groups: RowGroups,
    pub meta: MetaOffsets,
    /// The metadata image the device reads (`meta` gives the offsets).
    pub packed: Vec<i32>,
    /// The vocabulary bound of the on-device greedy argmax, when some chunk wants it.
    pub argmax_limit: Option<usize>,
    /// Per laid-out chunk: whether its logit rows go to the host (else only its argmax).
    pub wants_data: Vec<bool>,
    /// Per logit row: (laid-out chunk, row within the chunk) on the host, or None.
    pub dest: Vec<Option<(usize, usize)>>,
}

impl Step {
    /// Checks `chunks` against `lim` and lays them out. Every error names the chunk's
    /// slot and the limit it breaks.
    pub fn build(chunks: &[SeqChunk<'_>], lim: &StepLimits) -> Result<Step> {
        ensure!(!chunks.is_empty(), "a step needs at least one chunk");
        for (i, c) in chunks.iter().enumerate() {
            ensure!(c.slot < lim.slots, "slot {} out of range ({} slots)", c.slot, lim.slots);
            ensure!(chunks[..i].iter().all(|o| o.slot != c.slot), "slot {} appears twice in one step", c.slot);
            ensure!(c.start_pos + c.tokens.len() <= lim.max_seq_len, "slot {} would pass max_seq_len ({})", c.slot, lim.max_seq_len);
            ensure!(c.blocks.len() <= lim.max_blocks_per_seq, "slot {} holds more KV blocks than a sequence may ({})", c.slot, lim.max_blocks_per_seq);
            ensure!(c.blocks.iter().all(|b| (*b as usize) < lim.kv_blocks), "slot {} names a KV block outside the pool", c.slot);
            c.check_mask()?;
            if let Some(&tok) = c.tokens.iter().find(|&&t| t as usize >= lim.vocab) {
                bail!("token id {tok} is outside the vocabulary ({})", lim.vocab);
            }
        }
        let order = decode_first(chunks);
        // Usually the chunks already come decode-first: then nothing is copied or permuted.
        let permuted: Vec<SeqChunk<'_>>;
        let laid = if is_identity(&order) {
            chunks
        } else {
            permuted = order.iter().map(|&i| chunks[i].clone()).collect();
            &permuted[..]
        };
        let mut argmax_limit = None;
        for c in laid {
            if let Want::Argmax { limit } = c.want {
                ensure!(argmax_limit.is_none_or(|l| l == limit), "one step must use one argmax vocabulary limit");
                argmax_limit = Some(limit);
            }
        }
        let layout = StepLayout::new(laid, lim.block_size)?;
        ensure!(
            layout.num_tokens() <= lim.max_tokens,
            "step of {} tokens exceeds the step budget of {}",
            layout.num_tokens(),
            lim.max_tokens
        );
        let wants_data: Vec<bool> = laid.iter().map(|c| !matches!(c.want, Want::Argmax { .. })).collect();
        Ok(Step::from_layout(order, layout, argmax_limit, wants_data))
    }

    pub(super) fn from_layout(order: Vec<usize>, layout: StepLayout, argmax_limit: Option<usize>, wants_data: Vec<bool>) -> Step {
        let decode_seqs = layout.decode_seqs();
        let groups = RowGroups { decode_seqs, prefill_seqs: layout.num_seqs() - decode_seqs };
        let meta = MetaOffsets::layout(layout.num_tokens(), layout.num_seqs(), layout.bt_stride, layout.state_io.len(), layout.masks.len());
        let packed = meta.pack(&layout);
        let dest = layout.logit_destinations(&wants_data);
        Step { order, layout, groups, meta, packed, argmax_limit, wants_data, dest }
    }

    /// Every sequence contributes one token: the decode path (and its graphs).
    pub fn is_decode(&self) -> bool {
        self.layout.is_decode()
    }

    /// Whether a captured decode graph can run this step: one token per sequence, and a
    /// logit row for every one (the graph computes logit row r from token row r; a
    /// one-token chunk that wants nothing, an intermediate prefill piece, breaks that).
    pub fn fits_decode_graph(&self) -> bool {
        self.is_decode() && self.layout.logit_rows.len() == self.layout.num_seqs()
    }

    /// This decode step padded to `b` sequences and table stride `bt_stride` (the shape
    /// of a captured decode graph); results still go to the real chunks.
    pub fn padded_decode(&self, b: usize, bt_stride: usize) -> Result<Step> {
        let layout = self.layout.padded_decode(b, bt_stride)?;
        Ok(Step::from_layout(self.order.clone(), layout, self.argmax_limit, self.wants_data.clone()))
    }

    /// A step of `b` padding rows (no slot, no keys, no KV write): the shape a decode
    /// graph is captured with, before any request exists.
    pub fn graph_shape(b: usize, bt_stride: usize) -> Step {
        let layout = StepLayout {
            ids: vec![0; b],
            pos: vec![0; b],
            cu_seqlens: (0..=b as i32).collect(),
            slots: vec![-1; b],
            start_pos: vec![0; b],
            ctx_lens: vec![0; b],
            kv_loc: vec![-1; b],
            block_tables: vec![0; b * bt_stride],
            bt_stride,
            logit_rows: Vec::new(),
            logit_counts: Vec::new(),
            mask_rows: Vec::new(),
            ..Default::default()
        };
        Step::from_layout(Vec::new(), layout, None, Vec::new())
    }

    /// Host buffers the logit rows land in, one per laid-out chunk (empty for chunks
    /// that want only their argmax).
    pub fn host_buffers(&self, vocab: usize) -> Vec<Vec<f32>> {
        self.layout.logit_counts.iter().zip(&self.wants_data).map(|(n, w)| if *w { vec![0f32; n * vocab] } else { Vec::new() }).collect()
    }

    /// Per-chunk results in the caller's order, from the host buffers and the argmax of
    /// each logit row (`tokens`, in logit-row order, when the step asked for argmaxes).
    pub fn finish(&self, tokens: &[i32], bufs: Vec<Vec<f32>>) -> Result<Vec<ChunkLogits>> {
        let mut out = Vec::with_capacity(bufs.len());
        let mut row = 0;
        for ((n, w), data) in self.layout.logit_counts.iter().zip(&self.wants_data).zip(bufs) {
            out.push(if *w {
                ChunkLogits { rows: *n, data, argmax: None }
            } else {
                let tok = *tokens.get(row).ok_or_else(|| anyhow::anyhow!("the device returned {} greedy tokens, row {row} missing", tokens.len()))?;
                ChunkLogits { rows: 0, data, argmax: Some(tok as u32) }
            });
            row += n;
        }
        Ok(if is_identity(&self.order) { out } else { in_caller_order(&self.order, out) })
    }
}

/// Whether a layout order keeps the caller's order.
fn is_identity(order: &[usize]) -> bool {
    order.iter().enumerate().all(|(i, &o)| i == o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_chunks_lead_in_a_stable_order() {
        let (short, one) = ([1u32, 2, 3], [4u32]);
        let long: Vec<u32> = (0..SKINNY_MAX_CHUNK as u32 + 1).collect();
        let blocks: Vec<u32> = (0..8).collect();
        let chunks: Vec<SeqChunk> = [(0, &long[..]), (1, &one[..]), (2, &short[..]), (3, &one[..]), (4, &long[..]), (5, &short[..]), (6, &one[..])]
            .into_iter()
            .map(|(slot, tokens)| SeqChunk { slot, start_pos: 5, tokens, blocks: &blocks, want: Want::Last, allowed: None })
            .collect();
        let order = decode_first(&chunks);
        assert_eq!(order, vec![1, 3, 6, 2, 5, 0, 4], "decode, then short, then long chunks, each in the caller's order");
        let laid: Vec<SeqChunk> = order.iter().map(|&i| chunks[i].clone()).collect();
        let l = StepLayout::new(&laid, 16).unwrap();
        assert_eq!(l.decode_seqs(), 3);
        assert_eq!(l.long_rows_from(), 3 + 2 * 3, "the two long chunks' rows are the trailing run");
        let unordered = StepLayout::new(&chunks, 16).unwrap();
        assert_eq!(unordered.decode_seqs(), 0);
        assert_eq!(unordered.long_rows_from(), unordered.num_tokens(), "the last chunk is not long: no trailing run");
        assert_eq!(StepLayout::new(&chunks[..1], 16).unwrap().long_rows_from(), 0, "one long chunk: every row");
        assert_eq!(decode_first(&chunks[1..2]), vec![0]);
        // Results computed in laid-out order go back to the caller's chunks.
        let laid_out_slots: Vec<usize> = laid.iter().map(|c| c.slot).collect();
        assert_eq!(in_caller_order(&order, laid_out_slots), vec![0, 1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn groups_host_copies_by_chunk() {
        let (a, b, c) = ([1u32, 2, 3], [4u32], [5u32]);
        let blocks = [0u32];
        let chunks = [
            SeqChunk { slot: 0, start_pos: 0, tokens: &a, blocks: &blocks, want: Want::All, allowed: None },
            SeqChunk { slot: 1, start_pos: 0, tokens: &b, blocks: &blocks, want: Want::Argmax { limit: 9 }, allowed: None },
            SeqChunk { slot: 2, start_pos: 0, tokens: &c, blocks: &blocks, want: Want::Last, allowed: None },
        ];
        let l = StepLayout::new(&chunks, 4).unwrap();
        let dest = l.logit_destinations(&[true, false, true]);
        assert_eq!(dest, vec![Some((0, 0)), Some((0, 1)), Some((0, 2)), None, Some((2, 0))]);
        assert_eq!(
            row_copies(&dest, 0..5),
            vec![RowCopy { row: 0, rows: 3, chunk: 0, chunk_row: 0 }, RowCopy { row: 4, rows: 1, chunk: 2, chunk_row: 0 }]
        );
        // A 64-row piece boundary splits a chunk's rows into two copies.
        assert_eq!(row_copies(&dest, 1..3), vec![RowCopy { row: 1, rows: 2, chunk: 0, chunk_row: 1 }]);
    }

    #[test]
    fn lays_out_mixed_prefill_and_decode() {
        let (p, d) = ([5u32, 6, 7], [9u32]);
        let (bp, bd) = ([3u32, 8], [1u32, 4, 2]);
        let chunks = [
            SeqChunk { slot: 2, start_pos: 3, tokens: &p, blocks: &bp, want: Want::All, allowed: None },
            SeqChunk { slot: 0, start_pos: 9, tokens: &d, blocks: &bd, want: Want::Last, allowed: None },
        ];
        let l = StepLayout::new(&chunks, 4).unwrap();
        assert_eq!(l.ids, vec![5, 6, 7, 9]);
        assert_eq!(l.pos, vec![3, 4, 5, 9]);
        assert_eq!(l.cu_seqlens, vec![0, 3, 4]);
        assert_eq!(l.slots, vec![2, 0]);
        assert_eq!(l.ctx_lens, vec![6, 10]);
        // pos 3 -> block 3 offset 3 = 15; pos 4 -> block 8 offset 0 = 32; pos 9 -> block 2 offset 1 = 9.
        assert_eq!(l.kv_loc, vec![15, 32, 33, 9]);
        assert_eq!(l.bt_stride, 3);
        assert_eq!(l.block_tables, vec![3, 8, 0, 1, 4, 2]);
        assert_eq!(l.logit_rows, vec![0, 1, 2, 3]);
        assert_eq!(l.logit_counts, vec![3, 1]);
        assert!(!l.is_decode());
        assert_eq!(l.max_seq_tokens(), 3);
    }

    #[test]
    fn pads_a_decode_step_to_a_graph_bucket() {
        let (a, b) = ([5u32], [6u32]);
        let chunks = [
            SeqChunk { slot: 3, start_pos: 4, tokens: &a, blocks: &[7, 9], want: Want::Argmax { limit: 10 }, allowed: None },
            SeqChunk { slot: 1, start_pos: 0, tokens: &b, blocks: &[2], want: Want::Argmax { limit: 10 }, allowed: None },
        ];
        let l = StepLayout::new(&chunks, 4).unwrap();
        let p = l.padded_decode(4, 3).unwrap();
        assert_eq!(p.ids, vec![5, 6, 0, 0]);
        assert_eq!(p.slots, vec![3, 1, -1, -1]);
        assert_eq!(p.ctx_lens, vec![5, 1, 0, 0]);
        assert_eq!(p.kv_loc, vec![36, 8, -1, -1]);
        assert_eq!(p.cu_seqlens, vec![0, 1, 2, 3, 4]);
        assert_eq!(p.block_tables, vec![7, 9, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(p.logit_rows, vec![0, 1]);
        assert!(l.padded_decode(1, 3).is_err());
    }

    #[test]
    fn token_masks_travel_in_the_image_after_every_other_array() {
        let (a, b, c, p) = ([5u32], [6u32], [7u32], [1u32, 2, 3]);
        let (m_long, m_short) = ([u32::MAX; 6], [0b1010u32]);
        let blocks = [0u32, 1];
        let chunks = [
            SeqChunk { slot: 4, start_pos: 0, tokens: &p, blocks: &blocks, want: Want::Argmax { limit: 70 }, allowed: Some(&m_short) },
            SeqChunk { slot: 1, start_pos: 0, tokens: &a, blocks: &blocks, want: Want::Argmax { limit: 70 }, allowed: Some(&m_long) },
            SeqChunk { slot: 2, start_pos: 0, tokens: &b, blocks: &blocks, want: Want::Argmax { limit: 70 }, allowed: None },
            SeqChunk { slot: 3, start_pos: 0, tokens: &c, blocks: &blocks, want: Want::Last, allowed: None },
        ];
        let st = Step::build(&chunks, &limits()).unwrap();
        // Decode rows first: slots 1, 2, 3, then the prefill chunk of slot 4.
        assert_eq!(st.layout.mask_rows, vec![0, -1, -1, 1]);
        assert_eq!(st.layout.mask_words, 3);
        // Cut to ceil(70 / 32) = 3 words, or zero-padded to them.
        assert_eq!(st.layout.masks, vec![-1, -1, -1, 0b1010, 0, 0]);
        let m = st.meta;
        assert_eq!(&st.packed[m.mask_rows..m.mask_rows + 4], &[0, -1, -1, 1]);
        assert_eq!(&st.packed[m.masks..m.masks + 6], &st.layout.masks[..]);
        assert!(m.masks > m.mask_rows && m.mask_rows > m.logit_rows && m.end >= m.masks + 6);
        // The same step without masks names the same offsets up to the masks.
        let plain: Vec<SeqChunk> = chunks.iter().map(|c| SeqChunk { allowed: None, ..c.clone() }).collect();
        let q = Step::build(&plain, &limits()).unwrap();
        assert_eq!(q.layout.mask_rows, vec![-1; 4]);
        assert_eq!(MetaOffsets { masks: 0, end: 0, ..q.meta }, MetaOffsets { masks: 0, end: 0, ..m });
        // A decode step keeps its masks when padded to a graph bucket.
        let dec = Step::build(&chunks[1..3], &limits()).unwrap().padded_decode(4, 16).unwrap();
        assert_eq!((dec.layout.mask_rows.clone(), dec.layout.masks.len()), (vec![0, -1], 3));
        assert_eq!(&dec.packed[dec.meta.masks..dec.meta.masks + 3], &[-1, -1, -1]);
        // A mask on a chunk that wants logits is refused.
        let bad = [SeqChunk { allowed: Some(&m_short), ..chunks[3].clone() }];
        assert!(Step::build(&bad, &limits()).unwrap_err().to_string().contains("token mask"));
    }

    #[test]
    fn refuses_too_few_blocks() {
        let t = [1u32, 2];
        let c = [SeqChunk { slot: 0, start_pos: 3, tokens: &t, blocks: &[0], want: Want::Nothing, allowed: None }];
        let e = StepLayout::new(&c, 4).unwrap_err().to_string();
        assert!(e.contains("cannot hold 5 tokens"), "{e}");
    }

    fn limits() -> StepLimits {
        StepLimits { slots: 8, block_size: 4, kv_blocks: 16, max_seq_len: 64, max_blocks_per_seq: 16, vocab: 100, max_tokens: 32 }
    }

    #[test]
    fn a_step_packs_its_arrays_at_the_offsets_it_names() {
        let (p, d) = ([5u32, 6, 7], [9u32]);
        let (bp, bd) = ([3u32, 8], [1u32, 4, 2]);
        let chunks = [
            SeqChunk { slot: 2, start_pos: 3, tokens: &p, blocks: &bp, want: Want::All, allowed: None },
            SeqChunk { slot: 0, start_pos: 9, tokens: &d, blocks: &bd, want: Want::Argmax { limit: 90 }, allowed: None },
        ];
        let st = Step::build(&chunks, &limits()).unwrap();
        // The decode chunk is laid out first.
        assert_eq!(st.order, vec![1, 0]);
        assert_eq!(st.groups, RowGroups { decode_seqs: 1, prefill_seqs: 1 });
        assert_eq!(st.argmax_limit, Some(90));
        assert_eq!(st.wants_data, vec![false, true]);
        let m = st.meta;
        let l = &st.layout;
        assert_eq!(st.packed.len(), m.end);
        assert_eq!(&st.packed[m.ids..m.ids + 4], &l.ids[..]);
        assert_eq!(&st.packed[m.pos..m.pos + 4], &[9, 3, 4, 5]);
        assert_eq!(&st.packed[m.cu_seqlens..m.cu_seqlens + 3], &[0, 1, 4]);
        assert_eq!(&st.packed[m.slots..m.slots + 2], &[0, 2]);
        assert_eq!(&st.packed[m.block_tables..m.block_tables + 6], &[1, 4, 2, 3, 8, 0]);
        // Logit rows: the decode row 0, then all 3 rows of the prefill chunk.
        assert_eq!(&st.packed[m.logit_rows..m.logit_rows + 4], &[0, 1, 2, 3]);
        // The prefill group's view starts at its own sequence, rows keep their numbers.
        let pm = m.skip_seqs(st.groups.decode_seqs, l.bt_stride);
        assert_eq!(st.packed[pm.slots], 2);
        assert_eq!(&st.packed[pm.cu_seqlens..pm.cu_seqlens + 2], &[1, 4]);
        assert_eq!(&st.packed[pm.block_tables..pm.block_tables + 2], &[3, 8]);
        // Results come back in the caller's order: chunk 0 (prefill) has its 3 rows,
        // chunk 1 (decode) its greedy token.
        let mut bufs = st.host_buffers(100);
        assert_eq!(bufs.iter().map(|b| b.len()).collect::<Vec<_>>(), vec![0, 300]);
        bufs[1][0] = 1.5;
        let out = st.finish(&[42, 0, 0, 0], bufs).unwrap();
        assert_eq!((out[0].rows, out[0].data[0], out[0].argmax), (3, 1.5, None));
        assert_eq!((out[1].rows, out[1].argmax), (0, Some(42)));
    }

    #[test]
    fn a_step_refuses_what_breaks_a_limit() {
        let t = [1u32];
        let ok_blocks = [0u32];
        let chunk = |slot, start_pos, tokens, blocks, want| SeqChunk { slot, start_pos, tokens, blocks, want, allowed: None };
        let cases: Vec<(Vec<SeqChunk>, &str)> = vec![
            (vec![], "at least one chunk"),
            (vec![chunk(8, 0, &t[..], &ok_blocks[..], Want::Last)], "slot 8 out of range"),
            (vec![chunk(1, 0, &t[..], &ok_blocks[..], Want::Last), chunk(1, 0, &t[..], &ok_blocks[..], Want::Last)], "appears twice"),
            (vec![chunk(1, 64, &t[..], &ok_blocks[..], Want::Last)], "max_seq_len"),
            (vec![chunk(1, 0, &t[..], &[16u32][..], Want::Last)], "outside the pool"),
            (vec![chunk(1, 0, &[100u32][..], &ok_blocks[..], Want::Last)], "outside the vocabulary"),
            (
                vec![chunk(1, 0, &t[..], &ok_blocks[..], Want::Argmax { limit: 5 }), chunk(2, 0, &t[..], &ok_blocks[..], Want::Argmax { limit: 6 })],
                "one argmax vocabulary limit",
            ),
            (vec![chunk(1, 0, &[1u32; 33][..], &[0u32; 9][..], Want::Last)], "exceeds the step budget"),
        ];
        for (chunks, want) in cases {
            let e = Step::build(&chunks, &limits()).unwrap_err().to_string();
            assert!(e.contains(want), "expected `{want}` in: {e}");
        }
    }

    #[test]
    fn a_padded_decode_step_keeps_its_results_mapping() {
        let (a, b) = ([5u32], [6u32]);
        let chunks = [
            SeqChunk { slot: 3, start_pos: 4, tokens: &a, blocks: &[7, 9], want: Want::Argmax { limit: 10 }, allowed: None },
            SeqChunk { slot: 1, start_pos: 0, tokens: &b, blocks: &[2], want: Want::Last, allowed: None },
        ];
        let st = Step::build(&chunks, &limits()).unwrap().padded_decode(4, 3).unwrap();
        assert_eq!(st.groups, RowGroups { decode_seqs: 4, prefill_seqs: 0 });
        assert_eq!(&st.packed[st.meta.slots..st.meta.slots + 4], &[3, 1, -1, -1]);
        let mut bufs = st.host_buffers(100);
        bufs[1][7] = 2.0;
        let out = st.finish(&[4, 8], bufs).unwrap();
        assert_eq!(out[0].argmax, Some(4));
        assert_eq!((out[1].rows, out[1].data[7]), (1, 2.0));
        let g = Step::graph_shape(2, 3);
        assert_eq!(g.groups, RowGroups { decode_seqs: 2, prefill_seqs: 0 });
        assert_eq!(&g.packed[g.meta.kv_loc..g.meta.kv_loc + 2], &[-1, -1]);
    }

    #[test]
    fn a_one_token_chunk_that_wants_nothing_keeps_a_step_off_the_decode_graphs() {
        // The device run of 2026-12-05 found it: the graph maps logit row r to token row r.
        let (a, b) = ([5u32], [6u32]);
        let blocks = [0u32];
        let chunk = |slot, tokens, want| SeqChunk { slot, start_pos: 3, tokens, blocks: &blocks, want, allowed: None };
        let all = Step::build(&[chunk(0, &a[..], Want::Argmax { limit: 9 }), chunk(1, &b[..], Want::Last)], &limits()).unwrap();
        assert!(all.fits_decode_graph());
        let piece = Step::build(&[chunk(0, &a[..], Want::Nothing), chunk(1, &b[..], Want::Argmax { limit: 9 })], &limits()).unwrap();
        assert!(piece.is_decode() && !piece.fits_decode_graph());
    }
}
