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
#include "gemm_tiled.cuh"

#define TG_ROWB 128   // bytes per shared-memory row: 64 bf16
#define TG_XPLANE (TG_BM * TG_ROWB)  // 8 KB: one stage of x hi (x lo follows for fp32 x)

// Shared memory: WST slots of W stages, then XST slots of x stages. W runs WST - 1 stages
// ahead (cp.async), x XST - 1 (through registers); registry::TILED_STAGES holds the
// counts (passed as defines), and a host model checks the schedule
// (kernels/tiled_pipeline.rs). They are 3 and 3 (96 KB for fp32 x). Measured on the H100 with the same bits: 3 and 2 was
// 0.5-0.9 % faster but spills 36 bytes on sm_100a, 4 and 3 2-6 % and 5 and 2 4-9 % slower
// (W further ahead costs; x one stage ahead or two is about the same).
template <bool XF32, int WST, int XST, int BN = TG_BN> struct TgLayout {
    static constexpr int W = BN * TG_ROWB;  // 16 KB (32 KB for the wide kernel's 256 rows)
    static constexpr int X = TG_XPLANE * (XF32 ? 2 : 1);
    static constexpr int SMEM = WST * W + XST * X;
};

// Byte offset of 16-byte segment `seg` (0..7, k = seg*8..) of W tile row `row`. Odd rows
// swap their two halves: the 8 lanes of one 16-byte-load phase read rows 2q and 2q+1,
// four segments each, which then fall on 32 distinct banks.
__device__ __forceinline__ int tg_off(int row, int seg) { return row * TG_ROWB + ((seg ^ ((row & 1) << 2)) << 4); }

