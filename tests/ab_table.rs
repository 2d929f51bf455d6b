//! scripts/ab_table.py reads a device_run.sh A/B bench file (tests/data/ab_bench.txt is
//! session 15's cluster_norm.txt) into one line per tag with every run and the change of
//! the mean against the first tag.

use std::process::Command;

#[test]
fn an_ab_bench_file_becomes_one_line_per_tag() {
    let out = Command::new("python3").args(["scripts/ab_table.py", "tests/data/ab_bench.txt"]).output().expect("python3 runs (CI installs it)");
    assert!(out.status.success(), "ab_table.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    // The baseline: both runs per batch, no change column.
    assert!(lines[0].starts_with("cluster_max_m 16: b32: 6.804 / 6.815; b64: 9.357 / 9.315;"), "{}", lines[0]);
    assert!(!lines[0].contains('%'));
    // The other tag against it: batch 32 means 6.8975 against 6.8095, +1.3 %.
    assert!(lines[1].starts_with("cluster_max_m 256: b32: 6.865 / 6.930 (+1.3 %);"), "{}", lines[1]);
    assert!(lines[1].contains("b256: 33.267 / 33.391 (+1.4 %)"), "{}", lines[1]);
}
