//! The kernel registry: every entry point of every module and the dynamic shared memory
//! it is launched with, declared once. The loader takes its function list and shared
//! memory limits from here, the launchers their names and sizes, and the NVRTC compile
//! passes the sizes to the kernels as `KILN_SMEM_*` defines, where each kernel
//! static-asserts its own layout against them (so a drift fails the compile in CI). A
//! CPU test checks that the compiled modules export exactly these names.

use super::compile::KernelDims;
use super::kernels::DType;

/// One entry point: its module (a `kernels/*.cu` file) and the dynamic shared memory it
/// needs beyond the default (0: none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub module: &'static str,
    pub name: &'static str,
    pub smem: usize,
}

/// Rows of `[x dtype][y dtype]` tables: index 0 is f32, 1 is bf16 (`DType::idx`).
type ByXY<T> = [[T; 2]; 2];

pub const EMBED: &str = "kiln_embed";
pub const ADD_RMSNORM: [&str; 2] = ["kiln_add_rmsnorm_f32", "kiln_add_rmsnorm_bf16"];
/// add_rmsnorm whose delta is a decode GEMM's split-K partials (fp32): a block per row,
/// and a cluster of 8 one-warp blocks per row (the same bits).
pub const ADD_RMSNORM_PARTS: &str = "kiln_add_rmsnorm_parts";
pub const ADD_RMSNORM_PARTS_CLUSTER: &str = "kiln_add_rmsnorm_parts_cl";
/// The cluster form with a warp per vector (`GemmChoices::defer_cluster_vec_warps`).
pub const ADD_RMSNORM_PARTS_CLUSTER_WARPS: &str = "kiln_add_rmsnorm_parts_clw";
/// The MTP head's fc input (both norms into one row), by output dtype.
pub const MTP_FC_INPUT: [&str; 2] = ["kiln_mtp_fc_input_f32", "kiln_mtp_fc_input_bf16"];
pub const GATED_RMSNORM: ByXY<&str> = [
    ["kiln_gated_rmsnorm_f32_f32", "kiln_gated_rmsnorm_f32_bf16"],
    ["kiln_gated_rmsnorm_bf16_f32", "kiln_gated_rmsnorm_bf16_bf16"],
];
/// Register skinny GEMM, one kernel per largest M: [x][y][m8, m16, m32, m64].
pub const GEMM: ByXY<[&str; 4]> = [
    [
        ["kiln_gemm_xf32_yf32_m8", "kiln_gemm_xf32_yf32_m16", "kiln_gemm_xf32_yf32_m32", "kiln_gemm_xf32_yf32_m64"],
        ["kiln_gemm_xf32_ybf16_m8", "kiln_gemm_xf32_ybf16_m16", "kiln_gemm_xf32_ybf16_m32", "kiln_gemm_xf32_ybf16_m64"],
    ],
    [
        ["kiln_gemm_xbf16_yf32_m8", "kiln_gemm_xbf16_yf32_m16", "kiln_gemm_xbf16_yf32_m32", "kiln_gemm_xbf16_yf32_m64"],
        ["kiln_gemm_xbf16_ybf16_m8", "kiln_gemm_xbf16_ybf16_m16", "kiln_gemm_xbf16_ybf16_m32", "kiln_gemm_xbf16_ybf16_m64"],
    ],
];
/// Skinny GEMM with x split once per block into shared memory: [x][y][m16, m32, m64].
pub const GEMM_SX: ByXY<[&str; 3]> = [
    [
        ["kiln_gemm_sx_xf32_yf32_m16", "kiln_gemm_sx_xf32_yf32_m32", "kiln_gemm_sx_xf32_yf32_m64"],
        ["kiln_gemm_sx_xf32_ybf16_m16", "kiln_gemm_sx_xf32_ybf16_m32", "kiln_gemm_sx_xf32_ybf16_m64"],
    ],
    [
        ["kiln_gemm_sx_xbf16_yf32_m16", "kiln_gemm_sx_xbf16_yf32_m32", "kiln_gemm_sx_xbf16_yf32_m64"],
        ["kiln_gemm_sx_xbf16_ybf16_m16", "kiln_gemm_sx_xbf16_ybf16_m32", "kiln_gemm_sx_xbf16_ybf16_m64"],
    ],
];
/// Repacks a row-major weight into the packed layout the skinny GEMMs may read (once at load).
pub const PACK_WEIGHT: &str = "kiln_pack_weight";
/// Tiled tensor-core GEMM for M = 17..256 (kernels/gemm_tiled.cu): [x][y].
pub const GEMM_TILED: ByXY<&str> = [
    ["kiln_gemm_tiled_xf32_yf32", "kiln_gemm_tiled_xf32_ybf16"],
    ["kiln_gemm_tiled_xbf16_yf32", "kiln_gemm_tiled_xbf16_ybf16"],
];
/// The tiled GEMM with 256-row blocks, one per SM (kernels/gemm_tiled.cu, `GemmKind::TiledWide`): [x][y].
pub const GEMM_TILED_WIDE: ByXY<&str> = [
    ["kiln_gemm_tiled_w_xf32_yf32", "kiln_gemm_tiled_w_xf32_ybf16"],
    ["kiln_gemm_tiled_w_xbf16_yf32", "kiln_gemm_tiled_w_xbf16_ybf16"],
];
/// The wide tiled GEMM with one cp.async wait and barrier per two stages
/// (`GemmKind::TiledWidePaired`, an experiment): [x][y].
pub const GEMM_TILED_WIDE_PAIRED: ByXY<&str> = [
    ["kiln_gemm_tiled_w2_xf32_yf32", "kiln_gemm_tiled_w2_xf32_ybf16"],
    ["kiln_gemm_tiled_w2_xbf16_yf32", "kiln_gemm_tiled_w2_xbf16_ybf16"],
];
/// Its slots (W, x): a pair computed, a pair loading (the kernel's template arguments,
/// passed by `smem_defines` as KILN_TILED_PAIRED_W_SLOTS / KILN_TILED_PAIRED_X_SLOTS).
pub const TILED_PAIRED_SLOTS: (usize, usize) = (4, 4);
/// The tiled GEMM's stage counts (W slots, x slots), the kernel's template arguments
/// (`smem_defines` passes them): W runs slots - 1 stages ahead, x slots - 1. The kernel
/// static_asserts its shared memory against `gemm_tiled_smem`, and
/// `kernels::tiled_pipeline` checks the schedule for hazards. Measured on the H100 (docs/perf.md, session 11), all with the same bits:
/// (3, 2) was 0.5-0.9 % faster at batch 32-256 but spills 36 bytes on sm_100a (where users
/// deploy), (4, 3) was 2-6 % and (5, 2) 4-9 % slower: W further ahead costs, and x one
/// stage ahead or two is about the same.
pub const TILED_STAGES: (usize, usize) = (3, 3);
/// The largest M of each `GEMM_SX` column.
pub const GEMM_SX_MAX_M: [usize; 3] = [16, 32, 64];
pub const CONV1D: [&str; 2] = ["kiln_conv1d_f32", "kiln_conv1d_bf16"];
pub const GDN_DECODE: ByXY<&str> = [
    ["kiln_gdn_decode_f32_f32", "kiln_gdn_decode_f32_bf16"],
    ["kiln_gdn_decode_bf16_f32", "kiln_gdn_decode_bf16_bf16"],
];
/// Speculative verification's GDN: every fed position of a sequence in one block.
pub const GDN_VERIFY: ByXY<&str> = [
    ["kiln_gdn_verify_f32_f32", "kiln_gdn_verify_f32_bf16"],
    ["kiln_gdn_verify_bf16_f32", "kiln_gdn_verify_bf16_bf16"],
];
/// The same with every position's inputs computed first (`KILN_GDN_VERIFY_PRE=1`).
pub const GDN_VERIFY_PRE: ByXY<&str> = [
    ["kiln_gdn_verify_pre_f32_f32", "kiln_gdn_verify_pre_f32_bf16"],
    ["kiln_gdn_verify_pre_bf16_f32", "kiln_gdn_verify_pre_bf16_bf16"],
];
/// The pre form with each head over a cluster of blocks of 32 value columns
/// (`KILN_GDN_VERIFY_SPLIT_MAX_SEQS`, an experiment).
pub const GDN_VERIFY_SPLIT: ByXY<&str> = [
    ["kiln_gdn_verify_split_f32_f32", "kiln_gdn_verify_split_f32_bf16"],
    ["kiln_gdn_verify_split_bf16_f32", "kiln_gdn_verify_split_bf16_bf16"],
];
/// Blocks per row of kiln_conv_ring_write (passed to the kernel as KILN_RING_WRITE_SLICES).
pub const RING_WRITE_SLICES: usize = 8;
/// The conv ring rows of fed positions (after kiln_gdn_verify), by qkv dtype.
pub const CONV_RING_WRITE: [&str; 2] = ["kiln_conv_ring_write_f32", "kiln_conv_ring_write_bf16"];
pub const GDN_PREFILL_PREP: [&str; 2] = ["kiln_gdn_prefill_prep_f32", "kiln_gdn_prefill_prep_bf16"];
pub const GDN_PREFILL_SCAN: &str = "kiln_gdn_prefill_scan";
pub const QK_NORM_ROPE: [&str; 2] = ["kiln_qk_norm_rope_f32", "kiln_qk_norm_rope_bf16"];
/// Prefill attention by rows (head, query) per block: 128 (default since session 8) or
/// 64 (`KILN_ATTN_PREFILL_ROWS=64`); the same bits.
pub const ATTN_PREFILL: [&str; 2] = ["kiln_attn_prefill", "kiln_attn_prefill_r128"];
pub const ATTN_PREFILL_ROWS: [usize; 2] = [64, 128];
pub const ATTN_DECODE_PARTIAL: &str = "kiln_attn_decode_partial";
pub const ATTN_DECODE_COMBINE: [&str; 2] = ["kiln_attn_decode_combine_f32", "kiln_attn_decode_combine_bf16"];
pub const OUTPUT_GATE: ByXY<&str> = [
    ["kiln_output_gate_f32_f32", "kiln_output_gate_f32_bf16"],
    ["kiln_output_gate_bf16_f32", "kiln_output_gate_bf16_bf16"],
];
pub const SILU_MUL: ByXY<&str> = [
    ["kiln_silu_mul_f32_f32", "kiln_silu_mul_f32_bf16"],
    ["kiln_silu_mul_bf16_f32", "kiln_silu_mul_bf16_bf16"],
];
/// silu_mul over the gate_up GEMM's unsummed split-K partials, by output dtype.
pub const SILU_MUL_PARTS: [&str; 2] = ["kiln_silu_mul_parts_f32", "kiln_silu_mul_parts_bf16"];
pub const ARGMAX: [&str; 2] = ["kiln_argmax_f32", "kiln_argmax_bf16"];
pub const ARGMAX_MASKED: &str = "kiln_argmax_masked_f32";
/// Logits per argmax block (AMAX_SLICE in elementwise.cu): a row of n takes
/// ceil(n / ARGMAX_SLICE) blocks.
pub const ARGMAX_SLICE: usize = 2048;
pub const F32_TO_BF16: &str = "kiln_f32_to_bf16";
pub const GATHER_ROWS: [&str; 2] = ["kiln_gather_rows_f32", "kiln_gather_rows_bf16"];
pub const COPY_SEGMENTS: &str = "kiln_copy_segments";
/// A speculative cycle on the device: drafts into the verify step, acceptance and the commit's choice.
pub const SPEC_FEED: &str = "kiln_spec_feed";
pub const SPEC_ACCEPT: &str = "kiln_spec_accept";
/// The MTP draft's int8 lm_head (kernels/draft_head.cu): the start-up quantization and
/// the draft GEMV.
pub const QUANT_ROWS_I8: &str = "kiln_quant_rows_i8";
pub const GEMV_I8: &str = "kiln_gemv_i8";
/// The int4 table (one scale per 128 k): quantization and GEMV, shared memory as gemv_i8's.
pub const QUANT_ROWS_I4: &str = "kiln_quant_rows_i4";
pub const GEMV_I4: &str = "kiln_gemv_i4";
/// k per int4 scale group (DH4_GROUP_K).
pub const I4_GROUP_K: usize = 128;
/// Most batch rows of one kiln_gemv_i8 launch (DH_MAX_M).
pub const GEMV_I8_MAX_M: usize = 8;

