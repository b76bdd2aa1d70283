//! Results and how they are printed: one JSON object per line (`--json`), a readable table
//! otherwise, and the full histograms as an HdrHistogram interval log (`--hlog`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest value a histogram records: 60 s in nanoseconds (anything above is clamped).
const HIST_MAX_NS: u64 = 60_000_000_000;
/// Significant decimal digits kept: 0.1% resolution.
const HIST_SIGFIG: u8 = 3;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_NS, HIST_SIGFIG).expect("valid histogram bounds")
}

/// Percentiles of a latency histogram, in nanoseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub samples: u64,
    pub min_ns: u64,
    pub mean_ns: f64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        Percentiles {
            samples: h.len(),
            min_ns: h.min(),
            mean_ns: (h.mean() * 10.0).round() / 10.0,
            p50_ns: h.value_at_quantile(0.50),
            p90_ns: h.value_at_quantile(0.90),
            p99_ns: h.value_at_quantile(0.99),
            p999_ns: h.value_at_quantile(0.999),
            max_ns: h.max(),
        }
    }

    /// Half of every figure: one-way latency estimated from a round trip.
    pub fn halved(&self) -> Percentiles {
        Percentiles {
            samples: self.samples,
            min_ns: self.min_ns / 2,
            mean_ns: self.mean_ns / 2.0,
            p50_ns: self.p50_ns / 2,
            p90_ns: self.p90_ns / 2,
            p99_ns: self.p99_ns / 2,
            p999_ns: self.p999_ns / 2,
            max_ns: self.max_ns / 2,
        }
    }
}

/// One latency result line. `p*_ns` are round trips (publish to own delivery, or
/// thread A to B and back); `floor_p50_ns` is the bare cache-line round trip of the same run.
#[derive(Debug, Serialize)]
pub struct LatencyResult {
    pub bench: &'static str,
    pub size: usize,
    #[serde(flatten)]
    pub rtt: Percentiles,
    pub one_way_p50_ns: u64,
    pub one_way_p99_ns: u64,
    pub floor_p50_ns: u64,
    pub floor_p99_ns: u64,
    /// The floor measured again after the daemon stopped: when it differs much from
    /// `floor_p50_ns`, conditions changed during the run (noisy neighbours, vCPU placement)
    /// and the ratio is not to be trusted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor_after_p50_ns: Option<u64>,
    pub ratio_p50: f64,
    pub duration_s: f64,
    /// Round trips timed per histogram sample (the floor batches to hide timer cost).
    pub batch: u64,
    /// Measured cost of one `Instant::now()` pair, for reading the figures (not subtracted).
    pub timer_overhead_ns: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_idle_samples: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_idle_p50_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_idle_max_ns: Option<u64>,
    /// The floor of the after-idle figure: one wake-up of a thread parked on an eventfd
    /// after the same idle time, same cores, same number of samples.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_idle_floor_p50_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_idle_floor_max_ns: Option<u64>,
}

/// One throughput result line.
#[derive(Debug, Serialize)]
pub struct ThroughputResult {
    pub bench: &'static str,
    pub size: usize,
    pub msgs_per_s: f64,
    pub mb_per_s: f64,
    pub floor_msgs_per_s: f64,
    pub floor_mb_per_s: f64,
    /// The floor measured again after the daemon stopped (see `LatencyResult`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor_after_msgs_per_s: Option<f64>,
    pub ratio: f64,
    pub messages: u64,
    pub duration_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lagged_events: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lagged_missed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_before_kib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_after_kib: Option<u64>,
    /// What the floor is: "ring" (one bare SPSC hop) or "relay" (tutti's topology: two
    /// rings of tutti's sizes and a relay copy between them, tutti's batch limits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor_kind: Option<&'static str>,
    /// Offer-to-delivery p50 of the sampled messages at saturation, tutti's and the floor's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampled_p50_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor_sampled_p50_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rep: Option<usize>,
    /// `local-throughput --rate`: the offered rate, offer-to-delivery from each message's
    /// intended send time, and the messages skipped by `Lagged` (in the percentiles as 5 s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_latency: Option<Percentiles>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timed_out: Option<u64>,
    /// `local-throughput`: the daemon's idle strategy (`spin`, or `backoff`, whose clients
    /// fence after a commit unless the shard is in barrier mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daemon_idle: Option<&'static str>,
    /// `local-throughput`: the cache-line round trip (p50) between the two cores right
    /// before and right after the run, and the placement they say: "near", "far", or
    /// "mixed" (the host moved the vCPUs during the run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line_rtt_p50_ns: Option<[u64; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placement: Option<&'static str>,
}

