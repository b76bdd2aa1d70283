//! Doorbells: how an idle shard or subscriber sleeps without costing the data path a system
//! call. Each is a 4 KiB page; the futex/eventfd system calls are the caller's. Protocol:
//! `docs/internals.md`, "Doorbells".
//!
//! Both are Dekker handshakes made of `SeqCst` fences: the sleeper publishes "I am about
//! to sleep", fences, and re-checks for work; the waker publishes work, fences, and checks
//! for sleepers. At least one of the two sees the other's store, so a message is never left
//! unseen behind a sleeping party.
//!
//! **Barrier mode** (shard doorbell only). The client's fence after each commit waits for
//! its store buffer to drain, the payload's stores included: on the cluster bench's
//! publisher (backoff daemons) it cost about a sixth of the throughput. A shard that is busy
//! (a pass took many frames from one ring) sets `mode = BARRIER`; a client of a process
//! registered for `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)` that reads `BARRIER` skips
//! its fence (a compiler barrier only). Before such a shard parks it stores `mode = FENCED`
//! and `parked = 1`, then calls `membarrier(GLOBAL_EXPEDITED)`, then re-checks the rings.
//! The syscall runs a full barrier on every registered thread that is on a CPU, and a
//! thread that is not is past a context switch, which is one. Why no wake-up is lost, for a
//! client commit C (store `tail`, load `mode`, [fence], load `parked`) and a park P that
//! does not see C's `tail`:
//! - P in barrier mode: C's `tail` store is not before its thread's barrier in P's
//!   membarrier (P's re-check would see it), so C's loads are after that barrier and see
//!   `mode = FENCED` and `parked = 1`: C fences and rings.
//! - P in fenced mode, C read `FENCED`: the plain Dekker handshake.
//! - P in fenced mode, C read `BARRIER`: that value predates the `FENCED` store of the last
//!   barrier-mode park P0 before P, so C's load of `mode`, and its `tail` store before it,
//!   came before its thread's barrier in P0's membarrier: P0's re-check, and P, see `tail`.
//!
//! An unregistered client always fences. The cost moves to the shard: one membarrier per
//! park after busy work (about 17 µs on this VM when a registered thread runs on the other
//! vCPU, 0.2 µs otherwise), none while it parks after single messages.
//!
//! Page layout (each word on its own 128-byte block):
//! ```text
//! offset 0    DoorbellHeader { magic "TUTTISDB" | "TUTTIGDB", version: u32, reserved: u32 }
//! offset 128  shard: parked: AtomicU32      group: waiters: AtomicU32
//! offset 192  shard: mode: AtomicU32
//! offset 256                                group: futex: AtomicU32
//! ```

use bytemuck::{Pod, Zeroable};

use super::layout::LayoutError;
use super::region::Region;
use super::sync::Ordering::{Acquire, Relaxed, Release, SeqCst};
use super::sync::{fence, AtomicU32};

/// Size of a doorbell page.
pub const DOORBELL_LEN: usize = 4096;

const SHARD_MAGIC: [u8; 8] = *b"TUTTISDB";
const GROUP_MAGIC: [u8; 8] = *b"TUTTIGDB";
const DOORBELL_VERSION: u32 = 2;
const PARKED: usize = 128;
/// Word at 192 (same block as `parked`, read together): the shard's mode, one of
/// [`MODE_FENCED`], [`MODE_NEVER_PARKS`], [`MODE_BARRIER`].
const MODE: usize = 192;
/// The shard may park: clients fence after a commit, then look at `parked`.
const MODE_FENCED: u32 = 0;
/// The shard never parks (spin idle strategy): clients skip the fence and the look.
const MODE_NEVER_PARKS: u32 = 1;
/// The shard calls `membarrier(GLOBAL_EXPEDITED)` before it parks: registered clients skip
/// the fence (module docs).
const MODE_BARRIER: u32 = 2;
const WAITERS: usize = 128;
const FUTEX: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct DoorbellHeader {
    magic: [u8; 8],
    version: u32,
    reserved: u32,
}

