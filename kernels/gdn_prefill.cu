// The Gated DeltaNet prefill's pre-pass (kiln_gdn_prefill_prep_*): everything of a
// 64-token chunk that does not depend on the state, one workspace record per (chunk,
// value head). The math, the record and the layouts: gdn_chunk.cuh.
#include "gdn_chunk.cuh"

// ------------------------------------------------------------------------------------
// Pre-pass.
// ------------------------------------------------------------------------------------
template <typename T>
__device__ __forceinline__ void gdn_prep(const float* __restrict__ qkv, int ld_qkv, const T* __restrict__ b,
                                         const T* __restrict__ a, int ld_ba, const float* __restrict__ A_log,
                                         const float* __restrict__ dt_bias, const int* __restrict__ cu_seqlens,
                                         const int* __restrict__ slots, float* __restrict__ ws, int ws_chunks,
                                         int nseq) {
    extern __shared__ __align__(16) unsigned char gr_smem[];
    KILN_PDL_ENTER();
    {
        unsigned dyn;
        asm volatile("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dyn));
        if (dyn < GR_SMEM_BYTES) __trap();  // launched without the shared memory it needs
    }
    const int ch = blockIdx.x, h = blockIdx.y, sq = blockIdx.z;
    if (sq >= nseq || slots[sq] < 0) return;
    const int t0 = cu_seqlens[sq], t1 = cu_seqlens[sq + 1];
    const int tb = t0 + GR_C * ch;
    if (tb >= t1) return;
    const int n = min(GR_C, t1 - tb);
    const int idx = t0 / GR_C + sq + ch;
    if (idx >= ws_chunks) __trap();  // workspace too small for this launch
    float* rec = ws + ((size_t)idx * LIN_NV + h) * GR_REC;

    float* sQ = reinterpret_cast<float*>(gr_smem + GR_OFF_Q);   // [64][GR_LDX] q, later Q'
    float* sK = reinterpret_cast<float*>(gr_smem + GR_OFF_K);   // [64][GR_LDX] k
    float* sV = reinterpret_cast<float*>(gr_smem + GR_OFF_V);   // [64][GR_LDX] v
    float* sW = reinterpret_cast<float*>(gr_smem + GR_OFF_W);   // [64][GR_LDX] W
    uint2* sP = reinterpret_cast<uint2*>(gr_smem + GR_OFF_P);   // [64][GR_LDT] P rows (pairs along j)
    uint2* sAm = reinterpret_cast<uint2*>(gr_smem + GR_OFF_AM); // [64][GR_LDT] -A rows
    uint2* sD = reinterpret_cast<uint2*>(gr_smem + GR_OFF_D);   // [64][GR_LDD] D_b rows (pairs along j)
    float* sAd = reinterpret_cast<float*>(gr_smem + GR_OFF_AD); // [64][GR_LDA] diagonal blocks of A
    float* sG = reinterpret_cast<float*>(gr_smem + GR_OFF_VEC); // [64] g
    float* sBeta = sG + GR_C;
    float* sCum = sG + 2 * GR_C;
    float* sE = sG + 3 * GR_C;    // exp(cum_i)
    float* sDk = sG + 4 * GR_C;   // exp(cum_last - cum_j)
    float* sMisc = sG + 5 * GR_C; // [0] exp(cum_last)

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const unsigned full = 0xffffffffu;
    const int kh = h / GDN_GROUP;

    // ---- 1: q, k normalised; v; beta, g ----
    {
        const int row = tid >> 1, hf = tid & 1, tok = row & (GR_C - 1);
        const bool isk = row >= GR_C;
        float4 rq[GR_F4];
        const float4 z = make_float4(0.f, 0.f, 0.f, 0.f);
        if (tok < n) {
            const float4* src = reinterpret_cast<const float4*>(qkv + (size_t)(tb + tok) * ld_qkv +
                                                                (isk ? LIN_KEY_DIM : 0) + kh * LIN_DK);
#pragma unroll
            for (int i = 0; i < GR_F4; ++i) rq[i] = __ldg(src + 2 * i + hf);
        } else {
#pragma unroll
            for (int i = 0; i < GR_F4; ++i) rq[i] = z;
        }
        // v goes straight to shared memory (cp.async, zero past n): all of a thread's
        // copies are in flight with the q/k loads. Through registers, each of the 8 was
        // a round trip before the next (ncu: 13 % of the kernel's stall samples on them).
        for (int f = tid; f < GR_C * LIN_DV / 4; f += GR_THREADS) {
            const int vt = f / (LIN_DV / 4), c4 = f % (LIN_DV / 4);
            const float* src = vt < n ? qkv + (size_t)(tb + vt) * ld_qkv + 2 * LIN_KEY_DIM + h * LIN_DV + 4 * c4 : qkv;
            cp_async16(sV + vt * GR_LDX + 4 * c4, src, vt < n);
        }
        cp_async_commit();
        if (tid < GR_C) {
            float bb = 0.f, aa = 0.f;
            if (tid < n) {
                bb = to_f(b[(size_t)(tb + tid) * ld_ba + h]);
                aa = to_f(a[(size_t)(tb + tid) * ld_ba + h]);
            }
            sBeta[tid] = tid < n ? sigmoidf_(bb) : 0.f;
            sG[tid] = tid < n ? -expf(A_log[h]) * softplusf_(aa + dt_bias[h]) : 0.f;
        }
        float ss = 0.f;
#pragma unroll
        for (int i = 0; i < GR_F4; ++i)
            ss += rq[i].x * rq[i].x + rq[i].y * rq[i].y + rq[i].z * rq[i].z + rq[i].w * rq[i].w;
        ss += __shfl_xor_sync(full, ss, 1);
        const float sc = isk ? rsqrtf(ss + 1e-6f) : rsqrtf(ss + 1e-6f) * rsqrtf((float)LIN_DK);
        float* dst = (isk ? sK : sQ) + tok * GR_LDX;
#pragma unroll
        for (int i = 0; i < GR_F4; ++i)
            *reinterpret_cast<float4*>(dst + 4 * (2 * i + hf)) =
                make_float4(rq[i].x * sc, rq[i].y * sc, rq[i].z * sc, rq[i].w * sc);
    }
    cp_async_wait<0>();  // this thread's v copies; the barrier shows them to all
    __syncthreads();

    // ---- 2: cumsum (warp 7); Q K^T and K K^T on the lower tiles ----
    // Position p < 20 -> (row block mt, column tile nt), nt <= 2 mt + 1, row-major.
    if (warp == 7) {
        const float g0 = sG[2 * lane], g1 = sG[2 * lane + 1];
        float s = g0 + g1;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const float y = __shfl_up_sync(full, s, o);
            if (lane >= o) s += y;
        }
        float ex = __shfl_up_sync(full, s, 1);
        if (lane == 0) ex = 0.f;
        const float cu0 = ex + g0, cu1 = cu0 + g1;
        const int ln = (n - 1) >> 1;
        const float l0 = __shfl_sync(full, cu0, ln), l1 = __shfl_sync(full, cu1, ln);
        const float last = ((n - 1) & 1) ? l1 : l0;
        sCum[2 * lane] = cu0;
        sCum[2 * lane + 1] = cu1;
        sE[2 * lane] = expf(cu0);
        sE[2 * lane + 1] = expf(cu1);
        sDk[2 * lane] = expf(last - cu0);
        sDk[2 * lane + 1] = expf(last - cu1);
        if (lane == 0) sMisc[0] = expf(last);
    }
    float gq[3][4], gk[3][4];
#pragma unroll
    for (int r = 0; r < 3; ++r)
#pragma unroll
        for (int e = 0; e < 4; ++e) gq[r][e] = gk[r][e] = 0.f;
#pragma unroll
    for (int r = 0; r < 3; ++r) {
        const int p = warp + 8 * r;
        if (p < 20) {
            const int mt = p < 2 ? 0 : (p < 6 ? 1 : (p < 12 ? 2 : 3));
            const int nt = p - (mt == 0 ? 0 : (mt == 1 ? 2 : (mt == 2 ? 6 : 12)));
#pragma unroll 2
            for (int ks = 0; ks < GR_KT; ++ks) {
                unsigned qh[4], ql[4], kah[4], kal[4], bh[2], bl[2];
                lda_f32(sQ, GR_LDX, 16 * mt, 16 * ks, g, t, qh, ql);
                lda_f32(sK, GR_LDX, 16 * mt, 16 * ks, g, t, kah, kal);
                ldb_f32(sK, GR_LDX, 8 * nt, 16 * ks, g, t, bh, bl);
                mma3(gq[r], qh, ql, bh, bl);
                mma3(gk[r], kah, kal, bh, bl);
            }
        }
    }
    __syncthreads();  // cumsum visible

    // ---- 3: P, -A (split), diagonal blocks of A (fp32) ----
#pragma unroll
    for (int r = 0; r < 3; ++r) {
        const int p = warp + 8 * r;
        if (p < 20) {
            const int mt = p < 2 ? 0 : (p < 6 ? 1 : (p < 12 ? 2 : 3));
            const int nt = p - (mt == 0 ? 0 : (mt == 1 ? 2 : (mt == 2 ? 6 : 12)));
            const int j0 = 8 * nt + 2 * t;
            const float cj0 = sCum[j0], cj1 = sCum[j0 + 1];
#pragma unroll
            for (int hr = 0; hr < 2; ++hr) {
                const int i = 16 * mt + g + 8 * hr;
                const float ci = sCum[i], bi = sBeta[i];
                float p0 = 0.f, p1 = 0.f, a0 = 0.f, a1 = 0.f;
                if (j0 <= i) {
                    const float d = expf(ci - cj0);
                    p0 = gq[r][2 * hr] * d;
                    if (j0 < i) a0 = bi * gk[r][2 * hr] * d;
                }
                if (j0 + 1 <= i) {
                    const float d = expf(ci - cj1);
                    p1 = gq[r][2 * hr + 1] * d;
                    if (j0 + 1 < i) a1 = bi * gk[r][2 * hr + 1] * d;
                }
                sP[i * GR_LDT + 4 * nt + t] = split_bf16x2(p0, p1);
                sAm[i * GR_LDT + 4 * nt + t] = split_bf16x2(-a0, -a1);
                if ((nt >> 1) == mt) {
                    sAd[i * GR_LDA + j0 - 16 * mt] = a0;
                    sAd[i * GR_LDA + j0 + 1 - 16 * mt] = a1;
                }
            }
        }
    }
    __syncthreads();

    // ---- 4: D_b = (I + A_bb)^-1, column lc of block bb per lane (warps 0-1) ----
    if (warp < 2) {
        const int col = lane + 32 * warp, bb = col >> 4, lc = col & 15;
        const float* Ab = sAd + 16 * bb * GR_LDA;
        float x[16];
#pragma unroll
        for (int r = 0; r < 16; ++r) {
            float s0 = (r == lc) ? 1.f : 0.f, s1 = 0.f;
#pragma unroll
            for (int j = 0; j < r; j += 2) {
                s0 -= Ab[r * GR_LDA + j] * x[j];
                if (j + 1 < r) s1 -= Ab[r * GR_LDA + j + 1] * x[j + 1];
            }
            x[r] = s0 + s1;
        }
#pragma unroll
        for (int r = 0; r < 16; ++r) {
            const float y = __shfl_xor_sync(full, x[r], 1);
            if (!(lc & 1)) sD[(16 * bb + r) * GR_LDD + (lc >> 1)] = split_bf16x2(x[r], y);
        }
    }
    __syncthreads();

    // ---- 5: block solve per 32-column block of [beta e K | beta V], transposed ----
    // acc[mt][nt][e] = X^T(col0 + 16 mt + g + 8 (e>>1), i = 8 nt + 2t + (e&1)).
#pragma unroll 1
    for (int cb = warp; cb < GR_NCB; cb += 8) {
        const bool isk = cb < LIN_DK / 32;
        const int col0 = isk ? 32 * cb : 32 * cb - LIN_DK;
        const float* src = isk ? sK : sV;
        float acc[2][8][4];
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
            const int i = 8 * nt + 2 * t;
            const float s0 = isk ? sBeta[i] * sE[i] : sBeta[i], s1 = isk ? sBeta[i + 1] * sE[i + 1] : sBeta[i + 1];
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
                const int c = col0 + 16 * mt + g;
                acc[mt][nt][0] = s0 * src[i * GR_LDX + c];
                acc[mt][nt][1] = s1 * src[(i + 1) * GR_LDX + c];
                acc[mt][nt][2] = s0 * src[i * GR_LDX + c + 8];
                acc[mt][nt][3] = s1 * src[(i + 1) * GR_LDX + c + 8];
            }
        }
