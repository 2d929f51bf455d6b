//! The MTP head on the cuda backend: its buffers, the pass every step runs when
//! speculation is on (the pairs the step feeds, `MtpRows::for_step`), and `draft`: one
//! MTP step per draft token from each slot's pending state, with the drafts copied to
//! the host once at the end.

use super::CudaBackend;
use crate::backend::cuda::memory::{download, upload, DevBuf};
use crate::backend::cuda::model::mtp::MtpBuffers;
use crate::backend::mtp_rows::{MtpImage, MtpRows};
use crate::backend::step::StepLayout;
use crate::backend::verify_step::Segment;
use crate::backend::DraftChunk;
use crate::config::ModelConfig;
use anyhow::{ensure, Context, Result};

/// The MTP head's device buffers.
pub struct MtpDevice {
    pub buf: MtpBuffers,
    meta_len: usize,
    /// The images of a draft's chained steps, uploaded at once (one region per step, so
    /// the host never waits for step j before enqueueing step j + 1).
    draft_meta: DevBuf,
    draft_region: usize,
    _allocs: [DevBuf; 4],
}

impl MtpDevice {
    /// Buffers for passes of up to `max_rows` rows and `max_seqs` chunks over `slots` slots,
    /// and drafts of up to `max_steps` chained steps.
    pub fn new(c: &ModelConfig, slots: usize, max_rows: usize, max_seqs: usize, max_blocks_per_seq: usize, kv_layer: usize, max_steps: usize) -> Result<Self> {
        let h = c.hidden_size;
        let meta_len = MtpImage::len(max_rows, max_seqs, max_blocks_per_seq);
        let pending = DevBuf::zeroed(slots * h * 4, "the MTP pending hidden states")?;
        let cat = DevBuf::zeroed(max_rows * 2 * h * 4, "the MTP fc input")?;
        let out = DevBuf::zeroed(max_rows * h * 4, "the MTP outputs")?;
        let meta = DevBuf::zeroed(meta_len * 4, "the MTP metadata")?;
        let buf = MtpBuffers { pending: pending.ptr, cat: cat.ptr, out: out.ptr, meta: meta.ptr, kv_layer };
        let draft_region = MtpImage::len(super::LOGIT_ROWS, super::LOGIT_ROWS, max_blocks_per_seq);
        let draft_meta = DevBuf::zeroed(max_steps.max(1) * draft_region * 4, "the MTP draft metadata")?;
        Ok(MtpDevice { buf, meta_len, draft_meta, draft_region, _allocs: [pending, cat, out, meta] })
    }
}

impl CudaBackend {
    /// The copies that make main-step rows their slots' pending states: (row, slot).
    pub(super) fn pending_copies(&self, rows: impl IntoIterator<Item = (usize, usize)>) -> Result<Vec<Segment>> {
        let m = self.mtp.as_ref().context("the MTP head is not running")?;
        let hb = self.cfg.hidden_size * 4;
        Ok(rows.into_iter().map(|(r, slot)| Segment { src: self.s.normed.at(r * hb), dst: m.buf.pending + (slot * hb) as u64, bytes: hb as u64 }).collect())
    }

    /// Uploads the MTP pass of `rows` (with `segs` as its pending copies).
    pub(super) fn upload_mtp(&self, rows: &MtpRows, segs: &[Segment]) -> Result<MtpImage> {
        let m = self.mtp.as_ref().context("the MTP head is not running")?;
        let img = rows.image(segs);
        ensure!(img.packed.len() <= m.meta_len, "MTP metadata ({} ints) exceeds its buffer ({})", img.packed.len(), m.meta_len);
        upload(&self.stream, m.buf.meta, &img.packed)?;
        Ok(img)
    }

    /// The MTP pass of a forward step laid out as `l`, uploaded; None without the MTP head.
    pub(super) fn mtp_for_step(&self, l: &StepLayout) -> Result<Option<(MtpRows, MtpImage)>> {
        if !self.mtp_on {
            return Ok(None);
        }
        let rows = MtpRows::for_step(l, self.cap.block_size);
        let segs = self.pending_copies(rows.pending.iter().copied())?;
        let img = self.upload_mtp(&rows, &segs)?;
        Ok(Some((rows, img)))
    }

    /// Enqueues the MTP inputs of `pass` (right after the step's final norm).
    pub(super) fn mtp_inputs(&self, pass: &Option<(MtpRows, MtpImage)>) -> Result<()> {
        let (Some((rows, img)), Some(m), Some(mw)) = (pass, &self.mtp, &self.w.mtp) else { return Ok(()) };
        let ids = m.buf.meta + (img.meta.ids * 4) as u64;
        self.stack().mtp_inputs(mw, &m.buf, &rows.layout, img, self.s.normed.ptr, ids)
    }

    /// Enqueues the MTP layer of a forward step's `pass` (after the step's lm_head): only
    /// what keeps its KV current (`mtp_layer_kv`), unless `CudaOptions::mtp_full_upkeep`.
    pub(super) fn mtp_layer(&self, pass: &Option<(MtpRows, MtpImage)>) -> Result<()> {
        let (Some((rows, img)), Some(m), Some(mw)) = (pass, &self.mtp, &self.w.mtp) else { return Ok(()) };
        if self.mtp_full_upkeep {
            self.stack().mtp_layer(mw, &m.buf, &rows.layout, img)
        } else {
            self.stack().mtp_layer_kv(mw, &m.buf, &rows.layout, img)
        }
    }

