//! Host tuning checks behind `tutti tune check`: read what the kernel exposes in /proc and
//! /sys, compare it with what a low-latency tutti host wants, and say why each setting
//! matters. The checks only read; applying a setting is the operator's call (see README.md).
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// `net.core.rmem_max` / `wmem_max` floor: the socket buffer sizes tuttid asks for.
pub const RECOMMENDED_SOCKET_BUFFER_MAX: u64 = 8 * 1024 * 1024;

/// `net.core.busy_poll` / `busy_read` for hosts that trade CPU for latency, in microseconds.
pub const RECOMMENDED_BUSY_POLL_USEC: u64 = 50;

/// `guest_halt_poll_ns` tutti suggests on latency-sensitive KVM guests (the kernel's own
/// default for the cpuidle-haltpoll driver).
pub const RECOMMENDED_GUEST_HALT_POLL_NS: u64 = 200_000;

/// RLIMIT_MEMLOCK floor for io_uring rings and registered buffers.
pub const RECOMMENDED_MEMLOCK_BYTES: u64 = 64 * 1024 * 1024;

/// How many offending IRQs a finding lists before it summarises the rest.
const MAX_LISTED_IRQS: usize = 3;

/// What to check against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOptions {
    /// The cores tutti's shards are configured to pin to (`core_affinity`); empty when the
    /// shards are not pinned.
    pub shard_cores: Vec<usize>,
    /// Prefix under which `proc/` and `sys/` are read: "/" on a real host, a fake tree in
    /// tests.
    pub root: PathBuf,
    /// The checks run inside tuttid itself (its start-up log), not in `tutti tune check`:
    /// the process limits read are then the daemon's own, and the findings say so.
    pub in_daemon: bool,
    /// The daemon's cluster settings, when known (from its config): adds the check that a
    /// cluster reachable beyond loopback has a key.
    pub cluster: Option<ClusterExposure>,
}

/// What decides whether a daemon's cluster traffic is open to anyone on the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterExposure {
    /// `cluster.enabled` (the daemon's `--listen`/`--seed` flags also switch it on).
    pub enabled: bool,
    /// `net.listen`.
    pub listen: std::net::IpAddr,
    /// `cluster.key_file`.
    pub key_file: Option<PathBuf>,
}

impl ClusterExposure {
    /// Reads the three settings from tuttid's TOML config text (other keys are ignored;
    /// missing ones take tuttid's defaults: cluster off, listen 127.0.0.1, no key).
    pub fn from_config(text: &str) -> Result<ClusterExposure, String> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
        let section = |name: &str| table.get(name).and_then(toml::Value::as_table);
        let cluster = section("cluster");
        let enabled = match cluster.and_then(|c| c.get("enabled")) {
            None => false,
            Some(v) => v.as_bool().ok_or("cluster.enabled: expected true or false")?,
        };
        let listen = match section("net").and_then(|n| n.get("listen")) {
            None => std::net::IpAddr::from([127, 0, 0, 1]),
            Some(v) => v
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or("net.listen: expected an IP address")?,
        };
        let key_file = match cluster.and_then(|c| c.get("key_file")) {
            None => None,
            Some(v) => Some(PathBuf::from(
                v.as_str().ok_or("cluster.key_file: expected a path")?,
            )),
        };
        Ok(ClusterExposure {
            enabled,
            listen,
            key_file,
        })
    }
}

impl CheckOptions {
    /// Options for the real host (`root = "/"`) with the given shard cores.
    pub fn new(shard_cores: Vec<usize>) -> Self {
        CheckOptions {
            shard_cores,
            root: PathBuf::from("/"),
            in_daemon: false,
            cluster: None,
        }
    }
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions::new(Vec::new())
    }
}

/// One checked setting: what was found, what tutti recommends, and why it matters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub found: String,
    pub recommended: String,
    pub ok: bool,
    pub why: String,
}

