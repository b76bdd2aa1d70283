//! The systemd notification protocol (sd_notify(3)) without libsystemd: readiness, status,
//! watchdog pings, reload and stop, sent as datagrams to `$NOTIFY_SOCKET`. Outside systemd
//! (no `NOTIFY_SOCKET`) every call is a no-op, so the daemon calls it unconditionally.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::time::Duration;

/// How long a notification may block when the service manager's queue is full. systemd
/// drains its notify socket promptly; a bound keeps a stuck manager from stalling the
/// caller's loop.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// A handle on the service manager's notify socket; a no-op when there is none.
#[derive(Debug)]
pub struct Notifier {
    target: Option<Target>,
}

#[derive(Debug)]
struct Target {
    socket: UnixDatagram,
    address: SocketAddr,
}

impl Notifier {
    /// A notifier that sends nothing: the daemon runs outside systemd.
    pub fn disabled() -> Notifier {
        Notifier { target: None }
    }

    /// The notifier for `$NOTIFY_SOCKET`, or a no-op one when it is unset or empty.
    ///
    /// The variable is left set: tuttid starts no child processes that could inherit it.
    pub fn from_env() -> io::Result<Notifier> {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(value) => Notifier::from_notify_socket(&value),
            None => Ok(Notifier::disabled()),
        }
    }

    /// The notifier for a `NOTIFY_SOCKET` value: an absolute path, or `@name` for a socket
    /// in the abstract namespace. Empty means none. Other forms (`vsock:`, relative paths)
    /// are refused with `Unsupported`.
    pub fn from_notify_socket(value: &OsStr) -> io::Result<Notifier> {
        let bytes = value.as_bytes();
        let address = match bytes.first() {
            None => return Ok(Notifier::disabled()),
            Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..])?,
            Some(b'/') => SocketAddr::from_pathname(value)?,
            Some(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "NOTIFY_SOCKET={}: only absolute paths and @abstract names are supported",
                        value.to_string_lossy()
                    ),
                ))
            }
        };
        Notifier::with_address(address)
    }

    /// The notifier for a socket at a filesystem path.
    pub fn from_path(path: impl AsRef<Path>) -> io::Result<Notifier> {
        Notifier::with_address(SocketAddr::from_pathname(path)?)
    }

    fn with_address(address: SocketAddr) -> io::Result<Notifier> {
        let socket = UnixDatagram::unbound()?;
        socket.set_write_timeout(Some(SEND_TIMEOUT))?;
        Ok(Notifier {
            target: Some(Target { socket, address }),
        })
    }

    /// Whether notifications go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Start-up (or a reload) is complete: `READY=1`, with a status line if not empty.
    pub fn ready(&self, status: &str) -> io::Result<()> {
        if status.is_empty() {
            self.send("READY=1")
        } else {
            self.send(&format!("READY=1\nSTATUS={}", one_line(status)))
        }
    }

    /// A free-form status line shown by `systemctl status`.
    pub fn status(&self, status: &str) -> io::Result<()> {
        self.send(&format!("STATUS={}", one_line(status)))
    }

    /// A watchdog keep-alive. Send it at least every `watchdog_interval() / 2`.
    pub fn watchdog(&self) -> io::Result<()> {
        self.send("WATCHDOG=1")
    }

    /// A clean shutdown has begun.
    pub fn stopping(&self) -> io::Result<()> {
        self.send("STOPPING=1")
    }

    /// A reload has begun; call `ready` when it is done. `MONOTONIC_USEC` is required by
    /// `Type=notify-reload` (systemd 253+) and harmless before it.
    pub fn reloading(&self) -> io::Result<()> {
        if !self.is_enabled() {
            return Ok(());
        }
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()?))
    }

    /// Sends one notification datagram (newline-separated `KEY=value` assignments).
    pub fn send(&self, message: &str) -> io::Result<()> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        let sent = target.socket.send_to_addr(message.as_bytes(), &target.address)?;
        if sent != message.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("sd_notify: sent {sent} of {} bytes", message.len()),
            ));
        }
        Ok(())
    }
}

/// The watchdog interval systemd expects pings within (`WatchdogSec=`), if it is enabled
/// for this process: `$WATCHDOG_USEC`, honoured only when `$WATCHDOG_PID` is unset or is
/// our pid.
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_interval_from(
        std::env::var_os("WATCHDOG_USEC").as_deref(),
        std::env::var_os("WATCHDOG_PID").as_deref(),
        std::process::id(),
    )
}

