//! The publish ring: one per client per shard, single producer (the client) and single
//! consumer (the shard). The client claims space, writes a payload in place and commits;
//! the shard polls frames in place. Layout and protocol: `docs/internals.md`, "Publish ring".
//!
//! Orderings, named once:
//! - `tail` (producer block): the producer writes frame bytes, then `tail.store(Release)`;
//!   the consumer `tail.load(Acquire)` and then reads the frames below it.
//! - `head` (consumer block): the consumer reads frames, then `head.store(Release)`; the
//!   producer `head.load(Acquire)` before it overwrites the space below `head + capacity`.
//!
//! Latency: the producer caches `head` and reloads it only when the ring looks full; the
//! consumer caches `tail`, and before reloading it prefetches the next frame's line so the
//! two cache misses of a new frame overlap (measured: publish -> shard -> delivery log ->
//! reader p50 went from 1.47x to about 1.05x of a bare cache-line round trip).
//!
//! Everything the consumer reads is untrusted (the client maps the ring writable): indices
//! are validated on every load, each frame header is copied once into a local and checked,
//! and the consumer never reads its own `head` back from shared memory.

use super::layout::{
    align_record, check_init, read_ring_header, write_ring_header, LayoutError, PublishFrameHeader,
    DATA_OFFSET, PAD_GROUP, PUBLISH_FRAME_HEADER_LEN, PUBLISH_MAGIC, PUBLISH_VERSION, PUB_HEAD, PUB_TAIL,
};
use super::region::Region;
use super::sync::Ordering::{Acquire, Relaxed, Release};
use super::OfferError;

const HDR: usize = PUBLISH_FRAME_HEADER_LEN;

/// Layout functions of the publish ring.
pub struct PublishRing;

impl PublishRing {
    /// Bytes a region must have for a ring of `capacity` data bytes.
    pub const fn required_len(capacity: usize) -> usize {
        DATA_OFFSET + capacity
    }

    /// Largest payload of one frame: half the ring less a frame header, so that any frame
    /// fits in an empty ring whatever the wrap point (padding plus frame <= capacity).
    pub const fn max_payload(capacity: usize) -> usize {
        (capacity / 2).saturating_sub(HDR)
    }

    /// Writes the header and zeroed indices of a new ring.
    ///
    /// # Safety
    /// `base` satisfies the region contract (module docs of [`crate::shm`]) for `len`
    /// writable bytes, the region is zeroed, and no other party uses it yet.
    pub unsafe fn init(base: *mut u8, len: usize, capacity: usize) -> Result<(), LayoutError> {
        check_init(len, capacity)?;
        // SAFETY: caller's contract.
        let region = unsafe { Region::from_raw(base, len)? };
        // SAFETY: writable, len >= DATA_OFFSET + capacity (checked), not shared yet.
        unsafe {
            write_ring_header(
                &region,
                PUBLISH_MAGIC,
                PUBLISH_VERSION,
                capacity,
                Self::max_payload(capacity),
            );
            region.atomic_u64(PUB_TAIL).store(0, Relaxed);
            region.atomic_u64(PUB_HEAD).store(0, Relaxed);
        }
        Ok(())
    }
}

/// Geometry and indices common to both ends.
#[derive(Clone, Copy)]
struct Ring {
    region: Region,
    capacity: usize,
    mask: u64,
    max_payload: usize,
}

impl Ring {
    /// # Safety
    /// Region contract for `len` bytes.
    unsafe fn attach(base: *mut u8, len: usize) -> Result<(Ring, u64, u64), LayoutError> {
        // SAFETY: caller's contract.
        let region = unsafe { Region::from_raw(base, len)? };
        // SAFETY: caller's contract (readable).
        let capacity =
            unsafe { read_ring_header(&region, PUBLISH_MAGIC, PUBLISH_VERSION, PublishRing::max_payload)? };
        let ring = Ring {
            region,
            capacity,
            mask: capacity as u64 - 1,
            max_payload: PublishRing::max_payload(capacity),
        };
        // Acquire: pairs with the peer's Release stores, so the frames below `tail` (and the
        // free space below `head + capacity`) are visible/released to us.
        let tail = ring.tail().load(Acquire);
        let head = ring.head().load(Acquire);
        if tail & 7 != 0 || head & 7 != 0 {
            return Err(LayoutError::BadIndex {
                what: "publish head or tail not 8-aligned",
            });
        }
        if tail < head || tail - head > capacity as u64 {
            return Err(LayoutError::BadIndex {
                what: "publish tail not within a ring of head",
            });
        }
        Ok((ring, head, tail))
    }

