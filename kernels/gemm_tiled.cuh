// The tiled decode GEMMs' shared pieces (gemm_tiled.cu; the wgmma form that also used them
// was deleted in session 25): the tile and stage constants, a block's tile and K slice
// (TgTile), and the split-K sum of a tile's partials by its last block.
#pragma once
#include "common.cuh"

using namespace kiln;

#define TG_THREADS 256
#define TG_BN 128     // W rows per block
#define TG_BM 64      // batch rows per block
#define TG_SK 64      // k per stage (two 32-k chunks)

// A block's tile of a tiled decode GEMM (BN W rows from n0, BM batch rows from m0; the
// batch tiles of one W tile are neighbouring blocks) and its K slice (split blockIdx.y:
// kb..ke, in 32-k chunks and 64-k stages).
template <int BN, int BM> struct TgTile {
    int n0, m0, kb, ke, nchunks, nst;
    __device__ __forceinline__ TgTile(int M, int K, int ks) {
        const int mtiles = (M + BM - 1) / BM;
        n0 = (blockIdx.x / mtiles) * BN;
        m0 = (blockIdx.x % mtiles) * BM;
        kb = blockIdx.y * ks;
        ke = min(K, kb + ks);
        nchunks = ke > kb ? (ke - kb + 31) / 32 : 0;
        nst = (nchunks + 1) / 2;
    }
};

// The tile's split sum after its partials are written: the last block of the tile to
// arrive (counted in counters[blockIdx.x]) adds the splits in order from 0 into y. BN x BM
// is the block's tile, THREADS its threads.
template <typename Y, int BN = TG_BN, int BM = TG_BM, int THREADS = TG_THREADS>
__device__ __forceinline__ void tg_split_sum(Y* __restrict__ y, const float* __restrict__ ws, unsigned* __restrict__ counters,
                                             int M, int N, int splits, int n0, int m0) {
    const int tid = threadIdx.x;
    if (!block_arrives_last(&counters[blockIdx.x], (unsigned)splits)) return;
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
