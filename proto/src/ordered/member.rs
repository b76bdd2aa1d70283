//! One node's state machine for one ordered group: it appends its messages and view
//! changes to the global list with minitransactions, learns the list by reading it, and
//! delivers in list order once it holds the payloads. Sans-IO: inputs are method calls
//! with `now`, outputs are drained with [`OrderedMember::poll_output`].

use super::entry::{u64_at, Entry, EntryKind, EpochId, JoinFrom, ProgressSlot, RemoveReason};
use super::{
    epoch_memnode, list_slot_offset, OrderedSettings, PartitionPolicy, ENTRY_BYTES, LIST, MEMNODE, PROGRESS,
    PROGRESS_BYTES, QUEUES, QUEUE_HEADER,
};
use crate::fxhash::FxMap;
use crate::minitx::{
    Address, Coordinator, MemnodeId, Minitransaction, MinitxSettings, Outcome, TxId, TxnError,
};
use crate::{GroupId, NodeId, Time};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
pub use tutti_wire::packet::OrderedHeld;

/// Where this member stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Appending its join entry (or looking for it after an unknown outcome).
    Joining,
    /// Its join entry is at `join_pos`; waiting for the state transfer.
    Installing,
    /// `evs`: its join entry of a new list epoch is at `join_pos`; it reads the list from
    /// the start until the configuration it joins is installed.
    Gathering,
    /// A member: sends and delivers.
    Active,
    /// Out of the group (an entry removed it, or it fell so far behind that its entries
    /// were reclaimed). It may join again as a new member.
    Removed,
}

/// A view change, delivered at its place in the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewEvent {
    /// Grows by one with every change.
    pub id: u64,
    /// The list position of the entry that made it.
    pub position: u64,
    /// Members after the change, sorted.
    pub members: Vec<NodeId>,
    pub joined: Option<NodeId>,
    pub left: Option<(NodeId, RemoveReason)>,
}

/// `evs` groups: a configuration change, delivered in the order (the same at every member
/// of the configuration). `transitional`: the members that move together from the last
/// configuration, after the last message of it they all delivered; the regular
/// configuration follows. `joined` and `left` are relative to the configuration before
/// (the transitional one, at a change of list epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEvent {
    /// The list epoch the configuration belongs to.
    pub epoch: EpochId,
    /// The list position of the entry that made it (for a transitional configuration: the
    /// end of the old list its members delivered).
    pub position: u64,
    pub members: Vec<NodeId>,
    pub joined: Vec<NodeId>,
    pub left: Vec<(NodeId, RemoveReason)>,
    pub transitional: bool,
}

/// What the member wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A minitransaction message for the memory node's primary.
    Minitx { to: NodeId, bytes: Vec<u8> },
    /// A payload to disseminate to the group (bimodal multicast in the daemon): the
    /// receivers hand it to [`OrderedMember::handle_payload`].
    Disseminate {
        sender: NodeId,
        epoch: u64,
        seq: u64,
        bytes: Vec<u8>,
    },
    /// A message, in the total order.
    Deliver {
        sender: NodeId,
        epoch: u64,
        seq: u64,
        position: u64,
        safe: bool,
        bytes: Vec<u8>,
    },
    /// A view change, in the total order.
    View(ViewEvent),
    /// `evs` groups: a configuration change, in the total order (replaces `View`).
    Configuration(ConfigEvent),
    /// `evs` groups: the node must run the memory node of list `epoch` (`memnode`) with its
    /// primary on `hosts[0]` and its backup on `hosts[1]`, if named.
    OpenEpoch {
        epoch: EpochId,
        memnode: MemnodeId,
        hosts: Vec<NodeId>,
    },
    /// The application must snapshot its state as of everything delivered so far (the cut
    /// is `position`, a joiner's entry) and call [`OrderedMember::snapshot_ready`].
    /// Delivery waits until then.
    SnapshotRequest { group: GroupId, position: u64 },
    /// A state transfer for joiner `to` (point to point; resent until the joiner's
    /// progress slot says it installed): it hands it to [`OrderedMember::handle_transfer`].
    Transfer { to: NodeId, bytes: Vec<u8> },
    /// This member's progress for member `to` of its view (point to point, best effort):
    /// it hands it to [`OrderedMember::handle_held`].
    Held { to: NodeId, held: OrderedHeld },
    /// This joiner installed the application snapshot taken at `position`; deliveries
    /// follow from `position + 1`.
    Installed { position: u64, snapshot: Vec<u8> },
    /// This node is outside a majority: it delivers nothing until it is back in one.
    Minority,
    /// This node is out of the group.
    Removed { reason: RemoveReason },
    /// `evs` groups: this member cannot join the list it gathers in (see
    /// `EvsMember::cannot_join`): the node must bring about a new view.
    NewSideWanted,
}

/// Why `submit` refused a message (back pressure is a value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitRefused {
    #[error("not an active member of the group")]
    NotMember,
    #[error("the payload exceeds max_payload")]
    TooLarge,
    #[error("max_outgoing messages are already queued: retry later")]
    Full,
}

/// Counters of one member (monotonic).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderedCounters {
    /// Append minitransactions submitted / committed / refused by a failed tail compare.
    pub appends: u64,
    pub appends_committed: u64,
    pub append_conflicts: u64,
    /// Appends submitted while another of this member was in flight (pipelining), and
    /// chains cut short by a failed append.
    pub appends_chained: u64,
    pub chains_broken: u64,
    /// Fairness: requests this member posted after `STARVE_AFTER` lost compares in a row,
    /// and anchors it held back for another member's or joiner's request.
    pub fairness_requests: u64,
    pub fairness_holds: u64,
    /// Messages threaded into the list by this sender, in `batches` entries.
    pub messages_appended: u64,
    pub batches: u64,
    /// Read minitransactions and entries learned.
    pub reads: u64,
    /// Dormancy: reads that asked the memory node for a wake-up (the member then reads
    /// at most every `dormant_interval`), wake-ups acted on (a read at once), wake-ups
    /// ignored because the last one acted on was less than `poll_interval` ago, and
    /// wake-ups refused (not from the memory node's primary, or not for this list).
    pub dormant_reads: u64,
    pub wakes: u64,
    pub wakes_limited: u64,
    pub wakes_refused: u64,
    /// Progress writes (`publish`: on their own, not riding a read, so that reads stay
    /// unlogged and are answered without waiting for the backup's ack of a write).
    pub publishes: u64,
    /// Progress told straight to the others (`Output::Held`, one per member told), taken
    /// from them, and refused (not this list's, or not from a member of the view under
    /// the membership it names).
    pub helds_sent: u64,
    pub helds_taken: u64,
    pub helds_refused: u64,
    /// Entries pushed by the memory node's backup (`handle_committed`): pushes taken,
    /// entries learned from them, and pushes refused (this member not active).
    pub pushes: u64,
    pub entries_pushed: u64,
    pub pushes_refused: u64,
    pub entries_learned: u64,
    pub delivered: u64,
    /// Data entries skipped at delivery: repeated ids, senders outside the view.
    pub duplicates_skipped: u64,
    pub foreign_skipped: u64,
    /// Data entries whose first seq was past the sender's next (must stay 0).
    pub fifo_gaps: u64,
    /// Safe entries that had to wait for another member to hold them.
    pub safe_waits: u64,
    /// Payload repairs read from senders' queues, and queue slots that did not hold the
    /// payload asked for.
    pub repairs: u64,
    pub repair_mismatches: u64,
    /// Received payloads dropped (`max_held` reached, or already delivered).
    pub payloads_dropped: u64,
    /// Remove entries this member appended, by reason.
    pub removals_suspected: u64,
    pub removals_lagging: u64,
    /// Times this member found itself left behind (`left_behind`): its buffer full, the
    /// list further on, and no delivery for `lag_timeout`; it then counts itself removed.
    pub left_behind: u64,
    /// Appends that waited: the list is full up to the slowest member / a queue slot is
    /// not yet held by every member.
    pub reclaim_waits: u64,
    pub queue_waits: u64,
    /// Times this node found itself outside a majority.
    pub minority: u64,
    pub transfers_sent: u64,
    pub joins_retried: u64,
    /// Records from the memory node or a transfer that did not decode.
    pub malformed: u64,
    /// `evs`: entries of an old list a mover had to deliver in its transitional
    /// configuration but did not hold (must stay 0: the delivery rule guarantees them).
    pub transitional_missing: u64,
    /// Minitransactions that failed with an unexpected error (`Busy`, `Unavailable`, ...).
    pub txn_errors: u64,
    /// Restarts this joiner appended and installed: the group's state was lost (every
    /// member holding it was suspected or out of the cluster view) and it started again
    /// from an empty state (`Installed` with an empty snapshot).
    pub restarts: u64,
}

/// Progress a member told this one (`Output::Held`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Heard {
    node: NodeId,
    join_pos: u64,
    learned: u64,
    held: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Member {
    node: NodeId,
    join_pos: u64,
    slot: u32,
}

/// Membership at a list position: a function of the entries before it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct View {
    id: u64,
    members: Vec<Member>,
}

impl View {
    fn get(&self, node: NodeId) -> Option<&Member> {
        self.members.iter().find(|m| m.node == node)
    }

    /// Applies a membership entry; true if the view changed. A join of a member replaces
    /// its old membership; a join into a full view is ignored.
    fn apply(&mut self, e: &Entry, max_members: u32) -> bool {
        match e.kind {
            EntryKind::Data { .. } | EntryKind::Install | EntryKind::Seal => false,
            EntryKind::Join | EntryKind::EvsJoin { .. } => {
                self.members.retain(|m| m.node != e.node);
                let Some(slot) = (0..max_members).find(|s| self.members.iter().all(|m| m.slot != *s)) else {
                    return false;
                };
                self.members.push(Member {
                    node: e.node,
                    join_pos: e.pos,
                    slot,
                });
                self.members.sort_unstable_by_key(|m| m.node);
                self.id += 1;
                true
            }
            EntryKind::Restart => {
                self.members = vec![Member {
                    node: e.node,
                    join_pos: e.pos,
                    slot: 0,
                }];
                self.id += 1;
                true
            }
            EntryKind::Remove(_) => {
                let before = self.members.len();
                self.members.retain(|m| m.node != e.node);
                if self.members.len() == before {
                    return false;
                }
                self.id += 1;
                true
            }
        }
    }

    fn nodes(&self) -> Vec<NodeId> {
        self.members.iter().map(|m| m.node).collect()
    }
}

/// A learned entry awaiting delivery, with the queue slot of its sender (for repair).
#[derive(Debug, Clone)]
struct Learned {
    entry: Entry,
    at: Time,
    sender_slot: Option<u32>,
}

/// A batch of a sender's messages being threaded into the list. Once formed it never
/// changes (a retry appends the same messages in the same entry), so a message is never in
/// two batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Batch {
    first_seq: u64,
    count: u16,
    safe: bool,
}

#[derive(Debug)]
enum ListOp {
    Read {
        from: u64,
    },
    /// The join entry of a joiner, at `at`.
    Join {
        at: u64,
    },
    /// `evs`: the founder's `Install`, at `at`.
    Install {
        at: u64,
    },
    /// `evs` (`agreed`): a leaving member's `Seal`, at `at`.
    Seal {
        at: u64,
    },
    /// A joiner's restart anchor at `at`: `Remove(Suspected)` of each state holder, then
    /// `Restart` (see [`OrderedMember::restart_holders`]).
    Restart {
        at: u64,
        entries: Vec<Entry>,
    },
}

/// `evs` state of a member of one list epoch.
#[derive(Debug, Clone)]
struct EvsList {
    epoch: EpochId,
    /// Where this member comes from (its `EvsJoin`).
    from: Option<JoinFrom>,
    /// Its `EvsJoin` waits until the owner knows `from` (its old list drained).
    hold_join: bool,
    /// The side that opened the epoch: the founder installs once all of it joined.
    side: Vec<NodeId>,
    founder: bool,
    gather_deadline: Time,
    /// An `Install` entry was learned (the founder appends no other).
    install_learned: bool,
    /// Position of the `Install` entry, once delivered.
    install: Option<u64>,
    /// The joins delivered before `Install`, in list order: the first configuration.
    joins: Vec<(NodeId, Option<JoinFrom>)>,
    /// This member's configuration in the list starts here (at `Install`, or at its own
    /// late join): delivery waits until the owner delivered its transitional part.
    pending: Option<u64>,
}

/// `evs`: where this member's configuration in a new list starts, for [`EvsMember`]
/// (`super::EvsMember`) to deliver the transitional configuration before it.
#[derive(Debug, Clone)]
pub(crate) struct PendingInstall {
    /// The joins before `Install` (empty for a late joiner: it moves alone).
    pub joins: Vec<(NodeId, Option<JoinFrom>)>,
}

/// An append minitransaction in flight: `entries` at `at` (the first at the learned tail,
/// each later one chained after the one before), with the reads of the list from `from`.
#[derive(Debug)]
struct Append {
    txid: TxId,
    at: u64,
    from: u64,
    entries: Vec<Entry>,
}

type PayloadId = (NodeId, u64, u64);

/// List entries an append reads past its own position, per member of the view.
const APPEND_READ_MARGIN: u64 = 4;
/// Payload bytes (queue-slot header included) one append writes at most: a batch stops
/// short of `max_batch` when its payloads would pass it, so an append stays within the
/// minitransaction byte limit (`MinitxSettings::max_txn_bytes`, 64 KiB by default) with
/// room for its reads, compares and entries. 128 messages of 64 B take 11 KiB; 47 of
/// 1 KiB fill it.
pub(crate) const APPEND_PAYLOAD_BYTES: usize = 48 << 10;

/// Payload buffers a member keeps for reuse (`OrderedMember::recycle`): a few batches'
/// worth (a buffer holds at most `max_payload` plus a queue-slot header).
const MAX_SPARE_BUFFERS: usize = 4096;

/// While a `safe` entry waits for the others' progress, the member reads every
/// `poll_interval / SAFE_POLL_DIVISOR` (a read per member every 250 us by default, only
/// while one waits).
const SAFE_POLL_DIVISOR: Time = 8;

/// Idle back-off: the read interval doubles per quiet read up to `poll_interval << 4`.
/// A member that may sleep (`may_sleep`) goes on doubling past it, up to
/// `dormant_interval`: it is *dormant*, and its reads ask the memory node to wake it when
/// the tail moves.
const QUIET_MAX_SHIFT: u32 = 4;

/// Largest shift of the read interval (a bound on the doubling, far past any
/// `dormant_interval`; the interval is capped by it first).
const DORMANT_MAX_SHIFT: u32 = 30;

/// While learned entries wait for the other members' progress (`all_hold`: `safe`
/// messages, and every entry of an `evs` list), the read interval starts at
/// `poll_interval / WAITING_POLL_DIVISOR` (250 us by default) after the member's last
/// answer from the memory node (a read's or an append's: both bring the progress slots),
/// and doubles per quiet read as above. The others tell this member what they hold
/// (`Output::Held`) a hop after they learn it; these reads are the fallback for a tell that
/// was lost, and find its fact in the progress slot, which a settled member writes at once.
/// Before the tells, at `poll_interval` the wait lasted until the next poll or the sender's
/// next append: CPG over tuttid (every group `evs`), paced at 1,000 msg/s, delivered each
/// message ~1 ms late. After them, at `/ 64` timed from the last read's start, the reads
/// came before the tells could: 7.6 read minitransactions per paced cpg message on 3
/// daemons, a third of its datagrams (`paced_safe_messages_read_the_memory_node_only_when_a_tell_is_late`).
const WAITING_POLL_DIVISOR: Time = 8;

/// A member tells the others its progress (`Output::Held`) at most every
/// `poll_interval / TELL_DIVISOR` (125 us by default) in a group of up to 3 members, and
/// that times half its other members in a larger one: at once for a paced message, and
/// under a flood about 16,000 datagrams a second per member whatever the group's size.
/// Doubling the gap while progress outran it (up to `poll_interval`) cost a flood of 3
/// senders on 3 daemons a tenth of its throughput: their queue slots are reused only once
/// every member holds what they held, which a sender learns from the others' tells.
const TELL_DIVISOR: Time = 16;

/// A read started by a payload hint that found no new entry is tried again at once this
/// many times in a row (the sender's append may reach the memory node after the payload
/// reached this member and its read the memory node); then the poll takes over.
const HINT_REREADS: u32 = 3;

/// Fairness: an appender whose appends lost the tail compare this many times in a row
/// (a member: with at least half of `max_outgoing` queued; a joiner: at its first loss)
/// posts a request in the request slot (a write with no compare).
const STARVE_AFTER: u32 = 3;

/// How long a request holds the others' appends, in `retransmit`s.
const HOLD_RETRANSMITS: u64 = 4;

/// A request read from the request slot: `node` asked at `pos` (the tail it lost at).
/// Other members hold their next anchor append until they learn an entry of `node` at or
/// past `pos`, or for `HOLD_RETRANSMITS * settings.retransmit` at most (the requester may
/// be gone; the requester needs a read and an append, two round trips, to get in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hold {
    node: NodeId,
    pos: u64,
    until: Time,
    done: bool,
}

