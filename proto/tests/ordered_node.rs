//! Ordered groups through `Node`'s API: a one-node cluster (member and memory node on one
//! node, no network), and three nodes over an instant, lossless network (creation by the
//! first joiner, state transfer to the others, one total order). The simulator
//! (`tutti-sim --ordered-groups`) covers faults.

use std::collections::VecDeque;
use tutti_proto::ordered::{choose_memnode_hosts, OrderedSettings, OrderedStatusEvent, RemoveReason};
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
    run_cut(nodes, now, until, events, &[]);
}

/// As `run`, with the nodes in `cut` cut off from the others (datagrams both ways lost).
/// A node left out of `nodes` is crashed: nothing reaches it.
fn run_cut(nodes: &mut [Node], now: &mut Time, until: Time, events: &mut [Vec<Event>], cut: &[NodeId]) {
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
            if cut.contains(&from) != cut.contains(&to) {
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

/// Three nodes in one cluster, all joined to `GROUP` and run `settle` more: the nodes, the
/// time and the events so far per node.
fn three_nodes_in_the_group(settle: Time) -> (Vec<Node>, Time, Vec<Vec<Event>>) {
    three_nodes_in_the_group_with(settle, ordered())
}

/// As `three_nodes_in_the_group`, the group with settings `group`.
fn three_nodes_in_the_group_with(settle: Time, group: OrderedSettings) -> (Vec<Node>, Time, Vec<Vec<Event>>) {
    let mut nodes: Vec<Node> = (1..=3)
        .map(|id| Node::new(id, 1, &[1, 2, 3], settings(), 0, u64::from(id)))
        .collect();
    let mut now = 0;
    let mut events = vec![Vec::new(), Vec::new(), Vec::new()];
    run(&mut nodes, &mut now, 500 * MILLIS, &mut events);
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
    for round in 0..20u8 {
        for (i, n) in nodes.iter_mut().enumerate() {
            n.submit_ordered(now, GROUP, &[i as u8, round], false).unwrap();
        }
        let until = now + MILLIS;
        run(&mut nodes, &mut now, until, &mut events);
    }
    let until = now + 200 * MILLIS;
    run(&mut nodes, &mut now, until, &mut events);
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
    for round in 0..10u8 {
        for (i, n) in nodes.iter_mut().enumerate() {
            n.submit_ordered(now, GROUP, &[i as u8, round], false).unwrap();
        }
        let until = now + MILLIS;
        run(&mut nodes, &mut now, until, &mut events);
    }
    let until = now + 200 * MILLIS;
    run(&mut nodes, &mut now, until, &mut events);
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

#[test]
fn the_node_refuses_an_evs_group_it_cannot_host_yet() {
    let mut node = Node::new(1, 1, &[], settings(), 0, 7);
    let evs = OrderedSettings {
        partition: tutti_proto::ordered::PartitionPolicy::Evs,
        ..ordered()
    };
    match node.join_ordered(0, GROUP, evs) {
        Err(e) => assert!(e.to_string().contains("evs"), "{e}"),
        Ok(()) => panic!("an evs group joined through Node"),
    }
    assert!(!node.is_ordered(GROUP));
    node.join_ordered(0, GROUP, ordered()).unwrap();
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
        run_cut(&mut nodes[..live], now, until, &mut events[..live], cut);
        if cond(nodes, events) {
            return true;
        }
    }
    false
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
    let suspected = run_until(
        &mut nodes,
        2,
        &mut now,
        1_000 * MILLIS,
        &mut events,
        &[],
        |n, _| n[..2].iter().all(|n| n.suspected_and_failed().0 > 0),
    );
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
    let suspected = run_until(
        &mut nodes,
        2,
        &mut now,
        1_000 * MILLIS,
        &mut events,
        &[],
        |n, _| n[..2].iter().all(|n| n.suspected_and_failed().0 > 0),
    );
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
    let mut nodes: Vec<Node> = ids
        .iter()
        .map(|&id| Node::new(id, 1, &ids, settings(), 0, u64::from(id)))
        .collect();
    let mut now = 0;
    let mut events: Vec<Vec<Event>> = ids.iter().map(|_| Vec::new()).collect();
    run(&mut nodes, &mut now, 500 * MILLIS, &mut events);
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
