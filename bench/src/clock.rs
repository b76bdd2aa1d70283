//! A cheap clock for timing single round trips of ~100 ns: the CPU's time-stamp counter
//! (`lfence; rdtsc`, ~10 ns here against ~20 ns for `Instant::now()`), calibrated once
//! against `Instant`. Both the floor and tutti are timed with it, one round trip per
//! sample, so their percentiles compare like with like. Elsewhere than x86_64 it falls
//! back to `Instant`.

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
