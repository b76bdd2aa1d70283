//! Every tunable of the protocols, with its default and what it trades.

use crate::{Time, MILLIS};
use tutti_wire::packet::{data_message_len, DATAGRAM_HEADER_LEN};

/// Bytes counted per message a member tracks, beside its payload: the slot, the shared
/// allocation's header and the allocator's rounding.
pub const SLOT_OVERHEAD: usize = 64;

/// Delivery order of bimodal multicast at a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// FIFO per sender: a gap holds later messages back until it is repaired or reported lost.
    Fifo,
    /// Deliver on first receipt, in any order: lowest latency, no head-of-line blocking.
    Unordered,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Length of a gossip round. Shorter: faster repair and failure detection, more
    /// datagrams per second per node. (Ensemble `sweep`: 100 ms.)
    pub gossip_period: Time,
    /// Members each node gossips to per round. More: faster repair and liveness spread,
    /// proportionally more gossip traffic. (Ensemble `fanout`: 1.)
    pub gossip_fanout: usize,
    /// Children per node in the stage-1 dissemination tree. Wider: shallower tree (fewer
    /// hops, fewer messages lost down a lost branch), more sends per forwarding node.
    pub tree_fanout: usize,
    /// Rounds a message is kept for repair before garbage collection; a gap still open
    /// after that long is reported `Lost`. Longer: more time to repair slow or perturbed
    /// members, more memory. (Ensemble `stale`: 20.)
    pub retention_rounds: u32,
    /// Bytes a node retransmits per round (payload + `RETRANSMIT_OVERHEAD` counted per
    /// fragment), to every requester together. Larger: repair keeps up with faster senders
    /// and lossier links; smaller: less bandwidth spent on lagging members, the bound that
    /// keeps a slow member from slowing the others. (Ensemble's `max_entropy` is 30,000 B at
    /// its rates; tutti's senders reach millions of messages per second, so repair at
    /// 20% loss needs megabytes per round.)
    pub retransmit_budget_bytes: usize,
    /// Messages solicited per request. Larger: faster repair of long gaps, bigger requests
    /// and bursts. (Ensemble `reql`: 100.)
    pub request_cap: usize,
    /// Time before a missing message is requested again (after a gap request or a digest
    /// request went unanswered), on the node's repair timer: eight times this far apart,
    /// then twice as far each time up to a gossip period. Shorter: faster repair when a
    /// request or retransmission is lost, within a byte budget that holds only a few ms
    /// of a fast stream; more duplicate retransmissions when round trips are longer.
    pub rerequest_after: Time,
    /// Bytes a member keeps for one group: held messages (payload plus a fixed per-message
    /// overhead), partly received large messages, and one overhead per missing message.
    /// Beyond it the oldest messages of the largest stream are dropped: delivered ones are
    /// simply forgotten (others can no longer be repaired from here), undelivered ones are
    /// delivered first, missing ones are reported `Lost`. Larger: repair covers more of a
    /// fast sender's history; the daemon's memory grows to it under load.
    pub group_budget_bytes: usize,
    /// Bytes a node keeps for all its groups together (same accounting); beyond it the
    /// group holding most gives up its oldest messages as above.
    pub node_budget_bytes: usize,
    /// Per-sender entries per gossip digest, rotating over senders when there are more.
    /// A digest is split into MTU-sized messages (44 entries per 1472-byte datagram), so
    /// a group with S active senders costs ceil(S/44) datagrams per gossip target per
    /// round. Larger: every sender covered every round (repair of many-sender groups
    /// within the retention); smaller: bounded gossip bandwidth, but a sender missing
    /// from digests for longer than the retention has its gaps reported `Lost`.
    pub digest_entries: usize,
    /// Forgotten senders (and co-members known to owe every message from seq 0) remembered
    /// per group as compact tombstones `(sender, incarnation) -> next expected seq`, so that
    /// a sender heard of again after a long partition resumes where this member stood: no
    /// silent gap, no duplicate. Beyond it the oldest is evicted (counted in
    /// `Counters::tombstones_evicted`); an evicted sender is resumed at its advertised low.
    pub max_tombstones: usize,
    /// Nodes the membership table holds (live, suspected and failed ones kept for merges).
    /// Node ids named by the network beyond it are ignored and counted
    /// (`Counters::peers_full`): a peer cannot grow the table without bound.
    pub max_peers: usize,
    /// Streams a member tracks per group (sender states). A stream heard of beyond it is
    /// ignored and counted (`Counters::streams_full`).
    pub max_streams: usize,
    /// Entries per membership message (SWIM probe, ack, ping request): the sender's own,
    /// then news of other members piggybacked (joins, suspicions, failures, refutations;
    /// each sent `GOSSIP_LAMBDA * ceil(log10(n + 1))` times by each member). Larger: news spreads in fewer
    /// messages, bigger datagrams (16 B per entry; capped to fit `max_datagram`).
    pub heartbeat_entries: usize,
    /// Base of SWIM's suspicion timeout: a member whose probe and ping requests went
    /// unanswered is suspected, and failed (removed from the view) if nothing refutes the
    /// suspicion within this plus `SUSPICION_ROUNDS_PER_LOG2` gossip periods per doubling
    /// of the cluster (see [`Settings::suspicion_timeout`]). Shorter: faster failure
    /// detection, more false suspicions of slow members.
    pub suspect_timeout: Time,
    /// Rounds the coordinator probes a member of its view it holds failed, directly and
    /// through others, before a view drops it (a live member answers and stays: a failure
    /// confirmed by a member that missed the refutation no longer removes it). Longer:
    /// fewer false removals, slower removal of crashed members (at most this many rounds
    /// more). 0: no check (a failure is removed as soon as the coordinator holds it).
    pub removal_check_rounds: u32,
    /// How long a failed node stays in the table (for merges after a partition heals).
    /// Longer: partitions that last longer still merge without seeds, more table memory.
    pub forget_after: Time,
    /// Largest datagram sent (bytes). Larger: fewer datagrams per message, IP fragmentation
    /// above the path MTU. Messages larger than fit are sent as fragments.
    pub max_datagram: usize,
    /// Largest message `submit` accepts (bytes); sent in fragments of
    /// [`Settings::fragment_payload`] bytes, delivered whole or reported `Lost`. Receivers
    /// refuse fragments of larger messages.
    pub max_message: usize,
    /// How long a group stays joined after the application leaves it, so that what this
    /// node sent last can still be repaired from it (a publisher that sends and leaves at
    /// once would otherwise take its messages along). Nothing is delivered meanwhile.
    pub linger: Time,
    /// Datagrams waiting for `poll_transmit`; beyond it new ones are dropped (counted).
    pub max_pending_transmits: usize,
    /// Events waiting for `poll_event`; beyond it deliveries are dropped (counted).
    pub max_pending_events: usize,
    /// FIFO per sender, or immediate unordered delivery.
    pub delivery: Delivery,
    /// Flow control of bimodal groups: messages a sender keeps in flight beyond the slowest
    /// member it serves (the least seq held without a gap, aggregated up the stream's
    /// dissemination tree: each member reports its subtree's least to its parent in
    /// `FlowStatus`, so a sender hears from its `tree_fanout` children, not from every
    /// member); a receiver also advertises it as its receive window, and the sender uses
    /// the smaller. A submit beyond it is refused with `SubmitError::Full` (the client's
    /// publish ring fills: back pressure, never a drop). Larger: more throughput across
    /// long round trips and descheduled receivers, bigger bursts into a receiver's socket
    /// buffer (keep `flow_window` messages' datagrams well within it: 16,384 messages of
    /// 64 B are ~800 datagrams, 2-3 MiB of kernel buffer, within the daemon's 16 MiB
    /// default). A sender whose group budget is full also holds a message back rather than
    /// evict its oldest before every member served holds it. 0: flow control off (the
    /// sender sends at the application's pace; receivers send no status).
    pub flow_window: u64,
    /// The bimodal rule of flow control: a member that holds the sender's window full for
    /// this long, and meanwhile made no progress at all or consumed at less than half the
    /// rate of the fastest other member, is dropped from the window (counted in
    /// `Counters::flow_slow_members`): it gets repair, then `Lost`, as without flow
    /// control, and is counted again once it is back within half a window. The rule is
    /// applied by the member's parent in the stream's tree (the sender for its children);
    /// a parent whose child's subtree holds the window for a slower member deeper down
    /// waits twice as long, leaving that member's own parent to drop it alone. A member
    /// slower than the sender but as fast as the others paces the sender. Shorter: a
    /// stalled member holds the others back less long; longer: a descheduled member (a
    /// shard off its core for tens of ms) is less often given up.
    pub flow_slow_after: Time,
    /// While a stream's sender asks for reports (its window or budget is half used: an ask
    /// goes down its tree, at most every 4 intervals, and holds for 16), a member reports
    /// its subtree's progress to its parent at least this often, and with nothing new
    /// repeats its last report at twice the interval each time, a few times (a lost report
    /// would stall the sender until `flow_slow_after`). Unasked, a member reports at once
    /// after a quarter window of progress and otherwise once a `gossip_period` while it
    /// progresses: an idle or under-window stream costs about nothing. Shorter: the
    /// sender's window reopens sooner under pressure, more status datagrams.
    pub flow_status_interval: Time,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            gossip_period: 100 * MILLIS,
            gossip_fanout: 1,
            tree_fanout: 4,
            retention_rounds: 20,
            retransmit_budget_bytes: 8 << 20,
            request_cap: 1024,
            rerequest_after: MILLIS,
            group_budget_bytes: 64 << 20,
            node_budget_bytes: 256 << 20,
            digest_entries: 1024,
            max_tombstones: 4096,
            max_peers: 1 << 16,
            max_streams: 1 << 16,
            heartbeat_entries: 32,
            suspect_timeout: 2_000 * MILLIS,
            removal_check_rounds: 3,
            forget_after: 60_000 * MILLIS,
            max_datagram: 1472,
            max_message: 1 << 20,
            linger: 2_000 * MILLIS,
            max_pending_transmits: 1 << 16,
            max_pending_events: 1 << 20,
            delivery: Delivery::Fifo,
            flow_window: 16_384,
            flow_slow_after: 250 * MILLIS,
            flow_status_interval: MILLIS,
        }
    }
}

