/* cpgload: a CPG load generator and delivery-order checker, written against the CPG API of
 * Corosync's <corosync/cpg.h> (Debian libcpg-dev) so that the same binary measures Corosync's
 * libcpg.so.4 and, with --lib DIR, any other libcpg.so.4 (tutti's) found first in DIR.
 *
 *   cpgload member --members N --senders K [--send] --size B --duration S --out PREFIX
 *                  [--group NAME] [--rate MSGS_PER_S] [--timeout S] [--lib DIR]
 *       One group member (run one per node). Joins, waits for N members, and if --send
 *       multicasts B-byte agreed messages for S seconds (flood, or paced at --rate), then an
 *       END marker; it leaves once it has delivered the END of all K senders. Writes
 *       PREFIX.sum (text summary) and PREFIX.own / PREFIX.other (u64 latency samples, ns:
 *       send to delivery of its own messages / of other members' messages, CLOCK_MONOTONIC,
 *       which all network namespaces of one host share).
 *   cpgload merge --impl NAME PREFIX...
 *       Reads the members' files and prints one JSON object on stdout:
 *       {"impl","nodes","senders","size","msgs_per_s","p50_ns","p99_ns","order_identical", ...}.
 *       Exit status 1 if the members did not deliver the same sequence.
 *
 * Order check: every member folds (nodeid, pid, seq) of each delivered message, in delivery
 * order, into a 64-bit FNV-1a hash; identical order at all members means identical hashes and
 * counts. Each message also carries a payload pattern that is checked on delivery.
 */
#define _GNU_SOURCE
#include <corosync/cpg.h>
#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAGIC 0x6370676cu /* "cpgl" */
#define KIND_DATA 1u
#define KIND_END 2u
/* Latency samples kept per kind; beyond this the count goes on but no samples are kept. */
#define MAX_SAMPLES (8u << 20)
/* Distinct senders tracked for the per-sender FIFO check (CPG allows 128 members). */
#define MAX_SENDERS CPG_MEMBERS_MAX
#define MAX_SIZE (1u << 20)

struct msg_header {
	uint32_t magic;
	uint32_t kind;
	uint32_t nodeid;
	uint32_t pid;
	uint64_t seq;
	uint64_t sent_ns;
};

struct samples {
	uint64_t *v;
	size_t n, cap, dropped;
};

struct sender_state {
	uint32_t nodeid, pid;
	uint64_t next_seq;
};

struct member {
	uint32_t nodeid, pid;
	unsigned members;      /* current view size */
	unsigned ends;         /* END markers delivered */
	uint64_t delivered;    /* data messages delivered */
	uint64_t bad;          /* malformed, corrupted or out-of-FIFO-order deliveries */
	uint64_t first_ns, last_ns;
	uint64_t hash;
	struct samples own, other;
	struct sender_state senders[MAX_SENDERS];
	unsigned nsenders;
};

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what, int cs)
{
	fprintf(stderr, "cpgload: %s failed: cs_error_t %d\n", what, cs);
	exit(2);
}

static uint64_t fnv(uint64_t h, uint64_t x)
{
	for (int i = 0; i < 8; i++) {
		h ^= (x >> (8 * i)) & 0xff;
		h *= 0x100000001b3ull;
	}
	return h;
}

static void sample_push(struct samples *s, uint64_t x)
{
	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 65536;
		if (cap > MAX_SAMPLES)
			cap = MAX_SAMPLES;
		if (cap == s->n) {
			s->dropped++;
			return;
		}
		uint64_t *v = realloc(s->v, cap * sizeof *v);
		if (!v) {
			s->dropped++;
			return;
		}
		s->v = v;
		s->cap = cap;
	}
	s->v[s->n++] = x;
}

static uint8_t pattern(uint64_t seq, size_t i) { return (uint8_t)(seq * 31u + i); }

