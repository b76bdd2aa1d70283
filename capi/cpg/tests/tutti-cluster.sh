# shellcheck shell=bash
# Three tuttid daemons on loopback (127.0.$TUTTI_SUBNET.1..3, node ids 1..3), the tutti side of
# the CPG conformance driver: the same interface as bench/anchors/corosync/cluster.sh
# (cluster_install, cluster_up, cluster_exec, cluster_kill_node, cluster_down), sourced by
# capi/cpg/tests/run.sh --tutti. Needs no root: a client reaches node i through TUTTI_SOCKET,
# and `cluster_exec` runs it with LD_LIBRARY_PATH at tutti's libcpg.so.4. There is no
# cluster_partition: the daemons share one network namespace here, and tutti's ordered groups
# have only the `majority` partition policy (docs/ordered.md), so the driver reports the
# partition checks as failed, with that reason.
#
# Callers set CLUSTER_DIR; cluster_down is idempotent and belongs in the EXIT trap.

CLUSTER_NODES=${CLUSTER_NODES:-3}
TUTTI_SUBNET=${TUTTI_SUBNET:-213}
TUTTI_BASE_PORT=${TUTTI_BASE_PORT:-17800}
TUTTI_REPO=${TUTTI_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)}
TUTTI_PROFILE=${TUTTI_PROFILE:-debug}
CLUSTER_FORM_TIMEOUT=${CLUSTER_FORM_TIMEOUT:-60}

cluster_install() {
    local flags=()
    [ "$TUTTI_PROFILE" = release ] && flags=(--release)
    (cd "$TUTTI_REPO" && nice cargo build -q -p tutti-daemon -p tutti-client "${flags[@]}") || return 1
    TUTTI_LIB=$(dirname "$(nice "$TUTTI_REPO/capi/cpg/build.sh" "${flags[@]}" --out "$CLUSTER_DIR/lib")") || return 1
    command -v gcc >/dev/null || { echo "gcc is missing" >&2; return 1; }
}

cluster_start_node() {
    local i=$1 d="$CLUSTER_DIR/n$1" seeds="" j
    mkdir -p "$d"
    for j in $(seq 1 "$CLUSTER_NODES"); do seeds+="${seeds:+, }\"$j@127.0.$TUTTI_SUBNET.$j\""; done
    # A 64 MiB log: the conformance checks send 1 MiB messages (about 1,000 fragments each)
    # to members that do not always dispatch at once.
    cat >"$d/tuttid.toml" <<CONF
node_id = $i
socket = "$d/tuttid.sock"
no_pin = true
idle = "backoff"
log_bytes = 67108864
[cluster]
enabled = true
seeds = [$seeds]
suspect_timeout_ms = 3000
[net]
listen = "127.0.$TUTTI_SUBNET.$i"
base_port = $TUTTI_BASE_PORT
CONF
    "$TUTTI_REPO/target/$TUTTI_PROFILE/tuttid" --config "$d/tuttid.toml" </dev/null >"$d/tuttid.log" 2>&1 &
    echo $! >"$d/pid"
}

cluster_pid() { cat "$CLUSTER_DIR/n$1/pid"; }

# Runs CMD... as a client of node $1, with tutti's libcpg.so.4 first on the library path.
cluster_exec() {
    local i=$1; shift
    env TUTTI_SOCKET="$CLUSTER_DIR/n$i/tuttid.sock" LD_LIBRARY_PATH="$TUTTI_LIB" "$@"
}

cluster_members_seen() {
    "$TUTTI_REPO/target/$TUTTI_PROFILE/tutti" --socket "$CLUSTER_DIR/n$1/tuttid.sock" status 2>/dev/null |
        sed -n 's/.*view_members[ =:]*\([0-9]*\).*/\1/p' | head -1
}

cluster_up() {
    : "${CLUSTER_DIR:?set CLUSTER_DIR}"
    local i n deadline=$((SECONDS + CLUSTER_FORM_TIMEOUT))
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

cluster_describe() { echo "$CLUSTER_NODES tuttid daemons on 127.0.$TUTTI_SUBNET.0/24 ($TUTTI_PROFILE build)"; }

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
}
