// Full-attention input stage: q/k RMSNorm (1 + w) over HEAD_DIM, partial rotate-half RoPE,
// and the write of k, v into the paged KV cache.
//
// kiln_qk_norm_rope_{f32,bf16}(const T* qg, int ld_qg, const T* k, const T* v, int ld_kv,
//     const bf16* q_norm_w, const bf16* k_norm_w, const int* pos, const int* kv_loc,
//     float* q_out, bf16* k_cache, bf16* v_cache, int block_size, int T)
//   qg [T][ld_qg]: q_proj output, head h at h*2*HEAD_DIM: [q (HEAD_DIM) | gate (HEAD_DIM)]
//   k, v [T][ld_kv]: k_proj / v_proj outputs, KV head g at g*HEAD_DIM
//   q_norm_w, k_norm_w [HEAD_DIM] bf16 (applied as 1 + w)
//   pos[t]: absolute position of token t (RoPE angle pos * theta^(-2i/ROTARY_DIM), the
//     first ROTARY_DIM dims rotate, rotate-half pairs (i, i + ROTARY_DIM/2))
//   kv_loc[t]: cache row = physical_block * block_size + offset, or < 0 to skip the write
//   q_out [T][NUM_HEADS][HEAD_DIM] fp32: normalised, rotated queries
//   k_cache, v_cache [num_blocks][NUM_KV_HEADS][block_size][HEAD_DIM] bf16: k normalised
//     and rotated, v as given (rounded to bf16).
//   Angles are computed in fp32 from an inv_freq rounded from double (as transformers
//   does in fp32); cos/sin stay fp32 (transformers' bf16 path rounds them to bf16).
//   grid (T), block (NUM_HEADS + NUM_KV_HEADS) * 32: one warp per head.
#include "common.cuh"

using namespace kiln;

#define RK_DPL (HEAD_DIM / 32)
#define RK_WARPS (NUM_HEADS + NUM_KV_HEADS)
static_assert(ROTARY_DIM >= 2 && ROTARY_DIM / 2 <= RK_WARPS * 32, "one thread per rotary pair of the block");

template <typename IN>
__device__ __forceinline__ void qk_norm_rope(const IN* __restrict__ qg, int ld_qg, const IN* __restrict__ k,
                                             const IN* __restrict__ v, int ld_kv,
                                             const bf16* __restrict__ q_norm_w,
                                             const bf16* __restrict__ k_norm_w, const int* __restrict__ pos,
                                             const int* __restrict__ kv_loc, float* __restrict__ q_out,
                                             bf16* __restrict__ k_cache, bf16* __restrict__ v_cache,
                                             int block_size, int T) {
    KILN_PDL_ENTER();
    constexpr int half = ROTARY_DIM / 2;
    __shared__ float buf[RK_WARPS][HEAD_DIM];
    __shared__ float rcos[half], rsin[half];
    const int t = blockIdx.x;
    if (t >= T) return;  // the whole block
    // The token's rotation, once per block (each of its heads rotates by the same angles):
    // the double-precision pow and the sincosf are the kernel's costliest instructions.
    if (threadIdx.x < half) {
        const int i = threadIdx.x;
        const float inv_freq = (float)(1.0 / pow((double)ROPE_THETA, (double)(2 * i) / (double)ROTARY_DIM));
        sincosf((float)pos[t] * inv_freq, &rsin[i], &rcos[i]);
    }
    __syncthreads();
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    const int d0 = lane * RK_DPL;
    const bool is_q = w < NUM_HEADS;
    const int kvh = w - NUM_HEADS;
    const int loc = kv_loc[t];
    if (!is_q && loc < 0) return;  // whole warp leaves together; no block barrier below

    const IN* src = is_q ? qg + (size_t)t * ld_qg + (size_t)w * 2 * HEAD_DIM
                        : k + (size_t)t * ld_kv + (size_t)kvh * HEAD_DIM;
    float x[RK_DPL], wv[RK_DPL], vx[RK_DPL];
    loadn<RK_DPL>(src + d0, x);
    loadn<RK_DPL>((is_q ? q_norm_w : k_norm_w) + d0, wv);
    // A key warp's value row loads with its key, not after the norm and rotation.
    if (!is_q) loadn<RK_DPL>(v + (size_t)t * ld_kv + (size_t)kvh * HEAD_DIM + d0, vx);
    float ss = 0.f;
#pragma unroll
    for (int e = 0; e < RK_DPL; ++e) ss += x[e] * x[e];
    const float inv = rsqrtf(warp_sum(ss) / (float)HEAD_DIM + RMS_EPS);
#pragma unroll
    for (int e = 0; e < RK_DPL; ++e) {
        x[e] = x[e] * inv * (1.f + wv[e]);
        buf[w][d0 + e] = x[e];
    }
    __syncwarp();
#pragma unroll
    for (int e = 0; e < RK_DPL; ++e) {
        const int d = d0 + e;
        if (d < ROTARY_DIM) {
            const int i = d < half ? d : d - half;
            const float sn = rsin[i], cs = rcos[i];
            x[e] = d < half ? buf[w][d] * cs - buf[w][d + half] * sn : buf[w][d] * cs + buf[w][d - half] * sn;
        }
    }
    if (is_q) {
        storen<RK_DPL>(q_out + ((size_t)t * NUM_HEADS + w) * HEAD_DIM + d0, x);
        return;
    }
    const size_t blk = (size_t)(loc / block_size), off = (size_t)(loc % block_size);
    const size_t base = ((blk * NUM_KV_HEADS + kvh) * block_size + off) * HEAD_DIM + d0;
    storen<RK_DPL>(k_cache + base, x);
    storen<RK_DPL>(v_cache + base, vx);
}

extern "C" __global__ void __launch_bounds__(RK_WARPS * 32)
    kiln_qk_norm_rope_f32(const float* qg, int ld_qg, const float* k, const float* v, int ld_kv,
                          const bf16* q_norm_w, const bf16* k_norm_w, const int* pos, const int* kv_loc,
                          float* q_out, bf16* k_cache, bf16* v_cache, int block_size, int T) {
    qk_norm_rope<float>(qg, ld_qg, k, v, ld_kv, q_norm_w, k_norm_w, pos, kv_loc, q_out, k_cache, v_cache,
                        block_size, T);
}
extern "C" __global__ void __launch_bounds__(RK_WARPS * 32)
    kiln_qk_norm_rope_bf16(const bf16* qg, int ld_qg, const bf16* k, const bf16* v, int ld_kv,
                           const bf16* q_norm_w, const bf16* k_norm_w, const int* pos, const int* kv_loc,
                           float* q_out, bf16* k_cache, bf16* v_cache, int block_size, int T) {
    qk_norm_rope<bf16>(qg, ld_qg, k, v, ld_kv, q_norm_w, k_norm_w, pos, kv_loc, q_out, k_cache, v_cache,
                       block_size, T);
}
