/*
 * api_check: libtutti's contract, from C, against a live tuttid (run by capi/tests/c_api.rs
 * with a 64 KiB delivery log, so that a subscriber that does not read falls behind).
 *
 * Checks every error path the header promises (NULL pointers, bad options, newer options
 * structs, unknown groups, rights, claims, re-entry from a callback), that messages arrive
 * intact through tutti_poll, tutti_poll_wait and tutti_next, that a LAGGED event accounts
 * for exactly what a slow subscriber missed, and that the group's descriptor turns readable
 * on appends, resets once drained, and turns readable for good when the daemon dies: after
 * printing READY the program waits for the test to kill the daemon, then prints GONE.
 */
#include <tutti.h>

#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHECK(cond)                                                                           \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "api_check.c:%d: check failed: %s (last error: %s)\n", __LINE__, \
                    #cond, tutti_last_error());                                               \
            exit(1);                                                                          \
        }                                                                                     \
    } while (0)

#define EXPECT(call, code) CHECK((call) == (code))

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int readable(int fd, int timeout_ms) {
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    return poll(&pfd, 1, timeout_ms) == 1 && (pfd.revents & POLLIN);
}

/* Message i of `len` bytes: i in the first 4 bytes, then (i * 7 + j) mod 253. */
static void fill(uint8_t *buf, size_t len, uint32_t i) {
    memcpy(buf, &i, len < 4 ? len : 4);
    for (size_t j = 4; j < len; j++) buf[j] = (uint8_t)((i * 7 + j) % 253);
}

static int intact(const uint8_t *buf, size_t len, uint32_t *index) {
    if (len < 4) return 0;
    memcpy(index, buf, 4);
    for (size_t j = 4; j < len; j++)
        if (buf[j] != (uint8_t)((*index * 7 + j) % 253)) return 0;
    return 1;
}

/* What a callback saw. */
struct seen {
    tutti_client_t *self;
    uint64_t messages, lagged_events, missed;
    uint32_t next_index; /* index the next message must carry */
    size_t last_len;
    int bad, busy_offer, busy_close;
};

static void collect(const tutti_event_t *ev, void *user) {
    struct seen *s = user;
    if (ev->kind == TUTTI_EVENT_LAGGED) {
        s->lagged_events++;
        s->missed += ev->count;
        s->next_index += (uint32_t)ev->count;
        return;
    }
    uint32_t index = 0;
    if (ev->kind != TUTTI_EVENT_MESSAGE || !intact(ev->payload, ev->len, &index) || index != s->next_index) {
        fprintf(stderr, "api_check: event kind %u len %zu index %u, expected message %u\n", ev->kind,
                ev->len, index, s->next_index);
        s->bad = 1;
        return;
    }
    s->messages++;
    s->next_index = index + 1;
    s->last_len = ev->len;
}

/* Calls back into its own client: both must be refused, nothing else happens. */
static void reenter(const tutti_event_t *ev, void *user) {
    struct seen *s = user;
    (void)ev;
    s->busy_offer = tutti_offer(s->self, 0, "x", 1) == TUTTI_ERR_BUSY;
    s->busy_close = tutti_close(s->self) == TUTTI_ERR_BUSY;
    s->messages++;
}

/* Waits on the descriptor for the next event (it may wake spuriously: then AGAIN). */
static tutti_error_t next_via_fd(tutti_client_t *c, tutti_group_t g, int fd, tutti_event_t *ev) {
    tutti_error_t err = TUTTI_ERR_AGAIN;
    for (int rounds = 0; err == TUTTI_ERR_AGAIN && rounds < 100; rounds++) {
        CHECK(readable(fd, 5000));
        err = tutti_next(c, g, ev);
    }
    return err;
}

static void publish(tutti_client_t *c, tutti_group_t g, uint32_t i, size_t len) {
    uint8_t buf[2048];
    fill(buf, len, i);
    tutti_error_t err;
    while ((err = tutti_offer(c, g, buf, len)) == TUTTI_ERR_BACK_PRESSURED) sleep_ms(1);
    EXPECT(err, TUTTI_OK);
}

