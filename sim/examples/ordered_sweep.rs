//! Sweeps the ordered world (`OrderedScenario::random`) or the evs world
//! (`EvsScenario::random`) over a range of seeds and prints one line per seed that fails a
//! check (safety or liveness), then a summary (with the seeds in which a group restarted):
//! the tool behind the 2,000-seed sweeps of docs/ordered.md.
//! `cargo run --release -p tutti-sim --example ordered_sweep -- [evs | regions] FIRST COUNT`
//! (`regions`: the ordered world with the application-region workload and a node added
//! to the running cluster in every seed, `tutti_sim::ordered::regions_scenario`).
use std::time::Instant;
use tutti_sim::evs::{EvsScenario, EvsSim};
use tutti_sim::ordered::{regions_scenario, OrderedScenario, OrderedSim};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let evs = args.first().is_some_and(|a| a == "evs");
    if evs {
        args.remove(0);
    }
    let regions = args.first().is_some_and(|a| a == "regions");
    if regions {
        args.remove(0);
    }
    let num = |i: usize| args.get(i).and_then(|s| s.parse::<u64>().ok());
    let (Some(first), Some(count)) = (num(0), num(1)) else {
        eprintln!("usage: ordered_sweep [evs | regions] FIRST COUNT");
        std::process::exit(2);
    };
    let start = Instant::now();
    let mut failing = Vec::new();
    // Ordered world: seeds with an idle gap, and their members' dormant reads and wake-ups.
    let (mut idle_seeds, mut dormant_reads, mut wakes) = (0u64, 0u64, 0u64);
    let mut region_increments = 0u64;
    // Ordered world: (settle time, seed) of every seed that settled.
    let mut slowest: Vec<(f64, u64)> = Vec::new();
    // Ordered world: seeds in which a group lost every state holder and restarted (the
    // seeds that the restart tests of sim/tests/ordered_seeds.rs pin).
    let mut restarted = Vec::new();
    for seed in first..first + count {
        let t = Instant::now();
        let failure = if evs {
            let sc = EvsScenario::random(seed);
            let desc = sc.describe();
            let r = EvsSim::new(sc).run();
            (r.violations.total() > 0 || !r.liveness_checked).then(|| {
                format!(
                    "{desc}\n    checked {} {:?}\n    {:?}",
                    r.liveness_checked, r.violations, r.samples
                )
            })
        } else {
            let sc = if regions {
                regions_scenario(seed)
            } else {
                OrderedScenario::random(seed)
            };
            let desc = sc.describe();
            idle_seeds += u64::from(sc.idle_gap.is_some());
            let r = OrderedSim::new(sc).run();
            if let Some(ms) = r.settle_ms {
                slowest.push((ms, seed));
            }
            dormant_reads += r.dormant_reads;
            region_increments += r.region_increments;
            wakes += r.wakes;
            if r.restarts > 0 {
                restarted.push(seed);
            }
            (r.invariant_violations > 0 || !r.liveness_checked).then(|| {
                format!(
                    "{desc}\n    checked {} {:?}\n    {:?}",
                    r.liveness_checked, r.violations, r.violation_samples
                )
            })
        };
        if let Some(f) = failure {
            println!("FAIL seed {seed} ({} ms): {f}", t.elapsed().as_millis());
            failing.push(seed);
        }
    }
    if !evs {
        println!(
            "ordered: {idle_seeds} seeds with an idle gap: {dormant_reads} dormant reads, {wakes} wake-ups"
        );
        println!(
            "ordered: {} seeds restarted a group: {restarted:?}",
            restarted.len()
        );
        if regions {
            println!("ordered: {region_increments} committed region increments");
        }
        slowest.sort_by(|a, b| b.0.total_cmp(&a.0));
        let top: Vec<String> = slowest
            .iter()
            .take(5)
            .map(|(ms, seed)| format!("{seed} ({:.1} s)", ms / 1000.0))
            .collect();
        println!(
            "ordered: slowest to settle after the faults (bound 20 s): {}",
            top.join(", ")
        );
    }
    println!(
        "{} seeds {first}..{}: {} fail {failing:?} in {:.1} s",
        if evs { "evs" } else { "ordered" },
        first + count,
        failing.len(),
        start.elapsed().as_secs_f64()
    );
    std::process::exit(i32::from(!failing.is_empty()));
}
