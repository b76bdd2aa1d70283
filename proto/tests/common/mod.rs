//! Shared harness of the hostile-input tests: a small honest cluster of `Node`s wired
//! together by an in-test loop (every transmit to an honest node is delivered, nothing is
//! lost), an attacker that injects well-formed datagrams built with the wire `Encoder`, and
//! the checks every honest member must pass whatever the attacker sends.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use tutti_proto::{Event, Node, NodeId, Settings, Time, View, MILLIS};
use tutti_wire::packet::{
    DataHeader, DigestEntry, DigestHeader, Encoder, HeartbeatEntry, HeartbeatHeader, MemberEntry,
    RequestEntry, RequestHeader, ViewGroupMember, ViewGroupSlice, ViewPartHeader, ViewParts,
    DATAGRAM_HEADER_LEN, MAX_DATAGRAM, MESSAGE_HEADER_LEN,
};

/// The group every honest node joins.
pub const GROUP: u64 = 7;
/// The attacker's own node id when it does not spoof one (never an honest node).
pub const ATTACKER: NodeId = 100;
/// Simulated time per step of the honest loop.
pub const STEP: Time = 5 * MILLIS;

/// Settings of the honest cluster: fast rounds (so that a test covers many of them) and
/// small budgets (so that budget bounds are reached by a test-sized attack).
pub fn settings() -> Settings {
    Settings {
        gossip_period: 20 * MILLIS,
        suspect_timeout: 400 * MILLIS,
        group_budget_bytes: 1 << 20,
        node_budget_bytes: 4 << 20,
        retransmit_budget_bytes: 256 << 10,
        linger: 200 * MILLIS,
        ..Settings::default()
    }
}

/// A heartbeat header naming the view node `i` holds now, as a member of it would send.
pub fn heartbeat_header(c: &Cluster, i: usize) -> HeartbeatHeader {
    let v = c.nodes[i].view().id;
    HeartbeatHeader {
        view_counter: v.counter,
        view_coordinator: v.coordinator,
        view_coordinator_incarnation: v.coordinator_incarnation,
        max_counter: v.counter,
        view_hash: 0,
    }
}

/// What one call into a node produced.
#[derive(Debug, Default, Clone, Copy)]
pub struct CallOutput {
    pub datagrams: usize,
    pub bytes: usize,
    pub events: usize,
    pub largest: usize,
}

/// Per honest node, per stream it receives: FIFO and duplicate bookkeeping.
#[derive(Default)]
pub struct StreamLog {
    /// Next seq FIFO expects (after a delivery or a `Lost`).
    pub expected: Option<u64>,
    pub delivered: BTreeSet<u64>,
    /// Sum of `Lost` counts (saturating).
    pub lost: u64,
    /// `Lost` ranges `(first, end)`.
    pub lost_ranges: Vec<(u64, u64)>,
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    pub now: Time,
    /// Datagrams in flight: (from, to, bytes).
    pub queue: VecDeque<(NodeId, NodeId, Vec<u8>)>,
    /// Per honest node: per (sender, stream).
    pub logs: Vec<HashMap<(NodeId, u32), StreamLog>>,
    /// Views installed, per node.
    pub views: Vec<Vec<std::sync::Arc<View>>>,
    /// What honest senders submitted: (sender, stream, seq) -> payload.
    pub sent: BTreeMap<(NodeId, u32, u64), Vec<u8>>,
    /// Deliveries of an honest stream whose payload differs from what its sender sent
    /// (forgeries by an insider: counted, see the report in `hostile_packets.rs`).
    pub forged_deliveries: u64,
    pub violations: Vec<String>,
}

impl Cluster {
    /// `n` honest nodes (ids `0..n`, seed node 0) that all joined `GROUP`, run until they
    /// share one view of all of them with everyone in the group.
    pub fn new(n: u32, settings: Settings) -> Self {
        let nodes: Vec<Node> = (0..n)
            .map(|i| {
                let mut node = Node::new(i, 1, &[0], settings.clone(), 0, u64::from(i) + 1);
                node.join(0, GROUP);
                node
            })
            .collect();
        let mut c = Cluster {
            logs: (0..n).map(|_| HashMap::new()).collect(),
            views: (0..n).map(|_| Vec::new()).collect(),
            nodes,
            now: 0,
            queue: VecDeque::new(),
            sent: BTreeMap::new(),
            forged_deliveries: 0,
            violations: Vec::new(),
        };
        let ok = c.run_until(5_000 * MILLIS, |c| c.converged());
        assert!(ok, "the honest cluster did not converge: {:?}", c.view_summary());
        c
    }

