//! Fuzz the protocol, not just the decoder: one `Node` (id 1) in a 3-node view with a group
//! joined and some history from its peers (a short honest setup, by hand-made datagrams),
//! then arbitrary *well-formed* datagrams (every message kind, built with the wire
//! `Encoder`, with arbitrary ids, seqs, counters and incarnations) from arbitrary `from`
//! ids, interleaved with timeouts. After every call the node must stay within its memory
//! bounds and the call's output within bounds derived from `Settings`:
//! - `retained_bytes()` within the group budget, `state_bytes()` within the node budget
//!   plus `STATE_ALLOWANCE` (tables keyed by ids from packets are bounded);
//! - datagrams out per input message (plus retransmissions within the round's budget),
//!   none over `max_datagram`;
//! - events per input message at most a window (`Settings::max_window`) plus two;
//! - no `Lost` count beyond what a real sender sent plus a window (unless the input spoofed
//!   that sender's id as a datagram's `from`);
//! - no panic (debug assertions are on: an overflow is a finding).
//!
//! Run: `cargo +nightly fuzz run node_packets` (from `fuzz/`);
//! `NODE_PACKETS_NUMBER_BITS=12` keeps seqs and counters below 2^12 (see `number_bits`).

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tutti_proto::{Event, Node, NodeId, Settings, Time, MILLIS};
use tutti_wire::packet::{
    DataHeader, DigestEntry, DigestHeader, Encoder, HeartbeatEntry, HeartbeatHeader, MemberEntry, PacketError,
    RequestEntry, RequestHeader, ViewGroupMember, ViewParts, DATAGRAM_HEADER_LEN, MAX_DATAGRAM,
    MESSAGE_HEADER_LEN, REQUEST_ROUND_GAP,
};

