//! Ordered groups inside a [`crate::Node`]: one [`OrderedMember`] per joined ordered group,
//! the memory-node replicas this node hosts for any group (primary or backup, placed by
//! [`choose_memnode_hosts`] over the cluster view), and the transport between them: every
//! minitransaction, payload and state transfer travels as `Ordered` messages of the wire,
//! fragmented to fit `max_datagram` and reassembled here (bounded). The node feeds the
//! cluster view (placement, promotion, majority) and SWIM's suspicions in.
//!
//! Payloads go point to point to the members of the sender's ordered view (not through
//! the bimodal trees: those follow the cluster view's group lists and streams, which an
//! ordered group does not have); a member that misses one reads it from the sender's queue
//! on the memory node (pull repair), so no gossip repair is needed.

use super::{
    choose_backup, choose_memnode_hosts, list_slot_offset, ConfigEvent, EpochId, EvsMember, OrderedCounters,
    OrderedMember, OrderedSettings, Output, PartitionPolicy, RemoveReason, Status, ViewEvent, ENTRY_BYTES,
    LIST, MEMNODE,
};
use crate::minitx::{MemnodeId, MemoryNode, MemoryNodeCounters, MinitxSettings};
use crate::{GroupId, NodeId, Time};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use thiserror::Error;
use tutti_wire::minitx::{kind as mtkind, HEADER_LEN as MINITX_HEADER_LEN};
use tutti_wire::packet::{
    memnode_message, push_payload_run, split_committed, split_memnode_message, split_ordered_payload,
    split_payload_run, start_payload_run, OrderedCommitted, OrderedHeader, OrderedKind, OrderedLayout,
    OrderedPayloadHeader, OrderedPlacement, DATAGRAM_HEADER_LEN, MAX_COMMITTED_ENTRIES,
    MAX_ORDERED_FRAGMENTS, MESSAGE_HEADER_LEN, ORDERED_HEADER_LEN, PAYLOAD_RUN_ITEM_LEN,
};

/// Partial ordered messages held for reassembly at once; beyond, the oldest is dropped.
pub const MAX_PARTIALS: usize = 256;
/// Bytes of partial ordered messages held at once; beyond, the oldest is dropped.
pub const MAX_PARTIAL_BYTES: usize = 16 << 20;
/// A partial message not completed within this long is dropped (its sender resends).
pub const PARTIAL_TIMEOUT: Time = 2_000 * crate::MILLIS;
/// Whole messages queued for the wire; beyond, new ones are dropped (counted; every
/// ordered message is resent by its protocol).
pub const MAX_QUEUED_MESSAGES: usize = 65_536;

/// Why `join_ordered` refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OrderedError {
    #[error("already a member of ordered group {0:#x} (leave it first)")]
    AlreadyJoined(GroupId),
    #[error("invalid ordered settings: {0}")]
    BadSettings(&'static str),
}

/// A change of this node's standing in an ordered group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderedStatusEvent {
    /// Outside a majority: nothing is delivered until it is back in one.
    Minority,
    /// Back in a majority.
    Majority,
    /// Out of the group (`Left` after `leave_ordered`); join again for a state transfer.
    Removed(RemoveReason),
}

/// What the host hands the node's application (see `crate::Event`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    Deliver {
        group: GroupId,
        sender: NodeId,
        position: u64,
        safe: bool,
        payload: Vec<u8>,
    },
    View {
        group: GroupId,
        view: ViewEvent,
    },
    SnapshotRequest {
        group: GroupId,
        position: u64,
    },
    Installed {
        group: GroupId,
        position: u64,
        snapshot: Vec<u8>,
    },
    Status {
        group: GroupId,
        status: OrderedStatusEvent,
    },
    /// `evs` groups: a configuration change (transitional or regular), in the order.
    Configuration {
        group: GroupId,
        config: ConfigEvent,
    },
}

/// Counters of the ordered transport and of the memory nodes hosted here (monotonic).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderedHostCounters {
    /// Whole ordered messages sent / received (after reassembly), fragments sent.
    pub messages_sent: u64,
    pub messages_received: u64,
    pub fragments_sent: u64,
    /// Payload runs disseminated (each one message per destination, carrying a sender's
    /// consecutive payloads).
    pub payload_runs_sent: u64,
    /// Partial messages dropped (bounds or timeout), fragments that disagreed with their
    /// partial, and messages dropped because the send queue was full.
    pub partials_dropped: u64,
    pub fragments_refused: u64,
    pub send_dropped: u64,
    /// Messages whose body did not parse (bad layout or payload header).
    pub malformed: u64,
    /// Messages for a group this node neither is a member of nor hosts a replica of, or a
    /// memory-node message for a group whose placement does not name this node.
    pub unrouted: u64,
    /// Memory-node messages naming a layout that differs from the replica's.
    pub layout_mismatches: u64,
    /// Replicas created here, and backups promoted here.
    pub replicas_created: u64,
    pub promotions: u64,
    /// Failovers after which the placement named a new backup (state transfer follows).
    pub backups_chosen: u64,
    /// `evs`: list-epoch memory nodes created here (this node's member opened the epoch
    /// and founds it), and those freed once this node's member no longer uses their list.
    pub epoch_replicas_created: u64,
    pub epoch_replicas_freed: u64,
    /// Pumps cut short after `MAX_PUMP_ROUNDS` passes that all made progress (members
    /// and memory nodes on this node answering each other in a loop: a bug, must stay 0);
    /// what is left goes on at the next timeout instead of wedging the node.
    pub pump_rounds_capped: u64,
    /// Joins of a group this node had never placed that asked the view where its memory
    /// node is (`Locate`); placements learned from an answer; searches that got none (the
    /// group is new: placed from this node's view); `Locate`s answered here; and a member's
    /// memory-node messages held (or dropped, over `MAX_HELD_WHILE_LOCATING`) meanwhile.
    pub locates: u64,
    pub placements_learned: u64,
    pub locates_unanswered: u64,
    pub locates_answered: u64,
    /// Placements a primary here announced to nodes new to its view.
    pub placements_announced: u64,
    pub held_while_locating: u64,
    pub dropped_while_locating: u64,
    /// `Committed` pushes sent by a backup replica here (one per member told), and those
    /// received that did not come from the group's backup at this node's placement.
    pub committed_sent: u64,
    pub committed_refused: u64,
    /// Payloads this node's member took from the queue writes its replica of the group's
    /// memory node applied (an append at the primary, a replicated record at the backup):
    /// a sender disseminates nothing to the memory node's hosts.
    pub payloads_tapped: u64,
    /// Disseminated payloads (runs) whose header names a sender other than the node they
    /// came from: a member disseminates only its own messages.
    pub payloads_refused: u64,
}

/// A join's search for where its group's memory node runs (`Locate`, answered by
/// `Placement`). A node places a group from the cluster view it first deals with the
/// group in, so a node added to the cluster after the group was placed would place it
/// elsewhere (its own view ranks other nodes first) and join a list of its own. Until an
/// answer comes (or `LOCATE_TRIES` asks went unanswered: the group is new), the member's
/// memory-node messages are held and then sent where the answer says.
struct Locating {
    asked: Time,
    tries: u32,
    /// Nodes that answered they have not placed the group: once every other node of the
    /// view has, the group is new and placed from this node's view at once.
    unknown: BTreeSet<NodeId>,
    held: Vec<Vec<u8>>,
}

/// A `Placement` message for `p`.
fn placement_message(p: &Placement) -> [u8; OrderedPlacement::SIZE] {
    OrderedPlacement {
        primary: p.primary,
        backup: p.backup.unwrap_or(0),
        has_backup: u8::from(p.backup.is_some()),
        reserved: [0; 7],
        epoch: p.epoch,
    }
    .to_bytes()
}

/// The placement a `Placement` message names (epoch 1 or more).
fn placement_from(m: &OrderedPlacement) -> Placement {
    Placement {
        primary: m.primary,
        backup: (m.has_backup == 1).then_some(m.backup),
        epoch: m.epoch,
    }
}

/// Asks a joiner sends before it places the group from its own view.
const LOCATE_TRIES: u32 = 3;
/// Memory-node messages a locating member's host holds; beyond, they are dropped (the
/// coordinator resends them).
const MAX_HELD_WHILE_LOCATING: usize = 64;

/// Where a group's memory node runs: learned from the nodes that hold it (`Locate`, a
/// primary's announcement, a primary's state transfer) or, for a group nobody placed,
/// placed from this node's cluster view; moved only by failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub primary: NodeId,
    pub backup: Option<NodeId>,
    pub epoch: u64,
}

struct Hosted {
    member: OrderedMember,
    settings: OrderedSettings,
    /// Suspicions told to the member: final ones (`set_suspected`, removed for them) and
    /// all of them (`set_doubted`).
    suspected: BTreeSet<NodeId>,
    doubted: BTreeSet<NodeId>,
    in_majority: bool,
    /// The application left: drop the member once it is removed.
    leaving: bool,
}

struct Replica {
    node: MemoryNode,
    layout: OrderedLayout,
}

/// `evs`: this node's member of an `evs` group ([`EvsMember`]); its side comes from the
/// node (`Node` computes it from the cluster view, `OrderedHost::set_evs_side`).
struct HostedEvs {
    member: EvsMember,
    settings: OrderedSettings,
    /// The last side number given to the member.
    number: Option<u32>,
    /// The application left: drop the member once its leave is in the order.
    leaving: bool,
    /// Its leave is in the order (`Removed(Left)`).
    left: bool,
}

/// `evs`: the memory node of one list epoch, run here because this node founds the epoch
/// (the lowest node of the side that opened it: `EvsMember::set_side`).
struct EpochReplica {
    node: MemoryNode,
    layout: OrderedLayout,
    epoch: EpochId,
}

