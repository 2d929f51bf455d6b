//! The flat, device-ready description of one step: which token rows belong to which
//! sequence, their positions, where their keys and values go in the paged KV cache, and
//! which rows need logits. Pure host logic (tested without a GPU); the cuda backend
//! uploads these arrays once per step.

use super::{SeqChunk, Want};
use anyhow::{ensure, Result};

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

/// The order in which a step lays out its chunks: single-token chunks (decode) first, the
/// rest after, each group in the caller's order. `order[i]` is the caller's index of the
/// i-th laid-out chunk.
pub fn decode_first(chunks: &[SeqChunk<'_>]) -> Vec<usize> {
    let (mut order, rest): (Vec<usize>, Vec<usize>) = (0..chunks.len()).partition(|&i| chunks[i].tokens.len() == 1);
    order.extend(rest);
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
    /// How many leading sequences have exactly one token (the decode rows).
    pub fn decode_seqs(&self) -> usize {
        self.cu_seqlens.windows(2).take_while(|w| w[1] - w[0] == 1).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_chunks_lead_in_a_stable_order() {
        let (long, one) = ([1u32, 2, 3], [4u32]);
        let blocks = [0u32];
        let chunks: Vec<SeqChunk> = [(0, &long[..]), (1, &one[..]), (2, &long[..]), (3, &one[..]), (4, &one[..])]
            .into_iter()
            .map(|(slot, tokens)| SeqChunk { slot, start_pos: 5, tokens, blocks: &blocks, want: Want::Last })
            .collect();
        let order = decode_first(&chunks);
        assert_eq!(order, vec![1, 3, 4, 0, 2]);
        let laid: Vec<SeqChunk> = order.iter().map(|&i| chunks[i].clone()).collect();
        let l = StepLayout::new(&laid, 16).unwrap();
        assert_eq!(l.decode_seqs(), 3);
        assert_eq!(StepLayout::new(&chunks, 16).unwrap().decode_seqs(), 0);
        assert_eq!(decode_first(&chunks[1..2]), vec![0]);
        // Results computed in laid-out order go back to the caller's chunks.
        let laid_out_slots: Vec<usize> = laid.iter().map(|c| c.slot).collect();
        assert_eq!(in_caller_order(&order, laid_out_slots), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn groups_host_copies_by_chunk() {
        let (a, b, c) = ([1u32, 2, 3], [4u32], [5u32]);
        let blocks = [0u32];
        let chunks = [
            SeqChunk { slot: 0, start_pos: 0, tokens: &a, blocks: &blocks, want: Want::All },
            SeqChunk { slot: 1, start_pos: 0, tokens: &b, blocks: &blocks, want: Want::Argmax { limit: 9 } },
            SeqChunk { slot: 2, start_pos: 0, tokens: &c, blocks: &blocks, want: Want::Last },
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
            SeqChunk { slot: 2, start_pos: 3, tokens: &p, blocks: &bp, want: Want::All },
            SeqChunk { slot: 0, start_pos: 9, tokens: &d, blocks: &bd, want: Want::Last },
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
            SeqChunk { slot: 3, start_pos: 4, tokens: &a, blocks: &[7, 9], want: Want::Argmax { limit: 10 } },
            SeqChunk { slot: 1, start_pos: 0, tokens: &b, blocks: &[2], want: Want::Argmax { limit: 10 } },
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
    fn refuses_too_few_blocks() {
        let t = [1u32, 2];
        let c = [SeqChunk { slot: 0, start_pos: 3, tokens: &t, blocks: &[0], want: Want::Nothing }];
        let e = StepLayout::new(&c, 4).unwrap_err().to_string();
        assert!(e.contains("cannot hold 5 tokens"), "{e}");
    }
}
