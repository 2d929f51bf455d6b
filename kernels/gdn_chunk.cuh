// Shared by the Gated DeltaNet prefill's two modules (gdn_prefill.cu, the pre-pass, and
// gdn_scan.cu, the scan): the chunked form, the workspace record, the shared-memory
// layouts and the split-MMA fragment helpers.
//
// Gated DeltaNet prefill over a chunk of tokens for one or several sequences: the chunked
// (UT/WY) form, 64 tokens per chunk, fp32 state carried across chunks and calls. Two
// kernels: a parallel pre-pass over (chunk, value head, sequence) that does everything
// independent of the state S and writes a workspace record per (chunk, head), then a
// sequential scan over each sequence's chunks that carries S.
//
// kiln_gdn_prefill_prep_{f32,bf16}(const float* qkv, int ld_qkv, const T* b, const T* a,
//     int ld_ba, const float* A_log, const float* dt_bias, const int* cu_seqlens,
//     const int* slots, float* ws, int ws_chunks, int nseq)
// kiln_gdn_prefill_scan(const float* ws, float* state, const int* cu_seqlens,
//     const int* slots, float* out, int ld_out, int ws_chunks, int nseq)
//   qkv [T_total][ld_qkv] fp32: the conv + SiLU output (kiln_conv1d_*), channels
//     [q (LIN_NK*LIN_DK) | k | v (LIN_NV*LIN_DV)]; sequence s owns rows
//     [cu_seqlens[s], cu_seqlens[s+1]). Read with 16-byte loads: qkv 16-byte aligned,
//     ld_qkv % 4 == 0 (the launcher checks).
//   b, a [T_total][ld_ba] (type T): in_proj_b / in_proj_a outputs (LIN_NV each).
//   A_log, dt_bias [LIN_NV] fp32.
//   state [slots][LIN_NV][LIN_DK][LIN_DV] fp32, read at the start of the scan and written
//     back at its end; slots[s] < 0 skips sequence s (both kernels).
//   out [T_total][ld_out] fp32: o = S^T q per value head at h*LIN_DV, before the gated
//     RMSNorm (apply kiln_gated_rmsnorm_* next).
//   ws: ws_chunks x LIN_NV records of GR_REC floats (16-byte aligned). Chunk c of
//     sequence s (tokens [cu[s] + 64c, min(cu[s] + 64c + 64, cu[s+1]))) uses record
//     (cu[s]/64 + s + c, h): disjoint per sequence, all below T_total/64 + nseq (the
//     launcher checks the capacity; the kernels trap past ws_chunks).
//   Per token the same arithmetic as gdn_decode.cu: q, k L2-normalised (eps 1e-6), q
//   scaled by 1/sqrt(LIN_DK), beta = sigmoid(b), g = -exp(A_log) * softplus(a + dt_bias).
//
// Math per chunk (n <= 64 tokens, rows >= n zero), cum = inclusive cumsum of g,
// e_i = exp(cum_i), d_j = exp(cum_last - cum_j):
//   A[i][j] = beta_i (k_i.k_j) exp(cum_i - cum_j)  (j < i),  T = (I + A)^-1
//   P[i][j] = (q_i.k_j) exp(cum_i - cum_j)          (j <= i)
//   W = T diag(beta e) K,  U = T diag(beta) V       (so V' = T beta (V - e K S) = U - W S)
//   Q' = diag(e) Q - P W,  O0 = P U                  (so out = e Q S + P V' = Q' S + O0)
//   Kd = diag(d) K
// and the scan does, per chunk: V' = U - W S; out = Q' S + O0; S = exp(cum_last) S + Kd^T V'.
// This is the chunked form of the previous kernel (and of ops::gdn_chunked) with the
// state-independent products moved to the pre-pass.
//
// All products run on mma.sync m16n8k16 with fp32 operands split into bf16 hi + lo and
// three MMAs (hi*hi + hi*lo + lo*hi, ~16 mantissa bits, error ~1e-5 of fp32), fp32
// accumulation. Fragment layouts (g = lane/4, t = lane%4; pairs packed low element first):
//   A regs a0..a3 = A(g, 2t..2t+1), A(g+8, 2t..), A(g, 2t+8..), A(g+8, 2t+8..)
//   B regs b0, b1 = B(2t..2t+1, g), B(2t+8..2t+9, g)
//   C regs d0..d3 = C(g, 2t), C(g, 2t+1), C(g+8, 2t), C(g+8, 2t+1)
// Fragment-native tiles (what the workspace and the scan's shared memory hold):
//   A tile (16x16, split): uint4[64]: [lane] = hi {a0..a3}, [32 + lane] = lo {a0..a3}
//   B tile (16x8, split):  uint4[32]: [lane] = {b0 hi, b1 hi, b0 lo, b1 lo}
//   C tile (16x8, fp32):   float4[32]: [lane] = {d0, d1, d2, d3}
// Two accumulator tiles of columns 8m..8m+7 and 8m+8..8m+15 of the same rows form the A
// fragment of that 16x16 block in the same lane (acc_to_a), so a product's output becomes
// the next product's A operand without moving data between lanes.
//
// Workspace record of (chunk, head), offsets in floats:
//   GR_WB  -W as B tiles of B(k = dk, n = i) = -W[i][dk]:  tile (ks, nt) at ks*8 + nt
//   GR_QB  Q' as B tiles, same layout
//   GR_KB  Kd as B tiles of B(k = j, n = dk) = Kd[j][dk]:  tile (kk, nt) at kk*(DK/8) + nt
//   GR_UA  U^T as C tiles of C(c, i) = U[i][c] (c over dv): tile (cm, nt) at cm*8 + nt
//   GR_OA  O0^T, same layout
//   GR_MISC [0] = exp(cum_last)
//
// Prep: grid (max chunks per sequence, LIN_NV, nseq), block 256 (8 warps), GR_SMEM_BYTES
// of dynamic shared memory (~184 KB at dk = dv = 128). Phases (barriers between):
//   1 all: q, k normalised (two threads per row), v, beta, g into shared memory (fp32)
//   2 all: Q K^T and K K^T on the 20 lower 16x8 tiles (warps 0-3: 3, 4-7: 2); warp 7
//     first takes the cumsum
//   3 all: P and -A (split, pairs along j), the diagonal 16x16 blocks of A (fp32)
//   4 warps 0-1: D_b = (I + A_bb)^-1 by forward substitution (a lane per column)
//   5 each warp a 32-column block of the right-hand sides [beta e K | beta V]: the block
//     solve X_b = D_b (R_b - sum_{c<b} A_bc X_c) kept transposed in registers; K blocks
//     then form Q'^T = e Q^T - W^T P^T, V blocks write U^T and O0^T = U^T P^T
//   6 all: -W, Q' and Kd re-tiled from shared memory to the record
// Scan: grid (LIN_DV/32, LIN_NV, nseq), block 256, GS_SMEM_BYTES (216 KB at dk 128). Each
// block owns a 32-column slab of one head's S (dk x 32) as S^T in fp32 accumulators (warp
// w: rows 16(w&1).., 16-wide dk blocks (w>>1) + 4p) and walks its sequence's chunks; the next
// chunk's -W, Q', Kd tiles stream in with cp.async (double-buffered) and its U^T, O0^T
// tiles into registers while the current chunk computes. Per chunk:
//   A  all: [V'^T | out^T] = [U^T | O0^T] + S^T [-W | Q']^T (warp w: c rows 16(w&1)..,
//      i tiles 4((w>>1)&1).. of -W (w < 4) or Q' (w >= 4)); V'^T goes to shared memory
//      as A tiles, out rows < n to global
//   B  all: S^T = exp(cum_last) S^T + V'^T Kd, then S^T as A tiles for the next chunk
// Deterministic: a chunk's result does not depend on other sequences or blocks, so a
// sequence split at a multiple of 64 tokens over several calls gives bit-identical
// states.
#pragma once
#include "common.cuh"

