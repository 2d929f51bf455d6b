//! What the speculative-decoding calls of the `Backend` trait exchange (MTP drafts and
//! their verification), and the greedy acceptance rule every backend applies.
//!
//! A cycle for one sequence whose slot holds `n` tokens and whose next token `x_n` is
//! already sampled: `draft` proposes `d_1..d_k` with the MTP head; `verify` feeds
//! `[x_n, d_1..d_k]` at positions `n..=n+k`, each position computed exactly like a
//! single-token decode step, takes the greedy token `g_i` of every position, accepts the
//! longest prefix with `d_{i+1} == g_i` plus one more token, and leaves the slot as if only
//! the accepted `a` tokens `x_n, d_1..d_{a-1}` had been decoded (GDN state, conv window,
//! KV). The tokens emitted are `g_0..g_{a-1}`, exactly what plain greedy decoding gives.

/// One sequence's share of a `draft` call.
#[derive(Clone, Debug)]
pub struct DraftChunk<'a> {
    pub slot: usize,
    /// Tokens the slot holds (the position of `next`).
    pub pos: usize,
    /// The sampled token at `pos`, not yet fed to the main model.
    pub next: u32,
    /// Draft tokens wanted (chained MTP steps), at least 1.
    pub steps: usize,
    /// KV blocks of the sequence (the MTP layer's cache is indexed like the main one).
    pub blocks: &'a [u32],
    /// Drafts are argmaxes over ids below this (the tokenizer's vocabulary).
    pub limit: usize,
}

/// One sequence's share of a `verify` call: `tokens[0]` is the sampled token at
/// `start_pos`, `tokens[1..]` the drafts to check.
#[derive(Clone, Debug)]
pub struct VerifyChunk<'a> {
    pub slot: usize,
    pub start_pos: usize,
    pub tokens: &'a [u32],
    /// KV blocks covering `start_pos + tokens.len()` positions.
    pub blocks: &'a [u32],
    /// Greedy tokens are argmaxes over ids below this.
    pub limit: usize,
}

/// The outcome of verifying one sequence.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verified {
    /// The greedy token after each verified position (`tokens.len()` of them).
    pub greedy: Vec<u32>,
    /// Tokens kept in the slot (1 ..= tokens.len()); `greedy[..accepted]` are the new
    /// output tokens.
    pub accepted: usize,
}

impl Verified {
    /// The output tokens of this cycle: the accepted drafts plus the bonus token.
    pub fn emitted(&self) -> &[u32] {
        &self.greedy[..self.accepted]
    }
}

/// The error of a backend without speculation (the trait's default).
pub const NOT_SUPPORTED: &str = "speculation not supported by this backend";

/// The error of a cycle whose draft failed: only the MTP head's state was touched, so the
/// sequences can go on decoding plainly.
#[derive(Debug)]
pub struct DraftFailed(pub anyhow::Error);

impl std::fmt::Display for DraftFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the MTP draft failed: {:#}", self.0)
    }
}

impl std::error::Error for DraftFailed {}

/// `Backend::speculate` as two calls: `draft`, then `verify` of each sequence's sampled
/// token and its drafts.
pub fn draft_then_verify<B: super::Backend + ?Sized>(b: &mut B, seqs: &[DraftChunk<'_>], verify_limit: usize) -> anyhow::Result<Vec<Verified>> {
    let drafts = b.draft(seqs).map_err(|e| anyhow::Error::new(DraftFailed(e)))?;
    anyhow::ensure!(
        drafts.len() == seqs.len() && drafts.iter().zip(seqs).all(|(d, c)| d.len() == c.steps),
        DraftFailed(anyhow::anyhow!("the draft returned the wrong number of tokens"))
    );
    let fed: Vec<Vec<u32>> = seqs.iter().zip(drafts).map(|(c, d)| std::iter::once(c.next).chain(d).collect()).collect();
    b.verify(&verify_chunks(seqs, &fed, verify_limit))
}

/// The verify chunks of a cycle whose fed tokens (the sampled token and the drafts) are
/// `fed`.
pub fn verify_chunks<'a>(chunks: &[DraftChunk<'a>], fed: &'a [Vec<u32>], limit: usize) -> Vec<VerifyChunk<'a>> {
    chunks.iter().zip(fed).map(|(c, f)| VerifyChunk { slot: c.slot, start_pos: c.pos, tokens: f, blocks: c.blocks, limit }).collect()
}

/// Tokens kept after verifying `fed = [x_n, d_1..d_k]` whose greedy tokens are `greedy`:
/// 1 + the length of the longest prefix of drafts with `d_{i+1} == greedy[i]`.
pub fn accepted_len(fed: &[u32], greedy: &[u32]) -> usize {
    assert_eq!(fed.len(), greedy.len(), "one greedy token per verified position");
    assert!(!fed.is_empty(), "a verify feeds at least the sampled token");
    1 + fed[1..].iter().zip(greedy).take_while(|(d, g)| d == g).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acceptance_is_the_matching_prefix_plus_the_bonus_token() {
        // fed = [x, d1, d2, d3]; greedy = [g0, g1, g2, g3].
        assert_eq!(accepted_len(&[9, 1, 2, 3], &[1, 2, 3, 4]), 4); // all drafts right
        assert_eq!(accepted_len(&[9, 1, 2, 3], &[1, 2, 7, 4]), 3); // d3 wrong
        assert_eq!(accepted_len(&[9, 1, 2, 3], &[5, 2, 3, 4]), 1); // d1 wrong: later matches do not count
        assert_eq!(accepted_len(&[9], &[4]), 1); // no drafts: a plain decode step
        let v = Verified { greedy: vec![1, 2, 7, 4], accepted: 3 };
        assert_eq!(v.emitted(), &[1, 2, 7]);
    }
}
