// kiln kernels: shared definitions.
//
// Every kernel source includes this header. The model's dimensions are compile-time
// constants passed with -D by src/backend/cuda/compile.rs (KernelDims::defines):
//   HIDDEN, INTER, VOCAB                      hidden size, MLP width, embedding rows
//   NUM_HEADS, NUM_KV_HEADS, HEAD_DIM         full attention (GQA)
//   ROTARY_DIM, ROPE_THETA                    partial rotate-half RoPE (first ROTARY_DIM dims)
//   LIN_NK, LIN_NV, LIN_DK, LIN_DV            Gated DeltaNet key/value heads and widths
//   CONV_K                                    depthwise causal conv kernel size
//   RMS_EPS                                   RMSNorm epsilon (float literal)
// Storage is bf16 (weights, activations between GEMMs, KV cache) or fp32 (residual
// stream, recurrent and conv state, norms' statistics); arithmetic is fp32.
// Only instructions that exist on both sm_90 and sm_100 are used (mma.sync, ld.global.nc).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#if !defined(HIDDEN) || !defined(INTER) || !defined(VOCAB) || !defined(NUM_HEADS) ||        \
    !defined(NUM_KV_HEADS) || !defined(HEAD_DIM) || !defined(ROTARY_DIM) ||                 \
    !defined(ROPE_THETA) || !defined(LIN_NK) || !defined(LIN_NV) || !defined(LIN_DK) ||      \
    !defined(LIN_DV) || !defined(CONV_K) || !defined(RMS_EPS)
#error "kiln kernels need the model dimensions as -D defines (see compile.rs)"
#endif

typedef __nv_bfloat16 bf16;
typedef __nv_bfloat162 bf162;

// Derived Gated DeltaNet sizes: conv/qkv channels are [q (NK*DK) | k (NK*DK) | v (NV*DV)].
#define LIN_KEY_DIM (LIN_NK * LIN_DK)
#define LIN_VALUE_DIM (LIN_NV * LIN_DV)
#define CONV_DIM (2 * LIN_KEY_DIM + LIN_VALUE_DIM)
#define GQA_GROUP (NUM_HEADS / NUM_KV_HEADS)
#define GDN_GROUP (LIN_NV / LIN_NK)

static_assert(HIDDEN % 8 == 0, "HIDDEN must be a multiple of 8 (16-byte vectors)");
static_assert(NUM_HEADS % NUM_KV_HEADS == 0, "query heads must be a multiple of KV heads");
static_assert(LIN_NV % LIN_NK == 0, "value heads must be a multiple of key heads");
static_assert(HEAD_DIM % 32 == 0 && HEAD_DIM <= 256, "HEAD_DIM must be a multiple of 32, at most 256");
static_assert(ROTARY_DIM % 2 == 0 && ROTARY_DIM <= HEAD_DIM, "ROTARY_DIM must be even and <= HEAD_DIM");
static_assert(CONV_K >= 2 && CONV_K <= 8, "CONV_K out of range");

// Programmatic dependent launch (sm_90+): a kernel launched with the programmatic
// stream serialization attribute may start before its predecessor finishes; it must wait
// (griddepcontrol.wait) before touching anything a predecessor writes, and it lets its
// successor launch with griddepcontrol.launch_dependents. Every kiln kernel enters through
// KILN_PDL_ENTER() or KILN_PDL_ENTER_ROWS(rows), which do both (weights, which nothing
// writes, may be prefetched before). Both are no-ops for an ordinary launch.
// Two orders: late (wait, then launch the successor) and early (launch the successor,
// then wait), where a chain of kernels can become resident ahead of the one running and
// the GEMMs pull their first weights into L2 meanwhile. The wait still orders every read
// after the predecessor's writes (it waits for the predecessor's completion, which waited
// for its own predecessor).
// KILN_PDL_EARLY=1 (the default kiln-build passes; KILN_PDL_EARLY=0 opts out) takes the
// early order in KILN_PDL_ENTER(), and in KILN_PDL_ENTER_ROWS(rows) for launches of up to
// KILN_PDL_EARLY_ROWS rows (batch rows of a decode kernel): measured -8 % per step at
// batch 1 and 8 on the H100, but +2.8 % at batch 64, where the successor's waiting blocks
// hold registers and shared memory that a big grid's later blocks need. The branch is
// uniform: `rows` is a launch argument.
#ifndef KILN_PDL_EARLY
#define KILN_PDL_EARLY 0
#endif
#ifndef KILN_PDL_EARLY_ROWS
#define KILN_PDL_EARLY_ROWS 16
#endif
#define KILN_GRIDDEP_WAIT() asm volatile("griddepcontrol.wait;" ::: "memory")
#define KILN_GRIDDEP_LAUNCH() asm volatile("griddepcontrol.launch_dependents;" ::: "memory")

