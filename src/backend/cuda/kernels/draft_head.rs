//! The MTP draft's int8 or int4 lm_head (kernels/draft_head.cu): quantized once at
//! start-up, read by every draft step at half (int8) or about a quarter (int4) of the
//! bf16 table's bytes.

use super::{check_aligned, int, params, DevPtr, Kernels};
use crate::backend::cuda::registry::{gemv_i8_smem, GEMV_I4, GEMV_I8, GEMV_I8_MAX_M, I4_GROUP_K, QUANT_ROWS_I4, QUANT_ROWS_I8};
use anyhow::{ensure, Result};
use cudarc::driver::CudaStream;

/// Rows of the table one kiln_gemv_i8 block computes (DH_ROWS_PER_BLOCK).
const GEMV_I8_ROWS_PER_BLOCK: usize = 256;

impl Kernels {
    /// q [n][k] (u8, 128 + the int8 value) and scale [n] (fp32) of the bf16 rows w [n][k]
    /// (`ops::quantize_rows_i8` is the twin). k % 8 == 0.
    pub fn quant_rows_i8(&self, stream: &CudaStream, w: DevPtr, q: DevPtr, scale: DevPtr, n: usize, k: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        ensure!(k % 8 == 0, "quant_rows_i8: K = {k} must be a multiple of 8");
        check_aligned(w, 16, "quant_rows_i8 w")?;
        check_aligned(q, 8, "quant_rows_i8 q")?;
        let (ni, ki) = (int(n, "N")?, int(k, "K")?);
        let mut p = params!(w, q, scale, ni, ki);
        self.launch(QUANT_ROWS_I8, stream, (n.div_ceil(8) as u32, 1, 1), 256, 0, &mut p)
    }

    /// y [m][n] (fp32) = scale[n] * (q[n] - 128) . f16(x[m]) for fp32 rows x [m][k], m
    /// rows at a time in launches of up to `GEMV_I8_MAX_M`. k % 64 == 0 and at most the
    /// hidden size the kernels were built for (their shared memory).
    #[allow(clippy::too_many_arguments)]
    pub fn gemv_i8(&self, stream: &CudaStream, q: DevPtr, scale: DevPtr, x: DevPtr, y: DevPtr, m: usize, n: usize, k: usize) -> Result<()> {
        ensure!(k % 64 == 0 && k <= self.dims().hidden, "gemv_i8: K = {k} must be a multiple of 64, at most {}", self.dims().hidden);
        check_aligned(q, 16, "gemv_i8 q")?;
        check_aligned(x, 16, "gemv_i8 x")?;
        let (ni, ki) = (int(n, "N")?, int(k, "K")?);
        let (grid, smem) = self.gemv_shape(n);
        for (xp, yp, rows) in gemv_pieces(x, y, m, n, k) {
            let mi = int(rows, "M")?;
            let mut p = params!(q, scale, xp, yp, mi, ni, ki);
            self.launch(GEMV_I8, stream, grid, 256, smem, &mut p)?;
        }
        Ok(())
    }

    /// The grid and shared memory of a draft GEMV over n table rows (kiln_gemv_i8 and _i4
    /// share them: 256 rows a block, x staged as f16 for the built hidden size).
    fn gemv_shape(&self, n: usize) -> ((u32, u32, u32), u32) {
        ((n.div_ceil(GEMV_I8_ROWS_PER_BLOCK) as u32, 1, 1), gemv_i8_smem(self.dims().hidden) as u32)
    }

    /// Scale entries per row of the int4 table (groups of `I4_GROUP_K`, padded to 4 so a
    /// block loads four chunks' scales at once).
    pub fn i4_scale_stride(k: usize) -> usize {
        (k / I4_GROUP_K).div_ceil(4) * 4
    }

    /// q [n][k / 2] (nibbles 8 + the int4 value, kernels/draft_head.cu's order) and scale
    /// [n][i4_scale_stride(k)] (fp32, one per 128 k) of the bf16 rows w [n][k]
    /// (`ops::quantize_rows_i4` is the twin). k % 128 == 0.
    pub fn quant_rows_i4(&self, stream: &CudaStream, w: DevPtr, q: DevPtr, scale: DevPtr, n: usize, k: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        ensure!(k % I4_GROUP_K == 0, "quant_rows_i4: K = {k} must be a multiple of {I4_GROUP_K}");
        check_aligned(w, 16, "quant_rows_i4 w")?;
        check_aligned(q, 16, "quant_rows_i4 q")?;
        check_aligned(scale, 16, "quant_rows_i4 scale")?;
        let (ni, ki, sg) = (int(n, "N")?, int(k, "K")?, int(Self::i4_scale_stride(k), "scale stride")?);
        let mut p = params!(w, q, scale, ni, ki, sg);
        self.launch(QUANT_ROWS_I4, stream, (n.div_ceil(8) as u32, 1, 1), 256, 0, &mut p)
    }

    /// y [m][n] (fp32) = sum over 128-k groups of scale * (q - 8) . f16(x[m]) for fp32 rows
    /// x [m][k], in launches of up to `GEMV_I8_MAX_M` rows. k % 128 == 0 and at most the
    /// hidden size the kernels were built for.
    #[allow(clippy::too_many_arguments)]
    pub fn gemv_i4(&self, stream: &CudaStream, q: DevPtr, scale: DevPtr, x: DevPtr, y: DevPtr, m: usize, n: usize, k: usize) -> Result<()> {
        ensure!(k % I4_GROUP_K == 0 && k <= self.dims().hidden, "gemv_i4: K = {k} must be a multiple of {I4_GROUP_K}, at most {}", self.dims().hidden);
        check_aligned(q, 16, "gemv_i4 q")?;
        check_aligned(scale, 16, "gemv_i4 scale")?;
        check_aligned(x, 16, "gemv_i4 x")?;
        let (ni, ki, sg) = (int(n, "N")?, int(k, "K")?, int(Self::i4_scale_stride(k), "scale stride")?);
        let (grid, smem) = self.gemv_shape(n);
        for (xp, yp, rows) in gemv_pieces(x, y, m, n, k) {
            let mi = int(rows, "M")?;
            let mut p = params!(q, scale, xp, yp, mi, ni, ki, sg);
            self.launch(GEMV_I4, stream, grid, 256, smem, &mut p)?;
        }
        Ok(())
    }
}

/// A draft GEMV's launches over m fp32 rows x [m][k] -> y [m][n]: (x, y, rows) of each piece
/// of up to `GEMV_I8_MAX_M` rows (the kernels' batch tile).
fn gemv_pieces(x: DevPtr, y: DevPtr, m: usize, n: usize, k: usize) -> impl Iterator<Item = (DevPtr, DevPtr, usize)> {
    (0..m).step_by(GEMV_I8_MAX_M).map(move |r0| (x + (r0 * k * 4) as u64, y + (r0 * n * 4) as u64, (m - r0).min(GEMV_I8_MAX_M)))
}
