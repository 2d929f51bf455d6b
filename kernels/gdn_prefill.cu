// Gated DeltaNet prefill over a chunk of tokens for one or several sequences,
// sequential in time (first version; the chunked UT/WY form is the faster follow-up).
//
// kiln_gdn_prefill_{f32,bf16}(const float* qkv, int ld_qkv, const T* b, const T* a, int ld_ba,
//     const float* A_log, const float* dt_bias, float* state, const int* cu_seqlens,
//     const int* slots, float* out, int ld_out, int nseq)
//   qkv [T_total][ld_qkv] fp32: the conv + SiLU output (kiln_conv1d_*), channels
//     [q (LIN_NK*LIN_DK) | k | v (LIN_NV*LIN_DV)]; sequence s owns rows
//     [cu_seqlens[s], cu_seqlens[s+1]).
//   b, a [T_total][ld_ba] (type T): in_proj_b / in_proj_a outputs (LIN_NV each).
//   A_log, dt_bias [LIN_NV] fp32.
//   state [slots][LIN_NV][LIN_DK][LIN_DV] fp32, read at the start and written back at the
//     end (the fp32 state carried across chunks and requests); slots[s] < 0 skips.
//   out [T_total][ld_out] fp32: o = S^T q per value head at h*LIN_DV, before the gated
//     RMSNorm (apply kiln_gated_rmsnorm_* next).
//   Same per-token arithmetic as gdn_decode.cu. grid (LIN_DV/32, LIN_NV, nseq), block
//   32 * GP_PARTS (GP_PARTS = 16 when LIN_DK % 64 == 0, else 8 or 4): each block owns 32
//   columns of one head's S; lane = GP_PARTS*column + part, part p holding the rows of
//   float4 groups {r*GP_PARTS + p} in registers, so the S^T k and S^T q sums over rows
//   finish with log2(GP_PARTS) shuffles. Tokens are staged GP_TC at a time in shared
//   memory (q, k normalised).
#include "common.cuh"

using namespace kiln;

#define GP_COLS 32
#if LIN_DK % 64 == 0
#define GP_PARTS 16
#elif LIN_DK % 32 == 0
#define GP_PARTS 8
#else
#define GP_PARTS 4
#endif
#define GP_THREADS (GP_COLS * GP_PARTS)
#define GP_TC 32
#define GP_R4 (LIN_DK / (4 * GP_PARTS))  // float4 groups per thread
static_assert(LIN_DK % 16 == 0, "LIN_DK must be a multiple of 16");
static_assert(LIN_DV % GP_COLS == 0, "LIN_DV must be a multiple of 32");

