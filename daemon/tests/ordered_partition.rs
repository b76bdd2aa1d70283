//! A real network partition of an ordered group with policy `majority` (the default):
//! three `tuttid`s, each in its own network namespace on one bridge (`common/netns.rs`, as
//! `partition.rs`). Daemon 3 is cut off (its bridge port down): the minority side (daemon
//! 3 alone) must deliver nothing new and say so (status `minority`, counter
//! `ordered_minority`), the majority side (daemons 1 and 2) removes it from the group's
//! view and goes on. After the heal daemon 3 gets the view that removed it, at the same
//! place of the order as the others, and says so (status `removed (suspected)`, counter
//! `ordered_removed`). Its application may then join again, with a snapshot at a cut of
//! the order.
//!
//! Needs root and iproute2 (`ip`); without either it prints a skip notice and passes. The
//! namespaces are `tutti-po-<pid>-*`, deleted also when the test fails.

mod common;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/ordered.rs"]
mod ordered_common;

use common::{group_off_daemon_3, wait_until, Daemon};
use netns::{prerequisites, Hosts, TestNet};
use ordered_common::{
    assert_fifo, assert_same, counter, from_view, msgs, publish, snapshot, subscribers_in_turn, Rec,
    Subscriber,
};
use std::time::{Duration, Instant};
use tutti_client::{Client, GroupId, GroupOptions, LeftReason, Rights};

const PREFIX: &str = "tutti-po-";
const HOSTS: usize = 3;
const BASE_PORT: u16 = 7500;
const WAIT: Duration = Duration::from_secs(30);

/// Daemon `i`'s standing in its ordered group as its status shows it ("ordered: view
/// .., STANDING, delivered ..").
fn standing(hosts: &Hosts, i: usize) -> String {
    let s = hosts.status(i);
    s.lines()
        .find_map(|l| l.trim().strip_prefix("ordered: "))
        // "view 2 [1, 2, 3], minority, .." or "no view yet, joining, ..".
        .and_then(|l| l.split_once("], ").or_else(|| l.split_once(", ")))
        .and_then(|(_, rest)| rest.split(", ").next())
        .unwrap_or("(no ordered group)")
        .to_string()
}

fn join_publisher(daemon: &Daemon, group: &str) -> (Client, GroupId) {
    let mut c = daemon.client();
    let g = c
        .join_with(group, Rights::PUBLISH, GroupOptions::ORDERED)
        .unwrap();
    (c, g)
}

/// What the scenario does after the heal and daemon 3's removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterHeal {
    /// Nothing more.
    Stop,
    /// The majority goes on: 30 more messages from daemon 1 reach daemons 1 and 2.
    GoOn,
    /// Daemon 3's application joins again (state transfer), then both sides publish.
    Rejoin,
}