/// Dynamic shared memory of kiln_gemv_i8: x as f16 rows of K + 8 for `GEMV_I8_MAX_M` rows.
pub fn gemv_i8_smem(k: usize) -> usize {
    GEMV_I8_MAX_M * (k + 8) * 2
}

/// Tokens per GDN prefill chunk (GR_C / GS_C in gdn_prefill.cu).
pub const GDN_CHUNK: usize = 64;

/// Dynamic shared memory of kiln_attn_prefill{,_r128}: q hi + lo [rows] and k, v [2
/// buffers][32 keys], bf16 rows padded by 8 (ApShape::SMEM).
pub fn attn_prefill_smem(head_dim: usize, rows: usize) -> usize {
    (2 * rows + 4 * 32) * (head_dim + 8) * 2
}

/// Dynamic shared memory of kiln_gdn_prefill_prep_* (GR_SMEM_BYTES; the kernel traps if
/// launched with less): q, k, v, W rows (fp32, padded); P, -A (split pairs); the
/// diagonal inverses and diagonal blocks of A; per-token vectors. 183824 bytes at dk =
/// dv = 128.
pub fn gdn_prefill_prep_smem(dk: usize, dv: usize) -> usize {
    let c = GDN_CHUNK;
    let ldx = dk.max(dv) + 4;
    4 * c * ldx * 4 + 2 * c * (c / 2 + 4) * 8 + c * 12 * 8 + c * 17 * 4 + 5 * c * 4 + 16
}