static void on_deliver(cpg_handle_t h, const struct cpg_name *g, uint32_t nodeid, uint32_t pid,
		       void *msg, size_t len)
{
	(void)g;
	uint64_t t = now_ns();
	struct member *m = NULL;
	if (cpg_context_get(h, (void **)&m) != CS_OK || !m)
		return;
	struct msg_header hd;
	if (len <= sizeof hd) { /* cpgload's messages have at least one payload byte */
		m->bad++;
		return;
	}
	memcpy(&hd, msg, sizeof hd);
	if (hd.magic != MAGIC || hd.nodeid != nodeid || hd.pid != pid) {
		m->bad++;
		return;
	}
	struct sender_state *s = NULL;
	for (unsigned i = 0; i < m->nsenders; i++)
		if (m->senders[i].nodeid == nodeid && m->senders[i].pid == pid)
			s = &m->senders[i];
	if (!s && m->nsenders < MAX_SENDERS) {
		s = &m->senders[m->nsenders++];
		s->nodeid = nodeid;
		s->pid = pid;
		s->next_seq = 0;
	}
	if (hd.kind == KIND_END) {
		m->ends++;
		m->hash = fnv(fnv(fnv(m->hash, nodeid), pid), UINT64_MAX);
		return;
	}
	const uint8_t *p = msg;
	if (hd.kind != KIND_DATA || (s && hd.seq != s->next_seq) ||
	    p[len - 1] != pattern(hd.seq, len - 1) || p[sizeof hd] != pattern(hd.seq, sizeof hd))
		m->bad++;
	if (s)
		s->next_seq = hd.seq + 1;
	m->hash = fnv(fnv(fnv(m->hash, nodeid), pid), hd.seq);
	if (m->delivered++ == 0)
		m->first_ns = t;
	m->last_ns = t;
	sample_push(nodeid == m->nodeid && pid == m->pid ? &m->own : &m->other, t - hd.sent_ns);
}

static void on_confchg(cpg_handle_t h, const struct cpg_name *g, const struct cpg_address *members,
		       size_t nmembers, const struct cpg_address *left, size_t nleft,
		       const struct cpg_address *joined, size_t njoined)
{
	(void)g, (void)members, (void)left, (void)nleft, (void)joined, (void)njoined;
	struct member *m = NULL;
	if (cpg_context_get(h, (void **)&m) == CS_OK && m)
		m->members = (unsigned)nmembers;
}

/* Dispatches what is pending, waiting up to wait_ns for the descriptor to become readable. */
static void pump_ns(cpg_handle_t h, int fd, uint64_t wait_ns)
{
	struct pollfd pfd = {.fd = fd, .events = POLLIN};
	struct timespec ts = {.tv_sec = (time_t)(wait_ns / 1000000000u),
			      .tv_nsec = (long)(wait_ns % 1000000000u)};
	if (wait_ns > 0 && ppoll(&pfd, 1, &ts, NULL) <= 0)
		return;
	cs_error_t rc = cpg_dispatch(h, CS_DISPATCH_ALL);
	if (rc != CS_OK && rc != CS_ERR_TRY_AGAIN)
		die("cpg_dispatch", rc);
}

static void pump(cpg_handle_t h, int fd, int wait_ms) { pump_ns(h, fd, (uint64_t)wait_ms * 1000000u); }

static void write_samples(const char *prefix, const char *ext, const struct samples *s)
{
	char path[4096];
	snprintf(path, sizeof path, "%s.%s", prefix, ext);
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(s->v, sizeof *s->v, s->n, f) != s->n || fclose(f) != 0) {
		fprintf(stderr, "cpgload: cannot write %s: %s\n", path, strerror(errno));
		exit(2);
	}
}

static const char *libcpg_path(void)
{
	Dl_info info;
	if (dladdr((void *)cpg_initialize, &info) && info.dli_fname)
		return info.dli_fname;
	return "unknown";
}

