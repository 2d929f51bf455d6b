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
//   stages of 64 k, several stages deep (W with cp.async, x through registers: fp32 x
//   is split into bf16 hi/lo once per block), so each W element read from memory serves
//   up to 64 batch rows in the block and the other batch tiles of the same W tile run
//   as neighbouring blocks (L2 hits). 8 warps as 4 (W rows) x 2 (batch rows), 32 x 32
//   outputs per warp. Here x is the MMA's A operand (16 batch rows) and W its B operand
//   (8 W rows): a lane's 16 bytes of a W row are the B fragments of both k16 steps as
//   they lie, and x is stored in shared memory already in A-fragment order, so every
//   fragment is one 16-byte shared load with no register shuffling (with W as A, the
//   fragments needed ~3 moves per MMA, which left the kernel issue-bound). Each output
//   gets the same 16 products per k16 step either way (the same k permutation), so the
//   bits are those of the skinny kernels.
//   grid (ceil(N / 128) * ceil(M / 64), splits), block 256, dynamic shared memory
//   KILN_SMEM_GEMM_TILED_{f32,bf16} (registry.rs). counters: one per (W tile, batch
//   tile), at least ceil(N / 128) * 4, zero before the first launch and left zero;
//   NULL: the partials alone, for the consumer to sum (as gemm.cu's).
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

// Byte offset of 16-byte segment `seg` (0..7, k = seg*8..) of W tile row `row`. Odd rows
// swap their two halves: the 8 lanes of one 16-byte-load phase read rows 2q and 2q+1,
// four segments each, which then fall on 32 distinct banks.
__device__ __forceinline__ int tg_off(int row, int seg) { return row * TG_ROWB + ((seg ^ ((row & 1) << 2)) << 4); }

// Byte offset of lane `l`'s A fragment for k16 step `s` of 32-k chunk `h` of the stage,
// batch rows 16*jm..16*jm+15 of the block: 16 bytes holding x(g, c..c+1), x(g+8, c..c+1),
// x(g, c+2..c+3), x(g+8, c+2..c+3) with g = l/4, c = 32h + 8(l%4) + 4s (the skinny
// kernels' k order). A warp's 32 fragments are 512 contiguous bytes (conflict-free
// reads); step 1 flips bit 2 of the lane so the writers of one 8-lane store phase
// (4 lanes x 2 steps) hit 8 distinct 16-byte bank groups.
__device__ __forceinline__ int tg_xoff(int jm, int h, int s, int l) {
    return (((jm * 2 + h) * 2 + s) << 9) + ((l ^ (s << 2)) << 4);
}

__device__ __forceinline__ uint4 lds128(const unsigned char* p) { return *reinterpret_cast<const uint4*>(p); }

// d += x fragment (A, 16 batch rows) * W fragment (B, two words: 8 W rows).
__device__ __forceinline__ void tg_mma(float* d, const uint4& xa, unsigned w0, unsigned w1) {
    const unsigned a[4] = {xa.x, xa.y, xa.z, xa.w}, b[2] = {w0, w1};
    mma_16816(d, a, b);
}

