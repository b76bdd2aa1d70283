/*
 * libcpg.c: tutti's libcpg.so.4, the 20 functions of Corosync's <corosync/cpg.h> (Debian's
 * libcpg-dev, ABI COROSYNC_CPG_1.0) on tutti's ordered groups, so that existing CPG programs
 * run unchanged with LD_LIBRARY_PATH pointing here (docs/cpg.md, "libcpg.so.4 on tutti").
 *
 * One CPG handle is one libtutti client (one session of the local tuttid, which names the
 * process by its SO_PEERCRED pid). cpg_join joins the ordered group "cpg:NAME" with
 * TUTTI_JOIN_CPG: the daemons keep the group's process table in its total order and write a
 * confchg record at each change, so every member sees the same confchgs and messages in the
 * same order (agreed order for every guarantee). The library adds what CPG has and tutti's
 * groups do not: message fragmentation (a message larger than the group's message size is
 * split into fragments reassembled per sender, FIFO in the total order), the synthesised
 * confchg of the handle's own leave, the totem view, iteration and the handle rules.
 *
 * Thread safety: as Corosync's, a handle is used by one thread at a time; the handle table is
 * locked. A callback may call any function on its own handle, cpg_finalize included.
 */
#define _GNU_SOURCE
#include <corosync/cpg.h>
#include <tutti.h>

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

/* Corosync 3's cpg_max_atomic_msgsize_get: larger messages are still delivered whole. */
#define ATOMIC_MSGSIZE 1047552u
/* Largest message taken (CS_ERR_TOO_BIG beyond): bounds each sender's reassembly buffer. */
#define MAX_MESSAGE (16u << 20)
/* Fragment header: the message's total length and this fragment's offset (little endian). */
#define FRAG_HEADER 8u
#define MAX_HANDLES 4096u
#define MAX_ITERATIONS 1024u
/* How long cpg_leave waits for the rest of a fragmented message to enter the publish ring. */
#define LEAVE_FLUSH_MS 5000
/* How long a leaver reads on for its own leave's confchg in the order (what was ordered
 * before the leave comes first) before it makes the confchg itself: the daemon writes the
 * group's log until the leaves of its processes are through the order, for at most 10 s
 * (`shard::LINGER_MAX`); a process joining the group there meanwhile ends it sooner. */
#define LEAVE_CONFCHG_WAIT_MS 5000
/* Flow control: a handle's own messages accepted but not yet seen back in its log (taken
 * by the total order) are at most this many, and a new message is taken only while they
 * hold fewer bytes than the second bound (one larger message still goes alone). Beyond it
 * cpg_mcast_joined says CS_ERR_TRY_AGAIN until the handle dispatches, as Corosync's does
 * (19 to 63 undispatched messages of 64 KiB there). Without it a flood fills the publish
 * ring and the ordered layer's queue with seconds of messages, each waiting that long.
 * 2,048 is the ordered layer's `OrderedSettings::sender_window()`: the 512 messages of the
 * appends in flight (4 of up to 128) plus three times that many appended and waiting for
 * the other members' progress (every message of an `evs` list waits for all of them). At
 * 512, the appends in flight alone, the sender's appends were mostly not in flight: 2.5x
 * less throughput (docs/cpg.md, "The flood's window"). Under agreed delivery (the default
 * since 2026-12-07) a sender's own messages come back on their append; 1,024 then halved
 * the flood's p50 but cost about a sixth of its throughput, so 2,048 stays. */
#define WINDOW_MSGS 2048u
/* The environment may set another message bound for the handles a process creates
 * (TUTTI_CPG_WINDOW_MSGS, 1 to WINDOW_MSGS_MAX): a smaller window trades a flood's
 * throughput for its latency (docs/cpg.md, "The window as a setting"). */
#define WINDOW_ENV "TUTTI_CPG_WINDOW_MSGS"
#define WINDOW_MSGS_MAX 65536u
#define WINDOW_BYTES (4u << 20)
/* Own messages that never come back (the order dropped them, e.g. its view changed) must
 * not close the window for good: full for this long with no own message back meanwhile, it
 * reopens. (Timed from the first send the full window refused, not from each message back:
 * a clock read per own message was 6 % of a flooding sender's time.) */
#define WINDOW_STALL_MS 2000

struct reassembly {
	uint64_t sender;
	uint8_t *buf;
	uint32_t total, have;
};

struct inst {
	tutti_client_t *client;
	cpg_model_v1_data_t model;
	void *context;
	int epfd, evfd;
	int timerfd; /* readable when a leaver's wait for its own confchg is over */
	uint32_t nodeid, session;
	/* LEAVING: left, still reading the log up to the own leave's confchg. */
	enum { NOT_JOINED, JOINED, LEAVING, LEFT } state;
	uint64_t leave_deadline_ms;
	int seen_own_join;
	struct cpg_name group;
	tutti_group_t tg;
	int tfd;
	size_t frag_data; /* payload bytes per fragment */
	/* The members after the last confchg, as the daemons sent them. */
	tutti_cpg_process_t *members;
	size_t n_members;
	/* Local events: the initial totem view after the own join, the own leave's confchg. */
	int pending_totem;
	uint64_t totem_ring_id;
	uint32_t *totem_ring;
	size_t n_totem_ring;
	int pending_leave;
	struct cpg_address leave_members[CPG_MEMBERS_MAX];
	size_t n_leave_members;
	struct cpg_address leave_self;
	/* A dispatch stopped after one callback: the log may hold more, and tutti's descriptor
	 * only turns readable again on the next append, so ours stays readable meanwhile. */
	int maybe_more;
	int ring_reported_valid;
	uint64_t ring_reported;
	/* Reassembly per sender, and the delivered message (writable, as cpg.h allows). */
	struct reassembly *rx;
	size_t n_rx;
	uint8_t *msgbuf;
	size_t msgcap;
	/* The rest of a fragmented message the publish ring could not take yet. */
	uint8_t *out;
	size_t out_len, out_off;
	/* Flow control (WINDOW_*): own messages and their bytes not yet seen in the log, and
	 * the bound on the messages (WINDOW_MSGS or the environment's). */
	uint64_t inflight_msgs, inflight_bytes;
	uint64_t window_msgs;
	/* Own records back so far, and while the window is full: that count and the time when
	 * a send was first refused with it (stall_valid). */
	uint64_t own_seen, stall_mark, stall_since_ms;
	int stall_valid;
	unsigned in_dispatch;
	int finalized;
	uint64_t lagged; /* messages the log overran (never expected: counted) */
};

