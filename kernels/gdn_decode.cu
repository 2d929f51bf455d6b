// Gated DeltaNet fused decode step: one token per sequence.
//
// kiln_gdn_decode_{in}_{out}(const IN* qkv, int ld_qkv, const IN* z, int ld_z,
//     const IN* b, const IN* a, int ld_ba, const bf16* conv_w, float* conv_state,
//     float* state, const float* A_log, const float* dt_bias, const bf16* norm_w,
//     const int* slots, const int* pos, const int2* state_io, OUT* out, int ld_out, int B)
//   Row bi of each input belongs to sequence bi (bi < B):
//   qkv [B][ld_qkv]  in_proj_qkv output before the conv: [q (LIN_NK*LIN_DK) | k | v (LIN_NV*LIN_DV)]
//   z   [B][ld_z]    in_proj_z output (LIN_NV*LIN_DV)
//   b, a [B][ld_ba]  in_proj_b / in_proj_a outputs (LIN_NV each)
//   conv_w [CONV_DIM][CONV_K] bf16; conv_state [slots][CONV_K][CONV_DIM] fp32 ring (see conv.cu)
//   state [slots][LIN_NV][LIN_DK][LIN_DV] fp32, S[i][j] at i*LIN_DV + j, updated in place
//   A_log, dt_bias [LIN_NV] fp32; norm_w [LIN_DV] bf16 (applied plainly, not 1 + w)
//   slots[bi] (< 0: padding row, skipped), pos[bi] = tokens the slot has already seen
//   state_io: null (decode: the state of slots[bi] is read and written in place), or per
//     row the state entry read (.x) and the one written (.y): speculative verification
//     feeds positions one launch at a time from the slot's state through scratch entries,
//     computing each exactly as a decode step does; the conv ring stays the slot's.
//   out [B][ld_out]: head h at h*LIN_DV, the gated RMSNorm output (input of out_proj).
//   Per (sequence, value head h, key head kh = h / (LIN_NV/LIN_NK)):
//     conv update + SiLU of the head's q, k, v channels; q, k L2-normalised (eps 1e-6),
//     q *= 1/sqrt(LIN_DK); beta = sigmoid(b); g = -exp(A_log) * softplus(a + dt_bias);
//     S *= exp(g); S += k (x) (beta * (v - S^T k)); o = S^T q;
//     out = o * rsqrt(mean(o^2) + RMS_EPS) * norm_w * silu(z).
//   grid (LIN_NV, B), block LIN_DV * 4: thread (j, part) owns column j, rows
//   [part*LIN_DK/4, (part+1)*LIN_DK/4) of S in registers.
//   The q/k conv channels are shared by GDN_GROUP value heads: all of them compute the
//   conv, only the first writes the ring row (never read in the same step).
#include "common.cuh"

using namespace kiln;

#define GDN_PARTS 4
#define GDN_DEC_THREADS (LIN_DV * GDN_PARTS)
#define GDN_ROWS (LIN_DK / GDN_PARTS)
static_assert(GDN_DEC_THREADS <= 1024 && LIN_DV % 32 == 0, "LIN_DV must be a multiple of 32, at most 256");
static_assert(LIN_DK % GDN_PARTS == 0, "LIN_DK must be a multiple of 4");

// The prologue both decode kernels share, per (sequence, value head h): the conv update +
// SiLU of the key head's q and k channels and of v columns [v0, v0 + NV_COLS) into qs, ks,
// vs (rows of `qkv_row`, ring of the slot, `p` tokens seen); beta = sigmoid(b) and
// exp(g) into sc[2], sc[3]; q and k L2-normalised (eps 1e-6), q scaled by 1/sqrt(LIN_DK).
// Ends synchronised. `own_qk`: this block writes the q/k ring rows (one block per key head);
// every block writes its own v rows. The ring row written (position p) is not one any block
// reads in this step. tap(pp, ch): the input of channel ch at an earlier position pp (the
// ring row, or in the fused verify kernel an earlier fed position's qkv row: the ring holds
// exactly to_f of that input, so the sum is the same); write_ring false: no ring writes.
// Channel of item i of a head's conv inputs: q of key head kh (i < LIN_DK), its k, then v
// column v0 + i - 2 LIN_DK of value head h.
__device__ __forceinline__ int gdn_channel(int i, int kh, int h, int v0) {
    return i < LIN_DK ? kh * LIN_DK + i
         : i < 2 * LIN_DK ? LIN_KEY_DIM + kh * LIN_DK + (i - LIN_DK)
         : 2 * LIN_KEY_DIM + h * LIN_DV + v0 + (i - 2 * LIN_DK);
}

// SiLU of channel ch's causal conv at position p: input xv there, the earlier ones from tap.
template <typename TapAt>
__device__ __forceinline__ float gdn_conv_silu(float xv, const bf16* __restrict__ conv_w, int ch, int p, TapAt tap) {
    float acc = __bfloat162float(conv_w[ch * CONV_K + CONV_K - 1]) * xv;
#pragma unroll
    for (int jj = 0; jj < CONV_K - 1; ++jj) {
        const int pp = p - (CONV_K - 1) + jj;
        if (pp >= 0) acc += __bfloat162float(conv_w[ch * CONV_K + jj]) * tap(pp, ch);
    }
    return siluf_(acc);
}

