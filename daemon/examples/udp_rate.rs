//! Datagrams per second through each UDP transport back end on loopback: one sender thread
//! floods small datagrams, one receiver thread takes them (parking in `wait` when idle).
//! A measurement, not a test. Run in release:
//!
//!     cargo run --release -p tutti-daemon --example udp_rate -- [seconds=2] [payload=64]

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tutti_daemon::net::uring::{RecvMode, UringTransport};
use tutti_daemon::net::{self, IoMode, NetConfig, Transport};
use tutti_sys::EventFd;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Epoll,
    UringMultishot,
    UringPool,
    UringSqpoll,
}

fn open(backend: Backend) -> Box<dyn Transport> {
    let config = NetConfig {
        listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
        base_port: 0,
        sqpoll: matches!(backend, Backend::UringSqpoll),
        ..NetConfig::default()
    };
    match backend {
        Backend::Epoll => net::open(
            &NetConfig {
                io: IoMode::Epoll,
                ..config
            },
            0,
        )
        .unwrap(),
        Backend::UringMultishot | Backend::UringSqpoll => Box::new(UringTransport::open(&config, 0).unwrap()),
        Backend::UringPool => Box::new(UringTransport::open_with(&config, 0, Some(RecvMode::Pool)).unwrap()),
    }
}

fn run(backend: Backend, seconds: f64, payload: usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let (addr_tx, addr_rx) = mpsc::channel();
    let receiver = {
        let (stop, received) = (stop.clone(), received.clone());
        std::thread::spawn(move || {
            let mut t = open(backend);
            addr_tx.send(t.local_addr()).unwrap();
            let wake = EventFd::new().unwrap();
            let mut n = 0u64;
            let mut quiet_since = None;
            loop {
                let got = t.recv(256, &mut |_, _| {}).unwrap();
                n += got as u64;
                if got == 0 {
                    if stop.load(Ordering::Relaxed) {
                        let since = *quiet_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > Duration::from_millis(100) {
                            break;
                        }
                    }
                    t.wait(Duration::from_millis(1), wake.fd().as_raw_fd()).unwrap();
                } else {
                    quiet_since = None;
                }
            }
            received.store(n, Ordering::Relaxed);
            t.stats()
        })
    };
    let to = addr_rx.recv().unwrap();
    let mut t = open(backend);
    let bytes = vec![7u8; payload];
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed().as_secs_f64() < seconds {
        for _ in 0..64 {
            if t.queue(to, &bytes).is_err() {
                break;
            }
        }
        sent += t.flush().unwrap() as u64;
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let rx_stats = receiver.join().unwrap();
    let got = received.load(Ordering::Relaxed);
    println!(
        "{:<16} {:>6} B  sent {:>9.0}/s  received {:>9.0}/s  lost {:>5.1}%  (recv errors {}, send errors {})",
        format!("{backend:?}"),
        payload,
        sent as f64 / elapsed,
        got as f64 / elapsed,
        100.0 * (sent.saturating_sub(got)) as f64 / sent.max(1) as f64,
        rx_stats.recv_errors,
        t.stats().send_errors,
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: f64 = args.next().map_or(2.0, |s| s.parse().expect("seconds"));
    let payload: usize = args.next().map_or(64, |s| s.parse().expect("payload bytes"));
    for backend in [
        Backend::Epoll,
        Backend::UringMultishot,
        Backend::UringPool,
        Backend::UringSqpoll,
    ] {
        run(backend, seconds, payload);
    }
}