struct iteration {
	struct cpg_iteration_description_t *items;
	size_t n, next;
};

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static struct inst *handles[MAX_HANDLES];
static uint32_t generations[MAX_HANDLES];
static struct iteration *iterations[MAX_ITERATIONS];
static uint32_t iteration_generations[MAX_ITERATIONS];

static uint64_t make_handle(uint32_t index, uint32_t gen)
{
	return ((uint64_t)gen << 32) | (uint64_t)(index + 1);
}

static struct inst *lookup(cpg_handle_t handle)
{
	uint32_t index = (uint32_t)handle - 1, gen = (uint32_t)(handle >> 32);
	struct inst *in = NULL;
	pthread_mutex_lock(&table_lock);
	if ((uint32_t)handle != 0 && index < MAX_HANDLES && generations[index] == gen)
		in = handles[index];
	pthread_mutex_unlock(&table_lock);
	return in && !in->finalized ? in : NULL;
}

static void forget(cpg_handle_t handle)
{
	uint32_t index = (uint32_t)handle - 1;
	pthread_mutex_lock(&table_lock);
	if (index < MAX_HANDLES) {
		handles[index] = NULL;
		generations[index]++;
	}
	pthread_mutex_unlock(&table_lock);
}

static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void destroy(struct inst *in)
{
	if (in->client)
		tutti_close(in->client);
	if (in->epfd >= 0)
		close(in->epfd);
	if (in->evfd >= 0)
		close(in->evfd);
	if (in->timerfd >= 0)
		close(in->timerfd);
	for (size_t i = 0; i < in->n_rx; i++)
		free(in->rx[i].buf);
	free(in->rx);
	free(in->members);
	free(in->totem_ring);
	free(in->msgbuf);
	free(in->out);
	free(in);
}

/* Marks a local event pending: the descriptor turns readable. */
static void signal_local(struct inst *in)
{
	uint64_t one = 1;
	ssize_t r = write(in->evfd, &one, sizeof one);
	(void)r;
}

static void clear_local(struct inst *in)
{
	uint64_t n;
	if (!in->pending_totem && !in->pending_leave && !in->maybe_more) {
		ssize_t r = read(in->evfd, &n, sizeof n);
		(void)r;
	}
}

/* The message window for a new handle: WINDOW_MSGS, or TUTTI_CPG_WINDOW_MSGS when set and
 * not empty (a decimal 1..WINDOW_MSGS_MAX). 0 when it holds anything else. */
static uint64_t window_from_env(void)
{
	const char *v = getenv(WINDOW_ENV);
	if (!v || !*v)
		return WINDOW_MSGS;
	if (*v < '0' || *v > '9')
		return 0;
	errno = 0;
	char *end = NULL;
	unsigned long long n = strtoull(v, &end, 10);
	if (errno || *end || n < 1 || n > WINDOW_MSGS_MAX)
		return 0;
	return n;
}

static cs_error_t create(cpg_handle_t *handle, const cpg_model_v1_data_t *model, void *context)
{
	uint64_t window = window_from_env();
	if (!window)
		return CS_ERR_INVALID_PARAM;
	struct inst *in = calloc(1, sizeof *in);
	if (!in)
		return CS_ERR_NO_MEMORY;
	in->epfd = in->evfd = in->tfd = in->timerfd = -1;
	in->model = *model;
	in->context = context;
	in->window_msgs = window;
	uint64_t id = 0;
	if (tutti_connect(NULL, &in->client) != TUTTI_OK || tutti_sender_id(in->client, &id) != TUTTI_OK) {
		destroy(in);
		return CS_ERR_LIBRARY;
	}
	in->nodeid = (uint32_t)(id >> 32);
	in->session = (uint32_t)id;
	in->epfd = epoll_create1(EPOLL_CLOEXEC);
	in->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	in->timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	struct epoll_event ev = {.events = EPOLLIN, .data.fd = in->evfd};
	struct epoll_event tev = {.events = EPOLLIN, .data.fd = in->timerfd};
	if (in->epfd < 0 || in->evfd < 0 || in->timerfd < 0 ||
	    epoll_ctl(in->epfd, EPOLL_CTL_ADD, in->evfd, &ev) < 0 ||
	    epoll_ctl(in->epfd, EPOLL_CTL_ADD, in->timerfd, &tev) < 0) {
		destroy(in);
		return CS_ERR_LIBRARY;
	}
	pthread_mutex_lock(&table_lock);
	uint32_t index = 0;
	while (index < MAX_HANDLES && handles[index])
		index++;
	if (index == MAX_HANDLES) {
		pthread_mutex_unlock(&table_lock);
		destroy(in);
		return CS_ERR_NO_RESOURCES;
	}
	handles[index] = in;
	*handle = make_handle(index, generations[index]);
	pthread_mutex_unlock(&table_lock);
	return CS_OK;
}

