//! libtutti: the C API of tutti-client (header `capi/include/tutti.h`, which documents every
//! function, its errors and who owns what). Each entry point checks its pointers, runs
//! under `catch_unwind` (no panic crosses into C) and maps the client's errors to the
//! `TUTTI_ERR_*` codes; the model, and the data path, are the Rust client's.
//!
//! Group options are a struct with a `size` field (`tutti_join_options_t`), so the options
//! of ordered groups (`safe` delivery, the partition policy) can be appended without
//! breaking programs compiled against this version.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod boundary;

use boundary::{guard, with_client, Fail};
use std::cell::{Cell, UnsafeCell};
use std::ffi::{c_char, c_int, c_void, CStr, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;
use tutti_client::{
    Client, Error, Event, GroupId, GroupOptions, GroupWatch, IdleStrategy, OfferError, Rights,
};

/// `tutti_error_t`: TUTTI_OK or a negative `TUTTI_ERR_*`.
pub type TuttiError = i32;

pub const TUTTI_OK: TuttiError = 0;
pub const TUTTI_ERR_INVALID: TuttiError = -1;
pub const TUTTI_ERR_CONNECT: TuttiError = -2;
pub const TUTTI_ERR_DAEMON_GONE: TuttiError = -3;
pub const TUTTI_ERR_REFUSED: TuttiError = -4;
pub const TUTTI_ERR_PERMISSION: TuttiError = -5;
pub const TUTTI_ERR_LIMIT: TuttiError = -6;
pub const TUTTI_ERR_PROTOCOL: TuttiError = -7;
pub const TUTTI_ERR_SHARED_MEMORY: TuttiError = -8;
pub const TUTTI_ERR_IO: TuttiError = -9;
pub const TUTTI_ERR_UNKNOWN_GROUP: TuttiError = -10;
pub const TUTTI_ERR_NOT_SUBSCRIBED: TuttiError = -11;
pub const TUTTI_ERR_NOT_PUBLISHER: TuttiError = -12;
pub const TUTTI_ERR_BACK_PRESSURED: TuttiError = -13;
pub const TUTTI_ERR_TOO_LARGE: TuttiError = -14;
pub const TUTTI_ERR_AGAIN: TuttiError = -15;
pub const TUTTI_ERR_TIMED_OUT: TuttiError = -16;
pub const TUTTI_ERR_BUSY: TuttiError = -17;
pub const TUTTI_ERR_UNSUPPORTED: TuttiError = -18;
pub const TUTTI_ERR_INTERNAL: TuttiError = -19;

/// Every code with its `tutti_strerror` text (the ABI test walks this list).
pub const ERRORS: &[(TuttiError, &str, &CStr)] = &[
    (TUTTI_OK, "TUTTI_OK", c"success"),
    (TUTTI_ERR_INVALID, "TUTTI_ERR_INVALID", c"invalid argument"),
    (
        TUTTI_ERR_CONNECT,
        "TUTTI_ERR_CONNECT",
        c"cannot connect to tuttid",
    ),
    (
        TUTTI_ERR_DAEMON_GONE,
        "TUTTI_ERR_DAEMON_GONE",
        c"tuttid is gone (the daemon stopped or ended this session)",
    ),
    (
        TUTTI_ERR_REFUSED,
        "TUTTI_ERR_REFUSED",
        c"tuttid refused the request",
    ),
    (
        TUTTI_ERR_PERMISSION,
        "TUTTI_ERR_PERMISSION",
        c"permission denied by tuttid's access rules",
    ),
    (
        TUTTI_ERR_LIMIT,
        "TUTTI_ERR_LIMIT",
        c"a resource limit of tuttid is reached",
    ),
    (
        TUTTI_ERR_PROTOCOL,
        "TUTTI_ERR_PROTOCOL",
        c"unexpected answer from tuttid",
    ),
    (
        TUTTI_ERR_SHARED_MEMORY,
        "TUTTI_ERR_SHARED_MEMORY",
        c"shared memory from tuttid is not usable",
    ),
    (
        TUTTI_ERR_IO,
        "TUTTI_ERR_IO",
        c"input/output error on the control socket",
    ),
    (
        TUTTI_ERR_UNKNOWN_GROUP,
        "TUTTI_ERR_UNKNOWN_GROUP",
        c"no such group in this client",
    ),
    (
        TUTTI_ERR_NOT_SUBSCRIBED,
        "TUTTI_ERR_NOT_SUBSCRIBED",
        c"the group was joined without the subscribe right",
    ),
    (
        TUTTI_ERR_NOT_PUBLISHER,
        "TUTTI_ERR_NOT_PUBLISHER",
        c"the group was joined without the publish right",
    ),
    (
        TUTTI_ERR_BACK_PRESSURED,
        "TUTTI_ERR_BACK_PRESSURED",
        c"back pressured: the publish ring is full",
    ),
    (
        TUTTI_ERR_TOO_LARGE,
        "TUTTI_ERR_TOO_LARGE",
        c"message larger than the group's limit",
    ),
    (TUTTI_ERR_AGAIN, "TUTTI_ERR_AGAIN", c"no event waiting"),
    (TUTTI_ERR_TIMED_OUT, "TUTTI_ERR_TIMED_OUT", c"timed out"),
    (
        TUTTI_ERR_BUSY,
        "TUTTI_ERR_BUSY",
        c"client busy (called from its own callback, or a claim is outstanding)",
    ),
    (
        TUTTI_ERR_UNSUPPORTED,
        "TUTTI_ERR_UNSUPPORTED",
        c"not supported by this version of tutti",
    ),
    (
        TUTTI_ERR_INTERNAL,
        "TUTTI_ERR_INTERNAL",
        c"internal error in libtutti",
    ),
];

pub const TUTTI_RIGHT_PUBLISH: u32 = 1;
pub const TUTTI_RIGHT_SUBSCRIBE: u32 = 2;

pub const TUTTI_MODE_DEFAULT: u32 = 0;
pub const TUTTI_MODE_UNRELIABLE: u32 = 1;
pub const TUTTI_MODE_BIMODAL: u32 = 2;
pub const TUTTI_MODE_ORDERED: u32 = 3;

pub const TUTTI_EVENT_MESSAGE: u32 = 1;
pub const TUTTI_EVENT_LAGGED: u32 = 2;
pub const TUTTI_EVENT_LOST: u32 = 3;
/// Ordered groups' view changes (payload: a `tutti_view_t`).
pub const TUTTI_EVENT_VIEW: u32 = 4;
/// `cpg` groups' process membership changes (payload: a `tutti_confchg_t`).
pub const TUTTI_EVENT_CONFCHG: u32 = 5;
/// Ordered groups: the state this member starts from (payload: the snapshot bytes).
pub const TUTTI_EVENT_INSTALLED: u32 = 6;

/// Mode options (`tutti_join_options_t.flags`).
pub const TUTTI_JOIN_SAFE: u32 = 1;
pub const TUTTI_JOIN_CPG: u32 = 2;

/// `tutti_cpg_process_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TuttiCpgProcess {
    pub nodeid: u32,
    pub pid: u32,
    pub reason: u32,
    pub session: u32,
}

