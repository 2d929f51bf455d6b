//! Reading the Hugging Face side files next to `tokenizer.json`: which extra added tokens
//! `tokenizer_config.json` declares, the EOS ids, the special-token strings and the chat
//! template. Pure functions over parsed JSON, so they are tested without files.

use anyhow::{bail, Context, Result};
use serde_json::Value as Json;

/// One entry of `tokenizer_config.json` `added_tokens_decoder`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AddedTokenSpec {
    pub id: u32,
    pub content: String,
    pub special: bool,
    pub lstrip: bool,
    pub rstrip: bool,
    pub normalized: bool,
    pub single_word: bool,
}

/// The `added_tokens_decoder` table, sorted by id.
pub(crate) fn added_tokens_decoder(cfg: &Json) -> Result<Vec<AddedTokenSpec>> {
    let Some(map) = cfg.get("added_tokens_decoder").and_then(Json::as_object) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(map.len());
    for (id, entry) in map {
        let id: u32 = id.parse().with_context(|| format!("added_tokens_decoder key {id:?} is not an id"))?;
        let content = entry
            .get("content")
            .and_then(Json::as_str)
            .with_context(|| format!("added_tokens_decoder[{id}] has no content"))?
            .to_string();
        let flag = |k: &str, default: bool| entry.get(k).and_then(Json::as_bool).unwrap_or(default);
        out.push(AddedTokenSpec {
            id,
            content,
            special: flag("special", false),
            lstrip: flag("lstrip", false),
            rstrip: flag("rstrip", false),
            normalized: flag("normalized", false),
            single_word: flag("single_word", false),
        });
    }
    out.sort_by_key(|t| t.id);
    Ok(out)
}

/// A special-token field of `tokenizer_config.json`: a string, `{"content": ...}` or null.
pub(crate) fn token_field(cfg: &Json, key: &str) -> Option<String> {
    match cfg.get(key)? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(String::from),
        _ => None,
    }
}

/// `eos_token_id` as an int or a list of ints; absent or null gives an empty list.
fn id_list(v: Option<&Json>, what: &str) -> Result<Vec<u32>> {
    match v {
        None | Some(Json::Null) => Ok(Vec::new()),
        Some(Json::Number(n)) => Ok(vec![n.as_u64().and_then(|n| u32::try_from(n).ok()).with_context(|| format!("{what}: bad id {n}"))?]),
        Some(Json::Array(a)) => a.iter().map(|x| id_list(Some(x), what).map(|v| v[0])).collect(),
        Some(other) => bail!("{what} must be an integer or a list of integers, got {other}"),
    }
}

/// `config.json` `eos_token_id`: top level, else under `text_config` (the official
/// `qwen3_5` layout keeps it there).
pub(crate) fn config_eos(config: &Json) -> Result<Vec<u32>> {
    let top = id_list(config.get("eos_token_id"), "config.json eos_token_id")?;
    if !top.is_empty() {
        return Ok(top);
    }
    id_list(config.get("text_config").and_then(|t| t.get("eos_token_id")), "config.json text_config.eos_token_id")
}

/// `generation_config.json` `eos_token_id`.
pub(crate) fn generation_eos(gen: &Json) -> Result<Vec<u32>> {
    id_list(gen.get("eos_token_id"), "generation_config.json eos_token_id")
}

/// The union (sorted, deduplicated) of the given id lists.
pub(crate) fn union(lists: &[Vec<u32>]) -> Vec<u32> {
    let mut v: Vec<u32> = lists.iter().flatten().copied().collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The template inside `tokenizer_config.json`: a string, or HF's list form
/// `[{"name": "default", "template": ...}, ...]` (the `default` entry is used).
pub(crate) fn config_chat_template(cfg: &Json) -> Option<String> {
    match cfg.get("chat_template")? {
        Json::String(s) => Some(s.clone()),
        Json::Array(list) => list
            .iter()
            .find(|e| e.get("name").and_then(Json::as_str) == Some("default"))
            .and_then(|e| e.get("template"))
            .and_then(Json::as_str)
            .map(String::from),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn eos_from_both_config_layouts() {
        assert_eq!(config_eos(&json!({"text_config": {"eos_token_id": 248044}})).unwrap(), [248044]);
        assert_eq!(config_eos(&json!({"eos_token_id": [1, 2]})).unwrap(), [1, 2]);
        assert!(config_eos(&json!({})).unwrap().is_empty());
        assert_eq!(generation_eos(&json!({"eos_token_id": [248046, 248044]})).unwrap(), [248046, 248044]);
        assert!(generation_eos(&json!({"eos_token_id": "x"})).is_err());
        assert_eq!(union(&[vec![248046, 248044], vec![248044], vec![248046]]), [248044, 248046]);
    }

    #[test]
    fn special_token_fields_and_templates() {
        let cfg = json!({"eos_token": {"content": "<|im_end|>"}, "pad_token": "<|endoftext|>", "bos_token": null,
                         "chat_template": [{"name": "tool_use", "template": "t"}, {"name": "default", "template": "d"}]});
        assert_eq!(token_field(&cfg, "eos_token").as_deref(), Some("<|im_end|>"));
        assert_eq!(token_field(&cfg, "pad_token").as_deref(), Some("<|endoftext|>"));
        assert_eq!(token_field(&cfg, "bos_token"), None);
        assert_eq!(config_chat_template(&cfg).as_deref(), Some("d"));
    }

    #[test]
    fn added_tokens_decoder_is_sorted() {
        let cfg = json!({"added_tokens_decoder": {"5": {"content": "b", "special": true}, "3": {"content": "a"}}});
        let t = added_tokens_decoder(&cfg).unwrap();
        assert_eq!((t[0].id, t[0].content.as_str(), t[0].special), (3, "a", false));
        assert_eq!((t[1].id, t[1].content.as_str(), t[1].special), (5, "b", true));
    }
}
