//! A plan that does not fit is refused with one sentence per kind of mismatch, and a
//! damaged file is reported as damaged, never read as weights.

mod plan_fixture;

use kiln::plan::{driver_loads_cubins, Arch, Expected, KernelImage, Plan, FORMAT_VERSION, KERNEL_HASH};
use plan_fixture::{built, write_model, Built, Opts};
use std::path::Path;

fn kernels() -> Vec<KernelImage> {
    vec![
        KernelImage { name: "norm".into(), cubin: b"\x7fELF fake norm cubin".repeat(20) },
        KernelImage { name: "gemm".into(), cubin: b"\x7fELF fake gemm cubin".repeat(33) },
    ]
}

fn gpu_plan() -> Built {
    built(&Opts::default(), Some(Arch::Sm100a), &kernels())
}

fn err_of(plan: &Plan, want: &Expected) -> String {
    let e = plan.check(want).unwrap_err().to_string();
    // One sentence: no line breaks, ends with the fix.
    assert!(!e.contains('\n'), "{e}");
    assert!(e.contains("rebuild it with kiln-build"), "{e}");
    assert!(e.starts_with(&plan.path.display().to_string()), "{e}");
    e
}

#[test]
fn a_matching_plan_passes_and_holds_its_kernels() {
    let b = gpu_plan();
    let plan = Plan::open(&b.plan).unwrap();
    let want = Expected::for_gpu(Arch::Sm100a).with_model_dir(&b.model).unwrap();
    plan.check(&want).unwrap();
    plan.prefetch_weights();
    Expected::default().with_model_dir(&b.model).and_then(|w| plan.check(&w)).unwrap();
    for k in kernels() {
        assert_eq!(plan.kernel(&k.name).unwrap(), &k.cubin[..]);
    }
    assert!(plan.kernel("nope").is_err());
    let h = &plan.header;
    assert_eq!(h.kernels.len(), 2);
    assert!(h.kernels.iter().all(|k| k.offset % 256 == 0));
    assert!(h.weights_offset >= h.kernels.iter().map(|k| k.offset + k.len).max().unwrap());
    assert_eq!((h.format_version, h.kernel_hash.as_str(), h.dtype.as_str()), (FORMAT_VERSION, KERNEL_HASH, "bf16"));
}

#[test]
fn refuses_another_arch() {
    let b = gpu_plan();
    let plan = Plan::open(&b.plan).unwrap();
    let e = err_of(&plan, &Expected::for_gpu(Arch::Sm90a));
    assert!(e.ends_with("toy.plan was built for sm_100a but this GPU is sm_90a; rebuild it with kiln-build"), "{e}");
}

#[test]
fn refuses_a_plan_without_kernels_on_a_gpu() {
    let b = built(&Opts::default(), None, &[]);
    let plan = Plan::open(&b.plan).unwrap();
    let e = err_of(&plan, &Expected::for_gpu(Arch::Sm90a));
    assert!(e.contains("was built without CUDA kernels (--no-kernels) but this GPU is sm_90a"), "{e}");
    // The CPU backend needs no kernels: fine.
    plan.check(&Expected::default()).unwrap();
}

#[test]
fn refuses_other_kernel_sources() {
    let b = gpu_plan();
    let plan = Plan::open(&b.plan).unwrap();
    let want = Expected { kernel_hash: Some("0123456789abcdef".repeat(4)), ..Expected::for_gpu(Arch::Sm100a) };
    let e = err_of(&plan, &want);
    assert!(e.contains("was built from other CUDA kernel sources"), "{e}");
    assert!(e.contains(&KERNEL_HASH[..12]) && e.contains("this kiln has 0123456789ab"), "{e}");
}

