use std::collections::VecDeque;

use proptest::prelude::*;

use super::*;
use crate::shm::layout::{MAX_CAPACITY, MIN_CAPACITY, RECORD_ALIGN};
use crate::shm::testutil::AlignedRegion;

fn ring(capacity: usize) -> AlignedRegion {
    let region = AlignedRegion::new(PublishRing::required_len(capacity));
    // SAFETY: a fresh, zeroed, page-aligned allocation of the required length.
    unsafe { PublishRing::init(region.ptr(), region.len(), capacity) }.expect("init");
    region
}

fn ends(region: &AlignedRegion) -> (PublishProducer, PublishConsumer) {
    // SAFETY: the region outlives both ends within each test; one producer, one consumer.
    unsafe {
        (
            PublishProducer::attach(region.ptr(), region.len()).expect("producer"),
            PublishConsumer::attach(region.ptr(), region.len()).expect("consumer"),
        )
    }
}

fn drain(consumer: &mut PublishConsumer) -> Vec<(u32, Vec<u8>)> {
    let mut out = Vec::new();
    consumer
        .poll(usize::MAX, |group, payload| out.push((group, payload.to_vec())))
        .expect("poll");
    out
}

fn pattern(tag: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (tag.wrapping_mul(31).wrapping_add(i as u64 * 7) % 251) as u8)
        .collect()
}

#[test]
fn offer_then_poll_delivers_in_order() {
    let region = ring(4096);
    let (mut producer, mut consumer) = ends(&region);
    assert!(!consumer.has_pending());
    producer.offer(7, b"hello").unwrap();
    producer.offer(8, b"").unwrap();
    producer.offer(9, &[1u8; 100]).unwrap();
    assert!(consumer.has_pending());
    let got = drain(&mut consumer);
    assert_eq!(
        got,
        vec![(7, b"hello".to_vec()), (8, vec![]), (9, vec![1u8; 100])]
    );
    assert!(!consumer.has_pending());
    assert!(producer.is_drained());
}

#[test]
fn a_refused_frame_stays_in_the_ring_until_taken() {
    let region = ring(4096);
    let (mut producer, mut consumer) = ends(&region);
    for i in 0..3u8 {
        producer.offer(1, &[i; 24]).unwrap();
    }
    // Take the first, refuse the second: the poll stops there and releases only the first.
    let mut seen = Vec::new();
    let taken = consumer
        .poll_while(10, |_, payload| {
            seen.push(payload[0]);
            payload[0] == 0
        })
        .unwrap();
    assert_eq!((taken, seen), (1, vec![0, 1]));
    assert!(consumer.has_pending() && !producer.is_drained());
    // Refused again: still there, nothing released.
    assert_eq!(consumer.poll_while(10, |_, _| false).unwrap(), 0);
    assert_eq!(drain(&mut consumer), vec![(1, vec![1; 24]), (1, vec![2; 24])]);
    assert!(producer.is_drained());
}

#[test]
fn poll_respects_limit() {
    let region = ring(4096);
    let (mut producer, mut consumer) = ends(&region);
    for i in 0..5u8 {
        producer.offer(1, &[i]).unwrap();
    }
    let mut seen = Vec::new();
    assert_eq!(consumer.poll(2, |_, p| seen.push(p[0])).unwrap(), 2);
    assert_eq!(consumer.poll(0, |_, p| seen.push(p[0])).unwrap(), 0);
    assert_eq!(consumer.poll(10, |_, p| seen.push(p[0])).unwrap(), 3);
    assert_eq!(seen, vec![0, 1, 2, 3, 4]);
}