static int member_main(const char *group, unsigned want_members, unsigned senders, int send,
		       size_t size, double duration, double rate, double timeout, const char *out)
{
	static struct member m;
	m.hash = 0xcbf29ce484222325ull;
	m.pid = (uint32_t)getpid();
	cpg_callbacks_t cb = {.cpg_deliver_fn = on_deliver, .cpg_confchg_fn = on_confchg};
	cpg_handle_t h;
	cs_error_t rc = cpg_initialize(&h, &cb);
	if (rc != CS_OK)
		die("cpg_initialize", rc);
	cpg_context_set(h, &m);
	unsigned int nodeid;
	if ((rc = cpg_local_get(h, &nodeid)) != CS_OK)
		die("cpg_local_get", rc);
	m.nodeid = nodeid;
	int fd;
	if ((rc = cpg_fd_get(h, &fd)) != CS_OK)
		die("cpg_fd_get", rc);
	struct cpg_name name;
	name.length = (uint32_t)strlen(group);
	memcpy(name.value, group, name.length);
	uint64_t deadline = now_ns() + (uint64_t)(timeout * 1e9);
	while ((rc = cpg_join(h, &name)) == CS_ERR_TRY_AGAIN && now_ns() < deadline)
		pump(h, fd, 1);
	if (rc != CS_OK)
		die("cpg_join", rc);
	while (m.members < want_members) {
		if (now_ns() > deadline) {
			fprintf(stderr, "cpgload: only %u of %u members joined\n", m.members, want_members);
			return 2;
		}
		pump(h, fd, 10);
	}

	uint64_t sent = 0, try_again = 0;
	uint8_t *buf = calloc(1, size);
	if (!buf)
		return 2;
	uint64_t start = now_ns(), end = start + (uint64_t)(duration * 1e9);
	uint64_t interval = rate > 0 ? (uint64_t)(1e9 / rate) : 0;
	while (send) {
		uint64_t t = now_ns();
		int last = t >= end;
		if (!last && interval) {
			uint64_t due = start + sent * interval;
			if (t < due) {
				pump_ns(h, fd, due - t);
				continue;
			}
		}
		struct msg_header hd = {MAGIC, last ? KIND_END : KIND_DATA, m.nodeid, m.pid, sent, t};
		memcpy(buf, &hd, sizeof hd);
		buf[sizeof hd] = pattern(sent, sizeof hd);
		buf[size - 1] = pattern(sent, size - 1);
		struct iovec iov = {.iov_base = buf, .iov_len = size};
		rc = cpg_mcast_joined(h, CPG_TYPE_AGREED, &iov, 1);
		if (rc == CS_ERR_TRY_AGAIN) {
			try_again++;
			pump(h, fd, 1);
			continue;
		}
		if (rc != CS_OK)
			die("cpg_mcast_joined", rc);
		if (last)
			break;
		sent++;
		pump(h, fd, 0);
	}
	free(buf);
	/* A member that does not send waits for the senders' END from the end of the sending
	 * window, not from now: counted from its join, a run of --duration 60 or more timed out
	 * (60 s by default) just as the END came. */
	uint64_t t = now_ns();
	deadline = (t > end ? t : end) + (uint64_t)(timeout * 1e9);
	while (m.ends < senders) {
		if (now_ns() > deadline) {
			fprintf(stderr, "cpgload: END seen from %u of %u senders\n", m.ends, senders);
			return 2;
		}
		pump(h, fd, 10);
	}
	cpg_leave(h, &name);
	cpg_finalize(h);

	char path[4096];
	snprintf(path, sizeof path, "%s.sum", out);
	FILE *f = fopen(path, "w");
	if (!f) {
		fprintf(stderr, "cpgload: cannot write %s: %s\n", path, strerror(errno));
		return 2;
	}
	fprintf(f,
		"nodeid %u\npid %u\nsize %zu\nsent %" PRIu64 "\ntry_again %" PRIu64
		"\ndelivered %" PRIu64 "\nbad %" PRIu64 "\nfirst_ns %" PRIu64 "\nlast_ns %" PRIu64
		"\nhash %016" PRIx64 "\ndropped_samples %zu\nlibcpg %s\n",
		m.nodeid, m.pid, size, sent, try_again, m.delivered, m.bad, m.first_ns, m.last_ns,
		m.hash, m.own.dropped + m.other.dropped, libcpg_path());
	if (fclose(f) != 0)
		return 2;
	write_samples(out, "own", &m.own);
	write_samples(out, "other", &m.other);
	return 0;
}

