//! Invariants of ordered groups, fed every ordered delivery, view change, snapshot and
//! installation of a run (by `crate::ordered`), and usable on a hand-made history.
//!
//! Checked as the run goes:
//! - **total order**: every member delivers a message at the same place of the order
//!   (its list position and its index in that entry), and each member's deliveries go
//!   strictly forward;
//! - **sender FIFO**: a member delivers a sender's messages in the order they were
//!   submitted, without a gap (from the first it delivers, and from the sender's join);
//! - **virtual synchrony**: members that delivered view v and v + 1 delivered the same
//!   set of messages in v; every member's application state is the same at every view
//!   position;
//! - **state transfer**: a joiner's installed snapshot equals the producer's state at the
//!   cut (and every member's state there); after a restart (an empty snapshot: the
//!   group's state was lost), the restarter's state is the empty one and no member's
//!   state may exist at that position.
//!
//! Checked at the end ([`OrderedChecker::check_liveness`]): every message of a surviving
//! sender and every message anyone delivered is delivered by every surviving member
//! that joined before it, and all survivors end in the same state.

use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use tutti_proto::NodeId;

/// A message as the simulator names it: (group, sender, the sender application's seq).
pub type MsgKey = (u64, NodeId, u64);

/// Violations by check.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ViolationCounts {
    pub total_order: u64,
    pub fifo: u64,
    pub virtual_synchrony: u64,
    pub state_transfer: u64,
    pub liveness: u64,
    pub datagram: u64,
    /// Application regions (`OrderedScenario::regions`): two committed increments of the
    /// shared counter from the same value, a region found missing after it was created,
    /// nodes that disagree on where the regions' memory node is.
    pub regions: u64,
}

impl ViolationCounts {
    pub fn total(&self) -> u64 {
        self.total_order
            + self.fifo
            + self.virtual_synchrony
            + self.state_transfer
            + self.liveness
            + self.datagram
            + self.regions
    }
}

/// One member's application in one group (a rejoin starts a new one).
#[derive(Debug, Clone, Default)]
pub struct AppState {
    /// Hash chain of the messages delivered (or installed by a snapshot).
    pub state: u64,
    pub delivered: u64,
    /// Where it stands: the last (position, index in entry) delivered.
    last: Option<(u64, u32)>,
    last_seq: HashMap<NodeId, u64>,
    /// Current view: (id, start position), and the messages delivered in it (count, xor).
    view: Option<(u64, u64)>,
    in_view: (u64, u64),
    /// The position of its own join (0 for the creator).
    pub joined_at: Option<u64>,
    pub delivered_keys: Vec<MsgKey>,
}

#[derive(Default)]
pub struct OrderedChecker {
    pub violations: ViolationCounts,
    pub samples: Vec<String>,
    /// Where each message was delivered first: (position, index in its entry).
    place: HashMap<MsgKey, (u64, u32)>,
    /// Messages delivered in view (group, start, end): (count, xor) as first recorded.
    view_sets: HashMap<(u64, u64, u64), (u64, u64)>,
    /// Application state at (group, view position).
    state_at: HashMap<(u64, u64), u64>,
    pub deliveries: u64,
    pub installs: u64,
    /// Restarts: `Installed` with an empty snapshot (the group's state was lost).
    pub restarts: u64,
    pub views: u64,
}

