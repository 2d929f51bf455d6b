// Gated DeltaNet prefill over a chunk of tokens for one or several sequences: the chunked
// (UT/WY) form, 64 tokens per chunk, fp32 state carried across chunks and calls.
//
// kiln_gdn_prefill_{f32,bf16}(const float* qkv, int ld_qkv, const T* b, const T* a, int ld_ba,
//     const float* A_log, const float* dt_bias, float* state, const int* cu_seqlens,
//     const int* slots, float* out, int ld_out, int nseq)
//   qkv [T_total][ld_qkv] fp32: the conv + SiLU output (kiln_conv1d_*), channels
//     [q (LIN_NK*LIN_DK) | k | v (LIN_NV*LIN_DV)]; sequence s owns rows
//     [cu_seqlens[s], cu_seqlens[s+1]). Read with 16-byte loads: qkv 16-byte aligned,
//     ld_qkv % 4 == 0 (the launcher checks).
//   b, a [T_total][ld_ba] (type T): in_proj_b / in_proj_a outputs (LIN_NV each).
//   A_log, dt_bias [LIN_NV] fp32.
//   state [slots][LIN_NV][LIN_DK][LIN_DV] fp32, read at the start and written back at the
//     end (the fp32 state carried across chunks and requests); slots[s] < 0 skips.
//   out [T_total][ld_out] fp32: o = S^T q per value head at h*LIN_DV, before the gated
//     RMSNorm (apply kiln_gated_rmsnorm_* next).
//   Per token the same arithmetic as gdn_decode.cu: q, k L2-normalised (eps 1e-6), q
//   scaled by 1/sqrt(LIN_DK), beta = sigmoid(b), g = -exp(A_log) * softplus(a + dt_bias).
//
// Grid (LIN_DV/32, LIN_NV, nseq), block 256 (8 warps), GP_SMEM_BYTES of dynamic shared
// memory (about 186 KB at dk 128; the launcher mirrors the size). Each block owns a
// 32-column slab of one head's S (dk x 32, kept transposed in mma accumulators, fp32)
// and walks its sequence in chunks of 64 tokens (the last shorter, zero-padded). Per
// chunk, with cum = inclusive cumsum of g, e_i = exp(cum_i):
//   A[i][j] = beta_i (k_i.k_j) exp(cum_i - cum_j)   (j < i)
//   P[i][j] = (q_i.k_j) exp(cum_i - cum_j)          (j <= i)
//   R_i     = beta_i (v_i - e_i k_i^T S)
//   V'      = (I + A)^-1 R                            (the new values, v_new)
//   out_i   = e_i q_i^T S + sum_j P[i][j] V'_j
//   S       = exp(cum_last) S + sum_j exp(cum_last - cum_j) k_j V'_j^T
// which is (I+A)^-1 (beta v) - (I+A)^-1 (beta e k) S of the UT/WY form (gdn_chunked in
// src/backend/cpu/ops.rs), solved per 16-token block: D_b = (I + A_bb)^-1 by forward
// substitution (fp32, one lane per column), then X_b = D_b (R_b - sum_{c<b} A_bc X_c).
// All products run on mma.sync m16n8k16 with fp32 operands split into bf16 hi + lo and
// three MMAs (hi*hi + hi*lo + lo*hi, ~16 mantissa bits, error ~1e-5 of fp32), fp32
// accumulation. Operands live in shared memory as uint2 {hi pair, lo pair} with the
// contraction index paired, rows padded so fragment loads are conflict-free.
// Phases per chunk (barriers between):
//   1 all: L2-normalise and split q, k (two threads per row), v slab, beta, g; prefetch
//     the next chunk into registers
//   2 warp 0: cumsum; warps 0-3: [Q;K] S (32 token rows each); warps 4-7: Q K^T and
//     K K^T on the 20 lower tiles (5 tile positions each)
//   3 warps 4-7: P, -A (split), diagonal blocks of A (fp32); warps 0-1: e_i q_i S;
//     warps 2-3: R
//   4 warps 0-1 (each c half of the slab): the four D_b, then the block solve for V'^T
//   5 all: out (two 16x8 tiles each) and the S update (dk tiles), S split for the next
//     chunk
// Deterministic: a chunk's result does not depend on other sequences or blocks, so a
// sequence split at a multiple of 64 tokens over several calls gives bit-identical
// states.
#include "common.cuh"

using namespace kiln;

