//! The UDP transport over real loopback sockets, for both back ends (io_uring in both its
//! receive modes, and epoll): bulk exchange with content checks, `wait` wake-ups, back
//! pressure, truncation, and the fault injector's loss, duplication, delay and partitions.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tutti_daemon::net::uring::{RecvMode, UringTransport};
use tutti_daemon::net::{self, FaultConfig, IoMode, NetConfig, SendError, Transport};
use tutti_sys::EventFd;

/// Longest any single test waits for datagrams before failing.
const DEADLINE: Duration = Duration::from_secs(20);

fn config(io: IoMode) -> NetConfig {
    // Logs show with --nocapture (and for failing tests).
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("tutti_daemon=debug")
        .try_init();
    NetConfig {
        listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
        base_port: 0,
        io,
        ..NetConfig::default()
    }
}

#[derive(Clone, Copy, Debug)]
enum Backend {
    Epoll,
    UringMultishot,
    UringPool,
}

const ALL: [Backend; 3] = [Backend::Epoll, Backend::UringMultishot, Backend::UringPool];

/// Opens a transport of `backend`, or None (with a notice) when the kernel refuses
/// io_uring outright (never the case on the developers' machines).
fn open(backend: Backend, config: &NetConfig) -> Option<Box<dyn Transport>> {
    match backend {
        Backend::Epoll => Some(
            net::open(
                &NetConfig {
                    io: IoMode::Epoll,
                    ..config.clone()
                },
                0,
            )
            .unwrap(),
        ),
        Backend::UringMultishot | Backend::UringPool => {
            let mode = match backend {
                Backend::UringPool => RecvMode::Pool,
                _ => RecvMode::Multishot,
            };
            match UringTransport::open_with(config, 0, Some(mode)) {
                Ok(t) => {
                    assert_eq!(t.features().recv, mode);
                    Some(Box::new(t))
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::ENOSYS)) => {
                    eprintln!("NOTICE: io_uring refused by this kernel ({e}); skipping {backend:?}");
                    None
                }
                Err(e) => panic!("io_uring {backend:?}: {e}"),
            }
        }
    }
}

/// A tiny xorshift for payload sizes and bytes (tests only).
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Payload of datagram `seq`: the sequence number, then bytes derived from it.
fn payload(seq: u64, len: usize, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend((8..len.max(8)).map(|i| (seq as usize * 31 + i) as u8));
}

fn check_payload(bytes: &[u8]) -> u64 {
    assert!(bytes.len() >= 8, "short datagram ({} bytes)", bytes.len());
    let seq = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    for (i, &b) in bytes.iter().enumerate().skip(8) {
        assert_eq!(
            b,
            (seq as usize * 31 + i) as u8,
            "datagram {seq}: byte {i} corrupt"
        );
    }
    seq
}

/// Receives until `want` datagrams arrived (waiting in between) or `within` passes.
fn recv_n(
    t: &mut dyn Transport,
    wake: &EventFd,
    want: usize,
    within: Duration,
) -> Vec<(SocketAddr, Vec<u8>)> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < want && Instant::now() < deadline {
        let n = t
            .recv(want - got.len(), &mut |from, bytes| {
                got.push((from, bytes.to_vec()))
            })
            .unwrap();
        if n == 0 {
            t.wait(Duration::from_millis(20), wake.fd().as_raw_fd()).unwrap();
        }
    }
    got
}

