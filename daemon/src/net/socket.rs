//! Opening a shard's UDP socket (socket2: bind, buffer sizes read back, busy polling) and
//! the socket-address bytes both back ends hand the kernel, encoded and decoded without
//! `unsafe`.

use super::config::NetConfig;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

/// Opens and binds shard `shard`'s socket, non-blocking unless `blocking` (io_uring
/// retries internally on a blocking socket instead of failing a send with EAGAIN).
pub(crate) fn bind_udp(config: &NetConfig, shard: usize, blocking: bool) -> io::Result<(Socket, SocketAddr)> {
    let addr = config
        .shard_addr(shard)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::DGRAM.cloexec(),
        Some(Protocol::UDP),
    )
    .map_err(|e| context(e, format!("udp socket for {addr}")))?;
    // No SO_REUSEADDR: UDP has no TIME_WAIT for it to skip, and with it on both sockets
    // Linux lets a second daemon bind the same unicast port and silently take a share of
    // this shard's datagrams. A port in use must be an error instead.
    set_buffers(&socket, config.socket_buffer_bytes, addr);
    if config.busy_poll_us > 0 {
        if let Err(e) = set_int_option(&socket, libc::SO_BUSY_POLL, config.busy_poll_us as i32) {
            tracing::warn!(%addr, busy_poll_us = config.busy_poll_us, "SO_BUSY_POLL refused ({e}); continuing without");
        }
    }
    socket.set_nonblocking(!blocking)?;
    socket.bind(&addr.into()).map_err(|e| {
        context(
            e,
            format!("cannot bind UDP {addr} (net.listen / net.base_port; is another tuttid running?)"),
        )
    })?;
    let local = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("bound socket has no IP address"))?;
    Ok((socket, local))
}

fn context(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Asks for `bytes` of receive and send buffer, reads back what the kernel granted (it
/// reports twice the usable size), and as a last resort tries the FORCE variants, which
/// only CAP_NET_ADMIN may use. A smaller buffer is logged, not fatal.
fn set_buffers(socket: &Socket, bytes: usize, addr: SocketAddr) {
    if bytes == 0 {
        return;
    }
    let _ = socket.set_recv_buffer_size(bytes);
    let _ = socket.set_send_buffer_size(bytes);
    let granted = |s: &Socket| {
        (
            s.recv_buffer_size().unwrap_or(0) / 2,
            s.send_buffer_size().unwrap_or(0) / 2,
        )
    };
    let (mut rcv, mut snd) = granted(socket);
    if rcv < bytes {
        let _ = set_int_option(socket, libc::SO_RCVBUFFORCE, bytes as i32);
    }
    if snd < bytes {
        let _ = set_int_option(socket, libc::SO_SNDBUFFORCE, bytes as i32);
    }
    (rcv, snd) = granted(socket);
    if rcv < bytes || snd < bytes {
        tracing::warn!(
            %addr,
            asked = bytes,
            rcvbuf = rcv,
            sndbuf = snd,
            "kernel capped the UDP socket buffers: raise sysctl net.core.rmem_max / net.core.wmem_max (see `tutti tune check`)"
        );
    }
}

fn set_int_option(socket: &Socket, option: libc::c_int, value: i32) -> io::Result<()> {
    // SAFETY: setsockopt reads exactly size_of::<i32>() bytes from a live local.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A socket address in the kernel's layout (`sockaddr_in` or `sockaddr_in6`), kept as bytes
/// so building and reading it needs no `unsafe`; `msg_name` points at it.
#[derive(Clone, Copy)]
#[repr(C, align(4))]
pub(crate) struct RawAddr(pub [u8; RAW_ADDR_LEN]);

/// `size_of::<sockaddr_in6>()`, which also holds a `sockaddr_in`.
pub(crate) const RAW_ADDR_LEN: usize = 28;
const _: () = assert!(std::mem::size_of::<libc::sockaddr_in6>() == RAW_ADDR_LEN);
const _: () = assert!(std::mem::size_of::<libc::sockaddr_in>() <= RAW_ADDR_LEN);

impl RawAddr {
    pub(crate) const ZERO: RawAddr = RawAddr([0; RAW_ADDR_LEN]);

    /// Encodes `addr`; returns the length to put in `msg_namelen`.
    pub(crate) fn write(&mut self, addr: &SocketAddr) -> libc::socklen_t {
        let b = &mut self.0;
        match addr {
            SocketAddr::V4(a) => {
                b[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
                b[2..4].copy_from_slice(&a.port().to_be_bytes());
                b[4..8].copy_from_slice(&a.ip().octets());
                b[8..16].fill(0);
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
            }
            SocketAddr::V6(a) => {
                b[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
                b[2..4].copy_from_slice(&a.port().to_be_bytes());
                b[4..8].copy_from_slice(&a.flowinfo().to_be_bytes());
                b[8..24].copy_from_slice(&a.ip().octets());
                b[24..28].copy_from_slice(&a.scope_id().to_ne_bytes());
                RAW_ADDR_LEN as libc::socklen_t
            }
        }
    }

    pub(crate) fn read(&self) -> Option<SocketAddr> {
        parse_sockaddr(&self.0)
    }
}

/// Decodes a `sockaddr_in`/`sockaddr_in6` from bytes the kernel wrote; None for another
/// family or too few bytes.
pub(crate) fn parse_sockaddr(b: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(b.get(0..2)?.try_into().ok()?) as libc::c_int;
    let port = u16::from_be_bytes(b.get(2..4)?.try_into().ok()?);
    match family {
        libc::AF_INET => {
            let ip: [u8; 4] = b.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
        }
        libc::AF_INET6 => {
            let flow = u32::from_be_bytes(b.get(4..8)?.try_into().ok()?);
            let ip: [u8; 16] = b.get(8..24)?.try_into().ok()?;
            let scope = u32::from_ne_bytes(b.get(24..28)?.try_into().ok()?);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                port,
                flow,
                scope,
            )))
        }
        _ => None,
    }
}

/// The checks every transport makes before it queues a datagram: within `max_datagram`,
/// and to an address of the socket's family.
pub(crate) fn check_send(
    local: &SocketAddr,
    max_datagram: usize,
    to: SocketAddr,
    len: usize,
) -> Result<(), super::SendError> {
    if len > max_datagram {
        return Err(super::SendError::TooLarge {
            len,
            max: max_datagram,
        });
    }
    if !same_family(local, &to) {
        return Err(super::SendError::AddressFamily(to));
    }
    Ok(())
}

/// Whether a datagram to `to` can leave a socket bound to `local`.
pub(crate) fn same_family(local: &SocketAddr, to: &SocketAddr) -> bool {
    local.is_ipv4() == to.is_ipv4()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_round_trips() {
        for s in ["127.0.0.2:7400", "[::1]:9", "[fe80::1%3]:65535"] {
            let a: SocketAddr = s.parse().unwrap();
            let mut raw = RawAddr::ZERO;
            let len = raw.write(&a);
            assert!(len as usize <= RAW_ADDR_LEN);
            assert_eq!(raw.read(), Some(a), "{s}");
        }
        assert_eq!(parse_sockaddr(&[0; 28]), None);
        assert_eq!(parse_sockaddr(&[2, 0]), None);
    }
}
