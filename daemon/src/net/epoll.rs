//! The epoll back end: `sendmmsg` and `recvmmsg` move up to `net.batch` datagrams per
//! system call between the kernel and buffers allocated when the transport opens;
//! `epoll_pwait2` waits on the socket and the shard's eventfd. All `unsafe` here is the
//! system calls, each over memory this struct owns.

use super::config::NetConfig;
use super::socket::{bind_udp, check_send, RawAddr};
use super::{NetStats, SendError, Transport, SEND_QUEUE_BATCHES};
use socket2::Socket;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// epoll user data of the socket and of the wake descriptor.
const TOKEN_SOCKET: u64 = 0;
const TOKEN_WAKE: u64 = 1;

pub struct EpollTransport {
    socket: Socket,
    epoll: OwnedFd,
    /// The wake descriptor registered with `epoll`, if any.
    wake_registered: Option<RawFd>,
    local: SocketAddr,
    max_datagram: usize,
    batch: usize,
    /// Send queue: a ring of `send_len.len()` slots of `max_datagram` bytes each.
    send_buf: Box<[u8]>,
    send_len: Box<[usize]>,
    send_addr: Box<[RawAddr]>,
    send_addr_len: Box<[libc::socklen_t]>,
    send_head: usize,
    send_count: usize,
    /// Receive area: `batch` slots of `max_datagram` bytes.
    recv_buf: Box<[u8]>,
    recv_addr: Box<[RawAddr]>,
    /// Scratch headers for one system call, refilled before each (they point into the
    /// buffers above, which are heap allocations that never move).
    iov: Box<[libc::iovec]>,
    msgs: Box<[libc::mmsghdr]>,
    stats: NetStats,
}

// SAFETY: the raw pointers in `iov` and `msgs` only ever point into heap buffers owned by
// this same struct, are rewritten before every system call, and are never shared: the
// struct may move to another thread as a whole.
unsafe impl Send for EpollTransport {}

impl EpollTransport {
    pub fn open(config: &NetConfig, shard: usize) -> io::Result<EpollTransport> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let (socket, local) = bind_udp(config, shard, false)?;
        // SAFETY: plain epoll_create1; the descriptor is checked, then owned.
        let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(raw) };
        epoll_add(&epoll, socket.as_raw_fd(), TOKEN_SOCKET)?;
        let (batch, max) = (config.batch, config.max_datagram);
        let slots = batch * SEND_QUEUE_BATCHES;
        // SAFETY: iovec is a plain C struct for which all-zero (a null base, zero length)
        // is a valid value.
        let zero_iov: libc::iovec = unsafe { std::mem::zeroed() };
        // SAFETY: mmsghdr is a plain C struct for which all-zero (null pointers, zero
        // lengths) is a valid value.
        let zero_msg: libc::mmsghdr = unsafe { std::mem::zeroed() };
        tracing::debug!(%local, batch, max_datagram = max, "epoll UDP transport open");
        Ok(EpollTransport {
            socket,
            epoll,
            wake_registered: None,
            local,
            max_datagram: max,
            batch,
            send_buf: vec![0; slots * max].into_boxed_slice(),
            send_len: vec![0; slots].into_boxed_slice(),
            send_addr: vec![RawAddr::ZERO; slots].into_boxed_slice(),
            send_addr_len: vec![0; slots].into_boxed_slice(),
            send_head: 0,
            send_count: 0,
            recv_buf: vec![0; batch * max].into_boxed_slice(),
            recv_addr: vec![RawAddr::ZERO; batch].into_boxed_slice(),
            iov: vec![zero_iov; batch].into_boxed_slice(),
            msgs: vec![zero_msg; batch].into_boxed_slice(),
            stats: NetStats::default(),
        })
    }

    fn slots(&self) -> usize {
        self.send_len.len()
    }
}

