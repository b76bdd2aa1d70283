//! The local attach protocol spoken over the daemon's Unix control socket (see
//! `docs/internals.md`): one request, one reply, each a [`ControlHeader`] and a small body,
//! with shared-memory descriptors riding along as SCM_RIGHTS. Both sides decode strictly:
//! the daemon does not trust its clients, and a client does not trust a stale daemon.

use bytemuck::{Pod, Zeroable};
use thiserror::Error;

/// "TTC1" in little-endian byte order.
pub const CONTROL_MAGIC: u32 = u32::from_le_bytes(*b"TTC1");
/// Bumped on any change of the control messages or the ring layouts. Version 2 added
/// [`Request::Watch`].
pub const PROTOCOL_VERSION: u32 = 2;
/// The oldest client version a daemon of this build still serves (it answers `Welcome`
/// with the client's version; a client needs a daemon at least as new as itself).
pub const MIN_PROTOCOL_VERSION: u32 = 1;
/// Largest body of one control message.
pub const MAX_BODY: usize = 4096;
/// Largest control message on the wire (header + body).
pub const MAX_MESSAGE: usize = HEADER_LEN + MAX_BODY;
/// Longest group name, in bytes of UTF-8.
pub const MAX_GROUP_NAME: usize = 255;
/// The `shard` of a [`Request::Counters`] that asks for the control plane's counters page
/// (names: [`crate::counters::CONTROL_COUNTERS`]) rather than a shard's.
pub const CONTROL_COUNTERS_PAGE: u32 = u32::MAX;
const HEADER_LEN: usize = std::mem::size_of::<ControlHeader>();

#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
pub struct ControlHeader {
    pub magic: u32,
    pub kind: u16,
    pub reserved: u16,
    pub len: u32,
}

/// Why a control message was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ControlError {
    #[error("control message truncated: {got} bytes, need {need}")]
    Truncated { got: usize, need: usize },
    #[error("not a tutti control message (magic {0:#010x})")]
    BadMagic(u32),
    #[error("control body length {declared} does not match the {actual} bytes received")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("control body of {0} bytes exceeds the limit of {MAX_BODY}")]
    TooLong(usize),
    #[error("unknown control message kind {0}")]
    UnknownKind(u16),
    #[error("group name must be 1 to {MAX_GROUP_NAME} bytes of UTF-8")]
    BadGroupName,
    #[error("text is not UTF-8")]
    BadText,
    #[error("rights byte {0:#04x} asks for no right or for unknown ones")]
    BadRights(u8),
    #[error("unknown {what} code {code}")]
    UnknownCode { what: &'static str, code: u16 },
    #[error("group options byte {0:#04x} has unknown bits or asks for safe delivery without ordered")]
    BadOptions(u8),
    #[error("malformed minitransaction frame: {0}")]
    BadMinitx(&'static str),
}

mod kind {
    pub const HELLO: u16 = 1;
    pub const JOIN: u16 = 2;
    pub const LEAVE: u16 = 3;
    pub const STATUS: u16 = 4;
    pub const COUNTERS: u16 = 5;
    pub const JOIN_AS: u16 = 6;
    pub const JOIN_WITH: u16 = 7;
    pub const SNAPSHOT_PROVIDER: u16 = 8;
    pub const SNAPSHOT_CHUNK: u16 = 9;
    pub const REGION_CREATE: u16 = 10;
    pub const MINITX: u16 = 11;
    pub const WATCH: u16 = 12;
    pub const WELCOME: u16 = 101;
    pub const JOINED: u16 = 102;
    pub const LEFT: u16 = 103;
    pub const STATUS_TEXT: u16 = 104;
    pub const COUNTERS_PAGE: u16 = 105;
    pub const DENIED: u16 = 106;
    pub const LIMIT_REACHED: u16 = 107;
    pub const DONE: u16 = 108;
    pub const MINITX_DONE: u16 = 109;
    pub const MINITX_FAILED: u16 = 110;
    pub const ERROR: u16 = 199;
}

/// What a client asks of the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    Hello {
        version: u32,
        pid: u32,
    },
    /// Join a group with the rights and options asked for (encoded as the plain `Join` of
    /// version 1 when both rights and the default options are asked, as `JoinAs` for other
    /// rights with the default options, as `JoinWith` otherwise: a daemon that predates
    /// group options answers `JoinWith` with an error, never with a plain group).
    Join {
        name: &'a str,
        rights: Rights,
        options: GroupOptions,
    },
    /// This client produces snapshots of ordered group `handle` for joiners (state
    /// transfer): the daemon asks it with a `SnapshotRequest` record in the group's log.
    SnapshotProvider {
        handle: u32,
    },
    /// One piece of the snapshot at list position `position` of ordered group `handle`:
    /// `offset` is where `bytes` go; `last` ends the snapshot (its length is
    /// `offset + bytes.len()`). Answered with `Done` (or an error).
    SnapshotChunk {
        handle: u32,
        position: u64,
        offset: u32,
        last: bool,
        bytes: &'a [u8],
    },
    Leave {
        handle: u32,
    },
    /// Make a descriptor readable when the daemon appends to subscribed group `handle`'s
    /// log (protocol version 2; `docs/internals.md`, "Descriptors"). Answered with `Done`
    /// and two descriptors: the client's end of a wake socket pair and the watch page
    /// (`shm::Watch`), armed at `position`, the reader's (`LogReader::position`): records
    /// already past it make the descriptor readable at once. Asking again for the same
    /// group replaces the earlier pair.
    Watch {
        handle: u32,
        position: u64,
    },
    Status,
    /// The counters page of one shard (comes with its descriptor, to map read-only).
    Counters {
        shard: u32,
    },
    /// Create region `name` of `size` zero bytes, or find it with that size (see
    /// `docs/regions.md`). Answered with `Done` or `MinitxFailed`.
    RegionCreate {
        name: &'a str,
        size: u32,
    },
    /// A minitransaction over the regions named in `regions` (items name them by index).
    /// Answered with `MinitxDone` or `MinitxFailed`.
    Minitx(MinitxFrame<'a>),
}

/// Items of one minitransaction on the control channel, at most.
pub const MAX_MINITX_ITEMS: usize = 32;
/// Distinct regions one minitransaction on the control channel names, at most.
pub const MAX_MINITX_REGIONS: usize = 8;

/// What a minitransaction item does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    /// The bytes at (region, offset) must equal `data`.
    Compare,
    /// Return `len` bytes at (region, offset).
    Read,
    /// Store `data` at (region, offset).
    Write,
}

/// One item: `region` indexes the frame's region names; `len` is `data.len()` except for
/// reads (which carry no data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinitxItem<'a> {
    pub kind: ItemKind,
    pub region: u8,
    pub offset: u32,
    pub len: u32,
    pub data: &'a [u8],
}

