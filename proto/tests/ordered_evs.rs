//! The `evs` partition policy (`tutti_proto::ordered::EvsMember`) proven by a deterministic
//! randomized harness: 3-5 members, each also a memory-node host (every list epoch gets its
//! memory node on the side that opened it), a network with loss, duplication and
//! reordering; partitions into two or three sides (each side goes on), heals (the sides
//! merge), a crash of a memory-node host, a new member. Checked at every event and at the
//! end: per list epoch total order and sender FIFO, no delivery outside the member's
//! configuration or from a list it is not in, `safe` (every member still in the
//! configuration holds a message when one delivers it; under agreed delivery, which half
//! the seeds run, for `safe` messages only), virtual synchrony per transition
//! (members going from configuration c to the same next one delivered the same set in c),
//! at a merge the same first configuration at every member of it, no application message
//! twice at a member, and liveness: after the last heal every live member is in one
//! configuration with all the others, delivered every message it sent, and messages sent
//! then reach everyone.
//!
//! `EVS_SEEDS=N` runs N seeds (default 300); `EVS_SEED=S` runs one.

mod support;

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use support::{copies, earliest, minitx_settings, next_submit, route, Net, Packet, Plan, StallGuard, MICROS};
use tutti_proto::minitx::{MemnodeId, MemoryNode};
use tutti_proto::ordered::{
    choose_memnode_hosts, ConfigEvent, EpochId, EvsMember, OrderedSettings, Output, PartitionPolicy,
    RemoveReason, MEMNODE,
};
use tutti_proto::{NodeId, Time, MILLIS};
use tutti_wire::minitx::Message;

const GROUP: u64 = 0xe75;

/// (sender, epoch = list number << 32 | join position, seq).
type MsgId = (NodeId, u64, u64);
/// A configuration as the checks name it: (list epoch, position, transitional, members).
type ConfKey = (EpochId, u64, bool, Vec<NodeId>);

fn settings(rng: &mut Xoshiro256PlusPlus) -> OrderedSettings {
    OrderedSettings {
        partition: PartitionPolicy::Evs,
        max_appends_in_flight: [1, 2, 4][rng.gen_range(0..3)],
        list_slots: 256,
        lag_budget: 200,
        lag_timeout: 200 * MILLIS,
        max_members: 12,
        queue_slots: 16,
        max_payload: 64,
        max_batch: rng.gen_range(1..=8),
        read_batch: 16,
        poll_interval: MILLIS,
        repair_delay: 3 * MILLIS,
        retransmit: 4 * MILLIS,
        gather_timeout: 30 * MILLIS,
        // Half the seeds deliver in agreed order (the old list drains up to its founder's
        // `Seal` before a member moves on), half only once every member holds an entry.
        evs_agreed: rng.gen_bool(0.5),
        ..OrderedSettings::default()
    }
}

#[derive(Debug, Clone)]
enum Action {
    /// The network splits into these sides (every live node in one).
    Split(Vec<Vec<NodeId>>),
    /// One side's view arrives at `node`.
    Side {
        node: NodeId,
        number: u32,
        side: Vec<NodeId>,
    },
    Crash(NodeId),
    /// A new node joins the network (its side's view follows).
    Join(NodeId),
    /// The application at this node leaves the group.
    Leave(NodeId),
}

/// One node's application and the records the checks need.
#[derive(Debug, Default)]
struct App {
    alive: bool,
    /// The configuration it is in, and what it delivered in it.
    conf: Option<ConfKey>,
    in_conf: BTreeSet<MsgId>,
    /// Per list epoch: the last (position, seq) delivered.
    last: BTreeMap<u32, (u64, u64)>,
    fifo: HashMap<(NodeId, u64), u64>,
    /// Application messages (their unique tag) delivered, and those it sent.
    tags: BTreeSet<u64>,
    sent: BTreeSet<u64>,
    /// The first regular configuration it delivered in each list epoch.
    first_in: BTreeMap<EpochId, ConfKey>,
    /// Messages delivered in the configuration it is in now (for the final check).
    ids: BTreeSet<MsgId>,
}

/// What a run exercised.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Stats {
    submitted: u64,
    deliveries: u64,
    configurations: u64,
    transitional: u64,
    /// (delivery, other member) pairs the safe check looked at.
    safe_checks: u64,
    epochs_joined: u64,
    /// Messages their sender appended to a list it left before delivering them.
    unconfirmed: u64,
    /// Seeds run with agreed delivery, and their transitional configurations a member was
    /// alone in.
    agreed_seeds: u64,
    agreed_alone: u64,
    /// The same count in the other seeds.
    safe_alone: u64,
    /// Drains that ended at the deadline instead of the `Seal` (both deliveries).
    drains_timed_out: u64,
    /// Old-list entries delivered in transitional configurations past the movers' largest
    /// `delivered` (`EvsCounters::transitional_extended`).
    extended: u64,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, o: Stats) {
        self.submitted += o.submitted;
        self.deliveries += o.deliveries;
        self.configurations += o.configurations;
        self.transitional += o.transitional;
        self.safe_checks += o.safe_checks;
        self.epochs_joined += o.epochs_joined;
        self.unconfirmed += o.unconfirmed;
        self.agreed_seeds += o.agreed_seeds;
        self.agreed_alone += o.agreed_alone;
        self.safe_alone += o.safe_alone;
        self.drains_timed_out += o.drains_timed_out;
        self.extended += o.extended;
    }
}

