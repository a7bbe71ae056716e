"""Processes, the simulator's ACK log and /proc readings for scripts/bench (stdlib only).

Every wait has a deadline and names its stage: a failure says which step did not happen and
where its logs are.
"""
import os
import signal
import socket
import struct
import subprocess
import threading
import time


class BenchError(Exception):
    """A stage did not complete; the message names it."""


def fail(stage, detail, *logs):
    tails = []
    for path in logs:
        try:
            with open(path, errors="replace") as f:
                last = f.readlines()[-12:]
            tails.append(f"--- last lines of {path}:\n" + "".join(last).rstrip())
        except OSError:
            pass
    raise BenchError(f"stage '{stage}': {detail}" + ("\n" + "\n".join(tails) if tails else ""))


def wait_until(cond, timeout, stage, detail, *logs, every=0.02):
    """Polls cond() until it returns something truthy (returned) or fails the stage."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            fail(stage, f"{detail} (waited {timeout:.0f} s)", *logs)
        time.sleep(every)


class Proc:
    """A child process in its own session; stdout lines are collected (and logged)."""

    live = []

    def __init__(self, name, argv, log_dir, env=None, cwd=None, stdin=False, merge_stderr=False):
        self.name = name
        self.out_path = os.path.join(log_dir, f"{name}.out")
        self.err_path = self.out_path if merge_stderr else os.path.join(log_dir, f"{name}.err")
        self.lines = []
        self.cv = threading.Condition()
        out = open(self.out_path, "w")
        err = subprocess.STDOUT if merge_stderr else open(self.err_path, "w")
        self.started_us = now_us()  # just before the exec
        try:
            self.p = subprocess.Popen(
                [str(a) for a in argv], env=env, cwd=cwd, start_new_session=True,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=err)
        except OSError as e:
            fail(f"start {name}", f"cannot run {argv[0]}: {e}")
        Proc.live.append(self)
        self.pid = self.p.pid
        threading.Thread(target=self._read, args=(out,), daemon=True).start()

    def _read(self, out):
        for raw in self.p.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            out.write(line + "\n")
            out.flush()
            with self.cv:
                self.lines.append(line)
                self.cv.notify_all()
        with self.cv:
            self.cv.notify_all()

    def send(self, text):
        try:
            self.p.stdin.write(text.encode())
            self.p.stdin.flush()
        except OSError as e:
            fail(f"command to {self.name}", f"{text.strip()!r} not written: {e}", self.err_path)

    def wait_line(self, prefix, timeout, stage, start=0):
        """The first stdout line at index >= start that starts with prefix."""
        deadline = time.monotonic() + timeout
        i = start
        with self.cv:
            while True:
                while i < len(self.lines):
                    if self.lines[i].startswith(prefix):
                        return self.lines[i]
                    i += 1
                if self.p.poll() is not None and i >= len(self.lines):
                    fail(stage, f"{self.name} exited ({self.p.returncode}) before printing "
                                f"{prefix!r}", self.err_path, self.out_path)
                left = deadline - time.monotonic()
                if left <= 0:
                    fail(stage, f"{self.name} did not print {prefix!r} within {timeout:.0f} s",
                         self.err_path, self.out_path)
                self.cv.wait(min(left, 0.5))

    def alive(self):
        return self.p.poll() is None

    def check_alive(self, stage):
        if not self.alive():
            fail(stage, f"{self.name} exited with status {self.p.returncode}",
                 self.err_path, self.out_path)

    def stop(self, sig=signal.SIGTERM, timeout=10):
        """Signals the process group we started, then waits (SIGKILL after timeout)."""
        if self.p.poll() is None:
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.p.wait()
        if self in Proc.live:
            Proc.live.remove(self)

    @classmethod
    def stop_all(cls):
        for p in list(reversed(cls.live)):
            p.stop(timeout=5)


class AckLog:
    """Tails the simulator's ACK log written with --ack-log-times."""

    def __init__(self, path):
        self.path = path
        self.offset = 0
        self.rest = b""
        self.pushed = {}
        self.order = []
        self.acked = {}

    def poll(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return self
        self.offset += len(data)
        *lines, self.rest = (self.rest + data).split(b"\n")
        for line in lines:
            f = line.split()
            if f[0] == b"pushed":
                mid = f[1].decode()
                self.pushed[mid] = int(f[3])
                self.order.append(mid)
            elif f[0] == b"acked":
                self.acked[f[1].decode()] = int(f[2])
        return self


def cpu_ticks(pid):
    """utime + stime of the whole process (all threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def cpu_split(pid):
    """(utime, stime) of the whole process, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def thread_ticks(pid):
    """utime + stime per thread name (threads of one name added up), in clock ticks."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                text = f.read()
        except OSError:
            continue  # the thread ended meanwhile
        name = text[text.index("(") + 1:text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0) + int(fields[11]) + int(fields[12])
    return out


def dir_bytes(path):
    """Bytes of the regular files directly in path (a spool: database, WAL, lock)."""
    total = 0
    for name in os.listdir(path):
        st = os.stat(os.path.join(path, name))
        if not os.path.isdir(os.path.join(path, name)):
            total += st.st_size
    return total


class Notify:
    """An sd_notify socket (NOTIFY_SOCKET) owned by the bench: records when each pid said
    READY=1 (wall clock µs), so a daemon's start-up can be timed without polling."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.cv = threading.Condition()
        self.ready = {}
        self.closed = False
        self.thread = threading.Thread(target=self._run, name="notify", daemon=True)
        self.thread.start()

    def _run(self):
        space = socket.CMSG_SPACE(struct.calcsize("iII"))
        while True:
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(65536, space)
            except OSError:
                return
            if self.closed:
                return
            t = now_us()
            pid = None
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("iII", cdata[:struct.calcsize("iII")])[0]
            if "READY=1" in data.decode("utf-8", "replace").splitlines():
                with self.cv:
                    self.ready.setdefault(pid, t)
                    self.cv.notify_all()

    def wait_ready(self, proc, timeout, stage):
        """Wall clock µs at which proc's pid said READY=1, or fails the stage."""
        deadline = time.monotonic() + timeout
        with self.cv:
            while proc.pid not in self.ready:
                proc.check_alive(stage)
                left = deadline - time.monotonic()
                if left <= 0:
                    fail(stage, f"{proc.name} did not send READY=1 within {timeout:.0f} s",
                         proc.err_path)
                self.cv.wait(min(left, 0.5))
            return self.ready[proc.pid]

    def close(self):
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the receiving thread
        except OSError:
            pass
        self.thread.join(2)
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


def mem_kib(pid, key):
    """VmRSS / VmHWM in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def wait_quiet(pids, stage, quiet=0.3, timeout=8.0):
    """Waits until none of pids used CPU for `quiet` seconds (best effort, bounded)."""
    deadline = time.monotonic() + timeout
    last = [cpu_ticks(p) for p in pids]
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = [cpu_ticks(p) for p in pids]
        if now == last:
            return True
        last = now
    return False


def pressure_us(kind):
    """Total µs some task waited for `kind` (cpu, io) since boot (Linux PSI), or None."""
    try:
        with open(f"/proc/pressure/{kind}") as f:
            return int(f.readline().rsplit("total=", 1)[1])
    except (OSError, IndexError, ValueError):
        return None


def wait_calm(max_wait, cpu=0.20, io=0.10, sample=1.0):
    """Before a run (none of our processes running): waits up to max_wait seconds for a
    `sample`-second stretch in which tasks waited for a CPU less than `cpu` and for I/O less
    than `io` of the time (Linux PSI "some"). Returns (calm, waited_s, cpu_share, io_share);
    without PSI it returns at once."""
    started = time.monotonic()
    while True:
        c0, i0, t0 = pressure_us("cpu"), pressure_us("io"), time.monotonic()
        if c0 is None or i0 is None:
            return True, 0.0, None, None
        time.sleep(sample)
        dt = (time.monotonic() - t0) * 1e6
        c, i = (pressure_us("cpu") - c0) / dt, (pressure_us("io") - i0) / dt
        waited = time.monotonic() - started
        if (c < cpu and i < io) or waited >= max_wait:
            return c < cpu and i < io, waited, c, i


def now_us():
    return time.time_ns() // 1000
