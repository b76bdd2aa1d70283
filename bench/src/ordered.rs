//! The ordered-group benchmark: N `tuttid`s on 127.0.0.2.. in a cluster, one ordered group
//! with a subscriber on every daemon and `senders` publishers (on daemons 1, 2, ...), all
//! threads of this process. Messages carry the publisher, a sequence number and a
//! `CLOCK_MONOTONIC` stamp (the same clock for every thread and process), so each member
//! times publish to delivery in the total order.
//!
//! Two phases: latency (one message in flight from publisher 1: it waits until every member
//! delivered it), then throughput (every publisher offers as fast as its daemon takes
//! messages for `duration`; a refused offer is back pressure, retried). Throughput is what
//! the slowest member delivered per second over the window in which it delivered; every
//! member must deliver every message in one order (checked: the same order of
//! (publisher, seq) at every member, FIFO per publisher).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tutti_client::{Client, Event, GroupId, GroupOptions, IdleStrategy, OfferError, Rights};

use crate::clock;
use crate::cluster::node_ip;
use crate::daemon::{Daemon, DaemonOptions};
use crate::interrupt;
use crate::report::{new_histogram, Percentiles};
use crate::udp_floor::sleep_checked;

const GROUP: &str = "bench-ordered";
/// Publisher (u32), seq (u64), stamp (u64).
pub const MIN_SIZE: usize = 20;
const FORM_TIMEOUT: Duration = Duration::from_secs(30);
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
const OFFER_TIMEOUT: Duration = Duration::from_secs(10);
/// Delivery log of each daemon: 64 MiB (a member that falls a log behind would measure its
/// own scheduling).
const LOG_BYTES: usize = 64 << 20;
/// Seq bit of the latency phase's messages.
const LATENCY_BIT: u64 = 1 << 63;

pub struct OrderedOptions {
    pub tuttid: PathBuf,
    pub nodes: usize,
    pub senders: usize,
    pub size: usize,
    pub duration: Duration,
    pub latency_duration: Duration,
    pub safe: bool,
    pub base_port: u16,
    /// Most messages in flight (sent, not yet delivered at member 1), all publishers
    /// together; 0: no limit (the daemon's back pressure only).
    pub window: u64,
}

#[derive(Serialize)]
pub struct OrderedResult {
    pub bench: &'static str,
    pub nodes: usize,
    pub senders: usize,
    pub size: usize,
    pub safe: bool,
    /// Most messages in flight (0: the daemon's back pressure only).
    pub window: u64,
    /// One message in flight: publish on daemon 1 to delivery at each member, all members.
    pub latency: Percentiles,
    /// The same, per member (daemon 1, 2, ...): which hop each member waits for.
    pub member_latency: Vec<Percentiles>,
    /// Messages accepted from the publishers per second over the throughput window.
    pub offered_per_s: f64,
    /// Per member: messages delivered per second (first to last delivery of the window).
    pub delivered_per_s: Vec<f64>,
    /// The slowest member's figure.
    pub min_delivered_per_s: f64,
    /// Publish-to-delivery under load (every member, every message of the window).
    pub loaded_latency: Percentiles,
    /// Messages of the window each member delivered (all must equal `sent`).
    pub delivered: Vec<u64>,
    pub sent: u64,
    /// Every member delivered the same (publisher, seq) sequence.
    pub same_order: bool,
    /// CPU seconds (user + system) each daemon used in the throughput phase (to the last
    /// delivery), per million messages delivered: the cost of the order, less noisy than
    /// the rate on a shared machine.
    pub daemon_cpu_s_per_m: Vec<f64>,
    /// Their sum.
    pub cpu_s_per_m_total: f64,
}

struct Member {
    delivered: AtomicU64,
    /// The newest latency-phase seq delivered (+1; 0 = none).
    latency_seen: AtomicU64,
    result: Mutex<Option<MemberResult>>,
}

#[derive(Default)]
struct MemberResult {
    latency: Option<Histogram<u64>>,
    loaded: Option<Histogram<u64>>,
    /// (publisher, seq) of the throughput messages, in delivery order.
    order: Vec<(u32, u64)>,
    first_ns: u64,
    last_ns: u64,
}

fn stamp(msg: &mut [u8], publisher: u32, seq: u64) {
    msg[..4].copy_from_slice(&publisher.to_le_bytes());
    msg[4..12].copy_from_slice(&seq.to_le_bytes());
    msg[12..20].copy_from_slice(&clock::mono_ns().to_le_bytes());
}

