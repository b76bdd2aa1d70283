//! Invariant checkers, fed every send, delivery, loss report, view installation and
//! application join/leave of a run (and usable on a hand-made history, which is how they
//! are tested).
//!
//! Checked as the run goes:
//! - a delivered message was sent, whole and unaltered (identity, payload hash, length),
//!   with the session it was submitted by; never twice at one instance; never back to its
//!   sender; FIFO per stream (each delivery is the next seq or follows a `Lost` report);
//! - nothing is delivered or reported `Lost` for a group the application is not in;
//! - one membership and one set of groups (members and streams) per view id;
//! - no node removes from its view a member it heard from directly (a datagram of that
//!   instance delivered to it) within the last `heard_window` (issue 11/12: at a partition
//!   heal, claims made while cut off must not remove a member its receivers hear from).
//!
//! Checked at the end of a run (see each method):
//! - [`Checker::check_lost_true`]: every `Lost` is true;
//! - [`Checker::check_delivered_or_lost`]: no silent gap, for live and crashed senders;
//! - [`Checker::check_no_lost`], [`Checker::check_complete`]: in runs that repair covers;
//! - [`Checker::check_bimodal`]: every message reaches almost all or almost none.

use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use tutti_proto::{Member, NodeId, Time, View, ViewId};

/// A node instance: a node in one incarnation (a restart starts a new instance).
pub type Instance = (NodeId, u32);
/// A stream as seen at an instance: (instance, group, sender, stream).
type StreamAt = (Instance, u64, NodeId, u32);

#[derive(Debug, Clone)]
pub struct SentMessage {
    pub sender: NodeId,
    /// The sender's instance (incarnation) when it sent the message.
    pub sender_incarnation: u32,
    /// The stream the message was sent in.
    pub stream: u32,
    pub group: u64,
    pub seq: u64,
    /// The publishing session given to `submit`.
    pub session: u32,
    pub payload_hash: u64,
    pub len: usize,
    pub sent_at: Time,
    /// Instances (other than the sender) that delivered it.
    pub deliveries: u32,
    pub last_delivery: Time,
}

pub fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The payload the simulator sends as message `index`: the index, then filler bytes that
/// depend on it, so a corrupted or invented payload is caught.
pub fn make_payload(index: u64, len: usize) -> Vec<u8> {
    let mut p = index.to_le_bytes().to_vec();
    let mut x = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while p.len() < len.max(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p.push(x as u8);
    }
    p
}

/// Identity of a delivered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageId {
    pub group: u64,
    pub sender: NodeId,
    pub stream: u32,
    pub seq: u64,
}

/// A partition as the checker sees it: from `start` to `end` (absolute times), links
/// between `side` and the other nodes were cut.
#[derive(Debug, Clone)]
pub struct Cut {
    pub start: Time,
    pub end: Time,
    pub side: Vec<NodeId>,
}

/// How much the end-of-run checks covered (so that tests can require that a scenario
/// exercised what it is about).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Coverage {
    /// (member, message) pairs checked "delivered or Lost" whose sender is live at the end.
    pub pairs_live_sender: u64,
    /// ... whose sender crashed or left (the message had a live witness).
    pub pairs_crashed_sender: u64,
    /// ... (either kind) sent by a restarted instance (incarnation above 1).
    pub pairs_restarted_sender: u64,
    /// ... (either kind) in a stream that is not its instance's first in the group
    /// (sent after leaving the group and joining again).
    pub pairs_later_stream: u64,
    /// Seqs covered by `Lost` reports and verified never delivered there.
    pub lost_verified: u64,
    /// Deliveries whose session was compared with the submitted one.
    pub sessions_checked: u64,
    /// Distinct (sender, session) pairs delivered.
    pub distinct_sessions: u64,
    /// Deliveries of messages larger than `Checker::large_threshold`.
    pub large_delivered: u64,
    /// Deliveries at an instance that had left the group and joined it again before.
    pub deliveries_after_rejoin: u64,
    /// Seqs reported `Lost` to a member that joined after they were sent (in runs
    /// checked by `check_no_lost`): history offered to a late joiner, then lost.
    pub lost_not_owed: u64,
    /// Members removed from an installed view that the heard rule checked.
    pub removals_checked: u64,
}

/// Who got what, over the messages of a run (see [`Checker::delivery_summary`]).
#[derive(Debug, Clone, Default)]
pub struct DeliverySummary {
    /// Histogram of "fraction of the owed instances that delivered message m", 11
    /// buckets: [0,10%), [10,20%), ..., [90,100%), and exactly 100%.
    pub histogram: Vec<u64>,
    /// Messages every owed instance delivered.
    pub complete: u64,
    /// Sum of the per-message fractions.
    pub ratio_sum: f64,
    /// For complete messages: last delivery minus send time.
    pub latencies: Vec<Time>,
    /// Messages with at least `min_targets` owed instances, delivered at between 10% and
    /// 90% of them (neither almost all nor almost none); the first such message index.
    pub middle: u64,
    pub first_middle: Option<(usize, usize, usize, Vec<NodeId>)>,
    /// Messages some owed instance lacks; the first one with who lacks it.
    pub incomplete: u64,
    pub first_incomplete: Option<(usize, Instance)>,
}

#[derive(Debug, Default)]
pub struct Checker {
    pub fifo: bool,
    pub sent: Vec<SentMessage>,
    /// Messages larger than this many bytes count as large (coverage only).
    pub large_threshold: usize,
    /// Partitions of the run (the crashed-sender rule only relies on witnesses that were
    /// never cut off from the member since the message was sent).
    pub cuts: Vec<Cut>,
    delivered: HashMap<Instance, Vec<u64>>,
    expected_next: HashMap<StreamAt, u64>,
    /// View id -> (hash of the members, hash of the groups).
    views: HashMap<ViewId, (u64, u64)>,
    /// Per view id, the last shared copy checked against `views` (see `on_view_at`).
    hashed: HashMap<ViewId, Weak<View>>,
    /// Per instance, per group it was in: since when every view it installed listed it in
    /// the group (None: the last one did not).
    group_member: HashMap<Instance, Vec<(u64, Option<Time>)>>,
    /// Per (instance, group): since when the application has been in the group (None: it
    /// left), and whether it had left it before.
    app: HashMap<(Instance, u64), (Option<Time>, bool)>,
    /// `Lost` ranges `(first, end)` reported to an instance, per (group, stream).
    lost_ranges: HashMap<StreamAt, Vec<(u64, u64)>>,
    sessions: HashMap<(NodeId, u32), ()>,
    pub coverage: Coverage,
    pub violations: u64,
    pub messages: Vec<String>,
    pub deliveries: u64,
    pub lost_reports: u64,
    /// Nodes whose own deliveries are not checked (hostile members): they are neither owed
    /// messages nor witnesses. Their messages are owed to everyone else.
    pub excluded: Vec<NodeId>,
    /// The heard rule's window (0: not checked): a member heard from directly this recently
    /// must not be removed from the hearer's view. The simulator sets it to
    /// `Settings::suspect_timeout`, below any member's suspicion timeout: a crashed member is
    /// removed at least that long after it was last heard (it must be suspected first).
    pub heard_window: Time,
    /// When each instance last received a datagram from each instance (`on_heard`).
    heard: HashMap<(Instance, Instance), Time>,
    /// Each instance's last installed members (for the heard rule).
    last_members: HashMap<Instance, Vec<Member>>,
    /// Nodes that left the cluster on purpose (removed at once: not held to the heard rule).
    pub left_cluster: Vec<NodeId>,
}

