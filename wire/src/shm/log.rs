//! The delivery log: one per group per host, written by the owning shard, read by every
//! local member through a read-only mapping, each reader with its own cursor. The writer
//! never waits: a reader that falls a ring behind gets [`LogEvent::Lagged`] and resumes at
//! the oldest record still intact. Layout and protocol: `docs/internals.md`, "Delivery log".
//!
//! Orderings, named once:
//! - A record's `position` word is stored last with Release; a reader that loads it with
//!   Acquire and finds its own cursor there sees the whole record (and the *marker* the
//!   writer left at the next record start, see below).
//! - Before writing any byte below `tail_intent`, the writer stores the new `tail_intent`
//!   (Relaxed) and issues `fence(Release)`; a reader copies a record, issues
//!   `fence(Acquire)`, and loads `tail_intent`: if it could have overwritten the record
//!   (`tail_intent > cursor + capacity`) the copy is discarded (seqlock style).
//! - `head` (Release/Acquire) is where a lapped reader resumes.
//!
//! Two refinements of the first version of the spec (see internals.md):
//! - *Next-record marker.* The word where the next record will start holds
//!   `MARK | next_seq` until that record commits, so stale bytes there (zeroes after init,
//!   or an old payload that happens to hold the right number) can never pass for a commit,
//!   and a reader attaching at `tail` learns the seq it should expect.
//! - *Chunked intent.* `tail_intent` advances in steps of `capacity / 8`, so its cache line
//!   changes once per chunk rather than per record, and the reader's validation load is
//!   usually an L1 hit. Readers are declared lapped up to a chunk early, never late.
//!
//! A position whose offset is less than a record header from the ring's end is never a
//! record start: both sides skip to the next lap ("gap"), because no padding header fits.

use super::layout::{
    align_record, check_init, read_ring_header, write_ring_header, LayoutError, LogRecordHeader, DATA_OFFSET,
    KIND_DATA, KIND_PADDING, LOG_HEAD, LOG_MAGIC, LOG_RECORD_HEADER_LEN, LOG_TAIL, LOG_TAIL_INTENT,
    LOG_VERSION,
};
use super::region::Region;
use super::sync::Ordering::{Acquire, Relaxed, Release};
use super::sync::{fence, AtomicU64};
use super::OfferError;

const HDR: usize = LOG_RECORD_HEADER_LEN;
/// Flag of a data record that is a [`LogEvent::Lost`] notice (payload: the count, u64 LE).
const FLAG_LOST: u16 = 1;
/// Tag of a next-record marker (positions stay below 2^63: 292 years at 1 GB/s).
const MARK: u64 = 1 << 63;
/// Attach retries while the writer laps the ring under our feet.
const ATTACH_RETRIES: usize = 1000;

/// Layout functions of the delivery log.
pub struct DeliveryLog;

impl DeliveryLog {
    /// Bytes a region must have for a log of `capacity` data bytes.
    pub const fn required_len(capacity: usize) -> usize {
        DATA_OFFSET + capacity
    }

    /// Largest payload of one record: a record (header + padded payload) is at most half
    /// the ring.
    pub const fn max_payload(capacity: usize) -> usize {
        (capacity / 2).saturating_sub(HDR)
    }

    /// Writes the header, zeroed indices and the first next-record marker of a new log.
    ///
    /// # Safety
    /// `base` satisfies the region contract (module docs of [`crate::shm`]) for `len`
    /// writable bytes, and no other party uses the region yet.
    pub unsafe fn init(base: *mut u8, len: usize, capacity: usize) -> Result<(), LayoutError> {
        check_init(len, capacity)?;
        // SAFETY: caller's contract.
        let region = unsafe { Region::from_raw(base, len)? };
        // SAFETY: writable, len >= DATA_OFFSET + capacity (checked), not shared yet; offset
        // DATA_OFFSET is the first data word.
        unsafe {
            write_ring_header(
                &region,
                LOG_MAGIC,
                LOG_VERSION,
                capacity,
                Self::max_payload(capacity),
            );
            region.atomic_u64(LOG_TAIL_INTENT).store(0, Relaxed);
            region.atomic_u64(LOG_TAIL).store(0, Relaxed);
            region.atomic_u64(LOG_HEAD).store(0, Relaxed);
            region.atomic_u64(DATA_OFFSET).store(MARK, Relaxed);
        }
        Ok(())
    }
}

