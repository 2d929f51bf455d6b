// Small elementwise and reduction kernels.
//
// kiln_output_gate_{g}_{out}(const float* attn, const G* gate, int ld_gate, int gate_hs,
//                            OUT* out, int ld_out, int T)
//   out[t*ld_out + h*HEAD_DIM + d] = attn[(t*NUM_HEADS + h)*HEAD_DIM + d]
//                                    * sigmoid(gate[t*ld_gate + h*gate_hs + d])
//   (with the fused q_proj layout, gate = qg + HEAD_DIM and gate_hs = 2*HEAD_DIM).
//   grid (ceil(NUM_HEADS*HEAD_DIM/256), T), block 256.
//
// kiln_silu_mul_{in}_{out}(const IN* gu, int ld_in, int up_off, OUT* out, int ld_out, int n, int M)
//   out[m*ld_out + i] = silu(gu[m*ld_in + i]) * gu[m*ld_in + up_off + i], i < n
//   (gate and up fused: [gate (INTER) | up (INTER)] gives up_off = INTER).
//   grid (ceil(n/256), M), block 256.
//
// kiln_f32_to_bf16(const float* x, bf16* y, int n)
//   y[i] = bf16(x[i]) rounded to nearest even, i < n (cuBLASLt's prefill GEMMs take bf16
//   activations). grid (ceil(n/1024)), block 256, 4 elements per thread.
//
// kiln_gather_rows_{f32,bf16}(const T* src, const int* rows, T* dst, int width, int n)
//   dst[i][0..width) = src[rows[i]][0..width), i < n (the lm_head's input rows of a step,
//   in one launch instead of a copy per row). grid (n), block 256.
//
// kiln_argmax_{f32,bf16}(const T* logits, int ld, int n, int* out, int M)
//   out[m] = the index of the largest of logits[m*ld + 0 .. n); the first index wins
//   ties; NaN never wins (an all-NaN row gives 0). grid (M), block 1024.
//
// kiln_argmax_masked_f32(const float* logits, int ld, int n, const int* mask_rows,
//                        const unsigned* masks, int words, int* out, int M)
//   Structured output's greedy token: for each row m with mask_rows[m] >= 0, out[m] = the
//   argmax of logits[m*ld + i] over the i < n whose bit i % 32 of word i / 32 of mask
//   masks[mask_rows[m]*words ..] is set, with kiln_argmax's rules (0 when no allowed
//   value is a number). Rows with mask_rows[m] < 0 keep out[m]. n <= 32*words.
//   grid (M), block 1024.
//
// kiln_copy_segments(const unsigned long long* segs, int n)
//   For each segment s < n: copies segs[3s + 2] bytes from device address segs[3s] to
//   segs[3s + 1]. Addresses 16-byte aligned, sizes multiples of 16, segments disjoint.
//   Speculative verification saves the conv rings and commits the accepted state with
//   one launch each instead of a copy per layer and sequence. grid (blocks per segment,
//   n), block 256.
#include "common.cuh"

using namespace kiln;

template <typename G, typename OUT>
__device__ __forceinline__ void output_gate(const float* __restrict__ attn, const G* __restrict__ gate,
                                            int ld_gate, int gate_hs, OUT* __restrict__ out, int ld_out,
                                            int T) {
    KILN_PDL_ENTER();
    const int t = blockIdx.y;
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= T || i >= NUM_HEADS * HEAD_DIM) return;
    const int h = i / HEAD_DIM, d = i % HEAD_DIM;
    const float a = attn[(size_t)t * NUM_HEADS * HEAD_DIM + i];
    const float g = to_f(gate[(size_t)t * ld_gate + (size_t)h * gate_hs + d]);
    out[(size_t)t * ld_out + i] = from_f<OUT>(a * sigmoidf_(g));
}

