//! The CPU reference model against Hugging Face transformers: logits and greedy tokens
//! recorded by scripts/make_fixtures.py for small random Qwen3.5 checkpoints in both
//! layouts, and for a checkpoint as transformers saves a tied fine-tune
//! (tests/fixtures/README.md describes the files and the row convention).

use kiln::backend::cpu::{ops::argmax, CpuBackend};
use kiln::backend::{Backend, Capacity, SeqChunk, Want};
use safetensors::SafeTensors;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Our CPU model and HF's both compute in f32 from identical weights, differing only
/// in summation order (blocked dot products vs torch's kernels, chunked vs recurrent
/// GDN boundaries). That gives relative errors around 1e-6; 2e-4 of the logits' norm
/// (and 2e-3 of their largest magnitude per element) leaves two orders of margin while
/// any real mistake (a wrong norm offset, a swapped head, a RoPE slip) gives errors
/// above 1e-2.
const REL_TOL: f64 = 2e-4;
const ABS_TOL_FRACTION: f64 = 2e-3;

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn f32s(st: &SafeTensors, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("fixture tensor {name}: {e}"));
    assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name} must be f32");
    let d = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    (t.shape().to_vec(), d)
}

struct Errors {
    rel: f64,
    max_abs_frac: f64,
}

fn compare(ours: &[f32], theirs: &[f32], what: &str) -> Errors {
    assert_eq!(ours.len(), theirs.len(), "{what}: length");
    assert!(ours.iter().all(|v| v.is_finite()), "{what}: non-finite logits");
    let num: f64 = ours.iter().zip(theirs).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let den: f64 = theirs.iter().map(|b| (*b as f64).powi(2)).sum();
    let scale = theirs.iter().fold(0f64, |m, b| m.max(b.abs() as f64));
    let max_abs = ours.iter().zip(theirs).fold(0f64, |m, (a, b)| m.max((a - b).abs() as f64));
    let e = Errors { rel: (num / den).sqrt(), max_abs_frac: max_abs / scale };
    assert!(
        e.rel < REL_TOL && e.max_abs_frac < ABS_TOL_FRACTION,
        "{what}: relative error {:e}, max abs error {:e} of the largest logit",
        e.rel,
        e.max_abs_frac
    );
    e
}

fn run_model(name: &str, prefill_piece: Option<usize>) -> f64 {
    let dir = fixture_dir(name);
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let logits_bytes = std::fs::read(dir.join("expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&logits_bytes).unwrap();
    let (cfg, w) = kiln::checkpoint::load(&dir).unwrap();
    let vocab = cfg.vocab_size;
    let mut be = CpuBackend::new(cfg, w, Capacity { slots: 1, block_size: 16, kv_blocks: 64, max_seq_len: 1024 }).unwrap();
    let blocks: Vec<u32> = (0..64).collect();
    let mut worst = 0f64;
    let cases = expected["cases"].as_array().expect("cases");
    assert!(cases.len() >= 3, "fixture {name} has too few cases");
    for case in cases {
        let cname = case["name"].as_str().unwrap();
        let prompt: Vec<u32> = case["prompt_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let greedy: Vec<u32> = case["greedy_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let (shape, want_prompt) = f32s(&st, &format!("{cname}.prompt_logits"));
        assert_eq!(shape, vec![prompt.len(), vocab]);
        be.reset_slot(0).unwrap();

        // Prefill, in one call or in pieces (chunked prefill must not change the result).
        let piece = prefill_piece.unwrap_or(prompt.len());
        let mut ours = Vec::new();
        let mut pos = 0;
        while pos < prompt.len() {
            let end = (pos + piece).min(prompt.len());
            let c = SeqChunk { slot: 0, start_pos: pos, tokens: &prompt[pos..end], blocks: &blocks, want: Want::All, allowed: None };
            ours.extend(be.forward(&[c]).unwrap().remove(0).data);
            pos = end;
        }
        let e = compare(&ours, &want_prompt, &format!("{name}/{cname} prompt logits"));
        worst = worst.max(e.rel);

        // Free-running greedy decode: our tokens must be HF's exactly.
        let (_, want_decode) = f32s(&st, &format!("{cname}.decode_logits"));
        let mut tok = argmax(&ours[(prompt.len() - 1) * vocab..]) as u32;
        let mut got = vec![tok];
        for i in 0..greedy.len() - 1 {
            let feed = [tok];
            let c = SeqChunk { slot: 0, start_pos: prompt.len() + i, tokens: &feed, blocks: &blocks, want: Want::Last, allowed: None };
            let row = be.forward(&[c]).unwrap().remove(0).data;
            let e = compare(&row, &want_decode[i * vocab..(i + 1) * vocab], &format!("{name}/{cname} decode step {i}"));
            worst = worst.max(e.rel);
            tok = argmax(&row) as u32;
            got.push(tok);
        }
        assert_eq!(got, greedy, "{name}/{cname}: greedy tokens differ from transformers");
    }
    println!("{name} (prefill piece {prefill_piece:?}): worst relative logits error vs HF = {worst:e}");
    worst
}

#[test]
fn official_layout_bf16_sharded_matches_hf() {
    run_model("tiny_official", None);
}

#[test]
fn text_layout_f32_matches_hf() {
    run_model("tiny_text", None);
}

#[test]
fn chunked_prefill_matches_hf() {
    // 64-token pieces put chunk boundaries where HF's single call has none, and a
    // 17-token piece crosses them at odd places.
    run_model("tiny_official", Some(17));
    run_model("tiny_text", Some(64));
}

/// A fine-tune as transformers 5 saves it: `tie_word_embeddings` true at the top level,
/// false inside `text_config`, no `lm_head.weight`. transformers ties the head (for
/// `qwen3_5` the composite config's value governs), so must we.
#[test]
fn transformers_saved_tied_checkpoint_matches_hf() {
    let dir = fixture_dir("tiny_saved_tied");
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!((&cfg["tie_word_embeddings"], &cfg["text_config"]["tie_word_embeddings"]), (&Value::Bool(true), &Value::Bool(false)));
    let ck = kiln::checkpoint::Checkpoint::open(&dir).unwrap();
    assert!(ck.info("lm_head.weight").is_err(), "the fixture must have no lm_head.weight");
    run_model("tiny_saved_tied", None);
}
