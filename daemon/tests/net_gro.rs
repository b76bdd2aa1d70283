//! Receive offload on the io_uring transport (`net.gro`): a peer's segmentation-offload
//! sends arrive as coalesced receives, cut back into the datagrams sent, byte for byte,
//! each once and in order; datagrams sent one by one, or to a receiver without it, arrive
//! as before; fault injection still acts on each datagram.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};
use tutti_daemon::net::uring::UringTransport;
use tutti_daemon::net::{FaultConfig, IoMode, NetConfig, Transport};
use tutti_sys::EventFd;

fn config(gso: bool, gro: bool) -> NetConfig {
    NetConfig {
        listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
        base_port: 0,
        io: IoMode::Uring,
        gso,
        gro,
        ..NetConfig::default()
    }
}

fn open(gso: bool, gro: bool) -> Option<UringTransport> {
    match UringTransport::open(&config(gso, gro), 0) {
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

/// 120 datagrams of 1,472 bytes (offload sends of 44, 44 and 32), runs cut by shorter and
/// longer ones, 64-byte ones and a 1-byte one: the lengths of each run's last datagram.
fn plan() -> Vec<usize> {
    let mut p: Vec<usize> = vec![1472; 120];
    p.extend([1000, 1000, 999, 1000, 1472]);
    p.extend([600; 35]);
    p.extend([64; 40]);
    p.push(1);
    p
}

/// Receives until `n` datagrams arrived or 10 s passed, at most 7 per call (fewer than a
/// coalesced receive holds: the rest waits for the next call).
fn receive(t: &mut dyn Transport, n: usize, from: SocketAddr) -> Vec<Vec<u8>> {
    let wake = EventFd::new().unwrap();
    let mut got: Vec<Vec<u8>> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < n && Instant::now() < deadline {
        let k = t
            .recv(7, &mut |f, bytes| {
                assert_eq!(f, from);
                got.push(bytes.to_vec());
            })
            .unwrap();
        assert!(k <= 7, "{k} delivered for max 7");
        if k == 0 {
            t.wait(Duration::from_millis(20), wake.fd().as_raw_fd()).unwrap();
        }
    }
    got
}

/// Sends `plan` from a sender with (or without) segmentation offload to a receiver with
/// (or without) receive offload; returns the receiver's offloaded receives.
fn send_plan(gso: bool, gro: bool) -> Option<u64> {
    let (Some(mut a), Some(mut b)) = (open(gso, false), open(false, gro)) else {
        return None;
    };
    let to = b.local_addr();
    let want: Vec<Vec<u8>> = plan()
        .iter()
        .enumerate()
        .map(|(id, &len)| datagram(id as u32, len))
        .collect();
    for d in &want {
        a.queue(to, d).unwrap();
    }
    assert_eq!(
        a.flush().unwrap(),
        want.len(),
        "every datagram handed to the kernel"
    );
    let got = receive(&mut b, want.len(), a.local_addr());
    assert_eq!(got.len(), want.len(), "datagrams received");
    assert!(got == want, "datagrams differ from those sent (order or bytes)");
    let s = b.stats();
    assert_eq!(
        (s.received, s.truncated, s.recv_errors),
        (want.len() as u64, 0, 0)
    );
    Some(s.offload_receives)
}

#[test]
fn offloaded_runs_arrive_coalesced_and_are_cut_into_the_datagrams_sent() {
    let Some(b) = open(false, true) else { return };
    if !b.gro() {
        eprintln!("NOTICE: UDP_GRO refused by this kernel; skipping");
        return;
    }
    drop(b);
    let coalesced = send_plan(true, true).unwrap_or(0);
    // The runs of 44, 44, 32, 2, 35 and 40 equal datagrams (at least).
    assert!(coalesced >= 6, "{coalesced} coalesced receives");
}

#[test]
fn datagrams_sent_one_by_one_arrive_alike_with_receive_offload() {
    if let Some(coalesced) = send_plan(false, true) {
        assert_eq!(coalesced, 0);
    }
}

#[test]
fn without_receive_offload_an_offloaded_run_arrives_as_datagrams() {
    if let Some(coalesced) = send_plan(true, false) {
        assert_eq!(coalesced, 0);
    }
}

/// The fault-injecting wrapper sees the datagrams, not the coalesced receives: with half
/// of them dropped on arrival, about half of an offloaded run arrives, each intact.
#[test]
fn fault_injection_acts_on_each_coalesced_datagram() {
    let Some(mut a) = open(true, false) else { return };
    let mut cfg = config(false, true);
    cfg.fault = FaultConfig {
        loss_incoming: 0.5,
        seed: 7,
        ..FaultConfig::default()
    };
    let mut b = tutti_daemon::net::open(&cfg, 0).unwrap();
    let to = b.local_addr();
    let sent = 220; // five offload sends of 44 (the send queue holds 256)
    for id in 0..sent {
        a.queue(to, &datagram(id, 1472)).unwrap();
    }
    assert_eq!(a.flush().unwrap(), sent as usize);
    // Wait on the condition: the socket took every datagram (the wrapper then passed each
    // on or dropped it).
    let wake = EventFd::new().unwrap();
    let mut got: Vec<Vec<u8>> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let s = b.stats();
        if s.received >= u64::from(sent) {
            break;
        }
        let k = b.recv(64, &mut |_, bytes| got.push(bytes.to_vec())).unwrap();
        if k == 0 {
            b.wait(Duration::from_millis(20), wake.fd().as_raw_fd()).unwrap();
        }
    }
    let s = b.stats();
    assert_eq!(s.fault.lost_in + got.len() as u64, u64::from(sent));
    assert!(s.offload_receives > 0, "the run arrived coalesced");
    assert!(
        (55..=165).contains(&got.len()),
        "{} of {sent} arrived with half dropped",
        got.len()
    );
    let mut last = None;
    for d in &got {
        let id = u32::from_le_bytes(d[..4].try_into().unwrap());
        assert_eq!(d, &datagram(id, 1472), "datagram {id} intact");
        assert!(last.is_none_or(|l| l < id), "in order");
        last = Some(id);
    }
}
