use proptest::prelude::*;

use super::*;
use crate::shm::testutil::AlignedRegion;

fn log(capacity: usize) -> AlignedRegion {
    let region = AlignedRegion::new(DeliveryLog::required_len(capacity));
    // SAFETY: a fresh, zeroed, page-aligned allocation of the required length.
    unsafe { DeliveryLog::init(region.ptr(), region.len(), capacity) }.expect("init");
    region
}

fn writer(region: &AlignedRegion) -> LogWriter {
    // SAFETY: the region outlives the writer within each test; one writer.
    unsafe { LogWriter::attach(region.ptr(), region.len()) }.expect("writer")
}

fn reader(region: &AlignedRegion) -> LogReader {
    // SAFETY: the region outlives the reader within each test.
    unsafe { LogReader::attach(region.ptr(), region.len()) }.expect("reader")
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Message {
        seq: u64,
        sender: u64,
        payload: Vec<u8>,
    },
    Lagged {
        missed: u64,
    },
    Lost {
        sender: u64,
        count: u64,
    },
    View {
        id: u64,
        members: Vec<u32>,
        joined: Vec<u32>,
        left: Vec<(u32, LeftReason)>,
    },
    Installed {
        position: u64,
        snapshot: Vec<u8>,
    },
    SnapshotRequest {
        position: u64,
    },
    Confchg {
        ring_id: u64,
        ring: Vec<u32>,
        members: Vec<CpgEntry>,
        joined: Vec<CpgEntry>,
        left: Vec<CpgEntry>,
    },
}

fn poll_all(reader: &mut LogReader, limit: usize) -> Vec<Event> {
    let mut out = Vec::new();
    reader
        .poll(limit, |event| {
            out.push(match event {
                LogEvent::Message { seq, sender, payload } => Event::Message {
                    seq,
                    sender,
                    payload: payload.to_vec(),
                },
                LogEvent::Lagged { missed } => Event::Lagged { missed },
                LogEvent::Lost { sender, count } => Event::Lost { sender, count },
                LogEvent::View(v) => Event::View {
                    id: v.id,
                    members: v.members().collect(),
                    joined: v.joined().collect(),
                    left: v.left().collect(),
                },
                LogEvent::Installed { position, snapshot } => Event::Installed {
                    position,
                    snapshot: snapshot.to_vec(),
                },
                LogEvent::SnapshotRequest { position } => Event::SnapshotRequest { position },
                LogEvent::Confchg(c) => Event::Confchg {
                    ring_id: c.ring_id,
                    ring: c.ring().collect(),
                    members: c.members().collect(),
                    joined: c.joined().collect(),
                    left: c.left().collect(),
                },
            })
        })
        .expect("poll");
    out
}

/// Payload derived from the seq, so any torn or misplaced byte is detectable.
fn payload_for(seq: u64, len: usize) -> Vec<u8> {
    let mut p: Vec<u8> = (0..len)
        .map(|i| (seq.wrapping_mul(131).wrapping_add(i as u64) % 253) as u8)
        .collect();
    if len >= 8 {
        p[..8].copy_from_slice(&seq.to_le_bytes());
    }
    p
}

fn msg(seq: u64, len: usize) -> Event {
    Event::Message {
        seq,
        sender: seq ^ 0xabcd,
        payload: payload_for(seq, len),
    }
}

fn append(writer: &mut LogWriter, len: usize) -> u64 {
    let seq = writer.next_seq();
    assert_eq!(writer.append(seq ^ 0xabcd, &payload_for(seq, len)), Ok(seq));
    seq
}

#[test]
fn reader_sees_only_new_messages_in_order() {
    let region = log(4096);
    let mut w = writer(&region);
    append(&mut w, 10);
    let mut r = reader(&region);
    assert!(!r.has_data());
    assert_eq!(poll_all(&mut r, 10), vec![]);
    append(&mut w, 0);
    append(&mut w, 100);
    assert!(r.has_data());
    assert_eq!(poll_all(&mut r, 10), vec![msg(1, 0), msg(2, 100)]);
    assert!(!r.has_data());
    append(&mut w, 5);
    assert_eq!(poll_all(&mut r, 1), vec![msg(3, 5)]);
    assert_eq!(w.next_seq(), 4);
}

