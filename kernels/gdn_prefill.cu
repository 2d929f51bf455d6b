// Gated DeltaNet prefill over a chunk of tokens for one or several sequences: the chunked
// (UT/WY) form, 64 tokens per chunk, fp32 state carried across chunks and calls. Two
// kernels: a parallel pre-pass over (chunk, value head, sequence) that does everything
// independent of the state S and writes a workspace record per (chunk, head), then a
// sequential scan over each sequence's chunks that carries S.
//
// kiln_gdn_prefill_prep_{f32,bf16}(const float* qkv, int ld_qkv, const T* b, const T* a,
//     int ld_ba, const float* A_log, const float* dt_bias, const int* cu_seqlens,
//     const int* slots, float* ws, int ws_chunks, int nseq, const bf16* conv_w,
//     const float* conv_state, const int* start_pos)
//   conv_w NULL: qkv is kiln_conv1d's output (below); else qkv is the conv's input (the
//   in_proj_qkv output, fp32) and the pre-pass computes kiln_conv1d's outputs itself, the
//   same bits, reading the ring (conv_state, start_pos as kiln_conv1d's) but not writing
//   it: kiln_conv_ring_only does that after the pass.
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

// ------------------------------------------------------------------------------------
// Pre-pass.
// ------------------------------------------------------------------------------------
// The conv fused into phase 1 (conv_w != NULL; session 17): x holds the conv's inputs
// (in_proj_qkv's fp32 output) instead of kiln_conv1d's output, which is then never
// written or read (2 x T x CONV_DIM x 4 bytes less traffic per layer). The chunk's raw q,
// k and v rows go to sQ, sK, sV, and the CONV_K-1 inputs before its first token (x inside
// the sequence, the ring before it, zeros before position 0) to sW's first rows; each
// thread then convolves its own elements from shared memory with kiln_conv1d's
// arithmetic (conv_taps, the same bits) and, after a barrier, v goes back to sV. rq gets
// this thread's q or k row half as the unfused load would (zeros past n). The ring is
// written afterwards by kiln_conv_ring_only (other chunks' blocks read it here).
#define GR_HALO (CONV_K - 1)
#define GR_VF (GR_C * LIN_DV / 4 / GR_THREADS)  // v float4s each thread convolves
static_assert(GR_C * LIN_DV / 4 % GR_THREADS == 0, "v conv split");
static_assert(3 * GR_HALO <= GR_C, "the halo rows fit sW");

// Channel ch (of the conv's CONV_DIM) at chunk row tok, column c of stream block `raw` (its
// halo rows at `halo`), through the conv and SiLU.
__device__ __forceinline__ float prep_conv_at(const float* raw, const float* halo, const bf16* __restrict__ conv_w,
                                              int tok, int c, int ch) {
    float wk[CONV_K], win[GR_HALO];
#pragma unroll
    for (int j = 0; j < CONV_K; ++j) wk[j] = __bfloat162float(conv_w[(size_t)ch * CONV_K + j]);
#pragma unroll
    for (int j = 0; j < GR_HALO; ++j) {
        const int tt = tok - GR_HALO + j;
        win[j] = tt >= 0 ? raw[tt * GR_LDX + c] : halo[(tok + j) * GR_LDX + c];
    }
    return siluf_(conv_taps(wk, win, raw[tok * GR_LDX + c]));
}

// Stages stream `sidx` (0 q, 1 k, 2 v: `width` channels from conv channel `base`) of the
// chunk's rows and its halo with cp.async (zero-filled past n and before position 0).
__device__ __forceinline__ void prep_stage_raw(float* raw, float* halo, const float* __restrict__ x, int ld_x,
                                               const float* __restrict__ ring, int base, int width, int tb, int n,
                                               int t0, int p0) {
    const int w4 = width / 4;
    for (int f = threadIdx.x; f < GR_C * w4; f += GR_THREADS) {
        const int vt = f / w4, c4 = f % w4;
        cp_async16(raw + vt * GR_LDX + 4 * c4, vt < n ? x + (size_t)(tb + vt) * ld_x + base + 4 * c4 : x, vt < n);
    }
    for (int f = threadIdx.x; f < GR_HALO * w4; f += GR_THREADS) {
        const int j = f / w4, c4 = f % w4, tt = tb - GR_HALO + j, p = p0 + (tt - t0);
        const float* src = tt >= t0 ? x + (size_t)tt * ld_x + base + 4 * c4
                         : p >= 0   ? ring + (size_t)(p % CONV_K) * CONV_DIM + base + 4 * c4
                                    : x;
        cp_async16(halo + j * GR_LDX + 4 * c4, src, tt >= t0 || p >= 0);
    }
}

