//! Fuzz the strict UDP packet decoder: any bytes must decode or fail with a typed error,
//! and a decoded datagram's messages (each message of a run too) must iterate without
//! panicking, as many as the headers say.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tutti_wire::packet::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(datagram) = tutti_wire::packet::decode(data) {
        let mut n = 0usize;
        for message in datagram.messages() {
            n += 1;
            if let Message::DataRun { messages, .. } = message {
                let first = messages.header().first_seq;
                let mut i = 0u64;
                for (header, payload) in messages.iter() {
                    assert_eq!({ header.seq }, first + i);
                    assert!(payload.len() < data.len());
                    i += 1;
                }
                assert_eq!(i as usize, messages.len(), "a validated run iterates whole");
            }
            if let Message::FlowStatus(status) = message {
                // A validated flow status never offers an empty window.
                assert!(status.window >= 1);
            }
            if let Message::Ordered { header, kind, bytes } = message {
                // A validated fragment fits its message and names a known kind.
                assert_eq!(kind as u8, header.kind);
                assert!(bytes.len() <= header.total as usize);
                assert!(header.index < header.count);
                let _ = tutti_wire::packet::split_ordered_payload(bytes);
                if let Ok((_, run)) = tutti_wire::packet::split_payload_run(bytes) {
                    // A validated run tiles its bytes exactly.
                    let body: usize = run.map(|p| tutti_wire::packet::PAYLOAD_RUN_ITEM_LEN + p.len()).sum();
                    assert_eq!(body + tutti_wire::packet::OrderedPayloadHeader::SIZE, bytes.len());
                }
                let _ = tutti_wire::packet::split_memnode_message(bytes);
                if let Ok((h, entries)) = tutti_wire::packet::split_committed(bytes) {
                    // Validated committed entries are whole and below the tail.
                    let count = (entries.len() / tutti_wire::packet::COMMITTED_ENTRY_BYTES) as u64;
                    assert_eq!(entries.len() % tutti_wire::packet::COMMITTED_ENTRY_BYTES, 0);
                    assert!({ h.first } + count <= { h.tail });
                }
                if let Ok(h) = tutti_wire::packet::OrderedHeld::decode(bytes) {
                    // A decoded progress message is exactly its bytes and holds no more than it learned.
                    assert_eq!(&h.to_bytes()[..], bytes);
                    assert!(h.held <= h.learned);
                }
                if let Ok(p) = tutti_wire::packet::OrderedPlacement::decode(bytes) {
                    // A decoded placement is exactly its bytes and names an epoch, or none at all.
                    assert_eq!(&p.to_bytes()[..], bytes);
                    let epoch = p.epoch;
                    assert!(epoch >= 1 || p == tutti_wire::packet::OrderedPlacement::UNKNOWN);
                }
            }
        }
        assert_eq!(n, usize::from(datagram.header.count));
    }
});
