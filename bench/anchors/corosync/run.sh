#!/usr/bin/env bash
# Corosync anchor: starts a 3-node Corosync cluster on this host (one network + mount namespace
# per node, see cluster.sh), runs cpgload with one member per node, prints one JSON line.
#
#   sudo bench/anchors/corosync/run.sh [--senders 1|2|3] [--size B] [--duration S] [--rate R]
#                                      [--lib DIR] [--impl NAME] [--reps N]
#
# --lib DIR runs the same cpgload binary against the libcpg.so.4 in DIR (tutti's, once it
# exists) while the cluster is still Corosync's; pointing it at tutti daemons is the job of the
# tutti side of this anchor (not written yet). Needs root (namespaces, apt-get if corosync is
# missing). Everything it starts is stopped and every namespace removed on exit or interrupt.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
senders=1 size=64 duration=5 rate=0 lib="" impl=corosync reps=1
while [ $# -gt 0 ]; do
    case $1 in
    --senders) senders=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --lib) lib=$2; shift 2 ;;
    --impl) impl=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "run.sh: needs root (network namespaces)" >&2; exit 2; }
# shellcheck source=cluster.sh
. "$here/cluster.sh"
[ "$senders" -ge 1 ] && [ "$senders" -le "$CLUSTER_NODES" ] ||
    { echo "run.sh: --senders must be 1..$CLUSTER_NODES" >&2; exit 2; }

CLUSTER_DIR=$(mktemp -d /tmp/tutti-corosync.XXXXXX)
pids=()
cleanup() {
    local p
    trap '' INT TERM # a second interrupt must not cut the cleanup short
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    cluster_down
    [ -n "${KEEP:-}" ] || rm -rf "$CLUSTER_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cluster_install
gcc -O2 -Wall -Wextra -o "$CLUSTER_DIR/cpgload" "$here/cpgload.c" -lcpg
cluster_up
echo "cluster of $CLUSTER_NODES Corosync nodes formed; $senders sender(s), $size B, ${duration}s" >&2

libopt=()
[ -n "$lib" ] && libopt=(--lib "$lib")
status=0
for rep in $(seq 1 "$reps"); do
    pids=()
    prefixes=()
    for i in $(seq 1 "$CLUSTER_NODES"); do
        send=()
        [ "$i" -le "$senders" ] && send=(--send)
        out="$CLUSTER_DIR/r$rep-m$i"
        prefixes+=("$out")
        cluster_exec "$i" timeout $((${duration%.*} + 90)) "$CLUSTER_DIR/cpgload" member "${libopt[@]}" \
            --group "cpgload$rep" --members "$CLUSTER_NODES" --senders "$senders" "${send[@]}" \
            --size "$size" --duration "$duration" --rate "$rate" --out "$out" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || { echo "run.sh: a member failed (status $?)" >&2; exit 1; }; done
    pids=()
    "$CLUSTER_DIR/cpgload" merge "${libopt[@]}" --impl "$impl" "${prefixes[@]}" || status=1
done
exit $status