// beta = sigmoid(b) into sc[2], exp(g) into sc[3] (value head h).
template <typename IN>
__device__ __forceinline__ void gdn_gates(IN b_h, IN a_h, const float* __restrict__ A_log, const float* __restrict__ dt_bias,
                                          int h, float* sc) {
    sc[2] = sigmoidf_(to_f(b_h));
    sc[3] = expf(-expf(A_log[h]) * softplusf_(to_f(a_h) + dt_bias[h]));
}

// One warp: the L2-norm scale of q (is_q: also 1/sqrt(LIN_DK)) or k, in the lane order
// every GDN kernel uses, stored by lane 0 at *dst.
__device__ __forceinline__ void gdn_norm_scale(const float* v, int lane, bool is_q, float* dst) {
    float ss = 0.f;
    for (int i = lane; i < LIN_DK; i += 32) ss += v[i] * v[i];
    ss = warp_sum(ss);
    if (lane == 0) *dst = rsqrtf(ss + 1e-6f) * (is_q ? rsqrtf((float)LIN_DK) : 1.f);
}

template <typename IN, int THREADS, int NV_COLS, typename TapAt>
__device__ __forceinline__ void gdn_decode_prologue(const IN* __restrict__ qkv_row, IN b_h, IN a_h,
                                                    const bf16* __restrict__ conv_w, float* __restrict__ ring,
                                                    int p, int h, int v0, bool own_qk,
                                                    const float* __restrict__ A_log,
                                                    const float* __restrict__ dt_bias, float* qs, float* ks,
                                                    float* vs, float* sc, TapAt tap, bool write_ring) {
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int kh = h / GDN_GROUP;
    for (int i = tid; i < 2 * LIN_DK + NV_COLS; i += THREADS) {
        int ch;
        bool own;
        float* dst;
        if (i < LIN_DK) {
            ch = kh * LIN_DK + i; own = own_qk; dst = qs + i;
        } else if (i < 2 * LIN_DK) {
            ch = LIN_KEY_DIM + kh * LIN_DK + (i - LIN_DK); own = own_qk; dst = ks + (i - LIN_DK);
        } else {
            ch = 2 * LIN_KEY_DIM + h * LIN_DV + v0 + (i - 2 * LIN_DK); own = true; dst = vs + (i - 2 * LIN_DK);
        }
        const float xv = to_f(qkv_row[ch]);
        *dst = gdn_conv_silu(xv, conv_w, ch, p, tap);
        if (own && write_ring) ring[(size_t)(p % CONV_K) * CONV_DIM + ch] = xv;
    }
    if (tid == 0) gdn_gates(b_h, a_h, A_log, dt_bias, h, sc);
    __syncthreads();
    // L2 norms of q (warp 0) and k (warp 1).
    if (warp < 2) gdn_norm_scale(warp == 0 ? qs : ks, lane, warp == 0, sc + warp);
    __syncthreads();
    for (int i = tid; i < 2 * LIN_DK; i += THREADS) {
        if (i < LIN_DK) qs[i] *= sc[0];
        else ks[i - LIN_DK] *= sc[1];
    }
    __syncthreads();
}

// The conv taps of a decode step: the slot's ring.
struct RingTap {
    const float* ring;
    __device__ float operator()(int pp, int ch) const { return ring[(size_t)(pp % CONV_K) * CONV_DIM + ch]; }
};

// The gated RMSNorm's output of column j: o * rsqrt(mean(o^2) + eps) * norm_w * silu(z),
// with tot the head's sum of o^2 (block_sum's order).
template <typename OUT>
__device__ __forceinline__ OUT gdn_gated_out(float o, float tot, float nw, float zz) {
    return from_f<OUT>(o * rsqrtf(tot / (float)LIN_DV + RMS_EPS) * nw * siluf_(zz));
}

// The delta rule's two passes over a thread's rows of S (thread (j, part): column j, rows
// part*GDN_ROWS..), shared by every GDN decode and verify kernel so their bits agree.
// S *= exp(g); returns this thread's share of (S^T k)_j.
__device__ __forceinline__ float gdn_decay_kv(float (&s)[GDN_ROWS], const float* kp, float eg) {
    float kv0 = 0.f, kv1 = 0.f;
#pragma unroll
    for (int r = 0; r < GDN_ROWS; r += 2) {
        s[r] *= eg;
        kv0 += s[r] * kp[r];
        if (r + 1 < GDN_ROWS) {
            s[r + 1] *= eg;
            kv1 += s[r + 1] * kp[r + 1];
        }
    }
    return kv0 + kv1;
}

