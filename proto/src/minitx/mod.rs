//! Minitransactions over replicated memory nodes (Aguilera et al., *Sinfonia*, TOCS 2009):
//! the foundation of ordered groups, and offered to applications. A [`MemoryNode`] holds
//! byte-addressed regions, a lock table and a redo log replicated to its backup; a
//! [`Coordinator`] runs minitransactions over them (one phase on one memory node, two-phase
//! commit across several). Both are sans-IO: messages in as `(from, bytes)`, time passed
//! in, messages out through `poll_transmit`, outcomes through `poll_event`.
//!
//! **The rule that makes a coordinator crash harmless.** A transaction commits iff every
//! participant votes yes. A participant casts its vote once, makes it durable (replicated to
//! its backup) before anyone sees it, and never changes it; a participant asked about a
//! transaction it has not voted on (a recovery query, or an abort decision) records a no
//! vote on the spot, so a prepare arriving later is refused. The coordinator and any
//! participant recovering a transaction therefore compute the same outcome from the same
//! votes: a participant holding a yes vote past `recovery_timeout` asks the other
//! participants (named in the prepare) and commits iff all voted yes or one committed,
//! aborts iff one voted no or aborted. See `docs/ordered.md`.

mod coordinator;
mod memnode;

pub use coordinator::{Coordinator, CoordinatorCounters, Outcome};
pub use memnode::{MemoryNode, MemoryNodeCounters, RegionError};
pub use tutti_wire::minitx::TxId;

use crate::{Time, MILLIS};
use thiserror::Error;

/// A memory node's identity (a logical node: its primary and backup run on daemons that
/// the placement names).
pub type MemnodeId = u16;

/// Where an item lives: `offset` in region `region` of memory node `memnode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Address {
    pub memnode: MemnodeId,
    pub region: u32,
    pub offset: u32,
}

impl Address {
    pub fn new(memnode: MemnodeId, region: u32, offset: u32) -> Address {
        Address {
            memnode,
            region,
            offset,
        }
    }
}

/// A minitransaction: if every compare item matches, every write item is applied and every
/// read item returned, atomically; otherwise nothing is written. Reads see the state
/// before the writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Minitransaction {
    pub compares: Vec<(Address, Vec<u8>)>,
    pub reads: Vec<(Address, u32)>,
    pub writes: Vec<(Address, Vec<u8>)>,
    /// The sender is a dormant reader: a one-phase transaction that writes nothing asks
    /// its memory node to wake it (a `wake` message, once) when a committed write first
    /// touches its first read item. Ignored on other transactions.
    pub watch: bool,
}

impl Minitransaction {
    pub fn new() -> Minitransaction {
        Minitransaction::default()
    }

    /// Requires the bytes at `at` to equal `expected`.
    pub fn compare(mut self, at: Address, expected: &[u8]) -> Minitransaction {
        self.compares.push((at, expected.to_vec()));
        self
    }

    /// Returns `len` bytes at `at`.
    pub fn read(mut self, at: Address, len: u32) -> Minitransaction {
        self.reads.push((at, len));
        self
    }

    /// Stores `bytes` at `at`.
    pub fn write(mut self, at: Address, bytes: &[u8]) -> Minitransaction {
        self.writes.push((at, bytes.to_vec()));
        self
    }

    /// Marks the transaction as a dormant reader's (see [`Minitransaction::watch`]).
    pub fn watching(mut self, watch: bool) -> Minitransaction {
        self.watch = watch;
        self
    }

    /// The memory nodes involved, sorted, without repetition.
    pub fn memnodes(&self) -> Vec<MemnodeId> {
        let mut all: Vec<MemnodeId> = self
            .compares
            .iter()
            .map(|(a, _)| a.memnode)
            .chain(self.reads.iter().map(|(a, _)| a.memnode))
            .chain(self.writes.iter().map(|(a, _)| a.memnode))
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Items of all kinds together.
    pub fn item_count(&self) -> usize {
        self.compares.len() + self.reads.len() + self.writes.len()
    }

    /// Bytes the transaction moves: compare and write data, and read lengths.
    pub fn byte_count(&self) -> u64 {
        self.compares
            .iter()
            .map(|(_, d)| d.len() as u64)
            .chain(self.writes.iter().map(|(_, d)| d.len() as u64))
            .chain(self.reads.iter().map(|(_, len)| u64::from(*len)))
            .sum()
    }
}

/// Why a minitransaction did not commit. Every error but [`TxnError::Unavailable`] means
/// nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TxnError {
    /// A compare item did not match. `failed` holds (index in `compares`, current bytes)
    /// of the failed compares known; `reads` the read items of the memory nodes that
    /// answered (`None` for the others).
    #[error("compare failed: {} item(s) differ", failed.len())]
    Conflict {
        failed: Vec<(usize, Vec<u8>)>,
        reads: Vec<Option<Vec<u8>>>,
    },
    /// A memory node could not take its locks (another transaction holds them) or was at
    /// one of its bounds: retry, preferably after a short random pause.
    #[error("a memory node is busy (locks held or a bound reached): retry")]
    Busy,
    /// A memory node lacks a region an item names, or is not in the placement.
    #[error("memory node {memnode} is not placed or lacks a region the items name")]
    RegionMissing { memnode: MemnodeId },
    /// An item reaches past the end of its region.
    #[error("an item reaches past the end of its region on memory node {memnode}")]
    OutOfBounds { memnode: MemnodeId },
    /// More items, bytes or memory nodes than the limits allow.
    #[error("the minitransaction exceeds a size limit")]
    TooLarge,
    /// This node is not in a majority view: it may not run minitransactions.
    #[error("not in a majority view")]
    NotInMajority,
    /// No answer within `txn_timeout` (or a memory node no longer remembers the
    /// transaction): the outcome is NOT known to this coordinator. It is decided all the
    /// same (the participants resolve it by the recovery rule); read the data to learn it.
    #[error("memory node unavailable: outcome unknown")]
    Unavailable,
    /// The coordinator already runs `max_in_flight` transactions: back pressure.
    #[error("too many minitransactions in flight")]
    Full,
}