/// Sends `count` datagrams of random sizes from `a` to `b` and back in batches of at most
/// `batch`, checking every byte and that each arrives exactly once.
fn exchange(a: &mut dyn Transport, b: &mut dyn Transport, count: u64, batch: usize, max: usize) {
    let wake = EventFd::new().unwrap();
    let (a_addr, b_addr) = (a.local_addr(), b.local_addr());
    // Counts from earlier exchanges on the same transports.
    let (a0, b0) = (a.stats(), b.stats());
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut buf = Vec::new();
    let mut seen_b = HashSet::new();
    let mut seen_a = HashSet::new();
    let mut seq = 0;
    let started = Instant::now();
    while seq < count {
        let n = (batch as u64).min(count - seq);
        for s in seq..seq + n {
            payload(s, 8 + (rng.next() as usize % (max - 7)), &mut buf);
            a.queue(b_addr, &buf).unwrap();
            b.queue(a_addr, &buf).unwrap();
        }
        assert_eq!(a.flush().unwrap(), n as usize);
        assert_eq!(b.flush().unwrap(), n as usize);
        let check = |got: Vec<(SocketAddr, Vec<u8>)>, from_addr: SocketAddr, seen: &mut HashSet<u64>| {
            assert_eq!(
                got.len(),
                n as usize,
                "batch at {seq}: {} of {n} arrived",
                got.len()
            );
            for (from, bytes) in got {
                assert_eq!(from, from_addr);
                let s = check_payload(&bytes);
                assert!(
                    (seq..seq + n).contains(&s),
                    "datagram {s} outside batch {seq}..{}",
                    seq + n
                );
                assert!(seen.insert(s), "datagram {s} twice");
            }
        };
        check(recv_n(b, &wake, n as usize, DEADLINE), a_addr, &mut seen_b);
        check(recv_n(a, &wake, n as usize, DEADLINE), b_addr, &mut seen_a);
        seq += n;
        assert!(started.elapsed() < DEADLINE * 3, "exchange too slow");
    }
    assert_eq!(seen_a.len() as u64, count);
    assert_eq!(seen_b.len() as u64, count);
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(
        (sa.received - a0.received, sb.received - b0.received),
        (count, count)
    );
    // io_uring counts a send when its completion arrives: let the last ones in.
    let sent = |a: &dyn Transport, b: &dyn Transport| (a.stats().sent - a0.sent, b.stats().sent - b0.sent);
    let deadline = Instant::now() + Duration::from_secs(2);
    while sent(a, b) != (count, count) && Instant::now() < deadline {
        let _ = a.recv(1, &mut |_, _| {});
        let _ = b.recv(1, &mut |_, _| {});
    }
    assert_eq!(sent(a, b), (count, count));
    assert_eq!(a.stats().send_errors + b.stats().send_errors, 0);
}

#[test]
fn ten_thousand_datagrams_each_way_on_every_backend() {
    let c = config(IoMode::Auto);
    for backend in ALL {
        let (Some(mut a), Some(mut b)) = (open(backend, &c), open(backend, &c)) else {
            continue;
        };
        eprintln!("{backend:?}: {} <-> {}", a.local_addr(), b.local_addr());
        exchange(&mut *a, &mut *b, 10_000, c.batch, c.max_datagram);
    }
}

/// A lone datagram with nothing in flight goes out by `sendmsg(2)` on io_uring, a batch
/// through the ring: one after the other, every datagram arrives once, intact, and each
/// counts once as sent.
#[test]
fn lone_datagrams_and_batches_take_turns_on_every_backend() {
    let c = config(IoMode::Auto);
    for backend in ALL {
        let (Some(mut a), Some(mut b)) = (open(backend, &c), open(backend, &c)) else {
            continue;
        };
        let mut total = 0;
        for batch in [1, 37, 1, 5, 1] {
            exchange(&mut *a, &mut *b, 300, batch, c.max_datagram);
            total += 300;
        }
        assert_eq!(a.stats().sent, total, "{backend:?}: a's sends");
        assert_eq!(b.stats().sent, total, "{backend:?}: b's sends");
        assert_eq!(a.stats().send_errors + b.stats().send_errors, 0, "{backend:?}");
    }
}

#[test]
fn backends_talk_to_each_other_with_large_datagrams_and_odd_batches() {
    let c = NetConfig {
        max_datagram: 9000,
        batch: 7,
        ..config(IoMode::Auto)
    };
    let (Some(mut a), Some(mut b)) = (open(Backend::Epoll, &c), open(Backend::UringMultishot, &c)) else {
        return;
    };
    // Batches larger than `batch` exercise several sendmmsg calls per flush.
    exchange(&mut *a, &mut *b, 1_000, 20, c.max_datagram);
}