struct summary {
	unsigned nodeid;
	uint64_t size, sent, try_again, delivered, bad, first_ns, last_ns, dropped;
	char hash[1024], libcpg[1024];
};

static int read_summary(const char *prefix, struct summary *s)
{
	char path[4096], key[64], val[1024];
	snprintf(path, sizeof path, "%s.sum", prefix);
	FILE *f = fopen(path, "r");
	if (!f) {
		fprintf(stderr, "cpgload: cannot read %s: %s\n", path, strerror(errno));
		return -1;
	}
	memset(s, 0, sizeof *s);
	while (fscanf(f, "%63s %1023s", key, val) == 2) {
		uint64_t x = strtoull(val, NULL, 10);
		if (!strcmp(key, "nodeid")) s->nodeid = (unsigned)x;
		else if (!strcmp(key, "size")) s->size = x;
		else if (!strcmp(key, "sent")) s->sent = x;
		else if (!strcmp(key, "try_again")) s->try_again = x;
		else if (!strcmp(key, "delivered")) s->delivered = x;
		else if (!strcmp(key, "bad")) s->bad = x;
		else if (!strcmp(key, "first_ns")) s->first_ns = x;
		else if (!strcmp(key, "last_ns")) s->last_ns = x;
		else if (!strcmp(key, "dropped_samples")) s->dropped = x;
		else if (!strcmp(key, "hash")) snprintf(s->hash, sizeof s->hash, "%s", val);
		else if (!strcmp(key, "libcpg")) snprintf(s->libcpg, sizeof s->libcpg, "%s", val);
	}
	fclose(f);
	return 0;
}

static void read_samples(const char *prefix, const char *ext, struct samples *s)
{
	char path[4096];
	snprintf(path, sizeof path, "%s.%s", prefix, ext);
	FILE *f = fopen(path, "rb");
	if (!f)
		return;
	uint64_t x;
	while (fread(&x, sizeof x, 1, f) == 1)
		sample_push(s, x);
	fclose(f);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static uint64_t percentile(struct samples *s, double q)
{
	if (!s->n)
		return 0;
	size_t i = (size_t)(q * (double)s->n + 0.999999);
	if (i > 0)
		i--;
	if (i >= s->n)
		i = s->n - 1;
	return s->v[i];
}

static int merge_main(const char *impl, int n, char **prefixes)
{
	struct summary *sum = calloc((size_t)n, sizeof *sum);
	struct samples own = {0}, other = {0};
	if (!sum)
		return 2;
	uint64_t sent = 0, dropped = 0;
	unsigned senders = 0;
	int identical = 1;
	for (int i = 0; i < n; i++) {
		if (read_summary(prefixes[i], &sum[i]) != 0)
			return 2;
		read_samples(prefixes[i], "own", &own);
		read_samples(prefixes[i], "other", &other);
		sent += sum[i].sent;
		dropped += sum[i].dropped;
		senders += sum[i].sent > 0;
		if (sum[i].bad || strcmp(sum[i].hash, sum[0].hash) ||
		    sum[i].delivered != sum[0].delivered)
			identical = 0;
	}
	if (n == 0 || sum[0].delivered != sent)
		identical = 0;
	qsort(own.v, own.n, sizeof *own.v, cmp_u64);
	qsort(other.v, other.n, sizeof *other.v, cmp_u64);
	double total = 0;
	printf("{\"impl\":\"%s\",\"nodes\":%d,\"senders\":%u,\"size\":%" PRIu64, impl, n, senders,
	       n ? sum[0].size : 0);
	char per[4096] = "";
	size_t off = 0;
	for (int i = 0; i < n; i++) {
		double secs = (double)(sum[i].last_ns - sum[i].first_ns) / 1e9;
		double r = secs > 0 ? (double)sum[i].delivered / secs : 0;
		total += r;
		off += (size_t)snprintf(per + off, sizeof per - off, "%s%.0f", i ? "," : "", r);
		if (off >= sizeof per)
			off = sizeof per - 1;
	}
	printf(",\"msgs_per_s\":%.0f,\"p50_ns\":%" PRIu64 ",\"p99_ns\":%" PRIu64
	       ",\"order_identical\":%s",
	       n ? total / n : 0, percentile(&own, 0.50), percentile(&own, 0.99),
	       identical ? "true" : "false");
	printf(",\"per_member_msgs_per_s\":[%s],\"other_p50_ns\":%" PRIu64 ",\"other_p99_ns\":%" PRIu64
	       ",\"sent\":%" PRIu64 ",\"delivered_per_member\":%" PRIu64 ",\"try_again\":%" PRIu64
	       ",\"samples\":%zu,\"dropped_samples\":%" PRIu64 ",\"libcpg\":\"%s\"}\n",
	       per, percentile(&other, 0.50), percentile(&other, 0.99), sent,
	       n ? sum[0].delivered : 0, n ? sum[0].try_again : 0, own.n + other.n, dropped,
	       n ? sum[0].libcpg : "");
	free(own.v);
	free(other.v);
	free(sum);
	return identical ? 0 : 1;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: cpgload member --members N --senders K [--send] --size B --duration S --out PREFIX\n"
		"                      [--group NAME] [--rate MSGS_PER_S] [--timeout S] [--lib DIR]\n"
		"       cpgload merge --impl NAME PREFIX...\n"
		"--lib DIR runs against the libcpg.so.4 in DIR (LD_LIBRARY_PATH); the JSON's \"libcpg\"\n"
		"names the library that was actually loaded.\n");
	exit(2);
}

