//! Jepsen-style random operations against real `tuttid` daemons.
//!
//! N daemons run on loopback (127.0.77.1.., UDP port 17700) and form a cluster. From
//! a seed, a generator draws a sequence of operations (the *plan*): publisher sessions that
//! start, publish at their own pace and stop (several per daemon, in turn and at once),
//! subscribers that join and leave, kill -9 of a daemon and its later start, crash-restarts
//! with or without injected faults (`[net.fault]` loss, or a partition from some or all of
//! the other daemons), and pauses (SIGSTOP ... SIGCONT). A finale heals every fault, stops
//! the publishers and lets the cluster settle before the subscribers leave. The plan depends
//! on the seed only (the generator models which daemons run and which sessions live on
//! them), so a failing seed replays the same operations; only their timing varies.
//!
//! Every publish (publisher, counter, time) and every event a subscriber reads (message,
//! `Lost`, `Lagged`, with its time) is recorded, and a checker judges the history:
//!
//! - no phantom: a delivered payload is one a publisher of this run published, intact,
//!   with the sender id of that publisher's session and daemon;
//! - no duplicate: a subscriber gets a message at most once;
//! - FIFO: per publisher, a subscriber gets counters in increasing order, and a gap is
//!   preceded by a `Lost` notice of the publisher's daemon (or a `Lagged`) — a session never
//!   outlives its daemon, so a daemon restart never falls inside one publisher-subscriber
//!   stream;
//! - delivered or `Lost`: a message is *owed* to a subscriber when the subscriber had been
//!   joined for a while (`JOIN_SETTLE_US`) before it was published, with no fault around the
//!   join that could delay it, and stayed joined (its daemon alive) until well after
//!   (`SETTLE_US`) the message and every disturbance that followed it had healed, and the
//!   publisher's daemon lived that long too (the message could leave it). `Lost` counts
//!   messages per daemon, not per session, so per (subscriber, publishing daemon): owed
//!   messages delivered + `Lost` + `Lagged` >= owed;
//! - no false `Lost`: up to each `Lost` notice, the count a subscriber was told lost from a
//!   daemon does not exceed the messages of that daemon published by then that it never got;
//! - sessions: a session ends only when asked or when its daemon dies; none hangs.
//!
//! Disturbances (what suspends "delivered or `Lost`" until healed, plus `TAIL_US` for the
//! views to merge): a daemon down (kill .. start), a daemon paused, and any stretch in which
//! the running, unpaused daemons cannot all reach each other through the configured cuts.
//! A lossy daemon, or one cut from some but not all of the others, is no disturbance: the
//! promise holds through it (repair by gossip, through a third daemon if need be); it only
//! delays joins. The generator alternates calm phases (sessions come and go, faults heal)
//! and storms (faults begin), so that the checker has quiet stretches to judge.
//!
//! Run-time faults: the fault-injection layer (`daemon/src/net/fault.rs`) takes its loss and
//! partition settings at start only. `FaultyTransport::set_partitioned` exists, but nothing
//! in the daemon calls it, and a SIGHUP reload of a changed `[net]` only logs that it needs a
//! restart. So a loss burst or a partition here is a crash-restart of one daemon with a
//! `[net.fault]` config, lasting until a later restart heals it; a partition that keeps the
//! daemon's sessions alive is a pause (SIGSTOP), which cuts it off from everyone.
//!
//! Environment (all optional):
//!
//! - `TUTTI_RANDOM_OPS_SEED`: the seed (default 1; `random` draws one from the clock);
//! - `TUTTI_RANDOM_OPS_OPS`: random operations per run (default 40, the short CI run);
//! - `TUTTI_RANDOM_OPS_RUNS`: runs, with seeds seed, seed + 1, ... (default 1);
//! - `TUTTI_RANDOM_OPS_DAEMONS`: daemons (default 3, 2 to 9);
//! - `TUTTI_RANDOM_OPS_VERBOSE=1`: print every run's report, not only a failing one's.
//!
//! Each run ends with a closing note (seed, operations, publishes, deliveries, violations);
//! a failing run also prints the command that replays it, the operations as executed with
//! their times, every daemon incarnation and session, the violations, and keeps the daemons'
//! logs and configs. `publishers_in_turn_on_a_daemon_that_left_the_group_reach_remote_subscribers`
//! runs the operations of one bug the random runs found as a fixed plan (127.0.78.x).
//!
//!     cargo nextest run -p tutti-daemon --test random_ops                 # as CI: seed 1, 40 ops
//!     TUTTI_RANDOM_OPS_SEED=100 TUTTI_RANDOM_OPS_OPS=150 TUTTI_RANDOM_OPS_RUNS=5 \
//!         cargo nextest run --release -p tutti-daemon --test random_ops random_operations --no-capture

mod common;

use common::{eventually, status_number, Daemon};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tutti_client::{Client, Error as ClientError, Event, GroupId, IdleStrategy, OfferError};

/// 127.0.77.x for the random runs, 127.0.78.x for the fixed scenario (tests run at once).
const SUBNET: u8 = 77;
const SCENARIO_SUBNET: u8 = 78;
const BASE_PORT: u16 = 17700;
const GROUP: &str = "jepsen";

/// A subscriber's join is taken to be in effect this long after it returned (the views
/// must carry it), and after any disturbance around it healed.
const JOIN_SETTLE_US: u64 = 2_000_000;
/// Time after a message (and after every disturbance that followed it healed) within which
/// it is delivered or reported `Lost`: a retention (2 s) and the grace rounds for repair,
/// and slack for a loaded 2-core machine.
const SETTLE_US: u64 = 4_000_000;
/// A disturbance counts as healed this long after the daemon came back (views merge).
const TAIL_US: u64 = 2_000_000;
/// The finale waits this long after the last publisher stopped before subscribers leave.
const FINAL_SETTLE_MS: u64 = 8_000;
/// How long the run waits for a session thread to end once asked.
const THREAD_WAIT: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------ randomness

/// splitmix64: a small deterministic generator (the plan depends on the seed only).
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in lo..=hi.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

// ------------------------------------------------------------------ the plan

/// Faults a daemon incarnation starts with (`[net.fault]`); none: a healthy daemon.
#[derive(Debug, Clone, Default, PartialEq)]
struct Faults {
    /// Probability of dropping each datagram, outgoing and incoming.
    loss: f64,
    /// Daemons (0-based) this one exchanges no datagram with.
    cut: Vec<usize>,
    seed: u64,
}

impl Faults {
    fn active(&self) -> bool {
        self.loss > 0.0 || !self.cut.is_empty()
    }
}

impl fmt::Display for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.active() {
            return write!(f, "healthy");
        }
        let mut parts = Vec::new();
        if self.loss > 0.0 {
            parts.push(format!("loss {}", self.loss));
        }
        if !self.cut.is_empty() {
            let cut: Vec<String> = self.cut.iter().map(|d| format!("d{}", d + 1)).collect();
            parts.push(format!("cut from {}", cut.join(",")));
        }
        write!(f, "{} (fault seed {})", parts.join(", "), self.seed)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    /// A publisher session on `daemon`: every `interval_ms`, `burst` messages of `size` bytes.
    StartPublisher {
        publisher: usize,
        daemon: usize,
        interval_ms: u64,
        burst: u32,
        size: usize,
    },
    /// Flush, leave and disconnect (no-op if its daemon already died).
    StopPublisher {
        publisher: usize,
    },
    JoinSubscriber {
        subscriber: usize,
        daemon: usize,
    },
    LeaveSubscriber {
        subscriber: usize,
    },
    /// kill -9; its sessions end.
    Kill {
        daemon: usize,
    },
    /// Starts a killed daemon.
    Start {
        daemon: usize,
        faults: Faults,
    },
    /// kill -9 and start again at once, with `faults` (healthy: a crash-restart or a heal).
    Restart {
        daemon: usize,
        faults: Faults,
    },
    /// SIGSTOP: cut off from everyone, its sessions stay.
    Pause {
        daemon: usize,
    },
    /// SIGCONT.
    Resume {
        daemon: usize,
    },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::StartPublisher {
                publisher,
                daemon,
                interval_ms,
                burst,
                size,
            } => write!(
                f,
                "start publisher p{publisher} on d{} ({burst} x {size} B every {interval_ms} ms)",
                daemon + 1
            ),
            Op::StopPublisher { publisher } => write!(f, "stop publisher p{publisher}"),
            Op::JoinSubscriber { subscriber, daemon } => {
                write!(f, "join subscriber s{subscriber} on d{}", daemon + 1)
            }
            Op::LeaveSubscriber { subscriber } => write!(f, "leave subscriber s{subscriber}"),
            Op::Kill { daemon } => write!(f, "kill -9 d{}", daemon + 1),
            Op::Start { daemon, faults } => write!(f, "start d{} {faults}", daemon + 1),
            Op::Restart { daemon, faults } => {
                write!(f, "kill -9 and restart d{} {faults}", daemon + 1)
            }
            Op::Pause { daemon } => write!(f, "pause (SIGSTOP) d{}", daemon + 1),
            Op::Resume { daemon } => write!(f, "resume (SIGCONT) d{}", daemon + 1),
        }
    }
}

