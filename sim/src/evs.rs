//! The `evs` world (`tutti-sim --partition-policy evs`): Nodes hosting one ordered group
//! under partition policy `evs` over a network with loss, duplication and jittered latency,
//! cut into two sides and healed once or twice while every node sends, in half the seeds with
//! a node's crash (and mostly its restart as a new incarnation), in a quarter a second crash,
//! and in a quarter a node new to the cluster that starts mid-run and joins. Its checker checks
//! the guarantees of extended virtual synchrony as `proto/tests/ordered_evs.rs` defines
//! them, on what the application sees (`Event::OrderedDeliver` and
//! `Event::OrderedConfiguration`):
//!
//! - no message delivered twice at a node; a sender's messages in increasing order;
//! - every delivery in a regular configuration that holds its sender;
//! - total order per configuration: two members order the messages they both delivered in
//!   it alike;
//! - a transitional configuration is a subset of the last regular one and is followed by a
//!   regular configuration holding all its members; virtual synchrony per transition:
//!   members going from configuration c through the same transitional configuration
//!   delivered the same set in c;
//! - merges: every member of a list epoch's first configuration had that same first
//!   configuration there;
//! - liveness: after the last heal every node is in one configuration of all of them, and
//!   one more message from each reaches all.

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use tutti_proto::ordered::{EpochId, OrderedSettings, PartitionPolicy};
use tutti_proto::{Event, Node, NodeId, Settings, Time, MILLIS};

const MICROS: Time = 1_000;
const GROUP: u64 = 0x6576_7300_0000_0001;
/// Longest the cluster may take to form, and a configuration to settle after a change.
const SETTLE: Time = 20_000 * MILLIS;

/// A regular or transitional configuration as the application names it: list epoch,
/// position, members.
type ConfKey = (EpochId, u64, Vec<NodeId>);
/// (sender, seq): the payload carries both.
type MsgId = (NodeId, u64);

#[derive(Debug, Clone, Serialize)]
pub struct EvsScenario {
    pub seed: u64,
    pub nodes: u32,
    pub loss: f64,
    pub duplicate: f64,
    pub latency_max: Time,
    /// Each node submits one message every this long while sending.
    pub send_every: Time,
    /// Sends stop this long after the workload starts.
    pub send_for: Time,
    /// (cut at, sides, healed at), relative to the workload's start.
    pub partitions: Vec<(Time, Vec<Vec<NodeId>>, Time)>,
    /// Agreed delivery (`OrderedSettings::evs_agreed`): the odd seeds.
    pub agreed: bool,
    /// A node's crash (and maybe its restart), as `kill -9` of a daemon and its restart.
    pub crash: Option<EvsCrash>,
    /// Another node's crash (or the same node's again), drawn after `crash`.
    pub second_crash: Option<EvsCrash>,
    /// A node that was never in the cluster (id `nodes + 1`) starts then, joins the
    /// cluster and, once its view holds another node, the group.
    pub newcomer: Option<Time>,
}

/// A crash of `node` at `at` (relative to the workload's start): its state goes, and so do
/// the packets that reach it while it is down. With `restart`, a new incarnation of it
/// starts then, joins the cluster and, once its view holds another node, the group again:
/// a new process of the group as far as the application and the checker are concerned.
#[derive(Debug, Clone, Serialize)]
pub struct EvsCrash {
    pub node: NodeId,
    pub at: Time,
    pub restart: Option<Time>,
}

impl EvsCrash {
    /// A crash of `node` 20 ms to `end` into the workload, followed in 70% of the draws by
    /// a restart 30-600 ms later.
    fn draw(rng: &mut Xoshiro256PlusPlus, node: NodeId, end: Time) -> EvsCrash {
        let at = rng.gen_range(20..end / MILLIS) * MILLIS;
        let restart = rng.gen_bool(0.7).then(|| at + rng.gen_range(30..600) * MILLIS);
        EvsCrash { node, at, restart }
    }
}

