//! Bimodal multicast for one group (Birman et al., TOCS 1999): stage 1 over a k-ary tree
//! rooted at the sender, stage 2 anti-entropy gossip (digest, request, retransmission),
//! bounded retention, `Lost` reports, FIFO or unordered delivery.

use crate::fxhash::FxMap;
use crate::node::Counters;
use crate::outbox::Outbox;
use crate::{Delivery, Event, GroupId, NodeId, Settings};
use std::collections::hash_map::Entry;
use std::collections::VecDeque;
use std::sync::Arc;
use tutti_wire::packet::{
    DataHeader, DigestEntry, DigestHeader, RequestEntry, RequestHeader, DATAGRAM_HEADER_LEN,
    MESSAGE_HEADER_LEN,
};

/// Overhead counted per retransmitted message against the budget (Ensemble's 100 B).
const RETRANSMIT_OVERHEAD: usize = 100;
const NEVER: u32 = u32::MAX;
/// Retention periods an emptied state of a departed sender is kept (see `last_active`).
const TOMBSTONE_RETENTIONS: u32 = 4;
/// Rounds a gap below the sender's own low-water mark is still left open for repair by a
/// member that got the message late, before it is reported `Lost`.
const LOW_GRACE_ROUNDS: u32 = 4;

enum Slot {
    Missing {
        since_round: u32,
        requested_round: u32,
    },
    Held {
        payload: Arc<[u8]>,
        round: u32,
        delivered: bool,
        forwarded: bool,
    },
}

/// What a member knows of one sender (in one incarnation): a window of seqs from `base`.
pub struct SenderState {
    base: u64,
    slots: VecDeque<Slot>,
    /// FIFO cursor: next seq to deliver.
    next_deliver: u64,
    /// Every seq in `[base, contiguous)` is held.
    contiguous: u64,
    missing: u64,
    /// The sender's `retained` from the newest data message, for forwarding.
    retained: u32,
    /// Last round this state saw data; an idle empty state of a departed sender is kept
    /// this long as a tombstone so that late copies held elsewhere are not delivered again.
    last_active: u32,
}

impl SenderState {
    fn new(base: u64) -> Self {
        SenderState {
            base,
            slots: VecDeque::new(),
            next_deliver: base,
            contiguous: base,
            missing: 0,
            retained: 0,
            last_active: 0,
        }
    }
    fn high(&self) -> u64 {
        self.base + self.slots.len() as u64
    }
    fn slot(&self, seq: u64) -> Option<&Slot> {
        seq.checked_sub(self.base)
            .and_then(|i| self.slots.get(i as usize))
    }
    fn slot_mut(&mut self, seq: u64) -> Option<&mut Slot> {
        seq.checked_sub(self.base)
            .and_then(|i| self.slots.get_mut(i as usize))
    }
    fn advance_contiguous(&mut self) {
        self.contiguous = self.contiguous.max(self.base);
        while let Some(Slot::Held { .. }) = self.slot(self.contiguous) {
            self.contiguous += 1;
        }
    }
    /// Extend the window with missing slots up to `high` (bounded by `max_window`).
    fn extend_to(&mut self, high: u64, round: u32, max_window: u64) -> bool {
        let limit = self.base.saturating_add(max_window);
        let target = high.min(limit);
        while self.high() < target {
            self.slots.push_back(Slot::Missing {
                since_round: round,
                requested_round: NEVER,
            });
            self.missing += 1;
        }
        high <= limit
    }
    pub fn approx_bytes(&self) -> usize {
        let mut b = std::mem::size_of::<Self>() + self.slots.capacity() * std::mem::size_of::<Slot>();
        for s in &self.slots {
            if let Slot::Held { payload, .. } = s {
                b += payload.len() + 16;
            }
        }
        b
    }
}

type SenderKey = (NodeId, u32);

pub struct GroupState {
    pub id: GroupId,
    /// Group members in view order; `pos` maps a node to its index.
    members: Vec<NodeId>,
    pos: FxMap<NodeId, usize>,
    my_id: NodeId,
    my_incarnation: u32,
    next_seq: u64,
    senders: FxMap<SenderKey, SenderState>,
    /// Sender keys in first-seen order, for deterministic rotation over digests.
    order: Vec<SenderKey>,
    digest_cursor: usize,
    budget_left: usize,
    digest_replied: FxMap<NodeId, u32>,
    /// Incarnation of each group member in the current view.
    member_incarnation: FxMap<NodeId, u32>,
    /// Where this member's stream of a sender without a state starts: a forgotten sender's
    /// next expected seq, or 0 for a co-member that joined the group while this member
    /// already was one (it owes us everything it sends). Bounded by `max_tombstones`.
    tombstones: FxMap<SenderKey, (u64, u64)>,
    /// Tombstone keys with the stamp they were inserted with, oldest first, for eviction
    /// (an entry whose stamp no longer matches the map is stale and skipped).
    tombstone_order: VecDeque<(SenderKey, u64)>,
    tombstone_stamp: u64,
    /// Round since which this member has been in the group in every view (None: it is
    /// not in the current one).
    member_since: Option<u32>,
    scratch_digest: Vec<DigestEntry>,
    scratch_request: Vec<RequestEntry>,
}