    pub fn n(&self) -> u32 {
        self.nodes.len() as u32
    }

    pub fn settings(&self) -> &Settings {
        self.nodes[0].settings()
    }

    /// Whether every honest node has the same view, of exactly the honest nodes (in
    /// incarnation 1), with every one of them in `GROUP` under the stream it uses.
    pub fn converged(&self) -> bool {
        let v = self.nodes[0].view();
        let want: Vec<(NodeId, u32)> = (0..self.n()).map(|i| (i, 1)).collect();
        let mut have: Vec<(NodeId, u32)> = v.members.iter().map(|m| (m.node, m.incarnation)).collect();
        have.sort_unstable();
        if have != want {
            return false;
        }
        let Some(gv) = v.group_view(GROUP) else {
            return false;
        };
        if gv.members.len() != self.nodes.len() {
            return false;
        }
        for n in &self.nodes {
            if n.view().id != v.id || gv.stream_of(n.id()) != n.stream(GROUP) {
                return false;
            }
        }
        true
    }

    pub fn view_summary(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| {
                let v = n.view();
                format!(
                    "node {}: view {}/{} members {:?} group {:?}",
                    n.id(),
                    v.id.counter,
                    v.id.coordinator,
                    v.members
                        .iter()
                        .map(|m| (m.node, m.incarnation))
                        .collect::<Vec<_>>(),
                    v.group(GROUP)
                )
            })
            .collect()
    }

    /// Drains node `i`'s transmits (queued for delivery) and events (checked and logged);
    /// returns what the last call produced.
    pub fn drain(&mut self, i: usize) -> CallOutput {
        let mut out = CallOutput::default();
        let from = self.nodes[i].id();
        while let Some(t) = self.nodes[i].poll_transmit() {
            out.datagrams += 1;
            out.bytes += t.payload.len();
            out.largest = out.largest.max(t.payload.len());
            self.queue.push_back((from, t.dest, t.payload.to_vec()));
        }
        while let Some(e) = self.nodes[i].poll_event() {
            out.events += 1;
            self.on_event(i, e);
        }
        out
    }

    fn on_event(&mut self, i: usize, e: Event) {
        match e {
            Event::Deliver {
                sender,
                stream,
                seq,
                payload,
                ..
            } => {
                if let Some(p) = self.sent.get(&(sender, stream, seq)) {
                    if **p != *payload {
                        self.forged_deliveries += 1;
                    }
                }
                let log = self.logs[i].entry((sender, stream)).or_default();
                if !log.delivered.insert(seq) {
                    self.violations
                        .push(format!("node {i} delivered {sender}/{stream}/{seq} twice"));
                }
                if let Some(exp) = log.expected {
                    if exp != seq && self.nodes[i].settings().delivery == tutti_proto::Delivery::Fifo {
                        self.violations.push(format!(
                            "node {i} delivered {sender}/{stream}/{seq} out of FIFO order (expected {exp})"
                        ));
                    }
                }
                log.expected = Some(seq.saturating_add(1));
                if sender == i as NodeId {
                    self.violations
                        .push(format!("node {i} was delivered its own message {seq}"));
                }
            }
            Event::Lost {
                sender,
                stream,
                first,
                count,
                ..
            } => {
                let log = self.logs[i].entry((sender, stream)).or_default();
                if let Some(exp) = log.expected {
                    if exp != first {
                        self.violations.push(format!(
                            "node {i} was told {sender}/{stream}/{first}+{count} Lost, FIFO expected {exp}"
                        ));
                    }
                }
                log.expected = Some(first.saturating_add(count));
                log.lost = log.lost.saturating_add(count);
                log.lost_ranges.push((first, first.saturating_add(count)));
            }
            Event::ViewChange(v) => self.views[i].push(v),
            // These worlds join no ordered group: an ordered event is a bug.
            other => self
                .violations
                .push(format!("node {i}: unexpected ordered-group event {other:?}")),
        }
    }

    /// Delivers queued datagrams to honest nodes (others are dropped) until none is left.
    pub fn flush(&mut self) {
        let n = self.nodes.len();
        let mut budget = 1_000_000usize;
        while let Some((from, to, bytes)) = self.queue.pop_front() {
            budget -= 1;
            assert!(budget > 0, "the honest cluster does not quiesce");
            if (to as usize) < n {
                self.nodes[to as usize].handle_packet(self.now, from, &bytes);
                self.drain(to as usize);
            }
        }
    }

    /// One step of the honest loop: time moves by `STEP`, every node's timer runs, and
    /// every datagram is delivered.
    pub fn step(&mut self) {
        self.now += STEP;
        for i in 0..self.nodes.len() {
            let now = self.now;
            self.nodes[i].handle_timeout(now);
            self.drain(i);
        }
        self.flush();
    }

    /// Steps until `cond` holds (true) or `limit` of simulated time passed (false).
    pub fn run_until(&mut self, limit: Time, cond: impl Fn(&Self) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            self.step();
            if cond(self) {
                return true;
            }
        }
        cond(self)
    }

    pub fn run_for(&mut self, t: Time) {
        let end = self.now + t;
        while self.now < end {
            self.step();
        }
    }

    /// Node `i` publishes one message in `GROUP`; returns its (stream, seq).
    pub fn publish(&mut self, i: usize, payload: &[u8]) -> (u32, u64) {
        let now = self.now;
        let s = self.nodes[i]
            .submit(now, GROUP, 1, payload)
            .expect("honest node joined the group");
        self.sent.insert((i as NodeId, s.stream, s.seq), payload.to_vec());
        self.drain(i);
        (s.stream, s.seq)
    }

    /// The stream honest node `i` sends in `GROUP`.
    pub fn stream_of(&self, i: usize) -> u32 {
        self.nodes[i].stream(GROUP).expect("joined")
    }

    /// The next seq honest node `i` would publish (what it sent so far).
    pub fn next_seq_of(&self, i: usize) -> u64 {
        let stream = self.stream_of(i);
        self.sent
            .range((i as NodeId, stream, 0)..=(i as NodeId, stream, u64::MAX))
            .next_back()
            .map_or(0, |((_, _, s), _)| s + 1)
    }

    /// Injects datagram `bytes` as if sent by `from` to honest node `to`; returns what
    /// that one call produced (transmits are queued, events checked).
    pub fn inject(&mut self, to: usize, from: NodeId, bytes: &[u8]) -> CallOutput {
        let now = self.now;
        self.nodes[to].handle_packet(now, from, bytes);
        self.drain(to)
    }

    /// Whether node `at` delivered (sender, stream, seq).
    pub fn delivered(&self, at: usize, sender: usize, stream: u32, seq: u64) -> bool {
        self.logs[at]
            .get(&(sender as NodeId, stream))
            .is_some_and(|l| l.delivered.contains(&seq))
    }

    /// Every honest node other than the sender delivered each of `msgs` ((sender, stream,
    /// seq) triples).
    pub fn all_delivered(&self, msgs: &[(usize, u32, u64)]) -> bool {
        msgs.iter().all(|&(s, stream, seq)| {
            (0..self.nodes.len())
                .filter(|&i| i != s)
                .all(|i| self.delivered(i, s, stream, seq))
        })
    }

    /// The messages of `msgs` some honest node lacks: (at, sender, seq).
    pub fn missing(&self, msgs: &[(usize, u32, u64)]) -> Vec<(usize, usize, u64)> {
        let mut v = Vec::new();
        for &(s, stream, seq) in msgs {
            for i in (0..self.nodes.len()).filter(|&i| i != s) {
                if !self.delivered(i, s, stream, seq) {
                    v.push((i, s, seq));
                }
            }
        }
        v
    }

    pub fn lost_total(&self, at: usize, sender: usize, stream: u32) -> u64 {
        self.logs[at]
            .get(&(sender as NodeId, stream))
            .map_or(0, |l| l.lost)
    }
}