/// Limits and timers of the minitransaction layer, each with its default and its trade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinitxSettings {
    /// Resend interval for unanswered requests, decisions, queries and unacknowledged
    /// redo-log entries. Shorter: faster recovery from loss, more duplicates.
    pub retransmit: Time,
    /// A coordinator gives up waiting for answers after this long and reports
    /// `Unavailable` (outcome unknown). Longer: fewer unknown outcomes across failovers,
    /// later answers to the application when a memory node is gone for good.
    pub txn_timeout: Time,
    /// A coordinator stops resending a decision after this long (participants then
    /// resolve the transaction themselves by the recovery rule).
    pub decide_timeout: Time,
    /// A participant holding a yes vote this long without a decision starts recovery
    /// (asks the other participants). Shorter: a crashed coordinator's locks free
    /// sooner; more queries that race a live coordinator (harmless: same outcome).
    pub recovery_timeout: Time,
    /// Minitransactions one coordinator runs at once (back pressure: `Full`).
    pub max_in_flight: usize,
    /// Items (compares + reads + writes) per minitransaction (at most
    /// `tutti_wire::minitx::MAX_ITEMS`). An ordered append writes one per message of its
    /// batch (`OrderedSettings::max_batch`). Larger: bigger batches; longer lock checks.
    pub max_items: usize,
    /// Bytes per minitransaction (compare and write data, read lengths); capped at half
    /// a wire message (`txn_byte_limit`).
    pub max_txn_bytes: u64,
    /// Bytes of regions one memory node holds.
    pub max_memory: u64,
    /// Prepared (yes-voted, undecided) transactions a memory node holds; beyond it a
    /// prepare is answered `Busy`. Bounds the lock table.
    pub max_prepared: usize,
    /// Decided transactions a memory node remembers (to answer duplicates and queries).
    /// Beyond it the oldest is forgotten and its coordinator's floor rises past it: older
    /// transactions of that coordinator are refused (`Stale`). Larger: more memory, a
    /// longer window in which a duplicate is answered rather than refused.
    pub max_decided: usize,
    /// Bytes of remembered answers (same eviction as `max_decided`).
    pub max_decided_bytes: usize,
    /// Coordinators a memory node keeps a floor for; a transaction of a further
    /// coordinator is dropped unanswered (it times out `Unavailable`).
    pub max_coordinators: usize,
    /// Redo-log entries a primary holds unacknowledged by its backup; beyond it requests
    /// are dropped unanswered until the backup catches up (the coordinator resends).
    pub max_unreplicated: usize,
    /// Redo-log entries resent per `retransmit` interval to a lagging backup.
    pub replicate_burst: usize,
    /// Dormant readers (`Minitransaction::watch`) a primary remembers to wake, one per
    /// node; a further one is not remembered (counted) and reads at its own pace. Larger:
    /// more state and, at a write, more wake messages; an ordered group's memory node
    /// takes the group's `max_members`.
    pub max_watchers: usize,
}

impl MinitxSettings {
    /// `max_txn_bytes`, capped so that every message and log entry of a transaction
    /// fits a wire message (`tutti_wire::minitx::MAX_MESSAGE`).
    pub fn txn_byte_limit(&self) -> u64 {
        self.max_txn_bytes.min(tutti_wire::minitx::MAX_MESSAGE as u64 / 2)
    }
}

impl Default for MinitxSettings {
    fn default() -> MinitxSettings {
        MinitxSettings {
            retransmit: 20 * MILLIS,
            txn_timeout: 2_000 * MILLIS,
            decide_timeout: 2_000 * MILLIS,
            recovery_timeout: 200 * MILLIS,
            max_in_flight: 64,
            max_items: 256,
            max_txn_bytes: 64 * 1024,
            max_memory: 64 << 20,
            max_prepared: 1024,
            max_decided: 16_384,
            max_decided_bytes: 16 << 20,
            max_coordinators: 4096,
            max_unreplicated: 4096,
            replicate_burst: 64,
            max_watchers: 16,
        }
    }
}
