//! Ordered groups, SinfoniaGCS style: one total order of every sender's messages and of
//! every view change, held as a global list in a memory node and extended by
//! minitransactions ([`crate::minitx`]). [`OrderedMember`] is one node's sans-IO state
//! machine for one group; `docs/ordered.md` states the layout, the rules and what is not
//! built yet.
//!
//! Layout on the group's memory node (`MEMNODE`), all integers little-endian:
//! - region [`LIST`]: `tail: u64` at 0, then `list_slots` entries of [`ENTRY_BYTES`]; the
//!   entry at position `p` lives in slot `p % list_slots` and carries `p` (a reader tells a
//!   reclaimed slot from the entry it wants).
//! - region [`PROGRESS`]: the request slot, then `max_members` slots of
//!   [`PROGRESS_BYTES`]: (node, flags, join position, learned, held) written by the slot's
//!   member (slot `s` at offset `(s + 1) * PROGRESS_BYTES`). The request slot names the
//!   last member or joiner that kept losing the tail compare (fairness, `docs/ordered.md`).
//! - region [`QUEUES`]: per member slot, `queue_slots` payload slots of
//!   `QUEUE_HEADER + max_payload` bytes: the sender's queue, from which any member repairs a
//!   payload it missed (so a payload outlives its sender).

mod entry;
mod evs;
pub(crate) mod host;
mod member;

pub use entry::{Entry, EntryKind, EpochId, JoinFrom, ProgressSlot, RemoveReason};
pub use evs::{EvsCounters, EvsMember};
pub use host::{OrderedError, OrderedHostCounters, OrderedStatusEvent, Placement};
pub use member::{
    ConfigEvent, OrderedCounters, OrderedHeld, OrderedMember, Output, Status, SubmitRefused, ViewEvent,
};

use crate::minitx::MemnodeId;
use crate::{GroupId, NodeId, Time, MILLIS};

/// The memory node holding a group's list (one per group: every minitransaction of the
/// ordering layer is one-phase).
pub const MEMNODE: MemnodeId = 0;
/// Region ids on the memory node.
pub const LIST: u32 = 1;
pub const PROGRESS: u32 = 2;
pub const QUEUES: u32 = 3;
/// Bytes of one list entry.
pub const ENTRY_BYTES: usize = 32;

/// Where list position `pos` sits in the `LIST` region of a list of `list_slots` slots:
/// the tail (8 bytes), then the slots, position `pos` in slot `pos % list_slots`.
pub(crate) fn list_slot_offset(pos: u64, list_slots: u32) -> u32 {
    8 + (pos % u64::from(list_slots)) as u32 * ENTRY_BYTES as u32
}
/// Bytes of one progress slot.
pub const PROGRESS_BYTES: usize = 32;
/// Bytes before a payload in a queue slot: node u32, len u32, epoch u64, seq u64.
pub const QUEUE_HEADER: usize = 24;

/// The payload a queue slot holds: `(sender, epoch, seq, bytes)`, or `None` if the slot's
/// header does not parse or names more bytes than the slot has.
pub(crate) fn queue_slot(b: &[u8]) -> Option<(NodeId, u64, u64, &[u8])> {
    let u32_at = |at: usize| {
        b.get(at..at + 4)
            .map(|x| u32::from_le_bytes(x.try_into().unwrap()))
    };
    let u64_at = |at: usize| {
        b.get(at..at + 8)
            .map(|x| u64::from_le_bytes(x.try_into().unwrap()))
    };
    let (node, len, epoch, seq) = (u32_at(0)?, u32_at(4)?, u64_at(8)?, u64_at(16)?);
    let payload = b.get(QUEUE_HEADER..QUEUE_HEADER.checked_add(len as usize)?)?;
    Some((node, epoch, seq, payload))
}

/// Items of an append besides its payload writes and entries: the tail and progress reads,
/// two reads of entries (a range that wraps), the tail compare, the chain compare and the
/// tail write.
pub const APPEND_ITEMS: u32 = 7;

