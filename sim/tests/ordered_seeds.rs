//! Ordered groups in the simulator over many seeds: Nodes hosting ordered groups and their
//! memory nodes, random loss, duplication, latency, batch sizes, safe shares, member
//! crashes, memory-node primary crashes (promotion) and joins with state transfer.
//! `TUTTI_SIM_ORDERED_SEEDS=N` runs N seeds (default 200 in a release build, 20 in a debug
//! one); `TUTTI_SIM_ORDERED_FIRST_SEED` moves the range.

use tutti_sim::ordered::{regions_scenario, Break, OrderedScenario, OrderedSim};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Sweep {
    failures: Vec<String>,
    stalled: Vec<u64>,
    messages: u64,
    installs: u64,
    restarts: u64,
    promotions: u64,
}

/// Runs the seeds; `failures` are runs that broke a safety check (total order, FIFO,
/// virtual synchrony, state transfer, datagram size), `stalled` runs whose liveness
/// check failed.
fn sweep() -> Sweep {
    let n = env(
        "TUTTI_SIM_ORDERED_SEEDS",
        if cfg!(debug_assertions) { 20 } else { 200 },
    );
    let first = env("TUTTI_SIM_ORDERED_FIRST_SEED", 0);
    let mut s = Sweep {
        failures: Vec::new(),
        stalled: Vec::new(),
        messages: 0,
        installs: 0,
        restarts: 0,
        promotions: 0,
    };
    for seed in first..first + n {
        let sc = OrderedScenario::random(seed);
        let desc = sc.describe();
        let r = OrderedSim::new(sc).run();
        s.messages += r.ordered_messages;
        s.installs += r.installs;
        s.restarts += r.restarts;
        s.promotions += r.promotions;
        if r.invariant_violations > r.violations.liveness {
            s.failures
                .push(format!("seed {seed}: {desc}\n    {:?}", r.violation_samples));
        }
        if r.violations.liveness > 0 {
            s.stalled.push(seed);
        }
    }
    eprintln!(
        "{n} ordered seeds: {} break safety, {} stall {:?}; {} messages ordered, {} state transfers, {} restarts, {} promotions",
        s.failures.len(),
        s.stalled.len(),
        s.stalled,
        s.messages,
        s.installs,
        s.restarts,
        s.promotions
    );
    s
}

/// Safety and liveness over every seed, in one sweep (two tests ran it twice). A group
/// whose state holders all crashed while the others joined restarts
/// (`a_group_whose_state_holders_all_crashed_goes_on`); joiners never wait for each other
/// (`joiners_never_wait_for_each_other`). For a 2,000-seed sweep in chunks that names
/// each failing seed: `cargo run --release -p tutti-sim --example ordered_sweep -- 0 2000`.
#[test]
fn ordered_seed_sweep_holds_every_invariant_and_is_live() {
    let s = sweep();
    assert!(
        s.failures.is_empty(),
        "{} failing seeds:\n{}",
        s.failures.len(),
        s.failures.join("\n")
    );
    assert!(s.installs > 0 && s.promotions > 0 && s.messages > 0);
    assert!(s.stalled.is_empty(), "stalled seeds: {:?}", s.stalled);
}

/// Runs `seeds`: no safety check may fail; returns the seeds that stalled.
fn stalled_among(seeds: &[u64]) -> Vec<u64> {
    stalled_and_restarts(seeds).0
}

/// Runs `seeds`: no safety check may fail; returns the seeds that stalled and how many
/// groups restarted in all.
fn stalled_and_restarts(seeds: &[u64]) -> (Vec<u64>, u64) {
    let scenarios: Vec<OrderedScenario> = seeds.iter().map(|&s| OrderedScenario::random(s)).collect();
    stalled_and_restarts_of(scenarios)
}

/// As [`stalled_and_restarts`], for the given scenarios.
fn stalled_and_restarts_of(scenarios: Vec<OrderedScenario>) -> (Vec<u64>, u64) {
    let mut stalled = Vec::new();
    let mut restarts = 0;
    for sc in scenarios {
        let seed = sc.seed;
        let r = OrderedSim::new(sc).run();
        restarts += r.restarts;
        assert_eq!(
            r.invariant_violations, r.violations.liveness,
            "seed {seed}: {:?}",
            r.violation_samples
        );
        if r.violations.liveness > 0 || !r.liveness_checked {
            stalled.push(seed);
        }
    }
    (stalled, restarts)
}

