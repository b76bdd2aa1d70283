//! The `evs` partition policy: extended virtual synchrony over *list epochs*. One node's
//! member of one `evs` group holds the [`OrderedMember`] of the list it is installed in and,
//! while the view changes, the one of the new list it gathers in; it delivers the
//! transitional configuration between them. Rules and proof: `docs/ordered.md`, "Partition
//! policy `evs`".
//!
//! - Every side change (a split, a merge, a crash, a join) opens a new list epoch on a
//!   memory node placed on the side: members of a side then agree on their list whatever
//!   views each saw before, and no backup is ever promoted (its primary may be appending on
//!   another side). Every member appends `EvsJoin { from }` (its old list, where it
//!   delivered to and what it holds there) and the founder (lowest node of the side)
//!   appends `Install` once the side joined or `gather_timeout` passed.
//! - Transitional set: in an `evs` list every entry is delivered only once every member
//!   holds it, so members moving together all hold what any of them delivered. With `T` the
//!   largest `delivered` among the joins from one old list, the movers holding up to `T`
//!   deliver up to `T` and form the transitional configuration; a mover holding less (only
//!   possible for one an earlier entry already removed) moves alone, delivering no more.
//! - A sender's messages never appended to the old list go again in the new one; those it
//!   appended and did not deliver are delivered by whichever members' `T` covers them, maybe
//!   by none (counted `unconfirmed`).
//! - Agreed delivery (`OrderedSettings::evs_agreed`): a message that is not `safe` is
//!   delivered once learned. Movers whose side holds the old list's founder then *drain*
//!   the old list before they join the new one: each appends a `Seal`, and reads until it
//!   holds everything before the first one, which nobody delivers past; so the movers
//!   again hold what any of them delivered. Own messages past the seal go again.

use super::entry::{EpochId, JoinFrom, RemoveReason};
use super::member::{ConfigEvent, OrderedMember, Output, Status, SubmitRefused};
use super::{epoch_memnode, OrderedSettings, PartitionPolicy};
use crate::minitx::{MemnodeId, MinitxSettings};
use crate::{GroupId, NodeId, Time};
use std::collections::{BTreeMap, VecDeque};

/// Counters of an `evs` member (monotonic).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EvsCounters {
    /// New list epochs this member joined (splits without the old primary, merges, first
    /// joins).
    pub epochs_joined: u64,
    /// Transitional configurations delivered, and those this member was alone in.
    pub transitional: u64,
    pub transitional_alone: u64,
    /// Old-list entries a mover could not deliver in its transitional configuration (must
    /// stay 0).
    pub transitional_missing: u64,
    /// Old-list entries delivered in a transitional configuration past the largest
    /// `delivered` of its movers (what they all held while the configuration was only them).
    pub transitional_extended: u64,
    /// Messages sent again in a new list (queued in the old one, never appended), and those
    /// dropped because the new list's `max_outgoing` was reached.
    pub resent: u64,
    pub resend_dropped: u64,
    /// This member's messages appended (or maybe appended) to a list it left before
    /// delivering them: the members that stay in that list deliver them, this one does not.
    pub unconfirmed: u64,
    /// Minitransaction messages for a memory node neither list uses (late answers of an
    /// abandoned list).
    pub stale_minitx: u64,
    /// Progress told about a list neither of this member's lists is (late, or malformed).
    pub stale_held: u64,
    /// Committed-entry pushes refused: not from the founder of a list this member is in
    /// (late, or forged).
    pub stale_committed: u64,
    /// `agreed`: drains of an old list that ended at its `Seal`, and those that ended at
    /// their deadline instead (the founder's memory node gone, or slow).
    pub drains: u64,
    pub drains_timed_out: u64,
    /// Lists this member could not join: their start was reclaimed before it read it (a
    /// late join to a list past `list_slots` entries). It asked for a new view, whose side
    /// opens a list that every member joins from its start.
    pub new_sides_asked: u64,
}