/// Dynamic shared memory of kiln_gdn_prefill_scan (GS_SMEM_BYTES): two chunk buffers of
/// {-W, Q', Kd} tiles, S^T and V'^T as A tiles. 221184 bytes at dk = 128.
pub fn gdn_prefill_scan_smem(dk: usize) -> usize {
    (2 * 48 * dk + 2 * (dk / 16) * 64 + 8 * 64) * 16
}

/// Dynamic shared memory of kiln_gemm_sx_*: two slabs of 64 k for `max_m` rows, row
/// stride 320 bytes (fp32 x as bf16 hi + lo) or 192 (bf16 x).
pub fn gemm_sx_smem(x: DType, max_m: usize) -> usize {
    2 * max_m * if x == DType::F32 { 320 } else { 192 }
}

/// The most dynamic shared memory the m16 shared-x kernel stages a whole K slice of x in
/// (kernels/gemm.cu `sxw_fits`): two blocks of it fit an SM (228 KB on sm_90 and sm_100).
pub const GEMM_SXW_MAX_BYTES: usize = 100 * 1024;

/// The bound compiled into a plan's kernels: `GEMM_SXW_MAX_BYTES`, or less with the
/// build-time experiment `KILN_GEMM_SXW_MAX_BYTES` (0: the two-slab ring always, the
/// kernel before session 13). Never more: launches give the kernel at most
/// `gemm_sxw_smem`'s bytes, which a smaller bound only leaves partly unused.
pub fn gemm_sxw_max_bytes_built() -> usize {
    std::env::var("KILN_GEMM_SXW_MAX_BYTES").ok().and_then(|v| v.parse::<usize>().ok()).map_or(GEMM_SXW_MAX_BYTES, |v| v.min(GEMM_SXW_MAX_BYTES))
}