#define GP_C 64                   // tokens per chunk
#define GP_W 32                   // value columns per block
#define GP_THREADS 256
#define GP_KT (LIN_DK / 16)       // k16 steps over dk
#define GP_NT (LIN_DK / 8)        // n8 tiles over dk
#define GP_NTW ((GP_NT + 7) / 8)  // dk tiles of S^T per warp
#define GP_F4 (LIN_DK / 8)        // float4s of one q or k row per thread (two threads a row)
#define GP_LDK (LIN_DK / 2 + 4)   // uint2 row stride of sQ, sK, sST (pairs along dk)
#define GP_LDT (GP_C / 2 + 4)     // uint2 row stride of sP, sAm, sVn, sU (pairs along tokens)
#define GP_LDD 12                 // uint2 row stride of the 16x16 diagonal inverses
#define GP_LDF (GP_W + 8)         // float row stride of sQS, sR
#define GP_LDV (GP_W + 4)         // float row stride of sV
#define GP_LDA 17                 // float row stride of the diagonal blocks of A

static_assert(LIN_DK % 16 == 0, "LIN_DK must be a multiple of 16");
static_assert(LIN_DV % GP_W == 0, "LIN_DV must be a multiple of 32");

#define GP_OFF_Q 0
#define GP_OFF_K (GP_OFF_Q + GP_C * GP_LDK * 8)
#define GP_OFF_ST (GP_OFF_K + GP_C * GP_LDK * 8)
#define GP_OFF_P (GP_OFF_ST + GP_W * GP_LDK * 8)
#define GP_OFF_AM (GP_OFF_P + GP_C * GP_LDT * 8)
#define GP_OFF_VN (GP_OFF_AM + GP_C * GP_LDT * 8)
#define GP_OFF_U (GP_OFF_VN + GP_W * GP_LDT * 8)
#define GP_OFF_D (GP_OFF_U + GP_W * GP_LDT * 8)
#define GP_OFF_V (GP_OFF_D + 2 * GP_C * GP_LDD * 8)
#define GP_OFF_QS (GP_OFF_V + GP_C * GP_LDV * 4)
#define GP_OFF_R (GP_OFF_QS + GP_C * GP_LDF * 4)
#define GP_OFF_AD (GP_OFF_R + GP_C * GP_LDF * 4)
#define GP_OFF_VEC (GP_OFF_AD + GP_C * GP_LDA * 4)
#define GP_SMEM_BYTES (GP_OFF_VEC + 6 * GP_C * 4)
static_assert(GP_SMEM_BYTES <= 232448, "LIN_DK too large for the chunked prefill's shared memory");

// {bf16x2 hi, bf16x2 lo} of two floats: x ~= hi + lo to about 16 mantissa bits.
__device__ __forceinline__ uint2 gp_split(float x0, float x1) {
    const unsigned hi = pack_bf16x2(x0, x1);
    const unsigned lo = pack_bf16x2(x0 - bf16lo(hi), x1 - bf16hi(hi));
    return make_uint2(hi, lo);
}

// d += a * b, m16n8k16, bf16 operands, fp32 accumulators.
__device__ __forceinline__ void gp_mma(float* d, const unsigned* a, const unsigned* b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// d += a * b for split operands (small terms first).
__device__ __forceinline__ void gp_mma3(float* d, const unsigned* ah, const unsigned* al, const unsigned* bh,
                                        const unsigned* bl) {
    gp_mma(d, al, bh);
    gp_mma(d, ah, bl);
    gp_mma(d, ah, bh);
}

// A fragment (rows row0..row0+15, k pairs kp0..kp0+7) of a split matrix, pairs along k.
__device__ __forceinline__ void gp_load_a(const uint2* m, int ld, int row0, int kp0, int g, int t, unsigned* ah,
                                          unsigned* al) {
    const uint2* p = m + (row0 + g) * ld + kp0 + t;
    const uint2 v0 = p[0], v1 = p[8 * ld], v2 = p[4], v3 = p[8 * ld + 4];
    ah[0] = v0.x; ah[1] = v1.x; ah[2] = v2.x; ah[3] = v3.x;
    al[0] = v0.y; al[1] = v1.y; al[2] = v2.y; al[3] = v3.y;
}

// B fragment (n rows n0..n0+7 of B^T, k pairs kp0..kp0+7) of a split matrix stored as
// B^T with pairs along k.
__device__ __forceinline__ void gp_load_b(const uint2* m, int ld, int n0, int kp0, int g, int t, unsigned* bh,
                                          unsigned* bl) {
    const uint2* p = m + (n0 + g) * ld + kp0 + t;
    const uint2 v0 = p[0], v1 = p[4];
    bh[0] = v0.x; bh[1] = v1.x;
    bl[0] = v0.y; bl[1] = v1.y;
}

// S^T accumulators -> the split S^T operand (rows c, pairs along dk).
__device__ __forceinline__ void gp_store_st(uint2* sST, const float (&sacc)[GP_NTW][2][4], int warp, int g, int t) {
#pragma unroll
    for (int s = 0; s < GP_NTW; ++s) {
        const int nt = warp + 8 * s;
        if (nt < GP_NT) {
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
                const int r = 16 * mt + g;
                sST[r * GP_LDK + 4 * nt + t] = gp_split(sacc[s][mt][0], sacc[s][mt][1]);
                sST[(r + 8) * GP_LDK + 4 * nt + t] = gp_split(sacc[s][mt][2], sacc[s][mt][3]);
            }
        }
    }
}

