//! Packing a checkpoint into a plan and reading it back: every tensor's bytes and
//! shape, the fused row orders, dtype conversion, and build errors.

mod plan_fixture;

use kiln::checkpoint::Checkpoint;
use kiln::config::{LayerKind, ModelConfig};
use kiln::plan::{names, plan_packing, write_plan, DType, Plan, ALIGN};
use plan_fixture::{build_info, built, rewrite_f32, write_model, Opts, Stored};
use safetensors::Dtype;

/// Compares two value slices and reports the first difference, not both slices.
fn check_same(got: &[f32], want: &[f32], what: String) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!("{what}: element {i} of {} is {} but should be {}", got.len(), got[i], want[i]);
    }
}

macro_rules! same {
    ($a:expr, $b:expr) => {
        check_same(&$a[..], &$b[..], String::new())
    };
    ($a:expr, $b:expr, $($m:tt)+) => {
        check_same(&$a[..], &$b[..], format!($($m)+))
    };
}

fn bf16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| half::bf16::from_f32(*x).to_f32()).collect()
}

fn src<'a>(s: &'a Stored, name: &str) -> &'a [f32] {
    &s.get(name).unwrap_or_else(|| panic!("fixture has no `{name}`")).1
}

/// Rows [r0, r0 + n) of a row-major matrix of width w.
fn rows(m: &[f32], w: usize, r0: usize, n: usize) -> &[f32] {
    &m[r0 * w..(r0 + n) * w]
}

fn get(plan: &Plan, name: &str) -> (Vec<usize>, DType, Vec<f32>) {
    let t = plan.tensor(name).unwrap();
    (t.entry.shape.clone(), t.entry.dtype, t.to_f32())
}

