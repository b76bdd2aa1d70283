//! The per-shard protocol node: membership (gossip heartbeats, suspicion, numbered views
//! installed by the coordinator, merges) and the dispatch of packets to the groups'
//! bimodal multicast state. Sans-IO: see the crate docs.

use crate::fxhash::FxMap;
use crate::multicast::{Ctx, GroupState};
use crate::outbox::Outbox;
use crate::payload::{Payload, PayloadPool};
use crate::{Event, GroupId, GroupView, Member, NodeId, Settings, Time, Transmit, View, ViewId};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use tutti_wire::packet::{
    self, Entries, HeartbeatEntry, HeartbeatHeader, MemberEntry, Message, ViewGroupMember, ViewGroupSlices,
    ViewPartHeader, ViewParts, HEARTBEAT_FLAG_LEAVING,
};

/// What a node counted; every drop has a counter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Node ids from the network not added because the table holds `max_peers`.
    pub peers_full: u64,
    /// Streams not tracked because a group holds `max_streams`.
    pub streams_full: u64,
    /// View counters more than `MAX_COUNTER_JUMP` past our view's, ignored.
    pub implausible_counters: u64,
    /// Views refused: not sent by their coordinator, or inconsistent with themselves.
    pub views_refused: u64,
    /// Higher incarnations of a node relayed by another node (only the node itself, or a
    /// view, restarts it in our table).
    pub relayed_incarnations_ignored: u64,
    /// Group joins and leaves refused because too many are pending.
    pub group_changes_refused: u64,
    /// Data more than a window ahead of a stream, relayed by a member other than its
    /// sender: dropped (it could push every real message below our window).
    pub implausible_seqs: u64,
    /// Slots examined while serving retransmit requests (at most `2 * request_cap` per
    /// request datagram).
    pub request_slots_walked: u64,
    /// Request datagrams whose entries asked for more than that walk.
    pub request_walks_capped: u64,
    /// Slots above a stream's high dropped when its sender's digest showed it never sent
    /// them (a forged copy).
    pub phantom_slots_dropped: u64,
    /// Streams of nodes that are not, and were not, in the group view: ignored.
    pub unknown_streams: u64,
    pub datagrams_sent: u64,
    pub bytes_sent: u64,
    pub datagrams_received: u64,
    pub decode_errors: u64,
    pub data_sent: u64,
    pub retransmits_sent: u64,
    pub digests_sent: u64,
    pub requests_sent: u64,
    pub heartbeats_sent: u64,
    /// View messages sent (one per part of a view).
    pub views_sent: u64,
    /// View parts refused: their totals disagree with the parts held of the same view, the
    /// view declares more than [`MAX_VIEW_ENTRIES`] entries, or the complete set of parts
    /// does not cover the view exactly.
    pub bad_view_parts: u64,
    /// Views in assembly given up for newer ones, and parts of views older than all those
    /// in assembly (see [`VIEW_ASSEMBLIES`]).
    pub view_assemblies_dropped: u64,
    pub delivered: u64,
    pub duplicates: u64,
    pub window_overflow: u64,
    pub retransmit_budget_exhausted: u64,
    pub stale_requests: u64,
    pub lost_reported: u64,
    /// Messages given up to keep within the byte budgets (delivered first when they were
    /// held, reported `Lost` when they were missing).
    pub evicted_budget: u64,
    /// Requests sent at once on seeing a gap in a stream (not answering a digest).
    pub gap_requests_sent: u64,
    /// Requests sent by the repair timer for gaps still open `rerequest_after` later.
    pub gap_rerequests_sent: u64,
    /// Fragments refused: inconsistent with their message's other fragments, or of a
    /// message larger than `max_message`.
    pub bad_fragments: u64,
    /// Messages refused by the outbox because they cannot fit one datagram of
    /// `max_datagram` bytes (never sent; a protocol bug if ever nonzero).
    pub oversize_datagrams: u64,
    pub bad_digests: u64,
    pub transmits_dropped: u64,
    pub events_dropped: u64,
    pub views_installed: u64,
    pub not_joined: u64,
    /// Tombstones of forgotten senders evicted by `Settings::max_tombstones`.
    pub tombstones_evicted: u64,
}

/// Why `submit` refused a message (back pressure is a return value, never a block).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("this node has not joined group {0:#x}")]
    NotJoined(GroupId),
    #[error("message of {len} bytes exceeds max_message {max}")]
    TooLarge { len: usize, max: usize },
}

/// Where a submitted message went: its stream and its seq in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submitted {
    pub stream: u32,
    pub seq: u64,
}

/// Views held in assembly at once: the newest; an older view's parts are dropped.
pub const VIEW_ASSEMBLIES: usize = 4;
/// Entries (members plus group entries, 8 B each, plus one per group) a view in assembly
/// may declare, and so hold: 8 MiB; and one more than the parts it may have.
pub const MAX_VIEW_ENTRIES: u64 = 1 << 20;

/// One group of a view in assembly.
struct GroupAssembly {
    total: u32,
    /// `(start, entries)`, in arrival order.
    slices: Vec<(u32, Vec<ViewGroupMember>)>,
}

/// A view whose parts are arriving. Holds only what arrived, within the declared size.
struct ViewAssembly {
    id: ViewId,
    parts: u32,
    members: u32,
    groups: u32,
    /// One bit per part (`parts` is at most `MAX_VIEW_ENTRIES + 1`: 128 KiB).
    received: Vec<u64>,
    received_count: u32,
    /// `(start, members)`, in arrival order.
    member_slices: Vec<(u32, Vec<Member>)>,
    group_parts: BTreeMap<GroupId, GroupAssembly>,
    /// Entries held (members and group entries).
    held: u64,
    /// Entries the view declares so far: its members and the totals of the groups seen.
    declared: u64,
}

/// `slices` cover `0..total` exactly; returns them concatenated.
fn concat_exact<T: Copy>(slices: &mut [(u32, Vec<T>)], total: u32) -> Option<Vec<T>> {
    slices.sort_unstable_by_key(|(start, _)| *start);
    let mut out = Vec::with_capacity(total as usize);
    for (start, s) in slices.iter() {
        if *start as usize != out.len() {
            return None;
        }
        out.extend_from_slice(s);
    }
    (out.len() == total as usize).then_some(out)
}

impl ViewAssembly {
    /// Adds a part (already checked against the totals); false if it is inconsistent.
    fn add(
        &mut self,
        header: &ViewPartHeader,
        members: Entries<'_, MemberEntry>,
        groups: ViewGroupSlices<'_>,
    ) -> bool {
        // Check everything first, so that a refused part leaves the assembly untouched.
        let mut declared = self.declared;
        let mut new_groups = 0usize;
        let mut entries = members.len() as u64;
        for (i, (h, es)) in groups.iter().enumerate() {
            entries += es.len() as u64;
            match self.group_parts.get(&h.group) {
                Some(g) if g.total != h.total => return false,
                Some(_) => {}
                None => {
                    // A group twice in one part (the splitter never does it).
                    if groups.iter().take(i).any(|(o, _)| o.group == h.group) {
                        return false;
                    }
                    new_groups += 1;
                    // One more for the group itself, so that empty groups count too.
                    declared += u64::from(h.total) + 1;
                }
            }
        }
        if self.group_parts.len() + new_groups > self.groups as usize
            || declared > MAX_VIEW_ENTRIES
            || self.held + entries > declared
        {
            return false;
        }
        self.declared = declared;
        self.held += entries;
        if let Some(w) = self.received.get_mut(header.part as usize / 64) {
            *w |= 1 << (header.part % 64);
        }
        self.received_count += 1;
        if !members.is_empty() {
            self.member_slices.push((
                header.member_start,
                members
                    .iter()
                    .map(|m| Member {
                        node: m.node,
                        incarnation: m.incarnation,
                    })
                    .collect(),
            ));
        }
        for (h, es) in groups.iter() {
            let g = self.group_parts.entry(h.group).or_insert(GroupAssembly {
                total: h.total,
                slices: Vec::new(),
            });
            if !es.is_empty() {
                g.slices.push((h.start, es.iter().collect()));
            }
        }
        true
    }

    fn has(&self, part: u32) -> bool {
        self.received
            .get(part as usize / 64)
            .is_some_and(|w| w & (1 << (part % 64)) != 0)
    }

