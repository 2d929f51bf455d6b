//! The prefix cache inside the scheduler: moves blocks and snapshots between the tree
//! (`prefix_cache.rs`), the block pool and the backend, following `policy.rs`.
//!
//! A request is admitted at the deepest cached snapshot its prompt reaches (its KV
//! blocks shared, the snapshot restored into its slot); every prefill chunk that ends on
//! a cut adds its span's blocks and a snapshot of the state to the tree. The path a
//! running request uses is locked; eviction (LRU) takes only unlocked spans, when
//! admission needs blocks or a new snapshot needs room.

use super::policy::{self, CutSchedule};
use super::pool::BlockPool;
use super::prefix_cache::{Hit, PrefixCache, Released};
use super::seq::Seq;
use super::SchedulerConfig;
use crate::backend::{Backend, Capacity};

/// The longest prefill chunk: it leaves room for one decode token per running sequence,
/// so a chunk always fits a step and no prompt waits forever.
pub(crate) fn chunk_budget(cfg: &SchedulerConfig) -> usize {
    cfg.chunked_prefill_size.saturating_sub(cfg.max_running).max(1)
}

/// The cuts with the prefix cache; None when it is off, the backend keeps no snapshots,
/// or not one KV block fits a chunk.
pub(crate) fn cache_cuts(cfg: &SchedulerConfig, cap: &Capacity, snapshots: usize) -> Option<CutSchedule> {
    if !cfg.prefix_cache || snapshots == 0 {
        return None;
    }
    CutSchedule::for_cache(cfg.prefix_cache_interval, chunk_budget(cfg), cap.block_size)
}

pub(crate) struct PrefixCacheState {
    tree: PrefixCache,
    cuts: CutSchedule,
    /// Snapshots the backend can hold.
    capacity: usize,
}

impl PrefixCacheState {
    pub(crate) fn new(cuts: CutSchedule, block_size: usize, capacity: usize) -> Self {
        PrefixCacheState { tree: PrefixCache::new(block_size), cuts, capacity }
    }

    /// The cached prefix `tokens` may resume from (at most `limit` tokens), with its path
    /// locked, after evicting unlocked spans until the rest of the request fits beside
    /// `running` sequences. None (nothing held) when it does not fit yet.
    pub(crate) fn admit(&mut self, tokens: &[u32], limit: usize, running: usize, pool: &mut BlockPool, backend: &mut dyn Backend) -> Option<Hit> {
        let hit = self.tree.lookup(tokens, limit, &self.cuts);
        let need = pool.blocks_for(tokens.len() + 1) - hit.blocks.len();
        self.tree.lock(hit.node);
        if self.make_room(need + running, pool, backend) && policy::admits(pool.free_count(), need, running) {
            return Some(hit);
        }
        let r = self.tree.unlock(hit.node);
        let_go(r, pool, backend);
        None
    }

    /// Evicts unlocked spans (least recently used first) until `free` blocks are free;
    /// false when what is left is all in use.
    pub(crate) fn make_room(&mut self, free: usize, pool: &mut BlockPool, backend: &mut dyn Backend) -> bool {
        while pool.free_count() < free {
            let Some(r) = self.tree.evict_leaf() else { return false };
            let_go(r, pool, backend);
        }
        true
    }

    /// After a chunk of `s` ran: when it ended on a cut reached by prefill, the span's
    /// blocks join the tree (shared), the state is saved (evicting the least recently
    /// used unlocked snapshot when the backend is full), and `s` locks the new path.
    pub(crate) fn after_chunk(&mut self, s: &mut Seq, pool: &mut BlockPool, backend: &mut dyn Backend) {
        if !policy::caches_state_at(s.fed, s.prefill_end, &self.cuts) {
            return;
        }
        let (node, adopted) = self.tree.insert(&s.tokens, s.fed, &s.blocks, &self.cuts);
        pool.retain(&adopted);
        self.tree.lock(node);
        if let Some(old) = s.cache_node.replace(node) {
            let r = self.tree.unlock(old);
            let_go(r, pool, backend);
        }
        if self.tree.has_snapshot(node) {
            return;
        }
        if self.tree.snapshot_count() >= self.capacity {
            if let Some(r) = self.tree.evict_snapshot() {
                let_go(r, pool, backend);
            }
        }
        if self.tree.snapshot_count() >= self.capacity {
            return; // every snapshot is on a running request's path: skip this one
        }
        let slot = s.slot.expect("a running sequence holds a slot");
        match backend.snapshot_state(slot) {
            Ok(id) => self.tree.set_snapshot(node, id),
            Err(e) => tracing::warn!("prefix cache: could not save the state at {} tokens: {e:#}", s.fed),
        }
    }

    /// `s` no longer runs: its path is unlocked (spans left without purpose go).
    pub(crate) fn release(&mut self, s: &mut Seq, pool: &mut BlockPool, backend: &mut dyn Backend) {
        if let Some(node) = s.cache_node.take() {
            let r = self.tree.unlock(node);
            let_go(r, pool, backend);
        }
    }

    /// Empties the cache; refused while a running request holds part of it.
    pub(crate) fn flush(&mut self, pool: &mut BlockPool, backend: &mut dyn Backend) -> Result<(), String> {
        let r = self.tree.clear()?;
        let_go(r, pool, backend);
        Ok(())
    }

    /// Blocks nobody but the cache references (what eviction can free).
    pub(crate) fn evictable_blocks(&self, pool: &BlockPool) -> usize {
        self.tree.blocks().filter(|&b| pool.refcount(b) == 1).count()
    }

    pub(crate) fn cuts(&self) -> &CutSchedule {
        &self.cuts
    }
    pub(crate) fn tree(&self) -> &PrefixCache {
        &self.tree
    }
}

/// Drops the tree's references to released blocks and frees released snapshots.
fn let_go(r: Released, pool: &mut BlockPool, backend: &mut dyn Backend) {
    pool.release(&r.blocks);
    for id in r.snapshots {
        if let Err(e) = backend.drop_snapshot(id) {
            tracing::warn!("prefix cache: {e:#}");
        }
    }
}
