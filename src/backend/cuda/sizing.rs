//! How many sequence slots (Gated DeltaNet state) and KV blocks the device pools get:
//! a pure function of the GPU's memory, the server's flags and the per-unit sizes, so
//! every decision and error message is tested without a GPU.

use anyhow::{bail, ensure, Result};

/// Running requests when `--max-running-requests` is not given (SGLang's H200 default);
/// fewer when their state would take more than half of the memory left for pools.
pub const DEFAULT_MAX_RUNNING: usize = 256;
/// Most running requests kiln accepts (SGLang's B200 default).
pub const MAX_RUNNING_LIMIT: usize = 512;

/// The GPU's memory when the pools are sized (weights and scratch already allocated).
#[derive(Clone, Copy, Debug)]
pub struct DeviceMemory {
    pub free: usize,
    pub total: usize,
}

/// What the server asked for, and what one unit of each pool costs.
#[derive(Clone, Copy, Debug)]
pub struct PoolRequest {
    /// `--mem-fraction-static`: the share of the GPU's memory kiln may hold in all.
    pub mem_fraction: f64,
    /// `--max-running-requests` when given (then it must fit), else None.
    pub max_running: Option<usize>,
    pub max_seq_len: usize,
    pub block_size: usize,
    /// Bytes of state one slot takes across all linear layers.
    pub slot_bytes: usize,
    /// Bytes one KV block takes across all full-attention layers.
    pub block_bytes: usize,
    /// Share of the memory left after the slots' state (and one sequence's KV) that
    /// holds prefix-cache state snapshots (`slot_bytes` each); 0 for none.
    pub snapshot_fraction: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSizes {
    pub slots: usize,
    /// Prefix-cache state snapshots.
    pub snapshots: usize,
    pub kv_blocks: usize,
    pub max_blocks_per_seq: usize,
}

fn gib(b: usize) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

/// Sizes the pools: the state of every slot, then KV blocks from what is left (at least
/// one full-length sequence, at most every slot at full length).
pub fn size_pools(mem: DeviceMemory, req: &PoolRequest) -> Result<PoolSizes> {
    ensure!(
        req.mem_fraction > 0.0 && req.mem_fraction <= 1.0,
        "--mem-fraction-static must be in (0, 1] (got {})",
        req.mem_fraction
    );
    if let Some(n) = req.max_running {
        ensure!(
            (1..=MAX_RUNNING_LIMIT).contains(&n),
            "--max-running-requests must be between 1 and {MAX_RUNNING_LIMIT} (got {n})"
        );
    }
    ensure!(req.max_seq_len > 0 && req.block_size > 0, "--context-length and the KV block size must be positive");
    let max_blocks_per_seq = req.max_seq_len.div_ceil(req.block_size);
    let budget = (mem.total as f64 * req.mem_fraction) as usize;
    let used = mem.total.saturating_sub(mem.free);
    if budget <= used {
        bail!(
            "--mem-fraction-static {} allows {:.1} GiB of this GPU's {:.1} GiB, but the weights, scratch and other processes already use {:.1} GiB; raise --mem-fraction-static or free GPU memory",
            req.mem_fraction,
            gib(budget),
            gib(mem.total),
            gib(used)
        );
    }
    let avail = budget - used;
    let one_sequence_kv = max_blocks_per_seq * req.block_bytes;
    let slots = match req.max_running {
        Some(n) => n,
        // As many as the default asks, while their state takes at most half of what is
        // left (the rest holds KV), and at least one.
        None => (avail / 2 / req.slot_bytes.max(1)).clamp(1, DEFAULT_MAX_RUNNING),
    };
    let need = slots * req.slot_bytes + one_sequence_kv;
    if need > avail {
        bail!(
            "not enough GPU memory: {slots} running requests need {:.2} GiB of state plus {:.2} GiB of KV cache for one {}-token sequence, but only {:.2} GiB is left under --mem-fraction-static {} ({:.1} GiB free of {:.1} GiB); lower --max-running-requests or --context-length, or raise --mem-fraction-static",
            gib(slots * req.slot_bytes),
            gib(one_sequence_kv),
            req.max_seq_len,
            gib(avail),
            req.mem_fraction,
            gib(mem.free),
            gib(mem.total)
        );
    }
    ensure!((0.0..1.0).contains(&req.snapshot_fraction), "the snapshot share must be in [0, 1) (got {})", req.snapshot_fraction);
    let spare = avail - need;
    let snapshots = (spare as f64 * req.snapshot_fraction) as usize / req.slot_bytes.max(1);
    let kv_blocks = ((avail - (slots + snapshots) * req.slot_bytes) / req.block_bytes.max(1)).min(slots * max_blocks_per_seq);
    Ok(PoolSizes { slots, snapshots, kv_blocks, max_blocks_per_seq })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: usize = 1 << 30;
    /// Qwen3.5-4B's per-unit sizes (pools.rs: 24 linear layers of 32 x 128 x 128 fp32
    /// state + a 4 x 8192 fp32 conv ring; 8 full layers x K and V x 4 heads x 16 tokens x
    /// 256 bf16).
    const SLOT: usize = 24 * 4 * (32 * 128 * 128 + 4 * 8192);
    const BLOCK: usize = 8 * 2 * 2 * 4 * 16 * 256;

    fn req(max_running: Option<usize>, max_seq_len: usize, mem_fraction: f64) -> PoolRequest {
        PoolRequest { mem_fraction, max_running, max_seq_len, block_size: 16, slot_bytes: SLOT, block_bytes: BLOCK, snapshot_fraction: 0.0 }
    }

    #[test]
    fn an_h200_and_an_h100_hold_256_requests_by_default() {
        // 8.4 GB of weights + ~2 GB of scratch already allocated.
        for total in [141 * GIB, 80 * GIB] {
            let mem = DeviceMemory { free: total - 11 * GIB, total };
            let p = size_pools(mem, &req(None, 32768, 0.85)).unwrap();
            assert_eq!(p.slots, 256, "total {total}");
            assert_eq!(p.max_blocks_per_seq, 2048);
            // Every byte not held by state goes to KV (within the budget).
            let avail = (total as f64 * 0.85) as usize - 11 * GIB;
            assert!(p.kv_blocks * BLOCK <= avail - 256 * SLOT && (p.kv_blocks + 1) * BLOCK > avail - 256 * SLOT);
        }
    }

    #[test]
    fn a_small_gpu_gets_fewer_slots_by_default_but_an_explicit_ask_is_honoured_or_refused() {
        let mem = DeviceMemory { free: 12 * GIB, total: 24 * GIB };
        let p = size_pools(mem, &req(None, 8192, 0.9)).unwrap();
        // avail = 21.6 - 12 = 9.6 GiB; half of it for state = ~4.8 GiB = 92 slots of 53.5 MB.
        assert!(p.slots < 256 && p.slots * SLOT <= (9.6 * GIB as f64) as usize / 2, "{p:?}");
        assert_eq!(size_pools(mem, &req(Some(100), 8192, 0.9)).unwrap().slots, 100);
        let e = size_pools(mem, &req(Some(200), 8192, 0.9)).unwrap_err().to_string();
        assert!(e.contains("not enough GPU memory: 200 running requests") && e.contains("--mem-fraction-static 0.9"), "{e}");
    }

    #[test]
    fn snapshots_take_their_share_of_what_is_left_and_kv_the_rest() {
        let mem = DeviceMemory { free: 130 * GIB, total: 141 * GIB };
        let r = PoolRequest { snapshot_fraction: 0.1, ..req(None, 32768, 0.85) };
        let p = size_pools(mem, &r).unwrap();
        let spare = ((141 * GIB) as f64 * 0.85) as usize - 11 * GIB - 256 * SLOT - 2048 * BLOCK;
        assert_eq!(p.snapshots, (spare as f64 * 0.1) as usize / SLOT);
        assert!(p.snapshots > 150, "{p:?}");
        let without = size_pools(mem, &req(None, 32768, 0.85)).unwrap();
        assert_eq!(without.snapshots, 0);
        assert!(without.kv_blocks > p.kv_blocks);
        assert!(size_pools(mem, &PoolRequest { snapshot_fraction: 1.0, ..r }).is_err());
    }

    #[test]
    fn kv_never_exceeds_every_slot_at_full_length() {
        let mem = DeviceMemory { free: 130 * GIB, total: 141 * GIB };
        let p = size_pools(mem, &req(Some(4), 1024, 0.85)).unwrap();
        assert_eq!(p.kv_blocks, 4 * 64);
    }

    #[test]
    fn impossible_asks_are_refused_with_the_flag_named() {
        let mem = DeviceMemory { free: 70 * GIB, total: 80 * GIB };
        let cases = [
            (req(Some(0), 8192, 0.85), "--max-running-requests must be between 1 and 512 (got 0)"),
            (req(Some(513), 8192, 0.85), "(got 513)"),
            (req(None, 8192, 1.5), "--mem-fraction-static must be in (0, 1] (got 1.5)"),
            (req(None, 8192, 0.1), "allows 8.0 GiB of this GPU's 80.0 GiB, but the weights, scratch and other processes already use 10.0 GiB"),
            (req(None, 0, 0.85), "--context-length"),
        ];
        for (r, want) in cases {
            let e = size_pools(mem, &r).unwrap_err().to_string();
            assert!(e.contains(want), "expected `{want}` in: {e}");
        }
        // A context whose one sequence cannot fit.
        let e = size_pools(DeviceMemory { free: 12 * GIB, total: 24 * GIB }, &req(Some(1), 1 << 24, 0.9)).unwrap_err().to_string();
        assert!(e.contains("KV cache for one 16777216-token sequence"), "{e}");
    }
}
