// Small elementwise and reduction kernels.
//
// kiln_output_gate_{g}_{out}(const float* attn, const G* gate, int ld_gate, int gate_hs,
//                            OUT* out, int ld_out, int T)
//   out[t*ld_out + h*HEAD_DIM + d] = attn[(t*NUM_HEADS + h)*HEAD_DIM + d]
//                                    * sigmoid(gate[t*ld_gate + h*gate_hs + d])
//   (with the fused q_proj layout, gate = qg + HEAD_DIM and gate_hs = 2*HEAD_DIM).
//   grid (ceil(NUM_HEADS*HEAD_DIM/1024), T), block 256 (four elements per thread).
//
// kiln_silu_mul_{in}_{out}(const IN* gu, int ld_in, int up_off, OUT* out, int ld_out, int n, int M)
//   out[m*ld_out + i] = silu(gu[m*ld_in + i]) * gu[m*ld_in + up_off + i], i < n
//   (gate and up fused: [gate (INTER) | up (INTER)] gives up_off = INTER).
//   grid (ceil(n/256), M), block 256.
//
// kiln_silu_mul_parts_{out}(const float* parts, int splits, long long split_stride,
//                           int ld_in, int up_off, OUT* out, int ld_out, int n, int M)
//   The same, gu being the sum in split order of `splits` fp32 partials
//   (parts + s * split_stride, each [M][ld_in]) that the gate_up GEMM left unsummed.
//
// kiln_f32_to_bf16(const float* x, bf16* y, int n)
//   y[i] = bf16(x[i]) rounded to nearest even, i < n (cuBLASLt's prefill GEMMs take bf16
//   activations). grid (ceil(n/1024)), block 256, 4 elements per thread.
//
// kiln_gather_rows_{f32,bf16}(const T* src, const int* rows, T* dst, int width, int n)
//   dst[i][0..width) = src[rows[i]][0..width), i < n (the lm_head's input rows of a step,
//   in one launch instead of a copy per row). grid (n), block 256.
//
// kiln_argmax_{f32,bf16}(const T* logits, int ld, int n, int* out, int M,
//                        unsigned long long* keys, unsigned* counters)
//   out[m] = the index of the largest of logits[m*ld + 0 .. n); the first index wins
//   ties (-0 ties +0); NaN never wins (an all-NaN row gives 0). grid (ceil(n/2048), M),
//   block 256: each block takes the best of a 2048-wide slice, folds it into keys[m]
//   with a 64-bit atomicMax of (value order, -index), and the last block of the row
//   (counters[m]) writes out[m]. keys and counters (M of each) must be zero before the
//   first launch and are left zero. The result is the row's maximum under a total
//   order, so it does not depend on which block arrives first. (One 1024-thread block
//   per row took 99 us for the 248K-wide vocabulary at M = 1 on the H100.)
//
// kiln_argmax_masked_f32(const float* logits, int ld, int n, const int* mask_rows,
//                        const unsigned* masks, int words, int* out, int M,
//                        unsigned long long* keys, unsigned* counters)
//   Structured output's greedy token: for each row m with mask_rows[m] >= 0, out[m] = the
//   argmax of logits[m*ld + i] over the i < n whose bit i % 32 of word i / 32 of mask
//   masks[mask_rows[m]*words ..] is set, with kiln_argmax's rules (0 when no allowed
//   value is a number). Rows with mask_rows[m] < 0 keep out[m]. n <= 32*words.
//   grid and scratch as kiln_argmax.
//
// kiln_copy_segments(const unsigned long long* segs, int n)
//   For each segment s < n: copies segs[3s + 2] bytes from device address segs[3s] to
//   segs[3s + 1]. Addresses 16-byte aligned, sizes multiples of 16, segments disjoint.
//   Speculative verification saves the conv rings and commits the accepted state with
//   one launch each instead of a copy per layer and sequence. grid (blocks per segment,
//   n), block 256.
// kiln_spec_feed(const int* drafts, const int* feeds, int n, int* ids, int* mtp_ids)
//   A speculative cycle's drafts into its verify step: for e < n, ids[feeds[2e + 1]] =
//   drafts[feeds[2e]], and mtp_ids likewise when not null (the verify's MTP pass pairs
//   each row with the same token). grid 1, block 256.
//
// kiln_spec_accept(const int* ids, const int* greedy, const int* rows, int n, int positions,
//                  int* accepted, unsigned long long* segs, const int* tags, int nsegs)
//   Greedy acceptance and the commit's choice on the device: for sequence i < n, with
//   r = rows + i * positions its verify row per position (-1 past its last),
//   accepted[i] = 1 + the longest q with ids[r[q + 1]] == greedy[r[q]] for every q' <= q
//   (the matching drafts plus the bonus token); then every commit copy s < nsegs whose
//   tag (i << 4 | a) names another length than accepted[i] gets zero bytes (segs as
//   kiln_copy_segments reads them). n <= 256. grid 1, block 256.
//
// A 16-bit output of silu_mul, output_gate, f32_to_bf16 and gather_rows is a GEMM input:
// the GEMMs' operand type `gop` (common.cuh; "bf16" in those names means it).
#include "common.cuh"