/// Geometry common to writer and readers.
#[derive(Clone, Copy)]
struct Log {
    region: Region,
    capacity: u64,
    mask: u64,
    max_payload: usize,
    /// Granularity of `tail_intent` (a power of two).
    chunk: u64,
}

impl Log {
    /// # Safety
    /// Region contract for `len` readable bytes.
    unsafe fn attach(base: *mut u8, len: usize) -> Result<Log, LayoutError> {
        // SAFETY: caller's contract.
        let region = unsafe { Region::from_raw(base, len)? };
        // SAFETY: caller's contract.
        let capacity =
            unsafe { read_ring_header(&region, LOG_MAGIC, LOG_VERSION, DeliveryLog::max_payload)? };
        Ok(Log {
            region,
            capacity: capacity as u64,
            mask: capacity as u64 - 1,
            max_payload: DeliveryLog::max_payload(capacity),
            chunk: capacity as u64 / 8,
        })
    }

    #[inline(always)]
    fn tail_intent(&self) -> &AtomicU64 {
        // SAFETY: 8-aligned offset inside the header page of a validated region.
        unsafe { self.region.atomic_u64(LOG_TAIL_INTENT) }
    }

    #[inline(always)]
    fn tail(&self) -> &AtomicU64 {
        // SAFETY: as above.
        unsafe { self.region.atomic_u64(LOG_TAIL) }
    }

    #[inline(always)]
    fn head(&self) -> &AtomicU64 {
        // SAFETY: as above.
        unsafe { self.region.atomic_u64(LOG_HEAD) }
    }

    /// Offset in the region of absolute position `pos`.
    #[inline(always)]
    fn offset(&self, pos: u64) -> usize {
        DATA_OFFSET + (pos & self.mask) as usize
    }

    /// The 8-byte word at record boundary `pos` (a record's `position`, or a marker).
    ///
    /// # Safety
    /// `pos` is 8-aligned.
    #[inline(always)]
    unsafe fn word(&self, pos: u64) -> &AtomicU64 {
        // SAFETY: 8-aligned offset (precondition) strictly inside the data area (masked).
        unsafe { self.region.atomic_u64(self.offset(pos)) }
    }

    /// Bytes from `pos` to the end of the ring.
    #[inline(always)]
    fn room_to_end(&self, pos: u64) -> u64 {
        self.capacity - (pos & self.mask)
    }

    /// Skips the gap at a ring's end where no record header fits.
    #[inline(always)]
    fn normalize(&self, pos: u64) -> u64 {
        let to_end = self.room_to_end(pos);
        if to_end < HDR as u64 {
            pos.wrapping_add(to_end)
        } else {
            pos
        }
    }

    /// Whether the writer may have overwritten (or be overwriting) the record at `cursor`.
    /// After a copy, call it behind `fence(Acquire)`.
    #[inline(always)]
    fn lapped(&self, cursor: u64) -> bool {
        self.tail_intent().load(Relaxed) > cursor.saturating_add(self.capacity)
    }

    /// Reads the header of the record at `pos` (`position` field taken as given).
    ///
    /// # Safety
    /// `pos` is 8-aligned and normalized (a header fits before the ring's end).
    #[inline(always)]
    unsafe fn read_header(&self, pos: u64) -> LogRecordHeader {
        let mut bytes = [0u8; HDR];
        // SAFETY: normalized, so off + 32 <= DATA_OFFSET + capacity; 8-aligned.
        unsafe { self.region.read(self.offset(pos) + 8, &mut bytes[8..]) };
        let mut header: LogRecordHeader = bytemuck::pod_read_unaligned(&bytes);
        header.position = pos;
        header
    }