#[test]
fn wait_returns_on_data_on_wake_and_on_timeout() {
    let c = config(IoMode::Auto);
    for backend in ALL {
        let (Some(mut a), Some(mut b)) = (open(backend, &c), open(backend, &c)) else {
            continue;
        };
        let wake = Arc::new(EventFd::new().unwrap());
        let fd = wake.fd().as_raw_fd();

        // Timeout: nothing happens.
        let t0 = Instant::now();
        b.wait(Duration::from_millis(60), fd).unwrap();
        let slept = t0.elapsed();
        assert!(
            slept >= Duration::from_millis(50),
            "{backend:?}: woke after {slept:?}"
        );
        assert!(slept < Duration::from_secs(2), "{backend:?}: slept {slept:?}");

        // Wake descriptor notified from another thread while waiting.
        let notifier = {
            let wake = wake.clone();
            std::thread::spawn(move || {
                // The scenario: notify while the main thread is blocked in `wait`.
                std::thread::sleep(Duration::from_millis(50));
                wake.notify();
            })
        };
        let t0 = Instant::now();
        b.wait(Duration::from_secs(10), fd).unwrap();
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{backend:?}: wake not seen"
        );
        notifier.join().unwrap();
        // Level-triggered: still readable, so it returns at once; drained, it sleeps again.
        let t0 = Instant::now();
        b.wait(Duration::from_secs(10), fd).unwrap();
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "{backend:?}: undrained wake not seen"
        );
        assert!(wake.drain());
        let t0 = Instant::now();
        b.wait(Duration::from_millis(30), fd).unwrap();
        assert!(
            t0.elapsed() >= Duration::from_millis(20),
            "{backend:?}: drained wake still fires"
        );

        // A datagram sent from another thread while waiting.
        let b_addr = b.local_addr();
        let sender = std::thread::spawn(move || {
            // The scenario: send while the main thread is blocked in `wait`.
            std::thread::sleep(Duration::from_millis(50));
            a.queue(b_addr, b"ping").unwrap();
            a.flush().unwrap();
            a // kept open (an io_uring send may still be in flight) until `b` has the ping
        });
        let t0 = Instant::now();
        let mut got = 0;
        while got == 0 && t0.elapsed() < Duration::from_secs(5) {
            b.wait(Duration::from_secs(10), fd).unwrap();
            got += b.recv(8, &mut |_, bytes| assert_eq!(bytes, b"ping")).unwrap();
        }
        assert_eq!(got, 1, "{backend:?}: datagram not seen");
        assert!(t0.elapsed() < Duration::from_secs(5));
        drop(sender.join().unwrap());
    }
}

#[test]
fn queue_reports_back_pressure_and_bad_datagrams() {
    let c = NetConfig {
        batch: 4,
        max_datagram: 100,
        ..config(IoMode::Auto)
    };
    for backend in ALL {
        let (Some(mut a), Some(mut b)) = (open(backend, &c), open(backend, &c)) else {
            continue;
        };
        let to = b.local_addr();
        let slots = c.batch * net::SEND_QUEUE_BATCHES;
        for _ in 0..slots {
            a.queue(to, b"x").unwrap();
        }
        assert_eq!(a.queue(to, b"x"), Err(SendError::QueueFull), "{backend:?}");
        assert_eq!(a.stats().queue_full, 1);
        assert_eq!(
            a.queue(to, &[0; 101]),
            Err(SendError::TooLarge { len: 101, max: 100 })
        );
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        assert_eq!(a.queue(v6, b"x"), Err(SendError::AddressFamily(v6)));
        assert_eq!(a.flush().unwrap(), slots);
        let wake = EventFd::new().unwrap();
        assert_eq!(recv_n(&mut *b, &wake, slots, DEADLINE).len(), slots);
    }
}