#[test]
fn refuses_another_model_config() {
    let b = gpu_plan();
    let plan = Plan::open(&b.plan).unwrap();
    let mut cfg = plan_fixture::config_json(&Opts::default());
    cfg["text_config"]["rms_norm_eps"] = 1e-5.into();
    std::fs::write(b.model.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    let want = Expected::for_gpu(Arch::Sm100a).with_model_dir(&b.model).unwrap();
    let e = err_of(&plan, &want);
    assert!(e.contains("was built for another model config"), "{e}");
    assert!(e.contains(&format!("{}'s config.json gives", b.model.display())), "{e}");
}

#[test]
fn refuses_another_tokenizer() {
    let b = gpu_plan();
    let plan = Plan::open(&b.plan).unwrap();
    std::fs::write(b.model.join("tokenizer.json"), "{\"model\": \"another\"}").unwrap();
    let want = Expected::for_gpu(Arch::Sm100a).with_model_dir(&b.model).unwrap();
    let e = err_of(&plan, &want);
    assert!(e.contains("was built with another tokenizer.json"), "{e}");
}

/// Two checkpoints that differ only in their weights (same config, tokenizer, tensor
/// names and shapes): a plan built from one is refused for the other.
#[test]
fn refuses_a_checkpoint_with_other_weights() {
    let b = gpu_plan();
    let other = b.tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    write_model(&other, &Opts::default(), 8);
    std::fs::copy(b.model.join("tokenizer.json"), other.join("tokenizer.json")).unwrap();
    let plan = Plan::open(&b.plan).unwrap();
    assert_eq!(plan.header.checkpoint.shards.len(), 1);
    assert_eq!(plan.header.checkpoint.shards[0].file, "model.safetensors");
    let want = Expected::for_gpu(Arch::Sm100a).with_model_dir(&other).unwrap();
    let e = err_of(&plan, &want);
    let other_s = other.display().to_string();
    assert!(e.contains(&format!("was built from other weights than {other_s} (checkpoint fingerprint")), "{e}");
    assert!(e.contains("model.safetensors holds other weights (same tensors, other bytes)"), "{e}");
    // Config and tokenizer alone would have let it through.
    let lax = Expected { checkpoint: None, ..want };
    plan.check(&lax).unwrap();
}

/// A checkpoint updated in place: the first bytes of one tensor change.
#[test]
fn refuses_a_checkpoint_changed_in_place() {
    let b = gpu_plan();
    let plan = Plan::open(&b.plan).unwrap();
    let start = kiln::checkpoint::Checkpoint::open(&b.model).unwrap().info("layers.1.mlp.up_proj.weight").unwrap().start;
    patch(&b.model.join("model.safetensors"), |d| d[start] ^= 0x40);
    let e = err_of(&plan, &Expected::for_gpu(Arch::Sm100a).with_model_dir(&b.model).unwrap());
    assert!(e.contains("holds other weights"), "{e}");
    // A renamed tensor changes the safetensors header.
    let b = gpu_plan();
    let plan = Plan::open(&b.plan).unwrap();
    patch(&b.model.join("model.safetensors"), |d| {
        let at = d.windows(7).position(|w| w == b"visual.").unwrap();
        d[at] = b'V';
    });
    let e = err_of(&plan, &Expected::for_gpu(Arch::Sm100a).with_model_dir(&b.model).unwrap());
    assert!(e.contains("model.safetensors lists other tensors (its safetensors header differs)"), "{e}");
}

/// Cubins load on a driver of the same or a newer CUDA major (minor version
/// compatibility), never on an older major.
#[test]
fn the_driver_must_load_the_plans_cubins() {
    for (nvrtc, driver, ok) in [
        ((13, 0), (13, 0), true),
        ((12, 8), (12, 8), true),
        ((12, 9), (12, 8), true),
        ((12, 8), (13, 0), true),
        ((13, 0), (12, 9), false),
        ((13, 1), (12, 8), false),
    ] {
        assert_eq!(driver_loads_cubins(nvrtc, driver), ok, "NVRTC {nvrtc:?} on a CUDA {driver:?} driver");
    }
    let b = gpu_plan();
    let plan = Plan::open(&b.plan).unwrap();
    assert_eq!(plan.header.nvrtc_version, Some((13, 0)));
    plan.check(&Expected { driver_cuda: Some((13, 0)), ..Expected::for_gpu(Arch::Sm100a) }).unwrap();
    let e = plan.check(&Expected { driver_cuda: Some((12, 8)), ..Expected::for_gpu(Arch::Sm100a) }).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{} holds kernels compiled by NVRTC 13.0 but the NVIDIA driver here supports CUDA 12.8 and cannot load them; \
             rebuild it with kiln-build using a CUDA 12.x NVRTC (pip install nvidia-cuda-nvrtc-cu12==12.8.* \
             nvidia-cuda-runtime-cu12==12.8.*), or upgrade the driver to one for CUDA 13.0",
            b.plan.display()
        )
    );
    // A plan without kernels never meets the driver.
    let b = built(&Opts::default(), None, &[]);
    Plan::open(&b.plan).unwrap().check(&Expected { driver_cuda: Some((11, 8)), ..Expected::default() }).unwrap();
}

