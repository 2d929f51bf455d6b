use super::*;
use crate::backend::step::MetaOffsets;

fn limits() -> StepLimits {
    StepLimits { slots: 8, block_size: 4, kv_blocks: 32, max_seq_len: 64, max_blocks_per_seq: 16, vocab: 100, max_tokens: 64 }
}

const SHAPE: VerifyShape = VerifyShape { slots: 8, rows: 3, positions: 4 };

/// Slot 5 verifies 3 tokens at position 10, slot 2 verifies 2 at position 4.
fn two_sequences() -> [VerifyChunk<'static>; 2] {
    [
        VerifyChunk { slot: 5, start_pos: 10, tokens: &[11, 12, 13], blocks: &[3, 7, 9, 1], limit: 90 },
        VerifyChunk { slot: 2, start_pos: 4, tokens: &[21, 22], blocks: &[5, 6], limit: 90 },
    ]
}

#[test]
fn positions_are_decode_rows_in_position_major_order() {
    let chunks = two_sequences();
    let v = VerifyStep::build(&chunks, &limits(), &SHAPE, None).unwrap();
    let l = &v.step.layout;
    assert_eq!(v.rows, vec![vec![0, 2, 4], vec![1, 3]]);
    assert_eq!(l.ids, vec![11, 21, 12, 22, 13]);
    assert_eq!(l.pos, vec![10, 4, 11, 5, 12]);
    assert_eq!(l.ctx_lens, vec![11, 5, 12, 6, 13]);
    assert_eq!(l.slots, vec![5, 2, 5, 2, 5]);
    // Position p lives in block blocks[p / 4] at offset p % 4.
    assert_eq!(l.kv_loc, vec![9 * 4 + 2, 6 * 4, 9 * 4 + 3, 6 * 4 + 1, 4]);
    assert_eq!(l.bt_stride, 4);
    assert_eq!(&l.block_tables[4..8], &[5, 6, 0, 0]);
    assert_eq!(&l.block_tables[16..20], &[3, 7, 9, 1]);
    // Position 0 reads the slot's state; position q reads scratch (i, q - 1); all write (i, q).
    let (e0, e1) = (|q| (8 + q) as i32, |q| (8 + 4 + q) as i32);
    assert_eq!(l.state_io, vec![5, e0(0), 2, e1(0), e0(0), e0(1), e1(0), e1(1), e0(1), e0(2)]);
    assert_eq!(l.gdn_launches, vec![(0, 2), (2, 2), (4, 1)]);
    // Every row is its own single-token sequence: the decode kernels take them all.
    assert!(v.step.is_decode() && v.step.groups.decode_seqs == 5);
    assert_eq!(l.logit_rows, vec![0, 1, 2, 3, 4]);
    assert_eq!(v.step.argmax_limit, Some(90));
    assert!(v.step.dest.iter().all(Option::is_none), "verify copies only greedy tokens");
    let m = v.step.meta;
    assert_eq!(m, MetaOffsets::layout(5, 5, 4, 10, 0));
    assert_eq!(&v.step.packed[m.state_io..m.state_io + 10], &l.state_io[..]);
    assert_eq!(v.greedy(&[1, 2, 3, 4, 5]).unwrap(), vec![vec![1, 3, 5], vec![2, 4]]);
    assert!(v.greedy(&[1, 2]).is_err());
}

#[test]
fn a_verify_step_refuses_what_breaks_a_limit() {
    let t = [1u32, 2];
    let blocks = [0u32, 1];
    let ok = VerifyChunk { slot: 1, start_pos: 3, tokens: &t, blocks: &blocks, limit: 90 };
    let err = |chunks: &[VerifyChunk]| VerifyStep::build(chunks, &limits(), &SHAPE, None).unwrap_err().to_string();
    assert!(VerifyStep::build(&[ok.clone()], &limits(), &SHAPE, None).is_ok());
    let many = [ok.clone(), VerifyChunk { slot: 2, ..ok.clone() }, VerifyChunk { slot: 3, ..ok.clone() }, VerifyChunk { slot: 4, ..ok.clone() }];
    assert!(err(&many).contains("verify scratch holds 3"), "{}", err(&many));
    let five = [1u32; 5];
    assert!(err(&[VerifyChunk { tokens: &five, blocks: &[0, 1], ..ok.clone() }]).contains("1 to 4"));
    assert!(err(&[VerifyChunk { tokens: &[], ..ok.clone() }]).contains("1 to 4"));
    assert!(err(&[ok.clone(), VerifyChunk { slot: 2, limit: 50, ..ok.clone() }]).contains("one argmax vocabulary limit"));
    assert!(err(&[ok.clone(), ok.clone()]).contains("appears twice"));
    assert!(err(&[VerifyChunk { blocks: &[0], ..ok.clone() }]).contains("cannot hold 5 tokens"));
    assert!(err(&[VerifyChunk { tokens: &[1, 100], ..ok.clone() }]).contains("token id 100"));
    assert!(err(&[VerifyChunk { slot: 8, ..ok.clone() }]).contains("slot 8 out of range"));
}

