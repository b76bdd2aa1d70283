//! Pinning threads to cores, with errors that say which core and what the machine has.

use core_affinity::CoreId;

/// Pin the calling thread to `core` (a logical CPU number as in /proc/cpuinfo).
pub fn pin_current(core: usize) -> Result<(), String> {
    let available = available_cores();
    if !available.contains(&core) {
        return Err(format!(
            "cannot pin to core {core}: this process may run on cores {available:?} \
             (see --client-core / --daemon-core)"
        ));
    }
    if core_affinity::set_for_current(CoreId { id: core }) {
        Ok(())
    } else {
        Err(format!("sched_setaffinity to core {core} failed"))
    }
}

/// Cores this process may run on.
pub fn available_cores() -> Vec<usize> {
    core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect()
}

/// Refuse to run a spinning pair on one core: both sides would spin away whole time slices.
pub fn check_pair(a: usize, b: usize) -> Result<(), String> {
    if a == b {
        return Err(format!(
            "the two sides must be on different cores (both are {a}); this machine offers {:?}",
            available_cores()
        ));
    }
    Ok(())
}
