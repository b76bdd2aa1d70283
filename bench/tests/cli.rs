//! Runs the real binary briefly and checks the machine-readable output: the keys that
//! scripts rely on are there and the figures are sane. The local benchmarks run only when a
//! `tuttid` sits next to the bench binary (`cargo build -p tutti-daemon -p tutti-bench`).

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// The benchmarks spin on the same two cores: one at a time.
static CORES: Mutex<()> = Mutex::new(());

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tutti-bench"))
}

fn two_cores() -> bool {
    std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
}

fn json_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    assert!(
        out.status.success(),
        "tutti-bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn has_keys(v: &serde_json::Value, keys: &[&str]) {
    for k in keys {
        assert!(v.get(k).is_some(), "missing {k} in {v}");
    }
}

const LATENCY_KEYS: &[&str] = &[
    "bench",
    "size",
    "p50_ns",
    "p99_ns",
    "p999_ns",
    "max_ns",
    "floor_p50_ns",
    "ratio_p50",
];
const THROUGHPUT_KEYS: &[&str] = &["bench", "size", "msgs_per_s", "floor_msgs_per_s", "ratio"];

#[test]
fn floor_prints_one_json_object_per_result() {
    if !two_cores() {
        eprintln!("skipped: needs two cores");
        return;
    }
    let _cores = CORES.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("floor");
    let hlog = dir.path("floor.hlog");
    let out = bench()
        .args(["floor", "--size", "100", "--duration", "0.2", "--json", "--hlog"])
        .arg(&hlog)
        .output()
        .unwrap();
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["bench"], "floor-latency");
    has_keys(&lines[0], LATENCY_KEYS);
    assert!(lines[0]["p50_ns"].as_u64().unwrap() > 0);
    assert_eq!(lines[1]["bench"], "floor-throughput");
    has_keys(&lines[1], THROUGHPUT_KEYS);
    assert_eq!(lines[1]["size"], 100);
    assert!(lines[1]["msgs_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(lines[2]["bench"], "floor-relay-throughput");
    assert_eq!(lines[2]["floor_kind"], "relay");
    assert!(lines[2]["msgs_per_s"].as_f64().unwrap() > 0.0);

    // HdrHistogram's own reader takes the log, and finds what the JSON says.
    if let Some(read) = read_hlog_with_hdrh(&hlog) {
        let rtt = &read["floor-rtt"];
        assert_eq!(rtt.count, lines[0]["samples"].as_u64().unwrap());
        assert_close(rtt.p50, lines[0]["p50_ns"].as_u64().unwrap());
        assert_close(rtt.p99, lines[0]["p99_ns"].as_u64().unwrap());
        assert!(read["relay-floor-offer-to-delivery"].count > 0);
    }

    // And the plot of it, in both formats.
    let png = dir.path("floor.png");
    let svg = dir.path("floor.svg");
    for out_file in [&png, &svg] {
        let out = bench()
            .args(["plot", "--title", "floor", "--out"])
            .arg(out_file)
            .arg(&hlog)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "plot failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let png = std::fs::read(&png).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let (w, h) = (
        u32::from_be_bytes(png[16..20].try_into().unwrap()),
        u32::from_be_bytes(png[20..24].try_into().unwrap()),
    );
    assert_eq!((w, h), (1024, 640));
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("floor-rtt") && svg.contains("99.9%"),
        "{svg}"
    );
}

#[test]
fn plot_refuses_what_it_cannot_draw() {
    let dir = TempDir::new("plot");
    let not_a_log = dir.path("x.hlog");
    std::fs::write(&not_a_log, "#[nothing here]\n").unwrap();
    let out = bench()
        .args(["plot", "--out"])
        .arg(dir.path("x.png"))
        .arg(&not_a_log)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no histogram intervals"));
    let out = bench()
        .args(["plot", "--out"])
        .arg(dir.path("x.gif"))
        .arg(&not_a_log)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// A directory of its own under the system's temporary one, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("tutti-bench-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct HdrhFigures {
    count: u64,
    p50: u64,
    p99: u64,
}

/// Reads an interval log with HdrHistogram's Python library (PyPI `hdrhistogram`, module
/// `hdrh`; scripts/test.sh installs it): count, p50 and p99 of each tag, intervals of one
/// tag added up. Without the module the test fails under CI and is skipped elsewhere.
fn read_hlog_with_hdrh(path: &std::path::Path) -> Option<std::collections::HashMap<String, HdrhFigures>> {
    const SCRIPT: &str = r#"
import sys
from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader
reader = HistogramLogReader(sys.argv[1], HdrHistogram(1, 60_000_000_000, 3))
merged = {}
while True:
    h = reader.get_next_interval_histogram()
    if h is None:
        break
    tag = h.get_tag() or ""
    if tag in merged:
        merged[tag].add(h)
    else:
        merged[tag] = h
for tag, h in merged.items():
    print(tag, h.get_total_count(), h.get_value_at_percentile(50), h.get_value_at_percentile(99))
"#;
    let out = Command::new("python3").arg("-c").arg(SCRIPT).arg(path).output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        other => {
            let why = match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            assert!(
                std::env::var_os("CI").is_none() && why.contains("No module named 'hdrh'"),
                "HdrHistogram's Python reader failed on {}: {why}",
                path.display()
            );
            eprintln!("skipped the HdrHistogram reader check: pip install hdrhistogram");
            return None;
        }
    };
    let figures = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 4, "{l}");
            let n = |i: usize| f[i].parse::<u64>().unwrap();
            (
                f[0].to_string(),
                HdrhFigures {
                    count: n(1),
                    p50: n(2),
                    p99: n(3),
                },
            )
        })
        .collect();
    Some(figures)
}

