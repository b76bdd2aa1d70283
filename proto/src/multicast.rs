//! Bimodal multicast for one group (Birman et al., TOCS 1999): stage 1 over a k-ary tree
//! rooted at the sender, repair that keeps pace with the sender (a gap is solicited at once
//! from the member the stream came from), stage 2 anti-entropy gossip (digest, request,
//! retransmission) as the backstop, retention bounded by rounds and by a byte budget,
//! `Lost` reports, FIFO or unordered delivery, and the message layer: fragmentation of
//! large messages and their reassembly.

use crate::fxhash::FxMap;
use crate::id_index::IdIndex;
use crate::node::Counters;
use crate::node::SubmitError;
use crate::outbox::Outbox;
use crate::payload::{Arena, PayloadPool, Stored};
use crate::ring::Ring;
use crate::settings::SLOT_OVERHEAD;
use crate::{Delivered, Delivery, Event, GroupId, NodeId, Settings, Time};
use std::collections::hash_map::Entry;
use std::collections::VecDeque;
use std::sync::Arc;
use tutti_wire::packet::{
    DataHeader, DigestEntry, DigestHeader, FlowStatus, RequestEntry, RequestHeader, RunMessages,
    DATAGRAM_HEADER_LEN, FLOW_STATUS_LEN, MESSAGE_HEADER_LEN, REQUEST_ROUND_GAP,
};

/// Overhead counted per retransmitted fragment against the budget (headers, syscalls).
const RETRANSMIT_OVERHEAD: usize = 48;
/// "Never requested".
const NEVER: Time = Time::MAX;
/// Retention periods an emptied state of a departed sender is kept (see `last_active`).
pub(crate) const TOMBSTONE_RETENTIONS: u32 = 4;
/// Seqs at or above this are refused (no stream sends 2^62 messages), so that seq
/// arithmetic never overflows.
const MAX_SEQ: u64 = 1 << 62;

/// How far past a stream's high a member other than its sender may extend our window at
/// once (data it forwards, highs in its digests): an eighth of the window, so that forged
/// highs cost at most an eighth of the budget until the sender's digest drops them.
fn relay_reach(settings: &Settings) -> u64 {
    (settings.max_window() / 8).max(settings.request_cap as u64)
}

/// Repair attempts of a stream's gaps `rerequest_after` apart before the interval doubles:
/// under budget pressure a gap must be filled within the budget's window (a few ms at
/// high rates), and at 20% loss each attempt fails with about 1/3.
const REREQUESTS_BEFORE_BACKOFF: u8 = 8;
/// Rounds a gap below the sender's own low-water mark is still left open for repair by a
/// member that got the message late, before it is reported `Lost`.
const LOW_GRACE_ROUNDS: u32 = 4;
/// Most tree children (bounds a stack array).
const MAX_TREE_FANOUT: usize = 64;
/// Bytes counted per fragment slot of a partly received message.
const FRAGMENT_OVERHEAD: usize = 24;
/// Times a receiver repeats an unchanged flow status (1, 2, 4, ... intervals apart) after
/// the stream went quiet: a lost status then stalls its sender for a few intervals at most.
const STATUS_REPEATS: u8 = 6;
/// An asked member reports its subtree's progress every `flow_status_interval` for this
/// many intervals after the sender's ask; the sender asks again at most every
/// `ASK_EVERY` intervals while its window or budget stays half used.
const ASK_HOLD: u64 = 16;
const ASK_EVERY: u64 = 4;
/// A requester's retransmit budget per round halves when its status shows more new gaps
/// than `window / GAP_BURST_DIVISOR` (its socket buffer overflowed: more repair would add
/// to its burst), down to `retransmit_budget_bytes / REQUESTER_BUDGET_FLOOR`, and grows back
/// by `retransmit_budget_bytes / REQUESTER_BUDGET_STEP` per round (AIMD). Random loss of a
/// few percent opens far fewer gaps per status than that and keeps the full budget.
const GAP_BURST_DIVISOR: u64 = 8;
const REQUESTER_BUDGET_FLOOR: usize = 64;
const REQUESTER_BUDGET_STEP: usize = 16;

/// What a member knows of one of its children in a stream's dissemination tree (flow
/// control): the child's last report, which aggregates its subtree. The sender keeps one
/// per child of its own tree, each member one per child of each stream it relays.
struct FlowPeer {
    node: NodeId,
    /// Every seq below this is held by every member of the child's subtree it counted (its
    /// last report; where the stream stood here when the tree took this shape until then).
    consumed: u64,
    /// The member holding `consumed` (the child itself, or one in its subtree), and the
    /// members its report counted.
    holder: NodeId,
    members: u32,
    /// Its advertised receive window (at most ours).
    window: u64,
    /// When `consumed` last grew, and the last status.
    progress_at: Time,
    status_at: Time,
    /// Its consumption rate (messages per second, smoothed over statuses).
    rate: u64,
    /// Since when it holds our window full (a submit was refused for it and it has not
    /// come back within half a window since); `NEVER` when it does not.
    behind_since: Time,
    /// Dropped from the window by the bimodal rule (until it is back within half a window).
    slow: bool,
    /// The gap count of its last status.
    gaps: u32,
    /// Retransmit bytes per round it may get from us (AIMD), and what is left this round.
    repair_budget: usize,
    repair_left: usize,
}

impl FlowPeer {
    fn new(node: NodeId, consumed: u64, window: u64, now: Time, repair: usize) -> Self {
        FlowPeer {
            node,
            consumed,
            holder: node,
            members: 1,
            window,
            progress_at: now,
            status_at: now,
            rate: 0,
            behind_since: NEVER,
            slow: false,
            gaps: 0,
            repair_budget: repair,
            repair_left: repair,
        }
    }

    /// Takes in its report. Nobody holds what was not sent: `consumed` is capped at `head`
    /// (the stream's next seq as known here), and may go back (its subtree changed, or it
    /// readmitted a slow member). Returns whether it was readmitted (back within half a
    /// window after being dropped as slow).
    fn apply(&mut self, status: &FlowStatus, head: u64, own: u64, now: Time) -> bool {
        let consumed = status.consumed.min(head);
        if consumed > self.consumed {
            let dt = now.saturating_sub(self.status_at).max(1);
            let rate = ((consumed - self.consumed) as u128 * 1_000_000_000 / u128::from(dt))
                .min(u128::from(u64::MAX)) as u64;
            self.rate = if self.rate == 0 {
                rate
            } else {
                (3 * (self.rate / 4)).saturating_add(rate / 4)
            };
            self.progress_at = now;
        }
        self.consumed = consumed;
        self.status_at = now;
        self.window = u64::from(status.window).clamp(1, own.max(1));
        self.holder = status.holder;
        self.members = status.members;
        if head.saturating_sub(self.consumed) < self.window / 2 + 1 {
            self.behind_since = NEVER;
            if self.slow {
                self.slow = false;
                return true;
            }
        }
        false
    }
}

/// The bimodal rule over a member's children in a stream's tree: a child whose subtree
/// holds the stream back (`holding`) for `slow_after` while stalled, or outpaced by the
/// fastest other child more than twice, is dropped (its subtree no longer counted) when
/// the child itself is the slowest of its subtree; when the slowest is deeper, its own
/// parent applies the rule first, and the child is dropped only after twice as long (a
/// parent that cannot tell, e.g. of a full budget at the sender). Returns the children
/// dropped and when one may be dropped next (`NEVER`: none is held back).
fn flow_rule(
    peers: &mut [FlowPeer],
    holding: impl Fn(&FlowPeer) -> bool,
    slow_after: Time,
    now: Time,
) -> (u64, Time) {
    // The two fastest rates among the children served: a child compares itself with the
    // fastest other one.
    let (mut best, mut second) = (0u64, 0u64);
    for p in peers.iter().filter(|p| !p.slow) {
        if p.rate > best {
            (best, second) = (p.rate, best);
        } else if p.rate > second {
            second = p.rate;
        }
    }
    let (mut dropped, mut wake) = (0, NEVER);
    for p in peers.iter_mut().filter(|p| !p.slow) {
        if !holding(p) {
            continue;
        }
        if p.behind_since == NEVER {
            p.behind_since = now;
        }
        let patience = if p.holder == p.node {
            slow_after
        } else {
            slow_after.saturating_mul(2)
        };
        let fastest_other = if p.rate == best { second } else { best };
        let stalled = now.saturating_sub(p.progress_at) >= slow_after;
        let outpaced = p.rate.saturating_mul(2) < fastest_other;
        if now.saturating_sub(p.behind_since) >= patience && (stalled || outpaced) {
            p.slow = true;
            dropped += 1;
        } else {
            // When it may be dropped: once it held the stream that long (if outpaced by
            // then), else when it stalled that long. A report wakes the driver too.
            let due = match p.behind_since.saturating_add(patience) {
                t if t > now => t,
                _ => p.progress_at.saturating_add(slow_after).max(now + 1),
            };
            wake = wake.min(due);
        }
    }
    (dropped, wake)
}

/// Our place in a stream's dissemination tree for one view: our children (where a copy
/// goes on) and our parent. Computed once per view per stream (`GroupState::refresh_place`)
/// and read by both forwarding and flow control.
#[derive(Clone, Copy)]
struct FlowTree {
    parent: Option<NodeId>,
    kids: [NodeId; MAX_TREE_FANOUT],
    len: usize,
    /// Both the stream's sender and we are in the view: the tree flow control runs along
    /// (a sender not yet in the view still roots a tree for forwarding).
    flow: bool,
}

impl FlowTree {
    const NONE: FlowTree = FlowTree {
        parent: None,
        kids: [0; MAX_TREE_FANOUT],
        len: 0,
        flow: false,
    };
    fn kids(&self) -> &[NodeId] {
        self.kids.get(..self.len).unwrap_or(&[])
    }
}

/// A stream: a sender node and the stream id it drew when it joined the group.
pub type StreamKey = (NodeId, u32);

/// A large message of which some fragments arrived.
struct Partial {
    since_round: u32,
    requested_at: Time,
    session: u32,
    have: u16,
    /// Payload bytes of every fragment but the last (0 until one of them arrived).
    chunk: u32,
    bytes: usize,
    frags: Vec<Option<Box<[u8]>>>,
}

impl Partial {
    fn count(&self) -> u16 {
        self.frags.len() as u16
    }
    fn first_missing(&self) -> u16 {
        self.frags.iter().position(Option::is_none).unwrap_or(0) as u16
    }
    fn cost(&self) -> usize {
        SLOT_OVERHEAD + self.bytes + self.frags.len() * FRAGMENT_OVERHEAD
    }
}

enum Slot {
    Missing {
        since_round: u32,
        requested_at: Time,
    },
    Partial(Box<Partial>),
    Held {
        /// In the stream's arena (a delivery event copies it, up to 64 bytes, or shares the
        /// chunk).
        data: Stored,
        session: u32,
        /// Fragment size it was sent in (payload length when unfragmented).
        chunk: u32,
        round: u32,
        delivered: bool,
    },
    /// A message this member refused (larger than its `max_message`): resolved, and
    /// reported `Lost` in its turn instead of being delivered.
    Refused {
        round: u32,
        delivered: bool,
    },
}

// A window holds one slot per seq: 32 bytes each.
const _: () = assert!(std::mem::size_of::<Slot>() == 32);

/// What a [`Ring`] slot outside the window holds (never read as part of a window).
impl Default for Slot {
    fn default() -> Self {
        Slot::Missing {
            since_round: 0,
            requested_at: NEVER,
        }
    }
}

impl Slot {
    /// Bytes this slot counts against the budgets.
    fn cost(&self) -> usize {
        match self {
            Slot::Missing { .. } => SLOT_OVERHEAD,
            Slot::Partial(p) => p.cost(),
            Slot::Held { data, .. } => SLOT_OVERHEAD + data.len(),
            Slot::Refused { .. } => SLOT_OVERHEAD,
        }
    }
    /// Resolved: held, or refused (nothing more to ask for).
    fn is_held(&self) -> bool {
        matches!(self, Slot::Held { .. } | Slot::Refused { .. })
    }
}

/// What a member knows of one stream: a window of seqs from `base`.
pub struct SenderState {
    base: u64,
    slots: Ring<Slot>,
    /// FIFO cursor: next seq to deliver.
    next_deliver: u64,
    /// Every seq in `[base, contiguous)` is held.
    contiguous: u64,
    /// Slots not held (missing or partial).
    missing: u64,
    /// The oldest seq the sender sent within the last retention, as far as we know (from
    /// data headers' `retained` and the sender's own digests; 0 until then); advertised
    /// in our digests.
    recent: u64,
    /// Last round this state saw data; an idle empty state of a departed sender is kept
    /// this long as a tombstone so that late copies held elsewhere are not delivered again.
    last_active: u32,
    /// Bytes counted against the budgets (sum of the slots' costs).
    bytes: usize,
    /// When gaps of this stream were last scanned for re-requests.
    last_rescan: Time,
    /// The member the newest copy of this stream came from (its parent in the sender's
    /// tree, or a member that repaired us): where the repair timer solicits gaps first.
    source: NodeId,
    /// The last gossiper whose digest showed it holds messages we miss: where the repair
    /// timer solicits gaps every other time (the source may miss them too).
    holder: NodeId,
    /// One past the highest seq received straight from the sender: its own digest, which
    /// may be older than that copy, never drops slots below it.
    direct_high: u64,
    /// When we last asked a gossiper for what its digest claimed past our high.
    tail_asked_at: Time,
    /// Repair attempts since the front of the stream last moved: after
    /// `REREQUESTS_BEFORE_BACKOFF` of them each waits twice as long as the one before (up
    /// to a gossip period), so a gap nobody can fill soon costs a request per gossip
    /// period, not one per `rerequest_after`.
    rerequests: u8,
    /// Flow control, as a receiver: the `contiguous` our last status to the stream's sender
    /// reported, when we sent it, how often it was repeated unchanged, and the gaps (missing
    /// seqs) this stream has opened here so far (wrapping).
    status_pos: u64,
    status_at: Time,
    status_repeats: u8,
    gaps: u32,
    /// Flow control along the stream's tree: our parent in it and our children's reports
    /// (at most `tree_fanout`), for the view of `GroupState::flow_epoch` `tree_epoch`
    /// (reset when the view, hence the tree, changes); until when the sender asked for
    /// reports every interval, and when we last passed an ask on to our children.
    parent: Option<NodeId>,
    kids: Vec<FlowPeer>,
    tree_epoch: u32,
    asked_until: Time,
    ask_passed_at: Time,
    /// Our place in the stream's tree for the view of `GroupState::flow_epoch`
    /// `place_epoch` (None: not computed yet): forwarding reads its children, flow control
    /// resets `parent` and `kids` from it.
    place: FlowTree,
    place_epoch: Option<u32>,
    /// Where this stream's retained messages are copied to.
    arena: Arena,
}

impl SenderState {
    fn new(base: u64) -> Self {
        SenderState {
            base,
            slots: Ring::new(),
            next_deliver: base,
            contiguous: base,
            missing: 0,
            recent: 0,
            last_active: 0,
            bytes: 0,
            last_rescan: 0,
            source: 0,
            holder: 0,
            direct_high: 0,
            tail_asked_at: NEVER,
            rerequests: 0,
            status_pos: base,
            status_at: 0,
            status_repeats: STATUS_REPEATS,
            gaps: 0,
            parent: None,
            kids: Vec::new(),
            tree_epoch: 0,
            asked_until: 0,
            ask_passed_at: 0,
            place: FlowTree::NONE,
            place_epoch: None,
            arena: Arena::default(),
        }
    }
    fn high(&self) -> u64 {
        self.base + self.slots.len() as u64
    }
    fn slot(&self, seq: u64) -> Option<&Slot> {
        seq.checked_sub(self.base)
            .and_then(|i| self.slots.get(usize::try_from(i).ok()?))
    }
    fn slot_mut(&mut self, seq: u64) -> Option<&mut Slot> {
        self.slot_and_arena(seq).0
    }
    /// The slot of `seq` and the arena its bytes are (or go) in.
    fn slot_and_arena(&mut self, seq: u64) -> (Option<&mut Slot>, &mut Arena) {
        let slot = seq
            .checked_sub(self.base)
            .and_then(|i| self.slots.get_mut(usize::try_from(i).ok()?));
        (slot, &mut self.arena)
    }
    fn advance_contiguous(&mut self) {
        let was = self.contiguous;
        self.contiguous = self.contiguous.max(self.base);
        while self.slot(self.contiguous).is_some_and(Slot::is_held) {
            self.contiguous += 1;
        }
        if self.contiguous != was {
            self.rerequests = 0;
        }
    }
    /// Drop undelivered slots at the back down to `high`; returns how many.
    fn truncate_to(&mut self, high: u64) -> u64 {
        let mut dropped = 0;
        while self.high() > high {
            match self.slots.back() {
                Some(Slot::Held { delivered: true, .. } | Slot::Refused { delivered: true, .. }) | None => {
                    break
                }
                Some(_) => {}
            }
            let Some(slot) = self.slots.pop_back() else { break };
            self.bytes -= slot.cost();
            if !slot.is_held() {
                self.missing -= 1;
            }
            dropped += 1;
        }
        self.contiguous = self.contiguous.min(self.high());
        dropped
    }
    /// Flow control: what our subtree of the stream's tree holds, as we report it to our
    /// parent: the least contiguous seq over us and the children we serve, the member
    /// holding it, the smallest window, and the members counted.
    fn flow_aggregate(&self, me: NodeId, own_window: u64) -> (u64, NodeId, u64, u32) {
        let mut agg = (self.contiguous.max(self.base), me, own_window, 1u32);
        for p in self.kids.iter().filter(|p| !p.slow) {
            if p.consumed < agg.0 {
                (agg.0, agg.1) = (p.consumed, p.holder);
            }
            agg.2 = agg.2.min(p.window);
            agg.3 = agg.3.saturating_add(p.members);
        }
        agg
    }

