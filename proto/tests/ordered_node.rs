//! Ordered groups through `Node`'s API: a one-node cluster (member and memory node on one
//! node, no network), and three nodes over an instant, lossless network (creation by the
//! first joiner, state transfer to the others, one total order). The simulator
//! (`tutti-sim --ordered-groups`) covers faults.

use std::collections::VecDeque;
use tutti_proto::ordered::{OrderedSettings, OrderedStatusEvent, RemoveReason};
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
        n.join_ordered(now, GROUP, ordered()).unwrap();
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
