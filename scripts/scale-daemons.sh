#!/usr/bin/env bash
# Starts N tuttid processes on 127.0.1.x (one shard each, backoff idle, seeded with daemons 1
# and 2), waits for one view of all, checks that a message published on daemon 1 reaches a
# subscriber on every other daemon, kills -9 10% of them, checks that the view drops them and
# that delivery goes on, reports RSS and CPU per idle daemon, and cleans up.
#
#   scripts/scale-daemons.sh [N] [TUTTID] [TUTTI]     (default N=256, target/release binaries)
#
# Linux only; uses 127.0.1.1.. (127.0.0.0/8 is loopback). Needs `ulimit -n` >= 4 * N.
set -euo pipefail
N=${1:-256}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TUTTID=${2:-$ROOT/target/release/tuttid}
TUTTI=${3:-$ROOT/target/release/tutti}
PORT=${SCALE_PORT:-47100}
FORM_TIMEOUT=${SCALE_FORM_TIMEOUT:-120}
GROUP=scale
# SCALE_SEEDS=all: every daemon is a seed. Default: daemons 1 and 2 (the others' addresses
# travel in the views, as their coordinator heard them).
SEEDS_MODE=${SCALE_SEEDS:-two}
DIR=$(mktemp -d /tmp/tutti-scale.XXXXXX)
declare -a PIDS SUBS

ip_of() { local i=$1; echo "127.0.$((1 + (i - 1) / 250)).$((1 + (i - 1) % 250))"; }

cleanup() {
    for p in "${SUBS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    sleep 1
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$DIR"
}
trap cleanup EXIT

if [ "$SEEDS_MODE" = all ]; then
    SEEDS=$(for i in $(seq 1 "$N"); do printf '"%d@%s", ' "$i" "$(ip_of "$i")"; done)
    SEEDS=${SEEDS%, }
else
    SEEDS="\"1@$(ip_of 1)\", \"2@$(ip_of 2)\""
fi
for i in $(seq 1 "$N"); do
    d=$DIR/d$i
    mkdir -p "$d"
    cat > "$d/tuttid.toml" <<CFG
node_id = $i
[cluster]
enabled = true
seeds = [$SEEDS]
[net]
listen = "$(ip_of "$i")"
base_port = $PORT
CFG
    TUTTI_SOCKET=$d/sock "$TUTTID" --idle backoff --cores 1 --no-pin --config "$d/tuttid.toml" \
        > "$d/log" 2>&1 &
    PIDS[i]=$!
done
start=$(date +%s.%N)

# The size of daemon $1's view (0 if it does not answer).
view_size() {
    TUTTI_SOCKET=$DIR/d$1/sock "$TUTTI" status 2>/dev/null \
        | sed -n 's/.*cluster view [0-9]* by daemon [0-9]*: \([0-9]*\) members.*/\1/p' | head -1
}
# Waits until every daemon in "$@" has a view of exactly $WANT members.
wait_views() {
    local deadline=$(( $(date +%s) + FORM_TIMEOUT ))
    while :; do
        local ok=1
        for i in "$@"; do
            [ "$(view_size "$i")" = "$WANT" ] || { ok=0; break; }
        done
        [ $ok = 1 ] && return 0
        [ "$(date +%s)" -ge $deadline ] && return 1
        sleep 1
    done
}

ALL=$(seq 1 "$N")
WANT=$N
if ! wait_views $ALL; then
    echo "FAIL: no view of all $N daemons within ${FORM_TIMEOUT}s; view sizes:" \
        "$(for i in $ALL; do view_size "$i"; done | sort -n | uniq -c | tr '\n' ' ')"
    for i in $ALL; do
        if [ "$(view_size "$i")" != "$WANT" ]; then
            echo "daemon $i:"; TUTTI_SOCKET=$DIR/d$i/sock "$TUTTI" status | grep -E "cluster view|datagrams_in" | cut -c1-400
            grep -E "view" "$DIR/d$i/log" | tail -3 | cut -c1-300
            break
        fi
    done
    echo "daemon 1:"; TUTTI_SOCKET=$DIR/d1/sock "$TUTTI" status | grep -E "cluster view" | cut -c1-300
    exit 1
