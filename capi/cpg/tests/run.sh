#!/usr/bin/env bash
# CPG conformance driver: builds the C programs of this directory against Debian's
# <corosync/cpg.h>, starts a 3-node Corosync cluster (bench/anchors/corosync/cluster.sh: one
# network + mount namespace per node), and runs
#   - cpg_api on nodes 1 and 2 (single-member checks of all 20 functions), and
#   - a scripted 3-node scenario with cpg_member processes: joins, agreed order of messages of
#     1 B .. 1 MiB sent by all three at once, membership_get/iteration across nodes, leave,
#     kill -9 of a member (PROCDOWN), a netns partition of node 3 and its healing
#     (NODEDOWN/NODEUP, the minority goes on), kill -9 of node 3's daemon (NODEDOWN).
# One line per check: "PASS name" / "FAIL name: why"; a summary at the end; exit 1 on failure.
#
#   sudo capi/cpg/tests/run.sh [--lib DIR] [--keep]
#   capi/cpg/tests/run.sh --tutti [--release] [--keep]      (run-tutti.sh)
#
# --lib DIR runs the programs with LD_LIBRARY_PATH=DIR (another libcpg.so.4, e.g. tutti's);
# the cluster is still Corosync's. --tutti runs the same unmodified programs (still linked
# against Debian's libcpg) against tutti's libcpg.so.4 (capi/cpg/build.sh) on 3 tuttid daemons
# (tutti-cluster.sh): as root, each in a network namespace of its own, partitioned as
# Corosync's are under evs (the default; TUTTI_CPG_PARTITION=majority turns it off); otherwise the partition checks are reported
# failed (no partition in one namespace; under majority a minority stops). Bounded: every wait
# has a deadline; everything it starts is stopped and every namespace removed on exit or
# interrupt. Takes about a minute.
# CPG_STALL_SECONDS=S stops node 2's daemon (SIGSTOP) for S seconds while m3 joins: a daemon
# descheduled on a loaded host must not be taken for down (join.m3_*; docs/cpg.md).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
lib="" KEEP="" TUTTI=""
while [ $# -gt 0 ]; do
    case $1 in
    --lib) lib=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --tutti) TUTTI=1; shift ;;
    --release) TUTTI_PROFILE=release; shift ;;
    -h | --help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
if [ -n "$TUTTI" ]; then
    [ -z "$lib" ] || { echo "run.sh: --lib and --tutti exclude each other" >&2; exit 2; }
    # shellcheck source=tutti-cluster.sh
    . "$here/tutti-cluster.sh"
else
    [ "$(id -u)" -eq 0 ] || { echo "run.sh: needs root (network namespaces)" >&2; exit 2; }
    # shellcheck source=../../../bench/anchors/corosync/cluster.sh
    . "$repo/bench/anchors/corosync/cluster.sh"
    cluster_describe() { echo "$CLUSTER_NODES Corosync nodes ($(corosync -v | head -1))"; }
    # Node $1's link to the hub down / up again.
    cluster_partition() { ip -n "${CLUSTER_PREFIX}hub" link set "n$1" down; }
    cluster_heal() { ip -n "${CLUSTER_PREFIX}hub" link set "n$1" up; }
fi

