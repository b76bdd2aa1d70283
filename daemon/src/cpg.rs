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
use std::collections::{HashMap, VecDeque};
use std::time::Instant;
use tutti_wire::shm::CpgEntry;

/// The session id under which a daemon publishes process-table changes in a cpg group's
/// order. Client sessions are numbered from 1 upwards and never reach it.
pub const CONTROL_SESSION: u32 = u32::MAX;

/// `cpg_reason_t` codes (Corosync's `corosync/cpg.h`).
pub mod reason {
    pub const JOIN: u32 = 1;
    pub const LEAVE: u32 = 2;
    pub const NODEDOWN: u32 = 3;
    pub const PROCDOWN: u32 = 5;
}

/// Bytes of one process-table change in the order: kind, session, pid, reason.
const OP_LEN: usize = 16;
const OP_JOIN: u32 = 1;
const OP_LEAVE: u32 = 2;
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
    /// The group's last local member went (when): the daemon stays in its order, dormant.
    dormant: Option<Instant>,
    /// Dormant too long: the daemon leaves the group's order. The table is kept, and kept
    /// current, until that leave is through ([`CpgTables::left_order`]): a process that
    /// joins meanwhile finds the daemon either still in the order (its leave cancelled
    /// before it was sent) with a table that is right, or joining afresh, when the state
    /// transfer replaces the table.
    evicted: bool,
}

impl Table {
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
    tables: HashMap<u64, Table>,
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
        self.tables.get(&gid).is_some_and(|t| !t.pending.is_empty())
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
            while let Some(bytes) = t.pending.front() {
                match cluster.submit_ordered(gid, CONTROL_SESSION, bytes, false) {
                    Ok(()) => {
                        t.pending.pop_front();
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

    /// Applies a change delivered in the order from daemon `node`; the confchg to write.
    pub fn deliver(&mut self, gid: u64, node: u32, bytes: &[u8]) -> Option<Confchg> {
        let t = self.tables.get_mut(&gid)?;
        let word = |i: usize| -> Option<u32> {
            Some(u32::from_le_bytes(bytes.get(4 * i..4 * i + 4)?.try_into().ok()?))
        };
        let (Some(kind), Some(session), Some(pid), Some(why)) = (word(0), word(1), word(2), word(3)) else {
            self.refused += 1;
            return None;
        };
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
        (!gone.is_empty()).then(|| t.confchg(Vec::new(), gone))
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

    fn delivered(t: &mut CpgTables, gid: u64, node: u32) -> Vec<Confchg> {
        let pending: Vec<_> = t.tables.get_mut(&gid).unwrap().pending.drain(..).collect();
        pending.iter().filter_map(|b| t.deliver(gid, node, b)).collect()
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
        assert!(u.deliver(1, 4, &[1, 2, 3]).is_none());
        assert!(u.deliver(1, 4, &op(9, 1, 1, 1)).is_none());
        assert!(u.deliver(1, 4, &op(OP_JOIN, 1, 1, reason::LEAVE)).is_none());
    }
}
