use super::*;
use crate::demo::demo_config;
use safetensors::tensor::TensorView;
use std::collections::HashMap;

/// Writes `tensors` (canonical name -> (shape, f32 data)) as one bf16 safetensors
/// file with names under `prefix`, plus a vision tensor the loader must skip.
fn write_checkpoint(dir: &Path, prefix: &str, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, d)| {
            let name = if n.starts_with("mtp.") || n == "lm_head.weight" { n.clone() } else { format!("{prefix}{n}") };
            let bytes = d.iter().flat_map(|v| half::bf16::from_f32(*v).to_bits().to_le_bytes()).collect();
            (name, s.clone(), bytes)
        })
        .collect();
    bufs.push(("model.visual.patch_embed.proj.weight".into(), vec![2, 2], vec![0u8; 8]));
    let views: HashMap<String, TensorView> = bufs
        .iter()
        .map(|(n, s, b)| (n.clone(), TensorView::new(safetensors::Dtype::BF16, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(&views, &None, &dir.join("model.safetensors")).unwrap();
}

fn tiny() -> (crate::config::ModelConfig, Vec<(String, Vec<usize>, Vec<f32>)>) {
    let cfg = crate::config::ModelConfig { vocab_size: 96, mtp_num_layers: 1, ..demo_config() };
    // Fill every expected tensor (MTP included) with small distinct values.
    let specs = expected_tensors(&cfg);
    let tensors = specs
        .iter()
        .filter(|s| s.name != "lm_head.weight")
        .enumerate()
        .map(|(i, s)| {
            let n: usize = s.shape.iter().product();
            (s.name.clone(), s.shape.clone(), (0..n).map(|j| ((i * 31 + j) % 17) as f32 / 16.0 - 0.5).collect())
        })
        .collect();
    (cfg, tensors)
}

#[test]
fn loads_official_layout_and_skips_vision() {
    let (cfg, tensors) = tiny();
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), "model.language_model.", &tensors);
    let ck = Checkpoint::open(dir.path()).unwrap();
    let w = load_weights(&ck, &cfg).unwrap();
    assert!(w.mtp.is_some(), "MTP head present in the file must load");
    assert!(w.lm_head.is_none(), "tied embeddings: lm_head comes from embed_tokens");
    // Values survive the bf16 round trip exactly (they are multiples of 1/16).
    let (_, _, embed) = tensors.iter().find(|t| t.0 == "embed_tokens.weight").unwrap();
    assert_eq!(&w.embed, embed);
}

#[test]
fn loads_text_layout() {
    let (cfg, tensors) = tiny();
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), "model.", &tensors);
    let w = load_weights(&Checkpoint::open(dir.path()).unwrap(), &cfg).unwrap();
    assert_eq!(w.layers.len(), cfg.num_layers);
}

#[test]
fn names_missing_misshaped_and_unknown_tensors() {
    let (cfg, mut tensors) = tiny();
    tensors.retain(|t| t.0 != "layers.0.linear_attn.A_log");
    let t = tensors.iter_mut().find(|t| t.0 == "layers.3.self_attn.k_proj.weight").unwrap();
    t.1 = vec![7, 64];
    t.2.truncate(7 * 64);
    tensors.push(("layers.0.mystery.weight".into(), vec![2], vec![0.0, 1.0]));
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), "model.language_model.", &tensors);
    let err = load_weights(&Checkpoint::open(dir.path()).unwrap(), &cfg).unwrap_err().to_string();
    assert!(err.contains("missing tensor `layers.0.linear_attn.A_log`"), "{err}");
    assert!(err.contains("model.language_model.layers.3.self_attn.k_proj.weight` has shape [7, 64], expected [128, 64]"), "{err}");
    assert!(err.contains("unknown tensor `model.language_model.layers.0.mystery.weight`"), "{err}");
}

#[test]
fn partial_mtp_head_is_an_error() {
    let (cfg, mut tensors) = tiny();
    tensors.retain(|t| t.0 != "mtp.fc.weight");
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), "model.", &tensors);
    let err = load_weights(&Checkpoint::open(dir.path()).unwrap(), &cfg).unwrap_err().to_string();
    assert!(err.contains("partial MTP head") && err.contains("mtp.fc.weight"), "{err}");
}

#[test]
fn canonical_names() {
    assert_eq!(canonical_name("model.language_model.norm.weight").as_deref(), Some("norm.weight"));
    assert_eq!(canonical_name("model.layers.1.mlp.up_proj.weight").as_deref(), Some("layers.1.mlp.up_proj.weight"));
    assert_eq!(canonical_name("mtp.fc.weight").as_deref(), Some("mtp.fc.weight"));
    assert_eq!(canonical_name("model.visual.blocks.0.attn.qkv.weight"), None);
}

#[test]
fn a_header_only_checkpoint_lists_tensors_and_refuses_their_bytes() {
    let (cfg, tensors) = tiny();
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), "model.language_model.", &tensors);
    let ck = Checkpoint::open_headers(dir.path()).unwrap();
    ck.validate(&expected_tensors(&cfg)).unwrap();
    assert_eq!(ck.tensors.len(), Checkpoint::open(dir.path()).unwrap().tensors.len());
    let e = ck.bytes("embed_tokens.weight").unwrap_err().to_string();
    assert!(e.contains("opened for its headers only"), "{e}");
    assert!(load_weights(&ck, &cfg).is_err());
}
