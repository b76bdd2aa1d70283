//! A real network partition of an ordered group with policy `evs` (`GroupOptions::evs`):
//! three `tuttid`s, each in its own network namespace on one bridge (`common/netns.rs`, as
//! `ordered_partition.rs`). Daemon 3 is cut off: unlike `majority`, the minority side goes
//! on in a configuration of its own ([3]) and delivers its publisher's messages, while the
//! majority goes on in [1, 2]; each side in one order. After the heal the three merge into
//! one configuration [1, 2, 3] and deliver one order again.
//!
//! Needs root and iproute2 (`ip`); without either it prints a skip notice and passes. The
//! namespaces are `tutti-pe-<pid>-*`, deleted also when the test fails.

mod common;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/ordered.rs"]
mod ordered_common;

use common::{wait_until, Daemon};
use netns::{prerequisites, Hosts, TestNet};
use ordered_common::{assert_fifo, assert_same, msgs, publish, Rec, Subscriber};
use std::time::{Duration, Instant};
use tutti_client::{Client, GroupId, GroupOptions, Rights};

const PREFIX: &str = "tutti-pe-";
const HOSTS: usize = 3;
const BASE_PORT: u16 = 7600;
const WAIT: Duration = Duration::from_secs(30);
const EVS: GroupOptions = GroupOptions {
    evs: true,
    ..GroupOptions::ORDERED
};

fn join_publisher(daemon: &Daemon, group: &str) -> (Client, GroupId) {
    let mut c = daemon.client();
    let g = c.join_with(group, Rights::PUBLISH, EVS).unwrap();
    (c, g)
}

/// The records after the newest view of exactly `members` (that view included).
fn since_view(recs: &[Rec], members: &[u32]) -> Vec<Rec> {
    let at = recs
        .iter()
        .rposition(|r| matches!(r, Rec::View(_, m, _) if m == members))
        .unwrap_or_else(|| panic!("no view {members:?} in {recs:?}"));
    recs[at..].to_vec()
}

#[test]
fn an_evs_minority_goes_on_and_the_sides_merge_at_the_heal() {
    let Some(ip) = prerequisites("ordered evs partition test") else {
        return;
    };
    let started = Instant::now();
    let net = TestNet::create(ip, PREFIX, "ordered_evs_partition", "evs", HOSTS);
    let hosts = Hosts::start(&net, "pe", HOSTS, BASE_PORT, "", "");
    for i in 0..HOSTS {
        hosts.wait_view(i, HOSTS as u64, WAIT, "startup");
    }
    let group = "ord.evs";
    let d = &hosts.daemons;
    let subs: Vec<Subscriber> = d
        .iter()
        .map(|d| Subscriber::start_with(d, group, false, EVS))
        .collect();
    let full = [1, 2, 3];
    wait_until(
        WAIT,
        "the configuration [1, 2, 3] everywhere",
        &hosts.all(),
        || subs.iter().all(|s| s.has_view(&full)),
    );
    let (mut p1, g1) = join_publisher(&d[0], group);
    let (mut p3, g3) = join_publisher(&d[2], group);
    publish(&mut p1, g1, 1, 0, 50, Duration::ZERO);
    publish(&mut p3, g3, 3, 0, 50, Duration::ZERO);
    wait_until(WAIT, "100 messages at every subscriber", &hosts.all(), || {
        subs.iter().all(|s| s.messages() >= 100)
    });

    // Cut daemon 3 off: each side goes on in a configuration of its own.
    let cut = Instant::now();
    net.set_port(3, false);
    wait_until(
        WAIT,
        "[1, 2] at daemons 1 and 2, [3] at daemon 3",
        &hosts.all(),
        || subs[..2].iter().all(|s| s.has_view(&[1, 2])) && subs[2].has_view(&[3]),
    );
    eprintln!("cut: two configurations after {:?}", cut.elapsed());
    let at_cut: Vec<usize> = subs.iter().map(Subscriber::messages).collect();
    publish(&mut p1, g1, 1, 50, 40, Duration::ZERO);
    publish(&mut p3, g3, 3, 50, 40, Duration::ZERO);
    wait_until(WAIT, "each side delivers its own 40", &hosts.all(), || {
        let side = |i: usize, tag: u32| {
            msgs(&subs[i].recs())
                .iter()
                .filter(|&&(p, n)| p == tag && (50..90).contains(&n))
                .count()
                == 40
        };
        side(0, 1) && side(1, 1) && side(2, 3)
    });
    // Each side in one order, and nothing of the other side's cut-off messages.
    let majority: Vec<Vec<Rec>> = subs[..2].iter().map(|s| since_view(&s.recs(), &[1, 2])).collect();
    assert_same(&majority[1], &majority[0], "the majority side in [1, 2]");
    assert!(!msgs(&majority[0]).iter().any(|&(p, n)| p == 3 && n >= 50));
    let minority = since_view(&subs[2].recs(), &[3]);
    assert!(
        msgs(&minority).iter().filter(|&&(p, _)| p == 3).count() >= 40,
        "the minority goes on (as Corosync's CPG does)"
    );
    assert!(!msgs(&minority).iter().any(|&(p, n)| p == 1 && n >= 50));
    eprintln!(
        "cut: delivered since the cut {:?}",
        subs.iter().map(|s| s.messages()).zip(at_cut).collect::<Vec<_>>()
    );

    // Heal: one merged configuration, then one order again.
    let heal = Instant::now();
    net.set_port(3, true);
    for i in 0..HOSTS {
        hosts.wait_view(i, HOSTS as u64, WAIT, "after the heal");
    }
    wait_until(
        WAIT,
        "the merged configuration [1, 2, 3] everywhere",
        &hosts.all(),
        || subs.iter().all(|s| s.has_view(&full)),
    );
    eprintln!("heal: merged after {:?}", heal.elapsed());
    publish(&mut p1, g1, 1, 90, 30, Duration::ZERO);
    publish(&mut p3, g3, 3, 90, 30, Duration::ZERO);
    wait_until(WAIT, "the 60 of after the heal everywhere", &hosts.all(), || {
        subs.iter().all(|s| {
            let m = msgs(&s.recs());
            m.contains(&(1, 119)) && m.contains(&(3, 119))
        })
    });
    // Taken from all three before any stops (a stopped subscriber's daemon leaves the
    // group: the others would record that configuration too).
    let recs: Vec<Vec<Rec>> = subs.iter().map(Subscriber::recs).collect();
    for s in subs {
        s.stop();
    }
    let merged: Vec<Vec<Rec>> = recs.iter().map(|r| since_view(r, &full)).collect();
    // The merged configuration's id is the same everywhere (list epoch and position).
    assert_same(&merged[1], &merged[0], "daemon 2 vs daemon 1 after the heal");
    assert_same(&merged[2], &merged[0], "daemon 3 vs daemon 1 after the heal");
    for (i, r) in merged.iter().enumerate() {
        assert_fifo(r, &format!("daemon {} after the heal", i + 1));
    }
    eprintln!("evs partition: passed in {:?}", started.elapsed());
}