using namespace kiln;


#define GR_C 64                    // tokens per chunk
#define GR_THREADS 256
#define GR_KT (LIN_DK / 16)        // k16 steps over dk
#define GR_MAXD (LIN_DK > LIN_DV ? LIN_DK : LIN_DV)
#define GR_LDX (GR_MAXD + 4)       // float row stride of sQ, sK, sV, sW
#define GR_LDT (GR_C / 2 + 4)      // uint2 row stride of sP, sAm (pairs along j)
#define GR_LDD 12                  // uint2 row stride of the diagonal inverses
#define GR_LDA 17                  // float row stride of the diagonal blocks of A
#define GR_F4 (LIN_DK / 8)         // float4s of one q or k row per thread (two threads a row)
#define GR_NCB ((LIN_DK + LIN_DV) / 32)  // 32-column blocks of the right-hand sides

// Record layout (floats).
#define GR_WB 0
#define GR_QB (64 * LIN_DK)
#define GR_KB (128 * LIN_DK)
#define GR_UA (192 * LIN_DK)
#define GR_OA (192 * LIN_DK + 64 * LIN_DV)
#define GR_MISC (192 * LIN_DK + 128 * LIN_DV)
#define GR_REC (GR_MISC + 4)

static_assert(LIN_DK % 32 == 0, "LIN_DK must be a multiple of 32");
static_assert(LIN_DV % 32 == 0, "LIN_DV must be a multiple of 32");

