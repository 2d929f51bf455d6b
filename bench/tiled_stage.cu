// Which part of the wide tiled GEMM's stage costs what (issue 8, batch 128-256)?
//
// Why: at batch 256 the wide tiled GEMM (gemm_tiled.cu, 256 W rows x 64 batch rows per
// block, one 8-warp block per SM) takes ~1.6 us per 64-k stage (H100 per-block timeline,
// session 26), while the same MMAs and shared loads alone run at 570 TFLOP/s (mma_rate.cu),
// 0.97 us a stage. This adds the kernel's per-stage pieces one at a time to that loop, in
// blocks shaped like gate_up's at M = 256 (864 blocks of 14 stages; four neighbouring blocks
// share a W tile, as the four batch tiles do), and prints the time per stage and TFLOP/s:
//   mma     8 W and 8 x LDS.128 + 64 HMMA per warp and 32-k chunk, two chunks a stage, W
//           fragments at the kernel's swizzled offsets (mma_rate's lds loop in the kernel's shape)
//   +bar    a __syncthreads per stage
//   +w      W's stage by cp.async into a ring of 3 slots, waited for two stages later
//           (32 KB a block: 256 rows x 128 bytes from a row-major bf16 matrix)
//   +x      x's stage (64 rows x 64 fp32) loaded two stages ahead into registers, split
//           into bf16 hi / lo and stored to shared memory (the kernel's store_x_regs)
//   +epi    the block's fp32 partial tile (64 KB) stored at the end (__stcg)
// and two candidate changes to the full stage: `paired` (one cp.async wait and barrier per
// two stages, four slots a ring) and `x-by-cp.async` (x's fp32 stage copied by cp.async in
// the group of W two stages earlier into a staging slot, split from there: no x registers,
// no global-load wait at the split). Both together would need a fourth staging slot, past
// the shared memory.
// The fragments read are not the loaded data's (timing only; the bits are checked by the
// GEMM table test). Build and run on the device:
//   nvcc -O3 -arch=sm_90a bench/tiled_stage.cu -o /tmp/tiled_stage && /tmp/tiled_stage
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cstdio>
#include <cstdlib>

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("CUDA %s at %d\n", cudaGetErrorString(e), __LINE__); exit(1); } } while (0)

constexpr int THREADS = 256, BN = 256, BM = 64, SK = 64, STAGES = 14;
constexpr int WSTAGE = BN * SK * 2;     // 32 KB of W a stage
constexpr int XSTAGE = BM * SK * 2 * 2; // 16 KB of x hi + lo a stage (also an fp32 stage)
constexpr int K = STAGES * SK;          // 896 (gate_up's split is 864)
enum { BAR = 1, WCP = 2, XLD = 4, EPI = 8, PAIR = 16, XCP = 32 };
// Slots per ring: 4 when the barrier comes every two stages (the pair being computed and
// the pair being loaded), else 3; with x by cp.async, 3 more fp32 staging slots.
template <int MODE> __host__ __device__ constexpr int slots() { return (MODE & PAIR) ? 4 : 3; }
template <int MODE> __host__ __device__ constexpr int smem_bytes() { return slots<MODE>() * (WSTAGE + XSTAGE) + ((MODE & XCP) ? 3 * XSTAGE : 0); }
static_assert(smem_bytes<BAR | WCP | XCP>() <= 227 * 1024 && smem_bytes<BAR | WCP | XLD | PAIR>() <= 227 * 1024, "shared memory");