// ------------------------------------------------------------------ packet building

/// A datagram from `from` (in `incarnation`) holding what `write` pushes.
pub fn datagram(
    from: NodeId,
    incarnation: u32,
    write: impl FnOnce(&mut Encoder<'_>) -> Result<(), tutti_wire::packet::PacketError>,
) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut enc = Encoder::new(&mut buf, from, incarnation).expect("header fits");
    write(&mut enc).expect("message fits a UDP datagram");
    let len = enc.len();
    buf.truncate(len);
    buf
}

/// Most entries of `entry` bytes that fit one message body of a UDP datagram after a
/// header of `header` bytes.
pub fn max_entries(header: usize, entry: usize) -> usize {
    (MAX_DATAGRAM - DATAGRAM_HEADER_LEN - MESSAGE_HEADER_LEN - header) / entry
}

pub fn data_header(group: u64, sender: NodeId, stream: u32, seq: u64) -> DataHeader {
    DataHeader {
        group,
        seq,
        sender,
        stream,
        retained: 0,
        session: 1,
        frag_index: 0,
        frag_count: 1,
    }
}

pub fn data(from: NodeId, h: DataHeader, payload: &[u8]) -> Vec<u8> {
    datagram(from, 1, |e| e.push_data(&h, false, payload))
}