impl EvsScenario {
    /// Random faults and workload from a seed (for seed sweeps): 3-5 nodes, one or two
    /// partitions into two sides, each healed 300-900 ms later.
    pub fn random(seed: u64) -> EvsScenario {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x6576_735f_7369_6d21);
        let nodes = rng.gen_range(3..=5u32);
        let mut partitions = Vec::new();
        let mut at = rng.gen_range(50..200) * MILLIS;
        for _ in 0..rng.gen_range(1..=2) {
            let mut ids: Vec<NodeId> = (1..=nodes).collect();
            for i in (1..ids.len()).rev() {
                let j = rng.gen_range(0..=i);
                ids.swap(i, j);
            }
            let cut = rng.gen_range(1..ids.len());
            let sides = vec![ids[..cut].to_vec(), ids[cut..].to_vec()];
            let heal = at + rng.gen_range(300..900) * MILLIS;
            partitions.push((at, sides, heal));
            at = heal + rng.gen_range(200..600) * MILLIS;
        }
        let mut sc = EvsScenario {
            seed,
            nodes,
            loss: [0.0, 0.01, 0.03][rng.gen_range(0..3)],
            duplicate: [0.0, 0.02][rng.gen_range(0..2)],
            latency_max: [200 * MICROS, MILLIS][rng.gen_range(0..2)],
            send_every: rng.gen_range(2..=8) * MILLIS,
            send_for: at,
            partitions,
            agreed: seed % 2 == 1,
            crash: None,
            second_crash: None,
            newcomer: None,
        };
        // Drawn last, so that a seed's other faults are those it had before crashes came
        // in. Half the seeds crash a node, half of those node 1: the founder of the first
        // list and of every side it is in, i.e. the host of its list's memory node.
        if rng.gen_bool(0.5) {
            let node = if rng.gen_bool(0.5) {
                1
            } else {
                rng.gen_range(1..=nodes)
            };
            sc.crash = Some(EvsCrash::draw(&mut rng, node, at));
        }
        // Drawn after the first crash, for the same reason: a quarter of the seeds crash a
        // node (again), a quarter start a node the cluster never had.
        let end = at;
        if rng.gen_bool(0.25) {
            let node = rng.gen_range(1..=nodes);
            sc.second_crash = Some(EvsCrash::draw(&mut rng, node, end));
        }
        if rng.gen_bool(0.25) {
            sc.newcomer = Some(rng.gen_range(20..end / MILLIS) * MILLIS);
        }
        sc
    }

    /// The crashes, in the order drawn.
    pub fn crashes(&self) -> impl Iterator<Item = &EvsCrash> {
        self.crash.iter().chain(self.second_crash.iter())
    }

    pub fn describe(&self) -> String {
        let cuts: Vec<String> = self
            .partitions
            .iter()
            .map(|(a, s, h)| format!("{:?} {}-{} ms", s, a / MILLIS, h / MILLIS))
            .collect();
        let crashes: Vec<String> = self
            .crashes()
            .map(|c| {
                format!(
                    "node {} at {} ms, {}",
                    c.node,
                    c.at / MILLIS,
                    c.restart.map_or("no restart".to_string(), |r| format!(
                        "restarted at {} ms",
                        r / MILLIS
                    ))
                )
            })
            .collect();
        let crash = if crashes.is_empty() {
            "none".to_string()
        } else {
            crashes.join("; ")
        };
        let newcomer = self.newcomer.map_or(String::new(), |t| {
            format!(", node {} new at {} ms", self.nodes + 1, t / MILLIS)
        });
        format!(
            "{} nodes, {} delivery, loss {}, dup {}, latency <= {} us, a message per node every {} ms for {} ms, partitions {}, crash {}{}",
            self.nodes,
            if self.agreed { "agreed" } else { "safe" },
            self.loss,
            self.duplicate,
            self.latency_max / MICROS,
            self.send_every / MILLIS,
            self.send_for / MILLIS,
            cuts.join(", "),
            crash,
            newcomer
        )
    }
}