/// Shared context a group needs from its node while handling an input.
pub struct Ctx<'a> {
    pub settings: &'a Settings,
    pub round: u32,
    pub out: &'a mut Outbox,
    pub events: &'a mut VecDeque<Event>,
    pub counters: &'a mut Counters,
    /// Whether a node (in an incarnation) is alive as far as membership knows.
    pub live: &'a dyn Fn(NodeId, u32) -> bool,
}

impl Ctx<'_> {
    fn emit(&mut self, e: Event) {
        if self.events.len() >= self.settings.max_pending_events {
            self.counters.events_dropped += 1;
        } else {
            self.events.push_back(e);
        }
    }
}

impl GroupState {
    pub fn new(id: GroupId, my_id: NodeId, my_incarnation: u32) -> Self {
        GroupState {
            id,
            members: Vec::new(),
            pos: FxMap::default(),
            my_id,
            my_incarnation,
            next_seq: 0,
            senders: FxMap::default(),
            order: Vec::new(),
            digest_cursor: 0,
            budget_left: 0,
            digest_replied: FxMap::default(),
            member_incarnation: FxMap::default(),
            tombstones: FxMap::default(),
            tombstone_order: VecDeque::new(),
            tombstone_stamp: 0,
            member_since: None,
            scratch_digest: Vec::new(),
            scratch_request: Vec::new(),
        }
    }

    /// Install the group's member list of a new view (`incarnations`: the view's members).
    ///
    /// A sender's seqs in a group start at 0 when it joins the group. So when this member
    /// already was in the group and a sender (in an incarnation) appears in it, every
    /// message of that sender is owed to us from seq 0: remember that (as a tombstone at
    /// 0), so that messages it sent before we first hear of it are repaired or reported
    /// `Lost`, never skipped — for instance when it published only while partitioned away.
    pub fn set_members(&mut self, members: &[NodeId], incarnations: &FxMap<NodeId, u32>, ctx: &mut Ctx<'_>) {
        let was_member = self.pos.contains_key(&self.my_id);
        self.member_since = match (was_member, members.contains(&self.my_id)) {
            (_, false) => None,
            (false, true) => Some(ctx.round),
            (true, true) => self.member_since.or(Some(ctx.round)),
        };
        let previous = std::mem::take(&mut self.member_incarnation);
        self.members.clear();
        self.members.extend_from_slice(members);
        self.pos.clear();
        for (i, m) in members.iter().enumerate() {
            self.pos.insert(*m, i);
            if let Some(&inc) = incarnations.get(m) {
                self.member_incarnation.insert(*m, inc);
            }
        }
        if !was_member || !self.pos.contains_key(&self.my_id) {
            return;
        }
        for &n in members {
            let Some(&inc) = self.member_incarnation.get(&n) else {
                continue;
            };
            let key = (n, inc);
            if n == self.my_id
                || previous.get(&n) == Some(&inc)
                || self.senders.contains_key(&key)
                || self.tombstones.contains_key(&key)
            {
                continue;
            }
            self.add_tombstone(key, 0, ctx);
        }
    }

    /// Remember where `key`'s stream stands for us (bounded; the oldest is evicted).
    fn add_tombstone(&mut self, key: SenderKey, next: u64, ctx: &mut Ctx<'_>) {
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
        // Stale order entries (tombstones consumed by a returning sender) are dropped once
        // they outnumber the live ones: the order stays within twice the cap.
        if self.tombstone_order.len() > 2 * cap.max(self.tombstones.len()) + 16 {
            let live = &self.tombstones;
            self.tombstone_order
                .retain(|(k, st)| live.get(k).is_some_and(|v| v.1 == *st));
        }
    }

    /// Whether traffic about `key`, of which we hold no state, must wait for the view:
    /// we are in the group, the sender is alive but not (yet) in our group view. Once
    /// the view that adds it arrives we know whether it owes us every message (see
    /// `set_members`); creating its state now, at its advertised low, would skip those.
    fn defer_unknown(&self, key: SenderKey, ctx: &Ctx<'_>) -> bool {
        !self.senders.contains_key(&key)
            && !self.tombstones.contains_key(&key)
            && self.pos.contains_key(&self.my_id)
            && self.member_incarnation.get(&key.0) != Some(&key.1)
            && (ctx.live)(key.0, key.1)
    }

