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
/// Flag of a data record that is a [`LogEvent::View`] of an ordered group (payload:
/// [`ViewRecord`]'s encoding).
const FLAG_VIEW: u16 = 2;
/// Flag of a data record that is a [`LogEvent::Installed`] snapshot of an ordered group
/// (payload: the list position, u64 LE, then the snapshot's bytes).
const FLAG_INSTALLED: u16 = 4;
/// Flag of a data record that is a [`LogEvent::SnapshotRequest`] (payload: the position).
const FLAG_SNAPSHOT_REQUEST: u16 = 8;
/// Fixed part of a view record: id, then the member, joined and left counts (u32 each).
const VIEW_FIXED: usize = 8 + 3 * 4;
/// A CPG confchg record (`LogWriter::append_confchg`): the ring id, then four counts.
const FLAG_CONFCHG: u16 = 16;
const CONFCHG_FIXED: usize = 8 + 4 * 4;
/// Bytes of one [`CpgEntry`] in a confchg record.
const CPG_ENTRY: usize = 16;
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
    /// Where `head` goes when `tail_intent` passes a chunk: `firsts[k % FIRST_SLOTS]` is
    /// `(k, s)`, `s` the first record start at or after `k * chunk`, for the boundaries
    /// passed since this writer attached. Moving `head` by it reads none of the records
    /// given up: walking them cost a dependent load from a cold line per record (8% of a
    /// shard's time at 3 M msg/s of 64 bytes).
    firsts: [(u64, u64); FIRST_SLOTS],
    /// Start of the last record written since this writer attached.
    last_start: Option<u64>,
    /// Times `head` was moved by walking records (only right after an attach).
    walks: u64,
}

