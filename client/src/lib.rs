//! tutti-client: the library applications link to publish to and receive from tutti
//! process groups through the local `tuttid`, over shared memory.
//!
//! Attaching and joining go through the daemon's control socket; after that, publishing
//! writes into a shared-memory ring and receiving reads the group's shared delivery log,
//! with no system call per message. Back pressure is a return value, never a hidden block.
//!
//! ```no_run
//! use tutti_client::{Client, Event};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut client = Client::connect()?; // honours TUTTI_SOCKET
//! let prices = client.join("prices")?;
//! client.offer(prices, b"EURUSD 1.0842")?;
//! client.poll(prices, 16, |event| match event {
//!     Event::Message { payload, .. } => println!("{}", String::from_utf8_lossy(payload)),
//!     Event::Lagged { missed } => eprintln!("fell behind, {missed} messages skipped"),
//!     Event::Lost { sender, count } => eprintln!("{count} messages of {sender:#x} lost"),
//!     _ => {} // views, snapshots: ordered groups only (`Client::join_with`)
//! })?;
//! # Ok(()) }
//! ```
#![warn(clippy::undocumented_unsafe_blocks)]

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};
use thiserror::Error;
use tutti_sys::{EventFd, Mapping, SeqPacket};
use tutti_wire::control::{
    self, validate_group_name, ErrorCode, Joined, Reply, Request, CONTROL_COUNTERS_PAGE, MAX_MESSAGE,
    MAX_SNAPSHOT, MAX_SNAPSHOT_CHUNK, PROTOCOL_VERSION,
};
pub use tutti_wire::control::{GroupOptions, Limit, Right, Rights};
use tutti_wire::counters::{CountersPage, COUNTERS_LEN};
pub use tutti_wire::counters::{CONTROL_COUNTERS, SHARD_COUNTERS};
pub use tutti_wire::shm::{ConfchgRecord, CpgEntry, LeftReason, ViewRecord};
use tutti_wire::shm::{
    DeliveryLog, GroupDoorbell, LogEvent, LogReader, PublishClaim, PublishProducer, PublishRing,
    ShardDoorbell,
};

pub use tutti_wire::shm::OfferError as RingOfferError;

mod minitx;
mod watch;
pub use minitx::{Minitx, MinitxError, MinitxOutcome};
pub use watch::GroupWatch;

/// The examples in the workspace's README.md, compiled as doctests of this crate (only
/// when rustdoc collects doctests; not part of the API).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// A received message or a notice about the stream.
pub type Event<'a> = LogEvent<'a>;

/// Why an offer was not taken. Nothing was published in any of these cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum OfferError {
    /// The publish ring is full: the daemon has not caught up yet. Retry later.
    #[error("back pressured: the publish ring is full")]
    BackPressured,
    /// The message is larger than the ring can ever carry.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// The daemon is gone or ended this session.
    #[error("not connected to tuttid")]
    Closed,
    /// The group was joined without the publish right ([`Client::join_as`]).
    #[error("this client joined the group without the publish right")]
    NotPublisher,
}

impl From<RingOfferError> for OfferError {
    fn from(e: RingOfferError) -> Self {
        match e {
            RingOfferError::BackPressured => OfferError::BackPressured,
            RingOfferError::TooLarge { len, max } => OfferError::TooLarge { len, max },
        }
    }
}

/// What to do about a failed connect, for the error message.
fn connect_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        "only members of the daemon's group may attach: for the system daemon, `usermod -aG tutti USER` and log in again"
    } else {
        "is tuttid running? set TUTTI_SOCKET to its socket"
    }
}

/// Errors of attaching, joining and receiving.
#[derive(Debug, Error)]
pub enum Error {
    #[error("cannot connect to tuttid at {path}: {source} ({})", connect_hint(source))]
    Connect { path: String, source: std::io::Error },
    #[error("control socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("tuttid refused: {0}")]
    Refused(String),
    /// An access check refused: attaching at all (`right` = `Attach`, `group` empty), or a
    /// right on a group by the `[[access]]` rule for `rule`.
    #[error("{}", denied_text(*uid, *right, group, rule))]
    PermissionDenied {
        uid: u32,
        right: Right,
        group: String,
        rule: String,
    },
    /// A resource limit of the daemon refused the request.
    #[error("tuttid refused: its limit {} = {max} is reached", limit.config_key())]
    LimitReached { limit: Limit, max: u64 },
    /// The group was joined without the subscribe right ([`Client::join_as`]).
    #[error("this client joined the group without the subscribe right")]
    NotSubscribed,
    #[error("unexpected answer from tuttid: {0}")]
    Protocol(String),
    #[error("shared memory from tuttid is not usable: {0}")]
    SharedMemory(String),
    #[error("tuttid is gone (the daemon stopped or ended this session)")]
    DaemonGone,
    #[error("no such group handle in this client")]
    UnknownGroup,
    /// The group exists on this daemon with other options ([`GroupOptions`]) than those
    /// asked for: a group's options are fixed by its first joiner.
    #[error("tuttid refused: {0}")]
    OptionsMismatch(String),
    /// The daemon cannot serve this as configured (an ordered group without a cluster).
    #[error("tuttid refused: {0}")]
    Unsupported(String),
    /// A snapshot provider returned more than [`MAX_SNAPSHOT`] bytes (nothing was sent; the
    /// joiner gets an empty snapshot when the daemon gives up waiting).
    #[error("snapshot of {0} bytes exceeds the limit of {MAX_SNAPSHOT} bytes")]
    SnapshotTooLarge(usize),
    /// Snapshot providers are for ordered groups joined with the subscribe right.
    #[error("a snapshot provider needs an ordered group joined with the subscribe right")]
    NotOrdered,
}

