//! The kernel's UDP floor on loopback, measured in the same run as the cluster benchmark and
//! between the same addresses the daemons use: a bare round trip between two sockets (one
//! datagram in flight), and a bare sender/receiver pair moving datagrams as large as tutti's
//! (1472 B) in `sendmmsg`/`recvmmsg` batches as large as tutti's (`net.batch`, 64), and the
//! same with segmentation and receive offload (`UDP_SEGMENT` sends of up to 44 datagrams,
//! `UDP_GRO` receives, as tutti's io_uring transport sends and receives with `net.gso` and
//! `net.gro`).

use std::hint::spin_loop;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use hdrhistogram::Histogram;

use crate::clock;
use crate::interrupt;
use crate::report::new_histogram;

/// tutti's datagram size (`net.max_datagram`: a 1500-byte MTU less IP and UDP headers).
pub const DATAGRAM_BYTES: usize = 1472;
/// Datagrams per `sendmmsg`/`recvmmsg` call (tutti's `net.batch` default).
pub const BATCH: usize = 64;
/// Datagrams per segmentation-offload send: as many of `DATAGRAM_BYTES` as one 64 KiB
/// IPv4 packet holds (tutti's transport fills its offload sends the same way).
pub const OFFLOAD_SEGMENTS: usize = 65_507 / DATAGRAM_BYTES;
/// `SOL_UDP` control message type of the segment size (linux/udp.h).
const UDP_SEGMENT: libc::c_int = 103;
/// `SOL_UDP` option and control message type of receive offload (linux/udp.h).
const UDP_GRO: libc::c_int = 104;
/// Receive buffer per `recvmmsg` entry with receive offload: one coalesced IPv4 payload.
const GRO_BUFFER_BYTES: usize = 65_535;
/// SO_RCVBUF / SO_SNDBUF asked for (tutti's `net.socket_buffer_bytes` default).
const SOCKET_BUFFER_BYTES: libc::c_int = 16 << 20;
/// A datagram not echoed within this long is taken as lost (loopback loses only when a
/// receive buffer is full, which one datagram in flight cannot cause).
const ECHO_TIMEOUT: Duration = Duration::from_secs(1);
/// Share of a floor run spent warming up, not counted.
const WARMUP_FRACTION: f64 = 0.1;

/// How the receiving side waits for a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RecvMode {
    /// Nonblocking `recv` in a loop (no wake-up cost: the lower floor).
    Busy,
    /// Blocking `recv` (the thread sleeps and is woken by the kernel).
    Blocking,
}

impl RecvMode {
    pub fn name(self) -> &'static str {
        match self {
            RecvMode::Busy => "busy",
            RecvMode::Blocking => "blocking",
        }
    }
}

fn bind(ip: IpAddr) -> Result<UdpSocket, String> {
    let sock = UdpSocket::bind(SocketAddr::new(ip, 0)).map_err(|e| {
        format!("binding a UDP socket on {ip}: {e} (loopback addresses other than 127.0.0.1 need Linux)")
    })?;
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        // SAFETY: setsockopt on a socket we own with a pointer to a live c_int of the
        // length we pass. Failure only leaves the kernel's default size.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&SOCKET_BUFFER_BYTES as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    Ok(sock)
}

fn connected_pair(a: IpAddr, b: IpAddr) -> Result<(UdpSocket, UdpSocket), String> {
    let (sa, sb) = (bind(a)?, bind(b)?);
    let (aa, ab) = (
        sa.local_addr().map_err(|e| e.to_string())?,
        sb.local_addr().map_err(|e| e.to_string())?,
    );
    sa.connect(ab)
        .map_err(|e| format!("connecting {aa} to {ab}: {e}"))?;
    sb.connect(aa)
        .map_err(|e| format!("connecting {ab} to {aa}: {e}"))?;
    Ok((sa, sb))
}

fn set_mode(sock: &UdpSocket, mode: RecvMode) -> Result<(), String> {
    match mode {
        RecvMode::Busy => sock.set_nonblocking(true),
        RecvMode::Blocking => sock.set_read_timeout(Some(Duration::from_millis(100))),
    }
    .map_err(|e| format!("setting the UDP socket's receive mode: {e}"))
}

