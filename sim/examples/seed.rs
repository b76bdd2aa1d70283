//! Runs one scenario of the seed sweep (`Scenario::random(SEED)`) and prints what it checked
//! and any violation; with `TUTTI_SIM_TRACE_NODE=N` (and `TUTTI_SIM_TRACE_PACKETS=1`) it also
//! traces node N. `cargo run --release -p tutti-sim --example seed -- 830`
use tutti_sim::sim::{Scenario, Sim};

fn main() {
    let Some(seed) = std::env::args().nth(1).and_then(|s| s.parse::<u64>().ok()) else {
        eprintln!("usage: seed SEED");
        std::process::exit(2);
    };
    let sc = Scenario::random(seed);
    println!("seed {seed}: {}", sc.describe());
    let r = Sim::new(sc).run();
    println!(
        "violations {} (complete delivery checked: {}, bimodal checked: {}), lost reported {}, \
         delivery histogram {:?}",
        r.invariant_violations,
        r.complete_delivery_checked,
        r.bimodal_checked,
        r.lost_reported,
        r.delivery_fraction_histogram
    );
    for v in &r.violation_samples {
        println!("  {v}");
    }
    std::process::exit(i32::from(r.invariant_violations > 0));
}