/// One node's member of one `evs` ordered group. Inputs and outputs are those of
/// [`OrderedMember`], with message epochs `list number << 32 | join position` and
/// [`Output::Configuration`] for every configuration change; the view arrives by
/// [`EvsMember::set_side`].
pub struct EvsMember {
    node: NodeId,
    group: GroupId,
    settings: OrderedSettings,
    minitx: MinitxSettings,
    incarnation: u32,
    /// The list of the last configuration this member was installed in, and the primary
    /// host of its memory node.
    installed: Option<(OrderedMember, NodeId)>,
    /// The new list this member gathers in, and the primary host of its memory node.
    gathering: Option<(OrderedMember, NodeId)>,
    /// The number of the last side the view gave (older ones are ignored).
    last_side: Option<u32>,
    /// The application left: later sides do not bring this member back.
    leaving: bool,
    /// `agreed` delivery: the installed list drains (reads up to its `Seal`) before this
    /// member joins the gathered one, until this time at most.
    drain_deadline: Option<Time>,
    /// The list being gathered could not be joined and a new side was asked for (once
    /// per gathered list).
    new_side_asked: bool,
    out: VecDeque<Output>,
    counters: EvsCounters,
}

impl EvsMember {
    /// A member of a group created by configuration with `members`, its first list on
    /// `memnode_host` (`ordered::MEMNODE`).
    pub fn initial(
        node: NodeId,
        group: GroupId,
        members: &[NodeId],
        memnode_host: NodeId,
        settings: OrderedSettings,
        minitx: MinitxSettings,
    ) -> EvsMember {
        let mut m = EvsMember::new(node, group, settings, minitx);
        let member = OrderedMember::initial(
            node,
            group,
            members,
            memnode_host,
            m.settings.clone(),
            m.minitx.clone(),
        );
        m.installed = Some((member, memnode_host));
        m
    }

    /// A node not in the group yet: it joins with the next [`EvsMember::set_side`] (a new
    /// list epoch, merged with whoever is on its side; no state transfer under `evs`).
    pub fn new(node: NodeId, group: GroupId, settings: OrderedSettings, minitx: MinitxSettings) -> EvsMember {
        let settings = OrderedSettings {
            partition: PartitionPolicy::Evs,
            ..settings
        };
        EvsMember {
            node,
            group,
            settings,
            minitx,
            incarnation: 1,
            installed: None,
            gathering: None,
            last_side: None,
            leaving: false,
            drain_deadline: None,
            new_side_asked: false,
            out: VecDeque::new(),
            counters: EvsCounters::default(),
        }
    }

    /// The side number of a node's cluster view: `view_counter`'s low 24 bits, then the
    /// side's lowest node folded to a byte (the XOR of its four bytes). It grows with every
    /// view the node installs, since view counters grow (after 2^24 views it wraps: a member
    /// then stays in its list until it rejoins). Concurrent sides may install views with
    /// equal counters; their lowest nodes differ (the sides are disjoint), and so do their
    /// folds whenever the two ids differ in one byte only: ids below 256 (the simulator's),
    /// tuttid's daemons of one /24 network on the same shard (node id = daemon << 8 |
    /// shard, daemon = the address's low 24 bits). Numbers need not be unique for safety:
    /// a list epoch is (number, founder) and its memory node runs on the founder, so two
    /// sides always have two lists; an equal number only costs an imprecise payload route.
    /// Two views with one counter at one node (a coordinator race) may not grow the number:
    /// the member then waits for the next view, which the node makes sure comes (it claims
    /// the next counter when a view replaces one with the same counter).
    pub fn side_number(view_counter: u64, lowest: NodeId) -> u32 {
        let [a, b, c, d] = lowest.to_le_bytes();
        ((view_counter as u32) << 8) | u32::from(a ^ b ^ c ^ d)
    }

    /// The cluster-view group through which nodes hosting `evs` group `group` find each
    /// other: every member node joins it, so the view's group list names them (the side is
    /// that list within the view). A distinct id so it never meets a multicast group
    /// of the same id.
    pub fn directory_group(group: GroupId) -> GroupId {
        group ^ 0xE75D_1EC7_0000_0000
    }

