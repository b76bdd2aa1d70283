//! Message bytes a node retains for repair and hands out in `Deliver` events, in pooled
//! buffers: a message's bytes are copied once into a buffer of its size class (a power of
//! two, at least 64 bytes) that the retention slot and the delivery event share; when the
//! slot is evicted and nobody else holds the buffer it goes back to the node's pool. So
//! at steady state storing, delivering and evicting a message allocates nothing.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// Smallest size class (bytes).
const MIN_CLASS: usize = 64;
/// Free buffers kept for reuse, all classes together (bytes); beyond it they are freed.
const MAX_POOLED_BYTES: usize = 16 << 20;

/// A message's bytes: a shared pooled buffer and how much of it is the message. Cloning
/// shares the buffer (no copy, no allocation).
#[derive(Clone)]
pub struct Payload {
    buf: Arc<[u8]>,
    len: u32,
}

impl Payload {
    /// A payload of its own (not pooled), for tests and tools.
    pub fn copy_of(bytes: &[u8]) -> Self {
        Payload {
            buf: Arc::from(bytes),
            len: bytes.len() as u32,
        }
    }
}

impl Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.buf.get(..self.len as usize).unwrap_or(&[])
    }
}

impl AsRef<[u8]> for Payload {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}
impl Eq for Payload {}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// Free buffers by size class, bounded by `MAX_POOLED_BYTES`.
#[derive(Default)]
pub struct PayloadPool {
    /// `free[c]`: unshared buffers of `MIN_CLASS << c` bytes.
    free: Vec<Vec<Arc<[u8]>>>,
    free_bytes: usize,
    /// Buffers allocated because the pool had none of the class (a warm-up measure).
    pub allocated: u64,
}

fn class_of(len: usize) -> (usize, usize) {
    let size = len.max(MIN_CLASS).next_power_of_two();
    (
        size.trailing_zeros() as usize - MIN_CLASS.trailing_zeros() as usize,
        size,
    )
}

impl PayloadPool {
    /// `bytes` copied into a pooled buffer (one copy; an allocation only when the pool has
    /// no free buffer of the class).
    pub fn copy(&mut self, bytes: &[u8]) -> Payload {
        let (class, size) = class_of(bytes.len());
        let mut buf = match self.free.get_mut(class).and_then(Vec::pop) {
            Some(b) => {
                self.free_bytes -= size;
                b
            }
            None => {
                self.allocated += 1;
                std::iter::repeat_n(0u8, size).collect()
            }
        };
        match Arc::get_mut(&mut buf).and_then(|b| b.get_mut(..bytes.len())) {
            Some(dst) => dst.copy_from_slice(bytes),
            // Pooled buffers are unshared (checked in `recycle`): not reached.
            None => return Payload::copy_of(bytes),
        }
        Payload {
            buf,
            len: bytes.len() as u32,
        }
    }

    /// Takes back a payload the node no longer retains: its buffer is reused if nobody else
    /// holds it (a delivery event not yet dropped) and the pool has room, else freed.
    pub fn recycle(&mut self, p: Payload) {
        let size = p.buf.len();
        // A plain load, not `Arc::get_mut`'s locked compare-exchange (paid on every recycle,
        // most of them of a buffer still shared): no `Weak` of a payload buffer exists, so a
        // count of 1 is our reference alone and nobody can raise it. `copy` takes the buffer
        // back with `get_mut`, which synchronizes with the other holders' drops.
        if Arc::strong_count(&p.buf) != 1 || !size.is_power_of_two() || size < MIN_CLASS {
            return;
        }
        if self.free_bytes + size > MAX_POOLED_BYTES {
            return;
        }
        let (class, _) = class_of(size);
        if self.free.len() <= class {
            self.free.resize_with(class + 1, Vec::new);
        }
        self.free_bytes += size;
        self.free[class].push(p.buf);
    }

    /// Bytes in free buffers.
    #[cfg(test)]
    pub fn free_bytes(&self) -> usize {
        self.free_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_once_unshared() {
        let mut pool = PayloadPool::default();
        let a = pool.copy(b"hello");
        assert_eq!(&*a, b"hello");
        let event = a.clone();
        pool.recycle(a);
        assert_eq!(pool.free_bytes(), 0, "shared with an event: not reused");
        drop(event);
        let b = pool.copy(&[1u8; 64]);
        assert_eq!(pool.allocated, 2);
        pool.recycle(b);
        assert_eq!(pool.free_bytes(), 64);
        let c = pool.copy(&[2u8; 33]);
        assert_eq!(
            pool.allocated, 2,
            "a 33-byte message takes the free 64-byte buffer"
        );
        assert_eq!(&*c, &[2u8; 33]);
        let d = pool.copy(&[3u8; 65]);
        assert_eq!(pool.allocated, 3, "65 bytes: the 128-byte class");
        assert_eq!(d.len(), 65);
        assert_eq!(Payload::copy_of(&[3u8; 65]), d);
    }

    #[test]
    fn the_pool_is_bounded() {
        let mut pool = PayloadPool::default();
        let big: Vec<Payload> = (0..40).map(|_| pool.copy(&vec![0u8; 1 << 20])).collect();
        for p in big {
            pool.recycle(p);
        }
        assert!(pool.free_bytes() <= MAX_POOLED_BYTES);
    }
}
