//! The daemon's UDP transport: one non-blocking socket per shard, driven in batches by
//! io_uring or by epoll with `recvmmsg`/`sendmmsg`, behind one [`Transport`] trait the
//! shard loop calls. Buffers are allocated when a transport opens; sending and receiving
//! then allocate nothing. [`fault::FaultyTransport`] wraps any transport to inject loss,
//! duplication, delay, partitions, corruption, truncation and replays;
//! [`auth::AuthTransport`] wraps that to seal and verify datagrams with the cluster key.
//!
//! How a shard drives it (one transport per shard, opened with the shard's index; open it
//! anywhere, but do all I/O on the shard thread, since io_uring runs a request's completion
//! work on the thread that submitted it):
//!
//! ```no_run
//! # use std::net::SocketAddr;
//! # use std::os::fd::AsRawFd;
//! # use std::time::Duration;
//! # use tutti_daemon::{config::Config, net::{self, Transport}};
//! # struct Node; // stands in for the shard's protocol node
//! # impl Node {
//! #     fn handle_packet(&mut self, _now: u64, _from: SocketAddr, _bytes: &[u8]) {}
//! #     fn poll_transmit(&mut self) -> Option<(SocketAddr, &[u8])> { None }
//! # }
//! # fn shard_loop(config: &Config, shard_index: usize, node: &mut Node) -> std::io::Result<()> {
//! # const RECV_BUDGET: usize = 64;
//! # let (now, time_to_park, until_next_timer) = (0, true, Duration::from_millis(100));
//! # let shard_wake = tutti_sys::EventFd::new()?;
//! let mut udp = net::open(&config.net, shard_index)?;
//! loop {
//!     let mut work = udp.recv(RECV_BUDGET, &mut |from, bytes| node.handle_packet(now, from, bytes))?;
//!     while let Some((to, bytes)) = node.poll_transmit() {
//!         if udp.queue(to, bytes).is_err() { break; } // QueueFull: flush, try next pass
//!     }
//!     work += udp.flush()?;
//!     if work == 0 && time_to_park {
//!         udp.wait(until_next_timer, shard_wake.fd().as_raw_fd())?; // socket or doorbell
//!         shard_wake.drain();
//!     }
//! }
//! # }
//! ```

pub mod auth;
pub mod config;
pub mod epoll;
pub mod fault;
mod socket;
pub mod uring;

pub use auth::{AuthSetup, AuthStats, AuthTransport};
pub use config::{FaultConfig, IoMode, NetConfig};
pub use fault::{FaultStats, FaultyTransport};

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

/// Send-queue slots per configured batch: `flush` can push four full batches, and that
/// many datagrams can wait for the kernel before `queue` reports [`SendError::QueueFull`].
pub const SEND_QUEUE_BATCHES: usize = 4;

/// Why [`Transport::queue`] did not take a datagram (back pressure is a return value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Every send slot holds a datagram the kernel has not taken yet: `flush` and retry later.
    #[error("send queue full")]
    QueueFull,
    /// The payload exceeds `net.max_datagram`.
    #[error("datagram of {len} bytes exceeds net.max_datagram = {max}")]
    TooLarge { len: usize, max: usize },
    /// An IPv6 destination on an IPv4 socket or the reverse.
    #[error("destination {0} is not of the socket's address family")]
    AddressFamily(SocketAddr),
    /// The cluster key's sealer cannot seal this datagram (the reason says why).
    #[error("datagram not sealed: {0}")]
    Unsealable(&'static str),
}

/// Counters a transport keeps (plain integers: one thread owns the transport; the shard
/// copies them into its shared counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Datagrams the kernel accepted for sending.
    pub sent: u64,
    /// Datagrams handed to `recv`'s callback.
    pub received: u64,
    /// Datagrams the kernel refused to send (counted, dropped; `flush` carries on).
    pub send_errors: u64,
    /// Receive errors other than "nothing to read" (counted; the receive carries on).
    pub recv_errors: u64,
    /// Received datagrams longer than `max_datagram` (dropped).
    pub truncated: u64,
    /// Received datagrams whose sender address could not be read (dropped).
    pub bad_source: u64,
    /// Calls to `queue` answered with `QueueFull`.
    pub queue_full: u64,
    /// Segmentation-offload sends completed (each carried several of the `sent` datagrams).
    pub offload_sends: u64,
    /// Receives that carried several datagrams coalesced by the kernel (`net.gro`).
    pub offload_receives: u64,
    /// Fault injection counters (all zero without it).
    pub fault: FaultStats,
    /// Authentication counters (all zero without a cluster key).
    pub auth: AuthStats,
}

/// A shard's UDP endpoint: batched, non-blocking, allocation-free once open.
pub trait Transport: Send {
    /// Copies a datagram into the send queue; [`flush`](Self::flush) hands queued
    /// datagrams to the kernel in batches. Never blocks and never calls the kernel,
    /// except that io_uring may look for completed sends to free a slot.
    fn queue(&mut self, to: SocketAddr, bytes: &[u8]) -> Result<(), SendError>;

    /// Hands queued datagrams to the kernel (`sendmmsg` calls or one submission); returns
    /// how many it handed over. What the kernel cannot take now (socket buffer full) stays
    /// queued for the next flush; a datagram the kernel refuses is counted in
    /// `send_errors` and dropped.
    fn flush(&mut self) -> io::Result<usize>;