__device__ __forceinline__ void mma16816(float* d, const unsigned* a, const unsigned* b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ unsigned pack2(float a, float b) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<const unsigned*>(&h);
}
__device__ __forceinline__ float lo_f(unsigned u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float hi_f(unsigned u) { return __uint_as_float(u & 0xffff0000u); }

template <int MODE>
__global__ void __launch_bounds__(THREADS, 1) stage_bench(const __nv_bfloat16* W, const float* x, float* part) {
    constexpr int SLOTS = slots<MODE>();
    constexpr bool PAIRED = MODE & PAIR, XREG = MODE & XLD, XASYNC = MODE & XCP;
    extern __shared__ __align__(128) unsigned char sm[];
    unsigned char* wring = sm;
    unsigned char* xring = sm + SLOTS * WSTAGE;
    unsigned char* xstage = xring + SLOTS * XSTAGE;  // fp32 x by cp.async (XCP)
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    // Four neighbouring blocks share a W tile (the batch tiles), each has its own x tile.
    const int wt = blockIdx.x / 4, xt = blockIdx.x % 4;
    const unsigned char* wsrc = reinterpret_cast<const unsigned char*>(W + (size_t)wt * BN * K);
    const float* xsrc = x + (size_t)xt * BM * K;
    float acc[16][4];
#pragma unroll
    for (int c = 0; c < 16; ++c) acc[c][0] = acc[c][1] = acc[c][2] = acc[c][3] = 0.f;
    // x stage t's fp32 copy into staging slot t % 3 (XCP): a thread's 4 float4.
    auto stage_x = [&](int t) {
        if (!XASYNC || t >= STAGES) return;
        unsigned char* dst = xstage + (t % 3) * XSTAGE;
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const int idx = tid + u * THREADS, row = idx / 16, col = (idx % 16) * 4;
            cp_async16(dst + idx * 16, xsrc + (size_t)row * K + t * SK + col);
        }
    };
    // A thread's W pieces of stage s: rows tid / 8 + 32 q, 16-byte segment tid % 8 (odd
    // rows' halves swapped, as tg_off); with XCP, x stage s + 2 in the same group (split
    // at stage s, two groups and one wait later).
    auto load_w = [&](int s) {
        stage_x(s + 2);
        if (s >= STAGES) return;
        if (MODE & WCP) {
            unsigned char* dst = wring + (s % SLOTS) * WSTAGE;
#pragma unroll
            for (int q = 0; q < 8; ++q) {
                const int row = tid / 8 + 32 * q, seg = tid % 8;
                cp_async16(dst + row * 128 + ((seg ^ ((row & 1) << 2)) << 4), wsrc + ((size_t)row * K + s * SK) * 2 + seg * 16);
            }
        }
    };
    auto load_x = [&](int s, float4 (&r)[4]) {
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const int idx = tid + u * THREADS, row = idx / 16, col = (idx % 16) * 4;
            r[u] = XREG && s < STAGES ? *reinterpret_cast<const float4*>(xsrc + (size_t)row * K + s * SK + col)
                                      : make_float4(0.f, 0.f, 0.f, 0.f);
        }
    };
    // The split into the hi / lo planes of x slot s (from registers, or with XCP from the
    // fp32 staging slot its cp.async filled).
    auto store_x = [&](int s, const float4 (&regs)[4]) {
        if (!XREG && !XASYNC) return;
        unsigned char* dst = xring + (s % SLOTS) * XSTAGE;
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const float4 r = XASYNC ? *reinterpret_cast<const float4*>(xstage + (s % 3) * XSTAGE + (tid + u * THREADS) * 16) : regs[u];
            const unsigned h0 = pack2(r.x, r.y), h1 = pack2(r.z, r.w);
            const unsigned l0 = pack2(r.x - lo_f(h0), r.y - hi_f(h0)), l1 = pack2(r.z - lo_f(h1), r.w - hi_f(h1));
            const int off = (tid + u * THREADS) * 8;
            *reinterpret_cast<uint2*>(dst + off) = make_uint2(h0, h1);
            *reinterpret_cast<uint2*>(dst + XSTAGE / 2 + off) = make_uint2(l0, l1);
        }
    };
    auto commit = [] { asm volatile("cp.async.commit_group;" ::: "memory"); };
    float4 xa[4], xb[4];
    // W two stages ahead (one group a stage); x stored two ahead, loaded two before its store
    // (XCP: its first two stages staged and waited for here).
    stage_x(0);
    stage_x(1);
    commit();
    asm volatile("cp.async.wait_group 0;" ::: "memory");
    load_w(0);
    commit();
    load_w(1);
    commit();
    load_x(0, xa);
    load_x(1, xb);
    store_x(0, xa);
    store_x(1, xb);
    load_x(2, xa);
    load_x(3, xb);
    const uint4* ws4 = reinterpret_cast<const uint4*>(wring);
    const uint4* xs4 = reinterpret_cast<const uint4*>(xring);
    for (int s = 0; s < STAGES; ++s) {
        // Paired: one wait and barrier per two stages; W for both stages of the next pair.
        if (!PAIRED || s % 2 == 0) {
            if (MODE & (WCP | XCP)) {
                if (PAIRED) asm volatile("cp.async.wait_group 0;" ::: "memory");
                else asm volatile("cp.async.wait_group 1;" ::: "memory");
            }
            if (MODE & BAR) __syncthreads();
            load_w(s + 2);
            commit();
            if (PAIRED) {
                load_w(s + 3);
                commit();
            }
        }
        // x(s + 2) into its slot (free: read two stages ago, before the last barrier; visible
        // by the barrier before stage s + 2), then the next loads into the set just stored.
        if (s % 2 == 0) { store_x(s + 2, xa); load_x(s + 4, xa); }
        else { store_x(s + 2, xb); load_x(s + 4, xb); }
        const int wslot = (s % SLOTS) * (WSTAGE / 16), xslot = (s % SLOTS) * (XSTAGE / 16);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            uint4 w[8], xf[8];
#pragma unroll
            for (int r = 0; r < 8; ++r) {
                // The kernel's fragment: W row 64 wn + 8 r + g, 16-byte segment 4 h + t, odd
                // rows' halves swapped (tg_off: conflict-free phases).
                const int row = (warp & 3) * 64 + r * 8 + lane / 4;
                w[r] = ws4[wslot + row * 8 + ((h * 4 + lane % 4) ^ ((row & 1) << 2))];
            }
#pragma unroll
            for (int r = 0; r < 8; ++r) xf[r] = xs4[xslot + ((r * 2 + h) * 32 + lane) % (XSTAGE / 16)];
#pragma unroll
            for (int m = 0; m < 64; ++m) {
                const uint4 xa4 = xf[(m >> 3) & 7], wb = w[m & 7];
                const unsigned af[4] = {xa4.x, xa4.y, xa4.z, xa4.w}, bf[2] = {(m & 8) ? wb.z : wb.x, (m & 8) ? wb.w : wb.y};
                mma16816(acc[m % 16], af, bf);
            }
        }
    }
    asm volatile("cp.async.wait_group 0;" ::: "memory");
    if (MODE & EPI) {
        float* p = part + (size_t)blockIdx.x * BN * BM;
#pragma unroll
        for (int c = 0; c < 16; ++c)
#pragma unroll
            for (int e = 0; e < 4; e += 2)
                __stcg(reinterpret_cast<float2*>(p + ((c * 4 + e) * THREADS + tid) * 2 % (BN * BM)), make_float2(acc[c][e], acc[c][e + 1]));
    } else {  // one float a thread keeps every accumulator live
        float sum = 0.f;
#pragma unroll
        for (int c = 0; c < 16; ++c) sum += acc[c][0] + acc[c][1] + acc[c][2] + acc[c][3];
        part[(size_t)blockIdx.x * THREADS + tid] = sum;
    }
}

