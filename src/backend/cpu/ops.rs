//! f32 reference operators: the CPU twins of every CUDA kernel. Plain loops, written
//! to be obviously correct (they follow transformers' modeling_qwen3_5.py step by
//! step); the only concession to speed is the 8-lane dot product.
//! Layouts are row-major; a linear weight is [out, in] as Hugging Face stores it.

/// Dot product with 8 independent accumulators (vectorises; f32 rounding error of
/// the same order as torch's own blocked reductions).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut s = 0f32;
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + s
}

/// y[rows, n_out] = x[rows, n_in] · w[n_out, n_in]ᵀ.
pub fn matmul_wt(x: &[f32], w: &[f32], n_in: usize) -> Vec<f32> {
    assert!(n_in > 0 && x.len().is_multiple_of(n_in) && w.len().is_multiple_of(n_in), "matmul_wt: bad shapes");
    let rows = x.len() / n_in;
    let n_out = w.len() / n_in;
    let mut y = vec![0f32; rows * n_out];
    for r in 0..rows {
        let xr = &x[r * n_in..(r + 1) * n_in];
        for (o, yo) in y[r * n_out..(r + 1) * n_out].iter_mut().enumerate() {
            *yo = dot(xr, &w[o * n_in..(o + 1) * n_in]);
        }
    }
    y
}

/// RMSNorm over rows of width `w.len()`: x * rsqrt(mean(x²) + eps) * (offset + w).
/// Qwen3.5's decoder norms use offset 1 (weight stored as w, applied as 1 + w);
/// the Gated DeltaNet output norm uses offset 0.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, offset: f32) -> Vec<f32> {
    let d = w.len();
    let mut y = vec![0f32; x.len()];
    for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
        let ms = dot(xr, xr) / d as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for i in 0..d {
            yr[i] = xr[i] * inv * (offset + w[i]);
        }
    }
    y
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

pub fn silu(x: f32) -> f32 {
    x * sigmoid(x)
}

/// torch.nn.functional.softplus with its default threshold 20 (linear above it).
pub fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// silu(gate) * up, elementwise.
pub fn silu_mul(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate.iter().zip(up).map(|(g, u)| silu(*g) * u).collect()
}

/// In-place L2 normalisation of rows of width d: x * rsqrt(sum(x²) + eps).
pub fn l2norm_rows(x: &mut [f32], d: usize, eps: f32) {
    for r in x.chunks_exact_mut(d) {
        let inv = 1.0 / (dot(r, r) + eps).sqrt();
        r.iter_mut().for_each(|v| *v *= inv);
    }
}

/// Depthwise causal conv1d followed by SiLU, over `x` [T, C] with weights [C, K].
/// `state` [C, K-1] holds the previous K-1 inputs of each channel (zeros for a new
/// sequence) and is advanced to the last K-1 inputs.
pub fn causal_conv1d_silu(x: &[f32], channels: usize, w: &[f32], state: &mut [f32]) -> Vec<f32> {
    let k = w.len() / channels;
    let t_len = x.len() / channels;
    let hist = k - 1;
    let mut y = vec![0f32; x.len()];
    for c in 0..channels {
        // The channel's inputs with its history in front: [state.., x..].
        let mut ext: Vec<f32> = state[c * hist..(c + 1) * hist].to_vec();
        ext.extend((0..t_len).map(|t| x[t * channels + c]));
        for t in 0..t_len {
            let s: f32 = (0..k).map(|i| w[c * k + i] * ext[t + i]).sum();
            y[t * channels + c] = silu(s);
        }
        state[c * hist..(c + 1) * hist].copy_from_slice(&ext[ext.len() - hist..]);
    }
    y
}

/// Shapes of a Gated DeltaNet call: `nk` key heads of width `dk`, `nv` value heads of
/// width `dv`; value head h reads key head h / (nv / nk).
#[derive(Clone, Copy, Debug)]
pub struct GdnShape {
    pub nk: usize,
    pub nv: usize,
    pub dk: usize,
    pub dv: usize,
}