// S += k delta_j, the new rows to S_out; returns this thread's share of (S^T q)_j.
__device__ __forceinline__ float gdn_update_o(float (&s)[GDN_ROWS], const float* kp, const float* qp, float delta,
                                              float* __restrict__ S_out) {
    float o0 = 0.f, o1 = 0.f;
#pragma unroll
    for (int r = 0; r < GDN_ROWS; r += 2) {
        s[r] += kp[r] * delta;
        o0 += s[r] * qp[r];
        if (r + 1 < GDN_ROWS) {
            s[r + 1] += kp[r + 1] * delta;
            o1 += s[r + 1] * qp[r + 1];
        }
    }
#pragma unroll
    for (int r = 0; r < GDN_ROWS; ++r) S_out[(size_t)r * LIN_DV] = s[r];
    return o0 + o1;
}

// Column j's sum of the parts' shares, in part order (W: the columns a block holds).
template <int W>
__device__ __forceinline__ float gdn_column_sum(float (*red)[W], int j) {
    float v = 0.f;
#pragma unroll
    for (int q = 0; q < GDN_PARTS; ++q) v += red[q][j];
    return v;
}

// One position's delta rule and gated norm on a head's state held in registers, after
// the prologue: S *= exp(g); S += k (x) beta (v - S^T k); the new S to S_out; o = S^T q;
// out_j = o_j * rsqrt(mean(o^2) + eps) * nw * silu(zz) (thread part 0 of each column).
template <typename OUT>
__device__ __forceinline__ void gdn_decode_update(float (&s)[GDN_ROWS], int j, int part, const float* qs,
                                                  const float* ks, const float* vs, const float* sc,
                                                  float (*red)[LIN_DV], float* wred, float nw, float zz,
                                                  float* __restrict__ S_out, OUT* __restrict__ out_j) {
    const float beta = sc[2], eg = sc[3];
    const float* kp = ks + part * GDN_ROWS;
    const float* qp = qs + part * GDN_ROWS;
    red[part][j] = gdn_decay_kv(s, kp, eg);
    __syncthreads();
    const float delta = beta * (vs[j] - gdn_column_sum(red, j));
    const float o_part = gdn_update_o(s, kp, qp, delta, S_out);
    __syncthreads();  // everyone has read red[][] (kv) before it is reused
    red[part][j] = o_part;
    __syncthreads();
    const float o = gdn_column_sum(red, j);
    const float tot = block_sum(part == 0 ? o * o : 0.f, wred);
    if (part == 0) *out_j = gdn_gated_out<OUT>(o, tot, nw, zz);
}

// The verify updates of kiln_gdn_verify_pre: position q's delta rule as gdn_decode_update
// computes it, with the column sums through their own shared buffers per position
// (red_kv[q], red_o[q]) so the chain between positions holds one barrier instead of five;
// the gated norms of all positions run after the last update (they feed no state), o from
// gdn_column_sum(red_o[q], j).
template <int W>
__device__ __forceinline__ void gdn_verify_update_deferred(float (&s)[GDN_ROWS], int j, int part, const float* qs,
                                                           const float* ks, const float* vs, const float* sc,
                                                           float (*red_kv)[W], float (*red_o)[W],
                                                           float* __restrict__ S_out) {
    const float* kp = ks + part * GDN_ROWS;
    red_kv[part][j] = gdn_decay_kv(s, kp, sc[3]);
    __syncthreads();
    const float delta = sc[2] * (vs[j] - gdn_column_sum(red_kv, j));
    red_o[part][j] = gdn_update_o(s, kp, qs + part * GDN_ROWS, delta, S_out);
}

template <typename IN, typename OUT>
__device__ __forceinline__ void gdn_decode(const IN* __restrict__ qkv, int ld_qkv, const IN* __restrict__ z,
                                           int ld_z, const IN* __restrict__ b, const IN* __restrict__ a,
                                           int ld_ba, const bf16* __restrict__ conv_w,
                                           float* __restrict__ conv_state, float* __restrict__ state,
                                           const float* __restrict__ A_log, const float* __restrict__ dt_bias,
                                           const bf16* __restrict__ norm_w, const int* __restrict__ slots,
                                           const int* __restrict__ pos, const int2* __restrict__ state_io,
                                           OUT* __restrict__ out, int ld_out, int B) {
    const int tid = threadIdx.x;
    const int j = tid % LIN_DV, part = tid / LIN_DV;
    // The gated norm's weight before the PDL wait (a weight) and the gate z right after
    // it, not after the output's sum of squares: one dependent round trip less.
    const float nw = __bfloat162float(norm_w[j]);
    KILN_PDL_ENTER_ROWS(B);
    __shared__ float qs[LIN_DK], ks[LIN_DK], vs[LIN_DV];
    __shared__ float red[GDN_PARTS][LIN_DV];
    __shared__ float sc[4];
    __shared__ float wred[32];
    const int h = blockIdx.x, bi = blockIdx.y;
    if (bi >= B) return;
    const float zz = part == 0 ? to_f(z[(size_t)bi * ld_z + h * LIN_DV + j]) : 0.f;
    const int slot = slots[bi];
    if (slot < 0) return;

    const int2 io = state_io ? state_io[bi] : make_int2(slot, slot);
    // State loads first so their latency overlaps the conv.
    const size_t in_head = (size_t)part * GDN_ROWS * LIN_DV + j;
    const float* Si = state + ((size_t)io.x * LIN_NV + h) * LIN_DK * LIN_DV + in_head;
    float* S = state + ((size_t)io.y * LIN_NV + h) * LIN_DK * LIN_DV + in_head;
    float s[GDN_ROWS];
#pragma unroll
    for (int r = 0; r < GDN_ROWS; ++r) s[r] = Si[(size_t)r * LIN_DV];

    // Conv update + SiLU of this head's channels, gates, q/k norms.
    float* ring = conv_state + (size_t)slot * CONV_K * CONV_DIM;
    gdn_decode_prologue<IN, GDN_DEC_THREADS, LIN_DV>(qkv + (size_t)bi * ld_qkv, b[(size_t)bi * ld_ba + h],
                                                     a[(size_t)bi * ld_ba + h], conv_w, ring, pos[bi], h, 0,
                                                     (h % GDN_GROUP) == 0, A_log, dt_bias, qs, ks, vs, sc,
                                                     RingTap{ring}, true);
    gdn_decode_update<OUT>(s, j, part, qs, ks, vs, sc, red, wred, nw, zz, S, out + (size_t)bi * ld_out + h * LIN_DV + j);
}