    pub fn counters(&self) -> &EvsCounters {
        &self.counters
    }

    /// The member of the installed list (what it sends and delivers in).
    pub fn current(&self) -> Option<&OrderedMember> {
        self.installed.as_ref().map(|(m, _)| m)
    }

    /// Hands back a buffer this member gave out (a delivered payload, a disseminated copy)
    /// for reuse by the member that sends and delivers now: the installed list's, else the
    /// one being gathered (`OrderedMember::recycle`). With none, it is freed.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if let Some((m, _)) = self.installed.as_mut().or(self.gathering.as_mut()) {
            m.recycle(buf);
        }
    }

    /// The member of the list being gathered, if any.
    pub fn gathering(&self) -> Option<&OrderedMember> {
        self.gathering.as_ref().map(|(m, _)| m)
    }

    /// The list epoch of the installed configuration.
    pub fn epoch(&self) -> Option<EpochId> {
        self.current().and_then(OrderedMember::list_epoch)
    }

    /// Whether this member is installed in an active configuration and gathers nowhere.
    pub fn settled(&self) -> bool {
        self.gathering.is_none() && self.current().is_some_and(|m| m.status() == Status::Active)
    }

    /// Whether no minitransaction of either list is in flight.
    pub fn idle(&self) -> bool {
        self.current().is_none_or(OrderedMember::idle) && self.gathering().is_none_or(OrderedMember::idle)
    }

    /// From the view: this node's side is `members` (the group's members it can reach,
    /// itself included); `number` names the side, grows with every change and differs
    /// between concurrent sides (it names the list epoch the side opens). A number not
    /// above the last one is ignored. Every side change opens a new list epoch, joined by
    /// every member of the side: the members of a side then agree on the list whatever
    /// views each of them saw before (see the module docs).
    pub fn set_side(&mut self, now: Time, number: u32, members: &[NodeId]) {
        let mut side = members.to_vec();
        side.sort_unstable();
        side.dedup();
        if !side.contains(&self.node) || self.leaving {
            return;
        }
        if self.last_side.is_some_and(|n| n >= number) {
            return;
        }
        self.last_side = Some(number);
        let epoch = EpochId {
            number,
            founder: side[0],
        };
        if self.gathering().and_then(OrderedMember::list_epoch) == Some(epoch) {
            return;
        }
        // With the installed list's founder (its memory node's host) on this side, the
        // list drains first: read up to the first `Seal` a leaving member appended, so
        // that this member holds what any member delivered there (under `agreed`
        // delivery) and everything appended before the seal (under both: what the
        // movers all hold, the transitional configuration may deliver); the join goes
        // once it did (`pump`). Otherwise leave the list where it stands: what it
        // delivered and holds goes into the join.
        let drain = self.installed.as_ref().is_some_and(|(m, host)| {
            side.contains(host) && m.status() == Status::Active && m.learned_members().contains(host)
        });
        let from: Option<JoinFrom> = if drain {
            // Every member that leaves appends the `Seal` (the first one counts): the
            // list is sealed as soon as any of its members saw the change, and the
            // others read up to it. Half the founder's `gather_timeout` at most, so that
            // a drain that cannot end still joins before the founder installs.
            if let Some((m, _)) = self.installed.as_mut() {
                m.drain_to_seal(now);
            }
            if self.drain_deadline.is_none() {
                self.drain_deadline = Some(now + self.settings.gather_timeout / 2);
            }
            None
        } else {
            self.drain_deadline = None;
            self.installed.as_mut().and_then(|(m, _)| {
                m.freeze();
                m.join_from()
            })
        };
        // The list lives on its founder: whoever names epoch (number, founder) reaches the
        // same list, even two members whose sides differ (views in flux), so an epoch is
        // one list. No backup (see `OpenEpoch`).
        let hosts = vec![epoch.founder];
        self.out.push_back(Output::OpenEpoch {
            epoch,
            memnode: epoch_memnode(epoch),
            hosts: hosts.clone(),
        });
        self.incarnation += 1;
        self.counters.epochs_joined += 1;
        let mut member = OrderedMember::evs_joiner(
            self.node,
            self.incarnation,
            self.group,
            epoch,
            hosts[0],
            &side,
            from,
            now,
            self.settings.clone(),
            self.minitx.clone(),
        );
        if drain {
            member.hold_join();
        }
        self.gathering = Some((member, hosts[0]));
        self.new_side_asked = false;
        self.pump(now);
    }

    /// Leaves the group: an entry in the installed list, or, while gathering, in the new
    /// one once it is installed there.
    pub fn leave(&mut self, now: Time) {
        self.leaving = true;
        match (&mut self.gathering, &mut self.installed) {
            (Some((g, _)), _) => g.leave(now),
            (None, Some((m, _))) => m.leave(now),
            (None, None) => {}
        }
        self.pump(now);
    }

    /// Queues a message in the installed configuration without running the member
    /// (`OrderedMember::queue`); [`Self::run_queued`] runs it.
    pub fn queue(&mut self, bytes: &[u8], safe: bool) -> Result<u64, SubmitRefused> {
        self.sending_member()?.queue(bytes, safe)
    }

    /// Runs the installed member after [`Self::queue`].
    pub fn run_queued(&mut self, now: Time) {
        if let Some((m, _)) = &mut self.installed {
            m.run_queued(now);
        }
        self.pump(now);
    }

    /// Queues a message in the installed configuration (refused while gathering).
    pub fn submit(&mut self, now: Time, bytes: &[u8], safe: bool) -> Result<u64, SubmitRefused> {
        let r = self.sending_member()?.submit(now, bytes, safe);
        self.pump(now);
        r
    }

    /// The member a message goes to: the installed configuration's, none while gathering.
    fn sending_member(&mut self) -> Result<&mut OrderedMember, SubmitRefused> {
        match &mut self.installed {
            Some((m, _)) if self.gathering.is_none() => Ok(m),
            _ => Err(SubmitRefused::NotMember),
        }
    }

    /// A disseminated payload (`epoch` as in [`Output::Disseminate`]).
    pub fn handle_payload(&mut self, now: Time, sender: NodeId, epoch: u64, seq: u64, bytes: &[u8]) {
        let (number, join_pos) = split_epoch(epoch);
        for m in self.lists_mut() {
            if m.list_epoch().is_some_and(|e| e.number == number) {
                m.handle_payload(now, sender, join_pos, seq, bytes);
            }
        }
        self.pump(now);
    }

    /// Disseminated payloads of consecutive seqs from `first_seq` (a payload run; `epoch`
    /// as in [`Output::Disseminate`]). The run is walked again for each list it is about
    /// (a cloned iterator, no copy of the run).
    pub fn handle_payloads<'a, I>(
        &mut self,
        now: Time,
        sender: NodeId,
        epoch: u64,
        first_seq: u64,
        payloads: I,
    ) where
        I: IntoIterator<Item = &'a [u8]>,
        I::IntoIter: Clone,
    {
        let (number, join_pos) = split_epoch(epoch);
        let payloads = payloads.into_iter();
        for m in self.lists_mut() {
            if m.list_epoch().is_some_and(|e| e.number == number) {
                m.handle_payloads(now, sender, join_pos, first_seq, payloads.clone());
            }
        }
        self.pump(now);
    }

    /// Payloads that list `epoch`'s memory node, on this node, applied to its queues (see
    /// [`OrderedMember::handle_queued`]): to that list's member. Returns how many it took.
    pub fn handle_queued<'a>(
        &mut self,
        now: Time,
        epoch: EpochId,
        slots: impl IntoIterator<Item = &'a [u8]>,
    ) -> u64 {
        let taken = match self.lists_mut().find(|m| m.list_epoch() == Some(epoch)) {
            Some(m) => m.handle_queued(now, slots),
            None => 0,
        };
        if taken > 0 {
            self.pump(now);
        }
        taken
    }

    /// A minitransaction message from a memory node: to the list it is about.
    pub fn handle_minitx(&mut self, now: Time, from: NodeId, bytes: &[u8]) {
        // The header names the list; the list's member decodes the body (a malformed one
        // is counted there).
        let memnode = tutti_wire::minitx::memnode_of(bytes);
        if !self.hand_to_list(memnode, |m| m.handle_minitx(now, from, bytes)) {
            self.counters.stale_minitx += 1;
        }
        self.pump(now);
    }

    /// Progress another member told (`Output::Held`): to the list it is about.
    pub fn handle_held(&mut self, now: Time, from: NodeId, bytes: &[u8]) {
        let memnode = tutti_wire::packet::OrderedHeld::decode(bytes)
            .ok()
            .map(|h| h.memnode);
        if !self.hand_to_list(memnode, |m| m.handle_held(now, from, bytes)) {
            self.counters.stale_held += 1;
        }
        self.pump(now);
    }

    /// Entries of list `epoch` that its memory node committed, pushed by the node running
    /// it (`Node`: `OrderedKind::Committed`). Taken only from the list's founder (its
    /// memory node runs there, without a backup) and for a list this member is in, by
    /// that list's member (which takes only entries that continue its learned prefix);
    /// returns whether a list took it.
    #[allow(clippy::too_many_arguments)]
    pub fn handle_committed(
        &mut self,
        now: Time,
        from: NodeId,
        epoch: EpochId,
        memnode: MemnodeId,
        tail: u64,
        first: u64,
        entries: &[u8],
    ) -> bool {
        if from != epoch.founder || from == self.node || epoch_memnode(epoch) != memnode {
            self.counters.stale_committed += 1;
            return false;
        }
        let mut taken = false;
        for m in self.lists_mut() {
            if m.list_epoch() == Some(epoch) {
                m.handle_committed(now, tail, first, entries);
                taken = true;
            }
        }
        if !taken {
            self.counters.stale_committed += 1;
            return false;
        }
        self.pump(now);
        true
    }

    /// Runs `f` on each of this member's lists whose memory node is `memnode`; returns
    /// whether there was one.
    fn hand_to_list(&mut self, memnode: Option<MemnodeId>, mut f: impl FnMut(&mut OrderedMember)) -> bool {
        let mut taken = false;
        for m in self.lists_mut() {
            if m.list_epoch().map(epoch_memnode) == memnode {
                f(m);
                taken = true;
            }
        }
        taken
    }

    pub fn handle_timeout(&mut self, now: Time) {
        self.end_drain(now);
        for m in self.lists_mut() {
            if m.poll_timeout().is_some_and(|t| t <= now) {
                m.handle_timeout(now);
            }
        }
        self.pump(now);
    }

    pub fn poll_timeout(&self) -> Option<Time> {
        let a = self.current().and_then(OrderedMember::poll_timeout);
        let b = self.gathering().and_then(OrderedMember::poll_timeout);
        a.into_iter().chain(b).chain(self.drain_deadline).min()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn lists_mut(&mut self) -> impl Iterator<Item = &mut OrderedMember> {
        self.installed
            .as_mut()
            .map(|(m, _)| m)
            .into_iter()
            .chain(self.gathering.as_mut().map(|(m, _)| m))
    }

    /// Moves every list's outputs out (epochs qualified by the list number), and installs
    /// the gathered list once its delivery reached this member's configuration there.
    fn pump(&mut self, now: Time) {
        self.end_drain(now);
        loop {
            if let Some((m, _)) = &mut self.installed {
                drain(m, &mut self.out);
            }
            let before = self.out.len();
            let removed = self.gathering.as_mut().is_some_and(|(g, _)| {
                drain(g, &mut self.out);
                g.status() == Status::Removed
            });
            if removed {
                self.cannot_join(before);
            }
            let Some(pending) = self.gathering.as_mut().and_then(|(g, _)| g.take_pending()) else {
                return;
            };
            let moved_with = self.deliver_transitional(now, &pending.joins);
            let Some((mut g, host)) = self.gathering.take() else {
                return;
            };
            g.activate(now, &moved_with);
            // What this member queued in the old list and never appended goes again, as new
            // messages of the new list. What it appended there and did not deliver is left
            // to that list (delivering it again here could deliver it twice at a member
            // that delivered it there): counted as `unconfirmed`.
            let (unsent, unconfirmed) = self
                .installed
                .as_ref()
                .map(|(old, _)| old.unsent_own())
                .unwrap_or_default();
            self.counters.unconfirmed += unconfirmed as u64;
            for (bytes, safe) in unsent {
                match g.submit(now, &bytes, safe) {
                    Ok(_) => self.counters.resent += 1,
                    Err(_) => self.counters.resend_dropped += 1,
                }
            }
            self.installed = Some((g, host));
        }
    }

    /// The gathered list's member was removed for lagging: it read the list from its start
    /// after its join (a late join) and found that start reclaimed (the list went on past
    /// `list_slots` entries before it read them). It never configures there, and no side
    /// change would come (the view holds it already): instead of leaving the group, it
    /// asks for a new view (`Output::NewSideWanted`), whose side opens a list that every
    /// member joins from its start (sim `evs` seed 1). The removal from `before` on is
    /// not passed on: the application stays in its installed configuration meanwhile.
    fn cannot_join(&mut self, before: usize) {
        let ours = self.out.split_off(before);
        let mut lagging = false;
        for o in ours {
            match o {
                Output::Removed {
                    reason: RemoveReason::Lagging,
                } => lagging = true,
                o => self.out.push_back(o),
            }
        }
        if lagging && !self.new_side_asked {
            self.new_side_asked = true;
            self.counters.new_sides_asked += 1;
            self.out.push_back(Output::NewSideWanted);
        }
    }

    /// Ends the installed list's drain once it is drained (or its deadline passed: the
    /// founder's memory node may be gone): freezes it and lets the gathered list's join
    /// go, coming from where it stands now.
    fn end_drain(&mut self, now: Time) {
        let Some(deadline) = self.drain_deadline else {
            return;
        };
        let waiting = self.gathering().is_some_and(OrderedMember::join_held);
        let drained = self.current().is_none_or(OrderedMember::drained);
        if waiting && !drained && now < deadline {
            return;
        }
        self.drain_deadline = None;
        if drained {
            self.counters.drains += 1;
        } else {
            self.counters.drains_timed_out += 1;
        }
        let from = self.installed.as_mut().and_then(|(m, _)| {
            m.freeze();
            drain(m, &mut self.out);
            m.join_from()
        });
        if let Some((g, _)) = self.gathering.as_mut() {
            g.set_join_from(now, from);
        }
    }

    /// Delivers the end of the installed (frozen) list this member moves from, and the
    /// transitional configuration; returns its members.
    fn deliver_transitional(&mut self, now: Time, joins: &[(NodeId, Option<JoinFrom>)]) -> Vec<NodeId> {
        let Some((old, _)) = &mut self.installed else {
            // A new member: no configuration to move from.
            return vec![self.node];
        };
        let Some(me) = old.join_from() else {
            // Removed from its list (or never active there): it moves alone.
            return vec![self.node];
        };
        // The last join of each node counts (a join may land twice after an unknown outcome).
        let joins: BTreeMap<NodeId, Option<JoinFrom>> = joins.iter().copied().collect();
        let from_here: Vec<(NodeId, JoinFrom)> = joins
            .iter()
            .filter_map(|(&n, f)| f.filter(|f| f.epoch == me.epoch).map(|f| (n, f)))
            .collect();
        let end = from_here
            .iter()
            .map(|(_, f)| f.delivered)
            .max()
            .unwrap_or(me.delivered);
        let mut moved_with: Vec<NodeId> = from_here
            .iter()
            .filter(|(_, f)| f.held >= end)
            .map(|(n, _)| *n)
            .collect();
        let alone = !moved_with.contains(&self.node);
        if alone {
            // It holds less than another mover delivered: it moves alone, delivering no more.
            moved_with = vec![self.node];
            self.counters.transitional_alone += 1;
        } else if !old.deliver_through(now, u64::from(end)) {
            self.counters.transitional_missing += 1;
        } else if moved_with.len() == from_here.len() {
            // Every mover from this list holds up to `held_by_all`. While the configuration
            // they delivered (the same at each: they delivered the same prefix) is only
            // movers, they deliver on through what they all hold, up to the first `Seal`
            // (nobody delivers it): every member of the configuration holds each of these
            // entries, so even a `safe` one may go, and their senders' messages appended
            // before the seal are delivered instead of left `unconfirmed` (after a drain,
            // that is everything before the seal). Each step is the same at every mover.
            let held_by_all = from_here.iter().map(|(_, f)| u64::from(f.held)).min();
            let stop = held_by_all.unwrap_or(0).min(old.sealed_at().unwrap_or(u64::MAX));
            while old.delivered() < stop && old.delivered_members().iter().all(|n| moved_with.contains(n)) {
                let next = old.delivered() + 1;
                if !old.deliver_through(now, next) {
                    break;
                }
                self.counters.transitional_extended += 1;
            }
        }
        drain(old, &mut self.out);
        let position = old.delivered();
        let left = old
            .delivered_members()
            .into_iter()
            .filter(|n| !moved_with.contains(n))
            .map(|n| (n, RemoveReason::Partitioned))
            .collect();
        self.counters.transitional += 1;
        self.out.push_back(Output::Configuration(ConfigEvent {
            epoch: me.epoch,
            position,
            members: moved_with.clone(),
            joined: Vec::new(),
            left,
            transitional: true,
        }));
        moved_with
    }
}

