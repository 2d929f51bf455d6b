// Depthwise causal conv1d (kernel CONV_K, no bias) + SiLU over the Gated DeltaNet
// q|k|v channels, for prefill chunks of several sequences (and single decode tokens).
//
// kiln_conv1d_{f32,bf16}(const T* x, int ld_x, const bf16* w, float* conv_state,
//                        const int* cu_seqlens, const int* slots, const int* start_pos,
//                        float* out, int ld_out, int nseq)
//   x [T_total][ld_x]: the in_proj_qkv output rows, channels [0, CONV_DIM) used;
//     sequence s owns rows [cu_seqlens[s], cu_seqlens[s+1]).
//   w [CONV_DIM][CONV_K] bf16 (HF conv1d.weight [C,1,K] squeezed); tap CONV_K-1
//     multiplies the newest input.
//   conv_state [slots][CONV_K][CONV_DIM] fp32: a ring of the last CONV_K inputs of
//     each channel, the input at absolute position p stored in row p % CONV_K. A token
//     at position p reads rows (p-CONV_K+1 .. p-1) % CONV_K and its own input; positions
//     < 0 read as zeros, so a new sequence needs no clearing of its ring. Only
//     positions of this chunk are written. Because a token's own row is never read by
//     the same step, several blocks may read one slot's window while its newest row
//     is written (the fused decode step relies on this).
//   slots[s] < 0 skips the sequence; start_pos[s] = tokens the slot has already seen.
//   out [T_total][ld_out] fp32 = silu(conv(x)), channels [0, CONV_DIM).
//   grid (ceil(CONV_DIM/128), G, nseq) for any G >= 1, block 128: block y computes one
//   channel per thread for the time blocks y, y+G, ... of CV_TB tokens each (inputs before
//   a time block's first token come from x, or from the ring before the chunk). Only
//   blocks with y == 0 read or write the ring (writing it last, from x): no block reads
//   what another writes.
#include "common.cuh"

using namespace kiln;

#define CV_TB 64
#define CV_U 8  // tokens whose inputs one thread loads at once

template <typename T>
__device__ __forceinline__ void conv1d(const T* __restrict__ x, int ld_x, const bf16* __restrict__ w,
                                       float* __restrict__ conv_state, const int* __restrict__ cu_seqlens,
                                       const int* __restrict__ slots, const int* __restrict__ start_pos,
                                       float* __restrict__ out, int ld_out, int nseq) {
    KILN_PDL_ENTER();
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int s = blockIdx.z;
    if (c >= CONV_DIM || s >= nseq) return;
    const int slot = slots[s];
    if (slot < 0) return;
    const int t0 = cu_seqlens[s], t1 = cu_seqlens[s + 1];
    const int p0 = start_pos[s];
    float* ring = conv_state + (size_t)slot * CONV_K * CONV_DIM + c;
    float wk[CONV_K];
#pragma unroll
    for (int j = 0; j < CONV_K; ++j) wk[j] = __bfloat162float(w[c * CONV_K + j]);
    for (int tb = t0 + blockIdx.y * CV_TB; tb < t1; tb += gridDim.y * CV_TB) {
        const int te = min(t1, tb + CV_TB);
        // win[j] = input at token tb - (CONV_K-1) + j: from x inside the chunk, else the ring.
        float win[CONV_K - 1];
#pragma unroll
        for (int j = 0; j < CONV_K - 1; ++j) {
            const int tt = tb - (CONV_K - 1) + j;
            const int p = p0 + (tt - t0);
            win[j] = tt >= t0 ? to_f(x[(size_t)tt * ld_x + c]) : (p >= 0 ? ring[(size_t)(p % CONV_K) * CONV_DIM] : 0.f);
        }
        // CV_U tokens' inputs are loaded before any is used (CV_U loads in flight per
        // thread, not one); each token's arithmetic is the same as one at a time.
        for (int t0u = tb; t0u < te; t0u += CV_U) {
            float xs[CV_U];
#pragma unroll
            for (int u = 0; u < CV_U; ++u) xs[u] = t0u + u < te ? to_f(x[(size_t)(t0u + u) * ld_x + c]) : 0.f;
#pragma unroll
            for (int u = 0; u < CV_U; ++u) {
                if (t0u + u >= te) break;
                const float xv = xs[u];
                float acc = wk[CONV_K - 1] * xv;
#pragma unroll
                for (int j = 0; j < CONV_K - 1; ++j) acc += wk[j] * win[j];
                out[(size_t)(t0u + u) * ld_out + c] = siluf_(acc);
#pragma unroll
                for (int j = 0; j < CONV_K - 2; ++j) win[j] = win[j + 1];
                win[CONV_K - 2] = xv;
            }
        }
    }
    if (blockIdx.y == 0) {  // ring rows of the chunk's last CONV_K positions
        for (int t = max(t0, t1 - CONV_K); t < t1; ++t) {
            const int p = p0 + (t - t0);
            ring[(size_t)(p % CONV_K) * CONV_DIM] = to_f(x[(size_t)t * ld_x + c]);
        }
    }
}

extern "C" __global__ void __launch_bounds__(128)
    kiln_conv1d_f32(const float* x, int ld_x, const bf16* w, float* conv_state, const int* cu_seqlens,
                    const int* slots, const int* start_pos, float* out, int ld_out, int nseq) {
    conv1d<float>(x, ld_x, w, conv_state, cu_seqlens, slots, start_pos, out, ld_out, nseq);
}
extern "C" __global__ void __launch_bounds__(128)
    kiln_conv1d_bf16(const bf16* x, int ld_x, const bf16* w, float* conv_state, const int* cu_seqlens,
                     const int* slots, const int* start_pos, float* out, int ld_out, int nseq) {
    conv1d<bf16>(x, ld_x, w, conv_state, cu_seqlens, slots, start_pos, out, ld_out, nseq);
}
