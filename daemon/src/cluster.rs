//! A shard's cluster side: one `tutti_proto::Node` per shard, driven with the shard's UDP
//! transport and a monotonic clock. Shard `s` of daemon `n` is cluster node `n << 8 | s`
//! and listens on `net.listen:net.base_port + s`; shard `s` of every daemon forms one
//! cluster, so a group's traffic stays on the shard that owns it (`group_id % shards`,
//! which needs the same shard count on every daemon).
//!
//! This is a driver: rings in, datagrams out, datagrams in, log appends out. Everything
//! that decides what is sent, kept, delivered or reported `Lost` (fragmentation, sessions,
//! stream identity, lingering, self-delivery) is in `tutti_proto`, where the simulator
//! exercises it. A local client's message goes into the local log by the shard and into
//! `Node::submit` with its session; a message the node delivers from another daemon goes
//! into the log with sender id `(daemon << 32) | session`, as a local one.
//!
//! The driver also keeps the address book: where each node is (learned from the datagrams
//! it sends), when it was last heard, and which node a seed given by address only
//! (`--seed HOST[:PORT]`) turned out to be. Such a seed is handed to the node under a
//! placeholder id (daemon id 0 is never a real daemon's): the node's heartbeats to it go
//! to the address until a datagram from that address names the daemon behind it. Two
//! addresses claiming one daemon id are refused and reported, naming both.

use crate::net::auth::{same_key_id, AuthKeys, AuthSetup, ClusterKey, TRAILER_LEN};
use crate::net::{self, NetConfig, Transport};
use serde::Deserialize;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tutti_proto::fxhash::FxMap;
use tutti_proto::ordered::{
    OrderedSettings, OrderedStatusEvent, PartitionPolicy, RemoveReason, Status as OrderedMemberStatus,
};
use tutti_proto::regions::{RegionError, RegionEvent, RegionOp, RegionTxn};
use tutti_proto::{Delivered, Delivery, Event, Node, NodeId, Settings, SubmitError, Time, View, MILLIS};

/// Datagrams taken from the socket per pass.
const RECV_BUDGET: usize = 64;
/// Daemon ids fit in 24 bits (the low 8 bits of a cluster node id are the shard).
pub const MAX_DAEMON_ID: u32 = (1 << 24) - 1;
/// Most shards a daemon may run in a cluster (8 bits of the node id).
pub const MAX_CLUSTER_SHARDS: usize = 256;
/// Most seeds given by address only: each gets a placeholder node id of daemon 0.
pub const MAX_ADDRESS_SEEDS: usize = 256;
/// Least time between two log lines about the same duplicate daemon id.
const DUPLICATE_LOG_INTERVAL: Time = 10_000 * MILLIS;
/// Name of the file in the state directory that keeps a derived random daemon id.
pub const NODE_ID_FILE: &str = "node-id";

/// `[cluster]` settings. Off by default: a daemon without it is a single-host daemon.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Join a cluster over UDP (also switched on by `--listen` or `--seed`).
    pub enabled: bool,
    /// Daemons to contact first, as `"HOST"`, `"HOST:BASE_PORT"` (the daemon id is
    /// learned from the first datagram from there) or `"ID@HOST[:BASE_PORT]"`. HOST is an
    /// IP address (IPv6 with a port in brackets: `"[::1]:7400"`) or a name resolved at
    /// start. Default port: this daemon's `net.base_port`. Others are learned from them.
    pub seeds: Vec<String>,
    /// Length of a gossip round (ms). Shorter: faster repair and failure detection, more
    /// datagrams per second.
    pub gossip_period_ms: u64,
    /// Members gossiped to per round.
    pub gossip_fanout: usize,
    /// Children per node in the dissemination tree.
    pub tree_fanout: usize,
    /// Rounds a message is kept for repair; a gap older than that is reported lost.
    pub retention_rounds: u32,
    /// Bytes retransmitted per round at most (what keeps a slow member from slowing others).
    pub retransmit_budget_bytes: usize,
    /// A member silent this long (ms) is suspected and removed from the view.
    pub suspect_timeout_ms: u64,
    /// "fifo" (per sender, default) or "unordered" (deliver on first receipt).
    pub delivery: String,
    /// Partition policy of cpg groups: "evs" (default: each side goes on in its own
    /// configuration and the sides merge at the heal, as Corosync's CPG) or "majority" (a
    /// cut-off minority stops). Every daemon of a cluster must use the same.
    pub cpg_partition: String,
    /// Delivery in `evs` groups (cpg groups and `GroupOptions::evs`): "agreed" (default: a
    /// message that is not `safe` is delivered once its place in the order is known, as
    /// Corosync's CPG delivers) or "safe" (every message once every member holds it).
    /// Every daemon of a cluster must use the same.
    pub evs_delivery: String,
    /// Bytes kept for repair per group (payloads + 64 B per message). Beyond it the oldest
    /// messages go: repair of a fast sender reaches back this far.
    pub group_budget_bytes: usize,
    /// Bytes kept for repair per shard, all groups together.
    pub shard_budget_bytes: usize,
    /// A missing message is requested again after this long (ms) without an answer.
    pub rerequest_after_ms: u64,
    /// Flow control of bimodal groups: messages a sender keeps in flight beyond the slowest
    /// member it serves (a publisher beyond it sees its ring fill); keep its datagrams well
    /// within `net.socket_buffer_bytes`. 0: off.
    pub flow_window: u64,
    /// A member that holds a sender back this long (ms) while stalled, or while consuming
    /// at less than half the rate of the fastest other member, is dropped from its window
    /// (it gets repair, then Lost).
    pub flow_slow_after_ms: u64,
    /// A receiver reports its progress to a sender at least this often (µs) while it
    /// progresses (and after a quarter window at once).
    pub flow_status_interval_us: u64,
    /// How long a group stays joined after its last local member left (ms), so that what
    /// was published here last can still be repaired from here.
    pub linger_ms: u64,
    /// Where the incarnation counter and the largest view counter are kept (both must grow
    /// across restarts, even if the clock steps back; see `Cluster::keep_view_counter`).
    /// Unset: `$STATE_DIRECTORY` (systemd's `StateDirectory=`), else the control socket's
    /// directory.
    pub state_dir: Option<PathBuf>,
    /// The cluster key (made by `tutti keygen`, mode 0600): every datagram is then sealed
    /// with an AEAD tag and only authentic ones are read. Unset: no authentication, and
    /// anyone who can reach the UDP ports is a member (see docs/security.md).
    pub key_file: Option<PathBuf>,
    /// A second key accepted (never sent with) while a key rotation is under way.
    pub key_file_next: Option<PathBuf>,
    /// Encrypt datagram bodies too (needs `key_file`). Off: authentic but readable on the
    /// wire. Costs a little more CPU per datagram.
    pub encrypt: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        let s = Settings::default();
        ClusterConfig {
            enabled: false,
            seeds: Vec::new(),
            gossip_period_ms: s.gossip_period / MILLIS,
            gossip_fanout: s.gossip_fanout,
            tree_fanout: s.tree_fanout,
            retention_rounds: s.retention_rounds,
            retransmit_budget_bytes: s.retransmit_budget_bytes,
            suspect_timeout_ms: s.suspect_timeout / MILLIS,
            delivery: "fifo".into(),
            cpg_partition: "evs".into(),
            evs_delivery: "agreed".into(),
            group_budget_bytes: s.group_budget_bytes,
            shard_budget_bytes: s.node_budget_bytes,
            rerequest_after_ms: s.rerequest_after / MILLIS,
            flow_window: s.flow_window,
            flow_slow_after_ms: s.flow_slow_after / MILLIS,
            flow_status_interval_us: s.flow_status_interval / 1_000,
            linger_ms: s.linger / MILLIS,
            state_dir: None,
            key_file: None,
            key_file_next: None,
            encrypt: false,
        }
    }
}

/// A seed daemon, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    /// Its daemon id, when given (`ID@HOST`); else learned from its first datagram.
    pub daemon: Option<u32>,
    /// An IP address or a host name.
    pub host: String,
    pub base_port: Option<u16>,
}

impl Seed {
    /// The UDP address of the seed's shard `shard`: its IP address, or the first address
    /// the host name resolves to.
    pub fn resolve(&self, default_port: u16, shard: usize) -> Result<SocketAddr, String> {
        let port = self
            .base_port
            .unwrap_or(default_port)
            .checked_add(shard as u16)
            .ok_or_else(|| format!("cluster.seeds: {}: port + shard {shard} exceeds 65535", self.host))?;
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        use std::net::ToSocketAddrs;
        (self.host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| format!("cluster.seeds: cannot resolve {:?}: {e}", self.host))?
            .next()
            .ok_or_else(|| format!("cluster.seeds: {:?} resolves to no address", self.host))
    }
}

impl ClusterConfig {
    /// Parses `[ID@]HOST[:BASE_PORT]` (names are not resolved here).
    pub fn parse_seed(s: &str) -> Result<Seed, String> {
        let bad = || {
            format!("cluster.seeds: {s:?} is not \"HOST\", \"HOST:BASE_PORT\", \"ID@HOST\" or \"ID@HOST:BASE_PORT\"")
        };
        let (daemon, addr) = match s.split_once('@') {
            Some((id, addr)) => {
                let daemon: u32 = id.parse().map_err(|_| bad())?;
                if daemon == 0 || daemon > MAX_DAEMON_ID {
                    return Err(format!(
                        "cluster.seeds: {s:?}: daemon id {daemon} is not from 1 to {MAX_DAEMON_ID}"
                    ));
                }
                (Some(daemon), addr)
            }
            None => (None, s),
        };
        let seed = |host: String, base_port| {
            Ok(Seed {
                daemon,
                host,
                base_port,
            })
        };
        if let Ok(ip) = addr.parse::<IpAddr>() {
            return seed(ip.to_string(), None);
        }
        if let Ok(sa) = addr.parse::<SocketAddr>() {
            return seed(sa.ip().to_string(), Some(sa.port()));
        }
        if let Some(v6) = addr.strip_prefix('[').and_then(|a| a.strip_suffix(']')) {
            let ip: std::net::Ipv6Addr = v6.parse().map_err(|_| bad())?;
            return seed(ip.to_string(), None);
        }
        let (host, port) = match addr.rsplit_once(':') {
            Some((host, port)) => (host, Some(port.parse::<u16>().map_err(|_| bad())?)),
            None => (addr, None),
        };
        // A DNS name: letters, digits, '-' and '.', at most 253 bytes.
        let name_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            && !host.starts_with(['-', '.']);
        if !name_ok {
            return Err(bad());
        }
        seed(host.to_string(), port)
    }

