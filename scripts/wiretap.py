#!/usr/bin/env python3
"""Counts tutti's datagrams on loopback by what they carry, for a bounded time.

Usage (root): scripts/wiretap.py SECONDS PORT_FIRST PORT_LAST [--json]

Captures the UDP datagrams sent between 127.0.0.0/8 ports PORT_FIRST..PORT_LAST (an
AF_PACKET socket on `lo`, outgoing copies only) for SECONDS, then prints per sending address:
datagrams, bytes (UDP payload), messages, and the ordered messages by kind (payload runs,
minitransaction messages by kind, exec by shape: append / read / progress write, replication
by record, fragments after the first). A segmentation-offload send (one large packet on
`lo`) is split into its datagrams by walking their headers. "per msg" divides by the
ordered payloads the senders disseminated in the window (each payload counted once, however
many members it went to), so it reads as "per delivered message" on a one-sender flood.

The capture is a sample: under a flood Python keeps up with only part of the packets
(`dropped` says how many the kernel dropped); every ratio is taken within the sample.
"""
import json
import socket
import struct
import sys
import time
from collections import Counter, defaultdict

ETH_P_ALL = 3
PACKET_OUTGOING = 4
MAGIC = b"TTP1"
ORDERED = 10
OKIND = {1: "to_memnode", 2: "to_member", 3: "payload", 4: "transfer", 5: "payload_run"}
MTKIND = {1: "exec", 2: "prepare", 3: "reply", 4: "decide", 5: "decide_ack", 6: "query",
          7: "query_reply", 8: "replicate", 9: "replicate_ack", 10: "forget", 11: "wake"}
RECORD = {1: "prepared", 2: "outcome", 3: "forget"}


def exec_shape(mt):
    """append / read / publish (progress write) / other, from an exec's item counts."""
    try:
        at = 8 + 16
        (nc,) = struct.unpack_from("<H", mt, at)
        at += 2
        for _ in range(nc):
            (_, _, ln) = struct.unpack_from("<III", mt, at)
            at += 12 + ln
        (nr,) = struct.unpack_from("<H", mt, at)
        at += 2 + 12 * nr
        (nw,) = struct.unpack_from("<H", mt, at)
    except struct.error:
        return "exec?"
    if nc and nw:
        return "exec_append"
    if nw:
        return "exec_publish"
    return "exec_read"


def walk(payload, src, stats):
    """Every tutti datagram in `payload` (several when a GSO send was captured whole)."""
    at = 0
    while at + 16 <= len(payload):
        if payload[at:at + 4] != MAGIC:
            stats[src]["not_tutti"] += 1
            return
        (count,) = struct.unpack_from("<H", payload, at + 6)
        p = at + 16
        kinds = []
        for _ in range(count):
            if p + 8 > len(payload):
                break
            kind, _, _, ln = struct.unpack_from("<BBHI", payload, p)
            body = payload[p + 8:p + 8 + ln]
            p += 8 + ln
            if kind != ORDERED:
                kinds.append("k%d" % kind)
                continue
            if len(body) < 24:
                kinds.append("ordered?")
                continue
            index, _cnt, okind = struct.unpack_from("<HHB", body, 16)
            frag = body[24:]
            name = OKIND.get(okind, "ordered?")
            if index > 0:
                kinds.append(name + "_frag")
                continue
            if okind == 5 and len(frag) >= 20:
                n, q = 0, 20
                while q + 4 <= len(frag):
                    (pl,) = struct.unpack_from("<I", frag, q)
                    q += 4 + pl
                    n += 1
                stats[src]["payloads_sent"] += n
                sender, _, seq = struct.unpack_from("<IQQ", frag, 0)
                stats["_seqs"][(sender, seq)] = max(stats["_seqs"].get((sender, seq), 0), n)
            if okind in (1, 2):
                mt = frag[16:] if okind == 1 else frag
                if len(mt) >= 4:
                    name = MTKIND.get(mt[3], "mt?")
                    if name == "exec":
                        name = exec_shape(mt)
                    elif name == "replicate" and len(mt) > 24:
                        name = "replicate_" + RECORD.get(mt[24], "?")
            kinds.append(name)
        size = p - at
        s = stats[src]
        s["datagrams"] += 1
        s["bytes"] += size
        s["messages"] += len(kinds)
        for k in kinds:
            s["msg:" + k] += 1
        s["dgram:" + "+".join(sorted(set(kinds)))] += 1
        at = p


def main():
    secs, lo, hi = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    as_json = "--json" in sys.argv
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
    sock.bind(("lo", 0))
    sock.settimeout(0.05)
    stats = defaultdict(Counter)
    stats["_seqs"] = {}
    end = time.monotonic() + secs
    while time.monotonic() < end:
        try:
            pkt, addr = sock.recvfrom(1 << 17)
        except socket.timeout:
            continue
        if addr[2] != PACKET_OUTGOING or len(pkt) < 14 + 20 + 8:
            continue
        ip = pkt[14:]
        if ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        ihl = (ip[0] & 15) * 4
        sport, dport = struct.unpack_from("!HH", ip, ihl)
        if not (lo <= dport <= hi and lo <= sport <= hi):
            continue
        src = socket.inet_ntoa(ip[12:16])
        stats[src]["packets"] += 1
        walk(ip[ihl + 8:], src, stats)
    # PACKET_STATISTICS: (packets, drops)
    try:
        _, drops = struct.unpack("II", sock.getsockopt(263, 6, 8))
    except OSError:
        drops = -1
    seqs = stats.pop("_seqs")
    msgs = sum(seqs.values()) or 1
    out = {"seconds": secs, "kernel_dropped": drops, "payloads_in_window": sum(seqs.values()),
           "by_sender": {}}
    for src in sorted(stats):
        s = stats[src]
        out["by_sender"][src] = {k: v for k, v in sorted(s.items(), key=lambda kv: -kv[1])}
    if as_json:
        print(json.dumps(out, indent=1))
        return
    print("window %.1f s, kernel dropped %d, ordered payloads seen %d" % (secs, drops, msgs))
    for src, s in out["by_sender"].items():
        print("%s: %d datagrams (%.3f per msg) in %d packets on lo (%.3f per msg), %d bytes"
              " (%.1f per msg), %d messages"
              % (src, s.get("datagrams", 0), s.get("datagrams", 0) / msgs, s.get("packets", 0),
                 s.get("packets", 0) / msgs, s.get("bytes", 0), s.get("bytes", 0) / msgs,
                 s.get("messages", 0)))
        for k, v in s.items():
            if k.startswith("msg:"):
                print("   %-28s %8d  %.4f per msg" % (k[4:], v, v / msgs))
        for k, v in list(s.items()):
            if k.startswith("dgram:"):
                print("   datagram [%s] %d" % (k[6:], v))


if __name__ == "__main__":
    main()
