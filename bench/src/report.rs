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

fn ns(v: u64) -> String {
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
