//! The control plane: accepts clients on the Unix socket, checks who they are, creates
//! the shared memory they attach to, and tells the shards what changed. It runs on the
//! daemon's main thread and is never on the data path: a slow control request delays
//! other control requests, never a message.

use crate::access::{AccessPolicy, Identity, TokenBucket};
use crate::config::Config;
use crate::shard::{RegionRequest, RegionResult, ShardCommand, ShardEvent, ShardReport, ShardStats};
use crate::supervise::Supervisor;
use crossbeam_channel::{Receiver, Sender};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use tutti_proto::regions::{region_id, RegionError, RegionId, RegionTxn};
use tutti_sys::{EventFd, Mapping, PeerCred, SeqPacket, SeqPacketListener, SignalFd};
use tutti_wire::control::{
    ErrorCode, GroupOptions, ItemKind, Joined, Limit, MinitxFailure, Reply, Request, Right, Rights,
    CONTROL_COUNTERS_PAGE, MAX_MESSAGE, MAX_SNAPSHOT, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use tutti_wire::counters::{CountersPage, CONTROL_COUNTERS, COUNTERS_LEN, SHARD_COUNTERS};
use tutti_wire::shm::{DeliveryLog, GroupDoorbell, PublishRing, Watch, WATCH_LEN};

/// How long the control thread waits for a shard to apply a command before it gives up
/// and refuses the client's request.
const SHARD_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `tutti status` waits for a shard's report (a stalled shard is shown without).
const REPORT_TIMEOUT: Duration = Duration::from_secs(1);
/// Size of a doorbell page.
pub const DOORBELL_BYTES: usize = 4096;

/// The control thread's handle on one shard.
pub struct ShardLink {
    pub commands: Sender<ShardCommand>,
    pub wake: Arc<EventFd>,
    pub stats: Arc<ShardStats>,
    pub core: Option<usize>,
    /// The shard's doorbell page and eventfd, sent to each client on its first join there.
    pub doorbell_fd: OwnedFd,
    /// The shard's counters page, sent (to be mapped read-only) on request.
    pub counters_fd: OwnedFd,
}

impl ShardLink {
    fn send(&self, cmd: ShardCommand) -> Result<(), String> {
        self.commands
            .try_send(cmd)
            .map_err(|_| "shard command queue full or shard stopped".to_string())?;
        self.wake.notify();
        Ok(())
    }

    fn call(&self, make: impl FnOnce(Sender<Result<(), String>>) -> ShardCommand) -> Result<(), String> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(make(tx))?;
        rx.recv_timeout(SHARD_ACK_TIMEOUT)
            .map_err(|_| "shard did not answer in time".to_string())?
    }
}

/// Indices of the control counters (names in `tutti_wire::counters::CONTROL_COUNTERS`).
pub mod counter {
    use tutti_wire::counters::control_counter;
    pub const SESSIONS: usize = control_counter("sessions");
    pub const REFUSED_ATTACH: usize = control_counter("refused_attach");
    pub const REFUSED_MAX_CLIENTS: usize = control_counter("refused_max_clients");
    pub const REFUSED_CLIENTS_PER_UID: usize = control_counter("refused_clients_per_uid");
    pub const REFUSED_MAX_GROUPS: usize = control_counter("refused_max_groups");
    pub const REFUSED_RING_BYTES: usize = control_counter("refused_ring_bytes");
    pub const REFUSED_JOIN_RATE: usize = control_counter("refused_join_rate");
    pub const REFUSED_GROUPS_PER_CLIENT: usize = control_counter("refused_groups_per_client");
    pub const DENIED_PUBLISH: usize = control_counter("denied_publish");
    pub const DENIED_SUBSCRIBE: usize = control_counter("denied_subscribe");
    pub const BAD_REQUESTS: usize = control_counter("bad_requests");
}

/// The control thread's counters, in a shared-memory page that `tutti stat` maps read-only
/// (sealed: only this process writes it). The control thread is the only writer.
pub struct ControlStats {
    page: CountersPage,
    fd: OwnedFd,
    _map: Mapping,
}

impl ControlStats {
    pub fn create() -> std::io::Result<ControlStats> {
        let (fd, map) = Mapping::create_read_only_for_others("tutti-counters-control", COUNTERS_LEN)?;
        // SAFETY: a fresh zeroed page owned here; `_map` keeps it mapped as long as `page`.
        let page = unsafe {
            CountersPage::init(map.as_ptr(), map.len(), CONTROL_COUNTERS.len())
                .and_then(|_| CountersPage::attach(map.as_ptr(), map.len()))
        }
        .map_err(std::io::Error::other)?;
        Ok(ControlStats { page, fd, _map: map })
    }

    fn add(&self, counter: usize) {
        self.page.add(counter, 1);
    }

    pub fn get(&self, counter: usize) -> u64 {
        self.page.get(counter)
    }
}

struct Group {
    name: String,
    shard: usize,
    log_fd: OwnedFd,
    doorbell_fd: OwnedFd,
    members: Vec<u32>,
    /// The uid whose `limits.ring_bytes_per_uid` pays for the log (its creator), and how much.
    charged: (u32, u64),
    /// Fixed by the group's first joiner on this daemon.
    options: GroupOptions,
    /// Members that subscribe (joined with the subscribe right): the shard does not log a
    /// plain group none of them reads (`ShardCommand::Readers`).
    readers: u32,
    /// Sessions that produce snapshots for joiners (ordered groups).
    providers: Vec<u32>,
    /// A snapshot being received from a provider: (position, bytes so far).
    snapshot: Option<(u64, Vec<u8>)>,
    /// A cpg group whose last local process left: its number while the shard writes the
    /// log for the leaver (`ShardCommand::DropGroup`), `None` otherwise. A join meanwhile
    /// takes the group as it is (same handle and log); `ShardEvent::LingerOver` with this
    /// number drops it for good.
    lingering: Option<u64>,
    /// Sessions that left this cpg group (the latest 64): one that joins again while the
    /// group lingers gets a fresh group, not this log, whose records from its earlier
    /// membership it would take for its own (`docs/cpg.md`, "Not done yet").
    leavers: Vec<u32>,
}

impl Group {
    /// A subscriber of this group (`handle`) left or went: the shard stops logging it once
    /// none is left.
    fn reader_left(&mut self, handle: u32, shard: &ShardLink) {
        self.readers = self.readers.saturating_sub(1);
        let _ = shard.send(ShardCommand::Readers {
            handle,
            readers: self.readers,
            ack: None,
        });
    }
}

