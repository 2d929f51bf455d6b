// The Gated DeltaNet prefill's scan (kiln_gdn_prefill_scan): each sequence's chunks in
// order, carrying the state. The math, the record and the layouts: gdn_chunk.cuh.
#include "gdn_chunk.cuh"

// ------------------------------------------------------------------------------------
// Scan.
// ------------------------------------------------------------------------------------

// Whether dk block ks = q + 4p (q = warp / 2 in 0..3) exists. When 4 divides GR_KT every
// block does, and saying so at compile time keeps the scan's MMA loop free of a branch
// per block (the SASS had one per p, leaving 2 of a warp's 4 accumulator chains to
// interleave); the MMAs, and so the bits, are the same.
__device__ __forceinline__ bool gs_block_live(int ks) { return GR_KT % 4 == 0 || ks < GR_KT; }
static_assert(GR_THREADS == 256, "8 warps: q = warp / 2 is 0..3, so ks = q + 4p < GR_KT when 4 divides GR_KT");

// S^T accumulators (dk blocks ks = q + 4p of rows 16 mt..) -> A tiles (mt, ks) of sSA.
__device__ __forceinline__ void gs_store_sa(uint4* sSA, const float (&sacc)[GS_NP][2][4], int mt, int q, int lane) {
#pragma unroll
    for (int p = 0; p < GS_NP; ++p) {
        const int ks = q + 4 * p;
        if (gs_block_live(ks)) st_a_tile(sSA + (mt * GR_KT + ks) * 64, lane, sacc[p][0], sacc[p][1]);
    }
}

// f(accumulator, state element) for each S^T accumulator of the warp and its element of the
// head's fp32 state slab at Sg (S^T[c][dk] is S[dk][c]); blocks ks >= GR_KT are skipped.
template <typename F>
__device__ __forceinline__ void gs_each_state(float* Sg, float (&sacc)[GS_NP][2][4], int q, int mt, int g, int t, F f) {
#pragma unroll
    for (int p = 0; p < GS_NP; ++p)
#pragma unroll
        for (int h2 = 0; h2 < 2; ++h2) {
            const int ks = q + 4 * p, c = 16 * mt + g, dk = 16 * ks + 8 * h2 + 2 * t;
            if (ks < GR_KT) {
                f(sacc[p][h2][0], Sg[(size_t)dk * LIN_DV + c]);
                f(sacc[p][h2][1], Sg[(size_t)(dk + 1) * LIN_DV + c]);
                f(sacc[p][h2][2], Sg[(size_t)dk * LIN_DV + c + 8]);
                f(sacc[p][h2][3], Sg[(size_t)(dk + 1) * LIN_DV + c + 8]);
            }
        }
}