impl Check {
    fn new(name: &str, found: String, recommended: String, ok: bool, why: &str) -> Check {
        Check {
            name: name.to_string(),
            found,
            recommended,
            ok,
            why: why.to_string(),
        }
    }
}

/// Runs every check against the host under `opts.root`. Never writes anything.
pub fn run_checks(opts: &CheckOptions) -> Vec<Check> {
    let host = Host {
        root: opts.root.clone(),
    };
    let shards: BTreeSet<usize> = opts.shard_cores.iter().copied().collect();
    let mut checks = vec![
        check_shard_cores(&host, &shards),
        check_governor(&host, &shards),
        check_isolated(&host, &shards),
        check_nic_irqs(&host, &shards),
        check_socket_buffer_max(&host, "rmem_max", "receive"),
        check_socket_buffer_max(&host, "wmem_max", "send"),
        check_busy_poll(&host, "busy_poll"),
        check_busy_poll(&host, "busy_read"),
        check_thp(&host),
        check_memlock(&host, opts.in_daemon),
        check_io_uring(&host),
        check_guest_halt_poll(&host),
    ];
    if let Some(cluster) = &opts.cluster {
        checks.push(check_cluster_key(cluster));
    }
    checks
}

/// A cluster listening beyond loopback without a key accepts anyone on the network.
pub fn check_cluster_key(c: &ClusterExposure) -> Check {
    const NAME: &str = "cluster.key_file";
    const WHY: &str = "without a cluster key anyone who can send UDP to the cluster's ports can join it, read its messages and forge them: make one with `tutti keygen` and set cluster.key_file (docs/security.md).";
    let (found, ok) = match (&c.key_file, c.enabled, c.listen.is_loopback()) {
        (Some(p), _, _) => (p.display().to_string(), true),
        (None, false, _) => ("unset (cluster off)".to_string(), true),
        (None, true, true) => (format!("unset (cluster on loopback {} only)", c.listen), true),
        (None, true, false) => (format!("unset, cluster listening on {}", c.listen), false),
    };
    Check::new(
        NAME,
        found,
        "set when the cluster listens beyond loopback".into(),
        ok,
        WHY,
    )
}

/// An aligned text table: setting, found, recommended, ok/WARN, why.
pub fn render_table(checks: &[Check]) -> String {
    let headers = ["SETTING", "FOUND", "RECOMMENDED", "STATUS", "WHY"];
    let rows: Vec<[&str; 5]> = checks
        .iter()
        .map(|c| {
            [
                c.name.as_str(),
                c.found.as_str(),
                c.recommended.as_str(),
                if c.ok { "ok" } else { "WARN" },
                c.why.as_str(),
            ]
        })
        .collect();
    let mut widths = headers.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&headers).chain(&rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                // The last column is not padded: no trailing blanks.
                line.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The checks as a JSON array of objects with keys `name`, `found`, `recommended`, `ok`,
/// `why`.
pub fn to_json(checks: &[Check]) -> String {
    // Serializing plain strings and bools into a String cannot fail.
    serde_json::to_string_pretty(checks).expect("checks serialize to JSON")
}

/// The host's /proc and /sys, read under a root prefix.
struct Host {
    root: PathBuf,
}

impl Host {
    fn path(&self, absolute: &str) -> PathBuf {
        self.root.join(absolute.trim_start_matches('/'))
    }

    fn read(&self, absolute: &str) -> io::Result<String> {
        fs::read_to_string(self.path(absolute)).map(|s| s.trim().to_string())
    }

    /// The online CPUs, or the cpuN directories when `online` is unreadable.
    fn online_cpus(&self) -> BTreeSet<usize> {
        if let Some(cpus) = self
            .read("/sys/devices/system/cpu/online")
            .ok()
            .and_then(|s| parse_cpu_list(&s))
        {
            return cpus;
        }
        let mut cpus = BTreeSet::new();
        if let Ok(entries) = fs::read_dir(self.path("/sys/devices/system/cpu")) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                if let Some(n) = name
                    .to_str()
                    .and_then(|n| n.strip_prefix("cpu"))
                    .and_then(|n| n.parse().ok())
                {
                    cpus.insert(n);
                }
            }
        }
        cpus
    }

    /// `name=value` from the kernel command line (last occurrence wins, as in the kernel).
    fn cmdline_param(&self, name: &str) -> Option<String> {
        let cmdline = self.read("/proc/cmdline").ok()?;
        let prefix = format!("{name}=");
        cmdline
            .split_whitespace()
            .filter_map(|arg| arg.strip_prefix(&prefix))
            .next_back()
            .map(str::to_string)
    }
}