fn denied_text(uid: u32, right: Right, group: &str, rule: &str) -> String {
    match right {
        Right::Attach => format!(
            "permission denied: uid {uid} may not attach to tuttid (run as the daemon's user or a member of its group, or list the uid in allow_uids)"
        ),
        right => format!(
            "permission denied: uid {uid} may not {} group {group:?} (tuttid's [[access]] rule for {rule:?})",
            right.name()
        ),
    }
}

/// A group this client joined (cheap to copy; valid only with the client that made it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupId(u32);

/// How a blocking helper waits (as the daemon's idle strategies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleStrategy {
    /// Busy-poll: lowest latency, one core at 100%.
    Spin,
    /// Spin briefly, then sleep on the group's futex until the daemon appends (no yields:
    /// a yield does not give the core to another process's thread, see [`BACKOFF_SPIN`]).
    Backoff,
}

/// Empty polls between two cheap checks that the daemon is still there.
const LIVENESS_CHECK_INTERVAL: u32 = 4096;
/// How long `Backoff` spins before it sleeps (the clock is read every 16th empty poll).
/// Short and without yields: on a machine with fewer cores than busy threads a spinning
/// client holds the core the daemon needs to deliver to it, and `sched_yield` only lets
/// threads of the caller's own scheduling group (its session, under autogroup) run, not
/// the daemon's. Measured with `perf sched timehist` on 2 vCPUs: with 2,000 spins and 100
/// yields the daemon thread waited 0.1-0.3 ms for a core while the client yielded.
const BACKOFF_SPIN: Duration = Duration::from_micros(5);
/// Sleep between two offers of a back-pressured `offer_blocking` once its spin is over.
const BACKPRESSURE_SLEEP: Duration = Duration::from_micros(50);
/// Longest futex sleep of a blocking receive before it re-checks liveness.
const PARK_SLICE: Duration = Duration::from_millis(100);

struct ShardLink {
    producer: PublishProducer,
    doorbell: ShardDoorbell,
    eventfd: EventFd,
    /// This process is registered for `membarrier(GLOBAL_EXPEDITED)` ([`membarrier_registered`]).
    registered: bool,
    _ring: Mapping,
    _doorbell_map: Mapping,
}

struct Group {
    name: String,
    handle: u32,
    shard: usize,
    /// The daemon's limit for this group (at most what the publish ring carries).
    max_message: usize,
    rights: Rights,
    options: GroupOptions,
    /// The delivery log, when joined with the subscribe right.
    sub: Option<Subscription>,
    /// Produces this application's state for a joiner of an ordered group.
    provider: Option<SnapshotProvider>,
    /// Left with [`Client::leave_reading`]: no longer a member, the log still mapped.
    left: bool,
}

/// The application's state at a list position, for a joiner (see
/// [`Client::set_snapshot_provider`]).
type SnapshotProvider = Box<dyn FnMut(u64) -> Vec<u8> + Send>;

struct Subscription {
    reader: LogReader,
    doorbell: GroupDoorbell,
    /// The mappings the reader and the doorbell live in.
    _log: Mapping,
    _bell: Mapping,
}

/// A session with the local tuttid. Single-threaded: give each thread its own client.
pub struct Client {
    conn: SeqPacket,
    session_id: u32,
    node_id: u32,
    shards: Vec<Option<ShardLink>>,
    groups: Vec<Option<Group>>,
    empty_polls: u32,
    /// System calls made to see whether the daemon is still there (`liveness_checks`).
    liveness_checks: u64,
    gone: bool,
    buf: Vec<u8>,
}

impl Client {
    /// Connects to the daemon at the default socket path: `TUTTI_SOCKET`, else
    /// `$XDG_RUNTIME_DIR/tutti/tuttid.sock`, `/run/tutti/tuttid.sock` as root, or
    /// `/tmp/tutti-$USER/tuttid.sock`; when that per-user socket does not exist but the
    /// system daemon's `/run/tutti/tuttid.sock` does, the latter.
    pub fn connect() -> Result<Client, Error> {
        Self::connect_to(&tutti_sys::client_socket_path())
    }

    /// Connects to the daemon listening at `path`.
    pub fn connect_to(path: &Path) -> Result<Client, Error> {
        let conn = SeqPacket::connect(path).map_err(|source| Error::Connect {
            path: path.display().to_string(),
            source,
        })?;
        let mut client = Client {
            conn,
            session_id: 0,
            node_id: 0,
            shards: Vec::new(),
            groups: Vec::new(),
            empty_polls: 0,
            liveness_checks: 0,
            gone: false,
            buf: vec![0; MAX_MESSAGE],
        };
        let mut fds = Vec::new();
        match client.call(
            &Request::Hello {
                version: PROTOCOL_VERSION,
                pid: std::process::id(),
            },
            &mut fds,
        )? {
            Reply::Welcome {
                version,
                session_id,
                node_id,
                shards,
            } => {
                if version != PROTOCOL_VERSION {
                    return Err(Error::Protocol(format!(
                        "daemon speaks version {version}, we speak {PROTOCOL_VERSION}"
                    )));
                }
                (client.session_id, client.node_id) = (session_id, node_id);
                client.shards = (0..shards).map(|_| None).collect();
            }
            other => return Err(unexpected(other)),
        }
        Ok(client)
    }

