//! The cuda backend: loads a plan (weights and kernels compiled for this GPU), sizes its
//! pools from free memory, and runs steps of mixed prefill and decode.

use super::blaslt::BlasLt;
use super::compile::{CompiledModule, KernelDims};
use super::kernels::{DType, Kernels, Mat};
use super::memory::{download, memset0, upload};
use super::model::LayerStack;
use super::pools::{block_bytes, slot_bytes, Scratch, StatePools, LOGIT_ROWS};
use super::snapshots::SnapshotPool;
use super::sizing::{size_pools, DeviceMemory, PoolRequest, MAX_RUNNING_LIMIT};
use super::weights::{DeviceWeights, DraftHead, DraftHeadKind};
use crate::backend::step::{row_copies, Step, StepLimits};
use crate::backend::{Backend, Capacity, ChunkLogits, SeqChunk, SnapshotId, Verified, VerifyChunk};
use draft::MtpDevice;
use verify::VerifyScratch;
use crate::config::ModelConfig;
use crate::plan::{Arch, Expected, Plan};
use anyhow::{anyhow, ensure, Context, Result};
use cudarc::driver::{CudaContext, CudaStream};
use std::path::Path;
use std::sync::Arc;

#[path = "cycle.rs"]
mod cycle;
#[path = "draft.rs"]
mod draft;
#[path = "verify.rs"]
mod verify;

/// Start-up choices (the server's flags).
#[derive(Clone, Debug)]
pub struct CudaOptions {
    /// Most sequences in flight (state slots): `--max-running-requests`, which must then
    /// fit; None sizes it from memory (up to `sizing::DEFAULT_MAX_RUNNING`).
    pub max_running: Option<usize>,
    /// Largest decode batch replayed as a CUDA graph (`--cuda-graph-max-bs`); larger
    /// decode batches run launch by launch.
    pub graph_max_bs: usize,
    /// Longest sequence, prompt + output.
    pub max_seq_len: usize,
    /// Most tokens in one step (the chunked-prefill budget).
    pub max_step_tokens: usize,
    /// Fraction of the GPU's memory kiln may use (weights + pools + scratch).
    pub mem_fraction: f64,
    pub block_size: usize,
    /// Decode attention partitions per sequence (fixed: results depend on it).
    pub max_parts: usize,
    /// Replay decode steps as CUDA graphs (env KILN_CUDA_GRAPHS=0 turns them off).
    pub graphs: bool,
    /// Share of the memory left after the running requests' state that holds
    /// prefix-cache state snapshots (0: no prefix cache on this backend).
    pub snapshot_fraction: f64,
    /// Capture the decode graphs with programmatic dependent launch, so each kernel's
    /// launch and weight prefetch overlap its predecessor's tail (every kiln kernel waits
    /// for its predecessor's writes first). Env KILN_PDL=0 turns it off.
    pub pdl: bool,
    /// Dtype of the GEMM inputs (normed activations and mixer outputs). fp32 keeps
    /// them exact (the skinny GEMM splits them into two bf16 MMAs); bf16 halves the
    /// matrix-unit work. Every step uses the same one, so rows stay batch invariant.
    /// Env KILN_ACT=bf16 or f32.
    pub act: DType,
    /// Speculative verification: most fed tokens per sequence in one verify (the sampled
    /// token and its drafts, `--speculative-num-draft-tokens`; at most the conv window);
    /// 0: no verify scratch, `verify` refuses.
    pub spec_positions: usize,
    /// Most sequences in one verify (bounded by the running requests). Each takes
    /// `spec_positions` fp32 states of every linear layer (48 MB each for Qwen3.5-4B).
    pub spec_rows: usize,
    /// Replay verify steps as CUDA graphs (measured exact and 5 % faster per token than
    /// launch by launch on the H100, 2026-12-05; env KILN_VERIFY_GRAPHS=0 turns them off).
    pub verify_graphs: bool,
    /// Forward and verify steps run the whole MTP layer (as before session 7) instead of
    /// only the part that writes its KV (`mtp_layer_kv`): its output feeds nothing there.
    /// Env KILN_MTP_FULL_UPKEEP=1 (device_run.sh stage serving_mtp_full compares).
    pub mtp_full_upkeep: bool,
    /// Steps that run launch by launch (prefill chunks, mixed steps) launch kiln's kernels
    /// with programmatic dependent launch too, as the graphs do (cuBLASLt's GEMMs between
    /// them launch plainly and are waited for in full). An experiment, env
    /// KILN_PDL_STREAM=1 (stage knobs times prefill with it).
    pub pdl_stream: bool,
    /// MTP drafts read an int8 copy of the lm_head (made at start-up, 0.64 GB for
    /// Qwen3.5-4B; the default) or an int4 one (0.34 GB) instead of the bf16 table: half
    /// or about a quarter of the bytes of a draft step's largest read. Drafts are only
    /// proposals, so greedy output is unchanged either way. Env KILN_DRAFT_HEAD=bf16 /
    /// int8 / int4; `--speculative-draft-head`.
    pub draft_head: DraftHeadKind,
    /// Pack every decode GEMM weight at load (`DeviceWeights::pack`, `backend::weight_pack`):
    /// the register and shared-x kernels read a copy whose per-warp chunks are contiguous,
    /// the same bits. Measured (H100, session 17, two runs each, logits bit-identical): a
    /// step at batch 1 / 4 / 8 / 16 6.7 / 10.1 / 9.6 / 8.2 % faster (batch 1 4.42 -> 4.13
    /// ms). Costs a second copy (~8.4 GB for Qwen3.5-4B: the tiled kernel and cuBLASLt read
    /// row-major), taken from the pools. None (the default): packed when the copy is at
    /// most a quarter of the free memory after the weights (`PACK_FREE_SHARE`); env
    /// KILN_GEMM_PACKED=1 / 0 forces it on / off.
    pub packed_weights: Option<bool>,
    /// In a step that mixes long prefill chunks with decode or short rows, the long chunks'
    /// GEMM inputs are written as bf16 straight to the bf16 scratch by their producers
    /// (`model::Rows::bf16_from`; the default) instead of in fp32 and converted before
    /// each cuBLASLt GEMM: the same bf16 values, about 10 GB less traffic per mixed step
    /// with a 2048-token chunk. Env KILN_MIXED_BF16_INPUTS=0 converts, as before session 26.
    pub mixed_bf16_inputs: bool,
}

