//! The few Linux system calls tutti needs, each behind a small safe wrapper: anonymous
//! shared memory (`memfd` + `mmap`), the control socket (`SOCK_SEQPACKET` with SCM_RIGHTS
//! and SO_PEERCRED), `eventfd` and shared futexes. Everything `unsafe` about the operating
//! system lives here; the daemon and the client library above it are safe Rust.
#![warn(clippy::undocumented_unsafe_blocks)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_isize(ret: isize) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// A shared mapping of a file descriptor's first `len` bytes, unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a Mapping is a plain region of shared memory; who may touch which bytes when is
// the business of the ring types built on top (they are single-owner and say so).
unsafe impl Send for Mapping {}
// SAFETY: `&Mapping` only hands out the base pointer and length; any access through the
// pointer is governed by the types built on top, as for Send.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Creates a `memfd` of `len` bytes (zero-filled, sealed against shrinking) and maps it
    /// read-write. `name` shows in /proc/PID/fd and /proc/PID/maps. Whoever receives the
    /// descriptor may map it writable too: use it for memory every holder may write (a
    /// client's own publish ring, a group doorbell), and
    /// [`create_read_only_for_others`](Self::create_read_only_for_others) otherwise.
    pub fn create(name: &str, len: usize) -> io::Result<(OwnedFd, Mapping)> {
        let (fd, map) = Self::create_unsealed(name, len)?;
        // A client must not be able to shrink the file under the daemon's mapping (that
        // would turn a read into SIGBUS), so seal its size.
        add_seals(&fd, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL)?;
        Ok((fd, map))
    }

    /// As [`create`](Self::create), but once the returned read-write mapping exists the
    /// file is sealed with `F_SEAL_FUTURE_WRITE`: that mapping stays writable, and nothing
    /// else can ever write the memory again, whoever holds the descriptor. A receiver
    /// cannot map it writable (nor `mprotect` a read-only mapping to writable), `write`,
    /// `pwrite` or `fallocate` it, not even through a descriptor reopened writable from
    /// `/proc/PID/fd/N`. Used for the memory the daemon writes and clients only read
    /// (delivery logs, the shard doorbell, the counters pages).
    ///
    /// Fails with an `io::Error` of kind `Unsupported` on a kernel without `F_SEAL_FUTURE_WRITE` (before Linux 5.1): the caller must refuse
    /// rather than hand out memory a reader could rewrite.
    pub fn create_read_only_for_others(name: &str, len: usize) -> io::Result<(OwnedFd, Mapping)> {
        let (fd, map) = Self::create_unsealed(name, len)?;
        add_seals(
            &fd,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_SEAL,
        )
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::EINVAL) {
                io::Error::new(
                    io::ErrorKind::Unsupported,
                    "this kernel lacks F_SEAL_FUTURE_WRITE (Linux 5.1 or later is needed), so a \
                     delivery log could not be made read-only for its readers",
                )
            } else {
                e
            }
        })?;
        Ok((fd, map))
    }

    fn create_unsealed(name: &str, len: usize) -> io::Result<(OwnedFd, Mapping)> {
        let cname = CString::new(name).map_err(|_| io::Error::other("memfd name has a NUL"))?;
        // SAFETY: cname is a valid C string; the flags are valid memfd_create flags.
        let raw =
            cvt(unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) })?;
        // SAFETY: raw was just returned by memfd_create and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let size = libc::off_t::try_from(len).map_err(|_| io::Error::other("mapping too large"))?;
        // SAFETY: fd is a valid memfd.
        cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), size) })?;
        let map = Mapping::map(&fd, len, true)?;
        Ok((fd, map))
    }

    /// Maps the first `len` bytes of `fd` shared, read-write or read-only. Checks first that
    /// the file really is that large, so that a short file cannot fault later.
    pub fn map(fd: &OwnedFd, len: usize, writable: bool) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::Error::other("cannot map 0 bytes"));
        }
        // SAFETY: an all-zero stat is a valid value to be overwritten by fstat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fd is valid and st is a valid out pointer.
        cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
        if (st.st_size as u64) < len as u64 {
            return Err(io::Error::other(format!(
                "shared-memory file holds {} bytes, expected at least {len}",
                st.st_size
            )));
        }
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh mapping at an address of the kernel's choosing; aliases nothing.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Mapping { ptr, len })
    }

    /// Start of the region (page aligned).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len came from a successful mmap and are unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

