//! `Region`: the one place that turns offsets into memory accesses on a caller-mapped
//! region. Normally a pointer and a length; under `--cfg loom` a `LoomRegion` of loom
//! atomics (words), so the ring algorithms run unchanged inside loom models.
//!
//! Every accessor is an `unsafe fn` whose precondition is an in-bounds, aligned offset; the
//! callers (publish, log, doorbell) derive their offsets from validated capacities and masks
//! and say so at each call.

use super::layout::{LayoutError, REGION_ALIGN};
use super::sync::{AtomicU32, AtomicU64};

#[cfg(not(loom))]
mod imp {
    use super::*;
    use std::ptr::NonNull;

    /// A caller-mapped region of shared memory: `len` bytes at `base`.
    ///
    /// Invariant (established by [`Region::from_raw`]'s contract): `base` is valid for reads
    /// (and writes, if the region was attached writable) of `len` bytes, aligned to
    /// [`REGION_ALIGN`], and outlives every object holding this `Region`.
    #[derive(Clone, Copy, Debug)]
    pub(crate) struct Region {
        base: NonNull<u8>,
        len: usize,
    }

    impl Region {
        /// # Safety
        /// `base` must satisfy the region contract of the module docs for `len` bytes.
        pub(crate) unsafe fn from_raw(base: *mut u8, len: usize) -> Result<Self, LayoutError> {
            let addr = base as usize;
            let Some(base) = NonNull::new(base) else {
                return Err(LayoutError::Misaligned {
                    addr,
                    align: REGION_ALIGN,
                });
            };
            if addr & (REGION_ALIGN - 1) != 0 {
                return Err(LayoutError::Misaligned {
                    addr,
                    align: REGION_ALIGN,
                });
            }
            Ok(Region { base, len })
        }

        #[inline]
        pub(crate) fn len(&self) -> usize {
            self.len
        }

        /// # Safety
        /// `off % 8 == 0` and `off + 8 <= len`.
        #[inline(always)]
        pub(crate) unsafe fn atomic_u64(&self, off: usize) -> &AtomicU64 {
            debug_assert!(off & 7 == 0 && off + 8 <= self.len, "atomic_u64 at {off}");
            // SAFETY: in bounds and 8-aligned (caller's precondition, base is page-aligned);
            // AtomicU64 has the size and alignment of u64, and shared memory is only ever
            // accessed atomically at the offsets where the layout puts an atomic.
            unsafe { &*(self.base.as_ptr().add(off) as *const AtomicU64) }
        }

        /// # Safety
        /// `off % 4 == 0` and `off + 4 <= len`.
        #[inline(always)]
        pub(crate) unsafe fn atomic_u32(&self, off: usize) -> &AtomicU32 {
            debug_assert!(off & 3 == 0 && off + 4 <= self.len, "atomic_u32 at {off}");
            // SAFETY: as for `atomic_u64`, with 4-byte size and alignment.
            unsafe { &*(self.base.as_ptr().add(off) as *const AtomicU32) }
        }

        /// Copies `dst.len()` bytes at `off` out of the region.
        ///
        /// # Safety
        /// `off % 8 == 0` and `off + dst.len() <= len`. The bytes may be concurrently written
        /// by a peer (seqlock-style readers validate after the copy).
        #[inline(always)]
        pub(crate) unsafe fn read(&self, off: usize, dst: &mut [u8]) {
            debug_assert!(off & 7 == 0 && off + dst.len() <= self.len, "read at {off}");
            // SAFETY: source in bounds (precondition); `dst` is private memory, so the two
            // ranges cannot overlap.
            unsafe { std::ptr::copy_nonoverlapping(self.base.as_ptr().add(off), dst.as_mut_ptr(), dst.len()) }
        }

        /// Copies `src` into the region at `off`.
        ///
        /// # Safety
        /// `off % 8 == 0`, `off + src.len() <= len`, the region is writable, and no object of
        /// this process holds a borrow of these bytes.
        #[inline(always)]
        pub(crate) unsafe fn write(&self, off: usize, src: &[u8]) {
            debug_assert!(off & 7 == 0 && off + src.len() <= self.len, "write at {off}");
            // SAFETY: destination in bounds and writable (precondition); `src` is a Rust
            // borrow, never a borrow of the shared region, so they do not overlap.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.base.as_ptr().add(off), src.len()) }
        }

        /// Hints the CPU to fetch the cache line at `off` (no memory access semantics).
        #[inline(always)]
        pub(crate) fn prefetch(&self, off: usize) {
            crate::prefetch(self.base.as_ptr().wrapping_add(off).cast_const());
        }