int main(void) {
    tutti_client_t *c = (tutti_client_t *)&c; /* must be overwritten with NULL on failure */
    tutti_group_t g, pub_only, sub_only;
    tutti_event_t ev;
    size_t n, max;
    int fd, fd2;

    /* Errors by name; unknown codes too. */
    CHECK(strcmp(tutti_strerror(TUTTI_OK), "success") == 0);
    CHECK(strstr(tutti_strerror(TUTTI_ERR_BACK_PRESSURED), "back pressured") != NULL);
    CHECK(strstr(tutti_strerror(12345), "unknown") != NULL);

    /* Connect: NULL out, a socket that is not there (out reset, path in the detail). */
    EXPECT(tutti_connect(NULL, NULL), TUTTI_ERR_INVALID);
    CHECK(strstr(tutti_last_error(), "NULL") != NULL);
    EXPECT(tutti_connect("/nonexistent/tutti.sock", &c), TUTTI_ERR_CONNECT);
    CHECK(c == NULL);
    CHECK(strstr(tutti_last_error(), "/nonexistent/tutti.sock") != NULL);
    EXPECT(tutti_close(NULL), TUTTI_OK);
    EXPECT(tutti_connect(NULL, &c), TUTTI_OK); /* TUTTI_SOCKET */
    CHECK(c != NULL);

    /* Join: every argument checked, options versioned by size. */
    tutti_join_options_t opts = TUTTI_JOIN_OPTIONS_INIT;
    EXPECT(tutti_join(NULL, "g", NULL, &g), TUTTI_ERR_INVALID);
    EXPECT(tutti_join(c, NULL, NULL, &g), TUTTI_ERR_INVALID);
    EXPECT(tutti_join(c, "g", NULL, NULL), TUTTI_ERR_INVALID);
    EXPECT(tutti_join(c, "", NULL, &g), TUTTI_ERR_INVALID);
    opts.size = 4;
    EXPECT(tutti_join(c, "g", &opts, &g), TUTTI_ERR_INVALID);
    opts = (tutti_join_options_t)TUTTI_JOIN_OPTIONS_INIT;
    opts.mode = TUTTI_MODE_ORDERED; /* this daemon has no cluster */
    EXPECT(tutti_join(c, "g", &opts, &g), TUTTI_ERR_UNSUPPORTED);
    opts.flags = TUTTI_JOIN_CPG;
    EXPECT(tutti_join(c, "g", &opts, &g), TUTTI_ERR_UNSUPPORTED);
    opts.flags = 4; /* no such mode option */
    EXPECT(tutti_join(c, "g", &opts, &g), TUTTI_ERR_INVALID);
    opts.flags = 0;
    opts.mode = 99;
    EXPECT(tutti_join(c, "g", &opts, &g), TUTTI_ERR_INVALID);
    opts.mode = TUTTI_MODE_DEFAULT;
    opts.flags = TUTTI_JOIN_SAFE; /* mode options need TUTTI_MODE_ORDERED */
    EXPECT(tutti_join(c, "g", &opts, &g), TUTTI_ERR_INVALID);
    opts.flags = 0;
    opts.rights = 8;
    EXPECT(tutti_join(c, "g", &opts, &g), TUTTI_ERR_INVALID);
    struct {
        tutti_join_options_t base;
        uint32_t newer_field, newer_pad;
    } newer = {TUTTI_JOIN_OPTIONS_INIT, 1, 0};
    newer.base.size = sizeof newer;
    EXPECT(tutti_join(c, "g", &newer.base, &g), TUTTI_ERR_UNSUPPORTED);
    newer.newer_field = 0; /* a newer field left at zero asks for nothing: fine */
    EXPECT(tutti_join(c, "capi-check", &newer.base, &g), TUTTI_OK);

    opts = (tutti_join_options_t)TUTTI_JOIN_OPTIONS_INIT;
    opts.rights = TUTTI_RIGHT_PUBLISH;
    EXPECT(tutti_join(c, "capi-check-pub", &opts, &pub_only), TUTTI_OK);
    opts.rights = TUTTI_RIGHT_SUBSCRIBE;
    EXPECT(tutti_join(c, "capi-check-sub", &opts, &sub_only), TUTTI_OK);
    CHECK(g != pub_only && g != sub_only && pub_only != sub_only);

    uint64_t me = 0;
    EXPECT(tutti_sender_id(c, NULL), TUTTI_ERR_INVALID);
    EXPECT(tutti_sender_id(c, &me), TUTTI_OK);
    CHECK(me != 0);
    EXPECT(tutti_max_message(c, g, NULL), TUTTI_ERR_INVALID);
    EXPECT(tutti_max_message(c, 999, &max), TUTTI_ERR_UNKNOWN_GROUP);
    EXPECT(tutti_max_message(c, g, &max), TUTTI_OK);
    CHECK(max >= 2048);

    /* Rights. */
    EXPECT(tutti_offer(c, sub_only, "x", 1), TUTTI_ERR_NOT_PUBLISHER);
    EXPECT(tutti_poll(c, pub_only, 1, collect, NULL, &n), TUTTI_ERR_NOT_SUBSCRIBED);
    EXPECT(tutti_next(c, pub_only, &ev), TUTTI_ERR_NOT_SUBSCRIBED);
    EXPECT(tutti_fd(c, pub_only, &fd), TUTTI_ERR_NOT_SUBSCRIBED);

    /* Offer: pointers, sizes, unknown groups. */
    EXPECT(tutti_offer(NULL, g, "x", 1), TUTTI_ERR_INVALID);
    EXPECT(tutti_offer(c, g, NULL, 5), TUTTI_ERR_INVALID);
    EXPECT(tutti_offer(c, 999, "x", 1), TUTTI_ERR_UNKNOWN_GROUP);
    EXPECT(tutti_offer(c, g, "x", max + 1), TUTTI_ERR_TOO_LARGE);
    void *buf = NULL;
    EXPECT(tutti_try_claim(c, g, max + 1, &buf), TUTTI_ERR_TOO_LARGE);
    EXPECT(tutti_try_claim(c, g, 8, NULL), TUTTI_ERR_INVALID);

    /* Nothing waits yet: the iterator says AGAIN, the waiting poll times out. */
    EXPECT(tutti_next(c, g, NULL), TUTTI_ERR_INVALID);
    EXPECT(tutti_next(c, g, &ev), TUTTI_ERR_AGAIN);
    EXPECT(tutti_poll(c, g, 8, NULL, NULL, &n), TUTTI_ERR_INVALID);
    n = 77;
    EXPECT(tutti_poll_wait(c, g, 8, 50, collect, NULL, &n), TUTTI_ERR_TIMED_OUT);
    CHECK(n == 0);

    /* The descriptor: stable, readable once something is appended. */
    EXPECT(tutti_fd(c, g, NULL), TUTTI_ERR_INVALID);
    EXPECT(tutti_fd(c, g, &fd), TUTTI_OK);
    EXPECT(tutti_fd(c, g, &fd2), TUTTI_OK);
    CHECK(fd == fd2 && fd >= 0);

    /* Claims: one at a time, publishing nothing until committed. */
    EXPECT(tutti_commit(c), TUTTI_ERR_INVALID);
    EXPECT(tutti_abort(c), TUTTI_ERR_INVALID);
    EXPECT(tutti_try_claim(c, g, 100, &buf), TUTTI_OK);
    CHECK(buf != NULL);
    EXPECT(tutti_offer(c, g, "x", 1), TUTTI_ERR_BUSY);
    void *buf2;
    EXPECT(tutti_try_claim(c, g, 10, &buf2), TUTTI_ERR_BUSY);
    EXPECT(tutti_leave(c, g), TUTTI_ERR_BUSY);
    EXPECT(tutti_abort(c), TUTTI_OK); /* nothing published */
    EXPECT(tutti_try_claim(c, g, 100, &buf), TUTTI_OK);
    fill(buf, 100, 0);
    EXPECT(tutti_commit(c), TUTTI_OK);
    publish(c, g, 1, 1000);
    EXPECT(tutti_try_claim(c, g, 0, &buf), TUTTI_OK); /* an empty message */
    EXPECT(tutti_commit(c), TUTTI_OK);

    /* Receive: the descriptor wakes, the three messages arrive in order and intact. */
    CHECK(readable(fd, 5000));
    struct seen s = {0};
    while (s.messages < 2) {
        n = 0;
        EXPECT(tutti_poll_wait(c, g, 1, 5000, collect, &s, &n), TUTTI_OK);
        CHECK(n == 1 && !s.bad);
    }
    CHECK(s.last_len == 1000);
    /* The empty message may come in a later batch: wait on the descriptor only after a read
     * that found nothing (the edge-style contract). */
    tutti_error_t third;
    while ((third = tutti_next(c, g, &ev)) == TUTTI_ERR_AGAIN) CHECK(readable(fd, 5000));
    EXPECT(third, TUTTI_OK);
    CHECK(ev.kind == TUTTI_EVENT_MESSAGE && ev.len == 0 && ev.sender == me && ev.group == g);
    EXPECT(tutti_next(c, g, &ev), TUTTI_ERR_AGAIN);
    /* Drained, the descriptor is idle: never readable for records already read. */
    CHECK(!readable(fd, 50));

    /* tutti_next's payload stays valid until the next receiving call. */
    publish(c, g, 2, 300);
    /* A poll of 0 events reads nothing and leaves the descriptor readable. */
    CHECK(readable(fd, 5000));
    EXPECT(tutti_poll(c, g, 0, collect, NULL, &n), TUTTI_OK);
    CHECK(n == 0 && readable(fd, 0));
    EXPECT(tutti_poll_wait(c, g, 0, 10, collect, NULL, &n), TUTTI_ERR_INVALID);
    EXPECT(next_via_fd(c, g, fd, &ev), TUTTI_OK);
    uint32_t index;
    CHECK(ev.kind == TUTTI_EVENT_MESSAGE && ev.len == 300 && intact(ev.payload, ev.len, &index) && index == 2);
    CHECK(ev.sender == me && ev.seq > 0);

    /* A callback that calls back into its own client is refused, and the client lives on. */
    publish(c, g, 3, 10);
    struct seen r = {.self = c};
    EXPECT(tutti_poll_wait(c, g, 1, 5000, reenter, &r, &n), TUTTI_OK);
    CHECK(n == 1 && r.busy_offer && r.busy_close);

    /* A slow subscriber: 300 messages of 1000 bytes through a 64 KiB log it does not read.
     * It gets LAGGED, and missed + delivered accounts for every message, in order. */
    tutti_client_t *slow;
    tutti_group_t slow_g, fast_g;
    EXPECT(tutti_connect(NULL, &slow), TUTTI_OK);
    opts = (tutti_join_options_t)TUTTI_JOIN_OPTIONS_INIT;
    opts.rights = TUTTI_RIGHT_SUBSCRIBE;
    EXPECT(tutti_join(slow, "capi-lag", &opts, &slow_g), TUTTI_OK);
    opts.rights = TUTTI_RIGHT_PUBLISH;
    EXPECT(tutti_join(c, "capi-lag", &opts, &fast_g), TUTTI_OK);
    for (uint32_t i = 0; i < 300; i++) publish(c, fast_g, i, 1000);
    EXPECT(tutti_flush(c, 10000), TUTTI_OK);
    struct seen lag = {0};
    while (lag.next_index < 300 && !lag.bad) {
        EXPECT(tutti_poll_wait(slow, slow_g, 64, 10000, collect, &lag, &n), TUTTI_OK);
    }
    CHECK(!lag.bad && lag.next_index == 300);
    CHECK(lag.lagged_events >= 1 && lag.missed > 0);
    CHECK(lag.missed + lag.messages == 300);
    fprintf(stderr, "api_check: slow subscriber: %" PRIu64 " lagged events, %" PRIu64 " missed, %" PRIu64
            " delivered\n", lag.lagged_events, lag.missed, lag.messages);
    EXPECT(tutti_close(slow), TUTTI_OK);

    /* Leaving but reading on: another local member keeps the group's log written; the
     * group takes nothing more from the leaver, which still reads what comes after. */
    tutti_client_t *other;
    tutti_group_t og, lg;
    EXPECT(tutti_connect(NULL, &other), TUTTI_OK);
    opts = (tutti_join_options_t)TUTTI_JOIN_OPTIONS_INIT;
    EXPECT(tutti_join(other, "capi-leave-reading", &opts, &og), TUTTI_OK);
    EXPECT(tutti_join(c, "capi-leave-reading", &opts, &lg), TUTTI_OK);
    EXPECT(tutti_leave_reading(c, lg), TUTTI_OK);
    EXPECT(tutti_leave_reading(c, lg), TUTTI_ERR_UNKNOWN_GROUP);
    EXPECT(tutti_offer(c, lg, "x", 1), TUTTI_ERR_NOT_PUBLISHER);
    publish(other, og, 0, 100);
    struct seen after = {0};
    while (after.messages < 1 && !after.bad) {
        EXPECT(tutti_poll_wait(c, lg, 1, 5000, collect, &after, &n), TUTTI_OK);
    }
    CHECK(!after.bad && after.messages == 1 && after.last_len == 100);
    EXPECT(tutti_leave(c, lg), TUTTI_OK);
    EXPECT(tutti_leave(c, lg), TUTTI_ERR_UNKNOWN_GROUP);
    EXPECT(tutti_close(other), TUTTI_OK);

    /* Leave frees the slot for the next join; an unknown group stays unknown. */
    EXPECT(tutti_leave(c, sub_only), TUTTI_OK);
    EXPECT(tutti_leave(c, sub_only), TUTTI_ERR_UNKNOWN_GROUP);
    tutti_group_t again;
    opts.rights = TUTTI_RIGHT_SUBSCRIBE;
    EXPECT(tutti_join(c, "capi-check-sub", &opts, &again), TUTTI_OK);
    CHECK(again == sub_only);

    /* The daemon dies: the descriptor turns readable and receiving says DAEMON_GONE. */
    while (tutti_next(c, g, &ev) == TUTTI_OK) {
    }
    printf("READY\n");
    fflush(stdout);
    tutti_error_t err = TUTTI_OK;
    for (int rounds = 0; err == TUTTI_OK || err == TUTTI_ERR_AGAIN; rounds++) {
        CHECK(rounds < 100);
        CHECK(readable(fd, 20000));
        while ((err = tutti_next(c, g, &ev)) == TUTTI_OK) {
        }
    }
    EXPECT(err, TUTTI_ERR_DAEMON_GONE);
    EXPECT(tutti_offer(c, g, "x", 1), TUTTI_ERR_DAEMON_GONE);
    EXPECT(tutti_close(c), TUTTI_OK);
    printf("GONE\n");
    return 0;
}
