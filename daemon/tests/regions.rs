//! Application regions end to end (`docs/regions.md`): three `tuttid`s on loopback
//! (127.0.95.X), clients on two of them running a CAS-increment loop on one counter (no
//! lost update: the final value is the number of committed increments), the typed errors,
//! and a kill -9 of the daemon running the region memory node's primary (the counter
//! survives on the promoted backup and increments go on).

mod common;
#[path = "common/raw.rs"]
mod raw;

use common::{wait_settled_view, wait_until, Daemon};
use std::time::{Duration, Instant};
use tutti_client::{Client, Minitx, MinitxError};
use tutti_wire::control::{ItemKind, MinitxFailure, MinitxFrame, MinitxItem, Reply, Request};

const WAIT: Duration = Duration::from_secs(90);
const BASE_PORT: u16 = 17800;
const SUBNET: u8 = 95;

fn ip(i: usize) -> String {
    format!("127.0.{SUBNET}.{}", i + 1)
}

fn start_daemon(i: usize, n: usize) -> Daemon {
    let dir = common::temp_dir(&format!("regions-cfg{i}"));
    let config = dir.join("tuttid.toml");
    let seeds: Vec<String> = (0..n).map(|j| format!("\"{}@{}\"", j + 1, ip(j))).collect();
    std::fs::write(
        &config,
        format!(
            "node_id = {}\n[cluster]\nenabled = true\nseeds = [{}]\nsuspect_timeout_ms = 1500\n[net]\nlisten = \"{}\"\nbase_port = {BASE_PORT}\n",
            i + 1,
            seeds.join(", "),
            ip(i),
        ),
    )
    .unwrap();
    Daemon::start(&format!("regions-{i}"), &["--config", config.to_str().unwrap()])
}

fn u64_of(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().expect("8 bytes"))
}

/// Adds 1 to the counter by compare-and-swap; returns the conflicts it took.
fn increment(client: &mut Client, guess: &mut u64) -> u64 {
    let mut conflicts = 0;
    loop {
        let m = Minitx::new().compare("counter", 0, &guess.to_le_bytes()).write(
            "counter",
            0,
            &(*guess + 1).to_le_bytes(),
        );
        match client.minitx(&m) {
            Ok(_) => {
                *guess += 1;
                return conflicts;
            }
            Err(MinitxError::Conflict { failed, .. }) => {
                conflicts += 1;
                assert_eq!(failed.len(), 1);
                assert_eq!(failed[0].0, 0);
                *guess = u64_of(&failed[0].1);
            }
            Err(e) => panic!("increment: {e}"),
        }
    }
}

/// The daemon id running the region memory node's primary, from `tutti status`.
fn region_primary(client: &mut Client) -> Option<usize> {
    let status = client.status().unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("regions: memory node on daemon "))?;
    line["regions: memory node on daemon ".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Reads the counter through `client`, retrying while the cluster fails over.
fn read_counter(client: &mut Client) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        match client.minitx(&Minitx::new().read("counter", 0, 8)) {
            Ok(out) => return u64_of(&out.reads[0]),
            Err(MinitxError::Unavailable | MinitxError::NotInMajority | MinitxError::Busy)
                if Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("read counter: {e}"),
        }
    }
}

