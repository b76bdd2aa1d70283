//! A `tuttid` started for one benchmark run: in a fresh temporary directory (socket and
//! log), in its own session, and always killed and reaped when the guard is dropped,
//! whether the run ended well, with an error or with a panic.

use std::fs::{self, File};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the daemon may take to create its socket.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of the daemon's log to show when it fails.
const LOG_TAIL_BYTES: usize = 4000;

pub struct DaemonOptions<'a> {
    pub tuttid: &'a Path,
    /// `spin` or `backoff`.
    pub idle: &'a str,
    pub core: usize,
    /// Leave the shard unpinned (`--no-pin`): several daemons sharing few cores.
    pub no_pin: bool,
    /// Contents of a config file written next to the socket and passed with `--config`.
    pub config: Option<&'a str>,
}

pub struct Daemon {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    log: PathBuf,
}

/// Default daemon binary: `tuttid` next to this executable (both land in target/<profile>/).
pub fn default_tuttid() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("tuttid")))
        .unwrap_or_else(|| PathBuf::from("tuttid"))
}

impl Daemon {
    /// Start `tuttid --idle <idle> --cores <core>` with `TUTTI_SOCKET` in a new temporary
    /// directory and wait until its socket exists.
    pub fn start(opts: &DaemonOptions<'_>) -> Result<Daemon, String> {
        if !opts.tuttid.is_file() {
            return Err(format!(
                "daemon binary {} not found; build it with `cargo build --release -p tutti-daemon` \
                 or pass --tuttid PATH",
                opts.tuttid.display()
            ));
        }
        let dir = make_temp_dir()?;
        let socket = dir.join("tuttid.sock");
        let log = dir.join("tuttid.log");
        let log_file = File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()));
        let log_file = match log_file {
            Ok(f) => f,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let log_err = log_file.try_clone().map_err(|e| e.to_string())?;
        let mut command = Command::new(opts.tuttid);
        command.args(["--idle", opts.idle, "--cores", &opts.core.to_string()]);
        if opts.no_pin {
            command.arg("--no-pin");
        }
        if let Some(text) = opts.config {
            let path = dir.join("tuttid.toml");
            if let Err(e) = fs::write(&path, text) {
                let _ = fs::remove_dir_all(&dir);
                return Err(format!("writing {}: {e}", path.display()));
            }
            command.arg("--config").arg(&path);
        }
        command
            .env("TUTTI_SOCKET", &socket)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs in the forked child before exec and calls only
        // async-signal-safe functions (setsid, prctl, getppid, _exit) on no memory of ours.
        // - setsid: a new session takes the daemon out of our terminal's autogroup, so the
        //   scheduler treats it as the system service it stands for (REFERENCES.md: setsid
        //   gave Aeron 20x better latency here). It cannot fail in a fresh child.
        // - PR_SET_PDEATHSIG: in its own session, Ctrl-C no longer reaches the daemon, and a
        //   spinning daemon must not outlive a bench killed before its Drop guard runs.
        unsafe {
            command.pre_exec(move || {
                libc::setsid();
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                if libc::getppid() != parent {
                    // We lost the race with our parent's death.
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(format!("starting {}: {e}", opts.tuttid.display()));
            }
        };
        // From here on the guard cleans up.
        let mut daemon = Daemon {
            child,
            dir,
            socket,
            log,
        };
        daemon.wait_for_socket()?;
        Ok(daemon)
    }

    fn wait_for_socket(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if self.socket.exists() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "tuttid exited during startup ({status}); its log:\n{}",
                    self.log_tail()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "tuttid did not create {} within {STARTUP_TIMEOUT:?}; its log:\n{}",
                    self.socket.display(),
                    self.log_tail()
                ));
            }
            crate::interrupt::check()?;
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size of the daemon in KiB (`VmRSS` in /proc/PID/status).
    pub fn rss_kib(&self) -> Result<u64, String> {
        rss_kib(self.pid())
    }

    /// Err with the daemon's log if it is no longer running.
    pub fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("tuttid exited ({status}); its log:\n{}", self.log_tail())),
            Err(e) => Err(format!("checking on tuttid: {e}")),
        }
    }

    pub fn log_tail(&self) -> String {
        match fs::read(&self.log) {
            Ok(bytes) => {
                let tail = &bytes[bytes.len().saturating_sub(LOG_TAIL_BYTES)..];
                String::from_utf8_lossy(tail).into_owned()
            }
            Err(e) => format!("(cannot read {}: {e})", self.log.display()),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGKILL: a benchmark daemon has nothing to flush, and it must not outlive us.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Resident set size of process `pid` in KiB (`VmRSS` in /proc/PID/status).
pub fn rss_kib(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS line in {path}"))
}

/// CPU time (user + system) process `pid` has used so far, from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Result<Duration, String> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    // Fields after the command name (which may hold spaces) start at state, field 3;
    // utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let (Some(utime), Some(stime)) = (ticks(11), ticks(12)) else {
        return Err(format!("cannot parse {path}"));
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_micros((utime + stime) * 1_000_000 / hz))
}

/// A new private directory under $TMPDIR (0700), unique per process and call.
fn make_temp_dir() -> Result<PathBuf, String> {
    let base = std::env::temp_dir();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    for attempt in 0..100u32 {
        let dir = base.join(format!("tutti-bench-{}-{nanos:x}-{attempt}", std::process::id()));
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("creating temporary directory {}: {e}", dir.display())),
        }
    }
    Err(format!(
        "could not create a temporary directory in {}",
        base.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_time() {
        let spent = cpu_time(std::process::id()).unwrap();
        assert!(spent < Duration::from_secs(3600));
    }

    #[test]
    fn reads_own_rss() {
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn missing_binary_is_a_clear_error() {
        let err = Daemon::start(&DaemonOptions {
            tuttid: Path::new("/nonexistent/tuttid"),
            idle: "spin",
            core: 1,
            no_pin: false,
            config: None,
        })
        .err()
        .unwrap();
        assert!(err.contains("--tuttid"), "{err}");
    }
}