/// Dynamic shared memory of the m16 shared-x kernel when it stages the whole K slice of x
/// (M rows, slabs of 64 k of a `ks`-column slice), or None when that does not fit
/// `GEMM_SXW_MAX_BYTES` or M > 16 (the two-slab ring then, `gemm_sx_smem`). The kernel
/// takes the same decision from the same numbers.
pub fn gemm_sxw_smem(x: DType, m: usize, ks: usize) -> Option<usize> {
    let bytes = ks.div_ceil(64) * m * if x == DType::F32 { 320 } else { 192 };
    (m <= GEMM_SX_MAX_M[0] && bytes <= GEMM_SXW_MAX_BYTES).then_some(bytes)
}

/// Dynamic shared memory of `GEMM_TILED`: its W stages of 64 k (128-row tiles, 128 bytes
/// per row) and x stages (64-row tiles, hi and lo planes for fp32 x).
pub fn gemm_tiled_smem(x: DType) -> usize {
    gemm_tiled_rows_smem(x, 128)
}

/// Dynamic shared memory of the tiled GEMM with `rows` W rows per block (`GEMM_TILED`: 128,
/// `GEMM_TILED_WIDE`: 256).
pub fn gemm_tiled_rows_smem(x: DType, rows: usize) -> usize {
    gemm_tiled_slots_smem(x, rows, TILED_STAGES)
}

/// The same with (W, x) `slots` (`TILED_PAIRED_SLOTS` for `GEMM_TILED_WIDE_PAIRED`).
pub fn gemm_tiled_slots_smem(x: DType, rows: usize, slots: (usize, usize)) -> usize {
    slots.0 * rows * 128 + slots.1 * 64 * 128 * if x == DType::F32 { 2 } else { 1 }
}