    /// Finds the seq of the next data record at `cursor` from its marker (or, if it has
    /// been committed meanwhile, from its header). `None` if the slot holds neither.
    ///
    /// # Safety
    /// `cursor` is 8-aligned and normalized.
    unsafe fn seq_at(&self, cursor: u64) -> Option<u64> {
        // SAFETY: precondition.
        let word = unsafe { self.word(cursor) }.load(Acquire);
        if word == cursor {
            // SAFETY: precondition.
            Some(unsafe { self.read_header(cursor) }.seq)
        } else if word & MARK != 0 {
            Some(word & !MARK)
        } else {
            None
        }
    }
}

/// The shard's end of a delivery log: the single writer.
pub struct LogWriter {
    log: Log,
    /// End of the last complete record.
    tail: u64,
    /// Last `tail_intent` stored.
    intent: u64,
    /// Last `head` stored: start of the oldest record still intact.
    head: u64,
    next_seq: u64,
}

// SAFETY: the writer owns the log's write side; the region is valid for its whole life.
unsafe impl Send for LogWriter {}

impl LogWriter {
    /// Attaches the writer to an initialised log (usually fresh; a re-attach resumes at
    /// `tail` with the seq found in the next-record marker).
    ///
    /// # Safety
    /// `base` satisfies the region contract for `len` writable bytes, and at most one
    /// writer is attached at a time.
    pub unsafe fn attach(base: *mut u8, len: usize) -> Result<Self, LayoutError> {
        // SAFETY: caller's contract.
        let log = unsafe { Log::attach(base, len)? };
        let tail = log.tail().load(Acquire);
        let head = log.head().load(Acquire);
        let intent = log.tail_intent().load(Acquire);
        if tail & 7 != 0 || head & 7 != 0 || head > tail || tail - head > log.capacity {
            return Err(LayoutError::BadIndex {
                what: "log head/tail misaligned or inconsistent",
            });
        }
        let tail = log.normalize(tail);
        // SAFETY: tail is 8-aligned and normalized.
        let word = unsafe { log.word(tail) }.load(Acquire);
        if word & MARK == 0 {
            return Err(LayoutError::BadIndex {
                what: "no next-record marker at the log tail",
            });
        }
        Ok(LogWriter {
            log,
            tail,
            intent,
            head: log.normalize(head),
            next_seq: word & !MARK,
        })
    }

    /// Largest payload [`append`](Self::append) accepts.
    #[inline]
    pub fn max_payload(&self) -> usize {
        self.log.max_payload
    }

