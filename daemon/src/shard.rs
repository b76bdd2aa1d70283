//! A shard: one pinned thread that owns a set of groups and the publish rings of the
//! clients that publish to them. Its loop moves frames from publish rings into group
//! delivery logs, rings the group doorbells of sleeping subscribers, and takes control
//! commands from a bounded queue. Nothing it touches on the data path is shared with
//! another shard, and the loop neither allocates, locks nor calls the kernel per message.

use crate::cluster::{Cluster, ClusterEvent, OrderedRefusal, Submit};
use crate::config::IdleStrategy;
use crate::cpg::{self, CpgTables};
use crossbeam_channel::{Receiver, Sender};
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use tutti_proto::fxhash::FxMap;
use tutti_proto::regions::{RegionError, RegionOp, RegionTxn};
use tutti_sys::{EventFd, Mapping, WakeSender};
use tutti_wire::control::GroupOptions;
use tutti_wire::counters::{CountersPage, COUNTERS_LEN, SHARD_COUNTERS};
use tutti_wire::shm::{GroupDoorbell, LeftReason, LogWriter, PublishConsumer, ShardDoorbell, Watch};

/// Frames taken from one publish ring before the shard moves on to the next ring, so a
/// flooding client cannot starve the others.
const FRAMES_PER_RING_PASS: usize = 256;
/// Frames taken from the rings since the last park from which the shard is busy enough for
/// barrier mode (`tutti_wire::shm::doorbell`): its clients' commits skip their fence, and
/// its next park pays one `membarrier`. A shard woken for single messages stays fenced.
const BARRIER_MODE_FRAMES: usize = 32;
/// Longest park after a failed `membarrier` (a client may have skipped its fence).
const PARK_AFTER_FAILED_BARRIER: Duration = Duration::from_millis(1);
/// Empty passes before the backoff strategy parks when nothing but membership traffic
/// (probes, acks, digests, views) woke the shard since it last parked: no data is coming,
/// so it does not spin for data (an idle member of a large cluster is woken dozens of times
/// a second; spinning 20,000 passes each time cost it 6-13% of a core, when that was the
/// data budget; 200 passes still cost an idle debug-build daemon 1.2% of a core, ~30 wakes a
/// second, in `an_idle_daemon_after_traffic_uses_under_one_percent_of_a_core`).
const CONTROL_SPINS: u32 = 16;
/// Longest park: the shard wakes this often even with no doorbell (timers come later).
const PARK_TIMEOUT: Duration = Duration::from_millis(500);
/// Data passes between two polls of the cluster transport when the network is quiet (a
/// receive may be a system call with the epoll back end; with io_uring it is a look at the
/// completion queue).
const CLUSTER_POLL_INTERVAL: u32 = 8;
/// Data passes between two looks at the command queue when the shard is busy.
const COMMAND_CHECK_INTERVAL: u32 = 64;
/// How often the groups' message rates for `tutti status` are sampled.
const RATE_SAMPLE_PERIOD: Duration = Duration::from_secs(1);
/// How long a snapshot request waits for a local provider before the joiner is sent an
/// empty snapshot (counted in `snapshots_empty`): the whole group waits meanwhile.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);

/// A shard's counters, in a shared-memory page (`tutti stat` maps it read-only). The
/// shard is the only writer; the control thread and `tutti stat` only read.
pub struct ShardStats {
    page: CountersPage,
    _map: Mapping,
}

/// Indices of the shard counters (names in `tutti_wire::counters::SHARD_COUNTERS`).
pub mod counter {
    use tutti_wire::counters::shard_counter;
    pub const FRAMES_IN: usize = shard_counter("frames_in");
    pub const BYTES_IN: usize = shard_counter("bytes_in");
    pub const BAD_FRAMES: usize = shard_counter("bad_frames");
    pub const TOO_LARGE: usize = shard_counter("too_large");
    pub const SUBSCRIBER_WAKES: usize = shard_counter("subscriber_wakes");
    pub const PARKS: usize = shard_counter("parks");
    pub const IDLE_SPINS: usize = shard_counter("idle_spins");
    pub const PARK_BARRIERS: usize = shard_counter("park_barriers");
    pub const DESCRIPTOR_WAKES: usize = shard_counter("descriptor_wakes");
    pub const UNLOGGED: usize = shard_counter("unlogged");
    pub const CLIENTS: usize = shard_counter("clients");
    pub const GROUPS: usize = shard_counter("groups");
    pub const HEARTBEAT: usize = shard_counter("heartbeat");
    pub const NOT_JOINED: usize = shard_counter("not_joined");
    pub const DATAGRAMS_IN: usize = shard_counter("datagrams_in");
    pub const DATAGRAMS_OUT: usize = shard_counter("datagrams_out");
    pub const DECODE_ERRORS: usize = shard_counter("decode_errors");
    pub const UNKNOWN_PEER: usize = shard_counter("unknown_peer");
    pub const RETRANSMITS: usize = shard_counter("retransmits");
    pub const GOSSIP_ROUNDS: usize = shard_counter("gossip_rounds");
    pub const LOST: usize = shard_counter("lost");
    pub const VIEW_CHANGES: usize = shard_counter("view_changes");
    pub const VIEW_MEMBERS: usize = shard_counter("view_members");
    pub const REMOTE_DELIVERED: usize = shard_counter("remote_delivered");
    pub const NOT_SENT: usize = shard_counter("not_sent");
    pub const FAULT_DROPPED: usize = shard_counter("fault_dropped");
    pub const BAD_FRAGMENTS: usize = shard_counter("bad_fragments");
    pub const WINDOW_OVERFLOW: usize = shard_counter("window_overflow");
    pub const EVICTED_BUDGET: usize = shard_counter("evicted_budget");
    pub const GAP_REQUESTS: usize = shard_counter("gap_requests");
    pub const TAIL_REQUESTS: usize = shard_counter("tail_requests");
    pub const PARTIALS_DROPPED: usize = shard_counter("partials_dropped");
    pub const RETAINED_BYTES: usize = shard_counter("retained_bytes");
    pub const REMOTE_TOO_LARGE: usize = shard_counter("remote_too_large");
    pub const DUPLICATE_IDS: usize = shard_counter("duplicate_ids");
    pub const AUTH_FAILED: usize = shard_counter("auth_failed");
    pub const REPLAYED: usize = shard_counter("replayed");
    pub const AUTH_SENDERS_FULL: usize = shard_counter("auth_senders_full");
    pub const PROTOCOL_REFUSED: usize = shard_counter("protocol_refused");
    pub const ORDERED_SUBMITTED: usize = shard_counter("ordered_submitted");
    pub const ORDERED_DELIVERED: usize = shard_counter("ordered_delivered");
    pub const ORDERED_FULL: usize = shard_counter("ordered_full");
    pub const ORDERED_VIEWS: usize = shard_counter("ordered_views");
    pub const SNAPSHOT_REQUESTS: usize = shard_counter("snapshot_requests");
    pub const SNAPSHOTS_EMPTY: usize = shard_counter("snapshots_empty");
    pub const SNAPSHOTS_INSTALLED: usize = shard_counter("snapshots_installed");
    pub const ORDERED_MINORITY: usize = shard_counter("ordered_minority");
    pub const ORDERED_REMOVED: usize = shard_counter("ordered_removed");
    pub const ORDERED_DROPPED: usize = shard_counter("ordered_dropped");
    pub const FLOW_HELD: usize = shard_counter("flow_held");
    pub const FLOW_STATUSES: usize = shard_counter("flow_statuses");
    pub const FLOW_SLOW_MEMBERS: usize = shard_counter("flow_slow_members");
    pub const PUBLISH_ABANDONED: usize = shard_counter("publish_abandoned");
    pub const CPU_POLL_HOLDS: usize = shard_counter("cpu_poll_holds");
    pub const CPU_POLL_REFUSED: usize = shard_counter("cpu_poll_refused");
    pub const SPINS_SKIPPED: usize = shard_counter("spins_skipped");
}

impl ShardStats {
    /// Creates shard `index`'s counters page; the descriptor is what clients are sent.
    pub fn create(index: usize) -> std::io::Result<(std::os::fd::OwnedFd, ShardStats)> {
        let (fd, map) =
            Mapping::create_read_only_for_others(&format!("tutti-counters-{index}"), COUNTERS_LEN)?;
        // SAFETY: a fresh zeroed page owned here; `_map` keeps it mapped as long as `page`.
        let page = unsafe {
            CountersPage::init(map.as_ptr(), map.len(), SHARD_COUNTERS.len())
                .and_then(|_| CountersPage::attach(map.as_ptr(), map.len()))
        }
        .map_err(std::io::Error::other)?;
        Ok((fd, ShardStats { page, _map: map }))
    }

    #[inline]
    pub fn add(&self, counter: usize, n: u64) {
        self.page.add(counter, n);
    }

    #[inline]
    pub fn set(&self, counter: usize, value: u64) {
        self.page.set(counter, value);
    }

    pub fn get(&self, counter: usize) -> u64 {
        self.page.get(counter)
    }
}

