//! The cluster benchmark: N `tuttid`s on 127.0.0.2.. forming a cluster over UDP, a
//! publisher attached to daemon 1 and a subscriber attached to daemon 2, both threads of
//! this process; `CLOCK_MONOTONIC` (the same for every thread and process) times publish to
//! delivery across daemons.
//!
//! Messages carry `phase << 56 | seq` in bytes 0..8 and a `CLOCK_MONOTONIC` stamp in bytes
//! 8..16 (0 in the unpaced throughput phase, where nothing reads it). Latency is ping-pong style (one message in flight: the publisher waits until the
//! subscriber has seen it; a message not seen within [`LATENCY_TIMEOUT`] is recorded as the
//! timeout and counted in `latency_timeouts`). Throughput is the publisher offering as fast
//! as it can, or at a fixed rate (`--rate`): then every message is stamped with its
//! *intended* send time, so a stall of the publisher or of daemon 1 shows in the latency of
//! every message it delayed (no coordinated omission), and messages never delivered are
//! recorded at the drain time, a lower bound of their latency.

use std::hint::spin_loop;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use hdrhistogram::Histogram;
use serde::Serialize;
use tutti_client::{Client, Event, GroupId, IdleStrategy, OfferError, Rights};

use crate::clock;
use crate::daemon::{Daemon, DaemonOptions};
use crate::interrupt;
use crate::report::new_histogram;
use crate::udp_floor::sleep_checked;

/// The group the publisher and the subscriber join.
const GROUP: &str = "bench-cluster";
/// Smallest message: phase and sequence number (8 bytes) and the TSC stamp (8 bytes).
pub const MIN_SIZE: usize = 16;
/// How long the daemons may take to agree on a view of all N.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);
/// How long probes may take to reach the subscriber once both joined.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);
/// Between two probes.
const PROBE_INTERVAL: Duration = Duration::from_millis(20);
/// A latency message not delivered within this long is counted as a timeout and the
/// publisher moves on (gossip repair of a lost datagram takes a few 100 ms rounds).
pub const LATENCY_TIMEOUT: Duration = Duration::from_secs(3);
/// An offer back-pressured this long means the daemon stopped draining its ring.
const OFFER_TIMEOUT: Duration = Duration::from_secs(10);
/// After the last throughput message: wait until everything arrived, or until nothing
/// arrived for this long (more than the default repair retention of 2 s), ...
const GRACE_QUIET: Duration = Duration::from_millis(2500);
/// ... but never longer than this.
const GRACE_MAX: Duration = Duration::from_secs(20);
/// Events taken per poll.
const POLL_LIMIT: usize = 1024;
/// Offers between two looks at the clock in the throughput loop.
const OFFERS_PER_CLOCK_CHECK: u64 = 256;

const PHASE_PROBE: u64 = 1;
const PHASE_LATENCY_WARMUP: u64 = 2;
const PHASE_LATENCY: u64 = 3;
const PHASE_THROUGHPUT_WARMUP: u64 = 4;
const PHASE_THROUGHPUT: u64 = 5;

fn word(phase: u64, seq: u64) -> u64 {
    (phase << 56) | (seq & ((1 << 56) - 1))
}

/// Address of daemon `node` (1-based): 127.0.0.(node + 1).
pub fn node_ip(node: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, (node + 1) as u8))
}

/// How the bench's two client threads wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientIdle {
    /// Spin on the delivery log and the publish ring.
    Spin,
    /// Spin, yield, then sleep (the subscriber on the group's futex, woken by the daemon).
    Backoff,
}

impl ClientIdle {
    pub fn name(self) -> &'static str {
        match self {
            ClientIdle::Spin => "spin",
            ClientIdle::Backoff => "backoff",
        }
    }

    fn strategy(self) -> IdleStrategy {
        match self {
            ClientIdle::Spin => IdleStrategy::Spin,
            ClientIdle::Backoff => IdleStrategy::Backoff,
        }
    }
}