// In-graph timeline (a diagnostic build: kiln-build with KILN_TIMELINE=1; kiln-eval
// timeline reads it). Thread 0 of every block of every kernel that enters through
// KILN_PDL_ENTER* keeps three %globaltimer readings: when it reached the PDL entry (before
// the wait), when the wait released it, and when it returned; with the launch's %gridid,
// its SM and block, and the module and source line of the entry, it writes them as one
// record into the buffer the host put in `kiln_timeline` (null: nothing is recorded).
// The record's slot is claimed with an atomic issued at the entry whose result is first
// used at the return, so the block does not wait for it. Buffer: [0] records claimed,
// [1] capacity, [2] the module's index (set per module), records of 6 u64 from [8].
// Every KILN_PDL_ENTER* call sits at the top scope of its kernel's function, so the
// record's destructor runs at the block's return.
#ifndef KILN_TIMELINE
#define KILN_TIMELINE 0
#endif
#if KILN_TIMELINE
extern "C" {
__device__ unsigned long long* kiln_timeline = nullptr;
__device__ unsigned long long kiln_timeline_module = 0;
}
namespace kiln {
__device__ __forceinline__ unsigned long long globaltimer() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
struct TimelineBlock {
    unsigned long long* buf;
    unsigned long long slot, t_enter, t_wait;
    int line;
    __device__ explicit TimelineBlock(int source_line) : buf(nullptr), slot(0), t_enter(0), t_wait(0), line(source_line) {
        if (threadIdx.x + threadIdx.y + threadIdx.z != 0 || kiln_timeline == nullptr) return;
        buf = kiln_timeline;
        t_enter = globaltimer();
        slot = atomicAdd(buf, 1ull);
    }
    __device__ void waited() {
        if (buf) t_wait = globaltimer();
    }
    __device__ ~TimelineBlock() {
        if (!buf) return;
        const unsigned long long t_end = globaltimer();
        if (slot >= buf[1]) return;
        unsigned long long grid, smid;
        asm volatile("mov.u64 %0, %%gridid;" : "=l"(grid));
        asm volatile("{ .reg .u32 s; mov.u32 s, %%smid; cvt.u64.u32 %0, s; }" : "=l"(smid));
        const unsigned long long blk = blockIdx.x + (unsigned long long)gridDim.x * (blockIdx.y + (unsigned long long)gridDim.y * blockIdx.z);
        unsigned long long* r = buf + 8 + 6 * slot;
        r[0] = t_enter;
        r[1] = t_wait;
        r[2] = t_end;
        r[3] = grid;
        r[4] = (smid << 32) | (blk & 0xffffffffull);
        r[5] = (kiln_timeline_module << 32) | (unsigned)line;
    }
};
}  // namespace kiln
#define KILN_TL_ENTER kiln::TimelineBlock kiln_timeline_block_(__LINE__);
#define KILN_TL_WAITED kiln_timeline_block_.waited();
#else
#define KILN_TL_ENTER
#define KILN_TL_WAITED
#endif

// Not wrapped in do { } while (0): with KILN_TIMELINE the record lives in the caller's scope.
#define KILN_PDL_ENTER_IF_EARLY(early)            \
    KILN_TL_ENTER                                 \
    do {                                          \
        const bool kiln_pdl_early_ = (early);     \
        if (kiln_pdl_early_) KILN_GRIDDEP_LAUNCH(); \
        KILN_GRIDDEP_WAIT();                      \
        if (!kiln_pdl_early_) KILN_GRIDDEP_LAUNCH(); \
    } while (0);                                  \
    KILN_TL_WAITED                                \
    do {                                          \
    } while (0)
