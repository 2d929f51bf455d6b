// Embedding gather and RMSNorms.
//
// A 16-bit output here is a GEMM input, and the embedding table is the tied lm_head: both
// are the GEMMs' operand type `gop` (common.cuh): bf16, or fp16 in a KILN_GEMM_F16 plan
// ("bf16" in a kernel name means that 16-bit type).
//
// kiln_embed(const gop* table, const int* ids, float* out, int M)
//   table [VOCAB][HIDDEN] bf16; ids [M]; out [M][HIDDEN] fp32 (the residual stream).
//   An id outside [0, VOCAB) gives a zero row. grid (M), block 256.
//
// kiln_add_rmsnorm_{f32,bf16}(float* residual, const T* delta, int ld_delta,
//                             const bf16* w, gop* out16, float* out_f32, int M)
//   residual [M][HIDDEN] fp32, updated in place: residual += delta (delta [M][ld_delta]
//   of type T, nullable: then the residual is only normalised). Then
//   y = residual * rsqrt(mean(residual^2) + RMS_EPS) * (1 + w), w [HIDDEN] bf16;
//   y is written to out16 [M][HIDDEN] and/or out_f32 [M][HIDDEN] (each nullable).
//   grid (M), block 256. Rows are independent (no cross-row arithmetic).
//
// kiln_add_rmsnorm_parts(float* residual, const float* parts, int splits,
//                        long long split_stride, const bf16* w, gop* out16,
//                        float* out_f32, int M)
//   add_rmsnorm_f32 with the delta given as the split-K partials of a decode GEMM
//   launched without counters (gemm.cu): delta[m][n] = 0 + p0 + p1 + ... in split order,
//   partial s at parts + s * split_stride + m * HIDDEN + n (fp32, 16-byte aligned). Bit
//   for bit what the GEMM's own sum followed by add_rmsnorm_f32 gives.
//
// kiln_gated_rmsnorm_{in}_{out}(const float* o, const IN* z, int ld_z, const bf16* w,
//                               OUT* out, int T)
//   The Gated DeltaNet output norm for prefill (decode fuses it in gdn_decode.cu):
//   for token t and value head h, x = o[t][h*LIN_DV ..] (fp32, [T][LIN_NV*LIN_DV]),
//   out[t][h*LIN_DV + j] = x_j * rsqrt(mean(x^2) + RMS_EPS) * w_j * silu(z[t*ld_z + h*LIN_DV + j]),
//   w [LIN_DV] bf16 applied plainly (not 1 + w). grid (ceil(T*LIN_NV/8)), block 256 (a warp per head).
//
// kiln_mtp_fc_input_{f32,bf16}(const gop* table, const int* ids, const float* hid,
//                              const float* pending, const int* hid_rows, const bf16* w_e,
//                              const bf16* w_h, OUT* out, int M)
//   The MTP head's fc input, row m of out [M][2*HIDDEN]: [rmsnorm(table[ids[m]]) * (1 + w_e) |
//   rmsnorm(h) * (1 + w_h)] with h = hid[hid_rows[m]] when hid_rows[m] >= 0, else
//   pending[-1 - hid_rows[m]] (both fp32 [.][HIDDEN]). An id outside [0, VOCAB) gives a
//   zero embedding (and a zero half). grid (M, 2): blockIdx.y picks the half; block 256.
#include "common.cuh"

using namespace kiln;

extern "C" __global__ void __launch_bounds__(256) kiln_embed(const gop* __restrict__ table,
                                                             const int* __restrict__ ids,
                                                             float* __restrict__ out, int M) {
    KILN_PDL_ENTER();
    const int m = blockIdx.x;
    if (m >= M) return;
    const int id = ids[m];
    const bool ok = id >= 0 && id < VOCAB;
    const gop* src = table + (size_t)(ok ? id : 0) * HIDDEN;
    float* dst = out + (size_t)m * HIDDEN;
    for (int i = threadIdx.x * 8; i < HIDDEN; i += blockDim.x * 8) {
        float v[8];
        if (ok) {
            load8(src + i, v);
        } else {
#pragma unroll
            for (int e = 0; e < 8; ++e) v[e] = 0.f;
        }
        store8(dst + i, v);
    }
}

