//! A group's pollable descriptor (`tutti_fd`): an eventfd that a helper thread makes
//! readable when the daemon appends to the group's delivery log, which it learns by
//! sleeping on the group's futex (the daemon wakes futex sleepers, not descriptors).
//!
//! Protocol: the helper notifies the eventfd, then sets `pending`; a poll swaps `pending`
//! to false and, if it was set, drains the eventfd, before it reads the log. So the
//! descriptor is readable with `pending` false only between those two steps of the helper,
//! and the next poll after them resets it: it is never left readable for nothing.
//!
//! A helper that notices an append late (descheduled on a loaded host), after a poll had
//! already read it, must not wake the descriptor for it: a poll that found the log drained
//! reads the futex word, checks that the log still holds nothing, and publishes that word
//! as `covered`. Every append counted in a word is visible to a reader that read that word
//! (the daemon appends, then bumps the word), so a word equal to `covered` holds nothing
//! unread and the helper skips it; any later append bumps the word again and wakes. A
//! helper that woke the descriptor re-checks `covered` after, for a poll that drained the
//! log in between.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tutti_client::AppendSignal;
use tutti_sys::EventFd;

/// How often an idle helper checks that the daemon has not hung up (and the longest a
/// leave or close waits for the helper to notice that it should stop).
const HANGUP_CHECK: Duration = Duration::from_millis(200);

struct Shared {
    eventfd: EventFd,
    /// The eventfd may be non-zero: the next poll drains it.
    pending: AtomicBool,
    /// The daemon hung up: the descriptor stays readable from now on.
    gone: AtomicBool,
    stop: AtomicBool,
    /// The futex word last read by a poll that found the log drained (and still empty
    /// after that read): appends up to it were all read.
    covered: AtomicU32,
}

impl Shared {
    fn wake(&self) {
        self.eventfd.notify();
        // SeqCst: pairs with the poll's swap (the eventfd write is before it), and with
        // `drained`, which stores `covered` then loads this, while the helper stores this
        // then loads `covered`: one of the two sees the other's store.
        self.pending.store(true, Ordering::SeqCst);
    }
}

/// The helper thread and its eventfd; dropping it stops and joins the thread.
pub(crate) struct GroupWake {
    shared: Arc<Shared>,
    signal: Arc<AppendSignal>,
    thread: Option<JoinHandle<()>>,
}

impl GroupWake {
    /// Starts watching. `control_fd` must stay open for as long as this lives (the client
    /// owns it and drops its wakes first).
    pub fn start(
        signal: AppendSignal,
        control_fd: RawFd,
        pending: impl FnOnce() -> bool,
    ) -> std::io::Result<GroupWake> {
        let shared = Arc::new(Shared {
            eventfd: EventFd::new()?,
            pending: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            covered: AtomicU32::new(0),
        });
        let signal = Arc::new(signal);
        // Read before the first wake-up: an append after this read changes the word, which
        // the helper sees; whatever came before is covered by the first wake-up below.
        let seen = signal.value();
        // Never equal to a word the helper will see (it only acts on `now != seen`).
        shared.covered.store(seen, Ordering::Relaxed);
        // Readable at once only if a record already waits: an append after `seen` was read
        // is the helper's to notice, so none is missed, and a program that takes a readable
        // descriptor to mean "an event waits" (libcpg's callers) is not misled.
        if pending() {
            shared.wake();
        }
        let thread = {
            let (shared, signal) = (Arc::clone(&shared), Arc::clone(&signal));
            std::thread::Builder::new()
                .name("tutti-fd".into())
                .spawn(move || watch(&shared, &signal, seen, control_fd))?
        };
        Ok(GroupWake {
            shared,
            signal,
            thread: Some(thread),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.shared.eventfd.fd().as_raw_fd()
    }

    /// Before reading the log: makes the descriptor unreadable again (unless the daemon
    /// is gone). Costs a system call only when the helper woke it.
    pub fn reset(&self) {
        if self.shared.pending.swap(false, Ordering::AcqRel) && !self.shared.gone.load(Ordering::Acquire) {
            self.shared.eventfd.drain();
        }
    }

    /// The group's futex word now (Acquire: the records it counts are visible).
    pub fn word(&self) -> u32 {
        self.signal.value()
    }

    /// The log held no record after the futex word read `word` ([`word`](Self::word)): the
    /// helper need not wake the descriptor for appends up to that word.
    pub fn drained(&self, word: u32) {
        // SeqCst: see `Shared::wake`.
        self.shared.covered.store(word, Ordering::SeqCst);
        // The helper may have woken the descriptor for this word before it could see the
        // store above (it checks `covered` before and after waking): then reset it here. If
        // the word moved since, an append may wait behind that wake-up: wake again.
        if self.shared.pending.load(Ordering::SeqCst) {
            self.reset();
            if self.signal.value() != word {
                self.shared.wake();
            }
        }
    }

    /// Whether the helper saw the daemon hang up.
    pub fn daemon_gone(&self) -> bool {
        self.shared.gone.load(Ordering::Acquire)
    }

    /// Asks the helper to stop without waiting for it (drop waits).
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.signal.interrupt();
    }
}

impl Drop for GroupWake {
    fn drop(&mut self) {
        self.stop();
        if let Some(thread) = self.thread.take() {
            // The helper does not panic; if it did, there is nothing left to clean up.
            let _ = thread.join();
        }
    }
}

fn watch(shared: &Shared, signal: &AppendSignal, mut seen: u32, control_fd: RawFd) {
    let mut revents = Vec::with_capacity(1);
    while !shared.stop.load(Ordering::Acquire) {
        signal.wait(seen, HANGUP_CHECK);
        let now = signal.value();
        if now != seen {
            seen = now;
            // A poll that began at this word and drained the log read it all already.
            if shared.covered.load(Ordering::Acquire) != now {
                shared.wake();
                // Such a poll may also have run between our eventfd write and our `pending`
                // store (its reset then found nothing to drain): nothing waits, so undo the
                // wake-up. Only one of it and a reset gets `pending` and drains.
                if shared.covered.load(Ordering::SeqCst) == now
                    && shared.pending.swap(false, Ordering::AcqRel)
                {
                    shared.eventfd.drain();
                }
            }
            continue;
        }
        // Woken with no append: the slice passed, a stop, or a spurious wake-up.
        let hung_up = tutti_sys::poll_readable(&[control_fd], &mut revents, Some(Duration::ZERO)).is_ok()
            && revents
                .first()
                .is_some_and(|r| r & (tutti_sys::POLLHUP | tutti_sys::POLLERR) != 0);
        if hung_up {
            shared.gone.store(true, Ordering::Release);
            shared.wake();
            return;
        }
    }
}
