/*
 * throughput: how many messages per second one thread publishes and receives back through
 * libtutti, with the loop of `tutti-bench local-throughput` (offer up to 256 messages or
 * until back pressured, then poll up to 256 events, repeat), to compare the C API with the
 * Rust client on the same daemon.
 *
 *   cc -O2 throughput.c $(pkg-config --cflags --libs tutti) -o throughput
 *   ./throughput [SIZE [SECONDS]]     # default 64 bytes, 3 s after 1 s of warm-up
 *
 * Prints one line: messages/s, and the messages lost to LAGGED (a reader lapped by the
 * log: should be 0). Every message's index is checked.
 */
#include <tutti.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct counts {
    uint64_t delivered, expected, missed;
    int out_of_order;
};

static void on_event(const tutti_event_t *ev, void *user) {
    struct counts *c = user;
    if (ev->kind == TUTTI_EVENT_LAGGED) {
        c->missed += ev->count;
        c->expected += ev->count;
        return;
    }
    if (ev->kind != TUTTI_EVENT_MESSAGE || ev->len < 8) return;
    uint64_t index;
    memcpy(&index, ev->payload, 8);
    if (index != c->expected) c->out_of_order = 1;
    c->expected = index + 1;
    c->delivered++;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    size_t size = argc > 1 ? strtoul(argv[1], NULL, 10) : 64;
    double seconds = argc > 2 ? atof(argv[2]) : 3.0;
    if (size < 8) size = 8;
    tutti_client_t *client;
    tutti_group_t group;
    tutti_error_t err;
    if ((err = tutti_connect(NULL, &client)) != TUTTI_OK ||
        (err = tutti_join(client, "capi-throughput", NULL, &group)) != TUTTI_OK) {
        fprintf(stderr, "throughput: %s (%s)\n", tutti_strerror(err), tutti_last_error());
        return 1;
    }
    uint8_t *msg = malloc(size);
    if (msg == NULL) return 1;
    memset(msg, 0x5a, size);
    struct counts c = {0};
    uint64_t sent = 0, at_start = 0;
    double start = now_s(), from = start + 1.0, end = from + seconds;
    int measuring = 0;
    for (;;) {
        for (int i = 0; i < 256; i++) {
            memcpy(msg, &sent, 8);
            err = tutti_offer(client, group, msg, size);
            if (err == TUTTI_ERR_BACK_PRESSURED) break;
            if (err != TUTTI_OK) {
                fprintf(stderr, "throughput: offer: %s\n", tutti_last_error());
                return 1;
            }
            sent++;
        }
        if ((err = tutti_poll(client, group, 256, on_event, &c, NULL)) != TUTTI_OK) {
            fprintf(stderr, "throughput: poll: %s\n", tutti_last_error());
            return 1;
        }
        double t = now_s();
        if (!measuring && t >= from) {
            measuring = 1;
            at_start = c.delivered;
            from = t;
        } else if (measuring && t >= end) {
            double rate = (double)(c.delivered - at_start) / (t - from);
            printf("throughput: size %zu: %.2f M msg/s received (%.1f ns per message), "
                   "%" PRIu64 " missed to LAGGED%s\n", size, rate / 1e6, 1e9 / rate, c.missed,
                   c.out_of_order ? ", OUT OF ORDER" : "");
            break;
        }
    }
    free(msg);
    tutti_close(client);
    return c.out_of_order ? 1 : 0;
}
