//! The issuing side of minitransactions (the Sinfonia "application node"): splits a
//! minitransaction by memory node, runs it in one phase (one memory node) or by two-phase
//! commit (several: compares and reads ride the prepare), resends what is unanswered, and
//! reports one [`Outcome`] per transaction. It keeps no log: the outcome is a function of
//! the participants' durable votes (see the module documentation of `minitx`), so a
//! coordinator that crashes loses only its knowledge of the outcome, never the outcome.

use super::{MemnodeId, Minitransaction, MinitxSettings, TxnError};
use crate::{NodeId, Time};
use std::collections::{BTreeMap, HashMap, VecDeque};
use tutti_wire::minitx::{
    Item, Items, Message, Range, Status, TxId, MAX_FORGET, MAX_ITEMS, MAX_PARTICIPANTS,
};

/// The end of one minitransaction: its read items (in the order of `reads`) if it
/// committed, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub txid: TxId,
    pub result: Result<Vec<Vec<u8>>, TxnError>,
}

/// What a coordinator counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoordinatorCounters {
    pub submitted: u64,
    pub one_phase: u64,
    pub two_phase: u64,
    pub committed: u64,
    pub conflicts: u64,
    pub busy: u64,
    /// Region missing, out of bounds, too large (from a memory node).
    pub refused: u64,
    /// Reported `Unavailable`: no answer within `txn_timeout`, or `Stale`.
    pub unavailable: u64,
    /// Requests and decisions resent.
    pub retransmits: u64,
    /// Messages that did not decode, or that this coordinator does not take.
    pub malformed: u64,
    /// Answers for a transaction no longer (or never) in flight here.
    pub late_answers: u64,
    /// Answers inconsistent with the request (read lengths, compare indexes, status kind):
    /// ignored. Nonzero means a bug or a hostile sender.
    pub bad_answers: u64,
    /// Decisions no longer resent after `decide_timeout` (the participants recover).
    pub decisions_abandoned: u64,
}

struct PartAnswer {
    status: Status,
    failed: Vec<(u16, Vec<u8>)>,
    reads: Vec<Vec<u8>>,
}

struct Part {
    memnode: MemnodeId,
    request: Vec<u8>,
    /// Index in the minitransaction of each of this part's compare items, and of each
    /// read item with its length.
    compares: Vec<(usize, u32)>,
    reads: Vec<(usize, u32)>,
    answer: Option<PartAnswer>,
    /// Phase 2: the participant acknowledged the decision (or needs none).
    acked: bool,
}

enum Phase {
    Voting,
    Deciding { commit: bool, since: Time },
}

struct Txn {
    txid: TxId,
    parts: Vec<Part>,
    phase: Phase,
    started: Time,
    last_send: Time,
    reads: usize,
}

/// A minitransaction coordinator. See the module documentation.
pub struct Coordinator {
    node: NodeId,
    incarnation: u32,
    next_seq: u64,
    settings: MinitxSettings,
    placement: HashMap<MemnodeId, NodeId>,
    in_majority: bool,
    txns: BTreeMap<u64, Txn>,
    out: VecDeque<(NodeId, Vec<u8>)>,
    events: VecDeque<Outcome>,
    /// Finished transactions to report to each memory node as forgettable.
    forget: BTreeMap<MemnodeId, Vec<TxId>>,
    last_forget_flush: Time,
    counters: CoordinatorCounters,
}

impl Coordinator {
    /// The coordinator of node `node` in incarnation `incarnation`: a restarted node must
    /// come back with a greater incarnation (memory nodes order a coordinator's
    /// transactions by `(incarnation, seq)`).
    pub fn new(node: NodeId, incarnation: u32, settings: MinitxSettings) -> Coordinator {
        Coordinator {
            node,
            incarnation,
            next_seq: 0,
            settings,
            placement: HashMap::new(),
            in_majority: true,
            txns: BTreeMap::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            forget: BTreeMap::new(),
            last_forget_flush: 0,
            counters: CoordinatorCounters::default(),
        }
    }