/// What a group does when the view splits it (issue 12).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PartitionPolicy {
    /// Only a side holding a majority goes on; a minority side delivers nothing new.
    #[default]
    Majority,
    /// Extended virtual synchrony: each side goes on in its own configuration, in its own
    /// list epoch ([`EvsMember`]); sides that meet again merge into one configuration.
    Evs,
}

/// Sizes and timers of an ordered group, each with its default and its trade. Every member
/// and the memory node must use the same layout fields (`list_slots`, `max_members`,
/// `queue_slots`, `max_payload`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderedSettings {
    /// Entries the circular list holds. Larger: members may lag further before appends
    /// wait for them; more memory-node memory.
    pub list_slots: u32,
    /// A member whose learned position is more than this behind the tail is removed by an
    /// entry (`RemoveReason::Lagging`) so it cannot stall appends. Must be below
    /// `list_slots`. Smaller: slow members are cut sooner.
    pub lag_budget: u32,
    /// A member that keeps a sender's queue slot from being reused this long (it does
    /// not hold the payload last written there) is removed by an entry
    /// (`RemoveReason::Lagging`). Shorter: a slow member is cut sooner.
    pub lag_timeout: Time,
    /// Members a view holds (progress and queue slots).
    pub max_members: u32,
    /// Payload slots in each sender's queue: messages a sender has appended but not every
    /// member holds yet. Larger: more memory; fewer sender stalls. At least
    /// `max_appends_in_flight * max_batch` (512 with the defaults) keeps a saturated
    /// sender's pipeline full while the others publish that they hold its payloads.
    pub queue_slots: u32,
    /// Largest payload in bytes.
    pub max_payload: u32,
    /// Most messages one append threads into the list (one entry; a batch takes what is
    /// queued, so a lone message goes alone). Larger: fewer minitransactions per message at
    /// saturation, bigger ones. Each message is one write item of the append, so
    /// `max_batch + max_members + APPEND_ITEMS` must not exceed the minitransaction item
    /// limit (`MinitxSettings::max_items`); a batch also stops at 48 KiB of payloads.
    pub max_batch: u32,
    /// Entries one read minitransaction fetches.
    pub read_batch: u32,
    /// Append minitransactions one sender keeps in flight (pipelining; at least 1). Each
    /// after the first is chained: it compares the tail the one before it will write and
    /// that one's last entry, so it can only land right after it (sender FIFO). Larger:
    /// more of a sender's batches per round trip to the memory node; a failed append
    /// wastes the ones chained after it.
    pub max_appends_in_flight: u32,
    /// Messages a sender queues before `submit` refuses (back pressure).
    pub max_outgoing: usize,
    /// Payloads held ahead of delivery; beyond it a received payload is dropped (counted)
    /// and repaired from the queue when its turn comes.
    pub max_held: usize,
    /// A member with nothing to do re-reads the list this often (no push from memory
    /// nodes); one with a `safe` entry waiting for the others' progress, 8 times as often.
    /// Shorter: lower latency for quiet members and `safe` messages, more reads.
    pub poll_interval: Time,
    /// Least time between two progress writes of a member (its slot on the memory node:
    /// what it learned and holds). Every write is a logged minitransaction the memory node
    /// replicates; the members tell one another the same facts point to point sooner
    /// (`Output::Held`), so the slot is the record (joiners, lag rules, a member that
    /// missed a tell). Longer: fewer writes at the memory node under load; the record lags
    /// further.
    pub progress_interval: Time,
    /// `evs` groups: deliver a message that is not `safe` once its place in the order is
    /// known (agreed order, as Corosync's CPG), instead of once every member holds it.
    /// The old list's `Seal` keeps the transitional rule (members moving together
    /// delivered the same set) when its founder moves with them; a side without the
    /// founder may move a member that holds less than another delivered alone.
    pub evs_agreed: bool,
    /// A payload missing this long after its entry was learned is read from its sender's
    /// queue. Shorter: more repair reads that race dissemination.
    pub repair_delay: Time,
    /// Resend interval for a state transfer not yet acknowledged (by the joiner's
    /// progress slot) and pause before retrying a busy append.
    pub retransmit: Time,
    /// A joiner not installed this long after its join entry joins again (its producer
    /// may have crashed).
    pub install_timeout: Time,
    /// A member SWIM suspects (not yet holds failed) is removed once the suspicion has
    /// lasted this long; a suspicion refuted sooner removes nothing. A suspected member
    /// that also falls behind (the lag budget or `lag_timeout` runs out) is removed at
    /// once, as `Suspected`. Longer: a member suspected for a moment (a loaded host, a
    /// partition healing) stays; a crashed one leaves later (at most when SWIM holds it
    /// failed, one suspicion timeout after the suspicion).
    pub suspicion_grace: Time,
    /// A member with nothing to do, nothing to deliver and nothing waiting for the others
    /// goes *dormant* once its backed-off reads (`poll_interval << 4`) keep bringing
    /// nothing: its read interval goes on doubling up to this bound, and the memory node
    /// wakes it (one small message) when the list's tail moves. Longer: an idle group
    /// costs fewer reads; a lost wake-up (or a memory node primary that failed over, which
    /// forgets its dormant readers) delays the next message by up to this much.
    pub dormant_interval: Time,
    /// What a partition does to the group (`Majority` unless asked).
    pub partition: PartitionPolicy,
    /// `evs`: the founder of a new list epoch installs its first configuration once every
    /// member of its side has joined, or this long after it opened the epoch. Longer: a
    /// slow member of the side is less often left to join later on its own.
    pub gather_timeout: Time,
}

