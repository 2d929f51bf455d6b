//! Structured output: a request's grammar (JSON schema, JSON object, regex, Lark/EBNF)
//! turned into a token mask per step by `llguidance`, on the CPU.
//!
//! [`GrammarEngine`] is built once per tokenizer (the byte string of every token id in a
//! token trie); [`GrammarEngine::compile`] checks a grammar when the request arrives (a
//! bad schema is the client's error); each sequence's sampler then owns a
//! [`GrammarMatcher`]: before a token is sampled, [`GrammarMatcher::mask_logits`] sets
//! every token the grammar forbids to -inf; after, [`GrammarMatcher::accept`] advances it.
//! When the grammar is complete only EOS is allowed, so the request stops there. A
//! greedy request hands the mask itself ([`GrammarMatcher::mask_words`]) to the backend,
//! which takes the argmax over the allowed ids on the device (no vocabulary-sized copy
//! per token); other requests mask host logits.

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory, TokenParser};
use std::sync::Arc;

/// What a request constrains its output to.
#[derive(Clone, Debug, PartialEq)]
pub enum GrammarSpec {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// A JSON schema (`response_format` json_schema, SGLang `json_schema`).
    JsonSchema(serde_json::Value),
    /// A regular expression the whole output must match (SGLang `regex`).
    Regex(String),
    /// A grammar in llguidance's Lark syntax (SGLang `ebnf`, after [`ebnf_to_lark`]).
    Lark(String),
}

/// JSON is written with `", "` / `": "` and no other whitespace unless the schema sets
/// its own `x-guidance` options: with free whitespace a model (a random one certainly)
/// can pad forever between tokens without ever closing the object.
fn with_json_layout(schema: &serde_json::Value) -> serde_json::Value {
    let mut schema = schema.clone();
    if let Some(obj) = schema.as_object_mut() {
        obj.entry("x-guidance").or_insert_with(|| {
            serde_json::json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
        });
    }
    schema
}

impl GrammarSpec {
    fn top_level(&self) -> TopLevelGrammar {
        match self {
            GrammarSpec::JsonObject => TopLevelGrammar::from_json_schema(with_json_layout(&serde_json::json!({"type": "object"}))),
            GrammarSpec::JsonSchema(s) => TopLevelGrammar::from_json_schema(with_json_layout(s)),
            GrammarSpec::Regex(r) => TopLevelGrammar::from_regex(r),
            GrammarSpec::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
        }
    }
}

/// SGLang's `ebnf` uses GBNF-style rules (`root ::= "a" b`, `#` comments, hyphenated
/// names); llguidance reads Lark. This rewrites the rule syntax (`::=` -> `:`, `-` ->
/// `_` in rule names, `#` comment lines dropped, `[a-z]` -> `/[a-z]/`) and starts at
/// `root`; strings, grouping and repetition operators are the same in both.
pub fn ebnf_to_lark(ebnf: &str) -> String {
    let mut out = String::from("start: root\n");
    for line in ebnf.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('#') {
            continue;
        }
        match line.split_once("::=") {
            Some((name, body)) if !name.contains('"') => {
                out.push_str(&name.trim().replace('-', "_"));
                out.push_str(": ");
                out.push_str(&rename_refs(body.trim_start()));
            }
            _ => out.push_str(&rename_refs(line)),
        }
        out.push('\n');
    }
    out
}

/// Hyphens inside rule references (outside quotes and classes) become underscores;
/// character classes `[...]` become Lark regexes `/[...]/`.
fn rename_refs(body: &str) -> String {
    let mut out = String::with_capacity(body.len());
    let (mut quote, mut class, mut prev) = (false, false, ' ');
    for c in body.chars() {
        match c {
            '"' if !class && prev != '\\' => quote = !quote,
            '[' if !quote && !class => {
                class = true;
                out.push('/');
            }
            _ => {}
        }
        let in_name = !quote && !class && c == '-' && (prev.is_alphanumeric() || prev == '_');
        out.push(if in_name { '_' } else { c });
        if c == ']' && class && prev != '\\' {
            class = false;
            out.push('/');
        }
        prev = c;
    }
    out
}

/// The tokenizer's own encoding of a text (no special tokens added).
pub type TokenizeFn = Box<dyn Fn(&str) -> Vec<u32> + Send + Sync>;

/// The tokenizer as llguidance sees it: the token trie and an exact tokenize function.
struct Env {
    trie: TokTrie,
    tokenize: TokenizeFn,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        (self.tokenize)(&String::from_utf8_lossy(s))
    }
}