// One chunk's raw inputs into registers: thread = (row tid/2 of [q;k], half tid%2) holds
// float4s 2i + half of that row; v slab float4s tid and tid + 256; b, a of token tid.
// Tokens >= n read as zero.
template <typename T>
__device__ __forceinline__ void gp_fetch(const float* __restrict__ qkv, int ld_qkv, const T* __restrict__ b,
                                         const T* __restrict__ a, int ld_ba, int tb, int n, int kh, int h, int c0,
                                         int tid, float4 (&rq)[GP_F4], float4 (&rv)[2], float& rb, float& ra) {
    const int row = tid >> 1, hf = tid & 1, tok = row & (GP_C - 1);
    const float4 z = make_float4(0.f, 0.f, 0.f, 0.f);
    if (tok < n) {
        const float4* src = reinterpret_cast<const float4*>(qkv + (size_t)(tb + tok) * ld_qkv +
                                                            (row >= GP_C ? LIN_KEY_DIM : 0) + kh * LIN_DK);
#pragma unroll
        for (int i = 0; i < GP_F4; ++i) rq[i] = __ldg(src + 2 * i + hf);
    } else {
#pragma unroll
        for (int i = 0; i < GP_F4; ++i) rq[i] = z;
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int f = tid + r * GP_THREADS, vt = f >> 3, c4 = f & 7;
        rv[r] = vt < n ? __ldg(reinterpret_cast<const float4*>(qkv + (size_t)(tb + vt) * ld_qkv + 2 * LIN_KEY_DIM +
                                                                h * LIN_DV + c0) + c4)
                       : z;
    }
    rb = 0.f;
    ra = 0.f;
    if (tid < n) {
        rb = to_f(b[(size_t)(tb + tid) * ld_ba + h]);
        ra = to_f(a[(size_t)(tb + tid) * ld_ba + h]);
    }
}

