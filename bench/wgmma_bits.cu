// Does wgmma (sm_90a) compute a k16 step bit for bit as mma.sync m16n8k16 does? (issue 8)
//
// Why: every decode GEMM kernel (gemm.cu, gemm_tiled.cu) accumulates each output with
// mma.sync m16n8k16 in one fixed order, so a row's bits do not depend on the batch. The
// tiled kernel (M = 17..256) is MMA- and shared-memory-issue bound at M >= 64 (docs/kernels.md);
// wgmma issues a 64 x N x 16 product from shared memory in one instruction. If its
// accumulation of one k16 step equals mma.sync's bit for bit, the tiled kernel can move to
// wgmma on sm_90a and still give every row the skinny kernels' bits. If not, wgmma would
// have to serve every M on sm_90a.
//
// What: random bf16 operands with exponents spread over 2^-24..2^24 (so the products'
// alignment and rounding inside the tensor core's adder tree matter), chains of S k16 steps
// accumulated in fp32 from zero, 64 x 8 outputs per block:
//   ref_mma   4 warps, each 16 rows with mma.sync m16n8k16 (A from registers, B from registers)
//   ref_wgmma one warpgroup, wgmma m64n8k16 with A from registers (the same fragments) and
//             B (8 x 16, K-major, as a weight row-major W[n][k]) from shared memory
//   ref_wgmma_ss  the same with A from shared memory too (K-major, no swizzle)
// and an fp64 reference on the host (to tell a wrong operand layout from a rounding
// difference: a layout error is far off, a rounding one is ~1e-7 relative).
// Then the MMA throughput of both forms (operands fixed, no memory traffic).
//
// Build and run on the device: nvcc -O3 -arch=sm_90a bench/wgmma_bits.cu -o /tmp/wgmma_bits && /tmp/wgmma_bits
#include "mma_chains.cuh"

// Shared-memory matrix descriptor, no swizzle: start, leading (K direction, between the
// two 8-element core matrices of a k16 step) and stride (between 8-row groups) offsets.
__device__ __forceinline__ uint64_t desc(const void* smem, unsigned lbo, unsigned sbo) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(smem);
    return (uint64_t)((a >> 4) & 0x3FFF) | ((uint64_t)((lbo >> 4) & 0x3FFF) << 16) | ((uint64_t)((sbo >> 4) & 0x3FFF) << 32);
}

__device__ __forceinline__ void wgmma_rs(float* d, const unsigned* a, uint64_t bd) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n8k16.f32.bf16.bf16 {%0,%1,%2,%3}, {%4,%5,%6,%7}, %8, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(bd));
}

__device__ __forceinline__ void wgmma_ss(float* d, uint64_t ad, uint64_t bd) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n8k16.f32.bf16.bf16 {%0,%1,%2,%3}, %4, %5, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "l"(ad), "l"(bd));
}

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit_wait() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
}

// Core-matrix layout (no swizzle, K-major): an 8-row x 8-k core matrix is 128 contiguous
// bytes (row r at 16 r); the k 8..15 half follows at +128 (LBO); 8-row groups at +256 (SBO).
__device__ __forceinline__ int cm_off(int row, int k) { return (row >> 3) * 128 + (k >> 3) * 64 + (row & 7) * 8 + (k & 7); }