/// A minitransaction request: the region names (distinct, at most
/// [`MAX_MINITX_REGIONS`]) and the items (at most [`MAX_MINITX_ITEMS`]), in the order the
/// reads are answered. Body: `n_regions u8, (len u8, name)*, n_items u8, (kind u8,
/// region u8, offset u32, len u32, data)*`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MinitxFrame<'a> {
    pub regions: Vec<&'a str>,
    pub items: Vec<MinitxItem<'a>>,
}

impl MinitxFrame<'_> {
    /// Bytes of the encoded body (compare with [`MAX_BODY`] before sending).
    pub fn body_len(&self) -> usize {
        1 + self.regions.iter().map(|r| 1 + r.len()).sum::<usize>()
            + 1
            + self.items.iter().map(|i| 10 + i.data.len()).sum::<usize>()
    }
}

/// Why a region operation failed (the `MinitxFailed` reply). `region` indexes the
/// request's region names (0 for `RegionCreate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MinitxFailure<'a> {
    /// Compares failed: (index among the request's compare items, current bytes); the
    /// reads as they were (`None` where unknown).
    Conflict {
        failed: Vec<(u8, &'a [u8])>,
        reads: Vec<Option<&'a [u8]>>,
    },
    RegionMissing {
        region: u8,
    },
    SizeMismatch {
        region: u8,
        size: u32,
    },
    OutOfBounds {
        region: u8,
    },
    TooLarge,
    NoSpace,
    NotInMajority,
    Busy,
    /// No answer in time: the outcome is not known.
    Unavailable,
    /// The daemon runs without a cluster (or its cluster shard is not up).
    NoCluster,
}

/// What the daemon answers. `Joined` comes with descriptors (see internals.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<'a> {
    Welcome {
        version: u32,
        session_id: u32,
        node_id: u32,
        shards: u32,
    },
    Joined(Joined),
    Left,
    StatusText(&'a str),
    /// Shard `shard`'s counters page follows as a descriptor; it holds `count` counters.
    CountersPage {
        shard: u32,
        count: u32,
    },
    Error {
        code: ErrorCode,
        text: &'a str,
    },
    /// The access list refuses `uid` the right `right` to group `group`; `rule` is the
    /// `[[access]]` pattern that decided (empty for the attach check).
    Denied {
        uid: u32,
        right: Right,
        group: &'a str,
        rule: &'a str,
    },
    /// A resource limit refused the request; `max` is the configured value.
    LimitReached {
        limit: Limit,
        max: u64,
    },
    /// A request without other answer was applied (`SnapshotProvider`, `SnapshotChunk`,
    /// `RegionCreate`).
    Done,
    /// A minitransaction committed: its read items, in request order. Body: `n u8,
    /// (len u32, bytes)*`.
    MinitxDone {
        reads: Vec<&'a [u8]>,
    },
    /// A region operation failed. Body: `code u8, region u8, size u32`, and for a conflict
    /// `n u8, (index u8, len u32, bytes)*, m u8, (present u8, len u32, bytes)*`.
    MinitxFailed(MinitxFailure<'a>),
}

/// How a group delivers, fixed by its first joiner on a daemon (see `docs/ordered.md`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct GroupOptions {
    /// One total order across all senders, the same at every member, with views in it.
    pub ordered: bool,
    /// Ordered groups only: a message is delivered once every member of the view holds it.
    pub safe: bool,
    /// Ordered groups only: a CPG process group (`docs/cpg.md`): the daemons keep a table
    /// of member processes (session, pid) in the total order and write confchg records.
    pub cpg: bool,
    /// Ordered groups only: partition policy `evs` (`docs/ordered.md`): each side of a
    /// partition goes on in a configuration of its own and sides merge when they meet
    /// again; no state transfer. Cpg groups always use it.
    pub evs: bool,
}

impl GroupOptions {
    /// A bimodal (not ordered) group.
    pub const PLAIN: GroupOptions = GroupOptions {
        ordered: false,
        safe: false,
        cpg: false,
        evs: false,
    };
    pub const ORDERED: GroupOptions = GroupOptions {
        ordered: true,
        safe: false,
        cpg: false,
        evs: false,
    };
    pub const SAFE: GroupOptions = GroupOptions {
        ordered: true,
        safe: true,
        cpg: false,
        evs: false,
    };
    /// A CPG process group (ordered, agreed delivery).
    pub const CPG: GroupOptions = GroupOptions {
        ordered: true,
        safe: false,
        cpg: true,
        evs: false,
    };

    pub fn to_u8(self) -> u8 {
        u8::from(self.ordered)
            | (u8::from(self.safe) << 1)
            | (u8::from(self.cpg) << 2)
            | (u8::from(self.evs) << 3)
    }

    /// Decodes an options byte: no unknown bit, `safe`, `cpg` and `evs` only with `ordered`.
    pub fn from_u8(bits: u8) -> Result<GroupOptions, ControlError> {
        if bits & !15 != 0 || (bits & 1 == 0 && bits != 0) {
            return Err(ControlError::BadOptions(bits));
        }
        Ok(GroupOptions {
            ordered: bits & 1 != 0,
            safe: bits & 2 != 0,
            cpg: bits & 4 != 0,
            evs: bits & 8 != 0,
        })
    }
}

/// Longest snapshot a client may hand the daemon (the sum of its chunks).
pub const MAX_SNAPSHOT: usize = 1 << 20;
/// Largest `bytes` of one [`Request::SnapshotChunk`].
pub const MAX_SNAPSHOT_CHUNK: usize = MAX_BODY - SNAPSHOT_CHUNK_HEADER;
const SNAPSHOT_CHUNK_HEADER: usize = 4 + 8 + 4 + 1;

/// What a join asks for and what the daemon granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rights {
    /// Publish to the group (a publish ring on its shard).
    pub publish: bool,
    /// Receive the group's messages (its delivery log).
    pub subscribe: bool,
}

impl Rights {
    pub const BOTH: Rights = Rights {
        publish: true,
        subscribe: true,
    };
    pub const PUBLISH: Rights = Rights {
        publish: true,
        subscribe: false,
    };
    pub const SUBSCRIBE: Rights = Rights {
        publish: false,
        subscribe: true,
    };

    pub fn to_u8(self) -> u8 {
        u8::from(self.publish) | (u8::from(self.subscribe) << 1)
    }

    /// Decodes a rights byte; at least one right, no unknown bit.
    pub fn from_u8(bits: u8) -> Result<Rights, ControlError> {
        if bits == 0 || bits & !3 != 0 {
            return Err(ControlError::BadRights(bits));
        }
        Ok(Rights {
            publish: bits & 1 != 0,
            subscribe: bits & 2 != 0,
        })
    }
}

