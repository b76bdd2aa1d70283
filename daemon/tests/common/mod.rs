//! Helpers for tests that run a real `tuttid` process.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tutti_client::Client;

/// A `tuttid` child process on a private socket; killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub socket: PathBuf,
    dir: PathBuf,
}

pub fn temp_dir(tag: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tutti-test-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Daemon {
    /// Starts tuttid with the backoff idle strategy (tests never assume a free core).
    pub fn start(tag: &str, extra: &[&str]) -> Daemon {
        Self::start_with(tag, extra, &[])
    }

    /// As `start`, with extra environment variables.
    pub fn start_with(tag: &str, extra: &[&str], envs: &[(&str, &str)]) -> Daemon {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tuttid"));
        command.envs(envs.iter().copied());
        Self::spawn(tag, command, extra)
    }

    /// Runs `command` (tuttid, or something that execs it) with the test's socket, backoff
    /// idle, no pinning and `extra`; waits until the control socket answers.
    fn spawn(tag: &str, mut command: Command, extra: &[&str]) -> Daemon {
        let dir = temp_dir(tag);
        let socket = dir.join("tuttid.sock");
        let child = command
            .arg("--socket")
            .arg(&socket)
            .args(["--idle", "backoff", "--no-pin"])
            .args(extra)
            .stdin(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("tuttid.log")).unwrap(),
            ))
            .spawn()
            .expect("spawn tuttid");
        let daemon = Daemon { child, socket, dir };
        daemon.wait_ready();
        daemon
    }

    fn wait_ready(&self) {
        assert!(
            eventually(Duration::from_secs(20), || {
                tutti_sys::SeqPacket::connect(&self.socket).is_ok()
            }),
            "tuttid did not listen on {} within 20 s; log:\n{}",
            self.socket.display(),
            self.log()
        );
    }

    pub fn client(&self) -> Client {
        Client::connect_to(&self.socket).expect("connect")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("tuttid.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits for the daemon to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let mut code = None;
        eventually(timeout, || match self.child.try_wait() {
            Ok(Some(status)) => {
                code = status.code();
                true
            }
            _ => false,
        });
        code
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `f` every 10 ms until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A status line's number after `key` (e.g. "clients: 3" -> 3 for key "clients:").
pub fn status_number(status: &str, key: &str) -> Option<u64> {
    let at = status.find(key)? + key.len();
    status[at..]
        .split_whitespace()
        .next()?
        .trim_end_matches(',')
        .parse()
        .ok()
}

impl Daemon {
    /// As `start`, but runs tuttid inside network namespace `netns` through
    /// `ip netns exec` (`ip` execs tuttid, so the child is tuttid itself). The control
    /// socket is a filesystem path, so clients in the test's namespace connect as usual.
    pub fn start_in_netns(tag: &str, ip: &Path, netns: &str, extra: &[&str]) -> Daemon {
        let mut command = Command::new(ip);
        command
            .args(["netns", "exec", netns])
            .arg(env!("CARGO_BIN_EXE_tuttid"));
        Self::spawn(tag, command, extra)
    }
}