    #[inline(always)]
    fn tail(&self) -> &super::sync::AtomicU64 {
        // SAFETY: PUB_TAIL is 8-aligned inside the header page, which every validated region has.
        unsafe { self.region.atomic_u64(PUB_TAIL) }
    }

    #[inline(always)]
    fn head(&self) -> &super::sync::AtomicU64 {
        // SAFETY: PUB_HEAD is 8-aligned inside the header page.
        unsafe { self.region.atomic_u64(PUB_HEAD) }
    }

    /// Offset in the region of absolute position `pos`.
    #[inline(always)]
    fn offset(&self, pos: u64) -> usize {
        DATA_OFFSET + (pos & self.mask) as usize
    }
}

/// The client's end of a publish ring. `Send`, not `Sync`: one thread produces.
pub struct PublishProducer {
    ring: Ring,
    /// Next write position; only this producer writes `tail`, so the local copy is exact.
    tail: u64,
    /// Last `head` seen; reloaded only when the ring looks full.
    cached_head: u64,
    /// Loom builds stage claimed payloads here (a `LoomRegion` cannot lend `&mut [u8]`).
    #[cfg(loom)]
    staging: Vec<u8>,
}

// SAFETY: the producer owns its end of the ring; the region pointer is valid for its whole
// life (attach contract) and is only touched through atomics and the producer's own bytes.
unsafe impl Send for PublishProducer {}

impl PublishProducer {
    /// Attaches the producer end to an initialised ring.
    ///
    /// # Safety
    /// `base` satisfies the region contract for `len` writable bytes, and at most one
    /// producer is attached to the ring at a time.
    pub unsafe fn attach(base: *mut u8, len: usize) -> Result<Self, LayoutError> {
        // SAFETY: caller's contract.
        let (ring, head, tail) = unsafe { Ring::attach(base, len)? };
        Ok(PublishProducer {
            ring,
            tail,
            cached_head: head,
            #[cfg(loom)]
            staging: vec![0; ring.max_payload],
        })
    }

    /// Largest payload [`try_claim`](Self::try_claim) accepts.
    #[inline]
    pub fn max_payload(&self) -> usize {
        self.ring.max_payload
    }

    /// Ring capacity in bytes.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.ring.capacity
    }

    /// Claims room for a frame of `len` payload bytes for `group` (which must not be
    /// [`PAD_GROUP`]). Write the payload through [`PublishClaim::buf`], then
    /// [`commit`](PublishClaim::commit); dropping the claim publishes nothing.
    #[inline]
    pub fn try_claim(&mut self, group: u32, len: usize) -> Result<PublishClaim<'_>, OfferError> {
        debug_assert!(group != PAD_GROUP, "PAD_GROUP is reserved for padding frames");
        if len > self.ring.max_payload {
            return Err(OfferError::TooLarge {
                len,
                max: self.ring.max_payload,
            });
        }
        let frame = (HDR + align_record(len)) as u64;
        let capacity = self.ring.capacity as u64;
        let to_end = capacity - (self.tail & self.ring.mask);
        // A frame never straddles the ring's end: pad to the end and start at offset 0.
        let (padding, needed) = if frame > to_end {
            (to_end, to_end + frame)
        } else {
            (0, frame)
        };
        if needed > capacity - (self.tail - self.cached_head) {
            // Acquire: the consumer is done reading everything below `head`.
            let head = self.ring.head().load(Acquire);
            // A consumer that stores a head outside [cached_head, tail] is broken; ignore it
            // (we only trust monotonic progress within what we have published).
            if head >= self.cached_head && head <= self.tail {
                self.cached_head = head;
            }
            if needed > capacity - (self.tail - self.cached_head) {
                return Err(OfferError::BackPressured);
            }
        }
        Ok(PublishClaim {
            frame_pos: self.tail + padding,
            padding,
            new_tail: self.tail + needed,
            group,
            len,
            producer: self,
        })
    }

    /// Claims, copies `payload` and commits: one frame for `group`.
    #[inline]
    pub fn offer(&mut self, group: u32, payload: &[u8]) -> Result<(), OfferError> {
        let mut claim = self.try_claim(group, payload.len())?;
        claim.buf().copy_from_slice(payload);
        claim.commit();
        Ok(())
    }

    /// Whether the consumer has released everything published (reloads `head`).
    pub fn is_drained(&mut self) -> bool {
        let head = self.ring.head().load(Acquire);
        if head >= self.cached_head && head <= self.tail {
            self.cached_head = head;
        }
        self.cached_head == self.tail
    }
}

/// Space claimed in a publish ring; commit it to publish the frame.
pub struct PublishClaim<'a> {
    producer: &'a mut PublishProducer,
    /// Absolute position of the frame header.
    frame_pos: u64,
    /// Bytes of padding before the frame (0 if it does not wrap).
    padding: u64,
    new_tail: u64,
    group: u32,
    len: usize,
}

