//! The plan file's byte layout and its JSON header.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "KILNPLAN"
//!      8     4  format version, u32 little-endian (FORMAT_VERSION)
//!     12     4  reserved, zero
//!     16     8  header length H in bytes, u64 LE
//!     24     8  payload offset P, u64 LE: align_up(64 + H, 256)
//!     32    32  SHA-256 of the header bytes
//!     64     H  header: UTF-8 JSON, one `PlanHeader`
//!   64+H   ...  zero padding up to P
//!      P     L  payload (L = header.payload_len): kernel cubins, then tensors,
//!               each starting at a multiple of 256 from P, zero padding between
//! ```
//!
//! Offsets in the header are relative to P, so P is the only absolute position. The
//! file ends exactly at P + L; anything else is a truncated or damaged file.

use super::arch::Arch;
use crate::checkpoint::Fingerprint;
use serde::{Deserialize, Serialize};

pub const MAGIC: &[u8; 8] = b"KILNPLAN";
/// Bump when the byte layout, the header schema or any packed tensor layout changes.
/// 3: the header records the NVRTC version and the checkpoint fingerprint.
pub const FORMAT_VERSION: u32 = 3;
/// Alignment of the payload and of every blob in it (bytes).
pub const ALIGN: u64 = 256;
/// Length of the fixed prefix before the JSON header.
pub const PREFIX_LEN: usize = 64;
/// Hash of the CUDA kernel sources this kiln was built from (see build.rs).
pub const KERNEL_HASH: &str = env!("KILN_KERNEL_HASH");
/// The GEMM weight dtypes a plan may carry (its header's `dtype`; every other matrix and
/// norm weight is bf16, small vectors f32): bf16, or f16 for the fp16 GEMM contract
/// (docs/numerics.md; the kernels compiled with KILN_GEMM_F16).
pub const PLAN_DTYPES: [&str; 2] = ["bf16", "f16"];

pub fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    Bf16,
    F16,
    F32,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::Bf16 | DType::F16 => 2,
            DType::F32 => 4,
        }
    }
}

/// Limits the plan was built for; a backend must not exceed them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Longest sequence (prompt + output) in tokens.
    pub max_context: usize,
    /// Largest decode batch the kernels and graphs are sized for.
    pub max_batch: usize,
}

/// One compiled CUDA module (a cubin) in the payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelEntry {
    pub name: String,
    pub offset: u64,
    pub len: u64,
    /// SHA-256 of the cubin bytes (hex); checked when the plan is opened.
    pub sha256: String,
}

/// Rows `[row, row + rows)` along dim 0 of a packed tensor come from checkpoint
/// tensor `source` (canonical name), in its stored row order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorPart {
    pub source: String,
    pub row: usize,
    pub rows: usize,
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}

/// One packed tensor in the payload, row-major, little-endian.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: DType,
    /// The stored values are the weights times 2^scale_log2 (the down projection of an
    /// fp16 plan, `layout::DOWN_SCALE_LOG2`); absent means 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub scale_log2: i32,
    pub shape: Vec<usize>,
    pub offset: u64,
    pub len: u64,
    pub parts: Vec<TensorPart>,
}

/// A checkpoint tensor deliberately not packed, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub name: String,
    pub reason: String,
}

/// The plan header. Every field that decides whether a plan fits a server is checked
/// by [`PlanHeader::check`](super::Expected); the rest is for people.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanHeader {
    /// Repeats the prefix's version.
    pub format_version: u32,
    /// `kiln-build <crate version> (<git describe>)`.
    pub builder_version: String,
    /// Hash of the CUDA kernel sources (`KERNEL_HASH` of the builder).
    pub kernel_hash: String,
    /// Target architecture of the kernels; None when built without kernels.
    pub arch: Option<Arch>,
    /// The NVRTC (major, minor) that compiled the kernels; None without kernels. A driver
    /// of an older CUDA major cannot load its cubins.
    pub nvrtc_version: Option<(u32, u32)>,
    /// SHA-256 of the canonical serialization of `model_config` (see `config_hash`).
    pub model_config_hash: String,
    /// The `ModelConfig` the weights were packed and the kernels compiled for.
    pub model_config: serde_json::Value,
    /// SHA-256 of tokenizer.json.
    pub tokenizer_hash: String,
    /// The checkpoint the weights were packed from (see `checkpoint::Fingerprint`).
    pub checkpoint: Fingerprint,
    /// The GEMM weights' dtype (`bf16` or `f16`, `PLAN_DTYPES`).
    pub dtype: String,
    pub limits: Limits,
    /// Where the checkpoint came from and its layout (informational).
    pub source: String,
    /// Seconds since the Unix epoch when the plan was written (informational).
    pub created_unix: u64,
    /// Payload length in bytes (the file is exactly payload_offset + payload_len long).
    pub payload_len: u64,
    /// The tensors occupy `[weights_offset, weights_offset + weights_len)` of the payload
    /// (one contiguous region, for a single upload).
    pub weights_offset: u64,
    pub weights_len: u64,
    pub kernels: Vec<KernelEntry>,
    pub tensors: Vec<TensorEntry>,
    pub skipped: Vec<Skipped>,
}

impl PlanHeader {
    /// Whether the plan's GEMM weights (and kernels) are fp16 (docs/numerics.md).
    pub fn gemm_f16(&self) -> bool {
        self.dtype == "f16"
    }
}

/// The decoded fixed prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    pub version: u32,
    pub header_len: u64,
    pub payload_offset: u64,
    pub header_sha256: [u8; 32],
}

impl Prefix {
    pub fn encode(&self) -> [u8; PREFIX_LEN] {
        let mut b = [0u8; PREFIX_LEN];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[16..24].copy_from_slice(&self.header_len.to_le_bytes());
        b[24..32].copy_from_slice(&self.payload_offset.to_le_bytes());
        b[32..64].copy_from_slice(&self.header_sha256);
        b
    }

    /// Decodes the prefix; None when the magic is wrong. Lengths are checked by the caller.
    pub fn decode(b: &[u8; PREFIX_LEN]) -> Option<Prefix> {
        if &b[0..8] != MAGIC {
            return None;
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        Some(Prefix {
            version: u32::from_le_bytes(b[8..12].try_into().unwrap()),
            header_len: u64_at(16),
            payload_offset: u64_at(24),
            header_sha256: b[32..64].try_into().unwrap(),
        })
    }
}

/// Payload offset for a header of `header_len` bytes.
pub fn payload_offset(header_len: u64) -> u64 {
    align_up(PREFIX_LEN as u64 + header_len, ALIGN)
}
