// Skinny GEMM for decode: y[M][N] = x[M][K] . W[N][K]^T, M = 1..64.
//
// kiln_gemm_x{f32,bf16}_y{f32,bf16}_m{8,16,32,64}(
//     const bf16* W, const X* x, Y* y, float* ws, unsigned* counters,
//     int M, int N, int K, int ks, int splits, int w_packed)
//   W [N][K] bf16 row-major (as Hugging Face stores a Linear weight), or with w_packed = 1
//   in the packed layout (common.cuh; N % 16 == 0, K % 32 == 0) that kiln_pack_weight makes:
//   the same bits, a warp's loads contiguous; x [M][K] (fp32 or
//   bf16, row stride K); y [M][N] (fp32 or bf16, row stride N). K % 8 == 0, pointers
//   16-byte aligned. The _mNN suffix is the largest M the variant takes (pick the
//   smallest that covers M; rows past M are neither read nor written).
//   Split-K: blockIdx.y = s covers k in [s*ks, min(K, (s+1)*ks)), ks % 32 == 0,
//   splits = ceil(K / ks). With splits > 1 each block writes its partial sums to
//   ws [splits][M][N] fp32, and the last block of a row group to arrive (counted in
//   counters[blockIdx.x], which must be zero before the first launch and is left zero)
//   adds the partials in split order and writes y. The result is therefore
//   deterministic, and row m of y does not depend on M or on the other rows: the
//   arithmetic for one output is fixed by (K, ks) alone. counters == NULL (splits > 1):
//   the partials alone, y untouched; their consumer adds them in the same order
//   (kiln_add_rmsnorm_parts, norm.cu), so it sees the same bits y would have had
//   without the kernel's tail (a fence, a counter and the last block's sum).
//   grid (ceil(N / (64 * RW)), splits), block 128 (4 warps), RW = 1 for _m8/_m16 and
//   2 for _m32/_m64.
//
// kiln_pack_weight(const bf16* W, bf16* out, int N, int K)
//   out = W [N][K] (row-major, N % 16 == 0, K % 32 == 0) in the packed layout, once per
//   weight at load (weight_pack::pack is its CPU twin). Any grid, block 256.
//
// How: each warp owns RW*16 rows of W and streams them once with 16-byte
// ld.global.nc loads (P chunks of 32 k in flight per row pair). Products use
// mma.sync m16n8k16 (bf16 in, fp32 accumulate) with W as the A operand (16 rows) and
// x as the B operand (8 batch rows per tile). The k order inside each 32-wide chunk
// is permuted identically for A and B so that one 16-byte load per lane of W row r
// holds exactly the A fragments of two k16 steps, and x needs one 8-element load per
// lane and batch tile. fp32 x is split into bf16 hi + lo parts (two MMAs), which keeps
// about 16 mantissa bits of x: near-fp32 accuracy at no extra weight traffic. In a plan
// built with KILN_GEMM_F16=1, W and 16-bit x are fp16 and fp32 x is rounded to fp16, one
// MMA per product (common.cuh, `gop`; docs/numerics.md).
#include "common.cuh"

using namespace kiln;

#define GEMM_THREADS 128  // 4 warps (the launcher: GEMM_REG_THREADS, cuda/kernels/gemm.rs)

__device__ __forceinline__ uint4 ld_stream(const bf16* p) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    return r;
}

// The skinny kernels' chunk product (W as the A operand): a lane's 16 bytes of W rows g
// (a) and g + 8 (b) hold the A fragments of a 32-k chunk's two k16 steps (k order permuted
// identically in x), and x (8 bf16 of one batch row) their B fragments: step 0, then 1.
__device__ __forceinline__ void mma_w_x(float* acc, const uint4& a, const uint4& b, const uint4& x) {
    const unsigned s0[4] = {a.x, b.x, a.y, b.y}, s1[4] = {a.z, b.z, a.w, b.w};
    const unsigned x01[2] = {x.x, x.y}, x23[2] = {x.z, x.w};
    mma_gop(acc, s0, x01);
    mma_gop(acc, s1, x23);
}

// One chunk for JT batch tiles and RW W tiles: every accumulator gets x hi's two steps,
// then (fp32 x with bf16 operands) x lo's two, the order every decode GEMM kernel uses
// (gemm_tiled.cu too), so their bits agree.
// The accumulators are independent, so the scheduler may interleave their chains.
template <int JT, int RW, int NT, bool XF32>
__device__ __forceinline__ void mma_chunk_tiles(float (&acc)[RW][NT][4], const uint4 (&w)[RW][2], const uint4 (&hi)[JT],
                                                const uint4 (&lo)[JT]) {
#pragma unroll
    for (int j = 0; j < JT; ++j)
#pragma unroll
        for (int r = 0; r < RW; ++r) mma_w_x(acc[r][j], w[r][0], w[r][1], hi[j]);
    if constexpr (XF32 && GOP_LO) {
#pragma unroll
        for (int j = 0; j < JT; ++j)
#pragma unroll
            for (int r = 0; r < RW; ++r) mma_w_x(acc[r][j], w[r][0], w[r][1], lo[j]);
    }
}