impl PublishClaim<'_> {
    /// The claimed payload bytes, in place in the ring. Their previous contents are
    /// unspecified: write all of them.
    #[inline]
    pub fn buf(&mut self) -> &mut [u8] {
        #[cfg(not(loom))]
        {
            let off = self.producer.ring.offset(self.frame_pos) + HDR;
            // SAFETY: [frame_pos, new_tail) lies in the free space between our tail and
            // cached_head + capacity and does not wrap (try_claim), so it is inside the data
            // area; the consumer does not read it before we store `tail`, and the claim holds
            // `&mut` on the producer, so this is the only borrow of these bytes.
            unsafe { self.producer.ring.region.slice_mut(off, self.len) }
        }
        #[cfg(loom)]
        {
            &mut self.producer.staging[..self.len]
        }
    }

    /// Payload length claimed.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the claim is for an empty payload.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes the frame header (and padding frame, if it wraps) and publishes the frame.
    #[inline]
    pub fn commit(self) {
        let ring = self.producer.ring;
        #[cfg(loom)]
        // SAFETY: as in `buf`: the payload bytes are in claimed free space.
        unsafe {
            ring.region.write(
                ring.offset(self.frame_pos) + HDR,
                &self.producer.staging[..self.len],
            );
        }
        if self.padding != 0 {
            let pad = PublishFrameHeader {
                len: (self.padding - HDR as u64) as u32,
                group: PAD_GROUP,
            };
            // SAFETY: the padding header is at the old tail, 8-aligned, inside claimed space.
            unsafe {
                ring.region
                    .write(ring.offset(self.producer.tail), bytemuck::bytes_of(&pad))
            };
        }
        let header = PublishFrameHeader {
            len: self.len as u32,
            group: self.group,
        };
        // SAFETY: the frame header is 8-aligned at the start of the claimed frame.
        unsafe {
            ring.region
                .write(ring.offset(self.frame_pos), bytemuck::bytes_of(&header))
        };
        // Release: the frame bytes above happen-before the consumer's Acquire load of tail.
        ring.tail().store(self.new_tail, Release);
        self.producer.tail = self.new_tail;
    }
}

/// A malformed publish ring (written by a faulty or hostile client). The session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("publish tail {tail} is inconsistent with head {head} (misaligned, behind head, or more than a ring ahead)")]
    BadTail { head: u64, tail: u64 },
    #[error("frame at position {position} has a payload of {len} bytes, over the limit of {max}")]
    TooLarge { position: u64, len: u32, max: usize },
    #[error("frame at position {position} of {size} bytes runs past the committed tail {tail}")]
    PastTail { position: u64, size: u64, tail: u64 },
    #[error("frame at position {position} of {size} bytes straddles the end of the ring")]
    Straddles { position: u64, size: u64 },
    #[error(
        "padding at position {position} has length {len}, but {expected} bytes remain to the ring's end"
    )]
    BadPadding { position: u64, len: u32, expected: u64 },
}

/// The shard's end of a publish ring.
pub struct PublishConsumer {
    ring: Ring,
    /// Next read position (authoritative: never read back from shared memory).
    head: u64,
    /// Last validated `tail`.
    cached_tail: u64,
    /// Set by the first malformed frame; every later poll returns it.
    failed: Option<FrameError>,
    /// Loom builds copy payloads out (a `LoomRegion` cannot lend `&[u8]`).
    #[cfg(loom)]
    staging: Vec<u8>,
}

// SAFETY: as for PublishProducer: one owner of the consumer end, region valid for its life.
unsafe impl Send for PublishConsumer {}

impl PublishConsumer {
    /// Attaches the consumer end to an initialised ring.
    ///
    /// # Safety
    /// `base` satisfies the region contract for `len` writable bytes, and at most one
    /// consumer is attached to the ring at a time.
    pub unsafe fn attach(base: *mut u8, len: usize) -> Result<Self, LayoutError> {
        // SAFETY: caller's contract.
        let (ring, head, tail) = unsafe { Ring::attach(base, len)? };
        Ok(PublishConsumer {
            ring,
            head,
            cached_tail: tail,
            failed: None,
            #[cfg(loom)]
            staging: vec![0; ring.max_payload],
        })
    }

    /// Largest payload a valid frame can carry.
    #[inline]
    pub fn max_payload(&self) -> usize {
        self.ring.max_payload
    }

    /// Whether frames are waiting: one Acquire load of `tail` compared with the local head.
    #[inline]
    pub fn has_pending(&self) -> bool {
        self.cached_tail != self.head || self.ring.tail().load(Acquire) != self.head
    }