/// The cluster benchmark's latency line: publish on daemon 1 to delivery on daemon 2, one
/// way, against the bare UDP one-way time (half the round trip) of the same run.
#[derive(Debug, Serialize)]
pub struct ClusterLatencyResult {
    pub bench: &'static str,
    pub size: usize,
    pub nodes: usize,
    pub loss: f64,
    /// One-way publish-to-delivery times (not halved round trips).
    #[serde(flatten)]
    pub one_way: Percentiles,
    /// Bare UDP one-way time: half the round trip of one datagram of `size` bytes between
    /// 127.0.0.2 and 127.0.0.3.
    pub floor_p50_ns: u64,
    pub floor_p99_ns: u64,
    pub floor_rtt_p50_ns: u64,
    /// How the floor's sockets wait: "busy" (nonblocking recv in a loop) or "blocking".
    pub floor_recv: &'static str,
    pub ratio_p50: f64,
    /// The wake-up floor: the same hops and sleeps as tutti's path with nothing else
    /// (shared memory + eventfd -> UDP -> futex), one way, and tutti's p50 over it: what is
    /// left once the machine's wake-ups are paid.
    pub chain_p50_ns: u64,
    pub chain_p99_ns: u64,
    pub ratio_p50_chain: f64,
    /// Wake-up chain messages that did not arrive within 1 s (in its percentiles as 1 s).
    pub chain_timed_out: u64,
    /// Messages not delivered within the latency timeout (the publisher moved on); each is
    /// in the percentiles as the timeout (3 s).
    pub timed_out: u64,
    /// Which repetition (1-based) of `--reps`.
    pub rep: usize,
    pub duration_s: f64,
    pub daemon_idle: String,
    pub client_idle: &'static str,
    pub io: String,
    pub timer_overhead_ns: u64,
}

/// The cluster benchmark's throughput line, with the per-daemon figures.
#[derive(Debug, Serialize)]
pub struct ClusterThroughputResult {
    pub bench: &'static str,
    pub size: usize,
    pub nodes: usize,
    pub loss: f64,
    /// Messages per second delivered at the subscriber (daemon 2).
    pub msgs_per_s: f64,
    pub mb_per_s: f64,
    /// Bare UDP floor in messages per second: `floor_datagrams_per_s` x
    /// `floor_msgs_per_datagram` (messages packed back to back, no per-message header).
    pub floor_msgs_per_s: f64,
    pub floor_datagrams_per_s: f64,
    /// Datagrams the floor's sender handed to the kernel per second (the rest of what it
    /// sent was dropped at the receiver's full socket buffer).
    pub floor_sent_datagrams_per_s: f64,
    pub floor_msgs_per_datagram: u64,
    pub floor_datagram_bytes: usize,
    pub floor_batch: usize,
    pub floor_recv: &'static str,
    pub ratio: f64,
    /// The floor at tutti's packing: floor datagrams/s x the messages per datagram tutti
    /// sent (`tutti_msgs_per_datagram`), and tutti's rate over it.
    pub floor_msgs_per_s_tutti_packing: f64,
    pub ratio_tutti_packing: f64,
    /// The bare-UDP floor with segmentation offload (`UDP_SEGMENT` sends of up to
    /// `udp_floor::OFFLOAD_SEGMENTS` datagrams, as tutti's io_uring transport sends with
    /// `net.gso`), in messages per second, and tutti's rate over it.
    pub floor_offload_msgs_per_s: f64,
    pub ratio_offload: f64,
    /// Delivered in the measured window.
    pub messages: u64,
    pub duration_s: f64,
    /// Taken by daemon 1 from the publisher in the measured window, and the rate.
    pub sent: u64,
    pub offered_msgs_per_s: f64,
    /// Sent in the window but not delivered by the end of the grace period.
    pub missing: u64,
    /// Delivered at the subscriber / sent, over the measured window (1.0: everything).
    pub delivered_fraction: f64,
    /// Messages the subscriber was told are `Lost` (the same as `lost_messages`).
    pub lost: u64,
    /// Seconds from the last offer until everything was delivered (or the grace ran out).
    pub drain_s: f64,
    pub lost_events: u64,
    pub lost_messages: u64,
    pub lagged_events: u64,
    pub lagged_missed: u64,
    /// Messages per UDP datagram daemon 1 sent in the window (frames_in / datagrams_out,
    /// every destination counted).
    pub tutti_msgs_per_datagram: f64,
    pub form_s: f64,
    pub daemon_idle: String,
    pub client_idle: &'static str,
    pub io: String,
    /// The publisher's pace in the throughput phase (0: unpaced).
    pub rate: f64,
    /// With `--rate`: publish-to-delivery from each message's intended send time (no
    /// coordinated omission), the `timed_out` (never delivered) messages included at the
    /// drain time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_latency: Option<Percentiles>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timed_out: Option<u64>,
    /// Each daemon's CPU seconds in the throughput phase per million messages delivered.
    pub cpu_s_per_million_msgs: Vec<f64>,
    pub rep: usize,
    /// Extra `[cluster]` settings given with --cluster-set.
    pub cluster_settings: Vec<String>,
    /// Each daemon's RSS once the cluster formed, and at the end, in KiB.
    pub rss_start_kib: Vec<u64>,
    pub rss_end_kib: Vec<u64>,
    /// CPU seconds each daemon used in the latency phase and in the throughput phase (first
    /// offer to end of drain), next to the phases' wall-clock seconds: how the daemons
    /// share this machine's cores.
    pub latency_cpu_s: Vec<f64>,
    pub latency_wall_s: f64,
    pub throughput_cpu_s: Vec<f64>,
    pub throughput_wall_s: f64,
    /// Each daemon's counters over the measured throughput window.
    pub window_counters: Vec<std::collections::BTreeMap<&'static str, u64>>,
    /// Each daemon's counters at the end of the run.
    pub end_counters: Vec<std::collections::BTreeMap<&'static str, u64>>,
}