pub fn msg_hash(k: &MsgKey) -> u64 {
    let mut z = k.0 ^ u64::from(k.1).rotate_left(32) ^ k.2.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl OrderedChecker {
    fn fail(&mut self, which: fn(&mut ViolationCounts) -> &mut u64, what: String) {
        *which(&mut self.violations) += 1;
        if self.samples.len() < 20 {
            self.samples.push(what);
        }
    }

    /// Messages delivered somewhere (each once).
    pub fn distinct_messages(&self) -> u64 {
        self.place.len() as u64
    }

    pub fn datagram_too_large(&mut self, len: usize, max: usize) {
        self.fail(
            |v| &mut v.datagram,
            format!("datagram of {len} bytes exceeds max_datagram {max}"),
        );
    }

    /// `who` delivered `key` at `position`.
    pub fn on_deliver(&mut self, who: NodeId, app: &mut AppState, key: MsgKey, position: u64) {
        self.deliveries += 1;
        let place = match app.last {
            Some((p, i)) if p == position => (position, i + 1),
            _ => (position, 0),
        };
        if let Some(last) = app.last {
            if place <= last {
                self.fail(
                    |v| &mut v.total_order,
                    format!("node {who}: {key:?} at {place:?} does not follow {last:?}"),
                );
            }
        }
        app.last = Some(place);
        match self.place.get(&key) {
            Some(&first) if first != place => self.fail(
                |v| &mut v.total_order,
                format!("node {who}: {key:?} delivered at {place:?}, elsewhere at {first:?}"),
            ),
            Some(_) => {}
            None => {
                self.place.insert(key, place);
            }
        }
        if let Some(&l) = app.last_seq.get(&key.1) {
            if key.2 != l + 1 {
                self.fail(
                    |v| &mut v.fifo,
                    format!("node {who}: sender {} seq {} after {l}", key.1, key.2),
                );
            }
        }
        app.last_seq.insert(key.1, key.2);
        app.state = chain(app.state, msg_hash(&key));
        app.delivered += 1;
        app.in_view.0 += 1;
        app.in_view.1 ^= msg_hash(&key);
        app.delivered_keys.push(key);
    }

    /// `who`'s view of `group` changed to `id` at `position`; `joined` names a new member.
    pub fn on_view(
        &mut self,
        who: NodeId,
        app: &mut AppState,
        group: u64,
        id: u64,
        position: u64,
        joined: Option<NodeId>,
    ) {
        self.views += 1;
        if let Some((_, start)) = app.view {
            let set = app.in_view;
            match self.view_sets.get(&(group, start, position)) {
                Some(&s) if s != set => self.fail(
                    |v| &mut v.virtual_synchrony,
                    format!(
                        "node {who}: group {group:#x} view [{start}, {position}) delivered {} messages, another member {}",
                        set.0, s.0
                    ),
                ),
                Some(_) => {}
                None => {
                    self.view_sets.insert((group, start, position), set);
                }
            }
        }
        if let Some(n) = joined {
            // A (re)joined sender's seqs restart where its new membership starts.
            app.last_seq.remove(&n);
        }
        app.view = Some((id, position));
        app.in_view = (0, 0);
        self.state_agrees(who, app.state, group, position, "view");
    }

    fn state_agrees(&mut self, who: NodeId, state: u64, group: u64, position: u64, what: &str) {
        match self.state_at.get(&(group, position)) {
            Some(&s) if s != state => {
                let which: fn(&mut ViolationCounts) -> &mut u64 = if what == "installed" {
                    |v| &mut v.state_transfer
                } else {
                    |v| &mut v.virtual_synchrony
                };
                self.fail(
                    which,
                    format!("node {who}: group {group:#x} state at {position} ({what}) {state:#x}, another member {s:#x}"),
                )
            }
            Some(_) => {}
            None => {
                self.state_at.insert((group, position), state);
            }
        }
    }

    /// Snapshot bytes for `app` (its state, then filler that depends on it so that a
    /// transfer spans several datagrams).
    pub fn snapshot_of(app: &AppState, filler: usize) -> Vec<u8> {
        let mut b = app.state.to_le_bytes().to_vec();
        b.extend_from_slice(&app.delivered.to_le_bytes());
        let mut x = app.state | 1;
        for _ in 0..filler {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.push(x as u8);
        }
        b
    }

    /// `who` installed `snapshot` taken at `position`.
    pub fn on_installed(
        &mut self,
        who: NodeId,
        app: &mut AppState,
        group: u64,
        position: u64,
        snapshot: &[u8],
    ) {
        if snapshot.is_empty() {
            // The restart rule: the group starts again from the empty state at `position`
            // (an application snapshot is never empty: `snapshot_of`). No member's state
            // may be recorded there (a member that delivered up to it was removed before).
            self.restarts += 1;
            if let Some(&s) = self.state_at.get(&(group, position)) {
                self.fail(
                    |v| &mut v.state_transfer,
                    format!("node {who}: group {group:#x} restarted at {position}, where a member's state is {s:#x}"),
                );
            }
            *app = AppState::default();
            app.joined_at = Some(position);
            app.last = Some((position, u32::MAX - 1));
            self.state_at.entry((group, position)).or_insert(app.state);
            return;
        }
        self.installs += 1;
        let state = snapshot
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes);
        let Some(state) = state else {
            self.fail(
                |v| &mut v.state_transfer,
                format!("node {who}: snapshot of {} bytes", snapshot.len()),
            );
            return;
        };
        let filler = snapshot.len().saturating_sub(16);
        let expect = OrderedChecker::snapshot_of(
            &AppState {
                state,
                delivered: snapshot
                    .get(8..16)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u64::from_le_bytes),
                ..AppState::default()
            },
            filler,
        );
        if expect != snapshot {
            self.fail(
                |v| &mut v.state_transfer,
                format!("node {who}: snapshot bytes altered"),
            );
        }
        app.state = state;
        app.joined_at = Some(position);
        app.last = Some((position, u32::MAX - 1));
        self.state_agrees(who, state, group, position, "installed");
    }

    /// At the end: `apps` are the surviving members of `group` (their applications);
    /// `owed` the messages of surviving senders that must be in the order.
    pub fn check_liveness(&mut self, group: u64, apps: &[(NodeId, &AppState)], owed: &[MsgKey]) {
        let mut placed: BTreeMap<(u64, u32), MsgKey> = BTreeMap::new();
        for (k, p) in &self.place {
            if k.0 == group {
                placed.insert(*p, *k);
            }
        }
        for k in owed {
            if !self.place.contains_key(k) {
                self.fail(
                    |v| &mut v.liveness,
                    format!("group {group:#x}: {k:?} of a live sender never delivered"),
                );
            }
        }
        for (who, app) in apps {
            let from = app.joined_at.unwrap_or(0);
            let have: std::collections::HashSet<&MsgKey> = app.delivered_keys.iter().collect();
            let missing = placed
                .iter()
                .filter(|(p, k)| p.0 > from && !have.contains(k))
                .count();
            if missing > 0 {
                self.fail(
                    |v| &mut v.liveness,
                    format!("group {group:#x}: node {who} misses {missing} messages delivered elsewhere"),
                );
            }
        }
        if let Some((first, a)) = apps.first() {
            for (who, b) in apps.iter().skip(1) {
                if a.state != b.state {
                    self.fail(
                        |v| &mut v.liveness,
                        format!("group {group:#x}: nodes {first} and {who} end in different states"),
                    );
                }
            }
        }
    }
}

