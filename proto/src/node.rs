//! The per-shard protocol node: membership (gossip heartbeats, suspicion, numbered views
//! installed by the coordinator, merges) and the dispatch of packets to the groups'
//! bimodal multicast state. Sans-IO: see the crate docs.

use crate::fxhash::FxMap;
use crate::id_index::IdIndex;
use crate::minitx::{MemoryNodeCounters, MinitxSettings};
use crate::multicast::{Ctx, GroupMembers, GroupState};
use crate::ordered::host::{HostEvent, OrderedHost, Outgoing};
use crate::ordered::{
    EpochId, EvsMember, OrderedCounters, OrderedError, OrderedHostCounters, OrderedSettings, PartitionPolicy,
    Placement, SubmitRefused,
};
use crate::outbox::Outbox;
use crate::payload::{Payload, PayloadPool};
use crate::regions::{
    RegionCounters, RegionError, RegionEvent, RegionOp, RegionSettings, RegionTxn, Regions,
};
use crate::view_cache::EncodedView;
use crate::{
    Delivered, Event, GroupId, GroupView, Member, NodeId, Settings, Time, Transmit, View, ViewCache, ViewId,
};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use tutti_wire::packet::{
    self, Entries, HeartbeatEntry, HeartbeatHeader, MemberEntry, Message, ViewGroupMember, ViewGroupSlices,
    ViewPartHeader, ViewParts, ViewRequestHeader, HEARTBEAT_FLAG_ACK, HEARTBEAT_FLAG_DEAD,
    HEARTBEAT_FLAG_LEAVING, HEARTBEAT_FLAG_PING_REQ, HEARTBEAT_FLAG_PROBE, HEARTBEAT_FLAG_SUSPECT,
};
use tutti_wire::packet::{OrderedHeader, DATAGRAM_HEADER_LEN, MESSAGE_HEADER_LEN, ORDERED_HEADER_LEN};

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
    /// Views installed in place of a concurrent one with the same counter (each claims the
    /// next counter, so that the coordinator installs a view above both).
    pub views_superseded: u64,
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
    /// SWIM probes sent (one per round), ping requests sent for probes not answered
    /// within a round, and acks sent (to probes, and relayed for ping requests).
    pub probes_sent: u64,
    pub ping_reqs_sent: u64,
    pub acks_sent: u64,
    /// Peers this node began to suspect: its own probe and the ping requests went
    /// unanswered (not counting suspicions learned from others).
    pub suspicions_raised: u64,
    /// Probes given a cycle beyond `PROBE_CYCLES` because their ping requests reached
    /// fewer helpers than the view offers, or a view was installed since they were sent
    /// (helpers taken from it may not know the target yet).
    pub probe_cycles_added: u64,
    /// Probes left unanswered while this node was alone in its view: not suspected
    /// (nobody could probe for us; the seeds are heartbeated every round anyway).
    pub suspicions_withheld_alone: u64,
    /// Suspicions (ours or learned) cleared by newer evidence that the member is alive.
    pub suspicions_refuted: u64,
    /// Peers this node confirmed failed (its suspicion timed out, or it learned it).
    pub peers_confirmed_dead: u64,
    /// Claims that this node is suspected or failed, refuted by raising its heartbeat.
    pub refutations: u64,
    /// Failures claimed by other members about peers we heard from directly within
    /// `suspect_timeout`: taken as suspicions only (stale claims at a partition heal).
    pub failure_claims_downgraded: u64,
    /// Views not installed: their coordinator was outside our view and they dropped
    /// members we heard from directly within `suspect_timeout` (see
    /// `Node::dropped_member_we_hear`).
    pub views_deferred: u64,
    /// Members named to the coordinator of a deferred view (one per deferral): it may
    /// never have heard of them.
    pub deferred_members_named: u64,
    /// New views asked for by claiming the next counter, for an `evs` member that could
    /// not join its list.
    pub new_views_asked: u64,
    /// Rounds the coordinator held a merge back after a peer held failed came back, while
    /// other peers were still held failed (see `Node::merge_on_hold`).
    pub merges_held: u64,
    /// Claims about this node's heartbeat too far ahead of it to be real: ignored.
    pub implausible_heartbeats: u64,
    /// Removal checks the coordinator started: a member of its view it holds failed is
    /// probed by it, directly and through others, before a view drops it (see
    /// `Node::check_removals`).
    pub removal_checks: u64,
    /// Removal checks a member answered: a live member a view would have dropped (a false
    /// failure that reached the coordinator before its refutation).
    pub removals_averted: u64,
    /// View messages sent (one per part of a view).
    pub views_sent: u64,
    /// View requests not served because `VIEW_SENDS_PER_ROUND` views went out this round
    /// (the asker asks again, of whoever announces the view next).
    pub view_requests_deferred: u64,
    /// View requests sent (pulls of a newer view, whole or the parts we lack).
    pub view_requests: u64,
    /// Parts named in the view requests sent (0 for a whole-view pull).
    pub view_parts_requested: u64,
    /// Probes of the witness of a view held unvouched (once a round while it waits).
    pub witness_probes: u64,
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
    /// Budget evictions that dropped the fragments of messages not yet whole (kept open
    /// and asked for again) instead of sliding a window past them.
    pub partials_dropped_budget: u64,
    /// Requests sent at once on seeing a gap in a stream (not answering a digest).
    pub gap_requests_sent: u64,
    /// Requests sent by the repair timer for gaps still open `rerequest_after` later.
    pub gap_rerequests_sent: u64,
    /// Asks to a gossiper for what its digest claims past our high (a claim alone never
    /// extends a stream: only the sender's digest or a copy does).
    pub tail_requests: u64,
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
    /// Flow control: reports sent (to our parent in a stream's tree) and taken (from our
    /// children in it); statuses ignored (flow control off, not from a child of ours in
    /// that tree, for a stream we do not hold, or counting more members than the group
    /// has); asks for reports sent (as a sender, or passed on to our children) and
    /// received; submits refused because the window of the slowest member served was full
    /// (each a retry later, never a drop); children dropped from a window as slow
    /// (`Settings::flow_slow_after`) and taken back once caught up; retransmissions not
    /// made because the requester's own budget (halved when its reported gaps jump) was
    /// spent this round.
    pub flow_statuses_sent: u64,
    pub flow_statuses_received: u64,
    pub flow_statuses_ignored: u64,
    pub flow_asks_sent: u64,
    pub flow_asks_received: u64,
    pub flow_blocked: u64,
    pub flow_slow_members: u64,
    pub flow_readmitted: u64,
    pub retransmit_requester_budget_exhausted: u64,
}

/// Why `submit` refused a message (back pressure is a return value, never a block).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("this node has not joined group {0:#x}")]
    NotJoined(GroupId),
    #[error("message of {len} bytes exceeds max_message {max}")]
    TooLarge { len: usize, max: usize },
    /// Ordered groups: not an active member (joining, removed, leaving, or outside a
    /// majority's view).
    #[error("not an active member of ordered group {0:#x}")]
    NotMember(GroupId),
    /// Back pressure, retry later: an ordered group has `max_outgoing` messages queued, or
    /// a bimodal group's flow-control window (`Settings::flow_window` beyond the slowest
    /// member served) is full.
    #[error("group queue or flow-control window full: retry later")]
    Full,
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
    /// The member sending the parts (the coordinator, or any member it was pulled from).
    from: NodeId,
    /// The witness its parts name (the last part's).
    witness: u32,
    parts: u32,
    members: u32,
    groups: u32,
    /// One bit per part (`parts` is at most `MAX_VIEW_ENTRIES + 1`: 128 KiB).
    received: Vec<u64>,
    received_count: u32,
    /// `(start, members)`, in arrival order.
    member_slices: Vec<(u32, Vec<Member>)>,
    /// `(start, addresses)` of the members of the parts that carried any address (the
    /// address their coordinator gave; none in most parts of a simulator's views).
    addr_slices: Vec<(u32, Vec<u64>)>,
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
            if members.iter().any(|m| m.addr != 0) {
                self.addr_slices
                    .push((header.member_start, members.iter().map(|m| m.addr).collect()));
            }
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

    /// Appends the first `max` parts not received yet to `out`, in ascending order.
    fn missing(&self, max: usize, out: &mut Vec<u32>) {
        for (w, bits) in self.received.iter().enumerate() {
            if *bits == u64::MAX {
                continue;
            }
            for b in 0..64u32 {
                let part = w as u32 * 64 + b;
                if part >= self.parts || out.len() >= max {
                    return;
                }
                if bits & (1 << b) == 0 {
                    out.push(part);
                }
            }
        }
    }

    /// The view, if the parts cover it exactly.
    fn build(mut self) -> Option<View> {
        if self.group_parts.len() != self.groups as usize {
            return None;
        }
        let members = concat_exact(&mut self.member_slices, self.members)?;
        let mut addrs: Vec<u64> = Vec::new();
        if !self.addr_slices.is_empty() {
            addrs = vec![0; members.len()];
            for (start, a) in &self.addr_slices {
                let start = *start as usize;
                addrs
                    .get_mut(start..start.saturating_add(a.len()))?
                    .copy_from_slice(a);
            }
        }
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
            addrs,
            groups,
        })
    }
}

struct Peer {
    member: Member,
    /// The member's heartbeat as last known: SWIM's incarnation number, which a member
    /// raises only to refute a suspicion or failure claimed at its current value, so that
    /// every member soon knows the current value and a stale claim loses to it.
    heartbeat: u32,
    /// The round of the last direct or relayed evidence that it is alive (a datagram from
    /// it, a higher heartbeat, an ack relayed for a ping request).
    heard_round: u32,
    /// Alive, suspected (SWIM: refuted by a higher heartbeat or a datagram from it,
    /// confirmed failed after the suspicion timeout) or failed (since when and at which
    /// heartbeat: its `Mark`, in `Node::marks`).
    liveness: Liveness,
    /// Piggyback transmissions left for news of this peer (see `Node::announce`).
    gossip_left: u8,
    leaving: bool,
    /// In our installed view, in this incarnation.
    in_view: bool,
    /// The round we last answered it outside our view, modulo 2^16 (once per round; a
    /// wrapped match skips one answer at worst).
    replied_round: u16,
    /// Heard from directly, or vouched for by a view: only such peers enter views. A node
    /// only named in another's heartbeats is probed and kept unverified (bounded), so that
    /// invented ids neither enter views nor hold view changes back.
    direct: bool,
}

/// A member of our view we (the coordinator) hold failed and probe before a view drops it.
#[derive(Debug, Clone)]
struct RemovalCheck {
    node: NodeId,
    /// The round the check started.
    since: u32,
    /// The members asked to probe it (a relayed ack counts only from them: any ack's
    /// second entry is otherwise the first news it piggybacks).
    helpers: Vec<NodeId>,
}

/// When a peer was suspected or held failed (the round), and at which heartbeat. Kept
/// beside the peer table (`Node::marks`) for such peers only: most peers are alive.
#[derive(Debug, Clone, Copy)]
struct Mark {
    since_round: u32,
    hb_at_mark: u32,
}

/// What this node believes of a peer (24 bytes a peer: the table is O(view size) and the
/// simulator holds 10,000 of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Liveness {
    Alive,
    Suspected,
    Failed,
}

// The peer table is the one per-member table of every node: keep it at 24 bytes a peer.
const _: () = assert!(std::mem::size_of::<Peer>() <= 24);

impl Peer {
    fn dead(&self) -> bool {
        self.liveness == Liveness::Failed
    }
    fn suspected(&self) -> bool {
        self.liveness == Liveness::Suspected
    }
    fn set_alive(&mut self) {
        self.liveness = Liveness::Alive;
    }
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
    /// Our own heartbeat (SWIM incarnation): raised only to refute claims about us.
    heartbeat: u32,
    leaving: bool,
    peers: Vec<Peer>,
    /// Positions in `peers` by node id.
    peer_index: IdIndex,
    /// Marks of the peers suspected or held failed (stale ones, of peers alive again, are
    /// dropped by the round's walk of `watch`).
    marks: FxMap<NodeId, Mark>,
    /// Peers whose state needs a look each round (suspected, failed or unverified): the
    /// round's timeouts walk these, not the whole table. A peer may be listed twice or
    /// after it recovered (skipped then).
    watch: Vec<NodeId>,
    /// Members we served our view to this round (at most [`VIEW_SENDS_PER_ROUND`]).
    view_sent: Vec<NodeId>,
    /// Where the driver hears peers (and this node) from, opaque (`Node::set_address`):
    /// the coordinator puts them in its views. Only for this node and known peers.
    addresses: FxMap<NodeId, u64>,
    /// Peers with news to piggyback, in turn (each at most once; see `Peer::gossip_left`).
    news: VecDeque<NodeId>,
    /// SWIM's probe order: a random permutation of the peer table's positions
    /// `k -> (probe_mul * k + probe_add) mod probe_len`, walked round-robin (`probe_pos`)
    /// and drawn anew once walked: every peer once per walk, in no memory.
    probe_len: usize,
    probe_mul: usize,
    probe_add: usize,
    probe_pos: usize,
    /// Probes awaiting an answer (at most [`MAX_PROBES`]).
    probes: Vec<Probe>,
    /// Ping requests this node probes for: answer `requester` once `target` is heard from.
    relays: Vec<Relay>,
    view: Arc<View>,
    /// `view.content_hash()`.
    view_hash: u64,
    /// Shared table of views (the simulator's interning), if the driver set one.
    view_cache: Option<ViewCache>,
    /// Our view's parts, encoded when first served (shared through the view cache).
    encoded_view: Option<Arc<EncodedView>>,
    /// The member our installed view came from (us, if we made it): the witness we name
    /// when we serve the view (see `ViewPartHeader::witness`).
    view_source: NodeId,
    /// The witness named by the member we pulled the unvouched view from: probed once a
    /// round while the view waits, so that its answer vouches for the view.
    unvouched_witness: Option<NodeId>,
    /// Views whose parts are arriving (at most [`VIEW_ASSEMBLIES`]).
    assembling: Vec<ViewAssembly>,
    max_counter: u64,
    view_request_round: u32,
    /// Views served this round (`view_sends_round`), at most [`VIEW_SENDS_PER_ROUND`].
    view_sends: u32,
    view_sends_round: u32,
    /// The round our view was installed in.
    installed_round: u32,
    /// The round a peer we held failed was last heard from again in the same incarnation
    /// (a partition healing, or a false failure): the coordinator holds merges back for a
    /// while then (see `Node::merge_on_hold`). `NO_ROUND`: none yet.
    revived_round: u32,
    /// Members of our view we hold failed, probed by us (the coordinator) before a view
    /// drops them, and the round the check started (at most [`MAX_REMOVAL_CHECKS`]).
    removal_checks: Vec<RemovalCheck>,
    /// Newer views announced to us in heartbeats, and by whom (at most
    /// [`MAX_ANNOUNCED_VIEWS`]).
    announced: Vec<Announced>,
    /// A complete view pulled from a member other than its coordinator, waiting for a
    /// vouch (see `Node::vouched`).
    unvouched: Option<(View, u64)>,
    my_groups: BTreeSet<GroupId>,
    /// Groups of the installed view that list this node, with its stream in each.
    view_groups_with_me: Vec<(GroupId, u32)>,
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
    /// Ordered groups and the memory-node replicas hosted here (`ordered::host`).
    ordered: OrderedHost,
    /// The application-region coordinator (`regions`).
    regions: Regions,
    /// Message numbers of the region coordinator's `Ordered` messages.
    region_msg: u32,
}

