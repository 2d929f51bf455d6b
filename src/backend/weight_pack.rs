//! The packed weight layout the skinny decode GEMMs may read (kernels/common.cuh
//! `w_lane_ptr`; kernels/gemm.cu `kiln_pack_weight` makes it on the device, and `pack` here
//! is its CPU twin).
//!
//! A row-major W[N][K] (N % 16 == 0, K % 32 == 0) becomes N / 16 tiles of 16 rows, each
//! 16 K contiguous elements. Inside a tile, 32-k chunk c is 512 contiguous elements; its
//! half h (rows 8h..8h+7) sits at 256 h, and the 8 elements of row 8h + g at k = 32c + 8t
//! at (4g + t) * 8: the 16 bytes lane 4g + t of a warp loads for its MMA fragments. So a
//! warp reads one 1 KB stretch per chunk instead of 16 pieces of 64 bytes, one per row
//! (bench/membench.cu measured 4-14 % faster reads), and every register receives the same
//! elements as from the row-major layout: the same bits.
//!
//! Row blocks stay where they were: rows r.. of a packed weight (r % 16 == 0) start at
//! element r * K, as in the row-major layout, so a sub-matrix of whole tiles is an offset.

/// Whether an N x K weight can be packed.
pub fn packable(n: usize, k: usize) -> bool {
    n > 0 && k > 0 && n.is_multiple_of(16) && k.is_multiple_of(32)
}

/// Where element (row, k) of a packed N x K weight lives.
pub fn packed_index(row: usize, k: usize, kdim: usize) -> usize {
    let (tile, r) = (row / 16, row % 16);
    let (c, kk) = (k / 32, k % 32);
    let (h, g, t, e) = (r / 8, r % 8, kk / 8, kk % 8);
    tile * 16 * kdim + c * 512 + h * 256 + (4 * g + t) * 8 + e
}

/// W (row-major [n][k]) in the packed layout.
pub fn pack<T: Copy + Default>(w: &[T], n: usize, k: usize) -> Vec<T> {
    assert!(packable(n, k), "pack: {n} x {k} is not a multiple of 16 x 32");
    assert_eq!(w.len(), n * k, "pack: {} elements for {n} x {k}", w.len());
    let mut out = vec![T::default(); n * k];
    for row in 0..n {
        for kk in 0..k {
            out[packed_index(row, kk, k)] = w[row * k + kk];
        }
    }
    out
}

/// The row-major weight back from its packed layout.
pub fn unpack<T: Copy + Default>(p: &[T], n: usize, k: usize) -> Vec<T> {
    assert!(packable(n, k) && p.len() == n * k, "unpack: {} elements for {n} x {k}", p.len());
    let mut out = vec![T::default(); n * k];
    for row in 0..n {
        for kk in 0..k {
            out[row * k + kk] = p[packed_index(row, kk, k)];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_is_a_permutation_and_unpacking_inverts_it() {
        for (n, k) in [(16, 32), (32, 64), (48, 96), (16, 2560), (64, 160)] {
            let w: Vec<u32> = (0..(n * k) as u32).collect();
            let p = pack(&w, n, k);
            let mut seen = p.clone();
            seen.sort_unstable();
            assert_eq!(seen, w, "{n} x {k}: every element exactly once");
            // With one chunk per row (K = 32) a tile is already row-major; past it not.
            assert_eq!(p == w, k == 32, "{n} x {k}: the layout against row-major");
            assert_eq!(unpack(&p, n, k), w);
        }
    }

    #[test]
    fn a_lanes_sixteen_bytes_are_its_row_and_k_range() {
        // What the kernels load: lane 4g + t of a warp, for tile T, chunk c and half h, reads
        // 8 contiguous elements at T*16K + 512c + 256h + 8(4g + t): they must be row
        // 16T + 8h + g, k = 32c + 8t .. + 8 of the row-major weight.
        let (n, k) = (48, 128);
        let w: Vec<u32> = (0..(n * k) as u32).collect();
        let p = pack(&w, n, k);
        for tile in 0..n / 16 {
            for c in 0..k / 32 {
                for h in 0..2 {
                    for lane in 0..32 {
                        let (g, t) = (lane / 4, lane % 4);
                        let at = tile * 16 * k + 512 * c + 256 * h + 8 * lane;
                        let row = 16 * tile + 8 * h + g;
                        let want = &w[row * k + 32 * c + 8 * t..][..8];
                        assert_eq!(&p[at..at + 8], want, "tile {tile} chunk {c} half {h} lane {lane}");
                    }
                }
            }
        }
    }

    #[test]
    fn whole_tiles_keep_their_row_offset() {
        // A sub-matrix of rows r.. (r % 16 == 0), e.g. the MTP layer's k/v rows of qgkv or
        // the draft vocabulary's first rows, is the same offset in both layouts.
        let (n, k) = (64, 96);
        let w: Vec<u32> = (0..(n * k) as u32).collect();
        let p = pack(&w, n, k);
        let sub = pack(&w[32 * k..], n - 32, k);
        assert_eq!(&p[32 * k..], &sub[..]);
    }

    #[test]
    fn only_multiples_of_16_rows_and_32_columns_pack() {
        assert!(packable(16, 32) && packable(248_320, 2560) && packable(12_352, 2560) && packable(2560, 9216));
        assert!(!packable(8, 32) && !packable(16, 48) && !packable(0, 32) && !packable(24, 64));
    }
}