    /// Receives up to `max` datagrams without blocking, calling `f(from, bytes)` for each;
    /// returns how many it delivered (0 = nothing waiting).
    fn recv(&mut self, max: usize, f: &mut dyn FnMut(SocketAddr, &[u8])) -> io::Result<usize>;

    /// Blocks until a datagram is waiting, `wake_fd` (the shard's eventfd) is readable, or
    /// `timeout` passes. Level-triggered: returns at once while `wake_fd` stays readable,
    /// so the caller drains it. May return early without cause; the caller just polls again.
    /// Pass the same `wake_fd` each time (a change costs a re-registration).
    fn wait(&mut self, timeout: Duration, wake_fd: RawFd) -> io::Result<()>;

    /// True when the transport knows that `wake_fd` has not become readable since its last
    /// `wait` returned for it: the caller may skip draining it before the next `wait`. A
    /// wrong `true` costs at most one early return of `wait` (which still sees a readable
    /// descriptor), never a missed wake-up. False when unknown (the default).
    fn wake_quiet(&self, _wake_fd: RawFd) -> bool {
        false
    }

    /// The address the socket is bound to (the real port when `base_port` was 0).
    fn local_addr(&self) -> SocketAddr;

    /// `"uring"` or `"epoll"`.
    fn backend(&self) -> &'static str;

    /// Counters since the transport opened.
    fn stats(&self) -> NetStats;

    /// Replaces the set of partitioned peers (fault injection only; port 0 = every port of
    /// that address). Returns false, doing nothing, when fault injection is off.
    fn set_partitioned(&mut self, _peers: &[SocketAddr]) -> bool {
        false
    }
}

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn queue(&mut self, to: SocketAddr, bytes: &[u8]) -> Result<(), SendError> {
        (**self).queue(to, bytes)
    }
    fn flush(&mut self) -> io::Result<usize> {
        (**self).flush()
    }
    fn recv(&mut self, max: usize, f: &mut dyn FnMut(SocketAddr, &[u8])) -> io::Result<usize> {
        (**self).recv(max, f)
    }
    fn wait(&mut self, timeout: Duration, wake_fd: RawFd) -> io::Result<()> {
        (**self).wait(timeout, wake_fd)
    }
    fn wake_quiet(&self, wake_fd: RawFd) -> bool {
        (**self).wake_quiet(wake_fd)
    }
    fn local_addr(&self) -> SocketAddr {
        (**self).local_addr()
    }
    fn backend(&self) -> &'static str {
        (**self).backend()
    }
    fn stats(&self) -> NetStats {
        (**self).stats()
    }
    fn set_partitioned(&mut self, peers: &[SocketAddr]) -> bool {
        (**self).set_partitioned(peers)
    }
}

/// Opens shard `shard`'s transport as `config.io` says, wrapped in fault injection when
/// `config.fault` asks for any. With `io = "auto"`, an io_uring the kernel refuses
/// (`kernel.io_uring_disabled`, a seccomp filter, an old kernel) falls back to epoll with
/// a log line that says why.
pub fn open(config: &NetConfig, shard: usize) -> io::Result<Box<dyn Transport>> {
    open_with(config, shard, None)
}

/// As [`open`], and with a cluster key (`auth`) the transport seals what it sends and hands
/// on only what verifies ([`AuthTransport`], outside fault injection: injected faults hit
/// sealed bytes). `config.max_datagram` then counts the [`auth::TRAILER_LEN`] trailer.
pub fn open_with(
    config: &NetConfig,
    shard: usize,
    auth: Option<&AuthSetup>,
) -> io::Result<Box<dyn Transport>> {
    let transport = open_plain(config, shard)?;
    match auth {
        Some(setup) => Ok(Box::new(AuthTransport::new(
            transport,
            setup,
            config.max_datagram,
        )?)),
        None => Ok(transport),
    }
}

fn open_plain(config: &NetConfig, shard: usize) -> io::Result<Box<dyn Transport>> {
    config
        .validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let transport: Box<dyn Transport> = match config.io {
        IoMode::Epoll => Box::new(epoll::EpollTransport::open(config, shard)?),
        IoMode::Uring => Box::new(uring::UringTransport::open(config, shard)?),
        IoMode::Auto => match uring::UringTransport::try_open(config, shard, None) {
            Ok(t) => Box::new(t),
            Err(uring::OpenFailure::Failed(e)) => return Err(e),
            Err(uring::OpenFailure::Refused(e)) => {
                tracing::info!(
                    shard,
                    reason = %uring_refusal(&e),
                    "io_uring unavailable, using epoll for UDP"
                );
                Box::new(epoll::EpollTransport::open(config, shard)?)
            }
        },
    };
    if config.fault.is_active() {
        Ok(Box::new(FaultyTransport::new(
            transport,
            &config.fault,
            config.max_datagram,
        )))
    } else {
        Ok(transport)
    }
}

/// Explains an io_uring setup failure in terms an operator can act on.
fn uring_refusal(e: &io::Error) -> String {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0);
    match e.raw_os_error() {
        Some(libc::ENOSYS) => format!("{e} (kernel without io_uring)"),
        Some(libc::EPERM) | Some(libc::EACCES) if disabled > 0 => {
            format!("{e} (sysctl kernel.io_uring_disabled = {disabled})")
        }
        Some(libc::EPERM) | Some(libc::EACCES) => format!("{e} (a seccomp filter or LSM refuses io_uring)"),
        Some(libc::EINVAL) => format!("{e} (kernel too old for the io_uring features used)"),
        _ => e.to_string(),
    }
}
