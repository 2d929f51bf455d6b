//! Device set-up, buffers, random data and error measures for the kernel tests.

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, DeviceRepr};
use half::bf16;
use kiln::backend::cuda::compile::{self, KernelDims};
use kiln::backend::cuda::kernels::{DevPtr, Kernels};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::{Arc, OnceLock};

pub struct Env {
    pub ctx: Arc<CudaContext>,
    pub k: Kernels,
}

static ENV: OnceLock<Option<Env>> = OnceLock::new();

fn init() -> Option<Env> {
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        println!("skipped: no CUDA device (libcuda not found)");
        return None;
    }
    let ctx = match CudaContext::new(0) {
        Ok(c) => c,
        Err(e) => {
            println!("skipped: no CUDA device ({e:?})");
            return None;
        }
    };
    if !compile::nvrtc_available() {
        println!("skipped: NVRTC not found (a CUDA device is present; put libnvrtc on LD_LIBRARY_PATH)");
        return None;
    }
    // Tests pass raw pointers; cudarc's per-slice event tracking is not wanted.
    unsafe { ctx.disable_event_tracking() };
    let t = std::time::Instant::now();
    let k = Kernels::compile_and_load(&ctx, &KernelDims::qwen3_5_4b()).expect("compiling and loading the kernels");
    println!(
        "cuda: {} (cc {:?}, {} SMs), kernels compiled and loaded in {:.1} s",
        ctx.name().unwrap_or_default(),
        ctx.compute_capability().unwrap(),
        k.num_sms(),
        t.elapsed().as_secs_f64()
    );
    Some(Env { ctx, k })
}

/// The shared device environment. Device tests are `#[ignore]`d (CI shows them as not
/// run); one run explicitly (`--ignored`) on a machine without a usable GPU fails here
/// rather than passing silently.
pub fn env() -> Option<&'static Env> {
    let e = ENV.get_or_init(init).as_ref();
    assert!(e.is_some(), "this test needs a CUDA GPU and NVRTC (see the line above for what is missing)");
    e
}

/// A fresh stream with the context current on this thread.
pub fn stream(e: &Env) -> Arc<CudaStream> {
    e.ctx.bind_to_thread().unwrap();
    e.ctx.new_stream().unwrap()
}

pub fn up<T: DeviceRepr + Clone>(s: &Arc<CudaStream>, v: &[T]) -> CudaSlice<T> {
    s.clone_htod(v).unwrap()
}

pub fn down<T: DeviceRepr + Clone + Default>(s: &Arc<CudaStream>, d: &CudaSlice<T>) -> Vec<T> {
    s.synchronize().unwrap();
    let v = s.clone_dtoh(d).unwrap();
    s.synchronize().unwrap();
    v
}

pub fn ptr<T>(s: &Arc<CudaStream>, d: &CudaSlice<T>) -> DevPtr {
    let (p, _sync) = d.device_ptr(s);
    p
}

/// Output buffers start as NaN so unwritten elements fail the comparison.
pub fn poison_f32(s: &Arc<CudaStream>, n: usize) -> CudaSlice<f32> {
    up(s, &vec![f32::NAN; n])
}
pub fn poison_bf16(s: &Arc<CudaStream>, n: usize) -> CudaSlice<bf16> {
    up(s, &vec![bf16::NAN; n])
}

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Uniform in [-scale, scale].
pub fn rand_vec(r: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| r.gen_range(-scale..=scale)).collect()
}

/// Roughly normal (sum of uniforms), mean 0, std `scale`.
pub fn randn_vec(r: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let s: f32 = (0..4).map(|_| r.gen_range(-1.0f32..1.0)).sum();
            s * scale * (3.0f32 / 4.0).sqrt()
        })
        .collect()
}

pub fn to_bf16(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|x| bf16::from_f32(*x)).collect()
}
pub fn from_bf16(v: &[bf16]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}
/// The values a bf16 buffer made from `v` holds.
pub fn round_bf16(v: &[f32]) -> Vec<f32> {
    from_bf16(&to_bf16(v))
}

/// ‖out − ref‖ / ‖ref‖ in f64; infinite if `out` has a NaN or infinity.
pub fn rel_err(out: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(out.len(), reference.len(), "output and reference lengths differ");
    if out.iter().any(|x| !x.is_finite()) {
        return f64::INFINITY;
    }
    let (mut num, mut den) = (0f64, 0f64);
    for (o, r) in out.iter().zip(reference) {
        num += (*o as f64 - *r as f64).powi(2);
        den += (*r as f64).powi(2);
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// Asserts the normalised error is within `tol` (NaN anywhere fails) and prints it.
pub fn check(what: &str, out: &[f32], reference: &[f32], tol: f64) {
    let e = rel_err(out, reference);
    let nan = out.iter().filter(|x| x.is_nan()).count();
    println!("{what}: rel err {e:.3e} (tol {tol:.0e}){}", if nan > 0 { format!(", {nan} NaN") } else { String::new() });
    assert!(e <= tol, "{what}: rel err {e:.3e} > {tol:.0e} ({nan} NaN of {})", out.len());
}

/// Asserts two f32 buffers hold the same bits (NaN payloads included), naming the first
/// index that differs.
pub fn assert_bits_eq(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        panic!("{what}: element {i} is {:e} ({:#x}), expected {:e} ({:#x})", got[i], got[i].to_bits(), want[i], want[i].to_bits());
    }
}
