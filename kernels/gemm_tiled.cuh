// Shared by the two tiled decode GEMMs (gemm_tiled.cu: mma.sync; gemm_tiled_wg.cu: wgmma on
// sm_90a): the block tile and stage constants, the shared-memory layout, a block's tile
// and K slice (TgBlock), and the split-K sum of a tile's partials by its last block.
#pragma once
#include "common.cuh"

using namespace kiln;

#define TG_THREADS 256
#define TG_BN 128     // W rows per block
#define TG_BM 64      // batch rows per block
#define TG_SK 64      // k per stage (two 32-k chunks)
#define TG_ROWB 128   // bytes per shared-memory row: 64 bf16
#define TG_XPLANE (TG_BM * TG_ROWB)  // 8 KB: one stage of x hi (x lo follows for fp32 x)

// Shared memory: WST slots of W stages, then XST slots of x stages. W runs WST - 1 stages
// ahead (cp.async), x XST - 1 (through registers); registry::TILED_STAGES holds the
// counts (passed as defines), and a host model checks the schedule
// (kernels/tiled_pipeline.rs). They are 3 and 3 (96 KB for fp32 x). Measured on the H100 with the same bits: 3 and 2 was
// 0.5-0.9 % faster but spills 36 bytes on sm_100a, 4 and 3 2-6 % and 5 and 2 4-9 % slower
// (W further ahead costs; x one stage ahead or two is about the same).
template <bool XF32, int WST, int XST> struct TgLayout {
    static constexpr int W = TG_BN * TG_ROWB;  // 16 KB
    static constexpr int X = TG_XPLANE * (XF32 ? 2 : 1);
    static constexpr int SMEM = WST * W + XST * X;
};

// The tile's split sum after its partials are written: the last block of the tile to
// arrive (counted in counters[blockIdx.x]) adds the splits in order from 0 into y. BN x BM
// is the block's tile, THREADS its threads.
template <typename Y, int BN = TG_BN, int BM = TG_BM, int THREADS = TG_THREADS>
__device__ __forceinline__ void tg_split_sum(Y* __restrict__ y, const float* __restrict__ ws, unsigned* __restrict__ counters,
                                             int M, int N, int splits, int n0, int m0) {
    const int tid = threadIdx.x;
    __threadfence();
    __syncthreads();
    __shared__ unsigned tg_last;
    if (tid == 0) tg_last = atomicAdd(&counters[blockIdx.x], 1u) == (unsigned)(splits - 1);
    __syncthreads();
    if (!tg_last) return;
    __threadfence();
    // The tile's sums, 4 consecutive outputs per item, splits added in order from 0.
    // A thread owns TG_ITEMS items; it loads TG_RS splits of TG_IG items at once (16
    // float4 in flight) before adding them, so a tile of 13 splits takes 8 dependent
    // L2 round trips per thread instead of 32. The additions, and so the bits, are
    // those of a sum one partial at a time.
    const size_t stride = (size_t)M * N;
    const bool vec = (N & 3) == 0 && (reinterpret_cast<size_t>(ws) & 15) == 0;
    if (vec) {
        constexpr int TG_ITEMS = (BN / 4) * BM / THREADS, TG_IG = 4, TG_RS = 4;
        static_assert(TG_ITEMS % TG_IG == 0, "whole groups of items per thread");
#pragma unroll 1
        for (int g0 = 0; g0 < TG_ITEMS; g0 += TG_IG) {
            const float* p[TG_IG];
            bool ok[TG_IG];
            float4 s4[TG_IG];
#pragma unroll
            for (int u = 0; u < TG_IG; ++u) {
                const int i = tid + (g0 + u) * THREADS;
                const int n = n0 + (i % (BN / 4)) * 4, m = m0 + i / (BN / 4);
                ok[u] = n < N && m < M;
                p[u] = ws + (size_t)(ok[u] ? m : 0) * N + (ok[u] ? n : 0);
                s4[u] = make_float4(0.f, 0.f, 0.f, 0.f);
            }
#pragma unroll 1
            for (int sp = 0; sp < splits; sp += TG_RS) {
                float4 a[TG_IG][TG_RS];
#pragma unroll
                for (int u = 0; u < TG_IG; ++u)
#pragma unroll
                    for (int r = 0; r < TG_RS; ++r)
                        a[u][r] = ok[u] && sp + r < splits ? __ldcg(reinterpret_cast<const float4*>(p[u] + (sp + r) * stride))
                                                           : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
                for (int u = 0; u < TG_IG; ++u)
#pragma unroll
                    for (int r = 0; r < TG_RS; ++r)
                        if (sp + r < splits) {
                            s4[u].x += a[u][r].x; s4[u].y += a[u][r].y; s4[u].z += a[u][r].z; s4[u].w += a[u][r].w;
                        }
            }
#pragma unroll
            for (int u = 0; u < TG_IG; ++u) {
                if (!ok[u]) continue;
                const int i = tid + (g0 + u) * THREADS;
                const int n = n0 + (i % (BN / 4)) * 4, m = m0 + i / (BN / 4);
                Y* dst = y + (size_t)m * N + n;
                dst[0] = from_f<Y>(s4[u].x); dst[1] = from_f<Y>(s4[u].y); dst[2] = from_f<Y>(s4[u].z); dst[3] = from_f<Y>(s4[u].w);
            }
        }
    } else {
        for (int i = tid; i < (BN / 4) * BM; i += THREADS) {
            const int n = n0 + (i % (BN / 4)) * 4, m = m0 + i / (BN / 4);
            if (n >= N || m >= M) continue;
            const float* p = ws + (size_t)m * N + n;
            float s4[4] = {0.f, 0.f, 0.f, 0.f};
            for (int sp = 0; sp < splits; ++sp)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    if (n + e < N) s4[e] += __ldcg(p + sp * stride + e);
#pragma unroll
            for (int e = 0; e < 4; ++e)
                if (n + e < N) y[(size_t)m * N + n + e] = from_f<Y>(s4[e]);
        }
    }
    if (tid == 0) counters[blockIdx.x] = 0u;
}

