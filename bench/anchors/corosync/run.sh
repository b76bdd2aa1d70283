#!/usr/bin/env bash
# Corosync anchor: starts a 3-node Corosync cluster on this host (one network + mount namespace
# per node, see cluster.sh), runs cpgload with one member per node, prints one JSON line.
#
#   sudo bench/anchors/corosync/run.sh [--senders 1|2|3] [--size B] [--duration S] [--rate R]
#                                      [--lib DIR] [--impl NAME] [--reps N] [--target T]
#                                      [--daemon-cpus default|none|LIST]
#
# --target corosync (default) runs on Corosync; --target tutti runs the same cpgload binary
# (linked against Debian's libcpg) with LD_LIBRARY_PATH at tutti's libcpg.so.4 on 3 tuttid
# daemons on loopback (capi/cpg/tests/tutti-cluster.sh, release build); --target both runs
# the two in turn with the same options and adds a line {"ratio_tutti_over_corosync": ...}
# of the medians over the reps. --lib DIR runs cpgload against the libcpg.so.4 in DIR while
# the cluster is still Corosync's. Needs root for Corosync (namespaces, apt-get if corosync is
# missing). Everything it starts is stopped and every namespace removed on exit or interrupt.
# --daemon-cpus places the daemons: `default` (the default) as each runs when installed
# (tuttid pins its one shard to the last CPU, its built-in default; Corosync is not pinned,
# as Debian's corosync.service runs it), `none` (no daemon pinned: tuttid's `no_pin`), or a
# CPU list such as `1` (every daemon of either side pinned to it: tuttid's `cores`, Corosync
# under `taskset -c`). The JSON line names it ("daemon_cpus").
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
senders=1 size=64 duration=5 rate=0 lib="" impl="" reps=1 target=corosync daemon_cpus=default
args=("$@")
while [ $# -gt 0 ]; do
    case $1 in
    --senders) senders=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --lib) lib=$2; shift 2 ;;
    --impl) impl=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --target) target=$2; shift 2 ;;
    --daemon-cpus) daemon_cpus=$2; shift 2 ;;
    -h | --help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
case $daemon_cpus in
default | none) ;;
*) [[ $daemon_cpus =~ ^[0-9]+(,[0-9]+)*$ ]] ||
    { echo "run.sh: --daemon-cpus must be default, none or a list of CPU numbers like 1 or 0,1" >&2; exit 2; } ;;
esac
if [ "$target" = both ]; then
    # Each side in its own run (the two cluster scripts define the same functions).
    out=$(mktemp /tmp/tutti-anchor.XXXXXX)
    trap 'rm -f "$out"' EXIT
    "$0" "${args[@]}" --target corosync | tee -a "$out" || exit 1
    "$0" "${args[@]}" --target tutti | tee -a "$out" || exit 1
    # Medians of each side over the reps, then tutti / corosync per key.
    python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
keys = ["msgs_per_s", "p50_ns", "p99_ns", "other_p50_ns", "other_p99_ns"]
med = {impl: {k: statistics.median(r[k] for r in rows if r["impl"] == impl) for k in keys}
       for impl in ("corosync", "tutti")}
ratio = {k: round(med["tutti"][k] / med["corosync"][k], 3) if med["corosync"][k] else None for k in keys}
print(json.dumps({"ratio_tutti_over_corosync": ratio, "medians": med, "daemon_cpus": rows[0].get("daemon_cpus"),
                  "order_identical": all(r["order_identical"] for r in rows)}))
PY
    exit
fi
case $target in
corosync)
    impl=${impl:-corosync}
    [ "$(id -u)" -eq 0 ] || { echo "run.sh: needs root (network namespaces)" >&2; exit 2; }
    # shellcheck source=cluster.sh
    . "$here/cluster.sh"
    case $daemon_cpus in default | none) COROSYNC_CPUS="" ;; *) COROSYNC_CPUS=$daemon_cpus ;; esac
    ;;
tutti)
    impl=${impl:-tutti}
    [ -z "$lib" ] || { echo "run.sh: --lib and --target tutti exclude each other" >&2; exit 2; }
    TUTTI_PROFILE=${TUTTI_PROFILE:-release}
    TUTTI_DAEMON_CPUS=$daemon_cpus
    # shellcheck source=../../../capi/cpg/tests/tutti-cluster.sh
    . "$here/../../../capi/cpg/tests/tutti-cluster.sh"
    ;;
*) echo "run.sh: --target must be corosync, tutti or both" >&2; exit 2 ;;
esac
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
echo "cluster of $CLUSTER_NODES $target nodes formed; $senders sender(s), $size B, ${duration}s" >&2

libopt=()
[ -n "$lib" ] && libopt=(--lib "$lib")
# cpgload reports the library the loader bound; on tutti, that is TUTTI_LIB (cluster_exec).
[ "$target" = tutti ] && libopt=(--lib "$TUTTI_LIB")
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
    line=$("$CLUSTER_DIR/cpgload" merge "${libopt[@]}" --impl "$impl" "${prefixes[@]}") || status=1
    [ -z "$line" ] || echo "{\"daemon_cpus\":\"$daemon_cpus\",${line#\{}"
done
exit $status
