/*
 * tutti.h: libtutti, the C API of tutti (publish to and receive from tutti process
 * groups through the local tuttid, over shared memory).
 *
 * The model is the Rust client's (tutti-client): connect to the daemon, join groups,
 * publish with tutti_offer (one copy) or tutti_try_claim + tutti_commit (written in
 * place, no copy), receive with tutti_poll (callback) or tutti_next (iterator), wait on
 * a pollable descriptor (tutti_fd). Back pressure is a return value, never a hidden block.
 *
 * Conventions:
 * - Every function returns a tutti_error_t: TUTTI_OK (0) or a negative TUTTI_ERR_* code;
 *   tutti_strerror names it and tutti_last_error says what failed in detail.
 * - Every pointer argument is checked: NULL where the function needs a pointer is
 *   TUTTI_ERR_INVALID. A pointer that is not NULL must be valid for what it points to.
 * - A tutti_client_t is used by one thread at a time (it may move between threads). Its
 *   event callbacks must not call back into the same client (TUTTI_ERR_BUSY); other
 *   clients are fine.
 * - Ownership is stated per function: "borrowed" means the library reads it during the
 *   call only and keeps no reference.
 *
 * This header is checked against the library by capi/tests/abi.rs (sizes, offsets,
 * constants, and every declared function linked and every exported one declared).
 */
#ifndef TUTTI_H
#define TUTTI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors ---------------------------------------------------------------------- */

/* TUTTI_OK or one of the TUTTI_ERR_* codes below (values are ABI: never renumbered). */
typedef int32_t tutti_error_t;

enum {
    TUTTI_OK = 0,
    /* A NULL pointer, a bad option, a name that is not a valid group name. */
    TUTTI_ERR_INVALID = -1,
    /* Cannot reach tuttid at the socket path (not running, or no permission). */
    TUTTI_ERR_CONNECT = -2,
    /* The daemon stopped or ended this session; close the client. */
    TUTTI_ERR_DAEMON_GONE = -3,
    /* The daemon refused the request (tutti_last_error says why). */
    TUTTI_ERR_REFUSED = -4,
    /* An access check refused: attaching, or a right on a group. */
    TUTTI_ERR_PERMISSION = -5,
    /* A resource limit of the daemon is reached. */
    TUTTI_ERR_LIMIT = -6,
    /* The daemon answered something this library does not understand. */
    TUTTI_ERR_PROTOCOL = -7,
    /* Shared memory from the daemon is not usable (corrupt or of the wrong size). */
    TUTTI_ERR_SHARED_MEMORY = -8,
    /* A system call on the control socket failed. */
    TUTTI_ERR_IO = -9,
    /* No such group in this client (never joined, or left). */
    TUTTI_ERR_UNKNOWN_GROUP = -10,
    /* The group was joined without TUTTI_RIGHT_SUBSCRIBE. */
    TUTTI_ERR_NOT_SUBSCRIBED = -11,
    /* The group was joined without TUTTI_RIGHT_PUBLISH. */
    TUTTI_ERR_NOT_PUBLISHER = -12,
    /* The publish ring is full: nothing was published; retry later. */
    TUTTI_ERR_BACK_PRESSURED = -13,
    /* The message is larger than the group ever takes (tutti_max_message). */
    TUTTI_ERR_TOO_LARGE = -14,
    /* tutti_next: no event is waiting now. */
    TUTTI_ERR_AGAIN = -15,
    /* A waiting call's timeout passed. */
    TUTTI_ERR_TIMED_OUT = -16,
    /* Called from this client's own event callback, or with a claim outstanding. */
    TUTTI_ERR_BUSY = -17,
    /* An option this version or this daemon does not offer (TUTTI_MODE_UNRELIABLE; an
     * ordered group on a daemon without a cluster). */
    TUTTI_ERR_UNSUPPORTED = -18,
    /* A bug in libtutti (a Rust panic, caught at the boundary); the client is unusable. */
    TUTTI_ERR_INTERNAL = -19
};

/* A static, NUL-terminated English name of `code` (unknown codes included). Never NULL;
 * do not free. */
const char *tutti_strerror(tutti_error_t code);

/* What the last failing call on this thread failed on, in detail (path, group, limit, ...):
 * NUL-terminated, owned by the library, valid until the next failing call on this thread.
 * Never NULL ("" before any failure). */
const char *tutti_last_error(void);

/* ---- connect --------------------------------------------------------------------- */

