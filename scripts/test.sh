#!/usr/bin/env bash
# Every test of tutti, as CI runs them. Safe to run on a developer machine: network tests
# use loopback only and every load is bounded. The last step boots a Debian container
# with systemd-nspawn (root; ~25 s once its root file system is cached, see
# docs/operations.md); TUTTI_SKIP_NSPAWN=1 leaves it out.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

if ! command -v cargo-nextest >/dev/null 2>&1; then
    step "installing cargo-nextest"
    cargo install --locked cargo-nextest
fi

step "format"
cargo fmt --all --check

step "lints"
cargo clippy --workspace --all-targets -- -D warnings

step "HdrHistogram's Python reader and a font (bench/tests/cli.rs reads --hlog files with hdrh, plots with text)"
if ! python3 -c "import hdrh" >/dev/null 2>&1; then
    python3 -m pip install --quiet hdrhistogram
fi
if [[ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf && ! -f /usr/share/fonts/truetype/DejaVuSans.ttf ]]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-dejavu-core >/dev/null
fi

step "tests"
cargo nextest run --workspace --no-fail-fast

step "simulator seed sweeps in release (the test step runs a few seeds in debug; two regressions showed only at release sizes)"
# evs_seeds: 200 seeds of the evs world (partitions and heals); ordered_seeds: 200 seeds of
# the ordered world (crashes, joins, memory-node failover). 2,000 of each pass:
# `cargo run --release -p tutti-sim --example ordered_sweep -- [evs] 0 2000`.
TUTTI_SIM_EVS_SEEDS=200 cargo test --release -p tutti-sim --test evs_seeds --test ordered_seeds

step "doctests (nextest skips them; README.md's examples are doctests of tutti-client)"
cargo test --workspace --doc

step "loom models of the shared-memory rings"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test -p tutti-wire --release --test loom_shm -- --test-threads 2

step "libcpg.so.4: the CPG conformance programs, unmodified, on 3 tuttid (capi/cpg/tests/run-tutti.sh), both partition policies"
# As root each tuttid runs in a network namespace of its own (tutti-cluster.sh), so the
# partition.* and heal.* checks cut a node off for real. Under the default cpg_partition =
# "evs" (CPG's semantics) every check must pass. Under "majority" a cut-off minority stops
# instead of going on as CPG's: those 19 checks may fail there, and only those.
cpg_conformance() { # policy, allowed failures (regex), minimum passed
    local log
    log=$(mktemp)
    TUTTI_CPG_PARTITION=$1 bash capi/cpg/tests/run-tutti.sh >"$log" 2>&1 || true
    local unexpected passed
    unexpected=$(grep '^FAIL' "$log" | grep -Ev "$2" || true)
    passed=$(sed -n 's/^SUMMARY passed=\([0-9]*\).*/\1/p' "$log")
    if [[ -n "$unexpected" ]] || [[ "${passed:-0}" -lt $3 ]]; then
        cat "$log"
        echo "libcpg conformance ($1): unexpected failures (above)" >&2
        exit 1
    fi
    echo "cpg_partition = $1: $(grep '^SUMMARY' "$log")"
    rm -f "$log"
}
cpg_conformance majority '^FAIL (partition|heal)\.' 191
# Under evs nothing is excused. The three join.m3_* checks failed once in a loaded debug run
# (daemon 2 NODEDOWN then NODEUP): the evs gather left a daemon out after 200 ms; it waits
# for the failure detector's suspect_timeout now (docs/cpg.md, "A stalled daemon taken for
# down"). The 1 B .. 1 MiB burst's 60 s deadline, which a loaded debug build missed at m1 in
# 4 of 8 runs with nothing lost, is 180 s.
cpg_conformance evs '^$' 210

step "systemd units"
if ! command -v systemd-analyze >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
fi
cargo build --release -p tutti-daemon --bin tuttid
bash systemd/verify.sh target/release/tuttid

step "Debian package"
bash scripts/package.sh

step "the Corosync anchor: one unmodified cpgload binary on Corosync 3 (Debian) and on 3 tuttid (bench/anchors/corosync)"
# After the package step, whose release builds it reuses. run.sh installs Corosync if it is
# missing. Checked: on each, every member delivered every message, in one order; the
# figures are printed only (docs/cpg.md has measured ones).
anchor=$(mktemp)
if ! bench/anchors/corosync/run.sh --target both --senders 1 --size 64 --duration 2 >"$anchor" 2>&1; then
    cat "$anchor"
    echo "the Corosync anchor failed (above)" >&2
    exit 1
fi
python3 bench/anchors/corosync/check.py <"$anchor" || { cat "$anchor"; exit 1; }
rm -f "$anchor"

step "the package under a real systemd (systemd-nspawn; see docs/operations.md)"
if [[ "${TUTTI_SKIP_NSPAWN:-0}" == "1" ]]; then
    echo "skipped: TUTTI_SKIP_NSPAWN=1"
else
    # The script bounds each step itself; this bounds the whole (a first debootstrap included).
    timeout 900 bash scripts/systemd-nspawn-test.sh --no-build
fi