    /// The seq the next transaction gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Starts numbering at `seq` at least: a coordinator that replaces another of the same
    /// node and incarnation (a group member created again after its removal) must not reuse
    /// its transaction ids, or a memory node answers a new transaction with the recorded
    /// answer of the old one.
    pub fn skip_to(&mut self, seq: u64) {
        self.next_seq = self.next_seq.max(seq);
    }

    /// Where memory node `memnode`'s primary runs (from the view). Unanswered requests
    /// are resent there.
    pub fn set_placement(&mut self, memnode: MemnodeId, node: NodeId) {
        self.placement.insert(memnode, node);
    }

    /// Where memory node `memnode`'s primary runs, as this coordinator knows it.
    pub fn placement(&self, memnode: MemnodeId) -> Option<NodeId> {
        self.placement.get(&memnode).copied()
    }

    /// Whether this node is in a majority view (from the view); outside one, `submit`
    /// refuses with `NotInMajority`.
    pub fn set_in_majority(&mut self, in_majority: bool) {
        self.in_majority = in_majority;
    }

    /// Minitransactions submitted and not yet fully finished (including decisions still
    /// being delivered).
    pub fn in_flight(&self) -> usize {
        self.txns.len()
    }

    pub fn counters(&self) -> &CoordinatorCounters {
        &self.counters
    }

