/*
 * pubsub: publish messages to a tutti group and receive them back, in C.
 *
 *   cc pubsub.c $(pkg-config --cflags --libs tutti) -o pubsub
 *   ./pubsub [COUNT]          # the daemon at TUTTI_SOCKET, else the default socket
 *
 * Two clients of the same daemon: one joins the group "capi-demo" to publish only, the
 * other to subscribe only. The publisher sends COUNT messages of varying sizes (every
 * other one written in place with tutti_try_claim + tutti_commit, the last one as large
 * as the group takes); the subscriber waits on the group's descriptor with poll(2) and
 * reads with both tutti_poll (callback) and tutti_next (iterator), checking that every
 * message arrives once, in order, from the publisher, byte for byte. Exit status 0 when
 * they all did.
 */
#include <tutti.h>

#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GROUP "capi-demo"

struct receiver {
    uint64_t expected_sender;
    uint64_t received; /* messages checked so far (also the index the next must carry) */
    uint64_t count;    /* messages the publisher sends */
    size_t max;        /* the last message's size */
    uint64_t last_seq;
    int failed;
};

/* Size of message i: 8 to ~1 KiB, the last one as large as the group takes. */
static size_t message_size(const struct receiver *r, uint64_t i) {
    return i + 1 == r->count ? r->max : 8 + (size_t)((i * 37) % 1000);
}

/* Message i: its index (8 bytes, little-endian), then bytes (i + j) mod 251. */
static void fill(uint8_t *buf, size_t len, uint64_t i) {
    for (int b = 0; b < 8; b++) buf[b] = (uint8_t)(i >> (8 * b));
    for (size_t j = 8; j < len; j++) buf[j] = (uint8_t)((i + j) % 251);
}

static void on_event(const tutti_event_t *ev, void *user) {
    struct receiver *r = user;
    if (ev->kind != TUTTI_EVENT_MESSAGE) {
        fprintf(stderr, "pubsub: unexpected event kind %" PRIu32 " (count %" PRIu64 ")\n",
                ev->kind, ev->count);
        r->failed = 1;
        return;
    }
    uint64_t i = r->received;
    size_t want = message_size(r, i);
    int out_of_order = r->received > 0 && ev->seq <= r->last_seq;
    if (ev->sender != r->expected_sender || ev->len != want || out_of_order) {
        fprintf(stderr, "pubsub: message %" PRIu64 ": sender %" PRIx64 " len %zu seq %" PRIu64
                ", expected sender %" PRIx64 " len %zu\n", i, ev->sender, ev->len, ev->seq,
                r->expected_sender, want);
        r->failed = 1;
        return;
    }
    uint8_t expect[8];
    fill(expect, 8, i);
    if (memcmp(ev->payload, expect, 8) != 0) {
        fprintf(stderr, "pubsub: message %" PRIu64 " carries another index\n", i);
        r->failed = 1;
        return;
    }
    for (size_t j = 8; j < ev->len; j++) {
        if (ev->payload[j] != (uint8_t)((i + j) % 251)) {
            fprintf(stderr, "pubsub: message %" PRIu64 " differs at byte %zu\n", i, j);
            r->failed = 1;
            return;
        }
    }
    r->last_seq = ev->seq;
    r->received++;
}

/* Reads everything waiting: a batch through the callback, the rest one by one. */
static int drain(tutti_client_t *sub, tutti_group_t group, struct receiver *r) {
    size_t n = 0;
    tutti_error_t err = tutti_poll(sub, group, 16, on_event, r, &n);
    if (err != TUTTI_OK) return err;
    tutti_event_t ev;
    while ((err = tutti_next(sub, group, &ev)) == TUTTI_OK) on_event(&ev, r);
    return err == TUTTI_ERR_AGAIN ? TUTTI_OK : err;
}

static int fail(const char *what, tutti_error_t err) {
    fprintf(stderr, "pubsub: %s: %s (%s)\n", what, tutti_strerror(err), tutti_last_error());
    return 1;
}

int main(int argc, char **argv) {
    uint64_t count = argc > 1 ? strtoull(argv[1], NULL, 10) : 1000;
    if (count == 0) count = 1;
    tutti_client_t *pub = NULL, *sub = NULL;
    tutti_group_t pub_group, sub_group;
    tutti_error_t err;

    if ((err = tutti_connect(NULL, &sub)) != TUTTI_OK) return fail("connect", err);
    if ((err = tutti_connect(NULL, &pub)) != TUTTI_OK) return fail("connect", err);

    tutti_join_options_t opts = TUTTI_JOIN_OPTIONS_INIT;
    opts.rights = TUTTI_RIGHT_SUBSCRIBE;
    if ((err = tutti_join(sub, GROUP, &opts, &sub_group)) != TUTTI_OK)
        return fail("join to subscribe", err);
    opts.rights = TUTTI_RIGHT_PUBLISH;
    if ((err = tutti_join(pub, GROUP, &opts, &pub_group)) != TUTTI_OK)
        return fail("join to publish", err);

    struct receiver r = {.count = count};
    if ((err = tutti_sender_id(pub, &r.expected_sender)) != TUTTI_OK)
        return fail("sender id", err);
    if ((err = tutti_max_message(pub, pub_group, &r.max)) != TUTTI_OK)
        return fail("max message", err);
    int fd;
    if ((err = tutti_fd(sub, sub_group, &fd)) != TUTTI_OK) return fail("fd", err);

    uint8_t *scratch = malloc(r.max);
    if (scratch == NULL) return 1;
    for (uint64_t i = 0; i < count && !r.failed;) {
        size_t len = message_size(&r, i);
        if (i % 2 == 0) {
            fill(scratch, len, i);
            err = tutti_offer(pub, pub_group, scratch, len);
        } else {
            void *buf;
            err = tutti_try_claim(pub, pub_group, len, &buf);
            if (err == TUTTI_OK) {
                fill(buf, len, i); /* written in place in the publish ring */
                err = tutti_commit(pub);
            }
        }
        if (err == TUTTI_OK) {
            i++;
        } else if (err != TUTTI_ERR_BACK_PRESSURED) {
            return fail("publish", err);
        }
        /* Back pressure (or every 64 messages): read what has arrived meanwhile. */
        if ((err != TUTTI_OK || i % 64 == 0) && (err = drain(sub, sub_group, &r)) != TUTTI_OK)
            return fail("receive", err);
    }
    free(scratch);

    /* Wait on the descriptor until everything has arrived (10 s without progress: fail). */
    while (r.received < count && !r.failed) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int ready = poll(&pfd, 1, 10000);
        if (ready == 0) {
            fprintf(stderr, "pubsub: nothing arrived for 10 s (%" PRIu64 " of %" PRIu64 ")\n",
                    r.received, count);
            return 1;
        }
        if (ready < 0) {
            perror("pubsub: poll");
            return 1;
        }
        if ((err = drain(sub, sub_group, &r)) != TUTTI_OK) return fail("receive", err);
    }
    if (r.failed) return 1;

    if ((err = tutti_leave(pub, pub_group)) != TUTTI_OK) return fail("leave", err);
    if ((err = tutti_leave(sub, sub_group)) != TUTTI_OK) return fail("leave", err);
    tutti_close(pub);
    tutti_close(sub);
    printf("pubsub: %" PRIu64 " messages received intact, in order, from sender %" PRIx64
           " (largest %zu bytes)\n", r.received, r.expected_sender, r.max);
    return 0;
}
