//! Named, bounded memory regions of the cluster for applications (issue 12, "Minitransactions
//! for applications"): an application creates a region by name and size, then runs
//! minitransactions (compare, read and write items naming region, offset and bytes) over
//! any of its regions, atomically and serializably, to build counters, locks, leases and
//! configuration on them. Sans-IO like the rest of `proto`; [`crate::Node`] drives it.
//!
//! **Where regions live.** All application regions of a cluster live on one replicated memory
//! node: the one of the reserved group [`REGIONS_GROUP`], hosted by the ordered-group host
//! (`ordered::host`) exactly like an ordered group's (primary and backup placed by
//! rendezvous over the cluster view, created on first contact, the backup promoted when the
//! view drops the primary), and reached over the wire's `Ordered` messages (`ToMemnode` /
//! `ToMember` of that group id: no new wire kind). Its two regions are used as
//! - a **directory** (the ordered layout's `LIST` region): `alloc: u64` at 0 (the next free
//!   heap offset), then `dir_slots` slots of [`DIR_SLOT_BYTES`]: `(id u64, offset u64,
//!   size u64, 0 u64)`, id 0 = empty. A region's slot is among the [`DIR_PROBE`] slots from
//!   `id % (dir_slots - DIR_PROBE + 1)` (linear probing without wrap-around);
//! - a **heap** (the `QUEUES` region) of `heap_bytes`, from which regions are carved
//!   (8-byte aligned, never freed).
//!
//! Creating a region is itself a minitransaction (compare the allocation pointer and the
//! probe window as read, write the slot and the new pointer), so creation is replicated and
//! survives a failover like any write, and two concurrent creators of one name agree on one
//! region (the loser's compare fails; it reads again and finds the winner's slot). A
//! transaction on regions resolves each region's slot once (cached: a region never moves)
//! and carries a compare of that slot as a guard, so a stale cache can never write to
//! the wrong bytes: the guard fails and the slot is read again.
//!
//! Every transaction involves one memory node, so it commits in one phase and is trivially
//! atomic across the regions it names. Spreading regions over several memory nodes (two-phase
//! commit, built in `minitx`) needs memory-node ids other than the ordered layer's fixed
//! `MEMNODE` in the host: not built (`docs/regions.md`).

use crate::minitx::{Address, Coordinator, Minitransaction, MinitxSettings, Outcome, TxId, TxnError};
use crate::ordered::{choose_memnode_hosts, LIST, MEMNODE, QUEUES};
use crate::{GroupId, NodeId, Time};
use std::collections::{BTreeMap, HashMap, VecDeque};
use thiserror::Error;
use tutti_wire::packet::{memnode_message, OrderedLayout};

/// The reserved group id whose memory node holds every application region ("regions!").
pub const REGIONS_GROUP: GroupId = 0x7265_6769_6f6e_7321;
/// Answers for the region coordinator queued in the host at once; beyond, dropped (the
/// coordinator resends).
pub const MAX_QUEUED_REPLIES: usize = 4096;
/// Directory slots probed for one region id.
pub const DIR_PROBE: u32 = 8;
/// Bytes of one directory slot.
pub const DIR_SLOT_BYTES: u32 = 32;
/// Bytes before the first directory slot (the allocation pointer).
const DIR_HEADER: u32 = 8;
/// Longest region name, in bytes.
pub const MAX_NAME: usize = 255;
/// Heap offsets are aligned to this (a counter at offset 0 is aligned).
const HEAP_ALIGN: u64 = 8;

/// A region's 64-bit id: a hash of its name (never 0: 0 marks an empty directory slot).
pub type RegionId = u64;

/// One application operation (a create or a transaction): its [`RegionEvent`] carries it.
pub type RegionOp = u64;

/// The id of region `name`: FNV-1a, then a splitmix64 finaliser (stable across builds and
/// platforms: every daemon computes the same id).
pub fn region_id(name: &str) -> RegionId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^= h >> 31;
    h.max(1)
}

/// Whether `group` is the reserved region group (its memory node answers go to the region
/// coordinator, not to an ordered member).
pub fn is_region_group(group: GroupId) -> bool {
    group == REGIONS_GROUP
}