/* A session with the local tuttid (opaque). */
typedef struct tutti_client tutti_client_t;

/* Connects to tuttid. `socket_path` (borrowed) may be NULL for the default: TUTTI_SOCKET,
 * else $XDG_RUNTIME_DIR/tutti/tuttid.sock, /run/tutti/tuttid.sock as root, or
 * /tmp/tutti-$USER/tuttid.sock (falling back to the system daemon's socket), as the Rust
 * client and the tutti tool do. On TUTTI_OK, *out is a new client the caller owns and
 * frees with tutti_close; on failure *out is set to NULL. */
tutti_error_t tutti_connect(const char *socket_path, tutti_client_t **out);

/* Ends the session and frees the client (its groups are left; what was offered and not
 * yet taken by the daemon may be dropped: tutti_flush first). NULL is a no-op. After
 * TUTTI_OK the pointer is invalid. TUTTI_ERR_BUSY (nothing freed) from the client's own
 * event callback. */
tutti_error_t tutti_close(tutti_client_t *client);

/* This client's sender id, as events carry it: node id << 32 | session id (the node id is
 * the daemon's configured node_id). */
tutti_error_t tutti_sender_id(const tutti_client_t *client, uint64_t *out);

/* ---- groups ---------------------------------------------------------------------- */

/* A group this client joined (valid only with the client that joined it). */
typedef uint32_t tutti_group_t;

/* Rights asked for at join (bits of tutti_join_options_t.rights). */
enum {
    TUTTI_RIGHT_PUBLISH = 1u,
    TUTTI_RIGHT_SUBSCRIBE = 2u
};

/* Delivery modes (tutti_join_options_t.mode); see DESIGN.md. */
enum {
    /* The group's mode as it exists, else bimodal. */
    TUTTI_MODE_DEFAULT = 0,
    /* Best-effort tree dissemination, no repair (not offered by this version). */
    TUTTI_MODE_UNRELIABLE = 1,
    /* Tree dissemination + gossip repair, FIFO per sender, explicit LOST events. */
    TUTTI_MODE_BIMODAL = 2,
    /* One total order across senders, view changes in the order (needs tuttid in a
     * cluster: TUTTI_ERR_UNSUPPORTED otherwise). */
    TUTTI_MODE_ORDERED = 3
};

/* Mode options (bits of tutti_join_options_t.flags), with TUTTI_MODE_ORDERED only. The first
 * joiner on a daemon fixes a group's options; a join asking for others is TUTTI_ERR_REFUSED. */
enum {
    /* A message is delivered once every member of its view holds it. */
    TUTTI_JOIN_SAFE = 1u,
    /* A CPG process group (docs/cpg.md): every joined client is a member process, named by
     * (node id, pid, session); the group's log carries TUTTI_EVENT_CONFCHG at each change
     * and its messages only from member processes. libcpg.so.4 is built on it. */
    TUTTI_JOIN_CPG = 2u
};

/* Options of tutti_join. Set `size` to sizeof(tutti_join_options_t) (TUTTI_JOIN_OPTIONS_INIT
 * does): later versions append fields, and a library reads only the `size` bytes its caller
 * was compiled with (fields it does not know must be zero, else TUTTI_ERR_UNSUPPORTED). */
typedef struct tutti_join_options {
    uint32_t size;   /* sizeof(tutti_join_options_t) */
    uint32_t rights; /* TUTTI_RIGHT_* bits; 0 = publish and subscribe */
    uint32_t mode;   /* TUTTI_MODE_* (not UNRELIABLE: not offered yet) */
    uint32_t flags;  /* TUTTI_JOIN_* bits (ordered groups only), else 0 */
} tutti_join_options_t;

#define TUTTI_JOIN_OPTIONS_INIT \
    { (uint32_t)sizeof(tutti_join_options_t), 0u, TUTTI_MODE_DEFAULT, 0u }

/* Joins the group `name` (borrowed; 1 to 255 bytes of UTF-8, else TUTTI_ERR_INVALID),
 * creating it if it is new. `options` (borrowed) may be NULL for the defaults. From now on
 * the client receives what is published to the group, its own messages included (with
 * the subscribe right). On TUTTI_OK, *out is the group. */
tutti_error_t tutti_join(tutti_client_t *client, const char *name,
                         const tutti_join_options_t *options, tutti_group_t *out);