EXPORT cs_error_t cpg_initialize(cpg_handle_t *handle, cpg_callbacks_t *callbacks)
{
	if (!handle || !callbacks)
		return CS_ERR_INVALID_PARAM;
	cpg_model_v1_data_t model = {.model = CPG_MODEL_V1,
				     .cpg_deliver_fn = callbacks->cpg_deliver_fn,
				     .cpg_confchg_fn = callbacks->cpg_confchg_fn};
	return create(handle, &model, NULL);
}

EXPORT cs_error_t cpg_model_initialize(cpg_handle_t *handle, cpg_model_t model, cpg_model_data_t *model_data,
				       void *context)
{
	if (!handle || !model_data || model != CPG_MODEL_V1 || model_data->model != CPG_MODEL_V1)
		return CS_ERR_INVALID_PARAM;
	return create(handle, (const cpg_model_v1_data_t *)model_data, context);
}

EXPORT cs_error_t cpg_finalize(cpg_handle_t handle)
{
	struct inst *in = lookup(handle);
	if (!in)
		return CS_ERR_BAD_HANDLE;
	forget(handle);
	in->finalized = 1;
	if (!in->in_dispatch)
		destroy(in);
	/* else the dispatch that runs the callback frees it on its way out */
	return CS_OK;
}

EXPORT cs_error_t cpg_fd_get(cpg_handle_t handle, int *fd)
{
	struct inst *in = lookup(handle);
	if (!in)
		return CS_ERR_BAD_HANDLE;
	if (!fd)
		return CS_ERR_INVALID_PARAM;
	*fd = in->epfd;
	return CS_OK;
}

EXPORT cs_error_t cpg_max_atomic_msgsize_get(cpg_handle_t handle, uint32_t *size)
{
	struct inst *in = lookup(handle);
	if (!in)
		return CS_ERR_BAD_HANDLE;
	if (!size)
		return CS_ERR_INVALID_PARAM;
	*size = ATOMIC_MSGSIZE;
	return CS_OK;
}

EXPORT cs_error_t cpg_context_get(cpg_handle_t handle, void **context)
{
	struct inst *in = lookup(handle);
	if (!in)
		return CS_ERR_BAD_HANDLE;
	if (!context)
		return CS_ERR_INVALID_PARAM;
	*context = in->context;
	return CS_OK;
}

EXPORT cs_error_t cpg_context_set(cpg_handle_t handle, void *context)
{
	struct inst *in = lookup(handle);
	if (!in)
		return CS_ERR_BAD_HANDLE;
	in->context = context;
	return CS_OK;
}

EXPORT cs_error_t cpg_local_get(cpg_handle_t handle, unsigned int *local_nodeid)
{
	struct inst *in = lookup(handle);
	if (!in)
		return CS_ERR_BAD_HANDLE;
	if (!local_nodeid)
		return CS_ERR_INVALID_PARAM;
	*local_nodeid = in->nodeid;
	return CS_OK;
}

EXPORT cs_error_t cpg_flow_control_state_get(cpg_handle_t handle, cpg_flow_control_state_t *state)
{
	struct inst *in = lookup(handle);
	if (!in)
		return CS_ERR_BAD_HANDLE;
	if (!state)
		return CS_ERR_INVALID_PARAM;
	/* As Corosync 3: always disabled; back pressure shows as CS_ERR_TRY_AGAIN. */
	*state = CPG_FLOW_CONTROL_DISABLED;
	return CS_OK;
}

/* The tutti group of a CPG name: "cpg:NAME" when NAME is printable ASCII, else "cpg#" and
 * the hex of its first 64 bytes and a 64-bit FNV-1a hash of all of it (tutti names are
 * UTF-8, at most 255 bytes). The prefix keeps CPG groups apart from native tutti groups. */
static void tutti_name(const struct cpg_name *g, char *out, size_t cap)
{
	size_t len = g->length;
	int printable = 1;
	for (size_t i = 0; i < len; i++)
		printable &= g->value[i] >= 0x20 && g->value[i] < 0x7f;
	if (printable) {
		snprintf(out, cap, "cpg:%.*s", (int)len, g->value);
		return;
	}
	uint64_t h = 0xcbf29ce484222325ull;
	size_t off = (size_t)snprintf(out, cap, "cpg#");
	for (size_t i = 0; i < len; i++) {
		h = (h ^ (uint8_t)g->value[i]) * 0x100000001b3ull;
		if (i < 64)
			off += (size_t)snprintf(out + off, cap - off, "%02x", (uint8_t)g->value[i]);
	}
	snprintf(out + off, cap - off, "-%016llx", (unsigned long long)h);
}

static int same_name(const struct cpg_name *a, const struct cpg_name *b)
{
	return a->length == b->length && memcmp(a->value, b->value, a->length) == 0;
}

static cs_error_t from_tutti(tutti_error_t e)
{
	switch (e) {
	case TUTTI_OK:
		return CS_OK;
	case TUTTI_ERR_BACK_PRESSURED:
	case TUTTI_ERR_AGAIN:
		return CS_ERR_TRY_AGAIN;
	case TUTTI_ERR_PERMISSION:
		return CS_ERR_ACCESS;
	case TUTTI_ERR_LIMIT:
		return CS_ERR_NO_RESOURCES;
	case TUTTI_ERR_TOO_LARGE:
		return CS_ERR_TOO_BIG;
	case TUTTI_ERR_UNSUPPORTED:
		return CS_ERR_NOT_SUPPORTED;
	case TUTTI_ERR_INVALID:
		return CS_ERR_INVALID_PARAM;
	default:
		return CS_ERR_LIBRARY;
	}
}