/// Sizes and limits of application regions, each with its default and its trade. Every
/// daemon of a cluster must use the same `dir_slots` and `heap_bytes` (the memory node's
/// layout travels in every request and a replica refuses another).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionSettings {
    /// Directory slots: at most this many regions (fewer when probe windows fill up).
    /// Larger: more regions, more memory on the memory node (32 bytes each).
    pub dir_slots: u32,
    /// Bytes of the heap regions are carved from (allocated lazily by the OS: zero pages).
    pub heap_bytes: u32,
    /// Largest region.
    pub max_region_size: u32,
    /// Items (compares + reads + writes) per application transaction.
    pub max_items: usize,
    /// Bytes per application transaction (compare and write data, read lengths). Larger
    /// transactions take more datagrams and hold the memory node longer.
    pub max_txn_bytes: u32,
    /// Distinct regions one transaction names (each costs a guard compare).
    pub max_regions_per_txn: usize,
    /// Operations (creates and transactions) in flight at once on this node (back
    /// pressure: `Full`).
    pub max_ops: usize,
    /// Resolved regions remembered here (beyond, the cache is cleared: each costs one
    /// more directory read).
    pub max_cached: usize,
    /// Attempts of one operation against concurrent creators or a stale cache before it
    /// reports `Busy`.
    pub max_attempts: u32,
}

impl Default for RegionSettings {
    fn default() -> RegionSettings {
        RegionSettings {
            dir_slots: 4096,
            heap_bytes: 16 << 20,
            max_region_size: 64 * 1024,
            max_items: 32,
            max_txn_bytes: 60 * 1024,
            max_regions_per_txn: 8,
            max_ops: 256,
            max_cached: 4096,
            max_attempts: 16,
        }
    }
}

impl RegionSettings {
    /// Why these settings cannot work with the minitransaction layer's limits, if so.
    pub fn check(&self) -> Result<(), &'static str> {
        let m = MinitxSettings::default();
        if self.dir_slots < DIR_PROBE || u64::from(self.dir_slots) * 32 + 8 > u64::from(u32::MAX) {
            return Err("dir_slots must be at least DIR_PROBE and fit a u32 region");
        }
        if self.heap_bytes < 64 || self.max_region_size == 0 || self.max_region_size > self.heap_bytes {
            return Err("heap_bytes must be at least 64 and hold max_region_size (above 0)");
        }
        if u64::from(self.heap_bytes) + u64::from(self.dir_slots) * 32 + 64 > m.max_memory {
            return Err("the region memory node exceeds the minitransaction layer's max_memory");
        }
        if self.max_items == 0 || self.max_items + self.max_regions_per_txn > m.max_items {
            return Err("max_items + max_regions_per_txn exceeds the minitransaction item limit");
        }
        let guards = (self.max_regions_per_txn as u64) * u64::from(DIR_SLOT_BYTES);
        if u64::from(self.max_txn_bytes) + guards > m.txn_byte_limit() {
            return Err("max_txn_bytes exceeds the minitransaction byte limit");
        }
        if self.max_regions_per_txn == 0 || self.max_ops == 0 || self.max_attempts == 0 {
            return Err("max_regions_per_txn, max_ops and max_attempts must be above 0");
        }
        Ok(())
    }

    /// The memory node's layout as the ordered host knows it (list = directory, one queue
    /// of one slot = the heap).
    pub fn layout(&self) -> OrderedLayout {
        OrderedLayout {
            list_slots: self.dir_slots,
            max_members: 1,
            queue_slots: 1,
            max_payload: self.heap_bytes - crate::ordered::QUEUE_HEADER as u32,
        }
    }

    fn window_start(&self, id: RegionId) -> u32 {
        (id % u64::from(self.dir_slots - DIR_PROBE + 1)) as u32
    }
}

/// A transaction over regions: if every compare matches, every write is applied and every
/// read returned, atomically; otherwise nothing is written. Reads see the state before the
/// writes. Offsets are within the region.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegionTxn {
    pub compares: Vec<(RegionId, u32, Vec<u8>)>,
    pub reads: Vec<(RegionId, u32, u32)>,
    pub writes: Vec<(RegionId, u32, Vec<u8>)>,
}

impl RegionTxn {
    pub fn new() -> RegionTxn {
        RegionTxn::default()
    }

    /// Requires the bytes at `offset` of `region` to equal `expected`.
    pub fn compare(mut self, region: RegionId, offset: u32, expected: &[u8]) -> RegionTxn {
        self.compares.push((region, offset, expected.to_vec()));
        self
    }

    /// Returns `len` bytes at `offset` of `region`.
    pub fn read(mut self, region: RegionId, offset: u32, len: u32) -> RegionTxn {
        self.reads.push((region, offset, len));
        self
    }

