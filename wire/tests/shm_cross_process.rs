//! The shared-memory rings across two processes: the test maps a memfd, re-executes its
//! own binary as the child (selected by `TUTTI_SHM_CHILD`, descriptors passed by number
//! with `FD_CLOEXEC` cleared), and each side attaches its end of the ring.

#![cfg(all(target_os = "linux", not(loom)))]

use std::ffi::CString;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tutti_wire::shm::{
    DeliveryLog, LogEvent, LogReader, LogWriter, OfferError, PublishConsumer, PublishProducer, PublishRing,
};

const CHILD_ENV: &str = "TUTTI_SHM_CHILD";
const FDS_ENV: &str = "TUTTI_SHM_FDS";
const DEADLINE: Duration = Duration::from_secs(60);

/// A `MAP_SHARED` mapping of a descriptor, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(fd: i32, len: usize, writable: bool) -> Mapping {
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: mapping a descriptor we own; the kernel picks the (page-aligned) address.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, fd, 0) };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
        Mapping { ptr: ptr.cast(), len }
    }

    fn of_fd(fd: i32, writable: bool) -> Mapping {
        // SAFETY: fstat into a zeroed struct on a descriptor we were given.
        let len = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            assert_eq!(
                libc::fstat(fd, &mut st),
                0,
                "fstat: {}",
                std::io::Error::last_os_error()
            );
            st.st_size as usize
        };
        Mapping::new(fd, len, writable)
    }

    fn words(&self) -> &[AtomicU32] {
        // SAFETY: the mapping is page-aligned, at least 4096 bytes for the control page, and
        // only accessed atomically as u32 words by both processes.
        unsafe { std::slice::from_raw_parts(self.ptr as *const AtomicU32, 16) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped; no ring object outlives its Mapping here.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A fresh memfd of `len` bytes that a child process inherits.
fn memfd(name: &str, len: usize) -> i32 {
    let name = CString::new(name).unwrap();
    // SAFETY: plain system calls on a descriptor we create.
    unsafe {
        let fd = libc::memfd_create(name.as_ptr(), 0);
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        assert_eq!(libc::ftruncate(fd, len as libc::off_t), 0);
        let flags = libc::fcntl(fd, libc::F_GETFD);
        assert_eq!(libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC), 0);
        fd
    }
}

fn spawn_child(test: &str, role: &str, fds: &[i32]) -> Child {
    let fds: Vec<String> = fds.iter().map(i32::to_string).collect();
    Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, role)
        .env(FDS_ENV, fds.join(","))
        .spawn()
        .expect("spawn child")
}

/// In a child process: the descriptors the parent passed for `role`.
fn child_fds(role: &str) -> Option<Vec<i32>> {
    if std::env::var(CHILD_ENV).ok()? != role {
        return None;
    }
    let fds = std::env::var(FDS_ENV).expect("fds");
    Some(fds.split(',').map(|s| s.parse().unwrap()).collect())
}

fn wait_ok(mut child: Child) {
    let status = child.wait().expect("wait");
    assert!(status.success(), "child failed: {status}");
}

fn payload_for(seq: u64, len: usize) -> Vec<u8> {
    let mut p: Vec<u8> = (0..len)
        .map(|i| (seq.wrapping_mul(37).wrapping_add(i as u64) % 251) as u8)
        .collect();
    if len >= 8 {
        p[..8].copy_from_slice(&seq.to_le_bytes());
    }
    p
}

fn publish_len(i: u64) -> usize {
    (i.wrapping_mul(2654435761) % 700) as usize
}

const PUBLISH_CAPACITY: usize = 4096;
const PUBLISH_COUNT: u64 = 200_000;

/// Many messages of varied sizes through a 4 KiB publish ring (thousands of wrap-arounds),
/// producer in this process, consumer in the child: FIFO and content intact.
#[test]
fn publish_ring_wraps_across_processes() {
    if let Some(fds) = child_fds("publish-consumer") {
        let map = Mapping::of_fd(fds[0], true);
        // SAFETY: the mapping outlives the consumer; the parent is the only producer.
        let mut consumer = unsafe { PublishConsumer::attach(map.ptr, map.len) }.expect("attach");
        let (mut next, start) = (0u64, Instant::now());
        while next < PUBLISH_COUNT {
            let n = consumer
                .poll(32, |group, payload| {
                    assert_eq!(group, (next % 1000) as u32, "group of frame {next}");
                    assert_eq!(payload, &payload_for(next, publish_len(next))[..], "frame {next}");
                    next += 1;
                })
                .expect("poll");
            if n == 0 {
                assert!(start.elapsed() < DEADLINE, "consumer stuck at {next}");
                std::thread::yield_now(); // 2 shared cores: let the producer run
            }
        }
        return;
    }
    let len = PublishRing::required_len(PUBLISH_CAPACITY);
    let fd = memfd("tutti-test-publish", len);
    let map = Mapping::new(fd, len, true);
    // SAFETY: a fresh zeroed memfd mapping of the required length.
    unsafe { PublishRing::init(map.ptr, map.len, PUBLISH_CAPACITY) }.expect("init");
    // SAFETY: the mapping outlives the producer; the child is the only consumer.
    let mut producer = unsafe { PublishProducer::attach(map.ptr, map.len) }.expect("attach");
    let child = spawn_child("publish_ring_wraps_across_processes", "publish-consumer", &[fd]);
    let start = Instant::now();
    let mut i = 0u64;
    while i < PUBLISH_COUNT {
        match producer.offer((i % 1000) as u32, &payload_for(i, publish_len(i))) {
            Ok(()) => i += 1,
            Err(OfferError::BackPressured) => {
                assert!(start.elapsed() < DEADLINE, "producer stuck at {i}");
                std::thread::yield_now();
            }
            Err(e) => panic!("{e}"),
        }
    }
    wait_ok(child);
    assert!(producer.is_drained());
    // SAFETY: closing the descriptor we created.
    unsafe { libc::close(fd) };
}

