//! tutti-proto: the protocols as sans-IO state machines.
//!
//! One [`Node`] per daemon shard runs cluster membership (gossip-style failure detection,
//! numbered views agreed by the coordinator, merges after partitions) and bimodal multicast
//! (Birman et al., TOCS 1999) for every group it joined. It is driven only by calls
//! (`handle_packet`, `handle_timeout`, `submit`, `join`, `leave`) and hands back what it
//! wants done through `poll_transmit`, `poll_event` and `poll_timeout`. No sockets, clocks,
//! threads or global randomness: time and an RNG seed are passed in, so the simulator in
//! `tutti-sim` reproduces any run from a seed.
//!
//! The message layer is here too, so that the simulator exercises all of it: messages of
//! any size up to `Settings::max_message` (fragmented into datagrams and reassembled, in
//! the data header's fragment fields), the publishing session of each message, sender
//! stream identity, lingering after the application leaves a group, and a memory budget
//! in bytes for everything retained for repair.
//!
//! **Streams.** A node's messages in a group form a stream `(node, stream)` numbered from
//! 0. The stream id is drawn from the node's RNG each time the node joins the group and is
//! announced in the view, so a stream identity never repeats while a receiver can remember
//! it: neither a group left and joined again nor a restarted node (the daemon seeds the RNG
//! from the OS) can be mistaken for an old stream whose seqs a receiver already passed.

#![forbid(unsafe_code)]

pub mod fxhash;
mod id_index;
pub mod minitx;
mod multicast;
mod node;
pub mod ordered;
mod outbox;
mod payload;
pub mod regions;
mod ring;
mod settings;
mod view_cache;

pub use node::{
    Counters, Node, SubmitError, Submitted, GOSSIP_LAMBDA, MAX_UNVERIFIED_PEERS, NEW_PEERS_PER_DATAGRAM,
    PING_REQ_FANOUT,
};
pub use payload::Payload;
pub use settings::{Delivery, Settings, SLOT_OVERHEAD, SUSPICION_ROUNDS_PER_LOG2};
pub use view_cache::ViewCache;

use std::sync::Arc;

/// Opaque node address; the daemon maps it to socket addresses.
pub type NodeId = u32;
/// A group identifier (see `tutti_wire::packet::group_id`).
pub type GroupId = u64;
/// Time in nanoseconds since an arbitrary origin chosen by the driver (monotonic).
pub type Time = u64;

/// Nanoseconds per millisecond, for settings.
pub const MILLIS: Time = 1_000_000;

/// Identifies a view: a counter that grows with every installation, and the coordinator
/// that installed it (two partitions may reach the same counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ViewId {
    pub counter: u64,
    pub coordinator: NodeId,
    pub coordinator_incarnation: u32,
}

impl ViewId {
    /// Whether `self` supersedes `other`: a higher counter, or the same counter installed
    /// by an older coordinator (smaller `(incarnation, id)`).
    pub fn newer_than(&self, other: &ViewId) -> bool {
        self.counter > other.counter
            || (self.counter == other.counter
                && (self.coordinator_incarnation, self.coordinator)
                    < (other.coordinator_incarnation, other.coordinator))
    }
}

/// A member of a view: a node in one incarnation (a restarted node is a new member).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    pub node: NodeId,
    pub incarnation: u32,
}

impl Member {
    /// Seniority: smaller is older. The coordinator is the oldest live member.
    pub fn age_key(&self) -> (u32, NodeId) {
        (self.incarnation, self.node)
    }
}

/// A group in a view: its members in view order, and the stream each sends in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupView {
    pub id: GroupId,
    pub members: Vec<NodeId>,
    /// `streams[i]` is the stream of `members[i]`.
    pub streams: Vec<u32>,
}

impl GroupView {
    /// The stream `node` sends in this group, if it is a member.
    pub fn stream_of(&self, node: NodeId) -> Option<u32> {
        let i = self.members.iter().position(|m| *m == node)?;
        self.streams.get(i).copied()
    }
}

/// A numbered view: members ordered oldest first (so `members[0]` is the coordinator
/// while it lives), and per group the members that joined it, in the same order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub id: ViewId,
    pub members: Vec<Member>,
    /// `addrs[i]`: where the coordinator heard `members[i]` from (opaque to the protocol:
    /// what the driver gave `Node::set_address`; 0 when unknown). Empty when the
    /// coordinator knew no address (the simulator's views), else as long as `members`.
    pub addrs: Vec<u64>,
    /// Sorted by group id; member lists in view order.
    pub groups: Vec<GroupView>,
}