template <typename T>
__device__ __forceinline__ void gdn_prefill(const float* __restrict__ qkv, int ld_qkv, const T* __restrict__ b,
                                            const T* __restrict__ a, int ld_ba, const float* __restrict__ A_log,
                                            const float* __restrict__ dt_bias, float* __restrict__ state,
                                            const int* __restrict__ cu_seqlens, const int* __restrict__ slots,
                                            float* __restrict__ out, int ld_out, int nseq) {
    extern __shared__ __align__(16) unsigned char gp_smem[];
    KILN_PDL_ENTER();
    {
        unsigned dyn;
        asm volatile("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dyn));
        if (dyn < GP_SMEM_BYTES) __trap();  // launched without the shared memory it needs
    }
    const int slab = blockIdx.x, h = blockIdx.y, sq = blockIdx.z;
    if (sq >= nseq) return;
    const int slot = slots[sq];
    if (slot < 0) return;
    const int t0 = cu_seqlens[sq], t1 = cu_seqlens[sq + 1];
    if (t1 <= t0) return;

    uint2* sQ = reinterpret_cast<uint2*>(gp_smem + GP_OFF_Q);    // [64][GP_LDK] q rows
    uint2* sK = reinterpret_cast<uint2*>(gp_smem + GP_OFF_K);    // [64][GP_LDK] k rows
    uint2* sST = reinterpret_cast<uint2*>(gp_smem + GP_OFF_ST);  // [32][GP_LDK] S^T rows
    uint2* sP = reinterpret_cast<uint2*>(gp_smem + GP_OFF_P);    // [64][GP_LDT] P rows
    uint2* sAm = reinterpret_cast<uint2*>(gp_smem + GP_OFF_AM);  // [64][GP_LDT] -A rows
    uint2* sVn = reinterpret_cast<uint2*>(gp_smem + GP_OFF_VN);  // [32][GP_LDT] V'^T rows
    uint2* sU = reinterpret_cast<uint2*>(gp_smem + GP_OFF_U);    // [32][GP_LDT] (w V')^T rows
    uint2* sD = reinterpret_cast<uint2*>(gp_smem + GP_OFF_D);    // 2 x [64][GP_LDD] D_b rows
    float* sV = reinterpret_cast<float*>(gp_smem + GP_OFF_V);    // [64][GP_LDV] v slab
    float* sQS = reinterpret_cast<float*>(gp_smem + GP_OFF_QS);  // [64][GP_LDF] e_i q_i S
    float* sR = reinterpret_cast<float*>(gp_smem + GP_OFF_R);    // [64][GP_LDF] R
    float* sAd = reinterpret_cast<float*>(gp_smem + GP_OFF_AD);  // [64][GP_LDA] diag blocks of A
    float* sG = reinterpret_cast<float*>(gp_smem + GP_OFF_VEC);  // [64] g (log decay)
    float* sBeta = sG + GP_C;
    float* sCum = sG + 2 * GP_C;
    float* sEc = sG + 3 * GP_C;   // exp(cum_i)
    float* sWt = sG + 4 * GP_C;   // exp(cum_last - cum_j)
    float* sMisc = sG + 5 * GP_C; // [0] exp(cum_last)

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const unsigned full = 0xffffffffu;
    const int kh = h / GDN_GROUP, c0 = slab * GP_W;
    const float neg_a = -expf(A_log[h]), dtb = dt_bias[h];
    float* Sg = state + ((size_t)slot * LIN_NV + h) * LIN_DK * LIN_DV + c0;

    // S^T[c][dk] for this warp's dk tiles (nt = warp + 8s), both c halves (mt).
    float sacc[GP_NTW][2][4];
#pragma unroll
    for (int s = 0; s < GP_NTW; ++s) {
        const int nt = warp + 8 * s;
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
            const int c = 16 * mt + g, dk = 8 * nt + 2 * t;
            if (nt < GP_NT) {
                sacc[s][mt][0] = Sg[(size_t)dk * LIN_DV + c];
                sacc[s][mt][1] = Sg[(size_t)(dk + 1) * LIN_DV + c];
                sacc[s][mt][2] = Sg[(size_t)dk * LIN_DV + c + 8];
                sacc[s][mt][3] = Sg[(size_t)(dk + 1) * LIN_DV + c + 8];
            } else {
                sacc[s][mt][0] = sacc[s][mt][1] = sacc[s][mt][2] = sacc[s][mt][3] = 0.f;
            }
        }
    }
    gp_store_st(sST, sacc, warp, g, t);

    float4 rq[GP_F4], rv[2];
    float rb, ra;
    gp_fetch<T>(qkv, ld_qkv, b, a, ld_ba, t0, min(GP_C, t1 - t0), kh, h, c0, tid, rq, rv, rb, ra);

    // Accumulators of phase 2, consumed in phase 3.
    float qacc[2][4][4];            // warps 0-3: [Q;K] S, 32 rows x 32 columns
    float gpa[5][4], gaa[5][4];     // warps 4-7: Q K^T and K K^T tiles
    const int grp = warp & 3;
    // Gram tiles of warps 4-7: row block m (16 rows), column tile n (8): positions
    // q < split in row block mA, the rest in mB; 20 positions cover n <= 2m+1.
    const int mA = grp < 2 ? 3 : 2;
    const int mB = grp == 1 ? 0 : (grp == 3 ? 1 : mA);
    const int split = grp == 1 ? 3 : (grp == 3 ? 1 : 5);

    for (int tb = t0; tb < t1; tb += GP_C) {
        const int n = min(GP_C, t1 - tb);
        __syncthreads();  // the previous chunk is done with every buffer

        // ---- 1: normalise and split q, k; v slab; beta, g ----
        {
            const int row = tid >> 1, hf = tid & 1, tok = row & (GP_C - 1);
            const bool isk = row >= GP_C;
            float ss = 0.f;
#pragma unroll
            for (int i = 0; i < GP_F4; ++i)
                ss += rq[i].x * rq[i].x + rq[i].y * rq[i].y + rq[i].z * rq[i].z + rq[i].w * rq[i].w;
            ss += __shfl_xor_sync(full, ss, 1);
            const float sc = isk ? rsqrtf(ss + 1e-6f) : rsqrtf(ss + 1e-6f) * rsqrtf((float)LIN_DK);
            uint2* dst = (isk ? sK : sQ) + tok * GP_LDK;
#pragma unroll
            for (int i = 0; i < GP_F4; ++i) {
                const uint2 p0 = gp_split(rq[i].x * sc, rq[i].y * sc), p1 = gp_split(rq[i].z * sc, rq[i].w * sc);
                *reinterpret_cast<uint4*>(dst + 2 * (2 * i + hf)) = make_uint4(p0.x, p0.y, p1.x, p1.y);
            }
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int f = tid + r * GP_THREADS, vt = f >> 3, c4 = f & 7;
                *reinterpret_cast<float4*>(sV + vt * GP_LDV + 4 * c4) = rv[r];
            }
            if (tid < GP_C) {
                sBeta[tid] = tid < n ? sigmoidf_(rb) : 0.f;
                sG[tid] = tid < n ? neg_a * softplusf_(ra + dtb) : 0.f;
            }
        }
        if (tb + GP_C < t1) gp_fetch<T>(qkv, ld_qkv, b, a, ld_ba, tb + GP_C, min(GP_C, t1 - tb - GP_C), kh, h, c0, tid, rq, rv, rb, ra);
        __syncthreads();

        // ---- 2: cumsum; [Q;K] S; Q K^T and K K^T ----
        if (warp == 0) {
            const float g0 = sG[2 * lane], g1 = sG[2 * lane + 1];
            float s = g0 + g1;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const float y = __shfl_up_sync(full, s, o);
                if (lane >= o) s += y;
            }
            float ex = __shfl_up_sync(full, s, 1);
            if (lane == 0) ex = 0.f;
            const float cu0 = ex + g0, cu1 = cu0 + g1;
            const int ln = (n - 1) >> 1;
            const float l0 = __shfl_sync(full, cu0, ln), l1 = __shfl_sync(full, cu1, ln);
            const float last = ((n - 1) & 1) ? l1 : l0;
            sCum[2 * lane] = cu0;
            sCum[2 * lane + 1] = cu1;
            sEc[2 * lane] = expf(cu0);
            sEc[2 * lane + 1] = expf(cu1);
            sWt[2 * lane] = expf(last - cu0);
            sWt[2 * lane + 1] = expf(last - cu1);
            if (lane == 0) sMisc[0] = expf(last);
        }
        if (warp < 4) {
            const uint2* src = warp < 2 ? sQ : sK;
            const int r0 = 32 * (warp & 1);
#pragma unroll
            for (int mt = 0; mt < 2; ++mt)
#pragma unroll
                for (int nt = 0; nt < 4; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) qacc[mt][nt][e] = 0.f;
#pragma unroll 2
            for (int kk = 0; kk < GP_KT; ++kk) {
                unsigned ah[2][4], al[2][4], bh[4][2], bl[4][2];
#pragma unroll
                for (int mt = 0; mt < 2; ++mt) gp_load_a(src, GP_LDK, r0 + 16 * mt, 8 * kk, g, t, ah[mt], al[mt]);
#pragma unroll
                for (int nt = 0; nt < 4; ++nt) gp_load_b(sST, GP_LDK, 8 * nt, 8 * kk, g, t, bh[nt], bl[nt]);
#pragma unroll
                for (int mt = 0; mt < 2; ++mt)
#pragma unroll
                    for (int nt = 0; nt < 4; ++nt) gp_mma3(qacc[mt][nt], ah[mt], al[mt], bh[nt], bl[nt]);
            }
        } else {
#pragma unroll
            for (int q = 0; q < 5; ++q)
#pragma unroll
                for (int e = 0; e < 4; ++e) gpa[q][e] = gaa[q][e] = 0.f;
#pragma unroll 1
            for (int kk = 0; kk < GP_KT; ++kk) {
                unsigned qah[4], qal[4], kah[4], kal[4], qbh[4], qbl[4], kbh[4], kbl[4];
                gp_load_a(sQ, GP_LDK, 16 * mA, 8 * kk, g, t, qah, qal);
                gp_load_a(sK, GP_LDK, 16 * mA, 8 * kk, g, t, kah, kal);
                if (mB != mA) {
                    gp_load_a(sQ, GP_LDK, 16 * mB, 8 * kk, g, t, qbh, qbl);
                    gp_load_a(sK, GP_LDK, 16 * mB, 8 * kk, g, t, kbh, kbl);
                } else {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        qbh[e] = qah[e]; qbl[e] = qal[e]; kbh[e] = kah[e]; kbl[e] = kal[e];
                    }
                }
#pragma unroll
                for (int q = 0; q < 5; ++q) {
                    const int nn = q < split ? ((grp & 1) ? 5 + q : q) : q - split;
                    unsigned bh[2], bl[2];
                    gp_load_b(sK, GP_LDK, 8 * nn, 8 * kk, g, t, bh, bl);
                    if (q < split) {
                        gp_mma3(gpa[q], qah, qal, bh, bl);
                        gp_mma3(gaa[q], kah, kal, bh, bl);
                    } else {
                        gp_mma3(gpa[q], qbh, qbl, bh, bl);
                        gp_mma3(gaa[q], kbh, kbl, bh, bl);
                    }
                }
            }
        }
        __syncthreads();  // cumsum visible

        // ---- 3: P, -A, diag(A); e_i q_i S; R ----
        if (warp >= 4) {
#pragma unroll
            for (int q = 0; q < 5; ++q) {
                const int m = q < split ? mA : mB;
                const int nn = q < split ? ((grp & 1) ? 5 + q : q) : q - split;
                const int j0 = 8 * nn + 2 * t;
                const float cj0 = sCum[j0], cj1 = sCum[j0 + 1];
#pragma unroll
                for (int hr = 0; hr < 2; ++hr) {
                    const int i = 16 * m + g + 8 * hr;
                    const float ci = sCum[i], bi = sBeta[i];
                    float p0 = 0.f, p1 = 0.f, a0 = 0.f, a1 = 0.f;
                    if (j0 <= i) {
                        const float d = expf(ci - cj0);
                        p0 = gpa[q][2 * hr] * d;
                        if (j0 < i) a0 = bi * gaa[q][2 * hr] * d;
                    }
                    if (j0 + 1 <= i) {
                        const float d = expf(ci - cj1);
                        p1 = gpa[q][2 * hr + 1] * d;
                        if (j0 + 1 < i) a1 = bi * gaa[q][2 * hr + 1] * d;
                    }
                    sP[i * GP_LDT + 4 * nn + t] = gp_split(p0, p1);
                    sAm[i * GP_LDT + 4 * nn + t] = gp_split(-a0, -a1);
                    if ((nn >> 1) == m) {
                        sAd[i * GP_LDA + j0 - 16 * m] = a0;
                        sAd[i * GP_LDA + j0 + 1 - 16 * m] = a1;
                    }
                }
            }
        } else {
            const bool isq = warp < 2;
#pragma unroll
            for (int mt = 0; mt < 2; ++mt)
#pragma unroll
                for (int hr = 0; hr < 2; ++hr) {
                    const int i = 32 * (warp & 1) + 16 * mt + g + 8 * hr;
                    const float ei = sEc[i], bi = sBeta[i];
#pragma unroll
                    for (int nt = 0; nt < 4; ++nt) {
                        const int c = 8 * nt + 2 * t;
                        const float x0 = qacc[mt][nt][2 * hr], x1 = qacc[mt][nt][2 * hr + 1];
                        if (isq) {
                            *reinterpret_cast<float2*>(sQS + i * GP_LDF + c) = make_float2(ei * x0, ei * x1);
                        } else {
                            const float2 v = *reinterpret_cast<const float2*>(sV + i * GP_LDV + c);
                            *reinterpret_cast<float2*>(sR + i * GP_LDF + c) =
                                make_float2(bi * (v.x - ei * x0), bi * (v.y - ei * x1));
                        }
                    }
                }
        }
        __syncthreads();

        // ---- 4: diagonal inverses and the block solve (warps 0-1, c rows 16*warp..) ----
        if (warp < 2) {
            uint2* sDw = sD + warp * GP_C * GP_LDD;  // this warp's copy of D_0..D_3
#pragma unroll
            for (int hc = 0; hc < 2; ++hc) {
                const int col = lane + 32 * hc, bb = col >> 4, lc = col & 15;
                const float* Ab = sAd + 16 * bb * GP_LDA;
                float x[16];
#pragma unroll
                for (int r = 0; r < 16; ++r) {
                    float s0 = (r == lc) ? 1.f : 0.f, s1 = 0.f;
#pragma unroll
                    for (int j = 0; j < r; j += 2) {
                        s0 -= Ab[r * GP_LDA + j] * x[j];
                        if (j + 1 < r) s1 -= Ab[r * GP_LDA + j + 1] * x[j + 1];
                    }
                    x[r] = s0 + s1;
                }
#pragma unroll
                for (int r = 0; r < 16; ++r) {
                    const float y = __shfl_xor_sync(full, x[r], 1);
                    if (!(lc & 1)) sDw[(16 * bb + r) * GP_LDD + (lc >> 1)] = gp_split(x[r], y);
                }
            }
            __syncwarp();
            const int cr = 16 * warp;  // this warp's c rows
#pragma unroll
            for (int ib = 0; ib < 4; ++ib) {
                float acc[2][4];
#pragma unroll
                for (int nt = 0; nt < 2; ++nt) {
                    const int j = 16 * ib + 8 * nt + 2 * t, c = cr + g;
                    acc[nt][0] = sR[j * GP_LDF + c];
                    acc[nt][1] = sR[(j + 1) * GP_LDF + c];
                    acc[nt][2] = sR[j * GP_LDF + c + 8];
                    acc[nt][3] = sR[(j + 1) * GP_LDF + c + 8];
                }
#pragma unroll
                for (int kb = 0; kb < ib; ++kb) {
                    unsigned ah[4], al[4];
                    gp_load_a(sVn, GP_LDT, cr, 8 * kb, g, t, ah, al);
#pragma unroll
                    for (int nt = 0; nt < 2; ++nt) {
                        unsigned bh[2], bl[2];
                        gp_load_b(sAm, GP_LDT, 16 * ib + 8 * nt, 8 * kb, g, t, bh, bl);
                        gp_mma3(acc[nt], ah, al, bh, bl);
                    }
                }
                unsigned yh[4], yl[4];
                {
                    const uint2 p0 = gp_split(acc[0][0], acc[0][1]), p1 = gp_split(acc[0][2], acc[0][3]);
                    const uint2 p2 = gp_split(acc[1][0], acc[1][1]), p3 = gp_split(acc[1][2], acc[1][3]);
                    yh[0] = p0.x; yh[1] = p1.x; yh[2] = p2.x; yh[3] = p3.x;
                    yl[0] = p0.y; yl[1] = p1.y; yl[2] = p2.y; yl[3] = p3.y;
                }
#pragma unroll
                for (int nt = 0; nt < 2; ++nt) {
                    float xo[4] = {0.f, 0.f, 0.f, 0.f};
                    unsigned bh[2], bl[2];
                    gp_load_b(sDw + 16 * ib * GP_LDD, GP_LDD, 8 * nt, 0, g, t, bh, bl);
                    gp_mma3(xo, yh, yl, bh, bl);
                    const int j = 16 * ib + 8 * nt + 2 * t;
                    const float w0 = sWt[j], w1 = sWt[j + 1];
#pragma unroll
                    for (int hr = 0; hr < 2; ++hr) {
                        const int c = cr + g + 8 * hr;
                        const float x0 = xo[2 * hr], x1 = xo[2 * hr + 1];
                        sVn[c * GP_LDT + 8 * ib + 4 * nt + t] = gp_split(x0, x1);
                        sU[c * GP_LDT + 8 * ib + 4 * nt + t] = gp_split(w0 * x0, w1 * x1);
                    }
                }
                __syncwarp();
            }
        }
        __syncthreads();

        // ---- 5: out; S update ----
        {
            const int nt = warp & 3;
#pragma unroll
            for (int u = 0; u < 2; ++u) {
                const int m = u == 0 ? (warp < 4 ? 3 : 2) : (warp < 4 ? 0 : 1);
                const int i0 = 16 * m + g, i1 = i0 + 8, c = 8 * nt + 2 * t;
                float acc[4];
                acc[0] = sQS[i0 * GP_LDF + c];
                acc[1] = sQS[i0 * GP_LDF + c + 1];
                acc[2] = sQS[i1 * GP_LDF + c];
                acc[3] = sQS[i1 * GP_LDF + c + 1];
#pragma unroll 1
                for (int kk = 0; kk <= m; ++kk) {
                    unsigned ah[4], al[4], bh[2], bl[2];
                    gp_load_a(sP, GP_LDT, 16 * m, 8 * kk, g, t, ah, al);
                    gp_load_b(sVn, GP_LDT, 8 * nt, 8 * kk, g, t, bh, bl);
                    gp_mma3(acc, ah, al, bh, bl);
                }
                float* o = out + (size_t)tb * ld_out + h * LIN_DV + c0 + c;
                if (i0 < n) {
                    o[(size_t)i0 * ld_out] = acc[0];
                    o[(size_t)i0 * ld_out + 1] = acc[1];
                }
                if (i1 < n) {
                    o[(size_t)i1 * ld_out] = acc[2];
                    o[(size_t)i1 * ld_out + 1] = acc[3];
                }
            }
            const float el = sMisc[0];
#pragma unroll
            for (int s = 0; s < GP_NTW; ++s)
#pragma unroll
                for (int mt = 0; mt < 2; ++mt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) sacc[s][mt][e] *= el;
#pragma unroll
            for (int kk = 0; kk < GP_C / 16; ++kk) {
                unsigned ah[2][4], al[2][4];
#pragma unroll
                for (int mt = 0; mt < 2; ++mt) gp_load_a(sU, GP_LDT, 16 * mt, 8 * kk, g, t, ah[mt], al[mt]);
#pragma unroll
                for (int s = 0; s < GP_NTW; ++s) {
                    const int dnt = warp + 8 * s;
                    if (dnt < GP_NT) {
                        // B[k = token][n = dk] = K[token][dk]: two tokens' halves per register.
                        const int dk = 8 * dnt + g;
                        const uint2* kp = sK + (16 * kk + 2 * t) * GP_LDK + (dk >> 1);
                        const unsigned sel = (dk & 1) ? 0x7632u : 0x5410u;
                        const uint2 k0 = kp[0], k1 = kp[GP_LDK], k8 = kp[8 * GP_LDK], k9 = kp[9 * GP_LDK];
                        unsigned bh[2], bl[2];
                        bh[0] = __byte_perm(k0.x, k1.x, sel);
                        bh[1] = __byte_perm(k8.x, k9.x, sel);
                        bl[0] = __byte_perm(k0.y, k1.y, sel);
                        bl[1] = __byte_perm(k8.y, k9.y, sel);
#pragma unroll
                        for (int mt = 0; mt < 2; ++mt) gp_mma3(sacc[s][mt], ah[mt], al[mt], bh, bl);
                    }
                }
            }
            gp_store_st(sST, sacc, warp, g, t);
        }
    }

