//! A test network of network namespaces for real partitions (`partition.rs`,
//! `ordered_partition.rs`, `ordered_evs_partition.rs`) and the daemons on it ([`Hosts`]): host namespaces, each with `eth0` = 10.250.S.N/24, joined by
//! veth pairs to a bridge in one more namespace. A test cuts a host off by setting its
//! bridge port down and heals it by setting it up again.
//!
//! Needs root and iproute2 (`ip`): [`prerequisites`] says whether the test can run. Every
//! namespace is named `<prefix><pid>-<tag>-*` (addresses exist only inside them; the root
//! namespace is not touched); dropping the [`TestNet`] deletes them, also when the test
//! panics, and leftovers of a crashed earlier run (same prefix, its process gone) are
//! removed when a test net is created.

#![allow(dead_code)]

use crate::common::{eventually, status_number, wait_until, Daemon};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tutti_client::Client;

/// Skips (returns None, with a notice naming `test`) when not root or without `ip`;
/// otherwise the test must run for real.
pub fn prerequisites(test: &str) -> Option<PathBuf> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED {test}: needs root to create network namespaces");
        return None;
    }
    let ip = find_ip();
    if ip.is_none() {
        eprintln!("SKIPPED {test}: iproute2's `ip` is not installed");
    }
    ip
}

