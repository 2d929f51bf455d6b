// The tiled decode GEMM with wgmma (sm_90a only; an experiment behind KILN_GEMM_WGMMA=1).
//
// kiln_gemm_tiled_wg_x{f32,bf16}_y{f32,bf16}: the same arguments, grid, block, split plan
// and bits as kiln_gemm_tiled_* (gemm_tiled.cu); shared memory KILN_SMEM_GEMM_TILED_WG_*
// (the same stages: 96 KB for fp32 x).
// kiln_gemm_tiled_wg4_x{f32,bf16}_y{f32,bf16} (session 18, KILN_GEMM_WGMMA_WIDE=1): the
// same with 4 warpgroups and 256 (W) x 128 (batch) tiles: grid (ceil(N / 256) * ceil(M /
// 128), splits), block 512, one block per SM, KILN_SMEM_GEMM_TILED_WG4_{f32,bf16} of
// shared memory (192 KB for fp32 x). Why: at batch 128-256 both tiled kernels read N M K
// / 16 bytes of W and x from L2 per GEMM (64 FLOP per L2 byte with 128 x 64 tiles); 256 x
// 128 tiles double that (docs/kernels.md). Counters: one per tile, fewer than the 128 x
// 64 kernel's.
#include "gemm_tiled.cuh"

// Session 15: both operands from
// shared memory and one stage of wgmmas in flight (session 13's kernel read W into
// registers and waited for every stage's wgmmas, because a register an in-flight wgmma
// reads cannot be refilled).
//   Why the bits stay: mma.sync's k16 step depends only on the set of its 16 products,
//   not on which position holds which (bench/mma_perm.cu, H100: 0 of 2,097,152 outputs
//   differ under any permutation), and wgmma's step equals mma.sync's (wgmma_bits.cu).
//   So each step multiplies the skinny kernels' set, step (h, s) of a stage: k = 32h +
//   8p + 4s + {0..3}, p = 0..3, in these positions: half p >> 1 of the step, 8-byte
//   piece p & 1 of the core-matrix row. The accumulator still sees hi s0, hi s1, lo s0,
//   lo s1 per chunk from zero. (The kernel test compares it with the register kernel
//   bit for bit at M = 1..256.)
//   W (A operand, 64 rows per warpgroup) by 8-byte cp.async straight into K-major core
//   matrices without swizzle: per stage slot [warpgroup][step q = 2h + s][2 KB], row r of
//   the warpgroup at (r >> 3) * 256 + (r & 7) * 16, half at + 128, piece at + 8 (LBO 128,
//   SBO 256). x (B operand) stored in the same positions (through registers, fp32 x
//   split into hi/lo on the way). A warp's
//   loads and stores cover 8 rows at a time, so they are free of bank conflicts.
//   Pipeline (session 18): W two stages ahead, x stored one stage ahead (loaded two
//   before that), three slots each; a stage issues its wgmmas, then the later stages'
//   loads and stores, then waits for its wgmmas (wait_group 0), so at the next barrier
//   the slots it read are free. (Session 15's kernel had W one stage ahead, waited with
//   wait_group 1 and its 8-byte stores were 8-way bank conflicts: 40-62 % slower than
//   mma.sync on the H100, session 17.)
//   Warpgroup wg owns W rows 64 wg..+63 of the block's 64 WGS; its accumulator d[i] is W
//   row 16 w + g + 8 ((i >> 1) & 1) (w: the warp in the group) and batch row 8 (i >> 2) +
//   2t + (i & 1) of the block's 32 WGS. The MMAs cover the tile's live batch rows rounded
//   up to 16 (to 64 or 128 past 64 rows).

// (Session 19 also built fp32 x by cp.async through a per-thread staging slot, split a
// stage later, so that the per-stage proxy fence, a MEMBAR.ALL.CTA, had no register
// loads to wait for: measured 6 % slower than through registers at batch 64-256, the 256 x
// 128 kernel within 1.5 % (session 20, H100), so it was removed.)

