//! Speculative verification's Gated DeltaNet step (issue 9): feeding T positions of each
//! sequence one launch at a time through scratch state entries (`GdnDecode::state_io`)
//! computes every position bit for bit as plain decode steps do, leaves the slot's own
//! state untouched, and the commit rule (the state after the last accepted position
//! copied into the slot; the conv ring rows of rejected positions restored from the ring
//! saved before the verify, valid for T <= CONV_K) ends exactly where plain decoding of
//! the accepted tokens ends.

use crate::harness::*;
use crate::t_gdn::params;
use kiln::backend::cuda::kernels::{GdnDecode, GdnVerifyKind, Mat};

/// The GDN shapes the tests use: conv channels, window, value heads, head width, out
/// width, state floats per slot, and the row strides of qkvz and of b|a.
struct Dims {
    c: usize,
    k: usize,
    nv: usize,
    dv: usize,
    vd: usize,
    ssz: usize,
    ld: usize,
    ld_ba: usize,
}

fn dims(e: &Env) -> Dims {
    let d = e.k.dims();
    let (c, nv, dv) = (d.conv_dim(), d.lin_num_v_heads, d.lin_v_dim);
    Dims { c, k: d.conv_kernel, nv, dv, vd: nv * dv, ssz: nv * d.lin_k_dim * dv, ld: c + nv * dv, ld_ba: 2 * nv }
}

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn verify_positions_through_scratch_equal_decode_steps_and_commit_exactly() {
    let Some(e) = env() else { return };
    let s = stream(e);
    let Dims { c, k, nv, dv, vd, ssz, ld, ld_ba } = dims(e);
    let t = k; // the most positions one verify may feed (the ring restore needs T <= CONV_K)
    let nslots = 5;
    let slots: Vec<i32> = vec![3, 0, 4];
    let start: Vec<i32> = vec![5, 100, 2]; // 2: the conv reads before position 0 are zeros
    let accept: Vec<usize> = vec![1, 3, t];
    let ns = slots.len();
    let mut g = rng(23);
    let p = params(&mut g, c, k, nv, dv);
    // Rows seq-major: row i*T + q is sequence i at position start[i] + q.
    let qkvz = randn_vec(&mut g, ns * t * ld, 1.0);
    let ba = randn_vec(&mut g, ns * t * ld_ba, 1.5);
    let ring0 = randn_vec(&mut g, nslots * k * c, 1.0);
    // The slots' states, then one scratch entry per (sequence, position).
    let scratch = |i: usize, q: usize| (nslots + i * t + q) as i32;
    let mut state0 = randn_vec(&mut g, nslots * ssz, 0.1);
    state0.extend(vec![0f32; ns * t * ssz]);
    let (x, bad) = (up(&s, &qkvz), up(&s, &ba));
    let (cw, al, dtb, nw) = (up(&s, &to_bf16(&p.conv_w)), up(&s, &p.a_log), up(&s, &p.dt_bias), up(&s, &to_bf16(&p.norm_w)));
    let sl = up(&s, &slots);
    let launch = |q: usize, ring: u64, state: u64, out: u64, io: u64, pos: u64| {
        let xm = Mat::f32(ptr(&s, &x) + (q * ld * 4) as u64, t * ld);
        let bm = Mat::f32(ptr(&s, &bad) + (q * ld_ba * 4) as u64, t * ld_ba);
        let args = GdnDecode {
            qkv: xm, z: xm.cols(c), b: bm, a: bm.cols(nv), conv_w: ptr(&s, &cw), conv_state: ring, state,
            a_log: ptr(&s, &al), dt_bias: ptr(&s, &dtb), norm_w: ptr(&s, &nw), slots: ptr(&s, &sl), pos,
            state_io: io, out: Mat::f32(out + (q * vd * 4) as u64, t * vd), batch: ns,
        };
        e.k.gdn_decode(&s, &args).unwrap();
    };
    // Plain decode, one position per step; the slot state and ring after each.
    let (ring_a, state_a, out_a) = (up(&s, &ring0), up(&s, &state0), poison_f32(&s, ns * t * vd));
    let (mut rings, mut states) = (Vec::new(), Vec::new());
    for q in 0..t {
        let pos = up(&s, &start.iter().map(|p| p + q as i32).collect::<Vec<_>>());
        launch(q, ptr(&s, &ring_a), ptr(&s, &state_a), ptr(&s, &out_a), 0, ptr(&s, &pos));
        rings.push(down(&s, &ring_a));
        states.push(down(&s, &state_a));
    }
    // Verify: the same positions through scratch entries.
    let (ring_b, state_b, out_b) = (up(&s, &ring0), up(&s, &state0), poison_f32(&s, ns * t * vd));
    for q in 0..t {
        let pos = up(&s, &start.iter().map(|p| p + q as i32).collect::<Vec<_>>());
        let io: Vec<i32> = (0..ns).flat_map(|i| [if q == 0 { slots[i] } else { scratch(i, q - 1) }, scratch(i, q)]).collect();
        let io = up(&s, &io);
        launch(q, ptr(&s, &ring_b), ptr(&s, &state_b), ptr(&s, &out_b), ptr(&s, &io), ptr(&s, &pos));
    }
    let (oa, ob) = (down(&s, &out_a), down(&s, &out_b));
    assert!(oa.iter().all(|v| v.is_finite()), "plain decode left rows unwritten");
    assert_bits_eq(&oa, &ob, "verify outputs against the decode steps");
    let mut st = down(&s, &state_b);
    assert!(st[..nslots * ssz].iter().zip(&state0).all(|(a, b)| a.to_bits() == b.to_bits()), "verify wrote a slot's own state");
    // Commit, per sequence: state after the last accepted position into the slot;
    // ring rows of rejected positions back from the ring saved before the verify.
    let mut ring = down(&s, &ring_b);
    for i in 0..ns {
        let (slot, a) = (slots[i] as usize, accept[i]);
        let from = scratch(i, a - 1) as usize * ssz;
        st.copy_within(from..from + ssz, slot * ssz);
        for q in a..t {
            let row = (slot * k + (start[i] as usize + q) % k) * c;
            ring[row..row + c].copy_from_slice(&ring0[row..row + c]);
        }
        let (want_s, want_r) = (&states[a - 1], &rings[a - 1]);
        let same_s = st[slot * ssz..(slot + 1) * ssz].iter().zip(&want_s[slot * ssz..(slot + 1) * ssz]).all(|(x, y)| x.to_bits() == y.to_bits());
        let same_r = ring[slot * k * c..(slot + 1) * k * c].iter().zip(&want_r[slot * k * c..(slot + 1) * k * c]).all(|(x, y)| x.to_bits() == y.to_bits());
        println!("gdn verify seq {i} accepted {a}/{t}: state {same_s}, conv ring {same_r}");
        assert!(same_s && same_r, "sequence {i} after committing {a} of {t} differs from {a} decode steps");
    }
}

