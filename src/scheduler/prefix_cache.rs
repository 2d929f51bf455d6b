//! The prefix cache's tree: a radix tree over the token spans between prefill cuts.
//!
//! Prompts are cut at fixed absolute positions (`policy::CutSchedule`), so every edge
//! of the tree is one whole span between two cuts and nodes never split. A node holds
//! the full-attention KV blocks of its span (one reference each in the block pool) and,
//! optionally, a snapshot of the Gated DeltaNet state at its end. A request resumes at
//! the deepest node on its path that has a snapshot, sharing the KV blocks of the whole
//! path.
//!
//! Pure bookkeeping: the tree hands out and takes back block numbers and snapshot ids;
//! `cache.rs` moves them between the block pool and the backend. Nodes on the path of a
//! running request are locked and never evicted; eviction takes the least recently used
//! unlocked leaf (blocks and snapshot) or snapshot.

use super::policy::CutSchedule;
use crate::backend::SnapshotId;
use std::collections::HashMap;

pub type NodeId = usize;

const ROOT: NodeId = 0;

#[derive(Debug, Default)]
struct Node {
    parent: NodeId,
    /// This node's span: tokens[start..end] of every prompt through it.
    start: usize,
    end: usize,
    key: Vec<u32>,
    children: HashMap<Vec<u32>, NodeId>,
    /// KV blocks of the span (whole blocks: cuts fall on block boundaries).
    blocks: Vec<u32>,
    /// The Gated DeltaNet state after `end` tokens.
    snapshot: Option<SnapshotId>,
    /// Running requests whose path goes through this node.
    locks: usize,
    last_used: u64,
}

/// Where a cached prefix takes a request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hit {
    /// The deepest node used (the root on a miss).
    pub node: NodeId,
    /// Tokens served from the cache (0 on a miss).
    pub pos: usize,
    /// KV blocks covering tokens 0..pos.
    pub blocks: Vec<u32>,
    /// The state after `pos` tokens (None on a miss).
    pub snapshot: Option<SnapshotId>,
}

/// What the tree let go of: the caller drops the blocks' references and the snapshots.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    pub blocks: Vec<u32>,
    pub snapshots: Vec<SnapshotId>,
}

impl Released {
    fn absorb(&mut self, other: Released) {
        self.blocks.extend(other.blocks);
        self.snapshots.extend(other.snapshots);
    }
}

#[derive(Debug)]
pub struct PrefixCache {
    nodes: Vec<Option<Node>>,
    spare: Vec<NodeId>,
    block_size: usize,
    clock: u64,
}

impl PrefixCache {
    pub fn new(block_size: usize) -> Self {
        PrefixCache { nodes: vec![Some(Node::default())], spare: vec![], block_size: block_size.max(1), clock: 0 }
    }

    fn node(&self, id: NodeId) -> &Node {
        self.nodes[id].as_ref().expect("live node")
    }
    fn node_mut(&mut self, id: NodeId) -> &mut Node {
        self.nodes[id].as_mut().expect("live node")
    }
    fn live(&self) -> impl Iterator<Item = (NodeId, &Node)> {
        self.nodes.iter().enumerate().skip(1).filter_map(|(i, n)| n.as_ref().map(|n| (i, n)))
    }
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// The deepest cached state on `tokens`' path that ends at or before `limit`.
    /// Marks the path used (LRU).
    pub fn lookup(&mut self, tokens: &[u32], limit: usize, cuts: &CutSchedule) -> Hit {
        let now = self.tick();
        let (mut cur, mut pos) = (ROOT, 0);
        let mut best = (ROOT, 0);
        loop {
            let next = cuts.next_cut(pos);
            if next > limit.min(tokens.len()) {
                break;
            }
            let Some(&child) = self.node(cur).children.get(&tokens[pos..next]) else { break };
            (cur, pos) = (child, next);
            let n = self.node_mut(cur);
            n.last_used = now;
            if n.snapshot.is_some() {
                best = (cur, pos);
            }
        }
        let (node, pos) = best;
        Hit { node, pos, blocks: self.path_blocks(node), snapshot: (node != ROOT).then(|| self.node(node).snapshot).flatten() }
    }

