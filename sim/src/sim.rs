//! The simulated world: an event queue keyed by (time, sequence), a network model and a
//! workload, driving the sans-IO nodes and feeding the invariant checker.

use crate::checker::{fnv, make_payload, Checker, Coverage, Cut, Instance, MessageId, SentMessage};
use crate::hostile::{forge, HostileAttack, Knowledge};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::Serialize;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use tutti_proto::{
    Delivery, Event, Node, NodeId, Settings, Time, View, ViewCache, ViewId, MILLIS, SLOT_OVERHEAD,
};
use tutti_wire::packet::{self, Message};

const MICROS: Time = 1_000;
/// The group every simulated node joins.
pub const GROUP: u64 = 0x7475_7474_6900_0001;
/// Datagrams a paused or busy node can queue (its socket receive buffer); beyond, dropped.
const RX_CAPACITY: usize = 4096;
/// Bytes a queued datagram counts against a byte-bounded receive buffer beside its own
/// length (the kernel charges a socket buffer a datagram's whole buffer, its "truesize").
pub const RX_DATAGRAM_OVERHEAD: usize = 768;
/// Processing time of one datagram or timer at a full-speed node, and per byte.
const COST_BASE: Time = 2 * MICROS;
const COST_PER_BYTE_NS: Time = 1;
/// Interval between workload bursts (each sender submits its share every interval).
const BURST_INTERVAL: Time = MILLIS;
/// A run still going this long after the workload started is a bug (reported).
const HARD_STOP: Time = 600_000 * MILLIS;
/// Interval of the simulator's own checks (workload start, early stop).
const CHECK_INTERVAL: Time = 50 * MILLIS;
/// Highest loss rate at which repair is expected to deliver every message everywhere (no
/// `Lost` at all) when nothing else goes wrong: no crash, no partition, no budget
/// pressure. At 20% a gap's repair needs its request and the retransmission through
/// (0.8^2 = 64%, so 36% of attempts fail); a gap is solicited at once, again every
/// `rerequest_after` (20 ms) while the stream flows, and on each digest (about 2 per round)
/// after it stops, so within the 20-round retention it gets well over 30 attempts:
/// 0.36^30 < 1e-13 per message and member. A large message needs each of its up to 14
/// fragments; a request asks for all of them from the first missing one, so each attempt
/// recovers at least one fragment with 80% and the same count applies per fragment.
/// Checked by the seed sweep over loss in [0, 20%] (see `Scenario::random`).
pub const REPAIR_LOSS_BOUND: f64 = 0.20;
/// Interval between a hostile member's attacks (each firing sends one attack to one
/// honest member, the attacks in turn).
const HOSTILE_INTERVAL: Time = 20 * MILLIS;
/// Messages with fewer owed members than this are not held to "almost all or almost
/// none" (with 5 members, one miss is already 80%).
pub const BIMODAL_MIN_TARGETS: usize = 10;

/// Runs of at most this many nodes check the heard rule (`Checker::heard_window`): it keeps
/// a time per (hearer, heard) pair, O(n^2).
pub const HEARD_RULE_MAX_NODES: u32 = 256;

/// A partition: from `start` to `end` (relative to the workload start), links between
/// `side` and the other nodes are cut in both directions.
#[derive(Debug, Clone, Serialize)]
pub struct Partition {
    pub start: Time,
    pub end: Time,
    pub side: Vec<NodeId>,
}

/// A crash at `at` (relative to the workload start), and a restart (new incarnation) if
/// `restart` is set. `leave`: the node leaves on purpose (shutdown) instead of crashing.
#[derive(Debug, Clone, Serialize)]
pub struct Crash {
    pub node: NodeId,
    pub at: Time,
    pub restart: Option<Time>,
    pub leave: bool,
}

/// The application on `node` leaves the group at `leave` and joins it again at `join`
/// (relative to the workload start; never if `None`). Joining within `Settings::linger`
/// takes the group back in the same stream; later, it is a new stream.
#[derive(Debug, Clone, Serialize)]
pub struct Rejoin {
    pub node: NodeId,
    pub leave: Time,
    pub join: Option<Time>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub nodes: u32,
    pub messages: u64,
    pub senders: u32,
    pub seed: u64,
    pub loss: f64,
    pub duplicate: f64,
    pub reorder: f64,
    /// Per-link base latency is drawn in [latency_min, latency_max]; each datagram adds
    /// uniform jitter in [0, jitter].
    pub latency_min: Time,
    pub latency_max: Time,
    pub jitter: Time,
    /// Total submit rate, messages per second, across senders.
    pub rate: u64,
    /// Payload bytes; each message's size is drawn in [payload, payload_max] (fixed when
    /// `payload_max <= payload`). Above `Settings::fragment_payload` a message is sent in
    /// fragments.
    pub payload: usize,
    pub payload_max: usize,
    /// Client sessions per sender: they publish in turns of a few messages each.
    pub sessions: u32,
    /// Applications that leave the group and join it again.
    pub rejoins: Vec<Rejoin>,
    /// Nodes `perturbed` lose `perturb_fraction` of their time (paused in every 100 ms
    /// window for that fraction, and processing slower by the same factor).
    pub perturbed: Vec<NodeId>,
    pub perturb_fraction: f64,
    pub partitions: Vec<Partition>,
    pub crashes: Vec<Crash>,
    /// Senders that submit nothing before the given time (relative to the workload
    /// start): e.g. a node that publishes its first message only while cut off.
    pub quiet_until: Vec<(NodeId, Time)>,
    #[serde(skip)]
    pub settings: Settings,
    /// Give up waiting for the first view if it takes longer than this.
    pub max_bootstrap: Time,
    /// Membership only: nodes join no group (measures failure detection and views at
    /// sizes whose per-member multicast state would not fit).
    pub membership_only: bool,
    /// Keep the run going at least this long after the workload start (e.g. to count
    /// false suspicions over a stretch of time).
    pub min_run: Time,
    /// Replace the stated convergence bound (to measure how long convergence takes).
    pub convergence_bound_override: Option<Time>,
    /// Hostile members: they run the protocol and, while the workload is sent, send honest
    /// members well-formed malicious datagrams under their own id (authenticated insiders;
    /// see `crate::hostile`). Their own deliveries are not checked; every honest member's
    /// are, and the views must converge after the attacks stop.
    pub hostile: Vec<NodeId>,
    /// The attacks hostile members make, in turn (`HostileAttack::DEFAULT` unless set).
    pub hostile_attacks: Vec<HostileAttack>,
    /// Receiver capacity. `rx_buffer_bytes` > 0: each node's socket receive buffer holds
    /// that many bytes (each queued datagram counts its length plus `RX_DATAGRAM_OVERHEAD`);
    /// 0: it holds `RX_CAPACITY` datagrams. A datagram that arrives to a full buffer is
    /// dropped and counted (`KindCounts::rx_dropped_slow`).
    pub rx_buffer_bytes: usize,
    /// `rx_datagrams_per_ms` > 0: a node processes that many datagrams per ms at most (each
    /// costs `1 ms / rate` of its time, whatever its size); 0: the default per-datagram and
    /// per-byte cost.
    pub rx_datagrams_per_ms: u64,
    /// Nodes kept off their core (descheduled) for `deschedule_for` in every
    /// `deschedule_every`: they queue what arrives meanwhile, as a daemon's shard does when
    /// the scheduler runs something else on its core.
    pub descheduled: Vec<NodeId>,
    pub deschedule_every: Time,
    pub deschedule_for: Time,
}

impl Scenario {
    pub fn new(nodes: u32, messages: u64, senders: u32, loss: f64, seed: u64) -> Self {
        Scenario {
            nodes,
            messages,
            senders: senders.clamp(1, nodes.max(1)),
            seed,
            loss,
            duplicate: 0.0,
            reorder: 0.0,
            latency_min: 50 * MICROS,
            latency_max: 300 * MICROS,
            jitter: 100 * MICROS,
            rate: 1000,
            payload: 64,
            payload_max: 0,
            sessions: 1,
            rejoins: Vec::new(),
            perturbed: Vec::new(),
            perturb_fraction: 0.5,
            partitions: Vec::new(),
            crashes: Vec::new(),
            quiet_until: Vec::new(),
            settings: Settings::default(),
            max_bootstrap: 30_000 * MILLIS,
            membership_only: false,
            min_run: 0,
            convergence_bound_override: None,
            hostile: Vec::new(),
            hostile_attacks: HostileAttack::DEFAULT.to_vec(),
            rx_buffer_bytes: 0,
            rx_datagrams_per_ms: 0,
            descheduled: Vec::new(),
            deschedule_every: 100 * MILLIS,
            deschedule_for: 0,
        }
    }