/// Token-by-token gated delta rule. q, k: [T, nk, dk] (already L2-normalised, q scaled);
/// v: [T, nv, dv]; g, beta: [T, nv]; state: [nv, dk, dv] updated in place.
/// Per step: S *= exp(g); S += k ⊗ (beta (v − Sᵀk)); out = Sᵀq. Returns [T, nv, dv].
pub fn gdn_recurrent(q: &[f32], k: &[f32], v: &[f32], g: &[f32], beta: &[f32], s: GdnShape, state: &mut [f32]) -> Vec<f32> {
    let t_len = g.len() / s.nv;
    let group = s.nv / s.nk;
    let mut out = vec![0f32; t_len * s.nv * s.dv];
    for t in 0..t_len {
        for h in 0..s.nv {
            let kh = h / group;
            let qv = &q[(t * s.nk + kh) * s.dk..][..s.dk];
            let kv = &k[(t * s.nk + kh) * s.dk..][..s.dk];
            let vv = &v[(t * s.nv + h) * s.dv..][..s.dv];
            let st = &mut state[h * s.dk * s.dv..][..s.dk * s.dv];
            let decay = g[t * s.nv + h].exp();
            st.iter_mut().for_each(|x| *x *= decay);
            let b = beta[t * s.nv + h];
            let mut delta = vec![0f32; s.dv];
            for j in 0..s.dv {
                let mem: f32 = (0..s.dk).map(|i| st[i * s.dv + j] * kv[i]).sum();
                delta[j] = (vv[j] - mem) * b;
            }
            for i in 0..s.dk {
                for j in 0..s.dv {
                    st[i * s.dv + j] += kv[i] * delta[j];
                }
            }
            let o = &mut out[(t * s.nv + h) * s.dv..][..s.dv];
            for j in 0..s.dv {
                o[j] = (0..s.dk).map(|i| st[i * s.dv + j] * qv[i]).sum();
            }
        }
    }
    out
}

/// The same function as `gdn_recurrent`, computed chunk by chunk in the UT/WY form that
/// transformers' torch_chunk_gated_delta_rule (and our prefill kernel) uses: within a
/// chunk, solve (I + A) X = β v and (I + A) Y = β k e^{cum} by forward substitution,
/// with A[i][j] = β_i (k_i·k_j) e^{cum_i − cum_j} for j < i; then one state update per chunk.
pub fn gdn_chunked(q: &[f32], k: &[f32], v: &[f32], g: &[f32], beta: &[f32], s: GdnShape, chunk: usize, state: &mut [f32]) -> Vec<f32> {
    let t_len = g.len() / s.nv;
    let group = s.nv / s.nk;
    let (dk, dv) = (s.dk, s.dv);
    let mut out = vec![0f32; t_len * s.nv * dv];
    for h in 0..s.nv {
        let kh = h / group;
        let st = &mut state[h * dk * dv..][..dk * dv];
        let mut c0 = 0;
        while c0 < t_len {
            let l = chunk.min(t_len - c0);
            let qr = |i: usize| &q[((c0 + i) * s.nk + kh) * dk..][..dk];
            let kr = |i: usize| &k[((c0 + i) * s.nk + kh) * dk..][..dk];
            let vr = |i: usize| &v[((c0 + i) * s.nv + h) * dv..][..dv];
            let bt = |i: usize| beta[(c0 + i) * s.nv + h];
            let mut cum = vec![0f32; l];
            let mut acc = 0f32;
            for i in 0..l {
                acc += g[(c0 + i) * s.nv + h];
                cum[i] = acc;
            }
            // Forward substitution for X (new values) and Y (decayed keys).
            let mut x = vec![0f32; l * dv];
            let mut y = vec![0f32; l * dk];
            for i in 0..l {
                let b = bt(i);
                for j in 0..dv {
                    x[i * dv + j] = b * vr(i)[j];
                }
                for j in 0..dk {
                    y[i * dk + j] = b * kr(i)[j] * cum[i].exp();
                }
                for j in 0..i {
                    let a = b * dot(kr(i), kr(j)) * (cum[i] - cum[j]).exp();
                    for c in 0..dv {
                        x[i * dv + c] -= a * x[j * dv + c];
                    }
                    for c in 0..dk {
                        y[i * dk + c] -= a * y[j * dk + c];
                    }
                }
            }
            // v_new = X − Y·S (the part of the values the old state does not predict).
            let mut vnew = x;
            for i in 0..l {
                for c in 0..dv {
                    let p: f32 = (0..dk).map(|r| y[i * dk + r] * st[r * dv + c]).sum();
                    vnew[i * dv + c] -= p;
                }
            }
            for i in 0..l {
                let o = &mut out[((c0 + i) * s.nv + h) * dv..][..dv];
                let qi = qr(i);
                let e = cum[i].exp();
                for c in 0..dv {
                    o[c] = e * (0..dk).map(|r| qi[r] * st[r * dv + c]).sum::<f32>();
                }
                for j in 0..=i {
                    let a = dot(qi, kr(j)) * (cum[i] - cum[j]).exp();
                    for c in 0..dv {
                        o[c] += a * vnew[j * dv + c];
                    }
                }
            }
            let last = cum[l - 1];
            st.iter_mut().for_each(|x| *x *= last.exp());
            for j in 0..l {
                let w = (last - cum[j]).exp();
                let kj = kr(j);
                for r in 0..dk {
                    let kw = kj[r] * w;
                    for c in 0..dv {
                        st[r * dv + c] += kw * vnew[j * dv + c];
                    }
                }
            }
            c0 += l;
        }
    }
    out
}

