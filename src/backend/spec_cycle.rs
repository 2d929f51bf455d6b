//! A whole speculative cycle on a device with one read-back, as host logic tested without
//! a GPU. The host lays out the verify step before the drafts exist (their ids are
//! placeholders); on the device the drafts go from the draft's argmax rows into the
//! step's ids (`CyclePlan::feeds`, kernel `kiln_spec_feed`), the step runs, each
//! sequence's accepted length comes from the fed ids and the greedy tokens (`accept`,
//! the twin of `kiln_spec_accept`), and the commit is a table of the copies of every
//! candidate accepted length, each tagged with its sequence and length, of which the
//! device keeps only the accepted one's (`select`: the others get zero bytes). The host
//! reads back the greedy tokens and the accepted lengths together, once.
//!
//! Exactness is the two-call cycle's: the verify rows are the same decode rows (their
//! arithmetic never depends on the token values beside them), `accept` is
//! `accepted_len`, and the kept copies are `commit`'s for that length.

use super::speculative::{verify_chunks, DraftChunk};
use super::step::StepLimits;
use super::verify_step::{commit_one, Segment, StateAddrs, VerifyShape, VerifyStep};
use anyhow::{ensure, Result};

/// The id a draft has in the layout until the device writes it.
pub const PLACEHOLDER: u32 = 0;

/// Most sequences one cycle takes (`kiln_spec_accept` keeps their lengths in shared memory).
pub const MAX_CYCLE_SEQS: usize = 256;

/// Tag of the commit copies of sequence `i` at accepted length `a` (a < 16: positions are
/// at most the conv window).
pub fn tag(i: usize, a: usize) -> i32 {
    debug_assert!(a < 16);
    ((i << 4) | a) as i32
}

/// The host's part of one on-device cycle.
#[derive(Clone, Debug)]
pub struct CyclePlan {
    /// Each sequence's fed tokens, drafts as `PLACEHOLDER`, and the verify step of them.
    pub fed: Vec<Vec<u32>>,
    pub verify: VerifyStep,
    /// Per draft: [its index in the draft's argmax rows (step j, sequence i: j * draft_rows
    /// + i), its verify row].
    pub feeds: Vec<[i32; 2]>,
    /// [sequence][positions]: the verify row of each fed position, -1 past the last.
    pub rows: Vec<i32>,
    pub positions: usize,
    /// Every candidate accepted length's commit copies, and their tags.
    pub table: Vec<Segment>,
    pub tags: Vec<i32>,
}

impl CyclePlan {
    /// The cycle of `chunks` (each drafts `steps` tokens from `next` at `pos`); greedy
    /// tokens below `verify_limit`; the draft leaves step j's token of sequence i in argmax
    /// row `j * draft_rows + i`. `pending(row, slot)` is the copy that makes a verify row's
    /// hidden state its slot's pending MTP state (None without an MTP head).
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        chunks: &[DraftChunk<'_>],
        verify_limit: usize,
        lim: &StepLimits,
        shape: &VerifyShape,
        pad: Option<usize>,
        draft_rows: usize,
        addrs: &impl StateAddrs,
        pending: &dyn Fn(usize, usize) -> Option<Segment>,
    ) -> Result<CyclePlan> {
        ensure!(chunks.len() <= MAX_CYCLE_SEQS, "{} sequences in one speculative cycle; at most {MAX_CYCLE_SEQS}", chunks.len());
        ensure!(chunks.len() <= draft_rows, "{} sequences but the draft has {draft_rows} rows per step", chunks.len());
        let fed: Vec<Vec<u32>> = chunks.iter().map(|c| std::iter::once(c.next).chain(std::iter::repeat_n(PLACEHOLDER, c.steps)).collect()).collect();
        let vchunks = verify_chunks(chunks, &fed, verify_limit);
        let verify = VerifyStep::build(&vchunks, lim, shape, pad)?;
        let positions = fed.iter().map(Vec::len).max().unwrap_or(1);
        ensure!(positions < 16, "{positions} positions per sequence; a cycle tags at most 15");
        let mut rows = vec![-1i32; chunks.len() * positions];
        let mut feeds = Vec::new();
        for (i, rs) in verify.rows.iter().enumerate() {
            for (q, &r) in rs.iter().enumerate() {
                rows[i * positions + q] = r as i32;
                if q > 0 {
                    feeds.push([((q - 1) * draft_rows + i) as i32, r as i32]);
                }
            }
        }
        let (mut table, mut tags) = (Vec::new(), Vec::new());
        for (i, c) in vchunks.iter().enumerate() {
            for a in 1..=c.tokens.len() {
                let mut segs = commit_one(i, c, a, shape, addrs)?;
                segs.extend(pending(verify.rows[i][a - 1], c.slot));
                tags.extend(std::iter::repeat_n(tag(i, a), segs.len()));
                table.extend(segs);
            }
        }
        Ok(CyclePlan { fed, verify, feeds, rows, positions, table, tags })
    }

    /// Most bytes one table copy moves (the copy launch's size).
    pub fn max_copy_bytes(&self) -> usize {
        self.table.iter().map(|s| s.bytes as usize).max().unwrap_or(0)
    }
}

/// The twin of `kiln_spec_accept`'s first half: sequence i's accepted length from the
/// step's ids and the greedy token of every row (`accepted_len` over `rows`).
pub fn accept(rows: &[i32], positions: usize, ids: &[i32], greedy: &[i32]) -> Vec<usize> {
    rows.chunks(positions)
        .map(|r| {
            let mut a = 1;
            while a < positions && r[a] >= 0 && ids[r[a] as usize] == greedy[r[a - 1] as usize] {
                a += 1;
            }
            a
        })
        .collect()
}

/// The twin of `kiln_spec_accept`'s second half: the table with every copy whose tag is
/// not its sequence's accepted length emptied.
pub fn select(table: &[Segment], tags: &[i32], accepted: &[usize]) -> Vec<Segment> {
    table
        .iter()
        .zip(tags)
        .map(|(s, &t)| if accepted[(t >> 4) as usize] == (t & 15) as usize { *s } else { Segment { bytes: 0, ..*s } })
        .collect()
}

#[cfg(test)]
#[path = "spec_cycle_tests.rs"]
mod tests;