/// The group's memory node survived (promoted backup), but every member holding the state
/// crashed while the others were joining: each joiner's producer is dead or a joiner
/// itself, so they retried their joins and waited for each other forever. The restart rule
/// (docs/ordered.md, "Restart") makes the first joiner whose install times out restart the
/// group from an empty state. 38, 168 and 222 stalled so before the rule, 287 until the
/// rule on an earlier protocol; they must stay live. Which seeds lose every state holder
/// moves with the world: since the promoted primary crashes too and a drain's datagrams
/// leave grouped by destination (2026-12-03), 809, 1344, 1426, 1491, 1530 and 1812 (of the
/// first 2,000, `ordered_sweep` lists them) restarted; since every member tells the others
/// its progress (2026-12-04), 720, 864, 1344, 1426, 1491 and 1812 did; since a primary's
/// answers wait for a new backup's transfer and the backup keeps records that come early
/// (2026-12-04), 1344, 1426, 1812 and 1868 did; since a join asks where the memory node is
/// and some seeds add a node to the running cluster (2026-12-04), 168, 329, 636, 809, 864,
/// 937, 1322, 1344, 1663, 1868 and 1870 did; since the replication resends only what the
/// backup lacks (2026-12-04, second session), 293, 329, 864, 908, 1020, 1322, 1445, 1553,
/// 1561, 1868 and 1870 did (636 and 1344 stay live without a restart); since progress writes
/// are paced (2026-12-05), 205, 251, 329, 348, 471, 507, 809, 818, 864, 908, 933, 1020,
/// 1243, 1322, 1347, 1360, 1561, 1868 and 1870 do (1445 stays live without one).
#[test]
fn a_group_whose_state_holders_all_crashed_goes_on() {
    let stalled = stalled_among(&[
        38, 168, 205, 222, 236, 287, 636, 720, 809, 864, 1344, 1426, 1491, 1530, 1812,
    ]);
    assert!(stalled.is_empty(), "stalled seeds: {stalled:?}");
    for seed in [329, 1322, 1561, 1868] {
        let (stalled, restarts) = stalled_and_restarts(&[seed]);
        assert!(stalled.is_empty(), "seed {seed} stalled");
        assert!(
            restarts >= 1,
            "seed {seed} no longer loses its state holders: find seeds that do (`ordered_sweep` lists them)"
        );
    }
}

/// The seeds that stalled before (docs/ordered.md, "Fairness" and "Livelocks fixed"): a
/// sender co-located with the memory-node primary won every tail compare (fairness rule);
/// 47 and 88 never finished (a fairness hold kept the lag timer from being consumed: a
/// timer that fired forever at one instant); 79 (a rejoined node reused its old
/// minitransaction ids and got the old answers).
#[test]
fn the_seeds_that_stalled_are_live() {
    let stalled = stalled_among(&[0, 2, 13, 22, 47, 52, 53, 62, 79, 88]);
    assert!(stalled.is_empty(), "stalled seeds: {stalled:?}");
}

/// Two joiners that waited for each other (docs/ordered.md, "State transfer"): a join's
/// producer was the lowest member of the view before it, installed or not. In 182 and 1122
/// (of the first 2,000) the primary's crash took the producer of two joins at once; each
/// joiner's retry then named the other, still installing, and they retried forever. The
/// producer is now the lowest member known to hold the state.
#[test]
fn joiners_never_wait_for_each_other() {
    let stalled = stalled_among(&[182, 1122]);
    assert!(stalled.is_empty(), "stalled seeds: {stalled:?}");
}

/// Seed 822 (issue 12): the founder of g0 published its progress slot to a memory node
/// primary that crashed before its backup held the write, then crashed itself. The
/// promoted backup held the founder's join but no slot saying it installed, so the
/// joiners (whose restart rule counts state holders by their slots) saw no holder at all:
/// they joined again, forever, each naming the crashed founder as producer. The founder's
/// join now writes its slot in the same minitransaction: the group restarts. Since
/// 2026-12-03 the simulated network draws in another order and seed 822 no longer loses
/// that founder; it must stay live. The seeds that restart now are in
/// `a_group_whose_state_holders_all_crashed_goes_on`; whether one of them takes this
/// slot-loss path was not checked, so this path has no pinned seed at the moment.
#[test]
fn a_founder_whose_slot_was_lost_with_the_primary_still_restarts() {
    let (stalled, _) = stalled_and_restarts(&[822]);
    assert!(stalled.is_empty(), "stalled seeds: {stalled:?}");
}

