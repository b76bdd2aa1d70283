//! Watch word: how the daemon makes one subscriber's descriptor readable when it appends to
//! a group's log, with no thread of the subscriber's in between (`tutti_fd`, libcpg's
//! `cpg_fd_get`). Protocol: `docs/internals.md`, "Descriptors".
//!
//! One 4 KiB page per watched (session, group), mapped by that client and the shard only.
//! Its word holds one of:
//! - `IDLE` (0): the reader is reading, or the daemon already made the descriptor readable;
//! - `ARMED(p)` (`p + 1`): the reader read through log position `p`, found the log drained,
//!   and waits on its descriptor;
//! - `CLAIMED` (`u64::MAX`): the shard took the word to make the descriptor readable and is
//!   between its `send` and its [`fired`](Watch::fired).
//!
//! Reader: after a read that left the log drained at `p`, [`arm`](Watch::arm)`(p)` (which
//! fences), then re-check the log; if a record came, [`disarm`](Watch::disarm) and read on.
//! Before a read, [`disarm`](Watch::disarm): `Quiet` (the shard did not fire: nothing to
//! drain), `Fired` (drain the descriptor), `Claimed` (the shard is inside its send: wait for
//! it, then ask again). Shard, after appending through `end`: [`claim`](Watch::claim)`(end)`
//! (which fences); if it returns true, make the descriptor readable, then
//! [`fired`](Watch::fired).
//!
//! Why nothing is lost: the reader's `ARMED` store and the shard's append are a Dekker pair
//! (each stores, fences, then loads the other's word): either the reader's re-check sees the
//! record, or the shard's claim sees `ARMED`. If both see, the compare-and-swap from `ARMED`
//! decides which of them acts. Why the descriptor is not readable for records already read:
//! the shard fires only for an `ARMED(p)` with its end past `p`, and the reader reads nothing
//! between arming and disarming; a disarm that finds the shard inside its send waits for it
//! and then drains, so no wake-up lands after the reader has read its records.
//!
//! A reader that finds `CLAIMED` waits for `fired`, which is one store after the send; but
//! the send wakes the reader, which on a busy host preempts the shard between the two, and a
//! spinning or yielding reader then waits out the shard's whole pass (35 µs in an ftrace of
//! the paced cpg anchor). So the page has a second word, `SLEEPER` (a `u32` at offset 256):
//! the reader sets it to 1, fences, and looks at the word once more; still `CLAIMED`, it
//! sleeps on `SLEEPER` (a futex, with a timeout). The shard's `fired` stores `IDLE`,
//! fences, and loads `SLEEPER`: if 1, it clears it and the shard wakes the futex
//! ([`fired`](Watch::fired) returns true). A Dekker pair again: either the reader sees
//! `IDLE` and does not sleep, or the shard sees the sleeper and wakes it.
//!
//! Sleeping still costs the reader two context switches when the shard is preempted right
//! at its send's return. So before it sleeps the reader makes one `recv`: if it took the
//! shard's byte, the send is done and only `fired` is left, and the reader takes the word
//! back itself ([`take_claim`](Watch::take_claim), a CAS from `CLAIMED` to `IDLE`). The
//! shard's `fired` is then a CAS from `CLAIMED` too: the reader may have armed the word
//! again meanwhile, and a plain store of `IDLE` would undo that arming and lose the next
//! wake-up.
//!
//! The page is shared with the client, which may write anything into it: a scribbled word
//! only disturbs that client's own descriptor (a claim sees no `ARMED`, or fires early).

use super::doorbell::{attach_page, init_page};
use super::layout::LayoutError;
use super::region::Region;
use super::sync::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};
use super::sync::{fence, AtomicU32, AtomicU64};

/// Size of a watch page (a doorbell page's header, then the word).
pub const WATCH_LEN: usize = super::doorbell::DOORBELL_LEN;

const MAGIC: [u8; 8] = *b"TUTTIWAT";
const VERSION: u32 = 1;
const WORD: usize = 128;
/// Offset of the sleeper word (a `u32`, 1 while the reader sleeps waiting out a claim).
const SLEEPER: usize = 256;
const IDLE: u64 = 0;
const CLAIMED: u64 = u64::MAX;

/// What a reader found when it disarmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disarm {
    /// It was armed and nobody fired: the descriptor was not made readable.
    Quiet,
    /// The shard fired (or the word was not armed): drain the descriptor.
    Fired,
    /// The shard is between its claim and its send: wait a moment and disarm again.
    Claimed,
}

/// One subscriber's watch word over a watch page.
pub struct Watch {
    region: Region,
}

// SAFETY: only atomics are accessed, and the page outlives the object (attach contract).
unsafe impl Send for Watch {}
// SAFETY: as above; every method takes `&self` and uses atomics only.
unsafe impl Sync for Watch {}

impl Watch {
    /// Writes the header of a fresh (zeroed) watch page.
    ///
    /// # Safety
    /// Region contract (see [`crate::shm`]) for `len` writable bytes, not shared yet.
    pub unsafe fn init(base: *mut u8, len: usize) -> Result<(), LayoutError> {
        // SAFETY: caller's contract; the word at an 8-aligned offset inside the page.
        unsafe {
            let region = init_page(base, len, MAGIC, VERSION)?;
            region.atomic_u64(WORD).store(IDLE, Release);
        }
        Ok(())
    }