/// One node's member of one ordered group. See the module docs and `docs/ordered.md`.
pub struct OrderedMember {
    node: NodeId,
    group: GroupId,
    /// The memory node holding this member's list (`MEMNODE`, or an `evs` list epoch's).
    memnode: MemnodeId,
    evs: Option<EvsList>,
    /// `evs`: this member left its list (a new list epoch took over): it appends and reads
    /// nothing more, and delivers only the transitional part it is asked to.
    frozen: bool,
    /// `evs` (`agreed`): this member leaves its list for a new one, but first reads it up
    /// to its `Seal` (appending nothing more), so that it holds what any member delivered
    /// there (`drained`).
    draining: bool,
    /// `evs`: the position of the first `Seal` learned in this list.
    sealed_at: Option<u64>,
    /// `evs`: delivery up to this position needs no other member to hold it.
    force_until: Option<u64>,
    settings: OrderedSettings,
    coord: Coordinator,
    minitx: MinitxSettings,
    status: Status,
    in_majority: bool,
    /// Next position to learn / to deliver; everything in between is in `buffer`.
    learned: u64,
    delivered: u64,
    /// Every payload of the entries below `held_upto` is held (or delivered).
    held_upto: u64,
    /// The payload `advance_held` last stopped at (the first one missing at `held_upto`),
    /// `None` when unknown: a payload that is not it cannot move `held_upto`, so its
    /// arrival skips the walk (which cost a map lookup per message of the entry for
    /// every payload of it: quadratic in the batch). Reset wherever `held_upto` is set
    /// otherwise.
    held_waiting: Option<PayloadId>,
    buffer: VecDeque<Learned>,
    /// The tail as last read.
    known_tail: u64,
    learn_view: View,
    deliver_view: View,
    /// Next seq to deliver per sender (of its membership in `deliver_view`).
    next_seq: BTreeMap<NodeId, u64>,
    join_pos: u64,
    progress: Vec<Option<ProgressSlot>>,
    /// When each progress slot's `held` last changed (as read).
    progress_since: Vec<Time>,
    published: Option<ProgressSlot>,
    /// The progress write in flight (`publish`). Progress goes only this way, one write
    /// at a time, so a member's slot on the memory node never goes back to an older value.
    publish_op: Option<TxId>,
    /// The earliest time the next progress write may go (`progress_interval`).
    publish_at: Time,
    /// Progress the others told this member (`handle_held`), per view slot: the same
    /// facts as their progress slots, sooner. `member_progress` takes the larger of the
    /// two for the same membership (node and join position).
    heard: Vec<Option<Heard>>,
    /// The `held` this member last told the others, and the earliest time it may tell
    /// them again (`TELL_DIVISOR`).
    told: u64,
    tell_at: Time,
    /// Fairness: tail compares lost in a row, a request to post, the last request seen.
    lost_in_a_row: u32,
    request_due: bool,
    /// This member posted a request and has not had an entry in since: it holds for no
    /// one (two requesters holding for each other stopped both until their holds ran out).
    requested: bool,
    hold: Option<Hold>,
    /// Payloads held for delivery (and this sender's own until delivered). A hash map:
    /// looked up and inserted once per message per member, never walked in order.
    payloads: FxMap<PayloadId, Vec<u8>>,
    /// Payload buffers to reuse: delivered payloads the driver hands back (`recycle`),
    /// disseminated copies and the queue writes of submitted appends. At steady state a
    /// message takes its buffers from here, not from the allocator (malloc and free were
    /// 15-25% of a daemon under load). At most `MAX_SPARE_BUFFERS`.
    spare: Vec<Vec<u8>>,
    // Sender side.
    next_submit_seq: u64,
    /// Messages submitted and not yet learned in the list, in seq order; `batches` cover a
    /// prefix of them.
    outgoing: VecDeque<(u64, bool)>,
    /// Formed batches not yet learned in the list, in seq order.
    batches: VecDeque<Batch>,
    /// Appends in flight, in list order: the first at the learned tail, each later one
    /// chained after the one before (it carries the next batch).
    appends: VecDeque<Append>,
    /// An append of the chain failed: the rest will fail too; no new append until every
    /// one in flight has its outcome, then the chain starts again at the learned tail.
    chain_broken: bool,
    /// Appends this member may have in flight now (at most `max_appends_in_flight`): one
    /// more after each commit, one after a failure other than a lost tail compare (a
    /// timeout or an unavailable memory node: congestion or a failover). A lost compare
    /// leaves it as it is: losing a race for the tail says nothing about capacity, and
    /// under a race the winner of each round threads as many batches as its window holds
    /// (halved at every loss, windows stayed at 1 or 2 and a contended group over slow
    /// links threaded half of what it could: sim seeds 552 and 607). The appends chained
    /// behind a lost one fail with it; that is the price, bounded by the window.
    window: u32,
    /// An append may have landed (outcome unknown): find it by reading up to the tail
    /// before appending again.
    pending_uncertain: bool,
    /// List position of the last message written to each of this sender's queue slots.
    queue_pos: Vec<Option<u64>>,
    suspected: BTreeSet<NodeId>,
    /// Members the failure detector suspects whose suspicion is not final yet
    /// (`set_doubted`): one of them that lags is removed as `Suspected`, not `Lagging`.
    doubted: BTreeSet<NodeId>,
    /// Since when this sender's next queue slot waits for a member to hold its payload.
    queue_blocked_since: Option<Time>,
    /// Since when this member's buffer has been full with the list further on, at the
    /// same delivered position (`left_behind`).
    full_since: Option<(Time, u64)>,
    leaving: bool,
    list_op: Option<(TxId, ListOp)>,
    repair_op: Option<(TxId, Vec<PayloadId>)>,
    next_list_op_at: Time,
    /// Reads in a row that brought nothing new while the member had nothing to send: the
    /// read interval doubles with each, up to `QUIET_MAX_SHIFT` (an idle group costs its
    /// memory node one read per member every 32 ms, not every 2 ms).
    quiet_reads: u32,
    /// When the member last started a read or took an answer that read the list (a
    /// read's, an append's): the next read that is only due by the interval
    /// (`read_interval`) comes that long after it.
    last_read: Time,
    /// When the last wake-up was acted on: wake-ups start at most one read per
    /// `poll_interval` (a forged flood costs no more than a member that polls).
    last_wake: Option<Time>,
    read_now: bool,
    /// A payload of another sender arrived since the last read started: its entry is in
    /// the list or about to be, so the next read need not wait for `poll_interval`.
    payload_hint: bool,
    /// The read in flight was started by a payload hint, and how many hinted reads in a
    /// row found no new entry (a payload can outrun its sender's append to the memory
    /// node: the hint is tried again, `HINT_REREADS` times, before the poll takes over).
    read_hinted: bool,
    hint_rereads: u32,
    /// `evs`: the list founder's pushes of committed entries feed this member (the last
    /// push was taken and no read since learned an entry a push had not brought): a
    /// payload then starts no read, its entry comes by push a hop after its append landed,
    /// sooner than a read started now would bring it. A read that learns what no push
    /// brought turns it off.
    push_fed: bool,
    /// A joiner's deadline for its state transfer.
    install_deadline: Time,
    /// The restart rule: a joiner whose install timed out while every state holder was
    /// suspected appends their removal and a `Restart` at the tail (these holders).
    restart: Option<Vec<NodeId>>,
    /// A snapshot this member must produce: (joiner, position, view after the join,
    /// next seqs at the cut).
    producing: Option<(NodeId, u64, View, BTreeMap<NodeId, u64>)>,
    /// Transfers sent and not yet acknowledged: (joiner, its join position, bytes, next
    /// resend).
    transfers: Vec<(NodeId, u64, Vec<u8>, Time)>,
    safe_waiting: Option<u64>,
    out: VecDeque<Output>,
    counters: OrderedCounters,
}

impl OrderedMember {
    /// A member of a group created by configuration with `members` (all at position 0,
    /// the list empty). Its minitransactions go to the memory node at `memnode_host`.
    pub fn initial(
        node: NodeId,
        group: GroupId,
        members: &[NodeId],
        memnode_host: NodeId,
        settings: OrderedSettings,
        minitx: MinitxSettings,
    ) -> OrderedMember {
        let mut m = OrderedMember::blank(node, group, memnode_host, settings, minitx);
        let mut sorted = members.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        for (slot, &n) in sorted.iter().enumerate().take(m.settings.max_members as usize) {
            m.learn_view.members.push(Member {
                node: n,
                join_pos: 0,
                slot: slot as u32,
            });
            m.next_seq.insert(n, 0);
        }
        m.deliver_view = m.learn_view.clone();
        if m.settings.partition == PartitionPolicy::Evs {
            m.evs = Some(EvsList {
                epoch: EpochId::FIRST,
                from: None,
                hold_join: false,
                side: sorted.clone(),
                founder: false,
                gather_deadline: 0,
                install_learned: true,
                install: Some(0),
                joins: Vec::new(),
                pending: None,
            });
        }
        m.status = if m.learn_view.get(node).is_some() {
            Status::Active
        } else {
            Status::Joining
        };
        m
    }

    /// A node joining an existing group: it appends its join entry, then waits for a state
    /// transfer at that position. `incarnation` must grow across restarts of the node.
    pub fn joiner(
        node: NodeId,
        incarnation: u32,
        group: GroupId,
        memnode_host: NodeId,
        settings: OrderedSettings,
        minitx: MinitxSettings,
    ) -> OrderedMember {
        let mut m = OrderedMember::blank(node, group, memnode_host, settings, minitx);
        m.coord = Coordinator::new(node, incarnation, m.minitx.clone());
        m.coord.set_placement(m.memnode, memnode_host);
        m.status = Status::Joining;
        m.known_tail = u64::MAX;
        m
    }

    /// `evs` groups: a node joining list `epoch` (whose memory-node primary is on
    /// `memnode_host`), opened by `side`, coming from `from`. It appends its `EvsJoin`, reads
    /// the list from the start, and is installed by the founder's `Install` (or joins the
    /// installed configuration later on its own). `incarnation` must grow with each
    /// member this node creates.
    #[allow(clippy::too_many_arguments)]
    pub fn evs_joiner(
        node: NodeId,
        incarnation: u32,
        group: GroupId,
        epoch: EpochId,
        memnode_host: NodeId,
        side: &[NodeId],
        from: Option<JoinFrom>,
        now: Time,
        settings: OrderedSettings,
        minitx: MinitxSettings,
    ) -> OrderedMember {
        let mut m = OrderedMember::joiner(node, incarnation, group, memnode_host, settings, minitx);
        m.memnode = epoch_memnode(epoch);
        m.coord.set_placement(m.memnode, memnode_host);
        let mut side = side.to_vec();
        side.sort_unstable();
        side.dedup();
        m.evs = Some(EvsList {
            epoch,
            from,
            hold_join: false,
            founder: side.first() == Some(&node),
            side,
            gather_deadline: now + m.settings.gather_timeout,
            install_learned: false,
            install: None,
            joins: Vec::new(),
            pending: None,
        });
        m
    }

    fn blank(
        node: NodeId,
        group: GroupId,
        memnode_host: NodeId,
        settings: OrderedSettings,
        minitx: MinitxSettings,
    ) -> OrderedMember {
        assert!(
            settings.lag_budget < settings.list_slots,
            "lag_budget must be below list_slots"
        );
        assert!(settings.max_batch >= 1 && settings.max_batch <= u32::from(u16::MAX));
        assert!(
            settings.max_appends_in_flight >= 1,
            "max_appends_in_flight must be at least 1"
        );
        let mut coord = Coordinator::new(node, 1, minitx.clone());
        coord.set_placement(MEMNODE, memnode_host);
        let queue_slots = settings.queue_slots as usize;
        let max_members = settings.max_members as usize;
        OrderedMember {
            node,
            group,
            memnode: MEMNODE,
            evs: None,
            frozen: false,
            draining: false,
            sealed_at: None,
            force_until: None,
            coord,
            status: Status::Joining,
            in_majority: true,
            learned: 0,
            delivered: 0,
            held_upto: 0,
            held_waiting: None,
            buffer: VecDeque::new(),
            known_tail: 0,
            learn_view: View::default(),
            deliver_view: View::default(),
            next_seq: BTreeMap::new(),
            join_pos: 0,
            progress: vec![None; max_members],
            progress_since: vec![0; max_members],
            published: None,
            publish_op: None,
            publish_at: 0,
            heard: vec![None; max_members],
            told: 0,
            tell_at: 0,
            lost_in_a_row: 0,
            request_due: false,
            requested: false,
            hold: None,
            payloads: FxMap::default(),
            spare: Vec::new(),
            next_submit_seq: 0,
            outgoing: VecDeque::new(),
            batches: VecDeque::new(),
            appends: VecDeque::new(),
            chain_broken: false,
            window: 1,
            pending_uncertain: false,
            queue_pos: vec![None; queue_slots],
            suspected: BTreeSet::new(),
            doubted: BTreeSet::new(),
            queue_blocked_since: None,
            full_since: None,
            leaving: false,
            list_op: None,
            repair_op: None,
            next_list_op_at: 0,
            quiet_reads: 0,
            last_wake: None,
            last_read: 0,
            read_now: true,
            payload_hint: false,
            read_hinted: false,
            hint_rereads: 0,
            push_fed: false,
            install_deadline: 0,
            restart: None,
            producing: None,
            transfers: Vec::new(),
            safe_waiting: None,
            out: VecDeque::new(),
            counters: OrderedCounters::default(),
            settings,
            minitx,
        }
    }

    // ---- accessors ----