    pub fn members(&self) -> &[NodeId] {
        &self.members
    }

    pub fn is_member(&self, n: NodeId) -> bool {
        self.pos.contains_key(&n)
    }

    /// Children of this node in the k-ary tree rooted at `root`: positions are relabeled
    /// so the root is 0; node `i` has children `k*i+1 ..= k*i+k`.
    fn for_children(&self, root: NodeId, k: usize, mut f: impl FnMut(NodeId)) {
        let n = self.members.len();
        let (Some(&r), Some(&me)) = (self.pos.get(&root), self.pos.get(&self.my_id)) else {
            return;
        };
        let rel = (me + n - r) % n;
        for c in 1..=k {
            let child = match rel.checked_mul(k).and_then(|x| x.checked_add(c)) {
                Some(x) if x < n => x,
                _ => break,
            };
            if let Some(&node) = self.members.get((child + r) % n) {
                f(node);
            }
        }
    }

    /// Where our stream of a sender we hold no state of starts, given the history it (or a
    /// peer) advertises from `advertised`. A sender's low-water mark moves only past
    /// messages sent a retention ago. So when we first hear of it within a retention of
    /// joining the group, nothing it sent since we joined is below its low: start there
    /// (no `Lost` for history before we joined). Heard of only later (we were cut off, or
    /// it published only while cut off from us), messages it sent after we joined may be
    /// below its low: start at 0, so that they are reported `Lost` rather than skipped.
    fn first_base(&self, key: SenderKey, advertised: u64, ctx: &Ctx<'_>) -> u64 {
        if self.senders.contains_key(&key) || self.tombstones.contains_key(&key) {
            return advertised; // unused: the state or tombstone decides
        }
        match self.member_since {
            Some(since) if ctx.round.wrapping_sub(since) > ctx.settings.retention_rounds => 0,
            _ => advertised,
        }
    }

    /// The state of `key`, created at `base` (the sender's advertised history) unless a
    /// tombstone says where our stream of it stands.
    fn state_for(&mut self, key: SenderKey, base: u64, round: u32) -> &mut SenderState {
        if !self.senders.contains_key(&key) {
            self.order.push(key);
            let base = match self.tombstones.remove(&key) {
                Some((next, _)) => next,
                None => base,
            };
            let mut st = SenderState::new(base);
            st.last_active = round;
            self.senders.insert(key, st);
        }
        self.senders.get_mut(&key).expect("inserted above")
    }

    /// The application submitted a message: deliver to self, send down the tree.
    pub fn submit(&mut self, payload: &[u8], ctx: &mut Ctx<'_>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let key = (self.my_id, self.my_incarnation);
        let max_window = ctx.settings.max_window;
        let round = ctx.round;
        let payload: Arc<[u8]> = Arc::from(payload);
        let st = self.state_for(key, 0, round);
        st.last_active = round;
        while st.slots.len() as u64 >= max_window {
            st.slots.pop_front();
            st.base += 1;
            ctx.counters.evicted_early += 1;
        }
        st.advance_contiguous();
        st.extend_to(seq + 1, round, u64::MAX);
        // A fresh slot was pushed as missing; it is held at once.
        st.missing = st.missing.saturating_sub(1);
        if let Some(s) = st.slot_mut(seq) {
            *s = Slot::Held {
                payload: payload.clone(),
                round,
                delivered: true,
                forwarded: true,
            };
        }
        st.next_deliver = seq + 1;
        st.advance_contiguous();
        let retained = (seq - st.base).min(u64::from(u32::MAX)) as u32;
        st.retained = retained;
        ctx.emit(Event::Deliver {
            group: self.id,
            sender: self.my_id,
            sender_incarnation: self.my_incarnation,
            seq,
            payload: payload.clone(),
        });
        let header = DataHeader {
            group: self.id,
            seq,
            sender: self.my_id,
            sender_incarnation: self.my_incarnation,
            retained,
            frag_index: 0,
            frag_count: 1,
        };
        let k = ctx.settings.tree_fanout;
        let body = 32 + payload.len();
        let mut children = Vec::with_capacity(k);
        self.for_children(self.my_id, k, |c| children.push(c));
        for c in children {
            ctx.counters.data_sent += 1;
            ctx.out.push(c, body, |e| e.push_data(&header, false, &payload));
        }
        seq
    }