// Vectors of 8 per thread; VPT vectors per thread cover the row with 256 threads.
#define NORM_THREADS 256
#define NORM_VPT ((HIDDEN / 8 + NORM_THREADS - 1) / NORM_THREADS)

// Thread vt's vectors of a HIDDEN-long norm weight (vector j at element
// (vt + j * NORM_THREADS) * 8). vt is threadIdx.x, except in the cluster kernel, whose
// blocks are the warps of one NORM_THREADS-thread row.
__device__ __forceinline__ void load_norm_w(const bf16* __restrict__ w, float (&wv)[NORM_VPT][8], int vt) {
#pragma unroll
    for (int j = 0; j < NORM_VPT; ++j) {
        const int i = (vt + j * NORM_THREADS) * 8;
        if (i < HIDDEN) load8(w + i, wv[j]);
    }
}

// One vector of y = v * inv * (1 + w) to o.
template <typename OUT>
__device__ __forceinline__ void store_rmsnorm_vec(const float (&v)[8], float inv, const float (&wv)[8], OUT* __restrict__ o) {
    float y[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) y[e] = v[e] * inv * (1.f + wv[e]);
    store8(o, y);
}
// Stores y = v * inv * (1 + w) for the vectors of one HIDDEN row this thread holds in v
// (weights in wv, both laid out as load_norm_w's) to the row at o.
template <typename OUT>
__device__ __forceinline__ void store_rmsnorm(const float (&v)[NORM_VPT][8], float inv, const float (&wv)[NORM_VPT][8],
                                              OUT* __restrict__ o, int vt) {
#pragma unroll
    for (int j = 0; j < NORM_VPT; ++j) {
        const int i = (vt + j * NORM_THREADS) * 8;
        if (i < HIDDEN) store_rmsnorm_vec(v[j], inv, wv[j], o + i);
    }
}

// A row's vector at element i: the residual plus (when has_delta) the delta.
template <typename DeltaAt>
__device__ __forceinline__ void norm_vec_in(const float* __restrict__ res, bool has_delta, DeltaAt delta_at, int m,
                                            int i, float (&v)[8]) {
    load8(res + i, v);
    if (has_delta) {
        float d[8];
        delta_at(m, i, d);
#pragma unroll
        for (int e = 0; e < 8; ++e) v[e] += d[e];
    }
}

// ss plus a vector's squares, in element order.
__device__ __forceinline__ float norm_ss_add(float ss, const float (&v)[8]) {
#pragma unroll
    for (int e = 0; e < 8; ++e) ss += v[e] * v[e];
    return ss;
}

// Row m's residual += delta (when has_delta; delta_at(m, i, d) loads the 8 delta values
// at element i), then the norm, as thread vt of NORM_THREADS; row_sum(ss) returns the sum
// of every thread's ss, warp sums first, then the 8 warp sums in warp order (block_sum's
// order). One body for every delta form and both kernels' shapes, so a row's arithmetic
// is the same whichever runs it.
template <typename DeltaAt, typename RowSum>
__device__ __forceinline__ void add_rmsnorm(float* __restrict__ residual, bool has_delta, DeltaAt delta_at,
                                            RowSum row_sum, int m, int vt, const bf16* __restrict__ w,
                                            gop* __restrict__ out16, float* __restrict__ out_f32, int M) {
    // The norm weight is never written: it loads before the PDL wait (early order), not
    // after the row's sum of squares, one dependent round trip less.
    float wv[NORM_VPT][8];
    load_norm_w(w, wv, vt);
    KILN_PDL_ENTER_ROWS(M);
    if (m >= M) return;
    float* res = residual + (size_t)m * HIDDEN;
    float v[NORM_VPT][8];
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < NORM_VPT; ++j) {
        const int i = (vt + j * NORM_THREADS) * 8;
        if (i < HIDDEN) {
            norm_vec_in(res, has_delta, delta_at, m, i, v[j]);
            if (has_delta) store8(res + i, v[j]);
            ss = norm_ss_add(ss, v[j]);
        }
    }
    const float inv = rsqrtf(row_sum(ss) / (float)HIDDEN + RMS_EPS);
    if (out16 != nullptr) store_rmsnorm(v, inv, wv, out16 + (size_t)m * HIDDEN, vt);
    if (out_f32 != nullptr) store_rmsnorm(v, inv, wv, out_f32 + (size_t)m * HIDDEN, vt);
}