template <bool A_SMEM, bool SWAP>
__global__ void ref_wgmma(const __nv_bfloat16* A, const __nv_bfloat16* B, float* D) {
    // Room past each operand: the swapped descriptor offsets must read inside the window.
    __shared__ __align__(128) __nv_bfloat16 sb[4 * 8 * 16];
    __shared__ __align__(128) __nv_bfloat16 sa[4 * 64 * 16];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const __nv_bfloat16* a0 = A + (size_t)blockIdx.x * S * 64 * 16;
    const __nv_bfloat16* b0 = B + (size_t)blockIdx.x * S * 8 * 16;
    float d[4] = {0.f, 0.f, 0.f, 0.f};
    for (int s = 0; s < S; ++s) {
        const __nv_bfloat16* a = a0 + (size_t)s * 64 * 16;
        const __nv_bfloat16* b = b0 + (size_t)s * 8 * 16;
        __syncthreads();
        // B: n-group 0 only (8 rows): k 0..7 core matrix at 0, k 8..15 at +64 elements.
        {
            const int n = threadIdx.x >> 4, k = threadIdx.x & 15;
            sb[(k >> 3) * 64 + n * 8 + (k & 7)] = b[n * 16 + k];
        }
        if constexpr (A_SMEM) {
            // A 64 x 16: 8-row groups of two core matrices each (256 bytes per group).
            for (int i = threadIdx.x; i < 64 * 16; i += 128) {
                const int r = i >> 4, k = i & 15;
                sa[(r >> 3) * 128 + (k >> 3) * 64 + (r & 7) * 8 + (k & 7)] = a[i];
            }
        }
        __syncthreads();
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        wg_fence();
        if constexpr (A_SMEM) {
            wgmma_ss(d, SWAP ? desc(sa, 256, 128) : desc(sa, 128, 256), SWAP ? desc(sb, 256, 128) : desc(sb, 128, 256));
        } else {
            const __nv_bfloat16* aw = a + (warp * 16) * 16;
            const unsigned af[4] = {pair(aw + g * 16 + 2 * t), pair(aw + (g + 8) * 16 + 2 * t), pair(aw + g * 16 + 2 * t + 8),
                                    pair(aw + (g + 8) * 16 + 2 * t + 8)};
            wgmma_rs(d, af, SWAP ? desc(sb, 256, 128) : desc(sb, 128, 256));
        }
        wg_commit_wait();
    }
    store_d(D, warp, g, t, d);
}

// ---- throughput: operands fixed in registers / shared memory, no global traffic ----
constexpr int TP_ITERS = 4096;

__global__ void tp_mma(float* sink) {
    unsigned a[4] = {threadIdx.x, threadIdx.x * 3u, threadIdx.x * 5u, threadIdx.x * 7u};
    unsigned b[2] = {0x3f803f80u, 0x3f803f80u};
    float d[8][4] = {};
    for (int i = 0; i < TP_ITERS; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) mma16816(d[j], a, b);
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < 8; ++j) s += d[j][0] + d[j][1] + d[j][2] + d[j][3];
    if (s == 1234.5f) *sink = s;
}

// m64n128k16, A and B from shared memory (zeros: throughput only).
__global__ void tp_wgmma(float* sink) {
    __shared__ __align__(128) __nv_bfloat16 sa[64 * 16];
    __shared__ __align__(128) __nv_bfloat16 sb[128 * 16];
    for (int i = threadIdx.x; i < 64 * 16; i += blockDim.x) sa[i] = __float2bfloat16(0.f);
    for (int i = threadIdx.x; i < 128 * 16; i += blockDim.x) sb[i] = __float2bfloat16(0.f);
    __syncthreads();
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    float d[64];
#pragma unroll
    for (int j = 0; j < 64; ++j) d[j] = 0.f;
    const uint64_t ad = desc(sa, 128, 256), bd = desc(sb, 128, 256);
    for (int i = 0; i < TP_ITERS; ++i) {
        wg_fence();
        asm volatile(
            "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
            "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
            "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
            "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, "
            "%64, %65, p, 1, 1, 0, 0;\n}\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]),
              "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]),
              "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
              "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]),
              "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]),
              "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]),
              "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
            : "l"(ad), "l"(bd));
        asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
        asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
    }
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < 64; ++j) s += d[j];
    if (s == 1234.5f) *sink = s;
}