    /// Log capacity in bytes.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.log.capacity as usize
    }

    /// End position of the last complete record.
    #[inline]
    pub fn tail(&self) -> u64 {
        self.tail
    }

    /// Start position of the oldest record still intact.
    #[inline]
    pub fn head(&self) -> u64 {
        self.head
    }

    /// Seq the next data record will get.
    #[inline]
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Appends one data record and returns its seq. Never waits for readers.
    #[inline]
    pub fn append(&mut self, sender: u64, payload: &[u8]) -> Result<u64, OfferError> {
        if payload.len() > self.log.max_payload {
            return Err(OfferError::TooLarge {
                len: payload.len(),
                max: self.log.max_payload,
            });
        }
        Ok(self.append_data(0, sender, payload))
    }

    /// Appends a notice that `count` messages of `sender` can never be delivered (the
    /// cluster could not repair them). Readers see it as [`LogEvent::Lost`]; it takes a
    /// seq like a message, so a reader that lags past it counts it as missed.
    pub fn append_lost(&mut self, sender: u64, count: u64) -> u64 {
        self.append_data(FLAG_LOST, sender, &count.to_le_bytes())
    }

    /// Appends a data record (`payload` within `max_payload`), padding to the ring's end
    /// first when it does not fit before it; returns its seq.
    #[inline(always)]
    fn append_data(&mut self, flags: u16, sender: u64, payload: &[u8]) -> u64 {
        let size = (HDR + align_record(payload.len())) as u64;
        let mut start = self.log.normalize(self.tail);
        let to_end = self.log.room_to_end(start);
        if size > to_end {
            // Pad to the ring's end (to_end >= 32: normalized); padding takes no seq.
            self.write_record(start, to_end, KIND_PADDING, 0, self.next_seq, 0, &[]);
            start += to_end;
        }
        let seq = self.next_seq;
        self.next_seq = seq + 1;
        self.write_record(start, size, KIND_DATA, flags, seq, sender, payload);
        self.tail = start + size;
        // Release: new readers attaching at this tail see the records and the marker.
        self.log.tail().store(self.tail, Release);
        seq
    }

    /// Steps 2–4 of the writer protocol for one record of `size` bytes at `start`
    /// (normalized). `seq` is the data seq, or for padding the seq of the next data record.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn write_record(
        &mut self,
        start: u64,
        size: u64,
        kind: u16,
        flags: u16,
        seq: u64,
        sender: u64,
        payload: &[u8],
    ) {
        let next = self.log.normalize(start + size);
        self.reserve(start, next + 8);
        let log = self.log;
        let off = log.offset(start);
        let len = if kind == KIND_PADDING {
            size as usize - HDR
        } else {
            payload.len()
        };
        let header = LogRecordHeader {
            position: start,
            seq,
            len: len as u32,
            kind,
            flags,
            sender,
        };
        // SAFETY: `next` is 8-aligned and normalized; `start..start + size` and the marker
        // word are covered by tail_intent and past head (reserve), so no reader trusts what
        // they held; the header and payload fit before the ring's end (size <= to_end).
        unsafe {
            log.word(next).store(MARK | self.next_seq, Relaxed);
            log.region.write(off + 8, &bytemuck::bytes_of(&header)[8..]);
            if !payload.is_empty() {
                log.region.write(off + HDR, payload);
            }
            // Release: the commit flag; the header, payload and marker happen-before it.
            log.word(start).store(start, Release);
        }
    }

    /// Step 2–3: make sure `tail_intent >= need` (announced before any byte below it is
    /// written) and move `head` past every record that may be overwritten.
    #[inline(always)]
    fn reserve(&mut self, start: u64, need: u64) {
        if need > self.intent {
            self.grow_intent(start, need);
        }
    }

    #[inline(never)]
    fn grow_intent(&mut self, start: u64, need: u64) {
        let log = self.log;
        let intent = (need + log.chunk - 1) & !(log.chunk - 1);
        log.tail_intent().store(intent, Relaxed);
        // Release fence: a reader that sees any byte we write from now on also sees `intent`.
        fence(Release);
        let floor = intent.saturating_sub(log.capacity);
        let mut head = self.head;
        while head < floor {
            // SAFETY: head is a normalized, 8-aligned boundary of a record we committed.
            let old = unsafe { log.read_header(head) };
            // SAFETY: as above.
            let position = unsafe { log.word(head) }.load(Relaxed);
            let to_end = log.room_to_end(head);
            let size = match old.kind {
                KIND_PADDING => to_end,
                _ => (HDR + align_record(old.len as usize)) as u64,
            };
            if position != head || size > to_end || head + size > start {
                // Cannot happen (readers map the log read-only); if the memory was damaged
                // anyway, give up everything before the record being written.
                debug_assert!(false, "log record at {head} damaged");
                head = start;
                break;
            }
            head = log.normalize(head + size);
        }
        if head != self.head {
            self.head = head;
            log.head().store(head, Release);
        }
        self.intent = intent;
    }
}

/// What a [`LogReader`] delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogEvent<'a> {
    /// A data record, copied out and validated intact.
    Message {
        seq: u64,
        sender: u64,
        payload: &'a [u8],
    },
    /// The writer lapped this reader: `missed` messages are gone; reading resumes at the
    /// oldest record still intact.
    Lagged { missed: u64 },
    /// `count` messages of `sender` were lost in the cluster (not repairable within the
    /// retention bound): every member learns of them once, instead of a silent gap.
    Lost { sender: u64, count: u64 },
}

/// A corrupt delivery log (a faulty or hostile writer). The reader must not be used again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("log record at position {position} has a payload of {len} bytes, over the limit of {max}")]
    TooLarge { position: u64, len: u32, max: usize },
    #[error("log record at position {position} of {size} bytes straddles the end of the ring")]
    Straddles { position: u64, size: u64 },
    #[error(
        "log padding at position {position} has length {len}, but {expected} bytes remain to the ring's end"
    )]
    BadPadding { position: u64, len: u32, expected: u64 },
    #[error("log record at position {position} has unknown kind {kind}")]
    BadKind { position: u64, kind: u16 },
    #[error("log record at position {position} has seq {found}, expected {expected}")]
    SeqMismatch {
        position: u64,
        expected: u64,
        found: u64,
    },
    #[error("log head {head} is misaligned or beyond tail_intent {intent}")]
    BadHead { head: u64, intent: u64 },
}