/// # Safety
/// Region contract for `len` writable bytes; not shared yet.
pub(super) unsafe fn init_page(
    base: *mut u8,
    len: usize,
    magic: [u8; 8],
    version: u32,
) -> Result<Region, LayoutError> {
    if len < DOORBELL_LEN {
        return Err(LayoutError::TooSmall {
            len,
            needed: DOORBELL_LEN,
        });
    }
    // SAFETY: caller's contract.
    let region = unsafe { Region::from_raw(base, len)? };
    let header = DoorbellHeader {
        magic,
        version,
        reserved: 0,
    };
    // SAFETY: 16 bytes at offset 0 of a writable page of >= 4096 bytes.
    unsafe { region.write(0, bytemuck::bytes_of(&header)) };
    Ok(region)
}

/// # Safety
/// Region contract for `len` readable bytes.
pub(super) unsafe fn attach_page(
    base: *mut u8,
    len: usize,
    magic: [u8; 8],
    version: u32,
) -> Result<Region, LayoutError> {
    if len < DOORBELL_LEN {
        return Err(LayoutError::TooSmall {
            len,
            needed: DOORBELL_LEN,
        });
    }
    // SAFETY: caller's contract.
    let region = unsafe { Region::from_raw(base, len)? };
    let mut bytes = [0u8; std::mem::size_of::<DoorbellHeader>()];
    // SAFETY: 16 bytes at offset 0 of a page of >= 4096 bytes.
    unsafe { region.read(0, &mut bytes) };
    let header: DoorbellHeader = bytemuck::pod_read_unaligned(&bytes);
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
    Ok(region)
}

/// One per shard: `parked` tells clients whether a commit must ring the shard's eventfd.
/// Written by the shard; clients map it read-only and only call [`wants_ring`](Self::wants_ring).
pub struct ShardDoorbell {
    region: Region,
}

// SAFETY: only atomics are accessed, and the page outlives the object (attach contract).
unsafe impl Send for ShardDoorbell {}
// SAFETY: as above; every method takes `&self` and uses atomics only.
unsafe impl Sync for ShardDoorbell {}

impl ShardDoorbell {
    /// Writes the header of a fresh (zeroed) doorbell page.
    ///
    /// # Safety
    /// Region contract (see [`crate::shm`]) for `len` writable bytes, not shared yet.
    pub unsafe fn init(base: *mut u8, len: usize) -> Result<(), LayoutError> {
        // SAFETY: caller's contract.
        let region = unsafe { init_page(base, len, SHARD_MAGIC, DOORBELL_VERSION)? };
        // SAFETY: PARKED is a 4-aligned offset in the page.
        unsafe { region.atomic_u32(PARKED) }.store(0, Relaxed);
        Ok(())
    }

    /// Attaches to an initialised doorbell page.
    ///
    /// # Safety
    /// Region contract for `len` readable bytes; writable too if
    /// [`set_parked`](Self::set_parked) is called (the shard's mapping).
    pub unsafe fn attach(base: *const u8, len: usize) -> Result<Self, LayoutError> {
        // SAFETY: caller's contract; we write only from set_parked, documented above.
        let region = unsafe { attach_page(base as *mut u8, len, SHARD_MAGIC, DOORBELL_VERSION)? };
        Ok(ShardDoorbell { region })
    }

    #[inline(always)]
    fn parked(&self) -> &AtomicU32 {
        // SAFETY: 4-aligned offset inside the validated page.
        unsafe { self.region.atomic_u32(PARKED) }
    }

    /// Shard side. `set_parked(true)` stores the flag and issues `fence(SeqCst)`: the shard
    /// must then check all its rings once more before it blocks on its eventfd. Call
    /// `set_parked(false)` on waking.
    #[inline]
    pub fn set_parked(&self, parked: bool) {
        if parked {
            self.parked().store(1, Relaxed);
            fence(SeqCst);
        } else {
            self.parked().store(0, Relaxed);
        }
    }

    #[inline(always)]
    fn mode(&self) -> &AtomicU32 {
        // SAFETY: 4-aligned offset inside the validated page.
        unsafe { self.region.atomic_u32(MODE) }
    }

    /// Shard side, before any client attaches: this shard spins and never parks.
    pub fn set_never_parks(&self) {
        self.mode().store(MODE_NEVER_PARKS, Relaxed);
    }

    /// Shard side, busy and able to call `membarrier(GLOBAL_EXPEDITED)`: registered clients
    /// may skip their fence from now on. Its next park must be
    /// [`park_leaving_barrier_mode`](Self::park_leaving_barrier_mode).
    pub fn enter_barrier_mode(&self) {
        self.mode().store(MODE_BARRIER, Relaxed);
    }

