#!/usr/bin/env python3
"""Scrapes a dingtalk-streamd the way monitoring does, for scripts/bench --only trust:

    scraper.py --metrics 127.0.0.1:PORT --metrics-rate 100 --control PATH --status-rate 10

`GET /metrics` on metrics.listen (one TCP connection per request: the daemon answers one
request per connection) and `{"cmd":"status"}` on the control socket, each on its own fixed
schedule: request i is due i periods after the start, a late one goes out at once (so the
average rate holds on a busy machine). One thread, requests one at a time.

stdout: "ready" once one request of each kind was answered; then, after "stop" on stdin (or
EOF), "summary {json}": per kind the requests sent, failed, answer times (ms), bytes, and
the furthest a request fell behind its schedule.
"""
import argparse
import json
import socket
import sys
import threading
import time


def get_metrics(addr):
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(f"GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n".encode())
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    if not buf.startswith(b"HTTP/1.1 200") or b"dingtalk_streamd_" not in buf:
        raise OSError(f"unexpected answer: {buf[:120]!r}")
    return len(buf)


def get_status(path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(b'{"cmd":"status"}\n')
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    if not buf.startswith(b"{") or b'"state"' not in buf:
        raise OSError(f"unexpected answer: {buf[:120]!r}")
    return len(buf)


class Kind:
    def __init__(self, name, rate, call):
        self.name, self.period, self.call = name, 1.0 / rate, call
        self.sent = self.failed = self.bytes = 0
        self.ms = []
        self.max_lag = 0.0
        self.errors = []

    def run_one(self):
        t0 = time.perf_counter()
        try:
            self.bytes += self.call()
        except OSError as e:
            self.failed += 1
            if len(self.errors) < 3:
                self.errors.append(str(e))
        self.ms.append(round((time.perf_counter() - t0) * 1e3, 3))
        self.sent += 1

    def summary(self, elapsed):
        s = sorted(self.ms) or [0.0]

        def pct(q):
            return s[max(0, min(len(s) - 1, int(q * len(s) + 0.999999) - 1))]
        return {"sent": self.sent, "failed": self.failed, "rate": self.sent / max(elapsed, 1e-9),
                "ms_p50": pct(.5), "ms_p99": pct(.99), "ms_max": s[-1],
                "bytes_avg": self.bytes / max(1, self.sent - self.failed),
                "max_lag_ms": round(self.max_lag * 1e3, 1), "errors": self.errors}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--metrics-rate", type=float, default=100)
    ap.add_argument("--control", required=True)
    ap.add_argument("--status-rate", type=float, default=10)
    a = ap.parse_args()
    kinds = [Kind("metrics", a.metrics_rate, lambda: get_metrics(a.metrics)),
             Kind("status", a.status_rate, lambda: get_status(a.control))]
    for k in kinds:  # one of each answered, or we say why
        k.run_one()
        if k.failed:
            sys.exit(f"scraper: first {k.name} request failed: {k.errors[0]}")
    for k in kinds:
        k.sent = k.failed = k.bytes = 0
        k.ms.clear()
    stop = threading.Event()

    def watch_stdin():
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        stop.set()
    threading.Thread(target=watch_stdin, daemon=True).start()
    print("ready", flush=True)
    start = time.monotonic()
    due = {k.name: start for k in kinds}
    while not stop.is_set():
        k = min(kinds, key=lambda k: due[k.name])
        wait = due[k.name] - time.monotonic()
        if wait > 0:
            stop.wait(wait)  # pacing: the schedule, not a synchronisation
            continue
        k.max_lag = max(k.max_lag, -wait)
        k.run_one()
        due[k.name] += k.period
    elapsed = time.monotonic() - start
    print("summary " + json.dumps({k.name: k.summary(elapsed) for k in kinds}), flush=True)


if __name__ == "__main__":
    main()