    /// When our next report of this stream is due, if one is: at once when our subtree's
    /// consumption moved a quarter window; while the sender asks, an interval after the
    /// last report when it moved, else the last report repeated (each repeat twice as long
    /// after the one before, `STATUS_REPEATS` times); otherwise a gossip period after the
    /// last report when it moved (an idle or under-window stream costs about nothing).
    fn status_due(&self, me: NodeId, settings: &Settings, now: Time) -> Option<Time> {
        let interval = settings.flow_status_interval.max(1);
        let (agg, ..) = self.flow_aggregate(me, settings.flow_window);
        let quarter = (settings.flow_window / 4).max(1);
        if agg >= self.status_pos.saturating_add(quarter) {
            return Some(self.status_at.min(now));
        }
        let asked = now < self.asked_until;
        if agg != self.status_pos {
            let wait = if asked {
                interval
            } else {
                settings.gossip_period.max(interval)
            };
            return Some(self.status_at.saturating_add(wait));
        }
        (asked && self.status_repeats < STATUS_REPEATS).then(|| {
            self.status_at
                .saturating_add(interval << (self.status_repeats + 1))
        })
    }

    /// The tree changed shape (a new view): our parent and children in it (`place`, for
    /// this view), each child taken to hold what we hold until its first report.
    fn reset_flow_tree(&mut self, epoch: u32, settings: &Settings, now: Time) {
        self.tree_epoch = epoch;
        self.parent = self.place.parent;
        self.kids.clear();
        let held = self.contiguous.max(self.base);
        let window = settings.flow_window.max(1);
        let place = self.place;
        for &c in place.kids() {
            self.kids.push(FlowPeer::new(c, held, window, now, 0));
        }
        // Our new parent has no report of us yet.
        self.status_pos = self.status_pos.min(held.saturating_sub(1));
        self.status_repeats = 0;
    }

    /// The bimodal rule over our children in this stream's tree: a child is held back when
    /// what we know of the stream (`high`) is within a quarter window of its window's end
    /// (the sender's window is full or nearly: it stops at the least child's `consumed +
    /// window`, and what it sent reached us). Returns when a child may be dropped next.
    fn flow_kids_rule(&mut self, settings: &Settings, now: Time, counters: &mut Counters) -> Time {
        if self.kids.is_empty() {
            return NEVER;
        }
        let own = settings.flow_window.max(1);
        let head = self.high().saturating_add((own / 4).max(1));
        let (dropped, wake) = flow_rule(
            &mut self.kids,
            |p| head >= p.consumed.saturating_add(p.window.min(own)),
            settings.flow_slow_after,
            now,
        );
        for p in self.kids.iter_mut().filter(|p| !p.slow) {
            if head < p.consumed.saturating_add(p.window.min(own)) {
                p.behind_since = NEVER;
            }
        }
        counters.flow_slow_members += dropped;
        wake
    }

    fn rerequest_due(&self, settings: &Settings) -> Time {
        let backoff = self.rerequests.saturating_sub(REREQUESTS_BEFORE_BACKOFF).min(16);
        let wait = settings
            .rerequest_after
            .saturating_mul(1 << backoff)
            .min(settings.gossip_period.max(settings.rerequest_after));
        self.last_rescan.saturating_add(wait)
    }
    /// Extend the window with missing slots up to `high` (bounded by `max_window`);
    /// returns whether all of it fit.
    fn extend_to(&mut self, high: u64, round: u32, max_window: u64) -> bool {
        let limit = self.base.saturating_add(max_window);
        let target = high.min(limit);
        if self.high() < target {
            let n = (target - self.high()) as usize;
            self.slots.extend_with(n, || Slot::Missing {
                since_round: round,
                requested_at: NEVER,
            });
            self.missing += n as u64;
            self.bytes += n * SLOT_OVERHEAD;
        }
        high <= limit
    }

    /// Appends `slot` at the window's high end, written in place ([`Ring`]: `VecDeque`'s
    /// out-of-line append read it back from the stack with loads the store buffer could not
    /// forward).
    #[inline(always)]
    fn push_slot(&mut self, slot: Slot) {
        self.slots.push_back(slot);
    }
    /// Drops the fragments of messages not yet whole, oldest first, until about `excess`
    /// bytes are freed: their seqs stay open (missing) and are asked for again. Returns
    /// the bytes freed.
    fn drop_partials(&mut self, excess: usize) -> usize {
        let mut freed = 0;
        for slot in self.slots.iter_mut() {
            if freed >= excess {
                break;
            }
            if let Slot::Partial(p) = slot {
                freed += p.cost().saturating_sub(SLOT_OVERHEAD);
                *slot = Slot::Missing {
                    since_round: p.since_round,
                    requested_at: p.requested_at,
                };
            }
        }
        self.bytes -= freed;
        freed
    }

    /// Removes the oldest slots while they hold messages already delivered, below
    /// `contiguous`, until they free `excess` bytes; returns the bytes freed. The window
    /// starts later by as many (what [`slide_window`] does for such slots, without its
    /// per-slot reporting; it must still run for the chunks and the cursors).
    fn pop_delivered_front(&mut self, excess: usize) -> usize {
        let mut freed = 0;
        while freed < excess && self.base < self.contiguous {
            let cost = match self.slots.front() {
                Some(s @ Slot::Held { delivered: true, .. }) => s.cost(),
                _ => break,
            };
            self.slots.pop_front();
            freed += cost;
            self.base += 1;
        }
        self.bytes -= freed;
        self.next_deliver = self.next_deliver.max(self.base);
        freed
    }

    /// Removes the oldest slot (the window starts one later).
    fn pop_front(&mut self) -> Option<Slot> {
        let s = self.slots.pop_front()?;
        self.bytes -= s.cost();
        if !s.is_held() {
            self.missing -= 1;
        }
        self.base += 1;
        self.next_deliver = self.next_deliver.max(self.base);
        Some(s)
    }
}

/// Shared context a group needs from its node while handling an input.
pub struct Ctx<'a> {
    pub settings: &'a Settings,
    pub now: Time,
    pub round: u32,
    pub out: &'a mut Outbox,
    /// Buffers for retained message bytes.
    pub pool: &'a mut PayloadPool,
    pub events: &'a mut VecDeque<Event>,
    /// Where deliveries go instead of `events` while that queue is empty (the driver's
    /// `handle_packet_with`): no 112-byte event written and read back, no inline copy.
    pub sink: Option<&'a mut dyn FnMut(Delivered<'_>)>,
    pub counters: &'a mut Counters,
    /// Whether a node is alive as far as membership knows.
    pub live: &'a dyn Fn(NodeId) -> bool,
    /// Bytes the node's groups retain together.
    pub node_bytes: &'a mut usize,
    /// When some stream with gaps is next due to solicit them again (the node's repair
    /// timer; lowered by whoever leaves a gap open, `NEVER` when none is).
    pub repair_at: &'a mut Time,
}

impl Ctx<'_> {
    /// Delivers `stored` of `key`'s stream: to the sink when there is one and no event
    /// waits (a waiting event must come first), else queued as an `Event::Deliver` sharing
    /// the arena's bytes (dropped in a quiet group, either way).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn deliver(
        &mut self,
        quiet: bool,
        group: GroupId,
        key: StreamKey,
        seq: u64,
        session: u32,
        arena: &Arena,
        stored: Stored,
    ) {
        match self.sink.as_deref_mut() {
            Some(sink) if !quiet && self.events.is_empty() => sink(Delivered {
                group,
                sender: key.0,
                stream: key.1,
                seq,
                session,
                payload: arena.bytes(stored),
            }),
            _ => self.emit(
                quiet,
                Event::Deliver {
                    group,
                    sender: key.0,
                    stream: key.1,
                    seq,
                    session,
                    payload: arena.share(stored),
                },
            ),
        }
    }

    fn emit(&mut self, quiet: bool, e: Event) {
        if quiet {
            return; // the group lingers: nobody here wants its messages
        }
        if self.events.len() >= self.settings.max_pending_events {
            self.counters.events_dropped += 1;
        } else {
            self.events.push_back(e);
        }
    }
}

pub struct GroupState {
    pub id: GroupId,
    /// Group members of the current view, in view order, with their streams: shared by
    /// the nodes of a process that installed the same view (see `GroupMembers`).
    view: Arc<GroupMembers>,
    /// "Owed from the start", a bit per position of `view`: the member's stream appeared
    /// in the group while this member already was in it, so it owes us every message from
    /// seq 0 (a tombstone at 0, held as one bit until the stream's state is created; see
    /// `set_members`).
    owed: Vec<u64>,
    my_id: NodeId,
    /// This node's stream in the group (drawn when it joined).
    my_stream: u32,
    /// Our own stream's tree children in `view` for the fanout `own_fanout`: every submit
    /// needs them and recomputing them per message was ~2% of a sending shard (and copying
    /// them out of a `MAX_TREE_FANOUT` array per message another ~2% of the instructions
    /// per message: the send path takes this `Vec` and puts it back). Stale unless
    /// `own_fanout` is the current fanout; a view change sets it to `None`
    /// (`set_group_members`, the one place `view` is replaced).
    own_children: Vec<NodeId>,
    own_fanout: Option<usize>,
    next_seq: u64,
    /// Our stream's first seq of each round we sent in, the last `retention_rounds` of
    /// them: what we sent within a retention starts at the front's seq.
    sent_rounds: VecDeque<(u32, u64)>,
    /// Streams of our earlier memberships of the group `(stream, next seq)`: announced in
    /// our digests, so that members who never heard of their last messages (cut off when
    /// we left) report them `Lost`. Until round `.2`.
    retired_streams: Vec<(u32, u64, u32)>,
    senders: FxMap<StreamKey, SenderState>,
    /// Stream keys in first-seen order, for deterministic rotation over digests.
    order: Vec<StreamKey>,
    digest_cursor: usize,
    budget_left: usize,
    digest_replied: FxMap<NodeId, u32>,
    /// Streams that left the group view while we were in it, newest last (at most
    /// `max_tombstones`): their messages may still reach us from others.
    former: VecDeque<StreamKey>,
    /// Where this member's copy of a stream without a state starts: a forgotten stream's
    /// next expected seq, or 0 for a stream owed from the start whose member left the group
    /// view (while in it, the stream's bit of `owed` says so). Bounded by `max_tombstones`.
    tombstones: FxMap<StreamKey, (u64, u64)>,
    /// Tombstone keys with the stamp they were inserted with, oldest first, for eviction
    /// (an entry whose stamp no longer matches the map is stale and skipped).
    tombstone_order: VecDeque<(StreamKey, u64)>,
    tombstone_stamp: u64,
    /// Round since which this member has been in the group in every view (None: it is
    /// not in the current one).
    member_since: Option<u32>,
    /// Bytes retained (sum over streams).
    bytes: usize,
    /// Set when the application left: the group stays joined until then, silently.
    pub lingering_until: Option<Time>,
    scratch_digest: Vec<DigestEntry>,
    scratch_request: Vec<RequestEntry>,
    /// Flow control of our stream: the consumption of each child of our tree (each
    /// aggregating its subtree), and the seq our stream may reach before a submit is
    /// refused (the minimum over children not dropped as slow of `consumed + window`;
    /// recomputed when a report arrives, the view changes or a submit reaches it).
    flow: Vec<FlowPeer>,
    flow_limit: u64,
    /// When we last asked our tree for reports (our window or budget half used).
    flow_asked_at: Time,
    /// Counts views installed: a stream's tree state of an older one is reset.
    flow_epoch: u32,
    /// The least `consumed` of the members served.
    flow_min_consumed: u64,
}

/// A group's members in one view, in view order, with their streams and an index of their
/// positions. Built once per view and shared by the nodes of a process that install it
/// (`ViewCache::group_members`): ~12 bytes per member for all of them, not per node.
#[derive(Debug, Default)]
pub struct GroupMembers {
    members: Vec<NodeId>,
    streams: Vec<u32>,
    index: IdIndex,
}

impl GroupMembers {
    pub fn new(members: &[NodeId], streams: &[u32]) -> Self {
        let len = members.len().min(streams.len());
        let members = members[..len].to_vec();
        let mut index = IdIndex::default();
        index.rebuild(&members);
        GroupMembers {
            streams: streams[..len].to_vec(),
            members,
            index,
        }
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The position of `n` in the group, if it is a member.
    pub fn pos(&self, n: NodeId) -> Option<u32> {
        self.index.get(n, |p| self.members[p as usize])
    }

    /// The stream `n` sends in, if it is a member.
    pub fn stream_of(&self, n: NodeId) -> Option<u32> {
        self.pos(n).map(|p| self.streams[p as usize])
    }

    /// Whether it lists exactly `members` with `streams`.
    pub fn matches(&self, members: &[NodeId], streams: &[u32]) -> bool {
        let len = members.len().min(streams.len());
        self.members == members[..len] && self.streams == streams[..len]
    }

    /// Heap bytes held.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.members.capacity() * 4
            + self.streams.capacity() * 4
            + self.index.bytes()
    }
}

fn bit(bits: &[u64], i: usize) -> bool {
    bits.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
}

fn set_bit(bits: &mut [u64], i: usize) {
    if let Some(w) = bits.get_mut(i / 64) {
        *w |= 1 << (i % 64);
    }
}

fn clear_bit(bits: &mut [u64], i: usize) {
    if let Some(w) = bits.get_mut(i / 64) {
        *w &= !(1 << (i % 64));
    }
}

/// Where a stream whose state is being created starts: its tombstone's next seq (the
/// tombstone forgotten), or 0 when the member's stream is owed to us from the start (its
/// bit in `owed` cleared), else None.
fn take_tombstone(
    tombstones: &mut FxMap<StreamKey, (u64, u64)>,
    view: &GroupMembers,
    owed: &mut [u64],
    key: StreamKey,
) -> Option<u64> {
    if let Some(t) = tombstones.remove(&key) {
        return Some(t.0);
    }
    let i = owed_from_start(view, owed, key)?;
    clear_bit(owed, i);
    Some(0)
}

/// `key`'s position in `view` when it is the member's stream and owed to us from seq 0 (its
/// bit in `owed` set).
fn owed_from_start(view: &GroupMembers, owed: &[u64], key: StreamKey) -> Option<usize> {
    let i = view.pos(key.0)? as usize;
    (view.streams[i] == key.1 && bit(owed, i)).then_some(i)
}

/// Per-stream bookkeeping after a change to `st`: the group's and the node's byte totals.
fn account(group_bytes: &mut usize, before: usize, after: usize, ctx: &mut Ctx<'_>) {
    *group_bytes = *group_bytes + after - before;
    *ctx.node_bytes = *ctx.node_bytes + after - before;
}

impl GroupState {
    pub fn new(id: GroupId, my_id: NodeId, my_stream: u32) -> Self {
        GroupState {
            id,
            view: Arc::default(),
            owed: Vec::new(),
            my_id,
            my_stream,
            own_children: Vec::new(),
            own_fanout: None,
            next_seq: 0,
            sent_rounds: VecDeque::new(),
            retired_streams: Vec::new(),
            senders: FxMap::default(),
            order: Vec::new(),
            digest_cursor: 0,
            budget_left: 0,
            digest_replied: FxMap::default(),
            former: VecDeque::new(),
            tombstones: FxMap::default(),
            tombstone_order: VecDeque::new(),
            tombstone_stamp: 0,
            member_since: None,
            bytes: 0,
            lingering_until: None,
            scratch_digest: Vec::new(),
            scratch_request: Vec::new(),
            flow: Vec::new(),
            flow_asked_at: 0,
            flow_epoch: 0,
            flow_limit: u64::MAX,
            flow_min_consumed: u64::MAX,
        }
    }

    pub fn my_stream(&self) -> u32 {
        self.my_stream
    }

    // ------------------------------------------------------------ flow control (sender)

    /// The view changed: the children of our tree are served by our window (each with its
    /// subtree; a new one as holding everything we sent so far, until its first report),
    /// others no longer.
    fn update_flow_members(&mut self, ctx: &Ctx<'_>) {
        let (kids, n) = self.children(self.my_id, ctx.settings.tree_fanout);
        let kids = &kids[..n];
        self.flow.retain(|p| kids.contains(&p.node));
        let full = ctx.settings.retransmit_budget_bytes;
        for &c in kids {
            if self.flow.iter().all(|p| p.node != c) {
                let window = ctx.settings.flow_window.max(1);
                self.flow
                    .push(FlowPeer::new(c, self.next_seq, window, ctx.now, full));
            }
        }
        self.recompute_flow_limit(ctx.settings);
    }

    /// Our place in the tree of `root`'s stream in the current view: our children (also
    /// when `root` is not in the view yet: see `children`), and our parent when both `root`
    /// and we are in it (the tree flow control runs along).
    fn tree_place(&self, root: NodeId, k: usize) -> FlowTree {
        let (kids, len) = self.children(root, k);
        let n = self.view.len();
        let (r, me) = match (self.view.pos(root), self.view.pos(self.my_id)) {
            (Some(r), Some(me)) => (r as usize, me as usize),
            _ => {
                return FlowTree {
                    parent: None,
                    kids,
                    len,
                    flow: false,
                }
            }
        };
        let k = k.clamp(1, MAX_TREE_FANOUT);
        let rel = (me + n - r) % n;
        let parent = (rel > 0).then(|| self.view.members[((rel - 1) / k + r) % n]);
        FlowTree {
            parent,
            kids,
            len,
            flow: true,
        }
    }

    /// Brings our place in stream `key`'s tree up to the current view (once per view), and
    /// with `flow` the stream's flow-control tree state too (reset from that place).
    fn refresh_place(&mut self, key: StreamKey, flow: bool, settings: &Settings, now: Time) {
        let epoch = self.flow_epoch;
        let stale = self
            .senders
            .get(&key)
            .is_some_and(|st| st.place_epoch != Some(epoch));
        let place = stale.then(|| self.tree_place(key.0, settings.tree_fanout));
        let Some(st) = self.senders.get_mut(&key) else {
            return;
        };
        if let Some(place) = place {
            st.place = place;
            st.place_epoch = Some(epoch);
        }
        if flow && st.tree_epoch != epoch && st.place.flow {
            st.reset_flow_tree(epoch, settings, now);
        }
    }