#define GDN_DECODE(NAME, IN, OUT)                                                                  \
    extern "C" __global__ void __launch_bounds__(GDN_DEC_THREADS, 2)                                \
        NAME(const IN* qkv, int ld_qkv, const IN* z, int ld_z, const IN* b, const IN* a, int ld_ba, \
             const bf16* conv_w, float* conv_state, float* state, const float* A_log,              \
             const float* dt_bias, const bf16* norm_w, const int* slots, const int* pos, \
             const int2* state_io, OUT* out, int ld_out, int B) {                                  \
        gdn_decode<IN, OUT>(qkv, ld_qkv, z, ld_z, b, a, ld_ba, conv_w, conv_state, state, A_log,   \
                            dt_bias, norm_w, slots, pos, state_io, out, ld_out, B);                \
    }
GDN_DECODE(kiln_gdn_decode_f32_f32, float, float)
GDN_DECODE(kiln_gdn_decode_f32_bf16, float, gop)
GDN_DECODE(kiln_gdn_decode_bf16_f32, bf16, float)
GDN_DECODE(kiln_gdn_decode_bf16_bf16, bf16, gop)

// ---------------------------------------------------------------------------------
// Fused verify step, kiln_gdn_verify_{in}_{out}: every fed position of a sequence in one
// block, in order, instead of one kiln_gdn_decode launch per position (speculative
// verification, issue 9). Arguments as kiln_gdn_decode's, with the verify step's rows
// (position-major, `StepLayout::gdn_launches`): position q's rows are
// [first.q, first.q + count.q) (q < positions <= 4 = CONV_K; .x/.y/.z/.w are q = 0..3),
// each naming its sequence by slot (a slot appears once per position; padding rows have
// slot < 0). Position 0 holds every sequence: grid (LIN_NV, count.x), block LIN_DV * 4.
//   state_io per row as in kiln_gdn_decode: position 0 reads entry .x (the slot's state),
//   each position writes its state to entry .y (the scratch the commit copies from).
// Position q of block (h, i) runs the decode step's code on the state the previous
// position left in registers (the values kiln_gdn_decode would read back from entry .x),
// so every output and state entry is bit-identical to the per-position launches. The
// conv ring is only read: taps at positions before the first fed one come from the slot's
// ring (no fed position overwrites those rows while T <= CONV_K), taps at fed positions
// from their qkv rows in this step (the ring holds exactly to_f of them).
// kiln_conv_ring_write then writes the fed positions' ring rows, as the per-position
// launches leave them.
template <typename IN>
struct FedTap {
    const float* ring;
    const IN* qkv;
    const int* rows;  // the sequence's row at each fed position (shared memory)
    int ld_qkv, p0;
    __device__ float operator()(int pp, int ch) const {
        if (pp < p0) return ring[(size_t)(pp % CONV_K) * CONV_DIM + ch];
        return to_f(qkv[(size_t)rows[pp - p0] * ld_qkv + ch]);
    }
};

__device__ __forceinline__ int int4_at(int4 v, int q) { return q == 0 ? v.x : q == 1 ? v.y : q == 2 ? v.z : v.w; }

// my_rows[q] = the row of `slot`'s sequence at fed position q (row0 at 0; a later position
// names it by slot), or -1, by a block of THREADS threads. Ends synchronised.
template <int THREADS = GDN_DEC_THREADS>
__device__ __forceinline__ void verify_find_rows(const int* __restrict__ slots, int positions, int4 first, int4 count,
                                                 int row0, int slot, int* my_rows) {
    const int tid = threadIdx.x;
    if (tid < CONV_K) my_rows[tid] = tid == 0 ? row0 : -1;
    __syncthreads();
    for (int q = 1; q < positions; ++q)
        for (int r = tid; r < int4_at(count, q); r += THREADS)
            if (slots[int4_at(first, q) + r] == slot) my_rows[q] = int4_at(first, q) + r;
    __syncthreads();
}