EXPORT cs_error_t cpg_join(cpg_handle_t handle, const struct cpg_name *group)
{
	struct inst *in = lookup(handle);
	if (!in)
		return CS_ERR_BAD_HANDLE;
	if (!group || group->length > CPG_MAX_NAME_LENGTH)
		return CS_ERR_INVALID_PARAM;
	/* One group per handle; a handle that left stays unusable (as on Corosync 3). */
	if (in->state != NOT_JOINED)
		return CS_ERR_EXIST;
	char name[300];
	tutti_name(group, name, sizeof name);
	tutti_join_options_t options = TUTTI_JOIN_OPTIONS_INIT;
	options.mode = TUTTI_MODE_ORDERED;
	options.flags = TUTTI_JOIN_CPG;
	tutti_error_t e = tutti_join(in->client, name, &options, &in->tg);
	if (e != TUTTI_OK)
		return from_tutti(e);
	size_t max = 0;
	struct epoll_event ev = {.events = EPOLLIN};
	if (tutti_max_message(in->client, in->tg, &max) != TUTTI_OK || max <= FRAG_HEADER ||
	    tutti_fd(in->client, in->tg, &in->tfd) != TUTTI_OK ||
	    (ev.data.fd = in->tfd, epoll_ctl(in->epfd, EPOLL_CTL_ADD, in->tfd, &ev)) < 0) {
		tutti_leave(in->client, in->tg);
		in->tfd = -1;
		return CS_ERR_LIBRARY;
	}
	in->frag_data = max - FRAG_HEADER;
	in->group = *group;
	in->state = JOINED;
	in->seen_own_join = 0;
	return CS_OK;
}

/* Offers fragments of the pending message until it is all in the ring or the ring is full. */
static tutti_error_t flush_out(struct inst *in)
{
	while (in->out && in->out_off < in->out_len) {
		size_t chunk = in->out_len - in->out_off;
		if (chunk > in->frag_data)
			chunk = in->frag_data;
		void *buf;
		tutti_error_t e = tutti_try_claim(in->client, in->tg, FRAG_HEADER + chunk, &buf);
		if (e != TUTTI_OK)
			return e;
		put32(buf, (uint32_t)in->out_len);
		put32((uint8_t *)buf + 4, (uint32_t)in->out_off);
		memcpy((uint8_t *)buf + FRAG_HEADER, in->out + in->out_off, chunk);
		e = tutti_commit(in->client);
		if (e != TUTTI_OK)
			return e;
		in->out_off += chunk;
	}
	free(in->out);
	in->out = NULL;
	in->out_len = in->out_off = 0;
	return TUTTI_OK;
}

static int addr_cmp(const void *x, const void *y);
static void drop_reassembly(struct inst *in, size_t i);

/* The leave is through for this handle: the group's log goes. With `make_confchg`, the own
 * leave's confchg is made here (the others as last dispatched, and itself with LEAVE) and
 * delivered by the next dispatch; else the daemons' one was just delivered. */
static void finish_leave(struct inst *in, int make_confchg)
{
	in->maybe_more = 0;
	if (make_confchg) {
		in->n_leave_members = 0;
		int self_seen = 0;
		for (size_t i = 0; i < in->n_members && in->n_leave_members < CPG_MEMBERS_MAX; i++) {
			const tutti_cpg_process_t *m = &in->members[i];
			if (m->nodeid == in->nodeid && m->session == in->session) {
				in->leave_self = (struct cpg_address){m->nodeid, m->pid, CPG_REASON_LEAVE};
				self_seen = 1;
				continue;
			}
			in->leave_members[in->n_leave_members++] = (struct cpg_address){m->nodeid, m->pid, 0};
		}
		if (!self_seen)
			in->leave_self = (struct cpg_address){in->nodeid, (uint32_t)getpid(), CPG_REASON_LEAVE};
		qsort(in->leave_members, in->n_leave_members, sizeof in->leave_members[0], addr_cmp);
		in->pending_leave = 1;
		signal_local(in);
	}
	struct itimerspec off = {0};
	timerfd_settime(in->timerfd, 0, &off, NULL);
	uint64_t n;
	ssize_t r = read(in->timerfd, &n, sizeof n);
	(void)r;
	if (in->tfd >= 0)
		epoll_ctl(in->epfd, EPOLL_CTL_DEL, in->tfd, NULL);
	in->tfd = -1;
	tutti_leave(in->client, in->tg);
	in->state = LEFT;
	in->pending_totem = 0;
	while (in->n_rx)
		drop_reassembly(in, 0);
	if (!make_confchg)
		clear_local(in);
}

EXPORT cs_error_t cpg_leave(cpg_handle_t handle, const struct cpg_name *group)
{
	struct inst *in = lookup(handle);
	if (!in)
		return CS_ERR_BAD_HANDLE;
	if (!group)
		return CS_ERR_INVALID_PARAM;
	if (in->state != JOINED || !same_name(group, &in->group))
		return CS_ERR_NOT_EXIST;
	/* What was accepted is sent before the leave, as Corosync does. */
	uint64_t until = mono_ms() + LEAVE_FLUSH_MS;
	while (in->out && flush_out(in) == TUTTI_ERR_BACK_PRESSURED && mono_ms() < until)
		usleep(1000);
	/* Virtually synchronous, as Corosync: the leaver goes on reading the log, gets what was
	 * ordered before its leave and then its own leave's confchg from the daemons (members:
	 * the others; left: itself with LEAVE). The daemon writes the log until then, also for
	 * its last local member; a leaver that has not seen its confchg after
	 * LEAVE_CONFCHG_WAIT_MS makes it itself. */
	tutti_error_t e = tutti_leave_reading(in->client, in->tg);
	if (e != TUTTI_OK) {
		finish_leave(in, 1);
		return from_tutti(e);
	}
	in->state = LEAVING;
	in->pending_totem = 0;
	in->leave_deadline_ms = mono_ms() + LEAVE_CONFCHG_WAIT_MS;
	struct itimerspec t = {.it_value = {.tv_sec = LEAVE_CONFCHG_WAIT_MS / 1000,
					   .tv_nsec = (LEAVE_CONFCHG_WAIT_MS % 1000) * 1000000L}};
	timerfd_settime(in->timerfd, 0, &t, NULL);
	/* Readable until a dispatch finds the log drained (what the log holds, then the
	 * confchg once it is there): the application dispatches. */
	in->maybe_more = 1;
	signal_local(in);
	return CS_OK;
}