// The lane's 8 consecutive k of batch row m as loaded (fp32: two float4; bf16: one uint4
// in .a), zeros when !ok; x_frags turns them into the MMA's bf16 pairs. The register
// kernel loads a chunk's x one chunk ahead, so the L2 round trip overlaps the previous
// chunk's MMAs instead of sitting before its own.
template <bool XF32> struct XRaw { float4 a, b; };
template <bool XF32>
__device__ __forceinline__ XRaw<XF32> load_x_raw(const void* xv, int m, int K, int k, bool ok) {
    XRaw<XF32> r;
    r.a = r.b = make_float4(0.f, 0.f, 0.f, 0.f);
    if (!ok) return r;
    if constexpr (XF32) {
        const float* p = reinterpret_cast<const float*>(xv) + (size_t)m * K + k;
        r.a = __ldg(reinterpret_cast<const float4*>(p));
        r.b = __ldg(reinterpret_cast<const float4*>(p + 4));
    } else {
        const bf16* p = reinterpret_cast<const bf16*>(xv) + (size_t)m * K + k;
        r.a = __ldg(reinterpret_cast<const float4*>(p));  // 8 bf16 as raw bits
    }
    return r;
}
// load_x's conversion of a raw load (the same bits: zeros give zero pairs, as load_x's
// !ok path).
template <bool XF32>
__device__ __forceinline__ void x_frags(const XRaw<XF32>& r, unsigned* hi, unsigned* lo) {
    if constexpr (XF32) {
        const float v[8] = {r.a.x, r.a.y, r.a.z, r.a.w, r.b.x, r.b.y, r.b.z, r.b.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            hi[i] = pack_gop2(v[2 * i], v[2 * i + 1]);
            lo[i] = gop_lo2(v[2 * i], v[2 * i + 1], hi[i]);
        }
    } else {
        hi[0] = __float_as_uint(r.a.x); hi[1] = __float_as_uint(r.a.y); hi[2] = __float_as_uint(r.a.z); hi[3] = __float_as_uint(r.a.w);
    }
}

// x fragment of one batch tile for the lane: 8 consecutive k of row m, as bf16 pairs.
template <bool XF32>
__device__ __forceinline__ void load_x(const void* xv, int m, int K, int k, bool ok, unsigned* hi,
                                       unsigned* lo) {
    if (!ok) {
#pragma unroll
        for (int i = 0; i < 4; ++i) hi[i] = lo[i] = 0u;
        return;
    }
    if constexpr (XF32) {
        const float* p = reinterpret_cast<const float*>(xv) + (size_t)m * K + k;
        const float4 a = __ldg(reinterpret_cast<const float4*>(p));
        const float4 b = __ldg(reinterpret_cast<const float4*>(p + 4));
        const float v[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            hi[i] = pack_gop2(v[2 * i], v[2 * i + 1]);
            lo[i] = gop_lo2(v[2 * i], v[2 * i + 1], hi[i]);
        }
    } else {
        const bf16* p = reinterpret_cast<const bf16*>(xv) + (size_t)m * K + k;
        const uint4 u = __ldg(reinterpret_cast<const uint4*>(p));
        hi[0] = u.x; hi[1] = u.y; hi[2] = u.z; hi[3] = u.w;
    }
}

template <typename Y> __device__ __forceinline__ void store_y(Y* y, size_t i, float v);
template <> __device__ __forceinline__ void store_y<float>(float* y, size_t i, float v) { y[i] = v; }
template <> __device__ __forceinline__ void store_y<bf16>(bf16* y, size_t i, float v) {
    y[i] = __float2bfloat16_rn(v);
}

template <int RB, int THREADS, int IN>
__device__ __forceinline__ void reduce_store_f4(float* __restrict__ yv, const float* __restrict__ ws, int M,
                                                   int N, int splits, int nb) {
    // Every (m, 4 consecutive n) group: sum the splits in order, IN partials in flight
    // (the last batch predicated, not one partial at a time): 13 splits take 2 dependent
    // L2 round trips with IN = 8, 1 with 16.
    const size_t stride = (size_t)M * N;
    for (int i = threadIdx.x; i < (RB / 4) * M; i += THREADS) {
        const int n = nb + (i % (RB / 4)) * 4, m = i / (RB / 4);
        if (n >= N) continue;
        const float* p = ws + (size_t)m * N + n;
        float4 s = make_float4(0.f, 0.f, 0.f, 0.f);
        for (int sp = 0; sp < splits; sp += IN) {
            float4 a[IN];
#pragma unroll
            for (int u = 0; u < IN; ++u)
                a[u] = sp + u < splits ? __ldcg(reinterpret_cast<const float4*>(p + (size_t)(sp + u) * stride)) : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
            for (int u = 0; u < IN; ++u)
                if (sp + u < splits) {
                    s.x += a[u].x; s.y += a[u].y; s.z += a[u].z; s.w += a[u].w;
                }
        }
        yv[(size_t)m * N + n] = s.x;
        yv[(size_t)m * N + n + 1] = s.y;
        yv[(size_t)m * N + n + 2] = s.z;
        yv[(size_t)m * N + n + 3] = s.w;
    }
}