#[test]
fn oversize_datagrams_are_counted_and_dropped() {
    let big = NetConfig {
        max_datagram: 2000,
        ..config(IoMode::Auto)
    };
    let small = NetConfig {
        max_datagram: 100,
        ..config(IoMode::Auto)
    };
    for backend in ALL {
        let (Some(mut a), Some(mut b)) = (open(backend, &big), open(backend, &small)) else {
            continue;
        };
        let to = b.local_addr();
        a.queue(to, &[1; 101]).unwrap();
        a.queue(to, &[2; 1500]).unwrap();
        a.queue(to, &[3; 100]).unwrap();
        a.flush().unwrap();
        let wake = EventFd::new().unwrap();
        let got = recv_n(&mut *b, &wake, 1, DEADLINE);
        assert_eq!(got.len(), 1, "{backend:?}");
        assert_eq!(got[0].1, vec![3; 100]);
        assert_eq!(b.stats().truncated, 2, "{backend:?}");
    }
}

fn faulty(fault: FaultConfig) -> (Box<dyn Transport>, Box<dyn Transport>) {
    let plain = config(IoMode::Epoll);
    let with_faults = NetConfig {
        fault,
        ..plain.clone()
    };
    (net::open(&with_faults, 0).unwrap(), net::open(&plain, 0).unwrap())
}

/// Sends `count` numbered datagrams from `a` to `b` in paced batches; returns the numbers
/// that arrived, in arrival order.
fn send_numbered(a: &mut dyn Transport, b: &mut dyn Transport, count: u64) -> Vec<u64> {
    let wake = EventFd::new().unwrap();
    let to = b.local_addr();
    let mut got = Vec::new();
    for start in (0..count).step_by(32) {
        for s in start..(start + 32).min(count) {
            a.queue(to, &s.to_le_bytes()).unwrap();
        }
        a.flush().unwrap();
        // Collect whatever arrives; a short idle gap means the batch is through.
        let mut idle = 0;
        while idle < 3 {
            let n = b
                .recv(64, &mut |_, bytes| {
                    got.push(u64::from_le_bytes(bytes.try_into().unwrap()))
                })
                .unwrap();
            if n == 0 {
                idle += 1;
                b.wait(Duration::from_millis(2), wake.fd().as_raw_fd()).unwrap();
            }
        }
    }
    got
}

#[test]
fn loss_is_within_bounds_and_repeats_with_the_seed() {
    let run = |seed| {
        let (mut a, mut b) = faulty(FaultConfig {
            loss: 0.3,
            seed,
            ..FaultConfig::default()
        });
        let got = send_numbered(&mut *a, &mut *b, 2000);
        assert_eq!(a.stats().fault.lost_out as usize, 2000 - got.len());
        got
    };
    let first = run(42);
    // Binomial(2000, 0.7): mean 1400, sd 20.5; 5 sd either side.
    assert!((1297..=1503).contains(&first.len()), "{} delivered", first.len());
    assert_eq!(first, run(42), "same seed, different losses");
    assert_ne!(first, run(43), "different seeds, same losses");
}

#[test]
fn fault_injector_refuses_what_the_socket_would() {
    let (mut a, b) = faulty(FaultConfig {
        delay_us: 1_000,
        ..FaultConfig::default()
    });
    let v6: SocketAddr = "[::1]:9".parse().unwrap();
    assert_eq!(a.queue(v6, b"x"), Err(SendError::AddressFamily(v6)));
    assert_eq!(
        a.queue(b.local_addr(), &[0; 1473]),
        Err(SendError::TooLarge { len: 1473, max: 1472 })
    );
    assert_eq!(a.stats().fault.delayed, 0);
}

#[test]
fn incoming_loss_drops_on_receive() {
    let plain = config(IoMode::Epoll);
    let lossy_receiver = NetConfig {
        fault: FaultConfig {
            loss_incoming: 1.0,
            ..FaultConfig::default()
        },
        ..plain.clone()
    };
    let mut a = net::open(&plain, 0).unwrap();
    let mut b = net::open(&lossy_receiver, 0).unwrap();
    assert!(send_numbered(&mut *a, &mut *b, 100).is_empty());
    assert_eq!(b.stats().fault.lost_in, 100);
}

