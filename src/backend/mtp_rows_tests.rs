use super::*;
use crate::backend::step::{Step, StepLimits};
use crate::backend::verify_step::{VerifyShape, VerifyStep};
use crate::backend::{SeqChunk, VerifyChunk, Want};

const BS: usize = 4;

fn limits() -> StepLimits {
    StepLimits { slots: 8, block_size: BS, kv_blocks: 64, max_seq_len: 128, max_blocks_per_seq: 32, vocab: 1000, max_tokens: 256 }
}

fn blocks(slot: usize) -> Vec<u32> {
    (slot as u32 * 8..slot as u32 * 8 + 8).collect()
}

/// Resolves every MTP row of `m` (a pass over main step `l`) to (t, token, the position
/// whose hidden state it pairs), with `pending[slot]` the position of each slot's pending
/// hidden state; then applies the pass's pending updates.
fn pairs(l: &StepLayout, m: &MtpRows, pending: &mut [Option<usize>]) -> Vec<(usize, usize, u32, usize)> {
    let mut out = Vec::new();
    for s in 0..m.layout.num_seqs() {
        let slot = m.layout.slots[s];
        for r in m.layout.cu_seqlens[s] as usize..m.layout.cu_seqlens[s + 1] as usize {
            if slot < 0 {
                assert_eq!((m.layout.kv_loc[r], m.layout.ctx_lens[s]), (-1, 0), "a padding MTP row writes and reads nothing");
                continue;
            }
            let h = m.hidden[r];
            let src = if h < 0 { pending[(-1 - h) as usize].expect("a pending hidden state") } else { l.pos[h as usize] as usize };
            out.push((slot as usize, m.layout.pos[r] as usize, m.layout.ids[r] as u32, src));
        }
    }
    for &(row, slot) in &m.pending {
        pending[slot] = Some(l.pos[row] as usize);
    }
    out
}

#[test]
fn forward_steps_pair_every_position_with_the_next_token_exactly_once() {
    // Slot 2: a 9-token prompt in chunks of 5 and 4 (the second beside a decode row of slot
    // 3), then 3 decode steps. Slot 3: a 1-token prompt, then decode steps. Token at
    // position p of slot s: 100 * s + p.
    let tok = |s: usize, p: usize| (100 * s + p) as u32;
    let mut pending = vec![None; 8];
    let mut seen: Vec<(usize, usize, u32, usize)> = Vec::new();
    let (b2, b3) = (blocks(2), blocks(3));
    let plan: Vec<Vec<(usize, usize, usize)>> = vec![
        vec![(2, 0, 5), (3, 0, 1)],
        vec![(3, 1, 1), (2, 5, 4)],
        vec![(2, 9, 1), (3, 2, 1)],
        vec![(2, 10, 1), (3, 3, 1)],
        vec![(2, 11, 1)],
    ];
    for step in plan {
        let toks: Vec<Vec<u32>> = step.iter().map(|&(s, start, n)| (start..start + n).map(|p| tok(s, p)).collect()).collect();
        let chunks: Vec<SeqChunk> = step
            .iter()
            .zip(&toks)
            .map(|(&(s, start, _), t)| SeqChunk { slot: s, start_pos: start, tokens: t, blocks: if s == 2 { &b2 } else { &b3 }, want: Want::Nothing, allowed: None })
            .collect();
        let st = Step::build(&chunks, &limits()).unwrap();
        let m = MtpRows::for_step(&st.layout, BS);
        // MTP KV rows follow the sequence's block table at position t.
        for (r, &kv) in m.layout.kv_loc.iter().enumerate() {
            if kv >= 0 {
                let s = (0..m.layout.num_seqs()).find(|&s| (m.layout.cu_seqlens[s]..m.layout.cu_seqlens[s + 1]).contains(&(r as i32))).unwrap();
                let slot = m.layout.slots[s] as usize;
                let t = m.layout.pos[r] as usize;
                assert_eq!(kv as usize, blocks(slot)[t / BS] as usize * BS + t % BS);
            }
        }
        seen.extend(pairs(&st.layout, &m, &mut pending));
    }
    seen.sort();
    let want: Vec<(usize, usize, u32, usize)> =
        (0..11).map(|t| (2, t, tok(2, t + 1), t)).chain((0..3).map(|t| (3, t, tok(3, t + 1), t))).collect();
    let mut want = want;
    want.sort();
    assert_eq!(seen, want, "every pair (h_t, x_(t+1)) once, at MTP position t");
    assert_eq!((pending[2], pending[3]), (Some(11), Some(3)), "the last fed position stays pending");
}