/// `tutti_view_t`: pointers into the library's scratch lists (valid as the event is).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct TuttiView {
    pub id: u64,
    pub members: *const u32,
    pub n_members: usize,
    pub joined: *const u32,
    pub n_joined: usize,
    pub left: *const u32,
    pub left_reasons: *const u32,
    pub n_left: usize,
}

/// `tutti_confchg_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct TuttiConfchg {
    pub ring_id: u64,
    pub ring: *const u32,
    pub n_ring: usize,
    pub members: *const TuttiCpgProcess,
    pub n_members: usize,
    pub joined: *const TuttiCpgProcess,
    pub n_joined: usize,
    pub left: *const TuttiCpgProcess,
    pub n_left: usize,
}

/// `tutti_join_options_t` (the version of this library; callers may pass a longer one).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TuttiJoinOptions {
    pub size: u32,
    pub rights: u32,
    pub mode: u32,
    pub flags: u32,
}

/// `tutti_event_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct TuttiEvent {
    pub kind: u32,
    pub group: u32,
    pub seq: u64,
    pub sender: u64,
    pub count: u64,
    pub payload: *const u8,
    pub len: usize,
}

/// `tutti_event_fn`.
pub type TuttiEventFn = Option<unsafe extern "C" fn(event: *const TuttiEvent, user: *mut c_void)>;

/// `tutti_client_t`: opaque to C.
pub struct TuttiClient {
    /// Set while an entry point runs: a call from the client's own callback is refused.
    busy: Cell<bool>,
    /// A panic was caught mid-call; the state may be half-updated.
    poisoned: Cell<bool>,
    state: UnsafeCell<State>,
}

