//! Packing: checks a checkpoint against its config, decides what goes into the plan
//! (every checkpoint tensor is packed or explicitly skipped), and streams each packed
//! tensor's bytes, converting bf16 / f16 / f32 inputs to each packed tensor's dtype.

use super::format::{DType, Skipped};
use super::layout::{packed_specs, PackedSpec};
use crate::checkpoint::{expected_tensors, Checkpoint};
use crate::config::ModelConfig;
use anyhow::{bail, Context, Result};
use safetensors::Dtype;
use std::collections::BTreeSet;
use std::io::Write;

/// What a checkpoint becomes in a plan.
#[derive(Clone, Debug)]
pub struct Packing {
    pub specs: Vec<PackedSpec>,
    pub skipped: Vec<Skipped>,
    /// The GEMM weights' dtype (the header's `dtype`).
    pub gemm: DType,
}

impl Packing {
    /// Total bytes of packed tensors (without alignment padding).
    pub fn tensor_bytes(&self) -> u64 {
        self.specs.iter().map(PackedSpec::byte_len).sum()
    }
}

/// Whether the checkpoint holds the MTP head (all of it); a partial head is an error.
fn mtp_present(ck: &Checkpoint, cfg: &ModelConfig) -> Result<bool> {
    let mtp: Vec<_> = expected_tensors(cfg).into_iter().filter(|s| s.name.starts_with("mtp.")).collect();
    let missing: Vec<&str> =
        mtp.iter().filter(|s| !ck.tensors.contains_key(&s.name)).map(|s| s.name.as_str()).collect();
    if !missing.is_empty() && missing.len() != mtp.len() {
        bail!("checkpoint {} has a partial MTP head: missing {}", ck.dir.display(), missing.join(", "));
    }
    Ok(missing.is_empty() && cfg.mtp_num_layers > 0)
}

/// Validates `ck` against `cfg` (names, shapes, dtypes) and lists the plan's tensors,
/// GEMM weights in bf16. Errors name the offending tensor: missing, misshaped, of another
/// dtype, unknown, or present but used by no packed tensor.
pub fn plan_packing(ck: &Checkpoint, cfg: &ModelConfig) -> Result<Packing> {
    plan_packing_as(ck, cfg, DType::Bf16)
}

/// `plan_packing` with the GEMM weights in `gemm` (bf16, or f16: docs/numerics.md).
pub fn plan_packing_as(ck: &Checkpoint, cfg: &ModelConfig, gemm: DType) -> Result<Packing> {
    if gemm == DType::F32 {
        bail!("GEMM weights are bf16 or f16, not f32");
    }
    ck.validate(&expected_tensors(cfg))?;
    let mtp = mtp_present(ck, cfg)?;
    let has_lm_head = ck.tensors.contains_key("lm_head.weight");
    let mut skipped = Vec::new();
    if has_lm_head && cfg.tie_word_embeddings {
        skipped.push(Skipped {
            name: "lm_head.weight".into(),
            reason: "tie_word_embeddings is true: the lm_head is embed".into(),
        });
    }
    if !mtp {
        for name in ck.tensors.keys().filter(|n| n.starts_with("mtp.")) {
            skipped.push(Skipped { name: name.clone(), reason: "config has mtp_num_hidden_layers = 0".into() });
        }
    }
    let specs = packed_specs(cfg, has_lm_head && !cfg.tie_word_embeddings, mtp, gemm);

    // Every source has exactly the rows x row width the layout says, and every
    // checkpoint tensor is used exactly once or skipped.
    let mut used = BTreeSet::new();
    for s in &specs {
        let width = s.row_width();
        let mut rows = 0;
        for (src, r) in &s.sources {
            let info = ck.info(src)?;
            let n: usize = info.shape.iter().product();
            if n != r * width {
                bail!(
                    "tensor `{}` has shape {:?}, which does not fit {r} rows of packed tensor `{}` {:?}",
                    info.stored_name,
                    info.shape,
                    s.name,
                    s.shape
                );
            }
            rows += r;
            if !used.insert(src.as_str()) {
                bail!("internal: checkpoint tensor `{src}` is packed twice (into `{}`)", s.name);
            }
        }
        if rows != s.shape[0] {
            bail!("internal: packed tensor `{}` has {} rows, its sources give {rows}", s.name, s.shape[0]);
        }
    }
    let skipped_names: BTreeSet<&str> = skipped.iter().map(|s| s.name.as_str()).collect();
    let unused: Vec<&str> = ck
        .tensors
        .keys()
        .map(String::as_str)
        .filter(|n| !used.contains(n) && !skipped_names.contains(n))
        .collect();
    if !unused.is_empty() {
        bail!(
            "checkpoint {}: tensor{} {} {} not packed into the plan and not skipped",
            ck.dir.display(),
            if unused.len() == 1 { "" } else { "s" },
            unused.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", "),
            if unused.len() == 1 { "is" } else { "are" }
        );
    }
    Ok(Packing { specs, skipped, gemm })
}