// One 32-k chunk (half H of the stage at `wt`) for the warp's first JT batch tiles of
// 16: every accumulator gets hi step 0, hi step 1, then (fp32 x) lo step 0, lo step 1,
// the order the skinny kernels use; only the interleaving of independent accumulators
// is free, which leaves every bit unchanged. wo: the lane's W row offset for this half
// (tg_off of W tile 0); xo[s]: its x fragment offset for step s (tg_xoff of batch tile
// 0, half 0), so every shared load is a register plus a constant.
template <int JT, int H, bool XF32>
__device__ __forceinline__ void tg_chunk(float (&acc)[2][4][4], const unsigned char* wt, const unsigned char* xt, int wo,
                                         const int (&xo)[2]) {
    uint4 w[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) w[r] = lds128(wt + wo + r * 8 * TG_ROWB);
    // x fragments per plane (hi, then lo for fp32 x), batch tile and k16 step.
    constexpr int NP = XF32 ? 2 : 1;
    uint4 f[NP][JT][2];
#pragma unroll
    for (int p = 0; p < NP; ++p)
#pragma unroll
        for (int j = 0; j < JT; ++j)
#pragma unroll
            for (int s = 0; s < 2; ++s) f[p][j][s] = lds128(xt + p * TG_XPLANE + xo[s] + tg_xoff(j, H, 0, 0));
    // Step s of W tile r is words 2s, 2s + 1 of its 16 bytes.
#pragma unroll
    for (int p = 0; p < NP; ++p)
#pragma unroll
        for (int s = 0; s < 2; ++s)
#pragma unroll
            for (int j = 0; j < JT; ++j)
#pragma unroll
                for (int r = 0; r < 4; ++r) tg_mma(acc[j][r], f[p][j][s], s ? w[r].z : w[r].x, s ? w[r].w : w[r].y);
}

// The chunk with the live-tile count as a template argument (warp-uniform switch), so a
// full tile has no branch between its 8 accumulators' MMA chains and the scheduler can
// interleave them (a branch per tile left 2 chains).
template <int H, bool XF32>
__device__ __forceinline__ void tg_chunk_live(float (&acc)[2][4][4], int jt, const unsigned char* wt,
                                              const unsigned char* xt, int wo, const int (&xo)[2]) {
    switch (jt) {
        case 2: tg_chunk<2, H, XF32>(acc, wt, xt, wo, xo); break;
        case 1: tg_chunk<1, H, XF32>(acc, wt, xt, wo, xo); break;
        default: break;
    }
}

// The tile's split sum after its partials are written: the last block of the tile to
// arrive (counted in counters[blockIdx.x]) adds the splits in order from 0 into y.
template <typename Y>
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