    pub fn validate(&self) -> Result<(), String> {
        let mut address_only = 0;
        for s in &self.seeds {
            address_only += usize::from(Self::parse_seed(s)?.daemon.is_none());
        }
        if address_only > MAX_ADDRESS_SEEDS {
            return Err(format!(
                "cluster.seeds: {address_only} seeds without a daemon id, at most {MAX_ADDRESS_SEEDS}"
            ));
        }
        if self.gossip_period_ms == 0 || self.gossip_fanout == 0 || self.tree_fanout == 0 {
            return Err("cluster: gossip_period_ms, gossip_fanout and tree_fanout must be at least 1".into());
        }
        if self.retention_rounds == 0 || self.suspect_timeout_ms == 0 || self.rerequest_after_ms == 0 {
            return Err(
                "cluster: retention_rounds, suspect_timeout_ms and rerequest_after_ms must be at least 1"
                    .into(),
            );
        }
        if self.group_budget_bytes < 1 << 20 || self.shard_budget_bytes < self.group_budget_bytes {
            return Err(format!(
                "cluster: group_budget_bytes = {} must be at least 1 MiB and shard_budget_bytes = {} at least as large",
                self.group_budget_bytes, self.shard_budget_bytes
            ));
        }
        self.delivery_mode()?;
        self.cpg_evs()?;
        self.evs_agreed()?;
        if self.key_file.is_none() && (self.key_file_next.is_some() || self.encrypt) {
            return Err("cluster: key_file_next and encrypt need cluster.key_file".into());
        }
        Ok(())
    }

    /// Reads the cluster keys (None without `key_file`), checking each file's permissions
    /// and format; the error names the file and the fix.
    pub fn load_keys(&self) -> Result<Option<AuthKeys>, String> {
        let Some(path) = &self.key_file else {
            return Ok(None);
        };
        let primary = ClusterKey::load(path).map_err(|e| e.to_string())?;
        let next = match &self.key_file_next {
            Some(p) => {
                let next = ClusterKey::load(p).map_err(|e| e.to_string())?;
                if next.bytes_eq(&primary) {
                    None
                } else if same_key_id(&primary, &next) {
                    return Err(format!(
                        "cluster.key_file_next {}: this key's one-byte id equals the primary key's (1 chance in 256), so \
                         datagrams sealed with it could not be told apart: make another with `tutti keygen`",
                        p.display()
                    ));
                } else {
                    Some(next)
                }
            }
            None => None,
        };
        Ok(Some(AuthKeys {
            primary,
            next,
            encrypt: self.encrypt,
        }))
    }

    /// Whether cpg groups run under `evs` (`cpg_partition`).
    pub fn cpg_evs(&self) -> Result<bool, String> {
        match self.cpg_partition.as_str() {
            "majority" => Ok(false),
            "evs" => Ok(true),
            other => Err(format!(
                "cluster.cpg_partition = {other:?}: expected \"majority\" or \"evs\""
            )),
        }
    }

    /// Whether `evs` groups deliver in agreed order (`evs_delivery`).
    pub fn evs_agreed(&self) -> Result<bool, String> {
        match self.evs_delivery.as_str() {
            "agreed" => Ok(true),
            "safe" => Ok(false),
            other => Err(format!(
                "cluster.evs_delivery = {other:?}: expected \"agreed\" or \"safe\""
            )),
        }
    }

    fn delivery_mode(&self) -> Result<Delivery, String> {
        match self.delivery.as_str() {
            "fifo" => Ok(Delivery::Fifo),
            "unordered" => Ok(Delivery::Unordered),
            other => Err(format!(
                "cluster.delivery = {other:?}: expected \"fifo\" or \"unordered\""
            )),
        }
    }

    fn settings(&self, max_datagram: usize, max_message: usize) -> Result<Settings, String> {
        Ok(Settings {
            gossip_period: self.gossip_period_ms * MILLIS,
            gossip_fanout: self.gossip_fanout,
            tree_fanout: self.tree_fanout,
            retention_rounds: self.retention_rounds,
            retransmit_budget_bytes: self.retransmit_budget_bytes,
            suspect_timeout: self.suspect_timeout_ms * MILLIS,
            group_budget_bytes: self.group_budget_bytes,
            node_budget_bytes: self.shard_budget_bytes,
            rerequest_after: self.rerequest_after_ms * MILLIS,
            flow_window: self.flow_window,
            flow_slow_after: self.flow_slow_after_ms * MILLIS,
            flow_status_interval: self.flow_status_interval_us.max(1) * 1_000,
            linger: self.linger_ms * MILLIS,
            max_datagram,
            max_message,
            delivery: self.delivery_mode()?,
            ..Settings::default()
        })
    }

    /// The directory of the incarnation counter (see `state_dir`).
    pub fn state_dir(&self, socket: &Path) -> PathBuf {
        if let Some(d) = &self.state_dir {
            return d.clone();
        }
        if let Some(d) = std::env::var_os("STATE_DIRECTORY").and_then(|v| {
            v.to_str()
                .and_then(|s| s.split(':').next())
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        }) {
            return d;
        }
        socket
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    }
}

/// This start's incarnation: larger than every earlier start's of this daemon id (kept in
/// `dir/incarnation-ID`, written before the daemon joins), and at least the deciseconds
/// since 2025 so that a lost state file still yields a newer one (unless the clock also
/// stepped back). A member's incarnation orders its restarts (a newer one replaces the
/// older in every table); stream identity does not depend on it (see `tutti_proto`).
pub fn incarnation(dir: &Path, daemon: u32) -> u32 {
    let clock = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| (d.as_millis() / 100).saturating_sub(17_356_896_000) as u32)
        .max(1);
    let path = dir.join(format!("incarnation-{daemon}"));
    let previous: Option<u32> = read_kept(&path);
    let next = match previous {
        Some(p) => clock.max(p.saturating_add(1)),
        None => clock,
    };
    let tmp = dir.join(format!(".incarnation-{daemon}.tmp"));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            writeln!(f, "{next}")?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        tracing::warn!(
            path = %path.display(),
            "cannot keep the incarnation counter ({e}): using the clock's, which repeats if the clock steps back"
        );
    }
    next
}

/// A number an earlier start kept in `path` (the incarnation, the view counter); `None` if
/// there is none or it does not parse.
pub fn read_kept<T: std::str::FromStr>(path: &Path) -> Option<T> {
    let mut s = String::new();
    std::fs::File::open(path).ok()?.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

/// Writes `counter` to `path` (through a temporary file and a rename, so that a crash
/// leaves the old value or the new one). No `fsync`: the value must outlive the process
/// (`kill -9`), which the page cache gives; a host crash may lose the last few.
pub fn write_view_counter(path: &Path, counter: u64) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::File::create(&tmp).and_then(|mut f| writeln!(f, "{counter}"))?;
    std::fs::rename(&tmp, path)
}

/// The daemon id of a daemon started without one (`node_id` unset or 0), and how it was
/// found, for the log. A specific IPv4 `listen` address gives its low 24 bits (unique
/// among daemons whose addresses share the first byte, e.g. all in 10.0.0.0/8, and the
/// same after every restart); an unspecified or IPv6 address, or one whose low 24 bits are
/// 0, gives a random id kept in `state_dir/node-id` (made once, then read at every start).
/// Either way two daemons that still end up with one id are refused by their peers, which
/// name both addresses (see [`Cluster`]).
pub fn derive_daemon_id(listen: IpAddr, state_dir: &Path) -> Result<(u32, String), String> {
    if let IpAddr::V4(v4) = listen {
        let low = u32::from(v4) & MAX_DAEMON_ID;
        if !v4.is_unspecified() && low != 0 {
            return Ok((low, format!("the low 24 bits of listen address {v4}")));
        }
    }
    let path = state_dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            return match text.trim().parse::<u32>() {
                Ok(id) if (1..=MAX_DAEMON_ID).contains(&id) => Ok((id, format!("kept in {}", path.display()))),
                _ => Err(format!(
                    "{}: {:?} is not a daemon id from 1 to {MAX_DAEMON_ID}: fix or remove it, or set --node-id",
                    path.display(),
                    text.trim()
                )),
            };
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read {}: {e}; set --node-id", path.display())),
    }
    let id = (os_random() % u64::from(MAX_DAEMON_ID)) as u32 + 1;
    let tmp = state_dir.join(format!(".{NODE_ID_FILE}.tmp"));
    std::fs::create_dir_all(state_dir)
        .and_then(|()| std::fs::File::create(&tmp))
        .and_then(|mut f| {
            writeln!(f, "{id}")?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| {
            format!(
                "cannot keep a random daemon id in {} ({e}): a daemon listening on {listen} needs --node-id or a writable cluster.state_dir",
                path.display()
            )
        })?;
    Ok((id, format!("random, kept in {}", path.display())))
}

/// 64 bits from the OS, to seed a node's RNG (its stream ids must differ across restarts).
fn os_random() -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        return (t as u64) ^ (u64::from(std::process::id()) << 32);
    }
    u64::from_le_bytes(b)
}

/// The sender id a local log records for `session` on the daemon of cluster node `node`
/// (`daemon << 32 | session`, as a local publisher's).
pub(crate) fn sender_id(node: NodeId, session: u32) -> u64 {
    (u64::from(node >> 8) << 32) | u64::from(session)
}