#[test]
fn too_large_names_the_limit() {
    let region = ring(4096);
    let (mut producer, mut consumer) = ends(&region);
    let max = producer.max_payload();
    assert_eq!(max, 4096 / 2 - 8);
    assert_eq!(max, PublishRing::max_payload(4096));
    let err = producer.offer(1, &vec![0; max + 1]).unwrap_err();
    assert_eq!(err, OfferError::TooLarge { len: max + 1, max });
    assert_eq!(
        err.to_string(),
        format!("message of {} bytes exceeds the limit of {max} bytes", max + 1)
    );
    // The largest payload fits in an empty ring at any wrap point.
    for shift in [0usize, 8, 16, 2040, 2048, 4088] {
        let region = ring(4096);
        let (mut producer, mut consumer) = ends(&region);
        let mut left = shift;
        while left > 0 {
            let frame = left.min(2048);
            producer.offer(1, &vec![0; frame - 8]).unwrap();
            drain(&mut consumer);
            left -= frame;
        }
        producer.offer(2, &vec![9; max]).unwrap();
        assert_eq!(drain(&mut consumer), vec![(2, vec![9; max])]);
    }
    drain(&mut consumer);
}

#[test]
fn back_pressured_when_full_then_frees_after_poll() {
    let region = ring(4096);
    let (mut producer, mut consumer) = ends(&region);
    // 120 bytes payload -> 128-byte frames: exactly 32 fit.
    for i in 0..32u8 {
        producer.offer(1, &[i; 120]).unwrap();
    }
    assert_eq!(producer.offer(1, &[0]), Err(OfferError::BackPressured));
    assert_eq!(producer.offer(1, &[]), Err(OfferError::BackPressured));
    assert_eq!(consumer.poll(1, |_, p| assert_eq!(p, &[0; 120])).unwrap(), 1);
    producer.offer(1, &[99; 120]).unwrap();
    assert_eq!(producer.offer(1, &[]), Err(OfferError::BackPressured));
    let got = drain(&mut consumer);
    assert_eq!(got.len(), 32);
    assert_eq!(got.last().unwrap().1, vec![99; 120]);
}

#[test]
fn wrap_inserts_padding_and_keeps_content() {
    let region = ring(4096);
    let (mut producer, mut consumer) = ends(&region);
    // 1000-byte payloads (1008-byte frames): the 5th wraps with 64 bytes of padding.
    for round in 0..20u64 {
        producer.offer(round as u32, &pattern(round, 1000)).unwrap();
        producer
            .offer(round as u32 + 1000, &pattern(round + 1000, 1000))
            .unwrap();
        let got = drain(&mut consumer);
        assert_eq!(
            got,
            vec![
                (round as u32, pattern(round, 1000)),
                (round as u32 + 1000, pattern(round + 1000, 1000))
            ]
        );
    }
}

#[test]
fn padding_of_header_only_at_the_very_end() {
    let region = ring(4096);
    let (mut producer, mut consumer) = ends(&region);
    // Fill up to 4088: one 8-byte slot left; the next frame pads with a bare header.
    producer.offer(1, &vec![0; 4088 - 8]).unwrap_err(); // too large for this ring
    producer.offer(1, &vec![1; 2040]).unwrap(); // 2048
    producer.offer(1, &vec![2; 2032]).unwrap(); // 2040 -> tail 4088
    drain(&mut consumer);
    producer.offer(3, b"x").unwrap();
    assert_eq!(drain(&mut consumer), vec![(3, b"x".to_vec())]);
}

#[test]
fn dropped_claim_publishes_nothing() {
    let region = ring(4096);
    let (mut producer, mut consumer) = ends(&region);
    {
        let mut claim = producer.try_claim(5, 10).unwrap();
        claim.buf().copy_from_slice(b"abandoned!");
    }
    assert!(!consumer.has_pending());
    let mut claim = producer.try_claim(6, 3).unwrap();
    assert_eq!(claim.len(), 3);
    claim.buf().copy_from_slice(b"yes");
    claim.commit();
    assert_eq!(drain(&mut consumer), vec![(6, b"yes".to_vec())]);
}