    fn complete(&self) -> bool {
        self.received_count == self.parts
    }

    /// The view, if the parts cover it exactly.
    fn build(mut self) -> Option<View> {
        if self.group_parts.len() != self.groups as usize {
            return None;
        }
        let members = concat_exact(&mut self.member_slices, self.members)?;
        let mut groups = Vec::with_capacity(self.group_parts.len());
        for (id, mut g) in std::mem::take(&mut self.group_parts) {
            let entries = concat_exact(&mut g.slices, g.total)?;
            let mut gv = GroupView {
                id,
                members: Vec::with_capacity(entries.len()),
                streams: Vec::with_capacity(entries.len()),
            };
            for e in entries {
                gv.members.push(members.get(e.index as usize)?.node);
                gv.streams.push(e.stream);
            }
            groups.push(gv);
        }
        Some(View {
            id: self.id,
            members,
            groups,
        })
    }
}

struct Peer {
    member: Member,
    heartbeat: u32,
    last_increase: Time,
    dead: bool,
    dead_since: Time,
    hb_at_death: u32,
    leaving: bool,
    replied_round: u32,
    view_sent_round: u32,
    /// Heard from directly, or vouched for by a view: only such peers enter views. A node
    /// only named in another's heartbeats is probed and kept unverified (bounded), so that
    /// invented ids neither enter views nor hold view changes back.
    direct: bool,
}

pub struct Node {
    id: NodeId,
    incarnation: u32,
    settings: Settings,
    rng: Xoshiro256PlusPlus,
    seeds: Vec<NodeId>,
    round: u32,
    next_tick: Time,
    /// When the repair timer is next due (`Time::MAX`: no gap is waiting).
    repair_at: Time,
    /// Groups left recently, with where this node stood in their streams.
    departed: VecDeque<Departed>,
    /// Peers with `direct` set, as of the last gossip round.
    direct_peers: usize,
    heartbeat: u32,
    leaving: bool,
    peers: Vec<Peer>,
    peer_index: FxMap<NodeId, usize>,
    hb_cursor: usize,
    view: Arc<View>,
    /// Views whose parts are arriving (at most [`VIEW_ASSEMBLIES`]).
    assembling: Vec<ViewAssembly>,
    in_view: FxMap<NodeId, u32>,
    max_counter: u64,
    view_request_round: u32,
    my_groups: BTreeSet<GroupId>,
    /// Coordinator only: requested group changes `(group, node) -> Some(stream)` to join
    /// with that stream, `None` to leave.
    pending_group_changes: BTreeMap<(GroupId, NodeId), Option<u32>>,
    /// Bytes all groups retain together (see `Settings::node_budget_bytes`).
    node_bytes: usize,
    groups: BTreeMap<GroupId, GroupState>,
    out: Outbox,
    /// Buffers of the message bytes the groups retain.
    pool: PayloadPool,
    events: VecDeque<Event>,
    counters: Counters,
    scratch_targets: Vec<NodeId>,
    scratch_hb: Vec<HeartbeatEntry>,
}

const NO_ROUND: u32 = u32::MAX;

/// How far past our view's counter a counter from the network may be. Counters grow by one
/// per view change, so a real one is never this far ahead; a forged `u64::MAX` would
/// otherwise be adopted and wrap the next view's counter.
pub const MAX_COUNTER_JUMP: u64 = 1 << 32;

/// Group joins and leaves a coordinator holds between two views.
const MAX_PENDING_GROUP_CHANGES: usize = 1 << 16;

/// Peers known only from others' heartbeats (not yet heard from directly), at most.
const MAX_UNVERIFIED_PEERS: usize = 1024;

/// New unverified peers one heartbeat datagram may add (each is probed once).
const NEW_PEERS_PER_DATAGRAM: usize = 8;

/// Groups left whose stream positions the node remembers for a rejoin (the oldest is
/// forgotten first).
const MAX_DEPARTED_GROUPS: usize = 64;

/// A group this node left: where it stood in each stream, until `forget_at`.
struct Departed {
    group: GroupId,
    forget_at: Time,
    positions: Vec<(crate::multicast::StreamKey, u64)>,
}

/// Whether membership believes `node` alive (not suspected, not leaving).
fn peer_alive(peers: &[Peer], index: &FxMap<NodeId, usize>, node: NodeId) -> bool {
    index
        .get(&node)
        .and_then(|&i| peers.get(i))
        .is_some_and(|p| !p.dead && !p.leaving)
}

/// Runs `$body` with `$ctx`, the groups' context at time `$now` (borrowing the node's
/// fields one by one), and `$groups`, the node's group states.
macro_rules! with_ctx {
    ($node:ident, $now:expr, |$ctx:ident, $groups:ident| $body:expr) => {{
        let peers = &$node.peers;
        let index = &$node.peer_index;
        let live = |n: NodeId| peer_alive(peers, index, n);
        #[allow(unused_mut)]
        let mut $ctx = Ctx {
            settings: &$node.settings,
            now: $now,
            round: $node.round,
            out: &mut $node.out,
            pool: &mut $node.pool,
            events: &mut $node.events,
            counters: &mut $node.counters,
            live: &live,
            node_bytes: &mut $node.node_bytes,
            repair_at: &mut $node.repair_at,
        };
        let $groups = &mut $node.groups;
        $body
    }};
}

impl Counters {
    /// Claims from the network refused as implausible or over a bound, all kinds together
    /// (what a hostile or broken peer tried; each kind has its own field).
    pub fn refused(&self) -> u64 {
        [
            self.implausible_counters,
            self.views_refused,
            self.relayed_incarnations_ignored,
            self.peers_full,
            self.streams_full,
            self.group_changes_refused,
            self.implausible_seqs,
            self.request_walks_capped,
            self.unknown_streams,
            self.bad_digests,
            self.bad_view_parts,
        ]
        .iter()
        .fold(0u64, |a, b| a.saturating_add(*b))
    }
}

