//! Messages of the minitransaction layer (Sinfonia-style, see `docs/ordered.md`): what a
//! coordinator, the memory nodes it drives and their backups say to each other. Every
//! message is a [`Message`]: an 8-byte header naming the kind and the memory node, then a
//! body. The decoder is strict (it slices with `get`, never indexes, checks every count
//! against the bytes left before allocating) and returns a typed [`MinitxError`].
//!
//! All integers are little-endian. Layouts (`[x]*n` is `n` repetitions):
//!
//! ```text
//! header     magic u16 "MT" | version u8 | kind u8 | memnode u16 | flags u16
//!            (flags: 0, or `FLAG_WATCH` on an exec)
//! txid       coordinator u32 | incarnation u32 | seq u64
//! range      region u32 | offset u32 | len u32
//! item       range | len bytes
//! items      ncompares u16 | [item]* | nreads u16 | [range]* | nwrites u16 | [item]*
//! exec       txid | items
//! prepare    txid | nparticipants u16 | [memnode u16]* | items
//! reply      txid | status u8 | nfailed u16 | [index u16 | len u32 | bytes]*
//!                 | nreads u16 | [len u32 | bytes]*
//! decide     txid | commit u8 (0 or 1)
//! decide-ack txid
//! query      txid | asking memnode u16
//! query-rep  txid | state u8
//! replicate  epoch u64 | lsn u64 | record
//! repl-ack   epoch u64 | lsn u64
//! forget     ntxids u16 | [txid]*
//! wake       (no body)
//! record     tag u8 = 1 (prepared): txid | nparticipants u16 | [memnode u16]*
//!                 | nlocks u16 | [range | exclusive u8]* | nwrites u16 | [item]*
//!                 | len u32 | reply message bytes
//!            tag u8 = 2 (outcome):  txid | commit u8 | nwrites u16 | [item]*
//!                 | len u32 | reply message bytes
//!            tag u8 = 3 (forget):   ntxids u16 | [txid]*
//! ```

use thiserror::Error;

/// "MT" in little-endian byte order.
pub const MINITX_MAGIC: u16 = u16::from_le_bytes(*b"MT");
/// Bumped on any incompatible change of these layouts (2: the `FLAG_WATCH` exec and the
/// `wake` message; 3: state transfer to a new backup, `Snapshot` and `SnapshotAck`).
pub const MINITX_VERSION: u8 = 3;
/// Header flag of an exec: its sender is a dormant reader; the memory node wakes it (a
/// [`Message::Wake`]) once, when a committed write first touches the exec's first read
/// range. The only flag; any other bit, or this one on another kind, is refused.
pub const FLAG_WATCH: u16 = 1;
/// Bytes of the fixed header.
pub const HEADER_LEN: usize = 8;

/// The kind of an encoded message, read from its header if the magic and version are this
/// module's; nothing else is checked (`Message::decode` validates the rest). For routing a
/// message to its decoder without decoding it twice.
pub fn kind_of(bytes: &[u8]) -> Option<u8> {
    let magic = u16::from_le_bytes([*bytes.first()?, *bytes.get(1)?]);
    (magic == MINITX_MAGIC && *bytes.get(2)? == MINITX_VERSION).then(|| bytes.get(3).copied())?
}
/// The memory node a message names (the header's `memnode`), under the same checks as
/// [`kind_of`]: routes a message to its list without decoding its body, which the receiver
/// decodes (and refuses, counted, if malformed).
pub fn memnode_of(bytes: &[u8]) -> Option<u16> {
    kind_of(bytes)?;
    Some(u16::from_le_bytes([*bytes.get(4)?, *bytes.get(5)?]))
}
/// Most items of one kind (compares, reads or writes) in one message, and most locks in a
/// record: a decoder refuses more before allocating anything.
pub const MAX_ITEMS: usize = 256;
/// Most memory nodes one transaction may involve.
pub const MAX_PARTICIPANTS: usize = 64;
/// Most transactions one forget message or record names.
pub const MAX_FORGET: usize = 256;
/// Largest message the decoder accepts (and the encoder is expected to produce): a
/// minitransaction's data must fit one message per memory node.
pub const MAX_MESSAGE: usize = 1 << 20;

/// Why bytes were refused as a minitransaction message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MinitxError {
    #[error("minitransaction message truncated: need {need} more bytes at offset {at}")]
    Truncated { at: usize, need: usize },
    #[error("not a minitransaction message (magic {0:#06x})")]
    BadMagic(u16),
    #[error("minitransaction version {0}, this build speaks {MINITX_VERSION}")]
    BadVersion(u8),
    #[error("unknown minitransaction message kind {0}")]
    UnknownKind(u8),
    #[error("nonzero flags {0:#06x} in a minitransaction header")]
    BadFlags(u16),
    #[error("{what} count {count} exceeds the limit of {max}")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("message of {0} bytes exceeds the limit of {MAX_MESSAGE}")]
    TooLong(usize),
    #[error("unknown {what} code {code}")]
    UnknownCode { what: &'static str, code: u8 },
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
}

/// A transaction's identity: its coordinator, the coordinator's incarnation (grows with
/// every restart of that node) and a sequence number (grows within an incarnation). So
/// `(incarnation, seq)` grows for a coordinator node across its restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxId {
    pub coordinator: u32,
    pub incarnation: u32,
    pub seq: u64,
}