    /// Shard side, in barrier mode, to park: clients fence again from now on, and the flag
    /// is up. The caller must then call `membarrier(GLOBAL_EXPEDITED)` (or, if that fails,
    /// fence and bound its sleep) before it checks its rings once more.
    pub fn park_leaving_barrier_mode(&self) {
        self.mode().store(MODE_FENCED, Relaxed);
        self.parked().store(1, Relaxed);
    }

    /// Client side, after a commit: `fence(SeqCst)`, then load `parked`. If true, write
    /// the shard's eventfd.
    #[inline]
    pub fn is_parked(&self) -> bool {
        fence(SeqCst);
        self.parked().load(Relaxed) != 0
    }

    /// Client side, after a commit: whether to write the shard's eventfd. `registered`:
    /// this process is registered for `membarrier(GLOBAL_EXPEDITED)`, so it skips the fence
    /// while the shard is in barrier mode (module docs). One load of the mode's line when
    /// the shard never parks.
    #[inline]
    pub fn wants_ring(&self, registered: bool) -> bool {
        // The commit's `tail` store comes before the loads below in program order (the
        // barrier mode's argument rests on it; the hardware keeps it, the compiler must).
        std::sync::atomic::compiler_fence(SeqCst);
        match self.mode().load(Acquire) {
            MODE_NEVER_PARKS => false,
            MODE_BARRIER if registered => self.parked().load(Relaxed) != 0,
            _ => self.is_parked(),
        }
    }
}

/// One per group: subscribers register as waiters before sleeping on `futex`; the shard
/// bumps `futex` and wakes them after appending when there are waiters.
///
/// Subscriber, to sleep: [`add_waiter`](Self::add_waiter) (which fences), `let v =
/// futex_word().load(Acquire)`, re-check the log (`LogReader::has_data`), and only if
/// still empty `FUTEX_WAIT(futex_word, v, timeout)`; then
/// [`remove_waiter`](Self::remove_waiter). Shard, after appending a batch: if
/// [`waiters`](Self::waiters) (which fences) `> 0`, [`bump`](Self::bump) and `FUTEX_WAKE`
/// all. Reading `v` *before* the re-check matters: a bump after the re-check then changes
/// the word and the wait returns at once.
pub struct GroupDoorbell {
    region: Region,
}

// SAFETY: only atomics are accessed, and the page outlives the object (attach contract).
unsafe impl Send for GroupDoorbell {}
// SAFETY: as above; every method takes `&self` and uses atomics only.
unsafe impl Sync for GroupDoorbell {}

impl GroupDoorbell {
    /// Writes the header of a fresh (zeroed) doorbell page.
    ///
    /// # Safety
    /// Region contract (see [`crate::shm`]) for `len` writable bytes, not shared yet.
    pub unsafe fn init(base: *mut u8, len: usize) -> Result<(), LayoutError> {
        // SAFETY: caller's contract.
        let region = unsafe { init_page(base, len, GROUP_MAGIC, DOORBELL_VERSION)? };
        // SAFETY: 4-aligned offsets in the page.
        unsafe {
            region.atomic_u32(WAITERS).store(0, Relaxed);
            region.atomic_u32(FUTEX).store(0, Relaxed);
        }
        Ok(())
    }

    /// Attaches to an initialised group doorbell (mapped read-write by members).
    ///
    /// # Safety
    /// Region contract for `len` writable bytes.
    pub unsafe fn attach(base: *mut u8, len: usize) -> Result<Self, LayoutError> {
        // SAFETY: caller's contract.
        let region = unsafe { attach_page(base, len, GROUP_MAGIC, DOORBELL_VERSION)? };
        Ok(GroupDoorbell { region })
    }

    #[inline(always)]
    fn waiters_word(&self) -> &AtomicU32 {
        // SAFETY: 4-aligned offset inside the validated page.
        unsafe { self.region.atomic_u32(WAITERS) }
    }

    /// The futex word (shared futex: no `FUTEX_PRIVATE_FLAG`).
    #[inline]
    pub fn futex_word(&self) -> &AtomicU32 {
        // SAFETY: 4-aligned offset inside the validated page.
        unsafe { self.region.atomic_u32(FUTEX) }
    }

