//! Counters in shared memory, one 4 KiB page per shard, as Aeron's counters file: the
//! shard writes them without locks (single writer, relaxed), and `tutti stat` maps the page
//! read-only and reads them live. The names are part of the layout: index `i` of a page
//! is `SHARD_COUNTERS[i]`, and a page says how many it holds, so older readers can read
//! newer pages.
//!
//! ```text
//! offset 0    CountersHeader { magic "TUTTICNT", version: u32, count: u32 }
//! offset 128  value[count]: AtomicU64
//! ```

use crate::shm::LayoutError;
use bytemuck::{Pod, Zeroable};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

/// Size of a counters page.
pub const COUNTERS_LEN: usize = 4096;
const MAGIC: [u8; 8] = *b"TUTTICNT";
const VERSION: u32 = 1;
const VALUES: usize = 128;
/// Most counters a page holds.
pub const MAX_COUNTERS: usize = (COUNTERS_LEN - VALUES) / 8;

/// A shard's counters, in page order: (name, what it counts).
pub const SHARD_COUNTERS: &[(&str, &str)] = &[
    ("frames_in", "messages taken from clients' publish rings"),
    ("bytes_in", "payload bytes taken from clients' publish rings"),
    ("bad_frames", "client sessions ended for a malformed publish ring"),
    (
        "too_large",
        "messages dropped because the delivery log cannot hold them",
    ),
    ("subscriber_wakes", "futex wakes of sleeping subscribers"),
    ("parks", "times the shard parked (backoff idle strategy)"),
    ("clients", "clients with a publish ring on this shard (gauge)"),
    ("groups", "groups owned by this shard (gauge)"),
    ("heartbeat", "advances while the shard loop runs"),
    (
        "not_joined",
        "remote messages for a group with no local member (dropped)",
    ),
    ("datagrams_in", "UDP datagrams received"),
    ("datagrams_out", "UDP datagrams sent"),
    (
        "decode_errors",
        "UDP datagrams or messages refused by the decoder (dropped)",
    ),
    (
        "unknown_peer",
        "datagrams not sent: no address known for the peer",
    ),
    ("retransmits", "messages retransmitted by gossip repair"),
    ("gossip_rounds", "gossip rounds run"),
    ("lost", "messages reported lost (not repairable within retention)"),
    ("view_changes", "views installed"),
    ("view_members", "members of the current view (gauge)"),
    (
        "remote_delivered",
        "messages from other daemons appended to local logs",
    ),
    (
        "not_sent",
        "messages or datagrams not sent (too large, queue full)",
    ),
    (
        "fault_dropped",
        "datagrams dropped by injected faults (tests only)",
    ),
    (
        "bad_fragments",
        "fragments refused (inconsistent with their message, or of a message over max_message)",
    ),
    (
        "window_overflow",
        "messages that arrived a whole receive window ahead (the window slid; gaps reported lost)",
    ),
    (
        "evicted_budget",
        "messages given up to stay within the retention byte budgets (delivered first if held, else reported lost)",
    ),
    (
        "gap_requests",
        "repair requests sent at once on seeing a gap in a stream",
    ),
    (
        "tail_requests",
        "asks to a gossiper for what its digest claims past a stream's high (a claim alone never extends a stream)",
    ),
    (
        "partials_dropped",
        "budget evictions that dropped the fragments of messages not yet whole (their seqs stay open and are asked again)",
    ),
    (
        "retained_bytes",
        "bytes retained for repair by this shard (gauge; bounded by cluster.shard_budget_bytes)",
    ),
    (
        "remote_too_large",
        "messages from other daemons larger than the local log can hold (reported lost to local members)",
    ),
    (
        "duplicate_ids",
        "datagrams refused: another address claims the sender's daemon id",
    ),
    (
        "auth_failed",
        "UDP datagrams that failed authentication with the cluster key (dropped unparsed)",
    ),
    (
        "replayed",
        "authentic UDP datagrams seen before or older than the replay window (dropped)",
    ),
    (
        "auth_senders_full",
        "authenticated senders evicted from the full sender table (oldest first)",
    ),
    (
        "protocol_refused",
        "claims in well-formed datagrams refused as implausible (forged counters, views, seqs, relayed restarts; full peer and stream tables; capped request walks): see docs/security.md",
    ),
    (
        "idle_spins",
        "empty passes the shard spun before parking (backoff idle strategy)",
    ),
    (
        "ordered_submitted",
        "messages of local clients handed to ordered groups' total order",
    ),
    (
        "ordered_delivered",
        "messages of ordered groups appended to local logs in the total order",
    ),
    (
        "ordered_full",
        "times an ordered group refused a message for now (the frame stays in the client's publish ring: back pressure)",
    ),
    ("ordered_views", "views of ordered groups appended to local logs"),
    (
        "snapshot_requests",
        "snapshots asked of this daemon's applications for joiners of ordered groups",
    ),
    (
        "snapshots_empty",
        "snapshot requests answered with an empty snapshot: no local provider, or none answered within 5 s",
    ),
    (
        "snapshots_installed",
        "snapshots installed by this daemon as a joiner of an ordered group",
    ),
    (
        "ordered_minority",
        "times an ordered group on this shard found itself outside a majority (it delivers nothing new)",
    ),
    (
        "ordered_removed",
        "times this daemon was removed from an ordered group's view (suspected, lagging)",
    ),
    (
        "ordered_dropped",
        "ordered-group records this shard could not append (too large for the log; counted, never silent)",
    ),
    (
        "flow_held",
        "publish-ring passes that stopped at a frame because a bimodal group's flow-control window was full (the frame stays in the ring: back pressure)",
    ),
    (
        "flow_statuses",
        "flow-control statuses this shard sent as a receiver (its consumption of a stream, to the stream's sender)",
    ),
    (
        "flow_slow_members",
        "members a sender on this shard dropped from its flow-control window as slow (flow_slow_after); they get repair, then Lost",
    ),
    (
        "publish_abandoned",
        "frames a client had committed to its publish ring that could not be published when its session ended (an ordered group refused them for now; counted, never silent)",
    ),
    (
        "park_barriers",
        "parks after busy work that called membarrier(GLOBAL_EXPEDITED) in place of the clients' fences (doorbell barrier mode)",
    ),
    (
        "descriptor_wakes",
        "wake-ups of subscribers' descriptors (tutti_fd, cpg_fd_get) through their watch pages",
    ),
    (
        "unlogged",
        "messages of plain groups not written to the local delivery log because no local member subscribes (publish-only members): nobody to read them",
    ),
    (
        "cpu_poll_holds",
        "times the shard asked the kernel to keep idle CPUs polling after data (cpu_poll_after_data_ms; /dev/cpu_dma_latency at 0)",
    ),
    (
        "cpu_poll_refused",
        "cpu_poll_after_data_ms is set but /dev/cpu_dma_latency could not be opened (not root, or no such device): the CPUs halt as before",
    ),
    (
        "spins_skipped",
        "parks right after data without the spin after data, because the last spins caught nothing (one message in flight; spin_after_data_us)",
    ),
];

