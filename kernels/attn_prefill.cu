// Prefill attention over the paged KV cache: causal, GQA, flash-style (online softmax,
// tensor cores via mma.sync m16n8k16, fp32 accumulation).
//
// kiln_attn_prefill(const float* q, const bf16* k_cache, const bf16* v_cache,
//     const int* cu_seqlens, const int* start_pos, const int* block_tables, int bt_stride,
//     int block_size, float* out, int nseq)
//   q [T_total][NUM_HEADS][HEAD_DIM] fp32 (kiln_qk_norm_rope_* output); sequence s owns
//     rows [cu_seqlens[s], cu_seqlens[s+1]) at positions start_pos[s] + i.
//   k_cache, v_cache [num_blocks][NUM_KV_HEADS][block_size][HEAD_DIM] bf16, already
//     holding this chunk's keys and values; block_tables [nseq][bt_stride] physical
//     block ids; key position n of sequence s is in block block_tables[s*bt_stride + n/block_size].
//   out [T_total][NUM_HEADS][HEAD_DIM] fp32 (before the sigmoid output gate).
//   Query at position p attends to keys 0..p; scale HEAD_DIM^-0.5.
//   grid (ceil(max_T / QT), NUM_KV_HEADS, nseq), block 2 * R threads (R / 16 warps),
//   dynamic shared memory SMEM bytes (checked against the launcher's
//   KILN_SMEM_ATTN_PREFILL_R<R> from registry.rs).
// kiln_attn_prefill_r128: the same with R = 128 rows per block, the launcher's default since
//   2026-12-05 (KILN_ATTN_PREFILL_ROWS=64 takes the other): twice the warps share each K/V
//   tile (~198 KB, still one block per SM); an 8192-token prefill took 179.6 against 193.9
//   ms on the H100. A row's sums are the same: tiles past a row's last key add exact zeros
//   (corr 1, p 0), so both variants give the same bits (the device run checked the logits).
//
// A block holds QT = R / GQA_GROUP queries of all GQA_GROUP heads of one KV head (R = 64
// rows by default, row r = head r / QT, query r % QT; 16 rows per warp) and streams 32-key
// tiles of K and V through double-buffered shared memory (cp.async: the next tile's paged
// loads are in flight while this one computes; ~135 KB, one block per SM). Precision: K and V are bf16 already (exact mma operands); the
// fp32 queries and the fp32 probabilities are split into bf16 hi + lo (x ~= hi + lo to
// ~16 mantissa bits) and each product is two MMAs (hi*B + lo*B), so the scores and the
// output carry ~1e-5 relative error, like the fp32 CUDA-core version this replaced,
// instead of bf16's 4e-3. Softmax in base 2 with the scale folded into q.
// The key loop's length depends only on the block's own queries, and every row's sums run
// in the same order for any batch, so results do not depend on other sequences.
#include "common.cuh"

using namespace kiln;

#ifndef KILN_ATTN_P_BF16
#define KILN_ATTN_P_BF16 0
#endif
// KILN_ATTN_Q_BF16 (an experiment, off by default): the scores from q's bf16 part only, half
// the q.k MMAs and no q lo loads (docs/numerics.md: q and P rounded to bf16 in prefill
// attention moved the emulated logits error by < 1 %; K is bf16 already).
#ifndef KILN_ATTN_Q_BF16
#define KILN_ATTN_Q_BF16 0
#endif

#define AP_KT 32                        // keys per tile
#define AP_LD (HEAD_DIM + 8)            // padded bf16 row (16-byte aligned, conflict-free ldmatrix)
#define AP_KS (HEAD_DIM / 16)           // k16 steps of q.k
#define AP_NT (HEAD_DIM / 8)            // n8 tiles of the output
#define AP_BUF (AP_KT * AP_LD)
static_assert(HEAD_DIM % 16 == 0, "HEAD_DIM must be a multiple of 16");

// Shared layout (bf16 elements): q hi [R][AP_LD] | q lo | k [2][AP_KT][AP_LD] | v [2][AP_KT][AP_LD]
template <int R> struct ApShape {
    static constexpr int ROWS = R;                   // rows (head, query) per block
    static constexpr int THREADS = 2 * R;            // a warp per 16 rows
    static constexpr int QT = R / GQA_GROUP;         // queries per block
    static constexpr int SMEM = (2 * R + 4 * AP_KT) * AP_LD * 2;
    static_assert(R % 16 == 0 && R % GQA_GROUP == 0, "a warp per 16 rows; the GQA group must divide the rows");
};

