//! The text side the scheduler and server need from a tokenizer, as a trait so tests can
//! run the whole stack on a tiny byte-level codec. `kiln::tokenizer::Tokenizer` is the
//! real implementation.

use anyhow::Result;
use serde_json::{Map, Value};

pub use crate::tokenizer::Bounded;

pub trait Codec: Send + Sync + 'static {
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>>;
    /// `encode` for untrusted text: more than `max_tokens` tokens is `TooLong`. The real
    /// tokenizer finds that out without tokenizing the whole text.
    fn encode_within(&self, text: &str, add_special_tokens: bool, max_tokens: usize) -> Result<Bounded> {
        let ids = self.encode(text, add_special_tokens)?;
        Ok(if ids.len() > max_tokens { Bounded::TooLong { tokens: ids.len(), exact: true } } else { Bounded::Ids(ids) })
    }
    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String>;
    /// Valid ids are `0..vocab_size()`; logits rows beyond are padding and never sampled.
    fn vocab_size(&self) -> usize;
    /// The tokenizer's EOS ids (the server unions them with the model config's).
    fn eos_token_ids(&self) -> Vec<u32>;
    /// Renders a chat with the model's template and the generation prompt appended.
    fn render_chat(&self, messages: &Value, tools: Option<&Value>, kwargs: &Map<String, Value>) -> Result<String>;
    /// What each token id writes, as bytes (special tokens prefixed with 0xFF), for the
    /// structured-output grammar engine; `None` if this codec cannot say.
    fn token_bytes(&self) -> Option<Vec<Vec<u8>>> {
        None
    }
}

impl Codec for crate::tokenizer::Tokenizer {
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        crate::tokenizer::Tokenizer::encode(self, text, add_special_tokens)
    }
    fn encode_within(&self, text: &str, add_special_tokens: bool, max_tokens: usize) -> Result<Bounded> {
        crate::tokenizer::Tokenizer::encode_within(self, text, add_special_tokens, max_tokens)
    }
    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        crate::tokenizer::Tokenizer::decode(self, ids, skip_special_tokens)
    }
    fn vocab_size(&self) -> usize {
        crate::tokenizer::Tokenizer::vocab_size(self)
    }
    fn eos_token_ids(&self) -> Vec<u32> {
        crate::tokenizer::Tokenizer::eos_token_ids(self).to_vec()
    }
    fn render_chat(&self, messages: &Value, tools: Option<&Value>, kwargs: &Map<String, Value>) -> Result<String> {
        self.apply_chat_template(messages, tools, true, kwargs)
    }
    fn token_bytes(&self) -> Option<Vec<Vec<u8>>> {
        crate::tokenizer::Tokenizer::token_bytes(self).ok()
    }
}

/// A tokenizer served with another chat template (`--chat-template FILE`).
pub struct WithTemplate {
    pub tokenizer: crate::tokenizer::Tokenizer,
    pub template: crate::tokenizer::ChatTemplate,
}

impl Codec for WithTemplate {
    fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.tokenizer.encode(text, add_special_tokens)
    }
    fn encode_within(&self, text: &str, add_special_tokens: bool, max_tokens: usize) -> Result<Bounded> {
        self.tokenizer.encode_within(text, add_special_tokens, max_tokens)
    }
    fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.tokenizer.decode(ids, skip_special_tokens)
    }
    fn vocab_size(&self) -> usize {
        self.tokenizer.vocab_size()
    }
    fn eos_token_ids(&self) -> Vec<u32> {
        self.tokenizer.eos_token_ids().to_vec()
    }
    fn render_chat(&self, messages: &Value, tools: Option<&Value>, kwargs: &Map<String, Value>) -> Result<String> {
        self.template.render(messages, tools, true, kwargs)
    }
    fn token_bytes(&self) -> Option<Vec<Vec<u8>>> {
        self.tokenizer.token_bytes().ok()
    }
}