// block_sum as add_rmsnorm's row_sum (a row per block of NORM_THREADS threads).
struct BlockRowSum {
    float* red;
    __device__ float operator()(float ss) const { return block_sum(ss, red); }
};

template <typename T>
__device__ __forceinline__ void add_rmsnorm_mat(float* residual, const T* __restrict__ delta, int ld_delta,
                                                const bf16* w, gop* out16, float* out_f32, int M) {
    __shared__ float red[32];
    add_rmsnorm(
        residual, delta != nullptr, [=](int m, int i, float(&d)[8]) { load8(delta + (size_t)m * ld_delta + i, d); },
        BlockRowSum{red}, blockIdx.x, threadIdx.x, w, out16, out_f32, M);
}

extern "C" __global__ void __launch_bounds__(NORM_THREADS)
    kiln_add_rmsnorm_f32(float* residual, const float* delta, int ld_delta, const bf16* w,
                         gop* out16, float* out_f32, int M) {
    add_rmsnorm_mat<float>(residual, delta, ld_delta, w, out16, out_f32, M);
}
extern "C" __global__ void __launch_bounds__(NORM_THREADS)
    kiln_add_rmsnorm_bf16(float* residual, const bf16* delta, int ld_delta, const bf16* w,
                          gop* out16, float* out_f32, int M) {
    add_rmsnorm_mat<bf16>(residual, delta, ld_delta, w, out16, out_f32, M);
}

// Partials loaded at once per 8 outputs (two float4 each): the 13 splits of the down
// and out projections on 132 SMs in one L2 round trip (15 on a B200's 148: two). 16
// spilled on sm_90a (both vectors of a thread are in flight together); 13 takes ~182
// registers, no spills.
#define PARTS_IN 13

// The sum of `splits` fp32 partials of 8 consecutive outputs at p (split_stride floats
// apart), in split order from 0, as the GEMMs' own last block adds them.
__device__ __forceinline__ void sum_parts8(const float* __restrict__ p, int splits, long long split_stride,
                                           float (&d)[8]) {
    float4 lo, hi;
    sum_parts_4x2<PARTS_IN>(p, 4, splits, split_stride, lo, hi);
    d[0] = lo.x; d[1] = lo.y; d[2] = lo.z; d[3] = lo.w;
    d[4] = hi.x; d[5] = hi.y; d[6] = hi.z; d[7] = hi.w;
}

// The delta as `splits` fp32 partials of a split-K GEMM that left their sum to this
// kernel (gemm.cu, counters NULL): partial s of row m at parts + s * split_stride +
// m * HIDDEN. Their sum has the bits the GEMM's y would have had.
extern "C" __global__ void __launch_bounds__(NORM_THREADS)
    kiln_add_rmsnorm_parts(float* residual, const float* __restrict__ parts, int splits, long long split_stride,
                           const bf16* w, gop* out16, float* out_f32, int M) {
    __shared__ float red[32];
    add_rmsnorm(
        residual, true,
        [=](int m, int i, float(&d)[8]) { sum_parts8(parts + (size_t)m * HIDDEN + i, splits, split_stride, d); },
        BlockRowSum{red}, blockIdx.x, threadIdx.x, w, out16, out_f32, M);
}

// The same for small M, a row per cluster of NORM_WARPS one-warp blocks: block (r, m) is
// warp r of kiln_add_rmsnorm_parts' block for row m, with the same vectors, the same warp
// sum, and the 8 warp sums added in rank order through distributed shared memory (as
// block_sum adds them). Same bits; a row's partials (13 x 10 KB for down/out) stream
// through 8 SMs instead of one (a one-block row read them at ~40 GB/s: 4-7 us per norm at
// batch 1, H100 timeline of session 12). grid (NORM_WARPS, M), block 32.
#define NORM_WARPS (NORM_THREADS / 32)
struct ClusterRowSum {
    float* warp_total;  // this block's shared float
    __device__ float operator()(float ss) const {
        const int lane = threadIdx.x & 31;
        ss = warp_sum(ss);
        if (lane == 0) *warp_total = ss;
        cluster_barrier();
        const float t = lane < NORM_WARPS ? ld_cluster_f32(warp_total, (unsigned)lane) : 0.f;
        cluster_barrier();  // no block leaves while another still reads its warp_total
        return warp_sum(t);
    }
};