    /// A data message (stage 1 copy or retransmission) arrived.
    pub fn handle_data(&mut self, header: &DataHeader, retransmit: bool, payload: &[u8], ctx: &mut Ctx<'_>) {
        let key = (header.sender, header.sender_incarnation);
        if key == (self.my_id, self.my_incarnation) {
            return;
        }
        let seq = header.seq;
        let max_window = ctx.settings.max_window;
        let round = ctx.round;
        let base = seq
            .saturating_sub(u64::from(header.retained))
            .max(seq.saturating_sub(max_window.saturating_sub(1)));
        let group = self.id;
        if self.defer_unknown(key, ctx) {
            ctx.counters.deferred_unknown_sender += 1;
            return;
        }
        let base = self.first_base(key, base, ctx);
        let st = self.state_for(key, base, round);
        if seq < st.base {
            ctx.counters.duplicates += 1;
            return;
        }
        if seq + 1 > st.base.saturating_add(max_window) {
            // The sender is a whole window ahead of the oldest seq we keep: give up the
            // oldest (gaps reported Lost, held messages delivered) instead of dropping
            // everything new. A receiver always makes progress; reliability then depends on
            // max_window covering the sender's rate times the repair time.
            ctx.counters.window_overflow += 1;
            Self::slide_window(group, key, st, seq + 1 - max_window, ctx);
        }
        if !st.extend_to(seq + 1, round, max_window) {
            ctx.counters.window_overflow += 1;
            return;
        }
        let mut first = false;
        let mut forward = false;
        match st.slot_mut(seq) {
            Some(slot @ Slot::Missing { .. }) => {
                *slot = Slot::Held {
                    payload: Arc::from(payload),
                    round,
                    delivered: false,
                    forwarded: !retransmit,
                };
                first = true;
                forward = !retransmit;
            }
            Some(Slot::Held { forwarded, .. }) => {
                ctx.counters.duplicates += 1;
                if !retransmit && !*forwarded {
                    *forwarded = true;
                    forward = true;
                }
            }
            None => return,
        }
        st.retained = header.retained;
        st.last_active = round;
        if first {
            st.missing = st.missing.saturating_sub(1);
            st.advance_contiguous();
            Self::deliver_ready(group, key, st, seq, ctx);
        }
        if forward {
            let k = ctx.settings.tree_fanout;
            let body = 32 + payload.len();
            let mut children = [0 as NodeId; 64];
            let mut n = 0;
            self.for_children(header.sender, k.min(64), |c| {
                children[n] = c;
                n += 1;
            });
            for &c in &children[..n] {
                ctx.counters.data_sent += 1;
                ctx.out.push(c, body, |e| e.push_data(header, false, payload));
            }
        }
    }

    /// Tells the application, once, that `count` messages of `key` from `first` are lost.
    fn report_lost(group: GroupId, key: SenderKey, first: u64, count: u64, ctx: &mut Ctx<'_>) {
        ctx.counters.lost_reported += count;
        ctx.emit(Event::Lost {
            group,
            sender: key.0,
            sender_incarnation: key.1,
            first,
            count,
        });
    }

    /// Moves the window's start to `new_base`: gaps below it are reported `Lost` once,
    /// held messages not yet delivered are delivered (in order), delivered ones dropped
    /// early (counted); then whatever waited behind is delivered.
    fn slide_window(group: GroupId, key: SenderKey, st: &mut SenderState, new_base: u64, ctx: &mut Ctx<'_>) {
        let mut lost_first = 0;
        let mut lost_count = 0u64;
        let report =
            |first: u64, count: u64, ctx: &mut Ctx<'_>| Self::report_lost(group, key, first, count, ctx);
        while st.base < new_base {
            match st.slots.pop_front() {
                Some(Slot::Missing { .. }) => {
                    if lost_count == 0 {
                        lost_first = st.base;
                    }
                    lost_count += 1;
                    st.missing = st.missing.saturating_sub(1);
                }
                Some(Slot::Held {
                    payload, delivered, ..
                }) => {
                    if lost_count > 0 {
                        report(lost_first, lost_count, ctx);
                        lost_count = 0;
                    }
                    if delivered {
                        ctx.counters.evicted_early += 1;
                    } else {
                        ctx.counters.delivered += 1;
                        ctx.emit(Event::Deliver {
                            group,
                            sender: key.0,
                            sender_incarnation: key.1,
                            seq: st.base,
                            payload,
                        });
                    }
                }
                None => {
                    // Seqs never seen at all.
                    if lost_count == 0 {
                        lost_first = st.base;
                    }
                    lost_count += new_base - st.base;
                    st.base = new_base;
                    break;
                }
            }
            st.base += 1;
        }
        if lost_count > 0 {
            report(lost_first, lost_count, ctx);
        }
        st.next_deliver = st.next_deliver.max(st.base);
        st.contiguous = st.contiguous.max(st.base);
        st.advance_contiguous();
        if ctx.settings.delivery == Delivery::Fifo {
            let s = st.next_deliver;
            Self::deliver_ready(group, key, st, s, ctx);
        }
    }