    /// The nodes of the view as this member learned it.
    pub(crate) fn view_nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.learn_view.members.iter().map(|m| m.node)
    }

    pub fn node(&self) -> NodeId {
        self.node
    }
    pub fn status(&self) -> Status {
        self.status
    }
    pub fn counters(&self) -> &OrderedCounters {
        &self.counters
    }
    /// Next position to deliver.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }
    /// Next position to learn.
    pub fn learned(&self) -> u64 {
        self.learned
    }
    /// The membership this node's messages carry (its join position).
    pub fn epoch(&self) -> u64 {
        self.join_pos
    }
    /// Members of the view as of the last delivered entry.
    pub fn view(&self) -> (u64, Vec<NodeId>) {
        (self.deliver_view.id, self.deliver_view.nodes())
    }
    /// Whether this node holds (or has delivered) the payload `(sender, epoch, seq)`.
    pub fn holds(&self, sender: NodeId, epoch: u64, seq: u64) -> bool {
        if self.payloads.contains_key(&(sender, epoch, seq)) {
            return true;
        }
        matches!(self.deliver_view.get(sender), Some(m) if m.join_pos == epoch)
            && self.next_seq.get(&sender).is_some_and(|&n| seq < n)
    }
    /// The seq the next `submit` gets (seqs restart at 0 with each membership).
    pub fn next_submit_seq(&self) -> u64 {
        self.next_submit_seq
    }
    /// Members of the view as of the last learned entry (ahead of [`Self::view`]). A
    /// joiner waiting for its state transfer knows no view: it names the members whose
    /// progress slots say they hold the group's state (so that its host tells it their
    /// suspicions: the restart rule, docs/ordered.md).
    pub fn learned_members(&self) -> Vec<NodeId> {
        if self.status == Status::Installing {
            return self.state_holders();
        }
        self.learn_view.nodes()
    }
    /// Largest payload `submit` takes.
    pub fn max_payload(&self) -> u32 {
        self.settings.max_payload
    }
    /// The seq of this member's next minitransaction (for `first_txn_seq` of a member
    /// that replaces it on the same node).
    pub fn next_txn_seq(&self) -> u64 {
        self.coord.next_seq()
    }

    /// Numbers this member's minitransactions from `seq` on, at least: a member created
    /// again on the same node (a rejoin after its removal) must not reuse the transaction
    /// ids of the one before (same node and incarnation), or the memory node answers its
    /// requests with the recorded answers of the old ones.
    pub fn first_txn_seq(&mut self, seq: u64) {
        self.coord.skip_to(seq);
    }

    /// Messages submitted and not yet in the list.
    pub fn outgoing(&self) -> usize {
        self.outgoing.len()
    }
    /// Whether no minitransaction of this member is in flight (for quiescence checks).
    pub fn idle(&self) -> bool {
        self.list_op.is_none()
            && self.appends.is_empty()
            && self.repair_op.is_none()
            && self.coord.in_flight() == 0
    }

    /// A one-line account of what this member waits for (for logs and failing seeds).
    pub fn describe(&self) -> String {
        let front = self.buffer.front().map(|l| (l.entry, self.missing(&l.entry)));
        let progress: Vec<(NodeId, u64, (u64, u64))> = self
            .learn_view
            .members
            .iter()
            .map(|m| (m.node, m.join_pos, self.member_progress(m)))
            .collect();
        format!(
            "front {front:?} held_upto {} known_tail {} batches {:?} uncertain {} progress {progress:?} queue {:?} list_op {:?} \
             appends {:?} broken {} window {} in_majority {} next_op {} last_read {} blocked_since {:?} repair {:?} \
             coord in flight {} timeout {:?} memnode {:?} hold {:?} coord {:?}",
            self.held_upto,
            self.known_tail,
            self.batches,
            self.pending_uncertain,
            self.queue_pos,
            self.list_op.as_ref().map(|o| &o.1),
            self.appends.iter().map(|a| (a.at, a.entries.len())).collect::<Vec<_>>(),
            self.chain_broken,
            self.window,
            self.in_majority,
            self.next_list_op_at,
            self.last_read,
            self.queue_blocked_since,
            self.repair_op.as_ref().map(|r| &r.1),
            self.coord.in_flight(),
            self.coord.poll_timeout(),
            self.coord.placement(self.memnode),
            self.hold,
            self.coord.counters(),
        )
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        if let Some((to, bytes)) = self.coord.poll_transmit() {
            if !self.frozen {
                return Some(Output::Minitx { to, bytes });
            }
        }
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Time> {
        if self.frozen {
            return None;
        }
        if self.status == Status::Removed {
            return self.coord.poll_timeout();
        }
        let mut t = self.coord.poll_timeout().unwrap_or(Time::MAX);
        if self.list_op.is_none() && self.appends.is_empty() && self.in_majority {
            // A drain reads on at least every `poll_interval` (`drive` reads once per
            // instant while it lasts).
            let interval = if self.draining && !self.drained() {
                self.read_interval().min(self.settings.poll_interval)
            } else {
                self.read_interval()
            };
            t = t.min(self.next_list_op_at.max(self.last_read + interval));
        }
        // A fairness hold keeps `build_append` (where the lag timer is acted on) from
        // running: while it lasts, its end is the timer, not the lag timer (a timer that
        // nothing consumes would fire forever).
        let held_until = self.hold_until();
        if let Some(until) = held_until {
            t = t.min(until);
        }
        // Only while an append may be built (`may_append`): a member behind the known tail
        // whose buffer is full builds none until it delivers, and the timer would fire
        // forever unconsumed (tutti-sim ordered seed 869 held simulated time still).
        if let (Some(since), None, true, true, None, true) = (
            self.queue_blocked_since,
            &self.list_op,
            self.appends.is_empty(),
            self.in_majority,
            held_until,
            self.may_append(),
        ) {
            t = t.min(since + self.settings.lag_timeout);
        }
        if let Some(r) = self.transfers.iter().map(|t| t.3).min() {
            t = t.min(r);
        }
        if self.tell_due() {
            t = t.min(self.tell_at);
        }
        if self.publish_due() {
            t = t.min(self.publish_at);
        }
        if let Some((since, _)) = self.full_since {
            t = t.min(since + self.settings.lag_timeout);
        }
        if self.status == Status::Installing {
            t = t.min(self.install_deadline);
        }
        if let (Some(evs), Status::Gathering) = (&self.evs, self.status) {
            // The deadline matters only when no list operation is in flight (it is checked
            // when one ends).
            if evs.founder && !evs.install_learned && self.list_op.is_none() {
                t = t.min(evs.gather_deadline);
            }
        }
        if self.repair_op.is_none() && self.status == Status::Active && self.in_majority {
            // Entries below `held_upto` lack nothing: the walk starts there (it ran
            // `missing` over every message of every buffered entry at each call).
            let held = self.held_upto.saturating_sub(self.delivered) as usize;
            if let Some(l) = self
                .buffer
                .iter()
                .skip(held)
                .find(|l| l.sender_slot.is_some() && self.missing(&l.entry).is_some())
            {
                t = t.min(l.at + self.settings.repair_delay);
            }
        }
        (t != Time::MAX).then_some(t)
    }

    // ---- inputs ----

    /// Where the group's memory node primary runs now (failover moves it).
    pub fn set_memnode_host(&mut self, node: NodeId) {
        self.coord.set_placement(self.memnode, node);
    }

    /// From the view: whether this node is in a majority. Outside one it delivers nothing.
    pub fn set_in_majority(&mut self, now: Time, in_majority: bool) {
        self.coord.set_in_majority(in_majority);
        if self.in_majority && !in_majority {
            self.enter_minority();
        }
        self.in_majority = in_majority;
        self.drive(now);
    }

    /// From the failure detector: `node` is suspected (`true`) or no longer (`false`). A
    /// suspected member is removed by an entry this member appends.
    pub fn set_suspected(&mut self, now: Time, node: NodeId, suspected: bool) {
        if suspected {
            self.suspected.insert(node);
        } else {
            self.suspected.remove(&node);
        }
        self.quiet_reads = 0;
        self.drive(now);
    }

    /// From the failure detector: `node` is suspected, but not (yet) for long enough to be
    /// removed for it (`true`), or no longer (`false`). A doubted member that also lags is
    /// removed as `Suspected`: a crash is reported as such even when the lag budget runs
    /// out first.
    pub fn set_doubted(&mut self, node: NodeId, doubted: bool) {
        if doubted {
            self.doubted.insert(node);
        } else {
            self.doubted.remove(&node);
        }
    }

    /// A wake-up from the memory node (the tail moved after this member's last dormant
    /// read): read at once and poll at the normal interval again. Only the primary of
    /// this member's memory node may send one; one wake-up per `poll_interval` is acted
    /// on, so a forged one costs at most a read.
    fn on_wake(&mut self, now: Time, from: NodeId, bytes: &[u8]) {
        let ours = matches!(
            tutti_wire::minitx::Message::decode(bytes),
            Ok(tutti_wire::minitx::Message::Wake { memnode }) if memnode == self.memnode
        );
        if !ours || self.coord.placement(self.memnode) != Some(from) {
            self.counters.wakes_refused += 1;
            return;
        }
        if self
            .last_wake
            .is_some_and(|t| now < t.saturating_add(self.settings.poll_interval))
        {
            self.counters.wakes_limited += 1;
            return;
        }
        self.last_wake = Some(now);
        self.counters.wakes += 1;
        self.quiet_reads = 0;
        // Fed by pushes, the entry that woke it comes (or came) by push: it polls at the
        // normal interval again, which covers a lost push.
        self.read_now = !self.push_fed;
        self.drive(now);
    }

    /// Whether the member may go dormant: an active member with nothing to send, no
    /// learned entry waiting for delivery (safe entries and `evs` lists wait for the
    /// others' progress, which only reads bring for certain: a tell may be lost), no
    /// transfer or snapshot to produce.
    fn may_sleep(&self) -> bool {
        self.status == Status::Active
            && self.learned == self.delivered
            && self.known_tail == self.learned
            && self.safe_waiting.is_none_or(|p| p < self.delivered)
            && self.outgoing.is_empty()
            && self.appends.is_empty()
            && !self.leaving
            && self.transfers.is_empty()
            && self.producing.is_none()
            && self.suspected.is_empty()
    }

    /// Whether a member that may sleep and has made `quiet_reads` quiet reads in a row
    /// waits longer than `poll_interval << QUIET_MAX_SHIFT` for its next read (it is
    /// dormant, and only a wake-up or `dormant_interval` starts that read).
    fn sleeps_after(quiet_reads: u32) -> bool {
        quiet_reads > QUIET_MAX_SHIFT
    }

    /// The next read asks to be woken: if it is quiet too, the member sleeps after it.
    fn dormant(&self) -> bool {
        Self::sleeps_after(self.quiet_reads.saturating_add(1)) && self.may_sleep()
    }

    /// The interval between reads while nothing else calls for one: `poll_interval` (a
    /// fraction of it while learned entries wait to be delivered, `WAITING_POLL_DIVISOR`),
    /// doubled per quiet read (`quiet_reads`) up to `QUIET_MAX_SHIFT` times, or, for a
    /// member that may sleep, up to `dormant_interval`.
    fn read_interval(&self) -> Time {
        let base = if self.learned > self.delivered {
            (self.settings.poll_interval / WAITING_POLL_DIVISOR).max(1)
        } else {
            self.settings.poll_interval
        };
        let polling = base << self.quiet_reads.min(QUIET_MAX_SHIFT);
        let interval = if Self::sleeps_after(self.quiet_reads) && self.may_sleep() {
            let dormant = base.saturating_mul(1 << self.quiet_reads.min(DORMANT_MAX_SHIFT));
            dormant.min(self.settings.dormant_interval).max(polling)
        } else {
            polling
        };
        if self.hold_until().is_some() && !self.requested {
            // Holding for a request: the requester's payloads went out long before (it was
            // starved), so no payload hint tells this member when its entry lands, and
            // waiting for the next poll kept it idle for up to `poll_interval`.
            return interval.min((self.settings.poll_interval / TELL_DIVISOR).max(1));
        }
        if self.safe_waiting.is_some_and(|p| p >= self.delivered) {
            // A safe entry waits for the others' `held`, which only a read brings for
            // certain (a tell may be lost): polled every `poll_interval` it waited a poll
            // more (p50 2.27 ms one
            // in flight, of which about one poll interval was this wait). Its reads do not
            // back off past `poll_interval / SAFE_POLL_DIVISOR`.
            return interval.min((self.settings.poll_interval / SAFE_POLL_DIVISOR).max(1));
        }
        interval
    }

    // ---- evs (driven by `EvsMember`) ----

    /// `evs`: the list epoch of this member (`None` for a `majority` group).
    pub fn list_epoch(&self) -> Option<EpochId> {
        self.evs.as_ref().map(|e| e.epoch)
    }

    /// `evs`: where this member stands in its list, for its `EvsJoin` in the next one:
    /// `None` unless it is an active member (a list position past 2^32 counts as none).
    pub(crate) fn join_from(&self) -> Option<JoinFrom> {
        let evs = self.evs.as_ref()?;
        if self.status != Status::Active {
            return None;
        }
        Some(JoinFrom {
            epoch: evs.epoch,
            delivered: u32::try_from(self.delivered).ok()?,
            held: u32::try_from(self.held_upto).ok()?,
        })
    }

    /// `evs`: this member leaves its list for a new list epoch: no more appends, reads or
    /// timers; what it delivers from now on is its transitional part.
    pub(crate) fn freeze(&mut self) {
        self.frozen = true;
        self.draining = false;
    }

    /// `evs` (`agreed`): this member leaves its list for a new list epoch once it has read
    /// the list up to its first `Seal` (it appends one itself unless one is there; the
    /// first counts) and holds everything before it; until then it appends nothing more
    /// and reads, learns and delivers on. The owner freezes it once [`Self::drained`].
    pub(crate) fn drain_to_seal(&mut self, now: Time) {
        if self.frozen || self.status != Status::Active {
            return;
        }
        self.draining = true;
        self.read_now = true;
        self.drive(now);
    }

    /// `evs`: whether a draining member is done (it holds its list up to the `Seal`, and
    /// no append of its own is in flight), or is no member to drain any more.
    pub(crate) fn drained(&self) -> bool {
        if self.frozen || self.status != Status::Active {
            return true;
        }
        self.sealed_at.is_some_and(|s| self.held_upto >= s)
            && self.appends_settled()
            && !matches!(self.list_op, Some((_, ListOp::Seal { .. })))
    }

    /// Every own append settled: none in flight, no outcome unknown.
    fn appends_settled(&self) -> bool {
        self.appends.is_empty() && !self.pending_uncertain
    }

    /// `evs`: this member appends its `EvsJoin` only once [`Self::set_join_from`] said
    /// where it comes from.
    pub(crate) fn hold_join(&mut self) {
        if let Some(evs) = self.evs.as_mut() {
            evs.hold_join = true;
        }
    }

    /// `evs`: where this joiner comes from; its `EvsJoin` goes now.
    pub(crate) fn set_join_from(&mut self, now: Time, from: Option<JoinFrom>) {
        let Some(evs) = self.evs.as_mut() else { return };
        if !evs.hold_join {
            return;
        }
        evs.hold_join = false;
        evs.from = from;
        self.drive(now);
    }

    /// `evs`: whether this joiner still waits to know where it comes from.
    pub(crate) fn join_held(&self) -> bool {
        self.evs.as_ref().is_some_and(|e| e.hold_join)
    }

    /// `evs`: whether this member, draining its list, should append a `Seal` now (none
    /// learned yet).
    fn seal_due(&self) -> bool {
        self.draining
            && self.status == Status::Active
            && self.sealed_at.is_none()
            && self.appends_settled()
            && self.known_tail != u64::MAX
            && self.learned >= self.known_tail
    }

    /// `evs`: a frozen member delivers its list up to `end` (the end of its transitional
    /// configuration), which it holds by the delivery rule. Returns whether it got there.
    pub(crate) fn deliver_through(&mut self, now: Time, end: u64) -> bool {
        debug_assert!(self.frozen);
        self.force_until = Some(end);
        self.deliver(now);
        self.force_until = None;
        if self.delivered < end && self.status == Status::Active {
            self.counters.transitional_missing += 1;
            return false;
        }
        true
    }

    /// `evs`: this (frozen) member's own messages that were never in an append, in seq
    /// order with their `safe` flag (they cannot land in this list: they are sent again in
    /// the next one), and how many others it did not deliver (appended, or maybe appended:
    /// only the members that stay in this list may deliver them).
    pub(crate) fn unsent_own(&self) -> (Vec<(Vec<u8>, bool)>, usize) {
        let formed: usize = self.batches.iter().map(|b| usize::from(b.count)).sum();
        // Past the list's `Seal` nobody delivers: those of its own messages went nowhere.
        // Once drained (every own append settled), a formed batch still unconfirmed was
        // never appended either.
        let mut seqs: Vec<(u64, bool)> = Vec::new();
        if let Some(seal) = self.sealed_at {
            for l in self
                .buffer
                .iter()
                .filter(|l| l.entry.pos > seal && l.entry.node == self.node)
            {
                if let EntryKind::Data {
                    epoch,
                    first_seq,
                    count,
                    safe,
                } = l.entry.kind
                {
                    if epoch == self.join_pos {
                        seqs.extend((first_seq..first_seq + u64::from(count)).map(|q| (q, safe)));
                    }
                }
            }
        }
        let skip = if self.sealed_at.is_some() && self.appends_settled() {
            0
        } else {
            formed
        };
        seqs.extend(self.outgoing.iter().skip(skip).copied());
        let unsent: Vec<(Vec<u8>, bool)> = seqs
            .into_iter()
            .filter_map(|(seq, safe)| {
                self.payloads
                    .get(&(self.node, self.join_pos, seq))
                    .map(|b| (b.clone(), safe))
            })
            .collect();
        let undelivered = self
            .payloads
            .keys()
            .filter(|id| id.0 == self.node && id.1 == self.join_pos)
            .count();
        (unsent.clone(), undelivered.saturating_sub(unsent.len()))
    }

    /// `evs`: the position of the first `Seal` learned in this list.
    pub(crate) fn sealed_at(&self) -> Option<u64> {
        self.sealed_at
    }

    /// The view as of the last delivered entry.
    pub(crate) fn delivered_members(&self) -> Vec<NodeId> {
        self.deliver_view.nodes()
    }

    /// `evs`: where this member's configuration in its new list starts, once delivery got
    /// there (taken once).
    pub(crate) fn take_pending(&mut self) -> Option<PendingInstall> {
        let evs = self.evs.as_mut()?;
        if self.status != Status::Gathering {
            return None;
        }
        evs.pending?;
        let late = evs.install.is_some_and(|i| i < self.join_pos);
        Some(PendingInstall {
            joins: if late { Vec::new() } else { evs.joins.clone() },
        })
    }

    /// `evs`: after the owner delivered the transitional configuration `moved_with`, this
    /// member enters its configuration in the new list and delivers on.
    pub(crate) fn activate(&mut self, now: Time, moved_with: &[NodeId]) {
        let Some(evs) = self.evs.as_mut() else { return };
        let Some(position) = evs.pending.take() else {
            return;
        };
        let epoch = evs.epoch;
        self.status = Status::Active;
        self.held_upto = self.held_upto.max(self.delivered);
        self.held_waiting = None;
        self.queue_pos = vec![None; self.settings.queue_slots as usize];
        self.read_now = true;
        let members = self.deliver_view.nodes();
        self.out.push_back(Output::Configuration(ConfigEvent {
            epoch,
            position,
            joined: members
                .iter()
                .copied()
                .filter(|n| !moved_with.contains(n))
                .collect(),
            members,
            left: Vec::new(),
            transitional: false,
        }));
        self.advance_held();
        self.drive(now);
    }

    /// Leaves the group (an entry).
    pub fn leave(&mut self, now: Time) {
        self.leaving = true;
        self.drive(now);
    }

    /// Queues a message; it is disseminated at once and threaded into the list by a later
    /// append. Returns its seq.
    pub fn submit(&mut self, now: Time, bytes: &[u8], safe: bool) -> Result<u64, SubmitRefused> {
        let seq = self.queue(bytes, safe)?;
        self.drive(now);
        Ok(seq)
    }

    /// Queues a message as [`Self::submit`] does, without running the member: a driver
    /// that takes several messages at once (a publish ring's frames) queues them all, then
    /// calls [`Self::run_queued`] once, so that they form one batch (one append, one
    /// payload run per member) instead of a batch each while the pipeline has room (with
    /// the memory node on this node, an append's answer comes back before the next submit).
    pub fn queue(&mut self, bytes: &[u8], safe: bool) -> Result<u64, SubmitRefused> {
        if self.status != Status::Active || self.leaving || self.frozen {
            return Err(SubmitRefused::NotMember);
        }
        if bytes.len() > self.settings.max_payload as usize {
            return Err(SubmitRefused::TooLarge);
        }
        if self.outgoing.len() >= self.settings.max_outgoing {
            return Err(SubmitRefused::Full);
        }
        let seq = self.next_submit_seq;
        self.next_submit_seq += 1;
        self.quiet_reads = 0;
        self.outgoing.push_back((seq, safe));
        // Disseminated when its batch is formed (`form_batch`), not here: a sender with a
        // deep queue would otherwise flood the others with payloads far ahead of the
        // order, beyond their `max_held`, to be dropped and read back from the queue.
        let held = self.buffer_of(bytes);
        self.payloads.insert((self.node, self.join_pos, seq), held);
        Ok(seq)
    }

    /// Runs the member after [`Self::queue`]: forms and appends what was queued.
    pub fn run_queued(&mut self, now: Time) {
        self.drive(now);
    }

    /// A disseminated payload arrived.
    pub fn handle_payload(&mut self, now: Time, sender: NodeId, epoch: u64, seq: u64, bytes: &[u8]) {
        self.take_payload((sender, epoch, seq), bytes);
        self.drive(now);
    }

    /// Disseminated payloads of consecutive seqs from `first_seq` arrived together (a
    /// payload run): taken as `handle_payload` takes each, then one pass of the member.
    pub fn handle_payloads<'a>(
        &mut self,
        now: Time,
        sender: NodeId,
        epoch: u64,
        first_seq: u64,
        payloads: impl IntoIterator<Item = &'a [u8]>,
    ) {
        let mut seq = Some(first_seq);
        for bytes in payloads {
            // A run that would wrap the seq space is not from a sender of this group.
            let Some(s) = seq else {
                self.counters.malformed += 1;
                break;
            };
            self.take_payload((sender, epoch, s), bytes);
            seq = s.checked_add(1);
        }
        self.drive(now);
    }

    /// Payloads that the memory node's replica on this node applied to the queues (the
    /// queue slots' bytes: header and payload), taken as `handle_payload` takes each, then
    /// one pass of the member; this member's own and unparsable slots are skipped. Returns
    /// how many were offered.
    pub fn handle_queued<'a>(&mut self, now: Time, slots: impl IntoIterator<Item = &'a [u8]>) -> u64 {
        let mut taken = 0;
        for slot in slots {
            match super::queue_slot(slot) {
                Some((sender, epoch, seq, bytes)) if sender != self.node => {
                    self.take_payload((sender, epoch, seq), bytes);
                    taken += 1;
                }
                Some(_) => {}
                None => self.counters.malformed += 1,
            }
        }
        if taken > 0 {
            self.drive(now);
        }
        taken
    }

    /// Holds a disseminated payload for delivery, unless it is not wanted (dropped, counted).
    fn take_payload(&mut self, id: PayloadId, bytes: &[u8]) {
        let (sender, epoch, seq) = id;
        let delivered_already = matches!(self.deliver_view.get(sender), Some(m) if m.join_pos == epoch)
            && self.next_seq.get(&sender).is_some_and(|&n| seq < n);
        if self.status == Status::Removed
            || self.frozen
            || delivered_already
            || self.payloads.contains_key(&id)
            || bytes.len() > self.settings.max_payload as usize
            || self.payloads.len() >= self.settings.max_held
        {
            self.counters.payloads_dropped += 1;
            return;
        }
        let held = self.buffer_of(bytes);
        self.payloads.insert(id, held);
        if !self.push_fed {
            self.payload_hint = true;
            self.hint_rereads = 0;
        }
        self.quiet_reads = 0;
        if self.held_waiting.is_none_or(|w| w == id) {
            self.advance_held();
        }
    }

    /// Hands back a buffer this member gave out (a delivered payload, a disseminated
    /// copy) for reuse; kept up to `MAX_SPARE_BUFFERS`, freed beyond.
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < MAX_SPARE_BUFFERS
            && buf.capacity() <= QUEUE_HEADER + self.settings.max_payload as usize
        {
            buf.clear();
            self.spare.push(buf);
        }
    }

    /// A copy of `bytes` in a reused buffer if one is spare.
    fn buffer_of(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut b = self.spare.pop().unwrap_or_default();
        b.extend_from_slice(bytes);
        b
    }

    /// A minitransaction message from a memory node.
    pub fn handle_minitx(&mut self, now: Time, from: NodeId, bytes: &[u8]) {
        if self.frozen {
            return;
        }
        if tutti_wire::minitx::kind_of(bytes) == Some(tutti_wire::minitx::kind::WAKE) {
            self.on_wake(now, from, bytes);
            return;
        }
        self.coord.handle_message(now, from, bytes);
        self.drain_outcomes(now);
        self.drive(now);
    }

    pub fn handle_timeout(&mut self, now: Time) {
        if self.frozen {
            return;
        }
        self.coord.handle_timeout(now);
        self.drain_outcomes(now);
        if self.status == Status::Installing && now >= self.install_deadline {
            if let Some(holders) = self.restart_holders() {
                // Every state holder is gone: restart the group (`start_list_op`).
                self.restart = Some(holders);
                self.install_deadline = now + self.settings.install_timeout;
            } else {
                // The producer may be gone: join again (the new entry replaces the old one).
                self.counters.joins_retried += 1;
                self.status = Status::Joining;
                self.restart = None;
                self.buffer.clear();
            }
        }
        if let Some(h) = &mut self.hold {
            // The hold's end is a timer of `poll_timeout`: consume it here, whatever
            // `start_list_op` does next.
            if now >= h.until {
                h.done = true;
            }
        }
        for t in &mut self.transfers {
            if t.3 <= now {
                t.3 = now + self.settings.retransmit;
                self.out.push_back(Output::Transfer {
                    to: t.0,
                    bytes: t.2.clone(),
                });
            }
        }
        self.drive(now);
    }

    /// The application's snapshot for the last `SnapshotRequest`.
    pub fn snapshot_ready(&mut self, now: Time, snapshot: &[u8]) {
        let Some((joiner, position, view, next_seq)) = self.producing.take() else {
            return;
        };
        let bytes = encode_transfer(position, &view, &next_seq, snapshot);
        self.counters.transfers_sent += 1;
        self.out.push_back(Output::Transfer {
            to: joiner,
            bytes: bytes.clone(),
        });
        self.transfers
            .push((joiner, position, bytes, now + self.settings.retransmit));
        self.drive(now);
    }

    /// Group creation: a joiner whose join entry is at position 0 found the list empty
    /// (the tail compare made it the only one), so it creates the group: its join makes a
    /// one-member view and no state transfer is awaited. Returns true if it did so now.
    /// The host calls it after each input (additive, for `ordered::host`).
    pub fn create_if_first(&mut self, now: Time) -> bool {
        if self.status != Status::Installing || self.join_pos != 0 {
            return false;
        }
        let view = View {
            id: 1,
            members: vec![Member {
                node: self.node,
                join_pos: 0,
                slot: 0,
            }],
        };
        self.deliver_view = view.clone();
        self.learn_view = view;
        self.next_seq = BTreeMap::from([(self.node, 0)]);
        for i in 0..self.buffer.len() {
            let e = self.buffer[i].entry;
            self.learn_view.apply(&e, self.settings.max_members);
            self.buffer[i].sender_slot = self.learn_view.get(e.node).map(|m| m.slot);
        }
        self.queue_pos = vec![None; self.settings.queue_slots as usize];
        self.status = Status::Active;
        self.read_now = true;
        self.out.push_back(Output::View(ViewEvent {
            id: self.deliver_view.id,
            position: 0,
            members: self.deliver_view.nodes(),
            joined: Some(self.node),
            left: None,
        }));
        self.drive(now);
        true
    }

    /// A state transfer arrived (for this joiner, or a stale one: ignored).
    pub fn handle_transfer(&mut self, now: Time, bytes: &[u8]) {
        let Some((position, view, next_seq, snapshot)) = decode_transfer(bytes) else {
            self.counters.malformed += 1;
            return;
        };
        if self.status != Status::Installing || position != self.join_pos {
            return;
        }
        let Some(me) = view.get(self.node) else {
            self.counters.malformed += 1;
            return;
        };
        if me.join_pos != position {
            self.counters.malformed += 1;
            return;
        }
        self.deliver_view = view.clone();
        self.learn_view = view;
        self.next_seq = next_seq;
        for i in 0..self.buffer.len() {
            let e = self.buffer[i].entry;
            self.learn_view.apply(&e, self.settings.max_members);
            self.buffer[i].sender_slot = self.learn_view.get(e.node).map(|m| m.slot);
        }
        self.queue_pos = vec![None; self.settings.queue_slots as usize];
        self.status = Status::Active;
        self.read_now = true;
        self.out.push_back(Output::Installed { position, snapshot });
        self.out.push_back(Output::View(ViewEvent {
            id: self.deliver_view.id,
            position,
            members: self.deliver_view.nodes(),
            joined: Some(self.node),
            left: None,
        }));
        self.drive(now);
    }

    // ---- the machine ----

    fn enter_minority(&mut self) {
        if self.status == Status::Removed {
            return;
        }
        self.counters.minority += 1;
        self.out.push_back(Output::Minority);
    }

    fn removed(&mut self, reason: RemoveReason) {
        if self.status == Status::Removed {
            return;
        }
        self.status = Status::Removed;
        self.buffer.clear();
        self.payloads.clear();
        self.transfers.clear();
        self.out.push_back(Output::Removed { reason });
    }

    fn drain_outcomes(&mut self, now: Time) {
        while let Some(o) = self.coord.poll_event() {
            self.on_outcome(now, o);
        }
    }

    fn on_outcome(&mut self, now: Time, o: Outcome) {
        if matches!(o.result, Err(TxnError::NotInMajority)) && self.in_majority {
            self.in_majority = false;
            self.enter_minority();
        }
        if self.publish_op == Some(o.txid) {
            self.publish_op = None;
            if o.result.is_err() {
                // It may not have been applied: write the slot again.
                self.published = None;
            }
            return;
        }
        if self.repair_op.as_ref().is_some_and(|(txid, _)| *txid == o.txid) {
            if let (Some((_, ids)), Ok(reads)) = (self.repair_op.take(), &o.result) {
                self.on_repair(&ids, reads);
            }
            return;
        }
        if let Some(i) = self.appends.iter().position(|a| a.txid == o.txid) {
            if let Some(a) = self.appends.remove(i) {
                if self.status != Status::Removed {
                    self.on_append(now, a, o.result);
                }
            }
            return;
        }
        let Some((txid, _)) = &self.list_op else { return };
        if *txid != o.txid {
            return;
        }
        let Some((_, op)) = self.list_op.take() else {
            return;
        };
        if self.status == Status::Removed {
            return;
        }
        match (op, o.result) {
            (ListOp::Read { from }, Ok(reads)) => {
                // What it read is as fresh as its answer: the next read that only waits
                // (the others' progress, the poll) is timed from here.
                self.last_read = self.last_read.max(now);
                if from == self.learned {
                    let before = (self.learned, self.known_tail, self.delivered);
                    self.on_read(now, from, &reads);
                    let nothing_new = before == (self.learned, self.known_tail, self.delivered);
                    if self.learned > before.0 {
                        // An entry no push had brought: pushes do not feed this member.
                        self.push_fed = false;
                    }
                    let hinted = std::mem::take(&mut self.read_hinted);
                    if !nothing_new {
                        self.hint_rereads = 0;
                    } else if hinted && self.hint_rereads < HINT_REREADS {
                        self.hint_rereads += 1;
                        self.payload_hint = true;
                    }
                    let quiet = nothing_new
                        && !self.payload_hint
                        && self.status == Status::Active
                        && self.outgoing.is_empty()
                        && !self.leaving;
                    self.quiet_reads = if quiet {
                        self.quiet_reads.saturating_add(1)
                    } else {
                        0
                    };
                }
            }
            (ListOp::Join { at }, Ok(_)) => {
                debug_assert_eq!(at, self.learned);
                let e = self.own_join(at);
                self.counters.appends_committed += 1;
                self.learn(now, e);
                self.known_tail = self.known_tail.max(self.learned);
            }
            (ListOp::Install { at }, result) => self.own_entry_outcome(now, at, EntryKind::Install, result),
            (ListOp::Seal { at }, result) => self.own_entry_outcome(now, at, EntryKind::Seal, result),
            (ListOp::Restart { entries, .. }, Ok(_)) => {
                self.counters.appends_committed += 1;
                // Learning its own `Restart` installs the empty state (`learn`).
                for e in entries {
                    if e.pos == self.learned && self.status == Status::Installing {
                        self.learn(now, e);
                    }
                }
                self.known_tail = self.known_tail.max(self.learned);
            }
            (ListOp::Restart { at, .. }, Err(TxnError::Conflict { reads, .. })) => {
                self.counters.append_conflicts += 1;
                let all: Option<Vec<Vec<u8>>> = reads.into_iter().collect();
                if let Some(reads) = all {
                    self.on_read(now, at, &reads);
                }
                // Appended to meanwhile: decide again on what the list says now.
                if self.status == Status::Installing && self.restart.is_some() {
                    self.restart = self.restart_holders();
                }
                self.read_now = true;
            }
            (ListOp::Restart { .. }, Err(e)) => {
                if e == TxnError::Unavailable {
                    // Maybe appended: read up to the tail (its own `Restart` installs).
                    self.pending_uncertain = true;
                }
                self.txn_failed(now, &e);
            }
            (ListOp::Read { .. }, Err(e)) => self.txn_failed(now, &e),
            (ListOp::Join { at }, Err(TxnError::Conflict { reads, .. })) => {
                self.counters.append_conflicts += 1;
                self.lost_compare();
                let all: Option<Vec<Vec<u8>>> = reads.into_iter().collect();
                if let Some(reads) = all {
                    // The tail came back with the conflict.
                    self.on_read(now, at, &reads);
                }
                if self.status == Status::Joining {
                    // Nothing was written: try again at the current tail.
                    self.learned = self.known_tail;
                }
                self.read_now = true;
            }
            (ListOp::Join { .. }, Err(e)) => {
                if e == TxnError::Unavailable {
                    // Maybe appended: read up to the tail before appending again.
                    self.pending_uncertain = true;
                }
                self.txn_failed(now, &e);
            }
        }
    }

    /// Appends a lone entry of this member's own (`Install`, `Seal`) at the learned tail,
    /// reading the entries from there (what it lost the compare to).
    fn append_own_entry(&mut self, now: Time, kind: EntryKind, op: ListOp) {
        let at = self.learned;
        let e = Entry {
            pos: at,
            node: self.node,
            kind,
        };
        let mtx = self
            .reads_from(at, u64::from(self.settings.read_batch))
            .compare(self.list_addr_tail(), &at.to_le_bytes())
            .write(self.list_addr(at), &e.encode())
            .write(self.list_addr_tail(), &(at + 1).to_le_bytes());
        self.counters.appends += 1;
        self.submit_list_op(now, &mtx, op);
    }

    /// The outcome of a lone entry of this member's own (`Install`, `Seal`) at `at`.
    fn own_entry_outcome(
        &mut self,
        now: Time,
        at: u64,
        kind: EntryKind,
        result: Result<Vec<Vec<u8>>, TxnError>,
    ) {
        match result {
            Ok(_) => {
                self.counters.appends_committed += 1;
                if at == self.learned {
                    let e = Entry {
                        pos: at,
                        node: self.node,
                        kind,
                    };
                    self.learn(now, e);
                    self.known_tail = self.known_tail.max(self.learned);
                } else {
                    self.read_now = true;
                }
            }
            Err(TxnError::Conflict { reads, .. }) => {
                self.counters.append_conflicts += 1;
                let all: Option<Vec<Vec<u8>>> = reads.into_iter().collect();
                if let Some(reads) = all {
                    self.on_read(now, at, &reads);
                }
                self.read_now = true;
            }
            Err(e) => {
                if e == TxnError::Unavailable {
                    self.pending_uncertain = true;
                }
                self.txn_failed(now, &e);
            }
        }
    }

    /// The outcome of an append. Its reads (from `a.from`, taken before its writes) hold
    /// the entries below it: on a commit those are the appends of this chain before it
    /// (whose answers may come later or never), on a conflict what other members appended.
    fn on_append(&mut self, now: Time, a: Append, result: Result<Vec<Vec<u8>>, TxnError>) {
        match result {
            Ok(reads) => {
                self.counters.appends_committed += 1;
                self.window = (self.window + 1).min(self.settings.max_appends_in_flight);
                self.on_read(now, a.from, &reads);
                self.last_read = self.last_read.max(now);
                if self.status == Status::Removed {
                    return;
                }
                if self.learned == a.at {
                    for e in a.entries {
                        self.learn(now, e);
                    }
                    self.known_tail = self.known_tail.max(self.learned);
                } else if self.learned < a.at {
                    // The entries before it did not fit in its reads: a read learns them
                    // (and this append's) once the chain is done.
                    self.chain_broken = true;
                    self.read_now = true;
                }
            }
            Err(e) => {
                // Nothing was written (or, for `Unavailable`, maybe everything): the
                // appends chained after it cannot land before it is settled.
                if !self.chain_broken {
                    if !self.appends.is_empty() {
                        self.counters.chains_broken += 1;
                    }
                    if !matches!(e, TxnError::Conflict { .. }) {
                        self.window = 1;
                    }
                }
                self.chain_broken = true;
                if let TxnError::Conflict { reads, .. } = e {
                    self.counters.append_conflicts += 1;
                    self.lost_compare();
                    let all: Option<Vec<Vec<u8>>> = reads.into_iter().collect();
                    if let Some(reads) = all {
                        // The entries this member missed came back with the conflict.
                        self.on_read(now, a.from, &reads);
                    }
                    self.read_now = true;
                } else {
                    if e == TxnError::Unavailable {
                        // Maybe appended: read up to the tail before appending again.
                        self.pending_uncertain = true;
                    }
                    self.txn_failed(now, &e);
                }
            }
        }
    }

    fn txn_failed(&mut self, now: Time, e: &TxnError) {
        if *e != TxnError::NotInMajority {
            self.counters.txn_errors += 1;
        }
        self.next_list_op_at = now + self.settings.retransmit;
        self.read_now = true;
    }

    /// A lost tail compare (fairness): after `STARVE_AFTER` in a row, with at least half
    /// of `max_outgoing` queued (the others' appends keep it out while its backlog grows),
    /// post a request. Every request holds the others' appends for a round trip or more:
    /// asked at every third loss, a sender that got its entries in every few milliseconds
    /// over a slow link cost the others so much that sim seeds 552 and 607 could not drain
    /// their backlogs within the liveness bound.
    fn lost_compare(&mut self) {
        self.lost_in_a_row += 1;
        let starving = self.lost_in_a_row >= STARVE_AFTER
            && self.outgoing.len().saturating_mul(2) >= self.settings.max_outgoing;
        // A joiner asks at its first loss: it holds no state and waits for its transfer.
        if starving || self.status == Status::Joining {
            self.lost_in_a_row = 0;
            self.request_due = true;
        }
    }

    /// Adds the request write to `mtx` if one is due: (this node, the tail it lost at).
    fn request_write(&mut self, mtx: Minitransaction) -> Minitransaction {
        if !self.request_due || self.known_tail == u64::MAX {
            return mtx;
        }
        self.request_due = false;
        self.requested = true;
        self.counters.fairness_requests += 1;
        let r = ProgressSlot {
            node: self.node,
            installed: false,
            join_pos: self.known_tail,
            learned: 0,
            held: 0,
        };
        mtx.write(Address::new(self.memnode, PROGRESS, 0), &r.encode())
    }

    /// The request slot as read: a new request (another node, a new position) starts a
    /// hold of at most `HOLD_RETRANSMITS * retransmit`.
    fn see_request(&mut self, now: Time, r: ProgressSlot) {
        if r.node == 0 || r.node == self.node {
            return;
        }
        if self
            .hold
            .is_some_and(|h| h.node == r.node && h.pos == r.pos_asked())
        {
            return;
        }
        self.hold = Some(Hold {
            node: r.node,
            pos: r.pos_asked(),
            until: now + HOLD_RETRANSMITS * self.settings.retransmit,
            done: false,
        });
    }

    /// When the hold in force ends, if this member holds its appends for a request.
    fn hold_until(&self) -> Option<Time> {
        match self.hold {
            Some(h) if !h.done && self.status == Status::Active => Some(h.until),
            _ => None,
        }
    }

    /// True while this member holds its next anchor for a request.
    fn holding(&mut self, now: Time) -> bool {
        if self.requested {
            return false;
        }
        match &mut self.hold {
            Some(h) if !h.done => {
                if now >= h.until {
                    h.done = true;
                    false
                } else {
                    true
                }
            }
            _ => false,
        }
    }

    fn read_progress(&mut self, now: Time, bytes: Option<&[u8]>) {
        let Some(b) = bytes else { return };
        let mut chunks = b.chunks(PROGRESS_BYTES);
        if let Some(r) = chunks.next().and_then(ProgressSlot::decode) {
            self.see_request(now, r);
        }
        for (i, chunk) in chunks.enumerate() {
            if let Some(p) = self.progress.get_mut(i) {
                let new = ProgressSlot::decode(chunk).filter(|s| s.node != 0 || s.learned != 0);
                if new.map(|s| (s.node, s.join_pos, s.held)) != p.map(|s| (s.node, s.join_pos, s.held)) {
                    if let Some(since) = self.progress_since.get_mut(i) {
                        *since = now;
                    }
                }
                *p = new;
            }
        }
        // Acknowledged transfers: the joiner installed (or is no longer that member).
        let view = &self.learn_view;
        let progress = &self.progress;
        self.transfers
            .retain(|(joiner, pos, _, _)| match view.get(*joiner) {
                Some(m) if m.join_pos == *pos => !matches!(
                    progress.get(m.slot as usize),
                    Some(Some(s)) if s.node == *joiner && s.join_pos == *pos && s.installed
                ),
                _ => false,
            });
    }

    /// Takes in the reads of a list operation: the tail, the progress slots and the entries
    /// from position `from` (those below `learned` are already known and skipped).
    fn on_read(&mut self, now: Time, from: u64, reads: &[Vec<u8>]) {
        self.counters.reads += 1;
        let Some(tail) = reads.first().and_then(|b| u64_at(b, 0)) else {
            self.counters.malformed += 1;
            return;
        };
        if self.known_tail == u64::MAX {
            // A joiner's first read: it appends its join at the tail.
            self.learned = tail;
            self.known_tail = tail;
        }
        // Answers to appends in flight may arrive out of order: the tail only grows.
        self.known_tail = self.known_tail.max(tail);
        self.read_progress(now, reads.get(1).map(Vec::as_slice));
        let mut overwritten = false;
        let entries = reads.get(2..).unwrap_or_default();
        for (i, chunk) in entries.iter().flat_map(|r| r.chunks(ENTRY_BYTES)).enumerate() {
            let p = from + i as u64;
            if p >= tail {
                break;
            }
            if p < self.learned {
                continue;
            }
            if p > self.learned {
                // Only possible if `from` was ahead of `learned`: never taken out of order.
                break;
            }
            let full = self.buffer_full();
            match Entry::decode(chunk) {
                Some(e) if e.pos > p => {
                    overwritten = true;
                    break;
                }
                // A full buffer takes no entry; the one read shows only whether this member
                // was left behind: its slot overwritten, it was removed for lagging (sim
                // seed 869: a member whose front waited for a crashed member's removal, one
                // that another member appended past this one's buffer, read nothing forever).
                _ if full => break,
                Some(e) if e.pos == p => self.learn(now, e),
                _ => {
                    self.counters.malformed += 1;
                    break;
                }
            }
            if self.status == Status::Removed {
                return;
            }
        }
        if overwritten {
            // Reclaimed before this member read it: it was removed for lagging.
            if self.status == Status::Joining {
                self.learned = tail;
            } else {
                self.removed(RemoveReason::Lagging);
            }
            return;
        }
        if self.status == Status::Joining && self.learned >= tail {
            // Not found up to the tail: the join was not appended; append it here.
            self.pending_uncertain = false;
        }
        if self.status == Status::Installing && self.learned >= tail {
            // A restart anchor not found up to the tail was not appended.
            self.pending_uncertain = false;
        }
        if self.learned >= tail
            && self.pending_uncertain
            && self.status == Status::Active
            && self.appends.is_empty()
        {
            // Read up to the tail with no append in flight: what landed is learned and
            // confirmed. An append still on its way lands only where the next append
            // would put the same batches, or nowhere (see `build_append`).
            self.pending_uncertain = false;
        }
    }

    /// List entries the memory node's backup applied (`tail`, then the entries from
    /// position `first`), checked by the host to come from this list's backup at the
    /// current placement. The backup holds them, so they are committed: the member learns
    /// them as from a read, a hop before the primary's answer or a read would bring them.
    /// Only what a read also proves is taken: the tail (the list reaches at least there)
    /// and the entries that continue this member's learned prefix. A push never settles
    /// an append of unknown outcome (the backup may lag the primary): reads still do.
    pub fn handle_committed(&mut self, now: Time, tail: u64, first: u64, entries: &[u8]) {
        if self.frozen || self.status != Status::Active || self.known_tail == u64::MAX {
            self.counters.pushes_refused += 1;
            return;
        }
        self.counters.pushes += 1;
        // Only an `evs` list's pushes (from its founder, a hop after the append landed)
        // stand in for the hinted reads: a backup's come a hop later than the append's
        // answer, and dropping the hints while they flowed cost `majority` groups about
        // 30 % of their throughput (docs/ordered.md, "Committed entries pushed by the
        // backup").
        self.push_fed = self.evs.is_some();
        self.known_tail = self.known_tail.max(tail);
        for (i, chunk) in entries.chunks_exact(ENTRY_BYTES).enumerate() {
            let p = first + i as u64;
            // Learned but undelivered entries stay within `list_slots`, as a read keeps
            // them: a member that learned further by pushes appended further, where the
            // members learning by reads (the memory node's hosts) could not follow, and a
            // removal it appended there never reached them (sim seed 869: a safe entry
            // waited at those members for a crashed member's removal forever).
            if p >= tail || p > self.learned || self.buffer_full() {
                break;
            }
            if p < self.learned {
                continue;
            }
            match Entry::decode(chunk) {
                Some(e) if e.pos == p => {
                    self.counters.entries_pushed += 1;
                    self.quiet_reads = 0;
                    // As fresh as a read's answer: the reads that only wait (for the
                    // others' progress, which their tells bring) are timed from here. From
                    // an older answer, every push started one at once.
                    self.last_read = self.last_read.max(now);
                    self.learn(now, e);
                }
                _ => {
                    self.counters.malformed += 1;
                    break;
                }
            }
            if self.status != Status::Active {
                break;
            }
        }
        self.drive(now);
    }

    /// Whether `list_slots` entries are learned and not yet delivered: the most this member
    /// buffers, whether it learns them from reads or from pushes.
    fn buffer_full(&self) -> bool {
        self.learned.saturating_sub(self.delivered) >= u64::from(self.settings.list_slots)
    }

    /// Takes entry `e` (the next position) into this member's learned prefix.
    fn learn(&mut self, now: Time, e: Entry) {
        debug_assert_eq!(e.pos, self.learned);
        self.learned = e.pos + 1;
        if let Some(h) = &mut self.hold {
            if h.node == e.node && e.pos >= h.pos {
                h.done = true;
            }
        }
        if e.node == self.node {
            self.lost_in_a_row = 0;
            self.request_due = false;
            self.requested = false;
        }
        self.counters.entries_learned += 1;
        match self.status {
            Status::Removed => {}
            Status::Joining => {
                if e.node == self.node && matches!(e.kind, EntryKind::EvsJoin { .. }) && self.evs.is_some() {
                    // Read the list from its start: the configuration is a function of it.
                    self.status = Status::Gathering;
                    self.join_pos = e.pos;
                    self.learned = 0;
                    self.delivered = 0;
                    self.held_upto = 0;
                    self.held_waiting = None;
                    self.buffer.clear();
                    self.learn_view = View::default();
                    self.deliver_view = View::default();
                    self.next_seq.clear();
                    self.pending_uncertain = false;
                    self.next_submit_seq = 0;
                    self.read_now = true;
                } else if e.kind == EntryKind::Join && e.node == self.node {
                    self.status = Status::Installing;
                    self.join_pos = e.pos;
                    self.delivered = e.pos + 1;
                    self.held_upto = e.pos + 1;
                    self.held_waiting = None;
                    self.install_deadline = now + self.settings.install_timeout;
                    self.pending_uncertain = false;
                    self.next_submit_seq = 0;
                }
            }
            Status::Installing => {
                if e.kind == EntryKind::Restart && e.pos > self.join_pos {
                    if e.node == self.node {
                        self.install_restart(now, e.pos);
                    } else {
                        // The group restarted after this join: its view does not hold
                        // this joiner, and its producer is gone. Join the new one.
                        self.counters.joins_retried += 1;
                        self.status = Status::Joining;
                        self.restart = None;
                        self.buffer.clear();
                    }
                    self.advance_held();
                    return;
                }
                self.buffer.push_back(Learned {
                    entry: e,
                    at: now,
                    sender_slot: None,
                });
            }
            Status::Active | Status::Gathering => {
                if e.kind == EntryKind::Install {
                    if let Some(evs) = self.evs.as_mut() {
                        evs.install_learned = true;
                    }
                }
                if e.kind == EntryKind::Seal && self.sealed_at.is_none() {
                    self.sealed_at = Some(e.pos);
                }
                self.learn_view.apply(&e, self.settings.max_members);
                if let (EntryKind::Data { epoch, first_seq, .. }, Some(&b)) = (e.kind, self.batches.front()) {
                    if e.node == self.node && epoch == self.join_pos && first_seq == b.first_seq {
                        self.confirm_batch(e.pos, b);
                    }
                }
                self.buffer.push_back(Learned {
                    entry: e,
                    at: now,
                    sender_slot: self.learn_view.get(e.node).map(|m| m.slot),
                });
                // Appends whose entries are learned are done, whatever their answer says
                // (committed: learned from another answer, a read or the backup's push).
                while self
                    .appends
                    .front()
                    .is_some_and(|a| a.at + a.entries.len() as u64 <= self.learned)
                {
                    self.appends.pop_front();
                    self.counters.appends_committed += 1;
                }
            }
        }
        self.advance_held();
    }

    fn confirm_batch(&mut self, pos: u64, b: Batch) {
        for _ in 0..b.count {
            if let Some((seq, _)) = self.outgoing.pop_front() {
                let q = (seq % u64::from(self.settings.queue_slots)) as usize;
                self.queue_pos[q] = Some(pos);
            }
        }
        self.counters.messages_appended += u64::from(b.count);
        self.counters.batches += 1;
        self.batches.pop_front();
    }

    /// The payload ids of `e` this member lacks, if any (first one).
    fn missing(&self, e: &Entry) -> Option<PayloadId> {
        self.missing_from(e, 0)
    }

    /// The first payload id of `e` from seq `from` on that this member lacks, if any.
    fn missing_from(&self, e: &Entry, from: u64) -> Option<PayloadId> {
        let EntryKind::Data {
            epoch,
            first_seq,
            count,
            ..
        } = e.kind
        else {
            return None;
        };
        let delivered_below = match self.deliver_view.get(e.node) {
            Some(m) if m.join_pos == epoch => self.next_seq.get(&e.node).copied().unwrap_or(0),
            _ => 0,
        };
        (first_seq.max(from)..first_seq + u64::from(count))
            .filter(|&s| s >= delivered_below)
            .map(|s| (e.node, epoch, s))
            .find(|id| !self.payloads.contains_key(id))
    }

    fn advance_held(&mut self) {
        let mut idx = (self.held_upto.saturating_sub(self.delivered)) as usize;
        // The walk stopped at `held_waiting` in the entry at `held_upto` last time: the
        // payloads of that entry before it were held then and still are (a payload goes
        // only by delivery, below `held_upto`, or by the resets of `held_waiting`), so
        // the walk resumes there (from the batch's start it was quadratic in the batch
        // for payloads arriving in order after their entry).
        let mut resume = self.held_waiting.take();
        while let Some(l) = self.buffer.get(idx) {
            let from = match (resume.take(), l.entry.kind) {
                (Some((node, epoch, seq)), EntryKind::Data { epoch: e, .. })
                    if node == l.entry.node && epoch == e =>
                {
                    seq
                }
                _ => 0,
            };
            debug_assert!(self.missing(&l.entry) == self.missing_from(&l.entry, from));
            if let Some(id) = self.missing_from(&l.entry, from) {
                self.held_waiting = Some(id);
                break;
            }
            idx += 1;
            self.held_upto = l.entry.pos + 1;
        }
    }

    /// Learned, held and installed for member `m` as the last progress read says, or its
    /// join position if its slot does not (yet) say.
    fn member_progress(&self, m: &Member) -> (u64, u64) {
        if m.node == self.node {
            return (self.learned, self.held_upto);
        }
        // An `evs` joiner reads its list from the start once its join is in (its
        // configuration is a function of the list): until it tells how far it read, it
        // holds every slot from there, so that none is reclaimed under it (sim `evs` seed
        // 369: a late joiner's list went on past `list_slots` while it read, and the slots
        // it had yet to read were overwritten: it could never configure).
        let read_from = if self.evs.is_some() { 0 } else { m.join_pos };
        let (mut learned, mut held) = (read_from, m.join_pos);
        if let Some(Some(s)) = self.progress.get(m.slot as usize) {
            if s.node == m.node && s.join_pos == m.join_pos {
                (learned, held) = (learned.max(s.learned), held.max(s.held));
            }
        }
        if let Some(Some(h)) = self.heard.get(m.slot as usize) {
            if h.node == m.node && h.join_pos == m.join_pos {
                (learned, held) = (learned.max(h.learned), held.max(h.held));
            }
        }
        (learned, held)
    }

    /// Whether member `m` of the delivered view is known to hold the group's state (so
    /// that it can produce a joiner's snapshot): this member (delivering, so installed), a
    /// founding member (position 0), or one whose progress slot, as last read, says it
    /// installed in this membership. A slot read late only adds a producer (a member
    /// that also takes itself for the lowest holder), never removes the last one: the
    /// deliverer always counts itself.
    fn holds_state(&self, m: &Member) -> bool {
        m.node == self.node
            || m.join_pos == 0
            || matches!(
                self.progress.get(m.slot as usize),
                Some(Some(s)) if s.node == m.node && s.join_pos == m.join_pos && s.installed
            )
    }

    fn drive(&mut self, now: Time) {
        if self.status == Status::Removed || self.frozen {
            return;
        }
        if self.draining && !self.drained() && now > self.last_read {
            // Until the `Seal` and everything before it are here, read on: once per
            // instant, so that a list whose memory node runs on this node (answering in the
            // same call) and whose `Seal` cannot land yet (no slot reclaimable) is read
            // again at the next instant, not in a loop that never returns (sim `evs` seed
            // 4316); `poll_timeout` asks for that instant.
            self.read_now = true;
        }
        self.deliver(now);
        if self.left_behind(now) {
            return;
        }
        self.start_list_op(now);
        self.publish(now);
        self.tell(now);
        self.start_repair(now);
    }

    /// Whether this member is left behind, and then counts itself removed for lagging:
    /// its buffer is full (it learns nothing more), the list goes further, and it has
    /// delivered nothing for `lag_timeout`. Its front entry may wait for an entry beyond
    /// its buffer (a `safe` message for a crashed member's removal); the others then
    /// remove it for lagging, and it would learn that only once the list overwrote its
    /// slots, which an idle group never does (sim seed 869: the one member left in the
    /// view appended nothing more, and three members waited forever). Whether or not the
    /// others removed it yet, they will: it no longer learns. It joins again with a state
    /// transfer, as any removed member does.
    fn left_behind(&mut self, now: Time) -> bool {
        // Not in an `evs` list: there a slow member slows its configuration, nobody
        // removes it for lagging, and a crashed one leaves with the next configuration.
        let stuck = self.evs.is_none()
            && self.status == Status::Active
            && self.known_tail != u64::MAX
            && self.known_tail > self.learned
            && self.buffer_full();
        if !stuck {
            self.full_since = None;
            return false;
        }
        match self.full_since {
            Some((_, delivered)) if delivered != self.delivered => {
                self.full_since = Some((now, self.delivered));
                false
            }
            Some((since, _)) if now >= since + self.settings.lag_timeout => {
                self.counters.left_behind += 1;
                self.removed(RemoveReason::Lagging);
                true
            }
            Some(_) => false,
            None => {
                self.full_since = Some((now, self.delivered));
                false
            }
        }
    }

    /// Whether this member's progress has moved since it last told the others. Every
    /// group's senders wait for it (a queue slot is reused once every member holds what it
    /// held), and delivery too in an `evs` list or for a `safe` entry.
    fn tell_due(&self) -> bool {
        self.status == Status::Active && self.in_majority && !self.frozen && self.held_upto != self.told
    }

    /// Tells every other member of the view what this member holds (`Output::Held`), at
    /// most every `poll_interval / TELL_DIVISOR`. Delivery that waits for every member to
    /// hold an entry (`all_hold`) waited for their progress writes to reach the memory
    /// node and for a read to bring them back (3-4 hops after the last of them learned the
    /// entry, and the read came at the next `read_interval`); told, it waits one hop. Only
    /// facts of the teller's own state go this way (what it learned and holds, under its
    /// membership), which only grow, so a message lost, late or repeated changes nothing
    /// but when the others know; the progress slot stays the record (joiners, lag rules,
    /// members that missed the datagram).
    fn tell(&mut self, now: Time) {
        if !self.tell_due() || now < self.tell_at {
            return;
        }
        let Some(me) = self.learn_view.get(self.node).copied() else {
            // Removed from the view as learned: no one waits for it (and a due tell that
            // did nothing would fire its timer forever).
            self.told = self.held_upto;
            return;
        };
        let held = OrderedHeld {
            memnode: self.memnode,
            reserved: [0; 6],
            join_pos: me.join_pos,
            learned: self.learned,
            held: self.held_upto,
        };
        self.told = self.held_upto;
        let peers = self.learn_view.members.len().saturating_sub(1) as Time;
        self.tell_at = now + (self.settings.poll_interval / TELL_DIVISOR).max(1) * (peers / 2).max(1);
        for m in &self.learn_view.members {
            if m.node != self.node {
                self.out.push_back(Output::Held { to: m.node, held });
                self.counters.helds_sent += 1;
            }
        }
    }

    /// Progress another member told this one (`Output::Held`): taken if it is about this
    /// list and names the sender's membership in the view as learned here (a member not
    /// learned yet, or gone, tells nothing this member uses).
    pub fn handle_held(&mut self, now: Time, from: NodeId, bytes: &[u8]) {
        let Ok(h) = OrderedHeld::decode(bytes) else {
            self.counters.malformed += 1;
            return;
        };
        let member = self
            .learn_view
            .get(from)
            .filter(|m| m.join_pos == h.join_pos && h.memnode == self.memnode && from != self.node);
        let Some(m) = member.copied() else {
            self.counters.helds_refused += 1;
            return;
        };
        let Some(slot) = self.heard.get_mut(m.slot as usize) else {
            self.counters.helds_refused += 1;
            return;
        };
        let (learned, held) = match slot {
            Some(s) if s.node == from && s.join_pos == h.join_pos => {
                (s.learned.max(h.learned), s.held.max(h.held))
            }
            _ => (h.learned, h.held),
        };
        *slot = Some(Heard {
            node: from,
            join_pos: h.join_pos,
            learned,
            held,
        });
        self.counters.helds_taken += 1;
        self.drive(now);
    }

    /// Whether every member of the delivered view holds entry `pos` (its published `held`
    /// is past it), or leaves the view by an entry this member has already learned (a
    /// later position, so the same for everyone): the analogue of a transitional view,
    /// without which a member that crashed before holding it would block the group forever.
    fn all_hold(&self, pos: u64) -> bool {
        self.deliver_view.members.iter().all(|m| {
            self.member_progress(m).1 > pos
                || self
                    .learn_view
                    .get(m.node)
                    .is_none_or(|l| l.join_pos != m.join_pos)
        })
    }

    /// `evs`: delivery while gathering in a new list: the entries before this member's
    /// configuration starts only build the view (and the senders' next seqs); delivery
    /// stops where the configuration starts, for the owner to deliver the transitional one.
    fn deliver_gathering(&mut self) {
        while let Some(l) = self.buffer.front() {
            let Some(evs) = self.evs.as_mut() else { return };
            if evs.pending.is_some() {
                return;
            }
            let e = l.entry;
            match e.kind {
                EntryKind::EvsJoin { from } => {
                    if evs.install.is_none() {
                        evs.joins.push((e.node, from));
                    }
                    let own = e.node == self.node && e.pos == self.join_pos;
                    if own && evs.install.is_some() {
                        // A late joiner: its configuration starts at its own join.
                        evs.pending = Some(e.pos);
                    }
                    if self.deliver_view.apply(&e, self.settings.max_members) {
                        self.next_seq.insert(e.node, 0);
                    }
                }
                EntryKind::Install => {
                    if evs.install.is_none() {
                        evs.install = Some(e.pos);
                        if self.join_pos < e.pos {
                            evs.pending = Some(e.pos);
                        }
                    }
                }
                EntryKind::Data {
                    epoch,
                    first_seq,
                    count,
                    ..
                } => {
                    if self.deliver_view.get(e.node).is_some_and(|m| m.join_pos == epoch) {
                        self.next_seq.insert(e.node, first_seq + u64::from(count));
                    }
                    let (node, first) = (e.node, first_seq);
                    self.payloads
                        .retain(|id, _| id.0 != node || id.1 != epoch || id.2 >= first + u64::from(count));
                    self.held_waiting = None;
                }
                EntryKind::Remove(_) => {
                    if self.deliver_view.apply(&e, self.settings.max_members) {
                        self.next_seq.remove(&e.node);
                    }
                }
                // A `majority` group's entries: not in an `evs` list.
                EntryKind::Join | EntryKind::Restart => {}
                // Its founder left the list before this member's configuration began
                // there: nothing after it is delivered (the next side moves it on).
                EntryKind::Seal => return,
            }
            self.pop_delivered();
        }
    }

    fn deliver(&mut self, now: Time) {
        if !self.in_majority || (self.frozen && self.force_until.is_none()) {
            return;
        }
        if self.status == Status::Gathering {
            self.deliver_gathering();
        }
        if self.status != Status::Active {
            return;
        }
        let evs = self.evs.is_some();
        while self.producing.is_none() && self.status == Status::Active {
            let Some(l) = self.buffer.front() else { break };
            let e = l.entry;
            let forced = match self.force_until {
                Some(end) if e.pos >= end => break,
                Some(_) => true,
                None => false,
            };
            // `evs`: nothing is delivered from the list's `Seal` on.
            if e.kind == EntryKind::Seal {
                break;
            }
            // `evs`: a membership entry waits until every member holds it (data entries
            // under `agreed` delivery do not: the seal makes the movers hold what any of
            // them delivered; docs/ordered.md).
            if evs && !forced && !matches!(e.kind, EntryKind::Data { .. }) && !self.all_hold(e.pos) {
                if self.safe_waiting != Some(e.pos) {
                    self.safe_waiting = Some(e.pos);
                    self.counters.safe_waits += 1;
                }
                break;
            }
            match e.kind {
                EntryKind::Data {
                    epoch,
                    first_seq,
                    count,
                    safe,
                } => {
                    let Some(sender) = self
                        .deliver_view
                        .get(e.node)
                        .copied()
                        .filter(|m| m.join_pos == epoch)
                    else {
                        self.counters.foreign_skipped += 1;
                        self.pop_delivered();
                        continue;
                    };
                    let next = self.next_seq.get(&e.node).copied().unwrap_or(0);
                    let end = first_seq + u64::from(count);
                    if end <= next {
                        self.counters.duplicates_skipped += 1;
                        self.pop_delivered();
                        continue;
                    }
                    // Below `held_upto` every payload is held: no walk over the batch.
                    debug_assert!(e.pos >= self.held_upto || self.missing(&e).is_none());
                    if e.pos >= self.held_upto && self.missing(&e).is_some() {
                        break;
                    }
                    // `safe`, and every entry of an `evs` list unless its delivery is
                    // `agreed`: see `all_hold`.
                    let waits = safe || (evs && !self.settings.evs_agreed);
                    if waits && !forced && !self.all_hold(e.pos) {
                        if self.safe_waiting != Some(e.pos) {
                            self.safe_waiting = Some(e.pos);
                            self.counters.safe_waits += 1;
                        }
                        break;
                    }
                    if first_seq > next {
                        self.counters.fifo_gaps += 1;
                    }
                    for seq in first_seq.max(next)..end {
                        let bytes = self
                            .payloads
                            .remove(&(sender.node, epoch, seq))
                            .unwrap_or_default();
                        self.counters.delivered += 1;
                        self.out.push_back(Output::Deliver {
                            sender: sender.node,
                            epoch,
                            seq,
                            position: e.pos,
                            safe,
                            bytes,
                        });
                    }
                    self.next_seq.insert(e.node, end);
                    self.pop_delivered();
                }
                EntryKind::Join => {
                    let before = self.deliver_view.clone();
                    let changed = self.deliver_view.apply(&e, self.settings.max_members);
                    self.pop_delivered();
                    if !changed {
                        continue;
                    }
                    self.next_seq.insert(e.node, 0);
                    self.payloads.retain(|id, _| id.0 != e.node || id.1 >= e.pos);
                    self.view_event(e.pos, Some(e.node), None);
                    // The lowest member known to hold the state: a member still
                    // installing (its own join not answered) cannot answer this one, and
                    // two joiners naming each other waited for each other forever
                    // (tutti-sim ordered seeds 182 and 1122).
                    let producer = before
                        .members
                        .iter()
                        .filter(|m| m.node != e.node && self.holds_state(m))
                        .map(|m| m.node)
                        .min();
                    if producer == Some(self.node) {
                        self.producing =
                            Some((e.node, e.pos, self.deliver_view.clone(), self.next_seq.clone()));
                        self.out.push_back(Output::SnapshotRequest {
                            group: self.group,
                            position: e.pos,
                        });
                    }
                }
                EntryKind::Remove(reason) => {
                    let changed = self.deliver_view.apply(&e, self.settings.max_members);
                    self.pop_delivered();
                    if !changed {
                        continue;
                    }
                    self.next_seq.remove(&e.node);
                    // Payloads of a later membership of that node (its epoch is the
                    // position of a join after this removal) stay: they may already be
                    // counted below `held_upto` (tutti-sim ordered seed 423 delivered them
                    // empty).
                    self.payloads.retain(|id, _| id.0 != e.node || id.1 > e.pos);
                    self.view_event(e.pos, None, Some((e.node, reason)));
                    if e.node == self.node {
                        self.removed(reason);
                    }
                }
                EntryKind::EvsJoin { .. } => {
                    // A late joiner of this list epoch: no state transfer under `evs` (as
                    // in CPG, the application reconciles from the joined list).
                    let changed = self.deliver_view.apply(&e, self.settings.max_members);
                    self.pop_delivered();
                    if !changed {
                        continue;
                    }
                    self.next_seq.insert(e.node, 0);
                    self.payloads.retain(|id, _| id.0 != e.node || id.1 >= e.pos);
                    self.view_event(e.pos, Some(e.node), None);
                }
                EntryKind::Install => self.pop_delivered(),
                // Stopped at above.
                EntryKind::Seal => break,
                EntryKind::Restart => {
                    // The group restarted from an empty state without this member (it was
                    // presumed crashed): its state is not the group's from here on, so it
                    // delivers no view there and leaves.
                    self.deliver_view.apply(&e, self.settings.max_members);
                    self.pop_delivered();
                    if e.node != self.node {
                        self.removed(RemoveReason::Suspected);
                    }
                }
            }
        }
        let _ = now;
    }

    fn pop_delivered(&mut self) {
        if let Some(l) = self.buffer.pop_front() {
            debug_assert_eq!(l.entry.pos, self.delivered);
            self.delivered = l.entry.pos + 1;
            self.held_upto = self.held_upto.max(self.delivered);
            self.held_waiting = None;
        }
    }

    fn view_event(&mut self, position: u64, joined: Option<NodeId>, left: Option<(NodeId, RemoveReason)>) {
        if let Some(evs) = &self.evs {
            self.out.push_back(Output::Configuration(ConfigEvent {
                epoch: evs.epoch,
                position,
                members: self.deliver_view.nodes(),
                joined: joined.into_iter().collect(),
                left: left.into_iter().collect(),
                transitional: false,
            }));
            return;
        }
        self.out.push_back(Output::View(ViewEvent {
            id: self.deliver_view.id,
            position,
            members: self.deliver_view.nodes(),
            joined,
            left,
        }));
    }

    fn list_addr(&self, pos: u64) -> Address {
        Address::new(
            self.memnode,
            LIST,
            list_slot_offset(pos, self.settings.list_slots),
        )
    }

    /// Publishes this member's progress (learned, held, installed) if it has a slot and
    /// something changed, in a minitransaction of its own: one write, logged on the memory
    /// node. Not on any read or append: a read that writes is logged too, so its answer
    /// (the entries this member waits for) would wait for the backup's ack of its own
    /// record; an append that loses the tail compare writes nothing. At most one is in
    /// flight, so the slot on the memory node only moves forward; it is sent after this
    /// member's list operation, so a read is not queued behind it.
    fn publish(&mut self, now: Time) {
        if self.publish_op.is_some() || self.status != Status::Active || !self.in_majority {
            return;
        }
        // Paced while busy: at most one progress write per `progress_interval`. A fairness
        // request goes at once, and so does the write of a member with nothing in flight
        // and nothing left to deliver (a paced write that went out by its timer in the
        // middle of the next message's hops cost a one-in-flight sender a hop at p99:
        // `in_process_latency`).
        if now < self.publish_at && !self.request_due && !self.settled() {
            return;
        }
        // A fairness request rides along (or goes alone): a sender that keeps losing the
        // tail compare has appends in flight all the time, so it does not read, and a
        // request that waited for a read never went out.
        let mtx = self.progress_write(Minitransaction::new()).unwrap_or_default();
        let mtx = self.request_write(mtx);
        if mtx.writes.is_empty() {
            return;
        }
        match self.coord.submit(now, &mtx) {
            Ok(txid) => {
                self.publish_op = Some(txid);
                self.publish_at = now + self.settings.progress_interval;
                self.counters.publishes += 1;
            }
            Err(e) => {
                self.published = None;
                if e == TxnError::NotInMajority && self.in_majority {
                    self.in_majority = false;
                    self.enter_minority();
                }
            }
        }
    }

    /// Nothing of this member's own in flight (appends, list operation, queued messages)
    /// and everything learned delivered.
    fn settled(&self) -> bool {
        self.appends.is_empty()
            && self.list_op.is_none()
            && self.outgoing.is_empty()
            && self.delivered >= self.learned
    }

    /// Whether `publish` has a progress write to make once `publish_at` comes.
    fn publish_due(&self) -> bool {
        self.publish_op.is_none()
            && self.status == Status::Active
            && self.in_majority
            && self.progress_slot().is_some_and(|s| self.published != Some(s))
    }

    /// This member's progress as its slot should say, if it has a slot.
    fn progress_slot(&self) -> Option<ProgressSlot> {
        if self.status != Status::Active {
            return None;
        }
        let me = self.learn_view.get(self.node)?;
        Some(ProgressSlot {
            node: self.node,
            installed: true,
            join_pos: me.join_pos,
            learned: self.learned,
            held: self.held_upto,
        })
    }

    /// This member's progress write, if it has a slot and something changed.
    fn progress_write(&mut self, mtx: Minitransaction) -> Option<Minitransaction> {
        let slot = self.progress_slot()?;
        if self.published == Some(slot) {
            return None;
        }
        let addr = self.progress_addr(self.learn_view.get(self.node)?.slot);
        self.published = Some(slot);
        Some(mtx.write(addr, &slot.encode()))
    }

    /// The progress slot of view slot `slot` (the first one is the request slot).
    fn progress_addr(&self, slot: u32) -> Address {
        Address::new(self.memnode, PROGRESS, (slot + 1) * PROGRESS_BYTES as u32)
    }

    /// What a founder's join (position 0, view slot 0) writes in its progress slot: it
    /// holds the state, having learned and held its own join.
    fn founder_slot(node: NodeId) -> ProgressSlot {
        ProgressSlot {
            node,
            installed: true,
            join_pos: 0,
            learned: 1,
            held: 1,
        }
    }

    /// The tail and the progress slots: those up to the highest slot of the view as
    /// learned (slots are taken lowest first), or all of them before this member knows
    /// the view. Every answer carries them, so they are kept short.
    fn base_reads(&self) -> Minitransaction {
        let span = match self.learn_view.members.iter().map(|m| m.slot + 1).max() {
            Some(n) if self.status == Status::Active => n.min(self.settings.max_members),
            _ => self.settings.max_members,
        };
        Minitransaction::new()
            .read(Address::new(self.memnode, LIST, 0), 8)
            .read(
                Address::new(self.memnode, PROGRESS, 0),
                (span + 1) * PROGRESS_BYTES as u32,
            )
    }

    /// The tail, the progress slots and up to `max` entries from `from` on (as many as the
    /// buffer takes, up to `read_batch`). An append carries the same reads: if its tail
    /// compare fails, the reads (returned with the conflict) are the entries it missed.
    fn reads_from(&self, from: u64, max: u64) -> Minitransaction {
        let buffered = from.saturating_sub(self.delivered);
        let slots = u64::from(self.settings.list_slots);
        // An active member with a full buffer still reads one entry: not to learn it
        // (`on_read` takes none past `list_slots` undelivered), but to see whether it was
        // overwritten (this member was removed for lagging).
        let least = u64::from(self.status == Status::Active);
        let n = u64::from(self.settings.read_batch)
            .min(max)
            .min(slots.saturating_sub(buffered).max(least));
        let mut mtx = self.base_reads();
        // Contiguous slot ranges (two when the range wraps).
        let first_len = n.min(slots - from % slots);
        // With a full buffer the read still refreshes the tail and every member's progress.
        if first_len > 0 {
            mtx = mtx.read(self.list_addr(from), (first_len as u32) * ENTRY_BYTES as u32);
        }
        if n > first_len {
            mtx = mtx.read(
                self.list_addr(from + first_len),
                ((n - first_len) as u32) * ENTRY_BYTES as u32,
            );
        }
        mtx
    }

    fn start_list_op(&mut self, now: Time) {
        if now < self.next_list_op_at || !self.in_majority {
            return;
        }
        // A read in flight does not hold back appends: a sender that polled just before a
        // submit would otherwise append a round trip late, after its payload reached the
        // others, whose hinted reads then found nothing and waited for their next poll
        // (every other message of one sender took 2 poll intervals: `in_process_latency`).
        // Both answers are taken as they come: a read's only if nothing was learned since
        // it started, an append's entries whichever answer brings them first.
        let reading = matches!(self.list_op, Some((_, ListOp::Read { .. })));
        if self.list_op.is_some() && !reading {
            return;
        }
        // Joins and installs need the list operation slot; only appends go beside a read.
        if !reading && self.status == Status::Joining && self.request_due && self.known_tail != u64::MAX {
            // A joiner has no progress slot: it posts its request by a read of the tail.
            let mtx = self.request_write(self.base_reads());
            self.last_read = now;
            let from = self.learned;
            self.submit_list_op(now, &mtx, ListOp::Read { from });
            return;
        }
        if !reading
            && self.status == Status::Joining
            && !self.pending_uncertain
            && self.known_tail != u64::MAX
            && !self.evs.as_ref().is_some_and(|e| e.hold_join)
        {
            if self.learned < self.known_tail {
                // Conflict told us a newer tail: append there.
                self.learned = self.known_tail;
            }
            let at = self.learned;
            let e = self.own_join(at);
            let mut mtx = self
                .base_reads()
                .compare(self.list_addr_tail(), &at.to_le_bytes())
                .write(self.list_addr(at), &e.encode())
                .write(self.list_addr_tail(), &(at + 1).to_le_bytes());
            if at == 0 && self.evs.is_none() {
                // A founder holds the state from its join on: its slot says so in the same
                // write. Published later, it was lost with a memory node primary that
                // crashed before replicating it; the founder then crashed too, and the
                // joiners, seeing no holder, never restarted (tutti-sim ordered seed 822).
                mtx = mtx.write(self.progress_addr(0), &Self::founder_slot(self.node).encode());
            }
            self.counters.appends += 1;
            self.submit_list_op(now, &mtx, ListOp::Join { at });
            return;
        }
        if !reading && self.install_due(now) {
            let at = self.learned;
            self.append_own_entry(now, EntryKind::Install, ListOp::Install { at });
            return;
        }
        if !reading && self.seal_due() {
            let at = self.learned;
            self.append_own_entry(now, EntryKind::Seal, ListOp::Seal { at });
            return;
        }
        if !reading && self.restart_due() {
            let at = self.learned;
            let holders = self.restart.clone().unwrap_or_default();
            let entries: Vec<Entry> = holders
                .iter()
                .map(|&n| (n, EntryKind::Remove(RemoveReason::Suspected)))
                .chain(std::iter::once((self.node, EntryKind::Restart)))
                .enumerate()
                .map(|(i, (node, kind))| Entry {
                    pos: at + i as u64,
                    node,
                    kind,
                })
                .collect();
            let mut mtx = self
                .reads_from(at, u64::from(self.settings.read_batch))
                .compare(self.list_addr_tail(), &at.to_le_bytes());
            for e in &entries {
                mtx = mtx.write(self.list_addr(e.pos), &e.encode());
            }
            let end = at + entries.len() as u64;
            // The restarter holds the (empty) state from its `Restart` on, in view slot 0:
            // its slot says so in the same write, as a founder's does (seed 822).
            let slot = ProgressSlot {
                node: self.node,
                installed: true,
                join_pos: end - 1,
                learned: end,
                held: end,
            };
            mtx = mtx
                .write(self.list_addr_tail(), &end.to_le_bytes())
                .write(self.progress_addr(0), &slot.encode());
            self.counters.appends += 1;
            self.submit_list_op(now, &mtx, ListOp::Restart { at, entries });
            return;
        }
        if self.appends.is_empty() {
            self.chain_broken = false;
        }
        // Fairness: another member or joiner kept losing; let its append land first.
        let hold = self.status == Status::Active && self.holding(now);
        if hold && !self.outgoing.is_empty() {
            self.counters.fairness_holds += 1;
        }
        // The first append goes at the learned tail; the next ones are chained after it.
        while !hold
            && self.may_append()
            && self.appends.len() < self.window.min(self.settings.max_appends_in_flight) as usize
        {
            let Some((mtx, at, entries)) = self.build_append(now) else {
                break;
            };
            self.counters.appends += 1;
            if !self.appends.is_empty() {
                self.counters.appends_chained += 1;
            }
            let submitted = self.coord.submit(now, &mtx);
            // Submitted or refused, its queue writes are encoded or dropped: their
            // buffers serve the next messages.
            for (_, b) in mtx.writes {
                self.recycle(b);
            }
            match submitted {
                Ok(txid) => self.appends.push_back(Append {
                    txid,
                    at,
                    from: self.learned,
                    entries,
                }),
                Err(e) => {
                    if e == TxnError::NotInMajority && self.in_majority {
                        self.in_majority = false;
                        self.enter_minority();
                    }
                    self.txn_failed(now, &e);
                    break;
                }
            }
        }
        if !self.appends.is_empty() || reading {
            // Reads wait for the chain: its answers carry the same reads.
            return;
        }
        let due = self.read_now
            || self.payload_hint
            || (self.known_tail > self.learned && !self.buffer_full())
            || self.known_tail == u64::MAX
            || now >= self.last_read + self.read_interval();
        if !due {
            return;
        }
        let from = self.learned;
        if self.known_tail == u64::MAX {
            // A joiner's first read: the tail only.
            let mtx = self.base_reads();
            self.read_now = false;
            self.last_read = now;
            self.submit_list_op(now, &mtx, ListOp::Read { from });
            return;
        }
        // No progress write here: a read that writes is logged, and its answer would wait
        // for the backup (`publish` sends progress on its own).
        let dormant = self.dormant();
        if dormant {
            self.counters.dormant_reads += 1;
        }
        let mtx = self.reads_from(from, u64::MAX).watching(dormant);
        let mtx = self.request_write(mtx);
        self.read_now = false;
        self.read_hinted = std::mem::take(&mut self.payload_hint);
        self.last_read = now;
        self.submit_list_op(now, &mtx, ListOp::Read { from });
    }

    /// Whether `start_list_op` may build an append now (hold and window aside): active,
    /// no outcome in doubt, the chain whole, and at the learned tail or chained after an
    /// append in flight. `build_append` acts on the lag timer, so `poll_timeout` names
    /// that timer only when this holds.
    fn may_append(&self) -> bool {
        self.status == Status::Active
            && !self.draining
            && self.sealed_at.is_none()
            && !self.pending_uncertain
            && !self.chain_broken
            && (self.learned >= self.known_tail || !self.appends.is_empty())
    }

    /// This member's join entry at `at`: `EvsJoin` in an `evs` list.
    fn own_join(&self, at: u64) -> Entry {
        let kind = match &self.evs {
            Some(evs) => EntryKind::EvsJoin { from: evs.from },
            None => EntryKind::Join,
        };
        Entry {
            pos: at,
            node: self.node,
            kind,
        }
    }

    /// `evs`: the founder installs the first configuration of its list once it has learned
    /// up to the tail and every member of its side joined, or the gather timed out.
    fn install_due(&self, now: Time) -> bool {
        let Some(evs) = &self.evs else { return false };
        self.status == Status::Gathering
            && evs.founder
            && !evs.install_learned
            && !self.pending_uncertain
            && self.known_tail != u64::MAX
            && self.learned >= self.known_tail
            && self.learned > self.join_pos
            && (now >= evs.gather_deadline || evs.side.iter().all(|&n| self.learn_view.get(n).is_some()))
    }

    // ---- the restart rule (docs/ordered.md, "Restart") ----

    /// A joiner's view of who holds the group's state: the nodes whose progress slot (as
    /// last read) says `installed`, less those whose membership there ended by an entry
    /// this joiner learned (a removal, a new join, a restart) and itself (a slot of its
    /// own former membership).
    fn state_holders(&self) -> Vec<NodeId> {
        let mut holders: Vec<NodeId> = self
            .progress
            .iter()
            .flatten()
            .filter(|s| s.installed && s.node != 0 && s.node != self.node)
            .filter(|s| {
                !self.buffer.iter().any(|l| {
                    l.entry.node == s.node
                        && l.entry.pos > s.join_pos
                        && !matches!(l.entry.kind, EntryKind::Data { .. })
                })
            })
            .map(|s| s.node)
            .collect();
        holders.sort_unstable();
        holders.dedup();
        holders
    }

    /// The state holders to remove if the group must restart: some, and every one of them
    /// suspected (the host's suspicion includes being out of the cluster view). `None`
    /// while any may still produce a transfer, and in `evs` groups (they have no state
    /// transfer) .
    fn restart_holders(&self) -> Option<Vec<NodeId>> {
        if self.evs.is_some() || self.status != Status::Installing {
            return None;
        }
        let holders = self.state_holders();
        (!holders.is_empty() && holders.iter().all(|n| self.suspected.contains(n))).then_some(holders)
    }

    /// Whether to append the restart anchor now: decided, and this joiner has learned up
    /// to the tail (the anchor goes there, after everything it read).
    fn restart_due(&self) -> bool {
        self.restart.is_some()
            && self.status == Status::Installing
            && !self.pending_uncertain
            && self.known_tail != u64::MAX
            && self.learned >= self.known_tail
    }

    /// This joiner's `Restart` is at `position`: it installs the empty state there, alone
    /// in the view; later joins get their transfer from it.
    fn install_restart(&mut self, now: Time, position: u64) {
        let view = View {
            id: 1,
            members: vec![Member {
                node: self.node,
                join_pos: position,
                slot: 0,
            }],
        };
        self.join_pos = position;
        self.delivered = position + 1;
        self.held_upto = position + 1;
        self.held_waiting = None;
        self.buffer.clear();
        self.payloads.clear();
        self.deliver_view = view.clone();
        self.learn_view = view;
        self.next_seq = BTreeMap::from([(self.node, 0)]);
        self.next_submit_seq = 0;
        self.queue_pos = vec![None; self.settings.queue_slots as usize];
        self.published = None;
        self.restart = None;
        self.status = Status::Active;
        self.read_now = true;
        self.counters.restarts += 1;
        self.out.push_back(Output::Installed {
            position,
            snapshot: Vec::new(),
        });
        self.out.push_back(Output::View(ViewEvent {
            id: self.deliver_view.id,
            position,
            members: self.deliver_view.nodes(),
            joined: Some(self.node),
            left: None,
        }));
        let _ = now;
    }

    fn list_addr_tail(&self) -> Address {
        Address::new(self.memnode, LIST, 0)
    }

    fn submit_list_op(&mut self, now: Time, mtx: &Minitransaction, op: ListOp) {
        match self.coord.submit(now, mtx) {
            Ok(txid) => self.list_op = Some((txid, op)),
            Err(e) => {
                if e == TxnError::NotInMajority && self.in_majority {
                    self.in_majority = false;
                    self.enter_minority();
                }
                self.txn_failed(now, &e);
            }
        }
    }

    /// The next append: at the learned tail (= the tail as this member knows it) when none
    /// is in flight, control entries (removals) then the first batch not yet in the list;
    /// otherwise chained after the last append in flight, the next batch alone. Returns the
    /// minitransaction, its position and its entries; `None` if there is nothing to append,
    /// the list has no room, or a control entry must wait until the chain is done.
    ///
    /// A chained append compares the tail *and the last entry* the append before it writes:
    /// it lands only right after that one, so a failure of batch k fails every batch after
    /// it and they are retried in order (sender FIFO). An anchor (the first append) carries
    /// only the first batch not yet learned, at the learned tail: a batch learned in the
    /// list is confirmed there and never appended again, and an answer lost in the network
    /// (`Unavailable`) leaves an append that lands, if ever, right where the next anchor
    /// would put the same batch (then the anchor fails) or after batches of this sender
    /// that are in the list (the chain compare). No batch is in the list twice.
    fn build_append(&mut self, now: Time) -> Option<(Minitransaction, u64, Vec<Entry>)> {
        let Some(me) = self.learn_view.get(self.node).copied() else {
            // Out of the view as learned: nothing to append, nothing to wait for.
            self.queue_blocked_since = None;
            return None;
        };
        // Chained only after a data entry of this sender (one that no other member can
        // have written in its place).
        let chained = match self.appends.back() {
            None => None,
            Some(a) => match a.entries.last() {
                Some(
                    &prev @ Entry {
                        kind: EntryKind::Data { .. },
                        node,
                        ..
                    },
                ) if node == self.node => Some(prev),
                _ => return None,
            },
        };
        let at = chained.map_or(self.learned, |prev| prev.pos + 1);
        let list_slots = u64::from(self.settings.list_slots);
        let mut entries = Vec::new();
        let push = |entries: &mut Vec<Entry>, node, kind| {
            entries.push(Entry {
                pos: at + entries.len() as u64,
                node,
                kind,
            });
        };
        // Removals: leaving, suspected, lagging.
        let mut floor = u64::MAX;
        let mut min_held = u64::MAX;
        let mut lagging = Vec::new();
        // A member that has kept this sender's next queue slot from being reused for
        // `lag_timeout` (it does not hold the payload last written there) is lagging too:
        // with every queue blocked the tail stops, so the distance alone would never grow.
        // The slot waits for `held > blocked_at`; a slot not used yet in this membership
        // waits for `held >= join_pos` (a timer that found no one to blame would fire
        // forever).
        let blocked_at = match (self.queue_blocked_since, self.outgoing.front()) {
            (Some(since), Some((seq, _)))
                if chained.is_none() && now >= since + self.settings.lag_timeout =>
            {
                self.queue_pos[(seq % u64::from(self.settings.queue_slots)) as usize]
                    .or(me.join_pos.checked_sub(1))
            }
            _ => None,
        };
        // Under `evs` no member is removed for lagging: the view removes a crashed or cut-off
        // member (a new list epoch), and a member removed from its list while the view
        // still holds it would stay out until the next view (no side change brings it back).
        // A slow member slows its configuration instead, as a slow node slows Corosync's ring.
        let lag_rules = self.evs.is_none();
        for m in &self.learn_view.members {
            let (learned, held) = self.member_progress(m);
            let stuck_since = self.progress_since.get(m.slot as usize).copied().unwrap_or(0);
            if lag_rules
                && m.node != self.node
                && blocked_at.is_some_and(|p| held <= p)
                && now >= stuck_since + self.settings.lag_timeout
            {
                // Its payloads stay (it counts in `min_held`) until it is out of the view.
                min_held = min_held.min(held);
                lagging.push(m.node);
                continue;
            }
            // A lagging member is removed by an entry before anything this append writes
            // reuses a list slot, so its unread slots do not hold the floor; its queue
            // payloads stay until it is out of the view.
            min_held = min_held.min(held);
            if lag_rules
                && m.node != self.node
                && at.saturating_sub(learned) > u64::from(self.settings.lag_budget)
            {
                lagging.push(m.node);
                continue;
            }
            floor = floor.min(learned);
        }
        if blocked_at.is_some() && lagging.is_empty() {
            // Nobody has been stuck that long: the members holding the slot are moving.
            // Wait another `lag_timeout`.
            self.queue_blocked_since = Some(now);
        }
        let removals: Vec<(NodeId, RemoveReason)> = if self.leaving {
            vec![(self.node, RemoveReason::Left)]
        } else {
            self.learn_view
                .members
                .iter()
                .filter(|m| m.node != self.node)
                .filter_map(|m| {
                    // A doubted member that lags: removed as suspected (a crash).
                    let lags = lagging.contains(&m.node);
                    if self.suspected.contains(&m.node) || (lags && self.doubted.contains(&m.node)) {
                        Some((m.node, RemoveReason::Suspected))
                    } else if lags {
                        Some((m.node, RemoveReason::Lagging))
                    } else {
                        None
                    }
                })
                .collect()
        };
        if chained.is_some() && !removals.is_empty() {
            // A view change is appended by an anchor, once the chain is done: an appender
            // knows the view at the point it appends.
            return None;
        }
        for (node, reason) in removals {
            match reason {
                RemoveReason::Suspected => self.counters.removals_suspected += 1,
                RemoveReason::Lagging => self.counters.removals_lagging += 1,
                RemoveReason::Partitioned => {}
                RemoveReason::Left => {}
            }
            push(&mut entries, node, EntryKind::Remove(reason));
        }
        // Reclamation: never overwrite a slot a member of the view has not learned.
        // Progress slots are written by members: saturate rather than trust them.
        let room = floor.saturating_add(list_slots).saturating_sub(at);
        if (entries.len() as u64) > room {
            self.counters.reclaim_waits += 1;
            return None;
        }
        // The entries it reads matter only if its compare fails: this chain's own, then
        // what the other members appended meanwhile (a few each per round trip; a longer
        // run is learned by the next conflict or read).
        let margin = APPEND_READ_MARGIN * self.learn_view.members.len() as u64;
        let mut mtx = Minitransaction {
            compares: vec![(self.list_addr_tail(), at.to_le_bytes().to_vec())],
            ..self.reads_from(self.learned, at - self.learned + margin)
        };
        if let Some(prev) = chained {
            mtx = mtx.compare(self.list_addr(prev.pos), &prev.encode());
        }
        if !self.leaving && (entries.len() as u64) < room {
            let batch = match chained.map(|prev| prev.kind) {
                // The anchor: the first batch not yet learned in the list.
                None => match self.batches.front() {
                    Some(&b) => Some(b),
                    None => self.form_batch(now, me, min_held, None),
                },
                // Chained: the batch after the one the append before carries.
                Some(EntryKind::Data { first_seq, count, .. }) => {
                    let next = first_seq + u64::from(count);
                    match self.batches.iter().find(|b| b.first_seq == next) {
                        Some(&b) => Some(b),
                        None => self.form_batch(now, me, min_held, Some(next)),
                    }
                }
                Some(_) => None,
            };
            if let Some(b) = batch {
                push(
                    &mut entries,
                    self.node,
                    EntryKind::Data {
                        epoch: me.join_pos,
                        first_seq: b.first_seq,
                        count: b.count,
                        safe: b.safe,
                    },
                );
                let qsb = self.settings.queue_slot_bytes();
                for seq in b.first_seq..b.first_seq + u64::from(b.count) {
                    let bytes = self.payloads.get(&(self.node, me.join_pos, seq))?;
                    let mut slot = self.spare.pop().unwrap_or_default();
                    // One allocation at most (a reused buffer holds a payload, no header).
                    slot.reserve(QUEUE_HEADER + bytes.len());
                    slot.extend_from_slice(&self.node.to_le_bytes());
                    slot.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                    slot.extend_from_slice(&me.join_pos.to_le_bytes());
                    slot.extend_from_slice(&seq.to_le_bytes());
                    slot.extend_from_slice(bytes);
                    let q = (seq % u64::from(self.settings.queue_slots)) as u32;
                    let offset = (me.slot * self.settings.queue_slots + q) * qsb;
                    mtx.writes
                        .push((Address::new(self.memnode, QUEUES, offset), slot));
                }
            }
        }
        if entries.is_empty() {
            return None;
        }
        mtx = mtx.write(self.list_addr_tail(), &(at + entries.len() as u64).to_le_bytes());
        for e in &entries {
            mtx = mtx.write(self.list_addr(e.pos), &e.encode());
        }
        Some((mtx, at, entries))
    }

    /// Forms the next batch from the messages after the formed ones: up to `max_batch` of
    /// the same `safe` flag whose queue slots may be reused (every member of the view holds
    /// the payload last written there, and no formed batch still needs it). `chained`: the
    /// first seq a chained append needs (`None` for an anchor).
    fn form_batch(&mut self, now: Time, me: Member, min_held: u64, chained: Option<u64>) -> Option<Batch> {
        let anchor = chained.is_none();
        let formed: usize = self.batches.iter().map(|b| usize::from(b.count)).sum();
        let oldest = self.outgoing.front()?.0;
        let (first_seq, safe) = *self.outgoing.get(formed)?;
        if chained.is_some_and(|next| next != first_seq) {
            return None;
        }
        let queue_slots = u64::from(self.settings.queue_slots);
        let mut bytes = 0usize;
        let payloads = &self.payloads;
        let count = self
            .outgoing
            .iter()
            .skip(formed)
            .take(self.settings.max_batch as usize)
            .take_while(|(_, s)| *s == safe)
            .take_while(|(seq, _)| {
                // Within the append's byte budget (the first message always fits: a
                // payload is at most `max_payload`, far below it).
                bytes += QUEUE_HEADER + payloads.get(&(self.node, me.join_pos, *seq)).map_or(0, Vec::len);
                bytes <= APPEND_PAYLOAD_BYTES
            })
            .take_while(|(seq, _)| {
                // The slot's last payload belongs to a message not yet in the list.
                if *seq >= oldest + queue_slots {
                    return false;
                }
                let q = (seq % queue_slots) as usize;
                match self.queue_pos[q] {
                    // Never used in this membership: an older occupant's payloads are all
                    // below this member's join.
                    None => min_held >= me.join_pos,
                    Some(p) => min_held > p,
                }
            })
            .count();
        if count == 0 {
            if anchor {
                self.counters.queue_waits += 1;
                self.queue_blocked_since.get_or_insert(now);
            }
            return None;
        }
        if anchor {
            self.queue_blocked_since = None;
        }
        let b = Batch {
            first_seq,
            count: count as u16,
            safe,
        };
        self.batches.push_back(b);
        // The batch's payloads go out now, with its (first) append: a receiver holds at
        // most the formed batches ahead of the order (`max_appends_in_flight` of them, plus
        // those waiting for a retry), so dissemination never outruns `max_held`. A formed
        // batch never changes, so each payload is disseminated once.
        for seq in first_seq..first_seq + count as u64 {
            if let Some(bytes) = self.payloads.get(&(self.node, me.join_pos, seq)) {
                let mut copy = self.spare.pop().unwrap_or_default();
                copy.extend_from_slice(bytes);
                self.out.push_back(Output::Disseminate {
                    sender: self.node,
                    epoch: me.join_pos,
                    seq,
                    bytes: copy,
                });
            }
        }
        Some(b)
    }

    fn start_repair(&mut self, now: Time) {
        if self.repair_op.is_some() || self.status != Status::Active || !self.in_majority {
            return;
        }
        let qsb = self.settings.queue_slot_bytes();
        let mut ids = Vec::new();
        let mut mtx = Minitransaction::new();
        for l in &self.buffer {
            if l.at + self.settings.repair_delay > now {
                break;
            }
            let (
                Some(slot),
                EntryKind::Data {
                    epoch,
                    first_seq,
                    count,
                    ..
                },
            ) = (l.sender_slot, l.entry.kind)
            else {
                continue;
            };
            for seq in first_seq..first_seq + u64::from(count) {
                let id = (l.entry.node, epoch, seq);
                if self.payloads.contains_key(&id) || self.holds(id.0, id.1, id.2) {
                    continue;
                }
                let q = (seq % u64::from(self.settings.queue_slots)) as u32;
                mtx = mtx.read(
                    Address::new(self.memnode, QUEUES, (slot * self.settings.queue_slots + q) * qsb),
                    qsb,
                );
                ids.push(id);
                if ids.len() >= 16 {
                    break;
                }
            }
            if ids.len() >= 16 {
                break;
            }
        }
        if ids.is_empty() {
            return;
        }
        self.counters.repairs += ids.len() as u64;
        if let Ok(txid) = self.coord.submit(now, &mtx) {
            self.repair_op = Some((txid, ids));
        }
    }

    fn on_repair(&mut self, ids: &[PayloadId], reads: &[Vec<u8>]) {
        for (id, b) in ids.iter().zip(reads) {
            let slot = super::queue_slot(b);
            if slot.is_none() && b.len() < QUEUE_HEADER {
                self.counters.malformed += 1;
                continue;
            }
            let payload = slot.and_then(|(node, epoch, seq, p)| ((node, epoch, seq) == *id).then_some(p));
            match payload {
                Some(p) => {
                    self.payloads.insert(*id, p.to_vec());
                }
                _ => {
                    // The sender reused the slot, which it does only once every member of
                    // its view holds the payload: this member is out of that view (removed,
                    // and too far behind to have learned it yet).
                    self.counters.repair_mismatches += 1;
                    self.removed(RemoveReason::Lagging);
                    return;
                }
            }
        }
        self.advance_held();
    }
}