/// The control plane's counters (one page, written by the daemon's control thread only):
/// what it refused and why. Asked for with `Counters { shard: CONTROL_COUNTERS_PAGE }`.
pub const CONTROL_COUNTERS: &[(&str, &str)] = &[
    ("sessions", "client sessions attached (gauge)"),
    (
        "refused_attach",
        "connections refused: the user may not attach (not root, the daemon's user or group, nor in allow_uids)",
    ),
    ("refused_max_clients", "connections refused: max_clients attached"),
    (
        "refused_clients_per_uid",
        "connections refused: limits.clients_per_uid of that user attached",
    ),
    ("refused_max_groups", "joins refused: max_groups groups alive"),
    (
        "refused_ring_bytes",
        "joins refused: the user's rings and logs would pass limits.ring_bytes_per_uid",
    ),
    (
        "refused_join_rate",
        "joins refused: faster than limits.joins_per_second for that client",
    ),
    (
        "refused_groups_per_client",
        "joins refused: the client is in limits.groups_per_client groups",
    ),
    ("denied_publish", "joins refused by an access list: no publish right"),
    ("denied_subscribe", "joins refused by an access list: no subscribe right"),
    (
        "bad_requests",
        "sessions ended for a malformed control message or a request out of order",
    ),
];

/// Index of a named shard counter (a compile-time check that the name exists).
pub const fn shard_counter(name: &str) -> usize {
    counter_index(SHARD_COUNTERS, name)
}