// The last block of a row group: y rows [nb, nb + RB) = the sum of the splits'
// partials in split order from 0 (8 partials in flight per output; the order of the
// additions, and so the bits, do not depend on how the loads are batched).
// IN: partials in flight per output group. The shared-x kernel takes 16; the register
// kernel KILN_GEMM_REDUCE_IN, 8 (a build knob so one binary can compare them). 16 was
// the default in session 11, meant to take one L2 round trip off the 13-split sums at
// the tail of every out/o/down launch, but the H100 step was slower with it (session 12:
// batch 1 4.52 against 4.43 ms, 8 5.24 against 5.08; bit-identical). The additions, and
// so the bits, do not depend on IN.
#ifndef KILN_GEMM_REDUCE_IN
#define KILN_GEMM_REDUCE_IN 8
#endif
template <int RB, int THREADS, typename Y, int IN>
__device__ __forceinline__ void reduce_splits(Y* __restrict__ y, const float* __restrict__ ws, int M, int N,
                                              int splits, int nb) {
    if (sizeof(Y) == 4 && (N & 3) == 0 && (reinterpret_cast<size_t>(ws) & 15) == 0) {
        reduce_store_f4<RB, THREADS, IN>(reinterpret_cast<float*>(y), ws, M, N, splits, nb);
        return;
    }
    const size_t stride = (size_t)M * N;
    for (int i = threadIdx.x; i < RB * M; i += THREADS) {
        const int n = nb + i % RB, m = i / RB;
        if (n >= N) continue;
        const float* p = ws + (size_t)m * N + n;
        float s = 0.f;
        int sp = 0;
        for (; sp + 8 <= splits; sp += 8) {
            float a[8];
#pragma unroll
            for (int u = 0; u < 8; ++u) a[u] = __ldcg(p + (size_t)(sp + u) * stride);
#pragma unroll
            for (int u = 0; u < 8; ++u) s += a[u];
        }
        for (; sp < splits; ++sp) s += __ldcg(p + (size_t)sp * stride);
        store_y<Y>(y, (size_t)m * N + n, s);
    }
}

// Writes the accumulators (directly, or as split-K partials with the last block of the
// row group adding them in split order). Accumulator e of tile (r, j): row
// n = row0 + r*16 + g + 8*(e/2), batch m = j*8 + 2t + (e%2).
template <int RW, int NT, int RB, int THREADS, typename Y>
__device__ __forceinline__ void gemm_epilogue(const float (&acc)[RW][NT][4], int row0, int g, int t, Y* __restrict__ y,
                                              float* __restrict__ ws, unsigned* __restrict__ counters, int M,
                                              int N, int splits) {
    if (splits == 1) {
#pragma unroll
        for (int r = 0; r < RW; ++r)
#pragma unroll
            for (int j = 0; j < NT; ++j)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int n = row0 + r * 16 + g + 8 * (e >> 1), m = j * 8 + 2 * t + (e & 1);
                    if (n < N && m < M) store_y<Y>(y, (size_t)m * N + n, acc[r][j][e]);
                }
        return;
    }
    float* part = ws + (size_t)blockIdx.y * M * N;
#pragma unroll
    for (int r = 0; r < RW; ++r)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int n = row0 + r * 16 + g + 8 * (e >> 1), m = j * 8 + 2 * t + (e & 1);
                if (n < N && m < M) __stcg(part + (size_t)m * N + n, acc[r][j][e]);
            }
    if (counters == nullptr) return;  // partials only: the consumer sums them
    if (!block_arrives_last(&counters[blockIdx.x], (unsigned)splits)) return;
    reduce_splits<RB, THREADS, Y, KILN_GEMM_REDUCE_IN>(y, ws, M, N, splits, blockIdx.x * RB);
    if (threadIdx.x == 0) counters[blockIdx.x] = 0u;
}

// Chunks of 32 k each warp of the m8/m16 register kernels keeps in flight (a build knob,
// KILN_GEMM_REG_P, default 4): at batch 1 the out/o/down launches stream at 2.2-2.4 TB/s
// with 13 splits (~16 warps per SM), and more splits (24 warps per SM) were faster there
// (session 12: batch 1 -0.125 ms) but change the sums, and so every row's bits, and cost
// batches 32-128 0.4 ms. Deeper prefetch puts the same bytes in flight without changing a
// split: the MMA sequence, and so the bits, do not depend on P.
#ifndef KILN_GEMM_REG_P
#define KILN_GEMM_REG_P 4
#endif
// The m8 register kernel's x two chunks ahead (session 15; ncu, session 13: 71 % of its
// stall samples at batch 1 sat on the conversion of x, each chunk's x load an L2 round
// trip in the warp's chain). The default since session 17 (H100, two runs each, logits
// bit-identical: batch 1 / 4 -1.4 %, 8 unchanged; with the packed weights batch 1 3.99
// against 4.10 ms). A build knob: KILN_GEMM_X_AHEAD=0 (kiln-build) loads each chunk's x
// at the chunk. The MMAs see the same values either way.
#ifndef KILN_GEMM_X_AHEAD
#define KILN_GEMM_X_AHEAD 1
#endif
template <int NT, bool XF32, typename Y>
__device__ __forceinline__ void skinny_gemm(const bf16* __restrict__ W, const void* __restrict__ x,
                                            Y* __restrict__ y, float* __restrict__ ws,
                                            unsigned* __restrict__ counters, int M, int N, int K,
                                            int ks, int splits, int w_packed) {
    constexpr int RW = NT >= 4 ? 2 : 1;      // 16-row tiles of W per warp
    constexpr int P = RW == 1 ? KILN_GEMM_REG_P : 2;  // chunks of 32 k in flight
    constexpr int RB = GEMM_THREADS / 32 * 16 * RW;  // rows per block
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int row0 = blockIdx.x * RB + warp * 16 * RW;
    const int kb = blockIdx.y * ks;
    const int ke = min(K, kb + ks);
    const int nchunks = ke > kb ? (ke - kb + 31) / 32 : 0;

    const bf16* wp[RW][2];
    bool wok[RW][2];
#pragma unroll
    for (int r = 0; r < RW; ++r)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = row0 + r * 16 + h * 8 + g;
            wok[r][h] = row < N;
            wp[r][h] = w_lane_ptr(W, w_packed, wok[r][h] ? row : 0, K, kb, t);
        }

    const int cstep = w_chunk_step(w_packed);
    float acc[RW][NT][4];
