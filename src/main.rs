//! The `kiln` command: `kiln serve` (the HTTP server, SGLang launch flags), `kiln generate`
//! (direct greedy generation on the CPU backend, plain or speculative) and `kiln probe`
//! (the driver, GPUs and CUDA libraries, asked through the CUDA driver; launch_server.sh
//! decides with it).

use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use kiln::backend::cpu::CpuBackend;
use kiln::backend::{Backend, Capacity};
use kiln::config::ModelConfig;
use kiln::scheduler::{self, SchedulePolicy, SchedulerConfig};
use kiln::server::{self, AppState, SamplingDefaults, ServerConfig};
use kiln::tokenizer::Tokenizer;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "kiln", version, about = "Qwen3.5 inference engine and SGLang-compatible HTTP server")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)]
enum Cmd {
    /// Serve the SGLang native and OpenAI-compatible HTTP API.
    Serve(ServeArgs),
    /// Greedy-generate a continuation of a prompt on the CPU backend and print it.
    Generate(GenerateArgs),
    /// Report the NVIDIA driver, the GPUs and the CUDA libraries kiln would load. Exit 0
    /// when GPU 0 can serve (driver, a supported GPU, cuBLASLt), 1 (with one sentence) when
    /// not, 2 when --plan does not fit.
    Probe(ProbeArgs),
}

#[derive(Args, Debug)]
struct ProbeArgs {
    /// Also check this engine plan against the GPU, the driver and --model-path.
    #[arg(long)]
    plan: Option<PathBuf>,
    /// The checkpoint folder the plan must have been built from.
    #[arg(long = "model-path", alias = "model")]
    model_path: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum BackendKind {
    /// The demo model without --model-path; with it, the cuda backend (a usable GPU and
    /// --plan are required: never the demo model in its place).
    Auto,
    Cuda,
    /// The f32 CPU backend on --model-path (slow; for small checkpoints).
    Cpu,
    /// The embedded demo model.
    Demo,
}

#[derive(Args, Debug, serde::Serialize)]
#[command(infer_long_args = true)]
struct ServeArgs {
    /// Hugging Face checkpoint folder.
    #[arg(long = "model-path", alias = "model")]
    model_path: Option<PathBuf>,
    #[arg(long)]
    tokenizer_path: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 30000)]
    port: u16,
    /// Longest sequence (prompt + output).
    #[arg(long)]
    context_length: Option<usize>,
    #[arg(long)]
    max_running_requests: Option<usize>,
    /// Largest decode batch replayed as a CUDA graph (default: every running request).
    #[arg(long)]
    cuda_graph_max_bs: Option<usize>,
    /// Tokens per scheduler step (prefill chunks share what decode leaves).
    #[arg(long)]
    chunked_prefill_size: Option<usize>,
    /// Which prefills take a step's budget first: `shortest-prefill` (fewest prompt
    /// tokens left, aged by waiting) or `fcfs` (admission order).
    #[arg(long, default_value = "shortest-prefill")]
    schedule_policy: String,
    /// Requests that may wait; beyond, 503 with Retry-After.
    #[arg(long, default_value_t = 4096)]
    max_queued_requests: usize,
    #[arg(long)]
    mem_fraction_static: Option<f64>,
    #[arg(long)]
    served_model_name: Option<String>,
    #[serde(skip)]
    #[arg(long)]
    api_key: Option<String>,
    #[arg(long, alias = "tensor-parallel-size", default_value_t = 1)]
    tp_size: usize,
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendKind,
    /// Engine plan for the cuda backend.
    #[arg(long)]
    plan: Option<PathBuf>,
    /// Seconds in-flight requests may run after SIGTERM before they are aborted (the
    /// process exits at most a few seconds later; queued requests get 503 at once).
    #[arg(long, default_value_t = 20)]
    shutdown_grace_secs: u64,
    /// Largest request body in MiB (413 beyond).
    #[arg(long, default_value_t = 32)]
    max_request_mib: usize,
    /// Seconds a client may take to send a request body (408 after).
    #[arg(long, default_value_t = 60)]
    body_read_timeout_secs: u64,
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Split chat output into reasoning_content / content at `</think>` (qwen3, ...).
    #[arg(long)]
    reasoning_parser: Option<String>,
    /// Parse tool calls in chat output into `tool_calls` (`qwen3_coder`, Qwen3.5's format;
    /// `none` returns the model's text as is).
    #[arg(long, default_value = "qwen3_coder")]
    tool_call_parser: String,
    /// A Jinja chat template file to use instead of the model's.
    #[arg(long)]
    chat_template: Option<PathBuf>,
    #[arg(long)]
    skip_server_warmup: bool,
    /// Turn the prefix cache off (it is on by default, as in SGLang).
    #[arg(long)]
    disable_radix_cache: bool,
    /// Tokens to the first cached state (and first prefill chunk) of a prompt; later
    /// cache points double up to the step budget.
    #[arg(long, default_value_t = 256)]
    mamba_track_interval: usize,
    /// OpenAI usage reports `prompt_tokens_details.cached_tokens`.
    #[arg(long)]
    enable_cache_report: bool,
    #[command(flatten)]
    #[serde(flatten)]
    speculative: SpecArgs,
}