/// The log's code of a removal reason (`tutti_wire::shm::LeftReason`).
fn reason_code(reason: RemoveReason) -> u32 {
    match reason {
        RemoveReason::Left => 1,
        RemoveReason::Suspected => 2,
        RemoveReason::Lagging => 3,
        // Only `evs` groups remove a member for a partition, and tuttid serves none yet
        // (`tutti_wire::shm::LeftReason` has no code for it): logged as suspected.
        RemoveReason::Partitioned => 2,
    }
}

/// The cluster node id of shard `shard` of daemon `daemon`.
pub fn node_id(daemon: u32, shard: usize) -> NodeId {
    (daemon << 8) | shard as u32
}

/// What a shard learns from the cluster.
pub enum ClusterEvent<'a> {
    /// A message published on another daemon: append it to the group's log (its sender
    /// there is [`sender_id`] of the delivery's node and session). By reference: the shard
    /// reads the fields where the node wrote them. Copied into the event, the payload's
    /// pointer and length were read back as one 16-byte load from two 8-byte stores, which
    /// the store buffer cannot forward: it waited for every older store to reach the cache
    /// (`perf annotate`: ~25% of a receiving daemon's samples on that load).
    Deliver(&'a Delivered<'a>),
    /// Messages of a remote sender that can no longer be repaired.
    Lost { group: u64, sender: u64, count: u64 },
    /// A message of an ordered group, in its total order (local ones included).
    OrderedDeliver {
        group: u64,
        sender: u64,
        payload: &'a [u8],
    },
    /// An ordered group's view changed here in its order: `id` (the list position of the
    /// entry that changed it: the same at every member), members and who joined or left
    /// (cluster node ids; the reason a `LeftReason` code).
    OrderedView {
        group: u64,
        id: u64,
        members: &'a [u32],
        joined: &'a [u32],
        left: &'a [(u32, u32)],
    },
    /// A joiner needs the application's state of `group` at `position`: answer with
    /// [`Cluster::snapshot_ready`] (the group delivers nothing more until then).
    SnapshotRequest { group: u64, position: u64 },
    /// This daemon, joining, installed the snapshot made at `position`.
    Installed {
        group: u64,
        position: u64,
        snapshot: &'a [u8],
    },
    /// This daemon's standing in an ordered group: "majority", "minority" or
    /// "removed (REASON)".
    OrderedStatus { group: u64, status: &'static str },
}

/// What became of a bimodal group's message given to [`Cluster::submit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submit {
    /// Multicast (and handed to the local log through `local`).
    Sent,
    /// Not now: the flow-control window is full. Keep it and retry.
    Held,
    /// Never (not joined, too large): the local log takes it alone.
    NotSent,
}

/// Why an ordered group did not take a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderedRefusal {
    /// Not now (queue full, or not an active member yet or any more): keep it and retry.
    Full,
    /// Never (over the group's `max_payload`).
    TooLarge,
}

/// `evs` groups whose transitional configuration's `left` waits for the regular one.
const MAX_EVS_LEFT: usize = 4096;

/// Bytes the daemon puts before an ordered message's payload: the publishing session, so
/// that the sender id in every member's log is `daemon << 32 | session` as in bimodal
/// groups (the ordered layer names only the node).
pub const ORDERED_PREFIX: usize = 4;

/// Longest an ordered group left by its last local client stays joined while its queued
/// messages go into the order.
pub const ORDERED_LINGER: Time = 5_000 * MILLIS;

/// The ordered-group settings of every daemon (members must agree on the layout).
pub fn ordered_settings() -> OrderedSettings {
    OrderedSettings::default()
}

/// The settings of an ordered group under partition policy `evs` (`GroupOptions::evs`, and
/// every cpg group) or `majority`.
///
/// Under `evs` no member is removed for lagging (the ordering layer's rule for `evs` lists):
/// a member removed from its list would stay out until the cluster view changes (a new list
/// epoch), and a crashed or cut-off one is already taken out by the view. A slow member
/// slows its configuration instead, as a slow node slows Corosync's ring (seen: a loaded
/// debug build had two of three daemons removed for lagging under CPG's 1 MiB messages,
/// and the group stopped for them).
///
/// Under `evs` the founder of a new list epoch (one per cluster view change) waits for
/// every daemon of its side as long as `membership`'s failure detector waits before it
/// suspects one (`suspect_timeout`), not the ordering layer's 200 ms: at 200 ms a live
/// daemon off its CPU for a moment (a loaded debug build) was left out of the new
/// configuration, its processes reported `NODEDOWN` and, when its join came, `NODEUP`
/// (docs/cpg.md, "A stalled daemon taken for down"). A daemon that crashed is out of the
/// view after longer than that (probes, then the suspicion timeout), and until then it
/// would hold the delivery of an installed configuration just as long: no crash is seen
/// later than before.
pub fn group_settings(evs: bool, agreed: bool, membership: &Settings) -> OrderedSettings {
    let base = ordered_settings();
    if !evs {
        return base;
    }
    OrderedSettings {
        partition: PartitionPolicy::Evs,
        gather_timeout: base.gather_timeout.max(membership.suspect_timeout),
        evs_agreed: agreed,
        ..base
    }
}

/// Largest message a client may publish to an ordered group.
pub fn ordered_max_message() -> usize {
    (ordered_settings().max_payload as usize).saturating_sub(ORDERED_PREFIX)
}

/// Counters the shard copies into its shared-memory page.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClusterStats {
    pub evicted_budget: u64,
    pub gap_requests: u64,
    pub tail_requests: u64,
    pub partials_dropped: u64,
    pub bad_fragments: u64,
    pub retained_bytes: u64,
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub unknown_peer: u64,
    pub decode_errors: u64,
    pub retransmits: u64,
    pub gossip_rounds: u64,
    pub lost: u64,
    pub view_changes: u64,
    pub view_members: u64,
    pub remote_delivered: u64,
    pub not_sent: u64,
    pub fault_dropped: u64,
    pub window_overflow: u64,
    /// Datagrams dropped because another address claims the same daemon id.
    pub duplicate_ids: u64,
    pub auth_failed: u64,
    pub replayed: u64,
    pub auth_senders_full: u64,
    /// Protocol claims refused as implausible (see `tutti_proto::Counters::refused`).
    pub protocol_refused: u64,
    /// Flow control: statuses sent as a receiver; members dropped from a window as slow.
    pub flow_statuses: u64,
    pub flow_slow_members: u64,
}

/// What the driver knows of a node's whereabouts.
struct PeerAddr {
    addr: SocketAddr,
    /// Its incarnation as last heard (0: not heard yet, only configured).
    incarnation: u32,
    /// When this incarnation was first heard.
    since: Option<Time>,
    last_heard: Option<Time>,
}

/// A seed given by address only, and what answered from there.
struct SeedProbe {
    /// As configured, for the log and `tutti status`.
    text: String,
    addr: SocketAddr,
    /// The node that answered from `addr` (this node itself, when the seed is us).
    answered: Option<NodeId>,
}

/// Two addresses seen claiming one node id.
struct Duplicate {
    node: NodeId,
    kept: SocketAddr,
    refused: SocketAddr,
    dropped: u64,
    /// When a datagram was last refused, and last logged.
    last: Time,
    logged_at: Time,
}

/// CPG's totem ring: the cluster view's counter and its daemon ids, sorted.
pub type Ring = (u64, Arc<[u32]>);

/// Most duplicate-id records kept for `tutti status` (the counter counts them all).
const MAX_DUPLICATES_SHOWN: usize = 16;

pub struct Cluster {
    node: Node,
    udp: Box<dyn Transport>,
    epoch: Instant,
    shard: usize,
    base_port: u16,
    peers: FxMap<NodeId, PeerAddr>,
    /// Indexed by placeholder node id (`0..MAX_ADDRESS_SEEDS`, daemon 0).
    probes: Vec<SeedProbe>,
    duplicates: Vec<Duplicate>,
    next_timer: Time,
    /// The last poll only handed out what was ready (see `poll`): this one does the rest.
    delivered_early: bool,
    /// `ring()` of the last view asked about.
    ring: Option<Ring>,
    /// The view counter `ring` was last checked against.
    ring_checked: Option<u64>,
    /// `evs` groups: who the last transitional configuration left out, until the regular
    /// one that follows (at most `MAX_EVS_LEFT` groups).
    evs_left: HashMap<u64, Vec<(NodeId, RemoveReason)>>,
    stats: ClusterStats,
    view_summary: String,
    /// Reused buffer of `submit_ordered` (the session prefix and the payload).
    ordered_scratch: Vec<u8>,
    /// Ordered groups joined locally while this node was alone in its view (see
    /// `join_ordered`).
    /// With each: whether it runs under `evs`.
    pending_ordered: Vec<(u64, bool)>,
    /// Seeds given with a daemon id other than ours.
    has_other_seeds: bool,
    /// Cpg groups run under `evs` (`ClusterConfig::cpg_partition`).
    cpg_evs: bool,
    /// `evs` groups deliver in agreed order (`cluster.evs_delivery`).
    evs_agreed: bool,
    /// Ordered groups left locally, waiting for their queued messages: (group, deadline).
    leaving_ordered: Vec<(u64, Time)>,
    /// Where this node's largest installed view counter is kept, and the value written
    /// last (`keep_view_counter`).
    view_counter_file: Option<(PathBuf, u64)>,
}

impl Cluster {
    /// Keeps this node's largest installed view counter in `dir/view-counter-NODE` across
    /// restarts: the node numbers its views past the one its earlier incarnation kept
    /// there (`Node::set_view_counter_floor`), so that an `evs` list epoch it founds never
    /// takes the name, and the memory node, of one an earlier incarnation founded (a
    /// daemon that restarts alone starts its view counter again). Written at each view
    /// change (the file and a rename; view changes are membership events, not per message).
    pub fn keep_view_counter(&mut self, dir: &Path) {
        let path = dir.join(format!("view-counter-{}", self.node.id()));
        let floor = read_kept(&path).unwrap_or(0);
        self.node.set_view_counter_floor(floor);
        tracing::debug!(path = %path.display(), floor, "view counter kept");
        self.view_counter_file = Some((path, floor));
    }

