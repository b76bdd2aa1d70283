//! Ordered groups through `Node`'s API: a one-node cluster (member and memory node on one
//! node, no network), and three nodes over an instant, lossless network (creation by the
//! first joiner, state transfer to the others, one total order). The simulator
//! (`tutti-sim --ordered-groups`) covers faults.

use std::cell::Cell;
use std::collections::VecDeque;
use tutti_proto::ordered::{
    choose_memnode_hosts, ConfigEvent, OrderedSettings, OrderedStatusEvent, PartitionPolicy, RemoveReason,
};
use tutti_proto::{Event, Node, NodeId, Settings, SubmitError, Time, MILLIS};

const GROUP: u64 = 0xabc;

fn settings() -> Settings {
    Settings {
        gossip_period: 10 * MILLIS,
        ..Settings::default()
    }
}

fn ordered() -> OrderedSettings {
    OrderedSettings {
        list_slots: 64,
        lag_budget: 40,
        queue_slots: 16,
        max_payload: 256,
        ..OrderedSettings::default()
    }
}

/// Runs `nodes` over an instant network until `until`; returns the events per node.
fn run(nodes: &mut [Node], now: &mut Time, until: Time, events: &mut [Vec<Event>]) {
    run_cut(nodes, now, until, events, &|_, _| true);
}

/// As [`run`], over a network that drops every datagram between nodes `linked` says are
/// cut off from each other (a partition).
fn run_cut(
    nodes: &mut [Node],
    now: &mut Time,
    until: Time,
    events: &mut [Vec<Event>],
    linked: &dyn Fn(NodeId, NodeId) -> bool,
) {
    let mut net: VecDeque<(NodeId, NodeId, Vec<u8>)> = VecDeque::new();
    while *now < until {
        for n in nodes.iter_mut() {
            if n.poll_timeout().is_some_and(|t| t <= *now) {
                n.handle_timeout(*now);
            }
        }
        loop {
            for n in nodes.iter_mut() {
                let from = n.id();
                let max = n.settings().max_datagram;
                while let Some(t) = n.poll_transmit() {
                    assert!(t.payload.len() <= max);
                    net.push_back((from, t.dest, t.payload.to_vec()));
                }
            }
            let Some((from, to, bytes)) = net.pop_front() else {
                break;
            };
            if !linked(from, to) {
                continue;
            }
            if let Some(n) = nodes.iter_mut().find(|n| n.id() == to) {
                n.handle_packet(*now, from, &bytes);
            }
        }
        for (i, n) in nodes.iter_mut().enumerate() {
            while let Some(e) = n.poll_event() {
                if let Event::SnapshotRequest { group, .. } = e {
                    n.snapshot_ready(*now, group, b"state");
                }
                events[i].push(e);
            }
        }
        *now += 100_000;
    }
}

fn delivered(events: &[Event]) -> Vec<(NodeId, Vec<u8>)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::OrderedDeliver { sender, payload, .. } => Some((*sender, payload.clone())),
            _ => None,
        })
        .collect()
}

/// Nodes `ids` in one cluster (each seeded with its id), run for 500 ms from time 0: the
/// nodes, the time and the events so far per node.
fn cluster_after_500_ms(ids: &[NodeId]) -> (Vec<Node>, Time, Vec<Vec<Event>>) {
    let mut nodes: Vec<Node> = ids
        .iter()
        .map(|&id| Node::new(id, 1, ids, settings(), 0, u64::from(id)))
        .collect();
    let mut now = 0;
    let mut events: Vec<Vec<Event>> = ids.iter().map(|_| Vec::new()).collect();
    run(&mut nodes, &mut now, 500 * MILLIS, &mut events);
    (nodes, now, events)
}

/// Node `i` (by index) submits `[i, round]` for each of `rounds` rounds, a millisecond
/// apart, then the network runs 200 ms more.
fn submit_rounds(nodes: &mut [Node], now: &mut Time, events: &mut [Vec<Event>], rounds: u8) {
    for round in 0..rounds {
        for (i, n) in nodes.iter_mut().enumerate() {
            n.submit_ordered(*now, GROUP, &[i as u8, round], false).unwrap();
        }
        let until = *now + MILLIS;
        run(nodes, now, until, events);
    }
    let until = *now + 200 * MILLIS;
    run(nodes, now, until, events);
}

/// Three nodes in one cluster, all joined to `GROUP` and run `settle` more: the nodes, the
/// time and the events so far per node.
fn three_nodes_in_the_group(settle: Time) -> (Vec<Node>, Time, Vec<Vec<Event>>) {
    three_nodes_in_the_group_with(settle, ordered())
}

/// As `three_nodes_in_the_group`, the group with settings `group`.
fn three_nodes_in_the_group_with(settle: Time, group: OrderedSettings) -> (Vec<Node>, Time, Vec<Vec<Event>>) {
    let (mut nodes, mut now, mut events) = cluster_after_500_ms(&[1, 2, 3]);
    assert!(
        nodes.iter().all(|n| n.view().members.len() == 3),
        "cluster formed"
    );
    for n in nodes.iter_mut() {
        n.join_ordered(now, GROUP, group.clone()).unwrap();
    }
    let until = now + settle;
    run(&mut nodes, &mut now, until, &mut events);
    (nodes, now, events)
}

#[test]
fn a_one_node_cluster_orders_its_own_messages() {
    let mut nodes = vec![Node::new(1, 1, &[], settings(), 0, 7)];
    let mut now = 0;
    let mut events = vec![Vec::new()];
    assert_eq!(
        nodes[0].submit_ordered(now, GROUP, b"x", false),
        Err(SubmitError::NotJoined(GROUP))
    );
    nodes[0].join_ordered(now, GROUP, ordered()).unwrap();
    assert!(nodes[0].is_ordered(GROUP));
    assert!(nodes[0].join_ordered(now, GROUP, ordered()).is_err());
    run(&mut nodes, &mut now, 20 * MILLIS, &mut events);
    // The first joiner of an empty list created the group: a one-member view at 0.
    assert!(events[0].iter().any(|e| matches!(e,
        Event::OrderedView { view, .. } if view.position == 0 && view.members == vec![1])));
    for i in 0..50u8 {
        nodes[0].submit_ordered(now, GROUP, &[i], i % 5 == 0).unwrap();
    }
    run(&mut nodes, &mut now, 60 * MILLIS, &mut events);
    let got = delivered(&events[0]);
    assert_eq!(got, (0..50u8).map(|i| (1, vec![i])).collect::<Vec<_>>());
    let c = nodes[0].ordered_counters(GROUP).unwrap();
    assert_eq!(c.delivered, 50);
    assert!(nodes[0].memnode_counters(GROUP).is_some());
    nodes[0].leave_ordered(now, GROUP);
    run(&mut nodes, &mut now, 80 * MILLIS, &mut events);
    assert!(events[0].iter().any(|e| matches!(
        e,
        Event::OrderedStatus {
            status: OrderedStatusEvent::Removed(RemoveReason::Left),
            ..
        }
    )));
    assert!(!nodes[0].is_ordered(GROUP));
}

#[test]
fn three_nodes_create_transfer_and_agree_on_one_order() {
    let (mut nodes, mut now, mut events) = three_nodes_in_the_group(100 * MILLIS);
    let installs: usize = events
        .iter()
        .map(|ev| ev.iter().filter(|e| matches!(e, Event::Installed { .. })).count())
        .sum();
    assert_eq!(installs, 2, "one creator, two joiners with a state transfer");
    submit_rounds(&mut nodes, &mut now, &mut events, 20);
    let orders: Vec<_> = events.iter().map(|e| delivered(e)).collect();
    assert_eq!(orders[0].len(), 60);
    assert_eq!(orders[0], orders[1]);
    assert_eq!(orders[0], orders[2]);
}

/// A node that leaves and joins again creates a new member (and minitransaction
/// coordinator) in the same incarnation: its transaction ids must not repeat the old
/// member's, or the memory node answers the new requests with the recorded answers of the
/// old ones (sim seed 79: a rejoined joiner's reads were answered with old, ill-fitting
/// replies, counted `bad_answers`, forever).
#[test]
fn a_node_that_joins_again_gets_fresh_transaction_ids() {
    let (mut nodes, mut now, mut events) = three_nodes_in_the_group(100 * MILLIS);
    nodes[2].leave_ordered(now, GROUP);
    let until = now + 100 * MILLIS;
    run(&mut nodes, &mut now, until, &mut events);
    assert!(!nodes[2].is_ordered(GROUP), "left");
    nodes[2].join_ordered(now, GROUP, ordered()).unwrap();
    let until = now + 200 * MILLIS;
    run(&mut nodes, &mut now, until, &mut events);
    let installs = events[2]
        .iter()
        .filter(|e| matches!(e, Event::Installed { .. }))
        .count();
    assert_eq!(
        installs, 2,
        "node 3 joined twice, each time with a state transfer"
    );
    submit_rounds(&mut nodes, &mut now, &mut events, 10);
    let theirs = delivered(&events[0]);
    let mine = delivered(&events[2]);
    assert_eq!(theirs.len(), 30);
    assert_eq!(
        mine[mine.len() - 30..],
        theirs[..],
        "the rejoined node delivers the same order"
    );
    let c = nodes[2].ordered_counters(GROUP).unwrap();
    assert_eq!(c.txn_errors, 0);
}