impl Default for OrderedSettings {
    fn default() -> OrderedSettings {
        OrderedSettings {
            list_slots: 4096,
            lag_budget: 3072,
            lag_timeout: 1_000 * MILLIS,
            max_members: 16,
            queue_slots: 1024,
            max_payload: 1024,
            max_batch: 128,
            read_batch: 32,
            max_appends_in_flight: 4,
            max_outgoing: 4096,
            max_held: 8192,
            poll_interval: 2 * MILLIS,
            progress_interval: 2 * MILLIS,
            evs_agreed: false,
            repair_delay: 20 * MILLIS,
            retransmit: 20 * MILLIS,
            install_timeout: 2_000 * MILLIS,
            suspicion_grace: 1_000 * MILLIS,
            partition: PartitionPolicy::Majority,
            gather_timeout: 200 * MILLIS,
            dormant_interval: 1_000 * MILLIS,
        }
    }
}

impl OrderedSettings {
    /// Own messages a sender keeps outstanding (submitted, not yet delivered back to it)
    /// to keep its appends pipelined when delivery waits for every member (`safe`
    /// messages, every `evs` list under `safe` delivery): the appends in flight
    /// (`max_appends_in_flight * max_batch`) and three times as many waiting after their
    /// append for the others' progress (a read, a progress write and a read back: about
    /// three append round trips). libcpg's flow-control window (`WINDOW_MSGS`,
    /// capi/cpg/libcpg.c) is this; under agreed delivery half of it halved a flood's p50
    /// and cost about a sixth of its throughput (docs/cpg.md), so it stays.
    pub fn sender_window(&self) -> u32 {
        4 * self.max_appends_in_flight * self.max_batch
    }

    /// Bytes of one queue slot.
    pub fn queue_slot_bytes(&self) -> u32 {
        QUEUE_HEADER as u32 + self.max_payload
    }

    /// The regions (id, size) the group's memory node (primary and backup) must hold.
    pub fn regions(&self) -> [(u32, u32); 3] {
        [
            (LIST, 8 + self.list_slots * ENTRY_BYTES as u32),
            (PROGRESS, (self.max_members + 1) * PROGRESS_BYTES as u32),
            (
                QUEUES,
                self.max_members * self.queue_slots * self.queue_slot_bytes(),
            ),
        ]
    }
}