template <typename IN, typename OUT>
__device__ __forceinline__ void gdn_verify(const IN* __restrict__ qkv, int ld_qkv, const IN* __restrict__ z, int ld_z,
                                           const IN* __restrict__ b, const IN* __restrict__ a, int ld_ba,
                                           const bf16* __restrict__ conv_w, float* __restrict__ conv_state,
                                           float* __restrict__ state, const float* __restrict__ A_log,
                                           const float* __restrict__ dt_bias, const bf16* __restrict__ norm_w,
                                           const int* __restrict__ slots, const int* __restrict__ pos,
                                           const int2* __restrict__ state_io, int positions, int4 first,
                                           int4 count, OUT* __restrict__ out, int ld_out) {
    const int tid = threadIdx.x;
    const int j = tid % LIN_DV, part = tid / LIN_DV;
    const float nw = __bfloat162float(norm_w[j]);
    KILN_PDL_ENTER_ROWS(count.x);
    __shared__ float qs[LIN_DK], ks[LIN_DK], vs[LIN_DV];
    __shared__ float red[GDN_PARTS][LIN_DV];
    __shared__ float sc[4];
    __shared__ float wred[32];
    __shared__ int my_rows[CONV_K];  // this sequence's row at each fed position, or -1
    const int h = blockIdx.x, i = blockIdx.y;
    if (i >= count.x) return;
    const int row0 = first.x + i;
    const int slot = slots[row0];
    if (slot < 0) return;
    verify_find_rows(slots, positions, first, count, row0, slot, my_rows);
    float* ring = conv_state + (size_t)slot * CONV_K * CONV_DIM;
    const FedTap<IN> tap{ring, qkv, my_rows, ld_qkv, pos[row0]};
    const size_t in_head = (size_t)part * GDN_ROWS * LIN_DV + j;
    const float* Si = state + ((size_t)state_io[row0].x * LIN_NV + h) * LIN_DK * LIN_DV + in_head;
    float s[GDN_ROWS];
#pragma unroll
    for (int r = 0; r < GDN_ROWS; ++r) s[r] = Si[(size_t)r * LIN_DV];
    for (int q = 0; q < positions; ++q) {
        const int row = my_rows[q];
        if (row < 0) break;  // a sequence's positions are 0..len-1; uniform over the block
        const float zz = part == 0 ? to_f(z[(size_t)row * ld_z + h * LIN_DV + j]) : 0.f;
        if (q > 0) __syncthreads();  // the previous position's readers of qs, ks, vs, sc are done
        gdn_decode_prologue<IN, GDN_DEC_THREADS, LIN_DV>(qkv + (size_t)row * ld_qkv, b[(size_t)row * ld_ba + h],
                                                         a[(size_t)row * ld_ba + h], conv_w, ring, pos[row], h, 0,
                                                         false, A_log, dt_bias, qs, ks, vs, sc, tap, false);
        float* S = state + ((size_t)state_io[row].y * LIN_NV + h) * LIN_DK * LIN_DV + in_head;
        gdn_decode_update<OUT>(s, j, part, qs, ks, vs, sc, red, wred, nw, zz, S, out + (size_t)row * ld_out + h * LIN_DV + j);
    }
}