template <int R>
__device__ __forceinline__ void attn_prefill(const float* __restrict__ q, const bf16* __restrict__ k_cache,
                                             const bf16* __restrict__ v_cache, const int* __restrict__ cu_seqlens,
                                             const int* __restrict__ start_pos, const int* __restrict__ block_tables,
                                             int bt_stride, int block_size, float* __restrict__ out, int nseq) {
    using S = ApShape<R>;
    constexpr int AP_ROWS = S::ROWS, AP_THREADS = S::THREADS, AP_QT = S::QT;
    KILN_PDL_ENTER();
    extern __shared__ __align__(16) unsigned char smem[];
    bf16* qh = reinterpret_cast<bf16*>(smem);
    bf16* ql = qh + AP_ROWS * AP_LD;
    bf16* ks = ql + AP_ROWS * AP_LD;
    bf16* vs = ks + 2 * AP_BUF;

    const int s = blockIdx.z, kvh = blockIdx.y;
    if (s >= nseq) return;
    const int t0 = cu_seqlens[s], tlen = cu_seqlens[s + 1] - t0;
    // Heaviest (latest) query blocks first: they see the most keys.
    const int q0 = (gridDim.x - 1 - blockIdx.x) * AP_QT;
    if (q0 >= tlen) return;
    const int start = start_pos[s];
    const int nq = min(AP_QT, tlen - q0);
    const int kend = start + q0 + nq;  // keys [0, kend) are visible to some row
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const float qscale = rsqrtf((float)HEAD_DIM) * 1.4426950408889634f;  // softmax in base 2

    // This thread's two rows: warp tile rows g and g + 8.
    int qpos[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) qpos[h] = start + q0 + (warp * 16 + g + 8 * h) % AP_QT;
    float m[2] = {-KILN_INF, -KILN_INF}, l[2] = {0.f, 0.f};
    float o[AP_NT][4];
#pragma unroll
    for (int j = 0; j < AP_NT; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
    // ldmatrix row addresses: lane gives row lane%8 of matrix lane/8.
    const int lm = lane >> 3, lr = lane & 7;
    const bf16* qh_w = qh + (warp * 16 + (lm & 1) * 8 + lr) * AP_LD + (lm >> 1) * 8;
    const bf16* ql_w = ql + (warp * 16 + (lm & 1) * 8 + lr) * AP_LD + (lm >> 1) * 8;

    // Key tiles are double-buffered: tile i+1 streams in (cp.async) while tile i computes.
    // Key n's cache row: block bt[n / block_size], row n % block_size (shifts when the
    // block size is a power of two, as it is in practice: the division was ~20 integer
    // instructions per lookup in the loop).
    const int* bt = block_tables + (size_t)s * bt_stride;
    const bool bs_pow2 = (block_size & (block_size - 1)) == 0;
    const int bs_shift = __ffs(block_size) - 1;
    auto cache_row = [&](int n) -> size_t {
        const int blk = bs_pow2 ? n >> bs_shift : n / block_size;
        const int off = bs_pow2 ? n & (block_size - 1) : n % block_size;
        return (((size_t)bt[blk] * NUM_KV_HEADS) + kvh) * block_size + off;
    };
    auto fetch = [&](int kt, int buf) {
        bf16* kd = ks + buf * AP_BUF;
        bf16* vd = vs + buf * AP_BUF;
        // 16-byte vectors per tile over the threads (the toy model's tile of the 128-row
        // variant has fewer vectors than threads: the rest load nothing).
        constexpr int ITERS = (AP_KT * HEAD_DIM / 8 + AP_THREADS - 1) / AP_THREADS;
#pragma unroll
        for (int it = 0; it < ITERS; ++it) {
            const int idx = tid + it * AP_THREADS;
            const int kk = idx / (HEAD_DIM / 8), d = (idx % (HEAD_DIM / 8)) * 8;
            const int n = kt + kk;
            if ((AP_KT * HEAD_DIM / 8) % AP_THREADS != 0 && kk >= AP_KT) break;
            size_t off = 0;
            if (n < kend) off = cache_row(n) * HEAD_DIM + d;
            cp_async16(kd + kk * AP_LD + d, k_cache + off, n < kend);
            cp_async16(vd + kk * AP_LD + d, v_cache + off, n < kend);
        }
        cp_async_commit();
    };
    // The first key tile goes out before the queries are staged, so the two round trips
    // overlap (the q loads were ~5 % of the kernel's stall samples, ncu).
    fetch(0, 0);

    // Stage the block's queries, scaled and split; rows of missing queries are zero. Eight
    // 16-byte loads in flight per thread before any is used (one at a time, each was a
    // round trip).
    constexpr int QV = AP_ROWS * HEAD_DIM / 4;  // float4 of q per block
    constexpr int QB = (HEAD_DIM / 8) % 8 == 0 ? 8 : 4;  // HEAD_DIM % 32 == 0
    static_assert(QV % (QB * AP_THREADS) == 0, "whole batches of q loads per thread");
#pragma unroll 1
    for (int i0 = tid; i0 < QV; i0 += QB * AP_THREADS) {
        float4 v[QB];
#pragma unroll
        for (int u = 0; u < QB; ++u) {
            const int idx = i0 + u * AP_THREADS;
            const int r = idx / (HEAD_DIM / 4), d = (idx % (HEAD_DIM / 4)) * 4;
            const int hq = r / AP_QT, qi = r % AP_QT;
            v[u] = make_float4(0.f, 0.f, 0.f, 0.f);
            if (qi < nq)
                v[u] = *reinterpret_cast<const float4*>(
                    q + ((size_t)(t0 + q0 + qi) * NUM_HEADS + kvh * GQA_GROUP + hq) * HEAD_DIM + d);
        }
#pragma unroll
        for (int u = 0; u < QB; ++u) {
            const int idx = i0 + u * AP_THREADS;
            const int r = idx / (HEAD_DIM / 4), d = (idx % (HEAD_DIM / 4)) * 4;
            const float x[4] = {v[u].x * qscale, v[u].y * qscale, v[u].z * qscale, v[u].w * qscale};
            const uint2 s0 = split_bf16x2(x[0], x[1]), s1 = split_bf16x2(x[2], x[3]);
            *reinterpret_cast<uint2*>(qh + r * AP_LD + d) = make_uint2(s0.x, s1.x);
            *reinterpret_cast<uint2*>(ql + r * AP_LD + d) = make_uint2(s0.y, s1.y);
        }
    }
    for (int kt = 0, buf = 0; kt < kend; kt += AP_KT, buf ^= 1) {
        if (kt + AP_KT < kend) {
            fetch(kt + AP_KT, buf ^ 1);  // that buffer was released by the barrier ending the last tile
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();  // tile kt visible to every warp (and q staged, first time)
        const bf16* kb = ks + buf * AP_BUF;
        const bf16* vb = vs + buf * AP_BUF;

        // Scores S[16 rows][32 keys] = q . k: four n8 tiles of keys.
        float sc[AP_KT / 8][4];
#pragma unroll
        for (int j = 0; j < AP_KT / 8; ++j) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.f;
#pragma unroll 4
        for (int kk = 0; kk < AP_KS; ++kk) {
            unsigned ah[4];
            ldsm_x4(ah, qh_w + kk * 16);
#if !KILN_ATTN_Q_BF16
            unsigned al[4];
            ldsm_x4(al, ql_w + kk * 16);
#endif
#pragma unroll
            for (int jp = 0; jp < AP_KT / 16; ++jp) {
                // Matrices: keys 16jp+0..7 at d 16kk, +8; keys 16jp+8..15 at d 16kk, +8.
                unsigned b[4];
                ldsm_x4(b, kb + (16 * jp + (lm >> 1) * 8 + lr) * AP_LD + kk * 16 + (lm & 1) * 8);
#if !KILN_ATTN_Q_BF16
                mma_16816(sc[2 * jp], al, b);
#endif
                mma_16816(sc[2 * jp], ah, b);
#if !KILN_ATTN_Q_BF16
                mma_16816(sc[2 * jp + 1], al, b + 2);
#endif
                mma_16816(sc[2 * jp + 1], ah, b + 2);
            }
        }

        // Online softmax per row (the row's 32 keys live in the 4 lanes of its quad).
        float corr[2];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            float mx = -KILN_INF;
#pragma unroll
            for (int j = 0; j < AP_KT / 8; ++j)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int n = kt + 8 * j + 2 * t + e;
                    float& v = sc[j][2 * h + e];
                    v = (n <= qpos[h] && n < kend) ? v : -KILN_INF;
                    mx = fmaxf(mx, v);
                }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float mn = fmaxf(m[h], mx);
            corr[h] = mn == -KILN_INF ? 1.f : exp2f(m[h] - mn);
            float sum = 0.f;
#pragma unroll
            for (int j = 0; j < AP_KT / 8; ++j)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    float& v = sc[j][2 * h + e];
                    v = mn == -KILN_INF ? 0.f : exp2f(v - mn);
                    sum += v;
                }
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            sum += __shfl_xor_sync(0xffffffffu, sum, 2);
            l[h] = l[h] * corr[h] + sum;
            m[h] = mn;
        }
#pragma unroll
        for (int j = 0; j < AP_NT; ++j) {
            o[j][0] *= corr[0]; o[j][1] *= corr[0];
            o[j][2] *= corr[1]; o[j][3] *= corr[1];
        }

        // O += P . V, P split hi + lo; P's A fragments come straight from the score tiles.
        // KILN_ATTN_P_BF16 (an experiment, off by default): P's bf16 part only, half the
        // P.V MMAs, P rounded to bf16 (4e-3 relative per probability).
#pragma unroll
        for (int kk = 0; kk < AP_KT / 16; ++kk) {
            const float* p0 = sc[2 * kk];
            const float* p1 = sc[2 * kk + 1];
            const uint2 ps[4] = {split_bf16x2(p0[0], p0[1]), split_bf16x2(p0[2], p0[3]), split_bf16x2(p1[0], p1[1]),
                                split_bf16x2(p1[2], p1[3])};
            const unsigned ph[4] = {ps[0].x, ps[1].x, ps[2].x, ps[3].x};
#if !KILN_ATTN_P_BF16
            const unsigned pl[4] = {ps[0].y, ps[1].y, ps[2].y, ps[3].y};
#endif
#pragma unroll
            for (int jp = 0; jp < AP_NT / 2; ++jp) {
                // Matrices (transposed): keys 16kk+0..7, +8..15 at dims 16jp; the same at 16jp+8.
                unsigned b[4];
                ldsm_x4_trans(b, vb + (16 * kk + (lm & 1) * 8 + lr) * AP_LD + 16 * jp + (lm >> 1) * 8);
#if !KILN_ATTN_P_BF16
                mma_16816(o[2 * jp], pl, b);
#endif
                mma_16816(o[2 * jp], ph, b);
#if !KILN_ATTN_P_BF16
                mma_16816(o[2 * jp + 1], pl, b + 2);
#endif
                mma_16816(o[2 * jp + 1], ph, b + 2);
            }
        }
        __syncthreads();  // every warp is done with this buffer before it is refilled
    }