#[test]
fn a_padded_decode_step_keeps_one_mtp_row_per_row() {
    let (b1, t) = (blocks(1), [7u32]);
    let chunks = [SeqChunk { slot: 1, start_pos: 6, tokens: &t, blocks: &b1, want: Want::Argmax { limit: 9 }, allowed: None }];
    let padded = Step::build(&chunks, &limits()).unwrap().padded_decode(4, 32).unwrap();
    let m = MtpRows::for_step(&padded.layout, BS);
    assert_eq!(m.layout.num_tokens(), 4);
    assert_eq!(m.layout.num_seqs(), 4);
    assert_eq!(m.layout.slots, vec![1, -1, -1, -1]);
    assert_eq!(m.layout.pos[0], 5);
    assert_eq!(m.layout.ctx_lens, vec![6, 0, 0, 0]);
    assert_eq!(m.hidden[0], pending_of(1));
    assert_eq!(m.pending, vec![(0, 1)]);
    // The graph's shape: the MTP image of an all-padding step has the same offsets.
    let shape = MtpRows::for_step(&Step::graph_shape(4, 32).layout, BS);
    assert_eq!((shape.layout.num_tokens(), shape.layout.num_seqs(), shape.layout.bt_stride), (4, 4, 32));
}

#[test]
fn verify_rows_pair_each_position_with_its_predecessor() {
    let (a, b) = ([11u32, 12, 13], [21u32, 22]);
    let (ba, bb) = (blocks(5), blocks(2));
    let chunks = [
        VerifyChunk { slot: 5, start_pos: 10, tokens: &a, blocks: &ba, limit: 90 },
        VerifyChunk { slot: 2, start_pos: 4, tokens: &b, blocks: &bb, limit: 90 },
    ];
    let v = VerifyStep::build(&chunks, &limits(), &VerifyShape { slots: 8, rows: 2, positions: 4 }, None).unwrap();
    let m = MtpRows::for_verify(&v.step.layout, &v.rows, BS);
    // Rows: (0,0) (1,0) (0,1) (1,1) (0,2).
    assert_eq!(m.hidden, vec![pending_of(5), pending_of(2), 0, 1, 2]);
    assert_eq!(m.layout.pos, vec![9, 3, 10, 4, 11]);
    assert_eq!(m.layout.ids, vec![11, 21, 12, 22, 13]);
    assert_eq!(m.layout.ctx_lens, vec![10, 4, 11, 5, 12]);
    assert!(m.pending.is_empty(), "the commit sets the pending state");
    assert_eq!(m.layout.kv_loc[0] as usize, blocks(5)[9 / BS] as usize * BS + 9 % BS);
}