fi
formed=$(echo "$(date +%s.%N) - $start" | bc)
echo "view of all $N daemons after ${formed}s"

# A subscriber on every daemon but 1; one message from daemon 1 must reach each.
deliver() {
    local tag=$1; shift
    local targets=("$@")
    for i in "${targets[@]}"; do
        TUTTI_SOCKET=$DIR/d$i/sock "$TUTTI" sub --count 1 --idle-exit 60 "$GROUP" > "$DIR/d$i/got-$tag" 2>&1 &
        SUBS[i]=$!
    done
    sleep 5 # the subscribers' group joins reach the views
    local deadline=$(( $(date +%s) + 60 ))
    while :; do
        echo "hello-$tag" | TUTTI_SOCKET=$DIR/d1/sock "$TUTTI" pub "$GROUP" >/dev/null 2>&1 || true
        local got=0
        for i in "${targets[@]}"; do grep -q "hello-$tag" "$DIR/d$i/got-$tag" 2>/dev/null && got=$((got + 1)); done
        [ $got = ${#targets[@]} ] && { echo "message $tag reached all ${#targets[@]} subscribers"; return 0; }
        [ "$(date +%s)" -ge $deadline ] && { echo "FAIL: message $tag reached $got of ${#targets[@]} subscribers"; return 1; }
        sleep 2
    done
}
deliver one $(seq 2 "$N")

# Idle cost: RSS and CPU of each daemon over 10 s.
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Each daemon's window runs from its first read to its second: reading 256 daemons' /proc
# files on a saturated machine takes far longer than the 10 s pause, so the windows are
# timed, not assumed.
declare -a C0 T0
for i in $ALL; do C0[i]=$(cpu "${PIDS[i]}"); T0[i]=$(date +%s%N); done
sleep 10
tick=$(getconf CLK_TCK)
rss=0; cpus=""
for i in $ALL; do
    r=$(awk '/VmRSS/ {print $2}' "/proc/${PIDS[i]}/status"); rss=$((rss + r))
    used=$(( $(cpu "${PIDS[i]}") - C0[i] )); now=$(date +%s%N)
    # percent of a core, in hundredths
    cpus="$cpus $(( used * 100 * 100 * 1000000000 / tick / (now - T0[i]) ))"
done
echo "idle: mean RSS $((rss / N)) KiB per daemon; CPU per daemon (share of a core over each daemon's timed window of >= 10 s): $(echo $cpus | tr ' ' '\n' | sort -n | awk '{a[NR]=$1; s+=$1} END {printf "mean %.2f%%, max %.2f%%", s/NR/100, a[NR]/100}')"

# kill -9 of 10% (never daemons 1 and 2: the publisher and a seed).
K=$(( N / 10 ))
KILLED=()
for k in $(seq 1 "$K"); do
    i=$(( 3 + (k - 1) * (N - 2) / K ))
    kill -9 "${PIDS[i]}"; PIDS[i]=""; KILLED+=("$i")
done
killed_at=$(date +%s.%N)
echo "killed -9: ${KILLED[*]}"
LIVE=()
for i in $ALL; do [ -n "${PIDS[i]}" ] && LIVE+=("$i"); done
WANT=${#LIVE[@]}
if ! wait_views "${LIVE[@]}"; then
    echo "FAIL: the views did not drop the $K killed daemons within ${FORM_TIMEOUT}s"; exit 1
fi
echo "views of the ${#LIVE[@]} live daemons after $(echo "$(date +%s.%N) - $killed_at" | bc)s"
for i in $ALL; do [ -n "${SUBS[i]:-}" ] && kill "${SUBS[i]}" 2>/dev/null || true; SUBS[i]=""; done
deliver two $(for i in "${LIVE[@]}"; do [ "$i" != 1 ] && echo "$i"; done)
echo "PASS"