// The body of kiln_gdn_verify_pre and kiln_gdn_verify_split after the state loads, for a
// block of THREADS threads holding W value columns from v0 (thread (jj, part): column v0 +
// jj): every fed position's gates z, conv + SiLU of q, k and the block's v channels (all
// taps are known at the start: the ring before the first fed position, the fed rows
// after), gates and q / k L2 norms, then the positions' delta rules in turn on the state
// in registers, each position's state to its entry. Each value is gdn_decode_prologue's
// own expression on the same inputs and each norm the same lanes' warp_sum, so the bits
// are kiln_gdn_verify's. Ends synchronised; o's column sums are left in red_o.
template <typename IN, int THREADS, int W>
__device__ __forceinline__ void gdn_verify_positions(float (&s)[GDN_ROWS], const IN* __restrict__ qkv, int ld_qkv,
                                                     const IN* __restrict__ z, int ld_z, const IN* __restrict__ b,
                                                     const IN* __restrict__ a, int ld_ba, const bf16* __restrict__ conv_w,
                                                     float* __restrict__ state, const float* __restrict__ A_log,
                                                     const float* __restrict__ dt_bias, const int* __restrict__ pos,
                                                     const int2* __restrict__ state_io, const int* my_rows, int npos,
                                                     int h, int v0, size_t in_head, const FedTap<IN>& tap,
                                                     float (*qkvs)[2 * LIN_DK + W], float (*zs)[W],
                                                     float (*red_kv)[GDN_PARTS][W], float (*red_o)[GDN_PARTS][W],
                                                     float (*sc)[4]) {
    constexpr int CH = 2 * LIN_DK + W;  // a position's q, k and v channels of this block
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int jj = tid % W, part = tid / W;
    // The gates z of every position (shared memory: a register array indexed by the
    // position would live on the stack).
    if (part == 0)
        for (int q = 0; q < npos; ++q) zs[q][jj] = to_f(z[(size_t)my_rows[q] * ld_z + h * LIN_DV + v0 + jj]);
    // Every position's conv + SiLU (gdn_decode_prologue's loop body at the position's pos).
    const int kh = h / GDN_GROUP;
    for (int e = tid; e < npos * CH; e += THREADS) {
        const int q = e / CH, c = e - q * CH, ch = gdn_channel(c, kh, h, v0);
        qkvs[q][c] = gdn_conv_silu(to_f(qkv[(size_t)my_rows[q] * ld_qkv + ch]), conv_w, ch, pos[my_rows[q]], tap);
    }
    if (tid < npos) gdn_gates(b[(size_t)my_rows[tid] * ld_ba + h], a[(size_t)my_rows[tid] * ld_ba + h], A_log, dt_bias, h, sc[tid]);
    __syncthreads();
    // L2 norms: norm 2q is q's, 2q + 1 k's (the prologue's warps 0 and 1, lane for lane),
    // norm w on warp w % warps.
    for (int w = warp; w < 2 * npos; w += THREADS / 32) {
        const int q = w >> 1, kq = w & 1;
        gdn_norm_scale(qkvs[q] + kq * LIN_DK, lane, kq == 0, sc[q] + kq);
    }
    __syncthreads();
    for (int e = tid; e < npos * 2 * LIN_DK; e += THREADS) {
        const int q = e / (2 * LIN_DK), c = e - q * 2 * LIN_DK;
        qkvs[q][c] *= sc[q][c < LIN_DK ? 0 : 1];
    }
    __syncthreads();
    for (int q = 0; q < npos; ++q) {
        float* S = state + ((size_t)state_io[my_rows[q]].y * LIN_NV + h) * LIN_DK * LIN_DV + in_head;
        gdn_verify_update_deferred(s, jj, part, qkvs[q], qkvs[q] + LIN_DK, qkvs[q] + 2 * LIN_DK, sc[q], red_kv[q], red_o[q], S);
    }
    __syncthreads();
}

// kiln_gdn_verify_pre_{in}_{out}: kiln_gdn_verify with every position's inputs first
// (session 13; the default since session 14): gdn_verify_positions, then the gated norms.
// kiln_gdn_verify ran each position's prologue in turn, ~5 µs a position at batch 1 (three
// barriers and the loads of its row between updates; H100 timeline, session 13).
// kiln_gdn_verify_split_{in}_{out} (session 26, an experiment, `KILN_GDN_VERIFY_SPLIT_MAX_SEQS`):
// kiln_gdn_verify_pre with each head's state over a cluster of GDN_CSPLIT blocks. Block
// (h * GDN_CSPLIT + c, i) owns value columns [32c, 32c + 32) of head h; thread (jj, part)
// column 32c + jj and the rows of kiln_gdn_decode's thread (32c + jj, part). Why: at batch 1
// kiln_gdn_verify_pre's 32 blocks each store 4 positions x 64 KB of state and end 15 us
// after their release, against 5.5 for gdn_decode's one position (H100 per-block timeline,
// session 26); split, 128 blocks store 64 KB each. Bit-identical: every column's sums are
// one block's in part order, the conv, gates and q/k norms the same per-channel code on
// the same lanes (each block of the cluster repeats q's and k's), and a gated norm's sum
// of o^2 is block_sum's: rank c's one part-0 warp sum is kiln_gdn_verify_pre's warp c's,
// and the ranks' sums meet in its second stage (a warp_sum, zeros past them) through
// distributed shared memory.
#define GDN_CSPLIT (LIN_DV / 32)
#define GDN_SPLIT_THREADS (32 * GDN_PARTS)
static_assert(GDN_CSPLIT >= 1 && GDN_CSPLIT <= 8, "a portable cluster holds at most 8 blocks");

