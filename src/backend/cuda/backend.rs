//! The cuda backend: loads a plan (weights and kernels compiled for this GPU), sizes its
//! pools from free memory, and runs steps of mixed prefill and decode.

use super::blaslt::BlasLt;
use super::compile::{CompiledModule, KernelDims};
use super::kernels::{
    AttnDecode, AttnPrefill, Conv1d, DType, DevPtr, GdnDecode, GdnPrefill, Kernels, Mat, QkNormRope, NULL,
};
use super::memory::{copy_d2d, download, memset0, upload};
use super::pools::{block_bytes, slot_bytes, Meta, Scratch, StatePools, LOGIT_ROWS};
use super::weights::{DeviceWeights, MixerPtrs};
use crate::backend::layout::{decode_first, in_caller_order, row_copies, StepLayout};
use crate::backend::{Backend, Capacity, ChunkLogits, SeqChunk, Want};
use crate::config::ModelConfig;
use crate::plan::{Arch, Expected, Plan};
use anyhow::{anyhow, bail, ensure, Context, Result};
use cudarc::driver::{CudaContext, CudaStream};
use std::path::Path;
use std::sync::Arc;

/// Start-up choices (the server's flags).
#[derive(Clone, Debug)]
pub struct CudaOptions {
    /// Most sequences in flight (state slots).
    pub max_slots: usize,
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
    /// Dtype of the GEMM inputs (normed activations and mixer outputs). fp32 keeps
    /// them exact (the skinny GEMM splits them into two bf16 MMAs); bf16 halves the
    /// matrix-unit work. Every step uses the same one, so rows stay batch invariant.
    /// Env KILN_ACT=bf16 or f32.
    pub act: DType,
}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions {
            max_slots: 64,
            max_seq_len: 32768,
            max_step_tokens: 2048,
            mem_fraction: 0.85,
            block_size: 16,
            max_parts: 32,
            graphs: std::env::var("KILN_CUDA_GRAPHS").map_or(true, |v| v != "0"),
            act: if std::env::var("KILN_ACT").is_ok_and(|v| v == "bf16") { DType::BF16 } else { DType::F32 },
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
    s: Scratch,
    max_blocks_per_seq: usize,
    pub device_name: String,
    graphs_enabled: bool,
    act: DType,
    graphs: std::collections::HashMap<(usize, Option<usize>), cudarc::driver::CudaGraph>,
}

