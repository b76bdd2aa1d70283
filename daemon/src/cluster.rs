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

use crate::net::auth::{same_key_id, AuthKeys, AuthSetup, ClusterKey, TRAILER_LEN};
use crate::net::{self, NetConfig, Transport};
use serde::Deserialize;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tutti_proto::{Delivery, Event, Node, NodeId, Settings, Time, MILLIS};

/// Datagrams taken from the socket per pass.
const RECV_BUDGET: usize = 64;
/// Daemon ids fit in 24 bits (the low 8 bits of a cluster node id are the shard).
pub const MAX_DAEMON_ID: u32 = (1 << 24) - 1;
/// Most shards a daemon may run in a cluster (8 bits of the node id).
pub const MAX_CLUSTER_SHARDS: usize = 256;

/// `[cluster]` settings. Off by default: a daemon without it is a single-host daemon.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Join a cluster over UDP (also switched on by `--listen` or `--seed`).
    pub enabled: bool,
    /// Daemons to contact first, as `"ID@IP"` or `"ID@IP:BASE_PORT"` (default port:
    /// this daemon's `net.base_port`). Others are learned from them.
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
    /// Bytes kept for repair per group (payloads + 64 B per message). Beyond it the oldest
    /// messages go: repair of a fast sender reaches back this far.
    pub group_budget_bytes: usize,
    /// Bytes kept for repair per shard, all groups together.
    pub shard_budget_bytes: usize,
    /// A missing message is requested again after this long (ms) without an answer.
    pub rerequest_after_ms: u64,
    /// How long a group stays joined after its last local member left (ms), so that what
    /// was published here last can still be repaired from here.
    pub linger_ms: u64,
    /// Where the incarnation counter is kept (it must grow across restarts, even if the
    /// clock steps back). Unset: `$STATE_DIRECTORY` (systemd's `StateDirectory=`), else the
    /// control socket's directory.
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
            group_budget_bytes: s.group_budget_bytes,
            shard_budget_bytes: s.node_budget_bytes,
            rerequest_after_ms: s.rerequest_after / MILLIS,
            linger_ms: s.linger / MILLIS,
            state_dir: None,
            key_file: None,
            key_file_next: None,
            encrypt: false,
        }
    }
}

/// A seed daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seed {
    pub daemon: u32,
    pub ip: IpAddr,
    pub base_port: Option<u16>,
}

impl ClusterConfig {
    pub fn parse_seed(s: &str) -> Result<Seed, String> {
        let bad = || format!("cluster.seeds: {s:?} is not \"ID@IP\" or \"ID@IP:BASE_PORT\"");
        let (id, addr) = s.split_once('@').ok_or_else(bad)?;
        let daemon: u32 = id.parse().map_err(|_| bad())?;
        if daemon > MAX_DAEMON_ID {
            return Err(format!(
                "cluster.seeds: daemon id {daemon} exceeds {MAX_DAEMON_ID}"
            ));
        }
        if let Ok(ip) = addr.parse::<IpAddr>() {
            return Ok(Seed {
                daemon,
                ip,
                base_port: None,
            });
        }
        let sa: SocketAddr = addr.parse().map_err(|_| bad())?;
        Ok(Seed {
            daemon,
            ip: sa.ip(),
            base_port: Some(sa.port()),
        })
    }

