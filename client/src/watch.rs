//! A descriptor that turns readable when the daemon appends to a subscribed group's log
//! ([`Client::watch`]), for poll loops (the C API's `tutti_fd`, libcpg's `cpg_fd_get`). The
//! daemon's shard makes it readable itself, through a watch word in a page shared with this
//! client only (`tutti_wire::shm::Watch`): no thread of the client's sits in between, and
//! the daemon pays a system call only when the reader waits. `docs/internals.md`,
//! "Descriptors".

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tutti_sys::{Mapping, WakeDrain};
use tutti_wire::shm::{Disarm, Watch};

use crate::{Client, Error, GroupId};

/// How long a reader waits for a shard that is inside its send (between taking the watch
/// word and making the descriptor readable: two instructions and a `send`, unless it is
/// descheduled). Beyond it the reader reads on; the wake-up may then come after the read
/// (a spurious readiness, which the contract allows).
const CLAIMED_WAIT: Duration = Duration::from_millis(100);
/// Longest sleep on the sleeper word at a time (a daemon of before the word never wakes it).
const CLAIMED_SLEEP: Duration = Duration::from_millis(1);

/// How long [`Client::check_watch`] waits for the session's socket to close after the
/// shard closed its end of a descriptor.
pub const HANG_UP_WAIT: Duration = Duration::from_secs(1);

/// A reader that drains the log one call at a time (libcpg) often disarms a quiet watch
/// and then finds nothing, without having waited on the descriptor: only one such read in
/// this many pays the `recv` that tells a hang-up (a reader woken by one makes a few
/// empty reads before it hears of it).
pub const HANG_UP_CHECK_EVERY: u32 = 8;

/// A group's descriptor (from [`Client::watch`]). Protocol: [`before_read`] before every
/// read of the group's log, [`Client::watch_drained`] after it; wait on [`fd`] only after
/// `watch_drained` said `true`. After a read that found nothing, [`Client::check_watch`].
/// One reader at a time: the calls go with the client's reads of the group.
///
/// [`before_read`]: GroupWatch::before_read
/// [`fd`]: GroupWatch::fd
pub struct GroupWatch {
    group: GroupId,
    fd: OwnedFd,
    watch: Watch,
    /// The word was armed by this reader and not disarmed since.
    armed: AtomicBool,
    /// The last `before_read` found the word still armed: nobody fired, so a readable
    /// descriptor that brought nothing means a hang-up (checked by `hung_up`).
    quiet: AtomicBool,
    /// Reads that found nothing after a quiet disarm: one in [`HANG_UP_CHECK_EVERY`]
    /// looks for a hang-up.
    quiet_empty: AtomicU32,
    /// The daemon closed its end: readable for good.
    gone: AtomicBool,
    _page: Mapping,
}

impl GroupWatch {
    /// The descriptor to poll for `POLLIN`. Owned by this value: do not read or close it.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The group it watches.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// Whether the daemon closed its end of the descriptor (it left the group, ended the
    /// session or died): the descriptor stays readable. Confirm with
    /// [`Client::check_alive`]. Call it after a read that found nothing, before
    /// [`Client::watch_drained`]: if that read came while the watch was armed and nobody
    /// had fired it, the descriptor can only have been readable for a hang-up. One `recv`
    /// then (for one such read in [`HANG_UP_CHECK_EVERY`]); none otherwise, and none while
    /// armed, whose wake-up it must not take.
    pub fn hung_up(&self) -> bool {
        if self.gone.load(Ordering::Relaxed) {
            return true;
        }
        if self.armed.load(Ordering::Relaxed) || !self.quiet.load(Ordering::Relaxed) {
            return false;
        }
        self.quiet.store(false, Ordering::Relaxed);
        let n = self.quiet_empty.load(Ordering::Relaxed);
        self.quiet_empty.store(n.wrapping_add(1), Ordering::Relaxed);
        if n.is_multiple_of(HANG_UP_CHECK_EVERY) && tutti_sys::wake_drain(&self.fd) == WakeDrain::HungUp {
            self.gone.store(true, Ordering::Relaxed);
        }
        self.gone.load(Ordering::Relaxed)
    }

