//! Hostile local clients against a real `tuttid`: a client that attaches properly and then
//! lies in its publish ring (indices out of range or misaligned, lengths past the ring,
//! handles it has no right to), rewrites its frames while the shard reads them, floods
//! joins and connections, or dies with a claim open. In every case its session ends (or
//! what it did is refused and counted), the daemon does not panic, and an honest member of
//! the same group publishes and receives all of its messages throughout.

mod common;
#[path = "common/raw.rs"]
mod raw;

use common::{eventually, status_number, Daemon};
use raw::{Honest, RawRing, RawSession};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tutti_client::{Client, Event, Limit, Rights};
use tutti_wire::control::{Reply, Request};
use tutti_wire::shm::PAD_GROUP;

const WAIT: Duration = Duration::from_secs(30);
const GROUP: &str = "shared";

/// A counter's value summed over the shards' pages, or from the control page.
fn counter(client: &mut Client, name: &str) -> u64 {
    let shards: u64 = client
        .counters()
        .unwrap()
        .iter()
        .flat_map(|page| {
            page.values()
                .filter(|(n, _)| *n == name)
                .map(|(_, v)| v)
                .collect::<Vec<_>>()
        })
        .sum();
    let control: u64 = client
        .control_counters()
        .unwrap()
        .values()
        .filter(|(n, _)| *n == name)
        .map(|(_, v)| v)
        .sum();
    shards + control
}

/// The daemon still runs and never panicked.
fn assert_alive(daemon: &mut Daemon) {
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "tuttid exited; log:\n{}",
        daemon.log()
    );
    assert!(!daemon.log().contains("panicked"), "{}", daemon.log());
}

/// Tiny deterministic PRNG (xorshift64*) for the byte flippers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// One lie told through the publish ring of a fresh session that joined `GROUP`.
type Lie = fn(&mut RawSession, &mut RawRing, u32);

/// Commits 56-byte frames until the ring's tail is `target` (waiting for the shard to
/// free room), so that a lie can be told at a chosen position.
fn advance_to(ring: &mut RawRing, handle: u32, target: u64) {
    let deadline = Instant::now() + WAIT;
    while ring.tail < target {
        assert!(Instant::now() < deadline, "the shard stopped reading");
        if ring.commit(handle, &[7u8; 56]).is_none() {
            std::thread::yield_now();
        }
    }
    assert!(eventually(WAIT, || ring.head() == ring.tail));
}

const LIES: &[(&str, Lie)] = &[
    ("tail more than a ring ahead of head", |_, ring, _| {
        ring.store_tail(ring.capacity() + 8)
    }),
    ("misaligned tail", |_, ring, _| ring.store_tail(13)),
    ("tail behind head", |_, ring, handle| {
        advance_to(ring, handle, 640);
        ring.store_tail(64);
    }),
    ("frame length past the committed tail", |_, ring, handle| {
        ring.write_header(0, 1000, handle);
        ring.store_tail(16);
    }),
    ("frame length past the ring", |_, ring, handle| {
        ring.write_header(0, ring.capacity() as u32, handle);
        ring.store_tail(ring.capacity());
    }),
    ("frame length of u32::MAX", |_, ring, handle| {
        ring.write_header(0, u32::MAX, handle);
        ring.store_tail(64);
    }),
    ("frame straddling the ring's end", |_, ring, handle| {
        let end = ring.capacity() - 64;
        advance_to(ring, handle, end);
        ring.write_header(end, 120, handle);
        ring.store_tail(end + 128);
    }),
    ("padding that does not reach the ring's end", |_, ring, _| {
        ring.write_header(0, 100, PAD_GROUP);
        ring.store_tail(112);
    }),
    ("unknown group handle", |_, ring, _| {
        ring.commit(9_999, &[1u8; 56]).unwrap();
    }),
    (
        "handle of a group joined without the publish right",
        |session, ring, _| {
            let other = session.join("subscribe-only", Rights::SUBSCRIBE).unwrap();
            ring.commit(other.joined.handle, &[1u8; 56]).unwrap();
        },
    ),
];