extern "C" __global__ void __cluster_dims__(NORM_WARPS, 1, 1) __launch_bounds__(32)
    kiln_add_rmsnorm_parts_cl(float* residual, const float* __restrict__ parts, int splits,
                              long long split_stride, const bf16* w, gop* out16, float* out_f32, int M) {
    __shared__ float warp_total;
    add_rmsnorm(
        residual, true,
        [=](int m, int i, float(&d)[8]) { sum_parts8(parts + (size_t)m * HIDDEN + i, splits, split_stride, d); },
        ClusterRowSum{&warp_total}, blockIdx.y, blockIdx.x * 32 + threadIdx.x, w, out16, out_f32, M);
}

// kiln_add_rmsnorm_parts_cl with a warp per vector (`GemmChoices::defer_cluster_vec_warps`):
// block (r, m), NORM_VPT warps; warp j, lane l holds vector j of virtual thread r * 32 + l,
// so every vector's partials are in flight at once (the one-warp blocks load a thread's
// second vector after the first: two L2 round trips). The virtual thread's sum of squares
// passes from warp to warp in vector order (add_rmsnorm's loop), then the cluster adds the
// warp sums as ClusterRowSum does; the residual is stored after that, so the barrier's
// release fence waits on no store. Same arithmetic, so the same bits.
extern "C" __global__ void __cluster_dims__(NORM_WARPS, 1, 1) __launch_bounds__(32 * NORM_VPT)
    kiln_add_rmsnorm_parts_clw(float* residual, const float* __restrict__ parts, int splits,
                               long long split_stride, const bf16* w, gop* out16, float* out_f32, int M) {
    __shared__ float chain[32];
    __shared__ float warp_total;
    const int lane = threadIdx.x & 31, j = threadIdx.x >> 5;
    const int m = blockIdx.y;
    const int i = (blockIdx.x * 32 + lane + j * NORM_THREADS) * 8;
    const bool has = i < HIDDEN;
    float wv[8];
    if (has) load8(w + i, wv);
    KILN_PDL_ENTER_ROWS(M);
    if (m >= M) return;
    float* res = residual + (size_t)m * HIDDEN;
    const auto delta_at = [=](int mm, int ii, float(&d)[8]) { sum_parts8(parts + (size_t)mm * HIDDEN + ii, splits, split_stride, d); };
    float v[8];
    if (has) norm_vec_in(res, true, delta_at, m, i, v);
    float ss = 0.f;
#pragma unroll
    for (int q = 0; q < NORM_VPT; ++q) {
        if (j == q) {
            if (q > 0) ss = chain[lane];
            if (has) ss = norm_ss_add(ss, v);
            chain[lane] = ss;
        }
        __syncthreads();
    }
    // Every warp holds the virtual threads' sums; warp 0 publishes the block's.
    ss = warp_sum(chain[lane]);
    if (threadIdx.x == 0) warp_total = ss;
    cluster_barrier();
    const float total = warp_sum(lane < NORM_WARPS ? ld_cluster_f32(&warp_total, (unsigned)lane) : 0.f);
    cluster_barrier_relaxed();  // no block leaves while another still reads its warp_total
    if (!has) return;
    store8(res + i, v);
    const float inv = rsqrtf(total / (float)HIDDEN + RMS_EPS);
    if (out16 != nullptr) store_rmsnorm_vec(v, inv, wv, out16 + (size_t)m * HIDDEN + i);
    if (out_f32 != nullptr) store_rmsnorm_vec(v, inv, wv, out_f32 + (size_t)m * HIDDEN + i);
}