fn unstamp(msg: &[u8]) -> Option<(u32, u64, u64)> {
    let p = u32::from_le_bytes(msg.get(..4)?.try_into().ok()?);
    let s = u64::from_le_bytes(msg.get(4..12)?.try_into().ok()?);
    let t = u64::from_le_bytes(msg.get(12..20)?.try_into().ok()?);
    Some((p, s, t))
}

fn config_text(o: &OrderedOptions, node: usize) -> String {
    let seeds: Vec<String> = (1..=o.nodes).map(|n| format!("\"{n}@{}\"", node_ip(n))).collect();
    format!(
        "node_id = {node}\nlog_bytes = {LOG_BYTES}\n[cluster]\nenabled = true\nseeds = [{}]\n[net]\nlisten = \"{}\"\nbase_port = {}\n",
        seeds.join(", "),
        node_ip(node),
        o.base_port,
    )
}

fn options(o: &OrderedOptions) -> GroupOptions {
    if o.safe {
        GroupOptions::SAFE
    } else {
        GroupOptions::ORDERED
    }
}

pub fn run(o: &OrderedOptions) -> Result<OrderedResult, String> {
    let mut daemons = Vec::with_capacity(o.nodes);
    for node in 1..=o.nodes {
        let config = config_text(o, node);
        daemons.push(
            Daemon::start(&DaemonOptions {
                tuttid: &o.tuttid,
                idle: "backoff",
                core: 0,
                no_pin: true,
                config: Some(&config),
            })
            .map_err(|e| format!("daemon {node} ({}): {e}", node_ip(node)))?,
        );
    }
    let r = run_with(o, &daemons);
    r.map_err(|e| {
        let logs: Vec<String> = daemons
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let status = Client::connect_to(d.socket())
                    .and_then(|mut c| c.status())
                    .unwrap_or_else(|e| e.to_string());
                format!("daemon {} status:\n{status}\nlog:\n{}", i + 1, d.log_tail())
            })
            .collect();
        format!("{e}\n{}", logs.join("\n"))
    })
}