__device__ __forceinline__ void prep_conv_inputs(const float* __restrict__ x, int ld_x, const bf16* __restrict__ conv_w,
                                                 const float* __restrict__ ring, int tb, int n, int t0, int p0, int kh,
                                                 int h, float* sQ, float* sK, float* sV, float* sW,
                                                 float4 (&rq)[GR_F4]) {
    const int tid = threadIdx.x;
    // Halo rows: q's, then k's, then v's (named one by one: an indexed array went to the stack).
    float* const halo_q = sW;
    float* const halo_k = sW + GR_HALO * GR_LDX;
    float* const halo_v = sW + 2 * GR_HALO * GR_LDX;
    const int base_q = kh * LIN_DK, base_k = LIN_KEY_DIM + kh * LIN_DK, base_v = 2 * LIN_KEY_DIM + h * LIN_DV;
    prep_stage_raw(sQ, halo_q, x, ld_x, ring, base_q, LIN_DK, tb, n, t0, p0);
    prep_stage_raw(sK, halo_k, x, ld_x, ring, base_k, LIN_DK, tb, n, t0, p0);
    prep_stage_raw(sV, halo_v, x, ld_x, ring, base_v, LIN_DV, tb, n, t0, p0);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    {
        const int row = tid >> 1, hf = tid & 1, tok = row & (GR_C - 1);
        const bool isk = row >= GR_C;
        const float* raw = isk ? sK : sQ;
        const float* halo = isk ? halo_k : halo_q;
        const int base = isk ? base_k : base_q;
#pragma unroll
        for (int i = 0; i < GR_F4; ++i) {
            const int c = 4 * (2 * i + hf);
            if (tok < n) {
                rq[i] = make_float4(prep_conv_at(raw, halo, conv_w, tok, c, base + c),
                                    prep_conv_at(raw, halo, conv_w, tok, c + 1, base + c + 1),
                                    prep_conv_at(raw, halo, conv_w, tok, c + 2, base + c + 2),
                                    prep_conv_at(raw, halo, conv_w, tok, c + 3, base + c + 3));
            } else {
                rq[i] = make_float4(0.f, 0.f, 0.f, 0.f);
            }
        }
    }
    float4 vv[GR_VF];
#pragma unroll
    for (int r = 0; r < GR_VF; ++r) {
        const int f = tid + r * GR_THREADS, vt = f / (LIN_DV / 4), c = 4 * (f % (LIN_DV / 4));
        vv[r] = vt < n ? make_float4(prep_conv_at(sV, halo_v, conv_w, vt, c, base_v + c),
                                     prep_conv_at(sV, halo_v, conv_w, vt, c + 1, base_v + c + 1),
                                     prep_conv_at(sV, halo_v, conv_w, vt, c + 2, base_v + c + 2),
                                     prep_conv_at(sV, halo_v, conv_w, vt, c + 3, base_v + c + 3))
                       : make_float4(0.f, 0.f, 0.f, 0.f);
    }
    __syncthreads();  // every raw and halo read is done: the rows can be overwritten
#pragma unroll
    for (int r = 0; r < GR_VF; ++r) {
        const int f = tid + r * GR_THREADS, vt = f / (LIN_DV / 4), c = 4 * (f % (LIN_DV / 4));
        *reinterpret_cast<float4*>(sV + vt * GR_LDX + c) = vv[r];
    }
}

