//! The shard doorbell's two modes on real threads and real `membarrier(2)`: a client that
//! commits and rings only when `wants_ring` says so, and a shard that parks in barrier mode
//! after bursts (membarrier, clients skip their fence) and fenced after single messages
//! (`tutti_wire::shm::doorbell`). A wake-up is lost when the shard sleeps out its timeout
//! with a frame in the ring for which the client decided not to ring; there must be none.
//! (Loom cannot model membarrier; `wire/tests/loom_shm.rs` models the fenced handshake.)

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tutti_sys::{EventFd, Mapping};
use tutti_wire::shm::{PublishConsumer, PublishProducer, PublishRing, ShardDoorbell, DOORBELL_LEN};

const ROUNDS: u64 = 3000;
/// Per round: a burst the shard takes in barrier mode, then messages one at a time.
const BURST: u64 = 48;
const SINGLES: u64 = 16;
const BARRIER_FRAMES: u64 = 32;
const LIMIT: Duration = Duration::from_secs(60);

#[test]
fn commits_racing_parks_lose_no_wakeup_in_either_mode() {
    let barrier = tutti_sys::membarrier_global_expedited_available()
        && tutti_sys::membarrier_register_global_expedited().is_ok();
    let capacity = 1 << 16;
    let (_ring_fd, ring) =
        Mapping::create("doorbell-test-ring", PublishRing::required_len(capacity)).unwrap();
    let (_bell_fd, bell) = Mapping::create("doorbell-test-bell", DOORBELL_LEN).unwrap();
    // SAFETY: fresh zeroed mappings of the right sizes, kept alive until the end of the
    // test (the client thread is joined before they drop); one producer, one consumer.
    let (mut producer, mut consumer, shard_bell, client_bell) = unsafe {
        PublishRing::init(ring.as_ptr(), ring.len(), capacity).unwrap();
        ShardDoorbell::init(bell.as_ptr(), bell.len()).unwrap();
        (
            PublishProducer::attach(ring.as_ptr(), ring.len()).unwrap(),
            PublishConsumer::attach(ring.as_ptr(), ring.len()).unwrap(),
            ShardDoorbell::attach(bell.as_ptr(), bell.len()).unwrap(),
            ShardDoorbell::attach(bell.as_ptr(), bell.len()).unwrap(),
        )
    };
    let total = ROUNDS * (BURST + SINGLES);
    let eventfd = Arc::new(EventFd::new().unwrap());
    // Frames the shard took, and commits whose ring decision the client made.
    let consumed = Arc::new(AtomicU64::new(0));
    let decided = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (eventfd, consumed, decided, stop) =
            (eventfd.clone(), consumed.clone(), decided.clone(), stop.clone());
        std::thread::spawn(move || {
            let start = Instant::now();
            for i in 0..total {
                while producer.offer(1, &i.to_le_bytes()).is_err() {
                    std::thread::yield_now();
                }
                if client_bell.wants_ring(barrier) {
                    eventfd.notify();
                }
                decided.store(i + 1, Ordering::Release);
                if i % (BURST + SINGLES) >= BURST {
                    // One at a time: the shard parks between them.
                    while consumed.load(Ordering::Acquire) <= i {
                        assert!(start.elapsed() < LIMIT && !stop.load(Ordering::Relaxed));
                        std::thread::yield_now();
                    }
                }
            }
        })
    };
    let (mut barrier_mode, mut since_park, mut lost) = (false, 0u64, 0u64);
    let (mut barrier_parks, mut fenced_parks, mut sleeps) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    while consumed.load(Ordering::Relaxed) < total {
        assert!(
            start.elapsed() < LIMIT,
            "stuck at {}",
            consumed.load(Ordering::Relaxed)
        );
        let mut seen = 0u64;
        consumer.poll(1024, |_, _| seen += 1).unwrap();
        if seen > 0 {
            consumed.fetch_add(seen, Ordering::Release);
            since_park += seen;
            if barrier && !barrier_mode && since_park >= BARRIER_FRAMES {
                barrier_mode = true;
                shard_bell.enter_barrier_mode();
            }
            continue;
        }
        // Park, as the shard does.
        eventfd.drain();
        since_park = 0;
        if std::mem::take(&mut barrier_mode) {
            shard_bell.park_leaving_barrier_mode();
            tutti_sys::membarrier_global_expedited().unwrap();
            barrier_parks += 1;
        } else {
            shard_bell.set_parked(true);
            fenced_parks += 1;
        }
        if !consumer.has_pending() {
            sleeps += 1;
            if !eventfd.wait(Duration::from_millis(100)) && consumer.has_pending() {
                // Slept out the timeout with a frame waiting: lost unless the client is
                // merely slow to ring (descheduled between its commit and its decision).
                let frame = consumed.load(Ordering::Relaxed);
                while decided.load(Ordering::Acquire) <= frame {
                    assert!(start.elapsed() < LIMIT);
                    std::thread::yield_now();
                }
                if !eventfd.drain() {
                    lost += 1;
                }
            }
        }
        shard_bell.set_parked(false);
    }
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    assert_eq!(
        lost, 0,
        "wake-ups lost ({barrier_parks} barrier parks, {fenced_parks} fenced, {sleeps} sleeps)"
    );
    assert!(sleeps > 0 && fenced_parks > 0, "the shard never slept");
    if barrier {
        assert!(barrier_parks > 0, "bursts never put the shard in barrier mode");
    }
}