impl TxId {
    /// Position of this transaction in its coordinator's history.
    pub fn position(&self) -> (u32, u64) {
        (self.incarnation, self.seq)
    }
}

/// A byte range of a memory node: `len` bytes at `offset` in region `region`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Range {
    pub region: u32,
    pub offset: u32,
    pub len: u32,
}

/// A range with bytes: a compare item (expected bytes) or a write item (bytes to store).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Item<'a> {
    pub range: Range,
    pub data: &'a [u8],
}

/// The items of one minitransaction at one memory node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Items<'a> {
    pub compares: Vec<Item<'a>>,
    pub reads: Vec<Range>,
    pub writes: Vec<Item<'a>>,
}

/// A memory node's answer to an exec (one phase) or a prepare (its vote).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Exec: all compares matched, the writes are applied (and replicated).
    Committed,
    /// Prepare: vote yes. Compares matched, locks taken, the prepare is replicated.
    Prepared,
    /// A compare did not match: nothing written. `failed` and `reads` say why.
    Conflict,
    /// A lock was held by another prepared transaction, or a bound was reached: retry.
    Busy,
    /// An item names a region this memory node does not have.
    RegionMissing,
    /// An item reaches past the end of its region.
    OutOfBounds,
    /// More items or bytes than the memory node's limits.
    TooLarge,
    /// The transaction is older than what this memory node still remembers of its
    /// coordinator: it cannot say whether it executed it.
    Stale,
    /// Prepare: the transaction was already aborted here (by a recovery query).
    Aborted,
}

impl Status {
    fn code(self) -> u8 {
        match self {
            Status::Committed => 1,
            Status::Prepared => 2,
            Status::Conflict => 3,
            Status::Busy => 4,
            Status::RegionMissing => 5,
            Status::OutOfBounds => 6,
            Status::TooLarge => 7,
            Status::Stale => 8,
            Status::Aborted => 9,
        }
    }

    fn from_code(code: u8) -> Result<Status, MinitxError> {
        Ok(match code {
            1 => Status::Committed,
            2 => Status::Prepared,
            3 => Status::Conflict,
            4 => Status::Busy,
            5 => Status::RegionMissing,
            6 => Status::OutOfBounds,
            7 => Status::TooLarge,
            8 => Status::Stale,
            9 => Status::Aborted,
            code => return Err(MinitxError::UnknownCode { what: "status", code }),
        })
    }
}

/// What a memory node knows of a transaction, in answer to a recovery query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnState {
    /// Voted yes, no outcome yet.
    Prepared,
    Committed,
    /// Voted no, aborted, or (asked before it voted) aborted on the spot.
    Aborted,
}

impl TxnState {
    fn code(self) -> u8 {
        match self {
            TxnState::Prepared => 1,
            TxnState::Committed => 2,
            TxnState::Aborted => 3,
        }
    }

    fn from_code(code: u8) -> Result<TxnState, MinitxError> {
        Ok(match code {
            1 => TxnState::Prepared,
            2 => TxnState::Committed,
            3 => TxnState::Aborted,
            code => {
                return Err(MinitxError::UnknownCode {
                    what: "transaction state",
                    code,
                })
            }
        })
    }
}

/// A memory node's answer: a status, the compares that failed (index among this memory
/// node's compare items, current bytes) and the bytes of every read item, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply<'a> {
    pub status: Status,
    pub failed: Vec<(u16, &'a [u8])>,
    pub reads: Vec<&'a [u8]>,
}

/// A range locked by a prepared transaction: shared for compares and reads, exclusive
/// for writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lock {
    pub range: Range,
    pub exclusive: bool,
}

/// One entry of a memory node's redo log, shipped from the primary to its backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    /// The memory node voted yes: it holds these locks and will apply these writes if
    /// the transaction commits. `reply` is the vote message, resent to duplicates.
    Prepared {
        txid: TxId,
        participants: Vec<u16>,
        locks: Vec<Lock>,
        writes: Vec<Item<'a>>,
        reply: &'a [u8],
    },
    /// The transaction is decided here: `writes` (a one-phase commit's) are applied if
    /// `commit`, and a prepared transaction's own writes with it. `reply` is the message
    /// resent to a duplicate exec or prepare.
    Outcome {
        txid: TxId,
        commit: bool,
        writes: Vec<Item<'a>>,
        reply: &'a [u8],
    },
    /// Every participant of these transactions holds their outcome: nobody will ask
    /// about them again, so they are forgotten first when the memory is needed.
    Forget { txids: Vec<TxId> },
}