fn check_shard_cores(host: &Host, shards: &BTreeSet<usize>) -> Check {
    const WHY: &str =
        "A shard pinned to a core that is absent or offline cannot start, so tuttid would fail at startup.";
    let online = host.online_cpus();
    let mut found = format!("online {}", format_cpu_list(&online));
    if shards.is_empty() {
        return Check::new(
            "shard_cores",
            found,
            "pin shards to online cores (none pinned)".into(),
            true,
            WHY,
        );
    }
    let missing: BTreeSet<usize> = shards
        .iter()
        .copied()
        .filter(|cpu| !host.path(&format!("/sys/devices/system/cpu/cpu{cpu}")).is_dir())
        .collect();
    let offline: BTreeSet<usize> = shards
        .iter()
        .copied()
        .filter(|cpu| !missing.contains(cpu) && !online.contains(cpu))
        .collect();
    if !missing.is_empty() {
        found.push_str(&format!("; missing {}", format_cpu_list(&missing)));
    }
    if !offline.is_empty() {
        found.push_str(&format!("; offline {}", format_cpu_list(&offline)));
    }
    Check::new(
        "shard_cores",
        found,
        format!("cores {} present and online", format_cpu_list(shards)),
        missing.is_empty() && offline.is_empty(),
        WHY,
    )
}

