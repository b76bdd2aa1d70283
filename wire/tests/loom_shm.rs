//! Loom models of the shared-memory protocols, run over `LoomRegion`s (loom atomics) with
//! the real ring code of `tutti_wire::shm`. Run with:
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test -p tutti-wire --release --test loom_shm
//! ```
//!
//! Preemptions are bounded to 2 unless `LOOM_MAX_PREEMPTIONS` says otherwise (3 takes
//! about 15 s for all four models).

#![cfg(loom)]

use loom::sync::atomic::AtomicBool;
use loom::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use loom::sync::Arc;
use loom::thread;

use tutti_wire::shm::*;

const PUB_CAPACITY: usize = 64;
const LOG_CAPACITY: usize = 128;

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    builder.check(f);
}

fn publish_region() -> Arc<LoomRegion> {
    let mem = Arc::new(LoomRegion::new(PublishRing::required_len(PUB_CAPACITY)));
    // SAFETY: a fresh LoomRegion of the required length, kept alive by the Arc clones
    // that every thread holds while it uses the ring.
    unsafe { PublishRing::init(mem.as_ptr(), mem.len(), PUB_CAPACITY) }.unwrap();
    mem
}

fn log_region() -> Arc<LoomRegion> {
    let mem = Arc::new(LoomRegion::new(DeliveryLog::required_len(LOG_CAPACITY)));
    // SAFETY: as for publish_region.
    unsafe { DeliveryLog::init(mem.as_ptr(), mem.len(), LOG_CAPACITY) }.unwrap();
    mem
}

fn payload(tag: u8, len: usize) -> Vec<u8> {
    (0..len as u8)
        .map(|i| tag.wrapping_mul(16).wrapping_add(i))
        .collect()
}

