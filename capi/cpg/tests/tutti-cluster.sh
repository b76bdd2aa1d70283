# shellcheck shell=bash
# Three tuttid daemons (node ids 1..3), the tutti side of the CPG conformance driver: the same
# interface as bench/anchors/corosync/cluster.sh (cluster_install, cluster_up, cluster_exec,
# cluster_kill_node, cluster_partition, cluster_heal, cluster_down), sourced by
# capi/cpg/tests/run.sh --tutti. A client reaches node i through TUTTI_SOCKET (a unix socket:
# its path works from any network namespace), and `cluster_exec` runs it with LD_LIBRARY_PATH
# at tutti's libcpg.so.4.
#
# As root with iproute2's `ip` (TUTTI_NETNS=auto, the default; 1 requires it): each daemon in
# a network namespace of its own (`tutti-cpg<pid>-n<i>`, eth0 = 10.251.$TUTTI_SUBNET.i/24,
# addresses that exist inside these namespaces only), joined by a veth pair to the bridge of
# one more namespace (`tutti-cpg<pid>-br`); cluster_partition N sets node N's bridge port down,
# cluster_heal N up again (as Corosync's cluster.sh does with its hub); these two exist only
# under evs (TUTTI_CPG_PARTITION unset or evs). Otherwise (TUTTI_NETNS=0, or not root) the daemons share
# loopback (127.0.$TUTTI_SUBNET.1..3). Without cluster_partition run.sh reports the partition
# checks failed, with the reason. TUTTI_CPG_PARTITION (majority or evs) sets the daemons'
# `cluster.cpg_partition`; unset, the daemon's default (evs). TUTTI_EVS_DELIVERY (agreed or
# safe) sets their `cluster.evs_delivery`; unset, the daemon's default (agreed).
# TUTTI_SPIN_AFTER_DATA_US sets their `spin_after_data_us`, TUTTI_CPU_POLL_AFTER_DATA_MS
# their `cpu_poll_after_data_ms`; unset, the daemon's defaults. TUTTI_DAEMON_CPUS places the
# daemons' shards: unset or `none`, not pinned (`no_pin`: the conformance runs' default);
# `default`, as tuttid pins by default (one shard on the last CPU); a CPU list like `1`,
# tuttid's `cores`.
#
# Callers set CLUSTER_DIR; cluster_down is idempotent (it removes the namespaces too) and
# belongs in the EXIT trap.

CLUSTER_NODES=${CLUSTER_NODES:-3}
TUTTI_SUBNET=${TUTTI_SUBNET:-213}
TUTTI_BASE_PORT=${TUTTI_BASE_PORT:-17800}
TUTTI_REPO=${TUTTI_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)}
TUTTI_PROFILE=${TUTTI_PROFILE:-debug}
CLUSTER_FORM_TIMEOUT=${CLUSTER_FORM_TIMEOUT:-60}
TUTTI_NETNS=${TUTTI_NETNS:-auto}
TUTTI_CPG_PARTITION=${TUTTI_CPG_PARTITION:-}
CLUSTER_NS_PREFIX="tutti-cpg$$-"
CLUSTER_IP=""

if [ "$TUTTI_NETNS" != 0 ]; then
    CLUSTER_IP=$(PATH="$PATH:/usr/sbin:/sbin" command -v ip || true)
    if [ "$(id -u)" -ne 0 ] || [ -z "$CLUSTER_IP" ]; then
        [ "$TUTTI_NETNS" = 1 ] && { echo "tutti-cluster.sh: TUTTI_NETNS=1 needs root and ip" >&2; exit 2; }
        CLUSTER_IP=""
    fi
fi

# Node $1's address (valid inside the namespaces only when they are used).
cluster_addr() {
    if [ -n "$CLUSTER_IP" ]; then echo "10.251.$TUTTI_SUBNET.$1"; else echo "127.0.$TUTTI_SUBNET.$1"; fi
}

