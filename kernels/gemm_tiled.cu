// Tiled tensor-core GEMM for decode batches of 17..256 rows: y[M][N] = x[M][K] . W[N][K]^T.
//
// kiln_gemm_tiled_x{f32,bf16}_y{f32,bf16}(
//     const bf16* W, const X* x, Y* y, float* ws, unsigned* counters,
//     int M, int N, int K, int ks, int splits)
//   Same arguments, layouts and split-K plan as the skinny kernels of gemm.cu, and the
//   same arithmetic for every output: the k order inside each 32-wide chunk, the fragment
//   each MMA gets, the MMA sequence of an accumulator (hi step 0, hi step 1, lo step 0,
//   lo step 1 per chunk, starting from zero at the split's first chunk) and the split
//   sum (0 + p0 + p1 + ... in split order). So a row gives bit-identical results through
//   this kernel and through gemm.cu's, whatever M is: choosing the kernel by M keeps
//   rows batch invariant (tested on the device).
//   What differs is how the data reaches the tensor cores. A block owns a 128 (W rows)
//   x 64 (batch rows) output tile of one split; W and x go through shared memory in
//   stages of 64 k, three stages deep (W with cp.async, fp32 x through registers,
//   split into bf16 hi/lo once per block), so each W element read from memory serves
//   up to 64 batch rows in the block and the other batch tiles of the same W tile run
//   as neighbouring blocks (L2 hits). 8 warps as 4 (W rows) x 2 (batch rows), 32 x 32
//   outputs per warp.
//   grid (ceil(N / 128) * ceil(M / 64), splits), block 256, dynamic shared memory
//   KILN_SMEM_GEMM_TILED_{F32,BF16} (registry.rs). counters: one per (W tile, batch
//   tile), at least ceil(N / 128) * 4, zero before the first launch and left zero.
#include "common.cuh"

using namespace kiln;

#define TG_THREADS 256
#define TG_BN 128     // W rows per block
#define TG_BM 64      // batch rows per block
#define TG_SK 64      // k per stage (two 32-k chunks)
#define TG_STAGES 3
#define TG_ROWB 128   // bytes per shared-memory row: 64 bf16

template <bool XF32> struct TgLayout {
    static constexpr int W = TG_BN * TG_ROWB;  // 16 KB
    static constexpr int X = TG_BM * TG_ROWB;  // 8 KB of x hi (then x lo for fp32 x)
    static constexpr int STAGE = W + X * (XF32 ? 2 : 1);
    static constexpr int SMEM = TG_STAGES * STAGE;
};

// Byte offset of 16-byte segment `seg` (0..7, k = seg*8..) of tile row `row`. Odd rows
// swap their two halves: the 8 lanes of one 16-byte-load phase read rows 2q and 2q+1,
// four segments each, which then fall on 32 distinct banks.
__device__ __forceinline__ int tg_off(int row, int seg) { return row * TG_ROWB + ((seg ^ ((row & 1) << 2)) << 4); }

__device__ __forceinline__ uint4 lds128(const unsigned char* p) { return *reinterpret_cast<const uint4*>(p); }

// One 32-k chunk (half `h` of the stage at `wt`) for the warp's first JT batch tiles:
// every accumulator gets hi step 0, hi step 1, then (fp32 x) lo step 0, lo step 1, the
// order the skinny kernels use; only the interleaving of independent accumulators is
// free, which leaves every bit unchanged.
template <int JT, bool XF32>
__device__ __forceinline__ void tg_chunk(float (&acc)[2][4][4], const unsigned char* wt, int wn, int wm, int g, int t,
                                         int h) {
    using L = TgLayout<XF32>;
    const unsigned char* xh = wt + L::W;
    uint4 a[2][2];
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) a[r][hh] = lds128(wt + tg_off(wn * 32 + r * 16 + hh * 8 + g, h * 4 + t));
    uint4 hi[JT], lo[JT];
#pragma unroll
    for (int j = 0; j < JT; ++j) {
        const int off = tg_off(wm * 32 + j * 8 + g, h * 4 + t);
        hi[j] = lds128(xh + off);
        if constexpr (XF32) lo[j] = lds128(xh + L::X + off);
    }
    mma_chunk_tiles<JT, 2, 4, XF32>(acc, a, hi, lo);
}

