//! Single-host tests through a real `tuttid` process: attach, publish, deliver, lag,
//! client death, malformed clients, daemon death and clean shutdown.

mod common;

use common::{eventually, shard_counter, status_number, Daemon};
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tutti_client::{Client, Error, Event, GroupId, IdleStrategy, OfferError, Rights};

const WAIT: Duration = Duration::from_secs(30);

fn message(index: u64, len: usize) -> Vec<u8> {
    let mut m = vec![(index % 251) as u8; len.max(8)];
    m[..8].copy_from_slice(&index.to_le_bytes());
    m
}

fn index_of(payload: &[u8]) -> u64 {
    u64::from_le_bytes(payload[..8].try_into().unwrap())
}

/// Receives until `expected` messages per sender arrived; checks FIFO and content.
fn receive_all(client: &mut Client, g: GroupId, senders: &[u64], expected: u64, len: usize) {
    let mut next: HashMap<u64, u64> = senders.iter().map(|&s| (s, 0)).collect();
    let deadline = Instant::now() + WAIT;
    while next.values().any(|&n| n < expected) {
        assert!(Instant::now() < deadline, "timed out; progress {next:?}");
        client
            .poll_blocking(
                g,
                256,
                IdleStrategy::Backoff,
                Duration::from_millis(100),
                |ev| match ev {
                    Event::Message { sender, payload, .. } => {
                        let n = next
                            .get_mut(&sender)
                            .unwrap_or_else(|| panic!("message from unknown sender {sender:#x}"));
                        assert_eq!(index_of(payload), *n, "FIFO per sender");
                        assert_eq!(payload, &message(*n, len)[..], "content intact");
                        *n += 1;
                    }
                    Event::Lagged { missed } => panic!("unexpected lag of {missed}"),
                    Event::Lost { .. } => panic!("a local group loses nothing"),
                    other => panic!("a plain group delivered {other:?}"),
                },
            )
            .unwrap();
    }
}

#[test]
fn attach_publish_deliver_to_every_local_subscriber() {
    let daemon = Daemon::start("deliver", &[]);
    let mut a = daemon.client();
    let mut b = daemon.client();
    let ga = a.join("prices").unwrap();
    let gb = b.join("prices").unwrap();
    let (sa, sb) = (a.sender_id(), b.sender_id());
    assert_ne!(sa, sb);

    // Both publish, interleaved; both receive everything, their own messages included.
    const N: u64 = 5_000;
    let len = 100;
    let (mut ra, mut rb) = (Vec::new(), Vec::new());
    for i in 0..N {
        a.offer_blocking(ga, &message(i, len), IdleStrategy::Backoff, WAIT)
            .unwrap();
        b.offer_blocking(gb, &message(i, len), IdleStrategy::Backoff, WAIT)
            .unwrap();
        // Drain now and then so nobody's log laps them (the test checks FIFO, not lag).
        if i % 256 == 0 {
            a.poll(ga, usize::MAX, |ev| {
                if let Event::Message { sender, payload, .. } = ev {
                    ra.push((sender, index_of(payload)))
                }
            })
            .unwrap();
            b.poll(gb, usize::MAX, |ev| {
                if let Event::Message { sender, payload, .. } = ev {
                    rb.push((sender, index_of(payload)))
                }
            })
            .unwrap();
        }
    }
    // Whatever was already polled must be a FIFO prefix per sender; the rest follows.
    for (got, client, g) in [(ra, &mut a, ga), (rb, &mut b, gb)] {
        let mut next: HashMap<u64, u64> = HashMap::from([(sa, 0), (sb, 0)]);
        for (sender, idx) in got {
            let n = next.get_mut(&sender).unwrap();
            assert_eq!(idx, *n);
            *n += 1;
        }
        let deadline = Instant::now() + WAIT;
        while next.values().any(|&n| n < N) {
            assert!(Instant::now() < deadline, "timed out; progress {next:?}");
            client
                .poll_blocking(g, 256, IdleStrategy::Backoff, Duration::from_millis(100), |ev| {
                    if let Event::Message { sender, payload, .. } = ev {
                        let n = next.get_mut(&sender).unwrap();
                        assert_eq!(index_of(payload), *n);
                        assert_eq!(payload, &message(*n, len)[..]);
                        *n += 1;
                    }
                })
                .unwrap();
        }
    }
    let status = a.status().unwrap();
    assert!(status.contains("prices (shard 0): 2 members"), "{status}");
    assert_eq!(status_number(&status, "frames_in"), Some(2 * N), "{status}");
}