    /// Deliver what can be delivered after `seq` arrived (FIFO: in order from the cursor).
    fn deliver_ready(group: GroupId, key: SenderKey, st: &mut SenderState, seq: u64, ctx: &mut Ctx<'_>) {
        match ctx.settings.delivery {
            Delivery::Unordered => {
                if let Some(Slot::Held {
                    payload, delivered, ..
                }) = st.slot_mut(seq)
                {
                    if !*delivered {
                        *delivered = true;
                        let payload = payload.clone();
                        ctx.counters.delivered += 1;
                        ctx.emit(Event::Deliver {
                            group,
                            sender: key.0,
                            sender_incarnation: key.1,
                            seq,
                            payload,
                        });
                    }
                }
                st.next_deliver = st.contiguous.max(st.next_deliver);
            }
            Delivery::Fifo => loop {
                let s = st.next_deliver;
                let Some(Slot::Held {
                    payload, delivered, ..
                }) = st.slot_mut(s)
                else {
                    break;
                };
                let was = *delivered;
                *delivered = true;
                let payload = payload.clone();
                st.next_deliver += 1;
                if was {
                    continue;
                }
                ctx.counters.delivered += 1;
                ctx.emit(Event::Deliver {
                    group,
                    sender: key.0,
                    sender_incarnation: key.1,
                    seq: s,
                    payload,
                });
            },
        }
    }

    /// The sender's own digest says it no longer holds seqs below `low`: what we still miss
    /// at the front of our window below it can only come from a member that got it late,
    /// so it is reported `Lost` now rather than after a full retention (and a stream far
    /// behind, beyond the window, catches up at once instead of a window per retention).
    /// Held messages are kept (others may still need them); gaps behind one are aged so
    /// that garbage collection reports them within `LOW_GRACE_ROUNDS`.
    fn sender_dropped_below(
        group: GroupId,
        key: SenderKey,
        st: &mut SenderState,
        low: u64,
        ctx: &mut Ctx<'_>,
    ) {
        let first = st.base;
        let mut count = 0u64;
        while st.base < low {
            match st.slots.front() {
                Some(Slot::Missing { .. }) => {
                    st.slots.pop_front();
                    st.missing = st.missing.saturating_sub(1);
                    st.base += 1;
                    count += 1;
                }
                Some(Slot::Held { .. }) => break,
                None => {
                    count += low - st.base;
                    st.base = low;
                }
            }
        }
        if count > 0 {
            Self::report_lost(group, key, first, count, ctx);
            st.next_deliver = st.next_deliver.max(st.base);
            st.advance_contiguous();
            if ctx.settings.delivery == Delivery::Fifo {
                let s = st.next_deliver;
                Self::deliver_ready(group, key, st, s, ctx);
            }
        }
        let retention = ctx.settings.retention_rounds;
        let aged = ctx.round.wrapping_sub(retention.saturating_sub(LOW_GRACE_ROUNDS));
        let mut s = st.base;
        while s < low {
            if let Some(Slot::Missing { since_round, .. }) = st.slot_mut(s) {
                if ctx.round.wrapping_sub(*since_round) < retention.saturating_sub(LOW_GRACE_ROUNDS) {
                    *since_round = aged;
                }
            } else if st.slot(s).is_none() {
                break;
            }
            s += 1;
        }
    }

    /// Build this round's digest (rotating over senders when there are more than fit).
    fn build_digest(&mut self, max: usize) {
        self.scratch_digest.clear();
        let n = self.order.len();
        if n == 0 {
            return;
        }
        let start = self.digest_cursor % n;
        let take = n.min(max);
        for i in 0..take {
            let key = self.order[(start + i) % n];
            if let Some(st) = self.senders.get(&key) {
                self.scratch_digest.push(DigestEntry {
                    sender: key.0,
                    sender_incarnation: key.1,
                    low: st.base,
                    contiguous: st.contiguous.max(st.base),
                    high: st.high(),
                });
            }
        }
        self.digest_cursor = (start + take) % n;
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
        if self.scratch_digest.is_empty() {
            return;
        }
        for entries in self.scratch_digest.chunks(per) {
            let body = 16 + entries.len() * 32;
            ctx.counters.digests_sent += 1;
            ctx.out.push(to, body, |e| e.push_digest(&header, entries));
        }
    }

