//! CPG process groups (`GroupOptions::cpg`, docs/cpg.md): on top of an ordered group, the
//! daemons keep one table of member processes per group, changed only by entries of the
//! group's total order, so every daemon applies the same changes at the same point and
//! writes the same confchg record there. A shard owns its groups' tables.
//!
//! A daemon publishes `ProcJoin` / `ProcLeave` for its own sessions as ordered messages of
//! the reserved session [`CONTROL_SESSION`]; a view change that removes a daemon removes its
//! processes (`NODEDOWN`); a daemon joining the ordered group gets the table as the group's
//! state transfer ([`CpgTables::snapshot`] / [`CpgTables::install`]).

use crate::cluster::{Cluster, OrderedRefusal};
use std::collections::VecDeque;
use std::time::Instant;
use tutti_proto::fxhash::FxMap;
use tutti_wire::shm::CpgEntry;

/// The session id under which a daemon publishes process-table changes in a cpg group's
/// order. Client sessions are numbered from 1 upwards and never reach it.
pub const CONTROL_SESSION: u32 = u32::MAX;

/// `cpg_reason_t` codes (Corosync's `corosync/cpg.h`).
pub mod reason {
    pub const JOIN: u32 = 1;
    pub const LEAVE: u32 = 2;
    pub const NODEDOWN: u32 = 3;
    pub const NODEUP: u32 = 4;
    pub const PROCDOWN: u32 = 5;
}

/// Bytes of one process-table change in the order: kind, session, pid, reason.
const OP_LEN: usize = 16;
const OP_JOIN: u32 = 1;
const OP_LEAVE: u32 = 2;
/// `evs` merges: a daemon's own processes, announced again to a configuration that
/// others joined (no state transfer under `evs`). Kind, last (1 on the daemon's last
/// chunk), count, 0; then `count` (session, pid) pairs.
const OP_ANNOUNCE: u32 = 3;
/// Processes one announce chunk carries (16 + 8 * 100 bytes fit any ordered payload).
const ANNOUNCE_CHUNK: usize = 100;
/// Most processes one group's table holds (a join beyond it is refused at delivery, at
/// every daemon alike, and counted): bounds the table, the snapshot and a confchg record.
pub const MAX_PROCESSES: usize = 1024;
/// Cpg groups a daemon stays a member of with no local process left ("dormant"): beyond
/// this many, the one dormant longest leaves its order. A daemon stays because CPG programs
/// join, leave and rejoin groups often, and a join that finds the daemon still in the order
/// costs no membership change (a join soon after a leave that is already in the order
/// waits for that leave: `Cluster::join_ordered`).
pub const MAX_DORMANT: usize = 64;

/// A process of a group: its daemon, pid and session there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Proc {
    node: u32,
    pid: u32,
    session: u32,
}

impl Proc {
    fn entry(self, reason: u32) -> CpgEntry {
        CpgEntry {
            node: self.node,
            pid: self.pid,
            reason,
            session: self.session,
        }
    }
}

/// One confchg to write into the group's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confchg {
    pub members: Vec<CpgEntry>,
    pub joined: Vec<CpgEntry>,
    pub left: Vec<CpgEntry>,
}

#[derive(Default)]
struct Table {
    /// The group's tutti name (for `tutti status`).
    name: String,
    /// Sorted by (node, pid, session).
    procs: Vec<Proc>,
    /// Changes of local sessions not yet taken by the ordered group (back pressure).
    pending: VecDeque<[u8; OP_LEN]>,
    /// Changes of local sessions taken by the ordered group and not yet delivered back
    /// (a leaver's log is written until its leave is through: [`CpgTables::has_local`]).
    /// One lost by an `evs` configuration change stays counted until
    /// [`CpgTables::forget_in_order`].
    in_order: u32,
    /// `evs` merges: this daemon's announce chunks not yet taken by the ordered group.
    announces: VecDeque<Vec<u8>>,
    /// The group's last local member went (when): the daemon stays in its order, dormant.
    dormant: Option<Instant>,
    /// `evs`: a configuration others joined is merging tables: the daemons whose last
    /// announce chunk is still to be delivered, and the processes announced so far that
    /// the table lacked. The merge's one confchg (`NODEUP`) follows the last announce, at
    /// the same point of the order at every daemon.
    merging: Option<(Vec<u32>, Vec<Proc>)>,
    /// Process changes delivered during a merge, applied after it (at most
    /// `MAX_PROCESSES`; beyond, refused and counted).
    deferred: VecDeque<(u32, Vec<u8>)>,
    /// Whether the table held processes when the merge began: a daemon new to the group
    /// takes the announced processes silently (as it took a state transfer), since its
    /// own processes have not joined yet.
    merge_visible: bool,
    /// Dormant too long: the daemon leaves the group's order. The table is kept, and kept
    /// current, until that leave is through ([`CpgTables::left_order`]): a process that
    /// joins meanwhile finds the daemon either still in the order (its leave cancelled
    /// before it was sent) with a table that is right, or joining afresh, when the state
    /// transfer replaces the table.
    evicted: bool,
}