impl Node {
    /// A node `id` in `incarnation` (must grow across restarts; smaller = older, so a
    /// boot timestamp works), knowing `seeds`, starting at `now`. `rng_seed` seeds the
    /// node's only source of randomness.
    pub fn new(
        id: NodeId,
        incarnation: u32,
        seeds: &[NodeId],
        settings: Settings,
        now: Time,
        rng_seed: u64,
    ) -> Self {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(rng_seed);
        let phase = rng.gen_range(0..settings.gossip_period.max(1));
        let me = Member {
            node: id,
            incarnation,
        };
        let view = Arc::new(View {
            id: ViewId {
                counter: 0,
                coordinator: id,
                coordinator_incarnation: incarnation,
            },
            members: vec![me],
            groups: Vec::new(),
        });
        let mut in_view = FxMap::default();
        in_view.insert(id, incarnation);
        Node {
            id,
            incarnation,
            pool: PayloadPool::default(),
            out: Outbox::new(
                id,
                incarnation,
                settings.max_datagram,
                settings.max_pending_transmits,
            ),
            settings,
            rng,
            seeds: seeds.iter().copied().filter(|s| *s != id).collect(),
            round: 0,
            next_tick: now + phase,
            repair_at: Time::MAX,
            departed: VecDeque::new(),
            direct_peers: 0,
            heartbeat: 0,
            leaving: false,
            peers: Vec::new(),
            peer_index: FxMap::default(),
            hb_cursor: 0,
            view,
            assembling: Vec::new(),
            in_view,
            max_counter: 0,
            view_request_round: NO_ROUND,
            my_groups: BTreeSet::new(),
            pending_group_changes: BTreeMap::new(),
            node_bytes: 0,
            groups: BTreeMap::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
            scratch_targets: Vec::new(),
            scratch_hb: Vec::new(),
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }
    pub fn incarnation(&self) -> u32 {
        self.incarnation
    }
    pub fn view(&self) -> &Arc<View> {
        &self.view
    }
    pub fn settings(&self) -> &Settings {
        &self.settings
    }
    pub fn counters(&self) -> Counters {
        let mut c = self.counters.clone();
        c.datagrams_sent = self.out.datagrams;
        c.bytes_sent = self.out.bytes;
        c.transmits_dropped = self.out.dropped;
        c.oversize_datagrams = self.out.oversize;
        c
    }

    /// Entries in the membership table (live, suspected, failed and unverified peers).
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Streams of `group` this node keeps state or a tombstone of (0 when not in it).
    pub fn stream_count(&self, group: GroupId) -> usize {
        self.groups.get(&group).map_or(0, |g| g.stream_count())
    }

    /// Bytes retained for repair by all groups (within `Settings::node_budget_bytes`).
    pub fn retained_bytes(&self) -> usize {
        self.node_bytes
    }

    /// This node's stream in `group`, if it joined it.
    pub fn stream(&self, group: GroupId) -> Option<u32> {
        self.groups.get(&group).map(GroupState::my_stream)
    }
    /// Gossip rounds run so far.
    pub fn round(&self) -> u32 {
        self.round
    }

    fn me(&self) -> Member {
        Member {
            node: self.id,
            incarnation: self.incarnation,
        }
    }

    // ---------------------------------------------------------------- application calls

    /// Join group `group`: multicast state starts now, in a new stream; the coordinator
    /// adds this node to the group in its next view. Joining a group that still lingers
    /// (see [`Node::leave`]) takes it back, in the same stream.
    pub fn join(&mut self, now: Time, group: GroupId) {
        if let Some(g) = self.groups.get_mut(&group) {
            g.lingering_until = None;
            return;
        }
        self.my_groups.insert(group);
        let stream = self.new_stream();
        let mut g = GroupState::new(group, self.id, stream);
        g.set_retransmit_budget(self.settings.retransmit_budget_bytes);
        self.departed.retain(|d| d.forget_at > now);
        if let Some(i) = self.departed.iter().position(|d| d.group == group) {
            let d = self.departed.remove(i).expect("index from position");
            with_ctx!(self, now, |ctx, _groups| g.resume_from(&d.positions, &mut ctx));
        }
        if let Some(gv) = self.view.group_view(group).cloned() {
            with_ctx!(self, now, |ctx, _groups| g.set_members(
                &gv.members,
                &gv.streams,
                &mut ctx
            ));
        }
        self.groups.insert(group, g);
        self.request_group_change(group, Some(stream));
    }

    /// A stream id for a new membership of a group: random (the driver seeds the RNG so
    /// that it differs across restarts), nonzero, and unlike the ids of our other groups.
    fn new_stream(&mut self) -> u32 {
        loop {
            let s: u32 = self.rng.gen();
            if s != 0 && !self.groups.values().any(|g| g.my_stream() == s) {
                return s;
            }
        }
    }

    /// The application left group `group`: nothing more is delivered for it. The node stays
    /// in the group for `Settings::linger` (serving repairs of what it sent last), then
    /// leaves it.
    pub fn leave(&mut self, now: Time, group: GroupId) {
        if let Some(g) = self.groups.get_mut(&group) {
            if g.lingering_until.is_none() {
                g.lingering_until = Some(now.saturating_add(self.settings.linger));
            }
        }
    }

    /// Leaves the groups whose lingering is over.
    fn leave_lingering(&mut self, now: Time) {
        let done: Vec<GroupId> = self
            .groups
            .iter()
            .filter(|(_, g)| g.lingering_until.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for group in done {
            if let Some(mut g) = self.groups.remove(&group) {
                // Copies of what the group's streams sent are held (and tombstoned) for a
                // few retentions: remember where we stood for as long.
                let keep = self.settings.gossip_period.saturating_mul(
                    u64::from(self.settings.retention_rounds)
                        * u64::from(crate::multicast::TOMBSTONE_RETENTIONS),
                );
                self.departed.retain(|d| d.group != group && d.forget_at > now);
                if self.departed.len() >= MAX_DEPARTED_GROUPS {
                    self.departed.pop_front();
                }
                self.departed.push_back(Departed {
                    group,
                    forget_at: now.saturating_add(keep),
                    positions: g.positions(self.settings.max_tombstones),
                });
                with_ctx!(self, now, |ctx, _groups| g.clear(&mut ctx));
            }
            self.my_groups.remove(&group);
            self.request_group_change(group, None);
        }
    }

    /// Leave the cluster: tell the coordinator and a few members; the node should then be
    /// dropped after its transmits are sent.
    pub fn shutdown(&mut self, _now: Time) {
        self.leaving = true;
        let coord = self.coordinator();
        let mut targets = vec![coord];
        self.pick_view_targets(self.settings.gossip_fanout.max(2), &mut targets);
        targets.sort_unstable();
        targets.dedup();
        for t in targets {
            if t != self.id {
                self.send_heartbeats(t);
            }
        }
    }

    /// Multicast `payload` to `group` on behalf of local session `session` (carried to the
    /// receivers); returns its stream and seq. Not delivered back to this node.
    pub fn submit(
        &mut self,
        now: Time,
        group: GroupId,
        session: u32,
        payload: &[u8],
    ) -> Result<Submitted, SubmitError> {
        self.submit_shared(now, group, session, payload).map(|(s, _)| s)
    }

    /// As [`Node::submit`], and hands back the node's own copy of the bytes (shared, not
    /// copied again): `payload` is read exactly once, so a driver that takes its local copy
    /// from here makes local and remote members get the same bytes even if the source
    /// changes meanwhile (a client rewriting its shared-memory frame).
    pub fn submit_shared(
        &mut self,
        now: Time,
        group: GroupId,
        session: u32,
        payload: &[u8],
    ) -> Result<(Submitted, Payload), SubmitError> {
        if payload.len() > self.settings.max_message {
            return Err(SubmitError::TooLarge {
                len: payload.len(),
                max: self.settings.max_message,
            });
        }
        let r = with_ctx!(self, now, |ctx, groups| {
            let g = groups.get_mut(&group).ok_or(SubmitError::NotJoined(group))?;
            let (seq, copy) = g.submit(payload, session, &mut ctx);
            Ok((
                Submitted {
                    stream: g.my_stream(),
                    seq,
                },
                copy,
            ))
        });
        self.enforce_node_budget(now);
        r
    }

    /// Keeps all groups together within `node_budget_bytes`: the group holding most gives
    /// up its oldest messages.
    fn enforce_node_budget(&mut self, now: Time) {
        let budget = self.settings.node_budget_bytes;
        while self.node_bytes > budget {
            let excess = self.node_bytes - budget + budget / 64;
            let Some((&gid, _)) = self.groups.iter().max_by_key(|(_, g)| g.bytes()) else {
                return;
            };
            let before = self.node_bytes;
            with_ctx!(self, now, |ctx, groups| {
                if let Some(g) = groups.get_mut(&gid) {
                    g.evict(excess, None, &mut ctx);
                }
            });
            if self.node_bytes >= before {
                return;
            }
        }
    }

    // ---------------------------------------------------------------- driver calls

    /// When `handle_timeout` wants to be called next.
    /// When `handle_timeout` is next due: the gossip round or the repair timer. It can
    /// move earlier after `handle_packet` (a gap opened): drivers read it after each input.
    pub fn poll_timeout(&self) -> Option<Time> {
        Some(self.next_tick.min(self.repair_at))
    }

    /// The next datagram to send. Its bytes are borrowed from the node's buffer pool: copy
    /// them out (into the transport's send slot) before calling the node again.
    pub fn poll_transmit(&mut self) -> Option<Transmit<'_>> {
        self.out.pop().map(|(dest, payload)| Transmit { dest, payload })
    }

    /// Gives back a delivered payload once the driver is done with it: its buffer returns to
    /// the node's pool when the node no longer retains the message either (else the
    /// retention slot returns it when evicted). Dropping it instead is correct too, but a
    /// message delivered late (after its slot was evicted) then costs an allocation.
    pub fn recycle(&mut self, payload: Payload) {
        self.pool.recycle(payload);
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// A datagram arrived from `from` (the transport's idea of the sender; the header's
    /// `from` must match it).
    pub fn handle_packet(&mut self, now: Time, from: NodeId, bytes: &[u8]) {
        let d = match packet::decode(bytes) {
            Ok(d) if d.header.from == from => d,
            _ => {
                self.counters.decode_errors += 1;
                return;
            }
        };
        self.counters.datagrams_received += 1;
        let sender = Member {
            node: from,
            incarnation: d.header.incarnation,
        };
        if from == self.id {
            return;
        }
        self.touch(now, sender);
        for m in d.messages() {
            match m {
                // A retransmission is handled as a stage-1 copy: either way, the first copy
                // of a message to arrive goes on down the sender's tree.
                Message::Data { header, payload, .. } => {
                    with_ctx!(self, now, |ctx, groups| match groups.get_mut(&{ header.group }) {
                        Some(g) => g.handle_data(from, &header, payload, &mut ctx),
                        None => ctx.counters.not_joined += 1,
                    })
                }
                // A run of whole messages of one stream: one group lookup for all of them.
                Message::DataRun { messages, .. } => {
                    let group = messages.header().group;
                    with_ctx!(self, now, |ctx, groups| match groups.get_mut(&group) {
                        Some(g) => {
                            for (header, payload) in messages.iter() {
                                g.handle_data(from, &header, payload, &mut ctx);
                            }
                        }
                        None => ctx.counters.not_joined += 1,
                    })
                }
                Message::Digest { header, entries } => {
                    with_ctx!(self, now, |ctx, groups| match groups.get_mut(&header.group) {
                        Some(g) => g.handle_digest(from, &header, entries.iter(), &mut ctx),
                        None => ctx.counters.not_joined += 1,
                    })
                }
                Message::Request { header, entries } => {
                    with_ctx!(self, now, |ctx, groups| {
                        if let Some(g) = groups.get_mut(&header.group) {
                            g.handle_request(from, &header, entries.iter(), &mut ctx);
                        }
                    })
                }
                Message::Heartbeats { header, entries } => {
                    self.handle_heartbeats(now, sender, &header, entries.iter());
                }
                Message::View {
                    header,
                    members,
                    groups,
                } => self.handle_view_part(now, from, &header, members, groups),
                Message::ViewRequest if self.view.id.coordinator != self.id => {
                    // Only a view's coordinator sends it (members accept it from no one
                    // else): point the asker at ours with a heartbeat.
                    if let Some(&i) = self.peer_index.get(&from) {
                        if self.peers[i].view_sent_round != self.round {
                            self.peers[i].view_sent_round = self.round;
                            self.send_heartbeats(from);
                        }
                    }
                }
                Message::ViewRequest => {
                    if let Some(&i) = self.peer_index.get(&from) {
                        if self.peers[i].view_sent_round != self.round {
                            self.peers[i].view_sent_round = self.round;
                            self.send_view(from);
                        }
                    }
                }
                Message::GroupJoin(g) => self.pending_group_change(g.group, from, Some(g.stream)),
                Message::GroupLeave(g) => self.pending_group_change(g.group, from, None),
            }
        }
        self.enforce_node_budget(now);
    }

    fn pending_group_change(&mut self, group: GroupId, from: NodeId, join: Option<u32>) {
        let key = (group, from);
        if self.pending_group_changes.len() >= MAX_PENDING_GROUP_CHANGES
            && !self.pending_group_changes.contains_key(&key)
        {
            self.counters.group_changes_refused += 1;
            return;
        }
        self.pending_group_changes.insert(key, join);
    }

    /// Timers: run every gossip round that is due.
    pub fn handle_timeout(&mut self, now: Time) {
        if self
            .groups
            .values()
            .any(|g| g.lingering_until.is_some_and(|t| t <= now))
        {
            self.leave_lingering(now);
        }
        while now >= self.next_tick {
            self.next_tick += self.settings.gossip_period.max(1);
            self.gossip_round(now);
        }
        if now >= self.repair_at {
            self.repair_at = Time::MAX;
            with_ctx!(self, now, |ctx, groups| {
                for g in groups.values_mut() {
                    g.rerequest_gaps(&mut ctx);
                }
            });
        }
    }

    // ---------------------------------------------------------------- membership

    fn effective_suspect_timeout(&self) -> Time {
        // Peers heard from directly (counted each round): relays cannot stretch it.
        let n = self.direct_peers as u64 + 1;
        let per = self.settings.heartbeat_entries.max(2) as u64 - 1;
        self.settings.suspect_timeout + self.settings.gossip_period * 4 * n.div_ceil(per)
    }

    fn suspect_rounds(&self) -> u32 {
        (self.effective_suspect_timeout() / self.settings.gossip_period.max(1)) as u32
    }

    fn is_alive(&self, m: Member) -> bool {
        if m.node == self.id {
            return m.incarnation == self.incarnation;
        }
        match self.peer_index.get(&m.node) {
            Some(&i) => {
                let p = &self.peers[i];
                p.member.incarnation == m.incarnation && !p.dead && !p.leaving
            }
            None => false,
        }
    }

    fn insert_peer(&mut self, now: Time, m: Member, heartbeat: u32, direct: bool) -> Option<usize> {
        if self.peers.len() >= self.settings.max_peers
            || (!direct && self.peers.iter().filter(|p| !p.direct).count() >= MAX_UNVERIFIED_PEERS)
        {
            self.counters.peers_full += 1;
            return None;
        }
        self.peers.push(Peer {
            member: m,
            heartbeat,
            last_increase: now,
            dead: false,
            dead_since: 0,
            hb_at_death: 0,
            leaving: false,
            replied_round: NO_ROUND,
            view_sent_round: NO_ROUND,
            direct,
        });
        let i = self.peers.len() - 1;
        self.peer_index.insert(m.node, i);
        Some(i)
    }

    /// Whether a view counter from the network is plausible (see [`MAX_COUNTER_JUMP`]).
    fn plausible_counter(&mut self, counter: u64) -> bool {
        let ok = counter <= self.view.id.counter.saturating_add(MAX_COUNTER_JUMP);
        if !ok {
            self.counters.implausible_counters += 1;
        }
        ok
    }

    /// Direct evidence that `m` is alive (a datagram from it, or a view it installed).
    fn touch(&mut self, now: Time, m: Member) {
        if m.node == self.id {
            return;
        }
        match self.peer_index.get(&m.node) {
            Some(&i) => {
                let p = &mut self.peers[i];
                if m.incarnation > p.member.incarnation {
                    p.member = m;
                    p.heartbeat = 0;
                    p.leaving = false;
                }
                if m.incarnation == p.member.incarnation {
                    p.last_increase = now;
                    p.dead = false;
                    p.direct = true;
                }
            }
            None => {
                let _ = self.insert_peer(now, m, 0, true);
            }
        }
    }

    fn handle_heartbeats(
        &mut self,
        now: Time,
        from: Member,
        header: &HeartbeatHeader,
        entries: impl Iterator<Item = HeartbeatEntry>,
    ) {
        let revive_margin = self.suspect_rounds();
        let mut added = 0;
        for e in entries {
            if e.node == self.id {
                continue;
            }
            let m = Member {
                node: e.node,
                incarnation: e.incarnation,
            };
            let own = e.node == from.node;
            // Leaving is the node's own word (or a view's), never a relay's.
            let leaving = own && e.flags & HEARTBEAT_FLAG_LEAVING != 0;
            match self.peer_index.get(&e.node) {
                None if own => {
                    if let Some(i) = self.insert_peer(now, m, e.heartbeat, true) {
                        self.peers[i].leaving = leaving;
                    }
                }
                None => {
                    // Named by a relay: keep it unverified and probe it; it enters views
                    // once it answers.
                    if added >= NEW_PEERS_PER_DATAGRAM {
                        self.counters.peers_full += 1;
                        continue;
                    }
                    if self.insert_peer(now, m, e.heartbeat, false).is_some() {
                        added += 1;
                        self.send_heartbeats_to(e.node, true);
                    }
                }
                Some(&i) => {
                    let p = &mut self.peers[i];
                    if e.incarnation > p.member.incarnation && e.node != from.node {
                        // A restart is learned from the node itself or from a view, never
                        // from a third party's word: that would evict a live member.
                        self.counters.relayed_incarnations_ignored += 1;
                    } else if e.incarnation > p.member.incarnation {
                        p.member = m;
                        p.heartbeat = e.heartbeat;
                        p.last_increase = now;
                        p.dead = false;
                        p.leaving = leaving;
                    } else if e.incarnation == p.member.incarnation {
                        if leaving {
                            p.leaving = true;
                        }
                        if e.heartbeat > p.heartbeat {
                            p.heartbeat = e.heartbeat;
                            if !p.dead || e.heartbeat >= p.hb_at_death.saturating_add(revive_margin) {
                                p.dead = false;
                                p.last_increase = now;
                            }
                        }
                    }
                }
            }
        }
        let their = ViewId {
            counter: header.view_counter,
            coordinator: header.view_coordinator,
            coordinator_incarnation: header.view_coordinator_incarnation,
        };
        let claimed = header.max_counter.max(header.view_counter);
        if !self.plausible_counter(claimed) {
            return;
        }
        self.max_counter = self.max_counter.max(claimed);
        if their.newer_than(&self.view.id) && self.view_request_round != self.round {
            // Views are accepted from their coordinator only: ask it.
            self.view_request_round = self.round;
            let to = if their.coordinator != self.id && self.peer_index.contains_key(&their.coordinator) {
                their.coordinator
            } else {
                from.node
            };
            self.out.push(to, 0, |e| e.push_view_request());
        }
        // Answer nodes outside our view (joiners, the other side of a healed partition).
        if !self.in_view.contains_key(&from.node) {
            if let Some(&i) = self.peer_index.get(&from.node) {
                if self.peers[i].replied_round != self.round {
                    self.peers[i].replied_round = self.round;
                    self.send_heartbeats(from.node);
                }
            }
        }
    }

    /// Send our liveness table: our own entry, the coordinator's (so that its liveness,
    /// the one every member depends on, spreads every round), then a rotating slice.
    /// `only_self`: just our own entry (the per-round direct heartbeat to the coordinator).
    fn send_heartbeats_to(&mut self, to: NodeId, only_self: bool) {
        let mut entries = std::mem::take(&mut self.scratch_hb);
        entries.clear();
        entries.push(HeartbeatEntry {
            node: self.id,
            incarnation: self.incarnation,
            heartbeat: self.heartbeat,
            flags: if self.leaving { HEARTBEAT_FLAG_LEAVING } else { 0 },
        });
        let coord = self.view.members.first().map(|m| m.node);
        if !only_self {
            if let Some(p) = coord
                .filter(|c| *c != self.id)
                .and_then(|c| self.peer_index.get(&c))
                .map(|&i| &self.peers[i])
            {
                if !p.dead {
                    entries.push(HeartbeatEntry {
                        node: p.member.node,
                        incarnation: p.member.incarnation,
                        heartbeat: p.heartbeat,
                        flags: if p.leaving { HEARTBEAT_FLAG_LEAVING } else { 0 },
                    });
                }
            }
        }
        let n = if only_self { 0 } else { self.peers.len() };
        // Entries that fit one datagram of `max_datagram` bytes.
        let fit = self.settings.max_datagram.saturating_sub(
            packet::DATAGRAM_HEADER_LEN
                + packet::MESSAGE_HEADER_LEN
                + core::mem::size_of::<HeartbeatHeader>(),
        ) / core::mem::size_of::<HeartbeatEntry>();
        let want = self.settings.heartbeat_entries.min(fit).saturating_sub(1).min(n);
        let mut scanned = 0;
        while entries.len() <= want && scanned < n {
            let p = &self.peers[(self.hb_cursor + scanned) % n];
            scanned += 1;
            if !p.dead && p.direct {
                entries.push(HeartbeatEntry {
                    node: p.member.node,
                    incarnation: p.member.incarnation,
                    heartbeat: p.heartbeat,
                    flags: if p.leaving { HEARTBEAT_FLAG_LEAVING } else { 0 },
                });
            }
        }
        if n > 0 {
            self.hb_cursor = (self.hb_cursor + scanned) % n;
        }
        let header = HeartbeatHeader {
            view_counter: self.view.id.counter,
            view_coordinator: self.view.id.coordinator,
            view_coordinator_incarnation: self.view.id.coordinator_incarnation,
            max_counter: self.max_counter,
        };
        self.counters.heartbeats_sent += 1;
        let body = core::mem::size_of::<HeartbeatHeader>() + std::mem::size_of_val(entries.as_slice());
        let es = &entries;
        self.out.push(to, body, |e| e.push_heartbeats(&header, es));
        self.scratch_hb = entries;
    }

    fn send_heartbeats(&mut self, to: NodeId) {
        self.send_heartbeats_to(to, false);
    }

    /// Sends our view to `to`, in parts that each fit a datagram of `max_datagram` bytes.
    fn send_view(&mut self, to: NodeId) {
        let view = self.view.clone();
        let members: Vec<MemberEntry> = view
            .members
            .iter()
            .map(|m| MemberEntry {
                node: m.node,
                incarnation: m.incarnation,
            })
            .collect();
        let pos: FxMap<NodeId, u32> = view
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.node, i as u32))
            .collect();
        let idx: Vec<(GroupId, Vec<ViewGroupMember>)> = view
            .groups
            .iter()
            .map(|gv| {
                let ms = gv
                    .members
                    .iter()
                    .zip(&gv.streams)
                    .filter_map(|(n, s)| pos.get(n).map(|&index| ViewGroupMember { index, stream: *s }))
                    .collect();
                (gv.id, ms)
            })
            .collect();
        let gs: Vec<(GroupId, &[ViewGroupMember])> = idx.iter().map(|(g, v)| (*g, v.as_slice())).collect();
        let max_body = self
            .settings
            .max_datagram
            .saturating_sub(packet::DATAGRAM_HEADER_LEN + packet::MESSAGE_HEADER_LEN);
        let id = view.id;
        let Ok(parts) = ViewParts::new(
            id.counter,
            (id.coordinator, id.coordinator_incarnation),
            &members,
            &gs,
            max_body,
        ) else {
            // `max_datagram` too small for any view part: counted, as an oversize message.
            self.out.oversize += 1;
            return;
        };
        for p in 0..parts.len() {
            self.counters.views_sent += 1;
            let parts = &parts;
            self.out
                .push(to, parts.body_len(p), |e| e.push_view_part(parts, p));
        }
    }