#[test]
fn draft_steps_chain_from_the_pending_state() {
    let (b1, b4) = (blocks(1), blocks(4));
    let chunks = [
        DraftChunk { slot: 1, pos: 6, next: 33, steps: 3, blocks: &b1, limit: 90 },
        DraftChunk { slot: 4, pos: 9, next: 44, steps: 3, blocks: &b4, limit: 90 },
    ];
    let m0 = MtpRows::for_draft(&chunks, 0, BS, None);
    assert_eq!(m0.layout.ids, vec![33, 44]);
    assert_eq!(m0.hidden, vec![pending_of(1), pending_of(4)]);
    assert_eq!(m0.layout.pos, vec![5, 8]);
    assert_eq!(m0.layout.ctx_lens, vec![6, 9]);
    let m2 = MtpRows::for_draft(&chunks, 2, BS, None);
    assert_eq!(m2.hidden, vec![0, 1]);
    assert_eq!(m2.layout.pos, vec![7, 10]);
    assert_eq!(m2.layout.ctx_lens, vec![8, 11]);
    assert_eq!(m2.layout.kv_loc[1] as usize, blocks(4)[10 / BS] as usize * BS + 10 % BS);
    assert!(m2.pending.is_empty());
    // A draft graph's shape: 4 rows, table stride 16, the same image offsets for 1 or 2
    // sequences; padding rows see no keys and write no KV.
    let p2 = MtpRows::for_draft(&chunks, 2, BS, Some((4, 16)));
    let p1 = MtpRows::for_draft(&chunks[..1], 2, BS, Some((4, 16)));
    assert_eq!(p2.layout.slots, vec![1, 4, -1, -1]);
    assert_eq!(p2.layout.bt_stride, 16);
    assert_eq!(&p2.layout.kv_loc[2..], &[-1, -1]);
    assert_eq!(&p2.layout.ctx_lens[..], &[8, 11, 0, 0]);
    assert_eq!(p1.image(&[]).meta, p2.image(&[]).meta);
    assert_eq!(p1.image(&[]).packed.len(), p2.image(&[]).packed.len());
    assert_eq!(&p2.layout.pos[..2], &m2.layout.pos[..]);
    // A sequence drafting fewer steps than the call gets padding rows past its last one,
    // so its KV blocks need cover only its own drafts (the scheduler grows them that far).
    // Slot 4 at position 7 drafts 1 token: 2 blocks of 4 cover it; step 2 would be
    // position 8, past them.
    let short = [chunks[0].clone(), DraftChunk { pos: 7, steps: 1, blocks: &b4[..2], ..chunks[1].clone() }];
    let s2 = MtpRows::for_draft(&short, 2, BS, None);
    assert_eq!(s2.layout.slots, vec![1, -1]);
    assert_eq!(s2.layout.kv_loc[1], -1);
    assert_eq!(s2.layout.ctx_lens[1], 0);
    assert_eq!(MtpRows::for_draft(&short, 0, BS, None).layout.slots, vec![1, 4]);
}

#[test]
fn the_image_holds_the_layout_the_hidden_rows_and_the_copies() {
    let (b1, t) = (blocks(1), [7u32]);
    let chunks = [SeqChunk { slot: 1, start_pos: 6, tokens: &t, blocks: &b1, want: Want::Last, allowed: None }];
    let padded = Step::build(&chunks, &limits()).unwrap().padded_decode(2, 8).unwrap();
    let m = MtpRows::for_step(&padded.layout, BS);
    let seg = crate::backend::verify_step::Segment { src: 0x1_0000_0010, dst: 0x20, bytes: 10240 };
    let img = m.image(&[seg]);
    assert_eq!(img.nsegs, 2, "padded to one copy per chunk");
    assert_eq!(&img.packed[img.meta.pos..img.meta.pos + 2], &[5, 0]);
    assert_eq!(&img.packed[img.hidden..img.hidden + 2], &[pending_of(1), 0]);
    // u64 little-endian halves: src, dst, bytes, then an empty copy.
    assert_eq!(&img.packed[img.segs..img.segs + 12], &[0x10, 1, 0x20, 0, 10240, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(img.segs % 2, 0, "u64 words stay 8-byte aligned");
    assert!(img.packed.len() <= MtpImage::len(2, 2, 8));
}

#[test]
fn padding_rows_of_a_verify_graph_are_padding_mtp_rows() {
    let a = [11u32, 12];
    let ba = blocks(5);
    let chunks = [VerifyChunk { slot: 5, start_pos: 10, tokens: &a, blocks: &ba, limit: 90 }];
    let v = VerifyStep::build(&chunks, &limits(), &VerifyShape { slots: 8, rows: 2, positions: 4 }, Some(2)).unwrap();
    let m = MtpRows::for_verify(&v.step.layout, &v.rows, BS);
    assert_eq!(m.layout.slots, vec![5, -1, 5, -1]);
    assert_eq!(m.hidden, vec![pending_of(5), 0, 0, 0]);
    assert_eq!(m.layout.kv_loc[1], -1);
    assert_eq!(m.layout.ctx_lens, vec![10, 0, 11, 0]);
}
