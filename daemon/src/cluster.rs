//! A shard's cluster side: one `tutti_proto::Node` per shard, driven with the shard's UDP
//! transport and a monotonic clock. Shard `s` of daemon `n` is cluster node `n << 8 | s`
//! and listens on `net.listen:net.base_port + s`; shard `s` of every daemon forms one
//! cluster, so a group's traffic stays on the shard that owns it (`group_id % shards`,
//! which needs the same shard count on every daemon).
//!
//! Messages a local client publishes go into the local delivery log at once and into
//! `Node::submit`; messages the node delivers from other daemons go into the log with
//! the publisher's sender id. The publishing session rides as a 4-byte prefix of the
//! multicast payload, so a remote sender id is `(daemon << 32) | session`, as a local one.

use crate::net::{self, NetConfig, Transport};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tutti_proto::{Delivery, Event, Node, NodeId, Settings, Time, MILLIS};

/// Bytes of the prefix on every multicast payload: publishing session (u32), fragment
/// index (u16), fragment count (u16), little-endian.
const PREFIX: usize = 8;
/// Most bytes held in partly reassembled messages per shard; beyond it the oldest partial
/// message is dropped and reported lost.
pub const MAX_REASSEMBLY_BYTES: usize = 64 << 20;
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
        if self.retention_rounds == 0 || self.suspect_timeout_ms == 0 {
            return Err("cluster: retention_rounds and suspect_timeout_ms must be at least 1".into());
        }
        self.delivery_mode()?;
        Ok(())
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

    fn settings(&self, max_datagram: usize) -> Result<Settings, String> {
        let defaults = Settings::default();
        // Datagram header 16 B + message header 8 B + data header (32 B, see wire::packet).
        let max_payload = max_datagram.saturating_sub(defaults.max_datagram - defaults.max_payload);
        Ok(Settings {
            gossip_period: self.gossip_period_ms * MILLIS,
            gossip_fanout: self.gossip_fanout,
            tree_fanout: self.tree_fanout,
            retention_rounds: self.retention_rounds,
            retransmit_budget_bytes: self.retransmit_budget_bytes,
            suspect_timeout: self.suspect_timeout_ms * MILLIS,
            max_datagram,
            max_payload,
            delivery: self.delivery_mode()?,
            ..defaults
        })
    }
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
    /// Large messages dropped part-way (a fragment lost, or the reassembly bound).
    pub reassembly_dropped: u64,
    pub window_overflow: u64,
    pub evicted_early: u64,
}

/// A large message being put back together from its fragments (FIFO delivery per sender
/// node brings one message's fragments in order and back to back).
struct Partial {
    session: u32,
    next: u16,
    count: u16,
    bytes: Vec<u8>,
}