/// The fused verify kernel (`gdn_verify`: every fed position of a sequence in one block,
/// then `conv_ring_write`) against the per-position decode launches a verify step runs
/// otherwise, on a verify step's own row layout: position-major, sequences of different
/// lengths (so later positions hold fewer rows, and a sequence is not at the same index
/// in every position), padding rows (slot -1) filling each position to a graph's width.
/// Outputs, every state entry (slots and scratch) and the conv ring: bit for bit, for each
/// fused kernel (`GdnVerifyKind`: in turn, inputs first, and split over a cluster).
#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn fused_verify_equals_one_launch_per_position() {
    let Some(e) = env() else { return };
    let s = stream(e);
    let Dims { c, k, nv, dv, vd, ssz, ld, ld_ba } = dims(e);
    let nslots = 6;
    let slots: [i32; 4] = [3, 0, 5, 1];
    let start: [i32; 4] = [5, 100, 1, 30]; // 1: a conv tap before position 0 reads zeros
    let lens: [usize; 4] = [k, 1, 3, 2];
    let width = 5; // rows per position, as a captured verify graph pads them
    let scratch = |i: usize, q: usize| (nslots + i * k + q) as i32;
    // Position-major rows, as VerifyStep::build lays them out.
    let (mut row_slot, mut row_pos, mut row_io, mut launches) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for q in 0..k {
        let first = row_slot.len();
        for i in (0..slots.len()).filter(|&i| lens[i] > q) {
            row_slot.push(slots[i]);
            row_pos.push(start[i] + q as i32);
            row_io.extend([if q == 0 { slots[i] } else { scratch(i, q - 1) }, scratch(i, q)]);
        }
        while row_slot.len() - first < width {
            row_slot.push(-1);
            row_pos.push(0);
            row_io.extend([0, 0]);
        }
        launches.push((first, width));
    }
    let t = row_slot.len();
    let mut g = rng(29);
    let p = params(&mut g, c, k, nv, dv);
    let qkvz = randn_vec(&mut g, t * ld, 1.0);
    let ba = randn_vec(&mut g, t * ld_ba, 1.5);
    let ring0 = randn_vec(&mut g, nslots * k * c, 1.0);
    let mut state0 = randn_vec(&mut g, nslots * ssz, 0.1);
    state0.extend(vec![0f32; slots.len() * k * ssz]);
    let (x, bad) = (up(&s, &qkvz), up(&s, &ba));
    let (cw, al, dtb, nw) = (up(&s, &to_bf16(&p.conv_w)), up(&s, &p.a_log), up(&s, &p.dt_bias), up(&s, &to_bf16(&p.norm_w)));
    let (sl, ps, io) = (up(&s, &row_slot), up(&s, &row_pos), up(&s, &row_io));
    let xm = Mat::f32(ptr(&s, &x), ld);
    let bm = Mat::f32(ptr(&s, &bad), ld_ba);
    let args = |r0: usize, n: usize, ring: u64, state: u64, out: u64| GdnDecode {
        qkv: xm.rows(r0), z: xm.cols(c).rows(r0), b: bm.rows(r0), a: bm.cols(nv).rows(r0), conv_w: ptr(&s, &cw), conv_state: ring, state,
        a_log: ptr(&s, &al), dt_bias: ptr(&s, &dtb), norm_w: ptr(&s, &nw), slots: ptr(&s, &sl) + (r0 * 4) as u64,
        pos: ptr(&s, &ps) + (r0 * 4) as u64, state_io: ptr(&s, &io) + (r0 * 8) as u64, out: Mat::f32(out, vd).rows(r0), batch: n,
    };
    // One decode launch per position.
    let (ring_a, state_a, out_a) = (up(&s, &ring0), up(&s, &state0), poison_f32(&s, t * vd));
    for &(r0, n) in &launches {
        e.k.gdn_decode(&s, &args(r0, n, ptr(&s, &ring_a), ptr(&s, &state_a), ptr(&s, &out_a))).unwrap();
    }
    let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
    let oa = down(&s, &out_a);
    let real = |r: usize| row_slot[r] >= 0;
    assert!((0..t).filter(|&r| real(r)).all(|r| oa[r * vd..(r + 1) * vd].iter().all(|v| v.is_finite())), "per-position launches left a row unwritten");
    // The fused launch (both kernels: positions in turn, and every position's inputs
    // first), then the ring rows.
    let (ring_b, state_b, out_b) = (up(&s, &ring0), up(&s, &state0), poison_f32(&s, t * vd));
    for kind in [GdnVerifyKind::InTurn, GdnVerifyKind::Pre, GdnVerifyKind::Split] {
        let (ring_b, state_b, out_b) = (up(&s, &ring0), up(&s, &state0), poison_f32(&s, t * vd));
        e.k.gdn_verify_with(&s, &args(0, t, ptr(&s, &ring_b), ptr(&s, &state_b), ptr(&s, &out_b)), &launches, kind).unwrap();
        e.k.conv_ring_write(&s, xm, ptr(&s, &ring_b), ptr(&s, &sl), ptr(&s, &ps), t).unwrap();
        let ob = down(&s, &out_b);
        let (so, ss, sr) = (same(&oa, &ob), same(&down(&s, &state_a), &down(&s, &state_b)), same(&down(&s, &ring_a), &down(&s, &ring_b)));
        println!("fused gdn verify ({kind:?}, {} rows, lengths {lens:?}): outputs {so}, state entries {ss}, conv ring {sr}", t);
        assert!(so && ss && sr, "the fused verify ({kind:?}) differs from one launch per position");
    }
    // A launch list the kernel cannot take is refused, not run.
    assert!(e.k.gdn_verify(&s, &args(0, t, ptr(&s, &ring_b), ptr(&s, &state_b), ptr(&s, &out_b)), &[(0, 2), (2, 3)]).is_err());
}