fn add_seals(fd: &OwnedFd, seals: libc::c_int) -> io::Result<()> {
    // SAFETY: fcntl(F_ADD_SEALS) on a valid descriptor with a plain integer argument.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) }).map(|_| ())
}

/// The seals of a memfd (`F_GET_SEALS`), to check what a peer sent or what we hand out.
pub fn seals(fd: &OwnedFd) -> io::Result<Seals> {
    // SAFETY: fcntl(F_GET_SEALS) on a valid descriptor.
    let bits = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) })?;
    Ok(Seals {
        future_write: bits & libc::F_SEAL_FUTURE_WRITE != 0,
        size: bits & (libc::F_SEAL_SHRINK | libc::F_SEAL_GROW) == (libc::F_SEAL_SHRINK | libc::F_SEAL_GROW),
        sealed: bits & libc::F_SEAL_SEAL != 0,
    })
}

/// The seals of a memfd that matter to tutti.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seals {
    /// No new write access of any kind (`F_SEAL_FUTURE_WRITE`).
    pub future_write: bool,
    /// Neither shrinks nor grows.
    pub size: bool,
    /// No more seals can be added.
    pub sealed: bool,
}

/// Size of a file descriptor's file (to map what a peer sent without trusting its word).
pub fn file_len(fd: &OwnedFd) -> io::Result<usize> {
    // SAFETY: an all-zero stat is a valid value to be overwritten by fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is valid and st is a valid out pointer.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    usize::try_from(st.st_size).map_err(|_| io::Error::other("negative file size"))
}

/// The credentials of the process at the other end of a Unix socket (SO_PEERCRED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// Most supplementary groups [`SeqPacket::peer_groups`] reads (Linux's NGROUPS_MAX).
pub const MAX_PEER_GROUPS: usize = 65536;

/// Most descriptors one control message carries.
pub const MAX_FDS: usize = 8;

/// A connected `SOCK_SEQPACKET` Unix socket: message boundaries are kept, descriptors ride
/// along with SCM_RIGHTS, and a hang-up of the peer reads as end of file.
#[derive(Debug)]
pub struct SeqPacket {
    fd: OwnedFd,
}

impl SeqPacket {
    /// Connects to a listening control socket at `path`.
    pub fn connect(path: &Path) -> io::Result<SeqPacket> {
        let fd = socket()?;
        let (addr, len) = sockaddr_un(path)?;
        // SAFETY: addr is a valid sockaddr_un of `len` bytes.
        cvt(unsafe { libc::connect(fd.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len) })?;
        Ok(SeqPacket { fd })
    }