/// SGLang's speculative-decoding flags (MTP), shared by `serve` and `generate`.
#[derive(Args, Debug, Clone, serde::Serialize)]
struct SpecArgs {
    /// Speculative decoding with the model's MTP head: NEXTN (EAGLE runs the same way for
    /// Qwen3.5), none, or kiln's auto (serve on the cuda backend: on when a start-up trial
    /// measures it faster at concurrency 1 with exactly plain decoding's tokens;
    /// launch_server.sh passes it when no algorithm is given).
    #[arg(long)]
    speculative_algorithm: Option<String>,
    /// Chained MTP draft steps per cycle (default 3).
    #[arg(long)]
    speculative_num_steps: Option<usize>,
    /// Draft chains per sequence: only 1.
    #[arg(long)]
    speculative_eagle_topk: Option<usize>,
    /// Tokens verified per cycle: only --speculative-num-steps + 1.
    #[arg(long)]
    speculative_num_draft_tokens: Option<usize>,
    /// kiln: when to speculate: auto (per step, from measured costs) or always.
    #[arg(long, value_enum, default_value = "auto")]
    speculative_policy: SpecPolicyArg,
    /// kiln: drafts are argmaxes over the first N token ids only (the draft's lm_head then
    /// reads N rows of the table; verification keeps the output exact). Unset: all.
    #[arg(long)]
    speculative_draft_vocab: Option<usize>,
    /// kiln: the table drafts take their logits from: int8 (a copy of the lm_head made at
    /// start-up, half the bytes per draft step; the default), int4 (a scale per 128
    /// weights, 0.53 bytes a weight) or bf16 (the lm_head itself). Verification keeps the
    /// output identical either way. Unset: env KILN_DRAFT_HEAD.
    #[arg(long, value_enum)]
    speculative_draft_head: Option<DraftHeadArg>,
}

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum DraftHeadArg {
    Int8,
    Int4,
    Bf16,
}

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
enum SpecPolicyArg {
    Auto,
    Always,
}

impl SpecArgs {
    /// `--speculative-algorithm auto`: NEXTN's settings, kept only if the trial says so.
    fn is_auto(&self) -> bool {
        self.speculative_algorithm.as_deref().is_some_and(|a| a.eq_ignore_ascii_case("auto"))
    }

    fn resolve(&self) -> Result<Option<scheduler::SpecConfig>> {
        let policy = match self.speculative_policy {
            SpecPolicyArg::Auto => scheduler::SpecPolicy::Auto,
            SpecPolicyArg::Always => scheduler::SpecPolicy::Always,
        };
        scheduler::speculative::resolve(
            if self.is_auto() { Some("NEXTN") } else { self.speculative_algorithm.as_deref() },
            self.speculative_num_steps,
            self.speculative_eagle_topk,
            self.speculative_num_draft_tokens,
            policy,
        )
        .map_err(anyhow::Error::msg)?
        .map(|c| match self.speculative_draft_vocab {
            Some(0) => anyhow::bail!("--speculative-draft-vocab must be at least 1"),
            d => Ok(scheduler::SpecConfig { draft_vocab: d, ..c }),
        })
        .transpose()
    }
}

#[derive(Args, Debug)]
struct GenerateArgs {
    /// Checkpoint folder; without it, the embedded demo model.
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Render the prompt as one user message with the chat template.
    #[arg(long)]
    chat: bool,
    #[command(flatten)]
    speculative: SpecArgs,
}

