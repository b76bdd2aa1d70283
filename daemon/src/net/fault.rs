//! Fault injection for running the protocols over a bad network on a real host: a
//! [`Transport`] wrapper that drops, duplicates, delays (and so reorders) datagrams, cuts
//! peers off, and flips bits in, truncates and replays incoming ones, with every choice
//! drawn from a PRNG seeded by the config, so the same seed and traffic give the same
//! faults. Off unless `[net.fault]` asks for it.

use super::config::FaultConfig;
use super::socket::check_send;
use super::{NetStats, SendError, Transport};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// Memory set aside for delayed datagrams (each slot holds `max_datagram` bytes).
const DELAY_QUEUE_BYTES: usize = 16 << 20;
/// Bounds on the number of delayed datagrams held at once.
const DELAY_SLOTS_MIN: usize = 64;
const DELAY_SLOTS_MAX: usize = 4096;
/// Received datagrams kept for the replay fault (each slot holds `max_datagram` bytes).
const REPLAY_SLOTS: usize = 64;

/// What the fault injector did, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Outgoing datagrams dropped by `loss`.
    pub lost_out: u64,
    /// Incoming datagrams dropped by `loss_incoming`.
    pub lost_in: u64,
    /// Outgoing datagrams to a partitioned peer.
    pub partitioned_out: u64,
    /// Incoming datagrams from a partitioned peer.
    pub partitioned_in: u64,
    /// Outgoing datagrams sent twice.
    pub duplicated: u64,
    /// Outgoing datagrams held back by `delay_us`/`jitter_us`.
    pub delayed: u64,
    /// Datagrams sent without delay because the delay queue was full.
    pub delay_overflow: u64,
    /// Incoming datagrams delivered with one bit flipped.
    pub corrupted: u64,
    /// Incoming datagrams delivered cut short.
    pub truncated: u64,
    /// Earlier incoming datagrams delivered again.
    pub replayed: u64,
}

/// splitmix64: tiny, fast, and good enough to draw fault decisions (not for secrets).
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True with probability `p`; draws nothing when `p` is 0 (so a setting at 0 leaves
    /// the others' sequence unchanged).
    fn chance(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        ((self.next_u64() >> 11) as f64) * (1.0 / (1u64 << 53) as f64) < p
    }

    /// Uniform in 0..=max.
    fn up_to(&mut self, max: u64) -> u64 {
        if max == 0 {
            0
        } else {
            self.next_u64() % (max + 1)
        }
    }
}

/// A datagram held back by the delay fault.
#[derive(Clone, Copy)]
struct Delayed {
    to: SocketAddr,
    len: usize,
}

/// Wraps a transport with the faults of a [`FaultConfig`]. Loss, duplication and delay
/// act on outgoing datagrams (`loss_incoming` on incoming ones); a partition drops both
/// ways. Delayed datagrams wait in a bounded queue and go to the inner transport on a
/// later `queue`, `flush`, `recv` or `wait` once due (`wait` shortens its sleep for them).
pub struct FaultyTransport<T: Transport> {
    inner: T,
    /// The inner transport's address (its family decides which destinations are valid).
    local: SocketAddr,
    config: FaultConfig,
    partition: Vec<SocketAddr>,
    rng: SplitMix64,
    max_datagram: usize,
    delay_buf: Box<[u8]>,
    delay_meta: Box<[Delayed]>,
    delay_free: Vec<u32>,
    /// (due, sequence, slot): the sequence keeps equal due times in queue order.
    delay_heap: BinaryHeap<Reverse<(Instant, u64, u32)>>,
    delay_seq: u64,
    /// A corrupted or truncated copy of the datagram being delivered.
    mangle_buf: Box<[u8]>,
    /// Datagrams received lately, for the replay fault: bytes, then (from, len) per slot.
    replay_buf: Box<[u8]>,
    replay_meta: Vec<(SocketAddr, usize)>,
    replay_next: usize,
    stats: FaultStats,
}

