// The MTP draft's lm_head in int8. A draft only proposes tokens and verification checks
// every one of them against the main model's own greedy token, so the draft's logits
// need not be bit-identical to anything: an int8 copy of the tied lm_head (half the
// bytes of bf16) picks the same argmax nearly always and reads 0.64 GB per draft step
// instead of 1.27 GB. The main model's lm_head (the verify step's, plain decoding's)
// stays bf16.
//
// kiln_quant_rows_i8(const bf16* w, unsigned char* q, float* scale, int N, int K)
//   Per row n < N of w [N][K]: amax = max_k |w[n][k]|, inv = 127 / amax,
//   q[n][k] = 128 + rint(w[n][k] * inv) (in 1..255: the bias makes a byte the f16
//   mantissa trick's input below), scale[n] = amax / 127; a zero row gives q = 128 and
//   scale 0. K % 8 == 0, w 16-byte aligned. grid (ceil(N / 8)), block 256: a warp per
//   row. Runs once at start-up (ops::quantize_rows_i8 is its CPU twin, bit for bit).
//
// kiln_gemv_i8(const unsigned char* q, const float* scale, const float* x, float* y,
//              int M, int N, int K)
//   y[m][n] = scale[n] * sum_k (q[n][k] - 128) * f16(x[m][k]) for m < M <= 8, n < N,
//   with x [M][K] fp32 (clamped to f16's range) and y [M][N] fp32. K % 64 == 0, q rows
//   16-byte aligned (K % 16 == 0). grid (ceil(N / 256)), block 256, dynamic shared
//   memory 8 * (K + 8) * 2 bytes (x as f16, `draft_gemv_smem`).
//   How: each warp owns 32 rows (two m16 tiles) and streams them once with 16-byte
//   loads, four 64-k chunks in flight per row. A lane's 16 bytes of row g hold the A
//   fragments of a chunk's four k16 steps (step s: bytes 4s..4s+3, k permuted
//   identically in x); bytes become f16 exactly (0x6400 | byte is 1024 + byte, minus
//   1152), and mma.sync m16n8k16 f16 x f16 -> f32 multiplies them by x's 8 batch rows.
#include "common.cuh"
#include <cuda_fp16.h>

using namespace kiln;

#define DH_THREADS 256
#define DH_ROWS_PER_WARP 32
#define DH_ROWS_PER_BLOCK (DH_ROWS_PER_WARP * DH_THREADS / 32)
#define DH_MAX_M 8
#define DH_GROUP 4 // 64-k chunks per row in flight
// x row stride in f16 (K + 8): the 8 rows' fragments of one 8-lane phase fall in
// distinct banks.
#define DH_LDX(K) ((K) + 8)
#ifdef KILN_SMEM_GEMV_I8
static_assert(KILN_SMEM_GEMV_I8 == DH_MAX_M * DH_LDX(HIDDEN) * 2, "kiln_gemv_i8's shared memory differs from registry::gemv_i8_smem");
#endif

extern "C" __global__ void __launch_bounds__(DH_THREADS) kiln_quant_rows_i8(const gop* __restrict__ w, unsigned char* __restrict__ q,
                                                                          float* __restrict__ scale, int N, int K) {
    KILN_PDL_ENTER();
    const int lane = threadIdx.x & 31, n = blockIdx.x * (DH_THREADS / 32) + (threadIdx.x >> 5);
    if (n >= N) return;
    const gop* row = w + (size_t)n * K;
    float amax = 0.f;
    for (int k = lane * 8; k < K; k += 256) {
        float f[8];
        load8(row + k, f);
#pragma unroll
        for (int i = 0; i < 8; ++i) amax = fmaxf(amax, fabsf(f[i]));
    }
    amax = warp_max(amax);
    const float inv = amax > 0.f ? 127.f / amax : 0.f;
    if (lane == 0) scale[n] = amax / 127.f;
    unsigned char* qrow = q + (size_t)n * K;
    for (int k = lane * 8; k < K; k += 256) {
        float f[8];
        load8(row + k, f);
        unsigned b[2] = {0u, 0u};
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            const float r = fminf(fmaxf(rintf(f[e] * inv), -127.f), 127.f);
            b[e / 4] |= (unsigned)(128 + (int)r) << (8 * (e % 4));
        }
        *reinterpret_cast<uint2*>(qrow + k) = make_uint2(b[0], b[1]);
    }
}

// Two f16 values (1024 + byte) - 1152 = byte - 128 of bytes `sel` (0x4140: bytes 0, 1;
// 0x4342: bytes 2, 3) of w: exact, since f16 holds every integer up to 2048.
__device__ __forceinline__ unsigned q2_f16x2(unsigned w, unsigned sel) {
    const unsigned biased = __byte_perm(w, 0x64646464u, sel);
    const __half2 h = __hsub2(*reinterpret_cast<const __half2*>(&biased), __half2half2(__ushort_as_half(0x6480)));
    return *reinterpret_cast<const unsigned*>(&h);
}

