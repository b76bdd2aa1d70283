//! Local isolation through a real `tuttid`: members cannot write a group's delivery log
//! (nor the shard doorbell or the counters pages) by any route a descriptor offers, each
//! client's publish ring is its own, access lists decide who may publish and subscribe
//! (with typed refusals), the control socket gets its configured mode and group, and the
//! per-user and per-client limits refuse with a typed error and a counter.

mod common;
#[path = "common/raw.rs"]
mod raw;

use common::{eventually, status_number, Daemon};
use raw::RawSession;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::Duration;
use tutti_client::{Client, Error, Event, IdleStrategy, Limit, OfferError, Right, Rights};
use tutti_sys::Mapping;
use tutti_wire::control::{Reply, Request};
use tutti_wire::shm::LogReader;

const WAIT: Duration = Duration::from_secs(30);

fn control_counter(client: &mut Client, name: &str) -> u64 {
    client
        .control_counters()
        .unwrap()
        .values()
        .find(|(n, _)| *n == name)
        .map_or(0, |(_, v)| v)
}

/// Every way a holder of `fd` could write the memory behind it; each must fail.
fn assert_unwritable(fd: &OwnedFd, what: &str) {
    let len = tutti_sys::file_len(fd).unwrap();
    // 1. A writable shared mapping.
    let e = Mapping::map(fd, len, true).expect_err(what);
    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{what}: {e}");
    // 2. A read-only mapping turned writable.
    let ro = Mapping::map(fd, len, false).unwrap();
    // SAFETY: mprotect of a mapping this test owns; failing is what is tested.
    let r = unsafe { libc::mprotect(ro.as_ptr().cast(), len, libc::PROT_READ | libc::PROT_WRITE) };
    assert_eq!(r, -1, "{what}: mprotect to writable succeeded");
    // 3. pwrite through the descriptor itself.
    let file = std::fs::File::from(fd.try_clone().unwrap());
    assert!(file.write_at(b"forged", 0).is_err(), "{what}: pwrite succeeded");
    // 4. Reopened read-write through /proc (the open may succeed; no write may).
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    if let Ok(mut reopened) = std::fs::OpenOptions::new().read(true).write(true).open(&path) {
        assert!(reopened.write_all(b"forged").is_err(), "{what}: write via /proc");
        assert!(
            reopened.write_at(b"forged", 64).is_err(),
            "{what}: pwrite via /proc"
        );
        let e = Mapping::map(&OwnedFd::from(reopened), len, true).expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{what}: {e}");
    }
    // 5. A hole punched (it would zero what readers see).
    // SAFETY: fallocate on a descriptor this test owns; failing is what is tested.
    let r = unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            4096,
        )
    };
    assert_eq!(r, -1, "{what}: hole punch succeeded");
    // 6. A forced write into the read-only mapping through /proc/self/mem.
    if let Ok(mem) = std::fs::OpenOptions::new().write(true).open("/proc/self/mem") {
        assert!(
            mem.write_at(b"forged", ro.as_ptr() as u64 + 64).is_err(),
            "{what}: write through /proc/self/mem succeeded"
        );
    }
    let seals = tutti_sys::seals(fd).unwrap();
    assert!(
        seals.future_write && seals.size && seals.sealed,
        "{what}: {seals:?}"
    );
}

#[test]
fn members_cannot_write_the_delivery_log_and_keep_reading_it() {
    let daemon = Daemon::start("log-ro", &[]);
    let mut attacker = RawSession::connect(daemon.socket()).unwrap();
    let join = attacker.join("prices", Rights::BOTH).unwrap();
    let log_fd = join.log_fd().unwrap();
    assert_unwritable(log_fd, "delivery log");
    // The shard's doorbell page (every client of the shard reads it) and the counters
    // pages are the daemon's to write too.
    assert_unwritable(&join.fds[3], "shard doorbell");
    for shard in [0, tutti_wire::control::CONTROL_COUNTERS_PAGE] {
        let (reply, fds) = attacker.call(&Request::Counters { shard }).unwrap();
        assert!(matches!(Reply::decode(&reply), Ok(Reply::CountersPage { .. })));
        assert_unwritable(&fds[0], "counters page");
    }

    // The daemon keeps writing; the attacker (through its read-only mapping) and an honest
    // member keep reading, and every record is the publisher's own.
    let len = tutti_sys::file_len(log_fd).unwrap();
    let ro = Mapping::map(log_fd, len, false).unwrap();
    // SAFETY: a live read-only mapping of the whole log, kept until the reader is dropped.
    let mut reader = unsafe { LogReader::attach(ro.as_ptr(), ro.len()) }.unwrap();
    let mut publisher = daemon.client();
    let g = publisher.join("prices").unwrap();
    let mut member = daemon.client();
    let gm = member.join_as("prices", Rights::SUBSCRIBE).unwrap();
    for i in 0..100u64 {
        publisher
            .offer_blocking(g, &i.to_le_bytes(), IdleStrategy::Backoff, WAIT)
            .unwrap();
    }
    for (who, read) in [
        (
            "attacker",
            Box::new(|got: &mut Vec<(u64, u64)>| {
                reader
                    .poll(usize::MAX, |ev| {
                        if let Event::Message { sender, payload, .. } = ev {
                            got.push((sender, u64::from_le_bytes(payload.try_into().unwrap())));
                        }
                    })
                    .unwrap();
            }) as Box<dyn FnMut(&mut Vec<(u64, u64)>)>,
        ),
        (
            "member",
            Box::new(|got: &mut Vec<(u64, u64)>| {
                member
                    .poll(gm, usize::MAX, |ev| {
                        if let Event::Message { sender, payload, .. } = ev {
                            got.push((sender, u64::from_le_bytes(payload.try_into().unwrap())));
                        }
                    })
                    .unwrap();
            }),
        ),
    ] {
        let mut read = read;
        let mut got = Vec::new();
        assert!(eventually(WAIT, || {
            read(&mut got);
            got.len() >= 100
        }));
        let expected: Vec<(u64, u64)> = (0..100).map(|i| (publisher.sender_id(), i)).collect();
        assert_eq!(got, expected, "{who}");
    }
}