#pragma unroll
    for (int r = 0; r < RW; ++r)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[r][j][e] = 0.f;

    uint4 wr[P][RW][2];
    auto load_w = [&](uint4(&buf)[RW][2], int c) {
        const int k = kb + c * 32 + t * 8;
        const bool kok = c < nchunks && k < ke;
#pragma unroll
        for (int r = 0; r < RW; ++r)
#pragma unroll
            for (int h = 0; h < 2; ++h)
                buf[r][h] = (kok && wok[r][h]) ? ld_stream(wp[r][h] + c * cstep) : make_uint4(0, 0, 0, 0);
    };
#pragma unroll
    for (int p = 0; p < P; ++p) load_w(wr[p], p);
    prefetch_rows_early(W, row0, RW * 16, lane, M, N, K, kb, ke, P * 32, splits, ks, w_packed);
    // Weights are never written: their first loads may overlap the predecessor kernel.
    KILN_PDL_ENTER_ROWS(M);

    // KILN_GEMM_X_AHEAD (the m8 variant only: m16 with bf16 x would spill): chunk c's x was
    // loaded two chunks earlier into buffer c & 1 (P is even); once it is converted, chunk
    // c + 2's goes there, so an L2 round trip has a whole chunk to land (ptxas sinks the
    // load below the chunk's MMAs; one chunk ahead left it right before its use). The same
    // values as load_x's at the chunk.
    constexpr bool AHEAD = KILN_GEMM_X_AHEAD != 0 && NT == 1;
    static_assert(!AHEAD || P % 2 == 0, "two x buffers alternate by chunk parity");
    XRaw<XF32> xbuf[2];
    auto load_xs = [&](int c, XRaw<XF32>& dst) {
        const int k = kb + c * 32 + t * 8;
        dst = load_x_raw<XF32>(x, g, K, k, c < nchunks && k < ke && g < M);
    };
    if constexpr (AHEAD) {
        load_xs(0, xbuf[0]);
        load_xs(1, xbuf[1]);
    }
    for (int c0 = 0; c0 < nchunks; c0 += P) {
#pragma unroll
        for (int p = 0; p < P; ++p) {
            const int c = c0 + p;
            if (c < nchunks) {
                const int k = kb + c * 32 + t * 8;
                const bool kok = k < ke;
                // This chunk's W leaves its buffer, so the loads P chunks ahead go out
                // before this chunk's x loads and MMAs, not after them.
                uint4 cur[RW][2];
#pragma unroll
                for (int r = 0; r < RW; ++r) cur[r][0] = wr[p][r][0], cur[r][1] = wr[p][r][1];
                load_w(wr[p], c + P);
#pragma unroll
                for (int j = 0; j < NT; ++j) {
                    const int m = j * 8 + g;
                    unsigned hi[4], lo[4];
                    if constexpr (AHEAD) {
                        x_frags<XF32>(xbuf[p & 1], hi, lo);
                        load_xs(c + 2, xbuf[p & 1]);
                    } else {
                        load_x<XF32>(x, m, K, k, kok && m < M, hi, lo);
                    }
#pragma unroll
                    for (int r = 0; r < RW; ++r) {
                        mma_w_x(acc[r][j], cur[r][0], cur[r][1], make_uint4(hi[0], hi[1], hi[2], hi[3]));
                        if constexpr (XF32 && GOP_LO) mma_w_x(acc[r][j], cur[r][0], cur[r][1], make_uint4(lo[0], lo[1], lo[2], lo[3]));
                    }
                }
            }
        }
    }

    gemm_epilogue<RW, NT, RB, GEMM_THREADS, Y>(acc, row0, g, t, y, ws, counters, M, N, splits);
}

// ---------------------------------------------------------------------------------
#define GS_THREADS 256

