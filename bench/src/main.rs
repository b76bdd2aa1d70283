//! tutti-bench: tutti's latency and throughput, each measured next to its floor in the same
//! run (a bare cache-line ping-pong, a relay through two rings of tutti's sizes, bare UDP,
//! a chain of the same wake-ups as tutti's path), with the ratio.
//!
//! ```text
//! tutti-bench floor [--size 64] [--duration 5] [--json] [--hlog FILE]
//! tutti-bench local-latency --size 64 --duration 5 [--after-idle] [--json] [--hlog FILE]
//! tutti-bench local-throughput --size 64 --duration 5 [--reps 3] [--json] [--hlog FILE]
//! tutti-bench cluster --nodes 3 --size 64 --duration 5 [--reps 3] [--rate R | --rates R1,R2]
//!                     [--loss 0.05] [--auth] [--json] [--hlog FILE]
//! tutti-bench plot --out FILE.png|FILE.svg HLOG...
//! ```
#![warn(clippy::undocumented_unsafe_blocks)]

mod clock;
mod cluster;
mod daemon;
mod floor;
mod interrupt;
mod local;
mod minitx;
mod ordered;
mod pin;
mod plot;
mod proto_path;
mod report;
mod spsc;
mod udp_floor;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use clap::{Args, Parser, Subcommand};

use crate::report::{
    mb_per_s, print_cluster_latency_table, print_cluster_throughput_table, print_json, print_latency_table,
    print_throughput_table, ratio, write_hlog, ClusterLatencyResult, ClusterThroughputResult, LatencyResult,
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
    /// N daemons on 127.0.0.2.. in a cluster: publish on daemon 1 to delivery on daemon 2,
    /// latency and throughput, next to bare UDP on loopback measured in the same run.
    #[command(long_about = CLUSTER_ABOUT)]
    Cluster(ClusterArgs),
    /// N daemons on 127.0.0.2.. and one ordered group (issue 12): a subscriber on every
    /// daemon, publishers on daemons 1, 2, ...; latency with one message in flight (until
    /// every member delivered it), then throughput (the slowest member's delivery rate) and
    /// latency under load; checks that every member delivered the same order.
    Ordered(OrderedArgs),
    /// N daemons on 127.0.0.2.. and one application region (docs/regions.md): C clients
    /// (on daemons 1, 2, ...) run compare-and-swap increments of one counter over the
    /// control channel; minitransactions per second, committed increments per second, call
    /// latency percentiles; checks the counter equals the committed increments.
    Minitx(MinitxArgs),
    /// Draw the percentile distributions of interval logs (--hlog files) as PNG or SVG:
    /// x the percentile on a 1/(1-p) log axis, y the latency; one line per histogram tag.
    Plot(PlotArgs),
    /// One relay of the cluster bench's wake-up chain floor in a process of its own
    /// (started by the bench itself on descriptors it passes; not for direct use).
    #[command(hide = true)]
    ChainRelay(ChainRelayArgs),
    /// The protocol's CPU per message alone: two tutti_proto nodes in one thread, one
    /// sending to the other (no socket, no shared memory); nanoseconds of each side per
    /// message, medians of --reps.
    Proto(ProtoArgs),
}

#[derive(Args)]
struct ChainRelayArgs {
    #[arg(long, value_enum)]
    role: udp_floor::RelayRole,
    #[arg(long)]
    page_fd: i32,
    #[arg(long)]
    efd: i32,
    #[arg(long)]
    sock_fd: i32,
    #[arg(long)]
    size: usize,
    #[arg(long)]
    core: Option<usize>,
}

#[derive(Args)]
struct ProtoArgs {
    /// Message size in bytes (at least 8: a sequence number).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Messages timed per repetition.
    #[arg(long, default_value_t = 2_000_000)]
    messages: u64,
    /// Messages sent before the timing starts, in each repetition (the group's retention
    /// fills to its 64 MiB budget after about 500,000 messages of 64 bytes).
    #[arg(long, default_value_t = 1_000_000)]
    warmup: u64,
    /// Messages submitted per burst before the datagrams move (the daemon drains up to a
    /// ring's batch per pass).
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Repetitions (the last line gives the medians).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Print one JSON object per repetition.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct PlotArgs {
    /// The image to write: FILE.png or FILE.svg.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Title above the plot.
    #[arg(long, default_value = "latency by percentile")]
    title: String,
    /// A TrueType font for the text [default: DejaVu Sans from the usual places].
    #[arg(long, value_name = "FILE.ttf")]
    font: Option<PathBuf>,
    /// Interval logs written with --hlog. With more than one, each line's name starts with
    /// its file's stem.
    #[arg(required = true, value_name = "HLOG")]
    hlogs: Vec<PathBuf>,
}

const CLUSTER_ABOUT: &str = "\
N tuttid daemons on 127.0.0.2, 127.0.0.3, ... (daemon n listens on 127.0.0.(n+1), UDP ports \
--base-port + shard) form a cluster; a publisher attached to daemon 1 and a subscriber attached \
to daemon 2 are two threads of this process; CLOCK_MONOTONIC times publish to delivery.

Before the daemons start, the floors are measured between 127.0.0.2 and 127.0.0.3: the round \
trip of one datagram of --size bytes (floor one-way = RTT/2; --floor-recv busy: nonblocking \
recv in a loop, or blocking); the wake-up chain (shared memory + eventfd -> UDP -> futex, \
every hop a sleeping thread, as in tutti's path); and a bare sender/receiver pair moving \
1472-byte datagrams with sendmmsg/recvmmsg 64 at a time, tutti's datagram size and batch, \
writing and reading every message (floor msg/s = datagrams/s x the --size messages one \
datagram holds with no per-message header), then the same pair with segmentation offload \
(UDP_SEGMENT sends of 44 datagrams, as tutti's io_uring transport sends with net.gso) and \
receive offload (UDP_GRO: a receive holds a run of datagrams, cut by the segment size, as \
tutti's transport receives with net.gro).

Then: latency, one message in flight (the publisher offers, waits until the subscriber has seen \
it, offers the next), one-way publish-to-delivery percentiles (a message not delivered within \
3 s counts as 3 s and in timed_out), ratio_p50 = p50 / floor one-way p50, ratio_p50_chain = \
p50 / wake-up chain p50. Throughput: the publisher offers as fast as daemon 1 takes them; msgs_per_s is what the \
subscriber received in the measured window, ratio = msgs_per_s / floor_msgs_per_s; messages \
sent but never delivered within a grace period (until nothing arrived for 2.5 s) are `missing`; \
Lost and Lagged events are counted. Each daemon's RSS once the cluster formed and at the end, \
its counters over the throughput window and its CPU seconds per million messages are reported. \
With --rate R the publisher paces itself and every message is timed from its intended send \
time (no coordinated omission); --rates runs one cluster per rate and prints a table. --reps N \
alternates floors and cluster N times and adds a line of medians.

Daemons run unpinned (--no-pin) with --daemon-idle backoff by default: this machine may have \
fewer cores than daemons plus clients, and spinning daemons starve each other. Every daemon is \
killed when the run ends, fails or is interrupted.

Targets to compare with (issue 10; --nodes 2, 64 B, medians of 3 alternated runs): \
>= 4,000,000 msg/s and >= 0.5x the bare-UDP floor; p50 <= 1.3x the wake-up chain; --nodes 3 \
within 20% of that; with --loss 0.05, >= 0.8x the loss-free throughput.";

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
    /// Repetitions, each running the relay floor right before tutti (floor, tutti, floor,
    /// tutti, ...); with more than one, a summary line gives the medians.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=9))]
    reps: u64,
    /// Offer at this many messages per second (0: as fast as the ring takes them); every
    /// message is then timed from its intended send time to its delivery (`rate_latency`;
    /// sizes of at least 16 bytes).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    rate: f64,
    /// Write the offer-to-delivery histograms of the sampled messages (tutti's and the
    /// relay floor's) as an HdrHistogram interval log.
    #[arg(long, value_name = "FILE")]
    hlog: Option<PathBuf>,
    /// The daemon's idle strategy: `spin` (its clients never fence) or `backoff` (the
    /// service's default: clients fence after a commit unless the busy shard is in barrier
    /// mode, docs/internals.md "Doorbells").
    #[arg(long, default_value = "spin", value_parser = ["spin", "backoff"])]
    daemon_idle: String,
}

#[derive(Args)]
struct OrderedArgs {
    /// Daemons in the cluster, each with a subscriber.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(2..=16))]
    nodes: u64,
    /// Publishers, on daemons 1, 2, ... (round robin).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    senders: u64,
    /// Message size in bytes (20 to 1020: publisher, sequence number and timestamp; the
    /// ordered layer's payload limit).
    #[arg(long, default_value_t = 64, value_parser = parse_ordered_size)]
    size: usize,
    /// Measured seconds of the throughput phase.
    #[arg(long, default_value_t = 5.0, value_parser = parse_seconds)]
    duration: f64,
    /// Seconds of the latency phase (one message in flight).
    #[arg(long, default_value_t = 2.0, value_parser = parse_seconds)]
    latency_duration: f64,
    /// A safe group: a message is delivered once every member holds it.
    #[arg(long)]
    safe: bool,
    /// Most messages in flight, all publishers together (sent, not yet delivered at the
    /// member on daemon 1); 0: only the daemon's back pressure limits them.
    #[arg(long, default_value_t = 0)]
    window: u64,
    /// First UDP port of every daemon. Change it when another cluster runs on 127.0.0.x.
    #[arg(long, default_value_t = 27500)]
    base_port: u16,
    /// The daemon binary [default: tuttid next to this executable].
    #[arg(long, value_name = "PATH")]
    tuttid: Option<PathBuf>,
    /// The SinfoniaGCS curve: one run per publisher count (e.g. `1,2,4,8`), each on a fresh
    /// cluster with `--duration` of throughput, then throughput against writers in one
    /// table (or one JSON object with every point). Replaces `--senders`.
    #[arg(long, value_delimiter = ',', value_name = "W,W,..", conflicts_with = "senders",
          value_parser = clap::value_parser!(u64).range(1..=64))]
    sweep_senders: Option<Vec<u64>>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct MinitxArgs {
    /// Daemons in the cluster.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=16))]
    nodes: u64,
    /// Clients running the CAS loop, on daemons 1, 2, ... (round robin).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    clients: u64,
    /// Measured seconds.
    #[arg(long, default_value_t = 5.0, value_parser = parse_seconds)]
    duration: f64,
    /// First UDP port of every daemon. Change it when another cluster runs on 127.0.0.x.
    #[arg(long, default_value_t = 27600)]
    base_port: u16,
    /// The daemon binary [default: tuttid next to this executable].
    #[arg(long, value_name = "PATH")]
    tuttid: Option<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

fn run_minitx(args: MinitxArgs) -> Result<(), String> {
    let options = minitx::MinitxOptions {
        tuttid: args.tuttid.unwrap_or_else(daemon::default_tuttid),
        nodes: args.nodes as usize,
        clients: args.clients as usize,
        duration: Duration::from_secs_f64(args.duration),
        base_port: args.base_port,
    };
    let result = minitx::run(&options)?;
    minitx::print(&result, args.json);
    Ok(())
}

fn parse_ordered_size(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("{e}"))?;
    if !(ordered::MIN_SIZE..=1020).contains(&n) {
        return Err(format!("size must be {} to 1020 bytes", ordered::MIN_SIZE));
    }
    Ok(n)
}