# Network namespaces: a bridge namespace and one per node, each node's eth0 a veth whose peer
# n<i> is a port of the bridge.
cluster_netns_up() {
    local br="${CLUSTER_NS_PREFIX}br" ns i
    "$CLUSTER_IP" netns add "$br" || return 1
    "$CLUSTER_IP" -n "$br" link add br0 type bridge || return 1
    "$CLUSTER_IP" -n "$br" link set br0 up || return 1
    for i in $(seq 1 "$CLUSTER_NODES"); do
        ns="${CLUSTER_NS_PREFIX}n$i"
        "$CLUSTER_IP" netns add "$ns" || return 1
        "$CLUSTER_IP" -n "$ns" link set lo up || return 1
        "$CLUSTER_IP" -n "$ns" link add eth0 type veth peer name "n$i" netns "$br" || return 1
        "$CLUSTER_IP" -n "$ns" addr add "$(cluster_addr "$i")/24" dev eth0 || return 1
        "$CLUSTER_IP" -n "$ns" link set eth0 up || return 1
        "$CLUSTER_IP" -n "$br" link set "n$i" master br0 || return 1
        "$CLUSTER_IP" -n "$br" link set "n$i" up || return 1
    done
}

# Removes this run's namespaces, and those of an earlier run whose driver is gone.
cluster_netns_down() {
    local ns p owner
    [ -n "$CLUSTER_IP" ] || return 0
    for ns in $("$CLUSTER_IP" netns list 2>/dev/null | awk '{print $1}' | grep '^tutti-cpg[0-9]*-'); do
        owner=${ns#tutti-cpg}; owner=${owner%%-*}
        [ "$owner" != $$ ] && kill -0 "$owner" 2>/dev/null && continue
        for p in $("$CLUSTER_IP" netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
        "$CLUSTER_IP" netns del "$ns" 2>/dev/null || true
    done
}

# Only under `evs` (the default): with `majority` a cut-off minority stops (and the daemons
# go on with a group that lost its third), so the partition checks and the ones after them
# would fail.
if [ -n "$CLUSTER_IP" ] && [ "${TUTTI_CPG_PARTITION:-evs}" = evs ]; then
    # Node $1's bridge port down (cut off) / up (healed).
    cluster_partition() { "$CLUSTER_IP" -n "${CLUSTER_NS_PREFIX}br" link set "n$1" down; }
    cluster_heal() { "$CLUSTER_IP" -n "${CLUSTER_NS_PREFIX}br" link set "n$1" up; }
fi

cluster_install() {
    local flags=()
    [ "$TUTTI_PROFILE" = release ] && flags=(--release)
    (cd "$TUTTI_REPO" && nice cargo build -q -p tutti-daemon -p tutti-client "${flags[@]}") || return 1
    TUTTI_LIB=$(dirname "$(nice "$TUTTI_REPO/capi/cpg/build.sh" "${flags[@]}" --out "$CLUSTER_DIR/lib")") || return 1
    command -v gcc >/dev/null || { echo "gcc is missing" >&2; return 1; }
}

cluster_start_node() {
    local i=$1 d="$CLUSTER_DIR/n$1" seeds="" j cpgline="" pinline
    [ -n "$TUTTI_CPG_PARTITION" ] && cpgline="cpg_partition = \"$TUTTI_CPG_PARTITION\""
    case ${TUTTI_DAEMON_CPUS:-none} in
    none) pinline="no_pin = true" ;;
    default) pinline="" ;;
    *) pinline="cores = [${TUTTI_DAEMON_CPUS}]" ;;
    esac
    mkdir -p "$d"
    for j in $(seq 1 "$CLUSTER_NODES"); do seeds+="${seeds:+, }\"$j@$(cluster_addr "$j")\""; done
    # A 64 MiB log: the conformance checks send 1 MiB messages (about 1,000 fragments each)
    # to members that do not always dispatch at once.
    cat >"$d/tuttid.toml" <<CONF