/// Compiles grammars for one tokenizer. Build once (the trie covers the whole vocabulary).
pub struct GrammarEngine {
    factory: Arc<ParserFactory>,
}

impl std::fmt::Debug for GrammarEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrammarEngine")
    }
}

impl GrammarEngine {
    /// `token_bytes[id]`: what token `id` writes (special tokens prefixed with 0xFF, as
    /// llguidance marks them; empty for unused ids); `eos`: the token that ends output;
    /// `tokenize`: the tokenizer's own encoding of a text (no special tokens added).
    pub fn new(token_bytes: Vec<Vec<u8>>, eos: u32, tokenize: TokenizeFn) -> anyhow::Result<Self> {
        let info = TokRxInfo::new(token_bytes.len() as u32, eos);
        let env: TokEnv = Arc::new(Env { trie: TokTrie::from(&info, &token_bytes), tokenize });
        let mut factory = ParserFactory::new_simple(&env)?;
        factory.set_stderr_log_level(0);
        Ok(GrammarEngine { factory: Arc::new(factory) })
    }

    /// Checks and compiles `spec`; the error says what is wrong with the grammar.
    pub fn compile(&self, spec: &GrammarSpec) -> Result<Grammar, String> {
        let parser = self.factory.create_parser(spec.top_level()).map_err(|e| format!("{e:#}"))?;
        Ok(Grammar { spec: spec.clone(), parser: Arc::new(parser) })
    }
}

/// A compiled grammar, shared by the sequences of a request (each gets a fresh matcher).
#[derive(Clone)]
pub struct Grammar {
    spec: GrammarSpec,
    parser: Arc<TokenParser>,
}

impl Grammar {
    pub fn spec(&self) -> &GrammarSpec {
        &self.spec
    }
    /// A matcher at the start of the output.
    pub fn matcher(&self) -> GrammarMatcher {
        GrammarMatcher { inner: Matcher::new(Ok(self.parser.deep_clone())), eos: self.parser.token_env.tok_trie().eos_token() }
    }
}

impl std::fmt::Debug for Grammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Grammar").field(&self.spec).finish()
    }
}

impl PartialEq for Grammar {
    fn eq(&self, other: &Self) -> bool {
        self.spec == other.spec
    }
}

/// One sequence's position in its grammar.
pub struct GrammarMatcher {
    inner: Matcher,
    eos: u32,
}

impl std::fmt::Debug for GrammarMatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarMatcher").field("stopped", &self.inner.is_stopped()).finish()
    }
}

impl Clone for GrammarMatcher {
    fn clone(&self) -> Self {
        GrammarMatcher { inner: self.inner.deep_clone(), eos: self.eos }
    }
}

impl GrammarMatcher {
    /// The tokens the grammar allows now, as bitmask words (bit `id % 32` of word
    /// `id / 32`; ids past the last word are forbidden). Once the grammar is complete,
    /// or if the matcher failed, only EOS is allowed, so the output ends.
    pub fn mask_words(&mut self) -> Vec<u32> {
        match self.inner.compute_mask_or_eos() {
            Ok(mask) => mask.as_slice().to_vec(),
            Err(_) => {
                let mut words = vec![0u32; self.eos as usize / 32 + 1];
                words[self.eos as usize / 32] = 1 << (self.eos % 32);
                words
            }
        }
    }

    /// Sets every logit the grammar forbids now (`mask_words`) to -inf.
    pub fn mask_logits(&mut self, logits: &mut [f32]) {
        let words = self.mask_words();
        for (id, x) in logits.iter_mut().enumerate() {
            if !crate::backend::mask_allows(&words, id) {
                *x = f32::NEG_INFINITY;
            }
        }
    }

    /// Advances past a sampled token. A token the grammar rejects (only possible if the
    /// mask was not applied) puts the matcher in its error state, which allows only EOS.
    pub fn accept(&mut self, token: u32) {
        if !self.inner.is_stopped() {
            let _ = self.inner.consume_token(token);
        }
    }

    /// Whether the output so far is a complete match (EOS is allowed).
    pub fn is_complete(&mut self) -> bool {
        self.inner.is_stopped() || self.inner.is_accepting().unwrap_or(false)
    }
}

/// An engine over a byte-level vocabulary (ids 0..256 are bytes, 256 is EOS), for tests.
#[cfg(test)]
pub(crate) fn byte_level_engine() -> GrammarEngine {
    let mut bytes: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    bytes.push(b"\xff<eos>".to_vec());
    GrammarEngine::new(bytes, 256, Box::new(|s: &str| s.bytes().map(u32::from).collect())).unwrap()
}

#[cfg(test)]
#[path = "grammar_tests.rs"]
mod tests;
