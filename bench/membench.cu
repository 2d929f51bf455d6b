// Weight-streaming microbenchmark for the batch-1 decode GEMMs (issue 8).
//
// Question: inside the step, the skinny GEMMs stream their weights at 1.4-2.1 TB/s and
// the lm_head at 2.45, against 3.03 for a copy (H100, session 8 timeline). Is that the
// access pattern (each warp reads 16 rows x 64 B per chunk, rows K*2 bytes apart), the
// grid (196-520 blocks on 132 SMs: uneven SMs, a tail), or the kernels' own work?
// This reads the same bytes, without the arithmetic, in four ways:
//   contig  grid-stride 16-byte loads over the whole weight (the copy-like ceiling)
//   strips  the skinny kernels' pattern: grid (ceil(N / rows_per_block), splits), a warp
//           owns RW 16-row tiles of one K slice, lane (g = lane / 4, t = lane % 4) loads
//           16 B at row g (+8) and k = chunk * 32 + t * 8, P chunks in flight
//   packed  the same work split, the weight laid out so that one warp's 16-row x 32-k
//           chunk is 1 KB contiguous and its chunks follow each other: a warp streams one
//           contiguous region (what a build-time packing of the plan's weights would give;
//           the MMA fragments, and so every bit, stay the same)
//   packed_persist  packed with one block per SM-slot, looping over the tiles
// for the model's decode GEMM shapes with their split plans (docs/kernels.md), each over
// a rotating set of copies (more than L2) so every pass reads HBM.
// Build and run on the device: nvcc -O3 -arch=sm_90a bench/membench.cu -o /tmp/membench && /tmp/membench
#include <cuda_runtime.h>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("CUDA %s at %d\n", cudaGetErrorString(e), __LINE__); exit(1); } } while (0)

__device__ __forceinline__ uint4 ld_stream(const void* p) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
}

__global__ void contig(const uint4* __restrict__ w, size_t n16, unsigned* sink) {
    unsigned acc = 0;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i + 3 * stride < n16; i += 4 * stride) {
        uint4 a = ld_stream(w + i), b = ld_stream(w + i + stride), c = ld_stream(w + i + 2 * stride), d = ld_stream(w + i + 3 * stride);
        acc ^= a.x ^ b.y ^ c.z ^ d.w;
    }
    for (; i < n16; i += stride) acc ^= ld_stream(w + i).x;
    if (acc == 0x12345678u) *sink = acc;
}

// The packed layout: W tile (16 rows) `tile` is 16 * K contiguous elements; its 32-k chunk
// c is 512 elements at c * 512; a lane's 16 bytes of half h (rows 8h..8h+7) at h * 256 + lane * 8.
__device__ __forceinline__ const unsigned short* packed_at(const unsigned short* W, int K, int tile, int c, int h, int lane) {
    return W + (size_t)tile * 16 * K + (size_t)c * 512 + h * 256 + lane * 8;
}

// RW 16-row tiles per warp, P chunks of 32 k in flight, WARPS warps per block.
template <int RW, int P, int WARPS, bool PACKED>
__global__ void strips(const unsigned short* __restrict__ W, int N, int K, int ks, unsigned* sink) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int row0 = blockIdx.x * (WARPS * 16 * RW) + warp * 16 * RW;
    const int kb = blockIdx.y * ks, ke = min(K, kb + ks);
    const int nch = (ke - kb) / 32;
    const unsigned short* p[RW][2];
#pragma unroll
    for (int r = 0; r < RW; ++r)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int row = min(row0 + r * 16 + h * 8 + g, N - 1);
            if (PACKED) {
                p[r][h] = packed_at(W, K, min(row0 / 16 + r, N / 16 - 1), kb / 32, h, lane);
            } else {
                p[r][h] = W + (size_t)row * K + kb + t * 8;
            }
        }
    const int step = PACKED ? 512 : 32;
    unsigned acc = 0;
    uint4 buf[P][RW][2];
#pragma unroll
    for (int q = 0; q < P; ++q)
#pragma unroll
        for (int r = 0; r < RW; ++r)