#define KILN_PDL_ENTER() KILN_PDL_ENTER_IF_EARLY(KILN_PDL_EARLY)
#define KILN_PDL_ENTER_ROWS(rows) KILN_PDL_ENTER_IF_EARLY(KILN_PDL_EARLY && (rows) <= KILN_PDL_EARLY_ROWS)

namespace kiln {

#define KILN_INF __int_as_float(0x7f800000)

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f<bf16>(float x) { return __float2bfloat16_rn(x); }

__device__ __forceinline__ unsigned pack_bf16x2(float lo, float hi) {
    bf162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<unsigned*>(&v);
}
__device__ __forceinline__ float bf16lo(unsigned v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float bf16hi(unsigned v) { return __uint_as_float(v & 0xffff0000u); }
// {bf16x2 hi, bf16x2 lo} of two floats: x ~= hi + lo to about 16 mantissa bits (how the
// kernels feed fp32 operands to bf16 tensor cores at near-fp32 accuracy).
__device__ __forceinline__ uint2 split_bf16x2(float x0, float x1) {
    const unsigned hi = pack_bf16x2(x0, x1);
    return make_uint2(hi, pack_bf16x2(x0 - bf16lo(hi), x1 - bf16hi(hi)));
}

// The GEMMs' 16-bit operand (docs/numerics.md): the type of every GEMM weight and of
// every GEMM input written in 16 bits. bf16 by default, where fp32 x goes to the tensor
// cores as bf16 hi + lo (two MMAs per product, ~16 bits of x). A plan built with
// KILN_GEMM_F16=1 holds its GEMM weights (and the tied embedding) as fp16 and feeds x as
// fp16: one MMA per product, 11 bits of x, W exact for |w| >= 2^-14 (docs/numerics.md has
// the emulated accuracy of both). Only the GEMMs (gemm.cu, gemm_tiled.cu) and the
// kernels that write their 16-bit inputs or read their weights use `gop`; the KV cache and
// every other bf16 tensor stay bf16.
#ifndef KILN_GEMM_F16
#define KILN_GEMM_F16 0
#endif
#if KILN_GEMM_F16
typedef __half gop;
#else
typedef bf16 gop;
#endif
// Whether a GEMM's fp32 x has a lo part (a second MMA per product).
#define GOP_LO (!KILN_GEMM_F16)
// fp16 holds |x| <= 65504. A normalised GEMM input stays far below (|x| <= sqrt(HIDDEN)
// x |1 + w|), but silu(gate) x up, the down projection's input, has no such bound: in an
// fp16 plan it is written times 2^-GOP_DOWN_LOG2 and the down weights are packed times
// 2^+GOP_DOWN_LOG2, exact powers of two whose product is 1 (compile.rs passes the one
// number, src/plan/layout.rs DOWN_SCALE_LOG2), so fp16 holds inputs up to ~1M.
#if KILN_GEMM_F16 && !defined(GOP_DOWN_LOG2)
#error "fp16 GEMM kernels need GOP_DOWN_LOG2 (compile.rs passes plan::layout::DOWN_SCALE_LOG2)"
#endif
// A pair of 16-bit floats in one 32-bit word, per type: pack (round to nearest), the
// two halves' values, one element.
template <typename T> struct H16;
template <> struct H16<bf16> {
    static __device__ __forceinline__ unsigned pack(float lo, float hi) { return pack_bf16x2(lo, hi); }
    static __device__ __forceinline__ float lo(unsigned v) { return bf16lo(v); }
    static __device__ __forceinline__ float hi(unsigned v) { return bf16hi(v); }
    static __device__ __forceinline__ bf16 one(float x) { return __float2bfloat16_rn(x); }
};
template <> struct H16<__half> {
    static __device__ __forceinline__ unsigned pack(float lo, float hi) {
        __half2 v = __floats2half2_rn(lo, hi);
        return *reinterpret_cast<unsigned*>(&v);
    }
    static __device__ __forceinline__ float lo(unsigned v) { return __half2float(__ushort_as_half((unsigned short)(v & 0xffffu))); }
    static __device__ __forceinline__ float hi(unsigned v) { return __half2float(__ushort_as_half((unsigned short)(v >> 16))); }
    static __device__ __forceinline__ __half one(float x) { return __float2half_rn(x); }
};
// Two floats rounded to a pair of GEMM operands (round to nearest, as cuBLASLt's inputs
// and every decode GEMM's x): the same bits whoever rounds them.
__device__ __forceinline__ unsigned pack_gop2(float lo, float hi) { return H16<gop>::pack(lo, hi); }
// The lo pair of two fp32 x whose hi pair is `hi` (pack_gop2): bf16(x - hi), or 0 with
// fp16 operands (GOP_LO 0).
__device__ __forceinline__ unsigned gop_lo2(float x0, float x1, unsigned hi) {
#if KILN_GEMM_F16
    return 0u;
#else
    return pack_bf16x2(x0 - bf16lo(hi), x1 - bf16hi(hi));
#endif
}
// {hi, lo} operand pairs of two fp32 x: bf16 hi + lo, or fp16 and no lo (GOP_LO 0).
__device__ __forceinline__ uint2 gop_split2(float x0, float x1) {
    const unsigned hi = pack_gop2(x0, x1);
    return make_uint2(hi, gop_lo2(x0, x1, hi));
}
// 8 consecutive elements <-> 8 floats (16-byte aligned for bf16, 32-byte for float).
template <typename T> __device__ __forceinline__ void load8_16(const T* p, float* o) {
    using H = H16<T>;
    uint4 u = *reinterpret_cast<const uint4*>(p);
    o[0] = H::lo(u.x); o[1] = H::hi(u.x); o[2] = H::lo(u.y); o[3] = H::hi(u.y);
    o[4] = H::lo(u.z); o[5] = H::hi(u.z); o[6] = H::lo(u.w); o[7] = H::hi(u.w);
}
__device__ __forceinline__ void load8(const bf16* p, float* o) { load8_16(p, o); }
__device__ __forceinline__ void load8(const float* p, float* o) {
    float4 a = *reinterpret_cast<const float4*>(p);
    float4 b = *reinterpret_cast<const float4*>(p + 4);
    o[0] = a.x; o[1] = a.y; o[2] = a.z; o[3] = a.w; o[4] = b.x; o[5] = b.y; o[6] = b.z; o[7] = b.w;
}
template <typename T> __device__ __forceinline__ void store8_16(T* p, const float* v) {
    using H = H16<T>;
    uint4 u;
    u.x = H::pack(v[0], v[1]); u.y = H::pack(v[2], v[3]);
    u.z = H::pack(v[4], v[5]); u.w = H::pack(v[6], v[7]);
    *reinterpret_cast<uint4*>(p) = u;
}
__device__ __forceinline__ void store8(bf16* p, const float* v) { store8_16(p, v); }
__device__ __forceinline__ void store8(float* p, const float* v) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
    *reinterpret_cast<float4*>(p + 4) = make_float4(v[4], v[5], v[6], v[7]);
}

// N consecutive elements (N in 1, 2, 4, 8), vectorised (p aligned to N elements).
template <int N> __device__ __forceinline__ void loadn(const bf16* p, float* o) {
    if constexpr (N == 8) {
        load8(p, o);
    } else if constexpr (N == 4) {
        uint2 u = *reinterpret_cast<const uint2*>(p);
        o[0] = bf16lo(u.x); o[1] = bf16hi(u.x); o[2] = bf16lo(u.y); o[3] = bf16hi(u.y);
    } else if constexpr (N == 2) {
        unsigned u = *reinterpret_cast<const unsigned*>(p);
        o[0] = bf16lo(u); o[1] = bf16hi(u);
    } else {
        o[0] = __bfloat162float(*p);
    }
}
template <int N> __device__ __forceinline__ void loadn(const float* p, float* o) {
    if constexpr (N == 4) {
        const float4 v = *reinterpret_cast<const float4*>(p);
        o[0] = v.x; o[1] = v.y; o[2] = v.z; o[3] = v.w;
    } else {
#pragma unroll
        for (int i = 0; i < N; ++i) o[i] = p[i];
    }
}
template <int N, typename T> __device__ __forceinline__ void storen_16(T* p, const float* v) {
    using H = H16<T>;
    if constexpr (N == 8) {
        store8_16(p, v);
    } else if constexpr (N == 4) {
        *reinterpret_cast<uint2*>(p) = make_uint2(H::pack(v[0], v[1]), H::pack(v[2], v[3]));
    } else if constexpr (N == 2) {
        *reinterpret_cast<unsigned*>(p) = H::pack(v[0], v[1]);
    } else {
#pragma unroll
        for (int i = 0; i < N; ++i) p[i] = H::one(v[i]);
    }
}
template <int N> __device__ __forceinline__ void storen(bf16* p, const float* v) { storen_16<N>(p, v); }
template <int N> __device__ __forceinline__ void storen(float* p, const float* v) {
    if constexpr (N == 4) {
        *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
    } else if constexpr (N == 2) {
        *reinterpret_cast<float2*>(p) = make_float2(v[0], v[1]);
    } else {
#pragma unroll
        for (int i = 0; i < N; ++i) p[i] = v[i];
    }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024). `red` is
// shared scratch of 32 floats. Every thread gets the result. Contains barriers.
__device__ __forceinline__ float block_sum(float v, float* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // red may still be read by a previous call
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float t = lane < nw ? red[lane] : 0.f;
    return warp_sum(t);
}

// Thread block clusters (sm_90+): a barrier over the whole cluster (release/acquire, so
// shared-memory writes before it are visible to the cluster's blocks after it).
__device__ __forceinline__ void cluster_barrier() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

// Whether this block is the last of `arrivals` blocks to count itself on `counter` (the
// same answer in every thread of the block): every thread's earlier global writes are
// fenced before the count, and the last block fences again before it reads the others'.
// The split-K sums and the fused decode attention's combine run in that block; it resets
// the counter for the next launch.
__device__ __forceinline__ bool block_arrives_last(unsigned* counter, unsigned arrivals) {
    __shared__ unsigned arrived_last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) arrived_last = atomicAdd(counter, 1u) == arrivals - 1;
    __syncthreads();
    if (!arrived_last) return false;
    __threadfence();
    return true;
}

