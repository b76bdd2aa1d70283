//! UDP packet formats between daemons: one datagram = a fixed [`DatagramHeader`] followed
//! by a sequence of length-prefixed messages, so many small messages share one datagram.
//!
//! ```text
//! DatagramHeader (16 B): magic "TTP1" (u32), version (u16), count (u16), from (u32), incarnation (u32)
//! then `count` times:
//!   MessageHeader (8 B): kind (u8), flags (u8), reserved (u16, must be 0), len (u32)
//!   body: `len` bytes, layout by kind (see [`MessageKind`])
//! ```
//!
//! Application data travels compactly: a sender's consecutive whole messages in one
//! datagram form a run ([`MessageKind::DataRun`]) with one [`RunHeader`] (group, sender,
//! stream, first seq, retained, session) and then per message only its length (a LEB128
//! varint, 1 byte below 128) and its bytes; seqs are implicit (`first_seq + i`). A
//! 1,472-byte datagram carries 21 messages of 64 bytes (bare UDP: 23), with the 34-byte
//! authentication trailer too. Fragments of large messages keep the full [`DataHeader`].
//!
//! With a cluster key the daemon's transport appends a 34-byte authentication trailer after
//! the messages and removes it, once verified, before this decoder sees the datagram (see
//! `tutti_daemon::net::auth` and docs/security.md).
//!
//! All integers are little-endian (the fixed headers are `#[repr(C)]` + `bytemuck` and are
//! read with unaligned copies, so bodies need no padding). A big-endian host reads the magic
//! wrongly and rejects every datagram with [`PacketError::BadMagic`] rather than misreading it.
//!
//! The decoder is strict: [`decode`] validates the whole datagram (every message header,
//! every body length, every index) before returning, and reports the first problem as a
//! [`PacketError`]. It never panics, never indexes out of bounds, never overflows. Decoding
//! does not allocate: the returned [`Datagram`] borrows the input, and its entries are read
//! with unaligned copies on iteration.
//!
//! Group identifiers are `u64`: the daemon derives one from the group's name with a stable
//! 64-bit hash (FNV-1a, see [`group_id`]); two names colliding would share a group, which at
//! 64 bits is negligible for the number of groups a cluster has.

use bytemuck::{Pod, Zeroable};

/// "TTP1" read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"TTP1");
/// Version of this format. A decoder rejects any other version. Version 2: sender streams
/// (not incarnations) in data, digest and request entries; the publishing session and
/// fragments in the data header; per-member streams in views and group joins. Version 3:
/// a view is carried in parts ([`ViewPartHeader`]), each within a datagram. Version 4:
/// digest entries carry the stream's `recent` low (what its sender sent within a retention).
/// Version 5: the data header is packed to 36 bytes (no reserved field). Version 6: whole
/// messages travel in runs ([`MessageKind::DataRun`]: one header per run of a sender's
/// consecutive messages, then a varint length per message). Version 7: SWIM failure
/// detection in heartbeat messages, the `HEARTBEAT_FLAG_PROBE`/`ACK`/`PING_REQ` flags on the
/// sender's own (first) entry and `SUSPECT`/`DEAD` on relayed entries; the heartbeat header
/// carries the sender's view hash. Version 8: a view's member entries carry the member's
/// address as its coordinator saw it ([`MemberEntry::addr`]). Version 10: a view request
/// names the view it pulls and the parts it lacks ([`ViewRequestHeader`]; it was empty).
/// Version 11: flow status. Version 12: flow status along the dissemination tree
/// ([`FlowStatus::holder`], [`FlowStatus::members`], asks), and ordered payloads of one
/// sender in runs ([`OrderedKind::PayloadRun`]). Version 13: a memory node's
/// `ReplicateAck` carries `ahead`, the entries its backup holds past the missing one
/// (`tutti_wire::minitx`), so that the primary resends only what is missing. Version 14:
/// a memory node's backup pushes the list entries it applies to the group's members
/// ([`OrderedKind::Committed`]).
pub const VERSION: u16 = 14;
/// Size of [`DatagramHeader`].
pub const DATAGRAM_HEADER_LEN: usize = core::mem::size_of::<DatagramHeader>();
/// Size of [`MessageHeader`].
pub const MESSAGE_HEADER_LEN: usize = core::mem::size_of::<MessageHeader>();
/// Largest UDP payload over IPv4; nothing larger can be a datagram.
pub const MAX_DATAGRAM: usize = 65_507;

/// Flag on a [`MessageKind::Data`] message: this is a retransmission (stage 2), not to be
/// forwarded down the dissemination tree.
pub const DATA_FLAG_RETRANSMIT: u8 = 1;
/// Flag on a heartbeat entry: the node is leaving the cluster on purpose.
pub const HEARTBEAT_FLAG_LEAVING: u32 = 1;
/// Flag on a relayed heartbeat entry: the relay suspects the node (SWIM), at that heartbeat.
pub const HEARTBEAT_FLAG_SUSPECT: u32 = 2;
/// Flag on a relayed heartbeat entry: the relay confirmed the node failed, at that heartbeat.
pub const HEARTBEAT_FLAG_DEAD: u32 = 4;
/// Flag on the sender's own (first) entry: a probe; the receiver answers with an ack.
pub const HEARTBEAT_FLAG_PROBE: u32 = 8;
/// Flag on the sender's own (first) entry: the answer to a probe (direct, or relayed for a
/// ping request: then the second entry is the probed node's, as just heard from it).
pub const HEARTBEAT_FLAG_ACK: u32 = 16;
/// Flag on the sender's own (first) entry: a ping request (SWIM's indirect probe); the
/// second entry names the node to probe on the sender's behalf.
pub const HEARTBEAT_FLAG_PING_REQ: u32 = 32;

/// Stable 64-bit group identifier of a group name (FNV-1a 64).
pub fn group_id(name: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in name {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Errors of the strict decoder and of the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("datagram or message truncated: needed {needed} bytes, had {had}")]
    Truncated { needed: usize, had: usize },
    #[error("bad magic {0:#010x} (not a tutti datagram, or a big-endian peer)")]
    BadMagic(u32),
    #[error("unsupported packet version {0} (this build speaks {VERSION})")]
    BadVersion(u16),
    #[error("length mismatch: {0}")]
    LengthMismatch(&'static str),
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("reserved field is not zero")]
    ReservedNonZero,
    #[error("unknown flags {flags:#04x} on message kind {kind}")]
    BadFlags { kind: u8, flags: u8 },
    #[error("index {index} out of range (members: {members})")]
    BadIndex { index: u32, members: u32 },
    #[error("datagram holds {0} messages, more than the header's u16 count allows")]
    TooManyMessages(usize),
    #[error("encode buffer full: needed {needed} bytes, {available} available")]
    BufferFull { needed: usize, available: usize },
}

/// The fixed header at the start of every datagram.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct DatagramHeader {
    pub magic: u32,
    pub version: u16,
    /// Number of messages that follow.
    pub count: u16,
    /// Sending node id.
    pub from: u32,
    /// Sending node's incarnation (grows at each restart; "older" nodes have smaller ones).
    pub incarnation: u32,
}

/// The header in front of every message in a datagram.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct MessageHeader {
    pub kind: u8,
    pub flags: u8,
    pub reserved: u16,
    /// Body length in bytes (not counting this header).
    pub len: u32,
}

/// Message kinds. Bodies:
/// - `Data`: [`DataHeader`] + payload (the rest of the body); one fragment of a large
///   message (or a whole one: the encoder writes whole messages as runs).
/// - `DataRun`: [`RunHeader`] + at least one `(varint len, len bytes)`: whole messages
///   `first_seq, first_seq + 1, ...` of one stream, in one session (see [`RunMessages`]).
/// - `Digest`: [`DigestHeader`] + `n` x [`DigestEntry`].
/// - `Request`: [`RequestHeader`] + `n` x [`RequestEntry`].
/// - `Heartbeats`: [`HeartbeatHeader`] + `n` x [`HeartbeatEntry`].
/// - `View`: one part of a view: [`ViewPartHeader`] + `member_count` x [`MemberEntry`]
///   (members `member_start..member_start + member_count`) + `group_slices` x
///   ([`ViewGroupSlice`] + `count` x [`ViewGroupMember`]). A view is carried by `parts`
///   such messages (see [`plan_view_parts`]); the receiver reassembles them.
/// - `ViewRequest`: [`ViewRequestHeader`] + `count` x `u32` part indexes (strictly
///   ascending, each below `parts`; at most [`MAX_VIEW_REQUEST_PARTS`]).
/// - `GroupJoin` / `GroupLeave`: [`GroupChange`].
/// - `Ordered`: [`OrderedHeader`] + fragment bytes: one fragment of an ordered group's
///   message (minitransaction, payload or state transfer; see [`OrderedKind`]).
/// - `FlowStatus`: [`FlowStatus`], exactly: a receiver's consumption of one stream, sent to
///   the stream's sender (bimodal flow control).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageKind {
    Data = 1,
    Digest = 2,
    Request = 3,
    Heartbeats = 4,
    View = 5,
    ViewRequest = 6,
    GroupJoin = 7,
    GroupLeave = 8,
    DataRun = 9,
    Ordered = 10,
    FlowStatus = 11,
}

impl MessageKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Data,
            2 => Self::Digest,
            3 => Self::Request,
            4 => Self::Heartbeats,
            5 => Self::View,
            6 => Self::ViewRequest,
            7 => Self::GroupJoin,
            8 => Self::GroupLeave,
            9 => Self::DataRun,
            10 => Self::Ordered,
            11 => Self::FlowStatus,
            _ => return None,
        })
    }
}

/// One fragment of a multicast message (stage 1 dissemination or a stage 2
/// retransmission). A message of `frag_count` fragments is carried by `frag_count` data
/// messages with the same `seq`; every fragment but the last carries the same number of
/// payload bytes, so fragment `i` starts at `i * that`.
/// Packed (36 bytes, read unaligned like every header here): with the 34-byte
/// authentication trailer, 13 messages of 64 bytes still fit a 1,472-byte datagram.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct DataHeader {
    pub group: u64,
    /// Per (sender, stream) message number, from 0.
    pub seq: u64,
    /// Original sender (root of the tree), not necessarily the datagram's `from`.
    pub sender: u32,
    /// The sender's stream in this group: drawn at random each time the sender joins the
    /// group, so that a stream identity never repeats (see `tutti_proto`).
    pub stream: u32,
    /// How many earlier messages of this stream the sender still retains (`seq - its
    /// oldest`, saturated). A receiver that first hears of the stream starts there.
    pub retained: u32,
    /// The publishing session on the sender's host (opaque to the protocol).
    pub session: u32,
    /// Index of this fragment, below `frag_count`.
    pub frag_index: u16,
    /// Number of fragments of the message; 1 for an unfragmented message.
    pub frag_count: u16,
}

/// The header of a run of whole (unfragmented) messages of one stream, consecutive seqs
/// from `first_seq`, all of one publishing session. Message `i` of the run is the
/// [`DataHeader`] with `seq = first_seq + i`, `retained = retained + i` (saturated),
/// `frag_index = 0`, `frag_count = 1` (see [`RunMessages::iter`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct RunHeader {
    pub group: u64,
    pub first_seq: u64,
    pub sender: u32,
    pub stream: u32,
    /// `retained` of the run's first message.
    pub retained: u32,
    pub session: u32,
}

/// Size of [`RunHeader`].
pub const RUN_HEADER_LEN: usize = core::mem::size_of::<RunHeader>();
/// Longest varint length prefix in a run: 3 bytes hold lengths up to 2^21 - 1, more than
/// [`MAX_DATAGRAM`].
pub const MAX_VARINT_LEN: usize = 3;

/// Bytes of the LEB128 varint that encodes `n` (`n` below 2^21).
pub const fn varint_len(n: usize) -> usize {
    if n < 1 << 7 {
        1
    } else if n < 1 << 14 {
        2
    } else {
        3
    }
}

/// Reads one minimal LEB128 varint of at most [`MAX_VARINT_LEN`] bytes.
fn read_varint(bytes: &[u8]) -> Result<(usize, &[u8]), PacketError> {
    let mut n = 0usize;
    for i in 0..MAX_VARINT_LEN {
        let b = *bytes.get(i).ok_or(PacketError::Truncated {
            needed: i + 1,
            had: bytes.len(),
        })?;
        n |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            if b == 0 && i > 0 {
                return Err(PacketError::LengthMismatch("varint not minimal"));
            }
            return Ok((n, bytes.get(i + 1..).unwrap_or(&[])));
        }
    }
    Err(PacketError::LengthMismatch("varint longer than 3 bytes"))
}

/// Writes `n` (below 2^21) as a LEB128 varint at the start of `dst`; returns its length.
fn write_varint(n: usize, dst: &mut [u8]) -> Option<usize> {
    let len = varint_len(n);
    let out = dst.get_mut(..len)?;
    let mut v = n;
    for (i, b) in out.iter_mut().enumerate() {
        let more = i + 1 < len;
        *b = (v & 0x7f) as u8 | if more { 0x80 } else { 0 };
        v >>= 7;
    }
    Some(len)
}

/// The messages of a validated run: `(header, payload)` of each, in seq order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunMessages<'a> {
    header: RunHeader,
    bytes: &'a [u8],
    count: u32,
}