// Byte offset of 16-byte segment `seg` (0..7, k = seg*8..) of W tile row `row` (the
// mma.sync kernel's layout). Odd rows
// swap their two halves: the 8 lanes of one 16-byte-load phase read rows 2q and 2q+1,
// four segments each, which then fall on 32 distinct banks.
__device__ __forceinline__ int tg_off(int row, int seg) { return row * TG_ROWB + ((seg ^ ((row & 1) << 2)) << 4); }

// What both tiled kernels share for a block: its tile (W rows n0.., batch rows m0..) and
// K slice, and a thread's part of the loads. W stage s: 128 rows x 8 segments, 4 cp.async
// per thread (zero past N and past ke, as the skinny kernels zero their loads); the
// thread's rows are wr0 + 32q, its segment fixed, so one pointer and one shared offset
// serve every stage. x stage s through registers: a unit is one pair of batch rows (g,
// g + 8 of a 16-row tile) over 4 k (fp32: two units per thread, pairs p and p + 16) or 8
// k (bf16: one per thread); 16 neighbouring lanes (fp32) or 8 (bf16) read 256 or 128
// contiguous bytes of a row. A unit's rows are xm + 32q + 8e, its k fixed (xkc).
template <bool XF32, int WST> struct TgBlock {
    static constexpr int WQ = TG_BN * 8 / TG_THREADS;
    static constexpr int XU = XF32 ? 2 : 1;  // units per thread per stage
    static constexpr int XK = XF32 ? 4 : 8;  // k per unit
    static constexpr int XPR = TG_SK / XK;   // units per row pair per stage
    static constexpr int XE = XF32 ? 4 : 2;  // bytes per x element
    using XRegs = uint4[XU][2];
    const bf16* W;
    int M, N, K, n0, m0, kb, ke, nchunks, nst;
    int wr0, wseg, wdst;
    const bf16* wsrc;
    int xpair, xkc, xm;
    const unsigned char* xsrc;

    __device__ __forceinline__ TgBlock(const bf16* W_, const void* x, int M_, int N_, int K_, int ks) : W(W_), M(M_), N(N_), K(K_) {
        const int tid = threadIdx.x;
        const int mtiles = (M + TG_BM - 1) / TG_BM;
        n0 = (blockIdx.x / mtiles) * TG_BN;
        m0 = (blockIdx.x % mtiles) * TG_BM;
        kb = blockIdx.y * ks;
        ke = min(K, kb + ks);
        nchunks = ke > kb ? (ke - kb + 31) / 32 : 0;
        nst = (nchunks + 1) / 2;
        wr0 = tid >> 3;
        wseg = tid & 7;
        wsrc = W + (size_t)(n0 + wr0) * K + kb + wseg * 8;
        wdst = tg_off(wr0, wseg);  // + 32q rows: tg_off's swizzle depends on row parity only
        xpair = tid / XPR;
        xkc = (tid % XPR) * XK;
        xm = m0 + (xpair >> 3) * 16 + (xpair & 7);
        xsrc = reinterpret_cast<const unsigned char*>(x) + ((size_t)xm * K + kb + xkc) * XE;
    }
    // W stage s into its slot (s % WST) of `wsm` (WST slots of TG_BN x TG_ROWB bytes).
    __device__ __forceinline__ void load_w(unsigned char* wsm, int s) const {
        unsigned char* dst = wsm + (s % WST) * (TG_BN * TG_ROWB) + wdst;
        const bool kin = s < nst && kb + s * TG_SK + wseg * 8 < ke;
#pragma unroll
        for (int q = 0; q < WQ; ++q) {
            const bool ok = kin && n0 + wr0 + 32 * q < N;
            cp_async16(dst + 32 * q * TG_ROWB, ok ? wsrc + (size_t)32 * q * K + s * TG_SK : W, ok);
        }
    }
    // x stage s, global -> registers (zero past M, and past ke by 8-k segments as the W
    // loads and the skinny kernels).
    __device__ __forceinline__ void load_x(int s, XRegs& dst) const {
        const bool kin = s < nst && kb + s * TG_SK + (xkc & ~7) < ke;
#pragma unroll
        for (int q = 0; q < XU; ++q)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int dm = 32 * q + 8 * e;
                dst[q][e] = make_uint4(0u, 0u, 0u, 0u);
                if (kin && xm + dm < M)
                    dst[q][e] = __ldg(reinterpret_cast<const uint4*>(xsrc + ((size_t)dm * K + s * TG_SK) * XE));
            }
    }
};