#pragma unroll
        for (int ib = 0; ib < 4; ++ib) {
            // Y^T = R_b^T + sum_{kb < ib} X_kb^T (-A_{ib,kb})^T
#pragma unroll
            for (int kb = 0; kb < ib; ++kb) {
                unsigned xh[2][4], xl[2][4];
#pragma unroll
                for (int mt = 0; mt < 2; ++mt) acc_to_a(acc[mt][2 * kb], acc[mt][2 * kb + 1], 1.f, xh[mt], xl[mt]);
#pragma unroll
                for (int h2 = 0; h2 < 2; ++h2) {
                    unsigned bh[2], bl[2];
                    ldb_pairs(sAm, GR_LDT, 16 * ib + 8 * h2, 8 * kb, g, t, bh, bl);
#pragma unroll
                    for (int mt = 0; mt < 2; ++mt) mma3(acc[mt][2 * ib + h2], xh[mt], xl[mt], bh, bl);
                }
            }
            // X_b^T = Y^T D_b^T
            unsigned yh[2][4], yl[2][4];
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) acc_to_a(acc[mt][2 * ib], acc[mt][2 * ib + 1], 1.f, yh[mt], yl[mt]);
#pragma unroll
            for (int h2 = 0; h2 < 2; ++h2) {
                unsigned bh[2], bl[2];
                ldb_pairs(sD + 16 * ib * GR_LDD, GR_LDD, 8 * h2, 0, g, t, bh, bl);
#pragma unroll
                for (int mt = 0; mt < 2; ++mt) {
                    float xo[4] = {0.f, 0.f, 0.f, 0.f};
                    mma3(xo, yh[mt], yl[mt], bh, bl);
#pragma unroll
                    for (int e = 0; e < 4; ++e) acc[mt][2 * ib + h2][e] = xo[e];
                }
            }
        }
        if (!isk) {
            // U^T and O0^T = U^T P^T (dv columns col0.., C tiles cm = col0/16 + mt).
            float4* ua = reinterpret_cast<float4*>(rec + GR_UA);
            float4* oa = reinterpret_cast<float4*>(rec + GR_OA);
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
                const int cm = col0 / 16 + mt;
                float o[8][4];
#pragma unroll
                for (int nt = 0; nt < 8; ++nt) {
                    ua[(cm * 8 + nt) * 32 + lane] = make_float4(acc[mt][nt][0], acc[mt][nt][1], acc[mt][nt][2], acc[mt][nt][3]);
#pragma unroll
                    for (int e = 0; e < 4; ++e) o[nt][e] = 0.f;
                }
#pragma unroll
                for (int kk = 0; kk < 4; ++kk) {
                    unsigned uh[4], ul[4];
                    acc_to_a(acc[mt][2 * kk], acc[mt][2 * kk + 1], 1.f, uh, ul);
#pragma unroll
                    for (int nt = 2 * kk; nt < 8; ++nt) {
                        unsigned bh[2], bl[2];
                        ldb_pairs(sP, GR_LDT, 8 * nt, 8 * kk, g, t, bh, bl);
                        mma3(o[nt], uh, ul, bh, bl);
                    }
                }
#pragma unroll
                for (int nt = 0; nt < 8; ++nt) oa[(cm * 8 + nt) * 32 + lane] = make_float4(o[nt][0], o[nt][1], o[nt][2], o[nt][3]);
            }
        } else {
            // W (to sW) and Q'^T = e Q^T - W^T P^T (into sQ, this warp's columns only).
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
                const int c = col0 + 16 * mt + g;
                float o[8][4];
#pragma unroll
                for (int nt = 0; nt < 8; ++nt) {
                    const int i = 8 * nt + 2 * t;
                    const float e0 = sE[i], e1 = sE[i + 1];
                    o[nt][0] = e0 * sQ[i * GR_LDX + c];
                    o[nt][1] = e1 * sQ[(i + 1) * GR_LDX + c];
                    o[nt][2] = e0 * sQ[i * GR_LDX + c + 8];
                    o[nt][3] = e1 * sQ[(i + 1) * GR_LDX + c + 8];
                    sW[i * GR_LDX + c] = acc[mt][nt][0];
                    sW[(i + 1) * GR_LDX + c] = acc[mt][nt][1];
                    sW[i * GR_LDX + c + 8] = acc[mt][nt][2];
                    sW[(i + 1) * GR_LDX + c + 8] = acc[mt][nt][3];
                }
#pragma unroll
                for (int kk = 0; kk < 4; ++kk) {
                    unsigned wh[4], wl[4];
                    acc_to_a(acc[mt][2 * kk], acc[mt][2 * kk + 1], -1.f, wh, wl);
#pragma unroll
                    for (int nt = 2 * kk; nt < 8; ++nt) {
                        unsigned bh[2], bl[2];
                        ldb_pairs(sP, GR_LDT, 8 * nt, 8 * kk, g, t, bh, bl);
                        mma3(o[nt], wh, wl, bh, bl);
                    }
                }
#pragma unroll
                for (int nt = 0; nt < 8; ++nt) {
                    const int i = 8 * nt + 2 * t;
                    sQ[i * GR_LDX + c] = o[nt][0];
                    sQ[(i + 1) * GR_LDX + c] = o[nt][1];
                    sQ[i * GR_LDX + c + 8] = o[nt][2];
                    sQ[(i + 1) * GR_LDX + c + 8] = o[nt][3];
                }
            }
        }
    }
    __syncthreads();

    // ---- 6: -W, Q', Kd as B tiles ----
    {
        uint4* wb = reinterpret_cast<uint4*>(rec + GR_WB);
        uint4* qb = reinterpret_cast<uint4*>(rec + GR_QB);
        uint4* kb = reinterpret_cast<uint4*>(rec + GR_KB);
        for (int f = tid; f < 16 * LIN_DK; f += GR_THREADS) {
            const int ln = f & 31, tile = f >> 5, fg = ln >> 2, ft = ln & 3;
            {
                // (ks, nt) = (tile / 8, tile % 8): B(k = dk, n = i) = M[i][dk]
                const int i = 8 * (tile & 7) + fg, dk = 16 * (tile >> 3) + 2 * ft;
                const float* w = sW + i * GR_LDX + dk;
                const float* q = sQ + i * GR_LDX + dk;
                const uint2 w0 = split_bf16x2(-w[0], -w[1]), w1 = split_bf16x2(-w[8], -w[9]);
                const uint2 q0 = split_bf16x2(q[0], q[1]), q1 = split_bf16x2(q[8], q[9]);
                wb[f] = make_uint4(w0.x, w1.x, w0.y, w1.y);
                qb[f] = make_uint4(q0.x, q1.x, q0.y, q1.y);
            }
            {
                // (kk, nt) = (tile / (DK/8), tile % (DK/8)): B(k = j, n = dk) = d_j K[j][dk]
                const int j = 16 * (tile / (LIN_DK / 8)) + 2 * ft, dk = 8 * (tile % (LIN_DK / 8)) + fg;
                const float* k = sK + j * GR_LDX + dk;
                const uint2 k0 = split_bf16x2(sDk[j] * k[0], sDk[j + 1] * k[GR_LDX]);
                const uint2 k1 = split_bf16x2(sDk[j + 8] * k[8 * GR_LDX], sDk[j + 9] * k[9 * GR_LDX]);
                kb[f] = make_uint4(k0.x, k1.x, k0.y, k1.y);
            }
        }
        if (tid == 0) rec[GR_MISC] = sMisc[0];
    }
}

extern "C" __global__ void __launch_bounds__(GR_THREADS, 1)
    kiln_gdn_prefill_prep_f32(const float* qkv, int ld_qkv, const float* b, const float* a, int ld_ba,
                              const float* A_log, const float* dt_bias, const int* cu_seqlens, const int* slots,
                              float* ws, int ws_chunks, int nseq) {
    gdn_prep<float>(qkv, ld_qkv, b, a, ld_ba, A_log, dt_bias, cu_seqlens, slots, ws, ws_chunks, nseq);
}
extern "C" __global__ void __launch_bounds__(GR_THREADS, 1)
    kiln_gdn_prefill_prep_bf16(const float* qkv, int ld_qkv, const bf16* b, const bf16* a, int ld_ba,
                               const float* A_log, const float* dt_bias, const int* cu_seqlens, const int* slots,
                               float* ws, int ws_chunks, int nseq) {
    gdn_prep<bf16>(qkv, ld_qkv, b, a, ld_ba, A_log, dt_bias, cu_seqlens, slots, ws, ws_chunks, nseq);
}