// ---------------------------------------------------------------------------------
// Shared-x variant (the _sx kernels; any M up to the variant's): x is converted once per
// block into bf16 hi/lo pairs in shared memory (64-k slabs, two slots, the next slab
// prefetched into registers while the current one is multiplied), so the warps only
// load ready fragments; batch tiles past ceil(M/8) are skipped at run time; the split-K
// reduction loads all partials of 4 outputs at once (float4, 8 splits in flight). The
// W stream, k order and MMA sequence of every accumulator, and the order of the
// split sum, are those of skinny_gemm: both variants give bit-identical results for
// one plan. grid (ceil(N/256), splits), block 256, dynamic shared memory
// 2 * NTM*8 * V2_LDB bytes (KILN_SMEM_GEMM_SX_*, from the registry).
#define V2_SK 64
template <bool XF32> struct V2Ldb { static constexpr int v = XF32 ? 320 : 192; };  // bytes, = 64 mod 128

template <int RW, int NT, int RB, int THREADS, typename Y>
__device__ __forceinline__ void gemm_epilogue_v2(const float (&acc)[RW][NT][4], int row0, int g, int t,
                                                 Y* __restrict__ y, float* __restrict__ ws,
                                                 unsigned* __restrict__ counters, int M, int N, int splits,
                                                 int jt) {
    if (splits == 1) {
#pragma unroll
        for (int r = 0; r < RW; ++r)
#pragma unroll
            for (int j = 0; j < NT; ++j)
                if (j < jt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int n = row0 + r * 16 + g + 8 * (e >> 1), m = j * 8 + 2 * t + (e & 1);
                        if (n < N && m < M) store_y<Y>(y, (size_t)m * N + n, acc[r][j][e]);
                    }
        return;
    }
    float* part = ws + (size_t)blockIdx.y * M * N;
#pragma unroll
    for (int r = 0; r < RW; ++r)
#pragma unroll
        for (int j = 0; j < NT; ++j)
            if (j < jt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int n = row0 + r * 16 + g + 8 * (e >> 1), m = j * 8 + 2 * t + (e & 1);
                    if (n < N && m < M) __stcg(part + (size_t)m * N + n, acc[r][j][e]);
                }
    if (counters == nullptr) return;  // partials only: the consumer sums them
    if (!block_arrives_last(&counters[blockIdx.x], (unsigned)splits)) return;
    reduce_splits<RB, THREADS, Y, 16>(y, ws, M, N, splits, blockIdx.x * RB);
    if (threadIdx.x == 0) counters[blockIdx.x] = 0u;
}

// One 32-k chunk (half `h` of the x slab at `slot`) of the shared-x kernel for its first
// JT batch tiles: per accumulator hi step 0, hi step 1, then (fp32 x) lo step 0, lo step 1,
// as skinny_gemm; only independent accumulators interleave (the same bits).
// GUARD: the slot holds only `rows` rows (whole-split staging); the others are zeros.
template <int JT, int NTM, int LDB, bool XF32, bool GUARD>
__device__ __forceinline__ void sx_chunk(float (&acc)[2][NTM][4], const unsigned char* slot, const uint4 (&w)[2][2],
                                         int g, int t, int h, int rows) {
    uint4 hi[JT], lo[JT];
#pragma unroll
    for (int j = 0; j < JT; ++j) {
        const unsigned char* xp = slot + (size_t)(j * 8 + g) * LDB + h * 64 + t * 16;
        if (!GUARD || j * 8 + g < rows) {
            hi[j] = *reinterpret_cast<const uint4*>(xp);
            if constexpr (XF32 && GOP_LO) lo[j] = *reinterpret_cast<const uint4*>(xp + 128);
        } else {
            hi[j] = lo[j] = make_uint4(0u, 0u, 0u, 0u);
        }
    }
    mma_chunk_tiles<JT, 2, NTM, XF32>(acc, w, hi, lo);
}

// sx_chunk for JT = jt, found among JT = 1..J (nothing for jt = 0).
template <int J, int NTM, int LDB, bool XF32, bool GUARD = false>
__device__ __forceinline__ void sx_chunk_live(int jt, float (&acc)[2][NTM][4], const unsigned char* slot,
                                              const uint4 (&w)[2][2], int g, int t, int h, int rows = 0) {
    if constexpr (J >= 1) {
        if (jt == J) sx_chunk<J, NTM, LDB, XF32, GUARD>(acc, slot, w, g, t, h, rows);
        else sx_chunk_live<J - 1, NTM, LDB, XF32, GUARD>(jt, acc, slot, w, g, t, h, rows);
    }
}

// Whole-split staging of the m16 shared-x kernel: x for the block's entire K slice in
// shared memory (slab st, row m at st * M * LDB + m * LDB; M rows, not the tile's 8 or
// 16), written once, so the main loop has no barrier: at batch 1 the per-slab barrier of
// the two-slot ring held 8 warps to the slowest one's W load (25 % of the stall samples
// of gate_up, ncu, session 13). Used when it fits KILN_GEMM_SXW_MAX_BYTES (the launcher's
// rule, registry::gemm_sxw_smem): every qkvz / gate_up / qgkv launch up to 16 rows and
// the lm_head's up to 8. The fragments, and so the bits, are the ring's.
#ifndef KILN_GEMM_SXW_MAX_BYTES
#define KILN_GEMM_SXW_MAX_BYTES 0
#endif
// W chunks of 32 k in flight per warp in the whole-split loop (a build knob; the ring
// keeps 2, its slots' count).
#ifndef KILN_GEMM_SXW_P
#define KILN_GEMM_SXW_P 2
#endif
template <bool XF32>
__device__ __forceinline__ bool sxw_fits(int M, int ks) {
    return (long long)((ks + V2_SK - 1) / V2_SK) * M * V2Ldb<XF32>::v <= KILN_GEMM_SXW_MAX_BYTES;
}