    pub fn poll_transmit(&mut self) -> Option<(NodeId, Vec<u8>)> {
        self.out.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Outcome> {
        self.events.pop_front()
    }

    /// Starts a minitransaction; its [`Outcome`] comes from `poll_event` with this id.
    /// Refusals that need no memory node (`NotInMajority`, `Full`, `TooLarge`, a memory
    /// node not in the placement) come back at once.
    pub fn submit(&mut self, now: Time, mtx: &Minitransaction) -> Result<TxId, TxnError> {
        if !self.in_majority {
            return Err(TxnError::NotInMajority);
        }
        if self.txns.len() >= self.settings.max_in_flight {
            return Err(TxnError::Full);
        }
        if mtx.item_count() > self.settings.max_items || mtx.byte_count() > self.settings.txn_byte_limit() {
            return Err(TxnError::TooLarge);
        }
        let memnodes = mtx.memnodes();
        if memnodes.len() > MAX_PARTICIPANTS {
            return Err(TxnError::TooLarge);
        }
        if let Some(&missing) = memnodes.iter().find(|m| !self.placement.contains_key(m)) {
            return Err(TxnError::RegionMissing { memnode: missing });
        }
        let txid = TxId {
            coordinator: self.node,
            incarnation: self.incarnation,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        self.counters.submitted += 1;
        if memnodes.is_empty() {
            self.counters.committed += 1;
            self.events.push_back(Outcome {
                txid,
                result: Ok(Vec::new()),
            });
            return Ok(txid);
        }
        let one_phase = memnodes.len() == 1;
        let mut parts = Vec::with_capacity(memnodes.len());
        for &memnode in &memnodes {
            let range = |at: &super::Address, len: u32| Range {
                region: at.region,
                offset: at.offset,
                len,
            };
            let mut items = Items::default();
            let mut compares = Vec::new();
            let mut reads = Vec::new();
            for (i, (at, data)) in mtx.compares.iter().enumerate() {
                if at.memnode == memnode {
                    let len = data.len() as u32;
                    items.compares.push(Item {
                        range: range(at, len),
                        data,
                    });
                    compares.push((i, len));
                }
            }
            for (i, (at, len)) in mtx.reads.iter().enumerate() {
                if at.memnode == memnode {
                    items.reads.push(range(at, *len));
                    reads.push((i, *len));
                }
            }
            for (at, data) in &mtx.writes {
                if at.memnode == memnode {
                    items.writes.push(Item {
                        range: range(at, data.len() as u32),
                        data,
                    });
                }
            }
            if items.compares.len() > MAX_ITEMS
                || items.reads.len() > MAX_ITEMS
                || items.writes.len() > MAX_ITEMS
            {
                return Err(TxnError::TooLarge);
            }
            let request = if one_phase {
                Message::Exec {
                    memnode,
                    txid,
                    watch: mtx.watch && mtx.writes.is_empty(),
                    items,
                }
            } else {
                Message::Prepare {
                    memnode,
                    txid,
                    participants: memnodes.clone(),
                    items,
                }
            }
            .to_vec();
            parts.push(Part {
                memnode,
                request,
                compares,
                reads,
                answer: None,
                acked: false,
            });
        }
        if one_phase {
            self.counters.one_phase += 1;
        } else {
            self.counters.two_phase += 1;
        }
        for part in &parts {
            self.out
                .push_back((self.placement[&part.memnode], part.request.clone()));
        }
        self.txns.insert(
            txid.seq,
            Txn {
                txid,
                parts,
                phase: Phase::Voting,
                started: now,
                last_send: now,
                reads: mtx.reads.len(),
            },
        );
        Ok(txid)
    }

    pub fn handle_message(&mut self, now: Time, _from: NodeId, bytes: &[u8]) {
        match Message::decode(bytes) {
            Ok(Message::Reply { memnode, txid, reply }) => {
                let answer = PartAnswer {
                    status: reply.status,
                    failed: reply.failed.iter().map(|(i, b)| (*i, b.to_vec())).collect(),
                    reads: reply.reads.iter().map(|b| b.to_vec()).collect(),
                };
                self.on_answer(now, memnode, txid, answer);
            }
            Ok(Message::DecideAck { memnode, txid }) => self.on_decide_ack(memnode, txid),
            Ok(_) | Err(_) => self.counters.malformed += 1,
        }
    }

    fn txn_mut(&mut self, txid: TxId) -> Option<&mut Txn> {
        if txid.coordinator != self.node || txid.incarnation != self.incarnation {
            return None;
        }
        self.txns.get_mut(&txid.seq).filter(|t| t.txid == txid)
    }

    fn on_answer(&mut self, now: Time, memnode: MemnodeId, txid: TxId, answer: PartAnswer) {
        let Some(txn) = self.txn_mut(txid) else {
            self.counters.late_answers += 1;
            return;
        };
        if !matches!(txn.phase, Phase::Voting) {
            self.counters.late_answers += 1;
            return;
        }
        let one_phase = txn.parts.len() == 1;
        let Some(part) = txn.parts.iter_mut().find(|p| p.memnode == memnode) else {
            self.counters.bad_answers += 1;
            return;
        };
        if part.answer.is_some() {
            self.counters.late_answers += 1;
            return;
        }
        if !plausible(part, &answer, one_phase) {
            self.counters.bad_answers += 1;
            return;
        }
        part.answer = Some(answer);
        let txn = self.txns.get(&txid.seq).expect("found above");
        if one_phase {
            let part = &txn.parts[0];
            let answer = part.answer.as_ref().expect("just set");
            let result = if answer.status == Status::Committed {
                Ok(assemble_reads(txn))
            } else {
                Err(error_of(txn))
            };
            self.finish(txid, result);
            self.txns.remove(&txid.seq);
            self.forget_later(memnode, txid);
            return;
        }
        let any_no = txn
            .parts
            .iter()
            .any(|p| p.answer.as_ref().is_some_and(|a| a.status != Status::Prepared));
        let all_yes = txn
            .parts
            .iter()
            .all(|p| p.answer.as_ref().is_some_and(|a| a.status == Status::Prepared));
        if !any_no && !all_yes {
            return;
        }
        // All yes: committed (the votes are durable). One no: aborted, whatever the
        // others vote.
        let commit = all_yes;
        let result = if commit {
            Ok(assemble_reads(txn))
        } else {
            Err(error_of(txn))
        };
        self.finish(txid, result);
        let txn = self.txns.get_mut(&txid.seq).expect("found above");
        txn.phase = Phase::Deciding { commit, since: now };
        txn.last_send = now;
        for part in &mut txn.parts {
            // A participant that voted no has aborted already.
            if part.answer.as_ref().is_some_and(|a| a.status != Status::Prepared) {
                part.acked = true;
                continue;
            }
            if let Some(&node) = self.placement.get(&part.memnode) {
                let decide = Message::Decide {
                    memnode: part.memnode,
                    txid,
                    commit,
                };
                self.out.push_back((node, decide.to_vec()));
            }
        }
        self.retire_if_done(txid.seq);
    }

    fn finish(&mut self, txid: TxId, result: Result<Vec<Vec<u8>>, TxnError>) {
        match &result {
            Ok(_) => self.counters.committed += 1,
            Err(TxnError::Conflict { .. }) => self.counters.conflicts += 1,
            Err(TxnError::Busy) => self.counters.busy += 1,
            Err(TxnError::Unavailable) => self.counters.unavailable += 1,
            Err(_) => self.counters.refused += 1,
        }
        self.events.push_back(Outcome { txid, result });
    }

    fn on_decide_ack(&mut self, memnode: MemnodeId, txid: TxId) {
        let Some(txn) = self.txn_mut(txid) else {
            self.counters.late_answers += 1;
            return;
        };
        if !matches!(txn.phase, Phase::Deciding { .. }) {
            self.counters.bad_answers += 1;
            return;
        }
        match txn.parts.iter_mut().find(|p| p.memnode == memnode) {
            Some(part) => part.acked = true,
            None => {
                self.counters.bad_answers += 1;
                return;
            }
        }
        self.retire_if_done(txid.seq);
    }

    fn retire_if_done(&mut self, seq: u64) {
        if self
            .txns
            .get(&seq)
            .is_some_and(|t| t.parts.iter().all(|p| p.acked))
        {
            let txn = self.txns.remove(&seq).expect("checked above");
            for part in &txn.parts {
                self.forget_later(part.memnode, txn.txid);
            }
        }
    }

    /// Every participant holds `txid`'s outcome: tell `memnode` it may forget it (in
    /// batches; a lost notice only means the outcome is kept longer).
    fn forget_later(&mut self, memnode: MemnodeId, txid: TxId) {
        let list = self.forget.entry(memnode).or_default();
        list.push(txid);
        if list.len() >= MAX_FORGET {
            self.flush_forget(memnode);
        }
    }

    fn flush_forget(&mut self, memnode: MemnodeId) {
        let Some(txids) = self.forget.remove(&memnode) else {
            return;
        };
        if let Some(&node) = self.placement.get(&memnode) {
            let msg = Message::Forget { memnode, txids };
            self.out.push_back((node, msg.to_vec()));
        }
    }

    pub fn poll_timeout(&self) -> Option<Time> {
        let forget = (!self.forget.is_empty()).then(|| self.last_forget_flush + self.settings.retransmit);
        self.txns
            .values()
            .map(|t| {
                let deadline = match t.phase {
                    Phase::Voting => t.started + self.settings.txn_timeout,
                    Phase::Deciding { since, .. } => since + self.settings.decide_timeout,
                };
                deadline.min(t.last_send + self.settings.retransmit)
            })
            .chain(forget)
            .min()
    }

    pub fn handle_timeout(&mut self, now: Time) {
        if !self.forget.is_empty() && now >= self.last_forget_flush + self.settings.retransmit {
            let memnodes: Vec<MemnodeId> = self.forget.keys().copied().collect();
            for memnode in memnodes {
                self.flush_forget(memnode);
            }
            self.last_forget_flush = now;
        }
        let mut expired = Vec::new();
        for (seq, txn) in &mut self.txns {
            match txn.phase {
                Phase::Voting if now >= txn.started + self.settings.txn_timeout => {
                    expired.push((*seq, true));
                    continue;
                }
                Phase::Deciding { since, .. } if now >= since + self.settings.decide_timeout => {
                    expired.push((*seq, false));
                    continue;
                }
                _ => {}
            }
            if now < txn.last_send + self.settings.retransmit {
                continue;
            }
            txn.last_send = now;
            for part in &txn.parts {
                let Some(&node) = self.placement.get(&part.memnode) else {
                    continue;
                };
                let msg = match txn.phase {
                    Phase::Voting if part.answer.is_none() => part.request.clone(),
                    Phase::Deciding { commit, .. } if !part.acked => Message::Decide {
                        memnode: part.memnode,
                        txid: txn.txid,
                        commit,
                    }
                    .to_vec(),
                    _ => continue,
                };
                self.out.push_back((node, msg));
                self.counters.retransmits += 1;
            }
        }
        for (seq, voting) in expired {
            let txn = self.txns.remove(&seq).expect("listed above");
            if voting {
                self.finish(txn.txid, Err(TxnError::Unavailable));
            } else {
                self.counters.decisions_abandoned += 1;
            }
        }
    }
}

/// Whether an answer fits the request: a status of the right phase, the read lengths
/// asked for, compare indexes and lengths of this part's compares.
fn plausible(part: &Part, answer: &PartAnswer, one_phase: bool) -> bool {
    // `Stale` comes in both phases: an exec too old to remember, or a no vote.
    let status_ok = match answer.status {
        Status::Committed => one_phase,
        Status::Prepared | Status::Aborted => !one_phase,
        _ => true,
    };
    let with_data = matches!(
        answer.status,
        Status::Committed | Status::Prepared | Status::Conflict
    );
    let reads_ok = if with_data {
        answer.reads.len() == part.reads.len()
            && answer
                .reads
                .iter()
                .zip(&part.reads)
                .all(|(got, (_, len))| got.len() == *len as usize)
    } else {
        answer.reads.is_empty()
    };
    let failed_ok = (answer.status == Status::Conflict) != answer.failed.is_empty()
        && answer.failed.iter().all(|(i, bytes)| {
            part.compares
                .get(usize::from(*i))
                .is_some_and(|(_, len)| bytes.len() == *len as usize)
        });
    status_ok && reads_ok && failed_ok
}

fn assemble_reads(txn: &Txn) -> Vec<Vec<u8>> {
    let mut reads = vec![Vec::new(); txn.reads];
    for part in &txn.parts {
        if let Some(answer) = &part.answer {
            for ((index, _), bytes) in part.reads.iter().zip(&answer.reads) {
                reads[*index] = bytes.clone();
            }
        }
    }
    reads
}

/// The error of an aborted transaction, from the answers in: a conflict first (it says
/// why), then refusals of the items, then busy.
fn error_of(txn: &Txn) -> TxnError {
    let answers = || txn.parts.iter().filter_map(|p| p.answer.as_ref().map(|a| (p, a)));
    if answers().any(|(_, a)| a.status == Status::Conflict) {
        let mut failed = Vec::new();
        let mut reads = vec![None; txn.reads];
        for (part, answer) in answers() {
            for (local, bytes) in &answer.failed {
                failed.push((part.compares[usize::from(*local)].0, bytes.clone()));
            }
            if answer.status == Status::Conflict || answer.status == Status::Prepared {
                for ((index, _), bytes) in part.reads.iter().zip(&answer.reads) {
                    reads[*index] = Some(bytes.clone());
                }
            }
        }
        failed.sort_by_key(|(i, _)| *i);
        return TxnError::Conflict { failed, reads };
    }
    for (part, answer) in answers() {
        match answer.status {
            Status::RegionMissing => {
                return TxnError::RegionMissing {
                    memnode: part.memnode,
                }
            }
            Status::OutOfBounds => {
                return TxnError::OutOfBounds {
                    memnode: part.memnode,
                }
            }
            Status::TooLarge => return TxnError::TooLarge,
            _ => {}
        }
    }
    if txn.parts.len() == 1 && answers().any(|(_, a)| a.status == Status::Stale) {
        // A one-phase transaction too old for the memory node to remember: it may have
        // run.
        return TxnError::Unavailable;
    }
    TxnError::Busy
}
