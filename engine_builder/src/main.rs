//! kiln-build: turns a Hugging Face Qwen3.5 checkpoint into a kiln engine plan.
//!
//! ```text
//! kiln-build --model DIR [--out engines] [--arch auto|sm_90a|sm_100a] [--name NAME]
//!            [--no-kernels] [--max-context N] [--max-batch N] [--include DIR]...
//! kiln-build --compile-only --arch sm_90a,sm_100a [--model DIR]
//! kiln-build --check-only --model DIR
//! ```
//!
//! A build reads config.json and tokenizer.json, opens and checks every tensor of the
//! checkpoint, compiles the kernels for the GPU's architecture, packs the weights into
//! the kernels' layouts and writes `OUT/NAME.plan` atomically, then reopens it and checks
//! it as the server will. `--compile-only` compiles every kernel for each named
//! architecture (no GPU needed) and reports the cubin sizes. `--check-only` checks a
//! checkpoint as a build would from its config, tokenizer and safetensors headers alone
//! (no tensor data read, nothing written) and prints one line.

mod check;
mod gpu;
mod kernels;
mod qwen3_5_4b;

use anyhow::{bail, Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use kiln::checkpoint::Checkpoint;
use kiln::config::ModelConfig;
use kiln::plan::{plan_packing_as, tokenizer_hash, write_plan, Arch, BuildInfo, DType, Expected, Limits, Plan};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(name = "kiln-build", version, about = "Builds a kiln engine plan from a Hugging Face Qwen3.5 checkpoint")]
struct Args {
    /// Checkpoint folder: config.json, tokenizer.json and the safetensors shards.
    /// With --compile-only, only its config.json is read (default: Qwen3.5-4B's).
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Folder the plan is written to.
    #[arg(long, value_name = "DIR", default_value = "engines")]
    out: PathBuf,
    /// GPU architecture: sm_90a (H100/H200), sm_100a (B200) or auto (ask GPU 0).
    /// With --compile-only, a comma-separated list. Default: auto.
    #[arg(long, value_name = "ARCH")]
    arch: Option<String>,
    /// Plan name: the file is OUT/NAME.plan. Default: <model folder name>.<arch>.
    #[arg(long)]
    name: Option<String>,
    /// Compile every kernel for each --arch and report cubin sizes; write nothing.
    #[arg(long)]
    compile_only: bool,
    /// Check --model as a build would (config, tokenizer, every tensor's name, shape and
    /// dtype, every conversion) from the safetensors headers alone; write nothing.
    #[arg(long, conflicts_with_all = ["compile_only", "no_kernels"])]
    check_only: bool,
    /// Pack the weights without compiling kernels (a plan for the CPU backend and tests).
    #[arg(long, conflicts_with = "compile_only")]
    no_kernels: bool,
    /// Longest sequence (prompt + output) the plan serves. Default: the config's
    /// max_position_embeddings.
    #[arg(long, value_name = "TOKENS")]
    max_context: Option<usize>,
    /// Largest decode batch the plan serves (recorded in the header; the server's
    /// --max-running-requests default is 256).
    #[arg(long, value_name = "N", default_value_t = 256)]
    max_batch: usize,
    /// Folder holding cuda_bf16.h for NVRTC (repeatable). Default: KILN_CUDA_INCLUDE,
    /// CUDA_HOME/include, /usr/local/cuda/include, or the venv of scripts/ci_nvrtc.sh.
    #[arg(long = "include", value_name = "DIR")]
    include: Vec<PathBuf>,
    /// The GEMMs' operand type: bf16 (x split into bf16 hi + lo, two MMAs per product) or
    /// f16 (fp16 weights and inputs, one MMA per product; docs/numerics.md). Kernels and
    /// weights follow it; the plan's header `dtype` records it.
    #[arg(long, value_name = "TYPE", default_value = "bf16", value_parser = ["bf16", "f16"])]
    gemm_operands: String,
}

impl Args {
    fn gemm_f16(&self) -> bool {
        self.gemm_operands == "f16"
    }
    fn gemm_dtype(&self) -> DType {
        if self.gemm_f16() {
            DType::F16
        } else {
            DType::Bf16
        }
    }
}

fn builder_version() -> String {
    format!("kiln-build {} ({})", env!("CARGO_PKG_VERSION"), env!("KILN_BUILD_GIT"))
}

/// Runs one phase and prints how long it took.
fn phase<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let t = Instant::now();
    let out = f()?;
    eprintln!("  {name:<28} {:>8.2} s", t.elapsed().as_secs_f64());
    Ok(out)
}

