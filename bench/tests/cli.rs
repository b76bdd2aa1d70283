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
    let out = bench()
        .args(["floor", "--size", "100", "--duration", "0.2", "--json"])
        .output()
        .unwrap();
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["bench"], "floor-latency");
    has_keys(&lines[0], LATENCY_KEYS);
    assert!(lines[0]["p50_ns"].as_u64().unwrap() > 0);
    assert_eq!(lines[1]["bench"], "floor-throughput");
    has_keys(&lines[1], THROUGHPUT_KEYS);
    assert_eq!(lines[1]["size"], 100);
    assert!(lines[1]["msgs_per_s"].as_f64().unwrap() > 0.0);
}

fn tuttid() -> Option<PathBuf> {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_tutti-bench"))
        .parent()?
        .join("tuttid");
    path.is_file().then_some(path)
}

#[test]
fn local_benchmarks_run_against_a_real_daemon() {
    let Some(tuttid) = tuttid().filter(|_| two_cores()) else {
        eprintln!("skipped: needs two cores and tuttid next to tutti-bench");
        return;
    };
    let _cores = CORES.lock().unwrap_or_else(|e| e.into_inner());
    let common = [
        "--duration",
        "0.3",
        "--warmup",
        "0.1",
        "--floor-duration",
        "0.2",
        "--json",
        "--tuttid",
    ];
    let out = bench()
        .arg("local-latency")
        .args(common)
        .arg(&tuttid)
        .output()
        .unwrap();
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1);
    has_keys(&lines[0], LATENCY_KEYS);
    assert!(lines[0]["p50_ns"].as_u64().unwrap() > 0);

    let out = bench()
        .arg("local-throughput")
        .args(common)
        .arg(&tuttid)
        .output()
        .unwrap();
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1);
    has_keys(&lines[0], THROUGHPUT_KEYS);
    has_keys(&lines[0], &["rss_before_kib", "rss_after_kib", "lagged_events"]);
    assert!(lines[0]["msgs_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn cluster_benchmark_runs_three_daemons() {
    let Some(tuttid) = tuttid() else {
        eprintln!(
            "skipped: tuttid is not built next to tutti-bench (cargo build -p tutti-daemon -p tutti-bench)"
        );
        return;
    };
    let _cores = CORES.lock().unwrap_or_else(|e| e.into_inner());
    // A port of its own, away from the default, so that a cluster benchmark running by hand
    // on 127.0.0.x does not cross this one.
    let out = bench()
        .args([
            "cluster",
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
            "--json",
            "--tuttid",
        ])
        .arg(&tuttid)
        .output()
        .unwrap();
    let lines = json_lines(&out);
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
}
