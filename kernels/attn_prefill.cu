// Prefill attention over the paged KV cache: causal, GQA, online softmax in fp32.
// (First, simple version: CUDA-core dot products from shared-memory tiles. A flash-style
// mma.sync version is the follow-up.)
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
//   grid (ceil(max_T / AP_QT), NUM_KV_HEADS, nseq), block 256, dynamic shared memory
//   AP_SMEM_BYTES = 64*HEAD_DIM*4 + 32*(HEAD_DIM+8)*2 + 32*HEAD_DIM*2 + 8*8*32*4 (the launcher): a block holds the AP_QT queries of
//   all GQA_GROUP heads of one KV head (64 rows, 8 per warp) and streams 32-key tiles.
#include "common.cuh"

using namespace kiln;

#define AP_THREADS 256
#define AP_ROWS 64                      // rows (head, query) per block
#define AP_RPW (AP_ROWS / 8)            // rows per warp
#define AP_QT (AP_ROWS / GQA_GROUP)     // queries per block
#define AP_KT 32                        // keys per tile
#define AP_DPL (HEAD_DIM / 32)          // output dims per lane
#define AP_KPAD (HEAD_DIM + 8)          // padded K row (bf16 elements), 16-byte aligned
static_assert(AP_ROWS % GQA_GROUP == 0 && AP_QT % AP_RPW == 0, "GQA group must divide 64 and leave 8-row warps in one head");
static_assert(HEAD_DIM % 8 == 0, "HEAD_DIM must be a multiple of 8");

// Shared layout (bytes): q fp32 [AP_ROWS][HEAD_DIM] | k bf16 [AP_KT][AP_KPAD] | v bf16 [AP_KT][HEAD_DIM] | p fp32 [8][AP_RPW][AP_KT]
#define AP_SMEM_Q (AP_ROWS * HEAD_DIM * 4)
#define AP_SMEM_K (AP_KT * AP_KPAD * 2)
#define AP_SMEM_V (AP_KT * HEAD_DIM * 2)
#define AP_SMEM_P (8 * AP_RPW * AP_KT * 4)
// Dynamic shared memory (the launcher computes the same sum):
#define AP_SMEM_BYTES (AP_SMEM_Q + AP_SMEM_K + AP_SMEM_V + AP_SMEM_P)