#[test]
fn refuses_another_format_version() {
    let b = gpu_plan();
    let plan = Plan::open(&b.plan).unwrap();
    let want = Expected { format_version: FORMAT_VERSION + 1, ..Expected::for_gpu(Arch::Sm100a) };
    let e = err_of(&plan, &want);
    assert!(e.contains(&format!("has plan format version {FORMAT_VERSION} but this kiln reads version {}", FORMAT_VERSION + 1)), "{e}");
    // A file of another version is refused at open, before its header is interpreted.
    drop(plan);
    patch(&b.plan, |d| d[8..12].copy_from_slice(&(FORMAT_VERSION + 7).to_le_bytes()));
    let e = Plan::open(&b.plan).err().unwrap().to_string();
    assert!(
        e.ends_with(&format!("has plan format version {} but this kiln reads version {FORMAT_VERSION}; rebuild it with kiln-build", FORMAT_VERSION + 7)),
        "{e}"
    );
}

fn patch(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut d = std::fs::read(path).unwrap();
    f(&mut d);
    std::fs::write(path, d).unwrap();
}

fn open_err(path: &Path) -> String {
    match Plan::open(path) {
        Ok(_) => panic!("{} opened although damaged", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn truncated_and_corrupt_files_are_reported() {
    let b = gpu_plan();
    let good = std::fs::read(&b.plan).unwrap();
    let plan = Plan::open(&b.plan).unwrap();
    let payload_at = good.len() as u64 - plan.header.payload_len;
    let kernel_at = (payload_at + plan.header.kernels[1].offset) as usize;
    drop(plan);
    let damaged = "is damaged or truncated";

    // Cut anywhere: in the payload, in the header, in the prefix.
    for cut in [good.len() - 1, good.len() - 300, payload_at as usize + 10, 100, 40] {
        std::fs::write(&b.plan, &good[..cut]).unwrap();
        let e = open_err(&b.plan);
        assert!(e.contains(damaged) && e.contains("rebuild it with kiln-build"), "cut at {cut}: {e}");
    }
    // A byte appended.
    std::fs::write(&b.plan, [&good[..], b"x"].concat()).unwrap();
    assert!(open_err(&b.plan).contains("the file is"), "appended byte");
    // A flipped header byte.
    let mut d = good.clone();
    d[80] ^= 0x01;
    std::fs::write(&b.plan, &d).unwrap();
    let e = open_err(&b.plan);
    assert!(e.contains("header does not match the header checksum"), "{e}");
    // A flipped cubin byte.
    let mut d = good.clone();
    d[kernel_at + 3] ^= 0x40;
    std::fs::write(&b.plan, &d).unwrap();
    let e = open_err(&b.plan);
    assert!(e.contains("kernel module `gemm` does not match its checksum"), "{e}");
    // Not a plan at all.
    std::fs::write(&b.plan, b"{\"not\": \"a plan\"} with some more text to pass 64 bytes.............").unwrap();
    assert!(open_err(&b.plan).contains("is not a kiln plan (it does not start with KILNPLAN)"));
    std::fs::write(&b.plan, b"").unwrap();
    assert!(open_err(&b.plan).contains("is not a kiln plan"));
    // Missing file.
    std::fs::remove_file(&b.plan).unwrap();
    assert!(open_err(&b.plan).contains("opening plan"));
    // The intact bytes open again.
    std::fs::write(&b.plan, &good).unwrap();
    Plan::open(&b.plan).unwrap();
}

#[test]
fn a_header_whose_blobs_do_not_fit_is_refused() {
    // Rewrite the header (with a valid checksum) so that a tensor runs past the payload:
    // structure checks catch what the checksum cannot.
    use sha2::{Digest, Sha256};
    let b = gpu_plan();
    let good = std::fs::read(&b.plan).unwrap();
    let hlen = u64::from_le_bytes(good[16..24].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&good[64..64 + hlen]).unwrap();
    // All nines, as many digits as the stored length (the header does not grow), on a
    // tensor for which that runs past the payload.
    let payload = header["payload_len"].as_u64().unwrap();
    let nines = |len: u64| -> u64 { "9".repeat(len.to_string().len()).parse().unwrap() };
    let tensors = header["tensors"].as_array().unwrap();
    let last = (0..tensors.len())
        .rev()
        .find(|&i| tensors[i]["offset"].as_u64().unwrap() + nines(tensors[i]["len"].as_u64().unwrap()) > payload)
        .expect("some tensor can be made to run past the payload");
    let len = header["tensors"][last]["len"].as_u64().unwrap();
    header["tensors"][last]["len"] = nines(len).into();
    let mut json = serde_json::to_vec(&header).unwrap();
    json.resize(hlen, b' '); // same length keeps the payload offset
    assert_eq!(json.len(), hlen, "patched header must not grow");
    let mut d = good.clone();
    d[64..64 + hlen].copy_from_slice(&json);
    d[32..64].copy_from_slice(&Sha256::digest(&json));
    std::fs::write(&b.plan, &d).unwrap();
    let e = open_err(&b.plan);
    assert!(e.contains("runs past the payload"), "{e}");
}