impl<T: Transport> FaultyTransport<T> {
    /// Wraps `inner`; logs a warning naming every fault, since a daemon injecting them
    /// must not pass for a healthy one.
    pub fn new(inner: T, config: &FaultConfig, max_datagram: usize) -> FaultyTransport<T> {
        tracing::warn!(
            local = %inner.local_addr(),
            loss = config.loss,
            loss_incoming = config.loss_incoming,
            duplicate = config.duplicate,
            delay_us = config.delay_us,
            jitter_us = config.jitter_us,
            corrupt = config.corrupt,
            truncate = config.truncate,
            replay = config.replay,
            seed = config.seed,
            partition = ?config.partition,
            "FAULT INJECTION ON: this transport drops, duplicates, delays, corrupts or replays datagrams on purpose"
        );
        let slots = if config.delay_us > 0 || config.jitter_us > 0 {
            (DELAY_QUEUE_BYTES / max_datagram.max(1)).clamp(DELAY_SLOTS_MIN, DELAY_SLOTS_MAX)
        } else {
            0
        };
        FaultyTransport {
            local: inner.local_addr(),
            inner,
            config: config.clone(),
            partition: config.partition.clone(),
            rng: SplitMix64(config.seed),
            max_datagram,
            delay_buf: vec![0; slots * max_datagram].into_boxed_slice(),
            delay_meta: vec![
                Delayed {
                    to: SocketAddr::from(([0, 0, 0, 0], 0)),
                    len: 0
                };
                slots
            ]
            .into_boxed_slice(),
            delay_free: (0..slots as u32).rev().collect(),
            delay_heap: BinaryHeap::with_capacity(slots),
            delay_seq: 0,
            mangle_buf: vec![
                0;
                if config.corrupt > 0.0 || config.truncate > 0.0 {
                    max_datagram
                } else {
                    0
                }
            ]
            .into_boxed_slice(),
            replay_buf: vec![
                0;
                if config.replay > 0.0 {
                    REPLAY_SLOTS * max_datagram
                } else {
                    0
                }
            ]
            .into_boxed_slice(),
            replay_meta: Vec::with_capacity(if config.replay > 0.0 { REPLAY_SLOTS } else { 0 }),
            replay_next: 0,
            stats: FaultStats::default(),
        }
    }

    /// The wrapped transport.
    pub fn inner(&self) -> &T {
        &self.inner
    }

    pub fn inner_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// What the injector did so far.
    pub fn fault_stats(&self) -> FaultStats {
        self.stats
    }

    /// Datagrams held back by the delay fault right now.
    pub fn delayed_now(&self) -> usize {
        self.delay_heap.len()
    }

    /// Hands due delayed datagrams to the inner transport's queue (stops, keeping them,
    /// when that queue is full); returns how many.
    fn release_due(&mut self, now: Instant) -> usize {
        let mut released = 0;
        while let Some(&Reverse((due, _, slot))) = self.delay_heap.peek() {
            if due > now {
                break;
            }
            let d = self.delay_meta[slot as usize];
            let at = slot as usize * self.max_datagram;
            // Size and family were checked when it was delayed: only a full queue can stop it.
            if let Err(SendError::QueueFull) = self.inner.queue(d.to, &self.delay_buf[at..at + d.len]) {
                break;
            }
            self.delay_heap.pop();
            self.delay_free.push(slot);
            released += 1;
        }
        released
    }

    /// Sends one copy now or after its delay.
    fn send_copy(&mut self, to: SocketAddr, bytes: &[u8]) -> Result<(), SendError> {
        if self.delay_meta.is_empty() {
            return self.inner.queue(to, bytes);
        }
        let Some(slot) = self.delay_free.pop() else {
            self.stats.delay_overflow += 1;
            return self.inner.queue(to, bytes);
        };
        let delay = self.config.delay_us + self.rng.up_to(self.config.jitter_us);
        let at = slot as usize * self.max_datagram;
        self.delay_buf[at..at + bytes.len()].copy_from_slice(bytes);
        self.delay_meta[slot as usize] = Delayed { to, len: bytes.len() };
        self.delay_seq += 1;
        let due = Instant::now() + Duration::from_micros(delay);
        self.delay_heap.push(Reverse((due, self.delay_seq, slot)));
        self.stats.delayed += 1;
        Ok(())
    }
}