pub fn digest(from: NodeId, group: u64, round: u32, entries: &[DigestEntry]) -> Vec<u8> {
    let h = DigestHeader {
        group,
        round,
        reserved: 0,
    };
    datagram(from, 1, |e| e.push_digest(&h, entries))
}

pub fn request(from: NodeId, group: u64, round: u32, entries: &[RequestEntry]) -> Vec<u8> {
    let h = RequestHeader {
        group,
        round,
        reserved: 0,
    };
    datagram(from, 1, |e| e.push_request(&h, entries))
}

pub fn heartbeats(from: NodeId, incarnation: u32, h: HeartbeatHeader, entries: &[HeartbeatEntry]) -> Vec<u8> {
    datagram(from, incarnation, |e| e.push_heartbeats(&h, entries))
}

/// The datagrams carrying view `(counter, coordinator)` of `members` with one group
/// `(group, members as indices, streams)`, sent by `from`.
pub fn view_datagrams(
    from: NodeId,
    counter: u64,
    coordinator: (NodeId, u32),
    members: &[(NodeId, u32)],
    groups: &[(u64, Vec<ViewGroupMember>)],
) -> Vec<Vec<u8>> {
    let ms: Vec<MemberEntry> = members
        .iter()
        .map(|&(node, incarnation)| MemberEntry {
            node,
            incarnation,
            addr: 0,
        })
        .collect();
    let gs: Vec<(u64, &[ViewGroupMember])> = groups.iter().map(|(g, v)| (*g, v.as_slice())).collect();
    let max_body = 1472 - DATAGRAM_HEADER_LEN - MESSAGE_HEADER_LEN;
    let parts = ViewParts::new(counter, coordinator, &ms, &gs, max_body).expect("view splits");
    (0..parts.len())
        .map(|p| datagram(from, 1, |e| e.push_view_part(&parts, p)))
        .collect()
}

/// A raw view part (any header), for malformed-but-decodable parts.
pub fn view_part_raw(
    from: NodeId,
    header: &ViewPartHeader,
    members: &[MemberEntry],
    groups: &[(ViewGroupSlice, Vec<ViewGroupMember>)],
) -> Option<Vec<u8>> {
    let gs: Vec<(ViewGroupSlice, &[ViewGroupMember])> =
        groups.iter().map(|(h, v)| (*h, v.as_slice())).collect();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut enc = Encoder::new(&mut buf, from, 1).ok()?;
    enc.push_view_part_raw(header, members, &gs).ok()?;
    let len = enc.len();
    buf.truncate(len);
    Some(buf)
}

/// The current view of honest node `i` as (members, group entries), for forging views
/// that resemble it.
pub fn view_layout(c: &Cluster, i: usize) -> (Vec<(NodeId, u32)>, Vec<ViewGroupMember>) {
    let v = c.nodes[i].view();
    let members: Vec<(NodeId, u32)> = v.members.iter().map(|m| (m.node, m.incarnation)).collect();
    let gv = v.group_view(GROUP).expect("group in view");
    let entries = gv
        .members
        .iter()
        .zip(&gv.streams)
        .map(|(n, s)| ViewGroupMember {
            index: members.iter().position(|m| m.0 == *n).expect("member") as u32,
            stream: *s,
        })
        .collect();
    (members, entries)
}