CLUSTER_DIR=$(mktemp -d /tmp/tutti-cpgtest.XXXXXX)
D=$CLUSTER_DIR
declare -A FD PID CUR
passes=0 failures=0
cleanup() {
    local m
    trap '' INT TERM # a second interrupt must not cut the cleanup short
    for m in "${!PID[@]}"; do kill -9 "${PID[$m]}" 2>/dev/null || true; done
    cluster_down
    if [ -n "$KEEP" ]; then echo "logs kept in $D" >&2; else rm -rf "$D"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pass() { echo "PASS $1"; passes=$((passes + 1)); }
fail() { echo "FAIL $1: $2"; failures=$((failures + 1)); }

envlib=(env)
[ -n "$lib" ] && envlib=(env "LD_LIBRARY_PATH=$lib")

# start_member NAME NODE: a cpg_member on NODE, commands through a FIFO, events in NAME.log.
start_member() {
    local name=$1 node=$2 fd
    mkfifo "$D/$name.in"
    cluster_exec "$node" "${envlib[@]}" "$D/cpg_member" <"$D/$name.in" >"$D/$name.log" 2>&1 &
    disown
    exec {fd}>"$D/$name.in"
    FD[$name]=$fd
    CUR[$name]=0
    wait_line "$name" '^READY pid=' 10 || { fail "$name.start" "no READY in $D/$name.log"; return 1; }
    PID[$name]=$(sed -n 's/^READY pid=//p' "$D/$name.log")
}

cmd() { echo "$2" >&"${FD[$1]}"; }

# wait_line NAME ERE SECONDS: waits for a line matching ERE after NAME's cursor; on a match
# moves the cursor there and puts the line in $LINE.
wait_line() {
    local name=$1 re=$2 deadline=$((SECONDS + $3)) n
    while :; do
        n=$(awk -v from="${CUR[$name]}" -v re="$re" 'NR > from && $0 ~ re { print NR; exit }' "$D/$name.log")
        if [ -n "$n" ]; then
            CUR[$name]=$n
            LINE=$(sed -n "${n}p" "$D/$name.log")
            return 0
        fi
        [ $SECONDS -ge $deadline ] && return 1
        sleep 0.05
    done
}

# expect CHECK NAME ERE [SECONDS]: one check, passing when NAME logs a matching line in time.
expect() {
    local check=$1 name=$2 re=$3
    if wait_line "$name" "$re" "${4:-10}"; then pass "$check"; else
        fail "$check" "$name logged no line matching /$re/ (log $D/$name.log, from line ${CUR[$name]})"
    fi
}

# expect_set NAME SECONDS CHECK ERE [CHECK ERE]...: events that come together in an order that
# carries no meaning (Corosync delivers the CPG confchg before the totem confchg): each ERE is
# searched from the same cursor; the cursor then moves past the last match.
expect_set() {
    local name=$1 secs=$2 start=${CUR[$1]} end=${CUR[$1]}; shift 2
    while [ $# -ge 2 ]; do
        CUR[$name]=$start
        expect "$1" "$name" "$2" "$secs"
        [ "${CUR[$name]}" -gt "$end" ] && end=${CUR[$name]}
        shift 2
    done
    CUR[$name]=$end
}

# expect_same CHECK NAME... : the last HASH lines of the members are identical and clean.
expect_same() {
    local check=$1 first="" h; shift
    for m in "$@"; do
        h=$(grep '^HASH' "$D/$m.log" | tail -1)
        [ -z "$first" ] && first=$h
        if [ -z "$h" ] || [ "$h" != "$first" ] || [[ $h != *" bad=0" ]]; then
            fail "$check" "$(for x in "$@"; do echo -n "$x: $(grep '^HASH' "$D/$x.log" | tail -1); "; done)"
            return
        fi
    done
    pass "$check"
}

cluster_install || exit 2
for p in cpg_api cpg_member; do
    gcc -O1 -g -Wall -Wextra -Werror -o "$D/$p" "$here/$p.c" -lcpg || exit 2
done
# The programs must between them call all 20 functions of <corosync/cpg.h>.
want=$(grep -oE '^cs_error_t (cpg_[a-z_]+)' /usr/include/corosync/cpg.h | awk '{print $2}' | sort -u)
have=$(nm -D --undefined-only "$D/cpg_api" "$D/cpg_member" | grep -oE 'cpg_[a-z_]+' | sort -u)
missing=$(comm -23 <(echo "$want") <(echo "$have") | tr '\n' ' ')
if [ "$(echo "$want" | wc -l)" -eq 20 ] && [ -z "$missing" ]; then pass api.all_20_functions_called; else
    fail api.all_20_functions_called "cpg.h declares $(echo "$want" | wc -l); not called: ${missing:-none}"
fi

cluster_up || exit 1
echo "cluster of $(cluster_describe) formed" >&2

# --- single-member checks on two nodes ---
for node in 1 2; do
    cluster_exec "$node" timeout 120 "${envlib[@]}" "$D/cpg_api" --nodeid "$node" --nodes 3 \
        --group-prefix "api$node" >"$D/api$node.log" 2>&1
    st=$?
    while read -r verdict name rest; do
        case $verdict in
        PASS) pass "n$node.$name" ;;
        FAIL) fail "n$node.${name%:}" "$rest" ;;
        INFO) [ "$node" = 1 ] && echo "INFO $name $rest" ;;
        esac
    done <"$D/api$node.log"
    grep -q '^DONE' "$D/api$node.log" || fail "n$node.api.completed" "cpg_api exited with status $st before DONE"
done

# --- 3-node scenario ---
G=conformance
start_member m1 1 && start_member m2 2 && start_member m3 3 || exit 1
p1=${PID[m1]} p2=${PID[m2]} p3=${PID[m3]}
cmd m1 local
expect m1.local_get m1 '^LOCAL rc=1 nodeid=1$'
cmd m3 local
expect m3.local_get m3 '^LOCAL rc=1 nodeid=3$'