/// The packed decode weights are made by default when they take at most 1/PACK_FREE_SHARE
/// of the memory free after the weights (an 80 GB H100: 8.4 of ~70 GB).
const PACK_FREE_SHARE: usize = 4;

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions {
            max_running: None,
            graph_max_bs: MAX_GRAPH_BS,
            max_seq_len: 32768,
            max_step_tokens: 2048,
            mem_fraction: 0.85,
            block_size: 16,
            // KILN_ATTN_MAX_PARTS: an experiment (stage attn_parts); the default 32 keeps
            // every context up to 2048 at one part per 64 keys.
            max_parts: std::env::var("KILN_ATTN_MAX_PARTS").ok().and_then(|v| v.parse().ok()).filter(|&p: &usize| (1..=512).contains(&p)).unwrap_or(32),
            graphs: std::env::var("KILN_CUDA_GRAPHS").map_or(true, |v| v != "0"),
            pdl: std::env::var("KILN_PDL").map_or(true, |v| v != "0"),
            snapshot_fraction: 0.1,
            act: if std::env::var("KILN_ACT").is_ok_and(|v| v == "bf16") { DType::BF16 } else { DType::F32 },
            spec_positions: 0,
            spec_rows: 8,
            verify_graphs: std::env::var("KILN_VERIFY_GRAPHS").map_or(true, |v| v != "0"),
            mtp_full_upkeep: std::env::var("KILN_MTP_FULL_UPKEEP").is_ok_and(|v| v == "1"),
            pdl_stream: std::env::var("KILN_PDL_STREAM").is_ok_and(|v| v == "1"),
            draft_head: std::env::var("KILN_DRAFT_HEAD").ok().and_then(|v| DraftHeadKind::parse(&v)).unwrap_or(DraftHeadKind::Int8),
            packed_weights: std::env::var("KILN_GEMM_PACKED").ok().map(|v| v != "0"),
            mixed_bf16_inputs: std::env::var("KILN_MIXED_BF16_INPUTS").map_or(true, |v| v != "0"),
        }
    }
}