const NO_ROUND: u32 = u32::MAX;

/// A view id and hash some member announced in its heartbeats.
struct Announced {
    id: ViewId,
    hash: u64,
    by: NodeId,
    second: Option<NodeId>,
    by_coordinator: bool,
}

/// Views announced to us that we remember at once.
const MAX_ANNOUNCED_VIEWS: usize = 8;
/// A coordinator sends a new view to every member up to this size...
pub const VIEW_PUSH_ALL: usize = 32;
/// ...and to this many random members beyond it (the others pull it).
pub const VIEW_PUSH_FANOUT: usize = 4;
/// Views a member serves per round (each is `ceil(size / max_datagram)` datagrams).
pub const VIEW_SENDS_PER_ROUND: u32 = 8;

/// A probe awaiting its answer: sent in round `sent_round`; `indirect` once ping requests
/// went out.
struct Probe {
    target: NodeId,
    sent_round: u32,
    indirect: bool,
    /// Probe cycles (direct, then indirect) made so far.
    cycles: u8,
    /// Members asked to probe the target for us, over all cycles.
    helpers_asked: u8,
    /// Our view's counter when the probe was sent.
    view_counter: u64,
}

/// A ping request being served: `requester` asked us in round `round` to probe `target`.
struct Relay {
    target: NodeId,
    requester: NodeId,
    round: u32,
}

/// Probes awaiting an answer at once (one is sent per round; each lives `PROBE_CYCLES + 1`
/// rounds).
const MAX_PROBES: usize = 6;
/// Members asked to probe on our behalf when a probe goes unanswered for a round (SWIM's k).
pub const PING_REQ_FANOUT: usize = 4;
/// Probe cycles (a direct probe, then `PING_REQ_FANOUT` indirect ones a round later) that
/// must all go unanswered before a member is suspected. Each member's probes suspect a live
/// member at rate p per probe, so the cluster raises n p suspicions a round, and every
/// member must carry the news of each: p must shrink as n grows. At 5% loss one cycle fails
/// with p ~ 0.1 x 0.19^4 ~ 1e-4; two in a row ~ 1e-8.
pub const PROBE_CYCLES: u8 = 2;
/// A probe whose ping requests reached fewer helpers than the view offers now (it went
/// indirect while its prober was alone or its view small), or whose prober installed a
/// view since it was sent, makes up to this many cycles. Without helpers two cycles fail
/// with p ~ 0.1^2 at 5% loss, not 1e-8; and helpers that do not hold the view we took them
/// from may not know the target yet (a member ignores ping requests for a member it does
/// not know). Issue 11: every false suspicion of a 1,000-member run at 5% loss was a probe
/// without helpers, and at 300 members one had helpers that did not know its target; all
/// in bootstrap, while views grow.
const MAX_PROBE_CYCLES: u8 = PROBE_CYCLES + 1;
/// Ping requests served at once (more are ignored: each costs a probe).
const MAX_RELAYS: usize = 64;
/// Helpers remembered per removal check (`PING_REQ_FANOUT` a round).
const MAX_CHECK_HELPERS: usize = 16;
/// Removal checks at once: beyond these, members held failed are dropped unchecked (a
/// mass failure is not held back by its checks).
const MAX_REMOVAL_CHECKS: usize = 64;
/// Rounds a ping request is served before it is forgotten.
const RELAY_ROUNDS: u32 = 2;
/// News of a peer is piggybacked `GOSSIP_LAMBDA * ceil(log10(n + 1))` times by each member
/// that learns it (SWIM's lambda log n; memberlist's retransmit multiplier is 4), enough
/// for an epidemic to reach all n members with high probability while the piggyback
/// capacity (`Settings::heartbeat_entries` per message, ~3 messages a round) keeps up
/// with the news.
pub const GOSSIP_LAMBDA: u32 = 4;
/// How far above its own heartbeat a claim "you are suspected/failed at heartbeat h" may
/// be for the node to refute it by raising its heartbeat past `h` (a real claim is at most
/// our heartbeat; a forged one far ahead would make us jump for nothing).
const MAX_REFUTE_JUMP: u32 = 1 << 16;

/// How far past our view's counter a counter from the network may be. Counters grow by one
/// per view change, so a real one is never this far ahead; a forged `u64::MAX` would
/// otherwise be adopted and wrap the next view's counter.
pub const MAX_COUNTER_JUMP: u64 = 1 << 32;

/// A coordinator of more than [`VIEW_PUSH_ALL`] members installs a view that only adds
/// members (and group members) at most every `JOIN_GAP_FACTOR` times the gap it keeps
/// between views that remove some (`ceil(log2 n / 2)` rounds).
pub const JOIN_GAP_FACTOR: u32 = 2;

/// Group joins and leaves a coordinator holds between two views.
const MAX_PENDING_GROUP_CHANGES: usize = 1 << 16;

/// Peers held failed that a coordinator holding a merge back sends heartbeats to per round
/// (see `Node::merge_on_hold`).
const MERGE_HOLD_HEARTBEATS: usize = 8;

/// Peers known only from others' heartbeats (not yet heard from directly), at most.
pub const MAX_UNVERIFIED_PEERS: usize = 1024;

/// New unverified peers one heartbeat datagram may add (each is probed once).
pub const NEW_PEERS_PER_DATAGRAM: usize = 8;

/// Groups left whose stream positions the node remembers for a rejoin (the oldest is
/// forgotten first).
const MAX_DEPARTED_GROUPS: usize = 64;

/// A group this node left: where it stood in each stream, until `forget_at`.
struct Departed {
    group: GroupId,
    forget_at: Time,
    positions: Vec<(crate::multicast::StreamKey, u64)>,
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Whether membership believes `node` alive (not suspected, not leaving).
fn peer_alive(peers: &[Peer], index: &IdIndex, node: NodeId) -> bool {
    find_peer(peers, index, node)
        .and_then(|i| peers.get(i))
        .is_some_and(|p| !p.dead() && !p.leaving)
}

/// The position of `node` in `peers`, if known.
fn find_peer(peers: &[Peer], index: &IdIndex, node: NodeId) -> Option<usize> {
    index
        .get(node, |p| {
            peers.get(p as usize).map_or(NodeId::MAX, |q| q.member.node)
        })
        .map(|p| p as usize)
}

/// The sink lent for one input: the trait object's lifetime shortened to the loan's, which
/// a `&mut` (invariant) does not do by itself.
fn reborrow<'a>(
    sink: &'a mut Option<&mut dyn FnMut(Delivered<'_>)>,
) -> Option<&'a mut dyn FnMut(Delivered<'_>)> {
    match sink {
        Some(s) => Some(&mut **s),
        None => None,
    }
}