impl Checker {
    pub fn new(fifo: bool) -> Self {
        Checker {
            fifo,
            large_threshold: usize::MAX,
            ..Default::default()
        }
    }

    pub fn violation(&mut self, what: String) {
        self.violations += 1;
        if self.messages.len() < 50 {
            self.messages.push(what);
        }
    }

    /// A sample line without counting a violation (the caller counted them).
    pub fn sample(&mut self, what: String) {
        if self.messages.len() < 50 {
            self.messages.push(what);
        }
    }

    /// Record a submitted message; returns its index (carried in its payload).
    pub fn on_send(&mut self, m: SentMessage) -> u64 {
        self.sent.push(m);
        (self.sent.len() - 1) as u64
    }

    /// The application at `at` joined `group` at `now`.
    pub fn on_join(&mut self, at: Instance, group: u64, now: Time) {
        let e = self.app.entry((at, group)).or_insert((None, false));
        if e.0.is_none() {
            e.0 = Some(now);
        }
    }

    /// The application at `at` left `group` at `now`: nothing more may be delivered or
    /// reported for it there until it joins again (FIFO then restarts from whatever
    /// comes first: what arrived meanwhile is not owed).
    pub fn on_leave(&mut self, at: Instance, group: u64) {
        let e = self.app.entry((at, group)).or_insert((None, false));
        e.0 = None;
        e.1 = true;
        self.expected_next.retain(|k, _| !(k.0 == at && k.1 == group));
    }

    /// Since when the application at `at` has been in `group` without leaving it.
    pub fn app_since(&self, at: Instance, group: u64) -> Option<Time> {
        self.app.get(&(at, group)).and_then(|e| e.0)
    }

    fn app_joined(&self, at: Instance, group: u64) -> bool {
        self.app_since(at, group).is_some()
    }