impl Table {
    /// The merge's confchg once no announce is awaited: the processes it added, `NODEUP`.
    fn finish_merge(t: &mut Table) -> Option<Confchg> {
        if !t.merging.as_ref().is_some_and(|(waiting, _)| waiting.is_empty()) {
            return None;
        }
        let (_, found) = t.merging.take()?;
        if found.is_empty() {
            return None;
        }
        for p in &found {
            let at = t.procs.partition_point(|q| q < p);
            t.procs.insert(at, *p);
        }
        if !t.merge_visible {
            return None;
        }
        let mut joined: Vec<CpgEntry> = found.iter().map(|p| p.entry(reason::NODEUP)).collect();
        joined.sort_unstable_by_key(|e| (e.node, e.pid, e.session));
        Some(t.confchg(joined, Vec::new()))
    }

    fn confchg(&self, joined: Vec<CpgEntry>, left: Vec<CpgEntry>) -> Confchg {
        Confchg {
            members: self.procs.iter().map(|p| p.entry(0)).collect(),
            joined,
            left,
        }
    }
}

/// One cpg group as `tutti status` lists it (`corosync-cpgtool`'s group and processes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The tutti group name (`cpg:NAME` for groups made by libcpg.so.4).
    pub name: String,
    /// No local process is left: the daemon stays in the group's order ([`MAX_DORMANT`]).
    pub dormant: bool,
    /// (daemon id, pid) of each process, sorted.
    pub procs: Vec<(u32, u32)>,
}

/// What a shard's cpg groups need beyond their logs, by cluster-wide group id.
#[derive(Default)]
pub struct CpgTables {
    tables: FxMap<u64, Table>,
    /// This daemon's id (its own changes come back with it).
    me: u32,
    /// Changes refused at delivery (malformed, or a table at `MAX_PROCESSES`).
    pub refused: u64,
}