const LOG_CAPACITY: usize = 16384;
const PHASE1: u64 = 2000;
const PHASE2: u64 = 50_000;
// Control words (in a shared page).
const READY: usize = 0;
const PHASE1_WRITTEN: usize = 1;
const CAUGHT_UP: usize = 2;

fn log_len(seq: u64) -> usize {
    (seq.wrapping_mul(40503) % 120) as usize
}

fn wait_for(word: &AtomicU32, what: &str) {
    let start = Instant::now();
    while word.load(Ordering::Acquire) == 0 {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// A reader in the child sleeps until the writer (this process) has lapped it: it gets
/// `Lagged { missed }`, resumes at the oldest intact record with the right content, and
/// then follows a long stream (allowing further lags, each accounted for exactly).
#[test]
fn log_overrun_across_processes() {
    if let Some(fds) = child_fds("log-reader") {
        let map = Mapping::of_fd(fds[0], false); // read-only, as members map it
        let control = Mapping::of_fd(fds[1], true);
        let words = control.words();
        // SAFETY: the mapping outlives the reader.
        let mut reader = unsafe { LogReader::attach(map.ptr, map.len) }.expect("attach");
        words[READY].store(1, Ordering::Release);
        wait_for(&words[PHASE1_WRITTEN], "phase 1");
        let mut expected = 0u64;
        let mut events = Vec::new();
        let start = Instant::now();
        let check = |event: LogEvent<'_>, expected: &mut u64| match event {
            LogEvent::Message { seq, sender, payload } => {
                assert_eq!(seq, *expected, "order");
                assert_eq!(sender, seq * 3);
                assert_eq!(payload, &payload_for(seq, log_len(seq))[..], "record {seq}");
                *expected += 1;
            }
            LogEvent::Lagged { missed } => {
                assert!(missed > 0);
                *expected += missed;
            }
            other => panic!("only messages were written: {other:?}"),
        };
        while expected < PHASE1 {
            assert!(start.elapsed() < DEADLINE, "reader stuck at {expected}");
            reader
                .poll(64, |e| {
                    events.push(matches!(e, LogEvent::Lagged { .. }));
                    check(e, &mut expected)
                })
                .expect("poll");
        }
        assert!(events[0], "first event after the overrun must be Lagged");
        assert!(
            events[1..].iter().all(|lagged| !lagged),
            "a single lag in phase 1"
        );
        let intact = events.len() as u64 - 1;
        assert!(
            intact > 50 && intact < PHASE1,
            "{intact} records were still intact"
        );
        words[CAUGHT_UP].store(1, Ordering::Release);
        while expected < PHASE1 + PHASE2 {
            assert!(start.elapsed() < DEADLINE, "reader stuck at {expected}");
            if reader.poll(64, |e| check(e, &mut expected)).expect("poll") == 0 {
                std::thread::yield_now();
            }
        }
        assert_eq!(expected, PHASE1 + PHASE2);
        return;
    }
    let len = DeliveryLog::required_len(LOG_CAPACITY);
    let fd = memfd("tutti-test-log", len);
    let control_fd = memfd("tutti-test-control", 4096);
    let map = Mapping::new(fd, len, true);
    let control = Mapping::new(control_fd, 4096, true);
    let words = control.words();
    // SAFETY: a fresh zeroed memfd mapping of the required length.
    unsafe { DeliveryLog::init(map.ptr, map.len, LOG_CAPACITY) }.expect("init");
    // SAFETY: the mapping outlives the writer; this is the only writer.
    let mut writer = unsafe { LogWriter::attach(map.ptr, map.len) }.expect("attach");
    let child = spawn_child("log_overrun_across_processes", "log-reader", &[fd, control_fd]);
    wait_for(&words[READY], "the reader to attach");
    for seq in 0..PHASE1 {
        assert_eq!(writer.append(seq * 3, &payload_for(seq, log_len(seq))), Ok(seq));
    }
    assert!(writer.head() > LOG_CAPACITY as u64, "phase 1 must lap the reader");
    words[PHASE1_WRITTEN].store(1, Ordering::Release);
    wait_for(&words[CAUGHT_UP], "the reader to catch up");
    for seq in PHASE1..PHASE1 + PHASE2 {
        assert_eq!(writer.append(seq * 3, &payload_for(seq, log_len(seq))), Ok(seq));
        if seq % 64 == 0 {
            std::thread::yield_now();
        }
    }
    wait_ok(child);
    // SAFETY: closing descriptors we created.
    unsafe {
        libc::close(fd);
        libc::close(control_fd);
    }
}