#[test]
fn lies_in_the_publish_ring_end_only_the_liars_session() {
    let mut daemon = Daemon::start("lies", &["--publish-ring-bytes", "65536"]);
    let mut observer = daemon.client();
    let honest = Honest::start(daemon.socket(), GROUP);
    assert!(honest.wait_progress(20));
    for (i, (what, lie)) in LIES.iter().enumerate() {
        let mut session = RawSession::connect(daemon.socket()).unwrap();
        let join = session.join(GROUP, Rights::BOTH).unwrap();
        let mut ring = RawRing::map(join.ring_fd().expect("first join brings a ring"));
        lie(&mut session, &mut ring, join.joined.handle);
        assert!(
            session.wait_ended(WAIT),
            "{what}: the daemon did not end the session; log:\n{}",
            daemon.log()
        );
        assert_eq!(counter(&mut observer, "bad_frames"), i as u64 + 1, "{what}");
        assert!(honest.wait_progress(20), "{what}: the honest member stalled");
        assert_alive(&mut daemon);
    }
    assert!(honest.finish() >= 20 * (LIES.len() as u64 + 1));
    let log = daemon.log();
    for reason in [
        "is inconsistent with head",
        "runs past the committed tail",
        "over the limit",
        "straddles the end",
        "padding at position",
        "has not joined",
    ] {
        assert!(log.contains(reason), "no session ended for {reason:?}:\n{log}");
    }
    assert!(
        eventually(WAIT, || status_number(&observer.status().unwrap(), "clients:")
            == Some(1)),
        "only the observer is left: {}",
        observer.status().unwrap()
    );
    assert_alive(&mut daemon);
}

#[test]
fn bytes_flipped_while_the_shard_reads_never_hurt_the_others() {
    let mut daemon = Daemon::start("flip", &["--publish-ring-bytes", "65536"]);
    let mut observer = daemon.client();
    let honest = Honest::start(daemon.socket(), GROUP);
    assert!(honest.wait_progress(20));
    // For a bounded time (and number of frames): commit frames and flip random bits of the
    // newest ones, mostly in payloads and now and then in headers, while the shard may be
    // reading them. A session the daemon ends is replaced by a new one.
    let mut rng = Rng(0x5EED);
    let (mut committed, mut flips, mut ended) = (0u64, 0u64, 0u64);
    let until = Instant::now() + Duration::from_secs(2);
    let (mut session, mut ring, mut handle);
    'attack: loop {
        session = RawSession::connect(daemon.socket()).unwrap();
        let join = session.join(GROUP, Rights::BOTH).unwrap();
        handle = join.joined.handle;
        ring = RawRing::map(join.ring_fd().unwrap());
        loop {
            if Instant::now() >= until || committed >= 20_000 {
                break 'attack;
            }
            if let Some(position) = ring.commit(handle, &[0xA5u8; 56]) {
                committed += 1;
                for _ in 0..2 {
                    let frame = position.saturating_sub((rng.next() % 4) * 64);
                    let byte = if rng.next().is_multiple_of(16) {
                        rng.next() % 8
                    } else {
                        8 + rng.next() % 56
                    };
                    ring.flip(frame + byte, 1 << (rng.next() % 8));
                    flips += 1;
                }
            }
            let mut fds = Vec::new();
            if matches!(session.conn.try_recv(&mut [0u8; 64], &mut fds), Ok(0)) {
                ended += 1;
                continue 'attack;
            }
        }
    }
    eprintln!("flipper: {committed} frames committed, {flips} bits flipped, {ended} sessions ended");
    assert!(committed > 0 && flips > 0);
    // The last session's frames are all read, or it failed on one (then head stops).
    assert!(eventually(WAIT, || ring.head() == ring.tail
        || counter(&mut observer, "bad_frames") == ended + 1));
    let bad = counter(&mut observer, "bad_frames");
    if bad == ended + 1 {
        assert!(session.wait_ended(WAIT), "a bad frame must end the session");
    } else {
        assert_eq!(
            bad, ended,
            "every ended session is a counted bad frame, and only those"
        );
    }
    assert!(counter(&mut observer, "frames_in") > 0);
    assert!(honest.wait_progress(100), "the honest member stalled");
    honest.finish();
    assert_alive(&mut daemon);
}

