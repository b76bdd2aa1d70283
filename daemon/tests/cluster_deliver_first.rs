//! A message that a local submit made deliverable at once (an `evs` group under agreed
//! delivery, submitted on the daemon whose memory node holds the list) is handed to the
//! shard before the poll sends anything: the shard wakes the local application first, and
//! the datagrams to the other daemons go out on the next poll. On loopback a send runs the
//! receiver's network stack and its wake-up inside the system call (50-70 µs for the two
//! sends of a 3-daemon group on the development guest), which the sender's own delivery
//! waited behind before.
//!
//! Two `Cluster`s (daemon 1 and 2, one shard each, epoll transport on 127.0.0.1) are polled
//! from the test thread, with no `Shard` around them, so the test sees each poll's events
//! and the datagrams it sent.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};
use tutti_daemon::cluster::{Cluster, ClusterConfig, ClusterEvent};
use tutti_daemon::net::{IoMode, NetConfig};

const GROUP: u64 = 0x5eed_f125;
const SESSION: u32 = 7;

const MULTICAST: u64 = 0xb1_0d41;

#[derive(Debug, PartialEq)]
enum Seen {
    Deliver(Vec<u8>),
    View(Vec<u32>),
    Multicast(Vec<u8>),
    Other,
}

fn open(daemon: u32, seed_port: Option<u16>) -> Cluster {
    let cfg = ClusterConfig {
        enabled: true,
        seeds: seed_port
            .map(|p| format!("1@127.0.0.1:{p}"))
            .into_iter()
            .collect(),
        evs_delivery: "agreed".to_string(),
        ..ClusterConfig::default()
    };
    let net = NetConfig {
        listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
        base_port: 0,
        io: IoMode::Epoll,
        ..NetConfig::default()
    };
    Cluster::open(&cfg, &net, daemon, 0, 1 << 20, 1, None).expect("cluster opens")
}

fn poll(c: &mut Cluster) -> Vec<Seen> {
    let mut seen = Vec::new();
    c.poll(&mut |event| {
        seen.push(match event {
            ClusterEvent::OrderedDeliver { group, payload, .. } if group == GROUP => {
                Seen::Deliver(payload.to_vec())
            }
            ClusterEvent::OrderedView { group, members, .. } if group == GROUP => {
                Seen::View(members.to_vec())
            }
            ClusterEvent::Deliver(d) if d.group == MULTICAST => Seen::Multicast(d.payload.to_vec()),
            _ => Seen::Other,
        })
    });
    seen
}