/// One receive in `mode`; Ok(None) when nothing came within the socket's wait.
fn recv_one(sock: &UdpSocket, buf: &mut [u8]) -> Result<Option<usize>, String> {
    match sock.recv(buf) {
        Ok(n) => Ok(Some(n)),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(None),
        Err(e) if e.kind() == ErrorKind::Interrupted => Ok(None),
        Err(e) => Err(format!("UDP receive: {e}")),
    }
}

pub struct UdpRoundTrip {
    /// Round trips of one `size`-byte datagram, one sample each (TSC clock).
    pub rtt: Histogram<u64>,
}

/// Ping-pong of one `size`-byte datagram between a socket on `a` and one on `b`.
pub fn round_trip(
    a: IpAddr,
    b: IpAddr,
    size: usize,
    duration: Duration,
    mode: RecvMode,
) -> Result<UdpRoundTrip, String> {
    let size = size.clamp(1, DATAGRAM_BYTES);
    let (ping, echo) = connected_pair(a, b)?;
    set_mode(&ping, mode)?;
    set_mode(&echo, mode)?;
    let stop = &AtomicBool::new(false);
    std::thread::scope(|s| {
        let echo_side = s.spawn(move || -> Result<(), String> {
            let mut buf = vec![0u8; DATAGRAM_BYTES];
            while !stop.load(Ordering::Relaxed) {
                if let Some(n) = recv_one(&echo, &mut buf)? {
                    echo.send(&buf[..n]).map_err(|e| format!("UDP echo send: {e}"))?;
                }
            }
            Ok(())
        });
        let result = (|| {
            clock::calibrate();
            let mut msg = vec![0x5Au8; size];
            let mut buf = vec![0u8; DATAGRAM_BYTES];
            let mut rtt = new_histogram();
            let start = Instant::now();
            let measure_from = start + duration.mul_f64(WARMUP_FRACTION);
            let end = measure_from + duration;
            let mut seq = 0u64;
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                interrupt::check()?;
                seq += 1;
                msg[..8.min(size)].copy_from_slice(&seq.to_le_bytes()[..8.min(size)]);
                let c0 = clock::now();
                ping.send(&msg).map_err(|e| format!("UDP ping send: {e}"))?;
                loop {
                    if let Some(n) = recv_one(&ping, &mut buf)? {
                        if n == size && buf[..8.min(size)] == msg[..8.min(size)] {
                            break;
                        }
                        continue;
                    }
                    if mode == RecvMode::Busy {
                        spin_loop();
                    }
                    if clock::ns_between(c0, clock::now()) > ECHO_TIMEOUT.as_nanos() as u64 {
                        return Err(format!("UDP floor: no echo within {ECHO_TIMEOUT:?}"));
                    }
                }
                let ns = clock::ns_between(c0, clock::now());
                if now >= measure_from {
                    rtt.saturating_record(ns);
                }
            }
            Ok(UdpRoundTrip { rtt })
        })();
        stop.store(true, Ordering::Relaxed);
        echo_side.join().map_err(|_| "UDP echo thread panicked")??;
        result
    })
}

pub struct UdpThroughput {
    /// Received, over the measured window.
    pub datagrams_per_s: f64,
    /// Datagrams the sender handed to the kernel over the whole run (warm-up included; the
    /// receiver's count is lower by what loopback dropped at a full receive buffer).
    pub sent: u64,
    /// The whole run, warm-up included.
    pub run: Duration,
}

