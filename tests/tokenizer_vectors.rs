//! The Qwen3.5 tokenizer against the reference vectors (ids from the official Hugging Face
//! tokenizer), the added-token table, NFC, EOS ids, loading a checkpoint-style directory,
//! and the streaming detokenizer. Everything read here is committed in the repo.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use kiln::tokenizer::{IncrementalDetokenizer, Tokenizer};
use serde_json::{json, Value};
use unicode_normalization::UnicodeNormalization;

fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/qwen3_5")
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn tok() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let t0 = Instant::now();
        let t = Tokenizer::bundled().expect("bundled tokenizer loads");
        eprintln!("bundled tokenizer loaded in {:?}", t0.elapsed());
        t
    })
}

fn vectors() -> Value {
    read_json(&assets().join("token_vectors.json"))
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Pushes `ids` one at a time; returns every delta (including the final flush, last).
fn stream(detok: &mut IncrementalDetokenizer, ids: &[u32]) -> Vec<String> {
    let mut out: Vec<String> = ids.iter().map(|&id| detok.push(id)).collect();
    out.push(detok.finish());
    out
}

#[test]
fn text_vectors_encode_exactly_and_round_trip() {
    let t = tok();
    let v = vectors();
    let cases = v["text_vectors"].as_array().unwrap();
    assert_eq!(cases.len(), 13);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let text = case["text"].as_str().unwrap();
        let want = ids_of(&case["token_ids"]);
        assert_eq!(t.encode(text, false).unwrap(), want, "encode {name}");
        assert_eq!(t.encode(text, true).unwrap(), want, "Qwen adds no BOS/EOS ({name})");
        let nfc: String = text.nfc().collect();
        assert_eq!(t.decode(&want, false).unwrap(), nfc, "decode {name}");
    }
}

#[test]
fn chat_vectors_render_and_encode_exactly() {
    let t = tok();
    let template = t.chat_template().expect("bundled chat template");
    let v = vectors();
    let cases = v["chat_vectors"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let mut kwargs = case["kwargs"].as_object().unwrap().clone();
        let agp = kwargs.remove("add_generation_prompt").and_then(|b| b.as_bool()).unwrap_or(false);
        let rendered = template.render(&case["messages"], None, agp, &kwargs).unwrap();
        assert_eq!(rendered, case["rendered"].as_str().unwrap(), "render {name}");
        let want = ids_of(&case["token_ids"]);
        assert_eq!(t.encode(&rendered, false).unwrap(), want, "encode {name}");
        assert_eq!(t.decode(&want, false).unwrap(), rendered, "decode {name}");
    }
}

#[test]
fn added_tokens_match_the_table() {
    let t = tok();
    let table = read_json(&assets().join("special_tokens.json"));
    let added = table["added_tokens"].as_array().unwrap();
    assert_eq!(added.len(), 33);
    for entry in added {
        let id = entry["id"].as_u64().unwrap() as u32;
        let content = entry["content"].as_str().unwrap();
        let special = entry["special"].as_bool().unwrap();
        assert_eq!(t.token_to_id(content), Some(id), "{content}");
        assert_eq!(t.id_to_token(id).as_deref(), Some(content));
        assert_eq!(t.encode(content, false).unwrap(), [id], "{content} is atomic");
        assert_eq!(t.is_special(id), special, "{content} special flag");
        let skipped = t.decode(&[id], true).unwrap();
        assert_eq!(skipped, if special { "" } else { content }, "skip_special_tokens on {content}");
        assert_eq!(t.decode(&[id], false).unwrap(), content);
    }
    assert_eq!(t.vocab_size(), 248077);
    assert_eq!(t.token_to_id("Hello"), Some(9419));
    assert_eq!(t.id_to_token(198).as_deref(), Some("Ċ"));
    assert_eq!(t.id_to_token(248077), None);
    // the embedding's padding rows decode to nothing, as in HF
    assert_eq!(t.decode(&[9419, 248077, 248319], false).unwrap(), "Hello");
    // special tokens inside text; skip_special_tokens keeps <think> but drops <|im_end|>
    let ids = t.encode("<think>x</think>ok<|im_end|>", false).unwrap();
    assert_eq!(t.decode(&ids, true).unwrap(), "<think>x</think>ok");
}

