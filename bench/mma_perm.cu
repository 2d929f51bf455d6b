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
#include "mma_chains.cuh"

int main() {
    const int blocks = 4096;
    const size_t na = (size_t)blocks * S * 64 * 16, nb = (size_t)blocks * S * 8 * 16, nd = (size_t)blocks * 64 * 8;
    std::vector<__nv_bfloat16> A(na), B(nb);
    uint64_t st = fill_operands(A, B, 0x2545F4914F6CDD1Dull);  // then the random permutation
    auto rnd = [&]() { st ^= st << 13; st ^= st >> 7; st ^= st << 17; return st; };
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
        ref_mma<<<blocks, 128>>>(dA, dB, dD);
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
