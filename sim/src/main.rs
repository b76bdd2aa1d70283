//! `tutti-sim`: run one simulated scenario and print a summary (or one JSON object).

use clap::Parser;
use std::time::Instant;
use tutti_proto::{Delivery, NodeId, MILLIS};
use tutti_sim::sim::run_with_baseline;
use tutti_sim::sim::Rejoin;
use tutti_sim::{Crash, HostileAttack, Partition, Scenario};

/// Run tutti's protocols (membership + bimodal multicast) over a simulated network from a
/// seed, check the invariants, and print what happened. The same seed gives the same run.
#[derive(Parser, Debug)]
#[command(name = "tutti-sim", version)]
struct Args {
    /// Number of nodes (daemons).
    #[arg(long, default_value_t = 16)]
    nodes: u32,
    /// Messages to multicast in total.
    #[arg(long, default_value_t = 100)]
    messages: u64,
    /// Number of sending nodes (messages are split evenly).
    #[arg(long, default_value_t = 1)]
    senders: u32,
    /// Datagram loss probability on every link (0.0-1.0).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Seed: the same seed reproduces the same run.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of perturbed members (the last K nodes; they lose --perturb-fraction of
    /// their time). Also runs the unperturbed baseline and reports healthy_throughput_ratio.
    #[arg(long, default_value_t = 0)]
    perturbed: u32,
    /// Fraction of time a perturbed member loses.
    #[arg(long, default_value_t = 0.5)]
    perturb_fraction: f64,
    /// Partition START_MS:DURATION_MS:FRACTION (relative to the workload start): the first
    /// FRACTION of the nodes are cut off from the rest, then healed. Repeatable.
    #[arg(long)]
    partition: Vec<String>,
    /// Crash NODE:AT_MS[:RESTART_MS] (relative to the workload start). Repeatable.
    #[arg(long)]
    crash: Vec<String>,
    /// Crash this many nodes (spread evenly over the ids, never node 0 or a sender) at
    /// --crash-at-ms, for good: measures failure detection (report: crash_removal_ms_*).
    #[arg(long, default_value_t = 0)]
    crash_count: u32,
    /// Membership only: nodes join no group and nothing is multicast (failure detection
    /// and views at sizes whose multicast state would not fit; use with --messages 0).
    #[arg(long)]
    membership_only: bool,
    /// Keep the run going at least this long after the workload start (ms): e.g. to count
    /// false suspicions over a stretch of simulated time.
    #[arg(long, default_value_t = 0)]
    run_ms: u64,
    /// When the --crash-count nodes crash (relative to the workload start).
    #[arg(long, default_value_t = 200)]
    crash_at_ms: u64,
    /// Datagram duplication probability.
    #[arg(long, default_value_t = 0.0)]
    duplicate: f64,
    /// Probability that a datagram is delayed by up to 2 ms more (reordering).
    #[arg(long, default_value_t = 0.0)]
    reorder: f64,
    /// Total submit rate in messages per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Payload size in bytes (at least 8).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Largest payload: each message's size is drawn in [--payload, --payload-max].
    /// Messages larger than one datagram are sent in fragments.
    #[arg(long)]
    payload_max: Option<usize>,
    /// Client sessions per sender, publishing in turns (each message carries its session).
    #[arg(long, default_value_t = 1)]
    sessions: u32,
    /// Group budget: bytes a member keeps for repair in the group (Settings::group_budget_bytes).
    #[arg(long)]
    budget_bytes: Option<usize>,
    /// Node budget: bytes a node keeps for repair in all groups (Settings::node_budget_bytes).
    #[arg(long)]
    node_budget_bytes: Option<usize>,
    /// How long a group stays joined after the application leaves it (Settings::linger).
    #[arg(long)]
    linger_ms: Option<u64>,
    /// Rounds the coordinator probes a member it holds failed before a view drops it
    /// (Settings::removal_check_rounds; 0: no check).
    #[arg(long)]
    removal_check_rounds: Option<u32>,
    /// Largest datagram in bytes (Settings::max_datagram); a larger one built is a violation.
    #[arg(long)]
    max_datagram: Option<usize>,
    /// Gossip rounds a message is kept for repair (Settings::retention_rounds).
    #[arg(long)]
    retention_rounds: Option<u32>,
    /// Time before a missing message is requested again (Settings::rerequest_after).
    #[arg(long)]
    rerequest_ms: Option<u64>,
    /// Bytes a node retransmits per round (Settings::retransmit_budget_bytes).
    #[arg(long)]
    retransmit_budget_bytes: Option<usize>,
    /// The application on NODE leaves the group at LEAVE_MS and joins it again at JOIN_MS
    /// (relative to the workload start; never without JOIN_MS). Repeatable.
    #[arg(long)]
    rejoin: Vec<String>,
    /// NODE leaves the cluster on purpose (shutdown) at AT_MS: NODE:AT_MS. Repeatable.
    #[arg(long)]
    shutdown: Vec<String>,
    /// Deliver on first receipt instead of FIFO per sender.
    #[arg(long)]
    unordered: bool,
    /// Stage-1 tree fan-out.
    #[arg(long)]
    tree_fanout: Option<usize>,
    /// Gossip fan-out.
    #[arg(long)]
    gossip_fanout: Option<usize>,
    /// Check membership convergence this long after the last fault (default: the stated
    /// bound, 2 x effective suspicion timeout + 30 gossip rounds).
    #[arg(long)]
    convergence_bound_ms: Option<u64>,
    /// Per-sender entries per gossip digest.
    #[arg(long)]
    digest_entries: Option<usize>,
    /// NODE is a hostile member: it runs the protocol and, while the workload is sent,
    /// sends honest members well-formed malicious datagrams under its own id (an
    /// authenticated insider). Its own deliveries are not checked. Repeatable.
    #[arg(long)]
    hostile: Vec<String>,
    /// The attacks hostile members make, in turn (comma-separated): huge-request,
    /// max-counter, far-seq, huge-high, invented-peers, invented-senders, forged-view,
    /// higher-incarnation, leaving, forge-ahead. Default: all but forge-ahead (a forgery
    /// of another member's data that no shared cluster key can refuse).
    #[arg(long, value_delimiter = ',')]
    hostile_attacks: Vec<String>,
    /// Print one JSON object instead of a text summary.
    #[arg(long)]
    json: bool,
    /// Run the ordered-group world instead: K ordered groups hosted in the nodes (their
    /// memory nodes too), several senders each, a member crash, a memory-node primary
    /// crash (promotion) and a join with state transfer, over --loss and --duplicate;
    /// checks total order, sender FIFO, virtual synchrony, state transfer and liveness.
    /// Uses --nodes (default here 6 if left at 16), --seed, --loss, --duplicate.
    #[arg(long)]
    ordered_groups: Option<u32>,
    /// Run the `evs` world instead (`--partition-policy evs`): one ordered group under
    /// partition policy `evs` on 3-5 nodes, cut into two sides and healed once or twice
    /// while every node sends, in half the seeds with a node's crash and mostly its restart
    /// (all drawn from --seed; `TUTTI_SIM_EVS_TRACE=1` prints the configurations); checks
    /// extended virtual synchrony
    /// (no duplicate, FIFO, total order per configuration, virtual synchrony per
    /// transition, the same first configuration at a merge) and liveness.
    #[arg(long, value_name = "POLICY")]
    partition_policy: Option<String>,
    /// With --ordered-groups: members per group at the start.
    #[arg(long, default_value_t = 4)]
    ordered_members: u32,
    /// With --ordered-groups: messages each member submits per millisecond while sending.
    #[arg(long, default_value_t = 1)]
    ordered_rate: u32,
    /// With --ordered-groups: milliseconds of sending.
    #[arg(long, default_value_t = 300)]
    ordered_send_ms: u64,
    /// With --ordered-groups: draw every fault and workload knob from --seed instead.
    #[arg(long)]
    ordered_random: bool,
    /// With --ordered-groups: no crash and no join (loss and duplication only).
    #[arg(long)]
    ordered_no_faults: bool,
    /// With --ordered-groups: a deliberately broken application, to see a check fail:
    /// total-order, fifo, virtual-synchrony, state-transfer or liveness.
    #[arg(long)]
    ordered_break: Option<String>,
}