#[test]
fn zero_copy_claim_and_other_groups_are_separate() {
    let daemon = Daemon::start("claim", &[]);
    let mut a = daemon.client();
    let g1 = a.join("one").unwrap();
    let g2 = a.join("two").unwrap();
    let mut b = daemon.client();
    let b2 = b.join("two").unwrap();
    for i in 0..100u64 {
        let mut claim = a.try_claim(g2, 64).unwrap();
        claim.buf().copy_from_slice(&message(i, 64));
        claim.commit();
        // An aborted claim publishes nothing.
        {
            let mut abandoned = a.try_claim(g2, 64).unwrap();
            abandoned.buf().fill(0xEE);
        }
    }
    a.offer(g1, &message(0, 64)).unwrap();
    receive_all(&mut b, b2, &[a.sender_id()], 100, 64);
    // Nothing from group "one" reached a member of "two" only, and no aborted claim did.
    let extra = b.poll(b2, usize::MAX, |_| {}).unwrap();
    assert_eq!(extra, 0);
}

#[test]
fn too_large_names_the_limit_and_back_pressure_is_a_value() {
    let daemon = Daemon::start("limits", &["--publish-ring-bytes", "65536"]);
    let mut a = daemon.client();
    let g = a.join("big").unwrap();
    let max = a.max_message(g).unwrap();
    assert!(max > 0 && max < 65536);
    match a.offer(g, &vec![0u8; max + 1]) {
        Err(OfferError::TooLarge { len, max: m }) => {
            assert_eq!((len, m), (max + 1, max));
            assert!(OfferError::TooLarge { len, max: m }
                .to_string()
                .contains(&max.to_string()));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    a.offer_blocking(g, &vec![7u8; max], IdleStrategy::Backoff, WAIT)
        .unwrap();
    let mut got = 0;
    assert!(eventually(WAIT, || {
        a.poll(g, 16, |ev| {
            if let Event::Message { payload, .. } = ev {
                got += payload.len()
            }
        })
        .unwrap();
        got == max
    }));
    // A daemon that takes nothing: offer_blocking fills the ring, waits out its timeout
    // (the clock is read only once the ring is full) and says so.
    daemon.signal(libc::SIGSTOP);
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let (result, waited) = loop {
        let call = Instant::now();
        match a.offer_blocking(g, &[1u8; 1024], IdleStrategy::Backoff, timeout) {
            Ok(()) => assert!(started.elapsed() < WAIT, "a 64 KiB ring never filled"),
            other => break (other, call.elapsed()),
        }
    };
    daemon.signal(libc::SIGCONT);
    assert!(matches!(result, Err(OfferError::BackPressured)), "{result:?}");
    assert!(waited >= timeout, "gave up after {waited:?}, before its timeout");
}

#[test]
fn slow_subscriber_gets_lagged_and_resumes_without_slowing_the_publisher() {
    let daemon = Daemon::start("lag", &["--publish-ring-bytes", "65536", "--log-bytes", "131072"]);
    let mut publisher = daemon.client();
    let mut slow = daemon.client();
    let gp = publisher.join("firehose").unwrap();
    let gs = slow.join("firehose").unwrap();
    // The slow member reads nothing while 20 logs' worth are published.
    const N: u64 = 40_000;
    for i in 0..N {
        publisher
            .offer_blocking(gp, &message(i, 64), IdleStrategy::Backoff, WAIT)
            .unwrap();
    }
    assert!(publisher.flush(WAIT).unwrap());
    let mut lagged = 0u64;
    let mut indices = Vec::new();
    while let Ok(n) = slow.poll(gs, 1024, |ev| match ev {
        Event::Lagged { missed } => lagged += missed,
        Event::Lost { .. } => panic!("a local group loses nothing"),
        Event::Message { payload, .. } => {
            assert_eq!(
                payload,
                &message(index_of(payload), 64)[..],
                "never a torn message"
            );
            indices.push(index_of(payload));
        }
        other => panic!("a plain group delivered {other:?}"),
    }) {
        if n == 0 {
            break;
        }
    }
    assert!(lagged > 0, "a subscriber lapped by the writer must see Lagged");
    assert!(!indices.is_empty(), "and then resume");
    assert_eq!(
        *indices.last().unwrap(),
        N - 1,
        "it resumes and reaches the newest message"
    );
    assert!(
        indices.windows(2).all(|w| w[1] == w[0] + 1),
        "contiguous after the resume"
    );
    assert_eq!(
        lagged + indices.len() as u64,
        N,
        "every message is either delivered or counted as missed"
    );
}

/// Child role for the kill -9 test: joins, publishes, then waits to be killed.
#[test]
fn child_client_role() {
    let Ok(socket) = std::env::var("TUTTI_TEST_CHILD_SOCKET") else {
        return;
    };
    let mut c = Client::connect_to(std::path::Path::new(&socket)).unwrap();
    let g = c.join("victim").unwrap();
    c.offer(g, b"last words").unwrap();
    println!("ready");
    // The scenario: stay alive, session open, until the parent's SIGKILL (60 s only bounds
    // an orphan's life).
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn kill_9_of_a_client_frees_its_session_and_groups() {
    let daemon = Daemon::start("kill", &[]);
    let mut observer = daemon.client();
    let g = observer.join("victim").unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_client_role",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("TUTTI_TEST_CHILD_SOCKET", daemon.socket())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut words = Vec::new();
    assert!(eventually(WAIT, || {
        observer
            .poll(g, 16, |ev| {
                if let Event::Message { payload, .. } = ev {
                    words.push(payload.to_vec())
                }
            })
            .unwrap();
        !words.is_empty()
    }));
    assert_eq!(words[0], b"last words");
    let status = observer.status().unwrap();
    assert_eq!(status_number(&status, "clients:"), Some(2), "{status}");

    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        eventually(WAIT, || {
            let s = observer.status().unwrap();
            status_number(&s, "clients:") == Some(1) && s.contains("victim (shard 0): 1 members")
        }),
        "{}",
        observer.status().unwrap()
    );
    // Once the last member goes, the group itself is freed.
    observer.leave(g).unwrap();
    let s = observer.status().unwrap();
    assert_eq!(status_number(&s, "groups:"), Some(0), "{s}");
    assert!(daemon.log().contains("client session ended"));
}

/// Speaks the control protocol by hand to get a publish ring, then scribbles on it.
fn raw_client_writes_garbage(daemon: &Daemon, group: &str) -> tutti_sys::SeqPacket {
    use std::os::fd::OwnedFd;
    use tutti_wire::control::{Reply, Request, MAX_MESSAGE, PROTOCOL_VERSION};
    let conn = tutti_sys::SeqPacket::connect(daemon.socket()).unwrap();
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut call = |req: Request<'_>, fds: &mut Vec<OwnedFd>| {
        let mut out = Vec::new();
        req.encode(&mut out);
        conn.send(&out, &[]).unwrap();
        let n = conn.recv(&mut buf, fds).unwrap();
        buf[..n].to_vec()
    };
    let mut fds = Vec::new();
    call(
        Request::Hello {
            version: PROTOCOL_VERSION,
            pid: std::process::id(),
        },
        &mut fds,
    );
    let reply = call(
        Request::Join {
            name: group,
            rights: tutti_wire::control::Rights::BOTH,
            options: Default::default(),
        },
        &mut fds,
    );
    let Ok(Reply::Joined(j)) = Reply::decode(&reply) else {
        panic!("join failed")
    };
    assert_eq!(j.new_shard, 1);
    let ring_fd = &fds[2];
    let len = tutti_sys::file_len(ring_fd).unwrap();
    let ring = tutti_sys::Mapping::map(ring_fd, len, true).unwrap();
    // A frame header claiming a length far past the ring's limit, then a tail that
    // says it was committed.
    // SAFETY: the mapping is `len` bytes; offsets 128 (tail) and 4096 (data) are inside.
    unsafe {
        let data = ring.as_ptr().add(4096);
        data.cast::<u32>().write(u32::MAX - 7);
        data.add(4).cast::<u32>().write(j.handle);
        (*ring.as_ptr().add(128).cast::<std::sync::atomic::AtomicU64>())
            .store(64, std::sync::atomic::Ordering::Release);
    }
    // Keep the session's socket so only the daemon's verdict ends it.
    std::mem::forget(ring);
    conn
}

#[test]
fn a_garbage_frame_ends_only_that_clients_session() {
    let daemon = Daemon::start("garbage", &[]);
    let mut good = daemon.client();
    let mut reader = daemon.client();
    let gg = good.join("shared").unwrap();
    let gr = reader.join("shared").unwrap();
    for i in 0..100 {
        good.offer(gg, &message(i, 32)).unwrap();
    }
    let conn = raw_client_writes_garbage(&daemon, "shared");
    // The offender's session is ended: its socket reads end of file.
    let mut buf = [0u8; 64];
    let mut fds = Vec::new();
    let mut read = Err(std::io::Error::other("not tried"));
    eventually(WAIT, || {
        read = conn.try_recv(&mut buf, &mut fds);
        read.is_ok()
    });
    let n = read.unwrap_or_else(|e| panic!("session not ended: {e}"));
    assert_eq!(n, 0, "the daemon hung up on the offender");
    for i in 100..200 {
        good.offer_blocking(gg, &message(i, 32), IdleStrategy::Backoff, WAIT)
            .unwrap();
    }
    receive_all(&mut reader, gr, &[good.sender_id()], 200, 32);
    let status = reader.status().unwrap();
    assert_eq!(status_number(&status, "bad_frames"), Some(1), "{status}");
    assert!(
        daemon.log().contains("broke the ring protocol"),
        "{}",
        daemon.log()
    );
}

/// A subscriber parked in `poll_blocking` and woken by a delivery takes the message
/// without a system call of its own first: the liveness check (a `recvmsg` on the control
/// socket) is for parks that bring nothing. It used to run after every park, on the path
/// of every message to a sleeping subscriber.
#[test]
fn a_woken_subscriber_takes_the_message_without_a_liveness_check() {
    let daemon = Daemon::start("woken", &[]);
    let mut publisher = daemon.client();
    let gp = publisher.join("g").unwrap();
    let mut reader = daemon.client();
    let gr = reader.join("g").unwrap();
    const ROUNDS: u64 = 20;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let subscriber = std::thread::spawn(move || {
        let before = reader.liveness_checks();
        for round in 0..ROUNDS {
            ready_tx.send(()).unwrap();
            let mut got = Vec::new();
            while got.is_empty() {
                reader
                    .poll_blocking(gr, 16, IdleStrategy::Backoff, WAIT, |e| {
                        if let Event::Message { payload, .. } = e {
                            got.push(index_of(payload));
                        }
                    })
                    .unwrap();
            }
            assert_eq!(got, [round]);
        }
        reader.liveness_checks() - before
    });
    for round in 0..ROUNDS {
        ready_rx.recv().unwrap();
        // Long past the subscriber's spin, well inside one park slice (100 ms).
        std::thread::sleep(Duration::from_millis(20));
        publisher
            .offer_blocking(gp, &message(round, 32), IdleStrategy::Backoff, WAIT)
            .unwrap();
    }
    let checks = subscriber.join().unwrap();
    // A park slice that runs out (a host stalled for 80 ms) is checked: allow a few.
    assert!(
        checks < ROUNDS / 2,
        "{checks} liveness checks over {ROUNDS} woken parks"
    );
}

fn readable(fd: std::os::fd::RawFd, timeout: Duration) -> bool {
    let mut revents = Vec::new();
    tutti_sys::poll_readable(&[fd], &mut revents, Some(timeout)).unwrap();
    revents.first().is_some_and(|r| *r & tutti_sys::POLLIN != 0)
}

fn descriptor_wakes(client: &mut Client) -> u64 {
    shard_counter(client, "descriptor_wakes")
}

fn publish_range(client: &mut Client, g: GroupId, range: std::ops::Range<u64>, len: usize) {
    for i in range {
        client
            .offer_blocking(g, &message(i, len), IdleStrategy::Backoff, WAIT)
            .unwrap();
    }
    assert!(client.flush(WAIT).unwrap(), "the daemon took every frame");
}

/// A group whose local members only publish has nobody to read its log: the shard does
/// not write it (counted in `unlogged`). A subscriber that joins later gets every message
/// published from its join on, in order and whole; once its session is gone the log is
/// not written again.
#[test]
fn a_group_without_local_readers_is_not_logged_and_a_later_subscriber_gets_the_rest() {
    let daemon = Daemon::start("unlogged", &[]);
    let len = 64;
    let mut observer = daemon.client();
    let mut publisher = daemon.client();
    let g = publisher.join_as("quiet", Rights::PUBLISH).unwrap();
    let sender = publisher.sender_id();

    publish_range(&mut publisher, g, 0..100, len);
    assert!(
        eventually(WAIT, || shard_counter(&mut observer, "unlogged") == 100),
        "100 frames without a reader: unlogged = {}",
        shard_counter(&mut observer, "unlogged")
    );

    // A subscriber: what is published from now on is logged, and it gets all of it.
    let mut subscriber = daemon.client();
    let gs = subscriber.join_as("quiet", Rights::SUBSCRIBE).unwrap();
    let mut next = 100;
    let deadline = Instant::now() + WAIT;
    for round in 0..4u64 {
        publish_range(&mut publisher, g, 100 + round * 500..100 + (round + 1) * 500, len);
        while next < 100 + (round + 1) * 500 {
            assert!(Instant::now() < deadline, "timed out at {next}");
            subscriber
                .poll_blocking(
                    gs,
                    256,
                    IdleStrategy::Backoff,
                    Duration::from_millis(100),
                    |ev| match ev {
                        Event::Message {
                            sender: s, payload, ..
                        } => {
                            assert_eq!(s, sender);
                            assert_eq!(index_of(payload), next, "from its join on, in order");
                            assert_eq!(payload, &message(next, len)[..], "content intact");
                            next += 1;
                        }
                        other => panic!("a plain group delivered {other:?}"),
                    },
                )
                .unwrap();
        }
    }
    assert_eq!(
        shard_counter(&mut observer, "unlogged"),
        100,
        "a reader's group is logged"
    );

    // The reader goes (its session ends without a leave): nothing is logged again. The
    // shard hears of it after the control thread: publish until a frame goes unlogged.
    drop(subscriber);
    let mut i = 2_100;
    assert!(
        eventually(WAIT, || {
            publish_range(&mut publisher, g, i..i + 1, len);
            i += 1;
            shard_counter(&mut observer, "unlogged") > 100
        }),
        "frames after the reader left are not logged"
    );
    let before = shard_counter(&mut observer, "unlogged");
    publish_range(&mut publisher, g, i..i + 50, len);
    assert!(eventually(WAIT, || shard_counter(&mut observer, "unlogged") == before + 50));

    // A member with both rights reads: logged again, and its own messages come back.
    let mut both = daemon.client();
    let gb = both.join("quiet").unwrap();
    publish_range(&mut both, gb, 0..10, len);
    let own = both.sender_id();
    receive_all(&mut both, gb, &[own], 10, len);
    assert_eq!(shard_counter(&mut observer, "unlogged"), before + 50);
    let status = observer.status().unwrap();
    assert!(status.contains("quiet (shard 0): 2 members"), "{status}");
}

/// A descriptor from `Client::watch` (the C API's `tutti_fd`, libcpg's `cpg_fd_get`) is
/// made readable by the daemon itself: readable at once for records already waiting, for
/// every record after the reader armed it (a lost wake-up times the wait out), never for
/// records already read (a wake-up that finds nothing is counted), one send per arming,
/// and readable for good once the daemon is gone.
#[test]
fn a_watched_descriptor_wakes_for_unread_records_only() {
    const N: u64 = 3_000;
    let mut daemon = Daemon::start("watch", &[]);
    let mut publisher = daemon.client();
    let gp = publisher.join("g").unwrap();
    let mut reader = daemon.client();
    let gr = reader.join("g").unwrap();
    publisher
        .offer_blocking(gp, &message(0, 32), IdleStrategy::Backoff, WAIT)
        .unwrap();
    assert!(eventually(WAIT, || reader.has_data(gr).unwrap()));
    let watch = reader.watch(gr).unwrap();
    assert!(
        readable(watch.fd(), WAIT),
        "a record waited when the descriptor was made"
    );

    let mut got = Vec::new();
    let (mut wakes, mut empty_wakes, mut arms) = (0u64, 0u64, 0u64);
    let mut counters_client = daemon.client();
    let wakes_before = descriptor_wakes(&mut counters_client);
    let sender = std::thread::spawn(move || {
        for i in 1..N {
            publisher
                .offer_blocking(gp, &message(i, 32), IdleStrategy::Backoff, WAIT)
                .unwrap();
            // Bursts and pauses: the reader is sometimes armed, sometimes reading.
            if i % 5 == 0 {
                std::thread::sleep(Duration::from_micros(100 + (i % 7) * 50));
            }
        }
        publisher
    });
    while (got.len() as u64) < N {
        assert!(
            readable(watch.fd(), WAIT),
            "no wake-up with {} of {N} records read",
            got.len()
        );
        wakes += 1;
        let before = got.len();
        loop {
            watch.before_read();
            reader
                .poll(gr, 64, |e| {
                    if let Event::Message { payload, .. } = e {
                        got.push(index_of(payload));
                    }
                })
                .unwrap();
            arms += 1;
            if reader.watch_drained(&watch).unwrap() {
                break;
            }
        }
        if got.len() == before {
            empty_wakes += 1;
        }
        // Readable now only for a record appended since (checked in that order).
        assert!(!readable(watch.fd(), Duration::ZERO) || reader.has_data(gr).unwrap());
    }
    let publisher = sender.join().unwrap();
    assert_eq!(got, (0..N).collect::<Vec<_>>());
    assert_eq!(
        empty_wakes, 0,
        "{empty_wakes} of {wakes} wake-ups found nothing to read"
    );
    assert!(
        !readable(watch.fd(), Duration::from_millis(50)),
        "readable with nothing to read"
    );
    let sent = descriptor_wakes(&mut counters_client) - wakes_before;
    eprintln!("{N} records: {wakes} wake-ups, {arms} armings, {sent} sent by the daemon");
    // The first wake-up (records already waiting) may be counted after `wakes_before`.
    assert!(
        sent <= arms + 1,
        "the daemon sent {sent} wake-ups for {arms} armings (at most one each)"
    );
    assert!(wakes < N, "{wakes} wake-ups for {N} records: no batching at all");

    drop(publisher);
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    assert!(readable(watch.fd(), WAIT), "the daemon died: readable for good");
    watch.before_read();
    let n = reader.poll(gr, 64, |_| {}).unwrap_or(0);
    assert_eq!(n, 0);
    assert!(watch.hung_up());
}

#[test]
fn clients_learn_that_the_daemon_is_gone() {
    let mut daemon = Daemon::start("gone", &[]);
    let mut a = daemon.client();
    let g = a.join("g").unwrap();
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    let r = a.poll_blocking(g, 16, IdleStrategy::Backoff, WAIT, |_| {});
    assert!(matches!(r, Err(Error::DaemonGone)), "{r:?}");
    assert_eq!(a.offer(g, b"x"), Err(OfferError::Closed));
}

#[test]
fn sigterm_stops_cleanly_and_a_second_daemon_is_refused() {
    let mut daemon = Daemon::start("term", &[]);
    let second = Command::new(env!("CARGO_BIN_EXE_tuttid"))
        .arg("--socket")
        .arg(daemon.socket())
        .args(["--no-pin"])
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already listens"));

    let mut a = daemon.client();
    let g = a.join("g").unwrap();
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit(WAIT), Some(0), "{}", daemon.log());
    assert!(!daemon.socket().exists(), "socket file removed on clean stop");
    let r = a.poll_blocking(g, 16, IdleStrategy::Backoff, WAIT, |_| {});
    assert!(matches!(r, Err(Error::DaemonGone)), "{r:?}");
}