// The tiles and shared memory of a block of WGS warpgroups: 64 WGS W rows x 32 WGS batch
// rows (WGS = 2: the mma.sync kernel's 128 x 64 and TgLayout's sizes).
#define TGW_WSTEP 2048  // one warpgroup's k16 step of W: 64 rows x 32 bytes
template <bool XF32_, int WST, int XST, int WGS> struct TgwLayout {
    static constexpr bool XF32 = XF32_;
    static constexpr int BN = 64 * WGS, BM = 32 * WGS, THREADS = 128 * WGS;
    static constexpr int WSTEP = TGW_WSTEP;
    static constexpr int XSTEP = BM * 32;   // a k16 step of x: BM rows x 32 bytes
    static constexpr int W = WGS * 4 * WSTEP;
    static constexpr int XPLANE = 4 * XSTEP;  // x hi of a stage (x lo follows for fp32 x)
    static constexpr int X = XPLANE * (XF32 ? 2 : 1);
    static constexpr int SMEM = WST * W + XST * X;
};

// Byte offset of position pair `pair` (0..3) of core-matrix half `half` of row n of step
// q's tile of `step` bytes (x and each warpgroup's W use the same layout).
__device__ __forceinline__ int tgw_off(int step, int q, int n, int half, int pair) {
    return q * step + (n >> 3) * 256 + half * 128 + (n & 7) * 16 + pair * 4;
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
__device__ __forceinline__ unsigned long long tgw_desc(const unsigned char* smem) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(smem);
    // start >> 4 | LBO 128 >> 4 at bit 16 | SBO 256 >> 4 at bit 32; no swizzle, base 0.
    return (unsigned long long)((a >> 4) & 0x3FFF) | ((unsigned long long)(128 >> 4) << 16) | ((unsigned long long)(256 >> 4) << 32);
}

// 8 bytes global -> shared (L1-bypassing is 16-byte only: .ca); ok = false zero-fills.
__device__ __forceinline__ void cp_async8(void* smem, const void* gmem, bool ok) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    const int n = ok ? 8 : 0;
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;" ::"r"(s), "l"(gmem), "r"(n) : "memory");
}

// d[0 .. NB/2) += A (W, descriptor) x B (x, descriptor): one k16 step of the warpgroup's
// 64 W rows x NB batch rows (NB = 16, 32, 48, 64 or 128: the tile's live rows, rounded up).
// The accumulator of an output is the same register whatever NB is, and its products and
// their order do not depend on NB either.
template <int NB> __device__ __forceinline__ void tgw_mma(float* d, unsigned long long a, unsigned long long b);
template <> __device__ __forceinline__ void tgw_mma<16>(float* d, unsigned long long a, unsigned long long b) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7}, %8, %9, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
                 : "l"(a), "l"(b));
}
template <> __device__ __forceinline__ void tgw_mma<32>(float* d, unsigned long long a, unsigned long long b) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15}, %16, %17, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
                 : "l"(a), "l"(b));
}
template <> __device__ __forceinline__ void tgw_mma<48>(float* d, unsigned long long a, unsigned long long b) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n48k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23}, %24, %25, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23])
                 : "l"(a), "l"(b));
}
template <> __device__ __forceinline__ void tgw_mma<64>(float* d, unsigned long long a, unsigned long long b) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "l"(a), "l"(b));
}
template <> __device__ __forceinline__ void tgw_mma<128>(float* d, unsigned long long a, unsigned long long b) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, %64, %65, p, 1, 1, 0, 0;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
                 : "l"(a), "l"(b));
}

// A stage's wgmmas (TWO: two 32-k chunks, else one): per chunk hi s0, hi s1, then (fp32 x)
// lo s0, lo s1; wt is the warpgroup's W tiles of the stage, xt the stage's x (layout L).
// Straight-line code: a branch among wgmmas in flight makes ptxas inject a
// warpgroup.arrive (C7519), which waits for every register load in flight.
template <int NB, bool TWO, typename L>
__device__ __forceinline__ void tgw_stage_mmas(float* acc, const unsigned char* wt, const unsigned char* xt) {
#pragma unroll
    for (int h = 0; h < (TWO ? 2 : 1); ++h) {
#pragma unroll
        for (int s = 0; s < 2; ++s) tgw_mma<NB>(acc, tgw_desc(wt + (2 * h + s) * L::WSTEP), tgw_desc(xt + (2 * h + s) * L::XSTEP));
        if constexpr (L::XF32) {
#pragma unroll
            for (int s = 0; s < 2; ++s)
                tgw_mma<NB>(acc, tgw_desc(wt + (2 * h + s) * L::WSTEP), tgw_desc(xt + L::XPLANE + (2 * h + s) * L::XSTEP));
        }
    }
}