/// SGLang flags we do not implement are accepted with a warning (SGLang itself would
/// exit): drops `--flag`, `--flag=value` and `--flag value` for unknown flags. Known
/// flags may be abbreviated to a unique prefix, as with argparse.
fn lenient(argv: Vec<String>) -> (Vec<String>, Vec<String>) {
    if argv.get(1).map(String::as_str) != Some("serve") {
        return (argv, vec![]);
    }
    let cmd = Cli::command();
    let serve = cmd.find_subcommand("serve").expect("serve subcommand");
    let known: Vec<String> = serve
        .get_arguments()
        .flat_map(|a| a.get_long_and_visible_aliases().unwrap_or_default().into_iter().chain(a.get_all_aliases().unwrap_or_default()))
        .map(str::to_string)
        .chain(["help".to_string(), "version".to_string()])
        .collect();
    let mut out = argv[..2].to_vec();
    let mut ignored = vec![];
    let mut i = 2;
    while i < argv.len() {
        let a = &argv[i];
        i += 1;
        let Some(name) = a.strip_prefix("--") else {
            out.push(a.clone());
            continue;
        };
        let name = name.split('=').next().unwrap_or("");
        if known.iter().any(|k| k.starts_with(name)) && !name.is_empty() {
            out.push(a.clone());
            continue;
        }
        let mut dropped = a.clone();
        if !a.contains('=') && i < argv.len() && !argv[i].starts_with("--") {
            dropped = format!("{a} {}", argv[i]);
            i += 1;
        }
        ignored.push(dropped);
    }
    (out, ignored)
}

fn main() {
    let (argv, ignored) = lenient(std::env::args().collect());
    let cli = Cli::parse_from(argv);
    let r = match cli.cmd {
        Cmd::Serve(a) => serve(a, &ignored),
        Cmd::Generate(a) => generate(a),
        Cmd::Probe(a) => match probe(&a) {
            Ok(code) => std::process::exit(code),
            Err(e) => Err(e),
        },
    };
    if let Err(e) = r {
        eprintln!("kiln: error: {e:#}");
        std::process::exit(1);
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},actix_server=warn,actix_web=warn")));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(ansi).init();
}

/// The text the start-up speculation trial continues: plain English prose, where a real
/// MTP head drafts well and a random one does not.
const SPEC_TRIAL_TEXT: &str = "The history of the bicycle begins in the early nineteenth century, when inventors in Europe \
     first tried to build a machine that a person could ride by pushing against the ground. Over the following decades";

/// `--speculative-algorithm auto`: whether to speculate, and why (logged, and reported in
/// /get_server_info as `speculative_auto`). Only the cuda backend with an MTP head runs the
/// trial; any error turns speculation off and the server starts anyway.
fn auto_speculation(backend: &mut dyn Backend, tok: &Tokenizer, spec: Option<&scheduler::SpecConfig>) -> (bool, String) {
    let off = |why: String| {
        tracing::info!("speculative decoding (auto) {why}");
        (false, why)
    };
    let Some(sp) = spec else { return off("off: no speculation settings".into()) };
    if backend.name() != "cuda" {
        return off(format!("off: the trial runs on the cuda backend only (this is the {} backend)", backend.name()));
    }
    if !backend.supports_speculation() {
        return off("off: the plan has no MTP head".into());
    }
    let eos = eos_ids(backend.config(), tok);
    let trial = tok.encode(SPEC_TRIAL_TEXT, false).and_then(|p| kiln::generate::speculation_trial(backend, &p, 64, &eos, tok.vocab_size(), sp.num_steps));
    match trial {
        Ok(t) if t.identical => {
            tracing::info!("speculative decoding (auto) {}", t.summary());
            (t.pays(), t.summary())
        }
        Ok(t) => {
            tracing::warn!("speculative decoding (auto) {}", t.summary());
            (false, t.summary())
        }
        Err(e) => {
            let why = format!("off: the start-up trial failed ({e:#})");
            tracing::warn!("speculative decoding (auto) {why}");
            (false, why)
        }
    }
}

/// Union of the model config's and the tokenizer's EOS ids.
fn eos_ids(cfg: &ModelConfig, tok: &Tokenizer) -> Vec<u32> {
    let mut e: Vec<u32> = cfg.eos_token_ids.iter().chain(tok.eos_token_ids()).copied().collect();
    e.sort_unstable();
    e.dedup();
    e
}