    pub fn on_deliver(&mut self, at: Instance, now: Time, id: MessageId, session: u32, payload: &[u8]) {
        let MessageId {
            group,
            sender,
            stream,
            seq,
        } = id;
        self.deliveries += 1;
        if !self.app_joined(at, group) {
            self.violation(format!(
                "{at:?} delivered {sender}/{stream}/{seq} of group {group:#x} its application is not in"
            ));
        }
        // No message delivered that was never sent (identity and content).
        let index = payload
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes);
        let Some(m) = index.and_then(|i| self.sent.get(i as usize)) else {
            self.violation(format!("{at:?} delivered a message never sent ({sender}/{seq})"));
            return;
        };
        if m.sender != sender
            || m.stream != stream
            || m.seq != seq
            || m.group != group
            || m.len != payload.len()
            || m.payload_hash != fnv(payload)
        {
            self.violation(format!(
                "{at:?} delivered {sender}/{stream}/{seq} whose payload or identity differs from what was sent"
            ));
            return;
        }
        let (large, sent_session) = (m.len > self.large_threshold, m.session);
        self.coverage.sessions_checked += 1;
        if sent_session != session {
            self.violation(format!(
                "{at:?} delivered {sender}/{stream}/{seq} with session {session}, submitted by session {sent_session}"
            ));
        }
        if self.sessions.insert((sender, session), ()).is_none() {
            self.coverage.distinct_sessions += 1;
        }
        if large {
            self.coverage.large_delivered += 1;
        }
        if self.app.get(&(at, group)).is_some_and(|e| e.1) {
            self.coverage.deliveries_after_rejoin += 1;
        }
        let index = index.unwrap_or_default() as usize;
        // No duplicate delivery (per instance).
        let bits = self.delivered.entry(at).or_default();
        let (w, b) = (index / 64, index % 64);
        if bits.len() <= w {
            bits.resize(w + 1, 0);
        }
        let twice = bits[w] & (1 << b) != 0;
        bits[w] |= 1 << b;
        if twice {
            self.violation(format!("{at:?} delivered {sender}/{stream}/{seq} twice"));
        }
        // FIFO per stream: each delivery is the next seq, or follows a Lost report.
        if self.fifo {
            let key = (at, group, sender, stream);
            if let Some(&exp) = self.expected_next.get(&key) {
                if seq != exp {
                    self.violation(format!(
                        "{at:?} delivered {sender}/{seq} out of FIFO order (expected {exp})"
                    ));
                }
            }
            self.expected_next.insert(key, seq + 1);
        }
        if at.0 == sender {
            self.violation(format!(
                "{at:?} was delivered its own message {sender}/{stream}/{seq}"
            ));
        } else if !twice {
            let m = &mut self.sent[index];
            m.deliveries += 1;
            m.last_delivery = m.last_delivery.max(now);
        }
    }

    pub fn on_lost(&mut self, at: Instance, group: u64, sender: NodeId, stream: u32, first: u64, count: u64) {
        self.lost_reports = self.lost_reports.saturating_add(count);
        if !self.app_joined(at, group) {
            self.violation(format!(
                "{at:?} was told {sender}/{stream}/{first}+{count} Lost in group {group:#x} its application is not in"
            ));
        }
        self.lost_ranges
            .entry((at, group, sender, stream))
            .or_default()
            .push((first, first.saturating_add(count)));
        if count == 0 {
            self.violation(format!("{at:?} reported an empty loss"));
        }
        if self.fifo {
            let key = (at, group, sender, stream);
            if let Some(&exp) = self.expected_next.get(&key) {
                if first != exp {
                    self.violation(format!(
                        "{at:?} reported {sender}/{first}+{count} lost, expected next {exp}"
                    ));
                }
            }
            self.expected_next.insert(key, first.saturating_add(count));
        }
    }

    /// Every member of a view agrees on it: one membership and one set of groups (ids,
    /// members and their streams) per view id, and the installing node is in it.
    pub fn on_view(&mut self, at: Instance, view: &View) {
        let me = Member {
            node: at.0,
            incarnation: at.1,
        };
        if !view.contains(me) {
            self.violation(format!("{at:?} installed view {:?} without being in it", view.id));
        }
        let mut h = Vec::with_capacity(view.members.len() * 8);
        for m in &view.members {
            h.extend_from_slice(&m.node.to_le_bytes());
            h.extend_from_slice(&m.incarnation.to_le_bytes());
        }
        let members = fnv(&h);
        h.clear();
        for gv in &view.groups {
            h.extend_from_slice(&gv.id.to_le_bytes());
            h.extend_from_slice(&(gv.members.len() as u64).to_le_bytes());
            for (n, s) in gv.members.iter().zip(&gv.streams) {
                h.extend_from_slice(&n.to_le_bytes());
                h.extend_from_slice(&s.to_le_bytes());
            }
            h.extend_from_slice(&(gv.streams.len() as u64).to_le_bytes());
        }
        let groups = fnv(&h);
        match self.views.get(&view.id) {
            Some(&(m, _)) if m != members => {
                self.violation(format!("view {:?} installed with two memberships", view.id))
            }
            Some(&(_, g)) if g != groups => self.violation(format!(
                "view {:?} installed with two different group memberships or streams",
                view.id
            )),
            Some(_) => {}
            None => {
                self.views.insert(view.id, (members, groups));
            }
        }
    }

    /// `at` received a datagram from instance `from` at `now` (the heard rule).
    pub fn on_heard(&mut self, at: Instance, from: Instance, now: Time) {
        if self.heard_window > 0 {
            self.heard.insert((at, from), now);
        }
    }

    /// The heard rule for a view installed at `at` at `now`: a member of its last view
    /// missing from this one (not restarted: no instance of its node in the view) must not
    /// have been heard from by `at` within `heard_window`, unless it left on purpose.
    /// Checked where the removal is decided on claims `at` could have weighed: at the
    /// coordinator that made the view, and at a member whose last view did not hold that
    /// coordinator (a merge: the view comes from a side that was cut off from it). A member
    /// installing its own coordinator's view follows that coordinator's first-hand
    /// suspicion, which may time out just as a partition heals (SWIM's race: the accused
    /// refutes once it hears of the suspicion, a round trip after the heal).
    fn check_removals(&mut self, at: Instance, now: Time, view: &View) {
        let Some(last) = self.last_members.insert(at, view.members.clone()) else {
            return;
        };
        let coordinator = view.id.coordinator;
        if coordinator != at.0 && last.iter().any(|m| m.node == coordinator) {
            return;
        }
        for m in last {
            if m.node == at.0
                || view.members.iter().any(|v| v.node == m.node)
                || self.left_cluster.contains(&m.node)
                || self.excluded.contains(&m.node)
            {
                continue;
            }
            self.coverage.removals_checked += 1;
            let Some(&t) = self.heard.get(&(at, (m.node, m.incarnation))) else {
                continue;
            };
            let ago = now.saturating_sub(t);
            if ago < self.heard_window {
                self.violation(format!(
                    "{at:?} removed ({}, {}) from its view ({:?}, at {} ms) {} ms after it last heard \
                     from it directly (less than the {} ms a suspicion must last)",
                    m.node,
                    m.incarnation,
                    view.id,
                    now / 1_000_000,
                    ago / 1_000_000,
                    self.heard_window / 1_000_000
                ));
            }
        }
    }

    /// A view installed at `at` at time `now`: as `on_view`, and tracks the instance's
    /// group membership for `check_delivered_or_lost`.
    pub fn on_view_at(&mut self, at: Instance, now: Time, view: &Arc<View>) {
        if self.heard_window > 0 {
            self.check_removals(at, now, view);
        }
        // A view shared by many nodes (interned) is hashed once: the weak reference keeps
        // its allocation, so the address names this view until it is replaced.
        let shared = self
            .hashed
            .get(&view.id)
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(view)));
        if shared {
            let me = Member {
                node: at.0,
                incarnation: at.1,
            };
            if !view.contains(me) {
                self.violation(format!("{at:?} installed view {:?} without being in it", view.id));
            }
        } else {
            self.on_view(at, view);
            self.hashed.insert(view.id, Arc::downgrade(view));
        }
        let entries = self.group_member.entry(at).or_default();
        for gv in &view.groups {
            if gv.members.contains(&at.0) && !entries.iter().any(|e| e.0 == gv.id) {
                entries.push((gv.id, None));
            }
        }
        for e in entries.iter_mut() {
            if !view.group(e.0).is_some_and(|ms| ms.contains(&at.0)) {
                e.1 = None;
            } else if e.1.is_none() {
                e.1 = Some(now);
            }
        }
    }

    /// Since when `at` has been a member of `group` without a break: in every view it
    /// installed, and with its application in the group (the later of the two).
    pub fn member_since(&self, at: Instance, group: u64) -> Option<Time> {
        let view = self
            .group_member
            .get(&at)
            .and_then(|es| es.iter().find(|e| e.0 == group))
            .and_then(|e| e.1)?;
        Some(view.max(self.app_since(at, group)?))
    }

    /// Whether a partition that was still on at or after `from` separated `a` and `b`.
    fn separated(&self, a: NodeId, b: NodeId, from: Time) -> bool {
        self.cuts
            .iter()
            .any(|c| c.end >= from && c.side.contains(&a) != c.side.contains(&b))
    }

    /// Bimodal multicast's promise, checked at the end of a run: no silent gap.
    ///
    /// A member `M` (an instance live at the end) that was in group g continuously (every
    /// view it installed listed it in g, across partitions that healed, and its application
    /// never left g) since before the first message of a stream of sender `S` must have
    /// each message `m` of that stream delivered or covered by a `Lost` reported to it:
    ///
    /// - when `S`'s instance is live at the end (whether or not it is still in g: a
    ///   stream it left behind lingers for repair), every `m`;
    /// - when `S`'s instance crashed (or left the cluster), every `m` that a witness
    ///   delivered: a live instance `D` other than `M` that has been in g since before `m`
    ///   was sent (so it held `m` and gossiped about it for a retention) and that no
    ///   partition separated from `M` since then. Its last messages may have reached no
    ///   one, and a member cut off from every holder until all of them forgot the stream
    ///   cannot learn of it: neither is checked.
    ///
    /// A restarted node never delivers the messages of its previous incarnation (they are
    /// its own stream), so it is not checked for them.
    pub fn check_delivered_or_lost(&mut self, live: &[Instance]) {
        // Per stream: when its first message was sent; per instance and group, its first
        // stream (others are streams after a rejoin).
        let mut first_sent: HashMap<(NodeId, u32, u32, u64), Time> = HashMap::new();
        let mut first_stream: HashMap<(NodeId, u32, u64), (Time, u32)> = HashMap::new();
        for m in &self.sent {
            let t = first_sent
                .entry((m.sender, m.sender_incarnation, m.stream, m.group))
                .or_insert(m.sent_at);
            *t = (*t).min(m.sent_at);
            let f = first_stream
                .entry((m.sender, m.sender_incarnation, m.group))
                .or_insert((m.sent_at, m.stream));
            if m.sent_at < f.0 {
                *f = (m.sent_at, m.stream);
            }
        }
        let mut since: HashMap<(Instance, u64), Option<Time>> = HashMap::new();
        // (member, sender instance, stream) -> (silent messages, first such seq, crashed)
        let mut silent: HashMap<(Instance, Instance, u32), (u64, u64, bool)> = HashMap::new();
        let mut cov = Coverage::default();
        for (idx, m) in self.sent.iter().enumerate() {
            let s = (m.sender, m.sender_incarnation);
            let sender_live = live.contains(&s);
            let first = first_sent[&(m.sender, m.sender_incarnation, m.stream, m.group)];
            let later_stream = first_stream[&(m.sender, m.sender_incarnation, m.group)].1 != m.stream;
            let witnesses: Vec<Instance> = if sender_live {
                Vec::new()
            } else {
                live.iter()
                    .copied()
                    .filter(|&d| {
                        d.0 != m.sender
                            && !self.excluded.contains(&d.0)
                            && self.has(d, idx)
                            && self.member_since(d, m.group).is_some_and(|t| t < m.sent_at)
                    })
                    .collect()
            };
            if !sender_live && witnesses.is_empty() {
                continue;
            }
            for &at in live {
                if at.0 == m.sender || self.excluded.contains(&at.0) {
                    continue;
                }
                let member_before = since
                    .entry((at, m.group))
                    .or_insert_with(|| self.member_since(at, m.group))
                    .is_some_and(|t| t < first);
                if !member_before {
                    continue;
                }
                if !sender_live
                    && !witnesses
                        .iter()
                        .any(|d| *d != at && !self.separated(d.0, at.0, m.sent_at))
                {
                    continue;
                }
                if sender_live {
                    cov.pairs_live_sender += 1;
                } else {
                    cov.pairs_crashed_sender += 1;
                }
                if m.sender_incarnation > 1 {
                    cov.pairs_restarted_sender += 1;
                }
                if later_stream {
                    cov.pairs_later_stream += 1;
                }
                if self.has(at, idx) {
                    continue;
                }
                let covered = self
                    .lost_ranges
                    .get(&(at, m.group, m.sender, m.stream))
                    .is_some_and(|rs| rs.iter().any(|&(f, e)| f <= m.seq && m.seq < e));
                if !covered {
                    let e = silent
                        .entry((at, s, m.stream))
                        .or_insert((0, m.seq, !sender_live));
                    e.0 += 1;
                    e.1 = e.1.min(m.seq);
                }
            }
        }
        self.coverage.pairs_live_sender += cov.pairs_live_sender;
        self.coverage.pairs_crashed_sender += cov.pairs_crashed_sender;
        self.coverage.pairs_restarted_sender += cov.pairs_restarted_sender;
        self.coverage.pairs_later_stream += cov.pairs_later_stream;
        let mut silent: Vec<_> = silent.into_iter().collect();
        silent.sort_unstable();
        for ((at, s, stream), (count, seq, crashed)) in silent {
            let what = if crashed {
                "crashed sender, delivered by a live witness"
            } else {
                "live sender"
            };
            self.violation(format!(
                "{at:?} neither delivered nor was told Lost of {count} messages of {s:?} stream {stream} \
                 (first seq {seq}; {what}), though a group member since before the stream's first message"
            ));
        }
    }

    /// Every `Lost` is true: the message exists (it was sent, and not by the member told),
    /// and the member never delivers it, before or after the report.
    pub fn check_lost_true(&mut self) {
        let index = self.index_map();
        let mut keys: Vec<_> = self.lost_ranges.keys().copied().collect();
        keys.sort_unstable();
        let limit = self.sent.len() as u64;
        let mut found = Vec::new();
        for key in keys {
            let (at, group, sender, stream) = key;
            let (mut never_sent, mut lied, mut first_lie) = (0u64, 0u64, None);
            for &(f, e) in &self.lost_ranges[&key] {
                if e - f > limit {
                    never_sent += e - f;
                    continue;
                }
                for seq in f..e {
                    match index.get(&(group, sender, stream, seq)) {
                        None => never_sent += 1,
                        Some(&i) if self.has(at, i) => {
                            lied += 1;
                            first_lie.get_or_insert(seq);
                        }
                        Some(_) => self.coverage.lost_verified += 1,
                    }
                }
            }
            if at.0 == sender {
                found.push(format!(
                    "{at:?} was told messages of its own node {sender}/{stream} Lost"
                ));
            }
            if never_sent > 0 {
                found.push(format!(
                    "{at:?} was told {never_sent} messages of {sender}/{stream} Lost that were never sent"
                ));
            }
            if lied > 0 {
                found.push(format!(
                    "{at:?} was told {lied} messages of {sender}/{stream} Lost that it delivered (first seq {})",
                    first_lie.unwrap_or_default()
                ));
            }
        }
        for f in found {
            self.violation(f);
        }
    }

    /// In a run whose losses repair covers, no member is told `Lost` of a message it was
    /// owed: one sent while its application was in the group (and stayed in it to the
    /// end). History from before it joined, which a late joiner may be offered and then
    /// told is lost, is only counted (`Coverage::lost_not_owed`).
    pub fn check_no_lost(&mut self, why: &str) {
        let index = self.index_map();
        let mut keys: Vec<_> = self.lost_ranges.keys().copied().collect();
        keys.sort_unstable();
        let (mut owed, mut first, mut not_owed) = (0u64, None, 0u64);
        for key in keys {
            let (at, group, sender, stream) = key;
            let since = self.app_since(at, group);
            for &(f, e) in &self.lost_ranges[&key] {
                for seq in f..e.min(f.saturating_add(self.sent.len() as u64)) {
                    let Some(&i) = index.get(&(group, sender, stream, seq)) else {
                        continue; // never sent: check_lost_true's business
                    };
                    if since.is_some_and(|t| t <= self.sent[i].sent_at) {
                        owed += 1;
                        first.get_or_insert((at, sender, stream, seq));
                    } else {
                        not_owed += 1;
                    }
                }
            }
        }
        self.coverage.lost_not_owed += not_owed;
        if let Some((at, sender, stream, seq)) = first {
            self.violation(format!(
                "{owed} owed messages reported Lost where repair covers the losses ({why}); \
                 first: {at:?} told {sender}/{stream}/{seq}"
            ));
        }
    }

    /// `(group, sender, stream, seq)` -> index of the sent message.
    fn index_map(&self) -> HashMap<(u64, NodeId, u32, u64), usize> {
        self.sent
            .iter()
            .enumerate()
            .map(|(i, m)| ((m.group, m.sender, m.stream, m.seq), i))
            .collect()
    }

    /// The instances owed message `idx` in a run without crashes: live ones other than the
    /// sender whose application was in the group from when it was sent to the end.
    fn owed<'a>(&'a self, idx: usize, live: &'a [Instance]) -> impl Iterator<Item = Instance> + 'a {
        let m = &self.sent[idx];
        live.iter().copied().filter(move |i| {
            i.0 != m.sender
                && !self.excluded.contains(&i.0)
                && self.app_since(*i, m.group).is_some_and(|t| t <= m.sent_at)
        })
    }

    /// Who got what: per message, the fraction of its owed instances that delivered it.
    /// Messages with fewer than `min_targets` owed instances are not counted as `middle`.
    pub fn delivery_summary(&self, live: &[Instance], min_targets: usize) -> DeliverySummary {
        let mut s = DeliverySummary {
            histogram: vec![0; 11],
            ..Default::default()
        };
        for (idx, m) in self.sent.iter().enumerate() {
            let (mut targets, mut got, mut lacking) = (0usize, 0usize, None);
            for i in self.owed(idx, live) {
                targets += 1;
                if self.has(i, idx) {
                    got += 1;
                } else {
                    lacking.get_or_insert(i);
                }
            }
            let frac = if targets == 0 {
                1.0
            } else {
                got as f64 / targets as f64
            };
            s.ratio_sum += frac;
            if got == targets {
                s.complete += 1;
                s.histogram[10] += 1;
                s.latencies.push(m.last_delivery.saturating_sub(m.sent_at));
            } else {
                s.histogram[((frac * 10.0) as usize).min(9)] += 1;
                s.incomplete += 1;
                if let Some(i) = lacking {
                    s.first_incomplete.get_or_insert((idx, i));
                }
                if targets >= min_targets && (0.1..0.9).contains(&frac) {
                    s.middle += 1;
                    if s.first_middle.is_none() {
                        let lacking: Vec<NodeId> = self
                            .owed(idx, live)
                            .filter(|i| !self.has(*i, idx))
                            .map(|i| i.0)
                            .collect();
                        s.first_middle = Some((idx, got, targets, lacking));
                    }
                }
            }
        }
        s
    }

    /// Every message reached every owed instance (runs without crashes or partitions and
    /// with losses that repair covers).
    pub fn check_complete(&mut self, live: &[Instance], why: &str) {
        let s = self.delivery_summary(live, usize::MAX);
        if let Some((idx, at)) = s.first_incomplete {
            let m = &self.sent[idx];
            let what = format!(
                "{} messages did not reach every live member ({why}); first: {}/{}/{} at {at:?}",
                s.incomplete, m.sender, m.stream, m.seq
            );
            self.violation(what);
        }
    }

    /// Bimodal delivery: no message with at least `min_targets` owed instances reached
    /// between 10% and 90% of them.
    pub fn check_bimodal(&mut self, live: &[Instance], min_targets: usize) {
        let s = self.delivery_summary(live, min_targets);
        if let Some((idx, got, targets, lacking)) = s.first_middle {
            let m = &self.sent[idx];
            let what = format!(
                "{} messages reached neither almost all nor almost none of the live members; first: \
                 {}/{}/{} delivered at {got} of {targets} (not at nodes {lacking:?})",
                s.middle, m.sender, m.stream, m.seq
            );
            self.violation(what);
        }
    }

    /// Whether every owed instance delivered every message (for stopping a run early).
    pub fn all_delivered(&self, live: &[Instance]) -> bool {
        (0..self.sent.len()).all(|idx| self.owed(idx, live).all(|i| self.has(i, idx)))
    }

    /// Whether `at` delivered message `index`.
    pub fn has(&self, at: Instance, index: usize) -> bool {
        self.delivered
            .get(&at)
            .and_then(|b| b.get(index / 64))
            .is_some_and(|w| w & (1 << (index % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tutti_proto::{GroupView, ViewId};

    const G: u64 = 7;

    fn mid(group: u64, sender: NodeId, stream: u32, seq: u64) -> MessageId {
        MessageId {
            group,
            sender,
            stream,
            seq,
        }
    }

    /// A checker whose instances (1,1), (2,1), ... (n,1) joined group 7 at time 0.
    fn checker(fifo: bool, n: u32) -> Checker {
        let mut c = Checker::new(fifo);
        for i in 1..=n {
            c.on_join((i, 1), G, 0);
        }
        c
    }

    /// Message `seq` of sender instance `s` in stream `stream`, sent at `at`.
    fn send_from(c: &mut Checker, s: Instance, stream: u32, seq: u64, at: Time) -> Vec<u8> {
        let idx = c.sent.len() as u64;
        let p = make_payload(idx, 16);
        c.on_send(SentMessage {
            sender: s.0,
            sender_incarnation: s.1,
            stream,
            group: G,
            seq,
            session: 3,
            payload_hash: fnv(&p),
            len: p.len(),
            sent_at: at,
            deliveries: 0,
            last_delivery: 0,
        });
        p
    }

    fn send(c: &mut Checker, seq: u64) -> Vec<u8> {
        send_from(c, (1, 1), 1, seq, 0)
    }

    fn deliver(c: &mut Checker, at: Instance, id: MessageId, p: &[u8]) {
        c.on_deliver(at, 0, id, 3, p);
    }

    fn member(n: NodeId) -> Member {
        Member {
            node: n,
            incarnation: 1,
        }
    }

    /// A view with members `nodes` (incarnation 1), all in group 7 with stream 1.
    fn view(counter: u64, nodes: &[NodeId]) -> View {
        View {
            id: ViewId {
                counter,
                coordinator: nodes[0],
                coordinator_incarnation: 1,
            },
            members: nodes.iter().map(|&n| member(n)).collect(),
            addrs: Vec::new(),
            groups: vec![GroupView {
                id: G,
                members: nodes.to_vec(),
                streams: nodes.iter().map(|_| 1).collect(),
            }],
        }
    }

    /// Every instance 1..=n installs a view of all of them at time 0.
    fn all_in_group(c: &mut Checker, n: u32) -> Vec<Instance> {
        let nodes: Vec<NodeId> = (1..=n).collect();
        let v = view(1, &nodes);
        for i in 1..=n {
            c.on_view_at((i, 1), 0, &Arc::new(v.clone()));
        }
        (1..=n).map(|i| (i, 1)).collect()
    }

    #[test]
    fn good_history_passes() {
        let mut c = checker(true, 2);
        let p0 = send(&mut c, 0);
        let _p1 = send(&mut c, 1);
        let p2 = send(&mut c, 2);
        deliver(&mut c, (2, 1), mid(G, 1, 1, 0), &p0);
        c.on_lost((2, 1), G, 1, 1, 1, 1);
        deliver(&mut c, (2, 1), mid(G, 1, 1, 2), &p2);
        c.check_lost_true();
        assert_eq!(c.violations, 0, "{:?}", c.messages);
        assert_eq!(c.coverage.lost_verified, 1);
        assert_eq!(c.coverage.sessions_checked, 2);
    }

    #[test]
    fn duplicate_is_reported() {
        let mut c = checker(true, 2);
        let p = send(&mut c, 0);
        deliver(&mut c, (2, 1), mid(G, 1, 1, 0), &p);
        deliver(&mut c, (2, 1), mid(G, 1, 1, 0), &p);
        assert!(c.violations >= 1);
    }

    #[test]
    fn fifo_violation_is_reported() {
        let mut c = checker(true, 2);
        let p0 = send(&mut c, 0);
        let p1 = send(&mut c, 1);
        deliver(&mut c, (2, 1), mid(G, 1, 1, 1), &p1);
        assert_eq!(c.violations, 0);
        deliver(&mut c, (2, 1), mid(G, 1, 1, 0), &p0);
        assert_eq!(c.violations, 1);
        // A gap without a Lost report is a FIFO violation too.
        let mut c = checker(true, 2);
        let p0 = send(&mut c, 0);
        let _ = send(&mut c, 1);
        let p2 = send(&mut c, 2);
        deliver(&mut c, (2, 1), mid(G, 1, 1, 0), &p0);
        deliver(&mut c, (2, 1), mid(G, 1, 1, 2), &p2);
        assert_eq!(c.violations, 1);
    }

    #[test]
    fn phantom_and_corrupt_deliveries_are_reported() {
        let mut c = checker(false, 2);
        let p = send(&mut c, 0);
        deliver(&mut c, (2, 1), mid(G, 1, 1, 0), &make_payload(99, 16));
        assert_eq!(c.violations, 1);
        let mut bad = p.clone();
        bad[10] ^= 1;
        deliver(&mut c, (2, 1), mid(G, 1, 1, 0), &bad);
        assert_eq!(c.violations, 2);
        deliver(&mut c, (2, 1), mid(G, 3, 1, 0), &p);
        assert_eq!(c.violations, 3);
        deliver(&mut c, (2, 1), mid(G, 1, 1, 0), b"abc");
        assert_eq!(c.violations, 4);
        // Truncated: same first bytes, shorter.
        deliver(&mut c, (2, 1), mid(G, 1, 1, 0), &p[..12]);
        assert_eq!(c.violations, 5);
    }

    /// The session delivered must be the one that submitted the message.
    #[test]
    fn wrong_session_is_reported() {
        let mut c = checker(true, 2);
        let p = send(&mut c, 0);
        c.on_deliver((2, 1), 0, mid(G, 1, 1, 0), 4, &p);
        assert_eq!(c.violations, 1, "{:?}", c.messages);
        assert!(c.messages[0].contains("session 4"), "{:?}", c.messages);
    }

    /// Nothing is delivered or reported Lost for a group the application left; after it
    /// joins again, FIFO starts over (what arrived meanwhile was not owed).
    #[test]
    fn delivery_while_left_is_reported_and_fifo_restarts_after_rejoin() {
        let mut c = checker(true, 2);
        let p0 = send(&mut c, 0);
        let _p1 = send(&mut c, 1);
        let p2 = send(&mut c, 2);
        deliver(&mut c, (2, 1), mid(G, 1, 1, 0), &p0);
        c.on_leave((2, 1), G);
        c.on_lost((2, 1), G, 1, 1, 1, 1);
        assert_eq!(c.violations, 1, "{:?}", c.messages);
        deliver(&mut c, (2, 1), mid(G, 1, 1, 2), &p2);
        assert_eq!(c.violations, 2, "{:?}", c.messages);
        let mut c = checker(true, 2);
        let p0 = send(&mut c, 0);
        let _p1 = send(&mut c, 1);
        let _p2 = send(&mut c, 2);
        let p3 = send(&mut c, 3);
        deliver(&mut c, (2, 1), mid(G, 1, 1, 0), &p0);
        c.on_leave((2, 1), G);
        c.on_join((2, 1), G, 10);
        // Seq 3 next: no FIFO complaint (1 and 2 were not owed).
        deliver(&mut c, (2, 1), mid(G, 1, 1, 3), &p3);
        assert_eq!(c.violations, 0, "{:?}", c.messages);
        assert_eq!(c.coverage.deliveries_after_rejoin, 1);
    }

    /// A member in the group since before a sender's first message that neither got a
    /// message nor was told it is lost: a silent gap, reported once per (member, stream).
    #[test]
    fn silent_gap_is_reported() {
        let mut c = checker(true, 2);
        let live = all_in_group(&mut c, 2);
        let p0 = send(&mut c, 0);
        let _ = send(&mut c, 1);
        let _ = send(&mut c, 2);
        let _ = send(&mut c, 3);
        deliver(&mut c, (2, 1), mid(G, 1, 1, 0), &p0);
        c.on_lost((2, 1), G, 1, 1, 1, 2);
        c.check_delivered_or_lost(&live);
        assert_eq!(c.violations, 0, "{:?}", c.messages);
        // Seq 3 is neither: caught once the member was in the group before the first send
        // (above, both at time 0, it was not checked).
        c.sent.iter_mut().for_each(|m| m.sent_at = 5);
        c.check_delivered_or_lost(&live);
        assert_eq!(c.violations, 1, "{:?}", c.messages);
        assert_eq!(c.coverage.pairs_live_sender, 4);
    }

    /// A member whose application left the group and joined it again is not continuous:
    /// streams that began before it came back are not checked at it.
    #[test]
    fn a_member_that_left_is_not_continuous() {
        let mut c = checker(true, 2);
        let live = all_in_group(&mut c, 2);
        send_from(&mut c, (1, 1), 1, 0, 5);
        c.on_leave((2, 1), G);
        c.on_join((2, 1), G, 7);
        c.check_delivered_or_lost(&live);
        assert_eq!(c.violations, 0, "{:?}", c.messages);
        assert_eq!(c.coverage.pairs_live_sender, 0);
    }

    /// A crashed sender's message that a live witness delivered must be delivered or
    /// reported Lost at every other continuous member; one nobody live delivered is not
    /// checked; nor is one whose only witness was cut off from the member since it was sent.
    #[test]
    fn crashed_sender_gap_is_reported_when_a_witness_delivered() {
        // Sender (1,1) crashed (not in `live`); members 2, 3, 4.
        let setup = || {
            let mut c = checker(true, 4);
            all_in_group(&mut c, 4);
            let p0 = send_from(&mut c, (1, 1), 1, 0, 5);
            let p1 = send_from(&mut c, (1, 1), 1, 1, 6);
            let _p2 = send_from(&mut c, (1, 1), 1, 2, 7);
            (c, p0, p1)
        };
        let live = [(2, 1), (3, 1), (4, 1)];
        // Everyone got 0; 3 got 1 (witness), 2 and 4 neither got it nor were told: two
        // silent gaps. Seq 2 reached nobody: not checked.
        let (mut c, p0, p1) = setup();
        for at in live {
            deliver(&mut c, at, mid(G, 1, 1, 0), &p0);
        }
        deliver(&mut c, (3, 1), mid(G, 1, 1, 1), &p1);
        c.check_delivered_or_lost(&live);
        assert_eq!(c.violations, 2, "{:?}", c.messages);
        assert!(c.messages[0].contains("crashed sender"), "{:?}", c.messages);
        assert_eq!(c.coverage.pairs_crashed_sender, 3 + 2);
        // Told Lost: fine.
        let (mut c, p0, p1) = setup();
        for at in live {
            deliver(&mut c, at, mid(G, 1, 1, 0), &p0);
        }
        deliver(&mut c, (3, 1), mid(G, 1, 1, 1), &p1);
        c.on_lost((2, 1), G, 1, 1, 1, 1);
        c.on_lost((4, 1), G, 1, 1, 1, 1);
        c.check_delivered_or_lost(&live);
        assert_eq!(c.violations, 0, "{:?}", c.messages);
        // The witness was cut off from 2 and 4 after seq 1 was sent: not checked.
        let (mut c, p0, p1) = setup();
        for at in live {
            deliver(&mut c, at, mid(G, 1, 1, 0), &p0);
        }
        deliver(&mut c, (3, 1), mid(G, 1, 1, 1), &p1);
        c.cuts.push(Cut {
            start: 100,
            end: 200,
            side: vec![3],
        });
        c.check_delivered_or_lost(&live);
        assert_eq!(c.violations, 0, "{:?}", c.messages);
    }

    /// The stream of a restarted instance, and a node's second stream after it left the
    /// group and joined again, are checked like any other.
    #[test]
    fn restarted_and_later_streams_are_checked() {
        let mut c = checker(true, 3);
        let live = all_in_group(&mut c, 3);
        c.on_join((1, 9), G, 1);
        let live = [live[1], live[2], (1, 9)];
        send_from(&mut c, (1, 9), 40, 0, 5);
        send_from(&mut c, (2, 1), 1, 0, 5);
        send_from(&mut c, (2, 1), 2, 0, 9);
        c.check_delivered_or_lost(&live);
        // (1,9)'s message at 2 and 3, (2,1)'s two at 3 (1,9 joined no view): all silent.
        assert_eq!(c.violations, 4, "{:?}", c.messages);
        assert_eq!(c.coverage.pairs_restarted_sender, 2);
        assert_eq!(c.coverage.pairs_later_stream, 1);
    }

    /// A `Lost` report must be true: not for a message the member delivered (before or
    /// after the report), not for a message never sent, not for the member's own node.
    #[test]
    fn false_lost_reports_are_reported() {
        let mut c = checker(true, 2);
        let p0 = send(&mut c, 0);
        let p1 = send(&mut c, 1);
        deliver(&mut c, (2, 1), mid(G, 1, 1, 0), &p0);
        // Delivered before the report.
        c.on_lost((2, 1), G, 1, 1, 0, 1);
        c.check_lost_true();
        assert_eq!(c.violations, 2, "{:?}", c.messages); // FIFO + lie
                                                         // Delivered after the report.
        let mut c = checker(false, 2);
        let _p0 = send(&mut c, 0);
        let p1b = send(&mut c, 1);
        assert_eq!(p1, p1b);
        c.on_lost((2, 1), G, 1, 1, 1, 1);
        deliver(&mut c, (2, 1), mid(G, 1, 1, 1), &p1b);
        c.check_lost_true();
        assert_eq!(c.violations, 1, "{:?}", c.messages);
        assert!(c.messages[0].contains("that it delivered"), "{:?}", c.messages);
        // Never sent: beyond the stream, in another stream, a huge range.
        let mut c = checker(false, 2);
        send(&mut c, 0);
        c.on_lost((2, 1), G, 1, 1, 1, 1);
        c.on_lost((2, 1), G, 1, 2, 0, 1);
        c.on_lost((2, 1), G, 1, 3, 0, u64::MAX / 2);
        c.check_lost_true();
        assert_eq!(c.violations, 3, "{:?}", c.messages);
        // Its own node's messages.
        let mut c = checker(false, 2);
        send(&mut c, 0);
        c.on_lost((1, 1), G, 1, 1, 0, 1);
        c.check_lost_true();
        assert_eq!(c.violations, 1, "{:?}", c.messages);
        assert!(c.messages[0].contains("its own node"), "{:?}", c.messages);
    }

    /// Where repair covers the losses, a `Lost` of a message the member was owed is a
    /// violation; of one sent before it joined, only counted.
    #[test]
    fn lost_where_repair_covers_is_reported() {
        let mut c = checker(true, 3);
        send_from(&mut c, (1, 1), 1, 0, 5);
        send_from(&mut c, (1, 1), 1, 1, 6);
        c.check_no_lost("test");
        assert_eq!(c.violations, 0);
        c.on_lost((2, 1), G, 1, 1, 0, 1);
        c.check_no_lost("test");
        assert_eq!(c.violations, 1, "{:?}", c.messages);
        // Instance 3 joined after seq 0 was sent, before seq 1.
        let mut c = checker(true, 2);
        c.on_join((3, 1), G, 6);
        send_from(&mut c, (1, 1), 1, 0, 5);
        send_from(&mut c, (1, 1), 1, 1, 6);
        c.on_lost((3, 1), G, 1, 1, 0, 1);
        c.check_no_lost("test");
        assert_eq!(c.violations, 0, "{:?}", c.messages);
        assert_eq!(c.coverage.lost_not_owed, 1);
        c.on_lost((3, 1), G, 1, 1, 1, 1);
        c.check_no_lost("test");
        assert_eq!(c.violations, 1, "{:?}", c.messages);
    }

    /// Every owed instance must deliver every message; an instance whose application
    /// joined after a message was sent is not owed it.
    #[test]
    fn incomplete_delivery_is_reported() {
        let mut c = checker(true, 3);
        let p0 = send_from(&mut c, (1, 1), 1, 0, 5);
        deliver(&mut c, (2, 1), mid(G, 1, 1, 0), &p0);
        let live = [(1, 1), (2, 1), (3, 1)];
        c.check_complete(&live, "test");
        assert_eq!(c.violations, 1, "{:?}", c.messages);
        assert!(c.messages[0].contains("(3, 1)"), "{:?}", c.messages);
        // Instance 3 left and came back after the message: not owed.
        c.on_leave((3, 1), G);
        c.on_join((3, 1), G, 6);
        c.check_complete(&live, "test");
        assert_eq!(c.violations, 1, "{:?}", c.messages);
        assert!(c.all_delivered(&live));
    }

    /// A message delivered at half the members is neither almost all nor almost none.
    #[test]
    fn non_bimodal_delivery_is_reported() {
        let mut c = checker(false, 11);
        let live: Vec<Instance> = (1..=11).map(|i| (i, 1)).collect();
        let p0 = send(&mut c, 0);
        let p1 = send(&mut c, 1);
        let _p2 = send(&mut c, 2);
        for i in 2..=11 {
            deliver(&mut c, (i, 1), mid(G, 1, 1, 0), &p0); // all 10
        }
        for i in 2..=10 {
            deliver(&mut c, (i, 1), mid(G, 1, 1, 1), &p1); // 9 of 10: almost all
        }
        // Seq 2 nowhere: almost none.
        c.check_bimodal(&live, 10);
        assert_eq!(c.violations, 0, "{:?}", c.messages);
        let s = c.delivery_summary(&live, 10);
        assert_eq!(s.histogram, vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1]);
        let p3 = send(&mut c, 3);
        for i in 2..=6 {
            deliver(&mut c, (i, 1), mid(G, 1, 1, 3), &p3); // 5 of 10
        }
        c.check_bimodal(&live, 10);
        assert_eq!(c.violations, 1, "{:?}", c.messages);
        // Too few targets to tell: not checked.
        c.check_bimodal(&live, 11);
        assert_eq!(c.violations, 1, "{:?}", c.messages);
    }

    #[test]
    fn view_disagreement_is_reported() {
        let mut c = Checker::new(true);
        let id = ViewId {
            counter: 3,
            coordinator: 1,
            coordinator_incarnation: 1,
        };
        c.on_view(
            (1, 1),
            &View {
                id,
                members: vec![member(1), member(2)],
                addrs: Vec::new(),
                groups: vec![],
            },
        );
        assert_eq!(c.violations, 0);
        c.on_view(
            (2, 1),
            &View {
                id,
                members: vec![member(1), member(2), member(3)],
                addrs: Vec::new(),
                groups: vec![],
            },
        );
        assert_eq!(c.violations, 1);
        c.on_view(
            (5, 1),
            &View {
                id,
                members: vec![member(1), member(2)],
                addrs: Vec::new(),
                groups: vec![],
            },
        );
        assert_eq!(c.violations, 2);
    }

    /// Two installations of one view id must agree on its groups: members and streams.
    #[test]
    fn view_group_disagreement_is_reported() {
        let mut c = Checker::new(true);
        let v = view(4, &[1, 2, 3]);
        c.on_view((1, 1), &v);
        c.on_view((2, 1), &v);
        assert_eq!(c.violations, 0);
        let mut other = v.clone();
        other.groups[0].members = vec![1, 2];
        other.groups[0].streams = vec![1, 1];
        c.on_view((3, 1), &other);
        assert_eq!(c.violations, 1, "{:?}", c.messages);
        let mut other = v.clone();
        other.groups[0].streams[2] = 9;
        c.on_view((3, 1), &other);
        assert_eq!(c.violations, 2, "{:?}", c.messages);
        let mut other = v.clone();
        other.groups[0].id = 8;
        c.on_view((3, 1), &other);
        assert_eq!(c.violations, 3, "{:?}", c.messages);
    }

    /// The heard rule: a member heard from directly within the window must not be removed;
    /// one heard from longer ago, one that left on purpose or one replaced by its restart
    /// may be.
    #[test]
    fn removing_a_member_just_heard_from_is_reported() {
        let ms = tutti_proto::MILLIS;
        let mut c = Checker::new(true);
        c.heard_window = 400 * ms;
        let v = |counter: u64, nodes: &[(NodeId, u32)]| {
            Arc::new(View {
                id: ViewId {
                    counter,
                    coordinator: 1,
                    coordinator_incarnation: 1,
                },
                members: nodes
                    .iter()
                    .map(|&(node, incarnation)| Member { node, incarnation })
                    .collect(),
                addrs: Vec::new(),
                groups: vec![],
            })
        };
        let at = (1, 1);
        c.on_view_at(at, 0, &v(1, &[(1, 1), (2, 1), (3, 1), (4, 1)]));
        c.on_heard(at, (2, 1), 1_000 * ms);
        c.on_heard(at, (3, 1), 1_000 * ms);
        c.on_heard(at, (4, 1), 1_000 * ms);
        // 3 heard 500 ms ago: may go.
        c.on_view_at(at, 1_500 * ms, &v(2, &[(1, 1), (2, 1), (4, 1)]));
        assert_eq!(c.violations, 0, "{:?}", c.messages);
        // 2 heard 100 ms ago: may not.
        c.on_heard(at, (2, 1), 1_400 * ms);
        c.on_view_at(at, 1_500 * ms, &v(3, &[(1, 1), (4, 1)]));
        assert_eq!(c.violations, 1, "{:?}", c.messages);
        // 4 restarted (replaced), then left on purpose: neither is a violation.
        c.on_heard(at, (4, 1), 1_500 * ms);
        c.on_view_at(at, 1_500 * ms, &v(4, &[(1, 1), (4, 2)]));
        c.on_heard(at, (4, 2), 1_500 * ms);
        c.left_cluster.push(4);
        c.on_view_at(at, 1_500 * ms, &v(5, &[(1, 1)]));
        assert_eq!(c.violations, 1, "{:?}", c.messages);
        assert_eq!(c.coverage.removals_checked, 2);
        // Member 2 installs its coordinator's views: that coordinator decided (checked
        // there). A view of a coordinator it did not have (a merge) is checked at 2 too.
        let two = (2, 1);
        c.on_view_at(two, 0, &v(11, &[(1, 1), (2, 1), (3, 1)]));
        c.on_heard(two, (3, 1), 1_900 * ms);
        c.on_view_at(two, 2_000 * ms, &v(12, &[(1, 1), (2, 1)]));
        assert_eq!(c.violations, 1, "{:?}", c.messages);
        let mut merged = (*v(13, &[(0, 1), (2, 1)])).clone();
        merged.id.coordinator = 0;
        c.on_heard(two, (1, 1), 1_900 * ms);
        c.on_view_at(two, 2_000 * ms, &Arc::new(merged));
        assert_eq!(c.violations, 2, "{:?}", c.messages);
    }
}