fn run_evs(args: &Args) -> ! {
    use tutti_sim::evs::{EvsScenario, EvsSim};
    let sc = EvsScenario::random(args.seed);
    let desc = sc.describe();
    let (r, wall) = timed(|| EvsSim::new(sc).run());
    let scenario = [("scenario", desc.clone().into())];
    print_report(args.json, &r, wall, scenario, &[], |r| {
        println!("tutti-sim evs: seed {}: {desc}", r.seed);
        println!(
            "  invariant violations     {} {:?}",
            r.violations.total(),
            r.violations
        );
        for s in &r.samples {
            println!("    {s}");
        }
        println!(
            "  submitted {} (refused {}), deliveries {}, configurations {} (transitional {}), unconfirmed {}",
            r.submitted, r.refused, r.deliveries, r.configurations, r.transitional, r.unconfirmed
        );
        println!("  wall time {wall:.2} s");
    });
    std::process::exit(i32::from(r.violations.total() > 0));
}

fn run_ordered(args: &Args, groups: u32) -> ! {
    use tutti_sim::ordered::{Break, OrderedScenario, OrderedSim};
    let mut sc = if args.ordered_random {
        OrderedScenario::random(args.seed)
    } else {
        let mut sc = OrderedScenario::new(args.seed, groups.max(1));
        sc.nodes = if args.nodes == 16 { 7 } else { args.nodes };
        sc.members = args.ordered_members.clamp(1, sc.nodes);
        sc.loss = args.loss;
        sc.duplicate = args.duplicate;
        sc.rate = args.ordered_rate.max(1);
        sc.send_for = args.ordered_send_ms * MILLIS;
        if sc.crash_primary.is_some() && sc.crash_promoted {
            sc.send_for += tutti_sim::ordered::PROMOTED_SEND_EXTRA;
        }
        if args.ordered_no_faults {
            sc.crash_member = None;
            sc.crash_primary = None;
            sc.join_at = None;
        }
        sc
    };
    if let Some(b) = &args.ordered_break {
        match Break::parse(b) {
            Some(b) => sc.brk = Some(b),
            None => {
                eprintln!("tutti-sim: --ordered-break {b:?}: expected total-order, fifo, virtual-synchrony, state-transfer or liveness");
                std::process::exit(2);
            }
        }
    }
    if sc.nodes < 2 || sc.nodes > 64 {
        eprintln!(
            "tutti-sim: --nodes {} with --ordered-groups: must be in 2..=64",
            sc.nodes
        );
        std::process::exit(2);
    }
    let desc = sc.describe();
    let (r, wall) = timed(|| OrderedSim::new(sc).run());
    let scenario = [("scenario", desc.clone().into())];
    print_report(args.json, &r, wall, scenario, &[], |r| {
        println!("tutti-sim ordered: seed {}: {desc}", r.seed);
        println!(
            "  invariant violations     {} {:?}",
            r.invariant_violations, r.violations
        );
        for v in &r.violation_samples {
            println!("    - {v}");
        }
        println!(
            "  ordered messages         {} of {} submitted, {} deliveries, {:.0} msg/s of simulated time",
            r.ordered_messages, r.submitted, r.deliveries, r.ordered_per_sim_second
        );
        println!(
            "  views {} installs {} removals {} promotions {} minority events {} crashed {:?}",
            r.views, r.installs, r.removals, r.promotions, r.minority_events, r.crashed
        );
        println!(
            "  re-backups               {} state transfers completed ({} snapshot bytes); promoted primary crashed {} (spared {}), {:?} ms from the first crash to its new backup holding everything",
            r.transfers_completed, r.transfer_bytes, r.promoted_crashed, r.promoted_spared, r.rebackup_ms
        );
        println!(
            "  datagrams                {} ({} bytes, largest {} of max {})",
            r.datagrams, r.datagram_bytes, r.largest_datagram, r.max_datagram
        );
        println!(
            "  liveness checked {}, sim time {:.0} ms, wall {:.2} s, trace {}",
            r.liveness_checked, r.sim_time_ms, wall, r.trace_hash
        );
    });
    std::process::exit(if r.invariant_violations > 0 { 1 } else { 0 });
}

