//! Gated DeltaNet kernels: causal conv1d with the ring state, fused decode step,
//! chunked prefill.

use crate::harness::*;
use crate::reference as r;
use half::bf16;
use kiln::backend::cpu::ops::{self, GdnShape};
use kiln::backend::cuda::kernels::{Conv1d, DType, GdnDecode, GdnPrefill, Mat};
use rand::Rng;

pub(crate) struct Params {
    pub conv_w: Vec<f32>,
    pub a_log: Vec<f32>,
    pub dt_bias: Vec<f32>,
    pub norm_w: Vec<f32>,
}

pub(crate) fn params(g: &mut rand_chacha::ChaCha8Rng, c: usize, k: usize, nv: usize, dv: usize) -> Params {
    Params {
        conv_w: round_bf16(&rand_vec(g, c * k, 0.6)),
        a_log: (0..nv).map(|_| g.gen_range(0.5f32..8.0).ln()).collect(),
        dt_bias: rand_vec(g, nv, 1.0),
        norm_w: round_bf16(&(0..dv).map(|_| g.gen_range(0.5f32..1.5)).collect::<Vec<_>>()),
    }
}

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn conv1d_matches_cpu_with_ring_state() {
    let Some(e) = env() else { return };
    let s = stream(e);
    let d = e.k.dims().clone();
    let (c, k) = (d.conv_dim(), d.conv_kernel);
    let ld_x = c + d.lin_num_v_heads * d.lin_v_dim; // fused qkv | z rows
    let nslots = 6;
    let mut g = rng(20);
    let cases: &[&[(usize, usize, i32)]] = &[&[(1, 0, 2), (5, 2, 0), (64, 7, 5)], &[(130, 0, 1), (1, 1000, 3), (3, 1, -1), (2, 2, 4)], &[(1100, 5, 3), (65, 0, 0)]];
    for (ci, seqs) in cases.iter().enumerate() {
        for dt in [DType::F32, DType::BF16] {
            let tt: usize = seqs.iter().map(|q| q.0).sum();
            let mut x = randn_vec(&mut g, tt * ld_x, 1.0);
            if dt == DType::BF16 {
                x = round_bf16(&x);
            }
            let ring0 = randn_vec(&mut g, nslots * k * c, 1.0);
            let mut ring_expect = ring0.clone();
            let mut out_expect = vec![f32::NAN; tt * c];
            let mut cu = vec![0i32];
            let (mut slots, mut starts) = (Vec::new(), Vec::new());
            let w = round_bf16(&rand_vec(&mut g, c * k, 0.6));
            let mut t0 = 0;
            for &(t, start, slot) in seqs.iter() {
                cu.push((t0 + t) as i32);
                slots.push(slot);
                starts.push(start as i32);
                if slot >= 0 {
                    let rs = slot as usize * k * c;
                    let mut st = r::ring_to_state(&ring0[rs..rs + k * c], c, k, start);
                    let xs: Vec<f32> = (0..t).flat_map(|i| x[(t0 + i) * ld_x..(t0 + i) * ld_x + c].to_vec()).collect();
                    let y = ops::causal_conv1d_silu(&xs, c, &w, &mut st);
                    out_expect[t0 * c..(t0 + t) * c].copy_from_slice(&y);
                    for i in t.saturating_sub(k)..t {
                        let p = start + i;
                        ring_expect[rs + (p % k) * c..rs + (p % k + 1) * c].copy_from_slice(&xs[i * c..(i + 1) * c]);
                    }
                }
                t0 += t;
            }
            let (xf, xb) = (up(&s, &x), up(&s, &to_bf16(&x)));
            let xm = if dt == DType::F32 { Mat::f32(ptr(&s, &xf), ld_x) } else { Mat::bf16(ptr(&s, &xb), ld_x) };
            let w_d = up(&s, &to_bf16(&w));
            let ring_d = up(&s, &ring0);
            let (cu_d, sl_d, sp_d) = (up(&s, &cu), up(&s, &slots), up(&s, &starts));
            let out = poison_f32(&s, tt * c);
            let args = Conv1d {
                x: xm,
                w: ptr(&s, &w_d),
                conv_state: ptr(&s, &ring_d),
                cu_seqlens: ptr(&s, &cu_d),
                slots: ptr(&s, &sl_d),
                start_pos: ptr(&s, &sp_d),
                out: ptr(&s, &out),
                ld_out: c,
                nseq: seqs.len(),
            };
            e.k.conv1d(&s, &args).unwrap();
            let got = down(&s, &out);
            // Rows of the skipped sequence stay poisoned; compare the others (fp32 + exp: 1e-5).
            let keep: Vec<usize> = (0..tt * c).filter(|i| !out_expect[*i].is_nan()).collect();
            assert!((0..tt * c).filter(|i| out_expect[*i].is_nan()).all(|i| got[i].is_nan()), "conv1d wrote a skipped sequence");
            let pick = |v: &[f32]| keep.iter().map(|i| v[*i]).collect::<Vec<_>>();
            check(&format!("conv1d case {ci} {dt:?} out"), &pick(&got), &pick(&out_expect), 1e-5);
            check(&format!("conv1d case {ci} {dt:?} ring"), &down(&s, &ring_d), &ring_expect, 0.0);
        }
    }
}

