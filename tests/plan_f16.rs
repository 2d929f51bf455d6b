//! Plans with fp16 GEMM weights (`kiln-build --gemm-operands f16`, docs/numerics.md): the
//! GEMM weights and the embedding become fp16, exactly where fp16 holds the bf16 value,
//! everything else is byte for byte the bf16 plan's, and a value fp16 cannot hold is a
//! build error naming the tensor.

mod plan_fixture;

use kiln::checkpoint::Checkpoint;
use kiln::config::{LayerKind, ModelConfig};
use kiln::plan::layout::DOWN_SCALE_LOG2;
use kiln::plan::{names, plan_packing, plan_packing_as, write_plan, DType, Expected, Plan};
use plan_fixture::{build_info, write_model, Opts};
use safetensors::Dtype;
use std::path::Path;

fn pack(model: &Path, out: &Path, gemm: DType) -> anyhow::Result<Plan> {
    let cfg = ModelConfig::from_file(&model.join("config.json"))?;
    let ck = Checkpoint::open(model)?;
    let packing = if gemm == DType::Bf16 { plan_packing(&ck, &cfg)? } else { plan_packing_as(&ck, &cfg, gemm)? };
    write_plan(out, &ck, &cfg, &packing, &build_info(model, None), &[], &mut |_, _| {})?;
    Plan::open(out)
}

/// The plan tensors the GEMMs read (and the embedding, the tied lm_head), from the
/// config alone.
fn gemm_tensors(c: &ModelConfig, mtp: bool) -> Vec<String> {
    let mut out = vec![names::EMBED.to_string()];
    let mut layer = |p: &str, kind: LayerKind| {
        match kind {
            LayerKind::Linear => out.extend([names::qkvzba(p), names::gdn_out(p)]),
            LayerKind::Full => out.extend([names::qgkv(p), names::o(p)]),
        }
        out.extend([names::gate_up(p), names::down(p)]);
    };
    for (i, kind) in c.layer_kinds.iter().enumerate() {
        layer(&names::layer(i), *kind);
    }
    if mtp {
        layer(&names::mtp_layer(0), LayerKind::Full);
        out.push(names::MTP_FC.to_string());
    }
    out.sort();
    out
}

#[test]
fn f16_plans_hold_the_gemm_weights_in_fp16_and_everything_else_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    std::fs::create_dir(&model).unwrap();
    // One GEMM weight stored as f32 holding bf16 values down to 2^-30, to reach fp16's
    // subnormals (the fixture's other values are bf16 in [-2, 2]).
    let o = Opts { dtype: |n| if n == "layers.0.mlp.down_proj.weight" { Dtype::F32 } else { Dtype::BF16 }, ..Opts::default() };
    let (cfg, _) = write_model(&model, &o, 11);
    let tiny: Vec<f32> = (0..cfg.intermediate_size * cfg.hidden_size)
        .map(|i| {
            let x = 2f32.powi(-((i % 17) as i32) - 14) * (1.0 + (i % 127) as f32 / 128.0);
            half::bf16::from_f32(if i % 2 == 0 { x } else { -x }).to_f32()
        })
        .collect();
    plan_fixture::rewrite_f32(&model, "model.language_model.layers.0.mlp.down_proj.weight", &tiny);
    let b16 = pack(&model, &tmp.path().join("b.plan"), DType::Bf16).unwrap();
    let f16 = pack(&model, &tmp.path().join("f.plan"), DType::F16).unwrap();
    assert_eq!((b16.header.dtype.as_str(), b16.header.gemm_f16()), ("bf16", false));
    assert_eq!((f16.header.dtype.as_str(), f16.header.gemm_f16()), ("f16", true));
    f16.check(&Expected::default()).unwrap();

    let mut fp16: Vec<String> =
        f16.header.tensors.iter().filter(|t| t.dtype == DType::F16).map(|t| t.name.clone()).collect();
    fp16.sort();
    assert_eq!(fp16, gemm_tensors(&cfg, true));
    assert_eq!(b16.header.tensors.len(), f16.header.tensors.len());
    let (mut exact, mut small) = (0usize, 0usize);
    for t in &b16.header.tensors {
        let (a, b) = (b16.tensor(&t.name).unwrap(), f16.tensor(&t.name).unwrap());
        assert_eq!(a.entry.shape, b.entry.shape, "{}", t.name);
        if b.entry.dtype != DType::F16 {
            assert_eq!(a.bytes, b.bytes, "{}: not a GEMM weight, so the same bytes", t.name);
            continue;
        }
        // The down projections are stored times 2^DOWN_SCALE_LOG2 (their input is written
        // times its inverse: kernels/common.cuh GOP_DOWN_LOG2), everything else as is.
        let s = if t.name.ends_with(".mlp.down") { DOWN_SCALE_LOG2 } else { 0 };
        assert_eq!(b.entry.scale_log2, s, "{}", t.name);
        for (x, y) in b.to_f32().into_iter().zip(b.stored_f32()) {
            assert_eq!((x * 2f32.powi(s)).to_bits(), y.to_bits(), "{}: the stored scale", t.name);
        }
        // bf16 -> fp16 keeps every value of magnitude 2^-14 and above exactly (fp16 has
        // more mantissa bits and those exponents); below, fp16 subnormals round to a
        // multiple of 2^-24 (error <= 2^-25).
        for (x, y) in a.to_f32().into_iter().zip(b.to_f32()) {
            if x.abs() >= 2f32.powi(-14) {
                assert_eq!(x.to_bits(), y.to_bits(), "{}: {x:e} became {y:e}", t.name);
                exact += 1;
            } else {
                assert!((x - y).abs() <= 2f32.powi(-25), "{}: {x:e} became {y:e}", t.name);
                small += 1;
            }
        }
    }
    assert!(exact > 1000 && small > 0, "the fixture covers both ranges ({exact} exact, {small} subnormal)");
}

#[test]
fn a_value_fp16_cannot_hold_is_a_build_error_naming_the_tensor() {
    for bad in [70000.0f32, -1e6, f32::INFINITY, f32::NAN] {
        let tmp = tempfile::tempdir().unwrap();
        let (cfg, _) = write_model(tmp.path(), &Opts { dtype: |_| Dtype::F32, ..Opts::default() }, 3);
        let mut data = vec![0.01f32; cfg.intermediate_size * cfg.hidden_size];
        data[5] = bad;
        plan_fixture::rewrite_f32(tmp.path(), "model.language_model.layers.0.mlp.down_proj.weight", &data);
        // The bf16 plan takes it (bf16 has f32's range) ...
        pack(tmp.path(), &tmp.path().join("b.plan"), DType::Bf16).unwrap();
        // ... the fp16 one names the tensor, the value and the limit.
        let err = pack(tmp.path(), &tmp.path().join("f.plan"), DType::F16).err().expect("fp16 cannot hold it").to_string();
        assert!(err.contains("layers.0.mlp.down_proj.weight") && err.contains("65504"), "unhelpful error: {err}");
        assert!(!tmp.path().join("f.plan").exists(), "no half-written plan under the final name");
    }
}
