// What the mma.sync bit experiments share (bench/wgmma_bits.cu, bench/mma_perm.cu): the
// reference chains of S k16 steps from zero with mma.sync m16n8k16 (64 x 8 outputs per
// block of 4 warps), bf16 helpers, and the operands with widely spread exponents.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("CUDA %s at %d\n", cudaGetErrorString(e), __LINE__); exit(1); } } while (0)

constexpr int S = 32;  // k16 steps per chain

__device__ __forceinline__ void mma16816(float* d, const unsigned* a, const unsigned* b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// The block's 64 x 8 outputs from the accumulator layout mma.sync m16n8k16 and wgmma
// m64n8k16 share: warp w, rows 16w + g (d0, d1) and + 8 (d2, d3), columns 2t, 2t + 1.
__device__ __forceinline__ void store_d(float* D, int warp, int g, int t, const float (&d)[4]) {
    float* o = D + (size_t)blockIdx.x * 64 * 8;
    const int r = warp * 16 + g;
    o[r * 8 + 2 * t] = d[0];
    o[r * 8 + 2 * t + 1] = d[1];
    o[(r + 8) * 8 + 2 * t] = d[2];
    o[(r + 8) * 8 + 2 * t + 1] = d[3];
}

// Two bf16 (k, k + 1) as one register, k even.
__device__ __forceinline__ unsigned pair(const __nv_bfloat16* p) { return *reinterpret_cast<const unsigned*>(p); }

// A [blocks][S][64][16] (row-major per step), B [blocks][S][8][16] (n-major: B[n][k], as W),
// D [blocks][64][8].
__global__ void ref_mma(const __nv_bfloat16* A, const __nv_bfloat16* B, float* D) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const __nv_bfloat16* a0 = A + (size_t)blockIdx.x * S * 64 * 16;
    const __nv_bfloat16* b0 = B + (size_t)blockIdx.x * S * 8 * 16;
    float d[4] = {0.f, 0.f, 0.f, 0.f};
    for (int s = 0; s < S; ++s) {
        const __nv_bfloat16* a = a0 + (size_t)s * 64 * 16 + (warp * 16) * 16;
        const __nv_bfloat16* b = b0 + (size_t)s * 8 * 16;
        const unsigned af[4] = {pair(a + g * 16 + 2 * t), pair(a + (g + 8) * 16 + 2 * t), pair(a + g * 16 + 2 * t + 8),
                                pair(a + (g + 8) * 16 + 2 * t + 8)};
        const unsigned bf[2] = {pair(b + g * 16 + 2 * t), pair(b + g * 16 + 2 * t + 8)};
        mma16816(d, af, bf);
    }
    store_d(D, warp, g, t, d);
}

static float bf2f(__nv_bfloat16 h) {
    uint16_t u;
    memcpy(&u, &h, 2);
    uint32_t w = (uint32_t)u << 16;
    float f;
    memcpy(&f, &w, 4);
    return f;
}

static __nv_bfloat16 f2bf_trunc(float f) {
    uint32_t w;
    memcpy(&w, &f, 4);
    uint16_t u = (uint16_t)(w >> 16);
    __nv_bfloat16 h;
    memcpy(&h, &u, 2);
    return h;
}

// Operands A [blocks][S][64][16], B [blocks][S][8][16] from xorshift state `st`: exponents
// over 2^-24..2^24 (one block in three over 2^-4..2^4, typical activations x weights), so
// a product's magnitude varies over ~2^96 and inside one k16 step the terms differ by many
// binades (the adder's alignment and truncation are exercised); 1 in 32 values zero.
// Returns the generator's state after them.
static uint64_t fill_operands(std::vector<__nv_bfloat16>& A, std::vector<__nv_bfloat16>& B, uint64_t st) {
    auto rnd = [&]() { st ^= st << 13; st ^= st >> 7; st ^= st << 17; return st; };
    for (int pass = 0; pass < 2; ++pass) {
        std::vector<__nv_bfloat16>& v = pass ? B : A;
        for (size_t i = 0; i < v.size(); ++i) {
            const uint64_t r = rnd();
            const size_t blk = pass ? i / (S * 8 * 16) : i / (S * 64 * 16);
            const int spread = blk % 3 == 0 ? 4 : 24;
            const int e = (int)(r % (2 * spread + 1)) - spread;
            const float m = 1.f + (float)((r >> 16) & 0x7F) / 128.f;
            float x = ldexpf(m, e) * ((r >> 40) & 1 ? -1.f : 1.f);
            if (((r >> 41) & 31) == 0) x = 0.f;
            v[i] = f2bf_trunc(x);
        }
    }
    return st;
}
