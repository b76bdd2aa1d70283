//! A compact index from node ids to positions in a table that holds the ids itself (the
//! peer table, a group's member list): open addressing with linear probing over `u32`
//! slots, at most 3/4 full, so 5-11 bytes per entry where a `HashMap<NodeId, usize>`
//! takes 18-37. Lookups read the id back from the table through `key_of`; entries are
//! never removed one by one (the table is rebuilt after a removal).

use crate::NodeId;

const EMPTY: u32 = u32::MAX;

#[derive(Debug, Clone, Default)]
pub struct IdIndex {
    slots: Vec<u32>,
    len: usize,
}

impl IdIndex {
    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }

    /// Heap bytes held.
    pub fn bytes(&self) -> usize {
        self.slots.capacity() * 4
    }

    fn home(&self, id: NodeId) -> usize {
        // Fibonacci hashing: the top bits of the product (slots.len() is a power of two).
        let bits = self.slots.len().trailing_zeros();
        if bits == 0 {
            return 0;
        }
        (u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize
    }

    /// The position of `id`, if indexed; `key_of(p)` is the id at position `p`.
    pub fn get(&self, id: NodeId, key_of: impl Fn(u32) -> NodeId) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(id);
        loop {
            let s = self.slots[i];
            if s == EMPTY {
                return None;
            }
            if key_of(s) == id {
                return Some(s);
            }
            i = (i + 1) & mask;
        }
    }

    /// Indexes position `pos` (whose id, `key_of(pos)`, is not indexed yet).
    pub fn insert(&mut self, pos: u32, key_of: impl Fn(u32) -> NodeId) {
        debug_assert!(pos != EMPTY);
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            let old = std::mem::take(&mut self.slots);
            let size = (old.len() * 2).max(8);
            self.slots = vec![EMPTY; size];
            for s in old.into_iter().filter(|s| *s != EMPTY) {
                self.place(s, key_of(s));
            }
        }
        self.place(pos, key_of(pos));
        self.len += 1;
    }

    fn place(&mut self, pos: u32, id: NodeId) {
        let mask = self.slots.len() - 1;
        let mut i = self.home(id);
        while self.slots[i] != EMPTY {
            i = (i + 1) & mask;
        }
        self.slots[i] = pos;
    }

    fn reserve(&mut self, n: usize) {
        let mut size = 8;
        while n * 4 > size * 3 {
            size *= 2;
        }
        if size > self.slots.len() {
            self.slots = vec![EMPTY; size];
            self.len = 0;
        }
    }

    /// Indexes positions `0..ids.len()` of `ids` afresh.
    pub fn rebuild(&mut self, ids: &[NodeId]) {
        self.rebuild_with(ids.len(), |p| ids[p as usize]);
    }

    /// Indexes positions `0..n` afresh, `key_of(p)` being the id at `p`.
    pub fn rebuild_with(&mut self, n: usize, key_of: impl Fn(u32) -> NodeId) {
        self.slots.clear();
        self.slots.shrink_to(0);
        self.len = 0;
        self.reserve(n);
        for p in 0..n as u32 {
            self.place(p, key_of(p));
        }
        self.len = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_inserted_id_and_no_other() {
        let ids: Vec<NodeId> = (0..5000u32)
            .map(|i| i.wrapping_mul(2_654_435_761) ^ 0x55)
            .collect();
        let mut ix = IdIndex::default();
        for p in 0..ids.len() as u32 {
            ix.insert(p, |q| ids[q as usize]);
        }
        assert_eq!(ix.len(), ids.len());
        for (p, id) in ids.iter().enumerate() {
            assert_eq!(ix.get(*id, |q| ids[q as usize]), Some(p as u32));
        }
        let absent = (0..5000u32).filter(|x| !ids.contains(x)).take(100);
        for a in absent {
            assert_eq!(ix.get(a, |q| ids[q as usize]), None);
        }
        // At most 3/4 full, at least 3/8 after growth: 5-11 bytes an entry.
        assert!(ix.bytes() <= ids.len() * 11, "{} bytes", ix.bytes());
        let mut rebuilt = IdIndex::default();
        rebuilt.rebuild(&ids[..100]);
        assert_eq!(rebuilt.get(ids[99], |q| ids[q as usize]), Some(99));
        assert_eq!(rebuilt.get(ids[100], |q| ids[q as usize]), None);
    }
}
