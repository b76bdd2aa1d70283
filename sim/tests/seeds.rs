//! Protocol properties over many seeds: small clusters (3-16 nodes) with every fault kind.
//! `TUTTI_SIM_SEEDS=N` runs N seeds instead of the default.

use tutti_proto::MILLIS;
use tutti_sim::sim::run_with_baseline;
use tutti_sim::{Crash, Partition, Scenario, Sim};

fn seeds() -> u64 {
    std::env::var("TUTTI_SIM_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500)
}

#[test]
fn seed_sweep_holds_every_invariant() {
    let n = seeds();
    let mut failures = Vec::new();
    let mut complete_checked = 0;
    let mut membership_checked = 0;
    let first: u64 = std::env::var("TUTTI_SIM_FIRST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    for seed in first..first + n {
        let sc = Scenario::random(seed);
        if std::env::var("TUTTI_SIM_VERBOSE").is_ok() {
            eprintln!("seed {seed} starting");
        }
        let desc = format!("seed {seed}: {}", sc.describe());
        let started = std::time::Instant::now();
        let r = Sim::new(sc).run();
        if std::env::var("TUTTI_SIM_VERBOSE").is_ok() {
            eprintln!(
                "{desc}: {} events, {:.2}s",
                r.events,
                started.elapsed().as_secs_f64()
            );
        }
        if r.complete_delivery_checked {
            complete_checked += 1;
        }
        if r.view_converged.is_some() {
            membership_checked += 1;
        }
        if r.invariant_violations > 0 {
            failures.push(format!("{desc}\n    {:?}", r.violation_samples));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing seeds:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The sweep must exercise the "every message reaches every live member" check.
    assert!(
        complete_checked * 4 >= n,
        "only {complete_checked} of {n} seeds checked completeness"
    );
    // ... and the "membership converges after faults stop" check.
    assert!(
        membership_checked * 4 >= n,
        "only {membership_checked} of {n} seeds checked convergence"
    );
    eprintln!(
        "{n} seeds: {complete_checked} checked complete delivery, \
         {membership_checked} checked view convergence"
    );
}

#[test]
fn same_seed_same_run_bit_for_bit() {
    for seed in [3, 17, 42] {
        let a = Sim::new(Scenario::random(seed)).run();
        let b = Sim::new(Scenario::random(seed)).run();
        assert_eq!(a.trace_hash, b.trace_hash, "seed {seed}");
        assert_eq!(a.events, b.events);
        assert_eq!(a.datagrams, b.datagrams);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
    }
    let a = Sim::new(Scenario::new(8, 50, 2, 0.05, 1)).run();
    let b = Sim::new(Scenario::new(8, 50, 2, 0.05, 2)).run();
    assert_ne!(a.trace_hash, b.trace_hash, "different seeds should differ");
}

#[test]
fn ten_percent_loss_without_crash_reaches_everyone() {
    for seed in 0..5 {
        let mut sc = Scenario::new(16, 100, 3, 0.10, seed);
        sc.duplicate = 0.02;
        sc.reorder = 0.1;
        let r = Sim::new(sc).run();
        assert_eq!(r.invariant_violations, 0, "{:?}", r.violation_samples);
        assert_eq!(r.delivered_all_fraction, 1.0, "seed {seed}");
        assert_eq!(r.messages, 100);
        assert!(r.complete_delivery_checked);
    }
}

#[test]
fn partition_heals_into_one_view() {
    let mut sc = Scenario::new(10, 60, 2, 0.02, 7);
    sc.partitions.push(Partition {
        start: 100 * MILLIS,
        end: 6_000 * MILLIS,
        side: vec![0, 1, 2, 3],
    });
    let r = Sim::new(sc).run();
    assert_eq!(r.view_converged, Some(true), "{:?}", r.violation_samples);
    assert_eq!(r.invariant_violations, 0, "{:?}", r.violation_samples);
}

#[test]
fn coordinator_crash_and_restart_converge() {
    let mut sc = Scenario::new(8, 40, 2, 0.02, 11);
    sc.senders = 2;
    sc.crashes.push(Crash {
        node: 0,
        at: 50 * MILLIS,
        restart: Some(4_000 * MILLIS),
        leave: false,
    });
    sc.crashes.push(Crash {
        node: 5,
        at: 80 * MILLIS,
        restart: None,
        leave: false,
    });
    sc.crashes.push(Crash {
        node: 6,
        at: 90 * MILLIS,
        restart: None,
        leave: true,
    });
    let r = Sim::new(sc).run();
    assert_eq!(r.view_converged, Some(true), "{:?}", r.violation_samples);
    assert_eq!(r.invariant_violations, 0, "{:?}", r.violation_samples);
}

#[test]
fn perturbed_member_does_not_slow_the_others() {
    let mut sc = Scenario::new(8, 400, 1, 0.0, 5);
    sc.rate = 200;
    sc.perturbed = vec![7];
    sc.perturb_fraction = 0.5;
    let r = run_with_baseline(&sc);
    let ratio = r.healthy_throughput_ratio.unwrap();
    assert!(ratio >= 0.95, "healthy throughput ratio {ratio}");
    assert_eq!(r.invariant_violations, 0, "{:?}", r.violation_samples);
}

/// Bimodal multicast's promise across a long partition, case 1: node 1 publishes its first
/// messages only while cut off, and the cut outlasts the retention (its side garbage-collects
/// them). The other side first hears of the publisher after the heal, from digests whose
/// low-water mark is past all of them: every member that was in the group before must
/// still be told they are `Lost` (checked by `Checker::check_delivered_or_lost`).
#[test]
fn publisher_first_heard_of_after_a_partition_past_retention_is_reported_lost() {
    for seed in [1, 2, 3] {
        let mut sc = Scenario::new(6, 80, 2, 0.02, seed);
        sc.rate = 200;
        sc.quiet_until.push((1, 300 * MILLIS));
        sc.partitions.push(Partition {
            start: 100 * MILLIS,
            end: 6_000 * MILLIS,
            side: vec![1],
        });
        let r = Sim::new(sc).run();
        assert_eq!(
            r.invariant_violations, 0,
            "seed {seed}: {:?}",
            r.violation_samples
        );
        assert_eq!(r.view_converged, Some(true), "seed {seed}");
        // The other five members were told of node 1's 40 messages as lost.
        assert!(r.lost_reported >= 5 * 40, "seed {seed}: lost {}", r.lost_reported);
    }
}

/// Case 2: a cut longer than the time a member keeps the emptied state of a sender that
/// left its group view (4 retentions): the state is forgotten, but not where the stream
/// stood, so after the heal the other side's messages of the cut are reported `Lost`
/// (and none delivered twice).
#[test]
fn partition_longer_than_the_sender_tombstone_still_reports_lost() {
    for seed in [4, 5] {
        let mut sc = Scenario::new(6, 200, 2, 0.02, seed);
        sc.rate = 100;
        sc.partitions.push(Partition {
            start: 500 * MILLIS,
            end: 13_000 * MILLIS,
            side: vec![1, 5],
        });
        let r = Sim::new(sc).run();
        assert_eq!(
            r.invariant_violations, 0,
            "seed {seed}: {:?}",
            r.violation_samples
        );
        assert_eq!(r.view_converged, Some(true), "seed {seed}");
        assert!(r.lost_reported > 0, "seed {seed}");
    }
}