fn evs_settings() -> OrderedSettings {
    OrderedSettings {
        list_slots: 256,
        lag_budget: 160,
        max_members: 12,
        queue_slots: 64,
        max_payload: 256,
        poll_interval: MILLIS,
        repair_delay: 5 * MILLIS,
        retransmit: 5 * MILLIS,
        partition: PartitionPolicy::Evs,
        gather_timeout: 100 * MILLIS,
        ..OrderedSettings::default()
    }
}

fn node_settings() -> Settings {
    Settings {
        gossip_period: 20 * MILLIS,
        suspect_timeout: 100 * MILLIS,
        ..Settings::default()
    }
}

/// Violations found, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EvsViolations {
    pub duplicate: u64,
    pub fifo: u64,
    pub outside_configuration: u64,
    pub total_order: u64,
    pub transitional: u64,
    pub virtual_synchrony: u64,
    pub first_configuration: u64,
    pub liveness: u64,
}

impl EvsViolations {
    pub fn total(&self) -> u64 {
        self.duplicate
            + self.fifo
            + self.outside_configuration
            + self.total_order
            + self.transitional
            + self.virtual_synchrony
            + self.first_configuration
            + self.liveness
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct EvsReport {
    pub seed: u64,
    pub submitted: u64,
    /// Submits refused (the node gathering a new list, or its queue full).
    pub refused: u64,
    pub deliveries: u64,
    pub configurations: u64,
    pub transitional: u64,
    /// Messages a sender appended to a list it left before delivering them (`evs` rule 4).
    pub unconfirmed: u64,
    /// Committed-entry pushes the live nodes sent (the list founders', to their members).
    pub pushes_sent: u64,
    /// Ordered-host pumps cut short on the live nodes (`pump_rounds_capped`: must be 0).
    pub pumps_capped: u64,
    pub violations: EvsViolations,
    pub samples: Vec<String>,
    pub liveness_checked: bool,
}

/// A node's stretch in a configuration and the transitional configuration it left through.
type Passage<'a> = (NodeId, &'a Stretch, Option<&'a ConfKey>);

/// One configuration's stretch at one node: what it delivered there, in order.
struct Stretch {
    key: ConfKey,
    transitional: bool,
    delivered: Vec<MsgId>,
}

#[derive(Default)]
struct NodeLog {
    stretches: Vec<Stretch>,
    seen: BTreeSet<MsgId>,
    last_seq: BTreeMap<NodeId, u64>,
    /// List epoch -> its first regular configuration here.
    first_in: BTreeMap<EpochId, ConfKey>,
}

pub struct EvsSim {
    sc: EvsScenario,
    rng: Xoshiro256PlusPlus,
    now: Time,
    nodes: BTreeMap<NodeId, Node>,
    net: BinaryHeap<Reverse<(Time, u64, NodeId, NodeId)>>,
    packets: BTreeMap<u64, Vec<u8>>,
    next_packet: u64,
    /// Side of each node (all 0 when whole).
    side: BTreeMap<NodeId, usize>,
    logs: BTreeMap<NodeId, NodeLog>,
    /// The logs of crashed incarnations, each a process of its own.
    dead: Vec<(NodeId, NodeLog)>,
    /// Restarted nodes that have not joined the group yet.
    to_join: BTreeSet<NodeId>,
    /// The view counter of each crashed node's last incarnation at its crash: its restart
    /// numbers its views past it (`Node::set_view_counter_floor`), as tuttid does from its
    /// state directory.
    counter_floor: BTreeMap<NodeId, u64>,
    next_seq: BTreeMap<NodeId, u64>,
    report: EvsReport,
    /// `TUTTI_SIM_EVS_TRACE` set: configurations, crashes and restarts go to stderr.
    trace: bool,
}

/// What the workload does at a time: cut the network into sides, heal it, crash a node,
/// restart it.
enum Fault {
    Cut(Vec<Vec<NodeId>>),
    Heal,
    Crash(NodeId),
    Restart(NodeId),
    Newcomer(NodeId),
}

impl EvsSim {
    pub fn new(sc: EvsScenario) -> EvsSim {
        let ids: Vec<NodeId> = (1..=sc.nodes).collect();
        let nodes = ids
            .iter()
            .map(|&id| {
                let n = Node::new(
                    id,
                    1,
                    &ids,
                    node_settings(),
                    0,
                    sc.seed.wrapping_mul(31) ^ u64::from(id),
                );
                (id, n)
            })
            .collect();
        EvsSim {
            rng: Xoshiro256PlusPlus::seed_from_u64(sc.seed),
            report: EvsReport {
                seed: sc.seed,
                ..EvsReport::default()
            },
            side: ids.iter().map(|&n| (n, 0)).collect(),
            logs: ids.iter().map(|&n| (n, NodeLog::default())).collect(),
            dead: Vec::new(),
            to_join: BTreeSet::new(),
            counter_floor: BTreeMap::new(),
            trace: std::env::var_os("TUTTI_SIM_EVS_TRACE").is_some(),
            next_seq: ids.iter().map(|&n| (n, 0)).collect(),
            sc,
            now: 0,
            nodes,
            net: BinaryHeap::new(),
            packets: BTreeMap::new(),
            next_packet: 0,
        }
    }

    fn violation(&mut self, what: String) {
        if self.report.samples.len() < 8 {
            self.report
                .samples
                .push(format!("t={} ms: {what}", self.now / MILLIS));
        }
    }

    fn linked(&self, a: NodeId, b: NodeId) -> bool {
        self.side.get(&a) == self.side.get(&b)
    }

    /// Runs the network and the nodes until `until` (1 ms steps).
    fn step_until(&mut self, until: Time) {
        while self.now < until {
            self.now += MILLIS.min(until - self.now).max(1);
            let now = self.now;
            self.join_restarted();
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            loop {
                let due = self.net.peek().is_some_and(|Reverse((at, ..))| *at <= now);
                if !due {
                    break;
                }
                let Some(Reverse((_, id, from, to))) = self.net.pop() else {
                    break;
                };
                let Some(bytes) = self.packets.remove(&id) else {
                    continue;
                };
                if !self.linked(from, to) {
                    continue;
                }
                if let Some(n) = self.nodes.get_mut(&to) {
                    n.handle_packet(now, from, &bytes);
                }
                self.drain(to);
            }
            for id in ids {
                if let Some(n) = self.nodes.get_mut(&id) {
                    if n.poll_timeout().is_some_and(|t| t <= now) {
                        n.handle_timeout(now);
                    }
                }
                self.drain(id);
            }
        }
    }

    /// Cuts the network into `sides` (a node in none is on the first side); no sides: whole.
    fn set_sides(&mut self, sides: &[Vec<NodeId>]) {
        for side in self.side.values_mut() {
            *side = 0;
        }
        for (i, s) in sides.iter().enumerate() {
            for &n in s {
                self.side.insert(n, i);
            }
        }
    }

    /// A restarted node joins the group once its view holds another node (an application
    /// that joins as soon as its daemon is back in the cluster).
    fn join_restarted(&mut self) {
        let ready: Vec<NodeId> = self
            .to_join
            .iter()
            .copied()
            .filter(|id| self.nodes.get(id).is_some_and(|n| n.view().members.len() > 1))
            .collect();
        for id in ready {
            self.to_join.remove(&id);
            let settings = self.group_settings();
            let now = self.now;
            if let Some(n) = self.nodes.get_mut(&id) {
                n.join_ordered(now, GROUP, settings)
                    .expect("evs settings are valid");
            }
            self.drain(id);
        }
    }

    fn group_settings(&self) -> OrderedSettings {
        OrderedSettings {
            evs_agreed: self.sc.agreed,
            ..evs_settings()
        }
    }

    /// `kill -9`: the node's state goes; its log becomes a crashed process's.
    fn crash(&mut self, id: NodeId) {
        let Some(n) = self.nodes.remove(&id) else {
            return;
        };
        self.counter_floor.insert(id, n.view().id.counter);
        self.to_join.remove(&id);
        if self.trace {
            eprintln!("[{} us] node {id} crashes", self.now / MICROS);
        }
        let log = self.logs.remove(&id).unwrap_or_default();
        self.dead.push((id, log));
    }

    /// A new incarnation of a crashed node: a new process, which joins the group again.
    fn restart(&mut self, id: NodeId) {
        if self.nodes.contains_key(&id) {
            return;
        }
        let incarnation = 1 + self.dead.iter().filter(|(n, _)| *n == id).count() as u32;
        if self.trace {
            eprintln!(
                "[{} us] node {id} restarts (incarnation {incarnation})",
                self.now / MICROS
            );
        }
        self.start(id, incarnation);
    }

    /// Starts incarnation `incarnation` of node `id` (a restart, or a node new to the
    /// cluster) with the first nodes as its seeds; it joins the group once its view holds
    /// another node.
    fn start(&mut self, id: NodeId, incarnation: u32) {
        let ids: Vec<NodeId> = (1..=self.sc.nodes).collect();
        let seed = self.sc.seed.wrapping_mul(31) ^ u64::from(id) ^ u64::from(incarnation) << 40;
        if self.trace && incarnation == 1 {
            eprintln!("[{} us] node {id} starts, new to the cluster", self.now / MICROS);
        }
        // A node not yet on any side is on the first (as `set_sides` puts it).
        self.side.entry(id).or_insert(0);
        self.next_seq.entry(id).or_insert(0);
        let mut n = Node::new(id, incarnation, &ids, node_settings(), self.now, seed);
        n.set_view_counter_floor(self.counter_floor.get(&id).copied().unwrap_or(0));
        self.nodes.insert(id, n);
        self.logs.insert(id, NodeLog::default());
        self.to_join.insert(id);
        self.drain(id);
    }

    fn drain(&mut self, id: NodeId) {
        let mut out = Vec::new();
        let mut events = Vec::new();
        if let Some(n) = self.nodes.get_mut(&id) {
            while let Some(t) = n.poll_transmit() {
                out.push((t.dest, t.payload.to_vec()));
            }
            while let Some(e) = n.poll_event() {
                events.push(e);
            }
        }
        for (to, bytes) in out {
            if !self.linked(id, to) || self.rng.gen_bool(self.sc.loss) {
                continue;
            }
            let copies = if self.rng.gen_bool(self.sc.duplicate) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let at = self.now
                    + self
                        .rng
                        .gen_range(20 * MICROS..self.sc.latency_max.max(21 * MICROS));
                self.packets.insert(self.next_packet, bytes.clone());
                self.net.push(Reverse((at, self.next_packet, id, to)));
                self.next_packet += 1;
            }
        }
        for e in events {
            self.on_event(id, e);
        }
    }

    fn on_event(&mut self, id: NodeId, e: Event) {
        match e {
            Event::OrderedConfiguration { config, .. } => {
                let key: ConfKey = (config.epoch, config.position, config.members.clone());
                if self.trace {
                    let kind = if config.transitional {
                        "transitional"
                    } else {
                        "regular"
                    };
                    eprintln!("[{} us] node {id}: {kind} {key:?}", self.now / MICROS);
                }
                if config.transitional {
                    self.report.transitional += 1;
                    let last = self
                        .logs
                        .get(&id)
                        .and_then(|l| l.stretches.iter().rev().find(|s| !s.transitional))
                        .map(|s| s.key.2.clone());
                    if !last.is_some_and(|m| config.members.iter().all(|n| m.contains(n))) {
                        self.report.violations.transitional += 1;
                        self.violation(format!(
                            "node {id}: transitional {key:?} not within its last configuration"
                        ));
                    }
                } else {
                    self.report.configurations += 1;
                    let log = self.logs.entry(id).or_default();
                    let after_transitional = log
                        .stretches
                        .last()
                        .filter(|s| s.transitional)
                        .map(|s| s.key.2.clone());
                    log.first_in.entry(config.epoch).or_insert_with(|| key.clone());
                    if after_transitional.is_some_and(|t| !t.iter().all(|n| config.members.contains(n))) {
                        self.report.violations.transitional += 1;
                        self.violation(format!(
                            "node {id}: regular {key:?} lacks a member of its transitional one"
                        ));
                    }
                }
                self.logs.entry(id).or_default().stretches.push(Stretch {
                    key,
                    transitional: config.transitional,
                    delivered: Vec::new(),
                });
            }
            Event::OrderedDeliver { sender, payload, .. } => {
                self.report.deliveries += 1;
                let Some(seq) = payload
                    .get(4..12)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_le_bytes)
                else {
                    return;
                };
                let from = payload
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_le_bytes);
                let m: MsgId = (sender, seq);
                let log = self.logs.entry(id).or_default();
                let mut bad = Vec::new();
                if from != Some(sender) || !log.seen.insert(m) {
                    self.report.violations.duplicate += 1;
                    bad.push(format!("node {id}: {m:?} twice or not as sent"));
                }
                if log.last_seq.get(&sender).is_some_and(|&s| s >= seq) {
                    self.report.violations.fifo += 1;
                    bad.push(format!("node {id}: {m:?} after a later seq of its sender"));
                }
                log.last_seq.insert(sender, seq);
                match log.stretches.last_mut() {
                    Some(s) if s.key.2.contains(&sender) => s.delivered.push(m),
                    _ => {
                        self.report.violations.outside_configuration += 1;
                        bad.push(format!(
                            "node {id}: {m:?} outside a configuration holding its sender"
                        ));
                    }
                }
                for b in bad {
                    self.violation(b);
                }
            }
            Event::OrderedStatus { .. }
            | Event::OrderedView { .. }
            | Event::SnapshotRequest { .. }
            | Event::Installed { .. } => {}
            Event::ViewChange(v) => {
                if self.trace {
                    let members: Vec<NodeId> = v.members.iter().map(|m| m.node).collect();
                    let listed = v.group(tutti_proto::ordered::EvsMember::directory_group(GROUP));
                    eprintln!(
                        "[{} us] node {id}: cluster view {} by {} {members:?}, directory {listed:?}",
                        self.now / MICROS,
                        v.id.counter,
                        v.id.coordinator
                    );
                }
            }
            Event::Deliver { .. } | Event::Lost { .. } => {}
        }
    }

    fn submit(&mut self, id: NodeId) {
        let seq = self.next_seq[&id];
        let mut payload = id.to_le_bytes().to_vec();
        payload.extend_from_slice(&seq.to_le_bytes());
        let now = self.now;
        let Some(n) = self.nodes.get_mut(&id) else { return };
        match n.submit_ordered(now, GROUP, &payload, false) {
            Ok(_) => {
                self.report.submitted += 1;
                self.next_seq.insert(id, seq + 1);
            }
            Err(e) => {
                if self.trace {
                    eprintln!(
                        "[{} us] node {id}: submit of seq {seq} refused: {e:?}",
                        self.now / MICROS
                    );
                }
                self.report.refused += 1
            }
        }
        self.drain(id);
    }

    /// Whether every node's last regular configuration is `members` and it gathers nowhere.
    fn configured(&self, members: &[NodeId]) -> bool {
        self.nodes.iter().all(|(id, n)| {
            n.evs_member(GROUP).is_some_and(|m| m.settled())
                && self.logs[id]
                    .stretches
                    .iter()
                    .rev()
                    .find(|s| !s.transitional)
                    .is_some_and(|s| s.key.2 == members)
        })
    }

    pub fn run(mut self) -> EvsReport {
        let all: Vec<NodeId> = (1..=self.sc.nodes).collect();
        while self.now < SETTLE && !self.nodes.values().all(|n| n.view().members.len() == all.len()) {
            self.step_until(self.now + 10 * MILLIS);
        }
        let now = self.now;
        let settings = self.group_settings();
        for n in self.nodes.values_mut() {
            n.join_ordered(now, GROUP, settings.clone())
                .expect("evs settings are valid");
        }
        let deadline = self.now + SETTLE;
        while self.now < deadline && !self.configured(&all) {
            self.step_until(self.now + 10 * MILLIS);
        }
        // The workload, with the cuts and heals, the crash and the restart.
        let start = self.now;
        let mut events: Vec<(Time, Fault)> = Vec::new();
        for (at, sides, heal) in self.sc.partitions.clone() {
            events.push((start + at, Fault::Cut(sides)));
            events.push((start + heal, Fault::Heal));
        }
        for c in self.sc.crashes() {
            events.push((start + c.at, Fault::Crash(c.node)));
            if let Some(r) = c.restart {
                events.push((start + r, Fault::Restart(c.node)));
            }
        }
        if let Some(t) = self.sc.newcomer {
            events.push((start + t, Fault::Newcomer(self.sc.nodes + 1)));
        }
        events.sort_by_key(|(t, _)| *t);
        let mut next_send = start;
        while self.now < start + self.sc.send_for || !events.is_empty() {
            while events.first().is_some_and(|(t, _)| *t <= self.now) {
                match events.remove(0).1 {
                    Fault::Cut(sides) => self.set_sides(&sides),
                    Fault::Heal => self.set_sides(&[]),
                    Fault::Crash(id) => self.crash(id),
                    Fault::Restart(id) => self.restart(id),
                    Fault::Newcomer(id) => self.start(id, 1),
                }
            }
            if self.now < start + self.sc.send_for && self.now >= next_send {
                let live: Vec<NodeId> = self.nodes.keys().copied().collect();
                for id in live {
                    self.submit(id);
                }
                next_send += self.sc.send_every;
            }
            self.step_until(self.now + MILLIS);
        }
        self.set_sides(&[]);
        // Liveness: the live nodes in one configuration of them all, then one more message
        // from each reaches all.
        let all: Vec<NodeId> = self.nodes.keys().copied().collect();
        let deadline = self.now + SETTLE;
        while self.now < deadline && !self.configured(&all) {
            self.step_until(self.now + 10 * MILLIS);
        }
        self.report.liveness_checked = true;
        if self.configured(&all) {
            let last: Vec<MsgId> = all.iter().map(|&id| (id, self.next_seq[&id])).collect();
            for &id in &all {
                self.submit(id);
            }
            let deadline = self.now + SETTLE;
            let reached = |s: &EvsSim| {
                all.iter()
                    .all(|id| last.iter().all(|m| s.logs[id].seen.contains(m)))
            };
            while self.now < deadline && !reached(&self) {
                self.step_until(self.now + 10 * MILLIS);
            }
            if !reached(&self) {
                self.report.violations.liveness += 1;
                let missing: Vec<(NodeId, MsgId)> = all
                    .iter()
                    .flat_map(|&id| last.iter().map(move |&m| (id, m)))
                    .filter(|(id, m)| !self.logs[id].seen.contains(m))
                    .collect();
                self.violation(format!(
                    "the last messages did not reach every node: (node, message) {missing:?}"
                ));
                self.trace_nodes();
            }
        } else {
            self.report.violations.liveness += 1;
            let last: Vec<_> = all
                .iter()
                .map(|id| {
                    self.logs[id]
                        .stretches
                        .iter()
                        .rev()
                        .find(|s| !s.transitional)
                        .map(|s| s.key.clone())
                })
                .collect();
            self.violation(format!("no configuration of all after the last heal: {last:?}"));
            self.trace_nodes();
        }
        self.report.unconfirmed = self
            .nodes
            .values()
            .filter_map(|n| n.evs_member(GROUP).map(|m| m.counters().unconfirmed))
            .sum();
        self.report.pushes_sent = self
            .nodes
            .values()
            .map(|n| n.ordered_transport_counters().committed_sent)
            .sum();
        self.report.pumps_capped = self
            .nodes
            .values()
            .map(|n| n.ordered_transport_counters().pump_rounds_capped)
            .sum();
        self.check_end();
        self.report
    }

    /// With `trace`: each live node's cluster view and where its group member stands (the
    /// installed list and the one it gathers in), after a liveness failure.
    fn trace_nodes(&self) {
        if !self.trace {
            return;
        }
        for (id, n) in &self.nodes {
            let v = n.view();
            let members: Vec<(NodeId, u32)> = v.members.iter().map(|m| (m.node, m.incarnation)).collect();
            let m = n.evs_member(GROUP);
            let current = m.and_then(|m| m.current());
            eprintln!(
                "node {id}: cluster view {:?} {members:?}; list {:?} settled {:?}, delivered {:?} learned {:?} {}; gathering {:?}",
                v.id,
                m.and_then(|m| m.epoch()),
                m.map(|m| m.settled()),
                current.map(|c| c.delivered()),
                current.map(|c| c.learned()),
                current.map_or(String::new(), |c| c.describe()),
                m.and_then(|m| m.gathering()).map(|g| g.describe())
            );
            eprintln!("node {id} counters {:?}", n.counters());
        }
    }

    /// The checks across nodes: total order per configuration, virtual synchrony per
    /// transition, first configurations.
    fn check_end(&mut self) {
        let mut bad = Vec::new();
        // Configuration -> (node, its stretch there, the transitional key after it).
        let mut by_conf: BTreeMap<ConfKey, Vec<Passage<'_>>> = BTreeMap::new();
        // Every process: the live nodes' logs, then the crashed incarnations'.
        let logs: Vec<(NodeId, &NodeLog, bool)> = self
            .logs
            .iter()
            .map(|(&id, log)| (id, log, true))
            .chain(self.dead.iter().map(|(id, log)| (*id, log, false)))
            .collect();
        for &(id, log, alive) in &logs {
            for (i, s) in log.stretches.iter().enumerate() {
                if s.transitional {
                    continue;
                }
                // The transitional configuration it moved through; for a live node's last
                // configuration, that one (after the liveness check every live node is in
                // it and delivered everything: their sets there must be equal too). A
                // crashed process moved through nothing after its last.
                let next = match log.stretches.get(i + 1) {
                    Some(n) if n.transitional => Some(&n.key),
                    Some(_) => None,
                    None if alive => Some(&s.key),
                    None => None,
                };
                by_conf.entry(s.key.clone()).or_default().push((id, s, next));
            }
        }
        for (key, at) in &by_conf {
            for (i, a) in at.iter().enumerate() {
                for b in &at[i + 1..] {
                    let in_b: BTreeSet<&MsgId> = b.1.delivered.iter().collect();
                    let in_a: BTreeSet<&MsgId> = a.1.delivered.iter().collect();
                    let common_a: Vec<&MsgId> = a.1.delivered.iter().filter(|m| in_b.contains(m)).collect();
                    let common_b: Vec<&MsgId> = b.1.delivered.iter().filter(|m| in_a.contains(m)).collect();
                    if common_a != common_b {
                        self.report.violations.total_order += 1;
                        bad.push(format!("nodes {} and {} order {key:?} differently", a.0, b.0));
                    }
                    if a.2.is_some() && a.2 == b.2 && in_a != in_b {
                        self.report.violations.virtual_synchrony += 1;
                        bad.push(format!(
                            "nodes {} and {} moved together from {key:?} with different sets ({} vs {})",
                            a.0,
                            b.0,
                            in_a.len(),
                            in_b.len()
                        ));
                    }
                }
            }
        }
        for &(id, log, _) in &logs {
            for (epoch, first) in &log.first_in {
                for m in &first.2 {
                    // A member of this node's first configuration had the same first
                    // configuration, or an earlier one without this node: this node's join
                    // landed after the founder's `Install` (a restarted node's, or one that
                    // lost the tail race until the gather timeout) and it joined the list's
                    // configuration as a new member (as `proto/tests/ordered_evs.rs` checks).
                    let joined_later = |t: &ConfKey| t.1 < first.1 && !t.2.contains(&id);
                    let theirs = logs
                        .iter()
                        .filter(|(n, ..)| n == m)
                        .filter_map(|(_, l, _)| l.first_in.get(epoch));
                    for _ in theirs.filter(|t| *t != first && !joined_later(t)) {
                        self.report.violations.first_configuration += 1;
                        bad.push(format!(
                            "node {id} and {m}: different first configurations in {epoch:?}"
                        ));
                    }
                }
            }
        }
        for b in bad {
            self.violation(b);
        }
    }
}