    /// Attaches to an initialised watch page (mapped read-write by both sides).
    ///
    /// # Safety
    /// Region contract for `len` writable bytes.
    pub unsafe fn attach(base: *mut u8, len: usize) -> Result<Self, LayoutError> {
        // SAFETY: caller's contract.
        let region = unsafe { attach_page(base, len, MAGIC, VERSION)? };
        Ok(Watch { region })
    }

    #[inline(always)]
    fn word(&self) -> &AtomicU64 {
        // SAFETY: 8-aligned offset inside the validated page.
        unsafe { self.region.atomic_u64(WORD) }
    }

    /// Reader: it read through log position `position` (a normalized position, as
    /// `LogReader::position`) and found the log drained. Fences: re-check the log after
    /// this, and [`disarm`](Self::disarm) if a record came.
    #[inline]
    pub fn arm(&self, position: u64) {
        // A position of u64::MAX - 1 or more cannot be told from CLAIMED: never reached
        // (16 EiB of records), and a wrong one only fires early.
        self.word()
            .store(position.saturating_add(1).min(CLAIMED - 1), SeqCst);
        fence(SeqCst);
    }

    /// Reader, before it reads (and after an `arm` whose re-check found a record).
    #[inline]
    pub fn disarm(&self) -> Disarm {
        let word = self.word();
        let w = word.load(Acquire);
        match w {
            IDLE => Disarm::Fired,
            CLAIMED => Disarm::Claimed,
            armed => match word.compare_exchange(armed, IDLE, AcqRel, Acquire) {
                Ok(_) => Disarm::Quiet,
                // The shard claimed it meanwhile (or the page was scribbled on): ask again.
                Err(CLAIMED) => Disarm::Claimed,
                Err(_) => Disarm::Fired,
            },
        }
    }

    /// Shard, after appending records through normalized position `end` (its writer's
    /// tail, published): fences, then takes the word if the reader waits for a record
    /// before `end`. On `true`, make the descriptor readable, then [`fired`](Self::fired).
    #[inline]
    pub fn claim(&self, end: u64) -> bool {
        fence(SeqCst);
        let word = self.word();
        let w = word.load(Relaxed);
        if w == IDLE || w == CLAIMED || end < w {
            // Not armed, or armed at `w - 1 >= end`: the reader has read everything.
            return false;
        }
        word.compare_exchange(w, CLAIMED, AcqRel, Relaxed).is_ok()
    }

    /// Shard: the descriptor was made readable (or could not be: the reader is gone).
    /// Returns true when the reader sleeps waiting for this (it announced it with
    /// [`sleep_if_claimed`](Self::sleep_if_claimed)): wake it with a futex wake on
    /// [`sleeper`](Self::sleeper).
    #[inline]
    #[must_use = "a true return asks for a futex wake of the sleeper word"]
    pub fn fired(&self) -> bool {
        // Only a word still claimed: a reader that took the wake-up from its descriptor
        // may have taken the word back and armed it again ([`take_claim`](Self::take_claim)).
        let _ = self.word().compare_exchange(CLAIMED, IDLE, Release, Relaxed);
        fence(SeqCst);
        let sleeper = self.sleeper();
        if sleeper.load(Relaxed) == 0 {
            return false;
        }
        sleeper.store(0, Relaxed);
        true
    }

    /// Reader, after a [`disarm`](Self::disarm) that found the word claimed and a `recv`
    /// that took the shard's wake-up from the descriptor: the send is done and only the
    /// shard's [`fired`](Self::fired) is left, so the reader takes the word back (`IDLE`)
    /// and reads on instead of waiting for it. True if it took it; false if the word was
    /// no longer claimed (the shard's `fired` came first). Either way the reader goes on
    /// as after `Fired`, its descriptor already drained.
    #[inline]
    pub fn take_claim(&self) -> bool {
        self.word()
            .compare_exchange(CLAIMED, IDLE, AcqRel, Acquire)
            .is_ok()
    }

    /// The futex word a reader sleeps on while the shard is between its claim and `fired`.
    #[inline(always)]
    pub fn sleeper(&self) -> &AtomicU32 {
        // SAFETY: 4-aligned offset inside the validated page.
        unsafe { self.region.atomic_u32(SLEEPER) }
    }

    /// Reader, after a [`disarm`](Self::disarm) that found the word claimed: announces that
    /// it will sleep (fences), then disarms again. On `Claimed` the caller sleeps on
    /// [`sleeper`](Self::sleeper) while it reads 1 (the shard's `fired` clears it and wakes
    /// the futex), then calls [`slept`](Self::slept) and disarms again; on anything else it
    /// calls `slept` and goes on as after `disarm`.
    #[inline]
    pub fn sleep_if_claimed(&self) -> Disarm {
        self.sleeper().store(1, SeqCst);
        fence(SeqCst);
        self.disarm()
    }