fn evs() -> OrderedSettings {
    OrderedSettings {
        partition: PartitionPolicy::Evs,
        ..ordered()
    }
}

/// The configurations (regular ones) `events` holds, in order.
fn configurations(events: &[Event]) -> Vec<ConfigEvent> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::OrderedConfiguration { config, .. } if !config.transitional => Some(config.clone()),
            _ => None,
        })
        .collect()
}

/// The last regular configuration of `events`, if any.
fn last_configuration(events: &[Event]) -> Option<ConfigEvent> {
    configurations(events).pop()
}

/// Runs until every node in `which` has `members` as its last regular configuration
/// (at most `limit` more), the network cut by `linked`.
fn run_until_configured(
    nodes: &mut [Node],
    now: &mut Time,
    events: &mut [Vec<Event>],
    linked: &dyn Fn(NodeId, NodeId) -> bool,
    which: &[usize],
    members: &[NodeId],
    limit: Time,
) {
    let deadline = *now + limit;
    while *now < deadline {
        let done = which.iter().all(|&i| {
            nodes[i].evs_member(GROUP).is_some_and(|m| m.settled())
                && last_configuration(&events[i]).is_some_and(|c| c.members == members)
        });
        if done {
            return;
        }
        let until = *now + 10 * MILLIS;
        run_cut(nodes, now, until, events, linked);
    }
    let last: Vec<_> = which.iter().map(|&i| last_configuration(&events[i])).collect();
    panic!("nodes {which:?} not configured as {members:?} within {limit}: {last:?}");
}

/// Runs the whole network until nodes 1, 2 and 3 are all in configuration {1, 2, 3}.
fn run_until_all_three_configured(
    nodes: &mut [Node],
    now: &mut Time,
    events: &mut [Vec<Event>],
    limit: Time,
) {
    let whole = |_: NodeId, _: NodeId| true;
    run_until_configured(nodes, now, events, &whole, &[0, 1, 2], &[1, 2, 3], limit);
}

/// Nodes 1, 2 and 3 in one cluster, joined to `GROUP` under `evs`, run until all three
/// are in configuration {1, 2, 3}: the nodes, the time and the events so far per node.
fn three_nodes_configured_in_an_evs_group() -> (Vec<Node>, Time, Vec<Vec<Event>>) {
    three_nodes_configured_in_an_evs_group_with(evs())
}

/// `evs` settings with agreed delivery.
fn evs_agreed() -> OrderedSettings {
    OrderedSettings {
        evs_agreed: true,
        ..evs()
    }
}

fn three_nodes_configured_in_an_evs_group_with(
    settings: OrderedSettings,
) -> (Vec<Node>, Time, Vec<Vec<Event>>) {
    let (mut nodes, mut now, mut events) = cluster_after_500_ms(&[1, 2, 3]);
    for n in nodes.iter_mut() {
        n.join_ordered(now, GROUP, settings.clone()).unwrap();
    }
    run_until_all_three_configured(&mut nodes, &mut now, &mut events, 3_000 * MILLIS);
    (nodes, now, events)
}

/// Each node submits `rounds` messages tagged with `tag`, then the network runs on.
fn send_rounds(
    nodes: &mut [Node],
    now: &mut Time,
    events: &mut [Vec<Event>],
    linked: &dyn Fn(NodeId, NodeId) -> bool,
    tag: u8,
    rounds: u8,
) {
    for round in 0..rounds {
        for n in nodes.iter_mut() {
            let id = n.id() as u8;
            n.submit_ordered(*now, GROUP, &[tag, id, round], false).unwrap();
        }
        let until = *now + MILLIS;
        run_cut(nodes, now, until, events, linked);
    }
    let until = *now + 200 * MILLIS;
    run_cut(nodes, now, until, events, linked);
}

/// What node `i` delivered tagged `tag`, in order.
fn delivered_tagged(events: &[Event], tag: u8) -> Vec<Vec<u8>> {
    delivered(events)
        .into_iter()
        .map(|(_, p)| p)
        .filter(|p| p.first() == Some(&tag))
        .collect()
}

/// Issue 12 through `Node`: an `evs` group of three nodes splits {1,2} | {3}; each side goes
/// on in a configuration of its own (the minority too), with its own total order; after the
/// heal one merged configuration of all three, which every member delivered the same, and
/// one order again.
#[test]
fn an_evs_group_goes_on_on_both_sides_of_a_partition_and_merges() {
    let (mut nodes, mut now, mut events) = cluster_after_500_ms(&[1, 2, 3]);
    let whole = |_: NodeId, _: NodeId| true;
    assert!(
        nodes.iter().all(|n| n.view().members.len() == 3),
        "cluster formed"
    );
    for n in nodes.iter_mut() {
        n.join_ordered(now, GROUP, evs()).unwrap();
        assert!(n.is_ordered(GROUP));
    }
    assert!(nodes[0].join_ordered(now, GROUP, evs()).is_err(), "joined twice");
    run_until_all_three_configured(&mut nodes, &mut now, &mut events, 3_000 * MILLIS);
    send_rounds(&mut nodes, &mut now, &mut events, &whole, 1, 10);
    let before: Vec<_> = events.iter().map(|e| delivered_tagged(e, 1)).collect();
    assert_eq!(before[0].len(), 30, "every message before the split");
    assert_eq!(before[0], before[1]);
    assert_eq!(before[0], before[2]);

    // Split: {1,2} | {3}. Each side's view drops the other; each side opens a list.
    let split = |a: NodeId, b: NodeId| (a == 3) == (b == 3);
    run_until_configured(
        &mut nodes,
        &mut now,
        &mut events,
        &split,
        &[0, 1],
        &[1, 2],
        10_000 * MILLIS,
    );
    run_until_configured(
        &mut nodes,
        &mut now,
        &mut events,
        &split,
        &[2],
        &[3],
        10_000 * MILLIS,
    );
    let majority = last_configuration(&events[0]).unwrap();
    let minority = last_configuration(&events[2]).unwrap();
    assert_ne!(majority.epoch, minority.epoch, "two sides, two lists");
    assert_eq!(last_configuration(&events[1]).unwrap(), majority);
    // Both went through a transitional configuration of the movers.
    for (i, movers) in [(0, vec![1, 2]), (1, vec![1, 2]), (2, vec![3])] {
        assert!(
            events[i]
                .iter()
                .any(|e| matches!(e, Event::OrderedConfiguration { config, .. }
                if config.transitional && config.members == movers)),
            "node {}: a transitional configuration of {movers:?}",
            i + 1
        );
    }
    send_rounds(&mut nodes, &mut now, &mut events, &split, 2, 10);
    let during: Vec<_> = events.iter().map(|e| delivered_tagged(e, 2)).collect();
    assert_eq!(
        during[0].len(),
        20,
        "the majority side goes on with its own messages"
    );
    assert_eq!(during[0], during[1]);
    assert!(during[0].iter().all(|p| p[1] != 3));
    assert_eq!(
        during[2].len(),
        10,
        "the minority side goes on too (as Corosync does)"
    );
    assert!(during[2].iter().all(|p| p[1] == 3));

    // Heal: one configuration of all three, the same first configuration at every member.
    let merged_from = events.iter().map(Vec::len).collect::<Vec<_>>();
    run_until_all_three_configured(&mut nodes, &mut now, &mut events, 20_000 * MILLIS);
    // Named by (list epoch, position, members); `joined` is relative to each member's
    // configuration before ({3} at 1 and 2, {1,2} at 3).
    let firsts: Vec<_> = (0..3)
        .map(|i| {
            configurations(&events[i][merged_from[i]..])
                .into_iter()
                .find(|c| c.members == vec![1, 2, 3])
                .map(|c| (c.epoch, c.position, c.members))
                .expect("a merged configuration")
        })
        .collect();
    assert_eq!(firsts[0], firsts[1], "same first merged configuration");
    assert_eq!(firsts[0], firsts[2], "same first merged configuration");
    let named = |c: ConfigEvent| (c.epoch, c.position, c.members);
    assert_eq!(
        last_configuration(&events[0]).map(named),
        last_configuration(&events[2]).map(named)
    );
    send_rounds(&mut nodes, &mut now, &mut events, &whole, 3, 10);
    let after: Vec<_> = events.iter().map(|e| delivered_tagged(e, 3)).collect();
    assert_eq!(after[0].len(), 30, "one order again after the heal");
    assert_eq!(after[0], after[1]);
    assert_eq!(after[0], after[2]);
    // The epoch memory nodes of abandoned lists were freed: each node runs at most the
    // ones of the lists its member is installed or gathers in.
    for n in &nodes {
        let live = n.epoch_replicas();
        assert!(live.len() <= 2, "node {}: {live:?}", n.id());
        let m = n.evs_member(GROUP).unwrap();
        for (_, _, epoch) in live {
            assert!(Some(epoch) == m.epoch() || m.gathering().and_then(|g| g.list_epoch()) == Some(epoch));
        }
        let t = n.ordered_transport_counters();
        assert!(
            t.epoch_replicas_freed > 0 || t.epoch_replicas_created <= 1,
            "{t:?}"
        );
        assert_eq!(m.counters().transitional_missing, 0);
    }
}