using namespace kiln;

// Four consecutive elements of one head per thread (HEAD_DIM % 4 == 0): 16-byte (f32) /
// 8-byte (bf16) accesses when ld_gate, gate_hs and ld_out are multiples of 4, element by
// element otherwise. One element per thread took 288 us per launch for an 8192-token
// chunk (2.6x its bytes at copy bandwidth: 16 x T blocks of 1 KB each).
template <typename G, typename OUT>
__device__ __forceinline__ void output_gate(const float* __restrict__ attn, const G* __restrict__ gate,
                                            int ld_gate, int gate_hs, OUT* __restrict__ out, int ld_out,
                                            int T) {
    static_assert(HEAD_DIM % 4 == 0, "four elements per thread stay in one head");
    KILN_PDL_ENTER();
    const int t = blockIdx.y;
    const int i = (blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (t >= T || i >= NUM_HEADS * HEAD_DIM) return;
    const int h = i / HEAD_DIM, d = i % HEAD_DIM;
    const float* a = attn + (size_t)t * NUM_HEADS * HEAD_DIM + i;
    const G* g = gate + (size_t)t * ld_gate + (size_t)h * gate_hs + d;
    OUT* o = out + (size_t)t * ld_out + i;
    if (((ld_gate | gate_hs | ld_out) & 3) == 0) {
        float av[4], gv[4], y[4];
        loadn<4>(a, av);
        loadn<4>(g, gv);
#pragma unroll
        for (int e = 0; e < 4; ++e) y[e] = av[e] * sigmoidf_(gv[e]);
        storen<4>(o, y);
    } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) o[e] = from_f<OUT>(a[e] * sigmoidf_(to_f(g[e])));
    }
}

#define OUTPUT_GATE(NAME, G, OUT)                                                                 \
    extern "C" __global__ void __launch_bounds__(256)                                             \
        NAME(const float* attn, const G* gate, int ld_gate, int gate_hs, OUT* out, int ld_out,    \
             int T) {                                                                             \
        output_gate<G, OUT>(attn, gate, ld_gate, gate_hs, out, ld_out, T);                        \
    }
OUTPUT_GATE(kiln_output_gate_f32_f32, float, float)
OUTPUT_GATE(kiln_output_gate_f32_bf16, float, gop)
OUTPUT_GATE(kiln_output_gate_bf16_f32, bf16, float)
OUTPUT_GATE(kiln_output_gate_bf16_bf16, bf16, gop)

// silu(g) * u as the down projection's input: times 2^-GOP_DOWN_LOG2 in an fp16 plan
// (common.cuh), exactly; as is otherwise.
__device__ __forceinline__ float down_in(float silu_g_u) {
#if KILN_GEMM_F16
    return silu_g_u * (1.f / (1 << GOP_DOWN_LOG2));
#else
    return silu_g_u;
#endif
}

