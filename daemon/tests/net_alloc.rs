//! Once open and warmed up, the transports (both back ends, the fault injector and the
//! authenticating wrapper) move
//! datagrams without a single heap allocation: a counting global allocator checks it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};
use tutti_daemon::net::auth::{AuthKeys, ClusterKey};
use tutti_daemon::net::uring::{RecvMode, UringTransport};
use tutti_daemon::net::{self, AuthSetup, FaultConfig, IoMode, NetConfig, Transport};
use tutti_sys::EventFd;

struct Counting;

thread_local! {
    static COUNT: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counters are const-initialised
// thread-locals, so touching them never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNT.with(|c| c.get()) {
            ALLOCATIONS.with(|a| a.set(a.get() + 1));
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNT.with(|c| c.get()) {
            ALLOCATIONS.with(|a| a.set(a.get() + 1));
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Rounds of: queue a batch both ways, flush, receive it all (waiting when idle).
fn rounds(a: &mut dyn Transport, b: &mut dyn Transport, wake: &EventFd, n: usize) -> u64 {
    let (to_a, to_b) = (a.local_addr(), b.local_addr());
    // A tutti header's magic (the authenticating transport checks it), then 0x5a: node id
    // and incarnation 0x5a5a5a5a.
    let mut payload = [0x5a_u8; 200];
    payload[..4].copy_from_slice(&tutti_wire::packet::MAGIC.to_le_bytes());
    let mut got = 0u64;
    let deadline = Instant::now() + Duration::from_secs(20);
    for _ in 0..n {
        for i in 0..32 {
            a.queue(to_b, &payload[..64 + i]).unwrap();
            b.queue(to_a, &payload[..64 + i]).unwrap();
        }
        a.flush().unwrap();
        b.flush().unwrap();
        let want = got + 64;
        while got < want && Instant::now() < deadline {
            let n = a.recv(64, &mut |_, bytes| assert_eq!(bytes[4], 0x5a)).unwrap()
                + b.recv(64, &mut |_, bytes| assert_eq!(bytes[4], 0x5a)).unwrap();
            got += n as u64;
            if n == 0 {
                a.wait(Duration::from_millis(1), wake.fd().as_raw_fd()).unwrap();
            }
        }
    }
    got
}

fn allocations_in_steady_state(mut a: Box<dyn Transport>, mut b: Box<dyn Transport>, label: &str) {
    let wake = EventFd::new().unwrap();
    rounds(&mut *a, &mut *b, &wake, 20); // warm up: first receives posted, wake poll armed
    COUNT.with(|c| c.set(true));
    let got = rounds(&mut *a, &mut *b, &wake, 200);
    COUNT.with(|c| c.set(false));
    let allocations = ALLOCATIONS.with(|a| a.replace(0));
    assert_eq!(got, 200 * 64, "{label}: datagrams lost");
    assert_eq!(allocations, 0, "{label}: {allocations} allocations in 200 rounds");
}

fn config(io: IoMode) -> NetConfig {
    NetConfig {
        listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
        base_port: 0,
        io,
        ..NetConfig::default()
    }
}

#[test]
fn steady_state_allocates_nothing() {
    let c = config(IoMode::Epoll);
    allocations_in_steady_state(net::open(&c, 0).unwrap(), net::open(&c, 0).unwrap(), "epoll");
    for mode in [RecvMode::Multishot, RecvMode::Pool] {
        let open = || UringTransport::open_with(&c, 0, Some(mode));
        match (open(), open()) {
            (Ok(a), Ok(b)) => {
                allocations_in_steady_state(Box::new(a), Box::new(b), &format!("uring {mode:?}"))
            }
            (Err(e), _) | (_, Err(e)) => eprintln!("NOTICE: io_uring refused ({e}); skipping {mode:?}"),
        }
    }
    // Delay (with reordering) and a partition of some other peer; no loss, so all arrive.
    let faulty = NetConfig {
        fault: FaultConfig {
            duplicate: 0.0,
            delay_us: 50,
            jitter_us: 200,
            seed: 1,
            partition: vec!["127.0.0.9:0".parse().unwrap()],
            ..FaultConfig::default()
        },
        ..config(IoMode::Auto)
    };
    allocations_in_steady_state(
        net::open(&faulty, 0).unwrap(),
        net::open(&faulty, 0).unwrap(),
        "fault injector",
    );
    // Sealing and verifying (each side's sender run is learned in the warm-up).
    for encrypt in [false, true] {
        let setup = AuthSetup {
            keys: AuthKeys {
                primary: ClusterKey::from_bytes([9; 32]),
                next: None,
                encrypt,
            },
            node: 0x5a5a_5a5a,
            incarnation: 0x5a5a_5a5a,
        };
        let c = config(IoMode::Auto);
        allocations_in_steady_state(
            net::open_with(&c, 0, Some(&setup)).unwrap(),
            net::open_with(&c, 0, Some(&setup)).unwrap(),
            &format!("authenticated, encrypt = {encrypt}"),
        );
    }
}
