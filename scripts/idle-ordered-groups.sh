#!/usr/bin/env bash
# Idle CPU of tuttid with dormant ordered groups: 3 daemons on 127.0.SUBNET.1..3 (one shard
# each, idle strategy backoff), G `evs` ordered groups (as CPG makes them) joined by a
# `tutti sub` on every daemon, one message each, then every daemon's CPU (utime + stime of
# /proc/PID/stat) over SECS seconds with nothing sent. Everything it starts is stopped at exit.
#
#   scripts/idle-ordered-groups.sh BINDIR [SUBNET] [BASE_PORT]    (env: G=4 SECS=30)
#
# BINDIR holds tuttid and tutti (e.g. target/release).
set -u
BIN=${1:?usage: idle-ordered-groups.sh BINDIR [SUBNET] [BASE_PORT]}
SUBNET=${2:-217} PORT=${3:-18400} G=${G:-4} SECS=${SECS:-30}
D=$(mktemp -d /tmp/tutti-idle.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$D"
}
trap cleanup EXIT INT TERM
seeds=()
for i in 1 2 3; do seeds+=(--seed "$i@127.0.$SUBNET.$i"); done
declare -A daemon
for i in 1 2 3; do
    "$BIN/tuttid" --socket "$D/n$i.sock" --cores 0 --no-pin --idle backoff --node-id "$i" \
        --listen "127.0.$SUBNET.$i" --base-port "$PORT" "${seeds[@]}" >"$D/n$i.log" 2>&1 &
    pids+=($!)
    daemon[$i]=$!
done
sleep 4
for g in $(seq 1 "$G"); do
    for i in 1 2 3; do
        "$BIN/tutti" --socket "$D/n$i.sock" sub --evs "idle$g" >"$D/sub$g.$i.out" 2>&1 &
        pids+=($!)
    done
done
sleep 4
for g in $(seq 1 "$G"); do echo "hello $g" | "$BIN/tutti" --socket "$D/n1.sock" pub --evs "idle$g"; done
sleep 5
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -A before
for i in 1 2 3; do before[$i]=$(cpu "${daemon[$i]}"); done
sleep "$SECS"
hz=$(getconf CLK_TCK)
for i in 1 2 3; do
    t=$(($(cpu "${daemon[$i]}") - before[$i]))
    awk -v i="$i" -v t="$t" -v hz="$hz" -v s="$SECS" \
        'BEGIN { printf "node %d: %.2f%% of a core (%d ticks in %d s)\n", i, 100 * t / hz / s, t, s }'
done
echo "$G evs groups x 3 members, $(cat "$D"/sub*.out 2>/dev/null | grep -c hello)/$((3 * G)) messages delivered, load average $(cut -d' ' -f1-3 /proc/loadavg)"