extern "C" __global__ void __launch_bounds__(GR_THREADS, 1)
    kiln_gdn_prefill_scan(const float* __restrict__ ws, float* __restrict__ state, const int* __restrict__ cu_seqlens,
                          const int* __restrict__ slots, float* __restrict__ out, int ld_out, int ws_chunks, int nseq) {
    extern __shared__ __align__(16) unsigned char gs_smem[];
    KILN_PDL_ENTER();
    {
        unsigned dyn;
        asm volatile("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dyn));
        if (dyn < GS_SMEM_BYTES) __trap();
    }
    const int slab = blockIdx.x, h = blockIdx.y, sq = blockIdx.z;
    if (sq >= nseq) return;
    const int slot = slots[sq];
    if (slot < 0) return;
    const int t0 = cu_seqlens[sq], t1 = cu_seqlens[sq + 1];
    if (t1 <= t0) return;
    const int nch = (t1 - t0 + GR_C - 1) / GR_C, base = t0 / GR_C + sq;
    if (base + nch > ws_chunks) __trap();

    uint4* sm = reinterpret_cast<uint4*>(gs_smem);
    uint4* sSA = sm + GS_OFF_SA;  // S^T as A tiles (mt, ks) at mt*GR_KT + ks
    uint4* sVA = sm + GS_OFF_VA;  // V'^T as A tiles (mt, kk) at mt*4 + kk

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const int mt = warp & 1, q = warp >> 1;       // c rows 16 mt..; quarter q
    const int part = q >> 1, nq = q & 1;          // phase A: -W (part 0) or Q' (part 1), i tiles 4 nq..
    const int c0 = 32 * slab;
    const int cm = 2 * slab + mt;                 // this warp's 16-column dv tile
    float* Sg = state + ((size_t)slot * LIN_NV + h) * LIN_DK * LIN_DV + c0;

    // S^T[c][dk]: sacc[p][h2][e] at c = 16 mt + g + 8 (e>>1), dk = 16 ks + 8 h2 + 2t + (e&1)
    // with ks = q + 4p (blocks ks >= GR_KT unused).
    float sacc[GS_NP][2][4] = {};
    gs_each_state(Sg, sacc, q, mt, g, t, [](float& acc, float& st) { acc = st; });
    gs_store_sa(sSA, sacc, mt, q, lane);

    // Chunk c's record; its {-W, Q', Kd} tiles go to buffer c & 1 (cp.async), its U^T or
    // O0^T tiles (this warp's four) and exp(cum_last) to registers.
    auto rec_of = [&](int c) { return ws + ((size_t)(base + c) * LIN_NV + h) * GR_REC; };
    auto issue = [&](int c) {
        const float* r = rec_of(c);
        uint4* dst = sm + (c & 1) * GS_BUF;
        for (int f = tid; f < GS_BUF; f += GR_THREADS) cp_async16(dst + f, r + 4 * f, true);
    };
    float4 rnx[4];
    float elnx;
    auto fetch = [&](int c) {
        const float* r = rec_of(c);
        const float4* src = reinterpret_cast<const float4*>(r + (part ? GR_OA : GR_UA));
#pragma unroll
        for (int u = 0; u < 4; ++u) rnx[u] = __ldg(src + (cm * 8 + 4 * nq + u) * 32 + lane);
        elnx = __ldg(r + GR_MISC);
    };
    issue(0);
    cp_async_commit();
    fetch(0);

#pragma unroll 1
    for (int c = 0; c < nch; ++c) {
        const int tb = t0 + GR_C * c, n = min(GR_C, t1 - tb);
        float acc[4][4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            acc[u][0] = rnx[u].x; acc[u][1] = rnx[u].y; acc[u][2] = rnx[u].z; acc[u][3] = rnx[u].w;
        }
        const float el = elnx;
        cp_async_wait<0>();
        __syncthreads();  // chunk c's tiles and S^T visible; chunk c-1 done with every buffer
        if (c + 1 < nch) {
            issue(c + 1);
            fetch(c + 1);
        }
        cp_async_commit();
        const uint4* buf = sm + (c & 1) * GS_BUF;

        // ---- A: [V'^T | out^T] = [U^T | O0^T] + S^T [-W | Q']^T ----
        {
            const uint4* bt = buf + (part ? GR_QB / 4 : GR_WB / 4) + 4 * nq * 32;
#pragma unroll 2
            for (int ks = 0; ks < GR_KT; ++ks) {
                unsigned ah[4], al[4];
                ld_a_tile(sSA + (mt * GR_KT + ks) * 64, lane, ah, al);
#pragma unroll
                for (int u = 0; u < 4; ++u) {
                    unsigned bh[2], bl[2];
                    ld_b_tile(bt + (ks * 8 + u) * 32, lane, bh, bl);
                    mma3(acc[u], ah, al, bh, bl);
                }
            }
            if (part == 0) {
                // V'^T tiles (i tiles 4 nq + u) -> A tiles (mt, kk = 2 nq + p).
#pragma unroll
                for (int p = 0; p < 2; ++p) st_a_tile(sVA + (mt * 4 + 2 * nq + p) * 64, lane, acc[2 * p], acc[2 * p + 1]);
            } else {
                float* o = out + (size_t)tb * ld_out + h * LIN_DV + c0 + 16 * mt + g;
#pragma unroll
                for (int u = 0; u < 4; ++u) {
                    const int i = 8 * (4 * nq + u) + 2 * t;
                    if (i < n) {
                        o[(size_t)i * ld_out] = acc[u][0];
                        o[(size_t)i * ld_out + 8] = acc[u][2];
                    }
                    if (i + 1 < n) {
                        o[(size_t)(i + 1) * ld_out] = acc[u][1];
                        o[(size_t)(i + 1) * ld_out + 8] = acc[u][3];
                    }
                }
            }
        }
        __syncthreads();  // V'^T visible; everyone done reading S^T

        // ---- B: S^T = exp(cum_last) S^T + V'^T Kd ----
        {
#pragma unroll
            for (int p = 0; p < GS_NP; ++p)
#pragma unroll
                for (int h2 = 0; h2 < 2; ++h2)
#pragma unroll
                    for (int e = 0; e < 4; ++e) sacc[p][h2][e] *= el;
            const uint4* kt = buf + GR_KB / 4;
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) {
                unsigned ah[4], al[4];
                ld_a_tile(sVA + (mt * 4 + kk) * 64, lane, ah, al);
#pragma unroll
                for (int p = 0; p < GS_NP; ++p) {
                    const int ks = q + 4 * p;
                    if (gs_block_live(ks)) {
#pragma unroll
                        for (int h2 = 0; h2 < 2; ++h2) {
                            unsigned bh[2], bl[2];
                            ld_b_tile(kt + (kk * (LIN_DK / 8) + 2 * ks + h2) * 32, lane, bh, bl);
                            mma3(sacc[p][h2], ah, al, bh, bl);
                        }
                    }
                }
            }
            gs_store_sa(sSA, sacc, mt, q, lane);
        }
    }
    cp_async_wait<0>();

    gs_each_state(Sg, sacc, q, mt, g, t, [](float& acc, float& st) { st = acc; });
}