/// A sender on `a` pushing `DATAGRAM_BYTES` datagrams with `sendmmsg` (`BATCH` per call) as
/// fast as it can, a receiver on `b` taking them with `recvmmsg` (`BATCH` per call); the
/// rate is what the receiver got. Like tutti, both sides touch every message: the sender
/// writes a sequence number into each of the `msgs_per_datagram(size)` messages of every
/// datagram before each call, and the receiver reads each message's sequence number
/// (summed, so the reads cannot be optimised away). With `offload`, each `sendmmsg` entry
/// carries up to `OFFLOAD_SEGMENTS` datagrams as one `UDP_SEGMENT` send, and the receiver
/// takes them with `UDP_GRO` (as tutti's io_uring transport does with `net.gso` and
/// `net.gro`): each `recvmmsg` entry may then hold a run of datagrams, cut by the segment
/// size the kernel reports (if the kernel refuses `UDP_GRO`, datagram by datagram).
pub fn throughput(
    a: IpAddr,
    b: IpAddr,
    size: usize,
    duration: Duration,
    mode: RecvMode,
    offload: bool,
) -> Result<UdpThroughput, String> {
    let size = size.max(8);
    let per_datagram = msgs_per_datagram(size) as usize;
    let (tx, rx) = connected_pair(a, b)?;
    set_mode(&rx, mode)?;
    let received = &CachePadded::new(AtomicU64::new(0));
    let stop = &AtomicBool::new(false);
    let sent = &AtomicU64::new(0);
    std::thread::scope(|s| {
        let receiver = s.spawn(move || -> Result<(), String> {
            let gro = offload && set_gro(&rx);
            let buf_len = if gro { GRO_BUFFER_BYTES } else { DATAGRAM_BYTES };
            let mut bufs = vec![vec![0u8; buf_len]; BATCH];
            let mut iovs: Vec<libc::iovec> = bufs
                .iter_mut()
                .map(|b| libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: buf_len,
                })
                .collect();
            // Room for the UDP_GRO control message of each entry (`CMSG_SPACE(4)`: 24 bytes).
            let mut controls = vec![[0u64; 4]; BATCH];
            // SAFETY: mmsghdr is plain data; all-zero is a valid (empty) value.
            let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
            for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
            }
            let flags = match mode {
                RecvMode::Busy => libc::MSG_DONTWAIT,
                RecvMode::Blocking => libc::MSG_WAITFORONE,
            };
            while !stop.load(Ordering::Relaxed) {
                if gro {
                    // The kernel shortens `msg_controllen` to what it wrote: reset it.
                    for (m, c) in msgs.iter_mut().zip(controls.iter_mut()) {
                        m.msg_hdr.msg_control = c.as_mut_ptr().cast();
                        m.msg_hdr.msg_controllen = std::mem::size_of_val(c) as _;
                    }
                }
                // SAFETY: `msgs` holds BATCH headers whose single iovec each points into a
                // live buffer of `buf_len` in `bufs` (and, with GRO, whose control buffer is
                // its entry of `controls`), all outliving the call.
                let n = unsafe {
                    libc::recvmmsg(
                        rx.as_raw_fd(),
                        msgs.as_mut_ptr(),
                        BATCH as libc::c_uint,
                        flags,
                        std::ptr::null_mut(),
                    )
                };
                if n > 0 {
                    let mut sum = 0u64;
                    let mut datagrams = 0u64;
                    for ((m, buf), c) in msgs.iter().zip(&bufs).zip(&controls).take(n as usize) {
                        let len = (m.msg_len as usize).min(buf_len);
                        let segment = if gro && m.msg_hdr.msg_controllen > 0 {
                            gro_segment(c).unwrap_or(len)
                        } else {
                            len
                        };
                        for datagram in buf[..len].chunks(segment.clamp(1, DATAGRAM_BYTES)) {
                            datagrams += 1;
                            for msg in datagram.chunks_exact(size).take(per_datagram) {
                                sum = sum
                                    .wrapping_add(u64::from_le_bytes(msg[..8].try_into().expect("8 bytes")));
                            }
                        }
                    }
                    std::hint::black_box(sum);
                    received.fetch_add(datagrams, Ordering::Relaxed);
                } else if n < 0 {
                    let e = std::io::Error::last_os_error();
                    match e.kind() {
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted => spin_loop(),
                        _ => return Err(format!("UDP recvmmsg: {e}")),
                    }
                }
            }
            Ok(())
        });
        let sender = s.spawn(move || -> Result<(), String> {
            let mut bufs = vec![[0xA5u8; DATAGRAM_BYTES]; BATCH];
            let iovs: Vec<libc::iovec> = bufs
                .iter_mut()
                .map(|b| libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: DATAGRAM_BYTES,
                })
                .collect();
            // With offload: one iovec per run of OFFLOAD_SEGMENTS buffers (contiguous in
            // `bufs`), each with its UDP_SEGMENT control message.
            let runs: Vec<(usize, usize)> = if offload {
                (0..BATCH)
                    .step_by(OFFLOAD_SEGMENTS)
                    .map(|start| (start, OFFLOAD_SEGMENTS.min(BATCH - start)))
                    .collect()
            } else {
                (0..BATCH).map(|i| (i, 1)).collect()
            };
            let mut run_iovs: Vec<libc::iovec> = runs
                .iter()
                .map(|&(start, n)| libc::iovec {
                    iov_base: iovs[start].iov_base,
                    iov_len: n * DATAGRAM_BYTES,
                })
                .collect();
            let mut cmsgs: Vec<OffloadCmsg> = runs.iter().map(|_| OffloadCmsg::new(DATAGRAM_BYTES)).collect();
            // SAFETY: as above; every header points at its own run of datagram buffers.
            let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; runs.len()];
            for ((m, iov), cmsg) in msgs.iter_mut().zip(run_iovs.iter_mut()).zip(cmsgs.iter_mut()) {
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                if offload {
                    m.msg_hdr.msg_control = (cmsg as *mut OffloadCmsg).cast();
                    m.msg_hdr.msg_controllen = std::mem::size_of::<OffloadCmsg>() as _;
                }
            }
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for iov in &iovs {
                    // SAFETY: each iovec points at its own live buffer of DATAGRAM_BYTES in
                    // `bufs`, which nothing else borrows while we write through it.
                    let buf =
                        unsafe { std::slice::from_raw_parts_mut(iov.iov_base.cast::<u8>(), DATAGRAM_BYTES) };
                    for msg in buf.chunks_exact_mut(size).take(per_datagram) {
                        msg[..8].copy_from_slice(&seq.to_le_bytes());
                        seq += 1;
                    }
                }
                // SAFETY: `msgs.len()` headers, each with one iovec over its run of `bufs`
                // and its control message, live across the call.
                let n = unsafe {
                    libc::sendmmsg(tx.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as libc::c_uint, 0)
                };
                if n > 0 {
                    let datagrams: usize = runs.iter().take(n as usize).map(|&(_, k)| k).sum();
                    sent.fetch_add(datagrams as u64, Ordering::Relaxed);
                } else if n < 0 {
                    let e = std::io::Error::last_os_error();
                    // A full receive buffer on loopback shows up as ENOBUFS/EAGAIN at times.
                    if !matches!(
                        e.raw_os_error(),
                        Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR | libc::ECONNREFUSED)
                    ) {
                        return Err(format!("UDP sendmmsg: {e}"));
                    }
                }
            }
            Ok(())
        });
        let run_start = Instant::now();
        let result = (|| {
            sleep_checked(duration.mul_f64(WARMUP_FRACTION))?;
            let (t0, n0) = (Instant::now(), received.load(Ordering::Relaxed));
            sleep_checked(duration)?;
            let (t1, n1) = (Instant::now(), received.load(Ordering::Relaxed));
            let measured = t1 - t0;
            Ok(UdpThroughput {
                datagrams_per_s: (n1 - n0) as f64 / measured.as_secs_f64(),
                sent: 0,
                run: Duration::ZERO,
            })
        })();
        let run = run_start.elapsed();
        stop.store(true, Ordering::Relaxed);
        sender.join().map_err(|_| "UDP sender panicked")??;
        receiver.join().map_err(|_| "UDP receiver panicked")??;
        result.map(|r: UdpThroughput| UdpThroughput {
            sent: sent.load(Ordering::Relaxed),
            run,
            ..r
        })
    })
}