/// Control messages to a shard. Those with an `ack` are answered once applied, so the
/// control thread replies to a client only when the shard already knows what it granted.
pub enum ShardCommand {
    AddGroup {
        handle: u32,
        /// The group's cluster-wide id (`tutti_wire::group_id` of its name).
        gid: u64,
        name: String,
        options: GroupOptions,
        log: Mapping,
        doorbell: Mapping,
        ack: Sender<Result<(), String>>,
    },
    /// The group has no local member left. With `linger` (a process left a cpg group; one
    /// that ended reads nothing more) the shard keeps writing its log until the local
    /// processes' leaves are through the order, at most [`LINGER_MAX`], so that the leaver
    /// reads up to its own leave's confchg; then it says [`ShardEvent::LingerOver`] with
    /// the linger's number and goes on writing until the control thread drops the group
    /// for good (`linger: None`) or a local process joins it again (a
    /// [`ShardCommand::CpgProc`] join: the same slot, log and handle serve the joiner, and
    /// the leaver reads on to its confchg).
    DropGroup {
        handle: u32,
        linger: Option<u64>,
    },
    AddClient {
        session: u32,
        ring: Mapping,
        ack: Sender<Result<(), String>>,
    },
    /// Lets the client publish to the group (joined with the publish right). Receiving
    /// needs nothing from the shard: a subscriber maps the group's log.
    Subscribe {
        session: u32,
        handle: u32,
        ack: Sender<Result<(), String>>,
    },
    /// Drains what the client already published to the group, then revokes it.
    Unsubscribe {
        session: u32,
        handle: u32,
        ack: Sender<Result<(), String>>,
    },
    /// The client hung up: publish what it committed, then free its ring.
    DropClient {
        session: u32,
    },
    /// A subscriber of group `handle` waits on a descriptor (`Request::Watch`): once `watch`
    /// is armed, the shard sends on `sender` after its next append (replaces an earlier
    /// watch of the same session and group).
    Watch {
        handle: u32,
        session: u32,
        watch: Watch,
        page: Mapping,
        sender: WakeSender,
    },
    /// The session left the group or ended: its descriptor's watch goes.
    Unwatch {
        handle: u32,
        session: u32,
    },
    /// A local process joins (`pid: Some`) or leaves a `cpg` group (`docs/cpg.md`), with its
    /// `cpg_reason_t` code: published in the group's order.
    CpgProc {
        handle: u32,
        session: u32,
        pid: Option<u32>,
        reason: u32,
        ack: Sender<Result<(), String>>,
    },
    /// How many local sessions subscribe to group `handle` (joined with the subscribe
    /// right): a plain group with none is not logged (`unlogged`). With an `ack` (a join)
    /// the control thread replies to the joiner once the shard logs again, so the reader,
    /// which starts at the log's end, misses nothing published after its join.
    Readers {
        handle: u32,
        readers: u32,
        ack: Option<Sender<Result<(), String>>>,
    },
    /// How many local clients provide snapshots of ordered group `handle`.
    Providers {
        handle: u32,
        providers: usize,
    },
    /// A local provider's snapshot of ordered group `handle` at `position`.
    SnapshotReady {
        handle: u32,
        position: u64,
        snapshot: Vec<u8>,
    },
    /// For `tutti status`: the shard's view of the cluster and its groups' traffic.
    Report {
        reply: Sender<ShardReport>,
    },
    /// A client's region operation (`docs/regions.md`; shard 0 only): its outcome comes
    /// back as [`ShardEvent::Region`] with `token`.
    Region {
        token: u64,
        request: RegionRequest,
    },
    Shutdown,
}

/// A region operation of a local client.
pub enum RegionRequest {
    Create { name: String, size: u32 },
    Txn(RegionTxn),
}

/// The end of a region operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionResult {
    /// Committed (a create, or a transaction with its reads).
    Done(Vec<Vec<u8>>),
    Failed(RegionError),
    /// The daemon runs without a cluster.
    NoCluster,
}

/// What a shard tells `tutti status` (see [`ShardCommand::Report`]).
#[derive(Debug, Default)]
pub struct ShardReport {
    /// The cluster view's members with address, age and last-heard time (see
    /// `Cluster::members_text`); empty outside a cluster.
    pub members: String,
    pub groups: Vec<GroupTraffic>,
    /// Application regions: placement and counters (one line; empty outside a cluster).
    pub regions: String,
    /// The shard's cpg groups (dormant ones included) and their processes.
    pub cpg: Vec<cpg::Listing>,
}

/// One group's messages on this shard: totals, and rates over the last sample period.
#[derive(Debug, Clone, Default)]
pub struct GroupTraffic {
    pub handle: u32,
    /// Messages published by local clients into the group's log.
    pub published: u64,
    /// Messages from other daemons appended to the group's log.
    pub received: u64,
    pub published_per_sec: f64,
    pub received_per_sec: f64,
    /// Ordered groups: the view, the status and what was delivered (one line).
    pub ordered: Option<String>,
}

/// What a shard tells the control thread on its own initiative.
#[derive(Debug)]
pub enum ShardEvent {
    /// The shard's cluster node installed a new view (summary for `tutti status`).
    View { shard: usize, summary: String },
    /// A client broke the ring protocol; its session must end.
    ClientFailed { session: u32, reason: String },
    /// A region operation ended (see [`ShardCommand::Region`]).
    Region { token: u64, result: RegionResult },
    /// The local leaves of cpg group `handle` are through the order (or its linger timed
    /// out): the control thread may drop it for good (`DropGroup { linger: None }`) unless
    /// it was joined and left again since (a linger of another number).
    LingerOver { handle: u32, linger: u64 },
}

struct ClientSlot {
    session: u32,
    sender: u64,
    consumer: PublishConsumer,
    /// The frame at the head of the ring was refused by an ordered group (back pressure):
    /// the shard may park although the ring is not empty; cluster progress wakes it.
    blocked: bool,
    /// Handles this client may publish to, indexed by handle (small and dense).
    joined: Vec<bool>,
    _ring: Mapping,
}

struct GroupSlot {
    gid: u64,
    writer: LogWriter,
    doorbell: GroupDoorbell,
    /// Appended to since the last doorbell check.
    dirty: bool,
    /// Messages appended: (published here, received from other daemons), and their
    /// counts and rates at the last sample (every [`RATE_SAMPLE_PERIOD`]).
    published: u64,
    received: u64,
    sampled: (u64, u64),
    rates: (f64, f64),
    options: GroupOptions,
    ordered: OrderedState,
    /// No local member is left, but a leaver still reads: the log is written until then
    /// (a deadline and the linger's number; see [`ShardCommand::DropGroup`]).
    lingering: Option<(Instant, u64)>,
    /// Subscribers waiting on descriptors (`ShardCommand::Watch`).
    watchers: Vec<Watcher>,
    /// Local sessions that subscribe (`ShardCommand::Readers`).
    readers: u32,
    _log: Mapping,
    _doorbell: Mapping,
}

impl GroupSlot {
    /// A plain group no local session subscribes to: its messages are not logged (nobody
    /// would read them; a subscriber starts at the log's end). Ordered groups are always
    /// logged (a joiner reads their log from its start).
    #[inline]
    fn unread(&self) -> bool {
        self.readers == 0 && !self.options.ordered
    }
}

/// A subscriber's descriptor: its watch page (mapped by that client and this shard only)
/// and the daemon's end of its wake pair.
struct Watcher {
    session: u32,
    watch: Watch,
    sender: WakeSender,
    _page: Mapping,
}

impl Watcher {
    /// Makes the descriptor readable if its reader waits for a record before `end`.
    fn wake_if_armed(&self, end: u64, stats: &ShardStats) {
        if self.watch.claim(end) {
            // A reader that closed its end is leaving: nothing to tell it.
            let _ = self.sender.wake();
            if self.watch.fired() {
                // The reader woke on the send and found us between it and `fired`: it
                // sleeps on the sleeper word (tutti_wire::shm::watch).
                tutti_sys::futex_wake_all(self.watch.sleeper());
            }
            stats.add(counter::DESCRIPTOR_WAKES, 1);
        }
    }
}

/// What a shard keeps of an ordered group beyond its log.
#[derive(Default)]
struct OrderedState {
    /// Local clients that registered a snapshot provider.
    providers: usize,
    /// A snapshot asked of a local provider: its position and when it was asked.
    snapshot_wait: Option<(u64, Instant)>,
    /// The last view appended: (id, members).
    view: Option<(u64, Vec<u32>)>,
    /// Majority, minority or removed (for `tutti status`).
    status: String,
    /// Messages delivered in the total order.
    delivered: u64,
    /// `cpg` groups: the id of the daemons' ring last written into the log (as a view).
    ring_written: Option<u64>,
}

/// Most ordered-group views a shard keeps for groups whose slot went (`Shard::kept_views`):
/// beyond it a group joined again before its daemon left gets no view until the next change.
const MAX_KEPT_VIEWS: usize = 4 * cpg::MAX_DORMANT;