#[test]
fn poll_respects_limit() {
    let region = log(4096);
    let mut w = writer(&region);
    let mut r = reader(&region);
    for _ in 0..5 {
        append(&mut w, 3);
    }
    assert_eq!(poll_all(&mut r, 2), vec![msg(0, 3), msg(1, 3)]);
    assert_eq!(poll_all(&mut r, 0), vec![]);
    assert_eq!(poll_all(&mut r, 9), vec![msg(2, 3), msg(3, 3), msg(4, 3)]);
}

#[test]
fn too_large_names_the_limit() {
    let region = log(4096);
    let mut w = writer(&region);
    let max = w.max_payload();
    assert_eq!(max, 4096 / 2 - 32);
    assert_eq!(
        w.append(1, &vec![0; max + 1]),
        Err(OfferError::TooLarge { len: max + 1, max })
    );
    let mut r = reader(&region);
    // Max-size records at every kind of wrap point, the reader keeping up.
    for i in 0..40u64 {
        append(&mut w, if i % 3 == 0 { max } else { (i * 37 % 700) as usize });
        let events = poll_all(&mut r, 10);
        assert_eq!(events.len(), 1);
    }
}

#[test]
fn wraps_with_padding_and_gaps_keep_content() {
    // Sizes chosen to leave 8, 16 and 24-byte gaps (no header fits) and real padding.
    let region = log(4096);
    let mut w = writer(&region);
    let mut r = reader(&region);
    for (expect_seq, i) in (0..3000u64).enumerate() {
        let len = [0usize, 8, 16, 24, 40, 100, 1000, 2000, 333][(i % 9) as usize];
        let seq = append(&mut w, len);
        assert_eq!(seq, expect_seq as u64);
        assert_eq!(poll_all(&mut r, 10), vec![msg(seq, len)], "record {i}");
    }
}

#[test]
fn lapped_reader_gets_lagged_then_resumes_at_oldest_intact() {
    let region = log(4096);
    let mut w = writer(&region);
    let mut r = reader(&region);
    append(&mut w, 50);
    assert_eq!(poll_all(&mut r, 1), vec![msg(0, 50)]);
    // Two rings' worth of 88-byte records (120 bytes each).
    for _ in 0..70 {
        append(&mut w, 88);
    }
    let head = w.head();
    assert!(head > r.cursor() + 4096, "the reader must have been lapped");
    // The oldest intact record: walk from head to find its seq (120-byte records, maybe a
    // padding first).
    let events = poll_all(&mut r, 1000);
    let Event::Lagged { missed } = events[0] else {
        panic!("expected Lagged, got {:?}", events[0])
    };
    let Event::Message { seq: first, .. } = &events[1] else {
        panic!("{:?}", events[1])
    };
    assert_eq!(*first, 1 + missed);
    // Everything from the first resumed record to the end, intact and in order.
    let expected: Vec<Event> = (*first..w.next_seq()).map(|s| msg(s, 88)).collect();
    assert_eq!(&events[1..], &expected[..]);
    // The resumed record is the one at `head` (or right after a padding there).
    let intact_bytes = w.tail() - head;
    assert!(
        (4096 - 512 - 2 * 120..=4096).contains(&intact_bytes),
        "{intact_bytes}"
    );
    assert!(!r.has_data());
    // And it goes on normally.
    append(&mut w, 7);
    assert_eq!(poll_all(&mut r, 10), vec![msg(w.next_seq() - 1, 7)]);
}

#[test]
fn lagged_with_limit_one_keeps_the_message_for_the_next_poll() {
    let region = log(4096);
    let mut w = writer(&region);
    let mut r = reader(&region);
    for _ in 0..100 {
        append(&mut w, 64);
    }
    let first = poll_all(&mut r, 1);
    let [Event::Lagged { missed }] = first[..] else {
        panic!("{first:?}")
    };
    let second = poll_all(&mut r, 1);
    assert_eq!(second, vec![msg(missed, 64)]);
}

#[test]
fn reader_attaching_mid_stream_learns_the_next_seq() {
    let region = log(4096);
    let mut w = writer(&region);
    for i in 0..500 {
        append(&mut w, i % 300);
    }
    let mut r = reader(&region);
    let seq = append(&mut w, 1);
    assert_eq!(poll_all(&mut r, 5), vec![msg(seq, 1)]);
    // ...and a lap right after attaching is counted from there.
    let mut r = reader(&region);
    let from = w.next_seq();
    for _ in 0..100 {
        append(&mut w, 64);
    }
    let events = poll_all(&mut r, 1);
    let [Event::Lagged { missed }] = events[..] else {
        panic!("{events:?}")
    };
    assert_eq!(poll_all(&mut r, 1), vec![msg(from + missed, 64)]);
}