fn run_ordered(args: OrderedArgs) -> Result<(), String> {
    let options = ordered::OrderedOptions {
        tuttid: args.tuttid.unwrap_or_else(daemon::default_tuttid),
        nodes: args.nodes as usize,
        senders: args.senders as usize,
        size: args.size,
        duration: Duration::from_secs_f64(args.duration),
        latency_duration: Duration::from_secs_f64(args.latency_duration),
        safe: args.safe,
        base_port: args.base_port,
        window: args.window,
    };
    if let Some(points) = args.sweep_senders {
        let sweep = ordered::sweep(&options, &points)?;
        if args.json {
            report::print_json(&sweep);
        } else {
            ordered::print_sweep(&sweep);
        }
        if sweep.points.iter().any(|p| !p.same_order) {
            return Err("the members delivered different orders".into());
        }
        return Ok(());
    }
    let result = ordered::run(&options)?;
    if args.json {
        report::print_json(&result);
    } else {
        ordered::print_table(&result);
    }
    if !result.same_order {
        return Err("the members delivered different orders".into());
    }
    Ok(())
}

#[derive(Args)]
struct ClusterArgs {
    /// Daemons in the cluster (at least 2: the publisher's and the subscriber's).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(2..=200))]
    nodes: u64,
    /// Message size in bytes (at least 16: sequence number and timestamp).
    #[arg(long, default_value_t = 64, value_parser = parse_cluster_size)]
    size: usize,
    /// Measured seconds of each phase (latency, then throughput; warm-up comes on top).
    #[arg(long, default_value_t = 5.0, value_parser = parse_seconds)]
    duration: f64,
    /// Warm-up seconds before each phase is measured.
    #[arg(long, default_value_t = 1.0, value_parser = parse_seconds_or_zero)]
    warmup: f64,
    /// Share of outgoing datagrams every daemon drops, 0 to 1 (`[net.fault] loss`, with a
    /// per-daemon seed; gossip repairs them).
    #[arg(long, default_value_t = 0.0, value_parser = parse_loss)]
    loss: f64,
    /// The daemons' UDP back end: auto (io_uring, else epoll), uring or epoll.
    #[arg(long, default_value = "auto", value_parser = ["auto", "uring", "epoll"])]
    io: String,
    /// The daemons' idle strategy.
    #[arg(long, default_value = "backoff", value_parser = ["backoff", "spin"])]
    daemon_idle: String,
    /// With `--daemon-idle backoff`: microseconds each daemon's shard keeps polling after
    /// its last data before it parks (tuttid's `spin_after_data_us`; unset: tuttid's default).
    #[arg(long, value_name = "US", value_parser = clap::value_parser!(u64).range(0..=100_000))]
    daemon_spin_us: Option<u64>,
    /// Each daemon keeps idle CPUs polling (not halting) for this many milliseconds after
    /// its data (tuttid's `cpu_poll_after_data_ms`; unset: tuttid's default, never). The
    /// bench then holds the same request (`/dev/cpu_dma_latency` at 0) while it measures
    /// the floors, so that both run on the same host setting. Needs root.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    daemon_cpu_poll_ms: Option<u64>,
    /// Pin every daemon's shard to this core (tuttid's `cores`; an installed tuttid pins
    /// its one shard to the last core by default), and the wake-up chain floor's two relays
    /// (which stand for the shards) to it as well. Unset: nothing pinned.
    #[arg(long, value_name = "CORE")]
    daemon_core: Option<usize>,
    /// Where the wake-up chain floor's two relays run: processes of their own (as the
    /// daemons' shards are, so that every hop crosses processes as tutti's path does) or
    /// threads of the bench.
    #[arg(long, value_enum, default_value_t = udp_floor::ChainRelays::Processes)]
    chain_relays: udp_floor::ChainRelays,
    /// How the bench's publisher and subscriber threads wait.
    #[arg(long, value_enum, default_value_t = cluster::ClientIdle::Backoff)]
    client_idle: cluster::ClientIdle,
    /// How the UDP floor's receivers wait.
    #[arg(long, value_enum, default_value_t = udp_floor::RecvMode::Busy)]
    floor_recv: udp_floor::RecvMode,
    /// Seconds of each floor measurement (round trip, then throughput).
    #[arg(long, default_value_t = 2.0, value_parser = parse_seconds)]
    floor_duration: f64,
    /// First UDP port of every daemon (shard i: base + i). Change it when another cluster
    /// runs on 127.0.0.x.
    #[arg(long, default_value_t = 27400)]
    base_port: u16,
    /// Seconds between both clients joining and the first message (views carry membership).
    #[arg(long, default_value_t = 1.5, value_parser = parse_seconds_or_zero)]
    settle: f64,
    /// Throughput phase: offer this many messages per second at a fixed pace (0: as fast as
    /// daemon 1 takes them). Paced messages are timed from their intended send time, so a
    /// stall shows in every message it delayed (no coordinated omission).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    rate: f64,
    /// Several paced runs, one cluster each, e.g. `--rates 10000,100000,1000000`: a table of
    /// latency from the intended send time, delivered rate and daemon CPU per million
    /// messages for each rate (the one-in-flight latency phase is skipped).
    #[arg(long, value_delimiter = ',', value_parser = parse_positive_rate, conflicts_with_all = ["rate", "auth"])]
    rates: Vec<f64>,
    /// Repetitions, each measuring the floors right before its cluster run (floor, tutti,
    /// floor, tutti, ...); with more than one, a `cluster-summary` line gives the medians.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=9))]
    reps: u64,
    /// Write the one-way histograms (tutti, the busy UDP floor, the wake-up chain, paced
    /// runs) as an HdrHistogram interval log.
    #[arg(long, value_name = "FILE")]
    hlog: Option<PathBuf>,
    /// An extra `[cluster]` setting for every daemon, as KEY=VALUE with a TOML value
    /// (repeatable), e.g. `--cluster-set retention_rounds=5 --cluster-set delivery='"unordered"'`.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_cluster_set)]
    cluster_set: Vec<String>,
    /// Print one JSON object per result, one per line.
    #[arg(long)]
    json: bool,
    /// The daemon binary [default: tuttid next to this executable].
    #[arg(long, value_name = "PATH")]
    tuttid: Option<PathBuf>,
    /// Cost of the cluster key: run the same cluster three times in this invocation (no
    /// key, a key, a key with `encrypt`) and report throughput and p50 of each with their
    /// ratios to the run without a key (the UDP floors are skipped).
    #[arg(long)]
    auth: bool,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !(0.0..=1e9).contains(&v) {
        return Err("messages per second from 0 (unpaced) to 1e9".into());
    }
    Ok(v)
}