    /// The session id the daemon gave this client (the low half of its sender id).
    pub fn session_id(&self) -> u32 {
        self.session_id
    }

    /// This client's sender id as it appears in [`Event::Message`]: `node << 32 | session`.
    pub fn sender_id(&self) -> u64 {
        (u64::from(self.node_id) << 32) | u64::from(self.session_id)
    }

    fn call(&mut self, request: &Request<'_>, fds: &mut Vec<OwnedFd>) -> Result<Reply<'_>, Error> {
        let mut out = Vec::with_capacity(64);
        request.encode(&mut out);
        let n = match self.conn.send(&out, &[]) {
            Ok(()) => match self.conn.recv(&mut self.buf, fds) {
                Ok(n) => n,
                // The daemon hung up with our request unread (it refused us at accept): the
                // kernel reports the reset first, then still hands out its reply.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    match self.conn.try_recv(&mut self.buf, fds) {
                        Ok(n) if n > 0 => n,
                        _ => return Err(self.io_gone(e)),
                    }
                }
                Err(e) => return Err(e.into()),
            },
            // A daemon that refuses a connection (at accept: who it is, or a limit) says why
            // and hangs up, maybe before we spoke: the reason may be waiting to be read.
            Err(e) => match self.conn.try_recv(&mut self.buf, fds) {
                Ok(n) if n > 0 => n,
                _ => return Err(self.io_gone(e)),
            },
        };
        if n == 0 {
            self.gone = true;
            return Err(Error::DaemonGone);
        }
        match Reply::decode(&self.buf[..n]).map_err(|e| Error::Protocol(e.to_string()))? {
            Reply::Error {
                code: ErrorCode::OptionsMismatch,
                text,
            } => Err(Error::OptionsMismatch(text.to_string())),
            Reply::Error {
                code: ErrorCode::Unsupported,
                text,
            } => Err(Error::Unsupported(text.to_string())),
            Reply::Error { text, .. } => Err(Error::Refused(text.to_string())),
            Reply::Denied {
                uid,
                right,
                group,
                rule,
            } => Err(Error::PermissionDenied {
                uid,
                right,
                group: group.to_string(),
                rule: rule.to_string(),
            }),
            Reply::LimitReached { limit, max } => Err(Error::LimitReached { limit, max }),
            reply => Ok(reply),
        }
    }

    fn io_gone(&mut self, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::BrokenPipe || e.kind() == std::io::ErrorKind::ConnectionReset {
            self.gone = true;
            Error::DaemonGone
        } else {
            Error::Io(e)
        }
    }

    /// Joins a group (creating it if it is new): this client may publish to it and
    /// receives what is published to it from now on, its own messages included.
    pub fn join(&mut self, name: &str) -> Result<GroupId, Error> {
        self.join_as(name, Rights::BOTH)
    }

    /// Joins a group with only the rights asked for: [`Rights::SUBSCRIBE`] to receive
    /// only, [`Rights::PUBLISH`] to publish only (no delivery log is mapped; a plain group
    /// with no local subscriber is not logged by the daemon at all, a copy less per
    /// message). An access
    /// list that refuses a right asked for gives [`Error::PermissionDenied`].
    pub fn join_as(&mut self, name: &str, rights: Rights) -> Result<GroupId, Error> {
        self.join_with(name, rights, GroupOptions::PLAIN)
    }

    /// Joins a group with the rights and [`GroupOptions`] asked for: `ordered` for one
    /// total order of every sender's messages with views in it (`docs/ordered.md`), `safe`
    /// to deliver a message only once every member holds it. The first joiner of a group
    /// on a daemon fixes its options; a join asking for others gets
    /// [`Error::OptionsMismatch`], and an ordered group on a daemon without a cluster
    /// [`Error::Unsupported`].
    pub fn join_with(&mut self, name: &str, rights: Rights, options: GroupOptions) -> Result<GroupId, Error> {
        control::validate_group_name(name).map_err(|e| Error::Refused(e.to_string()))?;
        let mut fds = Vec::new();
        let request = Request::Join {
            name,
            rights,
            options,
        };
        let joined: Joined = match self.call(&request, &mut fds)? {
            Reply::Joined(j) => j,
            other => return Err(unexpected(other)),
        };
        let granted = match joined.rights {
            0 => Rights::BOTH,
            bits => Rights::from_u8(bits).map_err(|e| Error::Protocol(e.to_string()))?,
        };
        if granted != rights {
            return Err(Error::Protocol(format!(
                "asked for {rights:?}, granted {granted:?}"
            )));
        }
        let granted_options =
            GroupOptions::from_u8(joined.options).map_err(|e| Error::Protocol(e.to_string()))?;
        if granted_options != options {
            return Err(Error::Protocol(format!(
                "asked for {options:?}, the daemon's group has {granted_options:?}"
            )));
        }
        let want = if granted.subscribe { 2 } else { 0 } + if joined.new_shard != 0 { 3 } else { 0 };
        if fds.len() != want {
            return Err(Error::Protocol(format!(
                "join came with {} descriptors, expected {want}",
                fds.len()
            )));
        }
        let shard = joined.shard as usize;
        if shard >= self.shards.len() {
            return Err(Error::Protocol(format!("shard {shard} out of range")));
        }
        let mut fds = fds.into_iter();
        let sub = if granted.subscribe {
            let (log_fd, bell_fd) = (fds.next().expect("counted"), fds.next().expect("counted"));
            let log_capacity = usize::try_from(joined.log_capacity)
                .map_err(|_| Error::SharedMemory("log capacity".into()))?;
            let log = map_exact(&log_fd, DeliveryLog::required_len(log_capacity), false)?;
            // SAFETY: `log` is a live read-only mapping of the whole region, kept in the Group
            // for as long as the reader lives; its contents are validated by attach/poll.
            let reader = if granted_options.ordered {
                // From the log's first record while it is intact: the views and snapshot
                // appended before this client attached are part of its state.
                // SAFETY: as below.
                unsafe { LogReader::attach_from_start(log.as_ptr(), log.len()) }.map(|(r, _)| r)
            } else {
                // SAFETY: `log` is a live read-only mapping of the whole region, kept in
                // the Group for as long as the reader lives; contents validated by poll.
                unsafe { LogReader::attach(log.as_ptr(), log.len()) }
            }
            .map_err(|e| Error::SharedMemory(e.to_string()))?;
            let bell = map_exact(&bell_fd, 4096, true)?;
            // SAFETY: a live page-sized mapping kept alongside the doorbell.
            let doorbell = unsafe { GroupDoorbell::attach(bell.as_ptr(), bell.len()) }
                .map_err(|e| Error::SharedMemory(e.to_string()))?;
            Some(Subscription {
                reader,
                doorbell,
                _log: log,
                _bell: bell,
            })
        } else {
            None
        };
        if joined.new_shard != 0 {
            let (ring_fd, sbell_fd, ev_fd) = (
                fds.next().expect("counted"),
                fds.next().expect("counted"),
                fds.next().expect("counted"),
            );
            let pub_capacity = usize::try_from(joined.pub_capacity)
                .map_err(|_| Error::SharedMemory("ring capacity".into()))?;
            let ring = map_exact(&ring_fd, PublishRing::required_len(pub_capacity), true)?;
            // SAFETY: a live mapping of the whole ring, kept in the ShardLink with the producer.
            let producer = unsafe { PublishProducer::attach(ring.as_ptr(), ring.len()) }
                .map_err(|e| Error::SharedMemory(e.to_string()))?;
            let sbell = map_exact(&sbell_fd, 4096, false)?;
            // SAFETY: a live page-sized read-only mapping kept alongside; we only load from it.
            let shard_doorbell = unsafe { ShardDoorbell::attach(sbell.as_ptr(), sbell.len()) }
                .map_err(|e| Error::SharedMemory(e.to_string()))?;
            self.shards[shard] = Some(ShardLink {
                producer,
                doorbell: shard_doorbell,
                eventfd: EventFd::from_owned(ev_fd),
                registered: membarrier_registered(),
                _ring: ring,
                _doorbell_map: sbell,
            });
        } else if granted.publish && self.shards[shard].is_none() {
            return Err(Error::Protocol(
                "daemon sent no publish ring for a new shard".into(),
            ));
        }
        let ring_max = self.shards[shard]
            .as_ref()
            .map_or(0, |l| l.producer.max_payload());
        let max_message = usize::try_from(joined.max_message)
            .unwrap_or(usize::MAX)
            .min(ring_max);
        let group = Group {
            name: name.to_string(),
            handle: joined.handle,
            shard,
            max_message,
            rights: granted,
            options,
            sub,
            provider: None,
            left: false,
        };
        let index = match self.groups.iter().position(Option::is_none) {
            Some(i) => {
                self.groups[i] = Some(group);
                i
            }
            None => {
                self.groups.push(Some(group));
                self.groups.len() - 1
            }
        };
        Ok(GroupId(index as u32))
    }

    /// Leaves a group. What this client already offered to it is still published.
    pub fn leave(&mut self, group: GroupId) -> Result<(), Error> {
        let g = self.group(group)?;
        if g.left {
            // Left already (`leave_reading`): only the mapping goes.
            self.groups[group.0 as usize] = None;
            return Ok(());
        }
        let handle = g.handle;
        let mut fds = Vec::new();
        match self.call(&Request::Leave { handle }, &mut fds)? {
            Reply::Left => {}
            other => return Err(unexpected(other)),
        }
        self.groups[group.0 as usize] = None;
        Ok(())
    }

    /// Leaves a group but goes on reading its delivery log: the daemon publishes the
    /// leave (what this client already offered goes first) and takes nothing more from it,
    /// while [`poll`](Self::poll) and the C API's `tutti_next` still return what the daemon
    /// writes into the log after, until [`leave`](Self::leave) frees the mapping. A CPG
    /// process uses it to get what was ordered before its leave, then the confchg of its
    /// own leave, as Corosync delivers them. In a cpg group the daemon writes the log until
    /// the leaves of its processes are through the order (at most `LINGER_MAX`, 10 s); in
    /// other groups it stops once no local member is left. The caller bounds its wait.
    pub fn leave_reading(&mut self, group: GroupId) -> Result<(), Error> {
        let g = self.group(group)?;
        if g.left {
            return Err(Error::UnknownGroup);
        }
        let handle = g.handle;
        let mut fds = Vec::new();
        match self.call(&Request::Leave { handle }, &mut fds)? {
            Reply::Left => {}
            other => return Err(unexpected(other)),
        }
        if let Some(g) = self.groups.get_mut(group.0 as usize).and_then(Option::as_mut) {
            g.left = true;
            g.rights.publish = false;
            g.provider = None;
        }
        Ok(())
    }

    /// Registers `provider` as this client's producer of snapshots for ordered group
    /// `group` (state transfer): when a member joins the group anywhere and this daemon is
    /// the one asked, the daemon appends a [`Event::SnapshotRequest`] to the group's log;
    /// [`poll`](Self::poll) delivers it, then calls `provider(position)` and hands its bytes
    /// (at most [`MAX_SNAPSHOT`]) to the daemon, which sends them to the joiner. Call it
    /// with the application's state after every event delivered so far: the request ends
    /// a poll's batch, and nothing after the request is delivered until it is answered.
    ///
    /// Why a callback in the client rather than an event the application answers: the
    /// snapshot must be taken exactly at the request's place in the order, and a callback
    /// called by `poll` cannot forget to answer or answer late. If no local client
    /// registered a provider, the daemon answers an empty snapshot at once and counts it
    /// (`snapshots_empty` in `tutti stat`); if the provider's client is too slow (5 s), the
    /// same.
    pub fn set_snapshot_provider(
        &mut self,
        group: GroupId,
        provider: impl FnMut(u64) -> Vec<u8> + Send + 'static,
    ) -> Result<(), Error> {
        let g = self.group(group)?;
        if !g.options.ordered || g.sub.is_none() {
            return Err(Error::NotOrdered);
        }
        let handle = g.handle;
        let mut fds = Vec::new();
        match self.call(&Request::SnapshotProvider { handle }, &mut fds)? {
            Reply::Done => {}
            other => return Err(unexpected(other)),
        }
        if let Some(g) = self.groups.get_mut(group.0 as usize).and_then(Option::as_mut) {
            g.provider = Some(Box::new(provider));
        }
        Ok(())
    }

    /// Answers a snapshot request of ordered group `group` at `position` with `snapshot`
    /// (what [`set_snapshot_provider`](Self::set_snapshot_provider)'s callback does).
    fn send_snapshot(&mut self, group: GroupId, position: u64, snapshot: &[u8]) -> Result<(), Error> {
        if snapshot.len() > MAX_SNAPSHOT {
            return Err(Error::SnapshotTooLarge(snapshot.len()));
        }
        let handle = self.group(group)?.handle;
        let mut offset = 0usize;
        loop {
            let end = (offset + MAX_SNAPSHOT_CHUNK).min(snapshot.len());
            let last = end == snapshot.len();
            let request = Request::SnapshotChunk {
                handle,
                position,
                offset: offset as u32,
                last,
                bytes: &snapshot[offset..end],
            };
            let mut fds = Vec::new();
            match self.call(&request, &mut fds)? {
                Reply::Done => {}
                other => return Err(unexpected(other)),
            }
            if last {
                return Ok(());
            }
            offset = end;
        }
    }

    /// The options of a group this client joined.
    pub fn group_options(&self, group: GroupId) -> Result<GroupOptions, Error> {
        Ok(self.group(group)?.options)
    }

    /// The name a group was joined under.
    pub fn group_name(&self, group: GroupId) -> Option<&str> {
        self.groups
            .get(group.0 as usize)?
            .as_ref()
            .map(|g| g.name.as_str())
    }

    // Errors are built only on the failing branch (`ok_or` builds and drops one per call:
    // a measurable cost on the receive path of the C API).
    fn group(&self, group: GroupId) -> Result<&Group, Error> {
        match self.groups.get(group.0 as usize) {
            Some(Some(g)) => Ok(g),
            _ => Err(Error::UnknownGroup),
        }
    }

    /// The group's subscription (its log), for calls that need the subscribe right.
    fn subscription(&self, group: GroupId) -> Result<&Subscription, Error> {
        match &self.group(group)?.sub {
            Some(sub) => Ok(sub),
            None => Err(Error::NotSubscribed),
        }
    }

    /// Largest message `offer` takes for this group.
    pub fn max_message(&self, group: GroupId) -> Result<usize, Error> {
        Ok(self.group(group)?.max_message)
    }

    /// Publishes one message to a group. Never blocks: a full ring is `BackPressured`.
    #[inline]
    pub fn offer(&mut self, group: GroupId, payload: &[u8]) -> Result<(), OfferError> {
        if self.gone {
            return Err(OfferError::Closed);
        }
        let (handle, shard) = match self.groups.get(group.0 as usize).and_then(Option::as_ref) {
            Some(g) if !g.rights.publish => return Err(OfferError::NotPublisher),
            Some(g) if payload.len() > g.max_message => {
                return Err(OfferError::TooLarge {
                    len: payload.len(),
                    max: g.max_message,
                })
            }
            Some(g) => (g.handle, g.shard),
            None => return Err(OfferError::Closed),
        };
        let link = self.shards[shard].as_mut().ok_or(OfferError::Closed)?;
        link.producer.offer(handle, payload)?;
        ring_doorbell(link);
        Ok(())
    }

    /// Claims `len` bytes in the publish ring to write a message in place; publish it with
    /// [`Claim::commit`]. Dropping the claim publishes nothing.
    #[inline]
    pub fn try_claim(&mut self, group: GroupId, len: usize) -> Result<Claim<'_>, OfferError> {
        if self.gone {
            return Err(OfferError::Closed);
        }
        let (handle, shard) = match self.groups.get(group.0 as usize).and_then(Option::as_ref) {
            Some(g) if !g.rights.publish => return Err(OfferError::NotPublisher),
            Some(g) if len > g.max_message => {
                return Err(OfferError::TooLarge {
                    len,
                    max: g.max_message,
                })
            }
            Some(g) => (g.handle, g.shard),
            None => return Err(OfferError::Closed),
        };
        let link = self.shards[shard].as_mut().ok_or(OfferError::Closed)?;
        let ShardLink {
            producer,
            doorbell,
            eventfd,
            registered,
            ..
        } = link;
        let inner = producer.try_claim(handle, len)?;
        Ok(Claim {
            inner,
            doorbell,
            eventfd,
            registered: *registered,
        })
    }

    /// Offers, and while back pressured waits by `idle` up to `timeout`.
    pub fn offer_blocking(
        &mut self,
        group: GroupId,
        payload: &[u8],
        idle: IdleStrategy,
        timeout: Duration,
    ) -> Result<(), OfferError> {
        // The clock is read only once the ring is full: an offer that goes through at once
        // (almost all of them) costs no clock read.
        let mut deadline = None;
        let mut attempts: u32 = 0;
        let mut spin_start = None;
        loop {
            match self.offer(group, payload) {
                Err(OfferError::BackPressured) => {
                    let now = Instant::now();
                    if now >= *deadline.get_or_insert(now + timeout) {
                        return Err(OfferError::BackPressured);
                    }
                    attempts = attempts.saturating_add(1);
                    if idle == IdleStrategy::Backoff && spin_over(&mut spin_start, attempts) {
                        std::thread::sleep(BACKPRESSURE_SLEEP);
                        if self.check_alive().is_err() {
                            return Err(OfferError::Closed);
                        }
                    } else {
                        std::hint::spin_loop();
                    }
                }
                other => return other,
            }
        }
    }

    /// Delivers up to `limit` events of one group to `handler`; returns how many. Never
    /// blocks. Returns `DaemonGone` once the daemon has stopped (checked now and then
    /// while idle, without a system call per poll).
    #[inline]
    pub fn poll(
        &mut self,
        group: GroupId,
        limit: usize,
        mut handler: impl FnMut(Event<'_>),
    ) -> Result<usize, Error> {
        let Some(Some(g)) = self.groups.get_mut(group.0 as usize) else {
            return Err(Error::UnknownGroup);
        };
        let Some(sub) = g.sub.as_mut() else {
            return Err(Error::NotSubscribed);
        };
        let mut request = None;
        let n = sub
            .reader
            .poll(limit, |event| {
                if let Event::SnapshotRequest { position } = event {
                    request = Some(position);
                }
                handler(event)
            })
            .map_err(|e| Error::SharedMemory(e.to_string()))?;
        // The request ends the batch: the handler has seen everything before it and
        // nothing after, so the provider's state is the state at the request's position.
        if let (Some(position), Some(provider)) = (request, g.provider.as_mut()) {
            let snapshot = provider(position);
            self.send_snapshot(group, position, &snapshot)?;
        }
        if n == 0 {
            self.empty_polls += 1;
            if self.empty_polls >= LIVENESS_CHECK_INTERVAL {
                self.empty_polls = 0;
                self.check_alive()?;
            }
        }
        Ok(n)
    }

    /// Like [`poll`](Self::poll), but waits by `idle` until at least one event arrives or
    /// `timeout` passes (then returns 0).
    pub fn poll_blocking(
        &mut self,
        group: GroupId,
        limit: usize,
        idle: IdleStrategy,
        timeout: Duration,
        mut handler: impl FnMut(Event<'_>),
    ) -> Result<usize, Error> {
        // The clock is read only once a poll found nothing.
        let mut deadline = None;
        let mut attempts: u32 = 0;
        let mut spin_start = None;
        let mut parked = false;
        loop {
            let n = self.poll(group, limit, &mut handler)?;
            if n > 0 {
                return Ok(n);
            }
            // A park that brought nothing (its slice ran out, or the wake was for nothing
            // of ours): is the daemon still there? Not before the poll: a wake by a
            // delivery goes straight to the message, with no system call on its path.
            if std::mem::take(&mut parked) {
                self.check_alive()?;
            }
            let now = Instant::now();
            let deadline = *deadline.get_or_insert(now + timeout);
            if now >= deadline {
                return Ok(0);
            }
            attempts = attempts.saturating_add(1);
            match idle {
                IdleStrategy::Spin => std::hint::spin_loop(),
                IdleStrategy::Backoff if !spin_over(&mut spin_start, attempts) => std::hint::spin_loop(),
                IdleStrategy::Backoff => {
                    self.park(group, (deadline - now).min(PARK_SLICE))?;
                    parked = true;
                }
            }
        }
    }

    /// Sleeps on the group's futex until the daemon appends (or `timeout`).
    fn park(&mut self, group: GroupId, timeout: Duration) -> Result<(), Error> {
        let g = self.subscription(group)?;
        let bell = &g.doorbell;
        // add_waiter fences; the daemon fences between appending and reading `waiters`.
        bell.add_waiter();
        let seen = bell.futex_value();
        if !g.reader.has_data() {
            tutti_sys::futex_wait(bell.futex_word(), seen, timeout);
        }
        bell.remove_waiter();
        Ok(())
    }

    /// Waits until the daemon has taken everything this client offered (all shards), or
    /// `timeout` passes. Use it before exiting right after publishing.
    pub fn flush(&mut self, timeout: Duration) -> Result<bool, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.shards.iter_mut().flatten().all(|l| l.producer.is_drained()) {
                return Ok(true);
            }
            self.check_alive()?;
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Asks the daemon for its human-readable status.
    pub fn status(&mut self) -> Result<String, Error> {
        let mut fds = Vec::new();
        match self.call(&Request::Status, &mut fds)? {
            Reply::StatusText(t) => Ok(t.to_string()),
            other => Err(unexpected(other)),
        }
    }

    /// Creates region `name` of `size` zero bytes on the cluster, or finds it with that
    /// size (idempotent; another size is `SizeMismatch`). See [`Minitx`].
    pub fn region_create(&mut self, name: &str, size: u32) -> Result<(), MinitxError> {
        validate_group_name(name).map_err(|_| MinitxError::BadName(name.to_string()))?;
        let mut fds = Vec::new();
        match self.call(&Request::RegionCreate { name, size }, &mut fds)? {
            Reply::Done => Ok(()),
            Reply::MinitxFailed(f) => Err(MinitxError::from_failure(f, |_| name.to_string())),
            other => Err(unexpected(other).into()),
        }
    }

    /// Runs a minitransaction over regions (atomic: all writes or none). Waits for the
    /// answer (bounded by the daemon: `Unavailable` after its deadline).
    pub fn minitx(&mut self, m: &Minitx) -> Result<MinitxOutcome, MinitxError> {
        let frame = m.frame()?;
        let mut fds = Vec::new();
        match self.call(&Request::Minitx(frame), &mut fds)? {
            Reply::MinitxDone { reads } => Ok(MinitxOutcome {
                reads: reads.into_iter().map(<[u8]>::to_vec).collect(),
            }),
            Reply::MinitxFailed(f) => Err(MinitxError::from_failure(f, |i| m.region_name(i))),
            other => Err(unexpected(other).into()),
        }
    }

    /// Maps every shard's counters page read-only, to read the daemon's counters live.
    pub fn counters(&mut self) -> Result<Vec<ShardCounters>, Error> {
        (0..self.shards.len() as u32)
            .map(|shard| self.counters_page(shard, SHARD_COUNTERS))
            .collect()
    }

    /// Maps the control plane's counters page read-only (names: [`CONTROL_COUNTERS`]):
    /// what the daemon refused at attach and join, and why.
    pub fn control_counters(&mut self) -> Result<ShardCounters, Error> {
        self.counters_page(CONTROL_COUNTERS_PAGE, CONTROL_COUNTERS)
    }

    fn counters_page(
        &mut self,
        shard: u32,
        names: &'static [(&'static str, &'static str)],
    ) -> Result<ShardCounters, Error> {
        let mut fds = Vec::new();
        match self.call(&Request::Counters { shard }, &mut fds)? {
            Reply::CountersPage { .. } => {}
            other => return Err(unexpected(other)),
        }
        let fd = fds
            .pop()
            .ok_or_else(|| Error::Protocol("counters page came without a descriptor".into()))?;
        let map = map_exact(&fd, COUNTERS_LEN, false)?;
        // SAFETY: a live read-only mapping of the whole page, kept beside the view.
        let page = unsafe { CountersPage::attach(map.as_ptr(), map.len()) }
            .map_err(|e| Error::SharedMemory(e.to_string()))?;
        Ok(ShardCounters {
            page,
            names,
            _map: map,
        })
    }

    /// Whether a record of `group` is waiting to be read now (needs the subscribe right).
    pub fn has_data(&self, group: GroupId) -> Result<bool, Error> {
        let sub = self.subscription(group)?;
        Ok(sub.reader.has_data())
    }

    /// The control socket's descriptor, to watch for the daemon hanging up (it reads as
    /// readable with `POLLHUP`). Only poll it: reading or closing it breaks the session.
    pub fn control_fd(&self) -> RawFd {
        self.conn.as_raw_fd()
    }

    /// How many system calls this client has made to see whether the daemon is still
    /// there (`check_alive`, and the checks `poll` and the blocking calls make while idle).
    /// None is made on the way to a message: a blocking receive woken by a delivery takes
    /// it without one.
    pub fn liveness_checks(&self) -> u64 {
        self.liveness_checks
    }

    /// Checks, without blocking, that the daemon has not hung up on this session.
    pub fn check_alive(&mut self) -> Result<(), Error> {
        if self.gone {
            return Err(Error::DaemonGone);
        }
        self.liveness_checks += 1;
        let mut fds = Vec::new();
        match self.conn.try_recv(&mut self.buf, &mut fds) {
            Ok(0) => {
                self.gone = true;
                Err(Error::DaemonGone)
            }
            // An unsolicited message: the daemon only sends one when it ends the session.
            Ok(_) => {
                self.gone = true;
                Err(Error::DaemonGone)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(self.io_gone(e)),
        }
    }
}

/// One counters page (a shard's, names [`SHARD_COUNTERS`], or the control plane's,
/// names [`CONTROL_COUNTERS`]), mapped read-only and read live.
pub struct ShardCounters {
    page: CountersPage,
    names: &'static [(&'static str, &'static str)],
    _map: Mapping,
}

impl ShardCounters {
    /// (name, value) of every counter the page holds that this build knows by name.
    pub fn values(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.names
            .iter()
            .take(self.page.count())
            .enumerate()
            .map(|(i, (name, _))| (*name, self.page.get(i)))
    }
}

/// Space claimed in the publish ring; write the message into [`buf`](Claim::buf), then
/// [`commit`](Claim::commit).
pub struct Claim<'a> {
    inner: PublishClaim<'a>,
    doorbell: &'a ShardDoorbell,
    eventfd: &'a EventFd,
    registered: bool,
}

impl Claim<'_> {
    /// The claimed bytes, to be filled in place.
    #[inline]
    pub fn buf(&mut self) -> &mut [u8] {
        self.inner.buf()
    }

    /// Publishes the message.
    #[inline]
    pub fn commit(self) {
        self.inner.commit();
        wake_if_parked(self.doorbell, self.eventfd, self.registered);
    }
}