/// `run`'s result and the wall-clock seconds it took.
fn timed<R>(run: impl FnOnce() -> R) -> (R, f64) {
    let started = Instant::now();
    let r = run();
    (r, started.elapsed().as_secs_f64())
}

/// Prints a run's report: under --json one JSON object (the report's fields, `wall_seconds`
/// and `extra`, without the fields of `omit_if_null` that are null), else the text `text`
/// prints.
fn print_report<R: serde::Serialize>(
    json: bool,
    report: &R,
    wall: f64,
    extra: impl IntoIterator<Item = (&'static str, serde_json::Value)>,
    omit_if_null: &[&str],
    text: impl FnOnce(&R),
) {
    if !json {
        text(report);
        return;
    }
    let mut v = serde_json::to_value(report).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("wall_seconds".into(), wall.into());
        o.extend(extra.into_iter().map(|(k, x)| (k.to_string(), x)));
        for k in omit_if_null {
            if o.get(*k).is_some_and(serde_json::Value::is_null) {
                o.remove(*k);
            }
        }
    }
    println!("{v}");
}

fn parse_ms(s: &str, what: &str) -> Result<u64, String> {
    s.parse::<u64>()
        .map(|v| v * MILLIS)
        .map_err(|e| format!("{what}: {s:?} is not a number of milliseconds ({e})"))
}

