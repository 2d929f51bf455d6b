//! Speculative verification on the cuda backend; the host plan (layout, state entries,
//! commit copies) is `backend::verify_step`, tested without a GPU. One `verify` call:
//! save the verified slots' conv rings (one copy launch), one step whose rows are every
//! fed position as a decode row (the GDN in one launch per position through scratch
//! entries), the greedy token of every row, and the commit (one copy launch).

use crate::backend::cuda::kernels::DevPtr;
use crate::backend::cuda::memory::{download, upload, DevBuf};
use crate::backend::cuda::pools::{conv_ring_bytes, recurrent_entry_bytes, StatePools};
use super::CudaBackend;
use crate::backend::mtp_rows::{MtpImage, MtpRows};
use crate::backend::speculative::accepted_len;
use crate::backend::verify_step::{commit, save_rings, segment_words, Segment, StateAddrs, VerifyShape, VerifyStep};
use crate::backend::{Verified, VerifyChunk};
use crate::config::ModelConfig;
use anyhow::{anyhow, ensure, Context, Result};

/// Rows per position of the captured verify graphs (a verify runs in the smallest that
/// holds its sequences; larger ones run launch by launch).
const VERIFY_BUCKETS: [usize; 4] = [1, 2, 4, 8];

/// Device memory of speculative verification beside the recurrent scratch entries (which
/// live in the state pool, `StatePools::entries`).
pub struct VerifyScratch {
    pub shape: VerifyShape,
    /// Saved conv rings: [verify sequence][linear layer][conv_k][conv channels] fp32.
    ring_save: DevBuf,
    ring_bytes: usize,
    /// Two areas of copy segments (the save's and the commit's), `seg_cap` u64 triples each.
    segs: DevBuf,
    seg_cap: usize,
    /// An on-device cycle's index arrays (`cycle_ints`).
    pub(super) cycle: DevBuf,
}

/// The commit copies one state and up to positions - 1 ring rows per sequence and layer,
/// and one pending MTP state per sequence; an on-device cycle's table holds the commit of
/// every accepted length 1..=positions (`backend::spec_cycle`).
fn segment_capacity(c: &ModelConfig, rows: usize, positions: usize) -> usize {
    let (l, p) = (c.num_linear_layers(), positions);
    rows * (l * (1 + p) + 1).max(l * (p + p * p.saturating_sub(1) / 2) + p)
}

/// i32s of an on-device cycle's index arrays: verify rows [rows][positions], feeds
/// [rows * (positions - 1)][2], and a tag per table copy.
fn cycle_ints(c: &ModelConfig, rows: usize, positions: usize) -> usize {
    rows * positions + 2 * rows * positions + segment_capacity(c, rows, positions)
}

impl VerifyScratch {
    /// Scratch for `rows` sequences of up to `positions` fed tokens (positions <= conv_k),
    /// whose state entries follow `slots` slots in the recurrent pool.
    pub fn new(c: &ModelConfig, slots: usize, rows: usize, positions: usize) -> Result<Self> {
        let seg_cap = segment_capacity(c, rows, positions);
        Ok(VerifyScratch {
            shape: VerifyShape { slots, rows, positions },
            ring_save: DevBuf::zeroed(rows * c.num_linear_layers() * conv_ring_bytes(c), "the verify conv-ring save area")?,
            ring_bytes: conv_ring_bytes(c),
            segs: DevBuf::zeroed(2 * seg_cap * 24, "the verify copy segments")?,
            seg_cap,
            cycle: DevBuf::zeroed(cycle_ints(c, rows, positions) * 4, "the speculative cycle's index arrays")?,
        })
    }

    /// Segment area `area` (0: the ring save's, 1: the commit's) and its capacity.
    pub(super) fn seg_area(&self, area: usize) -> (DevPtr, usize) {
        (self.segs.at(area * self.seg_cap * 24), self.seg_cap)
    }