pub(crate) struct State {
    // Field order is drop order: the groups' helper threads watch the client's control
    // socket, so they stop before the client closes it.
    groups: Vec<Option<GroupSlot>>,
    client: Client,
    claim: Option<PendingClaim>,
    /// Where `tutti_next` keeps the payload it hands out (sized at join: no allocation on
    /// the data path).
    next_payload: Vec<u8>,
    /// Where view and confchg events keep their lists while the application reads them.
    scratch: Scratch,
}

/// The lists of the last view or confchg event handed out (membership changes are rare:
/// they may allocate). Boxed structs keep the addresses events point at stable.
pub(crate) struct Scratch {
    words: [Vec<u32>; 4],
    procs: [Vec<TuttiCpgProcess>; 3],
    view: Box<TuttiView>,
    confchg: Box<TuttiConfchg>,
}

impl Default for Scratch {
    fn default() -> Scratch {
        Scratch {
            words: Default::default(),
            procs: Default::default(),
            view: Box::new(TuttiView {
                id: 0,
                members: std::ptr::null(),
                n_members: 0,
                joined: std::ptr::null(),
                n_joined: 0,
                left: std::ptr::null(),
                left_reasons: std::ptr::null(),
                n_left: 0,
            }),
            confchg: Box::new(TuttiConfchg {
                ring_id: 0,
                ring: std::ptr::null(),
                n_ring: 0,
                members: std::ptr::null(),
                n_members: 0,
                joined: std::ptr::null(),
                n_joined: 0,
                left: std::ptr::null(),
                n_left: 0,
            }),
        }
    }
}

struct GroupSlot {
    id: GroupId,
    subscribed: bool,
    /// The group's descriptor (`tutti_fd`), made on first use.
    watch: Option<GroupWatch>,
}

/// A claim handed to C: the publish ring's tail does not move until it is committed or
/// aborted (every other publishing call is refused meanwhile), so claiming the same length
/// again at commit gives the same bytes.
struct PendingClaim {
    group: u32,
    len: usize,
    buf: *mut u8,
}

impl State {
    fn slot(&self, group: u32) -> Result<&GroupSlot, Fail> {
        self.groups
            .get(group as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| {
                Fail::text(
                    TUTTI_ERR_UNKNOWN_GROUP,
                    format!("no group {group} in this client"),
                )
            })
    }

    fn no_claim(&self) -> Result<(), Fail> {
        match self.claim {
            Some(_) => Err(Fail::new(
                TUTTI_ERR_BUSY,
                c"a claim is outstanding: tutti_commit or tutti_abort it first",
            )),
            None => Ok(()),
        }
    }

    /// After a poll that found nothing, before its descriptor is armed again: if the
    /// descriptor says the daemon hung up, confirm it now (a plain poll only checks now
    /// and then).
    fn check_gone(&mut self, group: u32) -> Result<(), Fail> {
        let State { client, groups, .. } = self;
        match groups
            .get(group as usize)
            .and_then(Option::as_ref)
            .and_then(|g| g.watch.as_ref())
        {
            Some(watch) => client.check_watch(watch).map_err(client_fail),
            None => Ok(()),
        }
    }
}

fn client_fail(e: Error) -> Fail {
    let code = match &e {
        Error::Connect { .. } => TUTTI_ERR_CONNECT,
        Error::Io(_) => TUTTI_ERR_IO,
        Error::Refused(_) => TUTTI_ERR_REFUSED,
        Error::PermissionDenied { .. } => TUTTI_ERR_PERMISSION,
        Error::LimitReached { .. } => TUTTI_ERR_LIMIT,
        Error::NotSubscribed => TUTTI_ERR_NOT_SUBSCRIBED,
        Error::Protocol(_) => TUTTI_ERR_PROTOCOL,
        Error::SharedMemory(_) => TUTTI_ERR_SHARED_MEMORY,
        Error::DaemonGone => TUTTI_ERR_DAEMON_GONE,
        Error::UnknownGroup => TUTTI_ERR_UNKNOWN_GROUP,
        Error::Unsupported(_) => TUTTI_ERR_UNSUPPORTED,
        Error::OptionsMismatch(_) | Error::NotOrdered => TUTTI_ERR_REFUSED,
        Error::SnapshotTooLarge(_) => TUTTI_ERR_TOO_LARGE,
    };
    if code == TUTTI_ERR_DAEMON_GONE {
        return Fail::new(code, c"tuttid is gone (the daemon stopped or ended this session)");
    }
    Fail::text(code, e.to_string())
}