fn chat_defaults(model_dir: Option<&Path>) -> SamplingDefaults {
    let Some(text) = model_dir.and_then(|d| std::fs::read_to_string(d.join("generation_config.json")).ok()) else {
        return SamplingDefaults::default();
    };
    let g: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let f = |k: &str| g.get(k).and_then(Value::as_f64).map(|v| v as f32);
    SamplingDefaults {
        temperature: f("temperature"),
        top_p: f("top_p"),
        top_k: g.get("top_k").and_then(Value::as_i64),
        min_p: f("min_p"),
        repetition_penalty: f("repetition_penalty"),
    }
}

fn cpu_capacity(slots: usize, context: usize) -> Capacity {
    let block_size = 16;
    Capacity { slots, block_size, kv_blocks: slots * context.div_ceil(block_size), max_seq_len: context }
}

/// The backend, its tokenizer and a label; `Some(reason)` when serving the demo model.
/// `spec`: the resolved speculation flags (the cuda backend sizes its verify scratch by them).
fn build_backend(a: &ServeArgs, spec: Option<&scheduler::SpecConfig>) -> Result<(Box<dyn Backend>, Tokenizer, Option<String>)> {
    if a.tp_size != 1 {
        bail!("--tp-size {} is not supported: kiln runs on one GPU (use --tp-size 1)", a.tp_size);
    }
    // The demo model only when asked for or when no model was named: an explicit
    // --model-path is served as named, or refused in one sentence.
    let demo_reason = match (a.backend, &a.model_path) {
        (BackendKind::Demo, _) => Some("--backend demo".to_string()),
        (_, None) => Some("no --model-path was given".to_string()),
        _ => None,
    };
    let slots = a.max_running_requests.unwrap_or(16).max(1);
    if let Some(reason) = demo_reason {
        tracing::info!(
            "kiln: serving the embedded DEMO model (a small random Qwen3.5-shaped model with the real tokenizer; its text is meaningless) because {reason}"
        );
        let (cfg, w) = kiln::demo::demo_weights();
        let context = a.context_length.unwrap_or(8192);
        let tok = Tokenizer::bundled()?;
        return Ok((Box::new(CpuBackend::new(cfg, w, cpu_capacity(slots, context))?), tok, Some(reason)));
    }
    let dir = a.model_path.clone().expect("checked above");
    let tok_dir = a.tokenizer_path.clone().unwrap_or_else(|| dir.clone());
    match a.backend {
        BackendKind::Cpu => {
            let tok = Tokenizer::from_dir(&tok_dir)?;
            tracing::info!("kiln: serving {} on the CPU backend (f32 reference; slow)", dir.display());
            let (cfg, w) = kiln::checkpoint::load(&dir)?;
            let context = a.context_length.unwrap_or(cfg.max_position_embeddings.min(8192));
            Ok((Box::new(CpuBackend::new(cfg, w, cpu_capacity(slots, context))?), tok, None))
        }
        _ => cuda_backend(a, &dir, &tok_dir, spec),
    }
}

/// The sentence for an explicit model that cannot go on the GPU.
fn no_stand_in(dir: &Path, why: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!(
        "{why}; kiln does not serve the demo model in place of --model-path {}: pass --backend cpu to serve it on the \
         CPU backend (slow), or leave out --model-path for the demo model",
        dir.display()
    )
}