    /// A part of a view: held until the view's other parts arrived, then installed.
    fn handle_view_part(
        &mut self,
        now: Time,
        from: NodeId,
        header: &ViewPartHeader,
        members: Entries<'_, MemberEntry>,
        groups: ViewGroupSlices<'_>,
    ) {
        let id = ViewId {
            counter: header.counter,
            coordinator: header.coordinator,
            coordinator_incarnation: header.coordinator_incarnation,
        };
        if from != id.coordinator {
            self.counters.views_refused += 1;
            return;
        }
        if !self.plausible_counter(id.counter) {
            return;
        }
        self.max_counter = self.max_counter.max(id.counter);
        if !id.newer_than(&self.view.id) {
            return;
        }
        let i = match self.assembling.iter().position(|a| a.id == id) {
            Some(i) => {
                let a = &self.assembling[i];
                if (a.parts, a.members, a.groups) != (header.parts, header.members, header.groups) {
                    self.counters.bad_view_parts += 1;
                    return;
                }
                if a.has(header.part) {
                    return;
                }
                i
            }
            None => {
                if u64::from(header.members) > MAX_VIEW_ENTRIES
                    || u64::from(header.parts) > MAX_VIEW_ENTRIES + 1
                {
                    self.counters.bad_view_parts += 1;
                    return;
                }
                if self.assembling.len() >= VIEW_ASSEMBLIES {
                    // Keep the newest: give up the oldest held, or this part if it is older.
                    let oldest = (0..self.assembling.len())
                        .reduce(|o, j| {
                            if self.assembling[o].id.newer_than(&self.assembling[j].id) {
                                j
                            } else {
                                o
                            }
                        })
                        .unwrap_or(0);
                    self.counters.view_assemblies_dropped += 1;
                    if !id.newer_than(&self.assembling[oldest].id) {
                        return;
                    }
                    self.assembling.swap_remove(oldest);
                }
                self.assembling.push(ViewAssembly {
                    id,
                    parts: header.parts,
                    members: header.members,
                    groups: header.groups,
                    received: vec![0; (header.parts as usize).div_ceil(64)],
                    received_count: 0,
                    member_slices: Vec::new(),
                    group_parts: BTreeMap::new(),
                    held: 0,
                    declared: u64::from(header.members),
                });
                self.assembling.len() - 1
            }
        };
        if !self.assembling[i].add(header, members, groups) {
            self.counters.bad_view_parts += 1;
            if self.assembling[i].received_count == 0 {
                self.assembling.swap_remove(i);
            }
            return;
        }
        if !self.assembling[i].complete() {
            return;
        }
        match self.assembling.swap_remove(i).build() {
            Some(view) => {
                self.handle_view(now, view);
                let current = self.view.id;
                self.assembling.retain(|a| a.id.newer_than(&current));
            }
            None => self.counters.bad_view_parts += 1,
        }
    }