    /// Writes the installed view's counter if it passed the one kept (see above).
    fn save_view_counter(&mut self, counter: u64) {
        let Some((path, kept)) = self.view_counter_file.as_mut() else {
            return;
        };
        if counter <= *kept {
            return;
        }
        match write_view_counter(path, counter) {
            Ok(()) => *kept = counter,
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot keep the view counter ({e}); not trying again");
                self.view_counter_file = None;
            }
        }
    }

    pub fn open(
        cfg: &ClusterConfig,
        net_cfg: &NetConfig,
        daemon: u32,
        shard: usize,
        max_message: usize,
        incarnation: u32,
        keys: Option<&AuthKeys>,
    ) -> Result<Cluster, String> {
        let me = node_id(daemon, shard);
        // With a key, every datagram carries a trailer: the protocol gets that much less.
        let (max_datagram, auth) = match keys {
            Some(keys) => {
                let max = net_cfg.max_datagram.checked_sub(TRAILER_LEN).ok_or_else(|| {
                    format!(
                        "net.max_datagram = {}: too small for the {TRAILER_LEN}-byte authentication trailer",
                        net_cfg.max_datagram
                    )
                })?;
                let setup = AuthSetup {
                    keys: keys.clone(),
                    node: me,
                    incarnation,
                };
                (max, Some(setup))
            }
            None => (net_cfg.max_datagram, None),
        };
        let settings = cfg.settings(max_datagram, max_message)?;
        let udp =
            net::open_with(net_cfg, shard, auth.as_ref()).map_err(|e| format!("shard {shard} UDP: {e}"))?;
        let local = udp.local_addr();
        let mut peers = FxMap::default();
        let mut probes = Vec::new();
        let mut seed_ids = Vec::new();
        for s in &cfg.seeds {
            let seed = ClusterConfig::parse_seed(s)?;
            let addr = seed.resolve(net_cfg.base_port, shard)?;
            match seed.daemon {
                Some(d) => {
                    let id = node_id(d, shard);
                    if id != me {
                        peers.insert(
                            id,
                            PeerAddr {
                                addr,
                                incarnation: 0,
                                since: None,
                                last_heard: None,
                            },
                        );
                        seed_ids.push(id);
                    }
                }
                None => {
                    let placeholder = probes.len() as NodeId;
                    probes.push(SeedProbe {
                        text: s.clone(),
                        addr,
                        // Our own address among the seeds (one seed list for every daemon).
                        answered: (addr == local).then_some(me),
                    });
                    seed_ids.push(placeholder);
                }
            }
        }
        let epoch = Instant::now();
        let mut node = Node::new(me, incarnation, &seed_ids, settings, 0, os_random());
        // Our own address, for the views we coordinate (bound to 0.0.0.0: the others
        // learn it from our datagrams).
        node.set_address(me, view_addr(local));
        tracing::info!(
            shard,
            node = me,
            incarnation,
            addr = %local,
            backend = udp.backend(),
            seeds = ?cfg.seeds,
            auth = match keys {
                None => "none",
                Some(k) if k.encrypt => "key, encrypted",
                Some(_) => "key, authenticated",
            },
            "cluster node started"
        );
        Ok(Cluster {
            node,
            udp,
            epoch,
            shard,
            base_port: net_cfg.base_port,
            peers,
            probes,
            duplicates: Vec::new(),
            next_timer: 0,
            delivered_early: false,
            ring: None,
            ring_checked: None,
            evs_left: HashMap::new(),
            stats: ClusterStats::default(),
            view_summary: String::from("view: just me"),
            ordered_scratch: Vec::new(),
            pending_ordered: Vec::new(),
            has_other_seeds: seed_ids.iter().any(|&id| id >> 8 != 0),
            cpg_evs: cfg.cpg_evs()?,
            evs_agreed: cfg.evs_agreed()?,
            leaving_ordered: Vec::new(),
            view_counter_file: None,
        })
    }

    /// The node's clock (nanoseconds since the cluster opened).
    #[inline]
    pub fn now(&self) -> Time {
        self.epoch.elapsed().as_nanos() as Time
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.udp.local_addr()
    }

    pub fn stats(&self) -> ClusterStats {
        let mut s = self.stats;
        let c = self.node.counters();
        s.decode_errors = c.decode_errors + self.stats.decode_errors;
        s.retransmits = c.retransmits_sent;
        s.gossip_rounds = u64::from(self.node.round());
        s.lost = c.lost_reported;
        s.window_overflow = c.window_overflow;
        s.evicted_budget = c.evicted_budget;
        s.flow_statuses = c.flow_statuses_sent;
        s.flow_slow_members = c.flow_slow_members;
        s.gap_requests = c.gap_requests_sent;
        s.tail_requests = c.tail_requests;
        s.partials_dropped = c.partials_dropped_budget;
        s.bad_fragments = c.bad_fragments;
        s.retained_bytes = self.node.retained_bytes() as u64;
        s.not_sent += c.transmits_dropped;
        let n = self.udp.stats();
        s.datagrams_in = n.received;
        s.datagrams_out = n.sent;
        s.fault_dropped =
            n.fault.lost_out + n.fault.lost_in + n.fault.partitioned_in + n.fault.partitioned_out;
        s.auth_failed = n.auth.auth_failed;
        s.replayed = n.auth.replayed;
        s.auth_senders_full = n.auth.senders_full;
        s.protocol_refused = c.refused();
        s
    }

    pub fn view_summary(&self) -> &str {
        &self.view_summary
    }

    /// For `tutti status`: each member of the view with its address, incarnation, age
    /// (since this incarnation was first heard) and when it was last heard; then seeds
    /// that have not answered and duplicate daemon ids seen. Lines indented by `indent`.
    pub fn members_text(&self, indent: &str) -> String {
        use std::fmt::Write as _;
        let now = self.now();
        let ago =
            |t: Option<Time>| t.map_or_else(|| "never".to_string(), |t| duration(now.saturating_sub(t)));
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{indent}{:<8} {:<24} {:>11} {:>9} {:>10}",
            "daemon", "address", "incarnation", "age", "heard"
        );
        for m in &self.node.view().members {
            let (addr, since, heard) = if m.node == self.node.id() {
                (
                    format!("{} (this)", self.udp.local_addr()),
                    Some(0),
                    "-".to_string(),
                )
            } else {
                match self.peers.get(&m.node) {
                    Some(p) => (p.addr.to_string(), p.since, format!("{} ago", ago(p.last_heard))),
                    None => ("unknown".to_string(), None, "never".to_string()),
                }
            };
            let age = if m.node == self.node.id() {
                duration(now)
            } else {
                ago(since)
            };
            let _ = writeln!(
                out,
                "{indent}{:<8} {addr:<24} {:>11} {age:>9} {heard:>10}",
                m.node >> 8,
                m.incarnation
            );
        }
        for p in self.probes.iter().filter(|p| p.answered.is_none()) {
            let _ = writeln!(out, "{indent}seed {} ({}): no answer yet", p.text, p.addr);
        }
        for d in &self.duplicates {
            let _ = writeln!(
                out,
                "{indent}DUPLICATE daemon id {}: claimed by {} and {}; {} datagrams from {} refused, last {} ago",
                d.node >> 8,
                d.kept,
                d.refused,
                d.dropped,
                d.refused,
                duration(now.saturating_sub(d.last))
            );
        }
        out
    }

    /// Joins ordered group `group` (state transfer follows if it already has members).
    /// A daemon with seeds joins only once its cluster view holds another daemon: the
    /// group's memory node is placed from the view at the join, and a daemon alone in its
    /// own first view would place it on itself and start a second order of the group.
    ///
    /// `Ok(true)`: the daemon is still in the group's order (joined again while its leave
    /// waited to drain): no view follows, the caller's last one holds. A join while the
    /// leave is already in the order waits until that leave is through, then joins afresh
    /// (the ordered layer refuses a second member of one group on one node).
    ///
    /// `evs`: the group runs under partition policy `evs` (each side of a partition goes on;
    /// no state transfer: docs/ordered.md).
    pub fn join_ordered(&mut self, group: u64, evs: bool) -> Result<bool, String> {
        if let Some(i) = self.leaving_ordered.iter().position(|&(g, _)| g == group) {
            self.leaving_ordered.swap_remove(i);
            // Joined again while its leave waited: still a member, and no view follows
            // (the caller's last one holds); unless the group removed this daemon meanwhile
            // (suspected across a partition): then it joins as a new member (before, the
            // join did nothing and its clients waited forever: tests/ordered_partition.rs).
            if !self.removed_from_ordered(group) {
                return Ok(true);
            }
        }
        let still_in = self.node.is_ordered(group) && !self.removed_from_ordered(group);
        if self.alone() || still_in {
            if !self.pending_ordered.iter().any(|&(g, _)| g == group) {
                self.pending_ordered.push((group, evs));
            }
            return Ok(false);
        }
        let now = self.now();
        self.node
            .join_ordered(
                now,
                group,
                group_settings(evs, self.evs_agreed, self.node.settings()),
            )
            .map(|()| false)
            .map_err(|e| e.to_string())
    }

    /// Whether cpg groups run under `evs` (`cluster.cpg_partition`).
    pub fn cpg_evs(&self) -> bool {
        self.cpg_evs
    }

    /// The daemons' ring for CPG's totem view: the cluster view's counter and the daemon
    /// ids in it (sorted, each once). Built once per view and shared (an `Arc`): the shard
    /// asks on every poll, which must not allocate.
    ///
    /// A new ring only when the daemons change: a view that changed only group lists (an
    /// `evs` group's directory, a multicast group) is no totem change for CPG programs
    /// (before, every `evs` join showed them a new ring, and a program waiting for its
    /// join's confchg found a ring record instead).
    pub fn ring(&mut self) -> Ring {
        let view = self.node.view();
        if self.ring_checked != Some(view.id.counter) {
            self.ring_checked = Some(view.id.counter);
            let mut daemons: Vec<u32> = view.members.iter().map(|m| m.node >> 8).collect();
            daemons.sort_unstable();
            daemons.dedup();
            if self.ring.as_ref().is_none_or(|r| r.1[..] != daemons[..]) {
                self.ring = Some((view.id.counter, daemons.into()));
            }
        }
        self.ring.clone().unwrap_or_default()
    }

    /// Whether an entry of ordered group `group` removed this daemon's member.
    fn removed_from_ordered(&self, group: u64) -> bool {
        self.node
            .ordered_member(group)
            .is_some_and(|m| m.status() == OrderedMemberStatus::Removed)
    }

    /// Whether this node waits for a cluster view with another daemon in it: it has seeds
    /// other than itself and its view holds only itself.
    fn alone(&self) -> bool {
        let me = self.node.id();
        let others = self.has_other_seeds || self.probes.iter().any(|p| p.answered != Some(me));
        others && self.node.view().members.len() < 2
    }

    /// Leaves ordered group `group` (an entry in its order), once what local clients
    /// published to it is in the order (or after [`ORDERED_LINGER`]): a publisher that
    /// exits right after its last offer still reaches every member.
    pub fn leave_ordered(&mut self, group: u64) {
        if let Some(i) = self.pending_ordered.iter().position(|&(g, _)| g == group) {
            self.pending_ordered.swap_remove(i);
            return;
        }
        let deadline = self.now() + ORDERED_LINGER;
        self.leaving_ordered.push((group, deadline));
        self.leave_drained_ordered();
    }

    /// Leaves the ordered groups whose local messages are all in the order (or that
    /// waited [`ORDERED_LINGER`]).
    fn leave_drained_ordered(&mut self) {
        if self.leaving_ordered.is_empty() {
            return;
        }
        let now = self.now();
        let node = &mut self.node;
        self.leaving_ordered.retain(|&(group, deadline)| {
            // A removed member's queued messages can never enter the order: nothing to
            // wait for.
            let drained = node.ordered_member(group).is_none_or(|m| {
                m.status() == OrderedMemberStatus::Removed || (m.outgoing() == 0 && m.idle())
            }) && node
                .evs_member(group)
                .is_none_or(|m| m.idle() && m.current().is_none_or(|c| c.outgoing() == 0));
            if drained || now >= deadline {
                node.leave_ordered(now, group);
                false
            } else {
                true
            }
        });
    }

    /// Joins the ordered groups that waited for a view with another daemon, or for their
    /// previous member's leave to be through.
    fn join_pending_ordered(&mut self) {
        if self.pending_ordered.is_empty() || self.alone() {
            return;
        }
        let now = self.now();
        let (node, shard) = (&mut self.node, self.shard);
        let membership = node.settings().clone();
        let agreed = self.evs_agreed;
        self.pending_ordered.retain(|&(group, evs)| {
            // Still in the order (its previous member's leave not through yet); a member
            // the group removed is replaced by the join.
            if node
                .ordered_member(group)
                .is_some_and(|m| m.status() != OrderedMemberStatus::Removed)
            {
                return true;
            }
            if let Err(e) = node.join_ordered(now, group, group_settings(evs, agreed, &membership)) {
                tracing::warn!(shard, group = %format!("{group:#x}"), "ordered join: {e}");
            }
            false
        });
    }

    /// Hands a local client's message to ordered group `group`'s total order; it comes
    /// back as `OrderedDeliver` at its place. Reads `payload` once (into the prefixed copy).
    pub fn submit_ordered(
        &mut self,
        group: u64,
        session: u32,
        payload: &[u8],
        safe: bool,
    ) -> Result<(), OrderedRefusal> {
        let now = self.now();
        self.with_session(session, payload, |node, bytes| {
            node.submit_ordered(now, group, bytes, safe)
        })
    }

    /// Hands `session ++ payload` (in the reused `ordered_scratch`) to `submit`, and maps its
    /// refusal: not joined yet (waiting for a view with another daemon), joining, in a
    /// minority or full, the frame waits in the publish ring (back pressure).
    fn with_session(
        &mut self,
        session: u32,
        payload: &[u8],
        submit: impl FnOnce(&mut Node, &[u8]) -> Result<u64, SubmitError>,
    ) -> Result<(), OrderedRefusal> {
        let mut bytes = std::mem::take(&mut self.ordered_scratch);
        bytes.clear();
        bytes.extend_from_slice(&session.to_le_bytes());
        bytes.extend_from_slice(payload);
        let result = submit(&mut self.node, &bytes);
        self.ordered_scratch = bytes;
        match result {
            Ok(_) => Ok(()),
            Err(SubmitError::Full | SubmitError::NotMember(_) | SubmitError::NotJoined(_)) => {
                Err(OrderedRefusal::Full)
            }
            Err(e) => {
                tracing::debug!("ordered submit refused: {e}");
                Err(OrderedRefusal::TooLarge)
            }
        }
    }

    /// As [`Self::submit_ordered`], but the group runs only at [`Self::run_queued_ordered`]
    /// (called once the publish ring's pass is over): the frames of one pass travel in one
    /// batch, and no clock is read per frame.
    pub fn queue_ordered(
        &mut self,
        group: u64,
        session: u32,
        payload: &[u8],
        safe: bool,
    ) -> Result<(), OrderedRefusal> {
        self.with_session(session, payload, |node, bytes| {
            node.queue_ordered(group, bytes, safe)
        })
    }

    /// Runs the ordered groups [`Self::queue_ordered`] took frames for.
    pub fn run_queued_ordered(&mut self) {
        let now = self.now();
        self.node.run_queued_ordered(now);
    }

    /// For `tutti status`: where this daemon places `group`'s memory node, and the ordered
    /// layer's counters of its member (appends, conflicts, batches, repairs, safe waits,
    /// removals, waits).
    pub fn ordered_detail(&self, group: u64) -> Option<String> {
        if let Some(m) = self.node.evs_member(group) {
            let c = m.counters();
            let epoch = m.epoch().map_or_else(|| "none".to_string(), epoch_text);
            let members: Vec<u32> = m.current().map(|c| c.view().1).unwrap_or_default();
            let told = m.current().map(|c| c.counters().clone()).unwrap_or_default();
            return Some(
                format!(
                    "evs: list epoch {epoch}, members {:?}, gathering {}; epochs joined {}, transitional {} \
                 (alone {}), resent {}, unconfirmed {}, progress told {}, heard {} (refused {}, stale {}), \
                 pushes {} (entries {}, refused {}, stale {}); {} delivery, drains {} (timed out {}); \
                 new lists asked {}, ordered pump loops cut {}",
                    members.iter().map(|n| n >> 8).collect::<Vec<_>>(),
                    m.gathering().is_some(),
                    c.epochs_joined,
                    c.transitional,
                    c.transitional_alone,
                    c.resent,
                    c.unconfirmed,
                    told.helds_sent,
                    told.helds_taken,
                    told.helds_refused,
                    c.stale_held,
                    told.pushes,
                    told.entries_pushed,
                    told.pushes_refused,
                    c.stale_committed,
                    if self.evs_agreed { "agreed" } else { "safe" },
                    c.drains,
                    c.drains_timed_out,
                    c.new_sides_asked,
                    self.node.ordered_transport_counters().pump_rounds_capped
                ) + &self
                    .node
                    .epoch_replicas_of(group)
                    .map(|(e, r)| replica_detail(&format!("list epoch {}", epoch_text(e)), r))
                    .collect::<String>(),
            );
        }
        let c = self.node.ordered_counters(group)?;
        // Where this daemon places the group's memory node (daemon ids), so an operator
        // (and a test) knows which daemon's loss is a failover.
        let placement = match self.node.memnode_placement(group) {
            Some(p) => format!(
                "memory node: primary {}, backup {}, epoch {}; ",
                p.primary >> 8,
                p.backup
                    .map_or_else(|| "none".to_string(), |b| (b >> 8).to_string()),
                p.epoch
            ),
            None => "memory node: not placed; ".to_string(),
        };
        Some(format!(
            "{placement}appends {} (committed {}, compare failures {}), batches {} of {} messages, reads {}, \
             entries learned {} (pushed {} in {} pushes, refused {}), repairs {}, safe waits {}, removals (suspected {}, lagging {}, left behind {}), reclaim waits {}, queue waits {}, \
             payloads dropped {}, txn errors {}, transfers sent {}, dormant reads {}, wake-ups {} \
             (limited {}, refused {}), progress told {}, heard {} (refused {}), fairness requests {}, holds {}, \
             progress writes {}, restarts {}",
            c.appends,
            c.appends_committed,
            c.append_conflicts,
            c.batches,
            c.messages_appended,
            c.reads,
            c.entries_learned,
            c.entries_pushed,
            c.pushes,
            c.pushes_refused,
            c.repairs,
            c.safe_waits,
            c.removals_suspected,
            c.removals_lagging,
            c.left_behind,
            c.reclaim_waits,
            c.queue_waits,
            c.payloads_dropped,
            c.txn_errors,
            c.transfers_sent,
            c.dormant_reads,
            c.wakes,
            c.wakes_limited,
            c.wakes_refused,
            c.helds_sent,
            c.helds_taken,
            c.helds_refused,
            c.fairness_requests,
            c.fairness_holds,
            c.publishes,
            c.restarts
        ) + &self.node.memnode_replica(group).map_or_else(String::new, |r| {
            replica_detail(if r.is_primary() { "primary" } else { "backup" }, r)
        }))
    }

    /// The application's snapshot for the last `SnapshotRequest` of `group`.
    pub fn snapshot_ready(&mut self, group: u64, snapshot: &[u8]) {
        let now = self.now();
        self.node.snapshot_ready(now, group, snapshot);
    }

    pub fn join(&mut self, group: u64) {
        let now = self.now();
        self.node.join(now, group);
    }

    /// The last local member left: the node lingers in the group (serving repairs of what
    /// was published here last), then leaves it.
    pub fn leave(&mut self, group: u64) {
        let now = self.now();
        self.node.leave(now, group);
    }

    /// Multicasts a locally published message at time `now` (from [`Cluster::now`], read
    /// once per batch of frames: a clock read per message cost ~2% of the sending shard at
    /// 2 M msg/s). `local` reads the node's copy of its bytes (the one read of `payload`) in
    /// place, from which the local log takes its own: local and remote members get the same
    /// bytes. Without calling `local`: `Held` when the group's flow-control window is full
    /// (the frame stays in the client's ring: retry after the next status arrives), and
    /// `NotSent` when it cannot be multicast at all (counted).
    ///
    /// `past_flow`: submit even when the window is full (never `Held`): for the frames a
    /// client that left or went down had committed, drained once (at most one ring beyond
    /// the window).
    #[inline]
    pub fn submit(
        &mut self,
        now: Time,
        group: u64,
        session: u32,
        payload: &[u8],
        past_flow: bool,
        local: impl FnOnce(&[u8]),
    ) -> Submit {
        let r = if past_flow {
            self.node
                .submit_past_flow_with(now, group, session, payload, |copy| local(copy))
        } else {
            self.node
                .submit_with(now, group, session, payload, |copy| local(copy))
        };
        match r {
            Ok(_) => Submit::Sent,
            Err(SubmitError::Full) => Submit::Held,
            Err(e) => {
                self.stats.not_sent += 1;
                tracing::debug!("not multicast: {e}");
                Submit::NotSent
            }
        }
    }

    /// Receives, runs due timers, sends what the node wants sent and hands its events to
    /// `on_event`; a poll that finds events ready before any I/O hands out only those (the
    /// next one does the rest). Returns how much work it did (0 = idle).
    pub fn poll(&mut self, on_event: &mut dyn FnMut(ClusterEvent<'_>)) -> usize {
        // What the node made deliverable since the last poll without any I/O (a local
        // submit to an `evs` list whose memory node is ours, under agreed delivery) is
        // handed out before anything is sent, and the poll ends there: the shard rings the
        // application's doorbell before the sends, which on loopback run the receivers'
        // network stack and wake-ups inside the system call (50-70 µs on the development
        // guest for a 3-daemon group). The next poll always does the rest (a publisher
        // that keeps its ring full must not hold back sends, receives and timers). Test:
        // tests/cluster_deliver_first.rs.
        if !std::mem::take(&mut self.delivered_early) {
            let mut ready = 0;
            while let Some(event) = self.node.poll_event() {
                ready += 1;
                self.handle_event(event, on_event);
            }
            if ready > 0 {
                self.delivered_early = true;
                return ready;
            }
        }
        // What local publishers handed the node since the last poll goes out first, ahead
        // of the receive and the timers: the send is the next hop of those messages.
        let mut work = self.send_transmits();
        let now = self.now();
        {
            let Cluster {
                node,
                udp,
                peers,
                probes,
                duplicates,
                stats,
                shard,
                ..
            } = self;
            let local = udp.local_addr();
            let (me, my_incarnation) = (node.id(), node.incarnation());
            let received = udp
                .recv(RECV_BUDGET, &mut |from, bytes| {
                    let Some((sender, incarnation)) = peek_sender(bytes) else {
                        stats.decode_errors += 1;
                        return;
                    };
                    if sender >> 8 == 0 {
                        // Daemon 0 is never real (placeholder ids are ours alone).
                        stats.decode_errors += 1;
                        return;
                    }
                    for p in probes.iter_mut().filter(|p| p.answered.is_none() && p.addr == from) {
                        p.answered = Some(sender);
                        if sender != me {
                            tracing::info!(shard = *shard, seed = %p.text, %from, daemon = sender >> 8, "seed answered");
                        }
                    }
                    let refused = if sender == me {
                        // Our own datagram, sent to a seed address that is us; else another
                        // daemon with our id. (Bound to 0.0.0.0 we cannot tell our address
                        // from the source, but our incarnation is ours.)
                        let ours = if local.ip().is_unspecified() {
                            incarnation == my_incarnation
                        } else {
                            from == local
                        };
                        (!ours).then_some(local)
                    } else {
                        learn_address(peers, sender, incarnation, from, now)
                    };
                    match refused {
                        None if sender == me => {}
                        None => {
                            // Deliveries go to the log from the node's retention as the
                            // datagram is read (one copy), not through the event queue.
                            node.handle_packet_with(now, sender, bytes, &mut |d| {
                                stats.remote_delivered += 1;
                                on_event(ClusterEvent::Deliver(&d));
                            });
                            // Where we hear it from, for the views we may coordinate.
                            node.set_address(sender, view_addr(from));
                        }
                        Some(kept) => {
                            stats.duplicate_ids += 1;
                            report_duplicate(duplicates, *shard, sender, kept, from, now);
                        }
                    }
                })
                .unwrap_or_else(|e| {
                    tracing::debug!("UDP receive: {e}");
                    0
                });
            work += received;
        }
        // A packet can bring the node's timer forward (a gap opened: the repair timer).
        if let Some(t) = self.node.poll_timeout() {
            self.next_timer = self.next_timer.min(t);
        }
        if now >= self.next_timer {
            self.node.handle_timeout(now);
            self.next_timer = self.node.poll_timeout().unwrap_or(now + 100 * MILLIS);
            work += 1;
        }
        self.join_pending_ordered();
        self.leave_drained_ordered();
        work += self.send_transmits();
        while let Some(event) = self.node.poll_event() {
            work += 1;
            self.handle_event(event, on_event);
        }
        work
    }

    /// Copies each datagram the node lends straight into a transport send slot (the one
    /// copy on the way out: the node encodes into pooled buffers, nothing is allocated).
    fn send_transmits(&mut self) -> usize {
        let mut sent = 0;
        let me = self.node.id();
        let view = self.node.view().clone(); // an Arc: no allocation
        let Cluster {
            node,
            udp,
            probes,
            peers,
            stats,
            ..
        } = self;
        while let Some(t) = node.poll_transmit() {
            // Placeholder ids are those of daemon 0, one per address-only seed.
            let probe = (t.dest >> 8 == 0).then(|| probes.get(t.dest as usize)).flatten();
            let addr = if let Some(probe) = probe {
                // A seed known by address. Once it answered and is in the view (or is us),
                // the node reaches it by its own id; until then its heartbeats go here.
                let done = probe
                    .answered
                    .is_some_and(|n| n == me || view.members.iter().any(|m| m.node == n));
                if done {
                    continue;
                }
                probe.addr
            } else {
                match peers.get(&t.dest) {
                    Some(p) => p.addr,
                    None => {
                        stats.unknown_peer += 1;
                        continue;
                    }
                }
            };
            if udp.queue(addr, t.payload).is_err() {
                // Queue full: push what is queued, then try once more; else drop (gossip repairs).
                let _ = udp.flush();
                if udp.queue(addr, t.payload).is_err() {
                    stats.not_sent += 1;
                }
            }
            sent += 1;
        }
        if sent > 0 {
            if let Err(e) = self.udp.flush() {
                tracing::debug!("UDP send: {e}");
            }
        }
        sent
    }

    fn handle_event(&mut self, event: Event, on_event: &mut dyn FnMut(ClusterEvent<'_>)) {
        match event {
            Event::Deliver {
                group,
                sender,
                stream,
                seq,
                session,
                payload,
            } => {
                self.stats.remote_delivered += 1;
                on_event(ClusterEvent::Deliver(&Delivered {
                    group,
                    sender,
                    stream,
                    seq,
                    session,
                    payload: &payload,
                }));
                self.node.recycle(payload); // appended: the buffer may go back to the pool
            }
            Event::Lost {
                group,
                sender,
                count,
                first,
                ..
            } => {
                tracing::warn!(shard = self.shard, group = %format!("{group:#x}"), sender, first, count, "messages lost (not repairable)");
                on_event(ClusterEvent::Lost {
                    group,
                    // Which session published a lost message is unknown: the daemon's part.
                    sender: sender_id(sender, 0),
                    count,
                });
            }
            Event::ViewChange(view) => {
                learn_view_addresses(&mut self.peers, &view, self.node.id());
                self.save_view_counter(view.id.counter);
                self.stats.view_changes += 1;
                self.stats.view_members = view.members.len() as u64;
                let daemons: Vec<String> = view.members.iter().map(|m| format!("{}", m.node >> 8)).collect();
                self.view_summary = format!(
                    "view {} by daemon {}: {} members [{}]",
                    view.id.counter,
                    view.id.coordinator >> 8,
                    view.members.len(),
                    daemons.join(", ")
                );
                tracing::info!(shard = self.shard, "{}", self.view_summary);
            }
            Event::OrderedDeliver {
                group,
                sender,
                payload,
                ..
            } => {
                // Every ordered message is prefixed with its session (submit_ordered); one
                // without it came from a daemon that breaks the rule: counted, dropped.
                let Some((session, body)) = payload.split_first_chunk::<ORDERED_PREFIX>() else {
                    self.stats.decode_errors += 1;
                    return;
                };
                on_event(ClusterEvent::OrderedDeliver {
                    group,
                    sender: sender_id(sender, u32::from_le_bytes(*session)),
                    payload: body,
                });
                // Copied into the log: the buffer serves the group's next message.
                self.node.recycle_ordered(group, payload);
            }
            Event::OrderedView { group, view } => {
                let joined: Vec<u32> = view.joined.into_iter().collect();
                let left: Vec<(u32, u32)> = view
                    .left
                    .into_iter()
                    .map(|(node, reason)| (node, reason_code(reason)))
                    .collect();
                tracing::info!(
                    shard = self.shard,
                    group = %format!("{group:#x}"),
                    id = view.id,
                    position = view.position,
                    members = ?view.members,
                    ?joined,
                    ?left,
                    "ordered view"
                );
                on_event(ClusterEvent::OrderedView {
                    group,
                    // The list position: the same at every member (a member's view
                    // counter starts at its own join).
                    id: view.position,
                    members: &view.members,
                    joined: &joined,
                    left: &left,
                });
            }
            Event::OrderedConfiguration { group, config } => {
                tracing::info!(
                    shard = self.shard,
                    group = %format!("{group:#x}"),
                    number = config.epoch.number,
                    founder = config.epoch.founder,
                    position = config.position,
                    members = ?config.members,
                    joined = ?config.joined,
                    left = ?config.left,
                    transitional = config.transitional,
                    "evs configuration"
                );
                // The transitional configuration is the end of the last one (its members
                // delivered the same there); clients see the regular one that follows,
                // with the members the transitional one left out (`Partitioned`: cpg's
                // NODEDOWN) among its `left`.
                if config.transitional {
                    if self.evs_left.len() < MAX_EVS_LEFT || self.evs_left.contains_key(&group) {
                        self.evs_left.insert(group, config.left.clone());
                    }
                } else {
                    let before = self.evs_left.remove(&group).unwrap_or_default();
                    let left: Vec<(u32, u32)> = before
                        .iter()
                        .chain(config.left.iter())
                        .map(|&(node, reason)| (node, reason_code(reason)))
                        .collect();
                    on_event(ClusterEvent::OrderedView {
                        group,
                        // The same at every member of the configuration, and growing: list
                        // epochs' numbers grow with the cluster view.
                        id: u64::from(config.epoch.number) << 32 | (config.position & 0xFFFF_FFFF),
                        members: &config.members,
                        joined: &config.joined,
                        left: &left,
                    });
                }
            }
            Event::SnapshotRequest { group, position } => {
                on_event(ClusterEvent::SnapshotRequest { group, position });
            }
            Event::Installed {
                group,
                position,
                snapshot,
            } => {
                tracing::info!(shard = self.shard, group = %format!("{group:#x}"), position, bytes = snapshot.len(), "ordered group: snapshot installed");
                on_event(ClusterEvent::Installed {
                    group,
                    position,
                    snapshot: &snapshot,
                });
            }
            Event::OrderedStatus { group, status } => {
                let status = match status {
                    OrderedStatusEvent::Majority => "majority",
                    OrderedStatusEvent::Minority => "minority",
                    OrderedStatusEvent::Removed(RemoveReason::Left) => "removed (left)",
                    OrderedStatusEvent::Removed(RemoveReason::Suspected) => "removed (suspected)",
                    OrderedStatusEvent::Removed(RemoveReason::Lagging) => "removed (lagging)",
                    OrderedStatusEvent::Removed(RemoveReason::Partitioned) => "removed (partitioned)",
                };
                tracing::warn!(shard = self.shard, group = %format!("{group:#x}"), status, "ordered group status");
                on_event(ClusterEvent::OrderedStatus { group, status });
            }
        }
    }

    /// Whether the transport knows that `wake_fd` was not written since its last wait
    /// returned for it (`Transport::wake_quiet`): then it needs no drain before the next.
    pub fn wake_quiet(&self, wake_fd: RawFd) -> bool {
        self.udp.wake_quiet(wake_fd)
    }

    /// Blocks until a datagram, the wake eventfd or the next timer (at most `max`).
    pub fn wait(&mut self, max: Duration, wake_fd: RawFd) {
        let now = self.now();
        // The node's own timer too: a submit or a join since the last poll may have
        // brought it forward, and the park must not sleep past it.
        let next = self
            .node
            .poll_timeout()
            .map_or(self.next_timer, |t| t.min(self.next_timer));
        let until_timer = Duration::from_nanos(next.saturating_sub(now));
        if let Err(e) = self.udp.wait(max.min(until_timer), wake_fd) {
            tracing::debug!("UDP wait: {e}");
        }
    }

    /// Leaves the cluster politely (tells the coordinator) before the shard stops.
    pub fn shutdown(&mut self) {
        let now = self.now();
        self.node.shutdown(now);
        self.send_transmits();
    }

    pub fn base_port(&self) -> u16 {
        self.base_port
    }
}

/// Application regions (`docs/regions.md`): minitransactions of local clients, over the
/// control channel, run by this shard's node. Only shard 0 serves them.
impl Cluster {
    /// Creates (or finds, same size) region `name`. Refused with `NotInMajority` while
    /// this daemon waits for a view with the other daemons (it must not place the region
    /// memory node on itself alone).
    pub fn region_create(&mut self, name: &str, size: u32) -> Result<RegionOp, RegionError> {
        if self.alone() {
            return Err(RegionError::NotInMajority);
        }
        let now = self.now();
        let r = self.node.region_create(now, name, size);
        self.after_region_call();
        r
    }

    /// Runs a minitransaction over regions; the outcome comes from `poll_region_event`.
    pub fn region_minitx(&mut self, txn: &RegionTxn) -> Result<RegionOp, RegionError> {
        if self.alone() {
            return Err(RegionError::NotInMajority);
        }
        let now = self.now();
        let r = self.node.region_minitx(now, txn);
        self.after_region_call();
        r
    }

    pub fn poll_region_event(&mut self) -> Option<RegionEvent> {
        self.node.poll_region_event()
    }

    /// For `tutti status`: where the region memory node runs and what this node counted.
    pub fn regions_text(&self) -> String {
        let c = self.node.region_counters();
        let placement = match self.node.region_placement() {
            Some((p, b)) => format!(
                "memory node on daemon {} (backup {})",
                p >> 8,
                b.map_or_else(|| "none".to_string(), |b| (b >> 8).to_string())
            ),
            None => "memory node not placed yet".to_string(),
        };
        format!(
            "regions: {placement}; pending {} creates {} created {} txns {} committed {} conflicts {} \
             missing {} refused {} busy {} unavailable {} minitxs {} retries {}",
            self.node.region_pending(),
            c.creates,
            c.created,
            c.txns,
            c.committed,
            c.conflicts,
            c.missing,
            c.refused,
            c.busy,
            c.unavailable,
            c.minitxs,
            c.retries
        )
    }

    fn after_region_call(&mut self) {
        if let Some(t) = self.node.poll_timeout() {
            self.next_timer = self.next_timer.min(t);
        }
        self.send_transmits();
    }
}

/// The sending node of a datagram and its incarnation, from its header (the decoder checks
/// the rest). With a cluster key the transport hands on only datagrams that verified,
/// header included, so a peer's address is learned only from an authentic datagram;
/// without one, from anyone.
fn peek_sender(bytes: &[u8]) -> Option<(NodeId, u32)> {
    let magic = bytes.get(..4)?;
    if magic != tutti_wire::packet::MAGIC.to_le_bytes() {
        return None;
    }
    let word =
        |at: usize| -> Option<u32> { Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?)) };
    Some((word(8)?, word(12)?))
}