const GROUP: u64 = 7;
const ME: NodeId = 1;
const ATTACKER: NodeId = 100;
/// Streams of the two honest peers (node 0, node 2) in the group.
const PEER_STREAMS: [(NodeId, u32); 2] = [(0, 11), (2, 22)];
/// Messages each peer sent during the setup.
const HISTORY: u64 = 4;
const STATE_ALLOWANCE: usize = 1 << 20;
const RETRANSMIT_OVERHEAD: usize = 48;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Who {
    Peer(bool),
    Me,
    Attacker,
    Raw(u32),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Num {
    Small(u8),
    /// Past what the stream's sender sent (or the current view counter).
    Ahead(u8),
    Pow62,
    Max,
    Raw(u64),
}

#[derive(Arbitrary, Debug)]
enum Shape {
    Data {
        other_group: Option<u64>,
        sender: Who,
        stream: Option<u32>,
        seq: Num,
        retained: u32,
        frag_index: u16,
        frag_count: u16,
        len: u16,
        retransmit: bool,
    },
    Digest {
        round: Option<u32>,
        entries: Vec<(Who, Option<u32>, Num, Num, Num, Num)>,
        invented: u16,
    },
    Request {
        round: Option<u32>,
        entries: Vec<(Who, Option<u32>, Num, u32, u32)>,
    },
    Heartbeats {
        view_counter: Num,
        coordinator: Who,
        coordinator_incarnation: u32,
        max_counter: Num,
        entries: Vec<(Who, u32, u32, u32)>,
        invented: (u16, u32),
    },
    View {
        counter: Num,
        coordinator: Who,
        coordinator_incarnation: u32,
        members: Vec<(Who, u32)>,
        include_me: bool,
        group: Vec<(u8, Option<u32>)>,
    },
    /// (counter, coordinator, hash, parts, listed parts: perhaps invalid).
    ViewRequest(u64, u32, u64, u32, Vec<u32>),
    GroupJoin(u64, u32),
    GroupLeave(u64),
}

#[derive(Arbitrary, Debug)]
enum Action {
    Packet {
        from: Who,
        incarnation: u32,
        msgs: Vec<Shape>,
    },
    Timeout(u16),
    Publish(u8),
}

/// `NODE_PACKETS_NUMBER_BITS=B`: seqs and counters below 2^B, so that a run gets past the
/// findings that huge ones trigger at once (window slides, overflows of `Lost` counts and
/// view counters) to the rest of the protocol. B = 12 keeps seqs within one window.
fn number_bits() -> Option<u32> {
    static BITS: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *BITS.get_or_init(|| {
        std::env::var("NODE_PACKETS_NUMBER_BITS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|b| *b < 64)
    })
}

fn settings() -> Settings {
    Settings {
        gossip_period: 20 * MILLIS,
        suspect_timeout: 400 * MILLIS,
        group_budget_bytes: 256 << 10,
        node_budget_bytes: 1 << 20,
        retransmit_budget_bytes: 64 << 10,
        ..Settings::default()
    }
}

struct World {
    node: Node,
    now: Time,
    /// Per sender: the next seq it really sent (peers: the setup's history; us: ours).
    sent: [(NodeId, u32, u64); 2],
    lost: Vec<((NodeId, u32), u64)>,
    /// Senders whose id the input used as a datagram's `from` (a spoof only the transport
    /// can refuse: proto takes a sender's word on its own stream, so its `Lost` bound
    /// does not apply to that stream).
    spoofed: Vec<NodeId>,
}

impl World {
    fn who(&self, w: Who) -> NodeId {
        match w {
            Who::Peer(b) => PEER_STREAMS[usize::from(b)].0,
            Who::Me => ME,
            Who::Attacker => ATTACKER,
            Who::Raw(x) => x,
        }
    }
    fn stream(&self, node: NodeId, s: Option<u32>) -> u32 {
        s.unwrap_or_else(|| match node {
            ME => self.node.stream(GROUP).unwrap_or(1),
            _ => PEER_STREAMS
                .iter()
                .find(|p| p.0 == node)
                .map_or(1, |p| p.1),
        })
    }
    fn seq(&self, node: NodeId, n: Num) -> u64 {
        let v = self.seq_unclamped(node, n);
        match number_bits() {
            Some(bits) => v % (1 << bits),
            None => v,
        }
    }
    fn seq_unclamped(&self, node: NodeId, n: Num) -> u64 {
        match n {
            Num::Small(x) => u64::from(x),
            Num::Ahead(d) => {
                let next = self.sent.iter().find(|s| s.0 == node).map_or(0, |s| s.2);
                next + u64::from(d)
            }
            Num::Pow62 => 1 << 62,
            Num::Max => u64::MAX,
            Num::Raw(x) => x,
        }
    }
    fn counter(&self, n: Num) -> u64 {
        match n {
            Num::Ahead(d) => self.node.view().id.counter + u64::from(d % 4),
            n => self.seq(ATTACKER, n),
        }
    }

    fn push(&self, e: &mut Encoder<'_>, s: &Shape) -> Result<(), PacketError> {
        match *s {
            Shape::Data {
                other_group,
                sender,
                stream,
                seq,
                retained,
                frag_index,
                frag_count,
                len,
                retransmit,
            } => {
                let sender = self.who(sender);
                let h = DataHeader {
                    group: other_group.unwrap_or(GROUP),
                    seq: self.seq(sender, seq),
                    sender,
                    stream: self.stream(sender, stream),
                    retained,
                    session: 1,
                    frag_index,
                    frag_count,
                };
                let len = usize::from(len).min(e.remaining_body().saturating_sub(40));
                e.push_data(&h, retransmit, &vec![0xA5; len])
            }
            Shape::Digest {
                round,
                ref entries,
                invented,
            } => {
                let mut es: Vec<DigestEntry> = entries
                    .iter()
                    .map(|&(w, st, low, contiguous, high, recent)| {
                        let sender = self.who(w);
                        DigestEntry {
                            sender,
                            stream: self.stream(sender, st),
                            low: self.seq(sender, low),
                            contiguous: self.seq(sender, contiguous),
                            high: self.seq(sender, high),
                            recent: self.seq(sender, recent),
                        }
                    })
                    .collect();
                es.extend((0..u32::from(invented)).map(|k| DigestEntry {
                    sender: 1_000_000 + k,
                    stream: k,
                    low: 0,
                    contiguous: u64::from(k % 3),
                    high: u64::from(k % 5),
                    recent: 0,
                }));
                es.truncate(e.remaining_body().saturating_sub(16) / 40);
                let h = DigestHeader {
                    group: GROUP,
                    round: round.unwrap_or(self.node.round()),
                    reserved: 0,
                };
                e.push_digest(&h, &es)
            }
            Shape::Request { round, ref entries } => {
                let es: Vec<RequestEntry> = entries
                    .iter()
                    .map(|&(w, st, first, count, frag)| {
                        let sender = self.who(w);
                        RequestEntry {
                            sender,
                            stream: self.stream(sender, st),
                            first: self.seq(sender, first),
                            count,
                            frag,
                        }
                    })
                    .collect();
                let h = RequestHeader {
                    group: GROUP,
                    round: round.unwrap_or(REQUEST_ROUND_GAP),
                    reserved: 0,
                };
                e.push_request(&h, &es)
            }
            Shape::Heartbeats {
                view_counter,
                coordinator,
                coordinator_incarnation,
                max_counter,
                ref entries,
                invented,
            } => {
                let mut es: Vec<HeartbeatEntry> = entries
                    .iter()
                    .map(|&(w, incarnation, heartbeat, flags)| HeartbeatEntry {
                        node: self.who(w),
                        incarnation,
                        heartbeat,
                        flags: flags % 3,
                    })
                    .collect();
                es.extend((0..u32::from(invented.0)).map(|k| HeartbeatEntry {
                    node: 2_000_000 + k,
                    incarnation: invented.1,
                    heartbeat: k,
                    flags: 0,
                }));
                es.truncate(e.remaining_body().saturating_sub(32) / 16);
                let h = HeartbeatHeader {
                    view_counter: self.counter(view_counter),
                    view_coordinator: self.who(coordinator),
                    view_coordinator_incarnation: coordinator_incarnation,
                    max_counter: self.counter(max_counter),
                    view_hash: 0,
                };
                e.push_heartbeats(&h, &es)
            }
            Shape::View {
                counter,
                coordinator,
                coordinator_incarnation,
                ref members,
                include_me,
                ref group,
            } => {
                let mut ms: Vec<MemberEntry> = members
                    .iter()
                    .map(|&(w, incarnation)| MemberEntry {
                        node: self.who(w),
                        incarnation,
                        addr: u64::from(incarnation) << 16 | 1,
                    })
                    .collect();
                if include_me {
                    ms.push(MemberEntry {
                        node: ME,
                        incarnation: 1,
                        addr: 0,
                    });
                }
                ms.sort_by_key(|m| m.node);
                ms.dedup_by_key(|m| m.node);
                let mut gm: Vec<ViewGroupMember> = Vec::new();
                if !ms.is_empty() {
                    for &(i, st) in group {
                        let index = u32::from(i) % ms.len() as u32;
                        let node = ms[index as usize].node;
                        gm.push(ViewGroupMember {
                            index,
                            stream: self.stream(node, st),
                        });
                    }
                }
                gm.sort_by_key(|m| m.index);
                gm.dedup_by_key(|m| m.index);
                let groups: Vec<(u64, &[ViewGroupMember])> = if gm.is_empty() {
                    Vec::new()
                } else {
                    vec![(GROUP, gm.as_slice())]
                };
                let parts = ViewParts::new(
                    self.counter(counter),
                    (self.who(coordinator), coordinator_incarnation),
                    &ms,
                    &groups,
                    e.remaining_body(),
                )?;
                for p in 0..parts.len() {
                    e.push_view_part(&parts, p)?;
                }
                Ok(())
            }
            Shape::ViewRequest(counter, coordinator, hash, parts, ref list) => e.push_view_request(
                &tutti_wire::packet::ViewRequestHeader {
                    counter,
                    coordinator,
                    coordinator_incarnation: 1,
                    hash,
                    parts,
                    count: 0,
                },
                list,
            ),
            Shape::GroupJoin(g, s) => e.push_group_join(g, s),
            Shape::GroupLeave(g) => e.push_group_leave(g),
        }
    }

    /// The datagram of `msgs` (those that encode) from `from`.
    fn datagram(&self, from: NodeId, incarnation: u32, msgs: &[Shape]) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let (mut len, mut count) = {
            let e = Encoder::new(&mut buf, from, incarnation).ok()?;
            (e.len(), e.count())
        };
        for m in msgs.iter().take(4) {
            let mut e = Encoder::resume(&mut buf, len, count).ok()?;
            if self.push(&mut e, m).is_ok() {
                (len, count) = (e.len(), e.count());
            }
            buf[6..8].copy_from_slice(&count.to_le_bytes());
        }
        if count == 0 {
            return None;
        }
        buf.truncate(len);
        Some(buf)
    }

    /// Drains what the last call produced; checks its size.
    fn drain(&mut self, messages: usize) {
        let s = self.node.settings().clone();
        let body = |header: usize, entry: usize| {
            (s.max_datagram - DATAGRAM_HEADER_LEN - MESSAGE_HEADER_LEN - header) / entry
        };
        let per_message = s.tree_fanout
            + 2 * (s.request_cap.div_ceil(body(16, 24)) + 1)
            + s.digest_entries.div_ceil(body(16, 40))
            + 1
            + 4 // our view in parts
            + 2;
        // A timeout: a gossip round (heartbeats, digests, views to members, repair requests).
        let bound = messages.max(8) * per_message + s.retransmit_budget_bytes / RETRANSMIT_OVERHEAD;
        let (mut datagrams, mut events) = (0usize, 0usize);
        while let Some(t) = self.node.poll_transmit() {
            datagrams += 1;
            assert!(t.payload.len() <= s.max_datagram, "datagram of {} bytes", t.payload.len());
        }
        assert!(datagrams <= bound, "one call made {datagrams} datagrams (bound {bound})");
        while let Some(e) = self.node.poll_event() {
            events += 1;
            if let Event::Lost {
                sender,
                stream,
                count,
                ..
            } = e
            {
                match self.lost.iter_mut().find(|l| l.0 == (sender, stream)) {
                    Some(l) => l.1 = l.1.saturating_add(count),
                    None => self.lost.push(((sender, stream), count)),
                }
            }
        }
        let window = s.max_window() as usize;
        assert!(
            events <= messages.max(1) * (window + 2),
            "one call made {events} events"
        );
        for &(node, stream, next) in &self.sent {
            if self.spoofed.contains(&node) {
                continue;
            }
            if let Some(l) = self.lost.iter().find(|l| l.0 == (node, stream)) {
                assert!(
                    l.1 <= next + window as u64,
                    "told {} messages of {node}/{stream} Lost; it sent {next}",
                    l.1
                );
            }
        }
        let retained = self.node.retained_bytes();
        assert!(
            retained <= s.group_budget_bytes.min(s.node_budget_bytes),
            "retains {retained} bytes"
        );
        let state = self.node.state_bytes();
        assert!(
            state <= s.node_budget_bytes + STATE_ALLOWANCE,
            "holds {state} bytes of state"
        );
    }
}

/// Node 1 in view 1 of nodes 0, 1, 2 (coordinator 0), all three in `GROUP`, with
/// `HISTORY` messages from each peer received.
fn setup() -> World {
    let s = settings();
    let mut node = Node::new(ME, 1, &[0], s, 0, 7);
    node.join(0, GROUP);
    let mine = node.stream(GROUP).unwrap_or(1);
    let members = [(0u32, 1u32), (ME, 1), (2, 1)].map(|(node, incarnation)| MemberEntry {
        node,
        incarnation,
        addr: 0,
    });
    let gm = [
        ViewGroupMember { index: 0, stream: 11 },
        ViewGroupMember { index: 1, stream: mine },
        ViewGroupMember { index: 2, stream: 22 },
    ];
    let groups = [(GROUP, &gm[..])];
    let parts = ViewParts::new(1, (0, 1), &members, &groups, 1400).expect("a small view");
    let mut world = World {
        node,
        now: MILLIS,
        sent: [(0, 11, HISTORY), (2, 22, HISTORY)],
        lost: Vec::new(),
        spoofed: Vec::new(),
    };
    let send = |w: &mut World, from: NodeId, f: &dyn Fn(&mut Encoder<'_>) -> Result<(), PacketError>| {
        let mut buf = vec![0u8; 1472];
        let mut e = Encoder::new(&mut buf, from, 1).expect("header");
        f(&mut e).expect("fits");
        let len = e.len();
        w.node.handle_packet(w.now, from, &buf[..len]);
        while w.node.poll_transmit().is_some() {}
        while w.node.poll_event().is_some() {}
    };
    send(&mut world, 0, &|e| e.push_view_part(&parts, 0));
    for (peer, stream) in PEER_STREAMS {
        for seq in 0..HISTORY {
            let h = DataHeader {
                group: GROUP,
                seq,
                sender: peer,
                stream,
                retained: seq as u32,
                session: 1,
                frag_index: 0,
                frag_count: 1,
            };
            send(&mut world, peer, &|e| e.push_data(&h, false, b"history"));
        }
    }
    // The setup is fixed: a broken one would make every input look alike.
    let v = world.node.view().clone();
    assert_eq!((v.id.counter, v.members.len()), (1, 3), "setup view not installed");
    assert_eq!(v.group(GROUP).map(<[NodeId]>::len), Some(3), "setup group");
    assert_eq!(world.node.counters().delivered, 2 * HISTORY, "setup history delivered");
    world
}

fuzz_target!(|actions: Vec<Action>| {
    let mut w = setup();
    for a in actions.iter().take(64) {
        match a {
            Action::Packet {
                from,
                incarnation,
                msgs,
            } => {
                let from = w.who(*from);
                if PEER_STREAMS.iter().any(|p| p.0 == from) && !w.spoofed.contains(&from) {
                    w.spoofed.push(from);
                }
                let Some(bytes) = w.datagram(from, *incarnation, msgs) else {
                    continue;
                };
                let now = w.now;
                w.node.handle_packet(now, from, &bytes);
                w.drain(msgs.len().min(4));
            }
            Action::Timeout(ms) => {
                w.now += Time::from(*ms) * MILLIS / 4;
                let now = w.now;
                w.node.handle_timeout(now);
                w.drain(0);
            }
            Action::Publish(n) => {
                let now = w.now;
                for _ in 0..(n % 8) {
                    let _ = w.node.submit(now, GROUP, 1, b"ours");
                }
                w.drain(usize::from(n % 8));
            }
        }
    }
});
