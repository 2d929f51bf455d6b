//! `scripts/soak.py` (the soak of issue 13) against the demo server for 30 s: mixed traffic
//! with cut streams, aborts, sampling and long prompts, then no request lost, no 5xx, every
//! slot and KV block free when idle, host memory flat. The device run uses the same script
//! for longer (device_run.sh stage `soak`).

mod common;

use common::proc::{Proc, KILN};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

#[test]
fn soak_of_mixed_traffic_loses_nothing_and_leaks_nothing() {
    let mut cmd = Command::new(KILN);
    // No prefix cache: its snapshots legitimately grow host memory until it is full.
    cmd.args(["serve", "--port", "0", "--disable-radix-cache", "--max-running-requests", "8"]);
    let mut p = Proc::spawn(cmd);
    let base = p.wait_ready();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/soak.py");
    let pid = p.child.id().to_string();
    let args = ["--url", &base, "--duration", "30", "--concurrency", "8", "--pid", &pid, "--sample-every", "2"];
    let small = ["--vocab", "2000", "--long-min", "200", "--long-max", "600", "--max-out", "16"];
    let out = Command::new("python3").arg(script).args(args).args(small).output().expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find_map(|l| l.strip_prefix("soak ")).unwrap_or_else(|| panic!("no report: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    let rep: Value = serde_json::from_str(line).unwrap();
    println!("{rep}");
    assert!(out.status.success(), "soak failed: {rep}");
    // The checks the exit status stands for, spelled out so a silent script cannot pass.
    assert!(rep["requests"].as_u64().unwrap() >= 30, "{rep}");
    for kind in ["full", "sample", "native", "cut", "abort"] {
        assert!(rep["by_kind"][kind].as_u64().unwrap_or(0) >= 1, "no {kind} request ran: {rep}");
    }
    assert_eq!(rep["lost_or_wrong"], 0, "{rep}");
    assert_eq!(rep["http_5xx"], 0, "{rep}");
    assert_eq!(rep["slots_used_idle"], 0.0, "{rep}");
    assert_eq!(rep["kv_blocks_used_idle"], 0.0, "{rep}");
    assert_eq!(rep["host_mem_flat"], true, "{rep}");
    p.sigterm();
    assert!(p.wait_exit(Duration::from_secs(15)).success());
}
