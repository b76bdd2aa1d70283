//! The hardware floor, measured in the same run as what is compared with it: a cache-line
//! ping-pong between two pinned threads (the least a round trip through shared memory can
//! cost) and a bare SPSC byte ring (the most a single producer/consumer pair can move).

use crate::clock;
use std::hint::spin_loop;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use hdrhistogram::Histogram;

use crate::interrupt;
use crate::local::SAMPLE_EVERY;
use crate::pin::pin_current;
use crate::report::new_histogram;
use crate::spsc::SpscRing;

/// Written into the ping-pong slot to tell the echo thread to stop (odd, so it is a "ping").
const STOP: u64 = u64::MAX;
/// How many spins between two looks at the clock while waiting for the other side, so that a
/// stuck peer turns into an error instead of a hang.
const SPINS_PER_CLOCK_CHECK: u32 = 1 << 16;
/// Grace beyond the run's end before a silent peer counts as stuck.
const STUCK_AFTER: Duration = Duration::from_secs(5);
/// Round trips timed per latency sample by default (see `ping_pong`).
pub const DEFAULT_BATCH: u64 = 1;
/// Share of the run (at most `MAX_WARMUP`) excluded from the figures as warm-up.
const WARMUP_FRACTION: f64 = 0.1;
const MAX_WARMUP: Duration = Duration::from_millis(500);

/// Sets a flag when dropped: how a thread that leaves (even by panic) tells its peer.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Stores a value when dropped.
struct StoreOnDrop<'a>(&'a AtomicU64, u64);

impl Drop for StoreOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(self.1, Ordering::Release);
    }
}

pub struct PingPongResult {
    /// Round-trip times, one entry per round trip (each batch's mean, counted `batch` times).
    pub rtt: Histogram<u64>,
    pub measure_start: Instant,
    pub measured: Duration,
    pub batch: u64,
}

fn warmup_for(duration: Duration) -> Duration {
    duration.mul_f64(WARMUP_FRACTION).min(MAX_WARMUP)
}

/// Ping-pong over one cache line between a thread on `ping_core` and one on `echo_core`.
///
/// The pinger stores an odd number, the echo thread spins until it sees it and stores the
/// next (even) number, the pinger spins until it sees that: two cache-line transfers per
/// round trip. Both sides spin on plain loads (no `pause`): this is the floor.
///
/// Timing: the TSC clock (`clock`), as for tutti's round trips, one sample per round trip
/// by default. `batch > 1` times that many round trips per sample and records their mean
/// (smoothing the tail by up to `batch`x).
pub fn ping_pong(
    ping_core: usize,
    echo_core: usize,
    duration: Duration,
    batch: u64,
) -> Result<PingPongResult, String> {
    let batch = batch.max(1);
    let slot = CachePadded::new(AtomicU64::new(0));
    let slot = &slot;
    let echo_gone = &AtomicBool::new(false);
    std::thread::scope(|s| {
        let echo = s.spawn(move || -> Result<(), String> {
            // Tell the pinger if we leave early (pinning failed, panic), so it does not wait.
            let _gone = SetOnDrop(echo_gone);
            pin_current(echo_core)?;
            let mut last = 0u64;
            loop {
                let ping = loop {
                    let v = slot.load(Ordering::Acquire);
                    if v != last && v & 1 == 1 {
                        break v;
                    }
                };
                if ping == STOP {
                    return Ok(());
                }
                last = ping + 1;
                slot.store(last, Ordering::Release);
            }
        });
        let pinger = s.spawn(move || -> Result<PingPongResult, String> {
            // Whatever happens (error or panic), release the echo thread.
            let _stop = StoreOnDrop(slot, STOP);
            ping_side(slot, echo_gone, ping_core, duration, batch)
        });
        let result = pinger.join().map_err(|_| "ping thread panicked")??;
        echo.join().map_err(|_| "echo thread panicked")??;
        Ok(result)
    })
}