#[test]
fn join_and_connection_floods_are_refused_counted_and_bounded() {
    let dir = common::temp_dir("flood-cfg");
    let config = dir.join("tuttid.toml");
    std::fs::write(
        &config,
        "[limits]\njoins_per_second = 20\njoin_burst = 10\nclients_per_uid = 6\n",
    )
    .unwrap();
    let mut daemon = Daemon::start("flood", &["--config", config.to_str().unwrap()]);
    let mut observer = daemon.client();
    let honest = Honest::start(daemon.socket(), GROUP);
    assert!(honest.wait_progress(20));

    // Joins: as fast as one client can ask.
    let mut flooder = RawSession::connect(daemon.socket()).unwrap();
    let started = Instant::now();
    let (mut joined, mut refused) = (0u64, 0u64);
    for i in 0..2_000 {
        let name = format!("flood.{i}");
        let (reply, _fds) = flooder
            .call(&Request::Join {
                name: &name,
                rights: Rights::SUBSCRIBE,
                options: Default::default(),
            })
            .unwrap();
        match Reply::decode(&reply).unwrap() {
            Reply::Joined(_) => joined += 1,
            Reply::LimitReached {
                limit: Limit::JoinRate,
                max: 20,
            } => refused += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The token bucket's bound, from the time the flood really took.
    let bound = 10.0 + 20.0 * elapsed + 1.0;
    assert!((joined as f64) <= bound, "{joined} joins in {elapsed:.2} s");
    assert!(refused > 0);
    assert_eq!(counter(&mut observer, "refused_join_rate"), refused);
    let s = observer.status().unwrap();
    assert!(status_number(&s, "groups:").unwrap() <= joined + 1, "{s}");
    assert!(
        honest.wait_progress(20),
        "the honest member stalled during the join flood"
    );

    // Connections: the observer, the honest member and the flooder hold 3 of the 6.
    let mut extra = Vec::new();
    let mut limited = 0;
    for _ in 0..10 {
        match Client::connect_to(daemon.socket()) {
            Ok(c) => extra.push(c),
            Err(tutti_client::Error::LimitReached {
                limit: Limit::ClientsPerUid,
                max: 6,
            }) => limited += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!((extra.len(), limited), (3, 7));
    assert_eq!(counter(&mut observer, "refused_clients_per_uid"), 7);
    // Leaving gives the places back.
    drop(extra);
    drop(flooder);
    assert!(eventually(WAIT, || Client::connect_to(daemon.socket()).is_ok()));
    assert!(honest.wait_progress(20));
    honest.finish();
    assert_alive(&mut daemon);
}

/// Child role for the death test: publishes three messages, opens a claim, writes half of
/// it and waits for SIGKILL.
#[test]
fn child_dies_mid_claim_role() {
    let Ok(socket) = std::env::var("TUTTI_HOSTILE_CHILD_SOCKET") else {
        return;
    };
    let mut c = Client::connect_to(std::path::Path::new(&socket)).unwrap();
    let g = c.join(GROUP).unwrap();
    for i in 0..3u8 {
        c.offer(g, &[b'w', i]).unwrap();
    }
    assert!(c.flush(WAIT).unwrap());
    let sender = c.sender_id();
    let mut claim = c.try_claim(g, 64).unwrap();
    claim.buf()[..32].fill(0xEE);
    println!("ready {sender}");
    // Keep the claim open until the parent's SIGKILL (60 s only bounds an orphan's life).
    std::thread::sleep(Duration::from_secs(60));
    claim.commit();
}

#[test]
fn a_client_killed_with_a_claim_open_leaves_no_trace_but_what_it_committed() {
    let mut daemon = Daemon::start("midclaim", &[]);
    let mut observer = daemon.client();
    let g = observer.join_as(GROUP, Rights::SUBSCRIBE).unwrap();
    let honest = Honest::start(daemon.socket(), GROUP);
    assert!(honest.wait_progress(20));
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_dies_mid_claim_role",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("TUTTI_HOSTILE_CHILD_SOCKET", daemon.socket())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let sender: u64 = loop {
        let line = lines.next().expect("the child said ready").unwrap();
        // libtest may print "test NAME ... " on the same line first.
        if let Some(at) = line.find("ready ") {
            break line[at + 6..].trim().parse().unwrap();
        }
    };
    child.kill().unwrap(); // SIGKILL, claim open
    child.wait().unwrap();
    assert!(
        eventually(WAIT, || status_number(&observer.status().unwrap(), "clients:")
            == Some(2)),
        "the dead client's session was not ended: {}",
        observer.status().unwrap()
    );
    assert!(honest.wait_progress(50), "the honest member stalled");
    let n = honest.finish();
    // The observer got the child's three committed messages and nothing of the claim.
    let mut from_child = Vec::new();
    let mut from_others = 0u64;
    assert!(eventually(WAIT, || {
        observer
            .poll(g, usize::MAX, |ev| {
                if let Event::Message {
                    sender: s, payload, ..
                } = ev
                {
                    if s == sender {
                        from_child.push(payload.to_vec());
                    } else {
                        from_others += 1;
                    }
                }
            })
            .unwrap();
        from_others >= n
    }));
    assert_eq!(from_child, vec![vec![b'w', 0], vec![b'w', 1], vec![b'w', 2]]);
    assert_alive(&mut daemon);
}

/// A client rewrites each frame right after committing it, while the shard may be copying
/// it: the shard reads a frame once and gives that copy to the local log and to the
/// cluster, so the member on this daemon and the member on another daemon receive the
/// same bytes, message for message (a second read would let them differ).
#[test]
fn local_and_remote_members_get_the_same_bytes_of_a_frame_rewritten_under_the_shard() {
    const SUBNET: u8 = 91;
    const N: u64 = 2_000;
    let ip = |i: usize| format!("127.0.{SUBNET}.{}", i + 1);
    let daemons: Vec<Daemon> = (0..2)
        .map(|i| {
            let dir = common::temp_dir(&format!("reread-cfg{i}"));
            let config = dir.join("tuttid.toml");
            std::fs::write(
                &config,
                format!(
                    "node_id = {}\n[cluster]\nenabled = true\nseeds = [\"1@{}\", \"2@{}\"]\n[net]\nlisten = \"{}\"\nbase_port = 17400\n",
                    i + 1,
                    ip(0),
                    ip(1),
                    ip(i)
                ),
            )
            .unwrap();
            Daemon::start(&format!("reread-{i}"), &["--config", config.to_str().unwrap()])
        })
        .collect();
    let mut status: Vec<Client> = daemons.iter().map(Daemon::client).collect();
    for c in &mut status {
        assert!(eventually(Duration::from_secs(60), || status_number(
            &c.status().unwrap(),
            "view_members"
        ) == Some(2)));
    }
    let before = common::newest_view(&mut status);
    let mut local = daemons[0].client();
    let gl = local.join_as("rewritten", Rights::SUBSCRIBE).unwrap();
    let mut remote = daemons[1].client();
    let gr = remote.join_as("rewritten", Rights::SUBSCRIBE).unwrap();
    let mut writer = RawSession::connect(daemons[0].socket()).unwrap();
    let join = writer.join("rewritten", Rights::PUBLISH).unwrap();
    let mut ring = RawRing::map(join.ring_fd().unwrap());
    common::wait_settled_view(&mut status, before, Duration::from_secs(60));

    let wake = tutti_sys::EventFd::from_owned(join.shard_eventfd().unwrap().try_clone().unwrap());
    let mut rng = Rng(0xF11B);
    let mut committed = 0;
    let mut rewrites = 0u64;
    while committed < N {
        let mut payload = [0u8; 56];
        payload[..8].copy_from_slice(&committed.to_le_bytes());
        let position = ring
            .commit(join.joined.handle, &payload)
            .expect("one frame at a time");
        committed += 1;
        wake.notify();
        // Rewrite payload bytes (never the header: the frame stays well-formed) until the
        // shard has released the frame, i.e. for as long as it may be reading it.
        let deadline = Instant::now() + WAIT;
        while ring.head() <= position {
            assert!(Instant::now() < deadline, "the shard stopped reading");
            ring.flip(position + 8 + rng.next() % 56, 1 << (rng.next() % 8));
            rewrites += 1;
        }
    }
    assert!(
        rewrites >= N,
        "every frame was rewritten while the shard could read it"
    );
    let sender = writer.sender_id();
    let receive = |client: &mut Client, g| {
        let mut got: Vec<Vec<u8>> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while (got.len() as u64) < N {
            assert!(Instant::now() < deadline, "{} of {N} arrived", got.len());
            client
                .poll_blocking(
                    g,
                    1024,
                    tutti_client::IdleStrategy::Backoff,
                    Duration::from_millis(100),
                    |ev| match ev {
                        Event::Message {
                            sender: s, payload, ..
                        } if s == sender => got.push(payload.to_vec()),
                        Event::Message { .. } => {}
                        other => panic!("{other:?}"),
                    },
                )
                .unwrap();
        }
        got
    };
    let here = receive(&mut local, gl);
    let there = receive(&mut remote, gr);
    let differ = here.iter().zip(&there).filter(|(a, b)| a != b).count();
    assert_eq!(
        differ, 0,
        "{differ} of {N} messages differ between the two daemons"
    );
    assert!(
        here.iter()
            .enumerate()
            .any(|(i, m)| m[8..] != [0u8; 48] || m[..8] != (i as u64).to_le_bytes()),
        "no rewrite was ever seen: the test did not race the shard"
    );
}

/// A descriptor's watch page is the client's to scribble on, and its end of the wake pair
/// the client's to leave undrained: a watcher that re-arms its word at position 0 without
/// pause and never reads makes the shard send into a full socket, which never blocks it;
/// the honest member of the same group keeps publishing and receiving. A session that is
/// not a subscriber of the group is refused a descriptor.
#[test]
fn a_watcher_that_scribbles_and_never_drains_hurts_nobody() {
    let mut daemon = Daemon::start("watcher", &[]);
    let mut observer = daemon.client();
    let honest = Honest::start(daemon.socket(), GROUP);
    assert!(honest.wait_progress(20));

    let mut publisher_only = RawSession::connect(daemon.socket()).unwrap();
    let join = publisher_only.join(GROUP, Rights::PUBLISH).unwrap();
    let (reply, fds) = publisher_only
        .call(&Request::Watch {
            handle: join.joined.handle,
            position: 0,
        })
        .unwrap();
    assert!(fds.is_empty());
    assert!(
        matches!(Reply::decode(&reply), Ok(Reply::Error { .. })),
        "a publisher without the subscribe right got a descriptor: {:?}",
        Reply::decode(&reply)
    );

    let mut watcher = RawSession::connect(daemon.socket()).unwrap();
    let join = watcher.join(GROUP, Rights::BOTH).unwrap();
    let (reply, fds) = watcher
        .call(&Request::Watch {
            handle: join.joined.handle,
            position: 0,
        })
        .unwrap();
    assert_eq!(Reply::decode(&reply), Ok(Reply::Done));
    let [end, page]: [std::os::fd::OwnedFd; 2] = fds.try_into().expect("two descriptors");
    let page = tutti_sys::Mapping::map(&page, tutti_wire::shm::WATCH_LEN, true).unwrap();
    let before = counter(&mut observer, "descriptor_wakes");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scribbler = {
        let stop = stop.clone();
        let word = page.as_ptr() as usize + 128;
        std::thread::spawn(move || {
            // SAFETY: an 8-aligned word inside the watch page, mapped for as long as this
            // thread runs (joined before `page` drops).
            let word = unsafe { &*(word as *const std::sync::atomic::AtomicU64) };
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                word.store(1, std::sync::atomic::Ordering::SeqCst);
                std::thread::yield_now();
            }
        })
    };
    assert!(honest.wait_progress(2_000), "the honest member stalled");
    assert!(
        eventually(WAIT, || counter(&mut observer, "descriptor_wakes")
            > before + 3_000),
        "the shard did not keep sending to the armed watcher"
    );
    assert!(
        honest.wait_progress(2_000),
        "the honest member stalled with the watcher's socket full"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    scribbler.join().unwrap();
    drop(page);
    let sent = counter(&mut observer, "descriptor_wakes") - before;
    let mut queued = 0u64;
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: receives into a live buffer of its length.
        let n = unsafe {
            libc::recv(
                std::os::fd::AsRawFd::as_raw_fd(&end),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n <= 0 {
            break;
        }
        queued += n as u64;
    }
    assert!(
        queued < sent,
        "all {sent} sends fit in the socket ({queued} bytes queued): the full case was not reached"
    );
    assert!(honest.finish() >= 4_020);
    assert_alive(&mut daemon);
}