    /// `Backend::draft`: `max(steps)` chained MTP steps over every sequence (a draft graph
    /// when one fits, as the verify's), the drafts copied to the host at the end.
    pub(super) fn draft_on_device(&mut self, chunks: &[DraftChunk<'_>]) -> Result<Vec<Vec<u32>>> {
        let k = chunks.iter().map(|c| c.steps).max().unwrap_or(0);
        let rows = self.enqueue_draft(chunks, self.verify_bucket(chunks.len()))?;
        // `download` synchronises the stream: the draft's launches have finished.
        let mut tokens = vec![0i32; rows * k];
        download(&self.stream, &mut tokens, self.s.argmax.ptr)?;
        Ok(chunks.iter().enumerate().map(|(i, c)| (0..c.steps).map(|j| tokens[j * rows + i] as u32).collect()).collect())
    }

    /// Enqueues `max(steps)` chained MTP steps over every sequence, reading nothing back:
    /// step j's draft of sequence i lands in argmax row `j * rows + i`, where `rows` (the
    /// return value) is the number of sequences, or `pad`'s: with `pad = Some(b)` the
    /// steps have the fixed shape of a draft graph of b rows, replayed (captured first
    /// if new), one per (b, steps, vocabulary limit).
    pub(super) fn enqueue_draft(&mut self, chunks: &[DraftChunk<'_>], pad: Option<usize>) -> Result<usize> {
        let dev = match (&self.mtp, &self.w.mtp) {
            (Some(dev), Some(_)) => dev,
            _ => anyhow::bail!("this cuda backend runs no MTP head (the plan has none, or speculation is off)"),
        };
        let n = chunks.len();
        let k = chunks.iter().map(|c| c.steps).max().unwrap_or(0);
        let rows = pad.unwrap_or(n);
        ensure!(n > 0 && k > 0, "a draft needs sequences and steps");
        ensure!(rows >= n && rows <= super::LOGIT_ROWS && rows * k <= self.s.max_tokens, "{n} sequences x {k} draft steps exceed the draft buffers");
        let limit = chunks[0].limit;
        for c in chunks {
            ensure!(c.slot < self.cap.slots && c.pos >= 1, "slot {}: nothing to draft from at position {}", c.slot, c.pos);
            ensure!(c.limit == limit, "one draft call must use one argmax vocabulary limit");
            ensure!(c.steps >= 1 && c.blocks.len() * self.cap.block_size >= c.pos + c.steps, "slot {}: its KV blocks do not cover the draft positions", c.slot);
            ensure!(c.blocks.len() <= self.max_blocks_per_seq, "slot {} holds more KV blocks than a sequence may ({})", c.slot, self.max_blocks_per_seq);
            ensure!((c.next as usize) < self.cfg.vocab_size, "token id {} is outside the vocabulary", c.next);
        }
        ensure!(k * dev.draft_region * 4 <= dev.draft_meta.bytes, "{k} draft steps exceed the draft buffers (--speculative-num-steps)");
        // Every step's image in one upload, step j at region j.
        let shape = pad.map(|b| (b, self.max_blocks_per_seq));
        let steps: Vec<(MtpRows, MtpImage)> = (0..k)
            .map(|j| {
                let r = MtpRows::for_draft(chunks, j, self.cap.block_size, shape);
                let img = r.image(&[]);
                (r, img)
            })
            .collect();
        let mut packed = vec![0i32; k * dev.draft_region];
        for (j, (_, img)) in steps.iter().enumerate() {
            ensure!(img.packed.len() <= dev.draft_region, "draft metadata exceeds its region");
            packed[j * dev.draft_region..j * dev.draft_region + img.packed.len()].copy_from_slice(&img.packed);
        }
        upload(&self.stream, dev.draft_meta.ptr, &packed)?;
        let limit = limit.min(self.cfg.vocab_size);
        match pad {
            Some(b) => {
                let key = (b, k, limit);
                if !self.draft_graph_map.contains_key(&key) {
                    let g = self.capture_graph("draft", self.pdl, |_| self.enqueue_draft_steps(&steps, rows, limit))?;
                    self.draft_graph_map.insert(key, g);
                }
                self.draft_graph_map[&key].launch().map_err(|e| anyhow::anyhow!("launching a draft graph: {e:?}"))?;
            }
            // The draft's launches (all kiln kernels, each waiting for its predecessor's
            // writes) take programmatic dependent launch as the decode graphs do, so each
            // GEMM's blocks can start and prefetch their weights while the kernel before
            // them finishes.
            None => self.k.with_pdl(self.pdl, || self.enqueue_draft_steps(&steps, rows, limit))?,
        }
        Ok(rows)
    }

    /// The launches of a draft's chained steps (images uploaded): step 0 reads the sampled
    /// tokens from its image (and only pending states), step j the previous step's drafts
    /// and outputs.
    fn enqueue_draft_steps(&self, steps: &[(MtpRows, MtpImage)], rows: usize, limit: usize) -> Result<()> {
        let (Some(dev), Some(mw)) = (&self.mtp, &self.w.mtp) else { anyhow::bail!("the MTP head is not running") };
        for (j, (r, img)) in steps.iter().enumerate() {
            let m = MtpBuffers { meta: dev.draft_meta.at(j * dev.draft_region * 4), ..dev.buf };
            let stack = self.stack();
            let ids = if j == 0 { m.meta + (img.meta.ids * 4) as u64 } else { self.s.argmax.at((j - 1) * rows * 4) };
            stack.mtp_inputs(mw, &m, &r.layout, img, m.out, ids)?;
            stack.mtp_layer(mw, &m, &r.layout, img)?;
            stack.mtp_draft_tokens(m.out, rows, self.s.argmax.at(j * rows * 4), limit)?;
        }
        Ok(())
    }
}