// Keeps the compiler from moving accumulator reads or writes across this point (the
// wgmmas read and write them asynchronously between wgmma.fence and wait_group).
template <int N> __device__ __forceinline__ void tgw_fence_acc(float* acc) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(acc[i])::"memory");
}
#endif

// The kernel's body for MMAs over NB batch rows (the tile's live rows rounded up to 16;
// past 64, all 128; the rest are zeros).
// XS (session 25, the split-x lead on wgmma): x arrives split (kiln_split_hilo's rows: K bf16
// hi, then K bf16 lo) and goes to the same positions by 8-byte cp.async in W's commit group,
// two stages ahead like W, so no x registers, conversions or stores in the loop (session 20's
// ncu had 48 % long-scoreboard stalls on them). The bytes land where the fp32-x path stores
// them (split_bf16x2 of the same values): the same wgmmas, the same bits.
template <bool XF32, int WST, int XST, int WGS, int NB, typename Y, bool XS = false>
__device__ __forceinline__ void tiled_gemm_wg_nb(const bf16* __restrict__ W, const void* __restrict__ x, Y* __restrict__ y,
                                                 float* __restrict__ ws, unsigned* __restrict__ counters, int M, int N,
                                                 int K, int ks, int splits) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    static_assert(!XS || XF32, "split x has both planes, as fp32 x");
    using L = TgwLayout<XF32, WST, XST, WGS>;
    constexpr int BN = L::BN, BM = L::BM, NACC = BM / 2;
    static_assert(WST >= 3 && XST >= 3, "W two stages ahead and x one: a slot is rewritten after its wgmmas are done");
    static_assert(WGS == 2 || WGS == 4, "128 x 64 or 256 x 128 tiles");
    extern __shared__ __align__(128) unsigned char tg_smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    // The tile again rather than from the dispatcher: passed in, its values stay live across
    // the width switch (28 bytes spilled in session 19, ptxas 13.0); recomputed, ptxas
    // rematerialises them from blockIdx (a few integer ops per block).
    const TgTile<BN, BM> tile(M, K, ks);
    const int n0 = tile.n0, m0 = tile.m0, kb = tile.kb, ke = tile.ke, nchunks = tile.nchunks, nst = tile.nst;

    // Loads and stores are mapped so that the 32 lanes of a warp write 8 rows x 2 pieces x
    // 2 steps: a row's 16-byte core-matrix rows of 8 consecutive rows cover the 32 banks
    // once per step, so every 8-byte cp.async and x store is 2 wavefronts (session 17's
    // mapping, 16 pieces of one row per 16 lanes, hit 2 bank pairs: 8-way conflicts).
    // Lane bits: rr = lane & 7 the row, pb = bit 3 the position pair within a core-matrix
    // half, sb = bit 4 the k16 step (bf16 x: the half instead). A warp instruction reads
    // 32 contiguous bytes of W per row and 64 of x per row.
    // The thread's row: 8 warp + rr (of the W tile's first half, and of the x tile).
    const int rr = lane & 7, pb = (lane >> 3) & 1, sb = lane >> 4;
    const int row = 8 * warp + rr;
    // W: BN rows x 16 pieces of 8 bytes per stage, 8 per thread. Piece i of the thread:
    // W row `row` + BN / 2 (i & 1) (warpgroup (row >> 6) + WGS / 2 (i & 1), its row row & 63),
    // group hh = i >> 1 (chunk h = hh >> 1, core-matrix half hh & 1), so k = 16 hh + 8 pb +
    // 4 sb of the stage: step 2h + sb, pair 2 pb.
    const bf16* wsrc = W + (size_t)(n0 + row) * K + kb + 8 * pb + 4 * sb;
    const int wdst = (row >> 6) * 4 * L::WSTEP + tgw_off(L::WSTEP, sb, row & 63, 0, 2 * pb);
    auto load_w = [&](int s) {
        unsigned char* slot = tg_smem + (s % WST) * L::W + wdst;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const int half_rows = i & 1, hh = i >> 1;
            const bool ok = s < nst && kb + s * TG_SK + 16 * hh + 8 * pb + 4 * sb < ke && n0 + (BN / 2) * half_rows + row < N;
            unsigned char* dst = slot + half_rows * (WGS / 2) * 4 * L::WSTEP + (hh >> 1) * 2 * L::WSTEP + (hh & 1) * 128;
            cp_async8(dst, ok ? wsrc + (size_t)(BN / 2) * half_rows * K + s * TG_SK + 16 * hh : W, ok);
        }
    };
    // x: the block's batch row `row`, XU units of 16 bytes per thread and stage. fp32: unit
    // u is k = 16 u + 8 pb + 4 sb (4 k of step 2 (u >> 1) + sb, half u & 1); bf16: unit u is
    // k = 32 u + 16 sb + 8 pb (8 k: steps 2u and 2u + 1, half sb).
    constexpr int XU = XF32 ? 4 : 2, XE = XF32 ? 4 : 2;  // units, bytes per element
    using XRegs = uint4[XU];
    const unsigned char* xsrc = reinterpret_cast<const unsigned char*>(x) + ((size_t)(m0 + row) * K + kb) * XE;
    auto xk = [&](int u) { return XF32 ? 16 * u + 8 * pb + 4 * sb : 32 * u + 16 * sb + 8 * pb; };
    XRegs xr;
    auto load_x_regs = [&](int s, XRegs& dst) {
#pragma unroll
        for (int u = 0; u < XU; ++u) {
            dst[u] = make_uint4(0u, 0u, 0u, 0u);
            // zero past M, and past ke by 8-k segments (as the W loads and the skinny kernels)
            if (s < nst && m0 + row < M && kb + s * TG_SK + (xk(u) & ~7) < ke)
                dst[u] = __ldg(reinterpret_cast<const uint4*>(xsrc + (size_t)(s * TG_SK + xk(u)) * XE));
        }
    };
    auto store_x_regs = [&](int s, const XRegs& src) {
        unsigned char* xs = tg_smem + WST * L::W + (s % XST) * L::X;
#pragma unroll
        for (int u = 0; u < XU; ++u) {
            const uint4 v = src[u];
            if constexpr (XF32) {
                const int off = tgw_off(L::XSTEP, 2 * (u >> 1) + sb, row, u & 1, 2 * pb);
                const uint2 p0 = split_bf16x2(__uint_as_float(v.x), __uint_as_float(v.y));
                const uint2 p1 = split_bf16x2(__uint_as_float(v.z), __uint_as_float(v.w));
                *reinterpret_cast<uint2*>(xs + off) = make_uint2(p0.x, p1.x);
                *reinterpret_cast<uint2*>(xs + L::XPLANE + off) = make_uint2(p0.y, p1.y);
            } else {
                *reinterpret_cast<uint2*>(xs + tgw_off(L::XSTEP, 2 * u, row, sb, 2 * pb)) = make_uint2(v.x, v.y);
                *reinterpret_cast<uint2*>(xs + tgw_off(L::XSTEP, 2 * u + 1, row, sb, 2 * pb)) = make_uint2(v.z, v.w);
            }
        }
    };

    // XS: unit u's 4 k (fp32 x's unit u) of each plane by cp.async into store_x_regs's places.
    const bf16* xssrc = reinterpret_cast<const bf16*>(x) + (size_t)(m0 + row) * 2 * K + kb;
    auto load_x_split = [&](int s) {
        unsigned char* xs = tg_smem + WST * L::W + (s % XST) * L::X;
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const int k = 16 * u + 8 * pb + 4 * sb, off = tgw_off(L::XSTEP, 2 * (u >> 1) + sb, row, u & 1, 2 * pb);
            const bool ok = s < nst && m0 + row < M && kb + s * TG_SK + k < ke;
            const bf16* src = xssrc + s * TG_SK + k;
            cp_async8(xs + off, ok ? src : W, ok);
            cp_async8(xs + L::XPLANE + off, ok ? src + K : W, ok);
        }
    };

    // W two stages ahead (one cp.async group per stage); x through registers, stored one
    // stage ahead and loaded two before that. XS: W's first two stages, then (after the
    // PDL wait) x's, a group each; every stage then commits one group (W and x of stage
    // s + 2), so waiting until one group is in flight leaves stage s's W and x landed.
    XRegs xb;
    load_w(0);
    cp_async_commit();
    load_w(1);
    cp_async_commit();
    prefetch_rows_early(W, n0, BN, tid, M, N, K, kb, ke, 2 * TG_SK, splits, ks);
    KILN_PDL_ENTER_ROWS(M);
    if constexpr (XS) {
        load_x_split(0);
        cp_async_commit();
        load_x_split(1);
        cp_async_commit();
    } else {
        load_x_regs(0, xr);
        load_x_regs(1, xb);  // before stage 0's store waits for its loads
        store_x_regs(0, xr);
        load_x_regs(2, xr);
    }

    float acc[NACC];