#[test]
fn partition_drops_both_ways_and_heals() {
    let (mut a, b) = faulty(FaultConfig::default());
    // No fault configured: `open` does not wrap, so partition control says so.
    assert!(!a.set_partitioned(&[b.local_addr()]));

    let (mut a, mut b) = faulty(FaultConfig {
        partition: vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)), 0)],
        ..FaultConfig::default()
    });
    assert_eq!(
        send_numbered(&mut *a, &mut *b, 50).len(),
        50,
        "unrelated partition blocks"
    );
    assert!(a.set_partitioned(&[b.local_addr()]));
    assert!(
        send_numbered(&mut *a, &mut *b, 50).is_empty(),
        "a -> b crosses the partition"
    );
    assert!(
        send_numbered(&mut *b, &mut *a, 50).is_empty(),
        "b -> a crosses the partition"
    );
    let f = a.stats().fault;
    assert_eq!((f.partitioned_out, f.partitioned_in), (50, 50));
    // Port 0 cuts every port of the address.
    assert!(a.set_partitioned(&[SocketAddr::new(b.local_addr().ip(), 0)]));
    assert!(send_numbered(&mut *a, &mut *b, 10).is_empty());
    assert!(a.set_partitioned(&[]));
    assert_eq!(send_numbered(&mut *a, &mut *b, 50).len(), 50, "healed a -> b");
    assert_eq!(send_numbered(&mut *b, &mut *a, 50).len(), 50, "healed b -> a");
}

#[test]
fn duplication_duplicates() {
    let (mut a, mut b) = faulty(FaultConfig {
        duplicate: 1.0,
        ..FaultConfig::default()
    });
    let got = send_numbered(&mut *a, &mut *b, 100);
    assert_eq!(got.len(), 200);
    for s in 0..100 {
        assert_eq!(got.iter().filter(|&&g| g == s).count(), 2, "datagram {s}");
    }
    assert_eq!(a.stats().fault.duplicated, 100);

    let (mut a, mut b) = faulty(FaultConfig {
        duplicate: 0.25,
        seed: 5,
        ..FaultConfig::default()
    });
    let got = send_numbered(&mut *a, &mut *b, 1000);
    let dups = a.stats().fault.duplicated as usize;
    assert_eq!(got.len(), 1000 + dups);
    assert!((180..=320).contains(&dups), "{dups} duplicated");
}

#[test]
fn delay_holds_datagrams_back_and_jitter_reorders() {
    let (mut a, mut b) = faulty(FaultConfig {
        delay_us: 100_000,
        ..FaultConfig::default()
    });
    let wake = EventFd::new().unwrap();
    let to = b.local_addr();
    let sent_at = Instant::now();
    for s in 0u64..10 {
        a.queue(to, &s.to_le_bytes()).unwrap();
    }
    a.flush().unwrap();
    assert!(
        recv_n(&mut *b, &wake, 10, Duration::from_millis(30)).is_empty(),
        "not delayed"
    );
    // A sleeping shard still releases them: wait shortens its sleep to the due time.
    a.wait(Duration::from_secs(5), wake.fd().as_raw_fd()).unwrap();
    let got = recv_n(&mut *b, &wake, 10, DEADLINE);
    assert_eq!(got.len(), 10);
    assert!(sent_at.elapsed() >= Duration::from_millis(100));
    assert_eq!(a.stats().fault.delayed, 10);

    let (mut a, mut b) = faulty(FaultConfig {
        jitter_us: 20_000,
        seed: 9,
        ..FaultConfig::default()
    });
    for s in 0u64..50 {
        a.queue(to_of(&*b), &s.to_le_bytes()).unwrap();
    }
    let deadline = Instant::now() + DEADLINE;
    let mut order = Vec::new();
    while order.len() < 50 && Instant::now() < deadline {
        a.wait(Duration::from_millis(5), wake.fd().as_raw_fd()).unwrap();
        b.recv(64, &mut |_, bytes| {
            order.push(u64::from_le_bytes(bytes.try_into().unwrap()))
        })
        .unwrap();
    }
    assert_eq!(order.len(), 50);
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    assert_ne!(order, sorted, "jitter of 20 ms over 50 datagrams did not reorder");
}