fn epoll_add(epoll: &OwnedFd, fd: RawFd, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: token,
    };
    // SAFETY: `ev` is a live epoll_event; both descriptors are open.
    if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Transport for EpollTransport {
    fn queue(&mut self, to: SocketAddr, bytes: &[u8]) -> Result<(), SendError> {
        check_send(&self.local, self.max_datagram, to, bytes.len())?;
        if self.send_count == self.slots() {
            self.stats.queue_full += 1;
            return Err(SendError::QueueFull);
        }
        let slot = (self.send_head + self.send_count) % self.slots();
        let at = slot * self.max_datagram;
        self.send_buf[at..at + bytes.len()].copy_from_slice(bytes);
        self.send_len[slot] = bytes.len();
        self.send_addr_len[slot] = self.send_addr[slot].write(&to);
        self.send_count += 1;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<usize> {
        let mut handed = 0;
        while self.send_count > 0 {
            let n = self.send_count.min(self.batch);
            let base = self.send_buf.as_mut_ptr();
            for i in 0..n {
                let slot = (self.send_head + i) % self.slots();
                self.iov[i] = libc::iovec {
                    // SAFETY: slot < slots, so the offset stays inside `send_buf`.
                    iov_base: unsafe { base.add(slot * self.max_datagram) }.cast(),
                    iov_len: self.send_len[slot],
                };
                let hdr = &mut self.msgs[i].msg_hdr;
                hdr.msg_name = self.send_addr[slot].0.as_mut_ptr().cast();
                hdr.msg_namelen = self.send_addr_len[slot];
                hdr.msg_iov = &mut self.iov[i];
                hdr.msg_iovlen = 1;
                hdr.msg_control = std::ptr::null_mut();
                hdr.msg_controllen = 0;
                hdr.msg_flags = 0;
            }
            // SAFETY: the first n headers point at live iovecs, addresses and payloads in
            // buffers owned by self, not touched until the call returns.
            let r = unsafe { libc::sendmmsg(self.socket.as_raw_fd(), self.msgs.as_mut_ptr(), n as u32, 0) };
            if r >= 0 {
                let r = r as usize;
                self.send_head = (self.send_head + r) % self.slots();
                self.send_count -= r;
                self.stats.sent += r as u64;
                handed += r;
                // r < n: the socket buffer filled part way, or the next datagram fails;
                // the next call reports either on its own.
                continue;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::ENOBUFS) => break,
                Some(libc::EINTR) => continue,
                _ => {
                    // The first datagram of the batch was refused (no route, EMSGSIZE,
                    // a firewall's EPERM): drop it alone and go on with the rest.
                    tracing::trace!(error = %e, "UDP send refused");
                    self.stats.send_errors += 1;
                    self.send_head = (self.send_head + 1) % self.slots();
                    self.send_count -= 1;
                }
            }
        }
        Ok(handed)
    }

    fn recv(&mut self, max: usize, f: &mut dyn FnMut(SocketAddr, &[u8])) -> io::Result<usize> {
        let mut delivered = 0;
        let mut budget = max;
        while budget > 0 {
            let want = budget.min(self.batch);
            let base = self.recv_buf.as_mut_ptr();
            for i in 0..want {
                self.iov[i] = libc::iovec {
                    // SAFETY: i < batch, so the offset stays inside `recv_buf`.
                    iov_base: unsafe { base.add(i * self.max_datagram) }.cast(),
                    iov_len: self.max_datagram,
                };
                let hdr = &mut self.msgs[i].msg_hdr;
                hdr.msg_name = self.recv_addr[i].0.as_mut_ptr().cast();
                hdr.msg_namelen = std::mem::size_of::<RawAddr>() as libc::socklen_t;
                hdr.msg_iov = &mut self.iov[i];
                hdr.msg_iovlen = 1;
                hdr.msg_control = std::ptr::null_mut();
                hdr.msg_controllen = 0;
                hdr.msg_flags = 0;
                self.msgs[i].msg_len = 0;
            }
            // SAFETY: the first `want` headers point at live receive slots and address
            // buffers owned by self, of the lengths given.
            let r = unsafe {
                libc::recvmmsg(
                    self.socket.as_raw_fd(),
                    self.msgs.as_mut_ptr(),
                    want as u32,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    Some(libc::EINTR) => continue,
                    _ => {
                        self.stats.recv_errors += 1;
                        return Err(e);
                    }
                }
            }
            let got = r as usize;
            for i in 0..got {
                let m = &self.msgs[i];
                if m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
                    self.stats.truncated += 1;
                    continue;
                }
                let Some(from) = self.recv_addr[i].read() else {
                    self.stats.bad_source += 1;
                    continue;
                };
                let at = i * self.max_datagram;
                f(from, &self.recv_buf[at..at + m.msg_len as usize]);
                self.stats.received += 1;
                delivered += 1;
            }
            budget -= got;
            if got < want {
                break; // drained
            }
        }
        Ok(delivered)
    }

    fn wait(&mut self, timeout: Duration, wake_fd: RawFd) -> io::Result<()> {
        if self.wake_registered != Some(wake_fd) {
            if let Some(old) = self.wake_registered.take() {
                // SAFETY: removing a registration needs no event buffer (Linux >= 2.6.9).
                unsafe {
                    libc::epoll_ctl(
                        self.epoll.as_raw_fd(),
                        libc::EPOLL_CTL_DEL,
                        old,
                        std::ptr::null_mut(),
                    )
                };
            }
            epoll_add(&self.epoll, wake_fd, TOKEN_WAKE)?;
            self.wake_registered = Some(wake_fd);
        }
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 2];
        let ts = libc::timespec {
            tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `events` has room for 2 entries; `ts` is live; no signal mask.
        let r = unsafe {
            libc::epoll_pwait2(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                &ts,
                std::ptr::null(),
            )
        };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => Ok(()),
            Some(libc::ENOSYS) => {
                // Kernel before 5.11: millisecond resolution, rounded up so a short
                // timeout does not become a busy loop.
                let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
                // SAFETY: as above.
                let r = unsafe {
                    libc::epoll_wait(
                        self.epoll.as_raw_fd(),
                        events.as_mut_ptr(),
                        events.len() as i32,
                        ms,
                    )
                };
                if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            }
            _ => Err(e),
        }
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn backend(&self) -> &'static str {
        "epoll"
    }

    fn stats(&self) -> NetStats {
        self.stats
    }
}
