//! [`Ring`]: a double-ended queue whose append inlines, for a stream's window of slots.
//!
//! `VecDeque::push_back` compiled to an out-of-line call that took the value by reference:
//! the caller wrote the 32-byte slot to its stack field by field and the callee read it
//! back with two 16-byte loads. The store buffer cannot forward a load from several
//! smaller stores, so each load waited until every older store had reached the cache,
//! among them the message's copy into its arena, whose lines were long out of cache.
//! `perf annotate` put 80-90% of `push_back`'s samples on that load, 16% of a receiving
//! daemon. Here the append is inline and writes the slot's fields straight into the
//! buffer. With the `Stored` change beside it, `tutti-bench proto` runs the same
//! instructions per message and its receiver 15% faster (README, issue 10).

use std::iter::Chain;
use std::slice;

/// A ring buffer of `T`: `buf.len()` (0 or a power of two) slots, `len` of them in use
/// from `head` on, wrapping. Slots not in use hold `T::default()` (safe code: what leaves
/// the ring is taken out with `mem::take`).
#[derive(Debug)]
pub(crate) struct Ring<T> {
    buf: Vec<T>,
    head: usize,
    len: usize,
}

impl<T: Default> Ring<T> {
    pub(crate) fn new() -> Self {
        Ring {
            buf: Vec::new(),
            head: 0,
            len: 0,
        }
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the `i`th element lives in `buf` (any `i < buf.len()`).
    #[inline(always)]
    fn at(&self, i: usize) -> usize {
        (self.head + i) & self.buf.len().wrapping_sub(1)
    }

    #[inline(always)]
    pub(crate) fn push_back(&mut self, value: T) {
        if self.len == self.buf.len() {
            self.grow();
        }
        let i = self.at(self.len);
        self.buf[i] = value;
        self.len += 1;
    }

    /// Appends `n` values made by `f`.
    pub(crate) fn extend_with(&mut self, n: usize, mut f: impl FnMut() -> T) {
        for _ in 0..n {
            self.push_back(f());
        }
    }

    /// Doubles the buffer (at least 16 slots), the elements in order from its start.
    #[cold]
    #[inline(never)]
    fn grow(&mut self) {
        let capacity = (self.buf.len() * 2).max(16);
        let mut buf = Vec::with_capacity(capacity);
        for i in 0..self.len {
            let at = self.at(i);
            buf.push(std::mem::take(&mut self.buf[at]));
        }
        buf.resize_with(capacity, T::default);
        self.buf = buf;
        self.head = 0;
    }

    pub(crate) fn pop_front(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        let value = std::mem::take(&mut self.buf[self.head]);
        self.head = self.at(1);
        self.len -= 1;
        Some(value)
    }

    pub(crate) fn pop_back(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        let at = self.at(self.len);
        Some(std::mem::take(&mut self.buf[at]))
    }

    #[inline]
    pub(crate) fn get(&self, i: usize) -> Option<&T> {
        (i < self.len).then(|| &self.buf[self.at(i)])
    }

    #[inline]
    pub(crate) fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        if i < self.len {
            let at = self.at(i);
            Some(&mut self.buf[at])
        } else {
            None
        }
    }

    pub(crate) fn front(&self) -> Option<&T> {
        self.get(0)
    }

    pub(crate) fn back(&self) -> Option<&T> {
        self.len.checked_sub(1).and_then(|i| self.get(i))
    }

    /// The elements in order: the run from `head`, then the wrapped run from the start.
    fn as_slices(&self) -> (&[T], &[T]) {
        let end = self.head + self.len;
        if end <= self.buf.len() {
            (&self.buf[self.head..end], &[])
        } else {
            (&self.buf[self.head..], &self.buf[..end - self.buf.len()])
        }
    }

    pub(crate) fn iter(&self) -> Chain<slice::Iter<'_, T>, slice::Iter<'_, T>> {
        let (a, b) = self.as_slices();
        a.iter().chain(b.iter())
    }

    pub(crate) fn iter_mut(&mut self) -> Chain<slice::IterMut<'_, T>, slice::IterMut<'_, T>> {
        let (capacity, head, len) = (self.buf.len(), self.head, self.len);
        let (wrapped, from_head) = self.buf.split_at_mut(head);
        if head + len <= capacity {
            from_head[..len].iter_mut().chain(wrapped[..0].iter_mut())
        } else {
            from_head
                .iter_mut()
                .chain(wrapped[..head + len - capacity].iter_mut())
        }
    }
}

impl<'a, T: Default> IntoIterator for &'a Ring<T> {
    type Item = &'a T;
    type IntoIter = Chain<slice::Iter<'a, T>, slice::Iter<'a, T>>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::Ring;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    #[derive(Debug, Clone)]
    enum Op {
        Push(u32),
        Extend(u8),
        PopFront,
        PopBack,
        Set(usize, u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => any::<u32>().prop_map(Op::Push),
            1 => any::<u8>().prop_map(Op::Extend),
            3 => Just(Op::PopFront),
            1 => Just(Op::PopBack),
            1 => (0usize..80, any::<u32>()).prop_map(|(i, v)| Op::Set(i, v)),
        ]
    }

    proptest! {
        /// Every operation agrees with `VecDeque`'s, through growth and wrap-around, and
        /// every read (`get`, `front`, `back`, both iterators) sees the same elements.
        #[test]
        fn behaves_as_a_vecdeque(ops in proptest::collection::vec(op(), 0..400)) {
            let mut ring = Ring::<u32>::new();
            let mut model = VecDeque::new();
            let mut next = 0;
            for op in ops {
                match op {
                    Op::Push(v) => {
                        ring.push_back(v);
                        model.push_back(v);
                    }
                    Op::Extend(n) => {
                        let start = next;
                        ring.extend_with(usize::from(n), || {
                            next += 1;
                            next
                        });
                        model.extend((1..=u32::from(n)).map(|k| start + k));
                    }
                    Op::PopFront => prop_assert_eq!(ring.pop_front(), model.pop_front()),
                    Op::PopBack => prop_assert_eq!(ring.pop_back(), model.pop_back()),
                    Op::Set(i, v) => {
                        if let Some(x) = ring.get_mut(i) {
                            *x = v;
                        }
                        if let Some(x) = model.get_mut(i) {
                            *x = v;
                        }
                    }
                }
                prop_assert_eq!(ring.len(), model.len());
                prop_assert_eq!(ring.is_empty(), model.is_empty());
                prop_assert_eq!(ring.front(), model.front());
                prop_assert_eq!(ring.back(), model.back());
                for i in 0..model.len() + 2 {
                    prop_assert_eq!(ring.get(i), model.get(i));
                }
                prop_assert!(ring.iter().eq(model.iter()));
                prop_assert!((&ring).into_iter().eq(model.iter()));
                for x in ring.iter_mut() {
                    *x = x.wrapping_add(1);
                }
                for x in model.iter_mut() {
                    *x = x.wrapping_add(1);
                }
                prop_assert!(ring.iter().eq(model.iter()));
            }
        }
    }
}