/* Leaves a group. What this client offered to it is still published. The group's
 * descriptor (tutti_fd) is closed. */
tutti_error_t tutti_leave(tutti_client_t *client, tutti_group_t group);

/* Leaves a group but keeps reading it: the daemon publishes the leave after what this
 * client offered and takes nothing more from it (tutti_offer / tutti_try_claim on the group
 * fail), while tutti_next, tutti_poll and the descriptor go on with what the daemon writes
 * into the group's log after (for a CPG process: what was ordered before its leave, then
 * its own leave's confchg). In a CPG group the daemon writes on until the leaves of its
 * processes are through the order (at most 10 s); in other groups it stops once no local
 * member is left. The caller bounds its wait. tutti_leave then frees the group (no second request). Calling it
 * twice: TUTTI_ERR_UNKNOWN_GROUP. */
tutti_error_t tutti_leave_reading(tutti_client_t *client, tutti_group_t group);

/* The largest message tutti_offer and tutti_try_claim take for the group. */
tutti_error_t tutti_max_message(const tutti_client_t *client, tutti_group_t group,
                                size_t *out);

/* ---- publish ----------------------------------------------------------------------- */

/* Publishes `len` bytes at `data` (borrowed; copied into the publish ring before the call
 * returns; may be NULL when len is 0). Never blocks: TUTTI_ERR_BACK_PRESSURED when the ring
 * is full. */
tutti_error_t tutti_offer(tutti_client_t *client, tutti_group_t group, const void *data,
                          size_t len);

/* Claims `len` bytes in the publish ring to write a message in place: on TUTTI_OK *buf
 * points at them (owned by the library; writable until tutti_commit or tutti_abort, with
 * unspecified previous contents: write all of them). One claim per client at a time: any
 * other publishing call before tutti_commit / tutti_abort is TUTTI_ERR_BUSY. */
tutti_error_t tutti_try_claim(tutti_client_t *client, tutti_group_t group, size_t len, void **buf);

/* Publishes the claimed message. The claim's buffer is invalid afterwards.
 * TUTTI_ERR_INVALID when no claim is outstanding. */
tutti_error_t tutti_commit(tutti_client_t *client);

/* Drops the claim: nothing is published. TUTTI_ERR_INVALID when no claim is outstanding. */
tutti_error_t tutti_abort(tutti_client_t *client);

/* Waits until the daemon has taken everything this client offered, at most `timeout_ms`
 * (TUTTI_ERR_TIMED_OUT). Use it before tutti_close right after publishing. */
tutti_error_t tutti_flush(tutti_client_t *client, uint32_t timeout_ms);

/* ---- receive ----------------------------------------------------------------------- */

/* Kinds of tutti_event_t (values are ABI). */
enum {
    /* A message: seq, sender, payload, len. */
    TUTTI_EVENT_MESSAGE = 1,
    /* This client fell a whole log behind: `count` messages were skipped; it resumes at
     * the oldest message still held. */
    TUTTI_EVENT_LAGGED = 2,
    /* `count` messages of `sender` were lost in the cluster (not repairable): every member
     * learns of them once, instead of a silent gap. */
    TUTTI_EVENT_LOST = 3,
    /* Ordered groups: the view changed here, at the same point of the order at every
     * member: seq = view id, count = members, payload = a tutti_view_t (len = its size).
     * In TUTTI_JOIN_CPG groups it is instead the daemons' ring (CPG's totem view): members
     * are daemon node ids, joined and left empty. */
    TUTTI_EVENT_VIEW = 4,
    /* TUTTI_JOIN_CPG groups: the member processes changed here, at the same point of the
     * order at every member: seq = ring id, count = members, payload = a tutti_confchg_t. */
    TUTTI_EVENT_CONFCHG = 5,
    /* Ordered groups: the state this member starts from (seq = its list position, payload
     * the snapshot bytes, empty when no member provided one). */
    TUTTI_EVENT_INSTALLED = 6
};

/* The payload of TUTTI_EVENT_VIEW: lists owned by the library, valid as long as the event's
 * payload is (see tutti_poll and tutti_next). Node ids are daemon id << 8 | shard, except in
 * TUTTI_JOIN_CPG groups (daemon ids). */
typedef struct tutti_view {
    uint64_t id;
    const uint32_t *members;
    size_t n_members;
    const uint32_t *joined;
    size_t n_joined;
    const uint32_t *left;         /* who left ... */
    const uint32_t *left_reasons; /* ... and why: 1 left, 2 suspected, 3 lagging */
    size_t n_left;
} tutti_view_t;

