// Paged decode attention (one query token per sequence), split over the sequence.
//
// Partitioning: a sequence with L keys is cut into nparts = min(max_parts, ceil(L / 64))
// partitions of ps = roundup32(ceil(L / nparts)) keys (the last may be shorter;
// nparts = ceil(L / ps)). This depends only on L and max_parts, never on the batch,
// so a sequence gets bit-identical results whatever else is in the batch.
//
// kiln_attn_decode_partial(const float* q, const bf16* k_cache, const bf16* v_cache,
//     const int* block_tables, int bt_stride, const int* ctx_lens, int block_size,
//     float* part_acc, float* part_ml, int max_parts, int B)
//   q [B][NUM_HEADS][HEAD_DIM] fp32 (kiln_qk_norm_rope_* output)
//   k_cache, v_cache [num_blocks][NUM_KV_HEADS][block_size][HEAD_DIM] bf16, holding the
//     current token's key and value already; ctx_lens[b] = L (keys 0..L-1 visible;
//     L <= 0: padding row, skipped); block_tables [B][bt_stride].
//   part_acc [B][NUM_HEADS][max_parts][HEAD_DIM], part_ml [B][NUM_HEADS][max_parts][2]:
//     per partition the unnormalised output and (max, sum) of the base-2 softmax.
//   grid (G, NUM_KV_HEADS, B) with any G >= 1 (block x takes partitions x, x+G, ...;
//   G = max_parts leaves none waiting), block 128: each warp takes 8-key groups
//   (32/GQA_GROUP keys per group) of the partition for all GQA_GROUP query heads.
//
// kiln_attn_decode_combine_{out}(const float* part_acc, const float* part_ml,
//     const int* ctx_lens, int max_parts, const T* gate, int ld_gate, int gate_hs,
//     OUT* out, int ld_out, int B)   (T = OUT's gate type: f32 -> float, bf16 -> bf16)
//   out[b*ld_out + h*HEAD_DIM + d] = sum_p 2^(m_p - M) acc_p[d] / sum_p 2^(m_p - M) l_p,
//   partitions added in order; times sigmoid(gate[b*ld_gate + h*gate_hs + d]) when gate
//   is not null (the attention output gate fused). grid (NUM_HEADS, B), block HEAD_DIM.
#include "common.cuh"

using namespace kiln;

#define AD_THREADS 128
#define AD_WARPS 4
#define AD_KG (32 / GQA_GROUP)      // keys per warp group
#define AD_DPL (HEAD_DIM / 32)
#define AD_MINP 64
#ifndef KILN_ATTN_V_EARLY
#define KILN_ATTN_V_EARLY 0
#endif
static_assert(32 % GQA_GROUP == 0, "GQA group must divide 32");

__device__ __forceinline__ void decode_parts(int L, int max_parts, int& nparts, int& ps) {
    int np = min(max_parts, (L + AD_MINP - 1) / AD_MINP);
    np = max(np, 1);
    ps = (((L + np - 1) / np) + 31) / 32 * 32;
    nparts = (L + ps - 1) / ps;
}

// v[32] per lane -> lane l returns the sum over the warp of v[l].
__device__ __forceinline__ float reduce_scatter32(float (&v)[32], int lane) {
#pragma unroll
    for (int step = 0; step < 5; ++step) {
        const int off = 16 >> step;
        const bool upper = (lane & off) != 0;
#pragma unroll
        for (int i = 0; i < 16; ++i) {
            if (i >= off) break;
            const float send = upper ? v[i] : v[i + off];
            const float keep = upper ? v[i + off] : v[i];
            v[i] = keep + __shfl_xor_sync(0xffffffffu, send, off);
        }
    }
    return v[0];
}