/// A right an access check refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    /// Attaching to the daemon at all (root, the daemon's user and group, `allow_uids`).
    Attach,
    Publish,
    Subscribe,
}

impl Right {
    fn to_u8(self) -> u8 {
        match self {
            Right::Attach => 0,
            Right::Publish => 1,
            Right::Subscribe => 2,
        }
    }

    fn from_u8(n: u8) -> Result<Right, ControlError> {
        match n {
            0 => Ok(Right::Attach),
            1 => Ok(Right::Publish),
            2 => Ok(Right::Subscribe),
            code => Err(ControlError::UnknownCode {
                what: "right",
                code: code.into(),
            }),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Right::Attach => "attach",
            Right::Publish => "publish",
            Right::Subscribe => "subscribe",
        }
    }
}

/// A resource limit of the daemon (each a config key; see `docs/operations.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `max_clients`: attached clients in total.
    Clients,
    /// `limits.clients_per_uid`.
    ClientsPerUid,
    /// `max_groups`: live groups in total.
    Groups,
    /// `limits.ring_bytes_per_uid`: shared memory of the rings and logs a user holds.
    RingBytesPerUid,
    /// `limits.joins_per_second` (and `limits.join_burst`): joins of one client.
    JoinRate,
    /// `limits.groups_per_client`: groups one client belongs to.
    GroupsPerClient,
}

impl Limit {
    const ALL: [Limit; 6] = [
        Limit::Clients,
        Limit::ClientsPerUid,
        Limit::Groups,
        Limit::RingBytesPerUid,
        Limit::JoinRate,
        Limit::GroupsPerClient,
    ];

    fn to_u16(self) -> u16 {
        Self::ALL.iter().position(|&l| l == self).unwrap_or(0) as u16 + 1
    }

    fn from_u16(n: u16) -> Result<Limit, ControlError> {
        Self::ALL
            .get(usize::from(n).wrapping_sub(1))
            .copied()
            .ok_or(ControlError::UnknownCode {
                what: "limit",
                code: n,
            })
    }

    /// The config key that sets this limit.
    pub fn config_key(self) -> &'static str {
        match self {
            Limit::Clients => "max_clients",
            Limit::ClientsPerUid => "limits.clients_per_uid",
            Limit::Groups => "max_groups",
            Limit::RingBytesPerUid => "limits.ring_bytes_per_uid",
            Limit::JoinRate => "limits.joins_per_second",
            Limit::GroupsPerClient => "limits.groups_per_client",
        }
    }
}

/// The answer to a `Join`. Descriptors that come with it, in order: the group's delivery
/// log, the group's doorbell, and when `new_shard` is set the client's publish ring for
/// that shard, the shard's doorbell page and the shard's eventfd.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct Joined {
    pub pub_capacity: u64,
    pub log_capacity: u64,
    pub handle: u32,
    pub shard: u32,
    pub new_shard: u8,
    /// The rights granted ([`Rights::to_u8`]); 0 from a daemon without access lists means
    /// both.
    pub rights: u8,
    /// The group's options ([`GroupOptions::to_u8`]; 0 from a daemon without options).
    pub options: u8,
    pub reserved: [u8; 5],
    /// Largest message the daemon accepts in this group (the client's `TooLarge` limit).
    pub max_message: u64,
}

/// Why the daemon refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    VersionMismatch,
    PermissionDenied,
    BadRequest,
    NoSuchGroup,
    ResourceLimit,
    Internal,
    /// The group exists on this daemon with other options than those asked for.
    OptionsMismatch,
    /// This daemon cannot serve the request as configured (an ordered group without a
    /// cluster).
    Unsupported,
    Other(u16),
}

impl ErrorCode {
    fn to_u16(self) -> u16 {
        match self {
            ErrorCode::VersionMismatch => 1,
            ErrorCode::PermissionDenied => 2,
            ErrorCode::BadRequest => 3,
            ErrorCode::NoSuchGroup => 4,
            ErrorCode::ResourceLimit => 5,
            ErrorCode::Internal => 6,
            ErrorCode::OptionsMismatch => 7,
            ErrorCode::Unsupported => 8,
            ErrorCode::Other(n) => n,
        }
    }

    fn from_u16(n: u16) -> ErrorCode {
        match n {
            1 => ErrorCode::VersionMismatch,
            2 => ErrorCode::PermissionDenied,
            3 => ErrorCode::BadRequest,
            4 => ErrorCode::NoSuchGroup,
            5 => ErrorCode::ResourceLimit,
            6 => ErrorCode::Internal,
            7 => ErrorCode::OptionsMismatch,
            8 => ErrorCode::Unsupported,
            n => ErrorCode::Other(n),
        }
    }
}

fn put_header(out: &mut Vec<u8>, kind: u16, body_len: usize) {
    let header = ControlHeader {
        magic: CONTROL_MAGIC,
        kind,
        reserved: 0,
        len: body_len as u32,
    };
    out.extend_from_slice(bytemuck::bytes_of(&header));
}

/// Splits a received message into (kind, body) after checking magic and lengths.
fn split(msg: &[u8]) -> Result<(u16, &[u8]), ControlError> {
    let head = msg.get(..HEADER_LEN).ok_or(ControlError::Truncated {
        got: msg.len(),
        need: HEADER_LEN,
    })?;
    let header: ControlHeader = bytemuck::pod_read_unaligned(head);
    if header.magic != CONTROL_MAGIC {
        return Err(ControlError::BadMagic(header.magic));
    }
    let declared = header.len as usize;
    if declared > MAX_BODY {
        return Err(ControlError::TooLong(declared));
    }
    let body = &msg[HEADER_LEN..];
    if body.len() != declared {
        return Err(ControlError::LengthMismatch {
            declared,
            actual: body.len(),
        });
    }
    Ok((header.kind, body))
}

fn u32_at(body: &[u8], at: usize) -> Result<u32, ControlError> {
    body.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(ControlError::Truncated {
            got: body.len(),
            need: at + 4,
        })
}

fn u64_at(body: &[u8], at: usize) -> Result<u64, ControlError> {
    body.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or(ControlError::Truncated {
            got: body.len(),
            need: at + 8,
        })
}

fn exact(body: &[u8], len: usize) -> Result<(), ControlError> {
    if body.len() == len {
        Ok(())
    } else {
        Err(ControlError::LengthMismatch {
            declared: len,
            actual: body.len(),
        })
    }
}

fn group_name(bytes: &[u8]) -> Result<&str, ControlError> {
    if bytes.is_empty() || bytes.len() > MAX_GROUP_NAME {
        return Err(ControlError::BadGroupName);
    }
    std::str::from_utf8(bytes).map_err(|_| ControlError::BadGroupName)
}