/// (a) SPSC publish ring: three 16-byte frames (24-byte frames in a 64-byte ring), the
/// third wrapping with padding and needing the space of the first back. The consumer sees
/// them intact and in order.
#[test]
fn loom_publish_ring_wraps_in_order() {
    model(|| {
        let mem = publish_region();
        // SAFETY: `mem` outlives both ends (each thread holds a clone).
        let mut producer = unsafe { PublishProducer::attach(mem.as_ptr(), mem.len()) }.unwrap();
        // SAFETY: as above.
        let mut consumer = unsafe { PublishConsumer::attach(mem.as_ptr(), mem.len()) }.unwrap();
        let keep = mem.clone();
        let t = thread::spawn(move || {
            let _keep = keep;
            for tag in 1..=3u8 {
                loop {
                    match producer.offer(u32::from(tag), &payload(tag, 16)) {
                        Ok(()) => break,
                        Err(OfferError::BackPressured) => thread::yield_now(),
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        });
        let mut next = 1u8;
        while next <= 3 {
            let n = consumer
                .poll(3, |group, bytes| {
                    assert_eq!(group, u32::from(next));
                    assert_eq!(bytes, &payload(next, 16)[..], "frame {next}");
                    next += 1;
                })
                .unwrap();
            if n == 0 {
                thread::yield_now();
            }
        }
        t.join().unwrap();
        assert!(!consumer.has_pending());
    });
}

/// (b) The log writer laps a reader: 8-byte records (40 bytes) in a 128-byte log; the
/// writer appends four (the fourth overwrites the first) while the reader polls. The reader
/// never returns overwritten bytes as a Message; a gap is always reported as Lagged with the
/// exact count.
#[test]
fn loom_log_lapped_reader_never_sees_torn_records() {
    model(|| {
        let mem = log_region();
        // SAFETY: `mem` outlives writer and reader (each thread holds a clone).
        let mut writer = unsafe { LogWriter::attach(mem.as_ptr(), mem.len()) }.unwrap();
        // SAFETY: as above.
        let mut reader = unsafe { LogReader::attach(mem.as_ptr(), mem.len()) }.unwrap();
        let keep = mem.clone();
        let t = thread::spawn(move || {
            let _keep = keep;
            for seq in 0..4u64 {
                assert_eq!(writer.append(seq + 100, &payload(seq as u8, 8)), Ok(seq));
            }
        });
        let mut expected = 0u64;
        let mut check = |event: LogEvent<'_>| match event {
            LogEvent::Message {
                seq,
                sender,
                payload: bytes,
            } => {
                assert_eq!(seq, expected, "order");
                assert_eq!(sender, seq + 100, "torn sender");
                assert_eq!(bytes, &payload(seq as u8, 8)[..], "torn payload");
                expected += 1;
            }
            LogEvent::Lagged { missed } => {
                assert!(missed > 0);
                expected += missed;
            }
            other => panic!("only messages were written: {other:?}"),
        };
        for _ in 0..2 {
            reader.poll(2, &mut check).unwrap();
        }
        t.join().unwrap();
        reader.poll(8, &mut check).unwrap();
        assert_eq!(expected, 4, "every record delivered or counted as missed");
        assert!(!reader.has_data());
    });
}

/// (c) Shard doorbell: a client commit racing with the shard parking. Either the shard's
/// last check sees the frame, or the client sees `parked` and rings the eventfd.
#[test]
fn loom_shard_doorbell_never_loses_a_wakeup() {
    model(|| {
        let mem = publish_region();
        let bell_mem = Arc::new(LoomRegion::new(DOORBELL_LEN));
        // SAFETY: fresh LoomRegions, kept alive by the clones the threads hold.
        let (mut producer, consumer, shard_bell, client_bell) = unsafe {
            ShardDoorbell::init(bell_mem.as_ptr(), bell_mem.len()).unwrap();
            (
                PublishProducer::attach(mem.as_ptr(), mem.len()).unwrap(),
                PublishConsumer::attach(mem.as_ptr(), mem.len()).unwrap(),
                ShardDoorbell::attach(bell_mem.as_ptr(), bell_mem.len()).unwrap(),
                ShardDoorbell::attach(bell_mem.as_ptr(), bell_mem.len()).unwrap(),
            )
        };
        let rang = Arc::new(AtomicBool::new(false));
        let (keep, keep_bell, rang2) = (mem.clone(), bell_mem.clone(), rang.clone());
        let client = thread::spawn(move || {
            let (_keep, _keep_bell) = (keep, keep_bell);
            producer.offer(1, b"wake").unwrap();
            if client_bell.wants_ring(false) {
                rang2.store(true, Relaxed); // stands for write(eventfd)
            }
        });
        // Shard: nothing seen yet; park, then check the rings once more.
        let mut saw = consumer.has_pending();
        if !saw {
            shard_bell.set_parked(true);
            saw = consumer.has_pending();
        }
        client.join().unwrap();
        let parked_blind = shard_bell.is_parked() && !saw;
        assert!(
            !parked_blind || rang.load(Relaxed),
            "shard parked with a frame unseen and no wake-up"
        );
    });
}

/// (d) Group doorbell: a subscriber going to sleep racing with an append. Either its
/// re-check sees the record, or the futex word it waits on has been bumped (so FUTEX_WAIT
/// returns at once or FUTEX_WAKE reaches it).
#[test]
fn loom_group_doorbell_never_loses_a_wakeup() {
    model(|| {
        let mem = log_region();
        let bell_mem = Arc::new(LoomRegion::new(DOORBELL_LEN));
        // SAFETY: fresh LoomRegions, kept alive by the clones the threads hold.
        let (mut writer, reader, shard_bell, member_bell) = unsafe {
            GroupDoorbell::init(bell_mem.as_ptr(), bell_mem.len()).unwrap();
            (
                LogWriter::attach(mem.as_ptr(), mem.len()).unwrap(),
                LogReader::attach(mem.as_ptr(), mem.len()).unwrap(),
                GroupDoorbell::attach(bell_mem.as_ptr(), bell_mem.len()).unwrap(),
                GroupDoorbell::attach(bell_mem.as_ptr(), bell_mem.len()).unwrap(),
            )
        };
        let (keep, keep_bell) = (mem.clone(), bell_mem.clone());
        let shard = thread::spawn(move || {
            let (_keep, _keep_bell) = (keep, keep_bell);
            writer.append(7, b"x").unwrap();
            if shard_bell.waiters() > 0 {
                shard_bell.bump(); // then FUTEX_WAKE
            }
        });
        // Subscriber about to sleep.
        member_bell.add_waiter();
        let v = member_bell.futex_value();
        let sleeps = !reader.has_data();
        shard.join().unwrap();
        if sleeps {
            assert_ne!(
                member_bell.futex_value(),
                v,
                "subscriber sleeps on an unchanged futex with a record unseen"
            );
        }
        member_bell.remove_waiter();
    });
}

/// (e) Watch word (a subscriber's descriptor, `docs/internals.md`, "Descriptors"): a
/// reader that reads what is there, arms at its position and re-checks, racing with the
/// shard's append and claim. No wake-up is lost (a reader left armed with a record past
/// its position was sent one), and none is spurious (no send for a record the reader read
/// before it armed; a send the reader saw while disarming happened before its drain). A
/// reader that finds the word claimed sleeps until the shard's `fired` clears the sleeper
/// word (never for ever), unless its `recv` already took the shard's send: then it takes
/// the word back, reads, and arms again, which the shard's late `fired` must leave alone.
#[test]
fn loom_watch_neither_loses_nor_invents_a_wakeup() {
    model(|| {
        let mem = log_region();
        let page = Arc::new(LoomRegion::new(WATCH_LEN));
        // SAFETY: fresh LoomRegions, kept alive by the clones the threads hold.
        let (mut writer, mut reader, shard_watch, reader_watch) = unsafe {
            Watch::init(page.as_ptr(), page.len()).unwrap();
            (
                LogWriter::attach(mem.as_ptr(), mem.len()).unwrap(),
                LogReader::attach(mem.as_ptr(), mem.len()).unwrap(),
                Watch::attach(page.as_ptr(), page.len()).unwrap(),
                Watch::attach(page.as_ptr(), page.len()).unwrap(),
            )
        };
        let sent = Arc::new(AtomicBool::new(false));
        let (keep, keep_page, shard_sent) = (mem.clone(), page.clone(), sent.clone());
        let shard = thread::spawn(move || {
            let (_keep, _keep_page) = (keep, keep_page);
            writer.append(7, b"x").unwrap();
            if shard_watch.claim(writer.end()) {
                shard_sent.store(true, Release); // the send
                if shard_watch.fired() {
                    // The futex wake: a sleeper was announced, so it was cleared.
                    assert_eq!(shard_watch.sleeper().load(Relaxed), 0);
                }
            }
        });
        let mut read = reader.poll(1, |_| {}).unwrap();
        reader_watch.arm(reader.position());
        let mut armed = true;
        let mut drained_send = false;
        let mut took_claim = false;
        if reader.has_data() {
            loop {
                match reader_watch.disarm() {
                    Disarm::Quiet => break,
                    Disarm::Fired => {
                        drained_send = sent.load(Acquire);
                        assert!(drained_send, "the word says fired, the send is not there");
                        break;
                    }
                    Disarm::Claimed if sent.load(Acquire) => {
                        // The `recv` took the shard's wake-up (the socket orders it after
                        // the send): the reader takes the word back and reads on.
                        drained_send = true;
                        took_claim = true;
                        reader_watch.take_claim();
                        break;
                    }
                    Disarm::Claimed => {
                        // Announce, then sleep while the word stays claimed: the futex
                        // wait (expected 1) as a wait for the shard to clear the sleeper.
                        // A lost wake-up would spin here for ever.
                        if reader_watch.sleep_if_claimed() == Disarm::Claimed {
                            while reader_watch.sleeper().load(Acquire) == 1 {
                                thread::yield_now();
                            }
                        }
                        reader_watch.slept();
                    }
                }
            }
            armed = false;
            read += reader.poll(1, |_| {}).unwrap();
        }
        if took_claim {
            // Drained at the record's end, the reader waits again; the shard's `fired`,
            // still to come, must not undo this arming.
            reader_watch.arm(reader.position());
        }
        shard.join().unwrap();
        if took_claim {
            assert_eq!(
                reader_watch.disarm(),
                Disarm::Quiet,
                "the shard's late fired undid the reader's next arming"
            );
        }
        let sent = sent.load(Relaxed);
        if armed && read == 0 {
            assert!(sent, "armed before the record, and never woken");
        }
        if armed && read == 1 {
            assert!(!sent, "woken for a record read before arming");
        }
        if !armed {
            assert_eq!(read, 1);
            assert_eq!(sent, drained_send, "a send landed after the reader drained");
        }
    });
}