    /// The peer's pid, uid and gid as the kernel recorded them at connect time.
    pub fn peer_cred(&self) -> io::Result<PeerCred> {
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: cred is a valid out buffer of `len` bytes for SO_PEERCRED.
        cvt(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        })?;
        Ok(PeerCred {
            pid: cred.pid,
            uid: cred.uid,
            gid: cred.gid,
        })
    }

    /// The peer's supplementary groups as the kernel recorded them at connect time
    /// (SO_PEERGROUPS, Linux 4.13+). Atomic with the connection, unlike a look at
    /// /proc/PID/status (the pid may be gone and reused by then). At most [`MAX_PEER_GROUPS`]
    /// are returned: a longer list is an error, never a silent cut.
    pub fn peer_groups(&self) -> io::Result<Vec<u32>> {
        // Most users are in a few groups: ask with room for 32, and if the kernel says
        // (ERANGE) that more are needed, once more with exactly that room.
        let mut groups: Vec<libc::gid_t> = vec![0; 32];
        loop {
            let mut len = std::mem::size_of_val(groups.as_slice()) as libc::socklen_t;
            // SAFETY: groups is a valid out buffer of `len` bytes for SO_PEERGROUPS.
            let r = cvt(unsafe {
                libc::getsockopt(
                    self.fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_PEERGROUPS,
                    groups.as_mut_ptr().cast(),
                    &mut len,
                )
            });
            let count = len as usize / std::mem::size_of::<libc::gid_t>();
            match r {
                Ok(_) => {
                    groups.truncate(count);
                    return Ok(groups);
                }
                Err(e) if e.raw_os_error() == Some(libc::ERANGE) && count > groups.len() => {
                    if count > MAX_PEER_GROUPS {
                        return Err(io::Error::other(
                            "peer has more supplementary groups than NGROUPS_MAX",
                        ));
                    }
                    groups = vec![0; count];
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends one message with up to [`MAX_FDS`] descriptors.
    pub fn send(&self, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
        if fds.len() > MAX_FDS {
            return Err(io::Error::other("too many descriptors in one message"));
        }
        let mut iov = libc::iovec {
            iov_base: bytes.as_ptr() as *mut _,
            iov_len: bytes.len(),
        };
        let mut cmsg_buf = CmsgBuf::new();
        // SAFETY: an all-zero msghdr is valid; fields are filled below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            let data_len = std::mem::size_of_val(fds) as u32;
            // SAFETY: CMSG_SPACE is a pure size computation.
            let space = unsafe { libc::CMSG_SPACE(data_len) } as usize;
            msg.msg_control = cmsg_buf.0.as_mut_ptr().cast();
            msg.msg_controllen = space;
            // SAFETY: msg_control points at a buffer of at least `space` bytes (CmsgBuf holds
            // room for MAX_FDS descriptors), so the first header and its data fit.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as usize;
                std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast::<RawFd>(), fds.len());
            }
        }
        loop {
            // SAFETY: msg points at live buffers for the duration of the call.
            let r = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
            match cvt_isize(r) {
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(_) => return Err(io::Error::other("control message truncated on send")),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Receives one message into `buf` and the descriptors that came with it (each owned
    /// and close-on-exec). Returns 0 bytes at end of file (the peer hung up). A message
    /// longer than `buf` is an error, not a silent truncation.
    pub fn recv(&self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
        self.recv_flags(buf, fds, 0)
    }

    /// As [`recv`](Self::recv), but returns `WouldBlock` instead of waiting.
    pub fn try_recv(&self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
        self.recv_flags(buf, fds, libc::MSG_DONTWAIT)
    }

    fn recv_flags(&self, buf: &mut [u8], fds: &mut Vec<OwnedFd>, flags: i32) -> io::Result<usize> {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut cmsg_buf = CmsgBuf::new();
        // SAFETY: an all-zero msghdr is valid; fields are filled below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg_buf.0.as_mut_ptr().cast();
        msg.msg_controllen = cmsg_buf.0.len();
        let n = loop {
            // SAFETY: msg points at live buffers for the duration of the call.
            let r = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, flags | libc::MSG_CMSG_CLOEXEC) };
            match cvt_isize(r) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        // Take ownership of every descriptor first, so none leaks on the error paths.
        // SAFETY: the kernel filled msg_control with msg_controllen bytes of valid cmsgs;
        // the CMSG_* macros walk them within those bounds.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let data_len = (*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize;
                    let count = data_len / std::mem::size_of::<RawFd>();
                    let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    for i in 0..count {
                        fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
            return Err(io::Error::other("control message truncated on receive"));
        }
        Ok(n)
    }
}

impl AsRawFd for SeqPacket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A listening `SOCK_SEQPACKET` Unix socket.
#[derive(Debug)]
pub struct SeqPacketListener {
    fd: OwnedFd,
}

impl SeqPacketListener {
    /// Binds and listens at `path` (which must not exist).
    pub fn bind(path: &Path) -> io::Result<SeqPacketListener> {
        let fd = socket()?;
        let (addr, len) = sockaddr_un(path)?;
        // SAFETY: addr is a valid sockaddr_un of `len` bytes.
        cvt(unsafe { libc::bind(fd.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len) })?;
        // SAFETY: fd is a bound socket.
        cvt(unsafe { libc::listen(fd.as_raw_fd(), 128) })?;
        Ok(SeqPacketListener { fd })
    }

    /// Accepts one connection without blocking (`WouldBlock` when none waits).
    pub fn accept(&self) -> io::Result<SeqPacket> {
        // SAFETY: null address pointers are allowed; the flags are valid.
        let raw = cvt(unsafe {
            libc::accept4(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            )
        })?;
        Ok(SeqPacket {
            // SAFETY: raw is a fresh descriptor we own.
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
        })
    }

    pub fn set_nonblocking(&self) -> io::Result<()> {
        set_nonblocking(self.fd.as_raw_fd())
    }
}

impl AsRawFd for SeqPacketListener {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a valid descriptor with valid commands.
    unsafe {
        let flags = cvt(libc::fcntl(fd, libc::F_GETFL))?;
        cvt(libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK))?;
    }
    Ok(())
}

/// Room for one SCM_RIGHTS header with [`MAX_FDS`] descriptors, suitably aligned.
#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

impl CmsgBuf {
    fn new() -> CmsgBuf {
        const _: () = assert!(16 + MAX_FDS * 4 <= 64);
        CmsgBuf([0; 64])
    }
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call.
    let raw = cvt(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: raw is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn sockaddr_un(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::other(format!(
            "socket path {} is longer than the {} bytes a Unix socket address holds",
            path.display(),
            addr.sun_path.len() - 1
        )));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    Ok((addr, len as libc::socklen_t))
}

/// An eventfd: the doorbell a client rings to wake a parked shard.
#[derive(Debug)]
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    /// A non-blocking eventfd (reads are done after poll says it is readable).
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: plain eventfd(2) call.
        let raw = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        Ok(EventFd {
            // SAFETY: raw is a fresh descriptor we own.
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
        })
    }

    pub fn from_owned(fd: OwnedFd) -> EventFd {
        EventFd { fd }
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Adds one to the counter, waking a waiter. Never blocks (a full counter already wakes).
    pub fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64. Failure (EAGAIN on a saturated counter)
        // still leaves the descriptor readable, which is all a wake needs.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Resets the counter to zero; returns whether it was non-zero.
    pub fn drain(&self) -> bool {
        let mut value: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), (&mut value as *mut u64).cast(), 8) };
        n == 8 && value > 0
    }

    /// Waits until the counter is non-zero or `timeout` passes; returns whether it fired.
    pub fn wait(&self, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        n > 0
    }
}