/// Partial rotate-half RoPE on one head vector: the first `rotary_dim` dims rotate with
/// inv_freq_i = theta^(-2i/rotary_dim); the rest pass through.
pub fn rope_partial(x: &mut [f32], pos: usize, rotary_dim: usize, theta: f64) {
    let half = rotary_dim / 2;
    for i in 0..half {
        // transformers computes inv_freq and the angle in f32; do the same so large
        // positions round identically.
        let inv = (1.0 / theta.powf((2 * i) as f64 / rotary_dim as f64)) as f32;
        let ang = pos as f32 * inv;
        let (sin, cos) = (ang.sin(), ang.cos());
        let (a, b) = (x[i], x[i + half]);
        x[i] = a * cos - b * sin;
        x[i + half] = b * cos + a * sin;
    }
}

/// Causal GQA attention for `t` new query rows at positions start..start+t over a cache
/// holding positions 0..start+t. q: [t, nh, hd]; k_cache, v_cache: [len, nkv, hd].
/// Softmax in f32 with max subtraction; scale hd^-0.5. Returns [t, nh, hd].
pub fn attention_causal(q: &[f32], k_cache: &[f32], v_cache: &[f32], start: usize, nh: usize, nkv: usize, hd: usize) -> Vec<f32> {
    let t_len = q.len() / (nh * hd);
    let group = nh / nkv;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; q.len()];
    for t in 0..t_len {
        let n = start + t + 1;
        for h in 0..nh {
            let kvh = h / group;
            let qv = &q[(t * nh + h) * hd..][..hd];
            let scores: Vec<f32> = (0..n).map(|p| dot(qv, &k_cache[(p * nkv + kvh) * hd..][..hd]) * scale).collect();
            let m = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = scores.iter().map(|s| (s - m).exp()).collect();
            let z: f32 = e.iter().sum();
            let o = &mut out[(t * nh + h) * hd..][..hd];
            for (p, ep) in e.iter().enumerate() {
                let vv = &v_cache[(p * nkv + kvh) * hd..][..hd];
                let w = ep / z;
                for c in 0..hd {
                    o[c] += w * vv[c];
                }
            }
        }
    }
    out
}

/// The masked twin of the device's greedy argmax (`SeqChunk::allowed`): the largest
/// value among the allowed ids below `limit`, the first index winning ties; NaN never
/// wins, an allowed -inf beats nothing; 0 when no allowed id has a non-NaN value.
pub fn argmax_masked(x: &[f32], limit: usize, allowed: &[u32]) -> usize {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in x[..limit.min(x.len())].iter().enumerate() {
        if v.is_nan() || !crate::backend::mask_allows(allowed, i) {
            continue;
        }
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map_or(0, |(i, _)| i)
}

/// The greedy token of a logits row for `Want::Argmax { limit }`: the argmax below
/// `limit`, over the allowed ids only when the chunk carries a token mask.
pub fn greedy(row: &[f32], limit: usize, allowed: Option<&[u32]>) -> usize {
    match allowed {
        Some(mask) => argmax_masked(row, limit, mask),
        None => argmax(&row[..limit.clamp(1, row.len())]),
    }
}

/// Index of the largest value; the first index wins ties; NaN never wins (an all-NaN
/// row gives 0, as on the device).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] || (x[best].is_nan() && !v.is_nan()) {
            best = i;
        }
    }
    best
}

/// Twin of `kiln_quant_rows_i8` (the MTP draft's int8 lm_head), bit for bit: per row of
/// w [n][k] (bf16 values), amax = max |w|, q = 128 + round_half_even(w * (127 / amax)),
/// scale = amax / 127; a zero row gives q = 128 and scale 0. Returns (q, scale).
pub fn quantize_rows_i8(w: &[f32], n: usize, k: usize) -> (Vec<u8>, Vec<f32>) {
    let mut q = vec![128u8; n * k];
    let mut scale = vec![0f32; n];
    for r in 0..n {
        let row = &w[r * k..(r + 1) * k];
        let amax = row.iter().fold(0f32, |a, v| a.max(v.abs()));
        let inv = if amax > 0.0 { 127.0f32 / amax } else { 0.0 };
        scale[r] = amax / 127.0;
        for (d, v) in q[r * k..(r + 1) * k].iter_mut().zip(row) {
            *d = (128.0 + (v * inv).round_ties_even().clamp(-127.0, 127.0)) as u8;
        }
    }
    (q, scale)
}

