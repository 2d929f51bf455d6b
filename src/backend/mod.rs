//! The backend trait: what the scheduler asks of a device. One implementation per
//! device kind (`cpu` is the f32 reference; `cuda` is the engine). The scheduler owns
//! slot and KV-block bookkeeping; a backend owns the memory behind them.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod forced_draft;
pub mod mtp_rows;
pub mod spec_cycle;
pub mod speculative;
pub mod step;
pub mod verify_check;
pub mod verify_step;
pub mod weight_pack;

use crate::config::ModelConfig;
use anyhow::{bail, Result};
pub use speculative::{DraftChunk, Verified, VerifyChunk};

/// A backend's handle to a saved sequence state (see `Backend::snapshot_state`).
pub type SnapshotId = u64;

/// What a backend can hold at once, fixed at start-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Per-sequence state slots (Gated DeltaNet recurrent + conv state).
    pub slots: usize,
    /// Tokens per paged KV block of the full-attention layers.
    pub block_size: usize,
    /// KV blocks in the pool (shared by all slots).
    pub kv_blocks: usize,
    /// Longest sequence (prompt + output) one slot may reach.
    pub max_seq_len: usize,
}

/// Which logits a chunk wants back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Nothing (an intermediate prefill chunk).
    Nothing,
    /// Logits of the chunk's last position.
    Last,
    /// Logits of every position of the chunk (prompt logprobs).
    All,
    /// Only the greedy token of the chunk's last position: the argmax over ids below
    /// `limit` (the padding rows of the vocabulary never win; the first index wins ties).
    /// Lets a device backend skip copying a vocabulary-sized row to the host.
    Argmax { limit: usize },
}

/// One sequence's share of a step: `tokens` continue the sequence in `slot` at
/// position `start_pos` (the number of tokens the slot has already seen).
#[derive(Clone, Debug)]
pub struct SeqChunk<'a> {
    pub slot: usize,
    pub start_pos: usize,
    pub tokens: &'a [u32],
    /// KV blocks owned by this sequence, in order; covers start_pos + tokens.len().
    pub blocks: &'a [u32],
    pub want: Want,
    /// A token mask for `Want::Argmax` (structured output): bit `id % 32` of word
    /// `id / 32` set = token `id` allowed (llguidance's layout); ids past the last word
    /// are not allowed. The result is then the argmax over the allowed ids below `limit`
    /// with the unmasked argmax's rules (first index wins ties, NaN never wins; an
    /// allowed `-inf` still beats nothing), 0 when no allowed id below `limit` has a
    /// non-NaN value. A mask on any other `Want` is an error.
    pub allowed: Option<&'a [u32]>,
}

/// Whether token `id` is allowed by a `SeqChunk::allowed` mask.
pub fn mask_allows(mask: &[u32], id: usize) -> bool {
    mask.get(id / 32).is_some_and(|w| w >> (id % 32) & 1 == 1)
}

impl SeqChunk<'_> {
    /// Rejects a token mask on a chunk that does not want its argmax.
    pub fn check_mask(&self) -> Result<()> {
        if self.allowed.is_some() && !matches!(self.want, Want::Argmax { .. }) {
            bail!("slot {}: a token mask needs Want::Argmax, not {:?}", self.slot, self.want);
        }
        Ok(())
    }
}

/// Logits for one chunk: `rows` rows of `vocab` f32 each (0, 1 or tokens.len() rows),
/// and for `Want::Argmax` the greedy token (a backend may then return no rows).
#[derive(Clone, Debug, Default)]
pub struct ChunkLogits {
    pub rows: usize,
    pub data: Vec<f32>,
    pub argmax: Option<u32>,
}

impl ChunkLogits {
    pub fn row(&self, i: usize) -> &[f32] {
        let v = self.data.len() / self.rows.max(1);
        &self.data[i * v..(i + 1) * v]
    }
    pub fn last(&self) -> Option<&[f32]> {
        (self.rows > 0).then(|| self.row(self.rows - 1))
    }
}