pub fn print_cluster_latency_table(r: &ClusterLatencyResult) {
    let p = &r.one_way;
    println!(
        "{} ({} nodes, size {} B, loss {}, {} samples, {:.1} s, daemons {}, clients {}, io {})",
        r.bench, r.nodes, r.size, r.loss, p.samples, r.duration_s, r.daemon_idle, r.client_idle, r.io
    );
    println!(
        "  {:<22} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "", "min", "p50", "p90", "p99", "p99.9", "max"
    );
    println!(
        "  {:<22} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "publish -> delivery",
        ns(p.min_ns),
        ns(p.p50_ns),
        ns(p.p90_ns),
        ns(p.p99_ns),
        ns(p.p999_ns),
        ns(p.max_ns)
    );
    println!(
        "  floor: bare UDP one way (RTT/2, {} recv) p50 {} (p99 {}), ratio p50/floor {:.2}",
        r.floor_recv,
        ns(r.floor_p50_ns),
        ns(r.floor_p99_ns),
        r.ratio_p50
    );
    println!(
        "  floor: wake-up chain (shm + eventfd -> UDP -> futex) one way p50 {} (p99 {}), ratio p50/chain {:.2}",
        ns(r.chain_p50_ns),
        ns(r.chain_p99_ns),
        r.ratio_p50_chain
    );
    if r.timed_out > 0 {
        println!(
            "  {} messages not delivered within the timeout (counted in the percentiles as 3 s)",
            r.timed_out
        );
    }
}