/// Longest a cpg group's log is written after its last local process left, waiting for
/// that leave to go through the order (libcpg.so.4's leaver waits 5 s, then makes its own
/// confchg).
pub const LINGER_MAX: Duration = Duration::from_secs(10);

/// How long the backoff strategy spins after data before it parks
/// (`Config::spin_after_data_us`, default 5 us). Bounded by time, not passes, and
/// without yields: on a machine with fewer cores than busy threads (a 2-vCPU VM running
/// two daemons and two clients) `sched_yield` does not give the core away: the daemon
/// runs in its own session (autogroup), and a yield only lets threads of the same group
/// run (`perf sched timehist` with 2,000 spins and 20 yields showed the receiving shard
/// waiting 0.1-0.3 ms for a core held by a yielding thread). The trade on such a
/// machine (README, "The spin after data as a setting"): a longer spin saves the next
/// sparse message a wake-up (p50 of `tutti-bench cluster --nodes 2` 78 -> 22 us with 200
/// us), and costs a saturated daemon the core its peers need (throughput -33%, and the
/// 3-daemon cpg path's p50 doubles).
///
/// The spin is a bet that new work comes within it, and it loses on every message of a
/// one-in-flight exchange (the next comes a round trip later); on a host that runs the
/// thread the shard just woke (the subscriber, a local peer daemon's shard) on the shard's
/// own CPU, a lost spin is time the woken thread waits (`tutti-bench cluster --nodes 2`,
/// ftrace: 5-10 µs per hop). So after [`SpinAfterData::MISSES_BEFORE_REST`] spins in a row
/// that caught nothing the shard parks at once after data, spinning again on every
/// [`SpinAfterData::PROBE_EVERY`]th stretch to notice traffic that became dense (counter
/// `spins_skipped`).
struct SpinAfterData {
    duration: Duration,
    /// Stretches of empty passes after data in a row that ended in a park (spun or not)
    /// since a spin last caught work.
    misses: u32,
}

impl SpinAfterData {
    const MISSES_BEFORE_REST: u32 = 8;
    const PROBE_EVERY: u32 = 16;

    fn new(duration: Duration) -> SpinAfterData {
        SpinAfterData { duration, misses: 0 }
    }

    /// Whether the stretch of empty passes starting now spins.
    fn pays(&self) -> bool {
        !self.duration.is_zero()
            && (self.misses < Self::MISSES_BEFORE_REST || self.misses.is_multiple_of(Self::PROBE_EVERY))
    }

    fn caught(&mut self) {
        self.misses = 0;
    }

    fn missed(&mut self) {
        self.misses = self.misses.saturating_add(1);
    }
}

/// The shard's request that idle CPUs poll rather than halt while its traffic lasts
/// (`Config::cpu_poll_after_data_ms`): taken at the first park after data, given back at
/// the first park `after_data` past the last one. Looked at only when the shard parks (a
/// clock read and, on a change, an `open` or a `close`), never per message.
struct CpuPoll {
    after_data: Duration,
    hold: Option<tutti_sys::CpuLatencyHold>,
    until: Instant,
    /// The device could not be opened once: the shard does not try again.
    refused: bool,
}

impl CpuPoll {
    fn new(after_data: Duration) -> CpuPoll {
        CpuPoll {
            after_data,
            hold: None,
            until: Instant::now(),
            refused: false,
        }
    }

    /// Takes, extends or ends the hold before a park; returns how long it has left, so the
    /// park can end in time to end it.
    fn before_park(&mut self, data_since_park: bool, shard: usize, stats: &ShardStats) -> Option<Duration> {
        if self.after_data.is_zero() || self.refused {
            return None;
        }
        let now = Instant::now();
        if data_since_park {
            self.until = now + self.after_data;
            if self.hold.is_none() {
                match tutti_sys::CpuLatencyHold::take() {
                    Ok(hold) => {
                        self.hold = Some(hold);
                        stats.add(counter::CPU_POLL_HOLDS, 1);
                    }
                    Err(e) => {
                        self.refused = true;
                        stats.add(counter::CPU_POLL_REFUSED, 1);
                        tracing::warn!(
                            shard,
                            "cpu_poll_after_data_ms: {}: {e}; idle CPUs halt as without it",
                            tutti_sys::CPU_LATENCY_DEVICE
                        );
                        return None;
                    }
                }
            }
        } else if self.hold.is_some() && now >= self.until {
            self.hold = None;
        }
        self.hold.as_ref().map(|_| {
            // At least a millisecond: a park shorter than that costs more than it saves.
            self.until
                .saturating_duration_since(now)
                .max(Duration::from_millis(1))
        })
    }
}

/// Everything a shard thread needs; built by the daemon, moved into the thread.
pub struct Shard {
    pub index: usize,
    pub node_id: u32,
    pub idle: IdleStrategy,
    /// How long the backoff strategy spins after data, and whether it still pays.
    spin: SpinAfterData,
    /// How long the shard keeps idle CPUs polling after its last data
    /// (`Config::cpu_poll_after_data_ms`; zero: never).
    cpu_poll: CpuPoll,
    pub commands: Receiver<ShardCommand>,
    pub events: Sender<ShardEvent>,
    pub events_wake: Arc<EventFd>,
    pub wake: Arc<EventFd>,
    pub doorbell: ShardDoorbell,
    pub stats: Arc<ShardStats>,
    clients: Vec<ClientSlot>,
    groups: Vec<Option<GroupSlot>>,
    /// The cluster node of this shard, when the daemon is in a cluster.
    cluster: Option<Cluster>,
    /// Group handle by cluster-wide group id (for deliveries from other daemons).
    by_gid: FxMap<u64, u32>,
    /// Process tables of the `cpg` groups (and of those draining after their last local
    /// process went).
    cpg: CpgTables,
    /// Handles of the groups whose log is written for a leaver (`GroupSlot::lingering`).
    lingering: Vec<u32>,
    /// The last view of each ordered group whose slot went while this daemon may still be
    /// in its order (a leave waiting for its messages to drain, a dormant cpg group), kept
    /// current: a client that joins again before the daemon left gets it, since no
    /// membership change (and so no view) follows. At most [`MAX_KEPT_VIEWS`].
    kept_views: HashMap<u64, (u64, Vec<u32>)>,
    /// Passes since the cluster was last polled.
    since_cluster: u32,
    last_view: Option<String>,
    /// When the groups' rates were last sampled.
    last_sample: std::time::Instant,
    /// Client frames or remote deliveries since the shard last parked (the backoff
    /// strategy spins long only then).
    data_since_park: bool,
    /// `membarrier(GLOBAL_EXPEDITED)` works here (and the shard may park): barrier mode is
    /// allowed.
    barrier_allowed: bool,
    /// In barrier mode since the last park: the next park calls `membarrier`.
    barrier_mode: bool,
    /// Frames taken from the rings since the last park.
    frames_since_park: usize,
    /// Region operations in flight: op -> the control thread's token.
    region_ops: HashMap<RegionOp, u64>,
    _doorbell_map: Mapping,
}