#[cfg(feature = "cuda")]
fn cuda_backend(a: &ServeArgs, dir: &Path, tok_dir: &Path, spec: Option<&scheduler::SpecConfig>) -> Result<(Box<dyn Backend>, Tokenizer, Option<String>)> {
    use kiln::backend::cuda::libs::{self, CudaLib};
    use kiln::backend::cuda::{CudaBackend, CudaOptions, DraftHeadKind};
    let facts = libs::probe();
    let (gpu, arch) = libs::usable_gpu(&facts).map_err(|e| no_stand_in(dir, e))?;
    libs::require(CudaLib::CublasLt)?;
    for l in libs::loaded() {
        tracing::info!("{}", l.line());
    }
    tracing::info!("GPU 0: {} ({arch})", gpu.name);
    let tok = Tokenizer::from_dir(tok_dir)?;
    let plan = a.plan.clone().with_context(|| {
        format!("serving {} on the GPU needs an engine plan: pass --plan (launch_server.sh builds one with kiln-build)", dir.display())
    })?;
    check_plan(&plan, dir, arch)?;
    tracing::info!("kiln: serving {} on the cuda backend (plan {})", dir.display(), plan.display());
    let d = CudaOptions::default();
    let opt = CudaOptions {
        max_running: a.max_running_requests,
        graph_max_bs: a.cuda_graph_max_bs.unwrap_or(d.graph_max_bs),
        max_seq_len: a.context_length.unwrap_or(d.max_seq_len),
        max_step_tokens: a.chunked_prefill_size.unwrap_or(d.max_step_tokens),
        mem_fraction: a.mem_fraction_static.unwrap_or(d.mem_fraction),
        // No snapshot pool without the prefix cache (its memory goes to KV instead).
        snapshot_fraction: if a.disable_radix_cache { 0.0 } else { d.snapshot_fraction },
        // Speculation: verify scratch for `spec_rows` sequences of k + 1 tokens; the MTP
        // head then runs in every step.
        spec_positions: spec.map_or(0, |sp| sp.num_steps + 1),
        draft_head: a.speculative.speculative_draft_head.map_or(d.draft_head, |h| match h {
            DraftHeadArg::Int8 => DraftHeadKind::Int8,
            DraftHeadArg::Int4 => DraftHeadKind::Int4,
            DraftHeadArg::Bf16 => DraftHeadKind::Bf16,
        }),
        ..d
    };
    let mut b = CudaBackend::load(&plan, Some(dir), &opt)?;
    b.capture_decode_graphs(tok.vocab_size())?;
    Ok((Box::new(b), tok, None))
}

/// Refuses, in one sentence, a plan that does not fit this GPU, driver and checkpoint.
#[cfg(feature = "cuda")]
fn check_plan(plan: &Path, dir: &Path, arch: kiln::plan::Arch) -> Result<()> {
    use kiln::backend::cuda::libs::{require, CudaLib};
    let p = kiln::plan::Plan::open(plan)?;
    if let Some((a, b)) = p.header.nvrtc_version {
        tracing::info!(
            "plan {}: kernels compiled by NVRTC {a}.{b} for {}, {} GEMM operands",
            plan.display(),
            p.header.arch.map_or("-", |x| x.as_str()),
            p.header.dtype
        );
    }
    let mut want = kiln::plan::Expected::for_gpu(arch).with_model_dir(dir)?;
    want.driver_cuda = Some(require(CudaLib::Driver)?.version);
    p.check(&want)
}

#[cfg(not(feature = "cuda"))]
fn cuda_backend(a: &ServeArgs, dir: &Path, _tok_dir: &Path, _spec: Option<&scheduler::SpecConfig>) -> Result<(Box<dyn Backend>, Tokenizer, Option<String>)> {
    let _ = a;
    Err(no_stand_in(dir, "this kiln binary was built without the cuda feature"))
}

/// `kiln probe`: prints what the driver and the library search found; the exit code is the
/// verdict (0 usable, 1 no usable GPU, 2 the plan does not fit).
#[cfg(feature = "cuda")]
fn probe(a: &ProbeArgs) -> Result<i32> {
    use kiln::backend::cuda::libs::{self, CudaLib};
    let facts = libs::probe();
    for lib in CudaLib::ALL {
        match libs::require(lib) {
            Ok(l) => println!("{}", l.line()),
            Err(e) => println!("{e}"),
        }
    }
    for line in libs::describe(&facts) {
        println!("{line}");
    }
    let (gpu, arch) = match libs::usable_gpu(&facts) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("kiln: {e}");
            return Ok(1);
        }
    };
    // Serving needs cuBLASLt (NVRTC only builds plans): without it GPU 0 is of no use.
    if let Err(e) = libs::require(CudaLib::CublasLt) {
        eprintln!("kiln: {e}");
        return Ok(1);
    }
    println!("usable: GPU 0 ({}) runs {arch} plans", gpu.name);
    if let Some(plan) = &a.plan {
        let dir = a.model_path.as_deref().context("--plan needs --model-path (the checkpoint it must match)")?;
        if let Err(e) = check_plan(plan, dir, arch) {
            eprintln!("kiln: {e:#}");
            return Ok(2);
        }
        println!("plan {} fits this GPU, driver and {}", plan.display(), dir.display());
    }
    Ok(0)
}

