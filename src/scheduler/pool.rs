//! Fixed pools of per-sequence state slots and paged KV blocks, sized at start-up from
//! the backend's `Capacity`. Pure bookkeeping: the backend owns the memory behind them.
//!
//! Invariants (checked by `check`): used + free == total; each slot and block has at
//! most one owner; nothing is freed twice (a double free is a bug and panics).

/// Who holds a slot or block: the scheduler's internal request id.
pub type Owner = u64;

#[derive(Debug)]
pub struct SlotPool {
    owner: Vec<Option<Owner>>,
    free: Vec<usize>,
}

impl SlotPool {
    pub fn new(n: usize) -> Self {
        // Hand out low slots first (pop from the end of a reversed list).
        SlotPool { owner: vec![None; n], free: (0..n).rev().collect() }
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
    pub fn release(&mut self, slot: usize, who: Owner) {
        assert_eq!(self.owner[slot], Some(who), "slot {slot} released by {who}, owned by {:?}", self.owner[slot]);
        self.owner[slot] = None;
        self.free.push(slot);
    }
    pub fn check(&self) -> Result<(), String> {
        let held = self.owner.iter().filter(|o| o.is_some()).count();
        if held + self.free.len() != self.total() {
            return Err(format!("slots: {held} held + {} free != {} total", self.free.len(), self.total()));
        }
        if self.free.iter().any(|&s| self.owner[s].is_some()) {
            return Err("slots: a free slot has an owner".into());
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct BlockPool {
    owner: Vec<Option<Owner>>,
    free: Vec<u32>,
    block_size: usize,
}

impl BlockPool {
    pub fn new(n: usize, block_size: usize) -> Self {
        BlockPool { owner: vec![None; n], free: (0..n as u32).rev().collect(), block_size: block_size.max(1) }
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
        if need > self.free.len() {
            return false;
        }
        for _ in 0..need {
            let b = self.free.pop().expect("counted above");
            debug_assert!(self.owner[b as usize].is_none());
            self.owner[b as usize] = Some(who);
            list.push(b);
        }
        true
    }
    /// Returns every block of `list` to the pool and empties it.
    pub fn release_all(&mut self, list: &mut Vec<u32>, who: Owner) {
        for b in list.drain(..) {
            let o = &mut self.owner[b as usize];
            assert_eq!(*o, Some(who), "block {b} released by {who}, owned by {o:?}");
            *o = None;
            self.free.push(b);
        }
    }
    pub fn check(&self) -> Result<(), String> {
        let held = self.owner.iter().filter(|o| o.is_some()).count();
        if held + self.free.len() != self.total() {
            return Err(format!("blocks: {held} held + {} free != {} total", self.free.len(), self.total()));
        }
        if self.free.iter().any(|&b| self.owner[b as usize].is_some()) {
            return Err("blocks: a free block has an owner".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_alloc_release_and_invariants() {
        let mut p = SlotPool::new(2);
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
        let mut p = SlotPool::new(2);
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