/// A minitransaction-layer message. `memnode` is the memory node it is addressed to
/// (requests) or comes from (answers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// Coordinator -> memory node: a minitransaction on this memory node only (one phase).
    /// `watch`: the sender is a dormant reader (`FLAG_WATCH`).
    Exec {
        memnode: u16,
        txid: TxId,
        items: Items<'a>,
        watch: bool,
    },
    /// Coordinator -> participant: phase 1. `participants` names every memory node of
    /// the transaction (for recovery).
    Prepare {
        memnode: u16,
        txid: TxId,
        participants: Vec<u16>,
        items: Items<'a>,
    },
    /// Memory node -> coordinator: the result of an exec, or a vote.
    Reply {
        memnode: u16,
        txid: TxId,
        reply: Reply<'a>,
    },
    /// Coordinator (or a recovering participant) -> participant: phase 2.
    Decide { memnode: u16, txid: TxId, commit: bool },
    /// Participant -> sender of the decide: the outcome is applied and replicated.
    DecideAck { memnode: u16, txid: TxId },
    /// Participant `from` -> participant `memnode`: what do you know of `txid`? A memory
    /// node that has not voted aborts the transaction on the spot.
    Query { memnode: u16, txid: TxId, from: u16 },
    /// Answer to a query.
    QueryReply {
        memnode: u16,
        txid: TxId,
        state: TxnState,
    },
    /// Primary -> backup: redo log entry `lsn` (from 1, consecutive) of epoch `epoch`.
    Replicate {
        memnode: u16,
        epoch: u64,
        lsn: u64,
        record: Record<'a>,
    },
    /// Backup -> primary: every entry up to `lsn` is applied; bit `i` of `ahead` says the
    /// backup holds entry `lsn + 2 + i` too (kept past the missing `lsn + 1`), so that the
    /// primary resends only what is missing.
    ReplicateAck {
        memnode: u16,
        epoch: u64,
        lsn: u64,
        ahead: u64,
    },
    /// Coordinator -> participant: every participant acknowledged these transactions'
    /// decisions (garbage collection of remembered outcomes).
    Forget { memnode: u16, txids: Vec<TxId> },
    /// Memory node -> a dormant reader (an exec with `watch`): a write touched what it
    /// watches; read again. Carries nothing else: a forged one can only cause a read.
    Wake { memnode: u16 },
    /// Primary -> new backup of epoch `epoch`: chunk `index` of `count` of the memory
    /// node's state as of redo-log entry `lsn` (state transfer; version 3).
    Snapshot {
        memnode: u16,
        epoch: u64,
        lsn: u64,
        index: u32,
        count: u32,
        chunk: &'a [u8],
    },
    /// New backup -> primary: the first `received` chunks of the snapshot are held, and
    /// chunk `received + 1 + i` too for every bit `i` set in `held` (selective: the
    /// primary resends only the missing ones).
    SnapshotAck {
        memnode: u16,
        epoch: u64,
        received: u32,
        held: u64,
    },
}

/// Message kind codes (the byte at offset 3 of the header): a transport routes answers
/// (`REPLY`, `DECIDE_ACK`) to coordinators and the rest to memory nodes.
pub mod kind {
    pub const EXEC: u8 = 1;
    pub const PREPARE: u8 = 2;
    pub const REPLY: u8 = 3;
    pub const DECIDE: u8 = 4;
    pub const DECIDE_ACK: u8 = 5;
    pub const QUERY: u8 = 6;
    pub const QUERY_REPLY: u8 = 7;
    pub const REPLICATE: u8 = 8;
    pub const REPLICATE_ACK: u8 = 9;
    pub const FORGET: u8 = 10;
    pub const WAKE: u8 = 11;
    pub const SNAPSHOT: u8 = 12;
    pub const SNAPSHOT_ACK: u8 = 13;
}

const RECORD_PREPARED: u8 = 1;
const RECORD_OUTCOME: u8 = 2;
const RECORD_FORGET: u8 = 3;

impl<'a> Message<'a> {
    /// The memory node named in the header.
    pub fn memnode(&self) -> u16 {
        match self {
            Message::Exec { memnode, .. }
            | Message::Prepare { memnode, .. }
            | Message::Reply { memnode, .. }
            | Message::Decide { memnode, .. }
            | Message::DecideAck { memnode, .. }
            | Message::Query { memnode, .. }
            | Message::QueryReply { memnode, .. }
            | Message::Replicate { memnode, .. }
            | Message::ReplicateAck { memnode, .. }
            | Message::Forget { memnode, .. }
            | Message::Wake { memnode }
            | Message::Snapshot { memnode, .. }
            | Message::SnapshotAck { memnode, .. } => *memnode,
        }
    }