__device__ __forceinline__ void mma_f16_16816(float* c, const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The 4 table rows lane (g, t) of a warp streams: r[i] = row0 + 16 * tile + g + 8 * half
// (i = 2 * tile + half); a row past N gives ok[i] false and r[i] 0 (read nothing, zeros).
__device__ __forceinline__ void dh_lane_rows(int row0, int g, int N, int (&r)[4], bool (&ok)[4]) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int row = row0 + 16 * (i >> 1) + g + 8 * (i & 1);
        ok[i] = row < N;
        r[i] = ok[i] ? row : 0;
    }
}

// x [M][K] fp32 -> f16 [DH_MAX_M][K + 8] in shared memory (clamped to f16's range, rows
// past M zero), then a barrier.
__device__ __forceinline__ void dh_stage_x(const float* __restrict__ x, __half* xs, int M, int K) {
    for (int i = threadIdx.x; i < DH_MAX_M * (K / 4); i += DH_THREADS) {
        const int m = i / (K / 4), k = (i % (K / 4)) * 4;
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        if (m < M) v = *reinterpret_cast<const float4*>(x + (size_t)m * K + k);
        const float lim = 65504.f;
        const __half2 a = __floats2half2_rn(fminf(fmaxf(v.x, -lim), lim), fminf(fmaxf(v.y, -lim), lim));
        const __half2 b = __floats2half2_rn(fminf(fmaxf(v.z, -lim), lim), fminf(fmaxf(v.w, -lim), lim));
        __half2* d = reinterpret_cast<__half2*>(xs + m * DH_LDX(K) + k);
        d[0] = a;
        d[1] = b;
    }
    __syncthreads();
}

extern "C" __global__ void __launch_bounds__(DH_THREADS) kiln_gemv_i8(const unsigned char* __restrict__ q, const float* __restrict__ scale,
                                                                    const float* __restrict__ x, float* __restrict__ y, int M, int N,
                                                                    int K) {
    extern __shared__ __align__(16) unsigned char dh_smem[];
    __half* xs = reinterpret_cast<__half*>(dh_smem);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int row0 = blockIdx.x * DH_ROWS_PER_BLOCK + warp * DH_ROWS_PER_WARP;
    int r[4];
    bool ok[4];
    dh_lane_rows(row0, g, N, r, ok);
    const unsigned char* src[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) src[i] = q + (size_t)r[i] * K + 16 * t;
    const int chunks = K / 64;
    uint4 w[DH_GROUP][4];
    auto load_group = [&](int c0) {
#pragma unroll
        for (int c = 0; c < DH_GROUP; ++c)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const bool in = ok[i] && c0 + c < chunks;
                w[c][i] = in ? __ldg(reinterpret_cast<const uint4*>(src[i] + (size_t)(c0 + c) * 64)) : make_uint4(0, 0, 0, 0);
            }
    };
    // The weights do not depend on the previous kernel: the first group goes out before
    // the PDL wait.
    load_group(0);
    KILN_PDL_ENTER();
    dh_stage_x(x, xs, M, K);
    float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
    const __half* xrow = xs + g * DH_LDX(K) + 16 * t;
    for (int c0 = 0; c0 < chunks; c0 += DH_GROUP) {
        uint4 cur[DH_GROUP][4];
#pragma unroll
        for (int c = 0; c < DH_GROUP; ++c)
#pragma unroll
            for (int i = 0; i < 4; ++i) cur[c][i] = w[c][i];
        if (c0 + DH_GROUP < chunks) load_group(c0 + DH_GROUP);
#pragma unroll
        for (int c = 0; c < DH_GROUP; ++c) {
            if (c0 + c >= chunks) break;
            // x[g][k] for this lane's 16 k of the chunk: step s uses words 2s, 2s + 1.
            const uint4 xa = *reinterpret_cast<const uint4*>(xrow + (c0 + c) * 64);
            const uint4 xb = *reinterpret_cast<const uint4*>(xrow + (c0 + c) * 64 + 8);
            const unsigned xw[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
#pragma unroll
            for (int tile = 0; tile < 2; ++tile) {
                const uint4 ra = cur[c][2 * tile], rb = cur[c][2 * tile + 1];
                const unsigned wa[4] = {ra.x, ra.y, ra.z, ra.w}, wb[4] = {rb.x, rb.y, rb.z, rb.w};
#pragma unroll
                for (int s = 0; s < 4; ++s) {
                    const unsigned a[4] = {q2_f16x2(wa[s], 0x4140), q2_f16x2(wb[s], 0x4140), q2_f16x2(wa[s], 0x4342),
                                           q2_f16x2(wb[s], 0x4342)};
                    mma_f16_16816(acc[tile], a, xw[2 * s], xw[2 * s + 1]);
                }
            }
        }
    }
    // Accumulator e of a tile: W row g + 8 * (e / 2), batch row 2t + (e % 2).
#pragma unroll
    for (int tile = 0; tile < 2; ++tile)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int n = row0 + 16 * tile + g + 8 * (e >> 1), m = 2 * t + (e & 1);
            if (n < N && m < M) y[(size_t)m * N + n] = acc[tile][e] * scale[n];
        }
}

