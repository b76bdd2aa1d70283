//! The `evs` world over many seeds (`tutti-sim --partition-policy evs`): one ordered group
//! under partition policy `evs` on 3-5 Nodes, cut into two sides and healed once or twice
//! while every node sends, with loss, duplication and jittered latency, and in half the
//! seeds a node's crash (mostly followed by its restart), in a quarter a second crash and in
//! a quarter a node new to the cluster. Every seed must
//! keep extended virtual synchrony and end in one configuration of all that delivers.
//! `TUTTI_SIM_EVS_SEEDS=N` runs N seeds (default 40 in a release build, 6 in a debug one);
//! `TUTTI_SIM_EVS_FIRST_SEED` moves the range.

use tutti_sim::evs::{EvsScenario, EvsSim};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn evs_seeds_keep_extended_virtual_synchrony_and_merge() {
    let n = env("TUTTI_SIM_EVS_SEEDS", if cfg!(debug_assertions) { 6 } else { 40 });
    let first = env("TUTTI_SIM_EVS_FIRST_SEED", 0);
    let mut failures = Vec::new();
    let (mut deliveries, mut configurations, mut transitional, mut unconfirmed) = (0, 0, 0, 0);
    let mut pushes = 0;
    for seed in first..first + n {
        let sc = EvsScenario::random(seed);
        let desc = sc.describe();
        let r = EvsSim::new(sc).run();
        assert!(r.liveness_checked);
        assert_eq!(
            r.pumps_capped, 0,
            "seed {seed}: a node's ordered pump looped: {desc}"
        );
        deliveries += r.deliveries;
        configurations += r.configurations;
        transitional += r.transitional;
        unconfirmed += r.unconfirmed;
        pushes += r.pushes_sent;
        if r.violations.total() > 0 {
            failures.push(format!(
                "seed {seed}: {desc}\n    {:?}\n    {:?}",
                r.violations, r.samples
            ));
        }
    }
    eprintln!(
        "{n} evs seeds: {} fail; {deliveries} deliveries, {configurations} configurations \
         ({transitional} transitional), {unconfirmed} unconfirmed, {pushes} pushes sent",
        failures.len()
    );
    assert!(pushes > 0, "the list founders pushed committed entries");
    assert!(
        deliveries > 0 && transitional > 0,
        "the seeds split and delivered"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Runs `seeds` and asserts that each keeps every guarantee and ends live.
fn assert_seeds_pass(seeds: &[u64], check: impl Fn(&EvsScenario) -> bool) {
    for &seed in seeds {
        let sc = EvsScenario::random(seed);
        let desc = sc.describe();
        assert!(check(&sc), "seed {seed} no longer draws the case: {desc}");
        let r = EvsSim::new(sc).run();
        assert!(r.liveness_checked);
        assert_eq!(
            r.pumps_capped, 0,
            "seed {seed}: a node's ordered pump looped: {desc}"
        );
        assert_eq!(
            r.violations.total(),
            0,
            "seed {seed}: {desc}\n    {:?}\n    {:?}",
            r.violations,
            r.samples
        );
    }
}

/// Seeds whose partition healed just before the cluster view dropped the cut-off member:
/// its list had removed it for lagging meanwhile, and with no view change to open a new
/// list epoch it stayed out for good (no configuration of all after the heal). `evs` lists
/// now remove no member for lagging (as tuttid's settings already had it).
#[test]
fn a_member_cut_off_for_less_than_failure_detection_is_not_left_out() {
    assert_seeds_pass(&[27, 39], |sc| !sc.partitions.is_empty());
}

/// Seeds in which a crashed node restarted (in 1464 before the others noticed the crash:
/// its new incarnation took its place in the view) and the group moved to new lists with
/// every member of its configuration moving together. Under `safe` delivery the movers
/// froze the old list where each stood, delivered up to the largest `delivered` among
/// them and left what the senders had appended after it `unconfirmed`: delivered nowhere,
/// the run's last messages among them (a liveness failure). Now the list drains to its
/// seal under both deliveries, and movers that are the whole configuration deliver on
/// through what they all hold (docs/ordered.md, `evs` rule 6).
#[test]
fn messages_appended_before_a_whole_configuration_moves_are_delivered() {
    assert_seeds_pass(&[250, 1464], |sc| {
        !sc.agreed && sc.crash.as_ref().is_some_and(|c| c.restart.is_some())
    });
}

/// A seed in which two sides' coordinators both installed a view numbered 7 (node 1's,
/// alone, still listing nodes 2 and 3; theirs without node 1), and after the heal nodes 2
/// and 3 took node 1's view 7 in place of their own. Their `evs` lists were named by
/// their own view 7 and node 1's would have been numbered lower, so with no later view
/// [1] and [2, 3] stayed apart for good in one cluster view of all three. A node that
/// installs a view in place of one with the same counter now claims the next counter, and
/// the coordinator installs a view above both.
#[test]
fn a_view_that_replaces_one_with_the_same_counter_is_followed_by_a_later_one() {
    assert_seeds_pass(&[5566], |sc| sc.partitions.len() == 2 && sc.crash.is_some());
}

/// Seeds with a node new to the cluster (and in 706 two crashes), each of which ended
/// without a configuration of all:
/// - 900: the newcomer started on the side without the coordinator and reached only that
///   side; after the heal the coordinator, which never heard of it, made a view without
///   it, and node 2 deferred that view for dropping a member it hears, for good. A member
///   that defers a view for that names the member to the view's coordinator
///   (`Node::dropped_member_we_hear`; proto/tests/membership_heal.rs).
/// - 706: node 3, alone after the heal, had heard crashed node 2 again for a moment and,
///   suspecting nobody while alone, waited for the older node 2 to merge it for good: the
///   newcomer, whose only live seed was node 3, stayed alone. A peer outside the view
///   counts as live for a view only if heard from within `suspect_timeout`.
/// - 369: a late joiner reads its list from the start; the others reclaimed the slots it
///   had yet to read (they took its progress to start at its join). An `evs` joiner now
///   holds the list's slots from its start until it tells how far it read.
/// - 1: a late join to a list already past `list_slots` entries: its start was gone
///   before the join. The member asks for a new view (`Output::NewSideWanted`), whose side
///   opens a list every member joins from its start.
/// - 4316: the list's founder drained its list while a member that never told its
///   progress held every slot; the founder's own reads of its own memory node, answered
///   in the same call, went round forever (the run never returned). A drain reads once
///   per instant, and a pump stops after `MAX_PUMP_ROUNDS` passes (counted).
#[test]
fn a_node_new_to_the_cluster_ends_in_the_configuration_of_all() {
    assert_seeds_pass(&[900, 706, 369, 1, 4316], |sc| sc.newcomer.is_some());
}
