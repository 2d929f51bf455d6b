//! Saved sequence states for the prefix cache: a fixed device pool of snapshots, each
//! the Gated DeltaNet fp32 recurrent state and conv ring of every linear layer of one
//! slot (a slot's whole state; full-attention KV stays in the KV blocks, which the
//! scheduler shares). Saving and restoring are device-to-device copies on the step
//! stream, so they are ordered with the steps around them, and a restored slot holds
//! bit for bit the state the saved one had.

use super::kernels::DevPtr;
use super::memory::{copy_d2d, DevBuf};
use super::pools::StatePools;
use anyhow::{bail, ensure, Result};
use cudarc::driver::CudaStream;
use std::collections::HashMap;

pub struct SnapshotPool {
    buf: DevBuf,
    /// Bytes of one snapshot: every linear layer's recurrent state, then its conv ring.
    per_snapshot: usize,
    capacity: usize,
    free: Vec<usize>,
    /// Handle -> index in the pool. Handles are never reused, so a stale one is refused.
    live: HashMap<u64, usize>,
    next_id: u64,
    /// Per-slot state saved beside the layers' (the MTP head's pending hidden state, when
    /// it runs): base address and bytes per slot.
    extra: Option<(DevPtr, usize)>,
}

impl SnapshotPool {
    /// A pool of `capacity` snapshots of `per_snapshot` bytes (`pools::slot_bytes`), plus
    /// `extra`'s bytes per slot when given.
    pub fn new(capacity: usize, per_snapshot: usize, extra: Option<(DevPtr, usize)>) -> Result<Self> {
        let per_snapshot = per_snapshot + extra.map_or(0, |e| e.1);
        let buf = DevBuf::zeroed(capacity * per_snapshot, "the prefix-cache state snapshots")?;
        Ok(SnapshotPool { buf, per_snapshot, capacity, free: (0..capacity).rev().collect(), live: HashMap::new(), next_id: 1, extra })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Copies `slot`'s state into a free snapshot; returns its handle.
    pub fn save(&mut self, stream: &CudaStream, pools: &StatePools, layers: usize, slot: usize) -> Result<u64> {
        ensure!(slot < pools.slots, "slot {slot} out of range ({} slots)", pools.slots);
        let Some(idx) = self.free.pop() else {
            bail!("all {} prefix-cache snapshots are in use (the cache must evict one first)", self.capacity)
        };
        if let Err(e) = self.copy(stream, pools, layers, slot, idx, true) {
            self.free.push(idx);
            return Err(e);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.live.insert(id, idx);
        Ok(id)
    }

    /// Copies snapshot `id` into `slot` (the snapshot stays).
    pub fn restore(&self, stream: &CudaStream, pools: &StatePools, layers: usize, id: u64, slot: usize) -> Result<()> {
        ensure!(slot < pools.slots, "slot {slot} out of range ({} slots)", pools.slots);
        let Some(&idx) = self.live.get(&id) else { bail!("no prefix-cache snapshot {id}") };
        self.copy(stream, pools, layers, slot, idx, false)
    }

    pub fn drop_snapshot(&mut self, id: u64) -> Result<()> {
        let Some(idx) = self.live.remove(&id) else { bail!("no prefix-cache snapshot {id}") };
        self.free.push(idx);
        Ok(())
    }

    /// Copies between `slot` and pool entry `idx` (to the pool when `save`).
    fn copy(&self, stream: &CudaStream, pools: &StatePools, layers: usize, slot: usize, idx: usize, save: bool) -> Result<()> {
        let mut at = idx * self.per_snapshot;
        let extra = self.extra.map(|(base, bytes)| (base + (slot * bytes) as u64, bytes));
        let per_layer = (0..layers).flat_map(|l| [pools.recurrent_slot(l, slot), pools.conv_slot(l, slot)]);
        for (p, bytes) in per_layer.chain(extra) {
            ensure!(at + bytes <= (idx + 1) * self.per_snapshot, "snapshot layout overflows its entry");
            let snap = self.buf.at(at);
            if save {
                copy_d2d(stream, snap, p, bytes)?;
            } else {
                copy_d2d(stream, p, snap, bytes)?;
            }
            at += bytes;
        }
        Ok(())
    }
}
