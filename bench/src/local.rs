//! The client side of the local benchmarks: one thread pinned to the client core, attached
//! to the `tuttid` started for the run, member of group "bench", so it receives what it
//! publishes. Latency is publish to own delivery; throughput counts own deliveries.

use crate::clock;
use std::hint::spin_loop;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tutti_client::{Client, Event, GroupId, OfferError};

use crate::interrupt;
use crate::pin::pin_current;
use crate::report::new_histogram;

/// The group every local benchmark joins.
const GROUP: &str = "bench";
/// Latency warm-up also ends after this many round trips.
const WARMUP_MESSAGES: u64 = 100_000;
/// Idle time before each after-idle sample.
pub const IDLE_PAUSE: Duration = Duration::from_secs(1);
/// A message not delivered within this long means the daemon is stuck.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Empty polls (a power of two) between two looks at the clock while waiting.
const POLLS_PER_CLOCK_CHECK: u32 = 1 << 12;
/// Deliveries taken per poll while waiting for one message (only one is expected).
const LATENCY_POLL_LIMIT: usize = 16;

fn connect(socket: &std::path::Path) -> Result<(Client, GroupId), String> {
    let mut client = Client::connect_to(socket)
        .map_err(|e| format!("connecting to tuttid at {}: {e}", socket.display()))?;
    let group = client
        .join(GROUP)
        .map_err(|e| format!("joining group {GROUP:?}: {e}"))?;
    Ok((client, group))
}

fn seq_of(payload: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(payload.get(..8)?.try_into().ok()?))
}

/// Offer until the message is taken: back pressure is retried, anything else is an error.
fn offer_spin(client: &mut Client, group: GroupId, msg: &[u8]) -> Result<(), String> {
    let started = Instant::now();
    let mut tries = 0u32;
    loop {
        match client.offer(group, msg) {
            Ok(_) => return Ok(()),
            Err(OfferError::BackPressured) => {
                tries = tries.wrapping_add(1);
                if tries & (POLLS_PER_CLOCK_CHECK - 1) == 0 && started.elapsed() > DELIVERY_TIMEOUT {
                    return Err(format!(
                        "offer back-pressured for {DELIVERY_TIMEOUT:?}: the daemon is not \
                         draining the publish ring"
                    ));
                }
                spin_loop();
            }
            Err(e) => return Err(format!("offer of {} bytes: {e:?}", msg.len())),
        }
    }
}

pub struct LatencyOptions {
    pub socket: PathBuf,
    pub core: usize,
    pub size: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// After-idle samples to take after the run (0: none).
    pub idle_samples: u64,
}

pub struct LatencyRun {
    /// Publish-to-delivery round trips, one sample each, clock cost included.
    pub rtt: Histogram<u64>,
    /// When measuring started and how long it lasted.
    pub measure_start: Instant,
    pub measured: Duration,
    pub after_idle: Option<Histogram<u64>>,
    pub idle_start: Instant,
    pub idle_measured: Duration,
}

struct PingPong {
    client: Client,
    group: GroupId,
    msg: Vec<u8>,
    next_seq: u64,
    lagged: u64,
}

impl PingPong {
    /// Publish one message and spin-poll until it comes back; returns the round trip.
    #[inline]
    fn round_trip(&mut self) -> Result<Duration, String> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.msg[..8].copy_from_slice(&seq.to_le_bytes());
        let t0 = Instant::now();
        let c0 = clock::now();
        offer_spin(&mut self.client, self.group, &self.msg)?;
        let mut delivered = false;
        let mut unexpected = None;
        let mut empty_polls = 0u32;
        while !delivered {
            let lagged = &mut self.lagged;
            let n = self
                .client
                .poll(self.group, LATENCY_POLL_LIMIT, |event| match event {
                    Event::Message { payload, .. } => {
                        if seq_of(payload) == Some(seq) {
                            delivered = true;
                        } else {
                            unexpected = Some(seq_of(payload));
                        }
                    }
                    Event::Lagged { .. } => *lagged += 1,
                    // Only cluster groups lose messages, and this plain local group has
                    // no ordered-group records.
                    _ => {}
                })
                .map_err(|e| format!("poll: {e}"))?;
            if let Some(got) = unexpected {
                return Err(format!(
                    "expected our message {seq} back, got {got:?} (someone else in group {GROUP:?}?)"
                ));
            }
            if n == 0 {
                empty_polls += 1;
                if empty_polls == POLLS_PER_CLOCK_CHECK {
                    empty_polls = 0;
                    interrupt::check()?;
                    if t0.elapsed() > DELIVERY_TIMEOUT {
                        return Err(format!(
                            "message {seq} not delivered back within {DELIVERY_TIMEOUT:?}"
                        ));
                    }
                }
            }
        }
        Ok(Duration::from_nanos(clock::ns_between(c0, clock::now())))
    }
}