/// One operation after a delay.
#[derive(Debug, Clone, PartialEq)]
struct Step {
    delay_ms: u64,
    op: Op,
    /// Drawn in a storm phase (faults may begin).
    storm: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct Plan {
    steps: Vec<Step>,
    /// Steps before the finale.
    random: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Model {
    Up,
    Faulty,
    Paused { faulty: bool },
    Down,
}

/// Draws a plan while modelling the cluster, so every operation is valid where it runs.
struct Generator {
    rng: Rng,
    n: usize,
    state: Vec<Model>,
    /// (id, daemon) of publishers and subscribers alive in the model.
    pubs: Vec<(usize, usize)>,
    subs: Vec<(usize, usize)>,
    next_pub: usize,
    next_sub: usize,
    steps: Vec<Step>,
    /// Random steps wanted (a step that brings a second operation stays within it).
    target: usize,
    /// Phases alternate: in a storm faults begin; in a calm only sessions change and
    /// faults heal (a faulty daemon may stay so for a while), so the checker has quiet
    /// stretches in which to judge delivery.
    storm: bool,
    phase_left: usize,
}

const MAX_PUBLISHERS: usize = 4;
const MAX_SUBSCRIBERS: usize = 6;

impl Generator {
    fn running(&self) -> Vec<usize> {
        (0..self.n)
            .filter(|&d| matches!(self.state[d], Model::Up | Model::Faulty))
            .collect()
    }

    fn any(&self, f: impl Fn(Model) -> bool) -> Vec<usize> {
        (0..self.n).filter(|&d| f(self.state[d])).collect()
    }

    fn push(&mut self, delay_ms: u64, op: Op) {
        self.apply(&op);
        let storm = self.storm;
        self.steps.push(Step { delay_ms, op, storm });
    }

    /// The model's effect of `op`.
    fn apply(&mut self, op: &Op) {
        let end_sessions = |g: &mut Generator, d: usize| {
            g.pubs.retain(|&(_, pd)| pd != d);
            g.subs.retain(|&(_, sd)| sd != d);
        };
        match *op {
            Op::StartPublisher {
                publisher, daemon, ..
            } => {
                self.pubs.push((publisher, daemon));
                self.next_pub = publisher + 1;
            }
            Op::StopPublisher { publisher } => self.pubs.retain(|&(p, _)| p != publisher),
            Op::JoinSubscriber { subscriber, daemon } => {
                self.subs.push((subscriber, daemon));
                self.next_sub = subscriber + 1;
            }
            Op::LeaveSubscriber { subscriber } => self.subs.retain(|&(s, _)| s != subscriber),
            Op::Kill { daemon } => {
                self.state[daemon] = Model::Down;
                end_sessions(self, daemon);
            }
            Op::Start { daemon, ref faults } => {
                self.state[daemon] = if faults.active() { Model::Faulty } else { Model::Up };
            }
            Op::Restart { daemon, ref faults } => {
                end_sessions(self, daemon);
                self.state[daemon] = if faults.active() { Model::Faulty } else { Model::Up };
            }
            Op::Pause { daemon } => {
                self.state[daemon] = Model::Paused {
                    faulty: self.state[daemon] == Model::Faulty,
                }
            }
            Op::Resume { daemon } => {
                self.state[daemon] = match self.state[daemon] {
                    Model::Paused { faulty: true } => Model::Faulty,
                    _ => Model::Up,
                }
            }
        }
    }

    fn publisher(&mut self, daemon: usize) -> Op {
        Op::StartPublisher {
            publisher: self.next_pub,
            daemon,
            interval_ms: self.rng.range(10, 50),
            burst: self.rng.range(1, 4) as u32,
            size: self.rng.range(24, 700) as usize,
        }
    }

    /// Faults for a (re)start of `daemon`: at most one faulty daemon at a time.
    fn faults(&mut self, daemon: usize) -> Faults {
        let others_faulty = (0..self.n)
            .any(|d| d != daemon && matches!(self.state[d], Model::Faulty | Model::Paused { faulty: true }));
        let roll = self.rng.below(10);
        let seed = self.rng.range(1, 999_999);
        if others_faulty || roll < 4 {
            return Faults::default();
        }
        let others: Vec<usize> = (0..self.n).filter(|&d| d != daemon).collect();
        match roll {
            4..=6 => Faults {
                loss: [0.05, 0.2, 0.4][self.rng.below(3)],
                cut: Vec::new(),
                seed,
            },
            7 | 8 => Faults {
                loss: 0.0,
                cut: vec![others[self.rng.below(others.len())]],
                seed,
            },
            _ => Faults {
                loss: 0.0,
                cut: others,
                seed,
            },
        }
    }

    /// One random step (weighted among the operations valid in the model).
    fn step(&mut self) {
        let running = self.running();
        let down = self.any(|s| s == Model::Down);
        let paused = self.any(|s| matches!(s, Model::Paused { .. }));
        let faulty = self.any(|s| s == Model::Faulty);
        let calm = down.is_empty() && paused.is_empty();
        if self.phase_left == 0 {
            self.storm = !self.storm;
            self.phase_left = if self.storm {
                self.rng.range(3, 8) as usize
            } else {
                self.rng.range(6, 14) as usize
            };
        }
        self.phase_left -= 1;
        let mut choices: Vec<(u32, u8)> = Vec::new();
        if self.pubs.len() < MAX_PUBLISHERS && !running.is_empty() {
            choices.push((10, 0));
        }
        if !self.pubs.is_empty() {
            choices.push((6, 1));
        }
        if self.subs.len() < MAX_SUBSCRIBERS && !running.is_empty() {
            choices.push((6, 2));
        }
        if self.subs.len() > 2 {
            choices.push((3, 3));
        }
        if self.storm && calm && running.len() == self.n {
            choices.push((3, 4)); // kill
            choices.push((3, 5)); // pause
            choices.push((4, 6)); // restart (maybe with faults)
        }
        if !down.is_empty() {
            choices.push((14, 7));
        }
        if !paused.is_empty() {
            choices.push((14, 8));
        }
        if !faulty.is_empty() && calm {
            choices.push((4, 9)); // heal
        }
        let total: u32 = choices.iter().map(|c| c.0).sum();
        let mut roll = self.rng.below(total as usize) as u32;
        let kind = choices
            .iter()
            .find(|c| {
                if roll < c.0 {
                    true
                } else {
                    roll -= c.0;
                    false
                }
            })
            .expect("a choice")
            .1;
        let delay = if self.storm {
            self.rng.range(50, 800)
        } else {
            self.rng.range(100, 1200)
        };
        match kind {
            0 => {
                // Often on a daemon with no session of ours: it joins the group afresh
                // (perhaps again, after an earlier publisher there left).
                let lonely: Vec<usize> = running
                    .iter()
                    .copied()
                    .filter(|&d| !self.pubs.iter().chain(&self.subs).any(|&(_, sd)| sd == d))
                    .collect();
                let d = if !lonely.is_empty() && self.rng.chance(50) {
                    lonely[self.rng.below(lonely.len())]
                } else {
                    running[self.rng.below(running.len())]
                };
                let op = self.publisher(d);
                self.push(delay, op);
                if self.pubs.len() < MAX_PUBLISHERS && self.rng.chance(25) && self.steps.len() < self.target {
                    // Another one on the same daemon at once.
                    let op = self.publisher(d);
                    self.push(0, op);
                }
            }
            1 => {
                let (p, d) = self.pubs[self.rng.below(self.pubs.len())];
                self.push(delay, Op::StopPublisher { publisher: p });
                if self.rng.chance(30) && running.contains(&d) && self.steps.len() < self.target {
                    // The next one on the same daemon, in turn: at once, or after the
                    // daemon may have left the group (it lingers a retention, 2 s).
                    let op = self.publisher(d);
                    let gap = if self.rng.chance(50) {
                        self.rng.range(0, 300)
                    } else {
                        self.rng.range(2500, 5000)
                    };
                    self.push(gap, op);
                }
            }
            2 => {
                let d = running[self.rng.below(running.len())];
                let subscriber = self.next_sub;
                self.push(
                    delay,
                    Op::JoinSubscriber {
                        subscriber,
                        daemon: d,
                    },
                );
            }
            3 => {
                let (s, _) = self.subs[self.rng.below(self.subs.len())];
                self.push(delay, Op::LeaveSubscriber { subscriber: s });
            }
            4 => {
                let d = self.rng.below(self.n);
                self.push(delay, Op::Kill { daemon: d });
            }
            5 => {
                let d = self.rng.below(self.n);
                self.push(delay, Op::Pause { daemon: d });
            }
            6 => {
                let d = self.rng.below(self.n);
                let faults = self.faults(d);
                self.push(delay, Op::Restart { daemon: d, faults });
            }
            7 => {
                let d = down[self.rng.below(down.len())];
                let faults = self.faults(d);
                self.push(delay, Op::Start { daemon: d, faults });
            }
            8 => {
                let d = paused[self.rng.below(paused.len())];
                self.push(delay, Op::Resume { daemon: d });
            }
            _ => {
                let d = faulty[self.rng.below(faulty.len())];
                self.push(
                    delay,
                    Op::Restart {
                        daemon: d,
                        faults: Faults::default(),
                    },
                );
            }
        }
    }
}

/// The plan of a seed: a subscriber on every daemon, `ops` random operations in all, then
/// the finale (heal everything, stop publishers, settle, leave).
fn plan(seed: u64, n: usize, ops: usize) -> Plan {
    let mut g = Generator {
        rng: Rng(seed ^ 0x7475_7474_695f_6a65),
        n,
        state: vec![Model::Up; n],
        pubs: Vec::new(),
        subs: Vec::new(),
        next_pub: 0,
        next_sub: 0,
        steps: Vec::new(),
        target: ops,
        storm: false,
        phase_left: 0,
    };
    g.phase_left = g.rng.range(6, 14) as usize;
    // A subscriber on every daemon but the first (which starts with no session).
    for d in 1..n.min(ops + 1) {
        let subscriber = g.next_sub;
        let delay = g.rng.range(0, 100);
        g.push(
            delay,
            Op::JoinSubscriber {
                subscriber,
                daemon: d,
            },
        );
    }
    while g.steps.len() < ops {
        g.step();
    }
    let random = g.steps.len();
    for d in 0..n {
        if let Model::Paused { .. } = g.state[d] {
            g.push(200, Op::Resume { daemon: d });
        }
    }
    for d in 0..n {
        match g.state[d] {
            Model::Down => g.push(
                200,
                Op::Start {
                    daemon: d,
                    faults: Faults::default(),
                },
            ),
            Model::Faulty => g.push(
                200,
                Op::Restart {
                    daemon: d,
                    faults: Faults::default(),
                },
            ),
            _ => {}
        }
    }
    for (p, _) in g.pubs.clone() {
        g.push(100, Op::StopPublisher { publisher: p });
    }
    let mut delay = FINAL_SETTLE_MS;
    for (s, _) in g.subs.clone() {
        g.push(delay, Op::LeaveSubscriber { subscriber: s });
        delay = 0;
    }
    Plan {
        steps: g.steps,
        random,
    }
}

// ------------------------------------------------------------------ payloads

/// Publisher `publisher`'s message `counter`: "seed:publisher:counter:" then filler that
/// depends on all three and the position, so a subscriber can check it whole.
fn payload(seed: u64, publisher: usize, counter: u64, size: usize) -> Vec<u8> {
    let mut m = format!("{seed:x}:{publisher}:{counter}:").into_bytes();
    let head = m.len();
    m.resize(size.max(head), 0);
    for (i, b) in m.iter_mut().enumerate().skip(head) {
        *b = filler(publisher, counter, i);
    }
    m
}

fn filler(publisher: usize, counter: u64, i: usize) -> u8 {
    b'a' + ((publisher as u64 * 31 + counter * 7 + i as u64) % 26) as u8
}

/// (publisher, counter) of an intact payload of run `seed`.
fn parse_payload(seed: u64, m: &[u8]) -> Option<(u32, u32)> {
    let mut fields = m.splitn(4, |&b| b == b':');
    let s = std::str::from_utf8(fields.next()?).ok()?;
    let p = std::str::from_utf8(fields.next()?).ok()?;
    let c = std::str::from_utf8(fields.next()?).ok()?;
    let rest = fields.next()?;
    if u64::from_str_radix(s, 16).ok()? != seed {
        return None;
    }
    let (publisher, counter): (u32, u32) = (p.parse().ok()?, c.parse().ok()?);
    let head = m.len() - rest.len();
    let intact = rest
        .iter()
        .enumerate()
        .all(|(i, &b)| b == filler(publisher as usize, u64::from(counter), head + i));
    intact.then_some((publisher, counter))
}

// ------------------------------------------------------------------ the history

/// Microseconds since the run's clock started.
type Micros = u64;

#[derive(Debug, Clone)]
struct Incarnation {
    daemon: usize,
    started: Micros,
    died: Option<Micros>,
    faults: Faults,
    /// SIGSTOP .. SIGCONT (None: until it died or the run ended).
    pauses: Vec<(Micros, Option<Micros>)>,
}

#[derive(Debug, Clone, Default)]
struct PubRecord {
    id: usize,
    daemon: usize,
    incarnation: usize,
    /// Its sender id (`daemon << 32 | session`), once attached.
    sender: u64,
    joined: Option<Micros>,
    ended: Micros,
    /// Why it ended: "stopped", or what went wrong.
    end: String,
    /// Time each message (counter = index) was offered, taken just before the offer.
    sent: Vec<Micros>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Message {
        t: Micros,
        sender: u64,
        publisher: u32,
        counter: u32,
    },
    /// A payload that is not an intact message of this run.
    Garbage {
        t: Micros,
        sender: u64,
        len: u32,
    },
    Lost {
        t: Micros,
        sender: u64,
        count: u64,
    },
    Lagged {
        t: Micros,
        missed: u64,
    },
}

#[derive(Debug, Clone, Default)]
struct SubRecord {
    id: usize,
    daemon: usize,
    incarnation: usize,
    joined: Option<Micros>,
    /// Its last poll (all it read was read by then).
    ended: Micros,
    end: String,
    seen: Vec<Seen>,
}

#[derive(Debug, Clone, Default)]
struct History {
    daemons: usize,
    incarnations: Vec<Incarnation>,
    publishers: Vec<PubRecord>,
    subscribers: Vec<SubRecord>,
    /// Sessions that did not end within `THREAD_WAIT` of being asked.
    hung: Vec<String>,
}

// ------------------------------------------------------------------ the checker

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Phantom,
    Duplicate,
    Reorder,
    SilentGap,
    Missing,
    FalseLost,
    BadLost,
    Session,
}

#[derive(Debug, Clone)]
struct Violation {
    kind: Kind,
    text: String,
}

#[derive(Debug, Clone, Default)]
struct Stats {
    publishes: u64,
    deliveries: u64,
    owed: u64,
    owed_delivered: u64,
    lost_notices: u64,
    lost_count: u64,
    lagged: u64,
    disturbances: usize,
}

#[derive(Debug, Clone, Default)]
struct Verdict {
    violations: Vec<Violation>,
    stats: Stats,
}

impl Verdict {
    fn by_kind(&self) -> BTreeMap<Kind, usize> {
        let mut m = BTreeMap::new();
        for v in &self.violations {
            *m.entry(v.kind).or_insert(0) += 1;
        }
        m
    }
}

fn secs(t: Micros) -> String {
    if t == Micros::MAX {
        "end".to_string()
    } else {
        format!("{:.3} s", t as f64 / 1e6)
    }
}

/// Intervals when the cluster is disturbed: a message published in one may take until its
/// end (plus `TAIL_US`) to be repaired. `join` adds the lifetimes of faulty incarnations,
/// during which a join may not reach the views in `JOIN_SETTLE_US`.
struct Disturbances {
    msg: Vec<(Micros, Micros)>,
    join: Vec<(Micros, Micros)>,
}

fn with_tail(end: Micros) -> Micros {
    end.saturating_add(TAIL_US)
}

fn disturbances(h: &History) -> Disturbances {
    let mut msg = Vec::new();
    let mut join = Vec::new();
    for d in 0..h.daemons {
        let mut incs: Vec<&Incarnation> = h.incarnations.iter().filter(|i| i.daemon == d).collect();
        incs.sort_by_key(|i| i.started);
        for (k, inc) in incs.iter().enumerate() {
            if let Some(died) = inc.died {
                let back = incs.get(k + 1).map_or(Micros::MAX, |next| next.started);
                msg.push((died, with_tail(back)));
            }
            for &(a, b) in &inc.pauses {
                msg.push((a, with_tail(b.or(inc.died).unwrap_or(Micros::MAX))));
            }
            if inc.faults.active() {
                join.push((inc.started, with_tail(inc.died.unwrap_or(Micros::MAX))));
            }
        }
    }
    // Stretches when the running, unpaused daemons cannot all reach each other.
    let mut points: Vec<Micros> = Vec::new();
    for inc in &h.incarnations {
        points.push(inc.started);
        points.extend(inc.died);
        for &(a, b) in &inc.pauses {
            points.push(a);
            points.extend(b);
        }
    }
    points.sort_unstable();
    points.dedup();
    for (i, &t) in points.iter().enumerate() {
        let live: Vec<&Incarnation> = h
            .incarnations
            .iter()
            .filter(|inc| {
                inc.started <= t
                    && inc.died.is_none_or(|x| x > t)
                    && !inc.pauses.iter().any(|&(a, b)| a <= t && b.is_none_or(|b| b > t))
            })
            .collect();
        if live.len() >= 2 && !connected(&live) {
            let until = points.get(i + 1).copied().unwrap_or(Micros::MAX);
            msg.push((t, with_tail(until)));
        }
    }
    join.extend_from_slice(&msg);
    msg.sort_unstable();
    join.sort_unstable();
    Disturbances { msg, join }
}

/// Whether every live daemon reaches every other one (a cut works both ways).
fn connected(live: &[&Incarnation]) -> bool {
    let cut = |a: &Incarnation, b: &Incarnation| {
        a.faults.cut.contains(&b.daemon) || b.faults.cut.contains(&a.daemon)
    };
    let mut reached = vec![false; live.len()];
    reached[0] = true;
    let mut stack = vec![0];
    while let Some(i) = stack.pop() {
        for j in 0..live.len() {
            if !reached[j] && !cut(live[i], live[j]) {
                reached[j] = true;
                stack.push(j);
            }
        }
    }
    reached.iter().all(|&r| r)
}

/// The time from which things settle after `t`: the end of every disturbance under way at
/// `t` or starting within `window` of it (repeatedly, as one may chain into the next).
fn settle_point(t: Micros, intervals: &[(Micros, Micros)], window: Micros) -> Micros {
    let mut q = t;
    loop {
        let mut moved = false;
        for &(a, b) in intervals {
            if a <= q.saturating_add(window) && b > q {
                q = b;
                moved = true;
            }
        }
        if !moved || q == Micros::MAX {
            return q;
        }
    }
}

/// Counters as ranges: "3..7, 9".
fn ranges(counters: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < counters.len() {
        let mut j = i;
        while j + 1 < counters.len() && counters[j + 1] == counters[j] + 1 {
            j += 1;
        }
        if !out.is_empty() {
            out.push_str(", ");
        }
        if j == i {
            let _ = write!(out, "{}", counters[i]);
        } else {
            let _ = write!(out, "{}..{}", counters[i], counters[j]);
        }
        i = j + 1;
    }
    out
}

fn check(h: &History) -> Verdict {
    let mut v = Verdict::default();
    let mut flag = |kind: Kind, text: String| v.violations.push(Violation { kind, text });
    let dist = disturbances(h);
    let pubs: HashMap<usize, &PubRecord> = h.publishers.iter().map(|p| (p.id, p)).collect();
    let mut stats = Stats {
        publishes: h.publishers.iter().map(|p| p.sent.len() as u64).sum(),
        disturbances: dist.msg.len(),
        ..Stats::default()
    };
    let died = |inc: usize| h.incarnations.get(inc).and_then(|i| i.died);

    for what in &h.hung {
        flag(
            Kind::Session,
            format!("{what} did not end within {THREAD_WAIT:?}"),
        );
    }
    // A session that ended other than when asked, while its daemon was alive and stayed
    // so for a second (a session on a killed daemon notices within a poll slice).
    let failed =
        |end: &str, at: Micros, inc: usize| end != "stopped" && died(inc).is_none_or(|d| d > at + 1_000_000);
    for p in &h.publishers {
        if failed(&p.end, p.ended, p.incarnation) {
            flag(
                Kind::Session,
                format!(
                    "publisher p{} on d{}: {} at {}",
                    p.id,
                    p.daemon + 1,
                    p.end,
                    secs(p.ended)
                ),
            );
        }
    }

    // When each message settles (the same for every subscriber).
    let settled: HashMap<usize, Vec<Micros>> = h
        .publishers
        .iter()
        .map(|p| {
            let q = p
                .sent
                .iter()
                .map(|&t| settle_point(t, &dist.msg, SETTLE_US))
                .collect();
            (p.id, q)
        })
        .collect();

    for s in &h.subscribers {
        let name = format!("subscriber s{} on d{}", s.id, s.daemon + 1);
        if failed(&s.end, s.ended, s.incarnation) {
            flag(Kind::Session, format!("{name}: {} at {}", s.end, secs(s.ended)));
        }
        let Some(joined) = s.joined else { continue };
        let end = s.ended.min(died(s.incarnation).unwrap_or(Micros::MAX));
        let mut delivered: HashSet<(u32, u32)> = HashSet::new();
        // Per publisher: (last counter, Lost epoch of its daemon then, Lagged epoch then).
        let mut last: HashMap<u32, (u32, u64, u64)> = HashMap::new();
        let mut lost_epoch: HashMap<u64, u64> = HashMap::new();
        let mut lagged_epoch = 0u64;
        let mut lost_by_daemon: HashMap<usize, u64> = HashMap::new();
        let mut lagged_total = 0u64;
        // (time, cumulative count) of each Lost notice, per daemon.
        let mut lost_notices: HashMap<usize, Vec<(Micros, u64)>> = HashMap::new();
        for e in &s.seen {
            match *e {
                Seen::Message {
                    t,
                    sender,
                    publisher,
                    counter,
                } => {
                    stats.deliveries += 1;
                    let Some(p) = pubs.get(&(publisher as usize)) else {
                        flag(
                            Kind::Phantom,
                            format!(
                                "{name}: message p{publisher} #{counter} at {} from an unknown publisher",
                                secs(t)
                            ),
                        );
                        continue;
                    };
                    if counter as usize >= p.sent.len() {
                        flag(
                            Kind::Phantom,
                            format!(
                                "{name}: p{publisher} #{counter} at {} was never published (p{publisher} published {})",
                                secs(t),
                                p.sent.len()
                            ),
                        );
                        continue;
                    }
                    if sender != p.sender {
                        flag(
                            Kind::Phantom,
                            format!(
                                "{name}: p{publisher} #{counter} at {} came with sender {sender:#x}, published as {:#x}",
                                secs(t),
                                p.sender
                            ),
                        );
                    }
                    if !delivered.insert((publisher, counter)) {
                        flag(
                            Kind::Duplicate,
                            format!("{name}: p{publisher} #{counter} delivered again at {}", secs(t)),
                        );
                        continue;
                    }
                    let daemon_id = (p.daemon as u64 + 1) << 32;
                    let epoch = lost_epoch.get(&daemon_id).copied().unwrap_or(0);
                    if let Some(&(prev, lost_then, lagged_then)) = last.get(&publisher) {
                        if counter < prev {
                            flag(
                                Kind::Reorder,
                                format!("{name}: p{publisher} #{counter} at {} after #{prev}", secs(t)),
                            );
                            continue;
                        }
                        if counter > prev + 1 && epoch == lost_then && lagged_epoch == lagged_then {
                            let around = dist
                                .msg
                                .iter()
                                .any(|&(a, b)| a <= t && b >= p.sent[prev as usize + 1]);
                            flag(
                                Kind::SilentGap,
                                format!(
                                    "{name}: p{publisher} (d{}) #{prev} then #{counter} at {}: {} skipped with no Lost notice{}",
                                    p.daemon + 1,
                                    secs(t),
                                    counter - prev - 1,
                                    if around { " (a disturbance overlapped)" } else { "" }
                                ),
                            );
                        }
                    }
                    last.insert(publisher, (counter, epoch, lagged_epoch));
                }
                Seen::Garbage { t, sender, len } => {
                    stats.deliveries += 1;
                    flag(
                        Kind::Phantom,
                        format!("{name}: {len}-byte payload from {sender:#x} at {} is no intact message of this run", secs(t)),
                    );
                }
                Seen::Lost { t, sender, count } => {
                    stats.lost_notices += 1;
                    stats.lost_count += count;
                    let daemon = (sender >> 32) as usize;
                    if sender & 0xffff_ffff != 0 || daemon == 0 || daemon > h.daemons || count == 0 {
                        flag(
                            Kind::BadLost,
                            format!(
                                "{name}: Lost {{ sender: {sender:#x}, count: {count} }} at {}",
                                secs(t)
                            ),
                        );
                        continue;
                    }
                    *lost_epoch.entry(sender).or_insert(0) += 1;
                    let total = lost_by_daemon.entry(daemon - 1).or_insert(0);
                    *total += count;
                    lost_notices.entry(daemon - 1).or_default().push((t, *total));
                }
                Seen::Lagged { missed, .. } => {
                    stats.lagged += 1;
                    lagged_epoch += 1;
                    lagged_total += missed;
                }
            }
        }

        // Delivered or Lost, per publishing daemon.
        let eff_join = settle_point(joined, &dist.join, JOIN_SETTLE_US).saturating_add(JOIN_SETTLE_US);
        for d in 0..h.daemons {
            let (mut owed, mut got) = (0u64, 0u64);
            let mut missing: Vec<String> = Vec::new();
            let mut undelivered: Vec<Micros> = Vec::new();
            // Publish times of owed messages not delivered.
            let mut unmet: Vec<Micros> = Vec::new();
            for p in h.publishers.iter().filter(|p| p.daemon == d) {
                let q = &settled[&p.id];
                let p_died = died(p.incarnation);
                let mut miss: Vec<u32> = Vec::new();
                for (c, &t) in p.sent.iter().enumerate() {
                    let have = delivered.contains(&(p.id as u32, c as u32));
                    if !have {
                        undelivered.push(t);
                    }
                    let ready = q[c].saturating_add(SETTLE_US);
                    if t >= eff_join && ready <= end && p_died.is_none_or(|x| x >= ready) {
                        owed += 1;
                        if have {
                            got += 1;
                        } else {
                            miss.push(c as u32);
                            unmet.push(t);
                        }
                    }
                }
                if !miss.is_empty() {
                    missing.push(format!(
                        "p{} #{} (published {}..{}){}",
                        p.id,
                        ranges(&miss),
                        secs(p.sent[miss[0] as usize]),
                        secs(p.sent[*miss.last().expect("not empty") as usize]),
                        rejoin_note(h, p)
                    ));
                }
            }
            stats.owed += owed;
            stats.owed_delivered += got;
            let lost = lost_by_daemon.get(&d).copied().unwrap_or(0);
            let notices = lost_notices.get(&d).map(Vec::as_slice).unwrap_or_default();
            let unreported = unreported(&mut unmet, notices, lagged_total);
            if unreported > 0 {
                flag(
                    Kind::Missing,
                    format!(
                        "{name} (in effect {}..{}): from d{} {owed} owed, {got} delivered, Lost {lost}, Lagged {lagged_total}: \
                         {unreported} neither delivered nor reported Lost after they were published; not delivered: {}",
                        secs(eff_join),
                        secs(end),
                        d + 1,
                        missing.join("; ")
                    ),
                );
            }
            // No false Lost: never more than what it had not got of that daemon by then.
            undelivered.sort_unstable();
            for &(t, total) in lost_notices.get(&d).map(Vec::as_slice).unwrap_or_default() {
                let candidates = undelivered.partition_point(|&x| x < t) as u64;
                if total > candidates {
                    flag(
                        Kind::FalseLost,
                        format!(
                            "{name}: by {} told {total} lost from d{}, but only {candidates} of its messages published by then never arrived",
                            secs(t),
                            d + 1
                        ),
                    );
                    break;
                }
            }
        }
    }
    v.stats = stats;
    v
}

/// How many of the owed messages published at `unmet` (not delivered) no `Lost` notice can
/// account for. A notice counts messages published before it arrived, of any session of
/// the daemon and not only owed ones, so the messages published from any time on must be
/// at most the counts of the notices after that time (plus `Lagged`, which may cover any).
/// `notices`: (time, cumulative count), in order.
fn unreported(unmet: &mut [Micros], notices: &[(Micros, u64)], lagged: u64) -> u64 {
    unmet.sort_unstable_by(|a, b| b.cmp(a));
    let total = notices.last().map_or(0, |n| n.1);
    let mut worst = 0;
    for (k, &t) in unmet.iter().enumerate() {
        // Cumulative count of the notices up to and including time t.
        let upto = notices.partition_point(|n| n.0 <= t);
        let before = if upto == 0 { 0 } else { notices[upto - 1].1 };
        let after = total - before + lagged;
        worst = worst.max((k as u64 + 1).saturating_sub(after));
    }
    worst
}

/// A note when the publisher's daemon, before the stretch of our sessions on it that the
/// publisher joined in, had none for longer than a linger (2 s): the daemon had left the
/// group and joined it again at the start of that stretch.
fn rejoin_note(h: &History, p: &PubRecord) -> String {
    let Some(joined) = p.joined else {
        return String::new();
    };
    let mut spans: Vec<(Micros, Micros)> = h
        .publishers
        .iter()
        .filter(|o| o.incarnation == p.incarnation)
        .filter_map(|o| Some((o.joined?, o.ended)))
        .chain(
            h.subscribers
                .iter()
                .filter(|s| s.incarnation == p.incarnation)
                .filter_map(|s| Some((s.joined?, s.ended))),
        )
        .collect();
    spans.sort_unstable();
    // Merge into stretches; find the one holding `joined` and the end of the one before.
    let (mut start, mut end) = spans[0];
    let mut previous_end = None;
    for &(a, b) in &spans[1..] {
        if a > end {
            if a > joined {
                break;
            }
            previous_end = Some(end);
            start = a;
        }
        end = end.max(b);
    }
    match previous_end {
        Some(e) if start - e > 2_000_000 => format!(
            " [d{} had no session for {} until {}: it rejoined the group then]",
            p.daemon + 1,
            secs(start - e),
            secs(start)
        ),
        _ => String::new(),
    }
}

// ------------------------------------------------------------------ sessions

fn micros(t0: Instant) -> Micros {
    t0.elapsed().as_micros() as Micros
}

struct PubParams {
    seed: u64,
    interval: Duration,
    burst: u32,
    size: usize,
}

/// A publisher session: attach, join, publish until told to stop or the daemon is gone.
fn run_publisher(
    mut rec: PubRecord,
    socket: PathBuf,
    params: PubParams,
    t0: Instant,
    stop: Arc<AtomicBool>,
) -> PubRecord {
    let (mut client, g) = match attach(&socket) {
        Ok(attached) => attached,
        Err(end) => {
            rec.ended = micros(t0);
            rec.end = end;
            return rec;
        }
    };
    rec.sender = client.sender_id();
    rec.joined = Some(micros(t0));
    'publish: while !stop.load(Ordering::Relaxed) {
        for _ in 0..params.burst {
            // A dead daemon's ring still takes offers: ask the socket first.
            if let Err(e) = client.check_alive() {
                rec.ended = micros(t0);
                rec.end = gone_or(&e, "check_alive");
                return rec;
            }
            let counter = rec.sent.len() as u64;
            let m = payload(params.seed, rec.id, counter, params.size);
            let t = micros(t0);
            match client.offer_blocking(g, &m, IdleStrategy::Backoff, Duration::from_secs(2)) {
                Ok(()) => rec.sent.push(t),
                Err(OfferError::BackPressured) => continue 'publish, // retried later
                Err(OfferError::Closed) => {
                    rec.ended = micros(t0);
                    rec.end = "daemon gone (offer)".to_string();
                    return rec;
                }
                Err(e @ (OfferError::TooLarge { .. } | OfferError::NotPublisher)) => {
                    rec.ended = micros(t0);
                    rec.end = format!("offer: {e}");
                    return rec;
                }
            }
        }
        std::thread::sleep(params.interval);
    }
    let flushed = client.flush(Duration::from_secs(20));
    rec.ended = micros(t0);
    rec.end = match flushed {
        Ok(true) => match client.leave(g) {
            Ok(()) => "stopped".to_string(),
            Err(e) => gone_or(&e, "leave"),
        },
        Ok(false) => "flush timed out".to_string(),
        Err(e) => gone_or(&e, "flush"),
    };
    rec
}