/// Records that `node` in `incarnation` sent from `from`. Returns the address it is kept at
/// when `from` is refused: another live address claims the same id. A node moves to a new
/// address only with a newer incarnation (a restart); an older or equal incarnation from
/// another address is a second daemon with the same id. A configured seed that was never
/// heard moves to where its id first answers from.
fn learn_address(
    peers: &mut FxMap<NodeId, PeerAddr>,
    node: NodeId,
    incarnation: u32,
    from: SocketAddr,
    now: Time,
) -> Option<SocketAddr> {
    let p = peers.entry(node).or_insert(PeerAddr {
        addr: from,
        incarnation,
        since: Some(now),
        last_heard: None,
    });
    if p.addr != from {
        if p.last_heard.is_some() && incarnation <= p.incarnation {
            return Some(p.addr);
        }
        tracing::info!(node, old = %p.addr, new = %from, incarnation, "node heard from a new address");
        p.addr = from;
    }
    if incarnation != p.incarnation || p.since.is_none() {
        p.incarnation = incarnation;
        p.since = Some(now);
    }
    p.last_heard = Some(now);
    None
}

/// Encodes an IPv4 address and port for a view's member entry (opaque to the protocol):
/// `1 << 48 | ip << 16 | port`; 0 (none) for IPv6 and unspecified addresses, whose
/// members are learned from their datagrams only.
fn view_addr(addr: SocketAddr) -> u64 {
    match addr {
        SocketAddr::V4(a) if !a.ip().is_unspecified() && a.port() != 0 => {
            1 << 48 | u64::from(u32::from(*a.ip())) << 16 | u64::from(a.port())
        }
        _ => 0,
    }
}