impl<'a> Request<'a> {
    /// Appends the encoded request to `out`. A group name must already be valid
    /// (see [`validate_group_name`]); the client checks before it sends.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Request::Hello { version, pid } => {
                put_header(out, kind::HELLO, 8);
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(&pid.to_le_bytes());
            }
            Request::Join {
                name,
                rights,
                options: GroupOptions::PLAIN,
            } if rights == Rights::BOTH => {
                put_header(out, kind::JOIN, name.len());
                out.extend_from_slice(name.as_bytes());
            }
            Request::Join {
                name,
                rights,
                options: GroupOptions::PLAIN,
            } => {
                put_header(out, kind::JOIN_AS, 1 + name.len());
                out.push(rights.to_u8());
                out.extend_from_slice(name.as_bytes());
            }
            Request::Join {
                name,
                rights,
                options,
            } => {
                put_header(out, kind::JOIN_WITH, 2 + name.len());
                out.push(rights.to_u8());
                out.push(options.to_u8());
                out.extend_from_slice(name.as_bytes());
            }
            Request::SnapshotProvider { handle } => {
                put_header(out, kind::SNAPSHOT_PROVIDER, 4);
                out.extend_from_slice(&handle.to_le_bytes());
            }
            Request::SnapshotChunk {
                handle,
                position,
                offset,
                last,
                bytes,
            } => {
                let bytes = &bytes[..bytes.len().min(MAX_SNAPSHOT_CHUNK)];
                put_header(out, kind::SNAPSHOT_CHUNK, SNAPSHOT_CHUNK_HEADER + bytes.len());
                out.extend_from_slice(&handle.to_le_bytes());
                out.extend_from_slice(&position.to_le_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
                out.push(u8::from(last));
                out.extend_from_slice(bytes);
            }
            Request::Leave { handle } => {
                put_header(out, kind::LEAVE, 4);
                out.extend_from_slice(&handle.to_le_bytes());
            }
            Request::Watch { handle, position } => {
                put_header(out, kind::WATCH, 12);
                out.extend_from_slice(&handle.to_le_bytes());
                out.extend_from_slice(&position.to_le_bytes());
            }
            Request::Status => put_header(out, kind::STATUS, 0),
            Request::Counters { shard } => {
                put_header(out, kind::COUNTERS, 4);
                out.extend_from_slice(&shard.to_le_bytes());
            }
            Request::RegionCreate { name, size } => {
                put_header(out, kind::REGION_CREATE, 4 + name.len());
                out.extend_from_slice(&size.to_le_bytes());
                out.extend_from_slice(name.as_bytes());
            }
            Request::Minitx(ref frame) => {
                put_header(out, kind::MINITX, frame.body_len());
                out.push(frame.regions.len() as u8);
                for r in &frame.regions {
                    out.push(r.len() as u8);
                    out.extend_from_slice(r.as_bytes());
                }
                out.push(frame.items.len() as u8);
                for i in &frame.items {
                    out.push(match i.kind {
                        ItemKind::Compare => 0,
                        ItemKind::Read => 1,
                        ItemKind::Write => 2,
                    });
                    out.push(i.region);
                    out.extend_from_slice(&i.offset.to_le_bytes());
                    out.extend_from_slice(&i.len.to_le_bytes());
                    out.extend_from_slice(i.data);
                }
            }
        }
    }

    /// Decodes one whole request message.
    pub fn decode(msg: &'a [u8]) -> Result<Request<'a>, ControlError> {
        let (kind, body) = split(msg)?;
        match kind {
            kind::HELLO => {
                exact(body, 8)?;
                Ok(Request::Hello {
                    version: u32_at(body, 0)?,
                    pid: u32_at(body, 4)?,
                })
            }
            kind::JOIN => Ok(Request::Join {
                name: group_name(body)?,
                rights: Rights::BOTH,
                options: GroupOptions::PLAIN,
            }),
            kind::JOIN_AS => {
                let (&bits, name) = body
                    .split_first()
                    .ok_or(ControlError::Truncated { got: 0, need: 2 })?;
                Ok(Request::Join {
                    name: group_name(name)?,
                    rights: Rights::from_u8(bits)?,
                    options: GroupOptions::PLAIN,
                })
            }
            kind::JOIN_WITH => {
                let fixed = body.get(..2).ok_or(ControlError::Truncated {
                    got: body.len(),
                    need: 3,
                })?;
                Ok(Request::Join {
                    rights: Rights::from_u8(fixed[0])?,
                    options: GroupOptions::from_u8(fixed[1])?,
                    name: group_name(&body[2..])?,
                })
            }
            kind::SNAPSHOT_PROVIDER => {
                exact(body, 4)?;
                Ok(Request::SnapshotProvider {
                    handle: u32_at(body, 0)?,
                })
            }
            kind::SNAPSHOT_CHUNK => {
                if body.len() < SNAPSHOT_CHUNK_HEADER {
                    return Err(ControlError::Truncated {
                        got: body.len(),
                        need: SNAPSHOT_CHUNK_HEADER,
                    });
                }
                let position = u64_at(body, 4)?;
                let last = match body[16] {
                    0 => false,
                    1 => true,
                    code => {
                        return Err(ControlError::UnknownCode {
                            what: "snapshot chunk flag",
                            code: code.into(),
                        })
                    }
                };
                Ok(Request::SnapshotChunk {
                    handle: u32_at(body, 0)?,
                    position,
                    offset: u32_at(body, 12)?,
                    last,
                    bytes: &body[SNAPSHOT_CHUNK_HEADER..],
                })
            }
            kind::LEAVE => {
                exact(body, 4)?;
                Ok(Request::Leave {
                    handle: u32_at(body, 0)?,
                })
            }
            kind::WATCH => {
                exact(body, 12)?;
                Ok(Request::Watch {
                    handle: u32_at(body, 0)?,
                    position: u64_at(body, 4)?,
                })
            }
            kind::STATUS => {
                exact(body, 0)?;
                Ok(Request::Status)
            }
            kind::REGION_CREATE => {
                let size = u32_at(body, 0)?;
                Ok(Request::RegionCreate {
                    size,
                    name: group_name(body.get(4..).unwrap_or(&[]))?,
                })
            }
            kind::MINITX => decode_minitx(body).map(Request::Minitx),
            kind::COUNTERS => {
                exact(body, 4)?;
                Ok(Request::Counters {
                    shard: u32_at(body, 0)?,
                })
            }
            other => Err(ControlError::UnknownKind(other)),
        }
    }
}

/// Checks a group name before it is sent or used.
pub fn validate_group_name(name: &str) -> Result<(), ControlError> {
    group_name(name.as_bytes()).map(|_| ())
}