    /// Stores `bytes` at `offset` of `region`.
    pub fn write(mut self, region: RegionId, offset: u32, bytes: &[u8]) -> RegionTxn {
        self.writes.push((region, offset, bytes.to_vec()));
        self
    }

    /// The regions named, sorted, without repetition.
    pub fn regions(&self) -> Vec<RegionId> {
        let mut all: Vec<RegionId> = self
            .compares
            .iter()
            .map(|c| c.0)
            .chain(self.reads.iter().map(|r| r.0))
            .chain(self.writes.iter().map(|w| w.0))
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    pub fn item_count(&self) -> usize {
        self.compares.len() + self.reads.len() + self.writes.len()
    }

    /// Compare and write data plus read lengths.
    pub fn byte_count(&self) -> u64 {
        self.compares
            .iter()
            .map(|c| c.2.len() as u64)
            .chain(self.writes.iter().map(|w| w.2.len() as u64))
            .chain(self.reads.iter().map(|r| u64::from(r.2)))
            .sum()
    }
}

/// Why a region operation did not succeed. Every error but `Unavailable` means nothing
/// was written.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RegionError {
    /// A compare item did not match: `failed` holds (index among the compares, current
    /// bytes) of the failed compares; `reads` the read items as they were (`None` where
    /// unknown).
    #[error("compare failed: {} item(s) differ", failed.len())]
    Conflict {
        failed: Vec<(usize, Vec<u8>)>,
        reads: Vec<Option<Vec<u8>>>,
    },
    /// No region with this id (create it first).
    #[error("region {region:#018x} does not exist (create it first)")]
    RegionMissing { region: RegionId },
    /// The region exists with another size (`size`).
    #[error("region {region:#018x} exists with size {size}")]
    SizeMismatch { region: RegionId, size: u32 },
    /// An item reaches past the end of its region.
    #[error("an item reaches past the end of region {region:#018x}")]
    OutOfBounds { region: RegionId },
    /// More items, bytes or regions than the limits allow, or a region larger than
    /// `max_region_size` (or of size 0).
    #[error("over a size limit (items, bytes, regions per transaction or region size)")]
    TooLarge,
    /// The directory or the heap is full.
    #[error("no space left for a new region (directory or heap full)")]
    NoSpace,
    /// This node is not in a majority view.
    #[error("not in a majority view")]
    NotInMajority,
    /// The memory node was busy, or concurrent creators / stale caches kept the operation
    /// from finishing within `max_attempts`: retry.
    #[error("busy: retry")]
    Busy,
    /// No answer in time: the outcome is NOT known (read the data to learn it).
    #[error("memory node unavailable: outcome unknown")]
    Unavailable,
    /// `max_ops` operations in flight here: back pressure.
    #[error("too many region operations in flight")]
    Full,
}

/// The end of a region operation: the read items (in the order of `reads`) of a committed
/// transaction, nothing for a create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionEvent {
    pub op: RegionOp,
    pub result: Result<Vec<Vec<u8>>, RegionError>,
}

/// What the region layer counted on this node (monotonic).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegionCounters {
    pub creates: u64,
    pub created: u64,
    pub txns: u64,
    pub committed: u64,
    pub conflicts: u64,
    pub missing: u64,
    /// Refused for a limit, bounds, size mismatch or no space.
    pub refused: u64,
    pub unavailable: u64,
    pub busy: u64,
    /// Minitransactions submitted (lookups, inserts, resolves and executions).
    pub minitxs: u64,
    /// Attempts repeated after a concurrent create or a stale cached slot.
    pub retries: u64,
    /// Answers from the memory node queued for this coordinator (drops are the host's).
    pub replies: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DirEntry {
    slot: u32,
    offset: u32,
    size: u32,
}

enum Task {
    Create { region: RegionId, size: u32 },
    Txn(RegionTxn),
}

enum Step {
    /// Create: read the allocation pointer and the probe window.
    Lookup,
    /// Create: claim slot `slot` and `size` heap bytes at `at` (compares: the pointer and
    /// the window as read).
    Insert { entry: DirEntry },
    /// Transaction: read the probe windows of the regions not cached.
    Resolve { regions: Vec<RegionId> },
    /// Transaction: the guarded transaction itself; `guards` compares come first.
    Exec { guards: Vec<RegionId> },
}

struct Op {
    task: Task,
    step: Step,
    attempts: u32,
}

