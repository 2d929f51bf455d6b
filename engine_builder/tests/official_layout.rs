//! The official Qwen3.5-4B checkpoint, proven without its weights: from the official
//! config.json (byte for byte) and the inventory of every official tensor (name, shape,
//! dtype, shard), both in tests/data/official/, this builds a checkpoint whose shard
//! headers list exactly those tensors and whose data is a hole (sparse files of the
//! official sizes, no bytes on disk), then runs `kiln-build --check-only` on it.

use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn inventory() -> Value {
    let text = std::fs::read_to_string(repo().join("tests/data/official/tensors.qwen3.5-4b.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn dtype_size(dtype: &str) -> u64 {
    match dtype {
        "BF16" | "F16" => 2,
        "F32" => 4,
        other => panic!("unexpected dtype {other} in the inventory"),
    }
}

/// One tensor of the inventory.
#[derive(Clone, Debug)]
struct Entry {
    name: String,
    dtype: String,
    shape: Vec<u64>,
    shard: String,
}

impl Entry {
    fn bytes(&self) -> u64 {
        self.shape.iter().product::<u64>() * dtype_size(&self.dtype)
    }
}

/// Every official tensor, each in its shard. The inventory cannot tell which 10 of the
/// MLP matrices flagged `shard_certain: false` live in shard 2 (they are all the same
/// size); moving the last 10 of them there gives each shard its official tensor count
/// and byte size.
fn official_tensors(inv: &Value) -> Vec<Entry> {
    let mut all: Vec<Entry> = ["tensors", "visual_tensors"]
        .iter()
        .flat_map(|k| inv[*k].as_object().unwrap().iter())
        .map(|(name, t)| Entry {
            name: name.clone(),
            dtype: t["dtype"].as_str().unwrap().to_string(),
            shape: t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect(),
            shard: t["shard"].as_str().unwrap().to_string(),
        })
        .collect();
    let shards = inv["shards"].as_array().unwrap();
    let (first, second) = (shards[0]["name"].as_str().unwrap(), shards[1]["name"].as_str().unwrap());
    let want_first = shards[0]["tensor_count"].as_u64().unwrap() as usize;
    let extra = all.iter().filter(|e| e.shard == first).count() - want_first;
    let uncertain: Vec<&str> = inv["uncertain_shard_tensors"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    for name in uncertain.iter().rev().take(extra) {
        let e = all.iter_mut().find(|e| e.name == *name).unwrap();
        assert_eq!(e.shard, first);
        e.shard = second.to_string();
    }
    all
}

/// Writes one shard: the header (F32 tensors first, then by name, data contiguous) and a
/// hole for the data. Returns its data bytes.
fn write_shard(path: &Path, tensors: &[&Entry]) -> u64 {
    let mut sorted = tensors.to_vec();
    sorted.sort_by(|a, b| (a.dtype != "F32", &a.name).cmp(&(b.dtype != "F32", &b.name)));
    let mut header = Map::new();
    let mut offset = 0u64;
    for e in sorted {
        header.insert(e.name.clone(), json!({"dtype": e.dtype, "shape": e.shape, "data_offsets": [offset, offset + e.bytes()]}));
        offset += e.bytes();
    }
    let mut text = serde_json::to_vec(&Value::Object(header)).unwrap();
    text.resize(text.len().div_ceil(8) * 8, b' ');
    let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&text);
    std::fs::write(path, &bytes).unwrap();
    // The data: a hole of the right length (no blocks on disk).
    std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(bytes.len() as u64 + offset).unwrap();
    offset
}

/// The official checkpoint folder with zero-data shards; `edit` may change the tensors
/// first (to test failures).
fn write_checkpoint(dir: &Path, edit: impl FnOnce(&mut Vec<Entry>)) {
    let inv = inventory();
    let mut tensors = official_tensors(&inv);
    edit(&mut tensors);
    let mut weight_map = Map::new();
    let mut total = 0;
    for shard in inv["shards"].as_array().unwrap() {
        let name = shard["name"].as_str().unwrap();
        let mine: Vec<&Entry> = tensors.iter().filter(|e| e.shard == name).collect();
        let data = write_shard(&dir.join(name), &mine);
        if mine.len() == shard["tensor_count"].as_u64().unwrap() as usize {
            assert_eq!(data, shard["data_bytes"].as_u64().unwrap(), "{name}: data bytes differ from the official shard");
        }
        total += data;
        for e in mine {
            weight_map.insert(e.name.clone(), json!(name));
        }
    }
    let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), serde_json::to_vec_pretty(&index).unwrap()).unwrap();
    std::fs::copy(repo().join("tests/data/official/config.qwen3.5-4b.json"), dir.join("config.json")).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"] {
        std::fs::copy(repo().join("assets/qwen3_5").join(f), dir.join(f)).unwrap();
    }
}