/// The architecture named, or GPU 0's for `auto`; with `auto` also the driver's CUDA
/// version (the plan's cubins must load there).
fn resolve_arch(s: &str) -> Result<(Arch, Option<(u32, u32)>)> {
    if s.trim() == "auto" {
        let g = gpu::detect()?;
        eprintln!("GPU 0 is {} ({})", g.name, g.arch);
        Ok((g.arch, Some(g.driver_cuda)))
    } else {
        Ok((s.parse()?, None))
    }
}

/// Refuses to compile kernels the local driver could not load (one sentence).
fn check_nvrtc_for_driver(nvrtc: (u32, u32), driver: Option<(u32, u32)>) -> Result<()> {
    if let Some(d) = driver {
        if !kiln::plan::driver_loads_cubins(nvrtc, d) {
            bail!(
                "NVRTC {}.{} makes cubins the NVIDIA driver here (CUDA {}.{}) cannot load; put a CUDA {}.x NVRTC first \
                 on the library path ({}), or upgrade the driver to one for CUDA {}.{}",
                nvrtc.0,
                nvrtc.1,
                d.0,
                d.1,
                d.0,
                kiln::plan::nvrtc_for_driver(d.0),
                nvrtc.0,
                nvrtc.1
            );
        }
    }
    Ok(())
}

fn mib(n: u64) -> f64 {
    n as f64 / (1 << 20) as f64
}

/// The first log line after the version: the driver and its file, or that there is none
/// (fine when --arch names the target).
fn log_driver() {
    match kiln::backend::cuda::libs::require(kiln::backend::cuda::libs::CudaLib::Driver) {
        Ok(l) => eprintln!("{}", l.line()),
        Err(_) => eprintln!("CUDA driver: none found (only --arch auto needs one)"),
    }
}

fn compile_only(args: &Args) -> Result<()> {
    let t0 = Instant::now();
    log_driver();
    let list = args.arch.as_deref().unwrap_or("auto");
    let (nvrtc, nvrtc_line) = kernels::nvrtc()?;
    eprintln!("{nvrtc_line}");
    let mut archs: Vec<Arch> = Vec::new();
    for s in list.split(',').filter(|s| !s.trim().is_empty()) {
        let (arch, driver) = resolve_arch(s)?;
        check_nvrtc_for_driver(nvrtc, driver)?;
        archs.push(arch);
    }
    if archs.is_empty() {
        bail!("--compile-only needs --arch, e.g. --arch sm_90a,sm_100a");
    }
    let (cfg, what) = match &args.model {
        Some(dir) => (ModelConfig::from_file(&dir.join("config.json"))?, format!("{}/config.json", dir.display())),
        None => (qwen3_5_4b::config()?, "Qwen3.5-4B (built in)".to_string()),
    };
    let include = kernels::include_dirs(&args.include);
    eprintln!("compiling the kiln kernels for {what} with NVRTC {}.{}", nvrtc.0, nvrtc.1);
    match include.first() {
        Some(dir) => eprintln!("CUDA headers: {}", dir.display()),
        None => eprintln!("CUDA headers: none found (set KILN_CUDA_INCLUDE or pass --include)"),
    }
    for arch in archs {
        let t = Instant::now();
        let modules = kernels::compile(arch, &cfg, args.gemm_f16(), &include)?;
        let total: usize = modules.iter().map(|m| m.cubin.len()).sum();
        println!("{arch}: {} modules, {total} bytes of cubin, {:.2} s", modules.len(), t.elapsed().as_secs_f64());
        for m in &modules {
            println!("  {:<16} {:>10} bytes", m.name, m.cubin.len());
        }
    }
    eprintln!("done in {:.2} s", t0.elapsed().as_secs_f64());
    Ok(())
}

/// `Qwen3.5-4B` -> `qwen3.5-4b`: the folder name in lower case, anything but
/// [a-z0-9._-] turned into '-'. For a Hugging Face cache snapshot
/// (`models--Qwen--Qwen3.5-4B/snapshots/<commit>`) the repository's name is used.
fn default_name(model: &Path) -> String {
    let path = std::fs::canonicalize(model).unwrap_or_else(|_| model.to_path_buf());
    let comps: Vec<String> = path.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    let n = comps.len();
    let base = match comps.as_slice() {
        [.., repo, snaps, _commit] if snaps == "snapshots" && repo.starts_with("models--") => {
            repo.rsplit("--").next().unwrap_or(repo).to_string()
        }
        _ if n > 0 => comps[n - 1].clone(),
        _ => "model".into(),
    };
    base.to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' })
        .collect()
}

