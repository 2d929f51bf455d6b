// Does mma.sync m16n8k16 give the same bits when the 16 products of a k16 step sit in
// other positions? (issue 8: the layout a wgmma tiled GEMM may use)
//
// Why: every decode GEMM puts k = 32h + 8p + {0..3} (step 0) or + {4..7} (step 1) of a
// 32-k chunk into fixed MMA positions, which a 16-byte load per lane gives the skinny
// kernels for free but which wgmma, reading K in order from shared memory, can only get
// from 4-byte pieces. If the tensor core's sum of one step does not depend on which
// position holds which product (a multi-operand adder aligned to the largest product),
// any layout that keeps each step's set of k gives the same bits, e.g. 8-byte pieces.
// If it depends only on the two 8-position halves, a layout that keeps each half's set
// does. This measures which.
//
// What: chains of S k16 steps from zero, 64 x 8 outputs per block, bf16 operands with
// exponents over 2^-24..2^24 (one block in three over 2^-4..2^4, closer to real
// activations); the same products with positions permuted identically in A and B:
//   swap halves (0-7 <-> 8-15), reverse within each half, swap the 4-groups inside each
//   half, swap neighbours (2t <-> 2t + 1), a random permutation of all 16.
// Prints the outputs whose bits differ from the unpermuted run, for each permutation.
//
// Build and run on the device: nvcc -O3 -arch=sm_90a bench/mma_perm.cu -o /tmp/mma_perm && /tmp/mma_perm
#include <cuda_bf16.h>
#include <cuda_runtime.h>
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

__device__ __forceinline__ unsigned pair(const __nv_bfloat16* p) { return *reinterpret_cast<const unsigned*>(p); }

// A [blocks][S][64][16] (row-major per step: position k of row r at r * 16 + k),
// B [blocks][S][8][16] (B[n][k]), D [blocks][64][8]; 4 warps of 16 rows.
__global__ void chains(const __nv_bfloat16* A, const __nv_bfloat16* B, float* D) {
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
    float* o = D + (size_t)blockIdx.x * 64 * 8;
    const int r = warp * 16 + g;
    o[r * 8 + 2 * t] = d[0];
    o[r * 8 + 2 * t + 1] = d[1];
    o[(r + 8) * 8 + 2 * t] = d[2];
    o[(r + 8) * 8 + 2 * t + 1] = d[3];
}

static __nv_bfloat16 f2bf_trunc(float f) {
    uint32_t w;
    memcpy(&w, &f, 4);
    uint16_t u = (uint16_t)(w >> 16);
    __nv_bfloat16 h;
    memcpy(&h, &u, 2);
    return h;
}

int main() {
    const int blocks = 4096;
    const size_t na = (size_t)blocks * S * 64 * 16, nb = (size_t)blocks * S * 8 * 16, nd = (size_t)blocks * 64 * 8;
    std::vector<__nv_bfloat16> A(na), B(nb);
    uint64_t st = 0x2545F4914F6CDD1Dull;
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
    // Position permutations: new position p holds old position perm[p].
    int perms[5][16];
    const char* names[5] = {"swap halves (0-7 <-> 8-15)", "reverse within each half", "swap 4-groups within each half",
                            "swap neighbours (2t <-> 2t+1)", "random permutation of 16"};
    for (int p = 0; p < 16; ++p) {
        perms[0][p] = p ^ 8;
        perms[1][p] = (p & 8) | (7 - (p & 7));
        perms[2][p] = p ^ 4;
        perms[3][p] = p ^ 1;
        perms[4][p] = p;
    }
    for (int p = 15; p > 0; --p) {
        const int q = (int)(rnd() % (p + 1));
        const int x = perms[4][p];
        perms[4][p] = perms[4][q];
        perms[4][q] = x;
    }
    __nv_bfloat16 *dA, *dB;
    float* dD;
    CK(cudaMalloc(&dA, na * 2)); CK(cudaMalloc(&dB, nb * 2)); CK(cudaMalloc(&dD, nd * 4));
    auto run = [&](const std::vector<__nv_bfloat16>& a, const std::vector<__nv_bfloat16>& b) {
        CK(cudaMemcpy(dA, a.data(), na * 2, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(dB, b.data(), nb * 2, cudaMemcpyHostToDevice));
        chains<<<blocks, 128>>>(dA, dB, dD);
        CK(cudaGetLastError());
        CK(cudaDeviceSynchronize());
        std::vector<float> d(nd);
        CK(cudaMemcpy(d.data(), dD, nd * 4, cudaMemcpyDeviceToHost));
        return d;
    };
    const std::vector<float> base = run(A, B);
    printf("outputs %zu (chains of %d k16 steps from zero; blocks %% 3 == 0 narrow exponents)\n", nd, S);
    for (int q = 0; q < 5; ++q) {
        std::vector<__nv_bfloat16> Ap(na), Bp(nb);
        for (size_t row = 0; row < na / 16; ++row)
            for (int p = 0; p < 16; ++p) Ap[row * 16 + p] = A[row * 16 + perms[q][p]];
        for (size_t row = 0; row < nb / 16; ++row)
            for (int p = 0; p < 16; ++p) Bp[row * 16 + p] = B[row * 16 + perms[q][p]];
        const std::vector<float> d = run(Ap, Bp);
        size_t differ = 0, differ_narrow = 0, narrow = 0;
        for (size_t i = 0; i < nd; ++i) {
            uint32_t x, y;
            memcpy(&x, &base[i], 4);
            memcpy(&y, &d[i], 4);
            const bool is_narrow = (i / 512) % 3 == 0;
            narrow += is_narrow;
            differ += x != y;
            differ_narrow += is_narrow && x != y;
        }
        printf("%-34s bits differing: %zu of %zu (narrow exponents: %zu of %zu)\n", names[q], differ, nd, differ_narrow, narrow);
    }
    return 0;
}
