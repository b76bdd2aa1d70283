//! Flow control at scale (issue 11): what flow control costs must not grow with the group.
//! A sender hears from O(fanout) members, not from every member, and a member sends O(1)
//! statuses per stream per gossip round, however many members the group has.

use tutti_sim::{Report, Scenario, Sim};

fn run(nodes: u32) -> Report {
    // 4 senders, 400 messages of 64 B at 1,000 per second each, 5% loss: every member
    // takes part in four streams for ~100 ms (a round) and repairs gaps.
    let mut sc = Scenario::new(nodes, 400, 4, 0.05, 11);
    sc.rate = 1_000;
    Sim::new(sc).run()
}

fn describe(r: &Report) -> String {
    format!(
        "{} nodes: delivered_all {:.4}, violations {}, sim {:.0} ms, datagrams {}, flow: {} statuses sent, \
         most received by one node {}, {} refused submits",
        r.nodes,
        r.delivered_all_fraction,
        r.invariant_violations,
        r.sim_time_ms,
        r.datagrams,
        r.messages_by_kind.flow_statuses,
        r.messages_by_kind.flow_statuses_received_max,
        r.messages_by_kind.flow_blocked,
    )
}

/// Statuses per member, per stream and per gossip round of the simulated time (an
/// overestimate of the rounds the streams were active in: the bootstrap counts too).
fn statuses_per_member_stream_round(r: &Report) -> f64 {
    let rounds = (r.sim_time_ms / 100.0).max(1.0);
    r.messages_by_kind.flow_statuses as f64 / f64::from(r.nodes) / f64::from(r.senders) / rounds
}

/// Ten times the members: the busiest node (a sender) receives about as many statuses
/// (each from one of its tree children, aggregating its subtree), and each member sends
/// at most a couple per stream per round (wire v11 sent one per stream per
/// `flow_status_interval` while the stream progressed, to the sender itself: the sender
/// received O(n) of them per millisecond).
#[test]
fn flow_status_traffic_per_member_stays_bounded_as_the_group_grows() {
    // Ten times the members (in debug builds 50 and 500: the simulator is ~10x slower).
    let (small, large) = if cfg!(debug_assertions) {
        (run(50), run(500))
    } else {
        (run(100), run(1_000))
    };
    let what = format!("{}\n{}", describe(&small), describe(&large));
    println!("{what}");
    for r in [&small, &large] {
        assert_eq!(r.invariant_violations, 0, "{what}");
        assert!(r.delivered_all_fraction >= 0.999, "{what}");
        assert_eq!(r.messages_by_kind.flow_blocked, 0, "{what}");
        // Flow control still runs: members report their consumption.
        assert!(r.messages_by_kind.flow_statuses > 0, "{what}");
        let per = statuses_per_member_stream_round(r);
        assert!(
            per <= 2.0,
            "{what}: {per:.2} statuses per member, stream and round"
        );
    }
    let (s, l) = (
        small.messages_by_kind.flow_statuses_received_max,
        large.messages_by_kind.flow_statuses_received_max,
    );
    assert!(
        l <= 2 * s.max(1),
        "{what}: the busiest node received {s} statuses at {} members, {l} at {}",
        small.nodes,
        large.nodes
    );
}