#pragma unroll
    for (int i = 0; i < NACC; ++i) acc[i] = 0.f;
    const int wg = warp >> 2;

    // Stage s: the wgmmas are issued first, then the loads for later stages run beside
    // them, and the warpgroup waits for its wgmmas before the next barrier. So at the
    // barrier of stage s every wgmma of stage s - 1 is done, and its slots (W and x) can
    // take stage s + 2's W and (x being one stage ahead) stage s + 1's x. The MMA width NB
    // is a template parameter (the kernel picks the body by its tile's live rows): a
    // switch on it per stage put branches among the wgmmas' register uses, and ptxas then injected
    // warpgroup.arrive 18-22 times per kernel (C7519), each waiting for x's loads in
    // flight (session 19 ncu: 46 % of the stall samples long scoreboard, 11 % on the
    // branch after the arrive).
    auto stage = [&](int s, XRegs& xs, bool two) {  // two: a constant at each call
        cp_async_wait<1>();  // W(s) has landed (W(s + 1) may be in flight)
        // This thread's cp.async writes (generic proxy) and x stores become visible to the
        // wgmmas (async proxy) after the fence and the barrier.
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        __syncthreads();
        const unsigned char* wt = tg_smem + (s % WST) * L::W + wg * 4 * L::WSTEP;
        const unsigned char* xt = tg_smem + WST * L::W + (s % XST) * L::X;
        tgw_fence_acc<NACC>(acc);
        asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
        if (two) tgw_stage_mmas<NB, true, L>(acc, wt, xt);
        else tgw_stage_mmas<NB, false, L>(acc, wt, xt);
        asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
        load_w(s + 2);  // slot of stage s - 1
        if constexpr (XS) {
            load_x_split(s + 2);  // slot of stage s - 1 too
            cp_async_commit();
        } else {
            cp_async_commit();
            store_x_regs(s + 1, xs);  // slot of stage s - 2
            load_x_regs(s + 3, xs);
        }
        asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
        tgw_fence_acc<NACC>(acc);
    };
    // Stages of two chunks, then the last stage's single chunk when nchunks is odd: `two`
    // is a constant in each inlined call, so no branch separates a stage's wgmma.fence,
    // its wgmmas and its commit, and none merges while they are in flight (ptxas injected
    // warpgroup.arrive at both, C7519). Even stages use xb, odd ones xr.
    const int nfull = nchunks / 2;
    int s = 0;
    for (; s + 1 < nfull; s += 2) {
        stage(s, xb, true);
        stage(s + 1, xr, true);
    }
    if (s < nfull) stage(s++, xb, true);
    if (s < nst) {
        if (s & 1) stage(s, xr, false);
        else stage(s, xb, false);
    }
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    cp_async_wait<0>();

    // Epilogue: the partial (or y for one split), then the tile's split sum as the
    // mma.sync kernel's.
    const int wrow = warp * 16 + g;
    float* part = splits == 1 ? nullptr : ws + (size_t)blockIdx.y * M * N;