fn ping_side(
    slot: &AtomicU64,
    echo_gone: &AtomicBool,
    core: usize,
    duration: Duration,
    batch: u64,
) -> Result<PingPongResult, String> {
    pin_current(core)?;
    clock::calibrate();
    let mut rtt = new_histogram();
    let start = Instant::now();
    let measure_from = start + warmup_for(duration);
    let end = measure_from + duration;
    let stuck_at = end + STUCK_AFTER;
    let mut measure_start = None;
    let mut seq = 1u64;
    loop {
        interrupt::check()?;
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        let c0 = clock::now();
        for _ in 0..batch {
            slot.store(seq, Ordering::Release);
            let reply = seq + 1;
            let mut spins = 0u32;
            while slot.load(Ordering::Acquire) != reply {
                spins += 1;
                if spins == SPINS_PER_CLOCK_CHECK {
                    spins = 0;
                    if echo_gone.load(Ordering::Relaxed) {
                        return Err("ping-pong: echo thread stopped".into());
                    }
                    if Instant::now() > stuck_at {
                        return Err(format!(
                            "ping-pong: no echo for {STUCK_AFTER:?} (is the echo core starved?)"
                        ));
                    }
                }
            }
            seq += 2;
        }
        let elapsed = clock::ns_between(c0, clock::now());
        if t0 >= measure_from {
            measure_start.get_or_insert(t0);
            rtt.saturating_record_n(elapsed / batch, batch);
        }
    }
    let measure_start = measure_start.unwrap_or(end);
    Ok(PingPongResult {
        rtt,
        measure_start,
        measured: measure_start.elapsed(),
        batch,
    })
}

/// Cache-line round trip (p50) at or under which two cores count as placed near each other.
/// This host's two placements give 90-110 ns (near) and 380-490 ns (far).
pub const NEAR_MAX_RTT_NS: u64 = 250;

/// Where the host placed two cores: the cache-line round trip between them.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    pub rtt_p50_ns: u64,
}

impl Placement {
    pub fn near(&self) -> bool {
        self.rtt_p50_ns <= NEAR_MAX_RTT_NS
    }

    pub fn name(&self) -> &'static str {
        if self.near() {
            "near"
        } else {
            "far"
        }
    }

    /// The placement a run had, from probes right before and right after it: "mixed" if
    /// the host moved the cores in between.
    pub fn of_run(before: Placement, after: Placement) -> &'static str {
        if before.near() == after.near() {
            before.name()
        } else {
            "mixed"
        }
    }
}

/// A short ping-pong (0.2 s) between the two cores: which placement they have now.
pub fn placement(a: usize, b: usize) -> Result<Placement, String> {
    let pp = ping_pong(a, b, Duration::from_millis(200), DEFAULT_BATCH)?;
    Ok(Placement {
        rtt_p50_ns: pp.rtt.value_at_quantile(0.5),
    })
}

pub struct RingThroughput {
    pub msgs_per_s: f64,
    pub messages: u64,
    pub measured: Duration,
}