fn to_of(t: &dyn Transport) -> SocketAddr {
    t.local_addr()
}

#[test]
fn auto_picks_uring_here_and_open_reports_the_backend() {
    let t = net::open(&config(IoMode::Auto), 0).unwrap();
    eprintln!("auto chose {}", t.backend());
    let e = net::open(&config(IoMode::Epoll), 0).unwrap();
    assert_eq!(e.backend(), "epoll");
    if let Some(u) = open(Backend::UringMultishot, &config(IoMode::Auto)) {
        assert_eq!(u.backend(), "uring");
        assert_eq!(t.backend(), "uring", "auto fell back although io_uring works");
    }
}

#[test]
fn sqpoll_ring_exchanges_datagrams() {
    let c = NetConfig {
        sqpoll: true,
        ..config(IoMode::Uring)
    };
    let (Ok(mut a), Ok(mut b)) = (UringTransport::open(&c, 0), UringTransport::open(&c, 0)) else {
        eprintln!("NOTICE: io_uring refused by this kernel; skipping SQPOLL");
        return;
    };
    eprintln!("SQPOLL features: {:?}", a.features());
    exchange(&mut a, &mut b, 2_000, c.batch, c.max_datagram);
}

#[test]
fn transport_opened_on_one_thread_runs_on_another() {
    let c = config(IoMode::Auto);
    for backend in ALL {
        let (Some(mut a), Some(mut b)) = (open(backend, &c), open(backend, &c)) else {
            continue;
        };
        // The shard thread does all the I/O; the opening thread then blocks in join.
        std::thread::spawn(move || exchange(&mut *a, &mut *b, 1_000, 64, 1472))
            .join()
            .unwrap();
    }
}

#[test]
fn closing_with_datagrams_in_flight_is_prompt() {
    let c = config(IoMode::Auto);
    let started = Instant::now();
    for backend in ALL {
        for round in 0..10 {
            let (Some(mut a), Some(mut b)) = (open(backend, &c), open(backend, &c)) else {
                break;
            };
            let to = b.local_addr();
            while a.queue(to, &[round as u8; 1000]).is_ok() {}
            a.flush().unwrap();
            // `b` has its receives posted and data waiting when both close.
            let _ = b.recv(1, &mut |_, _| {});
            drop(a);
            drop(b);
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "close took {:?}",
        started.elapsed()
    );
}

#[test]
fn socket_options_beyond_the_limits_still_open() {
    let c = NetConfig {
        busy_poll_us: 50,
        socket_buffer_bytes: 64 << 20,
        ..config(IoMode::Auto)
    };
    for backend in ALL {
        let (Some(mut a), Some(mut b)) = (open(backend, &c), open(backend, &c)) else {
            continue;
        };
        exchange(&mut *a, &mut *b, 200, 64, 1472);
    }
    // A fixed port in use is an error that names the address (no silent sharing).
    let fixed = NetConfig {
        base_port: 0,
        ..config(IoMode::Epoll)
    };
    let first = net::open(&fixed, 0).unwrap();
    let taken = NetConfig {
        base_port: first.local_addr().port(),
        ..fixed
    };
    let e = net::open(&taken, 0)
        .err()
        .expect("a second socket bound a port in use");
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
    assert!(e.to_string().contains(&first.local_addr().to_string()), "{e}");
}

/// Installs, on the calling thread only, a seccomp filter that fails `io_uring_setup`
/// with EPERM, as container runtimes' default profiles do.
#[cfg(target_arch = "x86_64")]
fn refuse_io_uring_on_this_thread() {
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JMP_JEQ_K: u16 = 0x15;
    const BPF_RET_K: u16 = 0x06;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    let filter = [
        // Load the syscall number (offset 0 of seccomp_data).
        libc::sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: BPF_JMP_JEQ_K,
            jt: 0,
            jf: 1,
            k: libc::SYS_io_uring_setup as u32,
        },
        libc::sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ERRNO | libc::EPERM as u32,
        },
        libc::sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ALLOW,
        },
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with a live filter program; without TSYNC it binds this thread only.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(libc::PR_SET_SECCOMP, 2 /* SECCOMP_MODE_FILTER */, &prog),
            0
        );
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn auto_falls_back_to_epoll_when_io_uring_is_refused() {
    let c = config(IoMode::Auto);
    std::thread::spawn(move || {
        refuse_io_uring_on_this_thread();
        let e = net::open(
            &NetConfig {
                io: IoMode::Uring,
                ..c.clone()
            },
            0,
        )
        .err()
        .expect("io_uring opened despite the filter");
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
        let mut a = net::open(&c, 0).unwrap();
        let mut b = net::open(&c, 0).unwrap();
        assert_eq!(a.backend(), "epoll");
        exchange(&mut *a, &mut *b, 200, 64, 1472);
    })
    .join()
    .unwrap();
}