/// A node leaving an `evs` group: its leave is in the order, the others go on without it.
#[test]
fn a_node_leaves_an_evs_group() {
    let (mut nodes, mut now, mut events) = cluster_after_500_ms(&[1, 2, 3]);
    let whole = |_: NodeId, _: NodeId| true;
    for n in nodes.iter_mut() {
        n.join_ordered(now, GROUP, evs()).unwrap();
    }
    run_until_all_three_configured(&mut nodes, &mut now, &mut events, 3_000 * MILLIS);
    nodes[2].leave_ordered(now, GROUP);
    run_until_configured(
        &mut nodes,
        &mut now,
        &mut events,
        &whole,
        &[0, 1],
        &[1, 2],
        3_000 * MILLIS,
    );
    assert!(events[2].iter().any(|e| matches!(
        e,
        Event::OrderedStatus {
            status: OrderedStatusEvent::Removed(RemoveReason::Left),
            ..
        }
    )));
    assert!(!nodes[2].is_ordered(GROUP));
    assert!(nodes[2].epoch_replicas().is_empty());
    send_rounds(&mut nodes[..2], &mut now, &mut events[..2], &whole, 4, 5);
    assert_eq!(delivered_tagged(&events[0], 4).len(), 10);
    assert_eq!(delivered_tagged(&events[0], 4), delivered_tagged(&events[1], 4));
    // It joins again at once (its directory membership still lingers): a view change
    // brings it back in a new list, without waiting for an unrelated one.
    nodes[2].join_ordered(now, GROUP, evs()).unwrap();
    run_until_all_three_configured(&mut nodes, &mut now, &mut events, 3_000 * MILLIS);
    send_rounds(&mut nodes, &mut now, &mut events, &whole, 5, 5);
    assert_eq!(delivered_tagged(&events[2], 5).len(), 15);
    assert_eq!(delivered_tagged(&events[0], 5), delivered_tagged(&events[2], 5));
}

/// An idle ordered group backs off its reads of the memory node (every `poll_interval`
/// while there is news, doubling up to 16x while reads bring nothing), and a message
/// still reaches every member at once after the quiet spell.
#[test]
fn an_idle_group_reads_its_memory_node_seldom_and_wakes_on_a_message() {
    let (mut nodes, mut now, mut events) = three_nodes_in_the_group(200 * MILLIS);
    let reads = |nodes: &[Node]| -> Vec<u64> {
        nodes
            .iter()
            .map(|n| n.ordered_counters(GROUP).unwrap().reads)
            .collect()
    };
    let before = reads(&nodes);
    let until = now + 1000 * MILLIS;
    run(&mut nodes, &mut now, until, &mut events);
    let after = reads(&nodes);
    for i in 0..3 {
        // Every 2 ms would be 500 reads; backed off to 32 ms it is about 31 plus the ramp.
        let idle = after[i] - before[i];
        assert!(idle < 100, "node {}: {idle} reads in an idle second", i + 1);
    }
    let sent_at = now;
    nodes[0].submit_ordered(now, GROUP, b"wake", false).unwrap();
    let until = now + 10 * MILLIS;
    run(&mut nodes, &mut now, until, &mut events);
    for (i, ev) in events.iter().enumerate() {
        assert!(
            delivered(ev).iter().any(|(_, p)| p == b"wake"),
            "node {} delivered the message within 10 ms of {sent_at}",
            i + 1
        );
    }
}

/// The removals of `node` the ordered views in `events` report.
fn removals_of(events: &[Event], node: NodeId) -> Vec<RemoveReason> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::OrderedView { view, .. } => view.left.filter(|(n, _)| *n == node).map(|(_, r)| r),
            _ => None,
        })
        .collect()
}

/// Runs the first `live` nodes (the others crashed) in steps of 10 ms until `cond` holds or
/// `limit` passed; whether it held.
fn run_until(
    nodes: &mut [Node],
    live: usize,
    now: &mut Time,
    limit: Time,
    events: &mut [Vec<Event>],
    cut: &[NodeId],
    cond: impl Fn(&[Node], &[Vec<Event>]) -> bool,
) -> bool {
    let end = *now + limit;
    while *now < end {
        let until = *now + 10 * MILLIS;
        run_cut(&mut nodes[..live], now, until, &mut events[..live], &|a, b| {
            cut.contains(&a) == cut.contains(&b)
        });
        if cond(nodes, events) {
            return true;
        }
    }
    false
}

/// Node 3 crashed: runs nodes 1 and 2 until both suspect it (at most a second); whether
/// they did.
fn run_until_1_and_2_suspect_3(nodes: &mut [Node], now: &mut Time, events: &mut [Vec<Event>]) -> bool {
    run_until(nodes, 2, now, 1_000 * MILLIS, events, &[], |n, _| {
        n[..2].iter().all(|n| n.suspected_and_failed().0 > 0)
    })
}

/// Issue 12: a SWIM suspicion refuted a moment later removes nobody from an ordered group
/// (it removed node 3 for good at once: healthy daemons were removed under load, and at a
/// partition's heal). Node 3 is cut off until node 1 or 2 suspects it, then heard again.
#[test]
fn a_refuted_suspicion_removes_no_member() {
    let (mut nodes, mut now, mut events) = three_nodes_in_the_group(200 * MILLIS);
    let suspected = run_until(
        &mut nodes,
        3,
        &mut now,
        1_000 * MILLIS,
        &mut events,
        &[3],
        |n, _| n[..2].iter().any(|n| n.suspected_and_failed().0 > 0),
    );
    assert!(suspected, "node 3 was suspected while cut off");
    assert!(
        nodes[..2].iter().all(|n| !n.holds_failed(3)),
        "suspected, not failed"
    );
    let refuted = run_until(
        &mut nodes,
        3,
        &mut now,
        1_000 * MILLIS,
        &mut events,
        &[],
        |n, _| n.iter().all(|n| n.suspected_and_failed() == (0, 0)),
    );
    assert!(refuted, "the suspicion was refuted");
    let until = now + 2 * OrderedSettings::default().suspicion_grace;
    run(&mut nodes, &mut now, until, &mut events);
    for (i, ev) in events.iter().enumerate() {
        assert_eq!(removals_of(ev, 3), vec![], "node {} saw node 3 removed", i + 1);
        let c = nodes[i].ordered_counters(GROUP).unwrap();
        assert_eq!(
            (c.removals_suspected, c.removals_lagging),
            (0, 0),
            "node {}",
            i + 1
        );
    }
    assert!(
        !events[2].iter().any(|e| matches!(
            e,
            Event::OrderedStatus {
                status: OrderedStatusEvent::Removed(_),
                ..
            }
        )),
        "node 3 was told it was removed"
    );
    // And the group goes on with all three.
    nodes[2].submit_ordered(now, GROUP, b"still here", false).unwrap();
    let until = now + 50 * MILLIS;
    run(&mut nodes, &mut now, until, &mut events);
    for (i, ev) in events.iter().enumerate() {
        assert!(
            delivered(ev).iter().any(|(s, p)| *s == 3 && p == b"still here"),
            "node {}",
            i + 1
        );
    }
}

/// A suspicion not refuted removes the member once it has lasted
/// `OrderedSettings::suspicion_grace` (not before), as `Suspected`, before SWIM holds it
/// failed: node 3 crashes in an idle group.
#[test]
fn a_suspicion_removes_once_it_lasted_the_grace() {
    let grace = OrderedSettings::default().suspicion_grace;
    let (mut nodes, mut now, mut events) = three_nodes_in_the_group(200 * MILLIS);
    let suspected = run_until_1_and_2_suspect_3(&mut nodes, &mut now, &mut events);
    assert!(suspected, "nodes 1 and 2 suspect the crashed node 3");
    let suspected_at = now;
    let removed = run_until(&mut nodes, 2, &mut now, 3 * grace, &mut events, &[], |_, ev| {
        !removals_of(&ev[0], 3).is_empty()
    });
    assert!(removed, "node 3 removed");
    assert!(
        now >= suspected_at + grace - 20 * MILLIS,
        "removed {} ms after the suspicion, within the grace of {} ms",
        (now - suspected_at) / MILLIS,
        grace / MILLIS
    );
    assert!(
        !nodes[0].holds_failed(3),
        "removed by the grace, before SWIM held node 3 failed"
    );
    assert_eq!(removals_of(&events[0], 3), vec![RemoveReason::Suspected]);
    assert_eq!(removals_of(&events[1], 3), vec![RemoveReason::Suspected]);
}