impl<'a> RunMessages<'a> {
    /// Walks a run's body once, checking every length; `None` for an empty run.
    fn new(header: RunHeader, bytes: &'a [u8]) -> Result<Self, PacketError> {
        let mut rest = bytes;
        let mut count: u32 = 0;
        while !rest.is_empty() {
            let (len, after) = read_varint(rest)?;
            rest = after.get(len..).ok_or(PacketError::Truncated {
                needed: len,
                had: after.len(),
            })?;
            count += 1; // at most a datagram's bytes: no overflow
        }
        if count == 0 {
            return Err(PacketError::LengthMismatch("empty run"));
        }
        if header.first_seq.checked_add(u64::from(count - 1)).is_none() {
            return Err(PacketError::LengthMismatch("run seqs overflow"));
        }
        Ok(Self { header, bytes, count })
    }
    /// Messages in the run (at least 1).
    pub fn len(&self) -> usize {
        self.count as usize
    }
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    pub fn header(&self) -> RunHeader {
        self.header
    }
    /// Each message as the [`DataHeader`] it stands for and its payload. The run was
    /// validated by [`decode`].
    pub fn iter(&self) -> impl Iterator<Item = (DataHeader, &'a [u8])> + 'a {
        let h = self.header;
        let mut rest = self.bytes;
        let mut i: u32 = 0;
        core::iter::from_fn(move || {
            let (len, after) = read_varint(rest).ok()?;
            let payload = after.get(..len)?;
            rest = after.get(len..)?;
            let header = DataHeader {
                group: h.group,
                seq: h.first_seq.checked_add(u64::from(i))?,
                sender: h.sender,
                stream: h.stream,
                retained: h.retained.saturating_add(i),
                session: h.session,
                frag_index: 0,
                frag_count: 1,
            };
            i += 1;
            Some((header, payload))
        })
    }
}

/// Gossip digest header (stage 2), one per group.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct DigestHeader {
    pub group: u64,
    /// The gossiper's round; requests answering this digest echo it.
    pub round: u32,
    pub reserved: u32,
}

/// Per sender: what the gossiper holds. It holds every seq in `[low, contiguous)` and
/// possibly some in `[contiguous, high)`; it misses the others below `high`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct DigestEntry {
    pub sender: u32,
    pub stream: u32,
    /// Oldest seq still retained.
    pub low: u64,
    /// Every seq below this (and at or above `low`) is held.
    pub contiguous: u64,
    /// One past the highest seq seen.
    pub high: u64,
    /// The oldest seq the stream's sender sent within the last retention, as far as the
    /// gossiper knows (at most `low`; below `low` when the byte budget, not age, dropped
    /// messages). A member that first hears of the stream within a retention of joining
    /// the group starts there, so that what the budget dropped since it joined is
    /// reported `Lost` rather than skipped.
    pub recent: u64,
}

/// Flow control of one stream, along the stream's dissemination tree (the k-ary tree rooted
/// at its sender). A **report** (`members` at least 1) goes from a member to its parent in
/// that tree: the least seq held without a gap over the member's subtree (its own and its
/// children's last reports, less the children it dropped as slow), the member holding it,
/// the smallest receive window and how many members were counted; the sender keeps at most
/// `window` messages beyond the least `consumed` of its tree children, so it hears from
/// O(fanout) members, not from every member. An **ask** (`members` 0) goes from the sender
/// down the tree when its window or budget is half used: members then report their
/// subtree's progress every `flow_status_interval` for a while (otherwise only after a
/// quarter window, or once a gossip period while progressing).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct FlowStatus {
    pub group: u64,
    /// The stream's sender and stream id.
    pub sender: u32,
    pub stream: u32,
    /// A report: every seq below this is held by every member counted (their highest
    /// contiguous seq, plus one). An ask: the sender's next seq.
    pub consumed: u64,
    /// Messages past `consumed` the members counted accept (at least 1).
    pub window: u32,
    /// Gaps the reporting member opened in this stream so far (wrapping).
    pub gaps: u32,
    /// A report: the member holding `consumed` (the slowest one counted).
    pub holder: u32,
    /// A report: members counted (at least 1: the reporter); 0: an ask.
    pub members: u32,
}

impl FlowStatus {
    /// Whether this is the sender's ask for reports rather than a report.
    pub fn is_ask(&self) -> bool {
        self.members == 0
    }
}

/// Bytes of a [`FlowStatus`] message body.
pub const FLOW_STATUS_LEN: usize = core::mem::size_of::<FlowStatus>();

/// Retransmit request header: solicits messages from the gossiper.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct RequestHeader {
    pub group: u64,
    /// The round of the digest this answers (stale requests are ignored), or
    /// [`REQUEST_ROUND_GAP`] for a request sent when a gap was seen in the stream.
    pub round: u32,
    pub reserved: u32,
}

/// `RequestHeader::round` of a request that answers no digest: the requester saw a gap in
/// a stream and asks the member it got the stream from.
pub const REQUEST_ROUND_GAP: u32 = u32::MAX;

/// A run of `count` messages starting at `first`, from one sender's stream, newest first by
/// convention. `frag`: the first fragment wanted of message `first` (0: all of it), for a
/// large message of which some fragments arrived.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct RequestEntry {
    pub sender: u32,
    pub stream: u32,
    pub first: u64,
    pub count: u32,
    pub frag: u32,
}

/// Membership gossip header: the sender's current view (id and content hash: a member that
/// sees a newer one pulls its parts from the sender) and the highest view counter it saw.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct HeartbeatHeader {
    pub view_counter: u64,
    pub view_coordinator: u32,
    pub view_coordinator_incarnation: u32,
    pub max_counter: u64,
    /// The content hash of the sender's view (`tutti_proto::View::content_hash`).
    pub view_hash: u64,
}

/// Gossip-style failure detection (van Renesse): a node's heartbeat counter as last known.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct HeartbeatEntry {
    pub node: u32,
    pub incarnation: u32,
    pub heartbeat: u32,
    /// [`HEARTBEAT_FLAG_LEAVING`] or 0.
    pub flags: u32,
}

/// One part of a numbered view, as installed by its coordinator. A view of `members`
/// members and `groups` groups is sent as `parts` messages; every part repeats the view id
/// and the totals, and carries a contiguous slice of the member list and slices of groups.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct ViewPartHeader {
    pub counter: u64,
    pub coordinator: u32,
    pub coordinator_incarnation: u32,
    /// Index of this part, below `parts`.
    pub part: u32,
    /// Number of parts of the view (at least 1).
    pub parts: u32,
    /// Members in the whole view.
    pub members: u32,
    /// Groups in the whole view.
    pub groups: u32,
    /// Index in the view's member list of this part's first member entry.
    pub member_start: u32,
    /// Member entries in this part.
    pub member_count: u32,
    /// Group slices in this part.
    pub group_slices: u32,
    /// A member that holds this view, which the receiver may ask to confirm it (the view
    /// id and hash in the header of its answer to a probe), or [`NO_WITNESS`]: the view's
    /// coordinator, or any second member, vouches for a view pulled from someone else.
    pub witness: u32,
}

/// [`ViewPartHeader::witness`] when the sender names none.
pub const NO_WITNESS: u32 = u32::MAX;

/// Part indexes a [`ViewRequestHeader`] lists at most (a member lacking more asks for
/// these first, and for the rest once they arrived).
pub const MAX_VIEW_REQUEST_PARTS: usize = 64;

/// A pull of a view: the view the sender wants (its id and content hash, as announced to
/// it) and, when it holds some of that view's parts already, the parts it lacks.
/// `count == 0` (and then `parts == 0`): the whole view. Else `count` part indexes follow,
/// of the view split into `parts` parts: the receiver sends only those, if it holds that
/// very view split the same way, else its whole view.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Pod, Zeroable)]
pub struct ViewRequestHeader {
    pub counter: u64,
    pub coordinator: u32,
    pub coordinator_incarnation: u32,
    pub hash: u64,
    /// Parts of the view the requester holds some of (0: none).
    pub parts: u32,
    /// Part indexes that follow.
    pub count: u32,
}

/// A member of a view.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct MemberEntry {
    pub node: u32,
    pub incarnation: u32,
    /// Where the view's coordinator heard the member from, opaque to the protocol (the
    /// daemon's encoding of an IPv4 address and port); 0 when it did not.
    pub addr: u64,
}

/// A slice of a group in a view part: entries `start..start + count` of the group's
/// `total` member entries, followed by `count` [`ViewGroupMember`]s.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct ViewGroupSlice {
    pub group: u64,
    /// Member entries of the group in the whole view (at most the view's members).
    pub total: u32,
    pub start: u32,
    pub count: u32,
    pub reserved: u32,
}

/// A member of a group in a view: an index into the view's member list, and the stream
/// that member sends in the group.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct ViewGroupMember {
    pub index: u32,
    pub stream: u32,
}

/// Ask the coordinator to add (GroupJoin) or remove (GroupLeave) the sender in a group;
/// a join names the stream the sender will send in it (0 in a leave).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct GroupChange {
    pub group: u64,
    pub stream: u32,
    pub reserved: u32,
}

/// A validated view of a slice of fixed-size entries; read with unaligned copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entries<'a, T> {
    bytes: &'a [u8],
    _t: core::marker::PhantomData<T>,
}

impl<'a, T: Pod> Entries<'a, T> {
    fn new(bytes: &'a [u8]) -> Result<Self, PacketError> {
        if !bytes
            .chunks_exact(core::mem::size_of::<T>())
            .remainder()
            .is_empty()
        {
            return Err(PacketError::LengthMismatch(
                "entries are not a whole number of records",
            ));
        }
        Ok(Self {
            bytes,
            _t: core::marker::PhantomData,
        })
    }
    pub fn len(&self) -> usize {
        self.bytes.len() / core::mem::size_of::<T>()
    }
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = T> + 'a {
        self.bytes
            .chunks_exact(core::mem::size_of::<T>())
            .map(bytemuck::pod_read_unaligned::<T>)
    }
    pub fn get(&self, i: usize) -> Option<T> {
        let size = core::mem::size_of::<T>();
        let start = i.checked_mul(size)?;
        let end = start.checked_add(size)?;
        self.bytes.get(start..end).map(bytemuck::pod_read_unaligned::<T>)
    }
}

/// The group slices of a view part (validated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewGroupSlices<'a> {
    bytes: &'a [u8],
    count: u32,
}

impl<'a> ViewGroupSlices<'a> {
    pub fn len(&self) -> usize {
        self.count as usize
    }
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    /// Iterate `(slice header, its member entries)`. The section was validated by [`decode`].
    pub fn iter(&self) -> impl Iterator<Item = (ViewGroupSlice, Entries<'a, ViewGroupMember>)> + 'a {
        let mut rest = self.bytes;
        let mut left = self.count;
        core::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            left -= 1;
            let (hdr, after) = take::<ViewGroupSlice>(rest).ok()?;
            let n = (hdr.count as usize).checked_mul(core::mem::size_of::<ViewGroupMember>())?;
            let idx = after.get(..n)?;
            rest = after.get(n..)?;
            Some((hdr, Entries::new(idx).ok()?))
        })
    }
}

/// A decoded message, borrowing the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    Data {
        header: DataHeader,
        retransmit: bool,
        payload: &'a [u8],
    },
    /// Whole messages of one stream with consecutive seqs.
    DataRun {
        retransmit: bool,
        messages: RunMessages<'a>,
    },
    Digest {
        header: DigestHeader,
        entries: Entries<'a, DigestEntry>,
    },
    Request {
        header: RequestHeader,
        entries: Entries<'a, RequestEntry>,
    },
    Heartbeats {
        header: HeartbeatHeader,
        entries: Entries<'a, HeartbeatEntry>,
    },
    /// One part of a view: members `header.member_start..` and slices of groups.
    View {
        header: ViewPartHeader,
        members: Entries<'a, MemberEntry>,
        groups: ViewGroupSlices<'a>,
    },
    /// A pull of a view, whole or the listed parts (validated: at most
    /// [`MAX_VIEW_REQUEST_PARTS`], strictly ascending, each below `header.parts`).
    ViewRequest {
        header: ViewRequestHeader,
        parts: Entries<'a, u32>,
    },
    GroupJoin(GroupChange),
    GroupLeave(GroupChange),
    /// One fragment of an ordered group's message.
    Ordered {
        header: OrderedHeader,
        kind: OrderedKind,
        bytes: &'a [u8],
    },
    /// A receiver's consumption of one stream (validated: `window` at least 1).
    FlowStatus(FlowStatus),
}

/// A validated datagram: its header and its messages.
#[derive(Debug, Clone, Copy)]
pub struct Datagram<'a> {
    pub header: DatagramHeader,
    body: &'a [u8],
}

impl<'a> Datagram<'a> {
    /// The messages, in order. Every one was validated by [`decode`].
    pub fn messages(&self) -> impl Iterator<Item = Message<'a>> + 'a {
        let mut rest = self.body;
        core::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let (msg, after) = parse_message(rest).ok()?;
            rest = after;
            Some(msg)
        })
    }
}

fn take<T: Pod>(bytes: &[u8]) -> Result<(T, &[u8]), PacketError> {
    let n = core::mem::size_of::<T>();
    match (bytes.get(..n), bytes.get(n..)) {
        (Some(head), Some(rest)) => Ok((bytemuck::pod_read_unaligned(head), rest)),
        _ => Err(PacketError::Truncated {
            needed: n,
            had: bytes.len(),
        }),
    }
}

fn check_flags(kind: u8, flags: u8, allowed: u8) -> Result<(), PacketError> {
    if flags & !allowed != 0 {
        Err(PacketError::BadFlags { kind, flags })
    } else {
        Ok(())
    }
}

fn exact_empty(rest: &[u8]) -> Result<(), PacketError> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(PacketError::LengthMismatch("message body longer than its kind"))
    }
}

