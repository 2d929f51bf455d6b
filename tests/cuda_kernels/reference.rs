//! Plain references for what src/backend/cpu/ops.rs does not cover in the kernels' own
//! layouts (composed from its operators where it does).

use kiln::backend::cpu::ops::{self, GdnShape};

/// y[m][n] = Σ_k x[m][k] w[n][k], accumulated in f64.
pub fn gemm(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    for i in 0..m {
        let xr = &x[i * k..(i + 1) * k];
        for j in 0..n {
            let wr = &w[j * k..(j + 1) * k];
            let s: f64 = xr.iter().zip(wr).map(|(a, b)| *a as f64 * *b as f64).sum();
            y[i * n + j] = s as f32;
        }
    }
    y
}

/// Gated RMSNorm per head of width w.len() over o [T][width]; z [T][ldz].
pub fn gated_rmsnorm(o: &[f32], z: &[f32], ldz: usize, w: &[f32], eps: f32) -> Vec<f32> {
    let width = o.len() / (z.len() / ldz);
    let t = o.len() / width;
    let normed = ops::rms_norm(o, w, eps, 0.0);
    let mut out = vec![0f32; o.len()];
    for i in 0..t {
        for c in 0..width {
            out[i * width + c] = normed[i * width + c] * ops::silu(z[i * ldz + c]);
        }
    }
    out
}

/// The conv ring [CONV_K][C] (row p % K holds position p) as the CPU op's state
/// [C][K-1] of positions start-K+1 .. start-1 (zeros before position 0).
pub fn ring_to_state(ring: &[f32], c: usize, k: usize, start: usize) -> Vec<f32> {
    let mut st = vec![0f32; c * (k - 1)];
    for j in 0..k - 1 {
        let p = start as i64 - (k as i64 - 1) + j as i64;
        if p >= 0 {
            for ch in 0..c {
                st[ch * (k - 1) + j] = ring[(p as usize % k) * c + ch];
            }
        }
    }
    st
}

/// Gated DeltaNet inputs for one token of one sequence after the conv: normalises q and
/// k per key head (L2, eps 1e-6), scales q by 1/sqrt(dk), and computes g and beta.
pub struct GdnToken {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub g: Vec<f32>,
    pub beta: Vec<f32>,
}

pub fn gdn_prepare(conv_out: &[f32], b: &[f32], a: &[f32], a_log: &[f32], dt_bias: &[f32], s: GdnShape) -> GdnToken {
    let kd = s.nk * s.dk;
    let mut q = conv_out[..kd].to_vec();
    let mut k = conv_out[kd..2 * kd].to_vec();
    let v = conv_out[2 * kd..2 * kd + s.nv * s.dv].to_vec();
    ops::l2norm_rows(&mut q, s.dk, 1e-6);
    ops::l2norm_rows(&mut k, s.dk, 1e-6);
    let scale = 1.0 / (s.dk as f32).sqrt();
    q.iter_mut().for_each(|x| *x *= scale);
    let g = (0..s.nv).map(|h| -a_log[h].exp() * ops::softplus(a[h] + dt_bias[h])).collect();
    let beta = b.iter().map(|x| ops::sigmoid(*x)).collect();
    GdnToken { q, k, v, g, beta }
}

/// Runs `tokens` through the recurrence (state [nv][dk][dv] updated); returns the raw
/// outputs [T][nv*dv].
pub fn gdn_tokens(tokens: &[GdnToken], s: GdnShape, state: &mut [f32]) -> Vec<f32> {
    let mut out = Vec::new();
    for t in tokens {
        out.extend(ops::gdn_recurrent(&t.q, &t.k, &t.v, &t.g, &t.beta, s, state));
    }
    out
}

/// q/k RMSNorm (1 + w) + partial RoPE of one token: qg [NH][2*HD] (q | gate), k [NKV][HD].
/// Returns (q [NH][HD], k [NKV][HD]).
#[allow(clippy::too_many_arguments)]
pub fn qk_norm_rope(qg: &[f32], k: &[f32], qw: &[f32], kw: &[f32], pos: usize, nh: usize, nkv: usize, hd: usize, rot: usize, theta: f64, eps: f32) -> (Vec<f32>, Vec<f32>) {
    let mut q = Vec::with_capacity(nh * hd);
    for h in 0..nh {
        q.extend_from_slice(&qg[h * 2 * hd..h * 2 * hd + hd]);
    }
    let mut q = ops::rms_norm(&q, qw, eps, 1.0);
    let mut kk = ops::rms_norm(&k[..nkv * hd], kw, eps, 1.0);
    for h in 0..nh {
        ops::rope_partial(&mut q[h * hd..(h + 1) * hd], pos, rot, theta);
    }
    for h in 0..nkv {
        ops::rope_partial(&mut kk[h * hd..(h + 1) * hd], pos, rot, theta);
    }
    (q, kk)
}