const BOTH: [DType; 2] = [DType::F32, DType::BF16];

/// Every entry point, module by module (the order of `compile::SOURCES`).
pub fn entries(d: &KernelDims) -> Vec<Entry> {
    let mut v = Vec::new();
    let mut add = |module: &'static str, names: &[&'static str], smem: usize| {
        v.extend(names.iter().map(|&name| Entry { module, name, smem }));
    };
    add("norm", &[EMBED], 0);
    add("norm", &ADD_RMSNORM, 0);
    add("norm", &[ADD_RMSNORM_PARTS, ADD_RMSNORM_PARTS_CLUSTER, ADD_RMSNORM_PARTS_CLUSTER_WARPS], 0);
    add("norm", &MTP_FC_INPUT, 0);
    add("norm", GATED_RMSNORM.as_flattened(), 0);
    add("gemm", GEMM.as_flattened().as_flattened(), 0);
    add("gemm", &[PACK_WEIGHT], 0);
    for x in BOTH {
        for y in BOTH {
            for (i, m) in GEMM_SX_MAX_M.iter().enumerate() {
                // The m16 variant may stage a whole K slice (`gemm_sxw_smem`).
                let most = if i == 0 { gemm_sx_smem(x, *m).max(GEMM_SXW_MAX_BYTES) } else { gemm_sx_smem(x, *m) };
                add("gemm", &[GEMM_SX[x.idx()][y.idx()][i]], most);
            }
        }
    }
    for x in BOTH {
        add("gemm_tiled", &GEMM_TILED[x.idx()], gemm_tiled_smem(x));
        add("gemm_tiled", &GEMM_TILED_WIDE[x.idx()], gemm_tiled_rows_smem(x, 256));
        add("gemm_tiled", &GEMM_TILED_WIDE_PAIRED[x.idx()], gemm_tiled_slots_smem(x, 256, TILED_PAIRED_SLOTS));
    }
    add("conv", &CONV1D, 0);
    add("gdn_decode", GDN_DECODE.as_flattened(), 0);
    add("gdn_decode", GDN_VERIFY.as_flattened(), 0);
    add("gdn_decode", GDN_VERIFY_PRE.as_flattened(), 0);
    add("gdn_decode", GDN_VERIFY_SPLIT.as_flattened(), 0);
    add("gdn_decode", &CONV_RING_WRITE, 0);
    add("gdn_prefill", &GDN_PREFILL_PREP, gdn_prefill_prep_smem(d.lin_k_dim, d.lin_v_dim));
    add("gdn_scan", &[GDN_PREFILL_SCAN], gdn_prefill_scan_smem(d.lin_k_dim));
    add("rope_kv", &QK_NORM_ROPE, 0);
    for (name, rows) in ATTN_PREFILL.iter().zip(ATTN_PREFILL_ROWS) {
        add("attn_prefill", &[name], attn_prefill_smem(d.head_dim, rows));
    }
    add("attn_decode", &[ATTN_DECODE_PARTIAL], 0);
    add("attn_decode", &ATTN_DECODE_COMBINE, 0);
    add("elementwise", OUTPUT_GATE.as_flattened(), 0);
    add("elementwise", SILU_MUL.as_flattened(), 0);
    add("elementwise", &SILU_MUL_PARTS, 0);
    add("elementwise", &ARGMAX, 0);
    add("elementwise", &[ARGMAX_MASKED], 0);
    add("elementwise", &[F32_TO_BF16], 0);
    add("elementwise", &GATHER_ROWS, 0);
    add("elementwise", &[COPY_SEGMENTS], 0);
    add("elementwise", &[SPEC_FEED, SPEC_ACCEPT], 0);
    add("draft_head", &[QUANT_ROWS_I8], 0);
    add("draft_head", &[GEMV_I8], gemv_i8_smem(d.hidden));
    add("draft_head", &[QUANT_ROWS_I4], 0);
    add("draft_head", &[GEMV_I4], gemv_i8_smem(d.hidden));
    v
}