    /// Device bytes of the verify scratch: the recurrent entries the state pool adds, the
    /// ring save area and the copy segments. Refuses more positions than the conv window.
    pub fn device_bytes(c: &ModelConfig, rows: usize, positions: usize) -> Result<usize> {
        ensure!(
            (1..=c.conv_kernel).contains(&positions),
            "speculation verifies --speculative-num-steps + 1 = {positions} tokens per cycle, but the cuda backend rolls back at most the conv window of {} positions: use --speculative-num-steps {} or fewer",
            c.conv_kernel,
            c.conv_kernel - 1
        );
        let per_row = c.num_linear_layers() * (positions * recurrent_entry_bytes(c) + conv_ring_bytes(c));
        Ok(rows * per_row + 2 * segment_capacity(c, rows, positions) * 24 + cycle_ints(c, rows, positions) * 4)
    }
}

/// The state pools' addresses as the commit plan reads them.
pub(super) struct Addrs<'a> {
    pub pools: &'a StatePools,
    pub v: &'a VerifyScratch,
    pub cfg: &'a ModelConfig,
}

impl StateAddrs for Addrs<'_> {
    fn linear_layers(&self) -> usize {
        self.cfg.num_linear_layers()
    }
    fn recurrent(&self, layer: usize, entry: usize) -> u64 {
        self.pools.recurrent_slot(layer, entry).0
    }
    fn recurrent_bytes(&self) -> usize {
        self.pools.recurrent_slot(0, 0).1
    }
    fn ring(&self, layer: usize, slot: usize) -> u64 {
        self.pools.conv_slot(layer, slot).0
    }
    fn ring_row_bytes(&self) -> usize {
        self.cfg.linear_qkv_dim() * 4
    }
    fn conv_k(&self) -> usize {
        self.cfg.conv_kernel
    }
    fn saved_ring(&self, i: usize, layer: usize) -> u64 {
        self.v.ring_save.at((i * self.cfg.num_linear_layers() + layer) * self.v.ring_bytes)
    }
}

