//! The GPU architectures a plan's kernels are compiled for.

use anyhow::{bail, Result};
use std::fmt;
use std::str::FromStr;

/// A CUDA target with architecture-specific features (`a` suffix): a cubin built for
/// one runs on that compute capability only, so a plan is tied to one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arch {
    /// Hopper: H100, H200 (compute capability 9.0).
    Sm90a,
    /// Blackwell datacenter: B200 (compute capability 10.0).
    Sm100a,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::Sm90a, Arch::Sm100a];

    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Sm90a => "sm_90a",
            Arch::Sm100a => "sm_100a",
        }
    }

    /// The architecture of a GPU of compute capability `major.minor`, or a sentence
    /// saying that kiln does not build for it.
    pub fn from_compute_capability(major: i32, minor: i32) -> Result<Arch> {
        match (major, minor) {
            (9, 0) => Ok(Arch::Sm90a),
            (10, 0) => Ok(Arch::Sm100a),
            _ => bail!(
                "this GPU has compute capability {major}.{minor}, but kiln builds kernels only for \
                 sm_90a (compute capability 9.0: H100, H200) and sm_100a (10.0: B200)"
            ),
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Arch {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Arch> {
        match s.trim() {
            "sm_90a" | "sm90a" => Ok(Arch::Sm90a),
            "sm_100a" | "sm100a" => Ok(Arch::Sm100a),
            other => bail!("unknown GPU architecture `{other}` (expected sm_90a or sm_100a)"),
        }
    }
}

impl serde::Serialize for Arch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Arch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