#[test]
fn init_validates_capacity_and_len() {
    let region = AlignedRegion::new(PublishRing::required_len(8192));
    for capacity in [0, 100, 2048, 4096 + 8, 12288, MAX_CAPACITY * 2] {
        // SAFETY: valid region; init fails before writing on a bad capacity.
        let err = unsafe { PublishRing::init(region.ptr(), region.len(), capacity) }.unwrap_err();
        assert!(
            matches!(err, LayoutError::BadCapacity { .. }),
            "{capacity}: {err}"
        );
    }
    // SAFETY: as above.
    let err = unsafe { PublishRing::init(region.ptr(), 4096 + 4096 - 1, 4096) }.unwrap_err();
    assert_eq!(
        err,
        LayoutError::TooSmall {
            len: 8191,
            needed: 8192
        }
    );
    // SAFETY: as above (the misaligned pointer is rejected before use).
    let err = unsafe { PublishRing::init(region.ptr().add(8), 8192, 4096) }.unwrap_err();
    assert!(matches!(err, LayoutError::Misaligned { .. }));
    assert_eq!(PublishRing::required_len(4096), 8192);
    assert_eq!(MIN_CAPACITY, 4096);
}

#[test]
fn attach_validates_header() {
    let mut region = ring(4096);
    // A valid ring attaches.
    let _ = ends(&region);
    let fresh = region.bytes_mut()[..32].to_vec();
    let attach = |r: &AlignedRegion, len: usize| {
        // SAFETY: valid allocation of at least `len` bytes.
        unsafe { PublishConsumer::attach(r.ptr(), len) }.err()
    };
    region.bytes_mut()[0] = b'X';
    assert!(matches!(
        attach(&region, 8192),
        Some(LayoutError::BadMagic { .. })
    ));
    region.bytes_mut()[..32].copy_from_slice(&fresh);
    region.bytes_mut()[8] = 2;
    assert_eq!(
        attach(&region, 8192),
        Some(LayoutError::BadVersion {
            found: 2,
            expected: 1
        })
    );
    region.bytes_mut()[..32].copy_from_slice(&fresh);
    region.bytes_mut()[16..24].copy_from_slice(&8192u64.to_le_bytes());
    assert!(matches!(
        attach(&region, 8192),
        Some(LayoutError::BadMaxPayload { .. })
    ));
    region.bytes_mut()[24..32].copy_from_slice(&(8192u64 / 2 - 8).to_le_bytes());
    assert_eq!(
        attach(&region, 8192),
        Some(LayoutError::TooSmall {
            len: 8192,
            needed: 12288
        })
    );
    region.bytes_mut()[..32].copy_from_slice(&fresh);
    region.bytes_mut()[16..24].copy_from_slice(&3000u64.to_le_bytes());
    assert!(matches!(
        attach(&region, 8192),
        Some(LayoutError::BadCapacity { .. })
    ));
    region.bytes_mut()[..32].copy_from_slice(&fresh);
    assert_eq!(
        attach(&region, 100),
        Some(LayoutError::TooSmall {
            len: 100,
            needed: 8192
        })
    );
    // Inconsistent indices.
    region.bytes_mut()[128..136].copy_from_slice(&5u64.to_le_bytes());
    assert!(matches!(
        attach(&region, 8192),
        Some(LayoutError::BadIndex { .. })
    ));
    region.bytes_mut()[128..136].copy_from_slice(&8192u64.to_le_bytes());
    assert!(matches!(
        attach(&region, 8192),
        Some(LayoutError::BadIndex { .. })
    ));
    region.bytes_mut()[128..136].copy_from_slice(&0u64.to_le_bytes());
    assert_eq!(attach(&region, 8192), None);
}

