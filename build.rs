//! Hashes the CUDA kernel sources into KILN_KERNEL_HASH, so a plan built from other
//! kernel sources is refused by the server.
use sha2::{Digest, Sha256};
use std::path::Path;

fn main() {
    let dir = Path::new("kernels");
    println!("cargo:rerun-if-changed=kernels");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        if let Ok(bytes) = std::fs::read(&f) {
            h.update(f.file_name().unwrap().to_string_lossy().as_bytes());
            h.update(&bytes);
        }
    }
    println!("cargo:rustc-env=KILN_KERNEL_HASH={}", hex::encode(h.finalize()));
}
