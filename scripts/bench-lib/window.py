"""Stage "window" of scripts/bench (`--only window`): the cost per message with a full dedupe
window.

The daemon (every setting at its default, `spool.dedupe_window` 1 h; no groups; one tap)
takes a 20,000-message burst of the usual mix on
  empty:   a fresh, empty spool;
  expired: a used spool whose window is empty: 300,000 small bot messages went through it
           with `spool.max_age` and `spool.dedupe_window` at 1 s, so their receipts are gone
           but the database's free pages and the WAL's size are those of a filled spool (the
           baseline for the targets: a fresh spool also pays for growing its files);
  fill:    a spool whose dedupe window holds 300,000 small bot messages (the targets: CPU
           per message ≤ 1.3× the empty window's and ≤ 12 µs);
  full:    one whose window holds 1,000,000.
"Holds N" is the daemon's own figure, `spool.dedupe_keys` in status, which counts receipts
(one per message); the index itself holds a hash per key, two per bot message (messageId and
msgId): its size is read from the daemon's "spool opened" debug line (`keys=`).
The spools are filled once, through the simulator (`/fill N`: small bot messages, each with
the two keys a real one gives, a messageId and a msgId) and a daemon; with no group the
bodies leave at the next retention pass and the receipts stay for the window, as in
production with taps only. Every measured run starts a fresh simulator and a daemon on a copy
of the filled spool (a restart: the dedupe index is rebuilt from the receipts), timed to
READY=1 (sd_notify, sent once the spool is open and the index built) and to `connected`; RSS
once connected and quiet is the index memory plus the daemon's base. Then the tap, a warm-up,
quiet, and the burst: CPU (utime + stime) from just before it to 1.5 s after the last ACK, as
in the SDK comparison. The cases are interleaved, 3 runs each (1 with --quick).
"""
import os
import shutil
import statistics

import report
import runs
import trust
from procs import (Notify, Proc, cpu_ticks, dir_bytes, fail, mem_kib, now_us, wait_quiet,
                   wait_until)

HEADING = "## A full dedupe window"
END = "<!-- end of the scripts/bench --only window section -->"
AFTER = (trust.END, report.END)
HERE = os.path.dirname(os.path.abspath(__file__))
CASES = ("empty", "expired", "fill", "full")
BASE = "expired"  # the like-for-like empty window (a used spool)
# For the expired spool's fill: receipts and bodies leave at once.
EXPIRE_CONFIG = "  max_age: 1s\n  dedupe_window: 1s\n"
# Only the spool's store module logs at debug: its one line at open gives the index size.
LOG_CONFIG = 'log:\n  level: "info,dingtalk_streamd::spool::store=debug"\n'
TARGET_RATIO, TARGET_US = 1.3, 12.0  # the 300,000-message spool against the empty window


