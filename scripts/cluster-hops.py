#!/usr/bin/env python3
"""Hop-by-hop times of tutti's one-in-flight path (the `cluster-latency` phase of
`tutti-bench cluster --nodes 2`) from `perf sched timehist -w` output:

    perf sched record -o s.data -- target/release/tutti-bench cluster --nodes 2 --size 64 \
        --duration 1 --warmup 0.5 --floor-duration 0.5 --json
    perf sched timehist -i s.data -w > s.txt
    scripts/cluster-hops.py s.txt [SECONDS after the first publisher -> shard wake; default: the whole run]

A cycle: the bench's publisher wakes shard A (eventfd), A wakes shard B (the datagram), B
wakes the subscriber (futex); cycles with a hop over 1 ms are skipped.
hop1 = publisher wakes shard A -> shard A wakes shard B (A's run queue wait + A's work up to the send)
hop2 = shard A wakes shard B -> shard B wakes the subscriber (B's wait + B's work up to the futex wake)
work1/work2 = the same minus that shard's scheduling delay (timehist 'sch delay' of its run):
  the shard's own time from the moment it got a CPU."""
import re, sys, statistics as st
rx = re.compile(r'^\s*(\d+\.\d+)\s+\[(\d+)\]\s+(\S.*?)\[(\d+)(?:/(\d+))?\]\s+(.*)$')
ev = []  # (t, waker_comm, waker_tid, waker_pid, kind, data)
for line in open(sys.argv[1]):
    m = rx.match(line)
    if not m: continue
    t = float(m.group(1)); comm = m.group(3).strip(); tid = int(m.group(4)); pid = int(m.group(5) or m.group(4))
    rest = m.group(6)
    if 'awakened:' in rest:
        w = re.search(r'awakened:\s+(.*?)\[(\d+)(?:/(\d+))?\]', rest)
        if not w: continue
        ev.append((t, comm, tid, pid, 'wake', (w.group(1), int(w.group(2)), int(w.group(3) or w.group(2)))))
    else:
        f = rest.split()
        if len(f) >= 3:
            try: ev.append((t, comm, tid, pid, 'run', (float(f[0]), float(f[1]), float(f[2]))))
            except ValueError: pass
def next_run(i, tid):
    for j in range(i, min(i + 400, len(ev))):
        if ev[j][4] == 'run' and ev[j][2] == tid: return ev[j][5][1] * 1e3  # sch delay us
    return None
h1, h2, w1, w2 = [], [], [], []
first = None
for i, e in enumerate(ev):
    t, comm, tid, pid, kind, d = e
    if kind != 'wake' or not comm.startswith('tutti-bench') or not d[0].startswith('tutti-shard'): continue
    a = d[1]
    if first is None: first = t
    if t - first > (float(sys.argv[2]) if len(sys.argv) > 2 else float('inf')): break
    # A wakes B
    j = next((j for j in range(i + 1, min(i + 400, len(ev))) if ev[j][4] == 'wake' and ev[j][2] == a and ev[j][5][0].startswith('tutti-shard') and ev[j][5][2] != ev[j][3]), None)
    if j is None or ev[j][0] - t > 1e-3: continue
    b = ev[j][5][1]
    k = next((k for k in range(j + 1, min(j + 400, len(ev))) if ev[k][4] == 'wake' and ev[k][2] == b and ev[k][5][0].startswith('tutti-bench')), None)
    if k is None or ev[k][0] - ev[j][0] > 1e-3: continue
    t0, t1, t2 = t, ev[j][0], ev[k][0]
    h1.append((t1 - t0) * 1e6); h2.append((t2 - t1) * 1e6)
    sa = next_run(j, a); sb = next_run(k, b)
    if sa is not None: w1.append((t1 - t0) * 1e6 - sa)
    if sb is not None: w2.append((t2 - t1) * 1e6 - sb)
q = lambda v: "p50 %.1f us, p90 %.1f us (n=%d)" % (st.median(v), sorted(v)[int(len(v) * .9)], len(v)) if v else "none"
print("hop1 publisher->A->datagram:", q(h1)); print("  work1 (minus A's sched delay):", q(w1))
print("hop2 datagram->B->futex wake:", q(h2)); print("  work2 (minus B's sched delay):", q(w2))