#define OUTPUT_GATE(NAME, G, OUT)                                                                 \
    extern "C" __global__ void __launch_bounds__(256)                                             \
        NAME(const float* attn, const G* gate, int ld_gate, int gate_hs, OUT* out, int ld_out,    \
             int T) {                                                                             \
        output_gate<G, OUT>(attn, gate, ld_gate, gate_hs, out, ld_out, T);                        \
    }
OUTPUT_GATE(kiln_output_gate_f32_f32, float, float)
OUTPUT_GATE(kiln_output_gate_f32_bf16, float, bf16)
OUTPUT_GATE(kiln_output_gate_bf16_f32, bf16, float)
OUTPUT_GATE(kiln_output_gate_bf16_bf16, bf16, bf16)

// Four consecutive elements per thread: 16-byte (f32) / 8-byte (bf16) accesses when
// n, ld_in, up_off and ld_out are all multiples of 4, element by element otherwise.
template <typename IN, typename OUT>
__device__ __forceinline__ void silu_mul(const IN* __restrict__ gu, int ld_in, int up_off, OUT* __restrict__ out,
                                         int ld_out, int n, int M) {
    KILN_PDL_ENTER();
    const int m = blockIdx.y;
    const int i = (blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (m >= M || i >= n) return;
    const IN* g = gu + (size_t)m * ld_in + i;
    OUT* o = out + (size_t)m * ld_out + i;
    if (((n | ld_in | up_off | ld_out) & 3) == 0) {
        float gv[4], uv[4], y[4];
        loadn<4>(g, gv);
        loadn<4>(g + up_off, uv);
#pragma unroll
        for (int e = 0; e < 4; ++e) y[e] = siluf_(gv[e]) * uv[e];
        storen<4>(o, y);
    } else {
        for (int e = 0; e < 4 && i + e < n; ++e) o[e] = from_f<OUT>(siluf_(to_f(g[e])) * to_f(g[up_off + e]));
    }
}

#define SILU_MUL(NAME, IN, OUT)                                                                   \
    extern "C" __global__ void __launch_bounds__(256)                                             \
        NAME(const IN* gu, int ld_in, int up_off, OUT* out, int ld_out, int n, int M) {           \
        silu_mul<IN, OUT>(gu, ld_in, up_off, out, ld_out, n, M);                                  \
    }
SILU_MUL(kiln_silu_mul_f32_f32, float, float)
SILU_MUL(kiln_silu_mul_f32_bf16, float, bf16)
SILU_MUL(kiln_silu_mul_bf16_f32, bf16, float)
SILU_MUL(kiln_silu_mul_bf16_bf16, bf16, bf16)

// (value, index) pairs: a beats b if a.v > b.v, or equal with a smaller index; NaN loses.
__device__ __forceinline__ void amax_merge(float& v, int& i, float ov, int oi) {
    const bool take = (ov > v) || (ov == v && oi < i) || (v != v && ov == ov);
    if (take) {
        v = ov;
        i = oi;
    }
}

// MASKED: only the ids whose bit is set in `mask` compete (nullptr otherwise).
template <typename T, bool MASKED>
__device__ __forceinline__ void argmax_row(const T* __restrict__ row, int n, const unsigned* __restrict__ mask,
                                           int* __restrict__ out) {
    __shared__ float sv[32];
    __shared__ int si[32];
    float best = -KILN_INF;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        if (MASKED && !((mask[i >> 5] >> (i & 31)) & 1u)) continue;
        const float v = to_f(row[i]);
        if (v > best || (bi == 0x7fffffff && v == v)) {  // strict >: the first index seen wins ties
            best = v;
            bi = i;
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, best, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        amax_merge(best, bi, ov, oi);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        sv[warp] = best;
        si[warp] = bi;
    }
    __syncthreads();
    if (warp == 0) {
        const int nw = blockDim.x >> 5;
        best = lane < nw ? sv[lane] : -KILN_INF;
        bi = lane < nw ? si[lane] : 0x7fffffff;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, best, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            amax_merge(best, bi, ov, oi);
        }
        if (lane == 0) *out = bi == 0x7fffffff ? 0 : bi;
    }
}