/// Daemons 1 and 2, polled until daemon 1's cluster view holds both (bounded: 10 s).
fn two_daemons() -> (Cluster, Cluster) {
    let mut a = open(1, None);
    let mut b = open(2, Some(a.local_addr().port()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !a_view_of_two(&a.members_text("")) {
        assert!(
            Instant::now() < deadline,
            "no view of two: {}",
            a.members_text("")
        );
        poll(&mut a);
        poll(&mut b);
        std::thread::sleep(Duration::from_micros(200));
    }
    (a, b)
}

/// Polls both for about 20 ms, so that whatever earlier steps left to send is out.
fn settle(a: &mut Cluster, b: &mut Cluster) {
    for _ in 0..20 {
        poll(a);
        poll(b);
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Polls both until `done` holds of what each has seen so far (bounded: 10 s).
fn pump_until(a: &mut Cluster, b: &mut Cluster, what: &str, mut done: impl FnMut(&[Seen], &[Seen]) -> bool) {
    let (mut seen_a, mut seen_b) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done(&seen_a, &seen_b) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {seen_a:?} / {seen_b:?}"
        );
        seen_a.extend(poll(a));
        seen_b.extend(poll(b));
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn has_view(seen: &[Seen], members: usize) -> bool {
    seen.iter()
        .any(|s| matches!(s, Seen::View(m) if m.len() == members))
}

#[test]
fn a_founders_own_agreed_message_is_delivered_before_its_datagrams_go_out() {
    let (mut a, mut b) = two_daemons();
    // Daemon 1 joins first: its node hosts the list's memory node (the founder).
    assert!(!a.join_ordered(GROUP, true).unwrap());
    pump_until(&mut a, &mut b, "daemon 1's view of the group", |sa, _| {
        has_view(sa, 1)
    });
    assert!(!b.join_ordered(GROUP, true).unwrap());
    pump_until(&mut a, &mut b, "the group's view of two", |sa, sb| {
        has_view(sa, 2) && has_view(sb, 2)
    });
    // Quiet: whatever the join left to send is out.
    settle(&mut a, &mut b);

    let before = a.stats().datagrams_out;
    a.submit_ordered(GROUP, SESSION, b"first", false)
        .expect("the group takes it");
    let seen = poll(&mut a);
    let delivered: Vec<&Vec<u8>> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::Deliver(p) => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(
        delivered.len(),
        1,
        "the founder delivers its own message on the first poll: {seen:?}"
    );
    assert!(delivered[0].ends_with(b"first"), "{:?}", delivered[0]);
    assert_eq!(
        a.stats().datagrams_out,
        before,
        "nothing was sent before the poll handed out the delivery"
    );
    // The next poll sends it, and daemon 2 delivers it.
    poll(&mut a);
    assert!(
        a.stats().datagrams_out > before,
        "the next poll sends the message"
    );
    pump_until(&mut a, &mut b, "daemon 2's delivery", |_, sb| {
        sb.iter()
            .any(|s| matches!(s, Seen::Deliver(p) if p.ends_with(b"first")))
    });

    // A publisher that submits before every poll (a full ring) does not hold the sends
    // back: a poll that only delivered is followed by one that does the rest.
    let before = a.stats().datagrams_out;
    let mut delivered = 0;
    for i in 0..10u8 {
        a.submit_ordered(GROUP, SESSION, &[b'm', i], false)
            .expect("the group takes it");
        delivered += poll(&mut a)
            .iter()
            .filter(|s| matches!(s, Seen::Deliver(_)))
            .count();
    }
    assert_eq!(delivered, 10, "each delivered on the poll after its submit");
    assert!(
        a.stats().datagrams_out >= before + 5,
        "every other poll sends: {} datagrams for 10 polls",
        a.stats().datagrams_out - before
    );
    pump_until(&mut a, &mut b, "daemon 2's deliveries", |_, sb| {
        sb.iter()
            .filter(|s| matches!(s, Seen::Deliver(p) if p.len() >= 2 && p[p.len() - 2] == b'm'))
            .count()
            == 10
    });
}

/// `members_text` lists one line per member of the cluster view (then seeds that did not
/// answer, which this test has none of once the view formed).
fn a_view_of_two(text: &str) -> bool {
    text.lines().filter(|l| l.contains("127.0.0.1")).count() == 2
}

#[test]
fn a_multicast_publish_goes_out_on_the_poll_after_it() {
    // Bimodal groups deliver locally from the publish itself, not through the node's
    // events: their datagrams are not held back a poll by the early hand-out above.
    let (mut a, mut b) = two_daemons();
    a.join(MULTICAST);
    b.join(MULTICAST);
    // Until daemon 1 knows daemon 2 is in the group, a publish reaches nobody: publish
    // until one arrives.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut arrived = false;
    while !arrived {
        assert!(Instant::now() < deadline, "no multicast reached daemon 2");
        let now = a.now();
        a.submit(now, MULTICAST, SESSION, b"probe", false, |_| {});
        for _ in 0..5 {
            poll(&mut a);
            arrived |= poll(&mut b).iter().any(|s| matches!(s, Seen::Multicast(_)));
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    settle(&mut a, &mut b);
    let before = a.stats().datagrams_out;
    let now = a.now();
    a.submit(now, MULTICAST, SESSION, b"measured", false, |_| {});
    assert_eq!(a.stats().datagrams_out, before, "a submit only queues");
    poll(&mut a);
    assert!(
        a.stats().datagrams_out > before,
        "the poll right after a multicast publish sends it"
    );
}
