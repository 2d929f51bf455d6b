//! Tokenizer, incremental detokenizer and chat template for Qwen3.5.
//!
//! A checkpoint's own `tokenizer.json` is loaded through the `tokenizers` crate (never
//! rebuilt); `tokenizer_config.json`, `config.json` and `generation_config.json` supply the
//! extra added tokens, the EOS ids and the chat template, as Hugging Face and SGLang read
//! them. [`Tokenizer::bundled`] embeds `assets/qwen3_5/` (see its README) for tests and
//! the demo model.
//!
//! Files: `mod.rs` (this: loading, encode/decode), `bounded.rs` (token-count bound, encoding with a limit), `files.rs` (side-file parsing), `load.rs` (fast tokenizer.json parsing),
//! `detok.rs` (streaming detokenizer), `chat.rs` (template rendering), `pycompat.rs`
//! (Python behaviour for templates: methods, `str()`), `pyjson.rs` (`tojson`), `pytime.rs` (`strftime_now`).

mod bounded;
mod chat;
mod detok;
mod files;
mod load;
mod pycompat;
mod pyjson;
mod pytime;

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value as Json};
use tokenizers::AddedToken;

pub use bounded::{Bounded, MAX_UNCUT_BYTES};
pub use chat::{ChatTemplate, ChatTemplateError};
pub use detok::{DetokState, IncrementalDetokenizer};

pub(crate) const BUNDLED_TOKENIZER_JSON: &[u8] = include_bytes!("../../assets/qwen3_5/tokenizer.json");
const BUNDLED_TOKENIZER_CONFIG: &str = include_str!("../../assets/qwen3_5/tokenizer_config.json");
const BUNDLED_CHAT_TEMPLATE: &str = include_str!("../../assets/qwen3_5/chat_template.jinja");

/// A loaded tokenizer with its EOS ids and chat template. Cheap to clone (`Arc`),
/// `Send + Sync`.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

struct Inner {
    hf: tokenizers::Tokenizer,
    eos_token_ids: Vec<u32>,
    chat_template: Option<ChatTemplate>,
    vocab_size: usize,
    /// Worked out on first use (it scans the vocabulary).
    bound: std::sync::OnceLock<bounded::TextBound>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.inner.vocab_size)
            .field("eos_token_ids", &self.inner.eos_token_ids)
            .field("chat_template", &self.inner.chat_template.is_some())
            .finish()
    }
}