#pragma unroll
    for (int i = 0; i < NACC; ++i) {
        const int n = n0 + wrow + 8 * ((i >> 1) & 1), m = m0 + 8 * (i >> 2) + 2 * t + (i & 1);
        if (n >= N || m >= M) continue;
        const size_t at = (size_t)m * N + n;
        if (part) __stcg(part + at, acc[i]);
        else y[at] = from_f<Y>(acc[i]);
    }
    if (!part || counters == nullptr) return;
    tg_split_sum<Y, BN, BM, L::THREADS>(y, ws, counters, M, N, splits, n0, m0);
#else
    __trap();  // only sm_90a has wgmma; the launcher never picks this kernel elsewhere
#endif
}

template <bool XF32, int WST, int XST, int WGS, typename Y, bool XS = false>
__device__ __forceinline__ void tiled_gemm_wg(const bf16* W, const void* x, Y* y, float* ws, unsigned* counters, int M,
                                              int N, int K, int ks, int splits) {
    const int m0 = TgTile<64 * WGS, 32 * WGS>(M, K, ks).m0;  // the body's tile: only m0 here
    const int live = min(32 * WGS, (M - m0 + 15) / 16 * 16);
    switch (live > 64 ? 128 : live) {  // block-uniform
        case 16: tiled_gemm_wg_nb<XF32, WST, XST, WGS, 16, Y, XS>(W, x, y, ws, counters, M, N, K, ks, splits); break;
        case 32: tiled_gemm_wg_nb<XF32, WST, XST, WGS, 32, Y, XS>(W, x, y, ws, counters, M, N, K, ks, splits); break;
        case 48: tiled_gemm_wg_nb<XF32, WST, XST, WGS, 48, Y, XS>(W, x, y, ws, counters, M, N, K, ks, splits); break;
        case 64: tiled_gemm_wg_nb<XF32, WST, XST, WGS, 64, Y, XS>(W, x, y, ws, counters, M, N, K, ks, splits); break;
        default:
            if constexpr (WGS == 4) tiled_gemm_wg_nb<XF32, WST, XST, WGS, 128, Y, XS>(W, x, y, ws, counters, M, N, K, ks, splits);
            break;
    }
}

