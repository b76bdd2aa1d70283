//! A hostile member: a node that runs the protocol honestly and, besides, sends honest
//! members well-formed but malicious datagrams (the attacks of issue 9). It is an
//! authenticated insider: every datagram carries its own id and incarnation (what a
//! cluster key cannot stop), never a spoofed one (what a key does stop).

use rand::Rng;
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::Serialize;
use tutti_proto::{Node, NodeId};
use tutti_wire::packet::{
    DataHeader, DigestEntry, DigestHeader, Encoder, FlowStatus, HeartbeatEntry, HeartbeatHeader, MemberEntry,
    PacketError, RequestEntry, RequestHeader, ViewGroupMember, ViewParts, DATAGRAM_HEADER_LEN,
    HEARTBEAT_FLAG_LEAVING, MESSAGE_HEADER_LEN, REQUEST_ROUND_GAP,
};

/// The payload of forged data: its first 8 bytes name no message the simulator sent, so a
/// member that delivers it is caught by the checker ("a message never sent").
pub const FORGED_PAYLOAD: [u8; 16] = [0xFF; 16];
/// Invented ids (node ids in heartbeats, senders in digests) per attack; each attack
/// invents new ones.
const INVENTED_PER_ATTACK: u32 = 250;

/// One attack a hostile member repeats (in turn with the others).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum HostileAttack {
    /// Requests for `u32::MAX` messages from seq 0 of every other stream (unbounded work).
    HugeRequest,
    /// A heartbeat whose header says `max_counter = u64::MAX` (view counter overflow).
    MaxCounter,
    /// Data of another member's stream with a seq near 2^62 (slides the window there).
    FarSeq,
    /// A digest entry for another member's stream with `high` near 2^62.
    HugeHigh,
    /// Heartbeats naming `INVENTED_PER_ATTACK` new invented node ids (peer table, views).
    InventedPeers,
    /// Digests and data of `INVENTED_PER_ATTACK` new invented senders (per-sender state).
    InventedSenders,
    /// A view made by the hostile member (not the coordinator), one honest member left out.
    ForgedView,
    /// A heartbeat entry giving an honest member a higher incarnation (evicts it).
    HigherIncarnation,
    /// A heartbeat entry saying an honest member is leaving.
    Leaving,
    /// Flow statuses for every other stream: a report that its subtree holds nothing (seq
    /// 0, the slowest member a bystander, window 1) and an ask as if from its sender. The
    /// target, the stream's sender or a parent of ours in its tree, must not be held back
    /// for good (the bimodal rule) nor wedged by asks.
    FlowStall,
    /// Data of another member's stream just past what it sent, with a forged payload. With
    /// a shared cluster key nothing on the wire tells a forwarder's forgery from a real
    /// copy: off by default (see `Scenario::hostile_attacks`).
    ForgeAhead,
}

impl HostileAttack {
    /// Every attack but `ForgeAhead` (a forwarder's forgery under a shared cluster key is
    /// indistinguishable from a real copy: see its own report).
    pub const DEFAULT: [HostileAttack; 10] = [
        HostileAttack::HugeRequest,
        HostileAttack::MaxCounter,
        HostileAttack::FarSeq,
        HostileAttack::HugeHigh,
        HostileAttack::InventedPeers,
        HostileAttack::InventedSenders,
        HostileAttack::ForgedView,
        HostileAttack::HigherIncarnation,
        HostileAttack::Leaving,
        HostileAttack::FlowStall,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "huge-request" => Self::HugeRequest,
            "max-counter" => Self::MaxCounter,
            "far-seq" => Self::FarSeq,
            "huge-high" => Self::HugeHigh,
            "invented-peers" => Self::InventedPeers,
            "invented-senders" => Self::InventedSenders,
            "forged-view" => Self::ForgedView,
            "higher-incarnation" => Self::HigherIncarnation,
            "leaving" => Self::Leaving,
            "forge-ahead" => Self::ForgeAhead,
            "flow-stall" => Self::FlowStall,
            _ => return None,
        })
    }
}

/// What the hostile member knows beside its node: the next seq of each stream of the group
/// (`(sender, stream, next)`; the simulator's record of what was sent).
pub struct Knowledge<'a> {
    pub group: u64,
    pub streams: &'a [(NodeId, u32, u64)],
    /// How many times this member attacked (invented ids move on each time).
    pub round: u64,
}