impl Shard {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: usize,
        node_id: u32,
        idle: IdleStrategy,
        spin_after_data: Duration,
        cpu_poll_after_data: Duration,
        commands: Receiver<ShardCommand>,
        events: Sender<ShardEvent>,
        events_wake: Arc<EventFd>,
        wake: Arc<EventFd>,
        doorbell_map: Mapping,
        stats: Arc<ShardStats>,
        cluster: Option<Cluster>,
    ) -> Result<Shard, String> {
        // SAFETY: doorbell_map is a live page-sized mapping owned by this shard for its life
        // (kept in `_doorbell_map`), initialised by the daemon before the shard starts.
        let doorbell = unsafe { ShardDoorbell::attach(doorbell_map.as_ptr(), doorbell_map.len()) }
            .map_err(|e| format!("shard {index} doorbell: {e}"))?;
        if idle == IdleStrategy::Spin {
            doorbell.set_never_parks();
        }
        Ok(Shard {
            index,
            node_id,
            idle,
            spin: SpinAfterData::new(spin_after_data),
            cpu_poll: CpuPoll::new(cpu_poll_after_data),
            commands,
            events,
            events_wake,
            wake,
            doorbell,
            stats,
            clients: Vec::new(),
            groups: Vec::new(),
            cluster,
            by_gid: FxMap::default(),
            cpg: CpgTables::new(node_id),
            lingering: Vec::new(),
            kept_views: HashMap::new(),
            since_cluster: 0,
            last_view: None,
            last_sample: std::time::Instant::now(),
            data_since_park: false,
            barrier_allowed: idle == IdleStrategy::Backoff
                && tutti_sys::membarrier_global_expedited_available(),
            barrier_mode: false,
            frames_since_park: 0,
            region_ops: HashMap::new(),
            _doorbell_map: doorbell_map,
        })
    }

    /// The shard's loop; returns on `Shutdown` or when the daemon drops its command queue.
    pub fn run(mut self) {
        let mut idle_passes: u32 = 0;
        let mut idle_since = Instant::now();
        let mut since_commands: u32 = 0;
        // This stretch of empty passes after data spins (decided at its first pass).
        let mut data_spin = false;
        loop {
            let mut work = self.poll_rings();
            if work > 0 {
                self.data_since_park = true;
            }
            self.since_cluster += 1;
            if self.cluster.is_some() && (work > 0 || self.since_cluster >= CLUSTER_POLL_INTERVAL) {
                self.since_cluster = 0;
                let cluster_work = self.poll_cluster() + self.drain_regions();
                self.end_lingering();
                if cluster_work > 0 {
                    // Keep polling every pass while the network is busy.
                    self.since_cluster = CLUSTER_POLL_INTERVAL;
                }
                work += cluster_work;
            }
            since_commands += 1;
            if work == 0 || since_commands >= COMMAND_CHECK_INTERVAL {
                since_commands = 0;
                match self.apply_commands() {
                    Ok(n) if n > 0 => idle_passes = 0,
                    Ok(_) => {}
                    Err(()) => {
                        if let Some(cluster) = self.cluster.as_mut() {
                            cluster.shutdown();
                        }
                        return;
                    }
                }
            }
            if work > 0 {
                if data_spin && idle_passes > 0 {
                    // The spin after data caught work.
                    self.spin.caught();
                }
                data_spin = false;
                idle_passes = 0;
                continue;
            }
            idle_passes = idle_passes.saturating_add(1);
            match self.idle {
                IdleStrategy::Spin => std::hint::spin_loop(),
                IdleStrategy::Backoff => {
                    // After data: spin for `spin.duration` (the clock is read every 16th
                    // pass, a vDSO call), looking at the network on every pass, unless the
                    // last spins found nothing (one message in flight: the next comes after
                    // a round trip; `SpinAfterData`); after membership traffic only:
                    // `CONTROL_SPINS` passes.
                    let spin = if self.data_since_park {
                        if idle_passes == 1 {
                            data_spin = self.spin.pays();
                            if data_spin {
                                idle_since = Instant::now();
                            } else {
                                self.stats.add(counter::SPINS_SKIPPED, 1);
                            }
                        }
                        self.since_cluster = CLUSTER_POLL_INTERVAL;
                        data_spin
                            && (!idle_passes.is_multiple_of(16) || idle_since.elapsed() < self.spin.duration)
                    } else {
                        idle_passes < CONTROL_SPINS
                    };
                    if spin {
                        std::hint::spin_loop();
                    } else {
                        data_spin = false;
                        if self.data_since_park {
                            // A stretch after data that caught nothing (spun or not).
                            self.spin.missed();
                        }
                        self.stats.add(counter::IDLE_SPINS, u64::from(idle_passes));
                        self.park();
                        idle_passes = 0;
                        self.data_since_park = false;
                        // Whatever woke the shard (a datagram, a doorbell) is looked at
                        // on the first pass.
                        self.since_cluster = CLUSTER_POLL_INTERVAL;
                    }
                }
            }
        }
    }

    /// Resets the eventfd, announces that the shard sleeps, looks once more for work (a
    /// client that committed before seeing the flag must not be missed), then blocks on
    /// the eventfd (and the socket).
    ///
    /// The eventfd is reset here, before the flag goes up, and not when the wait returns:
    /// a read right after the wake is a system call on the path of the message that woke
    /// the shard (before its datagram is sent, or before the subscriber's futex is woken;
    /// `perf trace` of `tutti-bench cluster --nodes 2` showed it as the first call of both
    /// hops, an `EAGAIN` on the datagram hop). A ring that lands after this reset (a client
    /// that saw the flag of the last park) leaves the eventfd readable: the wait returns at
    /// once and the next park resets it. A ring from before the reset is for a frame that
    /// was taken or that the look below sees.
    ///
    /// With io_uring the reset is skipped when the transport's one-shot poll of the
    /// eventfd is still armed and has not fired: nothing rang it since the last park (a
    /// shard woken by a datagram, the receiving side of every message). The `read` it
    /// saves returned `EAGAIN` on every park of the receiving daemon in `perf trace`.
    fn park(&mut self) {
        let fd = self.wake.as_raw_fd();
        if !self.cluster.as_ref().is_some_and(|c| c.wake_quiet(fd)) {
            self.wake.drain();
        }
        // set_parked fences; it pairs with the client's fence between its commit and its
        // look at `parked`: either the client sees parked = 1 and rings, or we see its frame.
        // In barrier mode the membarrier stands for the fences that clients skipped.
        let mut timeout = PARK_TIMEOUT;
        if let Some(left) = self
            .cpu_poll
            .before_park(self.data_since_park, self.index, &self.stats)
        {
            // Wake when the hold is due to end, to end it.
            timeout = timeout.min(left);
        }
        self.frames_since_park = 0;
        if std::mem::take(&mut self.barrier_mode) {
            self.doorbell.park_leaving_barrier_mode();
            self.stats.add(counter::PARK_BARRIERS, 1);
            if let Err(e) = tutti_sys::membarrier_global_expedited() {
                tracing::warn!(shard = self.index, "membarrier: {e}; clients fence from now on");
                self.barrier_allowed = false;
                std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
                timeout = PARK_AFTER_FAILED_BARRIER;
            }
        } else {
            self.doorbell.set_parked(true);
        }
        let pending = self
            .clients
            .iter()
            .any(|c| !c.blocked && c.consumer.has_pending())
            || !self.commands.is_empty();
        if !pending {
            self.stats.add(counter::PARKS, 1);
            match self.cluster.as_mut() {
                Some(cluster) => cluster.wait(timeout, self.wake.as_raw_fd()),
                None => {
                    self.wake.wait(timeout);
                }
            }
        }
        self.doorbell.set_parked(false);
    }

    /// One pass over every publish ring; returns how many frames moved.
    fn poll_rings(&mut self) -> usize {
        let mut total = 0;
        let mut failed: Option<(usize, String)> = None;
        let groups = &mut self.groups;
        let stats = &self.stats;
        let cpg = &self.cpg;
        let mut cluster = self.cluster.as_mut();
        for (i, client) in self.clients.iter_mut().enumerate() {
            if !client.consumer.has_pending() {
                continue;
            }
            match drain_ring(
                client,
                groups,
                stats,
                cpg,
                cluster.as_deref_mut(),
                FRAMES_PER_RING_PASS,
                false,
            ) {
                Ok(n) => total += n,
                Err(reason) => {
                    failed = Some((i, reason));
                    break;
                }
            }
        }
        if let Some((i, reason)) = failed {
            self.fail_client(i, reason);
        }
        self.frames_since_park += total;
        if self.frames_since_park >= BARRIER_MODE_FRAMES && self.barrier_allowed && !self.barrier_mode {
            self.barrier_mode = true;
            self.doorbell.enter_barrier_mode();
        }
        if total > 0 {
            self.ring_group_doorbells();
        }
        total
    }

    /// Wakes subscribers sleeping on a group that just got data: a fence and a load per
    /// dirty group (in `waiters`); a futex wake only when someone sleeps.
    fn ring_group_doorbells(&mut self) {
        ring_doorbells(&mut self.groups, &self.stats);
    }

    fn fail_client(&mut self, index: usize, reason: String) {
        let client = self.clients.swap_remove(index);
        self.stats.add(counter::BAD_FRAMES, 1);
        self.stats.set(counter::CLIENTS, self.clients.len() as u64);
        tracing::warn!(shard = self.index, session = client.session, %reason, "client broke the ring protocol; ending its session");
        // The control thread may be gone at shutdown; nothing else to do then.
        let _ = self.events.try_send(ShardEvent::ClientFailed {
            session: client.session,
            reason,
        });
        self.events_wake.notify();
    }

    fn client_index(&self, session: u32) -> Option<usize> {
        self.clients.iter().position(|c| c.session == session)
    }

    /// Publishes whatever a client has committed (used before it leaves or goes). A frame
    /// accepted into the ring is a message published: frames a bimodal group's full
    /// flow-control window holds go out past it (at most this one ring's worth), and not
    /// onto a ring nobody drains again.
    fn drain_client(&mut self, index: usize) {
        loop {
            let client = &mut self.clients[index];
            match drain_ring(
                client,
                &mut self.groups,
                &self.stats,
                &self.cpg,
                self.cluster.as_mut(),
                usize::MAX,
                true,
            ) {
                Ok(0) => break,
                Ok(_) => self.ring_group_doorbells(),
                Err(reason) => {
                    self.fail_client(index, reason);
                    return;
                }
            }
        }
    }

    /// Applies queued control commands. `Err` means stop the shard.
    fn apply_commands(&mut self) -> Result<usize, ()> {
        self.stats.add(counter::HEARTBEAT, 1);
        self.publish_cluster_stats();
        self.sample_rates();
        let mut applied = 0;
        while let Ok(cmd) = self.commands.try_recv() {
            applied += 1;
            match cmd {
                ShardCommand::Shutdown => return Err(()),
                ShardCommand::AddGroup {
                    handle,
                    gid,
                    name,
                    options,
                    log,
                    doorbell,
                    ack,
                } => {
                    let _ = ack.send(self.add_group(handle, (gid, &name), options, log, doorbell));
                }
                ShardCommand::CpgProc {
                    handle,
                    session,
                    pid,
                    reason,
                    ack,
                } => {
                    let result = match self.groups.get_mut(handle as usize).and_then(Option::as_mut) {
                        Some(g) => {
                            match pid {
                                Some(pid) => {
                                    // A local process again: the slot no longer lingers.
                                    if g.lingering.take().is_some() {
                                        self.lingering.retain(|&h| h != handle);
                                    }
                                    self.cpg.proc_join(g.gid, session, pid)
                                }
                                None => self.cpg.proc_leave(g.gid, session, reason),
                            }
                            Ok(())
                        }
                        None => Err(format!("no group {handle} on this shard")),
                    };
                    let _ = ack.send(result);
                }
                ShardCommand::Watch {
                    handle,
                    session,
                    watch,
                    page,
                    sender,
                } => {
                    if let Some(g) = self.groups.get_mut(handle as usize).and_then(Option::as_mut) {
                        g.watchers.retain(|w| w.session != session);
                        let w = Watcher {
                            session,
                            watch,
                            sender,
                            _page: page,
                        };
                        // The page comes armed at the reader's position when it asked: a
                        // record appended since then (before this watcher was here) wakes it.
                        w.wake_if_armed(g.writer.end(), &self.stats);
                        g.watchers.push(w);
                    }
                }
                ShardCommand::Unwatch { handle, session } => {
                    if let Some(g) = self.groups.get_mut(handle as usize).and_then(Option::as_mut) {
                        g.watchers.retain(|w| w.session != session);
                    }
                }
                ShardCommand::Readers { handle, readers, ack } => {
                    if let Some(g) = self.groups.get_mut(handle as usize).and_then(Option::as_mut) {
                        g.readers = readers;
                    }
                    if let Some(ack) = ack {
                        let _ = ack.send(Ok(()));
                    }
                }
                ShardCommand::Providers { handle, providers } => {
                    if let Some(g) = self.groups.get_mut(handle as usize).and_then(Option::as_mut) {
                        g.ordered.providers = providers;
                    }
                }
                ShardCommand::SnapshotReady {
                    handle,
                    position,
                    snapshot,
                } => {
                    let slot = self.groups.get_mut(handle as usize).and_then(Option::as_mut);
                    if let (Some(g), Some(cluster)) = (slot, self.cluster.as_mut()) {
                        // Only the snapshot asked for: a late answer after the timeout
                        // (the joiner got an empty one) or for another position is dropped.
                        if g.ordered.snapshot_wait.is_some_and(|(p, _)| p == position) {
                            g.ordered.snapshot_wait = None;
                            cluster.snapshot_ready(g.gid, &snapshot);
                        }
                    }
                }
                ShardCommand::DropGroup { handle, linger } => {
                    for c in &mut self.clients {
                        if let Some(j) = c.joined.get_mut(handle as usize) {
                            *j = false;
                        }
                    }
                    let slot = self.groups.get_mut(handle as usize).and_then(Option::as_mut);
                    match slot {
                        Some(g) if linger.is_some() && g.options.cpg => {
                            // Reported by end_lingering at once if nothing local is pending.
                            g.lingering = linger.map(|n| (Instant::now() + LINGER_MAX, n));
                            if !self.lingering.contains(&handle) {
                                self.lingering.push(handle);
                            }
                        }
                        _ => self.release_group(handle),
                    }
                }
                ShardCommand::AddClient { session, ring, ack } => {
                    // SAFETY: `ring` is a live mapping that the client slot keeps alive as
                    // long as the consumer exists; the daemon initialised it.
                    let consumer = unsafe { PublishConsumer::attach(ring.as_ptr(), ring.len()) };
                    let result = match consumer {
                        Ok(consumer) => {
                            let sender = (u64::from(self.node_id) << 32) | u64::from(session);
                            self.clients.push(ClientSlot {
                                session,
                                sender,
                                consumer,
                                blocked: false,
                                joined: Vec::new(),
                                _ring: ring,
                            });
                            self.stats.set(counter::CLIENTS, self.clients.len() as u64);
                            Ok(())
                        }
                        Err(e) => Err(format!("publish ring: {e}")),
                    };
                    let _ = ack.send(result);
                }
                ShardCommand::Subscribe { session, handle, ack } => {
                    let known = self.groups.get(handle as usize).is_some_and(|g| g.is_some());
                    let result = match self.client_index(session) {
                        Some(i) if known => {
                            let joined = &mut self.clients[i].joined;
                            if joined.len() <= handle as usize {
                                joined.resize(handle as usize + 1, false);
                            }
                            joined[handle as usize] = true;
                            Ok(())
                        }
                        Some(_) => Err(format!("group handle {handle} unknown to shard {}", self.index)),
                        None => Err(format!("session {session} unknown to shard {}", self.index)),
                    };
                    let _ = ack.send(result);
                }
                ShardCommand::Unsubscribe { session, handle, ack } => {
                    if let Some(i) = self.client_index(session) {
                        self.drain_client(i);
                    }
                    if let Some(i) = self.client_index(session) {
                        if let Some(j) = self.clients[i].joined.get_mut(handle as usize) {
                            *j = false;
                        }
                    }
                    let _ = ack.send(Ok(()));
                }
                ShardCommand::Report { reply } => {
                    let _ = reply.send(self.report());
                }
                ShardCommand::Region { token, request } => self.start_region_op(token, request),
                ShardCommand::DropClient { session } => {
                    if let Some(i) = self.client_index(session) {
                        self.drain_client(i);
                    }
                    if let Some(i) = self.client_index(session) {
                        let mut client = self.clients.swap_remove(i);
                        // What is left was refused by an ordered group (full, or a cpg
                        // join not yet in the order): counted, never silently dropped.
                        let left = client.consumer.poll(usize::MAX, |_, _| {}).unwrap_or(0);
                        if left > 0 {
                            self.stats.add(counter::PUBLISH_ABANDONED, left as u64);
                            tracing::warn!(
                                shard = self.index,
                                session,
                                frames = left,
                                "a client that went left frames an ordered group refused; not published"
                            );
                        }
                    }
                    self.stats.set(counter::CLIENTS, self.clients.len() as u64);
                }
            }
        }
        Ok(applied)
    }

    /// Takes datagrams, runs timers and sends; appends what other daemons published.
    fn poll_cluster(&mut self) -> usize {
        let Some(cluster) = self.cluster.as_mut() else {
            return 0;
        };
        let groups = &mut self.groups;
        let by_gid = &self.by_gid;
        let stats = &self.stats;
        let cpg = &mut self.cpg;
        let me = self.node_id;
        let cpg_evs = cluster.cpg_evs();
        let kept_views = &mut self.kept_views;
        let mut appended = false;
        // Snapshot requests no local client can answer: answered empty after the poll.
        let mut answer_empty: Vec<u64> = Vec::new();
        // Snapshot requests of cpg groups, answered with the process table at the request.
        let mut answer_cpg: Vec<(u64, Vec<u8>)> = Vec::new();
        let ring = cluster.ring();
        // The group of the last message delivered, and its handle (`by_gid` does not
        // change during the poll).
        let mut last_deliver: Option<(u64, u32)> = None;
        let work = cluster.poll(&mut |event| match event {
            ClusterEvent::OrderedDeliver {
                group,
                sender,
                payload,
            } if cpg.has(group) => {
                if sender as u32 == cpg::CONTROL_SESSION {
                    // Applied even with no local member left (draining), so that this
                    // daemon knows when its own leaves are in the order.
                    let changes = cpg.deliver(group, (sender >> 32) as u32, payload);
                    if let Some(slot) = slot_of(groups, by_gid, group) {
                        for change in &changes {
                            append_confchg(slot, &ring, change, stats);
                            appended = true;
                        }
                    }
                } else if !cpg.is_member(group, sender) {
                    // Sent before its join or after its leave was ordered: never delivered.
                    stats.add(counter::NOT_JOINED, 1);
                } else if let Some(slot) = slot_of(groups, by_gid, group) {
                    append_ordered(slot, sender, payload, stats);
                    appended = true;
                }
            }
            ClusterEvent::OrderedDeliver {
                group,
                sender,
                payload,
            } => match slot_of(groups, by_gid, group) {
                Some(slot) => {
                    append_ordered(slot, sender, payload, stats);
                    appended = true;
                }
                None => stats.add(counter::NOT_JOINED, 1),
            },
            ClusterEvent::OrderedView {
                group,
                id,
                members,
                joined,
                left,
            } => {
                if let Some(kept) = kept_views.get_mut(&group) {
                    *kept = (id, members.to_vec());
                }
                if cpg.has(group) {
                    // Daemons that left the group's order take their processes along.
                    let gone: Vec<(u32, bool)> = left
                        .iter()
                        .map(|&(node, why)| (node >> 8, why == LeftReason::Left.code()))
                        .collect();
                    let change = cpg.remove_nodes(group, &gone);
                    if cpg_evs && !joined.is_empty() {
                        // `evs`: daemons came from elsewhere (a merge, a join; no state
                        // transfer): every daemon announces its processes again.
                        let daemons: Vec<u32> = members.iter().map(|&n| n >> 8).collect();
                        cpg.merge(group, me, &daemons);
                    }
                    if let Some(slot) = slot_of(groups, by_gid, group) {
                        stats.add(counter::ORDERED_VIEWS, 1);
                        slot.ordered.view = Some((id, members.to_vec()));
                        // Members are woken only for a record: a CPG program takes a
                        // readable descriptor to mean an event is waiting.
                        if let Some(change) = change {
                            append_confchg(slot, &ring, &change, stats);
                            appended = true;
                        }
                    }
                } else if let Some(slot) = slot_of(groups, by_gid, group) {
                    if slot.writer.append_view(id, members, joined, left).is_err() {
                        stats.add(counter::ORDERED_DROPPED, 1);
                    }
                    stats.add(counter::ORDERED_VIEWS, 1);
                    slot.ordered.view = Some((id, members.to_vec()));
                    slot.dirty = true;
                    appended = true;
                }
            }
            ClusterEvent::SnapshotRequest { group, position } => {
                stats.add(counter::SNAPSHOT_REQUESTS, 1);
                if cpg.has(group) {
                    answer_cpg.push((group, cpg.snapshot(group)));
                    return;
                }
                match slot_of(groups, by_gid, group) {
                    Some(slot) if slot.ordered.providers > 0 => {
                        slot.writer.append_snapshot_request(position);
                        slot.ordered.snapshot_wait = Some((position, Instant::now()));
                        slot.dirty = true;
                        appended = true;
                    }
                    _ => answer_empty.push(group),
                }
            }
            ClusterEvent::Installed {
                group,
                position,
                snapshot,
            } => {
                if cpg.has(group) {
                    stats.add(counter::SNAPSHOTS_INSTALLED, 1);
                    if let Err(e) = cpg.install(group, snapshot) {
                        tracing::warn!(group = %format!("{group:#x}"), "cpg state transfer: {e}");
                    }
                    return;
                }
                if let Some(slot) = slot_of(groups, by_gid, group) {
                    stats.add(counter::SNAPSHOTS_INSTALLED, 1);
                    if slot.writer.append_installed(position, snapshot).is_err() {
                        // Larger than this host's log can hold: the members are told that
                        // something they needed is gone rather than left to guess.
                        stats.add(counter::ORDERED_DROPPED, 1);
                        slot.writer.append_lost(0, 1);
                    }
                    slot.dirty = true;
                    appended = true;
                }
            }
            ClusterEvent::OrderedStatus { group, status } => {
                if status.starts_with("removed") {
                    // Out of the order: no later join finds this daemon still in it.
                    kept_views.remove(&group);
                    cpg.left_order(group);
                }
                if let Some(slot) = slot_of(groups, by_gid, group) {
                    match status {
                        "minority" => stats.add(counter::ORDERED_MINORITY, 1),
                        "majority" => {}
                        _ => stats.add(counter::ORDERED_REMOVED, 1),
                    }
                    slot.ordered.status = status.to_string();
                }
            }
            ClusterEvent::Deliver(d) => {
                let (group, payload) = (d.group, d.payload);
                let sender = crate::cluster::sender_id(d.sender, d.session);
                // A datagram's messages are mostly of one group: its handle is looked up
                // once per run, not hashed per message.
                let handle = match last_deliver {
                    Some((gid, h)) if gid == group => Some(h),
                    _ => by_gid.get(&group).copied(),
                };
                last_deliver = handle.map(|h| (group, h));
                let slot = handle
                    .and_then(|h| groups.get_mut(h as usize))
                    .and_then(Option::as_mut);
                match slot {
                    Some(slot) if slot.unread() => {
                        slot.received += 1;
                        stats.add(counter::UNLOGGED, 1);
                    }
                    Some(slot) => {
                        if slot.writer.append(sender, payload).is_err() {
                            // Larger than this host's log can hold: its members will never
                            // get it, so they are told.
                            stats.add(counter::REMOTE_TOO_LARGE, 1);
                            slot.writer.append_lost(sender, 1);
                        } else {
                            slot.received += 1;
                        }
                        slot.dirty = true;
                        appended = true;
                    }
                    None => stats.add(counter::NOT_JOINED, 1),
                }
            }
            ClusterEvent::Lost { group, sender, count } => {
                // Every local member learns of the gap once, in stream order.
                if let Some(slot) = by_gid
                    .get(&group)
                    .and_then(|&h| groups.get_mut(h as usize))
                    .and_then(Option::as_mut)
                {
                    if !slot.unread() {
                        slot.writer.append_lost(sender, count);
                        slot.dirty = true;
                        appended = true;
                    }
                }
            }
        });
        if appended {
            // Sleeping subscribers first, before the chores below: a wake-up on the path
            // of every message to a parked subscriber waits for nothing else.
            ring_doorbells(groups, stats);
        }
        for gid in answer_empty {
            stats.add(counter::SNAPSHOTS_EMPTY, 1);
            cluster.snapshot_ready(gid, &[]);
        }
        for (gid, table) in answer_cpg {
            cluster.snapshot_ready(gid, &table);
        }
        // Process changes of local sessions into the order.
        cpg.flush(cluster);
        // The daemons' ring changed: cpg members see it as a view record (CPG's totem view).
        let ring = cluster.ring();
        for g in groups.iter_mut().flatten() {
            if g.options.cpg && g.ordered.ring_written != Some(ring.0) {
                g.ordered.ring_written = Some(ring.0);
                if g.writer.append_view(ring.0, &ring.1, &[], &[]).is_ok() {
                    g.dirty = true;
                    appended = true;
                }
            }
        }
        // A provider that does not answer in time: the joiner gets an empty snapshot.
        for g in groups.iter_mut().flatten() {
            if g.ordered
                .snapshot_wait
                .is_some_and(|(_, asked)| asked.elapsed() >= SNAPSHOT_TIMEOUT)
            {
                g.ordered.snapshot_wait = None;
                stats.add(counter::SNAPSHOTS_EMPTY, 1);
                cluster.snapshot_ready(g.gid, &[]);
            }
        }
        if appended {
            self.data_since_park = true;
            self.ring_group_doorbells();
        }
        if let Some(view) = self.cluster.as_ref().map(|c| c.view_summary()) {
            if self.last_view.as_deref() != Some(view) {
                self.last_view = Some(view.to_string());
                let _ = self.events.try_send(ShardEvent::View {
                    shard: self.index,
                    summary: view.to_string(),
                });
                self.events_wake.notify();
            }
        }
        work
    }

    /// Every [`RATE_SAMPLE_PERIOD`]: each group's messages per second since the last sample.
    fn sample_rates(&mut self) {
        let now = std::time::Instant::now();
        let secs = now.duration_since(self.last_sample).as_secs_f64();
        if secs < RATE_SAMPLE_PERIOD.as_secs_f64() {
            return;
        }
        self.last_sample = now;
        for g in self.groups.iter_mut().flatten() {
            g.rates = (
                (g.published - g.sampled.0) as f64 / secs,
                (g.received - g.sampled.1) as f64 / secs,
            );
            g.sampled = (g.published, g.received);
        }
    }

    /// Submits a client's region operation to the cluster node; refusals answer at once.
    fn start_region_op(&mut self, token: u64, request: RegionRequest) {
        let Some(cluster) = self.cluster.as_mut() else {
            return self.region_done(token, RegionResult::NoCluster);
        };
        let r = match &request {
            RegionRequest::Create { name, size } => cluster.region_create(name, *size),
            RegionRequest::Txn(txn) => cluster.region_minitx(txn),
        };
        match r {
            Ok(op) => {
                self.region_ops.insert(op, token);
                self.drain_regions();
            }
            Err(e) => self.region_done(token, RegionResult::Failed(e)),
        }
    }

    /// Hands the region outcomes of the cluster node to the control thread.
    fn drain_regions(&mut self) -> usize {
        let mut done = Vec::new();
        if let Some(cluster) = self.cluster.as_mut() {
            while let Some(e) = cluster.poll_region_event() {
                if let Some(token) = self.region_ops.remove(&e.op) {
                    let result = match e.result {
                        Ok(reads) => RegionResult::Done(reads),
                        Err(err) => RegionResult::Failed(err),
                    };
                    done.push((token, result));
                }
            }
        }
        let n = done.len();
        for (token, result) in done {
            self.region_done(token, result);
        }
        n
    }

    fn region_done(&mut self, token: u64, result: RegionResult) {
        // Never blocks the shard: a full queue loses the answer, and the control thread
        // answers the client `Unavailable` when the operation's deadline passes.
        let _ = self.events.try_send(ShardEvent::Region { token, result });
        self.events_wake.notify();
    }

    fn report(&self) -> ShardReport {
        ShardReport {
            regions: self
                .cluster
                .as_ref()
                .filter(|_| self.index == 0)
                .map_or_else(String::new, |c| c.regions_text()),
            cpg: self.cpg.listing(),
            members: self
                .cluster
                .as_ref()
                .map_or_else(String::new, |c| c.members_text("    ")),
            groups: self
                .groups
                .iter()
                .enumerate()
                .filter_map(|(handle, g)| {
                    g.as_ref().map(|g| GroupTraffic {
                        handle: handle as u32,
                        published: g.published,
                        received: g.received,
                        published_per_sec: g.rates.0,
                        received_per_sec: g.rates.1,
                        ordered: g.options.ordered.then(|| {
                            let o = &g.ordered;
                            let view = match &o.view {
                                Some((id, members)) => {
                                    let daemons: Vec<String> =
                                        members.iter().map(|m| (m >> 8).to_string()).collect();
                                    format!("view {id} [{}]", daemons.join(", "))
                                }
                                None => "no view yet".to_string(),
                            };
                            let status = match (&o.view, o.status.is_empty()) {
                                (None, true) => "joining",
                                (Some(_), true) => "member",
                                _ => &o.status,
                            };
                            let detail = self
                                .cluster
                                .as_ref()
                                .and_then(|c| c.ordered_detail(g.gid))
                                .unwrap_or_default();
                            format!(
                                "ordered: {view}, {status}, delivered {}, snapshot providers here {}\n    {detail}",
                                o.delivered, o.providers
                            )
                        }),
                    })
                })
                .collect(),
        }
    }

    /// Copies the cluster's counters into the shared-memory page.
    fn publish_cluster_stats(&self) {
        let Some(cluster) = self.cluster.as_ref() else {
            return;
        };
        let c = cluster.stats();
        for (index, value) in [
            (counter::DATAGRAMS_IN, c.datagrams_in),
            (counter::DATAGRAMS_OUT, c.datagrams_out),
            (counter::DECODE_ERRORS, c.decode_errors),
            (counter::UNKNOWN_PEER, c.unknown_peer),
            (counter::RETRANSMITS, c.retransmits),
            (counter::GOSSIP_ROUNDS, c.gossip_rounds),
            (counter::LOST, c.lost),
            (counter::VIEW_CHANGES, c.view_changes),
            (counter::VIEW_MEMBERS, c.view_members),
            (counter::REMOTE_DELIVERED, c.remote_delivered),
            (counter::NOT_SENT, c.not_sent),
            (counter::FAULT_DROPPED, c.fault_dropped),
            (counter::BAD_FRAGMENTS, c.bad_fragments),
            (counter::WINDOW_OVERFLOW, c.window_overflow),
            (counter::EVICTED_BUDGET, c.evicted_budget),
            (counter::GAP_REQUESTS, c.gap_requests),
            (counter::TAIL_REQUESTS, c.tail_requests),
            (counter::PARTIALS_DROPPED, c.partials_dropped),
            (counter::RETAINED_BYTES, c.retained_bytes),
            (counter::DUPLICATE_IDS, c.duplicate_ids),
            (counter::AUTH_FAILED, c.auth_failed),
            (counter::REPLAYED, c.replayed),
            (counter::AUTH_SENDERS_FULL, c.auth_senders_full),
            (counter::PROTOCOL_REFUSED, c.protocol_refused),
            (counter::FLOW_STATUSES, c.flow_statuses),
            (counter::FLOW_SLOW_MEMBERS, c.flow_slow_members),
        ] {
            self.stats.set(index, value);
        }
    }

    /// Frees a group's slot: the daemon leaves the group (a cpg group stays in its order,
    /// dormant), and its log is no longer written.
    fn release_group(&mut self, handle: u32) {
        if let Some(slot) = self.groups.get_mut(handle as usize) {
            if let (Some(group), Some(cluster)) = (slot.as_ref(), self.cluster.as_mut()) {
                if let Some(view) = group.ordered.view.as_ref() {
                    if self.kept_views.len() < MAX_KEPT_VIEWS {
                        self.kept_views.insert(group.gid, view.clone());
                    }
                }
                if group.options.cpg {
                    // Stays in the order, dormant (see `cpg::MAX_DORMANT`).
                    if let Some(gid) = self.cpg.sleep(group.gid) {
                        cluster.leave_ordered(gid);
                    }
                } else if group.options.ordered {
                    cluster.leave_ordered(group.gid);
                } else {
                    cluster.leave(group.gid);
                }
                if self.by_gid.get(&group.gid) == Some(&handle) {
                    self.by_gid.remove(&group.gid);
                }
            }
            *slot = None;
        }
        self.lingering.retain(|&h| h != handle);
        self.stats
            .set(counter::GROUPS, self.groups.iter().flatten().count() as u64);
    }

    /// Tells the control thread which groups written for a leaver have the local
    /// processes' leaves through the order (the leaver has its own leave's confchg), or
    /// reached their deadline; their slots are freed when it drops them.
    fn end_lingering(&mut self) {
        if self.lingering.is_empty() {
            return;
        }
        let now = Instant::now();
        let groups = &self.groups;
        self.lingering.retain(|&h| {
            groups
                .get(h as usize)
                .and_then(Option::as_ref)
                .is_some_and(|g| g.lingering.is_some())
        });
        let (groups, cpg) = (&self.groups, &mut self.cpg);
        let mut done = Vec::new();
        for &handle in &self.lingering {
            let Some((gid, (deadline, linger))) = groups
                .get(handle as usize)
                .and_then(Option::as_ref)
                .and_then(|g| Some((g.gid, g.lingering?)))
            else {
                // Freed meanwhile: nothing to tell.
                continue;
            };
            if now >= deadline {
                tracing::warn!(
                    group = %format!("{gid:#x}"),
                    "a cpg leave not through the order in {LINGER_MAX:?}: the group's log ends"
                );
                cpg.forget_in_order(gid);
                done.push((handle, linger));
            } else if !cpg.has_local(gid) {
                done.push((handle, linger));
            }
        }
        for (handle, linger) in done {
            match self.events.try_send(ShardEvent::LingerOver { handle, linger }) {
                Ok(()) => {
                    self.lingering.retain(|&h| h != handle);
                    self.events_wake.notify();
                }
                // Told again at the next pass.
                Err(crossbeam_channel::TrySendError::Full(_)) => {}
                // The control thread is gone only at shutdown, when nothing needs the slot.
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => self.release_group(handle),
            }
        }
    }

    fn add_group(
        &mut self,
        handle: u32,
        (gid, name): (u64, &str),
        options: GroupOptions,
        log: Mapping,
        doorbell: Mapping,
    ) -> Result<(), String> {
        // A group joined again while its log is still written for a leaver (or a handle
        // reused meanwhile): that leaver's log ends here, before the new slot takes the id.
        let before = [Some(handle), self.by_gid.get(&gid).copied()];
        for h in before.into_iter().flatten() {
            if self
                .groups
                .get(h as usize)
                .and_then(Option::as_ref)
                .is_some_and(|g| g.lingering.is_some())
            {
                self.release_group(h);
            }
        }
        // SAFETY: both mappings are live and kept in the slot for as long as the writer and
        // doorbell exist; the daemon initialised them and no one else writes the log.
        let mut writer =
            unsafe { LogWriter::attach(log.as_ptr(), log.len()) }.map_err(|e| format!("log: {e}"))?;
        // SAFETY: as above, for the doorbell page.
        let group_doorbell = unsafe { GroupDoorbell::attach(doorbell.as_ptr(), doorbell.len()) }
            .map_err(|e| format!("doorbell: {e}"))?;
        let index = handle as usize;
        if self.groups.len() <= index {
            self.groups.resize_with(index + 1, || None);
        }
        // The ring as `Cluster::ring` gives it (it changes only when the daemons do), not
        // the view counter: under `evs` a join changes the view (its directory group), and a
        // log started from the counter got a ring record before its own join's confchg
        // (`CS_DISPATCH_ONE_NONBLOCKING` then found no confchg: conformance, `n2.api.*`).
        let ring_now = self.cluster.as_mut().filter(|_| options.cpg).map(|c| c.ring().0);
        let kept_view = self.kept_views.remove(&gid);
        // Still in the group's order (a dormant cpg group, a leave cancelled before it was
        // sent): no view follows, so the new log starts from the last one.
        let mut still_member = false;
        match self.cluster.as_mut() {
            Some(cluster) if options.cpg => {
                // A dormant group here is still a member of its order.
                // Under `cluster.cpg_partition = "evs"` a cut-off minority goes on, as
                // Corosync's.
                let evs = cluster.cpg_evs();
                still_member = self.cpg.open(gid, name) || cluster.join_ordered(gid, evs)?;
                self.by_gid.insert(gid, handle);
            }
            Some(cluster) if options.ordered => {
                still_member = cluster.join_ordered(gid, options.evs)?;
                self.by_gid.insert(gid, handle);
            }
            Some(cluster) => {
                cluster.join(gid);
                self.by_gid.insert(gid, handle);
            }
            None if options.ordered => return Err("ordered groups need a cluster".into()),
            None => {}
        }
        let view = kept_view.filter(|_| still_member);
        if let Some((id, members)) = view.as_ref().filter(|_| !options.cpg) {
            // A cpg group's members learn theirs from their join's confchg.
            if writer.append_view(*id, members, &[], &[]).is_err() {
                self.stats.add(counter::ORDERED_DROPPED, 1);
            }
        }
        self.groups[index] = Some(GroupSlot {
            gid,
            writer,
            doorbell: group_doorbell,
            dirty: false,
            published: 0,
            received: 0,
            sampled: (0, 0),
            rates: (0.0, 0.0),
            options,
            // Members learn the ring of their join from its confchg: only later changes
            // are written as views.
            ordered: OrderedState {
                ring_written: ring_now,
                view,
                ..OrderedState::default()
            },
            lingering: None,
            watchers: Vec::new(),
            readers: 0,
            _log: log,
            _doorbell: doorbell,
        });
        self.stats
            .set(counter::GROUPS, self.groups.iter().flatten().count() as u64);
        Ok(())
    }
}