#[inline]
fn ring_doorbell(link: &ShardLink) {
    wake_if_parked(&link.doorbell, &link.eventfd, link.registered);
}

/// After a commit: a load of a rarely written cache line, a fence unless the shard is in
/// barrier mode and this process registered (`tutti_wire::shm::doorbell`), and a load of
/// `parked`; a system call only when the shard is parked.
#[inline]
fn wake_if_parked(doorbell: &ShardDoorbell, eventfd: &EventFd, registered: bool) {
    // The fence pairs with the shard's fence (or its membarrier) between announcing
    // `parked` and re-checking the rings.
    if doorbell.wants_ring(registered) {
        eventfd.notify();
    }
}

/// Whether this process is registered for `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)`,
/// registering it on the first call: its commits then skip their fence while a busy shard
/// is in barrier mode (the shard pays a membarrier when it parks instead). Set
/// `TUTTI_NO_MEMBARRIER=1` to keep a process out (a seccomp filter that kills on unknown
/// system calls, or threads that must not take the barrier's interrupt): its commits then
/// always fence.
fn membarrier_registered() -> bool {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REGISTERED.get_or_init(|| {
        std::env::var_os("TUTTI_NO_MEMBARRIER").is_none()
            && tutti_sys::membarrier_global_expedited_available()
            && tutti_sys::membarrier_register_global_expedited().is_ok()
    })
}