struct Sim {
    seed: u64,
    rng: Xoshiro256PlusPlus,
    now: Time,
    settings: OrderedSettings,
    members: BTreeMap<NodeId, EvsMember>,
    apps: BTreeMap<NodeId, App>,
    /// Memory-node replicas by (host, memory node).
    memnodes: BTreeMap<(NodeId, MemnodeId), MemoryNode>,
    /// Backup host of each primary replica (to drop it when the view loses it).
    backups: BTreeMap<(NodeId, MemnodeId), NodeId>,
    /// The network side of each live node.
    side_of: BTreeMap<NodeId, usize>,
    net: Net<Packet>,
    /// Replication links are ordered (the backup applies records only in order).
    fifo_link: HashMap<(NodeId, NodeId), Time>,
    loss: f64,
    dup: f64,
    max_delay: Time,
    actions: Plan<Action>,
    next_side: u32,
    next_submit: BTreeMap<NodeId, Time>,
    send_until: Time,
    next_tag: u64,
    /// Every delivery: (list number, position) -> (sender, epoch) of the entry; message id
    /// -> (position, tag).
    entry_at: HashMap<(u32, u64), (NodeId, u64)>,
    msg: HashMap<MsgId, (u64, u64)>,
    /// Members that left a regular configuration, and why.
    left_seen: Vec<(NodeId, RemoveReason)>,
    /// The end of the old list of each transitional configuration, and who delivered it.
    trans_end: HashMap<(EpochId, Vec<NodeId>), (NodeId, u64)>,
    /// Transitions (c -> next) and the set delivered in c by the first member seen.
    transitions: HashMap<(ConfKey, ConfKey), (NodeId, BTreeSet<MsgId>)>,
    stats: Stats,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut sim = Sim::without_faults(seed);
        let initial: Vec<NodeId> = sim.members.keys().copied().collect();
        sim.plan(&initial);
        sim
    }

    fn without_faults(seed: u64) -> Sim {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let settings = settings(&mut rng);
        let n = rng.gen_range(3..=5u32);
        let initial: Vec<NodeId> = (1..=n).collect();
        let hosts = choose_memnode_hosts(GROUP, &initial);
        let mut sim = Sim {
            seed,
            now: 0,
            members: BTreeMap::new(),
            apps: BTreeMap::new(),
            memnodes: BTreeMap::new(),
            backups: BTreeMap::new(),
            side_of: initial.iter().map(|&n| (n, 0)).collect(),
            net: Net::default(),
            fifo_link: HashMap::new(),
            loss: [0.0, 0.02, 0.05][rng.gen_range(0..3)],
            dup: [0.0, 0.03][rng.gen_range(0..2)],
            max_delay: [200 * MICROS, MILLIS][rng.gen_range(0..2)],
            actions: Plan::default(),
            next_side: 1,
            next_submit: BTreeMap::new(),
            send_until: 250 * MILLIS,
            next_tag: 1,
            entry_at: HashMap::new(),
            msg: HashMap::new(),
            transitions: HashMap::new(),
            trans_end: HashMap::new(),
            left_seen: Vec::new(),
            stats: Stats::default(),
            settings,
            rng,
        };
        for &id in &initial {
            let m = EvsMember::initial(
                id,
                GROUP,
                &initial,
                hosts[0],
                sim.settings.clone(),
                minitx_settings(),
            );
            sim.members.insert(id, m);
            let conf = (EpochId::FIRST, 0, false, initial.clone());
            sim.apps.insert(
                id,
                App {
                    alive: true,
                    first_in: BTreeMap::from([(EpochId::FIRST, conf.clone())]),
                    conf: Some(conf),
                    ..App::default()
                },
            );
            let at = sim.rng.gen_range(0..MILLIS);
            sim.next_submit.insert(id, at);
        }
        // The first list's memory node, on live hosts (an earlier version opened it before
        // the nodes were alive: every seed's first list was dead until the first split).
        sim.open(MEMNODE, &hosts);
        assert!(sim.memnodes.contains_key(&(hosts[0], MEMNODE)));
        sim
    }

    /// Faults in the first 180 ms: one or two partitions, each healed 20-60 ms later,
    /// maybe a crash (often of a memory-node host) and a new member. Sends go on to 250 ms.
    fn plan(&mut self, initial: &[NodeId]) {
        let mut at = self.rng.gen_range(5 * MILLIS..30 * MILLIS);
        let rounds = self.rng.gen_range(1..=2);
        for _ in 0..rounds {
            let mut nodes = initial.to_vec();
            // Shuffle, then cut into two or three non-empty sides.
            for i in (1..nodes.len()).rev() {
                let j = self.rng.gen_range(0..=i);
                nodes.swap(i, j);
            }
            let k = if nodes.len() >= 4 && self.rng.gen_bool(0.3) {
                3
            } else {
                2
            };
            let mut cuts: Vec<usize> = (1..nodes.len()).collect();
            for i in (1..cuts.len()).rev() {
                let j = self.rng.gen_range(0..=i);
                cuts.swap(i, j);
            }
            let mut cuts: Vec<usize> = cuts.into_iter().take(k - 1).collect();
            cuts.sort_unstable();
            let mut sides = Vec::new();
            let mut start = 0;
            for c in cuts.into_iter().chain([nodes.len()]) {
                sides.push(nodes[start..c].to_vec());
                start = c;
            }
            self.actions.schedule(at, Action::Split(sides));
            at += self.rng.gen_range(20 * MILLIS..60 * MILLIS);
            self.actions.schedule(at, Action::Split(vec![Vec::new()]));
            at += self.rng.gen_range(10 * MILLIS..40 * MILLIS);
        }
        if self.rng.gen_bool(0.4) {
            // Often a memory-node host of the first list: its side opens a new list.
            let victim = if self.rng.gen_bool(0.6) {
                choose_memnode_hosts(GROUP, initial)[self.rng.gen_range(0..2)]
            } else {
                initial[self.rng.gen_range(0..initial.len())]
            };
            let t = self.rng.gen_range(5 * MILLIS..170 * MILLIS);
            self.actions.schedule(t, Action::Crash(victim));
        }
        if self.rng.gen_bool(0.3) {
            let t = self.rng.gen_range(5 * MILLIS..170 * MILLIS);
            self.actions.schedule(t, Action::Join(1000));
        }
    }

    fn fail(&self, what: &str) -> ! {
        panic!("seed {}: t={}us: {what}", self.seed, self.now / MICROS);
    }

    fn alive(&self, n: NodeId) -> bool {
        self.apps.get(&n).is_some_and(|a| a.alive)
    }

    fn connected(&self, a: NodeId, b: NodeId) -> bool {
        self.alive(a) && self.alive(b) && self.side_of.get(&a) == self.side_of.get(&b)
    }

    /// Creates the replicas of memory node `id` on `hosts` (primary, then backup).
    fn open(&mut self, id: MemnodeId, hosts: &[NodeId]) {
        let primary = hosts[0];
        if self.memnodes.contains_key(&(primary, id)) || !self.alive(primary) {
            return;
        }
        let backup = hosts.get(1).copied().filter(|&b| self.alive(b));
        let mut p = MemoryNode::primary(id, 1, backup, minitx_settings());
        for (region, size) in self.settings.regions() {
            p.add_region(region, size).unwrap();
        }
        p.set_placement(id, primary);
        self.memnodes.insert((primary, id), p);
        if let Some(b) = backup {
            let mut r = MemoryNode::backup(id, primary, 1, minitx_settings());
            for (region, size) in self.settings.regions() {
                r.add_region(region, size).unwrap();
            }
            r.set_placement(id, primary);
            self.memnodes.insert((b, id), r);
            self.backups.insert((primary, id), b);
        }
    }

    /// The view no longer reaches a primary's backup: the primary runs alone (under `evs` a
    /// backup is never promoted).
    fn drop_unreachable_backups(&mut self) {
        let gone: Vec<(NodeId, MemnodeId)> = self
            .backups
            .iter()
            .filter(|(&(p, _), &b)| !self.connected(p, b))
            .map(|(&k, _)| k)
            .collect();
        for k in gone {
            self.backups.remove(&k);
            if let Some(p) = self.memnodes.get_mut(&k) {
                p.drop_backup();
            }
        }
    }

    fn send(&mut self, from: NodeId, to: NodeId, p: Packet) {
        if !self.connected(from, to) {
            return;
        }
        let copies = if from == to {
            1
        } else {
            copies(&mut self.rng, self.loss, self.dup)
        };
        let replication = matches!(&p, Packet::Minitx(b) if matches!(
            Message::decode(b),
            Ok(Message::Replicate { .. } | Message::ReplicateAck { .. })
        ));
        for _ in 0..copies {
            let mut at = self.now + self.rng.gen_range(20 * MICROS..self.max_delay);
            if replication {
                let link = self.fifo_link.entry((from, to)).or_insert(0);
                at = at.max(*link);
                *link = at;
            }
            self.net.send(at, from, to, p.clone());
        }
    }

    fn drain(&mut self, id: NodeId) {
        loop {
            let out = match self.members.get_mut(&id) {
                Some(m) => m.poll_output(),
                None => None,
            };
            let Some(out) = out else { break };
            self.on_output(id, out);
        }
        self.drain_memnodes();
    }

    fn drain_memnodes(&mut self) {
        let mut out = Vec::new();
        for (&(host, _), m) in &mut self.memnodes {
            while let Some((to, b)) = m.poll_transmit() {
                out.push((host, to, b));
            }
        }
        for (from, to, b) in out {
            self.send(from, to, Packet::Minitx(b));
        }
    }

    fn on_output(&mut self, id: NodeId, out: Output) {
        if let o @ Output::Transfer { .. } = out {
            self.fail(&format!("member {id}: unexpected output {o:?} under evs"));
        }
        let members: Vec<NodeId> = self.members.keys().copied().collect();
        let Some(out) = route(id, out, &members, |to, p| self.send(id, to, p)) else {
            return;
        };
        match out {
            Output::OpenEpoch { memnode, hosts, .. } => self.open(memnode, &hosts),
            Output::Configuration(c) => self.on_configuration(id, c),
            Output::Deliver {
                sender,
                epoch,
                seq,
                position,
                safe,
                bytes,
            } => self.on_deliver(id, (sender, epoch, seq), position, safe, &bytes),
            Output::Removed {
                reason: RemoveReason::Left,
            } => {
                // Out of the group: the view no longer names it.
                self.members.remove(&id);
                self.next_submit.remove(&id);
                self.apps.get_mut(&id).unwrap().alive = false;
                self.announce_sides();
            }
            Output::Removed { .. } => {}
            o => self.fail(&format!("member {id}: unexpected output {o:?} under evs")),
        }
    }

    fn on_configuration(&mut self, id: NodeId, c: ConfigEvent) {
        self.left_seen
            .extend(c.left.iter().copied().filter(|_| !c.transitional));
        // A transitional configuration is named by its old list and members (a member moves
        // from a list once); they must all have delivered that list to the same position.
        let key: ConfKey = if c.transitional {
            match self
                .trans_end
                .insert((c.epoch, c.members.clone()), (id, c.position))
            {
                Some((other, p)) if p != c.position => self.fail(&format!(
                    "transitional {:?} {:?}: member {other} delivered its list to {p}, member {id} to {}",
                    c.epoch, c.members, c.position
                )),
                _ => {}
            }
            (c.epoch, u64::MAX, true, c.members.clone())
        } else {
            (c.epoch, c.position, false, c.members.clone())
        };
        // (A member that leaves delivers the configuration without it, then `Removed`.)
        if !c.members.contains(&id) && !c.left.iter().any(|&(n, _)| n == id) {
            self.fail(&format!(
                "member {id} delivers a configuration without itself: {c:?}"
            ));
        }
        let app = self.apps.get_mut(&id).unwrap();
        let prev = app.conf.take();
        let set = std::mem::take(&mut app.in_conf);
        app.ids.clear();
        if let Some(p) = &prev {
            if p.2 {
                // After a transitional configuration: the regular one of a new list, holding
                // every member that moved.
                if c.transitional || c.epoch == p.0 || !p.3.iter().all(|n| c.members.contains(n)) {
                    self.fail(&format!("member {id}: transitional {p:?} followed by {c:?}"));
                }
            }
            if c.transitional && (c.epoch != p.0 || !c.members.iter().all(|n| p.3.contains(n))) {
                self.fail(&format!("member {id}: transitional {c:?} not a subset of {p:?}"));
            }
        }
        if !c.transitional && !app.first_in.contains_key(&c.epoch) {
            app.first_in.insert(c.epoch, key.clone());
        }
        app.conf = Some(key.clone());
        self.stats.configurations += 1;
        if c.transitional {
            self.stats.transitional += 1;
        }
        if let Some(p) = prev {
            match self.transitions.get(&(p.clone(), key.clone())) {
                Some((other, s)) if *s != set => self.fail(&format!(
                    "virtual synchrony: members {other} and {id} went from {p:?} to {key:?} with different sets ({} vs {})",
                    s.len(),
                    set.len()
                )),
                Some(_) => {}
                None => {
                    self.transitions.insert((p, key), (id, set));
                }
            }
        }
    }

    fn on_deliver(&mut self, id: NodeId, m: MsgId, position: u64, safe: bool, bytes: &[u8]) {
        self.stats.deliveries += 1;
        let number = (m.1 >> 32) as u32;
        let (tag, sender) = match (bytes.get(0..8), bytes.get(8..12)) {
            (Some(t), Some(s)) => (
                u64::from_le_bytes(t.try_into().unwrap()),
                u32::from_le_bytes(s.try_into().unwrap()),
            ),
            _ => self.fail(&format!("member {id} delivers a short payload for {m:?}")),
        };
        if sender != m.0 {
            self.fail(&format!(
                "member {id} delivers {m:?} with the payload of {sender}"
            ));
        }
        let app = &self.apps[&id];
        let Some(conf) = app.conf.clone() else {
            self.fail(&format!("member {id} delivers {m:?} in no configuration"));
        };
        // In its configuration: of its list, from a member of it.
        if conf.2 || conf.0.number != number || !conf.3.contains(&m.0) {
            self.fail(&format!(
                "member {id} delivers {m:?} at {position} in configuration {conf:?}"
            ));
        }
        // Total order per list: one entry per position, one position per message, and
        // each member's deliveries in a list strictly increasing.
        match self.entry_at.insert((number, position), (m.0, m.1)) {
            Some(e) if e != (m.0, m.1) => self.fail(&format!(
                "list {number} position {position}: entry of {e:?} and of {m:?}"
            )),
            _ => {}
        }
        match self.msg.insert(m, (position, tag)) {
            Some(old) if old != (position, tag) => self.fail(&format!(
                "member {id} delivers {m:?} as (position, tag) {:?}, others {old:?}",
                (position, tag)
            )),
            _ => {}
        }
        if app.last.get(&number).is_some_and(|&l| l >= (position, m.2)) {
            self.fail(&format!(
                "member {id} delivers {m:?} at {position} after {:?}",
                app.last[&number]
            ));
        }
        // Sender FIFO: consecutive seqs per sender membership.
        if let Some(&next) = app.fifo.get(&(m.0, m.1)) {
            if m.2 != next {
                self.fail(&format!("member {id} delivers {m:?}, expected seq {next}"));
            }
        }
        if app.tags.contains(&tag) {
            self.fail(&format!(
                "member {id} delivers message {tag} twice (now as {m:?})"
            ));
        }
        // Safe: every member of the configuration still in this list (as this member
        // learned it) holds the message or delivered it.
        let learned = self.members[&id]
            .current()
            .map(|c| c.learned_members())
            .unwrap_or_default();
        // Under agreed delivery only `safe` messages wait for that.
        let checked = safe || !self.settings.evs_agreed;
        for &n in conf.3.iter().filter(|_| checked) {
            if n == id || !learned.contains(&n) || !self.alive(n) {
                continue;
            }
            let Some(other) = self.members.get(&n) else {
                continue;
            };
            let lists = other.current().into_iter().chain(other.gathering());
            let mut seen = false;
            let mut holds = false;
            for l in lists {
                if l.list_epoch().map(|e| e.number) == Some(number) {
                    seen = true;
                    holds |= l.holds(m.0, m.1 & 0xFFFF_FFFF, m.2);
                }
            }
            if seen && !holds && !self.apps[&n].tags.contains(&tag) {
                let d = self.dump();
                self.fail(&format!(
                    "safe: member {id} delivers {m:?} while member {n} does not hold it\n{d}"
                ));
            }
            if seen {
                self.stats.safe_checks += 1;
            }
        }
        let app = self.apps.get_mut(&id).unwrap();
        app.last.insert(number, (position, m.2));
        app.fifo.insert((m.0, m.1), m.2 + 1);
        app.tags.insert(tag);
        app.in_conf.insert(m);
        app.ids.insert(m);
    }

    fn act(&mut self, a: Action) {
        match a {
            Action::Split(sides) => {
                let alive: Vec<NodeId> = self
                    .apps
                    .iter()
                    .filter(|(_, a)| a.alive)
                    .map(|(&n, _)| n)
                    .collect();
                self.side_of.clear();
                for (i, s) in sides.iter().enumerate() {
                    for &n in s {
                        self.side_of.insert(n, i);
                    }
                }
                // Nodes the plan did not name (a joiner) go with the first side.
                for &n in &alive {
                    self.side_of.entry(n).or_insert(0);
                }
                self.drop_unreachable_backups();
                self.announce_sides();
            }
            Action::Side { node, number, side } => {
                if let Some(m) = self.members.get_mut(&node) {
                    m.set_side(self.now, number, &side);
                    self.drain(node);
                }
            }
            Action::Crash(n) => {
                if let Some(app) = self.apps.get_mut(&n) {
                    app.alive = false;
                }
                self.members.remove(&n);
                self.next_submit.remove(&n);
                self.memnodes.retain(|&(h, _), _| h != n);
                self.backups.retain(|&(h, _), _| h != n);
                self.drop_unreachable_backups();
                self.announce_sides();
            }
            Action::Leave(n) => {
                if let Some(m) = self.members.get_mut(&n) {
                    m.leave(self.now);
                    self.drain(n);
                }
            }
            Action::Join(n) => {
                let m = EvsMember::new(n, GROUP, self.settings.clone(), minitx_settings());
                self.members.insert(n, m);
                self.apps.insert(
                    n,
                    App {
                        alive: true,
                        ..App::default()
                    },
                );
                let first = self.side_of.values().copied().min().unwrap_or(0);
                self.side_of.insert(n, first);
                self.next_submit.insert(n, self.now + MILLIS);
                self.announce_sides();
            }
        }
    }

    /// Each side's view reaches each of its live nodes 0-3 ms later, with a number unique
    /// to the side.
    fn announce_sides(&mut self) {
        let mut sides: BTreeMap<usize, Vec<NodeId>> = BTreeMap::new();
        for (&n, &s) in &self.side_of {
            if self.alive(n) {
                sides.entry(s).or_default().push(n);
            }
        }
        for (_, side) in sides {
            let number = self.next_side;
            self.next_side += 1;
            for &n in &side {
                let at = self.now + self.rng.gen_range(0..3 * MILLIS);
                self.actions.schedule(
                    at,
                    Action::Side {
                        node: n,
                        number,
                        side: side.clone(),
                    },
                );
            }
        }
    }

    fn next_time(&self) -> Time {
        let submit = next_submit(&self.next_submit, self.now, self.send_until);
        let memnodes = self.memnodes.values().map(MemoryNode::poll_timeout);
        let members = self.members.values().map(EvsMember::poll_timeout);
        let due = [self.net.next_at(), self.actions.next_at(), submit];
        earliest(self.now, due.into_iter().chain(members).chain(memnodes))
    }

    fn step(&mut self) {
        let t = self.next_time();
        if t == Time::MAX {
            let d = self.dump();
            self.fail(&format!("nothing left to happen\n{d}"));
        }
        self.now = t;
        let now = self.now;
        while let Some((from, to, p)) = self.net.pop_due(now) {
            if !self.connected(from, to) {
                continue;
            }
            match p {
                Packet::Minitx(b) => {
                    let to_member = match Message::decode(&b) {
                        Ok(Message::Reply { .. } | Message::DecideAck { .. }) => true,
                        Ok(m) => {
                            if let Some(r) = self.memnodes.get_mut(&(to, m.memnode())) {
                                r.handle_message(now, from, &b);
                            }
                            false
                        }
                        Err(_) => self.fail("a minitransaction message that does not decode"),
                    };
                    if to_member {
                        if let Some(m) = self.members.get_mut(&to) {
                            m.handle_minitx(now, from, &b);
                        }
                        self.drain(to);
                    }
                    self.drain_memnodes();
                }
                Packet::Payload {
                    sender,
                    epoch,
                    seq,
                    bytes,
                } => {
                    if let Some(m) = self.members.get_mut(&to) {
                        m.handle_payload(now, sender, epoch, seq, &bytes);
                    }
                    self.drain(to);
                }
                Packet::Held(b) => {
                    if let Some(m) = self.members.get_mut(&to) {
                        m.handle_held(now, from, &b);
                    }
                    self.drain(to);
                }
                Packet::Transfer(_) => unreachable!("`on_output` fails on a transfer under evs"),
            }
        }
        while let Some(a) = self.actions.pop_due(now) {
            self.act(a);
        }
        let ids: Vec<NodeId> = self.members.keys().copied().collect();
        for id in &ids {
            if self.members[id].poll_timeout().is_some_and(|t| t <= now) {
                self.members.get_mut(id).unwrap().handle_timeout(now);
                self.drain(*id);
            }
        }
        for m in self.memnodes.values_mut() {
            if m.poll_timeout().is_some_and(|t| t <= now) {
                m.handle_timeout(now);
            }
        }
        self.drain_memnodes();
        if now < self.send_until {
            for id in ids {
                if self.next_submit.get(&id).is_some_and(|&t| t <= now) {
                    self.submit(id);
                }
            }
        }
    }

    fn submit(&mut self, id: NodeId) {
        let now = self.now;
        let gap = self.rng.gen_range(300 * MICROS..3 * MILLIS);
        self.next_submit.insert(id, now + gap);
        let tag = self.next_tag;
        let filler = self.rng.gen_range(0..40);
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&tag.to_le_bytes());
        bytes.extend_from_slice(&id.to_le_bytes());
        bytes.extend((0..filler).map(|i| (i as u8) ^ tag as u8));
        let safe = self.rng.gen_bool(0.2);
        let Some(m) = self.members.get_mut(&id) else {
            return;
        };
        if m.submit(now, &bytes, safe).is_ok() {
            self.next_tag += 1;
            self.stats.submitted += 1;
            self.apps.get_mut(&id).unwrap().sent.insert(tag);
        }
        self.drain(id);
    }

    /// Every live member settled in one configuration holding all of them, with nothing
    /// queued and everything learned delivered (a quiet member still polls the list).
    fn converged(&self) -> bool {
        let alive: Vec<NodeId> = self.members.keys().copied().collect();
        let confs: BTreeSet<Option<&ConfKey>> = alive.iter().map(|n| self.apps[n].conf.as_ref()).collect();
        confs.len() == 1
            && confs
                .iter()
                .next()
                .is_some_and(|c| c.is_some_and(|c| !c.2 && c.3 == alive))
            && self.members.values().all(|m| {
                m.settled()
                    && m.current()
                        .is_some_and(|c| c.outgoing() == 0 && c.learned() == c.delivered() && c.learned() > 0)
            })
            // Under agreed delivery a member delivers what it learned before the others
            // learned it: all at one end of the list.
            && self
                .members
                .values()
                .map(|m| m.current().map(|c| c.learned()))
                .collect::<BTreeSet<_>>()
                .len()
                == 1
    }

    fn run(&mut self) {
        let ids: Vec<NodeId> = self.members.keys().copied().collect();
        for id in ids {
            self.members.get_mut(&id).unwrap().handle_timeout(0);
            self.drain(id);
        }
        let deadline = self.send_until + 5_000 * MILLIS;
        let mut probes_sent = false;
        let mut guard = StallGuard::default();
        loop {
            self.step();
            if guard.stalled(self.now) {
                let d = self.dump();
                self.fail(&format!("time does not advance: a timer that does nothing\n{d}"));
            }
            if self.now > self.send_until && self.actions.is_empty() && self.converged() {
                if probes_sent {
                    break;
                }
                // Liveness in the merged configuration: a message from every member now
                // reaches every member.
                probes_sent = true;
                let ids: Vec<NodeId> = self.members.keys().copied().collect();
                for id in ids {
                    self.submit(id);
                }
            }
            if self.now > deadline {
                let d = self.dump();
                self.fail(&format!("no liveness after the last heal\n{d}"));
            }
        }
        self.check_end();
    }

    fn dump(&self) -> String {
        let mut lines: Vec<String> = Vec::new();
        for (id, m) in &self.members {
            lines.push(format!(
                "{id}: conf {:?} settled {} idle {} {:?}",
                self.apps[id].conf,
                m.settled(),
                m.idle(),
                m.counters()
            ));
            for (what, l) in [("current", m.current()), ("gathering", m.gathering())] {
                if let Some(l) = l {
                    lines.push(format!(
                        "   {what} {:?} {:?} learned {} delivered {} outgoing {} members {:?} timeout {:?}\n      {}",
                        l.list_epoch(),
                        l.status(),
                        l.learned(),
                        l.delivered(),
                        l.outgoing(),
                        l.learned_members(),
                        l.poll_timeout(),
                        l.describe()
                    ));
                }
            }
        }
        lines.push(format!(
            "sides {:?} actions {:?}",
            self.side_of,
            self.actions.next_at()
        ));
        lines.join("\n")
    }

    fn check_end(&mut self) {
        self.stats.agreed_seeds = u64::from(self.settings.evs_agreed);
        // At a merge, the same change first at every member of it: a member of another
        // member's first configuration in a list had that same first configuration, or
        // an earlier one without the other (the other's join landed after the founder's
        // `Install`, e.g. its append lost the tail compare until `gather_timeout`: it
        // joined the list's configuration as a new member, `joined` naming it).
        for (&id, app) in &self.apps {
            for (epoch, key) in &app.first_in {
                for n in &key.3 {
                    if let Some(other) = self.apps[n].first_in.get(epoch) {
                        let joined_later = other.1 < key.1 && !other.3.contains(&id);
                        if other != key && !joined_later {
                            self.fail(&format!(
                                "list {epoch:?}: member {id} first delivered {key:?}, member {n} {other:?}"
                            ));
                        }
                    }
                }
            }
        }
        // Every live member delivered every message it sent (in some configuration).
        for (&id, m) in &self.members {
            let app = &self.apps[&id];
            // Except those it had appended to a list it left before delivering them (the
            // members staying there deliver them), which it counts.
            let c = m.counters();
            let missing: Vec<&u64> = app.sent.difference(&app.tags).collect();
            if missing.len() as u64 > c.unconfirmed {
                self.fail(&format!(
                    "member {id} never delivered its messages {missing:?} ({} unconfirmed)",
                    c.unconfirmed
                ));
            }
            self.stats.unconfirmed += missing.len() as u64;
            if self.settings.evs_agreed {
                self.stats.agreed_alone += c.transitional_alone;
            } else {
                self.stats.safe_alone += c.transitional_alone;
            }
            self.stats.drains_timed_out += c.drains_timed_out;
            self.stats.extended += c.transitional_extended;
            if c.transitional_missing != 0 || c.resend_dropped != 0 {
                self.fail(&format!("member {id} counters {c:?}"));
            }
            if let Some(cur) = m.current() {
                let oc = cur.counters();
                if oc.fifo_gaps != 0 || oc.malformed != 0 || oc.transitional_missing != 0 {
                    self.fail(&format!("member {id} list counters {oc:?}"));
                }
            }
        }
        // The final configuration: everyone delivered the same messages in it.
        let sets: BTreeSet<&BTreeSet<MsgId>> = self.members.keys().map(|n| &self.apps[n].ids).collect();
        if sets.len() != 1 {
            for (n, m) in &self.members {
                let ids = &self.apps[n].ids;
                eprintln!(
                    "DBG member {n}: {} ids, conf {:?}, current {:?}",
                    ids.len(),
                    self.apps[n].conf,
                    m.current().map(|c| c.describe())
                );
            }
            let all: Vec<&BTreeSet<MsgId>> = self.members.keys().map(|n| &self.apps[n].ids).collect();
            let d: Vec<_> = all[0].symmetric_difference(all[1]).collect();
            eprintln!("DBG diff 0/1: {d:?}");
            self.fail("the members delivered different messages in the final configuration");
        }
        self.stats.epochs_joined += self
            .members
            .values()
            .map(|m| m.counters().epochs_joined)
            .sum::<u64>();
    }
}