    /// Appends the encoded message to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let kind = match self {
            Message::Exec { .. } => kind::EXEC,
            Message::Prepare { .. } => kind::PREPARE,
            Message::Reply { .. } => kind::REPLY,
            Message::Decide { .. } => kind::DECIDE,
            Message::DecideAck { .. } => kind::DECIDE_ACK,
            Message::Query { .. } => kind::QUERY,
            Message::QueryReply { .. } => kind::QUERY_REPLY,
            Message::Replicate { .. } => kind::REPLICATE,
            Message::ReplicateAck { .. } => kind::REPLICATE_ACK,
            Message::Forget { .. } => kind::FORGET,
            Message::Wake { .. } => kind::WAKE,
            Message::Snapshot { .. } => kind::SNAPSHOT,
            Message::SnapshotAck { .. } => kind::SNAPSHOT_ACK,
        };
        let flags = match self {
            Message::Exec { watch: true, .. } => FLAG_WATCH,
            _ => 0,
        };
        out.extend_from_slice(&MINITX_MAGIC.to_le_bytes());
        out.push(MINITX_VERSION);
        out.push(kind);
        out.extend_from_slice(&self.memnode().to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        match self {
            Message::Exec { txid, items, .. } => {
                put_txid(out, txid);
                put_items(out, items);
            }
            Message::Prepare {
                txid,
                participants,
                items,
                ..
            } => {
                put_txid(out, txid);
                put_u16s(out, participants);
                put_items(out, items);
            }
            Message::Reply { txid, reply, .. } => {
                put_txid(out, txid);
                out.push(reply.status.code());
                put_count(out, reply.failed.len());
                for (index, bytes) in &reply.failed {
                    out.extend_from_slice(&index.to_le_bytes());
                    put_bytes(out, bytes);
                }
                put_count(out, reply.reads.len());
                for bytes in &reply.reads {
                    put_bytes(out, bytes);
                }
            }
            Message::Decide { txid, commit, .. } => {
                put_txid(out, txid);
                out.push(u8::from(*commit));
            }
            Message::DecideAck { txid, .. } => put_txid(out, txid),
            Message::Query { txid, from, .. } => {
                put_txid(out, txid);
                out.extend_from_slice(&from.to_le_bytes());
            }
            Message::QueryReply { txid, state, .. } => {
                put_txid(out, txid);
                out.push(state.code());
            }
            Message::Replicate {
                epoch, lsn, record, ..
            } => {
                out.extend_from_slice(&epoch.to_le_bytes());
                out.extend_from_slice(&lsn.to_le_bytes());
                record.encode(out);
            }
            Message::ReplicateAck {
                epoch, lsn, ahead, ..
            } => {
                out.extend_from_slice(&epoch.to_le_bytes());
                out.extend_from_slice(&lsn.to_le_bytes());
                out.extend_from_slice(&ahead.to_le_bytes());
            }
            Message::Forget { txids, .. } => put_txids(out, txids),
            Message::Wake { .. } => {}
            Message::Snapshot {
                epoch,
                lsn,
                index,
                count,
                chunk,
                ..
            } => {
                out.extend_from_slice(&epoch.to_le_bytes());
                out.extend_from_slice(&lsn.to_le_bytes());
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(&count.to_le_bytes());
                out.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
                out.extend_from_slice(chunk);
            }
            Message::SnapshotAck {
                epoch,
                received,
                held,
                ..
            } => {
                out.extend_from_slice(&epoch.to_le_bytes());
                out.extend_from_slice(&received.to_le_bytes());
                out.extend_from_slice(&held.to_le_bytes());
            }
        }
    }

    /// The encoded message in a new vector, allocated once ([`Message::encoded_len`]: an
    /// append of 128 payloads grew its vector 10 times on the way to 11 KiB).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out);
        debug_assert!(out.len() <= out.capacity());
        out
    }

    /// Bytes of the encoded message, or a little more (an upper bound that sizes
    /// `to_vec`'s vector; a short one would only cost a reallocation).
    pub fn encoded_len(&self) -> usize {
        const HEADER: usize = 8;
        const TXID: usize = 16;
        const COUNT: usize = 2;
        const RANGE: usize = 12;
        let item_list =
            |items: &[Item<'_>]| COUNT + items.iter().map(|i| RANGE + i.data.len()).sum::<usize>();
        let items =
            |i: &Items<'_>| item_list(&i.compares) + COUNT + RANGE * i.reads.len() + item_list(&i.writes);
        HEADER
            + match self {
                Message::Exec { items: i, .. } => TXID + items(i),
                Message::Prepare {
                    participants,
                    items: i,
                    ..
                } => TXID + COUNT + 2 * participants.len() + items(i),
                Message::Reply { reply, .. } => {
                    TXID + 1
                        + COUNT
                        + reply.failed.iter().map(|(_, b)| 2 + 4 + b.len()).sum::<usize>()
                        + COUNT
                        + reply.reads.iter().map(|b| 4 + b.len()).sum::<usize>()
                }
                Message::Replicate { record, .. } => {
                    16 + match record {
                        Record::Prepared {
                            participants,
                            locks,
                            writes,
                            reply,
                            ..
                        } => {
                            1 + TXID
                                + COUNT
                                + 2 * participants.len()
                                + COUNT
                                + (RANGE + 1) * locks.len()
                                + item_list(writes)
                                + 4
                                + reply.len()
                        }
                        Record::Outcome { writes, reply, .. } => {
                            1 + TXID + 1 + item_list(writes) + 4 + reply.len()
                        }
                        Record::Forget { txids } => 1 + COUNT + TXID * txids.len(),
                    }
                }
                Message::Forget { txids, .. } => COUNT + TXID * txids.len(),
                Message::Snapshot { chunk, .. } => 28 + chunk.len(),
                Message::Decide { .. }
                | Message::SnapshotAck { .. }
                | Message::DecideAck { .. }
                | Message::Query { .. }
                | Message::QueryReply { .. }
                | Message::ReplicateAck { .. }
                | Message::Wake { .. } => 32,
            }
    }

    /// Decodes one whole message (no trailing bytes).
    pub fn decode(bytes: &'a [u8]) -> Result<Message<'a>, MinitxError> {
        if bytes.len() > MAX_MESSAGE {
            return Err(MinitxError::TooLong(bytes.len()));
        }
        let mut r = Reader { bytes, at: 0 };
        let magic = r.u16()?;
        if magic != MINITX_MAGIC {
            return Err(MinitxError::BadMagic(magic));
        }
        let version = r.u8()?;
        if version != MINITX_VERSION {
            return Err(MinitxError::BadVersion(version));
        }
        let kind = r.u8()?;
        let memnode = r.u16()?;
        let flags = r.u16()?;
        if flags != 0 && !(kind == kind::EXEC && flags == FLAG_WATCH) {
            return Err(MinitxError::BadFlags(flags));
        }
        let message = match kind {
            kind::EXEC => Message::Exec {
                memnode,
                txid: r.txid()?,
                items: r.items()?,
                watch: flags == FLAG_WATCH,
            },
            kind::PREPARE => Message::Prepare {
                memnode,
                txid: r.txid()?,
                participants: r.u16s()?,
                items: r.items()?,
            },
            kind::REPLY => {
                let txid = r.txid()?;
                let status = Status::from_code(r.u8()?)?;
                let n = r.count("failed compare", MAX_ITEMS, 6)?;
                let mut failed = Vec::with_capacity(n);
                for _ in 0..n {
                    let index = r.u16()?;
                    failed.push((index, r.bytes_u32()?));
                }
                let n = r.count("read", MAX_ITEMS, 4)?;
                let mut reads = Vec::with_capacity(n);
                for _ in 0..n {
                    reads.push(r.bytes_u32()?);
                }
                Message::Reply {
                    memnode,
                    txid,
                    reply: Reply {
                        status,
                        failed,
                        reads,
                    },
                }
            }
            kind::DECIDE => Message::Decide {
                memnode,
                txid: r.txid()?,
                commit: r.flag("commit")?,
            },
            kind::DECIDE_ACK => Message::DecideAck {
                memnode,
                txid: r.txid()?,
            },
            kind::QUERY => Message::Query {
                memnode,
                txid: r.txid()?,
                from: r.u16()?,
            },
            kind::QUERY_REPLY => Message::QueryReply {
                memnode,
                txid: r.txid()?,
                state: TxnState::from_code(r.u8()?)?,
            },
            kind::REPLICATE => Message::Replicate {
                memnode,
                epoch: r.u64()?,
                lsn: r.u64()?,
                record: r.record()?,
            },
            kind::REPLICATE_ACK => Message::ReplicateAck {
                memnode,
                epoch: r.u64()?,
                lsn: r.u64()?,
                ahead: r.u64()?,
            },
            kind::FORGET => Message::Forget {
                memnode,
                txids: r.txids()?,
            },
            kind::WAKE => Message::Wake { memnode },
            kind::SNAPSHOT => Message::Snapshot {
                memnode,
                epoch: r.u64()?,
                lsn: r.u64()?,
                index: r.u32()?,
                count: r.u32()?,
                chunk: r.bytes_u32()?,
            },
            kind::SNAPSHOT_ACK => Message::SnapshotAck {
                memnode,
                epoch: r.u64()?,
                received: r.u32()?,
                held: r.u64()?,
            },
            other => return Err(MinitxError::UnknownKind(other)),
        };
        r.finish()?;
        Ok(message)
    }
}

impl<'a> Record<'a> {
    /// Appends the encoded record to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Record::Prepared {
                txid,
                participants,
                locks,
                writes,
                reply,
            } => {
                out.push(RECORD_PREPARED);
                put_txid(out, txid);
                put_u16s(out, participants);
                put_count(out, locks.len());
                for lock in locks {
                    put_range(out, &lock.range);
                    out.push(u8::from(lock.exclusive));
                }
                put_item_list(out, writes);
                put_bytes(out, reply);
            }
            Record::Outcome {
                txid,
                commit,
                writes,
                reply,
            } => {
                out.push(RECORD_OUTCOME);
                put_txid(out, txid);
                out.push(u8::from(*commit));
                put_item_list(out, writes);
                put_bytes(out, reply);
            }
            Record::Forget { txids } => {
                out.push(RECORD_FORGET);
                put_txids(out, txids);
            }
        }
    }

    /// Decodes one whole record (no trailing bytes).
    pub fn decode(bytes: &'a [u8]) -> Result<Record<'a>, MinitxError> {
        if bytes.len() > MAX_MESSAGE {
            return Err(MinitxError::TooLong(bytes.len()));
        }
        let mut r = Reader { bytes, at: 0 };
        let record = r.record()?;
        r.finish()?;
        Ok(record)
    }
}

