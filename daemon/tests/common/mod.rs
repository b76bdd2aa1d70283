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

/// A shard counter (`tutti_wire::counters::SHARD_COUNTERS`) summed over the daemon's shards.
pub fn shard_counter(client: &mut Client, name: &str) -> u64 {
    let pages = client.counters().unwrap();
    pages
        .iter()
        .flat_map(|page| page.values())
        .filter(|(n, _)| *n == name)
        .map(|(_, v)| v)
        .sum()
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

/// The cluster view a status shows, one line per shard ("view 7 by daemon 1: 3 members
/// [1, 2, 3]"), or None while it shows none.
pub fn cluster_view(status: &str) -> Option<String> {
    let lines: Vec<&str> = status
        .lines()
        .filter_map(|l| l.split_once(" cluster ").map(|(_, v)| v.trim()))
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// The number of the newest cluster view any of these daemons installed (0: none yet).
pub fn newest_view(clients: &mut [Client]) -> u64 {
    clients
        .iter_mut()
        .filter_map(|c| status_number(&c.status().unwrap(), "cluster view"))
        .max()
        .unwrap_or(0)
}

/// Gossip rounds a cluster view must stay unchanged on every daemon to count as settled.
pub const SETTLED_ROUNDS: u64 = 5;

/// Waits until the daemons behind `clients` agree on one cluster view numbered above
/// `after` that none of them replaced for [`SETTLED_ROUNDS`] of its own gossip rounds;
/// panics after `timeout`.
///
/// This is how a test knows that group joins made since view `after` took effect: the
/// coordinator adds joined members to a group in the next view it installs, and a daemon
/// whose join a view does not show asks again every round, so the coordinator installs
/// another. `tutti status` does not list a group's members across the cluster; a view
/// newer than the joins that then stays put is the sign that it holds all of them.
pub fn wait_settled_view(clients: &mut [Client], after: u64, timeout: Duration) {
    // The agreed view, and each daemon's gossip_rounds when it was first seen agreed.
    let mut agreed_since: Option<(String, Vec<u64>)> = None;
    let mut seen = Vec::new();
    let settled = eventually(timeout, || {
        let statuses: Vec<String> = clients.iter_mut().map(|c| c.status().unwrap()).collect();
        seen = statuses.iter().map(|s| cluster_view(s)).collect();
        let rounds: Vec<u64> = statuses
            .iter()
            .map(|s| status_number(s, "gossip_rounds").unwrap_or(0))
            .collect();
        let newer = statuses
            .iter()
            .all(|s| status_number(s, "cluster view").is_some_and(|n| n > after));
        let Some(view) = seen[0]
            .clone()
            .filter(|_| newer && seen.iter().all(|v| *v == seen[0]))
        else {
            agreed_since = None;
            return false;
        };
        match &agreed_since {
            Some((v, since)) if *v == view => rounds
                .iter()
                .zip(since)
                .all(|(now, then)| *now >= then + SETTLED_ROUNDS),
            _ => {
                agreed_since = Some((view, rounds));
                false
            }
        }
    });
    assert!(
        settled,
        "the daemons did not settle on one view newer than view {after} within {timeout:?}; \
         last seen: {seen:?}"
    );
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

/// Waits until `f` holds, else panics naming `what` with every daemon's status and log.
pub fn wait_until(timeout: Duration, what: &str, daemons: &[&Daemon], mut f: impl FnMut() -> bool) {
    if !eventually(timeout, &mut f) {
        let logs: Vec<String> = daemons
            .iter()
            .map(|d| {
                let mut c = d.client();
                format!("{}\n{}", c.status().unwrap_or_default(), d.log())
            })
            .collect();
        panic!("timed out waiting for {what}\n{}", logs.join("\n-----\n"));
    }
}

/// A group name whose memory node (primary and backup) the three daemons place on
/// daemons 1 and 2, so that killing daemon 3 tests a member's crash, not a host's. (Until
/// 2026-12-04 it was also needed because a restarted daemon placed the group afresh from
/// its own view, where the survivors held the placement a failover had moved; a join now
/// asks the view where the memory node is: docs/ordered.md, "Placement for nodes added
/// later".)
pub fn group_off_daemon_3(prefix: &str) -> String {
    let nodes = [1u32 << 8, 2 << 8, 3 << 8];
    (0..)
        .map(|i| format!("{prefix}.{i}"))
        .find(|name| {
            let hosts = tutti_proto::ordered::choose_memnode_hosts(tutti_wire::group_id(name), &nodes);
            !hosts.contains(&(3 << 8))
        })
        .unwrap()
}
