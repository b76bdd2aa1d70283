//! Fuzzes the minitransaction decoders: any bytes give a message/record or an error, never a
//! panic; a decoded message re-encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tutti_wire::minitx::{Message, Record};

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::decode(data) {
        assert_eq!(message.to_vec(), data, "decode/encode is not the identity");
    }
    let _ = Record::decode(data);
});