fn check_only(dir: &Path, out: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln-build"))
        .args(["--check-only", "--model", dir.to_str().unwrap(), "--out", out.to_str().unwrap()])
        .output()
        .expect("running kiln-build")
}

fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn the_inventory_is_the_official_checkpoint() {
    let inv = inventory();
    let tensors = official_tensors(&inv);
    assert_eq!(tensors.len(), 738);
    let total: u64 = tensors.iter().map(Entry::bytes).sum();
    assert_eq!(total, inv["total_size"].as_u64().unwrap());
    let f32s: Vec<&Entry> = tensors.iter().filter(|e| e.dtype == "F32").collect();
    assert_eq!(f32s.len(), 48);
    assert!(f32s.iter().all(|e| e.name.ends_with("linear_attn.A_log") || e.name.ends_with("linear_attn.norm.weight")));
    let conv = tensors.iter().find(|e| e.name == "model.language_model.layers.0.linear_attn.conv1d.weight").unwrap();
    assert_eq!(conv.shape, vec![8192, 1, 4]);
    assert!(!tensors.iter().any(|e| e.name == "lm_head.weight"));
    assert_eq!(tensors.iter().filter(|e| e.name.starts_with("mtp.")).count(), 15);
}

#[test]
fn check_only_accepts_the_official_layout_reading_headers_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("Qwen3.5-4B");
    std::fs::create_dir(&dir).unwrap();
    write_checkpoint(&dir, |_| {});
    let before = listing(&dir);
    let out = tmp.path().join("engines");
    let o = check_only(&dir, &out);
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "kiln-build --check-only failed:\n{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one summary line: {stdout}");
    let line = lines[0];
    // 426 language-model tensors + 15 MTP (the 297 vision tensors are not the text model's).
    // Every one of them has a decision: packed (as stored or converted) or skipped.
    for part in ["(qwen3_5)", "441 tensors checked, 441 packed into", "0 skipped", "no tensor data read, nothing written"] {
        assert!(line.contains(part), "`{part}` missing from: {line}");
    }
    assert!(!out.exists(), "--check-only created {}", out.display());
    assert_eq!(listing(&dir), before, "--check-only changed the checkpoint folder");
    println!("{line}");
    // An fp16 plan (--gemm-operands f16): the GEMM weights' conversions are bf16 -> f16.
    let o = Command::new(env!("CARGO_BIN_EXE_kiln-build"))
        .args(["--check-only", "--gemm-operands", "f16", "--model", dir.to_str().unwrap()])
        .output()
        .expect("running kiln-build");
    let f16 = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && f16.contains("bf16->f16") && !line.contains("bf16->f16"), "{f16}\n{line}");
}

#[test]
fn check_only_names_a_misshaped_or_missing_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let conv = "model.language_model.layers.4.linear_attn.conv1d.weight";
    write_checkpoint(tmp.path(), |t| t.iter_mut().find(|e| e.name == conv).unwrap().shape = vec![8192, 4]);
    let o = check_only(tmp.path(), &tmp.path().join("e"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains(conv) && err.contains("[8192, 4]"), "{err}");

    let tmp = tempfile::tempdir().unwrap();
    let norm = "model.language_model.norm.weight";
    write_checkpoint(tmp.path(), |t| t.retain(|e| e.name != norm));
    let o = check_only(tmp.path(), &tmp.path().join("e"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("missing tensor `norm.weight`"), "{err}");
}