template <typename T>
__device__ __forceinline__ void gdn_prefill(const float* __restrict__ qkv, int ld_qkv, const T* __restrict__ b,
                                            const T* __restrict__ a, int ld_ba, const float* __restrict__ A_log,
                                            const float* __restrict__ dt_bias, float* __restrict__ state,
                                            const int* __restrict__ cu_seqlens, const int* __restrict__ slots,
                                            float* __restrict__ out, int ld_out, int nseq) {
    __shared__ __align__(16) float qn[GP_TC][LIN_DK];
    __shared__ __align__(16) float kn[GP_TC][LIN_DK];
    __shared__ float vv[GP_TC][GP_COLS];
    __shared__ float gb[GP_TC][2];
    KILN_PDL_ENTER();
    const int cg = blockIdx.x, h = blockIdx.y, sq = blockIdx.z;
    if (sq >= nseq) return;
    const int slot = slots[sq];
    if (slot < 0) return;
    const int t0 = cu_seqlens[sq], t1 = cu_seqlens[sq + 1];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int cl = warp * (32 / GP_PARTS) + lane / GP_PARTS, p = lane % GP_PARTS;
    const int j = cg * GP_COLS + cl;
    const int kh = h / GDN_GROUP;

    float* S = state + ((size_t)slot * LIN_NV + h) * LIN_DK * LIN_DV + j;
    float s[GP_R4][4];
#pragma unroll
    for (int r = 0; r < GP_R4; ++r)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[r][e] = S[(size_t)(4 * (r * GP_PARTS + p) + e) * LIN_DV];
    const float neg_a = -expf(A_log[h]), dtb = dt_bias[h];

    for (int tb = t0; tb < t1; tb += GP_TC) {
        const int n = min(GP_TC, t1 - tb);
        __syncthreads();  // the previous sub-chunk is done with the staging buffers
        for (int idx = tid; idx < n * LIN_DK; idx += GP_THREADS) {
            const int tt = idx / LIN_DK, i = idx % LIN_DK;
            const float* row = qkv + (size_t)(tb + tt) * ld_qkv;
            qn[tt][i] = row[kh * LIN_DK + i];
            kn[tt][i] = row[LIN_KEY_DIM + kh * LIN_DK + i];
        }
        for (int idx = tid; idx < n * GP_COLS; idx += GP_THREADS) {
            const int tt = idx / GP_COLS, c = idx % GP_COLS;
            vv[tt][c] = qkv[(size_t)(tb + tt) * ld_qkv + 2 * LIN_KEY_DIM + h * LIN_DV + cg * GP_COLS + c];
        }
        for (int tt = tid; tt < n; tt += GP_THREADS) {
            const float bb = to_f(b[(size_t)(tb + tt) * ld_ba + h]);
            const float aa = to_f(a[(size_t)(tb + tt) * ld_ba + h]);
            gb[tt][0] = expf(neg_a * softplusf_(aa + dtb));
            gb[tt][1] = sigmoidf_(bb);
        }
        __syncthreads();
        for (int tt = warp; tt < n; tt += GP_THREADS / 32) {
            float sq_ = 0.f, sk = 0.f;
            for (int i = lane; i < LIN_DK; i += 32) {
                sq_ += qn[tt][i] * qn[tt][i];
                sk += kn[tt][i] * kn[tt][i];
            }
            const float iq = rsqrtf(warp_sum(sq_) + 1e-6f) * rsqrtf((float)LIN_DK);
            const float ik = rsqrtf(warp_sum(sk) + 1e-6f);
            for (int i = lane; i < LIN_DK; i += 32) {
                qn[tt][i] *= iq;
                kn[tt][i] *= ik;
            }
        }
        __syncthreads();
        for (int tt = 0; tt < n; ++tt) {
            const float4* k4 = reinterpret_cast<const float4*>(kn[tt]);
            const float4* q4 = reinterpret_cast<const float4*>(qn[tt]);
            const float eg = gb[tt][0], beta = gb[tt][1];
            float kv0 = 0.f, kv1 = 0.f;
#pragma unroll
            for (int r = 0; r < GP_R4; ++r) {
                const float4 kk = k4[r * GP_PARTS + p];
                s[r][0] *= eg; s[r][1] *= eg; s[r][2] *= eg; s[r][3] *= eg;
                kv0 += s[r][0] * kk.x + s[r][1] * kk.y;
                kv1 += s[r][2] * kk.z + s[r][3] * kk.w;
            }
            float kv = kv0 + kv1;
#pragma unroll
            for (int o = 1; o < GP_PARTS; o <<= 1) kv += __shfl_xor_sync(0xffffffffu, kv, o);
            const float delta = beta * (vv[tt][cl] - kv);
            float o0 = 0.f, o1 = 0.f;
#pragma unroll
            for (int r = 0; r < GP_R4; ++r) {
                const float4 kk = k4[r * GP_PARTS + p];
                const float4 qq = q4[r * GP_PARTS + p];
                s[r][0] += kk.x * delta; s[r][1] += kk.y * delta;
                s[r][2] += kk.z * delta; s[r][3] += kk.w * delta;
                o0 += s[r][0] * qq.x + s[r][1] * qq.y;
                o1 += s[r][2] * qq.z + s[r][3] * qq.w;
            }
            float o = o0 + o1;
#pragma unroll
            for (int q = 1; q < GP_PARTS; q <<= 1) o += __shfl_xor_sync(0xffffffffu, o, q);
            if (p == 0) out[(size_t)(tb + tt) * ld_out + h * LIN_DV + j] = o;
        }
    }
#pragma unroll
    for (int r = 0; r < GP_R4; ++r)
#pragma unroll
        for (int e = 0; e < 4; ++e) S[(size_t)(4 * (r * GP_PARTS + p) + e) * LIN_DV] = s[r][e];
}

extern "C" __global__ void __launch_bounds__(GP_THREADS)
    kiln_gdn_prefill_f32(const float* qkv, int ld_qkv, const float* b, const float* a, int ld_ba,
                         const float* A_log, const float* dt_bias, float* state, const int* cu_seqlens,
                         const int* slots, float* out, int ld_out, int nseq) {
    gdn_prefill<float>(qkv, ld_qkv, b, a, ld_ba, A_log, dt_bias, state, cu_seqlens, slots, out, ld_out, nseq);
}
extern "C" __global__ void __launch_bounds__(GP_THREADS)
    kiln_gdn_prefill_bf16(const float* qkv, int ld_qkv, const bf16* b, const bf16* a, int ld_ba,
                          const float* A_log, const float* dt_bias, float* state, const int* cu_seqlens,
                          const int* slots, float* out, int ld_out, int nseq) {
    gdn_prefill<bf16>(qkv, ld_qkv, b, a, ld_ba, A_log, dt_bias, state, cu_seqlens, slots, out, ld_out, nseq);
}
