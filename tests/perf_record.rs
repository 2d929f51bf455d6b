//! scripts/perf_record.py turns a device run's output folder into one runs.jsonl line
//! with the fields issue 8 names (format samples in tests/data/perf_run).

use serde_json::Value;
use std::process::Command;

fn record(dir: &str) -> Value {
    let out = Command::new("python3")
        .args(["scripts/perf_record.py", "--out", dir, "--commit", "abc1234", "--gpu", "NVIDIA H200"])
        .output()
        .expect("python3 runs (CI installs it)");
    assert!(out.status.success(), "perf_record.py failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

#[test]
fn a_run_folder_becomes_one_line_with_every_named_field() {
    let l = record("tests/data/perf_run");
    assert_eq!(l["commit"], "abc1234");
    assert_eq!(l["gpu"], "NVIDIA H200");
    assert!(l["date"].as_str().is_some_and(|d| d.len() == 10));
    assert_eq!(l["decode_ms"]["1"], 4.27);
    assert_eq!(l["decode_ms"]["64"], 15.556);
    assert_eq!(l["decode_ms_ctx8192"], 4.6);
    assert_eq!(l["prefill_ms"]["1024"], 19.77);
    assert_eq!(l["prefill_ms"]["8192"], 160.1);
    assert_eq!(l["peer_ms"]["8"], 7.981);
    assert_eq!(l["copy_tbps"], 4.199);
    let c = &l["correctness"];
    assert_eq!(c["rel_err"], 0.0107);
    for k in ["0", "0.05", "0.2", "0.5"] {
        assert!(c["agree"][k].is_f64() && c["hf_bf16_agree"][k].is_f64(), "agreement bucket {k}: {c}");
    }
    assert_eq!(c["batch_invariant"], true);
    assert_eq!(c["batch_invariant_sizes"], serde_json::json!([8, 64, 256]));
    assert_eq!(c["mixed_invariant"], true);
    assert_eq!(l["serving"]["c64"]["tpot_p50_ms"], 20.6);
    // Issue 9's mtp object, from verify.txt: the projections divide the oracle's measured
    // cycle (k + 1 tokens per cycle, every draft accepted) by each acceptance length.
    let m = &l["mtp"];
    assert_eq!(m["draft_steps"], 3);
    assert_eq!(m["draft_ms"], 1.85);
    assert_eq!(m["draft_ms_by_vocab"]["32768"], 0.714);
    assert_eq!(m["verify_ms"]["8"], 7.1);
    assert_eq!(m["plain_tpot_ms"], 4.539);
    assert_eq!(m["adversarial_tpot_ms"], 7.139);
    let (oracle, cycle) = (m["oracle_tpot_ms"].as_f64().unwrap(), m["cycle_ms"].as_f64().unwrap());
    assert_eq!(oracle, 1.75);
    // cycle_ms is rounded to 3 decimals; 1.75 x 4 is exact there.
    assert!((cycle - oracle * 4.0).abs() < 1e-9, "cycle {cycle} from oracle {oracle}");
    for (accept, key) in [(2.5, "2.5"), (2.8, "2.8"), (3.2, "3.2")] {
        let p = m["projected_tpot_ms"][key].as_f64().unwrap();
        // perf_record.py rounds the projections to 3 decimals.
        assert!((p - cycle / accept).abs() < 1e-3, "projected at {accept}: {p}");
    }
    assert_eq!(l["verify"]["1"]["exact"], true);
}

#[test]
fn a_failed_invariance_and_missing_stages_are_reported_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("eval.txt"),
        "batch invariance (32 greedy tokens, alone vs among 7 others): identical\n\
         batch invariance (32 greedy tokens, alone vs among 63 others): DIFFERENT\n",
    )
    .unwrap();
    let l = record(dir.path().to_str().unwrap());
    assert_eq!(l["correctness"]["batch_invariant"], false);
    // Stages that did not run leave their fields out rather than inventing them.
    for absent in ["decode_ms", "peer_ms", "copy_tbps", "serving", "mtp"] {
        assert!(l.get(absent).is_none(), "{absent} should be absent: {l}");
    }
    assert!(l["correctness"].get("mixed_invariant").is_none());
}