struct Partial {
    from: NodeId,
    group: GroupId,
    msg: u32,
    kind: u8,
    total: u32,
    chunk: usize,
    frags: Vec<Option<Vec<u8>>>,
    have: usize,
    bytes: usize,
    started: Time,
}

/// A whole message to send (the node fragments it into datagrams).
pub struct Outgoing {
    pub dest: NodeId,
    pub group: GroupId,
    pub kind: OrderedKind,
    pub msg: u32,
    pub bytes: Vec<u8>,
}

/// A group's member that takes messages: an `evs` group's, or a `majority` list's.
enum Sending<'a> {
    Evs(&'a mut EvsMember),
    List(&'a mut OrderedMember),
}

/// Most passes of one `pump` (see `OrderedHostCounters::pump_rounds_capped`): a pass
/// moves every queued output and local message, so a legitimate pump needs a handful.
const MAX_PUMP_ROUNDS: u32 = 10_000;

pub(crate) struct OrderedHost {
    me: NodeId,
    incarnation: u32,
    minitx: MinitxSettings,
    groups: BTreeMap<GroupId, Hosted>,
    /// `evs` groups this node is a member of (a group is `evs` or `majority` everywhere).
    evs: BTreeMap<GroupId, HostedEvs>,
    /// An `evs` member asked for a new view (`Output::NewSideWanted`); taken by the node.
    new_view_wanted: bool,
    /// `evs` list-epoch memory nodes run here, by group and memory-node id. Bounded: one
    /// is freed as soon as this node's member of the group neither is installed nor
    /// gathers in its list, so at most two per `evs` group joined here.
    epoch_replicas: BTreeMap<(GroupId, MemnodeId), EpochReplica>,
    /// The highest side number an `evs` member dropped here was given: a later member
    /// waits for a larger one (a rejoin in the same cluster view would otherwise open the
    /// same list epoch again, with transaction ids its memory node already answered).
    evs_retired_number: u32,
    /// The highest minitransaction seq a member dropped from `groups` reached: a member
    /// created later numbers its transactions from there (`first_txn_seq`).
    retired_txn_seq: u64,
    replicas: BTreeMap<GroupId, Replica>,
    placements: BTreeMap<GroupId, Placement>,
    /// Joins waiting to learn where their group's memory node is.
    locating: BTreeMap<GroupId, Locating>,
    /// Live members of the installed cluster view, sorted.
    view_members: Vec<NodeId>,
    /// Peers SWIM suspects or holds failed, and since when (without a break).
    swim_suspects: BTreeMap<NodeId, Time>,
    /// Members of the largest cluster view installed (majority is judged against it).
    max_view: usize,
    partials: VecDeque<Partial>,
    partial_bytes: usize,
    next_msg: u32,
    out: VecDeque<Outgoing>,
    /// Messages for this node itself (member and replica on the same node).
    local: VecDeque<(GroupId, OrderedKind, Vec<u8>)>,
    events: VecDeque<HostEvent>,
    counters: OrderedHostCounters,
    /// Answers for the application-region coordinator (`crate::regions`): `ToMember`
    /// messages of the reserved region group, which has no member here. Bounded.
    region_replies: VecDeque<(NodeId, Vec<u8>)>,
    /// `pump`'s list of group ids, kept between calls (no allocation per datagram).
    scratch_ids: Vec<GroupId>,
    /// `push_committed`'s list of destinations, kept between calls likewise.
    scratch_nodes: Vec<NodeId>,
    /// `pump`'s list of `evs` epoch memory nodes, kept between calls likewise.
    scratch_epochs: Vec<(GroupId, MemnodeId)>,
    /// Groups [`OrderedHost::queue`] took messages for since the last `run_queued`.
    queued: Vec<GroupId>,
    /// Largest payload run (`OrderedKind::PayloadRun`): what one datagram carries, so a
    /// run is never fragmented (a lost fragment would lose the whole run).
    run_bytes: usize,
}

/// The datagram size `OrderedHost` sizes payload runs for until told otherwise (the
/// default `Settings::max_datagram`).
const DEFAULT_MAX_DATAGRAM: usize = 1472;

/// The tail of a `majority` group's list as `replica` holds it.
fn list_tail(replica: &MemoryNode) -> Option<u64> {
    super::entry::u64_at(replica.region(LIST)?, 0)
}

/// A `Committed` push of `replica`'s list entries (a list of `slots` entries) from `before`
/// to its tail (at most the last `MAX_COMMITTED_ENTRIES` of them); None if the tail did not
/// move past `before` or the list region is shorter than its layout says.
fn committed_message(
    replica: &MemoryNode,
    slots: u32,
    memnode: MemnodeId,
    epoch: u64,
    before: u64,
) -> Option<Vec<u8>> {
    let (list, after) = (replica.region(LIST)?, list_tail(replica)?);
    if after <= before || slots == 0 {
        return None;
    }
    let first = before.max(after.saturating_sub((MAX_COMMITTED_ENTRIES as u64).min(u64::from(slots))));
    let header = OrderedCommitted {
        memnode,
        reserved: [0; 6],
        epoch,
        tail: after,
        first,
    };
    let mut bytes = Vec::with_capacity(OrderedCommitted::SIZE + (after - first) as usize * ENTRY_BYTES);
    bytes.extend_from_slice(&header.to_bytes());
    for pos in first..after {
        let at = list_slot_offset(pos, slots) as usize;
        bytes.extend_from_slice(list.get(at..at + ENTRY_BYTES)?);
    }
    Some(bytes)
}

/// Whether `msg` is a state-transfer chunk of an epoch above `epoch`.
fn is_newer_snapshot(msg: &[u8], epoch: u64) -> bool {
    msg.get(3) == Some(&mtkind::SNAPSHOT)
        && matches!(
            tutti_wire::minitx::Message::decode(msg),
            Ok(tutti_wire::minitx::Message::Snapshot { epoch: e, .. }) if e > epoch
        )
}

/// Bytes of a snapshot message's own fields (epoch, lsn, index, count, chunk length).
const SNAPSHOT_FIELDS_LEN: usize = 28;

/// Body bytes of one ordered message that fit a datagram of `max_datagram` bytes.
fn message_room(max_datagram: usize) -> usize {
    max_datagram
        .saturating_sub(DATAGRAM_HEADER_LEN + MESSAGE_HEADER_LEN + ORDERED_HEADER_LEN)
        .max(1)
}

/// Whether payload `(sender, epoch, seq)` of `len` bytes extends `run` within `run_bytes`.
fn run_extends(
    run: &Option<RunOut>,
    (sender, epoch, seq): (NodeId, u64, u64),
    len: usize,
    run_bytes: usize,
) -> bool {
    run.as_ref()
        .is_some_and(|r| r.extends(sender, epoch, seq, len, run_bytes))
}

/// A run of one sender's payloads of consecutive seqs being encoded (`pump_member`):
/// disseminated as one `PayloadRun` message per destination instead of one message per
/// payload (one encoding, one queue entry and one receiver pass per datagram).
struct RunOut {
    sender: NodeId,
    epoch: u64,
    next_seq: u64,
    members: Vec<NodeId>,
    body: Vec<u8>,
}

impl RunOut {
    /// Whether the payload of `(sender, epoch, seq)`, `len` bytes, extends this run within
    /// `run_bytes`.
    fn extends(&self, sender: NodeId, epoch: u64, seq: u64, len: usize, run_bytes: usize) -> bool {
        self.sender == sender
            && self.epoch == epoch
            && self.next_seq == seq
            && self.body.len() + PAYLOAD_RUN_ITEM_LEN + len <= run_bytes
    }

    fn start(sender: NodeId, epoch: u64, seq: u64, members: Vec<NodeId>, run_bytes: usize) -> RunOut {
        let mut body = Vec::with_capacity(run_bytes);
        start_payload_run(&mut body, &OrderedPayloadHeader { sender, epoch, seq });
        RunOut {
            sender,
            epoch,
            next_seq: seq,
            members,
            body,
        }
    }

    fn push(&mut self, payload: &[u8]) {
        push_payload_run(&mut self.body, payload);
        self.next_seq += 1;
    }
}

fn layout_of(s: &OrderedSettings) -> OrderedLayout {
    OrderedLayout {
        list_slots: s.list_slots,
        max_members: s.max_members,
        queue_slots: s.queue_slots,
        max_payload: s.max_payload,
    }
}

fn settings_error(s: &OrderedSettings, minitx: &MinitxSettings) -> Option<&'static str> {
    if s.list_slots == 0 || s.lag_budget >= s.list_slots {
        return Some("lag_budget must be below list_slots (and list_slots above 0)");
    }
    if s.max_batch == 0
        || s.max_batch > u32::from(u16::MAX)
        || u64::from(s.max_batch) + u64::from(s.max_members) + u64::from(super::APPEND_ITEMS)
            > minitx.max_items as u64
    {
        // Every message of a batch is one write item of its append, every entry another.
        return Some("max_batch + max_members + 7 must not exceed the minitransaction max_items");
    }
    if s.max_members == 0 || s.queue_slots == 0 || s.read_batch == 0 {
        return Some("max_members, queue_slots and read_batch must be above 0");
    }
    let total: u64 = regions_of(s).iter().map(|r| u64::from(r.1)).sum();
    let sizes_ok = u64::from(s.list_slots) * 32 + 8 <= u64::from(u32::MAX)
        && u64::from(s.max_members) * u64::from(s.queue_slots) * (u64::from(s.max_payload) + 24)
            <= u64::from(u32::MAX);
    if !sizes_ok || total > minitx.max_memory {
        return Some("the memory node's regions exceed max_memory");
    }
    None
}