fn run_seed(seed: u64) -> Stats {
    let mut sim = Sim::new(seed);
    sim.run();
    sim.stats
}

#[test]
fn randomized_evs_harness_seeds() {
    if let Ok(s) = std::env::var("EVS_SEED") {
        let seed: u64 = s.parse().unwrap();
        println!("seed {seed}: {:?}", run_seed(seed));
        return;
    }
    let n: u64 = std::env::var("EVS_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let verbose = std::env::var("EVS_VERBOSE").is_ok();
    let mut total = Stats::default();
    for seed in 0..n {
        if verbose {
            println!("seed {seed}");
        }
        total += run_seed(seed);
    }
    println!("{n} seeds: {total:?}");
    assert!(
        total.transitional > 0 && total.epochs_joined > 0,
        "the faults must exercise list epochs"
    );
}

#[test]
fn an_evs_seed_reproduces_its_run() {
    assert_eq!(run_seed(7), run_seed(7));
}

/// Both sides of a partition go on, each in its own configuration, and merge after the
/// heal: the scenario the policy exists for, with the events an application sees.
#[test]
fn both_sides_of_a_partition_go_on_and_merge() {
    let mut sim = Sim::without_faults(11);
    let all: Vec<NodeId> = sim.members.keys().copied().collect();
    let (left, right) = all.split_at(all.len() / 2);
    let (left, right) = (left.to_vec(), right.to_vec());
    sim.actions
        .schedule(40 * MILLIS, Action::Split(vec![left.clone(), right.clone()]));
    sim.actions
        .schedule(120 * MILLIS, Action::Split(vec![Vec::new()]));
    // Messages each member delivered in a regular configuration of each list.
    let mut delivered_in: BTreeMap<(NodeId, u32), usize> = BTreeMap::new();
    for id in &all {
        sim.members.get_mut(id).unwrap().handle_timeout(0);
        sim.drain(*id);
    }
    while sim.now < sim.send_until || !sim.actions.is_empty() || !sim.converged() {
        sim.step();
        for (&id, app) in &sim.apps {
            if let Some(c) = app.conf.as_ref().filter(|c| !c.2) {
                let n = delivered_in.entry((id, c.0.number)).or_default();
                *n = (*n).max(app.in_conf.len());
            }
        }
        assert!(sim.now < 5_000 * MILLIS, "no merge\n{}", sim.dump());
    }
    sim.check_end();
    // After the heal: one configuration with every member, in a list of its own.
    let finals: BTreeSet<&ConfKey> = sim.apps.values().filter_map(|a| a.conf.as_ref()).collect();
    assert_eq!(finals.len(), 1);
    let last = finals.into_iter().next().unwrap();
    assert_eq!(last.3, all);
    // During the partition each side delivered messages in a list of its own (not the
    // first, not the merged one), which no member of the other side was in.
    let mut side_lists: BTreeMap<u32, BTreeSet<bool>> = BTreeMap::new();
    for (&(id, number), &n) in &delivered_in {
        if number != 0 && number != last.0.number && n > 0 {
            side_lists.entry(number).or_default().insert(left.contains(&id));
        }
    }
    assert!(side_lists.values().all(|s| s.len() == 1), "{side_lists:?}");
    let sides: BTreeSet<bool> = side_lists.values().flatten().copied().collect();
    assert_eq!(sides.len(), 2, "both sides deliver on: {side_lists:?}");
    assert!(sim.stats.transitional >= 2 * all.len() as u64, "{:?}", sim.stats);
}

/// A member that leaves is removed by an entry at the same place for everyone, and a later
/// partition and heal do not bring it back.
#[test]
fn a_member_that_leaves_stays_out_across_splits_and_heals() {
    let mut sim = Sim::without_faults(5);
    let all: Vec<NodeId> = sim.members.keys().copied().collect();
    let leaver = all[0];
    sim.actions.schedule(20 * MILLIS, Action::Leave(leaver));
    sim.actions.schedule(
        60 * MILLIS,
        Action::Split(vec![all[..2].to_vec(), all[2..].to_vec()]),
    );
    sim.actions
        .schedule(110 * MILLIS, Action::Split(vec![Vec::new()]));
    sim.run();
    let rest: Vec<NodeId> = all[1..].to_vec();
    let last = sim.apps[&all[1]].conf.clone().unwrap();
    assert_eq!(last.3, rest);
    assert!(!sim.members.contains_key(&leaver));
    // The others saw it leave by an entry of the first list, with the reason.
    assert!(sim
        .left_seen
        .iter()
        .any(|&(n, r)| n == leaver && r == RemoveReason::Left));
}

/// With no fault the first list alone carries everything (its memory node is on live hosts).
#[test]
fn the_first_list_orders_everything_without_faults() {
    let mut sim = Sim::without_faults(5);
    sim.run();
    assert!(sim.stats.deliveries > 100, "{:?}", sim.stats);
    assert_eq!(sim.stats.epochs_joined, 0);
    assert_eq!(sim.stats.unconfirmed, 0);
}