    /// Reader: done sleeping (or not sleeping after all).
    #[inline]
    pub fn slept(&self) {
        self.sleeper().store(0, Relaxed);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::shm::testutil::AlignedRegion;

    fn pair() -> (AlignedRegion, Watch, Watch) {
        let page = AlignedRegion::new(WATCH_LEN);
        // SAFETY: fresh zeroed page; the objects do not outlive it (returned together, the
        // page first, dropped last by the callers' bindings order below).
        let (a, b) = unsafe {
            Watch::init(page.ptr(), page.len()).unwrap();
            (
                Watch::attach(page.ptr(), page.len()).unwrap(),
                Watch::attach(page.ptr(), page.len()).unwrap(),
            )
        };
        (page, a, b)
    }

    #[test]
    fn the_shard_fires_only_for_records_past_the_armed_position() {
        let (_page, reader, shard) = pair();
        // Not armed: nothing to fire for.
        assert!(!shard.claim(100));
        reader.arm(100);
        assert!(!shard.claim(100), "everything through 100 was read");
        assert!(!shard.claim(64));
        assert!(shard.claim(164));
        // Claimed: the reader must wait for the send.
        assert_eq!(reader.disarm(), Disarm::Claimed);
        assert!(!shard.claim(228), "one send per arming");
        assert!(!shard.fired(), "nobody sleeps");
        assert_eq!(reader.disarm(), Disarm::Fired);
    }

    #[test]
    fn a_reader_that_disarms_first_gets_no_wake_up() {
        let (_page, reader, shard) = pair();
        reader.arm(0);
        assert_eq!(reader.disarm(), Disarm::Quiet);
        assert!(!shard.claim(64), "disarmed: the reader is reading");
        reader.arm(64);
        assert!(!shard.claim(64));
        assert!(shard.claim(128));
        assert!(!shard.fired());
        assert!(!shard.claim(192), "fired once; the reader has not armed again");
    }

    /// A reader that finds the word claimed and announces its sleep is woken by the
    /// shard's `fired` (which clears the sleeper word); one that announces after `fired`
    /// finds the word fired and does not sleep.
    #[test]
    fn a_reader_sleeping_out_a_claim_is_woken_by_fired() {
        let (_page, reader, shard) = pair();
        reader.arm(0);
        assert!(shard.claim(64));
        assert_eq!(reader.disarm(), Disarm::Claimed);
        assert_eq!(reader.sleep_if_claimed(), Disarm::Claimed);
        assert_eq!(reader.sleeper().load(Relaxed), 1, "announced");
        assert!(shard.fired(), "the shard sees the sleeper");
        assert_eq!(
            reader.sleeper().load(Relaxed),
            0,
            "cleared: the futex wait returns"
        );
        reader.slept();
        assert_eq!(reader.disarm(), Disarm::Fired);

        reader.arm(64);
        assert!(shard.claim(128));
        assert!(!shard.fired());
        assert_eq!(
            reader.sleep_if_claimed(),
            Disarm::Fired,
            "fired before the announcement"
        );
        reader.slept();
        assert!(!shard.claim(192));
        assert_eq!(reader.sleeper().load(Relaxed), 0);
    }

    /// A reader that finds the word claimed but already took the shard's wake-up from its
    /// descriptor takes the word back itself and reads on; the shard's `fired`, coming
    /// after the reader armed again, must leave that arming alone (a blind store of `IDLE`
    /// there would lose the next wake-up).
    #[test]
    fn a_reader_that_took_the_wake_up_takes_the_claim_and_a_late_fired_keeps_its_arming() {
        let (_page, reader, shard) = pair();
        reader.arm(0);
        assert!(shard.claim(64));
        assert_eq!(reader.disarm(), Disarm::Claimed);
        // (the shard's send is in the descriptor and the reader took it)
        assert!(reader.take_claim());
        reader.arm(64);
        assert!(!shard.fired(), "nobody sleeps");
        assert!(!shard.claim(64), "armed at 64: read through it");
        assert!(
            shard.claim(128),
            "the arming after the take survived the late fired"
        );
        assert!(!shard.fired());
        assert_eq!(reader.disarm(), Disarm::Fired);
        assert!(!reader.take_claim(), "not claimed: nothing to take");
    }

    #[test]
    fn a_scribbled_page_is_refused_or_harmless() {
        let page = AlignedRegion::new(WATCH_LEN);
        // SAFETY: fresh zeroed page that outlives the calls.
        let refused = unsafe { Watch::attach(page.ptr(), page.len()) };
        assert!(matches!(refused, Err(LayoutError::BadMagic { .. })));
        // SAFETY: as above.
        let short = unsafe { Watch::init(page.ptr(), 1024) };
        assert!(matches!(short, Err(LayoutError::TooSmall { .. })));
        let (_page, reader, shard) = pair();
        // A word at the largest positions still behaves.
        reader.arm(u64::MAX);
        assert!(!shard.claim(u64::MAX - 2));
        assert_eq!(reader.disarm(), Disarm::Quiet);
    }
}