/// Attaches to the daemon at `socket` and joins the group; on failure, why the session ended.
fn attach(socket: &Path) -> Result<(Client, GroupId), String> {
    let mut client = Client::connect_to(socket).map_err(|e| gone_or(&e, "connect"))?;
    let g = client.join(GROUP).map_err(|e| gone_or(&e, "join"))?;
    Ok((client, g))
}

fn gone_or(e: &ClientError, what: &str) -> String {
    match e {
        ClientError::DaemonGone => format!("daemon gone ({what})"),
        ClientError::Connect { .. } | ClientError::Io(_) => format!("daemon gone ({what}: {e})"),
        _ => format!("{what}: {e}"),
    }
}

/// A subscriber session: attach, join, record every event until told to stop.
fn run_subscriber(
    mut rec: SubRecord,
    socket: PathBuf,
    seed: u64,
    t0: Instant,
    stop: Arc<AtomicBool>,
) -> SubRecord {
    let (mut client, g) = match attach(&socket) {
        Ok(attached) => attached,
        Err(end) => {
            rec.ended = micros(t0);
            rec.end = end;
            return rec;
        }
    };
    rec.joined = Some(micros(t0));
    let seen = &mut rec.seen;
    let mut record = |ev: Event<'_>| {
        let t = micros(t0);
        seen.push(match ev {
            Event::Message { sender, payload, .. } => match parse_payload(seed, payload) {
                Some((publisher, counter)) => Seen::Message {
                    t,
                    sender,
                    publisher,
                    counter,
                },
                None => Seen::Garbage {
                    t,
                    sender,
                    len: payload.len() as u32,
                },
            },
            Event::Lost { sender, count } => Seen::Lost { t, sender, count },
            Event::Lagged { missed } => Seen::Lagged { t, missed },
            other => panic!("a plain group delivered {other:?}"),
        });
    };
    let mut result = Ok(0);
    while result.is_ok() && !stop.load(Ordering::Relaxed) {
        result = client.poll_blocking(
            g,
            256,
            IdleStrategy::Backoff,
            Duration::from_millis(50),
            &mut record,
        );
    }
    // Read what is already there before leaving.
    while let Ok(1..) = result {
        result = client.poll(g, 256, &mut record);
    }
    rec.ended = micros(t0);
    rec.end = match result {
        Ok(_) => match client.leave(g) {
            Ok(()) => "stopped".to_string(),
            Err(e) => gone_or(&e, "leave"),
        },
        Err(e) => gone_or(&e, "poll"),
    };
    rec
}

