//! Results and how they are printed: one JSON object per line (`--json`), a readable table
//! otherwise, and the full histograms as an HdrHistogram interval log (`--hlog`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2Serializer;
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
    /// Messages not delivered within the latency timeout (the publisher moved on).
    pub timeouts: u64,
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
    if r.timeouts > 0 {
        println!("  {} messages not delivered within the timeout", r.timeouts);
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
    println!(
        "{} (size {} B, {:.1} s, {} messages)",
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
    if let (Some(before), Some(after)) = (r.rss_before_kib, r.rss_after_kib) {
        println!("  tuttid RSS: {before} KiB before, {after} KiB after");
    }
}

/// Write histograms (tag, histogram, interval start and length relative to `start`) as an
/// HdrHistogram interval log with V2 encoding, readable by HistogramLogProcessor / HdrHistogram
/// plotters.
pub fn write_hlog(
    path: &Path,
    start: SystemTime,
    comment: &str,
    histograms: &[(&str, &Histogram<u64>, Duration, Duration)],
) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("writing histogram log {}: {e}", path.display());
    let file = File::create(path).map_err(|e| fail(&e))?;
    let mut out = BufWriter::new(file);
    let mut serializer = V2Serializer::new();
    {
        let mut log = IntervalLogWriterBuilder::new()
            .add_comment(comment)
            .add_comment("values in nanoseconds")
            .with_start_time(start)
            .with_base_time(start)
            .begin_log_with(&mut out, &mut serializer)
            .map_err(|e| fail(&e))?;
        for (tag, h, offset, length) in histograms {
            log.write_histogram(h, *offset, *length, Tag::new(tag))
                .map_err(|e| fail(&format_args!("{e:?}")))?;
        }
    }
    out.flush().map_err(|e| fail(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

    #[test]
    fn hlog_round_trips() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            h.record(v * 10).unwrap();
        }
        let dir = std::env::temp_dir().join(format!("tutti-bench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.hlog");
        write_hlog(
            &path,
            SystemTime::now(),
            "test",
            &[("rtt", &h, Duration::ZERO, Duration::from_secs(1))],
        )
        .unwrap();
        let text = std::fs::read(&path).unwrap();
        let intervals: Vec<_> = IntervalLogIterator::new(&text)
            .filter_map(|e| match e.unwrap() {
                LogEntry::Interval(i) => Some(i.tag().map(|t| t.as_str().to_owned())),
                _ => None,
            })
            .collect();
        assert_eq!(intervals, vec![Some("rtt".to_owned())]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