#define GR_OFF_Q 0
#define GR_OFF_K (GR_OFF_Q + GR_C * GR_LDX * 4)
#define GR_OFF_V (GR_OFF_K + GR_C * GR_LDX * 4)
#define GR_OFF_W (GR_OFF_V + GR_C * GR_LDX * 4)
#define GR_OFF_P (GR_OFF_W + GR_C * GR_LDX * 4)
#define GR_OFF_AM (GR_OFF_P + GR_C * GR_LDT * 8)
#define GR_OFF_D (GR_OFF_AM + GR_C * GR_LDT * 8)
#define GR_OFF_AD (GR_OFF_D + GR_C * GR_LDD * 8)
#define GR_OFF_VEC (GR_OFF_AD + GR_C * GR_LDA * 4)
#define GR_SMEM_BYTES (GR_OFF_VEC + 5 * GR_C * 4 + 16)
static_assert(GR_SMEM_BYTES == KILN_SMEM_GDN_PREP, "the launcher's shared memory (registry.rs) differs from this layout");
static_assert(GR_SMEM_BYTES <= 232448, "LIN_DK/LIN_DV too large for the prefill pre-pass's shared memory");

// Scan shared memory (uint4 units): two chunk buffers of {-W, Q', Kd} tiles, S^T and
// V'^T as A tiles.
#define GS_BUF (48 * LIN_DK)                 // uint4s of one chunk buffer (WB | QB | KB)
#define GS_OFF_SA (2 * GS_BUF)               // 2 x GR_KT A tiles of S^T
#define GS_OFF_VA (GS_OFF_SA + 2 * GR_KT * 64)  // 2 x 4 A tiles of V'^T
#define GS_SMEM_BYTES ((GS_OFF_VA + 8 * 64) * 16)
#define GS_NP ((GR_KT + 3) / 4)              // 16-wide dk blocks of S^T per warp (ks = q + 4p)
static_assert(GS_SMEM_BYTES == KILN_SMEM_GDN_SCAN, "the launcher's shared memory (registry.rs) differs from this layout");
static_assert(GS_SMEM_BYTES <= 232448, "LIN_DK too large for the prefill scan's shared memory");

// d += a * b for split operands (small terms first).
__device__ __forceinline__ void mma3(float* d, const unsigned* ah, const unsigned* al, const unsigned* bh,
                                     const unsigned* bl) {
    mma_16816(d, al, bh);
    mma_16816(d, ah, bl);
    mma_16816(d, ah, bh);
}

