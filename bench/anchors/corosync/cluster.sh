# shellcheck shell=bash
# A 3-node Corosync cluster on this host, each node in its own network and mount namespace.
# Sourced by run.sh (load generator) and capi/cpg/tests/run.sh (conformance); not run directly.
#
# Layout: a hub netns holds a bridge; node i's netns has a veth to it with 10.213.7.i/24, so no
# address outside the namespaces is ever used and the host's interfaces are untouched. Each
# node's corosync runs in a private mount namespace with its own tmpfs on /run (pid lock),
# /dev/shm (libqb ring buffers), /var/lib/corosync and /var/log/corosync; libqb's abstract unix
# sockets are per netns. A client reaches node i with `cluster_exec i CMD...` (nsenter into
# that corosync's namespaces). CLOCK_MONOTONIC is shared by all of them.
#
# Callers set CLUSTER_DIR (a scratch dir) and call cluster_up; cluster_down is idempotent and
# must be in the caller's EXIT/INT/TERM trap.

CLUSTER_NODES=${CLUSTER_NODES:-3}
CLUSTER_PREFIX=${CLUSTER_PREFIX:-tcpg}
CLUSTER_NET=${CLUSTER_NET:-10.213.7}
# Seconds to wait for the cluster to form (all nodes see every other in their totem ring).
CLUSTER_FORM_TIMEOUT=${CLUSTER_FORM_TIMEOUT:-30}

cluster_install() {
    local missing=()
    command -v corosync >/dev/null || missing+=(corosync)
    [ -e /usr/include/corosync/cpg.h ] || missing+=(libcpg-dev)
    [ -e /usr/include/corosync/corotypes.h ] || missing+=(libcorosync-common-dev)
    command -v gcc >/dev/null || missing+=(gcc)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${missing[*]} from Debian packages" >&2
        # A fresh machine may have no package lists yet: update once and try again.
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
            { apt-get update -qq >&2 &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2; } ||
            { echo "apt-get install ${missing[*]} failed" >&2; return 1; }
    fi
}

cluster_conf() { # node -> corosync.conf text
    local i
    cat <<CONF
totem {
    version: 2
    cluster_name: ${CLUSTER_PREFIX}
    transport: knet
    crypto_cipher: none
    crypto_hash: none
    token: ${CLUSTER_TOKEN_MS:-1000}
    interface {
        linknumber: 0
    }
}
nodelist {
CONF
    for i in $(seq 1 "$CLUSTER_NODES"); do
        printf '    node {\n        ring0_addr: %s\n        name: n%s\n        nodeid: %s\n    }\n' \
            "${CLUSTER_NET}.$i" "$i" "$i"
    done
    cat <<CONF
}
quorum {
    provider: corosync_votequorum
}
logging {
    to_stderr: no
    to_syslog: no
    to_logfile: yes
    logfile: $CLUSTER_DIR/n$1/corosync.log
    timestamp: on
}
CONF
}

# Starts corosync on node $1 inside that node's namespaces (the netns must exist).
cluster_start_node() {
    local i=$1 d="$CLUSTER_DIR/n$1"
    mkdir -p "$d"
    cluster_conf "$i" >"$d/corosync.conf"
    rm -f "$d/pid"
    # sh writes its pid then execs corosync, so the pid file names corosync itself.
    ip netns exec "${CLUSTER_PREFIX}$i" unshare --mount --propagation private sh -c '
        set -e
        for m in /run /dev/shm /var/lib/corosync /var/log/corosync; do
            mkdir -p "$m"; mount -t tmpfs -o size=256m tmpfs "$m"
        done
        echo $$ >"$1/pid"
        exec ${2:+taskset -c "$2"} corosync -f -c "$1/corosync.conf"' sh "$d" "${COROSYNC_CPUS:-}" >"$d/stdout" 2>&1 &
    disown
    local t=0
    while [ ! -s "$d/pid" ]; do
        t=$((t + 1)); [ $t -gt 100 ] && { echo "node $i: corosync did not start ($d/stdout)" >&2; return 1; }
        sleep 0.05
    done
}