    /// Subscriber: register as about to sleep, then `fence(SeqCst)`.
    #[inline]
    pub fn add_waiter(&self) {
        self.waiters_word().fetch_add(1, SeqCst);
        fence(SeqCst);
    }

    /// Subscriber: unregister after waking.
    #[inline]
    pub fn remove_waiter(&self) {
        self.waiters_word().fetch_sub(1, SeqCst);
    }

    /// Shard, after appending: `fence(SeqCst)`, then the number of registered sleepers.
    /// (Members can scribble on this page; a wrong count only causes spurious or late
    /// wake-ups within the group, bounded by the sleepers' timeout.)
    #[inline]
    pub fn waiters(&self) -> u32 {
        fence(SeqCst);
        self.waiters_word().load(Relaxed)
    }

    /// Shard: change the futex word (Release, so a sleeper that reads the new value sees
    /// the appended records). Returns the new value. Then `FUTEX_WAKE` all.
    #[inline]
    pub fn bump(&self) -> u32 {
        self.futex_word().fetch_add(1, Release).wrapping_add(1)
    }

    /// Subscriber convenience: the futex value to pass to `FUTEX_WAIT` (Acquire).
    #[inline]
    pub fn futex_value(&self) -> u32 {
        self.futex_word().load(Acquire)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::shm::testutil::AlignedRegion;

    #[test]
    fn shard_doorbell_parks_and_unparks() {
        let page = AlignedRegion::new(DOORBELL_LEN);
        // SAFETY: fresh zeroed page; the objects do not outlive it.
        let (shard, client) = unsafe {
            ShardDoorbell::init(page.ptr(), page.len()).unwrap();
            (
                ShardDoorbell::attach(page.ptr(), page.len()).unwrap(),
                ShardDoorbell::attach(page.ptr(), page.len()).unwrap(),
            )
        };
        assert!(!client.is_parked());
        shard.set_parked(true);
        assert!(client.is_parked());
        shard.set_parked(false);
        assert!(!client.is_parked());
        // Barrier mode: the answer is the same for registered and other clients (only the
        // fence differs); leaving it to park puts the flag up and the mode back.
        shard.enter_barrier_mode();
        assert!(!client.wants_ring(true) && !client.wants_ring(false));
        shard.park_leaving_barrier_mode();
        assert!(client.wants_ring(true) && client.wants_ring(false));
        shard.set_parked(false);
        assert!(!client.wants_ring(true));
        shard.set_never_parks();
        shard.set_parked(true);
        assert!(
            !client.wants_ring(false) && !client.wants_ring(true),
            "a spinning shard needs no doorbell"
        );
    }

    #[test]
    fn group_doorbell_counts_waiters_and_bumps() {
        let page = AlignedRegion::new(DOORBELL_LEN);
        // SAFETY: fresh zeroed page; the object does not outlive it.
        let bell = unsafe {
            GroupDoorbell::init(page.ptr(), page.len()).unwrap();
            GroupDoorbell::attach(page.ptr(), page.len()).unwrap()
        };
        assert_eq!(bell.waiters(), 0);
        bell.add_waiter();
        bell.add_waiter();
        assert_eq!(bell.waiters(), 2);
        bell.remove_waiter();
        assert_eq!(bell.waiters(), 1);
        let v = bell.futex_value();
        assert_eq!(bell.bump(), v + 1);
        assert_eq!(bell.futex_word().load(Relaxed), v + 1);
    }

    #[test]
    fn attach_checks_magic_and_size() {
        let page = AlignedRegion::new(DOORBELL_LEN);
        // SAFETY: valid page of DOORBELL_LEN bytes.
        unsafe {
            ShardDoorbell::init(page.ptr(), page.len()).unwrap();
            assert!(matches!(
                GroupDoorbell::attach(page.ptr(), page.len()),
                Err(LayoutError::BadMagic { .. })
            ));
            assert!(matches!(
                ShardDoorbell::attach(page.ptr(), 100),
                Err(LayoutError::TooSmall {
                    len: 100,
                    needed: 4096
                })
            ));
            assert!(matches!(
                ShardDoorbell::init(page.ptr().add(4), 4092),
                Err(LayoutError::TooSmall { .. })
            ));
        }
        let zero = AlignedRegion::new(DOORBELL_LEN);
        // SAFETY: valid zeroed page.
        assert!(unsafe { ShardDoorbell::attach(zero.ptr(), zero.len()) }.is_err());
    }
}