/// Bare SPSC ring throughput: the producer on `producer_core` copies `size`-byte messages
/// (sequence number in the first 8 bytes) in, the consumer on `consumer_core` copies each
/// one out into its own buffer and checks the sequence. The rate is counted by the producer
/// over the run after warm-up (the ring is small, so what went in is what came out, ± one
/// ring); the consumer's final count checks that nothing was lost.
pub fn ring_throughput(
    producer_core: usize,
    consumer_core: usize,
    size: usize,
    duration: Duration,
) -> Result<RingThroughput, String> {
    assert!(size >= 8, "messages carry an 8-byte sequence number");
    let mut ring = SpscRing::for_payload(size);
    let (mut producer, mut consumer) = ring.split();
    let done = &CachePadded::new(AtomicBool::new(false));
    let consumer_gone = &CachePadded::new(AtomicBool::new(false));
    std::thread::scope(|s| {
        let consumer = s.spawn(move || -> Result<u64, String> {
            let _gone = SetOnDrop(consumer_gone);
            pin_current(consumer_core)?;
            let mut out = vec![0u8; size];
            let mut next = 0u64;
            let mut bad = None;
            loop {
                let finished = done.load(Ordering::Acquire);
                let n = consumer.poll(usize::MAX, |m| {
                    out.copy_from_slice(m);
                    let seq = u64::from_le_bytes(out[..8].try_into().expect("8 bytes"));
                    if seq != next && bad.is_none() {
                        bad = Some((next, seq));
                    }
                    next += 1;
                });
                if let Some((want, got)) = bad {
                    return Err(format!("SPSC ring: expected message {want}, got {got}"));
                }
                if n == 0 {
                    if finished {
                        return Ok(next);
                    }
                    spin_loop();
                }
            }
        });
        let producer = s.spawn(move || -> Result<(RingThroughput, u64), String> {
            let _done = SetOnDrop(done);
            pin_current(producer_core)?;
            let mut msg = vec![0xA5u8; size];
            let start = Instant::now();
            let measure_from = start + warmup_for(duration);
            let end = measure_from + duration;
            let mut seq = 0u64;
            let mut window: Option<(Instant, u64)> = None;
            loop {
                // Look at the clock once per 1024 messages.
                for _ in 0..1024 {
                    msg[..8].copy_from_slice(&seq.to_le_bytes());
                    while !producer.offer(&msg) {
                        if consumer_gone.load(Ordering::Relaxed) {
                            return Err("SPSC ring: consumer stopped".into());
                        }
                        spin_loop();
                    }
                    seq += 1;
                }
                interrupt::check()?;
                let now = Instant::now();
                if window.is_none() && now >= measure_from {
                    window = Some((now, seq));
                }
                if now >= end {
                    producer.flush();
                    let (t0, n0) = window.expect("window starts before end");
                    let measured = now - t0;
                    let messages = seq - n0;
                    return Ok((
                        RingThroughput {
                            msgs_per_s: messages as f64 / measured.as_secs_f64(),
                            messages,
                            measured,
                        },
                        seq,
                    ));
                }
            }
        });
        let (result, produced) = producer.join().map_err(|_| "producer panicked")??;
        let consumed = consumer.join().map_err(|_| "consumer panicked")??;
        if consumed != produced {
            return Err(format!(
                "SPSC ring: produced {produced} messages but consumed {consumed}"
            ));
        }
        Ok(result)
    })
}

/// The floor for "first message after idle": a thread on `sleeper_core` blocks in `poll`
/// on an eventfd (as a parked backoff shard does); after `idle` the thread on `waker_core`
/// writes the eventfd, and the time until the sleeper runs again is one sample. This is
/// what one wake-up of a parked thread costs on this host (an idle vCPU must be woken).
pub fn wake_after_idle(
    waker_core: usize,
    sleeper_core: usize,
    samples: u64,
    idle: Duration,
) -> Result<Vec<u64>, String> {
    // SAFETY: plain eventfd(2); the descriptor is closed below.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!("eventfd: {}", std::io::Error::last_os_error()));
    }
    let woke_at = &CachePadded::new(AtomicU64::new(0));
    let result = std::thread::scope(|s| {
        let sleeper = s.spawn(move || -> Result<(), String> {
            pin_current(sleeper_core)?;
            for _ in 0..samples {
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd; blocks until the eventfd is readable.
                unsafe { libc::poll(&mut pfd, 1, 10_000) };
                let now = clock::mono_ns();
                let mut value = 0u64;
                // SAFETY: reads 8 bytes into a live u64 (resets the counter).
                unsafe { libc::read(fd, (&mut value as *mut u64).cast(), 8) };
                woke_at.store(now, Ordering::Release);
            }
            Ok(())
        });
        let waker = s.spawn(move || -> Result<Vec<u64>, String> {
            pin_current(waker_core)?;
            let mut out = Vec::new();
            for _ in 0..samples {
                std::thread::sleep(idle);
                woke_at.store(0, Ordering::Relaxed);
                let one = 1u64;
                let t0 = clock::mono_ns();
                // SAFETY: writes 8 bytes from a live u64.
                unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
                let deadline = Instant::now() + Duration::from_secs(10);
                let t1 = loop {
                    let t = woke_at.load(Ordering::Acquire);
                    if t != 0 {
                        break t;
                    }
                    if Instant::now() > deadline {
                        return Err("wake-up floor: the sleeper never woke".into());
                    }
                    std::thread::yield_now();
                };
                out.push(t1.saturating_sub(t0));
            }
            Ok(out)
        });
        let samples = waker.join().map_err(|_| "waker panicked".to_string())?;
        sleeper.join().map_err(|_| "sleeper panicked".to_string())??;
        samples
    });
    // SAFETY: fd is ours and no longer used.
    unsafe { libc::close(fd) };
    result
}