    /// Gossip round: reset the retransmit budget, garbage-collect, send digests to
    /// `gossip_fanout` random group members (`targets` picked by the node).
    pub fn round(&mut self, targets: &[NodeId], ctx: &mut Ctx<'_>) {
        self.budget_left = ctx.settings.retransmit_budget_bytes;
        self.gc(ctx);
        self.digest_replied.clear();
        if targets.is_empty() {
            return;
        }
        self.build_digest(ctx.settings.digest_entries);
        for &t in targets {
            self.send_digest(t, ctx);
        }
    }

    /// Drop messages older than the retention; report gaps that old as `Lost`.
    fn gc(&mut self, ctx: &mut Ctx<'_>) {
        let retention = ctx.settings.retention_rounds;
        let round = ctx.round;
        let group = self.id;
        let mut dead: Vec<SenderKey> = Vec::new();
        for key in &self.order {
            let Some(st) = self.senders.get_mut(key) else {
                continue;
            };
            let mut lost_first = 0;
            let mut lost_count = 0u64;
            let old = |slot: Option<&Slot>| -> Option<bool> {
                match slot {
                    Some(Slot::Held {
                        round: r,
                        delivered: true,
                        ..
                    }) if round.wrapping_sub(*r) >= retention => Some(false),
                    Some(Slot::Missing { since_round, .. })
                        if round.wrapping_sub(*since_round) >= retention =>
                    {
                        Some(true)
                    }
                    _ => None,
                }
            };
            while let Some(was_missing) = old(st.slots.front()) {
                st.slots.pop_front();
                if was_missing {
                    if lost_count == 0 {
                        lost_first = st.base;
                    }
                    lost_count += 1;
                    st.missing = st.missing.saturating_sub(1);
                }
                st.base += 1;
                st.next_deliver = st.next_deliver.max(st.base);
                if lost_count > 0 && old(st.slots.front()) != Some(true) {
                    // Report the gap once, then deliver what waited behind it.
                    Self::report_lost(group, *key, lost_first, lost_count, ctx);
                    lost_count = 0;
                    st.advance_contiguous();
                    let s = st.next_deliver;
                    if ctx.settings.delivery == Delivery::Fifo {
                        Self::deliver_ready(group, *key, st, s, ctx);
                    }
                }
            }
            st.advance_contiguous();
            if st.slots.is_empty()
                && key.0 != self.my_id
                && !self.pos.contains_key(&key.0)
                && round.wrapping_sub(st.last_active) >= TOMBSTONE_RETENTIONS * retention
            {
                dead.push(*key);
            }
        }
        if !dead.is_empty() {
            for k in &dead {
                // Keep where the stream stood: if the sender is heard of again (a long
                // partition healed), we resume there instead of at its advertised low.
                if let Some(st) = self.senders.remove(k) {
                    debug_assert!(st.slots.is_empty() && st.next_deliver == st.base);
                    self.add_tombstone(*k, st.next_deliver.max(st.base), ctx);
                }
            }
            self.order.retain(|k| self.senders.contains_key(k));
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
        let cap = ctx.settings.request_cap;
        let wait = ctx.settings.rerequest_rounds;
        let max_window = ctx.settings.max_window;
        let round = ctx.round;
        let mut requests = std::mem::take(&mut self.scratch_request);
        requests.clear();
        let mut budget = cap;
        let mut peer_lacks = false;
        for e in entries {
            let key = (e.sender, e.sender_incarnation);
            if key == (self.my_id, self.my_incarnation) {
                if e.high < self.next_seq || e.contiguous < e.high {
                    peer_lacks = true;
                }
                continue;
            }
            if e.low > e.high || e.contiguous > e.high {
                ctx.counters.bad_digests += 1;
                continue;
            }
            if self.defer_unknown(key, ctx) {
                ctx.counters.deferred_unknown_sender += 1;
                continue;
            }
            let group = self.id;
            let base = self.first_base(key, e.low, ctx);
            let st = self.state_for(key, base, round);
            if e.high > st.high() {
                st.last_active = round;
            }
            if from == e.sender && e.low > st.contiguous {
                Self::sender_dropped_below(group, key, st, e.low, ctx);
            }
            if st.contiguous > e.contiguous.max(e.low) || st.high() > e.high {
                peer_lacks = true;
            }
            if e.high > st.high() && !st.extend_to(e.high, round, max_window) {
                ctx.counters.window_overflow += 1;
            }
            if st.missing == 0 || budget == 0 {
                continue;
            }
            // Newest first, only where a gap can be: at or above our contiguous prefix.
            let lo = e.low.max(st.contiguous);
            let hi = e.high.min(st.high());
            let mut s = hi;
            let mut run: Option<(u64, u32)> = None; // (first, count) growing downwards
            while s > lo && budget > 0 {
                s -= 1;
                let want = match st.slot_mut(s) {
                    Some(Slot::Missing { requested_round, .. })
                        if *requested_round == NEVER || round.wrapping_sub(*requested_round) >= wait =>
                    {
                        *requested_round = round;
                        true
                    }
                    _ => false,
                };
                if want {
                    budget -= 1;
                    run = match run {
                        Some((f, c)) if f == s + 1 => Some((s, c + 1)),
                        Some((f, c)) => {
                            requests.push(RequestEntry {
                                sender: key.0,
                                sender_incarnation: key.1,
                                first: f,
                                count: c,
                                reserved: 0,
                            });
                            Some((s, 1))
                        }
                        None => Some((s, 1)),
                    };
                }
            }
            if let Some((f, c)) = run {
                requests.push(RequestEntry {
                    sender: key.0,
                    sender_incarnation: key.1,
                    first: f,
                    count: c,
                    reserved: 0,
                });
            }
        }
        if !requests.is_empty() {
            let rh = RequestHeader {
                group: self.id,
                round: header.round,
                reserved: 0,
            };
            ctx.counters.requests_sent += 1;
            let body = 16 + requests.len() * 24;
            let reqs = &requests;
            ctx.out.push(from, body, |e| e.push_request(&rh, reqs));
        }
        self.scratch_request = requests;
        if peer_lacks && self.digest_replied.get(&from) != Some(&round) {
            self.digest_replied.insert(from, round);
            self.build_digest(ctx.settings.digest_entries);
            self.send_digest(from, ctx);
        }
    }

    /// A retransmit request arrived: serve it newest first within this round's budget.
    pub fn handle_request(
        &mut self,
        from: NodeId,
        header: &RequestHeader,
        entries: impl Iterator<Item = RequestEntry>,
        ctx: &mut Ctx<'_>,
    ) {
        // Stale requests (from a round long gone) are ignored: soft failure detection.
        if ctx.round.wrapping_sub(header.round) > 1 && header.round != ctx.round {
            ctx.counters.stale_requests += 1;
            return;
        }
        for e in entries {
            let Some(st) = self.senders.get(&(e.sender, e.sender_incarnation)) else {
                continue;
            };
            let end = e.first.saturating_add(u64::from(e.count));
            let mut s = end;
            while s > e.first {
                s -= 1;
                let Some(Slot::Held { payload, .. }) = st.slot(s) else {
                    continue;
                };
                let cost = payload.len() + RETRANSMIT_OVERHEAD;
                if cost > self.budget_left {
                    ctx.counters.retransmit_budget_exhausted += 1;
                    return;
                }
                self.budget_left -= cost;
                let h = DataHeader {
                    group: self.id,
                    seq: s,
                    sender: e.sender,
                    sender_incarnation: e.sender_incarnation,
                    retained: st.retained,
                    frag_index: 0,
                    frag_count: 1,
                };
                ctx.counters.retransmits_sent += 1;
                let p = payload.clone();
                ctx.out
                    .push(from, 32 + p.len(), |enc| enc.push_data(&h, true, &p));
            }
        }
    }

    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.members.capacity() * 4
            + self.pos.capacity() * 16
            + self.order.capacity() * 8
            + self.member_incarnation.capacity() * 8
            + self.tombstones.capacity() * 24
            + self.tombstone_order.capacity() * 16
            + self
                .senders
                .values()
                .map(|s| s.approx_bytes() + 16)
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct World {
        settings: Settings,
        out: Outbox,
        events: VecDeque<Event>,
        counters: Counters,
    }

    impl World {
        fn new(settings: Settings) -> Self {
            World {
                out: Outbox::new(0, 1, settings.max_datagram, 1024),
                settings,
                events: VecDeque::new(),
                counters: Counters::default(),
            }
        }
        fn with<R>(&mut self, round: u32, f: impl FnOnce(&mut Ctx<'_>) -> R) -> R {
            let live = |_: NodeId, _: u32| true;
            let mut ctx = Ctx {
                settings: &self.settings,
                round,
                out: &mut self.out,
                events: &mut self.events,
                counters: &mut self.counters,
                live: &live,
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
    }

    fn incarnations(nodes: &[NodeId]) -> FxMap<NodeId, u32> {
        nodes.iter().map(|n| (*n, 1)).collect()
    }

    fn digest(g: &mut GroupState, w: &mut World, from: NodeId, sender: NodeId, low: u64, high: u64) {
        let header = DigestHeader {
            group: 7,
            round: 1,
            reserved: 0,
        };
        let e = DigestEntry {
            sender,
            sender_incarnation: 1,
            low,
            contiguous: high,
            high,
        };
        w.with(1, |ctx| g.handle_digest(from, &header, std::iter::once(e), ctx));
    }

    /// Co-members that join after us owe us every message from seq 0: a sender first heard
    /// of with nothing retained below 10 has its 10 messages reported lost (at once, from
    /// its own digest), not skipped. Such expectations are bounded by `max_tombstones`.
    #[test]
    fn a_co_member_joining_after_us_owes_every_message() {
        let mut w = World::new(Settings {
            max_tombstones: 2,
            ..Settings::default()
        });
        let mut g = GroupState::new(7, 0, 1);
        let all = [0, 1, 2, 3];
        w.with(1, |ctx| g.set_members(&[0], &incarnations(&all), ctx));
        w.with(1, |ctx| g.set_members(&all, &incarnations(&all), ctx));
        assert_eq!(w.counters.tombstones_evicted, 1);
        assert_eq!(g.tombstones.len(), 2);
        // Sender 3 (remembered) says its history starts at 10: 0..10 lost.
        digest(&mut g, &mut w, 3, 3, 10, 10);
        assert_eq!(w.lost(), vec![(3, 0, 10)]);
        assert_eq!(w.counters.lost_reported, 10);
        // Sender 1's expectation was evicted: it resumes at its advertised low.
        digest(&mut g, &mut w, 1, 1, 10, 10);
        assert_eq!(w.lost(), vec![]);
    }

    /// A member that joins a group after a sender starts at the sender's advertised history.
    #[test]
    fn joining_later_starts_at_the_senders_low() {
        let mut w = World::new(Settings::default());
        let mut g = GroupState::new(7, 0, 1);
        let all = [0, 1];
        w.with(1, |ctx| g.set_members(&all, &incarnations(&all), ctx));
        digest(&mut g, &mut w, 1, 1, 10, 10);
        assert_eq!(w.lost(), vec![]);
        assert_eq!(g.senders[&(1, 1)].base, 10);
    }

    /// A sender first heard of more than a retention after we joined may have dropped
    /// messages it sent since we joined: we start at 0 (reported `Lost`), not at its low.
    #[test]
    fn a_sender_first_heard_of_long_after_we_joined_starts_at_zero() {
        let mut w = World::new(Settings::default());
        let mut g = GroupState::new(7, 0, 1);
        let all = [0, 1];
        w.with(1, |ctx| g.set_members(&all, &incarnations(&all), ctx));
        let late = 2 + w.settings.retention_rounds;
        let header = DigestHeader {
            group: 7,
            round: late,
            reserved: 0,
        };
        let e = DigestEntry {
            sender: 1,
            sender_incarnation: 1,
            low: 10,
            contiguous: 10,
            high: 10,
        };
        w.with(late, |ctx| g.handle_digest(1, &header, std::iter::once(e), ctx));
        assert_eq!(w.lost(), vec![(1, 0, 10)]);
    }

    /// A forgotten sender leaves a tombstone: heard of again, it resumes where it stood.
    #[test]
    fn a_forgotten_sender_resumes_from_its_tombstone() {
        let mut w = World::new(Settings::default());
        let mut g = GroupState::new(7, 0, 1);
        let all = [0, 1];
        w.with(1, |ctx| g.set_members(&all, &incarnations(&all), ctx));
        let h = DataHeader {
            group: 7,
            seq: 0,
            sender: 1,
            sender_incarnation: 1,
            retained: 0,
            frag_index: 0,
            frag_count: 1,
        };
        w.with(1, |ctx| g.handle_data(&h, false, b"m", ctx));
        // Sender 1 leaves our view; its state is collected, then forgotten.
        w.with(2, |ctx| g.set_members(&[0], &incarnations(&all), ctx));
        let retention = w.settings.retention_rounds;
        for r in 2..(2 + (TOMBSTONE_RETENTIONS + 2) * retention) {
            w.with(r, |ctx| g.round(&[], ctx));
        }
        assert!(g.senders.is_empty());
        assert_eq!(g.tombstones.get(&(1, 1)).map(|t| t.0), Some(1));
        w.events.clear();
        // Back after a long cut, with its history now starting at 50.
        w.with(200, |ctx| g.set_members(&all, &incarnations(&all), ctx));
        digest(&mut g, &mut w, 1, 1, 50, 50);
        assert_eq!(w.lost(), vec![(1, 1, 49)]);
    }
}