impl CudaBackend {
    /// `Backend::verify` (see the module doc).
    pub(super) fn verify_on_device(&mut self, seqs: &[VerifyChunk<'_>]) -> Result<Vec<Verified>> {
        let v = self.verify.as_ref().context("this cuda backend was started without verify scratch (speculation off)")?;
        // Verify graphs (KILN_VERIFY_GRAPHS=0 turns them off): the batch padded to a bucket of rows per
        // position, one graph per (bucket, positions, argmax limit). Scratch covers
        // spec_rows rounded up to a bucket.
        let bucket = self.verify_bucket(seqs.len());
        let plan = VerifyStep::build(seqs, &self.limits(), &v.shape, bucket)?;
        let mtp = self.begin_verify(seqs, &plan)?;
        let tokens = match bucket {
            Some(b) => self.run_verify_graph(&plan, b, &mtp)?,
            None => {
                self.stack().forward(&plan.step)?;
                self.mtp_inputs(&mtp)?;
                let mut no_rows = plan.step.host_buffers(self.cfg.vocab_size);
                self.read_logits(&plan.step, &mut no_rows)?
            }
        };
        let greedy = plan.greedy(&tokens)?;
        let accepted: Vec<usize> = seqs.iter().zip(&greedy).map(|(c, g)| accepted_len(c.tokens, g)).collect();
        let v = self.verify.as_ref().context("verify scratch")?;
        let addrs = Addrs { pools: &self.pools, v, cfg: &self.cfg };
        let mut segs = commit(seqs, &accepted, &v.shape, &addrs)?;
        if self.mtp.is_some() {
            // The last accepted position's hidden state becomes the slot's pending one.
            let last = plan.rows.iter().zip(&accepted).zip(seqs).map(|((rs, &a), c)| (rs[a - 1], c.slot));
            segs.extend(self.pending_copies(last)?);
        }
        self.copy_segments(&segs, 1)?;
        self.mtp_layer(&mtp)?;
        Ok(greedy.into_iter().zip(accepted).map(|(greedy, accepted)| Verified { greedy, accepted }).collect())
    }

    /// Enqueues what precedes a verify step of `chunks` laid out as `plan`: the save of
    /// their conv rings, the step's metadata and, with the MTP head, the image of its pass
    /// over every fed position (returned; the commit sets the pending states).
    pub(super) fn begin_verify(&self, chunks: &[VerifyChunk<'_>], plan: &VerifyStep) -> Result<Option<(MtpRows, MtpImage)>> {
        let v = self.verify.as_ref().context("verify scratch")?;
        self.copy_segments(&save_rings(chunks, &Addrs { pools: &self.pools, v, cfg: &self.cfg }), 0)?;
        self.upload_meta(&plan.step)?;
        self.mtp
            .as_ref()
            .map(|_| {
                let rows = MtpRows::for_verify(&plan.step.layout, &plan.rows, self.cap.block_size);
                self.upload_mtp(&rows, &[]).map(|img| (rows, img))
            })
            .transpose()
    }

    /// The graph bucket (rows per position) of a verify, or a draft, of `n` sequences:
    /// the smallest that holds them, within the verify scratch; None runs launch by launch.
    pub(super) fn verify_bucket(&self, n: usize) -> Option<usize> {
        let rows = self.verify.as_ref()?.shape.rows;
        self.verify_graphs.then(|| VERIFY_BUCKETS.iter().copied().find(|&b| b >= n && b <= rows.next_power_of_two())).flatten()
    }

    /// Replays (capturing it first if new) the verify graph of `plan`'s shape: the layers,
    /// the MTP inputs and the lm_head with its argmax over every row. Returns the argmax of
    /// every row (metadata and MTP image already uploaded).
    fn run_verify_graph(&mut self, plan: &VerifyStep, bucket: usize, mtp: &Option<(MtpRows, MtpImage)>) -> Result<Vec<i32>> {
        self.launch_verify_graph(plan, bucket, mtp)?;
        let mut tokens = vec![0i32; plan.step.layout.num_tokens()];
        download(&self.stream, &mut tokens, self.s.argmax.ptr)?;
        Ok(tokens)
    }

    /// Enqueues the verify graph of `plan`'s shape (captured first if new); the argmax of
    /// every row lands in `s.argmax`.
    pub(super) fn launch_verify_graph(&mut self, plan: &VerifyStep, bucket: usize, mtp: &Option<(MtpRows, MtpImage)>) -> Result<()> {
        let (rows, limit) = (plan.step.layout.num_tokens(), plan.step.argmax_limit);
        let key = (bucket, rows / bucket, limit.unwrap_or(0));
        if !self.verify_graph_map.contains_key(&key) {
            let g = self.capture_graph("verify", self.pdl, |stack| {
                stack.forward(&plan.step)?;
                self.mtp_inputs(mtp)?;
                stack.lm_head(rows, limit)
            })?;
            self.verify_graph_map.insert(key, g);
        }
        self.verify_graph_map[&key].launch().map_err(|e| anyhow!("launching a verify graph: {e:?}"))
    }

    /// Copies `segs` in one launch, through segment area `area` (0: save, 1: commit; two
    /// areas, so the commit's upload never lands on segments the save still reads).
    pub(super) fn copy_segments(&self, segs: &[Segment], area: usize) -> Result<()> {
        let v = self.verify.as_ref().context("verify scratch")?;
        ensure!(segs.len() <= v.seg_cap, "{} copy segments exceed the verify scratch's {}", segs.len(), v.seg_cap);
        let at: DevPtr = v.segs.at(area * v.seg_cap * 24);
        upload(&self.stream, at, &segment_words(segs))?;
        let max_bytes = segs.iter().map(|s| s.bytes as usize).max().unwrap_or(0);
        self.k.copy_segments(&self.stream, at, segs.len(), max_bytes)
    }
}