/// The daemon's end of a descriptor wake-up (a stream socket pair, [`wake_pair`]): one
/// byte sent makes the client's end readable. Sending never blocks, whatever the client
/// does with its end (`MSG_DONTWAIT`: unlike a pipe or an eventfd, whose blocking mode the
/// client could change on the shared file description), and the client cannot write back
/// (this end is shut for reading).
#[derive(Debug)]
pub struct WakeSender {
    fd: OwnedFd,
}

impl WakeSender {
    /// Makes the client's end readable. False if the client's end is gone; a full buffer
    /// (a client that does not drain) counts as done: its end is readable.
    pub fn wake(&self) -> bool {
        let byte = 1u8;
        // SAFETY: sends 1 byte from a live u8; no descriptors, no address.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                (&byte as *const u8).cast(),
                1,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        n == 1 || io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
    }
}

/// What draining the client's end of a wake pair found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakeDrain {
    /// Nothing was waiting.
    Empty,
    /// At least one wake-up was taken.
    Woken,
    /// The daemon closed its end (the group was left, the session ended or the daemon
    /// died): the descriptor stays readable from now on.
    HungUp,
}

/// Drains the client's end of a wake pair without blocking (one `recv` of up to 64
/// wake-ups; more leave it readable, which a reader takes as a spurious wake-up).
pub fn wake_drain(fd: &OwnedFd) -> WakeDrain {
    let mut buf = [0u8; 64];
    // SAFETY: receives at most 64 bytes into a live buffer.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => WakeDrain::HungUp,
        n if n > 0 => WakeDrain::Woken,
        _ => match io::Error::last_os_error().kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => WakeDrain::Empty,
            _ => WakeDrain::HungUp,
        },
    }
}

/// A wake pair: the daemon's sending end and the client's end (to pass over the control
/// socket; the client polls it and drains it with [`wake_drain`]).
pub fn wake_pair() -> io::Result<(WakeSender, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair(2) writes two descriptors into a live array of two.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: two fresh descriptors we own.
    let (daemon, client) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: shutdown(2) on a live socket.
    cvt(unsafe { libc::shutdown(daemon.as_raw_fd(), libc::SHUT_RD) })?;
    Ok((WakeSender { fd: daemon }, client))
}

/// Waits on a futex word in shared memory while it still holds `expected`, at most
/// `timeout`. Returns on wake, timeout, signal or a changed value: the caller re-checks.
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: word is a live, aligned u32 (it may be in memory shared with other processes,
    // hence the non-private futex op); ts is a valid relative timeout.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
        )
    };
}

/// Wakes every waiter on a shared futex word.
pub fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: word is a live, aligned u32; FUTEX_WAKE only reads its address.
    unsafe { libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX) };
}

/// `membarrier(2)` commands (linux/membarrier.h).
const MEMBARRIER_CMD_QUERY: libc::c_int = 0;
const MEMBARRIER_CMD_GLOBAL_EXPEDITED: libc::c_int = 1 << 1;
const MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED: libc::c_int = 1 << 2;

fn membarrier(cmd: libc::c_int) -> io::Result<libc::c_long> {
    // SAFETY: membarrier takes no pointers; an unknown or refused command is an error
    // return (EINVAL, or EPERM under a seccomp filter that returns it).
    let r = unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0 as libc::c_uint, 0 as libc::c_int) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Whether this kernel has `MEMBARRIER_CMD_GLOBAL_EXPEDITED` and lets us call it: a full