fn offer_fail(e: OfferError) -> Fail {
    match e {
        OfferError::BackPressured => Fail::new(
            TUTTI_ERR_BACK_PRESSURED,
            c"back pressured: the publish ring is full",
        ),
        OfferError::TooLarge { .. } => Fail::text(TUTTI_ERR_TOO_LARGE, e.to_string()),
        OfferError::Closed => Fail::new(
            TUTTI_ERR_DAEMON_GONE,
            c"tuttid is gone (the daemon stopped or ended this session)",
        ),
        OfferError::NotPublisher => Fail::new(
            TUTTI_ERR_NOT_PUBLISHER,
            c"this client joined the group without the publish right",
        ),
    }
}

fn event(group: u32, e: &Event<'_>, scratch: &mut Scratch) -> TuttiEvent {
    let mut out = TuttiEvent {
        kind: 0,
        group,
        seq: 0,
        sender: 0,
        count: 0,
        payload: std::ptr::null(),
        len: 0,
    };
    match *e {
        Event::Message { seq, sender, payload } => {
            out.kind = TUTTI_EVENT_MESSAGE;
            (out.seq, out.sender, out.payload, out.len) = (seq, sender, payload.as_ptr(), payload.len());
        }
        Event::Lagged { missed } => {
            out.kind = TUTTI_EVENT_LAGGED;
            out.count = missed;
        }
        Event::Lost { sender, count } => {
            out.kind = TUTTI_EVENT_LOST;
            (out.sender, out.count) = (sender, count);
        }
        Event::View(v) => {
            let [members, joined, left, reasons] = &mut scratch.words;
            fill(members, v.members());
            fill(joined, v.joined());
            fill(left, v.left().map(|(n, _)| n));
            fill(reasons, v.left().map(|(_, why)| why.code()));
            *scratch.view = TuttiView {
                id: v.id,
                members: members.as_ptr(),
                n_members: members.len(),
                joined: joined.as_ptr(),
                n_joined: joined.len(),
                left: left.as_ptr(),
                left_reasons: reasons.as_ptr(),
                n_left: left.len(),
            };
            out.kind = TUTTI_EVENT_VIEW;
            (out.seq, out.count) = (v.id, members.len() as u64);
            out.payload = std::ptr::from_ref::<TuttiView>(&scratch.view).cast();
            out.len = std::mem::size_of::<TuttiView>();
        }
        Event::Confchg(c) => {
            let ring = &mut scratch.words[0];
            fill(ring, c.ring());
            let [members, joined, left] = &mut scratch.procs;
            let process = |e: tutti_client::CpgEntry| TuttiCpgProcess {
                nodeid: e.node,
                pid: e.pid,
                reason: e.reason,
                session: e.session,
            };
            fill(members, c.members().map(process));
            fill(joined, c.joined().map(process));
            fill(left, c.left().map(process));
            *scratch.confchg = TuttiConfchg {
                ring_id: c.ring_id,
                ring: ring.as_ptr(),
                n_ring: ring.len(),
                members: members.as_ptr(),
                n_members: members.len(),
                joined: joined.as_ptr(),
                n_joined: joined.len(),
                left: left.as_ptr(),
                n_left: left.len(),
            };
            out.kind = TUTTI_EVENT_CONFCHG;
            (out.seq, out.count) = (c.ring_id, members.len() as u64);
            out.payload = std::ptr::from_ref::<TuttiConfchg>(&scratch.confchg).cast();
            out.len = std::mem::size_of::<TuttiConfchg>();
        }
        Event::Installed { position, snapshot } => {
            out.kind = TUTTI_EVENT_INSTALLED;
            (out.seq, out.payload, out.len) = (position, snapshot.as_ptr(), snapshot.len());
        }
        // Asked only of clients that registered a snapshot provider, which the C API does
        // not offer: the daemon answers for them. Kind 0 if a daemon wrote one anyway.
        Event::SnapshotRequest { .. } => {}
    }
    out
}

fn fill<T>(v: &mut Vec<T>, items: impl Iterator<Item = T>) {
    v.clear();
    v.extend(items);
}

fn millis(ms: u32) -> Duration {
    Duration::from_millis(u64::from(ms))
}