template <typename OUT>
__device__ __forceinline__ void mtp_fc_input(const gop* __restrict__ table, const int* __restrict__ ids,
                                             const float* __restrict__ hid, const float* __restrict__ pending,
                                             const int* __restrict__ hid_rows, const bf16* __restrict__ w_e,
                                             const bf16* __restrict__ w_h, OUT* __restrict__ out, int M) {
    float wv[NORM_VPT][8];
    load_norm_w(blockIdx.y == 0 ? w_e : w_h, wv, threadIdx.x);  // a weight: before the PDL wait
    KILN_PDL_ENTER();
    __shared__ float red[32];
    const int m = blockIdx.x, half = blockIdx.y;
    if (m >= M) return;
    const gop* emb = nullptr;
    const float* h = nullptr;
    if (half == 0) {
        const int id = ids[m];
        if (id >= 0 && id < VOCAB) emb = table + (size_t)id * HIDDEN;
    } else {
        const int r = hid_rows[m];
        h = r >= 0 ? hid + (size_t)r * HIDDEN : pending + (size_t)(-1 - r) * HIDDEN;
    }
    float v[NORM_VPT][8];
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < NORM_VPT; ++j) {
        const int i = (threadIdx.x + j * NORM_THREADS) * 8;
        if (i < HIDDEN) {
            if (h != nullptr) {
                load8(h + i, v[j]);
            } else if (emb != nullptr) {
                load8(emb + i, v[j]);
            } else {
#pragma unroll
                for (int e = 0; e < 8; ++e) v[j][e] = 0.f;
            }
#pragma unroll
            for (int e = 0; e < 8; ++e) ss += v[j][e] * v[j][e];
        }
    }
    const float inv = rsqrtf(block_sum(ss, red) / (float)HIDDEN + RMS_EPS);
    store_rmsnorm(v, inv, wv, out + (size_t)m * 2 * HIDDEN + half * HIDDEN, threadIdx.x);
}

#define MTP_FC_INPUT(NAME, OUT)                                                                        \
    extern "C" __global__ void __launch_bounds__(NORM_THREADS)                                         \
        NAME(const gop* table, const int* ids, const float* hid, const float* pending,                \
             const int* hid_rows, const bf16* w_e, const bf16* w_h, OUT* out, int M) {                  \
        mtp_fc_input<OUT>(table, ids, hid, pending, hid_rows, w_e, w_h, out, M);                       \
    }
MTP_FC_INPUT(kiln_mtp_fc_input_f32, float)
MTP_FC_INPUT(kiln_mtp_fc_input_bf16, gop)

// ---------------------------------------------------------------------------------
// Gated RMSNorm (Gated DeltaNet output), one warp per (token, value head).
#define GN_PER_LANE (LIN_DV / 32)
static_assert(LIN_DV % 32 == 0 && GN_PER_LANE <= 8, "LIN_DV must be a multiple of 32, at most 256");

template <typename IN, typename OUT>
__device__ __forceinline__ void gated_rmsnorm(const float* __restrict__ o, const IN* __restrict__ z,
                                              int ld_z, const bf16* __restrict__ w,
                                              OUT* __restrict__ out, int T) {
    KILN_PDL_ENTER();
    const int lane = threadIdx.x & 31;
    const int item = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (item >= T * LIN_NV) return;
    const int t = item / LIN_NV, h = item % LIN_NV;
    const int d0 = lane * GN_PER_LANE;
    float x[GN_PER_LANE], zz[GN_PER_LANE], wv[GN_PER_LANE];
    loadn<GN_PER_LANE>(o + (size_t)t * LIN_VALUE_DIM + h * LIN_DV + d0, x);
    loadn<GN_PER_LANE>(z + (size_t)t * ld_z + h * LIN_DV + d0, zz);
    loadn<GN_PER_LANE>(w + d0, wv);
    float ss = 0.f;
#pragma unroll
    for (int e = 0; e < GN_PER_LANE; ++e) ss += x[e] * x[e];
    const float inv = rsqrtf(warp_sum(ss) / (float)LIN_DV + RMS_EPS);
    float y[GN_PER_LANE];
#pragma unroll
    for (int e = 0; e < GN_PER_LANE; ++e) y[e] = x[e] * inv * wv[e] * siluf_(zz[e]);
    storen<GN_PER_LANE>(out + (size_t)t * LIN_VALUE_DIM + h * LIN_DV + d0, y);
}

#define GATED_NORM(NAME, IN, OUT)                                                               \
    extern "C" __global__ void __launch_bounds__(256)                                           \
        NAME(const float* o, const IN* z, int ld_z, const bf16* w, OUT* out, int T) {           \
        gated_rmsnorm<IN, OUT>(o, z, ld_z, w, out, T);                                          \
    }
GATED_NORM(kiln_gated_rmsnorm_f32_f32, float, float)
GATED_NORM(kiln_gated_rmsnorm_f32_bf16, float, gop)
GATED_NORM(kiln_gated_rmsnorm_bf16_f32, bf16, float)
GATED_NORM(kiln_gated_rmsnorm_bf16_bf16, bf16, gop)
