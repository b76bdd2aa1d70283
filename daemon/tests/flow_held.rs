//! A publisher whose ring flow control holds full (the one remote member stopped) and that
//! then goes away: what it had committed to its ring is still published, past the window,
//! and reaches the member once it runs again; nothing is silently dropped with the ring.

mod common;

use common::{eventually, status_number, Daemon};
use std::time::{Duration, Instant};
use tutti_client::{Client, Event, GroupId, IdleStrategy};

const WAIT: Duration = Duration::from_secs(60);
const BASE_PORT: u16 = 17900;
/// A small window, so that the publisher's ring holds most of what it committed.
const FLOW_WINDOW: u64 = 64;

fn start(tag: &str, subnet: u8, i: usize, n: usize) -> Daemon {
    let dir = common::temp_dir(&format!("{tag}-cfg{i}"));
    let config = dir.join("tuttid.toml");
    let seeds: Vec<String> = (0..n)
        .map(|j| format!("\"{}@127.0.{subnet}.{}\"", j + 1, j + 1))
        .collect();
    // No suspicion and no slow-member rule while the receiver is stopped: the window stays
    // held for as long as the test needs.
    std::fs::write(
        &config,
        format!(
            "node_id = {}\n[cluster]\nenabled = true\nseeds = [{}]\nsuspect_timeout_ms = 60000\nflow_window = {FLOW_WINDOW}\nflow_slow_after_ms = 60000\n[net]\nlisten = \"127.0.{subnet}.{}\"\nbase_port = {BASE_PORT}\n",
            i + 1,
            seeds.join(", "),
            i + 1
        ),
    )
    .unwrap();
    Daemon::start(&format!("{tag}-{i}"), &["--config", config.to_str().unwrap()])
}

fn message(index: u64) -> Vec<u8> {
    let mut m = format!("{index}:").into_bytes();
    m.resize(64, b'x');
    m
}

fn status(d: &Daemon, key: &str) -> u64 {
    status_number(&d.client().status().unwrap(), key).unwrap_or(0)
}

/// Receives until `expected` messages arrived, in order and intact.
fn receive(client: &mut Client, g: GroupId, expected: u64) {
    let mut next = 0;
    let deadline = Instant::now() + WAIT;
    while next < expected {
        assert!(Instant::now() < deadline, "received {next} of {expected}");
        client
            .poll_blocking(
                g,
                1024,
                IdleStrategy::Backoff,
                Duration::from_millis(100),
                |ev| match ev {
                    Event::Message { payload, .. } => {
                        assert_eq!(payload, &message(next)[..], "FIFO and intact");
                        next += 1;
                    }
                    Event::Lost { sender, count } => panic!("{count} lost from {sender:#x} after {next}"),
                    Event::Lagged { missed } => panic!("lagged by {missed}"),
                    _ => {}
                },
            )
            .unwrap();
    }
}

fn a_flow_held_publisher_that_goes_still_publishes_what_it_committed(leave: bool) {
    let subnet = if leave { 91 } else { 92 };
    let tag = if leave { "heldleave" } else { "heldcrash" };
    let sender = start(tag, subnet, 0, 2);
    let receiver = start(tag, subnet, 1, 2);
    for d in [&sender, &receiver] {
        let mut c = d.client();
        assert!(
            eventually(WAIT, || status_number(&c.status().unwrap(), "view_members")
                == Some(2)),
            "no view of 2:\n{}",
            d.log()
        );
    }
    let before = common::newest_view(&mut [sender.client(), receiver.client()]);
    let mut member = receiver.client();
    let gm = member.join("held").unwrap();
    let mut publisher = sender.client();
    let gp = publisher.join("held").unwrap();
    common::wait_settled_view(&mut [sender.client(), receiver.client()], before, WAIT);

    // The member's daemon stops: no flow status reaches the sender, whose window fills
    // after FLOW_WINDOW messages; then the publisher's ring fills.
    receiver.signal(libc::SIGSTOP);
    let mut committed = 0u64;
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(
            Instant::now() < deadline,
            "the ring never filled ({committed} committed)"
        );
        match publisher.offer(gp, &message(committed)) {
            Ok(()) => committed += 1,
            Err(_) if status(&sender, "flow_held") > 0 => break,
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    // Fill what the shard freed before it stopped at the window.
    while publisher.offer(gp, &message(committed)).is_ok() {
        committed += 1;
    }
    assert!(
        committed > 4 * FLOW_WINDOW,
        "only {committed} committed: the ring should hold far more than the window"
    );
    if leave {
        // Leaves the group first (the shard drains the ring, then revokes the right),
        // then goes.
        publisher.leave(gp).unwrap();
    }
    // Dropping the client closes its connection as a crash does: the session ends.
    drop(publisher);
    // The sender's shard has freed the client's ring (its session is gone) while the
    // window still holds: only then may the member's daemon run again.
    assert!(
        eventually(WAIT, || status(&sender, " clients ") == 0),
        "the publisher's session never ended:\n{}",
        sender.client().status().unwrap()
    );
    receiver.signal(libc::SIGCONT);
    receive(&mut member, gm, committed);
    let s = sender.client().status().unwrap();
    assert_eq!(status_number(&s, "publish_abandoned"), Some(0), "{s}");
}

#[test]
fn a_flow_held_publisher_that_leaves_the_group_still_publishes_what_it_committed() {
    a_flow_held_publisher_that_goes_still_publishes_what_it_committed(true);
}

#[test]
fn a_flow_held_publisher_that_crashes_still_publishes_what_it_committed() {
    a_flow_held_publisher_that_goes_still_publishes_what_it_committed(false);
}