/// Slots of [`LogWriter::firsts`]: more than the chunk boundaries between `head` and
/// `tail_intent` (a ring is 8 chunks) and the one being passed.
const FIRST_SLOTS: usize = 16;

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
            firsts: [(u64::MAX, 0); FIRST_SLOTS],
            last_start: None,
            walks: 0,
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

    /// [`tail`](Self::tail) as readers compare positions ([`LogReader::position`]): for a
    /// [`Watch`](super::Watch) claim.
    #[inline]
    pub fn end(&self) -> u64 {
        self.log.normalize(self.tail)
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

    /// Appends a view of an ordered group, at its place among the messages: its id (the
    /// list position of its entry), its members, who joined and who left with the reason
    /// (a [`LeftReason`] code). `TooLarge` if it does not fit one record.
    pub fn append_view(
        &mut self,
        id: u64,
        members: &[u32],
        joined: &[u32],
        left: &[(u32, u32)],
    ) -> Result<u64, OfferError> {
        let len = VIEW_FIXED + 4 * (members.len() + joined.len()) + 8 * left.len();
        if len > self.log.max_payload {
            return Err(OfferError::TooLarge {
                len,
                max: self.log.max_payload,
            });
        }
        // Views are rare (not the data path): one allocation each is fine.
        let mut bytes = Vec::with_capacity(len);
        bytes.extend_from_slice(&id.to_le_bytes());
        for n in [members.len(), joined.len(), left.len()] {
            bytes.extend_from_slice(&(n as u32).to_le_bytes());
        }
        for &m in members.iter().chain(joined) {
            bytes.extend_from_slice(&m.to_le_bytes());
        }
        for &(node, reason) in left {
            bytes.extend_from_slice(&node.to_le_bytes());
            bytes.extend_from_slice(&reason.to_le_bytes());
        }
        Ok(self.append_data(FLAG_VIEW, 0, &bytes))
    }

    /// Appends the snapshot an ordered group's joiner installed at list position
    /// `position` (`TooLarge` if it does not fit one record).
    pub fn append_installed(&mut self, position: u64, snapshot: &[u8]) -> Result<u64, OfferError> {
        let len = 8 + snapshot.len();
        if len > self.log.max_payload {
            return Err(OfferError::TooLarge {
                len,
                max: self.log.max_payload,
            });
        }
        let mut bytes = Vec::with_capacity(len);
        bytes.extend_from_slice(&position.to_le_bytes());
        bytes.extend_from_slice(snapshot);
        Ok(self.append_data(FLAG_INSTALLED, 0, &bytes))
    }

    /// Appends a CPG confchg of a `cpg` group, at its place in the total order: the
    /// daemons' ring (`ring_id`, daemon ids), the member processes after the change (sorted
    /// by node and pid, reason 0) and who joined and left, with their reasons (`docs/cpg.md`).
    /// `TooLarge` if it does not fit one record.
    pub fn append_confchg(
        &mut self,
        ring_id: u64,
        ring: &[u32],
        members: &[CpgEntry],
        joined: &[CpgEntry],
        left: &[CpgEntry],
    ) -> Result<u64, OfferError> {
        let len = CONFCHG_FIXED + 4 * ring.len() + CPG_ENTRY * (members.len() + joined.len() + left.len());
        if len > self.log.max_payload {
            return Err(OfferError::TooLarge {
                len,
                max: self.log.max_payload,
            });
        }
        // Membership changes are rare (not the data path): one allocation each is fine.
        let mut bytes = Vec::with_capacity(len);
        bytes.extend_from_slice(&ring_id.to_le_bytes());
        for n in [ring.len(), members.len(), joined.len(), left.len()] {
            bytes.extend_from_slice(&(n as u32).to_le_bytes());
        }
        for &d in ring {
            bytes.extend_from_slice(&d.to_le_bytes());
        }
        for e in members.iter().chain(joined).chain(left) {
            for w in [e.node, e.pid, e.reason, e.session] {
                bytes.extend_from_slice(&w.to_le_bytes());
            }
        }
        Ok(self.append_data(FLAG_CONFCHG, 0, &bytes))
    }

    /// Asks the group's snapshot provider for its state at list position `position` (the
    /// group delivers nothing more until it answers).
    pub fn append_snapshot_request(&mut self, position: u64) -> u64 {
        self.append_data(FLAG_SNAPSHOT_REQUEST, 0, &position.to_le_bytes())
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
        self.note_start(start);
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

    /// Records `start` as the first record start at or after every chunk boundary since
    /// the previous record's start (usually none, at most a few for a large record).
    #[inline(always)]
    fn note_start(&mut self, start: u64) {
        // The chunk is a power of two: a shift, not a division (two per record were ~15%
        // of a receiving daemon's log appends).
        let shift = self.log.chunk.trailing_zeros();
        let last = start >> shift;
        let first = match self.last_start {
            Some(previous) => (previous >> shift) + 1,
            // Just attached: only a boundary at `start` itself is known to be passed here.
            None => start.div_ceil(self.log.chunk),
        };
        for k in first.max((last + 1).saturating_sub(FIRST_SLOTS as u64))..=last {
            self.firsts[k as usize % FIRST_SLOTS] = (k, start);
        }
        self.last_start = Some(start);
    }

    #[inline(never)]
    fn grow_intent(&mut self, start: u64, need: u64) {
        let log = self.log;
        let intent = (need + log.chunk - 1) & !(log.chunk - 1);
        log.tail_intent().store(intent, Relaxed);
        // Release: a reader that sees any byte we write from now on also sees `intent`.
        fence(Release);
        // A multiple of the chunk: `intent` is, and so is the capacity (8 chunks).
        let floor = intent.saturating_sub(log.capacity);
        if self.head < floor {
            let k = floor / log.chunk;
            let head = match self.firsts[k as usize % FIRST_SLOTS] {
                (slot, first) if slot == k => first,
                // Attached after this boundary was passed: find it by walking the records.
                _ => {
                    self.walks += 1;
                    self.walk_head(start, floor)
                }
            };
            debug_assert!(
                head >= floor && head <= start && head >= self.head,
                "head {head} for floor {floor}, start {start}, old head {}",
                self.head
            );
            self.head = head;
            log.head().store(head, Release);
        }
        self.intent = intent;
    }

    /// The first record start at or after `floor` (at most `start`, the record being
    /// written), found by reading each record from `head` on.
    fn walk_head(&self, start: u64, floor: u64) -> u64 {
        let log = self.log;
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
                return start;
            }
            head = log.normalize(head + size);
        }
        head
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
    /// Ordered groups: the view changed here, at the same point of the order at every
    /// member.
    View(ViewRecord<'a>),
    /// Ordered groups: the state this daemon's members start from, produced by a member's
    /// application at list position `position` (empty if no application provided one);
    /// messages after that position follow.
    Installed { position: u64, snapshot: &'a [u8] },
    /// Ordered groups: a joiner needs the application's state at list position
    /// `position`, i.e. as it is now (nothing after it is delivered until it is given).
    /// `tutti_client` answers it from the snapshot provider.
    SnapshotRequest { position: u64 },
    /// `cpg` groups: the process membership changed here, at the same point of the order
    /// at every member.
    Confchg(ConfchgRecord<'a>),
}

/// One process of a CPG group in a confchg record: its daemon's node id, its pid (as the
/// daemon saw it with SO_PEERCRED), a `cpg_reason_t` code (0 in the member list) and its
/// session on that daemon (the low half of its sender id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CpgEntry {
    pub node: u32,
    pub pid: u32,
    pub reason: u32,
    pub session: u32,
}

/// A confchg record of a `cpg` group, validated (counts agree with its length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfchgRecord<'a> {
    /// The id of the daemons' ring (cluster view) when the change was applied here.
    pub ring_id: u64,
    ring: &'a [u8],
    members: &'a [u8],
    joined: &'a [u8],
    left: &'a [u8],
}

impl<'a> ConfchgRecord<'a> {
    /// Parses a confchg record's payload; `None` if its counts do not match its length.
    pub fn parse(payload: &'a [u8]) -> Option<ConfchgRecord<'a>> {
        let fixed = payload.get(..CONFCHG_FIXED)?;
        let word =
            |at: usize| u32::from_le_bytes([fixed[at], fixed[at + 1], fixed[at + 2], fixed[at + 3]]) as usize;
        let ring_id = u64::from_le_bytes(fixed[..8].try_into().ok()?);
        let (r, m, j, l) = (word(8), word(12), word(16), word(20));
        let len = m
            .checked_add(j)?
            .checked_add(l)?
            .checked_mul(CPG_ENTRY)?
            .checked_add(r.checked_mul(4)?)?
            .checked_add(CONFCHG_FIXED)?;
        if len != payload.len() {
            return None;
        }
        let rest = &payload[CONFCHG_FIXED..];
        let (ring, rest) = rest.split_at(4 * r);
        let (members, rest) = rest.split_at(CPG_ENTRY * m);
        let (joined, left) = rest.split_at(CPG_ENTRY * j);
        Some(ConfchgRecord {
            ring_id,
            ring,
            members,
            joined,
            left,
        })
    }

    fn entries(bytes: &'a [u8]) -> impl ExactSizeIterator<Item = CpgEntry> + 'a {
        bytes.chunks_exact(CPG_ENTRY).map(|e| {
            let w = |i: usize| u32::from_le_bytes([e[i], e[i + 1], e[i + 2], e[i + 3]]);
            CpgEntry {
                node: w(0),
                pid: w(4),
                reason: w(8),
                session: w(12),
            }
        })
    }

    /// The daemons of the ring (node ids).
    pub fn ring(&self) -> impl ExactSizeIterator<Item = u32> + 'a {
        self.ring
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
    }

    /// The member processes after the change.
    pub fn members(&self) -> impl ExactSizeIterator<Item = CpgEntry> + 'a {
        Self::entries(self.members)
    }

    /// Processes that joined with this change.
    pub fn joined(&self) -> impl ExactSizeIterator<Item = CpgEntry> + 'a {
        Self::entries(self.joined)
    }

    /// Processes that left with this change, and why.
    pub fn left(&self) -> impl ExactSizeIterator<Item = CpgEntry> + 'a {
        Self::entries(self.left)
    }
}