#[test]
fn ab_stages_gpu_tests_and_microbenchmarks_become_fields() {
    // The shapes device_run.sh writes: bench_as lines prefixed by their tag (a mixed step's
    // too), the GPU tests' result lines, and bench/*.cu's tables.
    let dir = tempfile::tempdir().unwrap();
    let w = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    w(
        "mixed.txt",
        "bf16_inputs=1 run 1: prefill 2048 tokens: median 38.47 ms\n\
         bf16_inputs=1 run 1: decode batch 64 ctx 1024: median 9.297 ms/step (greedy on device), min 9.284\n\
         bf16_inputs=1 run 1: mixed step: decode batch 64 ctx 1024 + prefill 2048: median 49.327 ms/step, min 48.896\n\
         bf16_inputs=1 run 1: mixed step: decode batch 64 ctx 1024 + prefill 2048: median 48.910 ms/step, min 48.643\n",
    );
    w("bench.txt", "decode batch 1 ctx 1024: median 3.810 ms/step (greedy on device), min 3.781\n");
    // The call's log repeats every stage's lines: not an A/B of its own.
    w("log.txt", "bf16_inputs=1 run 1: decode batch 64 ctx 1024: median 9.297 ms/step (greedy on device), min 9.284\n");
    w("kernels.txt", "test t_gemm::gemm_matches ... ok\ntest result: ok. 37 passed; 0 failed; 0 ignored; 0 measured; 1 filtered out\n");
    w("backend.txt", "test result: FAILED. 7 passed; 1 failed; 0 ignored\n");
    w("mma_rate.txt", "regs warps/SM  8 chains  2 regs  20:   637.5 TFLOP/s (0.869 ms)\nlds  warps/SM 16 chains 16 regs 119:   572.5 TFLOP/s (1.934 ms)\n");
    w("tiled_stage.txt", "+bar+w+x        1234.5 us   400.0 TFLOP/s  1.58 us per stage (6.5 waves of blocks)\n");
    let l = record(dir.path().to_str().unwrap());
    let m = &l["ab_ms"]["mixed"]["bf16_inputs=1 run 1"];
    assert_eq!(m["64"], serde_json::json!([9.297]));
    assert_eq!(m["64+2048"], serde_json::json!([49.327, 48.91]), "both runs of a mixed step, in order");
    assert!(l["ab_ms"].get("bench").is_none(), "the plain bench is decode_ms, not an A/B: {l}");
    assert!(l["ab_ms"].get("log").is_none(), "the log is not an A/B: {l}");
    assert_eq!(l["decode_ms"]["1"], 3.81);
    assert_eq!(l["gpu_tests"]["cuda_kernels"], serde_json::json!({"passed": 37, "failed": 0}));
    assert_eq!(l["gpu_tests"]["cuda_backend"]["failed"], 1, "a failed GPU test is recorded as failed");
    assert_eq!(l["mma_rate_tflops"]["regs warps 8 chains 2"], 637.5);
    assert_eq!(l["mma_rate_tflops"]["lds warps 16 chains 16"], 572.5);
    assert_eq!(l["tiled_stage_us_per_stage"]["+bar+w+x"], 1.58);
}

#[test]
fn another_plans_accuracy_is_recorded_beside_the_default_plans() {
    // device_run.sh stage f16: logits_check f16 writes compare_f16.json and eval_f16.txt.
    let dir = tempfile::tempdir().unwrap();
    let w = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    w(
        "compare_f16.json",
        "{\"positions\": 1056, \"rel_err_vs_fp32\": {\"ours\": 0.0049, \"hf_bf16\": 0.0743}, \"nan_in_ours\": false,\n\
         \"agreement_with_fp32\": {\">0.0\": {\"n\": 1056, \"ours\": 0.995, \"hf_bf16\": 0.81}, \">0.05\": {\"n\": 840, \"ours\": 1.0, \"hf_bf16\": 0.886},\n\
         \">0.2\": {\"n\": 430, \"ours\": 1.0, \"hf_bf16\": 1.0}, \">0.5\": {\"n\": 100, \"ours\": 1.0, \"hf_bf16\": 1.0}}}\n",
    );
    w(
        "eval_f16.txt",
        "batch invariance (32 greedy tokens, alone vs among 7 others): identical\n\
         batch invariance (32 greedy tokens, alone vs among 255 others): DIFFERENT\n\
         mixed-step invariance (decode rows beside prefill chunks): bit-identical\n",
    );
    let l = record(dir.path().to_str().unwrap());
    let c = &l["correctness_by_plan"]["f16"];
    assert_eq!(c["rel_err"], 0.0049);
    assert_eq!(c["agree"]["0"], 0.995);
    assert_eq!(c["batch_invariant"], false, "one differing batch size fails it");
    assert_eq!(c["batch_invariant_sizes"], serde_json::json!([8, 256]));
    assert_eq!(c["mixed_invariant"], true);
    assert!(l.get("correctness").is_none(), "the default plan's fields stay absent without its files: {l}");
}