/// A client on each of `daemons`, returned once every daemon's view holds all of them
/// (within `FORM_TIMEOUT`): a group's memory node is placed from the view at the join.
pub(crate) fn clients_in_one_view(daemons: &[Daemon]) -> Result<Vec<Client>, String> {
    let mut clients = daemons
        .iter()
        .map(|d| Client::connect_to(d.socket()).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let deadline = Instant::now() + FORM_TIMEOUT;
    while clients
        .iter_mut()
        .map(view_members)
        .collect::<Result<Vec<_>, _>>()?
        .iter()
        .any(|&m| m != daemons.len() as u64)
    {
        if Instant::now() > deadline {
            return Err(format!(
                "the {} daemons did not form one view in {FORM_TIMEOUT:?}",
                daemons.len()
            ));
        }
        sleep_checked(Duration::from_millis(50))?;
    }
    Ok(clients)
}

fn view_members(client: &mut Client) -> Result<u64, String> {
    let shards = client.counters().map_err(|e| format!("counters: {e}"))?;
    Ok(shards
        .iter()
        .flat_map(|s| s.values())
        .filter(|(n, _)| *n == "view_members")
        .map(|(_, v)| v)
        .max()
        .unwrap_or(0))
}

fn run_with(o: &OrderedOptions, daemons: &[Daemon]) -> Result<OrderedResult, String> {
    // Every daemon places the group's memory node from its cluster view when it joins:
    // join once all agree on the view of N.
    let _monitors = clients_in_one_view(daemons)?;
    let members: Vec<Member> = (0..o.nodes)
        .map(|_| Member {
            delivered: AtomicU64::new(0),
            latency_seen: AtomicU64::new(0),
            result: Mutex::new(None),
        })
        .collect();
    let ready = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let throughput_phase = AtomicBool::new(false);
    std::thread::scope(|s| -> Result<OrderedResult, String> {
        let mut subs = Vec::new();
        for (i, d) in daemons.iter().enumerate() {
            let (member, ready, stop, phase) = (&members[i], &ready, &stop, &throughput_phase);
            let socket = d.socket().to_path_buf();
            subs.push(s.spawn(move || subscribe(o, &socket, member, ready, stop, phase)));
            // One joiner at a time: each joins with a state transfer after the previous.
            let deadline = Instant::now() + JOIN_TIMEOUT;
            while ready.load(Ordering::Acquire) < i as u64 + 1 {
                if Instant::now() > deadline || stop.load(Ordering::Relaxed) {
                    stop.store(true, Ordering::Release);
                    return Err(format!("member {} did not join within {JOIN_TIMEOUT:?}", i + 1));
                }
                sleep_checked(Duration::from_millis(5))
                    .inspect_err(|_| stop.store(true, Ordering::Release))?;
            }
        }
        let result = publish_phases(o, daemons, &members, &throughput_phase);
        stop.store(true, Ordering::Release);
        for t in subs {
            t.join().map_err(|_| "subscriber panicked".to_string())??;
        }
        let (sent, offered_per_s, cpu) = result?;
        let per_m = |d: &Duration| {
            if sent == 0 {
                0.0
            } else {
                (d.as_secs_f64() * 1e6 / sent as f64 * 1000.0).round() / 1000.0
            }
        };
        let daemon_cpu_s_per_m: Vec<f64> = cpu.iter().map(per_m).collect();
        let mut latency = new_histogram();
        let mut member_latency = Vec::new();
        let mut loaded = new_histogram();
        let mut delivered_per_s = Vec::new();
        let mut delivered = Vec::new();
        let mut orders = Vec::new();
        for m in &members {
            let r = m.result.lock().unwrap().take().unwrap_or_default();
            if let Some(h) = &r.latency {
                latency.add(h).map_err(|e| e.to_string())?;
                member_latency.push(Percentiles::of(h));
            }
            if let Some(h) = &r.loaded {
                loaded.add(h).map_err(|e| e.to_string())?;
            }
            let window = r.last_ns.saturating_sub(r.first_ns) as f64 / 1e9;
            delivered.push(r.order.len() as u64);
            delivered_per_s.push(if window > 0.0 {
                (r.order.len() as f64 / window).round()
            } else {
                0.0
            });
            orders.push(r.order);
        }
        let same_order = orders.iter().all(|o| *o == orders[0]);
        Ok(OrderedResult {
            bench: "ordered",
            nodes: o.nodes,
            senders: o.senders,
            size: o.size,
            safe: o.safe,
            window: o.window,
            latency: Percentiles::of(&latency),
            member_latency,
            offered_per_s,
            min_delivered_per_s: delivered_per_s.iter().copied().fold(f64::INFINITY, f64::min),
            delivered_per_s,
            loaded_latency: Percentiles::of(&loaded),
            delivered,
            sent,
            same_order,
            cpu_s_per_m_total: (daemon_cpu_s_per_m.iter().sum::<f64>() * 1000.0).round() / 1000.0,
            daemon_cpu_s_per_m,
        })
    })
}

fn subscribe(
    o: &OrderedOptions,
    socket: &std::path::Path,
    member: &Member,
    ready: &AtomicU64,
    stop: &AtomicBool,
    throughput_phase: &AtomicBool,
) -> Result<(), String> {
    let fail = |e: String| {
        stop.store(true, Ordering::Release);
        e
    };
    let mut client = Client::connect_to(socket).map_err(|e| fail(e.to_string()))?;
    let g = client
        .join_with(GROUP, Rights::SUBSCRIBE, options(o))
        .map_err(|e| fail(format!("ordered join: {e}")))?;
    let mut r = MemberResult {
        latency: Some(new_histogram()),
        loaded: Some(new_histogram()),
        ..Default::default()
    };
    let mut joined = false;
    let mut error = None;
    while !stop.load(Ordering::Acquire) {
        client
            .poll_blocking(
                g,
                1024,
                IdleStrategy::Backoff,
                Duration::from_millis(20),
                |e| match e {
                    Event::View(v)
                        if !joined && v.members().count() == ready.load(Ordering::Relaxed) as usize + 1 =>
                    {
                        joined = true;
                        ready.fetch_add(1, Ordering::AcqRel);
                    }
                    Event::Message { payload, .. } => {
                        let now = clock::mono_ns();
                        let Some((p, seq, sent)) = unstamp(payload) else {
                            error = Some("a message without a stamp".to_string());
                            return;
                        };
                        let ns = now.saturating_sub(sent);
                        if seq & LATENCY_BIT != 0 {
                            if let Some(h) = r.latency.as_mut() {
                                h.saturating_record(ns);
                            }
                            member
                                .latency_seen
                                .store((seq & !LATENCY_BIT) + 1, Ordering::Release);
                        } else if throughput_phase.load(Ordering::Relaxed) {
                            if r.order.is_empty() {
                                r.first_ns = now;
                            }
                            r.last_ns = now;
                            r.order.push((p, seq));
                            if let Some(h) = r.loaded.as_mut() {
                                h.saturating_record(ns);
                            }
                            member.delivered.fetch_add(1, Ordering::Release);
                        }
                    }
                    Event::Lagged { missed } => error = Some(format!("lagged by {missed}")),
                    _ => {}
                },
            )
            .map_err(|e| fail(format!("poll: {e}")))?;
        if let Some(e) = error.take() {
            return Err(fail(e));
        }
    }
    *member.result.lock().unwrap() = Some(r);
    Ok(())
}

fn offer(client: &mut Client, g: GroupId, msg: &[u8]) -> Result<(), String> {
    match client.offer_blocking(g, msg, IdleStrategy::Backoff, OFFER_TIMEOUT) {
        Ok(()) => Ok(()),
        Err(OfferError::BackPressured) => Err(format!("the daemon took nothing for {OFFER_TIMEOUT:?}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Runs the latency then the throughput phase; returns (messages sent, offered per second).
fn publish_phases(
    o: &OrderedOptions,
    daemons: &[Daemon],
    members: &[Member],
    throughput_phase: &AtomicBool,
) -> Result<(u64, f64, Vec<Duration>), String> {
    let pids: Vec<u32> = daemons.iter().map(Daemon::pid).collect();
    let cpu_times =
        || -> Result<Vec<Duration>, String> { pids.iter().map(|&p| crate::daemon::cpu_time(p)).collect() };
    let mut publishers = Vec::new();
    for i in 0..o.senders {
        let d = &daemons[i % daemons.len()];
        let mut c = Client::connect_to(d.socket()).map_err(|e| e.to_string())?;
        let g = c
            .join_with(GROUP, Rights::PUBLISH, options(o))
            .map_err(|e| format!("publisher {}: {e}", i + 1))?;
        publishers.push((c, g));
    }
    // Latency: one in flight from publisher 1, until every member delivered it.
    let mut msg = vec![0u8; o.size];
    let (c, g) = &mut publishers[0];
    let end = Instant::now() + o.latency_duration;
    let mut seq = 0u64;
    while Instant::now() < end {
        interrupt::check()?;
        stamp(&mut msg, 0, seq | LATENCY_BIT);
        offer(c, *g, &msg)?;
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while members
            .iter()
            .any(|m| m.latency_seen.load(Ordering::Acquire) <= seq)
        {
            if Instant::now() > deadline {
                return Err(format!(
                    "latency message {seq} not delivered everywhere in {DRAIN_TIMEOUT:?}"
                ));
            }
            std::hint::spin_loop();
            std::thread::yield_now();
        }
        seq += 1;
    }
    // Throughput: every publisher as fast as its daemon takes messages.
    throughput_phase.store(true, Ordering::Release);
    let cpu_before = cpu_times()?;
    let started = Instant::now();
    let in_flight_sent = AtomicU64::new(0);
    let sent: Vec<u64> = std::thread::scope(|s| {
        let in_flight_sent = &in_flight_sent;
        let threads: Vec<_> = publishers
            .iter_mut()
            .enumerate()
            .map(|(p, (c, g))| {
                s.spawn(move || -> Result<u64, String> {
                    let mut msg = vec![0u8; o.size];
                    let mut seq = 0u64;
                    while started.elapsed() < o.duration {
                        interrupt::check()?;
                        if o.window > 0
                            && in_flight_sent.load(Ordering::Relaxed)
                                >= members[0].delivered.load(Ordering::Acquire) + o.window
                        {
                            std::thread::yield_now();
                            continue;
                        }
                        in_flight_sent.fetch_add(1, Ordering::Relaxed);
                        stamp(&mut msg, p as u32, seq);
                        offer(c, *g, &msg)?;
                        seq += 1;
                    }
                    Ok(seq)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().map_err(|_| "publisher panicked".to_string())?)
            .collect::<Result<Vec<_>, _>>()
    })?;
    let window = started.elapsed().as_secs_f64();
    let total: u64 = sent.iter().sum();
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while members
        .iter()
        .any(|m| m.delivered.load(Ordering::Acquire) < total)
    {
        if Instant::now() > deadline {
            let got: Vec<u64> = members
                .iter()
                .map(|m| m.delivered.load(Ordering::Relaxed))
                .collect();
            // The ordered lines of each daemon's status, while the group still lives.
            let detail: Vec<String> = daemons
                .iter()
                .map(|d| {
                    let status = Client::connect_to(d.socket())
                        .and_then(|mut c| c.status())
                        .unwrap_or_else(|e| e.to_string());
                    let lines: Vec<&str> = status
                        .lines()
                        .skip_while(|l| !l.contains("ordered:"))
                        .take(2)
                        .collect();
                    lines.join("\n")
                })
                .collect();
            return Err(format!(
                "after {DRAIN_TIMEOUT:?} the members delivered {got:?} of {total}\n{}",
                detail.join("\n")
            ));
        }
        sleep_checked(Duration::from_millis(10))?;
    }
    let cpu = cpu_times()?
        .iter()
        .zip(&cpu_before)
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    Ok((total, (total as f64 / window).round(), cpu))
}

pub fn print_table(r: &OrderedResult) {
    let us = |ns: u64| format!("{:.1} us", ns as f64 / 1e3);
    println!(
        "ordered group: {} daemons, {} sender(s), {} B messages{}",
        r.nodes,
        r.senders,
        r.size,
        if r.safe { ", safe" } else { "" }
    );
    println!(
        "  latency (1 in flight, every member): p50 {}  p99 {}  max {}  ({} samples)",
        us(r.latency.p50_ns),
        us(r.latency.p99_ns),
        us(r.latency.max_ns),
        r.latency.samples
    );
    let p50s: Vec<String> = r.member_latency.iter().map(|p| us(p.p50_ns)).collect();
    println!("  latency p50 per member (daemon 1, 2, ...): {}", p50s.join(", "));
    println!(
        "  throughput: offered {:.0} msg/s; delivered per member {:?} msg/s (slowest {:.0})",
        r.offered_per_s, r.delivered_per_s, r.min_delivered_per_s
    );
    println!(
        "  latency under load: p50 {}  p99 {}  max {}",
        us(r.loaded_latency.p50_ns),
        us(r.loaded_latency.p99_ns),
        us(r.loaded_latency.max_ns)
    );
    println!(
        "  {} messages sent, delivered {:?}; same order at every member: {}",
        r.sent, r.delivered, r.same_order
    );
    println!(
        "  daemon CPU seconds per million messages (throughput phase): {:?}, total {}",
        r.daemon_cpu_s_per_m, r.cpu_s_per_m_total
    );
}

/// The SinfoniaGCS curve: throughput against the number of writers.
#[derive(Serialize)]
pub struct OrderedSweep {
    pub bench: &'static str,
    pub nodes: usize,
    pub size: usize,
    pub safe: bool,
    pub window: u64,
    /// Seconds of throughput per point.
    pub duration_s: f64,
    /// One run per publisher count, in the order asked.
    pub points: Vec<OrderedResult>,
}

/// Runs the benchmark once per publisher count in `senders`, each on a fresh cluster (a
/// point does not inherit the previous one's group, queues or backlog).
pub fn sweep(o: &OrderedOptions, senders: &[u64]) -> Result<OrderedSweep, String> {
    let mut points = Vec::with_capacity(senders.len());
    for &w in senders {
        let point = OrderedOptions {
            tuttid: o.tuttid.clone(),
            senders: w as usize,
            ..*o
        };
        points.push(run(&point).map_err(|e| format!("{w} sender(s): {e}"))?);
    }
    Ok(OrderedSweep {
        bench: "ordered-sweep",
        nodes: o.nodes,
        size: o.size,
        safe: o.safe,
        window: o.window,
        duration_s: o.duration.as_secs_f64(),
        points,
    })
}

pub fn print_sweep(s: &OrderedSweep) {
    let us = |ns: u64| format!("{:.1}", ns as f64 / 1e3);
    println!(
        "ordered group, throughput against writers: {} daemons, {} B messages{}, {:.1} s per point{}",
        s.nodes,
        s.size,
        if s.safe { ", safe" } else { "" },
        s.duration_s,
        if s.window > 0 {
            format!(", window {}", s.window)
        } else {
            String::new()
        }
    );
    println!(
        "  {:>7}  {:>14}  {:>12}  {:>14}  {:>14}  {:>10}",
        "senders", "delivered/s", "offered/s", "load p50 (us)", "load p99 (us)", "same order"
    );
    for p in &s.points {
        println!(
            "  {:>7}  {:>14.0}  {:>12.0}  {:>14}  {:>14}  {:>10}",
            p.senders,
            p.min_delivered_per_s,
            p.offered_per_s,
            us(p.loaded_latency.p50_ns),
            us(p.loaded_latency.p99_ns),
            p.same_order
        );
    }
    println!("  (delivered/s: the slowest member's delivery rate over the throughput window)");
}
