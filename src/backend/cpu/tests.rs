use super::*;
use crate::demo::{demo_config, random_weights};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn rand_vec(rng: &mut ChaCha8Rng, n: usize, a: f32) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-a..a)).collect()
}

/// ‖a − b‖ / ‖b‖ in f64; NaN anywhere makes it NaN (and so fails every `<` check).
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((*x - *y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

#[test]
fn gdn_chunked_matches_recurrent() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    // (T, chunk): lengths around and across chunk boundaries, and odd chunk sizes.
    for &(t, chunk) in &[(1, 64), (5, 64), (63, 64), (64, 64), (65, 64), (130, 64), (37, 7)] {
        let s = GdnShape { nk: 2, nv: 4, dk: 16, dv: 8 };
        let mut q = rand_vec(&mut rng, t * s.nk * s.dk, 1.0);
        let mut k = rand_vec(&mut rng, t * s.nk * s.dk, 1.0);
        ops::l2norm_rows(&mut q, s.dk, 1e-6);
        ops::l2norm_rows(&mut k, s.dk, 1e-6);
        let v = rand_vec(&mut rng, t * s.nv * s.dv, 1.0);
        let g: Vec<f32> = (0..t * s.nv).map(|_| -rng.gen_range(0.0..1.5f32)).collect();
        let beta: Vec<f32> = (0..t * s.nv).map(|_| rng.gen_range(0.0..1.0f32)).collect();
        let init = rand_vec(&mut rng, s.nv * s.dk * s.dv, 0.5);
        let (mut s1, mut s2) = (init.clone(), init.clone());
        let a = ops::gdn_recurrent(&q, &k, &v, &g, &beta, s, &mut s1);
        let b = ops::gdn_chunked(&q, &k, &v, &g, &beta, s, chunk, &mut s2);
        // Both are f32 evaluations of the same function; the chunked form reorders
        // sums and multiplies exponentials, so agreement is at f32 rounding times the
        // depth of the chunk recurrences (measured ~1e-6): 1e-4 leaves margin and still
        // catches any indexing or masking mistake (those give errors near 1).
        let (eo, es) = (rel_err(&b, &a), rel_err(&s2, &s1));
        assert!(eo < 1e-4 && es < 1e-4, "T={t} chunk={chunk}: output err {eo:e}, state err {es:e}");
    }
}

fn small_cfg(vocab: usize) -> ModelConfig {
    ModelConfig { vocab_size: vocab, ..demo_config() }
}

fn backend(vocab: usize, slots: usize) -> CpuBackend {
    let cfg = small_cfg(vocab);
    let w = random_weights(&cfg, 7);
    CpuBackend::new(cfg, w, Capacity { slots, block_size: 16, kv_blocks: slots * BLOCKS_PER_SLOT, max_seq_len: 512 }).unwrap()
}

/// Slot s owns KV blocks s * 32 .. (s + 1) * 32 (512 tokens of 16) in these tests.
const BLOCKS_PER_SLOT: usize = 32;
static BLOCK_IDS: [u32; 4 * BLOCKS_PER_SLOT] = {
    let mut a = [0u32; 4 * BLOCKS_PER_SLOT];
    let mut i = 0;
    while i < a.len() {
        a[i] = i as u32;
        i += 1;
    }
    a
};

fn slot_blocks(slot: usize) -> &'static [u32] {
    &BLOCK_IDS[slot * BLOCKS_PER_SLOT..(slot + 1) * BLOCKS_PER_SLOT]
}

fn prompt(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(0..vocab as u32)).collect()
}

fn chunk<'a>(slot: usize, start: usize, tokens: &'a [u32], want: Want) -> SeqChunk<'a> {
    SeqChunk { slot, start_pos: start, tokens, blocks: slot_blocks(slot), want, allowed: None }
}