/// The address [`view_addr`] encoded, if it is one.
fn from_view_addr(v: u64) -> Option<SocketAddr> {
    if v >> 48 != 1 {
        return None;
    }
    let ip = std::net::Ipv4Addr::from((v >> 16) as u32);
    let port = v as u16;
    (!ip.is_unspecified() && port != 0).then(|| SocketAddr::from((ip, port)))
}

/// Takes the addresses a view gives for its members (as its coordinator heard them) for
/// members we have no address for, or only one we never heard from: SWIM probes members
/// we may never have heard from. An address heard from the member itself is kept (a view
/// never moves it), so a coordinator that lies about an address misleads us only until
/// the member's own datagrams arrive; those move it as they move a configured seed's.
fn learn_view_addresses(peers: &mut FxMap<NodeId, PeerAddr>, view: &View, me: NodeId) {
    for (i, m) in view.members.iter().enumerate() {
        if m.node == me {
            continue;
        }
        let Some(addr) = from_view_addr(view.addr(i)) else {
            continue;
        };
        match peers.get_mut(&m.node) {
            Some(p) if p.last_heard.is_none() => p.addr = addr,
            Some(_) => {}
            None => {
                peers.insert(
                    m.node,
                    PeerAddr {
                        addr,
                        incarnation: 0,
                        since: None,
                        last_heard: None,
                    },
                );
            }
        }
    }
}