    fn handle_view(&mut self, now: Time, view: View) {
        self.max_counter = self.max_counter.max(view.id.counter);
        if !view.id.newer_than(&self.view.id) || !view.contains(self.me()) {
            return;
        }
        // The coordinator is the view's oldest member, in it with the stated incarnation.
        let coordinator = Member {
            node: view.id.coordinator,
            incarnation: view.id.coordinator_incarnation,
        };
        if view.members.first() != Some(&coordinator) {
            self.counters.views_refused += 1;
            return;
        }
        self.touch(
            now,
            Member {
                node: view.id.coordinator,
                incarnation: view.id.coordinator_incarnation,
            },
        );
        for m in &view.members {
            if m.node == self.id {
                continue;
            }
            match self.peer_index.get(&m.node) {
                None => {
                    let _ = self.insert_peer(now, *m, 0, true);
                }
                Some(&i) if self.peers[i].member.incarnation == m.incarnation => {
                    self.peers[i].direct = true;
                }
                // The coordinator saw the node restart: so do we.
                Some(&i) if self.peers[i].member.incarnation < m.incarnation => {
                    let p = &mut self.peers[i];
                    p.member = *m;
                    p.heartbeat = 0;
                    p.last_increase = now;
                    p.dead = false;
                    p.leaving = false;
                    p.direct = true;
                }
                Some(_) => {}
            }
        }
        self.install(now, Arc::new(view));
    }