/// `evs`: the memory node holding the list of `epoch` (the first list is on [`MEMNODE`]).
/// Epoch numbers come from the view and differ between concurrent sides; two epochs whose
/// numbers are equal modulo 65,534 must not be open on one host at once.
pub fn epoch_memnode(epoch: EpochId) -> MemnodeId {
    if epoch == EpochId::FIRST {
        MEMNODE
    } else {
        1 + (epoch.number % 0xFFFE) as MemnodeId
    }
}

/// `evs`: the hosts of the memory node of `epoch`, primary first, chosen from the side that
/// opened it (every member of the side computes the same pair).
pub fn epoch_memnode_hosts(group: GroupId, epoch: EpochId, side: &[NodeId]) -> Vec<NodeId> {
    let salt = rendezvous(epoch.to_u64(), 0x5eed);
    choose_memnode_hosts(group ^ salt, side)
}

/// Chooses the nodes running a group's memory node, primary first then backup, from
/// `members` by rendezvous hashing of (group, node): every node computes the same pair
/// from the same member list, and a member leaving moves only the roles it held.
pub fn choose_memnode_hosts(group: GroupId, members: &[NodeId]) -> Vec<NodeId> {
    let mut scored: Vec<(u64, NodeId)> = members.iter().map(|&n| (rendezvous(group, n), n)).collect();
    scored.sort_unstable_by(|a, b| b.cmp(a));
    scored.dedup_by_key(|s| s.1);
    scored.into_iter().take(2).map(|(_, n)| n).collect()
}

/// A new backup for a memory node whose primary is `primary`: the best-ranked of `members`
/// by the rule of [`choose_memnode_hosts`], other than the primary. Every node computes
/// the same one from the same view; after a host leaves it is the node a fresh
/// [`choose_memnode_hosts`] over the view names second, when the primary ranks first.
pub fn choose_backup(group: GroupId, members: &[NodeId], primary: NodeId) -> Option<NodeId> {
    members
        .iter()
        .copied()
        .filter(|&n| n != primary)
        .max_by_key(|&n| (rendezvous(group, n), n))
}

fn rendezvous(group: GroupId, node: NodeId) -> u64 {
    // splitmix64 of the pair: well mixed, stable across builds and platforms.
    let mut z = group ^ (u64::from(node)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memnode_hosts_are_deterministic_and_stable() {
        let members = [1, 2, 3, 4, 5];
        let hosts = choose_memnode_hosts(7, &members);
        assert_eq!(hosts.len(), 2);
        assert_ne!(hosts[0], hosts[1]);
        let mut shuffled = members;
        shuffled.reverse();
        assert_eq!(choose_memnode_hosts(7, &shuffled), hosts);
        // Removing a node that holds no role leaves the roles where they were.
        let other = members.iter().copied().find(|n| !hosts.contains(n)).unwrap();
        let fewer: Vec<NodeId> = members.iter().copied().filter(|&n| n != other).collect();
        assert_eq!(choose_memnode_hosts(7, &fewer), hosts);
    }

    #[test]
    fn a_new_backup_is_the_next_host_by_the_same_rule() {
        let members = [1, 2, 3, 4, 5];
        let hosts = choose_memnode_hosts(7, &members);
        // The primary gone: the backup ranks first, and the new backup is the one a fresh
        // placement names second.
        let rest: Vec<NodeId> = members.iter().copied().filter(|&n| n != hosts[0]).collect();
        let fresh = choose_memnode_hosts(7, &rest);
        assert_eq!(fresh[0], hosts[1]);
        assert_eq!(choose_backup(7, &rest, hosts[1]), Some(fresh[1]));
        // The backup gone: the primary keeps its role and gets the same next one.
        let rest: Vec<NodeId> = members.iter().copied().filter(|&n| n != hosts[1]).collect();
        assert_eq!(
            choose_backup(7, &rest, hosts[0]),
            Some(choose_memnode_hosts(7, &rest)[1])
        );
        assert_eq!(choose_backup(7, &[hosts[0]], hosts[0]), None);
    }
}
