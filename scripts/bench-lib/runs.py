"""One measured run of scripts/bench: a fresh simulator, one client set-up, a warm-up, then a
burst, a paced run or a burst under strace. Returns plain numbers (see `measure`).

Clients: "daemon" (dingtalk-streamd + a tap + an acking group member, both consumer.py),
"tap" (dingtalk-streamd with one tap and no group: the configuration of the CPU must),
"python" (py_bot.py on the official SDK), "node" (node_bot.mjs on the official SDK), "sink"
(the simulator's trivial Rust client, examples/ack_sink.rs: the simulator's ceiling).
"""
import json
import os
import shutil
import socket
import time

from procs import (AckLog, BenchError, Proc, cpu_split, cpu_ticks, fail, mem_kib, now_us,
                   pressure_us, thread_ticks, wait_calm, wait_quiet, wait_until)

HERE = os.path.dirname(os.path.abspath(__file__))
TAIL_S = 1.5  # CPU keeps being counted this long after the last ACK (deferred work)
REDO = 2  # a run whose tap the daemon cut off is done again, at most this many times


class TapDropped(BenchError):
    """The daemon cut off the bench's tap (its queue overflowed: the consumer, not the daemon,
    fell behind, e.g. descheduled on a busy machine); the run measured less work."""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def daemon_status(control):
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(2)
        s.connect(control)
        s.sendall(b'{"cmd":"status"}\n')
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        s.close()
        return json.loads(buf)
    except (OSError, ValueError):
        return None