#[test]
fn writer_reattaches_where_it_left_off() {
    let region = log(4096);
    let mut w = writer(&region);
    let mut r = reader(&region);
    for i in 0..77 {
        append(&mut w, i * 5 % 200);
    }
    let (tail, next) = (w.tail(), w.next_seq());
    let mut w = writer(&region); // the old handle is gone: re-attach
    assert_eq!((w.next_seq(), w.tail()), (next, tail));
    let events = poll_all(&mut r, 1000);
    assert!(matches!(events[0], Event::Lagged { .. }));
    let seq = append(&mut w, 9);
    assert_eq!(poll_all(&mut r, 10), vec![msg(seq, 9)]);
}

#[test]
fn init_and_attach_validate() {
    let mut region = log(4096);
    // SAFETY: valid region; init fails before writing.
    let err = unsafe { DeliveryLog::init(region.ptr(), region.len(), 3000) }.unwrap_err();
    assert!(matches!(err, LayoutError::BadCapacity { capacity: 3000, .. }));
    // SAFETY: as above.
    let err = unsafe { DeliveryLog::init(region.ptr(), 4096, 4096) }.unwrap_err();
    assert_eq!(
        err,
        LayoutError::TooSmall {
            len: 4096,
            needed: 8192
        }
    );
    region.bytes_mut()[..8].copy_from_slice(b"TUTTIPUB");
    // SAFETY: valid region.
    let err = unsafe { LogReader::attach(region.ptr(), region.len()) }
        .err()
        .unwrap();
    assert_eq!(
        err,
        LayoutError::BadMagic {
            expected: *b"TUTTILOG",
            found: *b"TUTTIPUB"
        }
    );
    assert!(err.to_string().contains("TUTTIPUB"), "{err}");
    region.bytes_mut()[..8].copy_from_slice(b"TUTTILOG");
    // No marker at the tail: a writer refuses the region.
    region.bytes_mut()[4096..4104].copy_from_slice(&[0; 8]);
    // SAFETY: valid region.
    let err = unsafe { LogWriter::attach(region.ptr(), region.len()) }
        .err()
        .unwrap();
    assert!(matches!(err, LayoutError::BadIndex { .. }));
}

#[test]
fn corrupt_records_are_errors() {
    let region_with = |corrupt: &dyn Fn(&mut [u8])| {
        let mut region = log(4096);
        let mut w = writer(&region);
        let r = reader(&region);
        append(&mut w, 16); // record at 0: 48 bytes
        corrupt(region.bytes_mut());
        (region, r)
    };
    let d = 4096;
    type Corrupt = Box<dyn Fn(&mut [u8])>;
    let cases: Vec<(Corrupt, ReadError)> = vec![
        (
            Box::new(move |b| b[d + 16..d + 20].copy_from_slice(&5000u32.to_le_bytes())),
            ReadError::TooLarge {
                position: 0,
                len: 5000,
                max: 2016,
            },
        ),
        (
            Box::new(move |b| b[d + 20] = 9),
            ReadError::BadKind { position: 0, kind: 9 },
        ),
        (
            Box::new(move |b| b[d + 20] = 2),
            ReadError::BadPadding {
                position: 0,
                len: 16,
                expected: 4064,
            },
        ),
        (
            Box::new(move |b| b[d + 8..d + 16].copy_from_slice(&7u64.to_le_bytes())),
            ReadError::SeqMismatch {
                position: 0,
                expected: 0,
                found: 7,
            },
        ),
    ];
    for (corrupt, expected) in cases {
        let (_region, mut r) = region_with(&*corrupt);
        let err = r.poll(10, |e| panic!("delivered {e:?}")).unwrap_err();
        assert_eq!(err, expected);
        assert_eq!(r.poll(10, |_| {}).unwrap_err(), expected, "sticky");
    }
}

