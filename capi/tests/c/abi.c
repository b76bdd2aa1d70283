/*
 * abi: what tutti.h says the ABI is, printed as "NAME VALUE" lines for capi/tests/abi.rs
 * to compare with the Rust side (constants, struct sizes and field offsets), and a table
 * of every function the header declares, so that linking fails if the library lacks one.
 */
#include <tutti.h>

#include <stddef.h>
#include <stdio.h>

#define SHOW(name) printf("%s %lld\n", #name, (long long)(name))
#define FIELD(type, field) printf("offsetof(%s.%s) %zu\n", #type, #field, offsetof(type, field))

typedef void (*any_fn)(void);

/* Every function of tutti.h (the test also checks that this list is the header's). */
static const any_fn functions[] = {
    (any_fn)tutti_strerror, (any_fn)tutti_last_error, (any_fn)tutti_connect,
    (any_fn)tutti_close,    (any_fn)tutti_sender_id,  (any_fn)tutti_join,
    (any_fn)tutti_leave,    (any_fn)tutti_leave_reading, (any_fn)tutti_max_message, (any_fn)tutti_offer,
    (any_fn)tutti_try_claim, (any_fn)tutti_commit,    (any_fn)tutti_abort,
    (any_fn)tutti_flush,    (any_fn)tutti_poll,       (any_fn)tutti_poll_wait,
    (any_fn)tutti_next,     (any_fn)tutti_fd,
};

int main(void) {
    printf("functions %zu\n", sizeof functions / sizeof functions[0]);
    SHOW(TUTTI_OK);
    SHOW(TUTTI_ERR_INVALID);
    SHOW(TUTTI_ERR_CONNECT);
    SHOW(TUTTI_ERR_DAEMON_GONE);
    SHOW(TUTTI_ERR_REFUSED);
    SHOW(TUTTI_ERR_PERMISSION);
    SHOW(TUTTI_ERR_LIMIT);
    SHOW(TUTTI_ERR_PROTOCOL);
    SHOW(TUTTI_ERR_SHARED_MEMORY);
    SHOW(TUTTI_ERR_IO);
    SHOW(TUTTI_ERR_UNKNOWN_GROUP);
    SHOW(TUTTI_ERR_NOT_SUBSCRIBED);
    SHOW(TUTTI_ERR_NOT_PUBLISHER);
    SHOW(TUTTI_ERR_BACK_PRESSURED);
    SHOW(TUTTI_ERR_TOO_LARGE);
    SHOW(TUTTI_ERR_AGAIN);
    SHOW(TUTTI_ERR_TIMED_OUT);
    SHOW(TUTTI_ERR_BUSY);
    SHOW(TUTTI_ERR_UNSUPPORTED);
    SHOW(TUTTI_ERR_INTERNAL);
    SHOW(TUTTI_RIGHT_PUBLISH);
    SHOW(TUTTI_RIGHT_SUBSCRIBE);
    SHOW(TUTTI_MODE_DEFAULT);
    SHOW(TUTTI_MODE_UNRELIABLE);
    SHOW(TUTTI_MODE_BIMODAL);
    SHOW(TUTTI_MODE_ORDERED);
    SHOW(TUTTI_EVENT_MESSAGE);
    SHOW(TUTTI_EVENT_LAGGED);
    SHOW(TUTTI_EVENT_LOST);
    SHOW(TUTTI_EVENT_VIEW);
    SHOW(TUTTI_EVENT_CONFCHG);
    SHOW(TUTTI_EVENT_INSTALLED);
    SHOW(TUTTI_JOIN_SAFE);
    SHOW(TUTTI_JOIN_CPG);
    SHOW(sizeof(tutti_view_t));
    FIELD(tutti_view_t, id);
    FIELD(tutti_view_t, members);
    FIELD(tutti_view_t, n_members);
    FIELD(tutti_view_t, joined);
    FIELD(tutti_view_t, n_joined);
    FIELD(tutti_view_t, left);
    FIELD(tutti_view_t, left_reasons);
    FIELD(tutti_view_t, n_left);
    SHOW(sizeof(tutti_cpg_process_t));
    FIELD(tutti_cpg_process_t, nodeid);
    FIELD(tutti_cpg_process_t, pid);
    FIELD(tutti_cpg_process_t, reason);
    FIELD(tutti_cpg_process_t, session);
    SHOW(sizeof(tutti_confchg_t));
    FIELD(tutti_confchg_t, ring_id);
    FIELD(tutti_confchg_t, ring);
    FIELD(tutti_confchg_t, n_ring);
    FIELD(tutti_confchg_t, members);
    FIELD(tutti_confchg_t, n_members);
    FIELD(tutti_confchg_t, joined);
    FIELD(tutti_confchg_t, n_joined);
    FIELD(tutti_confchg_t, left);
    FIELD(tutti_confchg_t, n_left);
    SHOW(sizeof(tutti_error_t));
    SHOW(sizeof(tutti_group_t));
    SHOW(sizeof(tutti_join_options_t));
    FIELD(tutti_join_options_t, size);
    FIELD(tutti_join_options_t, rights);
    FIELD(tutti_join_options_t, mode);
    FIELD(tutti_join_options_t, flags);
    SHOW(sizeof(tutti_event_t));
    FIELD(tutti_event_t, kind);
    FIELD(tutti_event_t, group);
    FIELD(tutti_event_t, seq);
    FIELD(tutti_event_t, sender);
    FIELD(tutti_event_t, count);
    FIELD(tutti_event_t, payload);
    FIELD(tutti_event_t, len);
    tutti_join_options_t init = TUTTI_JOIN_OPTIONS_INIT;
    printf("TUTTI_JOIN_OPTIONS_INIT %u %u %u %u\n", init.size, init.rights, init.mode, init.flags);
    return 0;
}