/// A member's cursor on a delivery log (over a read-only mapping).
pub struct LogReader {
    log: Log,
    /// Next record boundary to read.
    cursor: u64,
    /// Seq of the next data record.
    expected_seq: u64,
    /// Set when we jumped to `head`: the next data record's seq tells how many were missed.
    lagged: bool,
    failed: Option<ReadError>,
    /// Private copy of one payload (`max_payload` bytes, allocated at attach).
    scratch: Box<[u8]>,
}

// SAFETY: the reader only reads the shared region (valid for its life) and owns its state.
unsafe impl Send for LogReader {}

/// What a lap did to the cursor.
enum Jump {
    /// Moved to `head`: go on reading.
    Moved,
    /// `head` has not moved past us yet (the writer is between its steps): stop for now.
    Wait,
}

impl LogReader {
    /// Attaches a reader at the log's current tail: it sees messages appended from now on.
    ///
    /// # Safety
    /// `base` satisfies the region contract for `len` readable bytes.
    pub unsafe fn attach(base: *const u8, len: usize) -> Result<Self, LayoutError> {
        // SAFETY: caller's contract; the reader never writes through the pointer.
        let log = unsafe { Log::attach(base as *mut u8, len)? };
        for _ in 0..ATTACH_RETRIES {
            let tail = log.tail().load(Acquire);
            if tail & 7 != 0 {
                return Err(LayoutError::BadIndex {
                    what: "log tail not 8-aligned",
                });
            }
            let cursor = log.normalize(tail);
            // SAFETY: cursor is 8-aligned and normalized.
            let seq = unsafe { log.seq_at(cursor) };
            fence(Acquire);
            if let Some(seq) = seq {
                if !log.lapped(cursor) {
                    return Ok(LogReader {
                        log,
                        cursor,
                        expected_seq: seq,
                        lagged: false,
                        failed: None,
                        scratch: vec![0; log.max_payload].into_boxed_slice(),
                    });
                }
            }
        }
        Err(LayoutError::BadIndex {
            what: "no stable next-record marker at the log tail",
        })
    }

    /// Largest payload a record can carry.
    #[inline]
    pub fn max_payload(&self) -> usize {
        self.log.max_payload
    }

    /// Position of the next record this reader will read.
    #[inline]
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Whether a poll would deliver something (a record at the cursor, or a lap to report).
    #[inline]
    pub fn has_data(&self) -> bool {
        let cursor = self.log.normalize(self.cursor);
        // SAFETY: the cursor is always 8-aligned (attach and jumps check it, records are
        // multiples of 8); normalized above.
        unsafe { self.log.word(cursor) }.load(Acquire) == cursor || self.log.lapped(cursor)
    }