/// Reference of `kiln_gemv_i8` in f64: y[m][n] = scale[n] * sum_k (q[n][k] - 128) *
/// f16(x[m][k]); also each output's sum of |terms| (`quantized_gemv_reference`).
pub fn gemv_i8_reference(q: &[u8], scale: &[f32], x: &[f32], m: usize, n: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
    quantized_gemv_reference(x, m, n, k, |r, j| (q[r * k + j] as f64 - 128.0) * scale[r] as f64)
}

/// y[i][r] = sum_j w(r, j) * f16(x[i][j]) in f64 (x clamped to f16's range, as the draft
/// GEMVs stage it), with each output's sum of |terms| (the scale its fp32 rounding error
/// is bounded by); w(r, j) is a quantized table's dequantized weight.
fn quantized_gemv_reference(x: &[f32], m: usize, n: usize, k: usize, w: impl Fn(usize, usize) -> f64) -> (Vec<f64>, Vec<f64>) {
    let xh: Vec<f64> = x.iter().map(|v| half::f16::from_f32(v.clamp(-65504.0, 65504.0)).to_f64()).collect();
    let (mut y, mut mag) = (vec![0f64; m * n], vec![0f64; m * n]);
    for i in 0..m {
        for r in 0..n {
            let (mut s, mut a) = (0f64, 0f64);
            for j in 0..k {
                let t = w(r, j) * xh[i * k + j];
                s += t;
                a += t.abs();
            }
            y[i * n + r] = s;
            mag[i * n + r] = a;
        }
    }
    (y, mag)
}

/// k per scale of the int4 draft table (kernels/draft_head.cu DH4_GROUP_K).
pub const I4_GROUP_K: usize = 128;

/// Nibble of element k % 8 in its 32-bit word of the int4 table: k0 k2 k4 k6 in nibbles
/// 0-3, k1 k3 k5 k7 in 4-7 (one shift and mask then gives an MMA fragment's f16 pair).
const I4_NIBBLE: [usize; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

/// Twin of `kiln_quant_rows_i4`, bit for bit: per row of w [n][k] (bf16 values) and group
/// c of 128 k, amax = max |w|, v = 8 + clamp(round_half_even(w * (7 / amax)), -7, 7),
/// scale[r * sg + c] = amax / 7 (a zero group: v = 8, scale 0). q is [n][k / 2] bytes in the
/// kernel's nibble order; scale has `sg` entries per row (groups past k / 128 stay 0).
/// k % 128 == 0.
pub fn quantize_rows_i4(w: &[f32], n: usize, k: usize, sg: usize) -> (Vec<u8>, Vec<f32>) {
    assert!(k % I4_GROUP_K == 0 && sg >= k / I4_GROUP_K, "quantize_rows_i4: K = {k}, scale stride {sg}");
    let mut q = vec![0u8; n * k / 2];
    let mut scale = vec![0f32; n * sg];
    for r in 0..n {
        for c in 0..k / I4_GROUP_K {
            let group = &w[r * k + c * I4_GROUP_K..r * k + (c + 1) * I4_GROUP_K];
            let amax = group.iter().fold(0f32, |a, v| a.max(v.abs()));
            let inv = if amax > 0.0 { 7.0f32 / amax } else { 0.0 };
            scale[r * sg + c] = amax / 7.0;
            for (j, v) in group.iter().enumerate() {
                let kk = c * I4_GROUP_K + j;
                let val = (8.0 + (v * inv).round_ties_even().clamp(-7.0, 7.0)) as u32;
                let word = r * k / 8 + kk / 8;
                let bit = 4 * I4_NIBBLE[kk % 8];
                let byte = &mut q[4 * word + bit / 8];
                *byte |= (val << (bit % 8)) as u8;
            }
        }
    }
    (q, scale)
}

/// Element (row r, k) of the int4 table as its integer value v - 8 (in -7..7).
pub fn i4_value(q: &[u8], k: usize, r: usize, kk: usize) -> i32 {
    let word = r * k / 8 + kk / 8;
    let bit = 4 * I4_NIBBLE[kk % 8];
    ((q[4 * word + bit / 8] >> (bit % 8)) & 0xF) as i32 - 8
}

/// Reference of `kiln_gemv_i4` in f64: y[m][n] = sum over groups c of scale[n][c] * sum_k
/// (v - 8) * f16(x[m][k]); also each output's sum of |terms| (`quantized_gemv_reference`).
pub fn gemv_i4_reference(q: &[u8], scale: &[f32], sg: usize, x: &[f32], m: usize, n: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
    quantized_gemv_reference(x, m, n, k, |r, j| i4_value(q, k, r, j) as f64 * scale[r * sg + j / I4_GROUP_K] as f64)
}