/// `ip`, if installed (PATH first, then the usual places: root's PATH may lack sbin).
fn find_ip() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("ip"))
        .chain(["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].map(PathBuf::from))
        .find(|p| p.is_file())
}

fn run_ip(ip: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(ip)
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The namespaces `ip netns list` shows (first word of each line).
fn list_netns(ip: &Path) -> Vec<String> {
    run_ip(ip, &["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Whether `pid` is a live process of test binary `binary` (a concurrent run: keep its
/// namespaces). The binary is `<binary>-<hash>`; comm holds its first 15 bytes.
fn live_run(pid: u32, binary: &str) -> bool {
    let comm = &binary[..binary.len().min(15)];
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with(comm))
}

/// Deletes namespace `ns`, first ending what still runs in it (only ever our tuttids).
fn delete_netns(ip: &Path, ns: &str) {
    if let Ok(pids) = run_ip(ip, &["netns", "pids", ns]) {
        for pid in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
            // SAFETY: signalling a process by id; it runs in our test namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let _ = run_ip(ip, &["netns", "del", ns]);
}

/// Removes `<prefix><pid>-*` namespaces whose run is gone (a crashed earlier run), and
/// this process's own of test `tag` (an earlier attempt of it).
fn remove_leftovers(ip: &Path, prefix: &str, binary: &str, tag: &str) {
    for ns in list_netns(ip) {
        let Some(rest) = ns.strip_prefix(prefix) else {
            continue;
        };
        let mut parts = rest.split('-');
        let Some(pid) = parts.next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let ours = pid == std::process::id() && parts.next() == Some(tag);
        if ours || (pid != std::process::id() && !live_run(pid, binary)) {
            eprintln!("{binary}: removing leftover namespace {ns}");
            delete_netns(ip, &ns);
        }
    }
}

/// The test network: host namespaces `..-h1..N`, each with `eth0` = 10.250.S.N/24, and a
/// bridge namespace `..-br` whose bridge `br0` has ports `h1..hN` (host N's veth peer).
/// Dropping it deletes every namespace it created (and with them every veth and the bridge).
pub struct TestNet {
    pub ip: PathBuf,
    /// Namespace name prefix of the test binary (e.g. `tutti-pt-`).
    prefix: &'static str,
    /// The test binary's name (to tell a live concurrent run's namespaces from leftovers).
    binary: &'static str,
    /// Distinguishes the tests of one process (`cargo test` runs them as threads).
    tag: &'static str,
    subnet: u8,
    created: Vec<String>,
}

impl TestNet {
    pub fn host_ns(&self, n: usize) -> String {
        format!("{}{}-{}-h{n}", self.prefix, std::process::id(), self.tag)
    }

    pub fn bridge_ns(&self) -> String {
        format!("{}{}-{}-br", self.prefix, std::process::id(), self.tag)
    }

    /// Host `n`'s address (1-based), valid inside the namespaces only.
    pub fn addr(&self, n: usize) -> String {
        format!("10.250.{}.{n}", self.subnet)
    }

    fn ip(&self, args: &[&str]) {
        if let Err(e) = run_ip(&self.ip, args) {
            panic!("{e}");
        }
    }

    fn add_netns(&mut self, ns: &str) {
        self.ip(&["netns", "add", ns]);
        self.created.push(ns.to_string());
        self.ip(&["-n", ns, "link", "set", "lo", "up"]);
    }

    /// Creates the bridge and `hosts` host namespaces, after removing leftovers.
    pub fn create(
        ip: PathBuf,
        prefix: &'static str,
        binary: &'static str,
        tag: &'static str,
        hosts: usize,
    ) -> TestNet {
        remove_leftovers(&ip, prefix, binary, tag);
        let mut net = TestNet {
            ip,
            prefix,
            binary,
            tag,
            subnet: (std::process::id() % 250) as u8,
            created: Vec::new(),
        };
        let br = net.bridge_ns();
        net.add_netns(&br);
        net.ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]);
        net.ip(&["-n", &br, "link", "set", "br0", "up"]);
        for n in 1..=hosts {
            let ns = net.host_ns(n);
            let port = format!("h{n}");
            let cidr = format!("{}/24", net.addr(n));
            net.add_netns(&ns);
            // Made inside the host namespace, its peer moved straight into the bridge's.
            net.ip(&[
                "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", &br,
            ]);
            net.ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"]);
            net.ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            net.ip(&["-n", &br, "link", "set", &port, "master", "br0"]);
            net.ip(&["-n", &br, "link", "set", &port, "up"]);
        }
        net
    }

    /// Sets host `n`'s bridge port down (cut) or up (heal).
    pub fn set_port(&self, n: usize, up: bool) {
        let port = format!("h{n}");
        self.ip(&[
            "-n",
            &self.bridge_ns(),
            "link",
            "set",
            &port,
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            delete_netns(&self.ip, ns);
        }
        let left: Vec<String> = list_netns(&self.ip)
            .into_iter()
            .filter(|ns| self.created.contains(ns))
            .collect();
        if !left.is_empty() {
            eprintln!("{}: could not delete namespaces {left:?}", self.binary);
        }
    }
}

/// One `tuttid` per host namespace of a [`TestNet`], seeded with each other; when the test
/// fails their status and logs go to stderr before they are killed (and their config files
/// removed). Used by `partition.rs`, `ordered_partition.rs` and `ordered_evs_partition.rs`.
pub struct Hosts {
    pub daemons: Vec<Daemon>,
    config_dir: PathBuf,
}

impl Hosts {
    /// Starts daemons 1..=`hosts` of `net` (node id = host number) on `base_port`, gossip
    /// every 100 ms, suspicion after 1 s; `cluster_extra` and `net_extra` are more lines of
    /// the `[cluster]` and `[net]` tables. `tag` names the logs (`<tag>-d<n>`).
    pub fn start(
        net: &TestNet,
        tag: &str,
        hosts: usize,
        base_port: u16,
        cluster_extra: &str,
        net_extra: &str,
    ) -> Hosts {
        let seeds: Vec<String> = (1..=hosts).map(|n| format!("\"{n}@{}\"", net.addr(n))).collect();
        let config_dir = crate::common::temp_dir(&format!("{tag}-cfg"));
        let daemons = (1..=hosts)
            .map(|n| {
                let config = config_dir.join(format!("d{n}.toml"));
                std::fs::write(
                    &config,
                    format!(
                        "node_id = {n}\n[cluster]\nenabled = true\nseeds = [{}]\n\
                         gossip_period_ms = 100\nsuspect_timeout_ms = 1000\n{cluster_extra}\
                         [net]\nlisten = \"{}\"\nbase_port = {base_port}\n{net_extra}",
                        seeds.join(", "),
                        net.addr(n)
                    ),
                )
                .unwrap();
                Daemon::start_in_netns(
                    &format!("{tag}-d{n}"),
                    &net.ip,
                    &net.host_ns(n),
                    &["--config", config.to_str().unwrap()],
                )
            })
            .collect();
        Hosts { daemons, config_dir }
    }

    pub fn all(&self) -> Vec<&Daemon> {
        self.daemons.iter().collect()
    }

    /// Daemon `i`'s status text, or why there is none (never panics: also used in `drop`).
    pub fn status(&self, i: usize) -> String {
        Client::connect_to(self.daemons[i].socket())
            .and_then(|mut c| c.status())
            .unwrap_or_else(|e| format!("(no status: {e})"))
    }

    /// Waits until daemon `i` (0-based) has a cluster view of `members`, else panics with
    /// every daemon's status and log.
    pub fn wait_view(&self, i: usize, members: u64, timeout: Duration, why: &str) {
        wait_until(
            timeout,
            &format!("{why}: a view of {members} at daemon {}", i + 1),
            &self.all(),
            || {
                // Paces the polls to one status every 20 ms (`eventually` waits the other 10).
                std::thread::sleep(Duration::from_millis(10));
                status_number(&self.status(i), "view_members") == Some(members)
            },
        );
    }

    /// Daemon `i`'s view as its status shows it ("view N by daemon D: 3 members [1, 2, 3]").
    pub fn view_line(&self, i: usize) -> String {
        let s = self.status(i);
        s.lines()
            .find_map(|l| l.split_once(" cluster ").map(|(_, v)| v.trim().to_string()))
            .unwrap_or_else(|| format!("(no view in status: {s})"))
    }

    /// Waits until every daemon has installed the same view (same number, coordinator and
    /// members), i.e. the sides merged into one view; returns it.
    pub fn wait_same_view(&self, timeout: Duration, why: &str) -> String {
        let mut lines = Vec::new();
        let same = eventually(timeout, || {
            std::thread::sleep(Duration::from_millis(10));
            lines = (0..self.daemons.len()).map(|i| self.view_line(i)).collect();
            lines.iter().all(|l| *l == lines[0])
        });
        assert!(same, "{why}: the daemons never agreed on one view: {lines:?}");
        lines.swap_remove(0)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (i, d) in self.daemons.iter().enumerate() {
                eprintln!(
                    "===== daemon {} status:\n{}\n===== daemon {} log:\n{}",
                    i + 1,
                    self.status(i),
                    i + 1,
                    d.log()
                );
            }
        }
        let _ = std::fs::remove_dir_all(&self.config_dir);
    }
}