template <typename T>
__device__ __forceinline__ void argmax(const T* __restrict__ logits, int ld, int n, int* __restrict__ out, int M) {
    KILN_PDL_ENTER();
    const int m = blockIdx.x;
    if (m >= M) return;
    argmax_row<T, false>(logits + (size_t)m * ld, n, nullptr, out + m);
}

extern "C" __global__ void __launch_bounds__(1024) kiln_argmax_f32(const float* logits, int ld, int n, int* out, int M) {
    argmax<float>(logits, ld, n, out, M);
}
extern "C" __global__ void __launch_bounds__(1024) kiln_argmax_bf16(const bf16* logits, int ld, int n, int* out, int M) {
    argmax<bf16>(logits, ld, n, out, M);
}

extern "C" __global__ void __launch_bounds__(1024)
    kiln_argmax_masked_f32(const float* logits, int ld, int n, const int* mask_rows, const unsigned* masks, int words,
                           int* out, int M) {
    KILN_PDL_ENTER();
    const int m = blockIdx.x;
    if (m >= M) return;
    const int k = mask_rows[m];
    if (k < 0) return;  // the whole block: no barrier is skipped by part of it
    n = min(n, 32 * words);
    argmax_row<float, true>(logits + (size_t)m * ld, n, masks + (size_t)k * words, out + m);
}

extern "C" __global__ void __launch_bounds__(256) kiln_f32_to_bf16(const float* __restrict__ x, bf16* __restrict__ y, int n) {
    // Like every kiln kernel: under PDL (the decode graphs), wait for the predecessor's
    // writes (with KILN_ACT=bf16 this reads the attention combine's output).
    KILN_PDL_ENTER();
    const int i = (blockIdx.x * 256 + threadIdx.x) * 4;
    if (i + 3 < n) {
        const float4 v = *reinterpret_cast<const float4*>(x + i);
        bf162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
        *reinterpret_cast<bf162*>(y + i) = lo;
        *reinterpret_cast<bf162*>(y + i + 2) = hi;
    } else {
        for (int j = i; j < n; j++) y[j] = __float2bfloat16_rn(x[j]);
    }
}

template <typename T>
__device__ __forceinline__ void gather_rows(const T* __restrict__ src, const int* __restrict__ rows, T* __restrict__ dst,
                                            int width, int n) {
    KILN_PDL_ENTER();
    const int i = blockIdx.x;
    if (i >= n) return;
    const T* s = src + (size_t)rows[i] * width;
    T* d = dst + (size_t)i * width;
    for (int j = threadIdx.x; j < width; j += 256) d[j] = s[j];
}

extern "C" __global__ void __launch_bounds__(256)
    kiln_gather_rows_f32(const float* src, const int* rows, float* dst, int width, int n) {
    gather_rows<float>(src, rows, dst, width, n);
}
extern "C" __global__ void __launch_bounds__(256)
    kiln_gather_rows_bf16(const bf16* src, const int* rows, bf16* dst, int width, int n) {
    gather_rows<bf16>(src, rows, dst, width, n);
}

extern "C" __global__ void __launch_bounds__(256) kiln_copy_segments(const unsigned long long* segs, int n) {
    KILN_PDL_ENTER();
    const int seg = blockIdx.y;
    if (seg >= n) return;
    const int4* src = reinterpret_cast<const int4*>(segs[3 * seg]);
    int4* dst = reinterpret_cast<int4*>(segs[3 * seg + 1]);
    const size_t n16 = segs[3 * seg + 2] / 16;
    for (size_t i = (size_t)blockIdx.x * 256 + threadIdx.x; i < n16; i += (size_t)gridDim.x * 256) dst[i] = src[i];
}