/// Issue 12, the promoted primary crashed too (`crash_promoted`, sending 700 ms longer).
/// 359, 547 and 552 (5% loss, 3 messages/ms) stalled: a backup refused every entry after
/// a lost one until the primary's 20 ms `retransmit`, so a replicated memory node crawled
/// (they stall on main too when sending that long, with no memory-node crash at all), and
/// the new backup's snapshot (go-back-N) and catch-up never finished under that load. The
/// primary now resends at the backup's repeated ack, keeps a window of entries in flight,
/// and the snapshot acks are selective. 423 then delivered a rejoined sender's payloads
/// empty: a lagging member delivering the sender's removal dropped the payloads of its
/// next membership too, already counted as held. 957 stalled in the simulator itself: it
/// crashed the promoted primary once group 0's new backup was up to date, while that node
/// was also group 2's promoted primary with a new backup still waiting for its snapshot
/// (both hosts of group 2's memory node lost within one re-backup, a loss docs/ordered.md
/// states). The promoted primary now crashes only once every group it leads is replicated.
///
/// Pinned as found, without the node added to the running cluster that seed 552 draws
/// since 2026-12-04 (`late_node`); with it, 552 is pinned by
/// `senders_racing_for_the_tail_over_slow_links_drain_their_backlog`.
#[test]
fn the_rebackup_seeds_are_live_and_safe() {
    let scenarios = [359, 423, 547, 552, 957]
        .into_iter()
        .map(|seed| OrderedScenario {
            late_node: None,
            ..OrderedScenario::random(seed)
        })
        .collect();
    let (stalled, _) = stalled_and_restarts_of(scenarios);
    assert!(stalled.is_empty(), "stalled seeds: {stalled:?}");
}

/// Six senders racing for group 0's tail over links of up to 2 ms, each with a backlog of
/// about 2,700 messages (3 per ms for most of a second, batches of at most 3), after the
/// primary and the promoted one crashed and the memory node moved to a node added to the
/// running cluster. Seeds 552 and 607 took 20.7 s and 21.1 s to drain (the bound is
/// 20 s): a sender halved its window of appends in flight at every lost tail compare, so
/// under a race every sender kept a window of 1 or 2 and the winner of each round
/// threaded 1 or 2 batches where it could have threaded 4. A lost race is not congestion:
/// the window now shrinks only on a failure that is (docs/ordered.md, "The ordering
/// layer": contention).
#[test]
fn senders_racing_for_the_tail_over_slow_links_drain_their_backlog() {
    late_node_seeds_are_live(&[552, 607]);
}

/// Two stalls the backup's pushes of committed entries (wire v14) brought out by moving
/// the timing; neither needs the pushes:
/// - seed 507: a node added to the running cluster asked where group 0's memory node is
///   and took the answer of a node that had not yet installed the view without the
///   crashed primary (one its own views never held, so no view change failed it over),
///   sent to it forever and refused the promoted primary's state transfer naming it the
///   new backup. A state transfer from a primary of a later epoch now supersedes a
///   placement learned from another node.
/// - seed 869: a member whose buffer of undelivered entries was full, its front a safe
///   entry waiting for a crashed member's removal that another member (which had seen the
///   crashed member hold it) appended past that buffer, read no entry at all and never
///   learned that it was removed for lagging. A read with a full buffer now reads one
///   entry, to see whether its slot was overwritten.
#[test]
fn a_stale_placement_and_a_full_buffer_do_not_stall_a_member() {
    // 1586, 170 and 518 stalled with the first fix tried for 507 (failing over at once as
    // the learning node's view says: a new node's view may lack live nodes).
    let stalled = stalled_among(&[507, 869, 1586, 170, 518]);
    assert!(stalled.is_empty(), "stalled seeds: {stalled:?}");
}

/// Runs `seeds`, each of which must add a node to the running cluster: no safety check
/// may fail and none may stall.
fn late_node_seeds_are_live(seeds: &[u64]) {
    for &seed in seeds {
        assert!(
            OrderedScenario::random(seed).late_node.is_some(),
            "seed {seed} adds no node"
        );
    }
    let stalled = stalled_among(seeds);
    assert!(stalled.is_empty(), "stalled seeds: {stalled:?}");
}

/// Application regions with a node added to the running cluster that the regions' ranking
/// puts first (`regions_scenario`: every node increments a shared counter, compare and
/// write, while the groups send). Before a node's first region operation asked the view
/// where the regions' memory node is, the newcomer placed it on itself whenever the
/// primary's announcement had not reached it yet: 21 of seeds 0..40 failed (the nodes
/// placed the memory node apart, seed 29; or found the counter's region missing). These
/// are the first 12 of them.
#[test]
fn application_regions_stay_one_store_when_a_node_joins_the_running_cluster() {
    let mut increments = 0;
    for seed in [1, 2, 5, 8, 11, 12, 13, 16, 17, 21, 29, 35] {
        let r = OrderedSim::new(regions_scenario(seed)).run();
        assert_eq!(
            r.invariant_violations, 0,
            "seed {seed}: {:?}",
            r.violation_samples
        );
        assert!(r.liveness_checked, "seed {seed} did not settle");
        increments += r.region_increments;
    }
    assert!(
        increments > 1000,
        "the workload ran: {increments} committed increments"
    );
}