#[test]
fn malformed_frames_end_the_session() {
    type Corrupt = Box<dyn Fn(&mut [u8])>;
    type Expect = fn(&FrameError) -> bool;
    let cases: Vec<(&str, Corrupt, Expect)> = vec![
        (
            "len over max",
            Box::new(|b| b[4096..4100].copy_from_slice(&5000u32.to_le_bytes())),
            |e| {
                matches!(
                    e,
                    FrameError::TooLarge {
                        position: 0,
                        len: 5000,
                        max: 2040
                    }
                )
            },
        ),
        (
            "frame past tail",
            Box::new(|b| b[4096..4100].copy_from_slice(&64u32.to_le_bytes())),
            |e| {
                matches!(
                    e,
                    FrameError::PastTail {
                        position: 0,
                        size: 72,
                        tail: 16
                    }
                )
            },
        ),
        (
            "padding not to the end",
            Box::new(|b| b[4096..4104].copy_from_slice(&[0, 0, 0, 0, 255, 255, 255, 255])),
            |e| {
                matches!(
                    e,
                    FrameError::BadPadding {
                        position: 0,
                        len: 0,
                        expected: 4088
                    }
                )
            },
        ),
        (
            "tail misaligned",
            Box::new(|b| b[128..136].copy_from_slice(&20u64.to_le_bytes())),
            |e| matches!(e, FrameError::BadTail { head: 0, tail: 20 }),
        ),
        (
            "tail a ring ahead",
            Box::new(|b| b[128..136].copy_from_slice(&8192u64.to_le_bytes())),
            |e| matches!(e, FrameError::BadTail { head: 0, tail: 8192 }),
        ),
    ];
    for (what, corrupt, expect) in cases {
        let mut region = ring(4096);
        let (mut producer, mut consumer) = ends(&region);
        producer.offer(1, b"12345678").unwrap(); // one 16-byte frame
        corrupt(region.bytes_mut());
        let err = consumer
            .poll(10, |_, _| panic!("{what}: delivered a frame"))
            .unwrap_err();
        assert!(expect(&err), "{what}: {err:?}");
        assert_eq!(
            consumer.poll(10, |_, _| {}).unwrap_err(),
            err,
            "{what}: not sticky"
        );
    }
}

/// The frame-straddle check needs a frame near the end: built by hand.
#[test]
fn straddling_frame_is_rejected() {
    let mut region = ring(4096);
    {
        let (mut producer, mut consumer) = ends(&region);
        producer.offer(1, &vec![0; 2040]).unwrap();
        producer.offer(1, &vec![0; 2024]).unwrap(); // tail 4080
        drain(&mut consumer);
        producer.offer(1, &[0; 24]).unwrap(); // pads 16 at 4080, frame at 4096
    }
    // Turn the padding at 4080 into a 24-byte data frame straddling the end.
    region.bytes_mut()[4096 + 4080..4096 + 4088].copy_from_slice(&[24, 0, 0, 0, 1, 0, 0, 0]);
    region.bytes_mut()[256..264].copy_from_slice(&4080u64.to_le_bytes());
    // SAFETY: valid region.
    let mut consumer = unsafe { PublishConsumer::attach(region.ptr(), region.len()) }.unwrap();
    let err = consumer.poll(10, |_, _| panic!("delivered")).unwrap_err();
    assert_eq!(
        err,
        FrameError::Straddles {
            position: 4080,
            size: 32
        }
    );
}

#[test]
fn threads_stream_many_frames() {
    let region = ring(4096);
    let (mut producer, mut consumer) = ends(&region);
    const N: u64 = 200_000;
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut i = 0u64;
            while i < N {
                let len = (i * 13 % 300) as usize;
                let mut payload = pattern(i, len);
                if len >= 8 {
                    payload[..8].copy_from_slice(&i.to_le_bytes());
                }
                match producer.offer((i % 7) as u32, &payload) {
                    Ok(()) => i += 1,
                    Err(OfferError::BackPressured) => std::hint::spin_loop(),
                    Err(e) => panic!("{e}"),
                }
            }
        });
        let mut next = 0u64;
        while next < N {
            consumer
                .poll(64, |group, payload| {
                    let len = (next * 13 % 300) as usize;
                    assert_eq!(group, (next % 7) as u32);
                    assert_eq!(payload.len(), len);
                    let mut expect = pattern(next, len);
                    if len >= 8 {
                        expect[..8].copy_from_slice(&next.to_le_bytes());
                    }
                    assert_eq!(payload, &expect[..], "frame {next}");
                    next += 1;
                })
                .unwrap();
        }
    });
}

#[derive(Debug, Clone)]
enum Op {
    Offer { len: usize, abort: bool },
    Poll { limit: usize },
}

