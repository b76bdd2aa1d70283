//! Ordered groups over five `tuttid`s on loopback (127.0.X.1..5), with several publishers
//! on each of three daemons: one total order at every member, and the kill -9 of the
//! daemon that runs the group's memory-node primary while the others keep publishing.
//!
//! The group's name is chosen so that its memory node (primary and backup) lands on
//! daemons 4 and 5, the publishers run on daemons 1, 2 and 3: a sender beside the primary
//! appends without a network round trip and wins every tail compare against remote senders
//! (the livelock described in docs/ordered.md), which these tests are not about.
//!
//! The two tests take a lock each, so that at most five daemons run at once on the shared
//! machine (`cargo test` runs the tests of a binary as threads).

mod common;
#[path = "common/ordered.rs"]
mod ordered_common;

use common::{wait_until, Daemon};
use ordered_common::*;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tutti_client::{Client, GroupId, GroupOptions, LeftReason, Rights};

const DAEMONS: usize = 5;
/// Daemons (ids) with publishers, and publishers on each.
const PUBLISHER_DAEMONS: [u32; 3] = [1, 2, 3];
const PUBLISHERS_PER_DAEMON: u32 = 2;
/// Daemons the memory node's primary and backup are placed on.
const MEMNODE_DAEMONS: [u32; 2] = [4, 5];

/// The failure detector's suspicion timeout (ms) without a kill. A suspected member is
/// removed from an ordered group at once, even if the suspicion is refuted and the cluster
/// view never drops it: with 1.5 s, five daemons flooded by six publishers on 2 cores at
/// load average 15 removed healthy members (docs/ordered.md, limits).
const SUSPECT_MS: u64 = 4000;
/// With the kill: short, because while the primary's death goes unnoticed no append
/// commits, and members that then fall behind the burst after the failover are removed as
/// lagging (seen with 4 s at load 15; docs/ordered.md, limits).
const SUSPECT_MS_KILL: u64 = 1500;

/// One five-daemon cluster at a time.
static FIVE_DAEMONS: Mutex<()> = Mutex::new(());

/// A publisher's tag in its messages: daemon id * 10 + its index on that daemon.
fn tag(daemon: u32, k: u32) -> u32 {
    daemon * 10 + k
}

/// A cluster of five daemons, an ordered group with a subscriber on every daemon (the one
/// on daemon 1 provides snapshots) and two publishers on each of daemons 1, 2 and 3.
struct FiveDaemons {
    daemons: Vec<Option<Daemon>>,
    subs: Vec<Option<Subscriber>>,
    publishers: Vec<Arc<Mutex<(u32, Client, GroupId)>>>,
}

impl FiveDaemons {
    fn start(tag_prefix: &str, subnet: u8, group: &str, suspect_ms: u64) -> FiveDaemons {
        let daemons: Vec<Option<Daemon>> = (0..DAEMONS)
            .map(|i| Some(start_daemon_with(tag_prefix, subnet, i, DAEMONS, suspect_ms)))
            .collect();
        // Every daemon places the memory node from its cluster view at its join.
        wait_cluster_view(&daemons, DAEMONS as u64);
        let all: Vec<&Daemon> = daemons.iter().flatten().collect();
        let subs = subscribers_in_turn(&all, group, WAIT);
        let mut publishers = Vec::new();
        for d in PUBLISHER_DAEMONS {
            for k in 0..PUBLISHERS_PER_DAEMON {
                let mut c = daemons[d as usize - 1].as_ref().unwrap().client();
                let g = c
                    .join_with(group, Rights::PUBLISH, GroupOptions::ORDERED)
                    .unwrap();
                publishers.push(Arc::new(Mutex::new((tag(d, k), c, g))));
            }
        }
        FiveDaemons {
            daemons,
            subs,
            publishers,
        }
    }

    fn running(&self) -> Vec<&Daemon> {
        self.daemons.iter().flatten().collect()
    }

    /// Every publisher sends `count` messages from index `first`, one every `gap`, each in
    /// its own thread; each thread ends once its daemon took all of them from the ring.
    fn publish(&self, first: u64, count: u64, gap: Duration) -> Vec<JoinHandle<()>> {
        self.publishers
            .iter()
            .map(|p| {
                let p = Arc::clone(p);
                std::thread::spawn(move || {
                    let mut p = p.lock().unwrap();
                    let (tag, c, g) = &mut *p;
                    publish(c, *g, *tag, first, count, gap)
                })
            })
            .collect()
    }