/// Appends an ordered message to a group's log (or a lost notice if it cannot hold it).
fn append_ordered(slot: &mut GroupSlot, sender: u64, payload: &[u8], stats: &ShardStats) {
    if slot.writer.append(sender, payload).is_err() {
        stats.add(counter::ORDERED_DROPPED, 1);
        slot.writer.append_lost(sender, 1);
    } else {
        slot.ordered.delivered += 1;
        slot.received += 1;
        stats.add(counter::ORDERED_DELIVERED, 1);
    }
    slot.dirty = true;
}

/// Appends a cpg confchg with the daemons' ring it happened in.
fn append_confchg(
    slot: &mut GroupSlot,
    ring: &crate::cluster::Ring,
    change: &cpg::Confchg,
    stats: &ShardStats,
) {
    if slot
        .writer
        .append_confchg(ring.0, &ring.1, &change.members, &change.joined, &change.left)
        .is_err()
    {
        // Larger than this host's log record: members are told something is gone.
        stats.add(counter::ORDERED_DROPPED, 1);
        slot.writer.append_lost(0, 1);
    }
    slot.dirty = true;
}

/// The slot of the group with cluster-wide id `group`, if it lives here.
fn slot_of<'a>(
    groups: &'a mut [Option<GroupSlot>],
    by_gid: &FxMap<u64, u32>,
    group: u64,
) -> Option<&'a mut GroupSlot> {
    let handle = *by_gid.get(&group)?;
    groups.get_mut(handle as usize)?.as_mut()
}