/// A crashed member that falls behind while suspected, before the grace ran out, is
/// removed as `Suspected`, not `Lagging`: CPG reports a crash by that.
#[test]
fn a_lagging_suspected_member_is_removed_as_suspected() {
    let lagging_after = OrderedSettings {
        lag_timeout: 200 * MILLIS,
        ..ordered()
    };
    let (mut nodes, mut now, mut events) = three_nodes_in_the_group_with(200 * MILLIS, lagging_after);
    let suspected = run_until_1_and_2_suspect_3(&mut nodes, &mut now, &mut events);
    assert!(suspected, "nodes 1 and 2 suspect the crashed node 3");
    let suspected_at = now;
    // One message a millisecond: node 1's queue (16 slots) fills with payloads node 3
    // never holds, and `lag_timeout` (200 ms) later node 3 lags, before the grace ran out.
    let mut i = 0u32;
    while removals_of(&events[0], 3).is_empty() && now < suspected_at + 500 * MILLIS {
        nodes[0]
            .submit_ordered(now, GROUP, &i.to_le_bytes(), false)
            .unwrap();
        i += 1;
        let until = now + MILLIS;
        run(&mut nodes[..2], &mut now, until, &mut events[..2]);
    }
    assert!(
        now < suspected_at + OrderedSettings::default().suspicion_grace,
        "removed for its lag, before the grace ran out"
    );
    assert_eq!(removals_of(&events[0], 3), vec![RemoveReason::Suspected]);
    let c = nodes[0].ordered_counters(GROUP).unwrap();
    assert_eq!(c.removals_lagging, 0);
}

/// The restart rule through `Node` (docs/ordered.md, "Restart"): the only member holding
/// the group's state crashes as two nodes join. Their host tells them the holder is out of
/// the cluster view; the first whose install times out removes it and restarts the group
/// from an empty state (`Installed` with an empty snapshot, at a view of itself alone),
/// the other joins it with a state transfer, and both go on in one order.
#[test]
fn joiners_whose_only_state_holder_crashed_restart_the_group() {
    let ids = [1, 2, 3, 4, 5];
    let (mut nodes, mut now, mut events) = cluster_after_500_ms(&ids);
    assert!(
        nodes.iter().all(|n| n.view().members.len() == 5),
        "cluster formed"
    );
    // The holder runs no memory-node replica: the list survives its crash.
    let hosts = choose_memnode_hosts(GROUP, &ids);
    let others: Vec<NodeId> = ids.iter().copied().filter(|n| !hosts[..2].contains(n)).collect();
    let (holder, joiners) = (others[0], [others[1], others[2]]);
    let at = |nodes: &[Node], id: NodeId| nodes.iter().position(|n| n.id() == id).unwrap();
    let h = at(&nodes, holder);
    nodes[h].join_ordered(now, GROUP, ordered()).unwrap();
    let until = now + 100 * MILLIS;
    run(&mut nodes, &mut now, until, &mut events);
    nodes[h].submit_ordered(now, GROUP, b"lost", false).unwrap();
    let until = now + 20 * MILLIS;
    run(&mut nodes, &mut now, until, &mut events);
    for &j in &joiners {
        let i = at(&nodes, j);
        nodes[i].join_ordered(now, GROUP, ordered()).unwrap();
    }
    // The holder crashes before it reads the joins (no transfer leaves it).
    nodes.remove(h);
    events.remove(h);
    let until = now + 8_000 * MILLIS;
    run(&mut nodes, &mut now, until, &mut events);
    let installed = |id: NodeId| -> Vec<Vec<u8>> {
        events[at(&nodes, id)]
            .iter()
            .filter_map(|e| match e {
                Event::Installed { snapshot, .. } => Some(snapshot.clone()),
                _ => None,
            })
            .collect()
    };
    let (a, b) = (installed(joiners[0]), installed(joiners[1]));
    let restarts: u64 = joiners
        .iter()
        .map(|&j| nodes[at(&nodes, j)].ordered_counters(GROUP).unwrap().restarts)
        .sum();
    assert_eq!(restarts, 1, "one restart: installs {a:?} {b:?}");
    // The restarter installed the empty state; the other the restarter's snapshot.
    let mut got = [a, b];
    got.sort();
    assert_eq!(got, [vec![Vec::new()], vec![b"state".to_vec()]]);
    for round in 0..10u8 {
        for &j in &joiners {
            let i = at(&nodes, j);
            nodes[i]
                .submit_ordered(now, GROUP, &[j as u8, round], false)
                .unwrap();
        }
        let until = now + MILLIS;
        run(&mut nodes, &mut now, until, &mut events);
    }
    let until = now + 200 * MILLIS;
    run(&mut nodes, &mut now, until, &mut events);
    let x = delivered(&events[at(&nodes, joiners[0])]);
    let y = delivered(&events[at(&nodes, joiners[1])]);
    assert_eq!(x.len(), 20, "{x:?}");
    assert_eq!(x, y);
    assert!(
        x.iter().all(|(_, p)| p != b"lost"),
        "nothing of the lost state is delivered"
    );
}

/// As [`run`], over a network that loses about one datagram in 40 (a xorshift stream in
/// `rng`, so a run reproduces).
fn run_lossy(nodes: &mut [Node], now: &mut Time, until: Time, events: &mut [Vec<Event>], rng: &Cell<u64>) {
    run_cut(nodes, now, until, events, &|_, _| {
        let mut x = rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        rng.set(x);
        !x.is_multiple_of(40)
    });
}

/// Issue 12: a memory node survives two crashes in sequence. Its primary crashes, the
/// backup is promoted and a new backup (the next host by the placement rule) is brought up
/// to date by state transfer; then the promoted primary crashes too, the newest backup is
/// promoted, and the group goes on with every committed entry: both members deliver every
/// message, each once, in one order. Over a lossy network. (Before, the promoted primary
/// ran without a backup for good, and its crash stopped the group.)
#[test]
fn a_memory_node_survives_its_primary_and_then_the_promoted_primary_crashing() {
    let ids = [1, 2, 3, 4, 5];
    let (mut nodes, mut now, mut events) = cluster_after_500_ms(&ids);
    assert!(
        nodes.iter().all(|n| n.view().members.len() == 5),
        "cluster formed"
    );
    let hosts = choose_memnode_hosts(GROUP, &ids);
    let (first, second) = (hosts[0], hosts[1]);
    let rest: Vec<NodeId> = ids.iter().copied().filter(|&n| n != first).collect();
    let third = choose_memnode_hosts(GROUP, &rest)[1];
    let members: Vec<NodeId> = ids
        .iter()
        .copied()
        .filter(|n| ![first, second, third].contains(n))
        .collect();
    let at = |nodes: &[Node], id: NodeId| nodes.iter().position(|n| n.id() == id).unwrap();
    let rng = Cell::new(0x9E37_79B9_7F4A_7C15);
    for &m in &members {
        let i = at(&nodes, m);
        nodes[i].join_ordered(now, GROUP, ordered()).unwrap();
    }
    let until = now + 300 * MILLIS;
    run_lossy(&mut nodes, &mut now, until, &mut events, &rng);
    let mut sent = 0;
    let mut phase = |nodes: &mut Vec<Node>, now: &mut Time, events: &mut Vec<Vec<Event>>, tag: u8| {
        for round in 0..10u8 {
            for &m in &members {
                let i = at(nodes, m);
                nodes[i]
                    .submit_ordered(*now, GROUP, &[tag, m as u8, round], false)
                    .unwrap();
                sent += 1;
            }
            let until = *now + MILLIS;
            run_lossy(nodes, now, until, events, &rng);
        }
        let until = *now + 500 * MILLIS;
        run_lossy(nodes, now, until, events, &rng);
    };
    phase(&mut nodes, &mut now, &mut events, 1);
    // The primary crashes; the view drops it, the backup is promoted.
    let i = at(&nodes, first);
    nodes.remove(i);
    events.remove(i);
    let until = now + 3_000 * MILLIS;
    run_lossy(&mut nodes, &mut now, until, &mut events, &rng);
    phase(&mut nodes, &mut now, &mut events, 2);
    let promoted = nodes[at(&nodes, second)].memnode_counters(GROUP).unwrap();
    let newest = nodes[at(&nodes, third)].memnode_counters(GROUP).unwrap();
    eprintln!(
        "transfer: {} started, {} completed, {} bytes, {} chunks resent; installed {}",
        promoted.transfers_started,
        promoted.transfers_completed,
        promoted.transfer_bytes,
        promoted.transfer_resends,
        newest.snapshots_installed
    );
    assert_eq!(promoted.promotions, 1);
    assert!(promoted.transfers_completed >= 1, "{promoted:?}");
    assert!(newest.snapshots_installed >= 1, "{newest:?}");
    assert!(nodes[at(&nodes, second)]
        .memnode_replica(GROUP)
        .unwrap()
        .is_replicated());
    // The promoted primary crashes too.
    let i = at(&nodes, second);
    nodes.remove(i);
    events.remove(i);
    let until = now + 3_000 * MILLIS;
    run_lossy(&mut nodes, &mut now, until, &mut events, &rng);
    phase(&mut nodes, &mut now, &mut events, 3);
    let until = now + 1_000 * MILLIS;
    run_lossy(&mut nodes, &mut now, until, &mut events, &rng);
    let x = delivered(&events[at(&nodes, members[0])]);
    let y = delivered(&events[at(&nodes, members[1])]);
    assert_eq!(x, y, "one order at both members");
    let mut unique: Vec<&Vec<u8>> = x.iter().map(|(_, p)| p).collect();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), x.len(), "no message delivered twice: {x:?}");
    assert_eq!(x.len(), sent, "every message delivered: {x:?}");
    let last = nodes[at(&nodes, third)].memnode_counters(GROUP).unwrap();
    assert_eq!(last.promotions, 1, "the newest backup was promoted: {last:?}");
}

