#!/usr/bin/env bash
# The CPG conformance checks on tutti: the unmodified programs of this directory, linked
# against Debian's libcpg, run with LD_LIBRARY_PATH at tutti's libcpg.so.4 across 3 tuttid
# daemons on loopback (run.sh --tutti; no root needed). "PASS"/"FAIL" lines and a SUMMARY.
#
#   capi/cpg/tests/run-tutti.sh [--release] [--keep]
exec "$(dirname "$0")/run.sh" --tutti "$@"
