//! Shared harness pieces of the ordered-group tests (`ordered.rs`, `ordered_evs.rs`, and
//! `minitx.rs` for its settings): the minitransaction settings of the randomized runs, a
//! memory node (primary and backup) with its members, the packets between them, a
//! simulated network that holds them until they are due, the routing of a member's
//! `Output` onto that network, and the plan of faults a run follows.

#![allow(dead_code)] // each test binary uses a different part of the harness

use rand::Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::rc::Rc;
use tutti_proto::minitx::{MemoryNode, MinitxSettings};
use tutti_proto::ordered::{OrderedMember, OrderedSettings, Output, MEMNODE};
use tutti_proto::{NodeId, Time, MILLIS};

pub const MICROS: Time = 1_000;
/// Where the group's memory node has its primary and its backup replica.
pub const PRIMARY: NodeId = 100;
pub const BACKUP: NodeId = 200;

/// Minitransaction timers of the randomized harnesses: fast enough that a test covers many
/// retransmissions and recoveries.
pub fn minitx_settings() -> MinitxSettings {
    MinitxSettings {
        retransmit: 4 * MILLIS,
        recovery_timeout: 40 * MILLIS,
        txn_timeout: 400 * MILLIS,
        decide_timeout: 400 * MILLIS,
        ..MinitxSettings::default()
    }
}

/// The group's memory node: a primary at `PRIMARY` replicating to a backup at `BACKUP`,
/// both holding the regions `settings` asks for.
pub fn memory_nodes(settings: &OrderedSettings, minitx: &MinitxSettings) -> (MemoryNode, MemoryNode) {
    let mut primary = MemoryNode::primary(MEMNODE, 1, Some(BACKUP), minitx.clone());
    let mut backup = MemoryNode::backup(MEMNODE, PRIMARY, 1, minitx.clone());
    for (region, size) in settings.regions() {
        primary.add_region(region, size).unwrap();
        backup.add_region(region, size).unwrap();
    }
    (primary, backup)
}

/// The founding members `ids` of `group`, their memory node's primary at `PRIMARY`.
pub fn initial_members(
    group: u64,
    ids: &[NodeId],
    settings: &OrderedSettings,
    minitx: &MinitxSettings,
) -> BTreeMap<NodeId, OrderedMember> {
    ids.iter()
        .map(|&id| {
            let m = OrderedMember::initial(id, group, ids, PRIMARY, settings.clone(), minitx.clone());
            (id, m)
        })
        .collect()
}

/// What travels between members and memory-node replicas. A payload is shared by all the
/// copies a dissemination makes.
#[derive(Debug, Clone)]
pub enum Packet {
    Minitx(Vec<u8>),
    Payload {
        sender: NodeId,
        epoch: u64,
        seq: u64,
        bytes: Rc<Vec<u8>>,
    },
    /// State transfer to a joiner (the `majority` policy's joins only).
    Transfer(Vec<u8>),
    /// A member's progress told to another (`Output::Held`), as on the wire.
    Held(Vec<u8>),
}

/// Puts a member's output on the network: a minitransaction message to its destination, a
/// payload to every other member of `members`, a state transfer to its joiner. Returns the
/// output when it is not for the network (deliveries, views, requests to the application).
pub fn route(
    id: NodeId,
    out: Output,
    members: &[NodeId],
    mut send: impl FnMut(NodeId, Packet),
) -> Option<Output> {
    match out {
        Output::Minitx { to, bytes } => send(to, Packet::Minitx(bytes)),
        Output::Disseminate {
            sender,
            epoch,
            seq,
            bytes: payload,
        } => {
            let bytes = Rc::new(payload);
            for &to in members.iter().filter(|&&n| n != id) {
                let p = Packet::Payload {
                    sender,
                    epoch,
                    seq,
                    bytes: bytes.clone(),
                };
                send(to, p);
            }
        }
        Output::Transfer { to, bytes } => send(to, Packet::Transfer(bytes)),
        Output::Held { to, held } => send(to, Packet::Held(held.to_bytes().to_vec())),
        other => return Some(other),
    }
    None
}