#[cfg(not(feature = "cuda"))]
fn probe(_a: &ProbeArgs) -> Result<i32> {
    eprintln!("kiln: this kiln binary was built without the cuda feature, so it cannot use a GPU");
    Ok(1)
}

fn serve(a: ServeArgs, ignored: &[String]) -> Result<()> {
    init_logging(&a.log_level);
    let speculative = a.speculative.resolve()?;
    let schedule_policy = SchedulePolicy::parse(&a.schedule_policy).map_err(|e| anyhow::anyhow!(e))?;
    let auto = a.speculative.is_auto();
    let (mut backend, tok, demo, auto_failed) = match build_backend(&a, speculative.as_ref()) {
        Ok((b, t, d)) => (b, t, d, None),
        // auto is a default, not a request: a backend that cannot be built with speculation
        // (memory, --speculative-num-steps past the conv window) is built without it.
        Err(e) if auto && speculative.is_some() => {
            let why = format!("off: the backend could not be built with it ({e:#})");
            tracing::warn!("speculative decoding (auto) {why}");
            let (b, t, d) = build_backend(&a, None)?;
            (b, t, d, Some(why))
        }
        Err(e) => return Err(e),
    };
    let auto_decision = match auto_failed {
        Some(why) => Some((false, why)),
        None => auto.then(|| auto_speculation(&mut *backend, &tok, speculative.as_ref())),
    };
    let speculative = match &auto_decision {
        Some((true, _)) => speculative,
        Some((false, _)) => {
            backend.stop_speculation()?;
            None
        }
        None => speculative,
    };
    for flag in ignored {
        tracing::warn!("ignoring unsupported SGLang flag `{flag}`");
    }
    if let Some(p) = &a.reasoning_parser {
        if !server::REASONING_PARSERS.contains(&p.as_str()) {
            bail!("--reasoning-parser {p} is not supported (one of {})", server::REASONING_PARSERS.join(", "));
        }
    }
    if a.tool_call_parser != "none" && !server::TOOL_CALL_PARSERS.contains(&a.tool_call_parser.as_str()) {
        bail!("--tool-call-parser {} is not supported (one of {}, none)", a.tool_call_parser, server::TOOL_CALL_PARSERS.join(", "));
    }
    if let Some(sp) = &speculative {
        tracing::info!("speculative decoding: MTP, {} draft steps per cycle, policy {:?}", sp.num_steps, sp.policy);
    }
    let eos = eos_ids(backend.config(), &tok);
    let cap = backend.capacity();
    let sched_cfg = SchedulerConfig {
        max_running: a.max_running_requests.unwrap_or(cap.slots),
        chunked_prefill_size: a.chunked_prefill_size.unwrap_or(if demo.is_some() { 512 } else { 2048 }),
        max_queued: a.max_queued_requests,
        context_len: a.context_length.unwrap_or(cap.max_seq_len),
        eos_token_ids: eos,
        sample_threads: 0,
        prefix_cache: !a.disable_radix_cache,
        prefix_cache_interval: a.mamba_track_interval,
        check_invariants: false,
        speculative,
        schedule_policy,
    };
    let model_label = match (&demo, &a.model_path) {
        (None, Some(p)) => p.display().to_string(),
        _ => "kiln-demo".to_string(),
    };
    let defaults = chat_defaults(if demo.is_none() { a.model_path.as_deref() } else { None });
    if defaults != SamplingDefaults::default() {
        tracing::info!("Using default chat sampling params from model generation config: {}", json!(defaults));
    }
    let mut args = serde_json::to_value(&a)?.as_object().cloned().unwrap_or_default();
    args.insert("api_key".into(), json!(a.api_key.as_ref().map(|_| "<set>")));
    if let Some((on, why)) = &auto_decision {
        // What auto became, as SGLang reports the algorithm; the trial's numbers beside it.
        args.insert("speculative_algorithm".into(), json!(on.then_some("NEXTN")));
        args.insert("speculative_auto".into(), json!(why));
    }
    let cfg = ServerConfig {
        served_model_name: a.served_model_name.clone().unwrap_or_else(|| model_label.clone()),
        model_path: model_label.clone(),
        tokenizer_path: a.tokenizer_path.as_ref().map_or(model_label.clone(), |p| p.display().to_string()),
        api_key: a.api_key.clone(),
        max_body_bytes: a.max_request_mib << 20,
        body_read_timeout: Duration::from_secs(a.body_read_timeout_secs),
        chat_defaults: defaults,
        shutdown_grace: Duration::from_secs(a.shutdown_grace_secs),
        workers: std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8)),
        server_args: args,
        reasoning_parser: a.reasoning_parser.clone(),
        enable_cache_report: a.enable_cache_report,
        tool_call_parser: (a.tool_call_parser != "none").then(|| a.tool_call_parser.clone()),
    };
    let tok_codec: Arc<dyn scheduler::Codec> = match &a.chat_template {
        Some(p) if p.is_file() => {
            let src = std::fs::read_to_string(p).with_context(|| format!("reading --chat-template {}", p.display()))?;
            let template = kiln::tokenizer::ChatTemplate::new(&src).with_context(|| format!("compiling {}", p.display()))?;
            tracing::info!("using the chat template {}", p.display());
            Arc::new(scheduler::codec::WithTemplate { tokenizer: tok, template })
        }
        Some(p) => {
            tracing::warn!("--chat-template {}: not a file (named built-in templates are not supported); using the model's template", p.display());
            Arc::new(tok)
        }
        None => Arc::new(tok),
    };
    let sched = scheduler::spawn(backend, tok_codec.clone(), sched_cfg)?;
    let info = sched.info().clone();
    tracing::info!(
        "backend {}: {} slots, {} KV blocks of {} tokens, context {}, step budget {} tokens, prefix cache {}",
        info.backend, info.capacity.slots, info.capacity.kv_blocks, info.capacity.block_size, info.config.context_len, info.config.chunked_prefill_size,
        if info.config.prefix_cache { "on" } else { "off" }
    );
    let state = AppState::new(cfg, sched, tok_codec);
    if !a.skip_server_warmup {
        state.warm_up().context("warm-up request failed")?;
    }
    state.set_ready();
    let listener = std::net::TcpListener::bind((a.host.as_str(), a.port)).with_context(|| format!("binding {}:{}", a.host, a.port))?;
    actix_web::rt::System::new().block_on(async move {
        let running = server::start(state.clone(), listener)?;
        tracing::info!("The server is fired up and ready to roll! Listening on http://{}", running.addr);
        server::serve_until_signal(state, running).await
    })?;
    Ok(())
}