    fn total_publishers(&self) -> usize {
        self.publishers.len()
    }
}

/// Every publisher's messages `0..count` appear exactly once each, in index order (FIFO, no
/// gap, no duplicate): the records hold each tag's indexes 0, 1, .., count - 1.
fn assert_every_message_once(recs: &[Rec], count: u64, who: &str) {
    assert_fifo(recs, who);
    let m = msgs(recs);
    for d in PUBLISHER_DAEMONS {
        for k in 0..PUBLISHERS_PER_DAEMON {
            let t = tag(d, k);
            let got: Vec<u64> = m.iter().filter(|(p, _)| *p == t).map(|(_, i)| *i).collect();
            assert!(
                got.iter().copied().eq(0..count),
                "{who}: publisher {t} delivered {} messages, not 0..{count} once each (first {:?}, last {:?})",
                got.len(),
                got.first(),
                got.last()
            );
        }
    }
    let publishers = PUBLISHER_DAEMONS.len() * PUBLISHERS_PER_DAEMON as usize;
    assert_eq!(
        m.len(),
        publishers * count as usize,
        "{who}: messages of unknown publishers"
    );
}

#[test]
fn five_daemons_six_publishers_on_three_of_them_every_member_delivers_one_sequence() {
    let _one = FIVE_DAEMONS.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let group = group_with_memnode_on("ord.five", DAEMONS as u32, &MEMNODE_DAEMONS);
    let c = FiveDaemons::start("ord5", 93, &group, SUSPECT_MS);
    // `tutti status` shows the placement, the same at every daemon, on daemons 4 and 5.
    let placements: Vec<_> = c.running().iter().map(|d| memnode_placement(d)).collect();
    let Some((primary, Some(backup), 1)) = placements[0] else {
        panic!(
            "daemon 1 shows no placement with a backup at epoch 1: {placements:?}\n{}",
            c.daemons[0].as_ref().unwrap().client().status().unwrap()
        );
    };
    assert!(placements.iter().all(|p| *p == placements[0]), "{placements:?}");
    let mut hosts = [primary, backup];
    hosts.sort();
    assert_eq!(hosts, MEMNODE_DAEMONS, "placement {placements:?}");

    // 6 publishers x 200 messages at once, as fast as the daemons take them.
    const COUNT: u64 = 200;
    for t in c.publish(0, COUNT, Duration::ZERO) {
        t.join().unwrap();
    }
    let expected = c.total_publishers() * COUNT as usize;
    wait_until(
        WAIT,
        &format!("{expected} messages at every subscriber"),
        &c.running(),
        || c.subs.iter().flatten().all(|s| s.messages() >= expected),
    );
    let full: Vec<u32> = (1..=DAEMONS as u32).collect();
    let seqs: Vec<Vec<Rec>> = c
        .subs
        .iter()
        .flatten()
        .map(|s| from_view(&s.recs(), &full))
        .collect();
    for (i, s) in seqs.iter().enumerate() {
        assert_every_message_once(s, COUNT, &format!("subscriber on daemon {}", i + 1));
        assert_same(
            s,
            &seqs[0],
            &format!("subscriber on daemon {} vs daemon 1", i + 1),
        );
    }
    // How interleaved the order is (each append is a batch of one sender's messages).
    let m = msgs(&seqs[0]);
    let switches = m.windows(2).filter(|w| w[0].0 != w[1].0).count();
    eprintln!(
        "five daemons: {expected} messages in one order at all 5 members ({switches} sender switches) in {:?}",
        started.elapsed()
    );
    for s in c.subs.into_iter().flatten() {
        s.stop();
    }
}

