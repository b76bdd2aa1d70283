//! Every tunable of the protocols, with its default and what it trades.

use crate::{Time, MILLIS};

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
    /// Bytes a node retransmits per round (payload + 100 B overhead counted per message).
    /// Larger: faster catch-up of lagging members, more bandwidth spent on them: the bound
    /// that keeps a slow member from slowing the others. (Ensemble `max_entropy`: 30,000.)
    pub retransmit_budget_bytes: usize,
    /// Seqs solicited per retransmit request. Larger: faster repair of long gaps, bigger
    /// requests and bursts. (Ensemble `reql`: 100.)
    pub request_cap: usize,
    /// Rounds before a missing seq is requested again. Shorter: faster repair when a
    /// request or retransmission is lost, more duplicate retransmissions. (Ensemble `wait`: 2.)
    pub rerequest_rounds: u32,
    /// Seqs tracked per sender (held, missing or awaiting delivery). Bounds a member's
    /// memory per sender; a message beyond the window is dropped (counted) and later
    /// reported lost. Must exceed a sender's messages per retention period.
    pub max_window: u64,
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
    /// Heartbeat entries per membership gossip (the node itself plus a rotating slice of
    /// its table). Larger: fresher liveness knowledge at scale, bigger datagrams.
    pub heartbeat_entries: usize,
    /// A member whose heartbeat has not grown for this long (plus a term that grows with
    /// cluster size over `heartbeat_entries`) is suspected and removed from the view.
    /// Shorter: faster failure detection, more false suspicions of slow members.
    pub suspect_timeout: Time,
    /// How long a failed node stays in the table (for merges after a partition heals).
    /// Longer: partitions that last longer still merge without seeds, more table memory.
    pub forget_after: Time,
    /// Datagram size used to pack messages (bytes). Larger: fewer datagrams per message,
    /// IP fragmentation above the path MTU.
    pub max_datagram: usize,
    /// Largest payload `submit` accepts (one message must fit one datagram until
    /// fragmentation lands).
    pub max_payload: usize,
    /// Datagrams waiting for `poll_transmit`; beyond it new ones are dropped (counted).
    pub max_pending_transmits: usize,
    /// Events waiting for `poll_event`; beyond it deliveries are dropped (counted).
    pub max_pending_events: usize,
    /// FIFO per sender, or immediate unordered delivery.
    pub delivery: Delivery,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            gossip_period: 100 * MILLIS,
            gossip_fanout: 1,
            tree_fanout: 4,
            retention_rounds: 20,
            retransmit_budget_bytes: 30_000,
            request_cap: 100,
            rerequest_rounds: 2,
            max_window: 8192,
            digest_entries: 1024,
            max_tombstones: 4096,
            heartbeat_entries: 256,
            suspect_timeout: 2_000 * MILLIS,
            forget_after: 60_000 * MILLIS,
            max_datagram: 1472,
            max_payload: 1472 - 16 - 8 - 32,
            max_pending_transmits: 1 << 16,
            max_pending_events: 1 << 20,
            delivery: Delivery::Fifo,
        }
    }
}
