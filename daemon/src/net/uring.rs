//! The io_uring back end. Sends: `queue` copies a datagram into a slot of a send slab
//! (payload, address, `msghdr`, `iovec`), `flush` submits one `SendMsg` per slot in one
//! system call (none with SQPOLL while its thread is awake), and the slot returns to the
//! free list when its completion arrives. With `net.gso`, consecutive queued datagrams to
//! one destination and of one length (the last may be shorter) go as one `SendMsg` with
//! `UDP_SEGMENT` (generic segmentation offload): the kernel builds and routes one large
//! packet and cuts it into the datagrams late (on loopback, at the receiving socket), so
//! its per-datagram work is paid once per run; the receiver sees ordinary datagrams. Receives: one multishot `RecvMsg` drawing from a
//! registered ring of provided buffers where the kernel has them (6.0+), else a pool of
//! pre-posted `RecvMsg`s, one per slot. `wait` submits and waits with a timeout, with a
//! one-shot `PollAdd` on the shard's eventfd.
//!
//! All `unsafe` of the transport's io_uring use is in this module. The rule that makes it
//! sound: every buffer, `msghdr` and `iovec` the kernel may touch is a heap allocation
//! owned by the transport that is neither moved, freed nor reused while a request that
//! names it is in flight. `Drop` cancels every request and waits for the completions; if
//! they do not all come, it leaks the buffers rather than free memory the kernel may write.

use super::config::NetConfig;
use super::socket::{bind_udp, check_send, parse_sockaddr, RawAddr, RAW_ADDR_LEN};
use super::{NetStats, SendError, Transport, SEND_QUEUE_BATCHES};
use io_uring::types::{BufRingEntry, CancelBuilder, Fd, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, IoUring};
use socket2::Socket;
use std::alloc::Layout;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// Receive buffers (multishot) or posted receives (pool) per configured batch.
const RECV_BUFFERS_PER_BATCH: usize = 4;
/// Provided-buffer group id of the receive ring (one ring per io_uring, so any id works).
const BUFFER_GROUP: u16 = 0;
/// How long the SQPOLL thread spins without work before it sleeps (then a submission
/// costs one wake-up system call).
const SQPOLL_IDLE_MS: u32 = 50;
/// How long `Drop` waits for cancelled requests to complete before leaking their buffers.
const DROP_DRAIN: Duration = Duration::from_secs(1);
/// Size of the header the kernel writes before each multishot `RecvMsg` payload.
const RECVMSG_OUT_LEN: usize = 16;

/// Datagrams one segmentation-offload send carries at most (the kernel's
/// `UDP_MAX_SEGMENTS` is 64 on the kernels that have `UDP_SEGMENT`).
const GSO_MAX_SEGMENTS: usize = 64;
/// Payload bytes of one segmentation-offload send at most (one IPv4 packet's).
const GSO_MAX_BYTES: usize = 65_507;
/// `setsockopt`/cmsg type of `SOL_UDP` for the segment size (linux/udp.h).
const UDP_SEGMENT: libc::c_int = 103;
/// `setsockopt`/cmsg type of `SOL_UDP` for receive offload (linux/udp.h): the socket takes
/// coalesced datagrams, each receive saying their segment size in a cmsg (an `int`).
const UDP_GRO: libc::c_int = 104;
/// Control bytes a receive with `UDP_GRO` may carry: `CMSG_SPACE(sizeof(int))`.
const GRO_CMSG_SPACE: usize = std::mem::size_of::<libc::cmsghdr>() + 8;
/// Largest coalesced receive: one IPv4 UDP payload.
const GRO_MAX_BYTES: usize = 65_535;
/// Receive buffers of the multishot ring with `UDP_GRO` on (each of 64 KiB; a coalesced
/// receive carries up to 64 datagrams, so fewer are needed).
const GRO_RECV_BUFFERS: usize = 64;
/// A `UDP_SEGMENT` control message: the header, then the segment size (`CMSG_SPACE(2)`
/// bytes in all).
#[repr(C)]
#[derive(Clone, Copy)]
struct GsoCmsg {
    header: libc::cmsghdr,
    segment: u16,
    _pad: [u8; 6],
}

impl GsoCmsg {
    /// `CMSG_LEN(2)`: the header and the two bytes of the segment size.
    const LEN: usize = std::mem::size_of::<libc::cmsghdr>() + 2;
}
const _: () = assert!(std::mem::size_of::<GsoCmsg>() == std::mem::size_of::<libc::cmsghdr>() + 8);

/// No next slot in a send's chain.
const CHAIN_END: u32 = u32::MAX;

/// Request kinds, in the top 16 bits of `user_data`; the low bits carry a slot index (or
/// the wake descriptor).
const TAG_SHIFT: u32 = 48;
const TAG_SEND: u64 = 1;
const TAG_RECV_MULTI: u64 = 2;
const TAG_RECV_POOL: u64 = 3;
const TAG_WAKE: u64 = 4;
const TAG_OTHER: u64 = 5;

fn user_data(tag: u64, index: u64) -> u64 {
    (tag << TAG_SHIFT) | index
}

fn split_user_data(ud: u64) -> (u64, u64) {
    (ud >> TAG_SHIFT, ud & ((1 << TAG_SHIFT) - 1))
}

/// How the receive side is fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvMode {
    /// One multishot `RecvMsg` over a registered provided-buffer ring (Linux 6.0+).
    Multishot,
    /// `RECV_BUFFERS_PER_BATCH * batch` single `RecvMsg`s, each re-posted after delivery.
    Pool,
}

/// What the transport found the kernel to support, for logs and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UringFeatures {
    pub recv: RecvMode,
    pub sqpoll: bool,
    /// `IORING_SETUP_COOP_TASKRUN | TASKRUN_FLAG`: completions are run on our next system
    /// call instead of interrupting the thread.
    pub coop_taskrun: bool,
}