fn build(a: &Args) -> Result<Scenario, String> {
    if a.nodes == 0 {
        return Err("--nodes must be at least 1".into());
    }
    let mut sc = Scenario::new(a.nodes, a.messages, a.senders, a.loss, a.seed);
    sc.duplicate = a.duplicate;
    sc.reorder = a.reorder;
    sc.rate = a.rate.max(1);
    sc.payload = a.payload.max(8);
    sc.perturb_fraction = a.perturb_fraction;
    sc.perturbed = (a.nodes.saturating_sub(a.perturbed)..a.nodes).collect();
    if a.unordered {
        sc.settings.delivery = Delivery::Unordered;
    }
    if let Some(k) = a.tree_fanout {
        sc.settings.tree_fanout = k.max(1);
    }
    sc.convergence_bound_override = a.convergence_bound_ms.map(|m| m * MILLIS);
    if let Some(k) = a.digest_entries {
        sc.settings.digest_entries = k.max(1);
    }
    if let Some(k) = a.gossip_fanout {
        sc.settings.gossip_fanout = k.max(1);
    }
    sc.payload_max = a.payload_max.unwrap_or(0);
    sc.sessions = a.sessions.max(1);
    if let Some(b) = a.budget_bytes {
        sc.settings.group_budget_bytes = b;
    }
    if let Some(b) = a.node_budget_bytes {
        sc.settings.node_budget_bytes = b;
    }
    if let Some(ms) = a.linger_ms {
        sc.settings.linger = ms * MILLIS;
    }
    if let Some(r) = a.removal_check_rounds {
        sc.settings.removal_check_rounds = r;
    }
    if let Some(d) = a.max_datagram {
        if !(256..=tutti_wire::packet::MAX_DATAGRAM).contains(&d) {
            return Err(format!(
                "--max-datagram {d}: must be in 256..={}",
                tutti_wire::packet::MAX_DATAGRAM
            ));
        }
        sc.settings.max_datagram = d;
    }
    if let Some(r) = a.retention_rounds {
        sc.settings.retention_rounds = r.max(1);
    }
    if let Some(ms) = a.rerequest_ms {
        sc.settings.rerequest_after = ms * MILLIS;
    }
    if let Some(b) = a.retransmit_budget_bytes {
        sc.settings.retransmit_budget_bytes = b;
    }
    if sc.payload.max(sc.payload_max) > sc.settings.max_message {
        return Err(format!(
            "payloads up to {} bytes exceed max_message {}",
            sc.payload.max(sc.payload_max),
            sc.settings.max_message
        ));
    }
    let node_arg = |what: &str, v: &str| -> Result<NodeId, String> {
        let n: NodeId = v.parse().map_err(|e| format!("{what} node {v:?}: {e}"))?;
        if n >= a.nodes {
            return Err(format!("{what} node {n} does not exist (--nodes {})", a.nodes));
        }
        Ok(n)
    };
    for r in &a.rejoin {
        let parts: Vec<&str> = r.split(':').collect();
        if parts.len() < 2 || parts.len() > 3 {
            return Err(format!("--rejoin {r:?}: expected NODE:LEAVE_MS[:JOIN_MS]"));
        }
        let leave = parse_ms(parts[1], "--rejoin leave")?;
        let join = parts.get(2).map(|j| parse_ms(j, "--rejoin join")).transpose()?;
        if join.is_some_and(|j| j <= leave) {
            return Err(format!("--rejoin {r:?}: JOIN_MS must come after LEAVE_MS"));
        }
        sc.rejoins.push(Rejoin {
            node: node_arg("--rejoin", parts[0])?,
            leave,
            join,
        });
    }
    for h in &a.hostile {
        sc.hostile.push(node_arg("--hostile", h)?);
    }
    if !a.hostile_attacks.is_empty() {
        sc.hostile_attacks = a
            .hostile_attacks
            .iter()
            .map(|s| {
                HostileAttack::parse(s).ok_or_else(|| format!("--hostile-attacks: unknown attack {s:?}"))
            })
            .collect::<Result<_, _>>()?;
    }
    for c in &a.shutdown {
        let Some((node, at)) = c.split_once(':') else {
            return Err(format!("--shutdown {c:?}: expected NODE:AT_MS"));
        };
        sc.crashes.push(Crash {
            node: node_arg("--shutdown", node)?,
            at: parse_ms(at, "--shutdown time")?,
            restart: None,
            leave: true,
        });
    }
    for p in &a.partition {
        let parts: Vec<&str> = p.split(':').collect();
        let [start, dur, frac] = parts[..] else {
            return Err(format!(
                "--partition {p:?}: expected START_MS:DURATION_MS:FRACTION"
            ));
        };
        let start = parse_ms(start, "--partition start")?;
        let dur = parse_ms(dur, "--partition duration")?;
        let frac: f64 = frac
            .parse()
            .map_err(|e| format!("--partition fraction {frac:?}: {e}"))?;
        let k = ((f64::from(a.nodes) * frac).round() as u32).clamp(1, a.nodes);
        sc.partitions.push(Partition {
            start,
            end: start + dur,
            side: (0..k).collect::<Vec<NodeId>>(),
        });
    }
    for c in &a.crash {
        let parts: Vec<&str> = c.split(':').collect();
        if parts.len() < 2 || parts.len() > 3 {
            return Err(format!("--crash {c:?}: expected NODE:AT_MS[:RESTART_MS]"));
        }
        let node: NodeId = parts[0]
            .parse()
            .map_err(|e| format!("--crash node {:?}: {e}", parts[0]))?;
        if node >= a.nodes {
            return Err(format!(
                "--crash node {node} does not exist (--nodes {})",
                a.nodes
            ));
        }
        sc.crashes.push(Crash {
            node,
            at: parse_ms(parts[1], "--crash time")?,
            restart: parts.get(2).map(|r| parse_ms(r, "--crash restart")).transpose()?,
            leave: false,
        });
    }
    if a.membership_only && a.messages > 0 {
        return Err("--membership-only multicasts nothing: use it with --messages 0".into());
    }
    sc.membership_only = a.membership_only;
    sc.min_run = a.run_ms * MILLIS;
    if a.crash_count > 0 {
        let first = a.senders.max(1);
        let span = a.nodes.saturating_sub(first);
        if a.crash_count > span {
            return Err(format!(
                "--crash-count {} exceeds the {span} nodes that are neither node 0 nor a sender",
                a.crash_count
            ));
        }
        for k in 0..a.crash_count {
            let node = first + (u64::from(k) * u64::from(span) / u64::from(a.crash_count)) as u32;
            sc.crashes.push(Crash {
                node,
                at: a.crash_at_ms * MILLIS,
                restart: None,
                leave: false,
            });
        }
    }
    Ok(sc)
}

fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn main() {
    let args = Args::parse();
    match args.partition_policy.as_deref() {
        Some("evs") => run_evs(&args),
        Some("majority") | None => {}
        Some(other) => {
            eprintln!("tutti-sim: --partition-policy {other:?}: expected evs (majority is --ordered-groups)");
            std::process::exit(2);
        }
    }
    if let Some(k) = args.ordered_groups {
        run_ordered(&args, k);
    }
    let sc = match build(&args) {
        Ok(sc) => sc,
        Err(e) => {
            eprintln!("tutti-sim: {e}");
            std::process::exit(2);
        }
    };
    let (report, wall) = timed(|| run_with_baseline(&sc));
    let rss = peak_rss_kib();
    let peak_rss = [("peak_rss_mib", rss.map(|k| k as f64 / 1024.0).into())];
    print_report(
        args.json,
        &report,
        wall,
        peak_rss,
        &["healthy_throughput_ratio"],
        |report| {
            println!(
                "tutti-sim: {} nodes, {} messages from {} senders, loss {}, seed {}",
                report.nodes, report.messages, report.senders, report.loss, report.seed
            );
            println!("  invariant violations     {}", report.invariant_violations);
            for v in &report.violation_samples {
                println!("    - {v}");
            }
            println!(
                "  delivered to all         {:.5} of messages",
                report.delivered_all_fraction
            );
            println!("  mean delivery ratio      {:.5}", report.mean_delivery_ratio);
            println!(
                "  delivery histogram       {:?} (deciles, last = 100%)",
                report.delivery_fraction_histogram
            );
            println!(
                "  rounds to all p50 / p99  {:.2} / {:.2}",
                report.rounds_p50, report.rounds_p99
            );
            println!(
                "  datagrams per delivery   {:.3} ({} datagrams, {} deliveries)",
                report.datagrams_per_delivery, report.datagrams, report.deliveries
            );
            println!("  messages by kind         {:?}", report.messages_by_kind);
            println!("  lost reported            {}", report.lost_reported);
            println!(
                "  retained bytes max       {} (budget pressure: {})",
                report.retained_bytes_max, report.budget_pressure
            );
            println!(
                "  streams                  {} ({} messages in streams after a restart or rejoin)",
                report.streams.len(),
                report
                    .streams
                    .iter()
                    .filter(|s| s.1 > 1
                        || report
                            .streams
                            .iter()
                            .any(|o| o.0 == s.0 && o.1 == s.1 && o.2 != s.2))
                    .map(|s| s.3)
                    .sum::<u64>()
            );
            println!(
                "  checks                   complete delivery {}, bimodal {}, oversize datagrams {}",
                report.complete_delivery_checked, report.bimodal_checked, report.oversize_datagrams
            );
            println!("  coverage                 {:?}", report.coverage);
            if report.hostile_attacks > 0 {
                println!(
                    "  hostile attacks          {} ({} datagrams)",
                    report.hostile_attacks, report.hostile_datagrams
                );
            }
            if let Some(c) = report.view_converged {
                println!("  views converged          {c}");
            }
            if let Some(r) = report.healthy_throughput_ratio {
                println!("  healthy throughput ratio {r:.4}");
            }
            println!(
                "  state bytes per node     mean {:.0}, max {}",
                report.state_bytes_per_node_mean, report.state_bytes_per_node_max
            );
            println!(
                "  bootstrap {:.0} ms, sim time {:.0} ms, {} events, wall {:.2} s, peak RSS {} MiB, trace {}",
                report.bootstrap_ms,
                report.sim_time_ms,
                report.events,
                wall,
                rss.map(|k| k / 1024).unwrap_or(0),
                report.trace_hash
            );
        },
    );
    if report.invariant_violations > 0 {
        std::process::exit(1);
    }
}