pub fn print_cluster_throughput_table(r: &ClusterThroughputResult) {
    println!(
        "{} ({} nodes, size {} B, loss {}, {:.1} s, {} messages delivered)",
        r.bench, r.nodes, r.size, r.loss, r.duration_s, r.messages
    );
    println!(
        "  {:>14.0} msg/s {:>10.1} MB/s delivered (offered {:.0} msg/s; {:.1} msgs per datagram)",
        r.msgs_per_s, r.mb_per_s, r.offered_msgs_per_s, r.tutti_msgs_per_datagram
    );
    println!(
        "  floor: bare UDP {:.0} datagrams/s of {} B (sendmmsg/recvmmsg x{}, {} recv) = {:.0} msg/s at {} per datagram, ratio {:.3}",
        r.floor_datagrams_per_s,
        r.floor_datagram_bytes,
        r.floor_batch,
        r.floor_recv,
        r.floor_msgs_per_s,
        r.floor_msgs_per_datagram,
        r.ratio
    );
    println!(
        "  floor at tutti's packing ({:.1} per datagram): {:.0} msg/s, ratio {:.3}",
        r.tutti_msgs_per_datagram, r.floor_msgs_per_s_tutti_packing, r.ratio_tutti_packing
    );
    println!(
        "  floor with offload (UDP_SEGMENT x{} sends, UDP_GRO receives, as tutti's net.gso and net.gro): {:.0} msg/s, ratio {:.3}",
        crate::udp_floor::OFFLOAD_SEGMENTS,
        r.floor_offload_msgs_per_s,
        r.ratio_offload
    );
    if let (Some(p), Some(t)) = (&r.rate_latency, r.timed_out) {
        println!(
            "  at {:.0} msg/s offered, from intended send time: p50 {} p90 {} p99 {} p99.9 {} max {} ({} timed out)",
            r.rate,
            ns(p.p50_ns),
            ns(p.p90_ns),
            ns(p.p99_ns),
            ns(p.p999_ns),
            ns(p.max_ns),
            t
        );
    }
    println!(
        "  daemon CPU seconds per million messages: {:?}",
        r.cpu_s_per_million_msgs
    );
    println!(
        "  delivered fraction {:.6}; missing {} of {} sent (drained in {:.2} s); Lost events {} ({} messages); Lagged {} ({} missed)",
        r.delivered_fraction, r.missing, r.sent, r.drain_s, r.lost_events, r.lost_messages, r.lagged_events, r.lagged_missed
    );
    println!(
        "  daemon CPU seconds: latency phase {:?} of {:.1} s wall; throughput phase {:?} of {:.1} s wall",
        r.latency_cpu_s, r.latency_wall_s, r.throughput_cpu_s, r.throughput_wall_s
    );
    for (i, (a, b)) in r.rss_start_kib.iter().zip(&r.rss_end_kib).enumerate() {
        let c = |k: &str| {
            r.window_counters
                .get(i)
                .and_then(|m| m.get(k))
                .copied()
                .unwrap_or(0)
        };
        println!(
            "  daemon {}: RSS {a} -> {b} KiB; window: datagrams out {} in {}, retransmits {}, lost {}, not_sent {}, fault_dropped {}",
            i + 1,
            c("datagrams_out"),
            c("datagrams_in"),
            c("retransmits"),
            c("lost"),
            c("not_sent"),
            c("fault_dropped")
        );
    }
}

pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        (a / b * 1000.0).round() / 1000.0
    } else {
        f64::NAN
    }
}

/// Megabytes (10^6 bytes) of payload per second.
pub fn mb_per_s(msgs_per_s: f64, size: usize) -> f64 {
    (msgs_per_s * size as f64 / 1e6 * 10.0).round() / 10.0
}