// Counts are u16 on the wire; the encoder's callers respect MAX_ITEMS / MAX_PARTICIPANTS
// (asserted: a larger list is a caller bug, not untrusted input).
fn put_count(out: &mut Vec<u8>, n: usize) {
    let n = u16::try_from(n).expect("minitx list longer than u16::MAX");
    out.extend_from_slice(&n.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let n = u32::try_from(bytes.len()).expect("minitx byte string longer than u32::MAX");
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_txid(out: &mut Vec<u8>, txid: &TxId) {
    out.extend_from_slice(&txid.coordinator.to_le_bytes());
    out.extend_from_slice(&txid.incarnation.to_le_bytes());
    out.extend_from_slice(&txid.seq.to_le_bytes());
}

fn put_txids(out: &mut Vec<u8>, txids: &[TxId]) {
    put_count(out, txids.len());
    for txid in txids {
        put_txid(out, txid);
    }
}

fn put_range(out: &mut Vec<u8>, range: &Range) {
    out.extend_from_slice(&range.region.to_le_bytes());
    out.extend_from_slice(&range.offset.to_le_bytes());
    out.extend_from_slice(&range.len.to_le_bytes());
}

fn put_u16s(out: &mut Vec<u8>, list: &[u16]) {
    put_count(out, list.len());
    for v in list {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn put_item_list(out: &mut Vec<u8>, items: &[Item<'_>]) {
    put_count(out, items.len());
    for item in items {
        debug_assert_eq!(item.data.len(), item.range.len as usize);
        put_range(out, &item.range);
        out.extend_from_slice(item.data);
    }
}

fn put_items(out: &mut Vec<u8>, items: &Items<'_>) {
    put_item_list(out, &items.compares);
    put_count(out, items.reads.len());
    for range in &items.reads {
        put_range(out, range);
    }
    put_item_list(out, &items.writes);
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MinitxError> {
        let end = self
            .at
            .checked_add(n)
            .ok_or(MinitxError::Truncated { at: self.at, need: n })?;
        let out = self.bytes.get(self.at..end).ok_or(MinitxError::Truncated {
            at: self.at,
            need: end - self.bytes.len().min(end),
        })?;
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], MinitxError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, MinitxError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, MinitxError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, MinitxError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, MinitxError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn flag(&mut self, what: &'static str) -> Result<bool, MinitxError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            code => Err(MinitxError::UnknownCode { what, code }),
        }
    }

    /// A u16 count, checked against `max` and against the bytes left (each element takes
    /// at least `min_size` bytes), so a hostile count never sizes an allocation.
    fn count(&mut self, what: &'static str, max: usize, min_size: usize) -> Result<usize, MinitxError> {
        let count = usize::from(self.u16()?);
        if count > max {
            return Err(MinitxError::TooMany { what, count, max });
        }
        let need = count * min_size;
        let left = self.bytes.len() - self.at;
        if need > left {
            return Err(MinitxError::Truncated {
                at: self.at,
                need: need - left,
            });
        }
        Ok(count)
    }

    fn bytes_u32(&mut self) -> Result<&'a [u8], MinitxError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn txid(&mut self) -> Result<TxId, MinitxError> {
        Ok(TxId {
            coordinator: self.u32()?,
            incarnation: self.u32()?,
            seq: self.u64()?,
        })
    }

    fn txids(&mut self) -> Result<Vec<TxId>, MinitxError> {
        let n = self.count("forgotten transaction", MAX_FORGET, 16)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.txid()?);
        }
        Ok(out)
    }

    fn range(&mut self) -> Result<Range, MinitxError> {
        Ok(Range {
            region: self.u32()?,
            offset: self.u32()?,
            len: self.u32()?,
        })
    }

    fn u16s(&mut self) -> Result<Vec<u16>, MinitxError> {
        let n = self.count("participant", MAX_PARTICIPANTS, 2)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.u16()?);
        }
        Ok(out)
    }

    fn item_list(&mut self, what: &'static str) -> Result<Vec<Item<'a>>, MinitxError> {
        let n = self.count(what, MAX_ITEMS, 12)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let range = self.range()?;
            let data = self.take(range.len as usize)?;
            out.push(Item { range, data });
        }
        Ok(out)
    }

    fn items(&mut self) -> Result<Items<'a>, MinitxError> {
        let compares = self.item_list("compare item")?;
        let n = self.count("read item", MAX_ITEMS, 12)?;
        let mut reads = Vec::with_capacity(n);
        for _ in 0..n {
            reads.push(self.range()?);
        }
        let writes = self.item_list("write item")?;
        Ok(Items {
            compares,
            reads,
            writes,
        })
    }

    fn record(&mut self) -> Result<Record<'a>, MinitxError> {
        match self.u8()? {
            RECORD_PREPARED => {
                let txid = self.txid()?;
                let participants = self.u16s()?;
                let n = self.count("lock", MAX_ITEMS * 3, 13)?;
                let mut locks = Vec::with_capacity(n);
                for _ in 0..n {
                    let range = self.range()?;
                    let exclusive = self.flag("lock mode")?;
                    locks.push(Lock { range, exclusive });
                }
                let writes = self.item_list("write item")?;
                let reply = self.bytes_u32()?;
                Ok(Record::Prepared {
                    txid,
                    participants,
                    locks,
                    writes,
                    reply,
                })
            }
            RECORD_OUTCOME => {
                let txid = self.txid()?;
                let commit = self.flag("commit")?;
                let writes = self.item_list("write item")?;
                let reply = self.bytes_u32()?;
                Ok(Record::Outcome {
                    txid,
                    commit,
                    writes,
                    reply,
                })
            }
            RECORD_FORGET => Ok(Record::Forget { txids: self.txids()? }),
            code => Err(MinitxError::UnknownCode {
                what: "record tag",
                code,
            }),
        }
    }

    fn finish(&self) -> Result<(), MinitxError> {
        match self.bytes.len() - self.at {
            0 => Ok(()),
            n => Err(MinitxError::Trailing(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn txid() -> impl Strategy<Value = TxId> {
        (any::<u32>(), any::<u32>(), any::<u64>()).prop_map(|(coordinator, incarnation, seq)| TxId {
            coordinator,
            incarnation,
            seq,
        })
    }

    fn range_and_data() -> impl Strategy<Value = (Range, Vec<u8>)> {
        (
            any::<u32>(),
            any::<u32>(),
            prop::collection::vec(any::<u8>(), 0..24),
        )
            .prop_map(|(region, offset, data)| {
                (
                    Range {
                        region,
                        offset,
                        len: data.len() as u32,
                    },
                    data,
                )
            })
    }

    fn owned_items() -> impl Strategy<Value = OwnedItems> {
        (
            prop::collection::vec(range_and_data(), 0..4),
            prop::collection::vec(range_and_data(), 0..4),
            prop::collection::vec(range_and_data(), 0..4),
        )
            .prop_map(|(compares, reads, writes)| OwnedItems {
                compares,
                reads: reads.into_iter().map(|(r, _)| r).collect(),
                writes,
            })
    }

    #[derive(Debug, Clone)]
    struct OwnedItems {
        compares: Vec<(Range, Vec<u8>)>,
        reads: Vec<Range>,
        writes: Vec<(Range, Vec<u8>)>,
    }

    impl OwnedItems {
        fn borrow(&self) -> Items<'_> {
            fn item(pair: &(Range, Vec<u8>)) -> Item<'_> {
                Item {
                    range: pair.0,
                    data: pair.1.as_slice(),
                }
            }
            Items {
                compares: self.compares.iter().map(item).collect(),
                reads: self.reads.clone(),
                writes: self.writes.iter().map(item).collect(),
            }
        }
    }

    fn roundtrip(m: &Message<'_>) {
        let bytes = m.to_vec();
        assert_eq!(&Message::decode(&bytes).unwrap(), m);
        assert_eq!(kind_of(&bytes), bytes.get(3).copied());
        assert_eq!(memnode_of(&bytes), Some(m.memnode()));
        // `to_vec` sizes its vector once: `encoded_len` is an upper bound, and a tight one.
        assert!(
            m.encoded_len() >= bytes.len(),
            "{} < {}",
            m.encoded_len(),
            bytes.len()
        );
        assert!(
            m.encoded_len() <= bytes.len() + 32,
            "{} >> {}",
            m.encoded_len(),
            bytes.len()
        );
        // Every strict prefix is refused, never accepted or panicking.
        for cut in 0..bytes.len() {
            assert!(Message::decode(&bytes[..cut]).is_err(), "prefix {cut} accepted");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Message::decode(&longer), Err(MinitxError::Trailing(1)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn requests_roundtrip(t in txid(), items in owned_items(), memnode in any::<u16>(),
                              parts in prop::collection::vec(any::<u16>(), 0..5), watch in any::<bool>()) {
            roundtrip(&Message::Exec { memnode, txid: t, items: items.borrow(), watch });
            roundtrip(&Message::Prepare { memnode, txid: t, participants: parts, items: items.borrow() });
        }

        #[test]
        fn answers_roundtrip(t in txid(), memnode in any::<u16>(), status in 1u8..=9,
                             reads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..10), 0..4),
                             commit in any::<bool>(), state in 1u8..=3, from in any::<u16>()) {
            let reply = Reply {
                status: Status::from_code(status).unwrap(),
                failed: reads.iter().enumerate().map(|(i, r)| (i as u16, r.as_slice())).collect(),
                reads: reads.iter().map(|r| r.as_slice()).collect(),
            };
            roundtrip(&Message::Reply { memnode, txid: t, reply });
            roundtrip(&Message::Decide { memnode, txid: t, commit });
            roundtrip(&Message::DecideAck { memnode, txid: t });
            roundtrip(&Message::Query { memnode, txid: t, from });
            roundtrip(&Message::QueryReply { memnode, txid: t, state: TxnState::from_code(state).unwrap() });
        }

        #[test]
        fn replication_roundtrips(t in txid(), items in owned_items(), epoch in any::<u64>(),
                                  lsn in any::<u64>(), commit in any::<bool>(),
                                  reply in prop::collection::vec(any::<u8>(), 0..16)) {
            let borrowed = items.borrow();
            let locks = borrowed.reads.iter().map(|r| Lock { range: *r, exclusive: false })
                .chain(borrowed.writes.iter().map(|w| Lock { range: w.range, exclusive: true }))
                .collect();
            let prepared = Record::Prepared { txid: t, participants: vec![1, 2], locks,
                writes: borrowed.writes.clone(), reply: &reply };
            let outcome = Record::Outcome { txid: t, commit, writes: borrowed.writes.clone(), reply: &reply };
            let forget = Record::Forget { txids: vec![t; (lsn % 4) as usize] };
            for record in [prepared, outcome, forget] {
                let mut bytes = Vec::new();
                record.encode(&mut bytes);
                prop_assert_eq!(&Record::decode(&bytes).unwrap(), &record);
                roundtrip(&Message::Replicate { memnode: 3, epoch, lsn, record });
            }
            roundtrip(&Message::ReplicateAck { memnode: 3, epoch, lsn, ahead: epoch ^ lsn.rotate_left(7) });
            roundtrip(&Message::Forget { memnode: 3, txids: vec![t; (epoch % 5) as usize] });
            roundtrip(&Message::Wake { memnode: (lsn % 7) as u16 });
            let index = lsn as u32;
            roundtrip(&Message::Snapshot { memnode: 3, epoch, lsn, index, count: index.wrapping_add(1), chunk: &reply });
            roundtrip(&Message::SnapshotAck { memnode: 3, epoch, received: index, held: lsn ^ epoch });
        }

        #[test]
        fn only_an_exec_may_carry_the_watch_flag(kind_code in 1u8..=13, flags in any::<u16>(),
                                                 body in prop::collection::vec(any::<u8>(), 0..64)) {
            let mut bytes = MINITX_MAGIC.to_le_bytes().to_vec();
            bytes.push(MINITX_VERSION);
            bytes.push(kind_code);
            bytes.extend_from_slice(&0u16.to_le_bytes());
            bytes.extend_from_slice(&flags.to_le_bytes());
            bytes.extend_from_slice(&body);
            let allowed = flags == 0 || (kind_code == kind::EXEC && flags == FLAG_WATCH);
            if !allowed {
                prop_assert_eq!(Message::decode(&bytes), Err(MinitxError::BadFlags(flags)));
            } else if let Ok(m) = Message::decode(&bytes) {
                prop_assert_eq!(m.to_vec(), bytes);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = Message::decode(&bytes);
            let _ = Record::decode(&bytes);
            // The kind is read only under this module's magic and version.
            if let Some(kind) = kind_of(&bytes) {
                prop_assert_eq!(&bytes[..3], &[b'M', b'T', MINITX_VERSION][..]);
                prop_assert_eq!(kind, bytes[3]);
            }
            // The memory node is read under the same checks, and agrees with a decode.
            if let Ok(m) = Message::decode(&bytes) {
                prop_assert_eq!(memnode_of(&bytes), Some(m.memnode()));
            }
            if memnode_of(&bytes).is_some() {
                prop_assert!(kind_of(&bytes).is_some() && bytes.len() >= 6);
            }
            // With a valid header too, so the body decoders see the noise.
            let mut framed = MINITX_MAGIC.to_le_bytes().to_vec();
            framed.push(MINITX_VERSION);
            framed.extend_from_slice(&bytes);
            let _ = Message::decode(&framed);
        }
    }

    #[test]
    fn hostile_counts_are_refused_before_allocation() {
        let t = TxId {
            coordinator: 1,
            incarnation: 1,
            seq: 1,
        };
        let mut bytes = Message::Exec {
            memnode: 0,
            txid: t,
            items: Items::default(),
            watch: false,
        }
        .to_vec();
        // Claim 60,000 compare items in a 30-byte message.
        let at = HEADER_LEN + 16;
        bytes[at..at + 2].copy_from_slice(&60_000u16.to_le_bytes());
        assert!(matches!(
            Message::decode(&bytes),
            Err(MinitxError::TooMany { count: 60_000, .. })
        ));
        bytes[at..at + 2].copy_from_slice(&200u16.to_le_bytes());
        assert!(matches!(
            Message::decode(&bytes),
            Err(MinitxError::Truncated { .. })
        ));
        // An item whose length runs past the end.
        let item = Item {
            range: Range {
                region: 0,
                offset: 0,
                len: 4,
            },
            data: b"abcd",
        };
        let mut bytes = Message::Exec {
            memnode: 0,
            txid: t,
            items: Items {
                compares: vec![item],
                ..Items::default()
            },
            watch: false,
        }
        .to_vec();
        let len_at = HEADER_LEN + 16 + 2 + 8;
        bytes[len_at..len_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Message::decode(&bytes),
            Err(MinitxError::Truncated { .. })
        ));
        // A snapshot chunk whose length runs past the end.
        let mut bytes = Message::Snapshot {
            memnode: 0,
            epoch: 2,
            lsn: 9,
            index: 0,
            count: 1,
            chunk: b"abcd",
        }
        .to_vec();
        let len_at = HEADER_LEN + 8 + 8 + 4 + 4;
        bytes[len_at..len_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Message::decode(&bytes),
            Err(MinitxError::Truncated { .. })
        ));
        assert_eq!(
            Message::decode(&[0x4d, 0x54, MINITX_VERSION, 77, 0, 0, 0, 0]),
            Err(MinitxError::UnknownKind(77))
        );
        // Versions 1 (before the watch flag and the wake) and 2 (before state transfer) are
        // refused whole, not misread.
        for old in [1, 2] {
            assert_eq!(
                Message::decode(&[0x4d, 0x54, old, 1, 0, 0, 0, 0]),
                Err(MinitxError::BadVersion(old))
            );
        }
        // A wake has no body; the watch flag belongs to execs only.
        assert_eq!(
            Message::decode(&[0x4d, 0x54, MINITX_VERSION, kind::WAKE, 3, 0, 0, 0]),
            Ok(Message::Wake { memnode: 3 })
        );
        assert_eq!(
            Message::decode(&[0x4d, 0x54, MINITX_VERSION, kind::WAKE, 3, 0, 0, 0, 0]),
            Err(MinitxError::Trailing(1))
        );
        assert_eq!(
            Message::decode(&[0x4d, 0x54, MINITX_VERSION, kind::WAKE, 3, 0, 1, 0]),
            Err(MinitxError::BadFlags(FLAG_WATCH))
        );
    }
}
