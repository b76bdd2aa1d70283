#!/usr/bin/env python3
"""Checks the JSON lines of `run.sh --target both` (stdin): the same cpgload binary ran on
Corosync's libcpg and on tutti's, and on each every member delivered every message sent, in
one order. Figures are printed, not judged (CI machines are shared and noisy).

    bench/anchors/corosync/run.sh --target both --duration 2 | bench/anchors/corosync/check.py
"""
import json
import sys


def main() -> int:
    rows = []
    for line in sys.stdin:
        line = line.strip()
        if line.startswith("{"):
            rows.append(json.loads(line))
    runs = {r["impl"]: r for r in rows if "impl" in r}
    problems = []
    for impl in ("corosync", "tutti"):
        r = runs.get(impl)
        if r is None:
            problems.append(f"{impl}: no result line")
            continue
        members = r.get("per_member_msgs_per_s", [])
        if len(members) != r.get("nodes"):
            problems.append(f"{impl}: {len(members)} members reported, {r.get('nodes')} nodes")
        if not r.get("order_identical"):
            problems.append(f"{impl}: the members delivered in different orders")
        if r.get("sent", 0) <= 0:
            problems.append(f"{impl}: nothing sent")
        elif r.get("delivered_per_member") != r.get("sent"):
            problems.append(f"{impl}: sent {r.get('sent')}, delivered {r.get('delivered_per_member')} per member")
        print(f"{impl}: {r.get('msgs_per_s')} msgs/s per member, p50 {r.get('p50_ns')} ns, libcpg {r.get('libcpg')}")
    if "corosync" in runs and "tutti" in runs:
        # The loader bound a different libcpg.so.4 for the same binary: Debian's, then tutti's.
        if runs["corosync"].get("libcpg") == runs["tutti"].get("libcpg"):
            problems.append(f"both runs bound the same library {runs['tutti'].get('libcpg')}")
    for p in problems:
        print(f"check.py: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