extern "C" __global__ void __launch_bounds__(AP_THREADS, 2)
    kiln_attn_prefill(const float* __restrict__ q, const bf16* __restrict__ k_cache,
                      const bf16* __restrict__ v_cache, const int* __restrict__ cu_seqlens,
                      const int* __restrict__ start_pos, const int* __restrict__ block_tables, int bt_stride,
                      int block_size, float* __restrict__ out, int nseq) {
    KILN_PDL_ENTER();
    extern __shared__ __align__(16) unsigned char smem[];
    float* qs = reinterpret_cast<float*>(smem);
    bf16* ks = reinterpret_cast<bf16*>(smem + AP_SMEM_Q);
    bf16* vs = reinterpret_cast<bf16*>(smem + AP_SMEM_Q + AP_SMEM_K);
    float* ps = reinterpret_cast<float*>(smem + AP_SMEM_Q + AP_SMEM_K + AP_SMEM_V);

    const int s = blockIdx.z, kvh = blockIdx.y;
    if (s >= nseq) return;
    const int t0 = cu_seqlens[s], tlen = cu_seqlens[s + 1] - t0;
    const int q0 = blockIdx.x * AP_QT;  // first query (index within the sequence)
    if (q0 >= tlen) return;
    const int start = start_pos[s];
    const int nq = min(AP_QT, tlen - q0);
    const int kend = start + q0 + nq;  // keys [0, kend) are visible to some row
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const float qscale = rsqrtf((float)HEAD_DIM) * 1.4426950408889634f;  // softmax in base 2

    // Stage the block's queries (scaled); rows of missing queries are zero.
    for (int idx = tid; idx < AP_ROWS * HEAD_DIM / 4; idx += AP_THREADS) {
        const int r = idx / (HEAD_DIM / 4), d = (idx % (HEAD_DIM / 4)) * 4;
        const int hq = r / AP_QT, qi = r % AP_QT;
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        if (qi < nq) {
            v = *reinterpret_cast<const float4*>(
                q + ((size_t)(t0 + q0 + qi) * NUM_HEADS + kvh * GQA_GROUP + hq) * HEAD_DIM + d);
            v.x *= qscale; v.y *= qscale; v.z *= qscale; v.w *= qscale;
        }
        *reinterpret_cast<float4*>(qs + r * HEAD_DIM + d) = v;
    }

    const int row0 = warp * AP_RPW;  // this warp's rows: same head, consecutive queries
    float m[AP_RPW], l[AP_RPW], acc[AP_RPW][AP_DPL];
#pragma unroll
    for (int r = 0; r < AP_RPW; ++r) {
        m[r] = -KILN_INF;
        l[r] = 0.f;
#pragma unroll
        for (int e = 0; e < AP_DPL; ++e) acc[r][e] = 0.f;
    }
    const int* bt = block_tables + (size_t)s * bt_stride;

    for (int kt = 0; kt < kend; kt += AP_KT) {
        __syncthreads();  // previous tile fully consumed (and q staged, first time)
        for (int idx = tid; idx < AP_KT * HEAD_DIM / 8; idx += AP_THREADS) {
            const int kk = idx / (HEAD_DIM / 8), d = (idx % (HEAD_DIM / 8)) * 8;
            const int n = kt + kk;
            uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
            if (n < kend) {
                const size_t blk = (size_t)bt[n / block_size];
                const size_t off = (((blk * NUM_KV_HEADS) + kvh) * block_size + (n % block_size)) * HEAD_DIM + d;
                kv = *reinterpret_cast<const uint4*>(k_cache + off);
                vv = *reinterpret_cast<const uint4*>(v_cache + off);
            }
            *reinterpret_cast<uint4*>(ks + kk * AP_KPAD + d) = kv;
            *reinterpret_cast<uint4*>(vs + kk * HEAD_DIM + d) = vv;
        }
        __syncthreads();

        // Scores: lane = key.
        float sc[AP_RPW];
#pragma unroll
        for (int r = 0; r < AP_RPW; ++r) sc[r] = 0.f;
        const bf16* krow = ks + lane * AP_KPAD;
#pragma unroll 4
        for (int d = 0; d < HEAD_DIM; d += 8) {
            float kf[8];
            load8(krow + d, kf);
#pragma unroll
            for (int r = 0; r < AP_RPW; ++r) {
                float qf[8];
                load8(qs + (row0 + r) * HEAD_DIM + d, qf);
#pragma unroll
                for (int e = 0; e < 8; ++e) sc[r] += qf[e] * kf[e];
            }
        }
        const int n = kt + lane;
        float corr[AP_RPW];
#pragma unroll
        for (int r = 0; r < AP_RPW; ++r) {
            const int qi = (row0 + r) % AP_QT;
            const int qpos = start + q0 + qi;
            const float sv = (n <= qpos && n < kend) ? sc[r] : -KILN_INF;
            const float mn = fmaxf(m[r], warp_max(sv));
            const float p = mn == -KILN_INF ? 0.f : exp2f(sv - mn);
            corr[r] = mn == -KILN_INF ? 1.f : exp2f(m[r] - mn);
            l[r] = l[r] * corr[r] + warp_sum(p);
            m[r] = mn;
            ps[(warp * AP_RPW + r) * AP_KT + lane] = p;
        }
        __syncwarp();
        // P.V: lane owns AP_DPL consecutive dims.
#pragma unroll
        for (int r = 0; r < AP_RPW; ++r)
#pragma unroll
            for (int e = 0; e < AP_DPL; ++e) acc[r][e] *= corr[r];
        for (int kk = 0; kk < AP_KT; ++kk) {
            float vf[AP_DPL];
            loadn<AP_DPL>(vs + kk * HEAD_DIM + lane * AP_DPL, vf);
#pragma unroll
            for (int r = 0; r < AP_RPW; ++r) {
                const float p = ps[(warp * AP_RPW + r) * AP_KT + kk];
#pragma unroll
                for (int e = 0; e < AP_DPL; ++e) acc[r][e] += p * vf[e];
            }
        }
    }

#pragma unroll
    for (int r = 0; r < AP_RPW; ++r) {
        const int hq = (row0 + r) / AP_QT, qi = (row0 + r) % AP_QT;
        if (qi >= nq) continue;
        const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
        float o[AP_DPL];
#pragma unroll
        for (int e = 0; e < AP_DPL; ++e) o[e] = acc[r][e] * inv;
        storen<AP_DPL>(out + ((size_t)(t0 + q0 + qi) * NUM_HEADS + kvh * GQA_GROUP + hq) * HEAD_DIM + lane * AP_DPL, o);
    }
}
