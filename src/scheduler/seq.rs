//! One request's state inside the scheduler.

use super::request::{GenRequest, Output, TokenLogprob};
use super::speculative::SpecCounts;
use super::text::{Detok, StopStrings};
use crate::sampling::{LogprobWant, Sampler};
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

/// One request inside the scheduler.
pub(crate) struct Seq {
    pub(crate) id: u64,
    pub(crate) req: GenRequest,
    pub(crate) tx: UnboundedSender<Output>,
    /// Prompt followed by the generated tokens.
    pub(crate) tokens: Vec<u32>,
    pub(crate) prompt_len: usize,
    /// Tokens already in the slot's state (the next chunk starts here).
    pub(crate) fed: usize,
    pub(crate) slot: Option<usize>,
    pub(crate) blocks: Vec<u32>,
    pub(crate) max_new: usize,
    pub(crate) sampler: Sampler,
    pub(crate) detok: Detok,
    pub(crate) stopper: StopStrings,
    pub(crate) lp_want: LogprobWant,
    /// Prompt logprobs: still to compute (first pass only), and those gathered so far.
    pub(crate) input_lp_pending: bool,
    pub(crate) input_lp: Vec<TokenLogprob>,
    pub(crate) first_token_at: Option<Instant>,
    pub(crate) last_token_at: Option<Instant>,
    pub(crate) ever_admitted: bool,
    // Prefix cache.
    /// Tokens the last admission took from the cache.
    pub(crate) cached_tokens: usize,
    /// Tokens held at the last admission: states up to here come from prefill alone.
    pub(crate) prefill_end: usize,
    /// The cache node whose path this sequence holds locked (None: cache off or not running).
    pub(crate) cache_node: Option<super::prefix_cache::NodeId>,
    /// Speculative decoding counters (meta_info's spec_* fields).
    pub(crate) spec: SpecCounts,
}

impl Seq {
    pub(crate) fn out_len(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }
    /// Positions whose logits rows give prompt logprobs: [lo, hi] inclusive.
    pub(crate) fn input_lp_rows(&self) -> Option<(usize, usize)> {
        if !self.input_lp_pending || self.prompt_len < 2 {
            return None;
        }
        let lo = input_lp_start(&self.req, self.prompt_len);
        let hi = self.prompt_len - 2;
        (lo <= hi).then_some((lo, hi))
    }
}

pub(crate) fn input_lp_start(req: &GenRequest, prompt_len: usize) -> usize {
    let s = req.logprobs.start_len;
    if s < 0 { prompt_len - 1 } else { (s as usize).min(prompt_len - 1) }
}