impl<'a> Reply<'a> {
    /// Appends the encoded reply to `out`; text longer than the body limit is cut at a
    /// character boundary.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Reply::Welcome {
                version,
                session_id,
                node_id,
                shards,
            } => {
                put_header(out, kind::WELCOME, 16);
                for v in [version, session_id, node_id, shards] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
            Reply::Joined(joined) => {
                put_header(out, kind::JOINED, std::mem::size_of::<Joined>());
                out.extend_from_slice(bytemuck::bytes_of(&joined));
            }
            Reply::Left => put_header(out, kind::LEFT, 0),
            Reply::CountersPage { shard, count } => {
                put_header(out, kind::COUNTERS_PAGE, 8);
                out.extend_from_slice(&shard.to_le_bytes());
                out.extend_from_slice(&count.to_le_bytes());
            }
            Reply::StatusText(text) => {
                let text = clip(text, MAX_BODY);
                put_header(out, kind::STATUS_TEXT, text.len());
                out.extend_from_slice(text.as_bytes());
            }
            Reply::Error { code, text } => {
                let text = clip(text, MAX_BODY - 2);
                put_header(out, kind::ERROR, 2 + text.len());
                out.extend_from_slice(&code.to_u16().to_le_bytes());
                out.extend_from_slice(text.as_bytes());
            }
            Reply::Denied {
                uid,
                right,
                group,
                rule,
            } => {
                // Names are at most MAX_GROUP_NAME bytes (a rule is a group name or a
                // prefix pattern), so both fit with their one-byte lengths.
                let group = clip(group, MAX_GROUP_NAME);
                let rule = clip(rule, MAX_GROUP_NAME);
                put_header(out, kind::DENIED, 7 + group.len() + rule.len());
                out.extend_from_slice(&uid.to_le_bytes());
                out.push(right.to_u8());
                out.push(group.len() as u8);
                out.push(rule.len() as u8);
                out.extend_from_slice(group.as_bytes());
                out.extend_from_slice(rule.as_bytes());
            }
            Reply::LimitReached { limit, max } => {
                put_header(out, kind::LIMIT_REACHED, 10);
                out.extend_from_slice(&limit.to_u16().to_le_bytes());
                out.extend_from_slice(&max.to_le_bytes());
            }
            Reply::Done => put_header(out, kind::DONE, 0),
            Reply::MinitxDone { ref reads } => {
                let len = 1 + reads.iter().map(|r| 4 + r.len()).sum::<usize>();
                put_header(out, kind::MINITX_DONE, len);
                out.push(reads.len() as u8);
                for r in reads {
                    out.extend_from_slice(&(r.len() as u32).to_le_bytes());
                    out.extend_from_slice(r);
                }
            }
            Reply::MinitxFailed(ref f) => {
                let (code, region, size) = match *f {
                    MinitxFailure::Conflict { .. } => (1, 0, 0),
                    MinitxFailure::RegionMissing { region } => (2, region, 0),
                    MinitxFailure::SizeMismatch { region, size } => (3, region, size),
                    MinitxFailure::OutOfBounds { region } => (4, region, 0),
                    MinitxFailure::TooLarge => (5, 0, 0),
                    MinitxFailure::NoSpace => (6, 0, 0),
                    MinitxFailure::NotInMajority => (7, 0, 0),
                    MinitxFailure::Busy => (8, 0, 0),
                    MinitxFailure::Unavailable => (9, 0, 0),
                    MinitxFailure::NoCluster => (10, 0, 0),
                };
                let mut body = vec![code, region];
                body.extend_from_slice(&size.to_le_bytes());
                if let MinitxFailure::Conflict { failed, reads } = f {
                    body.push(failed.len() as u8);
                    for (i, b) in failed {
                        body.push(*i);
                        body.extend_from_slice(&(b.len() as u32).to_le_bytes());
                        body.extend_from_slice(b);
                    }
                    body.push(reads.len() as u8);
                    for r in reads {
                        body.push(u8::from(r.is_some()));
                        let b = r.unwrap_or(&[]);
                        body.extend_from_slice(&(b.len() as u32).to_le_bytes());
                        body.extend_from_slice(b);
                    }
                }
                put_header(out, kind::MINITX_FAILED, body.len());
                out.extend_from_slice(&body);
            }
        }
    }

    /// Decodes one whole reply message.
    pub fn decode(msg: &'a [u8]) -> Result<Reply<'a>, ControlError> {
        let (kind, body) = split(msg)?;
        match kind {
            kind::WELCOME => {
                exact(body, 16)?;
                Ok(Reply::Welcome {
                    version: u32_at(body, 0)?,
                    session_id: u32_at(body, 4)?,
                    node_id: u32_at(body, 8)?,
                    shards: u32_at(body, 12)?,
                })
            }
            kind::JOINED => {
                exact(body, std::mem::size_of::<Joined>())?;
                Ok(Reply::Joined(bytemuck::pod_read_unaligned(body)))
            }
            kind::LEFT => {
                exact(body, 0)?;
                Ok(Reply::Left)
            }
            kind::DONE => {
                exact(body, 0)?;
                Ok(Reply::Done)
            }
            kind::COUNTERS_PAGE => {
                exact(body, 8)?;
                Ok(Reply::CountersPage {
                    shard: u32_at(body, 0)?,
                    count: u32_at(body, 4)?,
                })
            }
            kind::STATUS_TEXT => Ok(Reply::StatusText(
                std::str::from_utf8(body).map_err(|_| ControlError::BadText)?,
            )),
            kind::ERROR => {
                let code = body.get(..2).ok_or(ControlError::Truncated {
                    got: body.len(),
                    need: 2,
                })?;
                let text = std::str::from_utf8(&body[2..]).map_err(|_| ControlError::BadText)?;
                Ok(Reply::Error {
                    code: ErrorCode::from_u16(u16::from_le_bytes([code[0], code[1]])),
                    text,
                })
            }
            kind::DENIED => {
                let fixed = body.get(..7).ok_or(ControlError::Truncated {
                    got: body.len(),
                    need: 7,
                })?;
                let (group_len, rule_len) = (usize::from(fixed[5]), usize::from(fixed[6]));
                exact(body, 7 + group_len + rule_len)?;
                let text = |b: &'a [u8]| std::str::from_utf8(b).map_err(|_| ControlError::BadText);
                Ok(Reply::Denied {
                    uid: u32_at(body, 0)?,
                    right: Right::from_u8(fixed[4])?,
                    group: text(&body[7..7 + group_len])?,
                    rule: text(&body[7 + group_len..])?,
                })
            }
            kind::MINITX_DONE => {
                let mut r = Reader { body, at: 0 };
                let n = usize::from(r.u8()?);
                if n > MAX_MINITX_ITEMS {
                    return Err(ControlError::BadMinitx("too many reads"));
                }
                let mut reads = Vec::with_capacity(n);
                for _ in 0..n {
                    let len = r.u32()?;
                    reads.push(r.bytes(len)?);
                }
                r.end()?;
                Ok(Reply::MinitxDone { reads })
            }
            kind::MINITX_FAILED => decode_failure(body).map(Reply::MinitxFailed),
            kind::LIMIT_REACHED => {
                exact(body, 10)?;
                Ok(Reply::LimitReached {
                    limit: Limit::from_u16(u16::from_le_bytes([body[0], body[1]]))?,
                    max: u64_at(body, 2)?,
                })
            }
            other => Err(ControlError::UnknownKind(other)),
        }
    }
}

