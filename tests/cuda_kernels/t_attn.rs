//! Full attention: q/k norm + RoPE + paged KV write, prefill and decode attention.

use crate::harness::*;
use crate::reference as r;
use kiln::backend::cpu::ops;
use kiln::backend::cuda::kernels::{AttnDecode, AttnPrefill, DType, Mat, QkNormRope};
use kiln::backend::cuda::registry::ATTN_PREFILL_ROWS;
use rand::seq::SliceRandom;
use rand::Rng;

/// A paged cache filled with random bf16 values, and a random block table per sequence.
struct Paged {
    bs: usize,
    k: Vec<f32>,
    v: Vec<f32>,
    tables: Vec<i32>,
    stride: usize,
}

impl Paged {
    fn new(g: &mut rand_chacha::ChaCha8Rng, lens: &[usize], bs: usize, nkv: usize, hd: usize) -> Self {
        let stride = lens.iter().map(|l| l.div_ceil(bs)).max().unwrap_or(1).max(1);
        let total: usize = lens.iter().map(|l| l.div_ceil(bs)).sum::<usize>() + 3;
        let mut phys: Vec<i32> = (0..total as i32).collect();
        phys.shuffle(g);
        let mut tables = vec![-1i32; lens.len() * stride];
        let mut next = 0;
        for (i, l) in lens.iter().enumerate() {
            for b in 0..l.div_ceil(bs) {
                tables[i * stride + b] = phys[next];
                next += 1;
            }
        }
        let n = total * nkv * bs * hd;
        Paged { bs, k: round_bf16(&randn_vec(g, n, 1.0)), v: round_bf16(&randn_vec(g, n, 1.0)), tables, stride }
    }
    fn idx(&self, seq: usize, p: usize, h: usize, nkv: usize, hd: usize) -> usize {
        let blk = self.tables[seq * self.stride + p / self.bs] as usize;
        ((blk * nkv + h) * self.bs + p % self.bs) * hd
    }
    /// Logical [len][nkv][hd] keys and values of sequence `seq`.
    fn logical(&self, seq: usize, len: usize, nkv: usize, hd: usize) -> (Vec<f32>, Vec<f32>) {
        let (mut k, mut v) = (Vec::with_capacity(len * nkv * hd), Vec::with_capacity(len * nkv * hd));
        for p in 0..len {
            for h in 0..nkv {
                let i = self.idx(seq, p, h, nkv, hd);
                k.extend_from_slice(&self.k[i..i + hd]);
                v.extend_from_slice(&self.v[i..i + hd]);
            }
        }
        (k, v)
    }
}

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn qk_norm_rope_writes_q_and_the_paged_cache() {
    let Some(e) = env() else { return };
    let s = stream(e);
    let d = e.k.dims().clone();
    let (nh, nkv, hd) = (d.num_heads, d.num_kv_heads, d.head_dim);
    let ld = 2 * nh * hd + 2 * nkv * hd; // fused q+gate | k | v rows
    let (bs, nblocks) = (16usize, 40usize);
    let mut g = rng(30);
    let qw = round_bf16(&rand_vec(&mut g, hd, 0.5));
    let kw = round_bf16(&rand_vec(&mut g, hd, 0.5));
    for (t, dt) in [(1usize, DType::F32), (5, DType::BF16), (17, DType::F32)] {
        let mut x = randn_vec(&mut g, t * ld, 2.0);
        if dt == DType::BF16 {
            x = round_bf16(&x);
        }
        let pos: Vec<i32> = (0..t).map(|i| if i == 0 { 0 } else { g.gen_range(0..200_000) }).collect();
        let mut rows: Vec<i32> = (0..(nblocks * bs) as i32).collect();
        rows.shuffle(&mut g);
        let mut loc: Vec<i32> = rows[..t].to_vec();
        if t > 1 {
            loc[1] = -1;
        }
        let cache_n = nblocks * nkv * bs * hd;
        let (k0, v0) = (round_bf16(&randn_vec(&mut g, cache_n, 1.0)), round_bf16(&randn_vec(&mut g, cache_n, 1.0)));
        let (mut kx, mut vx) = (k0.clone(), v0.clone());
        let mut qx = Vec::with_capacity(t * nh * hd);
        for i in 0..t {
            let row = &x[i * ld..(i + 1) * ld];
            let (q, kk) = r::qk_norm_rope(row, &row[2 * nh * hd..], &qw, &kw, pos[i] as usize, nh, nkv, hd, d.rotary_dim, d.rope_theta, d.rms_eps as f32);
            qx.extend(q);
            if loc[i] >= 0 {
                let (blk, off) = (loc[i] as usize / bs, loc[i] as usize % bs);
                for h in 0..nkv {
                    let c = ((blk * nkv + h) * bs + off) * hd;
                    kx[c..c + hd].copy_from_slice(&round_bf16(&kk[h * hd..(h + 1) * hd]));
                    let vs = 2 * nh * hd + nkv * hd + h * hd;
                    vx[c..c + hd].copy_from_slice(&round_bf16(&row[vs..vs + hd]));
                }
            }
        }
        let (xf, xb) = (up(&s, &x), up(&s, &to_bf16(&x)));
        let xm = if dt == DType::F32 { Mat::f32(ptr(&s, &xf), ld) } else { Mat::bf16(ptr(&s, &xb), ld) };
        let (qw_d, kw_d, pos_d, loc_d) = (up(&s, &to_bf16(&qw)), up(&s, &to_bf16(&kw)), up(&s, &pos), up(&s, &loc));
        let q_out = poison_f32(&s, t * nh * hd);
        let (kc, vc) = (up(&s, &to_bf16(&k0)), up(&s, &to_bf16(&v0)));
        let args = QkNormRope {
            qg: xm,
            k: xm.cols(2 * nh * hd),
            v: xm.cols(2 * nh * hd + nkv * hd),
            q_norm_w: ptr(&s, &qw_d),
            k_norm_w: ptr(&s, &kw_d),
            pos: ptr(&s, &pos_d),
            kv_loc: ptr(&s, &loc_d),
            q_out: ptr(&s, &q_out),
            k_cache: ptr(&s, &kc),
            v_cache: ptr(&s, &vc),
            block_size: bs,
            tokens: t,
        };
        e.k.qk_norm_rope(&s, &args).unwrap();
        // q: fp32 norm + rotation (sin/cos of the same fp32 angle): 1e-5.
        check(&format!("qk_norm_rope T={t} {dt:?} q"), &down(&s, &q_out), &qx, 1e-5);
        // k: rounded to bf16 on both sides from fp32 values that differ by ulps: 1e-2
        // (rows not written stay exactly as they were, which the norm would also expose).
        check(&format!("qk_norm_rope T={t} {dt:?} k cache"), &from_bf16(&down(&s, &kc)), &kx, 1e-2);
        // v: the same bf16 rounding of the same values: exact.
        check(&format!("qk_norm_rope T={t} {dt:?} v cache"), &from_bf16(&down(&s, &vc)), &vx, 0.0);
    }
}

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn attn_prefill_matches_cpu() {
    let Some(e) = env() else { return };
    let s = stream(e);
    let d = e.k.dims().clone();
    let (nh, nkv, hd) = (d.num_heads, d.num_kv_heads, d.head_dim);
    let mut g = rng(31);
    // (start, T): fresh prompts, chunks after earlier context, a single token, a long
    // prompt (many key tiles, the causal edge mid-tile), a chunk deep into a context.
    let seqs: &[(usize, usize)] = &[(0, 5), (70, 130), (3, 1), (0, 64), (16, 17), (0, 301), (1000, 45)];
    let lens: Vec<usize> = seqs.iter().map(|(a, t)| a + t).collect();
    let pg = Paged::new(&mut g, &lens, 16, nkv, hd);
    let tt: usize = seqs.iter().map(|q| q.1).sum();
    let q = randn_vec(&mut g, tt * nh * hd, 1.0);
    let mut expect = Vec::with_capacity(tt * nh * hd);
    let (mut cu, mut starts) = (vec![0i32], Vec::new());
    let mut t0 = 0;
    for (i, &(start, t)) in seqs.iter().enumerate() {
        let (k, v) = pg.logical(i, start + t, nkv, hd);
        expect.extend(ops::attention_causal(&q[t0 * nh * hd..(t0 + t) * nh * hd], &k, &v, start, nh, nkv, hd));
        t0 += t;
        cu.push(t0 as i32);
        starts.push(start as i32);
    }
    let (q_d, kc, vc) = (up(&s, &q), up(&s, &to_bf16(&pg.k)), up(&s, &to_bf16(&pg.v)));
    let (cu_d, st_d, bt_d) = (up(&s, &cu), up(&s, &starts), up(&s, &pg.tables));
    let out = poison_f32(&s, tt * nh * hd);
    let args = AttnPrefill {
        q: ptr(&s, &q_d),
        k_cache: ptr(&s, &kc),
        v_cache: ptr(&s, &vc),
        cu_seqlens: ptr(&s, &cu_d),
        start_pos: ptr(&s, &st_d),
        block_tables: ptr(&s, &bt_d),
        bt_stride: pg.stride,
        block_size: pg.bs,
        out: ptr(&s, &out),
        nseq: seqs.len(),
        max_tokens: seqs.iter().map(|q| q.1).max().unwrap(),
    };
    // Both block shapes (64 and 128 rows); the same bits, since tiles past a row's last
    // key add exact zeros.
    let mut outs = Vec::new();
    for rows in ATTN_PREFILL_ROWS {
        e.k.attn_prefill_with_rows(&s, &args, rows).unwrap();
        // q and the probabilities enter the tensor cores split into bf16 hi + lo (~16
        // mantissa bits, ~1.5e-5 relative), K/V are bf16 exactly, sums are fp32: 1e-4 leaves
        // room for that and is 40x below what a plain bf16 q or P (4e-3) would give.
        let got = down(&s, &out);
        check(&format!("attn_prefill {rows} rows per block"), &got, &expect, 1e-4);
        outs.push(got);
    }
    let same = outs[0].iter().zip(&outs[1]).all(|(a, b)| a.to_bits() == b.to_bits());
    println!("attn_prefill: 128 rows per block bit-identical to 64: {same}");
    assert!(same, "attn_prefill: the 128-row variant differs from the 64-row one");
}