// One 8-element x vector of the shared-x kernels: loaded (fp32 or bf16; zeros when !ok)
// into R registers, then stored at `row` as bf16 hi (and, for fp32 x, lo at +128 bytes).
template <bool XF32> struct SxVec { static constexpr int R = XF32 ? 8 : 4; };
template <bool XF32>
__device__ __forceinline__ void sx_load_vec(const void* x, int m, int K, int k, bool ok, unsigned (&xr)[SxVec<XF32>::R]) {
    if constexpr (XF32) {
        float4 a = make_float4(0.f, 0.f, 0.f, 0.f), b = a;
        if (ok) {
            const float* p = reinterpret_cast<const float*>(x) + (size_t)m * K + k;
            a = __ldg(reinterpret_cast<const float4*>(p));
            b = __ldg(reinterpret_cast<const float4*>(p + 4));
        }
        xr[0] = __float_as_uint(a.x); xr[1] = __float_as_uint(a.y);
        xr[2] = __float_as_uint(a.z); xr[3] = __float_as_uint(a.w);
        xr[4] = __float_as_uint(b.x); xr[5] = __float_as_uint(b.y);
        xr[6] = __float_as_uint(b.z); xr[7] = __float_as_uint(b.w);
    } else {
        uint4 u = make_uint4(0, 0, 0, 0);
        if (ok) u = __ldg(reinterpret_cast<const uint4*>(reinterpret_cast<const bf16*>(x) + (size_t)m * K + k));
        xr[0] = u.x; xr[1] = u.y; xr[2] = u.z; xr[3] = u.w;
    }
}
template <bool XF32>
__device__ __forceinline__ void sx_store_vec(unsigned char* row, const unsigned (&xr)[SxVec<XF32>::R]) {
    if constexpr (XF32) {
        unsigned hi[4], lo[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float v0 = __uint_as_float(xr[2 * i]), v1 = __uint_as_float(xr[2 * i + 1]);
            hi[i] = pack_gop2(v0, v1);
            lo[i] = gop_lo2(v0, v1, hi[i]);
        }
        *reinterpret_cast<uint4*>(row) = make_uint4(hi[0], hi[1], hi[2], hi[3]);
        if constexpr (GOP_LO) *reinterpret_cast<uint4*>(row + 128) = make_uint4(lo[0], lo[1], lo[2], lo[3]);
    } else {
        *reinterpret_cast<uint4*>(row) = make_uint4(xr[0], xr[1], xr[2], xr[3]);
    }
}

// The whole-split main loop (see sxw_fits): stage x for slabs 0..nslab-1 of M rows (four
// vectors in flight per thread), one barrier, then every chunk with its W loaded
// KILN_GEMM_SXW_P chunks ahead and no barrier. `wr` holds chunks 0 and 1 (loaded before
// the PDL wait); the accumulators get the ring's MMAs in the ring's order.
template <int NTM, bool XF32, typename LoadW>
__device__ __forceinline__ void sxw_loop(uint4 (&wr)[2][2][2], LoadW& load_w, float (&acc)[2][NTM][4], int M, int K,
                                         int kb, int ke, int nchunks, int nslab, int jt, const void* x, int g, int t) {
    constexpr int LDB = V2Ldb<XF32>::v, PW = KILN_GEMM_SXW_P;
    static_assert(PW >= 2, "the whole-split loop keeps at least the ring's two chunks in flight");
    extern __shared__ __align__(16) unsigned char gs_smem[];
    const int per_row = nslab * 8, vecs = M * per_row, slab = M * LDB;
    for (int v0 = threadIdx.x; v0 < vecs; v0 += 4 * GS_THREADS) {
        unsigned xr[4][SxVec<XF32>::R];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const int v = v0 + u * GS_THREADS, m = v / per_row, r = v - m * per_row;
            const int k = kb + (r >> 3) * V2_SK + (r & 7) * 8;
            sx_load_vec<XF32>(x, m, K, k, v < vecs && k < ke, xr[u]);
        }
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const int v = v0 + u * GS_THREADS, m = v / per_row, r = v - m * per_row;
            if (v < vecs) sx_store_vec<XF32>(gs_smem + (size_t)(r >> 3) * slab + (size_t)m * LDB + (r & 7) * 16, xr[u]);
        }
    }
    uint4 wq[PW][2][2];
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
        for (int h = 0; h < 2; ++h) wq[0][r][h] = wr[0][r][h], wq[1][r][h] = wr[1][r][h];
