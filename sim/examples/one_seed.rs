//! Run one random scenario of the seed sweep and print its report (debugging aid):
//! `cargo run --release -p tutti-sim --example one_seed -- SEED`.
fn main() {
    let seed: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let sc = tutti_sim::Scenario::random(seed);
    eprintln!("{}", serde_json::to_string(&sc).unwrap_or_default());
    let r = tutti_sim::Sim::new(sc).run();
    println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
}