/// Turns receive offload on for `sock`; false if the kernel refuses it.
fn set_gro(sock: &UdpSocket) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor, and a pointer to an `int` with its size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_UDP,
            UDP_GRO,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    r == 0
}

/// The segment size in a receive's control buffer (its first message, the only one asked
/// for: `UDP_GRO`'s `int`).
fn gro_segment(control: &[u64; 4]) -> Option<usize> {
    // cmsghdr is `cmsg_len: usize, cmsg_level: i32, cmsg_type: i32` (16 bytes), then data.
    let mut bytes = [0u8; 32];
    for (dst, w) in bytes.chunks_exact_mut(8).zip(control) {
        dst.copy_from_slice(&w.to_ne_bytes());
    }
    let level = i32::from_ne_bytes(bytes[8..12].try_into().ok()?);
    let kind = i32::from_ne_bytes(bytes[12..16].try_into().ok()?);
    let size = i32::from_ne_bytes(bytes[16..20].try_into().ok()?);
    (level == libc::SOL_UDP && kind == UDP_GRO && size > 0).then_some(size as usize)
}

/// A `UDP_SEGMENT` control message (header, then the segment size; `CMSG_SPACE(2)` bytes).
#[repr(C)]
struct OffloadCmsg {
    header: libc::cmsghdr,
    segment: u16,
    _pad: [u8; 6],
}