/// Gossip periods added to the suspicion timeout per doubling of the cluster (Lifeguard's
/// suspicion timeout grows with log n, so that news of a refutation reaches the members
/// that heard the suspicion before they confirm it).
pub const SUSPICION_ROUNDS_PER_LOG2: u64 = 2;

impl Settings {
    /// SWIM's suspicion timeout in a cluster of `n` members:
    /// `suspect_timeout + SUSPICION_ROUNDS_PER_LOG2 * ceil(log2(n + 1)) * gossip_period`.
    pub fn suspicion_timeout(&self, n: usize) -> Time {
        let log = u64::from(usize::BITS - n.leading_zeros());
        self.suspect_timeout + SUSPICION_ROUNDS_PER_LOG2 * log * self.gossip_period
    }

    /// Payload bytes per fragment: what a datagram of `max_datagram` holds after its
    /// header, one message header and one data header.
    pub fn fragment_payload(&self) -> usize {
        self.max_datagram
            .saturating_sub(DATAGRAM_HEADER_LEN + data_message_len(0))
            .max(1)
    }

    /// Most messages a stream's window spans (one overhead each within the group budget).
    pub fn max_window(&self) -> u64 {
        (self.group_budget_bytes / SLOT_OVERHEAD).max(2) as u64
    }
}