fn op(kind: u32, session: u32, pid: u32, why: u32) -> [u8; OP_LEN] {
    let mut b = [0u8; OP_LEN];
    for (i, w) in [kind, session, pid, why].into_iter().enumerate() {
        b[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
    }
    b
}

impl CpgTables {
    /// The tables of daemon `me`.
    pub fn new(me: u32) -> CpgTables {
        CpgTables {
            me,
            ..CpgTables::default()
        }
    }

    /// Whether group `gid` still has processes of this daemon: a member, or a change of a
    /// local session not yet through the order. A group whose last local process left keeps
    /// its log written until this is false, so that the leaver gets what was ordered before
    /// its leave and then its own leave's confchg, as on Corosync.
    pub fn has_local(&self, gid: u64) -> bool {
        self.tables.get(&gid).is_some_and(|t| {
            !t.pending.is_empty() || t.in_order > 0 || t.procs.iter().any(|p| p.node == self.me)
        })
    }

    /// Forgets the local changes counted in the order of `gid` (a bounded wait for them
    /// ended: an `evs` configuration change may have lost one).
    pub fn forget_in_order(&mut self, gid: u64) {
        if let Some(t) = self.tables.get_mut(&gid) {
            t.in_order = 0;
        }
    }

    /// Starts the table of group `gid` (named `name`), or wakes a dormant one: true if this
    /// daemon is still a member of the group's order (no join needed).
    pub fn open(&mut self, gid: u64, name: &str) -> bool {
        match self.tables.get_mut(&gid) {
            Some(table) if table.evicted => {
                // Its order is being left: the caller joins again (see `Table::evicted`).
                table.evicted = false;
                table.dormant = None;
                false
            }
            Some(table) => {
                table.dormant = None;
                true
            }
            None => {
                let name = name.to_string();
                self.tables.insert(
                    gid,
                    Table {
                        name,
                        ..Table::default()
                    },
                );
                false
            }
        }
    }

    /// The groups and their processes, sorted by name, for `tutti status`.
    pub fn listing(&self) -> Vec<Listing> {
        let mut out: Vec<Listing> = self
            .tables
            .values()
            .filter(|t| !t.evicted)
            .map(|t| Listing {
                name: t.name.clone(),
                dormant: t.dormant.is_some(),
                procs: t.procs.iter().map(|p| (p.node, p.pid)).collect(),
            })
            .collect();
        out.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Local session `session` (process `pid`) joins: published in the order.
    pub fn proc_join(&mut self, gid: u64, session: u32, pid: u32) {
        self.tables
            .entry(gid)
            .or_default()
            .pending
            .push_back(op(OP_JOIN, session, pid, reason::JOIN));
    }

    /// Local session `session` leaves (`reason::LEAVE`) or ended (`reason::PROCDOWN`).
    pub fn proc_leave(&mut self, gid: u64, session: u32, why: u32) {
        if let Some(t) = self.tables.get_mut(&gid) {
            t.pending.push_back(op(OP_LEAVE, session, 0, why));
        }
    }

    /// Whether local data of `gid` must wait: a process change of this daemon is not yet
    /// in the order, and data must not overtake it.
    pub fn blocks_data(&self, gid: u64) -> bool {
        self.tables
            .get(&gid)
            .is_some_and(|t| !t.pending.is_empty() || t.merging.is_some())
    }

    /// Whether data of `sender` (daemon << 32 | session) comes from a member process.
    pub fn is_member(&self, gid: u64, sender: u64) -> bool {
        let (node, session) = ((sender >> 32) as u32, sender as u32);
        self.tables
            .get(&gid)
            .is_some_and(|t| t.procs.iter().any(|p| p.node == node && p.session == session))
    }

    /// Hands pending changes to the ordered groups (in order, until one is refused).
    pub fn flush(&mut self, cluster: &mut Cluster) {
        for (&gid, t) in self.tables.iter_mut() {
            while let Some(bytes) = t.announces.front() {
                match cluster.submit_ordered(gid, CONTROL_SESSION, bytes, false) {
                    Ok(()) => {
                        t.announces.pop_front();
                    }
                    Err(OrderedRefusal::Full) => break,
                    Err(OrderedRefusal::TooLarge) => {
                        tracing::error!(group = %format!("{gid:#x}"), "cpg announce refused as too large");
                        t.announces.pop_front();
                    }
                }
            }
            // While a merge waits for announces, local changes (and data: `blocks_data`)
            // wait too: sent after it here, they are ordered after every announce, so
            // every daemon applies them after its merge (a join deferred by a merge left
            // its process's data dropped as not joined meanwhile: the CPG run under `evs`).
            while let Some(bytes) = t.pending.front().filter(|_| t.merging.is_none()) {
                match cluster.submit_ordered(gid, CONTROL_SESSION, bytes, false) {
                    Ok(()) => {
                        t.pending.pop_front();
                        t.in_order += 1;
                    }
                    Err(OrderedRefusal::Full) => break,
                    Err(OrderedRefusal::TooLarge) => {
                        // 16 bytes always fit: a broken setting, not traffic.
                        tracing::error!(group = %format!("{gid:#x}"), "cpg change refused as too large");
                        t.pending.pop_front();
                    }
                }
            }
        }
    }

    /// The group's last local member went: the daemon stays in its order, dormant (its
    /// members' leaves are still to be ordered, and a later join needs no new membership).
    /// Returns the group that must leave its order to keep at most `MAX_DORMANT`.
    pub fn sleep(&mut self, gid: u64) -> Option<u64> {
        self.tables.get_mut(&gid)?.dormant = Some(Instant::now());
        let dormant = self.tables.values().filter(|t| t.dormant.is_some()).count();
        if dormant <= MAX_DORMANT {
            return None;
        }
        let (&oldest, t) = self
            .tables
            .iter_mut()
            .filter(|(_, t)| t.dormant.is_some() && t.pending.is_empty())
            .min_by_key(|(_, t)| t.dormant)?;
        t.dormant = None;
        t.evicted = true;
        Some(oldest)
    }

    /// This daemon is out of group `gid`'s order (its leave went through, or it was
    /// removed): an evicted table goes. A table reopened meanwhile stays for the join that
    /// follows (its state transfer replaces it); one still in use is the view handler's.
    pub fn left_order(&mut self, gid: u64) {
        if self.tables.get(&gid).is_some_and(|t| t.evicted) {
            self.tables.remove(&gid);
        }
    }

    /// Whether the shard keeps the group's table (a cpg group joined here, or dormant).
    pub fn has(&self, gid: u64) -> bool {
        self.tables.contains_key(&gid)
    }

    /// `evs`: daemons joined group `gid`'s configuration from elsewhere (a merge after a
    /// partition, or a daemon joining: no state transfer under `evs`). Every daemon of the
    /// configuration (`members`, daemon ids) announces its own processes in the order; the
    /// tables add the ones they lack and write one confchg (`NODEUP`) once every member's
    /// announce is delivered (Corosync's CPG exchanges its join lists at a merge likewise).
    /// `me`: this daemon's id.
    pub fn merge(&mut self, gid: u64, me: u32, members: &[u32]) {
        let Some(t) = self.tables.get_mut(&gid) else {
            return;
        };
        let mut waiting = members.to_vec();
        waiting.sort_unstable();
        waiting.dedup();
        t.merging = Some((waiting, Vec::new()));
        t.merge_visible = !t.procs.is_empty();
        t.announces.clear();
        let own: Vec<Proc> = t.procs.iter().copied().filter(|p| p.node == me).collect();
        let chunks: Vec<&[Proc]> = if own.is_empty() {
            vec![&[]]
        } else {
            own.chunks(ANNOUNCE_CHUNK).collect()
        };
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let mut b = op(OP_ANNOUNCE, u32::from(i == last), chunk.len() as u32, 0).to_vec();
            for p in chunk {
                b.extend_from_slice(&p.session.to_le_bytes());
                b.extend_from_slice(&p.pid.to_le_bytes());
            }
            t.announces.push_back(b);
        }
    }

    /// `evs`: daemons left group `gid`'s configuration while its tables merged: the merge
    /// waits for them no more (the confchg comes once the rest announced).
    fn stop_waiting(t: &mut Table, left: &[u32]) -> Option<Confchg> {
        let (waiting, _) = t.merging.as_mut()?;
        waiting.retain(|n| !left.contains(n));
        Table::finish_merge(t)
    }

    /// Applies a change delivered in the order from daemon `node`; the confchgs to write.
    /// While an `evs` merge waits for announces, process changes wait too (so every
    /// daemon's confchgs list the same members), then follow the merge's confchg.
    pub fn deliver(&mut self, gid: u64, node: u32, bytes: &[u8]) -> Vec<Confchg> {
        let Some(t) = self.tables.get_mut(&gid) else {
            return Vec::new();
        };
        let announce = bytes.get(..4) == Some(&OP_ANNOUNCE.to_le_bytes()[..]);
        if node == self.me && !announce {
            t.in_order = t.in_order.saturating_sub(1);
        }
        if t.merging.is_some() && !announce {
            if t.deferred.len() >= MAX_PROCESSES {
                self.refused += 1;
            } else {
                t.deferred.push_back((node, bytes.to_vec()));
            }
            return Vec::new();
        }
        let mut out: Vec<Confchg> = self.apply(gid, node, bytes).into_iter().collect();
        if announce {
            self.apply_deferred(gid, &mut out);
        }
        out
    }

    /// Process changes deferred by a merge that is now complete, in their order.
    fn apply_deferred(&mut self, gid: u64, out: &mut Vec<Confchg>) {
        loop {
            let Some(t) = self.tables.get_mut(&gid) else {
                return;
            };
            if t.merging.is_some() {
                return;
            }
            let Some((node, bytes)) = t.deferred.pop_front() else {
                return;
            };
            out.extend(self.apply(gid, node, &bytes));
        }
    }

    /// Applies one change delivered from daemon `node`.
    fn apply(&mut self, gid: u64, node: u32, bytes: &[u8]) -> Option<Confchg> {
        let t = self.tables.get_mut(&gid)?;
        let word = |i: usize| -> Option<u32> {
            Some(u32::from_le_bytes(bytes.get(4 * i..4 * i + 4)?.try_into().ok()?))
        };
        let (Some(kind), Some(session), Some(pid), Some(why)) = (word(0), word(1), word(2), word(3)) else {
            self.refused += 1;
            return None;
        };
        if kind == OP_ANNOUNCE {
            // (kind, last, count, 0) then pairs.
            let (last, count) = (session, pid as usize);
            if why != 0 || last > 1 || count > ANNOUNCE_CHUNK || bytes.len() != OP_LEN + 8 * count {
                self.refused += 1;
                return None;
            }
            // Outside a merge (a late announce of one already complete) it is ignored.
            let (waiting, found) = t.merging.as_mut()?;
            for pair in bytes[OP_LEN..].chunks_exact(8) {
                let w = |i: usize| u32::from_le_bytes([pair[i], pair[i + 1], pair[i + 2], pair[i + 3]]);
                let p = Proc {
                    node,
                    session: w(0),
                    pid: w(4),
                };
                let known = t
                    .procs
                    .iter()
                    .chain(found.iter())
                    .any(|q| q.node == node && q.session == p.session);
                if !known && t.procs.len() + found.len() < MAX_PROCESSES {
                    found.push(p);
                }
            }
            if last == 1 {
                waiting.retain(|&n| n != node);
            }
            return Table::finish_merge(t);
        }
        if bytes.len() != OP_LEN {
            self.refused += 1;
            return None;
        }
        match kind {
            OP_JOIN if why == reason::JOIN => {
                let p = Proc { node, pid, session };
                if t.procs.len() >= MAX_PROCESSES
                    || t.procs.iter().any(|q| q.node == node && q.session == session)
                {
                    self.refused += 1;
                    return None;
                }
                let at = t.procs.partition_point(|q| *q < p);
                t.procs.insert(at, p);
                Some(t.confchg(vec![p.entry(reason::JOIN)], Vec::new()))
            }
            OP_LEAVE if why == reason::LEAVE || why == reason::PROCDOWN => {
                let at = t
                    .procs
                    .iter()
                    .position(|q| q.node == node && q.session == session)?;
                let p = t.procs.remove(at);
                Some(t.confchg(Vec::new(), vec![p.entry(why)]))
            }
            _ => {
                self.refused += 1;
                None
            }
        }
    }

    /// Daemons that left the ordered group's view take their processes with them: NODEDOWN
    /// when they were suspected or lagging, PROCDOWN when their daemon left on its own (its
    /// processes' own changes were not delivered before its departure).
    pub fn remove_nodes(&mut self, gid: u64, left: &[(u32, bool)]) -> Option<Confchg> {
        let t = self.tables.get_mut(&gid)?;
        let gone_nodes: Vec<u32> = left.iter().map(|&(n, _)| n).collect();
        if let Some((_, found)) = t.merging.as_mut() {
            found.retain(|p| !gone_nodes.contains(&p.node));
        }
        // A merge this removal completes adds its processes in the same confchg.
        let merged = Self::stop_waiting(t, &gone_nodes)
            .map(|c| c.joined)
            .unwrap_or_default();
        let mut gone = Vec::new();
        t.procs
            .retain(|p| match left.iter().find(|(node, _)| *node == p.node) {
                Some(&(_, voluntary)) => {
                    gone.push(p.entry(if voluntary {
                        reason::PROCDOWN
                    } else {
                        reason::NODEDOWN
                    }));
                    false
                }
                None => true,
            });
        (!gone.is_empty() || !merged.is_empty()).then(|| t.confchg(merged, gone))
    }

    /// The table of `gid` as the state a joining daemon installs.
    pub fn snapshot(&self, gid: u64) -> Vec<u8> {
        let procs = self.tables.get(&gid).map_or(&[][..], |t| &t.procs[..]);
        let mut out = Vec::with_capacity(4 + 12 * procs.len());
        out.extend_from_slice(&(procs.len() as u32).to_le_bytes());
        for p in procs {
            for w in [p.node, p.pid, p.session] {
                out.extend_from_slice(&w.to_le_bytes());
            }
        }
        out
    }

    /// Installs a table received as state transfer (`Err` if it is malformed: the table
    /// is then left empty and the error counted).
    pub fn install(&mut self, gid: u64, bytes: &[u8]) -> Result<(), String> {
        let t = self.tables.entry(gid).or_default();
        t.procs.clear();
        let Some((count, rest)) = bytes.split_first_chunk::<4>() else {
            self.refused += 1;
            return Err(format!("cpg snapshot of {} bytes: no count", bytes.len()));
        };
        let count = u32::from_le_bytes(*count) as usize;
        if count > MAX_PROCESSES || rest.len() != 12 * count {
            self.refused += 1;
            return Err(format!("cpg snapshot: {count} processes in {} bytes", rest.len()));
        }
        for e in rest.chunks_exact(12) {
            let w = |i: usize| u32::from_le_bytes([e[i], e[i + 1], e[i + 2], e[i + 3]]);
            t.procs.push(Proc {
                node: w(0),
                pid: w(4),
                session: w(8),
            });
        }
        t.procs.sort_unstable();
        t.procs.dedup();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn delivered(t: &mut CpgTables, gid: u64, node: u32) -> Vec<Confchg> {
        let pending: Vec<_> = t.tables.get_mut(&gid).unwrap().pending.drain(..).collect();
        pending.iter().flat_map(|b| t.deliver(gid, node, b)).collect()
    }

    /// What `flush` does with the pending changes: hands them to the order.
    fn submitted(t: &mut CpgTables, gid: u64) -> Vec<[u8; OP_LEN]> {
        let table = t.tables.get_mut(&gid).unwrap();
        let ops: Vec<_> = table.pending.drain(..).collect();
        table.in_order += ops.len() as u32;
        ops
    }

    /// A group whose last local process left is written until that leave is through: the
    /// tables say so while a local change is pending, in the order, or a local process is a
    /// member; others' changes do not count.
    #[test]
    fn local_processes_count_until_their_leave_is_through_the_order() {
        let mut t = CpgTables::new(1);
        t.open(7, "cpg:seven");
        assert!(!t.has_local(7));
        t.proc_join(7, 3, 300);
        assert!(t.has_local(7), "a join pending");
        let join = submitted(&mut t, 7);
        t.proc_leave(7, 3, reason::LEAVE);
        let leave = submitted(&mut t, 7);
        assert!(t.has_local(7), "join and leave in the order, neither delivered");
        // Another daemon's process joins: not ours.
        t.deliver(7, 2, &op(OP_JOIN, 9, 900, reason::JOIN));
        t.deliver(7, 1, &join[0]);
        assert!(t.has_local(7), "a member");
        t.deliver(7, 1, &leave[0]);
        assert!(!t.has_local(7), "the leave is through");
        // A change lost in the order is forgotten when the wait for it ends.
        t.proc_join(7, 4, 400);
        submitted(&mut t, 7);
        assert!(t.has_local(7));
        t.forget_in_order(7);
        assert!(!t.has_local(7));
    }

    #[test]
    fn joins_leaves_and_node_loss_make_sorted_confchgs() {
        let mut t = CpgTables::default();
        t.open(7, "cpg:seven");
        t.proc_join(7, 3, 300);
        t.proc_join(7, 1, 100);
        assert!(t.blocks_data(7));
        let c = delivered(&mut t, 7, 2);
        assert!(!t.blocks_data(7));
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].members.iter().map(|e| e.pid).collect::<Vec<_>>(), [100, 300]);
        assert_eq!(c[1].joined[0].reason, reason::JOIN);
        assert!(t.is_member(7, (2 << 32) | 3));
        assert!(!t.is_member(7, (1 << 32) | 3));
        // A second join of one session is refused at delivery (every daemon alike).
        t.proc_join(7, 3, 300);
        assert!(delivered(&mut t, 7, 2).is_empty());
        assert_eq!(t.refused, 1);
        t.proc_leave(7, 3, reason::PROCDOWN);
        let c = delivered(&mut t, 7, 2);
        assert_eq!((c[0].left[0].pid, c[0].left[0].reason), (300, reason::PROCDOWN));
        assert_eq!(c[0].members.len(), 1);
        let c = t.remove_nodes(7, &[(2, false)]).unwrap();
        assert_eq!((c.left[0].pid, c.left[0].reason), (100, reason::NODEDOWN));
        assert!(c.members.is_empty());
        assert!(t.remove_nodes(7, &[(2, false)]).is_none());
    }

    /// `evs`: after a partition {2,3} | {4} heals, each side's table lacks the other's
    /// processes; every daemon announces its own and each table adds what it lacked in one
    /// confchg (`NODEUP`) after the last announce, the same at every daemon.
    #[test]
    fn an_evs_merge_announces_processes_and_writes_one_nodeup_confchg() {
        let mut sides: Vec<(u32, CpgTables)> = Vec::new();
        for (me, procs) in [
            (2u32, vec![(1u32, 100u32), (2, 200)]),
            (3, vec![(1, 300)]),
            (4, vec![(1, 400)]),
        ] {
            let mut t = CpgTables::default();
            t.open(9, "cpg:nine");
            for (session, pid) in procs {
                t.proc_join(9, session, pid);
            }
            let _ = delivered(&mut t, 9, me);
            sides.push((me, t));
        }
        // Tables as the partition left them: {2,3} know each other's processes, {4} its own.
        let pending3: Vec<_> = vec![op(OP_JOIN, 1, 300, reason::JOIN)];
        let _ = sides[0].1.deliver(9, 3, &pending3[0]);
        let pending2: Vec<_> = vec![
            op(OP_JOIN, 1, 100, reason::JOIN),
            op(OP_JOIN, 2, 200, reason::JOIN),
        ];
        for b in &pending2 {
            let _ = sides[1].1.deliver(9, 2, b);
        }
        // The merged configuration {2,3,4}: everyone announces; the order is 4, 2, 3.
        let mut chunks: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
        for (me, t) in sides.iter_mut() {
            t.merge(9, *me, &[2, 3, 4]);
            chunks.insert(*me, t.tables.get_mut(&9).unwrap().announces.drain(..).collect());
        }
        // Local changes and data wait while the merge does.
        assert!(sides.iter().all(|(_, t)| t.blocks_data(9)));
        let order = [4u32, 2, 3];
        let mut confchgs: Vec<Vec<(usize, Confchg)>> = vec![Vec::new(); 3];
        for (i, (_, t)) in sides.iter_mut().enumerate() {
            let mut at = 0;
            for from in order {
                for b in &chunks[&from] {
                    for c in t.deliver(9, from, b) {
                        confchgs[i].push((at, c));
                    }
                    at += 1;
                }
            }
        }
        assert!(sides.iter().all(|(_, t)| !t.blocks_data(9)), "merged");
        for (i, c) in confchgs.iter().enumerate() {
            assert_eq!(c.len(), 1, "daemon {}: one confchg", sides[i].0);
            assert_eq!(c[0].0, 2, "after the last announce, at every daemon");
            assert_eq!(c[0].1.members.len(), 4, "every process");
            assert!(c[0].1.joined.iter().all(|e| e.reason == reason::NODEUP));
        }
        let pids = |c: &Confchg| c.joined.iter().map(|e| e.pid).collect::<Vec<_>>();
        assert_eq!(pids(&confchgs[0][0].1), [400]);
        assert_eq!(pids(&confchgs[2][0].1), [100, 200, 300]);
        assert_eq!(sides[0].1.refused, 0);
        // A daemon new to the group (empty table) takes the processes silently; a join
        // delivered during the merge follows it, listing every member at every daemon.
        let mut fresh = CpgTables::default();
        fresh.open(9, "cpg:nine");
        fresh.merge(9, 7, &[2, 7]);
        let mine: Vec<_> = fresh.tables.get_mut(&9).unwrap().announces.drain(..).collect();
        let mut old = CpgTables::default();
        old.open(9, "cpg:nine");
        old.proc_join(9, 1, 100);
        let _ = delivered(&mut old, 9, 2);
        old.merge(9, 2, &[2, 7]);
        let theirs: Vec<_> = old.tables.get_mut(&9).unwrap().announces.drain(..).collect();
        let join = op(OP_JOIN, 1, 700, reason::JOIN);
        for t in [&mut fresh, &mut old] {
            let mut out = Vec::new();
            for b in &mine {
                out.extend(t.deliver(9, 7, b));
            }
            out.extend(t.deliver(9, 7, &join));
            assert!(out.is_empty(), "the join waits for the merge");
            for b in &theirs {
                out.extend(t.deliver(9, 2, b));
            }
            assert_eq!(out.len(), 1, "{out:?}");
            assert_eq!(out[0].joined[0].pid, 700);
            assert_eq!(out[0].members.len(), 2, "100 and 700 at both");
        }
        // A member lost before announcing: the merge completes without it.
        let (_, t) = &mut sides[0];
        t.merge(9, 2, &[2, 5]);
        let own: Vec<_> = t.tables.get_mut(&9).unwrap().announces.drain(..).collect();
        assert!(own.iter().all(|b| t.deliver(9, 2, b).is_empty()), "waits for 5");
        assert!(
            t.remove_nodes(9, &[(5, false)]).is_none(),
            "nothing of 5's to remove"
        );
        assert!(t.tables[&9].merging.is_none());
        // Malformed announces are refused, never a panic.
        t.merge(9, 2, &[2]);
        assert!(t.deliver(9, 2, &op(OP_ANNOUNCE, 2, 0, 0)).is_empty());
        assert!(t.deliver(9, 2, &op(OP_ANNOUNCE, 1, 5, 0)).is_empty());
        assert_eq!(t.refused, 2);
    }

    #[test]
    fn dormant_groups_are_bounded_oldest_first() {
        let mut t = CpgTables::default();
        for gid in 0..=MAX_DORMANT as u64 {
            assert!(!t.open(gid, &gid.to_string()), "a new group needs a join");
        }
        for gid in 0..MAX_DORMANT as u64 {
            assert_eq!(t.sleep(gid), None);
        }
        assert_eq!(
            t.sleep(MAX_DORMANT as u64),
            Some(0),
            "the one dormant longest leaves"
        );
        // Kept (and applying changes) until its leave is through; not listed.
        assert!(t.has(0));
        assert!(t.listing().iter().all(|l| l.name != "0"));
        assert!(t.open(1, "1"), "a dormant group is still a member: no join");
        assert_eq!(t.sleep(1), None);
        // Opened while its order is being left: the caller joins again, the table stays.
        assert!(!t.open(0, "0"), "an evicted group needs a join");
        t.left_order(0);
        assert!(
            t.has(0),
            "a reopened table waits for its new join's state transfer"
        );
        // Evicted and left: gone.
        assert_eq!(t.sleep(0), Some(2));
        t.left_order(2);
        assert!(!t.has(2));
    }

    #[test]
    fn snapshots_round_trip_and_malformed_ones_are_refused() {
        let mut t = CpgTables::default();
        t.open(1, "one");
        t.proc_join(1, 5, 50);
        delivered(&mut t, 1, 4);
        let snap = t.snapshot(1);
        let mut u = CpgTables::default();
        u.install(1, &snap).unwrap();
        assert!(u.is_member(1, (4 << 32) | 5));
        assert!(u.install(1, &snap[..snap.len() - 1]).is_err());
        assert!(u.install(1, &[]).is_err());
        assert!(u.install(1, &u32::MAX.to_le_bytes()).is_err());
        assert_eq!(u.refused, 3);
        // Malformed changes are refused, never a panic.
        assert!(u.deliver(1, 4, &[1, 2, 3]).is_empty());
        assert!(u.deliver(1, 4, &op(9, 1, 1, 1)).is_empty());
        assert!(u.deliver(1, 4, &op(OP_JOIN, 1, 1, reason::LEAVE)).is_empty());
    }
}
