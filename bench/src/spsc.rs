//! A bare single-producer/single-consumer byte ring: the floor that tutti's shared-memory
//! path is compared against. Same record rules as tutti's rings (8-byte header, payload
//! padded to 8, a record never straddles the end, a padding record fills the gap).
//!
//! Cache-friendly in the ways that matter between cores (MCRingBuffer style):
//! - Each side caches the other's index and reloads it only when the cached value says
//!   "full" (producer) or "empty" (consumer).
//! - Both indices are published in batches: the consumer stores `head` once per poll, the
//!   producer stores `tail` every `PUBLISH_EVERY` messages (and whenever the ring is full or
//!   it is flushed). Publishing per message lets a fast consumer chase the producer line by
//!   line, and then every message costs a cache-line round trip (~400 ns here), which
//!   would measure the chase, not the ring. Latency is the ping-pong's job, not this ring's.
//!
//! The only `unsafe` in this crate lives here: the data bytes are shared between the two
//! threads without atomics, and the head/tail protocol keeps their accesses disjoint.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

/// Every record starts on a multiple of this many bytes (as `RECORD_ALIGN` in tutti-wire).
const RECORD_ALIGN: usize = 8;
/// Record header: the payload length in one `u64` word.
const HEADER_LEN: usize = 8;
/// Header value that marks a padding record: skip to the start of the next lap.
const PADDING: u64 = u64::MAX;
/// Smallest ring: 64 KiB fits in L2 with room for both sides' working sets.
const MIN_CAPACITY: usize = 64 * 1024;
/// A ring holds at least this many records of the benchmarked size (and so at least two
/// publication batches: a full ring is also published, so there is no deadlock anyway).
const MIN_RECORDS: usize = 64;
/// The producer publishes its tail after this many messages.
pub const PUBLISH_EVERY: u32 = 32;

const fn record_len(payload: usize) -> usize {
    HEADER_LEN + payload.next_multiple_of(RECORD_ALIGN)
}

/// The memory both sides share.
pub struct SpscRing {
    /// End of the published records (absolute, only grows). Written by the producer (Release).
    tail: CachePadded<AtomicU64>,
    /// Next read position (absolute, only grows). Written by the consumer (Release).
    head: CachePadded<AtomicU64>,
    /// Cache lines of `u64` cells: the data starts on a cache line (as tutti's page-aligned
    /// shared memory does) and headers can be written as words.
    data: Box<[Line]>,
    capacity: usize,
    max_payload: usize,
}

/// One cache line of the ring's data.
#[repr(C, align(64))]
struct Line([UnsafeCell<u64>; 8]);

// SAFETY: the data bytes are only written by the one `Producer` in `[tail, head + capacity)`
// and only read by the one `Consumer` in `[head, tail)`; the Release store of `tail` (resp.
// `head`) paired with the other side's Acquire load hands each byte range over, so no byte
// is ever accessed by both threads at the same time. `split` hands out exactly one of each.
unsafe impl Sync for SpscRing {}

impl SpscRing {
    /// A ring sized for messages of `payload` bytes: at least 64 KiB and 64 records.
    pub fn for_payload(payload: usize) -> SpscRing {
        SpscRing::with_capacity(record_len(payload) * MIN_RECORDS)
    }

    /// A ring of `bytes` rounded up to a power of two (at least 64 KiB), e.g. of the size
    /// of one of tutti's rings.
    pub fn with_capacity(bytes: usize) -> SpscRing {
        let capacity = bytes.next_power_of_two().max(MIN_CAPACITY);
        let data = (0..capacity / 64)
            .map(|_| Line(std::array::from_fn(|_| UnsafeCell::new(0u64))))
            .collect();
        SpscRing {
            tail: CachePadded::new(AtomicU64::new(0)),
            head: CachePadded::new(AtomicU64::new(0)),
            data,
            capacity,
            // As in tutti: any record fits once the ring is empty, whatever the wrap point.
            max_payload: capacity / 2 - HEADER_LEN,
        }
    }

    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The two ends. Taking `&mut self` makes sure there is only ever one of each.
    pub fn split(&mut self) -> (Producer<'_>, Consumer<'_>) {
        let ring: &SpscRing = self;
        (
            Producer {
                ring,
                tail: 0,
                head_cache: 0,
                unpublished: 0,
            },
            Consumer {
                ring,
                head: 0,
                tail_cache: 0,
            },
        )
    }

    fn base(&self) -> *mut u8 {
        // `Line` is `repr(C)` around an array of cells: its first cell is at its start.
        UnsafeCell::raw_get(self.data.as_ptr().cast::<UnsafeCell<u64>>()).cast::<u8>()
    }
}

pub struct Producer<'a> {
    ring: &'a SpscRing,
    /// Our own tail: end of what we wrote, published or not.
    tail: u64,
    /// Last head we read: the consumer is at least this far.
    head_cache: u64,
    /// Messages written since the last publication of `tail`.
    unpublished: u32,
}