/* Sends one message of `len` bytes gathered from iov: fragments claimed in the publish
 * ring and written in place. CS_ERR_TRY_AGAIN only when nothing of it was sent; a message
 * cut short by a full ring is finished later (flush_out) and the call is CS_OK. */
static cs_error_t mcast(struct inst *in, const struct iovec *iov, unsigned int iov_len)
{
	size_t len = 0;
	for (unsigned i = 0; i < iov_len; i++) {
		if (!iov[i].iov_base && iov[i].iov_len)
			return CS_ERR_INVALID_PARAM;
		len += iov[i].iov_len;
		if (len > MAX_MESSAGE)
			return CS_ERR_TOO_BIG;
	}
	/* Corosync 3 accepts a multicast while not joined and never delivers it. */
	if (in->state != JOINED)
		return CS_OK;
	if (in->out) {
		tutti_error_t e = flush_out(in);
		if (e != TUTTI_OK)
			return from_tutti(e);
	}
	if (in->inflight_msgs >= in->window_msgs || in->inflight_bytes >= WINDOW_BYTES) {
		uint64_t now = mono_ms();
		if (!in->stall_valid || in->stall_mark != in->own_seen) {
			in->stall_valid = 1;
			in->stall_mark = in->own_seen;
			in->stall_since_ms = now;
			return CS_ERR_TRY_AGAIN;
		}
		if (now - in->stall_since_ms < WINDOW_STALL_MS)
			return CS_ERR_TRY_AGAIN;
		in->inflight_msgs = in->inflight_bytes = 0;
	}
	in->stall_valid = 0;
	if (len <= in->frag_data) {
		void *buf;
		tutti_error_t e = tutti_try_claim(in->client, in->tg, FRAG_HEADER + len, &buf);
		if (e != TUTTI_OK)
			return from_tutti(e);
		put32(buf, (uint32_t)len);
		put32((uint8_t *)buf + 4, 0);
		size_t off = FRAG_HEADER;
		for (unsigned i = 0; i < iov_len; i++) {
			if (iov[i].iov_len)
				memcpy((uint8_t *)buf + off, iov[i].iov_base, iov[i].iov_len);
			off += iov[i].iov_len;
		}
		e = tutti_commit(in->client);
		if (e == TUTTI_OK) {
			in->inflight_msgs++;
			in->inflight_bytes += len;
		}
		return from_tutti(e);
	}
	uint8_t *whole = malloc(len);
	if (!whole)
		return CS_ERR_NO_MEMORY;
	size_t off = 0;
	for (unsigned i = 0; i < iov_len; i++) {
		if (iov[i].iov_len)
			memcpy(whole + off, iov[i].iov_base, iov[i].iov_len);
		off += iov[i].iov_len;
	}
	in->out = whole;
	in->out_len = len;
	in->out_off = 0;
	tutti_error_t e = flush_out(in);
	if (e == TUTTI_ERR_BACK_PRESSURED && in->out_off == 0) {
		free(in->out);
		in->out = NULL;
		return CS_ERR_TRY_AGAIN;
	}
	if (e == TUTTI_OK || e == TUTTI_ERR_BACK_PRESSURED) {
		in->inflight_msgs++;
		in->inflight_bytes += len;
	}
	return e == TUTTI_ERR_BACK_PRESSURED ? CS_OK : from_tutti(e);
}

EXPORT cs_error_t cpg_mcast_joined(cpg_handle_t handle, cpg_guarantee_t guarantee, const struct iovec *iovec,
				   unsigned int iov_len)
{
	struct inst *in = lookup(handle);
	(void)guarantee; /* every guarantee is agreed order (tutti's total order) */
	if (!in)
		return CS_ERR_BAD_HANDLE;
	if (!iovec && iov_len)
		return CS_ERR_INVALID_PARAM;
	return mcast(in, iovec, iov_len);
}

EXPORT cs_error_t cpg_zcb_alloc(cpg_handle_t handle, size_t size, void **buffer)
{
	struct inst *in = lookup(handle);
	if (!in)
		return CS_ERR_BAD_HANDLE;
	if (!buffer)
		return CS_ERR_INVALID_PARAM;
	*buffer = malloc(size ? size : 1);
	return *buffer ? CS_OK : CS_ERR_NO_MEMORY;
}

EXPORT cs_error_t cpg_zcb_free(cpg_handle_t handle, void *buffer)
{
	struct inst *in = lookup(handle);
	if (!in)
		return CS_ERR_BAD_HANDLE;
	free(buffer);
	return CS_OK;
}

EXPORT cs_error_t cpg_zcb_mcast_joined(cpg_handle_t handle, cpg_guarantee_t guarantee, void *msg, size_t msg_len)
{
	struct inst *in = lookup(handle);
	(void)guarantee;
	if (!in)
		return CS_ERR_BAD_HANDLE;
	/* Unlike cpg_mcast_joined, Corosync 3 waits for the daemon's answer here. */
	if (in->state != JOINED)
		return CS_ERR_NOT_EXIST;
	struct iovec iov = {msg, msg_len};
	return mcast(in, &iov, 1);
}