fn generate(a: GenerateArgs) -> Result<()> {
    let (cfg, w, tok) = match &a.model {
        Some(dir) => {
            let (cfg, w) = kiln::checkpoint::load(dir)?;
            (cfg, w, Tokenizer::from_dir(dir)?)
        }
        None => {
            let (cfg, w) = kiln::demo::demo_weights();
            (cfg, w, Tokenizer::bundled()?)
        }
    };
    let text = if a.chat {
        let msgs = json!([{"role": "user", "content": a.prompt}]);
        tok.apply_chat_template(&msgs, None, true, &Default::default())?
    } else {
        a.prompt.clone()
    };
    let ids = tok.encode(&text, true)?;
    if ids.is_empty() {
        bail!("the prompt is empty");
    }
    let eos = eos_ids(&cfg, &tok);
    let len = ids.len() + a.max_new_tokens;
    let cap = Capacity { slots: 1, block_size: 16, kv_blocks: len.div_ceil(16), max_seq_len: len };
    let mut backend = CpuBackend::new(cfg, w, cap)?;
    let out = match a.speculative.resolve()? {
        Some(sp) => {
            let (out, counts) = kiln::generate::greedy_speculative(&mut backend, &ids, a.max_new_tokens, &eos, tok.vocab_size(), sp.num_steps)?;
            eprintln!(
                "speculative: {} verify passes, {:.2} tokens per pass, {}/{} drafts accepted",
                counts.verify_ct,
                counts.accept_length(),
                counts.accepted_drafts,
                counts.draft_tokens
            );
            out
        }
        None => kiln::generate::greedy(&mut backend, &ids, a.max_new_tokens, &eos, tok.vocab_size())?,
    };
    println!("{}", tok.decode(&out, true)?);
    Ok(())
}