/// Runs on its own thread pinned to `opts.core`.
pub fn latency(opts: &LatencyOptions) -> Result<LatencyRun, String> {
    std::thread::scope(|s| {
        s.spawn(|| latency_on_this_thread(opts))
            .join()
            .map_err(|_| "client thread panicked".to_string())?
    })
}

fn latency_on_this_thread(opts: &LatencyOptions) -> Result<LatencyRun, String> {
    pin_current(opts.core)?;
    clock::calibrate();
    let (client, group) = connect(&opts.socket)?;
    let mut pp = PingPong {
        client,
        group,
        msg: vec![0x5Au8; opts.size],
        next_seq: 0,
        lagged: 0,
    };
    let start = Instant::now();
    // Warm-up (not recorded): caches, page faults in the rings, the daemon's first laps.
    let warmup_end = start + opts.warmup;
    while pp.next_seq < WARMUP_MESSAGES && Instant::now() < warmup_end {
        pp.round_trip()?;
        interrupt::check()?;
    }
    let mut rtt = new_histogram();
    let measure_start = Instant::now();
    let end = measure_start + opts.duration;
    loop {
        let sample = pp.round_trip()?;
        rtt.saturating_record(sample.as_nanos() as u64);
        if Instant::now() >= end {
            break;
        }
        interrupt::check()?;
    }
    let measured = measure_start.elapsed();
    let mut after_idle = None;
    let idle_start = Instant::now();
    if opts.idle_samples > 0 {
        let mut h = new_histogram();
        for _ in 0..opts.idle_samples {
            std::thread::sleep(IDLE_PAUSE);
            interrupt::check()?;
            h.saturating_record(pp.round_trip()?.as_nanos() as u64);
        }
        after_idle = Some(h);
    }
    if pp.lagged > 0 {
        // One message in flight cannot lap a log: this would be a daemon or client bug.
        return Err(format!("{} Lagged events with one message in flight", pp.lagged));
    }
    Ok(LatencyRun {
        rtt,
        measure_start,
        measured,
        after_idle,
        idle_start,
        idle_measured: idle_start.elapsed(),
    })
}

pub struct ThroughputOptions {
    pub socket: PathBuf,
    pub daemon_pid: u32,
    pub core: usize,
    pub size: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub batch: usize,
    pub fragment_limit: usize,
    /// Offer at this many messages per second (0: as fast as the ring takes them). Paced,
    /// every message is stamped with its intended send time and timed to its delivery.
    pub rate: f64,
}

/// In the throughput run, every this many messages (a power of two) carries a TSC stamp
/// and is timed from offer to delivery: latency at saturation, at a cost of a few ns per
/// 64 messages. The client thread offers and receives, so one pinned thread's clock times it.
pub const SAMPLE_EVERY: u64 = 64;

pub struct ThroughputRun {
    /// Offer-to-delivery of every `SAMPLE_EVERY`th message over the window (sizes >= 16);
    /// paced (`rate`), of every message from its intended send time, and the messages a
    /// `Lagged` event skipped in the window as `DELIVERY_TIMEOUT` (counted in `timed_out`).
    pub latency: Histogram<u64>,
    pub timed_out: u64,
    pub measure_start: Instant,
    pub msgs_per_s: f64,
    pub messages: u64,
    pub measured: Duration,
    pub lagged_events: u64,
    pub lagged_missed: u64,
    pub final_batch: usize,
    pub rss_before_kib: u64,
}

/// Runs on its own thread pinned to `opts.core`.
pub fn throughput(opts: &ThroughputOptions) -> Result<ThroughputRun, String> {
    std::thread::scope(|s| {
        s.spawn(|| throughput_on_this_thread(opts))
            .join()
            .map_err(|_| "client thread panicked".to_string())?
    })
}