// The same without ordering memory (no fence): for a barrier that only keeps blocks alive
// while others read their shared memory, after every such read has been consumed.
__device__ __forceinline__ void cluster_barrier_relaxed() {
    asm volatile("barrier.cluster.arrive.relaxed.aligned;\n\tbarrier.cluster.wait.aligned;" ::: "memory");
}

// The float at `p` (this block's shared memory) in the shared memory of cluster block `rank`.
__device__ __forceinline__ float ld_cluster_f32(const float* p, unsigned rank) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    unsigned remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(a), "r"(rank));
    float v;
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(remote) : "memory");
    return v;
}

__device__ __forceinline__ float sigmoidf_(float x) { return 1.f / (1.f + expf(-x)); }
__device__ __forceinline__ float siluf_(float x) { return x / (1.f + expf(-x)); }
// The sums of two groups of 4 consecutive outputs (at p and at p + off) over `splits` fp32
// split-K partials split_stride floats apart, each in split order from 0, as a split-K
// GEMM's last block adds them (gemm.cu reduce_splits, gemm_tiled.cu tg_split_sum): the
// same bits. IN partials of each group are loaded at once (one L2 round trip for IN
// splits); the order of the additions does not depend on IN. 16-byte aligned loads.
template <int IN>
__device__ __forceinline__ void sum_parts_4x2(const float* __restrict__ p, int off, int splits,
                                              long long split_stride, float4& a_sum, float4& b_sum) {
    a_sum = make_float4(0.f, 0.f, 0.f, 0.f);
    b_sum = a_sum;
    for (int sp = 0; sp < splits; sp += IN) {
        float4 a[IN], b[IN];
#pragma unroll
        for (int u = 0; u < IN; ++u)
            if (sp + u < splits) {
                const float* q = p + (size_t)(sp + u) * split_stride;
                a[u] = __ldcg(reinterpret_cast<const float4*>(q));
                b[u] = __ldcg(reinterpret_cast<const float4*>(q + off));
            }
#pragma unroll
        for (int u = 0; u < IN; ++u)
            if (sp + u < splits) {
                a_sum.x += a[u].x; a_sum.y += a[u].y; a_sum.z += a[u].z; a_sum.w += a[u].w;
                b_sum.x += b[u].x; b_sum.y += b[u].y; b_sum.z += b[u].z; b_sum.w += b[u].w;
            }
    }
}
#if KILN_GEMM_F16
// The same for fp16 GEMM operands (with KILN_GEMM_F16 = 0, gop is bf16: the overloads above).
__device__ __forceinline__ void load8(const gop* p, float* o) { load8_16(p, o); }
__device__ __forceinline__ void store8(gop* p, const float* v) { store8_16(p, v); }
template <int N> __device__ __forceinline__ void storen(gop* p, const float* v) { storen_16<N>(p, v); }
#endif
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }

// torch.nn.functional.softplus (beta 1, threshold 20).
__device__ __forceinline__ float softplusf_(float x) { return x > 20.f ? x : log1pf(expf(x)); }

// Tensor-core building blocks (sm_80+ instructions, present on sm_90 and sm_100).
// d += a * b, m16n8k16, bf16 operands, fp32 accumulators. Fragment layouts (g = lane/4,
// t = lane%4): a[0..3] = A(g, 2t..), A(g+8, 2t..), A(g, 2t+8..), A(g+8, 2t+8..);
// b[0..1] = B(2t.., g), B(2t+8.., g); d[0..3] = D(g, 2t), D(g, 2t+1), D(g+8, 2t), D(g+8, 2t+1).
__device__ __forceinline__ void mma_16816(float* d, const unsigned* a, const unsigned* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// d += a * b on GEMM operands (bf16, or fp16 with KILN_GEMM_F16), same fragments.
__device__ __forceinline__ void mma_gop(float* d, const unsigned* a, const unsigned* b) {
#if KILN_GEMM_F16
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    mma_16816(d, a, b);
#endif
}

// Four 8x8 bf16 matrices from shared memory; lane l gives the address of row l%8 of
// matrix l/8 (16-byte aligned rows). Plain: r[i] = M_i(g, 2t..2t+1); trans: r[i] = M_i(2t..2t+1, g).
__device__ __forceinline__ void ldsm_x4(unsigned* r, const bf16* p) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void ldsm_x4_trans(unsigned* r, const bf16* p) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}