/* A process of a TUTTI_JOIN_CPG group. */
typedef struct tutti_cpg_process {
    uint32_t nodeid;  /* its daemon's node id (the high half of its sender id) */
    uint32_t pid;     /* its process id as its daemon saw it (SO_PEERCRED) */
    uint32_t reason;  /* in joined/left lists, Corosync's cpg_reason_t: 1 join, 2 leave,
                         3 node down, 5 process down; 0 in the member list */
    uint32_t session; /* its session on its daemon (the low half of its sender id) */
} tutti_cpg_process_t;

/* The payload of TUTTI_EVENT_CONFCHG (lists owned by the library, valid as the payload is).
 * members are sorted by (nodeid, pid, session). */
typedef struct tutti_confchg {
    uint64_t ring_id;     /* the daemons' ring when the change was applied here */
    const uint32_t *ring; /* its daemon node ids, sorted */
    size_t n_ring;
    const tutti_cpg_process_t *members;
    size_t n_members;
    const tutti_cpg_process_t *joined;
    size_t n_joined;
    const tutti_cpg_process_t *left;
    size_t n_left;
} tutti_confchg_t;

/* One event of a group. Fields a kind does not use are 0 / NULL. */
typedef struct tutti_event {
    uint32_t kind;          /* TUTTI_EVENT_* */
    tutti_group_t group;    /* the group it belongs to */
    uint64_t seq;           /* MESSAGE: its sequence number in the group's log; VIEW,
                               CONFCHG, INSTALLED: see the kind */
    uint64_t sender;        /* MESSAGE, LOST: the sender id (node id << 32 | session id) */
    uint64_t count;         /* LAGGED: messages skipped; LOST: messages lost */
    const uint8_t *payload; /* MESSAGE, INSTALLED: the bytes; VIEW, CONFCHG: the struct
                               (owned by the library; see the functions) */
    size_t len;             /* payload length */
} tutti_event_t;

/* Called once per event. `event` and its payload (owned by the library) are valid only
 * during the call: copy what you keep. `user` is tutti_poll's. */
typedef void (*tutti_event_fn)(const tutti_event_t *event, void *user);

/* Delivers up to `limit` events of the group to `callback`, in order, and never blocks
 * (a `limit` of 0 delivers nothing and leaves the descriptor as it is).
 * `user` is passed through untouched. `delivered` (may be NULL) gets how many. */
tutti_error_t tutti_poll(tutti_client_t *client, tutti_group_t group, size_t limit,
                         tutti_event_fn callback, void *user, size_t *delivered);

/* Like tutti_poll, but waits (spin, then yield, then sleep on the group's futex: the
 * `backoff` idle strategy) until at least one event arrives or `timeout_ms` passes
 * (TUTTI_ERR_TIMED_OUT, *delivered = 0). `limit` must be at least 1. */
tutti_error_t tutti_poll_wait(tutti_client_t *client, tutti_group_t group, size_t limit,
                              uint32_t timeout_ms, tutti_event_fn callback, void *user,
                              size_t *delivered);

/* The next event of the group into *event, without blocking: TUTTI_OK, or TUTTI_ERR_AGAIN
 * when none is waiting. An event's payload (owned by the library) stays valid until the
 * next tutti_next, tutti_poll, tutti_poll_wait, tutti_leave or tutti_close on this client. */
tutti_error_t tutti_next(tutti_client_t *client, tutti_group_t group, tutti_event_t *event);

/* A descriptor that turns readable (POLLIN) when events of the group may be waiting, to
 * put in your poll/epoll/select set. Owned by the library (do not read or close it),
 * the same for the group until tutti_leave / tutti_close. Edge-style contract: once it is
 * readable, call tutti_poll or tutti_next until they deliver nothing (0 / TUTTI_ERR_AGAIN)
 * before waiting again; they reset it. A wake-up may find nothing (spurious): wait again.
 * It also turns readable, for good, when the daemon hangs up (then receiving says
 * TUTTI_ERR_DAEMON_GONE once what was delivered is read). The daemon makes it readable
 * itself (no thread of the library's): one send per wake-up the reader takes. */
tutti_error_t tutti_fd(tutti_client_t *client, tutti_group_t group, int *fd);

#ifdef __cplusplus
}
#endif

#endif /* TUTTI_H */
