//! Helpers of the ordered-group tests (`ordered.rs`, `ordered_faults.rs`): daemons of a
//! loopback cluster, a subscriber thread that records every view and message, publishers
//! of numbered messages and the checks on what the subscribers recorded.

#![allow(dead_code)]

use crate::common::{self, wait_until, Daemon};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tutti_client::{Client, Event, GroupOptions, IdleStrategy, LeftReason, Rights};

pub const WAIT: Duration = Duration::from_secs(90);
pub const BASE_PORT: u16 = 17400;

pub fn ip(subnet: u8, i: usize) -> String {
    format!("127.0.{subnet}.{}", i + 1)
}

/// Starts daemon `i` of an `n`-daemon cluster on 127.0.`subnet`.0/24 (every daemon seeded
/// with all of them; the suspicion timeout short, so a kill is noticed within seconds).
pub fn start_daemon(tag: &str, subnet: u8, i: usize, n: usize) -> Daemon {
    start_daemon_with(tag, subnet, i, n, 1500)
}

/// As [`start_daemon`], with the suspicion timeout `suspect_ms`: an ordered group removes a
/// member as soon as the failure detector suspects it, so a daemon starved of CPU for that
/// long on a loaded machine is removed for good.
pub fn start_daemon_with(tag: &str, subnet: u8, i: usize, n: usize, suspect_ms: u64) -> Daemon {
    let dir = common::temp_dir(&format!("{tag}-cfg{i}"));
    let config = dir.join("tuttid.toml");
    let seeds: Vec<String> = (0..n)
        .map(|j| format!("\"{}@{}\"", j + 1, ip(subnet, j)))
        .collect();
    std::fs::write(
        &config,
        format!(
            "node_id = {}\n[cluster]\nenabled = true\nseeds = [{}]\nsuspect_timeout_ms = {suspect_ms}\n[net]\nlisten = \"{}\"\nbase_port = {BASE_PORT}\n",
            i + 1,
            seeds.join(", "),
            ip(subnet, i),
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&format!("{tag}-{i}"), &["--config", config.to_str().unwrap()]);
    // Read at startup (the daemon answers once it has): not left behind in the temp dir.
    let _ = std::fs::remove_dir_all(&dir);
    daemon
}

/// What a subscriber saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rec {
    /// (publisher tag, index)
    Msg(u32, u64),
    /// (view id, members as daemon ids, left as (daemon id, reason))
    View(u64, Vec<u32>, Vec<(u32, LeftReason)>),
    Installed(u64, Vec<u8>),
    SnapshotRequest(u64),
}

pub fn message(publisher: u32, index: u64) -> Vec<u8> {
    let mut m = format!("{publisher}:{index}:").into_bytes();
    m.resize(48, b'.');
    m
}

pub fn parse(payload: &[u8]) -> (u32, u64) {
    let text = std::str::from_utf8(payload).expect("utf-8 payload");
    let mut parts = text.split(':');
    (
        parts.next().unwrap().parse().unwrap(),
        parts.next().unwrap().parse().unwrap(),
    )
}

/// The state a provider hands a joiner: the number of messages it delivered, then 10,000
/// bytes of pattern (so the snapshot travels in several control-socket chunks).
pub fn snapshot(delivered: u64) -> Vec<u8> {
    let mut s = delivered.to_le_bytes().to_vec();
    s.extend((0..10_000u32).map(|i| (i % 251) as u8));
    s
}