/// memory barrier on every running thread of the processes that registered for it
/// ([`membarrier_register_global_expedited`]), an asymmetric fence for the rare side of a
/// handshake (the shard's doorbell: `tutti_wire::shm::doorbell`).
pub fn membarrier_global_expedited_available() -> bool {
    membarrier(MEMBARRIER_CMD_QUERY).is_ok_and(|cmds| {
        let need = MEMBARRIER_CMD_GLOBAL_EXPEDITED | MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED;
        cmds & need as libc::c_long == need as libc::c_long
    })
}

/// Registers this process for [`membarrier_global_expedited`]: from now on its running
/// threads take part in every such barrier (an interrupt while one of them is on a CPU).
pub fn membarrier_register_global_expedited() -> io::Result<()> {
    membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED).map(drop)
}

/// A full memory barrier on every running thread of every registered process (and this
/// one) before it returns: accesses each made before its barrier are visible to the caller
/// afterwards, and accesses after it see what the caller stored before the call.
pub fn membarrier_global_expedited() -> io::Result<()> {
    membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED).map(drop)
}

/// The kernel's CPU wake-up latency limit (PM QoS) that idle CPUs may not exceed while a
/// request is open, in microseconds: `/dev/cpu_dma_latency`.
pub const CPU_LATENCY_DEVICE: &str = "/dev/cpu_dma_latency";

/// An open request to the kernel's CPU latency QoS for a wake-up latency of 0: while it is
/// held, idle CPUs poll (cpuidle's polling state) instead of halting, so a thread woken on
/// an idle CPU runs at once rather than after the CPU (on a virtual machine, the host) wakes
/// it. The cost is the idle CPUs' time (a virtual machine's vCPUs keep their host cores
/// busy). Dropping it closes the device, which withdraws the request; the kernel keeps the
/// strictest of all open requests.
pub struct CpuLatencyHold {
    _device: std::fs::File,
}

impl CpuLatencyHold {
    /// Opens the device and asks for 0 µs. Needs write access to it (root by default).
    pub fn take() -> io::Result<CpuLatencyHold> {
        use std::io::Write;
        let mut device = std::fs::OpenOptions::new().write(true).open(CPU_LATENCY_DEVICE)?;
        // The device takes a native-endian s32 (or the value as text).
        device.write_all(&0i32.to_ne_bytes())?;
        Ok(CpuLatencyHold { _device: device })
    }
}

/// The CPU latency limit in force (the strictest open request, or the kernel's default of
/// 2,000 s when there is none), in microseconds. Needs read access to the device.
pub fn cpu_latency_limit_us() -> io::Result<i32> {
    use std::io::Read;
    let mut value = [0u8; 4];
    std::fs::File::open(CPU_LATENCY_DEVICE)?.read_exact(&mut value)?;
    Ok(i32::from_ne_bytes(value))
}

/// Polls a set of descriptors for readability; `timeout` None waits forever. Returns the
/// `revents` of each, in order.
pub fn poll_readable(fds: &[RawFd], revents: &mut Vec<i16>, timeout: Option<Duration>) -> io::Result<()> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    // SAFETY: pfds is a valid array of pollfd.
    let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    revents.clear();
    revents.extend(pfds.iter().map(|p| if r < 0 { 0 } else { p.revents }));
    Ok(())
}

/// The poll bits, re-exported so callers need not depend on libc.
pub const POLLIN: i16 = libc::POLLIN;
pub const POLLHUP: i16 = libc::POLLHUP;
pub const POLLERR: i16 = libc::POLLERR;

#[cfg(test)]
mod tests {
    use super::*;

    /// While a hold is open the limit in force is 0 µs (the strictest request wins). Only
    /// where the device exists and this user may open it (root); after the drop another
    /// process's request (a daemon test's) may still hold it at 0, so that is not checked.
    #[test]
    fn a_cpu_latency_hold_sets_the_limit_to_zero_while_held() {
        let hold = match CpuLatencyHold::take() {
            Ok(hold) => hold,
            Err(e) => {
                eprintln!("skipped: {CPU_LATENCY_DEVICE}: {e}");
                return;
            }
        };
        assert_eq!(cpu_latency_limit_us().unwrap(), 0);
        drop(hold);
    }