template <bool XF32, typename Y>
__device__ __forceinline__ void tiled_gemm(const bf16* __restrict__ W, const void* __restrict__ x, Y* __restrict__ y,
                                           float* __restrict__ ws, unsigned* __restrict__ counters, int M, int N,
                                           int K, int ks, int splits) {
    using L = TgLayout<XF32>;
    extern __shared__ __align__(128) unsigned char tg_smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int wn = warp & 3, wm = warp >> 2;
    const int mtiles = (M + TG_BM - 1) / TG_BM;
    const int n0 = (blockIdx.x / mtiles) * TG_BN, m0 = (blockIdx.x % mtiles) * TG_BM;
    const int kb = blockIdx.y * ks;
    const int ke = min(K, kb + ks);
    const int nchunks = ke > kb ? (ke - kb + 31) / 32 : 0;
    const int nst = (nchunks + 1) / 2;
    // Batch tiles of 8 this warp multiplies (warp-uniform; the rest lie past M).
    const int jt = max(0, min(4, (M - m0 - wm * 32 + 7) / 8));

    // W stage s: 128 rows x 8 segments, 4 cp.async per thread (zero past N and past ke,
    // as the skinny kernels zero their loads).
    auto load_w = [&](int s) {
        unsigned char* dst = tg_smem + (s % TG_STAGES) * L::STAGE;
#pragma unroll
        for (int q = 0; q < TG_BN * 8 / TG_THREADS; ++q) {
            const int i = tid + q * TG_THREADS, row = i >> 3, seg = i & 7;
            const int k = kb + s * TG_SK + seg * 8;
            const bool ok = s < nst && n0 + row < N && k < ke;
            cp_async16(dst + tg_off(row, seg), ok ? W + (size_t)(n0 + row) * K + k : W, ok);
        }
    };
    // x stage s: 64 rows x 8 segments, 2 per thread.
    constexpr int XQ = TG_BM * 8 / TG_THREADS;
    float xr[XQ][8];
    using XRegs = float[XQ][8];
    auto x_ok = [&](int s, int i, int& m, int& k) {
        m = m0 + (i >> 3);
        k = kb + s * TG_SK + (i & 7) * 8;
        return s < nst && m < M && k < ke;
    };
    auto load_x_regs = [&](int s, XRegs& dst) {  // fp32 x: global -> registers
#pragma unroll
        for (int q = 0; q < XQ; ++q) {
            int m, k;
            const bool ok = x_ok(s, tid + q * TG_THREADS, m, k);
            float4 a = make_float4(0.f, 0.f, 0.f, 0.f), b = a;
            if (ok) {
                const float* p = reinterpret_cast<const float*>(x) + (size_t)m * K + k;
                a = __ldg(reinterpret_cast<const float4*>(p));
                b = __ldg(reinterpret_cast<const float4*>(p + 4));
            }
            dst[q][0] = a.x; dst[q][1] = a.y; dst[q][2] = a.z; dst[q][3] = a.w;
            dst[q][4] = b.x; dst[q][5] = b.y; dst[q][6] = b.z; dst[q][7] = b.w;
        }
    };
    auto store_x_regs = [&](int s, const XRegs& src) {  // registers -> bf16 hi / lo tiles
        unsigned char* hi_t = tg_smem + (s % TG_STAGES) * L::STAGE + L::W;
#pragma unroll
        for (int q = 0; q < XQ; ++q) {
            const int i = tid + q * TG_THREADS, row = i >> 3, seg = i & 7;
            unsigned hi[4], lo[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                hi[e] = pack_bf16x2(src[q][2 * e], src[q][2 * e + 1]);
                lo[e] = pack_bf16x2(src[q][2 * e] - bf16lo(hi[e]), src[q][2 * e + 1] - bf16hi(hi[e]));
            }
            *reinterpret_cast<uint4*>(hi_t + tg_off(row, seg)) = make_uint4(hi[0], hi[1], hi[2], hi[3]);
            *reinterpret_cast<uint4*>(hi_t + L::X + tg_off(row, seg)) = make_uint4(lo[0], lo[1], lo[2], lo[3]);
        }
    };
    auto load_x_async = [&](int s) {  // bf16 x: global -> shared directly
        unsigned char* hi_t = tg_smem + (s % TG_STAGES) * L::STAGE + L::W;
#pragma unroll
        for (int q = 0; q < XQ; ++q) {
            const int i = tid + q * TG_THREADS;
            int m, k;
            const bool ok = x_ok(s, i, m, k);
            const bf16* xb = reinterpret_cast<const bf16*>(x);
            cp_async16(hi_t + tg_off(i >> 3, i & 7), ok ? xb + (size_t)m * K + k : xb, ok);
        }
    };

    // Prologue: weights are never written, so their first stages load before the
    // predecessor kernel finishes (PDL); x only after. Group 0 = W0, W1, x0; group 1 = x1.
    load_w(0);
    load_w(1);
    // One thread per W row of the tile: the row's next columns into L2.
    prefetch_rows_early(W, n0, TG_BN, tid, M, N, K, kb, ke, 2 * TG_SK, splits, ks);
    KILN_PDL_ENTER_ROWS(M);
    if constexpr (XF32) {
        // Both stages' x loads in flight before either is stored: one dependent L2 round
        // trip at the block's start, not two.
        float xr1[XQ][8];
        load_x_regs(0, xr);
        load_x_regs(1, xr1);
        store_x_regs(0, xr);
        store_x_regs(1, xr1);
        cp_async_commit();
        cp_async_commit();
    } else {
        load_x_async(0);
        cp_async_commit();
        load_x_async(1);
        cp_async_commit();
    }

    float acc[2][4][4];
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[r][j][e] = 0.f;

    for (int s = 0; s < nst; ++s) {
        cp_async_wait<1>();  // stage s has landed (stage s + 1 may still be in flight)
        __syncthreads();     // ... for every thread; and stage s - 1's slot is free
        load_w(s + 2);
        if constexpr (XF32) {
            load_x_regs(s + 2, xr);
        } else {
            load_x_async(s + 2);
        }
        cp_async_commit();

        const unsigned char* wt = tg_smem + (s % TG_STAGES) * L::STAGE;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            if (2 * s + h < nchunks) {
                // One specialisation per count of live batch tiles (warp-uniform), so a
                // full tile has no branch between its 8 accumulators' MMA chains and the
                // scheduler can interleave them (a branch per tile left 2 chains).
                switch (jt) {
                    case 4: tg_chunk<4, XF32>(acc, wt, wn, wm, g, t, h); break;
                    case 3: tg_chunk<3, XF32>(acc, wt, wn, wm, g, t, h); break;
                    case 2: tg_chunk<2, XF32>(acc, wt, wn, wm, g, t, h); break;
                    case 1: tg_chunk<1, XF32>(acc, wt, wn, wm, g, t, h); break;
                    default: break;
                }
            }
        }
        if constexpr (XF32) store_x_regs(s + 2, xr);  // slot of stage s - 1, free since the barrier
    }
    cp_async_wait<0>();

    // Epilogue: as gemm.cu's. Accumulator e of (r, j): W row n0 + wn*32 + r*16 + g + 8*(e/2),
    // batch row m0 + wm*32 + j*8 + 2t + e%2. One split: straight to y; else the partial to
    // ws, and the tile's last block to arrive sums the splits.
    float* part = splits == 1 ? nullptr : ws + (size_t)blockIdx.y * M * N;
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int n = n0 + wn * 32 + r * 16 + g + 8 * (e >> 1), m = m0 + wm * 32 + j * 8 + 2 * t + (e & 1);
                if (n >= N || m >= M) continue;
                if (part) __stcg(part + (size_t)m * N + n, acc[r][j][e]);
                else y[(size_t)m * N + n] = from_f<Y>(acc[r][j][e]);
            }
    if (!part) return;
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
        constexpr int TG_ITEMS = (TG_BN / 4) * TG_BM / TG_THREADS, TG_IG = 4, TG_RS = 4;
        static_assert(TG_ITEMS % TG_IG == 0, "whole groups of items per thread");
