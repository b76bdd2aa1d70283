//! Invariant checkers, fed every send, delivery, loss report and view installation of a
//! run (and usable on a hand-made history, which is how they are tested).

use std::collections::HashMap;
use tutti_proto::{Member, NodeId, Time, View, ViewId};

/// A node instance: a node in one incarnation (a restart starts a new instance).
pub type Instance = (NodeId, u32);

#[derive(Debug, Clone)]
pub struct SentMessage {
    pub sender: NodeId,
    /// The sender's instance (incarnation) when it sent the message.
    pub sender_incarnation: u32,
    /// The stream the message was sent in.
    pub stream: u32,
    pub group: u64,
    pub seq: u64,
    pub payload_hash: u64,
    pub sent_at: Time,
    /// Instances (other than the sender) that delivered it.
    pub deliveries: u32,
    pub last_delivery: Time,
}

pub fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The payload the simulator sends as message `index`: the index, then filler bytes that
/// depend on it, so a corrupted or invented payload is caught.
pub fn make_payload(index: u64, len: usize) -> Vec<u8> {
    let mut p = index.to_le_bytes().to_vec();
    let mut x = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while p.len() < len.max(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p.push(x as u8);
    }
    p
}

/// Identity of a delivered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageId {
    pub group: u64,
    pub sender: NodeId,
    pub stream: u32,
    pub seq: u64,
}

#[derive(Debug, Default)]
pub struct Checker {
    pub fifo: bool,
    pub sent: Vec<SentMessage>,
    delivered: HashMap<Instance, Vec<u64>>,
    expected_next: HashMap<(Instance, NodeId, u32), u64>,
    views: HashMap<ViewId, u64>,
    /// Per instance, per group it was in: since when every view it installed listed it in
    /// the group (None: the last one did not).
    group_member: HashMap<Instance, Vec<(u64, Option<Time>)>>,
    /// `Lost` ranges `(first, end)` reported to an instance, per sender instance.
    lost_ranges: HashMap<(Instance, NodeId, u32), Vec<(u64, u64)>>,
    pub violations: u64,
    pub messages: Vec<String>,
    pub deliveries: u64,
    pub lost_reports: u64,
}

impl Checker {
    pub fn new(fifo: bool) -> Self {
        Checker {
            fifo,
            ..Default::default()
        }
    }

    pub fn violation(&mut self, what: String) {
        self.violations += 1;
        if self.messages.len() < 50 {
            self.messages.push(what);
        }
    }

    /// Record a submitted message; returns its index (carried in its payload).
    pub fn on_send(&mut self, m: SentMessage) -> u64 {
        self.sent.push(m);
        (self.sent.len() - 1) as u64
    }