    #[test]
    fn a_wake_pair_wakes_drains_and_tells_a_hang_up() {
        let (sender, client) = wake_pair().unwrap();
        let readable = |fd: &OwnedFd| {
            let mut revents = Vec::new();
            poll_readable(&[fd.as_raw_fd()], &mut revents, Some(Duration::ZERO)).unwrap();
            revents[0] & libc::POLLIN != 0
        };
        assert_eq!(wake_drain(&client), WakeDrain::Empty);
        assert!(!readable(&client));
        assert!(sender.wake() && sender.wake());
        assert!(readable(&client));
        assert_eq!(wake_drain(&client), WakeDrain::Woken);
        assert!(!readable(&client), "one recv drains both");
        // The client cannot make its own end readable: the daemon's end is shut for reading.
        // SAFETY: writes 1 byte from a live u8.
        let n = unsafe {
            libc::send(
                client.as_raw_fd(),
                [1u8].as_ptr().cast(),
                1,
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        assert!(n < 0 || !readable(&client));
        // A client that never drains does not block the daemon.
        for _ in 0..1_000_000 {
            if !sender.wake() {
                break;
            }
        }
        drop(sender);
        while wake_drain(&client) == WakeDrain::Woken {}
        assert_eq!(wake_drain(&client), WakeDrain::HungUp);
        assert!(readable(&client), "a hang-up stays readable");
    }

    fn temp_path(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tutti-sys-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("s.sock")
    }

    #[test]
    fn memfd_round_trip_through_seqpacket() {
        let path = temp_path("memfd");
        let listener = SeqPacketListener::bind(&path).unwrap();
        let client = SeqPacket::connect(&path).unwrap();
        let server = listener.accept().unwrap();

        let (fd, map) = Mapping::create("tutti-test", 4096).unwrap();
        // SAFETY: the mapping is 4096 bytes and ours alone here.
        unsafe { map.as_ptr().add(100).write(42) };
        server.send(b"hello", &[fd.as_raw_fd()]).unwrap();

        let mut buf = [0u8; 64];
        let mut fds = Vec::new();
        let n = client.recv(&mut buf, &mut fds).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(fds.len(), 1);
        assert_eq!(file_len(&fds[0]).unwrap(), 4096);
        let theirs = Mapping::map(&fds[0], 4096, false).unwrap();
        // SAFETY: mapped 4096 bytes.
        assert_eq!(unsafe { theirs.as_ptr().add(100).read() }, 42);
        // Asking for more than the file holds is refused, not a later SIGBUS.
        assert!(Mapping::map(&fds[0], 8192, false).is_err());

        let cred = server.peer_cred().unwrap();
        assert_eq!(cred.pid as u32, std::process::id());

        drop(client);
        let n = server.recv(&mut buf, &mut fds).unwrap();
        assert_eq!(n, 0, "hang-up reads as end of file");
    }

    /// Every way a holder of the descriptor could write a sealed region fails, while the
    /// creator's own mapping keeps writing and readers see what it writes.
    #[test]
    fn read_only_for_others_cannot_be_written_through_the_descriptor() {
        use std::io::Write;
        use std::os::unix::fs::FileExt;
        const LEN: usize = 8192;
        let (fd, own) = Mapping::create_read_only_for_others("tutti-sealed", LEN).unwrap();
        let seals = seals(&fd).unwrap();
        assert!(seals.future_write && seals.size && seals.sealed, "{seals:?}");
        // SAFETY: our own writable mapping of LEN bytes.
        unsafe { own.as_ptr().add(10).write(1) };

        // A writable shared mapping is refused.
        let e = Mapping::map(&fd, LEN, true).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
        // A read-only mapping cannot be made writable.
        let ro = Mapping::map(&fd, LEN, false).unwrap();
        // SAFETY: mprotect on a mapping we own; failure is the expected outcome.
        let r = unsafe { libc::mprotect(ro.as_ptr().cast(), LEN, libc::PROT_READ | libc::PROT_WRITE) };
        assert_eq!(r, -1, "mprotect to writable must fail");
        // pwrite through the descriptor (memfds are opened read-write).
        let file = std::fs::File::from(fd.try_clone().unwrap());
        assert!(file.write_at(b"forged", 0).is_err(), "pwrite must fail");
        // Reopened writable through /proc: the open itself may succeed, writing may not.
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        if let Ok(mut reopened) = std::fs::OpenOptions::new().read(true).write(true).open(&path) {
            assert!(
                reopened.write_all(b"forged").is_err(),
                "write via /proc must fail"
            );
            assert!(reopened.write_at(b"forged", 64).is_err());
            let e = Mapping::map(&OwnedFd::from(reopened), LEN, true).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        }
        // Punching a hole would zero the pages readers see.
        // SAFETY: fallocate on a valid descriptor; failure is the expected outcome.
        let r = unsafe {
            libc::fallocate(
                fd.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                4096,
            )
        };
        assert_eq!(r, -1, "hole punch must fail");
        // Writing the read-only mapping through /proc/self/mem (ptrace-style forced write).
        let mem = std::fs::OpenOptions::new().write(true).open("/proc/self/mem");
        if let Ok(mem) = mem {
            assert!(
                mem.write_at(b"forged", ro.as_ptr() as u64 + 20).is_err(),
                "a forced write through /proc/self/mem must fail"
            );
        }
        // SAFETY: the creator's mapping still writes; the reader sees it.
        unsafe { own.as_ptr().add(11).write(2) };
        // SAFETY: reads inside the read-only mapping of LEN bytes.
        let seen = unsafe {
            (
                ro.as_ptr().add(10).read(),
                ro.as_ptr().add(11).read(),
                ro.as_ptr().read(),
            )
        };
        assert_eq!(seen, (1, 2, 0));
    }

    #[test]
    fn ordinary_memfds_stay_writable_for_their_holder() {
        let (fd, _own) = Mapping::create("tutti-ring", 4096).unwrap();
        let seals = seals(&fd).unwrap();
        assert!(!seals.future_write && seals.size && seals.sealed, "{seals:?}");
        assert!(Mapping::map(&fd, 4096, true).is_ok());
    }

    #[test]
    fn peer_groups_match_our_own() {
        let path = temp_path("groups");
        let listener = SeqPacketListener::bind(&path).unwrap();
        let _client = SeqPacket::connect(&path).unwrap();
        let server = listener.accept().unwrap();
        let mut theirs = server.peer_groups().unwrap();
        let mut ours = vec![0 as libc::gid_t; 4096];
        // SAFETY: getgroups with a buffer we own and size.
        let n = unsafe { libc::getgroups(ours.len() as libc::c_int, ours.as_mut_ptr()) };
        assert!(n >= 0);
        ours.truncate(n as usize);
        ours.sort_unstable();
        theirs.sort_unstable();
        assert_eq!(theirs, ours);
    }

    #[test]
    fn oversized_message_is_an_error() {
        let path = temp_path("trunc");
        let listener = SeqPacketListener::bind(&path).unwrap();
        let client = SeqPacket::connect(&path).unwrap();
        let server = listener.accept().unwrap();
        client.send(&[7u8; 100], &[]).unwrap();
        let mut small = [0u8; 10];
        let mut fds = Vec::new();
        assert!(server.recv(&mut small, &mut fds).is_err());
    }

    #[test]
    fn eventfd_wakes() {
        let ev = EventFd::new().unwrap();
        assert!(!ev.wait(Duration::from_millis(1)));
        ev.notify();
        assert!(ev.wait(Duration::from_millis(1000)));
        assert!(ev.drain());
        assert!(!ev.drain());
    }
}

/// Where the daemon's control socket lives: `$TUTTI_SOCKET`, else
/// `$XDG_RUNTIME_DIR/tutti/tuttid.sock`, else `/run/tutti/tuttid.sock` for root, else
/// `/tmp/tutti-$USER/tuttid.sock`. `tuttid`, `tutti` and the client library all use it.
pub fn default_socket_path() -> std::path::PathBuf {
    use std::path::PathBuf;
    if let Some(p) = std::env::var_os("TUTTI_SOCKET").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        return PathBuf::from(dir).join("tutti").join("tuttid.sock");
    }
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return PathBuf::from("/run/tutti/tuttid.sock");
    }
    let user = std::env::var("USER").unwrap_or_else(|_| uid.to_string());
    PathBuf::from(format!("/tmp/tutti-{user}")).join("tuttid.sock")
}