pub struct Cluster {
    node: Node,
    /// Groups with no local member left, still joined until the time given.
    lingering: Vec<(u64, Time)>,
    /// How long a group lingers: its retention period.
    linger: Time,
    /// Payload bytes per fragment (a datagram's worth less the prefix).
    chunk: usize,
    ordered: bool,
    partials: HashMap<(u64, NodeId), Partial>,
    partial_bytes: usize,
    udp: Box<dyn Transport>,
    epoch: Instant,
    me: NodeId,
    shard: usize,
    base_port: u16,
    peers: HashMap<NodeId, SocketAddr>,
    scratch: Vec<u8>,
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
    ) -> Result<Cluster, String> {
        let settings = cfg.settings(net_cfg.max_datagram)?;
        let udp = net::open(net_cfg, shard).map_err(|e| format!("shard {shard} UDP: {e}"))?;
        let me = node_id(daemon, shard);
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
        // Incarnations must grow across restarts: deciseconds since 2025 (fits u32 for
        // 13 years), so a daemon restarted a moment later is a newer member.
        let incarnation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| (d.as_millis() / 100).saturating_sub(17_356_896_000) as u32)
            .max(1);
        let epoch = Instant::now();
        let rng_seed = u64::from(me) ^ (u64::from(incarnation) << 32) ^ u64::from(std::process::id());
        let node = Node::new(me, incarnation, &seed_ids, settings.clone(), 0, rng_seed);
        tracing::info!(
            shard,
            node = me,
            incarnation,
            addr = %udp.local_addr(),
            backend = udp.backend(),
            seeds = ?cfg.seeds,
            "cluster node started"
        );
        let chunk = settings.max_payload.saturating_sub(PREFIX).max(1);
        let ordered = settings.delivery == Delivery::Fifo;
        let linger = settings.gossip_period * u64::from(settings.retention_rounds);
        Ok(Cluster {
            lingering: Vec::new(),
            linger,
            chunk,
            ordered,
            partials: HashMap::new(),
            partial_bytes: 0,
            node,
            udp,
            epoch,
            me,
            shard,
            base_port: net_cfg.base_port,
            peers,
            scratch: Vec::with_capacity(net_cfg.max_datagram),
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
        s.evicted_early = c.evicted_early;
        s.not_sent += c.transmits_dropped;
        let n = self.udp.stats();
        s.datagrams_in = n.received;
        s.datagrams_out = n.sent;
        s.fault_dropped =
            n.fault.lost_out + n.fault.lost_in + n.fault.partitioned_in + n.fault.partitioned_out;
        s
    }

    pub fn view_summary(&self) -> &str {
        &self.view_summary
    }

    pub fn join(&mut self, group: u64) {
        if let Some(i) = self.lingering.iter().position(|&(g, _)| g == group) {
            // Still a member while lingering: just stay.
            self.lingering.swap_remove(i);
            return;
        }
        let now = self.now();
        self.node.join(now, group);
    }

    /// Leaves a group once its last local member is gone, after lingering for the
    /// retention period: the messages this daemon sent last can still be repaired from it
    /// (a publisher that sends and exits at once would otherwise take them along).
    pub fn leave(&mut self, group: u64) {
        let at = self.now() + self.linger;
        self.lingering.push((group, at));
    }

    fn leave_lingering(&mut self, now: Time) {
        let mut i = 0;
        while i < self.lingering.len() {
            if self.lingering[i].1 <= now {
                let (group, _) = self.lingering.swap_remove(i);
                self.node.leave(now, group);
            } else {
                i += 1;
            }
        }
    }

    /// Multicasts a locally published message (already in the local log). A message
    /// larger than a datagram goes as consecutive fragments (FIFO delivery only).
    #[inline]
    pub fn submit(&mut self, group: u64, session: u32, payload: &[u8]) {
        let count = payload.len().div_ceil(self.chunk).max(1);
        if count > usize::from(u16::MAX) || (count > 1 && !self.ordered) {
            self.stats.not_sent += 1;
            return;
        }
        let mut chunks = payload.chunks(self.chunk);
        for index in 0..count {
            let body = chunks.next().unwrap_or(&[]);
            self.scratch.clear();
            self.scratch.extend_from_slice(&session.to_le_bytes());
            self.scratch.extend_from_slice(&(index as u16).to_le_bytes());
            self.scratch.extend_from_slice(&(count as u16).to_le_bytes());
            self.scratch.extend_from_slice(body);
            if self.node.submit(0, group, &self.scratch).is_err() {
                self.stats.not_sent += 1;
                return;
            }
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
            if !self.lingering.is_empty() {
                self.leave_lingering(now);
            }
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
                payload,
                ..
            } => {
                if sender == self.me || self.lingering.iter().any(|&(g, _)| g == group) {
                    return; // our own message (already in the local log), or nobody local wants it
                }
                let Some((session, index, count, body)) = split_prefix(&payload) else {
                    self.stats.decode_errors += 1;
                    return;
                };
                if count == 1 {
                    self.stats.remote_delivered += 1;
                    let sender_id = (u64::from(sender >> 8) << 32) | u64::from(session);
                    on_event(ClusterEvent::Deliver {
                        group,
                        sender: sender_id,
                        payload: body,
                    });
                    return;
                }
                self.reassemble(group, sender, session, index, count, body, on_event);
            }
            Event::Lost {
                group,
                sender,
                count,
                first,
                ..
            } => {
                // A message in pieces whose rest is lost is lost whole.
                if let Some(p) = self.partials.remove(&(group, sender)) {
                    self.partial_bytes -= p.bytes.capacity();
                }
                self.stats.lost += count;
                tracing::warn!(shard = self.shard, group = %format!("{group:#x}"), sender, first, count, "messages lost (not repairable)");
                on_event(ClusterEvent::Lost {
                    group,
                    sender: u64::from(sender >> 8) << 32,
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

    /// Adds one fragment; delivers the message when its last fragment arrives. Fragments
    /// that do not continue the message in progress (a gap the node reported lost) are
    /// dropped with the partial message: a client gets a message whole or not at all.
    #[allow(clippy::too_many_arguments)]
    fn reassemble(
        &mut self,
        group: u64,
        sender: NodeId,
        session: u32,
        index: u16,
        count: u16,
        body: &[u8],
        on_event: &mut dyn FnMut(ClusterEvent<'_>),
    ) {
        let key = (group, sender);
        if index == 0 {
            if let Some(old) = self.partials.remove(&key) {
                self.partial_bytes -= old.bytes.capacity();
                self.stats.reassembly_dropped += 1;
            }
            let size = usize::from(count) * self.chunk;
            while self.partial_bytes + size > MAX_REASSEMBLY_BYTES && !self.partials.is_empty() {
                let victim = *self.partials.keys().next().expect("not empty");
                let old = self.partials.remove(&victim).expect("present");
                self.partial_bytes -= old.bytes.capacity();
                self.stats.reassembly_dropped += 1;
            }
            let bytes = Vec::with_capacity(size);
            self.partial_bytes += bytes.capacity();
            self.partials.insert(
                key,
                Partial {
                    session,
                    next: 0,
                    count,
                    bytes,
                },
            );
        }
        let Some(p) = self.partials.get_mut(&key) else {
            // The start of this message was lost (and reported); skip its remaining pieces.
            return;
        };
        if p.session != session || p.count != count || p.next != index {
            let old = self.partials.remove(&key).expect("present");
            self.partial_bytes -= old.bytes.capacity();
            self.stats.reassembly_dropped += 1;
            return;
        }
        p.bytes.extend_from_slice(body);
        p.next += 1;
        if p.next == p.count {
            let done = self.partials.remove(&key).expect("present");
            self.partial_bytes -= done.bytes.capacity();
            self.stats.remote_delivered += 1;
            let sender_id = (u64::from(sender >> 8) << 32) | u64::from(session);
            on_event(ClusterEvent::Deliver {
                group,
                sender: sender_id,
                payload: &done.bytes,
            });
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

/// The sending node of a datagram, from its header (the decoder checks the rest).
fn peek_sender(bytes: &[u8]) -> Option<NodeId> {
    let magic = bytes.get(..4)?;
    if magic != tutti_wire::packet::MAGIC.to_le_bytes() {
        return None;
    }
    let from = bytes.get(8..12)?;
    Some(u32::from_le_bytes([from[0], from[1], from[2], from[3]]))
}

fn split_prefix(payload: &[u8]) -> Option<(u32, u16, u16, &[u8])> {
    let (p, body) = payload.split_at_checked(PREFIX)?;
    let session = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
    let index = u16::from_le_bytes([p[4], p[5]]);
    let count = u16::from_le_bytes([p[6], p[7]]);
    (count >= 1 && index < count).then_some((session, index, count, body))
}