    /// Reads up to `limit` frames, calling `f(group, payload)` for each, then releases
    /// their space. `payload` is borrowed in place: the client can still scribble on it
    /// while `f` runs, so treat it as untrusted bytes (copy before parsing if it matters).
    ///
    /// A malformed ring returns a [`FrameError`]; the session must end (later polls return
    /// the same error). Frames before the bad one were delivered and released.
    #[inline]
    pub fn poll(&mut self, limit: usize, mut f: impl FnMut(u32, &[u8])) -> Result<usize, FrameError> {
        self.poll_while(limit, |group, payload| {
            f(group, payload);
            true
        })
    }

    /// Like [`poll`](Self::poll), but `f` may refuse a frame (back pressure downstream):
    /// when it returns `false` the frame stays in the ring, unreleased, and the poll stops;
    /// the next poll offers it again. Returns the frames taken.
    #[inline]
    pub fn poll_while(
        &mut self,
        limit: usize,
        mut f: impl FnMut(u32, &[u8]) -> bool,
    ) -> Result<usize, FrameError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        let start = self.head;
        let result = self.read_frames(limit, &mut f);
        if let Err(error) = result {
            self.failed = Some(error);
        }
        if self.head != start {
            // Release: our reads of the frames below head are done before the producer
            // reuses their space.
            self.ring.head().store(self.head, Release);
        }
        result
    }

    /// Loads and validates `tail`; `Ok(false)` if nothing new.
    #[inline(always)]
    fn refresh_tail(&mut self) -> Result<bool, FrameError> {
        // Acquire: the frames below the new tail are visible.
        let tail = self.ring.tail().load(Acquire);
        if tail == self.cached_tail {
            return Ok(false);
        }
        if tail & 7 != 0 || tail < self.head || tail - self.head > self.ring.capacity as u64 {
            return Err(FrameError::BadTail {
                head: self.head,
                tail,
            });
        }
        self.cached_tail = tail;
        Ok(true)
    }

    #[inline(always)]
    fn read_frames(
        &mut self,
        limit: usize,
        f: &mut impl FnMut(u32, &[u8]) -> bool,
    ) -> Result<usize, FrameError> {
        let ring = self.ring;
        let capacity = ring.capacity as u64;
        let mut delivered = 0;
        let mut refreshed = false;
        while delivered < limit {
            if self.head == self.cached_tail {
                // Caught up with the tail we know: load it (once per poll). Prefetching
                // the next frame's line first lets both cache misses overlap.
                ring.region.prefetch(ring.offset(self.head));
                if refreshed || !self.refresh_tail()? {
                    break;
                }
                refreshed = true;
            }
            let position = self.head;
            let off = ring.offset(position);
            let mut bytes = [0u8; HDR];
            // SAFETY: off is 8-aligned (head is validated 8-aligned) and the 8 bytes fit in
            // the data area because every offset is <= capacity - 8.
            unsafe { ring.region.read(off, &mut bytes) };
            let header: PublishFrameHeader = bytemuck::pod_read_unaligned(&bytes);
            let available = self.cached_tail - position;
            let to_end = capacity - (position & ring.mask);
            if header.group == PAD_GROUP {
                let size = HDR as u64 + header.len as u64;
                if size != to_end {
                    return Err(FrameError::BadPadding {
                        position,
                        len: header.len,
                        expected: to_end - HDR as u64,
                    });
                }
                if size > available {
                    return Err(FrameError::PastTail {
                        position,
                        size,
                        tail: self.cached_tail,
                    });
                }
                self.head = position + size;
                continue;
            }
            let len = header.len as usize;
            if len > ring.max_payload {
                return Err(FrameError::TooLarge {
                    position,
                    len: header.len,
                    max: ring.max_payload,
                });
            }
            let size = (HDR + align_record(len)) as u64;
            if size > to_end {
                return Err(FrameError::Straddles { position, size });
            }
            if size > available {
                return Err(FrameError::PastTail {
                    position,
                    size,
                    tail: self.cached_tail,
                });
            }
            #[cfg(not(loom))]
            {
                // SAFETY: [off + 8, off + 8 + len) is inside the data area (size <= to_end)
                // and below the validated tail; this process never writes the publish data
                // area from the consumer side, and the borrow ends before head is released.
                let payload = unsafe { ring.region.slice(off + HDR, len) };
                if !f(header.group, payload) {
                    break;
                }
            }
            #[cfg(loom)]
            {
                // SAFETY: as above; copied out instead of borrowed.
                unsafe { ring.region.read(off + HDR, &mut self.staging[..len]) };
                if !f(header.group, &self.staging[..len]) {
                    break;
                }
            }
            self.head = position + size;
            delivered += 1;
        }
        Ok(delivered)
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
