//! Reading a plan: maps the file, checks its structure (magic, version, header hash,
//! length, every blob in bounds and aligned, cubin hashes), and hands out byte slices
//! of the mapping. No tensor is converted or copied here.

use super::check::Expected;
use super::format::{
    payload_offset, DType, KernelEntry, PlanHeader, Prefix, TensorEntry, ALIGN, FORMAT_VERSION, PREFIX_LEN,
};
use super::ident::{config_from_header, sha256_hex};
use crate::config::ModelConfig;
use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// An opened plan file.
pub struct Plan {
    pub path: PathBuf,
    pub header: PlanHeader,
    mmap: Mmap,
    payload_offset: usize,
    tensor_index: HashMap<String, usize>,
}

/// A packed tensor in the mapped file.
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    pub entry: &'a TensorEntry,
    /// Little-endian bytes, `entry.len` long, 256-byte aligned in the file.
    pub bytes: &'a [u8],
}

impl TensorRef<'_> {
    /// The weights as f32 (bf16 and f16 widened exactly, a stored scale undone exactly).
    /// For tests and the CPU backend.
    pub fn to_f32(&self) -> Vec<f32> {
        let v = self.stored_f32();
        match self.entry.scale_log2 {
            0 => v,
            s => v.into_iter().map(|x| x * 2f32.powi(-s)).collect(),
        }
    }

    /// The stored values as f32, as the kernels read them.
    pub fn stored_f32(&self) -> Vec<f32> {
        match self.entry.dtype {
            DType::Bf16 => self
                .bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
            DType::F16 => self
                .bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
            DType::F32 => self.bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        }
    }
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{} is damaged or truncated: {what}; rebuild it with kiln-build", path.display())
}

/// Checks one blob's range against the payload: in bounds, aligned, not overlapping
/// the previous blob (blobs are stored in increasing offset order).
fn check_blob(path: &Path, kind: &str, name: &str, offset: u64, len: u64, end_prev: &mut u64, payload: u64) -> Result<()> {
    if !offset.is_multiple_of(ALIGN) {
        return Err(corrupt(path, format!("{kind} `{name}` starts at payload offset {offset}, not a multiple of {ALIGN}")));
    }
    if offset < *end_prev {
        return Err(corrupt(path, format!("{kind} `{name}` at offset {offset} overlaps the blob before it")));
    }
    let end = offset.checked_add(len).filter(|e| *e <= payload);
    let Some(end) = end else {
        return Err(corrupt(path, format!("{kind} `{name}` ({len} bytes at {offset}) runs past the payload ({payload} bytes)")));
    };
    *end_prev = end;
    Ok(())
}

