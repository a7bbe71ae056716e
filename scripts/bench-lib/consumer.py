#!/usr/bin/env python3
"""A no-op dingtalk-streamd consumer for scripts/bench: a tap, or an acking member of a group.

    consumer.py SOCKET tap|member [--group bench] [--marks 200,20200] [--record FILE]

It reads the consumer socket in chunks and stamps each chunk with the wall clock (µs, the
clock the simulator's ACK log uses) when recv() returns. A member answers every line with
{"ack":seq}, one write per chunk. Lines are not JSON-decoded: seq and message_id are cut out
with a regex (the daemon's line starts {"seq":N,...}), so the consumer costs little CPU on a
machine it shares with what is measured.

stdout: "ready" once connected (a member: after its welcome), then "seen N T" when the N-th
message line arrives, for every N in --marks. With --record, "T message_id" per line goes to
FILE, written just before the last mark is reported.
"""
import argparse
import re
import socket
import sys
import time

SEQ = re.compile(rb'"seq":(\d+)')
MID = re.compile(rb'"message_id":"([^"]*)"')


def now_us():
    return time.time_ns() // 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("socket")
    ap.add_argument("role", choices=["tap", "member"])
    ap.add_argument("--group", default="bench")
    ap.add_argument("--marks", default="")
    ap.add_argument("--record")
    a = ap.parse_args()
    marks = sorted(int(m) for m in a.marks.split(",") if m)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(a.socket)
    buf = b""
    if a.role == "member":
        s.sendall(b'{"hello":{"group":"%s"}}\n' % a.group.encode())
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                sys.exit("consumer: the daemon closed the socket before welcoming us")
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        if b'"welcome"' not in line:
            sys.exit(f"consumer: no welcome: {line[:200]!r}")
    print("ready", flush=True)
    records = [] if a.record else None
    count = 0
    member = a.role == "member"
    while True:
        chunk = s.recv(1 << 18)
        if not chunk:
            break
        t = now_us()
        buf += chunk
        if b"\n" not in chunk:
            continue
        *lines, buf = buf.split(b"\n")
        acks = []
        for line in lines:
            m = SEQ.search(line, 0, 40)
            if m is None:
                print(f"consumer: not a message line: {line[:200]!r}", file=sys.stderr, flush=True)
                continue
            count += 1
            if member:
                acks.append(b'{"ack":%s}\n' % m.group(1))
            if records is not None:
                mid = MID.search(line)
                records.append((t, mid.group(1).decode() if mid else "-"))
        if acks:
            s.sendall(b"".join(acks))
        while marks and count >= marks[0]:
            mark = marks.pop(0)
            if not marks and records is not None:
                with open(a.record, "w") as f:
                    f.writelines(f"{tt} {mid}\n" for tt, mid in records)
            print(f"seen {mark} {t}", flush=True)


if __name__ == "__main__":
    main()