#[test]
#[ignore = "needs a CUDA GPU (run on the device with --ignored)"]
fn attn_decode_matches_cpu_and_is_batch_invariant() {
    let Some(e) = env() else { return };
    let s = stream(e);
    let d = e.k.dims().clone();
    let (nh, nkv, hd) = (d.num_heads, d.num_kv_heads, d.head_dim);
    let mut g = rng(32);
    let lens: Vec<usize> = vec![1, 5, 64, 0, 65, 1000, 1025, 4100];
    let b = lens.len();
    let pg = Paged::new(&mut g, &lens, 16, nkv, hd);
    let q = randn_vec(&mut g, b * nh * hd, 1.0);
    let ldg = 2 * nh * hd;
    let gate = randn_vec(&mut g, b * ldg, 2.0);
    let mut plain = vec![f32::NAN; b * nh * hd];
    for (i, &l) in lens.iter().enumerate() {
        if l == 0 {
            continue;
        }
        let (k, v) = pg.logical(i, l, nkv, hd);
        plain[i * nh * hd..(i + 1) * nh * hd].copy_from_slice(&ops::attention_causal(&q[i * nh * hd..(i + 1) * nh * hd], &k, &v, l - 1, nh, nkv, hd));
    }
    let (q_d, kc, vc, bt_d) = (up(&s, &q), up(&s, &to_bf16(&pg.k)), up(&s, &to_bf16(&pg.v)), up(&s, &pg.tables));
    let lens_i: Vec<i32> = lens.iter().map(|l| *l as i32).collect();
    let cl = up(&s, &lens_i);
    let (gf, gb) = (up(&s, &gate), up(&s, &to_bf16(&gate)));
    let live: Vec<usize> = (0..b * nh * hd).filter(|i| !plain[*i].is_nan()).collect();
    let pick = |v: &[f32]| live.iter().map(|i| v[*i]).collect::<Vec<_>>();
    for (max_parts, gated, ot) in [(1usize, false, DType::F32), (16, false, DType::F32), (16, true, DType::BF16), (7, true, DType::F32)] {
        let (na, nm) = e.k.attn_decode_scratch(b, max_parts);
        let (pa, pm) = (poison_f32(&s, na), poison_f32(&s, nm));
        let (of, ob) = (poison_f32(&s, b * nh * hd), poison_bf16(&s, b * nh * hd));
        let om = if ot == DType::F32 { Mat::f32(ptr(&s, &of), nh * hd) } else { Mat::bf16(ptr(&s, &ob), nh * hd) };
        let gm = if ot == DType::F32 { Mat::f32(ptr(&s, &gf), ldg) } else { Mat::bf16(ptr(&s, &gb), ldg) };
        let mut args = AttnDecode {
            q: ptr(&s, &q_d),
            k_cache: ptr(&s, &kc),
            v_cache: ptr(&s, &vc),
            block_tables: ptr(&s, &bt_d),
            bt_stride: pg.stride,
            ctx_lens: ptr(&s, &cl),
            block_size: pg.bs,
            part_acc: ptr(&s, &pa),
            part_ml: ptr(&s, &pm),
            max_parts,
            gate: gated.then_some(gm.cols(hd)),
            gate_hs: 2 * hd,
            out: om,
            batch: b,
        };
        e.k.attn_decode(&s, &args).unwrap();
        let got = if ot == DType::F32 { down(&s, &of) } else { from_bf16(&down(&s, &ob)) };
        let gate_used = if ot == DType::BF16 { round_bf16(&gate) } else { gate.clone() };
        let mut expect = plain.clone();
        if gated {
            for i in 0..b {
                for c in 0..nh * hd {
                    let (h, j) = (c / hd, c % hd);
                    expect[i * nh * hd + c] *= ops::sigmoid(gate_used[i * ldg + h * 2 * hd + hd + j]);
                }
            }
        }
        assert!((0..b * nh * hd).filter(|i| plain[*i].is_nan()).all(|i| got[i].is_nan()), "attn_decode wrote a padding row");
        // fp32 (base-2 softmax, split sums): 1e-4; bf16 output: 1e-2.
        check(&format!("attn_decode max_parts={max_parts} gate={gated} {ot:?}"), &pick(&got), &pick(&expect), if ot == DType::F32 { 1e-4 } else { 1e-2 });

        // The 1025-key sequence alone gives bit-identical output.
        if ot == DType::F32 {
            let row = 6;
            let alone = poison_f32(&s, nh * hd);
            let (q1, cl1) = (up(&s, &q[row * nh * hd..(row + 1) * nh * hd]), up(&s, &[lens_i[row]]));
            let bt1 = up(&s, &pg.tables[row * pg.stride..(row + 1) * pg.stride]);
            let g1 = up(&s, &gate[row * ldg..(row + 1) * ldg]);
            args.q = ptr(&s, &q1);
            args.ctx_lens = ptr(&s, &cl1);
            args.block_tables = ptr(&s, &bt1);
            args.gate = gated.then_some(Mat::f32(ptr(&s, &g1), ldg).cols(hd));
            args.out = Mat::f32(ptr(&s, &alone), nh * hd);
            args.batch = 1;
            e.k.attn_decode(&s, &args).unwrap();
            let a = down(&s, &alone);
            let same = a.iter().zip(&got[row * nh * hd..(row + 1) * nh * hd]).all(|(x, y)| x.to_bits() == y.to_bits());
            println!("attn_decode max_parts={max_parts}: row alone == row in batch of {b}: {same}");
            assert!(same, "attn_decode is not batch invariant");
        }
    }
}