template <bool XF32, int WST, int XST, typename Y>
__device__ __forceinline__ void tiled_gemm(const bf16* __restrict__ W, const void* __restrict__ x, Y* __restrict__ y,
                                           float* __restrict__ ws, unsigned* __restrict__ counters, int M, int N,
                                           int K, int ks, int splits) {
    using L = TgLayout<XF32, WST, XST>;
    constexpr int WPRE = WST - 1, XPRE = XST - 1;
    static_assert(WPRE >= XPRE && (XPRE == 1 || XPRE == 2), "x stored 1 or 2 stages ahead, W at least as far");
    extern __shared__ __align__(128) unsigned char tg_smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int wn = warp & 3, wm = warp >> 2;
    const TgBlock<XF32, WST> tb(W, x, M, N, K, ks);
    const int n0 = tb.n0, m0 = tb.m0, kb = tb.kb, ke = tb.ke, nchunks = tb.nchunks, nst = tb.nst;
    const int xpair = tb.xpair, xkc = tb.xkc;
    constexpr int XU = TgBlock<XF32, WST>::XU;
    // Batch tiles of 16 this warp multiplies (warp-uniform; the rest lie past M).
    const int jt = max(0, min(2, (M - m0 - wm * 32 + 15) / 16));
    auto load_w = [&](int s) { tb.load_w(tg_smem, s); };
    // Where the unit's fragment goes: tg_xoff(pair / 8, h, s, 4 * (pair % 8) + t); the
    // second fp32 unit (pair + 16) is 2 batch tiles further.
    const int xh = xkc >> 5, xft = (xkc >> 3) & 3, xl = (xpair & 7) * 4 + xft;
    const int xdst0 = tg_xoff(xpair >> 3, xh, XF32 ? (xkc >> 2) & 1 : 0, xl);
    const int xdst1 = tg_xoff(xpair >> 3, xh, 1, xl);  // bf16: step 1 of the same unit
    using XRegs = typename TgBlock<XF32, WST>::XRegs;
    XRegs xr;
    auto load_x_regs = [&](int s, XRegs& dst) { tb.load_x(s, dst); };
    auto store_x_regs = [&](int s, const XRegs& src) {  // registers -> A-fragment order
        unsigned char* xs = tg_smem + WST * L::W + (s % XST) * L::X;
#pragma unroll
        for (int q = 0; q < XU; ++q) {
            const uint4 a = src[q][0], b = src[q][1];  // rows g, g + 8
            if constexpr (XF32) {
                const uint2 p0 = split_bf16x2(__uint_as_float(a.x), __uint_as_float(a.y)),
                            p1 = split_bf16x2(__uint_as_float(b.x), __uint_as_float(b.y)),
                            p2 = split_bf16x2(__uint_as_float(a.z), __uint_as_float(a.w)),
                            p3 = split_bf16x2(__uint_as_float(b.z), __uint_as_float(b.w));
                const uint4 hv = make_uint4(p0.x, p1.x, p2.x, p3.x), lv = make_uint4(p0.y, p1.y, p2.y, p3.y);
                const int off = xdst0 + q * tg_xoff(2, 0, 0, 0);
                *reinterpret_cast<uint4*>(xs + off) = hv;
                *reinterpret_cast<uint4*>(xs + TG_XPLANE + off) = lv;
            } else {
                *reinterpret_cast<uint4*>(xs + xdst0) = make_uint4(a.x, b.x, a.y, b.y);
                *reinterpret_cast<uint4*>(xs + xdst1) = make_uint4(a.z, b.z, a.w, b.w);
            }
        }
    };
    // The lane's fragment offsets (tg_chunk).
    const int wo[2] = {tg_off(wn * 32 + g, t), tg_off(wn * 32 + g, 4 + t)};
    const int xo[2] = {tg_xoff(wm * 2, 0, 0, lane), tg_xoff(wm * 2, 0, 1, lane)};

    // Prologue: weights are never written, so their first WPRE stages load before the
    // predecessor kernel finishes (PDL), one cp.async group each; x only after.
#pragma unroll
    for (int i = 0; i < WPRE; ++i) {
        load_w(i);
        cp_async_commit();
    }
    // One thread per W row of the tile: the row's next columns into L2.
    prefetch_rows_early(W, n0, TG_BN, tid, M, N, K, kb, ke, WPRE * TG_SK, splits, ks);
    KILN_PDL_ENTER_ROWS(M);
    // x goes through two register sets (stage t's in set t % 2), each loaded two stages
    // before it is stored: stage t's x is loaded in stage t - XPRE - 2 and stored in
    // stage t - XPRE (its slot is free from that stage's barrier), so a load has two
    // stages of MMAs to arrive. The first XPRE stages are stored here.
    uint4 xb[XU][2];
    if constexpr (XPRE == 2) {
        load_x_regs(0, xr);
        load_x_regs(1, xb);  // both in flight before either is stored: one round trip
        store_x_regs(0, xr);
        store_x_regs(1, xb);
        load_x_regs(2, xr);
        load_x_regs(3, xb);
    } else {
        load_x_regs(0, xr);
        store_x_regs(0, xr);
        load_x_regs(1, xb);
        load_x_regs(2, xr);
    }

    float acc[2][4][4];  // [batch tile of 16][W tile of 8][fragment]
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[j][r][e] = 0.f;

    // Stage s; `xs` holds stage s + XPRE's x, and takes stage s + XPRE + 2's.
    auto stage = [&](int s, XRegs& xs) {
        cp_async_wait<WPRE - 1>();  // stage s's W has landed (later ones may be in flight)
        __syncthreads();            // ... for every thread; and stage s - 1's slots are free
        load_w(s + WPRE);
        cp_async_commit();
        store_x_regs(s + XPRE, xs);  // x slot of stage s - 1, free since the barrier
        load_x_regs(s + XPRE + 2, xs);
        const unsigned char* wt = tg_smem + (s % WST) * L::W;
        const unsigned char* xt = tg_smem + WST * L::W + (s % XST) * L::X;
        tg_chunk_live<0, XF32>(acc, jt, wt, xt, wo[0], xo);
        if (2 * s + 1 < nchunks) tg_chunk_live<1, XF32>(acc, jt, wt, xt, wo[1], xo);
    };
    for (int s = 0; s < nst; s += 2) {  // two stages per trip: the sets alternate
        if constexpr (XPRE % 2 == 0) {
            stage(s, xr);
            if (s + 1 < nst) stage(s + 1, xb);
        } else {
            stage(s, xb);
            if (s + 1 < nst) stage(s + 1, xr);
        }
    }
    cp_async_wait<0>();

    // Epilogue: as gemm.cu's. Accumulator e of (j, r): batch row m0 + wm*32 + j*16 + g +
    // 8*(e/2), W row n0 + wn*32 + r*8 + 2t + e%2. One split: straight to y; else the
    // partial to ws, and the tile's last block to arrive sums the splits.
    // Accumulators e and e + 1 are neighbours in a row: one 8-byte store (4 bytes for bf16
    // y) when N is even, so a warp's store fills whole 32-byte sectors (8 rows x 4 lanes)
    // instead of half of twice as many.
    float* part = splits == 1 ? nullptr : ws + (size_t)blockIdx.y * M * N;
    const bool pairs = (N & 1) == 0 && ((reinterpret_cast<size_t>(part ? (void*)part : (void*)y) & 7) == 0);
    auto put = [&](size_t at, float v) {  // one output (the partial, or y for one split)
        if (part) __stcg(part + at, v);
        else y[at] = from_f<Y>(v);
    };
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
            for (int e = 0; e < 4; e += 2) {
                const int m = m0 + wm * 32 + j * 16 + g + 8 * (e >> 1), n = n0 + wn * 32 + r * 8 + 2 * t;
                if (n >= N || m >= M) continue;
                const float v0 = acc[j][r][e], v1 = acc[j][r][e + 1];
                const size_t at = (size_t)m * N + n;
                if (pairs) {  // n even and N even: n + 1 < N, and the pair is aligned
                    if (part) __stcg(reinterpret_cast<float2*>(part + at), make_float2(v0, v1));
                    else storen<2>(y + at, acc[j][r] + e);
                } else {
                    put(at, v0);
                    if (n + 1 < N) put(at + 1, v1);
                }
            }
    if (!part || counters == nullptr) return;  // counters NULL: partials only (gemm.cu)
    tg_split_sum<Y>(y, ws, counters, M, N, splits, n0, m0);
}