// ------------------------------------------------------------------ running a plan

fn ip(subnet: u8, d: usize) -> String {
    format!("127.0.{subnet}.{}", d + 1)
}

struct Session<R> {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<R>,
    what: String,
}

struct Run {
    seed: u64,
    n: usize,
    subnet: u8,
    t0: Instant,
    dir: PathBuf,
    live: Vec<Option<(Daemon, usize)>>,
    incarnations: Vec<Incarnation>,
    publishers: BTreeMap<usize, Session<PubRecord>>,
    subscribers: BTreeMap<usize, Session<SubRecord>>,
    /// The operations as executed, with their times.
    log: Vec<String>,
}

impl Run {
    fn now(&self) -> Micros {
        micros(self.t0)
    }

    fn config(&self, d: usize, faults: &Faults) -> PathBuf {
        let seeds: Vec<String> = (0..self.n)
            .map(|j| format!("\"{}@{}\"", j + 1, ip(self.subnet, j)))
            .collect();
        let mut text = format!(
            "node_id = {}\n[cluster]\nenabled = true\nseeds = [{}]\n[net]\nlisten = \"{}\"\nbase_port = {BASE_PORT}\n",
            d + 1,
            seeds.join(", "),
            ip(self.subnet, d)
        );
        if faults.active() {
            let cut: Vec<String> = faults
                .cut
                .iter()
                .map(|&j| format!("\"{}:0\"", ip(self.subnet, j)))
                .collect();
            let _ = write!(
                text,
                "[net.fault]\nloss = {}\nloss_incoming = {}\nseed = {}\npartition = [{}]\n",
                faults.loss,
                faults.loss,
                faults.seed,
                cut.join(", ")
            );
        }
        let path = self
            .dir
            .join(format!("d{}-{}.toml", d + 1, self.incarnations.len()));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn start(&mut self, d: usize, faults: &Faults) {
        assert!(self.live[d].is_none(), "d{} already runs", d + 1);
        let config = self.config(d, faults);
        // A killed daemon's UDP socket may outlive it briefly (io_uring tears down late).
        let addr = format!("{}:{BASE_PORT}", ip(self.subnet, d));
        if !eventually(Duration::from_secs(30), || {
            std::net::UdpSocket::bind(&addr).is_ok()
        }) {
            let holders = std::process::Command::new("ss")
                .args(["-uanp"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_else(|e| format!("(ss: {e})"));
            let holders: Vec<&str> = holders.lines().filter(|l| l.contains(&addr)).collect();
            panic!("UDP {addr} (d{}) still taken after 30 s: {holders:?}", d + 1);
        }
        let daemon = Daemon::start(&format!("ro-d{}", d + 1), &["--config", config.to_str().unwrap()]);
        let started = self.now();
        self.incarnations.push(Incarnation {
            daemon: d,
            started,
            died: None,
            faults: faults.clone(),
            pauses: Vec::new(),
        });
        self.live[d] = Some((daemon, self.incarnations.len() - 1));
    }

    fn kill(&mut self, d: usize) {
        let (mut daemon, inc) = self.live[d].take().expect("running");
        let _ = daemon.child.kill();
        let _ = daemon.child.wait();
        let now = self.now();
        let i = &mut self.incarnations[inc];
        i.died = Some(now);
        if let Some(p) = i.pauses.last_mut() {
            p.1.get_or_insert(now);
        }
        self.save_log(d, inc, &daemon);
    }

    fn save_log(&self, d: usize, inc: usize, daemon: &Daemon) {
        let _ = std::fs::write(self.dir.join(format!("d{}-{inc}.log", d + 1)), daemon.log());
    }

    fn socket(&self, d: usize) -> (PathBuf, usize) {
        let (daemon, inc) = self.live[d].as_ref().expect("running");
        (daemon.socket().to_path_buf(), *inc)
    }

    fn signal(&mut self, d: usize, sig: i32) {
        let (daemon, inc) = self.live[d].as_ref().expect("running");
        daemon.signal(sig);
        let (inc, now) = (*inc, self.now());
        let pauses = &mut self.incarnations[inc].pauses;
        if sig == libc::SIGSTOP {
            pauses.push((now, None));
        } else if let Some(p) = pauses.last_mut() {
            p.1.get_or_insert(now);
        }
    }

    fn execute(&mut self, op: &Op) {
        match *op {
            Op::StartPublisher {
                publisher,
                daemon,
                interval_ms,
                burst,
                size,
            } => {
                let (socket, incarnation) = self.socket(daemon);
                let rec = PubRecord {
                    id: publisher,
                    daemon,
                    incarnation,
                    ..PubRecord::default()
                };
                let params = PubParams {
                    seed: self.seed,
                    interval: Duration::from_millis(interval_ms),
                    burst,
                    size,
                };
                let stop = Arc::new(AtomicBool::new(false));
                let (t0, flag) = (self.t0, stop.clone());
                let handle = std::thread::Builder::new()
                    .name(format!("p{publisher}"))
                    .spawn(move || run_publisher(rec, socket, params, t0, flag))
                    .unwrap();
                let what = format!("publisher p{publisher} on d{}", daemon + 1);
                self.publishers.insert(publisher, Session { stop, handle, what });
            }
            Op::StopPublisher { publisher } => {
                if let Some(s) = self.publishers.get(&publisher) {
                    s.stop.store(true, Ordering::Relaxed);
                }
            }
            Op::JoinSubscriber { subscriber, daemon } => {
                let (socket, incarnation) = self.socket(daemon);
                let rec = SubRecord {
                    id: subscriber,
                    daemon,
                    incarnation,
                    ..SubRecord::default()
                };
                let stop = Arc::new(AtomicBool::new(false));
                let (t0, seed, flag) = (self.t0, self.seed, stop.clone());
                let handle = std::thread::Builder::new()
                    .name(format!("s{subscriber}"))
                    .spawn(move || run_subscriber(rec, socket, seed, t0, flag))
                    .unwrap();
                let what = format!("subscriber s{subscriber} on d{}", daemon + 1);
                self.subscribers
                    .insert(subscriber, Session { stop, handle, what });
            }
            Op::LeaveSubscriber { subscriber } => {
                if let Some(s) = self.subscribers.get(&subscriber) {
                    s.stop.store(true, Ordering::Relaxed);
                }
            }
            Op::Kill { daemon } => self.kill(daemon),
            Op::Start { daemon, ref faults } => self.start(daemon, faults),
            Op::Restart { daemon, ref faults } => {
                self.kill(daemon);
                self.start(daemon, faults);
            }
            Op::Pause { daemon } => self.signal(daemon, libc::SIGSTOP),
            Op::Resume { daemon } => self.signal(daemon, libc::SIGCONT),
        }
    }

    /// Stops every session and collects the history; stops the daemons (keeping logs).
    fn finish(mut self) -> (History, PathBuf) {
        for s in self.publishers.values() {
            s.stop.store(true, Ordering::Relaxed);
        }
        for s in self.subscribers.values() {
            s.stop.store(true, Ordering::Relaxed);
        }
        let mut hung = Vec::new();
        let deadline = Instant::now() + THREAD_WAIT;
        let mut publishers = Vec::new();
        for (_, s) in std::mem::take(&mut self.publishers) {
            match join_by(s.handle, deadline) {
                Some(r) => publishers.push(r),
                None => hung.push(s.what),
            }
        }
        let mut subscribers = Vec::new();
        for (_, s) in std::mem::take(&mut self.subscribers) {
            match join_by(s.handle, deadline) {
                Some(r) => subscribers.push(r),
                None => hung.push(s.what),
            }
        }
        // Not deaths of the history: every session has ended.
        for d in 0..self.n {
            if let Some((mut daemon, inc)) = self.live[d].take() {
                let _ = daemon.child.kill();
                let _ = daemon.child.wait();
                self.save_log(d, inc, &daemon);
            }
        }
        let history = History {
            daemons: self.n,
            incarnations: self.incarnations,
            publishers,
            subscribers,
            hung,
        };
        (history, self.dir)
    }
}

/// Joins a thread if it ends by `deadline` (a hung one is left behind and reported).
fn join_by<R>(handle: JoinHandle<R>, deadline: Instant) -> Option<R> {
    while !handle.is_finished() {
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    handle.join().ok()
}

/// What one run produced.
struct Outcome {
    seed: u64,
    /// The command that runs it again.
    reproduce: String,
    plan: Plan,
    log: Vec<String>,
    /// One line per daemon incarnation and session.
    sessions: Vec<String>,
    verdict: Verdict,
    dir: PathBuf,
    elapsed: Duration,
}

impl Outcome {
    fn closing_note(&self) -> String {
        let s = &self.verdict.stats;
        let kinds: Vec<String> = self
            .verdict
            .by_kind()
            .iter()
            .map(|(k, n)| format!("{k:?} {n}"))
            .collect();
        format!(
            "random_ops seed {}: {} operations ({} random + {} finale) in {:.1} s; {} publishes, {} deliveries, \
             {} owed ({} delivered), {} Lost notices ({} messages), {} Lagged, {} disturbances; {} violations{}",
            self.seed,
            self.plan.steps.len(),
            self.plan.random,
            self.plan.steps.len() - self.plan.random,
            self.elapsed.as_secs_f64(),
            s.publishes,
            s.deliveries,
            s.owed,
            s.owed_delivered,
            s.lost_notices,
            s.lost_count,
            s.lagged,
            s.disturbances,
            self.verdict.violations.len(),
            if kinds.is_empty() {
                String::new()
            } else {
                format!(" ({})", kinds.join(", "))
            }
        )
    }

    /// Everything needed to reproduce and understand a failing run.
    fn report(&self) -> String {
        let mut r = String::new();
        let _ = writeln!(r, "{}", self.closing_note());
        let _ = writeln!(r, "reproduce: {}", self.reproduce);
        let _ = writeln!(r, "daemon logs and configs: {}", self.dir.display());
        let _ = writeln!(r, "operations as executed:");
        for line in &self.log {
            let _ = writeln!(r, "  {line}");
        }
        let _ = writeln!(r, "daemons and sessions:");
        for line in &self.sessions {
            let _ = writeln!(r, "  {line}");
        }
        let _ = writeln!(r, "violations:");
        let mut shown: HashMap<Kind, usize> = HashMap::new();
        for v in &self.verdict.violations {
            let n = shown.entry(v.kind).or_insert(0);
            *n += 1;
            if *n <= 25 {
                let _ = writeln!(r, "  {:?}: {}", v.kind, v.text);
            } else if *n == 26 {
                let _ = writeln!(r, "  {:?}: ... (more not shown)", v.kind);
            }
        }
        r
    }
}

fn run_seed(seed: u64, n: usize, ops: usize) -> Outcome {
    let reproduce = format!(
        "TUTTI_RANDOM_OPS_SEED={seed} TUTTI_RANDOM_OPS_OPS={ops} TUTTI_RANDOM_OPS_DAEMONS={n} \
         cargo nextest run -p tutti-daemon --test random_ops random_operations --no-capture"
    );
    run_plan(seed, n, SUBNET, plan(seed, n, ops), reproduce)
}

/// Runs `plan` on `n` fresh daemons and judges the history.
fn run_plan(seed: u64, n: usize, subnet: u8, plan: Plan, reproduce: String) -> Outcome {
    let dir = common::temp_dir(&format!("random-ops-{seed}"));
    let started = Instant::now();
    let mut run = Run {
        seed,
        n,
        subnet,
        t0: Instant::now(),
        dir,
        live: (0..n).map(|_| None).collect(),
        incarnations: Vec::new(),
        publishers: BTreeMap::new(),
        subscribers: BTreeMap::new(),
        log: Vec::new(),
    };
    for d in 0..n {
        run.start(d, &Faults::default());
    }
    for d in 0..n {
        let (daemon, _) = run.live[d].as_ref().unwrap();
        let mut c = daemon.client();
        assert!(
            eventually(Duration::from_secs(30), || status_number(
                &c.status().unwrap(),
                "view_members"
            ) == Some(n as u64)),
            "seed {seed}: d{} never saw {n} members:\n{}",
            d + 1,
            daemon.log()
        );
    }
    // The clock starts with the cluster formed: the initial incarnations count from 0.
    run.t0 = Instant::now();
    for inc in &mut run.incarnations {
        inc.started = 0;
    }
    for (i, step) in plan.steps.iter().enumerate() {
        std::thread::sleep(Duration::from_millis(step.delay_ms));
        let at = run.now();
        run.execute(&step.op);
        let phase = match (i >= plan.random, step.storm) {
            (true, _) => "finale",
            (false, true) => "storm ",
            (false, false) => "calm  ",
        };
        run.log
            .push(format!("{:>9} #{i:<3} {phase} {}", secs(at), step.op));
    }
    let log = std::mem::take(&mut run.log);
    let (history, dir) = run.finish();
    let verdict = check(&history);
    Outcome {
        seed,
        reproduce,
        plan,
        log,
        sessions: sessions(&history),
        verdict,
        dir,
        elapsed: started.elapsed(),
    }
}

/// What each daemon incarnation and session did, for the report.
fn sessions(h: &History) -> Vec<String> {
    let mut out = Vec::new();
    for (i, inc) in h.incarnations.iter().enumerate() {
        let pauses: Vec<String> = inc
            .pauses
            .iter()
            .map(|&(a, b)| format!("{}..{}", secs(a), secs(b.unwrap_or(Micros::MAX))))
            .collect();
        out.push(format!(
            "d{} incarnation {i}: {}..{}, {}{}",
            inc.daemon + 1,
            secs(inc.started),
            inc.died.map_or("end".to_string(), secs),
            inc.faults,
            if pauses.is_empty() {
                String::new()
            } else {
                format!(", paused {}", pauses.join(", "))
            }
        ));
    }
    for p in &h.publishers {
        out.push(format!(
            "p{} on d{} (incarnation {}, sender {:#x}): {} published {}..{}; ended {} ({})",
            p.id,
            p.daemon + 1,
            p.incarnation,
            p.sender,
            p.sent.len(),
            p.sent.first().map_or("-".to_string(), |&t| secs(t)),
            p.sent.last().map_or("-".to_string(), |&t| secs(t)),
            secs(p.ended),
            p.end
        ));
    }
    for s in &h.subscribers {
        let mut per_publisher: BTreeMap<u32, u64> = BTreeMap::new();
        let mut notices = Vec::new();
        for e in &s.seen {
            match *e {
                Seen::Message { publisher, .. } => *per_publisher.entry(publisher).or_insert(0) += 1,
                Seen::Lost { t, sender, count } => {
                    notices.push(format!("Lost {count} of d{} at {}", sender >> 32, secs(t)))
                }
                Seen::Lagged { t, missed } => notices.push(format!("Lagged {missed} at {}", secs(t))),
                Seen::Garbage { .. } => {}
            }
        }
        let got: Vec<String> = per_publisher.iter().map(|(p, n)| format!("p{p}: {n}")).collect();
        out.push(format!(
            "s{} on d{} (incarnation {}): joined {}, ended {} ({}); got {}{}",
            s.id,
            s.daemon + 1,
            s.incarnation,
            s.joined.map_or("never".to_string(), secs),
            secs(s.ended),
            s.end,
            if got.is_empty() {
                "nothing".to_string()
            } else {
                got.join(", ")
            },
            if notices.is_empty() {
                String::new()
            } else {
                format!("; {}", notices.join(", "))
            }
        ));
    }
    out
}

fn env_number(key: &str, default: u64) -> u64 {
    match std::env::var(key) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{key}={v:?}: not a number")),
        Err(_) => default,
    }
}

/// The CI run: one seed, 40 operations on 3 daemons (well under a minute); longer runs
/// through the environment (see the top of the file).
#[test]
fn random_operations_keep_the_delivery_promise() {
    let seed = match std::env::var("TUTTI_RANDOM_OPS_SEED") {
        Ok(v) if v.trim() == "random" => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 % 1_000_000_000),
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("TUTTI_RANDOM_OPS_SEED={v:?}")),
        Err(_) => 1,
    };
    let ops = env_number("TUTTI_RANDOM_OPS_OPS", 40) as usize;
    let runs = env_number("TUTTI_RANDOM_OPS_RUNS", 1);
    let daemons = env_number("TUTTI_RANDOM_OPS_DAEMONS", 3) as usize;
    assert!(
        (2..=9).contains(&daemons),
        "TUTTI_RANDOM_OPS_DAEMONS must be 2 to 9"
    );
    let verbose = env_number("TUTTI_RANDOM_OPS_VERBOSE", 0) != 0;
    let mut failed = Vec::new();
    let mut notes = Vec::new();
    for run in 0..runs {
        let outcome = run_seed(seed + run, daemons, ops);
        let note = outcome.closing_note();
        notes.push(note.clone());
        if outcome.verdict.violations.is_empty() {
            if verbose {
                eprintln!("{}", outcome.report());
            } else {
                eprintln!("{note}");
            }
            let _ = std::fs::remove_dir_all(&outcome.dir);
        } else {
            eprintln!("{}", outcome.report());
            failed.push(outcome.seed);
        }
    }
    assert!(
        failed.is_empty(),
        "failing seeds {failed:?} (reports above)\n{}",
        notes.join("\n")
    );
}

// ------------------------------------------------------------------ checker and plan tests

#[test]
fn a_seed_gives_the_same_plan_and_seeds_differ() {
    for seed in 0..50 {
        let a = plan(seed, 3, 60);
        assert_eq!(a, plan(seed, 3, 60));
        assert_eq!(a.random, 60);
        assert_ne!(a, plan(seed + 1, 3, 60));
        // The plan is valid where it runs: replaying it in the model never panics, and
        // the finale leaves every daemon healthy and running with no session left.
        let mut g = Generator {
            rng: Rng(0),
            n: 3,
            state: vec![Model::Up; 3],
            pubs: Vec::new(),
            subs: Vec::new(),
            next_pub: 0,
            next_sub: 0,
            steps: Vec::new(),
            target: 0,
            storm: false,
            phase_left: 0,
        };
        for step in &a.steps {
            match &step.op {
                Op::StartPublisher { daemon, .. } | Op::JoinSubscriber { daemon, .. } => {
                    assert!(
                        matches!(g.state[*daemon], Model::Up | Model::Faulty),
                        "seed {seed}: {}",
                        step.op
                    )
                }
                Op::Kill { daemon } | Op::Restart { daemon, .. } | Op::Pause { daemon } => {
                    assert!(
                        matches!(g.state[*daemon], Model::Up | Model::Faulty),
                        "seed {seed}: {}",
                        step.op
                    )
                }
                Op::Start { daemon, .. } => assert_eq!(g.state[*daemon], Model::Down, "seed {seed}"),
                Op::Resume { daemon } => {
                    assert!(matches!(g.state[*daemon], Model::Paused { .. }), "seed {seed}")
                }
                _ => {}
            }
            g.apply(&step.op);
        }
        assert!(
            g.state.iter().all(|&s| s == Model::Up),
            "seed {seed}: {:?}",
            g.state
        );
        assert!(g.pubs.is_empty() && g.subs.is_empty(), "seed {seed}");
    }
}

#[test]
fn payloads_round_trip_and_corruption_is_caught() {
    let m = payload(42, 3, 17, 100);
    assert_eq!(m.len(), 100);
    assert_eq!(parse_payload(42, &m), Some((3, 17)));
    assert_eq!(parse_payload(43, &m), None, "another run's message");
    let mut bad = m.clone();
    bad[60] ^= 1;
    assert_eq!(parse_payload(42, &bad), None);
    assert_eq!(
        parse_payload(42, &payload(42, 3, 17, 5)),
        Some((3, 17)),
        "header only"
    );
    assert_eq!(parse_payload(42, b"garbage"), None);
}

/// A history with two healthy daemons for the whole run (0..60 s): publisher p0 on d1
/// sent `sent` messages at 10 s + 10 ms each; subscriber s0 on d2 joined at 1 s.
fn synthetic(sent: u32, seen: Vec<Seen>) -> History {
    let sender = (1u64 << 32) | 5;
    History {
        daemons: 2,
        incarnations: (0..2)
            .map(|d| Incarnation {
                daemon: d,
                started: 0,
                died: None,
                faults: Faults::default(),
                pauses: Vec::new(),
            })
            .collect(),
        publishers: vec![PubRecord {
            id: 0,
            daemon: 0,
            incarnation: 0,
            sender,
            joined: Some(9_000_000),
            ended: 20_000_000,
            end: "stopped".into(),
            sent: (0..sent).map(|c| 10_000_000 + u64::from(c) * 10_000).collect(),
        }],
        subscribers: vec![SubRecord {
            id: 0,
            daemon: 1,
            incarnation: 1,
            joined: Some(1_000_000),
            ended: 60_000_000,
            end: "stopped".into(),
            seen,
        }],
        hung: Vec::new(),
    }
}

fn msg(counter: u32) -> Seen {
    Seen::Message {
        t: 11_000_000 + u64::from(counter),
        sender: (1u64 << 32) | 5,
        publisher: 0,
        counter,
    }
}

fn lost(count: u64) -> Seen {
    Seen::Lost {
        t: 11_000_000,
        sender: 1u64 << 32,
        count,
    }
}

fn kinds(h: &History) -> Vec<Kind> {
    let mut k: Vec<Kind> = check(h).violations.iter().map(|v| v.kind).collect();
    k.sort();
    k
}

#[test]
fn the_checker_accepts_a_clean_history() {
    let h = synthetic(10, (0..10).map(msg).collect());
    let v = check(&h);
    assert!(v.violations.is_empty(), "{:?}", v.violations);
    assert_eq!((v.stats.owed, v.stats.owed_delivered), (10, 10));
    // A gap reported Lost is fine too.
    let mut seen: Vec<Seen> = (0..4).map(msg).collect();
    seen.push(lost(3));
    seen.extend((7..10).map(msg));
    assert_eq!(kinds(&synthetic(10, seen)), vec![]);
}

#[test]
fn the_checker_flags_each_kind() {
    // Silently missing: a gap in the middle (FIFO) and at the end (completeness).
    let seen: Vec<Seen> = (0..4).chain(7..8).map(msg).collect();
    assert_eq!(kinds(&synthetic(10, seen)), vec![Kind::SilentGap, Kind::Missing]);
    // Never delivered at all.
    assert_eq!(kinds(&synthetic(10, Vec::new())), vec![Kind::Missing]);
    // Twice, out of order, never published, wrong sender, garbage.
    let seen = vec![msg(0), msg(1), msg(1), msg(2)];
    assert_eq!(kinds(&synthetic(3, seen)), vec![Kind::Duplicate]);
    let seen = vec![msg(0), msg(2), msg(1)];
    assert_eq!(kinds(&synthetic(3, seen)), vec![Kind::Reorder, Kind::SilentGap]);
    let seen = vec![msg(0), msg(1), msg(2), msg(3)];
    assert_eq!(kinds(&synthetic(3, seen)), vec![Kind::Phantom]);
    let mut seen: Vec<Seen> = (0..3).map(msg).collect();
    seen[1] = Seen::Message {
        t: 1,
        sender: (2u64 << 32) | 5,
        publisher: 0,
        counter: 1,
    };
    assert_eq!(kinds(&synthetic(3, seen)), vec![Kind::Phantom]);
    let seen = vec![Seen::Garbage {
        t: 1,
        sender: 0,
        len: 3,
    }];
    assert_eq!(kinds(&synthetic(0, seen)), vec![Kind::Phantom]);
    // Lost more than it missed, and a Lost with a session in its sender.
    let mut seen: Vec<Seen> = (0..10).map(msg).collect();
    seen.push(lost(2));
    assert_eq!(kinds(&synthetic(10, seen)), vec![Kind::FalseLost]);
    let seen = vec![Seen::Lost {
        t: 1,
        sender: (1u64 << 32) | 5,
        count: 1,
    }];
    assert_eq!(kinds(&synthetic(0, seen)), vec![Kind::BadLost]);
}

#[test]
fn a_lost_notice_accounts_only_for_messages_published_before_it() {
    assert_eq!(unreported(&mut [10, 20], &[(15, 1)], 0), 1);
    assert_eq!(unreported(&mut [10, 20], &[(25, 2)], 0), 0);
    assert_eq!(unreported(&mut [10, 20], &[(15, 5)], 0), 1, "the one after it");
    assert_eq!(unreported(&mut [10, 20], &[(15, 5)], 1), 0, "Lagged covers any");
    assert_eq!(
        unreported(&mut [10, 20], &[(5, 1), (15, 2)], 0),
        1,
        "cumulative counts"
    );
    // In a history: 5 messages before the subscriber's join took effect (not owed, never
    // delivered), a Lost of 5 after them, then 10 owed of which 5 are missing: the early
    // notice accounts for the early messages, not for the later ones.
    let mut h = synthetic(15, (5..10).map(msg).collect());
    for t in &mut h.publishers[0].sent[..5] {
        *t -= 8_000_000;
    }
    h.subscribers[0].seen.insert(
        0,
        Seen::Lost {
            t: 5_000_000,
            sender: 1u64 << 32,
            count: 5,
        },
    );
    assert_eq!(kinds(&h), vec![Kind::Missing]);
}

#[test]
fn a_publisher_on_a_daemon_idle_for_longer_than_a_linger_is_noted_as_a_rejoin() {
    let mut h = synthetic(0, Vec::new());
    assert_eq!(rejoin_note(&h, &h.publishers[0]), "", "its first session");
    let earlier = PubRecord {
        id: 1,
        joined: Some(1_000_000),
        ended: 5_000_000,
        ..h.publishers[0].clone()
    };
    h.publishers.push(earlier);
    assert!(rejoin_note(&h, &h.publishers[0]).contains("no session for 4.000 s until 9.000 s"));
    let subscriber = |joined: Micros, ended: Micros| SubRecord {
        daemon: 0,
        incarnation: 0,
        joined: Some(joined),
        ended,
        ..SubRecord::default()
    };
    h.subscribers.push(subscriber(8_000_000, 30_000_000));
    assert!(rejoin_note(&h, &h.publishers[0]).contains("no session for 3.000 s until 8.000 s"));
    h.subscribers.push(subscriber(4_000_000, 8_500_000));
    assert_eq!(
        rejoin_note(&h, &h.publishers[0]),
        "",
        "a subscriber kept it in the group"
    );
}

#[test]
fn the_checker_owes_nothing_across_a_crash_or_before_a_join_settles() {
    // The publisher's daemon dies 1 s after the last message: none of it is owed.
    let mut h = synthetic(10, Vec::new());
    h.incarnations[0].died = Some(11_000_000);
    h.publishers[0].end = "daemon gone (check_alive)".into();
    assert_eq!(kinds(&h), vec![]);
    // The subscriber joined 1 s before: its join may not be in the views yet.
    let mut h = synthetic(10, Vec::new());
    h.subscribers[0].joined = Some(9_500_000);
    assert_eq!(kinds(&h), vec![]);
    // The subscriber left 2 s after: not enough to settle.
    let mut h = synthetic(10, Vec::new());
    h.subscribers[0].ended = 12_000_000;
    assert_eq!(kinds(&h), vec![]);
    // A pause of the subscriber's daemon that heals late enough: owed again.
    let mut h = synthetic(10, Vec::new());
    h.incarnations[1].pauses.push((10_050_000, Some(14_000_000)));
    assert_eq!(check(&h).stats.owed, 10);
    h.subscribers[0].ended = 19_000_000;
    assert_eq!(check(&h).stats.owed, 0, "14 s + tail + settle is after 19 s");
}

#[test]
fn a_partition_cutting_a_daemon_from_all_is_a_disturbance_one_from_some_is_not() {
    let inc = |daemon: usize, cut: Vec<usize>| Incarnation {
        daemon,
        started: 0,
        died: None,
        faults: Faults {
            loss: 0.0,
            cut,
            seed: 1,
        },
        pauses: Vec::new(),
    };
    let mut h = History {
        daemons: 3,
        incarnations: vec![inc(0, vec![1]), inc(1, vec![]), inc(2, vec![])],
        ..History::default()
    };
    assert!(disturbances(&h).msg.is_empty());
    assert_eq!(disturbances(&h).join.len(), 1, "a faulty daemon delays joins");
    h.incarnations[0].faults.cut = vec![1, 2];
    assert_eq!(disturbances(&h).msg.len(), 1);
    // Or the daemon that relayed dies.
    h.incarnations[0].faults.cut = vec![1];
    h.incarnations[2].died = Some(5);
    assert_eq!(disturbances(&h).msg.len(), 2, "the death and the split it causes");
}

/// The operations that showed a daemon bug, as a fixed plan: publishers on a daemon with
/// no other session of ours, one after another, the second after the daemon left the
/// group (its linger of a retention, 2 s, passed), the third at once after the second.
/// Every subscriber on the other daemons must get each one's messages (or `Lost`).
#[test]
fn publishers_in_turn_on_a_daemon_that_left_the_group_reach_remote_subscribers() {
    let calm = |delay_ms: u64, op: Op| Step {
        delay_ms,
        op,
        storm: false,
    };
    let publisher = |publisher: usize| Op::StartPublisher {
        publisher,
        daemon: 0,
        interval_ms: 20,
        burst: 1,
        size: 64,
    };
    let steps = vec![
        calm(
            0,
            Op::JoinSubscriber {
                subscriber: 0,
                daemon: 1,
            },
        ),
        calm(
            0,
            Op::JoinSubscriber {
                subscriber: 1,
                daemon: 2,
            },
        ),
        calm(2500, publisher(0)),
        calm(1000, Op::StopPublisher { publisher: 0 }),
        calm(6000, publisher(1)),
        calm(1000, Op::StopPublisher { publisher: 1 }),
        calm(300, publisher(2)),
        calm(1000, Op::StopPublisher { publisher: 2 }),
        calm(6000, Op::LeaveSubscriber { subscriber: 0 }),
        calm(0, Op::LeaveSubscriber { subscriber: 1 }),
    ];
    let random = steps.len();
    let reproduce = "cargo nextest run -p tutti-daemon --test random_ops publishers_in_turn --no-capture";
    let outcome = run_plan(
        0,
        3,
        SCENARIO_SUBNET,
        Plan { steps, random },
        reproduce.to_string(),
    );
    let report = outcome.report();
    if outcome.verdict.violations.is_empty() {
        let _ = std::fs::remove_dir_all(&outcome.dir);
    }
    assert!(outcome.verdict.violations.is_empty(), "{report}");
    assert!(outcome.verdict.stats.owed >= 100, "{report}");
}
