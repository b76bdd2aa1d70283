//! Two clocks. [`now`] is cheap, for timing single round trips of ~100 ns that start and
//! end on the same pinned thread: the CPU's time-stamp counter (`lfence; rdtsc`, ~10 ns
//! here against ~20 ns for `Instant::now()`), calibrated once against `Instant`. Both the
//! floor and tutti's local round trips are timed with it, so their percentiles compare like
//! with like. Elsewhere than x86_64 it falls back to `Instant`.
//!
//! [`mono_ns`] is for stamps taken on one thread (or process) and read on another: raw
//! `CLOCK_MONOTONIC` nanoseconds, the clock `Instant` reads on Linux, the same for every
//! thread and process of the machine. The TSC is not used there: unpinned threads move
//! between vCPUs whose counters a hypervisor need not keep in step.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static EPOCH: OnceLock<Instant> = OnceLock::new();
static NS_PER_TICK: OnceLock<f64> = OnceLock::new();

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn raw() -> u64 {
    // SAFETY: lfence and rdtsc have no memory-safety preconditions; every x86_64 CPU has
    // them. lfence keeps rdtsc from being executed before the preceding loads complete.
    unsafe {
        core::arch::x86_64::_mm_lfence();
        core::arch::x86_64::_rdtsc()
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn raw() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Calibrates the counter against `Instant` over ~50 ms (once; later calls are free).
pub fn calibrate() -> f64 {
    *NS_PER_TICK.get_or_init(|| {
        if cfg!(not(target_arch = "x86_64")) {
            return 1.0;
        }
        let _ = EPOCH.get_or_init(Instant::now);
        let (i0, t0) = (Instant::now(), raw());
        std::thread::sleep(Duration::from_millis(50));
        let (i1, t1) = (Instant::now(), raw());
        let ticks = t1.wrapping_sub(t0).max(1);
        (i1 - i0).as_nanos() as f64 / ticks as f64
    })
}

/// The current counter value (call [`calibrate`] once before timing).
#[inline(always)]
pub fn now() -> u64 {
    raw()
}

/// Nanoseconds between two readings of [`now`].
#[inline]
pub fn ns_between(start: u64, end: u64) -> u64 {
    (end.wrapping_sub(start) as f64 * calibrate()) as u64
}

/// `CLOCK_MONOTONIC` in nanoseconds: comparable across threads and processes.
#[inline]
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call, and
    // CLOCK_MONOTONIC is supported by every Linux kernel (the call cannot fail with it).
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0);
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Median cost of two back-to-back readings, in nanoseconds.
pub fn overhead_ns() -> u64 {
    calibrate();
    let mut samples: Vec<u64> = (0..10_001)
        .map(|_| {
            let a = now();
            let b = now();
            ns_between(a, b)
        })
        .collect();
    samples.sort_unstable();
    samples[samples.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mono_ns_is_the_clock_instant_reads_and_other_threads_agree() {
        let (i0, m0) = (Instant::now(), mono_ns());
        std::thread::sleep(Duration::from_millis(5));
        let m1 = std::thread::spawn(mono_ns).join().unwrap();
        let i1 = Instant::now();
        let between = m1 - m0;
        assert!(between >= 5_000_000, "{between} ns");
        // Another thread's reading falls inside this thread's `Instant` interval.
        assert!(between <= (i1 - i0).as_nanos() as u64 + 1_000_000, "{between} ns");
    }
}