# The initial totem confchg (CPG_MODEL_V1_DELIVER_INITIAL_TOTEM_CONF) comes with the confchg of
# the handle's own join, not at initialize.
totem3='^TOTEM ring=[0-9]+[.][0-9]+ members=1,2,3$'
cmd m1 "join $G"
expect join.m1_rc m1 '^JOIN rc=1$'
expect_set m1 10 join.m1_confchg "^CONFCHG group=$G members=1:$p1 left= joined=1:$p1:1\$" \
    m1.initial_totem_confchg "$totem3"
cmd m2 "join $G"
expect join.m2_seen_by_m1 m1 "^CONFCHG group=$G members=1:$p1,2:$p2 left= joined=2:$p2:1\$"
expect_set m2 10 join.m2_own_confchg "^CONFCHG group=$G members=1:$p1,2:$p2 left= joined=2:$p2:1\$" \
    m2.initial_totem_confchg "$totem3"
if [ -n "${CPG_STALL_SECONDS:-}" ]; then
    stalled=$(cluster_pid 2)
    kill -STOP "$stalled"
    cmd m3 "join $G"
    sleep "$CPG_STALL_SECONDS"
    kill -CONT "$stalled"
else
    cmd m3 "join $G"
fi
for m in m1 m2; do
    expect "join.m3_seen_by_$m" $m "^CONFCHG group=$G members=1:$p1,2:$p2,3:$p3 left= joined=3:$p3:1\$"
done
expect_set m3 10 join.m3_own_confchg "^CONFCHG group=$G members=1:$p1,2:$p2,3:$p3 left= joined=3:$p3:1\$" \
    m3.initial_totem_confchg "$totem3"
cmd m2 "join $G"
expect join.second_join_exist m2 '^JOIN rc=14$'

cmd m3 members
expect membership_get.three_members m3 "^MEMBERS rc=1 n=3 1:$p1 2:$p2 3:$p3\$"
cmd m2 iterate
# Iteration order is not sorted on Corosync; check that each member is listed.
if wait_line m2 '^ITER rc=1 n=3 ' 10 && [[ "$LINE " == *" $G:1:$p1 "* && "$LINE " == *" $G:2:$p2 "* &&
    "$LINE " == *" $G:3:$p3 "* ]]; then pass iteration.lists_all_members; else
    fail iteration.lists_all_members "m2: ${LINE:-no ITER line}"
fi

# All three send at once: 60 messages each, 1 B .. 1 MiB (1,048,576 > the atomic 1,047,552,
# so the library fragments it); every member must deliver the same 180 in the same order.
# A check of completeness and order, not of speed: tuttid's debug build on a loaded host
# takes ~60 s to order the burst (45,015 ordered fragments), and each member's wait starts
# when it has sent, m1's first (docs/cpg.md, "The evs burst flake"); at 60 s m1 missed it in 4 of
# 8 such runs with nothing lost. A stall still fails: 180 s (sending waits on the order too).
for m in m1 m2 m3; do cmd $m "send 60 1 3 64 1000 65536 1047552 1048576 4"; done
for m in m1 m2 m3; do
    expect "order.$m.sent" $m '^SENT n=60 rc=1$' 180
    cmd $m "wait_delivered 180 180000"
done
for m in m1 m2 m3; do expect "order.$m.delivered_all" $m '^HASH .* delivered=180 bad=0$' 190; done
expect_same order.identical_at_all_members m1 m2 m3

# Leave.
cmd m3 leave
expect leave.rc m3 '^LEAVE rc=1$'
for m in m1 m2 m3; do
    expect "leave.seen_by_$m" $m "^CONFCHG group=$G members=1:$p1,2:$p2 left=3:$p3:2 joined=\$"
done

# kill -9 of a member process: PROCDOWN (5).
start_member m4 3 || exit 1
p4=${PID[m4]}
cmd m4 "join $G"
for m in m1 m2; do expect "procdown.m4_joined_$m" $m "joined=3:$p4:1\$"; done
kill -9 "$p4"; unset "PID[m4]"
for m in m1 m2; do
    expect "procdown.seen_by_$m" $m "^CONFCHG group=$G members=1:$p1,2:$p2 left=3:$p4:5 joined=\$" 15
done