/// Decode inputs for `b` rows in the fused layouts: qkv|z rows and b|a rows.
struct DecodeCase {
    qkvz: Vec<f32>,
    ba: Vec<f32>,
    slots: Vec<i32>,
    pos: Vec<i32>,
}

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn gdn_decode_matches_cpu() {
    let Some(e) = env() else { return };
    let s = stream(e);
    let d = e.k.dims().clone();
    let sh = GdnShape { nk: d.lin_num_k_heads, nv: d.lin_num_v_heads, dk: d.lin_k_dim, dv: d.lin_v_dim };
    let (c, k, vd) = (d.conv_dim(), d.conv_kernel, sh.nv * sh.dv);
    let (ld, ld_ba) = (c + vd, 2 * sh.nv);
    let nslots = 67; // prime: (i * 7 + 3) % 67 names distinct slots for all 64 rows
    let ssz = sh.nv * sh.dk * sh.dv;
    let mut g = rng(21);
    let p = params(&mut g, c, k, sh.nv, sh.dv);
    let cases = [(1usize, DType::F32, DType::F32), (3, DType::BF16, DType::BF16), (17, DType::F32, DType::BF16), (64, DType::F32, DType::F32)];
    for (bsz, it, ot) in cases {
        let mut cs = DecodeCase {
            qkvz: randn_vec(&mut g, bsz * ld, 1.0),
            ba: randn_vec(&mut g, bsz * ld_ba, 1.5),
            slots: (0..bsz as i32).map(|i| (i * 7 + 3) % nslots as i32).collect(),
            pos: (0..bsz).map(|i| [0, 1, 2, 3, 5, 100, 4097][i % 7]).collect(),
        };
        if bsz > 2 {
            cs.slots[1] = -1; // a padding row
        }
        if it == DType::BF16 {
            cs.qkvz = round_bf16(&cs.qkvz);
            cs.ba = round_bf16(&cs.ba);
        }
        let ring0 = randn_vec(&mut g, nslots * k * c, 1.0);
        let state0 = randn_vec(&mut g, nslots * ssz, 0.1);
        let (mut ring_x, mut state_x) = (ring0.clone(), state0.clone());
        let mut out_x = vec![f32::NAN; bsz * vd];
        for b in 0..bsz {
            if cs.slots[b] < 0 {
                continue;
            }
            let (slot, pos) = (cs.slots[b] as usize, cs.pos[b] as usize);
            let rs = slot * k * c;
            let mut st = r::ring_to_state(&ring0[rs..rs + k * c], c, k, pos);
            let xrow = &cs.qkvz[b * ld..b * ld + c];
            let conv = ops::causal_conv1d_silu(xrow, c, &p.conv_w, &mut st);
            ring_x[rs + (pos % k) * c..rs + (pos % k + 1) * c].copy_from_slice(xrow);
            let tok = r::gdn_prepare(&conv, &cs.ba[b * ld_ba..b * ld_ba + sh.nv], &cs.ba[b * ld_ba + sh.nv..(b + 1) * ld_ba], &p.a_log, &p.dt_bias, sh);
            let o = r::gdn_tokens(&[tok], sh, &mut state_x[slot * ssz..(slot + 1) * ssz]);
            let z = &cs.qkvz[b * ld + c..(b + 1) * ld];
            out_x[b * vd..(b + 1) * vd].copy_from_slice(&r::gated_rmsnorm(&o, z, vd, &p.norm_w, d.rms_eps as f32));
        }
        let (qf, qb) = (up(&s, &cs.qkvz), up(&s, &to_bf16(&cs.qkvz)));
        let (bf, bb) = (up(&s, &cs.ba), up(&s, &to_bf16(&cs.ba)));
        let mk = |f: &cudarc::driver::CudaSlice<f32>, bfl: &cudarc::driver::CudaSlice<bf16>, ld: usize| {
            if it == DType::F32 { Mat::f32(ptr(&s, f), ld) } else { Mat::bf16(ptr(&s, bfl), ld) }
        };
        let qkv = mk(&qf, &qb, ld);
        let bm = mk(&bf, &bb, ld_ba);
        let (cw, al, dtb, nw) = (up(&s, &to_bf16(&p.conv_w)), up(&s, &p.a_log), up(&s, &p.dt_bias), up(&s, &to_bf16(&p.norm_w)));
        let (ring_d, state_d) = (up(&s, &ring0), up(&s, &state0));
        let (sl, ps) = (up(&s, &cs.slots), up(&s, &cs.pos));
        let (of, ob) = (poison_f32(&s, bsz * vd), poison_bf16(&s, bsz * vd));
        let om = if ot == DType::F32 { Mat::f32(ptr(&s, &of), vd) } else { Mat::bf16(ptr(&s, &ob), vd) };
        let args = GdnDecode {
            qkv,
            z: qkv.cols(c),
            b: bm,
            a: bm.cols(sh.nv),
            conv_w: ptr(&s, &cw),
            conv_state: ptr(&s, &ring_d),
            state: ptr(&s, &state_d),
            a_log: ptr(&s, &al),
            dt_bias: ptr(&s, &dtb),
            norm_w: ptr(&s, &nw),
            slots: ptr(&s, &sl),
            pos: ptr(&s, &ps),
            state_io: 0,
            out: om,
            batch: bsz,
        };
        e.k.gdn_decode(&s, &args).unwrap();
        let got = if ot == DType::F32 { down(&s, &of) } else { from_bf16(&down(&s, &ob)) };
        let live: Vec<usize> = (0..bsz * vd).filter(|i| !out_x[*i].is_nan()).collect();
        assert!((0..bsz * vd).filter(|i| out_x[*i].is_nan()).all(|i| got[i].is_nan()), "gdn_decode wrote a padding row");
        let pick = |v: &[f32]| live.iter().map(|i| v[*i]).collect::<Vec<_>>();
        // fp32 chain of conv, norms, exp, recurrence, gated norm: 1e-4; bf16 out 1e-2.
        check(&format!("gdn_decode B={bsz} {it:?}->{ot:?} out"), &pick(&got), &pick(&out_x), if ot == DType::F32 { 1e-4 } else { 1e-2 });
        check(&format!("gdn_decode B={bsz} {it:?}->{ot:?} state"), &down(&s, &state_d), &state_x, 1e-5);
        check(&format!("gdn_decode B={bsz} {it:?}->{ot:?} conv ring"), &down(&s, &ring_d), &ring_x, 0.0);
    }
}