impl Producer<'_> {
    /// Copy `payload` into the ring; `false` when it is full (back pressure; everything
    /// written so far is then published, and nothing is stored when it already was).
    #[inline]
    pub fn offer(&mut self, payload: &[u8]) -> bool {
        let ring = self.ring;
        assert!(
            payload.len() <= ring.max_payload,
            "payload larger than ring allows"
        );
        let cap = ring.capacity as u64;
        let rec = record_len(payload.len()) as u64;
        let offset = self.tail & (cap - 1);
        let to_end = cap - offset;
        let needed = if rec > to_end { to_end + rec } else { rec };
        if needed > cap - (self.tail - self.head_cache) {
            // Acquire: pairs with the consumer's Release of `head`; it is done with the bytes.
            self.head_cache = ring.head.load(Ordering::Acquire);
            if needed > cap - (self.tail - self.head_cache) {
                // Publishes what is unpublished, and stores nothing when there is nothing
                // new: a producer retrying on a full ring does not bounce the tail's line.
                self.flush();
                return false;
            }
        }
        let base = ring.base();
        if rec > to_end {
            // SAFETY: `offset` is 8-aligned and < capacity, and `[tail, tail + needed)` is free
            // (checked against head above), so the consumer is not reading these bytes.
            unsafe { base.add(offset as usize).cast::<u64>().write(PADDING) };
            self.tail += to_end;
        }
        let at = (self.tail & (cap - 1)) as usize;
        // SAFETY: as above; the record `[at, at + rec)` lies inside the ring (it fits before the
        // end by construction) and inside the free space.
        unsafe {
            base.add(at).cast::<u64>().write(payload.len() as u64);
            std::ptr::copy_nonoverlapping(payload.as_ptr(), base.add(at + HEADER_LEN), payload.len());
        }
        self.tail += rec;
        self.unpublished += 1;
        if self.unpublished >= PUBLISH_EVERY {
            self.flush();
        }
        true
    }

    /// Publish everything written so far.
    #[inline]
    pub fn flush(&mut self) {
        // Nothing new (every tail move comes with a record): no store, so an idle producer
        // that flushes in its loop does not pull the tail's line from a polling consumer.
        if self.unpublished == 0 {
            return;
        }
        self.unpublished = 0;
        // Release: the consumer that sees this tail sees the headers and payload bytes.
        self.ring.tail.store(self.tail, Ordering::Release);
    }
}

pub struct Consumer<'a> {
    ring: &'a SpscRing,
    head: u64,
    tail_cache: u64,
}

impl Consumer<'_> {
    /// Hand every available record (up to `limit`) to `on_message`, then release the space
    /// with one store of `head`. Returns the number of messages (padding not counted).
    #[inline]
    pub fn poll(&mut self, limit: usize, mut on_message: impl FnMut(&[u8])) -> usize {
        let ring = self.ring;
        if self.head == self.tail_cache {
            // Acquire: pairs with the producer's Release store of `tail`.
            self.tail_cache = ring.tail.load(Ordering::Acquire);
            if self.head == self.tail_cache {
                return 0;
            }
        }
        let cap = ring.capacity as u64;
        let base = ring.base();
        let mut count = 0;
        while self.head < self.tail_cache && count < limit {
            let offset = (self.head & (cap - 1)) as usize;
            // SAFETY: `[head, tail)` was published by the producer (Acquire above) and it will
            // not write there until we store a head past it.
            let header = unsafe { base.add(offset).cast::<u64>().read() };
            if header == PADDING {
                self.head += cap - offset as u64;
                continue;
            }
            let len = header as usize;
            debug_assert!(len <= ring.max_payload);
            // SAFETY: as above; the producer wrote `len` bytes after the header, inside the ring.
            let payload = unsafe { std::slice::from_raw_parts(base.add(offset + HEADER_LEN), len) };
            on_message(payload);
            self.head += record_len(len) as u64;
            count += 1;
        }
        // Release: the producer that sees this head may overwrite what we just read.
        ring.head.store(self.head, Ordering::Release);
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_thread_wraps_and_pads() {
        let mut ring = SpscRing::for_payload(100);
        let cap = ring.capacity();
        let (mut p, mut c) = ring.split();
        let mut next_out = 0u64;
        let mut got = 0u64;
        // Many laps with a size that does not divide the capacity.
        for i in 0..(cap as u64) {
            let mut msg = [0u8; 100];
            msg[..8].copy_from_slice(&i.to_le_bytes());
            while !p.offer(&msg) {
                c.poll(usize::MAX, |m| {
                    assert_eq!(m.len(), 100);
                    assert_eq!(u64::from_le_bytes(m[..8].try_into().unwrap()), next_out);
                    next_out += 1;
                    got += 1;
                });
            }
        }
        p.flush();
        c.poll(usize::MAX, |m| {
            assert_eq!(u64::from_le_bytes(m[..8].try_into().unwrap()), next_out);
            next_out += 1;
            got += 1;
        });
        assert_eq!(got, cap as u64);
    }

    #[test]
    fn rings_start_on_a_cache_line_and_round_up() {
        let ring = SpscRing::with_capacity((4 << 20) - 1);
        assert_eq!(ring.capacity(), 4 << 20);
        assert_eq!(ring.base() as usize % 64, 0);
        assert_eq!(SpscRing::with_capacity(1).capacity(), MIN_CAPACITY);
    }

    #[test]
    fn two_threads_in_order() {
        let mut ring = SpscRing::for_payload(24);
        let (mut p, mut c) = ring.split();
        const N: u64 = 200_000;
        std::thread::scope(|s| {
            s.spawn(move || {
                for i in 0..N {
                    let mut msg = [0u8; 24];
                    msg[..8].copy_from_slice(&i.to_le_bytes());
                    while !p.offer(&msg) {
                        std::hint::spin_loop();
                    }
                }
                p.flush();
            });
            let mut next = 0u64;
            while next < N {
                c.poll(64, |m| {
                    assert_eq!(u64::from_le_bytes(m[..8].try_into().unwrap()), next);
                    next += 1;
                });
            }
        });
    }
}
