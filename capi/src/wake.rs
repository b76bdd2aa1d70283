//! A group's pollable descriptor (`tutti_fd`): an eventfd that a helper thread makes
//! readable when the daemon appends to the group's delivery log, which it learns by
//! sleeping on the group's futex (the daemon wakes futex sleepers, not descriptors).
//!
//! Readiness is a log-position check, made under one lock by both sides: the descriptor is
//! readable (`pending`) only while the log may hold records past `read`, the position at
//! which the last read left the log drained. The helper, when the futex word moves, compares
//! the log's published end (`AppendSignal::read_through`; the daemon publishes the end before
//! it bumps the word, so it covers every append the word counts) with `read` and wakes the
//! descriptor only if something is unread; a read that drains the log stores its position and
//! clears a wake-up whose records it has read. A wake-up for records already read is thus
//! never reported, whenever the helper or the daemon's bump runs (the daemon descheduled
//! between its append and its bump, or the helper noticing late).
//!
//! Why a lock and not atomics: with the check and the eventfd write as two steps of the
//! helper, a helper descheduled between them (after a read had drained the log, or in the
//! middle of its own undo) left the descriptor readable for the whole of the application's
//! next dispatch: `fd_idle_after_drain` failed in 4 of 16 `cpg_api` runs under load with
//! atomics only. Both critical sections are a comparison and at most one eventfd read or
//! write; the reader waits only if the helper is descheduled inside one.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;
use tutti_client::AppendSignal;
use tutti_sys::EventFd;

/// How often an idle helper checks that the daemon has not hung up (and the longest a
/// leave or close waits for the helper to notice that it should stop).
const HANGUP_CHECK: Duration = Duration::from_millis(200);

/// What the descriptor says, changed by the helper and the reader under the lock.
struct Readiness {
    /// The eventfd is non-zero.
    pending: bool,
    /// The reader's position when a read last left the log drained: every record before it
    /// was read.
    read: u64,
}

struct Shared {
    eventfd: EventFd,
    readiness: Mutex<Readiness>,
    /// The daemon hung up: the descriptor stays readable from now on.
    gone: AtomicBool,
    stop: AtomicBool,
}

impl Shared {
    fn new(read: u64) -> std::io::Result<Shared> {
        Ok(Shared {
            eventfd: EventFd::new()?,
            readiness: Mutex::new(Readiness { pending: false, read }),
            gone: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        })
    }

    /// Nothing panics while holding the lock; if something did, the state is still a
    /// pair of plain values.
    fn lock(&self) -> MutexGuard<'_, Readiness> {
        self.readiness.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake(&self, r: &mut Readiness) {
        if !r.pending {
            self.eventfd.notify();
            r.pending = true;
        }
    }

    fn clear(&self, r: &mut Readiness) {
        if r.pending && !self.gone.load(Ordering::Acquire) {
            self.eventfd.drain();
            r.pending = false;
        }
    }

    /// Before a read: makes the descriptor unreadable again (unless the daemon is gone).
    /// Costs a system call only when it was readable.
    fn reset(&self) {
        self.clear(&mut self.lock());
    }

    /// The helper saw the futex word move: wakes the descriptor unless the reader has read
    /// every record published (`read_through(position)`: the log's end against a read
    /// position, `AppendSignal::read_through`).
    fn noticed(&self, read_through: impl Fn(u64) -> bool) {
        let mut r = self.lock();
        if !read_through(r.read) {
            self.wake(&mut r);
        }
    }

    /// A read left the log drained at read position `position`: a wake-up for records
    /// before it is cleared; one for records since stays.
    fn drained(&self, position: u64, read_through: impl Fn(u64) -> bool) {
        let mut r = self.lock();
        r.read = position;
        if read_through(position) {
            self.clear(&mut r);
        }
    }

    /// The daemon hung up: readable for good.
    fn hung_up(&self) {
        let mut r = self.lock();
        self.gone.store(true, Ordering::Release);
        self.eventfd.notify();
        r.pending = true;
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
            shared.wake(&mut shared.lock());
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
            shared.hung_up();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::mpsc;

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
    /// drained read saw was the one before the bump.)
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

    /// The other orders: the helper first (readable; the read that drains the log makes it
    /// idle again, with or without a reset before it), and a record appended after the read
    /// (the descriptor stays readable for it).
    #[test]
    fn every_order_of_append_read_and_notice_ends_idle_once_all_is_read() {
        let end = End(AtomicU64::new(0));
        let s = Shared::new(0).unwrap();
        end.append();
        s.noticed(|p| end.read_through(p));
        assert!(readable(&s));
        s.reset();
        s.drained(end.now(), |p| end.read_through(p));
        assert!(!readable(&s));

        // Woken, then a read that did not reset first (a read of 0 events) drains the log.
        end.append();
        s.noticed(|p| end.read_through(p));
        s.drained(end.now(), |p| end.read_through(p));
        assert!(!readable(&s), "cleared by the read");

        // Woken, read, and a record appended after the read: it stays readable.
        end.append();
        s.noticed(|p| end.read_through(p));
        let at = end.now();
        end.append();
        s.drained(at, |p| end.read_through(p));
        assert!(readable(&s), "a record came after the read");
        s.reset();
        s.drained(end.now(), |p| end.read_through(p));
        assert!(!readable(&s));
    }

    /// The case atomics did not close (4 of 16 `cpg_api` runs under load): the helper
    /// decides to wake, then is descheduled before its eventfd write while the reader
    /// drains the log. The helper here stops inside its check (after deciding "unread")
    /// until the reader's `drained` has been called from another thread, or 200 ms. In
    /// whichever order the two then run, the descriptor ends idle.
    #[test]
    fn a_helper_descheduled_between_its_check_and_its_wake_up_leaves_it_idle() {
        for _ in 0..20 {
            let end = Arc::new(End(AtomicU64::new(0)));
            let s = Arc::new(Shared::new(0).unwrap());
            end.append();
            let (decided_tx, decided_rx) = mpsc::channel();
            let (go_tx, go_rx) = mpsc::channel::<()>();
            let helper = {
                let (s, end) = (Arc::clone(&s), Arc::clone(&end));
                std::thread::spawn(move || {
                    s.noticed(|p| {
                        let unread = end.read_through(p);
                        decided_tx.send(()).unwrap();
                        let _ = go_rx.recv_timeout(Duration::from_millis(200));
                        unread
                    })
                })
            };
            decided_rx.recv().unwrap();
            // The reader read the record meanwhile and drains (it waits for the helper's
            // critical section, if it must).
            let reader = {
                let (s, end) = (Arc::clone(&s), Arc::clone(&end));
                std::thread::spawn(move || s.drained(end.now(), |p| end.read_through(p)))
            };
            let _ = go_tx.send(());
            helper.join().unwrap();
            reader.join().unwrap();
            assert!(!readable(&s), "readable for a record already read");
        }
    }
}
