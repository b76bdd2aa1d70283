//! Shared-memory ring layouts: publish ring, delivery log, doorbells.
//!
//! The byte layouts and the memory-ordering protocol are specified in `docs/internals.md`
//! ("Shared-memory layouts"); this module is their single implementation. It does no I/O:
//! every type is built over a region of memory that the caller mapped (the daemon maps a
//! memfd, the client maps the descriptor it received), so constructors are `unsafe fn`s
//! with a documented contract.
//!
//! # The region contract
//!
//! Every `unsafe fn init` / `unsafe fn attach` here takes `(base, len)` and requires that:
//! - `base` is valid for reads (and for writes, unless the function takes `*const u8`) of
//!   `len` bytes, and is aligned to [`REGION_ALIGN`] (4096, a page);
//! - the region outlives the returned object (and every borrow it hands out);
//! - the region is not accessed by this process except through the objects of this module
//!   (it may be shared with another process, which may write anything into it: every value
//!   read from it is validated before it is trusted).
//!
//! Attaching validates the header and the indices and returns a [`LayoutError`]; nothing in
//! this module panics on the contents of a region.
//!
//! # Where the `unsafe` is
//!
//! All raw memory access goes through [`region`]'s `Region` (a pointer and a length). Under
//! `--cfg loom` the same algorithms run over a `LoomRegion` of loom atomics instead, so that
//! the loom models in `wire/tests/loom_shm.rs` check the real code.

mod doorbell;
mod layout;
mod log;
mod publish;
mod region;
mod sync;
mod watch;

#[cfg(all(test, not(loom)))]
pub(crate) mod testutil;

pub use doorbell::{GroupDoorbell, ShardDoorbell, DOORBELL_LEN};
pub use layout::{
    LayoutError, LogHeader, LogRecordHeader, PublishFrameHeader, PublishRingHeader, DATA_OFFSET, LOG_MAGIC,
    LOG_RECORD_HEADER_LEN, LOG_VERSION, MAX_CAPACITY, MIN_CAPACITY, PAD_GROUP, PUBLISH_FRAME_HEADER_LEN,
    PUBLISH_MAGIC, PUBLISH_VERSION, PUB_HEAD, PUB_TAIL, RECORD_ALIGN, REGION_ALIGN,
};
pub use log::{
    ConfchgRecord, CpgEntry, DeliveryLog, LeftReason, LogEvent, LogReader, LogWriter, ReadError, ViewRecord,
};
pub use publish::{FrameError, PublishClaim, PublishConsumer, PublishProducer, PublishRing};
#[cfg(loom)]
#[doc(hidden)]
pub use region::LoomRegion;
pub use watch::{Disarm, Watch, WATCH_LEN};

/// Why an offer (publish) or an append did not take a message. Back pressure is a return
/// value, never a hidden block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    /// The ring has no room for the frame now; the consumer has not caught up. Retry later.
    #[error("back pressured: ring full")]
    BackPressured,
    /// The message can never fit in this ring.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
}