    /// Delivers up to `limit` events. Each payload is copied into private memory and
    /// validated against `tail_intent` before `f` sees it, so `f` never sees torn bytes.
    /// A lap is reported as [`LogEvent::Lagged`] just before the first message after it.
    #[inline]
    pub fn poll(&mut self, limit: usize, mut f: impl FnMut(LogEvent<'_>)) -> Result<usize, ReadError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        let log = self.log;
        let mut events = 0;
        // Bounds the work of one call even if a hostile writer keeps lapping us.
        let mut steps = limit.saturating_mul(4).saturating_add(8);
        while events < limit && steps > 0 {
            steps -= 1;
            let cursor = log.normalize(self.cursor);
            self.cursor = cursor;
            // SAFETY: 8-aligned, normalized.
            let position = unsafe { log.word(cursor) }.load(Acquire);
            if position != cursor {
                if log.lapped(cursor) {
                    match self.jump_to_head(cursor)? {
                        Jump::Moved => continue,
                        Jump::Wait => break,
                    }
                }
                break;
            }
            // SAFETY: 8-aligned, normalized.
            let header = unsafe { log.read_header(cursor) };
            let to_end = log.room_to_end(cursor);
            let len = header.len as usize;
            let (size, problem) = match header.kind {
                KIND_DATA => {
                    let size = (HDR + align_record(len.min(log.max_payload + 1))) as u64;
                    if len > log.max_payload {
                        let max = log.max_payload;
                        (
                            size,
                            Some(ReadError::TooLarge {
                                position: cursor,
                                len: header.len,
                                max,
                            }),
                        )
                    } else if size > to_end {
                        (
                            size,
                            Some(ReadError::Straddles {
                                position: cursor,
                                size,
                            }),
                        )
                    } else {
                        (size, None)
                    }
                }
                KIND_PADDING if HDR as u64 + header.len as u64 == to_end => (to_end, None),
                KIND_PADDING => (
                    to_end,
                    Some(ReadError::BadPadding {
                        position: cursor,
                        len: header.len,
                        expected: to_end - HDR as u64,
                    }),
                ),
                kind => (
                    0,
                    Some(ReadError::BadKind {
                        position: cursor,
                        kind,
                    }),
                ),
            };
            if problem.is_none() && header.kind == KIND_DATA {
                // SAFETY: len <= max_payload == scratch.len(); the payload lies before the
                // ring's end (size <= to_end). It may be torn: validated below.
                unsafe {
                    log.region
                        .read(log.offset(cursor) + HDR, &mut self.scratch[..len])
                };
            }
            // Acquire fence: if we read any byte of a newer lap, we see its tail_intent.
            fence(Acquire);
            if log.lapped(cursor) {
                match self.jump_to_head(cursor)? {
                    Jump::Moved => continue,
                    Jump::Wait => break,
                }
            }
            if let Some(error) = problem {
                return Err(self.fail(error));
            }
            if header.kind == KIND_PADDING {
                self.cursor = cursor + size;
                continue;
            }
            // An intact data record.
            if self.lagged {
                if header.seq < self.expected_seq {
                    let (expected, found) = (self.expected_seq, header.seq);
                    return Err(self.fail(ReadError::SeqMismatch {
                        position: cursor,
                        expected,
                        found,
                    }));
                }
                let missed = header.seq - self.expected_seq;
                self.lagged = false;
                self.expected_seq = header.seq;
                if missed > 0 {
                    f(LogEvent::Lagged { missed });
                    events += 1;
                    if events >= limit {
                        // The record stays at the cursor; the next poll re-reads it.
                        break;
                    }
                }
            } else if header.seq != self.expected_seq {
                let (expected, found) = (self.expected_seq, header.seq);
                return Err(self.fail(ReadError::SeqMismatch {
                    position: cursor,
                    expected,
                    found,
                }));
            }
            if header.flags & FLAG_LOST != 0 && len == 8 {
                let mut count = [0u8; 8];
                count.copy_from_slice(&self.scratch[..8]);
                f(LogEvent::Lost {
                    sender: header.sender,
                    count: u64::from_le_bytes(count),
                });
            } else {
                f(LogEvent::Message {
                    seq: header.seq,
                    sender: header.sender,
                    payload: &self.scratch[..len],
                });
            }
            events += 1;
            self.expected_seq = header.seq.wrapping_add(1);
            self.cursor = cursor + size;
        }
        Ok(events)
    }

    /// Lapped at `cursor`: resume at `head`.
    #[cold]
    fn jump_to_head(&mut self, cursor: u64) -> Result<Jump, ReadError> {
        // Acquire: pairs with the writer's Release store of head.
        let head = self.log.head().load(Acquire);
        let intent = self.log.tail_intent().load(Relaxed);
        if head & 7 != 0 || head > intent {
            return Err(self.fail(ReadError::BadHead { head, intent }));
        }
        let head = self.log.normalize(head);
        if head <= cursor {
            return Ok(Jump::Wait);
        }
        self.cursor = head;
        self.lagged = true;
        Ok(Jump::Moved)
    }

    #[cold]
    fn fail(&mut self, error: ReadError) -> ReadError {
        self.failed = Some(error);
        error
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
