//! Engine plans: the one file `kiln-build` writes and the server loads.
//!
//! A plan holds a strict, versioned JSON header (what it was built for and where every
//! blob lies) and a payload of compiled CUDA modules and packed weights, each 256-byte
//! aligned so the loader maps the file and uploads it in one pass. The byte layout is
//! in [`format`], the packed tensor layouts in [`layout`], and `docs/plan.md` explains
//! both.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use kiln::plan::{Arch, Expected, Plan};
//! let plan = Plan::open("engines/qwen3_5-4b.sm_90a.plan".as_ref())?;
//! plan.check(&Expected::for_gpu(Arch::Sm90a).with_model_dir("/models/Qwen3.5-4B".as_ref())?)?;
//! let weights: &[u8] = plan.weights(); // one host-to-device copy
//! # Ok(()) }
//! ```

pub mod arch;
pub mod check;
pub mod file;
pub mod format;
pub mod ident;
pub mod layout;
pub mod pack;
pub mod write;

pub use arch::Arch;
pub use check::{driver_loads_cubins, nvrtc_for_driver, Expected};
pub use file::{Plan, TensorRef};
pub use format::{
    DType, KernelEntry, Limits, PlanHeader, Skipped, TensorEntry, TensorPart, ALIGN, FORMAT_VERSION, KERNEL_HASH, MAGIC,
};
pub use ident::{config_hash, tokenizer_hash};
pub use layout::{names, packed_specs, PackedSpec};
pub use pack::{plan_packing, plan_packing_as, Packing};
pub use write::{make_header, write_plan, BuildInfo, KernelImage};