fn regions_of(s: &OrderedSettings) -> [(u32, u32); 3] {
    let list = 8u64 + u64::from(s.list_slots) * 32;
    let progress = (u64::from(s.max_members) + 1) * 32;
    let queues = u64::from(s.max_members) * u64::from(s.queue_slots) * (u64::from(s.max_payload) + 24);
    let c = |x: u64| u32::try_from(x).unwrap_or(u32::MAX);
    [
        (super::LIST, c(list)),
        (super::PROGRESS, c(progress)),
        (super::QUEUES, c(queues)),
    ]
}

/// The minitransaction settings of a group's memory node: the node's, with at most one
/// dormant reader per member slot of the group.
fn replica_minitx(minitx: &MinitxSettings, layout: &OrderedLayout) -> MinitxSettings {
    MinitxSettings {
        max_watchers: layout.max_members as usize,
        ..minitx.clone()
    }
}

fn settings_from_layout(l: &OrderedLayout) -> OrderedSettings {
    OrderedSettings {
        list_slots: l.list_slots,
        max_members: l.max_members,
        queue_slots: l.queue_slots,
        max_payload: l.max_payload,
        lag_budget: l.list_slots.saturating_sub(1),
        ..OrderedSettings::default()
    }
}

impl OrderedHost {
    /// Whether an `evs` member asked for a new view since the last call.
    pub fn take_new_view_wanted(&mut self) -> bool {
        std::mem::take(&mut self.new_view_wanted)
    }

    pub fn new(me: NodeId, incarnation: u32, minitx: MinitxSettings) -> OrderedHost {
        OrderedHost {
            me,
            incarnation,
            minitx,
            groups: BTreeMap::new(),
            evs: BTreeMap::new(),
            new_view_wanted: false,
            epoch_replicas: BTreeMap::new(),
            evs_retired_number: 0,
            retired_txn_seq: 0,
            replicas: BTreeMap::new(),
            placements: BTreeMap::new(),
            locating: BTreeMap::new(),
            view_members: vec![me],
            swim_suspects: BTreeMap::new(),
            max_view: 1,
            partials: VecDeque::new(),
            partial_bytes: 0,
            next_msg: 0,
            out: VecDeque::new(),
            local: VecDeque::new(),
            events: VecDeque::new(),
            counters: OrderedHostCounters::default(),
            region_replies: VecDeque::new(),
            scratch_ids: Vec::new(),
            scratch_epochs: Vec::new(),
            scratch_nodes: Vec::new(),
            queued: Vec::new(),
            run_bytes: message_room(DEFAULT_MAX_DATAGRAM),
        }
    }

    /// Hands back the payload of a delivered message of `group` (`HostEvent::Deliver`), or
    /// a disseminated copy once it is in a run, for reuse by its member (`majority` or
    /// `evs`); the driver calls it once it has copied the bytes out.
    pub fn recycle(&mut self, group: GroupId, payload: Vec<u8>) {
        if let Some(h) = self.groups.get_mut(&group) {
            h.member.recycle(payload);
        } else if let Some(h) = self.evs.get_mut(&group) {
            h.member.recycle(payload);
        }
    }

    /// Sizes payload runs for datagrams of `max_datagram` bytes (`Settings::max_datagram`).
    pub fn set_max_datagram(&mut self, max_datagram: usize) {
        self.run_bytes = message_room(max_datagram);
    }

    /// An answer for the application-region coordinator (see `region_replies`).
    pub fn poll_region_reply(&mut self) -> Option<(NodeId, Vec<u8>)> {
        self.region_replies.pop_front()
    }

    // ---- application calls ----

    pub fn join(&mut self, now: Time, group: GroupId, settings: OrderedSettings) -> Result<(), OrderedError> {
        if let Some(h) = self.groups.get(&group) {
            if h.member.status() != Status::Removed {
                return Err(OrderedError::AlreadyJoined(group));
            }
        }
        if self.evs.contains_key(&group) {
            return Err(OrderedError::AlreadyJoined(group));
        }
        if let Some(e) = settings_error(&settings, &self.minitx) {
            return Err(OrderedError::BadSettings(e));
        }
        if settings.partition == PartitionPolicy::Evs {
            if self.groups.contains_key(&group) {
                // A removed `majority` member of the same group: one policy per group.
                return Err(OrderedError::AlreadyJoined(group));
            }
            // No list yet: the member joins one with its first side (`set_evs_side`).
            let member = EvsMember::new(self.me, group, settings.clone(), self.minitx.clone());
            self.evs.insert(
                group,
                HostedEvs {
                    member,
                    settings,
                    number: None,
                    leaving: false,
                    left: false,
                },
            );
            return Ok(());
        }
        self.locate(now, group);
        let placement = self.placement(group);
        let mut member = OrderedMember::joiner(
            self.me,
            self.incarnation,
            group,
            placement.primary,
            settings.clone(),
            self.minitx.clone(),
        );
        // Every member of this node (incarnation) draws its transaction ids above those of
        // every member before it: a rejoin after a removal must not reuse them.
        let first_seq = self
            .groups
            .values()
            .map(|h| h.member.next_txn_seq())
            .fold(self.retired_txn_seq, u64::max);
        member.first_txn_seq(first_seq);
        member.handle_timeout(now);
        self.groups.insert(
            group,
            Hosted {
                member,
                settings,
                suspected: BTreeSet::new(),
                doubted: BTreeSet::new(),
                in_majority: true,
                leaving: false,
            },
        );
        self.refresh_group(now, group);
        self.pump(now);
        Ok(())
    }

    /// Places `group`'s memory node on first use: if this node never placed it and the
    /// view holds other nodes, the group may be placed already, from a view without this
    /// node, so it asks them (`Locate`) and places it from its own view only if none has.
    /// Meanwhile the placement is a guess, from which no replica is made. An ordered join
    /// calls it; so does the node for the application regions' memory node
    /// (`REGIONS_GROUP`).
    pub fn locate(&mut self, now: Time, group: GroupId) {
        if self.locating.contains_key(&group) {
            return;
        }
        let never_placed = !self.placements.contains_key(&group);
        self.placement(group);
        if !never_placed || self.view_members.iter().all(|&n| n == self.me) {
            return;
        }
        self.counters.locates += 1;
        self.locating.insert(
            group,
            Locating {
                asked: now,
                tries: 1,
                unknown: BTreeSet::new(),
                held: Vec::new(),
            },
        );
        self.ask_placement(group);
    }

    pub fn leave(&mut self, now: Time, group: GroupId) {
        if let Some(h) = self.evs.get_mut(&group) {
            h.leaving = true;
            if h.member.current().is_none() && h.member.gathering().is_none() {
                // In no list yet: nothing to announce.
                self.retire_evs(group);
            } else {
                h.member.leave(now);
            }
            self.pump(now);
            return;
        }
        let Some(h) = self.groups.get_mut(&group) else {
            return;
        };
        h.leaving = true;
        match h.member.status() {
            // Not in any view yet (or no more): nothing to announce.
            Status::Joining | Status::Removed => {
                self.retire(group);
            }
            Status::Installing | Status::Gathering | Status::Active => h.member.leave(now),
        }
        self.pump(now);
    }

    pub fn submit(
        &mut self,
        now: Time,
        group: GroupId,
        bytes: &[u8],
        safe: bool,
    ) -> Result<u64, super::SubmitRefused> {
        let r = match self.sending(group)? {
            Sending::Evs(m) => m.submit(now, bytes, safe),
            Sending::List(m) => m.submit(now, bytes, safe),
        };
        self.pump(now);
        r
    }