/// As `tutti_strerror` in tutti.h (any code is fine).
#[no_mangle]
pub extern "C" fn tutti_strerror(code: TuttiError) -> *const c_char {
    ERRORS
        .iter()
        .find(|(c, _, _)| *c == code)
        .map_or(c"unknown tutti error code".as_ptr(), |(_, _, text)| text.as_ptr())
}

/// As `tutti_last_error` in tutti.h.
#[no_mangle]
pub extern "C" fn tutti_last_error() -> *const c_char {
    boundary::last_error()
}

/// # Safety
/// As `tutti_connect` in tutti.h: `socket_path` NULL or a NUL-terminated string, `out`
/// NULL or valid for a write.
#[no_mangle]
pub unsafe extern "C" fn tutti_connect(socket_path: *const c_char, out: *mut *mut TuttiClient) -> TuttiError {
    guard(|| {
        let out = boundary::out_ptr(out, "out")?;
        out.write(std::ptr::null_mut());
        let client = if socket_path.is_null() {
            Client::connect()
        } else {
            let path = boundary::c_str(socket_path, "socket_path")?;
            Client::connect_to(Path::new(OsStr::from_bytes(path.to_bytes())))
        };
        let client = client.map_err(client_fail)?;
        let handle = Box::new(TuttiClient {
            busy: Cell::new(false),
            poisoned: Cell::new(false),
            state: UnsafeCell::new(State {
                groups: Vec::new(),
                client,
                claim: None,
                next_payload: Vec::new(),
                scratch: Scratch::default(),
            }),
        });
        out.write(Box::into_raw(handle));
        Ok(())
    })
}

/// # Safety
/// As `tutti_close` in tutti.h: NULL or a client from `tutti_connect`, not used after.
#[no_mangle]
pub unsafe extern "C" fn tutti_close(client: *mut TuttiClient) -> TuttiError {
    guard(|| {
        drop(boundary::take_client(client)?);
        Ok(())
    })
}

/// # Safety
/// As `tutti_sender_id` in tutti.h.
#[no_mangle]
pub unsafe extern "C" fn tutti_sender_id(client: *const TuttiClient, out: *mut u64) -> TuttiError {
    with_client(client, |s| {
        boundary::out_ptr(out, "out")?.write(s.client.sender_id());
        Ok(())
    })
}

/// # Safety
/// As `tutti_join` in tutti.h.
#[no_mangle]
pub unsafe extern "C" fn tutti_join(
    client: *mut TuttiClient,
    name: *const c_char,
    options: *const TuttiJoinOptions,
    out: *mut u32,
) -> TuttiError {
    with_client(client, |s| {
        let out = boundary::out_ptr(out, "out")?;
        let name = boundary::c_str(name, "name")?
            .to_str()
            .map_err(|_| Fail::new(TUTTI_ERR_INVALID, c"group name is not UTF-8"))?;
        if name.is_empty() || name.len() > 255 {
            return Err(Fail::text(
                TUTTI_ERR_INVALID,
                format!("group name of {} bytes: must be 1 to 255", name.len()),
            ));
        }
        let options = if options.is_null() {
            TuttiJoinOptions {
                size: std::mem::size_of::<TuttiJoinOptions>() as u32,
                rights: 0,
                mode: TUTTI_MODE_DEFAULT,
                flags: 0,
            }
        } else {
            boundary::join_options(options)?
        };
        let rights = match options.rights {
            0 | 3 => Rights::BOTH,
            TUTTI_RIGHT_PUBLISH => Rights::PUBLISH,
            TUTTI_RIGHT_SUBSCRIBE => Rights::SUBSCRIBE,
            bits => {
                return Err(Fail::text(
                    TUTTI_ERR_INVALID,
                    format!("unknown rights bits {bits:#x}"),
                ));
            }
        };
        let ordered = match options.mode {
            TUTTI_MODE_DEFAULT | TUTTI_MODE_BIMODAL => false,
            TUTTI_MODE_ORDERED => true,
            TUTTI_MODE_UNRELIABLE => {
                return Err(Fail::text(
                    TUTTI_ERR_UNSUPPORTED,
                    format!("group {name:?}: mode unreliable is not offered by this tuttid yet"),
                ));
            }
            mode => return Err(Fail::text(TUTTI_ERR_INVALID, format!("unknown mode {mode}"))),
        };
        let known = TUTTI_JOIN_SAFE | TUTTI_JOIN_CPG;
        if options.flags & !known != 0 || (!ordered && options.flags != 0) {
            return Err(Fail::text(
                TUTTI_ERR_INVALID,
                format!(
                    "join flags {:#x}: only TUTTI_JOIN_SAFE and TUTTI_JOIN_CPG, with TUTTI_MODE_ORDERED",
                    options.flags
                ),
            ));
        }
        let group_options = GroupOptions {
            ordered,
            safe: options.flags & TUTTI_JOIN_SAFE != 0,
            cpg: options.flags & TUTTI_JOIN_CPG != 0,
            // The daemon runs cpg groups under `evs` whatever this bit says.
            evs: false,
        };
        let id = s
            .client
            .join_with(name, rights, group_options)
            .map_err(client_fail)?;
        if rights.subscribe {
            // Room for the largest message tutti_next can hand out, once.
            let max = s.client.max_message(id).map_err(client_fail)?;
            s.next_payload.reserve(max.saturating_sub(s.next_payload.len()));
        }
        let slot = GroupSlot {
            id,
            subscribed: rights.subscribe,
            watch: None,
        };
        let index = match s.groups.iter().position(Option::is_none) {
            Some(i) => {
                s.groups[i] = Some(slot);
                i
            }
            None => {
                s.groups.push(Some(slot));
                s.groups.len() - 1
            }
        };
        out.write(index as u32);
        Ok(())
    })
}