// ---------------------------------------------------------------------------------
// wgmma variant (sm_90a only; an experiment behind KILN_GEMM_WGMMA=1):
// kiln_gemm_tiled_wg_x{f32,bf16}_y{f32,bf16}, the same arguments, grid, block, shared
// memory size, split plan and bits as kiln_gemm_tiled_*. Session 15: both operands from
// shared memory and one stage of wgmmas in flight (session 13's kernel read W into
// registers and waited for every stage's wgmmas, because a register an in-flight wgmma
// reads cannot be refilled).
//   Why the bits stay: mma.sync's k16 step depends only on the set of its 16 products,
//   not on which position holds which (bench/mma_perm.cu, H100: 0 of 2,097,152 outputs
//   differ under any permutation), and wgmma's step equals mma.sync's (wgmma_bits.cu).
//   So each step multiplies the skinny kernels' set, step (h, s) of a stage: k = 32h +
//   8p + 4s + {0..3}, p = 0..3, in these positions: half p >> 1 of the step, 8-byte
//   piece p & 1 of the core-matrix row. The accumulator still sees hi s0, hi s1, lo s0,
//   lo s1 per chunk from zero. (The kernel test compares it with the register kernel
//   bit for bit at M = 1..256.)
//   W (A operand, 64 rows per warpgroup) by 8-byte cp.async straight into K-major core
//   matrices without swizzle: per stage slot [warpgroup][step q = 2h + s][2 KB], row r of
//   the warpgroup at (r >> 3) * 256 + (r & 7) * 16, half at + 128, piece at + 8 (LBO 128,
//   SBO 256). x (B operand) through registers, stored in the same positions. A warp's
//   loads and stores cover 8 rows at a time, so they are free of bank conflicts.
//   Pipeline (session 18): W two stages ahead, x stored one stage ahead (loaded two
//   before that), three slots each; a stage issues its wgmmas, then the later stages'
//   loads and stores, then waits for its wgmmas (wait_group 0), so at the next barrier
//   the slots it read are free. (Session 15's kernel had W one stage ahead, waited with
//   wait_group 1 and its 8-byte stores were 8-way bank conflicts: 40-62 % slower than
//   mma.sync on the H100, session 17.)
//   Warpgroup wg owns W rows 64 wg..+63 of the block's 128; its accumulator d[i] is W row
//   16 w + g + 8 ((i >> 1) & 1) (w: the warp in the group) and batch row 8 (i >> 2) + 2t +
//   (i & 1) of the block's 64. The MMAs cover the tile's live batch rows rounded up to 16.
#define TGW_XSTEP 2048  // bytes of one k16 step's tile (64 rows x 16 positions x 2 bytes)

