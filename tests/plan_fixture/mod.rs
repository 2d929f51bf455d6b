//! A tiny random Qwen3.5 checkpoint directory (config.json, tokenizer.json,
//! model.safetensors) for the plan tests, and a plan built from it without kernels.
#![allow(dead_code)]

use kiln::checkpoint::{expected_tensors, Checkpoint};
use kiln::config::ModelConfig;
use kiln::plan::{plan_packing_as, write_plan, Arch, BuildInfo, DType, KernelImage, Limits, PlanHeader};
use rand::{Rng, SeedableRng};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub struct Opts {
    /// `model.language_model.` (official) or `model.` (text-only).
    pub prefix: &'static str,
    pub tie: bool,
    pub mtp: bool,
    /// Dtype for each tensor by canonical name (default bf16).
    pub dtype: fn(&str) -> Dtype,
    /// Head sizes the CUDA kernels accept (head_dim 32, linear heads 32 wide), so
    /// the kernels compile for this model; default: smaller heads.
    pub kernel_dims: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts { prefix: "model.language_model.", tie: true, mtp: true, dtype: |_| Dtype::BF16, kernel_dims: false }
    }
}

/// The official config.json shape (model_type qwen3_5, text settings in text_config) at
/// toy size: 4 layers (3 linear + 1 full), hidden 32.
pub fn config_json(o: &Opts) -> serde_json::Value {
    let (hd, lk, lv) = if o.kernel_dims { (32, 32, 32) } else { (16, 8, 8) };
    json!({
        "model_type": "qwen3_5",
        "tie_word_embeddings": o.tie,
        "text_config": {
            "model_type": "qwen3_5_text",
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_hidden_layers": 4,
            "layer_types": ["linear_attention", "linear_attention", "linear_attention", "full_attention"],
            "vocab_size": 40,
            "rms_norm_eps": 1e-6,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": hd,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25},
            "linear_num_key_heads": 2,
            "linear_num_value_heads": 4,
            "linear_key_head_dim": lk,
            "linear_value_head_dim": lv,
            "linear_conv_kernel_dim": 4,
            "mtp_num_hidden_layers": if o.mtp { 1 } else { 0 },
            "hidden_act": "silu",
            "attn_output_gate": true,
            "eos_token_id": 39
        }
    })
}

/// Canonical name -> (shape, f32 values as written, dtype written).
pub type Stored = HashMap<String, (Vec<usize>, Vec<f32>, Dtype)>;

fn encode(v: &[f32], dt: Dtype) -> Vec<u8> {
    match dt {
        Dtype::BF16 => v.iter().flat_map(|x| half::bf16::from_f32(*x).to_bits().to_le_bytes()).collect(),
        Dtype::F16 => v.iter().flat_map(|x| half::f16::from_f32(*x).to_bits().to_le_bytes()).collect(),
        Dtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        _ => unreachable!(),
    }
}

fn decode(v: &[f32], dt: Dtype) -> Vec<f32> {
    match dt {
        Dtype::BF16 => v.iter().map(|x| half::bf16::from_f32(*x).to_f32()).collect(),
        Dtype::F16 => v.iter().map(|x| half::f16::from_f32(*x).to_f32()).collect(),
        _ => v.to_vec(),
    }
}