#[test]
fn three_daemons_share_a_counter_without_lost_updates_and_survive_a_primary_kill() {
    let daemons: Vec<Daemon> = (0..3).map(|i| start_daemon(i, 3)).collect();
    let mut clients: Vec<Client> = daemons.iter().map(|d| d.client()).collect();
    wait_settled_view(&mut clients, 0, WAIT);

    // Create, idempotently, from two daemons; the typed errors.
    clients[0].region_create("counter", 8).unwrap();
    clients[1].region_create("counter", 8).unwrap();
    assert!(matches!(
        clients[2].region_create("counter", 16),
        Err(MinitxError::SizeMismatch { ref region, size: 8 }) if region == "counter"
    ));
    assert!(matches!(
        clients[0].region_create("huge", 1 << 20),
        Err(MinitxError::TooLarge)
    ));
    assert!(matches!(
        clients[1].minitx(&Minitx::new().read("nope", 0, 1)),
        Err(MinitxError::RegionMissing { ref region }) if region == "nope"
    ));
    assert!(matches!(
        clients[1].minitx(&Minitx::new().read("counter", 4, 8)),
        Err(MinitxError::OutOfBounds { ref region }) if region == "counter"
    ));
    match clients[2].minitx(
        &Minitx::new()
            .compare("counter", 0, &7u64.to_le_bytes())
            .write("counter", 0, &8u64.to_le_bytes())
            .read("counter", 0, 8),
    ) {
        Err(MinitxError::Conflict { failed, reads }) => {
            assert_eq!(failed, vec![(0, 0u64.to_le_bytes().to_vec())]);
            assert_eq!(reads, vec![Some(0u64.to_le_bytes().to_vec())]);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }

    // A client that pipelines requests is held to MAX_REGION_OPS_PER_CLIENT (8) in flight:
    // the rest are answered Busy at once, and every request is answered.
    let primary = region_primary(&mut clients[0]).expect("status names the region primary");
    let off_primary = (0..3).find(|&i| i + 1 != primary).unwrap();
    let raw = raw::RawSession::connect(daemons[off_primary].socket()).unwrap();
    let read = Request::Minitx(MinitxFrame {
        regions: vec!["counter"],
        items: vec![MinitxItem {
            kind: ItemKind::Read,
            region: 0,
            offset: 0,
            len: 8,
            data: &[],
        }],
    });
    let mut frame = Vec::new();
    read.encode(&mut frame);
    const PIPELINED: usize = 64;
    for _ in 0..PIPELINED {
        raw.conn.send(&frame, &[]).unwrap();
    }
    let (mut done, mut busy) = (0, 0);
    let mut buf = vec![0u8; 8192];
    for _ in 0..PIPELINED {
        let n = raw.conn.recv(&mut buf, &mut Vec::new()).unwrap();
        match Reply::decode(&buf[..n]).unwrap() {
            Reply::MinitxDone { reads } => {
                assert_eq!(reads, vec![&0u64.to_le_bytes()[..]]);
                done += 1;
            }
            Reply::MinitxFailed(MinitxFailure::Busy) => busy += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(done + busy, PIPELINED);
    assert!(done >= 1 && busy >= 1, "done {done}, busy {busy}");

    // Two daemons, one thread each, increment one counter concurrently.
    const PER_CLIENT: u64 = 100;
    let survivors: Vec<usize> = (0..3).filter(|&i| i + 1 != primary).collect();
    let started = Instant::now();
    let workers: Vec<_> = survivors
        .iter()
        .map(|&i| {
            let mut c = daemons[i].client();
            std::thread::spawn(move || {
                let mut guess = 0;
                let mut conflicts = 0;
                for _ in 0..PER_CLIENT {
                    conflicts += increment(&mut c, &mut guess);
                }
                conflicts
            })
        })
        .collect();
    let conflicts: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let elapsed = started.elapsed();
    let value = read_counter(&mut clients[survivors[0]]);
    assert_eq!(value, 2 * PER_CLIENT, "every committed increment counted once");
    eprintln!(
        "regions: {} CAS increments from 2 daemons in {elapsed:?} ({:.0}/s), {conflicts} conflicts",
        2 * PER_CLIENT,
        (2 * PER_CLIENT) as f64 / elapsed.as_secs_f64()
    );
    let status = clients[0].status().unwrap();
    assert!(status.contains("regions: memory node on daemon"), "{status}");

    // kill -9 the primary's daemon: the counter survives on the promoted backup.
    daemons[primary - 1].signal(libc::SIGKILL);
    let mut a = daemons[survivors[0]].client();
    wait_until(WAIT, "the backup took over", &[&daemons[survivors[0]]], || {
        region_primary(&mut a).is_some_and(|p| p != primary)
    });
    assert_eq!(
        read_counter(&mut a),
        2 * PER_CLIENT,
        "committed increments survive"
    );
    let mut b = daemons[survivors[1]].client();
    let mut guess = 2 * PER_CLIENT;
    increment(&mut b, &mut guess);
    assert_eq!(read_counter(&mut a), 2 * PER_CLIENT + 1);
    // The config files (the daemons' own directories go with their guards).
    let prefix = format!("tutti-test-{}-regions-cfg", std::process::id());
    for entry in std::fs::read_dir(std::env::temp_dir()).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