# Partition node 3 off (its link to the hub down): both sides go on with smaller views.
start_member m5 3 || exit 1
p5=${PID[m5]}
cmd m5 "join $G"
for m in m1 m2 m5; do expect "partition.m5_joined_$m" $m "joined=3:$p5:1\$"; done
if declare -F cluster_partition >/dev/null; then
    cluster_partition 3
    for m in m1 m2; do
        expect_set $m 30 "partition.majority_totem_$m" '^TOTEM ring=[0-9.]+ members=1,2$' \
            "partition.majority_nodedown_$m" "^CONFCHG group=$G members=1:$p1,2:$p2 left=3:$p5:3 joined=\$"
    done
    expect_set m5 30 partition.minority_totem '^TOTEM ring=[0-9.]+ members=3$' \
        partition.minority_nodedown "^CONFCHG group=$G members=3:$p5 left=1:$p1:3,2:$p2:3 joined=\$"
    cmd m5 "send 10 64"
    cmd m5 "wait_delivered 10 10000"
    expect partition.minority_delivers m5 '^HASH .* delivered=10 bad=0$' 15
    cmd m1 "send 10 64"
    for m in m1 m2; do cmd $m "wait_delivered 190 10000"; done
    for m in m1 m2; do expect "partition.majority_delivers_$m" $m '^HASH .* delivered=190 bad=0$' 15; done
    expect_same partition.majority_order_identical m1 m2
    cluster_heal 3
    for m in m1 m2; do
        expect_set $m 30 "heal.totem_$m" '^TOTEM ring=[0-9.]+ members=1,2,3$' \
            "heal.nodeup_seen_by_$m" "^CONFCHG group=$G members=1:$p1,2:$p2,3:$p5 left= joined=3:$p5:4\$"
    done
    expect_set m5 30 heal.totem_m5 '^TOTEM ring=[0-9.]+ members=1,2,3$' \
        heal.nodeup_seen_by_m5 "^CONFCHG group=$G members=1:$p1,2:$p2,3:$p5 left= joined=1:$p1:4,2:$p2:4\$"
    for m in m1 m2 m5; do cmd $m "send 5 64"; done
    for m in m1 m2; do cmd $m "wait_delivered 205 10000"; done
    cmd m5 "wait_delivered 25 10000"
    for m in m1 m2; do expect "heal.delivers_$m" $m '^HASH .* delivered=205 bad=0$' 15; done
    expect heal.delivers_m5 m5 '^HASH .* delivered=25 bad=0$' 15

else
    # The same checks, reported failed with the reason; the same traffic without the
    # partition, so that the counts of the checks after it still hold.
    why="not run: no partition on this cluster (tutti-cluster.sh: needs root, and cpg_partition = evs: under majority a cut-off minority stops)"
    for c in majority_totem_m1 majority_nodedown_m1 majority_totem_m2 majority_nodedown_m2 minority_totem \
        minority_nodedown minority_delivers majority_delivers_m1 majority_delivers_m2 majority_order_identical; do
        fail "partition.$c" "$why"
    done
    for c in totem_m1 nodeup_seen_by_m1 totem_m2 nodeup_seen_by_m2 totem_m5 nodeup_seen_by_m5 delivers_m1 \
        delivers_m2 delivers_m5; do
        fail "heal.$c" "$why"
    done
    cmd m1 "send 10 64"
    for m in m1 m2 m5; do cmd $m "send 5 64"; done
    for m in m1 m2; do cmd $m "wait_delivered 205 20000"; done
    for m in m1 m2; do wait_line $m '^HASH .* delivered=205 bad=0$' 25 || echo "note: $m did not reach 205 deliveries" >&2; done
fi

# kill -9 of node 3's daemon: NODEDOWN (3) for its member, a two-node totem view.
cluster_kill_node 3
unset "PID[m5]"
for m in m1 m2; do
    expect_set $m 30 "nodedown.totem_$m" '^TOTEM ring=[0-9.]+ members=1,2$' \
        "nodedown.seen_by_$m" "^CONFCHG group=$G members=1:$p1,2:$p2 left=3:$p5:3 joined=\$"
done
cmd m1 "send 20 100"
cmd m2 "send 20 100"
for m in m1 m2; do cmd $m "wait_delivered 245 10000"; done
for m in m1 m2; do expect "nodedown.delivers_$m" $m '^HASH .* delivered=245 bad=0$' 15; done
expect_same nodedown.order_identical m1 m2

# Recorded, not asserted: on Corosync 3.1.7 a handle that left keeps getting the group's confchgs.
echo "INFO m3.confchg_after_own_leave $(awk '/^LEAVE/ { l = 1; next } l && /^CONFCHG/ { n++ } END { print n + 0 }' "$D/m3.log")"
for m in m1 m2; do cmd $m quit; done
echo "SUMMARY passed=$passes failed=$failures"
[ "$failures" -eq 0 ]