/// Parse one message at the start of `bytes`; returns it and the bytes after it.
fn parse_message(bytes: &[u8]) -> Result<(Message<'_>, &[u8]), PacketError> {
    let (mh, rest) = take::<MessageHeader>(bytes)?;
    if mh.reserved != 0 {
        return Err(PacketError::ReservedNonZero);
    }
    let len = mh.len as usize;
    let body = rest.get(..len).ok_or(PacketError::Truncated {
        needed: len,
        had: rest.len(),
    })?;
    let after = rest.get(len..).unwrap_or(&[]);
    let kind = MessageKind::from_u8(mh.kind).ok_or(PacketError::UnknownKind(mh.kind))?;
    let allowed = if matches!(kind, MessageKind::Data | MessageKind::DataRun) {
        DATA_FLAG_RETRANSMIT
    } else {
        0
    };
    check_flags(mh.kind, mh.flags, allowed)?;
    let msg = match kind {
        MessageKind::Data => {
            let (header, payload) = take::<DataHeader>(body)?;
            if header.frag_count == 0 || header.frag_index >= header.frag_count {
                return Err(PacketError::LengthMismatch("fragment index outside count"));
            }
            Message::Data {
                header,
                retransmit: mh.flags & DATA_FLAG_RETRANSMIT != 0,
                payload,
            }
        }
        MessageKind::DataRun => {
            let (header, rest) = take::<RunHeader>(body)?;
            Message::DataRun {
                retransmit: mh.flags & DATA_FLAG_RETRANSMIT != 0,
                messages: RunMessages::new(header, rest)?,
            }
        }
        MessageKind::Digest => {
            let (header, rest) = take::<DigestHeader>(body)?;
            if header.reserved != 0 {
                return Err(PacketError::ReservedNonZero);
            }
            Message::Digest {
                header,
                entries: Entries::new(rest)?,
            }
        }
        MessageKind::Request => {
            let (header, rest) = take::<RequestHeader>(body)?;
            if header.reserved != 0 {
                return Err(PacketError::ReservedNonZero);
            }
            let entries = Entries::<RequestEntry>::new(rest)?;
            if entries.iter().any(|e| e.frag > u32::from(u16::MAX)) {
                return Err(PacketError::LengthMismatch("fragment index beyond u16"));
            }
            Message::Request { header, entries }
        }
        MessageKind::Heartbeats => {
            let (header, rest) = take::<HeartbeatHeader>(body)?;
            Message::Heartbeats {
                header,
                entries: Entries::new(rest)?,
            }
        }
        MessageKind::View => {
            let (header, rest) = take::<ViewPartHeader>(body)?;
            if header.part >= header.parts {
                return Err(PacketError::LengthMismatch("view part index outside part count"));
            }
            if header
                .member_start
                .checked_add(header.member_count)
                .is_none_or(|end| end > header.members)
            {
                return Err(PacketError::LengthMismatch("member slice outside the view"));
            }
            if header.group_slices > header.groups {
                return Err(PacketError::LengthMismatch("more group slices than groups"));
            }
            let mlen = (header.member_count as usize)
                .checked_mul(core::mem::size_of::<MemberEntry>())
                .ok_or(PacketError::LengthMismatch("member count overflows"))?;
            let mbytes = rest.get(..mlen).ok_or(PacketError::Truncated {
                needed: mlen,
                had: rest.len(),
            })?;
            let mut grest = rest.get(mlen..).unwrap_or(&[]);
            let gstart = grest;
            for _ in 0..header.group_slices {
                let (gs, after) = take::<ViewGroupSlice>(grest)?;
                if gs.reserved != 0 {
                    return Err(PacketError::ReservedNonZero);
                }
                if gs.total > header.members {
                    return Err(PacketError::LengthMismatch("group larger than the view"));
                }
                if gs.start.checked_add(gs.count).is_none_or(|end| end > gs.total) {
                    return Err(PacketError::LengthMismatch("group slice outside the group"));
                }
                let n = (gs.count as usize)
                    .checked_mul(core::mem::size_of::<ViewGroupMember>())
                    .ok_or(PacketError::LengthMismatch("group count overflows"))?;
                let idx = after.get(..n).ok_or(PacketError::Truncated {
                    needed: n,
                    had: after.len(),
                })?;
                for c in idx.chunks_exact(core::mem::size_of::<ViewGroupMember>()) {
                    let i = bytemuck::pod_read_unaligned::<ViewGroupMember>(c).index;
                    if i >= header.members {
                        return Err(PacketError::BadIndex {
                            index: i,
                            members: header.members,
                        });
                    }
                }
                grest = after.get(n..).unwrap_or(&[]);
            }
            exact_empty(grest)?;
            let used = gstart.len() - grest.len();
            Message::View {
                header,
                members: Entries::new(mbytes)?,
                groups: ViewGroupSlices {
                    bytes: gstart.get(..used).unwrap_or(&[]),
                    count: header.group_slices,
                },
            }
        }
        MessageKind::ViewRequest => {
            let (header, rest) = take::<ViewRequestHeader>(body)?;
            let count = header.count as usize;
            if count > MAX_VIEW_REQUEST_PARTS {
                return Err(PacketError::LengthMismatch("view request lists too many parts"));
            }
            if count == 0 && header.parts != 0 {
                return Err(PacketError::LengthMismatch(
                    "whole-view request with a part count",
                ));
            }
            if rest.len() != count * core::mem::size_of::<u32>() {
                return Err(PacketError::LengthMismatch("view request part list length"));
            }
            let parts = Entries::<u32>::new(rest)?;
            let mut prev: Option<u32> = None;
            for p in parts.iter() {
                if p >= header.parts || prev.is_some_and(|q| p <= q) {
                    return Err(PacketError::LengthMismatch(
                        "view request parts not ascending within the part count",
                    ));
                }
                prev = Some(p);
            }
            Message::ViewRequest { header, parts }
        }
        MessageKind::GroupJoin | MessageKind::GroupLeave => {
            let (g, rest) = take::<GroupChange>(body)?;
            exact_empty(rest)?;
            if g.reserved != 0 {
                return Err(PacketError::ReservedNonZero);
            }
            if kind == MessageKind::GroupJoin {
                Message::GroupJoin(g)
            } else {
                Message::GroupLeave(g)
            }
        }
        MessageKind::Ordered => {
            let (header, bytes) = take::<OrderedHeader>(body)?;
            let kind = header.check(bytes.len())?;
            Message::Ordered { header, kind, bytes }
        }
        MessageKind::FlowStatus => {
            let (status, rest) = take::<FlowStatus>(body)?;
            exact_empty(rest)?;
            if status.window == 0 {
                return Err(PacketError::LengthMismatch("flow status with an empty window"));
            }
            Message::FlowStatus(status)
        }
    };
    Ok((msg, after))
}

/// Strictly decode a datagram: header, then every message. Never panics.
pub fn decode(bytes: &[u8]) -> Result<Datagram<'_>, PacketError> {
    if bytes.len() > MAX_DATAGRAM {
        return Err(PacketError::LengthMismatch("larger than a UDP datagram"));
    }
    let (header, body) = take::<DatagramHeader>(bytes)?;
    if header.magic != MAGIC {
        return Err(PacketError::BadMagic(header.magic));
    }
    if header.version != VERSION {
        return Err(PacketError::BadVersion(header.version));
    }
    let mut rest = body;
    let mut n: usize = 0;
    while !rest.is_empty() {
        let (_, after) = parse_message(rest)?;
        rest = after;
        n += 1;
    }
    if n != usize::from(header.count) {
        return Err(PacketError::LengthMismatch(
            "message count differs from the header",
        ));
    }
    Ok(Datagram { header, body })
}

/// Writes a datagram into a caller-provided buffer, message by message. The header's
/// count is kept current after each push, so the datagram is valid at any point; a
/// datagram can be resumed later with [`Encoder::resume_at`] (or [`Encoder::resume`],
/// which starts a new run for the next data message).
pub struct Encoder<'a> {
    buf: &'a mut [u8],
    len: usize,
    count: u16,
    run: Option<OpenRun>,
}

/// Where a datagram's encoding stands ([`Encoder::state`]), to resume it later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EncoderState {
    len: usize,
    count: u16,
    run: Option<OpenRun>,
}

impl EncoderState {
    /// Bytes written so far (header included).
    pub fn len(&self) -> usize {
        self.len
    }
    /// Messages written so far (a run counts once).
    pub fn count(&self) -> u16 {
        self.count
    }

    /// Appends whole message `payload` of `header` to the run the datagram in `buf` (whose
    /// encoding this state describes) ends with, when it continues it and fits: the common
    /// case of a sender's stream, with no [`Encoder`] resumed. False, nothing written,
    /// otherwise ([`Encoder::push_data`] then starts a run or reports the error).
    #[inline]
    pub fn extend_run(
        &mut self,
        buf: &mut [u8],
        header: &DataHeader,
        retransmit: bool,
        payload: &[u8],
    ) -> bool {
        if self.len < DATAGRAM_HEADER_LEN || self.len > buf.len() {
            return false;
        }
        matches!(
            extend_run(buf, &mut self.len, &mut self.run, header, retransmit, payload),
            Extend::Done
        )
    }
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// The run a datagram ends with, which the next message of the same stream may extend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OpenRun {
    /// Offset of the run's message header.
    at: usize,
    group: u64,
    sender: u32,
    stream: u32,
    session: u32,
    retransmit: bool,
    next_seq: u64,
    next_retained: u32,
}

/// Whether `h` is a whole (unfragmented) message, which travels in a run.
fn is_whole(h: &DataHeader) -> bool {
    h.frag_count == 1 && h.frag_index == 0
}

/// What [`extend_run`] did.
enum Extend {
    /// The message continues the run: written.
    Done,
    /// It continues the run but does not fit: nothing written.
    Full { needed: usize, available: usize },
    /// It does not continue the run (or there is none): nothing written.
    NotARun,
}

