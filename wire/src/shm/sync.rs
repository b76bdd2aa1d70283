//! The atomics the rings use: `std`'s normally, loom's under `--cfg loom`, so that the loom
//! models exercise the same algorithm code.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