/// The shared-memory sizes as NVRTC defines, which the kernels static-assert their own
/// layouts against.
pub fn smem_defines(d: &KernelDims) -> Vec<String> {
    let mut v = vec![
        format!("-DKILN_SMEM_GDN_PREP={}", gdn_prefill_prep_smem(d.lin_k_dim, d.lin_v_dim)),
        format!("-DKILN_SMEM_GDN_SCAN={}", gdn_prefill_scan_smem(d.lin_k_dim)),
        format!("-DKILN_ARGMAX_SLICE={ARGMAX_SLICE}"),
        format!("-DKILN_TILED_W_SLOTS={}", TILED_STAGES.0),
        format!("-DKILN_TILED_X_SLOTS={}", TILED_STAGES.1),
        format!("-DKILN_TILED_PAIRED_W_SLOTS={}", TILED_PAIRED_SLOTS.0),
        format!("-DKILN_TILED_PAIRED_X_SLOTS={}", TILED_PAIRED_SLOTS.1),
        format!("-DKILN_GEMM_SXW_MAX_BYTES={}", gemm_sxw_max_bytes_built()),
        format!("-DKILN_RING_WRITE_SLICES={RING_WRITE_SLICES}"),
        format!("-DKILN_SMEM_GEMV_I8={}", gemv_i8_smem(d.hidden)),
    ];
    for rows in ATTN_PREFILL_ROWS {
        v.push(format!("-DKILN_SMEM_ATTN_PREFILL_R{rows}={}", attn_prefill_smem(d.head_dim, rows)));
    }
    for x in BOTH {
        for m in GEMM_SX_MAX_M {
            v.push(format!("-DKILN_SMEM_GEMM_SX_{}_M{m}={}", x.suffix(), gemm_sx_smem(x, m)));
        }
        v.push(format!("-DKILN_SMEM_GEMM_TILED_{}={}", x.suffix(), gemm_tiled_smem(x)));
        v.push(format!("-DKILN_SMEM_GEMM_TILED_WIDE_{}={}", x.suffix(), gemm_tiled_rows_smem(x, 256)));
        v.push(format!("-DKILN_SMEM_GEMM_TILED_WIDE2_{}={}", x.suffix(), gemm_tiled_slots_smem(x, 256, TILED_PAIRED_SLOTS)));
    }
    v
}