extern "C" __global__ void __launch_bounds__(AD_THREADS)
    kiln_attn_decode_partial(const float* __restrict__ q, const bf16* __restrict__ k_cache,
                             const bf16* __restrict__ v_cache, const int* __restrict__ block_tables,
                             int bt_stride, const int* __restrict__ ctx_lens, int block_size,
                             float* __restrict__ part_acc, float* __restrict__ part_ml, int max_parts, int B) {
    KILN_PDL_ENTER_ROWS(B);
    __shared__ float wm[AD_WARPS][GQA_GROUP], wl[AD_WARPS][GQA_GROUP];
    __shared__ float wacc[AD_WARPS][GQA_GROUP][HEAD_DIM];
    const int b = blockIdx.z, kvh = blockIdx.y;
    if (b >= B) return;
    const int L = ctx_lens[b];
    if (L <= 0) return;
    int nparts, ps;
    decode_parts(L, max_parts, nparts, ps);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int* bt = block_tables + (size_t)b * bt_stride;
    const float qscale = rsqrtf((float)HEAD_DIM) * 1.4426950408889634f;
    const int my_h = lane / AD_KG, my_k = lane % AD_KG;  // after the reduce-scatter

    float qr[GQA_GROUP][AD_DPL];
#pragma unroll
    for (int h = 0; h < GQA_GROUP; ++h) {
        loadn<AD_DPL>(q + ((size_t)b * NUM_HEADS + kvh * GQA_GROUP + h) * HEAD_DIM + lane * AD_DPL, qr[h]);
#pragma unroll
        for (int e = 0; e < AD_DPL; ++e) qr[h][e] *= qscale;
    }

    for (int part = blockIdx.x; part < nparts; part += gridDim.x) {
        const int kb = part * ps, ke = min(L, kb + ps);
        float m = -KILN_INF, l = 0.f;  // stats of head my_h (same in its AD_KG lanes)
        float acc[GQA_GROUP][AD_DPL];
#pragma unroll
        for (int h = 0; h < GQA_GROUP; ++h)
#pragma unroll
            for (int e = 0; e < AD_DPL; ++e) acc[h][e] = 0.f;

        for (int g0 = kb + warp * AD_KG; g0 < ke; g0 += AD_WARPS * AD_KG) {
            size_t off[AD_KG];
            float vals[32];
#pragma unroll
            for (int kk = 0; kk < AD_KG; ++kk) {
                const int n = min(g0 + kk, ke - 1);  // clamp: masked below
                const size_t blk = (size_t)bt[n / block_size];
                off[kk] = ((blk * NUM_KV_HEADS + kvh) * block_size + (n % block_size)) * HEAD_DIM + lane * AD_DPL;
            }
#if KILN_ATTN_V_EARLY
            // The group's values are loaded with its keys (their addresses are known), so
            // their latency overlaps the dot products and the softmax instead of following
            // them; the arithmetic is unchanged.
            float vf_all[AD_KG][AD_DPL];
#pragma unroll
            for (int kk = 0; kk < AD_KG; ++kk) loadn<AD_DPL>(v_cache + off[kk], vf_all[kk]);
#endif
#pragma unroll
            for (int kk = 0; kk < AD_KG; ++kk) {
                float kf[AD_DPL];
                loadn<AD_DPL>(k_cache + off[kk], kf);
#pragma unroll
                for (int h = 0; h < GQA_GROUP; ++h) {
                    float d = 0.f;
#pragma unroll
                    for (int e = 0; e < AD_DPL; ++e) d += qr[h][e] * kf[e];
                    vals[h * AD_KG + kk] = d;
                }
            }
            float sv = reduce_scatter32(vals, lane);
            if (g0 + my_k >= ke) sv = -KILN_INF;
            float gmax = sv;
#pragma unroll
            for (int o = 1; o < AD_KG; o <<= 1) gmax = fmaxf(gmax, __shfl_xor_sync(0xffffffffu, gmax, o));
            const float mn = fmaxf(m, gmax);  // finite: the group has at least one key
            const float p = exp2f(sv - mn);
            const float corr = exp2f(m - mn);
            float psum = p;
#pragma unroll
            for (int o = 1; o < AD_KG; o <<= 1) psum += __shfl_xor_sync(0xffffffffu, psum, o);
            l = l * corr + psum;
            m = mn;
#pragma unroll
            for (int h = 0; h < GQA_GROUP; ++h) {
                const float c = __shfl_sync(0xffffffffu, corr, h * AD_KG);
#pragma unroll
                for (int e = 0; e < AD_DPL; ++e) acc[h][e] *= c;
            }
#pragma unroll
            for (int kk = 0; kk < AD_KG; ++kk) {
#if KILN_ATTN_V_EARLY
                const float(&vf)[AD_DPL] = vf_all[kk];
#else
                float vf[AD_DPL];
                loadn<AD_DPL>(v_cache + off[kk], vf);
#endif
#pragma unroll
                for (int h = 0; h < GQA_GROUP; ++h) {
                    const float pk = __shfl_sync(0xffffffffu, p, h * AD_KG + kk);
#pragma unroll
                    for (int e = 0; e < AD_DPL; ++e) acc[h][e] += pk * vf[e];
                }
            }
        }
        // Combine the warps of the block.
        __syncthreads();  // previous partition's reads of the scratch are done
        if (my_k == 0) {
            wm[warp][my_h] = m;
            wl[warp][my_h] = l;
        }
#pragma unroll
        for (int h = 0; h < GQA_GROUP; ++h)
#pragma unroll
            for (int e = 0; e < AD_DPL; ++e) wacc[warp][h][lane * AD_DPL + e] = acc[h][e];
        __syncthreads();
        for (int idx = tid; idx < GQA_GROUP * HEAD_DIM; idx += AD_THREADS) {
            const int h = idx / HEAD_DIM, d = idx % HEAD_DIM;
            float M = -KILN_INF;
#pragma unroll
            for (int w = 0; w < AD_WARPS; ++w) M = fmaxf(M, wm[w][h]);
            float a = 0.f, ls = 0.f;
#pragma unroll
            for (int w = 0; w < AD_WARPS; ++w) {
                const float f = wm[w][h] == -KILN_INF ? 0.f : exp2f(wm[w][h] - M);
                a += f * wacc[w][h][d];
                ls += f * wl[w][h];
            }
            const size_t row = ((size_t)b * NUM_HEADS + kvh * GQA_GROUP + h) * max_parts + part;
            part_acc[row * HEAD_DIM + d] = a;
            if (d == 0) {
                part_ml[row * 2] = M;
                part_ml[row * 2 + 1] = ls;
            }
        }
    }
}