/// # Safety
/// As `tutti_leave` in tutti.h.
#[no_mangle]
pub unsafe extern "C" fn tutti_leave(client: *mut TuttiClient, group: u32) -> TuttiError {
    with_client(client, |s| {
        let id = s.slot(group)?.id;
        if s.claim.as_ref().is_some_and(|c| c.group == group) {
            return Err(Fail::new(
                TUTTI_ERR_BUSY,
                c"a claim on this group is outstanding: tutti_commit or tutti_abort it first",
            ));
        }
        // Stop the helper thread before the group's doorbell goes.
        if let Some(slot) = s.groups[group as usize].as_mut() {
            slot.watch = None;
        }
        s.client.leave(id).map_err(client_fail)?;
        s.groups[group as usize] = None;
        Ok(())
    })
}

/// # Safety
/// As `tutti_leave_reading` in tutti.h.
#[no_mangle]
pub unsafe extern "C" fn tutti_leave_reading(client: *mut TuttiClient, group: u32) -> TuttiError {
    with_client(client, |s| {
        let id = s.slot(group)?.id;
        if s.claim.as_ref().is_some_and(|c| c.group == group) {
            return Err(Fail::new(
                TUTTI_ERR_BUSY,
                c"a claim on this group is outstanding: tutti_commit or tutti_abort it first",
            ));
        }
        // The helper thread and the descriptor stay: the log is still read.
        s.client.leave_reading(id).map_err(client_fail)?;
        Ok(())
    })
}

/// # Safety
/// As `tutti_max_message` in tutti.h.
#[no_mangle]
pub unsafe extern "C" fn tutti_max_message(
    client: *const TuttiClient,
    group: u32,
    out: *mut usize,
) -> TuttiError {
    with_client(client, |s| {
        let out = boundary::out_ptr(out, "out")?;
        let id = s.slot(group)?.id;
        out.write(s.client.max_message(id).map_err(client_fail)?);
        Ok(())
    })
}

/// # Safety
/// As `tutti_offer` in tutti.h.
#[no_mangle]
pub unsafe extern "C" fn tutti_offer(
    client: *mut TuttiClient,
    group: u32,
    data: *const c_void,
    len: usize,
) -> TuttiError {
    with_client(client, |s| {
        let payload = boundary::bytes(data.cast(), len, "data")?;
        s.no_claim()?;
        let id = s.slot(group)?.id;
        s.client.offer(id, payload).map_err(offer_fail)
    })
}

/// # Safety
/// As `tutti_try_claim` in tutti.h.
#[no_mangle]
pub unsafe extern "C" fn tutti_try_claim(
    client: *mut TuttiClient,
    group: u32,
    len: usize,
    buf: *mut *mut c_void,
) -> TuttiError {
    with_client(client, |s| {
        let out = boundary::out_ptr(buf, "buf")?;
        s.no_claim()?;
        let id = s.slot(group)?.id;
        // The Rust claim ends with this block: that publishes nothing and leaves the ring as
        // it was; commit claims the same bytes again (see PendingClaim).
        let ptr = s
            .client
            .try_claim(id, len)
            .map_err(offer_fail)?
            .buf()
            .as_mut_ptr();
        s.claim = Some(PendingClaim { group, len, buf: ptr });
        out.write(ptr.cast());
        Ok(())
    })
}

