// How fast can mma.sync m16n8k16 (bf16 in, fp32 accumulate) run on this GPU, and what
// limits the tiled decode GEMMs at batch 128-256 (issue 8)?
//
// Why: the 256-row tiled GEMM (one 8-warp block per SM) reaches ~232 TFLOP/s of hi/lo
// MMAs at M = 256, and ncu has its warps stalled on "wait" (the fixed spacing after each
// HMMA: ptxas gives every HMMA.16816.F32.BF16 a 6-cycle stall) with the tensor pipe ~40 %
// busy. Whether 8 warps can drive the tensor cores at all, or how many warps and
// independent accumulators that takes, decides the next kernel's shape (more warps per
// SM, or bigger tiles per warp), so it is measured here, apart from any memory traffic.
//
// What, per line: warps per SM (blocks of 256 threads, 1..4 per SM), independent
// accumulator chains per warp, and the achieved TFLOP/s (4096 flops per MMA) of
//   regs: MMAs on register operands only (the tensor pipe's ceiling at that shape);
//   lds : the same with the 256-row tiled kernel's shared loads, 16 LDS.128 per 64 MMAs
//         (8 W and 8 x fragments a 32-k chunk), from a 32 KB buffer, conflict-free.
// Build and run on the device: nvcc -O3 -arch=sm_90a bench/mma_rate.cu -o /tmp/mma_rate && /tmp/mma_rate
#include <cuda_runtime.h>
#include <cstdio>
#include <cstdlib>

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("CUDA %s at %d\n", cudaGetErrorString(e), __LINE__); exit(1); } } while (0)

__device__ __forceinline__ void mma16816(float* d, const unsigned* a, const unsigned* b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// C chains; each trip is 64 MMAs (64 / C per chain). LDS: with the shared loads.
template <int C, bool LDS>
__global__ void __launch_bounds__(256) mma_rate(float* out, int trips) {
    __shared__ __align__(16) unsigned sm[8192];  // 32 KB
    const int tid = threadIdx.x, lane = tid & 31;
    for (int i = tid; i < 8192; i += 256) sm[i] = 0x3f803f80u ^ (unsigned)(i * 2654435761u & 0x00ff00ffu);
    __syncthreads();
    float acc[C][4];
#pragma unroll
    for (int c = 0; c < C; ++c) acc[c][0] = acc[c][1] = acc[c][2] = acc[c][3] = 0.f;
    unsigned a[4] = {sm[lane], sm[lane + 32], sm[lane + 64], sm[lane + 96]};
    unsigned b[2] = {sm[lane + 128], sm[lane + 160]};
    const uint4* s4 = reinterpret_cast<const uint4*>(sm);
    int off = (tid >> 5) * 32 + lane;  // a warp's 512 contiguous bytes: conflict-free
    for (int it = 0; it < trips; ++it) {
        if constexpr (LDS) {
            // 8 "W" fragments (uint4: two k16 steps of one 8-row tile) and 8 "x" fragments.
            uint4 w[8], x[8];
#pragma unroll
            for (int r = 0; r < 8; ++r) w[r] = s4[(off + r * 256) & 2047];
#pragma unroll
            for (int r = 0; r < 8; ++r) x[r] = s4[(off + 128 + r * 256) & 2047];
#pragma unroll
            for (int m = 0; m < 64; ++m) {
                const uint4 xa = x[(m >> 3) & 7], wb = w[m & 7];
                const unsigned af[4] = {xa.x, xa.y, xa.z, xa.w}, bf[2] = {(m & 8) ? wb.z : wb.x, (m & 8) ? wb.w : wb.y};
                mma16816(acc[m % C], af, bf);
            }
            off += 7;
        } else {
#pragma unroll
            for (int m = 0; m < 64; ++m) mma16816(acc[m % C], a, b);
        }
    }
    float s = 0.f;
#pragma unroll
    for (int c = 0; c < C; ++c) s += acc[c][0] + acc[c][1] + acc[c][2] + acc[c][3];
    out[blockIdx.x * 256 + tid] = s;
}

template <int C, bool LDS>
void run(const char* name, int sms, float* out) {
    int occ = 0;
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, mma_rate<C, LDS>, 256, 0));
    cudaFuncAttributes fa;
    CK(cudaFuncGetAttributes(&fa, mma_rate<C, LDS>));
    for (int bps = 1; bps <= 4; bps *= 2) {
        if (bps > occ) break;
        const int blocks = sms * bps, trips = 2000;
        mma_rate<C, LDS><<<blocks, 256>>>(out, 10);  // warm
        cudaEvent_t e0, e1;
        CK(cudaEventCreate(&e0));
        CK(cudaEventCreate(&e1));
        CK(cudaEventRecord(e0));
        mma_rate<C, LDS><<<blocks, 256>>>(out, trips);
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float ms = 0.f;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        const double flops = (double)blocks * 8 * trips * 64 * 4096.0;
        printf("%-4s warps/SM %2d chains %2d regs %3d: %7.1f TFLOP/s (%.3f ms)\n", name, 8 * bps, C, fa.numRegs,
               flops / (ms * 1e-3) / 1e12, ms);
    }
}

int main() {
    int dev = 0, sms = 0;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    float* out;
    CK(cudaMalloc(&out, (size_t)sms * 4 * 256 * sizeof(float)));
    run<2, false>("regs", sms, out);
    run<4, false>("regs", sms, out);
    run<8, false>("regs", sms, out);
    run<16, false>("regs", sms, out);
    run<32, false>("regs", sms, out);
    run<16, true>("lds", sms, out);
    run<32, true>("lds", sms, out);
    CK(cudaGetLastError());
    return 0;
}
