//! tutti-sim: deterministic simulator for tutti-proto. It runs many [`tutti_proto::Node`]s
//! over a simulated network (per-link latency, loss, duplication, reordering, partitions,
//! crashes and restarts, slow nodes) from one seed, and checks the invariants during and
//! after every run. The same seed gives the same run, bit for bit.
#![forbid(unsafe_code)]

pub mod checker;
pub mod evs;
pub mod hostile;
pub mod ordered;
pub mod ordered_checker;
pub mod sim;

pub use checker::Checker;
pub use hostile::HostileAttack;
pub use sim::{run_with_baseline, Crash, Partition, Report, Scenario, Sim};