/// Checks the fused layouts row by row against the values written to the checkpoint,
/// computed here from the config alone (not from the plan's own part table).
fn check_layouts(plan: &Plan, c: &ModelConfig, s: &Stored, prefix: &str, src_prefix: &str, kind: LayerKind) {
    let h = c.hidden_size;
    let sp = |n: &str| format!("{src_prefix}.{n}");
    match kind {
        LayerKind::Full => {
            let (shape, dt, qgkv) = get(plan, &names::qgkv(prefix));
            let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
            assert_eq!((shape, dt), (vec![(2 * nh + 2 * nkv) * hd, h], DType::Bf16));
            let q = src(s, &sp("self_attn.q_proj.weight"));
            for head in 0..nh {
                // Per head: hd query rows, then hd gate rows, exactly as q_proj stores them.
                same!(rows(&qgkv, h, head * 2 * hd, hd), rows(q, h, head * 2 * hd, hd), "{prefix} q head {head}");
                same!(rows(&qgkv, h, head * 2 * hd + hd, hd), rows(q, h, head * 2 * hd + hd, hd), "{prefix} gate head {head}");
            }
            let k0 = 2 * nh * hd;
            same!(rows(&qgkv, h, k0, nkv * hd), src(s, &sp("self_attn.k_proj.weight")), "{prefix} k rows");
            same!(rows(&qgkv, h, k0 + nkv * hd, nkv * hd), src(s, &sp("self_attn.v_proj.weight")), "{prefix} v rows");
            same!(get(plan, &names::o(prefix)).2, src(s, &sp("self_attn.o_proj.weight")));
            let (shape, dt, qn) = get(plan, &names::q_norm(prefix));
            assert_eq!((shape, dt), (vec![hd], DType::Bf16));
            same!(qn, bf16(src(s, &sp("self_attn.q_norm.weight"))), "norms are stored raw (kernel applies 1 + w)");
            same!(get(plan, &names::k_norm(prefix)).2, bf16(src(s, &sp("self_attn.k_norm.weight"))));
        }
        LayerKind::Linear => {
            let (qkv, vd, nv) = (c.linear_qkv_dim(), c.linear_value_dim(), c.linear_num_value_heads);
            let (shape, dt, qkvz) = get(plan, &names::qkvzba(prefix));
            assert_eq!((shape, dt), (vec![qkv + vd + 2 * nv, h], DType::Bf16));
            let in_qkv = src(s, &sp("linear_attn.in_proj_qkv.weight"));
            let kd = c.linear_num_key_heads * c.linear_key_head_dim;
            // q rows, k rows, v rows as stored, then z, b, a.
            same!(rows(&qkvz, h, 0, kd), rows(in_qkv, h, 0, kd), "{prefix} q");
            same!(rows(&qkvz, h, kd, kd), rows(in_qkv, h, kd, kd), "{prefix} k");
            same!(rows(&qkvz, h, 2 * kd, vd), rows(in_qkv, h, 2 * kd, vd), "{prefix} v");
            same!(rows(&qkvz, h, qkv, vd), src(s, &sp("linear_attn.in_proj_z.weight")), "{prefix} z");
            same!(rows(&qkvz, h, qkv + vd, nv), src(s, &sp("linear_attn.in_proj_b.weight")), "{prefix} b");
            same!(rows(&qkvz, h, qkv + vd + nv, nv), src(s, &sp("linear_attn.in_proj_a.weight")), "{prefix} a");
            let (shape, dt, conv) = get(plan, &names::conv(prefix));
            assert_eq!((shape, dt), (vec![qkv, c.conv_kernel], DType::Bf16));
            same!(conv, src(s, &sp("linear_attn.conv1d.weight")));
            for (n, f) in [(names::a_log(prefix), "linear_attn.A_log"), (names::dt_bias(prefix), "linear_attn.dt_bias")] {
                let (shape, dt, v) = get(plan, &n);
                assert_eq!((shape, dt), (vec![nv], DType::F32));
                same!(v, src(s, &sp(f)), "{n}");
            }
            same!(get(plan, &names::gdn_norm(prefix)).2, bf16(src(s, &sp("linear_attn.norm.weight"))));
            same!(get(plan, &names::gdn_out(prefix)).2, src(s, &sp("linear_attn.out_proj.weight")));
        }
    }
    let (shape, dt, gu) = get(plan, &names::gate_up(prefix));
    let i = c.intermediate_size;
    assert_eq!((shape, dt), (vec![2 * i, h], DType::Bf16));
    same!(rows(&gu, h, 0, i), src(s, &sp("mlp.gate_proj.weight")), "{prefix} gate");
    same!(rows(&gu, h, i, i), src(s, &sp("mlp.up_proj.weight")), "{prefix} up");
    same!(get(plan, &names::down(prefix)).2, src(s, &sp("mlp.down_proj.weight")));
    same!(get(plan, &names::input_norm(prefix)).2, bf16(src(s, &sp("input_layernorm.weight"))));
    same!(get(plan, &names::post_attention_norm(prefix)).2, bf16(src(s, &sp("post_attention_layernorm.weight"))));
}