/// Where a client looks for the daemon: as [`default_socket_path`], except that when
/// neither `TUTTI_SOCKET` is set nor a per-user daemon is listening, the system daemon's
/// `/run/tutti/tuttid.sock` is used if it exists (a login session has XDG_RUNTIME_DIR, but
/// the daemon run by systemd listens in /run/tutti). A user outside group `tutti` cannot
/// even look into `/run/tutti`: then the system socket is used too, so that the error the
/// user sees names it ("Permission denied"), not a per-user socket that was never there.
pub fn client_socket_path() -> std::path::PathBuf {
    let default = default_socket_path();
    if std::env::var_os("TUTTI_SOCKET").is_some_and(|p| !p.is_empty()) || default.exists() {
        return default;
    }
    let system = std::path::PathBuf::from(SYSTEM_SOCKET);
    match system.try_exists() {
        Ok(true) => system,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => system,
        _ => default,
    }
}

/// The control socket of the daemon run by the shipped systemd unit.
pub const SYSTEM_SOCKET: &str = "/run/tutti/tuttid.sock";

/// The effective uid and gid of this process.
pub fn effective_ids() -> (u32, u32) {
    // SAFETY: geteuid/getegid have no preconditions.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// Whether `uid` is a member of group `gid` (primary or supplementary), per the group
/// database. Used to let members of the daemon's group attach.
pub fn uid_in_group(uid: u32, gid: u32) -> bool {
    // SAFETY: getpwuid_r/getgrouplist with buffers we own and sizes we pass.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 4096];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        if libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) != 0 || result.is_null()
        {
            return false;
        }
        if pwd.pw_gid == gid {
            return true;
        }
        let mut groups = vec![0 as libc::gid_t; 256];
        let mut n = groups.len() as libc::c_int;
        if libc::getgrouplist(pwd.pw_name, pwd.pw_gid, groups.as_mut_ptr(), &mut n) < 0 {
            return false;
        }
        groups[..n.max(0) as usize].contains(&gid)
    }
}