fn chain(state: u64, h: u64) -> u64 {
    (state ^ h).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(7)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_check_fires_on_a_bad_history() {
        // Total order: two members deliver two messages in opposite orders.
        let mut c = OrderedChecker::default();
        let (mut a, mut b) = (AppState::default(), AppState::default());
        c.on_deliver(1, &mut a, (7, 1, 0), 3);
        c.on_deliver(1, &mut a, (7, 2, 0), 4);
        c.on_deliver(2, &mut b, (7, 2, 0), 3);
        assert!(c.violations.total_order > 0);
        // FIFO: a gap.
        let mut c = OrderedChecker::default();
        let mut a = AppState::default();
        c.on_deliver(1, &mut a, (7, 1, 0), 3);
        c.on_deliver(1, &mut a, (7, 1, 2), 4);
        assert_eq!(c.violations.fifo, 1);
        // Virtual synchrony: different sets between the same views.
        let mut c = OrderedChecker::default();
        let (mut a, mut b) = (AppState::default(), AppState::default());
        c.on_view(1, &mut a, 7, 1, 0, None);
        c.on_view(2, &mut b, 7, 1, 0, None);
        c.on_deliver(1, &mut a, (7, 1, 0), 1);
        c.on_view(1, &mut a, 7, 2, 5, None);
        c.on_view(2, &mut b, 7, 2, 5, None);
        assert!(c.violations.virtual_synchrony > 0);
        // State transfer: a snapshot unlike the state at the cut.
        let mut c = OrderedChecker::default();
        let (mut a, mut j) = (AppState::default(), AppState::default());
        c.on_deliver(1, &mut a, (7, 1, 0), 1);
        c.on_view(1, &mut a, 7, 2, 5, Some(9));
        let bad = OrderedChecker::snapshot_of(&AppState::default(), 4);
        c.on_installed(9, &mut j, 7, 5, &bad);
        assert_eq!(c.violations.state_transfer, 1);
        // Restart: an empty state where a member's state is recorded.
        let mut c = OrderedChecker::default();
        let (mut a, mut j) = (AppState::default(), AppState::default());
        c.on_deliver(1, &mut a, (7, 1, 0), 1);
        c.on_view(1, &mut a, 7, 2, 5, None);
        c.on_installed(9, &mut j, 7, 5, &[]);
        assert_eq!((c.violations.state_transfer, c.restarts), (1, 1));
        // Liveness: an owed message never delivered.
        let mut c = OrderedChecker::default();
        let a = AppState::default();
        c.check_liveness(7, &[(1, &a)], &[(7, 1, 0)]);
        assert_eq!(c.violations.liveness, 1);
    }
}