template <int MODE>
void run(const char* name, int sms, const __nv_bfloat16* W, const float* x, float* part) {
    constexpr int SMEM = smem_bytes<MODE>();
    CK(cudaFuncSetAttribute(stage_bench<MODE>, cudaFuncAttributeMaxDynamicSharedMemorySize, SMEM));
    const int blocks = 864;
    stage_bench<MODE><<<blocks, THREADS, SMEM>>>(W, x, part);  // warm
    CK(cudaGetLastError());
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    float best = 1e9f;
    for (int rep = 0; rep < 5; ++rep) {
        CK(cudaEventRecord(e0));
        stage_bench<MODE><<<blocks, THREADS, SMEM>>>(W, x, part);
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float ms = 0.f;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        best = ms < best ? ms : best;
    }
    const double flops = (double)blocks * 8 * STAGES * 128 * 4096.0;
    const double waves = (double)blocks / sms;
    printf("%-14s %7.1f us  %6.1f TFLOP/s  %.2f us per stage (%.1f waves of blocks)\n", name, best * 1e3,
           flops / (best * 1e-3) / 1e12, best * 1e3 / waves / STAGES, waves);
}

int main() {
    int sms = 0;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    __nv_bfloat16* W;
    float *x, *part;
    CK(cudaMalloc(&W, (size_t)(864 / 4) * BN * K * 2));
    CK(cudaMalloc(&x, (size_t)4 * BM * K * 4));
    CK(cudaMalloc(&part, (size_t)864 * BN * BM * 4));
    CK(cudaMemset(W, 0, (size_t)(864 / 4) * BN * K * 2));
    CK(cudaMemset(x, 0, (size_t)4 * BM * K * 4));
    run<0>("mma", sms, W, x, part);
    run<BAR>("+bar", sms, W, x, part);
    run<BAR | WCP>("+bar+w", sms, W, x, part);
    run<BAR | XLD>("+bar+x", sms, W, x, part);
    run<BAR | WCP | XLD>("+bar+w+x", sms, W, x, part);
    run<BAR | WCP | XLD | EPI>("+bar+w+x+epi", sms, W, x, part);
    // Candidate changes: one barrier and wait per two stages (4 slots); x by cp.async in W's
    // groups into an fp32 staging slot, split from shared memory instead of from registers.
    run<BAR | WCP | XLD | PAIR>("paired", sms, W, x, part);
    run<BAR | WCP | XCP>("x-by-cp.async", sms, W, x, part);
    return 0;
}
