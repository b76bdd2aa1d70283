/* Shared helpers of the CPG conformance programs: one line per check on stdout,
 * "PASS <program>.<check>" or "FAIL <program>.<check>: <why>", and a failure count for the
 * exit status. Built against Debian's <corosync/cpg.h>; nothing here is tied to Corosync. */
#ifndef CPGCHECK_H
#define CPGCHECK_H

#define _GNU_SOURCE
#include <corosync/cpg.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *check_prog = "cpg";
static int check_failures;

/* Records one check; returns cond so callers can skip what depends on it. */
__attribute__((format(printf, 3, 4))) static inline int check(int cond, const char *name, const char *fmt, ...)
{
	if (cond) {
		printf("PASS %s.%s\n", check_prog, name);
	} else {
		va_list ap;
		va_start(ap, fmt);
		printf("FAIL %s.%s: ", check_prog, name);
		vprintf(fmt, ap);
		printf("\n");
		va_end(ap);
		check_failures++;
	}
	fflush(stdout);
	return cond;
}

/* Checks a cs_error_t (evaluated once) against the expected code. */
static inline int check_rc(cs_error_t rc, cs_error_t want, const char *name, const char *want_name)
{
	return check(rc == want, name, "returned cs_error_t %d, expected %d (%s)", (int)rc, (int)want,
		     want_name);
}
#define CHECK_RC(rc, want, name) check_rc((rc), (want), name, #want)

static inline uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static inline struct cpg_name cpg_name_of(const char *s)
{
	struct cpg_name n;
	memset(&n, 0, sizeof n);
	n.length = (uint32_t)strlen(s);
	memcpy(n.value, s, n.length);
	return n;
}

static inline int cpg_name_is(const struct cpg_name *n, const char *s)
{
	return n->length == strlen(s) && memcmp(n->value, s, n->length) == 0;
}

/* Dispatches (CS_DISPATCH_ALL) until *cond becomes true or timeout_ms passes; 1 if it did. */
static inline int dispatch_until(cpg_handle_t h, volatile int *cond, unsigned timeout_ms)
{
	int fd;
	if (cpg_fd_get(h, &fd) != CS_OK)
		return 0;
	uint64_t deadline = mono_ms() + timeout_ms;
	while (!*cond) {
		uint64_t now = mono_ms();
		if (now >= deadline)
			return 0;
		struct pollfd p = {.fd = fd, .events = POLLIN};
		if (poll(&p, 1, (int)(deadline - now)) > 0) {
			cs_error_t rc = cpg_dispatch(h, CS_DISPATCH_ALL);
			if (rc != CS_OK && rc != CS_ERR_TRY_AGAIN)
				return 0;
		}
	}
	return 1;
}

/* Deterministic payload byte i of message (nodeid, seq), so receivers can verify integrity. */
static inline uint8_t payload_byte(uint32_t nodeid, uint32_t seq, size_t i)
{
	uint32_t x = nodeid * 2654435761u ^ seq * 40503u ^ (uint32_t)i * 2246822519u;
	return (uint8_t)(x ^ x >> 13 ^ x >> 24);
}

#endif
