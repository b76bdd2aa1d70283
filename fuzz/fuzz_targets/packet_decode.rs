//! Fuzz the strict UDP packet decoder: any bytes must decode or fail with a typed error,
//! and a decoded datagram's messages must iterate without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(datagram) = tutti_wire::packet::decode(data) {
        for message in datagram.messages() {
            let _ = message;
        }
    }
});