fn is_partitioned(partition: &[SocketAddr], peer: &SocketAddr) -> bool {
    partition
        .iter()
        .any(|p| p == peer || (p.port() == 0 && p.ip() == peer.ip()))
}

impl<T: Transport> Transport for FaultyTransport<T> {
    fn queue(&mut self, to: SocketAddr, bytes: &[u8]) -> Result<(), SendError> {
        check_send(&self.local, self.max_datagram, to, bytes.len())?;
        if !self.delay_heap.is_empty() {
            self.release_due(Instant::now());
        }
        if is_partitioned(&self.partition, &to) {
            self.stats.partitioned_out += 1;
            return Ok(());
        }
        if self.rng.chance(self.config.loss) {
            self.stats.lost_out += 1;
            return Ok(());
        }
        let duplicate = self.rng.chance(self.config.duplicate);
        self.send_copy(to, bytes)?;
        if duplicate {
            self.stats.duplicated += 1;
            // A full queue just loses the copy: it was a fault anyway.
            let _ = self.send_copy(to, bytes);
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<usize> {
        if !self.delay_heap.is_empty() {
            self.release_due(Instant::now());
        }
        self.inner.flush()
    }

    fn recv(&mut self, max: usize, f: &mut dyn FnMut(SocketAddr, &[u8])) -> io::Result<usize> {
        // A shard with nothing of its own to send may not flush: send what fell due.
        if !self.delay_heap.is_empty() && self.release_due(Instant::now()) > 0 {
            self.inner.flush()?;
        }
        let FaultyTransport {
            inner,
            partition,
            rng,
            stats,
            config,
            max_datagram,
            mangle_buf,
            replay_buf,
            replay_meta,
            replay_next,
            ..
        } = self;
        let max_datagram = *max_datagram;
        let mut delivered = 0;
        inner.recv(max, &mut |from, bytes| {
            if is_partitioned(partition, &from) {
                stats.partitioned_in += 1;
                return;
            }
            if rng.chance(config.loss_incoming) {
                stats.lost_in += 1;
                return;
            }
            let len = bytes.len().min(max_datagram);
            if config.replay > 0.0 {
                let slot = *replay_next % REPLAY_SLOTS;
                replay_buf[slot * max_datagram..slot * max_datagram + len].copy_from_slice(&bytes[..len]);
                if replay_meta.len() <= slot {
                    replay_meta.push((from, len));
                } else {
                    replay_meta[slot] = (from, len);
                }
                *replay_next += 1;
            }
            delivered += 1;
            if len > 0 && rng.chance(config.corrupt) {
                stats.corrupted += 1;
                mangle_buf[..len].copy_from_slice(&bytes[..len]);
                let bit = rng.up_to(len as u64 * 8 - 1);
                mangle_buf[(bit / 8) as usize] ^= 1 << (bit % 8);
                f(from, &mangle_buf[..len]);
            } else if len > 0 && rng.chance(config.truncate) {
                stats.truncated += 1;
                f(from, &bytes[..rng.up_to(len as u64 - 1) as usize]);
            } else {
                f(from, bytes);
            }
            // A datagram received earlier (possibly this one) comes again.
            if !replay_meta.is_empty() && rng.chance(config.replay) {
                let slot = rng.up_to(replay_meta.len() as u64 - 1) as usize;
                let (old_from, old_len) = replay_meta[slot];
                stats.replayed += 1;
                delivered += 1;
                f(
                    old_from,
                    &replay_buf[slot * max_datagram..slot * max_datagram + old_len],
                );
            }
        })?;
        Ok(delivered)
    }

    fn wake_quiet(&self, wake_fd: RawFd) -> bool {
        self.inner.wake_quiet(wake_fd)
    }

    fn wait(&mut self, timeout: Duration, wake_fd: RawFd) -> io::Result<()> {
        let mut timeout = timeout;
        if let Some(&Reverse((due, _, _))) = self.delay_heap.peek() {
            timeout = timeout.min(due.saturating_duration_since(Instant::now()));
        }
        self.inner.wait(timeout, wake_fd)?;
        // Due datagrams go out even while the shard sleeps.
        if !self.delay_heap.is_empty() && self.release_due(Instant::now()) > 0 {
            self.inner.flush()?;
        }
        Ok(())
    }

    fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr()
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn stats(&self) -> NetStats {
        NetStats {
            fault: self.stats,
            ..self.inner.stats()
        }
    }

    fn set_partitioned(&mut self, peers: &[SocketAddr]) -> bool {
        tracing::warn!(local = %self.inner.local_addr(), partition = ?peers, "fault injection: partition changed");
        self.partition.clear();
        self.partition.extend_from_slice(peers);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prng_is_deterministic_and_fair() {
        let mut a = SplitMix64(7);
        let mut b = SplitMix64(7);
        let hits = (0..100_000).filter(|_| a.chance(0.3)).count();
        let hits_b = (0..100_000).filter(|_| b.chance(0.3)).count();
        assert_eq!(hits, hits_b);
        assert!((29_000..31_000).contains(&hits), "{hits}");
        assert!(!a.chance(0.0));
        assert!(a.chance(1.0));
        assert!((0..1000).all(|_| a.up_to(5) <= 5));
    }

    #[test]
    fn partition_matches_port_zero_as_any_port() {
        let p: Vec<SocketAddr> = vec!["127.0.0.3:0".parse().unwrap(), "127.0.0.4:9".parse().unwrap()];
        assert!(is_partitioned(&p, &"127.0.0.3:7401".parse().unwrap()));
        assert!(is_partitioned(&p, &"127.0.0.4:9".parse().unwrap()));
        assert!(!is_partitioned(&p, &"127.0.0.4:10".parse().unwrap()));
    }
}

#[cfg(test)]
mod mangle_tests {
    use super::*;
    use crate::net::auth::tests_support::Mem;

    fn run(seed: u64, inputs: &[Vec<u8>]) -> (Vec<Vec<u8>>, FaultStats) {
        let config = FaultConfig {
            corrupt: 0.2,
            truncate: 0.2,
            replay: 0.2,
            seed,
            ..FaultConfig::default()
        };
        let mem = Mem {
            sent: Vec::new(),
            inbox: inputs.iter().cloned().collect(),
        };
        let mut t = FaultyTransport::new(mem, &config, 256);
        let mut out = Vec::new();
        while t.recv(16, &mut |_, b| out.push(b.to_vec())).unwrap() > 0 {}
        (out, t.fault_stats())
    }

    #[test]
    fn corrupt_truncate_and_replay_are_what_they_say_and_repeat_with_the_seed() {
        let inputs: Vec<Vec<u8>> = (0..500u32)
            .map(|i| (0..100 + i % 50).map(|j| (i * 7 + j) as u8).collect())
            .collect();
        let (out, stats) = run(42, &inputs);
        assert!(
            stats.corrupted > 50 && stats.truncated > 30 && stats.replayed > 50,
            "{stats:?}"
        );
        assert_eq!(out.len() as u64, 500 + stats.replayed);
        let (mut corrupted, mut truncated, mut replayed) = (0, 0, 0);
        let mut next = 0;
        for d in &out {
            let original = &inputs[next.min(inputs.len() - 1)];
            let flipped_bits: u32 = if d.len() == original.len() {
                d.iter().zip(original).map(|(a, b)| (a ^ b).count_ones()).sum()
            } else {
                u32::MAX
            };
            if d == original {
                next += 1;
            } else if flipped_bits == 1 {
                corrupted += 1;
                next += 1;
            } else if d.len() < original.len() && original.starts_with(d) {
                truncated += 1;
                next += 1;
            } else {
                assert!(
                    inputs[..next].contains(d),
                    "a replay is an earlier datagram, whole"
                );
                replayed += 1;
            }
        }
        assert_eq!(next, inputs.len(), "every datagram delivered once in order");
        assert_eq!((corrupted, truncated), (stats.corrupted, stats.truncated));
        // A replay identical to the next original is counted as that original above, so:
        assert!(replayed <= stats.replayed && replayed > 0);
        assert_eq!(run(42, &inputs), (out, stats), "the seed decides every fault");
        assert_ne!(run(43, &inputs).0, run(42, &inputs).0);
    }
}