// A block's tile and K slice (TgTile), and a thread's part of the loads. W stage s: 128
// rows x 8 segments, 4 cp.async per thread (zero past N and past ke, as the skinny
// kernels zero their loads); the
// thread's rows are wr0 + 32q, its segment fixed, so one pointer and one shared offset
// serve every stage. x stage s through registers: a unit is one pair of batch rows (g,
// g + 8 of a 16-row tile) over 4 k (fp32: two units per thread, pairs p and p + 16) or 8
// k (bf16: one per thread); 16 neighbouring lanes (fp32) or 8 (bf16) read 256 or 128
// contiguous bytes of a row. A unit's rows are xm + 32q + 8e, its k fixed (xkc).
template <bool XF32, int WST, int BN = TG_BN> struct TgBlock : TgTile<BN, TG_BM> {
    using Tile = TgTile<BN, TG_BM>;
    using Tile::n0; using Tile::m0; using Tile::kb; using Tile::ke; using Tile::nst;
    static constexpr int WQ = BN * 8 / TG_THREADS;
    static constexpr int XU = XF32 ? 2 : 1;  // units per thread per stage
    static constexpr int XK = XF32 ? 4 : 8;  // k per unit
    static constexpr int XPR = TG_SK / XK;   // units per row pair per stage
    static constexpr int XE = XF32 ? 4 : 2;  // bytes per x element
    using XRegs = uint4[XU][2];
    const bf16* W;
    int M, N, K;
    int wr0, wseg, wdst;
    const bf16* wsrc;
    int xpair, xkc, xm;
    const unsigned char* xsrc;

    __device__ __forceinline__ TgBlock(const bf16* W_, const void* x, int M_, int N_, int K_, int ks)
        : Tile(M_, K_, ks), W(W_), M(M_), N(N_), K(K_) {
        const int tid = threadIdx.x;
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
        unsigned char* dst = wsm + (s % WST) * (BN * TG_ROWB) + wdst;
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
    mma_gop(d, a, b);
}

// One 32-k chunk (half H of the stage at `wt`) for the warp's first JT batch tiles of
// 16: every accumulator gets hi step 0, hi step 1, then (fp32 x, bf16 operands) lo step 0, lo step 1,
// the order the skinny kernels use; only the interleaving of independent accumulators
// is free, which leaves every bit unchanged. wo: the lane's W row offset for this half
// (tg_off of W tile 0); xo[s]: its x fragment offset for step s (tg_xoff of batch tile
// 0, half 0), so every shared load is a register plus a constant.
template <int JT, int H, bool XF32, int WT>
__device__ __forceinline__ void tg_chunk(float (&acc)[2][WT][4], const unsigned char* wt, const unsigned char* xt, int wo,
                                         const int (&xo)[2]) {
    uint4 w[WT];
#pragma unroll
    for (int r = 0; r < WT; ++r) w[r] = lds128(wt + wo + r * 8 * TG_ROWB);
    // x fragments per plane (hi, then lo for fp32 x with bf16 operands), batch tile and k16 step.
    constexpr int NP = XF32 && GOP_LO ? 2 : 1;
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
                for (int r = 0; r < WT; ++r) tg_mma(acc[j][r], f[p][j][s], s ? w[r].z : w[r].x, s ? w[r].w : w[r].y);
}

// The chunk with the live-tile count as a template argument (warp-uniform switch), so a
// full tile has no branch between its 8 accumulators' MMA chains and the scheduler can
// interleave them (a branch per tile left 2 chains).
template <int H, bool XF32, int WT>
__device__ __forceinline__ void tg_chunk_live(float (&acc)[2][WT][4], int jt, const unsigned char* wt,
                                              const unsigned char* xt, int wo, const int (&xo)[2]) {
    switch (jt) {
        case 2: tg_chunk<2, H, XF32, WT>(acc, wt, xt, wo, xo); break;
        case 1: tg_chunk<1, H, XF32, WT>(acc, wt, xt, wo, xo); break;
        default: break;
    }
}



// WT: W tiles of 8 rows per warp (4: 128-row blocks, two per SM; 8: the wide kernel's
// 256-row blocks, one per SM). PAIRED: one cp.async wait and block barrier per two stages
// instead of per stage (an experiment, kiln_gemm_tiled_w2_*): the pair's W stages land
// together and the next pair's two W groups go out after the barrier, so W and x need a
// fourth slot each (the pair computed and the pair loaded); each stage's MMAs are the
// same, so the same bits. kernels/tiled_pipeline.rs checks both schedules.
template <bool XF32, int WST, int XST, typename Y, int WT = 4, bool PAIRED = false>
__device__ __forceinline__ void tiled_gemm(const bf16* __restrict__ W, const void* __restrict__ x, Y* __restrict__ y,
                                           float* __restrict__ ws, unsigned* __restrict__ counters, int M, int N,
                                           int K, int ks, int splits) {
    constexpr int BN = 32 * WT;  // 4 warps along W
    using L = TgLayout<XF32, WST, XST, BN>;
    // Stages W and x run ahead: slots - 1, or with pairs slots - 2 (a pair in flight).
    constexpr int WPRE = WST - 1 - PAIRED, XPRE = XST - 1 - PAIRED;
    static_assert(WPRE >= XPRE && (XPRE == 1 || XPRE == 2), "x stored 1 or 2 stages ahead, W at least as far");
    static_assert(!PAIRED || (WPRE == 2 && XPRE == 2), "pairs: W and x two stages ahead");
    extern __shared__ __align__(128) unsigned char tg_smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int wn = warp & 3, wm = warp >> 2;
    using Block = TgBlock<XF32, WST, BN>;
    const Block tb(W, x, M, N, K, ks);
    const int n0 = tb.n0, m0 = tb.m0, kb = tb.kb, ke = tb.ke, nchunks = tb.nchunks, nst = tb.nst;
    const int xpair = tb.xpair, xkc = tb.xkc;
    constexpr int XU = Block::XU;
    // Batch tiles of 16 this warp multiplies (warp-uniform; the rest lie past M).
    const int jt = max(0, min(2, (M - m0 - wm * 32 + 15) / 16));
    auto load_w = [&](int s) { tb.load_w(tg_smem, s); };
    // Where the unit's fragment goes: tg_xoff(pair / 8, h, s, 4 * (pair % 8) + t); the
    // second fp32 unit (pair + 16) is 2 batch tiles further.
    const int xh = xkc >> 5, xft = (xkc >> 3) & 3, xl = (xpair & 7) * 4 + xft;
    const int xdst0 = tg_xoff(xpair >> 3, xh, XF32 ? (xkc >> 2) & 1 : 0, xl);
    const int xdst1 = tg_xoff(xpair >> 3, xh, 1, xl);  // bf16: step 1 of the same unit
    using XRegs = typename Block::XRegs;
    XRegs xr;
    auto load_x_regs = [&](int s, XRegs& dst) { tb.load_x(s, dst); };
    auto store_x_regs = [&](int s, const XRegs& src) {  // registers -> A-fragment order
        unsigned char* xs = tg_smem + WST * L::W + (s % XST) * L::X;
#pragma unroll
        for (int q = 0; q < XU; ++q) {
            const uint4 a = src[q][0], b = src[q][1];  // rows g, g + 8
            if constexpr (XF32) {
                const uint2 p0 = gop_split2(__uint_as_float(a.x), __uint_as_float(a.y)),
                            p1 = gop_split2(__uint_as_float(b.x), __uint_as_float(b.y)),
                            p2 = gop_split2(__uint_as_float(a.z), __uint_as_float(a.w)),
                            p3 = gop_split2(__uint_as_float(b.z), __uint_as_float(b.w));
                const uint4 hv = make_uint4(p0.x, p1.x, p2.x, p3.x), lv = make_uint4(p0.y, p1.y, p2.y, p3.y);
                const int off = xdst0 + q * tg_xoff(2, 0, 0, 0);
                *reinterpret_cast<uint4*>(xs + off) = hv;
                if constexpr (GOP_LO) *reinterpret_cast<uint4*>(xs + TG_XPLANE + off) = lv;
            } else {
                *reinterpret_cast<uint4*>(xs + xdst0) = make_uint4(a.x, b.x, a.y, b.y);
                *reinterpret_cast<uint4*>(xs + xdst1) = make_uint4(a.z, b.z, a.w, b.w);
            }
        }
    };
    // The lane's fragment offsets (tg_chunk).
    const int wo[2] = {tg_off(wn * 8 * WT + g, t), tg_off(wn * 8 * WT + g, 4 + t)};
    const int xo[2] = {tg_xoff(wm * 2, 0, 0, lane), tg_xoff(wm * 2, 0, 1, lane)};

    // Prologue: weights are never written, so their first WPRE stages load before the
    // predecessor kernel finishes (PDL), one cp.async group each; x only after.
#pragma unroll
    for (int i = 0; i < WPRE; ++i) {
        load_w(i);
        cp_async_commit();
    }
    // One thread per W row of the tile: the row's next columns into L2.
    prefetch_rows_early(W, n0, BN, tid, M, N, K, kb, ke, WPRE * TG_SK, splits, ks);
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

    float acc[2][WT][4];  // [batch tile of 16][W tile of 8][fragment]
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int r = 0; r < WT; ++r)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[j][r][e] = 0.f;

    // Stage s; `xs` holds stage s + XPRE's x, and takes stage s + XPRE + 2's.
    auto stage = [&](int s, XRegs& xs) {
        if (!PAIRED) {
            cp_async_wait<WPRE - 1>();  // stage s's W has landed (later ones may be in flight)
            __syncthreads();            // ... for every thread; and stage s - 1's slots are free
            load_w(s + WPRE);
            cp_async_commit();
        } else if ((s & 1) == 0) {
            cp_async_wait<0>();  // stages s and s + 1's W have landed
            __syncthreads();     // ... for every thread; stages s - 2 and s - 1's slots are free
            load_w(s + WPRE);
            cp_async_commit();
            load_w(s + WPRE + 1);
            cp_async_commit();
        }
        store_x_regs(s + XPRE, xs);  // x slot of stage s - 1 (pairs: s - 2), free since the barrier
        load_x_regs(s + XPRE + 2, xs);
        const unsigned char* wt = tg_smem + (s % WST) * L::W;
        const unsigned char* xt = tg_smem + WST * L::W + (s % XST) * L::X;
        tg_chunk_live<0, XF32, WT>(acc, jt, wt, xt, wo[0], xo);
        if (2 * s + 1 < nchunks) tg_chunk_live<1, XF32, WT>(acc, jt, wt, xt, wo[1], xo);
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
    // 8*(e/2), W row n0 + wn*8*WT + r*8 + 2t + e%2. One split: straight to y; else the
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
        for (int r = 0; r < WT; ++r)
#pragma unroll
            for (int e = 0; e < 4; e += 2) {
                const int m = m0 + wm * 32 + j * 16 + g + 8 * (e >> 1), n = n0 + wn * 8 * WT + r * 8 + 2 * t;
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
    tg_split_sum<Y, BN>(y, ws, counters, M, N, splits, n0, m0);
}

// The stage counts come from registry::TILED_STAGES (KILN_TILED_W_SLOTS, KILN_TILED_X_SLOTS)
// and, for the paired kernel, registry::TILED_PAIRED_SLOTS (KILN_TILED_PAIRED_*_SLOTS).
// PRE: the entry's name stem; WT: W tiles per warp (the block has 32 * WT rows); BLOCKS:
// blocks per SM the registers are held to; SMEM_DEF: the registry's define for this width.
#define GEMM_TILED_ENTRY(PRE, WT, BLOCKS, SMEM_DEF, WS, XS, PAIRED, XN, XT, XF, YN, YT)             \
    static_assert((TgLayout<XF, WS, XS, 32 * WT>::SMEM == SMEM_DEF##_##XN),                      \
                  "the launcher's shared memory (registry.rs) differs from this layout");       \
    extern "C" __global__ void __launch_bounds__(TG_THREADS, BLOCKS)                              \
        PRE##_x##XN##_y##YN(const bf16* W, const XT* x, YT* y, float* ws, unsigned* counters,    \
                            int M, int N, int K, int ks, int splits) {                            \
        tiled_gemm<XF, WS, XS, YT, WT, PAIRED>(W, x, y, ws, counters, M, N, K, ks, splits);      \
    }
#define GEMM_TILED_ALL_SLOTS(PRE, WT, BLOCKS, SMEM_DEF, WS, XS, PAIRED)                                  \
    GEMM_TILED_ENTRY(PRE, WT, BLOCKS, SMEM_DEF, WS, XS, PAIRED, f32, float, true, f32, float)      \
    GEMM_TILED_ENTRY(PRE, WT, BLOCKS, SMEM_DEF, WS, XS, PAIRED, f32, float, true, bf16, bf16)      \
    GEMM_TILED_ENTRY(PRE, WT, BLOCKS, SMEM_DEF, WS, XS, PAIRED, bf16, bf16, false, f32, float)     \
    GEMM_TILED_ENTRY(PRE, WT, BLOCKS, SMEM_DEF, WS, XS, PAIRED, bf16, bf16, false, bf16, bf16)
#define GEMM_TILED_ALL(PRE, WT, BLOCKS, SMEM_DEF) \
    GEMM_TILED_ALL_SLOTS(PRE, WT, BLOCKS, SMEM_DEF, KILN_TILED_W_SLOTS, KILN_TILED_X_SLOTS, false)
// 128 W rows per block, two blocks per SM.
GEMM_TILED_ALL(kiln_gemm_tiled, 4, 2, KILN_SMEM_GEMM_TILED)
// The wide kernel (session 22, `KILN_GEMM_TILED_WIDE_MIN_M`): 256 W rows per block, 64 per
// warp (8 W tiles), one block per SM with up to 255 registers. Per warp and 32-k chunk 8 W
// and 8 x fragment loads feed 64 MMAs, against 4 + 8 for 32 (shared-memory reads per MMA
// 0.375 -> 0.25), and each block splits its x once per 256 W rows instead of 128: the
// shared-memory traffic and the conversions that bound the 128-row kernel at batch 128-256
// (docs/kernels.md). The same MMAs per accumulator in the same order: the same bits.
GEMM_TILED_ALL(kiln_gemm_tiled_w, 8, 1, KILN_SMEM_GEMM_TILED_WIDE)
// The wide kernel with one wait and barrier per two stages (session 26, `KILN_GEMM_TILED_PAIRED=1`,
// an experiment): four W and four x slots (192 KB for fp32 x), the same bits.
GEMM_TILED_ALL_SLOTS(kiln_gemm_tiled_w2, 8, 1, KILN_SMEM_GEMM_TILED_WIDE2, KILN_TILED_PAIRED_W_SLOTS, KILN_TILED_PAIRED_X_SLOTS, true)
