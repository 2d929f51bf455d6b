//! The CPU backend's MTP head against the torch reference of scripts/make_fixtures.py
//! (`expected_mtp.*`: chained draft logits after prefill and mid-generation, for every case
//! of both tiny fixtures). transformers does not run `mtp.*`; the reference is built from
//! HF's own layer, norm and rotary modules with SGLang's and vLLM's MTP wiring.

use kiln::backend::cpu::{ops::argmax, CpuBackend};
use kiln::backend::{Backend, Capacity, DraftChunk, SeqChunk, Want};
use safetensors::SafeTensors;
use serde_json::Value;
use std::path::Path;

/// As in hf_fixtures.rs: f32 against f32 from the same weights, differing in summation
/// order (~1e-6 relative, a little more after the extra layer); a wrong concat order, norm
/// or position gives errors near 1.
const REL_TOL: f64 = 2e-4;
/// Draft ids must match where the reference's top-2 margin is above f32 noise.
const MIN_MARGIN: f64 = 1e-3;

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

fn check_model(name: &str) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    let cases: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let mtp: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected_mtp.json")).unwrap()).unwrap();
    let bytes = std::fs::read(dir.join("expected_mtp.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (cfg, w) = kiln::checkpoint::load(&dir).unwrap();
    let vocab = cfg.vocab_size;
    let mut b = CpuBackend::new(cfg, w, Capacity { slots: 1, block_size: 16, kv_blocks: 64, max_seq_len: 1024 }).unwrap();
    let steps = mtp["steps"].as_u64().unwrap() as usize;
    // The slot's KV pages (the CPU backend pages its KV): all 64, enough for 1024 tokens.
    let blocks: Vec<u32> = (0..64).collect();
    let mut checked = 0;
    for (case, m) in cases["cases"].as_array().unwrap().iter().zip(mtp["cases"].as_array().unwrap()) {
        assert_eq!(case["name"], m["name"]);
        let ids = |v: &Value| -> Vec<u32> { v.as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect() };
        let seq: Vec<u32> = ids(&case["prompt_ids"]).into_iter().chain(ids(&case["greedy_ids"])).collect();
        for (i, s) in m["starts"].as_array().unwrap().iter().enumerate() {
            let pos = s["pos"].as_u64().unwrap() as usize;
            assert_eq!(s["next"].as_u64().unwrap() as u32, seq[pos]);
            b.reset_slot(0).unwrap();
            b.forward(&[SeqChunk { slot: 0, start_pos: 0, tokens: &seq[..pos], blocks: &blocks, want: Want::Last, allowed: None }]).unwrap();
            let rows = b.mtp_logits(&DraftChunk { slot: 0, pos, next: seq[pos], steps, blocks: &blocks, limit: vocab }).unwrap();
            let what = format!("{name} {} start {i} (pos {pos})", m["name"]);
            let t = st.tensor(&format!("{}.mtp{i}.draft_logits", m["name"].as_str().unwrap())).unwrap();
            let theirs: Vec<f32> = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            assert_eq!(theirs.len(), steps * vocab, "{what}");
            let want_ids = ids(&s["draft_ids"]);
            for (j, row) in rows.iter().enumerate() {
                let e = rel_err(row, &theirs[j * vocab..(j + 1) * vocab]);
                assert!(e < REL_TOL, "{what} step {j}: draft logits relative error {e:e}");
                let ours = argmax(row) as u32;
                if ours != want_ids[j] {
                    assert!(s["min_top2_margin"].as_f64().unwrap() < MIN_MARGIN, "{what} step {j}: draft {ours} vs {}", want_ids[j]);
                    break; // later steps chain on a different draft
                }
                checked += 1;
            }
        }
    }
    checked
}

#[test]
fn mtp_drafts_match_the_torch_reference() {
    for name in ["tiny_text", "tiny_official"] {
        let n = check_model(name);
        assert!(n >= 30, "{name}: only {n} draft ids compared");
    }
}