/// Two readings of one histogram's percentile: the same within its 3 significant digits.
fn assert_close(a: u64, b: u64) {
    let (lo, hi) = (a.min(b) as f64, a.max(b) as f64);
    assert!(hi - lo <= hi * 0.002 + 1.0, "{a} vs {b}");
}

fn tuttid() -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_tutti-bench"))
        .parent()?
        .join("tuttid");
    path.is_file().then_some(path)
}

/// `tuttid()`, or `None` once it said the test is skipped.
fn tuttid_or_say_skipped() -> Option<PathBuf> {
    let found = tuttid();
    if found.is_none() {
        eprintln!(
            "skipped: tuttid is not built next to tutti-bench (cargo build -p tutti-daemon -p tutti-bench)"
        );
    }
    found
}

/// Runs `tutti-bench cluster ARGS --json --tuttid TUTTID`: its JSON lines.
fn cluster_json(args: &[&str], tuttid: &std::path::Path) -> Vec<serde_json::Value> {
    let out = bench()
        .arg("cluster")
        .args(args)
        .args(["--json", "--tuttid"])
        .arg(tuttid)
        .output()
        .unwrap();
    json_lines(&out)
}

/// Runs a local benchmark, `tutti-bench ARGS`, briefly, against `tuttid`.
fn local(args: &[&str], tuttid: &std::path::Path) -> std::process::Output {
    let brief = [
        "--duration",
        "0.3",
        "--warmup",
        "0.1",
        "--floor-duration",
        "0.2",
        "--json",
        "--tuttid",
    ];
    bench().args(args).args(brief).arg(tuttid).output().unwrap()
}