/// A datagram from `node` holding what `write` pushes (within `max_datagram`).
fn datagram(node: &Node, write: impl FnOnce(&mut Encoder<'_>) -> Result<(), PacketError>) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; node.settings().max_datagram];
    let mut e = Encoder::new(&mut buf, node.id(), node.incarnation()).ok()?;
    write(&mut e).ok()?;
    let len = e.len();
    buf.truncate(len);
    Some(buf)
}

/// Entries of `entry` bytes that fit one datagram of `max_datagram` after a `header`.
fn fit(node: &Node, header: usize, entry: usize) -> usize {
    node.settings()
        .max_datagram
        .saturating_sub(DATAGRAM_HEADER_LEN + MESSAGE_HEADER_LEN + header)
        / entry
}

fn heartbeat_header(node: &Node, max_counter: u64) -> HeartbeatHeader {
    let v = node.view().id;
    HeartbeatHeader {
        view_counter: v.counter,
        view_coordinator: v.coordinator,
        view_coordinator_incarnation: v.coordinator_incarnation,
        max_counter,
        view_hash: node.view_hash(),
    }
}

/// The datagrams of one `attack` by `node` against honest member `target` (every one of
/// them is sent to `target`).
pub fn forge(
    attack: HostileAttack,
    node: &Node,
    target: NodeId,
    k: &Knowledge<'_>,
    rng: &mut Xoshiro256PlusPlus,
) -> Vec<Vec<u8>> {
    let me = node.id();
    let others: Vec<(NodeId, u32, u64)> = k.streams.iter().copied().filter(|s| s.0 != me).collect();
    let victim_stream = (!others.is_empty()).then(|| others[rng.gen_range(0..others.len())]);
    let view = node.view().clone();
    let honest: Vec<NodeId> = view
        .members
        .iter()
        .map(|m| m.node)
        .filter(|n| *n != me && *n != target)
        .collect();
    let bystander = (!honest.is_empty()).then(|| honest[rng.gen_range(0..honest.len())]);
    let mut out = Vec::new();
    match attack {
        HostileAttack::HugeRequest => {
            let entries: Vec<RequestEntry> = others
                .iter()
                .map(|&(sender, stream, _)| RequestEntry {
                    sender,
                    stream,
                    first: 0,
                    count: u32::MAX,
                    frag: 0,
                })
                .take(fit(node, 16, 24))
                .collect();
            let h = RequestHeader {
                group: k.group,
                round: REQUEST_ROUND_GAP,
                reserved: 0,
            };
            out.extend(datagram(node, |e| e.push_request(&h, &entries)));
        }
        HostileAttack::MaxCounter => {
            let h = heartbeat_header(node, u64::MAX);
            out.extend(datagram(node, |e| e.push_heartbeats(&h, &[])));
        }
        HostileAttack::FarSeq | HostileAttack::ForgeAhead => {
            if let Some((sender, stream, next)) = victim_stream {
                let seq = if attack == HostileAttack::FarSeq {
                    (1 << 62) + rng.gen_range(0..1024)
                } else {
                    next + rng.gen_range(0..20)
                };
                let h = DataHeader {
                    group: k.group,
                    seq,
                    sender,
                    stream,
                    retained: 0,
                    session: 0,
                    frag_index: 0,
                    frag_count: 1,
                };
                out.extend(datagram(node, |e| e.push_data(&h, false, &FORGED_PAYLOAD)));
            }
        }
        HostileAttack::HugeHigh => {
            if let Some((sender, stream, _)) = victim_stream {
                let e = DigestEntry {
                    sender,
                    stream,
                    low: 0,
                    contiguous: 0,
                    high: 1 << 62,
                    recent: 0,
                };
                let h = DigestHeader {
                    group: k.group,
                    round: node.round(),
                    reserved: 0,
                };
                out.extend(datagram(node, |enc| enc.push_digest(&h, &[e])));
            }
        }
        HostileAttack::InventedPeers => {
            let n = INVENTED_PER_ATTACK;
            let base = 1_000_000 + (k.round as u32 % 1000) * INVENTED_PER_ATTACK;
            let entries: Vec<HeartbeatEntry> = (0..n)
                .map(|i| HeartbeatEntry {
                    node: base + i,
                    incarnation: 1,
                    heartbeat: k.round as u32,
                    flags: 0,
                })
                .collect();
            let h = heartbeat_header(node, view.id.counter);
            for chunk in entries.chunks(fit(node, 24, 16).max(1)) {
                out.extend(datagram(node, |e| e.push_heartbeats(&h, chunk)));
            }
        }
        HostileAttack::InventedSenders => {
            let base = 3_000_000 + (k.round as u32 % 1000) * INVENTED_PER_ATTACK;
            let entries: Vec<DigestEntry> = (0..INVENTED_PER_ATTACK)
                .map(|i| DigestEntry {
                    sender: base + i,
                    stream: 1,
                    low: 0,
                    contiguous: 1,
                    high: 1,
                    recent: 0,
                })
                .collect();
            let h = DigestHeader {
                group: k.group,
                round: node.round(),
                reserved: 0,
            };
            for chunk in entries.chunks(fit(node, 16, 40).max(1)) {
                out.extend(datagram(node, |e| e.push_digest(&h, chunk)));
            }
            for i in 0..50 {
                let h = DataHeader {
                    group: k.group,
                    seq: 0,
                    sender: base + i,
                    stream: 1,
                    retained: 0,
                    session: 0,
                    frag_index: 0,
                    frag_count: 1,
                };
                out.extend(datagram(node, |e| e.push_data(&h, false, &FORGED_PAYLOAD)));
            }
        }
        HostileAttack::ForgedView => {
            let drop = bystander;
            let members: Vec<MemberEntry> = view
                .members
                .iter()
                .filter(|m| Some(m.node) != drop)
                .map(|m| MemberEntry {
                    node: m.node,
                    incarnation: m.incarnation,
                    addr: 0,
                })
                .collect();
            let gv = view.group_view(k.group);
            let entries: Vec<ViewGroupMember> = gv
                .map(|gv| {
                    gv.members
                        .iter()
                        .zip(&gv.streams)
                        .filter_map(|(n, s)| {
                            let index = members.iter().position(|m| m.node == *n)? as u32;
                            Some(ViewGroupMember { index, stream: *s })
                        })
                        .collect()
                })
                .unwrap_or_default();
            let groups: Vec<(u64, &[ViewGroupMember])> = vec![(k.group, entries.as_slice())];
            let max_body = node
                .settings()
                .max_datagram
                .saturating_sub(DATAGRAM_HEADER_LEN + MESSAGE_HEADER_LEN);
            if let Ok(parts) = ViewParts::new(
                view.id.counter + 1,
                (me, node.incarnation()),
                &members,
                &groups,
                max_body,
            ) {
                for p in 0..parts.len() {
                    out.extend(datagram(node, |e| e.push_view_part(&parts, p)));
                }
            }
        }
        HostileAttack::FlowStall => {
            for &(sender, stream, next) in &others {
                let report = FlowStatus {
                    group: k.group,
                    sender,
                    stream,
                    consumed: 0,
                    window: 1,
                    gaps: u32::MAX,
                    holder: bystander.unwrap_or(me),
                    members: 1,
                };
                let ask = FlowStatus {
                    consumed: next,
                    members: 0,
                    ..report
                };
                out.extend(datagram(node, |e| {
                    e.push_flow_status(&report)?;
                    e.push_flow_status(&ask)
                }));
            }
        }
        HostileAttack::HigherIncarnation | HostileAttack::Leaving => {
            if let Some(m) = bystander.and_then(|b| view.members.iter().find(|m| m.node == b)) {
                let e = if attack == HostileAttack::HigherIncarnation {
                    HeartbeatEntry {
                        node: m.node,
                        incarnation: m.incarnation + 1,
                        heartbeat: 1,
                        flags: 0,
                    }
                } else {
                    HeartbeatEntry {
                        node: m.node,
                        incarnation: m.incarnation,
                        heartbeat: u32::MAX / 2,
                        flags: HEARTBEAT_FLAG_LEAVING,
                    }
                };
                let h = heartbeat_header(node, view.id.counter);
                out.extend(datagram(node, |enc| enc.push_heartbeats(&h, &[e])));
            }
        }
    }
    out
}