fn map_exact(fd: &OwnedFd, len: usize, writable: bool) -> Result<Mapping, Error> {
    let actual = tutti_sys::file_len(fd)?;
    if actual != len {
        return Err(Error::SharedMemory(format!(
            "region of {actual} bytes, expected {len}"
        )));
    }
    Mapping::map(fd, len, writable).map_err(Error::Io)
}

fn unexpected(reply: Reply<'_>) -> Error {
    Error::Protocol(format!("{reply:?}"))
}

/// Whether a `Backoff` wait that has made `attempts` empty attempts has spun for
/// [`BACKOFF_SPIN`]; reads the clock every 16th attempt only.
fn spin_over(start: &mut Option<Instant>, attempts: u32) -> bool {
    if !attempts.is_multiple_of(16) {
        return false;
    }
    let now = Instant::now();
    let start = *start.get_or_insert(now);
    now.duration_since(start) >= BACKOFF_SPIN
}

#[cfg(test)]
mod tests {
    use super::Error;
    use std::io::ErrorKind;

    #[test]
    fn a_refused_connect_says_how_to_get_access() {
        let denied = Error::Connect {
            path: "/run/tutti/tuttid.sock".into(),
            source: ErrorKind::PermissionDenied.into(),
        }
        .to_string();
        assert!(
            denied.contains("/run/tutti/tuttid.sock") && denied.contains("usermod -aG tutti"),
            "{denied}"
        );
        let missing = Error::Connect {
            path: "/tmp/x.sock".into(),
            source: ErrorKind::NotFound.into(),
        }
        .to_string();
        assert!(missing.contains("is tuttid running"), "{missing}");
    }
}