/// Appends whole message `payload` to the run a datagram of `*len` bytes in `buf` ends with
/// (`*run`) when it continues it (same group, sender, stream, session and retransmit flag,
/// the next seq): its length as a varint and its bytes, the run's body length raised in
/// place. Shared by [`Encoder::push_data`] and [`EncoderState::extend_run`], the sender's
/// path that needs no encoder.
#[inline]
fn extend_run(
    buf: &mut [u8],
    len: &mut usize,
    run: &mut Option<OpenRun>,
    header: &DataHeader,
    retransmit: bool,
    payload: &[u8],
) -> Extend {
    let Some(r) = run.as_mut() else {
        return Extend::NotARun;
    };
    if !(r.continued_by(header, retransmit) && payload.len() < 1 << (7 * MAX_VARINT_LEN)) {
        return Extend::NotARun;
    }
    let needed = varint_len(payload.len()) + payload.len();
    let available = buf.len().saturating_sub(*len);
    let len_at = r.at + 4;
    let old = buf
        .get(len_at..len_at + 4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let body = (old as usize)
        .checked_add(needed)
        .filter(|b| *b <= u32::MAX as usize);
    let (Some(body), true) = (body, needed <= available) else {
        return Extend::Full { needed, available };
    };
    let at = *len;
    let n = buf
        .get_mut(at..)
        .and_then(|dst| write_varint(payload.len(), dst))
        .unwrap_or(0);
    if let Some(dst) = buf.get_mut(at + n..at + n + payload.len()) {
        dst.copy_from_slice(payload);
    }
    if let Some(dst) = buf.get_mut(len_at..len_at + 4) {
        dst.copy_from_slice(&(body as u32).to_le_bytes());
    }
    *len = at + needed;
    r.next_retained = r.next_retained.saturating_add(1);
    match header.seq.checked_add(1) {
        Some(next_seq) => r.next_seq = next_seq,
        None => *run = None,
    }
    Extend::Done
}

impl OpenRun {
    /// Whether `h` continues this run: a whole message of its stream, session and
    /// retransmit flag, with the next seq.
    #[inline]
    fn continued_by(&self, h: &DataHeader, retransmit: bool) -> bool {
        is_whole(h)
            && self.group == { h.group }
            && self.sender == { h.sender }
            && self.stream == { h.stream }
            && self.session == { h.session }
            && self.retransmit == retransmit
            && self.next_seq == { h.seq }
            && self.next_retained == { h.retained }
    }
}

impl<'a> Encoder<'a> {
    /// Start a datagram from node `from`.
    pub fn new(buf: &'a mut [u8], from: u32, incarnation: u32) -> Result<Self, PacketError> {
        let header = DatagramHeader {
            magic: MAGIC,
            version: VERSION,
            count: 0,
            from,
            incarnation,
        };
        let dst = buf
            .get_mut(..DATAGRAM_HEADER_LEN)
            .ok_or(PacketError::BufferFull {
                needed: DATAGRAM_HEADER_LEN,
                available: 0,
            })?;
        dst.copy_from_slice(bytemuck::bytes_of(&header));
        Ok(Self {
            buf,
            len: DATAGRAM_HEADER_LEN,
            count: 0,
            run: None,
        })
    }

    /// Continue a datagram of `len` bytes and `count` messages written earlier into `buf`.
    pub fn resume(buf: &'a mut [u8], len: usize, count: u16) -> Result<Self, PacketError> {
        Self::resume_at(
            buf,
            EncoderState {
                len,
                count,
                run: None,
            },
        )
    }

    /// Continue a datagram written earlier into `buf` where `state` (from [`Self::state`])
    /// left it, extending its last run if the next message continues it.
    pub fn resume_at(buf: &'a mut [u8], state: EncoderState) -> Result<Self, PacketError> {
        if state.len < DATAGRAM_HEADER_LEN || state.len > buf.len() {
            return Err(PacketError::LengthMismatch("resume length outside buffer"));
        }
        if state
            .run
            .is_some_and(|r| r.at + MESSAGE_HEADER_LEN + RUN_HEADER_LEN > state.len)
        {
            return Err(PacketError::LengthMismatch("resume run outside the datagram"));
        }
        Ok(Self {
            buf,
            len: state.len,
            count: state.count,
            run: state.run,
        })
    }

    /// Where the encoding stands, for [`Self::resume_at`].
    pub fn state(&self) -> EncoderState {
        EncoderState {
            len: self.len,
            count: self.count,
            run: self.run,
        }
    }

    /// Bytes written so far (header included).
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    pub fn count(&self) -> u16 {
        self.count
    }
    /// Room left for a message body (after its message header).
    pub fn remaining_body(&self) -> usize {
        self.buf
            .len()
            .saturating_sub(self.len)
            .saturating_sub(MESSAGE_HEADER_LEN)
    }

    /// Append one message made of `parts` (concatenated into its body).
    fn push(&mut self, kind: MessageKind, flags: u8, parts: &[&[u8]]) -> Result<(), PacketError> {
        if self.count == u16::MAX {
            return Err(PacketError::TooManyMessages(usize::from(self.count) + 1));
        }
        let body: usize = parts.iter().map(|p| p.len()).sum();
        let needed = MESSAGE_HEADER_LEN + body;
        let available = self.buf.len().saturating_sub(self.len);
        if needed > available || body > u32::MAX as usize {
            return Err(PacketError::BufferFull { needed, available });
        }
        let mh = MessageHeader {
            kind: kind as u8,
            flags,
            reserved: 0,
            len: body as u32,
        };
        let mut at = self.len;
        for part in core::iter::once(bytemuck::bytes_of(&mh)).chain(parts.iter().copied()) {
            let end = at + part.len();
            if let Some(dst) = self.buf.get_mut(at..end) {
                dst.copy_from_slice(part);
            }
            at = end;
        }
        self.len = at;
        self.count += 1;
        self.run = None;
        if let Some(dst) = self.buf.get_mut(6..8) {
            dst.copy_from_slice(&self.count.to_le_bytes());
        }
        Ok(())
    }

    /// Whether a data message continues the run this datagram ends with.
    fn extends_run(&self, h: &DataHeader, retransmit: bool) -> bool {
        self.run.is_some_and(|r| r.continued_by(h, retransmit))
    }

    /// Bytes [`Self::push_data`] would add for this message: a length and the payload when
    /// it continues the last run, else a message with its header ([`data_len_alone`]).
    pub fn data_len(&self, header: &DataHeader, retransmit: bool, payload: usize) -> usize {
        if self.extends_run(header, retransmit) {
            varint_len(payload) + payload
        } else {
            data_len_alone(header, payload)
        }
    }

    /// Appends a data message: a whole message extends the run the datagram ends with (same
    /// stream, session and retransmit flag, the next seq) or starts one; a fragment is a
    /// `Data` message with its full header.
    pub fn push_data(
        &mut self,
        header: &DataHeader,
        retransmit: bool,
        payload: &[u8],
    ) -> Result<(), PacketError> {
        let flags = if retransmit { DATA_FLAG_RETRANSMIT } else { 0 };
        if !is_whole(header) {
            return self.push(MessageKind::Data, flags, &[bytemuck::bytes_of(header), payload]);
        }
        if payload.len() >= 1 << (7 * MAX_VARINT_LEN) {
            return Err(PacketError::LengthMismatch("payload too long for a run"));
        }
        match extend_run(
            self.buf,
            &mut self.len,
            &mut self.run,
            header,
            retransmit,
            payload,
        ) {
            Extend::Done => Ok(()),
            Extend::Full { needed, available } => Err(PacketError::BufferFull { needed, available }),
            Extend::NotARun => {
                let mut prefix = [0u8; MAX_VARINT_LEN];
                let n = write_varint(payload.len(), &mut prefix).unwrap_or(0);
                let prefix = prefix.get(..n).unwrap_or(&[]);
                let at = self.len;
                let rh = RunHeader {
                    group: header.group,
                    first_seq: header.seq,
                    sender: header.sender,
                    stream: header.stream,
                    retained: header.retained,
                    session: header.session,
                };
                self.push(
                    MessageKind::DataRun,
                    flags,
                    &[bytemuck::bytes_of(&rh), prefix, payload],
                )?;
                self.run = header.seq.checked_add(1).map(|next_seq| OpenRun {
                    at,
                    group: header.group,
                    sender: header.sender,
                    stream: header.stream,
                    session: header.session,
                    retransmit,
                    next_seq,
                    next_retained: header.retained.saturating_add(1),
                });
                Ok(())
            }
        }
    }

    pub fn push_digest(&mut self, header: &DigestHeader, entries: &[DigestEntry]) -> Result<(), PacketError> {
        self.push(
            MessageKind::Digest,
            0,
            &[bytemuck::bytes_of(header), bytemuck::cast_slice(entries)],
        )
    }

    pub fn push_request(
        &mut self,
        header: &RequestHeader,
        entries: &[RequestEntry],
    ) -> Result<(), PacketError> {
        self.push(
            MessageKind::Request,
            0,
            &[bytemuck::bytes_of(header), bytemuck::cast_slice(entries)],
        )
    }

    pub fn push_heartbeats(
        &mut self,
        header: &HeartbeatHeader,
        entries: &[HeartbeatEntry],
    ) -> Result<(), PacketError> {
        self.push(
            MessageKind::Heartbeats,
            0,
            &[bytemuck::bytes_of(header), bytemuck::cast_slice(entries)],
        )
    }

    /// One part of `view`: part `part` of [`ViewParts::len`].
    pub fn push_view_part(&mut self, view: &ViewParts<'_>, part: usize) -> Result<(), PacketError> {
        let bad = PacketError::LengthMismatch("view part outside the view");
        let plan = view.plans.get(part).ok_or(bad)?;
        let members = view.members.get(plan.members.clone()).ok_or(bad)?;
        let mut heads = Vec::with_capacity(plan.groups.len());
        let mut slices = Vec::with_capacity(plan.groups.len());
        for (g, range) in &plan.groups {
            let (id, entries) = view.groups.get(*g).ok_or(bad)?;
            slices.push(entries.get(range.clone()).ok_or(bad)?);
            heads.push(ViewGroupSlice {
                group: *id,
                total: u32::try_from(entries.len()).map_err(|_| bad)?,
                start: u32::try_from(range.start).map_err(|_| bad)?,
                count: 0,
                reserved: 0,
            });
        }
        let header = ViewPartHeader {
            counter: view.counter,
            coordinator: view.coordinator,
            coordinator_incarnation: view.coordinator_incarnation,
            part: u32::try_from(part).map_err(|_| bad)?,
            parts: u32::try_from(view.plans.len()).map_err(|_| bad)?,
            members: u32::try_from(view.members.len()).map_err(|_| bad)?,
            groups: u32::try_from(view.groups.len()).map_err(|_| bad)?,
            member_start: u32::try_from(plan.members.start).map_err(|_| bad)?,
            member_count: 0,
            group_slices: 0,
            witness: NO_WITNESS,
        };
        let gs: Vec<(ViewGroupSlice, &[ViewGroupMember])> = heads.into_iter().zip(slices).collect();
        self.push_view_part_raw(&header, members, &gs)
    }

    /// A view part as given: `header` with its `member_count`, `group_slices` and the
    /// slices' `count` set from the slices' lengths; nothing else is checked (the decoder
    /// checks it all).
    pub fn push_view_part_raw(
        &mut self,
        header: &ViewPartHeader,
        members: &[MemberEntry],
        groups: &[(ViewGroupSlice, &[ViewGroupMember])],
    ) -> Result<(), PacketError> {
        let bad = PacketError::LengthMismatch("view part larger than u32 counts");
        let mut header = *header;
        header.member_count = u32::try_from(members.len()).map_err(|_| bad)?;
        header.group_slices = u32::try_from(groups.len()).map_err(|_| bad)?;
        let mut heads = Vec::with_capacity(groups.len());
        for (h, entries) in groups {
            let mut h = *h;
            h.count = u32::try_from(entries.len()).map_err(|_| bad)?;
            heads.push(h);
        }
        let mut parts: Vec<&[u8]> = Vec::with_capacity(2 + 2 * groups.len());
        parts.push(bytemuck::bytes_of(&header));
        parts.push(bytemuck::cast_slice(members));
        for (h, (_, entries)) in heads.iter().zip(groups) {
            parts.push(bytemuck::bytes_of(h));
            parts.push(bytemuck::cast_slice(entries));
        }
        self.push(MessageKind::View, 0, &parts)
    }

    /// A view request for `header`'s view: the whole view when `parts` is empty, else the
    /// listed parts. `header.count` is set from `parts`; nothing else is checked (the
    /// decoder checks it all).
    pub fn push_view_request(
        &mut self,
        header: &ViewRequestHeader,
        parts: &[u32],
    ) -> Result<(), PacketError> {
        let mut header = *header;
        header.count = u32::try_from(parts.len())
            .map_err(|_| PacketError::LengthMismatch("view request larger than u32 counts"))?;
        self.push(
            MessageKind::ViewRequest,
            0,
            &[bytemuck::bytes_of(&header), bytemuck::cast_slice(parts)],
        )
    }

    /// A view part whose message body [`view_part_body`] encoded (to encode a view once and
    /// serve its parts many times), naming `witness` ([`ViewPartHeader::witness`]).
    pub fn push_view_body(&mut self, body: &[u8], witness: u32) -> Result<(), PacketError> {
        const AT: usize = core::mem::offset_of!(ViewPartHeader, witness);
        let (Some(head), Some(tail)) = (body.get(..AT), body.get(AT + 4..)) else {
            return Err(PacketError::LengthMismatch(
                "view part body shorter than its header",
            ));
        };
        self.push(MessageKind::View, 0, &[head, &witness.to_le_bytes(), tail])
    }

    pub fn push_group_join(&mut self, group: u64, stream: u32) -> Result<(), PacketError> {
        let change = GroupChange {
            group,
            stream,
            reserved: 0,
        };
        self.push(MessageKind::GroupJoin, 0, &[bytemuck::bytes_of(&change)])
    }

    /// Appends a flow-control status (`window` must be at least 1: the decoder refuses 0).
    pub fn push_flow_status(&mut self, status: &FlowStatus) -> Result<(), PacketError> {
        self.push(MessageKind::FlowStatus, 0, &[bytemuck::bytes_of(status)])
    }

    pub fn push_group_leave(&mut self, group: u64) -> Result<(), PacketError> {
        let change = GroupChange {
            group,
            stream: 0,
            reserved: 0,
        };
        self.push(MessageKind::GroupLeave, 0, &[bytemuck::bytes_of(&change)])
    }
}

impl Encoder<'_> {
    /// Appends one fragment of an ordered group's message.
    pub fn push_ordered(&mut self, header: &OrderedHeader, bytes: &[u8]) -> Result<(), PacketError> {
        header.check(bytes.len())?;
        self.push(MessageKind::Ordered, 0, &[bytemuck::bytes_of(header), bytes])
    }
}

/// What an ordered group's message carries (the body after reassembly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OrderedKind {
    /// A minitransaction message for the group's memory node (a request from a member's
    /// coordinator, or replication between primary and backup): [`OrderedLayout`] then the
    /// `tutti_wire::minitx` message (the layout lets a memory-node host create the
    /// group's regions on first contact).
    ToMemnode = 1,
    /// A minitransaction answer for a member's coordinator: the `tutti_wire::minitx` message.
    ToMember = 2,
    /// A payload disseminated to the group: [`OrderedPayloadHeader`] then the bytes.
    Payload = 3,
    /// A state transfer for a joiner (opaque to the wire).
    Transfer = 4,
    /// Payloads of one sender's consecutive seqs, disseminated together (one message, one
    /// datagram, where `Payload` takes one message each): [`OrderedPayloadHeader`] naming
    /// the first, then per payload its length (u32) and its bytes ([`PayloadRun`]).
    PayloadRun = 5,
    /// A member's progress, told straight to the others of its view: [`OrderedHeld`]. The
    /// same facts as its progress slot on the memory node, sooner (no write and read back).
    Held = 6,
    /// Where is the group's memory node? Asked by a node about to join a `majority` group
    /// it has never placed (it may have come into the cluster after the group was placed,
    /// so its own view would place it elsewhere). Empty body.
    Locate = 7,
    /// The answer to `Locate`: [`OrderedPlacement`], the group's placement as the answering
    /// node holds it, or that it holds none (epoch 0).
    Placement = 8,
    /// List entries the memory node's backup holds, pushed by the backup's node to the
    /// group's members as it applies them: [`OrderedCommitted`] then whole entries. An
    /// entry the backup holds is committed, so a member learns it a hop before the
    /// primary's answer or a read would tell it.
    Committed = 9,
}

impl OrderedKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::ToMemnode,
            2 => Self::ToMember,
            3 => Self::Payload,
            4 => Self::Transfer,
            5 => Self::PayloadRun,
            6 => Self::Held,
            7 => Self::Locate,
            8 => Self::Placement,
            9 => Self::Committed,
            _ => return None,
        })
    }
}

/// Largest ordered message (reassembled): a minitransaction message with its layout.
pub const MAX_ORDERED_MESSAGE: usize = crate::minitx::MAX_MESSAGE + core::mem::size_of::<OrderedLayout>();
/// Most fragments of one ordered message.
pub const MAX_ORDERED_FRAGMENTS: u16 = 4096;

/// Fragment header of an ordered group's message. A message of `count` fragments is carried
/// by `count` `Ordered` messages with the same `(from, group, msg)`; every fragment but the
/// last carries the same number of bytes, so fragment `index` starts at `index * that`.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct OrderedHeader {
    pub group: u64,
    /// The sender's message number (per sender, wraps): the reassembly key.
    pub msg: u32,
    /// Length of the whole message.
    pub total: u32,
    pub index: u16,
    pub count: u16,
    pub kind: u8,
    pub reserved: [u8; 3],
}

/// Size of [`OrderedHeader`].
pub const ORDERED_HEADER_LEN: usize = core::mem::size_of::<OrderedHeader>();

impl OrderedHeader {
    /// The header of message `msg` of `group` sent whole, in one fragment of `len` bytes.
    pub fn whole(group: u64, msg: u32, kind: OrderedKind, len: u32) -> Self {
        Self {
            group,
            msg,
            total: len,
            index: 0,
            count: 1,
            kind: kind as u8,
            reserved: [0; 3],
        }
    }

    /// Validates the header for a fragment of `len` bytes; returns its kind.
    pub fn check(&self, len: usize) -> Result<OrderedKind, PacketError> {
        if self.reserved != [0; 3] {
            return Err(PacketError::ReservedNonZero);
        }
        let kind = OrderedKind::from_u8(self.kind).ok_or(PacketError::UnknownKind(self.kind))?;
        let total = self.total as usize;
        if total > MAX_ORDERED_MESSAGE {
            return Err(PacketError::LengthMismatch(
                "ordered message larger than its maximum",
            ));
        }
        if self.count == 0 || self.count > MAX_ORDERED_FRAGMENTS || self.index >= self.count {
            return Err(PacketError::LengthMismatch(
                "ordered fragment index outside count",
            ));
        }
        if len > total {
            return Err(PacketError::LengthMismatch(
                "ordered fragment longer than its message",
            ));
        }
        if self.count == 1 && len != total {
            return Err(PacketError::LengthMismatch(
                "whole ordered message of the wrong length",
            ));
        }
        Ok(kind)
    }
}