    /// The KV blocks from the root down to `node`, in token order.
    fn path_blocks(&self, node: NodeId) -> Vec<u32> {
        let mut spans = vec![];
        let mut cur = node;
        while cur != ROOT {
            spans.push(&self.node(cur).blocks);
            cur = self.node(cur).parent;
        }
        spans.into_iter().rev().flatten().copied().collect()
    }

    /// Adds the path of `tokens[..end]` (`end` a cut), taking each new node's blocks
    /// from `seq_blocks` (the request's own, covering at least `end` tokens). Returns the
    /// node at `end` and the blocks the tree now also holds (the caller adds one
    /// reference to each). Spans already present keep their blocks.
    pub fn insert(&mut self, tokens: &[u32], end: usize, seq_blocks: &[u32], cuts: &CutSchedule) -> (NodeId, Vec<u32>) {
        let now = self.tick();
        let bs = self.block_size;
        let (mut cur, mut pos) = (ROOT, 0);
        let mut adopted = vec![];
        while pos < end {
            let next = cuts.next_cut(pos);
            assert!(next <= end && next.is_multiple_of(bs), "prefix cache: {end} is not a cut on whole blocks");
            let key = &tokens[pos..next];
            let child = match self.node(cur).children.get(key) {
                Some(&c) => c,
                None => {
                    let blocks = seq_blocks[pos / bs..next / bs].to_vec();
                    adopted.extend_from_slice(&blocks);
                    let n = Node { parent: cur, start: pos, end: next, key: key.to_vec(), blocks, ..Default::default() };
                    let id = match self.spare.pop() {
                        Some(id) => {
                            self.nodes[id] = Some(n);
                            id
                        }
                        None => {
                            self.nodes.push(Some(n));
                            self.nodes.len() - 1
                        }
                    };
                    self.node_mut(cur).children.insert(key.to_vec(), id);
                    id
                }
            };
            self.node_mut(child).last_used = now;
            (cur, pos) = (child, next);
        }
        (cur, adopted)
    }

    pub fn has_snapshot(&self, node: NodeId) -> bool {
        node != ROOT && self.node(node).snapshot.is_some()
    }
    /// Attaches the state after `node`'s last token (the node must have none).
    pub fn set_snapshot(&mut self, node: NodeId, snapshot: SnapshotId) {
        let n = self.node_mut(node);
        assert!(n.snapshot.is_none(), "prefix cache: node already has a snapshot");
        n.snapshot = Some(snapshot);
    }

    /// A running request now uses the path to `node` (the root locks nothing).
    pub fn lock(&mut self, node: NodeId) {
        let mut cur = node;
        while cur != ROOT {
            self.node_mut(cur).locks += 1;
            cur = self.node(cur).parent;
        }
    }
    /// The request is done with the path to `node`. Spans that hold no state any more
    /// (a leaf without snapshot, nobody on it) are dropped and returned.
    pub fn unlock(&mut self, node: NodeId) -> Released {
        let mut cur = node;
        while cur != ROOT {
            let n = self.node_mut(cur);
            assert!(n.locks > 0, "prefix cache: unlock of an unlocked node");
            n.locks -= 1;
            cur = n.parent;
        }
        self.prune(node)
    }

    /// Removes `node` and then its ancestors while each is an unlocked leaf without a
    /// snapshot (no resume point is reachable through it).
    fn prune(&mut self, node: NodeId) -> Released {
        let mut out = Released::default();
        let mut cur = node;
        while cur != ROOT {
            let n = self.node(cur);
            if !n.children.is_empty() || n.snapshot.is_some() || n.locks > 0 {
                break;
            }
            let parent = n.parent;
            out.absorb(self.remove_leaf(cur));
            cur = parent;
        }
        out
    }