/// Elements converted per chunk (bounds the scratch buffer and progress granularity).
const CHUNK_ELEMS: usize = 1 << 21;

/// Largest magnitude an fp16 holds (finite).
const F16_MAX: f32 = 65504.0;

/// The values of `src` (little-endian `dtype`) as f32, exactly.
fn widen(dtype: Dtype, src: &[u8]) -> impl Iterator<Item = f32> + '_ {
    let step = if dtype == Dtype::F32 { 4 } else { 2 };
    src.chunks_exact(step).map(move |c| match dtype {
        Dtype::BF16 => half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32(),
        Dtype::F16 => half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32(),
        _ => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
    })
}

/// Converts `src` (little-endian `dtype` values) to `to` into `out`, through f32 (exact
/// from every input dtype). f32 -> bf16 / f16 rounds to nearest, ties to even (half's
/// `from_f32`); bf16 -> f16 (times 2^scale_log2 first, exactly) is exact for 2^-14 <= |x|
/// <= 65504 and keeps an absolute error <= 2^-25 below (fp16 subnormals). A value an fp16
/// cannot hold (|x| > 65504, inf, NaN) is an error naming the tensor. Only fp16 targets take
/// a scale.
fn convert(name: &str, dtype: Dtype, src: &[u8], to: DType, scale_log2: i32, out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    debug_assert!(scale_log2 == 0 || to == DType::F16, "only fp16 tensors are stored scaled");
    let scale = 2f32.powi(scale_log2);
    for w in widen(dtype, src) {
        match to {
            DType::F32 => out.extend_from_slice(&w.to_le_bytes()),
            DType::Bf16 => out.extend_from_slice(&half::bf16::from_f32(w).to_bits().to_le_bytes()),
            DType::F16 => {
                let x = w * scale;
                if !(x.abs() <= F16_MAX) {
                    bail!(
                        "tensor `{name}` holds {w}, which an fp16 GEMM weight cannot (|x| <= {F16_MAX} after a scale of 2^{scale_log2}): build the plan with bf16 GEMM weights"
                    );
                }
                out.extend_from_slice(&half::f16::from_f32(x).to_bits().to_le_bytes());
            }
        }
    }
    Ok(())
}

/// Streams one packed tensor into `out`; `progress` gets the bytes of each write.
/// Returns the bytes written (always `spec.byte_len()`).
pub fn write_packed(
    ck: &Checkpoint,
    spec: &PackedSpec,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64),
) -> Result<u64> {
    let mut written = 0u64;
    let mut buf = Vec::new();
    for (src, _) in &spec.sources {
        let info = ck.info(src)?;
        let bytes = ck.bytes(src)?;
        let esize = match info.dtype {
            Dtype::BF16 | Dtype::F16 => 2,
            Dtype::F32 => 4,
            other => bail!("tensor `{}`: dtype {other:?} is not supported", info.stored_name),
        };
        let n = bytes.len() / esize;
        // Stored as packed: the bytes as they are.
        let direct = spec.scale_log2 == 0
            && matches!((info.dtype, spec.dtype), (Dtype::BF16, DType::Bf16) | (Dtype::F16, DType::F16) | (Dtype::F32, DType::F32));
        for start in (0..n).step_by(CHUNK_ELEMS) {
            let m = CHUNK_ELEMS.min(n - start);
            let chunk = &bytes[start * esize..(start + m) * esize];
            let data: &[u8] = if direct {
                chunk
            } else {
                convert(&info.stored_name, info.dtype, chunk, spec.dtype, spec.scale_log2, &mut buf)?;
                &buf
            };
            out.write_all(data).with_context(|| format!("writing packed tensor `{}`", spec.name))?;
            written += data.len() as u64;
            progress(data.len() as u64);
        }
    }
    debug_assert_eq!(written, spec.byte_len());
    Ok(written)
}