/// A byte memory laid out like the device pools of a toy model: recurrent entries
/// [layer][slots + scratch][8 bytes], conv rings [layer][slot][K rows][8 bytes], saved
/// rings [verify seq][layer][K][8].
pub(crate) struct ToyPools {
    pub layers: usize,
    pub k: usize,
    pub shape: VerifyShape,
}

impl ToyPools {
    fn entries(&self) -> usize {
        self.shape.slots + self.shape.entries()
    }
    fn ring_base(&self) -> usize {
        self.layers * self.entries() * 8
    }
    fn saved_base(&self) -> usize {
        self.ring_base() + self.layers * self.shape.slots * self.k * 8
    }
    fn bytes(&self) -> usize {
        self.saved_base() + self.shape.rows * self.layers * self.k * 8
    }
}

impl StateAddrs for ToyPools {
    fn linear_layers(&self) -> usize {
        self.layers
    }
    fn recurrent(&self, layer: usize, entry: usize) -> u64 {
        ((layer * self.entries() + entry) * 8) as u64
    }
    fn recurrent_bytes(&self) -> usize {
        8
    }
    fn ring(&self, layer: usize, slot: usize) -> u64 {
        (self.ring_base() + (layer * self.shape.slots + slot) * self.k * 8) as u64
    }
    fn ring_row_bytes(&self) -> usize {
        8
    }
    fn conv_k(&self) -> usize {
        self.k
    }
    fn saved_ring(&self, i: usize, layer: usize) -> u64 {
        (self.saved_base() + (i * self.layers + layer) * self.k * 8) as u64
    }
}