impl View {
    pub fn contains(&self, m: Member) -> bool {
        self.members.contains(&m)
    }
    pub fn group_view(&self, g: GroupId) -> Option<&GroupView> {
        self.groups
            .binary_search_by_key(&g, |gv| gv.id)
            .ok()
            .and_then(|i| self.groups.get(i))
    }
    pub fn group(&self, g: GroupId) -> Option<&[NodeId]> {
        self.group_view(g).map(|gv| gv.members.as_slice())
    }
    /// The address the coordinator gave for `members[i]` (0: none).
    pub fn addr(&self, i: usize) -> u64 {
        self.addrs.get(i).copied().unwrap_or(0)
    }

    /// A hash of the view's content (members, their addresses, groups and streams; not its id): with the
    /// counter, what identifies a view in gossip, and how the simulator compares views
    /// without comparing member lists. Deterministic across processes (FxHash, no seed).
    pub fn content_hash(&self) -> u64 {
        use std::hash::Hasher;
        let mut h = fxhash::FxHasher::default();
        h.write_u64(self.members.len() as u64);
        for m in &self.members {
            h.write_u64(u64::from(m.node) | u64::from(m.incarnation) << 32);
        }
        // Addresses count (a member serving the view cannot swap them under the hash its
        // coordinator announced); a view without any hashes as before.
        for a in &self.addrs {
            h.write_u64(*a);
        }
        h.write_u64(self.groups.len() as u64);
        for gv in &self.groups {
            h.write_u64(gv.id);
            h.write_u64(gv.members.len() as u64);
            for (n, s) in gv.members.iter().zip(&gv.streams) {
                h.write_u64(u64::from(*n) | u64::from(*s) << 32);
            }
        }
        h.finish()
    }
}

/// What a node tells the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message of another node, delivered once and whole, FIFO per stream unless
    /// `Delivery::Unordered`. A node's own messages are not delivered back to it.
    Deliver {
        group: GroupId,
        sender: NodeId,
        stream: u32,
        seq: u64,
        /// The publishing session given to `submit` on the sender.
        session: u32,
        /// Shared with the node's retention slot (no copy). Give it back with
        /// `Node::recycle` (or drop it) soon, so that its buffer returns to the node's pool.
        payload: Payload,
    },
    /// Messages `first..first+count` of a stream will never be delivered here (reported
    /// once; `count` counts messages, whatever their fragments).
    Lost {
        group: GroupId,
        sender: NodeId,
        stream: u32,
        first: u64,
        count: u64,
    },
    /// A new view was installed at this node.
    ViewChange(Arc<View>),
    /// A message of an ordered group, in the group's total order (this node's own
    /// messages included). `position` is its list entry's position.
    OrderedDeliver {
        group: GroupId,
        sender: NodeId,
        position: u64,
        safe: bool,
        payload: Vec<u8>,
    },
    /// An ordered group's view changed, at its place in the order.
    OrderedView {
        group: GroupId,
        view: ordered::ViewEvent,
    },
    /// The application must snapshot its state of `group` as of everything delivered so
    /// far and call `Node::snapshot_ready` (delivery in that group waits until then).
    SnapshotRequest { group: GroupId, position: u64 },
    /// This joiner installed the snapshot taken at `position`; deliveries follow.
    Installed {
        group: GroupId,
        position: u64,
        snapshot: Vec<u8>,
    },
    /// This node's standing in an ordered group changed.
    OrderedStatus {
        group: GroupId,
        status: ordered::OrderedStatusEvent,
    },
    /// An `evs` ordered group's configuration changed (transitional or regular), at its
    /// place in the order (it replaces `OrderedView` there).
    OrderedConfiguration {
        group: GroupId,
        config: ordered::ConfigEvent,
    },
}

/// A message handed straight to the driver's sink by [`Node::handle_packet_with`]: what
/// [`Event::Deliver`] carries, with the bytes lent from the node's retention for the call
/// (copy them out; nothing to give back). Used only while no event waits in the queue, so
/// the sink and [`Node::poll_event`] together keep the order events were produced in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered<'a> {
    pub group: GroupId,
    pub sender: NodeId,
    pub stream: u32,
    pub seq: u64,
    /// The publishing session given to `submit` on the sender.
    pub session: u32,
    pub payload: &'a [u8],
}

impl Delivered<'_> {
    /// The [`Event::Deliver`] the node would have queued, with its own copy of the bytes
    /// (for tools and simulations that keep events).
    pub fn to_event(&self) -> Event {
        Event::Deliver {
            group: self.group,
            sender: self.sender,
            stream: self.stream,
            seq: self.seq,
            session: self.session,
            payload: Payload::copy_of(self.payload),
        }
    }
}

/// A datagram to send to `dest`: its bytes are lent by the node until its next call
/// (the driver copies them into its transport's send slot; nothing is allocated per datagram).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit<'a> {
    pub dest: NodeId,
    pub payload: &'a [u8],
}