/// A driver that takes many messages at once (tuttid: a publish ring's pass) queues them
/// (`queue_ordered`) and runs the group once (`run_queued_ordered`): they travel as one
/// batch, one append and one payload run per member. Submitted one by one from the node
/// that hosts the list's memory node (an `evs` group's founder, as in a CPG flood), each
/// append is answered before the next submit, so every message went in an append and a
/// payload run of its own. Nothing is sent before the run; the order is the same.
#[test]
fn queued_messages_travel_as_one_batch() {
    let (mut nodes, mut now, mut events) = cluster_after_500_ms(&[1, 2, 3]);
    // Room for every message in flight (the test default, 16 queue slots, holds the
    // 17th back until the others hold the first).
    let settings = OrderedSettings {
        queue_slots: 256,
        list_slots: 512,
        lag_budget: 400,
        ..evs()
    };
    for n in nodes.iter_mut() {
        n.join_ordered(now, GROUP, settings.clone()).unwrap();
    }
    run_until_all_three_configured(&mut nodes, &mut now, &mut events, 2_000 * MILLIS);
    let host = nodes
        .iter()
        .position(|n| n.epoch_replicas().iter().any(|r| r.0 == GROUP))
        .expect("a node hosts the list's memory node");
    let appends = |n: &Node| {
        n.evs_member(GROUP)
            .and_then(|m| m.current())
            .expect("installed")
            .counters()
            .appends
    };
    let before = appends(&nodes[host]);
    for i in 0..100u8 {
        nodes[host].submit_ordered(now, GROUP, &[0, i], false).unwrap();
    }
    let one_by_one = appends(&nodes[host]) - before;
    assert!(one_by_one >= 50, "submitted one by one: {one_by_one} appends");
    eprintln!("100 messages submitted one by one: {one_by_one} appends; queued: 1");
    let until = now + 100 * MILLIS;
    run(&mut nodes, &mut now, until, &mut events);

    let before = appends(&nodes[host]);
    for i in 0..100u8 {
        nodes[host].queue_ordered(GROUP, &[1, i], false).unwrap();
    }
    assert!(
        nodes[host].poll_transmit().is_none(),
        "nothing sent before the run"
    );
    assert_eq!(appends(&nodes[host]), before, "nothing appended before the run");
    nodes[host].run_queued_ordered(now);
    assert_eq!(appends(&nodes[host]) - before, 1, "queued: one append");
    let until = now + 100 * MILLIS;
    run(&mut nodes, &mut now, until, &mut events);

    let sender = nodes[host].id();
    let expected: Vec<(NodeId, Vec<u8>)> = (0..2u8)
        .flat_map(|round| (0..100u8).map(move |i| (sender, vec![round, i])))
        .collect();
    for e in &events {
        let got: Vec<_> = delivered(e)
            .into_iter()
            .filter(|(s, p)| *s == sender && p.len() == 2)
            .collect();
        assert_eq!(got, expected);
    }
}

/// Nodes 1 and 2 form a cluster and `GROUP`; then a third node joins the cluster (not the
/// group), with an id that the group's placement ranking puts before both hosts: the
/// nodes (the newcomer last), the time, the events and the newcomer's id.
fn group_on_two_nodes_then_a_third_that_outranks_them() -> (Vec<Node>, Time, Vec<Vec<Event>>, NodeId) {
    let (mut nodes, mut now, mut events) = cluster_after_500_ms(&[1, 2]);
    for n in nodes.iter_mut() {
        n.join_ordered(now, GROUP, ordered()).unwrap();
    }
    let until = now + 100 * MILLIS;
    run(&mut nodes, &mut now, until, &mut events);
    let late = (3..1000)
        .find(|&c| choose_memnode_hosts(GROUP, &[1, 2, c]).first() == Some(&c))
        .expect("some id outranks 1 and 2");
    nodes.push(Node::new(late, 1, &[1, 2], settings(), now, u64::from(late)));
    events.push(Vec::new());
    let until = now + 500 * MILLIS;
    run(&mut nodes, &mut now, until, &mut events);
    assert!(
        nodes.iter().all(|n| n.view().members.len() == 3),
        "the cluster grew"
    );
    (nodes, now, events, late)
}

/// A node that joins the cluster after an ordered group was placed, and that the group's
/// rendezvous ranking over the grown view puts first, joins the group where its memory
/// node is. Each node places a group from the cluster view it first deals with the group
/// in, so the newcomer named itself primary (placement `{primary: newcomer, backup: 2}`
/// against `{primary: 2, backup: 1}` at the others) and its join waited forever at a memory
/// node of its own (`submit_ordered` kept answering `NotMember`). Now a join of a group
/// never placed here asks the view first (`Locate`).
#[test]
fn a_node_that_joins_the_cluster_later_joins_the_existing_group() {
    let (mut nodes, mut now, mut events, _) = group_on_two_nodes_then_a_third_that_outranks_them();
    nodes[2].join_ordered(now, GROUP, ordered()).unwrap();
    let until = now + 300 * MILLIS;
    run(&mut nodes, &mut now, until, &mut events);
    assert_eq!(
        nodes[2].memnode_placement(GROUP),
        nodes[0].memnode_placement(GROUP),
        "the newcomer addresses the group's memory node where it is"
    );
    submit_rounds(&mut nodes, &mut now, &mut events, 10);
    let theirs = delivered(&events[0]);
    let mine = delivered(&events[2]);
    assert_eq!(theirs.len(), 30, "node 1 delivers every node's messages");
    assert_eq!(mine, theirs, "the newcomer delivers the same order");
}

/// The other half of the same rule: a node added to the cluster later that a failover names
/// the new backup (here the only node left to name) takes the primary's state transfer as
/// its backup. Placing the group from its own view on first contact, it named itself
/// primary (it outranks the primary over the view it sees) and made the snapshot the start
/// of a primary of its own: the primary's answers waited for a backup that never came.
#[test]
fn a_node_that_joins_the_cluster_later_becomes_the_new_backup() {
    let (mut nodes, mut now, mut events, late) = group_on_two_nodes_then_a_third_that_outranks_them();
    let placed = nodes[0].memnode_placement(GROUP).expect("placed");
    let backup = placed.backup.expect("two hosts");
    let primary = placed.primary;
    // The backup crashes: the primary names the newcomer its new backup.
    let i = nodes.iter().position(|n| n.id() == backup).unwrap();
    nodes.remove(i);
    events.remove(i);
    let until = now + 3_000 * MILLIS;
    run(&mut nodes, &mut now, until, &mut events);
    let p = nodes.iter().position(|n| n.id() == primary).unwrap();
    let before = delivered(&events[p]).len();
    for round in 0..10u8 {
        nodes[p].submit_ordered(now, GROUP, &[round], false).unwrap();
        let until = now + MILLIS;
        run(&mut nodes, &mut now, until, &mut events);
    }
    let until = now + 500 * MILLIS;
    run(&mut nodes, &mut now, until, &mut events);
    let l = nodes.iter().position(|n| n.id() == late).unwrap();
    assert_eq!(
        nodes[l].memnode_placement(GROUP),
        nodes[p].memnode_placement(GROUP),
        "the newcomer holds the primary's placement"
    );
    let replica = nodes[l]
        .memnode_replica(GROUP)
        .expect("a replica on the newcomer");
    assert!(!replica.is_primary(), "the newcomer's replica is the backup");
    assert_eq!(
        delivered(&events[p]).len() - before,
        10,
        "the primary's appends went on"
    );
}

/// Runs until `op`'s region event comes out of node `i`; returns its result.
fn wait_region(
    nodes: &mut [Node],
    now: &mut Time,
    events: &mut [Vec<Event>],
    i: usize,
    op: tutti_proto::regions::RegionOp,
) -> Result<Vec<Vec<u8>>, tutti_proto::regions::RegionError> {
    for _ in 0..200 {
        while let Some(e) = nodes[i].poll_region_event() {
            if e.op == op {
                return e.result;
            }
        }
        let until = *now + 5 * MILLIS;
        run(nodes, now, until, events);
    }
    panic!("region op {op} of node index {i} never finished");
}