#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int r = warp * 16 + g + 8 * h;
        const int hq = r / AP_QT, qi = r % AP_QT;
        if (qi >= nq) continue;
        const float inv = l[h] > 0.f ? 1.f / l[h] : 0.f;
        float* dst = out + ((size_t)(t0 + q0 + qi) * NUM_HEADS + kvh * GQA_GROUP + hq) * HEAD_DIM + 2 * t;
#pragma unroll
        for (int j = 0; j < AP_NT; ++j)
            *reinterpret_cast<float2*>(dst + 8 * j) = make_float2(o[j][2 * h] * inv, o[j][2 * h + 1] * inv);
    }
}

#define ATTN_PREFILL_VARIANT(NAME, R)                                                                  \
    static_assert(ApShape<R>::SMEM == KILN_SMEM_ATTN_PREFILL_R##R,                                     \
                  "the launcher's shared memory (registry.rs) differs from this layout");              \
    extern "C" __global__ void __launch_bounds__(2 * R, 1)                                             \
        NAME(const float* q, const bf16* k_cache, const bf16* v_cache, const int* cu_seqlens,          \
             const int* start_pos, const int* block_tables, int bt_stride, int block_size, float* out, \
             int nseq) {                                                                               \
        attn_prefill<R>(q, k_cache, v_cache, cu_seqlens, start_pos, block_tables, bt_stride,          \
                        block_size, out, nseq);                                                        \
    }
ATTN_PREFILL_VARIANT(kiln_attn_prefill, 64)
ATTN_PREFILL_VARIANT(kiln_attn_prefill_r128, 128)
