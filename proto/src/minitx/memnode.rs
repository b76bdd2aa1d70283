//! A memory node (a Sinfonia participant): byte-addressed regions, the locks of prepared
//! transactions, and a redo log that the primary ships to its backup. Every state change
//! is a log [`Record`] applied by the same code on the primary (when it decides) and on the
//! backup (when the record arrives), so a promoted backup holds exactly the primary's
//! state up to the last entry it acknowledged; and every answer the primary gives waits
//! until the backup acknowledged all entries up to the state the answer saw, so nothing a
//! coordinator has been told is lost when the primary crashes.

use super::{MemnodeId, MinitxSettings};
use crate::{NodeId, Time};
use std::collections::{BTreeMap, HashMap, VecDeque};
use thiserror::Error;
use tutti_wire::minitx::{Items, Lock, Message, Range, Record, Reply, Status, TxId, TxnState};

/// Bytes counted per remembered decision besides its answer.
const DECIDED_OVERHEAD: usize = 64;

/// What a memory node counted. Malformed and misaddressed input is dropped and counted,
/// never trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryNodeCounters {
    /// Messages that did not decode.
    pub malformed: u64,
    /// Messages for another memory node, for the other role, or from a node that is not
    /// this node's primary/backup.
    pub misaddressed: u64,
    /// One-phase transactions committed / refused (conflict, busy, bad items).
    pub execs_committed: u64,
    pub execs_aborted: u64,
    /// Votes cast: yes / no.
    pub votes_yes: u64,
    pub votes_no: u64,
    /// Prepared transactions decided: committed / aborted (by a coordinator or recovery).
    pub commits: u64,
    pub aborts: u64,
    /// Requests refused because a lock was held by a prepared transaction.
    pub lock_conflicts: u64,
    /// Duplicate requests answered from the remembered answer.
    pub duplicates: u64,
    /// Requests of a transaction below its coordinator's floor (answered `Stale`), and
    /// queries about one (left unanswered: the outcome is forgotten).
    pub stale: u64,
    /// Requests dropped unanswered at a bound (redo log awaiting the backup, coordinator
    /// table, held answers).
    pub dropped_full: u64,
    /// Transactions aborted on the spot by a query or an abort decision before any vote.
    pub forced_aborts: u64,
    /// Recovery: queries sent, transactions resolved by recovery (commit / abort).
    pub recovery_queries: u64,
    pub recovered_commits: u64,
    pub recovered_aborts: u64,
    /// Decisions forgotten at `max_decided` / `max_decided_bytes`.
    pub decided_evicted: u64,
    /// Of those, outcomes forgotten before their coordinator confirmed that every
    /// participant holds them: a participant still in doubt about one gets no answer.
    pub unconfirmed_evicted: u64,
    /// Redo-log entries resent to the backup.
    pub replication_resends: u64,
    /// Backup: entries applied; entries refused as out of order (resent later).
    pub records_applied: u64,
    pub records_out_of_order: u64,
    /// Records that did not fit the state (unknown region, a decision for a decided
    /// transaction): ignored. Nonzero means a bug or a hostile primary.
    pub bad_records: u64,
    /// Decisions contradicting this node's recorded outcome (ignored). Nonzero means a
    /// bug or a hostile sender.
    pub conflicting_decisions: u64,
    /// Commit decisions for a transaction this node never voted yes on (ignored).
    pub unknown_decisions: u64,
    /// One-phase transactions that wrote nothing (reads and compares), answered without a
    /// log entry.
    pub unlogged_reads: u64,
    /// Entries logged by a primary without a backup (after a failover).
    pub unreplicated_records: u64,
    pub promotions: u64,
    /// Dormant readers: watching reads remembered, refused at `max_watchers`, and wake
    /// messages sent (one per remembered read, at the first committed write over it).
    pub watches: u64,
    pub watches_refused: u64,
    pub wakes_sent: u64,
}

/// Why a region could not be added.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RegionError {
    #[error("region {0} already exists")]
    Exists(u32),
    #[error("region of {size} bytes exceeds the memory node's remaining {left} bytes")]
    NoMemory { size: u64, left: u64 },
}

struct Prepared {
    participants: Vec<MemnodeId>,
    locks: Vec<Lock>,
    writes: Vec<(Range, Vec<u8>)>,
    reply: Vec<u8>,
    /// When this node voted (or was promoted): recovery starts `recovery_timeout` later.
    since: Time,
    /// Recovery: what the other participants answered.
    answers: BTreeMap<MemnodeId, TxnState>,
    last_query: Option<Time>,
}

struct Decided {
    commit: bool,
    reply: Vec<u8>,
    /// Every participant holds the outcome (a `Forget` from the coordinator).
    forgettable: bool,
}