/// A strict cursor over a control body: every read is bounds-checked.
struct Reader<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, len: u32) -> Result<&'a [u8], ControlError> {
        let len = len as usize;
        let end = self
            .at
            .checked_add(len)
            .ok_or(ControlError::BadMinitx("length overflow"))?;
        let b = self.body.get(self.at..end).ok_or(ControlError::Truncated {
            got: self.body.len(),
            need: end,
        })?;
        self.at = end;
        Ok(b)
    }

    fn u8(&mut self) -> Result<u8, ControlError> {
        Ok(self.bytes(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, ControlError> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn end(&self) -> Result<(), ControlError> {
        exact(self.body, self.at)
    }
}

fn decode_minitx(body: &[u8]) -> Result<MinitxFrame<'_>, ControlError> {
    let mut r = Reader { body, at: 0 };
    let n_regions = usize::from(r.u8()?);
    if n_regions == 0 || n_regions > MAX_MINITX_REGIONS {
        return Err(ControlError::BadMinitx("region count"));
    }
    let mut regions = Vec::with_capacity(n_regions);
    for _ in 0..n_regions {
        let len = r.u8()?;
        let name = group_name(r.bytes(u32::from(len))?)?;
        if regions.contains(&name) {
            return Err(ControlError::BadMinitx("a region named twice"));
        }
        regions.push(name);
    }
    let n_items = usize::from(r.u8()?);
    if n_items == 0 || n_items > MAX_MINITX_ITEMS {
        return Err(ControlError::BadMinitx("item count"));
    }
    let mut items = Vec::with_capacity(n_items);
    for _ in 0..n_items {
        let kind = match r.u8()? {
            0 => ItemKind::Compare,
            1 => ItemKind::Read,
            2 => ItemKind::Write,
            code => {
                return Err(ControlError::UnknownCode {
                    what: "minitransaction item",
                    code: u16::from(code),
                })
            }
        };
        let region = r.u8()?;
        if usize::from(region) >= n_regions {
            return Err(ControlError::BadMinitx("item names no listed region"));
        }
        let offset = r.u32()?;
        let len = r.u32()?;
        let data = if kind == ItemKind::Read {
            &[][..]
        } else {
            r.bytes(len)?
        };
        if kind != ItemKind::Read && data.is_empty() {
            return Err(ControlError::BadMinitx("empty compare or write"));
        }
        items.push(MinitxItem {
            kind,
            region,
            offset,
            len,
            data,
        });
    }
    r.end()?;
    Ok(MinitxFrame { regions, items })
}

fn decode_failure(body: &[u8]) -> Result<MinitxFailure<'_>, ControlError> {
    let mut r = Reader { body, at: 0 };
    let code = r.u8()?;
    let region = r.u8()?;
    let size = r.u32()?;
    let plain = |f: MinitxFailure<'static>| -> Result<MinitxFailure<'static>, ControlError> {
        if region != 0 || size != 0 {
            return Err(ControlError::BadMinitx("region or size on a failure without"));
        }
        Ok(f)
    };
    let f = match code {
        1 => {
            if region != 0 || size != 0 {
                return Err(ControlError::BadMinitx("region or size on a conflict"));
            }
            let n = usize::from(r.u8()?);
            if n > MAX_MINITX_ITEMS {
                return Err(ControlError::BadMinitx("too many failed compares"));
            }
            let mut failed = Vec::with_capacity(n);
            for _ in 0..n {
                let i = r.u8()?;
                let len = r.u32()?;
                failed.push((i, r.bytes(len)?));
            }
            let m = usize::from(r.u8()?);
            if m > MAX_MINITX_ITEMS {
                return Err(ControlError::BadMinitx("too many reads"));
            }
            let mut reads = Vec::with_capacity(m);
            for _ in 0..m {
                let present = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(ControlError::BadMinitx("read presence byte")),
                };
                let len = r.u32()?;
                let b = r.bytes(len)?;
                if !present && !b.is_empty() {
                    return Err(ControlError::BadMinitx("bytes for an unknown read"));
                }
                reads.push(present.then_some(b));
            }
            MinitxFailure::Conflict { failed, reads }
        }
        2 if size == 0 => MinitxFailure::RegionMissing { region },
        3 => MinitxFailure::SizeMismatch { region, size },
        4 if size == 0 => MinitxFailure::OutOfBounds { region },
        5 => plain(MinitxFailure::TooLarge)?,
        6 => plain(MinitxFailure::NoSpace)?,
        7 => plain(MinitxFailure::NotInMajority)?,
        8 => plain(MinitxFailure::Busy)?,
        9 => plain(MinitxFailure::Unavailable)?,
        10 => plain(MinitxFailure::NoCluster)?,
        2 | 4 => return Err(ControlError::BadMinitx("size on a failure without")),
        code => {
            return Err(ControlError::UnknownCode {
                what: "minitransaction failure",
                code: u16::from(code),
            })
        }
    };
    r.end()?;
    Ok(f)
}