fn get(mem: &[u8], at: u64) -> u64 {
    u64::from_le_bytes(mem[at as usize..at as usize + 8].try_into().unwrap())
}
fn put(mem: &mut [u8], at: u64, v: u64) {
    mem[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
}

/// A toy decode step with the kernel's memory behaviour: writes the token's conv input
/// into ring row pos % K of the slot, then reads the K-row window (positions before 0
/// read as 0) and the state entry `io.0`, and writes the new state to entry `io.1`.
fn toy_decode(p: &ToyPools, mem: &mut [u8], slot: usize, pos: usize, token: u32, io: (usize, usize)) {
    for l in 0..p.layers {
        let ring = p.ring(l, slot);
        put(mem, ring + ((pos % p.k) * 8) as u64, token as u64 * 1000 + l as u64 + 1);
        let mut s = get(mem, p.recurrent(l, io.0));
        for back in (0..p.k).rev() {
            let x = if pos >= back { get(mem, ring + (((pos - back) % p.k) * 8) as u64) } else { 0 };
            s = s.wrapping_mul(6364136223846793005).wrapping_add(x ^ 0x9e3779b97f4a7c15);
        }
        put(mem, p.recurrent(l, io.1), s);
    }
}

#[test]
fn verify_then_commit_leaves_the_state_plain_decoding_leaves() {
    let p = ToyPools { layers: 3, k: 4, shape: VerifyShape { slots: 3, rows: 2, positions: 4 } };
    let blocks: Vec<u32> = (0..16).collect();
    let lim = StepLimits { slots: 3, block_size: 4, kv_blocks: 16, max_seq_len: 64, max_blocks_per_seq: 16, vocab: 1000, max_tokens: 64 };
    let history: Vec<u32> = (0..40).map(|i| (i * 37 + 11) % 997).collect();
    // Every start (wrapping the ring and not), fed length and accepted length, for two
    // sequences at once whose lengths differ.
    for (start, pad) in (0..9).flat_map(|s| [(s, None), (s, Some(2))]) {
        for fed in 1..=4 {
            for acc in 1..=fed {
                let mut plain = vec![0u8; p.bytes()];
                let mut spec = vec![0u8; p.bytes()];
                // Both slots have decoded `start` (slot 2) and `start + 3` (slot 0) tokens.
                let starts = [(2usize, start), (0usize, start + 3)];
                for mem in [&mut plain, &mut spec] {
                    for &(slot, n) in &starts {
                        for (pos, &t) in history[..n].iter().enumerate() {
                            toy_decode(&p, mem, slot, pos, t, (slot, slot));
                        }
                    }
                }
                let other_fed = 5 - fed; // the second sequence feeds a different length
                let fed_tokens: Vec<Vec<u32>> = [fed, other_fed].iter().zip(&starts).map(|(&f, &(_, n))| history[n..n + f].to_vec()).collect();
                let accepted = [acc, other_fed.min(acc.max(1))];
                for (&(slot, n), (toks, &a)) in starts.iter().zip(fed_tokens.iter().zip(&accepted)) {
                    for (q, &t) in toks[..a].iter().enumerate() {
                        toy_decode(&p, &mut plain, slot, n + q, t, (slot, slot));
                    }
                }
                let chunks: Vec<VerifyChunk> = starts
                    .iter()
                    .zip(&fed_tokens)
                    .map(|(&(slot, n), toks)| VerifyChunk { slot, start_pos: n, tokens: toks, blocks: &blocks, limit: 1000 })
                    .collect();
                let v = VerifyStep::build(&chunks, &lim, &p.shape, pad).unwrap();
                apply_segments(&mut spec, &save_rings(&chunks, &p));
                let l = &v.step.layout;
                for &(first, n) in &l.gdn_launches {
                    for r in (first..first + n).filter(|&r| l.slots[r] >= 0) {
                        let io = (l.state_io[2 * r] as usize, l.state_io[2 * r + 1] as usize);
                        toy_decode(&p, &mut spec, l.slots[r] as usize, l.pos[r] as usize, l.ids[r] as u32, io);
                    }
                }
                apply_segments(&mut spec, &commit(&chunks, &accepted, &p.shape, &p).unwrap());
                for &(slot, _) in &starts {
                    for layer in 0..p.layers {
                        let what = format!("start {start} fed {fed} accepted {acc}: slot {slot} layer {layer}");
                        assert_eq!(get(&spec, p.recurrent(layer, slot)), get(&plain, p.recurrent(layer, slot)), "recurrent state, {what}");
                        for row in 0..p.k {
                            let at = p.ring(layer, slot) + (row * 8) as u64;
                            assert_eq!(get(&spec, at), get(&plain, at), "conv ring row {row}, {what}");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn commit_refuses_a_verify_longer_than_the_ring() {
    let p = ToyPools { layers: 1, k: 4, shape: VerifyShape { slots: 2, rows: 1, positions: 5 } };
    let t = [1u32; 5];
    let blocks = [0u32; 2];
    let c = [VerifyChunk { slot: 0, start_pos: 0, tokens: &t, blocks: &blocks, limit: 9 }];
    assert!(commit(&c, &[2], &p.shape, &p).unwrap_err().to_string().contains("restores at most 4"));
    assert!(commit(&c, &[0], &p.shape, &p).is_err());
    assert_eq!(segment_words(&[Segment { src: 1, dst: 2, bytes: 3 }]), vec![1, 2, 3]);
}

#[test]
fn a_padded_verify_step_has_the_fixed_shape_of_a_graph() {
    let chunks = two_sequences();
    let v = VerifyStep::build(&chunks, &limits(), &SHAPE, Some(3)).unwrap();
    let l = &v.step.layout;
    assert_eq!(l.gdn_launches, vec![(0, 3), (3, 3), (6, 3)], "every position has 3 rows");
    assert_eq!(l.slots, vec![5, 2, -1, 5, 2, -1, 5, -1, -1]);
    assert_eq!(l.bt_stride, 16, "the table stride of the largest sequence a graph may see");
    assert_eq!(v.rows, vec![vec![0, 3, 6], vec![1, 4]]);
    // Padding rows: no KV write, no keys.
    assert!((0..9).filter(|&r| l.slots[r] < 0).all(|r| l.kv_loc[r] == -1 && l.ctx_lens[r] == 0));
    // The same shape whatever the sequences: the image offsets a graph reads stay put.
    let one = VerifyStep::build(&chunks[..1], &limits(), &SHAPE, Some(3)).unwrap();
    assert_eq!(one.step.meta, v.step.meta);
    assert!(VerifyStep::build(&chunks, &limits(), &SHAPE, Some(1)).is_err(), "a bucket must hold every sequence");
}
