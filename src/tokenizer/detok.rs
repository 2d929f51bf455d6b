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
#[derive(Debug, Clone)]
pub struct IncrementalDetokenizer {
    tokenizer: Tokenizer,
    skip_special_tokens: bool,
    ids: Vec<u32>,
    /// Start of the ids decoded for context.
    prefix_offset: usize,
    /// Everything before this has been emitted.
    read_offset: usize,
}

impl IncrementalDetokenizer {
    /// `prompt_ids_tail_for_context`: the prompt (or its last few ids); only the last
    /// `CONTEXT_TOKENS` are kept, and none if they end inside a multi-byte character.
    pub fn new(tokenizer: &Tokenizer, prompt_ids_tail_for_context: &[u32], skip_special_tokens: bool) -> Self {
        let tail = &prompt_ids_tail_for_context[prompt_ids_tail_for_context.len().saturating_sub(CONTEXT_TOKENS)..];
        let ctx_ok = tokenizer
            .decode(tail, skip_special_tokens)
            .map(|t| !t.ends_with('\u{FFFD}'))
            .unwrap_or(false);
        let ids = if ctx_ok { tail.to_vec() } else { Vec::new() };
        let n = ids.len();
        Self { tokenizer: tokenizer.clone(), skip_special_tokens, ids, prefix_offset: 0, read_offset: n }
    }

    fn decode(&self, ids: &[u32]) -> String {
        // Byte-level decoding cannot fail; an error would mean an unusable tokenizer, for
        // which an empty delta is the least harmful answer in a stream.
        self.tokenizer.decode(ids, self.skip_special_tokens).unwrap_or_default()
    }

    /// Text completed since the previous call, given when it is certain not to change; may
    /// be empty (e.g. while a multi-byte character is split across tokens).
    pub fn push(&mut self, id: u32) -> String {
        self.ids.push(id);
        self.emit(false)
    }

    /// Pushes several ids; returns the combined delta.
    pub fn push_all(&mut self, ids: &[u32]) -> String {
        self.ids.extend_from_slice(ids);
        self.emit(false)
    }

    /// Everything not emitted yet, including an incomplete trailing character (as U+FFFD,
    /// exactly as `decode` renders it). Call once at the end of the stream.
    pub fn finish(&mut self) -> String {
        self.emit(true)
    }

    fn emit(&mut self, flush: bool) -> String {
        let prefix_text = self.decode(&self.ids[self.prefix_offset..self.read_offset]);
        let new_text = self.decode(&self.ids[self.prefix_offset..]);
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