#pragma unroll
            for (int h = 0; h < 2; ++h) buf[q][r][h] = q < nch ? ld_stream(p[r][h] + q * step) : make_uint4(0, 0, 0, 0);
    for (int c0 = 0; c0 < nch; c0 += P) {
#pragma unroll
        for (int q = 0; q < P; ++q) {
            const int c = c0 + q;
#pragma unroll
            for (int r = 0; r < RW; ++r)
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    acc ^= buf[q][r][h].x ^ buf[q][r][h].w;
                    buf[q][r][h] = c + P < nch ? ld_stream(p[r][h] + (c + P) * step) : make_uint4(0, 0, 0, 0);
                }
        }
    }
    if (acc == 0x12345678u) *sink = acc;
}

// Row-contiguous: a warp owns 16 rows of one K slice and each load instruction reads
// 512 contiguous bytes of one row (lane L: k = 256 c + 8 L); 16 loads in flight per lane.
// The kernels could stage these through shared memory to form the same MMA fragments.
__global__ void rowwise(const unsigned short* __restrict__ W, int N, int K, int ks, unsigned* sink) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int row0 = blockIdx.x * (blockDim.x / 32) * 16 + warp * 16;
    const int kb = blockIdx.y * ks, ke = min(K, kb + ks);
    unsigned acc = 0;
    for (int k = kb + lane * 8; k - lane * 8 < ke; k += 256) {
        uint4 buf[16];
#pragma unroll
        for (int i = 0; i < 16; ++i) buf[i] = (k < ke && row0 + i < N) ? ld_stream(W + (size_t)(row0 + i) * K + k) : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int i = 0; i < 16; ++i) acc ^= buf[i].x ^ buf[i].w;
    }
    if (acc == 0x12345678u) *sink = acc;
}

// Persistent: gridDim.x blocks loop over the (tile group, split) items of the packed layout.
template <int RW, int P, int WARPS>
__global__ void packed_persist(const unsigned short* __restrict__ W, int N, int K, int ks, int splits, unsigned* sink) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int groups = (N + WARPS * 16 * RW - 1) / (WARPS * 16 * RW);
    unsigned acc = 0;
    for (int item = blockIdx.x; item < groups * splits; item += gridDim.x) {
        const int gi = item / splits, s = item % splits;
        const int tile0 = gi * WARPS * RW + warp * RW;
        const int kb = s * ks, ke = min(K, kb + ks), nch = (ke - kb) / 32;
        for (int c0 = 0; c0 < nch; c0 += P) {
            uint4 buf[P][RW][2];
#pragma unroll
            for (int q = 0; q < P; ++q)
#pragma unroll
                for (int r = 0; r < RW; ++r)
#pragma unroll
                    for (int h = 0; h < 2; ++h)
                        buf[q][r][h] = c0 + q < nch ? ld_stream(packed_at(W, K, min(tile0 + r, N / 16 - 1), kb / 32 + c0 + q, h, lane)) : make_uint4(0, 0, 0, 0);
#pragma unroll
            for (int q = 0; q < P; ++q)
#pragma unroll
                for (int r = 0; r < RW; ++r)
#pragma unroll
                    for (int h = 0; h < 2; ++h) acc ^= buf[q][r][h].x ^ buf[q][r][h].w;
        }
    }
    if (acc == 0x12345678u) *sink = acc;
}

struct Shape { const char* name; int n, k, splits; };