fn clip(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name_strategy() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9._/-]{1,64}"
    }

    fn request_strategy() -> impl Strategy<Value = (u8, u32, u32, String)> {
        (0u8..8, any::<u32>(), any::<u32>(), name_strategy())
    }

    fn build_request(k: u8, a: u32, b: u32, name: &str) -> Request<'_> {
        match k {
            0 => Request::Hello { version: a, pid: b },
            1 => Request::Join {
                name,
                rights: Rights::from_u8((a % 3 + 1) as u8).unwrap(),
                options: [GroupOptions::PLAIN, GroupOptions::ORDERED, GroupOptions::SAFE][b as usize % 3],
            },
            2 => Request::Leave { handle: a },
            3 => Request::Counters { shard: b },
            4 => Request::SnapshotProvider { handle: a },
            5 => Request::SnapshotChunk {
                handle: a,
                position: (u64::from(b) << 7) | u64::from(a),
                offset: b,
                last: a.is_multiple_of(2),
                bytes: name.as_bytes(),
            },
            6 => Request::Watch {
                handle: a,
                position: (u64::from(b) << 32) | u64::from(a),
            },
            _ => Request::Status,
        }
    }

    proptest! {
        #[test]
        fn requests_round_trip((k, a, b, name) in request_strategy()) {
            let req = build_request(k, a, b, &name);
            let mut buf = Vec::new();
            req.encode(&mut buf);
            prop_assert_eq!(Request::decode(&buf).unwrap(), req);
        }

        #[test]
        fn replies_round_trip(k in 0u8..9, a in any::<u32>(), b in any::<u64>(), text in "\\PC{0,200}") {
            let reply = match k {
                0 => Reply::Welcome { version: a, session_id: a ^ 1, node_id: 7, shards: 2 },
                1 => Reply::Joined(Joined { pub_capacity: b, log_capacity: b / 2, handle: a, shard: 1, new_shard: 1, rights: 3, options: (a % 4) as u8, reserved: [0; 5], max_message: b / 3 }),
                2 => Reply::Left,
                3 => Reply::StatusText(&text),
                4 => Reply::CountersPage { shard: a, count: a / 3 },
                5 => Reply::Denied { uid: a, right: Right::from_u8((a % 3) as u8).unwrap(), group: clip(&text, MAX_GROUP_NAME), rule: "orders.*" },
                6 => Reply::LimitReached { limit: Limit::ALL[a as usize % Limit::ALL.len()], max: b },
                7 => Reply::Done,
                _ => Reply::Error { code: ErrorCode::from_u16((a % 8) as u16), text: &text },
            };
            let mut buf = Vec::new();
            reply.encode(&mut buf);
            prop_assert_eq!(Reply::decode(&buf).unwrap(), reply);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Request::decode(&bytes);
            let _ = Reply::decode(&bytes);
        }

        #[test]
        fn corrupted_refusals_are_refused_or_decode_cleanly(
            uid in any::<u32>(), group in "[a-z.]{0,40}", at in any::<usize>(), flip in 1u8..=255, cut in any::<usize>(),
        ) {
            for reply in [
                Reply::Denied { uid, right: Right::Publish, group: &group, rule: "orders.*" },
                Reply::LimitReached { limit: Limit::JoinRate, max: u64::from(uid) },
            ] {
                let mut buf = Vec::new();
                reply.encode(&mut buf);
                let mut bad = buf.clone();
                let at = at % bad.len();
                bad[at] ^= flip;
                let _ = Reply::decode(&bad);
                // Truncated anywhere, with the header's length fixed up to match: an error.
                let cut = HEADER_LEN + cut % (buf.len() - HEADER_LEN);
                let mut short = buf[..cut].to_vec();
                short[8..12].copy_from_slice(&((cut - HEADER_LEN) as u32).to_le_bytes());
                prop_assert!(Reply::decode(&short).is_err());
            }
        }

        #[test]
        fn corrupted_requests_are_refused_or_decode_cleanly(
            (k, a, b, name) in request_strategy(), at in any::<usize>(), flip in 1u8..=255,
        ) {
            let mut buf = Vec::new();
            build_request(k, a, b, &name).encode(&mut buf);
            let at = at % buf.len();
            buf[at] ^= flip;
            // Either a clean error or some well-formed request: never a panic.
            let _ = Request::decode(&buf);
        }
    }

    /// A region index, an item kind, an offset and data for one item.
    fn item_strategy() -> impl Strategy<Value = (u8, u8, u32, Vec<u8>)> {
        (
            0u8..3,
            any::<u8>(),
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 1..40),
        )
    }

    fn frame<'a>(names: &'a [String], items: &'a [(u8, u8, u32, Vec<u8>)]) -> MinitxFrame<'a> {
        MinitxFrame {
            regions: names.iter().map(|n| n.as_str()).collect(),
            items: items
                .iter()
                .map(|(k, r, off, data)| {
                    let kind = [ItemKind::Compare, ItemKind::Read, ItemKind::Write][usize::from(*k)];
                    MinitxItem {
                        kind,
                        region: r % names.len() as u8,
                        offset: *off,
                        len: data.len() as u32,
                        data: if kind == ItemKind::Read { &[] } else { data },
                    }
                })
                .collect(),
        }
    }

    fn names_strategy() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::btree_set(name_strategy(), 1..=MAX_MINITX_REGIONS)
            .prop_map(|s| s.into_iter().collect())
    }

    proptest! {
        #[test]
        fn minitx_requests_round_trip_and_corruption_is_refused_cleanly(
            names in names_strategy(),
            items in proptest::collection::vec(item_strategy(), 1..=MAX_MINITX_ITEMS),
            at in any::<usize>(), flip in 1u8..=255, cut in any::<usize>(),
        ) {
            let req = Request::Minitx(frame(&names, &items));
            let mut buf = Vec::new();
            req.encode(&mut buf);
            prop_assert_eq!(Request::decode(&buf).unwrap(), req);
            let mut bad = buf.clone();
            let at = at % bad.len();
            bad[at] ^= flip;
            let _ = Request::decode(&bad);
            // Cut anywhere in the body, the header's length fixed up: refused.
            let cut = HEADER_LEN + cut % (buf.len() - HEADER_LEN);
            let mut short = buf[..cut].to_vec();
            short[8..12].copy_from_slice(&((cut - HEADER_LEN) as u32).to_le_bytes());
            prop_assert!(Request::decode(&short).is_err());
        }

        #[test]
        fn minitx_replies_round_trip(
            k in 0u8..11, region in any::<u8>(), size in 1u32.., reads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..30), 0..8),
            name in name_strategy(),
        ) {
            let failed: Vec<(u8, &[u8])> = reads.iter().enumerate().map(|(i, r)| (i as u8, r.as_slice())).collect();
            let maybe: Vec<Option<&[u8]>> = reads.iter().enumerate().map(|(i, r)| (i % 2 == 0).then_some(r.as_slice())).collect();
            let reply = match k {
                0 => Reply::MinitxDone { reads: reads.iter().map(|r| r.as_slice()).collect() },
                1 => Reply::MinitxFailed(MinitxFailure::Conflict { failed, reads: maybe }),
                2 => Reply::MinitxFailed(MinitxFailure::RegionMissing { region }),
                3 => Reply::MinitxFailed(MinitxFailure::SizeMismatch { region, size }),
                4 => Reply::MinitxFailed(MinitxFailure::OutOfBounds { region }),
                5 => Reply::MinitxFailed(MinitxFailure::TooLarge),
                6 => Reply::MinitxFailed(MinitxFailure::NoSpace),
                7 => Reply::MinitxFailed(MinitxFailure::NotInMajority),
                8 => Reply::MinitxFailed(MinitxFailure::Busy),
                9 => Reply::MinitxFailed(MinitxFailure::Unavailable),
                _ => Reply::MinitxFailed(MinitxFailure::NoCluster),
            };
            let mut buf = Vec::new();
            reply.encode(&mut buf);
            prop_assert_eq!(Reply::decode(&buf).unwrap(), reply);
            let create = Request::RegionCreate { name: &name, size };
            let mut buf = Vec::new();
            create.encode(&mut buf);
            prop_assert_eq!(Request::decode(&buf).unwrap(), create);
        }
    }

    #[test]
    fn minitx_frames_are_strict() {
        let names = ["a".to_string(), "b".to_string()];
        let items = [(1u8, 1u8, 0u32, vec![0u8; 4])];
        let mut buf = Vec::new();
        Request::Minitx(frame(&names, &items)).encode(&mut buf);
        // body: 2, 1 'a', 1 'b', 1, kind, region, offset, len
        let body = HEADER_LEN;
        let mut b = buf.clone();
        b[body + 6] = 3;
        assert!(matches!(
            Request::decode(&b),
            Err(ControlError::UnknownCode { .. })
        ));
        let mut b = buf.clone();
        b[body + 7] = 2;
        assert_eq!(
            Request::decode(&b),
            Err(ControlError::BadMinitx("item names no listed region"))
        );
        let mut b = buf.clone();
        b[body + 4] = b'a';
        assert_eq!(
            Request::decode(&b),
            Err(ControlError::BadMinitx("a region named twice"))
        );
        let mut b = buf.clone();
        b[body] = 0;
        assert_eq!(Request::decode(&b), Err(ControlError::BadMinitx("region count")));
        let mut b = buf.clone();
        b[body + 5] = 0;
        b.truncate(body + 6);
        b[8..12].copy_from_slice(&6u32.to_le_bytes());
        assert_eq!(Request::decode(&b), Err(ControlError::BadMinitx("item count")));
        // A write without data, and trailing bytes, are refused.
        let mut b = buf.clone();
        b[body + 6] = 2;
        b[body + 12..body + 16].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            Request::decode(&b),
            Err(ControlError::BadMinitx("empty compare or write"))
        );
        let mut b = buf.clone();
        b.push(0);
        b[8..12].copy_from_slice(&((buf.len() - HEADER_LEN + 1) as u32).to_le_bytes());
        assert!(matches!(
            Request::decode(&b),
            Err(ControlError::LengthMismatch { .. })
        ));
        // A huge declared length never allocates or panics.
        let mut b = buf.clone();
        b[body + 6] = 0;
        b[body + 12..body + 16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(Request::decode(&b), Err(ControlError::Truncated { .. })));
        let mut f = Vec::new();
        Reply::MinitxFailed(MinitxFailure::Busy).encode(&mut f);
        f[HEADER_LEN + 1] = 1;
        assert!(matches!(Reply::decode(&f), Err(ControlError::BadMinitx(_))));
    }

    #[test]
    fn errors_are_specific() {
        assert_eq!(
            Request::decode(&[1, 2]),
            Err(ControlError::Truncated { got: 2, need: 12 })
        );
        let mut buf = Vec::new();
        Request::Leave { handle: 3 }.encode(&mut buf);
        buf.push(0);
        assert!(matches!(
            Request::decode(&buf),
            Err(ControlError::LengthMismatch { .. })
        ));
        buf.pop();
        buf[0] ^= 1;
        assert!(matches!(Request::decode(&buf), Err(ControlError::BadMagic(_))));
        let mut join = Vec::new();
        put_header(&mut join, kind::JOIN, 0);
        assert_eq!(Request::decode(&join), Err(ControlError::BadGroupName));
        let mut unknown = Vec::new();
        put_header(&mut unknown, 77, 0);
        assert_eq!(Request::decode(&unknown), Err(ControlError::UnknownKind(77)));
        assert!(validate_group_name(&"x".repeat(256)).is_err());
        let mut join_as = Vec::new();
        put_header(&mut join_as, kind::JOIN_AS, 3);
        join_as.extend_from_slice(&[0, b'a', b'b']);
        assert_eq!(Request::decode(&join_as), Err(ControlError::BadRights(0)));
        join_as[HEADER_LEN] = 4;
        assert_eq!(Request::decode(&join_as), Err(ControlError::BadRights(4)));
        join_as[HEADER_LEN] = 2;
        assert_eq!(
            Request::decode(&join_as),
            Ok(Request::Join {
                name: "ab",
                rights: Rights::SUBSCRIBE,
                options: GroupOptions::PLAIN
            })
        );
        assert!(validate_group_name("prices.eu").is_ok());
    }

    #[test]
    fn group_options_keep_old_joins_and_refuse_nonsense() {
        // Default options still encode as the version-1 requests.
        let mut plain = Vec::new();
        Request::Join {
            name: "g",
            rights: Rights::BOTH,
            options: GroupOptions::PLAIN,
        }
        .encode(&mut plain);
        assert_eq!(u16::from_le_bytes([plain[4], plain[5]]), kind::JOIN);
        let mut with = Vec::new();
        put_header(&mut with, kind::JOIN_WITH, 3);
        with.extend_from_slice(&[3, 2, b'g']);
        assert_eq!(Request::decode(&with), Err(ControlError::BadOptions(2)));
        with[HEADER_LEN + 1] = 4;
        assert_eq!(Request::decode(&with), Err(ControlError::BadOptions(4)));
        with[HEADER_LEN + 1] = 8;
        assert_eq!(Request::decode(&with), Err(ControlError::BadOptions(8)));
        with[HEADER_LEN + 1] = 5;
        assert_eq!(
            Request::decode(&with),
            Ok(Request::Join {
                name: "g",
                rights: Rights::BOTH,
                options: GroupOptions::CPG
            })
        );
        with[HEADER_LEN + 1] = 3;
        assert_eq!(
            Request::decode(&with),
            Ok(Request::Join {
                name: "g",
                rights: Rights::BOTH,
                options: GroupOptions::SAFE
            })
        );
        let mut short = Vec::new();
        put_header(&mut short, kind::JOIN_WITH, 2);
        short.extend_from_slice(&[3, 1]);
        assert_eq!(Request::decode(&short), Err(ControlError::BadGroupName));
        let mut chunk = Vec::new();
        put_header(&mut chunk, kind::SNAPSHOT_CHUNK, SNAPSHOT_CHUNK_HEADER);
        chunk.extend_from_slice(&[0; SNAPSHOT_CHUNK_HEADER]);
        chunk[HEADER_LEN + 16] = 2;
        assert!(matches!(
            Request::decode(&chunk),
            Err(ControlError::UnknownCode { .. })
        ));
        chunk.truncate(HEADER_LEN + 10);
        chunk[8..12].copy_from_slice(&10u32.to_le_bytes());
        assert!(matches!(
            Request::decode(&chunk),
            Err(ControlError::Truncated { .. })
        ));
    }
}