#[test]
fn bad_config_is_an_error_naming_the_key() {
    let dir = common::temp_dir("config");
    let path = dir.join("bad.toml");
    std::fs::write(&path, "log_bytes = 12345\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tuttid"))
        .arg("--check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("log_bytes"));
    std::fs::write(&path, "idle = \"spin\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tuttid"))
        .arg("--check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// Publishes `count` messages 10 ms apart through a daemon with `--spin-after-data-us
/// spin_us`, once its shard parked after the join; checks every one was taken and returns
/// how much the shard counter `counter` grew meanwhile.
fn sparse_messages(spin_us: &str, count: u64, counter: &str) -> u64 {
    let daemon = Daemon::start("spin-after-data", &["--spin-after-data-us", spin_us]);
    let mut publisher = daemon.client();
    let g = publisher.join_as("sparse", Rights::PUBLISH).unwrap();
    // The join's chores done, the shard parked.
    std::thread::sleep(Duration::from_millis(300));
    let before = shard_counter(&mut publisher, counter);
    for i in 0..count {
        publish_range(&mut publisher, g, i..i + 1, 64);
        std::thread::sleep(Duration::from_millis(10));
    }
    let grown = shard_counter(&mut publisher, counter) - before;
    assert_eq!(shard_counter(&mut publisher, "frames_in"), count);
    grown
}

/// `spin_after_data_us`: a `backoff` shard keeps polling that long after its last data
/// before it parks, so sparse traffic within it costs no park (and the next message no
/// wake-up); with 0 it parks after every message. Messages 10 ms apart: with 100 ms the
/// shard parks at most a few times (a publisher descheduled past the spin adds one), with
/// 0 about once per message.
#[test]
fn a_shard_spins_spin_after_data_us_before_it_parks() {
    let parks_while_sparse = |spin_us: &str| sparse_messages(spin_us, 20, "parks");
    let long = parks_while_sparse("100000");
    let none = parks_while_sparse("0");
    assert!(
        long <= 3,
        "with a 100 ms spin after data the shard parked {long} times in 20 messages 10 ms apart"
    );
    assert!(
        none >= 10,
        "with no spin after data the shard parked only {none} times in 20 messages 10 ms apart"
    );
}

/// `cpu_poll_after_data_ms`: a shard that had data asks the kernel to keep idle CPUs
/// polling (a request for 0 µs on `/dev/cpu_dma_latency`) at its next park, and gives the
/// request back once it has had no data for that long; the next data takes it again. No
/// data, no request. Where this user may not open the device (not root) the shard counts
/// `cpu_poll_refused` and delivers all the same.
#[test]
fn a_shard_keeps_idle_cpus_polling_after_data_and_lets_go_after_cpu_poll_after_data_ms() {
    let daemon = Daemon::start("cpu-poll", &["--cpu-poll-after-data-ms", "300"]);
    let mut publisher = daemon.client();
    let g = publisher.join_as("polled", Rights::PUBLISH).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        shard_counter(&mut publisher, "cpu_poll_holds"),
        0,
        "no data, no request"
    );
    publish_range(&mut publisher, g, 0..1, 64);
    assert!(
        eventually(WAIT, || {
            shard_counter(&mut publisher, "cpu_poll_holds")
                + shard_counter(&mut publisher, "cpu_poll_refused")
                > 0
        }),
        "the shard neither took its request nor was refused it"
    );
    if shard_counter(&mut publisher, "cpu_poll_refused") > 0 {
        assert!(
            tutti_sys::CpuLatencyHold::take().is_err(),
            "the daemon was refused a device this test may open"
        );
        publish_range(&mut publisher, g, 1..2, 64);
        assert_eq!(shard_counter(&mut publisher, "frames_in"), 2);
        return;
    }
    assert_eq!(shard_counter(&mut publisher, "cpu_poll_holds"), 1);
    let held_at = Instant::now();
    assert_eq!(
        tutti_sys::cpu_latency_limit_us().unwrap(),
        0,
        "idle CPUs poll while held"
    );
    // Given back after 300 ms without data (another process's request may briefly hold
    // the limit at 0 too: wait for it to lift).
    assert!(
        eventually(WAIT, || tutti_sys::cpu_latency_limit_us().unwrap() > 0),
        "the request not given back after 300 ms without data"
    );
    assert!(
        held_at.elapsed() >= Duration::from_millis(250),
        "given back {:?} after it was seen held, before 300 ms without data",
        held_at.elapsed()
    );
    publish_range(&mut publisher, g, 1..2, 64);
    assert!(
        eventually(WAIT, || shard_counter(&mut publisher, "cpu_poll_holds") == 2),
        "no new request after new data"
    );
}

/// A spin after data that keeps catching nothing is skipped: with messages 10 ms apart and
/// a 1 ms spin, every spin misses, so after 8 stretches the shard parks at once after each
/// message (counted in `spins_skipped`) but for a probe every 16th stretch; every message
/// is still taken. (Spins that catch work go on: `a_shard_spins_spin_after_data_us_before_it_parks`.)
#[test]
fn a_shard_stops_spinning_after_data_when_its_spins_catch_nothing() {
    let skipped = sparse_messages("1000", 24, "spins_skipped");
    // Stretches 9-16 and 18-24 skip (15); the 17th probes.
    assert!(
        (12..=16).contains(&skipped),
        "{skipped} spins skipped in 24 messages 10 ms apart, each spin catching nothing"
    );
}