pub fn print_json<T: Serialize>(result: &T) {
    let line = serde_json::to_string(result).expect("results serialize");
    let mut out = std::io::stdout().lock();
    // A closed stdout (e.g. `| head`) is not worth a panic.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

pub fn ns(v: u64) -> String {
    if v >= 10_000_000 {
        format!("{:.1} ms", v as f64 / 1e6)
    } else if v >= 10_000 {
        format!("{:.1} µs", v as f64 / 1e3)
    } else {
        format!("{v} ns")
    }
}

pub fn print_latency_table(r: &LatencyResult) {
    let p = &r.rtt;
    println!(
        "{} (size {} B, {} samples x {} round trips, {:.1} s{})",
        r.bench,
        r.size,
        p.samples / r.batch.max(1),
        r.batch,
        r.duration_s,
        r.idle.map(|i| format!(", daemon idle {i}")).unwrap_or_default()
    );
    println!(
        "  {:<12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "", "min", "p50", "p90", "p99", "p99.9", "max"
    );
    for (name, q) in [("round trip", *p), ("one way", p.halved())] {
        println!(
            "  {:<12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            name,
            ns(q.min_ns),
            ns(q.p50_ns),
            ns(q.p90_ns),
            ns(q.p99_ns),
            ns(q.p999_ns),
            ns(q.max_ns)
        );
    }
    println!(
        "  floor round trip p50 {} (p99 {}), ratio p50/floor {:.2}; timer pair {} (not subtracted)",
        ns(r.floor_p50_ns),
        ns(r.floor_p99_ns),
        r.ratio_p50,
        ns(r.timer_overhead_ns)
    );
    if let Some(after) = r.floor_after_p50_ns {
        println!("  floor round trip p50 after the run {}", ns(after));
    }
    if let (Some(n), Some(p50), Some(max)) = (r.after_idle_samples, r.after_idle_p50_ns, r.after_idle_max_ns)
    {
        println!("  after 1 s idle ({n} samples): p50 {}, max {}", ns(p50), ns(max));
        if let (Some(fp50), Some(fmax)) = (r.after_idle_floor_p50_ns, r.after_idle_floor_max_ns) {
            println!(
                "  floor: one eventfd wake-up of a parked thread after 1 s: p50 {}, max {}",
                ns(fp50),
                ns(fmax)
            );
        }
    }
}

pub fn print_throughput_table(r: &ThroughputResult) {
    let idle = r.daemon_idle.map(|i| format!(", daemon {i}")).unwrap_or_default();
    println!(
        "{} (size {} B, {:.1} s, {} messages{idle})",
        r.bench, r.size, r.duration_s, r.messages
    );
    println!("  {:>14.0} msg/s {:>10.1} MB/s", r.msgs_per_s, r.mb_per_s);
    println!(
        "  floor (bare SPSC ring) {:.0} msg/s {:.1} MB/s, ratio {:.3}",
        r.floor_msgs_per_s, r.floor_mb_per_s, r.ratio
    );
    if let Some(after) = r.floor_after_msgs_per_s {
        println!("  floor after the run {after:.0} msg/s");
    }
    if let (Some(events), Some(missed)) = (r.lagged_events, r.lagged_missed) {
        println!(
            "  lagged: {events} events, {missed} messages missed (final batch {})",
            r.batch.unwrap_or(0)
        );
    }
    if let (Some(p), Some([before, after])) = (r.placement, r.line_rtt_p50_ns) {
        println!("  placement: {p} (cache-line round trip {before} ns before the run, {after} ns after)");
    }
    if let (Some(before), Some(after)) = (r.rss_before_kib, r.rss_after_kib) {
        println!("  tuttid RSS: {before} KiB before, {after} KiB after");
    }
    if let (Some(rate), Some(p), Some(t)) = (r.rate, &r.rate_latency, r.timed_out) {
        println!(
            "  at {rate:.0} msg/s offered, from intended send time: p50 {} p99 {} p99.9 {} max {} ({t} timed out)",
            ns(p.p50_ns),
            ns(p.p99_ns),
            ns(p.p999_ns),
            ns(p.max_ns)
        );
    }
}

/// The interval log format version HdrHistogram's `HistogramLogWriter` writes.
const HLOG_FORMAT_VERSION: &str = "1.3";
/// `HistogramLogWriter`'s default: the `Interval_Max` column in milliseconds of ns values.
const HLOG_MAX_VALUE_UNIT_RATIO: f64 = 1_000_000.0;

/// Writes histograms (tag, histogram, interval start and length relative to `start`) as an
/// HdrHistogram interval log laid out as Java's `HistogramLogWriter` writes it (comments,
/// format version, `StartTime`, `BaseTime`, legend, then one `Tag=...` line per histogram
/// in the V2 compressed encoding, base64), so that HdrHistogram's own readers
/// (`HistogramLogReader`, `HistogramLogProcessor`, hdrh in Python) and plotters read it.
pub fn write_hlog(
    path: &Path,
    start: SystemTime,
    comment: &str,
    histograms: &[(&str, &Histogram<u64>, Duration, Duration)],
) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("writing histogram log {}: {e}", path.display());
    let text = hlog_text(start, comment, histograms).map_err(|e| fail(&e))?;
    let file = File::create(path).map_err(|e| fail(&e))?;
    let mut out = BufWriter::new(file);
    out.write_all(text.as_bytes()).map_err(|e| fail(&e))?;
    out.flush().map_err(|e| fail(&e))
}