/// A subscriber thread on one daemon; with `provide`, it registers a snapshot provider
/// whose state is the number of messages it delivered so far.
pub struct Subscriber {
    recs: Arc<Mutex<Vec<Rec>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl Subscriber {
    pub fn start(daemon: &Daemon, group: &str, provide: bool) -> Subscriber {
        Subscriber::start_with(daemon, group, provide, GroupOptions::ORDERED)
    }

    /// As [`Subscriber::start`], joining with `options` (an `evs` group, say).
    pub fn start_with(daemon: &Daemon, group: &str, provide: bool, options: GroupOptions) -> Subscriber {
        let recs = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut client = daemon.client();
        let g = client
            .join_with(group, Rights::SUBSCRIBE, options)
            .expect("ordered join");
        let delivered = Arc::new(AtomicU64::new(0));
        if provide {
            let delivered = Arc::clone(&delivered);
            client
                .set_snapshot_provider(g, move |_position| snapshot(delivered.load(Ordering::Relaxed)))
                .expect("provider");
        }
        let (r, s) = (Arc::clone(&recs), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                client
                    .poll_blocking(g, 256, IdleStrategy::Backoff, Duration::from_millis(50), |e| {
                        let rec = match e {
                            Event::Message { payload, .. } => {
                                delivered.fetch_add(1, Ordering::Relaxed);
                                let (p, i) = parse(payload);
                                Rec::Msg(p, i)
                            }
                            Event::View(v) => Rec::View(
                                v.id,
                                v.members().map(|m| m >> 8).collect(),
                                v.left().map(|(m, why)| (m >> 8, why)).collect(),
                            ),
                            Event::Installed { position, snapshot } => {
                                Rec::Installed(position, snapshot.to_vec())
                            }
                            Event::SnapshotRequest { position } => Rec::SnapshotRequest(position),
                            other => panic!("unexpected event in an ordered group: {other:?}"),
                        };
                        r.lock().unwrap().push(rec);
                    })
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        });
        Subscriber {
            recs,
            stop,
            thread: Some(thread),
        }
    }

    pub fn recs(&self) -> Vec<Rec> {
        self.recs.lock().unwrap().clone()
    }

    pub fn messages(&self) -> usize {
        self.recs().iter().filter(|r| matches!(r, Rec::Msg(..))).count()
    }

    /// Whether the newest view it saw has exactly `members` (daemon ids).
    pub fn has_view(&self, members: &[u32]) -> bool {
        self.recs()
            .iter()
            .rev()
            .find_map(|r| match r {
                Rec::View(_, m, _) => Some(m.as_slice() == members),
                _ => None,
            })
            .unwrap_or(false)
    }

    pub fn stop(mut self) -> Vec<Rec> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap().unwrap();
        }
        self.recs()
    }
}

/// Starts a subscriber of `group` on each of `daemons` in turn (the first provides
/// snapshots), each time waiting up to `wait` until every subscriber so far sees the view
/// of daemons 1..=i+1.
pub fn subscribers_in_turn(daemons: &[&Daemon], group: &str, wait: Duration) -> Vec<Option<Subscriber>> {
    let mut subs: Vec<Option<Subscriber>> = Vec::new();
    for (i, daemon) in daemons.iter().enumerate() {
        subs.push(Some(Subscriber::start(daemon, group, i == 0)));
        let expected: Vec<u32> = (1..=i as u32 + 1).collect();
        wait_until(
            wait,
            &format!("view {expected:?} at every subscriber"),
            daemons,
            || subs.iter().flatten().all(|s| s.has_view(&expected)),
        );
    }
    subs
}

/// Publishes `count` messages `tag:index` from `first` on, one every `gap`.
pub fn publish(
    client: &mut Client,
    group: tutti_client::GroupId,
    tag: u32,
    first: u64,
    count: u64,
    gap: Duration,
) {
    for i in first..first + count {
        client
            .offer_blocking(group, &message(tag, i), IdleStrategy::Backoff, WAIT)
            .expect("offer");
        if !gap.is_zero() {
            std::thread::sleep(gap);
        }
    }
    assert!(client.flush(WAIT).unwrap(), "publisher {tag} not drained");
}

/// Two record sequences are equal; else the first difference with some context.
pub fn assert_same(a: &[Rec], b: &[Rec], what: &str) {
    if a == b {
        return;
    }
    let at = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    let window = |s: &[Rec]| s[at.saturating_sub(3)..(at + 4).min(s.len())].to_vec();
    panic!(
        "{what}: differ at record {at} (lengths {} and {}):\n  {:?}\n  {:?}",
        a.len(),
        b.len(),
        window(a),
        window(b)
    );
}

