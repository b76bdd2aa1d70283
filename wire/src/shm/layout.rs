//! Byte layouts shared by the rings: constants, `#[repr(C)]` headers and the validation of a
//! ring header found in a region (which may come from an untrusted peer).

use bytemuck::{Pod, Zeroable};

use super::region::Region;

/// Every publish frame and log record starts at a multiple of this many bytes.
pub const RECORD_ALIGN: usize = 8;
/// `group` of a publish-ring padding frame.
pub const PAD_GROUP: u32 = u32::MAX;
/// Required alignment of a region's base (a page).
pub const REGION_ALIGN: usize = 4096;
/// Offset of the data area in a ring region: header and index blocks come first.
pub const DATA_OFFSET: usize = 4096;
/// Smallest ring capacity (one page). Loom models use tiny rings so their state space stays
/// small; the layout is otherwise the same.
pub const MIN_CAPACITY: usize = if cfg!(loom) { 64 } else { 4096 };
/// Largest ring capacity (1 GiB): keeps `max_payload` within a frame's `u32` length and
/// bounds what a mapping from a peer can make us address.
pub const MAX_CAPACITY: usize = 1 << 30;

pub const PUBLISH_MAGIC: [u8; 8] = *b"TUTTIPUB";
pub const PUBLISH_VERSION: u32 = 1;
pub const LOG_MAGIC: [u8; 8] = *b"TUTTILOG";
pub const LOG_VERSION: u32 = 1;

/// Size of [`PublishFrameHeader`].
pub const PUBLISH_FRAME_HEADER_LEN: usize = 8;
/// Size of [`LogRecordHeader`].
pub const LOG_RECORD_HEADER_LEN: usize = 32;

// Index blocks: each on its own 128-byte block so producer- and consumer-written words never
// share a cache line (nor an adjacent-line prefetch pair).
pub(crate) const INDEX_BLOCK: usize = 128;
/// Publish ring: next write position, stored (Release) by the producer. Public so that
/// tests can play a hostile client that writes the index words itself.
pub const PUB_TAIL: usize = 128;
/// Publish ring: next read position, stored (Release) by the consumer.
pub const PUB_HEAD: usize = 256;
/// Delivery log: upper bound of the positions the writer may be writing.
pub(crate) const LOG_TAIL_INTENT: usize = 128;
/// Delivery log: end position of the last complete record.
pub(crate) const LOG_TAIL: usize = 256;
/// Delivery log: start position of the oldest record still intact.
pub(crate) const LOG_HEAD: usize = 384;

/// Log record kinds.
pub(crate) const KIND_DATA: u16 = 1;
pub(crate) const KIND_PADDING: u16 = 2;

/// Header at offset 0 of a publish ring (the first 32 bytes of its 128-byte block; the
/// rest is zero).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct PublishRingHeader {
    pub magic: [u8; 8],
    pub version: u32,
    pub reserved: u32,
    pub capacity: u64,
    pub max_payload: u64,
}

/// Header at offset 0 of a delivery log; same shape as [`PublishRingHeader`].
pub type LogHeader = PublishRingHeader;

/// Header of every publish frame; `len` payload bytes follow, padded to [`RECORD_ALIGN`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct PublishFrameHeader {
    pub len: u32,
    /// The group handle, or [`PAD_GROUP`] for padding.
    pub group: u32,
}

/// Header of every delivery-log record; `len` payload bytes follow, padded to
/// [`RECORD_ALIGN`]. `position` is written last (Release) and is the record's commit flag.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct LogRecordHeader {
    pub position: u64,
    pub seq: u64,
    pub len: u32,
    /// 1 = data, 2 = padding.
    pub kind: u16,
    pub flags: u16,
    /// `(node_id << 32) | client_session_id`.
    pub sender: u64,
}

const _: () = assert!(std::mem::size_of::<PublishRingHeader>() <= INDEX_BLOCK);
const _: () = assert!(std::mem::size_of::<PublishFrameHeader>() == PUBLISH_FRAME_HEADER_LEN);
const _: () = assert!(std::mem::size_of::<LogRecordHeader>() == LOG_RECORD_HEADER_LEN);

