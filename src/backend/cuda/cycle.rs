//! A whole speculative cycle on the cuda backend with one read-back (`Backend::speculate`;
//! the host plan is `backend::spec_cycle`, tested without a GPU). Everything is enqueued
//! at once: the draft (a graph), the conv-ring save, the drafts fed into the verify
//! step's ids (`kiln_spec_feed`), the verify (a graph), acceptance and the commit's
//! choice (`kiln_spec_accept`), the commit copies and the MTP layer's KV upkeep; then one
//! copy to the host of the greedy tokens and the accepted lengths. Before, the host read
//! the drafts back, then the greedy tokens, and decided the commit itself.

use super::verify::Addrs;
use super::CudaBackend;
use crate::backend::cuda::kernels::NULL;
use crate::backend::cuda::memory::{download, upload};
use crate::backend::spec_cycle::CyclePlan;
use crate::backend::speculative::{draft_then_verify, verify_chunks, DraftFailed};
use crate::backend::verify_step::segment_words;
use crate::backend::{DraftChunk, Verified};
use anyhow::{ensure, Context, Result};

impl CudaBackend {
    /// `Backend::speculate`: on the device when the sequences fit a verify graph (and
    /// graphs are on), else as `draft` then `verify`.
    pub(super) fn speculate_on_device(&mut self, seqs: &[DraftChunk<'_>], verify_limit: usize) -> Result<Vec<Verified>> {
        let Some(bucket) = self.verify_bucket(seqs.len()) else { return draft_then_verify(self, seqs, verify_limit) };
        let v = self.verify.as_ref().context("this cuda backend was started without verify scratch (speculation off)")?;
        let addrs = Addrs { pools: &self.pools, v, cfg: &self.cfg };
        let pending = |row: usize, slot: usize| self.pending_copies([(row, slot)]).ok().and_then(|mut s| s.pop());
        let plan = CyclePlan::build(seqs, verify_limit, &self.limits(), &v.shape, Some(bucket), bucket, &addrs, &pending)?;
        let (table_at, seg_cap) = v.seg_area(1);
        ensure!(plan.table.len() <= seg_cap, "{} commit copies exceed the verify scratch's {seg_cap}", plan.table.len());
        let t = plan.verify.step.layout.num_tokens();
        ensure!((t + seqs.len()) * 4 <= self.s.argmax.bytes, "a cycle of {t} verify rows exceeds the greedy-token buffer");
        // The cycle's index arrays in one upload: rows | feeds | tags.
        let mut ints: Vec<i32> = Vec::with_capacity(plan.rows.len() + 2 * plan.feeds.len() + plan.tags.len());
        ints.extend(&plan.rows);
        let feeds_at = ints.len();
        ints.extend(plan.feeds.iter().flatten());
        let tags_at = ints.len();
        ints.extend(&plan.tags);
        ensure!(ints.len() * 4 <= v.cycle.bytes, "the cycle's index arrays exceed their buffer");
        let cycle = v.cycle.ptr;
        let int_at = |i: usize| cycle + (i * 4) as u64;

        // The draft (it fails without an MTP head): step j's tokens in argmax rows j * bucket + i.
        self.enqueue_draft(seqs, Some(bucket)).map_err(|e| anyhow::Error::new(DraftFailed(e)))?;
        let mtp = self.begin_verify(&verify_chunks(seqs, &plan.fed, verify_limit), &plan.verify)?;
        upload(&self.stream, cycle, &ints)?;
        upload(&self.stream, table_at, &segment_words(&plan.table))?;
        let ids = self.s.meta.at(plan.verify.step.meta.ids * 4);
        let mtp_ids = match (&mtp, &self.mtp) {
            (Some((_, img)), Some(m)) => m.buf.meta + (img.meta.ids * 4) as u64,
            _ => NULL,
        };
        self.k.spec_feed(&self.stream, self.s.argmax.ptr, int_at(feeds_at), plan.feeds.len(), ids, mtp_ids)?;
        self.launch_verify_graph(&plan.verify, bucket, &mtp)?;
        let accepted_at = self.s.argmax.at(t * 4);
        self.k.spec_accept(&self.stream, ids, self.s.argmax.ptr, cycle, seqs.len(), plan.positions, accepted_at, table_at, int_at(tags_at), plan.table.len())?;
        self.k.copy_segments(&self.stream, table_at, plan.table.len(), plan.max_copy_bytes())?;
        self.mtp_layer(&mtp)?;
        // The one read-back: the greedy token of every verify row, then each accepted length.
        let mut out = vec![0i32; t + seqs.len()];
        download(&self.stream, &mut out, self.s.argmax.ptr)?;
        let greedy = plan.verify.greedy(&out[..t])?;
        greedy
            .into_iter()
            .zip(&out[t..])
            .zip(&plan.fed)
            .map(|((greedy, &a), fed)| {
                let accepted = usize::try_from(a).ok().filter(|a| (1..=fed.len()).contains(a)).with_context(|| format!("the device accepted {a} of {} fed positions", fed.len()))?;
                Ok(Verified { greedy, accepted })
            })
            .collect()
    }
}
