//! CPG process groups (`GroupOptions::CPG`) across 3 `tuttid`s on loopback: every member
//! process (a client session) sees the same confchg records and messages in the same
//! order; a session that ends is PROCDOWN, one that leaves is LEAVE, and a daemon killed
//! with SIGKILL takes its processes with it (NODEDOWN) at every survivor.

mod common;

use common::{group_off_daemon_3, wait_until, Daemon};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tutti_client::{Client, Event, GroupOptions, IdleStrategy, Rights};

const WAIT: Duration = Duration::from_secs(90);
const BASE_PORT: u16 = 17600;
/// Each test's daemons live on their own 127.0.SUBNET.0/24 (tests run in parallel).
const SUBNET: u8 = 91;
const SUBNET_REJOIN: u8 = 92;
const SUBNET_STATUS: u8 = 93;
const SUBNET_ORDERED_REJOIN: u8 = 94;
const SUBNET_OWN_LEAVE: u8 = 95;
const SUBNET_EVS_FIRST: u8 = 96;
const SUBNET_JOIN_RACE: u8 = 97;
const SUBNET_MAJORITY: u8 = 98;
const SUBNET_STALL: u8 = 89;
const SUBNET_LAST_LEAVE: u8 = 88;
const SUBNET_LEAVE_JOIN: u8 = 87;
/// `cpg_reason_t` codes.
const JOIN: u32 = 1;
const LEAVE: u32 = 2;
const NODEDOWN: u32 = 3;
const PROCDOWN: u32 = 5;

fn ip(subnet: u8, i: usize) -> String {
    format!("127.0.{subnet}.{}", i + 1)
}

/// Starts daemon `i` of `n` on 127.0.`subnet`.0/24. The suspicion timeout is 3 s: at 1.5 s a
/// loaded 2-core machine saw daemons falsely suspected (and removed from the group's order)
/// during the 300-message burst, a membership-under-load issue outside this test's subject.
/// With `cluster` (lines of the `[cluster]` table) added.
fn start_daemon_with(subnet: u8, i: usize, n: usize, cluster: &str) -> Daemon {
    let dir = common::temp_dir(&format!("cpg-cfg{i}"));
    let config = dir.join("tuttid.toml");
    let seeds: Vec<String> = (0..n)
        .map(|j| format!("\"{}@{}\"", j + 1, ip(subnet, j)))
        .collect();
    std::fs::write(
        &config,
        format!(
            "node_id = {}\n[cluster]\nenabled = true\nseeds = [{}]\nsuspect_timeout_ms = 3000\n{cluster}[net]\nlisten = \"{}\"\nbase_port = {BASE_PORT}\n",
            i + 1,
            seeds.join(", "),
            ip(subnet, i),
        ),
    )
    .unwrap();
    Daemon::start(&format!("cpg-{i}"), &["--config", config.to_str().unwrap()])
}

/// A process as confchgs name it: (daemon id, session), and in left/joined lists a reason.
type Proc = (u32, u32);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rec {
    Confchg {
        members: Vec<Proc>,
        joined: Vec<(Proc, u32)>,
        left: Vec<(Proc, u32)>,
    },
    /// (sender daemon, sender session, the member's message index)
    Msg(u32, u32, u64),
}

enum Command {
    Publish(u64),
    Leave,
    /// Leave, then join again at once on the same session (a CPG handle's leave and join).
    Rejoin,
    /// Leave but read on (`Client::leave_reading`) up to the confchg of its own leave,
    /// as libcpg.so.4's `cpg_leave` does; then let the log go.
    LeaveReading,
}

/// One CPG member process: a client session in its own thread that records what it sees
/// and publishes or leaves on command. Dropping it ends the session without a leave.
struct Member {
    me: Proc,
    recs: Arc<Mutex<Vec<Rec>>>,
    commands: Option<mpsc::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
    /// False once a `Leave` was answered by the daemon.
    joined: Arc<AtomicBool>,
    /// True once a `LeaveReading` was answered by the daemon (the process is no longer a
    /// member there; its log is still read).
    leave_sent: Arc<AtomicBool>,
}

