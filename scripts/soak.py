#!/usr/bin/env python3
"""Soak test: dingtalk-streamd against the DingTalk simulator, with faults, consumer churn and
SIGKILLs, for MINUTES (default 30). Not part of CI; run it through `scripts/soak`.

What runs (all under one work directory on a real disk, never tmpfs):

- `dingtalk-streamd-sim` on 127.0.0.1 (a free port, TLS), with `--ack-log`. The simulator reads
  stdin only without `--rate`, so this script is its load generator: one bot message per line
  at a steady rate, plus random bursts written in one go; fault commands go down the same pipe.
- `dingtalk-streamd --config X run` (release build), `groups: [soak]`, readiness seen as
  `READY=1` on a NOTIFY_SOCKET this script owns (sender pid checked with SCM_CREDENTIALS).
- Faults at random times: /drop, /zombie (on for a few seconds, then off), /disconnect,
  /ticket 503 N (+ /drop so the daemon has to ask for tickets), /storm DUR (+ /disconnect).
- SIGKILL of the daemon at random times, then a restart (and a wait for READY=1).
- Consumers: a group member that connects, acks, disconnects (sometimes without acking what it
  holds), reconnects, sometimes acks slowly; a second member of the same group joining now and
  then; a tap that comes and goes and sometimes stops reading.
- Once a second: the daemon's RSS (VmRSS, VmHWM) and open fds from /proc.

Some kills and faults are timed into a burst (within 1.5 s / 0.5 s of it being written), so
frames are in flight and ACKs unread when the connection goes: DingTalk then redelivers what the
daemon already stored, which is the dedupe path.

Knobs (environment): SOAK_RATE (steady messages/s, 20), SOAK_BURST_EVERY (s, "30-120"),
SOAK_BURST_SIZE ("200-3000"), SOAK_FAULT_EVERY (s, "10-40"), SOAK_KILL_EVERY (s, "15-150"),
SOAK_REDELIVER_AFTER (the simulator's, "15s"), SOAK_MAX_REDELIVERIES (1000),
SOAK_DRAIN_TIMEOUT (s, 300), SOAK_SEED, SOAK_DIR (work directory, default a new one under
/var/tmp), SOAK_KEEP=1 (keep it after a pass; a failing run always keeps it). Files in the work
directory: config.yml, daemon.log (every start and kill marked), sim.log, sim.out, ack.log,
received.ndjson, summary.json.

At the end the faults, kills and load stop, the group drains (everything pushed ACKed, every
ACKed message received, the group's backlog 0), the daemon gets SIGTERM and the simulator
/quit, and then the checks run (see `check()`): exit status 0 only with nothing lost, nothing
stored twice, and a complete drain.
"""

import argparse
import atexit
import ctypes
import datetime
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time

GROUP = "soak"


def env_float(name, default):
    v = os.environ.get(name)
    return float(v) if v else default


def env_range(name, default):
    """`A-B` (seconds or counts) from the environment, else default (a tuple)."""
    v = os.environ.get(name)
    if not v:
        return default
    a, b = v.split("-", 1)
    return (float(a), float(b))