EXPORT cs_error_t cpg_membership_get(cpg_handle_t handle, struct cpg_name *group, struct cpg_address *list,
				     int *entries)
{
	struct inst *in = lookup(handle);
	if (!in)
		return CS_ERR_BAD_HANDLE;
	if (!group || !entries || (*entries > 0 && !list))
		return CS_ERR_INVALID_PARAM;
	if (in->state != JOINED || !in->seen_own_join) {
		*entries = 0;
		return CS_OK;
	}
	if (!same_name(group, &in->group))
		return CS_ERR_NOT_EXIST;
	int n = 0;
	for (size_t i = 0; i < in->n_members && n < *entries; i++, n++)
		list[n] = (struct cpg_address){in->members[i].nodeid, in->members[i].pid, 0};
	*entries = n;
	return CS_OK;
}

/* The process of sender id `sender` among the members, or NULL. */
static const tutti_cpg_process_t *member_of(const struct inst *in, uint64_t sender)
{
	for (size_t i = 0; i < in->n_members; i++)
		if (in->members[i].nodeid == (uint32_t)(sender >> 32) && in->members[i].session == (uint32_t)sender)
			return &in->members[i];
	return NULL;
}

static struct reassembly *reassembly_of(struct inst *in, uint64_t sender)
{
	for (size_t i = 0; i < in->n_rx; i++)
		if (in->rx[i].sender == sender)
			return &in->rx[i];
	struct reassembly *grown = realloc(in->rx, (in->n_rx + 1) * sizeof *grown);
	if (!grown)
		return NULL;
	in->rx = grown;
	in->rx[in->n_rx] = (struct reassembly){.sender = sender};
	return &in->rx[in->n_rx++];
}

static void drop_reassembly(struct inst *in, size_t i)
{
	free(in->rx[i].buf);
	in->rx[i] = in->rx[--in->n_rx];
}

static int deliver(struct inst *in, cpg_handle_t handle, const tutti_cpg_process_t *from, const uint8_t *msg,
		   size_t len)
{
	if (!in->model.cpg_deliver_fn)
		return 1;
	if (in->msgcap < len || !in->msgbuf) {
		uint8_t *grown = realloc(in->msgbuf, len ? len : 1);
		if (!grown)
			return 0;
		in->msgbuf = grown;
		in->msgcap = len ? len : 1;
	}
	if (len)
		memcpy(in->msgbuf, msg, len);
	in->model.cpg_deliver_fn(handle, &in->group, from->nodeid, from->pid, in->msgbuf, len);
	return 1;
}

/* A data record: a whole message or a fragment. Returns 1 when a message was delivered. */
static int on_message(struct inst *in, cpg_handle_t handle, const tutti_event_t *ev)
{
	const tutti_cpg_process_t *from = member_of(in, ev->sender);
	if (!from || ev->len < FRAG_HEADER)
		return 0;
	uint32_t total = get32(ev->payload), off = get32(ev->payload + 4);
	size_t chunk = ev->len - FRAG_HEADER;
	const uint8_t *data = ev->payload + FRAG_HEADER;
	if (off == 0 && chunk == total)
		return deliver(in, handle, from, data, chunk);
	struct reassembly *r = reassembly_of(in, ev->sender);
	if (!r || total > MAX_MESSAGE)
		return 0;
	if (off == 0) {
		free(r->buf);
		r->buf = malloc(total ? total : 1);
		r->total = total;
		r->have = 0;
	}
	/* Fragments of one sender arrive in its FIFO order: anything else is not ours to guess. */
	if (!r->buf || off != r->have || total != r->total || chunk > total - r->have) {
		drop_reassembly(in, (size_t)(r - in->rx));
		return 0;
	}
	memcpy(r->buf + r->have, data, chunk);
	r->have += (uint32_t)chunk;
	if (r->have < r->total)
		return 0;
	int done = deliver(in, handle, from, r->buf, r->total);
	drop_reassembly(in, (size_t)(r - in->rx));
	return done;
}

static int addr_cmp(const void *x, const void *y)
{
	const struct cpg_address *a = x, *b = y;
	if (a->nodeid != b->nodeid)
		return a->nodeid < b->nodeid ? -1 : 1;
	return a->pid < b->pid ? -1 : a->pid > b->pid;
}

static size_t to_addrs(struct cpg_address *out, const tutti_cpg_process_t *p, size_t n, int reasons)
{
	if (n > CPG_MEMBERS_MAX)
		n = CPG_MEMBERS_MAX;
	for (size_t i = 0; i < n; i++)
		out[i] = (struct cpg_address){p[i].nodeid, p[i].pid, reasons ? p[i].reason : 0};
	return n;
}

static uint32_t ring_rep(const uint32_t *ring, size_t n)
{
	uint32_t low = n ? ring[0] : 0;
	for (size_t i = 1; i < n; i++)
		if (ring[i] < low)
			low = ring[i];
	return low;
}