// Byte offset of position pair `pair` (0..3) of core-matrix half `half` of row n of step
// q's tile (x and each warpgroup's W use the same layout).
__device__ __forceinline__ int tgw_xoff(int q, int n, int half, int pair) {
    return q * TGW_XSTEP + (n >> 3) * 256 + half * 128 + (n & 7) * 16 + pair * 4;
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ unsigned long long tgw_desc(const unsigned char* smem) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(smem);
    // start >> 4 | LBO 128 >> 4 at bit 16 | SBO 256 >> 4 at bit 32; no swizzle, base 0.
    return (unsigned long long)((a >> 4) & 0x3FFF) | ((unsigned long long)(128 >> 4) << 16) | ((unsigned long long)(256 >> 4) << 32);
}

// 8 bytes global -> shared (L1-bypassing is 16-byte only: .ca); ok = false zero-fills.
__device__ __forceinline__ void cp_async8(void* smem, const void* gmem, bool ok) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    const int n = ok ? 8 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;" ::"r"(s), "l"(gmem), "r"(n) : "memory");
}

// d[0 .. NB/2) += A (W, descriptor) x B (x, descriptor): one k16 step of the warpgroup's
// 64 W rows x NB batch rows (NB = 16, 32, 48 or 64: the tile's live rows, rounded up).
// The accumulator of an output is the same register whatever NB is, and its products and
// their order do not depend on NB either.
template <int NB> __device__ __forceinline__ void tgw_mma(float (&d)[32], unsigned long long a, unsigned long long b);
template <> __device__ __forceinline__ void tgw_mma<16>(float (&d)[32], unsigned long long a, unsigned long long b) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7}, %8, %9, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
                 : "l"(a), "l"(b));
}
template <> __device__ __forceinline__ void tgw_mma<32>(float (&d)[32], unsigned long long a, unsigned long long b) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, %16, %17, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
                 : "l"(a), "l"(b));
}
template <> __device__ __forceinline__ void tgw_mma<48>(float (&d)[32], unsigned long long a, unsigned long long b) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n48k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23}, %24, %25, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23])
                 : "l"(a), "l"(b));
}
template <> __device__ __forceinline__ void tgw_mma<64>(float (&d)[32], unsigned long long a, unsigned long long b) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "l"(a), "l"(b));
}

// A stage's wgmmas (one or two 32-k chunks): per chunk hi s0, hi s1, then (fp32 x) lo s0,
// lo s1; wt is the warpgroup's W tiles of the stage, xt the stage's x.
template <int NB, bool XF32>
__device__ __forceinline__ void tgw_stage_mmas(float (&acc)[32], const unsigned char* wt, const unsigned char* xt, bool two) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        if (h == 1 && !two) break;
#pragma unroll
        for (int s = 0; s < 2; ++s) tgw_mma<NB>(acc, tgw_desc(wt + (2 * h + s) * TGW_XSTEP), tgw_desc(xt + (2 * h + s) * TGW_XSTEP));
        if constexpr (XF32) {
#pragma unroll
            for (int s = 0; s < 2; ++s) tgw_mma<NB>(acc, tgw_desc(wt + (2 * h + s) * TGW_XSTEP), tgw_desc(xt + TG_XPLANE + (2 * h + s) * TGW_XSTEP));
        }
    }
}
#endif