#[test]
fn each_publish_ring_is_its_clients_own_and_apart_from_the_log() {
    let daemon = Daemon::start("ring-own", &[]);
    let mut a = RawSession::connect(daemon.socket()).unwrap();
    let mut b = RawSession::connect(daemon.socket()).unwrap();
    let ja = a.join("shared", Rights::BOTH).unwrap();
    let jb = b.join("shared", Rights::BOTH).unwrap();
    let ino = |fd: &OwnedFd| {
        std::fs::File::from(fd.try_clone().unwrap())
            .metadata()
            .unwrap()
            .ino()
    };
    let (ring_a, ring_b) = (ja.ring_fd().unwrap(), jb.ring_fd().unwrap());
    let (log_a, log_b) = (ja.log_fd().unwrap(), jb.log_fd().unwrap());
    assert_eq!(ino(log_a), ino(log_b), "one delivery log per group");
    assert_ne!(ino(ring_a), ino(ring_b), "a publish ring per client");
    assert_ne!(ino(ring_a), ino(log_a), "the ring is not the log");
    assert!(
        jb.fds.iter().all(|fd| ino(fd) != ino(ring_a)),
        "b was never sent a's ring"
    );
    // The ring is writable by its client (not sealed read-only), but its size is fixed.
    let seals = tutti_sys::seals(ring_a).unwrap();
    assert!(!seals.future_write && seals.size && seals.sealed, "{seals:?}");
    // A publish-only join maps no log at all.
    let mut c = RawSession::connect(daemon.socket()).unwrap();
    let jc = c.join("shared", Rights::PUBLISH).unwrap();
    assert!(jc.log_fd().is_none());
    assert_eq!(jc.fds.len(), 3, "ring, shard doorbell and eventfd only");
}