// 16 bytes global -> shared without registers (L2 only); ok = false zero-fills the
// destination and reads nothing. Completion: cp_async_commit() closes a group,
// cp_async_wait<N>() waits until at most N groups are still in flight.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool ok) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    const int n = ok ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(s), "l"(gmem), "r"(n) : "memory");
}
// Asks L2 to fetch `bytes` (a multiple of 16) from a 16-byte-aligned global address; no
// registers, no completion to wait for (sm_90+: cp.async.bulk, also on sm_100).
__device__ __forceinline__ void prefetch_l2(const void* gmem, unsigned bytes) {
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(gmem), "r"(bytes) : "memory");
}
// Columns of each weight row a GEMM block asks L2 for before its PDL wait (KILN_PDL_EARLY):
// KILN_PF_K, or fewer where the whole GEMM's request (N rows x splits) would pass
// KILN_PF_BUDGET bytes (a share of L2), and none below KILN_PF_MIN_K (the lm_head's
// 248K rows). Shortening instead of switching off mattered in session 7 (the batch-1 step
// 4.89 -> 5.50 ms without it, H100). Off by default since session 26: with the packed
// weights, the spread register kernel and the cluster norms, the step is faster without
// it (H100, two runs each, logits bit-identical: batch 1 3.80 -> 3.75 ms, 4 4.09 -> 4.04, 8
// 4.49 -> 4.31; a 40 MB budget was 4-5 % slower). KILN_PF_BUDGET_MB=24 (kiln-build) brings
// it back.
#ifndef KILN_PF_K
#define KILN_PF_K 256
#endif
#define KILN_PF_MIN_K 64
#ifndef KILN_PF_BUDGET_MB
#define KILN_PF_BUDGET_MB 0
#endif
#define KILN_PF_BUDGET ((size_t)KILN_PF_BUDGET_MB << 20)
// Launches of more than KILN_PF_MAX_ROWS batch rows skip it: the tiled GEMM at batch 32
// and 64 steps 0.27 and 0.36 ms faster without it (H100, session 7); the prefetch's L2
// requests compete with the bigger grid's own loads. KILN_PF_MAX_ROWS=R (kiln-build) sets it.
#ifndef KILN_PF_MAX_ROWS
#define KILN_PF_MAX_ROWS 16
#endif
__device__ __forceinline__ int prefetch_cols(int N, int splits, int ks) {
    const size_t fit = KILN_PF_BUDGET / ((size_t)N * splits * 2);
    const int cols = (int)min((size_t)min(ks, KILN_PF_K), fit) & ~7;  // 16-byte multiples
    return cols >= KILN_PF_MIN_K ? cols : 0;
}
// The first element of the 16-row tile holding `row` in the packed layout (below).
__device__ __forceinline__ const bf16* w_tile(const bf16* W, int row, int K) { return W + (size_t)(row >> 4) * 16 * K; }
// KILN_PDL_EARLY: before the PDL wait, thread `idx` of a group that owns W rows row0 ..
// row0 + rows (one thread per row) of a launch over M batch rows asks L2 for up to
// prefetch_cols of its row's columns after the `skip` its split already loads.
// With `w_packed` (the packed layout below; row0 and rows multiples of 16, kb + skip of 32) the
// same bytes: tile (row0 + idx) / 16's elements from (kb + skip) * 16, piece idx % 16.
__device__ __forceinline__ void prefetch_rows_early(const bf16* __restrict__ W, int row0, int rows, int idx, int M,
                                                    int N, int K, int kb, int ke, int skip, int splits, int ks,
                                                    int w_packed = 0) {
#if KILN_PDL_EARLY
    const int cols = min(ke - kb - skip, prefetch_cols(N, splits, ks));
    if (M <= KILN_PF_MAX_ROWS && idx < rows && row0 + idx < N && cols > 0) {
        const int row = row0 + idx;
        const bf16* p = w_packed ? w_tile(W, row, K) + (size_t)(kb + skip) * 16 + (size_t)(row & 15) * cols
                                 : W + (size_t)row * K + kb + skip;
        prefetch_l2(p, (unsigned)cols * 2);
    }
#endif
}

