//! One regression test per network attack of issue 9 ("every field from the network is
//! bounded before use"): an honest 4-node cluster, an attacker injecting one kind of
//! well-formed but malicious datagram, and the property the attack breaks. The attacker
//! is either an outsider (`ATTACKER`, an id no honest node has) or an insider: an honest
//! member's id (as an authenticated member sending as itself would).

mod common;

use common::*;
use tutti_proto::{Member, Node, NodeId, MILLIS};
use tutti_wire::packet::{DigestEntry, HeartbeatEntry, HeartbeatHeader, RequestEntry, REQUEST_ROUND_GAP};

/// A counter of `Node::counters()` by name, read from its `Debug` form: for counters the
/// hardening is to add (a test naming one compiles before it exists, and fails saying so).
fn counter_named(node: &Node, name: &str) -> Option<u64> {
    let dbg = format!("{:?}", node.counters());
    let at = dbg.find(&format!("{name}: "))? + name.len() + 2;
    dbg[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// In a 4-node cluster, insider node 3 relays to the coordinator (node 0) a heartbeat
/// entry about node 2 in `incarnation`, at `heartbeat`, with `flags`: the cluster, and
/// whether every view converged again within 3 s.
fn third_party_claim_about_node_2(incarnation: u32, heartbeat: u32, flags: u32) -> (Cluster, bool) {
    let mut c = Cluster::new(4, settings());
    let claim = HeartbeatEntry {
        node: 2,
        incarnation,
        heartbeat,
        flags,
    };
    let h = heartbeat_header(&c, 0);
    c.inject(0, 3, &heartbeats(3, 1, h, &[claim]));
    c.run_for(200 * MILLIS);
    let ok = c.run_until(3_000 * MILLIS, |c| c.converged());
    (c, ok)
}

/// Node 1 publishes `k` messages; the cluster delivers them. Returns their ids.
fn publish_from_1(c: &mut Cluster, k: u64, tag: &str) -> Vec<(usize, u32, u64)> {
    let mut ids = Vec::new();
    for j in 0..k {
        let (stream, seq) = c.publish(1, format!("{tag}-{j}").as_bytes());
        ids.push((1, stream, seq));
    }
    ids
}

fn assert_clean(c: &Cluster) {
    assert!(
        c.violations.is_empty(),
        "honest invariants broken: {:?}",
        c.violations
    );
}

/// A `Request` entry with `count = u32::MAX` makes the member walk its whole window of the
/// stream (every slot up to `max_window`, `group_budget_bytes / 64`: a million with the
/// default budget), per entry and up to ~2,700 entries per datagram. A Request must walk
/// only what the member holds, capped per datagram. Work is not observable today, so this
/// test reads the counter the hardening should add: `Counters::request_slots_walked`
/// (slots examined while serving requests), and allows at most `2 * request_cap` per
/// request datagram.
#[test]
fn a_request_for_u32_max_messages_walks_a_bounded_number_of_slots() {
    let mut c = Cluster::new(4, settings());
    let ids = publish_from_1(&mut c, 10, "m");
    c.run_for(100 * MILLIS);
    assert!(c.all_delivered(&ids));
    let s1 = c.stream_of(1);
    let max_window = c.settings().max_window();
    // Insider node 3 widens node 2's window of node 1's stream to its limit (missing
    // slots), then asks for `u32::MAX` messages from seq 0, and from a huge seq.
    let widen = data(3, data_header(GROUP, 1, s1, 10 + max_window - 2), b"x");
    c.inject(2, 3, &widen);
    let n = max_entries(16, 24);
    let entries: Vec<RequestEntry> = (0..n)
        .map(|k| RequestEntry {
            sender: 1,
            stream: s1,
            first: if k % 2 == 0 { 0 } else { u64::MAX - k as u64 },
            count: u32::MAX,
            frag: 0,
        })
        .collect();
    let before = counter_named(&c.nodes[2], "request_slots_walked");
    let started = std::time::Instant::now();
    let out = c.inject(2, 3, &request(3, GROUP, REQUEST_ROUND_GAP, &entries));
    eprintln!(
        "one request datagram of {n} entries (count u32::MAX) over a window of {max_window} slots: \
         {:?} of CPU, {} datagrams out (informational, not asserted)",
        started.elapsed(),
        out.datagrams
    );
    let after = counter_named(&c.nodes[2], "request_slots_walked");
    let (Some(before), Some(after)) = (before, after) else {
        panic!(
            "Counters has no `request_slots_walked`: the work of serving a Request is unbounded \
             ({n} entries x {max_window} slots walked here) and not counted"
        );
    };
    let cap = 2 * c.settings().request_cap as u64;
    assert!(
        after - before <= cap,
        "one request datagram walked {} slots (at most {cap})",
        after - before
    );
}

/// A heartbeat with `max_counter = u64::MAX` is adopted, and the coordinator's `+= 1`
/// overflows (a panic in debug builds, a wrap to view 0 in release, after which no view is
/// ever newer). View changes must go on.
#[test]
fn a_heartbeat_with_max_counter_u64_max_does_not_freeze_view_changes() {
    let mut c = Cluster::new(4, settings());
    let h = HeartbeatHeader {
        max_counter: u64::MAX,
        ..heartbeat_header(&c, 0)
    };
    // Insider node 3 sends it to everyone (its own heartbeat entry, as usual).
    let entry = HeartbeatEntry {
        node: 3,
        incarnation: 1,
        heartbeat: 1_000,
        flags: 0,
    };
    for to in 0..3 {
        c.inject(to, 3, &heartbeats(3, 1, h, &[entry]));
    }
    c.run_for(200 * MILLIS);
    // A real change: node 3's application leaves the group.
    let now = c.now;
    c.nodes[3].leave(now, GROUP);
    let ok = c.run_until(3_000 * MILLIS, |c| {
        c.nodes.iter().all(|n| {
            n.view().id == c.nodes[0].view().id && n.view().group(GROUP).is_some_and(|g| !g.contains(&3))
        })
    });
    assert!(ok, "no view without node 3 in the group: {:?}", c.view_summary());
    for (i, vs) in c.views.iter().enumerate() {
        let counters: Vec<u64> = vs.iter().map(|v| v.id.counter).collect();
        assert!(
            counters.windows(2).all(|w| w[0] < w[1]),
            "node {i} installed view counters {counters:?}"
        );
    }
    assert_clean(&c);
}

/// A 4-node cluster in which node 1 published 5 messages, then insider node 3 forwarded
/// to node 2 a forged `Data` message of node 1's stream at `seq`: the cluster and that
/// stream.
fn forged_seq_from_a_forwarder(seq: u64) -> (Cluster, u32) {
    let mut c = Cluster::new(4, settings());
    publish_from_1(&mut c, 5, "before");
    c.run_for(100 * MILLIS);
    let s1 = c.stream_of(1);
    c.inject(2, 3, &data(3, data_header(GROUP, 1, s1, seq), b"forged"));
    (c, s1)
}

/// A `Data` message of node 1's stream with a seq near 2^62, forwarded by another member,
/// slides node 2's window there: ~2^62 messages reported `Lost` and every real message of
/// node 1 after it dropped as a duplicate.
#[test]
fn a_forged_seq_near_2_pow_62_from_a_forwarder_does_not_drop_later_messages() {
    let (mut c, s1) = forged_seq_from_a_forwarder(1 << 62);
    c.run_for(100 * MILLIS);
    let ids = publish_from_1(&mut c, 5, "after");
    c.run_for(500 * MILLIS);
    let missing = c.missing(&ids);
    assert!(
        missing.is_empty(),
        "real messages not delivered after the forgery (at, sender, seq): {missing:?}; node 2 was told \
         {} messages of node 1 Lost",
        c.lost_total(2, 1, s1)
    );
    assert_eq!(
        c.lost_total(2, 1, s1),
        0,
        "node 2 was told messages Lost that were never sent"
    );
    assert_clean(&c);
}

/// The same within the window: a forwarder announces a seq just ahead of what node 1
/// sent. The gap can never be repaired (node 1 never sent it), so it is reported `Lost`
/// after the retention, the window moves past it, and node 1's real messages with those
/// seqs, sent later, are dropped as duplicates. The sender's own digest says what it sent.
#[test]
fn a_forged_seq_slightly_ahead_does_not_make_later_real_messages_lost() {
    let (mut c, s1) = forged_seq_from_a_forwarder(5 + 20);
    // Node 1 is silent for longer than the retention.
    let retention = c.settings().gossip_period * u64::from(c.settings().retention_rounds);
    c.run_for(2 * retention);
    let ids = publish_from_1(&mut c, 30, "after");
    c.run_for(500 * MILLIS);
    let missing = c.missing(&ids);
    assert!(
        missing.is_empty(),
        "{} real messages not delivered (first (at, sender, seq): {:?}); node 2 was told {} messages \
         of node 1 Lost",
        missing.len(),
        missing.first(),
        c.lost_total(2, 1, s1)
    );
    assert_clean(&c);
}

/// Heartbeats naming 100,000 invented node ids: each becomes a peer (and would enter the
/// next view). The peer table must be bounded: node 0's state may not grow in proportion
/// (less than 16 bytes per invented id), and no invented id enters a view.
#[test]
fn heartbeats_naming_100k_invented_nodes_keep_the_peer_table_bounded() {
    let mut c = Cluster::new(4, settings());
    let h = heartbeat_header(&c, 0);
    let before = c.nodes[0].state_bytes();
    let per = max_entries(32, 16);
    let invented: Vec<HeartbeatEntry> = (0..100_000u32)
        .map(|k| HeartbeatEntry {
            node: 10_000 + k,
            incarnation: 1,
            heartbeat: 1,
            flags: 0,
        })
        .collect();
    for chunk in invented.chunks(per) {
        c.inject(0, ATTACKER, &heartbeats(ATTACKER, 1, h, chunk));
    }
    let grown = c.nodes[0].state_bytes().saturating_sub(before);
    assert!(
        grown < 16 * 100_000,
        "node 0's state grew by {grown} bytes for 100,000 invented node ids"
    );
    // Only with a bounded table: a view of 100,000 members would be sent to each of them.
    c.run_for(100 * MILLIS);
    let invented_in_view = c.nodes[0]
        .view()
        .members
        .iter()
        .filter(|m| m.node >= 10_000)
        .count();
    assert_eq!(invented_in_view, 0, "invented ids in node 0's view");
}

/// A heartbeat naming an invented node older than the coordinator (incarnation 0): the
/// coordinator waits for that "older live node outside the view" to merge it, forever
/// while the attacker keeps its heartbeat growing. Views must still change.
#[test]
fn an_invented_older_node_named_in_heartbeats_does_not_freeze_views() {
    let mut c = Cluster::new(4, settings());
    let now = c.now;
    c.nodes[3].leave(now, GROUP);
    let mut beat = 1;
    let ok = c.run_until(3_000 * MILLIS, |c| {
        c.nodes
            .iter()
            .all(|n| n.view().group(GROUP).is_some_and(|g| !g.contains(&3)))
    });
    // The honest baseline: without the attack the leave takes effect.
    assert!(
        ok,
        "baseline: node 3's leave did not take effect: {:?}",
        c.view_summary()
    );
    let now = c.now;
    c.nodes[3].join(now, GROUP);
    let joined = |c: &Cluster| {
        c.nodes
            .iter()
            .all(|n| n.view().group(GROUP).is_some_and(|g| g.contains(&3)))
    };
    // Now with the attack: node 3 joins again while insider node 2 keeps naming an invented
    // node 5,000 in incarnation 0 to the coordinator.
    let end = c.now + 3_000 * MILLIS;
    let mut done = false;
    let mut next_beat = c.now;
    while c.now < end {
        if c.now >= next_beat {
            next_beat += 20 * MILLIS;
            let h = heartbeat_header(&c, 0);
            beat += 1;
            let e = HeartbeatEntry {
                node: 5_000,
                incarnation: 0,
                heartbeat: beat,
                flags: 0,
            };
            c.inject(0, 2, &heartbeats(2, 1, h, &[e]));
        }
        c.step();
        if joined(&c) {
            done = true;
            break;
        }
    }
    assert!(
        done,
        "node 3's join never took effect while an invented older node was named: {:?}",
        c.view_summary()
    );
    assert_clean(&c);
}

/// Insider node 3 pushes a view naming itself coordinator (node 0, the real and older
/// coordinator, is alive): node 1 must not install it.
#[test]
fn a_view_pushed_by_a_non_coordinator_is_refused() {
    let mut c = Cluster::new(4, settings());
    let real = c.nodes[1].view().clone();
    let (members, entries) = view_layout(&c, 1);
    for d in view_datagrams(3, real.id.counter + 1, (3, 1), &members, &[(GROUP, entries)]) {
        c.inject(1, 3, &d);
    }
    assert_eq!(
        c.nodes[1].view().id,
        real.id,
        "node 1 installed a view that node 3 (not the coordinator) made"
    );
    assert_clean(&c);
}

/// Insider node 3 sends node 1 a view that claims the real coordinator (node 0) and a
/// higher counter, and drops node 2. Views must be accepted only from their coordinator.
#[test]
fn a_view_claiming_the_coordinator_but_sent_by_another_member_is_refused() {
    let mut c = Cluster::new(4, settings());
    let real = c.nodes[1].view().clone();
    let (members, entries) = view_layout(&c, 1);
    let without2: Vec<(NodeId, u32)> = members.iter().copied().filter(|m| m.0 != 2).collect();
    let entries: Vec<_> = entries
        .into_iter()
        .filter(|e| members[e.index as usize].0 != 2)
        .map(|mut e| {
            let node = members[e.index as usize].0;
            e.index = without2.iter().position(|m| m.0 == node).unwrap() as u32;
            e
        })
        .collect();
    let coord = (real.id.coordinator, real.id.coordinator_incarnation);
    for d in view_datagrams(3, real.id.counter + 1, coord, &without2, &[(GROUP, entries)]) {
        c.inject(1, 3, &d);
    }
    assert!(
        c.nodes[1].view().contains(Member {
            node: 2,
            incarnation: 1
        }),
        "node 1 installed a view without node 2 that node 3 forged in node 0's name: {:?}",
        c.view_summary()
    );
    assert_clean(&c);
}

/// Insider node 3 tells the coordinator that node 2 restarted (incarnation 2). The
/// coordinator replaces node 2 in its table and views, and ignores the real node 2 (in
/// incarnation 1) until the phantom is forgotten (`forget_after`, a minute). A member's
/// incarnation may only move on the member's own word.
#[test]
fn a_higher_incarnation_relayed_by_a_third_party_does_not_evict_a_member() {
    let (mut c, ok) = third_party_claim_about_node_2(2, 1, 0);
    assert!(
        ok,
        "node 2 (incarnation 1) is out of the views 3 s after a third party claimed it restarted: {:?}",
        c.view_summary()
    );
    let ids = publish_from_1(&mut c, 5, "after");
    c.run_for(500 * MILLIS);
    assert_eq!(c.missing(&ids), vec![], "messages lost by the evicted member");
    assert_clean(&c);
}

/// Insider node 3 tells the coordinator that node 2 is leaving (its own incarnation, a
/// large heartbeat): node 2 is dropped from the views and stays out (the flag is cleared
/// only by a new incarnation). Only a member itself may say it leaves.
#[test]
fn a_leaving_flag_relayed_by_a_third_party_does_not_evict_a_member() {
    let leaving = tutti_wire::packet::HEARTBEAT_FLAG_LEAVING;
    let (c, ok) = third_party_claim_about_node_2(1, u32::MAX / 2, leaving);
    assert!(
        ok,
        "node 2 is out of the views 3 s after a third party said it was leaving: {:?}",
        c.view_summary()
    );
    assert_clean(&c);
}

/// Digests and data naming 100,000 invented senders of the group: each gets a stream
/// state (and an entry in the digest rotation) that the byte budget does not count. The
/// per-group stream state must be bounded: less than 16 bytes per invented sender.
#[test]
fn state_for_invented_senders_is_bounded() {
    let mut c = Cluster::new(4, settings());
    let before = c.nodes[2].state_bytes();
    let per = max_entries(16, 40);
    let entries: Vec<DigestEntry> = (0..100_000u32)
        .map(|k| DigestEntry {
            sender: 10_000 + k,
            stream: 1,
            low: 0,
            contiguous: 0,
            high: 0,
            recent: 0,
        })
        .collect();
    let round = c.nodes[3].round();
    for chunk in entries.chunks(per) {
        c.inject(2, ATTACKER, &digest(ATTACKER, GROUP, round, chunk));
    }
    for k in 0..1_000u32 {
        c.inject(
            2,
            ATTACKER,
            &data(ATTACKER, data_header(GROUP, 200_000 + k, 1, 0), b"x"),
        );
    }
    let grown = c.nodes[2].state_bytes().saturating_sub(before);
    assert!(
        grown < 16 * 101_000,
        "node 2's state grew by {grown} bytes for 101,000 invented senders (retained {} B)",
        c.nodes[2].retained_bytes()
    );
    // And honest repair still covers the real senders.
    let ids = publish_from_1(&mut c, 5, "after");
    c.run_for(500 * MILLIS);
    assert_eq!(c.missing(&ids), vec![]);
    assert_clean(&c);
}

/// Insider node 3 gossips a digest entry for node 1's stream with a huge `high`: node 2
/// slides its window there (all of node 1's real messages then dropped as duplicates).
/// Only the sender knows its stream's high.
#[test]
fn a_digest_with_huge_high_from_a_non_sender_does_not_slide_the_window() {
    for high in [1u64 << 62, u64::MAX] {
        let mut c = Cluster::new(4, settings());
        publish_from_1(&mut c, 5, "before");
        c.run_for(100 * MILLIS);
        let s1 = c.stream_of(1);
        let e = DigestEntry {
            sender: 1,
            stream: s1,
            low: 0,
            contiguous: 0,
            high,
            recent: 0,
        };
        let round = c.nodes[3].round();
        c.inject(2, 3, &digest(3, GROUP, round, &[e]));
        c.run_for(100 * MILLIS);
        let ids = publish_from_1(&mut c, 5, "after");
        c.run_for(500 * MILLIS);
        let missing = c.missing(&ids);
        assert!(
            missing.is_empty(),
            "high {high}: real messages not delivered (at, sender, seq): {missing:?}; node 2 was told {} \
             messages of node 1 Lost",
            c.lost_total(2, 1, s1)
        );
        assert_eq!(
            c.lost_total(2, 1, s1),
            0,
            "high {high}: Lost reported for messages never sent"
        );
        assert_clean(&c);
    }
}

/// Injects, at node 2 from member 3, a forged fragment of node 1's next message (seq 3)
/// with `frag_count` and `payload`; then every real message node 1 publishes must reach
/// every member.
fn a_forged_next_fragment_leaves_the_real_messages_delivered(
    frag_count: u16,
    payload: impl FnOnce(&Cluster) -> Vec<u8>,
) {
    let mut c = Cluster::new(4, settings());
    publish_from_1(&mut c, 3, "before");
    c.run_for(100 * MILLIS);
    let s1 = c.stream_of(1);
    let mut h = data_header(GROUP, 1, s1, 3);
    h.frag_count = frag_count;
    let forged = payload(&c);
    c.inject(2, 3, &data(3, h, &forged));
    let ids = publish_from_1(&mut c, 5, "after");
    c.run_for(500 * MILLIS);
    let missing = c.missing(&ids);
    assert!(
        missing.is_empty(),
        "{} real messages not delivered (first (at, sender, seq): {:?})",
        missing.len(),
        missing.first()
    );
    assert_clean(&c);
}

/// Found by the hostile-packet proptest: a member forges the first fragment of a sender's
/// next message, claiming thousands of fragments; the real (whole) message then did not
/// match the forged partial and was refused as a bad fragment at every copy, so it was
/// never delivered.
#[test]
fn a_forged_first_fragment_of_the_next_seq_does_not_block_the_real_message() {
    a_forged_next_fragment_leaves_the_real_messages_delivered(7712, |_| vec![0u8; 136]);
}

/// A member claiming a sender's next message is too large for us must not settle it as
/// refused (reported Lost): only the sender's own copy may.
#[test]
fn a_forged_oversized_fragment_from_a_relay_does_not_make_the_real_message_lost() {
    a_forged_next_fragment_leaves_the_real_messages_delivered(2, |c| {
        vec![0u8; c.settings().fragment_payload() + 1]
    });
}