/// Why `try_open` failed.
#[derive(Debug)]
pub(crate) enum OpenFailure {
    /// The kernel refused to set up an io_uring (disabled, filtered, too old).
    Refused(io::Error),
    /// Anything else.
    Failed(io::Error),
}

/// One send slot: the `msghdr` points at the `iovec` and address beside it, the `iovec` at
/// the slot's part of `send_buf`.
struct SendSlot {
    hdr: libc::msghdr,
    iov: libc::iovec,
    addr: RawAddr,
}

/// One posted single-shot receive of the pool.
struct RecvSlot {
    hdr: libc::msghdr,
    iov: libc::iovec,
    addr: RawAddr,
}

/// A completion the receive path has not handled yet (its buffer is still the kernel's
/// gift to us, not yet returned).
#[derive(Clone, Copy)]
struct Completion {
    tag: u64,
    index: u64,
    result: i32,
    flags: u32,
}

/// The provided-buffer ring: `count` entries in page-aligned memory shared with the
/// kernel, each naming one `buf_size` slice of `bufs`.
struct BufRing {
    entries: *mut BufRingEntry,
    layout: Layout,
    count: u16,
    /// Our copy of the tail; published to the kernel by `publish`.
    tail: u16,
    bufs: Box<[u8]>,
    buf_size: usize,
    /// Template for the multishot receive: only `msg_namelen` and `msg_controllen` count.
    hdr: Box<libc::msghdr>,
    /// Buffers the kernel holds (not yet handed to us).
    with_kernel: usize,
    registered: bool,
    /// Set when the kernel may still use the memory: then Drop leaks it.
    leak: bool,
}

impl BufRing {
    fn new(count: u16, buf_size: usize) -> BufRing {
        let layout = Layout::from_size_align(
            (count as usize * std::mem::size_of::<BufRingEntry>()).max(4096),
            4096,
        )
        .expect("buffer ring layout");
        // SAFETY: the layout has a non-zero size.
        let entries = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<BufRingEntry>();
        if entries.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        // SAFETY: all-zero is a valid msghdr (null pointers, zero lengths).
        let mut hdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        hdr.msg_namelen = RAW_ADDR_LEN as libc::socklen_t;
        BufRing {
            entries,
            layout,
            count,
            tail: 0,
            bufs: vec![0; count as usize * buf_size].into_boxed_slice(),
            buf_size,
            hdr,
            with_kernel: 0,
            registered: false,
            leak: false,
        }
    }