#[test]
fn threads_reader_never_sees_torn_payloads() {
    // A small log and a writer much faster than a reader that dawdles: many laps, and the
    // reader checks every delivered payload against its seq.
    let region = log(4096);
    let mut w = writer(&region);
    let mut r = reader(&region);
    const N: u64 = 300_000;
    let (mut messages, mut lags) = (0u64, 0u64);
    std::thread::scope(|s| {
        s.spawn(move || {
            for i in 0..N {
                let len = (i * 7 % 200) as usize;
                let seq = w.append(i, &payload_for(i, len)).unwrap();
                assert_eq!(seq, i);
            }
        });
        let mut expected = 0u64;
        let mut spins = 0u32;
        while expected < N {
            let n = r
                .poll(16, |e| match e {
                    LogEvent::Message { seq, sender, payload } => {
                        assert_eq!(seq, expected, "out of order");
                        assert_eq!(sender, seq);
                        let len = (seq * 7 % 200) as usize;
                        assert_eq!(payload, &payload_for(seq, len)[..], "torn payload at {seq}");
                        expected = seq + 1;
                        messages += 1;
                        if seq % 1000 == 0 {
                            // Dawdle now and then so the writer laps us.
                            std::thread::sleep(std::time::Duration::from_micros(50));
                        }
                    }
                    LogEvent::Lagged { missed } => {
                        assert!(missed > 0);
                        expected += missed;
                        lags += 1;
                    }
                    other => panic!("only messages were written: {other:?}"),
                })
                .unwrap();
            if n == 0 {
                spins += 1;
                if spins > 50_000_000 {
                    panic!("reader stuck at {expected}");
                }
                std::hint::spin_loop();
            }
        }
    });
    assert!(messages > 0);
    eprintln!("messages {messages}, lags {lags}");
}

#[derive(Debug, Clone)]
enum Op {
    Append(usize),
    Poll(usize),
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Arbitrary appends and polls: the reader sees every message in order and intact
    /// unless it reports Lagged, whose `missed` is exactly the gap, and it lags only when
    /// the writer really did overwrite what it had not read.
    #[test]
    fn messages_in_order_lagged_accounts_for_every_gap(
        ops in prop::collection::vec(prop_oneof![
            4 => (0usize..=2016).prop_map(Op::Append),
            2 => (0usize..=150).prop_map(Op::Append),
            1 => (0usize..8).prop_map(Op::Poll),
        ], 1..300),
    ) {
        let region = log(4096);
        let mut w = writer(&region);
        let mut r = reader(&region);
        let mut lens = Vec::new();
        let mut expected = 0u64;
        for op in ops {
            match op {
                Op::Append(len) => {
                    lens.push(len);
                    append(&mut w, len);
                }
                Op::Poll(limit) => {
                    let cursor = r.cursor();
                    let events = poll_all(&mut r, limit);
                    prop_assert!(events.len() <= limit);
                    for e in events {
                        match e {
                            Event::Message { seq, sender, payload } => {
                                prop_assert_eq!(seq, expected);
                                prop_assert_eq!(sender, seq ^ 0xabcd);
                                prop_assert_eq!(payload, payload_for(seq, lens[seq as usize]));
                                expected += 1;
                            }
                            Event::Lagged { missed } => {
                                prop_assert!(missed > 0);
                                // Lagged only if the writer's head passed our cursor.
                                prop_assert!(w.head() > cursor, "lagged at {} with head {}", cursor, w.head());
                                expected += missed;
                            }
                            other => prop_assert!(false, "only messages were written: {:?}", other),
                        }
                    }
                    prop_assert!(expected <= w.next_seq());
                }
            }
        }
        // Drain: everything left is delivered (possibly after one Lagged).
        let events = poll_all(&mut r, usize::MAX);
        for e in events {
            match e {
                Event::Message { seq, .. } => { prop_assert_eq!(seq, expected); expected += 1; }
                Event::Lagged { missed } => expected += missed,
                other => prop_assert!(false, "only messages were written: {:?}", other),
            }
        }
        prop_assert_eq!(expected, w.next_seq());
    }

    /// A reader over arbitrary header, index and record bytes never panics.
    #[test]
    fn garbage_never_panics(
        header in prop::collection::vec(any::<u8>(), 32),
        keep_header in any::<bool>(),
        indices in prop::collection::vec(any::<u64>(), 3),
        small_indices in any::<bool>(),
        data in prop::collection::vec(any::<u8>(), 0..4096),
        limit in 0usize..40,
    ) {
        let mut region = log(4096);
        let bytes = region.bytes_mut();
        if !keep_header {
            bytes[..32].copy_from_slice(&header);
        }
        for (i, v) in indices.iter().enumerate() {
            let v = if small_indices { v % 12000 } else { *v };
            bytes[128 + 128 * i..136 + 128 * i].copy_from_slice(&v.to_le_bytes());
        }
        bytes[4096..4096 + data.len()].copy_from_slice(&data);
        // SAFETY: valid region; no other object uses it.
        if let Ok(mut r) = unsafe { LogReader::attach(region.ptr(), region.len()) } {
            let _ = r.has_data();
            let _ = r.poll(limit, |_| {});
            let _ = r.poll(limit, |_| {});
        }
    }
}