pub struct CudaBackend {
    cfg: ModelConfig,
    cap: Capacity,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    k: Kernels,
    blas: std::cell::RefCell<BlasLt>,
    w: DeviceWeights,
    pools: StatePools,
    /// Prefix-cache state snapshots.
    snapshots: SnapshotPool,
    s: Scratch,
    max_blocks_per_seq: usize,
    pub device_name: String,
    /// Capture decode graphs with PDL (`CudaOptions::pdl`); cleared if a capture fails.
    pdl: bool,
    /// Largest captured decode bucket (`CudaOptions::graph_max_bs`, at most the slots; 0:
    /// no decode graphs).
    graph_max_bs: usize,
    act: DType,
    mixed_bf16_inputs: bool,
    graphs: std::collections::HashMap<(usize, Option<usize>), cudarc::driver::CudaGraph>,
    /// Speculative verification's scratch (None: started without it).
    verify: Option<VerifyScratch>,
    /// The MTP head's buffers, when it runs (speculation on and the plan has it).
    mtp: Option<MtpDevice>,
    /// Whether steps run the MTP head: `mtp.is_some()` until `stop_speculation` (the
    /// buffers stay, snapshots point at the pending states).
    mtp_on: bool,
    /// `CudaOptions::mtp_full_upkeep`.
    mtp_full_upkeep: bool,
    /// `CudaOptions::pdl_stream`.
    pdl_stream: bool,
    /// Replay verify steps as CUDA graphs (`CudaOptions::verify_graphs`).
    verify_graphs: bool,
    verify_graph_map: std::collections::HashMap<(usize, usize, usize), cudarc::driver::CudaGraph>,
    /// Draft graphs by (rows, steps, vocabulary limit), under the same switch.
    draft_graph_map: std::collections::HashMap<(usize, usize, usize), cudarc::driver::CudaGraph>,
}

/// Decode batch sizes with a captured graph (a batch runs in the smallest that holds it).
const GRAPH_BUCKETS: [usize; 21] = [1, 2, 4, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512];
/// The largest graph bucket.
pub const MAX_GRAPH_BS: usize = 512;

/// The buckets captured when graphs go up to `max_bs`: every bucket below it, and
/// `max_bs` itself.
fn graph_buckets(max_bs: usize) -> Vec<usize> {
    let mut v: Vec<usize> = GRAPH_BUCKETS.iter().copied().filter(|&b| b < max_bs).collect();
    if max_bs > 0 {
        v.push(max_bs);
    }
    v
}

/// The smallest captured bucket that holds a decode batch of `n` (every decode step asks:
/// no allocation).
fn graph_bucket(n: usize, max_bs: usize) -> Option<usize> {
    GRAPH_BUCKETS.iter().copied().filter(|&b| b < max_bs).chain((max_bs > 0).then_some(max_bs)).find(|&b| b >= n)
}

// The backend is owned and driven by one scheduler thread at a time; the raw device
// addresses it holds are only used from that thread (with the context bound).
unsafe impl Send for CudaBackend {}

impl CudaBackend {
    /// Opens `plan_path`, checks it against this GPU (and the model dir's tokenizer when
    /// given), uploads the weights and sizes the pools.
    pub fn load(plan_path: &Path, model_dir: Option<&Path>, opt: &CudaOptions) -> Result<Self> {
        super::libs::require_each(&[super::libs::CudaLib::Driver, super::libs::CudaLib::CublasLt])?;
        let ctx = CudaContext::new(0).map_err(|e| anyhow!("no usable CUDA device: {e:?}"))?;
        ctx.bind_to_thread().map_err(|e| anyhow!("binding the CUDA context: {e:?}"))?;
        let (major, minor) = ctx.compute_capability().map_err(|e| anyhow!("compute capability: {e:?}"))?;
        let arch = Arch::from_compute_capability(major, minor)?;
        let plan = Plan::open(plan_path)?;
        let mut want = Expected::for_gpu(arch);
        if let Some(dir) = model_dir {
            want = want.with_model_dir(dir)?;
        }
        plan.check(&want)?;
        let cfg = plan.model_config()?;
        // The GEMM operand type is the plan's: its weights and its kernels were built for it.
        let dims = KernelDims { gemm_f16: plan.header.gemm_f16(), ..KernelDims::from_config(&cfg) };
        let modules: Vec<CompiledModule> = plan
            .header
            .kernels
            .iter()
            .map(|k| Ok(CompiledModule { name: k.name.clone(), cubin: plan.kernel(&k.name)?.to_vec() }))
            .collect::<Result<_>>()?;
        let k = Kernels::load(&ctx, &modules, &dims)?;
        // A created stream: graph capture is not allowed on the legacy default stream.
        let stream = ctx.new_stream().map_err(|e| anyhow!("creating a CUDA stream: {e:?}"))?;
        let mut w = DeviceWeights::upload(&stream, &plan, &cfg)?;
        let budget = match opt.packed_weights {
            Some(false) => None,
            Some(true) => Some(usize::MAX),
            None => Some(ctx.mem_get_info().map_err(|e| anyhow!("reading free GPU memory: {e:?}"))?.0 / PACK_FREE_SHARE),
        };
        if let Some(budget) = budget {
            match w.pack(&k, &stream, &plan, budget)? {
                Some(bytes) => tracing::info!("packed the decode GEMM weights: {:.2} GB more", bytes as f64 / 1e9),
                None => tracing::info!("decode GEMM weights not packed: the copy would take more than 1/{PACK_FREE_SHARE} of the free memory"),
            }
        }
        let device_name = ctx.name().unwrap_or_else(|_| "CUDA device".into());
        Self::with_parts(cfg, ctx, stream, k, w, opt, device_name)
    }