#pragma unroll 1
        for (int g0 = 0; g0 < TG_ITEMS; g0 += TG_IG) {
            const float* p[TG_IG];
            bool ok[TG_IG];
            float4 s4[TG_IG];
#pragma unroll
            for (int u = 0; u < TG_IG; ++u) {
                const int i = tid + (g0 + u) * TG_THREADS;
                const int n = n0 + (i % (TG_BN / 4)) * 4, m = m0 + i / (TG_BN / 4);
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
                const int i = tid + (g0 + u) * TG_THREADS;
                const int n = n0 + (i % (TG_BN / 4)) * 4, m = m0 + i / (TG_BN / 4);
                Y* dst = y + (size_t)m * N + n;
                dst[0] = from_f<Y>(s4[u].x); dst[1] = from_f<Y>(s4[u].y); dst[2] = from_f<Y>(s4[u].z); dst[3] = from_f<Y>(s4[u].w);
            }
        }
    } else {
        for (int i = tid; i < (TG_BN / 4) * TG_BM; i += TG_THREADS) {
            const int n = n0 + (i % (TG_BN / 4)) * 4, m = m0 + i / (TG_BN / 4);
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

#define GEMM_TILED(XN, XT, XF, YN, YT)                                                           \
    static_assert(TgLayout<XF>::SMEM == KILN_SMEM_GEMM_TILED_##XN,                               \
                  "the launcher's shared memory (registry.rs) differs from this layout");      \
    extern "C" __global__ void __launch_bounds__(TG_THREADS, 2)                                  \
        kiln_gemm_tiled_x##XN##_y##YN(const bf16* W, const XT* x, YT* y, float* ws,              \
                                      unsigned* counters, int M, int N, int K, int ks,           \
                                      int splits) {                                              \
        tiled_gemm<XF, YT>(W, x, y, ws, counters, M, N, K, ks, splits);                          \
    }
GEMM_TILED(f32, float, true, f32, float)
GEMM_TILED(f32, float, true, bf16, bf16)
GEMM_TILED(bf16, bf16, false, f32, float)
GEMM_TILED(bf16, bf16, false, bf16, bf16)
