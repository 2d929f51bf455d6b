//! Fast loading of a BPE `tokenizer.json`.
//!
//! `tokenizers::Tokenizer::from_bytes` deserializes the model through an untagged enum,
//! which buffers the whole vocabulary and merge list twice (serde `Content`, then
//! `serde_json::Value`) before building the BPE: about 0.2 s of the 0.5 s it takes for
//! Qwen3.5's 10-13 MB file. When the model is a BPE we parse the document into typed
//! fields in one pass and assemble the same tokenizer with `TokenizerBuilder`: the same
//! pieces, in the same order (components, then the added tokens in file order), as
//! `from_bytes`. Anything else (another model type, an unknown version) takes the
//! `from_bytes` path, and so does any document the typed pass cannot read.

use anyhow::{anyhow, Result};
use serde::Deserialize;
use tokenizers::models::bpe::BPE;
use tokenizers::{
    AddedToken, DecoderWrapper, ModelWrapper, NormalizerWrapper, PaddingParams, PostProcessorWrapper,
    PreTokenizerWrapper, TokenizerBuilder, TruncationParams,
};

fn default_true() -> bool {
    true
}

/// One `added_tokens` entry (the defaults are `AddedToken`'s).
#[derive(Deserialize)]
struct AddedTokenEntry {
    id: u32,
    content: String,
    #[serde(default)]
    single_word: bool,
    #[serde(default)]
    lstrip: bool,
    #[serde(default)]
    rstrip: bool,
    #[serde(default = "default_true")]
    normalized: bool,
    #[serde(default)]
    special: bool,
}

#[derive(Deserialize)]
struct BpeTokenizerJson {
    version: String,
    #[serde(default)]
    truncation: Option<TruncationParams>,
    #[serde(default)]
    padding: Option<PaddingParams>,
    #[serde(default)]
    added_tokens: Vec<AddedTokenEntry>,
    #[serde(default)]
    normalizer: Option<NormalizerWrapper>,
    #[serde(default)]
    pre_tokenizer: Option<PreTokenizerWrapper>,
    #[serde(default)]
    post_processor: Option<PostProcessorWrapper>,
    #[serde(default)]
    decoder: Option<DecoderWrapper>,
    model: BPE,
}

fn load_bpe_fast(bytes: &[u8]) -> Option<Result<tokenizers::Tokenizer>> {
    let doc: BpeTokenizerJson = serde_json::from_slice(bytes).ok()?;
    if doc.version != "1.0" {
        return None;
    }
    let built = TokenizerBuilder::new()
        .with_truncation(doc.truncation)
        .with_padding(doc.padding)
        .with_normalizer(doc.normalizer)
        .with_pre_tokenizer(doc.pre_tokenizer)
        .with_post_processor(doc.post_processor)
        .with_decoder(doc.decoder)
        .with_model(ModelWrapper::BPE(doc.model))
        .build();
    let mut tok: tokenizers::Tokenizer = match built {
        Ok(t) => t.into(),
        Err(e) => return Some(Err(anyhow!("invalid tokenizer.json: {e}"))),
    };
    let mut added = Vec::with_capacity(doc.added_tokens.len());
    for t in &doc.added_tokens {
        added.push(
            AddedToken::from(t.content.clone(), t.special)
                .single_word(t.single_word)
                .lstrip(t.lstrip)
                .rstrip(t.rstrip)
                .normalized(t.normalized),
        );
    }
    tok.add_tokens(&added);
    for t in &doc.added_tokens {
        if tok.token_to_id(&t.content) != Some(t.id) {
            return Some(Err(anyhow!(
                "tokenizer.json: added token {:?} should have id {} but gets {:?}",
                t.content, t.id, tok.token_to_id(&t.content)
            )));
        }
    }
    Some(Ok(tok))
}

/// Parses a `tokenizer.json` document.
pub(crate) fn load_tokenizer_json(bytes: &[u8]) -> Result<tokenizers::Tokenizer> {
    match load_bpe_fast(bytes) {
        Some(r) => r,
        None => tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| anyhow!("invalid tokenizer.json: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_path_builds_the_same_tokenizer_as_from_bytes() {
        let bytes = super::super::BUNDLED_TOKENIZER_JSON;
        let fast = load_bpe_fast(bytes).expect("BPE fast path applies").unwrap();
        let slow = tokenizers::Tokenizer::from_bytes(bytes).unwrap();
        assert_eq!(fast.to_string(false).unwrap(), slow.to_string(false).unwrap());
        for id in 248044..248077 {
            let t = fast.id_to_token(id).unwrap();
            assert_eq!(
                fast.get_added_vocabulary().is_special_token(&t),
                slow.get_added_vocabulary().is_special_token(&t)
            );
        }
    }

    #[test]
    fn other_documents_fall_back_or_fail_clearly() {
        assert!(load_bpe_fast(br#"{"version":"1.0","model":{"type":"WordLevel","vocab":{"a":0},"unk_token":"a"}}"#).is_none());
        let wl = load_tokenizer_json(br#"{"version":"1.0","model":{"type":"WordLevel","vocab":{"a":0},"unk_token":"a"}}"#);
        assert!(wl.is_ok(), "{:?}", wl.err());
        assert!(load_tokenizer_json(b"{").is_err());
    }
}