int main() {
    int sms = 0;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device %s, %d SMs, L2 %d MB\n", prop.name, sms, prop.l2CacheSize >> 20);
    const size_t pool_bytes = (size_t)3 << 30;  // rotating copies: far more than L2
    unsigned short* pool;
    unsigned* sink;
    CK(cudaMalloc(&pool, pool_bytes));
    CK(cudaMalloc(&sink, 4));
    CK(cudaMemset(pool, 1, pool_bytes));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));

    // d2d copy of 512 MB: the copy_tbps convention (read + write bytes).
    {
        const size_t b = (size_t)512 << 20;
        for (int i = 0; i < 3; ++i) CK(cudaMemcpyAsync((char*)pool + b, pool, b, cudaMemcpyDeviceToDevice));
        CK(cudaEventRecord(e0));
        for (int i = 0; i < 10; ++i) CK(cudaMemcpyAsync((char*)pool + b, pool, b, cudaMemcpyDeviceToDevice));
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        printf("copy 512 MB: %.2f TB/s (read+write)\n", 2.0 * b * 10 / (ms * 1e-3) / 1e12);
    }

    const Shape shapes[] = {{"qkvz", 12352, 2560, 4}, {"gate_up", 18432, 2560, 3}, {"qgkv", 10240, 2560, 3},
                            {"down", 2560, 9216, 13}, {"out", 2560, 4096, 13}, {"lm_head", 248320, 2560, 1}};
    printf("%-8s %10s %-16s %8s %9s %8s\n", "shape", "MB", "variant", "blocks", "us", "TB/s");
    for (const Shape& s : shapes) {
        const size_t bytes = (size_t)s.n * s.k * 2;
        const int copies = (int)(pool_bytes / bytes) > 16 ? 16 : (int)(pool_bytes / bytes);
        const int ks = ((s.k + s.splits - 1) / s.splits + 31) / 32 * 32;
        const int splits = (s.k + ks - 1) / ks;
        auto time = [&](const char* variant, int blocks, auto launch) {
            for (int i = 0; i < copies; ++i) launch((const unsigned short*)((const char*)pool + (size_t)i * bytes));
            const int reps = copies * (bytes < (64u << 20) ? 8 : 2);
            CK(cudaEventRecord(e0));
            for (int i = 0; i < reps; ++i) launch((const unsigned short*)((const char*)pool + (size_t)(i % copies) * bytes));
            CK(cudaEventRecord(e1));
            CK(cudaEventSynchronize(e1));
            CK(cudaGetLastError());
            float ms;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            const double us = ms * 1e3 / reps;
            printf("%-8s %10.1f %-16s %8d %9.2f %8.2f\n", s.name, bytes / 1e6, variant, blocks, us, bytes / (us * 1e-6) / 1e12);
        };
        for (int per_sm : {2, 4, 8}) {
            char v[32];
            snprintf(v, sizeof v, "contig_%dx256", per_sm);
            time(v, sms * per_sm, [&](const unsigned short* w) { contig<<<sms * per_sm, 256>>>((const uint4*)w, bytes / 16, sink); });
        }
        // The register kernel's shape (4 warps, 16 rows, 4 chunks) and the shared-x kernel's
        // (8 warps, 32 rows, 2 chunks), strided and packed.
        {
            dim3 g((s.n + 63) / 64, splits);
            time("strips_reg", g.x * g.y, [&](const unsigned short* w) { strips<1, 4, 4, false><<<g, 128>>>(w, s.n, s.k, ks, sink); });
            time("packed_reg", g.x * g.y, [&](const unsigned short* w) { strips<1, 4, 4, true><<<g, 128>>>(w, s.n, s.k, ks, sink); });
            time("rowwise_reg", g.x * g.y, [&](const unsigned short* w) { rowwise<<<g, 128>>>(w, s.n, s.k, ks, sink); });
            time("packed_reg_p8", g.x * g.y, [&](const unsigned short* w) { strips<1, 8, 4, true><<<g, 128>>>(w, s.n, s.k, ks, sink); });
        }
        {
            dim3 g((s.n + 255) / 256, splits);
            time("strips_sx", g.x * g.y, [&](const unsigned short* w) { strips<2, 2, 8, false><<<g, 256>>>(w, s.n, s.k, ks, sink); });
            time("packed_sx", g.x * g.y, [&](const unsigned short* w) { strips<2, 2, 8, true><<<g, 256>>>(w, s.n, s.k, ks, sink); });
            time("strips_sx_p4", g.x * g.y, [&](const unsigned short* w) { strips<2, 4, 8, false><<<g, 256>>>(w, s.n, s.k, ks, sink); });
            time("packed_sx_p4", g.x * g.y, [&](const unsigned short* w) { strips<2, 4, 8, true><<<g, 256>>>(w, s.n, s.k, ks, sink); });
        }
        for (int per_sm : {1, 2, 4}) {
            char v[32];
            snprintf(v, sizeof v, "persist_%dx128", per_sm * 2);
            time(v, sms * per_sm, [&](const unsigned short* w) { packed_persist<1, 4, 4><<<sms * per_sm * 2, 128>>>(w, s.n, s.k, ks, splits, sink); });
        }
    }
    return 0;
}