// CSPLIT: blocks per head (1: kiln_gdn_verify_pre; GDN_CSPLIT: kiln_gdn_verify_split).
template <typename IN, typename OUT, int CSPLIT = 1>
__device__ __forceinline__ void gdn_verify_pre(const IN* __restrict__ qkv, int ld_qkv, const IN* __restrict__ z, int ld_z,
                                               const IN* __restrict__ b, const IN* __restrict__ a, int ld_ba,
                                               const bf16* __restrict__ conv_w, float* __restrict__ conv_state,
                                               float* __restrict__ state, const float* __restrict__ A_log,
                                               const float* __restrict__ dt_bias, const bf16* __restrict__ norm_w,
                                               const int* __restrict__ slots, const int* __restrict__ pos,
                                               const int2* __restrict__ state_io, int positions, int4 first,
                                               int4 count, OUT* __restrict__ out, int ld_out) {
    constexpr int W = LIN_DV / CSPLIT, THREADS = W * GDN_PARTS;  // a block's value columns, threads
    static_assert(CSPLIT == 1 || W == 32, "a split block's part-0 warp holds its columns");
    constexpr int CH = 2 * LIN_DK + W;  // a position's q, k and v channels of this block
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int h = blockIdx.x / CSPLIT, v0 = (blockIdx.x % CSPLIT) * W, i = blockIdx.y;
    const int jj = tid % W, part = tid / W, j = v0 + jj;
    const float nw = __bfloat162float(norm_w[j]);
    KILN_PDL_ENTER_ROWS(count.x);
    __shared__ float qkvs[CONV_K][CH];  // per position: q (LIN_DK), k (LIN_DK), v (W)
    __shared__ float zs[CONV_K][W];
    __shared__ float red_kv[CONV_K][GDN_PARTS][W];
    __shared__ float red_o[CONV_K][GDN_PARTS][W];
    __shared__ float sc[CONV_K][4];
    __shared__ float wsum[CONV_K][THREADS / 32];
    __shared__ int my_rows[CONV_K];
    // Uniform over a cluster (one (h, i)): no block waits at a cluster barrier for one
    // that left.
    if (i >= count.x) return;
    const int row0 = first.x + i;
    const int slot = slots[row0];
    if (slot < 0) return;
    verify_find_rows<THREADS>(slots, positions, first, count, row0, slot, my_rows);
    int npos = 0;  // the sequence's fed positions are 0..npos-1
    while (npos < positions && my_rows[npos] >= 0) ++npos;
    float* ring = conv_state + (size_t)slot * CONV_K * CONV_DIM;
    const int p0 = pos[row0];
    const FedTap<IN> tap{ring, qkv, my_rows, ld_qkv, p0};
    const size_t in_head = (size_t)part * GDN_ROWS * LIN_DV + j;
    const float* Si = state + ((size_t)state_io[row0].x * LIN_NV + h) * LIN_DK * LIN_DV + in_head;
    float s[GDN_ROWS];
#pragma unroll
    for (int r = 0; r < GDN_ROWS; ++r) s[r] = Si[(size_t)r * LIN_DV];
    gdn_verify_positions<IN, THREADS, W>(s, qkv, ld_qkv, z, ld_z, b, a, ld_ba, conv_w, state, A_log, dt_bias, pos,
                                         state_io, my_rows, npos, h, v0, in_head, tap, qkvs, zs, red_kv, red_o, sc);
    // The gated norms: column j's o as gdn_decode_update sums it, then block_sum's sum of
    // o^2 (the part-0 warps hold the columns; the other warps' shares are the zeros
    // block_sum adds). Split, the head's part-0 warps are the cluster's ranks' warp 0.
    float o[CONV_K];
#pragma unroll
    for (int q = 0; q < CONV_K; ++q) {
        o[q] = 0.f;
        if (q < npos) {
            o[q] = gdn_column_sum(red_o[q], jj);
            const float w = warp_sum(part == 0 ? o[q] * o[q] : 0.f);
            if (lane == 0) wsum[q][warp] = w;
        }
    }
    if constexpr (CSPLIT == 1) __syncthreads();
    else cluster_barrier();  // every thread of the cluster: the barrier counts them all
    if (part == 0) {
#pragma unroll
        for (int q = 0; q < CONV_K; ++q)
            if (q < npos) {
                float share;  // warp `lane`'s sum of the head (block_sum's first stage)
                if constexpr (CSPLIT == 1) share = lane < THREADS / 32 ? wsum[q][lane] : 0.f;
                else share = lane < CSPLIT ? ld_cluster_f32(&wsum[q][0], (unsigned)lane) : 0.f;
                const float tot = warp_sum(share);
                out[(size_t)my_rows[q] * ld_out + h * LIN_DV + j] = gdn_gated_out<OUT>(o[q], tot, nw, zs[q][jj]);
            }
    }
    if constexpr (CSPLIT > 1) cluster_barrier();  // no block leaves while another reads its sums
}

// One block per SM is enough at verify batches (<= 8 sequences: 256 blocks); with two
// the bf16-input variants spilled 16 bytes on sm_90a.
#define GDN_VERIFY(NAME, FN, IN, OUT)                                                               \
    extern "C" __global__ void __launch_bounds__(GDN_DEC_THREADS, 1)                                 \
        NAME(const IN* qkv, int ld_qkv, const IN* z, int ld_z, const IN* b, const IN* a, int ld_ba,  \
             const bf16* conv_w, float* conv_state, float* state, const float* A_log,               \
             const float* dt_bias, const bf16* norm_w, const int* slots, const int* pos,            \
             const int2* state_io, int positions, int4 first, int4 count, OUT* out, int ld_out) {   \
        FN<IN, OUT>(qkv, ld_qkv, z, ld_z, b, a, ld_ba, conv_w, conv_state, state, A_log, dt_bias,    \
                    norm_w, slots, pos, state_io, positions, first, count, out, ld_out);            \
    }