    /// A small cluster with random faults of every kind and a random workload, from a seed
    /// (for seed sweeps). Network: loss in [0, 20%], sometimes duplication and reordering.
    /// Membership faults (some runs): a partition, crashes with or without restart (of
    /// senders too: a restarted sender goes on in a new stream), a node leaving the
    /// cluster, slow members. Workload (independently): several sessions per sender, large
    /// messages (3-20 KB, in fragments), a fast burst (20,000-50,000 messages/s) against a
    /// small group budget, applications that leave the group and join it again.
    pub fn random(seed: u64) -> Self {
        let mut r = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x5eed);
        // The workload has its own generator: the fault draws below stay as they were.
        let mut w = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x0077_6f72_6b6c_6f61);
        let nodes = r.gen_range(3..=16u32);
        let mut s = Scenario::new(
            nodes,
            r.gen_range(20..=150),
            r.gen_range(1..=3),
            r.gen_range(0.0..0.20),
            seed,
        );
        s.rate = 200;
        s.duplicate = if r.gen_bool(0.5) {
            r.gen_range(0.0..0.05)
        } else {
            0.0
        };
        s.reorder = if r.gen_bool(0.5) {
            r.gen_range(0.0..0.2)
        } else {
            0.0
        };
        if r.gen_bool(0.25) {
            s.settings.delivery = Delivery::Unordered;
        }
        if w.gen_bool(0.3) {
            s.sessions = w.gen_range(2..=6);
        }
        if w.gen_bool(0.08) {
            // A fast burst: retention by rounds would hold all of it; the budget holds a
            // few hundred messages.
            s.rate = w.gen_range(20_000..=50_000);
            s.messages = w.gen_range(1_000..=4_000);
            s.settings.group_budget_bytes = w.gen_range(32..=128) << 10;
        } else if w.gen_bool(0.15) {
            s.payload = w.gen_range(3_000..8_000);
            s.payload_max = w.gen_range(s.payload..=20_000);
        }
        let span = s.messages * 1000 / s.rate * MILLIS;
        if w.gen_bool(0.2) {
            let linger = s.settings.linger;
            for _ in 0..w.gen_range(1..=2) {
                let node = w.gen_range(0..nodes);
                if s.rejoins.iter().any(|x| x.node == node) {
                    continue;
                }
                let leave = w.gen_range(0..span.max(1));
                // Back within the linger (same stream) or after it (a new stream).
                let gap = if w.gen_bool(0.5) {
                    w.gen_range(100 * MILLIS..linger.max(200 * MILLIS))
                } else {
                    linger + w.gen_range(300..3_000) * MILLIS
                };
                s.rejoins.push(Rejoin {
                    node,
                    leave,
                    join: Some(leave + gap),
                });
            }
        }
        // Each fault kind independently, so that some runs combine several.
        let fault_mix = r.gen_range(0..4);
        if fault_mix == 0 {
            return s; // network faults only (loss, duplication, reordering)
        }
        if r.gen_bool(0.35) {
            let mut side: Vec<NodeId> = (0..nodes).filter(|_| r.gen_bool(0.4)).collect();
            if side.is_empty() {
                side.push(nodes - 1);
            }
            let start = r.gen_range(0..span.max(1));
            s.partitions.push(Partition {
                start,
                end: start + r.gen_range(500..5_000) * MILLIS,
                side,
            });
        }
        if r.gen_bool(0.35) {
            let k = r.gen_range(1..=(nodes / 3).max(1));
            for _ in 0..k {
                let node = r.gen_range(0..nodes);
                if s.crashes.iter().any(|c| c.node == node) {
                    continue;
                }
                let at = r.gen_range(0..span.max(1));
                let restart = r.gen_bool(0.5).then(|| at + r.gen_range(200..4_000) * MILLIS);
                s.crashes.push(Crash {
                    node,
                    at,
                    restart,
                    leave: false,
                });
            }
        }
        if r.gen_bool(0.2) {
            let node = r.gen_range(0..nodes);
            if !s.crashes.iter().any(|c| c.node == node) {
                s.crashes.push(Crash {
                    node,
                    at: r.gen_range(0..span.max(1)),
                    restart: None,
                    leave: true,
                });
            }
        }
        if r.gen_bool(0.3) {
            let k = r.gen_range(1..=(nodes / 4).max(1));
            s.perturbed = (nodes - k..nodes).collect();
            s.perturb_fraction = r.gen_range(0.2..0.7);
        }
        s
    }

    /// Whether repair must deliver every message to every member that was in the group
    /// from its sending to the end, and no member may be told `Lost` of such a message: no
    /// crash, no leave, no partition, loss at most `REPAIR_LOSS_BOUND`, and no budget
    /// pressure unless nothing is lost and nobody is slow (duplication, reordering, large
    /// messages, rejoins, slow members without budget pressure allowed).
    pub fn expects_complete_delivery(&self) -> bool {
        self.crashes.is_empty()
            && self.partitions.is_empty()
            && self.loss <= REPAIR_LOSS_BOUND
            && (!self.budget_pressure() || (self.loss == 0.0 && self.perturbed.is_empty()))
    }

    /// Whether messages must reach almost all or almost none of the live members: runs
    /// without membership faults, except where slow members meet budget pressure (a
    /// member paused for longer than the budget's window of a fast stream cannot be
    /// repaired by anyone, and neither can the subtree below it).
    pub fn expects_bimodal(&self) -> bool {
        !self.has_membership_faults() && (self.perturbed.is_empty() || !self.budget_pressure())
    }

    /// Whether the byte budgets, rather than retention by rounds, may bound what members
    /// keep: what is sent within a retention, counted generously (largest payload, the
    /// slot overhead, a factor of 2 for gaps and partly received messages), exceeds the
    /// group or node budget.
    pub fn budget_pressure(&self) -> bool {
        let s = &self.settings;
        let retention = u128::from(s.retention_rounds) * u128::from(s.gossip_period);
        let in_retention = (u128::from(self.rate) * retention / 1_000_000_000)
            .max(1)
            .min(u128::from(self.messages));
        let per = (self.payload.max(self.payload_max) + SLOT_OVERHEAD) as u128;
        let budget = s.group_budget_bytes.min(s.node_budget_bytes) as u128;
        2 * in_retention * per > budget
    }

    /// Last scheduled event (relative to the workload start) other than crashes and
    /// partitions: the rejoins.
    fn schedule_end(&self) -> Time {
        self.rejoins
            .iter()
            .map(|r| r.join.unwrap_or(r.leave))
            .max()
            .unwrap_or(0)
            .max(self.min_run)
    }

    /// Size of message `index`'s payload.
    pub fn payload_len(&self, index: u64) -> usize {
        let lo = self.payload.max(8);
        if self.payload_max <= lo {
            return lo;
        }
        let span = (self.payload_max - lo + 1) as u64;
        lo + (splitmix(index ^ self.seed.rotate_left(17)) % span) as usize
    }

    /// The session that submits the `j`-th message of sender index `k`: with several
    /// sessions per sender, they take turns of `1 + seed % 4` messages; ids vary widely.
    pub fn session_of(&self, k: usize, j: u64) -> u32 {
        if self.sessions <= 1 {
            return k as u32;
        }
        let turn = j / (1 + self.seed % 4);
        let which = (turn % u64::from(self.sessions)) as u32;
        (((k as u32) << 16) | which).wrapping_mul(0x9E37_79B1)
    }

    /// One line describing the scenario (for the seed sweep's failures).
    pub fn describe(&self) -> String {
        format!(
            "{} nodes, {} messages from {} senders at {}/s, payload {}..{} B, {} sessions, loss {:.3}, dup {:.3}, \
             reorder {:.3}, crashes {:?}, partitions {:?}, rejoins {:?}, perturbed {:?}, {:?}, group budget {} B{}{}",
            self.nodes,
            self.messages,
            self.senders,
            self.rate,
            self.payload,
            self.payload_max.max(self.payload),
            self.sessions,
            self.loss,
            self.duplicate,
            self.reorder,
            self.crashes,
            self.partitions,
            self.rejoins,
            self.perturbed,
            self.settings.delivery,
            self.settings.group_budget_bytes,
            if self.budget_pressure() { " (pressure)" } else { "" },
            if self.hostile.is_empty() {
                String::new()
            } else {
                format!(", hostile {:?} making {:?}", self.hostile, self.hostile_attacks)
            },
        )
    }

    fn has_membership_faults(&self) -> bool {
        !self.crashes.is_empty() || !self.partitions.is_empty()
    }

    /// Whether membership convergence is checked once faults stop: after membership
    /// faults, and after a hostile member's attacks.
    fn checks_convergence(&self) -> bool {
        self.has_membership_faults() || !self.hostile.is_empty()
    }

    /// How long hostile members attack, from the workload start: while the workload is
    /// sent (at least 200 ms).
    pub fn hostile_span(&self) -> Time {
        (self.messages * 1000 / self.rate.max(1) * MILLIS).max(200 * MILLIS)
    }

    /// Stated bound: once faults stop, all live nodes share one view with exactly the live
    /// members within twice the effective suspicion timeout plus 30 gossip rounds.
    pub fn convergence_bound(&self) -> Time {
        if let Some(b) = self.convergence_bound_override {
            return b;
        }
        let s = &self.settings;
        let eff = s.suspicion_timeout(self.nodes as usize);
        2 * eff + 30 * s.gossip_period
    }
}

/// A datagram a node sent, owned by the simulated network.
struct SimDatagram {
    dest: NodeId,
    payload: Vec<u8>,
}