// The A fragment (times s) of the 16x16 block formed by accumulator tiles c0 (columns
// 0-7) and c1 (columns 8-15) of the same 16 rows.
__device__ __forceinline__ void acc_to_a(const float* c0, const float* c1, float s, unsigned* ah, unsigned* al) {
    const uint2 p0 = split_bf16x2(s * c0[0], s * c0[1]), p1 = split_bf16x2(s * c0[2], s * c0[3]);
    const uint2 p2 = split_bf16x2(s * c1[0], s * c1[1]), p3 = split_bf16x2(s * c1[2], s * c1[3]);
    ah[0] = p0.x; ah[1] = p1.x; ah[2] = p2.x; ah[3] = p3.x;
    al[0] = p0.y; al[1] = p1.y; al[2] = p2.y; al[3] = p3.y;
}

// Stores the A fragment of acc_to_a(c0, c1, 1) into an A tile.
__device__ __forceinline__ void st_a_tile(uint4* tile, int lane, const float* c0, const float* c1) {
    unsigned ah[4], al[4];
    acc_to_a(c0, c1, 1.f, ah, al);
    tile[lane] = make_uint4(ah[0], ah[1], ah[2], ah[3]);
    tile[32 + lane] = make_uint4(al[0], al[1], al[2], al[3]);
}

__device__ __forceinline__ void ld_a_tile(const uint4* tile, int lane, unsigned* ah, unsigned* al) {
    const uint4 h = tile[lane], l = tile[32 + lane];
    ah[0] = h.x; ah[1] = h.y; ah[2] = h.z; ah[3] = h.w;
    al[0] = l.x; al[1] = l.y; al[2] = l.z; al[3] = l.w;
}

__device__ __forceinline__ void ld_b_tile(const uint4* tile, int lane, unsigned* bh, unsigned* bl) {
    const uint4 v = tile[lane];
    bh[0] = v.x; bh[1] = v.y;
    bl[0] = v.z; bl[1] = v.w;
}

// A fragment (rows row0.., columns col0..col0+15) of a row-major fp32 matrix, split.
__device__ __forceinline__ void lda_f32(const float* m, int ld, int row0, int col0, int g, int t, unsigned* ah,
                                        unsigned* al) {
    const float* p = m + (row0 + g) * ld + col0 + 2 * t;
    const float2 v0 = *reinterpret_cast<const float2*>(p), v1 = *reinterpret_cast<const float2*>(p + 8 * ld);
    const float2 v2 = *reinterpret_cast<const float2*>(p + 8), v3 = *reinterpret_cast<const float2*>(p + 8 * ld + 8);
    const uint2 p0 = split_bf16x2(v0.x, v0.y), p1 = split_bf16x2(v1.x, v1.y), p2 = split_bf16x2(v2.x, v2.y), p3 = split_bf16x2(v3.x, v3.y);
    ah[0] = p0.x; ah[1] = p1.x; ah[2] = p2.x; ah[3] = p3.x;
    al[0] = p0.y; al[1] = p1.y; al[2] = p2.y; al[3] = p3.y;
}

// B fragment of B(k, n) = m[n][k] (rows n0..n0+7 of m, columns k0..k0+15), split.
__device__ __forceinline__ void ldb_f32(const float* m, int ld, int n0, int k0, int g, int t, unsigned* bh,
                                        unsigned* bl) {
    const float* p = m + (n0 + g) * ld + k0 + 2 * t;
    const float2 v0 = *reinterpret_cast<const float2*>(p), v1 = *reinterpret_cast<const float2*>(p + 8);
    const uint2 p0 = split_bf16x2(v0.x, v0.y), p1 = split_bf16x2(v1.x, v1.y);
    bh[0] = p0.x; bh[1] = p1.x;
    bl[0] = p0.y; bl[1] = p1.y;
}

// B fragment (n rows n0..n0+7 of B^T, k pairs kp0..kp0+7) of a split matrix stored as
// B^T with pairs along k (uint2 {hi pair, lo pair}).
__device__ __forceinline__ void ldb_pairs(const uint2* m, int ld, int n0, int kp0, int g, int t, unsigned* bh,
                                          unsigned* bl) {
    const uint2* p = m + (n0 + g) * ld + kp0 + t;
    const uint2 v0 = p[0], v1 = p[4];
    bh[0] = v0.x; bh[1] = v1.x;
    bl[0] = v0.y; bl[1] = v1.y;
}