fn check_governor(host: &Host, shards: &BTreeSet<usize>) -> Check {
    let cpus = if shards.is_empty() {
        host.online_cpus()
    } else {
        shards.clone()
    };
    let mut by_governor: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for &cpu in &cpus {
        let path = format!("/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor");
        if let Ok(governor) = host.read(&path) {
            by_governor.entry(governor).or_default().insert(cpu);
        }
    }
    if by_governor.is_empty() {
        return Check::new(
            "cpu.scaling_governor",
            "not exposed".into(),
            "performance".into(),
            true,
            "No cpufreq interface is exposed (typical in a VM), so the hypervisor or firmware sets the clock and there is nothing to change here.",
        );
    }
    let found = if by_governor.len() == 1 {
        by_governor.keys().next().cloned().unwrap_or_default()
    } else {
        by_governor
            .iter()
            .map(|(governor, cpus)| format!("{governor} on {}", format_cpu_list(cpus)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ok = by_governor.keys().all(|g| g == "performance");
    Check::new(
        "cpu.scaling_governor",
        found,
        "performance".into(),
        ok,
        "The performance governor keeps shard cores at full clock instead of ramping up after every idle period, which adds latency to the first messages of a burst.",
    )
}

fn check_isolated(host: &Host, shards: &BTreeSet<usize>) -> Check {
    const WHY: &str = "The scheduler puts no other task on cores in isolcpus=, and nohz_full= stops their timer tick, so a shard is not preempted between messages.";
    let mut isolated = host
        .read("/sys/devices/system/cpu/isolated")
        .ok()
        .and_then(|s| parse_cpu_list(&s))
        .unwrap_or_default();
    if let Some(cpus) = host.cmdline_param("isolcpus").and_then(|v| parse_isolcpus(&v)) {
        isolated.extend(cpus);
    }
    let mut nohz_full = host
        .read("/sys/devices/system/cpu/nohz_full")
        .ok()
        .and_then(|s| parse_cpu_list(&s))
        .unwrap_or_default();
    if let Some(cpus) = host.cmdline_param("nohz_full").and_then(|v| parse_cpu_list(&v)) {
        nohz_full.extend(cpus);
    }
    let found = format!(
        "isolated {}, nohz_full {}",
        format_cpu_list(&isolated),
        format_cpu_list(&nohz_full)
    );
    if shards.is_empty() {
        return Check::new(
            "cpu.isolated",
            found,
            "isolate the shard cores (none pinned)".into(),
            true,
            WHY,
        );
    }
    let list = format_cpu_list(shards);
    Check::new(
        "cpu.isolated",
        found,
        format!("isolcpus={list} nohz_full={list}"),
        shards.is_subset(&isolated),
        WHY,
    )
}

fn check_nic_irqs(host: &Host, shards: &BTreeSet<usize>) -> Check {
    const WHY: &str = "A NIC interrupt on a shard core preempts the shard's loop and evicts its cache, so steer NIC IRQs to other cores (and ban the shard cores in irqbalance).";
    let recommended = if shards.is_empty() {
        "off the shard cores (none pinned)".to_string()
    } else {
        format!("off cores {}", format_cpu_list(shards))
    };
    let irqs = nic_irqs(host);
    if irqs.is_empty() {
        return Check::new(
            "irq.nic_affinity",
            "no NIC queue IRQs found".into(),
            recommended,
            true,
            WHY,
        );
    }
    let mut all_cpus = BTreeSet::new();
    let mut offending = Vec::new();
    for (irq, action) in &irqs {
        let Some(cpus) = host
            .read(&format!("/proc/irq/{irq}/smp_affinity_list"))
            .ok()
            .and_then(|s| parse_cpu_list(&s))
        else {
            continue;
        };
        if !cpus.is_disjoint(shards) {
            offending.push(format!("irq {irq} ({action}) on {}", format_cpu_list(&cpus)));
        }
        all_cpus.extend(cpus);
    }
    let found = if offending.is_empty() {
        format!("{} NIC IRQs on {}", irqs.len(), format_cpu_list(&all_cpus))
    } else {
        let mut listed = offending[..offending.len().min(MAX_LISTED_IRQS)].join("; ");
        if offending.len() > MAX_LISTED_IRQS {
            listed.push_str(&format!(" (+{} more)", offending.len() - MAX_LISTED_IRQS));
        }
        listed
    };
    Check::new("irq.nic_affinity", found, recommended, offending.is_empty(), WHY)
}

/// The IRQs of physical NICs' queues as (irq number, action name), from /proc/interrupts.
///
/// A NIC is an interface in /sys/class/net with a `device` link (lo, bridges, veth and
/// ifb have none). Its queue IRQs are named after the interface (`eth0-TxRx-0`,
/// `i40e-eth0-TxRx-0`), after its PCI address (`mlx5_comp0@pci:0000:3b:00.0`), or, for
/// virtio-net, after the virtio device (`virtio2-input.0`, `virtio2-output.0`).
fn nic_irqs(host: &Host) -> Vec<(u32, String)> {
    let mut matchers: Vec<IrqNameMatcher> = Vec::new();
    if let Ok(entries) = fs::read_dir(host.path("/sys/class/net")) {
        for entry in entries.flatten() {
            let Some(iface) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let device = entry.path().join("device");
            if fs::symlink_metadata(&device).is_err() {
                continue;
            }
            matchers.push(IrqNameMatcher::Interface(iface));
            let device_name = fs::read_link(&device).ok().and_then(|target| file_name(&target));
            match device_name {
                Some(name) if name.starts_with("virtio") => {
                    matchers.push(IrqNameMatcher::Virtio(name));
                }
                Some(name) if is_pci_address(&name) => matchers.push(IrqNameMatcher::Pci(name)),
                _ => {}
            }
        }
    }
    if matchers.is_empty() {
        return Vec::new();
    }
    let Ok(interrupts) = host.read("/proc/interrupts") else {
        return Vec::new();
    };
    let mut irqs = Vec::new();
    for line in interrupts.lines() {
        let Some((number, rest)) = line.trim_start().split_once(':') else {
            continue;
        };
        let Ok(irq) = number.parse::<u32>() else {
            continue; // NMI, LOC, ... are not device IRQs.
        };
        let Some(action) = rest.split_whitespace().last() else {
            continue;
        };
        if matchers.iter().any(|m| m.matches(action)) {
            irqs.push((irq, action.to_string()));
        }
    }
    irqs
}

enum IrqNameMatcher {
    Interface(String),
    Pci(String),
    Virtio(String),
}

impl IrqNameMatcher {
    fn matches(&self, action: &str) -> bool {
        match self {
            IrqNameMatcher::Interface(iface) => {
                action == iface
                    || action.starts_with(&format!("{iface}-"))
                    || action.starts_with(&format!("{iface}@"))
                    || action.contains(&format!("-{iface}-"))
            }
            IrqNameMatcher::Pci(address) => action.ends_with(&format!("@pci:{address}")),
            IrqNameMatcher::Virtio(device) => {
                action.starts_with(&format!("{device}-input"))
                    || action.starts_with(&format!("{device}-output"))
            }
        }
    }
}

fn check_socket_buffer_max(host: &Host, sysctl: &str, direction: &str) -> Check {
    let name = format!("net.core.{sysctl}");
    let recommended = format!(
        ">= {RECOMMENDED_SOCKET_BUFFER_MAX} ({} MiB)",
        RECOMMENDED_SOCKET_BUFFER_MAX >> 20
    );
    let why = format!(
        "The kernel silently caps tuttid's UDP {direction} buffer at this limit, and a burst larger than the buffer is dropped before tutti sees it."
    );
    match read_u64(host, &format!("/proc/sys/net/core/{sysctl}")) {
        Ok(value) => Check {
            name,
            found: value.to_string(),
            recommended,
            ok: value >= RECOMMENDED_SOCKET_BUFFER_MAX,
            why,
        },
        Err(e) => Check {
            name,
            found: format!("unreadable ({e})"),
            recommended,
            ok: false,
            why,
        },
    }
}

/// Busy polling is opt-in: it is a trade of CPU for latency, not a fault, so any value
/// passes and the recommendation says when to turn it on.
fn check_busy_poll(host: &Host, sysctl: &str) -> Check {
    let why = match sysctl {
        "busy_poll" => "With busy_poll=50, poll and epoll spin up to 50 µs on the NIC queue instead of sleeping until an interrupt, which cuts wake-up latency but burns that CPU time; keep 0 where CPU matters more.",
        _ => "With busy_read=50, a blocking socket read spins up to 50 µs on the NIC queue before sleeping, which cuts latency but burns that CPU time; keep 0 where CPU matters more.",
    };
    let found = match read_u64(host, &format!("/proc/sys/net/core/{sysctl}")) {
        Ok(value) => value.to_string(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            "not present (kernel without busy polling)".to_string()
        }
        Err(e) => format!("unreadable ({e})"),
    };
    Check::new(
        &format!("net.core.{sysctl}"),
        found,
        format!("{RECOMMENDED_BUSY_POLL_USEC} on latency hosts (opt-in)"),
        true,
        why,
    )
}

fn check_thp(host: &Host) -> Check {
    const NAME: &str = "mm.transparent_hugepage";
    const RECOMMENDED: &str = "madvise or never";
    const WHY: &str = "With 'always', khugepaged and synchronous compaction can stall a thread for milliseconds while huge pages are assembled; 'madvise' limits that to memory that asks for it.";
    match host.read("/sys/kernel/mm/transparent_hugepage/enabled") {
        Ok(modes) => {
            // The active mode is the bracketed one: "always [madvise] never".
            let active = modes
                .split_whitespace()
                .find_map(|m| m.strip_prefix('[').and_then(|m| m.strip_suffix(']')))
                .unwrap_or(modes.as_str())
                .to_string();
            let ok = active == "madvise" || active == "never";
            Check::new(NAME, active, RECOMMENDED.into(), ok, WHY)
        }
        Err(_) => Check::new(
            NAME,
            "not exposed".into(),
            RECOMMENDED.into(),
            true,
            "This kernel has no transparent huge pages, so khugepaged cannot stall tuttid.",
        ),
    }
}

fn check_memlock(host: &Host, in_daemon: bool) -> Check {
    const NAME: &str = "rlimit.memlock";
    // What a low limit does, as tuttid meets it (net/uring.rs): the provided-buffer ring is
    // refused (posted receives instead), or before kernel 5.12 the ring itself (epoll).
    const DAEMON_WHY: &str = "This is tuttid's own locked-memory limit. io_uring charges its provided-buffer ring (and, before kernel 5.12, its rings) to it; where the kernel refuses them, tuttid receives into posted buffers or uses epoll instead, and logs that once per shard. The shipped unit asks for LimitMEMLOCK=64M, which systemd can grant only up to the hard limit of its host or container: raise that, or set LimitMEMLOCK= (or `ulimit -l` for a tuttid started by hand).";
    const CHECKER_WHY: &str = "io_uring charges its provided-buffer ring (and, before kernel 5.12, its rings) to the locked-memory limit; with too little, tuttid receives into posted buffers or uses epoll. This is the limit of this `tutti tune check` process, not of a running tuttid: tuttid logs its own at start (or read /proc/PID/limits); the shipped unit asks for LimitMEMLOCK=64M.";
    let why = if in_daemon { DAEMON_WHY } else { CHECKER_WHY };
    let recommended = format!(
        ">= {RECOMMENDED_MEMLOCK_BYTES} ({} MiB) or unlimited",
        RECOMMENDED_MEMLOCK_BYTES >> 20
    );
    let soft_limit = host.read("/proc/self/limits").ok().and_then(|limits| {
        limits.lines().find_map(|line| {
            line.strip_prefix("Max locked memory")
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_string)
        })
    });
    match soft_limit.as_deref() {
        Some("unlimited") => Check::new(NAME, "unlimited".into(), recommended, true, why),
        Some(value) => match value.parse::<u64>() {
            Ok(bytes) => Check::new(
                NAME,
                format!("{bytes} ({} MiB)", bytes >> 20),
                recommended,
                bytes >= RECOMMENDED_MEMLOCK_BYTES,
                why,
            ),
            Err(_) => Check::new(NAME, format!("unparsable ({value})"), recommended, false, why),
        },
        None => Check::new(NAME, "unreadable".into(), recommended, false, why),
    }
}

fn check_io_uring(host: &Host) -> Check {
    const NAME: &str = "kernel.io_uring_disabled";
    const WHY: &str = "tuttid uses io_uring by default and falls back to epoll, with a system call per batch, when the kernel refuses it (1 allows only root and kernel.io_uring_group).";
    let (found, ok) = match read_u64(host, "/proc/sys/kernel/io_uring_disabled") {
        Ok(0) => ("0".to_string(), true),
        Ok(1) => ("1 (root and io_uring_group only)".to_string(), false),
        Ok(n) => (format!("{n} (disabled)"), false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            ("not present (kernel before 6.6: enabled)".to_string(), true)
        }
        Err(e) => (format!("unreadable ({e})"), false),
    };
    Check::new(NAME, found, "0".into(), ok, WHY)
}

/// A KVM guest's idle vCPU halts, and the host must schedule it again before a woken
/// thread runs on it. The cpuidle-haltpoll driver polls first, for up to
/// `guest_halt_poll_ns`. A trade of CPU (the host's, while the guest idles) for wake-up
/// latency, so like busy polling it is opt-in: any value passes.
fn check_guest_halt_poll(host: &Host) -> Check {
    const NAME: &str = "cpu.guest_halt_poll";
    const WHY: &str = "On a KVM guest an idle vCPU halts and every wake-up of a thread on it waits for the host to run the vCPU again; with the cpuidle-haltpoll driver the guest polls first for up to guest_halt_poll_ns. Measured on a 2-vCPU guest (2026-12-07): a pipe round trip between two processes 72-135 µs at 0 and 10-12 µs at 200000, and the wake-up chain of tutti-bench cluster 84 µs and 30 µs; the polling is CPU time of the host. Set it with echo 200000 > /sys/module/haltpoll/parameters/guest_halt_poll_ns, or haltpoll.guest_halt_poll_ns= on the kernel command line; or let tuttid keep idle CPUs polling only while its traffic lasts (cpu_poll_after_data_ms, a request on /dev/cpu_dma_latency: tutti-bench cluster p50 47-48 -> 35-36 µs on such a guest).";
    let driver = host
        .read("/sys/devices/system/cpu/cpuidle/current_driver")
        .unwrap_or_default();
    let found = match driver.as_str() {
        "haltpoll" => match read_u64(host, "/sys/module/haltpoll/parameters/guest_halt_poll_ns") {
            Ok(0) => "haltpoll, guest_halt_poll_ns 0 (a halted vCPU wakes through the host)".to_string(),
            Ok(ns) => format!("haltpoll, guest_halt_poll_ns {ns}"),
            Err(e) => format!("haltpoll, guest_halt_poll_ns unreadable ({e})"),
        },
        "" => "no cpuidle driver (not a haltpoll guest)".to_string(),
        other => format!("cpuidle driver {other} (not a haltpoll guest)"),
    };
    Check::new(
        NAME,
        found,
        format!("{RECOMMENDED_GUEST_HALT_POLL_NS} on latency guests (opt-in)"),
        true,
        WHY,
    )
}

fn read_u64(host: &Host, absolute: &str) -> io::Result<u64> {
    let text = host.read(absolute)?;
    text.parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{absolute}: not a number: {text:?}"),
        )
    })
}