template <typename T>
__device__ __forceinline__ void gdn_prep(const float* __restrict__ qkv, int ld_qkv, const T* __restrict__ b,
                                         const T* __restrict__ a, int ld_ba, const float* __restrict__ A_log,
                                         const float* __restrict__ dt_bias, const int* __restrict__ cu_seqlens,
                                         const int* __restrict__ slots, float* __restrict__ ws, int ws_chunks,
                                         int nseq, const bf16* __restrict__ conv_w,
                                         const float* __restrict__ conv_state, const int* __restrict__ start_pos) {
    extern __shared__ __align__(16) unsigned char gr_smem[];
    KILN_PDL_ENTER();
    {
        unsigned dyn;
        asm volatile("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dyn));
        if (dyn < GR_SMEM_BYTES) __trap();  // launched without the shared memory it needs
    }
    const int ch = blockIdx.x, h = blockIdx.y, sq = blockIdx.z;
    if (sq >= nseq || slots[sq] < 0) return;
    const int t0 = cu_seqlens[sq], t1 = cu_seqlens[sq + 1];
    const int tb = t0 + GR_C * ch;
    if (tb >= t1) return;
    const int n = min(GR_C, t1 - tb);
    const int idx = t0 / GR_C + sq + ch;
    if (idx >= ws_chunks) __trap();  // workspace too small for this launch
    float* rec = ws + ((size_t)idx * LIN_NV + h) * GR_REC;

    float* sQ = reinterpret_cast<float*>(gr_smem + GR_OFF_Q);   // [64][GR_LDX] q, later Q'
    float* sK = reinterpret_cast<float*>(gr_smem + GR_OFF_K);   // [64][GR_LDX] k
    float* sV = reinterpret_cast<float*>(gr_smem + GR_OFF_V);   // [64][GR_LDX] v
    float* sW = reinterpret_cast<float*>(gr_smem + GR_OFF_W);   // [64][GR_LDX] W
    uint2* sP = reinterpret_cast<uint2*>(gr_smem + GR_OFF_P);   // [64][GR_LDT] P rows (pairs along j)
    uint2* sAm = reinterpret_cast<uint2*>(gr_smem + GR_OFF_AM); // [64][GR_LDT] -A rows
    uint2* sD = reinterpret_cast<uint2*>(gr_smem + GR_OFF_D);   // [64][GR_LDD] D_b rows (pairs along j)
    float* sAd = reinterpret_cast<float*>(gr_smem + GR_OFF_AD); // [64][GR_LDA] diagonal blocks of A
    float* sG = reinterpret_cast<float*>(gr_smem + GR_OFF_VEC); // [64] g
    float* sBeta = sG + GR_C;
    float* sCum = sG + 2 * GR_C;
    float* sE = sG + 3 * GR_C;    // exp(cum_i)
    float* sDk = sG + 4 * GR_C;   // exp(cum_last - cum_j)
    float* sMisc = sG + 5 * GR_C; // [0] exp(cum_last)

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const unsigned full = 0xffffffffu;
    const int kh = h / GDN_GROUP;

    // ---- 1: q, k normalised; v; beta, g ----
    {
        const int row = tid >> 1, hf = tid & 1, tok = row & (GR_C - 1);
        const bool isk = row >= GR_C;
        float4 rq[GR_F4];
        const float4 z = make_float4(0.f, 0.f, 0.f, 0.f);
        if (conv_w != nullptr) {  // block-uniform
            const float* ring = conv_state + (size_t)slots[sq] * CONV_K * CONV_DIM;
            prep_conv_inputs(qkv, ld_qkv, conv_w, ring, tb, n, t0, start_pos[sq], kh, h, sQ, sK, sV, sW, rq);
        } else if (tok < n) {
            const float4* src = reinterpret_cast<const float4*>(qkv + (size_t)(tb + tok) * ld_qkv +
                                                                (isk ? LIN_KEY_DIM : 0) + kh * LIN_DK);
#pragma unroll
            for (int i = 0; i < GR_F4; ++i) rq[i] = __ldg(src + 2 * i + hf);
        } else {
#pragma unroll
            for (int i = 0; i < GR_F4; ++i) rq[i] = z;
        }
        // v goes straight to shared memory (cp.async, zero past n): all of a thread's
        // copies are in flight with the q/k loads. Through registers, each of the 8 was
        // a round trip before the next (ncu: 13 % of the kernel's stall samples on them).
        if (conv_w == nullptr) {
            for (int f = tid; f < GR_C * LIN_DV / 4; f += GR_THREADS) {
                const int vt = f / (LIN_DV / 4), c4 = f % (LIN_DV / 4);
                const float* src = vt < n ? qkv + (size_t)(tb + vt) * ld_qkv + 2 * LIN_KEY_DIM + h * LIN_DV + 4 * c4 : qkv;
                cp_async16(sV + vt * GR_LDX + 4 * c4, src, vt < n);
            }
            cp_async_commit();
        }
        if (tid < GR_C) {
            float bb = 0.f, aa = 0.f;
            if (tid < n) {
                bb = to_f(b[(size_t)(tb + tid) * ld_ba + h]);
                aa = to_f(a[(size_t)(tb + tid) * ld_ba + h]);
            }
            sBeta[tid] = tid < n ? sigmoidf_(bb) : 0.f;
            sG[tid] = tid < n ? -expf(A_log[h]) * softplusf_(aa + dt_bias[h]) : 0.f;
        }
        float ss = 0.f;
#pragma unroll
        for (int i = 0; i < GR_F4; ++i)
            ss += rq[i].x * rq[i].x + rq[i].y * rq[i].y + rq[i].z * rq[i].z + rq[i].w * rq[i].w;
        ss += __shfl_xor_sync(full, ss, 1);
        const float sc = isk ? rsqrtf(ss + 1e-6f) : rsqrtf(ss + 1e-6f) * rsqrtf((float)LIN_DK);
        float* dst = (isk ? sK : sQ) + tok * GR_LDX;
#pragma unroll
        for (int i = 0; i < GR_F4; ++i)
            *reinterpret_cast<float4*>(dst + 4 * (2 * i + hf)) =
                make_float4(rq[i].x * sc, rq[i].y * sc, rq[i].z * sc, rq[i].w * sc);
    }
    cp_async_wait<0>();  // this thread's v copies; the barrier shows them to all
    __syncthreads();

    // ---- 2: cumsum (warp 7); Q K^T and K K^T on the lower tiles ----
    // Position p < 20 -> (row block mt, column tile nt), nt <= 2 mt + 1, row-major.
    if (warp == 7) {
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
        sE[2 * lane] = expf(cu0);
        sE[2 * lane + 1] = expf(cu1);
        sDk[2 * lane] = expf(last - cu0);
        sDk[2 * lane + 1] = expf(last - cu1);
        if (lane == 0) sMisc[0] = expf(last);
    }
    float gq[3][4], gk[3][4];
#pragma unroll
    for (int r = 0; r < 3; ++r)
#pragma unroll
        for (int e = 0; e < 4; ++e) gq[r][e] = gk[r][e] = 0.f;
#pragma unroll
    for (int r = 0; r < 3; ++r) {
        const int p = warp + 8 * r;
        if (p < 20) {
            const int mt = p < 2 ? 0 : (p < 6 ? 1 : (p < 12 ? 2 : 3));
            const int nt = p - (mt == 0 ? 0 : (mt == 1 ? 2 : (mt == 2 ? 6 : 12)));
#pragma unroll 2
            for (int ks = 0; ks < GR_KT; ++ks) {
                unsigned qh[4], ql[4], kah[4], kal[4], bh[2], bl[2];
                lda_f32(sQ, GR_LDX, 16 * mt, 16 * ks, g, t, qh, ql);
                lda_f32(sK, GR_LDX, 16 * mt, 16 * ks, g, t, kah, kal);
                ldb_f32(sK, GR_LDX, 8 * nt, 16 * ks, g, t, bh, bl);
                mma3(gq[r], qh, ql, bh, bl);
                mma3(gk[r], kah, kal, bh, bl);
            }
        }
    }
    __syncthreads();  // cumsum visible

    // ---- 3: P, -A (split), diagonal blocks of A (fp32) ----
#pragma unroll
    for (int r = 0; r < 3; ++r) {
        const int p = warp + 8 * r;
        if (p < 20) {
            const int mt = p < 2 ? 0 : (p < 6 ? 1 : (p < 12 ? 2 : 3));
            const int nt = p - (mt == 0 ? 0 : (mt == 1 ? 2 : (mt == 2 ? 6 : 12)));
            const int j0 = 8 * nt + 2 * t;
            const float cj0 = sCum[j0], cj1 = sCum[j0 + 1];
#pragma unroll
            for (int hr = 0; hr < 2; ++hr) {
                const int i = 16 * mt + g + 8 * hr;
                const float ci = sCum[i], bi = sBeta[i];
                float p0 = 0.f, p1 = 0.f, a0 = 0.f, a1 = 0.f;
                if (j0 <= i) {
                    const float d = expf(ci - cj0);
                    p0 = gq[r][2 * hr] * d;
                    if (j0 < i) a0 = bi * gk[r][2 * hr] * d;
                }
                if (j0 + 1 <= i) {
                    const float d = expf(ci - cj1);
                    p1 = gq[r][2 * hr + 1] * d;
                    if (j0 + 1 < i) a1 = bi * gk[r][2 * hr + 1] * d;
                }
                sP[i * GR_LDT + 4 * nt + t] = split_bf16x2(p0, p1);
                sAm[i * GR_LDT + 4 * nt + t] = split_bf16x2(-a0, -a1);
                if ((nt >> 1) == mt) {
                    sAd[i * GR_LDA + j0 - 16 * mt] = a0;
                    sAd[i * GR_LDA + j0 + 1 - 16 * mt] = a1;
                }
            }
        }
    }
    __syncthreads();

    // ---- 4: D_b = (I + A_bb)^-1, column lc of block bb per lane (warps 0-1) ----
    if (warp < 2) {
        const int col = lane + 32 * warp, bb = col >> 4, lc = col & 15;
        const float* Ab = sAd + 16 * bb * GR_LDA;
        float x[16];
#pragma unroll
        for (int r = 0; r < 16; ++r) {
            float s0 = (r == lc) ? 1.f : 0.f, s1 = 0.f;
#pragma unroll
            for (int j = 0; j < r; j += 2) {
                s0 -= Ab[r * GR_LDA + j] * x[j];
                if (j + 1 < r) s1 -= Ab[r * GR_LDA + j + 1] * x[j + 1];
            }
            x[r] = s0 + s1;
        }
#pragma unroll
        for (int r = 0; r < 16; ++r) {
            const float y = __shfl_xor_sync(full, x[r], 1);
            if (!(lc & 1)) sD[(16 * bb + r) * GR_LDD + (lc >> 1)] = split_bf16x2(x[r], y);
        }
    }
    __syncthreads();

    // ---- 5: block solve per 32-column block of [beta e K | beta V], transposed ----
    // acc[mt][nt][e] = X^T(col0 + 16 mt + g + 8 (e>>1), i = 8 nt + 2t + (e&1)).
#pragma unroll 1
    for (int cb = warp; cb < GR_NCB; cb += 8) {
        const bool isk = cb < LIN_DK / 32;
        const int col0 = isk ? 32 * cb : 32 * cb - LIN_DK;
        const float* src = isk ? sK : sV;
        float acc[2][8][4];
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
            const int i = 8 * nt + 2 * t;
            const float s0 = isk ? sBeta[i] * sE[i] : sBeta[i], s1 = isk ? sBeta[i + 1] * sE[i + 1] : sBeta[i + 1];
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
                const int c = col0 + 16 * mt + g;
                acc[mt][nt][0] = s0 * src[i * GR_LDX + c];
                acc[mt][nt][1] = s1 * src[(i + 1) * GR_LDX + c];
                acc[mt][nt][2] = s0 * src[i * GR_LDX + c + 8];
                acc[mt][nt][3] = s1 * src[(i + 1) * GR_LDX + c + 8];
            }
        }
#pragma unroll
        for (int ib = 0; ib < 4; ++ib) {
            // Y^T = R_b^T + sum_{kb < ib} X_kb^T (-A_{ib,kb})^T
#pragma unroll
            for (int kb = 0; kb < ib; ++kb) {
                unsigned xh[2][4], xl[2][4];
#pragma unroll
                for (int mt = 0; mt < 2; ++mt) acc_to_a(acc[mt][2 * kb], acc[mt][2 * kb + 1], 1.f, xh[mt], xl[mt]);
#pragma unroll
                for (int h2 = 0; h2 < 2; ++h2) {
                    unsigned bh[2], bl[2];
                    ldb_pairs(sAm, GR_LDT, 16 * ib + 8 * h2, 8 * kb, g, t, bh, bl);
#pragma unroll
                    for (int mt = 0; mt < 2; ++mt) mma3(acc[mt][2 * ib + h2], xh[mt], xl[mt], bh, bl);
                }
            }
            // X_b^T = Y^T D_b^T
            unsigned yh[2][4], yl[2][4];
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) acc_to_a(acc[mt][2 * ib], acc[mt][2 * ib + 1], 1.f, yh[mt], yl[mt]);
#pragma unroll
            for (int h2 = 0; h2 < 2; ++h2) {
                unsigned bh[2], bl[2];
                ldb_pairs(sD + 16 * ib * GR_LDD, GR_LDD, 8 * h2, 0, g, t, bh, bl);
#pragma unroll
                for (int mt = 0; mt < 2; ++mt) {
                    float xo[4] = {0.f, 0.f, 0.f, 0.f};
                    mma3(xo, yh[mt], yl[mt], bh, bl);
#pragma unroll
                    for (int e = 0; e < 4; ++e) acc[mt][2 * ib + h2][e] = xo[e];
                }
            }
        }
        if (!isk) {
            // U^T and O0^T = U^T P^T (dv columns col0.., C tiles cm = col0/16 + mt).
            float4* ua = reinterpret_cast<float4*>(rec + GR_UA);
            float4* oa = reinterpret_cast<float4*>(rec + GR_OA);
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
                const int cm = col0 / 16 + mt;
                float o[8][4];
#pragma unroll
                for (int nt = 0; nt < 8; ++nt) {
                    ua[(cm * 8 + nt) * 32 + lane] = make_float4(acc[mt][nt][0], acc[mt][nt][1], acc[mt][nt][2], acc[mt][nt][3]);
#pragma unroll
                    for (int e = 0; e < 4; ++e) o[nt][e] = 0.f;
                }
#pragma unroll
                for (int kk = 0; kk < 4; ++kk) {
                    unsigned uh[4], ul[4];
                    acc_to_a(acc[mt][2 * kk], acc[mt][2 * kk + 1], 1.f, uh, ul);
#pragma unroll
                    for (int nt = 2 * kk; nt < 8; ++nt) {
                        unsigned bh[2], bl[2];
                        ldb_pairs(sP, GR_LDT, 8 * nt, 8 * kk, g, t, bh, bl);
                        mma3(o[nt], uh, ul, bh, bl);
                    }
                }
#pragma unroll
                for (int nt = 0; nt < 8; ++nt) oa[(cm * 8 + nt) * 32 + lane] = make_float4(o[nt][0], o[nt][1], o[nt][2], o[nt][3]);
            }
        } else {
            // W (to sW) and Q'^T = e Q^T - W^T P^T (into sQ, this warp's columns only).
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
                const int c = col0 + 16 * mt + g;
                float o[8][4];
#pragma unroll
                for (int nt = 0; nt < 8; ++nt) {
                    const int i = 8 * nt + 2 * t;
                    const float e0 = sE[i], e1 = sE[i + 1];
                    o[nt][0] = e0 * sQ[i * GR_LDX + c];
                    o[nt][1] = e1 * sQ[(i + 1) * GR_LDX + c];
                    o[nt][2] = e0 * sQ[i * GR_LDX + c + 8];
                    o[nt][3] = e1 * sQ[(i + 1) * GR_LDX + c + 8];
                    sW[i * GR_LDX + c] = acc[mt][nt][0];
                    sW[(i + 1) * GR_LDX + c] = acc[mt][nt][1];
                    sW[i * GR_LDX + c + 8] = acc[mt][nt][2];
                    sW[(i + 1) * GR_LDX + c + 8] = acc[mt][nt][3];
                }
#pragma unroll
                for (int kk = 0; kk < 4; ++kk) {
                    unsigned wh[4], wl[4];
                    acc_to_a(acc[mt][2 * kk], acc[mt][2 * kk + 1], -1.f, wh, wl);
#pragma unroll
                    for (int nt = 2 * kk; nt < 8; ++nt) {
                        unsigned bh[2], bl[2];
                        ldb_pairs(sP, GR_LDT, 8 * nt, 8 * kk, g, t, bh, bl);
                        mma3(o[nt], wh, wl, bh, bl);
                    }
                }
#pragma unroll
                for (int nt = 0; nt < 8; ++nt) {
                    const int i = 8 * nt + 2 * t;
                    sQ[i * GR_LDX + c] = o[nt][0];
                    sQ[(i + 1) * GR_LDX + c] = o[nt][1];
                    sQ[i * GR_LDX + c + 8] = o[nt][2];
                    sQ[(i + 1) * GR_LDX + c + 8] = o[nt][3];
                }
            }
        }
    }
    __syncthreads();

    // ---- 6: -W, Q', Kd as B tiles ----
    {
        uint4* wb = reinterpret_cast<uint4*>(rec + GR_WB);
        uint4* qb = reinterpret_cast<uint4*>(rec + GR_QB);
        uint4* kb = reinterpret_cast<uint4*>(rec + GR_KB);
        for (int f = tid; f < 16 * LIN_DK; f += GR_THREADS) {
            const int ln = f & 31, tile = f >> 5, fg = ln >> 2, ft = ln & 3;
            {
                // (ks, nt) = (tile / 8, tile % 8): B(k = dk, n = i) = M[i][dk]
                const int i = 8 * (tile & 7) + fg, dk = 16 * (tile >> 3) + 2 * ft;
                const float* w = sW + i * GR_LDX + dk;
                const float* q = sQ + i * GR_LDX + dk;
                const uint2 w0 = split_bf16x2(-w[0], -w[1]), w1 = split_bf16x2(-w[8], -w[9]);
                const uint2 q0 = split_bf16x2(q[0], q[1]), q1 = split_bf16x2(q[8], q[9]);
                wb[f] = make_uint4(w0.x, w1.x, w0.y, w1.y);
                qb[f] = make_uint4(q0.x, q1.x, q0.y, q1.y);
            }
            {
                // (kk, nt) = (tile / (DK/8), tile % (DK/8)): B(k = j, n = dk) = d_j K[j][dk]
                const int j = 16 * (tile / (LIN_DK / 8)) + 2 * ft, dk = 8 * (tile % (LIN_DK / 8)) + fg;
                const float* k = sK + j * GR_LDX + dk;
                const uint2 k0 = split_bf16x2(sDk[j] * k[0], sDk[j + 1] * k[GR_LDX]);
                const uint2 k1 = split_bf16x2(sDk[j + 8] * k[8 * GR_LDX], sDk[j + 9] * k[9 * GR_LDX]);
                kb[f] = make_uint4(k0.x, k1.x, k0.y, k1.y);
            }
        }
        if (tid == 0) rec[GR_MISC] = sMisc[0];
    }
}