#[test]
fn auto_does_not_fall_back_for_a_port_in_use() {
    let first = net::open(&config(IoMode::Epoll), 0).unwrap();
    let taken = NetConfig {
        base_port: first.local_addr().port(),
        ..config(IoMode::Auto)
    };
    let e = net::open(&taken, 0).err().expect("bound a port in use");
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
}

#[test]
fn recv_delivers_at_most_max_and_keeps_the_rest() {
    let c = config(IoMode::Auto);
    for backend in ALL {
        let (Some(mut a), Some(mut b)) = (open(backend, &c), open(backend, &c)) else {
            continue;
        };
        let to = b.local_addr();
        for s in 0u64..100 {
            a.queue(to, &s.to_le_bytes()).unwrap();
        }
        a.flush().unwrap();
        let wake = EventFd::new().unwrap();
        let deadline = Instant::now() + DEADLINE;
        let mut got = Vec::new();
        while got.len() < 100 && Instant::now() < deadline {
            let n = b
                .recv(7, &mut |_, bytes| {
                    got.push(u64::from_le_bytes(bytes.try_into().unwrap()))
                })
                .unwrap();
            assert!(n <= 7, "{backend:?}: {n} delivered for max 7");
            if n == 0 {
                b.wait(Duration::from_millis(10), wake.fd().as_raw_fd()).unwrap();
            }
        }
        got.sort_unstable();
        assert_eq!(got, (0..100).collect::<Vec<_>>(), "{backend:?}");
        assert_eq!(b.recv(7, &mut |_, _| panic!("extra datagram")).unwrap(), 0);
    }
}

#[test]
fn receiver_that_falls_behind_its_buffers_recovers() {
    let c = config(IoMode::Auto);
    let wake = EventFd::new().unwrap();
    for backend in ALL {
        let (Some(mut a), Some(mut b)) = (open(backend, &c), open(backend, &c)) else {
            continue;
        };
        // Post b's receives, then send eight times its receive buffers while it does not
        // look: the multishot receive runs out of buffers (ENOBUFS) and must be re-armed.
        assert_eq!(b.recv(1, &mut |_, _| {}).unwrap(), 0);
        let to = b.local_addr();
        let count = 8 * 4 * c.batch as u64;
        for s in 0..count {
            while a.queue(to, &s.to_le_bytes()).is_err() {
                a.flush().unwrap();
                std::thread::yield_now();
            }
        }
        a.flush().unwrap();
        // The scenario: let the datagrams land in b's socket while b does not look. No
        // condition to poll instead: b's side cannot be asked without looking, and a's
        // io_uring send completions are reaped only by a later queue, recv or wait.
        std::thread::sleep(Duration::from_millis(50));
        let mut got: Vec<u64> = recv_n(&mut *b, &wake, count as usize, DEADLINE)
            .into_iter()
            .map(|(_, bytes)| u64::from_le_bytes(bytes.try_into().unwrap()))
            .collect();
        got.sort_unstable();
        assert_eq!(got, (0..count).collect::<Vec<_>>(), "{backend:?}");
        assert_eq!(b.stats().recv_errors, 0, "{backend:?}");
    }
}