#pragma unroll
    for (int p = 2; p < PW; ++p) load_w(wq[p], p);
    __syncthreads();
    for (int c0 = 0; c0 < nchunks; c0 += PW) {
#pragma unroll
        for (int p = 0; p < PW; ++p) {
            const int c = c0 + p;
            if (c < nchunks) {
                uint4 cur[2][2];
#pragma unroll
                for (int r = 0; r < 2; ++r) cur[r][0] = wq[p][r][0], cur[r][1] = wq[p][r][1];
                load_w(wq[p], c + PW);
                sx_chunk_live<NTM, NTM, LDB, XF32, true>(jt, acc, gs_smem + (size_t)(c >> 1) * slab, cur, g, t, c & 1, M);
            }
        }
    }
}

template <int NTM, bool XF32, typename Y>
__device__ __forceinline__ void skinny_gemm_v2(const bf16* __restrict__ W, const void* __restrict__ x,
                                               Y* __restrict__ y, float* __restrict__ ws,
                                               unsigned* __restrict__ counters, int M, int N, int K, int ks,
                                               int splits, int w_packed) {
    constexpr int RW = 2, P = 2, RB = 8 * 16 * RW, MP = NTM * 8;
    constexpr int LDB = V2Ldb<XF32>::v;
    constexpr int SLOT = MP * LDB;
    // 8-element x vectors per thread per slab (the m16 variant's 128 vectors leave half
    // the threads without one).
    constexpr int XVECS = MP * (V2_SK / 8);
    constexpr int XV = (XVECS + GS_THREADS - 1) / GS_THREADS;
    static_assert(XVECS % GS_THREADS == 0 || XVECS < GS_THREADS, "v2 x staging");
    // Up to 16 rows, the whole K slice when it fits (`sxw_fits`): see skinny_gemm_sxw_loop.
    bool whole = false;
    if constexpr (NTM <= 2) whole = sxw_fits<XF32>(M, ks);
    extern __shared__ __align__(16) unsigned char gs_smem[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int row0 = blockIdx.x * RB + warp * 16 * RW;
    const int kb = blockIdx.y * ks;
    const int ke = min(K, kb + ks);
    const int nchunks = ke > kb ? (ke - kb + 31) / 32 : 0;
    const int nslab = (nchunks + 1) / 2;
    const int jt = (M + 7) >> 3;

    const bf16* wp[RW][2];
    bool wok[RW][2];
#pragma unroll
    for (int r = 0; r < RW; ++r)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = row0 + r * 16 + h * 8 + g;
            wok[r][h] = row < N;
            wp[r][h] = w_lane_ptr(W, w_packed, wok[r][h] ? row : 0, K, kb, t);
        }
    const int cstep = w_chunk_step(w_packed);
    float acc[RW][NTM][4];
#pragma unroll
    for (int r = 0; r < RW; ++r)
#pragma unroll
        for (int j = 0; j < NTM; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[r][j][e] = 0.f;

    uint4 wr[P][RW][2];
    auto load_w = [&](uint4(&buf)[RW][2], int c) {
        const int k = kb + c * 32 + t * 8;
        const bool kok = c < nchunks && k < ke;
#pragma unroll
        for (int r = 0; r < RW; ++r)
#pragma unroll
            for (int h = 0; h < 2; ++h)
                buf[r][h] = (kok && wok[r][h]) ? ld_stream(wp[r][h] + c * cstep) : make_uint4(0, 0, 0, 0);
    };

    // x staging: vector v = threadIdx.x + q * 256 is row v / 8, k offset (v % 8) * 8 of the slab.
    unsigned xr[XV][SxVec<XF32>::R];
    auto load_xs = [&](int st) {
#pragma unroll
        for (int q = 0; q < XV; ++q) {
            const int v = threadIdx.x + q * GS_THREADS;
            const int m = v >> 3, k = kb + st * V2_SK + (v & 7) * 8;
            sx_load_vec<XF32>(x, m, K, k, v < XVECS && st < nslab && m < M && k < ke, xr[q]);
        }
    };
    auto store_xs = [&](int slot) {
        unsigned char* base = gs_smem + (size_t)slot * SLOT;
#pragma unroll
        for (int q = 0; q < XV; ++q) {
            const int v = threadIdx.x + q * GS_THREADS;
            if (XVECS < GS_THREADS && v >= XVECS) continue;
            sx_store_vec<XF32>(base + (size_t)(v >> 3) * LDB + (v & 7) * 16, xr[q]);
        }
    };

#pragma unroll
    for (int p = 0; p < P; ++p) load_w(wr[p], p);
    prefetch_rows_early(W, row0, RW * 16, lane, M, N, K, kb, ke, P * 32, splits, ks, w_packed);
    KILN_PDL_ENTER_ROWS(M);
    if constexpr (NTM <= 2) {
        if (whole) {
            sxw_loop<NTM, XF32>(wr, load_w, acc, M, K, kb, ke, nchunks, nslab, jt, x, g, t);
            gemm_epilogue_v2<RW, NTM, RB, GS_THREADS, Y>(acc, row0, g, t, y, ws, counters, M, N, splits, jt);
            return;
        }
    }
    load_xs(0);
    store_xs(0);
    load_xs(1);
    __syncthreads();

    for (int st = 0; st < nslab; ++st) {
        const unsigned char* slot = gs_smem + (size_t)(st & 1) * SLOT;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int c = 2 * st + h;
            if (c < nchunks) {
                // One specialisation per count of live batch tiles (warp-uniform): no branch
                // between the accumulators' MMA chains, so they interleave.
                if constexpr (NTM <= 2) {
                    // This chunk's W leaves its buffer, so the loads P chunks ahead go out
                    // before its MMAs (the m16 variant has the registers for the copy).
                    uint4 cur[RW][2];
#pragma unroll
                    for (int r = 0; r < RW; ++r) cur[r][0] = wr[h][r][0], cur[r][1] = wr[h][r][1];
                    load_w(wr[h], c + P);
                    sx_chunk_live<NTM, NTM, LDB, XF32>(jt, acc, slot, cur, g, t, h);
                } else {
                    // (With the copy the m32 and m64 variants spill at 128 registers.)
                    sx_chunk_live<NTM, NTM, LDB, XF32>(jt, acc, slot, wr[h], g, t, h);
                    load_w(wr[h], c + P);
                }
            }
        }
        if (st + 1 < nslab) {
            store_xs((st + 1) & 1);  // slot last read in iteration st - 1
            load_xs(st + 2);
        }
        __syncthreads();
    }
    gemm_epilogue_v2<RW, NTM, RB, GS_THREADS, Y>(acc, row0, g, t, y, ws, counters, M, N, splits, jt);
}