/// Keeps (bounded) and logs (at most every [`DUPLICATE_LOG_INTERVAL`]) that `refused`
/// claims the id of `node`, which `kept` has.
fn report_duplicate(
    duplicates: &mut Vec<Duplicate>,
    shard: usize,
    node: NodeId,
    kept: SocketAddr,
    refused: SocketAddr,
    now: Time,
) {
    let i = match duplicates
        .iter()
        .position(|d| d.node == node && d.kept == kept && d.refused == refused)
    {
        Some(i) => i,
        None if duplicates.len() < MAX_DUPLICATES_SHOWN => {
            duplicates.push(Duplicate {
                node,
                kept,
                refused,
                dropped: 0,
                last: now,
                logged_at: 0,
            });
            duplicates.len() - 1
        }
        None => return,
    };
    let d = &mut duplicates[i];
    d.dropped += 1;
    d.last = now;
    if d.dropped == 1 || now.saturating_sub(d.logged_at) >= DUPLICATE_LOG_INTERVAL {
        d.logged_at = now;
        tracing::error!(
            shard,
            "daemon id {} is claimed by both {kept} and {refused}: datagrams from {refused} are refused ({} so far). Give each daemon its own --node-id (or node_id in the config).",
            node >> 8,
            d.dropped
        );
    }
}

