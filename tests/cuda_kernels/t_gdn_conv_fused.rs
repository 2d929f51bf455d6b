//! The prefill conv fused into the GDN pre-pass (`GdnPrefill::conv`, then
//! kiln_conv_ring_only) against kiln_conv1d followed by the pre-pass: the same core
//! outputs, recurrent states and conv rings, bit for bit.

use crate::harness::*;
use crate::t_gdn::params;
use kiln::backend::cuda::kernels::{Conv1d, DType, GdnPrefill, Mat, PrefillConv};

/// Sequences (tokens, start position, slot): one token, a few, exactly a chunk, chunks
/// plus one, a skipped one (slot -1), one deep into its sequence (the ring holds its
/// halo), an empty one, and one starting at position 0 after others in the launch.
#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn fused_prefill_conv_matches_conv1d_then_prep() {
    let Some(e) = env() else { return };
    let s = stream(e);
    let d = e.k.dims().clone();
    let (c, k, nv, dv, dk) = (d.conv_dim(), d.conv_kernel, d.lin_num_v_heads, d.lin_v_dim, d.lin_k_dim);
    let ld_x = c + nv * dv + 4; // the fused qkv | z rows, padded
    let ld_ba = 2 * nv + 8;
    let ldo = nv * dv + 4;
    let (nslots, ssz) = (6usize, nv * dk * dv);
    let mut g = rng(41);
    let p = params(&mut g, c, k, nv, dv);
    let cases: &[&[(usize, usize, i32)]] = &[
        &[(1, 0, 2), (5, 2, 0), (64, 7, 5), (3, 1, -1), (0, 4, 4), (130, 0, 1)],
        &[(65, 1000, 3), (2, 1, 4), (200, 0, 0)],
    ];
    for (ci, seqs) in cases.iter().enumerate() {
        for dt in [DType::F32, DType::BF16] {
            let tt: usize = seqs.iter().map(|q| q.0).sum();
            let x = randn_vec(&mut g, tt * ld_x, 1.0);
            let ba = randn_vec(&mut g, tt * ld_ba, 1.0);
            let ring0 = randn_vec(&mut g, nslots * k * c, 1.0);
            let state0 = randn_vec(&mut g, nslots * ssz, 0.1);
            let mut cu = vec![0i32];
            for q in seqs.iter() {
                cu.push(cu.last().unwrap() + q.0 as i32);
            }
            let slots: Vec<i32> = seqs.iter().map(|q| q.2).collect();
            let starts: Vec<i32> = seqs.iter().map(|q| q.1 as i32).collect();
            let (x_d, w_d) = (up(&s, &x), up(&s, &to_bf16(&p.conv_w)));
            let (bf, bb) = (up(&s, &ba), up(&s, &to_bf16(&ba)));
            let bm = if dt == DType::F32 { Mat::f32(ptr(&s, &bf), ld_ba) } else { Mat::bf16(ptr(&s, &bb), ld_ba) };
            let (al, dtb) = (up(&s, &p.a_log), up(&s, &p.dt_bias));
            let (cu_d, sl_d, sp_d) = (up(&s, &cu), up(&s, &slots), up(&s, &starts));
            let max_tokens = seqs.iter().map(|q| q.0).max().unwrap_or(0);
            let run = |fused: bool| {
                let (ring, state) = (up(&s, &ring0), up(&s, &state0));
                let conv_out = poison_f32(&s, tt.max(1) * c);
                let out = poison_f32(&s, tt.max(1) * ldo);
                let ws = poison_f32(&s, e.k.gdn_prefill_workspace(tt, seqs.len()).div_ceil(4));
                let conv = Conv1d {
                    x: Mat::f32(ptr(&s, &x_d), ld_x),
                    w: ptr(&s, &w_d),
                    conv_state: ptr(&s, &ring),
                    cu_seqlens: ptr(&s, &cu_d),
                    slots: ptr(&s, &sl_d),
                    start_pos: ptr(&s, &sp_d),
                    out: ptr(&s, &conv_out),
                    ld_out: c,
                    nseq: seqs.len(),
                };
                if !fused {
                    e.k.conv1d(&s, &conv).unwrap();
                }
                let args = GdnPrefill {
                    qkv: if fused { ptr(&s, &x_d) } else { ptr(&s, &conv_out) },
                    ld_qkv: if fused { ld_x } else { c },
                    b: bm,
                    a: bm.cols(nv),
                    a_log: ptr(&s, &al),
                    dt_bias: ptr(&s, &dtb),
                    state: ptr(&s, &state),
                    cu_seqlens: ptr(&s, &cu_d),
                    slots: ptr(&s, &sl_d),
                    out: ptr(&s, &out),
                    ld_out: ldo,
                    nseq: seqs.len(),
                    tokens: tt,
                    max_tokens,
                    workspace: ptr(&s, &ws),
                    workspace_bytes: ws.len() * 4,
                    conv: fused.then_some(PrefillConv { w: ptr(&s, &w_d), conv_state: ptr(&s, &ring), start_pos: ptr(&s, &sp_d) }),
                };
                e.k.gdn_prefill(&s, &args).unwrap();
                if fused {
                    e.k.conv_ring_only(&s, &conv).unwrap();
                }
                (down(&s, &out), down(&s, &state), down(&s, &ring))
            };
            let (out_a, state_a, ring_a) = run(false);
            let (out_b, state_b, ring_b) = run(true);
            let bits = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
            let live = out_a.iter().filter(|v| !v.is_nan()).count();
            assert!(live >= (tt - 3) * nv * dv, "case {ci} {dt:?}: only {live} outputs written");
            assert!(state_a.iter().all(|v| v.is_finite()), "case {ci} {dt:?}: non-finite state");
            let (o, st, r) = (bits(&out_a, &out_b), bits(&state_a, &state_b), bits(&ring_a, &ring_b));
            println!("fused prefill conv case {ci} {dt:?}: outputs {o}, states {st}, rings {r} bit-identical to conv1d + prep");
            assert!(o && st && r, "case {ci} {dt:?}: the fused conv changed the bits (outputs {o}, states {st}, rings {r})");
            assert!(ring_a != ring0, "case {ci} {dt:?}: the ring was not written");
        }
    }
}