/// The layout fields of an ordered group (`tutti_proto::ordered::OrderedSettings`): every
/// member and the memory node must agree on them.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct OrderedLayout {
    pub list_slots: u32,
    pub max_members: u32,
    pub queue_slots: u32,
    pub max_payload: u32,
}

/// Header of an ordered payload: `(sender, epoch, seq)` names the message.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct OrderedPayloadHeader {
    pub sender: u32,
    pub epoch: u64,
    pub seq: u64,
}

impl OrderedPayloadHeader {
    /// Bytes of the header on the wire.
    pub const SIZE: usize = core::mem::size_of::<OrderedPayloadHeader>();
}

/// A `Held` message: what the sending member has learned and holds in the list its memory
/// node `memnode` keeps (`tutti_proto::ordered` names an `evs` list epoch's memory node
/// after the epoch), as a member of the view since `join_pos`.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct OrderedHeld {
    pub memnode: u16,
    pub reserved: [u8; 6],
    pub join_pos: u64,
    pub learned: u64,
    pub held: u64,
}

impl OrderedHeld {
    /// Bytes of the message on the wire.
    pub const SIZE: usize = core::mem::size_of::<OrderedHeld>();

    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        bytemuck::cast(*self)
    }

    /// Decodes a reassembled `Held` message: exactly its size, reserved bytes zero, and
    /// `held <= learned` (a member holds only entries it learned).
    pub fn decode(bytes: &[u8]) -> Result<OrderedHeld, PacketError> {
        let (h, rest) = take::<OrderedHeld>(bytes)?;
        if !rest.is_empty() {
            return Err(PacketError::LengthMismatch("held message longer than its size"));
        }
        if h.reserved != [0; 6] {
            return Err(PacketError::ReservedNonZero);
        }
        if h.held > h.learned {
            return Err(PacketError::LengthMismatch("held past learned"));
        }
        Ok(h)
    }
}

/// Bytes of one list entry in a `Committed` message (`tutti_proto::ordered::ENTRY_BYTES`).
pub const COMMITTED_ENTRY_BYTES: usize = 32;
/// Most entries one `Committed` message carries (it fits one datagram unfragmented).
pub const MAX_COMMITTED_ENTRIES: usize = 24;

/// A `Committed` message: the backup replica of memory node `memnode` (placement `epoch`)
/// holds the list up to `tail` (exclusive), or, in an `evs` group, the primary of list
/// epoch `epoch` (`number << 32 | founder`) on its founder applied it; the entries that
/// follow are positions `first`, `first + 1`, ... (at most [`MAX_COMMITTED_ENTRIES`], all
/// below `tail`).
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct OrderedCommitted {
    pub memnode: u16,
    pub reserved: [u8; 6],
    pub epoch: u64,
    pub tail: u64,
    pub first: u64,
}

impl OrderedCommitted {
    /// Bytes of the header on the wire.
    pub const SIZE: usize = core::mem::size_of::<OrderedCommitted>();

    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        bytemuck::cast(*self)
    }
}

/// Splits a reassembled `Committed` message into its header and its entries' bytes: whole
/// entries, at most [`MAX_COMMITTED_ENTRIES`], none at or past `tail`, reserved bytes zero.
pub fn split_committed(bytes: &[u8]) -> Result<(OrderedCommitted, &[u8]), PacketError> {
    let (h, rest) = take::<OrderedCommitted>(bytes)?;
    if h.reserved != [0; 6] {
        return Err(PacketError::ReservedNonZero);
    }
    if rest.len() % COMMITTED_ENTRY_BYTES != 0 {
        return Err(PacketError::LengthMismatch("committed entries not whole"));
    }
    let count = rest.len() / COMMITTED_ENTRY_BYTES;
    if count > MAX_COMMITTED_ENTRIES {
        return Err(PacketError::LengthMismatch(
            "more committed entries than a message carries",
        ));
    }
    let (first, tail) = (h.first, h.tail);
    if first.checked_add(count as u64).is_none_or(|end| end > tail) {
        return Err(PacketError::LengthMismatch("committed entries past the tail"));
    }
    Ok((h, rest))
}

/// A `Placement` message: where a group's memory node runs, as the answering node holds it:
/// its primary, its backup (`has_backup` 1) and the placement's epoch (placements start at 1,
/// each failover adds one). Epoch 0, with every other field 0: the answering node has not
/// placed the group.
#[repr(C, packed)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct OrderedPlacement {
    pub primary: u32,
    pub backup: u32,
    pub has_backup: u8,
    pub reserved: [u8; 7],
    pub epoch: u64,
}

impl OrderedPlacement {
    /// Bytes of the message on the wire.
    pub const SIZE: usize = core::mem::size_of::<OrderedPlacement>();

    /// The answer of a node that has not placed the group.
    pub const UNKNOWN: OrderedPlacement = OrderedPlacement {
        primary: 0,
        backup: 0,
        has_backup: 0,
        reserved: [0; 7],
        epoch: 0,
    };

    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        bytemuck::cast(*self)
    }

    /// Decodes a reassembled `Placement` message: exactly its size, reserved bytes zero,
    /// `has_backup` 0 or 1 (the backup 0 without one), a backup other than the primary; epoch
    /// 0 only with every field 0.
    pub fn decode(bytes: &[u8]) -> Result<OrderedPlacement, PacketError> {
        let (p, rest) = take::<OrderedPlacement>(bytes)?;
        if !rest.is_empty() {
            return Err(PacketError::LengthMismatch(
                "placement message longer than its size",
            ));
        }
        if p.reserved != [0; 7] {
            return Err(PacketError::ReservedNonZero);
        }
        let (primary, backup, epoch) = (p.primary, p.backup, p.epoch);
        let consistent = match p.has_backup {
            0 => backup == 0,
            1 => backup != primary,
            _ => false,
        };
        let unknown = epoch == 0 && (primary, backup, p.has_backup) != (0, 0, 0);
        if !consistent || unknown {
            return Err(PacketError::LengthMismatch("placement fields inconsistent"));
        }
        Ok(p)
    }
}

/// A `ToMemnode` message: the layout, then the minitransaction message.
pub fn memnode_message(layout: &OrderedLayout, msg: &[u8]) -> Vec<u8> {
    [bytemuck::bytes_of(layout), msg].concat()
}

/// A `Payload` message: the header, then the payload.
pub fn ordered_payload(header: &OrderedPayloadHeader, payload: &[u8]) -> Vec<u8> {
    [bytemuck::bytes_of(header), payload].concat()
}

/// Splits a reassembled `ToMemnode` message into its layout and minitransaction bytes.
pub fn split_memnode_message(bytes: &[u8]) -> Result<(OrderedLayout, &[u8]), PacketError> {
    take::<OrderedLayout>(bytes)
}

/// Splits a reassembled `Payload` message into its header and payload bytes.
pub fn split_ordered_payload(bytes: &[u8]) -> Result<(OrderedPayloadHeader, &[u8]), PacketError> {
    take::<OrderedPayloadHeader>(bytes)
}

/// Bytes before each payload of a `PayloadRun`: its length.
pub const PAYLOAD_RUN_ITEM_LEN: usize = 4;

/// Starts a `PayloadRun` message in `out` (cleared): the header naming its first payload.
pub fn start_payload_run(out: &mut Vec<u8>, header: &OrderedPayloadHeader) {
    out.clear();
    out.extend_from_slice(bytemuck::bytes_of(header));
}

/// Appends the next payload (the next seq) to a `PayloadRun` message.
pub fn push_payload_run(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The payloads of a validated `PayloadRun` message, in seq order (from the header's `seq`).
#[derive(Debug, Clone)]
pub struct PayloadRun<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for PayloadRun<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        // Validated whole by `split_payload_run`: a short tail cannot occur, and ends the
        // walk if it did.
        let len = self.rest.get(..PAYLOAD_RUN_ITEM_LEN)?;
        let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
        let end = PAYLOAD_RUN_ITEM_LEN.checked_add(len)?;
        let item = self.rest.get(PAYLOAD_RUN_ITEM_LEN..end)?;
        self.rest = self.rest.get(end..)?;
        Some(item)
    }
}

/// Splits a reassembled `PayloadRun` message into its header and its payloads; refuses a
/// run that is empty or whose lengths do not tile its bytes exactly.
pub fn split_payload_run(bytes: &[u8]) -> Result<(OrderedPayloadHeader, PayloadRun<'_>), PacketError> {
    let (header, mut rest) = take::<OrderedPayloadHeader>(bytes)?;
    let run = PayloadRun { rest };
    if rest.is_empty() {
        return Err(PacketError::LengthMismatch("empty payload run"));
    }
    while !rest.is_empty() {
        let len = rest
            .get(..PAYLOAD_RUN_ITEM_LEN)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or(PacketError::LengthMismatch("payload run item header cut short"))?;
        rest = PAYLOAD_RUN_ITEM_LEN
            .checked_add(len as usize)
            .and_then(|end| rest.get(end..))
            .ok_or(PacketError::LengthMismatch(
                "payload run item longer than the run",
            ))?;
    }
    Ok((header, run))
}

/// Size of [`ViewPartHeader`].
pub const VIEW_PART_HEADER_LEN: usize = core::mem::size_of::<ViewPartHeader>();
/// Size of [`ViewRequestHeader`].
pub const VIEW_REQUEST_HEADER_LEN: usize = core::mem::size_of::<ViewRequestHeader>();
/// Size of [`ViewGroupSlice`].
pub const VIEW_GROUP_SLICE_LEN: usize = core::mem::size_of::<ViewGroupSlice>();

/// What one part of a view carries: a range of the member list, and per group (by its
/// index in the view's group list) a range of its member entries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ViewPartPlan {
    pub members: core::ops::Range<usize>,
    pub groups: Vec<(usize, core::ops::Range<usize>)>,
}

impl ViewPartPlan {
    /// Body size of the part's message.
    pub fn body_len(&self) -> usize {
        VIEW_PART_HEADER_LEN
            + self.members.len() * core::mem::size_of::<MemberEntry>()
            + self
                .groups
                .iter()
                .map(|(_, r)| VIEW_GROUP_SLICE_LEN + r.len() * core::mem::size_of::<ViewGroupMember>())
                .sum::<usize>()
    }
}

/// Splits a view of `members` members and groups of `group_sizes` member entries into
/// parts whose message bodies are at most `max_body` bytes each: members first, in
/// order, then the groups in order, a group continuing into the next part when it does
/// not fit. Every part carries at least one entry (except the single part of an empty
/// view), so any view splits. For datagrams of `max_datagram` bytes holding one part
/// each, `max_body = max_datagram - DATAGRAM_HEADER_LEN - MESSAGE_HEADER_LEN`.
pub fn plan_view_parts(
    members: usize,
    group_sizes: &[usize],
    max_body: usize,
) -> Result<Vec<ViewPartPlan>, PacketError> {
    const ENTRY: usize = core::mem::size_of::<ViewGroupMember>();
    const MEMBER: usize = core::mem::size_of::<MemberEntry>();
    let min = VIEW_PART_HEADER_LEN + VIEW_GROUP_SLICE_LEN + MEMBER.max(ENTRY);
    if max_body < min {
        return Err(PacketError::BufferFull {
            needed: min,
            available: max_body,
        });
    }
    if u32::try_from(members).is_err() || u32::try_from(group_sizes.len()).is_err() {
        return Err(PacketError::LengthMismatch("view larger than u32 counts"));
    }
    if group_sizes.iter().any(|&n| n > members) {
        return Err(PacketError::LengthMismatch("group larger than the view"));
    }
    let mut plans = Vec::new();
    let (mut m, mut g, mut off) = (0usize, 0usize, 0usize);
    loop {
        let mut room = max_body - VIEW_PART_HEADER_LEN;
        let take_m = (members - m).min(room / MEMBER);
        let mut plan = ViewPartPlan {
            members: m..m + take_m,
            groups: Vec::new(),
        };
        m += take_m;
        room -= take_m * MEMBER;
        while let Some(&size) = group_sizes.get(g) {
            let left = size - off;
            if room < VIEW_GROUP_SLICE_LEN + if left > 0 { ENTRY } else { 0 } {
                break;
            }
            let k = left.min((room - VIEW_GROUP_SLICE_LEN) / ENTRY);
            plan.groups.push((g, off..off + k));
            room -= VIEW_GROUP_SLICE_LEN + k * ENTRY;
            off += k;
            if off < size {
                break;
            }
            g += 1;
            off = 0;
        }
        plans.push(plan);
        if m == members && g == group_sizes.len() {
            break;
        }
    }
    if u32::try_from(plans.len()).is_err() {
        return Err(PacketError::LengthMismatch("view needs more than u32 parts"));
    }
    Ok(plans)
}

/// A view to send in parts: its id, members and groups (per group its id and members:
/// indices into `members`, and streams), and how it splits.
#[derive(Debug, Clone)]
pub struct ViewParts<'v> {
    pub counter: u64,
    pub coordinator: u32,
    pub coordinator_incarnation: u32,
    pub members: &'v [MemberEntry],
    pub groups: &'v [(u64, &'v [ViewGroupMember])],
    plans: Vec<ViewPartPlan>,
}

