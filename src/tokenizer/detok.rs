//! Streaming detokenization: turn generated ids into text deltas without ever emitting a
//! broken UTF-8 sequence.
//!
//! The usual prefix/read-offset scheme (as in HF TGI, vLLM, SGLang): keep `ids[prefix..]`,
//! decode it and `ids[prefix..read]`; when the longer text does not end in U+FFFD (an
//! incomplete multi-byte character), emit the part after the shorter one and move both
//! offsets forward. A few prompt ids give the first output token its left context (it
//! matters for decoders that strip a leading space; byte-level decoding ignores it).
//!
//! Invariant: the concatenation of every `push` delta and `finish` equals
//! `tokenizer.decode(output_ids, skip_special_tokens)`. It holds because text is only
//! emitted at a point where the decoded bytes end in a complete character, after which the
//! rest decodes independently.

use super::Tokenizer;

/// How many prompt ids are kept as left context.
const CONTEXT_TOKENS: usize = 5;
/// Drop consumed ids once this many accumulate in front of the prefix offset.
const COMPACT_AT: usize = 256;

/// Incremental decoder for one output stream.
/// The detokenization algorithm itself, over any decode function (the scheduler runs it
/// over its `Codec`): decode `ids[prefix..]` and `ids[prefix..read]`; when the longer
/// text does not end in U+FFFD, emit what follows the shorter one.
#[derive(Debug, Clone, Default)]
pub struct DetokState {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl DetokState {
    /// Starts after the last few prompt tokens (context for spacing), unless they end
    /// mid-character.
    pub fn new(prompt_ids_tail_for_context: &[u32], decode: impl Fn(&[u32]) -> String) -> Self {
        let tail = &prompt_ids_tail_for_context[prompt_ids_tail_for_context.len().saturating_sub(CONTEXT_TOKENS)..];
        let ids = if decode(tail).ends_with('\u{FFFD}') { Vec::new() } else { tail.to_vec() };
        let n = ids.len();
        DetokState { ids, prefix_offset: 0, read_offset: n }
    }

    pub fn push(&mut self, ids: &[u32], decode: impl Fn(&[u32]) -> String) -> String {
        self.ids.extend_from_slice(ids);
        self.emit(false, decode)
    }

    /// Whatever is left (an incomplete character comes out as U+FFFD).
    pub fn finish(&mut self, decode: impl Fn(&[u32]) -> String) -> String {
        self.emit(true, decode)
    }

    fn emit(&mut self, flush: bool, decode: impl Fn(&[u32]) -> String) -> String {
        let prefix_text = decode(&self.ids[self.prefix_offset..self.read_offset]);
        let new_text = decode(&self.ids[self.prefix_offset..]);
        let ready = new_text.len() > prefix_text.len()
            && (flush || !new_text.ends_with('\u{FFFD}'))
            && new_text.is_char_boundary(prefix_text.len());
        if !ready {
            return String::new();
        }
        let delta = new_text[prefix_text.len()..].to_string();
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        if self.prefix_offset >= COMPACT_AT {
            self.ids.drain(..self.prefix_offset);
            self.read_offset -= self.prefix_offset;
            self.prefix_offset = 0;
        }
        delta
    }
}

/// `DetokState` bound to a `Tokenizer`.
#[derive(Debug, Clone)]
pub struct IncrementalDetokenizer {
    tokenizer: Tokenizer,
    skip_special_tokens: bool,
    state: DetokState,
}

impl IncrementalDetokenizer {
    pub fn new(tokenizer: &Tokenizer, prompt_ids_tail_for_context: &[u32], skip_special_tokens: bool) -> Self {
        let decode = |ids: &[u32]| tokenizer.decode(ids, skip_special_tokens).unwrap_or_else(|_| "\u{FFFD}".into());
        let state = DetokState::new(prompt_ids_tail_for_context, decode);
        Self { tokenizer: tokenizer.clone(), skip_special_tokens, state }
    }

    pub fn push(&mut self, id: u32) -> String {
        self.push_all(&[id])
    }

    pub fn push_all(&mut self, ids: &[u32]) -> String {
        let (tok, skip) = (self.tokenizer.clone(), self.skip_special_tokens);
        self.state.push(ids, |x: &[u32]| tok.decode(x, skip).unwrap_or_default())
    }

    pub fn finish(&mut self) -> String {
        let (tok, skip) = (self.tokenizer.clone(), self.skip_special_tokens);
        self.state.finish(|x: &[u32]| tok.decode(x, skip).unwrap_or_default())
    }
}