#[test]
fn nfc_normalization_applies_before_bpe() {
    let t = tok();
    assert_eq!(t.encode("e\u{301}", false).unwrap(), t.encode("\u{e9}", false).unwrap());
    assert_eq!(t.encode("e\u{301}", false).unwrap(), [933]);
    assert_eq!(t.encode("cafe\u{301} au lait", false).unwrap(), t.encode("caf\u{e9} au lait", false).unwrap());
    // a combining mark after a non-letter stays with the letter run (Qwen3.5 regex, \p{M})
    assert_eq!(t.encode("\u{301}!I", false).unwrap(), [52033, 87383]);
}

#[test]
fn rank_unreachable_tokens_are_never_emitted() {
    // HF (ignore_merges=false) never emits vocab entries that no merge builds; our merges
    // are derived from ranks, so these must come out as their decomposition.
    let t = tok();
    let data = read_json(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tokenizer/rank_unreachable_tokens.json"));
    let list = data["tokens"].as_array().unwrap();
    assert_eq!(list.len(), 232);
    for entry in list {
        let id = entry["id"].as_u64().unwrap() as u32;
        let text = entry["text"].as_str().unwrap();
        let ids = t.encode(text, false).unwrap();
        assert!(!ids.contains(&id), "{text:?} encoded as its own unreachable id {id}");
        assert!(ids.len() >= 2, "{text:?}");
        assert_eq!(t.decode(&ids, false).unwrap(), text.nfc().collect::<String>());
    }
}

#[test]
fn eos_ids_of_the_bundle() {
    assert_eq!(tok().eos_token_ids(), [248044, 248046]);
}

/// Writes a checkpoint-style directory: tokenizer.json as the official file is laid out
/// (only 248044..248069 declared; the 7 audio/TTS tokens come from tokenizer_config.json).
fn write_checkpoint_dir(dir: &Path, config: Value, generation_config: Option<Value>) {
    let mut tj = read_json(&assets().join("tokenizer.json"));
    tj["added_tokens"].as_array_mut().unwrap().retain(|t| t["id"].as_u64().unwrap() < 248070);
    std::fs::write(dir.join("tokenizer.json"), serde_json::to_vec(&tj).unwrap()).unwrap();
    let mut cfg = read_json(&assets().join("tokenizer_config.json"));
    cfg.as_object_mut().unwrap().remove("chat_template");
    std::fs::write(dir.join("tokenizer_config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    std::fs::copy(assets().join("chat_template.jinja"), dir.join("chat_template.jinja")).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    if let Some(g) = generation_config {
        std::fs::write(dir.join("generation_config.json"), g.to_string()).unwrap();
    }
}

#[test]
fn from_dir_reads_a_checkpoint_layout() {
    let dir = tempfile::tempdir().unwrap();
    let config = json!({"model_type": "qwen3_5", "text_config": {"eos_token_id": 248044}});
    write_checkpoint_dir(dir.path(), config, None);
    let t = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(t.eos_token_ids(), [248044, 248046], "config.json eos + tokenizer eos_token");
    assert_eq!(t.vocab_size(), 248077, "audio/TTS tokens added from tokenizer_config.json");
    assert_eq!(t.token_to_id("<|audio_pad|>"), Some(248076));
    assert_eq!(t.encode("<|audio_start|>x<|audio_end|>", false).unwrap(), [248070, 87, 248071]);
    assert!(t.is_special(248072));
    let v = vectors();
    for case in v["text_vectors"].as_array().unwrap() {
        assert_eq!(t.encode(case["text"].as_str().unwrap(), false).unwrap(), ids_of(&case["token_ids"]));
    }
    let rendered = t
        .apply_chat_template(&json!([{"role": "user", "content": "hi"}]), None, true, &serde_json::Map::new())
        .unwrap();
    assert_eq!(rendered, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n");
}

#[test]
fn from_dir_eos_is_the_union_with_generation_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = json!({"eos_token_id": 7});
    let gen = json!({"eos_token_id": [248046, 248044], "bos_token_id": 248044});
    write_checkpoint_dir(dir.path(), config, Some(gen));
    let t = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(t.eos_token_ids(), [7, 248044, 248046]);
}

#[test]
fn from_dir_without_tokenizer_json_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = format!("{:#}", Tokenizer::from_dir(dir.path()).unwrap_err());
    assert!(err.contains("tokenizer.json"), "{err}");
}

#[test]
fn detokenizer_holds_back_split_emoji() {
    let t = tok();
    // "👩‍💻 café é": the emoji and the ZWJ are split over byte-level tokens
    let ids = [9008, 239, 102, 373, 235, 88995, 119, 50203, 3825];
    let mut d = IncrementalDetokenizer::new(t, &[], false);
    let deltas = stream(&mut d, &ids);
    assert_eq!(deltas, ["", "", "👩", "", "\u{200d}", "", "💻", " café", " é", ""]);
}

#[test]
fn detokenizer_holds_back_split_cjk() {
    let t = tok();
    // "中" (E4 B8 AD) pushed as three single-byte tokens, then "文" split as [E6 96] [87]
    let byte = |s: &str| t.token_to_id(s).unwrap();
    let ids = [byte("ä"), byte("¸"), byte("Ń"), byte("æĸ"), byte("ĩ"), t.token_to_id("!").unwrap()];
    let mut d = IncrementalDetokenizer::new(t, &t.encode("prompt: ", false).unwrap(), true);
    assert_eq!(stream(&mut d, &ids), ["", "", "中", "", "文", "!", ""]);
    // 龘 = [96339, 246]; 𠀀 = [172, 61084, 222]
    let mut d = IncrementalDetokenizer::new(t, &[], true);
    assert_eq!(stream(&mut d, &[96339, 246, 172, 61084, 222]), ["", "龘", "", "", "𠀀", ""]);
}

#[test]
fn detokenizer_flushes_an_incomplete_tail_like_decode() {
    let t = tok();
    let ids = [5226, 9008, 239]; // " ok" then the first 3 bytes of a 4-byte emoji
    let mut d = IncrementalDetokenizer::new(t, &[], false);
    let deltas = stream(&mut d, &ids);
    assert_eq!(deltas, [" ok", "", "", "\u{FFFD}"]);
    assert_eq!(deltas.concat(), t.decode(&ids, false).unwrap());
}

#[test]
fn detokenizer_concatenation_equals_decode() {
    let t = tok();
    let v = vectors();
    let mut texts: Vec<Vec<u32>> = Vec::new();
    for case in v["text_vectors"].as_array().unwrap().iter().chain(v["chat_vectors"].as_array().unwrap()) {
        texts.push(ids_of(&case["token_ids"]));
    }
    let prompt = t.encode("<|im_start|>assistant\n", false).unwrap();
    for ids in &texts {
        for skip in [false, true] {
            for ctx in [&[][..], &prompt[..], &[9008][..] /* ends mid-character: ignored */] {
                let mut d = IncrementalDetokenizer::new(t, ctx, skip);
                let deltas = stream(&mut d, ids);
                assert_eq!(deltas.concat(), t.decode(ids, skip).unwrap(), "ids {ids:?} skip {skip}");
                assert!(deltas[..deltas.len() - 1].iter().all(|s| !s.contains('\u{FFFD}')));
            }
        }
    }
    // a long stream (compaction of consumed ids) still concatenates exactly
    let long: Vec<u32> = texts.iter().flatten().copied().cycle().take(3000).collect();
    let mut d = IncrementalDetokenizer::new(t, &[], false);
    assert_eq!(stream(&mut d, &long).concat(), t.decode(&long, false).unwrap());
}

#[test]
fn encode_and_load_timings() {
    let t0 = Instant::now();
    let t = Tokenizer::bundled().unwrap();
    let load = t0.elapsed();
    let text = "The quick brown fox jumps over the lazy dog. 中文测试：こんにちは。 def f(x): return x**2\n".repeat(200);
    t.encode(&text, false).unwrap(); // warm the BPE cache
    let t1 = Instant::now();
    let n = t.encode(&text, false).unwrap().len();
    let enc = t1.elapsed();
    eprintln!("bundled load {load:?}; encode {} bytes -> {n} tokens in {enc:?}", text.len());
    // generous bounds (debug build on a loaded 2-core CI box): these catch gross regressions
    assert!(load.as_secs_f64() < 10.0, "load took {load:?}");
    assert!(enc.as_secs_f64() < 2.0, "encode took {enc:?}");
}