cluster_pid() { cat "$CLUSTER_DIR/n$1/pid"; }

# Runs CMD... as a client of node $1 (its netns and mount ns).
cluster_exec() {
    local i=$1; shift
    nsenter -t "$(cluster_pid "$i")" -n -m -- "$@"
}

# Number of nodes in node $1's current totem membership (0 if it cannot say).
cluster_members_seen() {
    cluster_exec "$1" corosync-cmapctl -g runtime.members 2>/dev/null >/dev/null || true
    cluster_exec "$1" corosync-cmapctl -b runtime.members 2>/dev/null | grep -c 'status (str) = joined' || true
}

cluster_wait_formed() {
    local deadline=$((SECONDS + CLUSTER_FORM_TIMEOUT)) i n
    for i in $(seq 1 "$CLUSTER_NODES"); do
        while :; do
            n=$(cluster_members_seen "$i")
            [ "${n:-0}" -eq "$CLUSTER_NODES" ] && break
            if [ $SECONDS -ge $deadline ]; then
                echo "cluster did not form in ${CLUSTER_FORM_TIMEOUT}s (node $i sees ${n:-0}); logs in $CLUSTER_DIR" >&2
                return 1
            fi
            sleep 0.1
        done
    done
}

cluster_up() {
    : "${CLUSTER_DIR:?set CLUSTER_DIR}"
    local i hub="${CLUSTER_PREFIX}hub"
    cluster_down_net
    ip netns add "$hub"
    ip -n "$hub" link add br0 type bridge
    ip -n "$hub" link set br0 up
    for i in $(seq 1 "$CLUSTER_NODES"); do
        ip netns add "${CLUSTER_PREFIX}$i"
        ip -n "${CLUSTER_PREFIX}$i" link set lo up
        ip link add "${CLUSTER_PREFIX}$i-a" netns "${CLUSTER_PREFIX}$i" type veth peer name "n$i" netns "$hub"
        ip -n "$hub" link set "n$i" master br0 up
        ip -n "${CLUSTER_PREFIX}$i" link set "${CLUSTER_PREFIX}$i-a" name eth0
        ip -n "${CLUSTER_PREFIX}$i" addr add "${CLUSTER_NET}.$i/24" dev eth0
        ip -n "${CLUSTER_PREFIX}$i" link set eth0 up
    done
    for i in $(seq 1 "$CLUSTER_NODES"); do cluster_start_node "$i" || return 1; done
    cluster_wait_formed
}

# kill -9 of node $1's corosync (its clients see NODEDOWN elsewhere).
cluster_kill_node() {
    local p; p=$(cluster_pid "$1" 2>/dev/null) || return 0
    kill -9 "$p" 2>/dev/null || true
    while kill -0 "$p" 2>/dev/null; do sleep 0.05; done
}

cluster_down_net() {
    local i
    for i in $(seq 1 "$CLUSTER_NODES") hub; do
        ip netns del "${CLUSTER_PREFIX}$i" 2>/dev/null || true
    done
}

cluster_down() {
    local i p
    for i in $(seq 1 "$CLUSTER_NODES"); do
        p=$(cat "$CLUSTER_DIR/n$i/pid" 2>/dev/null) || continue
        kill -TERM "$p" 2>/dev/null || true
    done
    for i in $(seq 1 "$CLUSTER_NODES"); do
        p=$(cat "$CLUSTER_DIR/n$i/pid" 2>/dev/null) || continue
        local t=0
        while kill -0 "$p" 2>/dev/null && [ $t -lt 50 ]; do sleep 0.1; t=$((t + 1)); done
        kill -9 "$p" 2>/dev/null || true
    done
    cluster_down_net
}