    fn remove_leaf(&mut self, id: NodeId) -> Released {
        let n = self.nodes[id].take().expect("live node");
        debug_assert!(n.children.is_empty() && n.locks == 0);
        self.node_mut(n.parent).children.remove(&n.key);
        self.spare.push(id);
        Released { blocks: n.blocks, snapshots: n.snapshot.into_iter().collect() }
    }

    /// Evicts the least recently used unlocked leaf (its blocks and snapshot), then any
    /// ancestors left without a purpose. None when everything left is in use.
    pub fn evict_leaf(&mut self) -> Option<Released> {
        let (id, _) = self.live().filter(|(_, n)| n.children.is_empty() && n.locks == 0).min_by_key(|(_, n)| n.last_used)?;
        let parent = self.node(id).parent;
        let mut out = self.remove_leaf(id);
        out.absorb(self.prune(parent));
        Some(out)
    }

    /// Evicts the least recently used snapshot no running request's path holds, and the
    /// spans that then lead nowhere. None when every snapshot is in use.
    pub fn evict_snapshot(&mut self) -> Option<Released> {
        let (id, _) = self.live().filter(|(_, n)| n.snapshot.is_some() && n.locks == 0).min_by_key(|(_, n)| n.last_used)?;
        let mut out = Released { blocks: vec![], snapshots: self.node_mut(id).snapshot.take().into_iter().collect() };
        out.absorb(self.prune(id));
        Some(out)
    }

    /// Empties the tree; refused while a running request holds a path.
    pub fn clear(&mut self) -> Result<Released, String> {
        let locked = self.live().filter(|(_, n)| n.locks > 0).count();
        if locked > 0 {
            return Err(format!("{locked} cached spans are in use by running requests"));
        }
        let mut out = Released::default();
        for slot in self.nodes.iter_mut().skip(1) {
            if let Some(n) = slot.take() {
                out.blocks.extend(n.blocks);
                out.snapshots.extend(n.snapshot);
            }
        }
        *self = PrefixCache::new(self.block_size);
        Ok(out)
    }