pub struct ClusterOptions {
    pub tuttid: PathBuf,
    pub nodes: usize,
    pub size: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub loss: f64,
    pub io: String,
    pub daemon_idle: String,
    /// tuttid's `spin_after_data_us` (None: its default).
    pub daemon_spin_us: Option<u64>,
    /// tuttid's `cpu_poll_after_data_ms` (None: its default, never).
    pub daemon_cpu_poll_ms: Option<u64>,
    /// Every daemon's shard pinned to this core (tuttid's `cores`); None: not pinned.
    pub daemon_core: Option<usize>,
    pub client_idle: ClientIdle,
    pub base_port: u16,
    /// Seconds after both clients joined before publishing (the coordinator puts them into
    /// the group's view over a few gossip rounds).
    pub settle: Duration,
    /// Throughput phase: messages per second to offer at most (0: as fast as daemon 1 takes
    /// them).
    pub rate: f64,
    /// Extra `[cluster]` keys for every daemon, as `key = value` TOML lines.
    pub cluster_settings: Vec<String>,
    /// Run the one-in-flight latency phase (`--rates` runs only the paced phase).
    pub latency_phase: bool,
}

/// A fresh cluster key in a private temporary file (removed on drop), for `--auth`.
pub struct TempKey {
    dir: PathBuf,
}

impl TempKey {
    pub fn path(&self) -> PathBuf {
        self.dir.join("cluster.key")
    }
}