/// One prefill launch over `seqs` (length, slot; slot < 0 skipped) from a random non-zero
/// initial state, against the CPU twin (ops::gdn_recurrent, token by token in fp32).
/// Returns the device state after the launch and the inputs, for the composition check.
struct PrefillRun {
    qkv: Vec<f32>,
    ba: Vec<f32>,
    state0: Vec<f32>,
    state: Vec<f32>,
}

#[allow(clippy::too_many_arguments)]
fn prefill_case(e: &Env, s: &std::sync::Arc<cudarc::driver::CudaStream>, g: &mut rand_chacha::ChaCha8Rng, p: &Params, seqs: &[(usize, i32)], dt: DType, nslots: usize, what: &str) -> PrefillRun {
    let d = e.k.dims().clone();
    let sh = GdnShape { nk: d.lin_num_k_heads, nv: d.lin_num_v_heads, dk: d.lin_k_dim, dv: d.lin_v_dim };
    let (c, vd) = (d.conv_dim(), sh.nv * sh.dv);
    // Strides wider than the rows: padding columns must stay untouched.
    let (ldq, ld_ba, ldo) = (c + 8, 2 * sh.nv + 8, vd + 4);
    let ssz = sh.nv * sh.dk * sh.dv;
    let tt: usize = seqs.iter().map(|q| q.0).sum();
    let rows = tt.max(1);
    let qkv = randn_vec(g, rows * ldq, 1.0);
    let mut ba = randn_vec(g, rows * ld_ba, 1.5);
    if dt == DType::BF16 {
        ba = round_bf16(&ba);
    }
    let state0 = randn_vec(g, nslots * ssz, 0.1);
    let mut state_x = state0.clone();
    let mut out_x = vec![f32::NAN; rows * ldo];
    let mut cu = vec![0i32];
    let mut t0 = 0;
    for &(t, slot) in seqs {
        if slot >= 0 {
            let toks: Vec<_> = (t0..t0 + t)
                .map(|i| r::gdn_prepare(&qkv[i * ldq..i * ldq + c], &ba[i * ld_ba..i * ld_ba + sh.nv], &ba[i * ld_ba + sh.nv..i * ld_ba + 2 * sh.nv], &p.a_log, &p.dt_bias, sh))
                .collect();
            let slot = slot as usize;
            let o = r::gdn_tokens(&toks, sh, &mut state_x[slot * ssz..(slot + 1) * ssz]);
            for i in 0..t {
                out_x[(t0 + i) * ldo..(t0 + i) * ldo + vd].copy_from_slice(&o[i * vd..(i + 1) * vd]);
            }
        }
        t0 += t;
        cu.push(t0 as i32);
    }
    let q_d = up(s, &qkv);
    let (bf, bb) = (up(s, &ba), up(s, &to_bf16(&ba)));
    let bm = if dt == DType::F32 { Mat::f32(ptr(s, &bf), ld_ba) } else { Mat::bf16(ptr(s, &bb), ld_ba) };
    let (al, dtb) = (up(s, &p.a_log), up(s, &p.dt_bias));
    let state_d = up(s, &state0);
    let slots: Vec<i32> = seqs.iter().map(|q| q.1).collect();
    let (cu_d, sl_d) = (up(s, &cu), up(s, &slots));
    let out = poison_f32(s, rows * ldo);
    let ws = poison_f32(s, e.k.gdn_prefill_workspace(tt, seqs.len()).div_ceil(4));
    let args = GdnPrefill {
        qkv: ptr(s, &q_d),
        ld_qkv: ldq,
        b: bm,
        a: bm.cols(sh.nv),
        a_log: ptr(s, &al),
        dt_bias: ptr(s, &dtb),
        state: ptr(s, &state_d),
        cu_seqlens: ptr(s, &cu_d),
        slots: ptr(s, &sl_d),
        out: ptr(s, &out),
        ld_out: ldo,
        nseq: seqs.len(),
        tokens: tt,
        max_tokens: seqs.iter().map(|q| q.0).max().unwrap_or(0),
        workspace: ptr(s, &ws),
        workspace_bytes: ws.len() * 4,
    };
    e.k.gdn_prefill(s, &args).unwrap();
    let got = down(s, &out);
    // Skipped sequences and padding columns stay poisoned; every live element is written.
    let live: Vec<usize> = (0..rows * ldo).filter(|i| !out_x[*i].is_nan()).collect();
    assert!((0..rows * ldo).filter(|i| out_x[*i].is_nan()).all(|i| got[i].is_nan()), "{what}: gdn_prefill wrote outside the live outputs");
    let pick = |v: &[f32]| live.iter().map(|i| v[*i]).collect::<Vec<_>>();
    // The chunked kernel computes every product with fp32 operands split into bf16 hi + lo
    // (three MMAs, ~16 mantissa bits: 2^-17 relative per product) and fp32 accumulation;
    // the recurrence does not amplify errors (decays <= 1, I - beta k k^T has eigenvalues
    // in [0, 1]). Its error against an f64 reference was 7e-6 at every length up to 1000
    // (CPU emulation of the kernel); the fp32 CPU twin adds its own ~1e-6. 1e-4 leaves a
    // 10x margin and is what the brief allows.
    let tol = 1e-4;
    if !live.is_empty() {
        check(&format!("gdn_prefill {what} {dt:?} out"), &pick(&got), &pick(&out_x), tol);
    }
    let state = down(s, &state_d);
    check(&format!("gdn_prefill {what} {dt:?} state"), &state, &state_x, tol);
    PrefillRun { qkv, ba, state0, state }
}

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn gdn_prefill_matches_cpu_and_chunks_compose() {
    let Some(e) = env() else { return };
    let s = stream(e);
    let d = e.k.dims().clone();
    let sh = GdnShape { nk: d.lin_num_k_heads, nv: d.lin_num_v_heads, dk: d.lin_k_dim, dv: d.lin_v_dim };
    let ssz = sh.nv * sh.dk * sh.dv;
    let mut g = rng(22);
    let p = params(&mut g, d.conv_dim(), d.conv_kernel, sh.nv, sh.dv);
    // One sequence per launch: short, around the 64-token chunk, long.
    for (i, len) in [1usize, 2, 3, 5, 63, 64, 65, 130, 1000].into_iter().enumerate() {
        let dt = if i % 2 == 0 { DType::F32 } else { DType::BF16 };
        prefill_case(e, &s, &mut g, &p, &[(len, (i % 3) as i32)], dt, 3, &format!("T={len}"));
    }
    // Several sequences of different lengths in one launch, a skipped one (slot -1) and an
    // empty one (its state must stay as it was).
    let mixed: &[(usize, i32)] = &[(1, 3), (5, 0), (3, -1), (64, 2), (0, 5), (130, 1), (65, 4)];
    for dt in [DType::F32, DType::BF16] {
        prefill_case(e, &s, &mut g, &p, mixed, dt, 6, "mixed");
    }
    // Chunk records start at cu/64 + s: sequences starting mid-chunk, several chunks each,
    // a 63-token one and a long one after a skipped 300-token one.
    let mixed2: &[(usize, i32)] = &[(63, 2), (300, 0), (1, 5), (65, 1), (300, -1), (130, 3), (64, 4), (5, 6)];
    prefill_case(e, &s, &mut g, &p, mixed2, DType::F32, 7, "mixed2");

    // 130 tokens in one launch vs 64 + 66 tokens in two launches: the second launch starts
    // its chunks at token 64, exactly where the one-shot launch starts its second chunk, so
    // the arithmetic is the same and the final state is bit-identical.
    for dt in [DType::F32, DType::BF16] {
        let (t_long, slot) = (130usize, 1i32);
        let run = prefill_case(e, &s, &mut g, &p, &[(t_long, slot)], dt, 2, "130 one-shot");
        let c = d.conv_dim();
        let (ldq, ld_ba) = (c + 8, 2 * sh.nv + 8);
        let q_d = up(&s, &run.qkv);
        let (bf, bb) = (up(&s, &run.ba), up(&s, &to_bf16(&run.ba)));
        let bm = if dt == DType::F32 { Mat::f32(ptr(&s, &bf), ld_ba) } else { Mat::bf16(ptr(&s, &bb), ld_ba) };
        let (al, dtb) = (up(&s, &p.a_log), up(&s, &p.dt_bias));
        let state2 = up(&s, &run.state0);
        let out = poison_f32(&s, t_long * (sh.nv * sh.dv + 4));
        let ws = poison_f32(&s, e.k.gdn_prefill_workspace(t_long, 1).div_ceil(4));
        for (a0, len) in [(0usize, 64usize), (64, 66)] {
            let cu2 = up(&s, &[a0 as i32, (a0 + len) as i32]);
            let sl2 = up(&s, &[slot]);
            let args = GdnPrefill {
                qkv: ptr(&s, &q_d),
                ld_qkv: ldq,
                b: bm,
                a: bm.cols(sh.nv),
                a_log: ptr(&s, &al),
                dt_bias: ptr(&s, &dtb),
                state: ptr(&s, &state2),
                cu_seqlens: ptr(&s, &cu2),
                slots: ptr(&s, &sl2),
                out: ptr(&s, &out),
                ld_out: sh.nv * sh.dv + 4,
                nseq: 1,
                tokens: a0 + len,
                max_tokens: len,
                workspace: ptr(&s, &ws),
                workspace_bytes: ws.len() * 4,
            };
            e.k.gdn_prefill(&s, &args).unwrap();
            s.synchronize().unwrap();
        }
        let st2 = down(&s, &state2);
        let r0 = slot as usize * ssz;
        let same = st2[r0..r0 + ssz].iter().zip(&run.state[r0..r0 + ssz]).all(|(a, b)| a.to_bits() == b.to_bits());
        println!("gdn_prefill {dt:?}: 130 tokens in one launch vs 64 + 66: state identical: {same}");
        assert!(same, "prefill split at a chunk boundary differs from one-shot prefill");
    }
}
