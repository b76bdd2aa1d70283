//! Invariant checkers, fed every send, delivery, loss report and view installation of a
//! run (and usable on a hand-made history, which is how they are tested).

use std::collections::HashMap;
use tutti_proto::{Member, NodeId, Time, View, ViewId};

/// A node instance: a node in one incarnation (a restart starts a new instance).
pub type Instance = (NodeId, u32);

#[derive(Debug, Clone)]
pub struct SentMessage {
    pub sender: NodeId,
    pub sender_incarnation: u32,
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
    pub sender_incarnation: u32,
    pub seq: u64,
}

#[derive(Debug, Default)]
pub struct Checker {
    pub fifo: bool,
    pub sent: Vec<SentMessage>,
    delivered: HashMap<Instance, Vec<u64>>,
    expected_next: HashMap<(Instance, NodeId, u32), u64>,
    views: HashMap<ViewId, u64>,
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
            sender_incarnation,
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
            || m.sender_incarnation != sender_incarnation
            || m.seq != seq
            || m.group != group
            || m.payload_hash != fnv(payload)
        {
            self.violation(format!(
                "{at:?} delivered {sender}/{sender_incarnation}/{seq} whose payload or identity differs from what was sent"
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
            let key = (at, sender, sender_incarnation);
            if let Some(&exp) = self.expected_next.get(&key) {
                if seq != exp {
                    self.violation(format!(
                        "{at:?} delivered {sender}/{seq} out of FIFO order (expected {exp})"
                    ));
                }
            }
            self.expected_next.insert(key, seq + 1);
        }
        if at.0 != sender || at.1 != sender_incarnation {
            let m = &mut self.sent[index];
            m.deliveries += 1;
            m.last_delivery = m.last_delivery.max(now);
        }
    }

    pub fn on_lost(&mut self, at: Instance, sender: NodeId, sender_incarnation: u32, first: u64, count: u64) {
        self.lost_reports += count;
        if count == 0 {
            self.violation(format!("{at:?} reported an empty loss"));
        }
        if self.fifo {
            let key = (at, sender, sender_incarnation);
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

    fn mid(group: u64, sender: NodeId, sender_incarnation: u32, seq: u64) -> MessageId {
        MessageId {
            group,
            sender,
            sender_incarnation,
            seq,
        }
    }

    fn send(c: &mut Checker, seq: u64) -> Vec<u8> {
        let idx = c.sent.len() as u64;
        let p = make_payload(idx, 16);
        c.on_send(SentMessage {
            sender: 1,
            sender_incarnation: 1,
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