// ---------------------------------------------------------------------------------
// int4 (session 22, `--speculative-draft-head int4`): a quarter of the bf16 table's bytes
// plus a scale per 128 k (0.53 bytes a weight against int8's 1.0), for the same reason as
// int8: drafts only propose, verification decides.
//
// kiln_quant_rows_i4(const bf16* w, unsigned char* q, float* scale, int N, int K, int sg)
//   Per row n and group c of 128 k: amax = max |w|, scale[n*sg + c] = amax / 7,
//   v = clamp(rint(w * (7 / amax)), -7, 7) + 8 in 1..15 (8 for a zero group, scale 0).
//   Word i of a row (bytes 4i..4i+3) holds k = 8i..8i+7 as nibbles in the order
//   k0 k2 k4 k6 k1 k3 k5 k7 (nibble 0 first): one shift and mask of a word then gives
//   the f16 pair (k, k+1) of an MMA fragment. K % 128 == 0, sg >= K / 128 with sg % 4
//   == 0 (groups past K / 128 left as they are). grid (ceil(N / 8)), block 256: a warp per
//   row, a lane per 8 k, 16 lanes per group. ops::quantize_rows_i4 is the twin.
//
// kiln_gemv_i4(const unsigned char* q, const float* scale, const float* x, float* y,
//              int M, int N, int K, int sg)
//   y[m][n] = sum_c scale[n*sg + c] * sum_{k in c} (v[n][k] - 8) * f16(x[m][k]), m < M <= 8.
//   As kiln_gemv_i8: a warp streams 32 rows, a lane's 16 bytes of a row are a 128-k chunk's
//   8 k16 steps (step s: k 32t + 4s..+3 of the chunk, the same k order in x); each chunk's
//   MMAs start from zero and its sum is scaled into the row's fp32 accumulator. Same
//   grid, block and shared memory as kiln_gemv_i8.
#define DH4_GROUP_K 128