int main(int argc, char** argv) {
    const int blocks = 4096;
    const size_t na = (size_t)blocks * S * 64 * 16, nb = (size_t)blocks * S * 8 * 16, nd = (size_t)blocks * 64 * 8;
    std::vector<__nv_bfloat16> A(na), B(nb);
    fill_operands(A, B, 0x9E3779B97F4A7C15ull);
    __nv_bfloat16 *dA, *dB;
    float *dD, *sink;
    CK(cudaMalloc(&dA, na * 2)); CK(cudaMalloc(&dB, nb * 2));
    CK(cudaMalloc(&dD, 5 * nd * 4)); CK(cudaMalloc(&sink, 4));
    CK(cudaMemcpy(dA, A.data(), na * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dB, B.data(), nb * 2, cudaMemcpyHostToDevice));
    // Variant 0 is mma.sync; 1-4 are wgmma with A from registers or shared memory, and the
    // descriptor's two offsets as documented (LBO = K direction) or swapped.
    const char* names[5] = {"mma.sync m16n8k16", "wgmma A-reg (LBO 128, SBO 256)", "wgmma A-smem (LBO 128, SBO 256)",
                            "wgmma A-reg (LBO 256, SBO 128)", "wgmma A-smem (LBO 256, SBO 128)"};
    // One variant per process (argv[1] = 1..4; 0 or none: all four, each in a child), so a
    // variant whose descriptor reads outside shared memory does not take the others down.
    const int only = argc > 1 ? atoi(argv[1]) : 0;
    if (only == 0) {
        for (int q = 1; q <= 4; ++q) {
            char cmd[512];
            snprintf(cmd, sizeof cmd, "%s %d", argv[0], q);
            if (system(cmd) != 0) printf("%-34s FAILED (see above)\n", names[q]);
        }
    }
    ref_mma<<<blocks, 128>>>(dA, dB, dD);
    CK(cudaDeviceSynchronize());
    if (only == 1) ref_wgmma<false, false><<<blocks, 128>>>(dA, dB, dD + nd);
    if (only == 2) ref_wgmma<true, false><<<blocks, 128>>>(dA, dB, dD + 2 * nd);
    if (only == 3) ref_wgmma<false, true><<<blocks, 128>>>(dA, dB, dD + 3 * nd);
    if (only == 4) ref_wgmma<true, true><<<blocks, 128>>>(dA, dB, dD + 4 * nd);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    std::vector<float> Dv(5 * nd);
    CK(cudaMemcpy(Dv.data(), dD, 5 * nd * 4, cudaMemcpyDeviceToHost));
    // fp64 reference: the layout check (a wrong fragment or descriptor is far off).
    double worst[5] = {0, 0, 0, 0, 0};
    size_t differ[5] = {0, 0, 0, 0, 0}, nan[5] = {0, 0, 0, 0, 0};
    for (int blk = 0; blk < blocks; ++blk)
        for (int r = 0; r < 64; ++r)
            for (int n = 0; n < 8; ++n) {
                double ref = 0, mag = 0;
                for (int s = 0; s < S; ++s)
                    for (int k = 0; k < 16; ++k) {
                        const double p = (double)bf2f(A[((size_t)blk * S + s) * 1024 + r * 16 + k]) * bf2f(B[((size_t)blk * S + s) * 128 + n * 16 + k]);
                        ref += p;
                        mag += fabs(p);
                    }
                const size_t i = (size_t)blk * 512 + r * 8 + n;
                uint32_t b0;
                memcpy(&b0, &Dv[i], 4);
                for (int q = 0; q < 5; ++q) {
                    const float got = Dv[q * nd + i];
                    if (std::isnan(got)) ++nan[q];
                    const double e = mag > 0 ? fabs(got - ref) / mag : fabs(got);
                    if (!(e <= worst[q])) worst[q] = e;
                    uint32_t bq;
                    memcpy(&bq, &got, 4);
                    differ[q] += bq != b0;
                }
            }
    printf("outputs %zu per variant (chains of %d k16 steps from zero)\n", nd, S);
    for (int q = 0; q < 5; ++q)
        if (q == only || (only == 0 && q == 0)) printf("%-34s error vs fp64 / sum|p| %.3e (a layout error is ~1), NaN %zu, bits differing from mma.sync %zu\n", names[q], worst[q], nan[q], differ[q]);

    if (only != 0) return 0;
    // Throughput.
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0)); CK(cudaEventCreate(&e1));
    int sms = 0;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    auto time = [&](auto launch) {
        launch();
        CK(cudaEventRecord(e0));
        launch();
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float ms = 0;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        return ms;
    };
    for (int warps : {4, 8, 16}) {
        const float ms = time([&] { tp_mma<<<sms * 2, warps * 32>>>(sink); });
        const double fl = 2.0 * 16 * 8 * 16 * 8.0 * TP_ITERS * warps * sms * 2;
        printf("mma.sync m16n8k16: %2d warps x 2 blocks per SM, 8 chains each: %.1f TFLOP/s\n", warps, fl / ms / 1e9);
    }
    for (int wg : {1, 2, 3}) {
        const float ms = time([&] { tp_wgmma<<<sms * 2, wg * 128>>>(sink); });
        const double fl = 2.0 * 64 * 128 * 16 * (double)TP_ITERS * wg * sms * 2;
        printf("wgmma m64n128k16 (A, B in shared memory): %d warpgroups x 2 blocks per SM: %.1f TFLOP/s\n", wg, fl / ms / 1e9);
    }
    CK(cudaGetLastError());
    return 0;
}