/// Runs `$body` with `$ctx`, the groups' context at time `$now` (borrowing the node's
/// fields one by one; deliveries to `$sink` when given, else queued), and `$groups`, the
/// node's group states.
macro_rules! with_ctx {
    ($node:ident, $now:expr, |$ctx:ident, $groups:ident| $body:expr) => {
        with_ctx!($node, $now, None, |$ctx, $groups| $body)
    };
    ($node:ident, $now:expr, $sink:expr, |$ctx:ident, $groups:ident| $body:expr) => {{
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
            sink: $sink,
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
            addrs: Vec::new(),
            groups: Vec::new(),
        });
        let mut ordered = OrderedHost::new(id, incarnation, MinitxSettings::default());
        ordered.set_max_datagram(settings.max_datagram);
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
            peer_index: IdIndex::default(),
            marks: FxMap::default(),
            watch: Vec::new(),
            view_sent: Vec::new(),
            addresses: FxMap::default(),
            news: VecDeque::new(),
            probe_len: 0,
            probe_mul: 1,
            probe_add: 0,
            probe_pos: 0,
            probes: Vec::new(),
            relays: Vec::new(),
            view_hash: view.content_hash(),
            view_cache: None,
            encoded_view: None,
            view_source: id,
            unvouched_witness: None,
            view,
            assembling: Vec::new(),
            max_counter: 0,
            view_request_round: NO_ROUND,
            view_sends: 0,
            view_sends_round: NO_ROUND,
            installed_round: 0,
            revived_round: NO_ROUND,
            removal_checks: Vec::new(),
            announced: Vec::new(),
            unvouched: None,
            my_groups: BTreeSet::new(),
            view_groups_with_me: Vec::new(),
            pending_group_changes: BTreeMap::new(),
            node_bytes: 0,
            groups: BTreeMap::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
            scratch_targets: Vec::new(),
            scratch_hb: Vec::new(),
            ordered,
            regions: Regions::new(id, incarnation),
            region_msg: 0,
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
    /// The installed view's content hash (`View::content_hash`): with its id, what
    /// identifies it.
    pub fn view_hash(&self) -> u64 {
        self.view_hash
    }
    /// The position of `node` in the peer table, if known.
    fn idx(&self, node: NodeId) -> Option<usize> {
        find_peer(&self.peers, &self.peer_index, node)
    }

    /// A restarted node numbers the views it makes past `floor`: the largest view counter
    /// its earlier incarnation installed, kept by the driver across the restart (tuttid:
    /// `state_dir/view-counter-NODE`). Without it a node that restarts alone starts again
    /// at 0, and the `evs` list epochs it founds, named by its view counters
    /// (`EvsMember::side_number`) and hosted by it, could take the name, and the memory
    /// node, of one its crashed incarnation founded (simulator, `ordered_sweep evs`: 8 of
    /// 2,000 seeds). Call it before the node runs; a floor below what it saw is ignored.
    pub fn set_view_counter_floor(&mut self, floor: u64) {
        self.max_counter = self.max_counter.max(floor);
    }

    /// Tells the node where `node` (a known peer, or this node itself) is heard from, in an
    /// encoding of the driver's (0: unknown). The coordinator lists these addresses in its
    /// views, so that members can reach peers they never heard from. The driver gives only
    /// addresses it observed itself (the source of an authentic datagram, its own socket).
    pub fn set_address(&mut self, node: NodeId, addr: u64) {
        if node == self.id || self.idx(node).is_some() {
            if addr == 0 {
                self.addresses.remove(&node);
            } else {
                self.addresses.insert(node, addr);
            }
        }
    }
    /// Share installed views with other nodes of this process through `cache` (the
    /// simulator's thousands of nodes then hold one copy of each view).
    pub fn set_view_cache(&mut self, cache: ViewCache) {
        self.view_cache = Some(cache);
    }
    /// Peers this node currently suspects (SWIM) and peers it holds failed.
    pub fn suspected_and_failed(&self) -> (usize, usize) {
        let s = self.peers.iter().filter(|p| !p.dead() && p.suspected()).count();
        let d = self.peers.iter().filter(|p| p.dead()).count();
        (s, d)
    }
    /// Whether this node holds `node` failed (or does not know it).
    pub fn holds_failed(&self, node: NodeId) -> bool {
        self.idx(node)
            .and_then(|i| self.peers.get(i))
            .is_none_or(|p| p.dead())
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
        self.submit_with(now, group, session, payload, |_| {})
    }

    /// As [`Node::submit`], and `local` reads the node's own copy of the bytes in place
    /// (called once, before the call returns, when the message is multicast): `payload` is
    /// read exactly once, so a driver that takes its local copy from here makes local and
    /// remote members get the same bytes even if the source changes meanwhile (a client
    /// rewriting its shared-memory frame).
    pub fn submit_with(
        &mut self,
        now: Time,
        group: GroupId,
        session: u32,
        payload: &[u8],
        local: impl FnOnce(&[u8]),
    ) -> Result<Submitted, SubmitError> {
        self.submit_flow(now, group, session, payload, local, true)
    }

    /// As [`Node::submit_with`], past a full flow-control window (never `Full`): for the
    /// frames a publisher that left or crashed had committed (see
    /// `GroupState::submit_past_flow`).
    pub fn submit_past_flow_with(
        &mut self,
        now: Time,
        group: GroupId,
        session: u32,
        payload: &[u8],
        local: impl FnOnce(&[u8]),
    ) -> Result<Submitted, SubmitError> {
        self.submit_flow(now, group, session, payload, local, false)
    }

    fn submit_flow(
        &mut self,
        now: Time,
        group: GroupId,
        session: u32,
        payload: &[u8],
        local: impl FnOnce(&[u8]),
        respect_flow: bool,
    ) -> Result<Submitted, SubmitError> {
        if payload.len() > self.settings.max_message {
            return Err(SubmitError::TooLarge {
                len: payload.len(),
                max: self.settings.max_message,
            });
        }
        let r = with_ctx!(self, now, |ctx, groups| {
            let g = groups.get_mut(&group).ok_or(SubmitError::NotJoined(group))?;
            let seq = if respect_flow {
                g.submit(payload, session, &mut ctx, local)?
            } else {
                g.submit_past_flow(payload, session, &mut ctx, local)?
            };
            Ok(Submitted {
                stream: g.my_stream(),
                seq,
            })
        });
        self.enforce_node_budget(now);
        r
    }

    /// Keeps all groups together within `node_budget_bytes`: the group holding most gives
    /// up its oldest messages. Inlined, the check alone (every submit makes it; as a call it
    /// was ~1.5% of a node's instructions), the eviction out of line.
    #[inline]
    fn enforce_node_budget(&mut self, now: Time) {
        if self.node_bytes > self.settings.node_budget_bytes {
            self.evict_to_node_budget(now);
        }
    }

    /// [`Self::enforce_node_budget`] once the node is over its budget.
    fn evict_to_node_budget(&mut self, now: Time) {
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
        let t = self.next_tick.min(self.repair_at);
        let t = self.regions.poll_timeout().map_or(t, |r| r.min(t));
        Some(self.ordered.poll_timeout().map_or(t, |o| o.min(t)))
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
        self.events.pop_front().or_else(|| self.ordered_event())
    }

    /// A datagram arrived from `from` (the transport's idea of the sender; the header's
    /// `from` must match it).
    pub fn handle_packet(&mut self, now: Time, from: NodeId, bytes: &[u8]) {
        self.handle_packet_sink(now, from, bytes, None);
    }

    /// As [`Node::handle_packet`], and the multicast messages it delivers go to `sink`
    /// while no event waits in the queue (else, and for every other kind of event, they are
    /// queued for [`Node::poll_event`] as usual): a driver that drains the queue after each
    /// call and sinks into its log writes each message once, from the node's retention.
    pub fn handle_packet_with(
        &mut self,
        now: Time,
        from: NodeId,
        bytes: &[u8],
        sink: &mut dyn FnMut(Delivered<'_>),
    ) {
        self.handle_packet_sink(now, from, bytes, Some(sink));
    }

    fn handle_packet_sink(
        &mut self,
        now: Time,
        from: NodeId,
        bytes: &[u8],
        mut sink: Option<&mut dyn FnMut(Delivered<'_>)>,
    ) {
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
        self.touch(sender);
        if self.relays.iter().any(|r| r.target == from) {
            // Ping requests for `from` are answered: relay its entry to each requester.
            let target = self
                .idx(from)
                .map(|i| Self::entry_of(&self.peers[i], &self.marks));
            let mut k = 0;
            while k < self.relays.len() {
                if self.relays[k].target == from {
                    let r = self.relays.swap_remove(k);
                    if let Some(t) = target {
                        self.counters.acks_sent += 1;
                        self.send_membership(r.requester, HEARTBEAT_FLAG_ACK, Some(t));
                    }
                } else {
                    k += 1;
                }
            }
        }
        for m in d.messages() {
            match m {
                // A retransmission is handled as a stage-1 copy: either way, the first copy
                // of a message to arrive goes on down the sender's tree.
                Message::Data { header, payload, .. } => {
                    with_ctx!(self, now, reborrow(&mut sink), |ctx, groups| match groups
                        .get_mut(&{ header.group })
                    {
                        Some(g) => g.handle_data(from, &header, payload, &mut ctx),
                        None => ctx.counters.not_joined += 1,
                    })
                }
                // A run of whole messages of one stream: one group lookup for all of them.
                Message::DataRun { messages, .. } => {
                    let group = messages.header().group;
                    with_ctx!(
                        self,
                        now,
                        reborrow(&mut sink),
                        |ctx, groups| match groups.get_mut(&group) {
                            Some(g) => g.handle_run(from, &messages, &mut ctx),
                            None => ctx.counters.not_joined += 1,
                        }
                    )
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
                Message::ViewRequest { header, parts } => {
                    // Any member serves its view (pulled by members that saw its id and
                    // hash in our heartbeats): once per asker per round, and at most
                    // `VIEW_SENDS_PER_ROUND` times a round in all. Only the parts the asker
                    // lacks, if it pulls this very view split as we split it.
                    if self.view_sends_round != self.round {
                        self.view_sends_round = self.round;
                        self.view_sends = 0;
                        self.view_sent.clear();
                    }
                    if self.idx(from).is_some() && !self.view_sent.contains(&from) {
                        if self.view_sends < VIEW_SENDS_PER_ROUND {
                            self.view_sends += 1;
                            self.view_sent.push(from);
                            let wanted = ViewId {
                                counter: header.counter,
                                coordinator: header.coordinator,
                                coordinator_incarnation: header.coordinator_incarnation,
                            };
                            let same = wanted == self.view.id && header.hash == self.view_hash;
                            let only: Vec<u32> = if same { parts.iter().collect() } else { Vec::new() };
                            self.send_view(from, &only, header.parts);
                        } else {
                            self.counters.view_requests_deferred += 1;
                        }
                    }
                }
                Message::GroupJoin(g) => self.pending_group_change(g.group, from, Some(g.stream)),
                Message::GroupLeave(g) => self.pending_group_change(g.group, from, None),
                Message::FlowStatus(status) => {
                    with_ctx!(self, now, |ctx, groups| match groups.get_mut(&{ status.group }) {
                        Some(g) => g.handle_flow_status(from, &status, &mut ctx),
                        None => ctx.counters.not_joined += 1,
                    })
                }
                Message::Ordered { header, kind, bytes } => {
                    self.ordered.handle_fragment(now, from, &header, kind, bytes);
                    self.flush_ordered();
                    self.regions_pump(now);
                }
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
        if self.ordered.poll_timeout().is_some_and(|t| t <= now) {
            self.ordered.handle_timeout(now);
            self.flush_ordered();
        }
        if self.regions.poll_timeout().is_some_and(|t| t <= now) {
            self.regions.handle_timeout(now);
        }
        self.regions_pump(now);
    }

    // ---------------------------------------------------------------- membership

    /// SWIM's suspicion timeout for our cluster size (`Settings::suspicion_timeout`).
    fn effective_suspect_timeout(&self) -> Time {
        let n = self.view.members.len().max(self.direct_peers + 1);
        self.settings.suspicion_timeout(n)
    }

    /// Times news of a peer is piggybacked: `GOSSIP_LAMBDA * ceil(log10(n + 1))`.
    fn news_transmissions(&self) -> u8 {
        let n = self.view.members.len().max(self.direct_peers + 1) as u64 + 1;
        let (mut log, mut pow) = (0u32, 1u64);
        while pow < n {
            pow = pow.saturating_mul(10);
            log += 1;
        }
        (GOSSIP_LAMBDA * log).clamp(1, u32::from(u8::MAX)) as u8
    }

    /// Something changed about peer `i` (joined, suspected, failed, refuted, leaving):
    /// piggyback its entry on the next messages. Only verified peers are relayed.
    /// Liveness news (suspicions, failures, refutations) goes first: it races a timeout,
    /// and a burst of joins (thousands at a cluster's start) must not delay it.
    fn announce(&mut self, i: usize) {
        self.queue_news(i, true);
    }

    /// A join heard first-hand: news after the liveness news.
    fn announce_join(&mut self, i: usize) {
        self.queue_news(i, false);
    }

    fn queue_news(&mut self, i: usize, urgent: bool) {
        let times = self.news_transmissions();
        let cap = 2 * self.peers.len() + 16;
        let p = &mut self.peers[i];
        if !p.direct {
            return;
        }
        let queued = p.gossip_left > 0;
        p.gossip_left = times;
        let node = p.member.node;
        if urgent && self.news.len() < cap {
            // Perhaps queued twice then: each copy spends the same `gossip_left`.
            self.news.push_front(node);
        } else if !queued {
            self.news.push_back(node);
        }
    }

    /// Peer `i` is suspected from now (at its current heartbeat).
    fn suspect(&mut self, i: usize) {
        let p = &mut self.peers[i];
        if p.dead() || p.suspected() {
            return;
        }
        p.liveness = Liveness::Suspected;
        let node = p.member.node;
        let mark = Mark {
            since_round: self.round,
            hb_at_mark: p.heartbeat,
        };
        self.marks.insert(node, mark);
        self.watch.push(node);
        self.announce(i);
    }

    /// Peer `i` is held failed from now.
    fn confirm_dead(&mut self, i: usize, heartbeat: u32) {
        let p = &mut self.peers[i];
        if p.dead() {
            return;
        }
        p.liveness = Liveness::Failed;
        let node = p.member.node;
        let mark = Mark {
            since_round: self.round,
            hb_at_mark: p.heartbeat.max(heartbeat),
        };
        self.marks.insert(node, mark);
        self.watch.push(node);
        self.counters.peers_confirmed_dead += 1;
        self.announce(i);
    }

    /// Whether `node` is in our installed view (in the incarnation we know).
    fn in_our_view(&self, node: NodeId) -> bool {
        node == self.id || self.idx(node).is_some_and(|i| self.peers[i].in_view)
    }

    fn is_alive(&self, m: Member) -> bool {
        if m.node == self.id {
            return m.incarnation == self.incarnation;
        }
        match self.idx(m.node) {
            Some(i) => {
                let p = &self.peers[i];
                p.member.incarnation == m.incarnation && !p.dead() && !p.leaving
            }
            None => false,
        }
    }

    fn insert_peer(&mut self, m: Member, heartbeat: u32, direct: bool) -> Option<usize> {
        if self.peers.len() >= self.settings.max_peers
            || (!direct && self.peers.len().saturating_sub(self.direct_peers) >= MAX_UNVERIFIED_PEERS)
        {
            self.counters.peers_full += 1;
            return None;
        }
        if self.peers.len() == self.peers.capacity() {
            // Grow by an eighth, not double: the table is the largest per-member state
            // (the simulator holds 10,000 of them), and peers arrive in trickles.
            let more = (self.peers.len() / 8).max(16);
            self.peers.reserve_exact(more);
        }
        self.peers.push(Peer {
            member: m,
            heartbeat,
            heard_round: self.round,
            liveness: Liveness::Alive,
            gossip_left: 0,
            leaving: false,
            in_view: false,
            replied_round: NO_ROUND as u16,
            direct,
        });
        if direct {
            self.direct_peers += 1;
        } else {
            self.watch.push(m.node);
        }
        let i = self.peers.len() - 1;
        let peers = &self.peers;
        self.peer_index.insert(i as u32, |p| {
            peers.get(p as usize).map_or(NodeId::MAX, |q| q.member.node)
        });
        if direct {
            self.announce_join(i);
        }
        Some(i)
        // (A peer whose news was cleared right after insertion stays in `news` until its
        // turn and is then skipped: `gossip_left` is 0.)
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
    fn touch(&mut self, m: Member) {
        if m.node == self.id {
            return;
        }
        match self.idx(m.node) {
            Some(i) => {
                let p = &mut self.peers[i];
                let mut news = false;
                if m.incarnation > p.member.incarnation {
                    p.member = m;
                    p.in_view = false;
                    p.heartbeat = 0;
                    p.leaving = false;
                    news = true;
                }
                if m.incarnation == p.member.incarnation {
                    p.heard_round = self.round;
                    if p.dead() || p.suspected() {
                        if p.suspected() {
                            self.counters.suspicions_refuted += 1;
                        } else if self.removal_checks.iter().any(|c| c.node == m.node) {
                            // Our removal check answered: a false failure, not a heal.
                            self.counters.removals_averted += 1;
                        } else if !news {
                            // Failed, yet alive in the same incarnation: a partition heals.
                            self.revived_round = self.round;
                        }
                        news = true;
                    }
                    p.set_alive();
                    if !p.direct {
                        p.direct = true;
                        self.direct_peers += 1;
                        news = true;
                    }
                }
                if news {
                    self.announce(i);
                }
            }
            None => {
                let _ = self.insert_peer(m, 0, true);
            }
        }
    }

    /// A claim that this node is suspected or failed at heartbeat `claimed`: refute it by
    /// raising our heartbeat past it (the claim then loses to our next messages).
    fn refute(&mut self, e: &HeartbeatEntry) {
        if e.incarnation != self.incarnation || e.flags & (HEARTBEAT_FLAG_SUSPECT | HEARTBEAT_FLAG_DEAD) == 0
        {
            return;
        }
        if e.heartbeat > self.heartbeat.saturating_add(MAX_REFUTE_JUMP) {
            self.counters.implausible_heartbeats += 1;
            return;
        }
        let need = e.heartbeat.saturating_add(1);
        if need > self.heartbeat {
            self.heartbeat = need;
            self.counters.refutations += 1;
        }
    }

    /// A relayed (or the sender's own) entry about known peer `i`.
    fn merge_entry(&mut self, i: usize, e: &HeartbeatEntry, own: bool) {
        let leaving = own && e.flags & HEARTBEAT_FLAG_LEAVING != 0;
        let p = &mut self.peers[i];
        if e.incarnation > p.member.incarnation {
            if !own {
                // A restart is learned from the node itself or from a view, never from a
                // third party's word: that would evict a live member.
                self.counters.relayed_incarnations_ignored += 1;
                return;
            }
            p.member = Member {
                node: e.node,
                incarnation: e.incarnation,
            };
            p.in_view = false;
            p.heartbeat = e.heartbeat;
            p.heard_round = self.round;
            p.set_alive();
            p.leaving = leaving;
            self.announce(i);
            return;
        }
        if e.incarnation < p.member.incarnation {
            return;
        }
        if leaving && !p.leaving {
            p.leaving = true;
            self.announce(i);
            return;
        }
        if own {
            // The node's own word (`touch` already took it as alive). A raised heartbeat
            // is a refutation: news for everyone still holding the claim it refutes.
            if e.heartbeat > p.heartbeat {
                p.heartbeat = e.heartbeat;
                self.announce(i);
            }
            return;
        }
        // A claim at an older heartbeat than ours was refuted (SWIM): we pass the
        // refutation on again, since the claim travels among members that missed it (the
        // refutation's news may have run its course). A member that did crash after the
        // refutation is soon suspected at the current heartbeat by any member that probes
        // it, and that claim every member accepts.
        let stale_claim = e.heartbeat < p.heartbeat;
        if e.flags & (HEARTBEAT_FLAG_DEAD | HEARTBEAT_FLAG_SUSPECT) != 0 && stale_claim {
            if !p.dead() && !p.suspected() && p.gossip_left == 0 {
                self.announce(i);
            }
        } else if e.flags & HEARTBEAT_FLAG_DEAD != 0 {
            // A failure claimed by another member is final only for a peer we have not
            // heard from directly for `suspect_timeout` (a crashed member was last heard
            // at least that long before anyone confirms it: it must be suspected first).
            // Else the claim may be stale (made by a member cut off from the peer, and
            // arriving as the partition heals): we only suspect the peer, which then
            // refutes, or is confirmed by our own suspicion timeout.
            let (dead, suspected, heard) = (p.dead(), p.suspected(), p.heard_round);
            if !dead && self.rounds_over(heard, self.settings.suspect_timeout) {
                self.confirm_dead(i, e.heartbeat);
            } else if !dead && !suspected {
                self.counters.failure_claims_downgraded += 1;
                self.suspect(i);
            }
        } else if e.flags & HEARTBEAT_FLAG_SUSPECT != 0 {
            if !p.dead() && !p.suspected() {
                self.suspect(i);
            }
        } else if e.heartbeat > p.heartbeat {
            // A refutation: passed on whatever we held (a member that knows the current
            // heartbeat ignores claims made at an older one).
            p.heartbeat = e.heartbeat;
            let at_mark = self.marks.get(&e.node).map_or(0, |m| m.hb_at_mark);
            if p.dead() {
                if e.heartbeat > at_mark {
                    p.set_alive();
                    p.heard_round = self.round;
                }
            } else {
                p.heard_round = self.round;
                if p.suspected() && e.heartbeat > at_mark {
                    p.set_alive();
                    self.counters.suspicions_refuted += 1;
                }
            }
            self.announce(i);
        }
    }

    fn handle_heartbeats(
        &mut self,
        now: Time,
        from: Member,
        header: &HeartbeatHeader,
        entries: impl Iterator<Item = HeartbeatEntry>,
    ) {
        let mut added = 0;
        let mut kind = 0;
        let mut second = None;
        for (k, e) in entries.enumerate() {
            if k == 0 && e.node == from.node {
                kind = e.flags & (HEARTBEAT_FLAG_PROBE | HEARTBEAT_FLAG_ACK | HEARTBEAT_FLAG_PING_REQ);
            }
            if k == 1 {
                second = Some(e);
            }
            if e.node == self.id {
                self.refute(&e);
                continue;
            }
            let own = e.node == from.node;
            match self.idx(e.node) {
                None if own => {
                    if let Some(i) = self.insert_peer(from, e.heartbeat, true) {
                        self.peers[i].leaving = e.flags & HEARTBEAT_FLAG_LEAVING != 0;
                    }
                }
                None => {
                    // Named by a relay: the coordinator of a view keeps it unverified and
                    // probes it; it enters views once it answers. Other members, and nodes
                    // still alone, learn members from views (a joiner named in news would
                    // otherwise be probed by every node that hears of it, and answer each).
                    // Obituaries teach nothing.
                    if e.flags & (HEARTBEAT_FLAG_SUSPECT | HEARTBEAT_FLAG_DEAD) != 0
                        || self.view.members.len() <= 1
                        || self.coordinator() != self.id
                    {
                        continue;
                    }
                    if added >= NEW_PEERS_PER_DATAGRAM {
                        self.counters.peers_full += 1;
                        continue;
                    }
                    let m = Member {
                        node: e.node,
                        incarnation: e.incarnation,
                    };
                    if self.insert_peer(m, e.heartbeat, false).is_some() {
                        added += 1;
                        self.send_membership(e.node, 0, None);
                    }
                }
                Some(i) => self.merge_entry(i, &e, own),
            }
        }
        // SWIM: answer a probe; serve a ping request; take a relayed ack as the answer to
        // our probe of the node it names.
        if kind & HEARTBEAT_FLAG_PROBE != 0 {
            self.counters.acks_sent += 1;
            self.send_membership(from.node, HEARTBEAT_FLAG_ACK, None);
        }
        if let Some(t) = second {
            if kind & HEARTBEAT_FLAG_PING_REQ != 0
                && t.node != self.id
                && t.node != from.node
                && self.relays.len() < MAX_RELAYS
                && self.idx(t.node).is_some()
            {
                self.relays.push(Relay {
                    target: t.node,
                    requester: from.node,
                    round: self.round,
                });
                self.counters.probes_sent += 1;
                self.send_membership(t.node, HEARTBEAT_FLAG_PROBE, None);
            }
            if kind & HEARTBEAT_FLAG_ACK != 0 {
                if let Some(i) = self.idx(t.node) {
                    let checked = t.flags & (HEARTBEAT_FLAG_SUSPECT | HEARTBEAT_FLAG_DEAD) == 0
                        && self
                            .removal_checks
                            .iter()
                            .any(|c| c.node == t.node && c.helpers.contains(&from.node));
                    let p = &mut self.peers[i];
                    if p.member.incarnation == t.incarnation
                        && !p.dead()
                        && self.probes.iter().any(|pr| pr.target == t.node)
                    {
                        p.heard_round = self.round;
                    } else if p.member.incarnation == t.incarnation && p.dead() && checked {
                        // Our removal check's ping request answered: alive after all.
                        p.set_alive();
                        p.heard_round = self.round;
                        self.counters.removals_averted += 1;
                        self.announce(i);
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
        if their.newer_than(&self.view.id) {
            self.note_announcement(now, their, header.view_hash, from.node);
            if their.newer_than(&self.view.id) && self.view_request_round != self.round {
                // Pull it (once a round) from the member whose parts of it we hold in part,
                // if any (only the parts we lack: its parts complete them), else whole from
                // this one. Not if we hold it whole already, waiting for a vouch.
                let held = self
                    .unvouched
                    .as_ref()
                    .is_some_and(|(v, h)| v.id == their && *h == header.view_hash);
                if !held {
                    self.view_request_round = self.round;
                    let mut req = ViewRequestHeader {
                        counter: their.counter,
                        coordinator: their.coordinator,
                        coordinator_incarnation: their.coordinator_incarnation,
                        hash: header.view_hash,
                        parts: 0,
                        count: 0,
                    };
                    let mut missing = Vec::new();
                    let to = match self
                        .assembling
                        .iter()
                        .filter(|a| a.id == their)
                        .max_by_key(|a| a.received_count)
                    {
                        Some(a) => {
                            a.missing(packet::MAX_VIEW_REQUEST_PARTS, &mut missing);
                            req.parts = a.parts;
                            a.from
                        }
                        None => from.node,
                    };
                    if missing.is_empty() {
                        req.parts = 0;
                    }
                    self.counters.view_requests += 1;
                    self.counters.view_parts_requested += missing.len() as u64;
                    self.out
                        .push(to, packet::VIEW_REQUEST_HEADER_LEN + 4 * missing.len(), |e| {
                            e.push_view_request(&req, &missing)
                        });
                }
            }
        }
        // Answer nodes outside our view (joiners, the other side of a healed partition).
        if kind == 0 && !self.in_our_view(from.node) {
            if let Some(i) = self.idx(from.node) {
                if self.peers[i].replied_round != self.round as u16 {
                    self.peers[i].replied_round = self.round as u16;
                    self.send_membership(from.node, 0, None);
                }
            }
        }
    }

    /// The entry for peer `p` as we relay it: suspected or failed at the heartbeat it was
    /// at then, else alive at its heartbeat.
    fn entry_of(p: &Peer, marks: &FxMap<NodeId, Mark>) -> HeartbeatEntry {
        let at_mark = || marks.get(&p.member.node).map_or(p.heartbeat, |m| m.hb_at_mark);
        let (flags, heartbeat) = if p.dead() {
            (HEARTBEAT_FLAG_DEAD, at_mark())
        } else if p.suspected() {
            (HEARTBEAT_FLAG_SUSPECT, at_mark())
        } else {
            (0, p.heartbeat)
        };
        HeartbeatEntry {
            node: p.member.node,
            incarnation: p.member.incarnation,
            heartbeat,
            flags: flags | if p.leaving { HEARTBEAT_FLAG_LEAVING } else { 0 },
        }
    }

    /// Sends a membership message: our own entry (with `kind`: a probe, an ack, a ping
    /// request or 0 for plain gossip), `extra` (the node a ping request names, or the node
    /// a relayed ack is for), then news piggybacked, at most `Settings::heartbeat_entries`
    /// entries in all and within one datagram.
    fn send_membership(&mut self, to: NodeId, kind: u32, extra: Option<HeartbeatEntry>) {
        let mut entries = std::mem::take(&mut self.scratch_hb);
        entries.clear();
        entries.push(HeartbeatEntry {
            node: self.id,
            incarnation: self.incarnation,
            heartbeat: self.heartbeat,
            flags: kind | if self.leaving { HEARTBEAT_FLAG_LEAVING } else { 0 },
        });
        entries.extend(extra);
        // A member we suspect or hold failed hears it first, so that it refutes at once.
        if let Some(p) = self.idx(to).map(|i| &self.peers[i]) {
            if (p.suspected() || p.dead()) && extra.is_none_or(|x| x.node != to) {
                entries.push(Self::entry_of(p, &self.marks));
            }
        }
        // Entries that fit one datagram of `max_datagram` bytes.
        let fit = self.settings.max_datagram.saturating_sub(
            packet::DATAGRAM_HEADER_LEN
                + packet::MESSAGE_HEADER_LEN
                + core::mem::size_of::<HeartbeatHeader>(),
        ) / core::mem::size_of::<HeartbeatEntry>();
        let want = self.settings.heartbeat_entries.max(2).min(fit);
        let queued = self.news.len();
        let mut scanned = 0;
        while entries.len() < want && scanned < queued {
            scanned += 1;
            let Some(node) = self.news.pop_front() else {
                break;
            };
            let Some(i) = self.idx(node) else {
                continue;
            };
            let p = &mut self.peers[i];
            if p.gossip_left == 0 || entries.iter().any(|e| e.node == node) {
                if p.gossip_left > 0 {
                    self.news.push_back(node);
                }
                continue;
            }
            entries.push(Self::entry_of(p, &self.marks));
            p.gossip_left -= 1;
            if p.gossip_left > 0 {
                self.news.push_back(node);
            }
        }
        let header = HeartbeatHeader {
            view_counter: self.view.id.counter,
            view_coordinator: self.view.id.coordinator,
            view_coordinator_incarnation: self.view.id.coordinator_incarnation,
            max_counter: self.max_counter,
            view_hash: self.view_hash,
        };
        self.counters.heartbeats_sent += 1;
        let body = core::mem::size_of::<HeartbeatHeader>() + std::mem::size_of_val(entries.as_slice());
        let es = &entries;
        self.out.push(to, body, |e| e.push_heartbeats(&header, es));
        self.scratch_hb = entries;
    }

    fn send_heartbeats(&mut self, to: NodeId) {
        self.send_membership(to, 0, None);
    }

    /// The next member to probe: round-robin over a random permutation of the peer table
    /// (the view's members and the verified peers outside it), drawn anew each time it is
    /// walked.
    fn next_probe_target(&mut self) -> Option<NodeId> {
        for _ in 0..2 {
            while self.probe_pos < self.probe_len {
                let k = self.probe_pos as u64;
                self.probe_pos += 1;
                let i = (self.probe_mul as u64 * k + self.probe_add as u64) % self.probe_len as u64;
                let Some(p) = self.peers.get(i as usize) else {
                    continue;
                };
                let t = p.member.node;
                if !p.dead() && !p.leaving && p.direct && !self.probes.iter().any(|p| p.target == t) {
                    return Some(t);
                }
            }
            let len = self.peers.len();
            if len == 0 {
                return None;
            }
            // `k -> (a k + b) mod len` is a permutation when `a` is coprime with `len`.
            let mut a = 1;
            for _ in 0..64 {
                let c = self.rng.gen_range(1..len.max(2));
                if gcd(c, len) == 1 {
                    a = c;
                    break;
                }
            }
            (self.probe_len, self.probe_mul, self.probe_add, self.probe_pos) =
                (len, a, self.rng.gen_range(0..len), 0);
        }
        None
    }

    /// Whether more than `t` has passed since round `since` (rounds of `gossip_period`).
    fn rounds_over(&self, since: u32, t: Time) -> bool {
        u64::from(self.round.wrapping_sub(since)).saturating_mul(self.settings.gossip_period.max(1)) > t
    }

    /// SWIM's round: probes of the last rounds not answered go indirect, then suspected;
    /// suspicions time out into failures; one new member is probed.
    fn failure_detection(&mut self) {
        let probes = std::mem::take(&mut self.probes);
        for mut pr in probes {
            let Some(i) = self.idx(pr.target) else {
                continue;
            };
            let p = &self.peers[i];
            if p.dead() || p.leaving || p.heard_round.wrapping_sub(pr.sent_round) < 1 << 31 {
                continue;
            }
            // Helpers the view offers for this target now: members other than us and it.
            let offered = self
                .view
                .members
                .len()
                .saturating_sub(1 + usize::from(p.in_view))
                .min(PING_REQ_FANOUT);
            let short_of_helpers = (usize::from(pr.helpers_asked) < offered
                || pr.view_counter != self.view.id.counter)
                && pr.cycles < MAX_PROBE_CYCLES;
            if short_of_helpers && pr.cycles >= PROBE_CYCLES {
                self.counters.probe_cycles_added += 1;
            }
            if !pr.indirect || pr.cycles < PROBE_CYCLES || short_of_helpers {
                if pr.indirect {
                    // Another cycle: probe it again directly, as well as through others.
                    pr.cycles += 1;
                    self.counters.probes_sent += 1;
                    self.send_membership(pr.target, HEARTBEAT_FLAG_PROBE, None);
                }
                pr.indirect = true;
                let p = &self.peers[i];
                let target = Self::entry_of(p, &self.marks);
                let target = HeartbeatEntry { flags: 0, ..target };
                let mut helpers = std::mem::take(&mut self.scratch_targets);
                helpers.clear();
                self.pick_view_targets(PING_REQ_FANOUT + 1, &mut helpers);
                helpers.retain(|h| *h != pr.target);
                helpers.truncate(PING_REQ_FANOUT);
                pr.helpers_asked = pr.helpers_asked.saturating_add(helpers.len() as u8);
                for &h in &helpers {
                    self.counters.ping_reqs_sent += 1;
                    self.send_membership(h, HEARTBEAT_FLAG_PING_REQ, Some(target));
                }
                self.scratch_targets = helpers;
                self.probes.push(pr);
            } else if self.view.members.len() <= 1 {
                // Alone: nobody could probe it for us, and no view of ours holds it (while
                // alone we heartbeat our seeds every round; a member that answers joins
                // our view, and is suspected from there on as any member is).
                self.counters.suspicions_withheld_alone += 1;
            } else if !self.peers[i].suspected() {
                self.counters.suspicions_raised += 1;
                self.suspect(i);
            }
        }
        // Timeouts: only the watched peers (suspected, failed or unverified) can time out.
        let timeout = self.effective_suspect_timeout();
        let unverified_timeout = self.settings.suspect_timeout;
        let mut watch = std::mem::take(&mut self.watch);
        watch.sort_unstable();
        watch.dedup();
        watch.retain(|&n| {
            let Some(i) = self.idx(n) else {
                return false;
            };
            let p = &self.peers[i];
            if p.dead() {
                return true; // until forgotten
            }
            if !p.suspected() && p.direct {
                self.marks.remove(&n);
                return false; // recovered, or verified
            }
            let since = self.marks.get(&n).map_or(self.round, |m| m.since_round);
            if (p.suspected() && self.rounds_over(since, timeout))
                || (!p.direct && self.rounds_over(p.heard_round, unverified_timeout))
            {
                let hb = p.heartbeat;
                self.confirm_dead(i, hb);
            }
            true
        });
        watch.append(&mut self.watch);
        self.watch = watch;
        let round = self.round;
        self.relays
            .retain(|r| round.wrapping_sub(r.round) <= RELAY_ROUNDS);
        if self.probes.len() < MAX_PROBES {
            if let Some(t) = self.next_probe_target() {
                self.probes.push(Probe {
                    target: t,
                    sent_round: self.round,
                    indirect: false,
                    cycles: 1,
                    helpers_asked: 0,
                    view_counter: self.view.id.counter,
                });
                self.counters.probes_sent += 1;
                self.send_membership(t, HEARTBEAT_FLAG_PROBE, None);
            }
        }
    }

    /// Sends our view to `to`, in parts that each fit a datagram of `max_datagram` bytes:
    /// the parts `only` lists if `to` holds the others (it split the view into `parts`
    /// parts, as we do), else all of them.
    fn send_view(&mut self, to: NodeId, only: &[u32], parts: u32) {
        let max_body = self
            .settings
            .max_datagram
            .saturating_sub(packet::DATAGRAM_HEADER_LEN + packet::MESSAGE_HEADER_LEN);
        let encoded = match &self.encoded_view {
            Some(e) if e.max_body == max_body => e.clone(),
            _ => {
                let (id, hash) = (self.view.id, self.view_hash);
                let e = match &self.view_cache {
                    Some(c) => c.encoded(id, hash, max_body, || {
                        Self::encode_view(&self.view, hash, max_body)
                    }),
                    None => Self::encode_view(&self.view, hash, max_body).map(Arc::new),
                };
                let Some(e) = e else {
                    // `max_datagram` too small for any view part: counted, as an oversize message.
                    self.out.oversize += 1;
                    return;
                };
                self.encoded_view = Some(e.clone());
                e
            }
        };
        let all = only.is_empty() || parts as usize != encoded.bodies.len();
        let witness = if self.view_source != self.id && self.view_source != to {
            self.view_source
        } else {
            packet::NO_WITNESS
        };
        let mut send = |body: &[u8]| {
            self.counters.views_sent += 1;
            self.out.push(to, body.len(), |e| e.push_view_body(body, witness));
        };
        if all {
            encoded.bodies.iter().for_each(|b| send(b));
        } else {
            only.iter()
                .filter_map(|&p| encoded.bodies.get(p as usize))
                .for_each(|b| send(b));
        }
    }

    /// `view`'s parts, encoded within `max_body` bytes each; `None` if no part fits.
    fn encode_view(view: &View, hash: u64, max_body: usize) -> Option<EncodedView> {
        let members: Vec<MemberEntry> = view
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| MemberEntry {
                node: m.node,
                incarnation: m.incarnation,
                addr: view.addr(i),
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
        let id = view.id;
        let parts = ViewParts::new(
            id.counter,
            (id.coordinator, id.coordinator_incarnation),
            &members,
            &gs,
            max_body,
        )
        .ok()?;
        let bodies = (0..parts.len())
            .map(|p| packet::view_part_body(&parts, p))
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        Some(EncodedView {
            id,
            hash,
            max_body,
            bodies,
        })
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
        if !self.plausible_counter(id.counter) {
            return;
        }
        if !id.newer_than(&self.view.id) {
            return;
        }
        // Parts are assembled per sender: another member's parts of the same view id
        // (perhaps forged) never mix with them.
        let i = match self.assembling.iter().position(|a| a.id == id && a.from == from) {
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
                    // Keep the newest: give up the oldest held (of the oldest view, the
                    // one with the fewest parts), or this part if its view is older.
                    let oldest = (0..self.assembling.len())
                        .reduce(|o, j| {
                            let (a, b) = (&self.assembling[o], &self.assembling[j]);
                            if a.id.newer_than(&b.id) || (a.id == b.id && b.received_count < a.received_count)
                            {
                                j
                            } else {
                                o
                            }
                        })
                        .unwrap_or(0);
                    self.counters.view_assemblies_dropped += 1;
                    if self.assembling[oldest].id.newer_than(&id) {
                        return;
                    }
                    self.assembling.swap_remove(oldest);
                }
                self.assembling.push(ViewAssembly {
                    id,
                    from,
                    witness: packet::NO_WITNESS,
                    parts: header.parts,
                    members: header.members,
                    groups: header.groups,
                    received: vec![0; (header.parts as usize).div_ceil(64)],
                    received_count: 0,
                    member_slices: Vec::new(),
                    addr_slices: Vec::new(),
                    group_parts: BTreeMap::new(),
                    held: 0,
                    declared: u64::from(header.members),
                });
                self.assembling.len() - 1
            }
        };
        self.assembling[i].witness = header.witness;
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
        let witness = self.assembling[i].witness;
        match self.assembling.swap_remove(i).build() {
            Some(view) => {
                let hash = view.content_hash();
                if from == view.id.coordinator || self.vouched(view.id, hash) {
                    self.handle_view(now, from, view, hash);
                } else if self
                    .unvouched
                    .as_ref()
                    .is_none_or(|(v, _)| !v.id.newer_than(&view.id))
                {
                    // Held until its coordinator or a second member vouches for it: ask
                    // the witness its sender named (a member holding it), whose answer
                    // carries its view id and hash. A hostile sender naming an honest
                    // member gains nothing: that member's answer shows its real view.
                    let listed = view.members.iter().any(|m| m.node == witness);
                    self.unvouched = Some((view, hash));
                    self.unvouched_witness =
                        (witness != from && witness != self.id && listed).then_some(witness);
                    self.probe_witness();
                }
                let current = self.view.id;
                self.assembling.retain(|a| a.id.newer_than(&current));
            }
            None => self.counters.bad_view_parts += 1,
        }
    }

    /// Asks again, once a round, for the parts still missing of the newest view in
    /// assembly (a pull was otherwise repeated only when a member announcing that view
    /// happened to talk to us: rare while few members hold it).
    fn rerequest_view_parts(&mut self) {
        if self.view_request_round == self.round {
            return;
        }
        let Some(a) = self
            .assembling
            .iter()
            .filter(|a| a.id.newer_than(&self.view.id))
            .max_by_key(|a| (a.id.counter, a.received_count))
        else {
            return;
        };
        let Some(hash) = self.announced.iter().find(|x| x.id == a.id).map(|x| x.hash) else {
            return;
        };
        let mut missing = Vec::new();
        a.missing(packet::MAX_VIEW_REQUEST_PARTS, &mut missing);
        if missing.is_empty() {
            return;
        }
        let req = ViewRequestHeader {
            counter: a.id.counter,
            coordinator: a.id.coordinator,
            coordinator_incarnation: a.id.coordinator_incarnation,
            hash,
            parts: a.parts,
            count: 0,
        };
        let to = a.from;
        self.view_request_round = self.round;
        self.counters.view_requests += 1;
        self.counters.view_parts_requested += missing.len() as u64;
        self.out
            .push(to, packet::VIEW_REQUEST_HEADER_LEN + 4 * missing.len(), |e| {
                e.push_view_request(&req, &missing)
            });
    }

    /// Probes the witness of the view held unvouched, if any (once a round).
    fn probe_witness(&mut self) {
        if self.unvouched.is_none() {
            self.unvouched_witness = None;
        }
        if let Some(w) = self.unvouched_witness {
            self.counters.witness_probes += 1;
            self.send_membership(w, HEARTBEAT_FLAG_PROBE, None);
        }
    }

    /// Whether view `(id, hash)` may be installed from a member other than its coordinator:
    /// its coordinator announced it to us, or two distinct members did (so that one hostile
    /// member cannot make us install a view it forged in the coordinator's name).
    fn vouched(&self, id: ViewId, hash: u64) -> bool {
        self.announced
            .iter()
            .any(|a| a.id == id && a.hash == hash && (a.by_coordinator || a.second.is_some()))
    }

    /// Member `from` says its view is `(id, hash)` (newer than ours).
    fn note_announcement(&mut self, now: Time, id: ViewId, hash: u64, from: NodeId) {
        match self.announced.iter_mut().find(|a| a.id == id && a.hash == hash) {
            Some(a) => {
                if a.by != from && a.second.is_none() {
                    a.second = Some(from);
                }
                a.by_coordinator |= from == id.coordinator;
            }
            None => {
                if self.announced.len() >= MAX_ANNOUNCED_VIEWS {
                    // Forget the oldest announcement.
                    if let Some(k) = (0..self.announced.len()).min_by_key(|&k| {
                        let a = &self.announced[k];
                        (
                            a.id.counter,
                            std::cmp::Reverse((a.id.coordinator_incarnation, a.id.coordinator)),
                        )
                    }) {
                        self.announced.swap_remove(k);
                    }
                }
                self.announced.push(Announced {
                    id,
                    hash,
                    by: from,
                    second: None,
                    by_coordinator: from == id.coordinator,
                });
            }
        }
        if self
            .unvouched
            .as_ref()
            .is_some_and(|(v, h)| v.id == id && *h == hash)
            && self.vouched(id, hash)
        {
            if let Some((v, h)) = self.unvouched.take() {
                self.handle_view(now, from, v, h);
            }
        }
    }

    fn handle_view(&mut self, now: Time, from: NodeId, view: View, hash: u64) {
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
        if from == view.id.coordinator {
            self.touch(coordinator);
        }
        if let Some(i) = self.dropped_member_we_hear(&view) {
            self.counters.views_deferred += 1;
            // Its coordinator may never have heard of that member (one that started on our
            // side while we were cut off, its news long spent here): named to it, as a
            // relay names a joiner, it probes the member and its next view holds it.
            // Without this a heal could leave two views apart for good (sim `evs` seed
            // 900; proto/tests/membership_heal.rs).
            let named = Self::entry_of(&self.peers[i], &self.marks);
            self.counters.deferred_members_named += 1;
            self.send_membership(view.id.coordinator, 0, Some(named));
            return;
        }
        for m in &view.members {
            if m.node == self.id {
                continue;
            }
            match self.idx(m.node) {
                None => {
                    // Learned from the view, which spreads itself: no news of it (a view of
                    // n new members would otherwise queue n news items at every member,
                    // ahead of the suspicions and refutations that must travel fast).
                    if let Some(i) = self.insert_peer(*m, 0, true) {
                        self.peers[i].gossip_left = 0;
                    }
                }
                Some(i) if self.peers[i].member.incarnation == m.incarnation => {
                    if !self.peers[i].direct {
                        self.peers[i].direct = true;
                        self.direct_peers += 1;
                    }
                }
                // The coordinator saw the node restart: so do we.
                Some(i) if self.peers[i].member.incarnation < m.incarnation => {
                    let p = &mut self.peers[i];
                    p.member = *m;
                    p.heartbeat = 0;
                    p.heard_round = self.round;
                    p.set_alive();
                    p.leaving = false;
                    p.set_alive();
                    if !p.direct {
                        p.direct = true;
                        self.direct_peers += 1;
                    }
                }
                Some(_) => {}
            }
        }
        let view = match &self.view_cache {
            Some(c) => c.intern(view, hash),
            None => Arc::new(view),
        };
        self.view_source = from;
        if self
            .unvouched
            .as_ref()
            .is_some_and(|(v, _)| !v.id.newer_than(&view.id))
        {
            self.unvouched = None;
        }
        if view.id.counter == self.view.id.counter {
            // A concurrent view with our counter replaces ours (two coordinators of two
            // sides numbered their views alike, and the sides met again). Its coordinator
            // may not know ours existed: the members that installed ours named their `evs`
            // list epochs by this counter, so without a later view they would stay in
            // those lists (sim `evs` seed 5566: [1] and [2, 3] for good in one cluster
            // view of all three). Claiming the next counter makes the coordinator install
            // one above it.
            self.claim_counter_above(view.id.counter);
            self.counters.views_superseded += 1;
        }
        self.install(now, view);
    }

    /// The peer index of a member of our view that `view` drops although we heard from it
    /// directly within `suspect_timeout`, when `view` comes from a coordinator outside our
    /// view (a side we were cut off from, merging us): its coordinator holds that member
    /// failed on what it saw while cut off, or never heard of it. We wait: the coordinator
    /// sends heartbeats to the peers it holds failed while a merge is on
    /// (`merge_on_hold`), and probes a member we name to it; it hears them answer, and its
    /// next view holds them.
    fn dropped_member_we_hear(&self, view: &View) -> Option<usize> {
        if self.in_our_view(view.id.coordinator) || self.view.members.len() <= 1 {
            return None;
        }
        // O(n log n): a merge of two large sides must not cost n^2 at every member.
        let mut theirs: Vec<NodeId> = view.members.iter().map(|v| v.node).collect();
        theirs.sort_unstable();
        self.view.members.iter().find_map(|m| {
            if m.node == self.id || theirs.binary_search(&m.node).is_ok() {
                return None;
            }
            self.idx(m.node).filter(|&i| {
                let p = &self.peers[i];
                p.member == *m
                    && !p.dead()
                    && !p.leaving
                    && !self.rounds_over(p.heard_round, self.settings.suspect_timeout)
            })
        })
    }

    /// Claims a view counter above `counter` (`max_counter`, which our headers carry): the
    /// coordinator, ours or the one that hears the claim, then installs a view above it.
    fn claim_counter_above(&mut self, counter: u64) {
        self.max_counter = self.max_counter.max(counter.saturating_add(1));
    }

    fn install(&mut self, now: Time, view: Arc<View>) {
        for p in &mut self.peers {
            p.in_view = false;
        }
        for m in &view.members {
            if let Some(i) = self.idx(m.node) {
                let p = &mut self.peers[i];
                p.in_view = p.member.incarnation == m.incarnation;
            }
        }
        let hash = view.content_hash();
        let shared: Vec<Arc<GroupMembers>> = self
            .groups
            .keys()
            .map(|gid| match view.group_view(*gid) {
                Some(gv) => self.group_members(&view, hash, gv),
                None => Arc::default(),
            })
            .collect();
        with_ctx!(self, now, |ctx, groups| {
            for (g, members) in groups.values_mut().zip(shared) {
                g.set_group_members(members, &mut ctx);
            }
        });
        // The groups that list us (what we must leave if the application did).
        let me = self.id;
        self.view_groups_with_me = view
            .groups
            .iter()
            .filter(|gv| gv.members.contains(&me))
            .map(|gv| (gv.id, gv.stream_of(me).unwrap_or(0)))
            .collect();
        self.view_hash = hash;
        self.encoded_view = None;
        self.installed_round = self.round;
        self.view = view.clone();
        self.counters.views_installed += 1;
        self.ordered_view_changed(now);
        if self.events.len() < self.settings.max_pending_events {
            self.events.push_back(Event::ViewChange(view));
        } else {
            self.counters.events_dropped += 1;
        }
    }

    /// The member list of group `gv` of `view` (whose hash is `hash`): shared through the
    /// view cache, if the driver set one.
    fn group_members(&self, view: &View, hash: u64, gv: &GroupView) -> Arc<GroupMembers> {
        match &self.view_cache {
            Some(c) => c.group_members(view.id, hash, gv),
            None => Arc::new(GroupMembers::new(&gv.members, &gv.streams)),
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
        // A large view is pulled by every member in about log2(n) rounds: install at most
        // one per half that, batching the changes meanwhile (members would otherwise pull
        // a view per round while joins trickle in); one per log2(n) rounds when it only
        // adds members (bootstrap: every member pulls every view, so fewer views cost
        // less; removals keep the shorter gap, which bounds failure detection).
        let n = self.view.members.len();
        let gap = if n <= VIEW_PUSH_ALL {
            1
        } else {
            (usize::BITS - n.leading_zeros()).div_ceil(2)
        };
        let since = self.round.wrapping_sub(self.installed_round);
        if since < gap {
            return;
        }
        let my_age = self.me().age_key();
        // Alone, a peer outside our view counts as live only if we heard from it within
        // `suspect_timeout`: a node alone withholds its suspicions, so one that crashed
        // after a heal let us hear it again would otherwise be live for good, an older one
        // would be waited for forever, and a node that only we can reach would never join
        // (proto/tests/membership_heal.rs; sim `evs` seed 706). In a view, SWIM's probes
        // suspect such a peer; and a joiner there is heard once (its first answer) and
        // waits for the coordinator's next view, which at 10,000 members may come later.
        let (round, timeout) = (self.round, self.settings.suspect_timeout);
        let alone = self.view.members.len() <= 1;
        let heard = |p: &Peer| p.in_view || !alone || !self.rounds_over(p.heard_round, timeout);
        // An older live node outside our view will merge us: wait for it.
        if self.peers.iter().any(|p| {
            !p.dead() && !p.leaving && p.direct && p.member.age_key() < my_age && !p.in_view && heard(p)
        }) {
            return;
        }
        let mut members: Vec<Member> = vec![self.me()];
        let hold = self.merge_on_hold();
        let checks = &self.removal_checks;
        members.extend(
            self.peers
                .iter()
                .filter(|p| {
                    let alive = !p.dead() && !p.leaving && p.direct && (p.in_view || !hold) && heard(p);
                    // Held failed, but still under our removal check: kept for now.
                    let checking = p.dead()
                        && p.in_view
                        && !p.leaving
                        && checks.iter().any(|c| {
                            c.node == p.member.node
                                && round.wrapping_sub(c.since) < self.settings.removal_check_rounds
                        });
                    alive || checking
                })
                .map(|p| p.member),
        );
        if hold
            && self
                .peers
                .iter()
                .any(|p| !p.dead() && !p.leaving && p.direct && !p.in_view)
        {
            self.counters.merges_held += 1;
        }
        members.sort_by_key(|m| m.age_key());
        let set: FxMap<NodeId, u32> = members.iter().map(|m| (m.node, m.incarnation)).collect();
        if n > VIEW_PUSH_ALL && since < JOIN_GAP_FACTOR * gap {
            let removes = self
                .view
                .members
                .iter()
                .any(|m| set.get(&m.node) != Some(&m.incarnation))
                || self.pending_group_changes.values().any(Option::is_none)
                || self.max_counter > self.view.id.counter;
            if !removes {
                return;
            }
        }
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
        // Addresses of members we heard from (or of peers that left our table: dropped).
        let (peers, index, me) = (&self.peers, &self.peer_index, self.id);
        self.addresses
            .retain(|n, _| *n == me || find_peer(peers, index, *n).is_some());
        let mut addrs: Vec<u64> = members
            .iter()
            .map(|m| self.addresses.get(&m.node).copied().unwrap_or(0))
            .collect();
        if addrs.iter().all(|a| *a == 0) {
            addrs = Vec::new();
        }
        if members == self.view.members
            && addrs == self.view.addrs
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
            addrs,
            groups,
        });
        self.view_source = self.id;
        self.install(now, view.clone());
        // Small views go to every member; large ones to a few, from whom the others pull
        // them (by id and hash, seen in heartbeats): the coordinator sends O(fanout) views.
        let mut to: Vec<NodeId> = Vec::new();
        if view.members.len() <= VIEW_PUSH_ALL {
            to.extend(view.members.iter().map(|m| m.node).filter(|n| *n != self.id));
        } else {
            self.pick_view_targets(VIEW_PUSH_FANOUT, &mut to);
        }
        for t in to {
            self.send_view(t, &[], 0);
        }
    }

    /// Whether the coordinator holds merges back: a peer it held failed was heard from
    /// again in the same incarnation (a partition heals) within `suspect_timeout`, and it
    /// still holds other peers failed. Those may be alive on the side coming back (held
    /// failed only because they were cut off): a view merging that side without them would
    /// remove them from the views of members that hear from them. Meanwhile no member
    /// outside the view is added (removals go on), and the peers held failed are sent
    /// heartbeats every round (`gossip_round`): one that is alive answers, and is merged.
    fn merge_on_hold(&self) -> bool {
        self.revived_round != NO_ROUND
            && !self.rounds_over(self.revived_round, self.settings.suspect_timeout)
            && self.watch.iter().any(|&n| self.held_failed_direct(n))
    }

    /// The coordinator's check before a view drops a member it holds failed: for
    /// `Settings::removal_check_rounds` rounds it probes the member directly (the probe
    /// tells it it is held failed, so a live member refutes in its answer) and through
    /// `PING_REQ_FANOUT` others; an answer revives it (`touch`, or a relayed ack), else
    /// the next view drops it. Costs at most that many rounds of failure detection, less
    /// when the check runs during the view gap. Why: a failure is final for most members
    /// on another's word (at 10,000 members a member hears a given peer directly about
    /// once in 3,000 rounds, so `merge_entry`'s downgrade rarely applies), so one member
    /// that missed a refutation and timed its suspicion out made the coordinator drop a
    /// live member. A live member answers within a round; at 5% loss a round of the check
    /// fails with p ~ 0.1 x 1e-3.
    fn check_removals(&mut self) {
        if self.coordinator() != self.id || self.leaving || self.settings.removal_check_rounds == 0 {
            self.removal_checks.clear();
            return;
        }
        let round = self.round;
        // Forget checks that ended: answered (alive again) or dropped by a view. A check
        // that timed out stays until the view drops its member (not checked again).
        let (peers, index) = (&self.peers, &self.peer_index);
        self.removal_checks.retain(|c| {
            find_peer(peers, index, c.node).is_some_and(|i| {
                let p = &peers[i];
                p.dead() && p.in_view
            })
        });
        for k in 0..self.watch.len() {
            if self.removal_checks.len() >= MAX_REMOVAL_CHECKS {
                break;
            }
            let n = self.watch[k];
            let Some(i) = self.idx(n) else {
                continue;
            };
            let p = &self.peers[i];
            if p.dead() && p.in_view && !p.leaving && !self.removal_checks.iter().any(|c| c.node == n) {
                self.removal_checks.push(RemovalCheck {
                    node: n,
                    since: round,
                    helpers: Vec::new(),
                });
                self.counters.removal_checks += 1;
            }
        }
        let mut checks = std::mem::take(&mut self.removal_checks);
        for c in &mut checks {
            let n = c.node;
            if round.wrapping_sub(c.since) >= self.settings.removal_check_rounds {
                continue;
            }
            let Some(i) = self.idx(n) else {
                continue;
            };
            // The claim as we hold it (failed, at the marked heartbeat): with the flag
            // cleared it would read as a refutation to a helper that knows an older
            // heartbeat, and revive a crashed member there.
            let target = Self::entry_of(&self.peers[i], &self.marks);
            self.counters.probes_sent += 1;
            self.send_membership(n, HEARTBEAT_FLAG_PROBE, None);
            let mut helpers = std::mem::take(&mut self.scratch_targets);
            helpers.clear();
            self.pick_view_targets(PING_REQ_FANOUT + 1, &mut helpers);
            helpers.retain(|h| *h != n);
            helpers.truncate(PING_REQ_FANOUT);
            for &h in &helpers {
                self.counters.ping_reqs_sent += 1;
                self.send_membership(h, HEARTBEAT_FLAG_PING_REQ, Some(target));
                if !c.helpers.contains(&h) && c.helpers.len() < MAX_CHECK_HELPERS {
                    c.helpers.push(h);
                }
            }
            self.scratch_targets = helpers;
        }
        self.removal_checks = checks;
    }

    /// Whether we hold `node` failed, a verified peer that did not leave.
    fn held_failed_direct(&self, node: NodeId) -> bool {
        self.idx(node).is_some_and(|i| {
            let p = &self.peers[i];
            p.dead() && p.direct && !p.leaving
        })
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
        self.out.trim();
        if self.ordered.take_new_view_wanted() {
            // An `evs` member cannot join its list (`EvsMember::cannot_join`): claiming
            // the next counter makes the coordinator install a new view (ours if we
            // coordinate, else it learns the claim from our heartbeats), and its side
            // opens a new list.
            self.claim_counter_above(self.view.id.counter);
            self.counters.new_views_asked += 1;
        }
        self.probe_witness();
        self.rerequest_view_parts();
        self.failure_detection();
        self.ordered_suspicions(now);
        // Forgetting: unverified peers once failed, others `forget_after` after failing
        // (only failed peers can go: they are all watched).
        let forget = self.settings.forget_after;
        let gone = |p: &Peer| {
            p.dead()
                && (!p.direct
                    || self.rounds_over(
                        self.marks
                            .get(&p.member.node)
                            .map_or(self.round, |m| m.since_round),
                        forget,
                    ))
        };
        if self
            .watch
            .iter()
            .any(|&n| self.idx(n).is_some_and(|i| gone(&self.peers[i])))
        {
            let keep: Vec<bool> = self.peers.iter().map(|p| !gone(p)).collect();
            let mut k = 0;
            self.peers.retain(|_| {
                k += 1;
                keep[k - 1]
            });
            let peers = &self.peers;
            self.peer_index
                .rebuild_with(peers.len(), |p| peers[p as usize].member.node);
            self.direct_peers = self.peers.iter().filter(|p| p.direct).count();
            let (peers, index) = (&self.peers, &self.peer_index);
            self.marks.retain(|n, _| find_peer(peers, index, *n).is_some());
            // Positions moved: the probe walk starts afresh.
            self.probe_pos = self.probe_len;
        }
        if self.news.capacity() > 64 && self.news.len() < self.news.capacity() / 4 {
            self.news.shrink_to(self.news.len() * 2);
        }
        self.check_removals();
        self.coordinate(now);

        // Plain membership gossip: the seeds while alone; the coordinator also probes
        // seeds and one known node outside the view (how partitions merge). Liveness
        // within the view is SWIM's probes (`failure_detection`): nobody heartbeats the
        // coordinator directly.
        let mut targets = std::mem::take(&mut self.scratch_targets);
        targets.clear();
        if self.view.members.len() <= 1 {
            targets.extend(self.seeds.iter().copied());
        }
        if self.coordinator() == self.id {
            for &s in &self.seeds {
                if !self.in_our_view(s) && !targets.contains(&s) {
                    targets.push(s);
                }
            }
            let outside: Vec<NodeId> = self
                .peers
                .iter()
                .filter(|p| !p.leaving && !p.in_view)
                .map(|p| p.member.node)
                .collect();
            if !outside.is_empty() {
                let t = outside[self.rng.gen_range(0..outside.len())];
                if !targets.contains(&t) {
                    targets.push(t);
                }
            }
            if self.merge_on_hold() {
                // The peers held failed hear from us at once (and that we hold them
                // failed): an alive one answers, or refutes, within a round.
                let mut k = 0;
                for &n in &self.watch {
                    if k == MERGE_HOLD_HEARTBEATS {
                        break;
                    }
                    if self.held_failed_direct(n) && !targets.contains(&n) {
                        targets.push(n);
                        k += 1;
                    }
                }
            }
        }
        for &t in &targets {
            self.send_heartbeats(t);
        }
        // Digest targets for the groups below: the probed members.
        targets.extend(self.probes.iter().filter(|p| !p.indirect).map(|p| p.target));
        // Group membership requests not yet reflected in the view (our stream included).
        let with_me = &self.view_groups_with_me;
        let joins: Vec<(GroupId, u32)> = self
            .groups
            .iter()
            .map(|(id, g)| (*id, g.my_stream()))
            .filter(|(g, s)| !with_me.contains(&(*g, *s)))
            .collect();
        for (g, s) in joins {
            self.request_group_change(g, Some(s));
        }
        let leaves: Vec<GroupId> = self
            .view_groups_with_me
            .iter()
            .filter(|(g, _)| !self.my_groups.contains(g))
            .map(|(g, _)| *g)
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
                sink: None,
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
        self.state_parts().iter().map(|(_, b)| b).sum()
    }

    /// Approximate bytes of protocol state held by this node, per structure (heap bytes
    /// from capacities; hash maps at their bucket count). The shared view is not counted.
    pub fn state_parts(&self) -> Vec<(&'static str, usize)> {
        let mut parts = vec![
            ("node", std::mem::size_of::<Self>()),
            ("peers", self.peers.capacity() * std::mem::size_of::<Peer>()),
            ("peer_index", self.peer_index.bytes()),
            ("watch", self.watch.capacity() * 4 + map_bytes(&self.marks)),
            ("addresses", map_bytes(&self.addresses)),
            ("news", self.news.capacity() * 4),
            (
                "outbox",
                (self.out.pending() + self.out.pooled()) * self.settings.max_datagram,
            ),
            ("events", self.events.len() * 64),
        ];
        for g in self.groups.values() {
            for (name, b) in g.state_parts() {
                match parts.iter_mut().find(|(n, _)| *n == name) {
                    Some(p) => p.1 += b,
                    None => parts.push((name, b)),
                }
            }
        }
        parts
    }
}

/// Heap bytes of a hash map: its buckets (a power of two holding the capacity at a load of
/// at most 7/8), each an entry and a control byte.
pub(crate) fn map_bytes<K, V, S>(m: &std::collections::HashMap<K, V, S>) -> usize {
    let cap = m.capacity();
    if cap == 0 {
        return 0;
    }
    let buckets = if cap < 8 {
        (cap + 1).next_power_of_two()
    } else {
        (cap * 8 / 7).next_power_of_two()
    };
    buckets * (std::mem::size_of::<(K, V)>() + 1)
}

// ---------------------------------------------------------------- ordered groups

/// Ordered groups (SinfoniaGCS style, `docs/ordered.md`): the body is `ordered::host`.
impl Node {
    /// Joins ordered group `group`. The first joiner of an empty list creates the group;
    /// later joiners get a state transfer (`Event::Installed`). Every member must use the
    /// same layout fields of `settings` (`list_slots`, `max_members`, `queue_slots`,
    /// `max_payload`).
    pub fn join_ordered(
        &mut self,
        now: Time,
        group: GroupId,
        settings: OrderedSettings,
    ) -> Result<(), OrderedError> {
        let evs = settings.partition == PartitionPolicy::Evs;
        let r = self.ordered.join(now, group, settings);
        if evs && r.is_ok() {
            // Under `evs` the cluster view says which nodes host the group: each joins its
            // directory group, and its side is that group's list in the view.
            let dir = EvsMember::directory_group(group);
            if self.groups.get(&dir).is_some_and(|g| g.lingering_until.is_some()) {
                // Left a moment ago: taking the lingering membership back would change no
                // view, and the new member waits for a side number above its
                // predecessor's. A new membership (a new stream) is a view change.
                if let Some(g) = self.groups.get_mut(&dir) {
                    g.lingering_until = Some(now);
                }
                self.leave_lingering(now);
            }
            self.join(now, dir);
            self.evs_refresh_sides(now);
        }
        self.flush_ordered();
        r
    }

    /// Leaves ordered group `group` (an entry in its order; `OrderedStatus{Removed(Left)}`
    /// follows).
    pub fn leave_ordered(&mut self, now: Time, group: GroupId) {
        if self.ordered.evs_member(group).is_some() {
            self.leave(now, EvsMember::directory_group(group));
        }
        self.ordered.leave(now, group);
        self.flush_ordered();
    }

    /// Hands back the payload of an `Event::OrderedDeliver` of `group` once the driver has
    /// copied it out: the group's member reuses the buffer for a later message (optional;
    /// a payload not handed back is freed).
    pub fn recycle_ordered(&mut self, group: u64, payload: Vec<u8>) {
        self.ordered.recycle(group, payload);
    }

    /// Queues a message for ordered group `group`; returns its seq (per membership). It is
    /// delivered back to this node too, in the total order.
    pub fn submit_ordered(
        &mut self,
        now: Time,
        group: GroupId,
        bytes: &[u8],
        safe: bool,
    ) -> Result<u64, SubmitError> {
        if !self.ordered.is_member(group) {
            return Err(SubmitError::NotJoined(group));
        }
        let r = self.ordered.submit(now, group, bytes, safe);
        let r = r.map_err(|e| self.ordered_refusal(group, bytes.len(), e));
        self.flush_ordered();
        r
    }

    fn ordered_refusal(&self, group: GroupId, len: usize, e: SubmitRefused) -> SubmitError {
        match e {
            SubmitRefused::NotMember => SubmitError::NotMember(group),
            SubmitRefused::Full => SubmitError::Full,
            SubmitRefused::TooLarge => SubmitError::TooLarge {
                len,
                max: self.ordered.member(group).map_or(0, |m| m.max_payload() as usize),
            },
        }
    }

    /// Queues a message for ordered group `group` as [`Self::submit_ordered`] does, but runs
    /// the group only at the next [`Self::run_queued_ordered`]: a driver that takes many
    /// messages at once queues them all, then runs the groups once, and they travel in one
    /// batch (one append, one payload run per member) instead of one each. Nothing is sent
    /// until that call.
    pub fn queue_ordered(&mut self, group: GroupId, bytes: &[u8], safe: bool) -> Result<u64, SubmitError> {
        if !self.ordered.is_member(group) {
            return Err(SubmitError::NotJoined(group));
        }
        let r = self.ordered.queue(group, bytes, safe);
        r.map_err(|e| self.ordered_refusal(group, bytes.len(), e))
    }

    /// Runs the ordered groups [`Self::queue_ordered`] took messages for since the last call.
    pub fn run_queued_ordered(&mut self, now: Time) {
        self.ordered.run_queued(now);
        self.flush_ordered();
    }

    /// The application's snapshot for the last `Event::SnapshotRequest` of `group`.
    pub fn snapshot_ready(&mut self, now: Time, group: GroupId, snapshot: &[u8]) {
        self.ordered.snapshot_ready(now, group, snapshot);
        self.flush_ordered();
    }

    /// Whether this node is (joining, in, or leaving) ordered group `group`.
    pub fn is_ordered(&self, group: GroupId) -> bool {
        self.ordered.is_member(group)
    }

    /// This node's member counters of ordered group `group`.
    pub fn ordered_counters(&self, group: GroupId) -> Option<OrderedCounters> {
        self.ordered.member_counters(group).cloned()
    }

    /// Counters of the memory-node replica of `group` hosted here, if any.
    pub fn memnode_counters(&self, group: GroupId) -> Option<MemoryNodeCounters> {
        self.ordered.replica_counters(group).cloned()
    }

    /// Counters of the ordered transport (fragments, reassembly, routing, failovers).
    pub fn ordered_transport_counters(&self) -> OrderedHostCounters {
        self.ordered.counters().clone()
    }

    /// Where `group`'s memory node runs, as this node places it.
    pub fn memnode_placement(&self, group: GroupId) -> Option<Placement> {
        self.ordered.placement_of(group)
    }

    /// This node's member of ordered group `group` (status, view, positions).
    pub fn ordered_member(&self, group: GroupId) -> Option<&crate::ordered::OrderedMember> {
        self.ordered.member(group)
    }

    /// This node's member of `evs` ordered group `group` (configuration, counters).
    pub fn evs_member(&self, group: GroupId) -> Option<&EvsMember> {
        self.ordered.evs_member(group)
    }

    /// The `evs` list-epoch memory nodes run here: (group, memory node, epoch).
    pub fn epoch_replicas(&self) -> Vec<(GroupId, crate::minitx::MemnodeId, EpochId)> {
        self.ordered.epoch_replicas()
    }

    /// The memory-node replica of `group` hosted here (for checks).
    pub fn memnode_replica(&self, group: GroupId) -> Option<&crate::minitx::MemoryNode> {
        self.ordered.replica(group)
    }

    /// The `evs` list epochs of `group` whose memory node runs here, with the replica.
    pub fn epoch_replicas_of(
        &self,
        group: GroupId,
    ) -> impl Iterator<Item = (EpochId, &crate::minitx::MemoryNode)> {
        self.ordered.epoch_replicas_of(group)
    }

    fn ordered_event(&mut self) -> Option<Event> {
        Some(match self.ordered.poll_event()? {
            HostEvent::Deliver {
                group,
                sender,
                position,
                safe,
                payload,
            } => Event::OrderedDeliver {
                group,
                sender,
                position,
                safe,
                payload,
            },
            HostEvent::View { group, view } => Event::OrderedView { group, view },
            HostEvent::SnapshotRequest { group, position } => Event::SnapshotRequest { group, position },
            HostEvent::Installed {
                group,
                position,
                snapshot,
            } => Event::Installed {
                group,
                position,
                snapshot,
            },
            HostEvent::Status { group, status } => Event::OrderedStatus { group, status },
            HostEvent::Configuration { group, config } => Event::OrderedConfiguration { group, config },
        })
    }

    /// Fragments the ordered messages waiting into datagrams of at most `max_datagram`.
    fn flush_ordered(&mut self) {
        let chunk = self
            .settings
            .max_datagram
            .saturating_sub(DATAGRAM_HEADER_LEN + MESSAGE_HEADER_LEN + ORDERED_HEADER_LEN)
            .max(1);
        while let Some(o) = self.ordered.poll_outgoing() {
            self.send_ordered(chunk, o);
        }
    }

    /// Fragments one whole ordered message into datagrams of `chunk` bytes of body.
    fn send_ordered(&mut self, chunk: usize, o: Outgoing) {
        {
            let count = o.bytes.len().div_ceil(chunk).max(1);
            let Ok(count16) = u16::try_from(count) else {
                self.counters.oversize_datagrams += 1;
                return;
            };
            for index in 0..count16 {
                let start = usize::from(index) * chunk;
                let part = o
                    .bytes
                    .get(start..(start + chunk).min(o.bytes.len()))
                    .unwrap_or(&[]);
                let header = OrderedHeader {
                    group: o.group,
                    msg: o.msg,
                    total: o.bytes.len() as u32,
                    index,
                    count: count16,
                    kind: o.kind as u8,
                    reserved: [0; 3],
                };
                self.out.push(o.dest, ORDERED_HEADER_LEN + part.len(), |enc| {
                    enc.push_ordered(&header, part)
                });
            }
        }
    }

    fn ordered_view_changed(&mut self, now: Time) {
        // Suspicions first, from the peer table as this view left it: those of the last
        // gossip round may name a daemon that restarted and is back in this view, and a
        // member would remove it from its ordered groups the moment its join is learned.
        self.ordered_suspicions(now);
        let members: Vec<NodeId> = self.view.members.iter().map(|m| m.node).collect();
        self.ordered.set_view(now, members.clone());
        self.evs_refresh_sides(now);
        self.flush_ordered();
        self.regions.set_view(now, &members);
        self.regions_pump(now);
    }

    /// `evs` groups: this node's side is the group's directory list in the installed view
    /// (the nodes hosting a member, this one included), numbered from the view
    /// (`EvsMember::side_number`). Given at every view, not only when the side changed: a
    /// node that skipped a view must still name the same list epoch as the rest of its
    /// side, which it does from the view they all end at.
    fn evs_refresh_sides(&mut self, now: Time) {
        for group in self.ordered.evs_groups() {
            let Some(listed) = self.view.group(EvsMember::directory_group(group)) else {
                continue;
            };
            if !listed.contains(&self.id) {
                // Not in the list yet (the coordinator adds it in a later view).
                continue;
            }
            let mut side: Vec<NodeId> = listed
                .iter()
                .copied()
                .filter(|&n| self.view.members.iter().any(|m| m.node == n))
                .collect();
            side.sort_unstable();
            side.dedup();
            let Some(&lowest) = side.first() else { continue };
            let number = EvsMember::side_number(self.view.id.counter, lowest);
            self.ordered.set_evs_side(now, group, number, &side);
        }
    }

    fn ordered_suspicions(&mut self, now: Time) {
        // Nothing to do without an ordered group; and only marked peers can be suspected
        // or failed, so this stays O(suspects), not O(peers), per round. A suspicion
        // removes once it has lasted the group's `suspicion_grace` (the host's decision).
        if !self.ordered.has_groups() {
            return;
        }
        let suspects: BTreeSet<NodeId> = self
            .marks
            .keys()
            .copied()
            .filter(|&n| {
                self.idx(n)
                    .is_some_and(|i| self.peers[i].dead() || self.peers[i].suspected())
            })
            .collect();
        self.ordered.set_swim_suspects(now, suspects);
        self.flush_ordered();
    }
}

// ---------------------------------------------------------------- application regions

/// Named, bounded memory regions of the cluster and minitransactions over them for
/// applications (`regions`, `docs/regions.md`). Outcomes come from `poll_region_event`.
impl Node {
    /// Replaces the region settings (before the first region operation).
    pub fn set_region_settings(&mut self, settings: RegionSettings) -> Result<(), &'static str> {
        self.regions.set_settings(self.incarnation, settings)
    }

    /// Creates region `name` of `size` zero bytes, or finds it with that size
    /// (idempotent; another size is `SizeMismatch`). Refusals that need no memory node come
    /// back at once; the outcome of the rest as a [`RegionEvent`] with the returned op.
    pub fn region_create(&mut self, now: Time, name: &str, size: u32) -> Result<RegionOp, RegionError> {
        self.locate_regions(now);
        let r = self.regions.create(now, crate::regions::region_id(name), size);
        self.regions_pump(now);
        r
    }

    /// Runs a minitransaction over regions (ids from `regions::region_id`); the outcome
    /// comes as a [`RegionEvent`] with the returned op.
    pub fn region_minitx(&mut self, now: Time, txn: &RegionTxn) -> Result<RegionOp, RegionError> {
        self.locate_regions(now);
        let r = self.regions.minitx(now, txn);
        self.regions_pump(now);
        r
    }

    pub fn poll_region_event(&mut self) -> Option<RegionEvent> {
        self.regions.poll_event()
    }

    pub fn region_counters(&self) -> RegionCounters {
        self.regions.counters().clone()
    }

    /// Region operations in flight here.
    pub fn region_pending(&self) -> usize {
        self.regions.pending()
    }

    /// Where the region memory node runs, as this node sees it: (primary, backup).
    pub fn region_placement(&self) -> Option<(NodeId, Option<NodeId>)> {
        self.regions.placement()
    }

    /// Before the first region operation here: where the regions' memory node is, as the
    /// ordered host finds it (`OrderedHost::locate`). A node added to a running cluster,
    /// that the placement ranking over its view puts first, placed it on itself and used
    /// an empty memory node of its own (every region missing, writes seen by no other
    /// node) when no primary's announcement had reached it yet. While the host asks, the
    /// coordinator's messages go to a guess that makes no replica; it resends them where
    /// the memory node turns out to be.
    fn locate_regions(&mut self, now: Time) {
        if self.regions.placement().is_none() {
            self.ordered.locate(now, crate::regions::REGIONS_GROUP);
        }
    }

    /// Moves messages between the region coordinator and the ordered host (which hosts
    /// the region memory node's replicas and carries their messages) until both are idle.
    fn regions_pump(&mut self, now: Time) {
        use crate::regions::REGIONS_GROUP;
        use tutti_wire::packet::OrderedKind;
        let chunk = self
            .settings
            .max_datagram
            .saturating_sub(DATAGRAM_HEADER_LEN + MESSAGE_HEADER_LEN + ORDERED_HEADER_LEN)
            .max(1);
        loop {
            if let Some(p) = self.ordered.placement_of(REGIONS_GROUP) {
                self.regions.adopt_placement(p.primary, p.backup);
            }
            let mut progressed = false;
            while let Some((from, bytes)) = self.ordered.poll_region_reply() {
                progressed = true;
                self.regions.handle_reply(now, from, &bytes);
            }
            while let Some((dest, bytes)) = self.regions.poll_transmit() {
                progressed = true;
                if dest == self.id {
                    let header =
                        OrderedHeader::whole(REGIONS_GROUP, 0, OrderedKind::ToMemnode, bytes.len() as u32);
                    self.ordered
                        .handle_fragment(now, dest, &header, OrderedKind::ToMemnode, &bytes);
                } else {
                    let msg = self.region_msg;
                    self.region_msg = self.region_msg.wrapping_add(1);
                    self.send_ordered(
                        chunk,
                        Outgoing {
                            dest,
                            group: REGIONS_GROUP,
                            kind: OrderedKind::ToMemnode,
                            msg,
                            bytes,
                        },
                    );
                }
            }
            self.flush_ordered();
            if !progressed {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MILLIS;

    /// Deliver every transmit at once between `nodes` (ids = indices), for `rounds` rounds.
    fn run(nodes: &mut [Node], until: Time, drop: impl Fn(NodeId, NodeId) -> bool) -> Vec<(NodeId, Event)> {
        run_from(nodes, 0, until, drop)
    }

    /// As `run`, from time `from`.
    fn run_from(
        nodes: &mut [Node],
        from: Time,
        until: Time,
        drop: impl Fn(NodeId, NodeId) -> bool,
    ) -> Vec<(NodeId, Event)> {
        let mut events = Vec::new();
        let mut now = from;
        while now <= until {
            for n in nodes.iter_mut() {
                n.handle_timeout(now);
            }
            exchange(nodes, |nodes, from, dest, payload| {
                if !drop(from, dest) {
                    nodes[dest as usize].handle_packet(now, from, payload);
                }
            });
            for n in nodes.iter_mut() {
                while let Some(e) = n.poll_event() {
                    events.push((n.id(), e));
                }
            }
            now += 10 * MILLIS;
        }
        events
    }

    /// A node given a floor makes its first view past it, alone and in a cluster, and the
    /// others follow its counter up.
    #[test]
    fn a_restarted_node_numbers_its_views_past_its_floor() {
        let mut alone = Node::new(0, 2, &[0], Settings::default(), 0, 1);
        alone.set_view_counter_floor(40);
        run(std::slice::from_mut(&mut alone), 3_000 * MILLIS, |_, _| false);
        assert_eq!(alone.view().id.counter, 41, "{:?}", alone.view().id);
        let mut nodes = cluster(3);
        nodes[2] = Node::new(2, 2, &[0], Settings::default(), 0, 3);
        nodes[2].set_view_counter_floor(40);
        run(&mut nodes, 3_000 * MILLIS, |_, _| false);
        for n in &nodes {
            assert_eq!(n.view().members.len(), 3, "node {} formed the cluster", n.id());
            assert!(n.view().id.counter > 40, "node {}: {:?}", n.id(), n.view().id);
        }
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

    /// Runs `nodes` as `run_from` does, dropping every `drop_every`th datagram, with
    /// `submit(step, nodes)` before each step; with `sink` the packets go through
    /// `handle_packet_with` and its deliveries join the events where the sink saw them.
    /// Returns the events and how many came through the sink.
    fn run_lossy(
        nodes: &mut [Node],
        steps: u64,
        drop_every: u64,
        sink: bool,
        mut submit: impl FnMut(u64, &mut [Node]),
    ) -> (Vec<(NodeId, Event)>, usize) {
        let mut events = Vec::new();
        let (mut sent, mut sunk) = (0u64, 0usize);
        let drain = |n: &mut Node, events: &mut Vec<(NodeId, Event)>| {
            while let Some(e) = n.poll_event() {
                events.push((n.id(), e));
            }
        };
        for step in 0..steps {
            let now = step * 10 * MILLIS;
            submit(step, nodes);
            for n in nodes.iter_mut() {
                n.handle_timeout(now);
                drain(n, &mut events);
            }
            exchange(nodes, |nodes, from, dest, payload| {
                sent += 1;
                if sent % drop_every == 0 {
                    return;
                }
                let to = &mut nodes[dest as usize];
                if sink {
                    let id = to.id();
                    to.handle_packet_with(now, from, payload, &mut |d| {
                        sunk += 1;
                        events.push((id, d.to_event()));
                    });
                } else {
                    to.handle_packet(now, from, payload);
                }
                drain(to, &mut events);
            });
        }
        (events, sunk)
    }

    /// Hands every datagram the nodes send to `hand(nodes, from, dest, bytes)`, in turn per
    /// node, until none sends any more.
    fn exchange(nodes: &mut [Node], mut hand: impl FnMut(&mut [Node], NodeId, NodeId, &[u8])) {
        loop {
            let mut moved = false;
            for i in 0..nodes.len() {
                while let Some((dest, payload)) =
                    nodes[i].poll_transmit().map(|t| (t.dest, t.payload.to_vec()))
                {
                    moved = true;
                    let from = nodes[i].id();
                    hand(nodes, from, dest, &payload);
                }
            }
            if !moved {
                break;
            }
        }
    }

    /// The delivery sink is only a shorter way out: under loss, repair, eviction (`Lost`)
    /// and fragmentation, every node sees exactly the events, in exactly the order, that
    /// `handle_packet` and `poll_event` give it.
    #[test]
    fn the_delivery_sink_gives_the_events_in_the_queues_order() {
        let settings = Settings {
            // Small retention and no flow control: the sender evicts what some member still
            // lacks, which is then reported `Lost` between deliveries.
            group_budget_bytes: 48 << 10,
            flow_window: 0,
            ..Settings::default()
        };
        let make = || -> Vec<Node> {
            (0..4u32)
                .map(|i| {
                    let mut node = Node::new(i, 1, &[0], settings.clone(), 0, u64::from(i) + 1);
                    node.join(0, 7);
                    node
                })
                .collect()
        };
        let submit = |step: u64, nodes: &mut [Node]| {
            if !(200..260).contains(&step) {
                return;
            }
            for k in 0..40u64 {
                let sender = ((step + k) % 3) as usize + 1;
                // Mostly small messages, some fragmented.
                let len = if k % 13 == 0 {
                    3_000 + (step as usize * 7) % 900
                } else {
                    1 + (k as usize * 29) % 300
                };
                let bytes: Vec<u8> = (0..len).map(|b| (b as u64 ^ step ^ k) as u8).collect();
                let _ = nodes[sender].submit(step * 10 * MILLIS, 7, k as u32, &bytes);
            }
        };
        let (queued, none) = run_lossy(&mut make(), 400, 11, false, submit);
        let (sunk, through) = run_lossy(&mut make(), 400, 11, true, submit);
        assert_eq!(none, 0);
        let delivered = queued
            .iter()
            .filter(|(_, e)| matches!(e, Event::Deliver { .. }))
            .count();
        let lost = queued
            .iter()
            .filter(|(_, e)| matches!(e, Event::Lost { .. }))
            .count();
        assert!(
            delivered > 1_000 && lost > 0,
            "{delivered} delivered, {lost} lost: the run tests nothing"
        );
        assert!(
            through > delivered / 2,
            "only {through} of {delivered} went through the sink ({lost} lost)"
        );
        assert_eq!(sunk.len(), queued.len());
        for (i, (a, b)) in queued.iter().zip(&sunk).enumerate() {
            assert_eq!(a, b, "event {i}");
        }
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
            // Without flow control: with it the sender holds back what members still lack
            // (`SubmitError::Full`) instead of evicting it.
            flow_window: 0,
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
        run(&mut nodes, 6_000 * MILLIS, |_, _| false);
        let v = nodes[0].view().clone();
        assert_eq!(v.members.len(), 200);
        assert_eq!(v.group(7).map(|m| m.len()), Some(200));
        for n in &nodes {
            assert_eq!(n.view().id, v.id, "node {}", n.id());
            assert_eq!(n.counters().bad_view_parts, 0);
        }
        assert_no_oversize(&nodes);
        // Views are pulled from members, not unicast by the coordinator to each.
        let by_others: u64 = nodes[1..].iter().map(|n| n.counters().views_sent).sum();
        let by_coordinator = nodes[0].counters().views_sent;
        assert!(
            by_coordinator < by_others,
            "the coordinator sent {by_coordinator} view parts, the members {by_others}"
        );
        // Once the view is stable the coordinator is not heartbeated by every member each
        // round (SWIM probes one member a round): it receives O(1) datagrams a round.
        let (r0, d0) = (nodes[0].round(), nodes[0].counters().datagrams_received);
        run_from(&mut nodes, 6_010 * MILLIS, 8_000 * MILLIS, |_, _| false);
        let rounds = u64::from(nodes[0].round() - r0);
        let received = nodes[0].counters().datagrams_received - d0;
        assert!(
            received < rounds * 10,
            "the coordinator received {received} datagrams in {rounds} rounds"
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
            // Addresses travel with the members (through every part).
            addrs: (0..n).map(|node| 0x7f00_0001_0000 | u64::from(node)).collect(),
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
        coord.send_view(to, &[], 0);
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

    /// The datagrams `node` has queued, drained.
    fn drain(node: &mut Node) -> Vec<(NodeId, Vec<u8>)> {
        node.out.flush();
        std::iter::from_fn(|| node.poll_transmit().map(|t| (t.dest, t.payload.to_vec()))).collect()
    }

    /// The view parts (indexes) and view requests (part lists) in `dgs`.
    fn view_traffic(dgs: &[(NodeId, Vec<u8>)]) -> (Vec<u32>, Vec<(ViewRequestHeader, Vec<u32>)>) {
        let (mut parts, mut requests) = (Vec::new(), Vec::new());
        for (_, d) in dgs {
            for m in packet::decode(d).unwrap().messages() {
                match m {
                    Message::View { header, .. } => parts.push(header.part),
                    Message::ViewRequest { header, parts } => requests.push((header, parts.iter().collect())),
                    _ => {}
                }
            }
        }
        (parts, requests)
    }

    #[test]
    fn a_member_pulls_only_the_view_parts_it_lacks_and_is_served_only_those() {
        let view = big_view(5, 1000);
        let hash = view.content_hash();
        let mut coord = Node::new(0, 1, &[9], Settings::default(), 0, 1);
        coord.view = Arc::new(view.clone());
        coord.view_hash = hash;
        let dgs = view_datagrams(&view, 9);
        let mut node = Node::new(9, 1, &[0], Settings::default(), 0, 9);
        let lost = [2u32, 5, 7];
        for (i, d) in dgs.iter().enumerate() {
            if !lost.contains(&(i as u32)) {
                node.handle_packet(0, 0, d);
            }
        }
        assert_eq!(node.counters().views_installed, 0);
        drain(&mut node);
        // The coordinator's next message announces the view: the member asks for the
        // three parts it lacks, of that very view, and for nothing else.
        coord.send_membership(9, 0, None);
        for (_, d) in drain(&mut coord) {
            node.handle_packet(0, 0, &d);
        }
        let out = drain(&mut node);
        let (parts, requests) = view_traffic(&out);
        assert!(parts.is_empty());
        assert_eq!(requests.len(), 1, "one pull");
        let (h, listed) = &requests[0];
        assert_eq!((h.counter, h.hash, h.parts as usize), (5, hash, dgs.len()));
        assert_eq!(listed, &lost.to_vec());
        assert_eq!(node.counters().view_parts_requested, 3);
        // Served: exactly those parts, which complete the view.
        let mut served = Vec::new();
        for (to, d) in &out {
            assert_eq!(*to, 0);
            coord.handle_packet(0, 9, d);
            served.extend(drain(&mut coord));
        }
        assert_eq!(view_traffic(&served).0, lost.to_vec());
        for (_, d) in &served {
            node.handle_packet(0, 0, d);
        }
        assert_eq!(node.view().as_ref(), &view);
        assert_eq!(node.counters().bad_view_parts, 0);
        // A pull naming another view (another hash) gets the whole view we hold.
        let mut other = drain(&mut node);
        other.clear();
        let req = ViewRequestHeader { hash: hash ^ 1, ..*h };
        let mut buf = vec![0u8; 1472];
        let mut e = packet::Encoder::new(&mut buf, 9, 1).unwrap();
        e.push_view_request(&req, &lost).unwrap();
        let n = e.len();
        coord.round += 1;
        coord.handle_packet(0, 9, &buf[..n]);
        other.extend(drain(&mut coord));
        let all: Vec<u32> = (0..dgs.len() as u32).collect();
        assert_eq!(view_traffic(&other).0, all);
    }

    /// A node `id` holding `view` (installed from `source`).
    fn holder(id: NodeId, seeds: &[NodeId], view: &View, source: NodeId) -> Node {
        let mut n = Node::new(id, 1, seeds, Settings::default(), 0, u64::from(id));
        n.view = Arc::new(view.clone());
        n.view_hash = view.content_hash();
        n.view_source = source;
        n
    }

    /// The 10,000-node crash run's convergence violation: a view pulled from a member other
    /// than its coordinator waited for a second member to announce it, which, while few
    /// members held it, took O(n) rounds. The server names a witness (the member it got the
    /// view from); the puller probes it, and its answer vouches for the view.
    #[test]
    fn a_view_pulled_from_a_member_installs_once_the_witness_it_names_answers() {
        let view = big_view(5, 1000);
        for witness_holds in [true, false] {
            let mut a = holder(1, &[9, 2], &view, 2);
            let mut w = if witness_holds {
                holder(2, &[9], &view, 0)
            } else {
                holder(2, &[9], &big_view(4, 1000), 0)
            };
            let mut q = Node::new(9, 1, &[1, 2], Settings::default(), 0, 9);
            // `a` announces the view (q pulls it) and serves it.
            a.send_membership(9, 0, None);
            a.send_view(9, &[], 0);
            for (_, d) in drain(&mut a) {
                q.handle_packet(0, 1, &d);
            }
            assert_eq!(q.counters().views_installed, 0, "not vouched yet");
            assert!(q.unvouched.is_some());
            assert_eq!(q.counters().witness_probes, 1);
            let out = drain(&mut q);
            assert!(out.iter().any(|(to, _)| *to == 2), "the witness is probed");
            for (to, d) in out {
                if to == 2 {
                    w.handle_packet(0, 9, &d);
                }
            }
            for (to, d) in drain(&mut w) {
                if to == 9 {
                    q.handle_packet(0, 2, &d);
                }
            }
            if witness_holds {
                assert!(q.view().as_ref() == &view, "installed");
                // The witness that vouched holds the view too: q names it when it serves.
                assert_eq!(q.view_source, 2);
                assert!(q.unvouched.is_none());
            } else {
                assert_eq!(
                    q.counters().views_installed,
                    0,
                    "a witness without the view vouches for nothing"
                );
                // Probed again next round, while the view waits.
                q.gossip_round(0);
                assert_eq!(q.counters().witness_probes, 2);
            }
        }
        // The member it was pulled from is never its own witness.
        let mut a = holder(1, &[9], &view, 9);
        a.send_view(9, &[], 0);
        for (_, d) in drain(&mut a) {
            let Some(Message::View { header, .. }) = packet::decode(&d).unwrap().messages().next() else {
                panic!("not a view part");
            };
            assert_eq!(header.witness, packet::NO_WITNESS);
        }
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
        // (6 s: views of more than 32 members that only add members come at most every
        // `JOIN_GAP_FACTOR * ceil(log2 n / 2)` rounds, so the 150 joins take longer.)
        let mut nodes = cluster(150);
        // Drop the first transmits from the coordinator to node 5 (whole parts lost).
        let dropped = std::cell::Cell::new(0);
        run(&mut nodes, 6_000 * MILLIS, |from, to| {
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
    fn submit_with_reads_the_retained_copy_once_and_leaves_it_unshared() {
        let settings = Settings {
            group_budget_bytes: 4 << 10,
            ..Settings::default()
        };
        let mut n = Node::new(1, 1, &[], settings, 0, 1);
        let mut calls = 0;
        let r = n.submit_with(0, 9, 0, b"x", |_| calls += 1);
        assert_eq!(r, Err(SubmitError::NotJoined(9)));
        n.join(0, 9);
        let r = n.submit_with(0, 9, 0, &vec![0; (1 << 20) + 1], |_| calls += 1);
        assert!(matches!(r, Err(SubmitError::TooLarge { .. })));
        assert_eq!(calls, 0, "not multicast: `local` is not called");
        let mut seen = Vec::new();
        for i in 0..2000u32 {
            let bytes = i.to_le_bytes().repeat(16);
            n.submit_with(0, 9, 0, &bytes, |p| seen.push(p.to_vec() == bytes))
                .unwrap();
            while n.poll_transmit().is_some() {}
            while n.poll_event().is_some() {}
        }
        assert_eq!(seen.len(), 2000);
        assert!(seen.iter().all(|&same| same), "`local` sees the submitted bytes");
        // 2000 x 64 B through a 4 KiB budget: evicted slots were the only holders of their
        // buffers, so they went back to the pool and were reused (no buffer per message).
        assert!(n.counters().evicted_budget > 1000);
        assert!(n.pool.allocated < 200, "allocated {}", n.pool.allocated);
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