fn file_name(path: &Path) -> Option<String> {
    path.file_name()?.to_str().map(str::to_string)
}

/// `0000:3b:00.0`: domain:bus:device.function.
fn is_pci_address(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && b.iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit())
}

/// Parses a kernel CPU list: `0-3,8,10-15:2/4` (the `:used/group` stride form included).
/// An empty list is the empty set; anything malformed is `None`.
pub fn parse_cpu_list(s: &str) -> Option<BTreeSet<usize>> {
    let mut cpus = BTreeSet::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let (range, stride) = match part.split_once(':') {
            Some((range, stride)) => {
                let (used, group) = stride.split_once('/')?;
                (
                    range,
                    Some((used.parse::<usize>().ok()?, group.parse::<usize>().ok()?)),
                )
            }
            None => (part, None),
        };
        let (first, last) = match range.split_once('-') {
            Some((a, b)) => (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?),
            None => {
                let cpu = range.parse::<usize>().ok()?;
                (cpu, cpu)
            }
        };
        if first > last {
            return None;
        }
        match stride {
            Some((used, group)) if group > 0 && used <= group => {
                cpus.extend((first..=last).filter(|cpu| (cpu - first) % group < used))
            }
            Some(_) => return None,
            None => cpus.extend(first..=last),
        }
    }
    Some(cpus)
}

/// `isolcpus=` takes optional flags before the list: `isolcpus=nohz,domain,managed_irq,2-5`.
fn parse_isolcpus(value: &str) -> Option<BTreeSet<usize>> {
    let list: Vec<&str> = value
        .split(',')
        .filter(|p| !p.starts_with(|c: char| c.is_ascii_alphabetic()))
        .collect();
    parse_cpu_list(&list.join(","))
}

/// Formats a CPU set as the kernel does: `0-3,8`; "none" for the empty set.
pub fn format_cpu_list(cpus: &BTreeSet<usize>) -> String {
    let mut parts = Vec::new();
    let mut iter = cpus.iter().copied().peekable();
    while let Some(first) = iter.next() {
        let mut last = first;
        while iter.peek() == Some(&(last + 1)) {
            last = iter.next().unwrap_or(last);
        }
        parts.push(if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        });
    }
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(",")
    }
}

#[cfg(test)]
mod tests;