template <typename OUT>
__device__ __forceinline__ void decode_combine(const float* __restrict__ part_acc, const float* __restrict__ part_ml,
                                               const int* __restrict__ ctx_lens, int max_parts,
                                               const OUT* __restrict__ gate, int ld_gate, int gate_hs,
                                               OUT* __restrict__ out, int ld_out, int B) {
    KILN_PDL_ENTER_ROWS(B);
    const int h = blockIdx.x, b = blockIdx.y, d = threadIdx.x;
    if (b >= B || d >= HEAD_DIM) return;
    // The gate depends on nothing below: its load overlaps the partitions' instead of
    // following them.
    const float gv = gate != nullptr ? to_f(gate[(size_t)b * ld_gate + (size_t)h * gate_hs + d]) : 0.f;
    const int L = ctx_lens[b];
    if (L <= 0) return;
    int nparts, ps;
    decode_parts(L, max_parts, nparts, ps);
    const size_t row0 = ((size_t)b * NUM_HEADS + h) * max_parts;
    float M = -KILN_INF;
    for (int p = 0; p < nparts; ++p) M = fmaxf(M, part_ml[(row0 + p) * 2]);
    float a = 0.f, ls = 0.f;
    for (int p = 0; p < nparts; ++p) {
        const float f = exp2f(part_ml[(row0 + p) * 2] - M);
        a += f * part_acc[(row0 + p) * HEAD_DIM + d];
        ls += f * part_ml[(row0 + p) * 2 + 1];
    }
    float y = a / ls;
    if (gate != nullptr) y *= sigmoidf_(gv);
    out[(size_t)b * ld_out + (size_t)h * HEAD_DIM + d] = from_f<OUT>(y);
}

extern "C" __global__ void __launch_bounds__(HEAD_DIM)
    kiln_attn_decode_combine_f32(const float* part_acc, const float* part_ml, const int* ctx_lens, int max_parts,
                                 const float* gate, int ld_gate, int gate_hs, float* out, int ld_out, int B) {
    decode_combine<float>(part_acc, part_ml, ctx_lens, max_parts, gate, ld_gate, gate_hs, out, ld_out, B);
}
extern "C" __global__ void __launch_bounds__(HEAD_DIM)
    kiln_attn_decode_combine_bf16(const float* part_acc, const float* part_ml, const int* ctx_lens, int max_parts,
                                  const bf16* gate, int ld_gate, int gate_hs, bf16* out, int ld_out, int B) {
    decode_combine<bf16>(part_acc, part_ml, ctx_lens, max_parts, gate, ld_gate, gate_hs, out, ld_out, B);
}
