//! Records `git describe` of the tree kiln-build is built from (KILN_BUILD_GIT), for the
//! plan header's builder version. Falls back to "unknown" without git.
use std::process::Command;

fn main() {
    let out = Command::new("git")
        .args(["describe", "--always", "--dirty", "--tags"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty());
    println!("cargo:rustc-env=KILN_BUILD_GIT={}", out.unwrap_or_else(|| "unknown".into()));
    // Re-run when HEAD moves (a commit or checkout); `--dirty` is as of the last build.
    if let Ok(o) = Command::new("git").args(["rev-parse", "--git-dir"]).output() {
        let dir = String::from_utf8_lossy(&o.stdout).trim().to_string();
        if !dir.is_empty() {
            println!("cargo:rerun-if-changed={dir}/HEAD");
            println!("cargo:rerun-if-changed={dir}/refs/heads");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