/// # Safety
/// As `tutti_commit` in tutti.h.
#[no_mangle]
pub unsafe extern "C" fn tutti_commit(client: *mut TuttiClient) -> TuttiError {
    with_client(client, |s| {
        let pending = s
            .claim
            .take()
            .ok_or_else(|| Fail::new(TUTTI_ERR_INVALID, c"tutti_commit without an outstanding claim"))?;
        let id = s.slot(pending.group)?.id;
        let mut claim = s.client.try_claim(id, pending.len).map_err(offer_fail)?;
        if claim.buf().as_mut_ptr() != pending.buf {
            // The ring moved under the claim: publishing would send other bytes than the
            // caller wrote. Nothing is published.
            return Err(Fail::new(
                TUTTI_ERR_INTERNAL,
                c"the publish ring moved under an outstanding claim; nothing was published",
            ));
        }
        claim.commit();
        Ok(())
    })
}

/// # Safety
/// As `tutti_abort` in tutti.h.
#[no_mangle]
pub unsafe extern "C" fn tutti_abort(client: *mut TuttiClient) -> TuttiError {
    with_client(client, |s| match s.claim.take() {
        Some(_) => Ok(()),
        None => Err(Fail::new(
            TUTTI_ERR_INVALID,
            c"tutti_abort without an outstanding claim",
        )),
    })
}

/// # Safety
/// As `tutti_flush` in tutti.h.
#[no_mangle]
pub unsafe extern "C" fn tutti_flush(client: *mut TuttiClient, timeout_ms: u32) -> TuttiError {
    with_client(client, |s| match s.client.flush(millis(timeout_ms)) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Fail::new(
            TUTTI_ERR_TIMED_OUT,
            c"tutti_flush: the daemon has not taken everything offered yet",
        )),
        Err(e) => Err(client_fail(e)),
    })
}

/// The subscribed group's id, with its descriptor reset before the log is read (not for a
/// read of 0 events: that would reset it with events still waiting).
fn receiving(s: &State, group: u32, limit: usize) -> Result<GroupId, Fail> {
    let slot = s.slot(group)?;
    if !slot.subscribed {
        return Err(Fail::new(
            TUTTI_ERR_NOT_SUBSCRIBED,
            c"the group was joined without the subscribe right",
        ));
    }
    if let Some(watch) = slot.watch.as_ref().filter(|_| limit > 0) {
        watch.before_read();
    }
    Ok(slot.id)
}

/// Reads that find a record arriving while they arm the descriptor go on, at most this
/// many times in one call (a record the reader cannot take yet, the daemon between its
/// steps, would otherwise keep it spinning).
const SETTLE_ROUNDS: usize = 64;

/// After a read: whether the reader may stop. With a descriptor, arms it if the read left
/// the log drained (`Client::watch_drained`: the daemon makes it readable at its next
/// append); `false` if a record came meanwhile (read on, so that none is left behind an
/// idle descriptor).
fn settle(s: &State, group: u32) -> bool {
    let Ok(slot) = s.slot(group) else { return true };
    match slot.watch.as_ref() {
        Some(watch) => s.client.watch_drained(watch).unwrap_or(true),
        None => true,
    }
}

/// # Safety
/// As `tutti_poll` in tutti.h: `callback` a valid function, called with `user`.
#[no_mangle]
pub unsafe extern "C" fn tutti_poll(
    client: *mut TuttiClient,
    group: u32,
    limit: usize,
    callback: TuttiEventFn,
    user: *mut c_void,
    delivered: *mut usize,
) -> TuttiError {
    with_client(client, |s| {
        let callback = callback.ok_or_else(|| Fail::null("callback"))?;
        let delivered = (!delivered.is_null())
            .then(|| boundary::out_ptr(delivered, "delivered"))
            .transpose()?;
        let id = receiving(s, group, limit)?;
        let mut n = 0;
        let mut settled = false;
        for _ in 0..SETTLE_ROUNDS {
            let State { client, scratch, .. } = &mut *s;
            n += client
                .poll(id, limit - n, |e| {
                    boundary::call_back(callback, &event(group, &e, scratch), user)
                })
                .map_err(client_fail)?;
            if n == 0 && limit > 0 {
                s.check_gone(group)?;
            }
            if limit == 0 || n >= limit || settle(s, group) {
                settled = true;
                break;
            }
        }
        if !settled && n == 0 {
            // As in tutti_next: a record that stays out of reach.
            s.client.check_alive().map_err(client_fail)?;
        }
        if let Some(d) = delivered {
            d.write(n);
        }
        Ok(())
    })
}

