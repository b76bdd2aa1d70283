//! Fuzzes the control-socket decoders: any bytes give a request/reply or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tutti_wire::control::{Reply, Request};

fuzz_target!(|data: &[u8]| {
    let _ = Request::decode(data);
    let _ = Reply::decode(data);
});