template <bool XF32, int WST, int XST, typename Y>
__device__ __forceinline__ void tiled_gemm_wg(const bf16* __restrict__ W, const void* __restrict__ x, Y* __restrict__ y,
                                              float* __restrict__ ws, unsigned* __restrict__ counters, int M, int N,
                                              int K, int ks, int splits) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    using L = TgLayout<XF32, WST, XST>;
    static_assert(WST >= 3 && XST >= 3, "W two stages ahead and x one: a slot is rewritten after its wgmmas are done");
    static_assert(4 * TGW_XSTEP == TG_XPLANE && 2 * 4 * TGW_XSTEP == L::W, "four k16 steps per plane, two warpgroups of W");
    extern __shared__ __align__(128) unsigned char tg_smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    // The tile and K slice of the mma.sync kernel (its loads are replaced).
    const TgBlock<XF32, WST> tb(W, x, M, N, K, ks);
    const int n0 = tb.n0, m0 = tb.m0, kb = tb.kb, ke = tb.ke, nchunks = tb.nchunks, nst = tb.nst;
    // Batch rows the MMAs cover: the tile's live rows rounded up to 16 (the rest are zeros).
    const int nb = min(TG_BM, (M - m0 + 15) / 16 * 16);

    // Loads and stores are mapped so that the 32 lanes of a warp write 8 rows x 2 pieces x
    // 2 steps: a row's 16-byte core-matrix rows of 8 consecutive rows cover the 32 banks
    // once per step, so every 8-byte cp.async and x store is 2 wavefronts (session 17's
    // mapping, 16 pieces of one row per 16 lanes, hit 2 bank pairs: 8-way conflicts).
    // Lane bits: rr = lane & 7 the row, pb = bit 3 the position pair within a core-matrix
    // half, sb = bit 4 the k16 step (bf16 x: the half instead). A warp instruction reads
    // 32 contiguous bytes of W per row and 64 of x per row.
    const int rr = lane & 7, pb = (lane >> 3) & 1, sb = lane >> 4;
    // W: 128 rows x 16 pieces of 8 bytes per stage, 8 per thread. Piece i of the thread:
    // row 8 warp + rr of warpgroup i & 1, group hh = i >> 1 (chunk h = hh >> 1, core-matrix
    // half hh & 1), so k = 16 hh + 8 pb + 4 sb of the stage: step 2h + sb, pair 2 pb.
    const bf16* wsrc = W + (size_t)(n0 + 8 * warp + rr) * K + kb + 8 * pb + 4 * sb;
    const int wdst = tgw_xoff(sb, 8 * warp + rr, 0, 2 * pb);
    auto load_w = [&](int s) {
        unsigned char* slot = tg_smem + (s % WST) * L::W + wdst;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const int wgi = i & 1, hh = i >> 1;
            const bool ok = s < nst && kb + s * TG_SK + 16 * hh + 8 * pb + 4 * sb < ke && n0 + 64 * wgi + 8 * warp + rr < N;
            unsigned char* dst = slot + wgi * 4 * TGW_XSTEP + (hh >> 1) * 2 * TGW_XSTEP + (hh & 1) * 128;
            cp_async8(dst, ok ? wsrc + (size_t)64 * wgi * K + s * TG_SK + 16 * hh : W, ok);
        }
    };
    // x: row 8 warp + rr of the block, XU units of 16 bytes per thread and stage. fp32: unit
    // u is k = 16 u + 8 pb + 4 sb (4 k of step 2 (u >> 1) + sb, half u & 1); bf16: unit u is
    // k = 32 u + 16 sb + 8 pb (8 k: steps 2u and 2u + 1, half sb).
    constexpr int XU = XF32 ? 4 : 2;
    using XRegs = uint4[XU];
    const int xrow = 8 * warp + rr;
    const unsigned char* xsrc = reinterpret_cast<const unsigned char*>(x) +
                                ((size_t)(m0 + xrow) * K + kb + (XF32 ? 8 * pb + 4 * sb : 16 * sb + 8 * pb)) * (XF32 ? 4 : 2);
    auto xk = [&](int u) { return XF32 ? 16 * u + 8 * pb + 4 * sb : 32 * u + 16 * sb + 8 * pb; };
    XRegs xr;
    auto load_x_regs = [&](int s, XRegs& dst) {
#pragma unroll
        for (int u = 0; u < XU; ++u) {
            dst[u] = make_uint4(0u, 0u, 0u, 0u);
            // zero past M, and past ke by 8-k segments (as the W loads and the skinny kernels)
            if (s < nst && m0 + xrow < M && kb + s * TG_SK + (xk(u) & ~7) < ke)
                dst[u] = __ldg(reinterpret_cast<const uint4*>(xsrc + (size_t)(s * TG_SK + (XF32 ? 16 : 32) * u) * (XF32 ? 4 : 2)));
        }
    };
    auto store_x_regs = [&](int s, const XRegs& src) {
        unsigned char* xs = tg_smem + WST * L::W + (s % XST) * L::X;
#pragma unroll
        for (int u = 0; u < XU; ++u) {
            const uint4 v = src[u];
            if constexpr (XF32) {
                const int off = tgw_xoff(2 * (u >> 1) + sb, xrow, u & 1, 2 * pb);
                const uint2 p0 = split_bf16x2(__uint_as_float(v.x), __uint_as_float(v.y));
                const uint2 p1 = split_bf16x2(__uint_as_float(v.z), __uint_as_float(v.w));
                *reinterpret_cast<uint2*>(xs + off) = make_uint2(p0.x, p1.x);
                *reinterpret_cast<uint2*>(xs + TG_XPLANE + off) = make_uint2(p0.y, p1.y);
            } else {
                *reinterpret_cast<uint2*>(xs + tgw_xoff(2 * u, xrow, sb, 2 * pb)) = make_uint2(v.x, v.y);
                *reinterpret_cast<uint2*>(xs + tgw_xoff(2 * u + 1, xrow, sb, 2 * pb)) = make_uint2(v.z, v.w);
            }
        }
    };

    // W two stages ahead (one cp.async group per stage), x stored one stage ahead and
    // loaded two before that.
    load_w(0);
    cp_async_commit();
    load_w(1);
    cp_async_commit();
    prefetch_rows_early(W, n0, TG_BN, tid, M, N, K, kb, ke, 2 * TG_SK, splits, ks);
    KILN_PDL_ENTER_ROWS(M);
    XRegs xb;
    load_x_regs(0, xr);
    store_x_regs(0, xr);
    load_x_regs(1, xb);
    load_x_regs(2, xr);

    float acc[32];