/// # Safety
/// As `tutti_poll_wait` in tutti.h.
#[no_mangle]
pub unsafe extern "C" fn tutti_poll_wait(
    client: *mut TuttiClient,
    group: u32,
    limit: usize,
    timeout_ms: u32,
    callback: TuttiEventFn,
    user: *mut c_void,
    delivered: *mut usize,
) -> TuttiError {
    with_client(client, |s| {
        let callback = callback.ok_or_else(|| Fail::null("callback"))?;
        let delivered = (!delivered.is_null())
            .then(|| boundary::out_ptr(delivered, "delivered"))
            .transpose()?;
        if limit == 0 {
            return Err(Fail::new(
                TUTTI_ERR_INVALID,
                c"tutti_poll_wait: limit 0 would wait for nothing",
            ));
        }
        let id = receiving(s, group, limit)?;
        let State { client, scratch, .. } = s;
        let n = client
            .poll_blocking(id, limit, IdleStrategy::Backoff, millis(timeout_ms), |e| {
                boundary::call_back(callback, &event(group, &e, scratch), user)
            })
            .map_err(client_fail)?;
        // Arms the descriptor if the log is drained; a record that came meanwhile is the
        // caller's to read next (it got at least one, or waits again).
        settle(s, group);
        if let Some(d) = delivered {
            d.write(n);
        }
        if n == 0 {
            return Err(Fail::new(
                TUTTI_ERR_TIMED_OUT,
                c"tutti_poll_wait: no event before the timeout",
            ));
        }
        Ok(())
    })
}

/// # Safety
/// As `tutti_next` in tutti.h.
#[no_mangle]
pub unsafe extern "C" fn tutti_next(
    client: *mut TuttiClient,
    group: u32,
    out: *mut TuttiEvent,
) -> TuttiError {
    with_client(client, |s| {
        let out = boundary::out_ptr(out, "event")?;
        let id = receiving(s, group, 1)?;
        for _ in 0..SETTLE_ROUNDS {
            let State {
                client,
                next_payload,
                scratch,
                ..
            } = &mut *s;
            let mut next = None;
            let n = client
                .poll(id, 1, |e| {
                    let mut ev = event(group, &e, scratch);
                    if let Event::Message { payload, .. }
                    | Event::Installed {
                        snapshot: payload, ..
                    } = e
                    {
                        next_payload.clear();
                        next_payload.extend_from_slice(payload);
                        ev.payload = next_payload.as_ptr();
                    }
                    next = Some(ev);
                })
                .map_err(client_fail)?;
            if let Some(ev) = next.filter(|_| n == 1) {
                // Not armed here: the caller reads on until AGAIN (the edge-style contract),
                // and that read arms the descriptor.
                out.write(ev);
                return Ok(());
            }
            s.check_gone(group)?;
            if settle(s, group) {
                return Err(Fail::new(TUTTI_ERR_AGAIN, c"no event waiting"));
            }
        }
        // A record the reader cannot take yet, round after round (the daemon stopped
        // between the steps of an append?): is it still there?
        s.client.check_alive().map_err(client_fail)?;
        Err(Fail::new(TUTTI_ERR_AGAIN, c"no event waiting"))
    })
}

/// # Safety
/// As `tutti_fd` in tutti.h.
#[no_mangle]
pub unsafe extern "C" fn tutti_fd(client: *mut TuttiClient, group: u32, fd: *mut c_int) -> TuttiError {
    with_client(client, |s| {
        let out = boundary::out_ptr(fd, "fd")?;
        let slot = s.slot(group)?;
        if !slot.subscribed {
            return Err(Fail::new(
                TUTTI_ERR_NOT_SUBSCRIBED,
                c"the group was joined without the subscribe right",
            ));
        }
        if let Some(watch) = &slot.watch {
            out.write(watch.fd());
            return Ok(());
        }
        let id = slot.id;
        let watch = s.client.watch(id).map_err(client_fail)?;
        out.write(watch.fd());
        if let Some(slot) = s.groups[group as usize].as_mut() {
            slot.watch = Some(watch);
        }
        Ok(())
    })
}