    pub fn on_deliver(&mut self, at: Instance, now: Time, id: MessageId, payload: &[u8]) {
        let MessageId {
            group,
            sender,
            stream,
            seq,
        } = id;
        self.deliveries += 1;
        // No message delivered that was never sent (identity and content).
        let index = payload
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes);
        let Some(m) = index.and_then(|i| self.sent.get(i as usize)) else {
            self.violation(format!("{at:?} delivered a message never sent ({sender}/{seq})"));
            return;
        };
        if m.sender != sender
            || m.stream != stream
            || m.seq != seq
            || m.group != group
            || m.payload_hash != fnv(payload)
        {
            self.violation(format!(
                "{at:?} delivered {sender}/{stream}/{seq} whose payload or identity differs from what was sent"
            ));
            return;
        }
        let index = index.unwrap_or_default() as usize;
        // No duplicate delivery (per instance).
        let bits = self.delivered.entry(at).or_default();
        let (w, b) = (index / 64, index % 64);
        if bits.len() <= w {
            bits.resize(w + 1, 0);
        }
        if bits[w] & (1 << b) != 0 {
            self.violation(format!("{at:?} delivered {sender}/{seq} twice"));
            return;
        }
        bits[w] |= 1 << b;
        // FIFO per sender: each delivery is the next seq, or follows a Lost report.
        if self.fifo {
            let key = (at, sender, stream);
            if let Some(&exp) = self.expected_next.get(&key) {
                if seq != exp {
                    self.violation(format!(
                        "{at:?} delivered {sender}/{seq} out of FIFO order (expected {exp})"
                    ));
                }
            }
            self.expected_next.insert(key, seq + 1);
        }
        if at.0 == sender {
            self.violation(format!(
                "{at:?} was delivered its own message {sender}/{stream}/{seq}"
            ));
        } else {
            let m = &mut self.sent[index];
            m.deliveries += 1;
            m.last_delivery = m.last_delivery.max(now);
        }
    }

    pub fn on_lost(&mut self, at: Instance, sender: NodeId, stream: u32, first: u64, count: u64) {
        self.lost_reports += count;
        self.lost_ranges
            .entry((at, sender, stream))
            .or_default()
            .push((first, first.saturating_add(count)));
        if count == 0 {
            self.violation(format!("{at:?} reported an empty loss"));
        }
        if self.fifo {
            let key = (at, sender, stream);
            if let Some(&exp) = self.expected_next.get(&key) {
                if first != exp {
                    self.violation(format!(
                        "{at:?} reported {sender}/{first}+{count} lost, expected next {exp}"
                    ));
                }
            }
            self.expected_next.insert(key, first + count);
        }
    }

    /// Every member of a view agrees on it: one membership per view id, and the
    /// installing node is in it.
    pub fn on_view(&mut self, at: Instance, view: &View) {
        let me = Member {
            node: at.0,
            incarnation: at.1,
        };
        if !view.contains(me) {
            self.violation(format!("{at:?} installed view {:?} without being in it", view.id));
        }
        let mut h = Vec::with_capacity(view.members.len() * 8);
        for m in &view.members {
            h.extend_from_slice(&m.node.to_le_bytes());
            h.extend_from_slice(&m.incarnation.to_le_bytes());
        }
        let hash = fnv(&h);
        match self.views.get(&view.id) {
            Some(&prev) if prev != hash => {
                self.violation(format!("view {:?} installed with two memberships", view.id))
            }
            _ => {
                self.views.insert(view.id, hash);
            }
        }
    }

    /// A view installed at `at` at time `now`: as `on_view`, and tracks the instance's
    /// group membership for `check_delivered_or_lost`.
    pub fn on_view_at(&mut self, at: Instance, now: Time, view: &View) {
        self.on_view(at, view);
        let entries = self.group_member.entry(at).or_default();
        for gv in &view.groups {
            if gv.members.contains(&at.0) && !entries.iter().any(|e| e.0 == gv.id) {
                entries.push((gv.id, None));
            }
        }
        for e in entries.iter_mut() {
            if !view.group(e.0).is_some_and(|ms| ms.contains(&at.0)) {
                e.1 = None;
            } else if e.1.is_none() {
                e.1 = Some(now);
            }
        }
    }

    /// Bimodal multicast's promise, checked at the end of a run: a member `M` that is alive
    /// at the end and was in group g continuously from before sender `S`'s first message
    /// in g (across partitions that healed), with `S` alive at the end too, has every
    /// message of `S` either delivered or covered by a `Lost` reported to it. Never a
    /// silent gap. (A crashed sender's last messages may have reached no one: not checked.)
    pub fn check_delivered_or_lost(&mut self, live: &[Instance]) {
        let mut first_sent: HashMap<(NodeId, u32, u64), Time> = HashMap::new();
        for m in &self.sent {
            let t = first_sent
                .entry((m.sender, m.stream, m.group))
                .or_insert(m.sent_at);
            *t = (*t).min(m.sent_at);
        }
        // (member, sender instance) -> (silent messages, first such seq)
        let mut silent: HashMap<(Instance, Instance), (u64, u64)> = HashMap::new();
        for (idx, m) in self.sent.iter().enumerate() {
            let s = (m.sender, m.sender_incarnation);
            if !live.contains(&s) {
                continue;
            }
            let first = first_sent[&(m.sender, m.stream, m.group)];
            for &at in live {
                if at.0 == m.sender {
                    continue;
                }
                let member_before = self
                    .group_member
                    .get(&at)
                    .and_then(|es| es.iter().find(|e| e.0 == m.group))
                    .and_then(|e| e.1)
                    .is_some_and(|since| since < first);
                if !member_before || self.has(at, idx) {
                    continue;
                }
                let covered = self
                    .lost_ranges
                    .get(&(at, m.sender, m.stream))
                    .is_some_and(|rs| rs.iter().any(|&(f, e)| f <= m.seq && m.seq < e));
                if !covered {
                    let e = silent.entry((at, s)).or_insert((0, m.seq));
                    e.0 += 1;
                    e.1 = e.1.min(m.seq);
                }
            }
        }
        let mut silent: Vec<_> = silent.into_iter().collect();
        silent.sort_unstable();
        for ((at, s), (count, seq)) in silent {
            self.violation(format!(
                "{at:?} neither delivered nor was told Lost of {count} messages of {s:?} \
                 (first seq {seq}), though a group member since before its first message"
            ));
        }
    }

    /// Whether `at` delivered message `index`.
    pub fn has(&self, at: Instance, index: usize) -> bool {
        self.delivered
            .get(&at)
            .and_then(|b| b.get(index / 64))
            .is_some_and(|w| w & (1 << (index % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tutti_proto::ViewId;

    fn mid(group: u64, sender: NodeId, stream: u32, seq: u64) -> MessageId {
        MessageId {
            group,
            sender,
            stream,
            seq,
        }
    }

    fn send(c: &mut Checker, seq: u64) -> Vec<u8> {
        let idx = c.sent.len() as u64;
        let p = make_payload(idx, 16);
        c.on_send(SentMessage {
            sender: 1,
            sender_incarnation: 1,
            stream: 1,
            group: 7,
            seq,
            payload_hash: fnv(&p),
            sent_at: 0,
            deliveries: 0,
            last_delivery: 0,
        });
        p
    }

    #[test]
    fn good_history_passes() {
        let mut c = Checker::new(true);
        let p0 = send(&mut c, 0);
        let _p1 = send(&mut c, 1);
        let p2 = send(&mut c, 2);
        c.on_deliver((2, 1), 0, mid(7, 1, 1, 0), &p0);
        c.on_lost((2, 1), 1, 1, 1, 1);
        c.on_deliver((2, 1), 0, mid(7, 1, 1, 2), &p2);
        assert_eq!(c.violations, 0, "{:?}", c.messages);
    }

    #[test]
    fn duplicate_is_reported() {
        let mut c = Checker::new(true);
        let p = send(&mut c, 0);
        c.on_deliver((2, 1), 0, mid(7, 1, 1, 0), &p);
        c.on_deliver((2, 1), 0, mid(7, 1, 1, 0), &p);
        assert!(c.violations >= 1);
    }

    #[test]
    fn fifo_violation_is_reported() {
        let mut c = Checker::new(true);
        let p0 = send(&mut c, 0);
        let p1 = send(&mut c, 1);
        c.on_deliver((2, 1), 0, mid(7, 1, 1, 1), &p1);
        assert_eq!(c.violations, 0);
        c.on_deliver((2, 1), 0, mid(7, 1, 1, 0), &p0);
        assert_eq!(c.violations, 1);
        // A gap without a Lost report is a FIFO violation too.
        let mut c = Checker::new(true);
        let p0 = send(&mut c, 0);
        let _ = send(&mut c, 1);
        let p2 = send(&mut c, 2);
        c.on_deliver((2, 1), 0, mid(7, 1, 1, 0), &p0);
        c.on_deliver((2, 1), 0, mid(7, 1, 1, 2), &p2);
        assert_eq!(c.violations, 1);
    }

    #[test]
    fn phantom_and_corrupt_deliveries_are_reported() {
        let mut c = Checker::new(false);
        let p = send(&mut c, 0);
        c.on_deliver((2, 1), 0, mid(7, 1, 1, 0), &make_payload(99, 16));
        assert_eq!(c.violations, 1);
        let mut bad = p.clone();
        bad[10] ^= 1;
        c.on_deliver((2, 1), 0, mid(7, 1, 1, 0), &bad);
        assert_eq!(c.violations, 2);
        c.on_deliver((2, 1), 0, mid(7, 3, 1, 0), &p);
        assert_eq!(c.violations, 3);
        c.on_deliver((2, 1), 0, mid(7, 1, 1, 0), b"abc");
        assert_eq!(c.violations, 4);
    }

    /// A member in the group since before a sender's first message that neither got a
    /// message nor was told it is lost: a silent gap, reported once per (member, sender).
    #[test]
    fn silent_gap_is_reported() {
        let mut c = Checker::new(true);
        let view = View {
            id: ViewId {
                counter: 1,
                coordinator: 1,
                coordinator_incarnation: 1,
            },
            members: vec![
                Member {
                    node: 1,
                    incarnation: 1,
                },
                Member {
                    node: 2,
                    incarnation: 1,
                },
            ],
            groups: vec![tutti_proto::GroupView {
                id: 7,
                members: vec![1, 2],
                streams: vec![1, 1],
            }],
        };
        c.on_view_at((2, 1), 0, &view);
        let p0 = send(&mut c, 0);
        let _ = send(&mut c, 1);
        let _ = send(&mut c, 2);
        let _ = send(&mut c, 3);
        c.on_deliver((2, 1), 0, mid(7, 1, 1, 0), &p0);
        c.on_lost((2, 1), 1, 1, 1, 2);
        c.check_delivered_or_lost(&[(1, 1), (2, 1)]);
        assert_eq!(c.violations, 0, "{:?}", c.messages);
        // Seq 3 is neither: caught once the member was in the group before the first send
        // (above, both at time 0, it was not checked).
        c.sent.iter_mut().for_each(|m| m.sent_at = 5);
        c.check_delivered_or_lost(&[(1, 1), (2, 1)]);
        assert_eq!(c.violations, 1, "{:?}", c.messages);
    }

    #[test]
    fn view_disagreement_is_reported() {
        let mut c = Checker::new(true);
        let id = ViewId {
            counter: 3,
            coordinator: 1,
            coordinator_incarnation: 1,
        };
        let m = |n| Member {
            node: n,
            incarnation: 1,
        };
        c.on_view(
            (1, 1),
            &View {
                id,
                members: vec![m(1), m(2)],
                groups: vec![],
            },
        );
        assert_eq!(c.violations, 0);
        c.on_view(
            (2, 1),
            &View {
                id,
                members: vec![m(1), m(2), m(3)],
                groups: vec![],
            },
        );
        assert_eq!(c.violations, 1);
        c.on_view(
            (5, 1),
            &View {
                id,
                members: vec![m(1), m(2)],
                groups: vec![],
            },
        );
        assert_eq!(c.violations, 2);
    }
}