/// Why a member left an ordered group's view (codes of [`LogWriter::append_view`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeftReason {
    /// It left on its own.
    Left,
    /// The failure detector suspected it (crashed or cut off).
    Suspected,
    /// It fell further behind than the group's memory budget.
    Lagging,
    /// A code this build does not know.
    Other(u32),
}

impl LeftReason {
    pub fn code(self) -> u32 {
        match self {
            LeftReason::Left => 1,
            LeftReason::Suspected => 2,
            LeftReason::Lagging => 3,
            LeftReason::Other(n) => n,
        }
    }

    pub fn from_code(n: u32) -> LeftReason {
        match n {
            1 => LeftReason::Left,
            2 => LeftReason::Suspected,
            3 => LeftReason::Lagging,
            n => LeftReason::Other(n),
        }
    }
}

/// A view record of an ordered group, validated (counts agree with its length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewRecord<'a> {
    /// The view's id: the list position of the entry that made it.
    pub id: u64,
    members: &'a [u8],
    joined: &'a [u8],
    left: &'a [u8],
}

impl<'a> ViewRecord<'a> {
    /// Parses a view record's payload; `None` if its counts do not match its length.
    pub fn parse(payload: &'a [u8]) -> Option<ViewRecord<'a>> {
        let fixed = payload.get(..VIEW_FIXED)?;
        let word =
            |at: usize| u32::from_le_bytes([fixed[at], fixed[at + 1], fixed[at + 2], fixed[at + 3]]) as usize;
        let id = u64::from_le_bytes(fixed[..8].try_into().ok()?);
        let (m, j, l) = (word(8), word(12), word(16));
        let len = m
            .checked_add(j)?
            .checked_mul(4)?
            .checked_add(l.checked_mul(8)?)?
            .checked_add(VIEW_FIXED)?;
        if len != payload.len() {
            return None;
        }
        let rest = &payload[VIEW_FIXED..];
        let (members, rest) = rest.split_at(4 * m);
        let (joined, left) = rest.split_at(4 * j);
        Some(ViewRecord {
            id,
            members,
            joined,
            left,
        })
    }

    fn words(bytes: &'a [u8]) -> impl Iterator<Item = u32> + 'a {
        bytes
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
    }

    /// The members of the new view (node ids), in list order of their joins.
    pub fn members(&self) -> impl Iterator<Item = u32> + 'a {
        Self::words(self.members)
    }

    /// Members that joined with this view.
    pub fn joined(&self) -> impl Iterator<Item = u32> + 'a {
        Self::words(self.joined)
    }