impl<'v> ViewParts<'v> {
    /// Split the view into parts of message bodies within `max_body` bytes (see
    /// [`plan_view_parts`]).
    pub fn new(
        counter: u64,
        (coordinator, coordinator_incarnation): (u32, u32),
        members: &'v [MemberEntry],
        groups: &'v [(u64, &'v [ViewGroupMember])],
        max_body: usize,
    ) -> Result<Self, PacketError> {
        let sizes: Vec<usize> = groups.iter().map(|(_, e)| e.len()).collect();
        let plans = plan_view_parts(members.len(), &sizes, max_body)?;
        Ok(Self {
            counter,
            coordinator,
            coordinator_incarnation,
            members,
            groups,
            plans,
        })
    }
    /// Number of parts.
    pub fn len(&self) -> usize {
        self.plans.len()
    }
    pub fn is_empty(&self) -> bool {
        self.plans.is_empty()
    }
    /// Body size of part `part`'s message.
    pub fn body_len(&self, part: usize) -> usize {
        self.plans.get(part).map_or(0, ViewPartPlan::body_len)
    }
}

/// The message body of part `part` of `view` (what [`Encoder::push_view_part`] writes after
/// the message header), for [`Encoder::push_view_body`].
pub fn view_part_body(view: &ViewParts<'_>, part: usize) -> Result<Vec<u8>, PacketError> {
    let len = DATAGRAM_HEADER_LEN + MESSAGE_HEADER_LEN + view.body_len(part);
    let mut buf = vec![0u8; len];
    let mut e = Encoder::new(&mut buf, 0, 0)?;
    e.push_view_part(view, part)?;
    let n = e.len();
    Ok(buf
        .get(DATAGRAM_HEADER_LEN + MESSAGE_HEADER_LEN..n)
        .unwrap_or_default()
        .to_vec())
}

/// Encoded size of a data message that starts a message of its own (not continuing a
/// run): a run of one for a whole message, a `Data` message for a fragment.
pub fn data_len_alone(header: &DataHeader, payload: usize) -> usize {
    if is_whole(header) {
        MESSAGE_HEADER_LEN + RUN_HEADER_LEN + varint_len(payload) + payload
    } else {
        data_message_len(payload)
    }
}