/// Index of a named control counter (a compile-time check that the name exists).
pub const fn control_counter(name: &str) -> usize {
    counter_index(CONTROL_COUNTERS, name)
}

const fn counter_index(names: &[(&str, &str)], name: &str) -> usize {
    let mut i = 0;
    while i < names.len() {
        if const_eq(names[i].0, name) {
            return i;
        }
        i += 1;
    }
    panic!("no such counter");
}

const fn const_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct CountersHeader {
    magic: [u8; 8],
    version: u32,
    count: u32,
}

/// A counters page: written by one shard, read by anyone who maps it.
#[derive(Debug)]
pub struct CountersPage {
    base: NonNull<u8>,
    count: usize,
}

// SAFETY: the page is plain shared memory accessed only through atomics; the single-writer
// discipline (one shard calls `add`/`set`) is the caller's, as documented on those methods.
unsafe impl Send for CountersPage {}
// SAFETY: as above; readers on other threads only load.
unsafe impl Sync for CountersPage {}

impl CountersPage {
    /// Writes the header of a fresh zeroed page for `count` counters.
    ///
    /// # Safety
    /// `base` is valid for writes of `len` bytes, 8-aligned, zeroed, and not yet shared.
    pub unsafe fn init(base: *mut u8, len: usize, count: usize) -> Result<(), LayoutError> {
        if len < COUNTERS_LEN || count > MAX_COUNTERS {
            return Err(LayoutError::TooSmall {
                len,
                needed: COUNTERS_LEN,
            });
        }
        if base as usize & 7 != 0 {
            return Err(LayoutError::Misaligned {
                addr: base as usize,
                align: 8,
            });
        }
        let header = CountersHeader {
            magic: MAGIC,
            version: VERSION,
            count: count as u32,
        };
        // SAFETY: the caller guarantees `len >= COUNTERS_LEN` writable bytes at `base`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytemuck::bytes_of(&header).as_ptr(),
                base,
                std::mem::size_of::<CountersHeader>(),
            )
        };
        Ok(())
    }

    /// Attaches to an initialised page (read-only use is fine: readers only load).
    ///
    /// # Safety
    /// `base` is valid for reads of `len` bytes (and writes, if `add`/`set` are called),
    /// page-aligned, and outlives the returned value.
    pub unsafe fn attach(base: *const u8, len: usize) -> Result<Self, LayoutError> {
        let base = NonNull::new(base as *mut u8).ok_or(LayoutError::TooSmall {
            len,
            needed: COUNTERS_LEN,
        })?;
        if len < COUNTERS_LEN {
            return Err(LayoutError::TooSmall {
                len,
                needed: COUNTERS_LEN,
            });
        }
        if base.as_ptr() as usize & 7 != 0 {
            return Err(LayoutError::Misaligned {
                addr: base.as_ptr() as usize,
                align: 8,
            });
        }
        let mut raw = [0u8; std::mem::size_of::<CountersHeader>()];
        // SAFETY: the header lies within the `len >= COUNTERS_LEN` readable bytes; it is
        // written once at init, before the page is shared.
        unsafe { std::ptr::copy_nonoverlapping(base.as_ptr(), raw.as_mut_ptr(), raw.len()) };
        let header: CountersHeader = bytemuck::pod_read_unaligned(&raw);
        if header.magic != MAGIC {
            return Err(LayoutError::BadMagic {
                expected: MAGIC,
                found: header.magic,
            });
        }
        if header.version != VERSION {
            return Err(LayoutError::BadVersion {
                found: header.version,
                expected: VERSION,
            });
        }
        let count = header.count as usize;
        if count > MAX_COUNTERS {
            return Err(LayoutError::TooSmall {
                len,
                needed: VALUES + count * 8,
            });
        }
        Ok(CountersPage { base, count })
    }

    /// How many counters the page holds.
    pub fn count(&self) -> usize {
        self.count
    }

    #[inline]
    fn slot(&self, index: usize) -> Option<&AtomicU64> {
        (index < self.count).then(|| {
            // SAFETY: index < count <= MAX_COUNTERS keeps the 8-aligned slot inside the
            // page (checked at attach); the slot is only ever accessed atomically.
            unsafe { &*self.base.as_ptr().add(VALUES + index * 8).cast::<AtomicU64>() }
        })
    }

    /// The value of counter `index` (0 past the page's count).
    #[inline]
    pub fn get(&self, index: usize) -> u64 {
        self.slot(index).map_or(0, |s| s.load(Ordering::Relaxed))
    }

    /// Adds `n`. Single writer only: a load and a store, no locked instruction.
    #[inline]
    pub fn add(&self, index: usize, n: u64) {
        if let Some(s) = self.slot(index) {
            s.store(s.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
        }
    }

    /// Sets a gauge. Single writer only.
    #[inline]
    pub fn set(&self, index: usize, value: u64) {
        if let Some(s) = self.slot(index) {
            s.store(value, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(4096))]
    struct Page([u8; COUNTERS_LEN]);

    #[test]
    fn write_and_read_back() {
        let mut page = Box::new(Page([0; COUNTERS_LEN]));
        let base = page.0.as_mut_ptr();
        // SAFETY: a zeroed, aligned page of COUNTERS_LEN bytes that outlives the views.
        unsafe { CountersPage::init(base, COUNTERS_LEN, SHARD_COUNTERS.len()).unwrap() };
        // SAFETY: as above.
        let writer = unsafe { CountersPage::attach(base, COUNTERS_LEN).unwrap() };
        // SAFETY: as above.
        let reader = unsafe { CountersPage::attach(base, COUNTERS_LEN).unwrap() };
        writer.add(shard_counter("frames_in"), 5);
        writer.add(shard_counter("frames_in"), 2);
        writer.set(shard_counter("clients"), 3);
        assert_eq!(reader.get(shard_counter("frames_in")), 7);
        assert_eq!(reader.get(shard_counter("clients")), 3);
        assert_eq!(
            reader.get(10_000),
            0,
            "out of range reads as 0, never out of bounds"
        );
        writer.add(10_000, 1);
    }

    #[test]
    fn garbage_pages_are_refused() {
        let mut page = Box::new(Page([0xAB; COUNTERS_LEN]));
        // SAFETY: an aligned page of COUNTERS_LEN bytes.
        assert!(unsafe { CountersPage::attach(page.0.as_mut_ptr(), COUNTERS_LEN) }.is_err());
        page.0[..8].copy_from_slice(&MAGIC);
        page.0[8..12].copy_from_slice(&VERSION.to_le_bytes());
        page.0[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        // SAFETY: as above.
        assert!(unsafe { CountersPage::attach(page.0.as_mut_ptr(), COUNTERS_LEN) }.is_err());
        // SAFETY: as above; too short a region.
        assert!(unsafe { CountersPage::attach(page.0.as_mut_ptr(), 100) }.is_err());
    }
}