// The stage counts come from registry::TILED_STAGES (KILN_TILED_W_SLOTS, KILN_TILED_X_SLOTS).
#define GEMM_TILED_WG(NAME, SMEMN, WGS, MINB, XN, XT, XF, YN, YT)                                  \
    static_assert((TgwLayout<XF, KILN_TILED_W_SLOTS, KILN_TILED_X_SLOTS, WGS>::SMEM == KILN_SMEM_##SMEMN##_##XN), \
                  "the launcher's shared memory (registry.rs) differs from this layout");       \
    extern "C" __global__ void __launch_bounds__(128 * WGS, MINB)                                 \
        kiln_gemm_tiled_##NAME##_x##XN##_y##YN(const bf16* W, const XT* x, YT* y, float* ws,      \
                                               unsigned* counters, int M, int N, int K, int ks,   \
                                               int splits) {                                      \
        tiled_gemm_wg<XF, KILN_TILED_W_SLOTS, KILN_TILED_X_SLOTS, WGS, YT>(W, x, y, ws, counters, M, N, K, ks, splits); \
    }
GEMM_TILED_WG(wg, GEMM_TILED_WG, 2, 2, f32, float, true, f32, float)
GEMM_TILED_WG(wg, GEMM_TILED_WG, 2, 2, f32, float, true, bf16, bf16)
GEMM_TILED_WG(wg, GEMM_TILED_WG, 2, 2, bf16, bf16, false, f32, float)
GEMM_TILED_WG(wg, GEMM_TILED_WG, 2, 2, bf16, bf16, false, bf16, bf16)
GEMM_TILED_WG(wg4, GEMM_TILED_WG4, 4, 1, f32, float, true, f32, float)
GEMM_TILED_WG(wg4, GEMM_TILED_WG4, 4, 1, f32, float, true, bf16, bf16)
GEMM_TILED_WG(wg4, GEMM_TILED_WG4, 4, 1, bf16, bf16, false, f32, float)
GEMM_TILED_WG(wg4, GEMM_TILED_WG4, 4, 1, bf16, bf16, false, bf16, bf16)

// The split-x wgmma kernels, kiln_gemm_tiled_wg{,4}_xs_y{f32,bf16}(W, xs, y, ...): x as
// kiln_split_hilo's rows (GemmKind::TiledWgmmaSplitX / TiledWgmmaWideSplitX); the shared
// memory of fp32 x.
#define GEMM_TILED_WG_XS(NAME, SMEMN, WGS, MINB, YN, YT)                                           \
    extern "C" __global__ void __launch_bounds__(128 * WGS, MINB)                                 \
        kiln_gemm_tiled_##NAME##_xs_y##YN(const bf16* W, const bf16* xs, YT* y, float* ws,        \
                                          unsigned* counters, int M, int N, int K, int ks,        \
                                          int splits) {                                           \
        tiled_gemm_wg<true, KILN_TILED_W_SLOTS, KILN_TILED_X_SLOTS, WGS, YT, true>(W, xs, y, ws, counters, M, N, K, ks, splits); \
    }
GEMM_TILED_WG_XS(wg, GEMM_TILED_WG, 2, 2, f32, float)
GEMM_TILED_WG_XS(wg, GEMM_TILED_WG, 2, 2, bf16, bf16)
GEMM_TILED_WG_XS(wg4, GEMM_TILED_WG4, 4, 1, f32, float)
GEMM_TILED_WG_XS(wg4, GEMM_TILED_WG4, 4, 1, bf16, bf16)