GDN_VERIFY(kiln_gdn_verify_f32_f32, gdn_verify, float, float)
GDN_VERIFY(kiln_gdn_verify_f32_bf16, gdn_verify, float, gop)
GDN_VERIFY(kiln_gdn_verify_bf16_f32, gdn_verify, bf16, float)
GDN_VERIFY(kiln_gdn_verify_bf16_bf16, gdn_verify, bf16, gop)
GDN_VERIFY(kiln_gdn_verify_pre_f32_f32, gdn_verify_pre, float, float)
GDN_VERIFY(kiln_gdn_verify_pre_f32_bf16, gdn_verify_pre, float, gop)
GDN_VERIFY(kiln_gdn_verify_pre_bf16_f32, gdn_verify_pre, bf16, float)
GDN_VERIFY(kiln_gdn_verify_pre_bf16_bf16, gdn_verify_pre, bf16, gop)

#define GDN_VERIFY_SPLIT(NAME, IN, OUT)                                                             \
    extern "C" __global__ void __cluster_dims__(GDN_CSPLIT, 1, 1) __launch_bounds__(GDN_SPLIT_THREADS, 4) \
        NAME(const IN* qkv, int ld_qkv, const IN* z, int ld_z, const IN* b, const IN* a, int ld_ba,  \
             const bf16* conv_w, float* conv_state, float* state, const float* A_log,               \
             const float* dt_bias, const bf16* norm_w, const int* slots, const int* pos,            \
             const int2* state_io, int positions, int4 first, int4 count, OUT* out, int ld_out) {   \
        gdn_verify_pre<IN, OUT, GDN_CSPLIT>(qkv, ld_qkv, z, ld_z, b, a, ld_ba, conv_w, conv_state, state, A_log, \
                                            dt_bias, norm_w, slots, pos, state_io, positions, first, count, out, ld_out); \
    }
GDN_VERIFY_SPLIT(kiln_gdn_verify_split_f32_f32, float, float)
GDN_VERIFY_SPLIT(kiln_gdn_verify_split_f32_bf16, float, gop)
GDN_VERIFY_SPLIT(kiln_gdn_verify_split_bf16_f32, bf16, float)
GDN_VERIFY_SPLIT(kiln_gdn_verify_split_bf16_bf16, bf16, gop)

// kiln_conv_ring_write_{in}(const IN* qkv, int ld_qkv, float* conv_state, const int* slots,
//     const int* pos, int T): for every row t with slots[t] >= 0, the ring row of position
//   pos[t] = to_f(qkv[t][0..CONV_DIM)): what kiln_gdn_decode writes into the ring, for the
//   rows kiln_gdn_verify fed without writing it. A sequence's rows are distinct positions,
//   at most CONV_K of them, so no two rows write one ring row. grid (T, RING_WRITE_SLICES),
//   block 256: a block writes 1/RING_WRITE_SLICES of a row, RING_WRITE_PER channels per
//   thread, loads before stores (one block per row took ~7 µs per launch, 0.18 ms per
//   verify step; session 13 timeline).
// KILN_RING_WRITE_SLICES: registry::RING_WRITE_SLICES (the launcher's grid.y).
#define RING_WRITE_SLICES KILN_RING_WRITE_SLICES
#define RING_WRITE_PER 4
template <typename IN>
__device__ __forceinline__ void conv_ring_write(const IN* __restrict__ qkv, int ld_qkv, float* __restrict__ conv_state,
                                                const int* __restrict__ slots, const int* __restrict__ pos, int T) {
    KILN_PDL_ENTER();
    const int t = blockIdx.x;
    if (t >= T) return;
    const int slot = slots[t];
    if (slot < 0) return;
    float* dst = conv_state + ((size_t)slot * CONV_K + pos[t] % CONV_K) * CONV_DIM;
    const IN* src = qkv + (size_t)t * ld_qkv;
    constexpr int STRIDE = 256 * RING_WRITE_SLICES;  // channels between a thread's own
    const int ch0 = blockIdx.y * 256 + threadIdx.x;
    float v[RING_WRITE_PER];
#pragma unroll
    for (int i = 0; i < RING_WRITE_PER; ++i) {
        const int ch = ch0 + i * STRIDE;
        v[i] = ch < CONV_DIM ? to_f(src[ch]) : 0.f;
    }
#pragma unroll
    for (int i = 0; i < RING_WRITE_PER; ++i) {
        const int ch = ch0 + i * STRIDE;
        if (ch < CONV_DIM) dst[ch] = v[i];
    }
    // Channels past what the grid covers (none for CONV_DIM <= 8192), one by one.
    for (int ch = ch0 + RING_WRITE_PER * STRIDE; ch < CONV_DIM; ch += STRIDE) dst[ch] = to_f(src[ch]);
}
extern "C" __global__ void __launch_bounds__(256)
    kiln_conv_ring_write_f32(const float* qkv, int ld_qkv, float* conv_state, const int* slots, const int* pos, int T) {
    conv_ring_write<float>(qkv, ld_qkv, conv_state, slots, pos, T);
}
extern "C" __global__ void __launch_bounds__(256)
    kiln_conv_ring_write_bf16(const bf16* qkv, int ld_qkv, float* conv_state, const int* slots, const int* pos, int T) {
    conv_ring_write<bf16>(qkv, ld_qkv, conv_state, slots, pos, T);
}