/// The scenario up to the heal and daemon 3's removal, then `after`.
fn majority_partition(tag: &'static str, after: AfterHeal) {
    let Some(ip) = prerequisites("ordered partition test") else {
        return;
    };
    let started = Instant::now();
    let net = TestNet::create(ip, PREFIX, "ordered_partition", tag, HOSTS);
    let hosts = Hosts::start(&net, "po", HOSTS, BASE_PORT, "", "");
    for i in 0..HOSTS {
        hosts.wait_view(i, HOSTS as u64, WAIT, "startup");
    }
    // The memory node on daemons 1 and 2: the majority side holds it.
    let group = &group_off_daemon_3("ord.part");
    let d = &hosts.daemons;
    let mut subs = subscribers_in_turn(&hosts.all(), group, WAIT);
    let (mut p1, g1) = join_publisher(&d[0], group);
    let (mut p3, g3) = join_publisher(&d[2], group);

    // Before the cut: 50 from each of daemons 1 and 3, the same sequence at all three.
    publish(&mut p1, g1, 1, 0, 50, Duration::ZERO);
    publish(&mut p3, g3, 3, 0, 50, Duration::ZERO);
    wait_until(WAIT, "100 messages at every subscriber", &hosts.all(), || {
        subs.iter().flatten().all(|s| s.messages() == 100)
    });
    let full = [1, 2, 3];
    let before: Vec<Vec<Rec>> = subs
        .iter()
        .flatten()
        .map(|s| from_view(&s.recs(), &full))
        .collect();
    for (i, s) in before.iter().enumerate() {
        assert_same(
            s,
            &before[0],
            &format!("before the cut: daemon {} vs daemon 1", i + 1),
        );
    }

    // Cut daemon 3 off. It stands in a minority; the majority removes it (suspected).
    let cut = Instant::now();
    net.set_port(3, false);
    wait_until(WAIT, "daemon 3 in a minority", &hosts.all(), || {
        standing(&hosts, 2) == "minority" && counter(&d[2], "ordered_minority") >= 1
    });
    wait_until(WAIT, "the view [1, 2] at daemons 1 and 2", &hosts.all(), || {
        subs[..2].iter().flatten().all(|s| s.has_view(&[1, 2]))
    });
    eprintln!(
        "cut: daemon 3 in a minority, the others in view [1, 2] after {:?}",
        cut.elapsed()
    );
    // Both sides publish 40 more: the majority delivers its own; the minority's member
    // takes its publisher's messages into its queue (`ordered_submitted`) but can append
    // nothing to the order, so it delivers none of them.
    let submitted_before = counter(&d[2], "ordered_submitted");
    publish(&mut p1, g1, 1, 50, 40, Duration::ZERO);
    publish(&mut p3, g3, 3, 50, 40, Duration::ZERO);
    wait_until(
        WAIT,
        "the majority's 40 at daemons 1 and 2, the minority's 40 queued",
        &hosts.all(),
        || {
            subs[..2].iter().flatten().all(|s| s.messages() == 140)
                && counter(&d[2], "ordered_submitted") == submitted_before + 40
        },
    );
    let minority = subs[2].as_ref().unwrap();
    assert_eq!(minority.messages(), 100, "the minority delivered something new");
    assert!(minority.has_view(&full), "the minority installed another view");
    for (i, sub) in subs[..2].iter().enumerate() {
        let recs = sub.as_ref().unwrap().recs();
        // The newest view [1, 2] (the first one is from before daemon 3 joined).
        let view = recs
            .iter()
            .rev()
            .find_map(|r| match r {
                Rec::View(_, m, left) if m == &[1, 2] => Some(left.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(view, vec![(3, LeftReason::Suspected)], "daemon {}", i + 1);
    }
    assert_same(
        &from_view(&subs[0].as_ref().unwrap().recs(), &full),
        &from_view(&subs[1].as_ref().unwrap().recs(), &full),
        "the majority side",
    );

    // Heal. Daemon 3 learns it was removed; it delivers nothing of the cut.
    let heal = Instant::now();
    net.set_port(3, true);
    for i in 0..HOSTS {
        hosts.wait_view(i, HOSTS as u64, WAIT, "after the heal");
    }
    wait_until(WAIT, "daemon 3 removed (suspected)", &hosts.all(), || {
        standing(&hosts, 2) == "removed (suspected)" && counter(&d[2], "ordered_removed") >= 1
    });
    eprintln!(
        "heal: daemon 3 knows it was removed {:?} after the heal",
        heal.elapsed()
    );
    // Its log ends with the view that removed it, at the same place of the same order as
    // the majority's (virtual synchrony): the 100 messages of before the cut, then that
    // view, and nothing after it.
    let old = from_view(&subs[2].take().unwrap().stop(), &full);
    let majority = from_view(&subs[0].as_ref().unwrap().recs(), &full);
    let removed_at = majority
        .iter()
        .position(|r| matches!(r, Rec::View(_, m, _) if m == &[1, 2]))
        .unwrap();
    assert_same(
        &old,
        &majority[..=removed_at],
        "the removed member vs the majority up to its removal",
    );
    assert_eq!(msgs(&old).len(), 100);
    if after == AfterHeal::Stop {
        eprintln!("{tag}: passed in {:?}", started.elapsed());
        return;
    }
    if after == AfterHeal::GoOn {
        // The majority goes on without it: 30 more from daemon 1 reach daemons 1 and 2;
        // the minority's messages of the cut (queued in its removed member) never do.
        publish(&mut p1, g1, 1, 90, 30, Duration::ZERO);
        wait_until(WAIT, "30 more at daemons 1 and 2", &hosts.all(), || {
            subs[..2]
                .iter()
                .flatten()
                .all(|s| s.recs().contains(&Rec::Msg(1, 119)))
        });
        let first = from_view(&subs[0].take().unwrap().stop(), &full);
        let second = from_view(&subs[1].take().unwrap().stop(), &full);
        assert_same(&second, &first, "daemon 2 vs daemon 1 after the heal");
        assert_fifo(&first, "daemon 1");
        assert_eq!(
            msgs(&first).len(),
            170,
            "100 before the cut, 40 in it, 30 after it"
        );
        assert!(
            !msgs(&first).iter().any(|&(p, i)| p == 3 && i >= 50),
            "a message the minority's publisher offered while cut off was delivered"
        );
        eprintln!("{tag}: passed in {:?}", started.elapsed());
        return;
    }
    // Its application joins again: the old clients go (the group leaves daemon 3), a new
    // subscriber joins and gets daemon 1's state at the cut, then what follows.
    drop((p3, g3));
    wait_until(WAIT, "daemon 3 to leave the group", &hosts.all(), || {
        !hosts.status(2).contains(group.as_str())
    });
    subs[2] = Some(Subscriber::start(&d[2], group, false));
    wait_until(
        WAIT,
        "the rejoined view [1, 2, 3] everywhere",
        &hosts.all(),
        || subs[..2].iter().flatten().all(|s| s.has_view(&full)) && subs[2].as_ref().unwrap().has_view(&full),
    );
    // A new publisher on daemon 3 (tag 4: the old one's messages of the cut are gone).
    let (mut p4, g4) = join_publisher(&d[2], group);
    publish(&mut p1, g1, 1, 90, 30, Duration::ZERO);
    publish(&mut p4, g4, 4, 0, 30, Duration::ZERO);
    wait_until(
        WAIT,
        "the 60 after the rejoin at every subscriber",
        &hosts.all(),
        || {
            subs.iter().flatten().all(|s| {
                let r = s.recs();
                r.contains(&Rec::Msg(1, 119)) && r.contains(&Rec::Msg(4, 29))
            })
        },
    );
    let provider = subs[0].take().unwrap().stop();
    let second = subs[1].take().unwrap().stop();
    let joiner = subs[2].take().unwrap().stop();
    let Some(Rec::Installed(position, state)) = joiner.first().cloned() else {
        panic!("the rejoined member's first event is not its snapshot: {joiner:?}");
    };
    let at = provider
        .iter()
        .position(|r| *r == Rec::SnapshotRequest(position))
        .expect("daemon 1's provider was asked at the cut");
    let delivered_at_cut = msgs(&provider[..at]).len() as u64;
    assert!(
        state == snapshot(delivered_at_cut),
        "snapshot = daemon 1's state at the cut ({delivered_at_cut} messages)"
    );
    // After the cut the rejoined member delivers exactly what daemon 1 delivered.
    let after = |recs: &[Rec]| -> Vec<Rec> {
        recs.iter()
            .filter(|r| matches!(r, Rec::Msg(..) | Rec::View(..)))
            .cloned()
            .collect()
    };
    // The rejoined member's first view is the one its join installed: the last view
    // daemon 1 delivered before the cut (the join entry itself).
    let joined_view = provider[..at]
        .iter()
        .rev()
        .find(|r| matches!(r, Rec::View(..)))
        .cloned()
        .expect("daemon 1 delivered the join's view before the cut");
    let rejoined = after(&joiner[1..]);
    assert_eq!(
        rejoined.first(),
        Some(&joined_view),
        "the rejoined member's first view"
    );
    // Views after the last message are the teardown's: the subscribers stop one after the
    // other, and one still running records the leave of one stopped before it.
    let no_teardown = |mut recs: Vec<Rec>| -> Vec<Rec> {
        while matches!(recs.last(), Some(Rec::View(..))) {
            recs.pop();
        }
        recs
    };
    assert_same(
        &no_teardown(rejoined[1..].to_vec()),
        &no_teardown(after(&provider[at..])),
        "rejoined vs daemon 1 after the cut",
    );
    assert_same(
        &no_teardown(from_view(&second, &full)),
        &no_teardown(from_view(&provider, &full)),
        "daemon 2 vs daemon 1",
    );
    assert_fifo(&provider, "daemon 1");
    // The minority's messages of the cut were never delivered anywhere.
    for recs in [&provider, &second, &joiner] {
        assert!(
            !msgs(recs).iter().any(|&(p, i)| p == 3 && (50..90).contains(&i)),
            "a message the minority's publisher offered while cut off was delivered"
        );
    }
    eprintln!(
        "{tag}: snapshot at position {position} = {delivered_at_cut} messages; then {} messages; passed in {:?}",
        msgs(&joiner).len(),
        started.elapsed()
    );
}

/// Daemon 3 cut off: it stands in a minority and delivers nothing new (status
/// `minority`, counter `ordered_minority`); daemons 1 and 2 remove it (view [1, 2], reason
/// suspected) and go on. After the heal daemon 3 gets the view that removed it, at the
/// same place of the order as the others (then nothing more), and says so (status
/// `removed (suspected)`, counter `ordered_removed`).
#[test]
fn majority_partition_the_minority_delivers_nothing_new_says_so_and_learns_its_removal() {
    majority_partition("maj", AfterHeal::Stop);
}

/// As above, then the majority goes on: daemon 1's next messages reach daemons 1 and 2,
/// and the messages daemon 3's publisher offered while cut off are never delivered.
#[test]
fn majority_partition_after_the_heal_the_majority_goes_on_with_both_its_members() {
    majority_partition("goon", AfterHeal::GoOn);
}

/// As the first, then daemon 3's application joins again and gets a snapshot at a cut of
/// the order and every message after it.
#[test]
fn majority_partition_the_removed_minority_rejoins_with_a_snapshot_after_the_heal() {
    majority_partition("rejoin", AfterHeal::Rejoin);
}