    fn with_parts(
        cfg: ModelConfig,
        ctx: Arc<CudaContext>,
        stream: Arc<CudaStream>,
        k: Kernels,
        mut w: DeviceWeights,
        opt: &CudaOptions,
        device_name: String,
    ) -> Result<Self> {
        let asked_slots = opt.max_running.unwrap_or(super::sizing::DEFAULT_MAX_RUNNING).clamp(1, MAX_RUNNING_LIMIT);
        ensure!(
            opt.max_step_tokens >= asked_slots,
            "--chunked-prefill-size {} must cover one token per running request ({asked_slots})",
            opt.max_step_tokens
        );
        let max_blocks_per_seq = opt.max_seq_len.div_ceil(opt.block_size);
        let graph_max_bs = if opt.graphs { opt.graph_max_bs.min(asked_slots).min(MAX_GRAPH_BS) } else { 0 };
        // Scratch for the largest ask first (it is small next to the pools), then the
        // pools from what is left of the memory budget.
        // A verify step's rows are decode rows of their own (one per fed position); a verify
        // graph pads them to a power of two per position.
        let (spec_rows, spec_positions) = if opt.spec_positions > 0 { (opt.spec_rows.clamp(1, asked_slots), opt.spec_positions) } else { (0, 0) };
        let max_row_seqs = asked_slots.max(spec_rows.next_power_of_two() * spec_positions);
        // A verify graph's lm_head writes the logits of all its rows.
        let logit_rows = LOGIT_ROWS.max(graph_max_bs).max(spec_rows.next_power_of_two() * spec_positions);
        let s = Scratch::new(&cfg, &k, opt.max_step_tokens, max_row_seqs, max_blocks_per_seq, opt.max_parts, logit_rows)?;
        let spec_bytes = if spec_positions > 0 { VerifyScratch::device_bytes(&cfg, spec_rows, spec_positions)? } else { 0 };
        // With speculation on, the MTP layer runs in every step and keeps its KV in the
        // block pool after the model's full-attention layers.
        let run_mtp = spec_positions > 0 && w.mtp.is_some();
        let kv_layers = cfg.num_full_layers() + run_mtp as usize;
        // The drafts' quantized lm_head, before the pools take what is left.
        // (kiln_gemv_i8 takes K in 64-wide chunks, kiln_gemv_i4 in 128-wide ones; other
        // hidden sizes draft from bf16.)
        let chunk = if opt.draft_head == DraftHeadKind::Int4 { 128 } else { 64 };
        if run_mtp && opt.draft_head != DraftHeadKind::Bf16 && cfg.hidden_size.is_multiple_of(chunk) {
            w.draft_head = Some(DraftHead::build(&k, &stream, w.lm_head.rows, &cfg, opt.draft_head)?);
        }
        let (free, total) = ctx.mem_get_info().map_err(|e| anyhow!("reading free GPU memory: {e:?}"))?;
        let sizes = size_pools(
            // The verify scratch is reserved before the pools are sized.
            DeviceMemory { free: free.saturating_sub(spec_bytes), total },
            &PoolRequest {
                mem_fraction: opt.mem_fraction,
                max_running: opt.max_running,
                max_seq_len: opt.max_seq_len,
                block_size: opt.block_size,
                slot_bytes: slot_bytes(&cfg),
                block_bytes: block_bytes(&cfg, opt.block_size, kv_layers),
                snapshot_fraction: opt.snapshot_fraction,
            },
        )?;
        let kv_blocks = sizes.kv_blocks;
        let pools = StatePools::new(&cfg, sizes.slots, spec_rows * spec_positions, kv_blocks, opt.block_size, kv_layers)?;
        // Its state entries follow the slots in the recurrent pool.
        let verify = (spec_positions > 0).then(|| VerifyScratch::new(&cfg, sizes.slots, spec_rows, spec_positions)).transpose()?;
        if run_mtp {
            ensure!(opt.act == DType::F32, "MTP speculation needs fp32 GEMM inputs (unset KILN_ACT=bf16)");
        }
        let mtp = if run_mtp {
            Some(MtpDevice::new(&cfg, sizes.slots, opt.max_step_tokens, max_row_seqs, max_blocks_per_seq, cfg.num_full_layers(), spec_positions - 1)?)
        } else {
            None
        };
        // A snapshot holds the slot's pending MTP state too, so a sequence resumed from the
        // prefix cache drafts from the right hidden state.
        let pending = mtp.as_ref().map(|m| (m.buf.pending, cfg.hidden_size * 4));
        let snapshots = SnapshotPool::new(sizes.snapshots, slot_bytes(&cfg), pending)?;
        let cap = Capacity { slots: sizes.slots, block_size: opt.block_size, kv_blocks, max_seq_len: opt.max_seq_len };
        let graph_max_bs = graph_max_bs.min(sizes.slots);
        tracing::info!(
            slots = cap.slots,
            kv_blocks,
            kv_tokens = kv_blocks * opt.block_size,
            state_mib = (sizes.slots * slot_bytes(&cfg)) >> 20,
            snapshots = sizes.snapshots,
            graph_max_bs,
            "cuda backend ready on {device_name}"
        );
        let blas = std::cell::RefCell::new(BlasLt::new(k.dims().gemm_f16)?);
        Ok(CudaBackend {
            cfg,
            cap,
            ctx,
            stream,
            k,
            blas,
            w,
            pools,
            snapshots,
            s,
            max_blocks_per_seq,
            device_name,
            graph_max_bs,
            pdl: opt.pdl,
            act: opt.act,
            mixed_bf16_inputs: opt.mixed_bf16_inputs,
            graphs: Default::default(),
            verify,
            mtp_on: mtp.is_some(),
            mtp_full_upkeep: opt.mtp_full_upkeep,
            pdl_stream: opt.pdl_stream,
            mtp,
            verify_graphs: opt.graphs && opt.verify_graphs,
            verify_graph_map: Default::default(),
            draft_graph_map: Default::default(),
        })
    }