    /// Members that left with this view, and why.
    pub fn left(&self) -> impl Iterator<Item = (u32, LeftReason)> + 'a {
        self.left.chunks_exact(8).map(|w| {
            (
                u32::from_le_bytes([w[0], w[1], w[2], w[3]]),
                LeftReason::from_code(u32::from_le_bytes([w[4], w[5], w[6], w[7]])),
            )
        })
    }
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
    #[error("log record at position {position} with flags {flags:#06x} is malformed: {what}")]
    BadRecord {
        position: u64,
        flags: u16,
        what: &'static str,
    },
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

    /// Attaches a reader at the log's first record when the writer has overwritten
    /// nothing yet (`head` still 0): it sees every record ever appended, in order; else at
    /// the tail, as [`attach`](Self::attach). Returns whether it starts at the beginning.
    /// Ordered groups use it: a member's state is the log's whole history (its installed
    /// snapshot, views and messages), so a local member that joins later rebuilds the same
    /// state from it, and the first one sees the records appended before it attached.
    ///
    /// # Safety
    /// As [`attach`](Self::attach).
    pub unsafe fn attach_from_start(base: *const u8, len: usize) -> Result<(Self, bool), LayoutError> {
        // SAFETY: caller's contract.
        let mut reader = unsafe { Self::attach(base, len)? };
        if reader.log.head().load(Acquire) == 0 {
            // The first record (or the marker) is at 0 with seq 0; if the writer laps us
            // meanwhile, poll notices and reports `Lagged` as for any reader.
            reader.cursor = 0;
            reader.expected_seq = 0;
            return Ok((reader, true));
        }
        Ok((reader, false))
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

    /// [`cursor`](Self::cursor) as the writer compares positions (`LogWriter::end`): what a
    /// reader that found the log drained arms its [`Watch`](super::Watch) with.
    #[inline]
    pub fn position(&self) -> u64 {
        self.log.normalize(self.cursor)
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
            let payload = &self.scratch[..len];
            let position_word = || {
                payload
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_le_bytes)
            };
            let bad = |what| ReadError::BadRecord {
                position: cursor,
                flags: header.flags,
                what,
            };
            let event = match header.flags {
                0 => LogEvent::Message {
                    seq: header.seq,
                    sender: header.sender,
                    payload,
                },
                FLAG_LOST => match position_word().filter(|_| len == 8) {
                    Some(count) => LogEvent::Lost {
                        sender: header.sender,
                        count,
                    },
                    None => return Err(self.fail(bad("a lost notice carries 8 bytes"))),
                },
                FLAG_VIEW => match ViewRecord::parse(payload) {
                    Some(view) => LogEvent::View(view),
                    None => return Err(self.fail(bad("view counts disagree with its length"))),
                },
                FLAG_CONFCHG => match ConfchgRecord::parse(payload) {
                    Some(confchg) => LogEvent::Confchg(confchg),
                    None => return Err(self.fail(bad("confchg counts disagree with its length"))),
                },
                FLAG_INSTALLED => match position_word() {
                    Some(position) => LogEvent::Installed {
                        position,
                        snapshot: &payload[8..],
                    },
                    None => return Err(self.fail(bad("an installed snapshot starts with its position"))),
                },
                FLAG_SNAPSHOT_REQUEST => match position_word().filter(|_| len == 8) {
                    Some(position) => LogEvent::SnapshotRequest { position },
                    None => return Err(self.fail(bad("a snapshot request carries 8 bytes"))),
                },
                _ => return Err(self.fail(bad("unknown flags"))),
            };
            let stop = matches!(event, LogEvent::SnapshotRequest { .. });
            f(event);
            events += 1;
            self.expected_seq = header.seq.wrapping_add(1);
            self.cursor = cursor + size;
            if stop {
                // The application's state must be taken exactly here: end the batch so
                // the caller answers before it handles anything after the request.
                break;
            }
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