/* A confchg record. Returns 1 when the application's callback ran (or would have). */
static int on_confchg(struct inst *in, cpg_handle_t handle, const tutti_confchg_t *c)
{
	int own_join = 0;
	if (!in->seen_own_join) {
		for (size_t i = 0; i < c->n_joined; i++)
			own_join |= c->joined[i].nodeid == in->nodeid && c->joined[i].session == in->session;
		if (!own_join)
			return 0; /* before this handle's join: not its business */
		in->seen_own_join = 1;
	}
	tutti_cpg_process_t *members = malloc((c->n_members ? c->n_members : 1) * sizeof *members);
	if (!members)
		return 0;
	memcpy(members, c->members, c->n_members * sizeof *members);
	free(in->members);
	in->members = members;
	in->n_members = c->n_members;
	/* Fragments of senders that left can never be completed. */
	for (size_t i = 0; i < in->n_rx;)
		if (!member_of(in, in->rx[i].sender))
			drop_reassembly(in, i);
		else
			i++;
	if (own_join) {
		uint32_t *ring = malloc((c->n_ring ? c->n_ring : 1) * sizeof *ring);
		if (ring) {
			memcpy(ring, c->ring, c->n_ring * sizeof *ring);
			free(in->totem_ring);
			in->totem_ring = ring;
			in->n_totem_ring = c->n_ring;
			in->totem_ring_id = c->ring_id;
			in->ring_reported = c->ring_id;
			in->ring_reported_valid = 1;
			if ((in->model.flags & CPG_MODEL_V1_DELIVER_INITIAL_TOTEM_CONF) && in->model.cpg_totem_confchg_fn) {
				in->pending_totem = 1;
				signal_local(in);
			}
		}
	}
	if (in->model.cpg_confchg_fn) {
		static __thread struct cpg_address m[CPG_MEMBERS_MAX], l[CPG_MEMBERS_MAX], j[CPG_MEMBERS_MAX];
		size_t nm = to_addrs(m, c->members, c->n_members, 0);
		size_t nl = to_addrs(l, c->left, c->n_left, 1);
		size_t nj = to_addrs(j, c->joined, c->n_joined, 1);
		/* Sorted by (nodeid, pid) as Corosync does (the daemons add the session). */
		qsort(m, nm, sizeof *m, addr_cmp);
		in->model.cpg_confchg_fn(handle, &in->group, m, nm, l, nl, j, nj);
	}
	return 1;
}

/* Whether this handle's process is in the confchg's left list (its own leave is through). */
static int own_left(const struct inst *in, const tutti_confchg_t *c)
{
	for (size_t i = 0; i < c->n_left; i++)
		if (c->left[i].nodeid == in->nodeid && c->left[i].session == in->session)
			return 1;
	return 0;
}

/* The daemons' ring changed (a view record of a cpg group): CPG's totem confchg. */
static int on_ring(struct inst *in, cpg_handle_t handle, const tutti_view_t *v)
{
	if (!in->seen_own_join || (in->ring_reported_valid && in->ring_reported == v->id))
		return 0;
	in->ring_reported = v->id;
	in->ring_reported_valid = 1;
	if (!in->model.cpg_totem_confchg_fn)
		return 0;
	struct cpg_ring_id ring = {ring_rep(v->members, v->n_members), v->id};
	in->model.cpg_totem_confchg_fn(handle, ring, (uint32_t)v->n_members, v->members);
	return 1;
}

/* One of this handle's own records is back in the order: the flow-control window moves. */
static void own_back(struct inst *in, const tutti_event_t *ev)
{
	in->own_seen++;
	if (ev->len < FRAG_HEADER)
		return;
	uint32_t total = get32(ev->payload), off = get32(ev->payload + 4);
	size_t chunk = ev->len - FRAG_HEADER;
	in->inflight_bytes -= chunk < in->inflight_bytes ? chunk : in->inflight_bytes;
	if ((uint64_t)off + chunk >= total && in->inflight_msgs > 0)
		in->inflight_msgs--;
}

/* Runs at most one callback. 1: one ran; 0: nothing is waiting; -1: the daemon is gone. */
static int dispatch_one(struct inst *in, cpg_handle_t handle)
{
	if (in->pending_totem) {
		in->pending_totem = 0;
		clear_local(in);
		struct cpg_ring_id ring = {ring_rep(in->totem_ring, in->n_totem_ring), in->totem_ring_id};
		in->model.cpg_totem_confchg_fn(handle, ring, (uint32_t)in->n_totem_ring, in->totem_ring);
		return 1;
	}
	if (in->pending_leave) {
		in->pending_leave = 0;
		clear_local(in);
		if (in->model.cpg_confchg_fn)
			in->model.cpg_confchg_fn(handle, &in->group, in->leave_members, in->n_leave_members,
						 &in->leave_self, 1, NULL, 0);
		return 1;
	}
	if (in->state != JOINED && in->state != LEAVING) {
		if (in->maybe_more) {
			in->maybe_more = 0;
			clear_local(in);
		}
		return 0;
	}
	for (;;) {
		tutti_event_t ev;
		/* libtutti's descriptor is readable only for records past where a read left the log
		 * drained (the daemon's watch word: docs/internals.md, "Descriptors"), and a record
		 * that comes while a read arms it is delivered by that read: AGAIN here leaves it
		 * idle, so POLLIN means an event waits, as CPG programs take it. */
		tutti_error_t e = tutti_next(in->client, in->tg, &ev);
		if (e == TUTTI_ERR_AGAIN && in->state == LEAVING &&
		    mono_ms() >= in->leave_deadline_ms) {
			/* The log holds no own leave's confchg and will not: make it. */
			finish_leave(in, 1);
			return dispatch_one(in, handle);
		}
		if (e == TUTTI_ERR_AGAIN) {
			if (in->maybe_more) {
				in->maybe_more = 0;
				clear_local(in);
			}
			return 0;
		}
		if (e != TUTTI_OK)
			return -1;
		int ran = 0;
		switch (ev.kind) {
		case TUTTI_EVENT_MESSAGE:
			if (ev.sender == ((uint64_t)in->nodeid << 32 | in->session))
				own_back(in, &ev);
			ran = in->seen_own_join && on_message(in, handle, &ev);
			break;
		case TUTTI_EVENT_CONFCHG: {
			const tutti_confchg_t *c = (const tutti_confchg_t *)(const void *)ev.payload;
			ran = on_confchg(in, handle, c);
			if (in->finalized)
				return 1;
			if (in->state == LEAVING && in->seen_own_join && own_left(in, c)) {
				finish_leave(in, 0);
				return 1;
			}
			break;
		}
		case TUTTI_EVENT_VIEW:
			ran = on_ring(in, handle, (const tutti_view_t *)(const void *)ev.payload);
			break;
		case TUTTI_EVENT_LAGGED:
		case TUTTI_EVENT_LOST:
			/* Messages this member will never see: counted, and partial messages dropped. */
			in->lagged += ev.count;
			in->inflight_msgs = in->inflight_bytes = 0;
			while (in->n_rx)
				drop_reassembly(in, 0);
			break;
		default:
			break;
		}
		if (ran)
			return 1;
	}
}