    /// The kernels (their launch log and, in a `KILN_TIMELINE=1` build, the timeline).
    pub fn kernels(&self) -> &Kernels {
        &self.k
    }

    /// A timeline build's block records since the last call, and whether some were lost
    /// to the buffer's capacity; the buffer is then emptied. Between steps only.
    pub fn take_timeline(&self) -> Result<(Vec<crate::backend::cuda::timeline::BlockRecord>, bool)> {
        let t = self.k.timeline().context("the plan's kernels were built without the timeline (kiln-build with KILN_TIMELINE=1)")?;
        let r = t.read(&self.stream)?;
        t.reset(&self.stream)?;
        self.stream.synchronize().map_err(|e| anyhow!("emptying the timeline: {e:?}"))?;
        Ok(r)
    }

    /// Makes the context current on the calling thread: the backend is built on one
    /// thread and driven by the scheduler's.
    fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| anyhow!("binding the CUDA context to this thread: {e:?}"))
    }

    /// The layer stack over this backend's device state, for one step.
    fn stack(&self) -> LayerStack<'_> {
        LayerStack {
            cfg: &self.cfg,
            k: &self.k,
            blas: &self.blas,
            w: &self.w,
            pools: &self.pools,
            s: &self.s,
            stream: &self.stream,
            act: self.act,
            mixed_bf16_inputs: self.mixed_bf16_inputs,
        }
    }

    /// What one step may hold.
    fn limits(&self) -> StepLimits {
        StepLimits {
            slots: self.cap.slots,
            block_size: self.cap.block_size,
            kv_blocks: self.cap.kv_blocks,
            max_seq_len: self.cap.max_seq_len,
            max_blocks_per_seq: self.max_blocks_per_seq,
            vocab: self.cfg.vocab_size,
            max_tokens: self.s.max_tokens,
        }
    }

    /// Copies the step's metadata image to the device (one upload).
    fn upload_meta(&self, step: &Step) -> Result<()> {
        ensure!(step.packed.len() <= self.s.meta_len, "step metadata ({} ints) exceeds its buffer ({})", step.packed.len(), self.s.meta_len);
        // `packed` is pageable: the driver has staged it by the time the call returns.
        upload(&self.stream, self.s.meta.ptr, &step.packed)
    }

    /// Runs one step; logit rows go straight into `bufs` (per laid-out chunk). Returns
    /// each logit row's argmax when the step asked for it.
    fn run_step(&mut self, step: &Step, bufs: &mut [Vec<f32>]) -> Result<Vec<i32>> {
        if step.fits_decode_graph() && step.layout.num_seqs() <= self.graph_max_bs {
            return self.run_decode_graph(step, bufs);
        }
        self.upload_meta(step)?;
        let mtp = self.mtp_for_step(&step.layout)?;
        self.k.with_pdl(self.pdl_stream && self.pdl, || self.stack().forward(step).and_then(|_| self.mtp_inputs(&mtp)))?;
        let tokens = self.read_logits(step, bufs)?;
        // After the lm_head: the MTP layer reuses the step's scratch.
        self.mtp_layer(&mtp)?;
        Ok(tokens)
    }

    /// Copies logit rows `range` (held in `s.logits` from row `range.start`) to the host.
    fn download_rows(&self, dest: &[Option<(usize, usize)>], range: std::ops::Range<usize>, bufs: &mut [Vec<f32>]) -> Result<()> {
        let v = self.cfg.vocab_size;
        for c in row_copies(dest, range.clone()) {
            let src = self.s.logits.at((c.row - range.start) * v * 4);
            download(&self.stream, &mut bufs[c.chunk][c.chunk_row * v..(c.chunk_row + c.rows) * v], src)?;
        }
        Ok(())
    }

    /// Decode steps replay a CUDA graph captured once per (batch bucket, argmax limit):
    /// the batch is padded to the bucket with rows every kernel skips.
    fn run_decode_graph(&mut self, step: &Step, bufs: &mut [Vec<f32>]) -> Result<Vec<i32>> {
        let n = step.layout.num_seqs();
        let b = graph_bucket(n, self.graph_max_bs).context("no decode graph bucket holds this batch")?;
        let padded = step.padded_decode(b, self.max_blocks_per_seq)?;
        self.upload_meta(&padded)?;
        self.ensure_graph(&padded, step.argmax_limit)?;
        // The graph reads the MTP pass's image too (a capture uploads its own first).
        self.mtp_for_step(&padded.layout)?;
        self.graphs[&(b, step.argmax_limit)].launch().map_err(|e| anyhow!("launching a decode graph: {e:?}"))?;
        // Outside the graph, so graphs stay one per (bucket, limit): logit row r is at
        // `s.logits` row r, and the masks follow the arrays the graph reads.
        self.masked_argmax(&padded, 0, n)?;
        self.download_rows(&step.dest, 0..n, bufs)?;
        let mut tokens = vec![0i32; if step.argmax_limit.is_some() { n } else { 0 }];
        download(&self.stream, &mut tokens, self.s.argmax.ptr)?;
        self.stream.synchronize().map_err(|e| anyhow!("CUDA decode step failed: {e:?}"))?;
        Ok(tokens)
    }

    /// Captures the decode graph for `padded`'s bucket unless it exists. Only the shape
    /// of the step matters: graphs read the step's metadata from device memory.
    fn ensure_graph(&mut self, padded: &Step, argmax_limit: Option<usize>) -> Result<()> {
        let b = padded.layout.num_seqs();
        if self.graphs.contains_key(&(b, argmax_limit)) {
            return Ok(());
        }
        let g = match self.capture(padded, argmax_limit, self.pdl) {
            Ok(g) => g,
            Err(e) if self.pdl => {
                tracing::warn!("capturing a decode graph with programmatic dependent launch failed ({e:#}); capturing without it");
                self.pdl = false;
                self.graphs.clear();
                self.capture(padded, argmax_limit, false)?
            }
            Err(e) => return Err(e),
        };
        tracing::debug!(bucket = b, pdl = self.pdl, "captured a decode graph");
        self.graphs.insert((b, argmax_limit), g);
        Ok(())
    }

    /// Captures one decode step (layers + lm_head) on the stream into a graph.
    fn capture(&self, padded: &Step, argmax_limit: Option<usize>, pdl: bool) -> Result<cudarc::driver::CudaGraph> {
        // Uploads happen outside the capture: the graph reads the image's fixed address.
        let mtp = self.mtp_for_step(&padded.layout)?;
        self.capture_graph("decode", pdl, |stack| {
            stack.forward(padded)?;
            self.mtp_inputs(&mtp)?;
            stack.lm_head(padded.layout.num_seqs(), argmax_limit)?;
            self.mtp_layer(&mtp)
        })
    }

    /// Captures what `enqueue` puts on the stream into a graph (`what` names it in errors),
    /// its launches with programmatic dependent launch when `pdl`. Nothing is uploaded
    /// during a capture: graphs read metadata from fixed device buffers.
    fn capture_graph(&self, what: &str, pdl: bool, enqueue: impl FnOnce(&LayerStack<'_>) -> Result<()>) -> Result<cudarc::driver::CudaGraph> {
        let mode = cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
        self.stream.begin_capture(mode).map_err(|e| anyhow!("starting {what} graph capture: {e:?}"))?;
        let r = self.k.with_pdl(pdl, || enqueue(&self.stack()));
        let g = self.stream.end_capture(cudarc::driver::sys::CUgraphInstantiate_flags_enum(0));
        r.with_context(|| format!("capturing a {what} graph"))?;
        g.map_err(|e| anyhow!("instantiating a {what} graph: {e:?}"))?.with_context(|| format!("{what} graph capture produced no graph"))
    }

    /// Captures every decode graph (each batch bucket, greedy-on-device with
    /// `argmax_limit` and logits-out) at start-up, so no request pays for a capture.
    pub fn capture_decode_graphs(&mut self, argmax_limit: usize) -> Result<()> {
        if self.graph_max_bs == 0 {
            return Ok(());
        }
        self.bind()?;
        let t0 = std::time::Instant::now();
        for b in graph_buckets(self.graph_max_bs) {
            let shape = Step::graph_shape(b, self.max_blocks_per_seq);
            self.ensure_graph(&shape, Some(argmax_limit))?;
            self.ensure_graph(&shape, None)?;
        }
        tracing::info!(pdl = self.pdl, "captured {} decode graphs in {:.0} ms", self.graphs.len(), t0.elapsed().as_secs_f64() * 1e3);
        Ok(())
    }

    /// Structured output: the greedy token of each of logit rows `r0..r0 + rows` that has
    /// a token mask, over its allowed ids (the rows' logits at `s.logits` rows 0..,
    /// `step`'s metadata image uploaded). It overwrites the plain argmax those rows got
    /// from `lm_head`; rows without a mask keep theirs. Only the masks went to the device.
    fn masked_argmax(&self, step: &Step, r0: usize, rows: usize) -> Result<()> {
        let (Some(limit), false) = (step.argmax_limit, step.layout.masks.is_empty()) else { return Ok(()) };
        let v = self.cfg.vocab_size;
        let (mask_rows, masks) = (self.s.meta.at((step.meta.mask_rows + r0) * 4), self.s.meta.at(step.meta.masks * 4));
        self.k.argmax_masked(&self.stream, Mat::f32(self.s.logits.ptr, v), limit.min(v), mask_rows, masks, step.layout.mask_words, self.s.argmax.at(r0 * 4), rows, &self.s.argmax_ws)
    }

    /// Logits of the wanted rows (64 at a time), their argmax, and the host copies.
    fn read_logits(&self, step: &Step, bufs: &mut [Vec<f32>]) -> Result<Vec<i32>> {
        let rows = &step.layout.logit_rows;
        let stack = self.stack();
        for (ci, piece) in rows.chunks(LOGIT_ROWS).enumerate() {
            let r0 = ci * LOGIT_ROWS;
            let rows_dev = self.s.meta.at((step.meta.logit_rows + r0) * 4);
            stack.lm_head_rows(piece, rows_dev, self.s.argmax.at(r0 * 4), step.argmax_limit)?;
            self.masked_argmax(step, r0, piece.len())?;
            self.download_rows(&step.dest, r0..r0 + piece.len(), bufs)?;
        }
        let mut tokens = vec![0i32; if step.argmax_limit.is_some() { rows.len() } else { 0 }];
        download(&self.stream, &mut tokens, self.s.argmax.ptr)?;
        self.stream.synchronize().map_err(|e| anyhow!("CUDA step failed: {e:?}"))?;
        Ok(tokens)
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }
    fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    fn capacity(&self) -> Capacity {
        self.cap
    }
    fn forward(&mut self, chunks: &[SeqChunk<'_>]) -> Result<Vec<ChunkLogits>> {
        if chunks.is_empty() {
            return Ok(Vec::new());
        }
        self.bind()?;
        let step = Step::build(chunks, &self.limits())?;
        // Logits land straight in each chunk's own buffer (no second host copy).
        let mut bufs = step.host_buffers(self.cfg.vocab_size);
        let tokens = self.run_step(&step, &mut bufs).context("cuda step")?;
        step.finish(&tokens, bufs)
    }
    fn reset_slot(&mut self, slot: usize) -> Result<()> {
        ensure!(slot < self.cap.slots, "slot {slot} out of range");
        self.bind()?;
        // The conv ring needs no clearing (positions < 0 read as zeros); the recurrent
        // state starts from zero.
        for l in 0..self.cfg.num_linear_layers() {
            let (p, bytes) = self.pools.recurrent_slot(l, slot);
            memset0(&self.stream, p, bytes)?;
        }
        Ok(())
    }
    fn snapshot_capacity(&self) -> usize {
        self.snapshots.capacity()
    }
    fn snapshot_state(&mut self, slot: usize) -> Result<SnapshotId> {
        self.bind()?;
        self.snapshots.save(&self.stream, &self.pools, self.cfg.num_linear_layers(), slot)
    }
    fn restore_state(&mut self, snapshot: SnapshotId, slot: usize) -> Result<()> {
        self.bind()?;
        self.snapshots.restore(&self.stream, &self.pools, self.cfg.num_linear_layers(), snapshot, slot)
    }
    fn drop_snapshot(&mut self, snapshot: SnapshotId) -> Result<()> {
        self.snapshots.drop_snapshot(snapshot)
    }
    fn supports_speculation(&self) -> bool {
        self.mtp_on && self.verify.is_some()
    }
    fn stop_speculation(&mut self) -> Result<()> {
        if !self.mtp_on {
            return Ok(());
        }
        self.mtp_on = false;
        self.verify_graph_map.clear();
        self.draft_graph_map.clear();
        // Nothing drafts any more: the quantized table goes back to the driver.
        self.w.draft_head = None;
        // The decode graphs hold the MTP pass: capture them again without it.
        let keys: Vec<(usize, Option<usize>)> = self.graphs.keys().copied().collect();
        self.graphs.clear();
        self.bind()?;
        for (b, limit) in keys {
            self.ensure_graph(&Step::graph_shape(b, self.max_blocks_per_seq), limit)?;
        }
        Ok(())
    }
    fn max_verify_rows(&self) -> usize {
        self.verify.as_ref().map_or(0, |v| v.shape.rows)
    }
    fn draft(&mut self, seqs: &[crate::backend::DraftChunk<'_>]) -> Result<Vec<Vec<u32>>> {
        self.bind()?;
        self.draft_on_device(seqs).context("cuda draft")
    }
    fn verify(&mut self, seqs: &[VerifyChunk<'_>]) -> Result<Vec<Verified>> {
        self.bind()?;
        self.verify_on_device(seqs).context("cuda verify")
    }
    fn speculate(&mut self, seqs: &[crate::backend::DraftChunk<'_>], verify_limit: usize) -> Result<Vec<Verified>> {
        self.bind()?;
        self.speculate_on_device(seqs, verify_limit).context("cuda speculative cycle")
    }
}

#[cfg(test)]
mod tests {
    use super::{graph_bucket, graph_buckets};

    #[test]
    fn decode_batches_up_to_the_graph_limit_find_the_smallest_bucket() {
        assert_eq!(graph_buckets(256).last(), Some(&256));
        assert_eq!(graph_buckets(100), vec![1, 2, 4, 8, 16, 24, 32, 48, 64, 80, 96, 100]);
        assert_eq!(graph_bucket(1, 256), Some(1));
        assert_eq!(graph_bucket(3, 256), Some(4));
        assert_eq!(graph_bucket(129, 256), Some(160));
        assert_eq!(graph_bucket(256, 256), Some(256));
        assert_eq!(graph_bucket(97, 100), Some(100));
        assert_eq!(graph_bucket(257, 256), None);
        assert!(graph_buckets(0).is_empty());
    }
}