struct Session {
    conn: SeqPacket,
    cred: PeerCred,
    identity: Identity,
    hello: bool,
    /// Per shard: whether this client has a publish ring there.
    shards: Vec<bool>,
    groups: Vec<u32>,
    /// Of `groups`, those joined with the subscribe right, and those with a descriptor's
    /// watch (`Request::Watch`).
    subscribed: Vec<u32>,
    watches: Vec<u32>,
    /// Bytes of publish rings charged to the session's uid.
    ring_bytes: u64,
    joins: TokenBucket,
    /// Region operations of this client in flight.
    region_ops: usize,
}

/// Region operations one client has in flight at once; beyond, `Busy`.
pub const MAX_REGION_OPS_PER_CLIENT: usize = 8;
/// Region operations in flight at once for all clients; beyond, `Busy`.
pub const MAX_REGION_OPS: usize = 256;
/// A region operation not answered by the shard within this long is answered
/// `Unavailable` (outcome unknown): a lost answer never leaves a client waiting forever.
const REGION_OP_DEADLINE: Duration = Duration::from_secs(10);

enum RegionKind {
    Create,
    Txn,
}

/// A region operation handed to shard 0.
struct PendingRegion {
    session: u32,
    /// The region ids of the request, in the order of its region names (errors name
    /// a region by its index there).
    ids: Vec<RegionId>,
    /// A create (answered `Done`) rather than a transaction (`MinitxDone`).
    create: bool,
    deadline: Instant,
}

/// What one uid holds, against `[limits]`.
#[derive(Default)]
struct UidUsage {
    clients: usize,
    ring_bytes: u64,
}

/// Why a join was refused, each with its own typed reply.
enum Refusal {
    Error(ErrorCode, String),
    Denied { right: Right, rule: String },
    Limit(Limit, u64),
}

impl Refusal {
    fn internal(text: String) -> Refusal {
        Refusal::Error(ErrorCode::Internal, text)
    }
}

/// Why the control loop returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    Terminated(i32),
}

pub struct Control {
    config: Config,
    listener: SeqPacketListener,
    signals: SignalFd,
    shards: Vec<ShardLink>,
    shard_events: Receiver<ShardEvent>,
    events_wake: Arc<EventFd>,
    sessions: HashMap<u32, Session>,
    groups: Vec<Option<Group>>,
    group_by_name: HashMap<String, u32>,
    next_session: u32,
    rejected: u64,
    bad_requests: u64,
    policy: AccessPolicy,
    stats: ControlStats,
    usage: HashMap<u32, UidUsage>,
    supervisor: Supervisor,
    /// Per shard, the latest view of its cluster node ("" outside a cluster).
    views: Vec<String>,
    region_ops: HashMap<u64, PendingRegion>,
    next_region_token: u64,
    /// Region operations answered `Unavailable` at their deadline.
    region_timeouts: u64,
    /// Numbers the lingers of cpg groups (`Group::lingering`).
    next_linger: u64,
}

impl Control {
    pub fn new(
        config: Config,
        listener: SeqPacketListener,
        signals: SignalFd,
        shards: Vec<ShardLink>,
        shard_events: Receiver<ShardEvent>,
        events_wake: Arc<EventFd>,
        supervisor: Supervisor,
    ) -> Result<Control, String> {
        let policy = AccessPolicy::new(&config.access)?;
        let stats = ControlStats::create().map_err(|e| format!("control counters: {e}"))?;
        Ok(Control {
            config,
            listener,
            signals,
            shards,
            shard_events,
            events_wake,
            sessions: HashMap::new(),
            groups: Vec::new(),
            group_by_name: HashMap::new(),
            next_session: 1,
            rejected: 0,
            bad_requests: 0,
            views: Vec::new(),
            region_ops: HashMap::new(),
            next_region_token: 1,
            region_timeouts: 0,
            next_linger: 0,
            policy,
            stats,
            usage: HashMap::new(),
            supervisor,
        })
    }

    /// Serves until SIGTERM/SIGINT; SIGHUP reloads the config file.
    pub fn run(&mut self) -> Exit {
        let status = format!(
            "serving {} shard(s) on {}",
            self.shards.len(),
            self.config.socket_path().display()
        );
        self.supervisor.ready(&status);
        let mut fds: Vec<RawFd> = Vec::new();
        let mut ids: Vec<u32> = Vec::new();
        let mut revents = Vec::new();
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            fds.clear();
            ids.clear();
            fds.extend([
                self.listener.as_raw_fd(),
                self.signals.as_raw_fd(),
                self.events_wake.as_raw_fd(),
            ]);
            for (&id, s) in &self.sessions {
                fds.push(s.conn.as_raw_fd());
                ids.push(id);
            }
            if let Err(e) =
                tutti_sys::poll_readable(&fds, &mut revents, Some(self.supervisor.tick_interval()))
            {
                tracing::error!("control poll failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            if revents[1] != 0 {
                while let Some(sig) = self.signals.read() {
                    match sig {
                        tutti_sys::SIGHUP => {
                            self.supervisor.reload(&mut self.config);
                            // Access lists and limits apply to joins from now on.
                            match AccessPolicy::new(&self.config.access) {
                                Ok(policy) => self.policy = policy,
                                Err(e) => tracing::error!("SIGHUP: {e}; keeping the running access lists"),
                            }
                        }
                        sig => {
                            tracing::info!(signal = sig, "stopping");
                            self.supervisor.stopping();
                            return Exit::Terminated(sig);
                        }
                    }
                }
            }
            self.supervisor.tick(&self.shards);
            if revents[2] != 0 {
                self.events_wake.drain();
                while let Ok(event) = self.shard_events.try_recv() {
                    match event {
                        ShardEvent::ClientFailed { session, reason } => {
                            tracing::warn!(session, %reason, "ending session");
                            self.end_session(session);
                        }
                        ShardEvent::Region { token, result } => self.region_done(token, result),
                        ShardEvent::LingerOver { handle, linger } => self.linger_over(handle, linger),
                        ShardEvent::View { shard, summary } => {
                            if self.views.len() <= shard {
                                self.views.resize(shard + 1, String::new());
                            }
                            self.views[shard] = summary;
                        }
                    }
                }
            }
            for (i, &id) in ids.iter().enumerate() {
                let ev = revents[3 + i];
                if ev != 0 {
                    self.serve(id, &mut buf);
                }
            }
            if revents[0] != 0 {
                self.accept_all();
            }
            self.expire_region_ops();
        }
    }