#[test]
fn local_benchmarks_run_against_a_real_daemon() {
    let Some(tuttid) = tuttid().filter(|_| two_cores()) else {
        eprintln!("skipped: needs two cores and tuttid next to tutti-bench");
        return;
    };
    let _cores = CORES.lock().unwrap_or_else(|e| e.into_inner());
    let lines = json_lines(&local(&["local-latency"], &tuttid));
    assert_eq!(lines.len(), 1);
    has_keys(&lines[0], LATENCY_KEYS);
    assert!(lines[0]["p50_ns"].as_u64().unwrap() > 0);

    let dir = TempDir::new("local");
    let hlog = dir.path("tp.hlog");
    let hlog_arg = hlog.to_str().unwrap();
    let lines = json_lines(&local(
        &["local-throughput", "--reps", "2", "--hlog", hlog_arg],
        &tuttid,
    ));
    // Floor and tutti alternate twice, then the medians.
    assert_eq!(lines.len(), 3, "{lines:?}");
    for (i, line) in lines[..2].iter().enumerate() {
        has_keys(line, THROUGHPUT_KEYS);
        has_keys(line, &["rss_before_kib", "rss_after_kib", "lagged_events"]);
        assert_eq!(line["rep"], i + 1);
        assert_eq!(line["floor_kind"], "relay");
        assert!(line["msgs_per_s"].as_f64().unwrap() > 0.0);
        assert!(line["floor_msgs_per_s"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(lines[2]["bench"], "local-throughput-summary");
    let reps: Vec<f64> = lines[..2]
        .iter()
        .map(|l| l["msgs_per_s"].as_f64().unwrap())
        .collect();
    let median = lines[2]["msgs_per_s"].as_f64().unwrap();
    assert_eq!(median, reps[0].min(reps[1]), "the lower middle of two");
    if let Some(read) = read_hlog_with_hdrh(&hlog) {
        for tag in [
            "tutti-offer-to-delivery-rep1",
            "relay-floor-offer-to-delivery-rep2",
        ] {
            assert!(read[tag].count > 0, "{tag}");
        }
    }

    // Paced: every message timed from its intended send time.
    let lines = json_lines(&local(&["local-throughput", "--rate", "20000"], &tuttid));
    assert_eq!(lines.len(), 1);
    has_keys(&lines[0], &["rate_latency", "timed_out", "rate"]);
    let paced = &lines[0]["rate_latency"];
    assert_eq!(
        paced["samples"].as_u64().unwrap(),
        lines[0]["messages"].as_u64().unwrap() + lines[0]["timed_out"].as_u64().unwrap()
    );
    assert!(
        lines[0]["msgs_per_s"].as_f64().unwrap() < 40_000.0,
        "paced: {}",
        lines[0]
    );
    let out = local(&["local-throughput", "--rate", "100", "--size", "8"], &tuttid);
    assert!(!out.status.success(), "--rate needs room for a stamp");
}

#[test]
fn cluster_benchmark_runs_three_daemons() {
    let Some(tuttid) = tuttid_or_say_skipped() else {
        return;
    };
    let _cores = CORES.lock().unwrap_or_else(|e| e.into_inner());
    // A port of its own, away from the default, so that a cluster benchmark running by hand
    // on 127.0.0.x does not cross this one.
    let dir = TempDir::new("cluster");
    let hlog = dir.path("cluster.hlog");
    let lines = cluster_json(
        &[
            "--hlog",
            hlog.to_str().unwrap(),
            "--nodes",
            "3",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--floor-duration",
            "0.2",
            "--base-port",
            "27940",
            // Below what one sender may sustain today (see bench/README.md): delivery
            // is checked here, the unpaced rate by running the benchmark.
            "--rate",
            "2000",
        ],
        &tuttid,
    );
    assert_eq!(lines.len(), 2, "{lines:?}");
    let (lat, tp) = (&lines[0], &lines[1]);
    assert_eq!(lat["bench"], "cluster-latency");
    has_keys(lat, LATENCY_KEYS);
    has_keys(lat, &["nodes", "loss"]);
    assert_eq!(lat["nodes"], 3);
    assert!(
        lat["samples"].as_u64().unwrap() > 0,
        "latency messages delivered: {lat}"
    );
    assert!(lat["p50_ns"].as_u64().unwrap() > 0);
    assert!(lat["floor_p50_ns"].as_u64().unwrap() > 0);
    assert_eq!(tp["bench"], "cluster-throughput");
    has_keys(tp, THROUGHPUT_KEYS);
    has_keys(
        tp,
        &["nodes", "loss", "rss_start_kib", "rss_end_kib", "missing", "sent"],
    );
    assert_eq!(tp["rss_end_kib"].as_array().unwrap().len(), 3);
    assert!(tp["floor_msgs_per_s"].as_f64().unwrap() > 0.0);
    assert!(
        tp["sent"].as_u64().unwrap() > 0,
        "the publisher got messages out: {tp}"
    );
    // Honest samples: timed-out messages are counted (and are in the percentiles).
    has_keys(lat, &["timed_out", "chain_p50_ns", "ratio_p50_chain"]);
    assert!(lat["chain_p50_ns"].as_u64().unwrap() > 0);
    // The chain's relays run as processes of their own: a relay that never ran would time
    // every message out (1 s each).
    assert!(
        lat["chain_p50_ns"].as_u64().unwrap() < 500_000_000,
        "the chain's relay processes passed messages on: {lat}"
    );
    // Paced: latency from the intended send time, never-delivered ones included.
    has_keys(
        tp,
        &[
            "rate_latency",
            "timed_out",
            "cpu_s_per_million_msgs",
            "ratio_tutti_packing",
        ],
    );
    assert_eq!(tp["timed_out"], tp["missing"]);
    assert_eq!(tp["cpu_s_per_million_msgs"].as_array().unwrap().len(), 3);
    let paced = &tp["rate_latency"];
    assert!(paced["samples"].as_u64().unwrap() >= tp["messages"].as_u64().unwrap());
    if let Some(read) = read_hlog_with_hdrh(&hlog) {
        let one_way = &read["tutti-one-way"];
        assert_eq!(one_way.count, lat["samples"].as_u64().unwrap());
        assert_close(one_way.p50, lat["p50_ns"].as_u64().unwrap());
        assert_eq!(read["tutti-rate-2000"].count, paced["samples"].as_u64().unwrap());
        assert!(read["wakeup-chain-one-way"].count > 0 && read["udp-busy-one-way"].count > 0);
    }
}

#[test]
fn cluster_rates_give_one_line_per_rate() {
    let Some(tuttid) = tuttid_or_say_skipped() else {
        return;
    };
    let _cores = CORES.lock().unwrap_or_else(|e| e.into_inner());
    let lines = cluster_json(
        &[
            "--nodes",
            "2",
            "--duration",
            "0.5",
            "--warmup",
            "0.1",
            "--floor-duration",
            "0.2",
            "--settle",
            "0.5",
            "--base-port",
            "27980",
            "--rates",
            "1000,3000",
        ],
        &tuttid,
    );
    assert_eq!(lines.len(), 2, "{lines:?}");
    for (line, rate) in lines.iter().zip([1000.0, 3000.0]) {
        assert_eq!(line["bench"], "cluster-rate");
        assert_eq!(line["rate"].as_f64().unwrap(), rate);
        has_keys(
            line,
            &[
                "p50_ns",
                "p99_ns",
                "timed_out",
                "cpu_s_per_million_msgs",
                "chain_p50_ns",
                "offered_msgs_per_s",
            ],
        );
        assert!(line["samples"].as_u64().unwrap() > 0, "{line}");
        assert_eq!(line["cpu_s_per_million_msgs"].as_array().unwrap().len(), 2);
    }
}