/// Decode batch sizes with a captured graph (a batch runs in the smallest that holds it).
const GRAPH_BUCKETS: [usize; 9] = [1, 2, 4, 8, 16, 24, 32, 48, 64];

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
        let dims = KernelDims::from_config(&cfg);
        let modules: Vec<CompiledModule> = plan
            .header
            .kernels
            .iter()
            .map(|k| Ok(CompiledModule { name: k.name.clone(), cubin: plan.kernel(&k.name)?.to_vec() }))
            .collect::<Result<_>>()?;
        let k = Kernels::load(&ctx, &modules, &dims)?;
        // A created stream: graph capture is not allowed on the legacy default stream.
        let stream = ctx.new_stream().map_err(|e| anyhow!("creating a CUDA stream: {e:?}"))?;
        let w = DeviceWeights::upload(&stream, &plan, &cfg)?;
        let device_name = ctx.name().unwrap_or_else(|_| "CUDA device".into());
        Self::with_parts(cfg, ctx, stream, k, w, opt, device_name)
    }

    fn with_parts(
        cfg: ModelConfig,
        ctx: Arc<CudaContext>,
        stream: Arc<CudaStream>,
        k: Kernels,
        w: DeviceWeights,
        opt: &CudaOptions,
        device_name: String,
    ) -> Result<Self> {
        ensure!(opt.max_slots > 0 && opt.max_slots <= 64, "max running requests must be 1..=64 (got {})", opt.max_slots);
        ensure!(opt.max_step_tokens >= opt.max_slots, "the step token budget must cover one token per running request");
        let max_blocks_per_seq = opt.max_seq_len.div_ceil(opt.block_size);
        let s = Scratch::new(&cfg, &k, opt.max_step_tokens, opt.max_slots, max_blocks_per_seq, opt.max_parts)?;
        // Pools from what is left of the memory budget.
        let (free, total) = ctx.mem_get_info().map_err(|e| anyhow!("reading free GPU memory: {e:?}"))?;
        let used = total - free;
        let budget = (total as f64 * opt.mem_fraction) as usize;
        let state = opt.max_slots * slot_bytes(&cfg);
        let left = budget.saturating_sub(used).saturating_sub(state);
        let per_block = block_bytes(&cfg, opt.block_size);
        let want_blocks = opt.max_slots * max_blocks_per_seq;
        let kv_blocks = (left / per_block).min(want_blocks);
        ensure!(
            kv_blocks >= max_blocks_per_seq.min(want_blocks),
            "not enough GPU memory for one full-length sequence: {} KV blocks fit, {} needed (raise --mem-fraction-static or lower --context-length)",
            kv_blocks,
            max_blocks_per_seq
        );
        let pools = StatePools::new(&cfg, opt.max_slots, kv_blocks, opt.block_size)?;
        let cap = Capacity { slots: opt.max_slots, block_size: opt.block_size, kv_blocks, max_seq_len: opt.max_seq_len };
        tracing::info!(
            slots = cap.slots,
            kv_blocks,
            kv_tokens = kv_blocks * opt.block_size,
            state_mib = state >> 20,
            "cuda backend ready on {device_name}"
        );
        let blas = std::cell::RefCell::new(BlasLt::new()?);
        Ok(CudaBackend {
            cfg,
            cap,
            ctx,
            stream,
            k,
            blas,
            w,
            pools,
            s,
            max_blocks_per_seq,
            device_name,
            graphs_enabled: opt.graphs,
            act: opt.act,
            graphs: Default::default(),
        })
    }

    /// Makes the context current on the calling thread: the backend is built on one
    /// thread and driven by the scheduler's.
    fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| anyhow!("binding the CUDA context to this thread: {e:?}"))
    }

    /// y[T][N] = x[T][K] . W[N][K]^T over the step's rows; x is in the step's GEMM input
    /// dtype `xdt` (see `gemm_input`). A sequence whose chunk is longer than 64 tokens
    /// (prefill) goes through cuBLASLt (bf16 activations, one call with M = its chunk
    /// length); every other row through the skinny GEMM (64-row pieces). Either way a
    /// row's result depends only on its own sequence's chunk, never on what else is in
    /// the step.
    #[allow(clippy::too_many_arguments)]
    fn gemm(&self, w: DevPtr, x: DevPtr, xdt: DType, y: DevPtr, n: usize, kdim: usize, l: &StepLayout) -> Result<()> {
        let skinny = |r0: usize, r1: usize| -> Result<()> {
            let mut r = r0;
            while r < r1 {
                let rows = (r1 - r).min(64);
                let xo = x + (r * kdim * xdt.size()) as u64;
                let yo = y + (r * n * 4) as u64;
                self.k.gemm(&self.stream, w, xo, xdt, yo, DType::F32, rows, n, kdim, &self.s.gemm)?;
                r += rows;
            }
            Ok(())
        };
        let mut run = 0; // start of the pending run of short chunks
        for seq in l.cu_seqlens.windows(2) {
            let (r0, r1) = (seq[0] as usize, seq[1] as usize);
            if r1 - r0 <= 64 {
                continue;
            }
            skinny(run, r0)?;
            let xb = if xdt == DType::BF16 {
                x + (r0 * kdim * 2) as u64
            } else {
                self.k.f32_to_bf16(&self.stream, x + (r0 * kdim * 4) as u64, self.s.x_bf16.ptr, (r1 - r0) * kdim)?;
                self.s.x_bf16.ptr
            };
            self.blas.borrow_mut().gemm(&self.stream, w, xb, y + (r0 * n * 4) as u64, r1 - r0, n, kdim)?;
            run = r1;
        }
        skinny(run, l.num_tokens())
    }

    /// The dtype the layers' GEMM inputs are written in for step `l`: bf16 when every
    /// chunk is longer than 64 tokens (all rows go to cuBLASLt, which reads bf16: the
    /// producers write it directly, bit-identical to converting their fp32 output),
    /// else the engine's activation dtype.
    fn gemm_input(&self, l: &StepLayout) -> DType {
        if l.cu_seqlens.windows(2).all(|w| w[1] - w[0] > 64) {
            DType::BF16
        } else {
            self.act
        }
    }

    fn upload_meta(&self, l: &StepLayout) -> Result<Meta> {
        let m = Meta::layout(l.num_tokens(), l.num_seqs(), l.bt_stride);
        ensure!(m.end <= self.s.meta_len, "step metadata ({} ints) exceeds its buffer ({})", m.end, self.s.meta_len);
        let mut host = vec![0i32; m.end];
        host[m.ids..m.ids + l.ids.len()].copy_from_slice(&l.ids);
        host[m.pos..m.pos + l.pos.len()].copy_from_slice(&l.pos);
        host[m.kv_loc..m.kv_loc + l.kv_loc.len()].copy_from_slice(&l.kv_loc);
        host[m.cu_seqlens..m.cu_seqlens + l.cu_seqlens.len()].copy_from_slice(&l.cu_seqlens);
        host[m.slots..m.slots + l.slots.len()].copy_from_slice(&l.slots);
        host[m.start_pos..m.start_pos + l.start_pos.len()].copy_from_slice(&l.start_pos);
        host[m.ctx_lens..m.ctx_lens + l.ctx_lens.len()].copy_from_slice(&l.ctx_lens);
        host[m.block_tables..m.block_tables + l.block_tables.len()].copy_from_slice(&l.block_tables);
        // `host` is pageable: the driver has staged it by the time the call returns, so it
        // may be dropped without waiting for the stream.
        upload(&self.stream, self.s.meta.ptr, &host)?;
        Ok(m)
    }

    /// Runs one step. `dest[r]`: where logit row r goes on the host (chunk, row), copied
    /// straight into `bufs[chunk]`; `argmax_limit`: when some rows want only their greedy
    /// token, the vocabulary bound for it. Returns each logit row's argmax (when asked).
    fn run_step(&mut self, l: &StepLayout, dest: &[Option<(usize, usize)>], bufs: &mut [Vec<f32>], argmax_limit: Option<usize>) -> Result<Vec<i32>> {
        if l.is_decode() && self.graphs_enabled && l.num_seqs() <= self.cap.slots.min(LOGIT_ROWS) {
            return self.run_decode_graph(l, dest, bufs, argmax_limit);
        }
        let meta = self.upload_meta(l)?;
        self.encode(l, &meta)?;
        self.read_logits(l, dest, bufs, argmax_limit)
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
    fn run_decode_graph(&mut self, l: &StepLayout, dest: &[Option<(usize, usize)>], bufs: &mut [Vec<f32>], argmax_limit: Option<usize>) -> Result<Vec<i32>> {
        let n = l.num_seqs();
        let max = self.cap.slots.min(LOGIT_ROWS);
        let b = GRAPH_BUCKETS.iter().copied().find(|&x| x >= n && x <= max).unwrap_or(max);
        let p = l.padded_decode(b, self.max_blocks_per_seq)?;
        let meta = self.upload_meta(&p)?;
        let key = (b, argmax_limit);
        self.ensure_graph(&p, &meta, argmax_limit)?;
        self.graphs[&key].launch().map_err(|e| anyhow!("launching a decode graph: {e:?}"))?;
        self.download_rows(dest, 0..n, bufs)?;
        let mut tokens = vec![0i32; if argmax_limit.is_some() { n } else { 0 }];
        download(&self.stream, &mut tokens, self.s.argmax.ptr)?;
        self.stream.synchronize().map_err(|e| anyhow!("CUDA decode step failed: {e:?}"))?;
        Ok(tokens)
    }

    /// Captures the decode graph for `p`'s bucket (p.num_seqs()) unless it exists. Only
    /// the shape of `p` matters: graphs read the step's metadata from device memory.
    fn ensure_graph(&mut self, p: &StepLayout, meta: &Meta, argmax_limit: Option<usize>) -> Result<()> {
        let b = p.num_seqs();
        if self.graphs.contains_key(&(b, argmax_limit)) {
            return Ok(());
        }
        let mode = cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
        self.stream.begin_capture(mode).map_err(|e| anyhow!("starting graph capture: {e:?}"))?;
        let r = self.encode(p, meta).and_then(|_| self.head(b, argmax_limit));
        let g = self.stream.end_capture(cudarc::driver::sys::CUgraphInstantiate_flags_enum(0));
        r.context("capturing a decode graph")?;
        let g = g.map_err(|e| anyhow!("instantiating a decode graph: {e:?}"))?.context("graph capture produced no graph")?;
        tracing::debug!(bucket = b, "captured a decode graph");
        self.graphs.insert((b, argmax_limit), g);
        Ok(())
    }

    /// Captures every decode graph (each batch bucket, greedy-on-device with
    /// `argmax_limit` and logits-out) at start-up, so no request pays for a capture.
    pub fn capture_decode_graphs(&mut self, argmax_limit: usize) -> Result<()> {
        if !self.graphs_enabled {
            return Ok(());
        }
        self.bind()?;
        let t0 = std::time::Instant::now();
        let max = self.cap.slots.min(LOGIT_ROWS);
        let mut buckets: Vec<usize> = GRAPH_BUCKETS.iter().copied().filter(|&b| b <= max).collect();
        if buckets.last() != Some(&max) {
            buckets.push(max);
        }
        for &b in &buckets {
            let pad = StepLayout {
                ids: vec![0; b],
                pos: vec![0; b],
                cu_seqlens: (0..=b as i32).collect(),
                slots: vec![-1; b],
                start_pos: vec![0; b],
                ctx_lens: vec![0; b],
                kv_loc: vec![-1; b],
                block_tables: vec![0; b * self.max_blocks_per_seq],
                bt_stride: self.max_blocks_per_seq,
                logit_rows: Vec::new(),
                logit_counts: Vec::new(),
            };
            let meta = Meta::layout(b, b, self.max_blocks_per_seq);
            self.ensure_graph(&pad, &meta, Some(argmax_limit))?;
            self.ensure_graph(&pad, &meta, None)?;
        }
        tracing::info!("captured {} decode graphs in {:.0} ms", self.graphs.len(), t0.elapsed().as_secs_f64() * 1e3);
        Ok(())
    }

    /// lm_head (and the greedy argmax) over the first `rows` (<= 64) normed rows.
    fn head(&self, rows: usize, argmax_limit: Option<usize>) -> Result<()> {
        let (s, v, h) = (&self.s, self.cfg.vocab_size, self.cfg.hidden_size);
        self.k.gemm(&self.stream, self.w.lm_head, s.normed.ptr, self.act, s.logits.ptr, DType::F32, rows, v, h, &s.gemm)?;
        if let Some(limit) = argmax_limit {
            self.k.argmax(&self.stream, Mat::f32(s.logits.ptr, v), limit.min(v), s.argmax.ptr, rows)?;
        }
        Ok(())
    }

    /// Embedding, every layer and the final norm over the step's tokens (no host
    /// synchronisation: capturable into a graph).
    fn encode(&self, l: &StepLayout, meta: &Meta) -> Result<()> {
        let c = &self.cfg;
        let (t, h) = (l.num_tokens(), c.hidden_size);
        let mp = |off: usize| self.s.meta.at(off * 4);
        // The leading single-token sequences (every one in a decode step) go through the
        // decode kernels, the rest (`pm`: their metadata) through the prefill kernels, so a
        // decode row computes the same way whatever shares its step.
        let nd = l.decode_seqs();
        let np = l.num_seqs() - nd;
        let pm = meta.skip_seqs(nd, l.bt_stride);
        let st = &self.stream;
        let k = &self.k;
        let s = &self.s;
        k.embed(st, self.w.embed, mp(meta.ids), s.resid.ptr, t)?;
        // Normed activations go to `normed` in the GEMM input dtype; the final norm's in
        // the engine's activation dtype (the lm_head reads it through the skinny GEMM).
        let act = self.gemm_input(l);
        let (nb, nf) = if act == DType::BF16 { (s.normed.ptr, NULL) } else { (NULL, s.normed.ptr) };
        let (fnb, fnf) = if self.act == DType::BF16 { (s.normed.ptr, NULL) } else { (NULL, s.normed.ptr) };
        let qkv_dim = c.linear_qkv_dim();
        let vd = c.linear_value_dim();
        let nv = c.linear_num_value_heads;
        let attn_w = c.num_heads * c.head_dim;
        let qgkv_w = (2 * c.num_heads + 2 * c.num_kv_heads) * c.head_dim;
        let mut delta: Option<Mat> = None;
        let (mut li, mut fi) = (0, 0);
        for layer in &self.w.layers {
            k.add_rmsnorm(st, s.resid.ptr, delta, layer.input_norm, nb, nf, t)?;
            match &layer.mixer {
                MixerPtrs::Linear(g) => {
                    // One GEMM for [qkv | z | b | a]; the consumers read views of its rows.
                    let wide_w = qkv_dim + vd + 2 * nv;
                    self.gemm(g.qkvzba, s.normed.ptr, act, s.wide.ptr, wide_w, h, l)?;
                    let qkvz = Mat::f32(s.wide.ptr, wide_w);
                    let ba = qkvz.cols(qkv_dim + vd);
                    let out = Mat { ptr: s.mix_in.ptr, ld: vd, dtype: act };
                    if nd > 0 {
                        k.gdn_decode(st, &GdnDecode {
                            qkv: qkvz, z: qkvz.cols(qkv_dim), b: ba, a: ba.cols(nv),
                            conv_w: g.conv, conv_state: self.pools.conv_layer(li), state: self.pools.recurrent_layer(li),
                            a_log: g.a_log, dt_bias: g.dt_bias, norm_w: g.norm,
                            slots: mp(meta.slots), pos: mp(meta.pos), out, batch: nd,
                        })?;
                    }
                    if np > 0 {
                        k.conv1d(st, &Conv1d {
                            x: qkvz, w: g.conv, conv_state: self.pools.conv_layer(li),
                            cu_seqlens: mp(pm.cu_seqlens), slots: mp(pm.slots), start_pos: mp(pm.start_pos),
                            out: s.conv_out.ptr, ld_out: qkv_dim, nseq: np,
                        })?;
                        k.gdn_prefill(st, &GdnPrefill {
                            qkv: s.conv_out.ptr, ld_qkv: qkv_dim, b: ba, a: ba.cols(nv),
                            a_log: g.a_log, dt_bias: g.dt_bias, state: self.pools.recurrent_layer(li),
                            cu_seqlens: mp(pm.cu_seqlens), slots: mp(pm.slots),
                            out: s.core.ptr, ld_out: vd, nseq: np,
                            tokens: t, max_tokens: l.max_seq_tokens(), workspace: s.gdn_ws.ptr, workspace_bytes: s.gdn_ws.bytes,
                        })?;
                        let core = Mat::f32(s.core.ptr, vd).rows(nd);
                        k.gated_rmsnorm(st, core.ptr, qkvz.cols(qkv_dim).rows(nd), g.norm, out.rows(nd).ptr, act, t - nd)?;
                    }
                    self.gemm(g.out, s.mix_in.ptr, act, s.delta.ptr, h, vd, l)?;
                    li += 1;
                }
                MixerPtrs::Full(a) => {
                    self.gemm(a.qgkv, s.normed.ptr, act, s.wide.ptr, qgkv_w, h, l)?;
                    let qg = Mat::f32(s.wide.ptr, qgkv_w);
                    let kq = 2 * c.num_heads * c.head_dim;
                    let (kc, vc) = (self.pools.k_layer(fi), self.pools.v_layer(fi));
                    k.qk_norm_rope(st, &QkNormRope {
                        qg, k: qg.cols(kq), v: qg.cols(kq + c.num_kv_heads * c.head_dim),
                        q_norm_w: a.q_norm, k_norm_w: a.k_norm, pos: mp(meta.pos), kv_loc: mp(meta.kv_loc),
                        q_out: s.q.ptr, k_cache: kc, v_cache: vc, block_size: self.pools.block_size, tokens: t,
                    })?;
                    // The decode combine writes its output in the gate's dtype (fp32 here);
                    // with bf16 activations it goes to `core` and is converted.
                    let out = Mat { ptr: s.mix_in.ptr, ld: attn_w, dtype: act };
                    let combine_out = if act == DType::BF16 { Mat::f32(s.core.ptr, attn_w) } else { out };
                    if nd > 0 {
                        k.attn_decode(st, &AttnDecode {
                            q: s.q.ptr, k_cache: kc, v_cache: vc, block_tables: mp(meta.block_tables), bt_stride: l.bt_stride,
                            ctx_lens: mp(meta.ctx_lens), block_size: self.pools.block_size,
                            part_acc: s.part_acc.ptr, part_ml: s.part_ml.ptr, max_parts: s.max_parts,
                            gate: Some(qg.cols(c.head_dim)), gate_hs: 2 * c.head_dim, out: combine_out, batch: nd,
                        })?;
                        if act == DType::BF16 {
                            k.f32_to_bf16(st, s.core.ptr, s.mix_in.ptr, nd * attn_w)?;
                        }
                    }
                    if np > 0 {
                        k.attn_prefill(st, &AttnPrefill {
                            q: s.q.ptr, k_cache: kc, v_cache: vc, cu_seqlens: mp(pm.cu_seqlens), start_pos: mp(pm.start_pos),
                            block_tables: mp(pm.block_tables), bt_stride: l.bt_stride, block_size: self.pools.block_size,
                            out: s.core.ptr, nseq: np, max_tokens: l.max_seq_tokens(),
                        })?;
                        let core = Mat::f32(s.core.ptr, attn_w).rows(nd);
                        k.output_gate(st, core.ptr, qg.cols(c.head_dim).rows(nd), 2 * c.head_dim, out.rows(nd), t - nd)?;
                    }
                    self.gemm(a.o, s.mix_in.ptr, act, s.delta.ptr, h, attn_w, l)?;
                    fi += 1;
                }
            }
            k.add_rmsnorm(st, s.resid.ptr, Some(Mat::f32(s.delta.ptr, h)), layer.post_norm, nb, nf, t)?;
            let i2 = 2 * c.intermediate_size;
            self.gemm(layer.gate_up, s.normed.ptr, act, s.wide.ptr, i2, h, l)?;
            k.silu_mul(st, Mat::f32(s.wide.ptr, i2), c.intermediate_size, Mat { ptr: s.mix_in.ptr, ld: c.intermediate_size, dtype: act }, c.intermediate_size, t)?;
            self.gemm(layer.down, s.mix_in.ptr, act, s.delta.ptr, h, c.intermediate_size, l)?;
            delta = Some(Mat::f32(s.delta.ptr, h));
        }
        k.add_rmsnorm(st, s.resid.ptr, delta, self.w.norm, fnb, fnf, t)?;

        Ok(())
    }

    /// Logits of the wanted rows (64 at a time), their argmax, and the host copies.
    fn read_logits(&self, l: &StepLayout, dest: &[Option<(usize, usize)>], bufs: &mut [Vec<f32>], argmax_limit: Option<usize>) -> Result<Vec<i32>> {
        let (c, st, k, s) = (&self.cfg, &self.stream, &self.k, &self.s);
        let h = c.hidden_size;
        // Logits of the wanted rows, 64 at a time.
        let v = c.vocab_size;
        let rows = &l.logit_rows;
        let contiguous = rows.iter().enumerate().all(|(i, r)| *r as usize == i);
        for (ci, piece) in rows.chunks(LOGIT_ROWS).enumerate() {
            let es = self.act.size();
            let src = if contiguous {
                s.normed.at(ci * LOGIT_ROWS * h * es)
            } else {
                for (j, r) in piece.iter().enumerate() {
                    copy_d2d(st, s.sel.at(j * h * es), s.normed.at(*r as usize * h * es), h * es)?;
                }
                s.sel.ptr
            };
            self.k.gemm(st, self.w.lm_head, src, self.act, s.logits.ptr, DType::F32, piece.len(), v, h, &s.gemm)?;
            if let Some(limit) = argmax_limit {
                k.argmax(st, Mat::f32(s.logits.ptr, v), limit.min(v), s.argmax.at(ci * LOGIT_ROWS * 4), piece.len())?;
            }
            self.download_rows(dest, ci * LOGIT_ROWS..ci * LOGIT_ROWS + piece.len(), bufs)?;
        }
        let mut tokens = vec![0i32; if argmax_limit.is_some() { rows.len() } else { 0 }];
        download(st, &mut tokens, s.argmax.ptr)?;
        st.synchronize().map_err(|e| anyhow!("CUDA step failed: {e:?}"))?;
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
        for (i, c) in chunks.iter().enumerate() {
            ensure!(c.slot < self.cap.slots, "slot {} out of range ({} slots)", c.slot, self.cap.slots);
            ensure!(chunks[..i].iter().all(|o| o.slot != c.slot), "slot {} appears twice in one step", c.slot);
            ensure!(c.start_pos + c.tokens.len() <= self.cap.max_seq_len, "slot {} would pass max_seq_len", c.slot);
            ensure!(c.blocks.len() <= self.max_blocks_per_seq, "slot {} holds more KV blocks than a sequence may", c.slot);
            ensure!(c.blocks.iter().all(|b| (*b as usize) < self.cap.kv_blocks), "slot {} names a KV block outside the pool", c.slot);
            for &tok in c.tokens {
                ensure!((tok as usize) < self.cfg.vocab_size, "token id {tok} is outside the vocabulary ({})", self.cfg.vocab_size);
            }
        }
        // Single-token chunks (decode) go first, so a step's decode rows are one leading
        // run that `encode` sends through the decode kernels, whatever else the step holds.
        // (Usually they already are: then nothing is copied or permuted.)
        let order = decode_first(chunks);
        let in_order = order.iter().enumerate().all(|(i, &o)| i == o);
        let reordered: Vec<SeqChunk<'_>>;
        let chunks = if in_order {
            chunks
        } else {
            reordered = order.iter().map(|&i| chunks[i].clone()).collect();
            &reordered[..]
        };
        let layout = StepLayout::new(chunks, self.cap.block_size)?;
        if layout.num_tokens() > self.s.max_tokens {
            bail!("step of {} tokens exceeds the step budget of {}", layout.num_tokens(), self.s.max_tokens);
        }
        let mut argmax_limit = None;
        for c in chunks {
            if let Want::Argmax { limit } = c.want {
                ensure!(argmax_limit.is_none_or(|l| l == limit), "one step must use one argmax vocabulary limit");
                argmax_limit = Some(limit);
            }
        }
        let wants_data: Vec<bool> = chunks.iter().map(|c| !matches!(c.want, Want::Argmax { .. })).collect();
        let dest = layout.logit_destinations(&wants_data);
        let v = self.cfg.vocab_size;
        // Logits land straight in each chunk's own buffer (no second host copy).
        let mut bufs: Vec<Vec<f32>> =
            layout.logit_counts.iter().zip(&wants_data).map(|(n, w)| if *w { vec![0f32; n * v] } else { Vec::new() }).collect();
        let tokens = self.run_step(&layout, &dest, &mut bufs, argmax_limit).context("cuda step")?;
        let mut out = Vec::with_capacity(chunks.len());
        let mut row = 0;
        for ((n, w), data) in layout.logit_counts.iter().zip(&wants_data).zip(bufs) {
            out.push(if *w {
                ChunkLogits { rows: *n, data, argmax: None }
            } else {
                ChunkLogits { rows: 0, data, argmax: Some(tokens[row] as u32) }
            });
            row += n;
        }
        Ok(if in_order { out } else { in_caller_order(&order, out) })
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
}