    /// Our window or budget is half used: ask our tree for reports every interval for a
    /// while (at most every `ASK_EVERY` intervals; each member passes it on once).
    /// `own_stream` is our stream's (base, bytes) ([`Self::own`]). Inlined: every submit
    /// makes the checks (as a call they were ~4% of a node's instructions), few ask.
    #[inline]
    fn flow_maybe_ask(&mut self, own_stream: Option<(u64, usize)>, ctx: &mut Ctx<'_>) {
        let own = ctx.settings.flow_window;
        if own == 0 || self.flow.is_empty() {
            return;
        }
        let interval = ctx.settings.flow_status_interval.max(1);
        if self.flow_asked_at != 0 && ctx.now < self.flow_asked_at.saturating_add(ASK_EVERY * interval) {
            return;
        }
        let min = self.flow_min_consumed.min(self.next_seq);
        let window_half = self.next_seq.saturating_sub(min).saturating_mul(2) >= own;
        // Budget half full, and the least consumption we know of is in the older half of
        // what we retain: it may soon hold back an eviction.
        let budget_half =
            !window_half && self.bytes.saturating_mul(2) >= ctx.settings.group_budget_bytes && {
                let own_base = own_stream.map_or(self.next_seq, |(base, _)| base);
                min <= own_base + self.next_seq.saturating_sub(own_base) / 2
            };
        if !window_half && !budget_half {
            return;
        }
        self.flow_ask(ctx);
    }

    /// Asks our tree for reports now ([`Self::flow_maybe_ask`]).
    #[cold]
    fn flow_ask(&mut self, ctx: &mut Ctx<'_>) {
        let own = ctx.settings.flow_window;
        self.flow_asked_at = ctx.now.max(1);
        let ask = FlowStatus {
            group: self.id,
            sender: self.my_id,
            stream: self.my_stream,
            consumed: self.next_seq,
            window: own.clamp(1, u64::from(u32::MAX)) as u32,
            gaps: 0,
            holder: self.my_id,
            members: 0,
        };
        for p in &self.flow {
            ctx.counters.flow_asks_sent += 1;
            ctx.out
                .push(p.node, FLOW_STATUS_LEN, |e| e.push_flow_status(&ask));
        }
    }

    fn recompute_flow_limit(&mut self, settings: &Settings) {
        let own = settings.flow_window;
        let served = self.flow.iter().filter(|p| !p.slow);
        (self.flow_limit, self.flow_min_consumed) = if own == 0 {
            (u64::MAX, u64::MAX) // flow control off
        } else {
            served.fold((u64::MAX, u64::MAX), |(limit, min), p| {
                (
                    limit.min(p.consumed.saturating_add(p.window.min(own))),
                    min.min(p.consumed),
                )
            })
        };
    }

    /// Whether our stream may take a message of `len` bytes now without a bound of flow
    /// control: `next_seq` below the window of every member served, and, when the group's
    /// budget is full (the message evicts our oldest), that oldest message held by every
    /// member served (else the eviction would make it `Lost` for a member that keeps up).
    /// Whether a message of `len` bytes from us would take the group over its budget and the
    /// eviction that follows would take our own stream's oldest messages (`evict` takes from
    /// our stream when it holds at least an even share, else from the largest). Another
    /// stream's bytes, such as the gaps a forged digest opened, are evicted from that stream
    /// and must not hold our window shut.
    fn budget_evicts_own(&self, len: usize, own: Option<(u64, usize)>, settings: &Settings) -> bool {
        let total = self.bytes + SLOT_OVERHEAD + len;
        if total <= settings.group_budget_bytes {
            return false;
        }
        let own = own.map_or(0, |(_, bytes)| bytes) + SLOT_OVERHEAD + len;
        own >= total / self.senders.len().max(1)
    }

    /// Our own stream's (base, bytes), if we sent anything: one lookup, which the send path
    /// makes once per message for every check that needs them (five lookups of the same
    /// entry were ~10% of a sending node's time).
    fn own(&self) -> Option<(u64, usize)> {
        self.senders
            .get(&(self.my_id, self.my_stream))
            .map(|st| (st.base, st.bytes))
    }

    fn flow_open(&self, len: usize, own: Option<(u64, usize)>, ctx: &Ctx<'_>) -> bool {
        if ctx.settings.flow_window == 0 {
            return true; // flow control off
        }
        if self.next_seq >= self.flow_limit {
            return false;
        }
        if !self.budget_evicts_own(len, own, ctx.settings) {
            return true;
        }
        let own_base = own.map_or(self.next_seq, |(base, _)| base);
        own_base < self.flow_min_consumed
    }

    /// Our stream reached a bound of flow control (`flow_open` said no): apply the bimodal
    /// rule (a member holding the stream back for `flow_slow_after` while stalled, or
    /// outpaced by the fastest other member more than twice, is dropped from the window),
    /// then whether the message may be sent. When it may not, the node's timer is set for
    /// when a member holding it may be dropped.
    /// `own_stream` is our stream's (base, bytes) ([`Self::own`]).
    fn flow_admit(&mut self, len: usize, own_stream: Option<(u64, usize)>, ctx: &mut Ctx<'_>) -> bool {
        self.flow_maybe_ask(own_stream, ctx);
        let (now, next) = (ctx.now, self.next_seq);
        let own = ctx.settings.flow_window;
        let slow_after = ctx.settings.flow_slow_after;
        let budget_full = self.budget_evicts_own(len, own_stream, ctx.settings);
        let own_base = own_stream.map_or(next, |(base, _)| base);
        let (dropped, wake) = flow_rule(
            &mut self.flow,
            |p| {
                let window_full = next >= p.consumed.saturating_add(p.window.min(own));
                let owed_front = budget_full && p.consumed <= own_base;
                window_full || owed_front
            },
            slow_after,
            now,
        );
        ctx.counters.flow_slow_members += dropped;
        self.recompute_flow_limit(ctx.settings);
        if self.flow_open(len, own_stream, ctx) {
            return true;
        }
        *ctx.repair_at = (*ctx.repair_at).min(wake);
        false
    }

    /// Flow control: a report from a child in a stream's tree (of ours, or of a stream we
    /// relay), or a sender's ask for reports.
    pub fn handle_flow_status(&mut self, from: NodeId, status: &FlowStatus, ctx: &mut Ctx<'_>) {
        if ctx.settings.flow_window == 0 {
            ctx.counters.flow_statuses_ignored += 1;
            return;
        }
        if status.is_ask() {
            return self.handle_flow_ask(status, ctx);
        }
        // A report counts at most the group's members (else it is not one of theirs).
        if status.members as usize > self.view.len() {
            ctx.counters.flow_statuses_ignored += 1;
            return;
        }
        if status.sender != self.my_id {
            return self.handle_kid_report(from, status, ctx);
        }
        if status.stream != self.my_stream {
            ctx.counters.flow_statuses_ignored += 1;
            return;
        }
        let Some(p) = self.flow.iter_mut().find(|p| p.node == from) else {
            ctx.counters.flow_statuses_ignored += 1;
            return;
        };
        ctx.counters.flow_statuses_received += 1;
        let own = ctx.settings.flow_window.max(1);
        // Never past what we sent (a forged or confused report cannot open the window).
        if p.apply(status, self.next_seq, own, ctx.now) {
            ctx.counters.flow_readmitted += 1;
        }
        let new_gaps = u64::from(status.gaps.wrapping_sub(p.gaps));
        p.gaps = status.gaps;
        if new_gaps.saturating_mul(GAP_BURST_DIVISOR) > p.window {
            let floor = ctx.settings.retransmit_budget_bytes / REQUESTER_BUDGET_FLOOR;
            p.repair_budget = (p.repair_budget / 2).max(floor);
            p.repair_left = p.repair_left.min(p.repair_budget);
        }
        self.recompute_flow_limit(ctx.settings);
    }

    /// A child in the tree of a stream we relay reported its subtree: aggregate, and report
    /// on to our parent when that moved our subtree's consumption a quarter window.
    fn handle_kid_report(&mut self, from: NodeId, status: &FlowStatus, ctx: &mut Ctx<'_>) {
        let key = (status.sender, status.stream);
        if self.view.stream_of(key.0) != Some(key.1) || !self.senders.contains_key(&key) {
            ctx.counters.flow_statuses_ignored += 1;
            return;
        }
        self.refresh_place(key, true, ctx.settings, ctx.now);
        let (me, group) = (self.my_id, self.id);
        let Some(st) = self.senders.get_mut(&key) else {
            return;
        };
        let head = st.high();
        let own = ctx.settings.flow_window.max(1);
        let Some(p) = st.kids.iter_mut().find(|p| p.node == from) else {
            ctx.counters.flow_statuses_ignored += 1;
            return;
        };
        ctx.counters.flow_statuses_received += 1;
        if p.apply(status, head, own, ctx.now) {
            ctx.counters.flow_readmitted += 1;
        }
        p.gaps = status.gaps;
        let wake = st.flow_kids_rule(ctx.settings, ctx.now, ctx.counters);
        *ctx.repair_at = (*ctx.repair_at).min(wake);
        flow_report_if_due(group, me, key, st, ctx);
    }

    /// A stream's sender asks for reports every interval for a while: pass it on to our
    /// children in its tree (once an interval at most: a forged ask costs each member at
    /// most a report per interval).
    fn handle_flow_ask(&mut self, status: &FlowStatus, ctx: &mut Ctx<'_>) {
        let key = (status.sender, status.stream);
        if key.0 == self.my_id
            || self.view.stream_of(key.0) != Some(key.1)
            || !self.senders.contains_key(&key)
        {
            ctx.counters.flow_statuses_ignored += 1;
            return;
        }
        ctx.counters.flow_asks_received += 1;
        self.refresh_place(key, true, ctx.settings, ctx.now);
        let (me, group) = (self.my_id, self.id);
        let Some(st) = self.senders.get_mut(&key) else {
            return;
        };
        let interval = ctx.settings.flow_status_interval.max(1);
        let now = ctx.now;
        st.asked_until = now.saturating_add(ASK_HOLD * interval);
        st.status_repeats = 0;
        if st.ask_passed_at == 0 || now >= st.ask_passed_at.saturating_add(interval) {
            st.ask_passed_at = now.max(1);
            for p in &st.kids {
                ctx.counters.flow_asks_sent += 1;
                ctx.out
                    .push(p.node, FLOW_STATUS_LEN, |e| e.push_flow_status(status));
            }
        }
        flow_report_if_due(group, me, key, st, ctx);
    }

    /// This round's retransmit budget (reset each gossip round; a group joined between
    /// rounds starts with a full one, or it could serve no repair until the next round).
    pub fn set_retransmit_budget(&mut self, bytes: usize) {
        self.budget_left = bytes;
    }

