/* cpg_member: a scriptable CPG group member for the multi-node conformance checks. It reads
 * commands, one per line, on stdin (a FIFO held open by the driver) and writes every event on
 * stdout in a fixed text form that the driver (run.sh) matches:
 *
 *   commands                       output
 *   join GROUP                     JOIN rc=N
 *   leave                          LEAVE rc=N
 *   send COUNT SIZE...             SENT n=COUNT rc=N   (sizes used in turn; agreed order)
 *   wait_delivered N TIMEOUT_MS    HASH hash=H delivered=D bad=B   (after D >= N or timeout)
 *   members                        MEMBERS rc=N n=K 1:pid 2:pid ...
 *   iterate                        ITER rc=N n=K GROUP:1:pid ...   (CPG_ITERATION_ALL)
 *   local                          LOCAL rc=N nodeid=I
 *   quit                           (finalizes and exits)
 *   events (any time):
 *                                  READY pid=P
 *                                  CONFCHG group=G members=1:p,2:p left=3:p:REASON joined=...
 *                                  TOTEM ring=N.SEQ members=1,2,3
 *
 * Every delivered message is checked against its payload pattern and folded, with its sender
 * (nodeid, pid) and sequence number, into a running FNV-1a hash: members that delivered the same
 * messages in the same order print the same hash. */
#include "cpgcheck.h"

#include <errno.h>

static cpg_handle_t handle;
static struct cpg_name group;
static uint64_t hash = 0xcbf29ce484222325ull;
static uint64_t delivered, bad;
static uint32_t next_seq;
static uint32_t local_nodeid;

static uint64_t fnv(uint64_t h, uint64_t x)
{
	for (int i = 0; i < 8; i++) {
		h ^= (x >> (8 * i)) & 0xff;
		h *= 0x100000001b3ull;
	}
	return h;
}

static void on_deliver(cpg_handle_t h, const struct cpg_name *g, uint32_t nodeid, uint32_t pid,
		       void *msg, size_t len)
{
	(void)h, (void)g;
	uint32_t seq = 0;
	const uint8_t *p = msg;
	if (len >= 4)
		memcpy(&seq, p, 4);
	else
		seq = (uint32_t)len; /* 1..3-byte messages carry only pattern bytes */
	for (size_t i = len >= 4 ? 4 : 0; i < len; i++)
		if (p[i] != payload_byte(nodeid, len >= 4 ? seq : 0, i)) {
			bad++;
			break;
		}
	hash = fnv(fnv(fnv(fnv(hash, nodeid), pid), seq), len);
	delivered++;
}

static int addr_cmp(const void *x, const void *y)
{
	const struct cpg_address *a = x, *b = y;
	if (a->nodeid != b->nodeid)
		return a->nodeid < b->nodeid ? -1 : 1;
	return a->pid < b->pid ? -1 : a->pid > b->pid;
}

/* Lists are printed sorted by (nodeid, pid): Corosync sorts member lists that way but not the
 * joined list of a merge, and the order within a list carries no meaning in CPG. */
static void print_addrs(const char *label, const struct cpg_address *list, size_t n, int reasons)
{
	struct cpg_address a[CPG_MEMBERS_MAX];
	if (n > CPG_MEMBERS_MAX)
		n = CPG_MEMBERS_MAX;
	memcpy(a, list, n * sizeof *a);
	qsort(a, n, sizeof *a, addr_cmp);
	printf(" %s=", label);
	for (size_t i = 0; i < n; i++) {
		printf("%s%u:%u", i ? "," : "", a[i].nodeid, a[i].pid);
		if (reasons)
			printf(":%u", a[i].reason);
	}
}

static void on_confchg(cpg_handle_t h, const struct cpg_name *g, const struct cpg_address *m,
		       size_t nm, const struct cpg_address *l, size_t nl, const struct cpg_address *j,
		       size_t nj)
{
	(void)h;
	printf("CONFCHG group=%.*s", (int)g->length, g->value);
	print_addrs("members", m, nm, 0);
	print_addrs("left", l, nl, 1);
	print_addrs("joined", j, nj, 1);
	printf("\n");
	fflush(stdout);
}

static void on_totem(cpg_handle_t h, struct cpg_ring_id ring, uint32_t n, const uint32_t *members)
{
	(void)h;
	printf("TOTEM ring=%u.%llu members=", ring.nodeid, (unsigned long long)ring.seq);
	for (uint32_t i = 0; i < n; i++)
		printf("%s%u", i ? "," : "", members[i]);
	printf("\n");
	fflush(stdout);
}

static cs_error_t send_one(size_t size)
{
	uint8_t *buf = malloc(size ? size : 1);
	if (!buf)
		return CS_ERR_NO_MEMORY;
	uint32_t seq = next_seq++;
	if (size >= 4)
		memcpy(buf, &seq, 4);
	for (size_t i = size >= 4 ? 4 : 0; i < size; i++)
		buf[i] = payload_byte(local_nodeid, size >= 4 ? seq : 0, i);
	struct iovec iov = {buf, size};
	cs_error_t rc;
	int fd;
	cpg_fd_get(handle, &fd);
	/* Back pressure: CS_ERR_TRY_AGAIN; keep dispatching so the daemon can drain to us. */
	while ((rc = cpg_mcast_joined(handle, CPG_TYPE_AGREED, &iov, 1)) == CS_ERR_TRY_AGAIN) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		if (poll(&p, 1, 1) > 0)
			cpg_dispatch(handle, CS_DISPATCH_ALL);
	}
	free(buf);
	return rc;
}