/// Application regions live on the memory node of the reserved group `REGIONS_GROUP`,
/// placed by the same ranking as an ordered group's: a node added to the cluster later,
/// that the ranking over the grown view puts first, must use the regions where they are,
/// whether the primary's announcement reached it or not. Before the first region operation
/// asked the view (`OrderedHost::locate`), a newcomer that the announcement missed (here:
/// the primary's datagrams to it lost for 300 ms) placed the memory node on itself, read
/// `RegionMissing` and wrote where no other node would read.
#[test]
fn a_node_that_joins_the_cluster_later_finds_the_regions_where_they_are() {
    use tutti_proto::regions::{region_id, RegionTxn, REGIONS_GROUP};
    for early in [false, true] {
        let (mut nodes, mut now, mut events) = cluster_after_500_ms(&[1, 2]);
        let op = nodes[0].region_create(now, "cfg", 8).unwrap();
        assert_eq!(
            wait_region(&mut nodes, &mut now, &mut events, 0, op),
            Ok(Vec::new())
        );
        let cfg = region_id("cfg");
        let op = nodes[0]
            .region_minitx(now, &RegionTxn::new().write(cfg, 0, b"version7"))
            .unwrap();
        assert_eq!(
            wait_region(&mut nodes, &mut now, &mut events, 0, op),
            Ok(Vec::new())
        );
        let late = (3..1000)
            .find(|&c| choose_memnode_hosts(REGIONS_GROUP, &[1, 2, c]).first() == Some(&c))
            .expect("some id outranks 1 and 2");
        nodes.push(Node::new(late, 1, &[1, 2], settings(), now, u64::from(late)));
        events.push(Vec::new());
        if early {
            // The primary's datagrams to the newcomer are lost for a while: it sees the
            // cluster through node 1, and no placement is announced to it yet.
            let primary = nodes[0].region_placement().expect("placed").0;
            let until = now + 300 * MILLIS;
            run_cut(&mut nodes, &mut now, until, &mut events, &|from, to| {
                !(from == primary && to == late)
            });
        } else {
            let until = now + 500 * MILLIS;
            run(&mut nodes, &mut now, until, &mut events);
        }
        let op = nodes[2]
            .region_minitx(now, &RegionTxn::new().read(cfg, 0, 8))
            .unwrap();
        assert_eq!(
            wait_region(&mut nodes, &mut now, &mut events, 2, op),
            Ok(vec![b"version7".to_vec()]),
            "asked {}",
            if early {
                "as soon as it saw another node"
            } else {
                "once the cluster grew"
            }
        );
        assert_eq!(nodes[2].region_placement(), nodes[0].region_placement());
    }
}

/// Node `id` of `nodes`.
fn node_mut(nodes: &mut [Node], id: NodeId) -> &mut Node {
    nodes.iter_mut().find(|n| n.id() == id).expect("node")
}

/// Of nodes 1, 2 and 3: the one hosting `GROUP`'s memory node primary, its backup, and the
/// third, which hosts neither.
fn memnode_roles() -> (NodeId, NodeId, NodeId) {
    let hosts = choose_memnode_hosts(GROUP, &[1, 2, 3]);
    let third = [1, 2, 3].into_iter().find(|n| !hosts[..2].contains(n)).unwrap();
    (hosts[0], hosts[1], third)
}

/// One hop of `nodes`: timers that are due fire, every datagram queued is delivered 25 us
/// later, and `on_deliver` sees each ordered delivery (node index, payload).
fn hop(nodes: &mut [Node], now: &mut Time, on_deliver: &mut dyn FnMut(usize, &[u8])) {
    for n in nodes.iter_mut() {
        if n.poll_timeout().is_some_and(|t| t <= *now) {
            n.handle_timeout(*now);
        }
    }
    let mut flight = Vec::new();
    for n in nodes.iter_mut() {
        let from = n.id();
        while let Some(t) = n.poll_transmit() {
            flight.push((from, t.dest, t.payload.to_vec()));
        }
    }
    *now += 25_000;
    for (from, to, bytes) in flight {
        node_mut(nodes, to).handle_packet(*now, from, &bytes);
    }
    for (i, n) in nodes.iter_mut().enumerate() {
        while let Some(e) = n.poll_event() {
            if let Event::OrderedDeliver { payload, .. } = &e {
                on_deliver(i, payload);
            }
        }
    }
}

/// Runs `nodes` in hops, `max` of them: every datagram sent in one hop arrives in the
/// next, 25 us later. Returns the hop at which each node (by index) first delivered
/// `payload`.
fn hops_to_deliver(nodes: &mut [Node], now: &mut Time, payload: &[u8], max: u32) -> Vec<Option<u32>> {
    let mut delivered_at: Vec<Option<u32>> = vec![None; nodes.len()];
    for h in 1..=max {
        hop(nodes, now, &mut |i, p| {
            if p == payload {
                delivered_at[i].get_or_insert(h);
            }
        });
    }
    delivered_at
}

#[test]
fn members_learn_committed_entries_from_the_backup_a_hop_sooner() {
    let (mut nodes, mut now, mut events) = three_nodes_in_the_group(300 * MILLIS);
    let (primary, backup, third) = memnode_roles();
    // Idle, then one message from the backup's node, delivered in hops: every datagram
    // sent in one hop arrives in the next, 25 us later.
    let until = now + 200 * MILLIS;
    run(&mut nodes, &mut now, until, &mut events);
    node_mut(&mut nodes, backup)
        .submit_ordered(now, GROUP, b"hop", false)
        .unwrap();
    let delivered_at = hops_to_deliver(&mut nodes, &mut now, b"hop", 8);
    let hops = |id: NodeId| delivered_at[id as usize - 1];
    eprintln!("primary {primary}, backup {backup}, third {third}: delivered at hops {delivered_at:?}");
    // Append (1), replicate (2), then the backup's push reaches the third member (3) while
    // its acknowledgement reaches the primary (3), whose member learns there. The backup's
    // own member waits for the primary's answer (4): its replica does not tell it (its
    // sender would append a hop before the primary's and win every race).
    assert_eq!(
        hops(third),
        Some(3),
        "the third member learns from the backup's push"
    );
    assert_eq!(
        hops(primary),
        Some(3),
        "the primary's member learns at the acknowledgement"
    );
    assert_eq!(
        hops(backup),
        Some(4),
        "the backup's member learns from the answer"
    );
    let pushed = node_mut(&mut nodes, third)
        .ordered_member(GROUP)
        .unwrap()
        .counters()
        .entries_pushed;
    assert!(pushed >= 1, "the third member learned from a push");
    let sent = node_mut(&mut nodes, backup)
        .ordered_transport_counters()
        .committed_sent;
    assert!(sent >= 1, "the backup's node pushed");
}

/// A forged `Committed` push from `from`: one entry at position `pos` (a message of
/// `sender`'s), for memory node `memnode` at `epoch`.
fn forged_push(
    from: NodeId,
    incarnation: u32,
    memnode: u16,
    epoch: u64,
    pos: u64,
    sender: NodeId,
) -> Vec<u8> {
    use tutti_proto::ordered::{Entry, EntryKind};
    use tutti_wire::packet::{OrderedCommitted, OrderedKind};
    let entry = Entry {
        pos,
        node: sender,
        kind: EntryKind::Data {
            epoch: 0,
            first_seq: 1_000,
            count: 1,
            safe: false,
        },
    };
    let mut body = OrderedCommitted {
        memnode,
        reserved: [0; 6],
        epoch,
        tail: pos + 1,
        first: pos,
    }
    .to_bytes()
    .to_vec();
    body.extend_from_slice(&entry.encode());
    forge_ordered(from, incarnation, OrderedKind::Committed, &body)
}

/// A `Committed` push that does not come from the group's backup at this node's placement
/// (here: from the primary's node, then from the backup naming another placement epoch) is
/// refused and counted, and its entry is not learned.
#[test]
fn a_push_not_from_the_backup_is_refused() {
    use tutti_proto::ordered::MEMNODE;
    let (mut nodes, mut now, mut events) = three_nodes_in_the_group(300 * MILLIS);
    let until = now + 100 * MILLIS;
    run(&mut nodes, &mut now, until, &mut events);
    let (primary, backup, third) = memnode_roles();
    let learned = node_mut(&mut nodes, third)
        .ordered_member(GROUP)
        .unwrap()
        .learned();
    let pushes = node_mut(&mut nodes, third)
        .ordered_member(GROUP)
        .unwrap()
        .counters()
        .pushes;
    let forged = |from: NodeId, epoch: u64, incarnation: u32| {
        forged_push(from, incarnation, MEMNODE, epoch, learned, primary)
    };
    let incarnation = |nodes: &mut [Node], id: NodeId| node_mut(nodes, id).incarnation();
    let from_primary = forged(primary, 1, incarnation(&mut nodes, primary));
    let wrong_epoch = forged(backup, 2, incarnation(&mut nodes, backup));
    let target = node_mut(&mut nodes, third);
    target.handle_packet(now, primary, &from_primary);
    assert_eq!(target.ordered_transport_counters().committed_refused, 1);
    target.handle_packet(now, backup, &wrong_epoch);
    assert_eq!(target.ordered_transport_counters().committed_refused, 2);
    let m = target.ordered_member(GROUP).unwrap();
    assert_eq!(m.learned(), learned, "a refused push taught nothing");
    assert_eq!(m.counters().pushes, pushes);
}

