//! Fixed pools of per-sequence state slots and paged KV blocks, sized at start-up from
//! the backend's `Capacity`. Pure bookkeeping: the backend owns the memory behind them.
//!
//! Invariants (checked by `check`): used + free == total; each slot and block has at
//! most one owner; nothing is freed twice (a double free is a bug and panics).

/// Who holds a slot or block: the scheduler's internal request id.
pub type Owner = u64;

/// A pool of `n` numbered items, each free or held by one owner. `what` names the
/// items in messages ("slot", "block").
#[derive(Debug)]
pub struct OwnedPool {
    owner: Vec<Option<Owner>>,
    free: Vec<usize>,
    what: &'static str,
}

impl OwnedPool {
    pub fn new(n: usize, what: &'static str) -> Self {
        // Hand out low numbers first (pop from the end of a reversed list).
        OwnedPool { owner: vec![None; n], free: (0..n).rev().collect(), what }
    }
    pub fn total(&self) -> usize {
        self.owner.len()
    }
    pub fn free_count(&self) -> usize {
        self.free.len()
    }
    pub fn used(&self) -> usize {
        self.total() - self.free_count()
    }
    pub fn alloc(&mut self, who: Owner) -> Option<usize> {
        let s = self.free.pop()?;
        debug_assert!(self.owner[s].is_none());
        self.owner[s] = Some(who);
        Some(s)
    }
    pub fn release(&mut self, item: usize, who: Owner) {
        let w = self.what;
        assert_eq!(self.owner[item], Some(who), "{w} {item} released by {who}, owned by {:?}", self.owner[item]);
        self.owner[item] = None;
        self.free.push(item);
    }
    pub fn check(&self) -> Result<(), String> {
        let (w, held) = (self.what, self.owner.iter().filter(|o| o.is_some()).count());
        if held + self.free.len() != self.total() {
            return Err(format!("{w}s: {held} held + {} free != {} total", self.free.len(), self.total()));
        }
        if self.free.iter().any(|&s| self.owner[s].is_some()) {
            return Err(format!("{w}s: a free {w} has an owner"));
        }
        Ok(())
    }
}

/// Per-sequence state slots.
pub type SlotPool = OwnedPool;

/// Paged KV blocks of `block_size` tokens.
#[derive(Debug)]
pub struct BlockPool {
    ids: OwnedPool,
    block_size: usize,
}

impl BlockPool {
    pub fn new(n: usize, block_size: usize) -> Self {
        BlockPool { ids: OwnedPool::new(n, "block"), block_size: block_size.max(1) }
    }
    pub fn total(&self) -> usize {
        self.ids.total()
    }
    pub fn free_count(&self) -> usize {
        self.ids.free_count()
    }
    pub fn used(&self) -> usize {
        self.ids.used()
    }
    pub fn block_size(&self) -> usize {
        self.block_size
    }
    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }
    /// Grows `list` so it covers `tokens` tokens; all or nothing.
    pub fn grow(&mut self, list: &mut Vec<u32>, tokens: usize, who: Owner) -> bool {
        let need = self.blocks_for(tokens).saturating_sub(list.len());
        if need > self.ids.free_count() {
            return false;
        }
        for _ in 0..need {
            list.push(self.ids.alloc(who).expect("counted above") as u32);
        }
        true
    }
    /// Returns every block of `list` to the pool and empties it.
    pub fn release_all(&mut self, list: &mut Vec<u32>, who: Owner) {
        for b in list.drain(..) {
            self.ids.release(b as usize, who);
        }
    }
    pub fn check(&self) -> Result<(), String> {
        self.ids.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_alloc_release_and_invariants() {
        let mut p = SlotPool::new(2, "slot");
        let a = p.alloc(1).unwrap();
        let b = p.alloc(2).unwrap();
        assert_ne!(a, b);
        assert!(p.alloc(3).is_none());
        p.check().unwrap();
        p.release(a, 1);
        assert_eq!(p.used(), 1);
        p.release(b, 2);
        assert_eq!(p.used(), 0);
        p.check().unwrap();
    }

    #[test]
    #[should_panic]
    fn slot_double_free_panics() {
        let mut p = SlotPool::new(2, "slot");
        let a = p.alloc(1).unwrap();
        p.release(a, 1);
        p.release(a, 1);
    }

    #[test]
    fn blocks_grow_all_or_nothing() {
        let mut p = BlockPool::new(4, 16);
        let mut l = vec![];
        assert!(p.grow(&mut l, 17, 9));
        assert_eq!(l.len(), 2);
        assert!(p.grow(&mut l, 32, 9));
        assert_eq!(l.len(), 2);
        let mut m = vec![];
        assert!(!p.grow(&mut m, 48, 8));
        assert!(m.is_empty());
        assert_eq!(p.free_count(), 2);
        p.release_all(&mut l, 9);
        assert_eq!(p.free_count(), 4);
        p.check().unwrap();
    }
}