    fn install(&mut self, now: Time, view: Arc<View>) {
        self.in_view.clear();
        for m in &view.members {
            self.in_view.insert(m.node, m.incarnation);
        }
        with_ctx!(self, now, |ctx, groups| {
            for (gid, g) in groups.iter_mut() {
                match view.group_view(*gid) {
                    Some(gv) => g.set_members(&gv.members, &gv.streams, &mut ctx),
                    None => g.set_members(&[], &[], &mut ctx),
                }
            }
        });
        self.view = view.clone();
        self.counters.views_installed += 1;
        if self.events.len() < self.settings.max_pending_events {
            self.events.push_back(Event::ViewChange(view));
        } else {
            self.counters.events_dropped += 1;
        }
    }

    /// The oldest member of our view that we believe alive.
    fn coordinator(&self) -> NodeId {
        self.view
            .members
            .iter()
            .find(|m| self.is_alive(**m))
            .map(|m| m.node)
            .unwrap_or(self.id)
    }

    /// Asks the coordinator to add us to `group` with `stream` (or to remove us: `None`).
    fn request_group_change(&mut self, group: GroupId, join: Option<u32>) {
        let coord = self.coordinator();
        let body = core::mem::size_of::<packet::GroupChange>();
        if coord == self.id {
            self.pending_group_changes.insert((group, self.id), join);
        } else if let Some(stream) = join {
            self.out.push(coord, body, |e| e.push_group_join(group, stream));
        } else {
            self.out.push(coord, body, |e| e.push_group_leave(group));
        }
    }

