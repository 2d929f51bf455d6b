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