pub trait Backend: Send {
    fn name(&self) -> &'static str;
    fn config(&self) -> &ModelConfig;
    fn capacity(&self) -> Capacity;
    /// Runs one step over several sequences (prefill chunks and decode tokens mixed).
    /// Chunks name distinct slots. Returns one `ChunkLogits` per chunk, in order.
    fn forward(&mut self, chunks: &[SeqChunk<'_>]) -> Result<Vec<ChunkLogits>>;
    /// Clears a slot's recurrent state so a new sequence can start in it.
    fn reset_slot(&mut self, slot: usize) -> Result<()>;

    // ---- prefix cache: state snapshots (a backend without them has no prefix cache) ----

    /// How many snapshots the backend can hold at once; 0 turns the prefix cache off.
    fn snapshot_capacity(&self) -> usize {
        0
    }
    /// Saves the state `slot` holds now, between steps: the Gated DeltaNet fp32
    /// recurrent state and conv window of every linear layer, and the token count. (Full
    /// attention KV stays in the slot's KV blocks, which the scheduler shares.)
    fn snapshot_state(&mut self, slot: usize) -> Result<SnapshotId> {
        bail!("the {} backend does not support state snapshots (prefix caching); slot {slot} was not saved", self.name())
    }
    /// Makes `slot` continue from `snapshot`, as if it had just run that many tokens; the
    /// snapshot stays. The chunks that follow name the shared KV blocks of the prefix.
    fn restore_state(&mut self, snapshot: SnapshotId, slot: usize) -> Result<()> {
        bail!("the {} backend does not support state snapshots (prefix caching); cannot restore {snapshot} into slot {slot}", self.name())
    }
    /// Frees a snapshot.
    fn drop_snapshot(&mut self, snapshot: SnapshotId) -> Result<()> {
        bail!("the {} backend does not support state snapshots (prefix caching); cannot drop {snapshot}", self.name())
    }

    // ---- speculative decoding (MTP); see `speculative.rs`. A backend without it keeps
    // these defaults, and the scheduler never calls `draft`/`verify` on it. ----

    /// Whether `draft` and `verify` work (the model has an MTP head and the backend runs it).
    fn supports_speculation(&self) -> bool {
        false
    }
    /// Stops running the MTP head for good (`--speculative-algorithm auto` decided against
    /// speculation): forward steps stop keeping its KV and `supports_speculation` turns
    /// false. A backend without one has nothing to stop.
    fn stop_speculation(&mut self) -> Result<()> {
        Ok(())
    }
    /// Proposes `steps` draft tokens per sequence with the MTP head (chained), after
    /// bringing the MTP layer's KV cache up to the sequence's position. Leaves the main
    /// model's state untouched.
    fn draft(&mut self, _seqs: &[DraftChunk<'_>]) -> Result<Vec<Vec<u32>>> {
        bail!(speculative::NOT_SUPPORTED)
    }
    /// Most sequences one `verify` call takes (the scheduler speculates with at most this
    /// many per step; the rest decode plainly beside them).
    fn max_verify_rows(&self) -> usize {
        usize::MAX
    }
    /// Verifies drafts: every position computes exactly as a single-token decode step;
    /// keeps the accepted tokens in each slot and discards the rest (see `Verified`).
    fn verify(&mut self, _seqs: &[VerifyChunk<'_>]) -> Result<Vec<Verified>> {
        bail!(speculative::NOT_SUPPORTED)
    }
    /// One whole cycle per sequence: `draft` `steps` tokens, then `verify` the sampled
    /// token and its drafts with greedy tokens below `verify_limit` (what the scheduler
    /// runs). A device backend may run it without the host in between; this default
    /// makes the two calls. A failed draft (the main model untouched) is a
    /// `speculative::DraftFailed`.
    fn speculate(&mut self, seqs: &[DraftChunk<'_>], verify_limit: usize) -> Result<Vec<Verified>> {
        speculative::draft_then_verify(self, seqs, verify_limit)
    }
}