/// Messages only, in order.
pub fn msgs(recs: &[Rec]) -> Vec<(u32, u64)> {
    recs.iter()
        .filter_map(|r| match r {
            Rec::Msg(p, i) => Some((*p, *i)),
            _ => None,
        })
        .collect()
}

/// Each publisher's messages appear with consecutive indexes from its first one seen.
pub fn assert_fifo(recs: &[Rec], who: &str) {
    let mut next: HashMap<u32, u64> = HashMap::new();
    for (p, i) in msgs(recs) {
        let n = next.entry(p).or_insert(i);
        assert_eq!(i, *n, "{who}: publisher {p} out of FIFO order");
        *n += 1;
    }
}

/// The views and messages from the view with `members` on (the common starting point of
/// members that joined before it).
pub fn from_view(recs: &[Rec], members: &[u32]) -> Vec<Rec> {
    let at = recs
        .iter()
        .position(|r| matches!(r, Rec::View(_, m, _) if m.as_slice() == members))
        .unwrap_or_else(|| panic!("no view {members:?} in {recs:?}"));
    // Snapshot requests are asked of one daemon only; views and messages are the order.
    recs[at..]
        .iter()
        .filter(|r| matches!(r, Rec::View(..) | Rec::Msg(..)))
        .cloned()
        .collect()
}

/// Waits until every running daemon's cluster view has `members` members.
pub fn wait_cluster_view(daemons: &[Option<Daemon>], members: u64) {
    let all: Vec<&Daemon> = daemons.iter().flatten().collect();
    let mut clients: Vec<Client> = all.iter().map(|d| d.client()).collect();
    wait_until(WAIT, &format!("a cluster view of {members}"), &all, || {
        clients
            .iter_mut()
            .all(|c| common::status_number(&c.status().unwrap(), "view_members") == Some(members))
    });
}

/// A shard counter from `tutti status` (summed over shards).
pub fn counter(daemon: &Daemon, name: &str) -> u64 {
    let status = daemon.client().status().unwrap();
    status
        .lines()
        .filter_map(|l| common::status_number(l, &format!(" {name} ")))
        .sum()
}

/// Where `daemon` places the memory node of its ordered group (its status line
/// "memory node: primary P, backup B, epoch E"; the first ordered group it shows):
/// (primary, backup, epoch) as daemon ids; None while it shows none.
pub fn memnode_placement(daemon: &Daemon) -> Option<(u32, Option<u32>, u64)> {
    let status = daemon.client().status().ok()?;
    let at = status.find("memory node: primary ")?;
    let line = status[at..].split(';').next()?;
    let primary = common::status_number(line, "primary ")? as u32;
    let backup = common::status_number(line, "backup ").map(|b| b as u32);
    let epoch = common::status_number(line, "epoch ")?;
    Some((primary, backup, epoch))
}

/// The memory-node replica `daemon` hosts for its ordered group (its status line
/// "replica here: ROLE, execs committed N, ..."): (role, the counter `name`); None while
/// it shows none.
pub fn replica_counter(daemon: &Daemon, name: &str) -> Option<(String, u64)> {
    let status = daemon.client().status().ok()?;
    let at = status.find("replica here: ")? + "replica here: ".len();
    let line = status[at..].lines().next()?;
    let role = line.split(',').next()?.to_string();
    Some((role, common::status_number(line, &format!("{name} "))?))
}

/// The first group name `prefix.N` whose memory node (primary and backup) a cluster of
/// daemons 1..=`n` places on daemons in `hosts` only (placement is rendezvous hashing of
/// the name over the cluster view: `tutti_proto::ordered::choose_memnode_hosts`).
pub fn group_with_memnode_on(prefix: &str, n: u32, hosts: &[u32]) -> String {
    let nodes: Vec<u32> = (1..=n).map(|d| d << 8).collect();
    (0..)
        .map(|i| format!("{prefix}.{i}"))
        .find(|name| {
            tutti_proto::ordered::choose_memnode_hosts(tutti_wire::group_id(name), &nodes)
                .iter()
                .all(|h| hosts.contains(&(h >> 8)))
        })
        .unwrap()
}