#[test]
fn official_layout_round_trips_with_fused_layouts() {
    let b = built(&Opts::default(), None, &[]);
    let plan = Plan::open(&b.plan).unwrap();
    let (c, s) = (&b.cfg, &b.stored);
    assert_eq!(&plan.model_config().unwrap(), c);
    for (i, kind) in c.layer_kinds.iter().enumerate() {
        check_layouts(&plan, c, s, &names::layer(i), &format!("layers.{i}"), *kind);
    }
    check_layouts(&plan, c, s, &names::mtp_layer(0), "mtp.layers.0", LayerKind::Full);
    same!(get(&plan, names::EMBED).2, src(s, "embed_tokens.weight"));
    assert_eq!(get(&plan, names::EMBED).0, vec![c.vocab_size, c.hidden_size]);
    same!(get(&plan, names::NORM).2, bf16(src(s, "norm.weight")));
    assert!(!plan.has_tensor(names::LM_HEAD), "tied: no lm_head in the plan");
    same!(get(&plan, names::MTP_FC).2, src(s, "mtp.fc.weight"));
    for (n, f) in [
        (names::MTP_PRE_FC_NORM_EMBEDDING, "mtp.pre_fc_norm_embedding.weight"),
        (names::MTP_PRE_FC_NORM_HIDDEN, "mtp.pre_fc_norm_hidden.weight"),
        (names::MTP_NORM, "mtp.norm.weight"),
    ] {
        assert_eq!(get(&plan, n), (vec![c.hidden_size], DType::Bf16, bf16(src(s, f))), "{n}");
    }
    // Every checkpoint tensor is accounted for exactly once by the part table.
    let mut parts: Vec<&str> =
        plan.header.tensors.iter().flat_map(|t| t.parts.iter().map(|p| p.source.as_str())).collect();
    parts.sort();
    let mut want: Vec<&str> = s.keys().map(String::as_str).collect();
    want.sort();
    assert_eq!(parts, want);
    // Alignment: every blob at a multiple of 256 in the file and in memory.
    for t in &plan.header.tensors {
        assert_eq!(t.offset % ALIGN, 0, "{}", t.name);
        assert_eq!(plan.tensor(&t.name).unwrap().bytes.as_ptr() as usize % ALIGN as usize, 0, "{}", t.name);
    }
    assert_eq!(plan.weights().len() as u64, plan.header.weights_len);
    assert_eq!(plan.header.arch, None);
    assert!(plan.header.kernels.is_empty());
}

#[test]
fn text_layout_untied_without_mtp() {
    let o = Opts { prefix: "model.", tie: false, mtp: false, ..Opts::default() };
    let b = built(&o, None, &[]);
    let plan = Plan::open(&b.plan).unwrap();
    let (c, s) = (&b.cfg, &b.stored);
    same!(get(&plan, names::LM_HEAD).2, src(s, "lm_head.weight"));
    assert!(plan.header.tensors.iter().all(|t| !t.name.starts_with("mtp.")));
    for (i, kind) in c.layer_kinds.iter().enumerate() {
        check_layouts(&plan, c, s, &names::layer(i), &format!("layers.{i}"), *kind);
    }
}

#[test]
fn tied_checkpoint_with_lm_head_skips_it_explicitly() {
    let tmp = tempfile::tempdir().unwrap();
    // Written untied (lm_head present), then the config says tied.
    let o = Opts { tie: false, ..Opts::default() };
    write_model(tmp.path(), &o, 3);
    let mut cfg_json = plan_fixture::config_json(&o);
    cfg_json["tie_word_embeddings"] = true.into();
    let cfg = ModelConfig::from_json(&cfg_json).unwrap();
    let ck = Checkpoint::open(tmp.path()).unwrap();
    let p = plan_packing(&ck, &cfg).unwrap();
    assert!(p.skipped.iter().any(|s| s.name == "lm_head.weight"), "{:?}", p.skipped);
    assert!(p.specs.iter().all(|s| s.name != names::LM_HEAD));
}