def copy_spool(src, dst):
    """Copies a stopped daemon's spool directory and makes the copy durable first, so the
    daemon's first fsync does not also write back hundreds of MB of copied pages."""
    shutil.copytree(src, dst)
    for name in os.listdir(dst):
        path = os.path.join(dst, name)
        if os.path.isfile(path):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fd = os.open(dst, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def opened_keys(err_path):
    """The index size from the daemon's `spool opened ... keys=N` debug line (None: none)."""
    with open(err_path, errors="replace") as f:
        for line in f:
            if "spool opened" in line and " keys=" in line:
                return int(line.split(" keys=")[1].split()[0])
    return None


def wait_connected(daemon, control, stage, timeout=60):
    def connected():
        daemon.check_alive(stage)
        st = runs.daemon_status(control)
        return st if st and st.get("state") == "connected" else None
    return wait_until(connected, timeout, stage, "the daemon did not report state=connected",
                      daemon.err_path)


class WindowRun(runs.Run):
    """A daemon with one tap, on an empty spool or a copy of a filled one, its start timed."""

    spool_src = None

    def __init__(self, env, kind, client, tag):
        super().__init__(env, kind, client, tag)
        self.writes_config = True

    def start_client(self, marks, record):
        e, d, stage = self.env, self.dir, f"{self.label}: start the daemon"
        with open(f"{d}/config.yml", "a") as f:
            f.write(self.config_extra)
        spool = f"{d}/spool"
        if self.spool_src:
            copy_spool(self.spool_src, spool)
        else:
            os.makedirs(spool)
        spool_bytes = dir_bytes(spool)
        wal = os.path.join(spool, "spool.db-wal")
        wal_bytes = os.path.getsize(wal) if os.path.exists(wal) else 0
        self.notify = Notify(f"{d}/notify.sock")
        env = dict(os.environ, NOTIFY_SOCKET=self.notify.path)
        daemon = self.measured = self.start(
            "daemon", [e.daemon_bin, "--config", f"{d}/config.yml", "run"], env=env)
        ready = self.notify.wait_ready(daemon, 300, f"{stage}: READY=1")
        index_keys = opened_keys(daemon.err_path)
        self.control = f"{d}/control.sock"
        st = wait_connected(daemon, self.control, stage)
        connected = now_us()
        hwm_start = mem_kib(daemon.pid, "VmHWM")
        wait_quiet([daemon.pid], stage)
        rss_start = mem_kib(daemon.pid, "VmRSS")
        rss_parts = {k: mem_kib(daemon.pid, k) for k in ("RssAnon", "RssFile", "RssShmem")}
        tap = self.start("tap", [e.python, f"{HERE}/consumer.py", f"{d}/stream.sock", "tap",
                                 "--marks", ",".join(str(m) for m in marks)])
        tap.wait_line("ready", 10, f"{stage}: tap")
        self.consumers = [tap]
        wait_until(lambda: (runs.daemon_status(self.control) or {}).get("consumers", {})
                   .get("taps", 0) >= 1, 10, stage, "daemon status never showed the tap",
                   daemon.err_path)
        self.startup = {
            "ready_s": (ready - daemon.started_us) / 1e6,
            "connected_s": (connected - daemon.started_us) / 1e6,
            "rss_start_kib": rss_start, "hwm_start_kib": hwm_start, "rss_parts_kib": rss_parts,
            "spool_bytes": spool_bytes, "wal_bytes": wal_bytes, "file_bytes": st["spool"]["file_bytes"],
            "dedupe_keys": st["spool"]["dedupe_keys"], "messages": st["spool"]["messages"],
            "newest_seq": st["spool"]["newest_seq"], "index_keys": index_keys,
        }

    def measure(self, **kw):
        r = super().measure(**kw)
        r["startup"] = self.startup
        return r

    def close(self):
        super().close()
        if getattr(self, "notify", None):
            self.notify.close()


class WindowProbe:
    """Daemon status around the burst."""

    def start(self, run):
        self.before = trust.status_or_fail(run, f"{run.label}: status before")

    def stop(self, run):
        after = trust.status_or_fail(run, f"{run.label}: status after")
        b, a = self.before, after
        return {
            "keys_before": b["spool"]["dedupe_keys"], "keys_after": a["spool"]["dedupe_keys"],
            "stored": a["spool"]["stored"] - b["spool"]["stored"],
            "duplicates": a["spool"]["duplicates"] - b["spool"]["duplicates"],
            "batches": a["spool"]["batches"] - b["spool"]["batches"],
            "reader_pauses": a["stream"]["reader_pauses"] - b["stream"]["reader_pauses"],
            "file_bytes_after": a["spool"]["file_bytes"],
        }


def add_spool_settings(path, lines):
    """Adds `lines` (indented settings) to the `spool:` section of the config at path."""
    with open(path) as f:
        text = f.read()
    at = text.find("\nspool:\n")
    if at < 0:
        fail("window: config", f"no spool: section in {path}")
    at += len("\nspool:\n")
    with open(path, "w") as f:
        f.write(text[:at] + lines + text[at:])


def prefill(env, spool, n, label, expire=False):
    """Pushes n fill messages (`/fill n`) through a daemon on `spool` (made if missing), waits
    until they are ACKed and their bodies left (no groups), stops it; returns numbers. With
    `expire`, the daemon keeps receipts for 1 s only and the wait is also for every receipt
    to have gone (an empty window in a used spool)."""
    d = os.path.join(env.work, f"window-fill-{label}")
    os.makedirs(d)
    os.makedirs(spool, exist_ok=True)
    stage = f"window: fill {label}"
    procs = []
    notify = None
    try:
        sim = Proc("sim", [env.sim_bin, "--listen", f"127.0.0.1:{env.port}", "--state-dir",
                           f"{d}/sim", "--ping-interval", "off", "--redeliver-after", "off",
                           "--write-config", f"{d}/config.yml", "--spool-dir", spool,
                           "--socket", f"{d}/stream.sock", "--control", f"{d}/control.sock"],
                   d, env=dict(os.environ, RUST_LOG="warn"), stdin=True)
        procs.append(sim)
        sim.wait_line("  open_url:", 30, f"{stage}: simulator start")
        with open(f"{d}/config.yml", "a") as f:
            f.write(LOG_CONFIG)
        if expire:
            add_spool_settings(f"{d}/config.yml", EXPIRE_CONFIG)
        notify = Notify(f"{d}/notify.sock")
        daemon = Proc("daemon", [env.daemon_bin, "--config", f"{d}/config.yml", "run"], d,
                      env=dict(os.environ, NOTIFY_SOCKET=notify.path))
        procs.append(daemon)
        ready = notify.wait_ready(daemon, 300, f"{stage}: READY=1")
        control = f"{d}/control.sock"
        st0 = wait_connected(daemon, control, stage)
        c0, t0 = cpu_ticks(daemon.pid), now_us()
        sim.send(f"/fill {n}\n")
        line = sim.wait_line("fill", max(300, n / 500), f"{stage}: /fill {n}")
        if not line.startswith("fill: "):
            fail(stage, line, daemon.err_path, sim.err_path)

        def settled():
            daemon.check_alive(stage)
            st = runs.daemon_status(control) or {}
            sp = st.get("spool", {})
            done = sp.get("pending_acks") == 0 and sp.get("messages") == 0
            return st if done and (not expire or sp.get("dedupe_keys") == 0) else None
        st = wait_until(settled, 120, stage, "the bodies did not leave the spool (no groups: "
                        "the next retention pass should delete them)"
                        + (" or the receipts did not expire" if expire else ""),
                        daemon.err_path, every=0.2)
        c1, t1 = cpu_ticks(daemon.pid), now_us()
        hz = os.sysconf("SC_CLK_TCK")
        out = {
            "n": n, "sim_line": line, "fill_s": float(line.split(" in ")[1].split(" s")[0]),
            "daemon_cpu_us_per_msg": (c1 - c0) / hz / max(1, n) * 1e6,
            "settled_s": (t1 - t0) / 1e6,
            "keys_before": st0["spool"]["dedupe_keys"], "keys": st["spool"]["dedupe_keys"],
            "ready_s": (ready - daemon.started_us) / 1e6,
            "index_keys_at_start": opened_keys(daemon.err_path),
            "rss_kib": mem_kib(daemon.pid, "VmRSS"), "hwm_kib": mem_kib(daemon.pid, "VmHWM"),
        }
        daemon.stop(timeout=60)
        out["spool_bytes"] = dir_bytes(spool)
        return out
    finally:
        for p in reversed(procs):
            p.stop()
        if notify:
            notify.close()


def run_stage(env, progress):
    q = env.quick
    n_burst, warmup, repeat = (3000, 100, 1) if q else (20000, 200, 3)
    fill_msgs = int(os.environ.get("BENCH_WINDOW_FILL", 30000 if q else 300000))
    want_keys = int(os.environ.get("BENCH_WINDOW_FULL", 100000 if q else 1000000))
    res = {"stage": "window",
           "config": {"n_burst": n_burst, "warmup": warmup, "repeat": repeat, "quick": q,
                      "fill_msgs": fill_msgs, "want_keys": want_keys, "calm_wait": env.calm_wait},
           "fills": {}, "cases": {c: [] for c in CASES}}
    spools = {c: os.path.join(env.work, f"window-spool-{c}") for c in ("expired", "fill", "full")}
    # Three filled spools and a run's copy of the largest at once: ~1.1 KB per message filled
    # (receipts, the freed body pages, and a WAL that grows during a fill at full speed and
    # keeps its size), plus headroom.
    need = (2 * fill_msgs + 2 * want_keys) * 1100 + 300e6
    st = os.statvfs(env.work)
    free = st.f_bavail * st.f_frsize
    if free < need:
        fail("window: disk space", f"{free / 1e9:.1f} GB free under {env.work}, the filled "
             f"spools need about {need / 1e9:.1f} GB (BENCH_WINDOW_FILL / BENCH_WINDOW_FULL "
             "make them smaller)")
    try:
        f0 = prefill(env, spools["expired"], fill_msgs, "expired", expire=True)
        res["fills"]["expired"] = f0
        progress(f"window fill, expired: {fill_msgs:,} small messages in {f0['fill_s']:.1f} s, "
                 f"{f0['keys']:,} left in the window after {f0['settled_s']:.1f} s, spool "
                 f"{f0['spool_bytes'] / 1e6:.0f} MB")
        f1 = prefill(env, spools["fill"], fill_msgs, "fill")
        res["fills"]["fill"] = f1
        progress(f"window fill: {fill_msgs:,} small messages in {f1['fill_s']:.1f} s "
                 f"({fill_msgs / f1['fill_s']:,.0f}/s), daemon {f1['daemon_cpu_us_per_msg']:.1f} µs/msg; "
                 f"{f1['keys']:,} in the window (index {f1['index_keys_at_start']} keys at the start), "
                 f"spool {f1['spool_bytes'] / 1e6:.0f} MB")
        copy_spool(spools["fill"], spools["full"])
        more = max(0, want_keys - f1["keys"])
        f2 = prefill(env, spools["full"], more, "full")
        res["fills"]["full"] = f2
        progress(f"window fill to {want_keys:,}: {more:,} more in {f2['fill_s']:.1f} s; "
                 f"{f2['keys']:,} in the window, spool {f2['spool_bytes'] / 1e6:.0f} MB; the "
                 f"daemon's start on the {f2['keys_before']:,} spool: READY after {f2['ready_s']:.2f} s "
                 f"(index {f2['index_keys_at_start']} keys)")
        for rep in range(repeat):
            order = CASES[rep % len(CASES):] + CASES[:rep % len(CASES)]
            for case in order:
                def setup(run, case=case):
                    run.config_extra = LOG_CONFIG
                    run.spool_src = spools.get(case)
                r = runs.one(env, "window", case, rep + 1, cls=WindowRun, setup=setup,
                             n=n_burst, warmup=warmup, during=WindowProbe())
                res["cases"][case].append(r)
                s = r["startup"]
                progress(f"window {rep + 1}/{repeat} {case:7s}: {r['keys_before']:>9,} in the window, "
                         f"index {s['index_keys']} keys: "
                         f"{r['cpu_us_per_msg']:5.1f} µs/msg CPU, {r['ack_rate']:7,.0f} ACKed msg/s; "
                         f"READY {s['ready_s']:.2f} s, connected {s['connected_s']:.2f} s, "
                         f"RSS after start {s['rss_start_kib'] / 1024:.1f} MiB, peak "
                         f"{r['rss_peak_kib'] / 1024:.1f} MiB; spool {s['spool_bytes'] / 1e6:.0f} MB")
    finally:
        for path in spools.values():
            shutil.rmtree(path, ignore_errors=True)
    return res


# --- the section ------------------------------------------------------------------------------

def section(res, info):
    cfg, cases = res["config"], res["cases"]
    nb, rep = cfg["n_burst"], cfg["repeat"]
    fills = res["fills"]
    med = {c: statistics.median(r["cpu_us_per_msg"] for r in cases[c]) for c in CASES}
    # In the window at the start (status `spool.dedupe_keys`: receipts, one per message) and
    # the index's key hashes then (the daemon's "spool opened ... keys=" line).
    held = {c: statistics.median(r["startup"]["dedupe_keys"] for r in cases[c]) for c in CASES}
    hashes = {c: statistics.median(r["startup"].get("index_keys") or 0 for r in cases[c])
              for c in CASES}

    def col(c):
        if c == "empty":
            return "fresh spool"
        if c == "expired":
            return (f"empty window in a used spool ({cfg['fill_msgs']:,} messages expired; "
                    "the baseline)")
        return (f"{held[c]:,.0f} messages in the window (`spool.dedupe_keys`; "
                f"{hashes[c]:,.0f} key hashes in the index)")
    f1 = lambda v: f"{v:.1f}"  # noqa: E731
    f2 = lambda v: f"{v:.2f}"  # noqa: E731
    f0 = lambda v: f"{v:,.0f}"  # noqa: E731

    def each(f):
        return " | ".join(f(cases[c]) for c in CASES)

    def ms(f, fmt, unit=""):
        return lambda rs: trust.med_spread([f(r) for r in rs], fmt, unit)
    ratio = {c: med[c] / med[BASE] for c in CASES}
    fresh = {c: med[c] / med["empty"] for c in CASES}
    ok = lambda b: "met" if b else "**missed**"  # noqa: E731
    verdict = (f"**Against the targets** ({held['fill']:,.0f} messages in the window, medians): "
               f"CPU ≤ {TARGET_RATIO}× the empty window's {ok(ratio['fill'] <= TARGET_RATIO)} "
               f"({ratio['fill']:.2f}×; {fresh['fill']:.2f}× a fresh spool's) and ≤ {TARGET_US:g} µs "
               f"per message {ok(med['fill'] <= TARGET_US)} ({med['fill']:.1f} µs). With "
               f"{held['full']:,.0f}: {ratio['full']:.2f}× ({fresh['full']:.2f}×), "
               f"{med['full']:.1f} µs. A restart with {held['full']:,.0f} in the window: "
               f"READY=1 after {statistics.median(r['startup']['ready_s'] for r in cases['full']):.2f} s.")
    rss0 = statistics.median(r["startup"]["rss_start_kib"] for r in cases[BASE])
    med_of = f" (median of {rep}; min–max)" if rep > 1 else ""
    rows = [
        (f"**daemon CPU µs per message**, {nb:,}-message burst{med_of}",
         each(ms(lambda r: r["cpu_us_per_msg"], f1))),
        ("… user / system (kernel) µs per message (medians)", each(
            lambda rs: f"{statistics.median(r['utime_s'] for r in rs) / nb * 1e6:.1f} / "
                       f"{statistics.median(r['stime_s'] for r in rs) / nb * 1e6:.1f}")),
        ("… relative to the empty window in a used spool; to the fresh spool (medians)",
         " | ".join(f"**{ratio[c]:.2f}×**; {fresh[c]:.2f}×" for c in CASES)),
        ("ACKed msg/s (first push → last ACK)", each(ms(lambda r: r["ack_rate"], f0))),
        ("start: exec → READY=1 (spool open, index rebuilt), s",
         each(ms(lambda r: r["startup"]["ready_s"], f2))),
        ("start: exec → `connected`, s", each(ms(lambda r: r["startup"]["connected_s"], f2))),
        ("RSS after start (connected, quiet, no consumer yet), MiB",
         each(ms(lambda r: r["startup"]["rss_start_kib"] / 1024, f1))),
        ("… of which anonymous (heap) / file-backed + shared (binary, libraries, the WAL index), MiB",
         each(lambda rs: f"{statistics.median(r['startup']['rss_parts_kib']['RssAnon'] for r in rs) / 1024:.1f} / "
                         f"{statistics.median(r['startup']['rss_parts_kib']['RssFile'] + r['startup']['rss_parts_kib']['RssShmem'] for r in rs) / 1024:.1f}")),
        ("… minus the empty window's: the dedupe index plus SQLite's page cache (≤ 16 MiB), "
         "MiB; bytes per message / per key hash",
         " | ".join("–" if c in ("empty", BASE) else
                    (lambda extra: f"{extra / 1024:.1f}; {extra * 1024 / max(1, held[c]):.0f} B / "
                                   f"{extra * 1024 / max(1, hashes[c]):.0f} B")(
                        statistics.median(r["startup"]["rss_start_kib"] for r in cases[c]) - rss0)
                    for c in CASES)),
        ("VmHWM at start (the rebuild's peak) → after the burst, MiB", each(
            lambda rs: f"{statistics.median(r['startup']['hwm_start_kib'] for r in rs) / 1024:.1f} → "
                       f"{statistics.median(r['rss_peak_kib'] for r in rs) / 1024:.1f}")),
        ("spool on disk at start: database + WAL, MB (of which the WAL)",
         each(lambda rs: f"{statistics.median(r['startup']['spool_bytes'] for r in rs) / 1e6:.0f} "
                         f"({statistics.median(r['startup'].get('wal_bytes', 0) for r in rs) / 1e6:.0f})")),
        ("commits in the burst (`spool.batches`); messages per commit", each(
            lambda rs: f"{statistics.median(r['batches'] for r in rs):,.0f}; "
                       f"{statistics.median(r['stored'] / max(1, r['batches']) for r in rs):.0f}")),
        ("redeliveries recognised in the burst (`spool.duplicates`; the mix has none)",
         each(lambda rs: ", ".join(str(r["duplicates"]) for r in rs))),
    ]
    head = "| measure | " + " | ".join(col(c) for c in CASES) + " |"
    t = [head, "|---|" + "---:|" * len(CASES)] + [f"| {a} | {b} |" for a, b in rows]

    notes = []
    for c in CASES:
        rs = sorted(cases[c], key=lambda r: r["cpu_us_per_msg"])
        r = rs[(len(rs) - 1) // 2]
        th = sorted(r.get("thread_cpu_s", {}).items(), key=lambda kv: -kv[1])
        total = sum(v for _, v in th) or 1
        label = {"empty": "fresh-spool", BASE: "empty-window"}.get(c, f"{held[c]:,.0f}-message-window")
        notes.append(f"Where the daemon's CPU went in the median {label} run ({r['cpu_s']:.2f} s "
                     f"for {nb:,} messages), by thread: " + ", ".join(
                         f"{k} {v:.2f} s ({v / total:.0%})" for k, v in th[:5]) + ".")
    fl = fills.get("fill")
    fk = fills.get("full")
    if fl and fk:
        notes.append(
            f"Filling: `/fill {fl['n']}` took {fl['fill_s']:.1f} s ({fl['n'] / fl['fill_s']:,.0f} "
            f"small messages/s; the daemon {fl['daemon_cpu_us_per_msg']:.1f} µs each) and left "
            f"{fl['keys']:,} messages in the window; `/fill {fk['n']}` on top of a copy, after a "
            f"restart on it (READY after {fk['ready_s']:.2f} s, index {fk['index_keys_at_start']} keys), "
            f"took {fk['fill_s']:.1f} s "
            f"({fk['n'] / max(fk['fill_s'], 1e-9):,.0f}/s, {fk['daemon_cpu_us_per_msg']:.1f} µs each) "
            f"and left {fk['keys']:,}; spools after the fills: {fl['spool_bytes'] / 1e6:.0f} MB "
            f"and {fk['spool_bytes'] / 1e6:.0f} MB (database + WAL, which a clean stop leaves in "
            f"place). A fill "
            f"message is a ≈0.55 KB bot message frame (≈0.2 KB of data) with two keys (messageId, msgId).")
    fe = fills.get("expired")
    if fe:
        notes.append(
            f"The empty window in a used spool: `/fill {fe['n']}` through a daemon with "
            f"`spool.max_age` and `spool.dedupe_window` at 1 s took {fe['fill_s']:.1f} s; "
            f"{fe['settled_s']:.1f} s after the first push every body and receipt had gone "
            f"(`spool.dedupe_keys` {fe['keys']}), leaving a {fe['spool_bytes'] / 1e6:.0f} MB spool. "
            "The runs on it use the default 1 h window like the others. A fresh spool is not "
            "the same baseline: its database and WAL grow during the burst (more system time), "
            "where a used one reuses free pages and a WAL file of full size.")
    notes.append("CPU / I/O pressure (PSI some) during each burst's window: " + "; ".join(
        f"{c} " + ", ".join(f"{trust.psi(r, 'cpu')}/{trust.psi(r, 'io')}" for r in cases[c])
        for c in CASES) + ".")
    every = [r for c in CASES for r in cases[c]]
    uncalm = sum(1 for r in every if not r.get("calm_before", {}).get("calm", True))
    waited = sum(r.get("calm_before", {}).get("waited_s", 0) for r in every)
    notes.extend(report.redone_notes(every))
    notes.append(f"Before each of the {len(every)} runs the script waited for one calm second "
                 f"(CPU pressure < 20 %, I/O < 10 %): {waited:.0f} s of waiting in all"
                 + (f"; {uncalm} run(s) started without one after {cfg.get('calm_wait', '?')} s."
                    if uncalm else "; every run started calm."))
    quick = cfg["quick"]
    return "\n".join([
        HEADING,
        "",
        "<!-- Written by scripts/bench --only window (or a full scripts/bench): running it again "
        "replaces everything from the heading above to the end marker below. -->",
        "",
        f"Command: `{info.get('env', '')}scripts/bench --only window{' --quick' if quick else ''}` (this stage: "
        f"{info['minutes']:.0f} min, {info['started']}); also part of a full `scripts/bench`. "
        f"`BENCH_WINDOW_FILL` / `BENCH_WINDOW_FULL` change the two spool sizes "
        f"(now {cfg['fill_msgs']:,} / {cfg['want_keys']:,} messages in the window).",
        "",
        report.machine_line(info),
        "",
        report.versions_line(info, sdks=False),
        "",
        "**Method:** the release daemon with the config `dingtalk-streamd-sim --write-config` "
        "writes and every other setting at its default (`spool.dedupe_window` 1 h, no groups; "
        "`log.level` adds `dingtalk_streamd::spool::store=debug` for its one line at open, which "
        "gives the index size), "
        f"one tap (`scripts/bench-lib/consumer.py`); a {nb:,}-message `/burst` of the SDK "
        "comparison's mix over TLS on 127.0.0.1 (pings and redelivery off). The spools are "
        f"filled once, before the runs: `/fill {cfg['fill_msgs']}` (the simulator's small bot "
        "messages, pushed as fast as they are ACKed) through a daemon on a fresh spool, then a "
        f"copy of it topped up to {cfg['want_keys']:,}; with no group the bodies leave at the "
        "next retention pass (the script waits for `spool.messages` 0) and the receipts stay for "
        "the window. The baseline is an empty window in a used spool: the same fill through a "
        "daemon whose receipts expire after 1 s (the script waits for `spool.dedupe_keys` 0); "
        "a fresh spool is shown too. Every run starts a fresh simulator and a daemon on a fresh copy of its spool "
        "(fsynced, so hot in the page cache, as after a restart; a cold-cache start is slower): "
        "the dedupe index is rebuilt from the receipts. Start-up is timed from the exec to "
        "`READY=1` on a `NOTIFY_SOCKET` the script owns (sent once the spool is open and the "
        "index built) and to `status` saying `connected`; RSS is read once connected and quiet. "
        f"Then the tap, a {cfg['warmup']}-message warm-up, quiet, and the burst: CPU = utime + "
        "stime of the daemon (all threads, `/proc/PID/stat`, 10 ms ticks) from just before the "
        "burst command to 1.5 s after the last ACK (or the tap's last line), ÷ burst size, as "
        "in the SDK comparison; per thread from `/proc/PID/task/*/stat`. The four cases are "
        "interleaved.",
        "",
        verdict,
        "",
        "\n".join(t),
        "",
        "Notes from this run:",
        "",
        *[f"- {n}" for n in notes],
        "",
        END,
    ])