class Run:
    def __init__(self, env, kind, client, tag):
        self.env, self.kind, self.client = env, kind, client
        self.dir = os.path.join(env.work, f"{kind}-{client}-{tag}")
        os.makedirs(self.dir)
        self.label = f"{kind} {client} {tag}"
        self.acks = AckLog(os.path.join(self.dir, "acks.log"))
        self.procs = []
        # Knobs for the other stages (scripts/bench --only trust|window): the simulator's
        # redelivery, what is appended to the daemon's config, and ACK latencies for a burst
        # too (a paced run always has them).
        self.redeliver_after = "off"
        self.config_extra = "groups: [bench]\n" if client == "daemon" else ""
        self.ack_latency = False
        # The simulator writes the daemon's config.
        self.writes_config = client in ("daemon", "tap")

    def start(self, name, argv, **kw):
        p = Proc(name, argv, self.dir, **kw)
        self.procs.append(p)
        return p

    # --- set-up -------------------------------------------------------------------------
    def start_sim(self):
        e, d = self.env, self.dir
        argv = [e.sim_bin, "--listen", f"127.0.0.1:{e.port}", "--state-dir", f"{d}/sim",
                "--ping-interval", "off", "--redeliver-after", self.redeliver_after,
                "--ack-log", self.acks.path, "--ack-log-times"]
        if self.writes_config:
            argv += ["--write-config", f"{d}/config.yml", "--spool-dir", f"{d}/spool",
                     "--socket", f"{d}/stream.sock", "--control", f"{d}/control.sock"]
        env = dict(os.environ, RUST_LOG="warn")
        self.sim = self.start("sim", argv, env=env, stdin=True)
        self.sim.wait_line("  open_url:", 30, f"{self.label}: simulator start")
        self.ca = f"{d}/sim/ca.pem"
        self.open_url = f"https://127.0.0.1:{e.port}/v1.0/gateway/connections/open"

    def sim_status(self):
        """The simulator's /status counts: {"open connections": n, "pushed": n, ...}."""
        self.sim.check_alive(f"{self.label}: simulator")
        start = len(self.sim.lines)
        self.sim.send("/status\n")
        line = self.sim.wait_line("status: ", 10, f"{self.label}: simulator /status", start)
        counts = {}
        for part in line[len("status: "):].split(" [")[0].split("; "):
            key, _, value = part.rpartition(": ")
            if value.isdigit():
                counts[key] = int(value)
        return counts

    def sim_open_connections(self):
        return self.sim_status()["open connections"]

    def start_client(self, marks, record):
        e, d, stage = self.env, self.dir, f"{self.label}: start {self.client}"
        marks = ",".join(str(m) for m in marks)
        base = dict(os.environ, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
        self.consumers = []
        self.records = {}
        if self.client in ("daemon", "tap"):
            with open(f"{d}/config.yml", "a") as f:
                f.write(self.config_extra)
            os.makedirs(f"{d}/spool")
            self.measured = self.start("daemon", [e.daemon_bin, "--config", f"{d}/config.yml", "run"])
            sock, ctl, daemon = f"{d}/stream.sock", f"{d}/control.sock", self.measured

            def sockets():
                daemon.check_alive(stage)
                return os.path.exists(sock) and os.path.exists(ctl)

            def connected():
                daemon.check_alive(stage)
                return (daemon_status(ctl) or {}).get("state") == "connected"
            wait_until(sockets, 30, stage, "the daemon's sockets did not appear", daemon.err_path)
            wait_until(connected, 30, stage, "the daemon did not report state=connected",
                       daemon.err_path)
            roles = ("tap", "member") if self.client == "daemon" else ("tap",)
            for role in roles:
                argv = [e.python, f"{HERE}/consumer.py", sock, role, "--marks", marks]
                if record:
                    self.records[role] = f"{d}/{role}.rec"
                    argv += ["--record", self.records[role]]
                c = self.start(role, argv)
                c.wait_line("ready", 10, f"{stage}: consumer {role}")
                self.consumers.append(c)

            def attached():
                st = daemon_status(ctl) or {}
                return (st.get("consumers", {}).get("taps", 0) >= 1
                        and (len(roles) == 1
                             or st.get("groups", {}).get("bench", {}).get("members", 0) >= 1))
            wait_until(attached, 10, stage, f"daemon status never showed {' and '.join(roles)}",
                       self.measured.err_path)
            self.control = ctl
        elif self.client == "python":
            env = dict(base, DINGTALK_OPENAPI_ENDPOINT=f"https://127.0.0.1:{e.port}",
                       REQUESTS_CA_BUNDLE=self.ca, SSL_CERT_FILE=self.ca, BENCH_MARKS=marks)
            if record:
                env["BENCH_RECORD"] = self.records["bot"] = f"{d}/bot.rec"
            self.measured = self.start("pybot", [e.venv_python, f"{HERE}/py_bot.py"], env=env)
            self.consumers = [self.measured]
        elif self.client == "node":
            env = dict(base, NODE_EXTRA_CA_CERTS=self.ca, BENCH_MARKS=marks)
            if record:
                env["BENCH_RECORD"] = self.records["bot"] = f"{d}/bot.rec"
            self.measured = self.start("nodebot", [e.node, "node_bot.mjs"], env=env, cwd=e.node_dir)
            self.consumers = [self.measured]
        else:
            self.measured = self.start("sink", [e.sink_bin, self.open_url, self.ca])
            self.measured.wait_line("connected", 30, stage)
        def client_connected():
            self.measured.check_alive(stage)
            return self.sim_open_connections() >= 1
        wait_until(client_connected, 30, stage,
                   f"{self.client} never opened a connection to the simulator",
                   self.measured.err_path, self.measured.out_path)

    # --- measuring ----------------------------------------------------------------------
    def wait_pushed_and_acked(self, total, timeout, stage):
        def done():
            self.measured.check_alive(stage)
            self.acks.poll()
            return len(self.acks.order) >= total and all(
                m in self.acks.acked for m in self.acks.order[:total])
        wait_until(done, timeout, stage,
                   f"not every one of {total} pushed messages was ACKed "
                   f"({len(self.acks.acked)} ACKed so far)",
                   self.measured.err_path, self.sim.err_path, every=0.05)

    def check_taps(self, stage):
        """Raises TapDropped if the daemon's status counts a tap cut off for being slow."""
        control = getattr(self, "control", None)
        st = daemon_status(control) if control else None
        dropped = (st or {}).get("consumers", {}).get("taps_dropped_slow", 0)
        if dropped:
            raise TapDropped(f"stage '{stage}': the daemon cut off {dropped} tap(s) that did not "
                             "keep up (consumers.taps_dropped_slow)")

    def seen_times(self, mark, timeout, stage):
        return [int(c.wait_line(f"seen {mark} ", timeout, stage).split()[2])
                for c in self.consumers]

    def measure(self, n, warmup, rate=None, strace=False, during=None):
        """Warm-up, then the measured push (/burst n, or /pace n rate); returns numbers.
        `during` (optional) has start(run), called after the quiet wait just before the CPU
        readings that open the window, and stop(run) -> dict, called after the window closed;
        its dict is merged into the result."""
        e, stage = self.env, self.label
        total = warmup + n
        record = rate is not None
        self.start_sim()
        self.start_client([warmup, total], record)
        pid = self.measured.pid
        rss_cold = mem_kib(pid, "VmRSS")
        self.sim.send(f"/burst {warmup}\n")
        self.wait_pushed_and_acked(warmup, 60, f"{stage}: warm-up of {warmup}")
        self.seen_times(warmup, 60, f"{stage}: warm-up seen by consumers")
        watched = [pid] + [c.pid for c in self.consumers if c is not self.measured]
        wait_quiet(watched, stage)
        rss_idle = mem_kib(pid, "VmRSS")
        tracer = None
        if strace:
            out = f"{self.dir}/strace.txt"
            tracer = self.start("strace", ["strace", "-f", "-c", "-o", out, "-p", pid],
                                merge_stderr=True)
            tracer.wait_line("strace: Process", 20, f"{stage}: strace attach")
            wait_quiet([pid], stage)
        others = [c for c in self.consumers if c is not self.measured]
        if during:
            during.start(self)
        th0, split0 = thread_ticks(pid), cpu_split(pid)
        c0, s0, k0 = cpu_ticks(pid), cpu_ticks(self.sim.pid), [cpu_ticks(c.pid) for c in others]
        psi0 = {k: pressure_us(k) for k in ("cpu", "io")}
        t0 = now_us()
        self.sim.send(f"/pace {n} {rate}\n" if rate else f"/burst {n}\n")
        timeout = max(120.0, n / (rate or 100) * 2) * (10 if strace else 1)
        self.wait_pushed_and_acked(total, timeout, f"{stage}: {n} messages ACKed")
        self.check_taps(stage)
        try:
            seen = self.seen_times(total, 60, f"{stage}: every message seen by consumers")
        except BenchError:
            self.check_taps(stage)
            raise
        ids = self.acks.order[warmup:total]
        first_push = min(self.acks.pushed[m] for m in ids)
        last_ack = max(self.acks.acked[m] for m in ids)
        end = max([last_ack] + seen) + TAIL_S * 1e6
        while now_us() < end:  # the measurement window's deliberate tail
            time.sleep(min(0.1, max(0.0, (end - now_us()) / 1e6)))
        self.measured.check_alive(f"{stage}: after the window")
        c1, s1, k1 = cpu_ticks(pid), cpu_ticks(self.sim.pid), [cpu_ticks(c.pid) for c in others]
        psi1, t1 = {k: pressure_us(k) for k in ("cpu", "io")}, now_us()
        th1, split1 = thread_ticks(pid), cpu_split(pid)
        hz = os.sysconf("SC_CLK_TCK")
        r = {
            "n": n, "warmup": warmup, "rate_target": rate,
            "ack_rate": n / max(1e-6, (last_ack - first_push) / 1e6),
            "ack_span_s": (last_ack - first_push) / 1e6,
            "seen_span_s": [(s - first_push) / 1e6 for s in seen],
            "window_s": (end - t0) / 1e6,
            "cpu_s": (c1 - c0) / hz, "sim_cpu_s": (s1 - s0) / hz,
            "consumers_cpu_s": sum(b - a for a, b in zip(k0, k1)) / hz,
            "rss_cold_kib": rss_cold, "rss_idle_kib": rss_idle,
            "rss_peak_kib": mem_kib(pid, "VmHWM"),
            # Share of the window in which some task waited for a CPU / for I/O (PSI "some");
            # at 1,000 msg/s our own processes need well under one of the cores, so most of
            # the CPU pressure in a paced run is other work on the machine.
            "psi_some": {k: (psi1[k] - psi0[k]) / (t1 - t0) if psi0[k] is not None else None
                         for k in psi0},
        }
        # CPU by thread name in the window (threads that started or ended inside it count
        # what /proc still shows at the end).
        r["thread_cpu_s"] = {k: (v - th0.get(k, 0)) / hz for k, v in th1.items()
                             if v - th0.get(k, 0) > 0}
        r["utime_s"], r["stime_s"] = ((b - a) / hz for a, b in zip(split0, split1))
        if during:
            r.update(during.stop(self))
        r["cpu_us_per_msg"] = r["cpu_s"] / n * 1e6
        r["sim_cpu_us_per_msg"] = r["sim_cpu_s"] / n * 1e6
        r["consumers_cpu_us_per_msg"] = r["consumers_cpu_s"] / n * 1e6
        if record or self.ack_latency:
            r["ack_ms"] = [round((self.acks.acked[m] - self.acks.pushed[m]) / 1e3, 3) for m in ids]
        if record:
            for who, path in self.records.items():
                seen_at = {}
                with open(path) as f:
                    for line in f:
                        t, mid = line.split()
                        seen_at.setdefault(mid, int(t))
                missing = [m for m in ids if m not in seen_at]
                if missing:
                    fail(f"{stage}: end-to-end records", f"{who} has no record of {len(missing)} "
                         f"messages, e.g. {missing[0]}", path)
                r[f"e2e_ms_{who}"] = [round((seen_at[m] - self.acks.pushed[m]) / 1e3, 3) for m in ids]
            r["pace_line"] = self.sim.wait_line("pace: ", 10, f"{stage}: pace report")
        if tracer:
            tracer.stop(sig=2, timeout=30)
            r["syscalls"] = parse_strace(f"{self.dir}/strace.txt", stage)
            r["syscalls_per_msg"] = r["syscalls"]["total"] / n
        return r

    def close(self):
        for p in reversed(self.procs):
            p.stop()
        shutil.rmtree(os.path.join(self.dir, "spool"), ignore_errors=True)


def parse_strace(path, stage):
    """`strace -c` summary: {"total": calls, "top": [(name, calls), ...]}."""
    rows, total = [], None
    try:
        with open(path) as f:
            for line in f:
                fields = line.split()
                if not fields or fields[0].startswith(("%", "-")):
                    continue
                if fields[-1] == "total":
                    total = int(fields[3])
                elif len(fields) >= 5 and fields[3].isdigit():
                    rows.append((fields[-1], int(fields[3])))
    except OSError as e:
        fail(stage, f"no strace summary: {e}")
    if total is None:
        fail(stage, "strace summary has no total line", path)
    rows.sort(key=lambda r: -r[1])
    return {"total": total, "top": rows[:5]}


def wait_for_calm(env, label):
    """Waits (up to env.calm_wait s, from a budget of env.calm_budget s for the whole stage)
    for the shared machine to be calm; returns what it found, to keep with the run."""
    calm, waited, cpu, io = wait_calm(max(0.0, min(env.calm_wait, env.calm_budget)))
    env.calm_budget -= waited
    if waited >= 2:
        print(f"[bench] {label}: waited {waited:.0f} s for a calm machine"
              + ("" if calm else " (not calm; measuring anyway)"), flush=True)
    return {"calm": calm, "waited_s": round(waited, 1), "cpu": cpu, "io": io}


def one(env, kind, client, tag, cls=Run, setup=None, **kw):
    """One run of `cls` (a Run), after waiting for the shared machine to be calm; `setup(run)`
    may adjust the run before it starts. A run whose tap the daemon cut off is done again (up
    to REDO times, each in its own directory); the result lists why in "redone"."""
    redone = []
    for attempt in range(REDO + 1):
        calm_before = wait_for_calm(env, f"{kind} {client}")
        run = cls(env, kind, client, tag if attempt == 0 else f"{tag}.redo{attempt}")
        try:
            if setup:
                setup(run)
            r = run.measure(**kw)
        except TapDropped as e:
            if attempt == REDO:
                raise
            redone.append(str(e))
            print(f"[bench] {run.label}: {e}; doing the run again", flush=True)
            continue
        finally:
            run.close()
        r["calm_before"] = calm_before
        r["redone"] = redone
        return r