    /// Spans in the tree.
    pub fn node_count(&self) -> usize {
        self.live().count()
    }
    pub fn snapshot_count(&self) -> usize {
        self.live().filter(|(_, n)| n.snapshot.is_some()).count()
    }
    /// Every block the tree holds a reference to.
    pub fn blocks(&self) -> impl Iterator<Item = u32> + '_ {
        self.live().flat_map(|(_, n)| n.blocks.iter().copied())
    }
    pub fn is_locked(&self, node: NodeId) -> bool {
        node != ROOT && self.node(node).locks > 0
    }

    /// Structure checks: children point back to their parent, spans chain, blocks cover
    /// spans exactly, a node is locked at least as often as any child.
    pub fn check(&self) -> Result<(), String> {
        for (id, n) in self.nodes.iter().enumerate().filter_map(|(i, n)| n.as_ref().map(|n| (i, n))) {
            for (key, &c) in &n.children {
                let ch = self.nodes.get(c).and_then(Option::as_ref).ok_or(format!("node {id}: dead child {c}"))?;
                if ch.parent != id || &ch.key != key || ch.start != n.end || ch.end != ch.start + key.len() {
                    return Err(format!("node {c}: inconsistent with its parent {id}"));
                }
                if ch.blocks.len() * self.block_size != key.len() {
                    return Err(format!("node {c}: {} blocks for {} tokens", ch.blocks.len(), key.len()));
                }
                if ch.locks > n.locks && id != ROOT {
                    return Err(format!("node {c}: locked more than its parent"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BS: usize = 4;

    fn cuts() -> CutSchedule {
        CutSchedule::uniform(8)
    }

    /// Blocks 100.. for a request that owns `n` tokens' worth.
    fn own_blocks(base: u32, tokens: usize) -> Vec<u32> {
        (0..tokens.div_ceil(BS) as u32).map(|i| base + i).collect()
    }

    fn toks(n: usize, salt: u32) -> Vec<u32> {
        (0..n as u32).map(|i| i * 7 + salt).collect()
    }

    #[test]
    fn resumes_at_the_deepest_snapshot_and_shares_its_path() {
        let mut t = PrefixCache::new(BS);
        let a = toks(30, 1);
        let blocks = own_blocks(100, 30);
        let (n8, got8) = t.insert(&a, 8, &blocks, &cuts());
        t.set_snapshot(n8, 1);
        let (n24, got24) = t.insert(&a, 24, &blocks, &cuts());
        t.set_snapshot(n24, 2);
        assert_eq!(got8, vec![100, 101]);
        assert_eq!(got24, vec![102, 103, 104, 105], "only new spans adopt blocks");
        assert_eq!(t.node_count(), 3);
        // Same prompt: the deepest snapshot below the limit.
        let h = t.lookup(&a, 29, &cuts());
        assert_eq!((h.pos, h.snapshot, h.blocks.clone()), (24, Some(2), own_blocks(100, 24)));
        // The limit stops the walk: position 16 has no snapshot, so 8 is the hit.
        let h = t.lookup(&a, 20, &cuts());
        assert_eq!((h.pos, h.snapshot, h.blocks.len()), (8, Some(1), 2));
        // A prompt that diverges inside the second span.
        let mut b = a.clone();
        b[10] = 9999;
        assert_eq!(t.lookup(&b, 29, &cuts()).pos, 8);
        // A different first span: a miss.
        assert_eq!(t.lookup(&toks(30, 2), 29, &cuts()), Hit::default());
        t.check().unwrap();
    }

    #[test]
    fn eviction_is_lru_and_spares_locked_paths() {
        let mut t = PrefixCache::new(BS);
        let (a, b) = (toks(16, 1), toks(16, 2));
        let (na, _) = t.insert(&a, 16, &own_blocks(0, 16), &cuts());
        t.set_snapshot(na, 10);
        let (nb, _) = t.insert(&b, 16, &own_blocks(20, 16), &cuts());
        t.set_snapshot(nb, 20);
        // a is used more recently than b, but b's path is locked by a running request.
        t.lookup(&a, 15, &cuts());
        t.lock(nb);
        let ev = t.evict_leaf().unwrap();
        assert_eq!(ev, Released { blocks: vec![2, 3, 0, 1], snapshots: vec![10] }, "the leaf, then its empty parent");
        assert!(t.evict_leaf().is_none(), "everything left is locked");
        assert!(t.evict_snapshot().is_none());
        assert!(t.clear().is_err());
        assert!(t.unlock(nb).blocks.is_empty(), "b keeps its snapshot");
        assert_eq!(t.evict_snapshot().unwrap(), Released { blocks: vec![22, 23, 20, 21], snapshots: vec![20] });
        assert_eq!(t.node_count(), 0);
        t.check().unwrap();
    }

    #[test]
    fn a_span_without_a_snapshot_below_goes_when_unlocked() {
        let mut t = PrefixCache::new(BS);
        let a = toks(24, 3);
        let (n8, _) = t.insert(&a, 8, &own_blocks(0, 24), &cuts());
        t.set_snapshot(n8, 5);
        // The request got to 16 but its snapshot could not be stored.
        let (n16, adopted) = t.insert(&a, 16, &own_blocks(0, 24), &cuts());
        assert_eq!(adopted, vec![2, 3]);
        t.lock(n16);
        assert!(t.is_locked(n8));
        assert_eq!(t.unlock(n16), Released { blocks: vec![2, 3], snapshots: vec![] });
        assert_eq!(t.node_count(), 1);
        let all = t.clear().unwrap();
        assert_eq!(all, Released { blocks: vec![0, 1], snapshots: vec![5] });
        assert_eq!((t.node_count(), t.blocks().count()), (0, 0));
    }
}