/// The entry points a compiled module (cubin) exports: the NUL-terminated names in its
/// string table that start with `kiln_` (section names such as `.text.kiln_x` start
/// with a dot and are not counted).
pub fn exported_names(cubin: &[u8]) -> std::collections::BTreeSet<String> {
    cubin
        .split(|b| *b == 0)
        .filter(|s| s.starts_with(b"kiln_") && s.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_'))
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// Shared memory a launch may take without opting in (`CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`),
/// static and dynamic together.
pub const SMEM_NO_OPT_IN: usize = 48 * 1024;
/// The most one block may take on sm_90 and sm_100 with the opt-in (227 KB).
pub const SMEM_OPT_IN_MAX: usize = 227 * 1024;
/// What sm_90 and sm_100 reserve per block, outside both limits above; their cubins count
/// it in every kernel's `.nv.shared` section.
pub const SMEM_RESERVED_PER_BLOCK: usize = 1024;

/// The size of each kernel's `.nv.shared.<kernel>` section in a compiled module (cubin,
/// ELF64): its static shared memory plus, on sm_90 / sm_100, the reserved
/// `SMEM_RESERVED_PER_BLOCK`. Empty for bytes that are not a 64-bit little-endian ELF.
pub fn static_shared_bytes(cubin: &[u8]) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    let rd = |off: usize, n: usize| -> Option<u64> {
        let b = cubin.get(off..off + n)?;
        Some(b.iter().rev().fold(0u64, |a, &x| (a << 8) | x as u64))
    };
    if !cubin.starts_with(b"\x7fELF") || cubin.get(4) != Some(&2) || cubin.get(5) != Some(&1) {
        return out;
    }
    let (Some(shoff), Some(shentsize), Some(shnum), Some(shstrndx)) = (rd(0x28, 8), rd(0x3A, 2), rd(0x3C, 2), rd(0x3E, 2)) else {
        return out;
    };
    let header = |i: u64| -> Option<(u64, u64, u64)> {
        let h = (shoff + i * shentsize) as usize;
        Some((rd(h, 4)?, rd(h + 24, 8)?, rd(h + 32, 8)?)) // name offset, file offset, size
    };
    let Some((_, str_off, str_size)) = header(shstrndx) else { return out };
    let Some(names) = cubin.get(str_off as usize..(str_off + str_size) as usize) else { return out };
    for i in 0..shnum {
        let Some((name_off, _, size)) = header(i) else { continue };
        let Some(tail) = names.get(name_off as usize..) else { continue };
        let name = &tail[..tail.iter().position(|b| *b == 0).unwrap_or(tail.len())];
        if let Some(kernel) = name.strip_prefix(b".nv.shared.") {
            out.insert(String::from_utf8_lossy(kernel).into_owned(), size as usize);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_m16_shared_x_kernel_stages_whole_slices_of_the_model_shapes() {
        // Qwen3.5-4B on 132 SMs (kernels::gemm's split test): qkvz ks 640, gate_up and qgkv
        // 864, the lm_head one split of 2560. Every wide weight up to 16 rows stages its
        // whole slice; the lm_head up to 8 rows (40 slabs x 8 x 320 bytes = the bound).
        assert_eq!(gemm_sxw_smem(DType::F32, 1, 640), Some(10 * 320));
        assert_eq!(gemm_sxw_smem(DType::F32, 16, 640), Some(10 * 16 * 320));
        assert_eq!(gemm_sxw_smem(DType::F32, 16, 864), Some(14 * 16 * 320));
        assert_eq!(gemm_sxw_smem(DType::F32, 8, 2560), Some(GEMM_SXW_MAX_BYTES));
        assert_eq!(gemm_sxw_smem(DType::F32, 9, 2560), None);
        assert_eq!(gemm_sxw_smem(DType::BF16, 13, 2560), Some(40 * 13 * 192));
        // Above 16 rows the m32 / m64 variants keep their ring.
        assert_eq!(gemm_sxw_smem(DType::F32, 17, 64), None);
        // Two blocks of the most it stages fit an SM's 228 KB (sm_90 and sm_100), beside
        // the 1 KB the driver reserves per block.
        assert!(2 * (GEMM_SXW_MAX_BYTES + 1024) <= 228 * 1024);
        // Without the build-time experiment the kernels get the bound the launcher uses.
        if std::env::var("KILN_GEMM_SXW_MAX_BYTES").is_err() {
            assert_eq!(gemm_sxw_max_bytes_built(), GEMM_SXW_MAX_BYTES);
        }
    }

    #[test]
    fn every_name_is_listed_once_and_sizes_match_the_documented_ones() {
        let d = KernelDims::qwen3_5_4b();
        let e = entries(&d);
        let names: std::collections::BTreeSet<&str> = e.iter().map(|x| x.name).collect();
        assert_eq!(names.len(), e.len(), "an entry point is listed twice");
        // The sizes the kernel headers document for Qwen3.5-4B.
        assert_eq!(gdn_prefill_prep_smem(128, 128), 183824);
        assert_eq!(gdn_prefill_scan_smem(128), 221184);
        assert_eq!(attn_prefill_smem(256, 64), 135168);
        // The 128-row variant still fits one block's shared memory on sm_90 and sm_100 (227 KB).
        assert_eq!(attn_prefill_smem(256, 128), 202752);
        assert!(e.iter().all(|x| x.smem <= 232448), "an entry point needs more than 227 KB of shared memory");
        let big: Vec<&str> = e.iter().filter(|x| x.smem > 48 * 1024).map(|x| x.name).collect();
        assert!(big.contains(&ATTN_PREFILL[0]) && big.contains(&ATTN_PREFILL[1]) && big.contains(&GDN_PREFILL_SCAN), "{big:?}");
    }

    #[test]
    fn static_shared_bytes_reads_only_elf64() {
        // Not ELF, 32-bit ELF, and a truncated header: nothing, rather than a panic or a guess
        // (t_basic reads real cubins).
        assert!(static_shared_bytes(b"kiln_embed\0").is_empty());
        assert!(static_shared_bytes(b"\x7fELF\x01\x01").is_empty());
        assert!(static_shared_bytes(b"\x7fELF\x02\x01\x01\x00").is_empty());
    }

    #[test]
    fn exported_names_skip_section_names_and_symbols_of_other_kinds() {
        let fake = b"\0.text.kiln_embed\0kiln_embed\0kiln_f32_to_bf16\0$kiln_x\0_Z3fooi\0kiln_bad name\0";
        let got: Vec<String> = exported_names(fake).into_iter().collect();
        assert_eq!(got, vec!["kiln_embed".to_string(), "kiln_f32_to_bf16".to_string()]);
    }
}