/// One thread both publishes and polls its own deliveries: offer up to `batch` (or until
/// back-pressured), then poll up to `fragment_limit`, repeat. Delivered messages are counted
/// over the window after warm-up; every delivery's sequence number is checked (gaps only
/// allowed right after a `Lagged` event, which also halves the batch).
fn throughput_on_this_thread(opts: &ThroughputOptions) -> Result<ThroughputRun, String> {
    pin_current(opts.core)?;
    let (mut client, group) = connect(&opts.socket)?;
    let rss_before_kib = crate::daemon::rss_kib(opts.daemon_pid)?;
    let mut msg = vec![0x5Au8; opts.size];
    let mut batch = opts.batch;
    let mut sent = 0u64;
    let mut delivered = 0u64;
    let mut expected = 0u64;
    let mut lagged_events = 0u64;
    let mut lagged_missed = 0u64;
    let mut out_of_order = None;
    // Set by a Lagged event: the next delivery may skip sequence numbers.
    let mut resync = false;
    let mut last_progress = Instant::now();

    let start = Instant::now();
    let measure_from = start + opts.warmup;
    let end = measure_from + opts.duration;
    let mut window: Option<(Instant, u64)> = None;
    let mut latency = new_histogram();
    let mut timed_out = 0u64;
    let sampled = opts.size >= 16;
    let paced = opts.rate > 0.0 && sampled;
    // The intended send time of message n, in TSC ticks: start + n x ticks per message.
    let ticks_per_msg = 1e9 / opts.rate.max(f64::MIN_POSITIVE) / clock::calibrate();
    let start_tick = clock::now();
    loop {
        for _ in 0..batch {
            msg[..8].copy_from_slice(&sent.to_le_bytes());
            if paced {
                let due = start_tick + (sent as f64 * ticks_per_msg) as u64;
                if clock::now() < due {
                    break;
                }
                // Stamped with when it should have gone: a late offer counts its delay.
                msg[8..16].copy_from_slice(&due.to_le_bytes());
            } else if sampled && sent & (SAMPLE_EVERY - 1) == 0 {
                msg[8..16].copy_from_slice(&clock::now().to_le_bytes());
            }
            match client.offer(group, &msg) {
                Ok(_) => sent += 1,
                Err(OfferError::BackPressured) => break,
                Err(e) => return Err(format!("offer of {} bytes: {e:?}", msg.len())),
            }
        }
        let mut lagged_now = false;
        let n = client
            .poll(group, opts.fragment_limit, |event| match event {
                Event::Message { payload, .. } => {
                    let seq = seq_of(payload);
                    if let Some(stamp) = seq
                        .filter(|s| sampled && window.is_some() && (paced || s & (SAMPLE_EVERY - 1) == 0))
                        .and_then(|_| payload.get(8..16))
                    {
                        let stamp = u64::from_le_bytes(stamp.try_into().expect("8 bytes"));
                        latency.saturating_record(clock::ns_between(stamp, clock::now()));
                    }
                    if seq != Some(expected) && !resync && out_of_order.is_none() {
                        out_of_order = Some((expected, seq));
                    }
                    resync = false;
                    expected = seq.unwrap_or(expected) + 1;
                    delivered += 1;
                }
                Event::Lost { .. }
                | Event::View(_)
                | Event::Installed { .. }
                | Event::SnapshotRequest { .. }
                | Event::Confchg(_) => {}
                Event::Lagged { missed } => {
                    lagged_now = true;
                    resync = true;
                    lagged_events += 1;
                    lagged_missed += missed;
                    if paced && window.is_some() {
                        // Never delivered to this reader: at least as late as the timeout.
                        timed_out += missed;
                        latency.saturating_record_n(DELIVERY_TIMEOUT.as_nanos() as u64, missed);
                    }
                }
            })
            .map_err(|e| format!("poll: {e}"))?;
        if let Some((want, got)) = out_of_order {
            return Err(format!(
                "deliveries out of order: expected message {want}, got {got:?}"
            ));
        }
        if lagged_now {
            // The log lapped us: offer less per round so we poll before it wraps.
            batch = (batch / 2).max(1);
        }
        interrupt::check()?;
        let now = Instant::now();
        if n > 0 {
            last_progress = now;
        } else if now - last_progress > DELIVERY_TIMEOUT {
            return Err(format!(
                "nothing delivered for {DELIVERY_TIMEOUT:?} ({sent} sent, {delivered} delivered)"
            ));
        }
        if window.is_none() && now >= measure_from {
            window = Some((now, delivered));
        }
        if now >= end {
            let (t0, d0) = window.expect("window starts before the end");
            let measured = now - t0;
            let messages = delivered - d0;
            return Ok(ThroughputRun {
                latency,
                timed_out,
                measure_start: t0,
                msgs_per_s: messages as f64 / measured.as_secs_f64(),
                messages,
                measured,
                lagged_events,
                lagged_missed,
                final_batch: batch,
                rss_before_kib,
            });
        }
    }
}