/// Moves a list's outputs to `out`, message epochs qualified by its list number.
fn drain(m: &mut OrderedMember, out: &mut VecDeque<Output>) {
    let number = m.list_epoch().map_or(0, |e| e.number);
    while let Some(o) = m.poll_output() {
        out.push_back(match o {
            Output::Deliver {
                sender,
                epoch,
                seq,
                position,
                safe,
                bytes,
            } => Output::Deliver {
                sender,
                epoch: join_epoch(number, epoch),
                seq,
                position,
                safe,
                bytes,
            },
            Output::Disseminate {
                sender,
                epoch,
                seq,
                bytes,
            } => Output::Disseminate {
                sender,
                epoch: join_epoch(number, epoch),
                seq,
                bytes,
            },
            o => o,
        });
    }
}

/// A message's epoch under `evs`: the list number, then the sender's join position there.
fn join_epoch(number: u32, join_pos: u64) -> u64 {
    u64::from(number) << 32 | (join_pos & 0xFFFF_FFFF)
}

fn split_epoch(epoch: u64) -> (u32, u64) {
    ((epoch >> 32) as u32, epoch & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_numbers_grow_with_the_view_and_differ_between_sides() {
        // Every later view numbers above every earlier one, whatever the side's lowest node.
        for counter in [1u64, 2, 255, 256, 70_000] {
            for (a, b) in [(1, 3), (3, 1), (0x0102_0300, 0x0102_0400)] {
                assert!(EvsMember::side_number(counter + 1, a) > EvsMember::side_number(counter, b));
            }
        }
        // Two sides installing views with one counter: their lowest nodes differ, and
        // so do their numbers when the ids differ in one byte.
        let sides: Vec<u32> = (1..=255)
            .map(|lowest| EvsMember::side_number(9, lowest))
            .collect();
        let mut distinct = sides.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), sides.len());
        // tuttid: node id = daemon << 8 | shard (daemon: the IPv4 address's low 24 bits, so
        // 10.0.1.1 and 10.0.1.2 are 0x000101 and 0x000102).
        let daemon = |low: u32| (0x00_01_00 | low) << 8;
        assert_ne!(
            EvsMember::side_number(9, daemon(1)),
            EvsMember::side_number(9, daemon(2))
        );
    }
}