static void command(char *line)
{
	char *argv[64];
	int argc = 0;
	for (char *t = strtok(line, " \t"); t && argc < 64; t = strtok(NULL, " \t"))
		argv[argc++] = t;
	if (argc == 0)
		return;
	cs_error_t rc;
	if (!strcmp(argv[0], "join") && argc == 2) {
		group = cpg_name_of(argv[1]);
		printf("JOIN rc=%d\n", cpg_join(handle, &group));
	} else if (!strcmp(argv[0], "leave")) {
		printf("LEAVE rc=%d\n", cpg_leave(handle, &group));
	} else if (!strcmp(argv[0], "send") && argc >= 3) {
		long count = atol(argv[1]);
		rc = CS_OK;
		for (long i = 0; i < count && rc == CS_OK; i++)
			rc = send_one((size_t)atol(argv[2 + i % (argc - 2)]));
		printf("SENT n=%ld rc=%d\n", count, rc);
	} else if (!strcmp(argv[0], "wait_delivered") && argc == 3) {
		uint64_t want = strtoull(argv[1], NULL, 10);
		uint64_t deadline = mono_ms() + strtoull(argv[2], NULL, 10);
		int fd;
		cpg_fd_get(handle, &fd);
		while (delivered < want && mono_ms() < deadline) {
			struct pollfd p = {.fd = fd, .events = POLLIN};
			if (poll(&p, 1, 10) > 0)
				cpg_dispatch(handle, CS_DISPATCH_ALL);
		}
		printf("HASH hash=%016llx delivered=%llu bad=%llu\n", (unsigned long long)hash,
		       (unsigned long long)delivered, (unsigned long long)bad);
		if (delivered < want) {
			/* Short at the deadline: were the rest waiting with the descriptor idle (a
			 * lost wake-up) or not there yet (slow ordering)? One dispatch tells. */
			uint64_t before = delivered;
			cpg_dispatch(handle, CS_DISPATCH_ALL);
			printf("INFO wait_delivered short: %llu more were waiting unannounced\n",
			       (unsigned long long)(delivered - before));
		}
	} else if (!strcmp(argv[0], "members")) {
		struct cpg_address a[CPG_MEMBERS_MAX];
		int n = CPG_MEMBERS_MAX;
		rc = cpg_membership_get(handle, &group, a, &n);
		printf("MEMBERS rc=%d n=%d", rc, n);
		for (int i = 0; rc == CS_OK && i < n; i++)
			printf(" %u:%u", a[i].nodeid, a[i].pid);
		printf("\n");
	} else if (!strcmp(argv[0], "iterate")) {
		cpg_iteration_handle_t it;
		struct cpg_iteration_description_t d;
		int n = 0;
		rc = cpg_iteration_initialize(handle, CPG_ITERATION_ALL, NULL, &it);
		printf("ITER rc=%d", rc);
		char entries[8192] = "";
		size_t off = 0;
		while (rc == CS_OK && cpg_iteration_next(it, &d) == CS_OK && off < sizeof entries - 200) {
			n++;
			off += (size_t)snprintf(entries + off, sizeof entries - off, " %.*s:%u:%u",
						(int)d.group.length, d.group.value, d.nodeid, d.pid);
		}
		if (rc == CS_OK)
			cpg_iteration_finalize(it);
		printf(" n=%d%s\n", n, entries);
	} else if (!strcmp(argv[0], "local")) {
		unsigned int id = 0;
		rc = cpg_local_get(handle, &id);
		printf("LOCAL rc=%d nodeid=%u\n", rc, id);
	} else if (!strcmp(argv[0], "quit")) {
		cpg_finalize(handle);
		exit(0);
	} else {
		printf("ERROR unknown command %s\n", argv[0]);
	}
	fflush(stdout);
}

int main(void)
{
	cpg_model_v1_data_t model = {.model = CPG_MODEL_V1,
				     .cpg_deliver_fn = on_deliver,
				     .cpg_confchg_fn = on_confchg,
				     .cpg_totem_confchg_fn = on_totem,
				     .flags = CPG_MODEL_V1_DELIVER_INITIAL_TOTEM_CONF};
	cs_error_t rc = cpg_model_initialize(&handle, CPG_MODEL_V1, (cpg_model_data_t *)&model, NULL);
	if (rc != CS_OK) {
		printf("ERROR cpg_model_initialize rc=%d\n", rc);
		return 2;
	}
	unsigned int id = 0;
	cpg_local_get(handle, &id);
	local_nodeid = id;
	int fd;
	cpg_fd_get(handle, &fd);
	printf("READY pid=%d\n", (int)getpid());
	fflush(stdout);
	char buf[4096];
	size_t have = 0;
	for (;;) {
		struct pollfd p[2] = {{.fd = 0, .events = POLLIN}, {.fd = fd, .events = POLLIN}};
		if (poll(p, 2, -1) < 0 && errno != EINTR)
			return 2;
		if (p[1].revents & POLLIN) {
			rc = cpg_dispatch(handle, CS_DISPATCH_ALL);
			if (rc != CS_OK && rc != CS_ERR_TRY_AGAIN) {
				printf("ERROR cpg_dispatch rc=%d\n", rc);
				return 2;
			}
		} else if (p[1].revents & (POLLHUP | POLLERR)) {
			printf("ERROR daemon connection lost\n");
			return 2;
		}
		if (p[0].revents & (POLLIN | POLLHUP)) {
			ssize_t n = read(0, buf + have, sizeof buf - 1 - have);
			if (n <= 0)
				return 0; /* driver went away */
			have += (size_t)n;
			buf[have] = 0;
			char *nl;
			while ((nl = memchr(buf, '\n', have))) {
				*nl = 0;
				size_t used = (size_t)(nl - buf) + 1;
				command(buf);
				memmove(buf, nl + 1, have - used);
				have -= used;
			}
			if (have == sizeof buf - 1)
				have = 0; /* an over-long line: drop it */
		}
	}
}