#pragma unroll
    for (int s = 0; s < GP_NTW; ++s) {
        const int nt = warp + 8 * s;
        if (nt < GP_NT) {
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
                const int c = 16 * mt + g, dk = 8 * nt + 2 * t;
                Sg[(size_t)dk * LIN_DV + c] = sacc[s][mt][0];
                Sg[(size_t)(dk + 1) * LIN_DV + c] = sacc[s][mt][1];
                Sg[(size_t)dk * LIN_DV + c + 8] = sacc[s][mt][2];
                Sg[(size_t)(dk + 1) * LIN_DV + c + 8] = sacc[s][mt][3];
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(GP_THREADS, 1)
    kiln_gdn_prefill_f32(const float* qkv, int ld_qkv, const float* b, const float* a, int ld_ba,
                         const float* A_log, const float* dt_bias, float* state, const int* cu_seqlens,
                         const int* slots, float* out, int ld_out, int nseq) {
    gdn_prefill<float>(qkv, ld_qkv, b, a, ld_ba, A_log, dt_bias, state, cu_seqlens, slots, out, ld_out, nseq);
}
extern "C" __global__ void __launch_bounds__(GP_THREADS, 1)
    kiln_gdn_prefill_bf16(const float* qkv, int ld_qkv, const bf16* b, const bf16* a, int ld_ba,
                          const float* A_log, const float* dt_bias, float* state, const int* cu_seqlens,
                          const int* slots, float* out, int ld_out, int nseq) {
    gdn_prefill<bf16>(qkv, ld_qkv, b, a, ld_ba, A_log, dt_bias, state, cu_seqlens, slots, out, ld_out, nseq);
}