/// Why a region could not be initialised or attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("shared-memory region at {addr:#x} is not aligned to {align} bytes (map it with mmap)")]
    Misaligned { addr: usize, align: usize },
    #[error("shared-memory region of {len} bytes is too small: {needed} bytes are needed")]
    TooSmall { len: usize, needed: usize },
    #[error(
        "bad magic \"{}\": expected \"{}\" (the descriptor is not this kind of tutti region)",
        found.escape_ascii(),
        expected.escape_ascii()
    )]
    BadMagic { expected: [u8; 8], found: [u8; 8] },
    #[error("unsupported layout version {found}; this build speaks version {expected}")]
    BadVersion { found: u32, expected: u32 },
    #[error("capacity {capacity} is invalid: it must be a power of two from {min} to {max} bytes")]
    BadCapacity { capacity: u64, min: usize, max: usize },
    #[error("header says max_payload {found}, but capacity {capacity} implies {expected}")]
    BadMaxPayload {
        found: u64,
        expected: u64,
        capacity: u64,
    },
    #[error("ring indices are inconsistent ({what}): the region is corrupt or not initialised")]
    BadIndex { what: &'static str },
}

/// Round `n` up to [`RECORD_ALIGN`].
#[inline(always)]
pub(crate) const fn align_record(n: usize) -> usize {
    (n + (RECORD_ALIGN - 1)) & !(RECORD_ALIGN - 1)
}

/// Checks a capacity (from a caller or from a peer's header).
pub(crate) fn check_capacity(capacity: u64) -> Result<usize, LayoutError> {
    let bad = LayoutError::BadCapacity {
        capacity,
        min: MIN_CAPACITY,
        max: MAX_CAPACITY,
    };
    if !capacity.is_power_of_two() || capacity < MIN_CAPACITY as u64 || capacity > MAX_CAPACITY as u64 {
        return Err(bad);
    }
    Ok(capacity as usize)
}

/// Writes a ring header and zeroes the rest of the header/index page.
///
/// # Safety
/// `region` is writable, `region.len() >= DATA_OFFSET`, and no other process uses it yet.
pub(crate) unsafe fn write_ring_header(
    region: &Region,
    magic: [u8; 8],
    version: u32,
    capacity: usize,
    max_payload: usize,
) {
    let header = PublishRingHeader {
        magic,
        version,
        reserved: 0,
        capacity: capacity as u64,
        max_payload: max_payload as u64,
    };
    // SAFETY: offset 0, 32 bytes, inside the header page (precondition).
    unsafe { region.write(0, bytemuck::bytes_of(&header)) };
}

/// Reads and validates the ring header of a region: magic, version, capacity and
/// max_payload, and that `len` covers the data area. Returns the capacity.
///
/// # Safety
/// `region` satisfies the region contract (readable for `region.len()` bytes).
pub(crate) unsafe fn read_ring_header(
    region: &Region,
    magic: [u8; 8],
    version: u32,
    max_payload: fn(usize) -> usize,
) -> Result<usize, LayoutError> {
    let len = region.len();
    if len < DATA_OFFSET + MIN_CAPACITY {
        return Err(LayoutError::TooSmall {
            len,
            needed: DATA_OFFSET + MIN_CAPACITY,
        });
    }
    let mut bytes = [0u8; std::mem::size_of::<PublishRingHeader>()];
    // SAFETY: 32 bytes at offset 0, inside the region (len checked above).
    unsafe { region.read(0, &mut bytes) };
    let header: PublishRingHeader = bytemuck::pod_read_unaligned(&bytes);
    if header.magic != magic {
        return Err(LayoutError::BadMagic {
            expected: magic,
            found: header.magic,
        });
    }
    if header.version != version {
        return Err(LayoutError::BadVersion {
            found: header.version,
            expected: version,
        });
    }
    let capacity = check_capacity(header.capacity)?;
    let expected = max_payload(capacity) as u64;
    if header.max_payload != expected {
        return Err(LayoutError::BadMaxPayload {
            found: header.max_payload,
            expected,
            capacity: header.capacity,
        });
    }
    if len - DATA_OFFSET < capacity {
        return Err(LayoutError::TooSmall {
            len,
            needed: DATA_OFFSET + capacity,
        });
    }
    Ok(capacity)
}

/// Validates the arguments of an `init`: capacity and region length.
pub(crate) fn check_init(len: usize, capacity: usize) -> Result<(), LayoutError> {
    check_capacity(capacity as u64)?;
    let needed = DATA_OFFSET + capacity;
    if len < needed {
        return Err(LayoutError::TooSmall { len, needed });
    }
    Ok(())
}
