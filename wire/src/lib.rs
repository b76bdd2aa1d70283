//! tutti-wire: bytes only. UDP packet formats, the local control protocol and the
//! shared-memory ring layouts, each with a strict validating decoder. No I/O, no threads.
//!
//! Layouts are documented in `docs/internals.md`; this crate is their single definition.

pub mod control;
pub mod packet;
pub mod shm;