impl Drop for TempKey {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes a random key (mode 0600, as `tutti keygen` does) to a fresh temporary directory.
pub fn write_temp_key() -> Result<TempKey, String> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::env::temp_dir().join(format!("tutti-bench-key-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let key = TempKey { dir };
    let mut bytes = [0u8; tutti_wire::cluster_key::KEY_LEN];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(key.path())
        .and_then(|mut f| f.write_all(tutti_wire::cluster_key::encode_key(&bytes).as_bytes()))
        .map_err(|e| format!("{}: {e}", key.path().display()))?;
    Ok(key)
}

/// The daemon counters the report carries, per daemon.
pub const REPORTED_COUNTERS: &[&str] = &[
    "frames_in",
    "datagrams_out",
    "datagrams_in",
    "remote_delivered",
    "retransmits",
    "lost",
    "not_sent",
    "fault_dropped",
    "decode_errors",
    "not_joined",
    "parks",
    "flow_held",
    "idle_spins",
    "spins_skipped",
    "unlogged",
    "cpu_poll_holds",
    "park_barriers",
    "subscriber_wakes",
    "view_changes",
    "gossip_rounds",
    "view_members",
    "auth_failed",
    "replayed",
];

/// One daemon's counters, summed over its shards (gauges: the largest).
#[derive(Debug, Clone, Default, Serialize)]
pub struct DaemonCounters(pub std::collections::BTreeMap<&'static str, u64>);

impl DaemonCounters {
    pub fn get(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    fn delta(&self, before: &DaemonCounters) -> DaemonCounters {
        DaemonCounters(
            self.0
                .iter()
                .map(|(k, v)| (*k, v.saturating_sub(before.get(k))))
                .collect(),
        )
    }
}

fn read_counters(client: &mut Client) -> Result<DaemonCounters, String> {
    let shards = client.counters().map_err(|e| format!("reading counters: {e}"))?;
    let mut out = std::collections::BTreeMap::new();
    for shard in &shards {
        for (name, value) in shard.values() {
            if !REPORTED_COUNTERS.contains(&name) {
                continue;
            }
            let e = out.entry(name).or_insert(0u64);
            if name == "view_members" {
                *e = (*e).max(value);
            } else {
                *e += value;
            }
        }
    }
    Ok(DaemonCounters(out))
}

pub struct ClusterRun {
    /// Publish-to-delivery times, publisher on daemon 1, subscriber on daemon 2; each
    /// timed-out message is in it as [`LATENCY_TIMEOUT`].
    pub latency: Histogram<u64>,
    /// When the latency window began (for the interval log).
    pub latency_start: Instant,
    pub latency_measured: Duration,
    pub latency_timeouts: u64,
    /// With `--rate`: publish-to-delivery from each throughput message's intended send
    /// time, missing messages included at the drain time; and when that window began.
    pub rate_latency: Option<Histogram<u64>>,
    pub throughput_start: Instant,
    /// Throughput messages delivered at the subscriber in the measured window.
    pub delivered: u64,
    pub delivered_window: Duration,
    /// Throughput messages the publisher got accepted in the measured window.
    pub sent: u64,
    pub sent_window: Duration,
    /// Measured-window messages never delivered by the end of the grace period.
    pub missing: u64,
    /// Time from the last offer until the subscriber had everything (or gave up).
    pub drain: Duration,
    pub lost_events: u64,
    pub lost_messages: u64,
    pub lagged_events: u64,
    pub lagged_missed: u64,
    pub form_time: Duration,
    pub rss_start_kib: Vec<u64>,
    pub rss_end_kib: Vec<u64>,
    /// CPU seconds each daemon used during the latency phase and during the throughput
    /// phase (from the first offer to the end of the drain), with the phases' wall times.
    pub latency_cpu_s: Vec<f64>,
    pub latency_wall_s: f64,
    pub throughput_cpu_s: Vec<f64>,
    pub throughput_wall_s: f64,
    /// Counters accumulated during the throughput phase, per daemon.
    pub throughput_counters: Vec<DaemonCounters>,
    /// Counters at the end of the run, per daemon.
    pub end_counters: Vec<DaemonCounters>,
}

/// Delivery log of each daemon in the cluster bench: 64 MiB, about 0.4 s of a 64-byte
/// stream at 1.7 M msg/s. Repair delivers a repaired gap and everything held behind it at
/// once; with 3 daemons, a publisher and a subscriber on 2 vCPUs, the default 8 MiB log
/// (50 ms of stream) is lapped by such bursts and the subscriber gets `Lagged`, which would
/// measure the subscriber's scheduling rather than the protocol.
const BENCH_LOG_BYTES: usize = 64 << 20;

fn config_text(o: &ClusterOptions, node: usize) -> String {
    let seeds: Vec<String> = (1..=o.nodes).map(|n| format!("\"{n}@{}\"", node_ip(n))).collect();
    let mut text = format!(
        "node_id = {node}\nlog_bytes = {BENCH_LOG_BYTES}\n[cluster]\nenabled = true\nseeds = [{}]\n{}[net]\nlisten = \"{}\"\n\
         base_port = {}\nio = \"{}\"\n",
        seeds.join(", "),
        o.cluster_settings
            .iter()
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
        node_ip(node),
        o.base_port,
        o.io
    );
    if let Some(us) = o.daemon_spin_us {
        // A top-level key: ahead of the first table.
        text.insert_str(0, &format!("spin_after_data_us = {us}\n"));
    }
    if let Some(ms) = o.daemon_cpu_poll_ms {
        text.insert_str(0, &format!("cpu_poll_after_data_ms = {ms}\n"));
    }
    if o.loss > 0.0 {
        text.push_str(&format!("[net.fault]\nloss = {}\nseed = {node}\n", o.loss));
    }
    text
}

/// What the subscriber thread shares with the publisher.
struct Shared {
    /// The last latency/probe word the subscriber saw.
    seen: CachePadded<AtomicU64>,
    /// Publish-to-delivery of that message in ns (stored before `seen`, read after it).
    seen_latency_ns: CachePadded<AtomicU64>,
    /// Throughput-phase messages delivered so far.
    throughput_delivered: CachePadded<AtomicU64>,
    ready: AtomicBool,
    stop: AtomicBool,
    failed: AtomicBool,
}

struct SubscriberResult {
    /// Paced throughput messages: delivery time minus intended send time.
    rate_latency: Histogram<u64>,
    delivered: u64,
    first_ns: u64,
    last_ns: u64,
    lost_events: u64,
    lost_messages: u64,
    lagged_events: u64,
    lagged_missed: u64,
}

/// Starts the cluster, runs both phases, stops the daemons (dropping the guards).
pub fn run(o: &ClusterOptions) -> Result<ClusterRun, String> {
    let mut daemons = Vec::with_capacity(o.nodes);
    for node in 1..=o.nodes {
        let config = config_text(o, node);
        let d = Daemon::start(&DaemonOptions {
            tuttid: &o.tuttid,
            idle: &o.daemon_idle,
            core: o.daemon_core.unwrap_or(0),
            no_pin: o.daemon_core.is_none(),
            config: Some(&config),
        })
        .map_err(|e| format!("daemon {node} ({}): {e}", node_ip(node)))?;
        daemons.push(d);
    }
    let result = run_with(o, &mut daemons);
    match result {
        Ok(r) => {
            for (i, d) in daemons.iter_mut().enumerate() {
                d.check_alive().map_err(|e| format!("daemon {}: {e}", i + 1))?;
            }
            Ok(r)
        }
        Err(e) => {
            let mut msg = e;
            for (i, d) in daemons.iter_mut().enumerate() {
                if let Err(dead) = d.check_alive() {
                    msg.push_str(&format!("\ndaemon {}: {dead}", i + 1));
                }
            }
            Err(msg)
        }
    }
}

fn run_with(o: &ClusterOptions, daemons: &mut [Daemon]) -> Result<ClusterRun, String> {
    let started = Instant::now();
    let mut monitors = Vec::with_capacity(daemons.len());
    for (i, d) in daemons.iter().enumerate() {
        monitors.push(
            Client::connect_to(d.socket())
                .map_err(|e| format!("connecting to daemon {} at {}: {e}", i + 1, d.socket().display()))?,
        );
    }
    wait_for_view(o, &mut monitors, daemons)?;
    let form_time = started.elapsed();
    let rss_start_kib = daemons
        .iter()
        .map(Daemon::rss_kib)
        .collect::<Result<Vec<_>, _>>()?;

    let shared = Shared {
        seen: CachePadded::new(AtomicU64::new(0)),
        seen_latency_ns: CachePadded::new(AtomicU64::new(0)),
        throughput_delivered: CachePadded::new(AtomicU64::new(0)),
        ready: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        failed: AtomicBool::new(false),
    };
    let pids: Vec<u32> = daemons.iter().map(Daemon::pid).collect();
    let sub_socket = daemons[1].socket().to_path_buf();
    let pub_socket = daemons[0].socket().to_path_buf();
    std::thread::scope(|s| {
        let shared = &shared;
        let subscriber = s.spawn(move || {
            let r = subscribe(&sub_socket, o.client_idle, shared, o.rate > 0.0);
            if r.is_err() {
                shared.failed.store(true, Ordering::Release);
            }
            r
        });
        let published = publish(o, &pub_socket, shared, &mut monitors, &pids);
        shared.stop.store(true, Ordering::Release);
        let sub = subscriber
            .join()
            .map_err(|_| "subscriber thread panicked".to_string())?;
        let (p, sub) = match (published, sub) {
            (Ok(p), Ok(sub)) => (p, sub),
            (Err(e), Ok(_)) | (Ok(_), Err(e)) => return Err(e),
            (Err(e), Err(sub_e)) => return Err(format!("{e}; subscriber: {sub_e}")),
        };
        let end_counters = monitors
            .iter_mut()
            .map(read_counters)
            .collect::<Result<Vec<_>, _>>()?;
        let rss_end_kib = daemons
            .iter()
            .map(Daemon::rss_kib)
            .collect::<Result<Vec<_>, _>>()?;
        let delivered_window = Duration::from_nanos(sub.last_ns.saturating_sub(sub.first_ns));
        let missing = p.sent.saturating_sub(sub.delivered);
        let rate_latency = (o.rate > 0.0).then(|| {
            let mut h = sub.rate_latency;
            // Never delivered: at least as late as the end of the drain.
            h.saturating_record_n(p.drain.as_nanos() as u64, missing);
            h
        });
        Ok(ClusterRun {
            latency: p.latency,
            latency_start: p.latency_start,
            latency_measured: p.latency_measured,
            latency_timeouts: p.latency_timeouts,
            rate_latency,
            throughput_start: p.throughput_start,
            delivered: sub.delivered,
            delivered_window,
            sent: p.sent,
            sent_window: p.sent_window,
            missing,
            drain: p.drain,
            lost_events: sub.lost_events,
            lost_messages: sub.lost_messages,
            lagged_events: sub.lagged_events,
            lagged_missed: sub.lagged_missed,
            form_time,
            rss_start_kib,
            rss_end_kib,
            latency_cpu_s: p.latency_cpu.iter().map(|d| round_ms(d.as_secs_f64())).collect(),
            latency_wall_s: round_ms(p.latency_wall.as_secs_f64()),
            throughput_cpu_s: p
                .throughput_cpu
                .iter()
                .map(|d| round_ms(d.as_secs_f64()))
                .collect(),
            throughput_wall_s: round_ms(p.throughput_wall.as_secs_f64()),
            throughput_counters: p.throughput_counters,
            end_counters,
        })
    })
}

fn wait_for_view(o: &ClusterOptions, monitors: &mut [Client], daemons: &mut [Daemon]) -> Result<(), String> {
    let deadline = Instant::now() + FORM_TIMEOUT;
    loop {
        let mut members = Vec::with_capacity(monitors.len());
        for m in monitors.iter_mut() {
            members.push(read_counters(m)?.get("view_members"));
        }
        if members.iter().all(|&m| m == o.nodes as u64) {
            return Ok(());
        }
        for (i, d) in daemons.iter_mut().enumerate() {
            d.check_alive().map_err(|e| format!("daemon {}: {e}", i + 1))?;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = daemons
                .iter()
                .enumerate()
                .map(|(i, d)| format!("daemon {} log:\n{}", i + 1, d.log_tail()))
                .collect();
            return Err(format!(
                "the {} daemons did not form one view within {FORM_TIMEOUT:?} (view sizes {members:?}; \
                 is UDP port {} free on 127.0.0.x? try --base-port)\n{}",
                o.nodes,
                o.base_port,
                logs.join("\n")
            ));
        }
        sleep_checked(Duration::from_millis(50))?;
    }
}

fn subscribe(
    socket: &std::path::Path,
    idle: ClientIdle,
    shared: &Shared,
    paced: bool,
) -> Result<SubscriberResult, String> {
    let mut client = Client::connect_to(socket)
        .map_err(|e| format!("subscriber: connecting to daemon 2 at {}: {e}", socket.display()))?;
    let group = client
        .join(GROUP)
        .map_err(|e| format!("subscriber: joining {GROUP:?}: {e}"))?;
    shared.ready.store(true, Ordering::Release);
    let mut r = SubscriberResult {
        rate_latency: new_histogram(),
        delivered: 0,
        first_ns: 0,
        last_ns: 0,
        lost_events: 0,
        lost_messages: 0,
        lagged_events: 0,
        lagged_missed: 0,
    };
    let mut bad = None;
    while !shared.stop.load(Ordering::Acquire) {
        let mut throughput_now = 0u64;
        let n = client
            .poll_blocking(
                group,
                POLL_LIMIT,
                idle.strategy(),
                Duration::from_millis(10),
                |event| match event {
                    Event::Message { payload, .. } => {
                        let (Some(w), Some(stamp)) = (read_u64(payload, 0), read_u64(payload, 8)) else {
                            bad.get_or_insert(payload.len());
                            return;
                        };
                        match w >> 56 {
                            PHASE_THROUGHPUT => {
                                throughput_now += 1;
                                if paced {
                                    let now = clock::mono_ns();
                                    r.rate_latency.saturating_record(now.saturating_sub(stamp));
                                }
                            }
                            PHASE_THROUGHPUT_WARMUP => {}
                            // A late copy of an earlier word (one the publisher gave
                            // up on) does not overwrite the newer one's latency.
                            _ if w > shared.seen.load(Ordering::Relaxed) => {
                                let now = clock::mono_ns();
                                shared
                                    .seen_latency_ns
                                    .store(now.saturating_sub(stamp), Ordering::Relaxed);
                                shared.seen.store(w, Ordering::Release);
                            }
                            _ => {}
                        }
                    }
                    Event::Lagged { missed } => {
                        r.lagged_events += 1;
                        r.lagged_missed += missed;
                    }
                    Event::Lost { count, .. } => {
                        r.lost_events += 1;
                        r.lost_messages += count;
                    }
                    // Plain groups carry no ordered-group records.
                    _ => {}
                },
            )
            .map_err(|e| format!("subscriber: poll: {e}"))?;
        if let Some(len) = bad {
            return Err(format!("subscriber: a message of {len} bytes, not one of ours"));
        }
        if throughput_now > 0 {
            let now = clock::mono_ns();
            if r.delivered == 0 {
                r.first_ns = now;
            }
            r.last_ns = now;
            r.delivered += throughput_now;
            shared.throughput_delivered.store(r.delivered, Ordering::Release);
        }
        if n == 0 {
            interrupt::check()?;
        }
    }
    Ok(r)
}

fn round_ms(s: f64) -> f64 {
    (s * 1000.0).round() / 1000.0
}

/// CPU time of every daemon now.
fn cpu_times(pids: &[u32]) -> Result<Vec<Duration>, String> {
    pids.iter().map(|&p| crate::daemon::cpu_time(p)).collect()
}

fn cpu_since(pids: &[u32], before: &[Duration]) -> Result<Vec<Duration>, String> {
    Ok(cpu_times(pids)?
        .iter()
        .zip(before)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect())
}

fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

struct PublisherResult {
    latency: Histogram<u64>,
    latency_start: Instant,
    latency_measured: Duration,
    latency_timeouts: u64,
    throughput_start: Instant,
    sent: u64,
    sent_window: Duration,
    drain: Duration,
    latency_cpu: Vec<Duration>,
    latency_wall: Duration,
    throughput_cpu: Vec<Duration>,
    throughput_wall: Duration,
    throughput_counters: Vec<DaemonCounters>,
}

/// Waits while the subscriber has not seen `w`: by spinning, or (backoff) sleeping 20 us
/// between looks, as the wake-up chain floor's publisher does (`udp_floor::wakeup_chain`).
/// The publisher's pace does not enter the measured latency, which the subscriber takes
/// from the message's stamp; but a publisher that spins or yields here holds one of this
/// machine's two cores while the message crosses the daemons (a yield does not let another
/// session's threads run), which the floor's publisher does not: `perf sched timehist`
/// showed the receiving daemon waiting 0.1-0.3 ms for the core it held.
fn wait_seen(shared: &Shared, w: u64, idle: ClientIdle, timeout: Duration) -> Result<bool, String> {
    let start = Instant::now();
    let mut tries = 0u32;
    loop {
        if shared.seen.load(Ordering::Acquire) == w {
            return Ok(true);
        }
        tries = tries.wrapping_add(1);
        match idle {
            ClientIdle::Spin => spin_loop(),
            ClientIdle::Backoff => std::thread::sleep(Duration::from_micros(20)),
        }
        if tries.is_multiple_of(1024) || idle == ClientIdle::Backoff {
            if shared.failed.load(Ordering::Acquire) {
                return Err("subscriber stopped".into());
            }
            interrupt::check()?;
            if start.elapsed() > timeout {
                return Ok(false);
            }
        }
    }
}

fn offer(client: &mut Client, group: GroupId, msg: &[u8], idle: ClientIdle) -> Result<(), String> {
    match client.offer_blocking(group, msg, idle.strategy(), OFFER_TIMEOUT) {
        Ok(()) => Ok(()),
        Err(OfferError::BackPressured) => Err(format!(
            "publisher: back-pressured for {OFFER_TIMEOUT:?}: daemon 1 stopped draining its ring"
        )),
        Err(e) => Err(format!("publisher: offer of {} bytes: {e:?}", msg.len())),
    }
}

/// The intended send time of message `seq` at `rate` per second from `start_ns`.
fn intended_ns(start_ns: u64, seq: u64, rate: f64) -> u64 {
    start_ns + (seq as f64 * 1e9 / rate) as u64
}

/// Waits until `due_ns` (`CLOCK_MONOTONIC`), sleeping when more than a sleep's granularity
/// ahead and yielding (not spinning: the daemons may need this core) when closer. A
/// publisher that fell behind returns at once and catches up: the latency of what it sends
/// late is still counted from the intended time.
fn pace(due_ns: u64) -> Result<(), String> {
    loop {
        let now = clock::mono_ns();
        if now >= due_ns {
            return Ok(());
        }
        let ahead = Duration::from_nanos(due_ns - now);
        if ahead > Duration::from_micros(200) {
            std::thread::sleep(ahead.min(Duration::from_millis(20)));
            interrupt::check()?;
        } else {
            std::thread::yield_now();
        }
    }
}

fn stamp_at(msg: &mut [u8], w: u64, ns: u64) {
    msg[..8].copy_from_slice(&w.to_le_bytes());
    msg[8..16].copy_from_slice(&ns.to_le_bytes());
}

fn stamp(msg: &mut [u8], w: u64) {
    stamp_at(msg, w, clock::mono_ns());
}

fn publish(
    o: &ClusterOptions,
    socket: &std::path::Path,
    shared: &Shared,
    monitors: &mut [Client],
    pids: &[u32],
) -> Result<PublisherResult, String> {
    let mut client = Client::connect_to(socket)
        .map_err(|e| format!("publisher: connecting to daemon 1 at {}: {e}", socket.display()))?;
    // Publish only, as the floor's sender: it reads nothing, so daemon 1 has no local
    // reader to log the group for (`unlogged`).
    let group = client
        .join_as(GROUP, Rights::PUBLISH)
        .map_err(|e| format!("publisher: joining {GROUP:?}: {e}"))?;
    let wait_ready = Instant::now();
    while !shared.ready.load(Ordering::Acquire) {
        if shared.failed.load(Ordering::Acquire) || wait_ready.elapsed() > PROBE_TIMEOUT {
            return Err("the subscriber did not join".into());
        }
        sleep_checked(Duration::from_millis(1))?;
    }
    sleep_checked(o.settle)?;
    let mut msg = vec![0x5Au8; o.size];

    // Probes until one gets through: both members are in the group's view everywhere.
    let probe_start = Instant::now();
    let mut probe = 0u64;
    loop {
        probe += 1;
        let w = word(PHASE_PROBE, probe);
        stamp(&mut msg, w);
        offer(&mut client, group, &msg, o.client_idle)?;
        if shared.seen.load(Ordering::Acquire) >> 56 == PHASE_PROBE {
            break;
        }
        if probe_start.elapsed() > PROBE_TIMEOUT {
            return Err(format!(
                "no message from daemon 1 reached the subscriber on daemon 2 within {PROBE_TIMEOUT:?}"
            ));
        }
        if shared.failed.load(Ordering::Acquire) {
            return Err("subscriber stopped".into());
        }
        sleep_checked(PROBE_INTERVAL)?;
    }
    // Let stragglers of the probes arrive before timing.
    sleep_checked(Duration::from_millis(100))?;

    // Latency: one message in flight.
    let mut seq = 0u64;
    let mut latency_timeouts = 0u64;
    let mut latency = new_histogram();
    let cpu_before = cpu_times(pids)?;
    let lat_start = Instant::now();
    let lat_measure_from = lat_start + o.warmup;
    let lat_end = lat_measure_from + o.duration;
    let mut measure_start = None;
    loop {
        let now = Instant::now();
        if now >= lat_end || !o.latency_phase {
            break;
        }
        let phase = if now >= lat_measure_from {
            measure_start.get_or_insert(now);
            PHASE_LATENCY
        } else {
            PHASE_LATENCY_WARMUP
        };
        seq += 1;
        let w = word(phase, seq);
        stamp(&mut msg, w);
        offer(&mut client, group, &msg, o.client_idle)?;
        let seen = wait_seen(shared, w, o.client_idle, LATENCY_TIMEOUT)?;
        if phase == PHASE_LATENCY {
            if seen {
                latency.saturating_record(shared.seen_latency_ns.load(Ordering::Relaxed));
            } else {
                // Counted, at least as late as the timeout (it may still arrive: then the
                // subscriber's late `seen` is ignored, as the publisher moved on).
                latency_timeouts += 1;
                latency.saturating_record(LATENCY_TIMEOUT.as_nanos() as u64);
            }
        }
    }
    let latency_start = measure_start.unwrap_or(lat_end);
    let latency_measured = measure_start.map_or(Duration::ZERO, |t| t.elapsed());
    let latency_wall = lat_start.elapsed();
    let latency_cpu = cpu_since(pids, &cpu_before)?;
    let cpu_before = cpu_times(pids)?;

    // Throughput: offer as fast as the daemon takes them.
    let tp_start = Instant::now();
    let tp_start_ns = clock::mono_ns();
    let tp_measure_from = tp_start + o.warmup;
    let tp_end = tp_measure_from + o.duration;
    let mut phase = PHASE_THROUGHPUT_WARMUP;
    let mut seq = 0u64;
    let mut sent = 0u64;
    let mut window_start = tp_start;
    let mut counters_before = Vec::new();
    loop {
        for _ in 0..OFFERS_PER_CLOCK_CHECK {
            let w = word(phase, seq + 1);
            if o.rate > 0.0 {
                let due = intended_ns(tp_start_ns, seq, o.rate);
                pace(due)?;
                stamp_at(&mut msg, w, due);
            } else {
                // Unpaced, nothing reads the time (the subscriber only counts): a clock
                // read per message was 12% of both vCPUs' samples at 3.6 M msg/s,
                // taken from the daemons this phase measures.
                stamp_at(&mut msg, w, 0);
            }
            seq += 1;
            offer(&mut client, group, &msg, o.client_idle)?;
            if phase == PHASE_THROUGHPUT {
                sent += 1;
            }
        }
        interrupt::check()?;
        if shared.failed.load(Ordering::Acquire) {
            return Err("subscriber stopped".into());
        }
        let now = Instant::now();
        if phase == PHASE_THROUGHPUT_WARMUP && now >= tp_measure_from {
            // Counter reads go through the control socket: off the data path.
            counters_before = monitors
                .iter_mut()
                .map(read_counters)
                .collect::<Result<Vec<_>, _>>()?;
            phase = PHASE_THROUGHPUT;
            window_start = Instant::now();
        } else if now >= tp_end && phase == PHASE_THROUGHPUT {
            break;
        }
    }
    let sent_window = window_start.elapsed();
    let last_offer = Instant::now();
    // Grace: until the subscriber has everything, nothing arrived for a while, or the cap.
    let mut last_count = shared.throughput_delivered.load(Ordering::Acquire);
    let mut last_progress = Instant::now();
    loop {
        let count = shared.throughput_delivered.load(Ordering::Acquire);
        if count >= sent {
            break;
        }
        if count != last_count {
            last_count = count;
            last_progress = Instant::now();
        }
        if last_progress.elapsed() > GRACE_QUIET || last_offer.elapsed() > GRACE_MAX {
            break;
        }
        if shared.failed.load(Ordering::Acquire) {
            return Err("subscriber stopped".into());
        }
        sleep_checked(Duration::from_millis(1))?;
    }
    let drain = last_offer.elapsed();
    let throughput_wall = tp_start.elapsed();
    let throughput_cpu = cpu_since(pids, &cpu_before)?;
    let after = monitors
        .iter_mut()
        .map(read_counters)
        .collect::<Result<Vec<_>, _>>()?;
    let throughput_counters = after
        .iter()
        .zip(counters_before.iter())
        .map(|(a, b)| a.delta(b))
        .collect();
    Ok(PublisherResult {
        latency,
        latency_start,
        latency_measured,
        latency_timeouts,
        throughput_start: window_start,
        sent,
        sent_window,
        drain,
        latency_cpu,
        latency_wall,
        throughput_cpu,
        throughput_wall,
        throughput_counters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_carry_phase_and_sequence() {
        let w = word(PHASE_THROUGHPUT, 12345);
        assert_eq!(w >> 56, PHASE_THROUGHPUT);
        assert_eq!(w & 0xFFFF, 12345 & 0xFFFF);
    }

    #[test]
    fn config_names_every_seed_and_the_fault() {
        let o = ClusterOptions {
            tuttid: PathBuf::from("tuttid"),
            nodes: 3,
            size: 64,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(1),
            loss: 0.05,
            io: "auto".into(),
            daemon_idle: "backoff".into(),
            daemon_spin_us: None,
            daemon_cpu_poll_ms: None,
            daemon_core: None,
            client_idle: ClientIdle::Backoff,
            base_port: 27400,
            settle: Duration::ZERO,
            rate: 0.0,
            cluster_settings: vec!["retention_rounds = 1".into()],
            latency_phase: true,
        };
        let text = config_text(&o, 2);
        assert!(text.contains("node_id = 2\n"), "{text}");
        assert!(
            text.contains("seeds = [\"1@127.0.0.2\", \"2@127.0.0.3\", \"3@127.0.0.4\"]"),
            "{text}"
        );
        assert!(
            text.contains(
                "seeds = [\"1@127.0.0.2\", \"2@127.0.0.3\", \"3@127.0.0.4\"]\nretention_rounds = 1\n[net]"
            ),
            "{text}"
        );
        assert!(text.contains("listen = \"127.0.0.3\""), "{text}");
        assert!(text.contains("loss = 0.05\nseed = 2"), "{text}");
    }
}