    /// Before reading the group's log: takes back the arming, and makes the descriptor
    /// unreadable again if the daemon made it readable. No system call unless it did.
    pub fn before_read(&self) {
        // The flags are this reader's own (one thread reads a group at a time): plain
        // loads and stores, no locked instruction on the path of every read.
        self.quiet.store(false, Ordering::Relaxed);
        if !self.armed.load(Ordering::Relaxed) {
            return;
        }
        self.armed.store(false, Ordering::Relaxed);
        // The clock is read only once the daemon is seen sending (a read per call was 6 %
        // of a flooding CPG sender's time).
        let mut started = None;
        let mut spins = 0u32;
        let mut tried_take = false;
        loop {
            match self.watch.disarm() {
                Disarm::Quiet => {
                    self.quiet.store(true, Ordering::Relaxed);
                    return;
                }
                Disarm::Fired => break,
                Disarm::Claimed if started.get_or_insert_with(Instant::now).elapsed() >= CLAIMED_WAIT => {
                    break
                }
                Disarm::Claimed => {
                    spins += 1;
                    if spins < 64 {
                        std::hint::spin_loop();
                    } else if !tried_take {
                        // The shard's send woke us and may have preempted it before its
                        // `fired`: if the wake-up is in the descriptor, its send is done;
                        // take the word back and read on (no sleep, no wait for the
                        // shard's CPU). Empty: it has not sent yet; wait for it below.
                        tried_take = true;
                        match tutti_sys::wake_drain(&self.fd) {
                            WakeDrain::Empty => {}
                            WakeDrain::Woken => {
                                self.watch.take_claim();
                                return;
                            }
                            WakeDrain::HungUp => {
                                self.gone.store(true, Ordering::Relaxed);
                                return;
                            }
                        }
                    } else {
                        // The shard's send woke us, and it may be waiting for this CPU to
                        // store `fired`: sleep until its `fired` wakes us (a yield would
                        // let it run its whole pass first; tutti_wire::shm::watch).
                        if self.watch.sleep_if_claimed() == Disarm::Claimed {
                            tutti_sys::futex_wait(self.watch.sleeper(), 1, CLAIMED_SLEEP);
                        }
                        self.watch.slept();
                    }
                }
            }
        }
        if tutti_sys::wake_drain(&self.fd) == WakeDrain::HungUp {
            self.gone.store(true, Ordering::Relaxed);
        }
    }
}

impl Client {
    /// A descriptor that turns readable (`POLLIN`) when the daemon appends to `group`'s
    /// log past where this client reads now (needs the subscribe right). Readable at once
    /// if records already wait. Asking again replaces the earlier descriptor (which then
    /// reads as hung up).
    pub fn watch(&mut self, group: GroupId) -> Result<GroupWatch, Error> {
        let (handle, position) = (
            self.group(group)?.handle,
            self.subscription(group)?.reader.position(),
        );
        let mut fds = Vec::new();
        match self.call(
            &tutti_wire::control::Request::Watch { handle, position },
            &mut fds,
        )? {
            tutti_wire::control::Reply::Done => {}
            other => return Err(crate::unexpected(other)),
        }
        let [end, page]: [OwnedFd; 2] = fds
            .try_into()
            .map_err(|_| Error::Protocol("a watch came without its two descriptors".into()))?;
        let page = crate::map_exact(&page, tutti_wire::shm::WATCH_LEN, true)?;
        // SAFETY: a live read-write mapping of the whole page, kept in the GroupWatch beside
        // the Watch (and dropped after it).
        let watch = unsafe { Watch::attach(page.as_ptr(), page.len()) }
            .map_err(|e| Error::SharedMemory(e.to_string()))?;
        Ok(GroupWatch {
            group,
            fd: end,
            watch,
            // The daemon armed it at `position` for us.
            armed: AtomicBool::new(true),
            quiet: AtomicBool::new(false),
            quiet_empty: AtomicU32::new(0),
            gone: AtomicBool::new(false),
            _page: page,
        })
    }

    /// After a read of `watch`'s group that found nothing, before
    /// [`watch_drained`](Self::watch_drained): `DaemonGone` if the descriptor was hung up
    /// and the session's socket closes too. A daemon that stops closes the shard's end
    /// first, and its process may take a moment before the session's socket follows: this
    /// waits for it, at most [`HANG_UP_WAIT`].
    pub fn check_watch(&mut self, watch: &GroupWatch) -> Result<(), Error> {
        if !watch.hung_up() {
            return Ok(());
        }
        let mut revents = Vec::with_capacity(1);
        let _ = tutti_sys::poll_readable(&[self.control_fd()], &mut revents, Some(HANG_UP_WAIT));
        self.check_alive()
    }

    /// After a read of `watch`'s group: if the log is drained, arms the watch and returns
    /// `true` (wait on the descriptor now: the daemon makes it readable at its next
    /// append); `false` if a record waits (read on, and call this again after).
    pub fn watch_drained(&self, watch: &GroupWatch) -> Result<bool, Error> {
        let sub = self.subscription(watch.group)?;
        if sub.reader.has_data() {
            return Ok(false);
        }
        if watch.armed.load(Ordering::Relaxed) {
            return Ok(true);
        }
        // arm fences: either this re-check sees a record appended meanwhile, or the shard's
        // claim after that append sees the word armed.
        watch.watch.arm(sub.reader.position());
        watch.armed.store(true, Ordering::Relaxed);
        if sub.reader.has_data() {
            watch.before_read();
            return Ok(false);
        }
        Ok(true)
    }
}