extern "C" __global__ void __launch_bounds__(GR_THREADS, 1)
    kiln_gdn_prefill_prep_f32(const float* qkv, int ld_qkv, const float* b, const float* a, int ld_ba,
                              const float* A_log, const float* dt_bias, const int* cu_seqlens, const int* slots,
                              float* ws, int ws_chunks, int nseq, const bf16* conv_w, const float* conv_state, const int* start_pos) {
    gdn_prep<float>(qkv, ld_qkv, b, a, ld_ba, A_log, dt_bias, cu_seqlens, slots, ws, ws_chunks, nseq, conv_w, conv_state, start_pos);
}
extern "C" __global__ void __launch_bounds__(GR_THREADS, 1)
    kiln_gdn_prefill_prep_bf16(const float* qkv, int ld_qkv, const bf16* b, const bf16* a, int ld_ba,
                               const float* A_log, const float* dt_bias, const int* cu_seqlens, const int* slots,
                               float* ws, int ws_chunks, int nseq, const bf16* conv_w, const float* conv_state, const int* start_pos) {
    gdn_prep<bf16>(qkv, ld_qkv, b, a, ld_ba, A_log, dt_bias, cu_seqlens, slots, ws, ws_chunks, nseq, conv_w, conv_state, start_pos);
}

// ------------------------------------------------------------------------------------
// Scan.
// ------------------------------------------------------------------------------------