/// Encoded size of a `Data` message (message header + data header + payload): the largest
/// a data message of `payload` bytes takes, a fragment or not.
pub const fn data_message_len(payload: usize) -> usize {
    MESSAGE_HEADER_LEN + core::mem::size_of::<DataHeader>() + payload
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An owned message, for round-trip tests.
    #[derive(Debug, Clone, PartialEq)]
    enum Owned {
        Data(DataHeader, bool, Vec<u8>),
        Digest(DigestHeader, Vec<DigestEntry>),
        Request(RequestHeader, Vec<RequestEntry>),
        Heartbeats(HeartbeatHeader, Vec<HeartbeatEntry>),
        View(
            ViewPartHeader,
            Vec<MemberEntry>,
            Vec<(ViewGroupSlice, Vec<ViewGroupMember>)>,
        ),
        ViewRequest(ViewRequestHeader, Vec<u32>),
        Join(u64, u32),
        Leave(u64),
        Ordered(OrderedHeader, Vec<u8>),
        Status(FlowStatus),
    }

    /// The messages a decoded message stands for (a run: one per message in it).
    fn owned(m: Message<'_>) -> Vec<Owned> {
        if let Message::DataRun { retransmit, messages } = m {
            return messages
                .iter()
                .map(|(h, p)| Owned::Data(h, retransmit, p.to_vec()))
                .collect();
        }
        vec![owned_one(m)]
    }

    fn owned_one(m: Message<'_>) -> Owned {
        match m {
            Message::DataRun { .. } => unreachable!("flattened by owned"),
            Message::Data {
                header,
                retransmit,
                payload,
            } => Owned::Data(header, retransmit, payload.to_vec()),
            Message::Digest { header, entries } => Owned::Digest(header, entries.iter().collect()),
            Message::Request { header, entries } => Owned::Request(header, entries.iter().collect()),
            Message::Heartbeats { header, entries } => Owned::Heartbeats(header, entries.iter().collect()),
            Message::View {
                header,
                members,
                groups,
            } => Owned::View(
                header,
                members.iter().collect(),
                groups.iter().map(|(h, i)| (h, i.iter().collect())).collect(),
            ),
            Message::ViewRequest { header, parts } => Owned::ViewRequest(header, parts.iter().collect()),
            Message::GroupJoin(g) => Owned::Join(g.group, g.stream),
            Message::GroupLeave(g) => Owned::Leave(g.group),
            Message::Ordered { header, kind, bytes } => {
                assert_eq!(kind as u8, header.kind);
                Owned::Ordered(header, bytes.to_vec())
            }
            Message::FlowStatus(s) => Owned::Status(s),
        }
    }

    fn push(enc: &mut Encoder<'_>, m: &Owned) -> Result<(), PacketError> {
        match m {
            Owned::Data(h, r, p) => enc.push_data(h, *r, p),
            Owned::Digest(h, e) => enc.push_digest(h, e),
            Owned::Request(h, e) => enc.push_request(h, e),
            Owned::Heartbeats(h, e) => enc.push_heartbeats(h, e),
            Owned::View(h, m, g) => {
                let gs: Vec<(ViewGroupSlice, &[ViewGroupMember])> =
                    g.iter().map(|(a, b)| (*a, b.as_slice())).collect();
                enc.push_view_part_raw(h, m, &gs)
            }
            Owned::ViewRequest(h, p) => enc.push_view_request(h, p),
            Owned::Join(g, s) => enc.push_group_join(*g, *s),
            Owned::Leave(g) => enc.push_group_leave(*g),
            Owned::Ordered(h, b) => enc.push_ordered(h, b),
            Owned::Status(st) => enc.push_flow_status(st),
        }
    }

    fn arb_ordered() -> impl Strategy<Value = Owned> {
        (
            any::<(u64, u32)>(),
            1u8..=5,
            1u16..6,
            proptest::collection::vec(any::<u8>(), 0..200),
            0usize..300,
        )
            .prop_flat_map(|((group, msg), kind, count, bytes, extra)| {
                (0..count).prop_map(move |index| {
                    let total = if count == 1 {
                        bytes.len()
                    } else {
                        bytes.len() + extra
                    };
                    Owned::Ordered(
                        OrderedHeader {
                            group,
                            msg,
                            total: total as u32,
                            index,
                            count,
                            kind,
                            reserved: [0; 3],
                        },
                        bytes.clone(),
                    )
                })
            })
    }

    #[test]
    fn ordered_headers_are_validated() {
        let good = OrderedHeader::whole(1, 2, OrderedKind::Payload, 10);
        assert_eq!(good.check(10), Ok(OrderedKind::Payload));
        assert!(matches!(good.check(9), Err(PacketError::LengthMismatch(_))));
        let bad_kind = OrderedHeader { kind: 10, ..good };
        assert_eq!(bad_kind.check(10), Err(PacketError::UnknownKind(10)));
        let bad_index = OrderedHeader { index: 1, ..good };
        assert!(matches!(bad_index.check(10), Err(PacketError::LengthMismatch(_))));
        let too_long = OrderedHeader {
            total: MAX_ORDERED_MESSAGE as u32 + 1,
            count: 2,
            ..good
        };
        assert!(matches!(too_long.check(10), Err(PacketError::LengthMismatch(_))));
        let reserved = OrderedHeader {
            reserved: [0, 1, 0],
            ..good
        };
        assert_eq!(reserved.check(10), Err(PacketError::ReservedNonZero));
        let mut buf = vec![0u8; 256];
        let mut enc = Encoder::new(&mut buf, 1, 1).unwrap();
        assert!(enc.push_ordered(&bad_kind, &[0; 10]).is_err());
        assert!(enc.is_empty());
        assert!(split_ordered_payload(&[0; 19]).is_err());
        let (h, rest) = split_ordered_payload(&[1; 23]).unwrap();
        assert_eq!(({ h.sender }, rest.len()), (0x0101_0101, 3));
    }

    fn arb_message() -> impl Strategy<Value = Owned> {
        let data = (
            any::<(u64, u64, u32, u32, u32, u32)>(),
            1u16..8,
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..200),
        )
            .prop_flat_map(|((g, s, snd, stream, ret, session), fc, r, p)| {
                (0..fc).prop_map(move |fi| {
                    Owned::Data(
                        DataHeader {
                            group: g,
                            seq: s,
                            sender: snd,
                            stream,
                            retained: ret,
                            session,
                            frag_index: fi,
                            frag_count: fc,
                        },
                        r,
                        p.clone(),
                    )
                })
            });
        let digest = (
            any::<(u64, u32)>(),
            proptest::collection::vec(any::<(u32, u32, u64, u64, u64)>(), 0..20),
        )
            .prop_map(|((g, r), e)| {
                Owned::Digest(
                    DigestHeader {
                        group: g,
                        round: r,
                        reserved: 0,
                    },
                    e.into_iter()
                        .map(|(a, b, c, d, f)| DigestEntry {
                            sender: a,
                            stream: b,
                            low: c,
                            contiguous: d,
                            high: f,
                            recent: c / 2,
                        })
                        .collect(),
                )
            });
        let request = (
            any::<(u64, u32)>(),
            proptest::collection::vec(any::<(u32, u32, u64, u32, u16)>(), 0..20),
        )
            .prop_map(|((g, r), e)| {
                Owned::Request(
                    RequestHeader {
                        group: g,
                        round: r,
                        reserved: 0,
                    },
                    e.into_iter()
                        .map(|(a, b, c, d, f)| RequestEntry {
                            sender: a,
                            stream: b,
                            first: c,
                            count: d,
                            frag: u32::from(f),
                        })
                        .collect(),
                )
            });
        let hb = (
            any::<(u64, u32, u32, u64)>(),
            proptest::collection::vec(any::<(u32, u32, u32, u32)>(), 0..30),
        )
            .prop_map(|((a, b, c, d), e)| {
                Owned::Heartbeats(
                    HeartbeatHeader {
                        view_counter: a,
                        view_coordinator: b,
                        view_coordinator_incarnation: c,
                        max_counter: d,
                        view_hash: 0,
                    },
                    e.into_iter()
                        .map(|(n, i, h, f)| HeartbeatEntry {
                            node: n,
                            incarnation: i,
                            heartbeat: h,
                            flags: f,
                        })
                        .collect(),
                )
            });
        let view = (
            any::<(u64, u32, u32)>(),
            (1u32..5, any::<u32>(), 0u32..30, 0u32..5),
            proptest::collection::vec(any::<(u32, u32)>(), 0..20),
            proptest::collection::vec(
                (
                    any::<u64>(),
                    any::<(u32, u32)>(),
                    proptest::collection::vec(any::<(u32, u32)>(), 0..10),
                ),
                0..4,
            ),
        )
            .prop_map(|((c, co, ci), (parts, part, start, extra), m, g)| {
                let total = start + m.len() as u32 + extra + 1;
                let groups: Vec<(ViewGroupSlice, Vec<ViewGroupMember>)> = g
                    .into_iter()
                    .map(|(id, (gstart, gextra), idx)| {
                        let count = idx.len() as u32;
                        let gstart = gstart % (total - count.min(total) + 1);
                        let members: Vec<ViewGroupMember> = idx
                            .into_iter()
                            .map(|(i, stream)| ViewGroupMember {
                                index: i % total,
                                stream,
                            })
                            .collect();
                        let gtotal = (gstart + count + gextra % 3).min(total);
                        let slice = ViewGroupSlice {
                            group: id,
                            total: gtotal,
                            start: gstart,
                            count,
                            reserved: 0,
                        };
                        (slice, members)
                    })
                    .filter(|(h, _)| h.start + h.count <= h.total)
                    .collect();
                Owned::View(
                    ViewPartHeader {
                        counter: c,
                        coordinator: co,
                        coordinator_incarnation: ci,
                        part: part % parts,
                        parts,
                        members: total,
                        groups: groups.len() as u32 + extra % 3,
                        member_start: start,
                        member_count: m.len() as u32,
                        group_slices: groups.len() as u32,
                        witness: ci,
                    },
                    m.into_iter()
                        .map(|(node, incarnation)| MemberEntry {
                            node,
                            incarnation,
                            addr: u64::from(node) << 16 | 7400,
                        })
                        .collect(),
                    groups,
                )
            });
        prop_oneof![
            data,
            digest,
            request,
            hb,
            view,
            (
                any::<(u64, u32, u32, u64)>(),
                proptest::collection::btree_set(0u32..200, 0..=MAX_VIEW_REQUEST_PARTS)
            )
                .prop_map(|((counter, coordinator, coordinator_incarnation, hash), set)| {
                    let parts: Vec<u32> = set.into_iter().collect();
                    Owned::ViewRequest(
                        ViewRequestHeader {
                            counter,
                            coordinator,
                            coordinator_incarnation,
                            hash,
                            parts: if parts.is_empty() { 0 } else { 200 },
                            count: parts.len() as u32,
                        },
                        parts,
                    )
                }),
            any::<(u64, u32)>().prop_map(|(g, s)| Owned::Join(g, s)),
            any::<u64>().prop_map(Owned::Leave),
            arb_ordered(),
            (any::<(u64, u32, u32, u64)>(), 1u32.., any::<(u32, u32, u32)>()).prop_map(
                |((group, sender, stream, consumed), window, (gaps, holder, members))| Owned::Status(
                    FlowStatus {
                        group,
                        sender,
                        stream,
                        consumed,
                        window,
                        gaps,
                        holder,
                        members,
                    }
                )
            ),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(from: u32, inc: u32, msgs in proptest::collection::vec(arb_message(), 0..8)) {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            let mut enc = Encoder::new(&mut buf, from, inc).unwrap();
            for m in &msgs {
                push(&mut enc, m).unwrap();
            }
            let len = enc.len();
            let d = decode(&buf[..len]).unwrap();
            prop_assert_eq!(d.header.from, from);
            prop_assert_eq!(d.header.incarnation, inc);
            prop_assert_eq!(usize::from(d.header.count), d.messages().count());
            let back: Vec<Owned> = d.messages().flat_map(owned).collect();
            prop_assert_eq!(back, msgs);
        }

        #[test]
        fn payload_runs_round_trip(
            sender: u32,
            epoch: u64,
            seq: u64,
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..80), 1..20),
        ) {
            let header = OrderedPayloadHeader { sender, epoch, seq };
            let mut run = vec![7u8; 3];
            start_payload_run(&mut run, &header);
            for p in &payloads {
                push_payload_run(&mut run, p);
            }
            let (h, items) = split_payload_run(&run).unwrap();
            prop_assert_eq!(h, header);
            prop_assert_eq!(items.collect::<Vec<_>>(), payloads.iter().map(Vec::as_slice).collect::<Vec<_>>());
            // One byte short: the last item is cut (its bytes or its length): refused.
            prop_assert!(split_payload_run(&run[..run.len() - 1]).is_err());
        }

        #[test]
        fn held_messages_round_trip(memnode: u16, join_pos: u64, learned: u64, held: u64, cut in 1usize..OrderedHeld::SIZE) {
            let h = OrderedHeld { memnode, reserved: [0; 6], join_pos, learned: learned.max(held), held };
            let bytes = h.to_bytes();
            prop_assert_eq!(OrderedHeld::decode(&bytes), Ok(h));
            prop_assert!(OrderedHeld::decode(&bytes[..cut]).is_err());
            prop_assert!(OrderedHeld::decode(&[&bytes[..], &[0]].concat()).is_err());
            if held < u64::MAX {
                let past = OrderedHeld { learned: held, held: held + 1, ..h };
                prop_assert!(OrderedHeld::decode(&past.to_bytes()).is_err());
            }
        }

        #[test]
        fn placement_messages_round_trip(primary: u32, backup: Option<u32>, epoch in 1u64.., cut in 1usize..OrderedPlacement::SIZE) {
            let backup = backup.filter(|&b| b != primary);
            let p = OrderedPlacement {
                primary,
                backup: backup.unwrap_or(0),
                has_backup: u8::from(backup.is_some()),
                reserved: [0; 7],
                epoch,
            };
            let bytes = p.to_bytes();
            prop_assert_eq!(OrderedPlacement::decode(&bytes), Ok(p));
            prop_assert!(OrderedPlacement::decode(&bytes[..cut]).is_err());
            prop_assert!(OrderedPlacement::decode(&[&bytes[..], &[0]].concat()).is_err());
            let unknown_with_hosts = OrderedPlacement { epoch: 0, primary: primary | 1, ..p };
            prop_assert!(OrderedPlacement::decode(&unknown_with_hosts.to_bytes()).is_err());
            prop_assert_eq!(OrderedPlacement::decode(&OrderedPlacement::UNKNOWN.to_bytes()), Ok(OrderedPlacement::UNKNOWN));
            let bad_flag = OrderedPlacement { has_backup: 2, ..p };
            prop_assert!(OrderedPlacement::decode(&bad_flag.to_bytes()).is_err());
            let backup_is_primary = OrderedPlacement { backup: primary, has_backup: 1, ..p };
            prop_assert!(OrderedPlacement::decode(&backup_is_primary.to_bytes()).is_err());
        }

        #[test]
        fn arbitrary_placement_messages_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(p) = OrderedPlacement::decode(&bytes) {
                prop_assert_eq!(&p.to_bytes()[..], &bytes[..]);
                let epoch = p.epoch;
                prop_assert!(epoch >= 1 || p == OrderedPlacement::UNKNOWN);
            }
        }

        #[test]
        fn committed_messages_round_trip(memnode: u16, epoch: u64, first in 0u64..1 << 40, count in 0usize..=MAX_COMMITTED_ENTRIES, past in 0u64..100) {
            let h = OrderedCommitted { memnode, reserved: [0; 6], epoch, tail: first + count as u64 + past, first };
            let mut bytes = h.to_bytes().to_vec();
            bytes.extend((0..count * COMMITTED_ENTRY_BYTES).map(|i| i as u8));
            let (d, entries) = split_committed(&bytes).unwrap();
            prop_assert_eq!(d, h);
            prop_assert_eq!(entries.len(), count * COMMITTED_ENTRY_BYTES);
            prop_assert!(split_committed(&bytes[..bytes.len() - 1]).is_err());
            if count > 0 {
                // One entry past the tail: refused.
                let short = OrderedCommitted { tail: first + count as u64 - 1, ..h };
                let mut bad = short.to_bytes().to_vec();
                bad.extend(&bytes[OrderedCommitted::SIZE..]);
                prop_assert!(split_committed(&bad).is_err());
            }
        }

        #[test]
        fn arbitrary_committed_messages_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            if let Ok((h, entries)) = split_committed(&bytes) {
                prop_assert_eq!(OrderedCommitted::SIZE + entries.len(), bytes.len());
                let (first, tail) = (h.first, h.tail);
                prop_assert!(first + (entries.len() / COMMITTED_ENTRY_BYTES) as u64 <= tail);
            }
        }

        #[test]
        fn arbitrary_held_messages_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(h) = OrderedHeld::decode(&bytes) {
                prop_assert_eq!(&h.to_bytes()[..], &bytes[..]);
                prop_assert!(h.held <= h.learned);
            }
        }

        #[test]
        fn arbitrary_payload_runs_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok((_, items)) = split_payload_run(&bytes) {
                // A validated run tiles its bytes exactly.
                let body: usize = items.map(|p| PAYLOAD_RUN_ITEM_LEN + p.len()).sum();
                prop_assert_eq!(body + OrderedPayloadHeader::SIZE, bytes.len());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(d) = decode(&bytes) {
                for m in d.messages() { let _ = owned(m); }
            }
        }

        #[test]
        fn mutated_valid_datagrams_never_panic(
            msgs in proptest::collection::vec(arb_message(), 1..4),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
        ) {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            let mut enc = Encoder::new(&mut buf, 1, 1).unwrap();
            for m in &msgs { push(&mut enc, m).unwrap(); }
            let len = enc.len();
            let mut bytes = buf[..len].to_vec();
            for (at, x) in flips { let i = at % bytes.len(); bytes[i] ^= x; }
            bytes.truncate(cut % (bytes.len() + 1));
            if let Ok(d) = decode(&bytes) {
                let n = d.messages().map(owned).count();
                prop_assert!(d.messages().flat_map(owned).count() >= n);
                prop_assert_eq!(n, usize::from(d.header.count));
            }
        }
    }

    /// A run of consecutive messages of one stream: `(payload lengths, break points)`;
    /// at a break the session changes, so a new run starts.
    fn arb_runs() -> impl Strategy<Value = (u64, u32, Vec<(usize, bool, bool)>)> {
        (
            any::<u64>(),
            any::<u32>(),
            proptest::collection::vec((0usize..300, proptest::bool::weighted(0.1), any::<bool>()), 1..60),
        )
    }

    proptest! {
        /// Runs: consecutive messages of a stream share one header and decode back to the
        /// same data headers and payloads, in order; every break starts a new run.
        #[test]
        fn runs_round_trip((seq0, retained0, msgs) in arb_runs(), size in 200usize..4000) {
            let mut buf = vec![0u8; size];
            let mut enc = Encoder::new(&mut buf, 1, 1).unwrap();
            let mut sent = Vec::new();
            let (mut session, mut runs_started) = (0u32, 0usize);
            let mut last: Option<(u64, u32, u32, bool)> = None;
            for (i, (len, brk, retransmit)) in msgs.iter().enumerate() {
                if *brk { session += 1; }
                let h = DataHeader {
                    group: 9,
                    seq: seq0.wrapping_add(i as u64),
                    sender: 4,
                    stream: 5,
                    retained: retained0.saturating_add(i as u32),
                    session,
                    frag_index: 0,
                    frag_count: 1,
                };
                let payload: Vec<u8> = (0..*len).map(|b| (b as u8) ^ (i as u8)).collect();
                let need = enc.data_len(&h, *retransmit, payload.len());
                let before = enc.len();
                match enc.push_data(&h, *retransmit, &payload) {
                    Ok(()) => {
                        prop_assert_eq!(enc.len() - before, need);
                        let key = (seq0.wrapping_add(i as u64), session, retained0.saturating_add(i as u32), *retransmit);
                        let continues = last.is_some_and(|(s, se, r, rt)| {
                            s.checked_add(1) == Some(key.0) && se == key.1 && r.saturating_add(1) == key.2 && rt == key.3
                        });
                        if !continues { runs_started += 1; }
                        let header_free = need == varint_len(*len) + len;
                        prop_assert_eq!(header_free, continues, "only a continuation is header-free");
                        last = Some(key);
                        sent.push(Owned::Data(h, *retransmit, payload));
                    }
                    Err(PacketError::BufferFull { .. }) => break,
                    Err(e) => prop_assert!(false, "unexpected {e}"),
                }
            }
            let len = enc.len();
            let d = decode(&buf[..len]).unwrap();
            prop_assert_eq!(d.messages().count(), runs_started);
            let back: Vec<Owned> = d.messages().flat_map(owned).collect();
            prop_assert_eq!(back, sent);
        }
    }

    /// How many whole messages of `payload` bytes fit a datagram of `max` bytes.
    fn messages_per_datagram(max: usize, payload: usize) -> usize {
        let mut buf = vec![0u8; max];
        let mut enc = Encoder::new(&mut buf, 1, 1).unwrap();
        let mut n = 0;
        loop {
            let h = DataHeader {
                group: 1,
                seq: n,
                sender: 2,
                stream: 3,
                retained: n as u32,
                session: 4,
                frag_index: 0,
                frag_count: 1,
            };
            if enc.push_data(&h, false, &vec![7u8; payload]).is_err() {
                return n as usize;
            }
            n += 1;
        }
    }

    #[test]
    fn a_datagram_carries_nearly_as_many_small_messages_as_bare_udp() {
        // Bare UDP: 1472 / 64 = 23. v5 (36 + 8 bytes of headers each): 13.
        assert_eq!(messages_per_datagram(1472, 64), 21);
        assert_eq!(messages_per_datagram(1472 - 34, 64), 21, "with the auth trailer");
        assert_eq!(messages_per_datagram(1472, 8), 157);
    }

    fn run_datagram(body: &[u8]) -> Vec<u8> {
        let rh = RunHeader {
            group: 1,
            first_seq: 5,
            sender: 2,
            stream: 3,
            retained: 0,
            session: 0,
        };
        let mh = MessageHeader {
            kind: MessageKind::DataRun as u8,
            flags: 0,
            reserved: 0,
            len: (RUN_HEADER_LEN + body.len()) as u32,
        };
        let dh = DatagramHeader {
            magic: MAGIC,
            version: VERSION,
            count: 1,
            from: 2,
            incarnation: 1,
        };
        let mut v = bytemuck::bytes_of(&dh).to_vec();
        v.extend_from_slice(bytemuck::bytes_of(&mh));
        v.extend_from_slice(bytemuck::bytes_of(&rh));
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn malformed_runs_are_typed_errors() {
        assert!(decode(&run_datagram(&[2, b'h', b'i'])).is_ok());
        assert_eq!(
            decode(&run_datagram(&[])).unwrap_err(),
            PacketError::LengthMismatch("empty run")
        );
        assert_eq!(
            decode(&run_datagram(&[0x81, 0x00, b'x'])).unwrap_err(),
            PacketError::LengthMismatch("varint not minimal")
        );
        assert_eq!(
            decode(&run_datagram(&[0x80, 0x80, 0x80, 0x01])).unwrap_err(),
            PacketError::LengthMismatch("varint longer than 3 bytes")
        );
        assert!(matches!(
            decode(&run_datagram(&[5, b'a'])).unwrap_err(),
            PacketError::Truncated { needed: 5, had: 1 }
        ));
        assert!(matches!(
            decode(&run_datagram(&[0x80])).unwrap_err(),
            PacketError::Truncated { .. }
        ));
        let mut overflow = run_datagram(&[0, 0]);
        let at = DATAGRAM_HEADER_LEN + MESSAGE_HEADER_LEN + 8;
        overflow[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(
            decode(&overflow).unwrap_err(),
            PacketError::LengthMismatch("run seqs overflow")
        );
        let mut last = run_datagram(&[0]);
        last[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode(&last).is_ok(), "one message at seq u64::MAX is fine");
    }

    fn one_data() -> Vec<u8> {
        let mut buf = [0u8; 256];
        let mut enc = Encoder::new(&mut buf, 7, 1).unwrap();
        let h = DataHeader {
            group: 1,
            seq: 2,
            sender: 7,
            stream: 1,
            retained: 0,
            session: 0,
            frag_index: 0,
            frag_count: 1,
        };
        enc.push_data(&h, false, b"hello").unwrap();
        let n = enc.len();
        buf[..n].to_vec()
    }

    #[test]
    fn typed_errors() {
        let good = one_data();
        assert!(decode(&good).is_ok());
        assert!(matches!(decode(&good[..3]), Err(PacketError::Truncated { .. })));
        let mut b = good.clone();
        b[0] ^= 1;
        assert!(matches!(decode(&b), Err(PacketError::BadMagic(_))));
        let mut b = good.clone();
        b[4] = 8;
        assert_eq!(decode(&b).unwrap_err(), PacketError::BadVersion(8));
        let mut b = good.clone();
        b[6] = 2; // count says 2 messages, 1 present
        assert!(matches!(decode(&b), Err(PacketError::LengthMismatch(_))));
        let mut b = good.clone();
        b[DATAGRAM_HEADER_LEN] = 99;
        assert_eq!(decode(&b).unwrap_err(), PacketError::UnknownKind(99));
        let mut b = good.clone();
        b[DATAGRAM_HEADER_LEN + 1] = 0x80;
        assert!(matches!(decode(&b), Err(PacketError::BadFlags { .. })));
        let mut b = good.clone();
        b[DATAGRAM_HEADER_LEN + 2] = 1;
        assert_eq!(decode(&b).unwrap_err(), PacketError::ReservedNonZero);
        let mut b = good.clone();
        b.truncate(b.len() - 1);
        assert!(matches!(decode(&b), Err(PacketError::Truncated { .. })));
        let mut b = good;
        b.push(0);
        assert!(decode(&b).is_err());
    }

    /// A datagram with one view request, `count` forced to `count` (whatever `parts` holds).
    fn view_request(parts_total: u32, parts: &[u32], count: u32) -> Vec<u8> {
        let header = ViewRequestHeader {
            counter: 7,
            coordinator: 1,
            coordinator_incarnation: 2,
            hash: 0xfeed,
            parts: parts_total,
            count: 0,
        };
        let mut buf = vec![0u8; 1472];
        let mut e = Encoder::new(&mut buf, 3, 4).unwrap();
        e.push_view_request(&header, parts).unwrap();
        let n = e.len();
        buf.truncate(n);
        // `count` sits after counter, coordinator, incarnation, hash and parts.
        let at = DATAGRAM_HEADER_LEN + MESSAGE_HEADER_LEN + 28;
        buf[at..at + 4].copy_from_slice(&count.to_le_bytes());
        buf
    }

    #[test]
    fn view_requests_are_validated() {
        let ok = view_request(10, &[0, 3, 9], 3);
        let d = decode(&ok).unwrap();
        let Some(Message::ViewRequest { header, parts }) = d.messages().next() else {
            panic!("not a view request");
        };
        assert_eq!((header.counter, header.hash, header.parts), (7, 0xfeed, 10));
        assert_eq!(parts.iter().collect::<Vec<_>>(), vec![0, 3, 9]);
        assert!(decode(&view_request(0, &[], 0)).is_ok(), "the whole view");
        let bad = |b: Vec<u8>| matches!(decode(&b), Err(PacketError::LengthMismatch(_)));
        assert!(bad(view_request(10, &[0, 10], 2)), "a part past the count");
        assert!(bad(view_request(10, &[3, 3], 2)), "a part twice");
        assert!(bad(view_request(10, &[4, 3], 2)), "descending");
        assert!(bad(view_request(10, &[], 0)), "whole view with a part count");
        assert!(bad(view_request(10, &[1, 2], 3)), "count past the list");
        assert!(bad(view_request(10, &[1, 2], 1)), "list past the count");
        let many: Vec<u32> = (0..MAX_VIEW_REQUEST_PARTS as u32 + 1).collect();
        assert!(
            bad(view_request(1000, &many, many.len() as u32)),
            "too many parts"
        );
        let max: Vec<u32> = (0..MAX_VIEW_REQUEST_PARTS as u32).collect();
        assert!(decode(&view_request(1000, &max, max.len() as u32)).is_ok());
    }

    #[test]
    fn a_view_part_body_encoded_once_is_the_part_pushed() {
        let members: Vec<MemberEntry> = (0..300)
            .map(|i| MemberEntry {
                node: i,
                incarnation: 1,
                addr: u64::from(i),
            })
            .collect();
        let g: Vec<ViewGroupMember> = (0..300)
            .map(|i| ViewGroupMember { index: i, stream: 2 })
            .collect();
        let groups: Vec<(u64, &[ViewGroupMember])> = vec![(5, &g)];
        let view = ViewParts::new(
            3,
            (0, 1),
            &members,
            &groups,
            1472 - DATAGRAM_HEADER_LEN - MESSAGE_HEADER_LEN,
        )
        .unwrap();
        assert!(view.len() > 2);
        for p in 0..view.len() {
            let mut a = vec![0u8; 1472];
            let mut b = vec![0u8; 1472];
            let mut ea = Encoder::new(&mut a, 1, 1).unwrap();
            ea.push_view_part(&view, p).unwrap();
            let la = ea.len();
            let mut eb = Encoder::new(&mut b, 1, 1).unwrap();
            eb.push_view_body(&view_part_body(&view, p).unwrap(), NO_WITNESS)
                .unwrap();
            let lb = eb.len();
            assert_eq!(&a[..la], &b[..lb], "part {p}");
        }
    }

    fn one_view_part(members: u32, slice: ViewGroupSlice, g: &[ViewGroupMember]) -> Vec<u8> {
        let mut buf = [0u8; 256];
        let mut enc = Encoder::new(&mut buf, 1, 1).unwrap();
        let m = [MemberEntry {
            node: 1,
            incarnation: 1,
            addr: 0,
        }];
        let h = ViewPartHeader {
            counter: 1,
            coordinator: 1,
            coordinator_incarnation: 1,
            part: 0,
            parts: 1,
            members,
            groups: 1,
            member_start: 0,
            member_count: 0,
            group_slices: 0,
            witness: NO_WITNESS,
        };
        enc.push_view_part_raw(&h, &m, &[(slice, g)]).unwrap();
        let n = enc.len();
        buf[..n].to_vec()
    }

    #[test]
    fn view_index_out_of_range_is_rejected() {
        let slice = ViewGroupSlice {
            group: 5,
            total: 1,
            start: 0,
            count: 0,
            reserved: 0,
        };
        let g = [ViewGroupMember { index: 1, stream: 9 }];
        assert!(matches!(
            decode(&one_view_part(1, slice, &g)),
            Err(PacketError::BadIndex { index: 1, members: 1 })
        ));
        let g = [ViewGroupMember { index: 0, stream: 9 }];
        assert!(decode(&one_view_part(1, slice, &g)).is_ok());
        // Slices outside their group, groups larger than the view, members outside the view.
        let past = ViewGroupSlice { start: 1, ..slice };
        assert!(matches!(
            decode(&one_view_part(1, past, &g)),
            Err(PacketError::LengthMismatch(_))
        ));
        let big = ViewGroupSlice { total: 2, ..slice };
        assert!(matches!(
            decode(&one_view_part(1, big, &g)),
            Err(PacketError::LengthMismatch(_))
        ));
        assert!(matches!(
            decode(&one_view_part(0, slice, &[])),
            Err(PacketError::LengthMismatch(_))
        ));
    }

    /// Reassembles decoded parts (test-only, trusting): members and per-group entries.
    #[allow(clippy::type_complexity)]
    fn reassemble(datagrams: &[Vec<u8>]) -> (Vec<MemberEntry>, Vec<(u64, Vec<ViewGroupMember>)>) {
        let mut members: Vec<Option<MemberEntry>> = Vec::new();
        let mut groups: std::collections::BTreeMap<u64, Vec<Option<ViewGroupMember>>> = Default::default();
        let mut seen = std::collections::BTreeSet::new();
        for d in datagrams {
            for m in decode(d).unwrap().messages() {
                let Message::View {
                    header,
                    members: ms,
                    groups: gs,
                } = m
                else {
                    panic!("not a view part")
                };
                assert!(seen.insert(header.part));
                members.resize(header.members as usize, None);
                for (i, e) in ms.iter().enumerate() {
                    let slot = &mut members[header.member_start as usize + i];
                    assert!(slot.is_none());
                    *slot = Some(e);
                }
                for (h, es) in gs.iter() {
                    let g = groups.entry(h.group).or_default();
                    g.resize(h.total as usize, None);
                    for (i, e) in es.iter().enumerate() {
                        let slot = &mut g[h.start as usize + i];
                        assert!(slot.is_none());
                        *slot = Some(e);
                    }
                }
                assert!(seen.len() as u32 <= header.parts);
            }
        }
        (
            members.into_iter().map(Option::unwrap).collect(),
            groups
                .into_iter()
                .map(|(g, es)| (g, es.into_iter().map(Option::unwrap).collect()))
                .collect(),
        )
    }

    /// Sends every part of `view` in a datagram of its own of at most `max_datagram` bytes.
    fn split(view: &ViewParts<'_>, max_datagram: usize) -> Vec<Vec<u8>> {
        (0..view.len())
            .map(|p| {
                let mut buf = vec![0u8; max_datagram];
                let mut enc = Encoder::new(&mut buf, 1, 1).unwrap();
                enc.push_view_part(view, p).unwrap();
                assert_eq!(
                    enc.len(),
                    DATAGRAM_HEADER_LEN + MESSAGE_HEADER_LEN + view.body_len(p)
                );
                let n = enc.len();
                buf.truncate(n);
                buf
            })
            .collect()
    }

    #[test]
    fn large_views_split_into_datagrams_and_reassemble() {
        let max_datagram = 1472;
        let max_body = max_datagram - DATAGRAM_HEADER_LEN - MESSAGE_HEADER_LEN;
        let n = 10_000u32;
        let members: Vec<MemberEntry> = (0..n)
            .map(|i| MemberEntry {
                node: i * 3,
                incarnation: i + 1,
                addr: u64::from(i) << 16 | 7400,
            })
            .collect();
        let big: Vec<ViewGroupMember> = (0..n)
            .map(|i| ViewGroupMember {
                index: n - 1 - i,
                stream: i ^ 0x5555,
            })
            .collect();
        let small: Vec<ViewGroupMember> = (0..3).map(|i| ViewGroupMember { index: i, stream: 7 }).collect();
        let empty: Vec<ViewGroupMember> = Vec::new();
        let groups: Vec<(u64, &[ViewGroupMember])> = vec![(1, &small), (2, &big), (3, &empty), (4, &small)];
        let view = ViewParts::new(9, (4, 5), &members, &groups, max_body).unwrap();
        let dgs = split(&view, max_datagram);
        assert!(dgs.iter().all(|d| d.len() <= max_datagram));
        // 10,000 member entries of 16 B at 87 per part, 10,006 group entries of 8 B at
        // 175 per part, plus a few slice headers.
        assert!(
            dgs.len() <= 10_000usize.div_ceil(86) + 10_006usize.div_ceil(170) + 2,
            "{} parts",
            dgs.len()
        );
        let mut shuffled = dgs.clone();
        shuffled.reverse();
        let (m, g) = reassemble(&shuffled);
        assert_eq!(m, members);
        let want: Vec<(u64, Vec<ViewGroupMember>)> = groups.iter().map(|(id, e)| (*id, e.to_vec())).collect();
        assert_eq!(g, want);
        for d in &dgs {
            let Some(Message::View { header, .. }) = decode(d).unwrap().messages().next() else {
                panic!()
            };
            assert_eq!(
                (header.counter, header.coordinator, header.coordinator_incarnation),
                (9, 4, 5)
            );
            assert_eq!(
                (header.members, header.groups, header.parts),
                (n, 4, dgs.len() as u32)
            );
        }
    }

    #[test]
    fn view_plans_cover_everything_at_any_size() {
        for max_body in [
            VIEW_PART_HEADER_LEN + VIEW_GROUP_SLICE_LEN + core::mem::size_of::<MemberEntry>(),
            100,
            333,
            1448,
        ] {
            for (members, sizes) in [
                (0usize, vec![]),
                (1, vec![]),
                (5, vec![0, 5, 1]),
                (40, vec![40, 0, 0, 39, 2]),
            ] {
                let plans = plan_view_parts(members, &sizes, max_body).unwrap();
                assert!(plans.iter().all(|p| p.body_len() <= max_body));
                let mut next_m = 0;
                let mut next_g = vec![0usize; sizes.len()];
                let mut seen = vec![false; sizes.len()];
                for p in &plans {
                    assert_eq!(p.members.start, next_m);
                    next_m = p.members.end;
                    for (g, r) in &p.groups {
                        assert_eq!(r.start, next_g[*g]);
                        next_g[*g] = r.end;
                        seen[*g] = true;
                    }
                }
                assert_eq!(next_m, members);
                assert_eq!(next_g, sizes);
                assert!(seen.iter().all(|s| *s));
            }
        }
        assert!(plan_view_parts(1, &[], 40).is_err());
        assert!(plan_view_parts(1, &[2], 1448).is_err());
    }

    #[test]
    fn encoder_reports_full_buffer() {
        let mut buf = [0u8; 40];
        let mut enc = Encoder::new(&mut buf, 1, 1).unwrap();
        let h = DataHeader::zeroed();
        assert!(matches!(
            enc.push_data(&h, false, &[0; 100]),
            Err(PacketError::BufferFull { .. })
        ));
        assert!(Encoder::new(&mut [0u8; 4], 1, 1).is_err());
    }

    #[test]
    fn flow_status_round_trips_and_refuses_an_empty_window_or_trailing_bytes() {
        let status = FlowStatus {
            group: 9,
            sender: 2,
            stream: 3,
            consumed: 1 << 40,
            window: 16_384,
            gaps: 7,
            holder: 5,
            members: 12,
        };
        assert!(!status.is_ask());
        let mut buf = vec![0u8; 256];
        let mut enc = Encoder::new(&mut buf, 1, 1).unwrap();
        enc.push_flow_status(&status).unwrap();
        let len = enc.len();
        let d = decode(&buf[..len]).unwrap();
        assert_eq!(
            d.messages().collect::<Vec<_>>(),
            vec![Message::FlowStatus(status)]
        );
        // window 0 (offset 24 of the body, after the datagram and message headers)
        let mut zero = buf[..len].to_vec();
        let at = DATAGRAM_HEADER_LEN + MESSAGE_HEADER_LEN + 24;
        zero[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(decode(&zero), Err(PacketError::LengthMismatch(_))));
        // one byte more in the body than the kind has
        let mut long = buf[..len].to_vec();
        long.push(0);
        let ml = DATAGRAM_HEADER_LEN + 4;
        long[ml..ml + 4].copy_from_slice(&(FLOW_STATUS_LEN as u32 + 1).to_le_bytes());
        assert!(decode(&long).is_err());
        assert_eq!(FLOW_STATUS_LEN, 40);
    }

    #[test]
    fn header_sizes_are_stable() {
        assert_eq!(DATAGRAM_HEADER_LEN, 16);
        assert_eq!(MESSAGE_HEADER_LEN, 8);
        assert_eq!(core::mem::size_of::<DataHeader>(), 36);
        assert_eq!(core::mem::size_of::<DigestEntry>(), 40);
        assert_eq!(core::mem::size_of::<RequestEntry>(), 24);
        assert_eq!(core::mem::size_of::<HeartbeatEntry>(), 16);
        assert_eq!(VIEW_PART_HEADER_LEN, 48);
        assert_eq!(VIEW_GROUP_SLICE_LEN, 24);
    }
}