fn encode_transfer(position: u64, view: &View, next_seq: &BTreeMap<NodeId, u64>, snapshot: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(24 + view.members.len() * 24 + snapshot.len());
    b.extend_from_slice(&position.to_le_bytes());
    b.extend_from_slice(&view.id.to_le_bytes());
    b.extend_from_slice(&(view.members.len() as u32).to_le_bytes());
    for m in &view.members {
        b.extend_from_slice(&m.node.to_le_bytes());
        b.extend_from_slice(&m.slot.to_le_bytes());
        b.extend_from_slice(&m.join_pos.to_le_bytes());
        b.extend_from_slice(&next_seq.get(&m.node).copied().unwrap_or(0).to_le_bytes());
    }
    b.extend_from_slice(snapshot);
    b
}

type Transfer = (u64, View, BTreeMap<NodeId, u64>, Vec<u8>);

fn decode_transfer(b: &[u8]) -> Option<Transfer> {
    let position = u64_at(b, 0)?;
    let id = u64_at(b, 8)?;
    let n = u32::from_le_bytes(b.get(16..20)?.try_into().ok()?) as usize;
    if n > 4096 {
        return None;
    }
    let mut view = View {
        id,
        members: Vec::new(),
    };
    let mut next_seq = BTreeMap::new();
    let mut at = 20;
    for _ in 0..n {
        let node = u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?);
        let slot = u32::from_le_bytes(b.get(at + 4..at + 8)?.try_into().ok()?);
        let join_pos = u64_at(b, at + 8)?;
        let next = u64_at(b, at + 16)?;
        view.members.push(Member { node, join_pos, slot });
        next_seq.insert(node, next);
        at += 24;
    }
    Some((position, view, next_seq, b.get(at..)?.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::minitx::MemoryNode;
    use crate::MILLIS;

    const MICROS: Time = 1_000;
    const PRIMARY: NodeId = 100;
    const BACKUP: NodeId = 200;

    /// `safe` messages (and so every message of an `evs` list, which waits the same way:
    /// `all_hold`) sent one every millisecond by member 1 of 3, 25 us per hop, simulated
    /// time: each is delivered at every member within a few round trips of its submit.
    /// Before `WAITING_POLL_DIVISOR` the members waiting for the others' progress read it
    /// only at the next poll (2 ms) or with the sender's next append, so every message was
    /// delivered after the next one was sent (p50 1,050 us here; CPG through tuttid paced
    /// at 1,000/s: p50 1.2 ms against 0.3 ms for the same run in `majority`).
    #[test]
    fn a_paced_safe_message_is_delivered_without_waiting_for_the_next_poll() {
        let mut t = Trio::new(OrderedSettings::default(), true, false);
        let latencies = paced_safe_messages(&mut t, 100);
        let (p50, max) = (latencies[latencies.len() / 2], latencies[latencies.len() - 1]);
        println!(
            "paced safe messages: p50 {} us, max {} us",
            p50 / MICROS,
            max / MICROS
        );
        // Simulated time: deterministic. An append takes 4 hops (primary, backup, ack,
        // answer); the others' hinted reads are answered with it (they wait for the same
        // ack), and each member tells the others what it holds (`Output::Held`): 5 hops
        // (p50 and max 125 us). Told only through the memory node (a progress write, and
        // a read that brings it back) it took 10; 16 with the first read of the others'
        // progress 125 us after learning (divisor 16), 44 before any divisor (1,100 us,
        // max 2,075 us). 6 leave room for a step more.
        assert!(
            max <= 6 * t.delay,
            "submit to the last member's delivery: p50 {} us, max {} us ({} us per hop)",
            p50 / MICROS,
            max / MICROS,
            t.delay / MICROS
        );
    }

    /// Member 1 submits `messages` safe messages, one every millisecond once the group
    /// settled (10 ms); returns each one's time from submit to the last member's delivery,
    /// sorted.
    fn paced_safe_messages(t: &mut Trio, messages: u64) -> Vec<Time> {
        let start = 10 * MILLIS;
        for i in 0..messages {
            t.run_until(start + i * MILLIS);
            let now = t.now;
            t.members
                .get_mut(&1)
                .unwrap()
                .submit(now, &i.to_le_bytes(), true)
                .unwrap();
        }
        t.run_until(start + (messages + 20) * MILLIS);
        let mut latencies: Vec<Time> = (0..messages)
            .map(|i| {
                let at = |id: NodeId| {
                    *t.delivered
                        .get(&(id, i.to_le_bytes().to_vec()))
                        .unwrap_or_else(|| panic!("{i} not delivered at {id}"))
                };
                [1, 2, 3].into_iter().map(at).max().unwrap() - (start + i * MILLIS)
            })
            .collect();
        latencies.sort_unstable();
        latencies
    }

    /// Paced safe messages (one every millisecond, as CPG's paced anchor) with hops of
    /// 25-125 us drawn per datagram (links kept first in, first out): a loaded host's
    /// scheduling. The members learn the others' progress from their tells; a read of the
    /// memory node that only waits for it is a fallback for a lost tell, due
    /// `poll_interval / WAITING_POLL_DIVISOR` after the member's last answer from the
    /// memory node (a read's or an append's: both read the progress slots). Before, that
    /// wait was timed from the last read's *start* at `poll_interval / 64`: the sender,
    /// which learns from its appends, read at once after each one, and the others read
    /// again 31-93 us after their hinted read, before the tells could come. 5.8 read
    /// minitransactions per message for 3 members (tuttid's paced cpg path: 7.6, a third
    /// of its datagrams); now the two hinted reads and a few rereads.
    #[test]
    fn paced_safe_messages_read_the_memory_node_only_when_a_tell_is_late() {
        use rand::SeedableRng;
        const MESSAGES: u64 = 1000;
        for seed in 0..3u64 {
            let mut t = Trio::new(OrderedSettings::default(), true, false);
            t.jitter = Some((
                rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed),
                100 * MICROS,
            ));
            let last = paced_safe_messages(&mut t, MESSAGES);
            let (p50, p99, max) = (
                last[last.len() / 2],
                last[last.len() * 99 / 100],
                last[last.len() - 1],
            );
            // `reads` counts every answer that read the list: reads and appends.
            let c = |id: NodeId| t.members[&id].counters().clone();
            let reads: u64 = [1, 2, 3]
                .map(|id| c(id).reads - c(id).appends_committed)
                .iter()
                .sum();
            let per_message = reads as f64 / MESSAGES as f64;
            println!(
                "seed {seed}: submit to the last delivery p50 {} us, p99 {} us, max {} us; \
                 read minitransactions per message {per_message:.2}",
                p50 / MICROS,
                p99 / MICROS,
                max / MICROS
            );
            // 2.1-2.2: one hinted read by each member that did not send, and a few
            // rereads (a payload that outran its entry).
            assert!(
                per_message <= 2.5,
                "seed {seed}: {per_message:.2} reads per message"
            );
            // Simulated time: p50 about 430 us (5-6 hops of 75 us on average), max about
            // 650 us; a read that waited too long for a tell would show here.
            assert!(
                p50 <= 500 * MICROS && max <= 1000 * MICROS,
                "seed {seed}: p50 {p50} max {max}"
            );
        }
    }

    /// Every member floods (its outgoing queue kept full); member 1 sits on the memory-node
    /// primary's host (a microsecond away, the others 25 us). The remote senders must not
    /// starve: each gets at least a twentieth of member 1's messages into the order (here
    /// about a fourteenth; before, member 3 got none and member 2 a thirty-fourth). The
    /// request slot never fired for a saturated sender: its request rode a read, and a
    /// sender with appends in flight does not read (`tutti-bench ordered` 3x3: the sender
    /// on the primary's daemon appended 3.2 M messages, the others 49 k and 62 k, with
    /// `fairness requests 0` on every daemon). Not fair yet either: see docs/ordered.md,
    /// "Starved senders".
    #[test]
    fn senders_far_from_the_memory_node_get_a_fair_share() {
        let mut t = Trio::new(OrderedSettings::default(), true, false);
        t.near = Some(1);
        let (start, end) = (10 * MILLIS, 110 * MILLIS);
        let mut seq = 0u64;
        while t.now < end {
            let now = t.now;
            if now >= start {
                for id in [1u32, 2, 3] {
                    let m = t.members.get_mut(&id).unwrap();
                    loop {
                        let mut b = id.to_le_bytes().to_vec();
                        b.extend_from_slice(&seq.to_le_bytes());
                        if m.submit(now, &b, false).is_err() {
                            break;
                        }
                        seq += 1;
                    }
                }
            }
            t.run_until(now + 100 * MICROS);
        }
        let mut per_sender = BTreeMap::<u32, u64>::new();
        for (id, bytes) in t.delivered.keys() {
            if *id == 3 {
                let sender = u32::from_le_bytes(bytes[..4].try_into().unwrap());
                *per_sender.entry(sender).or_default() += 1;
            }
        }
        let c = |id: NodeId| t.members[&id].counters().clone();
        println!(
            "delivered per sender {per_sender:?}; fairness requests {:?}, holds {:?}",
            [1, 2, 3].map(|i| c(i).fairness_requests),
            [1, 2, 3].map(|i| c(i).fairness_holds)
        );
        let near = per_sender.get(&1).copied().unwrap_or(0);
        for far in [2, 3] {
            let got = per_sender.get(&far).copied().unwrap_or(0);
            assert!(
                got * 20 >= near,
                "sender {far} got {got} messages in the order, the near sender {near}: {per_sender:?}"
            );
        }
    }

    /// Three members (nodes 1-3) of one group and its memory node (primary and backup)
    /// over a network of one delay per hop, in simulated time that jumps from event to
    /// event. Payloads are disseminated only if `disseminate` (otherwise the others
    /// repair them from the sender's queue once they learned the entry: nothing but a read
    /// tells them of a message); wake-ups are dropped if `drop_wakes`.
    struct Trio {
        now: Time,
        delay: Time,
        primary: MemoryNode,
        backup: MemoryNode,
        members: BTreeMap<NodeId, OrderedMember>,
        queue: VecDeque<(Time, NodeId, NodeId, Vec<u8>)>,
        /// (member, payload) -> when delivered.
        delivered: BTreeMap<(NodeId, Vec<u8>), Time>,
        /// Messages each member delivered.
        deliveries: BTreeMap<NodeId, u64>,
        disseminate: bool,
        drop_wakes: bool,
        wakes_dropped: u64,
        /// A member cut off: everything to or from it is dropped.
        cut: Option<NodeId>,
        /// A member on the memory-node primary's host: its hops to and from the primary
        /// take a microsecond (the others `delay`).
        near: Option<NodeId>,
        /// Hop delays drawn from `delay ..= delay + max` (a seeded generator), each link
        /// first in, first out (a loaded host's scheduling, not a reordering network).
        jitter: Option<(rand_xoshiro::Xoshiro256PlusPlus, Time)>,
        /// Per link: when its last datagram arrives (keeps links FIFO under jitter).
        link_last: BTreeMap<(NodeId, NodeId), Time>,
    }

    impl Trio {
        fn new(settings: OrderedSettings, disseminate: bool, drop_wakes: bool) -> Trio {
            let ids: Vec<NodeId> = vec![1, 2, 3];
            let mut primary = MemoryNode::primary(MEMNODE, 1, Some(BACKUP), MinitxSettings::default());
            let mut backup = MemoryNode::backup(MEMNODE, PRIMARY, 1, MinitxSettings::default());
            for (region, size) in settings.regions() {
                primary.add_region(region, size).unwrap();
                backup.add_region(region, size).unwrap();
            }
            let members = ids
                .iter()
                .map(|&id| {
                    let m = OrderedMember::initial(
                        id,
                        7,
                        &ids,
                        PRIMARY,
                        settings.clone(),
                        MinitxSettings::default(),
                    );
                    (id, m)
                })
                .collect();
            Trio {
                now: 0,
                delay: 25 * MICROS,
                primary,
                backup,
                members,
                queue: VecDeque::new(),
                delivered: BTreeMap::new(),
                deliveries: BTreeMap::new(),
                disseminate,
                drop_wakes,
                wakes_dropped: 0,
                cut: None,
                near: None,
                jitter: None,
                link_last: BTreeMap::new(),
            }
        }

        /// When a datagram sent now from `from` to `to` arrives.
        fn arrival(&mut self, from: NodeId, to: NodeId) -> Time {
            use rand::Rng;
            let near = self
                .near
                .is_some_and(|n| (from == n && to == PRIMARY) || (from == PRIMARY && to == n));
            let mut at = self.now + if near { MICROS } else { self.delay };
            if let Some((rng, max)) = self.jitter.as_mut() {
                at += rng.gen_range(0..=*max);
                let last = self.link_last.entry((from, to)).or_default();
                at = at.max(*last);
                *last = at;
            }
            at
        }

        fn route(&mut self, id: NodeId, out: Output) {
            match out {
                Output::Minitx { to, bytes } => {
                    let at = self.arrival(id, to);
                    self.push(at, id, to, bytes);
                }
                Output::Deliver { bytes, .. } => {
                    self.delivered.insert((id, bytes), self.now);
                    *self.deliveries.entry(id).or_default() += 1;
                }
                // Payloads travel as a queue-slot image here: sender, epoch, seq, bytes.
                Output::Disseminate {
                    sender,
                    epoch,
                    seq,
                    bytes,
                } if self.disseminate => {
                    for to in [1, 2, 3] {
                        if to != id {
                            let mut b = vec![0xFF];
                            b.extend_from_slice(&sender.to_le_bytes());
                            b.extend_from_slice(&epoch.to_le_bytes());
                            b.extend_from_slice(&seq.to_le_bytes());
                            b.extend_from_slice(&bytes);
                            let at = self.arrival(id, to);
                            self.push(at, id, to, b);
                        }
                    }
                }
                // Progress told: tagged 0xFE.
                Output::Held { to, held } => {
                    let mut b = vec![0xFE];
                    b.extend_from_slice(&held.to_bytes());
                    let at = self.arrival(id, to);
                    self.push(at, id, to, b);
                }
                _ => {}
            }
        }

        fn drain(&mut self) {
            let ids: Vec<NodeId> = self.members.keys().copied().collect();
            for id in ids {
                while let Some(out) = self.members.get_mut(&id).unwrap().poll_output() {
                    self.route(id, out);
                }
            }
            while let Some((to, b)) = self.primary.poll_transmit() {
                if self.drop_wakes && tutti_wire::minitx::kind_of(&b) == Some(tutti_wire::minitx::kind::WAKE)
                {
                    self.wakes_dropped += 1;
                    continue;
                }
                let at = self.arrival(PRIMARY, to);
                self.push(at, PRIMARY, to, b);
            }
            while let Some((to, b)) = self.backup.poll_transmit() {
                let at = self.arrival(BACKUP, to);
                self.push(at, BACKUP, to, b);
            }
        }

        /// Queues a datagram, keeping the queue in arrival order (near hops overtake).
        fn push(&mut self, at: Time, from: NodeId, to: NodeId, bytes: Vec<u8>) {
            let i = self.queue.partition_point(|q| q.0 <= at);
            self.queue.insert(i, (at, from, to, bytes));
        }

        fn next_event(&self) -> Time {
            self.members
                .values()
                .filter_map(|m| m.poll_timeout())
                .chain(self.primary.poll_timeout())
                .chain(self.backup.poll_timeout())
                .chain(self.queue.front().map(|q| q.0))
                .min()
                .unwrap_or(Time::MAX)
        }

        fn run_until(&mut self, until: Time) {
            loop {
                self.drain();
                let next = self.next_event().max(self.now);
                if next > until {
                    self.now = until;
                    return;
                }
                self.now = next;
                let now = self.now;
                for m in self.members.values_mut() {
                    if m.poll_timeout().is_some_and(|t| t <= now) {
                        m.handle_timeout(now);
                    }
                }
                for mn in [&mut self.primary, &mut self.backup] {
                    if mn.poll_timeout().is_some_and(|t| t <= now) {
                        mn.handle_timeout(now);
                    }
                }
                while self.queue.front().is_some_and(|q| q.0 <= now) {
                    let Some((_, from, to, b)) = self.queue.pop_front() else {
                        break;
                    };
                    if self.cut.is_some_and(|c| c == from || c == to) {
                        continue;
                    }
                    match to {
                        PRIMARY => self.primary.handle_message(now, from, &b),
                        BACKUP => self.backup.handle_message(now, from, &b),
                        n => {
                            let m = self.members.get_mut(&n).unwrap();
                            if b.first() == Some(&0xFF) {
                                let u = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
                                let sender = NodeId::from_le_bytes(b[1..5].try_into().unwrap());
                                m.handle_payload(now, sender, u(5), u(13), &b[21..]);
                            } else if b.first() == Some(&0xFE) {
                                m.handle_held(now, from, &b[1..]);
                            } else {
                                m.handle_minitx(now, from, &b);
                            }
                        }
                    }
                    self.drain();
                }
            }
        }

        fn reads_served(&self) -> u64 {
            self.primary.counters().unlogged_reads
        }
    }

    fn dormancy_settings() -> OrderedSettings {
        OrderedSettings {
            // Repairs at once: with no dissemination, a member that learned an entry
            // fetches its payload a millisecond later.
            repair_delay: MILLIS,
            ..OrderedSettings::default()
        }
    }

    /// Idles a trio for `idle` after one message, then member 1 sends `b"after"`: the
    /// reads the memory node served during the idle spell, and when each member
    /// delivered the message after it (relative to its submit).
    fn idle_then_send(t: &mut Trio, idle: Time) -> (u64, Vec<Option<Time>>) {
        t.members
            .get_mut(&1)
            .unwrap()
            .submit(t.now, b"before", false)
            .unwrap();
        let until = t.now + 100 * MILLIS;
        t.run_until(until);
        for id in [1, 2, 3] {
            assert!(
                t.delivered.contains_key(&(id, b"before".to_vec())),
                "{id} delivered"
            );
        }
        let reads_before = t.reads_served();
        let until = t.now + idle;
        t.run_until(until);
        let reads = t.reads_served() - reads_before;
        let sent = t.now;
        t.members
            .get_mut(&1)
            .unwrap()
            .submit(sent, b"after", false)
            .unwrap();
        t.run_until(sent + 2_000 * MILLIS);
        let at = [1, 2, 3]
            .iter()
            .map(|&id| t.delivered.get(&(id, b"after".to_vec())).map(|&at| at - sent))
            .collect();
        (reads, at)
    }

    /// An idle group goes dormant: over 10 s its memory node serves about one read per
    /// member per `dormant_interval` (1 s) after the ramp (2, 4, ... 32 ms, then doubling
    /// to 1 s), not one per 32 ms (about 310 per member); the next message is learned at
    /// once by every member, woken by the memory node (no payload reaches them here: only
    /// a read can tell them), and delivered after a repair.
    #[test]
    fn an_idle_group_goes_dormant_and_the_memory_node_wakes_it() {
        let mut t = Trio::new(dormancy_settings(), false, false);
        let (reads, at) = idle_then_send(&mut t, 10_000 * MILLIS);
        let wakes: u64 = t.members.values().map(|m| m.counters().wakes).sum();
        let dormant: u64 = t.members.values().map(|m| m.counters().dormant_reads).sum();
        println!(
            "dormant: {reads} reads served in 10 s idle ({dormant} dormant), delivery after {at:?} ns, {wakes} wakes"
        );
        // Ramp: 2 + 4 + ... + 32 ms (5 reads), 32 ms, 64 ... 512 ms (4), then ~9 at 1 s.
        assert!(
            reads <= 3 * 20,
            "{reads} reads served in 10 s of idle by 3 members"
        );
        assert!(dormant >= 3 * 8, "{dormant} dormant reads");
        assert!(wakes >= 2, "{wakes} wake-ups acted on");
        for (i, d) in at.iter().enumerate() {
            let d = d.unwrap_or_else(|| panic!("member {} never delivered", i + 1));
            // Append (4 hops), wake (1), read (2 + the backup's 2), repair (1 ms + 2).
            assert!(
                d <= 3 * MILLIS,
                "member {} delivered {} us after the submit",
                i + 1,
                d / MICROS
            );
        }
    }

    /// Every wake-up lost: a dormant member still reads every `dormant_interval`, so the
    /// message after the idle spell is delivered within about that.
    #[test]
    fn a_lost_wake_up_costs_at_most_the_dormant_interval() {
        let settings = dormancy_settings();
        let bound = settings.dormant_interval;
        let mut t = Trio::new(settings, false, true);
        let (_, at) = idle_then_send(&mut t, 10_000 * MILLIS);
        println!(
            "wake-ups dropped: delivery after {at:?} ns ({} dropped)",
            t.wakes_dropped
        );
        assert!(t.wakes_dropped >= 2, "{} wake-ups dropped", t.wakes_dropped);
        let slowest = at.iter().map(|d| d.expect("delivered")).max().unwrap();
        assert!(
            slowest <= bound + 5 * MILLIS,
            "slowest member delivered {} ms after the submit",
            slowest / MILLIS
        );
        // The sender itself learns by its append: no wait.
        assert!(at[0].unwrap() <= 2 * MILLIS);
        // The others did wait for their dormant read (the wake-ups were what saved it).
        assert!(slowest > 10 * MILLIS, "slowest {} us", slowest / MICROS);
    }

    /// With payloads disseminated as usual, dormancy changes nothing for a message: its
    /// payload hint starts a read at once (the wake-up then finds the member reading).
    #[test]
    fn a_dormant_group_delivers_a_disseminated_message_at_once() {
        let mut t = Trio::new(OrderedSettings::default(), true, false);
        let (reads, at) = idle_then_send(&mut t, 10_000 * MILLIS);
        assert!(reads <= 3 * 20, "{reads} reads");
        for (i, d) in at.iter().enumerate() {
            let d = d.unwrap_or_else(|| panic!("member {} never delivered", i + 1));
            assert!(
                d <= MILLIS,
                "member {} delivered {} us after the submit",
                i + 1,
                d / MICROS
            );
        }
    }

    /// Forged or flooded wake-ups: one not from the memory node's primary is refused; a
    /// flood from it starts at most one read per `poll_interval`.
    #[test]
    fn forged_wake_ups_cost_at_most_a_read_per_poll_interval() {
        let mut t = Trio::new(OrderedSettings::default(), true, false);
        t.run_until(2_000 * MILLIS);
        let wake = tutti_wire::minitx::Message::Wake { memnode: MEMNODE }.to_vec();
        let m = t.members.get_mut(&2).unwrap();
        let reads = m.counters().reads;
        let start = t.now;
        m.handle_minitx(start, 3, &wake);
        assert_eq!(
            m.counters().wakes_refused,
            1,
            "a wake-up from a member is refused"
        );
        let other = tutti_wire::minitx::Message::Wake { memnode: MEMNODE + 1 }.to_vec();
        m.handle_minitx(start, PRIMARY, &other);
        assert_eq!(
            m.counters().wakes_refused,
            2,
            "a wake-up for another list is refused"
        );
        // 1,000 wake-ups over 10 ms: 2 ms apart at most 5 act.
        for i in 0..1_000 {
            t.now = start + i * 10 * MICROS;
            t.queue.push_back((t.now, PRIMARY, 2, wake.clone()));
            let now = t.now;
            t.run_until(now);
        }
        t.run_until(start + 10 * MILLIS);
        let m = &t.members[&2];
        assert!(
            m.counters().wakes <= 6,
            "{} wake-ups acted on",
            m.counters().wakes
        );
        assert!(m.counters().wakes_limited >= 990);
        let extra = m.counters().reads - reads;
        assert!(extra <= 12, "{extra} reads in 10 ms of wake-up flood");
    }

    /// What a sender must keep outstanding (submitted, not yet delivered to itself) for its
    /// appends to stay pipelined in a `safe` group (so in every `evs` list: `all_hold`), as
    /// libcpg's flow-control window does: member 1 of 3 floods 8-byte messages, 25 us per
    /// hop, simulated time. Returns the messages every member delivered in the measured
    /// 5 ms. `window` None: as many as `submit` takes.
    fn flood_safe_with_window(window: Option<u64>) -> u64 {
        let mut t = Trio::new(OrderedSettings::default(), true, false);
        let (start, from, end) = (10 * MILLIS, 12 * MILLIS, 17 * MILLIS);
        t.run_until(start);
        let mut sent = 0u64;
        while t.now < end {
            let now = t.now;
            let own = t.deliveries.get(&1).copied().unwrap_or(0);
            let m = t.members.get_mut(&1).unwrap();
            while window.is_none_or(|w| sent - own < w) && m.submit(now, &sent.to_le_bytes(), true).is_ok() {
                sent += 1;
            }
            t.run_until(now + MICROS);
        }
        [1, 2, 3]
            .into_iter()
            .map(|id| {
                t.delivered
                    .range((id, Vec::new())..(id + 1, Vec::new()))
                    .filter(|(_, &at)| at >= from)
                    .count() as u64
            })
            .min()
            .unwrap()
    }

    /// A tell is taken only from a member of the view, under the membership it names, about
    /// this list: a forged one (a node outside the view, a stale join position, another
    /// list's memory node, or bytes that do not decode) is counted and moves nothing, so
    /// it cannot make a `safe` message be delivered before every member holds it.
    #[test]
    fn a_forged_tell_does_not_deliver_a_safe_message_early() {
        let mut t = Trio::new(OrderedSettings::default(), true, false);
        t.run_until(10 * MILLIS);
        t.cut = Some(3);
        let now = t.now;
        t.members.get_mut(&1).unwrap().submit(now, b"safe", true).unwrap();
        t.run_until(now + 5 * MILLIS);
        let delivered = |t: &Trio, id: NodeId| t.delivered.contains_key(&(id, b"safe".to_vec()));
        assert!(!delivered(&t, 1), "delivered before member 3 holds it");
        let held = |memnode, join_pos| {
            OrderedHeld {
                memnode,
                reserved: [0; 6],
                join_pos,
                learned: u64::MAX,
                held: u64::MAX,
            }
            .to_bytes()
        };
        let now = t.now;
        let m = t.members.get_mut(&1).unwrap();
        let before = m.counters().clone();
        m.handle_held(now, 9, &held(MEMNODE, 0));
        m.handle_held(now, 3, &held(MEMNODE, 7));
        m.handle_held(now, 3, &held(MEMNODE + 1, 0));
        m.handle_held(now, 3, &held(MEMNODE, 0)[..31]);
        assert_eq!(m.counters().helds_refused, before.helds_refused + 3);
        assert_eq!(m.counters().malformed, before.malformed + 1);
        assert_eq!(m.counters().helds_taken, before.helds_taken);
        t.run_until(now + 5 * MILLIS);
        assert!(!delivered(&t, 1), "a forged tell delivered it");
        // Member 3's own tell (as it would send it) is what was missing.
        let now = t.now;
        t.members
            .get_mut(&1)
            .unwrap()
            .handle_held(now, 3, &held(MEMNODE, 0));
        t.run_until(now + MILLIS);
        assert!(delivered(&t, 1), "member 3's tell did not deliver it");
    }

    /// Told progress is bounded under a flood: one tell per peer per gap
    /// (`poll_interval / TELL_DIVISOR` with 3 members), however fast the progress moves.
    #[test]
    fn a_flood_tells_its_progress_at_most_once_per_gap() {
        let settings = OrderedSettings::default();
        let mut t = Trio::new(settings.clone(), true, false);
        let (start, end) = (10 * MILLIS, 50 * MILLIS);
        t.run_until(start);
        let before: Vec<u64> = [1, 2, 3].map(|id| t.members[&id].counters().helds_sent).into();
        let mut sent = 0u64;
        while t.now < end {
            let now = t.now;
            let m = t.members.get_mut(&1).unwrap();
            while m.submit(now, &sent.to_le_bytes(), true).is_ok() {
                sent += 1;
            }
            t.run_until(now + 10 * MICROS);
        }
        let gaps = (end - start) / (settings.poll_interval / TELL_DIVISOR);
        for (i, id) in [1, 2, 3].into_iter().enumerate() {
            let told = t.members[&id].counters().helds_sent - before[i];
            println!(
                "member {id}: {told} tells in {} ms, {sent} messages",
                (end - start) / MILLIS
            );
            assert!(told > 0, "member {id} told nothing");
            // Two peers, one tell each per gap (and one at the start).
            assert!(
                told <= 2 * (gaps + 1),
                "member {id} told {told} times in {gaps} gaps"
            );
        }
        assert!(
            t.deliveries.get(&3).copied().unwrap_or(0) > 1000,
            "the flood did not move"
        );
    }

    /// libcpg's window (`WINDOW_MSGS` in capi/cpg/libcpg.c) is `sender_window()`: with it
    /// a flooding sender of an `all_hold` group moves within 10 % of what it moves with no
    /// window. A window of just the appends in flight (`max_appends_in_flight *
    /// max_batch`, 512: libcpg's before) left most of it waiting for the others' progress
    /// after its append, so the next appends were small: CPG flood through tuttid 104 k
    /// msg/s against 364 k for `tutti-bench ordered` with one sender.
    #[test]
    fn a_sender_window_of_sender_window_keeps_a_safe_pipeline_full() {
        let settings = OrderedSettings::default();
        let unbounded = flood_safe_with_window(None);
        let appends_only = flood_safe_with_window(Some(u64::from(
            settings.max_appends_in_flight * settings.max_batch,
        )));
        let window = flood_safe_with_window(Some(u64::from(settings.sender_window())));
        println!("safe flood, 5 ms: unbounded {unbounded}, window of the appends {appends_only}, sender_window {window}");
        assert!(
            window * 10 >= unbounded * 9,
            "sender_window {} moved {window} of {unbounded} messages",
            settings.sender_window()
        );
    }
}