/// The shapes of tutti's local path that the relay floor copies.
pub struct RelayShape {
    /// tutti's publish ring (client -> shard) and delivery log (shard -> subscriber).
    pub publish_ring_bytes: usize,
    pub log_bytes: usize,
    /// Messages the client offers per round, and takes per poll (the bench's --batch and
    /// --fragment-limit).
    pub batch: usize,
    pub fragment_limit: usize,
    /// Messages the relay moves per pass over the first ring (the shard's
    /// `FRAMES_PER_RING_PASS`).
    pub relay_pass: usize,
}

/// tutti's defaults: a 4 MiB publish ring, an 8 MiB delivery log, the shard's 256 frames per
/// ring pass (daemon/src/config.rs, daemon/src/shard.rs).
pub const TUTTI_LOCAL_SHAPE: RelayShape = RelayShape {
    publish_ring_bytes: 4 << 20,
    log_bytes: 8 << 20,
    batch: 256,
    fragment_limit: 256,
    relay_pass: 256,
};

pub struct RelayThroughput {
    pub ring: RingThroughput,
    /// Offer-to-delivery of every `SAMPLE_EVERY`th message over the window, as
    /// `local-throughput` times tutti's.
    pub latency: Histogram<u64>,
    pub measure_start: Instant,
}