    /// Puts buffer `bid` back at the tail (visible to the kernel after `publish`).
    fn push(&mut self, bid: u16) {
        debug_assert!(bid < self.count);
        let slot = (self.tail & (self.count - 1)) as usize;
        let addr = self.bufs.as_ptr() as u64 + bid as u64 * self.buf_size as u64;
        // SAFETY: slot < count, inside the allocation. The kernel reads only entries between
        // its head and the published tail; this one is at the unpublished tail, so nobody
        // else reads it now. The setters leave `resv` (entry 0's is the tail) alone.
        let entry = unsafe { &mut *self.entries.add(slot) };
        entry.set_addr(addr);
        entry.set_len(self.buf_size as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        self.with_kernel += 1;
    }

    /// Publishes the tail: a release store, so the kernel sees the entries written before it.
    fn publish(&self) {
        // SAFETY: `entries` is the ring's base, its entry 0 initialised (zeroed); the tail
        // is a naturally aligned u16 the kernel reads with an acquire load.
        unsafe {
            let tail = BufRingEntry::tail(self.entries).cast::<AtomicU16>();
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    fn buffer(&self, bid: u16, len: usize) -> &[u8] {
        let at = bid as usize * self.buf_size;
        &self.bufs[at..at + len.min(self.buf_size)]
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.leak {
            std::mem::forget(std::mem::take(&mut self.bufs));
            return;
        }
        // SAFETY: allocated in `new` with this layout; the kernel no longer uses it
        // (unregistered or never registered, and no request in flight).
        unsafe { std::alloc::dealloc(self.entries.cast(), self.layout) };
    }
}

struct RecvPool {
    slots: Box<[RecvSlot]>,
    bufs: Box<[u8]>,
    /// max_datagram + 1: a datagram that fills it was truncated.
    buf_size: usize,
    /// Slots whose receive is not posted (delivered, waiting to be re-posted).
    idle: Vec<u32>,
    posted: usize,
}

impl RecvPool {
    fn new(count: usize, max_datagram: usize) -> RecvPool {
        let slots = (0..count)
            .map(|_| RecvSlot {
                // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
                hdr: unsafe { std::mem::zeroed() },
                // SAFETY: an all-zero iovec is valid (a null base, zero length).
                iov: unsafe { std::mem::zeroed() },
                addr: RawAddr::ZERO,
            })
            .collect();
        RecvPool {
            slots,
            bufs: vec![0; count * (max_datagram + 1)].into_boxed_slice(),
            buf_size: max_datagram + 1,
            idle: (0..count as u32).rev().collect(),
            posted: 0,
        }
    }
}

pub struct UringTransport {
    ring: IoUring,
    socket: Socket,
    local: SocketAddr,
    max_datagram: usize,
    /// Receive buffers (multishot) or posted receives (pool).
    recv_count: usize,
    features: UringFeatures,
    send_slots: Box<[SendSlot]>,
    send_buf: Box<[u8]>,
    send_free: Vec<u32>,
    /// Filled slots not yet submitted, in queue order.
    send_pending: VecDeque<u32>,
    send_in_flight: usize,
    /// Segmentation offload on (`net.gso`; turned off for good if the kernel refuses it).
    gso: bool,
    /// Receive offload on (`net.gro`, with the multishot ring only): receives may carry
    /// several datagrams, cut by the segment size in their control message.
    gro: bool,
    /// Per slot, the next slot of the send it heads or belongs to (`CHAIN_END` last): the
    /// completion of a send frees its whole chain.
    send_next: Box<[u32]>,
    /// Per slot, `GSO_MAX_SEGMENTS` iovecs: a send headed by the slot names the datagrams'
    /// buffers in its part.
    gso_iov: Box<[libc::iovec]>,
    /// Per slot, the `UDP_SEGMENT` control message of a send it heads (8-aligned).
    gso_cmsg: Box<[GsoCmsg]>,
    buf_ring: Option<BufRing>,
    multishot_armed: bool,
    pool: Option<RecvPool>,
    /// Receive completions taken off the completion queue (by `queue` or `wait`) that
    /// `recv` has not delivered yet. Bounded by the receive buffers plus a few.
    stash: VecDeque<Completion>,
    /// The descriptor a `PollAdd` is in flight for.
    wake_armed: Option<RawFd>,
    wake_fired: bool,
    stats: NetStats,
    /// The datagrams of a coalesced receive that a call's `max` left undelivered (its buffer
    /// stays ours until they are).
    gro_rest: Option<GroRest>,
}

/// What is left of a coalesced receive: datagrams of `segment` bytes (the last may be
/// shorter) in `ring.bufs[start..end]`, from `from`, in buffer `bid`.
#[derive(Clone, Copy)]
struct GroRest {
    bid: u16,
    from: SocketAddr,
    start: usize,
    end: usize,
    segment: usize,
}

/// Hands on up to `budget` datagrams of a coalesced receive; returns how many, and what is
/// left (None: the buffer may go back to the kernel).
fn cut_coalesced(
    ring: &BufRing,
    mut rest: GroRest,
    budget: usize,
    max_datagram: usize,
    stats: &mut NetStats,
    f: &mut dyn FnMut(SocketAddr, &[u8]),
) -> (usize, Option<GroRest>) {
    let mut delivered = 0;
    while delivered < budget && rest.start < rest.end {
        let end = rest.end.min(rest.start + rest.segment);
        let d = ring.bufs.get(rest.start..end).unwrap_or(&[]);
        rest.start = end;
        if d.len() > max_datagram {
            stats.truncated += 1;
            continue;
        }
        f(rest.from, d);
        stats.received += 1;
        delivered += 1;
    }
    (delivered, (rest.start < rest.end).then_some(rest))
}

// SAFETY: the raw pointers inside (msghdr/iovec fields, the buffer ring) point only into
// heap memory owned by this struct; the struct moves between threads as a whole and is
// used by one thread at a time (`&mut self`). io_uring itself allows a ring to be used from
// another thread than the one that created it (no SINGLE_ISSUER).
unsafe impl Send for UringTransport {}

impl UringTransport {
    /// Opens shard `shard`'s socket on an io_uring, with the best receive mode the kernel has.
    pub fn open(config: &NetConfig, shard: usize) -> io::Result<UringTransport> {
        Self::open_with(config, shard, None)
    }

    /// As `open`, forcing a receive mode (tests use it to cover the pool on new kernels).
    pub fn open_with(config: &NetConfig, shard: usize, recv: Option<RecvMode>) -> io::Result<UringTransport> {
        Self::try_open(config, shard, recv).map_err(|e| match e {
            OpenFailure::Refused(e) | OpenFailure::Failed(e) => e,
        })
    }

    /// As `open_with`, telling a kernel that refuses io_uring apart from other failures
    /// (a port in use), which falling back to epoll would not cure.
    pub(crate) fn try_open(
        config: &NetConfig,
        shard: usize,
        recv: Option<RecvMode>,
    ) -> Result<UringTransport, OpenFailure> {
        config
            .validate()
            .map_err(|e| OpenFailure::Failed(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let batch = config.batch;
        let send_count = batch * SEND_QUEUE_BATCHES;
        let recv_count = (batch * RECV_BUFFERS_PER_BATCH)
            .next_power_of_two()
            .clamp(8, 32_768);
        let sq_entries = (send_count + recv_count + 8).next_power_of_two() as u32;
        let cq_entries = 2 * (send_count + recv_count + 8).next_power_of_two() as u32;
        let (ring, sqpoll, coop_taskrun) =
            build_ring(sq_entries, cq_entries, config.sqpoll).map_err(OpenFailure::Refused)?;
        let (socket, local) = bind_udp(config, shard, true).map_err(OpenFailure::Failed)?;

        let max = config.max_datagram;
        let send_slots: Box<[SendSlot]> = (0..send_count)
            .map(|_| SendSlot {
                // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
                hdr: unsafe { std::mem::zeroed() },
                // SAFETY: an all-zero iovec is valid (a null base, zero length).
                iov: unsafe { std::mem::zeroed() },
                addr: RawAddr::ZERO,
            })
            .collect();
        let mut t = UringTransport {
            ring,
            socket,
            local,
            max_datagram: max,
            recv_count,
            features: UringFeatures {
                recv: RecvMode::Pool,
                sqpoll,
                coop_taskrun,
            },
            send_slots,
            send_buf: vec![0; send_count * max].into_boxed_slice(),
            send_free: (0..send_count as u32).rev().collect(),
            send_pending: VecDeque::with_capacity(send_count),
            send_in_flight: 0,
            gso: config.gso,
            gro: false,
            send_next: vec![CHAIN_END; send_count].into_boxed_slice(),
            // SAFETY: an all-zero iovec is valid (a null base, zero length).
            gso_iov: vec![unsafe { std::mem::zeroed::<libc::iovec>() }; send_count * GSO_MAX_SEGMENTS]
                .into_boxed_slice(),
            // SAFETY: all-zero is a valid cmsghdr and segment (plain integers).
            gso_cmsg: vec![unsafe { std::mem::zeroed::<GsoCmsg>() }; send_count].into_boxed_slice(),
            buf_ring: None,
            multishot_armed: false,
            pool: None,
            stash: VecDeque::with_capacity(recv_count + 8),
            wake_armed: None,
            wake_fired: false,
            stats: NetStats::default(),
            gro_rest: None,
        };
        // Receive offload needs buffers that hold a coalesced receive (the pool's hold one
        // datagram): with the multishot ring only.
        let gro = config.gro && recv != Some(RecvMode::Pool) && t.set_gro(true);
        let (ring_count, ring_size) = if gro {
            (
                GRO_RECV_BUFFERS.min(recv_count),
                RECVMSG_OUT_LEN + RAW_ADDR_LEN + GRO_CMSG_SPACE + GRO_MAX_BYTES,
            )
        } else {
            (recv_count, RECVMSG_OUT_LEN + RAW_ADDR_LEN + max)
        };
        if recv != Some(RecvMode::Pool) {
            match t.register_buf_ring(ring_count as u16, ring_size) {
                Ok(()) => {
                    t.features.recv = RecvMode::Multishot;
                    if gro {
                        t.gro = true;
                        if let Some(ring) = &mut t.buf_ring {
                            ring.hdr.msg_controllen = GRO_CMSG_SPACE as _;
                        }
                    }
                }
                Err(e) if recv == Some(RecvMode::Multishot) => return Err(OpenFailure::Failed(e)),
                Err(e) => {
                    tracing::info!(%local, "io_uring provided-buffer ring refused ({e}); using posted receives")
                }
            }
        }
        if t.features.recv == RecvMode::Pool {
            if gro {
                t.set_gro(false);
            }
            t.pool = Some(RecvPool::new(recv_count, max));
        }
        // Receives are posted by the first `recv` or `wait`, not here: io_uring runs a
        // request's completion work on the thread that submitted it, which must be the
        // shard thread, not the one that opened the transport.
        tracing::debug!(%local, features = ?t.features, "io_uring UDP transport open");
        Ok(t)
    }

    /// The io_uring features in use.
    pub fn features(&self) -> UringFeatures {
        self.features
    }

    /// Whether receive offload is on (`net.gro`, and the kernel took it).
    pub fn gro(&self) -> bool {
        self.gro
    }

    /// Turns `UDP_GRO` on or off on the socket; false (logged) when the kernel refuses.
    fn set_gro(&mut self, on: bool) -> bool {
        let value: libc::c_int = on.into();
        // SAFETY: a valid socket descriptor, and a pointer to an `int` with its size.
        let r = unsafe {
            libc::setsockopt(
                self.socket.as_raw_fd(),
                libc::SOL_UDP,
                UDP_GRO,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            let e = io::Error::last_os_error();
            tracing::info!(local = %self.local, "UDP receive offload (UDP_GRO) refused ({e}); receiving datagram by datagram");
            return false;
        }
        true
    }

    fn register_buf_ring(&mut self, count: u16, buf_size: usize) -> io::Result<()> {
        let mut ring = BufRing::new(count, buf_size);
        // SAFETY: `entries` is page-aligned memory for `count` entries that lives in
        // `self.buf_ring` until Drop, which unregisters it (or leaks it) before freeing.
        unsafe {
            self.ring
                .submitter()
                .register_buf_ring_with_flags(ring.entries as u64, count, BUFFER_GROUP, 0)?
        };
        ring.registered = true;
        for bid in 0..count {
            ring.push(bid);
        }
        ring.publish();
        self.buf_ring = Some(ring);
        Ok(())
    }

    /// Posts what the receive side needs: the multishot receive if it ended and a buffer
    /// is free, or the pool's idle slots.
    fn rearm_recv(&mut self) {
        let fd = Fd(self.socket.as_raw_fd());
        if let Some(ring) = &self.buf_ring {
            if !self.multishot_armed && ring.with_kernel > 0 {
                let sqe = opcode::RecvMsgMulti::new(fd, &*ring.hdr, BUFFER_GROUP)
                    .build()
                    .user_data(user_data(TAG_RECV_MULTI, 0));
                // SAFETY: the msghdr template lives in the boxed `ring.hdr` and the buffers
                // in the registered ring, both kept until Drop has drained every request.
                if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                    self.multishot_armed = true;
                }
            }
        }
        if let Some(pool) = &mut self.pool {
            let mut sq = self.ring.submission();
            while let Some(&i) = pool.idle.last() {
                let slot = &mut pool.slots[i as usize];
                slot.addr = RawAddr::ZERO;
                slot.iov = libc::iovec {
                    // SAFETY: i < slots, so the offset stays inside `bufs`.
                    iov_base: unsafe { pool.bufs.as_mut_ptr().add(i as usize * pool.buf_size) }.cast(),
                    iov_len: pool.buf_size,
                };
                slot.hdr.msg_name = slot.addr.0.as_mut_ptr().cast();
                slot.hdr.msg_namelen = RAW_ADDR_LEN as libc::socklen_t;
                slot.hdr.msg_iov = &mut slot.iov;
                slot.hdr.msg_iovlen = 1;
                slot.hdr.msg_flags = 0;
                let sqe = opcode::RecvMsg::new(fd, &mut slot.hdr)
                    .build()
                    .user_data(user_data(TAG_RECV_POOL, i as u64));
                // SAFETY: the slot's msghdr, iovec, address and buffer are boxed slices
                // owned by self; the slot is not touched again until its completion.
                if unsafe { sq.push(&sqe) }.is_err() {
                    break;
                }
                pool.idle.pop();
                pool.posted += 1;
            }
        }
    }

    /// Sends a lone queued datagram with `sendmsg(2)` when nothing else is queued or in
    /// flight (a message at a time: the latency path). The system call is the one the
    /// submission would make, without the ring's work around it (copying in the msghdr,
    /// posting and reaping a completion): `flush` of one datagram took 4.1 against 4.9 us,
    /// the loopback delivery included, measured in the shard. With nothing in flight the
    /// datagram cannot pass an earlier one. Any error leaves it queued for the ring, which
    /// counts it as it counts every other. Not with SQPOLL, where submitting makes no
    /// system call at all.
    fn send_lone(&mut self) -> bool {
        if self.features.sqpoll
            || self.send_pending.len() != 1
            || self.send_in_flight != 0
            || !self.ring.submission().is_empty()
        {
            return false;
        }
        let slot = self.send_pending[0];
        let hdr = &self.send_slots[slot as usize].hdr;
        // SAFETY: `queue` filled the slot's msghdr to name its address, its iovec and its
        // bytes in `send_buf`, all owned by self and unchanged here; the kernel only reads
        // them during the call.
        let sent = unsafe { libc::sendmsg(self.socket.as_raw_fd(), hdr, libc::MSG_DONTWAIT) };
        if sent < 0 {
            return false;
        }
        self.send_pending.clear();
        self.send_free.push(slot);
        self.stats.sent += 1;
        true
    }

    /// Submits what is in the submission queue (and runs deferred completions).
    fn submit(&mut self) -> io::Result<()> {
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EBUSY) | Some(libc::EAGAIN) | Some(libc::EINTR)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Takes every completion off the queue: sends free their slot, the wake poll sets
    /// `wake_fired`, receives go to the stash for `recv`.
    fn reap(&mut self) -> io::Result<()> {
        let (nonempty, taskrun) = {
            let sq = self.ring.submission();
            (!sq.is_empty(), sq.taskrun() || sq.cq_overflow())
        };
        if nonempty || taskrun {
            self.submit()?;
        }
        for cqe in self.ring.completion() {
            let (tag, index) = split_user_data(cqe.user_data());
            let (result, flags) = (cqe.result(), cqe.flags());
            match tag {
                TAG_SEND => {
                    // Free the send's chain of slots (one without offload).
                    let mut slot = index as u32;
                    let mut n = 0u64;
                    while slot != CHAIN_END && (n as usize) < GSO_MAX_SEGMENTS {
                        self.send_free.push(slot);
                        n += 1;
                        slot = std::mem::replace(&mut self.send_next[slot as usize], CHAIN_END);
                    }
                    self.send_in_flight -= n as usize;
                    if result < 0 {
                        self.stats.send_errors += n;
                        if n > 1 && self.gso && matches!(-result, libc::EIO | libc::EINVAL | libc::EOPNOTSUPP)
                        {
                            self.gso = false;
                            tracing::info!(
                                local = %self.local,
                                error = %io::Error::from_raw_os_error(-result),
                                "UDP segmentation offload refused; sending datagram by datagram"
                            );
                        }
                    } else {
                        self.stats.sent += n;
                        self.stats.offload_sends += u64::from(n > 1);
                    }
                }
                // A poll on an older wake descriptor (replaced in `wait`) is ignored.
                TAG_WAKE if self.wake_armed == Some(index as RawFd) => {
                    self.wake_armed = None;
                    self.wake_fired = true;
                }
                TAG_RECV_MULTI | TAG_RECV_POOL => {
                    if tag == TAG_RECV_MULTI && !cqueue::more(flags) {
                        self.multishot_armed = false;
                    }
                    if tag == TAG_RECV_POOL {
                        if let Some(pool) = &mut self.pool {
                            pool.posted -= 1;
                        }
                    }
                    if let (Some(bid), Some(ring)) = (cqueue::buffer_select(flags), &mut self.buf_ring) {
                        debug_assert!(bid < ring.count);
                        ring.with_kernel -= 1;
                    }
                    self.stash.push_back(Completion {
                        tag,
                        index,
                        result,
                        flags,
                    });
                }
                // Poll removals and cancels: nothing to do.
                _ => {}
            }
        }
        Ok(())
    }

    /// The multishot receive was refused before delivering anything (a kernel with buffer
    /// rings but without multishot `RecvMsg`): go on with the pool.
    fn fall_back_to_pool(&mut self, error: i32) {
        tracing::info!(
            local = %self.local,
            error = %io::Error::from_raw_os_error(error),
            "io_uring multishot receive refused; using posted receives"
        );
        if let Some(mut ring) = self.buf_ring.take() {
            // Nothing is in flight on it (the receive ended); if the kernel will not let
            // go of the ring all the same, keep its memory alive for good.
            if ring.registered && self.ring.submitter().unregister_buf_ring(BUFFER_GROUP).is_err() {
                ring.leak = true;
            }
        }
        self.features.recv = RecvMode::Pool;
        if self.gro {
            // The pool's buffers hold one datagram each.
            self.gro = false;
            self.set_gro(false);
        }
        self.pool = Some(RecvPool::new(self.recv_count, self.max_datagram));
    }

    /// Requests in flight that name memory of ours (the wake poll, poll removals and
    /// cancels name none).
    fn using_memory(&self) -> usize {
        self.send_in_flight + self.multishot_armed as usize + self.pool.as_ref().map_or(0, |p| p.posted)
    }
}

/// Sets up the ring: SQPOLL if asked (falling back when refused), else cooperative task
/// running (falling back on kernels before 5.19).
/// How many datagrams at the front of `pending` one segmentation-offload send can carry:
/// one destination, the first one's length for all but the last (which may be shorter),
/// within the kernel's limits. At least 1.
fn gso_run(slots: &[SendSlot], pending: &VecDeque<u32>) -> usize {
    let Some(&head) = pending.front() else { return 0 };
    let first = &slots[head as usize];
    let size = first.iov.iov_len;
    let name = first.hdr.msg_namelen as usize;
    let mut total = size;
    let mut n = 1;
    for &slot in pending.iter().skip(1).take(GSO_MAX_SEGMENTS - 1) {
        let s = &slots[slot as usize];
        let len = s.iov.iov_len;
        if len > size
            || len == 0
            || total + len > GSO_MAX_BYTES
            || s.hdr.msg_namelen as usize != name
            || s.addr.0[..name] != first.addr.0[..name]
        {
            break;
        }
        total += len;
        n += 1;
        if len < size {
            break;
        }
    }
    n
}

/// The segment size of a coalesced receive, from its `UDP_GRO` control message (None
/// without one: the receive is one datagram). The bytes are the kernel's, read with bounds
/// checks all the same.
fn gro_segment(control: &[u8]) -> Option<usize> {
    const HDR: usize = std::mem::size_of::<libc::cmsghdr>();
    let mut rest = control;
    while rest.len() >= HDR {
        let len = usize::try_from(u64::from_ne_bytes(rest.get(..8)?.try_into().ok()?)).ok()?;
        let level = i32::from_ne_bytes(rest.get(8..12)?.try_into().ok()?);
        let kind = i32::from_ne_bytes(rest.get(12..16)?.try_into().ok()?);
        if len < HDR {
            return None;
        }
        if level == libc::SOL_UDP && kind == UDP_GRO {
            let size = i32::from_ne_bytes(rest.get(HDR..HDR + 4)?.try_into().ok()?);
            return usize::try_from(size).ok().filter(|&s| s > 0);
        }
        rest = rest.get(len.checked_next_multiple_of(8)?..)?;
    }
    None
}

/// Makes the first `n` pending slots one send headed by the first: its `msghdr` names
/// their buffers (and, for more than one, a `UDP_SEGMENT` control message with the first
/// one's length), and `next` chains them for the completion.
fn chain_send(
    head: u32,
    n: usize,
    slots: &mut [SendSlot],
    pending: &VecDeque<u32>,
    next: &mut [u32],
    gso_iov: &mut [libc::iovec],
    gso_cmsg: &mut [GsoCmsg],
) {
    let h = head as usize;
    if n <= 1 {
        next[h] = CHAIN_END;
        let s = &mut slots[h];
        s.hdr.msg_iov = &mut s.iov;
        s.hdr.msg_iovlen = 1;
        s.hdr.msg_control = std::ptr::null_mut();
        s.hdr.msg_controllen = 0;
        return;
    }
    let iovs = &mut gso_iov[h * GSO_MAX_SEGMENTS..(h + 1) * GSO_MAX_SEGMENTS];
    let mut prev = h;
    for (k, &slot) in pending.iter().take(n).enumerate() {
        iovs[k] = slots[slot as usize].iov;
        if k > 0 {
            next[prev] = slot;
            prev = slot as usize;
        }
    }
    next[prev] = CHAIN_END;
    let cmsg = &mut gso_cmsg[h];
    cmsg.header.cmsg_len = GsoCmsg::LEN as _;
    cmsg.header.cmsg_level = libc::SOL_UDP;
    cmsg.header.cmsg_type = UDP_SEGMENT;
    cmsg.segment = slots[h].iov.iov_len as u16;
    let s = &mut slots[h];
    s.hdr.msg_iov = iovs.as_mut_ptr();
    s.hdr.msg_iovlen = n as _;
    s.hdr.msg_control = (cmsg as *mut GsoCmsg).cast();
    s.hdr.msg_controllen = std::mem::size_of::<GsoCmsg>() as _;
}

fn build_ring(sq: u32, cq: u32, sqpoll: bool) -> io::Result<(IoUring, bool, bool)> {
    if sqpoll {
        match IoUring::builder()
            .setup_cqsize(cq)
            .setup_sqpoll(SQPOLL_IDLE_MS)
            .build(sq)
        {
            Ok(ring) => return Ok((ring, true, false)),
            Err(e) => tracing::warn!("io_uring SQPOLL refused ({e}); submitting with system calls"),
        }
    }
    match IoUring::builder()
        .setup_cqsize(cq)
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(sq)
    {
        Ok(ring) => Ok((ring, false, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            Ok((IoUring::builder().setup_cqsize(cq).build(sq)?, false, false))
        }
        Err(e) => Err(e),
    }
}

impl Transport for UringTransport {
    fn queue(&mut self, to: SocketAddr, bytes: &[u8]) -> Result<(), SendError> {
        check_send(&self.local, self.max_datagram, to, bytes.len())?;
        if self.send_free.is_empty() {
            let _ = self.reap();
        }
        let Some(slot) = self.send_free.pop() else {
            self.stats.queue_full += 1;
            return Err(SendError::QueueFull);
        };
        let i = slot as usize;
        let at = i * self.max_datagram;
        self.send_buf[at..at + bytes.len()].copy_from_slice(bytes);
        let base = self.send_buf.as_mut_ptr();
        let s = &mut self.send_slots[i];
        s.iov = libc::iovec {
            // SAFETY: i < slots, so the offset stays inside `send_buf`.
            iov_base: unsafe { base.add(at) }.cast(),
            iov_len: bytes.len(),
        };
        s.hdr.msg_namelen = s.addr.write(&to);
        s.hdr.msg_name = s.addr.0.as_mut_ptr().cast();
        s.hdr.msg_iov = &mut s.iov;
        s.hdr.msg_iovlen = 1;
        s.hdr.msg_control = std::ptr::null_mut();
        s.hdr.msg_controllen = 0;
        self.send_pending.push_back(slot);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<usize> {
        if self.send_lone() {
            return Ok(1);
        }
        let fd = Fd(self.socket.as_raw_fd());
        let mut handed = 0;
        loop {
            let before = handed;
            {
                let mut sq = self.ring.submission();
                while let Some(&slot) = self.send_pending.front() {
                    let n = if self.gso {
                        gso_run(&self.send_slots, &self.send_pending)
                    } else {
                        1
                    };
                    chain_send(
                        slot,
                        n,
                        &mut self.send_slots,
                        &self.send_pending,
                        &mut self.send_next,
                        &mut self.gso_iov,
                        &mut self.gso_cmsg,
                    );
                    let s = &self.send_slots[slot as usize];
                    let sqe = opcode::SendMsg::new(fd, &s.hdr)
                        .build()
                        .user_data(user_data(TAG_SEND, slot as u64));
                    // SAFETY: the send's msghdr, iovecs, control message, address and
                    // payloads live in boxed slices owned by self and stay untouched until
                    // the completion returns its slots to `send_free` (or Drop has drained
                    // every request): `chain_send` writes only the parts of slots not in
                    // flight (the pending ones at the queue's front).
                    if unsafe { sq.push(&sqe) }.is_err() {
                        break;
                    }
                    self.send_pending.drain(..n);
                    self.send_in_flight += n;
                    handed += n;
                }
            }
            self.submit()?;
            if self.send_pending.is_empty() || handed == before {
                break;
            }
        }
        Ok(handed)
    }

    fn recv(&mut self, max: usize, f: &mut dyn FnMut(SocketAddr, &[u8])) -> io::Result<usize> {
        self.reap()?;
        let mut delivered = 0;
        let mut returned_buffers = false;
        if let (Some(rest), Some(ring)) = (self.gro_rest.take(), &mut self.buf_ring) {
            let (n, left) = cut_coalesced(ring, rest, max, self.max_datagram, &mut self.stats, f);
            delivered += n;
            self.gro_rest = left;
            if left.is_none() {
                ring.push(rest.bid);
                returned_buffers = true;
            }
        }
        while delivered < max && self.gro_rest.is_none() {
            let Some(c) = self.stash.pop_front() else { break };
            if c.tag == TAG_RECV_MULTI {
                let Some(ring) = &mut self.buf_ring else { continue };
                let Some(bid) = cqueue::buffer_select(c.flags) else {
                    // No buffer: the multishot receive ended (ENOBUFS when we held every
                    // buffer, ECANCELED) or failed; `rearm_recv` posts it again.
                    match -c.result {
                        libc::ENOBUFS => tracing::trace!("io_uring receive buffers all in use; re-arming"),
                        libc::ECANCELED => {}
                        libc::EINVAL if self.stats.received == 0 && !self.multishot_armed => {
                            self.fall_back_to_pool(libc::EINVAL);
                        }
                        e => {
                            self.stats.recv_errors += 1;
                            tracing::debug!(error = %io::Error::from_raw_os_error(e), "io_uring receive failed");
                        }
                    }
                    continue;
                };
                let len = c.result.max(0) as usize;
                match RecvMsgOut::parse(ring.buffer(bid, len), &ring.hdr) {
                    Err(()) => self.stats.recv_errors += 1,
                    Ok(out) if out.is_payload_truncated() => self.stats.truncated += 1,
                    Ok(out) => match parse_sockaddr(out.name_data()) {
                        None => self.stats.bad_source += 1,
                        Some(from) => {
                            let payload = out.payload_data();
                            // Coalesced datagrams (receive offload): all of the segment
                            // size but the last, which may be shorter.
                            match gro_segment(out.control_data()).filter(|&s| s < payload.len()) {
                                None if payload.len() > self.max_datagram => self.stats.truncated += 1,
                                None => {
                                    f(from, payload);
                                    self.stats.received += 1;
                                    delivered += 1;
                                }
                                Some(segment) => {
                                    self.stats.offload_receives += 1;
                                    let start = payload.as_ptr() as usize - ring.bufs.as_ptr() as usize;
                                    let rest = GroRest {
                                        bid,
                                        from,
                                        start,
                                        end: start + payload.len(),
                                        segment,
                                    };
                                    let (n, left) = cut_coalesced(
                                        ring,
                                        rest,
                                        max - delivered,
                                        self.max_datagram,
                                        &mut self.stats,
                                        f,
                                    );
                                    delivered += n;
                                    if left.is_some() {
                                        // Its buffer stays ours until the next call.
                                        self.gro_rest = left;
                                        continue;
                                    }
                                }
                            }
                        }
                    },
                }
                ring.push(bid);
                returned_buffers = true;
            } else if let Some(pool) = &mut self.pool {
                let i = c.index as usize;
                pool.idle.push(i as u32);
                if c.result < 0 {
                    if c.result != -libc::ECANCELED {
                        self.stats.recv_errors += 1;
                    }
                    continue;
                }
                let len = c.result as usize;
                if len > self.max_datagram {
                    self.stats.truncated += 1;
                    continue;
                }
                let Some(from) = pool.slots[i].addr.read() else {
                    self.stats.bad_source += 1;
                    continue;
                };
                let at = i * pool.buf_size;
                f(from, &pool.bufs[at..at + len]);
                self.stats.received += 1;
                delivered += 1;
            }
        }
        if returned_buffers {
            if let Some(ring) = &self.buf_ring {
                ring.publish();
            }
        }
        self.rearm_recv();
        if !self.ring.submission().is_empty() {
            self.submit()?;
        }
        Ok(delivered)
    }

    fn wait(&mut self, timeout: Duration, wake_fd: RawFd) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        self.wake_fired = false;
        self.reap()?;
        loop {
            if !self.stash.is_empty() || self.wake_fired {
                return Ok(());
            }
            if self.wake_armed != Some(wake_fd) {
                let mut sq = self.ring.submission();
                if let Some(old) = self.wake_armed {
                    let remove = opcode::PollRemove::new(user_data(TAG_WAKE, old as u64))
                        .build()
                        .user_data(user_data(TAG_OTHER, 0));
                    // SAFETY: PollRemove names no memory. The cancelled poll's completion
                    // carries the old descriptor, so `reap` ignores it.
                    let _ = unsafe { sq.push(&remove) };
                }
                let poll = opcode::PollAdd::new(Fd(wake_fd), libc::POLLIN as u32)
                    .build()
                    .user_data(user_data(TAG_WAKE, wake_fd as u64));
                // SAFETY: PollAdd names no memory, only the descriptor.
                if unsafe { sq.push(&poll) }.is_ok() {
                    self.wake_armed = Some(wake_fd);
                }
            }
            self.rearm_recv();
            let now = Instant::now();
            if now >= deadline {
                return Ok(());
            }
            let ts = Timespec::from(deadline - now);
            let args = SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
                    ) => {}
                Err(e) => return Err(e),
            }
            self.reap()?;
        }
    }

    /// The wake poll is one-shot, and `reap` clears `wake_armed` when it completes: while
    /// it is armed for `wake_fd`, the descriptor has not been written since (a write
    /// completes it; one whose completion is not reaped yet makes the next `wait` return
    /// at once).
    fn wake_quiet(&self, wake_fd: RawFd) -> bool {
        self.wake_armed == Some(wake_fd)
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn backend(&self) -> &'static str {
        "uring"
    }

    fn stats(&self) -> NetStats {
        self.stats
    }
}

impl Drop for UringTransport {
    fn drop(&mut self) {
        // Cancel everything in flight, then wait for every completion: only then may the
        // buffers the requests name be freed.
        let cancelled = self
            .ring
            .submitter()
            .register_sync_cancel(Some(Timespec::from(DROP_DRAIN)), CancelBuilder::any());
        if cancelled.is_err() {
            let sqe = opcode::AsyncCancel2::new(CancelBuilder::any())
                .build()
                .user_data(user_data(TAG_OTHER, 0));
            // SAFETY: a cancel request names no memory.
            let _ = unsafe { self.ring.submission().push(&sqe) };
        }
        let deadline = Instant::now() + DROP_DRAIN;
        while self.using_memory() > 0 && Instant::now() < deadline {
            let ts = Timespec::from(Duration::from_millis(10));
            let _ = self
                .ring
                .submitter()
                .submit_with_args(1, &SubmitArgs::new().timespec(&ts));
            if self.reap().is_err() {
                break;
            }
            self.stash.clear();
        }
        if self.using_memory() > 0 {
            tracing::warn!(
                local = %self.local,
                outstanding = self.using_memory(),
                "io_uring requests still in flight at close; leaking their buffers"
            );
            std::mem::forget(std::mem::take(&mut self.send_buf));
            std::mem::forget(std::mem::take(&mut self.send_slots));
            std::mem::forget(std::mem::take(&mut self.gso_iov));
            std::mem::forget(std::mem::take(&mut self.gso_cmsg));
            if let Some(pool) = self.pool.take() {
                std::mem::forget(pool);
            }
            if let Some(ring) = &mut self.buf_ring {
                ring.leak = true;
            }
            return;
        }
        if let Some(ring) = &mut self.buf_ring {
            if ring.registered && self.ring.submitter().unregister_buf_ring(BUFFER_GROUP).is_err() {
                ring.leak = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A control message as the kernel lays it out: `cmsghdr` (len, level, type), data,
    /// padding to 8.
    fn cmsg(level: i32, kind: i32, data: &[u8]) -> Vec<u8> {
        let len = std::mem::size_of::<libc::cmsghdr>() + data.len();
        let mut v = (len as u64).to_ne_bytes().to_vec();
        v.extend(level.to_ne_bytes());
        v.extend(kind.to_ne_bytes());
        v.extend(data);
        v.resize(len.next_multiple_of(8), 0);
        v
    }

    #[test]
    fn the_gro_segment_size_is_read_with_bounds_checks() {
        let gro = cmsg(libc::SOL_UDP, UDP_GRO, &1472i32.to_ne_bytes());
        assert_eq!(gro_segment(&gro), Some(1472));
        // After another control message.
        let mut two = cmsg(libc::SOL_IP, 8, &[1, 2, 3, 4, 5]);
        two.extend(&gro);
        assert_eq!(gro_segment(&two), Some(1472));
        // None, or malformed: never a panic, never a size of 0.
        assert_eq!(gro_segment(&[]), None);
        assert_eq!(gro_segment(&gro[..12]), None);
        assert_eq!(gro_segment(&gro[..18]), None, "data cut short");
        assert_eq!(
            gro_segment(&cmsg(libc::SOL_UDP, UDP_GRO, &0i32.to_ne_bytes())),
            None
        );
        assert_eq!(
            gro_segment(&cmsg(libc::SOL_UDP, UDP_GRO, &(-5i32).to_ne_bytes())),
            None
        );
        let mut short_len = gro.clone();
        short_len[..8].copy_from_slice(&3u64.to_ne_bytes());
        assert_eq!(gro_segment(&short_len), None, "a length below the header");
        let mut huge = cmsg(libc::SOL_IP, 8, &[0; 8]);
        huge[..8].copy_from_slice(&u64::MAX.to_ne_bytes());
        assert_eq!(gro_segment(&huge), None, "a length past the end");
    }
}