fn build(args: &Args) -> Result<()> {
    let t0 = Instant::now();
    let Some(model) = args.model.as_deref() else {
        bail!("--model DIR is required (the checkpoint folder), unless --compile-only");
    };
    if args.no_kernels && args.arch.is_some() {
        bail!("--no-kernels builds a plan without kernels, so --arch does not apply");
    }
    eprintln!("{}", builder_version());
    if !args.no_kernels {
        log_driver();
    }
    let (arch, nvrtc) = if args.no_kernels {
        (None, None)
    } else {
        let (arch, driver) = resolve_arch(args.arch.as_deref().unwrap_or("auto"))?;
        let (nvrtc, nvrtc_line) = kernels::nvrtc()?;
        eprintln!("{nvrtc_line}");
        check_nvrtc_for_driver(nvrtc, driver)?;
        (Some(arch), Some(nvrtc))
    };
    let name = args.name.clone().unwrap_or_else(|| {
        format!("{}.{}", default_name(model), arch.map_or("nokernels", |a| a.as_str()))
    });
    let path = args.out.join(format!("{name}.plan"));

    let (cfg, tok_hash) = phase("config + tokenizer", || {
        let cfg = ModelConfig::from_file(&model.join("config.json"))?;
        let tok = model.join("tokenizer.json");
        if !tok.is_file() {
            bail!("{} has no tokenizer.json (the plan records its hash, and the server needs it)", model.display());
        }
        Ok((cfg, tokenizer_hash(&tok)?))
    })?;
    let limits = Limits { max_context: args.max_context.unwrap_or(cfg.max_position_embeddings), max_batch: args.max_batch };
    if limits.max_context == 0 || limits.max_batch == 0 {
        bail!("--max-context and --max-batch must be positive");
    }
    let (ck, packing) = phase("open + check checkpoint", || {
        let ck = Checkpoint::open(model)?;
        let packing = plan_packing_as(&ck, &cfg, args.gemm_dtype())?;
        Ok((ck, packing))
    })?;
    let kernels = match arch {
        Some(a) => {
            let include = kernels::include_dirs(&args.include);
            phase(&format!("compile kernels ({a})"), || kernels::compile(a, &cfg, args.gemm_f16(), &include))?
        }
        None => Vec::new(),
    };

    let info = BuildInfo {
        builder_version: builder_version(),
        arch,
        nvrtc_version: nvrtc,
        tokenizer_hash: tok_hash.clone(),
        limits,
        source: format!("{} ({})", model.display(), cfg.model_type),
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("  packing [{bar:32}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}")
            .unwrap()
            .progress_chars("=> "),
    );
    let t_pack = Instant::now();
    let header = phase("pack + write", || {
        write_plan(&path, &ck, &cfg, &packing, &info, &kernels, &mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })
        .with_context(|| format!("writing {}", path.display()))
    })?;
    bar.finish_and_clear();
    let pack_secs = t_pack.elapsed().as_secs_f64();

    phase("verify", || {
        let plan = Plan::open(&path)?;
        let mut want = Expected { arch, ..Expected::default() }.with_model_dir(model)?;
        if arch.is_some() {
            want.kernel_hash = Some(kiln::plan::KERNEL_HASH.to_string());
        }
        plan.check(&want)
    })?;
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {} ({:.1} MiB: {} tensors, {} kernel modules, {} skipped) in {:.2} s; packing ran at {:.0} MiB/s",
        path.display(),
        mib(size),
        header.tensors.len(),
        header.kernels.len(),
        header.skipped.len(),
        t0.elapsed().as_secs_f64(),
        mib(header.payload_len) / pack_secs.max(1e-9)
    );
    Ok(())
}

fn check_only(args: &Args) -> Result<()> {
    let Some(model) = args.model.as_deref() else {
        bail!("--check-only needs --model DIR (the checkpoint folder)");
    };
    let report = check::check(model, args.gemm_dtype())?;
    println!("{}", report.summary(model));
    Ok(())
}

fn main() {
    let args = Args::parse();
    let r = if args.compile_only {
        compile_only(&args)
    } else if args.check_only {
        check_only(&args)
    } else {
        build(&args)
    };
    if let Err(e) = r {
        eprintln!("kiln-build: {e:#}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::default_name;
    use std::path::Path;

    #[test]
    fn default_names() {
        assert_eq!(default_name(Path::new("/nonexistent/Qwen3.5-4B")), "qwen3.5-4b");
        assert_eq!(
            default_name(Path::new("/hf/hub/models--Qwen--Qwen3.5-4B/snapshots/851bf6e806efd8d0a36b00ddf55e13ccb7b8cd0a")),
            "qwen3.5-4b"
        );
        assert_eq!(default_name(Path::new("/m/My Model+v2")), "my-model-v2");
    }
}