/// `watchdog_interval` on explicit values, so that tests need not touch the environment.
pub fn watchdog_interval_from(usec: Option<&OsStr>, pid: Option<&OsStr>, our_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.to_str()?.parse::<u32>().ok()? != our_pid {
            return None;
        }
    }
    let usec: u64 = usec?.to_str()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// A status line may not contain a newline: it would start a new assignment.
fn one_line(status: &str) -> String {
    status.replace('\n', " ")
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd compares `MONOTONIC_USEC` with.
fn monotonic_usec() -> io::Result<u64> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the duration of the call, and
    // CLOCK_MONOTONIC is a clock every Linux kernel has.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A bound datagram socket standing in for systemd's notify socket.
    struct FakeManager {
        dir: PathBuf,
        socket: UnixDatagram,
    }

    impl FakeManager {
        fn new(test: &str) -> FakeManager {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "tutti-sd-notify-{}-{}-{test}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let socket = UnixDatagram::bind(dir.join("notify")).unwrap();
            socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            FakeManager { dir, socket }
        }

        fn path(&self) -> PathBuf {
            self.dir.join("notify")
        }

        fn recv(&self) -> String {
            let mut buf = [0u8; 4096];
            let n = self.socket.recv(&mut buf).unwrap();
            String::from_utf8(buf[..n].to_vec()).unwrap()
        }
    }

    impl Drop for FakeManager {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn sends_the_exact_datagrams() {
        let manager = FakeManager::new("exact");
        let notifier = Notifier::from_path(manager.path()).unwrap();
        assert!(notifier.is_enabled());

        notifier.ready("2 shards, io_uring").unwrap();
        assert_eq!(manager.recv(), "READY=1\nSTATUS=2 shards, io_uring");
        notifier.ready("").unwrap();
        assert_eq!(manager.recv(), "READY=1");
        notifier.status("line one\nline two").unwrap();
        assert_eq!(manager.recv(), "STATUS=line one line two");
        notifier.watchdog().unwrap();
        assert_eq!(manager.recv(), "WATCHDOG=1");
        notifier.stopping().unwrap();
        assert_eq!(manager.recv(), "STOPPING=1");
    }

    #[test]
    fn reloading_carries_the_monotonic_clock() {
        let manager = FakeManager::new("reload");
        let notifier = Notifier::from_notify_socket(manager.path().as_os_str()).unwrap();
        let before = monotonic_usec().unwrap();
        notifier.reloading().unwrap();
        let after = monotonic_usec().unwrap();
        let message = manager.recv();
        let usec: u64 = message
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap_or_else(|| panic!("unexpected datagram {message:?}"))
            .parse()
            .unwrap();
        assert!(before <= usec && usec <= after, "{before} <= {usec} <= {after}");
    }

    #[test]
    fn abstract_namespace_sockets() {
        let name = format!("tutti-sd-notify-test-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let manager = UnixDatagram::bind_addr(&address).unwrap();
        manager.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let notifier = Notifier::from_notify_socket(OsStr::new(&format!("@{name}"))).unwrap();
        notifier.watchdog().unwrap();
        let mut buf = [0u8; 64];
        let n = manager.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }

    #[test]
    fn no_socket_means_no_op() {
        let notifier = Notifier::from_notify_socket(OsStr::new("")).unwrap();
        assert!(!notifier.is_enabled());
        notifier.ready("x").unwrap();
        notifier.reloading().unwrap();
        notifier.watchdog().unwrap();
        assert!(!Notifier::disabled().is_enabled());
    }

    #[test]
    fn unsupported_addresses_are_refused() {
        let err = Notifier::from_notify_socket(OsStr::new("vsock:2:1234")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Unsupported);
    }

    #[test]
    fn a_missing_manager_is_an_error_not_a_panic() {
        let manager = FakeManager::new("gone");
        let path = manager.path();
        drop(manager);
        let notifier = Notifier::from_path(path).unwrap();
        assert!(notifier.ready("x").is_err());
    }

    #[test]
    fn watchdog_interval_honours_watchdog_pid() {
        let usec = Some(OsStr::new("10000000"));
        let ten_s = Some(Duration::from_secs(10));
        assert_eq!(watchdog_interval_from(usec, None, 42), ten_s);
        assert_eq!(watchdog_interval_from(usec, Some(OsStr::new("42")), 42), ten_s);
        assert_eq!(watchdog_interval_from(usec, Some(OsStr::new("41")), 42), None);
        assert_eq!(watchdog_interval_from(usec, Some(OsStr::new("x")), 42), None);
        assert_eq!(watchdog_interval_from(None, None, 42), None);
        assert_eq!(watchdog_interval_from(Some(OsStr::new("0")), None, 42), None);
        assert_eq!(watchdog_interval_from(Some(OsStr::new("abc")), None, 42), None);
    }
}