#[test]
fn split_prefill_equals_one_call() {
    let v = 300;
    let p = prompt(150, v, 3);
    let mut one = backend(v, 1);
    let full = one.forward(&[chunk(0, 0, &p, Want::All)]).unwrap().remove(0);
    let mut split = backend(v, 1);
    let mut rows = Vec::new();
    let mut pos = 0;
    for piece in [64usize, 1, 50, 35] {
        let out = split.forward(&[chunk(0, pos, &p[pos..pos + piece], Want::All)]).unwrap().remove(0);
        rows.extend(out.data);
        pos += piece;
    }
    // Different chunk boundaries change only the order of f32 operations.
    let e = rel_err(&rows, &full.data);
    assert!(e < 1e-4, "split prefill vs one call: {e:e}");
}

#[test]
fn batch_equals_alone_and_slots_are_isolated() {
    let v = 300;
    let prompts: Vec<Vec<u32>> = [5usize, 70, 1, 33].iter().enumerate().map(|(i, n)| prompt(*n, v, 10 + i as u64)).collect();
    let mut alone = Vec::new();
    for p in &prompts {
        let mut b = backend(v, 1);
        alone.push(b.forward(&[chunk(0, 0, p, Want::Last)]).unwrap().remove(0).data);
    }
    let mut b = backend(v, 4);
    let chunks: Vec<_> = prompts.iter().enumerate().map(|(i, p)| chunk(i, 0, p, Want::Last)).collect();
    let batched = b.forward(&chunks).unwrap();
    for (i, out) in batched.iter().enumerate() {
        assert_eq!(out.data, alone[i], "sequence {i} differs inside a batch");
    }
    // Reset frees a slot for a new sequence from position 0.
    b.reset_slot(2).unwrap();
    let again = b.forward(&[chunk(2, 0, &prompts[2], Want::Last)]).unwrap().remove(0);
    assert_eq!(again.data, alone[2]);
}

#[test]
fn rejects_bad_chunks() {
    let mut b = backend(300, 2);
    let p = prompt(4, 300, 1);
    let e = b.forward(&[chunk(0, 3, &p, Want::Last)]).unwrap_err().to_string();
    assert!(e.contains("starts at 3"), "{e}");
    let e = b.forward(&[chunk(0, 0, &p, Want::Last), chunk(0, 0, &p, Want::Last)]).unwrap_err().to_string();
    assert!(e.contains("twice"), "{e}");
    let bad = [300u32];
    let e = b.forward(&[chunk(1, 0, &bad, Want::Last)]).unwrap_err().to_string();
    assert!(e.contains("outside the vocabulary"), "{e}");
}

#[test]
fn rope_rotates_only_the_rotary_dims() {
    let mut x: Vec<f32> = (0..64).map(|i| i as f32 * 0.1 - 3.0).collect();
    let orig = x.clone();
    ops::rope_partial(&mut x, 7, 16, 1e7);
    assert_eq!(&x[16..], &orig[16..]);
    // Position 0 is the identity; a rotation keeps each (i, i + half) pair's norm.
    let mut y = orig.clone();
    ops::rope_partial(&mut y, 0, 16, 1e7);
    assert_eq!(y, orig);
    for i in 0..8 {
        let n0 = orig[i].hypot(orig[i + 8]);
        let n1 = x[i].hypot(x[i + 8]);
        assert!((n0 - n1).abs() < 1e-5);
    }
    assert_ne!(&x[..16], &orig[..16]);
}

#[test]
fn argmax_want_respects_the_vocab_limit() {
    let v = 300;
    let p = prompt(9, v, 5);
    let mut b = backend(v, 1);
    let last = b.forward(&[chunk(0, 0, &p, Want::Last)]).unwrap().remove(0);
    let row = last.last().unwrap().to_vec();
    for limit in [v, 150, 7] {
        b.reset_slot(0).unwrap();
        let out = b.forward(&[chunk(0, 0, &p, Want::Argmax { limit })]).unwrap().remove(0);
        assert_eq!(out.argmax, Some(ops::argmax(&row[..limit]) as u32), "limit {limit}");
    }
}

/// Mask words with exactly `ids` set, `words` long.
fn mask_of(ids: &[usize], words: usize) -> Vec<u32> {
    let mut m = vec![0u32; words];
    ids.iter().for_each(|&i| m[i / 32] |= 1 << (i % 32));
    m
}

