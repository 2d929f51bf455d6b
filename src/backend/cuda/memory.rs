//! Raw device allocations. The backend keeps plain device addresses (no per-use event
//! tracking), so every launch and copy of a step can be captured into a CUDA graph.

use super::kernels::DevPtr;
use anyhow::{anyhow, Result};
use cudarc::driver::{result, CudaStream};

/// One device allocation, freed on drop.
pub struct DevBuf {
    pub ptr: DevPtr,
    pub bytes: usize,
}

impl DevBuf {
    /// Allocates `bytes` (at least 1) and zeroes them.
    pub fn zeroed(bytes: usize, what: &str) -> Result<Self> {
        let n = bytes.max(1);
        // SAFETY: plain cuMemAlloc; the context is current on this thread (the backend
        // binds it before any allocation).
        let ptr = unsafe { result::malloc_sync(n) }
            .map_err(|e| anyhow!("allocating {what} ({:.1} MiB) on the GPU: {e:?}", n as f64 / (1 << 20) as f64))?;
        unsafe { result::memset_d8_sync(ptr, 0, n) }.map_err(|e| anyhow!("zeroing {what}: {e:?}"))?;
        Ok(DevBuf { ptr, bytes: n })
    }

    pub fn at(&self, byte_offset: usize) -> DevPtr {
        debug_assert!(byte_offset <= self.bytes);
        self.ptr + byte_offset as u64
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        // SAFETY: allocated by malloc_sync above and freed once.
        unsafe {
            let _ = result::free_sync(self.ptr);
        }
    }
}

/// Host -> device copy on `stream` (the host slice must stay alive until the stream
/// reaches the copy; callers synchronise before reusing it).
pub fn upload<T>(stream: &CudaStream, dst: DevPtr, src: &[T]) -> Result<()> {
    if src.is_empty() {
        return Ok(());
    }
    unsafe { result::memcpy_htod_async(dst, src, stream.cu_stream()) }.map_err(|e| anyhow!("host-to-device copy: {e:?}"))
}

/// Device -> host copy on `stream`; synchronises the stream before returning.
pub fn download<T>(stream: &CudaStream, dst: &mut [T], src: DevPtr) -> Result<()> {
    if dst.is_empty() {
        return Ok(());
    }
    unsafe { result::memcpy_dtoh_async(dst, src, stream.cu_stream()) }.map_err(|e| anyhow!("device-to-host copy: {e:?}"))?;
    stream.synchronize().map_err(|e| anyhow!("synchronising after a device-to-host copy: {e:?}"))
}

pub fn copy_d2d(stream: &CudaStream, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()> {
    unsafe { result::memcpy_dtod_async(dst, src, bytes, stream.cu_stream()) }.map_err(|e| anyhow!("device copy: {e:?}"))
}

pub fn memset0(stream: &CudaStream, dst: DevPtr, bytes: usize) -> Result<()> {
    unsafe { result::memset_d8_async(dst, 0, bytes, stream.cu_stream()) }.map_err(|e| anyhow!("device memset: {e:?}"))
}