// The packed weight layout (kiln_pack_weight; src/backend/weight_pack.rs is its CPU twin).
// W[N][K] (N % 16 == 0, K % 32 == 0) as N / 16 tiles of 16 rows, each 16 K contiguous
// elements; a tile's 32-k chunk c is 512 contiguous elements, its half h (rows 8h..8h+7) at
// 256 h, and the 8 k of row 8h + g at k = 32c + 8t at (4g + t) * 8: the 16 bytes that
// lane 4g + t of a warp loads for its m16n8k16 A fragments. A warp's chunk is one 1 KB
// stretch instead of 16 pieces of 64 bytes K * 2 bytes apart (membench: 4-14 % faster
// reads). The same elements reach the same registers, so every bit stays the same.
// The lane's first element of `row` at split start kb (a multiple of 32) in either layout,
// and the elements from one 32-k chunk to the next.
__device__ __forceinline__ const bf16* w_lane_ptr(const bf16* W, int w_packed, int row, int K, int kb, int t) {
    return w_packed ? w_tile(W, row, K) + (size_t)(kb >> 5) * 512 + ((row & 15) >> 3) * 256 + ((row & 7) * 4 + t) * 8
                    : W + (size_t)row * K + kb + t * 8;
}
__device__ __forceinline__ int w_chunk_step(int w_packed) { return w_packed ? 512 : 32; }
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }

}  // namespace kiln