/// The kinds of the messages in a datagram, for diagnostics ("View", "Heartbeats x2").
fn datagram_kinds(bytes: &[u8]) -> String {
    let Ok(d) = packet::decode(bytes) else {
        return "undecodable bytes".into();
    };
    let mut kinds: Vec<(&str, usize)> = Vec::new();
    for m in d.messages() {
        let k = match m {
            Message::Data { .. } => "Data",
            Message::DataRun { .. } => "DataRun",
            Message::Digest { .. } => "Digest",
            Message::Request { .. } => "Request",
            Message::Heartbeats { .. } => "Heartbeats",
            Message::View { members, .. } => {
                kinds.push(("View", members.len()));
                continue;
            }
            Message::ViewRequest { .. } => "ViewRequest",
            Message::GroupJoin(_) => "GroupJoin",
            Message::GroupLeave(_) => "GroupLeave",
            Message::Ordered { .. } => "Ordered",
            Message::FlowStatus(_) => "FlowStatus",
        };
        kinds.push((k, 0));
    }
    kinds
        .iter()
        .map(|(k, n)| {
            if *n > 0 {
                format!("{k} of {n} members")
            } else {
                (*k).to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A 64-bit mix (splitmix64's finalizer).
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub nodes: u32,
    pub messages: u64,
    pub senders: u32,
    pub seed: u64,
    pub loss: f64,
    pub invariant_violations: u64,
    pub violation_samples: Vec<String>,
    pub delivered_all_fraction: f64,
    pub mean_delivery_ratio: f64,
    /// Histogram of "fraction of live members that got message m", 11 buckets:
    /// [0,10%), [10,20%), ..., [90,100%), and exactly 100%.
    pub delivery_fraction_histogram: Vec<u64>,
    pub rounds_p50: f64,
    pub rounds_p99: f64,
    pub datagrams_per_delivery: f64,
    pub datagrams: u64,
    pub deliveries: u64,
    pub messages_by_kind: KindCounts,
    pub lost_reported: u64,
    pub view_converged: Option<bool>,
    pub bootstrap_ms: f64,
    pub sim_time_ms: f64,
    pub events: u64,
    pub state_bytes_per_node_mean: f64,
    pub state_bytes_per_node_max: u64,
    /// Mean bytes per node of each structure (`Node::state_parts`), when the state was
    /// sampled (after the last submission).
    pub state_bytes_by_part: BTreeMap<String, u64>,
    pub healthy_throughput_ratio: Option<f64>,
    pub healthy_rate: f64,
    pub trace_hash: String,
    pub complete_delivery_checked: bool,
    /// Whether "almost all or almost none" was checked (runs without membership faults).
    pub bimodal_checked: bool,
    pub budget_pressure: bool,
    /// Datagrams built larger than `max_datagram` (each one a violation).
    pub oversize_datagrams: u64,
    /// Most bytes any node retained for repair (within its budgets).
    pub retained_bytes_max: u64,
    pub coverage: Coverage,
    /// Every stream that sent: (sender, incarnation, stream, messages), in order of its
    /// first message.
    pub streams: Vec<(NodeId, u32, u32, u64)>,
    /// Attacks hostile members made, and the datagrams they sent for them.
    pub hostile_attacks: u64,
    pub hostile_datagrams: u64,
    /// Failure detection: per node crashed for good, the time from its crash until the
    /// coordinator's installed view no longer holds it (ms): median, 99th percentile,
    /// and how many crashed nodes were still in that view at the end.
    pub crash_removal_ms_p50: Option<f64>,
    pub crash_removal_ms_p99: Option<f64>,
    pub crashed_not_removed: u64,
    /// SWIM: suspicions raised by live nodes' own probes, and peers confirmed failed, in
    /// all; with no crash (and no partition) every one is false, and the rate per member
    /// and hour of simulated time is reported, counted from the workload start (one view
    /// of all: the steady state). `suspicions_in_bootstrap`: those raised before it.
    pub suspicions_raised: u64,
    pub suspicions_in_bootstrap: u64,
    pub peers_confirmed_dead: u64,
    pub false_suspicions_per_member_hour: Option<f64>,
    /// Live members dropped from the coordinator's view after the workload start (each a
    /// false failure detection), in all.
    pub false_removals: u64,
    /// Membership datagrams (probes, acks, ping requests, gossip) per live member per
    /// gossip round over the run, and all datagrams per member per round.
    pub membership_datagrams_per_member_round: f64,
    pub datagrams_per_member_round: f64,
    /// The largest datagram any node built (bytes; at most `max_datagram`).
    pub largest_datagram: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct KindCounts {
    pub data_tree: u64,
    pub retransmits: u64,
    pub digests: u64,
    pub requests: u64,
    pub heartbeats: u64,
    /// Of `heartbeats`: SWIM probes, acks and ping requests.
    pub probes: u64,
    pub acks: u64,
    pub ping_reqs: u64,
    pub views: u64,
    pub rx_dropped_slow: u64,
    pub transmits_dropped: u64,
    /// Flow control: statuses sent (reports up a stream's tree and senders' asks down it),
    /// submits refused by a full window (each a retry later), members dropped from a
    /// window as slow.
    pub flow_statuses: u64,
    pub flow_blocked: u64,
    pub flow_slow_members: u64,
    /// Flow control: the most statuses any one node received (a sender's load).
    pub flow_statuses_received_max: u64,
    pub retransmit_budget_exhausted: u64,
    /// Messages live nodes gave up to stay within their byte budgets.
    pub evicted_budget: u64,
    /// Refused input, which the simulator never corrupts: fragments inconsistent with
    /// their message's others, digests that contradict themselves, undecodable datagrams.
    /// Each is a violation.
    pub bad_fragments: u64,
    pub bad_digests: u64,
    pub decode_errors: u64,
}

#[derive(Debug)]
enum Kind {
    Packet {
        to: NodeId,
        from: NodeId,
        bytes: Vec<u8>,
    },
    Wake {
        node: NodeId,
    },
    Timer {
        node: NodeId,
        generation: u64,
    },
    Burst,
    Check,
    Crash(usize),
    Restart(usize),
    PartitionStart(usize),
    PartitionEnd(usize),
    Leave(usize),
    Join(usize),
    /// Hostile member `NodeId` attacks.
    Hostile(NodeId),
}

struct Ev {
    time: Time,
    seq: u64,
    kind: Kind,
}
impl PartialEq for Ev {
    fn eq(&self, o: &Self) -> bool {
        (self.time, self.seq) == (o.time, o.seq)
    }
}
impl Eq for Ev {}
impl PartialOrd for Ev {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ev {
    // Reversed: BinaryHeap is a max-heap, we want the earliest (time, seq) first.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.time, o.seq).cmp(&(self.time, self.seq))
    }
}

struct SimNode {
    node: Option<Node>,
    incarnation: u32,
    left: bool,
    busy_until: Time,
    speed: f64,
    pause_phase: Time,
    paused: Time,
    /// Pauses of `paused` come once every `pause_period`.
    pause_period: Time,
    /// Bytes queued in `inbox` (with `RX_DATAGRAM_OVERHEAD` each).
    inbox_bytes: usize,
    timer_at: Option<Time>,
    timer_generation: u64,
    inbox: VecDeque<(NodeId, Vec<u8>)>,
    wake_scheduled: bool,
    /// Whether the application is in the group; when it left, if it did.
    joined: bool,
    left_at: Option<Time>,
}

pub struct Sim {
    sc: Scenario,
    rng: Xoshiro256PlusPlus,
    heap: BinaryHeap<Ev>,
    seq: u64,
    now: Time,
    nodes: Vec<SimNode>,
    side_of: Vec<Vec<bool>>,
    active_partitions: Vec<bool>,
    link_base: Vec<u32>,
    pub checker: Checker,
    trace: u64,
    events: u64,
    datagrams: u64,
    datagrams_at_start: u64,
    /// Suspicions raised by all nodes before the workload start (bootstrap).
    suspicions_at_start: u64,
    rx_dropped: u64,
    workload_start: Option<Time>,
    sent_per_sender: Vec<u64>,
    abandoned: Vec<bool>,
    all_submitted: bool,
    credit: Vec<u128>,
    trace_views: bool,
    /// `TUTTI_SIM_TRACE_NODE=N`: print every event of node N, and the simulator's actions
    /// on it (debugging aid).
    trace_node: Option<NodeId>,
    quota: Vec<u64>,
    senders: Vec<NodeId>,
    last_burst: Time,
    done: bool,
    state_samples: Vec<usize>,
    state_parts: BTreeMap<String, u64>,
    sampled: bool,
    converged: Option<bool>,
    healthy: Vec<bool>,
    healthy_times: Vec<Time>,
    /// Per node: datagrams built over `max_datagram`, the largest, and what they carried.
    oversize: BTreeMap<NodeId, (u64, usize, String)>,
    retained_max: usize,
    /// Deliveries the node under input handed to its sink as the daemon's node does
    /// (`handle_packet_with`), ahead of the events it queued in the same call.
    sunk: Vec<Event>,
    /// Per link (from << 32 | to): arrival time of its last datagram (links are FIFO);
    /// links idle past their last arrival are pruned at each check (O(active links), not
    /// O(n^2)).
    link_last: HashMap<u64, Time>,
    /// Installed views shared by all nodes (one copy per view, not one per node).
    view_cache: ViewCache,
    /// The hostile members' own generator (so that their draws change no other).
    hostile_rng: Xoshiro256PlusPlus,
    /// Attacks made so far (all hostile members together), and their datagrams.
    hostile_attacks_made: u64,
    hostile_datagrams: u64,
    /// Nodes crashed for good: (node, crash time, removal time from the coordinator's view).
    crashed: Vec<(NodeId, Time, Option<Time>)>,
    /// Per node: whether the coordinator's view held it (this incarnation) at the last
    /// check after the workload start; and how often a live node left that view.
    in_coordinator_view: Vec<bool>,
    false_removals: u64,
    largest_datagram: usize,
}

impl Sim {
    pub fn new(sc: Scenario) -> Self {
        let n = sc.nodes as usize;
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(sc.seed);
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let perturbed = sc.perturbed.contains(&(i as NodeId));
            let descheduled = sc.descheduled.contains(&(i as NodeId)) && sc.deschedule_for > 0;
            let avail = (1.0 - sc.perturb_fraction).clamp(0.01, 1.0);
            let pause_period = if descheduled {
                sc.deschedule_every.max(sc.deschedule_for + 1)
            } else {
                100 * MILLIS
            };
            nodes.push(SimNode {
                node: None,
                incarnation: 1,
                left: false,
                busy_until: 0,
                speed: if perturbed { avail } else { 1.0 },
                pause_phase: rng.gen_range(0..100 * MILLIS),
                paused: if descheduled {
                    sc.deschedule_for
                } else if perturbed {
                    ((1.0 - avail) * (100 * MILLIS) as f64) as Time
                } else {
                    0
                },
                pause_period,
                inbox_bytes: 0,
                timer_at: None,
                timer_generation: 0,
                inbox: VecDeque::new(),
                wake_scheduled: false,
                joined: false,
                left_at: None,
            });
        }
        // Per-link base latency: a small table of draws indexed by a hash of the link.
        let link_base = (0..4096)
            .map(|_| rng.gen_range(sc.latency_min..=sc.latency_max.max(sc.latency_min)) as u32)
            .collect();
        let side_of = sc
            .partitions
            .iter()
            .map(|p| {
                let mut v = vec![false; n];
                for &s in &p.side {
                    if let Some(x) = v.get_mut(s as usize) {
                        *x = true;
                    }
                }
                v
            })
            .collect();
        let mut senders: Vec<NodeId> = (0..sc.nodes).filter(|i| !sc.perturbed.contains(i)).collect();
        senders.truncate(sc.senders as usize);
        let s = senders.len().max(1) as u64;
        let quota = (0..senders.len() as u64)
            .map(|i| sc.messages / s + u64::from(i < sc.messages % s))
            .collect();
        let healthy = (0..sc.nodes).map(|i| !sc.perturbed.contains(&i)).collect();
        let fifo = sc.settings.delivery == Delivery::Fifo;
        let np = sc.partitions.len();
        Sim {
            rng,
            heap: BinaryHeap::new(),
            seq: 0,
            now: 0,
            nodes,
            side_of,
            active_partitions: vec![false; np],
            link_base,
            checker: {
                let mut c = Checker::new(fifo);
                c.large_threshold = sc.settings.fragment_payload();
                c.excluded = sc.hostile.clone();
                if sc.nodes <= HEARD_RULE_MAX_NODES {
                    c.heard_window = sc.settings.suspect_timeout;
                }
                c
            },
            trace: 0xcbf2_9ce4_8422_2325,
            events: 0,
            datagrams: 0,
            datagrams_at_start: 0,
            suspicions_at_start: 0,
            rx_dropped: 0,
            workload_start: None,
            sent_per_sender: vec![0; senders.len()],
            abandoned: vec![false; senders.len()],
            all_submitted: false,
            credit: vec![0; senders.len()],
            trace_views: std::env::var_os("TUTTI_SIM_TRACE_VIEWS").is_some(),
            trace_node: std::env::var("TUTTI_SIM_TRACE_NODE")
                .ok()
                .and_then(|v| v.parse().ok()),
            quota,
            senders,
            last_burst: 0,
            done: false,
            state_samples: Vec::new(),
            state_parts: BTreeMap::new(),
            sampled: false,
            converged: None,
            healthy,
            healthy_times: Vec::new(),
            oversize: BTreeMap::new(),
            retained_max: 0,
            sunk: Vec::new(),
            link_last: HashMap::new(),
            view_cache: ViewCache::new(),
            hostile_rng: Xoshiro256PlusPlus::seed_from_u64(sc.seed ^ 0x686f_7374_696c_6521),
            hostile_attacks_made: 0,
            hostile_datagrams: 0,
            crashed: Vec::new(),
            in_coordinator_view: Vec::new(),
            false_removals: 0,
            largest_datagram: 0,
            sc,
        }
    }

    fn push(&mut self, time: Time, kind: Kind) {
        self.seq += 1;
        self.heap.push(Ev {
            time,
            seq: self.seq,
            kind,
        });
    }

    fn mix(&mut self, words: &[u64]) {
        for w in words {
            self.trace = (self.trace ^ w).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn start_node(&mut self, i: usize) {
        let sn = &mut self.nodes[i];
        let seed = self.sc.seed
            ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ u64::from(sn.incarnation) << 48;
        let mut node = Node::new(
            i as NodeId,
            sn.incarnation,
            &[0],
            self.sc.settings.clone(),
            self.now,
            seed,
        );
        node.set_view_cache(self.view_cache.clone());
        let join = !self.sc.membership_only;
        if join {
            node.join(self.now, GROUP);
        }
        sn.node = Some(node);
        sn.busy_until = self.now;
        sn.inbox.clear();
        sn.inbox_bytes = 0;
        sn.joined = join;
        sn.left_at = None;
        let inst = (i as NodeId, sn.incarnation);
        if join {
            self.checker.on_join(inst, GROUP, self.now);
        }
        self.after_input(i);
    }

    /// Earliest time >= t at which node i can run (not paused, not busy).
    fn available_at(&self, i: usize, t: Time) -> Time {
        let sn = &self.nodes[i];
        let mut t = t.max(sn.busy_until);
        if sn.paused > 0 {
            let period = sn.pause_period;
            let into = (t + period - sn.pause_phase % period) % period;
            if into < sn.paused {
                t += sn.paused - into;
            }
        }
        t
    }

    /// When a datagram sent now from `from` reaches `to`: the link's base latency plus
    /// jitter, but links are FIFO (a datagram never overtakes an earlier one on the same
    /// link, as on one network path) unless the reorder fault delays it by up to 2 ms.
    fn arrival(&mut self, from: NodeId, to: NodeId) -> Time {
        let h =
            (u64::from(from).wrapping_mul(0x9E37_79B9) ^ u64::from(to).wrapping_mul(0x85EB_CA6B)) as usize;
        let base = Time::from(self.link_base[h % self.link_base.len()]);
        let at = self.now + base + self.rng.gen_range(0..=self.sc.jitter);
        if self.sc.reorder > 0.0 && self.rng.gen_bool(self.sc.reorder) {
            return at + self.rng.gen_range(0..2 * MILLIS);
        }
        let last = self
            .link_last
            .entry(u64::from(from) << 32 | u64::from(to))
            .or_insert(0);
        let at = at.max(*last);
        *last = at;
        at
    }

    fn is_cut(&self, a: NodeId, b: NodeId) -> bool {
        self.active_partitions
            .iter()
            .enumerate()
            .any(|(p, &on)| on && self.side_of[p][a as usize] != self.side_of[p][b as usize])
    }

    /// Drain a node's transmits and events after an input.
    fn after_input(&mut self, i: usize) {
        let now = self.now;
        let mut transmits = Vec::new();
        let mut evs = std::mem::take(&mut self.sunk);
        let (timeout, inst, retained) = {
            let Some(node) = self.nodes[i].node.as_mut() else {
                return;
            };
            while let Some(t) = node.poll_transmit() {
                // The node lends the bytes until its next call: the simulated network keeps a copy.
                transmits.push(SimDatagram {
                    dest: t.dest,
                    payload: t.payload.to_vec(),
                });
            }
            while let Some(e) = node.poll_event() {
                evs.push(e);
            }
            (
                node.poll_timeout(),
                (node.id(), node.incarnation()),
                node.retained_bytes(),
            )
        };
        // What a node keeps for repair stays within its budgets (one group per node).
        let budget = self
            .sc
            .settings
            .group_budget_bytes
            .min(self.sc.settings.node_budget_bytes);
        if retained > budget {
            self.checker.violation(format!(
                "{inst:?} retains {retained} bytes for repair, over its budget of {budget}"
            ));
        }
        self.retained_max = self.retained_max.max(retained);
        let max_datagram = self.sc.settings.max_datagram;
        for t in transmits {
            self.datagrams += 1;
            self.largest_datagram = self.largest_datagram.max(t.payload.len());
            let from = i as NodeId;
            if t.payload.len() > max_datagram {
                // The daemon's transport refuses such a datagram: the protocol must not
                // build it. Each one counts as a violation; the samples say per node how
                // many, how large and what they carried (see `report`).
                self.checker.violations += 1;
                let e = self.oversize.entry(from).or_insert((0, 0, String::new()));
                e.0 += 1;
                if t.payload.len() > e.1 {
                    e.1 = t.payload.len();
                    e.2 = datagram_kinds(&t.payload);
                }
                continue;
            }
            if self.trace_node == Some(from) && std::env::var_os("TUTTI_SIM_TRACE_PACKETS").is_some() {
                let at = now.saturating_sub(self.workload_start.unwrap_or(0)) / MICROS;
                let mut what = datagram_kinds(&t.payload);
                if let Ok(d) = packet::decode(&t.payload) {
                    for m in d.messages() {
                        if let Message::Request { entries, .. } = m {
                            for e in entries.iter() {
                                what += &format!(" {}/{}:{}+{}", e.sender, e.stream, e.first, e.count);
                            }
                        }
                    }
                }
                eprintln!("[{at} us]   -> {}: {what}", t.dest);
            }
            self.mix(&[now, u64::from(from), u64::from(t.dest), t.payload.len() as u64]);
            if t.dest as usize >= self.nodes.len() || self.is_cut(from, t.dest) {
                continue;
            }
            if self.sc.loss > 0.0 && self.rng.gen_bool(self.sc.loss.min(1.0)) {
                continue;
            }
            let copies = if self.sc.duplicate > 0.0 && self.rng.gen_bool(self.sc.duplicate) {
                2
            } else {
                1
            };
            let mut payload = Some(t.payload);
            for c in 0..copies {
                let at = self.arrival(from, t.dest);
                let bytes = if c + 1 == copies {
                    payload.take().unwrap_or_default()
                } else {
                    payload.clone().unwrap_or_default()
                };
                self.push(
                    at,
                    Kind::Packet {
                        to: t.dest,
                        from,
                        bytes,
                    },
                );
            }
        }
        for e in evs {
            self.on_event(inst, e);
        }
        let sn = &mut self.nodes[i];
        if timeout != sn.timer_at {
            sn.timer_at = timeout;
            sn.timer_generation += 1;
            let generation = sn.timer_generation;
            if let Some(t) = timeout {
                self.push(
                    t.max(now),
                    Kind::Timer {
                        node: i as NodeId,
                        generation,
                    },
                );
            }
        }
    }

    fn on_event(&mut self, inst: Instance, e: Event) {
        let now = self.now;
        if self.sc.hostile.contains(&inst.0) {
            return; // a hostile member's own deliveries and views are its business
        }
        if self.trace_node == Some(inst.0) {
            let t = now.saturating_sub(self.workload_start.unwrap_or(0)) / MICROS;
            match &e {
                Event::Deliver {
                    sender,
                    stream,
                    seq,
                    session,
                    payload,
                    ..
                } => eprintln!(
                    "[{t} us] {inst:?} deliver {sender}/{stream}/{seq} session {session} ({} B)",
                    payload.len()
                ),
                Event::Lost {
                    sender,
                    stream,
                    first,
                    count,
                    ..
                } => eprintln!("[{t} us] {inst:?} lost {sender}/{stream}/{first}+{count}"),
                Event::ViewChange(v) => eprintln!(
                    "[{t} us] {inst:?} view {}/{} members {:?} group {:?}",
                    v.id.counter,
                    v.id.coordinator,
                    v.members
                        .iter()
                        .map(|m| (m.node, m.incarnation))
                        .collect::<Vec<_>>(),
                    v.group_view(GROUP)
                        .map(|g| g.members.iter().zip(&g.streams).collect::<Vec<_>>())
                ),
                other => eprintln!("[{t} us] {inst:?} {other:?}"),
            }
        }
        match e {
            Event::Deliver {
                group,
                sender,
                stream,
                seq,
                session,
                payload,
            } => {
                self.mix(&[now, 1, u64::from(inst.0), u64::from(sender), seq]);
                let id = MessageId {
                    group,
                    sender,
                    stream,
                    seq,
                };
                self.checker.on_deliver(inst, now, id, session, &payload);
                if inst.0 != sender && self.healthy.get(inst.0 as usize) == Some(&true) {
                    self.healthy_times.push(now);
                }
            }
            Event::Lost {
                group,
                sender,
                stream,
                first,
                count,
            } => {
                self.mix(&[now, 2, u64::from(inst.0), u64::from(sender), first, count]);
                self.checker.on_lost(inst, group, sender, stream, first, count);
            }
            Event::ViewChange(v) => {
                self.mix(&[
                    now,
                    3,
                    u64::from(inst.0),
                    v.id.counter,
                    u64::from(v.id.coordinator),
                ]);
                self.checker.on_view_at(inst, now, &v);
            }
            // This world joins no ordered group (`crate::ordered` drives those).
            Event::OrderedDeliver { .. }
            | Event::OrderedView { .. }
            | Event::SnapshotRequest { .. }
            | Event::Installed { .. }
            | Event::OrderedStatus { .. }
            | Event::OrderedConfiguration { .. } => self.checker.violation(format!(
                "{inst:?}: an ordered-group event in a world without ordered groups"
            )),
        }
    }

    fn process(&mut self, ev: Ev) {
        self.now = ev.time;
        self.events += 1;
        if let Some(n) = self.trace_node {
            let t = ev.time.saturating_sub(self.workload_start.unwrap_or(0)) / MICROS;
            match &ev.kind {
                Kind::Crash(c) if self.sc.crashes[*c].node == n => eprintln!("[{t} us] node {n} crashes"),
                Kind::Restart(c) if self.sc.crashes[*c].node == n => eprintln!("[{t} us] node {n} restarts"),
                Kind::Leave(r) if self.sc.rejoins[*r].node == n => {
                    eprintln!("[{t} us] node {n} leaves the group")
                }
                Kind::Join(r) if self.sc.rejoins[*r].node == n => {
                    eprintln!("[{t} us] node {n} joins the group")
                }
                Kind::PartitionStart(p) => eprintln!("[{t} us] partition {p} starts"),
                Kind::PartitionEnd(p) => eprintln!("[{t} us] partition {p} ends"),
                _ => {}
            }
        }
        match ev.kind {
            Kind::Packet { to, from, bytes } => {
                let i = to as usize;
                if self.nodes[i].node.is_none() {
                    return;
                }
                let at = self.available_at(i, ev.time);
                if at > ev.time || !self.nodes[i].inbox.is_empty() {
                    // Busy or paused: the datagram waits in the socket buffer (bounded).
                    let charge = bytes.len() + RX_DATAGRAM_OVERHEAD;
                    let full = match self.sc.rx_buffer_bytes {
                        0 => self.nodes[i].inbox.len() >= RX_CAPACITY,
                        cap => self.nodes[i].inbox_bytes + charge > cap,
                    };
                    if full {
                        self.rx_dropped += 1;
                        return;
                    }
                    self.nodes[i].inbox_bytes += charge;
                    self.nodes[i].inbox.push_back((from, bytes));
                    if !self.nodes[i].wake_scheduled {
                        self.nodes[i].wake_scheduled = true;
                        self.push(at, Kind::Wake { node: to });
                    }
                    return;
                }
                self.deliver_packet(i, from, &bytes);
            }
            Kind::Wake { node } => {
                let i = node as usize;
                self.nodes[i].wake_scheduled = false;
                if self.nodes[i].node.is_none() {
                    self.nodes[i].inbox.clear();
                    self.nodes[i].inbox_bytes = 0;
                    return;
                }
                let at = self.available_at(i, ev.time);
                if at <= ev.time {
                    if let Some((from, bytes)) = self.nodes[i].inbox.pop_front() {
                        let sn = &mut self.nodes[i];
                        sn.inbox_bytes = sn.inbox_bytes.saturating_sub(bytes.len() + RX_DATAGRAM_OVERHEAD);
                        self.deliver_packet(i, from, &bytes);
                    }
                }
                if !self.nodes[i].inbox.is_empty() {
                    self.nodes[i].wake_scheduled = true;
                    let at = self.available_at(i, self.now);
                    self.push(at, Kind::Wake { node });
                }
            }
            Kind::Timer { node, generation } => {
                let i = node as usize;
                if self.nodes[i].node.is_none() || self.nodes[i].timer_generation != generation {
                    return;
                }
                let at = self.available_at(i, ev.time);
                if at > ev.time {
                    self.push(at, Kind::Timer { node, generation });
                    return;
                }
                self.nodes[i].busy_until = ev.time + (COST_BASE as f64 / self.nodes[i].speed) as Time;
                self.nodes[i].timer_at = None;
                if let Some(n) = self.nodes[i].node.as_mut() {
                    n.handle_timeout(ev.time);
                }
                self.after_input(i);
            }
            Kind::Burst => self.burst(),
            Kind::Hostile(h) => self.hostile_attack(h),
            Kind::Check => self.check(),
            Kind::Crash(c) => {
                let cr = self.sc.crashes[c].clone();
                let i = cr.node as usize;
                self.mix(&[ev.time, 10, u64::from(cr.node)]);
                if cr.leave {
                    self.checker.left_cluster.push(cr.node);
                    if let Some(n) = self.nodes[i].node.as_mut() {
                        n.shutdown(ev.time);
                    }
                    self.after_input(i);
                    self.nodes[i].left = true;
                }
                self.nodes[i].node = None;
                self.nodes[i].timer_at = None;
                if cr.restart.is_none() && !cr.leave {
                    self.crashed.push((cr.node, ev.time, None));
                }
            }
            Kind::Restart(c) => {
                let i = self.sc.crashes[c].node as usize;
                self.mix(&[ev.time, 11, i as u64]);
                self.nodes[i].incarnation = 1 + (ev.time / MILLIS) as u32;
                self.start_node(i);
            }
            Kind::PartitionStart(p) => {
                self.active_partitions[p] = true;
            }
            Kind::PartitionEnd(p) => {
                self.active_partitions[p] = false;
            }
            Kind::Leave(r) => {
                let i = self.sc.rejoins[r].node as usize;
                self.mix(&[ev.time, 12, i as u64]);
                let inc = self.nodes[i].incarnation;
                if !self.nodes[i].joined {
                    return;
                }
                let Some(n) = self.nodes[i].node.as_mut() else {
                    return;
                };
                n.leave(ev.time, GROUP);
                self.nodes[i].joined = false;
                self.nodes[i].left_at = Some(ev.time);
                self.checker.on_leave((i as NodeId, inc), GROUP);
                self.after_input(i);
            }
            Kind::Join(r) => {
                let i = self.sc.rejoins[r].node as usize;
                self.mix(&[ev.time, 13, i as u64]);
                let inc = self.nodes[i].incarnation;
                if self.nodes[i].joined {
                    return;
                }
                let Some(n) = self.nodes[i].node.as_mut() else {
                    return;
                };
                n.join(ev.time, GROUP);
                self.nodes[i].joined = true;
                self.checker.on_join((i as NodeId, inc), GROUP, ev.time);
                self.after_input(i);
            }
        }
    }

    fn deliver_packet(&mut self, i: usize, from: NodeId, bytes: &[u8]) {
        let now = self.now;
        if self.trace_node == Some(i as NodeId) && std::env::var_os("TUTTI_SIM_TRACE_PACKETS").is_some() {
            let t = now.saturating_sub(self.workload_start.unwrap_or(0)) / MICROS;
            if let Ok(d) = packet::decode(bytes) {
                for m in d.messages() {
                    match m {
                        Message::Data {
                            header, retransmit, ..
                        } => eprintln!(
                            "[{t} us]   <- {from}: data {}/{}/{} frag {}/{}{}",
                            { header.sender },
                            { header.stream },
                            { header.seq },
                            { header.frag_index },
                            { header.frag_count },
                            if retransmit { " (retransmit)" } else { "" }
                        ),
                        Message::DataRun { retransmit, messages } => {
                            let h = messages.header();
                            eprintln!(
                                "[{t} us]   <- {from}: data run {}/{}/{}+{}{}",
                                h.sender,
                                h.stream,
                                h.first_seq,
                                messages.len(),
                                if retransmit { " (retransmit)" } else { "" }
                            )
                        }
                        Message::Digest { entries, .. } => {
                            let es: Vec<String> = entries
                                .iter()
                                .map(|e| {
                                    format!(
                                        "{}/{}:{}..{}..{}",
                                        e.sender, e.stream, e.low, e.contiguous, e.high
                                    )
                                })
                                .collect();
                            eprintln!("[{t} us]   <- {from}: digest {}", es.join(" "));
                        }
                        Message::Request { header, entries } => {
                            let es: Vec<String> = entries
                                .iter()
                                .map(|e| format!("{}/{}:{}+{}", e.sender, e.stream, e.first, e.count))
                                .collect();
                            eprintln!(
                                "[{t} us]   <- {from}: request (round {}) {}",
                                header.round,
                                es.join(" ")
                            );
                        }
                        _ => {}
                    }
                }
            }
        }
        if self.checker.heard_window > 0 && self.nodes[i].node.is_some() {
            if let Ok(d) = packet::decode(bytes) {
                let at = (i as NodeId, self.nodes[i].incarnation);
                self.checker.on_heard(at, (from, d.header.incarnation), now);
            }
        }
        let base = match self.sc.rx_datagrams_per_ms {
            0 => COST_BASE + COST_PER_BYTE_NS * bytes.len() as Time,
            rate => (MILLIS / rate).max(1),
        };
        let cost = (base as f64 / self.nodes[i].speed) as Time;
        self.nodes[i].busy_until = now + cost;
        if let Some(n) = self.nodes[i].node.as_mut() {
            // As the daemon does: deliveries through the sink while no event waits.
            let sunk = &mut self.sunk;
            n.handle_packet_with(now, from, bytes, &mut |d| sunk.push(d.to_event()));
        }
        self.after_input(i);
    }

    fn live_instances(&self) -> Vec<Instance> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, sn)| sn.node.as_ref().map(|_| (i as NodeId, sn.incarnation)))
            .collect()
    }

    /// One view, with exactly the live nodes, everywhere; its group holds the live nodes
    /// whose application is in it (a node that left within the last linger, plus a few
    /// rounds for its leave to reach the coordinator, may still be there). Views are
    /// compared by (id, content hash), so the member lists are checked once: O(n).
    fn views_converged(&self) -> bool {
        let mut first: Option<(ViewId, u64, &View)> = None;
        let mut live = 0usize;
        for sn in self.nodes.iter().filter_map(|s| s.node.as_ref()) {
            live += 1;
            let key = (sn.view().id, sn.view_hash());
            match first {
                None => first = Some((key.0, key.1, sn.view())),
                Some((id, h, _)) if (id, h) != key => return false,
                _ => {}
            }
        }
        let Some((_, _, v)) = first else {
            return true;
        };
        if v.members.len() != live
            || v.members.iter().any(|m| {
                self.nodes
                    .get(m.node as usize)
                    .is_none_or(|sn| sn.node.is_none() || sn.incarnation != m.incarnation)
            })
        {
            return false;
        }
        let settle = self.sc.settings.linger + 10 * self.sc.settings.gossip_period;
        let group = v.group(GROUP).unwrap_or(&[]);
        let mut in_group = vec![false; self.nodes.len()];
        for &n in group {
            match in_group.get_mut(n as usize) {
                Some(x) if self.nodes[n as usize].node.is_some() => *x = true,
                _ => return false,
            }
        }
        for (n, node) in self.nodes.iter().enumerate() {
            if node.node.is_none() {
                continue;
            }
            let settling = node.left_at.is_some_and(|t| self.now < t + settle);
            if !settling && in_group[n] != node.joined {
                return false;
            }
        }
        true
    }

    /// How the live nodes' views differ (for a convergence violation): each distinct
    /// (view id, hash) with the nodes holding it (count, first few), its size, and the
    /// live nodes it lacks or the gone ones it still lists.
    fn view_split(&self) -> String {
        let mut by: BTreeMap<(u64, NodeId, u32, u64), Vec<NodeId>> = BTreeMap::new();
        for (i, sn) in self.nodes.iter().enumerate() {
            if let Some(n) = &sn.node {
                let v = n.view();
                by.entry((
                    v.id.counter,
                    v.id.coordinator,
                    v.id.coordinator_incarnation,
                    n.view_hash(),
                ))
                .or_default()
                .push(i as NodeId);
            }
        }
        let mut out = format!("{} distinct views", by.len());
        for ((counter, coord, inc, hash), holders) in by.iter().rev().take(6) {
            let Some(v) = self
                .nodes
                .get(holders[0] as usize)
                .and_then(|s| s.node.as_ref())
                .map(|n| n.view())
            else {
                continue;
            };
            let listed: std::collections::HashSet<NodeId> = v.members.iter().map(|m| m.node).collect();
            let lacks: Vec<NodeId> = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(i, s)| s.node.is_some() && !listed.contains(&(*i as NodeId)))
                .map(|(i, _)| i as NodeId)
                .take(5)
                .collect();
            let gone: Vec<NodeId> = v
                .members
                .iter()
                .filter(|m| {
                    self.nodes
                        .get(m.node as usize)
                        .is_none_or(|s| s.node.is_none() || s.incarnation != m.incarnation)
                })
                .map(|m| m.node)
                .take(5)
                .collect();
            out.push_str(&format!(
                "; view ({counter}, coordinator {coord}.{inc}, hash {hash:016x}) of {} members held by {} nodes (first {:?}), lacks live {lacks:?}, lists gone {gone:?}",
                v.members.len(),
                holders.len(),
                &holders[..holders.len().min(5)],
            ));
        }
        out
    }

    fn check(&mut self) {
        let now = self.now;
        if self.trace_views && now % (500 * MILLIS) < CHECK_INTERVAL {
            let mut ids: Vec<(u64, NodeId, usize)> = self
                .nodes
                .iter()
                .filter_map(|s| s.node.as_ref())
                .map(|n| {
                    (
                        n.view().id.counter,
                        n.view().id.coordinator,
                        n.view().members.len(),
                    )
                })
                .collect();
            ids.sort_unstable();
            ids.dedup();
            eprintln!(
                "t={} ms: {} distinct views, (counter, coordinator, size): {:?}",
                now / MILLIS,
                ids.len(),
                &ids[ids.len().saturating_sub(4)..]
            );
        }
        let now_t = self.now;
        self.link_last.retain(|_, t| *t > now_t);
        if self.workload_start.is_some() {
            // Live nodes (in the incarnation they run) that the coordinator's view dropped.
            let coord = self
                .nodes
                .iter()
                .filter_map(|s| s.node.as_ref())
                .min_by_key(|n| (n.incarnation(), n.id()));
            if let Some(v) = coord.map(|n| n.view().clone()) {
                let mut now_in = vec![false; self.nodes.len()];
                for m in &v.members {
                    if let Some(sn) = self.nodes.get(m.node as usize) {
                        now_in[m.node as usize] = sn.node.is_some() && sn.incarnation == m.incarnation;
                    }
                }
                if self.in_coordinator_view.len() == now_in.len() {
                    for (i, (&was, &is)) in self.in_coordinator_view.iter().zip(&now_in).enumerate() {
                        if was && !is && self.nodes[i].node.is_some() && !self.nodes[i].left {
                            self.false_removals += 1;
                        }
                    }
                }
                self.in_coordinator_view = now_in;
            }
        }
        if self.crashed.iter().any(|c| c.2.is_none()) {
            // The coordinator: the oldest live node, as the views order members.
            let coord = self
                .nodes
                .iter()
                .filter_map(|s| s.node.as_ref())
                .min_by_key(|n| (n.incarnation(), n.id()));
            if let Some(v) = coord.map(|n| n.view().clone()) {
                for c in self.crashed.iter_mut().filter(|c| c.2.is_none()) {
                    if !v.members.iter().any(|m| m.node == c.0) {
                        c.2 = Some(now_t);
                    }
                }
            }
        }
        if self.workload_start.is_none() {
            if self.views_converged() || now >= self.sc.max_bootstrap {
                self.begin_workload();
            }
        } else if self.is_complete() {
            self.done = true;
            return;
        }
        if !self.done {
            self.push(now + CHECK_INTERVAL, Kind::Check);
        }
    }

    fn begin_workload(&mut self) {
        let t0 = self.now;
        if !self.views_converged() {
            self.checker.violation(format!(
                "membership did not form one view of all nodes within {} ms of start-up: the workload \
                 starts anyway",
                self.sc.max_bootstrap / MILLIS
            ));
        }
        self.workload_start = Some(t0);
        self.datagrams_at_start = self.datagrams;
        self.suspicions_at_start = self
            .nodes
            .iter()
            .filter_map(|s| s.node.as_ref())
            .map(|n| n.counters().suspicions_raised)
            .sum();
        self.push(t0, Kind::Burst);
        for c in 0..self.sc.crashes.len() {
            let cr = &self.sc.crashes[c];
            let (at, restart) = (cr.at, cr.restart);
            self.push(t0 + at, Kind::Crash(c));
            if let Some(r) = restart {
                self.push(t0 + r, Kind::Restart(c));
            }
        }
        for p in 0..self.sc.partitions.len() {
            let (s, e) = (self.sc.partitions[p].start, self.sc.partitions[p].end);
            self.push(t0 + s, Kind::PartitionStart(p));
            self.push(t0 + e, Kind::PartitionEnd(p));
            self.checker.cuts.push(Cut {
                start: t0 + s,
                end: t0 + e,
                side: self.sc.partitions[p].side.clone(),
            });
        }
        for h in self.sc.hostile.clone() {
            self.push(t0 + HOSTILE_INTERVAL, Kind::Hostile(h));
        }
        for r in 0..self.sc.rejoins.len() {
            let (leave, join) = (self.sc.rejoins[r].leave, self.sc.rejoins[r].join);
            self.push(t0 + leave, Kind::Leave(r));
            if let Some(j) = join {
                self.push(t0 + j, Kind::Join(r));
            }
        }
    }

    /// Hostile member `h` sends its next attack to a random live honest member, under its
    /// own id and incarnation, over the simulated network (partitions apply; loss does
    /// not: attacks arrive).
    fn hostile_attack(&mut self, h: NodeId) {
        let t0 = self.workload_start.unwrap_or(0);
        if self.now > t0 + self.sc.hostile_span() || self.sc.hostile_attacks.is_empty() {
            return;
        }
        self.push(self.now + HOSTILE_INTERVAL, Kind::Hostile(h));
        let targets: Vec<NodeId> = (0..self.sc.nodes)
            .filter(|n| !self.sc.hostile.contains(n) && self.nodes[*n as usize].node.is_some())
            .collect();
        if targets.is_empty() {
            return;
        }
        let target = targets[self.hostile_rng.gen_range(0..targets.len())];
        let attack = self.sc.hostile_attacks
            [(self.hostile_attacks_made % self.sc.hostile_attacks.len() as u64) as usize];
        // Next seq of every stream sent so far.
        let mut streams: Vec<(NodeId, u32, u64)> = Vec::new();
        for m in &self.checker.sent {
            match streams.iter_mut().find(|s| (s.0, s.1) == (m.sender, m.stream)) {
                Some(s) => s.2 = s.2.max(m.seq + 1),
                None => streams.push((m.sender, m.stream, m.seq + 1)),
            }
        }
        let Some(node) = self.nodes[h as usize].node.as_ref() else {
            return;
        };
        let k = Knowledge {
            group: GROUP,
            streams: &streams,
            round: self.hostile_attacks_made,
        };
        let datagrams = forge(attack, node, target, &k, &mut self.hostile_rng);
        self.hostile_attacks_made += 1;
        self.mix(&[
            self.now,
            14,
            u64::from(h),
            u64::from(target),
            datagrams.len() as u64,
        ]);
        for bytes in datagrams {
            if self.is_cut(h, target) {
                continue;
            }
            self.hostile_datagrams += 1;
            let at = self.arrival(h, target);
            self.push(
                at,
                Kind::Packet {
                    to: target,
                    from: h,
                    bytes,
                },
            );
        }
    }

    fn burst(&mut self) {
        // Each sender earns rate / senders messages per second, in integer credit units
        // (message x senders x 1e9) so that any rate works and runs stay deterministic.
        let s = self.senders.len().max(1) as u128;
        let cost = s * 1_000_000_000;
        let mut more = false;
        for k in 0..self.senders.len() {
            let sender = self.senders[k];
            let i = sender as usize;
            let t0 = self.workload_start.unwrap_or(0);
            if let Some(&(_, quiet)) = self.sc.quiet_until.iter().find(|(n, _)| *n == sender) {
                if self.now < t0 + quiet {
                    more = true;
                    continue;
                }
            }
            self.credit[k] += u128::from(self.sc.rate) * u128::from(BURST_INTERVAL);
            let each = self.credit[k] / cost;
            self.credit[k] -= each * cost;
            for _ in 0..each {
                if self.sent_per_sender[k] >= self.quota[k] {
                    break;
                }
                if self.nodes[i].node.is_none() {
                    // A crashed sender's remaining share is sent after its restart, if any.
                    let t = self.now.saturating_sub(t0);
                    let restarts = self
                        .sc
                        .crashes
                        .iter()
                        .any(|c| c.node == sender && c.restart.is_some_and(|r| r > t));
                    if !restarts {
                        self.abandoned[k] = true;
                    }
                    break;
                }
                if !self.nodes[i].joined {
                    // The application left the group: it publishes again once back (at
                    // its rate: what it would have sent meanwhile is not made up at once).
                    break;
                }
                let index = self.checker.sent.len() as u64;
                let payload = make_payload(index, self.sc.payload_len(index));
                let session = self.sc.session_of(k, self.sent_per_sender[k]);
                let Some(node) = self.nodes[i].node.as_mut() else {
                    break;
                };
                match node.submit(self.now, GROUP, session, &payload) {
                    Ok(sub) => {
                        let inc = node.incarnation();
                        self.checker.on_send(SentMessage {
                            sender,
                            sender_incarnation: inc,
                            stream: sub.stream,
                            group: GROUP,
                            seq: sub.seq,
                            session,
                            payload_hash: fnv(&payload),
                            len: payload.len(),
                            sent_at: self.now,
                            deliveries: 0,
                            last_delivery: 0,
                        });
                        self.sent_per_sender[k] += 1;
                    }
                    Err(_) => break,
                }
            }
            if self.nodes[i].node.is_some() {
                self.after_input(i);
            }
            if self.sent_per_sender[k] < self.quota[k] && !self.abandoned[k] {
                more = true;
            }
        }
        self.last_burst = self.now;
        self.all_submitted = !more;
        if more {
            self.push(self.now + BURST_INTERVAL, Kind::Burst);
        } else if !self.sampled {
            self.sampled = true;
            self.push(self.now + self.sc.settings.gossip_period, Kind::Check);
            self.sample_state();
        }
    }

    fn sample_state(&mut self) {
        self.state_samples = self
            .nodes
            .iter()
            .filter_map(|s| s.node.as_ref().map(|n| n.state_bytes()))
            .collect();
        let mut sums: BTreeMap<String, u64> = BTreeMap::new();
        let mut count = 0u64;
        for n in self.nodes.iter().filter_map(|s| s.node.as_ref()) {
            count += 1;
            for (name, b) in n.state_parts() {
                *sums.entry(name.to_string()).or_default() += b as u64;
            }
        }
        for v in sums.values_mut() {
            *v /= count.max(1);
        }
        self.state_parts = sums;
    }

    fn submissions_done(&self) -> bool {
        self.all_submitted
    }

    /// Whether every message reached every member owed it, with nothing more scheduled:
    /// the run can stop early.
    fn is_complete(&self) -> bool {
        if self.sc.checks_convergence() || !self.submissions_done() {
            return false;
        }
        let t0 = self.workload_start.unwrap_or(0);
        if self.now < t0 + self.sc.schedule_end() + self.sc.settings.linger {
            return false;
        }
        let live = self.live_instances();
        self.checker.all_delivered(&live)
    }

    fn faults_end(&self) -> Time {
        let mut end = self.sc.schedule_end() + self.sc.settings.linger;
        for c in &self.sc.crashes {
            end = end.max(c.restart.unwrap_or(c.at));
        }
        for p in &self.sc.partitions {
            end = end.max(p.end);
        }
        if !self.sc.hostile.is_empty() {
            end = end.max(self.sc.hostile_span());
        }
        end
    }

    /// Run the scenario to its end and report.
    pub fn run(mut self) -> Report {
        for i in 0..self.nodes.len() {
            self.start_node(i);
        }
        self.push(0, Kind::Check);
        let retention = Time::from(self.sc.settings.retention_rounds + 5) * self.sc.settings.gossip_period;
        let bound = self.sc.convergence_bound();
        let mut convergence_at: Option<Time> = None;
        while let Some(ev) = self.heap.pop() {
            if let Some(t0) = self.workload_start {
                if convergence_at.is_none() {
                    convergence_at = Some(if self.sc.checks_convergence() {
                        t0 + self.faults_end() + bound
                    } else {
                        Time::MAX
                    });
                }
                if let Some(c) = convergence_at {
                    if ev.time >= c && self.converged.is_none() {
                        self.now = c;
                        let ok = self.views_converged();
                        self.converged = Some(ok);
                        if !ok {
                            let split = self.view_split();
                            self.checker.violation(format!(
                                "membership did not converge to one view of the live nodes within {} ms after faults stopped: {split}",
                                bound / MILLIS
                            ));
                        }
                    }
                }
                let end_work = if self.submissions_done() {
                    self.last_burst.max(t0 + self.sc.schedule_end()) + retention
                } else {
                    Time::MAX
                };
                let end = end_work.max(convergence_at.filter(|c| *c != Time::MAX).unwrap_or(0));
                if self.done || ev.time > end {
                    break;
                }
                if ev.time > t0 + HARD_STOP {
                    self.checker.violation(format!(
                        "run did not finish within {} s of simulated time",
                        HARD_STOP / (1000 * MILLIS)
                    ));
                    break;
                }
            }
            self.process(ev);
        }
        self.report()
    }

    fn report(mut self) -> Report {
        let sc = &self.sc;
        let t0 = self.workload_start.unwrap_or(0);
        let live: Vec<Instance> = self.live_instances();
        let period = sc.settings.gossip_period as f64;
        let complete_checked = sc.expects_complete_delivery();
        let bimodal_checked = sc.expects_bimodal();
        let summary = self.checker.delivery_summary(&live, BIMODAL_MIN_TARGETS);
        let mut rounds: Vec<f64> = summary.latencies.iter().map(|l| *l as f64 / period).collect();
        self.checker.check_delivered_or_lost(&live);
        self.checker.check_lost_true();
        if complete_checked {
            let why = format!("loss {:.3}, no crash, no partition, no budget pressure", sc.loss);
            self.checker.check_complete(&live, &why);
            self.checker.check_no_lost(&why);
        }
        if bimodal_checked {
            self.checker.check_bimodal(&live, BIMODAL_MIN_TARGETS);
        }
        // Oversize datagrams first: when there are any, they are usually why the rest failed
        // (e.g. a view too large for one datagram never reaches anyone).
        let max_datagram = sc.settings.max_datagram;
        let oversize: u64 = self.oversize.values().map(|o| o.0).sum();
        let mut lines: Vec<String> = self
            .oversize
            .iter()
            .take(5)
            .map(|(node, (n, largest, kinds))| {
                format!(
                    "node {node} built {n} datagrams over max_datagram {max_datagram} \
                     (largest {largest} bytes, carrying {kinds})"
                )
            })
            .collect();
        if self.oversize.len() > 5 {
            lines.push(format!(
                "... {} nodes built {oversize} datagrams over max_datagram in all",
                self.oversize.len()
            ));
        }
        self.checker.messages.splice(0..0, lines);
        self.checker.messages.truncate(50);
        let all = summary.complete;
        let hist = summary.histogram;
        let ratio_sum = summary.ratio_sum;
        rounds.sort_by(|a, b| a.partial_cmp(b).unwrap_or(Ordering::Equal));
        let pct = |p: f64| -> f64 {
            if rounds.is_empty() {
                0.0
            } else {
                rounds[((rounds.len() as f64 * p) as usize).min(rounds.len() - 1)]
            }
        };
        let n_msgs = self.checker.sent.len().max(1) as f64;
        let mut kinds = KindCounts {
            rx_dropped_slow: self.rx_dropped,
            ..Default::default()
        };
        let mut lost: u64 = 0;
        let mut refused_oversize: u64 = 0;
        let (mut suspicions, mut confirmed, mut membership_dgrams, mut live_n) = (0u64, 0u64, 0u64, 0u64);
        for n in self.nodes.iter().filter_map(|s| s.node.as_ref()) {
            let c = n.counters();
            refused_oversize += c.oversize_datagrams;
            suspicions += c.suspicions_raised;
            confirmed += c.peers_confirmed_dead;
            membership_dgrams += c.heartbeats_sent;
            live_n += 1;
            kinds.data_tree += c.data_sent;
            kinds.retransmits += c.retransmits_sent;
            kinds.digests += c.digests_sent;
            kinds.requests += c.requests_sent;
            kinds.heartbeats += c.heartbeats_sent;
            kinds.probes += c.probes_sent;
            kinds.acks += c.acks_sent;
            kinds.ping_reqs += c.ping_reqs_sent;
            kinds.views += c.views_sent;
            kinds.transmits_dropped += c.transmits_dropped;
            kinds.flow_statuses += c.flow_statuses_sent + c.flow_asks_sent;
            kinds.flow_blocked += c.flow_blocked;
            kinds.flow_slow_members += c.flow_slow_members;
            kinds.flow_statuses_received_max = kinds.flow_statuses_received_max.max(c.flow_statuses_received);
            kinds.retransmit_budget_exhausted += c.retransmit_budget_exhausted;
            kinds.evicted_budget += c.evicted_budget;
            kinds.bad_fragments += c.bad_fragments;
            kinds.bad_digests += c.bad_digests;
            kinds.decode_errors += c.decode_errors;
            lost = lost.saturating_add(c.lost_reported);
        }
        let refused = kinds.bad_fragments + kinds.bad_digests + kinds.decode_errors;
        if refused > 0 {
            self.checker.violation(format!(
                "live nodes refused input the simulator never corrupts: {} bad fragments, {} bad digests, \
                 {} undecodable datagrams",
                kinds.bad_fragments, kinds.bad_digests, kinds.decode_errors
            ));
        }
        if refused_oversize > 0 {
            // The outbox refuses what cannot fit a datagram: the protocol built it anyway.
            self.checker.violation(format!(
                "live nodes built {refused_oversize} messages too large for max_datagram (refused, never sent)"
            ));
        }
        let deliveries: u64 = self.checker.sent.iter().map(|m| u64::from(m.deliveries)).sum();
        let mut removals: Vec<f64> = self
            .crashed
            .iter()
            .filter_map(|c| c.2.map(|r| (r - c.1) as f64 / MILLIS as f64))
            .collect();
        removals.sort_by(|a, b| a.partial_cmp(b).unwrap_or(Ordering::Equal));
        let removal_pct = |p: f64| -> Option<f64> {
            (!removals.is_empty())
                .then(|| removals[((removals.len() as f64 * p) as usize).min(removals.len() - 1)])
        };
        let dgrams = self.datagrams - self.datagrams_at_start;
        let samples = &self.state_samples;
        Report {
            nodes: sc.nodes,
            messages: self.checker.sent.len() as u64,
            senders: self.senders.len() as u32,
            seed: sc.seed,
            loss: sc.loss,
            invariant_violations: self.checker.violations,
            violation_samples: self.checker.messages.clone(),
            delivered_all_fraction: all as f64 / n_msgs,
            mean_delivery_ratio: ratio_sum / n_msgs,
            delivery_fraction_histogram: hist,
            rounds_p50: pct(0.5),
            rounds_p99: pct(0.99),
            datagrams_per_delivery: dgrams as f64 / deliveries.max(1) as f64,
            datagrams: dgrams,
            deliveries,
            messages_by_kind: kinds,
            lost_reported: lost,
            view_converged: self.converged,
            bootstrap_ms: t0 as f64 / MILLIS as f64,
            sim_time_ms: self.now as f64 / MILLIS as f64,
            events: self.events,
            state_bytes_per_node_mean: if samples.is_empty() {
                0.0
            } else {
                samples.iter().sum::<usize>() as f64 / samples.len() as f64
            },
            state_bytes_per_node_max: samples.iter().copied().max().unwrap_or(0) as u64,
            state_bytes_by_part: self.state_parts.clone(),
            healthy_throughput_ratio: None,
            healthy_rate: {
                // Deliveries at healthy members during the sending window (plus one round),
                // per second: the steady-state throughput, not the repair tail.
                let end = self.last_burst + sc.settings.gossip_period;
                let n = self.healthy_times.iter().filter(|t| **t <= end).count();
                if end > t0 {
                    n as f64 / ((end - t0) as f64 / 1e9)
                } else {
                    0.0
                }
            },
            trace_hash: format!("{:016x}", self.trace),
            complete_delivery_checked: complete_checked,
            bimodal_checked,
            budget_pressure: sc.budget_pressure(),
            oversize_datagrams: oversize,
            retained_bytes_max: self.retained_max as u64,
            coverage: self.checker.coverage.clone(),
            crash_removal_ms_p50: removal_pct(0.5),
            crash_removal_ms_p99: removal_pct(0.99),
            crashed_not_removed: {
                if std::env::var_os("TUTTI_SIM_DEBUG_CRASHED").is_some() {
                    let coord = self
                        .nodes
                        .iter()
                        .filter_map(|s| s.node.as_ref())
                        .min_by_key(|n| (n.incarnation(), n.id()));
                    for c in self.crashed.iter().filter(|c| c.2.is_none()) {
                        let held: Vec<NodeId> = self
                            .nodes
                            .iter()
                            .filter_map(|s| s.node.as_ref())
                            .filter(|n| !n.holds_failed(c.0))
                            .map(|n| n.id())
                            .take(10)
                            .collect();
                        eprintln!(
                            "crashed {} not removed; coordinator holds it failed: {:?}; alive at {:?}",
                            c.0,
                            coord.map(|n| n.holds_failed(c.0)),
                            held
                        );
                    }
                }
                self.crashed.iter().filter(|c| c.2.is_none()).count() as u64
            },
            suspicions_raised: suspicions,
            suspicions_in_bootstrap: self.suspicions_at_start,
            false_removals: self.false_removals,
            peers_confirmed_dead: confirmed,
            false_suspicions_per_member_hour: (self.crashed.is_empty()
                && sc.partitions.is_empty()
                && live_n > 0)
                .then(|| {
                    // The steady state: from one view of all to the end.
                    let t0 = self.workload_start.unwrap_or(0);
                    let after = suspicions.saturating_sub(self.suspicions_at_start);
                    after as f64 / live_n as f64 / (self.now.saturating_sub(t0).max(1) as f64 / 3.6e12)
                }),
            membership_datagrams_per_member_round: membership_dgrams as f64
                / live_n.max(1) as f64
                / (self.now as f64 / period).max(1.0),
            datagrams_per_member_round: self.datagrams as f64
                / live_n.max(1) as f64
                / (self.now as f64 / period).max(1.0),
            largest_datagram: self.largest_datagram as u64,
            hostile_attacks: self.hostile_attacks_made,
            hostile_datagrams: self.hostile_datagrams,
            streams: {
                let mut v: Vec<(NodeId, u32, u32, u64)> = Vec::new();
                for m in &self.checker.sent {
                    match v
                        .iter_mut()
                        .find(|s| (s.0, s.1, s.2) == (m.sender, m.sender_incarnation, m.stream))
                    {
                        Some(s) => s.3 += 1,
                        None => v.push((m.sender, m.sender_incarnation, m.stream, 1)),
                    }
                }
                v
            },
        }
    }
}

/// Run a scenario; with perturbed nodes, also run it without them and report the ratio of
/// delivery rates at the healthy members.
pub fn run_with_baseline(sc: &Scenario) -> Report {
    let mut r = Sim::new(sc.clone()).run();
    if !sc.perturbed.is_empty() {
        let mut base = sc.clone();
        // Same nodes measured and same senders, but nobody loses time.
        base.perturb_fraction = 0.0;
        let b = Sim::new(base).run();
        r.healthy_throughput_ratio = Some(if b.healthy_rate > 0.0 {
            r.healthy_rate / b.healthy_rate
        } else {
            0.0
        });
    }
    r
}