/// The uid of a user name, per the user database (None if unknown).
pub fn uid_by_name(name: &str) -> Option<u32> {
    let cname = CString::new(name).ok()?;
    // SAFETY: getpwnam_r with a valid C string and buffers we own and size.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16384];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let r = libc::getpwnam_r(cname.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result);
        (r == 0 && !result.is_null()).then_some(pwd.pw_uid)
    }
}

/// The gid of a group name, per the group database (None if unknown).
pub fn gid_by_name(name: &str) -> Option<u32> {
    let cname = CString::new(name).ok()?;
    // SAFETY: getgrnam_r with a valid C string and buffers we own and size.
    unsafe {
        let mut grp: libc::group = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 65536];
        let mut result: *mut libc::group = std::ptr::null_mut();
        let r = libc::getgrnam_r(cname.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut result);
        (r == 0 && !result.is_null()).then_some(grp.gr_gid)
    }
}

/// Sets a path's permission bits and, when `gid` is given, its group (the owner stays).
/// Used on the control socket before it is moved into place.
pub fn set_mode_and_group(path: &Path, mode: u32, gid: Option<u32>) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let cpath = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::other("path has a NUL"))?;
    if let Some(gid) = gid {
        // SAFETY: a valid C string; uid -1 leaves the owner unchanged.
        cvt(unsafe { libc::chown(cpath.as_ptr(), u32::MAX, gid) })?;
    }
    // SAFETY: a valid C string and a plain mode.
    cvt(unsafe { libc::chmod(cpath.as_ptr(), mode as libc::mode_t) })?;
    Ok(())
}

/// Process id of this process.
pub fn pid() -> u32 {
    std::process::id()
}

/// Resident set size of a process in KiB, from /proc/PID/status (None if unreadable).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Termination and reload signals delivered as a readable descriptor (signalfd), so the
/// control loop handles them in order with everything else and no handler runs async.
#[derive(Debug)]
pub struct SignalFd {
    fd: OwnedFd,
}

pub const SIGTERM: i32 = libc::SIGTERM;
pub const SIGINT: i32 = libc::SIGINT;
pub const SIGHUP: i32 = libc::SIGHUP;

impl SignalFd {
    /// Blocks `signals` for the calling thread (call it before starting other threads, which
    /// inherit the mask) and returns a descriptor that reads them.
    pub fn new(signals: &[i32]) -> io::Result<SignalFd> {
        // SAFETY: sigset operations on a local set; sigprocmask/signalfd with valid args.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for &s in signals {
                libc::sigaddset(&mut set, s);
            }
            let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if r != 0 {
                return Err(io::Error::from_raw_os_error(r));
            }
            let raw = cvt(libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK))?;
            Ok(SignalFd {
                fd: OwnedFd::from_raw_fd(raw),
            })
        }
    }

    /// The next pending signal, if any.
    pub fn read(&self) -> Option<i32> {
        // SAFETY: an all-zero siginfo is valid; read fills at most its size.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads into a live struct of `size` bytes.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        (n == size as isize).then_some(info.ssi_signo as i32)
    }
}

impl AsRawFd for SignalFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