/// The memory node's hosts take a message's payload from the writes their replica applies
/// (the append carries it to the primary, the replicate to the backup), so a sender
/// disseminates it only to the members on neither host: here the third node's messages go
/// to nobody but the primary, and every member still delivers every one of them without a
/// pull repair.
#[test]
fn the_memory_node_hosts_take_payloads_from_the_append_not_from_dissemination() {
    let (mut nodes, mut now, mut events) = three_nodes_in_the_group(300 * MILLIS);
    let until = now + 100 * MILLIS;
    run(&mut nodes, &mut now, until, &mut events);
    let (primary, backup, third) = memnode_roles();
    let runs_before = node_mut(&mut nodes, third)
        .ordered_transport_counters()
        .payload_runs_sent;
    let tapped_before =
        |nodes: &mut [Node], id: NodeId| node_mut(nodes, id).ordered_transport_counters().payloads_tapped;
    let (p0, b0) = (
        tapped_before(&mut nodes, primary),
        tapped_before(&mut nodes, backup),
    );
    for i in 0..20u8 {
        node_mut(&mut nodes, third)
            .submit_ordered(now, GROUP, &[b't', i], false)
            .unwrap();
        let until = now + MILLIS;
        run(&mut nodes, &mut now, until, &mut events);
    }
    let until = now + 200 * MILLIS;
    run(&mut nodes, &mut now, until, &mut events);
    for (i, evs) in events.iter().enumerate() {
        let got: Vec<Vec<u8>> = delivered(evs)
            .into_iter()
            .filter(|(s, _)| *s == third)
            .map(|(_, p)| p)
            .collect();
        let want: Vec<Vec<u8>> = (0..20u8).map(|i| vec![b't', i]).collect();
        assert_eq!(got, want, "node {} delivered every message of the third", i + 1);
    }
    assert_eq!(
        node_mut(&mut nodes, third)
            .ordered_transport_counters()
            .payload_runs_sent,
        runs_before,
        "the third node disseminated nothing: both other members host the memory node"
    );
    for id in [primary, backup] {
        let n = node_mut(&mut nodes, id);
        assert!(
            n.ordered_transport_counters().payloads_tapped >= if id == primary { p0 + 20 } else { b0 + 20 },
            "node {id} took every payload from its replica"
        );
        assert_eq!(
            n.ordered_member(GROUP).unwrap().counters().repairs,
            0,
            "node {id} repaired nothing"
        );
    }
}

/// As above for an `evs` group, whose list's memory node runs on the list's founder (node
/// 1, the lowest of the side) without a backup: the others' messages reach the founder's
/// member only through their appends, and every member delivers all of them in one order
/// without a pull repair.
#[test]
fn an_evs_founder_takes_payloads_from_the_appends() {
    let (mut nodes, mut now, mut events) = three_nodes_configured_in_an_evs_group();
    let whole = |_: NodeId, _: NodeId| true;
    let tapped = nodes[0].ordered_transport_counters().payloads_tapped;
    send_rounds(&mut nodes, &mut now, &mut events, &whole, 7, 10);
    let got: Vec<_> = events.iter().map(|e| delivered_tagged(e, 7)).collect();
    assert_eq!(got[0].len(), 30, "every message at the founder");
    assert_eq!(got[0], got[1]);
    assert_eq!(got[0], got[2]);
    assert!(
        nodes[0].ordered_transport_counters().payloads_tapped >= tapped + 20,
        "the founder took the others' 20 payloads from their appends"
    );
    let repairs = nodes[0]
        .evs_member(GROUP)
        .and_then(|m| m.current())
        .map(|m| m.counters().repairs);
    assert_eq!(repairs, Some(0), "the founder repaired nothing");
}

/// A member disseminates only its own messages, so a payload run whose header names
/// another sender than the node it came from is refused and counted: here the third node
/// forges the primary's next message to the backup's node, which does not take it (the
/// real message, sent next, is delivered with its own bytes).
#[test]
fn a_payload_run_not_from_its_sender_is_refused() {
    use tutti_wire::packet::{push_payload_run, start_payload_run, OrderedKind, OrderedPayloadHeader};
    let (mut nodes, mut now, mut events) = three_nodes_in_the_group(300 * MILLIS);
    let until = now + 100 * MILLIS;
    run(&mut nodes, &mut now, until, &mut events);
    let (primary, backup, third) = memnode_roles();
    let seq = node_mut(&mut nodes, primary)
        .ordered_member(GROUP)
        .unwrap()
        .next_submit_seq();
    let mut body = Vec::new();
    start_payload_run(
        &mut body,
        &OrderedPayloadHeader {
            sender: primary,
            epoch: 0,
            seq,
        },
    );
    push_payload_run(&mut body, b"forged");
    let incarnation = node_mut(&mut nodes, third).incarnation();
    let buf = forge_ordered(third, incarnation, OrderedKind::PayloadRun, &body);
    let target = node_mut(&mut nodes, backup);
    target.handle_packet(now, third, &buf);
    assert_eq!(target.ordered_transport_counters().payloads_refused, 1);
    node_mut(&mut nodes, primary)
        .submit_ordered(now, GROUP, b"real", false)
        .unwrap();
    let until = now + 100 * MILLIS;
    run(&mut nodes, &mut now, until, &mut events);
    for (i, e) in events.iter().enumerate() {
        let from_primary: Vec<Vec<u8>> = delivered(e)
            .into_iter()
            .filter(|(s, _)| *s == primary)
            .map(|(_, p)| p)
            .collect();
        assert_eq!(
            from_primary,
            vec![b"real".to_vec()],
            "node {} delivered the real bytes",
            i + 1
        );
    }
}

/// A datagram from `from` (at `incarnation`) carrying one whole ordered message of `kind`
/// for the test group: what a node holding the cluster key can forge.
fn forge_ordered(
    from: NodeId,
    incarnation: u32,
    kind: tutti_wire::packet::OrderedKind,
    body: &[u8],
) -> Vec<u8> {
    use tutti_wire::packet::{Encoder, OrderedHeader};
    let header = OrderedHeader::whole(GROUP, 0xf0f0, kind, body.len() as u32);
    let mut buf = vec![0u8; 1500];
    let mut enc = Encoder::new(&mut buf, from, incarnation).unwrap();
    enc.push_ordered(&header, body).unwrap();
    let len = enc.len();
    buf.truncate(len);
    buf
}

/// Per node, the answers that read its `evs` member's current list (reads, and its
/// appends).
fn list_reads(nodes: &[Node]) -> Vec<u64> {
    nodes
        .iter()
        .map(|n| {
            n.evs_member(GROUP)
                .and_then(|m| m.current())
                .map_or(0, |m| m.counters().reads)
        })
        .collect()
}

/// Node `sender` submits one message of an `evs` group of nodes 1, 2 and 3 (configured,
/// one message, then idle 200 ms), delivered in hops: every datagram sent in one hop arrives in the
/// next, 25 us later. Returns the hop at which each node delivered it, and how many
/// answers that read the list (reads, and the sender's appends) each node's member had.
fn evs_hops(sender: NodeId) -> (Vec<Option<u32>>, Vec<u64>) {
    evs_hops_with(evs(), sender)
}

fn evs_hops_with(settings: OrderedSettings, sender: NodeId) -> (Vec<Option<u32>>, Vec<u64>) {
    let (mut nodes, mut now, mut events) = three_nodes_configured_in_an_evs_group_with(settings);
    // One message first: a member turns payload hints off once pushes feed it.
    node_mut(&mut nodes, sender)
        .submit_ordered(now, GROUP, b"first", false)
        .unwrap();
    let until = now + 200 * MILLIS;
    run(&mut nodes, &mut now, until, &mut events);
    let reads_before = list_reads(&nodes);
    node_mut(&mut nodes, sender)
        .submit_ordered(now, GROUP, b"hop", false)
        .unwrap();
    let delivered_at = hops_to_deliver(&mut nodes, &mut now, b"hop", 10);
    let read: Vec<u64> = list_reads(&nodes)
        .iter()
        .zip(&reads_before)
        .map(|(a, b)| a - b)
        .collect();
    (delivered_at, read)
}