impl OffloadCmsg {
    fn new(segment: usize) -> OffloadCmsg {
        // SAFETY: all-zero is a valid cmsghdr (plain integers).
        let mut header: libc::cmsghdr = unsafe { std::mem::zeroed() };
        header.cmsg_len = (std::mem::size_of::<libc::cmsghdr>() + 2) as _;
        header.cmsg_level = libc::SOL_UDP;
        header.cmsg_type = UDP_SEGMENT;
        OffloadCmsg {
            header,
            segment: segment as u16,
            _pad: [0; 6],
        }
    }
}

/// Sleeps in short slices so that Ctrl-C is honoured promptly.
pub fn sleep_checked(d: Duration) -> Result<(), String> {
    let end = Instant::now() + d;
    loop {
        interrupt::check()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(20)));
    }
}

/// Messages of `size` bytes one floor datagram carries when packed back to back with no
/// per-message header (at least one; a message larger than a datagram counts as one).
pub fn msgs_per_datagram(size: usize) -> u64 {
    (DATAGRAM_BYTES / size.max(1)).max(1) as u64
}

/// Datagrams a message of `size` bytes needs when larger than one datagram.
pub fn datagrams_per_msg(size: usize) -> u64 {
    size.div_ceil(DATAGRAM_BYTES).max(1) as u64
}

/// One wake-up chain message in flight: the stamp the publisher wrote and the sequence. It
/// lives in a shared page (a memfd) so that the relays can be other processes; all zero is
/// its initial state.
#[repr(C)]
pub struct ChainCells {
    /// Publisher -> relay 1: the `CLOCK_MONOTONIC` stamp of the message in flight.
    stamp: CachePadded<AtomicU64>,
    /// Relay 2 -> subscriber: the stamp that came over UDP; the futex word is `delivered`.
    received_stamp: CachePadded<AtomicU64>,
    /// Futex word (shared, not private: the relays may be other processes): messages
    /// relay 2 handed to the subscriber (low 32 bits).
    delivered: CachePadded<AtomicU32>,
    /// Latency the subscriber measured for message `seen` (stored before `seen`).
    latency_ns: CachePadded<AtomicU64>,
    seen: CachePadded<AtomicU64>,
    /// Non-zero: everyone stops.
    stop: CachePadded<AtomicU32>,
}

/// Size of the chain's shared page.
const CHAIN_PAGE: usize = 4096;
const _: () = assert!(std::mem::size_of::<ChainCells>() <= CHAIN_PAGE);

/// The chain's shared page, mapped read-write.
struct ChainPage {
    fd: std::os::fd::OwnedFd,
    map: tutti_sys::Mapping,
}

impl ChainPage {
    fn create() -> Result<ChainPage, String> {
        let (fd, map) = tutti_sys::Mapping::create("tutti-bench-chain", CHAIN_PAGE)
            .map_err(|e| format!("wake-up chain: shared page: {e}"))?;
        Ok(ChainPage { fd, map })
    }

    fn attach(fd: std::os::fd::OwnedFd) -> Result<ChainPage, String> {
        let map = tutti_sys::Mapping::map(&fd, CHAIN_PAGE, true)
            .map_err(|e| format!("wake-up chain relay: mapping the shared page: {e}"))?;
        Ok(ChainPage { fd, map })
    }

    fn cells(&self) -> &ChainCells {
        // SAFETY: the mapping is CHAIN_PAGE bytes, page-aligned (so aligned for
        // ChainCells), lives as long as self, and holds only atomics whose all-zero bit
        // pattern is valid; every access from any process is atomic.
        unsafe { &*(self.map.as_ptr() as *const ChainCells) }
    }
}

/// Where the chain's relays run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum ChainRelays {
    /// Two threads of the bench's own process.
    Threads,
    /// Two processes of their own (`tutti-bench chain-relay`), as the daemons' shards are:
    /// every hop of the chain then crosses processes as tutti's path does.
    Processes,
}