fn parse_positive_rate(s: &str) -> Result<f64, String> {
    let v = parse_rate(s)?;
    if v == 0.0 {
        return Err("a rate above 0 messages per second".into());
    }
    Ok(v)
}

fn parse_cluster_set(s: &str) -> Result<String, String> {
    let (key, value) = s.split_once('=').ok_or("expected KEY=VALUE")?;
    let (key, value) = (key.trim(), value.trim());
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || value.is_empty() {
        return Err(format!(
            "{s:?}: expected KEY=VALUE with a [cluster] key such as retention_rounds"
        ));
    }
    Ok(format!("{key} = {value}"))
}

fn parse_cluster_size(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("{e}"))?;
    if n < cluster::MIN_SIZE {
        return Err(format!(
            "at least {} bytes (a sequence number and a timestamp)",
            cluster::MIN_SIZE
        ));
    }
    Ok(n)
}

fn parse_loss(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !(0.0..1.0).contains(&v) {
        return Err("a probability from 0 to below 1".into());
    }
    Ok(v)
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
        Command::Cluster(args) => run_cluster(args),
        Command::Ordered(args) => run_ordered(args),
        Command::Minitx(args) => run_minitx(args),
        Command::Plot(args) => run_plot(args),
        Command::Proto(args) => run_proto(args),
        Command::ChainRelay(a) => {
            udp_floor::chain_relay_main(a.role, a.page_fd, a.efd, a.sock_fd, a.size, a.core)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tutti-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_proto(args: ProtoArgs) -> Result<(), String> {
    if args.size < 8 || args.batch == 0 || args.messages == 0 {
        return Err("--size must be at least 8, --batch and --messages at least 1".into());
    }
    let (mut snd, mut rcv) = (Vec::new(), Vec::new());
    for rep in 1..=args.reps.max(1) {
        let r = proto_path::run(args.size, args.warmup, args.messages, args.batch)?;
        if args.json {
            let mut v = serde_json::to_value(&r).map_err(|e| e.to_string())?;
            v["bench"] = "proto".into();
            v["rep"] = rep.into();
            println!("{v}");
        } else {
            println!(
                "rep {rep}: sender {:.1} ns/msg, receiver {:.1} ns/msg ({} messages of {} B, {:.1} per datagram, {} refused by flow control)",
                r.sender_ns_per_msg, r.receiver_ns_per_msg, r.messages, r.size, r.msgs_per_datagram, r.refused
            );
        }
        snd.push(r.sender_ns_per_msg);
        rcv.push(r.receiver_ns_per_msg);
    }
    if !args.json {
        println!(
            "medians of {} repetitions: sender {:.1} ns/msg, receiver {:.1} ns/msg",
            snd.len(),
            median(snd),
            median(rcv)
        );
    }
    Ok(())
}

fn run_plot(args: PlotArgs) -> Result<(), String> {
    let mut series = Vec::new();
    for path in &args.hlogs {
        for mut s in plot::read_hlog(path)? {
            if args.hlogs.len() > 1 {
                let stem = path
                    .file_stem()
                    .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
                s.name = format!("{stem}: {}", s.name);
            }
            series.push(s);
        }
    }
    plot::plot(&args.out, &args.title, &series, args.font.as_deref())
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
        after_idle_floor_p50_ns: None,
        after_idle_floor_max_ns: None,
    };
    emit_latency(c.json, &latency);
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
        floor_kind: Some("ring"),
        sampled_p50_ns: None,
        floor_sampled_p50_ns: None,
        rep: None,
        rate: None,
        rate_latency: None,
        timed_out: None,
        daemon_idle: None,
        line_rtt_p50_ns: None,
        placement: None,
    };
    emit_throughput(c.json, &throughput);
    let relay = floor::relay_throughput(
        c.client_core,
        c.daemon_core,
        c.size,
        secs(c.duration).mul_f64(0.1).min(Duration::from_millis(500)),
        secs(c.duration),
        &floor::TUTTI_LOCAL_SHAPE,
    )?;
    let relay_msgs_per_s = relay.ring.msgs_per_s;
    emit_throughput(
        c.json,
        &ThroughputResult {
            bench: "floor-relay-throughput",
            msgs_per_s: relay_msgs_per_s.round(),
            mb_per_s: mb_per_s(relay_msgs_per_s, c.size),
            floor_msgs_per_s: relay_msgs_per_s.round(),
            floor_mb_per_s: mb_per_s(relay_msgs_per_s, c.size),
            messages: relay.ring.messages,
            duration_s: relay.ring.measured.as_secs_f64(),
            floor_kind: Some("relay"),
            floor_sampled_p50_ns: (!relay.latency.is_empty()).then(|| relay.latency.value_at_quantile(0.5)),
            ..throughput
        },
    );
    if let Some(path) = &args.hlog {
        write_hlog(
            path,
            started,
            "tutti-bench floor: cache-line ping-pong round trips; relay floor offer-to-delivery of sampled messages",
            &[
                ("floor-rtt", &lat.rtt, lat.measure_start - t0, lat.measured),
                (
                    "relay-floor-offer-to-delivery",
                    &relay.latency,
                    relay.measure_start - t0,
                    relay.ring.measured,
                ),
            ],
        )?;
    }
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
        no_pin: false,
        config: None,
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

    let wake_floor = if args.after_idle {
        let mut w =
            floor::wake_after_idle(c.client_core, c.daemon_core, args.idle_samples, local::IDLE_PAUSE)?;
        w.sort_unstable();
        Some((w[w.len() / 2], *w.last().unwrap_or(&0)))
    } else {
        None
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
        after_idle_floor_p50_ns: wake_floor.map(|w| w.0),
        after_idle_floor_max_ns: wake_floor.map(|w| w.1),
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

fn local_shape(args: &LocalThroughputArgs) -> floor::RelayShape {
    floor::RelayShape {
        batch: args.batch as usize,
        fragment_limit: args.fragment_limit as usize,
        ..floor::TUTTI_LOCAL_SHAPE
    }
}

/// `local-throughput --reps N`: medians over the repetitions.
#[derive(serde::Serialize)]
struct LocalThroughputSummary {
    bench: &'static str,
    size: usize,
    reps: usize,
    msgs_per_s: f64,
    floor_msgs_per_s: f64,
    ratio: f64,
    msgs_per_s_reps: Vec<f64>,
    floor_msgs_per_s_reps: Vec<f64>,
    /// Each rep's placement ("near", "far", "mixed"), and the medians of the reps in each
    /// of the two clean placements (absent when no rep ran in it).
    placement_reps: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    near: Option<PlacementMedians>,
    #[serde(skip_serializing_if = "Option::is_none")]
    far: Option<PlacementMedians>,
}

/// Medians of the `local-throughput` reps that ran in one placement.
#[derive(serde::Serialize)]
struct PlacementMedians {
    reps: usize,
    msgs_per_s: f64,
    floor_msgs_per_s: f64,
    ratio: f64,
    line_rtt_p50_ns: f64,
}

impl PlacementMedians {
    fn of(results: &[ThroughputResult], placement: &str) -> Option<PlacementMedians> {
        let reps: Vec<&ThroughputResult> = results
            .iter()
            .filter(|r| r.placement == Some(placement))
            .collect();
        if reps.is_empty() {
            return None;
        }
        let med = |f: &dyn Fn(&ThroughputResult) -> f64| median(reps.iter().map(|r| f(r)).collect());
        Some(PlacementMedians {
            reps: reps.len(),
            msgs_per_s: med(&|r| r.msgs_per_s),
            floor_msgs_per_s: med(&|r| r.floor_msgs_per_s),
            ratio: med(&|r| r.ratio),
            line_rtt_p50_ns: med(&|r| {
                let [a, b] = r.line_rtt_p50_ns.unwrap_or_default();
                (a + b) as f64 / 2.0
            }),
        })
    }
}

fn run_local_throughput(args: LocalThroughputArgs) -> Result<(), String> {
    let c = &args.common;
    pin::check_pair(c.client_core, c.daemon_core)?;
    let (started, t0) = (SystemTime::now(), Instant::now());
    if args.rate > 0.0 && c.size < cluster::MIN_SIZE {
        return Err(format!(
            "--rate needs messages of at least {} bytes (a sequence number and a time stamp)",
            cluster::MIN_SIZE
        ));
    }
    let shape = local_shape(&args);
    let mut results = Vec::new();
    let mut logs: Vec<(String, hdrhistogram::Histogram<u64>, Duration, Duration)> = Vec::new();
    // The fair floor and tutti alternate: floor, tutti, floor, tutti, ... (the floor runs
    // before each daemon starts spinning on one of the two cores).
    for rep in 1..=args.reps as usize {
        // Which placement this rep has: the host moves the two vCPUs between near and far
        // (3-4x apart in every local figure) within seconds, so each rep says which it ran in.
        let placed_before = floor::placement(c.client_core, c.daemon_core)?;
        let floor = floor::relay_throughput(
            c.client_core,
            c.daemon_core,
            c.size,
            secs(args.daemon.warmup),
            secs(args.daemon.floor_duration),
            &shape,
        )?;
        let tuttid = daemon_binary(&args.daemon);
        let idle = if args.daemon_idle == "backoff" {
            "backoff"
        } else {
            "spin"
        };
        let mut daemon = daemon::Daemon::start(&daemon::DaemonOptions {
            tuttid: &tuttid,
            idle,
            core: c.daemon_core,
            no_pin: false,
            config: None,
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
            rate: args.rate,
        };
        let run = local::throughput(&opts).map_err(|e| with_daemon_state(e, &mut daemon))?;
        let rss_after = daemon.rss_kib()?;
        daemon.check_alive()?;
        drop(daemon);
        let placed_after = floor::placement(c.client_core, c.daemon_core)?;
        let floor_after = if args.daemon.no_floor_after || rep < args.reps as usize {
            None
        } else {
            Some(floor::relay_throughput(
                c.client_core,
                c.daemon_core,
                c.size,
                secs(args.daemon.warmup),
                secs(args.daemon.floor_duration),
                &shape,
            )?)
        };
        let result = ThroughputResult {
            bench: "local-throughput",
            size: c.size,
            msgs_per_s: run.msgs_per_s.round(),
            mb_per_s: mb_per_s(run.msgs_per_s, c.size),
            floor_msgs_per_s: floor.ring.msgs_per_s.round(),
            floor_mb_per_s: mb_per_s(floor.ring.msgs_per_s, c.size),
            floor_after_msgs_per_s: floor_after.as_ref().map(|f| f.ring.msgs_per_s.round()),
            ratio: ratio(run.msgs_per_s, floor.ring.msgs_per_s),
            messages: run.messages,
            duration_s: run.measured.as_secs_f64(),
            lagged_events: Some(run.lagged_events),
            lagged_missed: Some(run.lagged_missed),
            batch: Some(run.final_batch),
            rss_before_kib: Some(run.rss_before_kib),
            rss_after_kib: Some(rss_after),
            floor_kind: Some("relay"),
            sampled_p50_ns: (!run.latency.is_empty() && args.rate == 0.0)
                .then(|| run.latency.value_at_quantile(0.5)),
            floor_sampled_p50_ns: (!floor.latency.is_empty()).then(|| floor.latency.value_at_quantile(0.5)),
            rep: Some(rep),
            rate: (args.rate > 0.0).then_some(args.rate),
            rate_latency: (args.rate > 0.0).then(|| Percentiles::of(&run.latency)),
            timed_out: (args.rate > 0.0).then_some(run.timed_out),
            daemon_idle: Some(idle),
            line_rtt_p50_ns: Some([placed_before.rtt_p50_ns, placed_after.rtt_p50_ns]),
            placement: Some(floor::Placement::of_run(placed_before, placed_after)),
        };
        emit_throughput(c.json, &result);
        warn_if_floor_drifted(floor.ring.msgs_per_s, result.floor_after_msgs_per_s);
        let suffix = if args.reps > 1 {
            format!("-rep{rep}")
        } else {
            String::new()
        };
        logs.push((
            format!("relay-floor-offer-to-delivery{suffix}"),
            floor.latency,
            floor.measure_start - t0,
            floor.ring.measured,
        ));
        let tutti_tag = if args.rate > 0.0 {
            format!("tutti-rate-{}", args.rate.round())
        } else {
            "tutti-offer-to-delivery".to_string()
        };
        logs.push((
            format!("{tutti_tag}{suffix}"),
            run.latency,
            run.measure_start - t0,
            run.measured,
        ));
        results.push(result);
    }
    if args.reps > 1 {
        let tp: Vec<f64> = results.iter().map(|r| r.msgs_per_s).collect();
        let fl: Vec<f64> = results.iter().map(|r| r.floor_msgs_per_s).collect();
        let summary = LocalThroughputSummary {
            bench: "local-throughput-summary",
            size: c.size,
            reps: results.len(),
            msgs_per_s: median(tp.clone()),
            floor_msgs_per_s: median(fl.clone()),
            ratio: median(results.iter().map(|r| r.ratio).collect()),
            msgs_per_s_reps: tp,
            floor_msgs_per_s_reps: fl,
            placement_reps: results.iter().map(|r| r.placement.unwrap_or("mixed")).collect(),
            near: PlacementMedians::of(&results, "near"),
            far: PlacementMedians::of(&results, "far"),
        };
        if c.json {
            print_json(&summary);
        } else {
            println!(
                "medians of {} alternated runs: {:.0} msg/s, relay floor {:.0} msg/s, median ratio {:.3} \
                 (each run against the floor measured right before it)",
                summary.reps, summary.msgs_per_s, summary.floor_msgs_per_s, summary.ratio
            );
            for (name, m) in [("near", &summary.near), ("far", &summary.far)] {
                match m {
                    Some(m) => println!(
                        "  {name} placement ({} of {} reps, cache-line round trip {:.0} ns): {:.0} msg/s, \
                         relay floor {:.0} msg/s, median ratio {:.3}",
                        m.reps, summary.reps, m.line_rtt_p50_ns, m.msgs_per_s, m.floor_msgs_per_s, m.ratio
                    ),
                    None => println!("  {name} placement: no rep ran in it"),
                }
            }
        }
    }
    if let Some(path) = &args.hlog {
        let refs: Vec<_> = logs.iter().map(|(t, h, o, l)| (t.as_str(), h, *o, *l)).collect();
        write_hlog(
            path,
            started,
            &format!(
                "tutti-bench local-throughput size {}: offer-to-delivery of every {}th message at \
                 saturation (one thread offers and receives; TSC of one pinned thread)",
                c.size,
                local::SAMPLE_EVERY
            ),
            &refs,
        )?;
    }
    Ok(())
}

/// The daemons' idle strategy as the cluster reports name it: with `--daemon-spin-us`,
/// the spin after data too, and with `--daemon-cpu-poll-ms` how long idle CPUs poll.
fn daemon_idle_label(args: &ClusterArgs) -> String {
    let idle = match args.daemon_spin_us {
        Some(us) if args.daemon_idle == "backoff" => format!("backoff, spin {us} us after data"),
        _ => args.daemon_idle.clone(),
    };
    let idle = match args.daemon_cpu_poll_ms {
        Some(ms) => format!("{idle}, idle CPUs poll {ms} ms after data"),
        None => idle,
    };
    let idle = match args.daemon_core {
        Some(core) => format!("{idle}, shards and chain relays on core {core}"),
        None => idle,
    };
    match args.chain_relays {
        udp_floor::ChainRelays::Processes => format!("{idle}, chain relays in processes"),
        udp_floor::ChainRelays::Threads => format!("{idle}, chain relays in threads"),
    }
}

fn cluster_options(args: &ClusterArgs, cluster_settings: Vec<String>) -> cluster::ClusterOptions {
    cluster::ClusterOptions {
        tuttid: args.tuttid.clone().unwrap_or_else(daemon::default_tuttid),
        nodes: args.nodes as usize,
        size: args.size,
        warmup: secs(args.warmup),
        duration: secs(args.duration),
        loss: args.loss,
        io: args.io.clone(),
        daemon_idle: args.daemon_idle.clone(),
        daemon_spin_us: args.daemon_spin_us,
        daemon_cpu_poll_ms: args.daemon_cpu_poll_ms,
        daemon_core: args.daemon_core,
        client_idle: args.client_idle,
        base_port: args.base_port,
        settle: secs(args.settle),
        rate: args.rate,
        cluster_settings,
        latency_phase: true,
    }
}

/// One run of `cluster --auth`.
#[derive(serde::Serialize)]
struct AuthVariant {
    auth: &'static str,
    msgs_per_s: f64,
    p50_ns: u64,
    p99_ns: u64,
    missing: u64,
    lost: u64,
    latency_timeouts: u64,
    /// Relative to the run without a key (1.0 = same).
    throughput_ratio: f64,
    p50_ratio: f64,
    auth_failed: u64,
    replayed: u64,
    /// Messages per datagram from daemon 1 in the throughput window (the trailer takes
    /// 34 bytes of each datagram).
    msgs_per_datagram: f64,
    /// CPU seconds of all daemons in the throughput phase.
    throughput_cpu_s: f64,
}

#[derive(serde::Serialize)]
struct AuthResult {
    bench: &'static str,
    size: usize,
    nodes: usize,
    duration_s: f64,
    io: String,
    variants: Vec<AuthVariant>,
}

/// `cluster --auth`: the same cluster without a key, with one, and encrypting.
fn run_cluster_auth(args: &ClusterArgs) -> Result<(), String> {
    let key = cluster::write_temp_key()?;
    let key_line = format!("key_file = {:?}", key.path().display().to_string());
    let variants: [(&str, Vec<String>); 3] = [
        ("none", vec![]),
        ("key", vec![key_line.clone()]),
        ("key+encrypt", vec![key_line, "encrypt = true".into()]),
    ];
    let mut results: Vec<AuthVariant> = Vec::new();
    for (i, (name, lines)) in variants.into_iter().enumerate() {
        let mut settings = args.cluster_set.clone();
        settings.extend(lines);
        if !args.json {
            eprintln!("tutti-bench: cluster run with auth = {name}");
        }
        let mut options = cluster_options(args, settings);
        // Each run on its own ports: an io_uring daemon's sockets can outlive its exit
        // for a moment (the kernel tears the ring down asynchronously).
        options.base_port = options.base_port.saturating_add(16 * i as u16);
        let run = cluster::run(&options)?;
        let one_way = Percentiles::of(&run.latency);
        let window = run.delivered_window.as_secs_f64();
        let msgs_per_s = if window > 0.0 {
            run.delivered as f64 / window
        } else {
            0.0
        };
        let sum = |name: &str| run.end_counters.iter().map(|c| c.get(name)).sum::<u64>();
        let (base_tp, base_p50) = results.first().map_or((msgs_per_s, one_way.p50_ns as f64), |b| {
            (b.msgs_per_s, b.p50_ns as f64)
        });
        results.push(AuthVariant {
            auth: name,
            msgs_per_s: msgs_per_s.round(),
            p50_ns: one_way.p50_ns,
            p99_ns: one_way.p99_ns,
            missing: run.missing,
            lost: run.lost_messages,
            latency_timeouts: run.latency_timeouts,
            throughput_ratio: ratio(msgs_per_s, base_tp),
            p50_ratio: ratio(one_way.p50_ns as f64, base_p50),
            auth_failed: sum("auth_failed"),
            replayed: sum("replayed"),
            msgs_per_datagram: run.throughput_counters.first().map_or(0.0, |c| {
                ratio(c.get("frames_in") as f64, c.get("datagrams_out") as f64)
            }),
            throughput_cpu_s: run.throughput_cpu_s.iter().sum::<f64>(),
        });
    }
    let result = AuthResult {
        bench: "cluster-auth",
        size: args.size,
        nodes: args.nodes as usize,
        duration_s: args.duration,
        io: args.io.clone(),
        variants: results,
    };
    if args.json {
        print_json(&result);
    } else {
        println!(
            "cluster, {} nodes, {} B messages, {} s per phase: cost of the cluster key (ratios to no key)",
            result.nodes, result.size, result.duration_s
        );
        println!(
            "{:<12} {:>12} {:>9} {:>10} {:>10} {:>9} {:>8} {:>8} {:>9} {:>7}",
            "auth",
            "msg/s",
            "tp ratio",
            "p50 ns",
            "p99 ns",
            "p50 ratio",
            "missing",
            "lost",
            "msg/dgram",
            "cpu s"
        );
        for v in &result.variants {
            println!(
                "{:<12} {:>12.0} {:>9.3} {:>10} {:>10} {:>9.3} {:>8} {:>8} {:>9.2} {:>7.2}",
                v.auth,
                v.msgs_per_s,
                v.throughput_ratio,
                v.p50_ns,
                v.p99_ns,
                v.p50_ratio,
                v.missing,
                v.lost,
                v.msgs_per_datagram,
                v.throughput_cpu_s
            );
        }
    }
    Ok(())
}

/// The floors of one cluster repetition, measured right before its cluster run.
struct ClusterFloors {
    rtt: hdrhistogram::Histogram<u64>,
    rtt_at: (Duration, Duration),
    chain: udp_floor::ChainLatency,
    tp: udp_floor::UdpThroughput,
    /// The same with segmentation offload (as tutti's io_uring transport sends).
    tp_offload: udp_floor::UdpThroughput,
}

fn cluster_floors(args: &ClusterArgs, t0: Instant) -> Result<ClusterFloors, String> {
    let (a, b) = (cluster::node_ip(1), cluster::node_ip(2));
    // With --daemon-cpu-poll-ms the daemons keep idle CPUs polling while their data flows:
    // the floors are measured under the same request.
    let _hold = match args.daemon_cpu_poll_ms {
        Some(_) => Some(
            tutti_sys::CpuLatencyHold::take()
                .map_err(|e| format!("--daemon-cpu-poll-ms: {}: {e}", tutti_sys::CPU_LATENCY_DEVICE))?,
        ),
        None => None,
    };
    let at = Instant::now();
    let rtt = udp_floor::round_trip(a, b, args.size, secs(args.floor_duration), args.floor_recv)?.rtt;
    let rtt_at = (at - t0, at.elapsed());
    let chain = udp_floor::wakeup_chain(
        a,
        b,
        args.size,
        secs(args.floor_duration),
        args.daemon_core,
        args.chain_relays,
    )?;
    let tp = udp_floor::throughput(a, b, args.size, secs(args.floor_duration), args.floor_recv, false)?;
    let tp_offload =
        udp_floor::throughput(a, b, args.size, secs(args.floor_duration), args.floor_recv, true)?;
    Ok(ClusterFloors {
        rtt,
        rtt_at,
        chain,
        tp,
        tp_offload,
    })
}

/// Every value halved: one-way times from round trips (for the interval log).
fn halved(h: &hdrhistogram::Histogram<u64>) -> hdrhistogram::Histogram<u64> {
    let mut out = report::new_histogram();
    for v in h.iter_recorded() {
        out.saturating_record_n(v.value_iterated_to() / 2, v.count_at_value());
    }
    out
}

fn cluster_results(
    args: &ClusterArgs,
    rep: usize,
    floors: &ClusterFloors,
    run: &cluster::ClusterRun,
) -> (ClusterLatencyResult, ClusterThroughputResult) {
    let nodes = args.nodes as usize;
    let floor_one_way = Percentiles::of(&floors.rtt).halved();
    let chain = Percentiles::of(&floors.chain.one_way);
    let one_way = Percentiles::of(&run.latency);
    let latency = ClusterLatencyResult {
        bench: "cluster-latency",
        size: args.size,
        nodes,
        loss: args.loss,
        one_way,
        floor_p50_ns: floor_one_way.p50_ns,
        floor_p99_ns: floor_one_way.p99_ns,
        floor_rtt_p50_ns: floor_one_way.p50_ns * 2,
        floor_recv: args.floor_recv.name(),
        ratio_p50: ratio(one_way.p50_ns as f64, floor_one_way.p50_ns as f64),
        chain_p50_ns: chain.p50_ns,
        chain_p99_ns: chain.p99_ns,
        ratio_p50_chain: ratio(one_way.p50_ns as f64, chain.p50_ns as f64),
        chain_timed_out: floors.chain.timed_out,
        timed_out: run.latency_timeouts,
        rep,
        duration_s: run.latency_measured.as_secs_f64(),
        daemon_idle: daemon_idle_label(args),
        client_idle: args.client_idle.name(),
        io: args.io.clone(),
        timer_overhead_ns: clock::overhead_ns(),
    };
    let floor_tp = &floors.tp;
    let per_dgram = udp_floor::msgs_per_datagram(args.size);
    let floor_msgs_per_s =
        floor_tp.datagrams_per_s * per_dgram as f64 / udp_floor::datagrams_per_msg(args.size) as f64;
    let window = run.delivered_window.as_secs_f64();
    let msgs_per_s = if window > 0.0 {
        run.delivered as f64 / window
    } else {
        0.0
    };
    let publisher = run.throughput_counters.first().cloned().unwrap_or_default();
    let tutti_per_dgram = ratio(
        publisher.get("frames_in") as f64,
        publisher.get("datagrams_out") as f64,
    );
    let floor_tutti_packing = floor_tp.datagrams_per_s * tutti_per_dgram;
    let floor_offload_msgs_per_s =
        floors.tp_offload.datagrams_per_s * per_dgram as f64 / udp_floor::datagrams_per_msg(args.size) as f64;
    let throughput = ClusterThroughputResult {
        bench: "cluster-throughput",
        size: args.size,
        nodes,
        loss: args.loss,
        msgs_per_s: msgs_per_s.round(),
        mb_per_s: mb_per_s(msgs_per_s, args.size),
        floor_msgs_per_s: floor_msgs_per_s.round(),
        floor_datagrams_per_s: floor_tp.datagrams_per_s.round(),
        floor_sent_datagrams_per_s: (floor_tp.sent as f64 / floor_tp.run.as_secs_f64()).round(),
        floor_msgs_per_datagram: per_dgram,
        floor_datagram_bytes: udp_floor::DATAGRAM_BYTES,
        floor_batch: udp_floor::BATCH,
        floor_recv: args.floor_recv.name(),
        ratio: ratio(msgs_per_s, floor_msgs_per_s),
        floor_msgs_per_s_tutti_packing: floor_tutti_packing.round(),
        ratio_tutti_packing: ratio(msgs_per_s, floor_tutti_packing),
        floor_offload_msgs_per_s: floor_offload_msgs_per_s.round(),
        ratio_offload: ratio(msgs_per_s, floor_offload_msgs_per_s),
        messages: run.delivered,
        duration_s: window,
        sent: run.sent,
        offered_msgs_per_s: (run.sent as f64 / run.sent_window.as_secs_f64().max(1e-9)).round(),
        missing: run.missing,
        delivered_fraction: if run.sent == 0 {
            0.0
        } else {
            (run.sent - run.missing) as f64 / run.sent as f64
        },
        lost: run.lost_messages,
        drain_s: (run.drain.as_secs_f64() * 1000.0).round() / 1000.0,
        lost_events: run.lost_events,
        lost_messages: run.lost_messages,
        lagged_events: run.lagged_events,
        lagged_missed: run.lagged_missed,
        tutti_msgs_per_datagram: tutti_per_dgram,
        form_s: (run.form_time.as_secs_f64() * 1000.0).round() / 1000.0,
        daemon_idle: daemon_idle_label(args),
        client_idle: args.client_idle.name(),
        io: args.io.clone(),
        rate: args.rate,
        rate_latency: run.rate_latency.as_ref().map(Percentiles::of),
        timed_out: run.rate_latency.as_ref().map(|_| run.missing),
        cpu_s_per_million_msgs: cpu_per_million(&run.throughput_cpu_s, run.delivered),
        rep,
        cluster_settings: args.cluster_set.clone(),
        rss_start_kib: run.rss_start_kib.clone(),
        rss_end_kib: run.rss_end_kib.clone(),
        latency_cpu_s: run.latency_cpu_s.clone(),
        latency_wall_s: run.latency_wall_s,
        throughput_cpu_s: run.throughput_cpu_s.clone(),
        throughput_wall_s: run.throughput_wall_s,
        window_counters: run.throughput_counters.iter().map(|c| c.0.clone()).collect(),
        end_counters: run.end_counters.iter().map(|c| c.0.clone()).collect(),
    };
    (latency, throughput)
}

/// CPU seconds per million delivered messages, per daemon (0 when nothing was delivered).
fn cpu_per_million(cpu_s: &[f64], delivered: u64) -> Vec<f64> {
    cpu_s
        .iter()
        .map(|c| {
            if delivered == 0 {
                0.0
            } else {
                (c * 1e6 / delivered as f64 * 1000.0).round() / 1000.0
            }
        })
        .collect()
}

/// The median of some figures (the lower middle one of an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len().saturating_sub(1) / 2).copied().unwrap_or(0.0)
}

/// `cluster --reps N`: medians over the repetitions, each floor measured right before the
/// cluster run it is compared with; a ratio is the median of the runs' own ratios (each
/// against its own floor), not the ratio of two medians.
#[derive(serde::Serialize)]
struct ClusterSummary {
    bench: &'static str,
    size: usize,
    nodes: usize,
    reps: usize,
    msgs_per_s: f64,
    floor_msgs_per_s: f64,
    ratio: f64,
    p50_ns: f64,
    p99_ns: f64,
    floor_p50_ns: f64,
    chain_p50_ns: f64,
    ratio_p50: f64,
    ratio_p50_chain: f64,
    timed_out: u64,
    msgs_per_s_reps: Vec<f64>,
    p50_ns_reps: Vec<f64>,
}

fn cluster_summary(
    args: &ClusterArgs,
    lines: &[(ClusterLatencyResult, ClusterThroughputResult)],
) -> ClusterSummary {
    let m = |f: &dyn Fn(&(ClusterLatencyResult, ClusterThroughputResult)) -> f64| {
        median(lines.iter().map(f).collect())
    };
    ClusterSummary {
        bench: "cluster-summary",
        size: args.size,
        nodes: args.nodes as usize,
        reps: lines.len(),
        msgs_per_s: m(&|l| l.1.msgs_per_s),
        floor_msgs_per_s: m(&|l| l.1.floor_msgs_per_s),
        ratio: m(&|l| l.1.ratio),
        p50_ns: m(&|l| l.0.one_way.p50_ns as f64),
        p99_ns: m(&|l| l.0.one_way.p99_ns as f64),
        floor_p50_ns: m(&|l| l.0.floor_p50_ns as f64),
        chain_p50_ns: m(&|l| l.0.chain_p50_ns as f64),
        ratio_p50: m(&|l| l.0.ratio_p50),
        ratio_p50_chain: m(&|l| l.0.ratio_p50_chain),
        timed_out: lines.iter().map(|l| l.0.timed_out).sum(),
        msgs_per_s_reps: lines.iter().map(|l| l.1.msgs_per_s).collect(),
        p50_ns_reps: lines.iter().map(|l| l.0.one_way.p50_ns as f64).collect(),
    }
}

fn run_cluster(args: ClusterArgs) -> Result<(), String> {
    if args.auth {
        return run_cluster_auth(&args);
    }
    if !args.rates.is_empty() {
        return run_cluster_rates(&args);
    }
    let (started, t0) = (SystemTime::now(), Instant::now());
    let mut lines = Vec::new();
    let mut logs: Vec<(String, hdrhistogram::Histogram<u64>, Duration, Duration)> = Vec::new();
    // Floors and tutti alternate: each repetition measures its floors right before its
    // cluster starts (the daemons are not running then), on ports of its own.
    for rep in 1..=args.reps as usize {
        let floors = cluster_floors(&args, t0)?;
        let mut options = cluster_options(&args, args.cluster_set.clone());
        options.base_port = options.base_port.saturating_add(16 * (rep as u16 - 1));
        let run = cluster::run(&options)?;
        let (latency, throughput) = cluster_results(&args, rep, &floors, &run);
        if args.json {
            print_json(&latency);
            print_json(&throughput);
        } else {
            print_cluster_latency_table(&latency);
            print_cluster_throughput_table(&throughput);
        }
        let suffix = if args.reps > 1 {
            format!("-rep{rep}")
        } else {
            String::new()
        };
        let chain = &floors.chain;
        logs.push((
            format!("udp-busy-one-way{suffix}"),
            halved(&floors.rtt),
            floors.rtt_at.0,
            floors.rtt_at.1,
        ));
        logs.push((
            format!("wakeup-chain-one-way{suffix}"),
            chain.one_way.clone(),
            chain.measure_start - t0,
            chain.measured,
        ));
        logs.push((
            format!("tutti-one-way{suffix}"),
            run.latency.clone(),
            run.latency_start - t0,
            run.latency_measured,
        ));
        if let Some(h) = &run.rate_latency {
            logs.push((
                format!("tutti-rate-{}{suffix}", args.rate.round()),
                h.clone(),
                run.throughput_start - t0,
                run.delivered_window,
            ));
        }
        lines.push((latency, throughput));
    }
    if args.reps > 1 {
        let summary = cluster_summary(&args, &lines);
        if args.json {
            print_json(&summary);
        } else {
            println!(
                "medians of {} alternated runs: {:.0} msg/s (floor {:.0}; median ratio {:.3}); p50 {} \
                 p99 {} (busy UDP floor {}, median ratio {:.2}; wake-up chain {}, median ratio {:.2}); \
                 each ratio is of one run against the floor measured right before it",
                summary.reps,
                summary.msgs_per_s,
                summary.floor_msgs_per_s,
                summary.ratio,
                report::ns(summary.p50_ns as u64),
                report::ns(summary.p99_ns as u64),
                report::ns(summary.floor_p50_ns as u64),
                summary.ratio_p50,
                report::ns(summary.chain_p50_ns as u64),
                summary.ratio_p50_chain
            );
        }
    }
    if let Some(path) = &args.hlog {
        let refs: Vec<_> = logs.iter().map(|(t, h, o, l)| (t.as_str(), h, *o, *l)).collect();
        write_hlog(
            path,
            started,
            &format!(
                "tutti-bench cluster --nodes {} --size {}: one-way publish-to-delivery and its floors",
                args.nodes, args.size
            ),
            &refs,
        )?;
    }
    Ok(())
}

/// One rate of `cluster --rates`.
#[derive(serde::Serialize)]
struct RateResult {
    bench: &'static str,
    size: usize,
    nodes: usize,
    /// Offered (intended) and achieved publish rates, and the delivered rate.
    rate: f64,
    offered_msgs_per_s: f64,
    msgs_per_s: f64,
    delivered_fraction: f64,
    /// From each message's intended send time; never-delivered ones at the drain time.
    #[serde(flatten)]
    latency: Percentiles,
    timed_out: u64,
    cpu_s_per_million_msgs: Vec<f64>,
    /// The floors measured before the first rate: busy UDP one way, the wake-up chain, and
    /// bare UDP throughput at tutti's datagram size, batch and bare packing.
    floor_p50_ns: u64,
    chain_p50_ns: u64,
    floor_msgs_per_s: f64,
}

/// `cluster --rates R1,R2,...`: one cluster per rate (fresh daemons, ports of its own),
/// the paced phase only.
fn run_cluster_rates(args: &ClusterArgs) -> Result<(), String> {
    let (started, t0) = (SystemTime::now(), Instant::now());
    let floors = cluster_floors(args, t0)?;
    let floor_p50_ns = Percentiles::of(&floors.rtt).halved().p50_ns;
    let chain_p50_ns = Percentiles::of(&floors.chain.one_way).p50_ns;
    let floor_msgs_per_s = (floors.tp.datagrams_per_s * udp_floor::msgs_per_datagram(args.size) as f64
        / udp_floor::datagrams_per_msg(args.size) as f64)
        .round();
    let mut results = Vec::new();
    let mut logs = Vec::new();
    for (i, &rate) in args.rates.iter().enumerate() {
        if !args.json {
            eprintln!("tutti-bench: cluster at {rate:.0} msg/s offered");
        }
        let mut options = cluster_options(args, args.cluster_set.clone());
        options.rate = rate;
        options.latency_phase = false;
        options.base_port = options.base_port.saturating_add(16 * i as u16);
        let run = cluster::run(&options)?;
        let h = run.rate_latency.clone().unwrap_or_else(report::new_histogram);
        let window = run.delivered_window.as_secs_f64();
        results.push(RateResult {
            bench: "cluster-rate",
            size: args.size,
            nodes: args.nodes as usize,
            rate,
            offered_msgs_per_s: (run.sent as f64 / run.sent_window.as_secs_f64().max(1e-9)).round(),
            msgs_per_s: if window > 0.0 {
                (run.delivered as f64 / window).round()
            } else {
                0.0
            },
            delivered_fraction: if run.sent == 0 {
                0.0
            } else {
                (run.sent - run.missing) as f64 / run.sent as f64
            },
            latency: Percentiles::of(&h),
            timed_out: run.missing,
            cpu_s_per_million_msgs: cpu_per_million(&run.throughput_cpu_s, run.delivered),
            floor_p50_ns,
            chain_p50_ns,
            floor_msgs_per_s,
        });
        logs.push((
            format!("tutti-rate-{}", rate.round()),
            h,
            run.throughput_start - t0,
            run.delivered_window,
        ));
    }
    if args.json {
        for r in &results {
            print_json(r);
        }
    } else {
        println!(
            "cluster, {} nodes, {} B, latency from the intended send time (floors: busy UDP one way {}, \
             wake-up chain {}, bare UDP {:.0} msg/s)",
            args.nodes,
            args.size,
            report::ns(floor_p50_ns),
            report::ns(chain_p50_ns),
            floor_msgs_per_s
        );
        println!(
            "{:>12} {:>12} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9}  cpu s / M msgs",
            "rate", "offered", "delivered", "p50", "p90", "p99", "p99.9", "max", "timed out"
        );
        for r in &results {
            println!(
                "{:>12.0} {:>12.0} {:>12.0} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9}  {:?}",
                r.rate,
                r.offered_msgs_per_s,
                r.msgs_per_s,
                report::ns(r.latency.p50_ns),
                report::ns(r.latency.p90_ns),
                report::ns(r.latency.p99_ns),
                report::ns(r.latency.p999_ns),
                report::ns(r.latency.max_ns),
                r.timed_out,
                r.cpu_s_per_million_msgs
            );
        }
    }
    if let Some(path) = &args.hlog {
        let (rtt_at, chain) = (floors.rtt_at, &floors.chain);
        let mut refs: Vec<(&str, &hdrhistogram::Histogram<u64>, Duration, Duration)> = Vec::new();
        let floor_one_way = halved(&floors.rtt);
        refs.push(("udp-busy-one-way", &floor_one_way, rtt_at.0, rtt_at.1));
        refs.push((
            "wakeup-chain-one-way",
            &chain.one_way,
            chain.measure_start - t0,
            chain.measured,
        ));
        refs.extend(logs.iter().map(|(t, h, o, l)| (t.as_str(), h, *o, *l)));
        write_hlog(
            path,
            started,
            &format!(
                "tutti-bench cluster --rates, {} nodes, {} B: latency from the intended send time",
                args.nodes, args.size
            ),
            &refs,
        )?;
    }
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
        let cli = Cli::try_parse_from([
            "tutti-bench",
            "cluster",
            "--nodes",
            "3",
            "--loss",
            "0.05",
            "--io",
            "epoll",
            "--cluster-set",
            "retention_rounds=5",
        ])
        .unwrap();
        match cli.command {
            Command::Cluster(a) => {
                assert_eq!((a.nodes, a.size, a.loss), (3, 64, 0.05));
                assert_eq!(a.io, "epoll");
                assert_eq!(a.daemon_idle, "backoff");
                assert_eq!(a.cluster_set, vec!["retention_rounds = 5".to_string()]);
            }
            _ => panic!("wrong subcommand"),
        }
        assert!(Cli::try_parse_from(["tutti-bench", "cluster", "--size", "8"]).is_err());
        assert!(Cli::try_parse_from(["tutti-bench", "cluster", "--nodes", "1"]).is_err());
        assert!(Cli::try_parse_from(["tutti-bench", "cluster", "--loss", "1"]).is_err());
        assert!(Cli::try_parse_from(["tutti-bench", "cluster", "--cluster-set", "x"]).is_err());
        let cli =
            Cli::try_parse_from(["tutti-bench", "cluster", "--rates", "10000,1e5", "--reps", "3"]).unwrap();
        match cli.command {
            Command::Cluster(a) => assert_eq!((a.rates, a.reps), (vec![10_000.0, 100_000.0], 3)),
            _ => panic!("wrong subcommand"),
        }
        assert!(Cli::try_parse_from(["tutti-bench", "cluster", "--rates", "0"]).is_err());
        assert!(Cli::try_parse_from(["tutti-bench", "cluster", "--rates", "10", "--rate", "5"]).is_err());
        assert!(Cli::try_parse_from(["tutti-bench", "cluster", "--reps", "0"]).is_err());
        assert!(Cli::try_parse_from(["tutti-bench", "plot", "--out", "x.png"]).is_err());
        let cli =
            Cli::try_parse_from(["tutti-bench", "ordered", "--sweep-senders", "1,2,4,8", "--json"]).unwrap();
        match cli.command {
            Command::Ordered(a) => assert_eq!((a.sweep_senders, a.json), (Some(vec![1, 2, 4, 8]), true)),
            _ => panic!("wrong subcommand"),
        }
        let ordered =
            |extra: &[&str]| Cli::try_parse_from(["tutti-bench", "ordered"].iter().chain(extra).copied());
        assert!(ordered(&["--sweep-senders", "2", "--senders", "2"]).is_err());
        assert!(ordered(&["--sweep-senders", "0,1"]).is_err());
        assert!(ordered(&["--sweep-senders", "65"]).is_err());
        assert!(Cli::try_parse_from([
            "tutti-bench",
            "local-throughput",
            "--reps",
            "3",
            "--hlog",
            "t.hlog"
        ])
        .is_ok());
    }

    #[test]
    fn medians_and_cpu_per_million() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0]), 1.0, "the lower middle of an even count");
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(cpu_per_million(&[1.5, 0.25], 3_000_000), vec![0.5, 0.083]);
        assert_eq!(cpu_per_million(&[1.0], 0), vec![0.0]);
    }

    #[test]
    fn halving_a_round_trip_histogram_halves_its_percentiles() {
        let mut h = report::new_histogram();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        let half = halved(&h);
        assert_eq!(half.len(), h.len());
        for q in [0.5, 0.9, 0.99] {
            let (a, b) = (
                half.value_at_quantile(q) as f64,
                h.value_at_quantile(q) as f64 / 2.0,
            );
            assert!((a - b).abs() <= b * 0.002, "{q}: {a} vs {b}");
        }
    }
}
