//! Fixed pools of per-sequence state slots and paged KV blocks, sized at start-up from
//! the backend's `Capacity`. Pure bookkeeping: the backend owns the memory behind them.
//!
//! Invariants (checked by `check`): used + free == total; each slot has at most one
//! owner; a block is free exactly when nobody references it; nothing is freed twice (a
//! double free is a bug and panics).

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

/// Paged KV blocks of `block_size` tokens, shared by reference count: a running
/// sequence holds one reference to each block of its list, and the prefix cache one to
/// each block it keeps. A block is free when nobody references it.
#[derive(Debug)]
pub struct BlockPool {
    refs: Vec<u32>,
    free: Vec<u32>,
    block_size: usize,
}

impl BlockPool {
    pub fn new(n: usize, block_size: usize) -> Self {
        // Hand out low numbers first (pop from the end of a reversed list).
        BlockPool { refs: vec![0; n], free: (0..n as u32).rev().collect(), block_size: block_size.max(1) }
    }
    pub fn total(&self) -> usize {
        self.refs.len()
    }
    pub fn free_count(&self) -> usize {
        self.free.len()
    }
    pub fn used(&self) -> usize {
        self.total() - self.free_count()
    }
    pub fn block_size(&self) -> usize {
        self.block_size
    }
    /// References to block `b` (0 when free).
    pub fn refcount(&self, b: u32) -> u32 {
        self.refs[b as usize]
    }
    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }
    /// Grows `list` with fresh blocks (one reference each) so it covers `tokens` tokens;
    /// all or nothing.
    pub fn grow(&mut self, list: &mut Vec<u32>, tokens: usize) -> bool {
        let need = self.blocks_for(tokens).saturating_sub(list.len());
        if need > self.free.len() {
            return false;
        }
        for _ in 0..need {
            let b = self.free.pop().expect("counted above");
            debug_assert_eq!(self.refs[b as usize], 0);
            self.refs[b as usize] = 1;
            list.push(b);
        }
        true
    }
    /// One more reference to each of `blocks` (all in use already: sharing a free block
    /// is a bug and panics).
    pub fn retain(&mut self, blocks: &[u32]) {
        for &b in blocks {
            assert!(self.refs[b as usize] > 0, "block {b} shared while free");
            self.refs[b as usize] += 1;
        }
    }
    /// Drops one reference to each of `blocks`; a block whose last reference goes is
    /// free again. Returns how many became free. Releasing a free block panics.
    pub fn release(&mut self, blocks: &[u32]) -> usize {
        let mut freed = 0;
        for &b in blocks {
            let r = &mut self.refs[b as usize];
            assert!(*r > 0, "block {b} released while free");
            *r -= 1;
            if *r == 0 {
                self.free.push(b);
                freed += 1;
            }
        }
        freed
    }
    /// Drops this list's reference to each of its blocks and empties it.
    pub fn release_all(&mut self, list: &mut Vec<u32>) {
        self.release(list);
        list.clear();
    }
    pub fn check(&self) -> Result<(), String> {
        let held = self.refs.iter().filter(|&&r| r > 0).count();
        if held + self.free.len() != self.total() {
            return Err(format!("blocks: {held} held + {} free != {} total", self.free.len(), self.total()));
        }
        if self.free.iter().any(|&b| self.refs[b as usize] != 0) {
            return Err("blocks: a free block has references".into());
        }
        Ok(())
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
        assert!(p.grow(&mut l, 17));
        assert_eq!(l.len(), 2);
        assert!(p.grow(&mut l, 32));
        assert_eq!(l.len(), 2);
        let mut m = vec![];
        assert!(!p.grow(&mut m, 48));
        assert!(m.is_empty());
        assert_eq!(p.free_count(), 2);
        p.release_all(&mut l);
        assert_eq!(p.free_count(), 4);
        p.check().unwrap();
    }

    #[test]
    fn shared_blocks_are_freed_by_their_last_reference() {
        let mut p = BlockPool::new(3, 16);
        let mut a = vec![];
        assert!(p.grow(&mut a, 32));
        // A second holder (the prefix cache, or a request resuming from it) shares them.
        p.retain(&a);
        assert_eq!((p.refcount(a[0]), p.refcount(a[1])), (2, 2));
        let mut b = a.clone();
        assert!(p.grow(&mut b, 48));
        assert_eq!(p.used() + p.free_count(), p.total());
        assert_eq!(p.release(&a), 0, "still referenced by b");
        assert_eq!(p.used(), 3);
        p.release_all(&mut b);
        assert_eq!((p.used(), p.free_count()), (0, 3));
        p.check().unwrap();
    }

    #[test]
    #[should_panic(expected = "released while free")]
    fn block_double_release_panics() {
        let mut p = BlockPool::new(2, 16);
        let mut a = vec![];
        assert!(p.grow(&mut a, 1));
        let b = a.clone();
        p.release_all(&mut a);
        p.release(&b);
    }
}