impl Member {
    fn start(daemon: &Daemon, group: &str) -> Member {
        let mut client = daemon.client();
        let mut g = client
            .join_with(group, Rights::BOTH, GroupOptions::CPG)
            .expect("cpg join");
        let group = group.to_string();
        let id = client.sender_id();
        let me = ((id >> 32) as u32, id as u32);
        let recs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let r = Arc::clone(&recs);
        let joined_flag = Arc::new(AtomicBool::new(true));
        let is_joined = Arc::clone(&joined_flag);
        let leave_sent = Arc::new(AtomicBool::new(false));
        let leave_done = Arc::clone(&leave_sent);
        let pid = std::process::id();
        let thread = std::thread::spawn(move || {
            let mut sent = 0u64;
            let mut joined = true;
            let mut leaving = false;
            loop {
                match rx.try_recv() {
                    Ok(Command::Publish(n)) => {
                        for _ in 0..n {
                            client
                                .offer_blocking(g, &sent.to_le_bytes(), IdleStrategy::Backoff, WAIT)
                                .expect("offer");
                            sent += 1;
                        }
                    }
                    Ok(Command::Leave) => {
                        client.leave(g).expect("leave");
                        joined = false;
                        is_joined.store(false, Ordering::Release);
                    }
                    Ok(Command::LeaveReading) => {
                        client.leave_reading(g).expect("leave, reading on");
                        leaving = true;
                        leave_done.store(true, Ordering::Release);
                    }
                    Ok(Command::Rejoin) => {
                        client.leave(g).expect("leave");
                        g = client
                            .join_with(&group, Rights::BOTH, GroupOptions::CPG)
                            .expect("cpg join again");
                        joined = true;
                    }
                    Err(mpsc::TryRecvError::Empty) => {}
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
                if !joined {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                let entries = |it: &mut dyn Iterator<Item = tutti_client::CpgEntry>| -> Vec<(Proc, u32)> {
                    it.map(|e| {
                        assert_eq!(e.pid, pid, "pid as the daemon saw it");
                        ((e.node, e.session), e.reason)
                    })
                    .collect()
                };
                client
                    .poll_blocking(g, 256, IdleStrategy::Backoff, Duration::from_millis(20), |e| {
                        let rec = match e {
                            Event::Message { sender, payload, .. } => Rec::Msg(
                                (sender >> 32) as u32,
                                sender as u32,
                                u64::from_le_bytes(payload.try_into().expect("8-byte message")),
                            ),
                            Event::Confchg(c) => Rec::Confchg {
                                members: entries(&mut c.members()).into_iter().map(|(p, _)| p).collect(),
                                joined: entries(&mut c.joined()),
                                left: entries(&mut c.left()),
                            },
                            // The daemons' ring (CPG's totem view): not part of the order.
                            Event::View(_) => return,
                            other => panic!("unexpected event in a cpg group: {other:?}"),
                        };
                        r.lock().unwrap().push(rec);
                    })
                    .expect("poll");
                let own_leave_seen = || {
                    r.lock().unwrap().iter().any(
                        |rec| matches!(rec, Rec::Confchg { left, .. } if left.iter().any(|(p, _)| *p == me)),
                    )
                };
                if leaving && own_leave_seen() {
                    client.leave(g).expect("let the log go");
                    (joined, leaving) = (false, false);
                    is_joined.store(false, Ordering::Release);
                }
            }
        });
        Member {
            me,
            recs,
            commands: Some(tx),
            thread: Some(thread),
            joined: joined_flag,
            leave_sent,
        }
    }

    fn recs(&self) -> Vec<Rec> {
        self.recs.lock().unwrap().clone()
    }

    fn send(&self, c: Command) {
        self.commands.as_ref().unwrap().send(c).unwrap();
    }

    fn messages(&self) -> usize {
        self.recs().iter().filter(|r| matches!(r, Rec::Msg(..))).count()
    }

    /// Whether it saw a confchg with exactly these members and this change.
    fn saw(&self, members: &[Proc], joined: &[(Proc, u32)], left: &[(Proc, u32)]) -> bool {
        let mut members = members.to_vec();
        members.sort_unstable();
        self.recs().contains(&Rec::Confchg {
            members,
            joined: joined.to_vec(),
            left: left.to_vec(),
        })
    }

    /// How many confchgs it saw in which `who` joined.
    fn joins_seen(&self, who: Proc) -> usize {
        self.recs()
            .iter()
            .filter(|r| matches!(r, Rec::Confchg { joined, .. } if joined.contains(&(who, JOIN))))
            .count()
    }

    /// Whether it saw a confchg listing exactly these members (whatever changed).
    fn saw_members(&self, members: &[Proc]) -> bool {
        let mut members = members.to_vec();
        members.sort_unstable();
        self.recs()
            .iter()
            .any(|r| matches!(r, Rec::Confchg { members: m, .. } if *m == members))
    }

    /// The records from the first confchg listing exactly these members on.
    fn records_since_members(&self, members: &[Proc]) -> Vec<Rec> {
        let mut members = members.to_vec();
        members.sort_unstable();
        let recs = self.recs();
        let at = recs
            .iter()
            .position(|r| matches!(r, Rec::Confchg { members: m, .. } if *m == members))
            .unwrap_or_else(|| panic!("no confchg with members {members:?} in {recs:?}"));
        recs[at..].to_vec()
    }

    /// The records from its own join's confchg on: what a CPG program is shown
    /// (libcpg.so.4 skips what its log holds before the handle's join).
    fn records_since_own_join(&self) -> Vec<Rec> {
        self.records_since_join_of(self.me)
    }

    /// The records from the confchg in which `who` joined on.
    fn records_since_join_of(&self, who: Proc) -> Vec<Rec> {
        let recs = self.recs();
        let at = recs
            .iter()
            .position(|r| matches!(r, Rec::Confchg { joined, .. } if joined.iter().any(|(p, _)| *p == who)))
            .unwrap_or_else(|| panic!("no join of {who:?} in {recs:?}"));
        recs[at..].to_vec()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.commands = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn processes_on_three_daemons_see_one_order_of_confchgs_and_messages() {
    three_daemons_one_order(SUBNET, "");
}

/// The same under `cpg_partition = "majority"` (the default is `evs`, CPG's own policy):
/// the survivors of the kill -9 are a majority and go on.
#[test]
fn under_majority_processes_on_three_daemons_see_one_order() {
    three_daemons_one_order(SUBNET_MAJORITY, "cpg_partition = \"majority\"\n");
}

fn three_daemons_one_order(subnet: u8, cluster: &str) {
    let group = &group_off_daemon_3("cpg.three");
    let mut daemons: Vec<Option<Daemon>> = (0..3)
        .map(|i| Some(start_daemon_with(subnet, i, 3, cluster)))
        .collect();
    let all: Vec<&Daemon> = daemons.iter().flatten().collect();
    let mut clients: Vec<Client> = all.iter().map(|d| d.client()).collect();
    wait_until(WAIT, "a cluster view of 3", &all, || {
        clients
            .iter_mut()
            .all(|c| common::status_number(&c.status().unwrap(), "view_members") == Some(3))
    });
    drop(clients);

    // Joins in turn: each member sees its own join with the members before it.
    let mut members: Vec<Member> = Vec::new();
    for i in 0..3 {
        let m = Member::start(all[i], group);
        let expected: Vec<Proc> = members.iter().map(|m| m.me).chain([m.me]).collect();
        let joined = [(m.me, JOIN)];
        members.push(m);
        wait_until(WAIT, &format!("join of member {i} seen by all"), &all, || {
            members.iter().all(|m| m.saw(&expected, &joined, &[]))
        });
    }
    let (a, b, c) = (members[0].me, members[1].me, members[2].me);
    assert_eq!((a.0, b.0, c.0), (1, 2, 3), "node ids are the daemons' ids");

    // All three publish at once: one order everywhere, FIFO per sender.
    for m in &members {
        m.send(Command::Publish(100));
    }
    wait_until(WAIT, "300 messages at every member", &all, || {
        members.iter().all(|m| m.messages() == 300)
    });

    // A second process on daemon 3 joins, then its session ends without a leave: PROCDOWN.
    let d = Member::start(all[2], group);
    let d_me = d.me;
    wait_until(WAIT, "join of d seen by all", &all, || {
        members
            .iter()
            .all(|m| m.saw(&[a, b, c, d_me], &[(d_me, JOIN)], &[]))
    });
    drop(d);
    wait_until(WAIT, "PROCDOWN of d", &all, || {
        members
            .iter()
            .all(|m| m.saw(&[a, b, c], &[], &[(d_me, PROCDOWN)]))
    });
    // c leaves on its own: LEAVE at the others.
    members[2].send(Command::Leave);
    wait_until(WAIT, "LEAVE of c", &all, || {
        members[..2].iter().all(|m| m.saw(&[a, b], &[], &[(c, LEAVE)]))
    });

    // A process on daemon 3 again, then kill -9 of daemon 3: NODEDOWN for it at 1 and 2.
    let e = Member::start(all[2], group);
    let e_me = e.me;
    wait_until(WAIT, "join of e", &all, || {
        members[..2]
            .iter()
            .all(|m| m.saw(&[a, b, e_me], &[(e_me, JOIN)], &[]))
    });
    drop(all);
    daemons[2].as_ref().unwrap().signal(libc::SIGKILL);
    daemons[2].as_mut().unwrap().wait_exit(Duration::from_secs(10));
    drop(e);
    daemons[2] = None;
    let alive: Vec<&Daemon> = daemons.iter().flatten().collect();
    wait_until(WAIT, "NODEDOWN of e at the survivors", &alive, || {
        members[..2]
            .iter()
            .all(|m| m.saw(&[a, b], &[], &[(e_me, NODEDOWN)]))
    });
    // The survivors go on in one order.
    members[0].send(Command::Publish(20));
    members[1].send(Command::Publish(20));
    wait_until(WAIT, "340 messages at the survivors", &alive, || {
        members[..2].iter().all(|m| m.messages() == 340)
    });

    // Identical sequences from c's join (the last common starting point of the three).
    let seqs: Vec<Vec<Rec>> = members.iter().map(|m| m.records_since_join_of(c)).collect();
    assert_eq!(seqs[0], seqs[1], "members on daemons 1 and 2 differ");
    let common = seqs[2].len();
    assert!(common >= 300, "c saw {common} records");
    assert_eq!(
        seqs[0][..common],
        seqs[2][..],
        "c's records are a prefix of the others'"
    );
    // FIFO per sender; nobody's messages lost or repeated.
    for sender in [a, b, c] {
        let idx: Vec<u64> = seqs[0]
            .iter()
            .filter_map(|r| match *r {
                Rec::Msg(n, s, i) if (n, s) == sender => Some(i),
                _ => None,
            })
            .collect();
        let want = if sender == c { 100 } else { 120 };
        assert_eq!(idx, (0..want).collect::<Vec<_>>(), "sender {sender:?}");
    }
    drop(members);
}

/// Starts 3 daemons on 127.0.`subnet`.0/24 and waits for their cluster view of 3.
fn start_cluster(subnet: u8) -> Vec<Daemon> {
    start_cluster_with(subnet, "")
}

/// As [`start_cluster`], with `cluster` added to each daemon's `[cluster]` table.
fn start_cluster_with(subnet: u8, cluster: &str) -> Vec<Daemon> {
    let daemons: Vec<Daemon> = (0..3).map(|i| start_daemon_with(subnet, i, 3, cluster)).collect();
    let all: Vec<&Daemon> = daemons.iter().collect();
    let mut clients: Vec<Client> = daemons.iter().map(|d| d.client()).collect();
    wait_until(WAIT, "a cluster view of 3", &all, || {
        clients
            .iter_mut()
            .all(|c| common::status_number(&c.status().unwrap(), "view_members") == Some(3))
    });
    daemons
}

/// A CPG process that leaves a group and joins it again at once, on the same session or
/// on a new one, gets its join confchg each time, and so do the others (docs/cpg.md: a
/// daemon keeps a cpg group's order when its last local process leaves).
#[test]
fn a_process_that_leaves_and_joins_again_at_once_is_a_member_again() {
    let group = &group_off_daemon_3("cpg.rejoin");
    let daemons = start_cluster(SUBNET_REJOIN);
    let all: Vec<&Daemon> = daemons.iter().collect();
    let a = Member::start(all[0], group);
    wait_until(WAIT, "join of a", &all, || a.joins_seen(a.me) == 1);

    // Same session, the only process of the group on daemon 2: leave and join back to back,
    // three times.
    let b = Member::start(all[1], group);
    wait_until(WAIT, "join of b", &all, || {
        a.joins_seen(b.me) == 1 && b.joins_seen(b.me) == 1
    });
    for round in 2..=4 {
        b.send(Command::Rejoin);
        wait_until(WAIT, &format!("join {round} of b seen by a and b"), &all, || {
            a.joins_seen(b.me) == round
        });
        assert!(
            a.saw(&[a.me], &[], &[(b.me, LEAVE)]),
            "a saw b's leave before its join {round}"
        );
        wait_until(WAIT, &format!("b's own join {round}"), &all, || {
            b.joins_seen(b.me) == round
        });
    }
    // Daemon 2 never left the group's order: the group it made again has the order's view
    // (it once showed "no view yet, joining" for good: no membership change followed).
    wait_until(WAIT, "the group's view in daemon 2's status", &all, || {
        let status = all[1].client().status().unwrap();
        status
            .lines()
            .any(|l| l.trim_start().starts_with("ordered: view") && l.contains("[1, 2], member,"))
    });
    // A new session joins as soon as the old one's leave is answered (a new CPG handle).
    b.send(Command::Leave);
    wait_until(WAIT, "b's leave answered", &all, || {
        !b.joined.load(Ordering::Acquire)
    });
    let c = Member::start(all[1], group);
    wait_until(WAIT, "join of c after b's leave", &all, || {
        a.saw(&[a.me, c.me], &[(c.me, JOIN)], &[]) && c.saw(&[a.me, c.me], &[(c.me, JOIN)], &[])
    });
    // And it is a full member: its messages reach a, a's reach it.
    a.send(Command::Publish(10));
    c.send(Command::Publish(10));
    wait_until(WAIT, "20 messages at a and c", &all, || {
        a.messages() == 20 && c.messages() == 20
    });
    drop((a, b, c));
}

/// `tutti status` lists cpg groups as `corosync-cpgtool` does: the group's name, then one
/// `nodeid pid` line per member process, every daemon's processes included.
#[test]
fn status_lists_cpg_groups_with_their_processes() {
    let group = &group_off_daemon_3("cpg.status");
    let daemons = start_cluster(SUBNET_STATUS);
    let all: Vec<&Daemon> = daemons.iter().collect();
    // Started back to back: the order may take either join first (see
    // `processes_joining_at_once_on_two_daemons_are_ordered_alike_everywhere`).
    let a = Member::start(all[0], group);
    let b = Member::start(all[1], group);
    wait_until(WAIT, "joins of a and b", &all, || {
        [&a, &b].iter().all(|m| m.saw_members(&[a.me, b.me]))
    });
    let pid = std::process::id();
    let cpg_section = |d: &Daemon| -> Vec<String> {
        let status = d.client().status().unwrap();
        status
            .lines()
            .skip_while(|l| !l.starts_with("cpg groups:"))
            .take_while(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    };
    let name = group.strip_prefix("cpg:").unwrap_or(group);
    let want = |members: &[(u32, u32)]| -> Vec<String> {
        let mut lines = vec!["cpg groups: 1 (group, then nodeid pid per process)".to_string()];
        lines.push(format!("  {name}"));
        lines.extend(members.iter().map(|(node, pid)| format!("    {node} {pid}")));
        lines
    };
    // Both daemons with a member show both processes.
    for d in &all[..2] {
        wait_until(WAIT, "both processes in status", &all, || {
            cpg_section(d) == want(&[(1, pid), (2, pid)])
        });
    }
    // The side's list epoch has its memory node on its founder, the side's lowest daemon
    // (1), whose status shows that replica and what it served (the joins were appends).
    wait_until(WAIT, "daemon 1's list-epoch replica in its status", &all, || {
        let status = all[0].client().status().unwrap();
        status.lines().any(|l| {
            l.trim_start().starts_with("replica here: list epoch ")
                && l.contains("(founder 1)")
                && common::status_number(l, "execs committed ").is_some_and(|n| n > 0)
        })
    });
    // Every entry of an `evs` list (the joins too) waits until every member holds it: the
    // two members told each other what they hold, straight (`Output::Held`), and took it
    // (some may be refused: told before the receiver learned the teller's join).
    for d in &all[..2] {
        wait_until(WAIT, "progress told and heard in status", &all, || {
            let status = d.client().status().unwrap();
            status.lines().any(|l| {
                l.trim_start().starts_with("evs: list epoch ")
                    && common::status_number(l, "progress told ").is_some_and(|n| n > 0)
                    && common::status_number(l, "heard ").is_some_and(|n| n > 0)
            })
        });
    }
    // The founder pushes what its list's memory node committed to the list's other
    // members: daemon 2 learned daemon 1's entries (a's join) from pushes.
    wait_until(WAIT, "pushes taken in daemon 2's status", &all, || {
        let status = all[1].client().status().unwrap();
        status.lines().any(|l| {
            l.trim_start().starts_with("evs: list epoch ")
                && common::status_number(l, "pushes ").is_some_and(|n| n > 0)
                && common::status_number(l, "entries ").is_some_and(|n| n > 0)
                && l.contains("; agreed delivery, drains ")
                && common::status_number(l, "ordered pump loops cut ") == Some(0)
        })
    });
    // b leaves: daemon 2 keeps the group (dormant) and still shows a's process.
    b.send(Command::Leave);
    wait_until(WAIT, "b's leave in status", &all, || {
        cpg_section(all[0]) == want(&[(1, pid)])
    });
    let mut dormant = want(&[(1, pid)]);
    dormant[1].push_str(" (no local process)");
    wait_until(WAIT, "a dormant group in daemon 2's status", &all, || {
        cpg_section(all[1]) == dormant
    });
    drop((a, b));
}

/// Polls `client`'s group `g` briefly; the ordered views it delivers (daemon ids) go to
/// `views`, and the number of messages to `messages`.
fn poll_views(
    client: &mut Client,
    g: tutti_client::GroupId,
    views: &mut Vec<Vec<u32>>,
    messages: &mut usize,
) {
    client
        .poll_blocking(
            g,
            256,
            IdleStrategy::Backoff,
            Duration::from_millis(20),
            |e| match e {
                Event::View(v) => views.push(v.members().map(|m| m >> 8).collect()),
                Event::Message { .. } => *messages += 1,
                _ => {}
            },
        )
        .expect("poll");
}

/// The path a cpg group takes once it falls out of the dormant set (`cpg::MAX_DORMANT`),
/// and a plain ordered group takes at every last local leave: the daemon leaves the group's
/// order, and a local client joins the group again a few ms later (same session, then a new
/// one). The joiner must get a view with its daemon in it and be able to send.
#[test]
fn an_ordered_group_left_and_joined_again_at_once_gets_a_view() {
    let group = &group_off_daemon_3("ord.rejoin");
    let daemons = start_cluster(SUBNET_ORDERED_REJOIN);
    let all: Vec<&Daemon> = daemons.iter().collect();
    let (mut a, mut b) = (all[0].client(), all[1].client());
    let ga = a.join_with(group, Rights::BOTH, GroupOptions::ORDERED).unwrap();
    let (mut a_views, mut a_msgs) = (Vec::new(), 0);
    wait_until(WAIT, "a's view", &all, || {
        poll_views(&mut a, ga, &mut a_views, &mut a_msgs);
        a_views.last().is_some_and(|v| v == &[1])
    });
    let mut gb = b.join_with(group, Rights::BOTH, GroupOptions::ORDERED).unwrap();
    let mut b_views = Vec::new();
    let mut b_msgs = 0;
    wait_until(WAIT, "b's first view", &all, || {
        poll_views(&mut b, gb, &mut b_views, &mut b_msgs);
        b_views.last().is_some_and(|v| v == &[1, 2])
    });
    for round in 1..=3 {
        b.leave(gb).unwrap();
        gb = b.join_with(group, Rights::BOTH, GroupOptions::ORDERED).unwrap();
        b_views.clear();
        wait_until(WAIT, &format!("b's view after rejoin {round}"), &all, || {
            poll_views(&mut a, ga, &mut a_views, &mut a_msgs);
            poll_views(&mut b, gb, &mut b_views, &mut b_msgs);
            b_views.last().is_some_and(|v| v == &[1, 2])
        });
    }
    // A new session, as soon as the old one left.
    b.leave(gb).unwrap();
    let mut c = all[1].client();
    let gc = c.join_with(group, Rights::BOTH, GroupOptions::ORDERED).unwrap();
    let (mut c_views, mut c_msgs) = (Vec::new(), 0);
    wait_until(WAIT, "c's view", &all, || {
        poll_views(&mut a, ga, &mut a_views, &mut a_msgs);
        poll_views(&mut c, gc, &mut c_views, &mut c_msgs);
        c_views.last().is_some_and(|v| v == &[1, 2])
    });
    c.offer_blocking(gc, b"after the rejoin", IdleStrategy::Backoff, WAIT)
        .unwrap();
    wait_until(WAIT, "c's message at a and c", &all, || {
        poll_views(&mut a, ga, &mut a_views, &mut a_msgs);
        poll_views(&mut c, gc, &mut c_views, &mut c_msgs);
        a_msgs == 1 && c_msgs == 1
    });
}

/// A process that leaves gets what was ordered before its leave, then the confchg of its own
/// leave (members: the others; left: itself with LEAVE) at its place in the order, as
/// Corosync delivers them; it used to lose both (its log ended at the leave request).
#[test]
fn a_leaver_gets_what_was_ordered_before_its_leave_then_its_own_confchg() {
    let daemons = start_cluster(SUBNET_OWN_LEAVE);
    let all: Vec<&Daemon> = daemons.iter().collect();
    let group = &group_off_daemon_3("cpg.own-leave");
    // a and a2 on daemon 1 (a2 keeps the group's log there), b on daemon 2.
    let a = Member::start(all[0], group);
    let a2 = Member::start(all[0], group);
    let b = Member::start(all[1], group);
    let (a_me, a2_me, b_me) = (a.me, a2.me, b.me);
    let members = [&a, &a2, &b];
    let three = [a_me, a2_me, b_me];
    // Started back to back on two daemons: the joins may be ordered either way.
    wait_until(WAIT, "three members seen by all", &all, || {
        members.iter().all(|m| m.saw_members(&three))
    });
    // b's messages are in the order (b has them back) before a leaves; a reads nothing
    // meanwhile only if it is slow, which the leave must not change.
    b.send(Command::Publish(50));
    wait_until(WAIT, "b's 50 messages back at b", &all, || b.messages() == 50);
    a.send(Command::LeaveReading);
    wait_until(WAIT, "a's own leave", &all, || !a.joined.load(Ordering::Acquire));
    wait_until(WAIT, "a's leave at the others", &all, || {
        [&a2, &b]
            .iter()
            .all(|m| m.saw(&[a2_me, b_me], &[], &[(a_me, LEAVE)]))
    });
    let mine = a.records_since_members(&three);
    assert_eq!(
        mine.iter().filter(|r| matches!(r, Rec::Msg(..))).count(),
        50,
        "a got every message ordered before its leave: {mine:?}"
    );
    let own = Rec::Confchg {
        members: {
            let mut m = vec![a2_me, b_me];
            m.sort_unstable();
            m
        },
        joined: Vec::new(),
        left: vec![(a_me, LEAVE)],
    };
    assert_eq!(mine.last(), Some(&own), "its own leave's confchg comes last");
    // The same place in the order at the others.
    let others = a2.records_since_members(&three);
    assert_eq!(others[..mine.len()], mine[..], "a's records are a prefix of a2's");
    drop((a, a2, b));
}

/// The same when the leaver is its daemon's last local process of the group: the daemon
/// keeps writing the group's log until the leave is through, so what was ordered before the
/// leave and the leave's own confchg still reach it. (The daemon used to drop the log at the
/// leave request: such a leaver got only what the log held then, and libcpg made its
/// confchg itself.) b's messages are still in flight when a leaves.
#[test]
fn the_last_local_leaver_gets_what_was_ordered_before_its_leave_then_its_own_confchg() {
    let (daemons, _, a, b) = leaver_with_traffic_in_flight(SUBNET_LAST_LEAVE, "cpg.last-leave");
    let all: Vec<&Daemon> = daemons.iter().collect();
    a.send(Command::LeaveReading);
    wait_until(WAIT, "a's own leave's confchg", &all, || {
        !a.joined.load(Ordering::Acquire)
    });
    wait_until(WAIT, "a's leave at b", &all, || {
        b.saw(&[b.me], &[], &[(a.me, LEAVE)])
    });
    // Exactly the confchg libcpg shows a for its own leave.
    assert!(
        a.saw(&[b.me], &[], &[(a.me, LEAVE)]),
        "a's own leave's confchg: {:?}",
        a.recs()
    );
    assert_leavers_records_are_a_prefix(&a, &b);
    drop((a, b));
}

/// As above, with another process joining the group on the leaver's daemon while the leave
/// is still on its way through the order: the leaver still reads up to its own leave's
/// confchg (the joiner's arrival used to end the leaver's log: the group's slot was freed
/// and made anew for the joiner, and the leaver waited for a confchg that never came),
/// and the joiner's first confchg lists it with the others. (Daemon 2 is stopped for half a
/// second over the join, so that the leave is still in the order when it comes.)
#[test]
fn a_join_on_the_leavers_daemon_does_not_cut_its_log_short() {
    let (daemons, group, a, b) = leaver_with_traffic_in_flight(SUBNET_LEAVE_JOIN, "cpg.leave-join");
    let all: Vec<&Daemon> = daemons.iter().collect();
    // b's daemon (which hosts the group's memory node with daemon 1) stopped for a moment:
    // nothing is ordered meanwhile, so a's leave is still on its way when c joins, after
    // daemon 1 took a's leave (the group has no local member left there).
    all[1].signal(libc::SIGSTOP);
    a.send(Command::LeaveReading);
    wait_until(WAIT, "a's leave taken by daemon 1", &[all[0]], || {
        a.leave_sent.load(Ordering::Acquire)
    });
    let c = Member::start(all[0], &group);
    // The fault's length (well under the 3 s suspicion timeout), not a wait for an outcome.
    std::thread::sleep(Duration::from_millis(500));
    all[1].signal(libc::SIGCONT);
    wait_until(WAIT, "a's own leave's confchg", &all, || {
        !a.joined.load(Ordering::Acquire)
    });
    wait_until(WAIT, "b and c together at b and c", &all, || {
        [&b, &c].iter().all(|m| m.saw_members(&[b.me, c.me]))
    });
    assert_leavers_records_are_a_prefix(&a, &b);
    drop((a, b, c));
}

/// Three daemons; a alone on daemon 1 and b on daemon 2 in cpg group `name`, both seen by
/// both; b's 400 messages are in the order and 200 more are in flight. Returns the group's
/// name too.
fn leaver_with_traffic_in_flight(subnet: u8, name: &str) -> (Vec<Daemon>, String, Member, Member) {
    let daemons = start_cluster(subnet);
    let group = &group_off_daemon_3(name);
    let all: Vec<&Daemon> = daemons.iter().collect();
    let a = Member::start(all[0], group);
    let b = Member::start(all[1], group);
    let two = [a.me, b.me];
    wait_until(WAIT, "two members seen by both", &all, || {
        [&a, &b].iter().all(|m| m.saw_members(&two))
    });
    b.send(Command::Publish(400));
    wait_until(WAIT, "b's 400 messages back at b", &all, || b.messages() == 400);
    b.send(Command::Publish(200));
    let group = group.clone();
    (daemons, group, a, b)
}

/// What leaver a read from the confchg of {a, b} up to its own leave's is a prefix of what
/// b read, and holds at least b's 400 messages ordered before the leave. (What a read after
/// its own confchg in the same poll, libcpg never shows.)
fn assert_leavers_records_are_a_prefix(a: &Member, b: &Member) {
    let two = [a.me, b.me];
    let mut mine = a.records_since_members(&two);
    let end = mine
        .iter()
        .position(|r| matches!(r, Rec::Confchg { left, .. } if left.contains(&(a.me, LEAVE))))
        .unwrap_or_else(|| panic!("no own leave's confchg: {mine:?}"));
    mine.truncate(end + 1);
    let at_b = b.records_since_members(&two);
    assert_eq!(at_b[..mine.len()], mine[..], "a's records are a prefix of b's");
    let before = mine.iter().filter(|r| matches!(r, Rec::Msg(..))).count();
    assert!(
        before >= 400,
        "a got the messages sent before its leave ({before})"
    );
}

/// Under `cpg_partition = "evs"` a join changes the cluster view (the group's directory),
/// not the daemons: a process that joins a cpg group later finds its join's confchg as the
/// group's first record, with no ring (view) record before it. (The log started from the
/// view counter, not the ring: libcpg's `CS_DISPATCH_ONE_NONBLOCKING` right after the join
/// found only a ring record, 8 `n2.api.*` conformance checks under `evs`.)
#[test]
fn under_evs_a_join_finds_its_confchg_first_not_a_ring() {
    let daemons = start_cluster_with(SUBNET_EVS_FIRST, "cpg_partition = \"evs\"\n");
    let all: Vec<&Daemon> = daemons.iter().collect();
    let mut kept = Vec::new();
    // Each join (a group of its own, one per daemon) changes the view for the next.
    for (k, d) in all.iter().enumerate() {
        let mut client = d.client();
        let g = client
            .join_with(&format!("cpg.evsfirst.{k}"), Rights::BOTH, GroupOptions::CPG)
            .expect("cpg join");
        let mut first = None;
        wait_until(WAIT, "the join's first record", &all, || {
            client
                .poll_blocking(g, 1, IdleStrategy::Backoff, Duration::from_millis(20), |e| {
                    first.get_or_insert(match e {
                        Event::Confchg(_) => "confchg",
                        Event::View(_) => "view (ring)",
                        _ => "other",
                    });
                })
                .expect("poll");
            first.is_some()
        });
        assert_eq!(
            first,
            Some("confchg"),
            "first record of a join on daemon {}",
            k + 1
        );
        kept.push(client);
    }
}

/// Two processes that join at once on two daemons: no order between the two joins is
/// promised (on Corosync neither: each node's join waits for its turn with the token),
/// and under `evs` the group's first configuration often takes both daemons in one
/// gather, so the later call may be ordered first. What is promised: both are members,
/// each one's first confchg with itself in it is its own join listing every process
/// ordered before it, and from the later join on every member sees the same records.
/// (Two tests assumed the first call's join came first and timed out under `evs`.)
#[test]
fn processes_joining_at_once_on_two_daemons_are_ordered_alike_everywhere() {
    let daemons = start_cluster(SUBNET_JOIN_RACE);
    let all: Vec<&Daemon> = daemons.iter().collect();
    for round in 0..3 {
        let group = &group_off_daemon_3(&format!("cpg.race{round}"));
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| Member::start(all[0], group));
            let b = s.spawn(|| Member::start(all[1], group));
            (a.join().unwrap(), b.join().unwrap())
        });
        let both = [a.me, b.me];
        wait_until(
            WAIT,
            &format!("round {round}: both members at both"),
            &all,
            || [&a, &b].iter().all(|m| m.saw_members(&both)),
        );
        // Which join the order took first: the one whose own confchg lists it alone.
        let own = |m: &Member| m.records_since_own_join()[0].clone();
        let (first, second) = if own(&a)
            == (Rec::Confchg {
                members: vec![a.me],
                joined: vec![(a.me, JOIN)],
                left: vec![],
            }) {
            (&a, &b)
        } else {
            (&b, &a)
        };
        assert_eq!(
            own(first),
            Rec::Confchg {
                members: vec![first.me],
                joined: vec![(first.me, JOIN)],
                left: vec![]
            },
            "round {round}: the first join lists its process alone"
        );
        let mut sorted = both.to_vec();
        sorted.sort_unstable();
        assert_eq!(
            own(second),
            Rec::Confchg {
                members: sorted,
                joined: vec![(second.me, JOIN)],
                left: vec![]
            },
            "round {round}: the second join lists both"
        );
        // One order from the later join on, messages included.
        a.send(Command::Publish(20));
        b.send(Command::Publish(20));
        wait_until(WAIT, &format!("round {round}: 40 messages at both"), &all, || {
            a.messages() == 40 && b.messages() == 40
        });
        assert_eq!(
            first.records_since_join_of(second.me),
            second.records_since_own_join(),
            "round {round}: the same records at both from the later join on"
        );
        drop((a, b));
    }
}

/// Under `evs` a daemon off its CPU for less than the suspicion timeout while a process
/// joins elsewhere stays in the group: its processes get no NODEDOWN and NODEUP pair
/// (the `join.m3_*` checks of the CPG conformance run, failed once on a loaded host).
/// The join is a cluster view change, so the group gathers a new list epoch; its founder
/// installed the new configuration 200 ms (`gather_timeout`) after opening it, without a
/// daemon that had not appended its `EvsJoin` by then: a second failure detector, 10 to 15
/// times quicker than the cluster's, that took a live daemon for gone (docs/cpg.md).
#[test]
fn under_evs_a_daemon_stalled_while_another_joins_is_not_taken_for_down() {
    /// How long daemon 2 stays stopped once the founder opened the new list epoch: well
    /// above the ordering layer's 200 ms, well below the 3 s suspicion timeout.
    const STALL: Duration = Duration::from_millis(800);
    let group = &group_off_daemon_3("cpg.stall");
    let daemons = start_cluster(SUBNET_STALL);
    let all: Vec<&Daemon> = daemons.iter().collect();
    let a = Member::start(all[0], group);
    wait_until(WAIT, "join of a", &all, || a.saw(&[a.me], &[(a.me, JOIN)], &[]));
    let b = Member::start(all[1], group);
    wait_until(WAIT, "join of b seen by a and b", &all, || {
        [&a, &b]
            .iter()
            .all(|m| m.saw(&[a.me, b.me], &[(b.me, JOIN)], &[]))
    });
    // Daemon 1 founds every list epoch of the group (the lowest daemon of each side).
    let mut status = all[0].client();
    let mut epochs_joined =
        || common::status_number(&status.status().unwrap(), "epochs joined").expect("evs detail in status");
    let before = epochs_joined();

    all[1].signal(libc::SIGSTOP);
    let c = Member::start(all[2], group);
    let alive = [all[0], all[2]];
    wait_until(WAIT, "daemon 1 opens the epoch of c's join", &alive, || {
        epochs_joined() > before
    });
    // The fault's length, not a wait for an outcome: a confchg of a and c alone meanwhile
    // would be the false NODEDOWN.
    std::thread::sleep(STALL);
    all[1].signal(libc::SIGCONT);

    let abc = [a.me, b.me, c.me];
    wait_until(WAIT, "a, b and c in one configuration at all", &all, || {
        [&a, &b, &c].iter().all(|m| m.saw_members(&abc))
    });
    for m in [&a, &b, &c] {
        let recs = m.recs();
        assert!(
            !recs
                .iter()
                .any(|r| matches!(r, Rec::Confchg { left, .. } if left.iter().any(|(p, _)| *p == b.me))),
            "{:?} saw b leave while its daemon was stopped for {STALL:?}: {recs:?}",
            m.me
        );
        assert!(
            m.saw(&abc, &[(c.me, JOIN)], &[]),
            "{:?}: no join of c with a and b: {recs:?}",
            m.me
        );
    }
    drop((a, b, c));
}

/// libcpg's flow-control window (`WINDOW_MSGS` in capi/cpg/libcpg.c) is the ordered
/// layer's `sender_window()` under the settings of every CPG group: smaller, a flooding
/// sender's appends wait for the others' progress (2.5x less throughput at 512, docs/cpg.md
/// "The flood's window"); larger, only the flood's latency grows.
#[test]
fn libcpg_window_is_the_cpg_groups_sender_window() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../capi/cpg/libcpg.c");
    let source = std::fs::read_to_string(path).unwrap();
    let value = source
        .lines()
        .find_map(|l| l.trim().strip_prefix("#define WINDOW_MSGS "))
        .unwrap_or_else(|| panic!("no `#define WINDOW_MSGS` in {path}"));
    let window: u32 = value
        .trim()
        .trim_end_matches('u')
        .parse()
        .unwrap_or_else(|e| panic!("WINDOW_MSGS {value:?}: {e}"));
    let membership = tutti_proto::Settings::default();
    let settings = tutti_daemon::cluster::group_settings(true, true, &membership);
    assert_eq!(window, settings.sender_window());
}
