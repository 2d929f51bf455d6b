use super::*;
use crate::backend::speculative::{accepted_len, verify_chunks};
use crate::backend::verify_step::commit;
use crate::backend::verify_step::tests::ToyPools;

fn limits() -> StepLimits {
    StepLimits { slots: 8, block_size: 4, kv_blocks: 32, max_seq_len: 64, max_blocks_per_seq: 16, vocab: 100, max_tokens: 64 }
}

const SHAPE: VerifyShape = VerifyShape { slots: 8, rows: 3, positions: 4 };

fn pools() -> ToyPools {
    ToyPools { layers: 3, k: 4, shape: SHAPE }
}

/// A pending copy with addresses that name the row and the slot.
fn pending(row: usize, slot: usize) -> Option<Segment> {
    Some(Segment { src: 1_000_000 + row as u64 * 64, dst: 2_000_000 + slot as u64 * 64, bytes: 64 })
}

/// Slot 5 drafts 3 tokens at position 10, slot 2 one at 4, slot 7 two at 9.
fn three_chunks() -> [DraftChunk<'static>; 3] {
    [
        DraftChunk { slot: 5, pos: 10, next: 11, steps: 3, blocks: &[3, 7, 9, 1], limit: 90 },
        DraftChunk { slot: 2, pos: 4, next: 21, steps: 1, blocks: &[5, 6], limit: 90 },
        DraftChunk { slot: 7, pos: 9, next: 31, steps: 2, blocks: &[8, 10, 11], limit: 90 },
    ]
}

/// The drafts of sequence i: 40 + 10 i + j.
fn drafts(chunks: &[DraftChunk]) -> Vec<Vec<u32>> {
    chunks.iter().enumerate().map(|(i, c)| (0..c.steps).map(|j| (40 + 10 * i + j) as u32).collect()).collect()
}

#[test]
fn drafts_fed_on_the_device_give_the_verify_step_of_known_drafts() {
    let chunks = three_chunks();
    let d = drafts(&chunks);
    for (pad, draft_rows) in [(None, 3), (Some(4), 4), (Some(4), 8)] {
        let plan = CyclePlan::build(&chunks, 90, &limits(), &SHAPE, pad, draft_rows, &pools(), &pending).unwrap();
        // The draft's argmax rows as the device leaves them: step j of sequence i at
        // j * draft_rows + i, the rows past the sequences holding garbage.
        let mut argmax = vec![-7i32; 3 * draft_rows];
        for (i, ds) in d.iter().enumerate() {
            for (j, &t) in ds.iter().enumerate() {
                argmax[j * draft_rows + i] = t as i32;
            }
        }
        let (mut step, ids_at) = (plan.verify.step.packed.clone(), plan.verify.step.meta.ids);
        for f in &plan.feeds {
            step[ids_at + f[1] as usize] = argmax[f[0] as usize];
        }
        let fed: Vec<Vec<u32>> = chunks.iter().zip(&d).map(|(c, ds)| std::iter::once(c.next).chain(ds.iter().copied()).collect()).collect();
        let known = VerifyStep::build(&verify_chunks(&chunks, &fed, 90), &limits(), &SHAPE, pad).unwrap();
        assert_eq!(step, known.step.packed, "pad {pad:?}: the fed image is the known drafts' image");
        assert_eq!(plan.verify.rows, known.rows);
        assert_eq!(plan.feeds.len(), 6, "one feed per draft");
        assert_eq!(plan.positions, 4);
        // rows: each sequence's verify row per position, -1 past its last.
        for (i, rs) in known.rows.iter().enumerate() {
            let got: Vec<i32> = plan.rows[i * 4..(i + 1) * 4].to_vec();
            let want: Vec<i32> = (0..4).map(|q| rs.get(q).map_or(-1, |&r| r as i32)).collect();
            assert_eq!(got, want);
        }
    }
}

#[test]
fn device_acceptance_is_the_matching_prefix_plus_the_bonus_token() {
    let chunks = three_chunks();
    let plan = CyclePlan::build(&chunks, 90, &limits(), &SHAPE, Some(4), 4, &pools(), &pending).unwrap();
    let n_rows = plan.verify.step.layout.num_tokens();
    // Every pattern of matches over the 4 + 2 + 3 positions: ids are the drafts, greedy
    // matches the next draft where the pattern bit is set.
    let fed: Vec<Vec<u32>> = chunks.iter().zip(drafts(&chunks)).map(|(c, ds)| std::iter::once(c.next).chain(ds).collect()).collect();
    for pattern in 0u32..(1 << 9) {
        let mut ids = vec![0i32; n_rows];
        let mut greedy = vec![99i32; n_rows];
        let mut bit = 0;
        let mut want = Vec::new();
        let mut g_all = Vec::new();
        for (i, f) in fed.iter().enumerate() {
            let rs = &plan.verify.rows[i];
            let mut g = Vec::new();
            for (q, &r) in rs.iter().enumerate() {
                ids[r] = f[q] as i32;
                let hit = pattern >> bit & 1 == 1;
                bit += 1;
                let t = if hit && q + 1 < f.len() { f[q + 1] } else { 98 - q as u32 };
                greedy[r] = t as i32;
                g.push(t);
            }
            want.push(accepted_len(f, &g));
            g_all.push(g);
        }
        assert_eq!(accept(&plan.rows, plan.positions, &ids, &greedy), want, "pattern {pattern:09b}");
    }
}

#[test]
fn the_selected_table_is_the_commit_of_the_accepted_lengths() {
    let chunks = three_chunks();
    let p = pools();
    let plan = CyclePlan::build(&chunks, 90, &limits(), &SHAPE, None, 3, &p, &pending).unwrap();
    assert_eq!(plan.table.len(), plan.tags.len());
    let fed: Vec<Vec<u32>> = chunks.iter().zip(drafts(&chunks)).map(|(c, ds)| std::iter::once(c.next).chain(ds).collect()).collect();
    let vchunks = verify_chunks(&chunks, &fed, 90);
    for a0 in 1..=4 {
        for a1 in 1..=2 {
            for a2 in 1..=3 {
                let acc = [a0, a1, a2];
                let kept: Vec<Segment> = select(&plan.table, &plan.tags, &acc).into_iter().filter(|s| s.bytes > 0).collect();
                // commit's copies (sequence by sequence, layers x (1 + rejected positions)
                // each), each sequence's followed by its pending copy.
                let mut all = commit(&vchunks, &acc, &SHAPE, &p).unwrap().into_iter();
                let mut want = Vec::new();
                for (i, (c, &a)) in vchunks.iter().zip(&acc).enumerate() {
                    want.extend(all.by_ref().take(p.layers * (1 + c.tokens.len() - a)));
                    want.extend(pending(plan.verify.rows[i][a - 1], c.slot));
                }
                assert!(all.next().is_none());
                assert_eq!(kept, want, "{acc:?}");
                assert!(plan.max_copy_bytes() >= 64);
            }
        }
    }
}

#[test]
fn a_cycle_refuses_what_its_buffers_cannot_hold() {
    let chunks = three_chunks();
    let err = |draft_rows, shape: &VerifyShape| CyclePlan::build(&chunks, 90, &limits(), shape, None, draft_rows, &pools(), &pending).unwrap_err().to_string();
    assert!(err(2, &SHAPE).contains("the draft has 2 rows"), "{}", err(2, &SHAPE));
    let small = VerifyShape { rows: 2, ..SHAPE };
    assert!(err(3, &small).contains("verify scratch holds 2"), "{}", err(3, &small));
    assert_eq!(tag(3, 2), 50);
}