#[test]
fn lost_notices_are_delivered_in_stream_order() {
    let region = log(4096);
    let mut w = writer(&region);
    let mut r = reader(&region);
    w.append(1, b"before").unwrap();
    assert_eq!(w.append_lost(7, 42), 1);
    w.append(1, b"after").unwrap();
    let events = poll_all(&mut r, 16);
    assert_eq!(
        events,
        vec![
            Event::Message {
                seq: 0,
                sender: 1,
                payload: b"before".to_vec()
            },
            Event::Lost { sender: 7, count: 42 },
            Event::Message {
                seq: 2,
                sender: 1,
                payload: b"after".to_vec()
            },
        ]
    );
    // Across a wrap too: notices pad like messages.
    for i in 0..500u64 {
        if i % 7 == 0 {
            w.append_lost(i, i);
        } else {
            w.append(i, &payload_for(i, 40)).unwrap();
        }
        let got = poll_all(&mut r, 4);
        assert_eq!(got.len(), 1);
        match &got[0] {
            Event::Lost { sender, count } => assert_eq!((*sender, *count), (i, i)),
            Event::Message { payload, .. } => assert_eq!(payload, &payload_for(i, 40)),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn views_snapshots_and_requests_take_their_place_among_messages() {
    let region = log(4096);
    let mut w = writer(&region);
    let mut r = reader(&region);
    assert_eq!(w.append_installed(9, b"state").unwrap(), 0);
    w.append(1, b"m1").unwrap();
    w.append_view(12, &[256, 512, 768], &[768], &[(1024, 2), (1280, 77)])
        .unwrap();
    w.append(2, b"m2").unwrap();
    w.append_snapshot_request(14);
    w.append(3, b"m3").unwrap();
    // The batch ends at the snapshot request: the application answers it before it sees
    // anything after it.
    let first = poll_all(&mut r, 16);
    assert_eq!(
        first,
        vec![
            Event::Installed {
                position: 9,
                snapshot: b"state".to_vec()
            },
            Event::Message {
                seq: 1,
                sender: 1,
                payload: b"m1".to_vec()
            },
            Event::View {
                id: 12,
                members: vec![256, 512, 768],
                joined: vec![768],
                left: vec![(1024, LeftReason::Suspected), (1280, LeftReason::Other(77))],
            },
            Event::Message {
                seq: 3,
                sender: 2,
                payload: b"m2".to_vec()
            },
            Event::SnapshotRequest { position: 14 },
        ]
    );
    assert_eq!(
        poll_all(&mut r, 16),
        vec![Event::Message {
            seq: 5,
            sender: 3,
            payload: b"m3".to_vec()
        }]
    );
    // An empty view and an empty snapshot are fine; one too large for a record is refused.
    w.append_view(0, &[], &[], &[]).unwrap();
    w.append_installed(0, &[]).unwrap();
    assert!(matches!(
        w.append_installed(0, &[0; 4096]),
        Err(OfferError::TooLarge { .. })
    ));
    assert!(matches!(
        w.append_view(0, &[1; 600], &[], &[]),
        Err(OfferError::TooLarge { .. })
    ));
    assert_eq!(poll_all(&mut r, 16).len(), 2);
}

#[test]
fn confchg_records_read_back_among_messages() {
    let region = log(4096);
    let mut w = writer(&region);
    let mut r = reader(&region);
    let p = |node, pid, reason, session| CpgEntry {
        node,
        pid,
        reason,
        session,
    };
    let members = [p(1, 100, 0, 7), p(2, 200, 0, 9)];
    w.append(1, b"m1").unwrap();
    w.append_confchg(17, &[1, 2, 3], &members, &[p(2, 200, 1, 9)], &[p(3, 300, 5, 4)])
        .unwrap();
    w.append(2, b"m2").unwrap();
    let got = poll_all(&mut r, 16);
    assert_eq!(
        got[1],
        Event::Confchg {
            ring_id: 17,
            ring: vec![1, 2, 3],
            members: members.to_vec(),
            joined: vec![p(2, 200, 1, 9)],
            left: vec![p(3, 300, 5, 4)],
        }
    );
    assert_eq!(got.len(), 3);
    // Empty lists are fine; one too large for a record is refused.
    w.append_confchg(0, &[], &[], &[], &[]).unwrap();
    assert!(matches!(
        w.append_confchg(0, &[], &[p(0, 0, 0, 0); 300], &[], &[]),
        Err(OfferError::TooLarge { .. })
    ));
    assert_eq!(poll_all(&mut r, 16).len(), 1);
}

#[test]
fn malformed_ordered_records_are_errors() {
    let d = 4096;
    // (what the writer appends, how it is damaged, the error's text)
    type Damage = Box<dyn Fn(&mut [u8])>;
    let cases: Vec<(u16, Damage, &str)> = vec![
        // A view whose member count claims more than its length holds.
        (
            FLAG_VIEW,
            Box::new(move |b| b[d + 32 + 8..d + 32 + 12].copy_from_slice(&3u32.to_le_bytes())),
            "view counts",
        ),
        // A count whose byte length overflows.
        (
            FLAG_VIEW,
            Box::new(move |b| b[d + 32 + 16..d + 32 + 20].copy_from_slice(&u32::MAX.to_le_bytes())),
            "view counts",
        ),
        // A lost notice, an installed snapshot or a request of the wrong length.
        (
            FLAG_LOST,
            Box::new(move |b| b[d + 16..d + 20].copy_from_slice(&4u32.to_le_bytes())),
            "8 bytes",
        ),
        (
            FLAG_INSTALLED,
            Box::new(move |b| b[d + 16..d + 20].copy_from_slice(&7u32.to_le_bytes())),
            "position",
        ),
        (
            FLAG_SNAPSHOT_REQUEST,
            Box::new(move |b| b[d + 16..d + 20].copy_from_slice(&16u32.to_le_bytes())),
            "8 bytes",
        ),
        // Flags no writer sets, or two kinds at once.
        (0, Box::new(move |b| b[d + 22] = 32), "unknown flags"),
        // A confchg whose left count claims more than its length holds.
        (
            FLAG_CONFCHG,
            Box::new(move |b| b[d + 32 + 20..d + 32 + 24].copy_from_slice(&2u32.to_le_bytes())),
            "confchg counts",
        ),
        (FLAG_VIEW, Box::new(move |b| b[d + 22] = 6), "unknown flags"),
    ];
    for (kind, damage, text) in cases {
        let mut region = log(4096);
        let mut w = writer(&region);
        let mut r = reader(&region);
        match kind {
            FLAG_VIEW => {
                w.append_view(1, &[5], &[], &[(6, 1)]).unwrap();
            }
            FLAG_LOST => {
                w.append_lost(1, 1);
            }
            FLAG_INSTALLED => {
                w.append_installed(1, b"ab").unwrap();
            }
            FLAG_SNAPSHOT_REQUEST => {
                w.append_snapshot_request(1);
            }
            FLAG_CONFCHG => {
                let e = CpgEntry {
                    node: 1,
                    pid: 2,
                    reason: 1,
                    session: 3,
                };
                w.append_confchg(4, &[1], &[e], &[e], &[]).unwrap();
            }
            _ => {
                w.append(1, &[0; 24]).unwrap();
            }
        }
        damage(region.bytes_mut());
        let err = r.poll(10, |e| panic!("delivered {e:?}")).unwrap_err();
        assert!(
            matches!(err, ReadError::BadRecord { position: 0, .. }) && err.to_string().contains(text),
            "{err}"
        );
        assert_eq!(r.poll(10, |_| {}).unwrap_err(), err, "sticky");
    }
}

proptest! {
    /// Any view the writer can encode reads back the same; any damage to its bytes is
    /// refused or reads back as some well-formed view, never a panic.
    #[test]
    fn views_round_trip_and_damage_never_panics(
        id in any::<u64>(),
        members in prop::collection::vec(any::<u32>(), 0..40),
        joined in prop::collection::vec(any::<u32>(), 0..8),
        left in prop::collection::vec((any::<u32>(), 1u32..4), 0..8),
        at in any::<usize>(),
        flip in 1u8..=255,
    ) {
        let region = log(4096);
        let mut w = writer(&region);
        let mut r = reader(&region);
        w.append_view(id, &members, &joined, &left).unwrap();
        let got = poll_all(&mut r, 4);
        let left_reasons: Vec<_> = left.iter().map(|&(n, c)| (n, LeftReason::from_code(c))).collect();
        prop_assert_eq!(got, vec![Event::View { id, members: members.clone(), joined: joined.clone(), left: left_reasons }]);
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&id.to_le_bytes());
        for n in [members.len(), joined.len(), left.len()] {
            bytes.extend_from_slice(&(n as u32).to_le_bytes());
        }
        for m in members.iter().chain(&joined) {
            bytes.extend_from_slice(&m.to_le_bytes());
        }
        for (n, c) in &left {
            bytes.extend_from_slice(&n.to_le_bytes());
            bytes.extend_from_slice(&c.to_le_bytes());
        }
        let at = at % bytes.len();
        bytes[at] ^= flip;
        if let Some(v) = ViewRecord::parse(&bytes) {
            prop_assert_eq!(VIEW_FIXED + 4 * (v.members().count() + v.joined().count()) + 8 * v.left().count(), bytes.len());
        }
        for cut in 0..bytes.len() {
            let _ = ViewRecord::parse(&bytes[..cut]).map(|v| v.members().count());
        }
    }
}

#[test]
fn a_reader_from_the_start_sees_the_whole_history_until_the_log_wraps() {
    let region = log(4096);
    let mut w = writer(&region);
    w.append_view(1, &[256], &[256], &[]).unwrap();
    w.append(1, b"first").unwrap();
    // SAFETY: the region outlives the reader.
    let (mut r, from_start) = unsafe { LogReader::attach_from_start(region.ptr(), region.len()) }.unwrap();
    assert!(from_start);
    let events = poll_all(&mut r, 16);
    assert_eq!(events.len(), 2);
    assert!(matches!(events[0], Event::View { id: 1, .. }));
    // Once the writer overwrote the beginning, a new reader starts at the tail.
    for _ in 0..200 {
        append(&mut w, 40);
    }
    // SAFETY: as above.
    let (mut late, from_start) = unsafe { LogReader::attach_from_start(region.ptr(), region.len()) }.unwrap();
    assert!(!from_start);
    assert!(poll_all(&mut late, 16).is_empty());
    // The first reader, lapped meanwhile, learns it.
    assert!(matches!(poll_all(&mut r, 1)[..], [Event::Lagged { .. }]));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// `head` moves to the first record start at or after `tail_intent - capacity`, as a
    /// model of the records' placement (padding to the ring's end, gaps skipped) says,
    /// whether the writer learned the starts as it wrote them or walks the records after a
    /// re-attach.
    #[test]
    fn head_is_the_first_record_start_past_the_floor(
        ops in prop::collection::vec(prop_oneof![
            6 => (0usize..=2016).prop_map(Some),
            6 => (0usize..=150).prop_map(Some),
            1 => Just(None),
        ], 1..400),
    ) {
        let region = log(4096);
        let mut w = writer(&region);
        let mut starts: Vec<u64> = Vec::new();
        let (mut walks, mut attaches) = (0, 0);
        for op in ops {
            let Some(len) = op else {
                walks += w.walks;
                attaches += 1;
                w = writer(&region); // re-attach: the writer knows no record starts
                continue;
            };
            let size = (HDR + align_record(len)) as u64;
            let mut start = w.log.normalize(w.tail());
            let to_end = w.log.room_to_end(start);
            if size > to_end {
                starts.push(start);
                start += to_end;
            }
            starts.push(start);
            let head_before = w.head();
            append(&mut w, len);
            let floor = w.intent.saturating_sub(w.capacity() as u64);
            let expected = if head_before < floor {
                *starts.iter().find(|&&s| s >= floor).expect("the record written is past the floor")
            } else {
                head_before
            };
            prop_assert_eq!(w.head(), expected, "floor {}", floor);
            prop_assert_eq!(w.log.head().load(Acquire), expected);
        }
        // Walks only after a re-attach, for the boundaries it had passed before (a ring's
        // worth at most): the rest come from the starts the writer noted.
        walks += w.walks;
        prop_assert!(walks <= 9 * attaches, "{} walks after {} attaches", walks, attaches);
    }
}
