//! Segmentation offload on the io_uring transport (`net.gso`): runs of equal datagrams to
//! one peer go as one send and arrive as the same datagrams, byte for byte, each once;
//! a shorter last datagram, another destination or a longer one ends a run.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};
use tutti_daemon::net::uring::UringTransport;
use tutti_daemon::net::{IoMode, NetConfig, Transport};
use tutti_sys::EventFd;

fn config(gso: bool) -> NetConfig {
    NetConfig {
        listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
        base_port: 0,
        io: IoMode::Uring,
        gso,
        ..NetConfig::default()
    }
}

fn open(gso: bool) -> Option<UringTransport> {
    match UringTransport::open(&config(gso), 0) {
        Ok(t) => Some(t),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM)) => {
            eprintln!("NOTICE: io_uring refused by this kernel ({e}); skipping");
            None
        }
        Err(e) => panic!("io_uring: {e}"),
    }
}

/// Datagram `id` of `len` bytes: the id, then bytes derived from it.
fn datagram(id: u32, len: usize) -> Vec<u8> {
    let mut d = id.to_le_bytes().to_vec();
    d.extend((4..len).map(|i| (id as usize * 7 + i) as u8));
    d
}

/// Queues `plan` (destination index, length) from `a`, flushes, and checks that each
/// receiver gets exactly its datagrams, intact, in order.
fn send_plan(gso: bool, plan: &[(usize, usize)]) {
    let (Some(mut a), Some(mut b), Some(mut c)) = (open(gso), open(gso), open(gso)) else {
        return;
    };
    let to = [b.local_addr(), c.local_addr()];
    let mut want: HashMap<SocketAddr, Vec<Vec<u8>>> = HashMap::new();
    for (id, &(dest, len)) in plan.iter().enumerate() {
        let d = datagram(id as u32, len);
        a.queue(to[dest], &d).unwrap();
        want.entry(to[dest]).or_default().push(d);
    }
    assert_eq!(
        a.flush().unwrap(),
        plan.len(),
        "every datagram handed to the kernel"
    );
    let wake = EventFd::new().unwrap();
    for (t, addr) in [(&mut b, to[0]), (&mut c, to[1])] {
        let expected = want.remove(&addr).unwrap_or_default();
        let mut got: Vec<Vec<u8>> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < expected.len() && Instant::now() < deadline {
            let n = t
                .recv(64, &mut |from, bytes| {
                    assert_eq!(from, a.local_addr());
                    got.push(bytes.to_vec());
                })
                .unwrap();
            if n == 0 {
                t.wait(Duration::from_millis(20), wake.fd().as_raw_fd()).unwrap();
            }
        }
        assert_eq!(got.len(), expected.len(), "datagrams at {addr}");
        assert!(
            got == expected,
            "datagrams at {addr} differ from those sent (order or bytes)"
        );
    }
    // A send is counted when its completion arrives.
    let deadline = Instant::now() + Duration::from_secs(2);
    while a.stats().sent < plan.len() as u64 && Instant::now() < deadline {
        let _ = a.recv(1, &mut |_, _| {});
    }
    let s = a.stats();
    assert_eq!((s.sent, s.send_errors), (plan.len() as u64, 0));
    if gso {
        // 120 of one size in 3, and the later runs of 2 or more.
        assert!(s.offload_sends >= 6, "{} offload sends", s.offload_sends);
    } else {
        assert_eq!(s.offload_sends, 0);
    }
}

/// 120 datagrams of 1,472 bytes to one peer (offload sends of 44, 44 and 32), then runs
/// cut by a shorter datagram, a longer one and the other destination.
fn plan() -> Vec<(usize, usize)> {
    let mut p: Vec<(usize, usize)> = (0..120).map(|_| (0, 1472)).collect();
    p.extend([
        (0, 1000),
        (0, 1000),
        (0, 999),
        (0, 1000),
        (0, 1472),
        (1, 1472),
        (1, 1472),
    ]);
    p.extend((0..70).map(|i| (i % 2, 600)));
    p.extend((0..40).map(|_| (1, 64)));
    p.push((1, 1));
    p
}

#[test]
fn offloaded_runs_arrive_as_the_datagrams_sent() {
    send_plan(true, &plan());
}

#[test]
fn without_offload_the_same_datagrams_arrive() {
    send_plan(false, &plan());
}
