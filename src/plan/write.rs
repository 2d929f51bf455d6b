//! Writing a plan file: lays out the payload, writes prefix, header, cubins and packed
//! tensors to a temporary file next to the target, syncs it, and renames it into place,
//! so a reader never sees a half-written plan under the final name.

use super::arch::Arch;
use super::format::{
    align_up, payload_offset, DType, KernelEntry, Limits, PlanHeader, Prefix, TensorEntry, TensorPart, ALIGN,
    FORMAT_VERSION, KERNEL_HASH,
};
use super::ident::{config_hash, sha256_hex};
use super::pack::{write_packed, Packing};
use crate::checkpoint::{Checkpoint, Fingerprint};
use crate::config::ModelConfig;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Everything the header records that the checkpoint does not give.
#[derive(Clone, Debug)]
pub struct BuildInfo {
    pub builder_version: String,
    /// Kernel target; None with no kernels.
    pub arch: Option<Arch>,
    /// The NVRTC that compiled the kernels; None with no kernels.
    pub nvrtc_version: Option<(u32, u32)>,
    pub tokenizer_hash: String,
    pub limits: Limits,
    pub source: String,
}

/// A compiled CUDA module to store.
#[derive(Clone, Debug)]
pub struct KernelImage {
    pub name: String,
    pub cubin: Vec<u8>,
}

/// Lays out the payload and returns the header (without touching the disk).
pub fn make_header(
    cfg: &ModelConfig,
    packing: &Packing,
    info: &BuildInfo,
    kernels: &[KernelImage],
    checkpoint: Fingerprint,
) -> Result<PlanHeader> {
    if kernels.is_empty() != info.arch.is_none() || info.arch.is_none() != info.nvrtc_version.is_none() {
        bail!("internal: a plan has kernels exactly when it has an arch and an NVRTC version");
    }
    let mut pos = 0u64;
    let mut kentries = Vec::with_capacity(kernels.len());
    for k in kernels {
        if kentries.iter().any(|e: &KernelEntry| e.name == k.name) {
            bail!("kernel module `{}` appears twice", k.name);
        }
        kentries.push(KernelEntry {
            name: k.name.clone(),
            offset: pos,
            len: k.cubin.len() as u64,
            sha256: sha256_hex(&k.cubin),
        });
        pos = align_up(pos + k.cubin.len() as u64, ALIGN);
    }
    let weights_offset = pos;
    let mut tentries = Vec::with_capacity(packing.specs.len());
    for s in &packing.specs {
        let mut row = 0;
        let parts = s
            .sources
            .iter()
            .map(|(src, rows)| {
                let p = TensorPart { source: src.clone(), row, rows: *rows };
                row += rows;
                p
            })
            .collect();
        let len = s.byte_len();
        tentries.push(TensorEntry {
            name: s.name.clone(),
            dtype: s.dtype,
            scale_log2: s.scale_log2,
            shape: s.shape.clone(),
            offset: pos,
            len,
            parts,
        });
        pos = align_up(pos + len, ALIGN);
    }
    let created_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(PlanHeader {
        format_version: FORMAT_VERSION,
        builder_version: info.builder_version.clone(),
        kernel_hash: KERNEL_HASH.to_string(),
        arch: info.arch,
        nvrtc_version: info.nvrtc_version,
        model_config_hash: config_hash(cfg),
        model_config: serde_json::to_value(cfg).context("serializing ModelConfig")?,
        tokenizer_hash: info.tokenizer_hash.clone(),
        checkpoint,
        dtype: match packing.gemm {
            DType::F16 => "f16",
            _ => "bf16",
        }
        .to_string(),
        limits: info.limits.clone(),
        source: info.source.clone(),
        created_unix,
        payload_len: pos,
        weights_offset,
        weights_len: pos - weights_offset,
        kernels: kentries,
        tensors: tentries,
        skipped: packing.skipped.clone(),
    })
}

/// Removes the temporary file unless the write completed.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

struct Counting<W: Write> {
    inner: W,
    pos: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn pad_to<W: Write>(w: &mut Counting<W>, target: u64) -> Result<()> {
    if w.pos > target {
        bail!("internal: plan writer at byte {} passed offset {target}", w.pos);
    }
    let zeros = [0u8; ALIGN as usize];
    while w.pos < target {
        let n = (target - w.pos).min(ALIGN) as usize;
        w.write_all(&zeros[..n])?;
    }
    Ok(())
}

/// Writes the plan atomically to `path`. `progress(done, total)` reports payload bytes.
/// Returns the header written.
pub fn write_plan(
    path: &Path,
    ck: &Checkpoint,
    cfg: &ModelConfig,
    packing: &Packing,
    info: &BuildInfo,
    kernels: &[KernelImage],
    progress: &mut dyn FnMut(u64, u64),
) -> Result<PlanHeader> {
    let header = make_header(cfg, packing, info, kernels, ck.fingerprint())?;
    let json = serde_json::to_vec(&header).context("serializing the plan header")?;
    let prefix = Prefix {
        version: FORMAT_VERSION,
        header_len: json.len() as u64,
        payload_offset: payload_offset(json.len() as u64),
        header_sha256: Sha256::digest(&json).into(),
    };

    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let file_name = path.file_name().with_context(|| format!("{}: not a file path", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp-{}", file_name.to_string_lossy(), std::process::id()));
    let file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut guard = TempGuard(Some(tmp.clone()));
    let mut w = Counting { inner: BufWriter::with_capacity(16 << 20, file), pos: 0 };

    let total = header.payload_len;
    let mut done = 0u64;
    let io = |e: std::io::Error| anyhow::Error::new(e).context(format!("writing {}", tmp.display()));
    w.write_all(&prefix.encode()).map_err(io)?;
    w.write_all(&json).map_err(io)?;
    pad_to(&mut w, prefix.payload_offset)?;
    let base = prefix.payload_offset;
    for (k, e) in kernels.iter().zip(&header.kernels) {
        pad_to(&mut w, base + e.offset)?;
        w.write_all(&k.cubin).map_err(io)?;
        done += k.cubin.len() as u64;
        progress(done, total);
    }
    for (s, e) in packing.specs.iter().zip(&header.tensors) {
        pad_to(&mut w, base + e.offset)?;
        let n = write_packed(ck, s, &mut w, &mut |n| {
            done += n;
            progress(done, total);
        })?;
        if n != e.len {
            bail!("internal: packed tensor `{}` wrote {n} bytes, expected {}", s.name, e.len);
        }
    }
    pad_to(&mut w, base + total)?;
    progress(total, total);
    let file = w
        .inner
        .into_inner()
        .map_err(|e| anyhow::Error::new(e.into_error()).context(format!("writing {}", tmp.display())))?;
    file.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
    drop(file);
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    guard.0 = None;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(header)
}