/// Relay 1 (the sending shard's part): blocked on the eventfd, sends one `size`-byte
/// datagram with the stamp per wake-up, until `stop`.
fn relay_send(cells: &ChainCells, efd: RawFd, tx: &UdpSocket, size: usize) -> Result<(), String> {
    let mut datagram = vec![0x5Au8; size.clamp(16, DATAGRAM_BYTES)];
    while cells.stop.load(Ordering::Acquire) == 0 {
        let mut value = 0u64;
        // SAFETY: reads 8 bytes into a live u64; blocks until the eventfd is written.
        let n = unsafe { libc::read(efd, (&mut value as *mut u64).cast(), 8) };
        if n != 8 || cells.stop.load(Ordering::Acquire) != 0 {
            continue;
        }
        datagram[..8].copy_from_slice(&cells.stamp.load(Ordering::Acquire).to_le_bytes());
        tx.send(&datagram)
            .map_err(|e| format!("wake-up chain: UDP send: {e}"))?;
    }
    Ok(())
}

/// Relay 2 (the receiving shard's part): blocked in `recv` (100 ms at a time, to see
/// `stop`), hands each stamp to the subscriber and wakes its futex.
fn relay_recv(cells: &ChainCells, rx: &UdpSocket) -> Result<(), String> {
    let mut buf = vec![0u8; DATAGRAM_BYTES];
    while cells.stop.load(Ordering::Acquire) == 0 {
        if let Some(n) = recv_one(rx, &mut buf)? {
            let Some(stamp) = buf.get(..8).filter(|_| n >= 8) else {
                continue;
            };
            let stamp = u64::from_le_bytes(stamp.try_into().expect("8 bytes"));
            cells.received_stamp.store(stamp, Ordering::Relaxed);
            cells.delivered.fetch_add(1, Ordering::Release);
            tutti_sys::futex_wake_all(&cells.delivered);
        }
    }
    tutti_sys::futex_wake_all(&cells.delivered);
    Ok(())
}

/// The relay roles of `tutti-bench chain-relay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RelayRole {
    Send,
    Recv,
}

/// One relay of the chain on `sock` (the eventfd is relay 1's), pinned to `core` first if
/// given: the body of a relay thread and of a relay process alike.
fn run_relay(
    role: RelayRole,
    cells: &ChainCells,
    efd: RawFd,
    sock: &UdpSocket,
    size: usize,
    core: Option<usize>,
) -> Result<(), String> {
    if let Some(core) = core {
        crate::pin::pin_current(core)?;
    }
    match role {
        RelayRole::Send => relay_send(cells, efd, sock, size),
        RelayRole::Recv => relay_recv(cells, sock),
    }
}

/// `tutti-bench chain-relay`: one relay of a [`ChainRelays::Processes`] chain, on the
/// descriptors its parent left open for it (the shared page, the eventfd for `send`, the
/// UDP socket). It dies with its parent.
pub fn chain_relay_main(
    role: RelayRole,
    page_fd: RawFd,
    efd: RawFd,
    sock_fd: RawFd,
    size: usize,
    core: Option<usize>,
) -> Result<(), String> {
    use std::os::fd::FromRawFd;
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes no pointers.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // SAFETY: the parent passed these descriptors open for this process alone (chain
    // spawn below); each is owned once here.
    let (page, sock) = unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(page_fd),
            UdpSocket::from_raw_fd(sock_fd),
        )
    };
    let page = ChainPage::attach(page)?;
    run_relay(role, page.cells(), efd, &sock, size, core)
}

