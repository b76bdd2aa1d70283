//! tutti-wire: bytes only. UDP packet formats, the local control protocol and the
//! shared-memory ring layouts, each with a strict validating decoder. No I/O, no threads.
//!
//! Layouts are documented in `docs/internals.md`; this crate is their single definition.
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod chunk;
pub mod cluster_key;
pub mod control;
pub mod counters;
pub mod minitx;
pub mod packet;
pub mod shm;

/// Hints the CPU to fetch the cache line holding `ptr` (no memory access semantics: any
/// address will do).
#[inline(always)]
pub(crate) fn prefetch(ptr: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and has no effect on memory contents; the intrinsic
    // is available on every x86_64 CPU (SSE).
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(ptr.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ptr;
}

/// A group's 64-bit identifier: FNV-1a over the UTF-8 name ([`packet::group_id`]). Stable
/// across hosts and releases (it appears in packets and decides a group's shard:
/// `group_id % shards`).
pub fn group_id(name: &str) -> u64 {
    packet::group_id(name.as_bytes())
}

#[cfg(test)]
mod tests {
    #[test]
    fn group_id_is_fnv1a() {
        // Reference values of 64-bit FNV-1a.
        assert_eq!(super::group_id(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::group_id("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