// Whether dk block ks = q + 4p (q = warp / 2 in 0..3) exists. When 4 divides GR_KT every
// block does, and saying so at compile time keeps the scan's MMA loop free of a branch
// per block (the SASS had one per p, leaving 2 of a warp's 4 accumulator chains to
// interleave); the MMAs, and so the bits, are the same.
__device__ __forceinline__ bool gs_block_live(int ks) { return GR_KT % 4 == 0 || ks < GR_KT; }
static_assert(GR_THREADS == 256, "8 warps: q = warp / 2 is 0..3, so ks = q + 4p < GR_KT when 4 divides GR_KT");

// S^T accumulators (dk blocks ks = q + 4p of rows 16 mt..) -> A tiles (mt, ks) of sSA.
__device__ __forceinline__ void gs_store_sa(uint4* sSA, const float (&sacc)[GS_NP][2][4], int mt, int q, int lane) {
#pragma unroll
    for (int p = 0; p < GS_NP; ++p) {
        const int ks = q + 4 * p;
        if (gs_block_live(ks)) st_a_tile(sSA + (mt * GR_KT + ks) * 64, lane, sacc[p][0], sacc[p][1]);
    }
}

extern "C" __global__ void __launch_bounds__(GR_THREADS, 1)
    kiln_gdn_prefill_scan(const float* __restrict__ ws, float* __restrict__ state, const int* __restrict__ cu_seqlens,
                          const int* __restrict__ slots, float* __restrict__ out, int ld_out, int ws_chunks, int nseq) {
    extern __shared__ __align__(16) unsigned char gs_smem[];
    KILN_PDL_ENTER();
    {
        unsigned dyn;
        asm volatile("mov.u32 %0, %%dynamic_smem_size;" : "=r"(dyn));
        if (dyn < GS_SMEM_BYTES) __trap();
    }
    const int slab = blockIdx.x, h = blockIdx.y, sq = blockIdx.z;
    if (sq >= nseq) return;
    const int slot = slots[sq];
    if (slot < 0) return;
    const int t0 = cu_seqlens[sq], t1 = cu_seqlens[sq + 1];
    if (t1 <= t0) return;
    const int nch = (t1 - t0 + GR_C - 1) / GR_C, base = t0 / GR_C + sq;
    if (base + nch > ws_chunks) __trap();

    uint4* sm = reinterpret_cast<uint4*>(gs_smem);
    uint4* sSA = sm + GS_OFF_SA;  // S^T as A tiles (mt, ks) at mt*GR_KT + ks
    uint4* sVA = sm + GS_OFF_VA;  // V'^T as A tiles (mt, kk) at mt*4 + kk

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const int mt = warp & 1, q = warp >> 1;       // c rows 16 mt..; quarter q
    const int part = q >> 1, nq = q & 1;          // phase A: -W (part 0) or Q' (part 1), i tiles 4 nq..
    const int c0 = 32 * slab;
    const int cm = 2 * slab + mt;                 // this warp's 16-column dv tile
    float* Sg = state + ((size_t)slot * LIN_NV + h) * LIN_DK * LIN_DV + c0;

    // S^T[c][dk]: sacc[p][h2][e] at c = 16 mt + g + 8 (e>>1), dk = 16 ks + 8 h2 + 2t + (e&1)
    // with ks = q + 4p (blocks ks >= GR_KT unused).
    float sacc[GS_NP][2][4];
#pragma unroll
    for (int p = 0; p < GS_NP; ++p)
#pragma unroll
        for (int h2 = 0; h2 < 2; ++h2) {
            const int ks = q + 4 * p, c = 16 * mt + g, dk = 16 * ks + 8 * h2 + 2 * t;
            if (ks < GR_KT) {
                sacc[p][h2][0] = Sg[(size_t)dk * LIN_DV + c];
                sacc[p][h2][1] = Sg[(size_t)(dk + 1) * LIN_DV + c];
                sacc[p][h2][2] = Sg[(size_t)dk * LIN_DV + c + 8];
                sacc[p][h2][3] = Sg[(size_t)(dk + 1) * LIN_DV + c + 8];
            } else {
                sacc[p][h2][0] = sacc[p][h2][1] = sacc[p][h2][2] = sacc[p][h2][3] = 0.f;
            }
        }
    gs_store_sa(sSA, sacc, mt, q, lane);

    // Chunk c's record; its {-W, Q', Kd} tiles go to buffer c & 1 (cp.async), its U^T or
    // O0^T tiles (this warp's four) and exp(cum_last) to registers.
    auto rec_of = [&](int c) { return ws + ((size_t)(base + c) * LIN_NV + h) * GR_REC; };
    auto issue = [&](int c) {
        const float* r = rec_of(c);
        uint4* dst = sm + (c & 1) * GS_BUF;
        for (int f = tid; f < GS_BUF; f += GR_THREADS) cp_async16(dst + f, r + 4 * f, true);
    };
    float4 rnx[4];
    float elnx;
    auto fetch = [&](int c) {
        const float* r = rec_of(c);
        const float4* src = reinterpret_cast<const float4*>(r + (part ? GR_OA : GR_UA));
#pragma unroll
        for (int u = 0; u < 4; ++u) rnx[u] = __ldg(src + (cm * 8 + 4 * nq + u) * 32 + lane);
        elnx = __ldg(r + GR_MISC);
    };
    issue(0);
    cp_async_commit();
    fetch(0);

#pragma unroll 1
    for (int c = 0; c < nch; ++c) {
        const int tb = t0 + GR_C * c, n = min(GR_C, t1 - tb);
        float acc[4][4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            acc[u][0] = rnx[u].x; acc[u][1] = rnx[u].y; acc[u][2] = rnx[u].z; acc[u][3] = rnx[u].w;
        }
        const float el = elnx;
        cp_async_wait<0>();
        __syncthreads();  // chunk c's tiles and S^T visible; chunk c-1 done with every buffer
        if (c + 1 < nch) {
            issue(c + 1);
            fetch(c + 1);
        }
        cp_async_commit();
        const uint4* buf = sm + (c & 1) * GS_BUF;

        // ---- A: [V'^T | out^T] = [U^T | O0^T] + S^T [-W | Q']^T ----
        {
            const uint4* bt = buf + (part ? GR_QB / 4 : GR_WB / 4) + 4 * nq * 32;
#pragma unroll 2
            for (int ks = 0; ks < GR_KT; ++ks) {
                unsigned ah[4], al[4];
                ld_a_tile(sSA + (mt * GR_KT + ks) * 64, lane, ah, al);
#pragma unroll
                for (int u = 0; u < 4; ++u) {
                    unsigned bh[2], bl[2];
                    ld_b_tile(bt + (ks * 8 + u) * 32, lane, bh, bl);
                    mma3(acc[u], ah, al, bh, bl);
                }
            }
            if (part == 0) {
                // V'^T tiles (i tiles 4 nq + u) -> A tiles (mt, kk = 2 nq + p).
#pragma unroll
                for (int p = 0; p < 2; ++p) st_a_tile(sVA + (mt * 4 + 2 * nq + p) * 64, lane, acc[2 * p], acc[2 * p + 1]);
            } else {
                float* o = out + (size_t)tb * ld_out + h * LIN_DV + c0 + 16 * mt + g;
#pragma unroll
                for (int u = 0; u < 4; ++u) {
                    const int i = 8 * (4 * nq + u) + 2 * t;
                    if (i < n) {
                        o[(size_t)i * ld_out] = acc[u][0];
                        o[(size_t)i * ld_out + 8] = acc[u][2];
                    }
                    if (i + 1 < n) {
                        o[(size_t)(i + 1) * ld_out] = acc[u][1];
                        o[(size_t)(i + 1) * ld_out + 8] = acc[u][3];
                    }
                }
            }
        }
        __syncthreads();  // V'^T visible; everyone done reading S^T

        // ---- B: S^T = exp(cum_last) S^T + V'^T Kd ----
        {
#pragma unroll
            for (int p = 0; p < GS_NP; ++p)
#pragma unroll
                for (int h2 = 0; h2 < 2; ++h2)
#pragma unroll
                    for (int e = 0; e < 4; ++e) sacc[p][h2][e] *= el;
            const uint4* kt = buf + GR_KB / 4;
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) {
                unsigned ah[4], al[4];
                ld_a_tile(sVA + (mt * 4 + kk) * 64, lane, ah, al);
#pragma unroll
                for (int p = 0; p < GS_NP; ++p) {
                    const int ks = q + 4 * p;
                    if (gs_block_live(ks)) {
#pragma unroll
                        for (int h2 = 0; h2 < 2; ++h2) {
                            unsigned bh[2], bl[2];
                            ld_b_tile(kt + (kk * (LIN_DK / 8) + 2 * ks + h2) * 32, lane, bh, bl);
                            mma3(sacc[p][h2], ah, al, bh, bl);
                        }
                    }
                }
            }
            gs_store_sa(sSA, sacc, mt, q, lane);
        }
    }
    cp_async_wait<0>();

#pragma unroll
    for (int p = 0; p < GS_NP; ++p)
#pragma unroll
        for (int h2 = 0; h2 < 2; ++h2) {
            const int ks = q + 4 * p, c = 16 * mt + g, dk = 16 * ks + 8 * h2 + 2 * t;
            if (ks < GR_KT) {
                Sg[(size_t)dk * LIN_DV + c] = sacc[p][h2][0];
                Sg[(size_t)(dk + 1) * LIN_DV + c] = sacc[p][h2][1];
                Sg[(size_t)dk * LIN_DV + c + 8] = sacc[p][h2][2];
                Sg[(size_t)(dk + 1) * LIN_DV + c + 8] = sacc[p][h2][3];
            }
        }
}