#[test]
fn access_lists_decide_who_publishes_and_who_subscribes() {
    let (me, my_gid) = tutti_sys::effective_ids();
    let other = me.wrapping_add(12_345);
    let dir = common::temp_dir("access-cfg");
    let config = dir.join("tuttid.toml");
    let write_config = |secret_publishers: &str| {
        std::fs::write(
            &config,
            format!(
                "[[access]]\ngroup = \"secret.*\"\npublish = [{secret_publishers}]\nsubscribe = [\"uid:{me}\"]\n\
                 [[access]]\ngroup = \"ops\"\npublish = [\"gid:{my_gid}\"]\nsubscribe = [\"gid:{my_gid}\"]\n\
                 [[access]]\ngroup = \"closed\"\n"
            ),
        )
        .unwrap();
    };
    write_config(&format!("\"uid:{other}\""));
    let daemon = Daemon::start("access", &["--config", config.to_str().unwrap()]);
    let mut c = daemon.client();

    let e = c.join("secret.orders").unwrap_err();
    match &e {
        Error::PermissionDenied {
            uid,
            right,
            group,
            rule,
        } => assert_eq!(
            (*uid, *right, group.as_str(), rule.as_str()),
            (me, Right::Publish, "secret.orders", "secret.*")
        ),
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    assert!(
        e.to_string()
            .contains(&format!("uid {me} may not publish group \"secret.orders\"")),
        "{e}"
    );
    // Subscribing alone is allowed; publishing to that membership is refused locally.
    let s = c.join_as("secret.orders", Rights::SUBSCRIBE).unwrap();
    assert_eq!(c.offer(s, b"x"), Err(OfferError::NotPublisher));
    // A gid entry admits members of the group.
    c.join("ops").unwrap();
    // A rule with empty lists admits nobody, root included.
    let e = c.join_as("closed", Rights::SUBSCRIBE).unwrap_err();
    assert!(
        matches!(
            e,
            Error::PermissionDenied {
                right: Right::Subscribe,
                ..
            }
        ),
        "{e:?}"
    );
    // A group no rule names is open; a publish-only member cannot poll.
    let p = c.join_as("open", Rights::PUBLISH).unwrap();
    assert!(matches!(c.poll(p, 1, |_| {}), Err(Error::NotSubscribed)));
    let mut reader = daemon.client();
    let r = reader.join_as("open", Rights::SUBSCRIBE).unwrap();
    c.offer(p, b"published without reading").unwrap();
    let mut got = Vec::new();
    assert!(eventually(WAIT, || {
        reader
            .poll(r, 16, |ev| {
                if let Event::Message { payload, .. } = ev {
                    got.push(payload.to_vec());
                }
            })
            .unwrap();
        !got.is_empty()
    }));
    assert_eq!(got, vec![b"published without reading".to_vec()]);
    assert_eq!(control_counter(&mut c, "denied_publish"), 1);
    assert_eq!(control_counter(&mut c, "denied_subscribe"), 1);

    // SIGHUP applies a new list to the joins that follow.
    write_config(&format!("\"uid:{me}\""));
    daemon.signal(libc::SIGHUP);
    assert!(
        eventually(WAIT, || c.join("secret.fills").is_ok()),
        "{}",
        daemon.log()
    );
}

#[test]
fn the_control_socket_gets_the_configured_mode_and_group() {
    let (_, my_gid) = tutti_sys::effective_ids();
    let dir = common::temp_dir("sockmode-cfg");
    let config = dir.join("tuttid.toml");
    std::fs::write(
        &config,
        format!("socket_mode = \"0600\"\nsocket_group = \"{my_gid}\"\n"),
    )
    .unwrap();
    let daemon = Daemon::start("sockmode", &["--config", config.to_str().unwrap()]);
    let meta = std::fs::metadata(daemon.socket()).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(meta.gid(), my_gid);

    std::fs::write(&config, "socket_group = \"no-such-group-for-tutti\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tuttid"))
        .arg("--check-config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("socket_group"));
}

#[test]
fn memory_and_membership_limits_refuse_with_a_typed_error_and_a_counter() {
    // One unit = one 64 KiB ring or log plus its 4 KiB header page.
    let unit = 4096 + 65536;
    let dir = common::temp_dir("limits-cfg");
    let config = dir.join("tuttid.toml");
    std::fs::write(
        &config,
        format!(
            "publish_ring_bytes = 65536\nlog_bytes = 65536\n[limits]\nring_bytes_per_uid = {}\ngroups_per_client = 2\n",
            3 * unit
        ),
    )
    .unwrap();
    let daemon = Daemon::start("limits", &["--config", config.to_str().unwrap()]);
    let mut a = daemon.client();
    let mut b = daemon.client();
    a.join("g1").unwrap(); // a log and a ring: 2 units
    let g2 = a.join("g2").unwrap(); // a log: 3 units
    match a.join("g3") {
        Err(Error::LimitReached {
            limit: Limit::GroupsPerClient,
            max: 2,
        }) => {}
        other => panic!("expected GroupsPerClient, got {other:?}"),
    }
    // b's ring would be a fourth unit for the same user.
    let e = b.join("g1").unwrap_err();
    assert!(
        matches!(
            e,
            Error::LimitReached {
                limit: Limit::RingBytesPerUid,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("limits.ring_bytes_per_uid"), "{e}");
    // Subscribing to an existing group costs nothing.
    b.join_as("g1", Rights::SUBSCRIBE).unwrap();
    // Freeing g2 (its only member leaves) gives its log's unit back.
    a.leave(g2).unwrap();
    let e = b.join_as("g1b", Rights::PUBLISH).unwrap_err();
    assert!(
        matches!(
            e,
            Error::LimitReached {
                limit: Limit::RingBytesPerUid,
                ..
            }
        ),
        "a new group and a ring are two units, one is free: {e:?}"
    );
    b.join_as("g3", Rights::SUBSCRIBE)
        .expect("a new group's log is one unit, and one is free");
    assert_eq!(control_counter(&mut a, "refused_groups_per_client"), 1);
    assert_eq!(control_counter(&mut a, "refused_ring_bytes"), 2);
    let s = a.status().unwrap();
    assert!(s.contains("refused_ring_bytes 2"), "{s}");
}

#[test]
fn max_groups_refuses_with_a_typed_error_and_a_counter() {
    let dir = common::temp_dir("maxgroups-cfg");
    let config = dir.join("tuttid.toml");
    std::fs::write(&config, "max_groups = 1\n").unwrap();
    let daemon = Daemon::start("maxgroups", &["--config", config.to_str().unwrap()]);
    let mut a = daemon.client();
    a.join("one").unwrap();
    match a.join("two") {
        Err(Error::LimitReached {
            limit: Limit::Groups,
            max: 1,
        }) => {}
        other => panic!("expected Groups, got {other:?}"),
    }
    assert_eq!(control_counter(&mut a, "refused_max_groups"), 1);
    let s = a.status().unwrap();
    assert_eq!(status_number(&s, "groups:"), Some(1), "{s}");
}