        /// Borrows `len` bytes at `off` in place.
        ///
        /// # Safety
        /// In bounds; for the lifetime of the borrow nothing in this process writes them.
        /// (A peer process may; the reader treats the bytes as untrusted.)
        #[inline(always)]
        pub(crate) unsafe fn slice(&self, off: usize, len: usize) -> &[u8] {
            debug_assert!(off + len <= self.len, "slice at {off}+{len}");
            // SAFETY: in bounds (precondition), u8 has no alignment or validity requirement.
            unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(off), len) }
        }

        /// Borrows `len` bytes at `off` mutably, in place.
        ///
        /// # Safety
        /// In bounds, writable, and no other borrow of these bytes exists in this process for
        /// the lifetime of the result.
        #[inline(always)]
        #[allow(clippy::mut_from_ref)]
        pub(crate) unsafe fn slice_mut(&self, off: usize, len: usize) -> &mut [u8] {
            debug_assert!(off + len <= self.len, "slice_mut at {off}+{len}");
            // SAFETY: in bounds and writable, unaliased (precondition).
            unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(off), len) }
        }
    }
}

#[cfg(loom)]
mod imp {
    use super::*;
    use crate::shm::layout::DATA_OFFSET;
    use crate::shm::sync::Ordering::Relaxed;

    /// Header area modelled under loom: the index blocks all live below this offset.
    const LOOM_HEADER_LEN: usize = 512;

    /// A region for loom models: the header area and the data area as loom atomics (8-byte
    /// words; 4-byte atomics for the doorbell words), the unused reserved bytes omitted.
    /// Plain byte copies become word-wise `Relaxed` accesses, which is exactly what loom
    /// needs to check that the Release/Acquire pairs (not luck) publish the bytes, and lets
    /// the delivery log's seqlock readers race with the writer as they do in real memory.
    ///
    /// Pass `&region as *const LoomRegion as *mut u8` as `base` and `region.len()` as `len`.
    pub struct LoomRegion {
        len: usize,
        words: Box<[AtomicU64]>,
        halves: Box<[AtomicU32]>,
        data: Box<[AtomicU64]>,
    }

    impl LoomRegion {
        /// A zeroed region of logical length `len` (`DATA_OFFSET` + capacity, or a doorbell
        /// page). Create it inside the loom model.
        pub fn new(len: usize) -> Self {
            let data_words = len.saturating_sub(DATA_OFFSET) / 8;
            LoomRegion {
                len,
                words: (0..LOOM_HEADER_LEN / 8).map(|_| AtomicU64::new(0)).collect(),
                halves: (0..LOOM_HEADER_LEN / 4).map(|_| AtomicU32::new(0)).collect(),
                data: (0..data_words).map(|_| AtomicU64::new(0)).collect(),
            }
        }

        pub fn len(&self) -> usize {
            self.len
        }

        pub fn is_empty(&self) -> bool {
            self.len == 0
        }

        pub fn as_ptr(&self) -> *mut u8 {
            self as *const LoomRegion as *mut u8
        }

        fn word(&self, off: usize) -> &AtomicU64 {
            assert!(off & 7 == 0, "loom region: unaligned word at {off}");
            if off < LOOM_HEADER_LEN {
                &self.words[off / 8]
            } else {
                assert!(off >= DATA_OFFSET, "loom region: reserved offset {off} touched");
                &self.data[(off - DATA_OFFSET) / 8]
            }
        }
    }

    #[derive(Clone, Copy)]
    pub(crate) struct Region {
        mem: *const LoomRegion,
        len: usize,
    }

    impl Region {
        /// # Safety
        /// `base` points to a live `LoomRegion` that outlives every user of this `Region`.
        pub(crate) unsafe fn from_raw(base: *mut u8, len: usize) -> Result<Self, LayoutError> {
            let mem = base as *const LoomRegion;
            // SAFETY: caller's precondition.
            if unsafe { (*mem).len } != len {
                return Err(LayoutError::Misaligned {
                    addr: base as usize,
                    align: REGION_ALIGN,
                });
            }
            Ok(Region { mem, len })
        }

        pub(crate) fn len(&self) -> usize {
            self.len
        }

        fn mem(&self) -> &LoomRegion {
            // SAFETY: `from_raw`'s precondition: the LoomRegion outlives this Region.
            unsafe { &*self.mem }
        }

        pub(crate) unsafe fn atomic_u64(&self, off: usize) -> &AtomicU64 {
            self.mem().word(off)
        }

        pub(crate) unsafe fn atomic_u32(&self, off: usize) -> &AtomicU32 {
            assert!(
                off & 3 == 0 && off < LOOM_HEADER_LEN,
                "loom region: u32 atomic at {off}"
            );
            &self.mem().halves[off / 4]
        }

        pub(crate) unsafe fn read(&self, off: usize, dst: &mut [u8]) {
            for (i, chunk) in dst.chunks_mut(8).enumerate() {
                let word = self.mem().word(off + i * 8).load(Relaxed).to_le_bytes();
                chunk.copy_from_slice(&word[..chunk.len()]);
            }
        }

        pub(crate) fn prefetch(&self, _off: usize) {}

        pub(crate) unsafe fn write(&self, off: usize, src: &[u8]) {
            for (i, chunk) in src.chunks(8).enumerate() {
                let mut word = [0u8; 8];
                word[..chunk.len()].copy_from_slice(chunk);
                self.mem()
                    .word(off + i * 8)
                    .store(u64::from_le_bytes(word), Relaxed);
            }
        }
    }
}

#[cfg(loom)]
pub use imp::LoomRegion;
pub(crate) use imp::Region;