#[test]
fn f32_and_f16_inputs_convert_to_bf16_round_to_nearest_even() {
    let o = Opts {
        dtype: |n| match n {
            "embed_tokens.weight" | "norm.weight" => Dtype::F32,
            n if n.contains("mlp.up_proj") => Dtype::F16,
            _ => Dtype::BF16,
        },
        ..Opts::default()
    };
    let b = built(&o, None, &[]);
    let plan = Plan::open(&b.plan).unwrap();
    let s = &b.stored;
    // f32 -> bf16 with round-to-nearest-even, matrices and norms alike.
    same!(get(&plan, names::EMBED).2, bf16(src(s, "embed_tokens.weight")));
    same!(get(&plan, names::NORM).2, bf16(src(s, "norm.weight")));
    let h = b.cfg.hidden_size;
    let i = b.cfg.intermediate_size;
    let gu = get(&plan, &names::gate_up("layers.0")).2;
    same!(rows(&gu, h, i, i), bf16(src(s, "layers.0.mlp.up_proj.weight")).as_slice());

    // Ties go to even, checked on hand-picked values through the same packer.
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, _) = write_model(tmp.path(), &Opts { dtype: |_| Dtype::F32, ..Opts::default() }, 5);
    let eps = 2f32.powi(-8); // bf16 spacing at 1.0 is 2^-7
    let cases: [(f32, f32); 5] = [
        (1.0 + eps, 1.0),                                 // halfway, 1.0 is even
        (1.0 + 3.0 * eps, 1.0 + 4.0 * eps),               // halfway, round up to even
        (1.0 + eps + 2f32.powi(-20), 1.0 + 2.0 * eps),     // above halfway
        (-(1.0 + eps), -1.0),
        (f32::MAX, f32::INFINITY),                         // past bf16's largest finite value
    ];
    let mut data = vec![0.0f32; cfg.vocab_size * cfg.hidden_size];
    for (k, (x, _)) in cases.iter().enumerate() {
        data[k] = *x;
    }
    rewrite_f32(tmp.path(), "model.language_model.embed_tokens.weight", &data);
    let ck = Checkpoint::open(tmp.path()).unwrap();
    let out = tmp.path().join("p.plan");
    let packing = plan_packing(&ck, &cfg).unwrap();
    write_plan(&out, &ck, &cfg, &packing, &build_info(tmp.path(), None), &[], &mut |_, _| {}).unwrap();
    let got = Plan::open(&out).unwrap().tensor(names::EMBED).unwrap().to_f32();
    for (k, (x, want)) in cases.iter().enumerate() {
        assert_eq!(got[k], *want, "bf16({x:e})");
    }
}

#[test]
fn missing_unknown_and_misshaped_tensors_are_build_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, _) = write_model(tmp.path(), &Opts::default(), 9);
    // Drop one tensor, add an unknown one, reshape one.
    let path = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mystery = vec![0u8; 4];
    let mut views = std::collections::HashMap::new();
    for (n, v) in st.tensors() {
        if n == "model.language_model.layers.1.linear_attn.in_proj_z.weight" {
            continue;
        }
        let shape = if n == "model.language_model.layers.3.mlp.down_proj.weight" {
            vec![v.shape()[1], v.shape()[0]]
        } else {
            v.shape().to_vec()
        };
        views.insert(n.clone(), safetensors::tensor::TensorView::new(v.dtype(), shape, v.data()).unwrap());
    }
    views.insert(
        "model.language_model.layers.2.extra.weight".to_string(),
        safetensors::tensor::TensorView::new(Dtype::BF16, vec![2], &mystery).unwrap(),
    );
    std::fs::write(&path, safetensors::serialize(&views, &None).unwrap()).unwrap();
    let ck = Checkpoint::open(tmp.path()).unwrap();
    let err = plan_packing(&ck, &cfg).unwrap_err().to_string();
    assert!(err.contains("missing tensor `layers.1.linear_attn.in_proj_z.weight`"), "{err}");
    assert!(err.contains("unknown tensor `model.language_model.layers.2.extra.weight`"), "{err}");
    assert!(err.contains("model.language_model.layers.3.mlp.down_proj.weight` has shape [48, 32]"), "{err}");
}

#[test]
fn rewriting_a_plan_replaces_it_and_leaves_no_temp_files() {
    let b = built(&Opts::default(), None, &[]);
    let before = Plan::open(&b.plan).unwrap().header.created_unix;
    plan_fixture::build_plan(&b.model, &b.plan, None, &[]);
    let plan = Plan::open(&b.plan).unwrap();
    assert!(plan.header.created_unix >= before);
    let dir = b.plan.parent().unwrap();
    let names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, vec!["toy.plan".to_string()]);
}