impl Plan {
    /// Maps and parses `path`. Refuses a file that is not a plan, of another format
    /// version, or whose structure is damaged; does not check that it fits this server
    /// (see [`Plan::check`]).
    pub fn open(path: &Path) -> Result<Plan> {
        let file = std::fs::File::open(path).with_context(|| format!("opening plan {}", path.display()))?;
        // SAFETY: mapped read-only; a plan rewritten in place while mapped is outside
        // what we support (kiln-build replaces plans by rename, which keeps our inode).
        let mmap = unsafe { Mmap::map(&file) }.with_context(|| format!("mapping plan {}", path.display()))?;
        // Plans are read front to back once (upload): read ahead aggressively.
        #[cfg(unix)]
        let _ = mmap.advise(memmap2::Advice::Sequential);
        let file_len = mmap.len() as u64;
        if mmap.len() < PREFIX_LEN {
            if mmap.len() >= 8 && &mmap[..8] == super::format::MAGIC {
                return Err(corrupt(path, format!("the file is only {file_len} bytes")));
            }
            bail!("{} is not a kiln plan (it is {file_len} bytes, too short to be one)", path.display());
        }
        let Some(prefix) = Prefix::decode(mmap[..PREFIX_LEN].try_into().unwrap()) else {
            bail!("{} is not a kiln plan (it does not start with KILNPLAN)", path.display());
        };
        if prefix.version != FORMAT_VERSION {
            bail!(
                "{} has plan format version {} but this kiln reads version {FORMAT_VERSION}; rebuild it with kiln-build",
                path.display(),
                prefix.version
            );
        }
        let header_end = (PREFIX_LEN as u64).checked_add(prefix.header_len).filter(|e| *e <= file_len);
        let Some(header_end) = header_end else {
            return Err(corrupt(path, format!("its header ({} bytes) runs past the end of the file ({file_len} bytes)", prefix.header_len)));
        };
        let json = &mmap[PREFIX_LEN..header_end as usize];
        if <[u8; 32]>::from(Sha256::digest(json)) != prefix.header_sha256 {
            return Err(corrupt(path, "its header does not match the header checksum"));
        }
        if prefix.payload_offset != payload_offset(prefix.header_len) {
            return Err(corrupt(path, format!("payload offset {} is not where the header ends", prefix.payload_offset)));
        }
        let header: PlanHeader = serde_json::from_slice(json).map_err(|e| corrupt(path, format!("its header is not valid: {e}")))?;
        if header.format_version != prefix.version {
            return Err(corrupt(path, "the header's format version differs from the prefix's"));
        }
        let expected_len = prefix.payload_offset.checked_add(header.payload_len);
        if expected_len != Some(file_len) {
            return Err(corrupt(
                path,
                format!(
                    "the file is {file_len} bytes but its header describes {} bytes",
                    prefix.payload_offset.saturating_add(header.payload_len)
                ),
            ));
        }

        let payload = header.payload_len;
        let mut end_prev = 0u64;
        let mut seen = HashSet::new();
        for k in &header.kernels {
            check_blob(path, "kernel module", &k.name, k.offset, k.len, &mut end_prev, payload)?;
            if !seen.insert(("k", k.name.as_str())) {
                return Err(corrupt(path, format!("kernel module `{}` is listed twice", k.name)));
            }
        }
        let wend = header.weights_offset.checked_add(header.weights_len);
        if header.weights_offset < end_prev || wend.is_none_or(|e| e > payload) {
            return Err(corrupt(path, "the weights region overlaps the kernels or runs past the payload"));
        }
        end_prev = header.weights_offset;
        let mut tensor_index = HashMap::with_capacity(header.tensors.len());
        for (i, t) in header.tensors.iter().enumerate() {
            check_blob(path, "tensor", &t.name, t.offset, t.len, &mut end_prev, payload)?;
            let elems = t.shape.iter().try_fold(1usize, |a, d| a.checked_mul(*d));
            if elems.and_then(|n| n.checked_mul(t.dtype.size())) != Some(t.len as usize) {
                return Err(corrupt(path, format!("tensor `{}` has shape {:?} but {} bytes", t.name, t.shape, t.len)));
            }
            if tensor_index.insert(t.name.clone(), i).is_some() {
                return Err(corrupt(path, format!("tensor `{}` is listed twice", t.name)));
            }
        }
        if end_prev > wend.unwrap_or(0) {
            return Err(corrupt(path, "a tensor lies outside the weights region"));
        }

        let plan = Plan { path: path.to_path_buf(), header, mmap, payload_offset: prefix.payload_offset as usize, tensor_index };
        // Cubins are small: verify them now so a damaged one is reported here, not as
        // an obscure module-load failure.
        for k in &plan.header.kernels {
            if sha256_hex(plan.kernel_bytes(k)) != k.sha256 {
                return Err(corrupt(path, format!("kernel module `{}` does not match its checksum", k.name)));
            }
        }
        Ok(plan)
    }

    /// Refuses a plan that does not fit `want`, in one sentence naming this file.
    pub fn check(&self, want: &Expected) -> Result<()> {
        self.header.check_named(&self.path.display().to_string(), want)
    }

    /// The model config the plan was built for.
    pub fn model_config(&self) -> Result<ModelConfig> {
        config_from_header(&self.header.model_config, &self.header.model_config_hash)
            .with_context(|| format!("reading {}", self.path.display()))
    }

    /// The whole payload: every offset in the header indexes into it. Its start is
    /// 256-byte aligned in the file (and so in the mapping).
    pub fn payload(&self) -> &[u8] {
        &self.mmap[self.payload_offset..]
    }

    /// Asks the kernel to start reading the weights region into the page cache now
    /// (MADV_WILLNEED), so a later one-pass upload overlaps disk reads with other
    /// start-up work (creating the CUDA context, allocating pools). Advisory only.
    pub fn prefetch_weights(&self) {
        let start = self.payload_offset + self.header.weights_offset as usize;
        #[cfg(unix)]
        let _ = self.mmap.advise_range(memmap2::Advice::WillNeed, start, self.header.weights_len as usize);
    }

    /// The contiguous region holding every tensor (upload it in one copy; a tensor's
    /// place in it is `entry.offset - header.weights_offset`).
    pub fn weights(&self) -> &[u8] {
        let o = self.header.weights_offset as usize;
        &self.payload()[o..o + self.header.weights_len as usize]
    }

    pub fn tensor(&self, name: &str) -> Result<TensorRef<'_>> {
        let i = *self
            .tensor_index
            .get(name)
            .with_context(|| format!("plan {}: no tensor `{name}`", self.path.display()))?;
        let entry = &self.header.tensors[i];
        let o = entry.offset as usize;
        Ok(TensorRef { entry, bytes: &self.payload()[o..o + entry.len as usize] })
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensor_index.contains_key(name)
    }

    fn kernel_bytes(&self, k: &KernelEntry) -> &[u8] {
        &self.payload()[k.offset as usize..(k.offset + k.len) as usize]
    }

    /// A compiled module's cubin by name.
    pub fn kernel(&self, name: &str) -> Result<&[u8]> {
        let k = self
            .header
            .kernels
            .iter()
            .find(|k| k.name == name)
            .with_context(|| format!("plan {}: no kernel module `{name}`", self.path.display()))?;
        Ok(self.kernel_bytes(k))
    }
}