#pragma unroll
    for (int i = 0; i < 32; ++i) acc[i] = 0.f;
    const int wg = warp >> 2;

    // Stage s: the wgmmas are issued first, then the loads for later stages run beside
    // them, and the warpgroup waits for its wgmmas before the next barrier. So at the
    // barrier of stage s every wgmma of stage s - 1 is done, and its slots (W and x) can
    // take stage s + 2's W and (x being one stage ahead) stage s + 1's x.
    auto stage = [&](int s, XRegs& xs) {
        cp_async_wait<1>();  // stage s's W has landed (s + 1's may be in flight)
        // This thread's cp.async writes (generic proxy) and x stores become visible to the
        // wgmmas (async proxy) after the fence and the barrier.
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        __syncthreads();
        const unsigned char* wt = tg_smem + (s % WST) * L::W + wg * 4 * TGW_XSTEP;
        const unsigned char* xt = tg_smem + WST * L::W + (s % XST) * L::X;
        const bool two = 2 * s + 1 < nchunks;
        asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
        switch (nb) {  // block-uniform
            case 16: tgw_stage_mmas<16, XF32>(acc, wt, xt, two); break;
            case 32: tgw_stage_mmas<32, XF32>(acc, wt, xt, two); break;
            case 48: tgw_stage_mmas<48, XF32>(acc, wt, xt, two); break;
            default: tgw_stage_mmas<64, XF32>(acc, wt, xt, two); break;
        }
        asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
        load_w(s + 2);  // slot of stage s - 1
        cp_async_commit();
        store_x_regs(s + 1, xs);  // slot of stage s - 2
        load_x_regs(s + 3, xs);
        asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    };
    for (int s = 0; s < nst; s += 2) {
        stage(s, xb);
        if (s + 1 < nst) stage(s + 1, xr);
    }
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    cp_async_wait<0>();

    // Epilogue: the partial (or y for one split), then the tile's split sum as the
    // mma.sync kernel's.
    const int wrow = warp * 16 + g;
    float* part = splits == 1 ? nullptr : ws + (size_t)blockIdx.y * M * N;
