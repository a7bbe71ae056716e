#!/usr/bin/env python3
"""Lower bound for ACK latency of ANY durable single-writer design on this disk.

Arrivals come every 1 ms (1,000 msg/s). One writer thread repeatedly takes everything that has
arrived, appends 4 KiB per batch and fdatasync()s (ideal group commit: no JSON, no SQLite, no
network); a message's latency is from its arrival to the end of the fsync that covered it.
Usage: scripts/fsync-floor.py [DIR] [SECONDS]   (DIR must not be tmpfs)
"""
import os, sys, threading, time, collections

d = sys.argv[1] if len(sys.argv) > 1 else "."
secs = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
path = os.path.join(d, "fsync-floor.probe")
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
q = collections.deque()
cv = threading.Condition()
done = False
lat = []

def writer():
    while True:
        with cv:
            while not q and not done:
                cv.wait()
            if not q and done:
                return
            batch = list(q); q.clear()
        os.write(fd, b"x" * 4096)
        os.fdatasync(fd)
        t = time.perf_counter()
        lat.extend(t - a for a in batch)

w = threading.Thread(target=writer); w.start()
n = int(secs * 1000)
t_next = time.perf_counter()
for i in range(n):
    t_next += 0.001
    while time.perf_counter() < t_next:
        time.sleep(max(0.0, t_next - time.perf_counter() - 0.0002))
    with cv:
        q.append(time.perf_counter()); cv.notify()
with cv:
    done = True; cv.notify()
w.join(); os.close(fd); os.unlink(path)
lat.sort()
p = lambda x: lat[min(len(lat) - 1, int(len(lat) * x))] * 1000
print(f"ideal group commit, 1000 msg/s for {secs:.0f}s on {d}: n={len(lat)} "
      f"p50={p(.5):.2f} ms p99={p(.99):.2f} ms p99.9={p(.999):.2f} ms max={lat[-1]*1000:.2f} ms")