    /// The oldest seq of our stream sent within the last retention (`next_seq` when we
    /// sent nothing in it).
    fn own_recent(&mut self, ctx: &Ctx<'_>) -> u64 {
        let retention = ctx.settings.retention_rounds;
        while self
            .sent_rounds
            .front()
            .is_some_and(|(r, _)| ctx.round.wrapping_sub(*r) > retention)
        {
            self.sent_rounds.pop_front();
        }
        self.sent_rounds.front().map_or(self.next_seq, |(_, s)| *s)
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn quiet(&self) -> bool {
        self.lingering_until.is_some()
    }

    /// Install the group's members of a new view: `(node, stream)` in view order.
    pub fn set_members(&mut self, members: &[NodeId], streams: &[u32], ctx: &mut Ctx<'_>) {
        self.set_group_members(Arc::new(GroupMembers::new(members, streams)), ctx);
    }

    /// Install the group's members of a new view (shared with other nodes of the process).
    ///
    /// A stream's seqs start at 0 when its node joins the group. So when this member
    /// already was in the group and a stream appears in it, every message of that stream is
    /// owed to us from seq 0: remember that (as a bit of `owed`, a tombstone at 0 once its
    /// member leaves the view), so that messages sent before we first hear of the stream
    /// are repaired or reported `Lost`, never skipped; for instance when it published only
    /// while partitioned away.
    pub fn set_group_members(&mut self, view: Arc<GroupMembers>, ctx: &mut Ctx<'_>) {
        let was_member = self.is_member(self.my_id);
        let now_member = view.pos(self.my_id).is_some();
        self.member_since = match (was_member, now_member) {
            (_, false) => None,
            (false, true) => Some(ctx.round),
            (true, true) => self.member_since.or(Some(ctx.round)),
        };
        if Arc::ptr_eq(&self.view, &view) {
            return;
        }
        let previous = std::mem::replace(&mut self.view, view);
        self.own_fanout = None;
        self.flow_epoch = self.flow_epoch.wrapping_add(1);
        self.update_flow_members(ctx);
        let previous_owed = std::mem::take(&mut self.owed);
        self.owed = vec![0; self.view.len().div_ceil(64)];
        let keep_owed = was_member && now_member;
        for (i, (&n, &stream)) in previous.members.iter().zip(&previous.streams).enumerate() {
            if n == self.my_id {
                continue;
            }
            let now_at = self
                .view
                .pos(n)
                .filter(|&j| self.view.streams[j as usize] == stream);
            if now_at.is_none() {
                self.former.push_back((n, stream));
                if self.former.len() > ctx.settings.max_tombstones {
                    self.former.pop_front();
                }
            }
            if bit(&previous_owed, i) && !self.senders.contains_key(&(n, stream)) {
                match now_at {
                    Some(j) if keep_owed => set_bit(&mut self.owed, j as usize),
                    // Its member left the view (or we did): still owed, as a tombstone.
                    _ => {
                        if !self.tombstones.contains_key(&(n, stream)) {
                            self.add_tombstone((n, stream), 0, ctx);
                        }
                    }
                }
            }
        }
        if !keep_owed {
            return;
        }
        for j in 0..self.view.len() {
            let (n, stream) = (self.view.members[j], self.view.streams[j]);
            let key = (n, stream);
            if n == self.my_id
                || previous.stream_of(n) == Some(stream)
                || self.senders.contains_key(&key)
                || self.tombstones.contains_key(&key)
            {
                continue;
            }
            set_bit(&mut self.owed, j);
        }
    }

    /// Where our copy of stream `key` (without a state) starts, if we remember: its
    /// tombstone, or 0 for a stream owed from the start.
    fn tombstone(&self, key: StreamKey) -> Option<u64> {
        if let Some(t) = self.tombstones.get(&key) {
            return Some(t.0);
        }
        owed_from_start(&self.view, &self.owed, key).map(|_| 0)
    }

    /// Remember where `key`'s stream stands for us (bounded; the oldest is evicted).
    fn add_tombstone(&mut self, key: StreamKey, next: u64, ctx: &mut Ctx<'_>) {
        self.tombstone_stamp += 1;
        let stamp = self.tombstone_stamp;
        self.tombstones.insert(key, (next, stamp));
        self.tombstone_order.push_back((key, stamp));
        let cap = ctx.settings.max_tombstones;
        while self.tombstones.len() > cap {
            let Some((k, st)) = self.tombstone_order.pop_front() else {
                break;
            };
            if let Entry::Occupied(e) = self.tombstones.entry(k) {
                if e.get().1 == st {
                    e.remove();
                    ctx.counters.tombstones_evicted += 1;
                }
            }
        }
        // Stale order entries (tombstones consumed by a returning stream) are dropped once
        // they outnumber the live ones: the order stays within twice the cap.
        if self.tombstone_order.len() > 2 * cap.max(self.tombstones.len()) + 16 {
            let live = &self.tombstones;
            self.tombstone_order
                .retain(|(k, st)| live.get(k).is_some_and(|v| v.1 == *st));
        }
    }

    /// Whether we hold, or may create, the state of stream `key` (at most `max_streams`).
    fn can_track(&self, key: StreamKey, ctx: &mut Ctx<'_>) -> bool {
        if self.senders.contains_key(&key) {
            return true;
        }
        // A member tracks the streams its views named (now or before), those of live
        // peers and those it remembers; anything else is invented (or from before we
        // joined: not owed). That holds before our first view of the group too (just
        // joined or restarted): a sender we do not know yet is learned from its
        // heartbeats, and what we dropped meanwhile is repaired from its digests.
        let known = self.tombstone(key).is_some()
            || self.member_stream(key.0) == Some(key.1)
            || (ctx.live)(key.0)
            || self.former.contains(&key);
        if !known {
            ctx.counters.unknown_streams += 1;
            return false;
        }
        if self.senders.len() < ctx.settings.max_streams {
            return true;
        }
        ctx.counters.streams_full += 1;
        false
    }

    /// Streams with state or a tombstone.
    pub fn stream_count(&self) -> usize {
        let owed: u32 = self.owed.iter().map(|w| w.count_ones()).sum();
        self.senders.len() + self.tombstones.len() + owed as usize
    }

    /// The stream `n` sends in the group in the current view, if it is a member.
    fn member_stream(&self, n: NodeId) -> Option<u32> {
        self.view.stream_of(n)
    }

    pub fn members(&self) -> &[NodeId] {
        &self.view.members
    }

    pub fn is_member(&self, n: NodeId) -> bool {
        self.view.pos(n).is_some()
    }

    /// Children of this node in the k-ary tree rooted at `root`: positions are relabeled
    /// so the root is 0; node `i` has children `k*i+1 ..= k*i+k`.
    fn children(&self, root: NodeId, k: usize) -> ([NodeId; MAX_TREE_FANOUT], usize) {
        let mut out = [0; MAX_TREE_FANOUT];
        let mut len = 0;
        let n = self.view.len();
        // A root not (yet) in the group view (a sender whose join the view has not taken
        // in) roots a tree over [root] + members, so that its first messages reach the
        // group at once instead of waiting, retained, for the next view.
        let (r, me, n, offset) = match (self.view.pos(root), self.view.pos(self.my_id)) {
            (Some(r), Some(me)) => (r as usize, me as usize, n, 0),
            (None, Some(me)) => (0, me as usize + 1, n + 1, 1),
            (None, None) if root == self.my_id => (0, 0, n + 1, 1),
            _ => return (out, 0),
        };
        let rel = (me + n - r) % n;
        for c in 1..=k.min(MAX_TREE_FANOUT) {
            let child = match rel.checked_mul(k).and_then(|x| x.checked_add(c)) {
                Some(x) if x < n => x,
                _ => break,
            };
            let index = (child + r) % n;
            if index < offset {
                continue; // the virtual root
            }
            if let Some(&node) = self.view.members.get(index - offset) {
                out[len] = node;
                len += 1;
            }
        }
        (out, len)
    }

    /// Where our copy of a stream we hold no state of starts, given the history it (or a
    /// peer) advertises from `advertised`. A sender's low-water mark moves only past
    /// messages sent a retention ago (or evicted by its budget). So when we first hear of
    /// it within a retention of joining the group, nothing it sent since we joined is below
    /// its low: start there (no `Lost` for history before we joined). Heard of only later
    /// (we were cut off, or it published only while cut off from us), messages it sent after
    /// we joined may be below its low: start at 0, so that they are reported `Lost` rather
    /// than skipped.
    fn first_base(&self, key: StreamKey, advertised: u64, ctx: &Ctx<'_>) -> u64 {
        if self.senders.contains_key(&key) || self.tombstone(key).is_some() {
            return advertised; // unused: the state or tombstone decides
        }
        match self.member_since {
            Some(since) if ctx.round.wrapping_sub(since) > ctx.settings.retention_rounds => 0,
            _ => advertised,
        }
    }

    /// The state of `key`, created at `base` (the sender's advertised history) unless a
    /// tombstone says where our copy of it stands. Inlined (with `PayloadPool::store`, ~4%
    /// of the instructions per message): every message takes this path.
    #[inline]
    fn state_for(&mut self, key: StreamKey, base: u64, round: u32) -> &mut SenderState {
        // One lookup (the entry), not a check and a second lookup: this runs per message.
        let GroupState {
            senders,
            order,
            tombstones,
            view,
            owed,
            ..
        } = self;
        senders.entry(key).or_insert_with(|| {
            order.push(key);
            let base = take_tombstone(tombstones, view, owed, key).unwrap_or(base);
            let mut st = SenderState::new(base);
            (st.source, st.holder) = (key.0, key.0);
            st.last_active = round;
            st
        })
    }

    /// The application submitted a message: keep it for repair, send it down the tree (in
    /// fragments when it exceeds one datagram). Returns its seq. `local` sees the retained
    /// copy before anything may evict it (`payload` is read once, into it).
    pub fn submit(
        &mut self,
        payload: &[u8],
        session: u32,
        ctx: &mut Ctx<'_>,
        local: impl FnOnce(&[u8]),
    ) -> Result<u64, SubmitError> {
        self.submit_flow(payload, session, ctx, local, true)
    }

    /// As [`submit`](Self::submit), but past a full flow-control window: for what a
    /// publisher that went away had already committed (its ring is drained once, so the
    /// overshoot is at most one ring). Retention may then evict what a member still lacks:
    /// it gets repair or `Lost`, never silence.
    pub fn submit_past_flow(
        &mut self,
        payload: &[u8],
        session: u32,
        ctx: &mut Ctx<'_>,
        local: impl FnOnce(&[u8]),
    ) -> Result<u64, SubmitError> {
        self.submit_flow(payload, session, ctx, local, false)
    }

    fn submit_flow(
        &mut self,
        payload: &[u8],
        session: u32,
        ctx: &mut Ctx<'_>,
        local: impl FnOnce(&[u8]),
        respect_flow: bool,
    ) -> Result<u64, SubmitError> {
        let own = self.own();
        if respect_flow
            && !self.flow_open(payload.len(), own, ctx)
            && !self.flow_admit(payload.len(), own, ctx)
        {
            ctx.counters.flow_blocked += 1;
            return Err(SubmitError::Full);
        }
        self.flow_maybe_ask(own, ctx);
        let seq = self.next_seq;
        if self.sent_rounds.back().map(|(r, _)| *r) != Some(ctx.round) {
            self.sent_rounds.push_back((ctx.round, seq));
        }
        let recent = self.own_recent(ctx);
        self.next_seq += 1;
        let key = (self.my_id, self.my_stream);
        let round = ctx.round;
        let chunk = ctx.settings.fragment_payload();
        let fanout = ctx.settings.tree_fanout;
        let mut children = std::mem::take(&mut self.own_children);
        if self.own_fanout != Some(fanout) {
            let (all, n) = self.children(self.my_id, fanout);
            children.clear();
            children.extend_from_slice(&all[..n]);
            self.own_fanout = Some(fanout);
        }
        let (group, sender, stream) = (self.id, self.my_id, self.my_stream);
        let st = self.state_for(key, 0, round);
        let data = ctx.pool.store(&mut st.arena, payload, seq, round);
        local(st.arena.bytes(data));
        let before = st.bytes;
        st.last_active = round;
        assert_eq!(st.high(), seq, "own stream: the window ends at the next seq");
        // The slot records where the arena holds the bytes and the sends read them there: no
        // reference count raised and dropped again (locked instructions, each waiting for
        // the store buffer to drain, were ~5% of the sending shard).
        let slot = Slot::Held {
            data,
            session,
            chunk: chunk as u32,
            round,
            delivered: true,
        };
        st.bytes += slot.cost();
        st.push_slot(slot);
        st.next_deliver = seq + 1;
        st.advance_contiguous();
        // Receivers first hearing of the stream start at what we sent within a retention,
        // not at our low: the budget may have dropped messages a new member is owed.
        st.recent = recent.min(st.base);
        let retained = (seq - st.recent).min(u64::from(u32::MAX)) as u32;
        let after = st.bytes;
        let header = DataHeader {
            group,
            seq,
            sender,
            stream,
            retained,
            session,
            frag_index: 0,
            frag_count: 1,
        };
        let payload = st.arena.bytes(data);
        for &c in &children {
            send_fragments(c, &header, payload, chunk, 0, false, ctx);
        }
        self.own_children = children;
        account(&mut self.bytes, before, after, ctx);
        self.enforce_budget(Some(key), ctx);
        Ok(seq)
    }

    /// A data message (a stage 1 copy or a retransmission, of a whole message or one
    /// fragment: both are handled alike) arrived from `from`.
    pub fn handle_data(&mut self, from: NodeId, header: &DataHeader, payload: &[u8], ctx: &mut Ctx<'_>) {
        let key = (header.sender, header.stream);
        if key.0 == self.my_id {
            return; // our own stream (or a forged copy of it): we hold the truth
        }
        if header.seq >= MAX_SEQ {
            // No stream gets that far (2^62 messages): forged.
            ctx.counters.implausible_seqs += 1;
            return;
        }
        let fits = fragment_fits(header, payload.len(), ctx.settings);
        if !fits {
            ctx.counters.bad_fragments += 1;
        }
        let seq = header.seq;
        let max_window = ctx.settings.max_window();
        let round = ctx.round;
        // Where a stream first heard of starts (when no tombstone says otherwise). Not
        // clamped to a window: what lies more than a window behind `seq` is reported `Lost`
        // when the window slides below (in O(1) for seqs never seen), never skipped.
        let base = seq.saturating_sub(u64::from(header.retained));
        let group = self.id;
        let quiet = self.quiet();
        if !self.can_track(key, ctx) {
            return;
        }
        // Where the stream stands for us: its window's high, or where a forgotten stream
        // stopped (its tombstone).
        let known_high = match self.senders.get(&key) {
            Some(st) => Some(st.high()),
            None => self.tombstone(key),
        };
        if from != key.0 && known_high.is_some_and(|h| seq >= h.saturating_add(relay_reach(ctx.settings))) {
            // Only the sender itself may move our window far at once (a member relaying a
            // seq far ahead would fill the budget with gaps, or push real messages below
            // our window).
            ctx.counters.implausible_seqs += 1;
            return;
        }
        let base = self.first_base(key, base, ctx);
        let mut wants = std::mem::take(&mut self.scratch_request);
        wants.clear();
        let sender_in_view = self.view.pos(key.0).is_some();
        let flow_on = sender_in_view && ctx.settings.flow_window > 0;
        let (epoch, me) = (self.flow_epoch, self.my_id);
        let st = self.state_for(key, base, round);
        // Our place in the stream's tree, once per view (not a lookup per message).
        let st = if st.place_epoch != Some(epoch) || (flow_on && st.tree_epoch != epoch) {
            self.refresh_place(key, flow_on, ctx.settings, ctx.now);
            self.senders.get_mut(&key).expect("created above")
        } else {
            st
        };
        let before = st.bytes;
        if seq < st.base {
            ctx.counters.duplicates += 1;
            self.scratch_request = wants;
            return;
        }
        if seq.saturating_add(1) > st.base.saturating_add(max_window) {
            // The sender is a whole window ahead of the oldest seq we keep: give up the
            // oldest (gaps reported Lost, held messages delivered) instead of dropping
            // everything new. A receiver always makes progress.
            ctx.counters.window_overflow += 1;
            slide_window(group, quiet, key, st, seq + 1 - max_window, ctx);
        }
        let old_high = st.high();
        if !st.extend_to(seq + 1, round, max_window) {
            ctx.counters.window_overflow += 1;
            let after = st.bytes;
            account(&mut self.bytes, before, after, ctx);
            self.scratch_request = wants;
            return;
        }
        let old_cost = st.slot(seq).map_or(0, Slot::cost);
        let (stored, complete, forward) = match st.slot_mut(seq) {
            // Too large for this member: settle it as refused (reported Lost in its turn)
            // rather than ask for it again and again.
            // Only the sender's own copy settles it: a member could claim any message is
            // too large and make it Lost everywhere it reaches first.
            Some(slot @ (Slot::Missing { .. } | Slot::Partial(_))) if !fits && from == key.0 => {
                *slot = Slot::Refused {
                    round,
                    delivered: false,
                };
                (true, true, false)
            }
            Some(_) if !fits => (false, false, false),
            Some(_) => match st.slot_and_arena(seq) {
                (Some(slot), arena) => {
                    store_fragment(slot, arena, header, payload, round, from == key.0, ctx)
                }
                (None, _) => (false, false, false),
            },
            None => (false, false, false),
        };
        if stored {
            st.bytes = st.bytes - old_cost + st.slot(seq).map_or(0, Slot::cost);
        }
        let place = st.place;
        st.recent = st.recent.max(seq.saturating_sub(u64::from(header.retained)));
        st.last_active = round;
        st.source = from;
        if from == key.0 {
            st.direct_high = st.direct_high.max(seq + 1);
        }
        if complete {
            st.missing -= 1;
            st.advance_contiguous();
            deliver_ready(group, quiet, key, st, seq, ctx);
        }
        // Repair that keeps pace with the sender: a gap just opened is solicited at once
        // from the member the stream came from; gaps still open are solicited again by the
        // repair timer (`rerequest_gaps`), which spreads its attempts over other members.
        if old_high < seq {
            st.gaps = st
                .gaps
                .wrapping_add((seq - old_high).min(u64::from(u32::MAX)) as u32);
            collect_wants(key, st, old_high, seq, ctx, &mut wants);
            if st.missing > 0 && st.last_rescan == 0 {
                st.last_rescan = ctx.now;
            }
        }
        if st.missing > 0 {
            // Solicit again on the repair timer, not only when the next copy arrives: a
            // sender that publishes in bursts would leave a failed repair unasked until
            // its budget evicted the message everywhere.
            *ctx.repair_at = (*ctx.repair_at).min(st.rerequest_due(ctx.settings).max(ctx.now));
        }
        // Flow control: report our subtree's consumption to our parent in the stream's tree
        // at once when it moved a quarter window, else when due (the repair timer sends it).
        if flow_on {
            st.status_repeats = 0;
            flow_report_if_due(group, me, key, st, ctx);
        }
        let after = st.bytes;
        account(&mut self.bytes, before, after, ctx);
        if !wants.is_empty() {
            self.send_request(from, REQUEST_ROUND_GAP, &wants, ctx);
            ctx.counters.gap_requests_sent += 1;
        }
        self.scratch_request = wants;
        if forward {
            for &c in place.kids() {
                ctx.counters.data_sent += 1;
                ctx.out.push_data(c, header, false, payload);
            }
        }
        self.enforce_budget(Some(key), ctx);
    }

    /// A run of whole messages of one stream (consecutive seqs, one session) arrived from
    /// `from`. Its first message goes through [`handle_data`](Self::handle_data), which
    /// creates the stream's state, settles our place in its tree and makes every check a
    /// copy needs. The rest, when they continue the stream right after everything we hold
    /// and have delivered (the steady state), are taken together: one state lookup and
    /// one set of checks for the run, each message stored, delivered and forwarded in
    /// turn, the bytes accounted, flow reported and the budget enforced once. Anything
    /// else (a gap before or inside the run, duplicates, a message too large, a window
    /// overflow, a view change not yet seen by the stream) goes message by message through
    /// `handle_data`, exactly as strict.
    pub fn handle_run(&mut self, from: NodeId, run: &RunMessages<'_>, ctx: &mut Ctx<'_>) {
        let mut messages = run.iter();
        let Some((first, payload)) = messages.next() else {
            return;
        };
        self.handle_data(from, &first, payload, ctx);
        let rest = (run.len() - 1) as u64;
        if rest == 0 {
            return;
        }
        let key = (first.sender, first.stream);
        // `decode` checked that the run's seqs do not overflow.
        let next = first.seq + 1;
        let end = next + rest;
        let flow_on = ctx.settings.flow_window > 0 && self.view.pos(key.0).is_some();
        let (epoch, group, quiet, me) = (self.flow_epoch, self.id, self.quiet(), self.my_id);
        let max_window = ctx.settings.max_window();
        // A relayed seq is refused past `high + relay_reach`; each of these is at `high`.
        let reach_ok = from == key.0 || relay_reach(ctx.settings) > 0;
        let together = key.0 != me
            && reach_ok
            && end <= MAX_SEQ
            && self.senders.get(&key).is_some_and(|st| {
                st.high() == next
                    && st.missing == 0
                    && st.contiguous == next
                    && st.next_deliver == next
                    && end <= st.base.saturating_add(max_window)
                    && st.place_epoch == Some(epoch)
                    && (!flow_on || !st.place.flow || st.tree_epoch == epoch)
            });
        if !together {
            for (h, p) in messages {
                self.handle_data(from, &h, p, ctx);
            }
            return;
        }
        let Some(st) = self.senders.get_mut(&key) else {
            return;
        };
        let before = st.bytes;
        let round = ctx.round;
        let place = st.place;
        // What `fragment_fits` allows a whole message.
        let fits = ctx.settings.fragment_payload().min(ctx.settings.max_message);
        let mut refused = None;
        for (h, payload) in messages.by_ref() {
            if payload.len() > fits {
                refused = Some((h, payload));
                break;
            }
            let seq = h.seq;
            debug_assert_eq!(seq, st.high(), "a run continues the stream");
            let retained = ctx.pool.store(&mut st.arena, payload, seq, round);
            ctx.counters.delivered += 1;
            ctx.deliver(quiet, group, key, seq, h.session, &st.arena, retained);
            let slot = Slot::Held {
                data: retained,
                session: h.session,
                chunk: payload.len() as u32,
                round,
                delivered: true,
            };
            st.bytes += slot.cost();
            st.push_slot(slot);
            st.contiguous = seq + 1;
            st.next_deliver = seq + 1;
            st.rerequests = 0;
            st.recent = st.recent.max(seq.saturating_sub(u64::from(h.retained)));
            // Stage 1 goes on down the sender's tree from here.
            for &c in place.kids() {
                ctx.counters.data_sent += 1;
                ctx.out.push_data(c, &h, false, payload);
            }
        }
        if st.high() > next {
            st.last_active = round;
            st.source = from;
            if from == key.0 {
                st.direct_high = st.direct_high.max(st.high());
            }
            if flow_on {
                st.status_repeats = 0;
                flow_report_if_due(group, me, key, st, ctx);
            }
        }
        let after = st.bytes;
        account(&mut self.bytes, before, after, ctx);
        self.enforce_budget(Some(key), ctx);
        if let Some((h, p)) = refused {
            self.handle_data(from, &h, p, ctx);
            for (h, p) in messages {
                self.handle_data(from, &h, p, ctx);
            }
        }
    }

    /// The repair timer fired: every stream whose gaps were last solicited `rerequest_after`
    /// ago or more solicits them again from the member its newest copy came from (or from
    /// its sender when that member has left the group). Streams with gaps still open lower
    /// `ctx.repair_at` to when they are next due.
    pub fn rerequest_gaps(&mut self, ctx: &mut Ctx<'_>) {
        let mut wants = std::mem::take(&mut self.scratch_request);
        let group = self.id;
        let me = self.my_id;
        for i in 0..self.order.len() {
            let key = self.order[i];
            let flow_on = key.0 != me && ctx.settings.flow_window > 0 && self.view.pos(key.0).is_some();
            if flow_on {
                self.refresh_place(key, true, ctx.settings, ctx.now);
            }
            let Some(st) = self.senders.get_mut(&key) else {
                continue;
            };
            // Flow control: our children's slowness, and our report when due (progress
            // not reported yet, or a repeat).
            if flow_on {
                let wake = st.flow_kids_rule(ctx.settings, ctx.now, ctx.counters);
                *ctx.repair_at = (*ctx.repair_at).min(wake);
                flow_report_if_due(group, me, key, st, ctx);
            }
            if st.missing == 0 {
                continue;
            }
            let due = st.rerequest_due(ctx.settings);
            if ctx.now < due {
                *ctx.repair_at = (*ctx.repair_at).min(due);
                continue;
            }
            // Alternate between the member the stream came from and the last one that
            // showed it holds what we miss; when that is the same member (often the sender,
            // which may be too busy to answer), every other time a member picked by the
            // attempt number instead (pbcast's random gossip partner, without an RNG here).
            let n = self.view.len().max(1);
            let spread = (key.1 as usize)
                .wrapping_add(usize::from(st.rerequests).wrapping_mul(7919))
                .wrapping_add(self.my_id as usize);
            let candidate = match st.rerequests % 2 {
                0 => st.source,
                _ if st.holder != st.source => st.holder,
                _ => self.view.members.get(spread % n).copied().unwrap_or(key.0),
            };
            let to = if candidate != self.my_id && self.view.pos(candidate).is_some() {
                candidate
            } else {
                key.0
            };
            st.last_rescan = ctx.now;
            st.rerequests = st.rerequests.saturating_add(1);
            *ctx.repair_at = (*ctx.repair_at).min(st.rerequest_due(ctx.settings));
            wants.clear();
            let (lo, hi) = (st.contiguous, st.high());
            collect_wants(key, st, lo, hi, ctx, &mut wants);
            if !wants.is_empty() {
                ctx.counters.gap_rerequests_sent += 1;
                self.send_request(to, REQUEST_ROUND_GAP, &wants, ctx);
            }
        }
        self.scratch_request = wants;
    }

    fn send_request(&mut self, to: NodeId, round: u32, entries: &[RequestEntry], ctx: &mut Ctx<'_>) {
        let rh = RequestHeader {
            group: self.id,
            round,
            reserved: 0,
        };
        let per = (ctx.settings.max_datagram.saturating_sub(
            DATAGRAM_HEADER_LEN + MESSAGE_HEADER_LEN + core::mem::size_of::<RequestHeader>(),
        ) / core::mem::size_of::<RequestEntry>())
        .max(1);
        for chunk in entries.chunks(per) {
            ctx.counters.requests_sent += 1;
            let body = core::mem::size_of::<RequestHeader>() + std::mem::size_of_val(chunk);
            ctx.out.push(to, body, |e| e.push_request(&rh, chunk));
        }
    }

    /// Keeps the group within its byte budget: the stream holding most (the one that just
    /// grew, when it holds at least its share) gives up its oldest messages.
    fn enforce_budget(&mut self, hint: Option<StreamKey>, ctx: &mut Ctx<'_>) {
        let budget = ctx.settings.group_budget_bytes;
        if self.bytes <= budget {
            return;
        }
        // Free a little more than the excess, so that a stream at its budget does not
        // evict on every message.
        let excess = self.bytes - budget + budget / 64;
        self.evict(excess, hint, ctx);
    }

    /// Frees about `excess` bytes from the oldest messages of the largest streams.
    pub fn evict(&mut self, mut excess: usize, hint: Option<StreamKey>, ctx: &mut Ctx<'_>) {
        let group = self.id;
        let quiet = self.quiet();
        while excess > 0 && self.bytes > 0 {
            let share = self.bytes / self.senders.len().max(1);
            let victim = match hint.filter(|k| {
                self.senders
                    .get(k)
                    .is_some_and(|s| s.bytes >= share && s.bytes > 0)
            }) {
                Some(k) => k,
                None => match self
                    .order
                    .iter()
                    .max_by_key(|k| self.senders.get(k).map_or(0, |s| s.bytes))
                {
                    Some(&k) => k,
                    None => return,
                },
            };
            let Some(st) = self.senders.get_mut(&victim) else {
                return;
            };
            let before = st.bytes;
            let start = st.base;
            // How far the window must start later to free `excess` (at least one slot).
            // What costs no message goes first: the delivered front (the walk stops at the
            // first gap; the next pass takes another stream, or this one again), then
            // the fragments of messages not yet whole (their seqs stay open and are asked
            // again), and only then the window slides past gaps (reported `Lost`). A gap may
            // be one a relayed copy opened ahead of what the sender has sent (a forged
            // fragment of a huge message costs up to `max_message`): sliding past it would
            // put the real message, when it comes, below our window.
            //
            // Messages already delivered, the common front, leave in this one walk
            // (nothing to report or deliver for them; `slide_window` below does the rest).
            let mut freed = st.pop_delivered_front(excess);
            let mut new_base = st.base;
            for s in &st.slots {
                if freed >= excess || new_base >= st.contiguous {
                    break;
                }
                freed += s.cost();
                new_base += 1;
            }
            if new_base == start {
                let dropped = st.drop_partials(excess);
                if dropped > 0 {
                    ctx.counters.partials_dropped_budget += 1;
                    let after = st.bytes;
                    account(&mut self.bytes, before, after, ctx);
                    excess = excess.saturating_sub(dropped);
                    continue;
                }
                for s in &st.slots {
                    if freed >= excess {
                        break;
                    }
                    freed += s.cost();
                    new_base += 1;
                }
            }
            if new_base == start {
                return;
            }
            ctx.counters.evicted_budget += new_base - start;
            slide_window(group, quiet, victim, st, new_base, ctx);
            let after = st.bytes;
            account(&mut self.bytes, before, after, ctx);
            excess = excess.saturating_sub(before - after);
            if before == after {
                return;
            }
        }
    }

    /// A digest arrived from `from`: solicit what we lack; reply with our own digest when
    /// the gossiper lacks what we hold (push-pull, once per round per peer).
    pub fn handle_digest(
        &mut self,
        from: NodeId,
        header: &DigestHeader,
        entries: impl Iterator<Item = DigestEntry>,
        ctx: &mut Ctx<'_>,
    ) {
        let max_window = ctx.settings.max_window();
        let round = ctx.round;
        let group = self.id;
        let quiet = self.quiet();
        let mut wants = std::mem::take(&mut self.scratch_request);
        wants.clear();
        let mut peer_lacks = false;
        // A stream's sender whose word we want on a high only another member claimed.
        let mut ask_sender: Option<NodeId> = None;
        for e in entries {
            let key = (e.sender, e.stream);
            if key == (self.my_id, self.my_stream) {
                if e.high < self.next_seq || e.contiguous < e.high {
                    peer_lacks = true;
                }
                continue;
            }
            if e.sender == self.my_id {
                continue; // an old stream of ours: nothing to learn
            }
            if e.low > e.high || e.contiguous > e.high || e.contiguous < e.low || e.high > MAX_SEQ {
                ctx.counters.bad_digests += 1;
                continue;
            }
            if !self.can_track(key, ctx) {
                continue;
            }
            let base = self.first_base(key, e.low.min(e.recent), ctx);
            let st = self.state_for(key, base, round);
            let before = st.bytes;
            if from == e.sender {
                // Only the sender's word raises it (a member's own state may start anywhere).
                st.recent = st.recent.max(e.recent.min(e.low));
            }
            if e.high > st.high() {
                st.last_active = round;
            }
            if from == e.sender && e.low > st.contiguous {
                sender_dropped_below(group, quiet, key, st, e.low, ctx);
            }
            if from == e.sender && e.high < st.high() {
                // The sender never sent what lies above its high: a member's copy claiming
                // more was forged. Drop those slots (what was delivered of them stays).
                // Not below what came straight from the sender: its digest may predate it.
                let keep = e.high.max(st.base).max(st.direct_high);
                ctx.counters.phantom_slots_dropped += st.truncate_to(keep);
            }
            if st.contiguous > e.contiguous || st.high() > e.high {
                peer_lacks = true;
            }
            if e.high > st.high() && from == e.sender {
                // Only the sender's own digest moves our high (and may slide our window).
                if e.high.saturating_sub(st.base) > max_window {
                    ctx.counters.window_overflow += 1;
                    slide_window(group, quiet, key, st, e.high - max_window, ctx);
                }
                st.extend_to(e.high, round, max_window);
            } else if e.high > st.high() {
                // Another member's word is only a claim: ask it for what lies past our high
                // (at most a relay's reach, once per `rerequest_after`); the copies it sends
                // back extend the stream. Taking the claim itself would let an insider make
                // us report as `Lost` messages a sender never sent, for good once that
                // sender is gone and cannot answer with its own digest.
                ask_sender = Some(e.sender);
                let high = st.high();
                if wants.len() < ctx.settings.request_cap
                    && (st.tail_asked_at == NEVER
                        || ctx.now.saturating_sub(st.tail_asked_at) >= ctx.settings.rerequest_after)
                {
                    st.tail_asked_at = ctx.now;
                    let count = (e.high - high)
                        .min(relay_reach(ctx.settings))
                        .min(u64::from(u32::MAX));
                    wants.push(RequestEntry {
                        sender: key.0,
                        stream: key.1,
                        first: high,
                        count: count as u32,
                        frag: 0,
                    });
                    ctx.counters.tail_requests += 1;
                }
            }
            if st.missing > 0 && e.contiguous > st.contiguous {
                st.holder = from;
            }
            if st.missing > 0 && wants.len() < ctx.settings.request_cap {
                // Only where the gossiper holds: [max(its low, our contiguous), its high).
                let lo = e.low.max(st.contiguous);
                let hi = e.high.min(st.high());
                collect_wants(key, st, lo, hi, ctx, &mut wants);
            }
            let after = st.bytes;
            account(&mut self.bytes, before, after, ctx);
        }
        if !wants.is_empty() {
            self.send_request(from, header.round, &wants, ctx);
        }
        self.scratch_request = wants;
        if peer_lacks && self.digest_replied.get(&from) != Some(&round) {
            self.digest_replied.insert(from, round);
            self.build_digest(ctx.settings.digest_entries, ctx);
            self.send_digest(from, ctx);
        }
        // Our digest shows the sender the gaps a member's word opened: it answers with its
        // own (push-pull), whose high drops slots it never sent (`truncate_to`).
        if let Some(sender) = ask_sender
            .filter(|s| *s != self.my_id && self.is_member(*s) && self.digest_replied.get(s) != Some(&round))
        {
            self.digest_replied.insert(sender, round);
            self.build_digest(ctx.settings.digest_entries, ctx);
            self.send_digest(sender, ctx);
        }
        self.enforce_budget(None, ctx);
    }

    /// A retransmit request arrived: serve it within this round's budget. Gap requests are
    /// served oldest first (the front of a FIFO stream blocks delivery and is the first to
    /// fall out of the budget), digest answers newest first (Ensemble's choice). The walk
    /// covers only what this member holds of each requested run.
    pub fn handle_request(
        &mut self,
        from: NodeId,
        header: &RequestHeader,
        entries: impl Iterator<Item = RequestEntry>,
        ctx: &mut Ctx<'_>,
    ) {
        let gap = header.round == REQUEST_ROUND_GAP;
        // Stale digest answers (from a round long gone) are ignored: soft failure detection.
        if !gap && ctx.round.wrapping_sub(header.round) > 1 && header.round != ctx.round {
            ctx.counters.stale_requests += 1;
            return;
        }
        // Slots one request datagram may make us examine, whatever its entries claim: a
        // requester asks again for what this one did not reach.
        let mut walk_left = 2 * ctx.settings.request_cap as u64;
        for e in entries {
            let Some(st) = self.senders.get(&(e.sender, e.stream)) else {
                continue;
            };
            let lo = e.first.max(st.base);
            let hi = e.first.saturating_add(u64::from(e.count)).min(st.high());
            if lo >= hi {
                continue;
            }
            if walk_left == 0 {
                ctx.counters.request_walks_capped += 1;
                return;
            }
            let n = (hi - lo).min(walk_left);
            walk_left -= n;
            ctx.counters.request_slots_walked += n;
            for i in 0..n {
                let s = if gap { lo + i } else { hi - 1 - i };
                let Some(Slot::Held {
                    data, session, chunk, ..
                }) = st.slot(s)
                else {
                    continue;
                };
                let payload = st.arena.bytes(*data);
                let chunk = (*chunk as usize).max(1);
                let first_frag = if s == e.first { e.frag as usize } else { 0 };
                let count = payload.len().div_ceil(chunk).max(1);
                let want: usize = (first_frag..count)
                    .map(|f| fragment(payload, chunk, f).len() + RETRANSMIT_OVERHEAD)
                    .sum();
                if want > self.budget_left {
                    ctx.counters.retransmit_budget_exhausted += 1;
                    return;
                }
                if let Some(p) = self.flow.iter_mut().find(|p| p.node == from) {
                    if want > p.repair_left {
                        ctx.counters.retransmit_requester_budget_exhausted += 1;
                        return;
                    }
                    p.repair_left -= want;
                }
                self.budget_left -= want;
                let header = DataHeader {
                    group: self.id,
                    seq: s,
                    sender: e.sender,
                    stream: e.stream,
                    // Our knowledge of the sender's recent low, relative to this seq (the
                    // newest header's `retained` belongs to another seq).
                    retained: s.saturating_sub(st.recent).min(u64::from(u32::MAX)) as u32,
                    session: *session,
                    frag_index: 0,
                    frag_count: 1,
                };
                send_fragments(from, &header, payload, chunk, first_frag, true, ctx);
            }
        }
    }

    /// Build this round's digest (rotating over streams when there are more than fit).
    fn build_digest(&mut self, max: usize, ctx: &Ctx<'_>) {
        self.scratch_digest.clear();
        let n = self.order.len().max(1);
        let start = self.digest_cursor % n;
        let take = self.order.len().min(max);
        let own = (self.my_id, self.my_stream);
        let own_recent = self.own_recent(ctx);
        for i in 0..take {
            let key = self.order[(start + i) % n];
            if let Some(st) = self.senders.get(&key) {
                let recent = if key == own { own_recent } else { st.recent };
                self.scratch_digest.push(DigestEntry {
                    sender: key.0,
                    stream: key.1,
                    low: st.base,
                    contiguous: st.contiguous.max(st.base),
                    high: st.high(),
                    recent: recent.min(st.base),
                });
            }
        }
        self.digest_cursor = (start + take) % n;
        let round = ctx.round;
        self.retired_streams
            .retain(|&(_, _, until)| until.wrapping_sub(round) as i32 > 0);
        for &(stream, next, _) in &self.retired_streams {
            if self.scratch_digest.len() >= max {
                break;
            }
            self.scratch_digest.push(DigestEntry {
                sender: self.my_id,
                stream,
                low: next,
                contiguous: next,
                high: next,
                recent: next,
            });
        }
    }

    fn send_digest(&mut self, to: NodeId, ctx: &mut Ctx<'_>) {
        let header = DigestHeader {
            group: self.id,
            round: ctx.round,
            reserved: 0,
        };
        // Split into messages that each fit one datagram of `max_datagram` bytes.
        let per =
            (ctx.settings.max_datagram.saturating_sub(
                DATAGRAM_HEADER_LEN + MESSAGE_HEADER_LEN + core::mem::size_of::<DigestHeader>(),
            ) / core::mem::size_of::<DigestEntry>())
            .max(1);
        for entries in self.scratch_digest.chunks(per) {
            let body = core::mem::size_of::<DigestHeader>() + std::mem::size_of_val(entries);
            ctx.counters.digests_sent += 1;
            ctx.out.push(to, body, |e| e.push_digest(&header, entries));
        }
    }

    /// Gossip round: reset the retransmit budget, garbage-collect, send digests to
    /// `gossip_fanout` random group members (`targets` picked by the node).
    pub fn round(&mut self, targets: &[NodeId], ctx: &mut Ctx<'_>) {
        self.budget_left = ctx.settings.retransmit_budget_bytes;
        let full = ctx.settings.retransmit_budget_bytes;
        for p in &mut self.flow {
            p.repair_budget = p
                .repair_budget
                .saturating_add(full / REQUESTER_BUDGET_STEP)
                .min(full);
            p.repair_left = p.repair_budget;
        }
        self.gc(ctx);
        self.digest_replied.clear();
        if targets.is_empty() {
            return;
        }
        self.build_digest(ctx.settings.digest_entries, ctx);
        for &t in targets {
            self.send_digest(t, ctx);
        }
    }

    /// Drop messages older than the retention; report gaps that old as `Lost`.
    fn gc(&mut self, ctx: &mut Ctx<'_>) {
        let retention = ctx.settings.retention_rounds;
        let round = ctx.round;
        let group = self.id;
        let quiet = self.quiet();
        let mut dead: Vec<StreamKey> = Vec::new();
        let view = &self.view;
        let member_stream = |n: NodeId| view.stream_of(n);
        for key in &self.order {
            let Some(st) = self.senders.get_mut(key) else {
                continue;
            };
            let before = st.bytes;
            // The front is old: a delivered message kept a retention, or a gap open that long.
            let old = |slot: Option<&Slot>| -> bool {
                match slot {
                    Some(Slot::Held {
                        round: r,
                        delivered: true,
                        ..
                    }) => round.wrapping_sub(*r) >= retention,
                    Some(Slot::Refused {
                        round: r,
                        delivered: true,
                    }) => round.wrapping_sub(*r) >= retention,
                    Some(Slot::Missing { since_round, .. }) => round.wrapping_sub(*since_round) >= retention,
                    Some(Slot::Partial(p)) => round.wrapping_sub(p.since_round) >= retention,
                    _ => false,
                }
            };
            let mut end = st.base;
            while old(st.slot(end)) {
                end += 1;
            }
            if end > st.base {
                slide_window(group, quiet, *key, st, end, ctx);
            }
            let after = st.bytes;
            account(&mut self.bytes, before, after, ctx);
            if st.slots.is_empty()
                && key.0 != self.my_id
                && member_stream(key.0) != Some(key.1)
                && round.wrapping_sub(st.last_active) >= TOMBSTONE_RETENTIONS * retention
            {
                dead.push(*key);
            }
        }
        if !dead.is_empty() {
            for k in &dead {
                // Keep where the stream stood: if it is heard of again (a long partition
                // healed), we resume there instead of at its advertised low.
                if let Some(mut st) = self.senders.remove(k) {
                    debug_assert!(st.slots.is_empty() && st.bytes == 0);
                    ctx.pool.release_all(&mut st.arena);
                    self.add_tombstone(*k, st.next_deliver.max(st.base), ctx);
                }
            }
            self.order.retain(|k| self.senders.contains_key(k));
        }
    }

    /// Forgets everything (the node leaves the group): returns the bytes it held.
    /// Where this member stands in each stream of the group it no longer follows (the
    /// next seq it would deliver), at most `max_tombstones` of them: kept by the node when
    /// it leaves the group so that joining again neither redelivers what it delivered nor
    /// reports it `Lost` (see [`GroupState::resume_from`]).
    pub fn positions(&self, max: usize) -> Vec<(StreamKey, u64)> {
        let mine = |k: &StreamKey| k.0 == self.my_id;
        let mut out: Vec<(StreamKey, u64)> = vec![((self.my_id, self.my_stream), self.next_seq)];
        out.extend(
            self.retired_streams
                .iter()
                .map(|&(stream, next, _)| ((self.my_id, stream), next)),
        );
        out.extend(
            self.order
                .iter()
                .filter(|k| !mine(k))
                .filter_map(|k| self.senders.get(k).map(|st| (*k, st.next_deliver.max(st.base)))),
        );
        out.extend(
            self.view
                .members
                .iter()
                .zip(&self.view.streams)
                .enumerate()
                .filter(|(i, (n, _))| bit(&self.owed, *i) && **n != self.my_id)
                .map(|(_, (n, s))| ((*n, *s), 0)),
        );
        out.extend(
            self.tombstone_order
                .iter()
                .rev()
                .filter(|(k, stamp)| !mine(k) && self.tombstones.get(k).is_some_and(|t| t.1 == *stamp))
                .map(|(k, _)| (*k, self.tombstones[k].0)),
        );
        out.truncate(max);
        out
    }

    /// Install where an earlier membership of this node stood in the group's streams (from
    /// [`GroupState::positions`]), before the first view of the new membership; our own
    /// earlier streams among them are announced as finished (see `retired_streams`).
    pub fn resume_from(&mut self, positions: &[(StreamKey, u64)], ctx: &mut Ctx<'_>) {
        let until = ctx
            .round
            .wrapping_add(TOMBSTONE_RETENTIONS * ctx.settings.retention_rounds);
        for &(key, next) in positions.iter().rev() {
            if key.0 == self.my_id {
                if key.1 != self.my_stream && next > 0 {
                    self.retired_streams.push((key.1, next, until));
                }
            } else if !self.senders.contains_key(&key) {
                self.add_tombstone(key, next, ctx);
            }
        }
    }

    pub fn clear(&mut self, ctx: &mut Ctx<'_>) {
        *ctx.node_bytes -= self.bytes;
        self.bytes = 0;
        for st in self.senders.values_mut() {
            ctx.pool.release_all(&mut st.arena);
        }
        self.senders.clear();
        self.order.clear();
    }

    /// Approximate bytes of state per structure (see `Node::state_parts`): retained
    /// messages, per-member tables, stream states, tombstones.
    pub fn state_parts(&self) -> [(&'static str, usize); 6] {
        use crate::node::map_bytes;
        [
            ("group_retained", std::mem::size_of::<Self>() + self.bytes),
            (
                "group_members",
                self.view.bytes() / Arc::strong_count(&self.view).max(1),
            ),
            ("group_owed", self.owed.capacity() * 8),
            (
                "group_streams",
                map_bytes(&self.senders) + self.order.capacity() * 8 + self.former.capacity() * 8,
            ),
            ("group_digest_replied", map_bytes(&self.digest_replied)),
            (
                "group_tombstones",
                map_bytes(&self.tombstones) + self.tombstone_order.capacity() * 16,
            ),
        ]
    }

    /// Checks the cached counts against the slots (tests and debug builds).
    #[cfg(test)]
    fn check_invariants(&self) {
        let mut total = 0;
        for st in self.senders.values() {
            let bytes: usize = st.slots.iter().map(Slot::cost).sum();
            let missing = st.slots.iter().filter(|s| !s.is_held()).count() as u64;
            assert_eq!(st.bytes, bytes);
            assert_eq!(st.missing, missing);
            assert!(st.next_deliver >= st.base && st.contiguous >= st.base);
            total += bytes;
        }
        assert_eq!(self.bytes, total);
    }
}

/// Whether a fragment's header and length are possible for a message within
/// `max_message` (every fragment but the last has the same size, so a non-last fragment
/// tells the whole message's size to within one fragment).
fn fragment_fits(h: &DataHeader, len: usize, s: &Settings) -> bool {
    // A fragment we could not send on in one of our datagrams (a peer with a larger
    // `max_datagram`, or a forged one) is refused rather than forwarded oversize.
    if len > s.fragment_payload() {
        return false;
    }
    let count = usize::from(h.frag_count);
    if count == 1 {
        return len <= s.max_message;
    }
    let last = h.frag_index + 1 == h.frag_count;
    if last {
        return len <= s.max_message / (count - 1).max(1);
    }
    len > 0 && len.checked_mul(count - 1).is_some_and(|b| b < s.max_message)
}

/// Fragment `i` of `payload` sent in fragments of `chunk` bytes.
fn fragment(payload: &[u8], chunk: usize, i: usize) -> &[u8] {
    let start = (i * chunk).min(payload.len());
    let end = (start + chunk).min(payload.len());
    payload.get(start..end).unwrap_or(&[])
}

/// Flow control: reports our subtree's consumption of stream `key` to our parent in its
/// tree when due, and sets the repair timer for the next report.
fn flow_report_if_due(group: GroupId, me: NodeId, key: StreamKey, st: &mut SenderState, ctx: &mut Ctx<'_>) {
    let Some(parent) = st.parent else {
        return; // not in the stream's tree (yet)
    };
    let Some(due) = st.status_due(me, ctx.settings, ctx.now) else {
        return;
    };
    if due > ctx.now {
        *ctx.repair_at = (*ctx.repair_at).min(due);
        return;
    }
    let own = ctx.settings.flow_window.max(1);
    let (consumed, holder, window, members) = st.flow_aggregate(me, own);
    if consumed == st.status_pos {
        st.status_repeats = st.status_repeats.saturating_add(1);
    }
    let status = FlowStatus {
        group,
        sender: key.0,
        stream: key.1,
        consumed,
        window: window.clamp(1, u64::from(u32::MAX)) as u32,
        gaps: st.gaps,
        holder,
        members,
    };
    st.status_pos = consumed;
    st.status_at = ctx.now;
    ctx.counters.flow_statuses_sent += 1;
    ctx.out
        .push(parent, FLOW_STATUS_LEN, |e| e.push_flow_status(&status));
    if let Some(due) = st.status_due(me, ctx.settings, ctx.now) {
        *ctx.repair_at = (*ctx.repair_at).min(due.max(ctx.now + 1));
    }
}

/// Sends fragments `first..` of a message (all of it when it fits one datagram).
fn send_fragments(
    to: NodeId,
    header: &DataHeader,
    payload: &[u8],
    chunk: usize,
    first: usize,
    retransmit: bool,
    ctx: &mut Ctx<'_>,
) {
    // Most messages fit one fragment: no division for those (it was ~2% of a sending shard).
    let count = if payload.len() <= chunk {
        1
    } else {
        payload.len().div_ceil(chunk.max(1))
    };
    let mut h = *header;
    h.frag_count = count as u16;
    for i in first..count {
        h.frag_index = i as u16;
        let part = if count == 1 {
            payload
        } else {
            fragment(payload, chunk, i)
        };
        if retransmit {
            ctx.counters.retransmits_sent += 1;
        } else {
            ctx.counters.data_sent += 1;
        }
        ctx.out.push_data(to, &h, retransmit, part);
    }
}

/// Stores one arriving fragment in its slot. Returns (stored something new, the message
/// became complete, forward this copy down the tree).
///
/// A fragment that disagrees with a partly received message restarts the slot when it
/// comes from the sender itself or is a whole message (`from_sender`, `frag_count == 1`):
/// the partial may be a member's forgery, and keeping it would refuse the real message at
/// every copy. (A whole message in its place is no more than a member can forge anyway.)
fn store_fragment(
    slot: &mut Slot,
    arena: &mut Arena,
    h: &DataHeader,
    payload: &[u8],
    round: u32,
    from_sender: bool,
    ctx: &mut Ctx<'_>,
) -> (bool, bool, bool) {
    let count = h.frag_count;
    if let Slot::Partial(p) = slot {
        let disagrees = p.count() != count || p.session != h.session;
        if disagrees && (from_sender || count == 1) {
            ctx.counters.bad_fragments += 1;
            *slot = Slot::Missing {
                since_round: p.since_round,
                requested_at: p.requested_at,
            };
        }
    }
    match slot {
        Slot::Missing {
            since_round,
            requested_at,
        } => {
            // Stage 1 goes on from wherever a message first arrives, a repair included:
            // this member's children in the sender's tree could only have had it through
            // us. (Not forwarding repairs left whole subtrees to time out under budget
            // pressure, found by the simulator.)
            if count == 1 {
                *slot = Slot::Held {
                    data: ctx.pool.store(arena, payload, h.seq, round),
                    session: h.session,
                    chunk: payload.len() as u32,
                    round,
                    delivered: false,
                };
                return (true, true, true);
            }
            let mut frags = vec![None; usize::from(count)];
            frags[usize::from(h.frag_index)] = Some(Box::<[u8]>::from(payload));
            let last = h.frag_index + 1 == count;
            *slot = Slot::Partial(Box::new(Partial {
                since_round: *since_round,
                requested_at: (*requested_at).min(ctx.now),
                session: h.session,
                have: 1,
                chunk: if last { 0 } else { payload.len() as u32 },
                bytes: payload.len(),
                frags,
            }));
            (true, false, true)
        }
        Slot::Partial(p) => {
            let i = usize::from(h.frag_index);
            let last = h.frag_index + 1 == count;
            let consistent = p.count() == count
                && p.session == h.session
                && (last || p.chunk == 0 || p.chunk as usize == payload.len())
                && p.bytes + payload.len() <= ctx.settings.max_message;
            if !consistent {
                ctx.counters.bad_fragments += 1;
                return (false, false, false);
            }
            if p.frags[i].is_some() {
                ctx.counters.duplicates += 1;
                return (false, false, false);
            }
            if !last {
                p.chunk = payload.len() as u32;
            }
            p.frags[i] = Some(Box::from(payload));
            p.have += 1;
            p.bytes += payload.len();
            if p.have < p.count() {
                return (true, false, true);
            }
            // Complete: every non-last fragment must have the chunk size.
            let chunk = p.chunk as usize;
            let ok = p
                .frags
                .iter()
                .take(usize::from(count) - 1)
                .all(|f| f.as_ref().is_some_and(|f| f.len() == chunk))
                && p.frags
                    .last()
                    .and_then(|f| f.as_ref())
                    .is_some_and(|f| f.len() <= chunk);
            if !ok {
                ctx.counters.bad_fragments += 1;
                *slot = Slot::Missing {
                    since_round: p.since_round,
                    requested_at: NEVER,
                };
                return (true, false, false);
            }
            let mut whole = Vec::with_capacity(p.bytes);
            for f in p.frags.iter().flatten() {
                whole.extend_from_slice(f);
            }
            let session = p.session;
            *slot = Slot::Held {
                data: ctx.pool.store(arena, &whole, h.seq, round),
                session,
                chunk: chunk as u32,
                round,
                delivered: false,
            };
            (true, true, true)
        }
        Slot::Refused { .. } | Slot::Held { .. } => {
            ctx.counters.duplicates += 1;
            (false, false, false)
        }
    }
}

/// Appends requests for what `key` misses in `[lo, hi)` and was not requested within
/// `rerequest_after`, oldest first, up to `request_cap` entries in all.
fn collect_wants(
    key: StreamKey,
    st: &mut SenderState,
    lo: u64,
    hi: u64,
    ctx: &mut Ctx<'_>,
    wants: &mut Vec<RequestEntry>,
) {
    let now = ctx.now;
    let wait = ctx.settings.rerequest_after;
    let cap = ctx.settings.request_cap;
    let due = |at: &mut Time| {
        if *at == NEVER || now.saturating_sub(*at) >= wait {
            *at = now;
            true
        } else {
            false
        }
    };
    let mut s = lo.max(st.base);
    let mut run: Option<(u64, u32)> = None;
    let flush = |run: &mut Option<(u64, u32)>, wants: &mut Vec<RequestEntry>| {
        if let Some((first, count)) = run.take() {
            wants.push(RequestEntry {
                sender: key.0,
                stream: key.1,
                first,
                count,
                frag: 0,
            });
        }
    };
    while s < hi && wants.len() < cap {
        match st.slot_mut(s) {
            Some(Slot::Missing { requested_at, .. }) => {
                if due(requested_at) {
                    run = match run {
                        Some((f, c)) if f + u64::from(c) == s && c < u32::MAX => Some((f, c + 1)),
                        other => {
                            let mut o = other;
                            flush(&mut o, wants);
                            Some((s, 1))
                        }
                    };
                }
            }
            Some(Slot::Partial(p)) => {
                if due(&mut p.requested_at) {
                    flush(&mut run, wants);
                    wants.push(RequestEntry {
                        sender: key.0,
                        stream: key.1,
                        first: s,
                        count: 1,
                        frag: u32::from(p.first_missing()),
                    });
                }
            }
            Some(Slot::Held { .. } | Slot::Refused { .. }) => flush(&mut run, wants),
            None => break,
        }
        s += 1;
    }
    flush(&mut run, wants);
}

/// Tells the application, once, that `count` messages of `key` from `first` are lost.
fn report_lost(group: GroupId, quiet: bool, key: StreamKey, first: u64, count: u64, ctx: &mut Ctx<'_>) {
    if count == 0 {
        return;
    }
    ctx.counters.lost_reported = ctx.counters.lost_reported.saturating_add(count);
    ctx.emit(
        quiet,
        Event::Lost {
            group,
            sender: key.0,
            stream: key.1,
            first,
            count,
        },
    );
}

/// Moves the window's start to `new_base`: gaps below it are reported `Lost` once, held
/// messages not yet delivered are delivered (in order), delivered ones dropped; then
/// whatever waited behind is delivered.
fn slide_window(
    group: GroupId,
    quiet: bool,
    key: StreamKey,
    st: &mut SenderState,
    new_base: u64,
    ctx: &mut Ctx<'_>,
) {
    let mut lost_first = 0;
    let mut lost_count = 0u64;
    while st.base < new_base {
        let seq = st.base;
        match st.pop_front() {
            Some(Slot::Missing { .. } | Slot::Partial(_) | Slot::Refused { delivered: false, .. }) => {
                if lost_count == 0 {
                    lost_first = seq;
                }
                lost_count += 1;
            }
            Some(Slot::Refused { delivered: true, .. }) => {
                report_lost(group, quiet, key, lost_first, lost_count, ctx);
                lost_count = 0;
            }
            Some(Slot::Held {
                data,
                session,
                delivered,
                ..
            }) => {
                report_lost(group, quiet, key, lost_first, lost_count, ctx);
                lost_count = 0;
                if !delivered {
                    ctx.counters.delivered += 1;
                    ctx.deliver(quiet, group, key, seq, session, &st.arena, data);
                }
            }
            None => {
                // Seqs never seen at all.
                if lost_count == 0 {
                    lost_first = seq;
                }
                lost_count += new_base - seq;
                st.base = new_base;
                break;
            }
        }
    }
    report_lost(group, quiet, key, lost_first, lost_count, ctx);
    ctx.pool.release(&mut st.arena, st.base);
    st.next_deliver = st.next_deliver.max(st.base);
    st.contiguous = st.contiguous.max(st.base);
    st.advance_contiguous();
    if ctx.settings.delivery == Delivery::Fifo {
        let s = st.next_deliver;
        deliver_ready(group, quiet, key, st, s, ctx);
    }
}

/// Deliver what can be delivered after `seq` became whole (FIFO: in order from the cursor).
fn deliver_ready(
    group: GroupId,
    quiet: bool,
    key: StreamKey,
    st: &mut SenderState,
    seq: u64,
    ctx: &mut Ctx<'_>,
) {
    let deliver = |s: u64, (slot, arena): (Option<&mut Slot>, &mut Arena), ctx: &mut Ctx<'_>| {
        if let Some(Slot::Refused { delivered, .. }) = slot {
            let was = *delivered;
            *delivered = true;
            if !was {
                report_lost(group, quiet, key, s, 1, ctx);
            }
            return Some(was);
        }
        let Some(Slot::Held {
            data,
            session,
            delivered,
            ..
        }) = slot
        else {
            return None;
        };
        let was = *delivered;
        *delivered = true;
        if !was {
            ctx.counters.delivered += 1;
            ctx.deliver(quiet, group, key, s, *session, arena, *data);
        }
        Some(was)
    };
    match ctx.settings.delivery {
        Delivery::Unordered => {
            deliver(seq, st.slot_and_arena(seq), ctx);
            st.next_deliver = st.contiguous.max(st.next_deliver);
        }
        Delivery::Fifo => loop {
            let s = st.next_deliver;
            if deliver(s, st.slot_and_arena(s), ctx).is_none() {
                break;
            }
            st.next_deliver += 1;
        },
    }
}

/// The sender's own digest says it no longer holds seqs below `low`: what we still miss
/// at the front of our window below it can only come from a member that got it late, so
/// it is reported `Lost` now rather than after a full retention (and a stream far behind,
/// beyond the window, catches up at once instead of a window per retention). Held
/// messages are kept (others may still need them); gaps behind one are aged so that
/// garbage collection reports them within `LOW_GRACE_ROUNDS`.
fn sender_dropped_below(
    group: GroupId,
    quiet: bool,
    key: StreamKey,
    st: &mut SenderState,
    low: u64,
    ctx: &mut Ctx<'_>,
) {
    let mut end = st.base;
    while end < low && st.slot(end).is_some_and(|s| !s.is_held()) {
        end += 1;
    }
    if st.slot(end).is_none() && end < low {
        end = low; // beyond our window: never seen
    }
    if end > st.base {
        slide_window(group, quiet, key, st, end, ctx);
    }
    let retention = ctx.settings.retention_rounds;
    let grace = retention.saturating_sub(LOW_GRACE_ROUNDS);
    let aged = ctx.round.wrapping_sub(grace);
    let mut s = st.base;
    while s < low {
        match st.slot_mut(s) {
            Some(Slot::Missing { since_round, .. }) if ctx.round.wrapping_sub(*since_round) < grace => {
                *since_round = aged;
            }
            Some(Slot::Partial(p)) if ctx.round.wrapping_sub(p.since_round) < grace => {
                p.since_round = aged;
            }
            None => break,
            _ => {}
        }
        s += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct World {
        settings: Settings,
        out: Outbox,
        pool: PayloadPool,
        events: VecDeque<Event>,
        counters: Counters,
        node_bytes: usize,
        repair_at: Time,
        now: Time,
    }

    impl World {
        fn new(settings: Settings) -> Self {
            World {
                out: Outbox::new(0, 1, settings.max_datagram, 1 << 20),
                pool: PayloadPool::default(),
                settings,
                events: VecDeque::new(),
                counters: Counters::default(),
                node_bytes: 0,
                repair_at: NEVER,
                now: 0,
            }
        }
        fn with<R>(&mut self, round: u32, f: impl FnOnce(&mut Ctx<'_>) -> R) -> R {
            let live = |_: NodeId| true;
            let mut ctx = Ctx {
                settings: &self.settings,
                now: self.now,
                round,
                out: &mut self.out,
                pool: &mut self.pool,
                events: &mut self.events,
                sink: None,
                counters: &mut self.counters,
                live: &live,
                node_bytes: &mut self.node_bytes,
                repair_at: &mut self.repair_at,
            };
            f(&mut ctx)
        }
        fn lost(&mut self) -> Vec<(NodeId, u64, u64)> {
            self.events
                .drain(..)
                .filter_map(|e| match e {
                    Event::Lost {
                        sender, first, count, ..
                    } => Some((sender, first, count)),
                    _ => None,
                })
                .collect()
        }
        fn delivered(&mut self) -> Vec<(u64, Vec<u8>)> {
            self.events
                .drain(..)
                .filter_map(|e| match e {
                    Event::Deliver { seq, payload, .. } => Some((seq, payload.to_vec())),
                    _ => None,
                })
                .collect()
        }
        /// The data messages sent so far, decoded.
        fn sent_data(&mut self) -> Vec<(NodeId, DataHeader, bool, Vec<u8>)> {
            let mut v = Vec::new();
            while let Some((dest, bytes)) = self.out.pop() {
                let d = tutti_wire::packet::decode(bytes).unwrap();
                for m in d.messages() {
                    match m {
                        tutti_wire::packet::Message::Data {
                            header,
                            retransmit,
                            payload,
                        } => v.push((dest, header, retransmit, payload.to_vec())),
                        tutti_wire::packet::Message::DataRun { retransmit, messages } => {
                            for (header, payload) in messages.iter() {
                                v.push((dest, header, retransmit, payload.to_vec()));
                            }
                        }
                        _ => {}
                    }
                }
            }
            v
        }
    }

    fn set(g: &mut GroupState, w: &mut World, round: u32, nodes: &[NodeId]) {
        let streams: Vec<u32> = nodes.iter().map(|_| 1).collect();
        w.with(round, |ctx| g.set_members(nodes, &streams, ctx));
    }

    fn digest(g: &mut GroupState, w: &mut World, from: NodeId, sender: NodeId, low: u64, high: u64) {
        let header = DigestHeader {
            group: 7,
            round: 1,
            reserved: 0,
        };
        let e = DigestEntry {
            sender,
            stream: 1,
            low,
            contiguous: high,
            high,
            recent: low,
        };
        w.with(1, |ctx| g.handle_digest(from, &header, std::iter::once(e), ctx));
    }

    fn data(seq: u64, sender: NodeId) -> DataHeader {
        DataHeader {
            group: 7,
            seq,
            sender,
            stream: 1,
            retained: 0,
            session: 5,
            frag_index: 0,
            frag_count: 1,
        }
    }

    /// One step of a stream's traffic as a receiver sees it (`run_equivalence`).
    #[derive(Debug, Clone)]
    enum RunOp {
        /// The next `len` new messages, from the sender (or relayed by member 1).
        New { len: u8, relayed: bool, big: u8 },
        /// The sender's next `len` messages lost on the way.
        Skip { len: u8 },
        /// `len` messages from `back` seqs behind the newest again (a repair or a duplicate).
        Again { back: u8, len: u8 },
    }

    fn run_op() -> impl proptest::strategy::Strategy<Value = RunOp> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (1u8..24, any::<bool>(), any::<u8>()).prop_map(|(len, relayed, big)| RunOp::New { len, relayed, big }),
            1 => (1u8..12).prop_map(|len| RunOp::Skip { len }),
            2 => (0u8..40, 1u8..24).prop_map(|(back, len)| RunOp::Again { back, len }),
        ]
    }

    /// The datagram a node sends for messages `seqs` of stream (2, 1), as a run;
    /// message `big` (when in range) larger than the receivers' `max_message`.
    fn run_datagram(from: NodeId, seqs: std::ops::Range<u64>, big: u8) -> Vec<u8> {
        let mut buf = vec![0u8; 1 << 16];
        let mut e = tutti_wire::packet::Encoder::new(&mut buf, from, 1).unwrap();
        for (i, seq) in seqs.enumerate() {
            let mut h = data(seq, 2);
            h.retained = seq.min(3) as u32;
            let len = if i == usize::from(big) {
                150
            } else {
                8 + (seq % 5) as usize
            };
            let payload: Vec<u8> = (0..len).map(|b| (seq as u8).wrapping_add(b as u8)).collect();
            e.push_data(&h, false, &payload).unwrap();
        }
        let n = e.len();
        buf.truncate(n);
        buf
    }

    /// Everything a receiver did, to compare: its events, its counters, what it sent.
    type Trace = (
        Vec<Event>,
        Counters,
        Vec<(NodeId, DataHeader, bool, Vec<u8>)>,
        usize,
    );

    /// Feeds the same datagrams to a receiver that takes runs at once (`handle_run`) or
    /// message by message (`handle_data`, the reference).
    fn receive(ops: &[RunOp], settings: &Settings, together: bool) -> Trace {
        let mut w = World::new(settings.clone());
        let mut g = GroupState::new(7, 3, 1);
        set(&mut g, &mut w, 1, &[1, 2, 3, 4, 5]);
        let mut next = 0u64;
        let mut trace = Vec::new();
        let mut sent = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            w.now = i as Time * 1_000;
            let (from, seqs, big) = match *op {
                RunOp::New { len, relayed, big } => {
                    let seqs = next..next + u64::from(len);
                    next += u64::from(len);
                    (if relayed { 1 } else { 2 }, seqs, big % 64)
                }
                RunOp::Skip { len } => {
                    next += u64::from(len);
                    continue;
                }
                RunOp::Again { back, len } => {
                    let first = next.saturating_sub(u64::from(back));
                    (2, first..(first + u64::from(len)).min(next.max(1)), 255)
                }
            };
            if seqs.is_empty() {
                continue;
            }
            let bytes = run_datagram(from, seqs, big);
            let d = tutti_wire::packet::decode(&bytes).unwrap();
            for m in d.messages() {
                let tutti_wire::packet::Message::DataRun { messages, .. } = m else {
                    panic!("a run of whole messages");
                };
                w.with(1, |ctx| {
                    if together {
                        g.handle_run(from, &messages, ctx);
                    } else {
                        for (h, p) in messages.iter() {
                            g.handle_data(from, &h, p, ctx);
                        }
                    }
                });
            }
            trace.extend(w.events.drain(..));
            sent.extend(w.sent_data());
        }
        g.check_invariants();
        (trace, w.counters.clone(), sent, g.bytes())
    }

