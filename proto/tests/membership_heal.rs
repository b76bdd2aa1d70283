//! Issue 11/12: a partition heal must not remove a healthy member. Three `Node`s over a
//! network this test controls (no loss, a cut it switches on and off): {1, 2} | {3} (and
//! {1} | {2, 3}, the coordinator cut off). While cut off, each side holds the other
//! failed, at the heartbeat it knew; at the heal those claims reach nodes that heard the
//! accused directly all along (or that just heard it again). Before the fix node 1 took
//! node 3's "2 failed" as final and installed [1, 3] (then [1] on node 2's "3 failed",
//! then [1, 2, 3] again): a healthy member removed by a claim made while cut off.

use std::collections::VecDeque;
use std::sync::Arc;
use tutti_proto::{Event, Node, NodeId, Settings, Time, View, MILLIS};

const STEP: Time = 5 * MILLIS;

fn settings() -> Settings {
    Settings {
        gossip_period: 20 * MILLIS,
        suspect_timeout: 400 * MILLIS,
        ..Settings::default()
    }
}

struct Net {
    nodes: Vec<Node>,
    now: Time,
    queue: VecDeque<(NodeId, NodeId, Vec<u8>)>,
    /// Nodes cut off from the others (both ways), if a partition is on.
    cut: Vec<NodeId>,
    /// Views installed, per node (index = id - 1).
    views: Vec<Vec<Arc<View>>>,
}

impl Net {
    fn new(n: u32, rng: u64) -> Self {
        let nodes = (1..=n)
            .map(|id| Node::new(id, 1, &[1], settings(), 0, rng * 100 + u64::from(id)))
            .collect();
        Net {
            nodes,
            now: 0,
            queue: VecDeque::new(),
            cut: Vec::new(),
            views: (0..n).map(|_| Vec::new()).collect(),
        }
    }

    fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize - 1]
    }

    fn drain(&mut self, i: usize) {
        let from = self.nodes[i].id();
        while let Some(t) = self.nodes[i].poll_transmit() {
            self.queue.push_back((from, t.dest, t.payload.to_vec()));
        }
        while let Some(e) = self.nodes[i].poll_event() {
            if let Event::ViewChange(v) = e {
                self.views[i].push(v);
            }
        }
    }

    fn step(&mut self) {
        self.now += STEP;
        for i in 0..self.nodes.len() {
            self.nodes[i].handle_timeout(self.now);
            self.drain(i);
        }
        while let Some((from, to, bytes)) = self.queue.pop_front() {
            let i = to as usize - 1;
            if i >= self.nodes.len() || self.cut.contains(&from) != self.cut.contains(&to) {
                continue;
            }
            self.nodes[i].handle_packet(self.now, from, &bytes);
            self.drain(i);
        }
    }

    fn run_until(&mut self, limit: Time, cond: impl Fn(&Self) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            self.step();
            if cond(self) {
                return true;
            }
        }
        false
    }

    fn members(&self, id: NodeId) -> Vec<NodeId> {
        self.node(id).view().members.iter().map(|m| m.node).collect()
    }

    fn one_view_of(&self, want: &[NodeId]) -> bool {
        let id = self.node(want[0]).view().id;
        want.iter()
            .all(|&n| self.node(n).view().id == id && self.members(n) == want)
    }

    fn summary(&self) -> String {
        (1..=self.nodes.len() as NodeId)
            .map(|n| format!("node {n}: {:?}", self.members(n)))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Cuts `minority` off until each side holds the other failed and installed its own view,
/// heals `delay_rounds` rounds later, and returns the member lists of each node's views
/// from the one it held at the heal until the three share one view again (and a while after).
fn heal(rng: u64, minority: &[NodeId], delay_rounds: u32) -> Result<Vec<Vec<Vec<NodeId>>>, String> {
    let mut net = Net::new(3, rng);
    let all = [1, 2, 3];
    if !net.run_until(5_000 * MILLIS, |n| n.one_view_of(&all)) {
        return Err(format!("no first view: {}", net.summary()));
    }
    let majority: Vec<NodeId> = all.iter().copied().filter(|n| !minority.contains(n)).collect();
    net.cut = minority.to_vec();
    let (min, maj) = (minority.to_vec(), majority.clone());
    let split = net.run_until(10_000 * MILLIS, |n| {
        n.one_view_of(&maj)
            && n.one_view_of(&min)
            && min
                .iter()
                .all(|&a| maj.iter().all(|&b| n.node(a).holds_failed(b)))
            && maj
                .iter()
                .all(|&a| min.iter().all(|&b| n.node(a).holds_failed(b)))
    });
    if !split {
        return Err(format!("the sides did not split: {}", net.summary()));
    }
    for _ in 0..delay_rounds * 4 {
        net.step();
    }
    let at_heal: Vec<usize> = net.views.iter().map(Vec::len).collect();
    net.cut.clear();
    if !net.run_until(10_000 * MILLIS, |n| n.one_view_of(&all)) {
        return Err(format!("no view of all after the heal: {}", net.summary()));
    }
    // Let stale claims still travelling arrive.
    for _ in 0..200 {
        net.step();
    }
    if !net.one_view_of(&all) {
        return Err(format!("the view of all did not last: {}", net.summary()));
    }
    Ok(net
        .views
        .iter()
        .zip(at_heal)
        .map(|(vs, k)| {
            vs[k.saturating_sub(1)..]
                .iter()
                .map(|v| v.members.iter().map(|m| m.node).collect())
                .collect()
        })
        .collect())
}

/// After the heal no node installs a view without a member its previous view had: every
/// member is alive and heard from directly, so nobody may be removed.
#[test]
fn a_partition_heal_removes_no_member() {
    let mut failures = Vec::new();
    let mut runs = 0;
    for minority in [&[3][..], &[1][..]] {
        for delay in [0, 1, 3] {
            for rng in 1..=8 {
                runs += 1;
                match heal(rng, minority, delay) {
                    Err(e) => {
                        failures.push(format!("cut {minority:?}, heal +{delay} rounds, rng {rng}: {e}"))
                    }
                    Ok(views) => {
                        for (i, vs) in views.iter().enumerate() {
                            for w in vs.windows(2) {
                                if let Some(gone) = w[0].iter().find(|m| !w[1].contains(m)) {
                                    failures.push(format!(
                                        "cut {minority:?}, heal +{delay} rounds, rng {rng}: node {} removed {gone} \
                                         after the heal (views {vs:?})",
                                        i + 1
                                    ));
                                    break;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {runs} heals went wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