    fn accept_all(&mut self) {
        loop {
            let conn = match self.listener.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    return;
                }
            };
            let cred = match conn.peer_cred() {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("SO_PEERCRED failed, refusing client: {e}");
                    continue;
                }
            };
            if !self.may_attach(&cred) {
                self.rejected += 1;
                self.stats.add(counter::REFUSED_ATTACH);
                tracing::warn!(
                    pid = cred.pid,
                    uid = cred.uid,
                    gid = cred.gid,
                    "refused: user may not attach"
                );
                let denied = Reply::Denied {
                    uid: cred.uid,
                    right: Right::Attach,
                    group: "",
                    rule: "",
                };
                reply(&conn, &denied, &[]);
                continue;
            }
            let per_uid = self.usage.get(&cred.uid).map_or(0, |u| u.clients);
            let refused = if self.sessions.len() >= self.config.max_clients {
                Some((
                    Limit::Clients,
                    self.config.max_clients,
                    counter::REFUSED_MAX_CLIENTS,
                ))
            } else if per_uid >= self.config.limits.clients_per_uid {
                Some((
                    Limit::ClientsPerUid,
                    self.config.limits.clients_per_uid,
                    counter::REFUSED_CLIENTS_PER_UID,
                ))
            } else {
                None
            };
            if let Some((limit, max, counter)) = refused {
                self.rejected += 1;
                self.stats.add(counter);
                tracing::warn!(
                    pid = cred.pid,
                    uid = cred.uid,
                    "refused: {} reached",
                    limit.config_key()
                );
                let max = max as u64;
                reply(&conn, &Reply::LimitReached { limit, max }, &[]);
                continue;
            }
            // The supplementary groups as they were at connect time; if the kernel will not
            // say (before Linux 4.13), the group database is asked at each check instead.
            let identity = Identity {
                uid: cred.uid,
                gid: cred.gid,
                groups: conn.peer_groups().ok(),
            };
            let id = self.next_session;
            self.next_session = self.next_session.wrapping_add(1).max(1);
            tracing::info!(
                session = id,
                pid = cred.pid,
                uid = cred.uid,
                gid = cred.gid,
                "client connected"
            );
            let limits = &self.config.limits;
            self.sessions.insert(
                id,
                Session {
                    conn,
                    cred,
                    identity,
                    hello: false,
                    shards: vec![false; self.shards.len()],
                    groups: Vec::new(),
                    subscribed: Vec::new(),
                    watches: Vec::new(),
                    ring_bytes: 0,
                    joins: TokenBucket::full(limits.join_burst, Instant::now()),
                    region_ops: 0,
                },
            );
            self.usage.entry(cred.uid).or_default().clients += 1;
            self.stats.page.set(counter::SESSIONS, self.sessions.len() as u64);
        }
    }

    fn may_attach(&self, cred: &PeerCred) -> bool {
        let (uid, gid) = tutti_sys::effective_ids();
        cred.uid == 0
            || cred.uid == uid
            || cred.gid == gid
            || self.config.allow_uids.contains(&cred.uid)
            || tutti_sys::uid_in_group(cred.uid, gid)
    }

    fn serve(&mut self, id: u32, buf: &mut [u8]) {
        let mut fds = Vec::new();
        let n = {
            let Some(session) = self.sessions.get(&id) else {
                return;
            };
            match session.conn.try_recv(buf, &mut fds) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::info!(session = id, "control read failed: {e}");
                    0
                }
            }
        };
        if n == 0 {
            self.end_session(id);
            return;
        }
        if !fds.is_empty() {
            self.protocol_error(id, "clients may not send descriptors");
            return;
        }
        let request = match Request::decode(&buf[..n]) {
            Ok(r) => r,
            Err(e) => {
                self.protocol_error(id, &format!("bad control message: {e}"));
                return;
            }
        };
        self.handle(id, request);
    }

    fn protocol_error(&mut self, id: u32, text: &str) {
        self.bad_requests += 1;
        self.stats.add(counter::BAD_REQUESTS);
        tracing::warn!(session = id, "{text}; ending session");
        if let Some(s) = self.sessions.get(&id) {
            reply(
                &s.conn,
                &Reply::Error {
                    code: ErrorCode::BadRequest,
                    text,
                },
                &[],
            );
        }
        self.end_session(id);
    }

    fn handle(&mut self, id: u32, request: Request<'_>) {
        let hello = self.sessions.get(&id).is_some_and(|s| s.hello);
        match request {
            Request::Hello { version, pid } => {
                if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
                    let text = format!(
                        "protocol version {version} not supported; this tuttid speaks {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}"
                    );
                    self.send(
                        id,
                        &Reply::Error {
                            code: ErrorCode::VersionMismatch,
                            text: &text,
                        },
                        &[],
                    );
                    self.end_session(id);
                    return;
                }
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.hello = true;
                    if pid != s.cred.pid as u32 {
                        tracing::debug!(
                            session = id,
                            claimed = pid,
                            actual = s.cred.pid,
                            "client pid differs from its credentials"
                        );
                    }
                }
                // The client's own version: an older client checks for it.
                let welcome = Reply::Welcome {
                    version,
                    session_id: id,
                    node_id: self.config.node_id,
                    shards: self.shards.len() as u32,
                };
                self.send(id, &welcome, &[]);
            }
            _ if !hello => self.protocol_error(id, "first message must be Hello"),
            Request::SnapshotProvider { handle } => match self.member_group(id, handle) {
                Some(group) if group.options.ordered => {
                    if !group.providers.contains(&id) {
                        group.providers.push(id);
                    }
                    let (shard, providers) = (group.shard, group.providers.len());
                    let _ = self.shards[shard].send(ShardCommand::Providers { handle, providers });
                    self.send(id, &Reply::Done, &[]);
                }
                _ => self.refuse(id, ErrorCode::BadRequest, "not a member of that ordered group"),
            },
            Request::SnapshotChunk {
                handle,
                position,
                offset,
                last,
                bytes,
            } => {
                let Some(group) = self
                    .member_group(id, handle)
                    .filter(|g| g.providers.contains(&id))
                else {
                    self.refuse(id, ErrorCode::BadRequest, "not a snapshot provider of that group");
                    return;
                };
                // A chunk starts a snapshot (offset 0) or continues the one under way.
                let snapshot = match group.snapshot.take() {
                    Some((p, mut buf)) if p == position && buf.len() == offset as usize => {
                        buf.extend_from_slice(bytes);
                        Some(buf)
                    }
                    _ if offset == 0 => Some(bytes.to_vec()),
                    _ => None,
                };
                match snapshot {
                    Some(buf) if buf.len() > MAX_SNAPSHOT => {
                        self.refuse(id, ErrorCode::ResourceLimit, "snapshot larger than MAX_SNAPSHOT")
                    }
                    Some(buf) if last => {
                        let shard = group.shard;
                        let _ = self.shards[shard].send(ShardCommand::SnapshotReady {
                            handle,
                            position,
                            snapshot: buf,
                        });
                        self.send(id, &Reply::Done, &[]);
                    }
                    Some(buf) => {
                        group.snapshot = Some((position, buf));
                        self.send(id, &Reply::Done, &[]);
                    }
                    None => self.refuse(id, ErrorCode::BadRequest, "snapshot chunk out of sequence"),
                }
            }
            Request::Join {
                name,
                rights,
                options,
            } => match self.join(id, name, rights, options) {
                Ok(()) => {}
                Err(Refusal::Error(code, text)) => {
                    tracing::warn!(session = id, group = name, "join refused: {text}");
                    self.send(id, &Reply::Error { code, text: &text }, &[]);
                }
                Err(Refusal::Denied { right, rule }) => {
                    let uid = self.sessions.get(&id).map_or(u32::MAX, |s| s.cred.uid);
                    tracing::warn!(
                        session = id,
                        uid,
                        group = name,
                        rule,
                        "join denied: no {} right",
                        right.name()
                    );
                    let denied = Reply::Denied {
                        uid,
                        right,
                        group: name,
                        rule: &rule,
                    };
                    self.send(id, &denied, &[]);
                }
                Err(Refusal::Limit(limit, max)) => {
                    tracing::warn!(
                        session = id,
                        group = name,
                        "join refused: {} = {max} reached",
                        limit.config_key()
                    );
                    self.send(id, &Reply::LimitReached { limit, max }, &[]);
                }
            },
            Request::Watch { handle, position } => self.watch(id, handle, position),
            Request::Leave { handle } => {
                if self.sessions.get(&id).is_some_and(|s| s.groups.contains(&handle)) {
                    self.leave(id, handle);
                    self.send(id, &Reply::Left, &[]);
                } else {
                    self.send(
                        id,
                        &Reply::Error {
                            code: ErrorCode::NoSuchGroup,
                            text: "not a member of that group",
                        },
                        &[],
                    );
                }
            }
            Request::RegionCreate { name, size } => {
                let ids = vec![region_id(name)];
                let request = RegionRequest::Create {
                    name: name.to_string(),
                    size,
                };
                self.start_region_op(id, ids, request);
            }
            Request::Minitx(frame) => {
                let ids: Vec<RegionId> = frame.regions.iter().map(|n| region_id(n)).collect();
                let mut txn = RegionTxn::new();
                for item in &frame.items {
                    let region = ids[usize::from(item.region)];
                    txn = match item.kind {
                        ItemKind::Compare => txn.compare(region, item.offset, item.data),
                        ItemKind::Read => txn.read(region, item.offset, item.len),
                        ItemKind::Write => txn.write(region, item.offset, item.data),
                    };
                }
                self.start_region_op(id, ids, RegionRequest::Txn(txn));
            }
            Request::Status => {
                let text = self.status_text();
                self.send(id, &Reply::StatusText(&text), &[]);
            }
            Request::Counters {
                shard: CONTROL_COUNTERS_PAGE,
            } => {
                let reply = Reply::CountersPage {
                    shard: CONTROL_COUNTERS_PAGE,
                    count: CONTROL_COUNTERS.len() as u32,
                };
                self.send(id, &reply, &[self.stats.fd.as_raw_fd()]);
            }
            Request::Counters { shard } => match self.shards.get(shard as usize) {
                Some(link) => {
                    let reply = Reply::CountersPage {
                        shard,
                        count: SHARD_COUNTERS.len() as u32,
                    };
                    self.send(id, &reply, &[link.counters_fd.as_raw_fd()]);
                }
                None => {
                    let text = format!("no shard {shard}; this tuttid has {}", self.shards.len());
                    self.send(
                        id,
                        &Reply::Error {
                            code: ErrorCode::BadRequest,
                            text: &text,
                        },
                        &[],
                    );
                }
            },
        }
    }

    /// Hands a client's region operation to shard 0 (bounded per client and in all).
    fn start_region_op(&mut self, id: u32, ids: Vec<RegionId>, request: RegionRequest) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        if session.region_ops >= MAX_REGION_OPS_PER_CLIENT || self.region_ops.len() >= MAX_REGION_OPS {
            self.send(id, &Reply::MinitxFailed(MinitxFailure::Busy), &[]);
            return;
        }
        let token = self.next_region_token;
        let request_kind = match request {
            RegionRequest::Create { .. } => RegionKind::Create,
            RegionRequest::Txn(_) => RegionKind::Txn,
        };
        let Some(link) = self.shards.first() else {
            self.send(id, &Reply::MinitxFailed(MinitxFailure::NoCluster), &[]);
            return;
        };
        if link.send(ShardCommand::Region { token, request }).is_err() {
            self.send(id, &Reply::MinitxFailed(MinitxFailure::Busy), &[]);
            return;
        }
        self.next_region_token += 1;
        session.region_ops += 1;
        self.region_ops.insert(
            token,
            PendingRegion {
                session: id,
                create: matches!(request_kind, RegionKind::Create),
                ids,
                deadline: Instant::now() + REGION_OP_DEADLINE,
            },
        );
    }

    /// Answers the client of a region operation (if it is still connected).
    fn region_done(&mut self, token: u64, result: RegionResult) {
        let Some(p) = self.region_ops.remove(&token) else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&p.session) else {
            return;
        };
        session.region_ops = session.region_ops.saturating_sub(1);
        let index = |region: RegionId| p.ids.iter().position(|&r| r == region).unwrap_or(0) as u8;
        let failure = match &result {
            RegionResult::Done(_) if p.create => return self.send(p.session, &Reply::Done, &[]),
            RegionResult::Done(reads) => {
                let reads = reads.iter().map(Vec::as_slice).collect();
                return self.send(p.session, &Reply::MinitxDone { reads }, &[]);
            }
            RegionResult::NoCluster => MinitxFailure::NoCluster,
            RegionResult::Failed(e) => match e {
                RegionError::Conflict { failed, reads } => MinitxFailure::Conflict {
                    failed: failed
                        .iter()
                        .map(|(i, b)| (u8::try_from(*i).unwrap_or(u8::MAX), b.as_slice()))
                        .collect(),
                    reads: reads.iter().map(|r| r.as_deref()).collect(),
                },
                RegionError::RegionMissing { region } => MinitxFailure::RegionMissing {
                    region: index(*region),
                },
                RegionError::SizeMismatch { region, size } => MinitxFailure::SizeMismatch {
                    region: index(*region),
                    size: *size,
                },
                RegionError::OutOfBounds { region } => MinitxFailure::OutOfBounds {
                    region: index(*region),
                },
                RegionError::TooLarge => MinitxFailure::TooLarge,
                RegionError::NoSpace => MinitxFailure::NoSpace,
                RegionError::NotInMajority => MinitxFailure::NotInMajority,
                RegionError::Busy | RegionError::Full => MinitxFailure::Busy,
                RegionError::Unavailable => MinitxFailure::Unavailable,
            },
        };
        self.send(p.session, &Reply::MinitxFailed(failure), &[]);
    }

    /// Answers `Unavailable` for region operations past their deadline.
    fn expire_region_ops(&mut self) {
        if self.region_ops.is_empty() {
            return;
        }
        let now = Instant::now();
        let expired: Vec<u64> = self
            .region_ops
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(&t, _)| t)
            .collect();
        for token in expired {
            self.region_timeouts += 1;
            self.region_done(token, RegionResult::Failed(RegionError::Unavailable));
        }
    }

    /// Group `handle` if session `id` is a member of it.
    fn member_group(&mut self, id: u32, handle: u32) -> Option<&mut Group> {
        if !self.sessions.get(&id).is_some_and(|s| s.groups.contains(&handle)) {
            return None;
        }
        self.groups.get_mut(handle as usize).and_then(Option::as_mut)
    }

    /// A descriptor for a subscriber (`Request::Watch`): a watch page armed at `position`
    /// and a wake pair, the daemon's halves to the group's shard, the client's in the reply.
    fn watch(&mut self, id: u32, handle: u32, position: u64) {
        let Some(session) = self
            .sessions
            .get_mut(&id)
            .filter(|s| s.subscribed.contains(&handle))
        else {
            self.refuse(id, ErrorCode::NoSuchGroup, "not a subscriber of that group");
            return;
        };
        if !session.watches.contains(&handle) {
            session.watches.push(handle);
        }
        let Some(shard) = self
            .groups
            .get(handle as usize)
            .and_then(Option::as_ref)
            .map(|g| g.shard)
        else {
            self.refuse(id, ErrorCode::NoSuchGroup, "no such group");
            return;
        };
        let made = (|| -> std::io::Result<_> {
            let (sender, client_end) = tutti_sys::wake_pair()?;
            let (page_fd, page) = Mapping::create("tutti-watch", WATCH_LEN)?;
            // SAFETY: a fresh writable mapping of WATCH_LEN bytes that nobody else has yet;
            // the shard keeps it (in its watcher, with the Watch) for as long as it uses it.
            let watch = unsafe {
                Watch::init(page.as_ptr(), page.len()).map_err(std::io::Error::other)?;
                Watch::attach(page.as_ptr(), page.len()).map_err(std::io::Error::other)?
            };
            watch.arm(position);
            Ok((sender, client_end, page_fd, page, watch))
        })();
        match made {
            Ok((sender, client_end, page_fd, page, watch)) => {
                let _ = self.shards[shard].send(ShardCommand::Watch {
                    handle,
                    session: id,
                    watch,
                    page,
                    sender,
                });
                self.send(id, &Reply::Done, &[client_end.as_raw_fd(), page_fd.as_raw_fd()]);
            }
            Err(e) => {
                tracing::warn!(session = id, handle, "cannot make a descriptor: {e}");
                self.refuse(id, ErrorCode::Internal, &format!("cannot make a descriptor: {e}"));
            }
        }
    }

    fn refuse(&self, id: u32, code: ErrorCode, text: &str) {
        self.send(id, &Reply::Error { code, text }, &[]);
    }

    fn send(&self, id: u32, r: &Reply<'_>, fds: &[RawFd]) {
        if let Some(s) = self.sessions.get(&id) {
            reply(&s.conn, r, fds);
        }
    }

    fn join(&mut self, id: u32, name: &str, rights: Rights, options: GroupOptions) -> Result<(), Refusal> {
        let limits = self.config.limits.clone();
        let session = self
            .sessions
            .get_mut(&id)
            .ok_or_else(|| Refusal::internal("no session".into()))?;
        // The rate limit comes first, so that a flood of refused joins is cheap too.
        if !session
            .joins
            .take(limits.joins_per_second, limits.join_burst, Instant::now())
        {
            self.stats.add(counter::REFUSED_JOIN_RATE);
            return Err(Refusal::Limit(Limit::JoinRate, limits.joins_per_second.into()));
        }
        if let Err(denied) = self.policy.check(name, &session.identity, rights) {
            self.stats.add(match denied.right {
                Right::Publish => counter::DENIED_PUBLISH,
                _ => counter::DENIED_SUBSCRIBE,
            });
            return Err(Refusal::Denied {
                right: denied.right,
                rule: denied.rule,
            });
        }
        let mut existing = self.group_by_name.get(name).copied();
        if existing.is_some_and(|h| session.groups.contains(&h)) {
            return Err(Refusal::Error(
                ErrorCode::BadRequest,
                format!("already a member of {name}"),
            ));
        }
        if let Some(group) = existing.and_then(|h| self.groups[h as usize].as_ref()) {
            if group.options != options {
                return Err(Refusal::Error(
                    ErrorCode::OptionsMismatch,
                    format!(
                        "group {name} is {} on this daemon, but this join asks for {} (the first joiner fixes a group's options)",
                        options_name(group.options),
                        options_name(options)
                    ),
                ));
            }
        } else if options.ordered && !self.config.cluster.enabled {
            return Err(Refusal::Error(
                ErrorCode::Unsupported,
                format!(
                    "group {name}: ordered groups need a cluster ([cluster] enabled = true, or --listen/--seed); this tuttid runs alone"
                ),
            ));
        }
        if session.groups.len() >= limits.groups_per_client {
            self.stats.add(counter::REFUSED_GROUPS_PER_CLIENT);
            return Err(Refusal::Limit(
                Limit::GroupsPerClient,
                limits.groups_per_client as u64,
            ));
        }
        // Shared memory this join makes the session's uid hold: the log of a new group and a
        // publish ring on a shard where it has none. Checked before anything is created.
        let uid = session.cred.uid;
        let log_len = DeliveryLog::required_len(self.config.log_bytes) as u64;
        let ring_len = PublishRing::required_len(self.config.publish_ring_bytes) as u64;
        let shard = match existing {
            Some(h) => self.groups[h as usize].as_ref().map_or(0, |g| g.shard),
            None => (tutti_wire::group_id(name) % self.shards.len() as u64) as usize,
        };
        let needs_ring = rights.publish && !session.shards[shard];
        let needed = if existing.is_none() { log_len } else { 0 } + if needs_ring { ring_len } else { 0 };
        let held = self.usage.get(&uid).map_or(0, |u| u.ring_bytes);
        if held.saturating_add(needed) > limits.ring_bytes_per_uid {
            self.stats.add(counter::REFUSED_RING_BYTES);
            return Err(Refusal::Limit(Limit::RingBytesPerUid, limits.ring_bytes_per_uid));
        }
        // Its own earlier leave lingers: a fresh group (its leave's reading ends here).
        if let Some(h) = existing.filter(|&h| {
            self.groups[h as usize]
                .as_ref()
                .is_some_and(|g| g.lingering.is_some() && g.leavers.contains(&id))
        }) {
            self.drop_group(h);
            existing = None;
        }
        let handle = match existing {
            Some(h) => h,
            None => self.create_group(name, uid, options)?,
        };
        // A group that lingers for a leaver is taken as it is: the join's cpg process change
        // tells the shard it has a local member again.
        let lingered = self.groups[handle as usize]
            .as_mut()
            .and_then(|g| g.lingering.take());
        let result = self.grant(id, handle, rights, needs_ring);
        if result.is_err()
            && self.groups[handle as usize]
                .as_ref()
                .is_some_and(|g| g.members.is_empty())
        {
            match lingered {
                // The leaver may still be reading: linger again (the shard re-checks).
                Some(_) => self.linger_or_drop(handle),
                None => self.drop_group(handle),
            }
        }
        result
    }

    /// The shard a group lives on.
    fn shard_of(&self, name: &str) -> usize {
        (tutti_wire::group_id(name) % self.shards.len() as u64) as usize
    }

    /// Makes session `id` a member of group `handle` with `rights` (the checks are done)
    /// and sends it the descriptors: the log and group doorbell to a subscriber, and on a
    /// publisher's first join on the shard its publish ring there.
    fn grant(&mut self, id: u32, handle: u32, rights: Rights, needs_ring: bool) -> Result<(), Refusal> {
        let group = self.groups[handle as usize]
            .as_ref()
            .ok_or_else(|| Refusal::internal("group vanished".into()))?;
        let shard = group.shard;
        let mut ring_fd = None;
        if needs_ring {
            let len = PublishRing::required_len(self.config.publish_ring_bytes);
            // Not sealed read-only: the client writes its ring. It is this client's alone:
            // the descriptor goes to this session only, and the shard reads it as untrusted.
            let (fd, map) = Mapping::create(&format!("tutti-pub-{id}-{shard}"), len)
                .map_err(|e| Refusal::internal(e.to_string()))?;
            // SAFETY: a fresh zeroed mapping of `len` bytes that nobody else maps yet.
            unsafe { PublishRing::init(map.as_ptr(), map.len(), self.config.publish_ring_bytes) }
                .map_err(|e| Refusal::internal(e.to_string()))?;
            self.shards[shard]
                .call(|ack| ShardCommand::AddClient {
                    session: id,
                    ring: map,
                    ack,
                })
                .map_err(Refusal::internal)?;
            let session = self.sessions.get_mut(&id).expect("session exists");
            session.shards[shard] = true;
            session.ring_bytes += len as u64;
            self.usage.entry(session.cred.uid).or_default().ring_bytes += len as u64;
            ring_fd = Some(fd);
        }
        if rights.publish {
            self.shards[shard]
                .call(|ack| ShardCommand::Subscribe {
                    session: id,
                    handle,
                    ack,
                })
                .map_err(Refusal::internal)?;
        }
        if rights.subscribe {
            // Before the reply: the reader starts at the log's end, which the shard writes
            // again from here on.
            let group = self.groups[handle as usize].as_mut().expect("group exists");
            group.readers += 1;
            let readers = group.readers;
            self.shards[shard]
                .call(|ack| ShardCommand::Readers {
                    handle,
                    readers,
                    ack: Some(ack),
                })
                .map_err(Refusal::internal)?;
        }
        let session = self.sessions.get_mut(&id).expect("session exists");
        session.groups.push(handle);
        if rights.subscribe {
            session.subscribed.push(handle);
        }
        let pid = session.cred.pid as u32;
        let group = self.groups[handle as usize].as_mut().expect("group exists");
        group.members.push(id);
        if group.options.cpg {
            // Before the reply: the shard has the join queued before any data the client
            // publishes after it (and holds that data until the join is in the order).
            self.shards[shard]
                .call(|ack| ShardCommand::CpgProc {
                    handle,
                    session: id,
                    pid: Some(pid),
                    reason: crate::cpg::reason::JOIN,
                    ack,
                })
                .map_err(Refusal::internal)?;
        }
        let group = self.groups[handle as usize].as_ref().expect("group exists");

        let joined = Joined {
            pub_capacity: self.config.publish_ring_bytes as u64,
            log_capacity: self.config.log_bytes as u64,
            handle,
            shard: shard as u32,
            new_shard: u8::from(ring_fd.is_some()),
            rights: rights.to_u8(),
            options: group.options.to_u8(),
            reserved: [0; 5],
            max_message: if group.options.ordered {
                // The ordered layer's payload limit (less the session prefix).
                self.config
                    .max_message()
                    .min(crate::cluster::ordered_max_message()) as u64
            } else {
                self.config.max_message() as u64
            },
        };
        let link = &self.shards[shard];
        let mut fds = Vec::with_capacity(5);
        if rights.subscribe {
            fds.extend([group.log_fd.as_raw_fd(), group.doorbell_fd.as_raw_fd()]);
        }
        if let Some(fd) = &ring_fd {
            fds.extend([
                fd.as_raw_fd(),
                link.doorbell_fd.as_raw_fd(),
                link.wake.as_raw_fd(),
            ]);
        }
        tracing::info!(
            session = id,
            group = group.name,
            handle,
            shard,
            publish = rights.publish,
            subscribe = rights.subscribe,
            "joined"
        );
        let session = &self.sessions[&id];
        reply(&session.conn, &Reply::Joined(joined), &fds);
        Ok(())
    }

    fn create_group(&mut self, name: &str, uid: u32, options: GroupOptions) -> Result<u32, Refusal> {
        let live = self.groups.iter().flatten().count();
        if live >= self.config.max_groups {
            self.stats.add(counter::REFUSED_MAX_GROUPS);
            return Err(Refusal::Limit(Limit::Groups, self.config.max_groups as u64));
        }
        let internal = |e: String| Refusal::internal(e);
        let handle = match self.groups.iter().position(Option::is_none) {
            Some(h) => h as u32,
            None => {
                self.groups.push(None);
                (self.groups.len() - 1) as u32
            }
        };
        let shard = self.shard_of(name);
        let log_len = DeliveryLog::required_len(self.config.log_bytes);
        // Sealed against every write but the shard's own mapping: a member that maps the log
        // writable (or pwrites it, even through a descriptor reopened from /proc) could
        // otherwise forge records, with any sender id, for every other member.
        let (log_fd, log_map) = Mapping::create_read_only_for_others(&format!("tutti-log-{name}"), log_len)
            .map_err(|e| internal(e.to_string()))?;
        // SAFETY: a fresh zeroed mapping of log_len bytes, not yet shared.
        unsafe { DeliveryLog::init(log_map.as_ptr(), log_map.len(), self.config.log_bytes) }
            .map_err(|e| internal(e.to_string()))?;
        let (doorbell_fd, doorbell_map) = Mapping::create(&format!("tutti-bell-{name}"), DOORBELL_BYTES)
            .map_err(|e| internal(e.to_string()))?;
        // SAFETY: a fresh zeroed page, not yet shared.
        unsafe { GroupDoorbell::init(doorbell_map.as_ptr(), doorbell_map.len()) }
            .map_err(|e| internal(e.to_string()))?;
        self.shards[shard]
            .call(|ack| ShardCommand::AddGroup {
                handle,
                gid: tutti_wire::group_id(name),
                name: name.to_string(),
                options,
                log: log_map,
                doorbell: doorbell_map,
                ack,
            })
            .map_err(internal)?;
        tracing::info!(group = name, handle, shard, "group created");
        self.usage.entry(uid).or_default().ring_bytes += log_len as u64;
        self.groups[handle as usize] = Some(Group {
            name: name.to_string(),
            shard,
            log_fd,
            doorbell_fd,
            members: Vec::new(),
            charged: (uid, log_len as u64),
            options,
            readers: 0,
            providers: Vec::new(),
            snapshot: None,
            lingering: None,
            leavers: Vec::new(),
        });
        self.group_by_name.insert(name.to_string(), handle);
        Ok(handle)
    }

    /// Takes back what a uid was charged; forgets a uid that holds nothing.
    fn uncharge(&mut self, uid: u32, clients: usize, ring_bytes: u64) {
        if let Some(u) = self.usage.get_mut(&uid) {
            debug_assert!(
                u.clients >= clients && u.ring_bytes >= ring_bytes,
                "usage of uid {uid} underflows"
            );
            u.clients -= clients.min(u.clients);
            u.ring_bytes -= ring_bytes.min(u.ring_bytes);
            if u.clients == 0 && u.ring_bytes == 0 {
                self.usage.remove(&uid);
            }
        }
    }

    fn leave(&mut self, id: u32, handle: u32) {
        let Some(group) = self.groups.get_mut(handle as usize).and_then(Option::as_mut) else {
            return;
        };
        let shard = group.shard;
        group.members.retain(|&m| m != id);
        let empty = group.members.is_empty();
        if self
            .sessions
            .get(&id)
            .is_some_and(|s| s.subscribed.contains(&handle))
        {
            group.reader_left(handle, &self.shards[shard]);
        }
        if group.options.cpg {
            cpg_leave(&self.shards[shard], handle, id, crate::cpg::reason::LEAVE);
            if group.leavers.len() >= 64 {
                group.leavers.remove(0);
            }
            group.leavers.push(id);
        }
        if let Some(i) = group.providers.iter().position(|&p| p == id) {
            group.providers.swap_remove(i);
            let providers = group.providers.len();
            let _ = self.shards[shard].send(ShardCommand::Providers { handle, providers });
        }
        if let Err(e) = self.shards[shard].call(|ack| ShardCommand::Unsubscribe {
            session: id,
            handle,
            ack,
        }) {
            tracing::warn!(session = id, handle, "unsubscribe: {e}");
        }
        if let Some(s) = self.sessions.get_mut(&id) {
            s.groups.retain(|&h| h != handle);
            s.subscribed.retain(|&h| h != handle);
            if let Some(i) = s.watches.iter().position(|&h| h == handle) {
                s.watches.swap_remove(i);
                let _ = self.shards[shard].send(ShardCommand::Unwatch { handle, session: id });
            }
        }
        if empty {
            self.linger_or_drop(handle);
        }
    }

    /// The last local member left group `handle`. A cpg leaver reads on up to its own
    /// leave's confchg: the group stays (a join meanwhile takes it as it is, handle and
    /// log), and the shard writes its log until the leave is through the order, then says
    /// `LingerOver` (`ShardCommand::DropGroup`). Other groups go at once.
    fn linger_or_drop(&mut self, handle: u32) {
        let linger = self.next_linger;
        match self.groups.get_mut(handle as usize).and_then(Option::as_mut) {
            Some(group) if group.options.cpg => {
                self.next_linger += 1;
                group.lingering = Some(linger);
                let linger = Some(linger);
                let _ = self.shards[group.shard].send(ShardCommand::DropGroup { handle, linger });
            }
            _ => self.drop_group(handle),
        }
    }

    /// The shard wrote a cpg group's log for its leaver until the leave went through:
    /// dropped now, unless a process joined it since (or left it again: another linger).
    fn linger_over(&mut self, handle: u32, linger: u64) {
        let over = self
            .groups
            .get(handle as usize)
            .and_then(Option::as_ref)
            .is_some_and(|g| g.lingering == Some(linger) && g.members.is_empty());
        if over {
            self.drop_group(handle);
        }
    }

    /// Frees a group nobody belongs to any more: the shard drops its mappings, we close
    /// its descriptors, and the kernel frees the memory when the last subscriber unmaps.
    fn drop_group(&mut self, handle: u32) {
        if let Some(group) = self.groups.get_mut(handle as usize).and_then(Option::take) {
            let linger = None;
            let _ = self.shards[group.shard].send(ShardCommand::DropGroup { handle, linger });
            self.group_by_name.remove(&group.name);
            let (uid, bytes) = group.charged;
            self.uncharge(uid, 0, bytes);
            tracing::info!(group = group.name, handle, "group freed (no members left)");
        }
    }

    /// Ends a session: its shards publish what it committed and free its rings, its
    /// memberships go, and so do groups left empty.
    fn end_session(&mut self, id: u32) {
        let Some(session) = self.sessions.remove(&id) else {
            return;
        };
        self.uncharge(session.cred.uid, 1, session.ring_bytes);
        self.stats.page.set(counter::SESSIONS, self.sessions.len() as u64);
        for (shard, &has_ring) in session.shards.iter().enumerate() {
            if has_ring {
                let _ = self.shards[shard].send(ShardCommand::DropClient { session: id });
            }
        }
        for handle in session.groups {
            let mut empty = false;
            if let Some(group) = self.groups.get_mut(handle as usize).and_then(Option::as_mut) {
                if session.watches.contains(&handle) {
                    let _ = self.shards[group.shard].send(ShardCommand::Unwatch { handle, session: id });
                }
                group.members.retain(|&m| m != id);
                empty = group.members.is_empty();
                if session.subscribed.contains(&handle) {
                    group.reader_left(handle, &self.shards[group.shard]);
                }
                if group.options.cpg {
                    // A session that ends without leaving: its process went down.
                    let shard = group.shard;
                    cpg_leave(&self.shards[shard], handle, id, crate::cpg::reason::PROCDOWN);
                }
                if let Some(i) = group.providers.iter().position(|&p| p == id) {
                    group.providers.swap_remove(i);
                    let providers = group.providers.len();
                    let _ = self.shards[group.shard].send(ShardCommand::Providers { handle, providers });
                }
            }
            if empty {
                self.drop_group(handle);
            }
        }
        tracing::info!(session = id, pid = session.cred.pid, "client session ended");
    }

    /// Stops the shards and tells every client (they see the socket close).
    pub fn shutdown(&mut self) {
        for link in &self.shards {
            let _ = link.send(ShardCommand::Shutdown);
        }
        self.sessions.clear();
    }

    /// Each shard's report for `tutti status` (None from a shard that did not answer).
    fn shard_reports(&self) -> Vec<Option<ShardReport>> {
        let asked: Vec<_> = self
            .shards
            .iter()
            .map(|link| {
                let (tx, rx) = crossbeam_channel::bounded(1);
                link.send(ShardCommand::Report { reply: tx }).ok().map(|()| rx)
            })
            .collect();
        asked
            .into_iter()
            .map(|rx| rx.and_then(|rx| rx.recv_timeout(REPORT_TIMEOUT).ok()))
            .collect()
    }

    fn status_text(&self) -> String {
        let reports = self.shard_reports();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "tuttid {} node {} pid {}",
            env!("CARGO_PKG_VERSION"),
            self.config.node_id,
            std::process::id()
        );
        let _ = writeln!(
            out,
            "idle: {:?}  publish ring: {} B  delivery log: {} B",
            self.config.idle, self.config.publish_ring_bytes, self.config.log_bytes
        );
        let _ = writeln!(out, "\nshards: {}", self.shards.len());
        for (i, s) in self.shards.iter().enumerate() {
            let st = &s.stats;
            let core = s
                .core
                .map_or_else(|| "unpinned".to_string(), |c| format!("core {c}"));
            if let Some(view) = self.views.get(i).filter(|v| !v.is_empty()) {
                let _ = writeln!(out, "  shard {i} cluster {view}");
            }
            let _ = write!(out, "  shard {i} ({core}):");
            for (index, (name, _)) in SHARD_COUNTERS.iter().enumerate() {
                if *name != "heartbeat" {
                    let _ = write!(out, " {name} {}", st.get(index));
                }
            }
            out.push('\n');
            if let Some(r) = reports
                .get(i)
                .and_then(Option::as_ref)
                .filter(|r| !r.members.is_empty())
            {
                out.push_str(&r.members);
            }
        }
        let live: Vec<(u32, &Group)> = (0u32..)
            .zip(&self.groups)
            .filter_map(|(h, g)| g.as_ref().map(|g| (h, g)))
            .collect();
        let _ = writeln!(out, "\ngroups: {}", live.len());
        for (handle, g) in live {
            let traffic = reports
                .get(g.shard)
                .and_then(Option::as_ref)
                .and_then(|r| r.groups.iter().find(|t| t.handle == handle));
            // Bimodal groups read as before options existed: "NAME (shard N): ...".
            let options = if g.options.ordered {
                format!(", {}", options_name(g.options))
            } else {
                String::new()
            };
            let _ = write!(
                out,
                "  {} (shard {}{options}): {} members",
                g.name,
                g.shard,
                g.members.len()
            );
            match traffic {
                Some(t) => {
                    let _ = writeln!(
                        out,
                        "; published here {} ({:.0}/s), from other daemons {} ({:.0}/s)",
                        t.published, t.published_per_sec, t.received, t.received_per_sec
                    );
                    if let Some(o) = &t.ordered {
                        let _ = writeln!(out, "    {o}");
                    }
                }
                None => out.push('\n'),
            }
        }
        if let Some(r) = reports
            .first()
            .and_then(Option::as_ref)
            .filter(|r| !r.regions.is_empty())
        {
            let _ = writeln!(
                out,
                "\n{} (control: in flight {}, timed out {})",
                r.regions,
                self.region_ops.len(),
                self.region_timeouts
            );
        }
        write_cpg_groups(&mut out, &reports);
        let _ = write!(out, "\ncontrol:");
        for (index, (name, _)) in CONTROL_COUNTERS.iter().enumerate() {
            let _ = write!(out, " {name} {}", self.stats.get(index));
        }
        out.push('\n');
        let _ = writeln!(
            out,
            "\nclients: {} (refused {}, bad requests {})",
            self.sessions.len(),
            self.rejected,
            self.bad_requests
        );
        let mut ids: Vec<_> = self.sessions.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let s = &self.sessions[&id];
            let names: Vec<&str> = s
                .groups
                .iter()
                .filter_map(|&h| {
                    self.groups
                        .get(h as usize)
                        .and_then(Option::as_ref)
                        .map(|g| g.name.as_str())
                })
                .collect();
            let _ = writeln!(
                out,
                "  session {id}: pid {} uid {} groups [{}]",
                s.cred.pid,
                s.cred.uid,
                names.join(", ")
            );
        }
        out
    }
}