#[test]
fn masked_argmax_twin_on_awkward_cases() {
    let nan = f32::NAN;
    let inf = f32::INFINITY;
    let mut x: Vec<f32> = (0..100).map(|i| ((i * 37) % 23) as f32).collect();
    x[5] = 50.0;
    // (logits, limit, allowed ids, mask words, expected, what)
    type Case = (Vec<f32>, usize, Vec<usize>, usize, usize, &'static str);
    let cases: Vec<Case> = vec![
        (x.clone(), 100, vec![17], 4, 17, "one allowed id wins over a larger forbidden one"),
        (x.clone(), 100, (0..100).collect(), 4, 5, "everything allowed: the plain argmax"),
        (x.clone(), 70, vec![3, 69, 70, 99], 4, if x[3] >= x[69] { 3 } else { 69 }, "limit not a multiple of 32 cuts 70 and 99"),
        (x.clone(), 50, vec![60, 99], 4, 0, "nothing allowed below the limit: 0"),
        ({ let mut v = vec![0.0f32; 100]; v[80] = 9.0; v[3] = 1.0; v }, 100, (0..64).collect(), 2, 3, "ids past the mask's last word are forbidden"),
        (vec![1.0, 4.0, 4.0, 4.0, 2.0], 5, vec![0, 2, 3], 1, 2, "ties: the first allowed index"),
        (vec![nan, 9.0, nan, 1.0], 4, vec![0, 2, 3], 1, 3, "NaN never wins"),
        (vec![nan, 9.0, nan], 3, vec![0, 2], 1, 0, "only NaN allowed: 0"),
        (vec![1.0, -inf, -inf, 3.0], 4, vec![1, 2], 1, 1, "an allowed -inf beats nothing"),
        (vec![inf, 2.0, inf], 3, vec![1, 2], 1, 2, "+inf allowed"),
        ({ let mut v = vec![0.0f32; 33]; v[32] = 1.0; v }, 33, vec![31, 32], 2, 32, "the bit in the second word"),
    ];
    for (x, limit, ids, words, want, what) in cases {
        assert_eq!(ops::argmax_masked(&x, limit, &mask_of(&ids, words)), want, "{what}");
    }
}

#[test]
fn argmax_want_with_a_mask_is_the_masked_argmax_of_the_row() {
    let v = 300;
    let p = prompt(9, v, 5);
    let mut b = backend(v, 1);
    let row = b.forward(&[chunk(0, 0, &p, Want::Last)]).unwrap().remove(0).last().unwrap().to_vec();
    let top = ops::argmax(&row);
    let second = ops::argmax_masked(&row, v, &mask_of(&(0..v).filter(|&i| i != top).collect::<Vec<_>>(), 10));
    for (ids, limit) in [(vec![top, second], v), (vec![second, 257, 299], v), (vec![1, 2, 3, 250], 200), ((0..v).collect(), 263)] {
        b.reset_slot(0).unwrap();
        let mask = mask_of(&ids, 10);
        let c = SeqChunk { allowed: Some(&mask), ..chunk(0, 0, &p, Want::Argmax { limit }) };
        let out = b.forward(&[c]).unwrap().remove(0);
        assert_eq!(out.argmax, Some(ops::argmax_masked(&row, limit, &mask) as u32), "{ids:?} below {limit}");
    }
    // A mask on a chunk that wants logits is refused.
    let mask = mask_of(&[1], 10);
    let c = SeqChunk { allowed: Some(&mask), ..chunk(0, 0, &p, Want::Last) };
    assert!(b.forward(&[c]).unwrap_err().to_string().contains("token mask"));
}

#[test]
fn kv_pages_in_any_order_give_the_same_logits() {
    let v = 300;
    let p = prompt(70, v, 21);
    let mut a = backend(v, 2);
    let want = a.forward(&[chunk(0, 0, &p, Want::All)]).unwrap().remove(0);
    // Slot 1 with its pages scattered backwards through the pool.
    let scattered: Vec<u32> = (0..5u32).map(|i| 60 - 7 * i).collect();
    let mut b = backend(v, 2);
    let got = b.forward(&[SeqChunk { slot: 1, start_pos: 0, tokens: &p, blocks: &scattered, want: Want::All, allowed: None }]).unwrap().remove(0);
    assert_eq!(got.data, want.data);
    let e = b.forward(&[SeqChunk { slot: 0, start_pos: 0, tokens: &p, blocks: &scattered[..4], want: Want::Last, allowed: None }]).unwrap_err();
    assert!(e.to_string().contains("cannot hold 70 tokens"), "{e}");
}

#[test]
fn restored_snapshot_with_shared_pages_continues_bit_identically() {
    let v = 300;
    let p = prompt(100, v, 22);
    // A fresh run: chunks [0, 64) and [64, 100), then one decode token.
    let mut fresh = backend(v, 2);
    fresh.forward(&[chunk(0, 0, &p[..64], Want::Nothing)]).unwrap();
    let want = fresh.forward(&[chunk(0, 64, &p[64..], Want::All)]).unwrap().remove(0);
    let want_next = fresh.forward(&[chunk(0, 100, &[7], Want::Last)]).unwrap().remove(0);

    // Slot 0 runs the shared prefix [0, 64) and is saved; slot 1 resumes from the save,
    // reading the prefix's KV pages (blocks 0..4 of slot 0) and writing its own after.
    let mut b = backend(v, 2);
    b.forward(&[chunk(0, 0, &p[..64], Want::Nothing)]).unwrap();
    let snap = b.snapshot_state(0).unwrap();
    // Slot 0 moves on (its state changes; the snapshot must not).
    b.forward(&[chunk(0, 64, &p[64..80], Want::Nothing)]).unwrap();
    b.restore_state(snap, 1).unwrap();
    let shared: Vec<u32> = slot_blocks(0)[..4].iter().chain(&slot_blocks(1)[4..]).copied().collect();
    let got = b.forward(&[SeqChunk { slot: 1, start_pos: 64, tokens: &p[64..], blocks: &shared, want: Want::All, allowed: None }]).unwrap().remove(0);
    assert_eq!(got.data, want.data, "prompt logits after a restore");
    let next = b.forward(&[SeqChunk { slot: 1, start_pos: 100, tokens: &[7], blocks: &shared, want: Want::Last, allowed: None }]).unwrap().remove(0);
    assert_eq!(next.data, want_next.data, "decode after a restore");
    b.drop_snapshot(snap).unwrap();
    assert!(b.restore_state(snap, 1).is_err());
    assert!(b.drop_snapshot(snap).is_err());
}

#[test]
fn snapshots_are_bounded() {
    let mut b = backend(300, 1).with_snapshots(2);
    assert_eq!(b.snapshot_capacity(), 2);
    let (x, _y) = (b.snapshot_state(0).unwrap(), b.snapshot_state(0).unwrap());
    let e = b.snapshot_state(0).unwrap_err().to_string();
    assert!(e.contains("all 2 snapshots are in use"), "{e}");
    b.drop_snapshot(x).unwrap();
    b.snapshot_state(0).unwrap();
}

#[test]
fn int8_draft_rows_round_to_within_half_a_step_and_keep_their_sign() {
    // Rows: ordinary values, a zero row, one outlier with tiny neighbours, a negative
    // maximum; K = 5 (nothing requires a multiple of 8 on the CPU).
    let k = 5;
    let w = [0.5f32, -0.25, 0.125, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1e-4, -2e-4, 8.0, 3e-3, 0.0, -3.0, 1.5, -0.75, 0.01, 2.9];
    let (q, scale) = super::ops::quantize_rows_i8(&w, 4, k);
    assert_eq!(scale[1], 0.0);
    assert!(q[k..2 * k].iter().all(|&b| b == 128), "a zero row is all 128");
    for r in 0..4 {
        for j in 0..k {
            let (v, b) = (w[r * k + j], q[r * k + j]);
            assert!((1..=255).contains(&b));
            let back = (b as f32 - 128.0) * scale[r];
            assert!((back - v).abs() <= 0.5 * scale[r] * 1.0001, "row {r} col {j}: {v} -> {b} -> {back}");
            assert!(v == 0.0 || back == 0.0 || back.signum() == v.signum(), "row {r} col {j}: sign lost");
        }
    }
    // The largest magnitude lands on +-127 exactly.
    assert_eq!(q[4], 255);
    assert_eq!(q[3 * k], 1);
    // The reference multiplies the dequantized rows by f16-rounded x.
    let x = [1.0f32, 2.0, -1.0, 0.5, 0.25];
    let (y, mag) = super::ops::gemv_i8_reference(&q, &scale, &x, 1, 4, k);
    for r in 0..4 {
        let want: f64 = (0..k).map(|j| (q[r * k + j] as f64 - 128.0) * x[j] as f64).sum::<f64>() * scale[r] as f64;
        assert!((y[r] - want).abs() <= 1e-12 && mag[r] >= y[r].abs());
    }
}

#[test]
fn int4_draft_rows_round_to_within_half_a_step_per_group_and_keep_their_sign() {
    use super::ops::{gemv_i4_reference, i4_value, quantize_rows_i4, I4_GROUP_K};
    // Two rows of two groups: ordinary values with one outlier per group, then a zero
    // group beside a group whose maximum is negative; a padded scale stride of 4.
    let (n, k, sg) = (2usize, 2 * I4_GROUP_K, 4usize);
    let mut w: Vec<f32> = (0..n * k).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01).collect();
    w[5] = 3.0;
    w[I4_GROUP_K + 7] = -1.75;
    w[k..k + I4_GROUP_K].fill(0.0);
    w[k + I4_GROUP_K + 3] = -9.0;
    let (q, scale) = quantize_rows_i4(&w, n, k, sg);
    assert_eq!(q.len(), n * k / 2);
    assert_eq!((scale[2], scale[3], scale[sg]), (0.0, 0.0, 0.0), "padding and the zero group");
    for r in 0..n {
        for kk in 0..k {
            let (v, iv) = (w[r * k + kk], i4_value(&q, k, r, kk));
            let s = scale[r * sg + kk / I4_GROUP_K];
            assert!((-7..=7).contains(&iv), "row {r} k {kk}: {iv}");
            let back = iv as f32 * s;
            assert!((back - v).abs() <= 0.5 * s * 1.0001, "row {r} k {kk}: {v} -> {iv} -> {back}");
            assert!(v == 0.0 || back == 0.0 || back.signum() == v.signum(), "row {r} k {kk}: sign lost");
        }
    }
    // Each group's largest magnitude lands on +-7 exactly, whatever its nibble position.
    assert_eq!(i4_value(&q, k, 0, 5), 7);
    assert_eq!(i4_value(&q, k, 0, I4_GROUP_K + 7), -7);
    assert_eq!(i4_value(&q, k, 1, I4_GROUP_K + 3), -7);
    assert!((0..I4_GROUP_K).all(|kk| i4_value(&q, k, 1, kk) == 0), "a zero group is all 8");
    // Nibble order: word 0 of row 0 holds k 0..7 as k0 k2 k4 k6 k1 k3 k5 k7.
    let word = u32::from_le_bytes([q[0], q[1], q[2], q[3]]);
    for (kk, nib) in [(0, 0), (2, 1), (4, 2), (6, 3), (1, 4), (3, 5), (5, 6), (7, 7)] {
        assert_eq!(((word >> (4 * nib)) & 0xF) as i32 - 8, i4_value(&q, k, 0, kk), "k {kk} in nibble {nib}");
    }
    // The reference scales each group's sum by its own scale.
    let x: Vec<f32> = (0..k).map(|i| (i % 7) as f32 * 0.5 - 1.0).collect();
    let (y, mag) = gemv_i4_reference(&q, &scale, sg, &x, 1, n, k);
    for r in 0..n {
        let want: f64 = (0..k).map(|kk| i4_value(&q, k, r, kk) as f64 * scale[r * sg + kk / I4_GROUP_K] as f64 * x[kk] as f64).sum();
        assert!((y[r] - want).abs() <= 1e-12 * mag[r].max(1.0) && mag[r] >= y[r].abs());
    }
}