node_id = $i
socket = "$d/tuttid.sock"
$pinline
idle = "backoff"
${TUTTI_SPIN_AFTER_DATA_US:+spin_after_data_us = $TUTTI_SPIN_AFTER_DATA_US}
${TUTTI_CPU_POLL_AFTER_DATA_MS:+cpu_poll_after_data_ms = $TUTTI_CPU_POLL_AFTER_DATA_MS}
log_bytes = 67108864
[cluster]
enabled = true
seeds = [$seeds]
suspect_timeout_ms = 3000
$cpgline
${TUTTI_EVS_DELIVERY:+evs_delivery = \"$TUTTI_EVS_DELIVERY\"}
[net]
listen = "$(cluster_addr "$i")"
base_port = $TUTTI_BASE_PORT
CONF
    local run=()
    # `ip netns exec` execs tuttid (no fork), so $! is tuttid's pid.
    [ -n "$CLUSTER_IP" ] && run=("$CLUSTER_IP" netns exec "${CLUSTER_NS_PREFIX}n$i")
    "${run[@]}" "$TUTTI_REPO/target/$TUTTI_PROFILE/tuttid" --config "$d/tuttid.toml" </dev/null >"$d/tuttid.log" 2>&1 &
    echo $! >"$d/pid"
}

cluster_pid() { cat "$CLUSTER_DIR/n$1/pid"; }

# Runs CMD... as a client of node $1, with tutti's libcpg.so.4 first on the library path.
cluster_exec() {
    local i=$1; shift
    env TUTTI_SOCKET="$CLUSTER_DIR/n$i/tuttid.sock" LD_LIBRARY_PATH="$TUTTI_LIB" "$@"
}

# 0 while the daemon does not answer yet. Never fails: callers run under `set -euo pipefail`
# (bench/anchors/corosync/run.sh), where a status asked before the daemon's socket existed
# failed the pipeline, and so the assignment, and the script exited without a word (seen
# once in CI).
cluster_members_seen() {
    local s
    s=$("$TUTTI_REPO/target/$TUTTI_PROFILE/tutti" --socket "$CLUSTER_DIR/n$1/tuttid.sock" status 2>/dev/null) || s=""
    sed -n 's/.*view_members[ =:]*\([0-9]*\).*/\1/p' <<<"$s" | head -1 || true
}

cluster_up() {
    : "${CLUSTER_DIR:?set CLUSTER_DIR}"
    local i n deadline=$((SECONDS + CLUSTER_FORM_TIMEOUT))
    if [ -n "$CLUSTER_IP" ]; then
        cluster_netns_down
        cluster_netns_up || { echo "tutti-cluster.sh: could not build the network namespaces" >&2; return 1; }
    fi
    for i in $(seq 1 "$CLUSTER_NODES"); do cluster_start_node "$i"; done
    for i in $(seq 1 "$CLUSTER_NODES"); do
        while :; do
            n=$(cluster_members_seen "$i")
            [ "${n:-0}" -eq "$CLUSTER_NODES" ] && break
            if [ $SECONDS -ge $deadline ]; then
                echo "tuttid cluster did not form in ${CLUSTER_FORM_TIMEOUT}s (node $i sees ${n:-0}); logs in $CLUSTER_DIR" >&2
                return 1
            fi
            sleep 0.1
        done
    done
}

cluster_describe() {
    local where="on 127.0.$TUTTI_SUBNET.0/24"
    [ -n "$CLUSTER_IP" ] && where="in network namespaces ${CLUSTER_NS_PREFIX}*, 10.251.$TUTTI_SUBNET.0/24"
    echo "$CLUSTER_NODES tuttid daemons $where ($TUTTI_PROFILE build, cpg_partition ${TUTTI_CPG_PARTITION:-default})"
}

# kill -9 of node $1's tuttid.
cluster_kill_node() {
    local p; p=$(cluster_pid "$1" 2>/dev/null) || return 0
    kill -9 "$p" 2>/dev/null || true
    while kill -0 "$p" 2>/dev/null; do sleep 0.05; done
}

cluster_down() {
    local i p t
    for i in $(seq 1 "$CLUSTER_NODES"); do
        p=$(cat "$CLUSTER_DIR/n$i/pid" 2>/dev/null) || continue
        kill -TERM "$p" 2>/dev/null || true
        t=0
        while kill -0 "$p" 2>/dev/null && [ $t -lt 50 ]; do sleep 0.1; t=$((t + 1)); done
        kill -9 "$p" 2>/dev/null || true
    done
    cluster_netns_down
}
