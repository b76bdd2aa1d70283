//! tutti-bench: tutti's latency and throughput, each measured next to the hardware floor
//! (a bare cache-line ping-pong, a bare SPSC ring) in the same run, with the ratio.
//!
//! ```text
//! tutti-bench floor [--size 64] [--duration 5] [--json] [--hlog FILE]
//! tutti-bench local-latency --size 64 --duration 5 [--after-idle] [--json] [--hlog FILE]
//! tutti-bench local-throughput --size 64 --duration 5 [--json]
//! ```

mod clock;
mod daemon;
mod floor;
mod interrupt;
mod local;
mod pin;
mod report;
mod spsc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use clap::{Args, Parser, Subcommand};

use crate::report::{
    mb_per_s, print_json, print_latency_table, print_throughput_table, ratio, write_hlog, LatencyResult,
    Percentiles, ThroughputResult,
};

/// Smallest message: the first 8 bytes carry a sequence number.
const MIN_SIZE: usize = 8;

#[derive(Parser)]
#[command(
    name = "tutti-bench",
    version,
    about = "tutti's benchmarks: latency and throughput next to the hardware floor measured in the same run",
    long_about = "tutti's benchmarks: latency and throughput next to the hardware floor measured \
                  in the same run.\n\nEvery benchmark pins its two sides to two cores \
                  (--client-core, --daemon-core), spins while it measures, and reports the ratio \
                  to the floor. Latencies are round trips: client -> daemon -> client for tutti, \
                  thread A -> B -> A for the floor (both two cache-line transfers)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The hardware floor: cache-line ping-pong round trip and bare SPSC ring throughput.
    Floor(FloorArgs),
    /// Publish-to-own-delivery round trip through a tuttid started for the run.
    LocalLatency(LocalLatencyArgs),
    /// Messages per second delivered end to end through a tuttid started for the run.
    LocalThroughput(LocalThroughputArgs),
}

#[derive(Args, Clone)]
struct CommonArgs {
    /// Message size in bytes (at least 8: the first 8 carry a sequence number). The floor
    /// ping-pong always moves one cache line; the size applies to the rings.
    #[arg(long, default_value_t = 64, value_parser = parse_size)]
    size: usize,
    /// Measured seconds (warm-up comes on top).
    #[arg(long, default_value_t = 5.0, value_parser = parse_seconds)]
    duration: f64,
    /// Print one JSON object per result, one per line.
    #[arg(long)]
    json: bool,
    /// Core of the client thread (and of the floor's first thread).
    #[arg(long, default_value_t = 0)]
    client_core: usize,
    /// Core of the daemon's shard (and of the floor's second thread).
    #[arg(long, default_value_t = 1)]
    daemon_core: usize,
}

#[derive(Args)]
struct FloorArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Round trips timed per latency sample (1 = one sample per round trip, as tutti is timed).
    #[arg(long, default_value_t = floor::DEFAULT_BATCH)]
    batch: u64,
    /// Write the round-trip histogram as an HdrHistogram interval log.
    #[arg(long, value_name = "FILE")]
    hlog: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct DaemonArgs {
    /// The daemon binary [default: tuttid next to this executable].
    #[arg(long, value_name = "PATH")]
    tuttid: Option<PathBuf>,
    /// Seconds of the floor measurement run before the daemon starts.
    #[arg(long, default_value_t = 2.0, value_parser = parse_seconds)]
    floor_duration: f64,
    /// Skip measuring the floor again after the daemon stopped (a check that conditions
    /// did not change during the run).
    #[arg(long)]
    no_floor_after: bool,
    /// Warm-up seconds before measuring (latency: also ends after 100,000 messages).
    #[arg(long, default_value_t = 1.0, value_parser = parse_seconds_or_zero)]
    warmup: f64,
}

#[derive(Args)]
struct LocalLatencyArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    daemon: DaemonArgs,
    /// Run the daemon with `--idle backoff` and add samples of one message after 1 s idle.
    #[arg(long)]
    after_idle: bool,
    /// Number of after-idle samples (at least 5).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(5..))]
    idle_samples: u64,
    /// Write the histograms as an HdrHistogram interval log.
    #[arg(long, value_name = "FILE")]
    hlog: Option<PathBuf>,
}

