//! A checkpoint's fingerprint: what a plan records of the weights it was packed from, so
//! a plan is never served for another checkpoint (two fine-tunes in folders of the same
//! name, or a checkpoint updated in place). Per shard: its file name, size, the SHA-256 of
//! its safetensors header (names, dtypes, shapes, offsets), and the SHA-256 of fixed
//! samples of every tensor's bytes (first, middle and last 32 bytes). Milliseconds even
//! for the 4B model: a few pages per tensor, never the whole file.

use super::Checkpoint;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bytes per sample; three samples per tensor.
const SAMPLE: usize = 32;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPrint {
    /// File name inside the checkpoint folder.
    pub file: String,
    pub size: u64,
    pub header_sha256: String,
    pub samples_sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// SHA-256 over every shard's record: equal digests mean the same checkpoint.
    pub digest: String,
    pub shards: Vec<ShardPrint>,
}

/// The sampled byte ranges of a tensor occupying `[start, end)`.
fn sample_ranges(start: usize, end: usize) -> [(usize, usize); 3] {
    let len = end - start;
    let n = len.min(SAMPLE);
    let mid = start + (len / 2).min(len - n);
    [(start, start + n), (mid, mid + n), (end - n, end)]
}

impl Checkpoint {
    /// The fingerprint of this checkpoint's files (see the module doc).
    pub fn fingerprint(&self) -> Fingerprint {
        let mut shards = Vec::with_capacity(self.shards.len());
        for (i, map) in self.shards.iter().enumerate() {
            let header_len = map.get(..8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()) as usize);
            let header = map.get(8..8 + header_len).unwrap_or(&[]);
            let mut ranges: Vec<(usize, usize)> =
                self.tensors.values().filter(|t| t.shard == i).flat_map(|t| sample_ranges(t.start, t.end)).collect();
            ranges.sort_unstable();
            let mut h = Sha256::new();
            for (a, b) in ranges {
                h.update(&map[a..b]);
            }
            let file = self.shard_paths[i].file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            shards.push(ShardPrint {
                file,
                size: map.len() as u64,
                header_sha256: hex::encode(Sha256::digest(header)),
                samples_sha256: hex::encode(h.finalize()),
            });
        }
        let mut h = Sha256::new();
        for s in &shards {
            h.update(format!("{}\0{}\0{}\0{}\n", s.file, s.size, s.header_sha256, s.samples_sha256));
        }
        Fingerprint { digest: hex::encode(h.finalize()), shards }
    }
}

impl Fingerprint {
    /// What differs from `other` (the checkpoint on disk), in words, for a refusal.
    pub fn difference(&self, other: &Fingerprint) -> String {
        let names = |f: &Fingerprint| f.shards.iter().map(|s| s.file.as_str()).collect::<Vec<_>>().join(", ");
        if names(self) != names(other) {
            return format!("its shards are {} but the plan's were {}", names(other), names(self));
        }
        for (mine, theirs) in self.shards.iter().zip(&other.shards) {
            if mine.size != theirs.size {
                return format!("{} is {} bytes but was {} bytes", theirs.file, theirs.size, mine.size);
            }
            if mine.header_sha256 != theirs.header_sha256 {
                return format!("{} lists other tensors (its safetensors header differs)", theirs.file);
            }
            if mine.samples_sha256 != theirs.samples_sha256 {
                return format!("{} holds other weights (same tensors, other bytes)", theirs.file);
            }
        }
        "its fingerprint differs".into()
    }
}