/// Starts one relay process on `fds` (page, eventfd or -1, socket), which it inherits at
/// the same numbers (cleared of close-on-exec in the child only).
fn spawn_relay(
    role: RelayRole,
    page: RawFd,
    efd: RawFd,
    sock: RawFd,
    size: usize,
    core: Option<usize>,
) -> Result<std::process::Child, String> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(|e| format!("wake-up chain: own executable: {e}"))?;
    let mut command = std::process::Command::new(exe);
    // `--efd=-1` (no eventfd for relay 2) must not read as a flag.
    let role = match role {
        RelayRole::Send => "send",
        RelayRole::Recv => "recv",
    };
    command.args([
        "chain-relay".to_string(),
        format!("--role={role}"),
        format!("--page-fd={page}"),
        format!("--efd={efd}"),
        format!("--sock-fd={sock}"),
        format!("--size={size}"),
    ]);
    if let Some(core) = core {
        command.arg(format!("--core={core}"));
    }
    let keep = [page, efd, sock];
    // SAFETY: runs in the child between fork and exec and calls only fcntl, which is
    // async-signal-safe, on descriptors that are open in it.
    unsafe {
        command.pre_exec(move || {
            for fd in keep.into_iter().filter(|&fd| fd >= 0) {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    command
        .spawn()
        .map_err(|e| format!("wake-up chain: starting a relay process: {e}"))
}

pub struct ChainLatency {
    /// One-way publish-to-delivery through the chain, one message in flight.
    pub one_way: Histogram<u64>,
    pub measure_start: Instant,
    pub measured: Duration,
    /// Messages that did not come through within [`ECHO_TIMEOUT`] (recorded as it).
    pub timed_out: u64,
}

/// The wake-up floor of the cluster path: the same hops and the same sleeps as tutti's
/// publish-to-delivery with parked daemons and a parked subscriber, with nothing else. A
/// publisher writes a stamp to shared memory and signals an eventfd; relay 1, blocked on
/// the eventfd (a parked shard), sends one `size`-byte datagram from `a` to `b`; relay 2,
/// blocked in `recv` (a parked shard), writes the stamp to shared memory and wakes the
/// subscriber blocked on a futex (tutti's group futex); the subscriber reads
/// `CLOCK_MONOTONIC` and records the one-way time. One message in flight, as tutti's
/// latency phase: the publisher sends the next once the subscriber saw the last. With
/// `relay_core`, both relays are pinned to it (as the daemons' shards are, for a like
/// placement). `relays`: threads of this process, or processes of their own as the
/// daemons are (the publisher and subscriber stay threads of this process, as the
/// bench's clients are).
pub fn wakeup_chain(
    a: IpAddr,
    b: IpAddr,
    size: usize,
    duration: Duration,
    relay_core: Option<usize>,
    relays: ChainRelays,
) -> Result<ChainLatency, String> {
    let size = size.clamp(16, DATAGRAM_BYTES);
    let (tx, rx) = connected_pair(a, b)?;
    set_mode(&rx, RecvMode::Blocking)?;
    // SAFETY: plain eventfd(2); the descriptor is closed below.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if efd < 0 {
        return Err(format!("eventfd: {}", std::io::Error::last_os_error()));
    }
    let page = match ChainPage::create() {
        Ok(p) => p,
        Err(e) => {
            // SAFETY: efd is ours and unused.
            unsafe { libc::close(efd) };
            return Err(e);
        }
    };
    let cells = page.cells();
    let mut children: Vec<std::process::Child> = Vec::new();
    let result = std::thread::scope(|s| {
        let (tx, rx) = (&tx, &rx);
        let mut relay_threads = Vec::new();
        match relays {
            ChainRelays::Threads => {
                for (role, sock) in [(RelayRole::Send, tx), (RelayRole::Recv, rx)] {
                    relay_threads.push(s.spawn(move || run_relay(role, cells, efd, sock, size, relay_core)));
                }
            }
            ChainRelays::Processes => {
                let page_fd = page.fd.as_raw_fd();
                for (role, e, sock) in [(RelayRole::Send, efd, tx), (RelayRole::Recv, -1, rx)] {
                    match spawn_relay(role, page_fd, e, sock.as_raw_fd(), size, relay_core) {
                        Ok(child) => children.push(child),
                        Err(e) => {
                            cells.stop.store(1, Ordering::Release);
                            return Err(e);
                        }
                    }
                }
            }
        }
        let subscriber = s.spawn(move || {
            let mut seen = 0u32;
            while cells.stop.load(Ordering::Acquire) == 0 {
                tutti_sys::futex_wait(&cells.delivered, seen, Duration::from_millis(100));
                let now_delivered = cells.delivered.load(Ordering::Acquire);
                if now_delivered != seen {
                    seen = now_delivered;
                    let stamp = cells.received_stamp.load(Ordering::Relaxed);
                    cells
                        .latency_ns
                        .store(clock::mono_ns().saturating_sub(stamp), Ordering::Relaxed);
                    cells.seen.store(stamp, Ordering::Release);
                }
            }
        });
        let measured = (|| -> Result<ChainLatency, String> {
            let mut one_way = new_histogram();
            let mut timed_out = 0;
            let start = Instant::now();
            let measure_from = start + duration.mul_f64(WARMUP_FRACTION);
            let end = measure_from + duration;
            let mut measure_start = None;
            loop {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                interrupt::check()?;
                let stamp = clock::mono_ns();
                cells.stamp.store(stamp, Ordering::Release);
                let one = 1u64;
                // SAFETY: writes 8 bytes from a live u64 to our eventfd.
                unsafe { libc::write(efd, (&one as *const u64).cast(), 8) };
                // The publisher's own wait is not timed (as tutti's): sleep-poll for `seen`.
                let deadline = Instant::now() + ECHO_TIMEOUT;
                let seen = loop {
                    if cells.seen.load(Ordering::Acquire) == stamp {
                        break true;
                    }
                    if Instant::now() > deadline {
                        break false;
                    }
                    std::thread::sleep(Duration::from_micros(20));
                };
                if now >= measure_from {
                    measure_start.get_or_insert(now);
                    if seen {
                        one_way.saturating_record(cells.latency_ns.load(Ordering::Relaxed));
                    } else {
                        timed_out += 1;
                        one_way.saturating_record(ECHO_TIMEOUT.as_nanos() as u64);
                    }
                }
            }
            let measure_start = measure_start.unwrap_or(end);
            Ok(ChainLatency {
                one_way,
                measure_start,
                measured: measure_start.elapsed(),
                timed_out,
            })
        })();
        cells.stop.store(1, Ordering::Release);
        let one = 1u64;
        // SAFETY: as above; wakes relay 1 so that it sees `stop`.
        unsafe { libc::write(efd, (&one as *const u64).cast(), 8) };
        tutti_sys::futex_wake_all(&cells.delivered);
        for relay in relay_threads {
            relay.join().map_err(|_| "wake-up chain relay panicked")??;
        }
        subscriber
            .join()
            .map_err(|_| "wake-up chain subscriber panicked")?;
        measured
    });
    // Relay processes see `stop` within their 100 ms receive wait; beyond a second, kill.
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut relay_failed = None;
    for child in &mut children {
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => break,
                Ok(Some(status)) => {
                    relay_failed = Some(format!("a relay process ended with {status}"));
                    break;
                }
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    relay_failed = Some("a relay process did not stop within 1 s".to_string());
                    break;
                }
            }
        }
    }
    // SAFETY: efd is ours and no longer used.
    unsafe { libc::close(efd) };
    match (result, relay_failed) {
        (Ok(_), Some(e)) => Err(format!("wake-up chain: {e}")),
        (result, _) => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn round_trip_on_loopback() {
        let r = round_trip(LO, LO, 64, Duration::from_millis(50), RecvMode::Busy).unwrap();
        assert!(!r.rtt.is_empty() && r.rtt.value_at_quantile(0.5) > 0);
    }

    #[test]
    fn throughput_on_loopback() {
        let r = throughput(LO, LO, 64, Duration::from_millis(100), RecvMode::Blocking, false).unwrap();
        assert!(r.datagrams_per_s > 0.0 && r.sent > 0);
    }

    #[test]
    fn offloaded_throughput_on_loopback() {
        let r = throughput(LO, LO, 64, Duration::from_millis(100), RecvMode::Blocking, true).unwrap();
        assert!(r.datagrams_per_s > 0.0 && r.sent > 0);
    }

    #[test]
    fn wakeup_chain_on_loopback() {
        let r = wakeup_chain(LO, LO, 64, Duration::from_millis(100), None, ChainRelays::Threads).unwrap();
        assert!(!r.one_way.is_empty() && r.one_way.value_at_quantile(0.5) > 0);
        assert_eq!(r.timed_out, 0, "loopback lost a datagram with one in flight");
    }

    #[test]
    fn packing() {
        assert_eq!(msgs_per_datagram(64), 23);
        assert_eq!(msgs_per_datagram(4000), 1);
        assert_eq!(datagrams_per_msg(64), 1);
        assert_eq!(datagrams_per_msg(3000), 3);
    }
}