fn hlog_text(
    start: SystemTime,
    comment: &str,
    histograms: &[(&str, &Histogram<u64>, Duration, Duration)],
) -> Result<String, String> {
    let since_epoch = start.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut text = String::new();
    for line in comment.lines().chain(["values in nanoseconds"]) {
        text.push_str(&format!("#[{line}]\n"));
    }
    text.push_str(&format!(
        "#[Histogram log format version {HLOG_FORMAT_VERSION}]\n"
    ));
    text.push_str(&format!(
        "#[StartTime: {:.3} (seconds since epoch), {}]\n",
        since_epoch.as_secs_f64(),
        java_date(since_epoch.as_secs())
    ));
    text.push_str(&format!(
        "#[BaseTime: {:.3} (seconds since epoch)]\n",
        since_epoch.as_secs_f64()
    ));
    text.push_str(
        "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n",
    );
    // The crate's writer makes the interval lines; its builder also notes a max value
    // divisor in a comment of its own, which Java's writer does not write: dropped.
    let mut lines = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    {
        let mut log = IntervalLogWriterBuilder::new()
            .with_max_value_divisor(HLOG_MAX_VALUE_UNIT_RATIO)
            .begin_log_with(&mut lines, &mut serializer)
            .map_err(|e| e.to_string())?;
        for (tag, h, offset, length) in histograms {
            let tag = Tag::new(tag).ok_or_else(|| format!("histogram tag {tag:?} has a space or comma"))?;
            log.write_histogram(h, *offset, *length, Some(tag))
                .map_err(|e| format!("{e:?}"))?;
        }
    }
    let lines = String::from_utf8(lines).map_err(|e| e.to_string())?;
    for line in lines.lines().filter(|l| !l.starts_with("#[MaxValueDivisor")) {
        text.push_str(line);
        text.push('\n');
    }
    Ok(text)
}

/// `secs` since the epoch as Java's `Date.toString()` writes it in UTC, as
/// `HistogramLogWriter` puts it in the `StartTime` line: `Tue Dec 01 21:05:42 UTC 2026`.
fn java_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let (h, m, s) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    // Days to a civil date (Howard Hinnant's algorithm), for dates after 1970.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{} {} {day:02} {h:02}:{m:02}:{s:02} UTC {year}",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

    #[test]
    fn hlog_round_trips_and_has_the_java_writer_layout() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            h.record(v * 10).unwrap();
        }
        let start = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_158_542_250);
        let text = hlog_text(
            start,
            "test",
            &[("rtt", &h, Duration::from_millis(1500), Duration::from_secs(1))],
        )
        .unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "#[test]");
        assert_eq!(lines[1], "#[values in nanoseconds]");
        assert_eq!(lines[2], "#[Histogram log format version 1.3]");
        assert_eq!(
            lines[3],
            "#[StartTime: 1796158542.250 (seconds since epoch), Tue Dec 01 20:55:42 UTC 2026]"
        );
        assert_eq!(lines[4], "#[BaseTime: 1796158542.250 (seconds since epoch)]");
        assert_eq!(
            lines[5],
            "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\""
        );
        assert_eq!(lines.len(), 7, "{text}");
        // Interval max in ms (Java's default unit ratio); the payload is compressed V2.
        assert!(
            lines[6].starts_with("Tag=rtt,1.500,1.000,0.010,HIST"),
            "{}",
            lines[6]
        );

        let mut intervals = Vec::new();
        for e in IntervalLogIterator::new(text.as_bytes()) {
            if let LogEntry::Interval(i) = e.unwrap() {
                intervals.push(i);
            }
        }
        assert_eq!(intervals.len(), 1);
        assert_eq!(intervals[0].tag().map(|t| t.as_str()), Some("rtt"));
        let payload = base64::engine::general_purpose::STANDARD
            .decode(intervals[0].encoded_histogram())
            .unwrap();
        // The V2 compressed cookie (0x1c849304 | 0x10), as HdrHistogram's log readers expect.
        assert_eq!(&payload[..4], &[0x1c, 0x84, 0x93, 0x14]);
        let back: Histogram<u64> = hdrhistogram::serialization::Deserializer::new()
            .deserialize(&mut payload.as_slice())
            .unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn java_date_matches_known_dates() {
        assert_eq!(java_date(0), "Thu Jan 01 00:00:00 UTC 1970");
        assert_eq!(java_date(951_782_400), "Tue Feb 29 00:00:00 UTC 2000");
        assert_eq!(java_date(1_796_158_542), "Tue Dec 01 20:55:42 UTC 2026");
    }
}