static void wait_readable(struct inst *in, int timeout_ms)
{
	struct pollfd p = {.fd = in->epfd, .events = POLLIN};
	poll(&p, 1, timeout_ms);
}

EXPORT cs_error_t cpg_dispatch(cpg_handle_t handle, cs_dispatch_flags_t dispatch_types)
{
	struct inst *in = lookup(handle);
	if (!in)
		return CS_ERR_BAD_HANDLE;
	if (dispatch_types != CS_DISPATCH_ONE && dispatch_types != CS_DISPATCH_ALL &&
	    dispatch_types != CS_DISPATCH_BLOCKING && dispatch_types != CS_DISPATCH_ONE_NONBLOCKING)
		return CS_ERR_INVALID_PARAM;
	cs_error_t rc = CS_OK;
	in->in_dispatch++;
	for (;;) {
		if (in->out)
			flush_out(in);
		int r = dispatch_one(in, handle);
		if (in->finalized) {
			rc = dispatch_types == CS_DISPATCH_BLOCKING ? CS_ERR_BAD_HANDLE : CS_OK;
			break;
		}
		if (r < 0) {
			rc = CS_ERR_LIBRARY;
			break;
		}
		if (r == 1 && (dispatch_types == CS_DISPATCH_ONE_NONBLOCKING || dispatch_types == CS_DISPATCH_ONE)) {
			if (!in->maybe_more) {
				in->maybe_more = 1;
				signal_local(in);
			}
			break;
		}
		if (dispatch_types == CS_DISPATCH_ONE_NONBLOCKING) {
			rc = CS_ERR_TRY_AGAIN;
			break;
		}
		if (dispatch_types == CS_DISPATCH_ALL && r == 0)
			break;
		if (r == 0)
			wait_readable(in, 100);
	}
	if (--in->in_dispatch == 0 && in->finalized)
		destroy(in);
	return rc;
}

/* ---- iteration: over what this handle knows (its own group; tutti has no cluster-wide
 * registry of CPG groups) ---- */

EXPORT cs_error_t cpg_iteration_initialize(cpg_handle_t handle, cpg_iteration_type_t iteration_type,
					   const struct cpg_name *group, cpg_iteration_handle_t *iteration_handle)
{
	struct inst *in = lookup(handle);
	if (!in)
		return CS_ERR_BAD_HANDLE;
	if (!iteration_handle ||
	    (iteration_type != CPG_ITERATION_NAME_ONLY && iteration_type != CPG_ITERATION_ONE_GROUP &&
	     iteration_type != CPG_ITERATION_ALL) ||
	    (iteration_type == CPG_ITERATION_ONE_GROUP && !group) ||
	    (group && group->length > CPG_MAX_NAME_LENGTH))
		return CS_ERR_INVALID_PARAM;
	struct iteration *it = calloc(1, sizeof *it);
	if (!it)
		return CS_ERR_NO_MEMORY;
	int known = in->state == JOINED && in->seen_own_join;
	if (known && (iteration_type != CPG_ITERATION_ONE_GROUP || same_name(group, &in->group))) {
		size_t n = iteration_type == CPG_ITERATION_NAME_ONLY ? 1 : in->n_members;
		it->items = calloc(n ? n : 1, sizeof *it->items);
		if (!it->items) {
			free(it);
			return CS_ERR_NO_MEMORY;
		}
		for (size_t i = 0; i < n; i++) {
			it->items[i].group = in->group;
			if (iteration_type != CPG_ITERATION_NAME_ONLY) {
				it->items[i].nodeid = in->members[i].nodeid;
				it->items[i].pid = in->members[i].pid;
			}
		}
		it->n = n;
	}
	pthread_mutex_lock(&table_lock);
	uint32_t index = 0;
	while (index < MAX_ITERATIONS && iterations[index])
		index++;
	if (index == MAX_ITERATIONS) {
		pthread_mutex_unlock(&table_lock);
		free(it->items);
		free(it);
		return CS_ERR_NO_RESOURCES;
	}
	iterations[index] = it;
	*iteration_handle = make_handle(index, iteration_generations[index]);
	pthread_mutex_unlock(&table_lock);
	return CS_OK;
}

static struct iteration *iteration_of(cpg_iteration_handle_t handle, int take)
{
	uint32_t index = (uint32_t)handle - 1, gen = (uint32_t)(handle >> 32);
	struct iteration *it = NULL;
	pthread_mutex_lock(&table_lock);
	if ((uint32_t)handle != 0 && index < MAX_ITERATIONS && iteration_generations[index] == gen) {
		it = iterations[index];
		if (take && it) {
			iterations[index] = NULL;
			iteration_generations[index]++;
		}
	}
	pthread_mutex_unlock(&table_lock);
	return it;
}

EXPORT cs_error_t cpg_iteration_next(cpg_iteration_handle_t handle, struct cpg_iteration_description_t *description)
{
	struct iteration *it = iteration_of(handle, 0);
	if (!it)
		return CS_ERR_BAD_HANDLE;
	if (!description)
		return CS_ERR_INVALID_PARAM;
	if (it->next >= it->n)
		return CS_ERR_NO_SECTIONS;
	*description = it->items[it->next++];
	return CS_OK;
}

EXPORT cs_error_t cpg_iteration_finalize(cpg_iteration_handle_t handle)
{
	struct iteration *it = iteration_of(handle, 1);
	if (!it)
		return CS_ERR_BAD_HANDLE;
	free(it->items);
	free(it);
	return CS_OK;
}