/// The cpg groups of every shard as `corosync-cpgtool` lists them: the group's name (CPG's
/// name, without the `cpg:` prefix libcpg.so.4 adds), then one `nodeid pid` line per
/// process of the cluster. A group no local process belongs to any more is marked.
fn write_cpg_groups(out: &mut String, reports: &[Option<ShardReport>]) {
    let mut groups: Vec<&crate::cpg::Listing> = reports.iter().flatten().flat_map(|r| &r.cpg).collect();
    if groups.is_empty() {
        return;
    }
    groups.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    let _ = writeln!(
        out,
        "\ncpg groups: {} (group, then nodeid pid per process)",
        groups.len()
    );
    for g in groups {
        let name = g.name.strip_prefix("cpg:").unwrap_or(&g.name);
        let dormant = if g.dormant { " (no local process)" } else { "" };
        let _ = writeln!(out, "  {name}{dormant}");
        for (node, pid) in &g.procs {
            let _ = writeln!(out, "    {node} {pid}");
        }
    }
}

/// Publishes a cpg member's leave (`reason` LEAVE or PROCDOWN) in the group's order.
fn cpg_leave(link: &ShardLink, handle: u32, session: u32, reason: u32) {
    let result = link.call(|ack| ShardCommand::CpgProc {
        handle,
        session,
        pid: None,
        reason,
        ack,
    });
    if let Err(e) = result {
        tracing::warn!(session, handle, "cpg leave: {e}");
    }
}

fn options_name(options: GroupOptions) -> &'static str {
    match (options.ordered, options.safe, options.cpg, options.evs) {
        (false, _, _, _) => "bimodal",
        // Cpg groups: `cluster.cpg_partition` decides majority or evs.
        (true, _, true, _) => "ordered, cpg",
        (true, false, false, false) => "ordered",
        (true, true, false, false) => "ordered, safe",
        (true, false, false, true) => "ordered, evs",
        (true, true, false, true) => "ordered, safe, evs",
    }
}

fn reply(conn: &SeqPacket, r: &Reply<'_>, fds: &[RawFd]) {
    let mut out = Vec::with_capacity(64);
    r.encode(&mut out);
    if let Err(e) = conn.send(&out, fds) {
        tracing::debug!("reply not delivered: {e}");
    }
}