def log(msg):
    ts = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[soak {ts}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# Child processes: every one is tracked and ended on exit (atexit + SIGINT/SIGTERM), and gets
# PR_SET_PDEATHSIG so it dies with this script even when the script is SIGKILLed. Children are
# started from the main thread only (the death signal follows the thread that forked).

_children = []
_children_lock = threading.Lock()
_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _die_with_parent():
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(args, **kw):
    p = subprocess.Popen(args, preexec_fn=_die_with_parent, **kw)
    with _children_lock:
        _children.append(p)
    return p


def cleanup_children():
    with _children_lock:
        procs = [p for p in _children if p.poll() is None]
    for p in procs:
        try:
            p.terminate()
        except OSError:
            pass
    deadline = time.monotonic() + 5
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _on_signal(signum, _frame):
    log(f"signal {signum}: stopping")
    cleanup_children()
    os._exit(130 if signum == signal.SIGINT else 143)


# --------------------------------------------------------------------------------------------
# sd_notify receiver: which daemon pid said READY=1, and its latest STATUS=.


class Notify:
    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.cond = threading.Condition()
        self.ready = set()
        self.status = {}
        threading.Thread(target=self._run, name="notify", daemon=True).start()

    def _run(self):
        space = socket.CMSG_SPACE(struct.calcsize("iII"))
        while True:
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(65536, space)
            except OSError:
                return
            pid = None
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("iII", cdata[: struct.calcsize("iII")])[0]
            with self.cond:
                for line in data.decode("utf-8", "replace").splitlines():
                    if line == "READY=1":
                        self.ready.add(pid)
                    elif line.startswith("STATUS="):
                        self.status[pid] = line[7:]
                self.cond.notify_all()

    def wait_ready(self, pid, timeout, alive):
        deadline = time.monotonic() + timeout
        with self.cond:
            while pid not in self.ready:
                left = deadline - time.monotonic()
                if left <= 0 or not alive():
                    return False
                self.cond.wait(min(left, 0.5))
        return True


# --------------------------------------------------------------------------------------------
# The simulator: stdin is the command and message pipe; stdout carries the config notice and
# the answers to /status.

STATUS_RE = re.compile(
    r"status: open connections: (\d+); connections opened: (\d+); tickets issued: (\d+); "
    r"pushed: (\d+); redelivered: (\d+); ACKs received: (\d+); messages ACKed: (\d+); "
    r"awaiting ACK: (\d+)"
)
STATUS_KEYS = ("open", "opened", "tickets", "pushed", "redelivered", "acks", "acked", "awaiting")


class Sim:
    def __init__(self, binary, work, args):
        self.work = work
        self.lock = threading.Lock()
        self.cond = threading.Condition()
        self.config_written = False
        self.statuses = []
        self.out = open(os.path.join(work, "sim.out"), "a", buffering=1)
        self.err = open(os.path.join(work, "sim.log"), "ab")
        cmd = [
            binary,
            "--listen", "127.0.0.1:0",
            "--state-dir", work,
            "--write-config", os.path.join(work, "sim-config.yml"),
            "--socket", os.path.join(work, "stream.sock"),
            "--control", os.path.join(work, "control.sock"),
            "--spool-dir", os.path.join(work, "spool"),
            "--ack-log", os.path.join(work, "ack.log"),
            "--ping-interval", "20s",
            "--redeliver-after", args.redeliver_after,
            "--max-redeliveries", str(args.max_redeliveries),
            "--disconnect-grace", "10s",
        ]
        self.cmdline = cmd
        self.proc = spawn(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err,
                          env=dict(os.environ, RUST_LOG=os.environ.get("SOAK_SIM_LOG", "info")))
        threading.Thread(target=self._read, name="sim-stdout", daemon=True).start()

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.out.write(line + "\n")
            with self.cond:
                if line.startswith("# complete config written to"):
                    self.config_written = True
                m = STATUS_RE.search(line)
                if m:
                    self.statuses.append(dict(zip(STATUS_KEYS, map(int, m.groups()))))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_config(self, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.config_written:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return False
                self.cond.wait(left)
        return True

    def send(self, text):
        """Writes lines (commands or messages) to the simulator's stdin."""
        data = text.encode() if isinstance(text, str) else text
        with self.lock:
            try:
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                raise SystemExit("the simulator's stdin closed: it exited (see sim.log)")

    def status(self, timeout=10):
        with self.cond:
            n = len(self.statuses)
        self.send("/status\n")
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.statuses) == n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.statuses[-1]


# --------------------------------------------------------------------------------------------
# What the consumer group received.


class Received:
    def __init__(self, path):
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.file = open(path, "a", buffering=1)
        self.seq_of_id = {}       # messageId -> set(seq)
        self.seq_of_msgid = {}    # data.msgId -> set(seq)
        self.id_of_seq = {}       # seq -> set(messageId)
        self.lines = 0
        self.redelivered_lines = 0
        self.repeats = 0          # the same seq seen again (fine: at-least-once)
        self.errors = {}          # daemon {"error":{"code":...}} lines by code
        self.tap_lines = 0
        self.tap_errors = {}

    def record(self, member, v):
        seq = v.get("seq")
        mid = v.get("message_id")
        data = v.get("data")
        msgid = data.get("msgId") if isinstance(data, dict) else None
        with self.cond:
            self.lines += 1
            if v.get("redelivered"):
                self.redelivered_lines += 1
            if seq in self.id_of_seq:
                self.repeats += 1
            self.id_of_seq.setdefault(seq, set()).add(mid)
            self.seq_of_id.setdefault(mid, set()).add(seq)
            if msgid:
                self.seq_of_msgid.setdefault(msgid, set()).add(seq)
            self.file.write(json.dumps({"t": round(time.time(), 3), "member": member, "seq": seq,
                                        "message_id": mid, "msgId": msgid,
                                        "redelivered": bool(v.get("redelivered"))}) + "\n")
            self.cond.notify_all()

    def error(self, code, tap=False):
        with self.lock:
            d = self.tap_errors if tap else self.errors
            d[code] = d.get(code, 0) + 1

    def tap_line(self):
        with self.lock:
            self.tap_lines += 1


# --------------------------------------------------------------------------------------------
# The daemon side shared by the threads: its pid, readiness, and the stop flags.


class World:
    def __init__(self):
        self.ready = threading.Event()     # set while a daemon is up (after READY=1)
        self.stop = threading.Event()      # the whole run is over: threads leave
        self.draining = threading.Event()  # faults, kills, load and churn have stopped
        self.pid = None
        self.lock = threading.Lock()


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError:
        s.close()
        raise
    return s


class LineReader:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def lines(self, timeout):
        """Lines available within timeout ([] on a quiet timeout); None at EOF or reset."""
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(1 << 16)
        except socket.timeout:
            return []
        except OSError:
            return None
        if not chunk:
            return None
        self.buf += chunk
        *done, self.buf = self.buf.split(b"\n")
        return done


def member_session(world, rx, sock_path, name, duration, slow, abrupt, stays):
    """One connection of a group member. Returns why it ended.

    The member acks each line right after recording it (after `slow` seconds when slow). At
    the end of its session it leaves between messages, or (abrupt) right after receiving one,
    holding it and whatever else was sent to it unacked: the daemon must give those to the
    next member. While draining, a member that `stays` neither ends its session nor dawdles;
    one that does not stay leaves."""
    try:
        s = connect(sock_path)
    except OSError as e:
        return f"connect failed: {e}"
    try:
        s.sendall(json.dumps({"hello": {"group": GROUP}}).encode() + b"\n")
        r = LineReader(s)
        end = time.monotonic() + duration
        while True:
            draining = world.draining.is_set()
            if world.stop.is_set():
                return "stop"
            if draining and not stays:
                return "drain"
            if not draining and time.monotonic() >= end + (5 if abrupt else 0):
                return "session over"
            lines = r.lines(0.5)
            if lines is None:
                return "eof"
            for raw in lines:
                try:
                    v = json.loads(raw)
                except ValueError:
                    rx.error("unparsable_line")
                    continue
                if "welcome" in v:
                    continue
                if "error" in v:
                    rx.error(v["error"].get("code", "?"))
                    continue
                if "seq" not in v:
                    continue
                rx.record(name, v)
                if abrupt and not draining and time.monotonic() >= end:
                    # Walk away holding unacked messages: they must go to another member.
                    return "left without acking"
                if slow and not draining:
                    time.sleep(slow)
                try:
                    s.sendall(b'{"ack":%d}\n' % v["seq"])
                except OSError:
                    return "eof on ack"
    finally:
        s.close()


def member_loop(world, rx, sock_path, name, rng, always_on):
    """The main member (always_on) or the occasional second member of the group."""
    while not world.stop.is_set():
        if not always_on:
            # Away for a while, then join next to the main member.
            if world.stop.wait(rng.uniform(20, 90)) or world.draining.is_set():
                return
        while not world.ready.wait(0.5):
            if world.stop.is_set():
                return
        draining = world.draining.is_set()
        duration = rng.uniform(5, 90) if always_on else rng.uniform(5, 45)
        slow = rng.uniform(0.005, 0.1) if (rng.random() < 0.25 and not draining) else 0
        abrupt = rng.random() < 0.4
        why = member_session(world, rx, sock_path, name, duration, slow, abrupt, always_on)
        if why.startswith("connect failed"):
            # The daemon went away between READY and connect; wait for the next one.
            world.stop.wait(0.2)
            continue
        if world.draining.is_set():
            if not always_on:
                return
            continue
        if why in ("session over", "left without acking"):
            # Churn: away for a random pause before coming back.
            world.stop.wait(rng.uniform(0, 5))


def tap_loop(world, rx, sock_path, rng):
    while not world.stop.is_set() and not world.draining.is_set():
        while not world.ready.wait(0.5):
            if world.stop.is_set():
                return
        try:
            s = connect(sock_path)
        except OSError:
            world.stop.wait(0.2)
            continue
        r = LineReader(s)
        end = time.monotonic() + rng.uniform(5, 60)
        stall_at = time.monotonic() + rng.uniform(2, 30) if rng.random() < 0.3 else None
        try:
            while time.monotonic() < end and not world.draining.is_set():
                if stall_at and time.monotonic() >= stall_at:
                    world.stop.wait(rng.uniform(2, 10))  # a tap that stops reading for a while
                    stall_at = None
                lines = r.lines(0.5)
                if lines is None:
                    break
                for raw in lines:
                    try:
                        v = json.loads(raw)
                    except ValueError:
                        continue
                    if "error" in v:
                        rx.error(v["error"].get("code", "?"), tap=True)
                    else:
                        rx.tap_line()
        finally:
            s.close()
        world.stop.wait(rng.uniform(1, 20))


# --------------------------------------------------------------------------------------------
# Load and faults.


class Load:
    def __init__(self, sim, rng, rate, burst_every, burst_size):
        self.sim, self.rng, self.rate = sim, rng, rate
        self.burst_every, self.burst_size = burst_every, burst_size
        self.written = 0
        self.bursts = 0
        self.burst_messages = 0
        self.burst_cond = threading.Condition()  # notified when a burst was written

    def wait_burst(self, world):
        """Waits for the next burst (False when the run drains first)."""
        with self.burst_cond:
            n = self.bursts
            while self.bursts == n:
                if world.draining.is_set():
                    return False
                self.burst_cond.wait(0.5)
        return True

    def text(self):
        self.written += 1
        r = self.rng.random()
        n = self.rng.randint(0, 60) if r < 0.9 else self.rng.randint(200, 4000)
        filler = "".join(self.rng.choices("abcdefghijklmnopqrstuvwxyz 0123456789", k=n))
        return f"soak {self.written} {filler}".rstrip() + "\n"

    def run(self, world):
        period = 1.0 / self.rate
        next_msg = time.monotonic()
        next_burst = time.monotonic() + self.rng.uniform(*self.burst_every)
        while not world.draining.is_set():
            now = time.monotonic()
            if now >= next_burst:
                n = self.rng.randint(int(self.burst_size[0]), int(self.burst_size[1]))
                self.sim.send("".join(self.text() for _ in range(n)))
                with self.burst_cond:
                    self.burst_messages += n
                    self.bursts += 1
                    self.burst_cond.notify_all()
                next_burst = now + self.rng.uniform(*self.burst_every)
            if now >= next_msg:
                self.sim.send(self.text())
                next_msg += period
                if next_msg < now - 1:
                    next_msg = now  # do not catch up a stall with a burst of its own
            world.draining.wait(max(0, min(next_msg, next_burst) - time.monotonic()))


class Faults:
    KINDS = (("drop", 25), ("disconnect", 25), ("zombie", 15), ("ticket_503", 20), ("storm", 15))

    def __init__(self, sim, rng, every, load):
        self.sim, self.rng, self.every, self.load = sim, rng, every, load
        self.count = {k: 0 for k, _ in self.KINDS}
        self.in_burst = 0
        self.zombie_on = False

    def zombie(self, on):
        if self.zombie_on != on:
            self.sim.send("/zombie\n")  # a toggle
            self.zombie_on = on

    def run(self, world):
        kinds = [k for k, _ in self.KINDS]
        weights = [w for _, w in self.KINDS]
        while not world.draining.wait(self.rng.uniform(*self.every)):
            kind = self.rng.choices(kinds, weights)[0]
            if self.rng.random() < 0.4:
                # Into a burst: frames in flight and ACKs unread when the connection goes, so
                # DingTalk redelivers what the daemon already stored (the dedupe path).
                if not self.load.wait_burst(world):
                    return
                time.sleep(self.rng.uniform(0, 0.5))
                self.in_burst += 1
            self.count[kind] += 1
            if kind == "drop":
                self.sim.send("/drop\n")
            elif kind == "disconnect":
                self.sim.send("/disconnect\n")
            elif kind == "zombie":
                self.zombie(True)
                world.draining.wait(self.rng.uniform(3, 20))
                self.zombie(False)
            elif kind == "ticket_503":
                # The next N ticket requests fail; the drop makes the daemon ask for tickets.
                self.sim.send(f"/ticket 503 {self.rng.randint(2, 8)}\n/drop\n")
            elif kind == "storm":
                self.sim.send(f"/storm {self.rng.randint(3, 15)}s\n/disconnect\n")

    def calm(self):
        self.zombie(False)
        self.sim.send("/ticket ok\n/storm off\n")


# --------------------------------------------------------------------------------------------
# The daemon: start, SIGKILL, restart; resources sampled once a second.


class Daemon:
    def __init__(self, binary, config, work, notify, world):
        self.binary, self.config, self.work = binary, config, work
        self.notify, self.world = notify, world
        self.proc = None
        self.starts = 0
        self.kills = 0
        self.unexpected_exits = []
        self.log = open(os.path.join(work, "daemon.log"), "ab")
        self.peak_rss_kib = 0       # max VmHWM seen (peak RSS of any daemon process)
        self.peak_rss_now_kib = 0   # max VmRSS sampled
        self.peak_fds = 0
        self.ready_times = []
        self.totals = {}

    def start(self, timeout=60):
        self.starts += 1
        self.log.write(f"\n===== soak: start #{self.starts} at {datetime.datetime.now().isoformat()} =====\n".encode())
        self.log.flush()
        t0 = time.monotonic()
        env = dict(os.environ, NOTIFY_SOCKET=self.notify.path)
        env.pop("RUST_LOG", None)
        env.pop("WATCHDOG_USEC", None)
        env.pop("LISTEN_FDS", None)
        self.proc = spawn([self.binary, "--config", self.config, "run"], stdin=subprocess.DEVNULL,
                          stdout=self.log, stderr=self.log, env=env)
        with self.world.lock:
            self.world.pid = self.proc.pid
        if not self.notify.wait_ready(self.proc.pid, timeout, lambda: self.proc.poll() is None):
            raise SystemExit(f"daemon start #{self.starts} (pid {self.proc.pid}) did not send READY=1 "
                             f"within {timeout}s (exit {self.proc.poll()}); see daemon.log")
        self.ready_times.append(time.monotonic() - t0)
        self.world.ready.set()

    def tally(self):
        """Adds this daemon life's counters (they restart at 0 with each process) to the totals;
        called just before a kill and at the end, so the few frames between the two are missed."""
        st = control(os.path.join(self.work, "control.sock"), timeout=2)
        if not st:
            return
        for part, key in (("stream", "frames_in"), ("spool", "stored"), ("spool", "duplicates")):
            v = (st.get(part) or {}).get(key)
            if isinstance(v, int):
                self.totals[key] = self.totals.get(key, 0) + v

    def sigkill(self):
        self.tally()
        self.world.ready.clear()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.kills += 1
        self.log.write(f"===== soak: SIGKILL #{self.kills} at {datetime.datetime.now().isoformat()} =====\n".encode())
        self.log.flush()

    def check_alive(self):
        """A daemon that exited by itself is a finding: recorded, then restarted."""
        rc = self.proc.poll()
        if rc is None:
            return
        self.world.ready.clear()
        self.unexpected_exits.append((datetime.datetime.now().isoformat(), rc))
        log(f"the daemon exited by itself with status {rc}; restarting (a failure, see daemon.log)")
        self.start()

    def sigterm(self, timeout=30):
        self.world.ready.clear()
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return "did not stop within 30s after SIGTERM (killed)"

    def sample(self):
        with self.world.lock:
            pid = self.world.pid
        if pid is None:
            return
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        self.peak_rss_kib = max(self.peak_rss_kib, int(line.split()[1]))
                    elif line.startswith("VmRSS:"):
                        self.peak_rss_now_kib = max(self.peak_rss_now_kib, int(line.split()[1]))
            self.peak_fds = max(self.peak_fds, len(os.listdir(f"/proc/{pid}/fd")))
        except (OSError, ValueError):
            pass  # it just died (a kill) or is a zombie process


def control(path, timeout=5):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(b'{"cmd":"status"}\n')
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            buf += chunk
        return json.loads(buf)
    except (OSError, ValueError):
        return None
    finally:
        s.close()


# --------------------------------------------------------------------------------------------
# Checks.


def read_ack_log(path):
    """(pushed: messageId -> msgId, acked: ACKed messageIds that were pushed messages, and how
    many other `acked` lines there were: the simulator also logs the ACK of a SYSTEM
    `disconnect` frame, which is not a message)."""
    pushed = {}
    acked_all = set()
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "pushed":
                pushed[parts[1]] = parts[2] if len(parts) > 2 else "-"
            elif len(parts) >= 2 and parts[0] == "acked":
                acked_all.add(parts[1])
    acked = {m for m in acked_all if m in pushed}
    return pushed, acked, len(acked_all) - len(acked)


def spool_check(db_path, rx, acked, pushed):
    """Schema-tolerant read of the spool after the daemon stopped.

    - any table with a `body` column holding the consumer line's JSON (`message_id`,
      `data.msgId`): no messageId or msgId may occur in two rows;
    - any table with a `key` column and a `seq` column (the dedupe keys, `<kind>:<id>`): for
      every ACKed message whose keys are still there, the key's seq must be the seq the group
      received it under, and its messageId and msgId keys must agree.
    Anything not recognised is reported as skipped, not failed (the schema may change)."""
    out = {"recognised": [], "body_rows": 0, "body_dups": [], "keys_matched": 0,
           "key_disagreements": [], "note": ""}
    if not os.path.exists(db_path):
        out["note"] = "no spool.db"
        return out
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    except sqlite3.Error as e:
        out["note"] = f"cannot read: {e}"
        return out
    msgid_of = {mid: m for mid, m in pushed.items() if m != "-"}
    for t in tables:
        cols = [r[1] for r in db.execute(f'PRAGMA table_info("{t}")')]
        if "body" in cols:
            seqcol = "seq" if "seq" in cols else "rowid"
            seen_id, seen_msgid = {}, {}
            n = 0
            try:
                rows = db.execute(f'SELECT {seqcol}, body FROM "{t}"')
                for seq, body in rows:
                    try:
                        v = json.loads(body)
                    except (TypeError, ValueError):
                        continue
                    if not isinstance(v, dict) or "message_id" not in v:
                        continue
                    n += 1
                    mid = v["message_id"]
                    d = v.get("data")
                    m = d.get("msgId") if isinstance(d, dict) else None
                    if mid in seen_id:
                        out["body_dups"].append((mid, seen_id[mid], seq))
                    seen_id[mid] = seq
                    if m:
                        if m in seen_msgid:
                            out["body_dups"].append((m, seen_msgid[m], seq))
                        seen_msgid[m] = seq
            except sqlite3.Error:
                continue
            if n:
                out["recognised"].append(f"{t}.body")
                out["body_rows"] += n
        keycol = next((c for c in cols if c == "key" or c.endswith("_key")), None)
        if keycol and "seq" in cols:
            try:
                keys = dict(db.execute(f'SELECT "{keycol}", seq FROM "{t}"'))
            except sqlite3.Error:
                continue
            by_value = {}
            for k, seq in keys.items():
                if isinstance(k, str):
                    # `mid:<messageId>`, `msg:<topic>:<msgId>` today: the id is the last part.
                    by_value[k.rsplit(":", 1)[-1]] = seq
            out["recognised"].append(f"{t}.{keycol}")
            for mid in acked:
                got = rx.seq_of_id.get(mid, set())
                for ident in (mid, msgid_of.get(mid)):
                    if ident is None or ident not in by_value:
                        continue
                    out["keys_matched"] += 1
                    if len(got) == 1 and by_value[ident] not in got:
                        out["key_disagreements"].append((ident, by_value[ident], sorted(got)))
    db.close()
    if not out["recognised"]:
        out["note"] = "schema not recognised; consumer-side evidence only"
    return out


def check(work, rx, daemon_db):
    """The verdict, from three independent records:

    - the simulator's ACK log: what DingTalk pushed (`pushed <messageId> <msgId>`) and what it
      saw ACKed (`acked <messageId>`, first successful ACK only; ACKs of SYSTEM `disconnect`
      frames are logged too and are set aside, they are not messages);
    - every line the consumer group received (`received.ndjson`: seq, message_id, data.msgId,
      redelivered, which member), recorded before the member acks it;
    - the spool file, read after the daemon stopped (`spool_check`, schema-tolerant).

    lost: an ACKed messageId that no member of the group ever received. The daemon ACKs only
      after the commit, and a stored message reaches every group, so this is a message that
      DingTalk will not send again and nobody got.
    stored twice: a messageId, or a bot msgId, that the group received under two different
      seqs. The group gets every stored message (no other group, nothing parked: checked via
      the final status), so a second row in the spool is a second seq at the consumer. A
      redelivery of the same seq is fine (at-least-once). Messages are counted, not ids.
    seq conflicts: one seq that carried two different messageIds (a corrupt or reused seq).
    unknown: a received messageId the simulator never pushed.
    never ACKed: pushed, still not ACKed after the drain, with redeliveries every 15 s (the
      daemon is not taking it).
    The spool file adds: no messageId/msgId in two `body` rows (of those retention left), and
    each dedupe key (`mid:<messageId>`, `msg:<topic>:<msgId>`) points at the seq the group got.
    seq gaps (unused seq numbers between the first and last received) are reported, not failed.
    """
    pushed, acked, acked_other = read_ack_log(os.path.join(work, "ack.log"))
    lost = sorted(m for m in acked if m not in rx.seq_of_id)
    twice_ids = {m: sorted(s) for m, s in rx.seq_of_id.items() if len(s) > 1}
    twice_msgids = {m: sorted(s) for m, s in rx.seq_of_msgid.items() if len(s) > 1}
    # One message stored twice shows up under both its ids: count messages, not ids.
    msgid_owner = {v: k for k, v in pushed.items() if v != "-"}
    twice = set(twice_ids) | {msgid_owner.get(m, m) for m in twice_msgids}
    seq_conflicts = {s: sorted(ids) for s, ids in rx.id_of_seq.items() if len(ids) > 1}
    unknown = sorted(m for m in rx.seq_of_id if m not in pushed)
    never_acked = sorted(m for m in pushed if m not in acked)
    seqs = sorted(s for s in rx.id_of_seq if isinstance(s, int))
    gaps = (seqs[-1] - seqs[0] + 1 - len(seqs)) if seqs else 0
    spool = spool_check(daemon_db, rx, acked, pushed)
    return {
        "pushed": len(pushed), "acked": len(acked), "acked_other": acked_other, "never_acked": never_acked,
        "lost": lost, "stored_twice": sorted(twice), "twice_ids": twice_ids,
        "twice_msgids": twice_msgids, "seq_conflicts": seq_conflicts, "unknown": unknown,
        "seqs": len(seqs), "seq_gaps": gaps, "spool": spool,
    }


# --------------------------------------------------------------------------------------------


def self_test():
    """The checks must see a loss and a duplicate: made-up logs and spool, no binaries."""
    work = tempfile.mkdtemp(prefix="soak-self-test.")
    try:
        with open(os.path.join(work, "ack.log"), "w") as f:
            f.write("pushed A msgA\npushed B msgB\npushed C msgC\npushed E msgE\npushed F msgF\n"
                    "acked A\nacked B\nacked C\nacked E\nacked F\nacked SYSDISCONNECT\n")
        rx = Received(os.devnull)
        for seq, mid, msgid, again in ((1, "A", "msgA", False), (2, "B", "msgB", False),
                                       (2, "B", "msgB", True), (3, "B", "msgB", False),
                                       (4, "E", "msgE", False), (5, "F", "msgE", False)):
            rx.record("m", {"seq": seq, "message_id": mid, "data": {"msgId": msgid},
                            "redelivered": again})
        os.makedirs(os.path.join(work, "spool"))
        db = sqlite3.connect(os.path.join(work, "spool", "spool.db"))
        db.executescript("CREATE TABLE messages (seq INTEGER PRIMARY KEY, body TEXT);"
                         "CREATE TABLE dedupe (key TEXT PRIMARY KEY, seq INTEGER);")
        for seq in (2, 3):
            db.execute("INSERT INTO messages VALUES (?, ?)",
                       (seq, json.dumps({"message_id": "B", "data": {"msgId": "msgB"}})))
        db.execute("INSERT INTO dedupe VALUES ('mid:A', 9)")
        db.execute("INSERT INTO dedupe VALUES ('msg:/t:msgA', 1)")
        db.commit()
        db.close()
        res = check(work, rx, os.path.join(work, "spool", "spool.db"))
        assert res["lost"] == ["C"], res["lost"]
        # B under seqs 2 and 3; msgE under 4 and 5 (F reused E's msgId): two messages.
        assert res["stored_twice"] == ["B", "E"], res["stored_twice"]
        assert res["acked"] == 5 and res["acked_other"] == 1, res
        assert rx.repeats == 1
        assert len(res["spool"]["body_dups"]) == 2, res["spool"]
        assert res["spool"]["key_disagreements"] == [("A", 9, [1])], res["spool"]
        assert res["spool"]["keys_matched"] == 2, res["spool"]
        print("soak self-test: the checks see the loss, the duplicates and the spool disagreement")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fs_type(path):
    best, kind = "", "?"
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            mnt = parts[1].replace("\\040", " ")
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, kind = mnt, parts[2]
    return kind


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) // (1024 * 1024)} GiB"
    except (OSError, ValueError):
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, {mem} RAM, Linux {platform.release()}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("minutes", nargs="?", type=float, default=30.0)
    ap.add_argument("--bin-dir", help="where the release binaries are")
    ap.add_argument("--self-test", action="store_true", help="check the checks on made-up data, then exit")
    ap.add_argument("--work", default=os.environ.get("SOAK_DIR"),
                    help="work directory (default: a new one under /var/tmp); must not be tmpfs")
    ap.add_argument("--seed", type=int, default=int(os.environ.get("SOAK_SEED", "0")) or None)
    ap.add_argument("--keep", action="store_true", default=bool(os.environ.get("SOAK_KEEP")),
                    help="keep the work directory after a passing run (a failing run keeps it always)")
    args = ap.parse_args()
    if args.self_test:
        self_test()
        return 0
    if not args.bin_dir:
        ap.error("--bin-dir is required (scripts/soak passes it)")
    args.rate = env_float("SOAK_RATE", 20.0)                        # steady messages/s
    args.burst_every = env_range("SOAK_BURST_EVERY", (30, 120))     # s between bursts
    args.burst_size = env_range("SOAK_BURST_SIZE", (200, 3000))     # messages per burst
    args.fault_every = env_range("SOAK_FAULT_EVERY", (10, 40))      # s between faults
    args.kill_every = env_range("SOAK_KILL_EVERY", (15, 150))       # s between SIGKILLs
    args.drain_timeout = env_float("SOAK_DRAIN_TIMEOUT", 300)
    args.redeliver_after = os.environ.get("SOAK_REDELIVER_AFTER", "15s")
    args.max_redeliveries = int(os.environ.get("SOAK_MAX_REDELIVERIES", "1000"))
    seed = args.seed if args.seed is not None else random.randrange(1, 2**31)
    rng = random.Random(seed)

    sim_bin = os.path.join(args.bin_dir, "dingtalk-streamd-sim")
    daemon_bin = os.path.join(args.bin_dir, "dingtalk-streamd")
    for b in (sim_bin, daemon_bin):
        if not os.access(b, os.X_OK):
            sys.exit(f"missing {b}: build with cargo build --release --workspace --bins")

    work = args.work or tempfile.mkdtemp(prefix="dingtalk-streamd-soak.", dir="/var/tmp")
    work = os.path.abspath(work)
    os.makedirs(os.path.join(work, "spool"), exist_ok=True)
    kind = fs_type(os.path.join(work, "spool"))
    if kind in ("tmpfs", "ramfs") and not os.environ.get("SOAK_ALLOW_TMPFS"):
        sys.exit(f"{work} is on {kind}: fsync means nothing there; set SOAK_DIR to a real disk")

    atexit.register(cleanup_children)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    started = datetime.datetime.now(datetime.timezone.utc)
    t_start = time.monotonic()
    log(f"work dir {work} ({kind}); seed {seed}; {args.minutes:g} min; rate {args.rate:g}/s")
    world = World()
    notify = Notify(os.path.join(work, "notify.sock"))

    sim = Sim(sim_bin, work, args)
    if not sim.wait_config(30):
        sys.exit("the simulator did not write its config; see sim.log")
    config = os.path.join(work, "config.yml")
    with open(os.path.join(work, "sim-config.yml")) as f:
        base = f.read()
    # Owner-only: it holds the client secret inline (the daemon refuses it readable by all).
    with open(os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(base)
        f.write(f"groups: [{GROUP}]\n"
                "reconnect:\n  initial_delay: 100ms\n  max_delay: 2s\n"
                "log:\n  level: info\n")
    cc = subprocess.run([daemon_bin, "--config", config, "check-config"], capture_output=True, text=True)
    with open(os.path.join(work, "effective-config.yml"), "w") as f:
        f.write(cc.stdout + cc.stderr)
    if cc.returncode != 0:
        sys.exit(f"check-config failed:\n{cc.stdout}{cc.stderr}")

    daemon = Daemon(daemon_bin, config, work, notify, world)
    daemon.start()
    log(f"daemon ready (pid {daemon.proc.pid}); simulator pid {sim.proc.pid}")

    sock_path = os.path.join(work, "stream.sock")
    rx = Received(os.path.join(work, "received.ndjson"))
    load = Load(sim, random.Random(rng.random()), args.rate, args.burst_every, args.burst_size)
    faults = Faults(sim, random.Random(rng.random()), args.fault_every, load)

    def sampler():
        while not world.stop.wait(1.0):
            daemon.sample()

    threads = [
        threading.Thread(target=sampler, name="sampler", daemon=True),
        threading.Thread(target=member_loop, args=(world, rx, sock_path, "m1", random.Random(rng.random()), True),
                         name="member-1", daemon=True),
        threading.Thread(target=member_loop, args=(world, rx, sock_path, "m2", random.Random(rng.random()), False),
                         name="member-2", daemon=True),
        threading.Thread(target=tap_loop, args=(world, rx, sock_path, random.Random(rng.random())),
                         name="tap", daemon=True),
    ]
    load_t = threading.Thread(target=load.run, args=(world,), name="load", daemon=True)
    faults_t = threading.Thread(target=faults.run, args=(world,), name="faults", daemon=True)
    for t in threads + [load_t, faults_t]:
        t.start()

    # The main thread: kills and restarts (children are spawned from here only), progress.
    end = t_start + args.minutes * 60
    next_kill = time.monotonic() + rng.uniform(*args.kill_every)
    kill_on_burst = None  # else: kill after the first burst past this count of bursts
    kills_on_burst = 0
    next_progress = time.monotonic() + 60
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if sim.proc.poll() is not None:
            sys.exit(f"the simulator exited with status {sim.proc.returncode}; see {work}/sim.log")
        daemon.check_alive()
        if now >= next_kill and kill_on_burst is not None:
            # Some kills land just after a burst was written: frames in flight, commits under
            # way, a backlog being delivered.
            if load.bursts > kill_on_burst:
                next_kill = now + rng.uniform(0, 1.5)
                kill_on_burst = None
                kills_on_burst += 1
        elif now >= next_kill:
            daemon.sigkill()
            daemon.start()
            next_kill = time.monotonic() + rng.uniform(*args.kill_every)
            kill_on_burst = load.bursts if rng.random() < 0.3 else None
        if now >= next_progress:
            st = sim.status() or {}
            log(f"{(now - t_start) / 60:5.1f} min: pushed {st.get('pushed', '?')}, ACKed {st.get('acked', '?')}, "
                f"awaiting {st.get('awaiting', '?')}; group lines {rx.lines}; kills {daemon.kills}; "
                f"faults {sum(faults.count.values())}; RSS peak {daemon.peak_rss_kib // 1024} MiB; "
                f"fds peak {daemon.peak_fds}")
            next_progress += 60
        # Randomised pauses are the workload here; the cap notices a daemon that died alone and
        # a burst a kill waits for.
        cap = 0.1 if kill_on_burst is not None else 1.0
        time.sleep(max(0.0, min(cap, min(next_kill, end, next_progress) - time.monotonic())))

    # ---- drain: no more faults, kills or load; the group catches up.
    load_duration = time.monotonic() - t_start
    log("load, faults and kills stop; draining")
    world.draining.set()
    load_t.join()
    faults_t.join()
    faults.calm()
    daemon.check_alive()
    ack_log = os.path.join(work, "ack.log")
    drain_start = time.monotonic()
    drained = False
    last = None
    while time.monotonic() - drain_start < args.drain_timeout:
        daemon.check_alive()
        st = sim.status() or {}
        pushed, acked, _ = read_ack_log(ack_log)
        not_sent = count_not_sent(os.path.join(work, "sim.log"))
        with rx.lock:
            missing = sum(1 for m in acked if m not in rx.seq_of_id)
        ds = control(os.path.join(work, "control.sock")) or {}
        g = (ds.get("groups") or {}).get(GROUP, {})
        state = (st.get("awaiting"), len(pushed) + not_sent, load.written, len(acked), missing,
                 g.get("backlog"), g.get("in_flight"))
        if state != last:
            log(f"drain: awaiting ACK {st.get('awaiting')}, pushed+not sent {len(pushed) + not_sent}/{load.written}, "
                f"ACKed {len(acked)}, not yet received {missing}, group backlog {g.get('backlog')} "
                f"in flight {g.get('in_flight')}")
            last = state
        if (st.get("awaiting") == 0 and len(pushed) + not_sent == load.written
                and len(acked) == len(pushed) and missing == 0
                and g.get("backlog") == 0 and g.get("in_flight") == 0):
            drained = True
            break
        with rx.cond:
            rx.cond.wait(1.0)  # woken by every line the group receives
    drain_s = time.monotonic() - drain_start
    final_status = control(os.path.join(work, "control.sock"))
    daemon.tally()
    sim_status = sim.status()

    # ---- stop everything, then check.
    term = daemon.sigterm()
    world.stop.set()
    sim.send("/quit\n")
    try:
        sim.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        sim.proc.terminate()
        sim.proc.wait(timeout=10)
    for t in threads:
        t.join(timeout=5)
    duration = time.monotonic() - t_start

    res = check(work, rx, os.path.join(work, "spool", "spool.db"))
    not_sent = count_not_sent(os.path.join(work, "sim.log"))
    g = ((final_status or {}).get("groups") or {}).get(GROUP, {})
    spool_stats = (final_status or {}).get("spool") or {}
    failures = []
    if res["lost"]:
        failures.append(f"{len(res['lost'])} ACKed messages never reached the group")
    if res["stored_twice"]:
        failures.append(f"{len(res['stored_twice'])} messages stored twice")
    if res["seq_conflicts"]:
        failures.append(f"{len(res['seq_conflicts'])} seqs carried two different messages")
    if res["unknown"]:
        failures.append(f"{len(res['unknown'])} received messages the simulator never pushed")
    if res["spool"]["body_dups"] or res["spool"]["key_disagreements"]:
        failures.append("the spool file disagrees (see spool check)")
    if not drained:
        failures.append(f"the drain did not finish within {args.drain_timeout:g}s")
    if res["never_acked"]:
        failures.append(f"{len(res['never_acked'])} pushed messages never ACKed")
    if g.get("parked"):
        failures.append(f"{g.get('parked')} messages parked: the group may not have seen them, inconclusive")
    if daemon.unexpected_exits:
        failures.append(f"the daemon exited by itself {len(daemon.unexpected_exits)} times")
    if term != 0:
        failures.append(f"the daemon's SIGTERM exit was {term}")

    summary = {
        "command": " ".join([f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("SOAK_")]
                            + [f"scripts/soak {args.minutes:g}"]),
        "date": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "work_dir": work, "filesystem": kind, "seed": seed,
        "duration_s": round(duration, 1), "load_s": round(load_duration, 1), "drain_s": round(drain_s, 1),
        "rate_per_s": args.rate, "bursts": load.bursts, "burst_messages": load.burst_messages,
        "messages_written": load.written, "messages_not_sent": not_sent,
        "pushed": res["pushed"], "acked": res["acked"], "never_acked": len(res["never_acked"]),
        "acked_system_frames": res["acked_other"],
        "sim": sim_status,
        "faults": faults.count, "faults_total": sum(faults.count.values()), "faults_into_a_burst": faults.in_burst,
        "kills": daemon.kills, "kills_just_after_a_burst": kills_on_burst, "daemon_starts": daemon.starts,
        "ready_after_start_s_max": round(max(daemon.ready_times), 3),
        "unexpected_exits": daemon.unexpected_exits,
        "daemon_counters_summed": daemon.totals,
        "group_lines": rx.lines, "group_redelivered_lines": rx.redelivered_lines,
        "group_same_seq_repeats": rx.repeats, "group_distinct_seqs": res["seqs"], "seq_gaps": res["seq_gaps"],
        "group_errors": rx.errors, "tap_lines": rx.tap_lines, "tap_errors": rx.tap_errors,
        "lost": len(res["lost"]), "stored_twice": len(res["stored_twice"]),
        "seq_conflicts": len(res["seq_conflicts"]), "unknown": len(res["unknown"]),
        "final_group": {k: g.get(k) for k in ("backlog", "in_flight", "parked", "delivered", "redelivered", "acked")},
        "final_spool_duplicates_since_last_start": spool_stats.get("duplicates"),
        "spool_check": {k: v for k, v in res["spool"].items() if k not in ("body_dups", "key_disagreements")}
        | {"body_dups": len(res["spool"]["body_dups"]), "key_disagreements": len(res["spool"]["key_disagreements"])},
        "peak_rss_mib": round(daemon.peak_rss_kib / 1024, 1),
        "peak_rss_sampled_mib": round(daemon.peak_rss_now_kib / 1024, 1),
        "peak_fds": daemon.peak_fds,
        "failures": failures,
    }
    details = {k: res[k] for k in ("lost", "stored_twice", "twice_ids", "twice_msgids", "seq_conflicts",
                                   "unknown", "never_acked")}
    details["spool"] = res["spool"]
    with open(os.path.join(work, "summary.json"), "w") as f:
        json.dump(summary | {"details": details}, f, indent=1, default=str)

    print_summary(summary, details)
    if failures:
        log(f"FAILED; evidence kept in {work}")
        return 1
    log("PASSED")
    if args.keep or args.work:
        log(f"work dir kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def count_not_sent(path):
    n = 0
    try:
        with open(path, "rb") as f:
            for line in f:
                if b"bot message not sent" in line:
                    n += 1
    except OSError:
        pass
    return n


def print_summary(s, details):
    f = s["faults"]
    sc = s["spool_check"]
    print()
    print("=" * 72)
    print(f"soak summary ({s['date']}, {s['machine']})")
    print(f"  duration          {s['duration_s'] / 60:.1f} min (load {s['load_s'] / 60:.1f} min, drain {s['drain_s']:.0f} s)")
    print(f"  messages          written {s['messages_written']} (steady {s['rate_per_s']:g}/s + {s['bursts']} bursts "
          f"of {s['burst_messages']} in all), not sent (no connection for 30 s) {s['messages_not_sent']}")
    print(f"  simulator         pushed {s['pushed']}, ACKed {s['acked']}, never ACKed {s['never_acked']}, "
          f"(+{s['acked_system_frames']} SYSTEM disconnect ACKs), "
          f"redeliveries {(s['sim'] or {}).get('redelivered', '?')}, connections {(s['sim'] or {}).get('opened', '?')}, "
          f"tickets {(s['sim'] or {}).get('tickets', '?')}")
    print(f"  faults            {s['faults_total']} ({s['faults_into_a_burst']} within 0.5 s after a burst): "
          + ", ".join(f"{k} {v}" for k, v in f.items()))
    print(f"  SIGKILLs          {s['kills']} ({s['kills_just_after_a_burst']} within 1.5 s after a burst; starts {s['daemon_starts']}, READY within {s['ready_after_start_s_max']} s "
          f"at most, unexpected exits {len(s['unexpected_exits'])})")
    t = s["daemon_counters_summed"]
    print(f"  daemon counters   (summed over its lives, read just before each kill, so a little low) frames in "
          f"{t.get('frames_in')}, stored {t.get('stored')}, redeliveries deduplicated {t.get('duplicates')}")
    print(f"  group '{GROUP}'       lines {s['group_lines']}, distinct seqs {s['group_distinct_seqs']}, "
          f"same-seq repeats {s['group_same_seq_repeats']} (redelivered {s['group_redelivered_lines']}), "
          f"seq gaps {s['seq_gaps']}, errors {s['group_errors'] or 0}")
    print(f"  tap               lines {s['tap_lines']}, errors {s['tap_errors'] or 0}")
    print(f"  final group       {s['final_group']}")
    print(f"  spool file        {sc.get('recognised')}: {sc.get('body_rows')} bodies, {sc.get('keys_matched')} dedupe keys "
          f"matched to the group's seqs, {sc.get('body_dups')} duplicates, {sc.get('key_disagreements')} disagreements "
          f"{sc.get('note') or ''}")
    print(f"  daemon            peak RSS {s['peak_rss_mib']} MiB (VmHWM; sampled VmRSS max {s['peak_rss_sampled_mib']} MiB), "
          f"peak fds {s['peak_fds']}")
    print(f"  LOST              {s['lost']}")
    print(f"  STORED TWICE      {s['stored_twice']}")
    for name in ("lost", "stored_twice", "seq_conflicts", "unknown", "never_acked"):
        if details[name]:
            sample = list(details[name])[:10]
            print(f"  {name}: {sample}{' ...' if len(details[name]) > 10 else ''}")
    for k in ("twice_ids", "twice_msgids", "seq_conflicts"):
        for ident, seqs in list(details[k].items())[:10]:
            print(f"    {k} {ident}: seqs {seqs}")
    print(f"  work dir          {s['work_dir']} (seed {s['seed']})")
    print(f"  result            {'FAIL: ' + '; '.join(s['failures']) if s['failures'] else 'PASS'}")
    print("=" * 72)


if __name__ == "__main__":
    sys.exit(main())
