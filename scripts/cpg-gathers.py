#!/usr/bin/env python3
"""How long `evs` gathers took in a kept CPG conformance run (capi/cpg/tests/run-tutti.sh --keep):
for every `evs configuration` a daemon logged (regular ones, not transitional), the time since
the cluster view before it in the same log. The founder installs when every daemon of the side
joined or when its gather timeout passes (docs/cpg.md, "A stalled daemon taken for down").

    scripts/cpg-gathers.py /tmp/tutti-cpgtest.XXXXXX [more run directories] [--top N]
"""
import datetime
import re
import sys


def stamp(line):
    return datetime.datetime.fromisoformat(line[:26].rstrip("Z"))


def main(argv):
    top = 5
    if "--top" in argv:
        i = argv.index("--top")
        top = int(argv[i + 1])
        del argv[i : i + 2]
    if not argv:
        sys.exit(__doc__)
    gathers = []
    for run in argv:
        for node in (1, 2, 3):
            try:
                lines = open(f"{run}/n{node}/tuttid.log", encoding="utf-8", errors="replace").read().splitlines()
            except OSError:
                continue
            view = None
            for line in lines:
                if re.search(r"cluster: view \d+ by", line):
                    view = stamp(line)
                elif "evs configuration" in line and "transitional=false" in line and view:
                    what = line[line.index("group=") :]
                    gathers.append(((stamp(line) - view).total_seconds() * 1000, run, node, what))
    gathers.sort(reverse=True)
    print(f"{len(gathers)} configurations")
    for ms, run, node, what in gathers[:top]:
        print(f"{ms:6.0f} ms  {run} daemon {node}: {what[:140]}")


if __name__ == "__main__":
    main(sys.argv[1:])