/// A node added to the running cluster (`late_node`, with an id group 0's placement
/// ranking puts first) joins group 0 where its memory node is, and may be named its new
/// backup or primary by later failovers. Before a join asked the view (`Locate`), every
/// such seed stalled (its join waited at a memory node of its own: 1, 4, 10, 13, 17, 22,
/// 23 and 30 of the first 31); 428 made a primary of its own from a guessed placement
/// when named backup while still asking; 507, 828 and 1311 took an announced placement
/// whose primary had just crashed (announced before the primary's own failover).
#[test]
fn a_node_added_to_the_running_cluster_joins_where_the_memory_node_is() {
    late_node_seeds_are_live(&[1, 4, 10, 13, 17, 22, 23, 30, 428, 507, 828, 1311]);
}

#[test]
fn a_seed_reproduces_its_run() {
    let a = OrderedSim::new(OrderedScenario::random(7)).run();
    let b = OrderedSim::new(OrderedScenario::random(7)).run();
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.deliveries, b.deliveries);
}

/// The scenario the breaks start from: 3 nodes, a join at 40 ms (state transfer) and a
/// member's crash at 120 ms, after the sends. A view's delivered set is compared when the
/// view ends, so the crash's view change is what checks the view in which the broken
/// delivery falls, wherever the timing puts it: without it, a break that landed after the
/// join (2026-12-07: the members read the memory node less often, and member 1's third
/// delivery moved past the join) was in a view that never ended, and went unnoticed.
fn broken_scenario_base() -> OrderedScenario {
    let mut sc = OrderedScenario::new(3, 1);
    sc.send_for = 100 * tutti_proto::MILLIS;
    sc.crash_member = Some(120 * tutti_proto::MILLIS);
    sc.crash_primary = None;
    sc.join_at = Some(40 * tutti_proto::MILLIS);
    sc
}

/// Each check fails on a deliberately broken application (the checker can fail).
#[test]
fn each_check_fails_on_a_broken_application() {
    let cases = [
        (Break::TotalOrder, "total order"),
        (Break::Fifo, "fifo"),
        (Break::VirtualSynchrony, "virtual synchrony"),
        (Break::StateTransfer, "state transfer"),
        (Break::Liveness, "liveness"),
    ];
    for (brk, what) in cases {
        let mut sc = broken_scenario_base();
        sc.brk = Some(brk);
        let r = OrderedSim::new(sc).run();
        let v = &r.violations;
        let hit = match brk {
            Break::TotalOrder => v.total_order,
            Break::Fifo => v.fifo,
            Break::VirtualSynchrony => v.virtual_synchrony,
            Break::StateTransfer => v.state_transfer,
            Break::Liveness => v.liveness,
        };
        assert!(hit > 0, "{what}: the broken application went unnoticed: {v:?}");
    }
}

/// The unbroken scenario the breaks start from passes.
#[test]
fn the_unbroken_scenario_passes() {
    let r = OrderedSim::new(broken_scenario_base()).run();
    assert_eq!(r.invariant_violations, 0, "{:?}", r.violation_samples);
    assert!(r.liveness_checked && r.installs > 0);
}

/// A 2 s pause in the sends, after a join and with loss: the groups go dormant (their
/// members read about once per `dormant_interval`), the sends after the pause wake them,
/// and every check still passes.
#[test]
fn a_long_idle_gap_puts_the_groups_to_sleep_and_the_sends_after_it_wake_them() {
    let mut sc = OrderedScenario::new(5, 2);
    sc.send_for = 200 * tutti_proto::MILLIS;
    sc.idle_gap = Some((100 * tutti_proto::MILLIS, 2_000 * tutti_proto::MILLIS));
    sc.crash_member = None;
    sc.crash_primary = None;
    sc.join_at = Some(40 * tutti_proto::MILLIS);
    let r = OrderedSim::new(sc).run();
    assert_eq!(r.invariant_violations, 0, "{:?}", r.violation_samples);
    assert!(r.liveness_checked);
    assert!(r.dormant_reads > 0, "no member went dormant");
    assert!(r.wakes > 0, "no member was woken");
}