fn read_json_opt(path: &Path) -> Result<Option<Json>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes).with_context(|| format!("{} is not valid JSON", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

impl Tokenizer {
    /// Loads a Hugging Face model directory: `tokenizer.json` (required),
    /// `tokenizer_config.json`, `config.json`, `generation_config.json` and
    /// `chat_template.jinja` (each optional; `chat_template.jinja` takes precedence over
    /// `tokenizer_config.json` `chat_template`, as in transformers).
    pub fn from_dir(model_dir: &Path) -> Result<Self> {
        let tj = model_dir.join("tokenizer.json");
        let bytes = std::fs::read(&tj).with_context(|| {
            format!("cannot read {} (a Qwen3.5 checkpoint ships tokenizer.json)", tj.display())
        })?;
        let tok_cfg = read_json_opt(&model_dir.join("tokenizer_config.json"))?;
        let config = read_json_opt(&model_dir.join("config.json"))?;
        let gen = read_json_opt(&model_dir.join("generation_config.json"))?;
        let jinja = model_dir.join("chat_template.jinja");
        let template = match std::fs::read_to_string(&jinja) {
            Ok(s) => Some(s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", jinja.display())),
        };
        Self::from_parts(&bytes, tok_cfg.as_ref(), config.as_ref(), gen.as_ref(), template)
            .with_context(|| format!("loading the tokenizer of {}", model_dir.display()))
    }

    /// The Qwen3.5 tokenizer files embedded in the binary (`assets/qwen3_5/`), usable from
    /// any working directory. Its tokenizer.json is rebuilt from the official vocabulary
    /// (see `assets/qwen3_5/README.md`); real checkpoints should use [`Tokenizer::from_dir`].
    pub fn bundled() -> Result<Self> {
        let cfg: Json = serde_json::from_str(BUNDLED_TOKENIZER_CONFIG).context("bundled tokenizer_config.json")?;
        // Qwen3.5's config.json declares text_config.eos_token_id = 248044 (<|endoftext|>);
        // the bundle has no config.json, so state it here.
        let config = json!({"text_config": {"eos_token_id": 248044}});
        Self::from_parts(BUNDLED_TOKENIZER_JSON, Some(&cfg), Some(&config), None, Some(BUNDLED_CHAT_TEMPLATE.to_string()))
            .context("loading the bundled Qwen3.5 tokenizer")
    }

    fn from_parts(
        tokenizer_json: &[u8],
        tok_cfg: Option<&Json>,
        config: Option<&Json>,
        gen: Option<&Json>,
        template: Option<String>,
    ) -> Result<Self> {
        let mut hf = load::load_tokenizer_json(tokenizer_json)?;
        let empty = json!({});
        let cfg = tok_cfg.unwrap_or(&empty);

        // tokenizer_config.json may declare added tokens that tokenizer.json lacks (Qwen3.5:
        // the audio/TTS tokens 248070..248076); transformers adds them on load.
        for spec in files::added_tokens_decoder(cfg)? {
            match hf.id_to_token(spec.id) {
                Some(existing) if existing == spec.content => continue,
                Some(existing) => bail!(
                    "tokenizer_config.json declares id {} as {:?} but tokenizer.json has {:?}",
                    spec.id, spec.content, existing
                ),
                None => {}
            }
            let tok = AddedToken::from(spec.content.clone(), spec.special)
                .lstrip(spec.lstrip)
                .rstrip(spec.rstrip)
                .normalized(spec.normalized)
                .single_word(spec.single_word);
            hf.add_tokens(&[tok]);
            let got = hf.token_to_id(&spec.content);
            if got != Some(spec.id) {
                bail!("added token {:?} got id {got:?}, tokenizer_config.json says {}", spec.content, spec.id);
            }
        }

        let mut eos_lists = Vec::new();
        if let Some(c) = config {
            eos_lists.push(files::config_eos(c)?);
        }
        if let Some(g) = gen {
            eos_lists.push(files::generation_eos(g)?);
        }
        if let Some(eos) = files::token_field(cfg, "eos_token") {
            let id = hf.token_to_id(&eos).with_context(|| format!("eos_token {eos:?} is not in the vocabulary"))?;
            eos_lists.push(vec![id]);
        }
        let eos_token_ids = files::union(&eos_lists);
        if eos_token_ids.is_empty() {
            bail!("no EOS token: none of config.json, generation_config.json, tokenizer_config.json declares one");
        }

        let template = template.or_else(|| files::config_chat_template(cfg));
        let chat_template = match template {
            Some(src) => {
                let mut t = ChatTemplate::new(&src).context("compiling the chat template")?;
                for key in ["bos_token", "eos_token", "pad_token", "unk_token"] {
                    if let Some(v) = files::token_field(cfg, key) {
                        t = t.with_default(key, Json::String(v));
                    }
                }
                Some(t)
            }
            None => None,
        };
        let vocab_size = hf.get_vocab_size(true);
        Ok(Self { inner: Arc::new(Inner { hf, eos_token_ids, chat_template, vocab_size, bound: Default::default() }) })
    }

    /// What each token id writes, as bytes (special tokens prefixed with 0xFF, unused ids
    /// empty), read from the tokenizer.json model by llguidance (for structured output).
    pub fn token_bytes(&self) -> Result<Vec<Vec<u8>>> {
        let json: Json = serde_json::from_str(&self.inner.hf.to_string(false).map_err(|e| anyhow!("{e}"))?)?;
        let mut bytes = llguidance::token_bytes_from_tokenizer_json(&json)?;
        bytes.resize(bytes.len().max(self.inner.vocab_size), vec![]);
        Ok(bytes)
    }

    /// Token ids of `text`. Literal spellings of added tokens (`<|im_start|>`, `<think>`)
    /// become their ids, as in HF. Qwen adds no BOS/EOS, so `add_special_tokens` changes
    /// nothing for it (kept for tokenizers that do).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .hf
            .encode_fast(text, add_special_tokens)
            .map_err(|e| anyhow!("tokenizer encode failed: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// [`Tokenizer::encode`] for untrusted text: more than `max_tokens` tokens is
    /// `TooLong`, found out cheaply (a bound on the count, then encoding in pieces that
    /// stops at the limit), so the work and memory stay bounded whatever the text.
    pub fn encode_within(&self, text: &str, add_special_tokens: bool, max_tokens: usize) -> Result<Bounded> {
        let bound = self.inner.bound.get_or_init(|| bounded::TextBound::of(&self.inner.hf));
        bound.encode_within(&self.inner.hf, text, add_special_tokens, max_tokens)
    }

    /// Text of `ids`. Invalid UTF-8 becomes U+FFFD. Ids outside the vocabulary (e.g. the
    /// embedding's padding rows 248077..248319) decode to nothing, as in HF.
    /// `skip_special_tokens` drops added tokens marked special (`<|im_end|>`...) but keeps
    /// the non-special ones (`<think>`, `<tool_call>`...).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .hf
            .decode(ids, skip_special_tokens)
            .map_err(|e| anyhow!("tokenizer decode failed: {e}"))
    }

    /// Number of valid ids (vocabulary plus added tokens): 248077 for Qwen3.5.
    pub fn vocab_size(&self) -> usize {
        self.inner.vocab_size
    }

    /// Id of a token string (byte-level form, e.g. `"Ġhello"`, or an added token).
    pub fn token_to_id(&self, s: &str) -> Option<u32> {
        self.inner.hf.token_to_id(s)
    }

    /// Token string of an id (byte-level form for vocabulary entries).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.hf.id_to_token(id)
    }

    /// Whether `id` is an added token marked special (skipped by `skip_special_tokens`).
    pub fn is_special(&self, id: u32) -> bool {
        self.inner
            .hf
            .id_to_token(id)
            .map(|t| self.inner.hf.get_added_vocabulary().is_special_token(&t))
            .unwrap_or(false)
    }

    /// The ids that end generation, sorted: the union of `config.json` `eos_token_id`,
    /// `generation_config.json` `eos_token_id` and the tokenizer's `eos_token`, as SGLang
    /// builds it. Qwen3.5-4B: `[248044, 248046]`.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.inner.eos_token_ids
    }

    /// The model's chat template, if it ships one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.inner.chat_template.as_ref()
    }

    /// Renders `messages` with the model's chat template (see [`ChatTemplate::render`]).
    pub fn apply_chat_template(
        &self,
        messages: &Json,
        tools: Option<&Json>,
        add_generation_prompt: bool,
        kwargs: &serde_json::Map<String, Json>,
    ) -> Result<String> {
        let t = self.chat_template().context("this model has no chat template")?;
        t.render(messages, tools, add_generation_prompt, kwargs)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.inner.hf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone>() {}
        check::<Tokenizer>();
        check::<ChatTemplate>();
        fn check_send<T: Send>() {}
        check_send::<IncrementalDetokenizer>();
    }
}