/// Hands a packet that arrived at member `m` to it.
pub fn hand_to_member(m: &mut OrderedMember, now: Time, from: NodeId, p: Packet) {
    match p {
        Packet::Minitx(b) => m.handle_minitx(now, from, &b),
        Packet::Payload {
            sender,
            epoch,
            seq,
            bytes,
        } => m.handle_payload(now, sender, epoch, seq, &bytes),
        Packet::Transfer(b) => m.handle_transfer(now, &b),
        Packet::Held(b) => m.handle_held(now, from, &b),
    }
}

/// Runs the timer of every memory-node replica that is due.
pub fn fire_memnode_timers<'a>(now: Time, memnodes: impl IntoIterator<Item = &'a mut MemoryNode>) {
    for mn in memnodes {
        if mn.poll_timeout().is_some_and(|t| t <= now) {
            mn.handle_timeout(now);
        }
    }
}

/// Packets in flight, each due at its own time; those due at the same time leave in the
/// order they were sent.
#[derive(Debug)]
pub struct Net<P> {
    due: BinaryHeap<Reverse<(Time, u64)>>,
    packets: HashMap<u64, (NodeId, NodeId, P)>,
    next: u64,
}

impl<P> Default for Net<P> {
    fn default() -> Self {
        Net {
            due: BinaryHeap::new(),
            packets: HashMap::new(),
            next: 0,
        }
    }
}

impl<P> Net<P> {
    pub fn send(&mut self, at: Time, from: NodeId, to: NodeId, p: P) {
        self.packets.insert(self.next, (from, to, p));
        self.due.push(Reverse((at, self.next)));
        self.next += 1;
    }

    /// When the next packet is due, if any is in flight.
    pub fn next_at(&self) -> Option<Time> {
        self.due.peek().map(|Reverse((at, _))| *at)
    }

    /// The next packet due by `now`: (from, to, packet).
    pub fn pop_due(&mut self, now: Time) -> Option<(NodeId, NodeId, P)> {
        let &Reverse((at, id)) = self.due.peek()?;
        if at > now {
            return None;
        }
        self.due.pop();
        Some(self.packets.remove(&id).expect("every due packet is held"))
    }
}

/// How many copies of a packet the lossy network delivers: none (lost), two (duplicated)
/// or one.
pub fn copies(rng: &mut impl Rng, loss: f64, dup: f64) -> usize {
    if rng.gen_bool(loss) {
        0
    } else if rng.gen_bool(dup) {
        2
    } else {
        1
    }
}

/// Actions planned at a time (faults, joins, ...); those due at the same time run in the
/// order they were planned.
#[derive(Debug)]
pub struct Plan<A> {
    actions: BTreeMap<(Time, u64), A>,
    next: u64,
}

impl<A> Default for Plan<A> {
    fn default() -> Self {
        Plan {
            actions: BTreeMap::new(),
            next: 0,
        }
    }
}

impl<A> Plan<A> {
    pub fn schedule(&mut self, at: Time, a: A) {
        self.actions.insert((at, self.next), a);
        self.next += 1;
    }

    /// When the next action is due, if any is planned.
    pub fn next_at(&self) -> Option<Time> {
        self.actions.first_key_value().map(|(&(at, _), _)| at)
    }

    /// The next action due by `now`.
    pub fn pop_due(&mut self, now: Time) -> Option<A> {
        let entry = self.actions.first_entry()?;
        (entry.key().0 <= now).then(|| entry.remove())
    }

    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }
}

/// Notices a harness loop whose time stopped advancing (a timer that fires and does
/// nothing).
#[derive(Debug, Default)]
pub struct StallGuard {
    last_now: Time,
    same: u32,
}

impl StallGuard {
    /// Called once a step: true once `now` has not moved for more than 100,000 steps.
    pub fn stalled(&mut self, now: Time) -> bool {
        if now == self.last_now {
            self.same += 1;
            self.same > 100_000
        } else {
            (self.last_now, self.same) = (now, 0);
            false
        }
    }
}

/// The next submit of any member (`next_submit`: when each submits next), while the run
/// still sends (`now` before `send_until`).
pub fn next_submit(next_submit: &BTreeMap<NodeId, Time>, now: Time, send_until: Time) -> Option<Time> {
    next_submit.values().min().copied().filter(|_| now < send_until)
}

/// The earliest of `times` (none: `Time::MAX`), never before `now`.
pub fn earliest(now: Time, times: impl IntoIterator<Item = Option<Time>>) -> Time {
    times.into_iter().flatten().min().unwrap_or(Time::MAX).max(now)
}