fn op(max: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..=max, any::<bool>()).prop_map(|(len, a)| Op::Offer { len, abort: a && len % 5 == 0 }),
        1 => (0usize..6).prop_map(|limit| Op::Poll { limit }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Arbitrary offers and polls across many wrap-arounds keep FIFO order and content,
    /// and back pressure happens exactly when the frame (plus padding) does not fit.
    #[test]
    fn fifo_and_content_across_wraps(capacity_log in 12u32..14, ops in prop::collection::vec(op(4088), 1..400)) {
        let capacity = 1usize << capacity_log;
        let max = PublishRing::max_payload(capacity);
        let region = ring(capacity);
        let (mut producer, mut consumer) = ends(&region);
        // Model: frames in flight with their positions.
        let mut inflight: VecDeque<(u64, u64, u32, Vec<u8>)> = VecDeque::new(); // (start, end, group, payload)
        let (mut tail, mut head) = (0u64, 0u64);
        let mut tag = 0u64;
        for op in ops {
            match op {
                Op::Offer { len, abort } => {
                    tag += 1;
                    let payload = pattern(tag, len);
                    let group = (tag % 1000) as u32;
                    let result = producer.try_claim(group, len);
                    if len > max {
                        prop_assert_eq!(result.err(), Some(OfferError::TooLarge { len, max }));
                        continue;
                    }
                    let frame = (8 + len.div_ceil(RECORD_ALIGN) * RECORD_ALIGN) as u64;
                    let to_end = capacity as u64 - tail % capacity as u64;
                    let needed = if frame > to_end { to_end + frame } else { frame };
                    let fits = needed <= capacity as u64 - (tail - head);
                    match result {
                        Ok(mut claim) => {
                            prop_assert!(fits, "claimed {} bytes with {} free", needed, capacity as u64 - (tail - head));
                            claim.buf().copy_from_slice(&payload);
                            if !abort {
                                claim.commit();
                                inflight.push_back((tail, tail + needed, group, payload));
                                tail += needed;
                            }
                        }
                        Err(e) => {
                            prop_assert_eq!(e, OfferError::BackPressured);
                            prop_assert!(!fits, "back pressured with room");
                        }
                    }
                }
                Op::Poll { limit } => {
                    let mut got = Vec::new();
                    let n = consumer.poll(limit, |g, p| got.push((g, p.to_vec()))).unwrap();
                    prop_assert_eq!(n, got.len());
                    prop_assert_eq!(n, limit.min(inflight.len()));
                    for (g, p) in got {
                        let (_, end, group, payload) = inflight.pop_front().unwrap();
                        prop_assert_eq!(g, group);
                        prop_assert_eq!(p, payload);
                        head = end;
                    }
                    prop_assert_eq!(consumer.has_pending(), !inflight.is_empty());
                }
            }
        }
    }

    /// A consumer over arbitrary bytes (header kept valid so attach succeeds, or not)
    /// returns errors and never panics.
    #[test]
    fn garbage_never_panics(
        keep_header in any::<bool>(),
        indices in prop::collection::vec(any::<u8>(), 256),
        data in prop::collection::vec(any::<u8>(), 0..4096),
        tails in prop::collection::vec(any::<u64>(), 1..4),
        limits in prop::collection::vec(0usize..50, 1..4),
    ) {
        let mut region = ring(4096);
        let bytes = region.bytes_mut();
        if !keep_header {
            bytes[..32].copy_from_slice(&indices[..32]);
        }
        bytes[128..384].copy_from_slice(&indices);
        bytes[4096..4096 + data.len()].copy_from_slice(&data);
        for (t, limit) in tails.iter().zip(limits.iter().cycle()) {
            // SAFETY: valid region; no other object uses it.
            if let Ok(mut consumer) = unsafe { PublishConsumer::attach(region.ptr(), region.len()) } {
                let mut total = 0usize;
                let _ = consumer.poll(*limit, |_, p| total += p.len());
                let _ = consumer.has_pending();
                let _ = consumer.poll(*limit, |_, p| total += p.len());
            }
            // Move the tail somewhere else (small values are the interesting ones).
            region.bytes_mut()[128..136].copy_from_slice(&(t % 9000).to_le_bytes());
        }
    }
}