    /// The member a message for `group` goes to; refused for a group not here or leaving.
    fn sending(&mut self, group: GroupId) -> Result<Sending<'_>, super::SubmitRefused> {
        let (leaving, member) = if let Some(h) = self.evs.get_mut(&group) {
            (h.leaving, Sending::Evs(&mut h.member))
        } else {
            let h = self
                .groups
                .get_mut(&group)
                .ok_or(super::SubmitRefused::NotMember)?;
            (h.leaving, Sending::List(&mut h.member))
        };
        if leaving {
            return Err(super::SubmitRefused::NotMember);
        }
        Ok(member)
    }

    /// Queues a message as [`Self::submit`] does, without running the group's member or
    /// pumping; [`Self::run_queued`] runs every group queued to since (a driver takes a
    /// publish ring's frames, then runs the members once: one batch, not one per frame).
    pub fn queue(&mut self, group: GroupId, bytes: &[u8], safe: bool) -> Result<u64, super::SubmitRefused> {
        let r = match self.sending(group)? {
            Sending::Evs(m) => m.queue(bytes, safe),
            Sending::List(m) => m.queue(bytes, safe),
        };
        if r.is_ok() && !self.queued.contains(&group) {
            self.queued.push(group);
        }
        r
    }

    /// Runs the members of the groups [`Self::queue`] took messages for, then pumps once.
    pub fn run_queued(&mut self, now: Time) {
        if self.queued.is_empty() {
            return;
        }
        let mut queued = std::mem::take(&mut self.queued);
        for &group in &queued {
            if let Some(h) = self.evs.get_mut(&group) {
                h.member.run_queued(now);
            } else if let Some(h) = self.groups.get_mut(&group) {
                h.member.run_queued(now);
            }
        }
        queued.clear();
        self.queued = queued; // keeps its capacity
        self.pump(now);
    }

    pub fn snapshot_ready(&mut self, now: Time, group: GroupId, snapshot: &[u8]) {
        if let Some(h) = self.groups.get_mut(&group) {
            h.member.snapshot_ready(now, snapshot);
        }
        self.pump(now);
    }

    pub fn is_member(&self, group: GroupId) -> bool {
        self.groups.contains_key(&group) || self.evs.contains_key(&group)
    }

    /// This node's member of `evs` group `group`.
    pub fn evs_member(&self, group: GroupId) -> Option<&EvsMember> {
        self.evs.get(&group).map(|h| &h.member)
    }

    /// The `evs` groups this node is a member of (leaving ones included).
    pub fn evs_groups(&self) -> Vec<GroupId> {
        self.evs.keys().copied().collect()
    }

    /// The `evs` list epochs whose memory node runs here: (group, memory node, epoch).
    pub fn epoch_replicas(&self) -> Vec<(GroupId, MemnodeId, EpochId)> {
        self.epoch_replicas
            .iter()
            .map(|(&(g, id), r)| (g, id, r.epoch))
            .collect()
    }

    /// The `evs` list epochs of `group` whose memory node runs here, with the replica.
    pub fn epoch_replicas_of(&self, group: GroupId) -> impl Iterator<Item = (EpochId, &MemoryNode)> {
        self.epoch_replicas
            .range((group, MemnodeId::MIN)..=(group, MemnodeId::MAX))
            .map(|(_, r)| (r.epoch, &r.node))
    }

    /// `evs`: this node's side of `group` changed (the node computes it from the cluster
    /// view: `Node::evs_refresh_sides`). `number` grows with every cluster view and differs
    /// between concurrent sides; a number not above the last one is ignored (by the
    /// member), and so is one not above what a member dropped here had.
    pub fn set_evs_side(&mut self, now: Time, group: GroupId, number: u32, side: &[NodeId]) {
        let retired = self.evs_retired_number;
        let Some(h) = self.evs.get_mut(&group) else {
            return;
        };
        if number <= retired || h.number.is_some_and(|n| n >= number) {
            return;
        }
        h.number = Some(number);
        h.member.set_side(now, number, side);
        self.pump(now);
    }

    pub fn member(&self, group: GroupId) -> Option<&OrderedMember> {
        self.groups.get(&group).map(|h| &h.member)
    }

    pub fn member_counters(&self, group: GroupId) -> Option<&OrderedCounters> {
        self.groups.get(&group).map(|h| h.member.counters())
    }

    pub fn replica_counters(&self, group: GroupId) -> Option<&MemoryNodeCounters> {
        self.replicas.get(&group).map(|r| r.node.counters())
    }

    pub fn replica(&self, group: GroupId) -> Option<&MemoryNode> {
        self.replicas.get(&group).map(|r| &r.node)
    }

    pub fn placement_of(&self, group: GroupId) -> Option<Placement> {
        self.placements.get(&group).copied()
    }

    pub fn counters(&self) -> &OrderedHostCounters {
        &self.counters
    }

    // ---- driver calls ----

    pub fn poll_timeout(&self) -> Option<Time> {
        let members = self.groups.values().filter_map(|h| h.member.poll_timeout());
        let replicas = self.replicas.values().filter_map(|r| r.node.poll_timeout());
        let evs = self.evs.values().filter_map(|h| h.member.poll_timeout());
        let epochs = self.epoch_replicas.values().filter_map(|r| r.node.poll_timeout());
        let partial = self.partials.front().map(|p| p.started + PARTIAL_TIMEOUT);
        // Local messages left by a capped pump: due at once.
        let capped = (!self.local.is_empty()).then_some(0);
        let locating = self
            .locating
            .iter()
            .map(|(g, l)| l.asked + self.locate_retry(*g))
            .min();
        members
            .chain(locating)
            .chain(replicas)
            .chain(evs)
            .chain(epochs)
            .chain(partial)
            .chain(capped)
            .min()
    }

    pub fn handle_timeout(&mut self, now: Time) {
        for h in self.groups.values_mut() {
            if h.member.poll_timeout().is_some_and(|t| t <= now) {
                h.member.handle_timeout(now);
            }
        }
        for r in self.replicas.values_mut() {
            if r.node.poll_timeout().is_some_and(|t| t <= now) {
                r.node.handle_timeout(now);
            }
        }
        for h in self.evs.values_mut() {
            if h.member.poll_timeout().is_some_and(|t| t <= now) {
                h.member.handle_timeout(now);
            }
        }
        for r in self.epoch_replicas.values_mut() {
            if r.node.poll_timeout().is_some_and(|t| t <= now) {
                r.node.handle_timeout(now);
            }
        }
        while self
            .partials
            .front()
            .is_some_and(|p| p.started + PARTIAL_TIMEOUT <= now)
        {
            self.drop_oldest_partial();
        }
        let due: Vec<GroupId> = self
            .locating
            .iter()
            .filter(|(g, l)| l.asked + self.locate_retry(**g) <= now)
            .map(|(g, _)| *g)
            .collect();
        for g in due {
            let tries = self.locating.get(&g).map_or(0, |l| l.tries);
            if tries < LOCATE_TRIES {
                if let Some(l) = self.locating.get_mut(&g) {
                    l.tries += 1;
                    l.asked = now;
                }
                self.ask_placement(g);
            } else {
                // Nobody placed it: the group is new, placed from this node's view.
                self.counters.locates_unanswered += 1;
                self.located(g);
            }
        }
        self.pump(now);
    }

    pub fn poll_outgoing(&mut self) -> Option<Outgoing> {
        self.out.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<HostEvent> {
        self.events.pop_front()
    }

    /// The installed cluster view changed: its live members, sorted.
    pub fn set_view(&mut self, now: Time, members: Vec<NodeId>) {
        let before = std::mem::replace(&mut self.view_members, members);
        self.view_members.sort_unstable();
        self.view_members.dedup();
        // A member the view takes back (a partition healed) may still be held suspected
        // or failed by SWIM here, since before the heal, until it refutes: its suspicion
        // lasts the grace again from now (else its join would be answered by a removal).
        for n in &self.view_members {
            if before.binary_search(n).is_err() {
                if let Some(since) = self.swim_suspects.get_mut(n) {
                    *since = now;
                }
            }
        }
        self.max_view = self.max_view.max(self.view_members.len());
        let groups: Vec<GroupId> = self
            .placements
            .keys()
            .chain(self.groups.keys())
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for g in groups {
            self.failover(now, g);
            self.refresh_group(now, g);
        }
        // Nodes new to the view learn where the memory nodes whose primary runs here are
        // (they would place them from their own view, which may rank themselves first), as
        // this view leaves them: they never saw the views before it.
        let newcomers: Vec<NodeId> = self
            .view_members
            .iter()
            .copied()
            .filter(|n| *n != self.me && before.binary_search(n).is_err())
            .collect();
        if !newcomers.is_empty() {
            let announced: Vec<(GroupId, Placement)> = self
                .placements
                .iter()
                .filter(|(g, p)| p.primary == self.me && !self.locating.contains_key(g))
                .map(|(g, p)| (*g, *p))
                .collect();
            for (g, p) in announced {
                for &n in &newcomers {
                    self.counters.placements_announced += 1;
                    self.send(n, g, OrderedKind::Placement, placement_message(&p).to_vec());
                }
            }
        }
        self.pump(now);
    }

    /// Whether this node is a member (or joiner) of any ordered group.
    pub fn has_groups(&self) -> bool {
        !self.groups.is_empty() || !self.evs.is_empty()
    }

    /// SWIM's suspicions: the peers it suspects or holds failed (every gossip round).
    /// Suspicions and majority are evaluated again even when nothing changed here: the
    /// members' learned views move on their own.
    pub fn set_swim_suspects(&mut self, now: Time, suspects: BTreeSet<NodeId>) {
        self.swim_suspects.retain(|n, _| suspects.contains(n));
        for n in suspects {
            self.swim_suspects.entry(n).or_insert(now);
        }
        let groups: Vec<GroupId> = self.groups.keys().copied().collect();
        for g in groups {
            self.refresh_group(now, g);
        }
        self.pump(now);
    }

    /// One fragment arrived from `from`.
    pub fn handle_fragment(
        &mut self,
        now: Time,
        from: NodeId,
        header: &OrderedHeader,
        kind: OrderedKind,
        bytes: &[u8],
    ) {
        if header.count == 1 {
            self.counters.messages_received += 1;
            self.handle_whole(now, from, header.group, kind, bytes);
            self.pump(now);
            return;
        }
        if let Some(whole) = self.reassemble(now, from, header, bytes) {
            self.counters.messages_received += 1;
            self.handle_whole(now, from, header.group, kind, &whole);
        }
        self.pump(now);
    }

    // ---- internals ----

    /// Drops `group`'s member, keeping the transaction seq it reached.
    fn retire(&mut self, group: GroupId) {
        if let Some(h) = self.groups.remove(&group) {
            self.retired_txn_seq = self.retired_txn_seq.max(h.member.next_txn_seq());
        }
    }

    fn placement(&mut self, group: GroupId) -> Placement {
        if let Some(p) = self.placements.get(&group) {
            return *p;
        }
        let hosts = choose_memnode_hosts(group, &self.view_members);
        let p = Placement {
            primary: hosts.first().copied().unwrap_or(self.me),
            backup: hosts.get(1).copied(),
            epoch: 1,
        };
        self.placements.insert(group, p);
        p
    }

    /// The view dropped a memory-node host: promote the backup (primary gone) or run the
    /// primary without a backup (backup gone); then, with a placement lacking a backup
    /// and another node in the view, name a new backup (the same on every node:
    /// [`choose_backup`]), which the primary brings up to date by state transfer.
    fn failover(&mut self, now: Time, group: GroupId) {
        let Some(mut p) = self.placements.get(&group).copied() else {
            return;
        };
        let alive = |n: NodeId| self.view_members.binary_search(&n).is_ok();
        if !alive(p.primary) {
            let Some(b) = p.backup.filter(|b| alive(*b)) else {
                // Both gone (or the primary before its new backup was named): the memory
                // node is lost and the group stops.
                return;
            };
            p = Placement {
                primary: b,
                backup: None,
                epoch: p.epoch + 1,
            };
            if b == self.me {
                if let Some(r) = self.replicas.get_mut(&group) {
                    r.node.promote(now, p.epoch);
                    r.node.set_placement(MEMNODE, self.me);
                    self.counters.promotions += 1;
                }
            }
            self.placements.insert(group, p);
            if let Some(h) = self.groups.get_mut(&group) {
                h.member.set_memnode_host(b);
            }
        } else if p.backup.is_some_and(|b| !alive(b)) {
            p.backup = None;
            self.placements.insert(group, p);
            if p.primary == self.me {
                if let Some(r) = self.replicas.get_mut(&group) {
                    r.node.drop_backup();
                }
            }
        }
        if p.backup.is_none() {
            let Some(b) = choose_backup(group, &self.view_members, p.primary) else {
                return; // alone in the view: the primary runs without a backup
            };
            p.backup = Some(b);
            p.epoch += 1;
            self.placements.insert(group, p);
            self.counters.backups_chosen += 1;
            if p.primary == self.me {
                if let Some(r) = self.replicas.get_mut(&group) {
                    r.node.set_backup(now, b, p.epoch);
                }
            }
        }
    }

    /// Snapshot bytes per chunk: a chunk's `ToMemnode` message fits one datagram.
    fn snapshot_chunk(&self) -> usize {
        self.run_bytes
            .saturating_sub(std::mem::size_of::<OrderedLayout>() + MINITX_HEADER_LEN + SNAPSHOT_FIELDS_LEN)
            .max(64)
    }

    /// Tells `group`'s member what the view and SWIM say: suspicions and majority.
    fn refresh_group(&mut self, now: Time, group: GroupId) {
        let view_members = &self.view_members;
        let swim = &self.swim_suspects;
        let me = self.me;
        let Some(h) = self.groups.get_mut(&group) else {
            return;
        };
        // The view as learned: the delivered one may lag far behind (a member waiting
        // for a payload or a safe entry must still see the group's majority).
        let mut members = h.member.learned_members();
        if members.is_empty() {
            members = h.member.view().1;
        }
        // Out of the cluster view: removed at once. Suspected by SWIM (or held failed):
        // doubted at once (removed as `Suspected` if it lags too), removed once the
        // suspicion has lasted `suspicion_grace` (a refuted one removes nothing).
        let grace = h.settings.suspicion_grace;
        let out = |n: NodeId| n != me && view_members.binary_search(&n).is_err();
        let doubted = |n: NodeId| n != me && (out(n) || swim.contains_key(&n));
        let down = |n: NodeId| {
            out(n)
                || (n != me
                    && swim
                        .get(&n)
                        .is_some_and(|&since| now.saturating_sub(since) >= grace))
        };
        let now_doubted: BTreeSet<NodeId> = members.iter().copied().filter(|&n| doubted(n)).collect();
        for &n in now_doubted.difference(&h.doubted) {
            h.member.set_doubted(n, true);
        }
        for &n in h.doubted.difference(&now_doubted) {
            h.member.set_doubted(n, false);
        }
        h.doubted = now_doubted;
        let now_suspected: BTreeSet<NodeId> = members.iter().copied().filter(|&n| down(n)).collect();
        for &n in now_suspected.difference(&h.suspected) {
            h.member.set_suspected(now, n, true);
        }
        for &n in h.suspected.difference(&now_suspected) {
            h.member.set_suspected(now, n, false);
        }
        h.suspected = now_suspected;
        // Majority: this node's cluster view holds more than half of the largest cluster
        // view it installed. Judged on the cluster, not on the group's view: a member far
        // behind holds an old group view, and a member outside a majority does not read
        // on, so a majority judged on that view might never come back.
        let in_majority = 2 * view_members.len() > self.max_view;
        if in_majority != h.in_majority {
            h.in_majority = in_majority;
            h.member.set_in_majority(now, in_majority);
            if in_majority {
                self.events.push_back(HostEvent::Status {
                    group,
                    status: OrderedStatusEvent::Majority,
                });
            }
        }
    }

    /// Sends a run of payloads once to each of its members but this node (duplicates
    /// dropped), encoded once.
    fn send_run(&mut self, group: GroupId, run: RunOut) {
        let RunOut {
            mut members, body, ..
        } = run;
        members.sort_unstable();
        members.dedup();
        members.retain(|&n| n != self.me);
        if let Some((&last, rest)) = members.split_last() {
            self.counters.payload_runs_sent += 1;
            for &n in rest {
                self.send(n, group, OrderedKind::PayloadRun, body.clone());
            }
            // The last one takes the encoded body itself (one copy fewer per run).
            self.send(last, group, OrderedKind::PayloadRun, body);
        }
    }

    /// Adds payload `(sender, epoch, seq)` to the run being encoded, or sends that run and
    /// starts another to `members` (wanted only then: `run_extends` says).
    fn add_to_run(
        &mut self,
        group: GroupId,
        run: &mut Option<RunOut>,
        (sender, epoch, seq): (NodeId, u64, u64),
        bytes: &[u8],
        members: Vec<NodeId>,
    ) {
        if !run_extends(run, (sender, epoch, seq), bytes.len(), self.run_bytes) {
            let next = RunOut::start(sender, epoch, seq, members, self.run_bytes);
            if let Some(full) = run.replace(next) {
                self.send_run(group, full);
            }
        }
        if let Some(r) = run.as_mut() {
            r.push(bytes);
        }
    }

    fn send(&mut self, dest: NodeId, group: GroupId, kind: OrderedKind, bytes: Vec<u8>) {
        if dest == self.me {
            self.local.push_back((group, kind, bytes));
            return;
        }
        if self.out.len() >= MAX_QUEUED_MESSAGES {
            self.counters.send_dropped += 1;
            return;
        }
        let msg = self.next_msg;
        self.next_msg = self.next_msg.wrapping_add(1);
        self.counters.messages_sent += 1;
        self.out.push_back(Outgoing {
            dest,
            group,
            kind,
            msg,
            bytes,
        });
    }

    /// Moves what members and replicas want done into the queues; runs local messages.
    fn pump(&mut self, now: Time) {
        // Runs once per datagram received: the group ids go through one reused buffer,
        // not a fresh `Vec` per pass.
        let mut ids = std::mem::take(&mut self.scratch_ids);
        let mut rounds = 0u32;
        loop {
            rounds += 1;
            if rounds > MAX_PUMP_ROUNDS {
                self.counters.pump_rounds_capped += 1;
                break;
            }
            let mut progressed = false;
            ids.clear();
            ids.extend(self.groups.keys().copied());
            for &g in &ids {
                progressed |= self.pump_member(now, g);
            }
            ids.clear();
            ids.extend(self.evs.keys().copied());
            for &g in &ids {
                progressed |= self.pump_evs(g);
            }
            let mut epoch_ids = std::mem::take(&mut self.scratch_epochs);
            epoch_ids.clear();
            epoch_ids.extend(self.epoch_replicas.keys().copied());
            for &k in &epoch_ids {
                while let Some((to, bytes)) = self
                    .epoch_replicas
                    .get_mut(&k)
                    .and_then(|r| r.node.poll_transmit())
                {
                    progressed = true;
                    // A primary without a backup only answers members.
                    let Some(layout) = self.epoch_replicas.get(&k).map(|r| r.layout) else {
                        break;
                    };
                    if matches!(
                        bytes.get(3),
                        Some(&mtkind::REPLY) | Some(&mtkind::DECIDE_ACK) | Some(&mtkind::WAKE)
                    ) {
                        self.send(to, k.0, OrderedKind::ToMember, bytes);
                    } else {
                        self.send(to, k.0, OrderedKind::ToMemnode, memnode_message(&layout, &bytes));
                    }
                }
            }
            self.scratch_epochs = epoch_ids;
            ids.clear();
            ids.extend(self.replicas.keys().copied());
            for &g in &ids {
                while let Some((to, bytes)) = self.replicas.get_mut(&g).and_then(|r| r.node.poll_transmit()) {
                    progressed = true;
                    let kind = if matches!(
                        bytes.get(3),
                        Some(&mtkind::REPLY) | Some(&mtkind::DECIDE_ACK) | Some(&mtkind::WAKE)
                    ) {
                        OrderedKind::ToMember
                    } else {
                        OrderedKind::ToMemnode
                    };
                    let bytes = if kind == OrderedKind::ToMemnode {
                        let layout = self.replicas.get(&g).map(|r| r.layout).unwrap_or(OrderedLayout {
                            list_slots: 0,
                            max_members: 0,
                            queue_slots: 0,
                            max_payload: 0,
                        });
                        memnode_message(&layout, &bytes)
                    } else {
                        bytes
                    };
                    self.send(to, g, kind, bytes);
                }
            }
            while let Some((g, kind, bytes)) = self.local.pop_front() {
                progressed = true;
                self.handle_whole(now, self.me, g, kind, &bytes);
            }
            if !progressed {
                break;
            }
        }
        self.scratch_ids = ids;
    }

    fn pump_member(&mut self, now: Time, group: GroupId) -> bool {
        let mut progressed = false;
        let mut run: Option<RunOut> = None;
        loop {
            let Some(h) = self.groups.get_mut(&group) else {
                // Gone (nothing retires a group in this loop): its run goes nowhere.
                return progressed;
            };
            // The first joiner of an empty list creates the group.
            if h.member.create_if_first(now) {
                progressed = true;
                continue;
            }
            let Some(o) = h.member.poll_output() else { break };
            progressed = true;
            let layout = layout_of(&h.settings);
            match o {
                Output::Minitx { to, bytes } => {
                    let bytes = memnode_message(&layout, &bytes);
                    match self.locating.get_mut(&group) {
                        // Sent where the memory node turns out to be.
                        Some(l) if l.held.len() < MAX_HELD_WHILE_LOCATING => {
                            self.counters.held_while_locating += 1;
                            l.held.push(bytes);
                        }
                        Some(_) => self.counters.dropped_while_locating += 1,
                        None => self.send(to, group, OrderedKind::ToMemnode, bytes),
                    }
                }
                Output::Held { to, held } => {
                    self.send(to, group, OrderedKind::Held, held.to_bytes().to_vec())
                }
                Output::Disseminate {
                    sender,
                    epoch,
                    seq,
                    bytes,
                } => {
                    let members = if run_extends(&run, (sender, epoch, seq), bytes.len(), self.run_bytes) {
                        Vec::new()
                    } else {
                        let mut members = h.member.learned_members();
                        members.extend(h.member.view().1);
                        // The memory node's hosts take the payload from the append that
                        // carries it (`payloads_tapped`); a host that misses it (a stale
                        // placement here, a backup catching up from a snapshot) reads it
                        // from the queue like any member that missed one.
                        if let (Some(p), false) =
                            (self.placements.get(&group), self.locating.contains_key(&group))
                        {
                            members.retain(|&n| n != p.primary && Some(n) != p.backup);
                        }
                        members
                    };
                    self.add_to_run(group, &mut run, (sender, epoch, seq), &bytes, members);
                    self.recycle(group, bytes);
                }
                Output::Deliver {
                    sender,
                    position,
                    safe,
                    bytes,
                    ..
                } => self.events.push_back(HostEvent::Deliver {
                    group,
                    sender,
                    position,
                    safe,
                    payload: bytes,
                }),
                Output::View(view) => {
                    self.events.push_back(HostEvent::View { group, view });
                    // The view changed: suspicions and majority follow it.
                    self.refresh_group(now, group);
                }
                Output::SnapshotRequest { group, position } => self
                    .events
                    .push_back(HostEvent::SnapshotRequest { group, position }),
                Output::Transfer { to, bytes } => self.send(to, group, OrderedKind::Transfer, bytes),
                Output::Installed { position, snapshot } => self.events.push_back(HostEvent::Installed {
                    group,
                    position,
                    snapshot,
                }),
                Output::Minority => self.events.push_back(HostEvent::Status {
                    group,
                    status: OrderedStatusEvent::Minority,
                }),
                Output::Removed { reason } => self.events.push_back(HostEvent::Status {
                    group,
                    status: OrderedStatusEvent::Removed(reason),
                }),
                // Only an `EvsMember` emits these; `majority` groups are hosted here.
                Output::Configuration(_) | Output::OpenEpoch { .. } | Output::NewSideWanted => {}
            }
        }
        if let Some(r) = run {
            self.send_run(group, r);
        }
        if self
            .groups
            .get(&group)
            .is_some_and(|h| h.leaving && h.member.status() == Status::Removed)
        {
            self.retire(group);
        }
        progressed
    }

    /// Moves what `group`'s `evs` member wants done into the queues; frees the epoch
    /// memory nodes its member no longer uses.
    fn pump_evs(&mut self, group: GroupId) -> bool {
        let mut progressed = false;
        let mut run: Option<RunOut> = None;
        loop {
            let Some(h) = self.evs.get_mut(&group) else {
                // Gone (nothing retires a group in this loop): its run goes nowhere.
                return progressed;
            };
            let Some(o) = h.member.poll_output() else { break };
            progressed = true;
            let layout = layout_of(&h.settings);
            match o {
                Output::Minitx { to, bytes } => {
                    let bytes = memnode_message(&layout, &bytes);
                    self.send(to, group, OrderedKind::ToMemnode, bytes);
                }
                Output::Held { to, held } => {
                    self.send(to, group, OrderedKind::Held, held.to_bytes().to_vec())
                }
                Output::Disseminate {
                    sender,
                    epoch,
                    seq,
                    bytes,
                } => {
                    // To the members of the list the message belongs to (named by the
                    // epoch's high half): the other side of a partition has lists of its own.
                    let number = (epoch >> 32) as u32;
                    let mut members = Vec::new();
                    if !run_extends(&run, (sender, epoch, seq), bytes.len(), self.run_bytes) {
                        for m in [h.member.current(), h.member.gathering()].into_iter().flatten() {
                            if let Some(e) = m.list_epoch().filter(|e| e.number == number) {
                                members.extend(m.learned_members());
                                members.extend(m.view().1);
                                // The list's memory node runs on its founder, whose member
                                // takes the payload from the append (`payloads_tapped`).
                                members.retain(|&n| n != e.founder);
                            }
                        }
                    }
                    self.add_to_run(group, &mut run, (sender, epoch, seq), &bytes, members);
                    self.recycle(group, bytes);
                }
                Output::Deliver {
                    sender,
                    position,
                    safe,
                    bytes,
                    ..
                } => self.events.push_back(HostEvent::Deliver {
                    group,
                    sender,
                    position,
                    safe,
                    payload: bytes,
                }),
                Output::Configuration(config) => {
                    self.events.push_back(HostEvent::Configuration { group, config })
                }
                Output::OpenEpoch {
                    epoch,
                    memnode,
                    hosts,
                } => {
                    if hosts.first() == Some(&self.me) {
                        self.open_epoch(group, epoch, memnode, &layout);
                    }
                }
                Output::NewSideWanted => self.new_view_wanted = true,
                Output::Removed { reason } => {
                    if reason == RemoveReason::Left {
                        h.left = true;
                    }
                    self.events.push_back(HostEvent::Status {
                        group,
                        status: OrderedStatusEvent::Removed(reason),
                    });
                }
                // An `evs` member emits none of these (no majority, no state transfer, its
                // views are configurations).
                Output::View(_)
                | Output::Minority
                | Output::SnapshotRequest { .. }
                | Output::Transfer { .. }
                | Output::Installed { .. } => {}
            }
        }
        if let Some(r) = run {
            self.send_run(group, r);
        }
        if self.evs.get(&group).is_some_and(|h| h.leaving && h.left) {
            self.retire_evs(group);
        } else {
            self.free_epochs(group);
        }
        progressed
    }

    /// Runs the memory node of list epoch `epoch` here (this node founds it): primary, no
    /// backup. Under `evs` a backup is never promoted (the side that loses a host opens a
    /// new list and movers deliver the old one from what they hold), so a backup would only
    /// cost replication. A replica of an older epoch under the same id (numbers 65,534
    /// apart) is replaced.
    fn open_epoch(&mut self, group: GroupId, epoch: EpochId, memnode: MemnodeId, layout: &OrderedLayout) {
        if self
            .epoch_replicas
            .get(&(group, memnode))
            .is_some_and(|r| r.epoch == epoch)
        {
            return;
        }
        let mut node = MemoryNode::primary(memnode, 1, None, replica_minitx(&self.minitx, layout));
        for (region, size) in regions_of(&settings_from_layout(layout)) {
            if node.add_region(region, size).is_err() {
                self.counters.malformed += 1;
                return;
            }
        }
        node.set_placement(memnode, self.me);
        node.set_tap(super::QUEUES);
        if self.epoch_replicas.contains_key(&(group, memnode)) {
            self.counters.epoch_replicas_freed += 1;
        }
        self.counters.epoch_replicas_created += 1;
        self.epoch_replicas.insert(
            (group, memnode),
            EpochReplica {
                node,
                layout: *layout,
                epoch,
            },
        );
    }

    /// Frees `group`'s epoch memory nodes whose list this node's member neither is
    /// installed nor gathers in. Its member froze that list (it never reads or appends
    /// there again, and moved with what it held); a member of the list that has not seen
    /// the change yet gets no answers until its own view moves it to a new list.
    fn free_epochs(&mut self, group: GroupId) {
        // Runs after every pump: no allocation (at most two lists are live).
        let live: [Option<EpochId>; 2] = self.evs.get(&group).map_or([None, None], |h| {
            [h.member.current(), h.member.gathering()].map(|m| m.and_then(OrderedMember::list_epoch))
        });
        let before = self.epoch_replicas.len();
        self.epoch_replicas
            .retain(|&(g, _), r| g != group || live.contains(&Some(r.epoch)));
        self.counters.epoch_replicas_freed += (before - self.epoch_replicas.len()) as u64;
    }

    /// Drops `group`'s `evs` member (it left, or never was in a list) and the epoch memory
    /// nodes it founded.
    fn retire_evs(&mut self, group: GroupId) {
        if let Some(h) = self.evs.remove(&group) {
            self.evs_retired_number = self.evs_retired_number.max(h.number.unwrap_or(0));
        }
        self.free_epochs(group);
    }

    /// A whole message of an `evs` group this node is a member of.
    fn handle_evs(&mut self, now: Time, from: NodeId, group: GroupId, kind: OrderedKind, bytes: &[u8]) {
        match kind {
            OrderedKind::ToMemnode => {
                let Ok((layout, msg)) = split_memnode_message(bytes) else {
                    self.counters.malformed += 1;
                    return;
                };
                // Routed by the header; the memory node decodes the body (and counts a
                // malformed one).
                let Some(memnode) = tutti_wire::minitx::memnode_of(msg) else {
                    self.counters.malformed += 1;
                    return;
                };
                // Only a list epoch this node opened and founds has a memory node here; a
                // request that comes first (its sender saw the view sooner) is resent.
                let Some(r) = self.epoch_replicas.get_mut(&(group, memnode)) else {
                    self.counters.unrouted += 1;
                    return;
                };
                if r.layout != layout {
                    self.counters.layout_mismatches += 1;
                    return;
                }
                let before = list_tail(&r.node);
                r.node.handle_message(now, from, msg);
                if let Some(h) = self.evs.get_mut(&group) {
                    self.counters.payloads_tapped += h.member.handle_queued(now, r.epoch, r.node.tapped());
                }
                if let Some(before) = before {
                    self.push_epoch_committed(group, memnode, before, from);
                }
            }
            OrderedKind::ToMember => {
                if let Some(h) = self.evs.get_mut(&group) {
                    h.member.handle_minitx(now, from, bytes);
                }
            }
            OrderedKind::Payload => {
                let Ok((p, payload)) = split_ordered_payload(bytes) else {
                    self.counters.malformed += 1;
                    return;
                };
                if let Some(h) = self.evs.get_mut(&group) {
                    h.member.handle_payload(now, p.sender, p.epoch, p.seq, payload);
                }
            }
            OrderedKind::PayloadRun => {
                let Ok((p, payloads)) = split_payload_run(bytes) else {
                    self.counters.malformed += 1;
                    return;
                };
                if let Some(h) = self.evs.get_mut(&group) {
                    h.member.handle_payloads(now, p.sender, p.epoch, p.seq, payloads);
                }
            }
            OrderedKind::Committed => {
                let Ok((c, entries)) = split_committed(bytes) else {
                    self.counters.malformed += 1;
                    return;
                };
                // Taken only from the founder of the list the push names, by the list's
                // member here (`EvsMember::handle_committed` checks both).
                let epoch = EpochId::from_u64(c.epoch);
                let taken = self.evs.get_mut(&group).is_some_and(|h| {
                    h.member
                        .handle_committed(now, from, epoch, c.memnode, c.tail, c.first, entries)
                });
                if !taken {
                    self.counters.committed_refused += 1;
                }
            }
            // No state transfer under `evs`, and its list epochs are placed by their sides.
            OrderedKind::Transfer | OrderedKind::Locate | OrderedKind::Placement => {
                self.counters.unrouted += 1
            }
            OrderedKind::Held => match self.evs.get_mut(&group) {
                Some(h) => h.member.handle_held(now, from, bytes),
                None => self.counters.unrouted += 1,
            },
        }
    }

    fn handle_whole(&mut self, now: Time, from: NodeId, group: GroupId, kind: OrderedKind, bytes: &[u8]) {
        // A member disseminates only its own messages: a payload (or run) whose header
        // names another sender than the node it came from is refused, whatever the group.
        if matches!(kind, OrderedKind::Payload | OrderedKind::PayloadRun) {
            match split_ordered_payload(bytes) {
                Err(_) => {
                    self.counters.malformed += 1;
                    return;
                }
                Ok((h, _)) if h.sender != from => {
                    self.counters.payloads_refused += 1;
                    return;
                }
                Ok(_) => {}
            }
        }
        if self.evs.contains_key(&group) {
            self.handle_evs(now, from, group, kind, bytes);
            return;
        }
        match kind {
            OrderedKind::ToMemnode => {
                let Ok((layout, msg)) = split_memnode_message(bytes) else {
                    self.counters.malformed += 1;
                    return;
                };
                // A backup replica left from an older epoch (this node was cut off and came
                // back, never restarting) is replaced when it is named the new backup again:
                // its old state is stale, the snapshot brings the current one.
                let named = self
                    .placements
                    .get(&group)
                    .is_some_and(|p| p.primary == from && p.backup == Some(self.me));
                if named
                    && self
                        .replicas
                        .get(&group)
                        .is_some_and(|r| !r.node.is_primary() && is_newer_snapshot(msg, r.node.epoch()))
                {
                    self.replicas.remove(&group);
                }
                if !self.replicas.contains_key(&group) && !self.create_replica(now, from, group, &layout, msg)
                {
                    return;
                }
                let Some(r) = self.replicas.get_mut(&group) else {
                    return;
                };
                if r.layout != layout {
                    self.counters.layout_mismatches += 1;
                    return;
                }
                let before = (!r.node.is_primary()).then(|| list_tail(&r.node)).flatten();
                r.node.handle_message(now, from, msg);
                if let Some(h) = self.groups.get_mut(&group) {
                    self.counters.payloads_tapped += h.member.handle_queued(now, r.node.tapped());
                }
                if let Some(before) = before {
                    self.push_committed(group, before);
                }
            }
            OrderedKind::Committed => {
                let Ok((c, entries)) = split_committed(bytes) else {
                    self.counters.malformed += 1;
                    return;
                };
                let epoch = c.epoch;
                let from_backup = c.memnode == MEMNODE
                    && self
                        .placements
                        .get(&group)
                        .is_some_and(|p| p.backup == Some(from) && p.epoch == epoch);
                if !from_backup {
                    self.counters.committed_refused += 1;
                    return;
                }
                match self.groups.get_mut(&group) {
                    Some(h) => h.member.handle_committed(now, c.tail, c.first, entries),
                    None => self.counters.unrouted += 1,
                }
            }
            OrderedKind::ToMember => match self.groups.get_mut(&group) {
                Some(h) => h.member.handle_minitx(now, from, bytes),
                None if crate::regions::is_region_group(group)
                    && self.region_replies.len() < crate::regions::MAX_QUEUED_REPLIES =>
                {
                    self.region_replies.push_back((from, bytes.to_vec()))
                }
                None => self.counters.unrouted += 1,
            },
            OrderedKind::Payload => {
                let Ok((h, payload)) = split_ordered_payload(bytes) else {
                    self.counters.malformed += 1;
                    return;
                };
                match self.groups.get_mut(&group) {
                    Some(m) => m.member.handle_payload(now, h.sender, h.epoch, h.seq, payload),
                    None => self.counters.unrouted += 1,
                }
            }
            OrderedKind::PayloadRun => {
                let Ok((h, payloads)) = split_payload_run(bytes) else {
                    self.counters.malformed += 1;
                    return;
                };
                match self.groups.get_mut(&group) {
                    Some(m) => m.member.handle_payloads(now, h.sender, h.epoch, h.seq, payloads),
                    None => self.counters.unrouted += 1,
                }
            }
            OrderedKind::Transfer => match self.groups.get_mut(&group) {
                Some(h) => h.member.handle_transfer(now, bytes),
                None => self.counters.unrouted += 1,
            },
            OrderedKind::Held => match self.groups.get_mut(&group) {
                Some(h) => h.member.handle_held(now, from, bytes),
                None => self.counters.unrouted += 1,
            },
            OrderedKind::Locate => {
                if !bytes.is_empty() {
                    self.counters.malformed += 1;
                    return;
                }
                // A placement still being searched for is a guess: "not placed here".
                let answer = match self.placements.get(&group) {
                    Some(p) if !self.locating.contains_key(&group) => placement_message(p),
                    _ => OrderedPlacement::UNKNOWN.to_bytes(),
                };
                self.counters.locates_answered += 1;
                self.send(from, group, OrderedKind::Placement, answer.to_vec());
            }
            OrderedKind::Placement => {
                let Ok(answer) = OrderedPlacement::decode(bytes) else {
                    self.counters.malformed += 1;
                    return;
                };
                let Some(l) = self.locating.get_mut(&group) else {
                    // Not asked for: a primary's announcement to a node new to its view,
                    // taken if this node has not placed the group (a placement is never
                    // moved by a message, only by failover).
                    if answer.epoch == 0 || self.placements.contains_key(&group) {
                        self.counters.unrouted += 1;
                        return;
                    }
                    self.learn_placement(group, placement_from(&answer));
                    return;
                };
                if answer.epoch == 0 {
                    l.unknown.insert(from);
                    let me = self.me;
                    let all = self
                        .view_members
                        .iter()
                        .all(|&n| n == me || l.unknown.contains(&n));
                    if all {
                        // Nobody placed it: the group is new, placed from this view.
                        self.located(group);
                    }
                    return;
                }
                self.learn_placement(group, placement_from(&answer));
                self.refresh_group(now, group);
            }
        }
    }

    /// A backup replica here applied records that moved `group`'s list tail past
    /// `before`: pushes the new entries (the last `MAX_COMMITTED_ENTRIES` of them) to the
    /// members of the view as this node's member learned it, but the primary's node (its
    /// member learns them when the backup's acknowledgement arrives). The backup holds
    /// them, so they are committed, and every member learns them a hop sooner than from
    /// the primary's answer or a read: the hops from submit to delivery go from 4 (append,
    /// replicate, acknowledge, answer) to 3. This node's own member is not told: it would
    /// learn a hop before the primary's member and win every race for the tail
    /// (docs/ordered.md, "Committed entries pushed by the backup").
    fn push_committed(&mut self, group: GroupId, before: u64) {
        let Some(r) = self.replicas.get(&group) else {
            return;
        };
        let Some(p) = self.placements.get(&group).copied() else {
            return;
        };
        if r.node.is_primary() || p.backup != Some(self.me) || p.epoch != r.node.epoch() {
            return;
        }
        let Some(h) = self.groups.get(&group) else {
            return;
        };
        let mut dests = std::mem::take(&mut self.scratch_nodes);
        dests.clear();
        dests.extend(h.member.view_nodes().filter(|&n| n != p.primary && n != self.me));
        let bytes = (!dests.is_empty())
            .then(|| committed_message(&r.node, r.layout.list_slots, MEMNODE, p.epoch, before))
            .flatten();
        self.send_committed(group, dests, bytes);
    }

    /// `evs`: the memory node of list epoch `memnode` here (a primary without a backup,
    /// so what it applied is committed) moved the list's tail past `before` on a request
    /// from `from`: pushes the new entries (the last `MAX_COMMITTED_ENTRIES` of them) to
    /// every member of the list's view as this node's member of that list learned it, but
    /// this node (its member reads the replica here without a network hop) and `from` (the
    /// answer tells it). They learn the entries a hop after the append landed, where a
    /// read started by the payload's arrival took a round trip more (docs/ordered.md,
    /// "Committed entries pushed by an `evs` founder").
    fn push_epoch_committed(&mut self, group: GroupId, memnode: MemnodeId, before: u64, from: NodeId) {
        let Some(r) = self.epoch_replicas.get(&(group, memnode)) else {
            return;
        };
        let Some(h) = self.evs.get(&group) else {
            return;
        };
        let Some(m) = [h.member.current(), h.member.gathering()]
            .into_iter()
            .flatten()
            .find(|m| m.list_epoch() == Some(r.epoch))
        else {
            return;
        };
        let mut dests = std::mem::take(&mut self.scratch_nodes);
        dests.clear();
        dests.extend(m.view_nodes().filter(|&n| n != self.me && n != from));
        let bytes = (!dests.is_empty())
            .then(|| committed_message(&r.node, r.layout.list_slots, memnode, r.epoch.to_u64(), before))
            .flatten();
        self.send_committed(group, dests, bytes);
    }

    /// Sends `bytes` (a `Committed` push, built only when `dests` is not empty) to each of
    /// `dests`, which become the scratch buffer again.
    fn send_committed(&mut self, group: GroupId, mut dests: Vec<NodeId>, bytes: Option<Vec<u8>>) {
        if let Some(mut bytes) = bytes {
            while let Some(d) = dests.pop() {
                self.counters.committed_sent += 1;
                let b = if dests.is_empty() {
                    std::mem::take(&mut bytes)
                } else {
                    bytes.clone()
                };
                self.send(d, group, OrderedKind::Committed, b);
            }
        }
        dests.clear();
        self.scratch_nodes = dests;
    }

    /// Asks every other node of the view that has not answered where `group`'s memory node
    /// runs.
    fn ask_placement(&mut self, group: GroupId) {
        let unknown = self.locating.get(&group).map(|l| &l.unknown);
        let others: Vec<NodeId> = self
            .view_members
            .iter()
            .copied()
            .filter(|&n| n != self.me && !unknown.is_some_and(|u| u.contains(&n)))
            .collect();
        for n in others {
            self.send(n, group, OrderedKind::Locate, Vec::new());
        }
    }

    /// `group`'s placement as the nodes that hold it say: taken, told to this node's member,
    /// and the end of a search for it.
    fn learn_placement(&mut self, group: GroupId, p: Placement) {
        self.counters.placements_learned += 1;
        self.placements.insert(group, p);
        if let Some(h) = self.groups.get_mut(&group) {
            h.member.set_memnode_host(p.primary);
        }
        self.located(group);
    }

    /// Ends `group`'s search: its member's held memory-node messages go to the primary of
    /// the placement it now has.
    fn located(&mut self, group: GroupId) {
        let Some(l) = self.locating.remove(&group) else {
            return;
        };
        let primary = self.placements.get(&group).map_or(self.me, |p| p.primary);
        for bytes in l.held {
            self.send(primary, group, OrderedKind::ToMemnode, bytes);
        }
    }

    /// How long a join waits for an answer to `Locate` before it asks again.
    fn locate_retry(&self, group: GroupId) -> Time {
        self.groups
            .get(&group)
            .map_or(20 * crate::MILLIS, |h| h.settings.retransmit)
    }

    /// Creates this node's replica of `group`'s memory node on first contact: the primary
    /// on a request, the backup on the primary's first replication message. Anything else
    /// (this node holds no role) is dropped.
    fn create_replica(
        &mut self,
        now: Time,
        from: NodeId,
        group: GroupId,
        layout: &OrderedLayout,
        msg: &[u8],
    ) -> bool {
        let settings = settings_from_layout(layout);
        if settings_error(&settings, &self.minitx).is_some() {
            self.counters.malformed += 1;
            return false;
        }
        let is_replicate = msg.get(3) == Some(&mtkind::REPLICATE) && msg.len() >= MINITX_HEADER_LEN;
        // A new backup named after a failover: its state comes from the primary's snapshot,
        // in the epoch the primary names (this node may have placed the group later, in
        // an epoch counted from 1).
        let snapshot_epoch = match tutti_wire::minitx::Message::decode(msg) {
            Ok(tutti_wire::minitx::Message::Snapshot { epoch, .. }) => Some(epoch),
            _ => None,
        };
        // A placement made while this node's join still asks where the memory node is, is
        // a guess from this node's view: no replica is made from it.
        let locating = self.locating.contains_key(&group);
        // A placement learned from another node is that node's, which may be older than
        // the view (it had not yet installed the view that failed the primary over): a
        // primary of a later epoch naming this node its backup supersedes it (sim seed
        // 507: a node added to the cluster learned a crashed primary, refused the promoted
        // primary's state transfer and sent to the crashed one forever).
        let superseded = snapshot_epoch.is_some_and(|e| {
            self.placements
                .get(&group)
                .is_some_and(|p| e > p.epoch && p.primary != self.me && p.primary != from)
        });
        let known = self.placements.contains_key(&group) && !locating && !superseded;
        if let (Some(epoch), false) = (snapshot_epoch, known) {
            // A node that never placed the group (it joined the cluster after the group
            // was placed) is named backup by the primary's state transfer: placed from
            // its own view it might name itself primary (its view ranks it first).
            let p = Placement {
                primary: from,
                backup: Some(self.me),
                epoch,
            };
            self.learn_placement(group, p);
        } else if locating {
            // Sent again by its sender once this node knows its role.
            self.counters.unrouted += 1;
            return false;
        }
        let mut p = self.placement(group);
        let mut node = if p.primary == self.me {
            let mut node =
                MemoryNode::primary(MEMNODE, p.epoch, p.backup, replica_minitx(&self.minitx, layout));
            node.set_snapshot_chunk(self.snapshot_chunk());
            node
        } else if let (Some(epoch), true) = (snapshot_epoch, p.backup == Some(self.me) && p.primary == from) {
            if epoch > p.epoch {
                p.epoch = epoch;
                self.placements.insert(group, p);
            }
            MemoryNode::new_backup(MEMNODE, p.primary, epoch, replica_minitx(&self.minitx, layout))
        } else if p.backup == Some(self.me) && is_replicate {
            MemoryNode::backup(MEMNODE, p.primary, p.epoch, replica_minitx(&self.minitx, layout))
        } else {
            self.counters.unrouted += 1;
            return false;
        };
        for (region, size) in regions_of(&settings) {
            if node.add_region(region, size).is_err() {
                self.counters.malformed += 1;
                return false;
            }
        }
        node.set_placement(MEMNODE, p.primary);
        node.set_tap(super::QUEUES);
        let _ = now;
        self.counters.replicas_created += 1;
        self.replicas.insert(
            group,
            Replica {
                node,
                layout: *layout,
            },
        );
        true
    }

    fn drop_oldest_partial(&mut self) {
        if let Some(p) = self.partials.pop_front() {
            self.partial_bytes = self.partial_bytes.saturating_sub(p.bytes);
            self.counters.partials_dropped += 1;
        }
    }

    fn reassemble(&mut self, now: Time, from: NodeId, h: &OrderedHeader, bytes: &[u8]) -> Option<Vec<u8>> {
        let (group, msg, total, index, count) = (h.group, h.msg, h.total, h.index, h.count);
        debug_assert!(count <= MAX_ORDERED_FRAGMENTS);
        let at = self
            .partials
            .iter()
            .position(|p| p.from == from && p.group == group && p.msg == msg);
        let i = match at {
            Some(i) => i,
            None => {
                while self.partials.len() >= MAX_PARTIALS
                    || self.partial_bytes + bytes.len() > MAX_PARTIAL_BYTES
                {
                    if self.partials.is_empty() {
                        return None;
                    }
                    self.drop_oldest_partial();
                }
                self.partials.push_back(Partial {
                    from,
                    group,
                    msg,
                    kind: h.kind,
                    total,
                    chunk: 0,
                    frags: vec![None; usize::from(count)],
                    have: 0,
                    bytes: 0,
                    started: now,
                });
                self.partials.len() - 1
            }
        };
        let p = self.partials.get_mut(i)?;
        let last = index + 1 == count;
        // Every fragment but the last carries `chunk` bytes; the last the rest.
        let chunk = if last { p.chunk } else { bytes.len() };
        let consistent = p.kind == h.kind
            && p.total == total
            && p.frags.len() == usize::from(count)
            && (last || !bytes.is_empty())
            && (p.chunk == 0 || last || p.chunk == bytes.len())
            && (chunk == 0 || {
                let expect_last = (total as usize).checked_sub(chunk * (usize::from(count) - 1));
                if last {
                    expect_last == Some(bytes.len())
                } else {
                    expect_last.is_some_and(|r| r <= chunk)
                }
            });
        if !consistent {
            self.counters.fragments_refused += 1;
            return None;
        }
        if !last {
            p.chunk = bytes.len();
        }
        let slot = p.frags.get_mut(usize::from(index))?;
        if slot.is_some() {
            return None;
        }
        *slot = Some(bytes.to_vec());
        p.have += 1;
        p.bytes += bytes.len();
        self.partial_bytes += bytes.len();
        if p.have < p.frags.len() {
            return None;
        }
        let p = self.partials.remove(i)?;
        self.partial_bytes = self.partial_bytes.saturating_sub(p.bytes);
        // One copy per fragment (collecting the bytes one by one through `flatten` was 5% of
        // a memory node's CPU under load).
        let mut whole = Vec::with_capacity(total as usize);
        for frag in p.frags.iter().flatten() {
            whole.extend_from_slice(frag);
        }
        if whole.len() != total as usize {
            self.counters.fragments_refused += 1;
            return None;
        }
        Some(whole)
    }
}