extern "C" __global__ void __launch_bounds__(DH_THREADS) kiln_quant_rows_i4(const gop* __restrict__ w, unsigned char* __restrict__ q,
                                                                          float* __restrict__ scale, int N, int K, int sg) {
    KILN_PDL_ENTER();
    const int lane = threadIdx.x & 31, n = blockIdx.x * (DH_THREADS / 32) + (threadIdx.x >> 5);
    if (n >= N) return;
    const gop* row = w + (size_t)n * K;
    // Nibble position of k % 8: k0 k2 k4 k6 in nibbles 0-3, k1 k3 k5 k7 in 4-7.
    const int pos[8] = {0, 4, 1, 5, 2, 6, 3, 7};
    for (int k0 = 0; k0 < K; k0 += 256) {
        const int k = k0 + lane * 8;
        float f[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        if (k < K) load8(row + k, f);
        float amax = 0.f;
#pragma unroll
        for (int i = 0; i < 8; ++i) amax = fmaxf(amax, fabsf(f[i]));
        // The group's 16 lanes (K % 128 == 0: a half-warp is wholly in or out).
#pragma unroll
        for (int o = 8; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        if (k >= K) continue;
        const float inv = amax > 0.f ? 7.f / amax : 0.f;
        if ((lane & 15) == 0) scale[(size_t)n * sg + k / DH4_GROUP_K] = amax / 7.f;
        unsigned word = 0u;
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            const float r = fminf(fmaxf(rintf(f[e] * inv), -7.f), 7.f);
            word |= (unsigned)(8 + (int)r) << (4 * pos[e]);
        }
        *reinterpret_cast<unsigned*>(q + (size_t)n * (K / 2) + k / 2) = word;
    }
}

// The f16 pair (v - 8 of nibble p, v - 8 of nibble p + 4) of word w: exact (f16 holds
// 1024 + v and the difference).
__device__ __forceinline__ unsigned q4_f16x2(unsigned w, int p) {
    const unsigned biased = ((w >> (4 * p)) & 0x000F000Fu) | 0x64006400u;
    const __half2 h = __hsub2(*reinterpret_cast<const __half2*>(&biased), __half2half2(__ushort_as_half(0x6408)));
    return *reinterpret_cast<const unsigned*>(&h);
}

extern "C" __global__ void __launch_bounds__(DH_THREADS) kiln_gemv_i4(const unsigned char* __restrict__ q, const float* __restrict__ scale,
                                                                    const float* __restrict__ x, float* __restrict__ y, int M, int N,
                                                                    int K, int sg) {
    extern __shared__ __align__(16) unsigned char dh_smem[];
    __half* xs = reinterpret_cast<__half*>(dh_smem);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int row0 = blockIdx.x * DH_ROWS_PER_BLOCK + warp * DH_ROWS_PER_WARP;
    int r[4];
    bool ok[4];
    dh_lane_rows(row0, g, N, r, ok);
    const unsigned char* src[4];
    const float* scl[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        src[i] = q + (size_t)r[i] * (K / 2) + 16 * t;
        scl[i] = scale + (size_t)r[i] * sg;
    }
    const int chunks = K / DH4_GROUP_K;
    uint4 w[DH_GROUP][4];
    float4 sc[4];  // [row] the group's DH_GROUP chunk scales
    auto load_group = [&](int c0) {
#pragma unroll
        for (int c = 0; c < DH_GROUP; ++c)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                const bool in = ok[i] && c0 + c < chunks;
                w[c][i] = in ? __ldg(reinterpret_cast<const uint4*>(src[i] + (size_t)(c0 + c) * 64)) : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
        for (int i = 0; i < 4; ++i)  // sg % 4 == 0 and c0 % 4 == 0: one aligned 16-byte load
            sc[i] = ok[i] ? __ldg(reinterpret_cast<const float4*>(scl[i] + c0)) : make_float4(0.f, 0.f, 0.f, 0.f);
    };
    load_group(0);
    KILN_PDL_ENTER();
    dh_stage_x(x, xs, M, K);
    float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
    const __half* xrow = xs + g * DH_LDX(K) + 32 * t;
    static_assert(DH_GROUP == 4, "a float4 of scales per row and group");
    for (int c0 = 0; c0 < chunks; c0 += DH_GROUP) {
        uint4 cur[DH_GROUP][4];
        float4 cs[4];
#pragma unroll
        for (int c = 0; c < DH_GROUP; ++c)
#pragma unroll
            for (int i = 0; i < 4; ++i) cur[c][i] = w[c][i];
#pragma unroll
        for (int i = 0; i < 4; ++i) cs[i] = sc[i];
        if (c0 + DH_GROUP < chunks) load_group(c0 + DH_GROUP);
#pragma unroll
        for (int c = 0; c < DH_GROUP; ++c) {
            if (c0 + c >= chunks) break;
            // x[g][k] for this lane's 32 k of the chunk: step s uses words 2s, 2s + 1.
            unsigned xw[16];
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                const uint4 v = *reinterpret_cast<const uint4*>(xrow + (c0 + c) * DH4_GROUP_K + 8 * u);
                xw[4 * u] = v.x; xw[4 * u + 1] = v.y; xw[4 * u + 2] = v.z; xw[4 * u + 3] = v.w;
            }
#pragma unroll
            for (int tile = 0; tile < 2; ++tile) {
                const uint4 ra = cur[c][2 * tile], rb = cur[c][2 * tile + 1];  // rows g, g + 8
                const unsigned wa[4] = {ra.x, ra.y, ra.z, ra.w}, wb[4] = {rb.x, rb.y, rb.z, rb.w};
                float part[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
                for (int s = 0; s < 8; ++s) {
                    // Step s = 2 * word + half: k 8 * word + 4 * half + 0..3, nibbles
                    // 2 * half (k, k + 1) and 2 * half + 1 (k + 2, k + 3) with their + 4.
                    const int wi = s >> 1, p = 2 * (s & 1);
                    const unsigned a[4] = {q4_f16x2(wa[wi], p), q4_f16x2(wb[wi], p), q4_f16x2(wa[wi], p + 1),
                                           q4_f16x2(wb[wi], p + 1)};
                    mma_f16_16816(part, a, xw[2 * s], xw[2 * s + 1]);
                }
                const float* s0 = reinterpret_cast<const float*>(&cs[2 * tile]);
                const float* s1 = reinterpret_cast<const float*>(&cs[2 * tile + 1]);
                acc[tile][0] += part[0] * s0[c];
                acc[tile][1] += part[1] * s0[c];
                acc[tile][2] += part[2] * s1[c];
                acc[tile][3] += part[3] * s1[c];
            }
        }
    }
#pragma unroll
    for (int tile = 0; tile < 2; ++tile)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int n = row0 + 16 * tile + g + 8 * (e >> 1), m = 2 * t + (e & 1);
            if (n < N && m < M) y[(size_t)m * N + n] = acc[tile][e];
        }
}