/// A duration for people: "850ms", "12.3s", "5m02s", "3h04m", "2d05h".
fn duration(nanos: Time) -> String {
    let ms = nanos / MILLIS;
    let s = ms / 1000;
    match s {
        _ if ms < 1000 => format!("{ms}ms"),
        0..=59 => format!("{}.{}s", s, (ms % 1000) / 100),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// An `evs` list epoch for `tutti status`: its number and founder (daemon id).
fn epoch_text(e: tutti_proto::ordered::EpochId) -> String {
    format!("{} (founder {})", e.number, e.founder >> 8)
}

/// A memory-node replica of an ordered group on this daemon (`tutti status`): what it is
/// (`primary`, `backup`, an `evs` list epoch) and its counters (what it served,
/// replication, dormant readers, refused input), so an operator sees the load and the
/// health of the daemon that orders the group.
fn replica_detail(what: &str, r: &tutti_proto::minitx::MemoryNode) -> String {
    let c = r.counters();
    format!(
        "\n    replica here: {what}, execs committed {}, execs aborted {}, unlogged reads {}, \
             records applied {}, replication resends {} (fast {}), unreplicated records {}, \
             dropped full {}, watches {} (refused {}), wakes sent {}, malformed {}, misaddressed {}",
        c.execs_committed,
        c.execs_aborted,
        c.unlogged_reads,
        c.records_applied,
        c.replication_resends,
        c.fast_resends,
        c.unreplicated_records,
        c.dropped_full,
        c.watches,
        c.watches_refused,
        c.wakes_sent,
        c.malformed,
        c.misaddressed
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(daemon: Option<u32>, host: &str, base_port: Option<u16>) -> Seed {
        Seed {
            daemon,
            host: host.to_string(),
            base_port,
        }
    }

    #[test]
    fn seeds_parse_with_and_without_a_daemon_id() {
        for (text, want) in [
            ("10.0.0.2", seed(None, "10.0.0.2", None)),
            ("10.0.0.2:7500", seed(None, "10.0.0.2", Some(7500))),
            ("node-b.example", seed(None, "node-b.example", None)),
            ("node-b:7500", seed(None, "node-b", Some(7500))),
            ("::1", seed(None, "::1", None)),
            ("[::1]", seed(None, "::1", None)),
            ("[::1]:7500", seed(None, "::1", Some(7500))),
            ("3@10.0.0.2", seed(Some(3), "10.0.0.2", None)),
            ("3@10.0.0.2:7500", seed(Some(3), "10.0.0.2", Some(7500))),
            ("3@node-b:7500", seed(Some(3), "node-b", Some(7500))),
        ] {
            assert_eq!(ClusterConfig::parse_seed(text), Ok(want), "{text}");
        }
        for bad in [
            "",
            "@10.0.0.2",
            "x@10.0.0.2",
            "0@10.0.0.2",
            "16777216@10.0.0.2",
            "10.0.0.2:70000",
            "a b",
            "-x",
            "[::1",
            "host:port",
        ] {
            let e = ClusterConfig::parse_seed(bad).unwrap_err();
            assert!(e.contains("cluster.seeds"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_seed_resolves_to_its_shard_port() {
        let s = ClusterConfig::parse_seed("10.0.0.2").unwrap();
        assert_eq!(s.resolve(7400, 2).unwrap(), "10.0.0.2:7402".parse().unwrap());
        let s = ClusterConfig::parse_seed("localhost:7500").unwrap();
        assert_eq!(s.resolve(7400, 1).unwrap().port(), 7501);
        let s = ClusterConfig::parse_seed("10.0.0.2:65535").unwrap();
        assert!(s.resolve(7400, 1).unwrap_err().contains("exceeds 65535"));
    }

    #[test]
    fn too_many_address_only_seeds_are_refused() {
        let mut c = ClusterConfig {
            seeds: (0..=MAX_ADDRESS_SEEDS)
                .map(|i| format!("10.0.{}.{}", i / 250, i % 250 + 1))
                .collect(),
            ..ClusterConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("without a daemon id"));
        c.seeds.pop();
        c.validate().unwrap();
    }

    #[test]
    fn a_daemon_id_comes_from_the_ipv4_address_or_a_kept_random_one() {
        let dir = std::env::temp_dir().join(format!("tutti-derive-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (id, how) = derive_daemon_id("10.1.2.3".parse().unwrap(), &dir).unwrap();
        assert_eq!(id, 0x01_02_03, "{how}");
        assert!(
            !dir.join(NODE_ID_FILE).exists(),
            "nothing kept for an address-derived id"
        );
        // No usable address bits: random, kept, and the same the next time.
        let (random, how) = derive_daemon_id("0.0.0.0".parse().unwrap(), &dir).unwrap();
        assert!((1..=MAX_DAEMON_ID).contains(&random), "{how}");
        assert_eq!(derive_daemon_id("::1".parse().unwrap(), &dir).unwrap().0, random);
        assert_eq!(
            derive_daemon_id("10.0.0.0".parse().unwrap(), &dir).unwrap().0,
            random
        );
        std::fs::write(dir.join(NODE_ID_FILE), "0\n").unwrap();
        let e = derive_daemon_id("::".parse().unwrap(), &dir).unwrap_err();
        assert!(e.contains("not a daemon id"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn view_addresses_round_trip_ipv4_only() {
        let a = addr("127.0.1.7:17400");
        assert_eq!(from_view_addr(view_addr(a)), Some(a));
        assert_eq!(view_addr(addr("0.0.0.0:17400")), 0);
        assert_eq!(view_addr(addr("[::1]:17400")), 0);
        assert_eq!(from_view_addr(0), None);
        assert_eq!(from_view_addr(u64::MAX), None);
        assert_eq!(from_view_addr(1 << 48 | 17400), None, "0.0.0.0 is no address");
    }

    /// A view fills in addresses we lack or never heard from; it never moves an address
    /// heard from the member itself, and a datagram from the member moves a view's address.
    #[test]
    fn a_view_gives_addresses_only_where_the_member_was_never_heard() {
        let (heard, told, real) = (
            addr("10.0.0.1:7400"),
            addr("10.0.0.9:7400"),
            addr("10.0.0.3:7400"),
        );
        let mut peers = FxMap::default();
        assert_eq!(learn_address(&mut peers, 0x100, 5, heard, 1), None);
        let m = |node| tutti_proto::Member { node, incarnation: 5 };
        let view = View {
            id: tutti_proto::ViewId {
                counter: 3,
                coordinator: 0x100,
                coordinator_incarnation: 5,
            },
            members: vec![m(0x100), m(0x200), m(0x300)],
            addrs: vec![view_addr(told), view_addr(told), 0],
            groups: Vec::new(),
        };
        learn_view_addresses(&mut peers, &view, 0x300);
        assert_eq!(peers[&0x100].addr, heard, "heard from itself: kept");
        assert_eq!(peers[&0x200].addr, told, "never heard: the view's address");
        assert!(!peers.contains_key(&0x300), "ourselves: nothing");
        // The member's own datagram from elsewhere moves it, at any incarnation.
        assert_eq!(learn_address(&mut peers, 0x200, 5, real, 2), None);
        assert_eq!(peers[&0x200].addr, real);
        learn_view_addresses(&mut peers, &view, 0x300);
        assert_eq!(peers[&0x200].addr, real, "once heard, a view no longer moves it");
    }

    #[test]
    fn a_second_address_for_one_id_is_refused_unless_it_is_a_restart() {
        let mut peers = FxMap::default();
        let (a, b) = (addr("10.0.0.1:7400"), addr("10.0.0.2:7400"));
        assert_eq!(learn_address(&mut peers, 0x700, 5, a, 1), None);
        // Same id, older or equal incarnation, elsewhere: a second daemon.
        assert_eq!(learn_address(&mut peers, 0x700, 5, b, 2), Some(a));
        assert_eq!(learn_address(&mut peers, 0x700, 4, b, 3), Some(a));
        assert_eq!(learn_address(&mut peers, 0x700, 5, a, 4), None);
        // A newer incarnation elsewhere: a restart on another address; the old one is then
        // the impostor if it still speaks.
        assert_eq!(learn_address(&mut peers, 0x700, 6, b, 5), None);
        assert_eq!(learn_address(&mut peers, 0x700, 5, a, 6), Some(b));
        let p = &peers[&0x700];
        assert_eq!(
            (p.addr, p.incarnation, p.since, p.last_heard),
            (b, 6, Some(5), Some(5))
        );
        // A configured seed never heard moves to where its id answers from.
        peers.insert(
            0x800,
            PeerAddr {
                addr: a,
                incarnation: 0,
                since: None,
                last_heard: None,
            },
        );
        assert_eq!(learn_address(&mut peers, 0x800, 1, b, 7), None);
        assert_eq!(peers[&0x800].addr, b);
    }

    #[test]
    fn duplicates_are_kept_bounded_and_counted() {
        let mut d = Vec::new();
        for i in 0..100u16 {
            report_duplicate(
                &mut d,
                0,
                0x700,
                addr("10.0.0.1:7400"),
                SocketAddr::new([10, 0, 1, 1].into(), i),
                1,
            );
        }
        assert_eq!(d.len(), MAX_DUPLICATES_SHOWN);
        report_duplicate(
            &mut d,
            0,
            0x700,
            addr("10.0.0.1:7400"),
            SocketAddr::new([10, 0, 1, 1].into(), 0),
            2,
        );
        assert_eq!((d[0].dropped, d[0].last), (2, 2));
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(850 * MILLIS), "850ms");
        assert_eq!(duration(12_340 * MILLIS), "12.3s");
        assert_eq!(duration(302_000 * MILLIS), "5m02s");
        assert_eq!(duration(11_040_000 * MILLIS), "3h04m");
        assert_eq!(duration(190_800_000 * MILLIS), "2d05h");
    }
}