    /// Coordinator duty: install a new view when membership, group membership or the
    /// highest known counter says so.
    fn coordinate(&mut self, now: Time) {
        if self.coordinator() != self.id || self.leaving {
            return;
        }
        let my_age = self.me().age_key();
        // An older live node outside our view will merge us: wait for it.
        if self.peers.iter().any(|p| {
            !p.dead
                && !p.leaving
                && p.direct
                && p.member.age_key() < my_age
                && self.in_view.get(&p.member.node) != Some(&p.member.incarnation)
        }) {
            return;
        }
        let mut members: Vec<Member> = vec![self.me()];
        members.extend(
            self.peers
                .iter()
                .filter(|p| !p.dead && !p.leaving && p.direct)
                .map(|p| p.member),
        );
        members.sort_by_key(|m| m.age_key());
        let set: FxMap<NodeId, ()> = members.iter().map(|m| (m.node, ())).collect();
        // Groups: carry over, drop departed members, apply requested changes.
        let mut groups: BTreeMap<GroupId, BTreeMap<NodeId, u32>> = BTreeMap::new();
        for gv in &self.view.groups {
            let g = groups.entry(gv.id).or_default();
            for (n, s) in gv.members.iter().zip(&gv.streams) {
                if set.contains_key(n) {
                    g.insert(*n, *s);
                }
            }
        }
        for (&(g, n), &join) in &self.pending_group_changes {
            match join {
                Some(stream) if set.contains_key(&n) => {
                    groups.entry(g).or_default().insert(n, stream);
                }
                _ => {
                    if let Some(s) = groups.get_mut(&g) {
                        s.remove(&n);
                    }
                }
            }
        }
        self.pending_group_changes.clear();
        let order: FxMap<NodeId, usize> = members.iter().enumerate().map(|(i, m)| (m.node, i)).collect();
        let groups: Vec<GroupView> = groups
            .into_iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(g, s)| {
                let mut v: Vec<(NodeId, u32)> = s.into_iter().collect();
                v.sort_by_key(|(n, _)| order.get(n).copied().unwrap_or(usize::MAX));
                GroupView {
                    id: g,
                    members: v.iter().map(|(n, _)| *n).collect(),
                    streams: v.iter().map(|(_, s)| *s).collect(),
                }
            })
            .collect();
        if members == self.view.members
            && groups == self.view.groups
            && self.max_counter <= self.view.id.counter
        {
            return;
        }
        // Counters from the network are bounded (`plausible_counter`), so this cannot wrap.
        self.max_counter = self.max_counter.saturating_add(1);
        let view = Arc::new(View {
            id: ViewId {
                counter: self.max_counter,
                coordinator: self.id,
                coordinator_incarnation: self.incarnation,
            },
            members,
            groups,
        });
        self.install(now, view.clone());
        for m in &view.members {
            if m.node != self.id {
                self.send_view(m.node);
            }
        }
    }

    /// Up to `k` distinct random members of the view other than us, appended to `out`.
    fn pick_view_targets(&mut self, k: usize, out: &mut Vec<NodeId>) {
        let n = self.view.members.len();
        if n <= 1 {
            return;
        }
        let want = k.min(n - 1);
        let start = out.len();
        let mut tries = 0;
        while out.len() - start < want && tries < want * 8 + 8 {
            tries += 1;
            let m = self.view.members[self.rng.gen_range(0..n)].node;
            if m != self.id && !out[start..].contains(&m) {
                out.push(m);
            }
        }
    }

    fn gossip_round(&mut self, now: Time) {
        self.round = self.round.wrapping_add(1);
        if self.round == NO_ROUND {
            self.round = 0;
        }
        self.heartbeat = self.heartbeat.wrapping_add(1);
        // Suspicion and forgetting.
        self.direct_peers = self.peers.iter().filter(|p| p.direct).count();
        let timeout = self.effective_suspect_timeout();
        let forget = self.settings.forget_after;
        let mut forgot = false;
        for p in &mut self.peers {
            if !p.dead && now.saturating_sub(p.last_increase) > timeout {
                p.dead = true;
                p.dead_since = now;
                p.hb_at_death = p.heartbeat;
            }
            if p.dead && (!p.direct || now.saturating_sub(p.dead_since) > forget) {
                forgot = true;
            }
        }
        if forgot {
            self.peers
                .retain(|p| !(p.dead && (!p.direct || now.saturating_sub(p.dead_since) > forget)));
            self.peer_index.clear();
            for (i, p) in self.peers.iter().enumerate() {
                self.peer_index.insert(p.member.node, i);
            }
        }
        self.coordinate(now);

        // Membership gossip: `fanout` view members, or the seeds while alone.
        let mut targets = std::mem::take(&mut self.scratch_targets);
        targets.clear();
        self.pick_view_targets(self.settings.gossip_fanout, &mut targets);
        if self.view.members.len() <= 1 {
            targets.extend(self.seeds.iter().copied());
        }
        let coordinator = self.coordinator() == self.id;
        if coordinator {
            // Probe seeds and one known node outside the view: how partitions merge.
            for &s in &self.seeds {
                if !self.in_view.contains_key(&s) && !targets.contains(&s) {
                    targets.push(s);
                }
            }
            let outside: Vec<NodeId> = self
                .peers
                .iter()
                .filter(|p| !p.leaving && self.in_view.get(&p.member.node) != Some(&p.member.incarnation))
                .map(|p| p.member.node)
                .collect();
            if !outside.is_empty() {
                let t = outside[self.rng.gen_range(0..outside.len())];
                if !targets.contains(&t) {
                    targets.push(t);
                }
            }
        }
        for &t in &targets {
            self.send_heartbeats(t);
        }
        // Every member heartbeats the coordinator directly each round (one small message):
        // the coordinator's view decisions then rest on first-hand liveness, not on gossip
        // whose staleness grows with the cluster. Costs the coordinator n messages a round.
        if !coordinator && self.view.members.len() > 1 {
            let c = self.coordinator();
            if c != self.id && !targets.contains(&c) {
                self.send_heartbeats_to(c, true);
            }
        }
        // Group membership requests not yet reflected in the view (our stream included).
        let me = self.id;
        let joins: Vec<(GroupId, u32)> = self
            .groups
            .iter()
            .map(|(id, g)| (*id, g.my_stream()))
            .filter(|(g, s)| self.view.group_view(*g).and_then(|gv| gv.stream_of(me)) != Some(*s))
            .collect();
        for (g, s) in joins {
            self.request_group_change(g, Some(s));
        }
        let leaves: Vec<GroupId> = self
            .view
            .groups
            .iter()
            .filter(|gv| gv.members.contains(&me) && !self.my_groups.contains(&gv.id))
            .map(|gv| gv.id)
            .collect();
        for g in leaves {
            self.request_group_change(g, None);
        }
        // Bimodal multicast: per group, digests to members (reusing the membership targets
        // that are group members, else picking random group members).
        let fanout = self.settings.gossip_fanout;
        let mut gt: Vec<NodeId> = Vec::with_capacity(fanout);
        let peers = &self.peers;
        let index = &self.peer_index;
        let live = |n: NodeId| peer_alive(peers, index, n);
        let (mut ctx, groups) = (
            Ctx {
                settings: &self.settings,
                now,
                round: self.round,
                out: &mut self.out,
                pool: &mut self.pool,
                events: &mut self.events,
                counters: &mut self.counters,
                live: &live,
                node_bytes: &mut self.node_bytes,
                repair_at: &mut self.repair_at,
            },
            &mut self.groups,
        );
        for g in groups.values_mut() {
            gt.clear();
            gt.extend(targets.iter().copied().filter(|t| g.is_member(*t)).take(fanout));
            let ms = g.members();
            let n = ms.len();
            let mut tries = 0;
            while gt.len() < fanout.min(n.saturating_sub(1)) && tries < 4 * fanout + 8 {
                tries += 1;
                let m = ms[self.rng.gen_range(0..n)];
                if m != self.id && !gt.contains(&m) {
                    gt.push(m);
                }
            }
            g.round(&gt, &mut ctx);
        }
        self.scratch_targets = targets;
    }

    /// Approximate bytes of protocol state held by this node.
    pub fn state_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.peers.capacity() * std::mem::size_of::<Peer>()
            + self.peer_index.capacity() * 16
            + self.in_view.capacity() * 16
            + self.view.members.capacity() * 8
            + self
                .view
                .groups
                .iter()
                .map(|gv| 16 + gv.members.capacity() * 4 + gv.streams.capacity() * 4)
                .sum::<usize>()
            + self.groups.values().map(|g| g.approx_bytes()).sum::<usize>()
            + self.out.pending() * self.settings.max_datagram
            + self.events.len() * 64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MILLIS;

    /// Deliver every transmit at once between `nodes` (ids = indices), for `rounds` rounds.
    fn run(nodes: &mut [Node], until: Time, drop: impl Fn(NodeId, NodeId) -> bool) -> Vec<(NodeId, Event)> {
        let mut events = Vec::new();
        let mut now = 0;
        while now <= until {
            for n in nodes.iter_mut() {
                n.handle_timeout(now);
            }
            loop {
                let mut moved = false;
                for i in 0..nodes.len() {
                    while let Some((dest, payload)) =
                        nodes[i].poll_transmit().map(|t| (t.dest, t.payload.to_vec()))
                    {
                        moved = true;
                        let from = nodes[i].id();
                        if !drop(from, dest) {
                            nodes[dest as usize].handle_packet(now, from, &payload);
                        }
                    }
                }
                if !moved {
                    break;
                }
            }
            for n in nodes.iter_mut() {
                while let Some(e) = n.poll_event() {
                    events.push((n.id(), e));
                }
            }
            now += 10 * MILLIS;
        }
        events
    }

    fn cluster(n: u32) -> Vec<Node> {
        (0..n)
            .map(|i| {
                let mut node = Node::new(i, 1, &[0], Settings::default(), 0, u64::from(i) + 1);
                node.join(0, 7);
                node
            })
            .collect()
    }

    #[test]
    fn members_converge_to_one_view() {
        let mut nodes = cluster(5);
        run(&mut nodes, 2_000 * MILLIS, |_, _| false);
        let v = nodes[0].view().clone();
        assert_eq!(v.members.len(), 5);
        assert_eq!(v.group(7).map(|m| m.len()), Some(5));
        for n in &nodes {
            assert_eq!(n.view().id, v.id);
        }
    }

    /// A sender faster than the receivers' budget: receivers give up the oldest (already
    /// delivered) messages instead of dropping everything new; without loss everything
    /// arrives, in order, and every member stays within its budget.
    #[test]
    fn a_sender_faster_than_the_budget_is_still_delivered_in_order() {
        let settings = Settings {
            group_budget_bytes: 64 * (crate::SLOT_OVERHEAD + 4),
            ..Settings::default()
        };
        let mut nodes: Vec<Node> = (0..4u32)
            .map(|i| {
                let mut node = Node::new(i, 1, &[0], settings.clone(), 0, u64::from(i) + 1);
                node.join(0, 7);
                node
            })
            .collect();
        run(&mut nodes, 2_000 * MILLIS, |_, _| false);
        for i in 0..1000u32 {
            nodes[1].submit(0, 7, 0, &i.to_le_bytes()).unwrap();
        }
        let ev = run(&mut nodes, 100 * MILLIS, |_, _| false);
        for n in [0, 2, 3] {
            let seqs: Vec<u64> = ev
                .iter()
                .filter_map(|(at, e)| match e {
                    Event::Deliver { sender: 1, seq, .. } if *at == n => Some(*seq),
                    _ => None,
                })
                .collect();
            assert_eq!(seqs, (0..1000).collect::<Vec<_>>(), "node {n}");
            assert!(!ev
                .iter()
                .any(|(at, e)| *at == n && matches!(e, Event::Lost { .. })));
        }
        for n in &nodes {
            assert!(n.retained_bytes() <= n.settings().group_budget_bytes);
        }
    }

    #[test]
    fn multicast_reaches_everyone_fifo() {
        let mut nodes = cluster(6);
        run(&mut nodes, 2_000 * MILLIS, |_, _| false);
        for i in 0..20u8 {
            nodes[1].submit(0, 7, 0, &[i]).unwrap();
        }
        let ev = run(&mut nodes, 3_000 * MILLIS, |_, _| false);
        for n in [0, 2, 3, 4, 5] {
            let seqs: Vec<u64> = ev
                .iter()
                .filter_map(|(at, e)| match e {
                    Event::Deliver { sender: 1, seq, .. } if *at == n => Some(*seq),
                    _ => None,
                })
                .collect();
            assert_eq!(seqs, (0..20).collect::<Vec<_>>(), "node {n}");
        }
    }

    #[test]
    fn gossip_repairs_a_dead_tree_link() {
        let mut nodes = cluster(6);
        run(&mut nodes, 2_000 * MILLIS, |_, _| false);
        let before = nodes[0].counters().retransmits_sent + nodes[2].counters().retransmits_sent;
        nodes[0].submit(0, 7, 0, b"x").unwrap();
        // Drop every stage-1 copy sent by node 0 in the first step (its tree children).
        let mut first = true;
        let mut delivered = 0;
        for step in 0..100 {
            let now = 2_000 * MILLIS + step * 10 * MILLIS;
            for n in nodes.iter_mut() {
                n.handle_timeout(now);
            }
            for i in 0..nodes.len() {
                while let Some((dest, payload)) =
                    nodes[i].poll_transmit().map(|t| (t.dest, t.payload.to_vec()))
                {
                    if first && i == 0 {
                        continue;
                    }
                    nodes[dest as usize].handle_packet(now, i as u32, &payload);
                }
            }
            first = false;
            for n in nodes.iter_mut() {
                while let Some(e) = n.poll_event() {
                    if matches!(e, Event::Deliver { .. }) {
                        delivered += 1;
                    }
                }
            }
        }
        assert_eq!(delivered, 5, "5 members via gossip");
        let after: u64 = nodes.iter().map(|n| n.counters().retransmits_sent).sum();
        assert!(after > before);
    }

    /// Every datagram within `max_datagram`, on every node.
    fn assert_no_oversize(nodes: &[Node]) {
        for n in nodes {
            assert_eq!(n.counters().oversize_datagrams, 0, "node {}", n.id());
        }
    }

    #[test]
    fn a_large_cluster_converges_with_views_in_parts() {
        let mut nodes = cluster(200);
        run(&mut nodes, 3_000 * MILLIS, |_, _| false);
        let v = nodes[0].view().clone();
        assert_eq!(v.members.len(), 200);
        assert_eq!(v.group(7).map(|m| m.len()), Some(200));
        for n in &nodes {
            assert_eq!(n.view().id, v.id, "node {}", n.id());
            assert_eq!(n.counters().bad_view_parts, 0);
        }
        assert_no_oversize(&nodes);
        assert!(
            nodes[0].counters().views_sent > 199 * 3,
            "views are sent in several parts"
        );
    }

    /// A view of `n` members (ids `0..n`) with two groups, installed by node 0.
    fn big_view(counter: u64, n: u32) -> View {
        View {
            id: ViewId {
                counter,
                coordinator: 0,
                coordinator_incarnation: 1,
            },
            members: (0..n).map(|node| Member { node, incarnation: 1 }).collect(),
            groups: vec![
                GroupView {
                    id: 3,
                    members: (0..n).step_by(3).collect(),
                    streams: (0..n).step_by(3).map(|i| i + 100).collect(),
                },
                GroupView {
                    id: 7,
                    members: (0..n).collect(),
                    streams: (0..n).map(|i| i + 1).collect(),
                },
            ],
        }
    }

    /// The datagrams node 0 sends to `to` for `view` (one part each).
    fn view_datagrams(view: &View, to: NodeId) -> Vec<Vec<u8>> {
        let mut coord = Node::new(0, 1, &[], Settings::default(), 0, 1);
        coord.view = Arc::new(view.clone());
        coord.send_view(to);
        let mut out = Vec::new();
        let max = coord.settings().max_datagram;
        while let Some(t) = coord.poll_transmit() {
            assert!(t.payload.len() <= max);
            out.push(t.payload.to_vec());
        }
        assert_eq!(coord.counters().oversize_datagrams, 0);
        out
    }

    #[test]
    fn a_view_in_shuffled_duplicated_parts_installs_once() {
        let view = big_view(5, 1000);
        let dgs = view_datagrams(&view, 9);
        assert!(dgs.len() > 10, "{} parts", dgs.len());
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        let mut order: Vec<&Vec<u8>> = dgs.iter().chain(dgs.iter().step_by(2)).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.gen_range(0..=i));
        }
        let mut node = Node::new(9, 1, &[0], Settings::default(), 0, 9);
        for d in &order {
            node.handle_packet(0, 0, d);
        }
        assert_eq!(node.view().as_ref(), &view);
        assert_eq!(node.counters().views_installed, 1);
        let changes = std::iter::from_fn(|| node.poll_event())
            .filter(|e| matches!(e, Event::ViewChange(_)))
            .count();
        assert_eq!(changes, 1);
        assert_eq!(node.counters().bad_view_parts, 0);
        assert!(node.assembling.is_empty());
    }

    #[test]
    fn a_lost_part_does_not_wedge_later_views() {
        let v5 = big_view(5, 500);
        let v6 = big_view(6, 500);
        let mut node = Node::new(9, 1, &[0], Settings::default(), 0, 9);
        // View 5 misses its last part: nothing installed, the rest held.
        let d5 = view_datagrams(&v5, 9);
        for d in &d5[..d5.len() - 1] {
            node.handle_packet(0, 0, d);
        }
        assert_eq!(node.counters().views_installed, 0);
        assert_eq!(node.assembling.len(), 1);
        // A re-sent complete set (answering a view request) completes it.
        for d in &d5 {
            node.handle_packet(0, 0, d);
        }
        assert_eq!(node.view().as_ref(), &v5);
        // View 6 misses its first part; a newer view 7 still installs, and drops view 6.
        let d6 = view_datagrams(&v6, 9);
        for d in &d6[1..] {
            node.handle_packet(0, 0, d);
        }
        assert_eq!(node.view().id.counter, 5);
        let v7 = big_view(7, 400);
        for d in &view_datagrams(&v7, 9) {
            node.handle_packet(0, 0, d);
        }
        assert_eq!(node.view().as_ref(), &v7);
        assert!(node.assembling.is_empty());
        // Parts of older views are ignored; at most `VIEW_ASSEMBLIES` views are held.
        for d in &d6 {
            node.handle_packet(0, 0, d);
        }
        assert_eq!(node.view().id.counter, 7);
        for c in 10..20 {
            let d = view_datagrams(&big_view(c, 500), 9);
            node.handle_packet(0, 0, &d[0]);
            assert!(node.assembling.len() <= VIEW_ASSEMBLIES);
        }
        let held: Vec<u64> = node.assembling.iter().map(|a| a.id.counter).collect();
        assert_eq!(held.iter().min(), Some(&16), "the newest are held: {held:?}");
        assert_eq!(node.counters().views_installed, 2);
    }

    #[test]
    fn view_parts_disagreeing_with_held_parts_are_refused() {
        let view = big_view(5, 500);
        let d = view_datagrams(&view, 9);
        let other = big_view(5, 499);
        let e = view_datagrams(&other, 9);
        let mut node = Node::new(9, 1, &[0], Settings::default(), 0, 9);
        node.handle_packet(0, 0, &d[0]);
        node.handle_packet(0, 0, &e[1]);
        assert_eq!(node.counters().bad_view_parts, 1);
        for p in &d[1..] {
            node.handle_packet(0, 0, p);
        }
        assert_eq!(node.view().as_ref(), &view);
    }

    /// Views of a cluster too large for one datagram still reach a node through the view
    /// request of heartbeats showing a newer view, with parts lost on the way.
    #[test]
    fn a_view_request_repairs_lost_parts() {
        let mut nodes = cluster(150);
        // Drop the first transmits from the coordinator to node 5 (whole parts lost).
        let dropped = std::cell::Cell::new(0);
        run(&mut nodes, 3_000 * MILLIS, |from, to| {
            if from == 0 && to == 5 && dropped.get() < 40 {
                dropped.set(dropped.get() + 1);
                return dropped.get() % 2 == 0;
            }
            false
        });
        let v = nodes[0].view().clone();
        assert_eq!(v.members.len(), 150);
        for n in &nodes {
            assert_eq!(n.view().id, v.id, "node {}", n.id());
        }
        assert_no_oversize(&nodes);
    }

    #[test]
    fn rejects_oversized_and_unjoined() {
        let mut n = Node::new(1, 1, &[], Settings::default(), 0, 1);
        assert_eq!(n.submit(0, 9, 0, b"x"), Err(SubmitError::NotJoined(9)));
        n.join(0, 9);
        assert!(matches!(
            n.submit(0, 9, 0, &vec![0; (1 << 20) + 1]),
            Err(SubmitError::TooLarge { .. })
        ));
        n.handle_packet(0, 2, b"garbage");
        assert_eq!(n.counters().decode_errors, 1);
    }
}