int main(int argc, char **argv)
{
	if (argc < 2)
		usage();
	/* --lib DIR: re-exec once with DIR first on LD_LIBRARY_PATH, so the dynamic loader binds
	 * libcpg.so.4 from there. */
	for (int i = 1; i + 1 < argc; i++) {
		if (strcmp(argv[i], "--lib") || getenv("CPGLOAD_LIB_SET"))
			continue;
		const char *old = getenv("LD_LIBRARY_PATH");
		char *path;
		if (asprintf(&path, "%s%s%s", argv[i + 1], old ? ":" : "", old ? old : "") < 0)
			return 2;
		setenv("LD_LIBRARY_PATH", path, 1);
		setenv("CPGLOAD_LIB_SET", "1", 1);
		execv("/proc/self/exe", argv);
		perror("cpgload: re-exec for --lib");
		return 2;
	}
	const char *group = "cpgload", *out = NULL, *impl = "corosync";
	unsigned members = 0, senders = 0;
	int send = 0;
	size_t size = 64;
	double duration = 5, rate = 0, timeout = 60;
	int i = 2;
	for (; i < argc && !strncmp(argv[i], "--", 2); i++) {
		const char *a = argv[i];
		if (!strcmp(a, "--send")) {
			send = 1;
			continue;
		}
		if (i + 1 >= argc)
			usage();
		const char *v = argv[++i];
		if (!strcmp(a, "--group")) group = v;
		else if (!strcmp(a, "--members")) members = (unsigned)atoi(v);
		else if (!strcmp(a, "--senders")) senders = (unsigned)atoi(v);
		else if (!strcmp(a, "--size")) size = (size_t)strtoul(v, NULL, 10);
		else if (!strcmp(a, "--duration")) duration = atof(v);
		else if (!strcmp(a, "--rate")) rate = atof(v);
		else if (!strcmp(a, "--timeout")) timeout = atof(v);
		else if (!strcmp(a, "--out")) out = v;
		else if (!strcmp(a, "--impl")) impl = v;
		else if (!strcmp(a, "--lib")) continue;
		else usage();
	}
	if (!strcmp(argv[1], "merge"))
		return merge_main(impl, argc - i, argv + i);
	if (strcmp(argv[1], "member") || !out || !members || strlen(group) > CPG_MAX_NAME_LENGTH)
		usage();
	if (size < sizeof(struct msg_header) + 1 || size > MAX_SIZE) {
		fprintf(stderr, "cpgload: --size must be %zu..%u\n", sizeof(struct msg_header) + 1, MAX_SIZE);
		return 2;
	}
	return member_main(group, members, senders, send, size, duration, rate, timeout, out);
}