// SUF: the name's suffix (m8 ... m64); NT: batch tiles of 8. (Session 23's m8h, the m8
// kernel in 32-row blocks of two warps, measured +2.4 % at batch 1 in session 25: deleted.)
#define GEMM_VARIANT(XN, XT, XF, YN, YT, SUF, NT)                                                \
    extern "C" __global__ void __launch_bounds__(GEMM_THREADS)                                    \
        kiln_gemm_x##XN##_y##YN##_##SUF(const bf16* W, const XT* x, YT* y, float* ws,             \
                                        unsigned* counters, int M, int N, int K, int ks,          \
                                        int splits, int w_packed) {                                \
        skinny_gemm<NT, XF, YT>(W, x, y, ws, counters, M, N, K, ks, splits, w_packed);        \
    }
#define GEMM_ALL_M(XN, XT, XF, YN, YT)       \
    GEMM_VARIANT(XN, XT, XF, YN, YT, m8, 1)  \
    GEMM_VARIANT(XN, XT, XF, YN, YT, m16, 2) \
    GEMM_VARIANT(XN, XT, XF, YN, YT, m32, 4) \
    GEMM_VARIANT(XN, XT, XF, YN, YT, m64, 8)
GEMM_ALL_M(f32, float, true, f32, float)
GEMM_ALL_M(f32, float, true, bf16, bf16)
GEMM_ALL_M(bf16, bf16, false, f32, float)
GEMM_ALL_M(bf16, bf16, false, bf16, bf16)

#define GEMM_SHARED_X(XN, XT, XF, YN, YT, MM, NT)                                                \
    static_assert(2 * NT * 8 * V2Ldb<XF>::v == KILN_SMEM_GEMM_SX_##XN##_M##MM,                    \
                  "the launcher's shared memory (registry.rs) differs from this layout");       \
    extern "C" __global__ void __launch_bounds__(GS_THREADS, 2)                                   \
        kiln_gemm_sx_x##XN##_y##YN##_m##MM(const bf16* W, const XT* x, YT* y, float* ws,          \
                                           unsigned* counters, int M, int N, int K, int ks,       \
                                           int splits, int w_packed) {                             \
        skinny_gemm_v2<NT, XF, YT>(W, x, y, ws, counters, M, N, K, ks, splits, w_packed);          \
    }
#define GEMM_SHARED_X_M(XN, XT, XF, YN, YT)       \
    GEMM_SHARED_X(XN, XT, XF, YN, YT, 16, 2)      \
    GEMM_SHARED_X(XN, XT, XF, YN, YT, 32, 4)      \
    GEMM_SHARED_X(XN, XT, XF, YN, YT, 64, 8)
GEMM_SHARED_X_M(f32, float, true, f32, float)
GEMM_SHARED_X_M(f32, float, true, bf16, bf16)
GEMM_SHARED_X_M(bf16, bf16, false, f32, float)
GEMM_SHARED_X_M(bf16, bf16, false, bf16, bf16)

// One thread per 16-byte vector of the packed output, copying the row-major vector it holds.
extern "C" __global__ void __launch_bounds__(256) kiln_pack_weight(const bf16* __restrict__ W, bf16* __restrict__ out, int N, int K) {
    KILN_PDL_ENTER();
    const size_t vecs = (size_t)N * K / 8, tile_elems = (size_t)16 * K;
    for (size_t v = (size_t)blockIdx.x * blockDim.x + threadIdx.x; v < vecs; v += (size_t)gridDim.x * blockDim.x) {
        const size_t e = v * 8, tile = e / tile_elems;
        const int in_tile = (int)(e - tile * tile_elems);  // < 16 K
        const int c = in_tile >> 9, h = (in_tile >> 8) & 1, lane = (in_tile & 255) >> 3;
        const size_t row = tile * 16 + h * 8 + (lane >> 2);
        const int k = c * 32 + (lane & 3) * 8;
        *reinterpret_cast<uint4*>(out + e) = *reinterpret_cast<const uint4*>(W + row * K + k);
    }
}