/// The fair floor of `local-throughput`: tutti's topology without tutti. One thread on
/// `client_core` offers up to `batch` messages into ring 1 (stopping when it is full), then
/// polls up to `fragment_limit` from ring 2, reading each message's sequence in place (as
/// tutti's bench reads its deliveries) and checking it; a relay on `relay_core` copies up to `relay_pass` messages per pass from ring 1
/// into ring 2 (waiting, not storing, while ring 2 is full) and publishes once per pass.
/// Both rings have tutti's sizes and start on a cache line. The rate is what the client
/// received after warm-up; every `SAMPLE_EVERY`th message is timed as `local-throughput`
/// times tutti's.
pub fn relay_throughput(
    client_core: usize,
    relay_core: usize,
    size: usize,
    warmup: Duration,
    duration: Duration,
    shape: &RelayShape,
) -> Result<RelayThroughput, String> {
    assert!(size >= 8, "messages carry an 8-byte sequence number");
    let mut ring1 = SpscRing::with_capacity(shape.publish_ring_bytes);
    let mut ring2 = SpscRing::with_capacity(shape.log_bytes);
    let (mut producer1, mut consumer1) = ring1.split();
    let (mut producer2, mut consumer2) = ring2.split();
    let done = &CachePadded::new(AtomicBool::new(false));
    let relay_gone = &CachePadded::new(AtomicBool::new(false));
    std::thread::scope(|s| {
        let relay = s.spawn(move || -> Result<u64, String> {
            let _gone = SetOnDrop(relay_gone);
            pin_current(relay_core)?;
            let mut relayed = 0u64;
            loop {
                let mut stop = false;
                let n = consumer1.poll(shape.relay_pass, |m| {
                    while !producer2.offer(m) {
                        if done.load(Ordering::Relaxed) {
                            stop = true;
                            return;
                        }
                        spin_loop();
                    }
                    relayed += 1;
                });
                producer2.flush();
                if stop || (n == 0 && done.load(Ordering::Acquire)) {
                    return Ok(relayed);
                }
                if n == 0 {
                    spin_loop();
                }
            }
        });
        let client = s.spawn(move || -> Result<RelayThroughput, String> {
            let _done = SetOnDrop(done);
            pin_current(client_core)?;
            let mut msg = vec![0xA5u8; size];
            let start = Instant::now();
            let measure_from = start + warmup;
            let end = measure_from + duration;
            let (mut sent, mut received) = (0u64, 0u64);
            let mut bad = None;
            let mut window: Option<(Instant, u64)> = None;
            let mut last_progress = start;
            let mut latency = new_histogram();
            let sampled = size >= 16;
            clock::calibrate();
            loop {
                for _ in 0..shape.batch {
                    msg[..8].copy_from_slice(&sent.to_le_bytes());
                    if sampled && sent & (SAMPLE_EVERY - 1) == 0 {
                        msg[8..16].copy_from_slice(&clock::now().to_le_bytes());
                    }
                    if !producer1.offer(&msg) {
                        break;
                    }
                    sent += 1;
                }
                producer1.flush();
                let n = consumer2.poll(shape.fragment_limit, |m| {
                    // Read in place, as tutti's subscriber reads its delivery log.
                    let seq = u64::from_le_bytes(m[..8].try_into().expect("8 bytes"));
                    if seq != received && bad.is_none() {
                        bad = Some((received, seq));
                    }
                    if sampled && window.is_some() && seq & (SAMPLE_EVERY - 1) == 0 {
                        let stamp = u64::from_le_bytes(m[8..16].try_into().expect("8 bytes"));
                        latency.saturating_record(clock::ns_between(stamp, clock::now()));
                    }
                    received += 1;
                });
                if let Some((want, got)) = bad {
                    return Err(format!("relay floor: expected message {want}, got {got}"));
                }
                interrupt::check()?;
                let now = Instant::now();
                if n > 0 {
                    last_progress = now;
                } else if relay_gone.load(Ordering::Relaxed) || now - last_progress > STUCK_AFTER {
                    return Err("relay floor: the relay stopped moving messages".into());
                }
                if window.is_none() && now >= measure_from {
                    window = Some((now, received));
                }
                if now >= end {
                    let (t0, n0) = window.expect("window starts before end");
                    let measured = now - t0;
                    let messages = received - n0;
                    return Ok(RelayThroughput {
                        ring: RingThroughput {
                            msgs_per_s: messages as f64 / measured.as_secs_f64(),
                            messages,
                            measured,
                        },
                        latency,
                        measure_start: t0,
                    });
                }
            }
        });
        let result = client.join().map_err(|_| "relay floor client panicked")?;
        let relayed = relay.join().map_err(|_| "relay floor relay panicked")??;
        let result = result?;
        if relayed < result.ring.messages {
            return Err(format!(
                "relay floor: the client counted {} messages but the relay moved {relayed}",
                result.ring.messages
            ));
        }
        Ok(result)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_near_far_or_mixed_by_its_probes() {
        let p = |rtt_p50_ns| Placement { rtt_p50_ns };
        // This host's two placements: 90-110 ns and 380-490 ns.
        assert_eq!(Placement::of_run(p(95), p(110)), "near");
        assert_eq!(Placement::of_run(p(460), p(410)), "far");
        assert_eq!(
            Placement::of_run(p(NEAR_MAX_RTT_NS), p(NEAR_MAX_RTT_NS + 1)),
            "mixed"
        );
        assert_eq!(Placement::of_run(p(480), p(100)), "mixed");
    }

    #[test]
    fn relay_floor_moves_every_message_in_order_and_samples_latency() {
        if std::thread::available_parallelism().map_or(true, |n| n.get() < 2) {
            eprintln!("skipped: needs two cores");
            return;
        }
        // Small rings and batches: the relay waits on a full second ring, the client on a
        // full first one, and nothing is lost or reordered (the client checks sequences).
        let shape = RelayShape {
            publish_ring_bytes: 64 << 10,
            log_bytes: 64 << 10,
            batch: 16,
            fragment_limit: 16,
            relay_pass: 8,
        };
        let r = relay_throughput(
            0,
            1,
            64,
            Duration::from_millis(20),
            Duration::from_millis(100),
            &shape,
        )
        .unwrap();
        assert!(r.ring.messages > 0 && r.ring.msgs_per_s > 0.0);
        assert!(!r.latency.is_empty());
    }
}