/// Writes the checkpoint directory; returns the config and what each tensor holds
/// (values after the round trip through its stored dtype).
pub fn write_model(dir: &Path, o: &Opts, seed: u64) -> (ModelConfig, Stored) {
    let cfg_json = config_json(o);
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&cfg_json).unwrap()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), format!("{{\"model\": \"toy tokenizer {seed}\"}}")).unwrap();
    let cfg = ModelConfig::from_json(&cfg_json).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut stored = Stored::new();
    let mut files: Vec<(String, Vec<usize>, Vec<u8>, Dtype)> = Vec::new();
    for s in expected_tensors(&cfg) {
        if s.name == "lm_head.weight" && o.tie {
            continue;
        }
        if s.name.starts_with("mtp.") && !o.mtp {
            continue;
        }
        let n: usize = s.shape.iter().product();
        let vals: Vec<f32> = (0..n).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
        let dt = (o.dtype)(&s.name);
        let file_name = if s.name.starts_with("mtp.") || s.name == "lm_head.weight" {
            s.name.clone()
        } else {
            format!("{}{}", o.prefix, s.name)
        };
        files.push((file_name, s.shape.clone(), encode(&vals, dt), dt));
        stored.insert(s.name.clone(), (s.shape.clone(), decode(&vals, dt), dt));
    }
    // A vision tensor the loader skips.
    files.push(("model.visual.patch_embed.proj.weight".into(), vec![2, 2], vec![0u8; 8], Dtype::BF16));
    let views: HashMap<String, TensorView> = files
        .iter()
        .map(|(n, s, b, dt)| (n.clone(), TensorView::new(*dt, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(&views, &None, &dir.join("model.safetensors")).unwrap();
    (cfg, stored)
}

pub fn build_info(model: &Path, arch: Option<Arch>) -> BuildInfo {
    BuildInfo {
        builder_version: "plan tests".into(),
        arch,
        nvrtc_version: arch.map(|_| (13, 0)),
        tokenizer_hash: kiln::plan::tokenizer_hash(&model.join("tokenizer.json")).unwrap(),
        limits: Limits { max_context: 4096, max_batch: 8 },
        source: model.display().to_string(),
    }
}

/// Packs the model in `model` into `out` (no kernels unless given).
pub fn build_plan(model: &Path, out: &Path, arch: Option<Arch>, kernels: &[KernelImage]) -> PlanHeader {
    build_plan_as(model, out, arch, kernels, DType::Bf16)
}

/// `build_plan` with the GEMM weights in `gemm` (bf16 or f16; the kernels must match).
pub fn build_plan_as(model: &Path, out: &Path, arch: Option<Arch>, kernels: &[KernelImage], gemm: DType) -> PlanHeader {
    let cfg = ModelConfig::from_file(&model.join("config.json")).unwrap();
    let ck = Checkpoint::open(model).unwrap();
    let packing = plan_packing_as(&ck, &cfg, gemm).unwrap();
    write_plan(out, &ck, &cfg, &packing, &build_info(model, arch), kernels, &mut |_, _| {}).unwrap()
}

/// A model dir and a plan built from it, in one temp dir.
pub struct Built {
    pub tmp: tempfile::TempDir,
    pub model: PathBuf,
    pub plan: PathBuf,
    pub cfg: ModelConfig,
    pub stored: Stored,
}

pub fn built(o: &Opts, arch: Option<Arch>, kernels: &[KernelImage]) -> Built {
    built_as(o, arch, kernels, DType::Bf16)
}

/// `built` with the GEMM weights in `gemm` (bf16 or f16; the kernels must match).
pub fn built_as(o: &Opts, arch: Option<Arch>, kernels: &[KernelImage], gemm: DType) -> Built {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    std::fs::create_dir(&model).unwrap();
    let (cfg, stored) = write_model(&model, o, 7);
    let plan = tmp.path().join("engines").join("toy.plan");
    build_plan_as(&model, &plan, arch, kernels, gemm);
    Built { tmp, model, plan, cfg, stored }
}

/// Replaces one f32 tensor's data in model.safetensors.
pub fn rewrite_f32(dir: &std::path::Path, name: &str, data: &[f32]) {
    use safetensors::tensor::TensorView;
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let new: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    let views: std::collections::HashMap<String, TensorView> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            let d = if n == name { &new[..] } else { v.data() };
            (n, TensorView::new(v.dtype(), v.shape().to_vec(), d).unwrap())
        })
        .collect();
    let out = safetensors::serialize(&views, &None).unwrap();
    std::fs::write(&path, out).unwrap();
}