/// [`Shard::ring_group_doorbells`] on borrowed parts of the shard.
fn ring_doorbells(groups: &mut [Option<GroupSlot>], stats: &ShardStats) {
    for group in groups.iter_mut().flatten() {
        if group.dirty {
            group.dirty = false;
            if group.doorbell.waiters() > 0 {
                group.doorbell.bump();
                tutti_sys::futex_wake_all(group.doorbell.futex_word());
                stats.add(counter::SUBSCRIBER_WAKES, 1);
            }
            if !group.watchers.is_empty() {
                let end = group.writer.end();
                for w in &group.watchers {
                    w.wake_if_armed(end, stats);
                }
            }
        }
    }
}

/// Moves up to `limit` frames from one client's publish ring into group logs. A frame
/// for a group the client has not joined, or a malformed ring, ends the client.
/// `leaving`: the client is going (or leaving a group): bimodal flow control does not hold
/// its frames back.
fn drain_ring(
    client: &mut ClientSlot,
    groups: &mut [Option<GroupSlot>],
    stats: &ShardStats,
    cpg: &CpgTables,
    mut cluster: Option<&mut Cluster>,
    limit: usize,
    leaving: bool,
) -> Result<usize, String> {
    let ClientSlot {
        consumer,
        joined,
        sender,
        session,
        blocked,
        ..
    } = client;
    let mut bad: Option<String> = None;
    let mut bytes = 0u64;
    let (mut too_large, mut unlogged) = (0u64, 0u64);
    let (mut submitted, mut full) = (0u64, false);
    let mut flow_held = false;
    // One clock read per batch of frames, not per message.
    let now = cluster.as_deref().map_or(0, Cluster::now);
    let n = consumer
        .poll_while(limit, |handle, payload| {
            if bad.is_some() {
                return true;
            }
            let allowed = joined.get(handle as usize).copied().unwrap_or(false);
            let group = if allowed {
                groups.get_mut(handle as usize).and_then(Option::as_mut)
            } else {
                None
            };
            match group {
                Some(group) => {
                    // One read of the client's frame serves the local log and the cluster:
                    // a client rewriting it meanwhile cannot make them differ. Without a
                    // cluster the log append is the one read (the frame is copied straight
                    // into the log); with one, the cluster node copies the frame once into
                    // its retention buffer and the log append copies from there. Nothing
                    // else here may read `payload`'s bytes again (tests: hostile_client.rs,
                    // flipped bytes in a cluster). Its length is the ring's, read once.
                    if payload.len() > group.writer.max_payload() {
                        too_large += 1;
                        return true;
                    }
                    if group.options.ordered {
                        // Into the total order; the local log gets it back in that order,
                        // like every member. Refused for now: it stays in the ring.
                        let Some(cluster) = cluster.as_deref_mut() else {
                            too_large += 1;
                            return true;
                        };
                        // A cpg member's data must not overtake its join in the order.
                        if group.options.cpg && cpg.blocks_data(group.gid) {
                            full = true;
                            return false;
                        }
                        // Queued: the group runs once the pass is over (one batch).
                        return match cluster.queue_ordered(group.gid, *session, payload, group.options.safe) {
                            Ok(()) => {
                                bytes += payload.len() as u64;
                                submitted += 1;
                                group.published += 1;
                                true
                            }
                            Err(OrderedRefusal::Full) => {
                                full = true;
                                false
                            }
                            Err(OrderedRefusal::TooLarge) => {
                                too_large += 1;
                                true
                            }
                        };
                    }
                    // Multicast: the log copies from the node's copy, read in place; a group
                    // whose local members only publish is not logged at all.
                    let unread = group.unread();
                    let mut appended = None;
                    if let Some(c) = cluster.as_deref_mut() {
                        let writer = &mut group.writer;
                        let r = c.submit(now, group.gid, *session, payload, leaving, |copy| {
                            if !unread {
                                appended = Some(writer.append(*sender, copy).is_ok());
                            }
                        });
                        if r == Submit::Held {
                            // Flow control: the slowest member served holds the window
                            // full. The frame stays in the ring (the client sees it fill:
                            // back pressure) and is retried when a status reopens the
                            // window, never dropped (a client that goes is drained past
                            // the window: `leaving`).
                            flow_held = true;
                            return false;
                        }
                    }
                    bytes += payload.len() as u64;
                    if unread {
                        unlogged += 1;
                        group.published += 1;
                        return true;
                    }
                    let appended = match appended {
                        Some(ok) => ok,
                        None => group.writer.append(*sender, payload).is_ok(),
                    };
                    if appended {
                        group.dirty = true;
                        group.published += 1;
                    } else {
                        too_large += 1;
                    }
                    true
                }
                None => {
                    bad = Some(format!(
                        "frame for group handle {handle}, which this client has not joined"
                    ));
                    true
                }
            }
        })
        .map_err(|e| format!("malformed publish ring: {e}"));
    if submitted > 0 {
        // The ordered frames of this pass, queued above, go as one batch.
        if let Some(cluster) = cluster {
            cluster.run_queued_ordered();
        }
    }
    let n = n?;
    stats.add(counter::FRAMES_IN, n as u64);
    stats.add(counter::BYTES_IN, bytes);
    *blocked = full || flow_held;
    if full {
        stats.add(counter::ORDERED_FULL, 1);
    }
    if flow_held {
        stats.add(counter::FLOW_HELD, 1);
    }
    if submitted > 0 {
        stats.add(counter::ORDERED_SUBMITTED, submitted);
    }
    if too_large > 0 {
        stats.add(counter::TOO_LARGE, too_large);
    }
    if unlogged > 0 {
        stats.add(counter::UNLOGGED, unlogged);
    }
    match bad {
        Some(reason) => Err(reason),
        None => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::SpinAfterData;
    use std::time::Duration;

    /// Spins while they catch work; after `MISSES_BEFORE_REST` stretches in a row that
    /// caught nothing, only every `PROBE_EVERY`th stretch spins, until one catches again.
    /// A zero duration never spins.
    #[test]
    fn the_spin_after_data_rests_after_misses_and_probes_until_it_catches() {
        let mut spin = SpinAfterData::new(Duration::from_micros(5));
        let mut spun = Vec::new();
        for _ in 0..40 {
            spun.push(spin.pays());
            spin.missed();
        }
        let expected: Vec<bool> = (0..40u32)
            .map(|n| n < SpinAfterData::MISSES_BEFORE_REST || n % SpinAfterData::PROBE_EVERY == 0)
            .collect();
        assert_eq!(spun, expected);
        assert_eq!(spun.iter().filter(|&&s| s).count(), 8 + 2);
        spin.caught();
        assert!(spin.pays());
        assert!(!SpinAfterData::new(Duration::ZERO).pays());
    }
}
