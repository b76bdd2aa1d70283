#!/usr/bin/env bash
# The CPG conformance checks on tutti: the unmodified programs of this directory, linked
# against Debian's libcpg, run with LD_LIBRARY_PATH at tutti's libcpg.so.4 across 3 tuttid
# daemons (run.sh --tutti): as root each in a network namespace of its own, otherwise on
# loopback. TUTTI_CPG_PARTITION=majority|evs sets the daemons' cluster.cpg_partition (unset:
# the default, evs); the partition checks run as root under evs, and are reported failed
# otherwise. "PASS"/"FAIL"
# lines and a SUMMARY.
#
#   capi/cpg/tests/run-tutti.sh [--release] [--keep]
exec "$(dirname "$0")/run.sh" --tutti "$@"
