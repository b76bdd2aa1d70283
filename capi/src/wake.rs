//! A group's pollable descriptor (`tutti_fd`): an eventfd that a helper thread makes
//! readable when the daemon appends to the group's delivery log, which it learns by
//! sleeping on the group's futex (the daemon wakes futex sleepers, not descriptors).
//!
//! Protocol: the helper notifies the eventfd, then sets `pending`; a poll swaps `pending`
//! to false and, if it was set, drains the eventfd, before it reads the log. So the
//! descriptor is readable with `pending` false only between those two steps of the helper,
//! and the next poll after them resets it: it is never left readable for nothing.
//!
//! A wake-up for records already read must not make the descriptor readable: the helper
//! notices an append late (descheduled on a loaded host), or the daemon is descheduled
//! between its append and its futex bump while a poll reads the records. So readiness is a
//! log-position check: a poll that leaves the log drained publishes its read position as
//! `read`, and the helper, when the word moves, compares the log's published end with it
//! (`AppendSignal::read_through`; the daemon publishes the end before it bumps the word, so
//! the end covers every append the word counts). Everything read: no wake-up. A helper
//! that woke the descriptor checks again after, for a poll that drained the log in between,
//! and such a poll undoes a wake-up it sees unless records came since (`SeqCst` on both
//! sides: one of the two sees the other). Any later append moves the word again.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// The read position of the last poll that left the log drained: every record before
    /// it was read.
    read: AtomicU64,
}

impl Shared {
    fn new(read: u64) -> std::io::Result<Shared> {
        Ok(Shared {
            eventfd: EventFd::new()?,
            pending: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            read: AtomicU64::new(read),
        })
    }

    fn wake(&self) {
        self.eventfd.notify();
        // SeqCst: pairs with the poll's swap (the eventfd write is before it), and with
        // `drained`, which stores `read` then loads this, while the helper stores this
        // then loads `read`: one of the two sees the other's store.
        self.pending.store(true, Ordering::SeqCst);
    }

    /// Makes the descriptor unreadable again (unless the daemon is gone). Costs a system
    /// call only when the helper woke it.
    fn reset(&self) {
        if self.pending.swap(false, Ordering::AcqRel) && !self.gone.load(Ordering::Acquire) {
            self.eventfd.drain();
        }
    }

    /// The helper saw the futex word move: wakes the descriptor unless the reader has read
    /// every record published (`read_through(position)`: the log's end against a read
    /// position, `AppendSignal::read_through`).
    fn noticed(&self, read_through: impl Fn(u64) -> bool) {
        if read_through(self.read.load(Ordering::SeqCst)) {
            return;
        }
        self.wake();
        // A poll may have drained the log between our check and our `pending` store (its
        // `drained` then found nothing to undo): nothing waits, so undo the wake-up. Only
        // one of this and a reset gets `pending` and drains.
        if read_through(self.read.load(Ordering::SeqCst)) && self.pending.swap(false, Ordering::AcqRel) {
            self.eventfd.drain();
        }
    }

    /// A poll left the log drained at read position `position`.
    fn drained(&self, position: u64, read_through: impl Fn(u64) -> bool) {
        // SeqCst: see `wake`.
        self.read.store(position, Ordering::SeqCst);
        // The helper may have woken the descriptor before it could see the store above:
        // undo it, unless records came since (then wake again).
        if self.pending.load(Ordering::SeqCst) {
            self.reset();
            if !read_through(position) {
                self.wake();
            }
        }
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
    /// `position`: the reader's position in the log now (`Client::read_position`).
    pub fn start(
        signal: AppendSignal,
        control_fd: RawFd,
        position: u64,
        pending: impl FnOnce() -> bool,
    ) -> std::io::Result<GroupWake> {
        let shared = Arc::new(Shared::new(position)?);
        let signal = Arc::new(signal);
        // Read before the first wake-up: an append after this read changes the word, which
        // the helper sees; whatever came before is covered by the first wake-up below.
        let seen = signal.value();
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
        self.shared.reset();
    }

    /// A read left the log drained with the reader at `position` (`Client::read_position`):
    /// the descriptor is not readable for the records before it, whenever the helper
    /// notices their append.
    pub fn drained(&self, position: u64) {
        self.shared.drained(position, |p| self.signal.read_through(p));
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
            shared.noticed(|p| signal.read_through(p));
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// A stand-in for the log's published end (`LogEnd`, tested against a real log in
    /// tutti-wire): the daemon's append moves it, then the futex word moves.
    struct End(AtomicU64);

    impl End {
        fn read_through(&self, position: u64) -> bool {
            self.0.load(Ordering::SeqCst) <= position
        }
        fn append(&self) {
            self.0.fetch_add(64, Ordering::SeqCst);
        }
        fn now(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn readable(s: &Shared) -> bool {
        let mut revents = Vec::new();
        tutti_sys::poll_readable(&[s.eventfd.fd().as_raw_fd()], &mut revents, Some(Duration::ZERO))
            .expect("poll");
        revents.first().is_some_and(|r| *r & tutti_sys::POLLIN != 0)
    }

    /// The race of `fd_idle_after_drain` (docs/cpg.md), each step forced in turn: the
    /// daemon appends; the reader reads the record and leaves the log drained; only then
    /// does the daemon bump the futex word and the helper notice it. The descriptor must
    /// stay idle. (With the futex word as the only evidence it went readable: the word a
    /// drained poll read was the one before the bump.)
    #[test]
    fn a_wake_up_for_records_already_read_leaves_the_descriptor_idle() {
        let end = End(AtomicU64::new(0));
        let s = Shared::new(end.now()).unwrap();
        end.append();
        // The reader: resets, reads the record, finds the log drained at the end.
        s.reset();
        s.drained(end.now(), |p| end.read_through(p));
        // The daemon's bump, noticed by the helper.
        s.noticed(|p| end.read_through(p));
        assert!(!readable(&s), "readable for a record already read");

        // A new record: the wake-up is news.
        end.append();
        s.noticed(|p| end.read_through(p));
        assert!(readable(&s), "a record waits");
        s.reset();
        assert!(!readable(&s));
    }

    /// The other orders of the same steps: the helper first (readable, then the read that
    /// drains the log makes it idle again), and a read that drains the log after the
    /// helper's wake-up without resetting first (undone by the read, unless a record came
    /// after it).
    #[test]
    fn every_order_of_append_read_and_notice_ends_idle_once_all_is_read() {
        // Helper first, then the reader.
        let end = End(AtomicU64::new(0));
        let s = Shared::new(0).unwrap();
        end.append();
        s.noticed(|p| end.read_through(p));
        assert!(readable(&s));
        s.reset();
        s.drained(end.now(), |p| end.read_through(p));
        assert!(!readable(&s));

        // The helper woke the descriptor; before it checks again, a poll that did not reset
        // (it read through a 0-event limit, say) drains the log: `drained` undoes it.
        end.append();
        s.wake();
        s.drained(end.now(), |p| end.read_through(p));
        assert!(!readable(&s), "undone by the read");

        // The same, with a record appended after the read: the descriptor stays readable.
        end.append();
        s.wake();
        let at = end.now();
        end.append();
        s.drained(at, |p| end.read_through(p));
        assert!(readable(&s), "a record came after the read");
        s.reset();
        s.drained(end.now(), |p| end.read_through(p));
        assert!(!readable(&s));
    }
}