/// Kills (SIGKILL) the daemon that runs the group's memory-node primary while the
/// publishers on daemons 1-3 keep publishing. What is asserted, at each of the 4 surviving
/// subscribers, over its records from the view of all five on:
/// - every message of every publisher, 0..700, delivered exactly once and in index order:
///   every one was accepted by its daemon (`flush` said the ring was drained) and none of
///   the publishers' daemons failed, so none may be lost by the failover, none delivered
///   twice (a resent append), none reordered;
/// - the same sequence of messages and views at every survivor, so the view without the
///   killed daemon (reason: suspected) is at the same place of the same order everywhere;
/// - the survivors then place the memory node's primary on the former backup (epoch 2) and
///   name it a new backup among themselves (epoch 3).
#[test]
fn kill_9_of_the_memory_node_primary_mid_run_loses_reorders_and_duplicates_nothing() {
    let _one = FIVE_DAEMONS.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let group = group_with_memnode_on("ord.kill", DAEMONS as u32, &MEMNODE_DAEMONS);
    let mut c = FiveDaemons::start("ordk", 94, &group, SUSPECT_MS_KILL);
    let Some((primary, Some(backup), 1)) = memnode_placement(c.daemons[0].as_ref().unwrap()) else {
        panic!("no placement with a backup in daemon 1's status");
    };
    assert!(MEMNODE_DAEMONS.contains(&primary) && MEMNODE_DAEMONS.contains(&backup));

    // 700 messages from each of the 6 publishers, one every 2 ms each (about 1.5 s of
    // publishing), and the primary's daemon killed once 1,000 reached daemon 1.
    const COUNT: u64 = 700;
    let senders = c.publish(0, COUNT, Duration::from_millis(2));
    let all = c.running();
    wait_until(WAIT, "1000 messages at daemon 1", &all, || {
        c.subs[0].as_ref().unwrap().messages() >= 1000
    });
    drop(all);
    let p = primary as usize - 1;
    drop(c.subs[p].take()); // its daemon is about to go: do not join its thread's error
    let mut victim = c.daemons[p].take().unwrap();
    victim.signal(9);
    victim.wait_exit(WAIT);
    let at_kill = c.subs[0].as_ref().unwrap().messages();
    for t in senders {
        t.join().unwrap();
    }
    let expected = c.total_publishers() * COUNT as usize;
    let survivors_ids: Vec<u32> = (1..=DAEMONS as u32).filter(|&d| d != primary).collect();
    wait_until(
        WAIT,
        &format!("{expected} messages and the view {survivors_ids:?} at every survivor"),
        &c.running(),
        || {
            c.subs
                .iter()
                .flatten()
                .all(|s| s.messages() >= expected && s.has_view(&survivors_ids))
        },
    );
    let full: Vec<u32> = (1..=DAEMONS as u32).collect();
    let seqs: Vec<Vec<Rec>> = c
        .subs
        .iter()
        .flatten()
        .map(|s| from_view(&s.recs(), &full))
        .collect();
    for (s, d) in seqs.iter().zip(&survivors_ids) {
        assert_every_message_once(s, COUNT, &format!("survivor {d}"));
        assert_same(
            s,
            &seqs[0],
            &format!("survivor {d} vs survivor 1 (order and the view's place)"),
        );
    }
    let removal = seqs[0]
        .iter()
        .find_map(|r| match r {
            Rec::View(_, m, left) if *m == survivors_ids => Some(left.clone()),
            _ => None,
        })
        .expect("a view without the primary's daemon");
    assert_eq!(removal, vec![(primary, LeftReason::Suspected)]);
    let view_at = seqs[0]
        .iter()
        .position(|r| matches!(r, Rec::View(_, m, _) if *m == survivors_ids))
        .unwrap();
    // The failover: every survivor now places the primary on the former backup (epoch 2)
    // and names it a new backup (epoch 3: state transfer).
    let all = c.running();
    wait_until(
        WAIT,
        "the primary on the former backup at every survivor",
        &all,
        || {
            all.iter()
                .all(|d| matches!(memnode_placement(d), Some((p, Some(b), 3)) if p == backup && b != primary))
        },
    );
    eprintln!(
        "kill -9 of daemon {primary} (memory-node primary; backup on {backup}) with {at_kill} of \
         {expected} messages delivered at daemon 1: every survivor delivered all {expected} once, \
         the view without it at record {view_at} of {} everywhere; {:?}",
        seqs[0].len(),
        started.elapsed()
    );
    for s in c.subs.into_iter().flatten() {
        s.stop();
    }
}