    /// Each seq below the stream's end is delivered or reported lost exactly once, in
    /// order, whatever the path.
    fn delivered_or_lost_once(events: &[Event]) -> Vec<(u64, bool)> {
        let mut seen = Vec::new();
        for e in events {
            match e {
                Event::Deliver { seq, .. } => seen.push((*seq, true)),
                Event::Lost { first, count, .. } => seen.extend((*first..first + count).map(|s| (s, false))),
                _ => {}
            }
        }
        let mut seqs: Vec<u64> = seen.iter().map(|s| s.0).collect();
        seqs.dedup();
        assert_eq!(seqs.len(), seen.len(), "a seq delivered or lost twice: {seen:?}");
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "FIFO: {seqs:?}");
        seen
    }

    proptest::proptest! {
        /// A run received at once does exactly what its messages received one by one do:
        /// the same deliveries and `Lost` reports in the same order, the same counters,
        /// the same copies forwarded down the tree, the same bytes retained; under a
        /// small budget (evicting while runs arrive), still each seq delivered or lost
        /// once, in order, and the same ones delivered.
        #[test]
        fn a_run_at_once_is_its_messages_one_by_one(
            ops in proptest::collection::vec(run_op(), 1..40),
            small_budget in proptest::bool::ANY,
        ) {
            let settings = Settings {
                tree_fanout: 2,
                max_message: 100,
                flow_window: 0,
                group_budget_bytes: if small_budget { 40 * SLOT_OVERHEAD } else { 1 << 20 },
                ..Settings::default()
            };
            let reference = receive(&ops, &settings, false);
            let at_once = receive(&ops, &settings, true);
            let a = delivered_or_lost_once(&reference.0);
            let b = delivered_or_lost_once(&at_once.0);
            if small_budget {
                let delivered = |v: &[(u64, bool)]| v.iter().filter(|s| s.1).count();
                proptest::prop_assert_eq!(delivered(&a), delivered(&b));
                proptest::prop_assert_eq!(reference.1.delivered, at_once.1.delivered);
            } else {
                proptest::prop_assert_eq!(&reference.0, &at_once.0);
                proptest::prop_assert_eq!(&reference.1, &at_once.1);
                proptest::prop_assert_eq!(&reference.2, &at_once.2);
                proptest::prop_assert_eq!(reference.3, at_once.3);
            }
        }
    }

    /// Streams that appear in the group after us owe us every message from seq 0: a sender
    /// first heard of with nothing retained below 10 has its 10 messages reported lost (at
    /// once, from its own digest), not skipped. While their members are in the view the
    /// expectation is a bit per member (no bound needed beyond the view); once a member
    /// leaves the view it becomes a tombstone, bounded by `max_tombstones`.
    #[test]
    fn a_stream_appearing_after_us_owes_every_message() {
        let mut w = World::new(Settings {
            max_tombstones: 2,
            ..Settings::default()
        });
        let mut g = GroupState::new(7, 0, 1);
        set(&mut g, &mut w, 1, &[0]);
        set(&mut g, &mut w, 1, &[0, 1, 2, 3, 4]);
        assert_eq!(w.counters.tombstones_evicted, 0);
        assert_eq!(g.tombstones.len(), 0);
        assert_eq!(g.stream_count(), 4, "four streams owed from the start");
        // Sender 3 says its history starts at 10: 0..10 lost.
        digest(&mut g, &mut w, 3, 3, 10, 10);
        assert_eq!(w.lost(), vec![(3, 0, 10)]);
        assert_eq!(w.counters.lost_reported, 10);
        // 1, 2 and 4 leave the view: their expectations become tombstones, and the
        // oldest is evicted beyond `max_tombstones`.
        set(&mut g, &mut w, 2, &[0, 3]);
        assert_eq!(g.tombstones.len(), 2);
        assert_eq!(w.counters.tombstones_evicted, 1);
        // Sender 4's expectation is still held (at 0): its history from 10 is lost.
        digest(&mut g, &mut w, 4, 4, 10, 10);
        assert_eq!(w.lost(), vec![(4, 0, 10)]);
        // Sender 1's was evicted: it resumes at its advertised low.
        digest(&mut g, &mut w, 1, 1, 10, 10);
        assert_eq!(w.lost(), vec![]);
        g.check_invariants();
    }

    #[test]
    fn a_new_stream_of_the_same_node_is_delivered_from_zero() {
        let mut w = World::new(Settings::default());
        let mut g = GroupState::new(7, 0, 1);
        set(&mut g, &mut w, 1, &[0, 1]);
        for seq in 0..100 {
            w.with(1, |ctx| g.handle_data(1, &data(seq, 1), b"old", ctx));
        }
        assert_eq!(w.delivered().len(), 100);
        // Node 1 leaves, then joins again with stream 2.
        w.with(2, |ctx| g.set_members(&[0], &[1], ctx));
        w.with(3, |ctx| g.set_members(&[0, 1], &[1, 2], ctx));
        for seq in 0..100 {
            let mut h = data(seq, 1);
            h.stream = 2;
            w.with(3, |ctx| g.handle_data(1, &h, b"new", ctx));
        }
        let got = w.delivered();
        assert_eq!(got.len(), 100);
        assert!(got.iter().all(|(_, p)| p == b"new"));
        g.check_invariants();
    }

    /// A member that joins a group after a sender starts at the sender's advertised history.
    #[test]
    fn joining_later_starts_at_the_senders_low() {
        let mut w = World::new(Settings::default());
        let mut g = GroupState::new(7, 0, 1);
        set(&mut g, &mut w, 1, &[0, 1]);
        digest(&mut g, &mut w, 1, 1, 10, 10);
        assert_eq!(w.lost(), vec![]);
        assert_eq!(g.senders[&(1, 1)].base, 10);
    }

    /// A stream first heard of more than a retention after we joined may have dropped
    /// messages it sent since we joined: we start at 0 (reported `Lost`), not at its low.
    #[test]
    fn a_stream_first_heard_of_long_after_we_joined_starts_at_zero() {
        let mut w = World::new(Settings::default());
        let mut g = GroupState::new(7, 0, 1);
        set(&mut g, &mut w, 1, &[0, 1]);
        let late = 2 + w.settings.retention_rounds;
        let header = DigestHeader {
            group: 7,
            round: late,
            reserved: 0,
        };
        let e = DigestEntry {
            sender: 1,
            stream: 1,
            low: 10,
            contiguous: 10,
            high: 10,
            recent: 10,
        };
        w.with(late, |ctx| g.handle_digest(1, &header, std::iter::once(e), ctx));
        assert_eq!(w.lost(), vec![(1, 0, 10)]);
    }

    /// A forgotten stream leaves a tombstone: heard of again, it resumes where it stood.
    #[test]
    fn a_senders_digest_older_than_its_data_drops_nothing_it_sent() {
        // Found at 20% loss in `tutti-bench cluster`: the sender's digest, built before
        // data that overtook it, dropped held messages above its high as if forged, and
        // repairing them again cost 0.7% of messages. Only slots no copy straight from
        // the sender vouches for may be dropped.
        let mut w = World::new(Settings::default());
        let mut g = GroupState::new(7, 0, 1);
        set(&mut g, &mut w, 1, &[0, 1, 2]);
        w.with(1, |ctx| g.handle_data(1, &data(0, 1), b"a", ctx));
        w.with(1, |ctx| g.handle_data(1, &data(2, 1), b"c", ctx)); // held: 1 is missing
        digest(&mut g, &mut w, 1, 1, 0, 1); // built when the sender had sent seq 0 only
        assert_eq!(w.counters.phantom_slots_dropped, 0);
        assert_eq!(g.senders.get(&(1, 1)).map(SenderState::high), Some(3));
        w.with(1, |ctx| g.handle_data(1, &data(1, 1), b"b", ctx));
        assert_eq!(w.delivered().len(), 3);
        g.check_invariants();
    }

    #[test]
    fn a_member_cannot_move_a_forgotten_stream_far_ahead() {
        // Found by the node_packets fuzz target: the bound on how far a member other than
        // the sender may extend a stream applied to live state only, so data relayed for a
        // forgotten stream (a tombstone) slid it to any seq and reported all of it Lost.
        let mut w = World::new(Settings::default());
        let mut g = GroupState::new(7, 0, 1);
        set(&mut g, &mut w, 1, &[0, 1, 2]);
        w.with(1, |ctx| g.handle_data(1, &data(0, 1), b"m", ctx));
        set(&mut g, &mut w, 2, &[0, 2]);
        let retention = w.settings.retention_rounds;
        for r in 2..(2 + (TOMBSTONE_RETENTIONS + 2) * retention) {
            w.with(r, |ctx| g.round(&[], ctx));
        }
        assert_eq!(g.tombstones.get(&(1, 1)).map(|t| t.0), Some(1));
        w.events.clear();
        let far = 1 + relay_reach(&w.settings) + 10;
        w.with(100, |ctx| g.handle_data(2, &data(far, 1), b"x", ctx));
        assert_eq!(w.counters.implausible_seqs, 1);
        assert!(w.lost().is_empty());
        assert!(!g.senders.contains_key(&(1, 1)));
        // The sender itself may (a long cut-off): the gap is then repaired or reported Lost.
        w.with(100, |ctx| g.handle_data(1, &data(far, 1), b"y", ctx));
        assert_eq!(g.senders.get(&(1, 1)).map(SenderState::high), Some(far + 1));
    }

    #[test]
    fn a_forgotten_stream_resumes_from_its_tombstone() {
        let mut w = World::new(Settings::default());
        let mut g = GroupState::new(7, 0, 1);
        set(&mut g, &mut w, 1, &[0, 1]);
        w.with(1, |ctx| g.handle_data(1, &data(0, 1), b"m", ctx));
        // Node 1 leaves our view; its state is collected, then forgotten.
        set(&mut g, &mut w, 2, &[0]);
        let retention = w.settings.retention_rounds;
        for r in 2..(2 + (TOMBSTONE_RETENTIONS + 2) * retention) {
            w.with(r, |ctx| g.round(&[], ctx));
        }
        assert!(g.senders.is_empty());
        assert_eq!(g.bytes, 0);
        assert_eq!(w.node_bytes, 0);
        assert_eq!(g.tombstones.get(&(1, 1)).map(|t| t.0), Some(1));
        w.events.clear();
        // Back after a long cut, with its history now starting at 50.
        set(&mut g, &mut w, 200, &[0, 1]);
        digest(&mut g, &mut w, 1, 1, 50, 50);
        assert_eq!(w.lost(), vec![(1, 1, 49)]);
    }

    /// A gap is solicited at once from the member the stream came from, and again only
    /// after `rerequest_after`.
    #[test]
    fn a_gap_is_requested_at_once_from_the_forwarder() {
        let mut w = World::new(Settings::default());
        let mut g = GroupState::new(7, 0, 1);
        set(&mut g, &mut w, 1, &[0, 1, 2]);
        w.with(1, |ctx| g.handle_data(2, &data(0, 1), b"a", ctx));
        w.with(1, |ctx| g.handle_data(2, &data(3, 1), b"d", ctx));
        assert_eq!(w.counters.gap_requests_sent, 1);
        let (dest, bytes) = w.out.pop().expect("a request");
        assert_eq!(dest, 2);
        let d = tutti_wire::packet::decode(bytes).unwrap();
        let reqs: Vec<RequestEntry> = d
            .messages()
            .flat_map(|m| match m {
                tutti_wire::packet::Message::Request { header, entries } => {
                    assert_eq!(header.round, REQUEST_ROUND_GAP);
                    entries.iter().collect::<Vec<_>>()
                }
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(reqs.len(), 1);
        assert_eq!((reqs[0].first, reqs[0].count), (1, 2));
        // Not again when the next copy arrives; again on the repair timer.
        w.with(1, |ctx| g.handle_data(2, &data(4, 1), b"e", ctx));
        assert_eq!(w.counters.gap_requests_sent, 1);
        while w.out.pop().is_some() {}
        w.now += w.settings.rerequest_after;
        w.with(1, |ctx| g.rerequest_gaps(ctx));
        assert_eq!(w.counters.gap_rerequests_sent, 1);
        assert!(w.out.pop().is_some());
        g.check_invariants();
    }

    /// A gap whose first request went unanswered is solicited again on the repair timer,
    /// with no further copy of the stream arriving: from the forwarder, then from the last
    /// member whose digest showed it holds the gap; after `REREQUESTS_BEFORE_BACKOFF`
    /// attempts the interval doubles.
    #[test]
    fn the_repair_timer_solicits_a_gap_again_without_new_data() {
        // Flow control off: its statuses to the sender would share the repair timer.
        let mut w = World::new(Settings {
            flow_window: 0,
            ..Settings::default()
        });
        let mut g = GroupState::new(7, 0, 1);
        set(&mut g, &mut w, 1, &[0, 1, 2, 3]);
        w.with(1, |ctx| g.handle_data(2, &data(0, 1), b"a", ctx));
        w.with(1, |ctx| g.handle_data(2, &data(2, 1), b"c", ctx));
        assert_eq!(w.counters.gap_requests_sent, 1);
        while w.out.pop().is_some() {}
        let wait = w.settings.rerequest_after;
        assert_eq!(
            w.repair_at, wait,
            "the timer is armed for rerequest_after from now"
        );
        // Member 3's digest shows it holds seq 1.
        let header = DigestHeader {
            group: 7,
            round: 1,
            reserved: 0,
        };
        let e = DigestEntry {
            sender: 1,
            stream: 1,
            low: 0,
            contiguous: 3,
            high: 3,
            recent: 0,
        };
        w.with(1, |ctx| g.handle_digest(3, &header, std::iter::once(e), ctx));
        while w.out.pop().is_some() {}
        let mut dests = Vec::new();
        let mut times = Vec::new();
        for _ in 0..12 {
            w.now = w.repair_at;
            w.repair_at = NEVER;
            times.push(w.now);
            w.with(1, |ctx| g.rerequest_gaps(ctx));
            let (dest, _) = w.out.pop().expect("a request on each firing");
            dests.push(dest);
            assert!(w.out.pop().is_none());
        }
        assert_eq!(&dests[..4], &[2, 3, 2, 3], "forwarder and holder in turn");
        let gaps: Vec<Time> = times.windows(2).map(|p| p[1] - p[0]).collect();
        assert!(
            gaps[..usize::from(REREQUESTS_BEFORE_BACKOFF) - 1]
                .iter()
                .all(|g| *g == wait),
            "{gaps:?}"
        );
        assert_eq!(gaps[gaps.len() - 1], 2 * gaps[gaps.len() - 2], "{gaps:?}");
        // Repaired: the timer stops.
        w.with(1, |ctx| g.handle_data(3, &data(1, 1), b"b", ctx));
        w.repair_at = NEVER;
        w.now += 1_000 * wait;
        w.with(1, |ctx| g.rerequest_gaps(ctx));
        assert!(w.out.pop().is_none());
        assert_eq!(w.repair_at, NEVER);
        g.check_invariants();
    }

    /// Our own tree children are computed once per view: a message submitted after a view
    /// change goes to the new view's children, not the old one's.
    #[test]
    fn own_children_follow_view_changes() {
        let settings = Settings {
            tree_fanout: 2,
            ..Settings::default()
        };
        let mut w = World::new(settings);
        let mut g = GroupState::new(7, 1, 1);
        let sent_to = |g: &mut GroupState, w: &mut World| {
            w.with(1, |ctx| g.submit(b"m", 0, ctx, |_| {}).unwrap());
            let mut to: Vec<NodeId> = w.sent_data().iter().map(|(to, ..)| *to).collect();
            to.sort_unstable();
            to
        };
        set(&mut g, &mut w, 1, &[1, 2]);
        assert_eq!(sent_to(&mut g, &mut w), [2]);
        assert_eq!(sent_to(&mut g, &mut w), [2]);
        set(&mut g, &mut w, 1, &[1, 3, 4, 5]);
        assert_eq!(sent_to(&mut g, &mut w), [3, 4]);
        set(&mut g, &mut w, 1, &[5, 1]);
        assert_eq!(sent_to(&mut g, &mut w), [5]);
        set(&mut g, &mut w, 1, &[1]);
        assert!(sent_to(&mut g, &mut w).is_empty());
        g.check_invariants();
    }

    /// A large message goes out in fragments, is reassembled whole at a receiver (in any
    /// fragment order), and a receiver missing fragments asks for them from the first
    /// missing one.
    #[test]
    fn large_messages_are_fragmented_and_reassembled() {
        let settings = Settings::default();
        let chunk = settings.fragment_payload();
        let mut sw = World::new(settings.clone());
        let mut sender = GroupState::new(7, 1, 9);
        set(&mut sender, &mut sw, 1, &[1, 0]);
        let msg: Vec<u8> = (0..chunk * 3 + 17).map(|i| i as u8).collect();
        sw.with(1, |ctx| sender.submit(&msg, 4, ctx, |_| {}).unwrap());
        let mut frags = sw.sent_data();
        assert_eq!(frags.len(), 4);
        assert!(frags.iter().all(|(to, h, _, _)| *to == 0 && h.frag_count == 4));
        let mut w = World::new(settings);
        let mut g = GroupState::new(7, 0, 1);
        w.with(1, |ctx| g.set_members(&[1, 0], &[9, 1], ctx));
        frags.reverse();
        let lost_one = frags.remove(1); // fragment 2
        for (_, h, _, p) in &frags {
            w.with(1, |ctx| g.handle_data(1, h, p, ctx));
        }
        assert!(w.delivered().is_empty());
        g.check_invariants();
        // The periodic rescan asks for fragment 0.. of message 0 (first missing is 2).
        w.now += w.settings.rerequest_after;
        let mut wants = Vec::new();
        let st = g.senders.get_mut(&(1, 9)).unwrap();
        w.with(1, |ctx| collect_wants((1, 9), st, 0, 1, ctx, &mut wants));
        assert_eq!(wants.len(), 1);
        assert_eq!((wants[0].first, wants[0].frag), (0, 2));
        let (_, h, _, p) = lost_one;
        w.with(1, |ctx| g.handle_data(1, &h, &p, ctx));
        assert_eq!(w.delivered(), vec![(0, msg.clone())]);
        g.check_invariants();
        // The sender serves a request for fragments 2.. only.
        let req = RequestEntry {
            sender: 1,
            stream: 9,
            first: 0,
            count: 1,
            frag: 2,
        };
        let rh = RequestHeader {
            group: 7,
            round: REQUEST_ROUND_GAP,
            reserved: 0,
        };
        sw.with(1, |ctx| {
            sender.round(&[], ctx);
            sender.handle_request(0, &rh, std::iter::once(req), ctx)
        });
        let re = sw.sent_data();
        let idx: Vec<u16> = re.iter().map(|(_, h, _, _)| h.frag_index).collect();
        assert_eq!(idx, vec![2, 3]);
        assert!(re.iter().all(|(_, _, r, _)| *r));
    }

    /// A fragment that claims a message larger than `max_message` is refused (counted),
    /// and allocates nothing.
    #[test]
    fn fragments_of_oversized_messages_are_refused() {
        let mut w = World::new(Settings {
            max_message: 10_000,
            ..Settings::default()
        });
        let mut g = GroupState::new(7, 0, 1);
        set(&mut g, &mut w, 1, &[0, 1]);
        let mut h = data(0, 1);
        h.frag_count = u16::MAX;
        w.with(1, |ctx| g.handle_data(1, &h, &[0; 1000], ctx));
        assert_eq!(w.counters.bad_fragments, 1);
        // Settled at once: reported Lost (once), never requested, nothing held but a slot.
        assert_eq!(w.lost(), vec![(1, 0, 1)]);
        assert_eq!(g.bytes, SLOT_OVERHEAD);
        w.with(1, |ctx| g.handle_data(1, &h, &[0; 1000], ctx));
        assert_eq!(w.lost(), vec![]);
        g.check_invariants();
    }

    /// Over the group budget, the oldest messages of the largest stream go: undelivered
    /// ones are delivered, missing ones reported `Lost`, and the budget holds.
    #[test]
    fn the_byte_budget_holds_and_reports_what_it_drops() {
        let budget = 100 * (SLOT_OVERHEAD + 100);
        let mut w = World::new(Settings {
            group_budget_bytes: budget,
            ..Settings::default()
        });
        let mut g = GroupState::new(7, 0, 1);
        set(&mut g, &mut w, 1, &[0, 1]);
        // Seq 0 missing; 1..1000 arrive.
        for seq in 1..1000 {
            let mut h = data(seq, 1);
            h.retained = seq as u32; // the sender holds everything: seq 0 is owed
            w.with(1, |ctx| g.handle_data(1, &h, &[1; 100], ctx));
            assert!(g.bytes <= budget, "{} > {budget}", g.bytes);
        }
        g.check_invariants();
        let mut lost = 0;
        let mut delivered = Vec::new();
        for e in w.events.drain(..) {
            match e {
                Event::Lost { first, count, .. } => {
                    assert_eq!(first, 0);
                    lost += count;
                }
                Event::Deliver { seq, .. } => delivered.push(seq),
                _ => {}
            }
        }
        assert_eq!(lost, 1);
        assert_eq!(delivered, (1..1000).collect::<Vec<_>>());
        assert!(w.counters.evicted_budget > 0);
        assert_eq!(w.node_bytes, g.bytes);
    }

    /// Eviction of a delivered front (popped in `evict`'s own walk, not slid past one by
    /// one): every slot that left is counted, the window starts after exactly those, the
    /// bytes of the stream, the group and the node agree, and nothing is reported twice.
    #[test]
    fn evicting_the_delivered_front_counts_every_slot_it_frees() {
        let budget = 50 * (SLOT_OVERHEAD + 100);
        let mut w = World::new(Settings {
            group_budget_bytes: budget,
            ..Settings::default()
        });
        let mut g = GroupState::new(7, 0, 1);
        set(&mut g, &mut w, 1, &[0, 1]);
        for seq in 0..2000 {
            let mut h = data(seq, 1);
            h.retained = seq as u32;
            w.with(1, |ctx| g.handle_data(1, &h, &[seq as u8; 100], ctx));
            assert!(g.bytes <= budget, "{} > {budget}", g.bytes);
            g.check_invariants();
        }
        let st = &g.senders[&(1, 1)];
        assert!(st.base > 1000, "the budget holds ~50 messages: {}", st.base);
        assert_eq!(w.counters.evicted_budget, st.base);
        assert_eq!(st.next_deliver, 2000);
        assert_eq!(st.base + st.slots.len() as u64, 2000);
        assert_eq!(w.node_bytes, g.bytes);
        let mut delivered = Vec::new();
        for e in w.events.drain(..) {
            match e {
                Event::Deliver { seq, payload, .. } => {
                    assert_eq!(payload[0], seq as u8);
                    delivered.push(seq);
                }
                Event::Lost { .. } => panic!("nothing was missing"),
                _ => {}
            }
        }
        assert_eq!(delivered, (0..2000).collect::<Vec<_>>());
    }

    /// The flow statuses sent so far, with their destination.
    fn sent_statuses(w: &mut World) -> Vec<(NodeId, FlowStatus)> {
        let mut v = Vec::new();
        while let Some((dest, bytes)) = w.out.pop() {
            let d = tutti_wire::packet::decode(bytes).unwrap();
            for m in d.messages() {
                if let tutti_wire::packet::Message::FlowStatus(s) = m {
                    v.push((dest, s));
                }
            }
        }
        v
    }

    fn report(sender: NodeId, consumed: u64, holder: NodeId, members: u32) -> FlowStatus {
        FlowStatus {
            group: 7,
            sender,
            stream: 1,
            consumed,
            window: 1_000,
            gaps: 0,
            holder,
            members,
        }
    }

    fn flow_settings() -> Settings {
        Settings {
            tree_fanout: 4,
            flow_window: 1_000,
            ..Settings::default()
        }
    }

    /// A sender keeps flow state for the children of its tree only (O(fanout), however
    /// large the group); reports from other members, counting more members than the group
    /// has, or claiming more than was sent are ignored or capped, never a panic.
    #[test]
    fn a_sender_serves_its_tree_children_and_bounds_what_a_report_can_do() {
        let mut w = World::new(flow_settings());
        let mut g = GroupState::new(7, 0, 1);
        let nodes: Vec<NodeId> = (0..100).collect();
        set(&mut g, &mut w, 1, &nodes);
        let mut peers: Vec<NodeId> = g.flow.iter().map(|p| p.node).collect();
        peers.sort_unstable();
        assert_eq!(peers, [1, 2, 3, 4]);
        for _ in 0..10 {
            w.with(1, |ctx| g.submit(b"m", 0, ctx, |_| {}).unwrap());
        }
        // Each child taken to hold what we had sent when the tree took its shape.
        assert_eq!(g.flow_limit, 1_000);
        for c in 1..=4 {
            w.with(1, |ctx| g.handle_flow_status(c, &report(0, 10, c, 25), ctx));
        }
        assert_eq!(g.flow_limit, 10 + 1_000);
        // Not a child of ours: ignored.
        w.with(1, |ctx| g.handle_flow_status(50, &report(0, 2, 50, 1), ctx));
        assert_eq!(w.counters.flow_statuses_ignored, 1);
        assert_eq!(g.flow_limit, 10 + 1_000);
        // More members than the group has: ignored.
        w.with(1, |ctx| g.handle_flow_status(1, &report(0, 2, 1, 101), ctx));
        assert_eq!(w.counters.flow_statuses_ignored, 2);
        // A child's subtree behind: the window follows it.
        w.with(1, |ctx| g.handle_flow_status(1, &report(0, 2, 77, 25), ctx));
        assert_eq!(g.flow_limit, 2 + 1_000);
        // Claiming more than we sent opens nothing beyond a window past what we sent.
        w.with(1, |ctx| {
            g.handle_flow_status(1, &report(0, u64::MAX / 2, 1, 25), ctx)
        });
        assert_eq!(g.flow_limit, 10 + 1_000);
        assert_eq!(w.counters.flow_statuses_received, 6);
        // A smaller view reshapes the tree: the children of the new one only.
        set(&mut g, &mut w, 2, &[0, 9, 8]);
        let mut peers: Vec<NodeId> = g.flow.iter().map(|p| p.node).collect();
        peers.sort_unstable();
        assert_eq!(peers, [8, 9]);
    }

    /// A member reports to its parent in the sender's tree the least consumption over its
    /// subtree (its own and its children's reports), with the member holding it and the
    /// members counted; it passes a sender's ask on to its children; a report from a member
    /// that is not its child in that tree is ignored.
    #[test]
    fn a_member_aggregates_its_subtree_and_reports_to_its_parent() {
        let mut w = World::new(flow_settings());
        // Member 1 under sender 0 (k = 4): children 5, 6, 7, 8.
        let mut g = GroupState::new(7, 1, 1);
        let nodes: Vec<NodeId> = (0..21).collect();
        set(&mut g, &mut w, 1, &nodes);
        w.now = 200 * crate::MILLIS;
        for seq in 0..10 {
            w.with(1, |ctx| g.handle_data(0, &data(seq, 0), b"m", ctx));
        }
        // Our children have not reported: our subtree holds nothing yet.
        assert!(sent_statuses(&mut w).is_empty());
        // Child 6 holds 3 (its member 17 does), the others all 10.
        for (child, consumed, holder, members) in [(5, 10, 5, 1), (6, 3, 17, 2), (7, 10, 7, 1)] {
            w.with(1, |ctx| {
                g.handle_flow_status(child, &report(0, consumed, holder, members), ctx)
            });
        }
        assert!(sent_statuses(&mut w).is_empty());
        w.with(1, |ctx| g.handle_flow_status(8, &report(0, 10, 8, 1), ctx));
        let sent = sent_statuses(&mut w);
        assert_eq!(sent.len(), 1, "{sent:?}");
        let (to, r) = sent[0];
        assert_eq!(to, 0, "to our parent: the sender");
        assert_eq!(({ r.consumed }, { r.holder }, { r.members }), (3, 17, 6));
        // Not our child in 0's tree: ignored.
        w.with(1, |ctx| g.handle_flow_status(9, &report(0, 0, 9, 1), ctx));
        assert_eq!(w.counters.flow_statuses_ignored, 1);
        assert_eq!(w.counters.flow_statuses_received, 4);
        // The sender asks: passed on to our four children (once within an interval), and
        // we report (repeat) every interval or two.
        let ask = report(0, 10, 0, 0);
        w.with(1, |ctx| g.handle_flow_status(0, &ask, ctx));
        w.with(1, |ctx| g.handle_flow_status(0, &ask, ctx));
        w.now += 2 * w.settings.flow_status_interval;
        w.with(1, |ctx| g.rerequest_gaps(ctx));
        let sent = sent_statuses(&mut w);
        let mut asked: Vec<NodeId> = sent
            .iter()
            .filter(|(_, s)| s.is_ask())
            .map(|(to, _)| *to)
            .collect();
        asked.sort_unstable();
        assert_eq!(asked, [5, 6, 7, 8]);
        let reports: Vec<(NodeId, FlowStatus)> = sent.iter().filter(|(_, s)| !s.is_ask()).copied().collect();
        assert_eq!(reports.len(), 1, "{sent:?}");
        assert_eq!(reports[0].0, 0);
        assert_eq!({ reports[0].1.consumed }, 3);
        // Child 6's subtree caught up: the report moves.
        w.with(1, |ctx| g.handle_flow_status(6, &report(0, 10, 6, 2), ctx));
        w.now += w.settings.flow_status_interval;
        w.with(1, |ctx| g.rerequest_gaps(ctx));
        let sent = sent_statuses(&mut w);
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(({ sent[0].1.consumed }, { sent[0].1.holder }), (10, 1));
    }
}