// silu(g) * u for 4 consecutive outputs: one expression for silu_mul and silu_mul_parts.
template <typename OUT>
__device__ __forceinline__ void store_silu_mul4(OUT* o, const float (&gv)[4], const float (&uv)[4]) {
    float y[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) y[e] = down_in(siluf_(gv[e]) * uv[e]);
    storen<4>(o, y);
}

// Four consecutive elements per thread: 16-byte (f32) / 8-byte (bf16) accesses when
// n, ld_in, up_off and ld_out are all multiples of 4, element by element otherwise.
template <typename IN, typename OUT>
__device__ __forceinline__ void silu_mul(const IN* __restrict__ gu, int ld_in, int up_off, OUT* __restrict__ out,
                                         int ld_out, int n, int M) {
    KILN_PDL_ENTER_ROWS(M);
    const int m = blockIdx.y;
    const int i = (blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (m >= M || i >= n) return;
    const IN* g = gu + (size_t)m * ld_in + i;
    OUT* o = out + (size_t)m * ld_out + i;
    if (((n | ld_in | up_off | ld_out) & 3) == 0) {
        float gv[4], uv[4];
        loadn<4>(g, gv);
        loadn<4>(g + up_off, uv);
        store_silu_mul4(o, gv, uv);
    } else {
        for (int e = 0; e < 4 && i + e < n; ++e) o[e] = from_f<OUT>(down_in(siluf_(to_f(g[e])) * to_f(g[up_off + e])));
    }
}

#define SILU_MUL(NAME, IN, OUT)                                                                   \
    extern "C" __global__ void __launch_bounds__(256)                                             \
        NAME(const IN* gu, int ld_in, int up_off, OUT* out, int ld_out, int n, int M) {           \
        silu_mul<IN, OUT>(gu, ld_in, up_off, out, ld_out, n, M);                                  \
    }
SILU_MUL(kiln_silu_mul_f32_f32, float, float)
SILU_MUL(kiln_silu_mul_f32_bf16, float, gop)
SILU_MUL(kiln_silu_mul_bf16_f32, bf16, float)
SILU_MUL(kiln_silu_mul_bf16_bf16, bf16, gop)

// Partials of gate and up loaded at once per thread (four outputs each): the gate_up
// GEMM's 3 splits (132 or 148 SMs) in one L2 round trip.
#define GLU_PARTS_IN 4

// silu_mul over a split-K GEMM's partials (gemm.cu with counters NULL): the gate and up
// values are first summed in split order from 0 (sum_parts_4x2, as the GEMM's own last
// block and the norm of deferred partials add them), so the output has the bits of gemm +
// silu_mul without the GEMM's tail (fence, counter, last-block sum). The sum is held in a
// register where the GEMM stored and reloaded it: the same fp32 value.
template <typename OUT>
__device__ __forceinline__ void silu_mul_parts(const float* __restrict__ parts, int splits, long long split_stride,
                                               int ld_in, int up_off, OUT* __restrict__ out, int ld_out, int n,
                                               int M) {
    KILN_PDL_ENTER_ROWS(M);
    const int m = blockIdx.y;
    const int i = (blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (m >= M || i >= n) return;
    const float* g = parts + (size_t)m * ld_in + i;
    OUT* o = out + (size_t)m * ld_out + i;
    const bool vec = ((n | ld_in | up_off | ld_out) & 3) == 0 && (split_stride & 3) == 0 &&
                     (reinterpret_cast<size_t>(parts) & 15) == 0;
    if (vec) {
        float4 gs, us;
        sum_parts_4x2<GLU_PARTS_IN>(g, up_off, splits, split_stride, gs, us);
        const float gv[4] = {gs.x, gs.y, gs.z, gs.w}, uv[4] = {us.x, us.y, us.z, us.w};
        store_silu_mul4(o, gv, uv);
    } else {
        for (int e = 0; e < 4 && i + e < n; ++e) {
            float gs = 0.f, us = 0.f;
            for (int sp = 0; sp < splits; ++sp) {
                gs += __ldcg(g + (size_t)sp * split_stride + e);
                us += __ldcg(g + (size_t)sp * split_stride + up_off + e);
            }
            o[e] = from_f<OUT>(down_in(siluf_(gs) * us));
        }
    }
}

#define SILU_MUL_PARTS(NAME, OUT)                                                                 \
    extern "C" __global__ void __launch_bounds__(256)                                             \
        NAME(const float* parts, int splits, long long split_stride, int ld_in, int up_off,       \
             OUT* out, int ld_out, int n, int M) {                                                \
        silu_mul_parts<OUT>(parts, splits, split_stride, ld_in, up_off, out, ld_out, n, M);       \
    }
SILU_MUL_PARTS(kiln_silu_mul_parts_f32, float)
SILU_MUL_PARTS(kiln_silu_mul_parts_bf16, gop)

// A (value, index) candidate as one 64-bit key: larger key = better candidate. High
// word: the float's bits mapped to an unsigned order (-0 first made +0, so the two
// tie); low word: 0x7fffffff - index, so the smaller index wins a tie. NaN (and "no
// candidate") is key 0, below every number, -inf included.
__device__ __forceinline__ unsigned long long amax_key(float v, int i) {
    if (v != v) return 0ull;
    if (v == 0.f) v = 0.f;
    unsigned b = __float_as_uint(v);
    b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    return ((unsigned long long)b << 32) | (unsigned)(0x7fffffff - i);
}
__device__ __forceinline__ int amax_index(unsigned long long key) {
    return key == 0ull ? 0 : 0x7fffffff - (int)(unsigned)(key & 0xffffffffull);
}

#define AMAX_THREADS 256
#define AMAX_PER_THREAD 8
#define AMAX_SLICE (AMAX_THREADS * AMAX_PER_THREAD)
static_assert(AMAX_SLICE == KILN_ARGMAX_SLICE, "the launcher's slice (registry.rs) differs from this kernel's");

// MASKED: only the ids whose bit is set in `mask` compete (nullptr otherwise). One
// block: the best key of slice blockIdx.x of the row, folded into keys[m]; the row's
// last block writes out[m] and leaves keys[m] and counters[m] zero.
template <typename T, bool MASKED>
__device__ __forceinline__ void argmax_slice(const T* __restrict__ row, int n, const unsigned* __restrict__ mask,
                                             int m, int* __restrict__ out, unsigned long long* __restrict__ keys,
                                             unsigned* __restrict__ counters) {
    __shared__ unsigned long long sk[AMAX_THREADS / 32];
    const int base = blockIdx.x * AMAX_SLICE + threadIdx.x;
    float v[AMAX_PER_THREAD];
#pragma unroll
    for (int j = 0; j < AMAX_PER_THREAD; ++j) {  // coalesced, all loads in flight at once
        const int i = base + j * AMAX_THREADS;
        v[j] = i < n ? to_f(row[i]) : __int_as_float(0x7fc00000);
    }
    unsigned long long best = 0ull;
#pragma unroll
    for (int j = 0; j < AMAX_PER_THREAD; ++j) {
        const int i = base + j * AMAX_THREADS;
        if (MASKED && i < n && !((mask[i >> 5] >> (i & 31)) & 1u)) continue;
        best = max(best, amax_key(v[j], i));
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) best = max(best, __shfl_xor_sync(0xffffffffu, best, o));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) sk[warp] = best;
    __syncthreads();
    if (threadIdx.x == 0) {
#pragma unroll
        for (int w = 1; w < AMAX_THREADS / 32; ++w) best = max(best, sk[w]);
        if (best != 0ull) atomicMax(&keys[m], best);
        __threadfence();
        if (atomicAdd(&counters[m], 1u) == gridDim.x - 1) {
            __threadfence();
            out[m] = amax_index(atomicExch(&keys[m], 0ull));
            counters[m] = 0u;
        }
    }
}

template <typename T>
__device__ __forceinline__ void argmax(const T* __restrict__ logits, int ld, int n, int* __restrict__ out, int M,
                                       unsigned long long* __restrict__ keys, unsigned* __restrict__ counters) {
    KILN_PDL_ENTER();
    const int m = blockIdx.y;
    if (m >= M) return;
    argmax_slice<T, false>(logits + (size_t)m * ld, n, nullptr, m, out, keys, counters);
}

extern "C" __global__ void __launch_bounds__(AMAX_THREADS)
    kiln_argmax_f32(const float* logits, int ld, int n, int* out, int M, unsigned long long* keys, unsigned* counters) {
    argmax<float>(logits, ld, n, out, M, keys, counters);
}
extern "C" __global__ void __launch_bounds__(AMAX_THREADS)
    kiln_argmax_bf16(const bf16* logits, int ld, int n, int* out, int M, unsigned long long* keys, unsigned* counters) {
    argmax<bf16>(logits, ld, n, out, M, keys, counters);
}

extern "C" __global__ void __launch_bounds__(AMAX_THREADS)
    kiln_argmax_masked_f32(const float* logits, int ld, int n, const int* mask_rows, const unsigned* masks, int words,
                           int* out, int M, unsigned long long* keys, unsigned* counters) {
    KILN_PDL_ENTER();
    const int m = blockIdx.y;
    if (m >= M) return;
    const int k = mask_rows[m];
    if (k < 0) return;  // every block of the row: its counter is never touched
    n = min(n, 32 * words);
    argmax_slice<float, true>(logits + (size_t)m * ld, n, masks + (size_t)k * words, m, out, keys, counters);
}

extern "C" __global__ void __launch_bounds__(256) kiln_f32_to_bf16(const float* __restrict__ x, gop* __restrict__ y, int n) {
    // Like every kiln kernel: under PDL (the decode graphs), wait for the predecessor's
    // writes (with KILN_ACT=bf16 this reads the attention combine's output).
    KILN_PDL_ENTER();
    const int i = (blockIdx.x * 256 + threadIdx.x) * 4;
    if (i + 3 < n) {
        const float4 v = *reinterpret_cast<const float4*>(x + i);
        *reinterpret_cast<unsigned*>(y + i) = pack_gop2(v.x, v.y);
        *reinterpret_cast<unsigned*>(y + i + 2) = pack_gop2(v.z, v.w);
    } else {
        for (int j = i; j < n; j++) y[j] = from_f<gop>(x[j]);
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
    kiln_gather_rows_bf16(const gop* src, const int* rows, gop* dst, int width, int n) {
    gather_rows<gop>(src, rows, dst, width, n);
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

extern "C" __global__ void __launch_bounds__(256) kiln_spec_feed(const int* drafts, const int* feeds, int n, int* ids, int* mtp_ids) {
    KILN_PDL_ENTER();
    for (int e = threadIdx.x; e < n; e += blockDim.x) {
        const int t = drafts[feeds[2 * e]], r = feeds[2 * e + 1];
        ids[r] = t;
        if (mtp_ids) mtp_ids[r] = t;
    }
}

extern "C" __global__ void __launch_bounds__(256) kiln_spec_accept(const int* ids, const int* greedy, const int* rows, int n,
                                                                  int positions, int* accepted,
                                                                  unsigned long long* segs, const int* tags,
                                                                  int nsegs) {
    KILN_PDL_ENTER();
    __shared__ int acc[256];
    for (int i = threadIdx.x; i < n && i < 256; i += blockDim.x) {
        const int* r = rows + (size_t)i * positions;
        int a = 1;
        while (a < positions && r[a] >= 0 && ids[r[a]] == greedy[r[a - 1]]) ++a;
        acc[i] = a;
        accepted[i] = a;
    }
    __syncthreads();
    for (int s = threadIdx.x; s < nsegs; s += blockDim.x) {
        const int t = tags[s];
        if (acc[t >> 4] != (t & 15)) segs[3 * s + 2] = 0;
    }
}