/// The region coordinator of one node. See the module documentation.
pub struct Regions {
    me: NodeId,
    settings: RegionSettings,
    coordinator: Coordinator,
    layout: OrderedLayout,
    cache: HashMap<RegionId, DirEntry>,
    ops: BTreeMap<RegionOp, Op>,
    by_txid: HashMap<TxId, RegionOp>,
    next_op: RegionOp,
    /// Where the memory node runs: (primary, backup), placed on first use.
    placement: Option<(NodeId, Option<NodeId>)>,
    view_members: Vec<NodeId>,
    max_view: usize,
    out: VecDeque<(NodeId, Vec<u8>)>,
    events: VecDeque<RegionEvent>,
    counters: RegionCounters,
}

fn minitx_settings(s: &RegionSettings) -> MinitxSettings {
    MinitxSettings {
        // One minitransaction per operation at a time.
        max_in_flight: s.max_ops,
        ..MinitxSettings::default()
    }
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = bytes.get(at..at + 8) {
        b.copy_from_slice(s);
    }
    u64::from_le_bytes(b)
}

fn dir_slot_offset(slot: u32) -> u32 {
    DIR_HEADER + slot * DIR_SLOT_BYTES
}

fn encode_slot(id: RegionId, e: &DirEntry) -> Vec<u8> {
    let mut b = Vec::with_capacity(DIR_SLOT_BYTES as usize);
    b.extend_from_slice(&id.to_le_bytes());
    b.extend_from_slice(&u64::from(e.offset).to_le_bytes());
    b.extend_from_slice(&u64::from(e.size).to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b
}

fn dir(offset: u32) -> Address {
    Address::new(MEMNODE, LIST, offset)
}

impl Regions {
    pub fn new(me: NodeId, incarnation: u32) -> Regions {
        let settings = RegionSettings::default();
        Regions {
            me,
            coordinator: Coordinator::new(me, incarnation, minitx_settings(&settings)),
            layout: settings.layout(),
            settings,
            cache: HashMap::new(),
            ops: BTreeMap::new(),
            by_txid: HashMap::new(),
            next_op: 1,
            placement: None,
            view_members: vec![me],
            max_view: 1,
            out: VecDeque::new(),
            events: VecDeque::new(),
            counters: RegionCounters::default(),
        }
    }

    /// Replaces the settings (before the first operation: they shape the memory node).
    pub fn set_settings(&mut self, incarnation: u32, settings: RegionSettings) -> Result<(), &'static str> {
        settings.check()?;
        // A new coordinator restarts its transaction numbers: after the first one, the
        // memory node would take a new transaction for a duplicate of an old one.
        if self.counters.minitxs > 0 {
            return Err("region settings are fixed once a region operation ran");
        }
        self.coordinator = Coordinator::new(self.me, incarnation, minitx_settings(&settings));
        if let Some((p, _)) = self.placement {
            self.coordinator.set_placement(MEMNODE, p);
        }
        self.layout = settings.layout();
        self.settings = settings;
        self.cache.clear();
        Ok(())
    }

    pub fn settings(&self) -> &RegionSettings {
        &self.settings
    }

    pub fn counters(&self) -> &RegionCounters {
        &self.counters
    }

    /// Operations in flight.
    pub fn pending(&self) -> usize {
        self.ops.len()
    }

    /// Where the region memory node runs, if placed: (primary, backup).
    pub fn placement(&self) -> Option<(NodeId, Option<NodeId>)> {
        self.placement
    }

    // ---- application calls ----

    /// Creates region `region` of `size` bytes (zero-filled), or finds it with that size
    /// (idempotent). The outcome comes as a [`RegionEvent`] with the returned op.
    pub fn create(&mut self, now: Time, region: RegionId, size: u32) -> Result<RegionOp, RegionError> {
        if size == 0 || size > self.settings.max_region_size {
            self.counters.refused += 1;
            return Err(RegionError::TooLarge);
        }
        self.admit()?;
        self.counters.creates += 1;
        let op = self.new_op();
        if let Some(e) = self.cache.get(&region).copied() {
            let result = if e.size == size {
                Ok(Vec::new())
            } else {
                Err(RegionError::SizeMismatch { region, size: e.size })
            };
            self.finish_event(op, result);
            return Ok(op);
        }
        self.ops.insert(
            op,
            Op {
                task: Task::Create { region, size },
                step: Step::Lookup,
                attempts: 0,
            },
        );
        self.start(now, op);
        Ok(op)
    }

    /// Runs transaction `txn`; the outcome comes as a [`RegionEvent`] with the returned op.
    pub fn minitx(&mut self, now: Time, txn: &RegionTxn) -> Result<RegionOp, RegionError> {
        let regions = txn.regions();
        if txn.item_count() > self.settings.max_items
            || txn.byte_count() > u64::from(self.settings.max_txn_bytes)
            || regions.len() > self.settings.max_regions_per_txn
        {
            self.counters.refused += 1;
            return Err(RegionError::TooLarge);
        }
        self.admit()?;
        self.counters.txns += 1;
        let op = self.new_op();
        let missing: Vec<RegionId> = regions
            .into_iter()
            .filter(|r| !self.cache.contains_key(r))
            .collect();
        let step = if missing.is_empty() {
            Step::Exec { guards: Vec::new() }
        } else {
            Step::Resolve { regions: missing }
        };
        self.ops.insert(
            op,
            Op {
                task: Task::Txn(txn.clone()),
                step,
                attempts: 0,
            },
        );
        self.start(now, op);
        Ok(op)
    }

    pub fn poll_event(&mut self) -> Option<RegionEvent> {
        self.events.pop_front()
    }

    // ---- driver calls ----

    /// A `ToMemnode` body for the region group (layout + minitransaction message) and
    /// where to send it.
    pub fn poll_transmit(&mut self) -> Option<(NodeId, Vec<u8>)> {
        self.out.pop_front()
    }

    /// An answer of the region memory node (a `ToMember` message of the region group).
    pub fn handle_reply(&mut self, now: Time, from: NodeId, bytes: &[u8]) {
        self.counters.replies += 1;
        self.coordinator.handle_message(now, from, bytes);
        self.drive(now);
    }

    pub fn poll_timeout(&self) -> Option<Time> {
        self.coordinator.poll_timeout()
    }

    pub fn handle_timeout(&mut self, now: Time) {
        self.coordinator.handle_timeout(now);
        self.drive(now);
    }

    /// The installed cluster view's live members. Fails the memory node over (same rule
    /// as the ordered host: the backup takes over when the primary leaves the view) and
    /// judges the majority (more than half of the largest view installed).
    pub fn set_view(&mut self, now: Time, members: &[NodeId]) {
        self.view_members = members.to_vec();
        self.view_members.sort_unstable();
        self.view_members.dedup();
        self.max_view = self.max_view.max(self.view_members.len());
        self.coordinator
            .set_in_majority(2 * self.view_members.len() > self.max_view);
        if let Some((primary, backup)) = self.placement {
            let alive = |n: NodeId| self.view_members.binary_search(&n).is_ok();
            if !alive(primary) {
                if let Some(b) = backup.filter(|&b| alive(b)) {
                    self.adopt_placement(b, None);
                }
            } else if backup.is_some_and(|b| !alive(b)) {
                self.placement = Some((primary, None));
            }
        }
        self.drive(now);
    }

    /// The host's placement of the region memory node (authoritative where it hosts a
    /// replica): adopted.
    pub fn adopt_placement(&mut self, primary: NodeId, backup: Option<NodeId>) {
        if self.placement != Some((primary, backup)) {
            self.placement = Some((primary, backup));
            self.coordinator.set_placement(MEMNODE, primary);
        }
    }

    // ---- internals ----

    fn admit(&mut self) -> Result<(), RegionError> {
        if self.ops.len() >= self.settings.max_ops {
            return Err(RegionError::Full);
        }
        if self.placement.is_none() {
            let hosts = choose_memnode_hosts(REGIONS_GROUP, &self.view_members);
            let primary = hosts.first().copied().unwrap_or(self.me);
            self.adopt_placement(primary, hosts.get(1).copied());
        }
        Ok(())
    }

    fn new_op(&mut self) -> RegionOp {
        let op = self.next_op;
        self.next_op += 1;
        op
    }

    fn finish_event(&mut self, op: RegionOp, result: Result<Vec<Vec<u8>>, RegionError>) {
        match &result {
            Ok(_) => {}
            Err(RegionError::Conflict { .. }) => self.counters.conflicts += 1,
            Err(RegionError::RegionMissing { .. }) => self.counters.missing += 1,
            Err(RegionError::Unavailable) => self.counters.unavailable += 1,
            Err(RegionError::Busy) | Err(RegionError::Full) => self.counters.busy += 1,
            Err(_) => self.counters.refused += 1,
        }
        self.events.push_back(RegionEvent { op, result });
    }

    fn finish(&mut self, op: RegionOp, result: Result<Vec<Vec<u8>>, RegionError>) {
        if let Some(o) = self.ops.remove(&op) {
            if result.is_ok() {
                match o.task {
                    Task::Create { .. } => self.counters.created += 1,
                    Task::Txn(_) => self.counters.committed += 1,
                }
            }
        }
        self.finish_event(op, result);
    }

    /// Builds and submits the minitransaction of `op`'s current step.
    fn start(&mut self, now: Time, op: RegionOp) {
        let built = match self.ops.get(&op) {
            Some(o) => self.build(o),
            None => return,
        };
        let mtx = match built {
            Ok((mtx, guards)) => {
                if let Some(o) = self.ops.get_mut(&op) {
                    if let Step::Exec { guards: g } = &mut o.step {
                        *g = guards;
                    }
                }
                mtx
            }
            Err(e) => return self.finish(op, Err(e)),
        };
        self.counters.minitxs += 1;
        match self.coordinator.submit(now, &mtx) {
            Ok(txid) => {
                self.by_txid.insert(txid, op);
            }
            Err(e) => {
                let e = self.map_error(op, e);
                self.finish(op, Err(e));
            }
        }
        self.drain_coordinator();
    }

    fn build(&self, o: &Op) -> Result<(Minitransaction, Vec<RegionId>), RegionError> {
        let s = &self.settings;
        let window = |id: RegionId| dir(dir_slot_offset(s.window_start(id)));
        let window_len = DIR_PROBE * DIR_SLOT_BYTES;
        match (&o.task, &o.step) {
            (Task::Create { region, .. }, Step::Lookup) => Ok((
                Minitransaction::new()
                    .read(dir(0), DIR_HEADER)
                    .read(window(*region), window_len),
                Vec::new(),
            )),
            (Task::Txn(_), Step::Resolve { regions }) => {
                let mut m = Minitransaction::new();
                for r in regions {
                    m = m.read(window(*r), window_len);
                }
                Ok((m, Vec::new()))
            }
            (Task::Txn(txn), Step::Exec { .. }) => {
                let guards = txn.regions();
                let mut m = Minitransaction::new();
                let mut entries = HashMap::new();
                for &r in &guards {
                    let e = *self
                        .cache
                        .get(&r)
                        .ok_or(RegionError::RegionMissing { region: r })?;
                    m = m.compare(dir(dir_slot_offset(e.slot)), &encode_slot(r, &e));
                    entries.insert(r, e);
                }
                let at = |r: RegionId, off: u32, len: u64| -> Result<Address, RegionError> {
                    let e = entries.get(&r).ok_or(RegionError::RegionMissing { region: r })?;
                    if u64::from(off) + len > u64::from(e.size) {
                        return Err(RegionError::OutOfBounds { region: r });
                    }
                    Ok(Address::new(MEMNODE, QUEUES, e.offset + off))
                };
                for (r, off, bytes) in &txn.compares {
                    m = m.compare(at(*r, *off, bytes.len() as u64)?, bytes);
                }
                for (r, off, len) in &txn.reads {
                    m = m.read(at(*r, *off, u64::from(*len))?, *len);
                }
                for (r, off, bytes) in &txn.writes {
                    m = m.write(at(*r, *off, bytes.len() as u64)?, bytes);
                }
                Ok((m, guards))
            }
            // An insert is built from the lookup's answer (`on_outcome`), and steps
            // match their tasks: nothing else reaches here.
            _ => {
                debug_assert!(false, "no minitransaction to build for this step");
                Err(RegionError::Busy)
            }
        }
    }

    fn map_error(&self, op: RegionOp, e: TxnError) -> RegionError {
        let first = self.ops.get(&op).and_then(|o| match &o.task {
            Task::Create { region, .. } => Some(*region),
            Task::Txn(t) => t.regions().first().copied(),
        });
        match e {
            TxnError::NotInMajority => RegionError::NotInMajority,
            TxnError::Full | TxnError::Busy => RegionError::Busy,
            TxnError::TooLarge => RegionError::TooLarge,
            TxnError::Unavailable => RegionError::Unavailable,
            // The memory node lacks its directory or heap, or an item left them: the
            // directory does not hold a region that fits.
            TxnError::RegionMissing { .. } => RegionError::RegionMissing {
                region: first.unwrap_or(0),
            },
            TxnError::OutOfBounds { .. } => RegionError::OutOfBounds {
                region: first.unwrap_or(0),
            },
            TxnError::Conflict { failed, reads } => RegionError::Conflict { failed, reads },
        }
    }

    fn drain_coordinator(&mut self) {
        while let Some((to, bytes)) = self.coordinator.poll_transmit() {
            self.out.push_back((to, memnode_message(&self.layout, &bytes)));
        }
    }

    fn drive(&mut self, now: Time) {
        self.drain_coordinator();
        while let Some(outcome) = self.coordinator.poll_event() {
            self.on_outcome(now, outcome);
        }
        self.drain_coordinator();
    }

    /// Finds `region` in a probe window read from the directory: `Ok(entry)` if there,
    /// `Err(first empty slot)` if not.
    fn find(&self, region: RegionId, window: &[u8]) -> Result<DirEntry, Option<u32>> {
        let start = self.settings.window_start(region);
        let mut empty = None;
        for i in 0..DIR_PROBE {
            let at = (i * DIR_SLOT_BYTES) as usize;
            let id = u64_at(window, at);
            if id == region {
                return Ok(DirEntry {
                    slot: start + i,
                    offset: u32::try_from(u64_at(window, at + 8)).unwrap_or(u32::MAX),
                    size: u32::try_from(u64_at(window, at + 16)).unwrap_or(0),
                });
            }
            if id == 0 && empty.is_none() {
                empty = Some(start + i);
            }
        }
        Err(empty)
    }

    fn retry(&mut self, now: Time, op: RegionOp, step: Step) {
        let max = self.settings.max_attempts;
        let Some(o) = self.ops.get_mut(&op) else { return };
        o.attempts += 1;
        if o.attempts >= max {
            return self.finish(op, Err(RegionError::Busy));
        }
        self.counters.retries += 1;
        o.step = step;
        self.start(now, op);
    }

    fn on_outcome(&mut self, now: Time, outcome: Outcome) {
        let Some(op) = self.by_txid.remove(&outcome.txid) else {
            return;
        };
        let Some(o) = self.ops.get(&op) else { return };
        let result = outcome.result;
        match (&o.task, &o.step) {
            (&Task::Create { region, size }, Step::Lookup) => {
                let reads = match result {
                    Ok(r) => r,
                    Err(e) => {
                        let e = self.map_error(op, e);
                        return self.finish(op, Err(e));
                    }
                };
                let (ptr_bytes, window) = match reads.as_slice() {
                    [p, w] => (p.clone(), w.clone()),
                    _ => return self.finish(op, Err(RegionError::Unavailable)),
                };
                match self.find(region, &window) {
                    Ok(e) => {
                        self.remember(region, e);
                        let r = if e.size == size {
                            Ok(Vec::new())
                        } else {
                            Err(RegionError::SizeMismatch { region, size: e.size })
                        };
                        self.finish(op, r);
                    }
                    Err(None) => self.finish(op, Err(RegionError::NoSpace)),
                    Err(Some(slot)) => {
                        let ptr = u64_at(&ptr_bytes, 0);
                        let offset = ptr.div_ceil(HEAP_ALIGN) * HEAP_ALIGN;
                        let end = offset + u64::from(size);
                        if end > u64::from(self.settings.heap_bytes) {
                            return self.finish(op, Err(RegionError::NoSpace));
                        }
                        let entry = DirEntry {
                            slot,
                            offset: offset as u32,
                            size,
                        };
                        let start = self.settings.window_start(region);
                        let mtx = Minitransaction::new()
                            .compare(dir(0), &ptr_bytes)
                            .compare(dir(dir_slot_offset(start)), &window)
                            .write(dir(dir_slot_offset(slot)), &encode_slot(region, &entry))
                            .write(dir(0), &end.to_le_bytes());
                        if let Some(o) = self.ops.get_mut(&op) {
                            o.step = Step::Insert { entry };
                        }
                        self.counters.minitxs += 1;
                        match self.coordinator.submit(now, &mtx) {
                            Ok(txid) => {
                                self.by_txid.insert(txid, op);
                            }
                            Err(e) => {
                                let e = self.map_error(op, e);
                                self.finish(op, Err(e));
                            }
                        }
                        self.drain_coordinator();
                    }
                }
            }
            (&Task::Create { region, .. }, &Step::Insert { entry }) => match result {
                Ok(_) => {
                    self.remember(region, entry);
                    self.finish(op, Ok(Vec::new()));
                }
                // Another creator moved the pointer or the window: look again.
                Err(TxnError::Conflict { .. }) => self.retry(now, op, Step::Lookup),
                Err(e) => {
                    let e = self.map_error(op, e);
                    self.finish(op, Err(e));
                }
            },
            (Task::Txn(_), Step::Resolve { regions }) => {
                let regions = regions.clone();
                let reads = match result {
                    Ok(r) if r.len() == regions.len() => r,
                    Ok(_) => return self.finish(op, Err(RegionError::Unavailable)),
                    Err(e) => {
                        let e = self.map_error(op, e);
                        return self.finish(op, Err(e));
                    }
                };
                for (r, window) in regions.iter().zip(&reads) {
                    match self.find(*r, window) {
                        Ok(e) => self.remember(*r, e),
                        Err(_) => return self.finish(op, Err(RegionError::RegionMissing { region: *r })),
                    }
                }
                if let Some(o) = self.ops.get_mut(&op) {
                    o.step = Step::Exec { guards: Vec::new() };
                }
                self.start(now, op);
            }
            (Task::Txn(_), Step::Exec { guards }) => {
                let guards = guards.clone();
                match result {
                    Ok(reads) => self.finish(op, Ok(reads)),
                    Err(TxnError::Conflict { failed, reads }) => {
                        let stale: Vec<RegionId> = failed
                            .iter()
                            .filter_map(|(i, _)| guards.get(*i).copied())
                            .collect();
                        if stale.is_empty() {
                            let n = guards.len();
                            let failed = failed
                                .into_iter()
                                .filter_map(|(i, b)| i.checked_sub(n).map(|i| (i, b)))
                                .collect();
                            return self.finish(op, Err(RegionError::Conflict { failed, reads }));
                        }
                        // A cached slot is stale (the memory node lost it or the cache
                        // was wrong): resolve those regions again.
                        for r in &stale {
                            self.cache.remove(r);
                        }
                        self.retry(now, op, Step::Resolve { regions: stale });
                    }
                    Err(e) => {
                        let e = self.map_error(op, e);
                        self.finish(op, Err(e));
                    }
                }
            }
            _ => self.finish(op, Err(RegionError::Unavailable)),
        }
    }

    fn remember(&mut self, region: RegionId, e: DirEntry) {
        if self.cache.len() >= self.settings.max_cached && !self.cache.contains_key(&region) {
            self.cache.clear();
        }
        self.cache.insert(region, e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_ids_are_stable_and_never_zero() {
        assert_eq!(region_id("counter"), region_id("counter"));
        assert_ne!(region_id("counter"), region_id("counter2"));
        assert_ne!(region_id(""), 0);
    }

    #[test]
    fn default_settings_fit_the_minitx_limits_and_the_ordered_host() {
        RegionSettings::default().check().unwrap();
        // Items past the minitransaction layer's limit once the guards are added.
        let bad = RegionSettings {
            max_items: MinitxSettings::default().max_items,
            ..RegionSettings::default()
        };
        assert!(bad.check().is_err());
        let l = RegionSettings::default().layout();
        assert_eq!(
            u64::from(l.max_members) * u64::from(l.queue_slots) * (u64::from(l.max_payload) + 24),
            16 << 20
        );
    }

    #[test]
    fn settings_are_fixed_once_an_operation_ran() {
        let mut r = Regions::new(1, 1);
        let small = RegionSettings {
            max_region_size: 16,
            ..RegionSettings::default()
        };
        r.set_settings(1, small.clone()).unwrap();
        assert_eq!(r.create(0, 5, 17), Err(RegionError::TooLarge));
        r.create(0, 5, 16).unwrap();
        assert!(r.poll_transmit().is_some(), "a lookup went out");
        assert!(r.set_settings(1, small).is_err());
    }

    #[test]
    fn limits_are_refused_before_any_message() {
        let mut r = Regions::new(1, 1);
        assert_eq!(r.create(0, 5, 0), Err(RegionError::TooLarge));
        assert_eq!(r.create(0, 5, 64 * 1024 + 1), Err(RegionError::TooLarge));
        let mut t = RegionTxn::new();
        for i in 0..33 {
            t = t.read(5, i, 1);
        }
        assert_eq!(r.minitx(0, &t), Err(RegionError::TooLarge));
        let big = RegionTxn::new().write(5, 0, &vec![0; 61 * 1024]);
        assert_eq!(r.minitx(0, &big), Err(RegionError::TooLarge));
        let mut many = RegionTxn::new();
        for id in 1..=9 {
            many = many.read(id, 0, 1);
        }
        assert_eq!(r.minitx(0, &many), Err(RegionError::TooLarge));
        assert!(r.poll_transmit().is_none());
        assert_eq!(r.counters().refused, 5);
    }
}