#pragma unroll
    for (int i = 0; i < 32; ++i) {
        const int n = n0 + wrow + 8 * ((i >> 1) & 1), m = m0 + 8 * (i >> 2) + 2 * t + (i & 1);
        if (n >= N || m >= M) continue;
        const size_t at = (size_t)m * N + n;
        if (part) __stcg(part + at, acc[i]);
        else y[at] = from_f<Y>(acc[i]);
    }
    if (!part || counters == nullptr) return;
    tg_split_sum<Y>(y, ws, counters, M, N, splits, n0, m0);
#else
    __trap();  // only sm_90a has wgmma; the launcher never picks this kernel elsewhere
#endif
}

#define GEMM_TILED_WG(XN, XT, XF, YN, YT)                                                        \
    extern "C" __global__ void __launch_bounds__(TG_THREADS, 2)                                   \
        kiln_gemm_tiled_wg_x##XN##_y##YN(const bf16* W, const XT* x, YT* y, float* ws,            \
                                         unsigned* counters, int M, int N, int K, int ks,         \
                                         int splits) {                                            \
        tiled_gemm_wg<XF, KILN_TILED_W_SLOTS, KILN_TILED_X_SLOTS, YT>(W, x, y, ws, counters, M, N, K, ks, splits); \
    }
GEMM_TILED_WG(f32, float, true, f32, float)
GEMM_TILED_WG(f32, float, true, bf16, bf16)
GEMM_TILED_WG(bf16, bf16, false, f32, float)
GEMM_TILED_WG(bf16, bf16, false, bf16, bf16)

// The stage counts come from registry::TILED_STAGES (KILN_TILED_W_SLOTS, KILN_TILED_X_SLOTS).
#define GEMM_TILED(XN, XT, XF, YN, YT)                                                          \
    static_assert((TgLayout<XF, KILN_TILED_W_SLOTS, KILN_TILED_X_SLOTS>::SMEM == KILN_SMEM_GEMM_TILED_##XN), \
                  "the launcher's shared memory (registry.rs) differs from this layout");       \
    extern "C" __global__ void __launch_bounds__(TG_THREADS, 2)                                   \
        kiln_gemm_tiled_x##XN##_y##YN(const bf16* W, const XT* x, YT* y, float* ws,               \
                                      unsigned* counters, int M, int N, int K, int ks,            \
                                      int splits) {                                               \
        tiled_gemm<XF, KILN_TILED_W_SLOTS, KILN_TILED_X_SLOTS, YT>(W, x, y, ws, counters, M, N, K, ks, splits); \
    }
GEMM_TILED(f32, float, true, f32, float)
GEMM_TILED(f32, float, true, bf16, bf16)
GEMM_TILED(bf16, bf16, false, f32, float)
GEMM_TILED(bf16, bf16, false, bf16, bf16)