    pub fn validate(&self) -> Result<(), String> {
        for s in &self.seeds {
            Self::parse_seed(s)?;
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
    let previous = std::fs::File::open(&path).ok().and_then(|mut f| {
        let mut s = String::new();
        f.read_to_string(&mut s).ok()?;
        s.trim().parse::<u32>().ok()
    });
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
fn sender_id(node: NodeId, session: u32) -> u64 {
    (u64::from(node >> 8) << 32) | u64::from(session)
}

/// The cluster node id of shard `shard` of daemon `daemon`.
pub fn node_id(daemon: u32, shard: usize) -> NodeId {
    (daemon << 8) | shard as u32
}

/// What a shard learns from the cluster.
pub enum ClusterEvent<'a> {
    /// A message published on another daemon: append it to the group's log.
    Deliver {
        group: u64,
        sender: u64,
        payload: &'a [u8],
    },
    /// Messages of a remote sender that can no longer be repaired.
    Lost { group: u64, sender: u64, count: u64 },
}

/// Counters the shard copies into its shared-memory page.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClusterStats {
    pub evicted_budget: u64,
    pub gap_requests: u64,
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
    pub auth_failed: u64,
    pub replayed: u64,
    pub auth_senders_full: u64,
}

pub struct Cluster {
    node: Node,
    udp: Box<dyn Transport>,
    epoch: Instant,
    shard: usize,
    base_port: u16,
    peers: HashMap<NodeId, SocketAddr>,
    next_timer: Time,
    stats: ClusterStats,
    view_summary: String,
}

impl Cluster {
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
        let mut peers = HashMap::new();
        let mut seed_ids = Vec::new();
        for s in &cfg.seeds {
            let seed = ClusterConfig::parse_seed(s)?;
            let port = seed.base_port.unwrap_or(net_cfg.base_port);
            let id = node_id(seed.daemon, shard);
            if id != me {
                peers.insert(id, SocketAddr::new(seed.ip, port.wrapping_add(shard as u16)));
                seed_ids.push(id);
            }
        }
        let epoch = Instant::now();
        let node = Node::new(me, incarnation, &seed_ids, settings, 0, os_random());
        tracing::info!(
            shard,
            node = me,
            incarnation,
            addr = %udp.local_addr(),
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
            next_timer: 0,
            stats: ClusterStats::default(),
            view_summary: String::from("view: just me"),
        })
    }

    #[inline]
    fn now(&self) -> Time {
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
        s.gap_requests = c.gap_requests_sent;
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
        s
    }

    pub fn view_summary(&self) -> &str {
        &self.view_summary
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

    /// Multicasts a locally published message (already in the local log).
    #[inline]
    pub fn submit(&mut self, group: u64, session: u32, payload: &[u8]) {
        let now = self.now();
        if let Err(e) = self.node.submit(now, group, session, payload) {
            self.stats.not_sent += 1;
            tracing::debug!("not multicast: {e}");
        }
    }

    /// Receives, runs due timers, sends what the node wants sent and hands its events to
    /// `on_event`. Returns how much work it did (0 = idle).
    pub fn poll(&mut self, on_event: &mut dyn FnMut(ClusterEvent<'_>)) -> usize {
        let mut work = 0;
        let now = self.now();
        {
            let Cluster {
                node,
                udp,
                peers,
                stats,
                ..
            } = self;
            let received = udp
                .recv(RECV_BUDGET, &mut |from, bytes| match peek_sender(bytes) {
                    Some(sender) => {
                        // Learn (or refresh, after a restart on a new port) where a node is.
                        if peers.get(&sender) != Some(&from) {
                            peers.insert(sender, from);
                        }
                        node.handle_packet(now, sender, bytes);
                    }
                    None => stats.decode_errors += 1,
                })
                .unwrap_or_else(|e| {
                    tracing::debug!("UDP receive: {e}");
                    0
                });
            work += received;
        }
        if now >= self.next_timer {
            self.node.handle_timeout(now);
            self.next_timer = self.node.poll_timeout().unwrap_or(now + 100 * MILLIS);
            work += 1;
        }
        work += self.send_transmits();
        while let Some(event) = self.node.poll_event() {
            work += 1;
            self.handle_event(event, on_event);
        }
        work
    }

    fn send_transmits(&mut self) -> usize {
        let mut sent = 0;
        while let Some(t) = self.node.poll_transmit() {
            let addr = match self.peers.get(&t.dest) {
                Some(a) => *a,
                None => {
                    self.stats.unknown_peer += 1;
                    continue;
                }
            };
            if self.udp.queue(addr, &t.payload).is_err() {
                // Queue full: push what is queued, then try once more; else drop (gossip repairs).
                let _ = self.udp.flush();
                if self.udp.queue(addr, &t.payload).is_err() {
                    self.stats.not_sent += 1;
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
                session,
                payload,
                ..
            } => {
                self.stats.remote_delivered += 1;
                on_event(ClusterEvent::Deliver {
                    group,
                    sender: sender_id(sender, session),
                    payload: &payload,
                });
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
        }
    }

    /// Blocks until a datagram, the wake eventfd or the next timer (at most `max`).
    pub fn wait(&mut self, max: Duration, wake_fd: RawFd) {
        let now = self.now();
        let until_timer = Duration::from_nanos(self.next_timer.saturating_sub(now));
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

/// The sending node of a datagram, from its header (the decoder checks the rest). With a
/// cluster key the transport hands on only datagrams that verified, header included, so a
/// peer's address is learned only from an authentic datagram; without one, from anyone.
fn peek_sender(bytes: &[u8]) -> Option<NodeId> {
    let magic = bytes.get(..4)?;
    if magic != tutti_wire::packet::MAGIC.to_le_bytes() {
        return None;
    }
    let from = bytes.get(8..12)?;
    Some(u32::from_le_bytes([from[0], from[1], from[2], from[3]]))
}