/// The compares that failed (index among the items, current bytes) and the bytes read.
type Evaluation = (Vec<(u16, Vec<u8>)>, Vec<Vec<u8>>);

/// What a memory node knows of a transaction.
enum Known<'a> {
    Prepared(&'a Prepared),
    Decided(&'a Decided),
}

struct Primary {
    epoch: u64,
    backup: Option<NodeId>,
    /// Last log sequence number assigned.
    lsn: u64,
    /// Last one the backup acknowledged.
    acked: u64,
    unacked: VecDeque<(u64, Vec<u8>)>,
    /// Answers waiting for the backup: (lsn that must be acknowledged, to, message).
    held: VecDeque<(u64, NodeId, Vec<u8>)>,
    last_resend: Time,
}

enum Role {
    Primary(Primary),
    Backup {
        primary: NodeId,
        epoch: u64,
        applied: u64,
    },
}

/// One replica of a memory node. See the module documentation.
pub struct MemoryNode {
    id: MemnodeId,
    settings: MinitxSettings,
    role: Role,
    regions: BTreeMap<u32, Vec<u8>>,
    memory: u64,
    /// Yes votes without an outcome (each holding its locks), and remembered outcomes:
    /// apart, so that lock checks and timers walk only the prepared ones.
    /// (A BTreeMap: timers walk it, and their messages must come out in the same order
    /// in every run of a seed.)
    prepared: BTreeMap<TxId, Prepared>,
    decided: HashMap<TxId, Decided>,
    /// Outcomes in decision order, and those confirmed forgettable in confirmation order
    /// (forgotten first). Either may hold ids already forgotten through the other.
    decided_order: VecDeque<TxId>,
    forgettable_order: VecDeque<TxId>,
    decided_bytes: usize,
    /// Per coordinator node: transactions below this position are refused (their
    /// decisions may have been forgotten).
    floors: HashMap<u32, (u32, u64)>,
    /// Per coordinator node: below this, an unknown transaction may be an unconfirmed
    /// outcome forgotten here, so a query about it cannot be answered. (Above it and
    /// below `floors`, an unknown transaction was never voted on here.)
    query_floors: HashMap<u32, (u32, u64)>,
    placement: HashMap<MemnodeId, NodeId>,
    /// Dormant readers to wake (primary only): the node and the range its watching read
    /// named first, one per node, at most `max_watchers`. Empty while every reader polls,
    /// so a write costs one emptiness check.
    watchers: Vec<(NodeId, Range)>,
    out: VecDeque<(NodeId, Vec<u8>)>,
    counters: MemoryNodeCounters,
}

impl MemoryNode {
    /// The primary replica of memory node `id`, replicating to `backup` (if any) in
    /// epoch `epoch`.
    pub fn primary(
        id: MemnodeId,
        epoch: u64,
        backup: Option<NodeId>,
        settings: MinitxSettings,
    ) -> MemoryNode {
        MemoryNode::with_role(
            id,
            settings,
            Role::Primary(Primary {
                epoch,
                backup,
                lsn: 0,
                acked: 0,
                unacked: VecDeque::new(),
                held: VecDeque::new(),
                last_resend: 0,
            }),
        )
    }

    /// The backup replica of memory node `id`, following `primary` in epoch `epoch`. It
    /// must start with the same regions as the primary, before the primary logs anything.
    pub fn backup(id: MemnodeId, primary: NodeId, epoch: u64, settings: MinitxSettings) -> MemoryNode {
        MemoryNode::with_role(
            id,
            settings,
            Role::Backup {
                primary,
                epoch,
                applied: 0,
            },
        )
    }

    fn with_role(id: MemnodeId, settings: MinitxSettings, role: Role) -> MemoryNode {
        MemoryNode {
            id,
            settings,
            role,
            regions: BTreeMap::new(),
            memory: 0,
            prepared: BTreeMap::new(),
            decided: HashMap::new(),
            decided_order: VecDeque::new(),
            forgettable_order: VecDeque::new(),
            decided_bytes: 0,
            floors: HashMap::new(),
            query_floors: HashMap::new(),
            placement: HashMap::new(),
            watchers: Vec::new(),
            out: VecDeque::new(),
            counters: MemoryNodeCounters::default(),
        }
    }

    /// Adds a zero-filled region of `size` bytes (configuration: primary and backup get
    /// the same regions).
    pub fn add_region(&mut self, region: u32, size: u32) -> Result<(), RegionError> {
        if self.regions.contains_key(&region) {
            return Err(RegionError::Exists(region));
        }
        let left = self.settings.max_memory.saturating_sub(self.memory);
        if u64::from(size) > left {
            return Err(RegionError::NoMemory {
                size: u64::from(size),
                left,
            });
        }
        self.memory += u64::from(size);
        self.regions.insert(region, vec![0; size as usize]);
        Ok(())
    }

    /// Where memory node `memnode`'s primary runs (from the view): recovery queries and
    /// decisions go there.
    pub fn set_placement(&mut self, memnode: MemnodeId, node: NodeId) {
        self.placement.insert(memnode, node);
    }

    /// Failover: this backup becomes the primary in `epoch` (greater than the old one),
    /// without a backup of its own. Its prepared transactions restart their recovery
    /// timers. No-op on a primary.
    pub fn promote(&mut self, now: Time, epoch: u64) {
        let Role::Backup {
            epoch: old, applied, ..
        } = self.role
        else {
            return;
        };
        assert!(epoch > old, "promotion to epoch {epoch} from {old}");
        self.role = Role::Primary(Primary {
            epoch,
            backup: None,
            lsn: applied,
            acked: applied,
            unacked: VecDeque::new(),
            held: VecDeque::new(),
            last_resend: now,
        });
        for p in self.prepared.values_mut() {
            p.since = now;
            p.last_query = None;
        }
        self.counters.promotions += 1;
    }

    /// The backup is gone (from the view): go on alone, releasing the answers that
    /// waited for it.
    pub fn drop_backup(&mut self) {
        if let Role::Primary(p) = &mut self.role {
            p.backup = None;
            p.unacked.clear();
            p.acked = p.lsn;
            for (_, to, msg) in p.held.drain(..) {
                self.out.push_back((to, msg));
            }
        }
    }

    pub fn id(&self) -> MemnodeId {
        self.id
    }

    pub fn is_primary(&self) -> bool {
        matches!(self.role, Role::Primary(_))
    }

    /// Prepared transactions without an outcome (each holds its locks).
    pub fn in_doubt(&self) -> usize {
        self.prepared.len()
    }

    /// Redo-log entries not yet acknowledged by the backup.
    pub fn unreplicated(&self) -> usize {
        match &self.role {
            Role::Primary(p) => p.unacked.len(),
            Role::Backup { .. } => 0,
        }
    }

    /// The bytes of a region (for tests and state checks).
    pub fn region(&self, region: u32) -> Option<&[u8]> {
        self.regions.get(&region).map(Vec::as_slice)
    }

    pub fn counters(&self) -> &MemoryNodeCounters {
        &self.counters
    }

    pub fn poll_transmit(&mut self) -> Option<(NodeId, Vec<u8>)> {
        self.out.pop_front()
    }

    /// When `handle_timeout` has work: resending to the backup, or recovery queries.
    pub fn poll_timeout(&self) -> Option<Time> {
        let Role::Primary(p) = &self.role else {
            return None;
        };
        let mut next = None::<Time>;
        let mut at = |t: Time| next = Some(next.map_or(t, |n| n.min(t)));
        if p.backup.is_some() && !p.unacked.is_empty() {
            at(p.last_resend + self.settings.retransmit);
        }
        for prep in self.prepared.values() {
            at(match prep.last_query {
                None => prep.since + self.settings.recovery_timeout,
                Some(t) => t + self.settings.retransmit,
            });
        }
        next
    }

    pub fn handle_timeout(&mut self, now: Time) {
        let Role::Primary(p) = &mut self.role else {
            return;
        };
        if let Some(backup) = p.backup {
            if !p.unacked.is_empty() && now >= p.last_resend + self.settings.retransmit {
                for (_, msg) in p.unacked.iter().take(self.settings.replicate_burst) {
                    self.out.push_back((backup, msg.clone()));
                    self.counters.replication_resends += 1;
                }
                p.last_resend = now;
            }
        }
        // Recovery: ask the other participants about transactions voted long ago.
        let id = self.id;
        for (txid, prep) in &mut self.prepared {
            let due = match prep.last_query {
                None => prep.since + self.settings.recovery_timeout,
                Some(t) => t + self.settings.retransmit,
            };
            if now < due {
                continue;
            }
            prep.last_query = Some(now);
            for &m in &prep.participants {
                if m == id || prep.answers.contains_key(&m) {
                    continue;
                }
                if let Some(&node) = self.placement.get(&m) {
                    let query = Message::Query {
                        memnode: m,
                        txid: *txid,
                        from: id,
                    };
                    self.out.push_back((node, query.to_vec()));
                    self.counters.recovery_queries += 1;
                }
            }
        }
    }

    pub fn handle_message(&mut self, now: Time, from: NodeId, bytes: &[u8]) {
        let msg = match Message::decode(bytes) {
            Ok(m) => m,
            Err(_) => {
                self.counters.malformed += 1;
                return;
            }
        };
        // Answers name the memory node they come from; everything else the one it is for.
        let answer = matches!(msg, Message::QueryReply { .. } | Message::DecideAck { .. });
        if !answer && msg.memnode() != self.id {
            self.counters.misaddressed += 1;
            return;
        }
        match (&self.role, msg) {
            (
                Role::Backup { .. },
                Message::Replicate {
                    epoch, lsn, record, ..
                },
            ) => self.on_replicate(now, from, epoch, lsn, &record),
            (Role::Backup { .. }, _) => self.counters.misaddressed += 1,
            (
                Role::Primary(_),
                Message::Exec {
                    txid, items, watch, ..
                },
            ) => {
                if watch && items.writes.is_empty() {
                    self.watch(from, &items);
                }
                self.on_request(now, from, txid, None, &items)
            }
            (
                Role::Primary(_),
                Message::Prepare {
                    txid,
                    participants,
                    items,
                    ..
                },
            ) => {
                if participants.contains(&self.id) {
                    self.on_request(now, from, txid, Some(participants), &items)
                } else {
                    self.counters.misaddressed += 1;
                }
            }
            (Role::Primary(_), Message::Decide { txid, commit, .. }) => {
                self.on_decide(now, from, txid, commit)
            }
            (Role::Primary(_), Message::Query { txid, .. }) => self.on_query(now, from, txid),
            (Role::Primary(_), Message::QueryReply { memnode, txid, state }) => {
                self.on_query_reply(now, memnode, txid, state)
            }
            (Role::Primary(_), Message::ReplicateAck { epoch, lsn, .. }) => {
                self.on_replicate_ack(from, epoch, lsn)
            }
            (Role::Primary(_), Message::Forget { txids, .. }) => self.on_forget(now, &txids),
            (Role::Primary(_), Message::DecideAck { .. }) => {
                // Acks of decisions sent by recovery: nothing to track.
            }
            (Role::Primary(_), _) => self.counters.misaddressed += 1,
        }
    }

    // ----- primary: requests -----

    /// Whether the transaction may be handled at all: not below its coordinator's floor
    /// (answered `Stale`), the coordinator table and the redo log not full (dropped).
    fn admit(&mut self, from: NodeId, txid: TxId) -> bool {
        if self.below_floor(txid) {
            self.counters.stale += 1;
            let reply = self.reply(txid, Status::Stale, Vec::new(), Vec::new());
            self.answer(from, reply);
            return false;
        }
        if self.floors.contains_key(&txid.coordinator) {
            // Known coordinator.
        } else if self.floors.len() >= self.settings.max_coordinators {
            self.counters.dropped_full += 1;
            return false;
        } else {
            self.floors.insert(txid.coordinator, (0, 0));
        }
        if self.log_full() {
            self.counters.dropped_full += 1;
            return false;
        }
        true
    }

    fn known(&self, txid: &TxId) -> Option<Known<'_>> {
        match self.prepared.get(txid) {
            Some(p) => Some(Known::Prepared(p)),
            None => self.decided.get(txid).map(Known::Decided),
        }
    }

    fn below_floor(&self, txid: TxId) -> bool {
        self.floors
            .get(&txid.coordinator)
            .is_some_and(|floor| txid.position() < *floor)
    }

    fn log_full(&self) -> bool {
        match &self.role {
            Role::Primary(p) => {
                p.unacked.len() >= self.settings.max_unreplicated
                    || p.held.len() >= self.settings.max_unreplicated
            }
            Role::Backup { .. } => true,
        }
    }

    /// Exec (`participants` None) or prepare.
    fn on_request(
        &mut self,
        now: Time,
        from: NodeId,
        txid: TxId,
        participants: Option<Vec<MemnodeId>>,
        items: &Items<'_>,
    ) {
        let remembered = match self.known(&txid) {
            Some(Known::Decided(d)) => Some(d.reply.clone()),
            Some(Known::Prepared(p)) => Some(p.reply.clone()),
            None => None,
        };
        if let Some(reply) = remembered {
            self.counters.duplicates += 1;
            return self.answer(from, reply);
        }
        if !self.admit(from, txid) {
            return;
        }
        let one_phase = participants.is_none();
        if one_phase && items.writes.is_empty() && self.check_items(items).is_ok() && !self.locked(items) {
            // A one-phase transaction that writes nothing changes no state, so it is not
            // logged: logging it cost every read a round trip to the backup (and the backup
            // a record per poll of every member). Its answer still waits until the backup
            // holds every entry the answer saw (`answer`). A duplicate is evaluated again:
            // either answer is one the state held, and nothing was written either way.
            let (failed, reads) = self.evaluate(items);
            let status = if failed.is_empty() {
                self.counters.execs_committed += 1;
                Status::Committed
            } else {
                self.counters.execs_aborted += 1;
                Status::Conflict
            };
            self.counters.unlogged_reads += 1;
            let reply = self.reply(txid, status, failed, reads);
            return self.answer(from, reply);
        }
        let verdict = if let Err(status) = self.check_items(items) {
            Err(status)
        } else if !one_phase && self.prepared.len() >= self.settings.max_prepared {
            Err(Status::Busy)
        } else if self.locked(items) {
            self.counters.lock_conflicts += 1;
            Err(Status::Busy)
        } else {
            Ok(())
        };
        let reply;
        let record = match verdict {
            Err(status) => {
                reply = self.reply(txid, status, Vec::new(), Vec::new());
                self.refused(one_phase);
                Record::Outcome {
                    txid,
                    commit: false,
                    writes: Vec::new(),
                    reply: &reply,
                }
            }
            Ok(()) => {
                let (failed, reads) = self.evaluate(items);
                if !failed.is_empty() {
                    reply = self.reply(txid, Status::Conflict, failed, reads);
                    self.refused(one_phase);
                    Record::Outcome {
                        txid,
                        commit: false,
                        writes: Vec::new(),
                        reply: &reply,
                    }
                } else if let Some(participants) = participants {
                    reply = self.reply(txid, Status::Prepared, Vec::new(), reads);
                    self.counters.votes_yes += 1;
                    let locks = items
                        .compares
                        .iter()
                        .map(|c| Lock {
                            range: c.range,
                            exclusive: false,
                        })
                        .chain(items.reads.iter().map(|r| Lock {
                            range: *r,
                            exclusive: false,
                        }))
                        .chain(items.writes.iter().map(|w| Lock {
                            range: w.range,
                            exclusive: true,
                        }))
                        .collect();
                    Record::Prepared {
                        txid,
                        participants,
                        locks,
                        writes: items.writes.clone(),
                        reply: &reply,
                    }
                } else {
                    reply = self.reply(txid, Status::Committed, Vec::new(), reads);
                    self.counters.execs_committed += 1;
                    Record::Outcome {
                        txid,
                        commit: true,
                        writes: items.writes.clone(),
                        reply: &reply,
                    }
                }
            }
        };
        self.log(now, &record);
        self.answer(from, reply);
    }

    /// Remembers `from` as a dormant reader of the first range its read names (replacing
    /// what it watched before). Remembered before the read is evaluated: a write after
    /// the read (the answer would not show it) always finds the watcher.
    fn watch(&mut self, from: NodeId, items: &Items<'_>) {
        let Some(&range) = items.reads.first() else {
            return;
        };
        if let Some(w) = self.watchers.iter_mut().find(|w| w.0 == from) {
            w.1 = range;
        } else if self.watchers.len() < self.settings.max_watchers {
            self.watchers.push((from, range));
        } else {
            self.counters.watches_refused += 1;
            return;
        }
        self.counters.watches += 1;
    }

    /// Wakes (once) every dormant reader whose watched range a committed write touched.
    fn wake_watchers(&mut self, written: &Range) {
        let id = self.id;
        let mut i = 0;
        while i < self.watchers.len() {
            if overlap(&self.watchers[i].1, written) {
                let (node, _) = self.watchers.swap_remove(i);
                self.out.push_back((node, Message::Wake { memnode: id }.to_vec()));
                self.counters.wakes_sent += 1;
            } else {
                i += 1;
            }
        }
    }

    fn refused(&mut self, one_phase: bool) {
        if one_phase {
            self.counters.execs_aborted += 1;
        } else {
            self.counters.votes_no += 1;
        }
    }

    fn on_decide(&mut self, now: Time, from: NodeId, txid: TxId, commit: bool) {
        let ack = Message::DecideAck {
            memnode: self.id,
            txid,
        }
        .to_vec();
        match self.known(&txid) {
            Some(Known::Prepared(p)) => {
                if self.log_full() {
                    self.counters.dropped_full += 1;
                    return;
                }
                let reply = p.reply.clone();
                self.decide(now, txid, commit, &reply);
                self.answer(from, ack);
            }
            Some(Known::Decided(Decided { commit: c, .. })) => {
                if *c == commit {
                    self.counters.duplicates += 1;
                    self.answer(from, ack);
                } else {
                    self.counters.conflicting_decisions += 1;
                }
            }
            None if self.below_floor(txid) => {
                // Decided here and forgotten since (a late duplicate), or refused: either
                // way nothing is left to do.
                self.counters.stale += 1;
                self.answer(from, ack);
            }
            None if commit => self.counters.unknown_decisions += 1,
            None => {
                // An abort for a transaction never voted on here: record the no vote so
                // that a prepare arriving later is refused.
                if !self.admit(from, txid) {
                    return;
                }
                self.counters.forced_aborts += 1;
                let reply = self.reply(txid, Status::Aborted, Vec::new(), Vec::new());
                self.log(
                    now,
                    &Record::Outcome {
                        txid,
                        commit: false,
                        writes: Vec::new(),
                        reply: &reply,
                    },
                );
                self.answer(from, ack);
            }
        }
    }

    fn on_forget(&mut self, now: Time, txids: &[TxId]) {
        let txids: Vec<TxId> = txids
            .iter()
            .copied()
            .filter(|t| self.decided.get(t).is_some_and(|d| !d.forgettable))
            .collect();
        if txids.is_empty() {
            return;
        }
        if self.log_full() {
            self.counters.dropped_full += 1;
            return;
        }
        self.log(now, &Record::Forget { txids });
    }

    fn decide(&mut self, now: Time, txid: TxId, commit: bool, reply: &[u8]) {
        if commit {
            self.counters.commits += 1;
        } else {
            self.counters.aborts += 1;
        }
        self.log(
            now,
            &Record::Outcome {
                txid,
                commit,
                writes: Vec::new(),
                reply,
            },
        );
    }

    fn on_query(&mut self, now: Time, from: NodeId, txid: TxId) {
        let state = match self.known(&txid) {
            Some(Known::Prepared(_)) => TxnState::Prepared,
            Some(Known::Decided(Decided { commit: true, .. })) => TxnState::Committed,
            Some(Known::Decided(Decided { commit: false, .. })) => TxnState::Aborted,
            None if self.below_floor(txid) => {
                if self
                    .query_floors
                    .get(&txid.coordinator)
                    .is_some_and(|floor| txid.position() < *floor)
                {
                    // Maybe an unconfirmed outcome forgotten here: not known.
                    self.counters.stale += 1;
                    return;
                }
                // Never voted on here (or confirmed and forgotten, and then nobody is in
                // doubt about it): a prepare would be refused, so the vote is no.
                TxnState::Aborted
            }
            None => {
                if !self.admit(from, txid) {
                    return;
                }
                // Not voted: vote no now, for good.
                self.counters.forced_aborts += 1;
                let reply = self.reply(txid, Status::Aborted, Vec::new(), Vec::new());
                self.log(
                    now,
                    &Record::Outcome {
                        txid,
                        commit: false,
                        writes: Vec::new(),
                        reply: &reply,
                    },
                );
                TxnState::Aborted
            }
        };
        let answer = Message::QueryReply {
            memnode: self.id,
            txid,
            state,
        };
        self.answer(from, answer.to_vec());
    }

    fn on_query_reply(&mut self, now: Time, answering: MemnodeId, txid: TxId, state: TxnState) {
        let id = self.id;
        let Some(p) = self.prepared.get_mut(&txid) else {
            return;
        };
        if !p.participants.contains(&answering) || answering == id {
            self.counters.misaddressed += 1;
            return;
        }
        p.answers.insert(answering, state);
        let any = |s: TxnState| p.answers.values().any(|&a| a == s);
        let commit = if any(TxnState::Committed) {
            true
        } else if any(TxnState::Aborted) {
            false
        } else if p
            .participants
            .iter()
            .all(|m| *m == id || p.answers.get(m) == Some(&TxnState::Prepared))
        {
            true
        } else {
            return;
        };
        let reply = p.reply.clone();
        let others: Vec<MemnodeId> = p.participants.iter().copied().filter(|m| *m != id).collect();
        if self.log_full() {
            self.counters.dropped_full += 1;
            return;
        }
        if commit {
            self.counters.recovered_commits += 1;
        } else {
            self.counters.recovered_aborts += 1;
        }
        self.decide(now, txid, commit, &reply);
        // Tell the others (they would find out by themselves, later).
        for m in others {
            if let Some(&node) = self.placement.get(&m) {
                let decide = Message::Decide {
                    memnode: m,
                    txid,
                    commit,
                };
                self.answer(node, decide.to_vec());
            }
        }
    }

    // ----- primary: the redo log -----

    /// Applies `record` here and ships it to the backup.
    fn log(&mut self, now: Time, record: &Record<'_>) {
        self.apply(now, record);
        let Role::Primary(p) = &mut self.role else {
            unreachable!("only a primary logs");
        };
        p.lsn += 1;
        match p.backup {
            Some(backup) => {
                let msg = Message::Replicate {
                    memnode: self.id,
                    epoch: p.epoch,
                    lsn: p.lsn,
                    record: record.clone(),
                }
                .to_vec();
                if p.unacked.is_empty() {
                    p.last_resend = now;
                }
                p.unacked.push_back((p.lsn, msg.clone()));
                self.out.push_back((backup, msg));
            }
            None => {
                p.acked = p.lsn;
                self.counters.unreplicated_records += 1;
            }
        }
    }

    /// Sends `msg` once the backup holds every entry logged so far.
    fn answer(&mut self, to: NodeId, msg: Vec<u8>) {
        let Role::Primary(p) = &mut self.role else {
            return;
        };
        if p.acked >= p.lsn {
            self.out.push_back((to, msg));
        } else if p.held.len() < self.settings.max_unreplicated {
            p.held.push_back((p.lsn, to, msg));
        } else {
            self.counters.dropped_full += 1;
        }
    }

    fn on_replicate_ack(&mut self, from: NodeId, epoch: u64, lsn: u64) {
        let Role::Primary(p) = &mut self.role else {
            return;
        };
        if p.backup != Some(from) || p.epoch != epoch {
            self.counters.misaddressed += 1;
            return;
        }
        p.acked = p.acked.max(lsn.min(p.lsn));
        while p.unacked.front().is_some_and(|(l, _)| *l <= p.acked) {
            p.unacked.pop_front();
        }
        while p.held.front().is_some_and(|(l, _, _)| *l <= p.acked) {
            let (_, to, msg) = p.held.pop_front().expect("front checked");
            self.out.push_back((to, msg));
        }
    }

    // ----- backup -----

    fn on_replicate(&mut self, now: Time, from: NodeId, epoch: u64, lsn: u64, record: &Record<'_>) {
        let Role::Backup {
            primary,
            epoch: mine,
            applied,
        } = self.role
        else {
            return;
        };
        if from != primary || epoch != mine {
            self.counters.misaddressed += 1;
            return;
        }
        if lsn == applied + 1 {
            self.apply(now, record);
            self.counters.records_applied += 1;
            if let Role::Backup { applied, .. } = &mut self.role {
                *applied = lsn;
            }
        } else if lsn > applied + 1 {
            self.counters.records_out_of_order += 1;
        }
        let applied = match self.role {
            Role::Backup { applied, .. } => applied,
            Role::Primary(_) => unreachable!(),
        };
        let ack = Message::ReplicateAck {
            memnode: self.id,
            epoch,
            lsn: applied,
        };
        self.out.push_back((from, ack.to_vec()));
    }

    // ----- state, shared by both roles -----

    fn apply(&mut self, now: Time, record: &Record<'_>) {
        match record {
            Record::Prepared {
                txid,
                participants,
                locks,
                writes,
                reply,
            } => {
                if self.prepared.contains_key(txid) || self.decided.contains_key(txid) {
                    self.counters.bad_records += 1;
                    return;
                }
                self.prepared.insert(
                    *txid,
                    Prepared {
                        participants: participants.clone(),
                        locks: locks.clone(),
                        writes: writes.iter().map(|w| (w.range, w.data.to_vec())).collect(),
                        reply: reply.to_vec(),
                        since: now,
                        answers: BTreeMap::new(),
                        last_query: None,
                    },
                );
            }
            Record::Outcome {
                txid,
                commit,
                writes,
                reply,
            } => {
                if self.decided.contains_key(txid) {
                    self.counters.bad_records += 1;
                    return;
                }
                if let Some(p) = self.prepared.remove(txid) {
                    if *commit {
                        for (range, data) in &p.writes {
                            self.store(range, data);
                            if !self.watchers.is_empty() {
                                self.wake_watchers(range);
                            }
                        }
                    }
                }
                if *commit {
                    for w in writes {
                        self.store(&w.range, w.data);
                        if !self.watchers.is_empty() {
                            self.wake_watchers(&w.range);
                        }
                    }
                }
                self.decided_bytes += reply.len() + DECIDED_OVERHEAD;
                self.decided.insert(
                    *txid,
                    Decided {
                        commit: *commit,
                        reply: reply.to_vec(),
                        forgettable: false,
                    },
                );
                self.decided_order.push_back(*txid);
                self.evict();
            }
            Record::Forget { txids } => {
                for txid in txids {
                    if let Some(d) = self.decided.get_mut(txid) {
                        if !d.forgettable {
                            d.forgettable = true;
                            self.forgettable_order.push_back(*txid);
                        }
                    }
                }
            }
        }
    }

    /// Forgets outcomes beyond `max_decided` / `max_decided_bytes`: confirmed ones first,
    /// then the oldest. Each raises its coordinator's floor past it (older transactions
    /// are refused); an unconfirmed one raises the query floor too.
    fn evict(&mut self) {
        while self.decided.len() > self.settings.max_decided
            || self.decided_bytes > self.settings.max_decided_bytes
        {
            let (txid, confirmed) = match self.forgettable_order.pop_front() {
                Some(txid) => (txid, true),
                None => match self.decided_order.pop_front() {
                    Some(txid) => (txid, false),
                    None => break,
                },
            };
            let Some(forgotten) = self.decided.remove(&txid) else {
                continue; // forgotten through the other queue
            };
            self.decided_bytes -= forgotten.reply.len() + DECIDED_OVERHEAD;
            self.counters.decided_evicted += 1;
            let next = match txid.seq.checked_add(1) {
                Some(seq) => (txid.incarnation, seq),
                None => (txid.incarnation.saturating_add(1), 0),
            };
            let floor = self.floors.entry(txid.coordinator).or_insert((0, 0));
            *floor = (*floor).max(next);
            if !confirmed {
                self.counters.unconfirmed_evicted += 1;
                let floor = self.query_floors.entry(txid.coordinator).or_insert((0, 0));
                *floor = (*floor).max(next);
            }
        }
        // Ids forgotten through the forgettable queue linger in the decision-order queue.
        if self.decided_order.len() > 2 * self.settings.max_decided + 16 {
            let decided = &self.decided;
            self.decided_order.retain(|t| decided.contains_key(t));
        }
    }

    fn store(&mut self, range: &Range, data: &[u8]) {
        match self.slice_mut(range) {
            Some(dst) if dst.len() == data.len() => dst.copy_from_slice(data),
            _ => self.counters.bad_records += 1,
        }
    }

    fn slice(&self, range: &Range) -> Option<&[u8]> {
        let start = range.offset as usize;
        let end = start.checked_add(range.len as usize)?;
        self.regions.get(&range.region)?.get(start..end)
    }

    fn slice_mut(&mut self, range: &Range) -> Option<&mut [u8]> {
        let start = range.offset as usize;
        let end = start.checked_add(range.len as usize)?;
        self.regions.get_mut(&range.region)?.get_mut(start..end)
    }

    /// Sizes, regions and bounds of every item.
    fn check_items(&self, items: &Items<'_>) -> Result<(), Status> {
        let count = items.compares.len() + items.reads.len() + items.writes.len();
        let bytes: u64 = items
            .compares
            .iter()
            .chain(items.writes.iter())
            .map(|i| u64::from(i.range.len))
            .chain(items.reads.iter().map(|r| u64::from(r.len)))
            .sum();
        if count > self.settings.max_items || bytes > self.settings.txn_byte_limit() {
            return Err(Status::TooLarge);
        }
        let ranges = items
            .compares
            .iter()
            .map(|c| &c.range)
            .chain(items.reads.iter())
            .chain(items.writes.iter().map(|w| &w.range));
        for range in ranges {
            let Some(region) = self.regions.get(&range.region) else {
                return Err(Status::RegionMissing);
            };
            if u64::from(range.offset) + u64::from(range.len) > region.len() as u64 {
                return Err(Status::OutOfBounds);
            }
        }
        Ok(())
    }

    /// Whether a lock the items need is held (incompatibly) by a prepared transaction.
    fn locked(&self, items: &Items<'_>) -> bool {
        let wanted = items
            .compares
            .iter()
            .map(|c| (c.range, false))
            .chain(items.reads.iter().map(|r| (*r, false)))
            .chain(items.writes.iter().map(|w| (w.range, true)));
        // At most `max_prepared` transactions of at most `MAX_ITEMS * 3` locks each.
        let mut held = self.prepared.values().flat_map(|p| p.locks.iter());
        held.any(|lock| {
            wanted
                .clone()
                .any(|(range, exclusive)| (exclusive || lock.exclusive) && overlap(&range, &lock.range))
        })
    }

    /// The failed compares (index, current bytes) and the read bytes. Items are checked.
    fn evaluate(&self, items: &Items<'_>) -> Evaluation {
        let mut failed = Vec::new();
        for (i, c) in items.compares.iter().enumerate() {
            let current = self.slice(&c.range).unwrap_or_default();
            if current != c.data {
                // At most MAX_ITEMS compares decode, so the index fits.
                failed.push((i as u16, current.to_vec()));
            }
        }
        let reads = items
            .reads
            .iter()
            .map(|r| self.slice(r).unwrap_or_default().to_vec())
            .collect();
        (failed, reads)
    }

    fn reply(&self, txid: TxId, status: Status, failed: Vec<(u16, Vec<u8>)>, reads: Vec<Vec<u8>>) -> Vec<u8> {
        Message::Reply {
            memnode: self.id,
            txid,
            reply: Reply {
                status,
                failed: failed.iter().map(|(i, b)| (*i, b.as_slice())).collect(),
                reads: reads.iter().map(Vec::as_slice).collect(),
            },
        }
        .to_vec()
    }
}

fn overlap(a: &Range, b: &Range) -> bool {
    a.region == b.region
        && u64::from(a.offset) < u64::from(b.offset) + u64::from(b.len)
        && u64::from(b.offset) < u64::from(a.offset) + u64::from(a.len)
}