#[derive(Args)]
struct LocalThroughputArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    daemon: DaemonArgs,
    /// Messages offered per round before polling (halved whenever the client lags).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,
    /// Most messages taken per poll.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    fragment_limit: u64,
}

fn parse_size(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("{e}"))?;
    if n < MIN_SIZE {
        return Err(format!("at least {MIN_SIZE} bytes (a sequence number)"));
    }
    Ok(n)
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    let v = parse_seconds_or_zero(s)?;
    if v == 0.0 {
        return Err("must be more than 0".into());
    }
    Ok(v)
}

fn parse_seconds_or_zero(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !(0.0..=3600.0).contains(&v) {
        return Err("seconds between 0 and 3600".into());
    }
    Ok(v)
}

fn secs(v: f64) -> Duration {
    Duration::from_secs_f64(v)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    interrupt::install();
    let result = match cli.command {
        Command::Floor(args) => run_floor(args),
        Command::LocalLatency(args) => run_local_latency(args),
        Command::LocalThroughput(args) => run_local_throughput(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tutti-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Ping-pong floor plus the clock cost, measured on the run's two cores.
struct FloorLatency {
    rtt: hdrhistogram::Histogram<u64>,
    pct: Percentiles,
    measure_start: Instant,
    measured: Duration,
    batch: u64,
    timer_overhead_ns: u64,
}

fn measure_floor_latency(common: &CommonArgs, duration: f64, batch: u64) -> Result<FloorLatency, String> {
    pin::check_pair(common.client_core, common.daemon_core)?;
    let timer_overhead_ns = clock::overhead_ns();
    let pp = floor::ping_pong(common.client_core, common.daemon_core, secs(duration), batch)?;
    Ok(FloorLatency {
        pct: Percentiles::of(&pp.rtt),
        rtt: pp.rtt,
        measure_start: pp.measure_start,
        measured: pp.measured,
        batch: pp.batch,
        timer_overhead_ns,
    })
}

fn run_floor(args: FloorArgs) -> Result<(), String> {
    let c = &args.common;
    let (started, t0) = (SystemTime::now(), Instant::now());
    let lat = measure_floor_latency(c, c.duration, args.batch)?;
    let latency = LatencyResult {
        bench: "floor-latency",
        size: c.size,
        rtt: lat.pct,
        one_way_p50_ns: lat.pct.p50_ns / 2,
        one_way_p99_ns: lat.pct.p99_ns / 2,
        floor_p50_ns: lat.pct.p50_ns,
        floor_p99_ns: lat.pct.p99_ns,
        floor_after_p50_ns: None,
        ratio_p50: 1.0,
        duration_s: lat.measured.as_secs_f64(),
        batch: lat.batch,
        timer_overhead_ns: lat.timer_overhead_ns,
        idle: None,
        after_idle_samples: None,
        after_idle_p50_ns: None,
        after_idle_max_ns: None,
    };
    emit_latency(c.json, &latency);
    if let Some(path) = &args.hlog {
        write_hlog(
            path,
            started,
            "tutti-bench floor: cache-line ping-pong round trips",
            &[("floor-rtt", &lat.rtt, lat.measure_start - t0, lat.measured)],
        )?;
    }
    let ring = floor::ring_throughput(c.client_core, c.daemon_core, c.size, secs(c.duration))?;
    let throughput = ThroughputResult {
        bench: "floor-throughput",
        size: c.size,
        msgs_per_s: ring.msgs_per_s.round(),
        mb_per_s: mb_per_s(ring.msgs_per_s, c.size),
        floor_msgs_per_s: ring.msgs_per_s.round(),
        floor_mb_per_s: mb_per_s(ring.msgs_per_s, c.size),
        floor_after_msgs_per_s: None,
        ratio: 1.0,
        messages: ring.messages,
        duration_s: ring.measured.as_secs_f64(),
        lagged_events: None,
        lagged_missed: None,
        batch: None,
        rss_before_kib: None,
        rss_after_kib: None,
    };
    emit_throughput(c.json, &throughput);
    Ok(())
}

fn emit_latency(json: bool, r: &LatencyResult) {
    if json {
        print_json(r);
    } else {
        print_latency_table(r);
    }
}

fn emit_throughput(json: bool, r: &ThroughputResult) {
    if json {
        print_json(r);
    } else {
        print_throughput_table(r);
    }
}

fn daemon_binary(d: &DaemonArgs) -> PathBuf {
    d.tuttid.clone().unwrap_or_else(daemon::default_tuttid)
}

fn run_local_latency(args: LocalLatencyArgs) -> Result<(), String> {
    let c = &args.common;
    let (started, t0) = (SystemTime::now(), Instant::now());
    // Floor first, before the daemon's shard starts spinning on one of the two cores.
    let floor = measure_floor_latency(c, args.daemon.floor_duration, floor::DEFAULT_BATCH)?;
    let idle = if args.after_idle { "backoff" } else { "spin" };
    let tuttid = daemon_binary(&args.daemon);
    let mut daemon = daemon::Daemon::start(&daemon::DaemonOptions {
        tuttid: &tuttid,
        idle,
        core: c.daemon_core,
    })?;
    let opts = local::LatencyOptions {
        socket: daemon.socket().to_path_buf(),
        core: c.client_core,
        size: c.size,
        warmup: secs(args.daemon.warmup),
        duration: secs(c.duration),
        idle_samples: if args.after_idle { args.idle_samples } else { 0 },
    };
    let run = local::latency(&opts).map_err(|e| with_daemon_state(e, &mut daemon))?;
    daemon.check_alive()?;
    drop(daemon);
    let floor_after = if args.daemon.no_floor_after {
        None
    } else {
        Some(measure_floor_latency(
            c,
            args.daemon.floor_duration,
            floor::DEFAULT_BATCH,
        )?)
    };

    let pct = Percentiles::of(&run.rtt);
    let idle_pct = run.after_idle.as_ref().map(Percentiles::of);
    let result = LatencyResult {
        bench: "local-latency",
        size: c.size,
        rtt: pct,
        one_way_p50_ns: pct.p50_ns / 2,
        one_way_p99_ns: pct.p99_ns / 2,
        floor_p50_ns: floor.pct.p50_ns,
        floor_p99_ns: floor.pct.p99_ns,
        floor_after_p50_ns: floor_after.as_ref().map(|f| f.pct.p50_ns),
        ratio_p50: ratio(pct.p50_ns as f64, floor.pct.p50_ns as f64),
        duration_s: run.measured.as_secs_f64(),
        batch: 1,
        timer_overhead_ns: floor.timer_overhead_ns,
        idle: Some(idle),
        after_idle_samples: idle_pct.map(|p| p.samples),
        after_idle_p50_ns: idle_pct.map(|p| p.p50_ns),
        after_idle_max_ns: idle_pct.map(|p| p.max_ns),
    };
    emit_latency(c.json, &result);
    warn_if_floor_drifted(
        floor.pct.p50_ns as f64,
        result.floor_after_p50_ns.map(|v| v as f64),
    );
    if let Some(path) = &args.hlog {
        let mut logs = vec![
            ("floor-rtt", &floor.rtt, floor.measure_start - t0, floor.measured),
            ("local-latency", &run.rtt, run.measure_start - t0, run.measured),
        ];
        if let Some(f) = &floor_after {
            logs.push(("floor-rtt-after", &f.rtt, f.measure_start - t0, f.measured));
        }
        if let Some(h) = &run.after_idle {
            logs.push(("after-idle", h, run.idle_start - t0, run.idle_measured));
        }
        write_hlog(
            path,
            started,
            &format!(
                "tutti-bench local-latency size {} daemon idle {idle}: round trips (floor-rtt: \
                 cache-line ping-pong, batch {})",
                c.size, floor.batch
            ),
            &logs,
        )?;
    }
    Ok(())
}

fn run_local_throughput(args: LocalThroughputArgs) -> Result<(), String> {
    let c = &args.common;
    pin::check_pair(c.client_core, c.daemon_core)?;
    // Floor first, before the daemon's shard starts spinning on one of the two cores.
    let floor = floor::ring_throughput(
        c.client_core,
        c.daemon_core,
        c.size,
        secs(args.daemon.floor_duration),
    )?;
    let tuttid = daemon_binary(&args.daemon);
    let mut daemon = daemon::Daemon::start(&daemon::DaemonOptions {
        tuttid: &tuttid,
        idle: "spin",
        core: c.daemon_core,
    })?;
    let opts = local::ThroughputOptions {
        socket: daemon.socket().to_path_buf(),
        daemon_pid: daemon.pid(),
        core: c.client_core,
        size: c.size,
        warmup: secs(args.daemon.warmup),
        duration: secs(c.duration),
        batch: args.batch as usize,
        fragment_limit: args.fragment_limit as usize,
    };
    let run = local::throughput(&opts).map_err(|e| with_daemon_state(e, &mut daemon))?;
    let rss_after = daemon.rss_kib()?;
    daemon.check_alive()?;
    drop(daemon);
    let floor_after = if args.daemon.no_floor_after {
        None
    } else {
        Some(floor::ring_throughput(
            c.client_core,
            c.daemon_core,
            c.size,
            secs(args.daemon.floor_duration),
        )?)
    };

    let result = ThroughputResult {
        bench: "local-throughput",
        size: c.size,
        msgs_per_s: run.msgs_per_s.round(),
        mb_per_s: mb_per_s(run.msgs_per_s, c.size),
        floor_msgs_per_s: floor.msgs_per_s.round(),
        floor_mb_per_s: mb_per_s(floor.msgs_per_s, c.size),
        floor_after_msgs_per_s: floor_after.as_ref().map(|f| f.msgs_per_s.round()),
        ratio: ratio(run.msgs_per_s, floor.msgs_per_s),
        messages: run.messages,
        duration_s: run.measured.as_secs_f64(),
        lagged_events: Some(run.lagged_events),
        lagged_missed: Some(run.lagged_missed),
        batch: Some(run.final_batch),
        rss_before_kib: Some(run.rss_before_kib),
        rss_after_kib: Some(rss_after),
    };
    emit_throughput(c.json, &result);
    warn_if_floor_drifted(floor.msgs_per_s, result.floor_after_msgs_per_s);
    Ok(())
}

/// Floors before and after the run that differ by more than this factor mean conditions
/// changed under the run (noisy neighbours, the host moving our vCPUs), so the ratio is
/// not to be trusted.
const FLOOR_DRIFT_WARN: f64 = 1.25;

fn warn_if_floor_drifted(before: f64, after: Option<f64>) {
    if let Some(after) = after {
        let drift = before.max(after) / before.min(after).max(f64::MIN_POSITIVE);
        if drift > FLOOR_DRIFT_WARN {
            eprintln!(
                "tutti-bench: warning: the floor moved from {before:.0} to {after:.0} during the \
                 run; the ratio is not reliable (busy machine or vCPUs moved), run again"
            );
        }
    }
}

/// A client-side failure often means the daemon died: say so, with its log.
fn with_daemon_state(e: String, daemon: &mut daemon::Daemon) -> String {
    match daemon.check_alive() {
        Ok(()) => e,
        Err(dead) => format!("{e}\n{dead}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn cli_parses_the_documented_forms() {
        let cli = Cli::try_parse_from([
            "tutti-bench",
            "local-latency",
            "--size",
            "128",
            "--duration",
            "3",
            "--after-idle",
            "--json",
            "--hlog",
            "/tmp/x.hlog",
        ])
        .unwrap();
        match cli.command {
            Command::LocalLatency(a) => {
                assert_eq!(a.common.size, 128);
                assert_eq!(a.common.duration, 3.0);
                assert!(a.after_idle && a.common.json);
                assert_eq!(a.idle_samples, 5);
            }
            _ => panic!("wrong subcommand"),
        }
        assert!(Cli::try_parse_from(["tutti-bench", "floor", "--size", "4"]).is_err());
        assert!(Cli::try_parse_from(["tutti-bench", "floor", "--duration", "0"]).is_err());
        assert!(Cli::try_parse_from(["tutti-bench", "local-latency", "--idle-samples", "4"]).is_err());
    }
}