/// An `evs` list has no backup: its memory node's primary, on the list's founder, pushes
/// the entries an append committed to the list's other members, who learn them a hop
/// after the append lands rather than by a read round trip started when the payload
/// arrives; and a payload whose entry was pushed starts no read. Every entry of an `evs`
/// list is delivered once every member holds it, so each member delivers a hop after the
/// last one learned it (the tells).
#[test]
fn evs_members_learn_committed_entries_from_the_founder_push() {
    // From the founder: its append is local; the payload and the push reach the others
    // at hop 1, their tells reach everyone at hop 2. Before the push: the payload's hint
    // started a read at hop 1, answered at hop 2, told at hop 3, delivered at hop 4.
    let (hops, reads) = evs_hops(1);
    eprintln!("from the founder: delivered at hops {hops:?}, reads per member {reads:?}");
    assert_eq!(hops, vec![Some(2); 3], "from the founder");
    assert_eq!(reads[1..], [0, 0], "nodes 2 and 3 learned without reading");
    // From node 2: the append and the payload land at hop 1, the push (to node 3) and the
    // answer (to node 2) at hop 2, the tells at hop 3.
    let (hops, reads) = evs_hops(2);
    eprintln!("from node 2: delivered at hops {hops:?}, reads per member {reads:?}");
    assert_eq!(hops, vec![Some(3); 3], "from node 2");
    assert_eq!(reads[2], 0, "node 3 learned without reading");
}

/// Agreed delivery (`OrderedSettings::evs_agreed`): a member delivers an entry once it
/// learned it, without waiting for the others' tells: a hop sooner everywhere.
#[test]
fn agreed_evs_delivery_takes_a_hop_less() {
    // From the founder: its append is local (its answer at hop 1); the payload and the
    // push reach the others at hop 1.
    let (hops, _) = evs_hops_with(evs_agreed(), 1);
    eprintln!("agreed, from the founder: delivered at hops {hops:?}");
    assert_eq!(hops, vec![Some(1); 3], "from the founder");
    // From node 2: the append and the payload land at hop 1, where the founder, beside its
    // memory node, learns and delivers it; the push and the answer at hop 2.
    let (hops, _) = evs_hops_with(evs_agreed(), 2);
    eprintln!("agreed, from node 2: delivered at hops {hops:?}");
    assert_eq!(hops, vec![Some(1), Some(2), Some(2)], "from node 2");
}

/// What a member delivered before its transitional configuration, from the last regular
/// configuration before it on (payloads), and that transitional configuration's members.
fn delivered_before_last_transitional(events: &[Event]) -> (Vec<Vec<u8>>, Vec<NodeId>) {
    let mut out = Vec::new();
    let mut last = (Vec::new(), Vec::new());
    for e in events {
        match e {
            Event::OrderedDeliver { payload, .. } => out.push(payload.to_vec()),
            Event::OrderedConfiguration { config, .. } if config.transitional => {
                last = (std::mem::take(&mut out), config.members.clone());
            }
            Event::OrderedConfiguration { .. } => out.clear(),
            _ => {}
        }
    }
    last
}

/// Agreed delivery at a split {1,2} | {3} with messages in flight: the side that keeps the
/// list's founder drains the old list up to the first `Seal` before it moves (the side
/// without it leaves its list where it stands), and its two members move together (one
/// transitional configuration of both) having delivered the same messages there. This
/// world's views reach nodes 1 and 2 together, so it shows the drain at work, not the
/// race it closes (a member that froze before a push arrived, holding less than another
/// delivered): the proof harness finds that one (`ordered_evs`, 1,000 seeds, half agreed:
/// 1,454 transitional configurations a member was alone in without the drain, 220 with
/// it, all where the old list's founder was on the other side).
#[test]
fn agreed_evs_movers_with_the_founder_drain_the_old_list_to_its_seal() {
    let (mut nodes, mut now, mut events) = three_nodes_configured_in_an_evs_group_with(evs_agreed());
    let whole = |_: NodeId, _: NodeId| true;
    send_rounds(&mut nodes, &mut now, &mut events, &whole, 1, 5);
    // Every node sends as the network splits.
    let split = |a: NodeId, b: NodeId| (a == 3) == (b == 3);
    for round in 0..5u8 {
        for n in nodes.iter_mut() {
            let id = n.id() as u8;
            n.submit_ordered(now, GROUP, &[2, id, round], false).unwrap();
        }
        let until = now + 100_000;
        run_cut(&mut nodes, &mut now, until, &mut events, &split);
    }
    run_until_configured(
        &mut nodes,
        &mut now,
        &mut events,
        &split,
        &[0, 1],
        &[1, 2],
        10_000 * MILLIS,
    );
    let (d1, t1) = delivered_before_last_transitional(&events[0]);
    let (d2, t2) = delivered_before_last_transitional(&events[1]);
    assert_eq!(t1, vec![1, 2], "node 1's transitional configuration");
    assert_eq!(t2, vec![1, 2], "node 2's transitional configuration");
    assert_eq!(
        d1, d2,
        "nodes 1 and 2 delivered the same in the old configuration"
    );
    for i in [0, 1] {
        let c = nodes[i].evs_member(GROUP).unwrap().counters().clone();
        assert_eq!(c.transitional_alone, 0, "{c:?}");
        assert!(c.drains > 0 && c.drains_timed_out == 0, "{c:?}");
        assert_eq!(c.transitional_missing, 0, "{c:?}");
    }
    // Node 3, cut off from the founder, left its list where it stood.
    assert_eq!(nodes[2].evs_member(GROUP).unwrap().counters().drains, 0);
    // Both sides go on.
    send_rounds(&mut nodes, &mut now, &mut events, &split, 3, 3);
    assert_eq!(delivered_tagged(&events[0], 3), delivered_tagged(&events[1], 3));
    assert_eq!(delivered_tagged(&events[0], 3).len(), 6);
    assert_eq!(delivered_tagged(&events[2], 3).len(), 3);
}

/// An `evs` push is taken only from the founder of the list it names: one from another
/// member, or naming a list epoch this member is not in, is refused and counted, and its
/// entry is not learned.
#[test]
fn an_evs_push_not_from_the_founder_is_refused() {
    use tutti_proto::ordered::epoch_memnode;
    let (mut nodes, now, _) = three_nodes_configured_in_an_evs_group();
    let list = nodes[2].evs_member(GROUP).and_then(|m| m.current()).unwrap();
    let (learned, epoch) = (list.learned(), list.list_epoch().unwrap());
    assert_eq!(epoch.founder, 1, "node 1 founds the list");
    let forged = |from: NodeId, number: u32, founder: NodeId, incarnation: u32| {
        let named = tutti_proto::ordered::EpochId { number, founder };
        forged_push(
            from,
            incarnation,
            epoch_memnode(named),
            named.to_u64(),
            learned,
            2,
        )
    };
    let incarnation = |nodes: &mut [Node], id: NodeId| node_mut(nodes, id).incarnation();
    // Node 2 claims to found this list; then the founder names a list epoch after it.
    let not_founder = forged(2, epoch.number, 2, incarnation(&mut nodes, 2));
    let other_list = forged(1, epoch.number + 1, 1, incarnation(&mut nodes, 1));
    let refused = nodes[2].ordered_transport_counters().committed_refused;
    nodes[2].handle_packet(now, 2, &not_founder);
    nodes[2].handle_packet(now, 1, &other_list);
    assert_eq!(
        nodes[2].ordered_transport_counters().committed_refused,
        refused + 2
    );
    let m = nodes[2].evs_member(GROUP).unwrap();
    assert_eq!(m.counters().stale_committed, 2);
    assert_eq!(
        m.current().unwrap().learned(),
        learned,
        "a refused push taught nothing"
    );
}

/// `evs`, paced: node 1 (the list's founder) submits one message a millisecond, 100 of
/// them, over a network where every datagram takes 25 us. Nodes 2 and 3 learn each entry
/// from the founder's push: they read the list only when a tell is late, which it never
/// is here (before: a read per message each, started by the push when their last answer
/// was older than the wait for the others' progress). The member counter `reads` counts
/// every answer that read the list: the founder's are its appends.
#[test]
fn paced_evs_members_fed_by_pushes_do_not_read() {
    let (mut nodes, mut now, _) = three_nodes_configured_in_an_evs_group();
    let mut delivered = [0u64; 3];
    let step = |nodes: &mut [Node], now: &mut Time, delivered: &mut [u64; 3]| {
        hop(nodes, now, &mut |i, p| {
            if p.first() == Some(&b'p') {
                delivered[i] += 1;
            }
        })
    };
    // Ten messages to settle (pushes turn the hints off), then the hundred counted.
    for _ in 0..10 {
        nodes[0].submit_ordered(now, GROUP, b"warm", false).unwrap();
        for _ in 0..40 {
            step(&mut nodes, &mut now, &mut delivered);
        }
    }
    let before = list_reads(&nodes);
    for i in 0..100u8 {
        nodes[0].submit_ordered(now, GROUP, &[b'p', i], false).unwrap();
        for _ in 0..40 {
            step(&mut nodes, &mut now, &mut delivered);
        }
    }
    let read: Vec<u64> = list_reads(&nodes)
        .iter()
        .zip(&before)
        .map(|(a, b)| a - b)
        .collect();
    eprintln!("paced from the founder: delivered {delivered:?}, reads per member {read:?}");
    assert_eq!(delivered, [100; 3], "every message at every member");
    assert!(read[1] <= 5 && read[2] <= 5, "nodes 2 and 3 read: {read:?}");
}
