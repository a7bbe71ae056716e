"""Stage "trust" of scripts/bench (`--only trust`): bursts, pauses and scrapes.

The release daemon with every limit at its default (one tap and one acking group member, as in
the SDK comparison; `metrics.listen` on in every run):
1. burst: a 20,000-message burst of the ~1 KB mix, once left alone and once scraped the way
   monitoring does (100 `GET /metrics` per second on metrics.listen and 10 `{"cmd":"status"}`
   per second on the control socket, scripts/bench-lib/scraper.py, from just before the
   burst to the end of its window): peak RSS (VmHWM), ACK latency (p50/p99/max over the
   burst's messages), what the daemon's status says about its reader meanwhile
   (`stream.reader_pauses`, `stream.reader_paused_ms`, `stream.stalls`, deltas), and whether
   the burst was ACKed on the one connection it started on (the simulator's connection count
   and redeliveries; the simulator redelivers after 20 s, so a dropped connection shows as a
   second connection rather than as a hang) with no consumer dropped or refused.
2. paced: 10,000 messages at 1,000/s, once left alone and once scraped: ACK latency side by
   side, the daemon's CPU, and the CPU one request costs on the quiet daemon afterwards.
Each 3 times (1 with --quick), the pairs in alternating order.
"""
import json
import os
import statistics

import report
import runs
import scraper
from procs import cpu_ticks, fail, mem_kib, wait_quiet

HEADING = "## Bursts, pauses and scrapes"
END = "<!-- end of the scripts/bench --only trust section -->"
AFTER = (report.END,)  # a new section goes after the SDK comparison
HERE = os.path.dirname(os.path.abspath(__file__))
RSS_TARGET_MIB = 96  # peak RSS of the scraped burst, every run
REDELIVER_AFTER = "20s"
STREAM_KEYS = ("reader_pauses", "reader_paused_ms", "stalls", "frames_in", "acks_sent")
CONSUMER_KEYS = ("taps_dropped_slow", "refused")
MODES = ("without", "with")


def status_or_fail(run, stage):
    st = runs.daemon_status(run.control)
    if st is None:
        fail(stage, "the daemon's control socket did not answer status", run.measured.err_path)
    return st


class TrustProbe:
    """Around a run's measured window: the daemon's status and the simulator's counts; with
    `scrape`, the scraper from just before the first push to the end of the window; with
    n_idle > 0 (and scrape), then the CPU one request costs on the quiet daemon."""

    def __init__(self, scrape, metrics_addr, metrics_rate, status_rate, n_idle=0):
        self.scrape, self.addr = scrape, metrics_addr
        self.metrics_rate, self.status_rate = metrics_rate, status_rate
        self.n_idle = n_idle

    def start(self, run):
        self.before = status_or_fail(run, f"{run.label}: status before")
        self.scraper = None
        if self.scrape:
            self.scraper = run.start("scraper", [
                run.env.python, f"{HERE}/scraper.py", "--metrics", self.addr,
                "--metrics-rate", self.metrics_rate, "--control", run.control,
                "--status-rate", self.status_rate], stdin=True)
            self.scraper.wait_line("ready", 15, f"{run.label}: scraper start")

    def stop(self, run):
        out = {}
        if self.scraper:
            self.scraper.send("stop\n")
            line = self.scraper.wait_line("summary ", 20, f"{run.label}: scraper summary")
            out["scrapes"] = json.loads(line[len("summary "):])
            for kind, s in out["scrapes"].items():
                if s["failed"]:
                    fail(f"{run.label}: scraping", f"{s['failed']} of {s['sent']} {kind} requests "
                         f"failed, e.g. {s['errors'][:1]}", self.scraper.out_path)
        b, a = self.before, status_or_fail(run, f"{run.label}: status after")
        sim = run.sim_status()
        out.update({
            "stream_delta": {k: a["stream"][k] - b["stream"][k] for k in STREAM_KEYS},
            "consumers_delta": {k: a["consumers"][k] - b["consumers"][k] for k in CONSUMER_KEYS},
            "daemon_connections_opened": a["link"]["connections_opened"],
            "sim_connections_opened": sim.get("connections opened"),
            "sim_redelivered": sim.get("redelivered"),
            "sim_pushed": sim.get("pushed"),
            "rss_after_kib": mem_kib(run.measured.pid, "VmRSS"),
            "spool_after": {k: a["spool"][k] for k in ("stored", "duplicates", "batches",
                                                       "pending_acks", "file_bytes")},
        })
        if self.scraper and self.n_idle:
            out["idle_cost_us"] = self.idle_cost(run)
        return out

    def idle_cost(self, run):
        """The daemon's CPU per request, once the messages are done and it is quiet: n_idle
        requests of each kind back to back from here."""
        pid, hz = run.measured.pid, os.sysconf("SC_CLK_TCK")
        wait_quiet([pid], f"{run.label}: quiet before the idle requests")
        cost = {}
        for kind, call in (("metrics", lambda: scraper.get_metrics(self.addr)),
                           ("status", lambda: scraper.get_status(run.control))):
            c0 = cpu_ticks(pid)
            try:
                for _ in range(self.n_idle):
                    call()
            except OSError as e:
                fail(f"{run.label}: idle {kind} requests", str(e), run.measured.err_path)
            cost[kind] = (cpu_ticks(pid) - c0) / hz / self.n_idle * 1e6
        return cost


def shed(r):
    """What a run lost: connections beyond the first, redeliveries, stalls, consumers cut off
    or refused ([] = nothing)."""
    out = []
    if r["sim_connections_opened"] != 1 or r["daemon_connections_opened"] != 1:
        out.append(f"{r['sim_connections_opened']} connections")
    if r["sim_redelivered"]:
        out.append(f"{r['sim_redelivered']} redelivered")
    if r["stream_delta"]["stalls"]:
        out.append(f"{r['stream_delta']['stalls']} stalls")
    for k, v in r.get("consumers_delta", {}).items():
        if v:
            out.append(f"{v} {k}")
    return out


def run_stage(env, progress):
    q = env.quick
    n_burst, n_pace, rate, warmup, repeat = ((3000, 2000, 1000, 100, 1) if q
                                             else (20000, 10000, 1000, 200, 3))
    metrics_rate, status_rate = 100, 10
    n_idle = 300 if q else 2000  # requests of each kind back to back, for the cost of one
    res = {"stage": "trust", "config": {"n_burst": n_burst, "n_pace": n_pace, "rate": rate,
                                        "warmup": warmup, "repeat": repeat, "quick": q,
                                        "metrics_rate": metrics_rate, "status_rate": status_rate,
                                        "redeliver_after": REDELIVER_AFTER, "n_idle": n_idle,
                                        "calm_wait": env.calm_wait},
           "burst": {m: [] for m in MODES}, "paced": {m: [] for m in MODES}}

    def setup(addr, burst):
        def f(run):
            run.redeliver_after = REDELIVER_AFTER
            run.config_extra = f"groups: [bench]\nmetrics:\n  listen: \"{addr}\"\n"
            run.ack_latency = burst
        return f

    def scraped(r):
        if "scrapes" not in r:
            return ""
        m, s = r["scrapes"]["metrics"], r["scrapes"]["status"]
        out = (f"; {m['sent']} scrapes ({m['rate']:.0f}/s, p99 {m['ms_p99']:.1f} ms), "
               f"{s['sent']} status ({s['rate']:.0f}/s)")
        if "idle_cost_us" in r:
            c = r["idle_cost_us"]
            out += (f"; idle cost {c['metrics']:.0f} / {c['status']:.0f} µs CPU per metrics / "
                    "status request")
        return out

    for rep in range(repeat):
        for mode in (MODES if rep % 2 == 0 else MODES[::-1]):
            addr = f"127.0.0.1:{runs.free_port()}"
            r = runs.one(env, f"trust-burst-{mode}", "daemon", rep + 1, setup=setup(addr, True),
                         n=n_burst, warmup=warmup,
                         during=TrustProbe(mode == "with", addr, metrics_rate, status_rate))
            r["mode"] = mode
            res["burst"][mode].append(r)
            d = r["stream_delta"]
            progress(f"trust burst {rep + 1}/{repeat} {mode:7s} scrapes: peak RSS "
                     f"{r['rss_peak_kib'] / 1024:.1f} MiB, ACK p50/p99/max {report.pcts(r['ack_ms'])}, "
                     f"{r['ack_rate']:,.0f} ACKed msg/s, reader pauses {d['reader_pauses']} "
                     f"({d['reader_paused_ms']} ms), shed: {', '.join(shed(r)) or 'nothing'}"
                     + scraped(r))
    for rep in range(repeat):
        for mode in (MODES if rep % 2 == 0 else MODES[::-1]):
            addr = f"127.0.0.1:{runs.free_port()}"
            probe = TrustProbe(mode == "with", addr, metrics_rate, status_rate, n_idle)
            r = runs.one(env, f"trust-paced-{mode}", "daemon", rep + 1, setup=setup(addr, False),
                         n=n_pace, warmup=warmup, rate=rate, during=probe)
            r["mode"] = mode
            res["paced"][mode].append(r)
            progress(f"trust paced {rep + 1}/{repeat} {mode:7s} scrapes: ACK p50/p99/max "
                     f"{report.pcts(r['ack_ms'])}, daemon {r['cpu_us_per_msg']:.1f} µs/msg"
                     f"{scraped(r)}; shed: {', '.join(shed(r)) or 'nothing'}; PSI some cpu/io "
                     + "/".join("?" if v is None else f"{v:.0%}" for v in r["psi_some"].values()))
    return res


# --- the section ------------------------------------------------------------------------------

def mib(kib):
    return kib / 1024


def med_spread(values, fmt, unit=""):
    m = statistics.median(values)
    cell = f"**{fmt(m)}**{unit}"
    if len(values) > 1:
        cell += f" ({fmt(min(values))}–{fmt(max(values))})"
    return cell


def lat_cell(runs_, key="ack_ms"):
    """Median over the runs of each of p50 / p99 / max, and the p99 spread."""
    p50 = [report.pct(r[key], .5) for r in runs_]
    p99 = [report.pct(r[key], .99) for r in runs_]
    mx = [max(r[key]) for r in runs_]
    cell = (f"{report.ms(statistics.median(p50))} / **{report.ms(statistics.median(p99))}** / "
            f"{report.ms(statistics.median(mx))} ms")
    if len(runs_) > 1:
        cell += f" (p99 {report.ms(min(p99))}–{report.ms(max(p99))})"
    return cell


def psi(r, k):
    v = r.get("psi_some", {}).get(k)
    return "?" if v is None else f"{v:.0%}"


def scrape_cell(rs, kind):
    """The scraper's figures for one kind of request over the runs `rs`."""
    ss = [r["scrapes"][kind] for r in rs]
    return (f"{sum(s['sent'] for s in ss):,} sent, {sum(s['failed'] for s in ss)} failed; "
            f"{statistics.median(s['rate'] for s in ss):.0f}/s; answered in p50 "
            f"{report.ms(statistics.median(s['ms_p50'] for s in ss))} / p99 "
            f"{report.ms(statistics.median(s['ms_p99'] for s in ss))} / max "
            f"{report.ms(max(s['ms_max'] for s in ss))} ms; "
            f"{statistics.median(s['bytes_avg'] for s in ss) / 1024:.1f} KiB each")


def section(res, info):
    cfg = res["config"]
    nb, npace, rate, rep = cfg["n_burst"], cfg["n_pace"], cfg["rate"], cfg["repeat"]
    bw, bq = res["burst"]["without"], res["burst"]["with"]
    mr, sr = cfg["metrics_rate"], cfg["status_rate"]
    med_of = f" (median of {rep}; min–max)" if rep > 1 else ""
    f1 = lambda v: f"{v:.1f}"  # noqa: E731
    f0 = lambda v: f"{v:,.0f}"  # noqa: E731

    def bboth(f):
        return " | ".join(f(x) if x else "–" for x in (bw, bq))

    def shed_cell(rs):
        lost = [shed(r) for r in rs]
        clean = sum(1 for x in lost if not x)
        return (f"**{clean} of {len(rs)} runs** lost nothing" + "".join(
            f"; run {i + 1}: {', '.join(x)}" for i, x in enumerate(lost) if x))
    peaks_q = [mib(r["rss_peak_kib"]) for r in bq]
    every_burst = bw + bq
    verdict = (f"**Against the targets** (scraped burst): peak RSS ≤ {RSS_TARGET_MIB} MiB "
               + ("met" if max(peaks_q) <= RSS_TARGET_MIB else "**missed**")
               + f" (the highest of {len(bq)} run{'s' if len(bq) > 1 else ''}: "
               f"{max(peaks_q):.1f} MiB); no connection shed "
               + ("met" if not any(shed(r) for r in bq) else "**missed**")
               + f" (and in {sum(1 for r in every_burst if not shed(r))} of {len(every_burst)} "
               "bursts in all nothing was lost: one connection, no redelivery, no stall, no "
               "consumer dropped or refused).")
    rows = [
        (f"**peak RSS (VmHWM)** of the daemon, {nb:,}-message burst{med_of}, MiB",
         bboth(lambda rs: med_spread([mib(r["rss_peak_kib"]) for r in rs], f1))),
        ("RSS idle before the burst → right after its window, MiB (median)",
         bboth(lambda rs: f"{statistics.median(mib(r['rss_idle_kib']) for r in rs):.1f} → "
                          f"{statistics.median(mib(r['rss_after_kib']) for r in rs):.1f}")),
        (f"**ACK latency** p50 / p99 / max over the burst's messages{med_of.replace('min–max', 'p99 min–max')}",
         bboth(lat_cell)),
        ("ACKed msg/s (first push → last ACK)",
         bboth(lambda rs: med_spread([r["ack_rate"] for r in rs], f0))),
        ("reader pauses during the burst (`stream.reader_pauses`)",
         bboth(lambda rs: med_spread([r["stream_delta"]["reader_pauses"] for r in rs], f0))),
        ("**time the reader spent paused** (`stream.reader_paused_ms`), ms, of the ACK span, ms",
         bboth(lambda rs: med_spread([r["stream_delta"]["reader_paused_ms"] for r in rs], f0)
               + " of " + med_spread([r["ack_span_s"] * 1e3 for r in rs], f0))),
        ("**shed**: more than one connection (simulator and `link.connections_opened`), "
         "redeliveries, `stream.stalls`, taps dropped (`consumers.taps_dropped_slow`), consumers "
         "refused", bboth(shed_cell)),
        ("daemon CPU µs per message (in the window, answering the scrapes included)",
         bboth(lambda rs: med_spread([r["cpu_us_per_msg"] for r in rs], f1))),
        (f"`GET /metrics` ({mr}/s, one connection each) in the window",
         "– | " + (scrape_cell(bq, "metrics") if bq else "–")),
        (f"`status` on the control socket ({sr}/s) in the window",
         "– | " + (scrape_cell(bq, "status") if bq else "–")),
        ("CPU / I/O pressure (PSI some) in each run", bboth(lambda rs: ", ".join(
            f"{psi(r, 'cpu')}/{psi(r, 'io')}" for r in rs))),
    ]
    t1 = ["| measure | burst, metrics on, not scraped | burst, scraped: "
          f"{mr} `GET /metrics`/s + {sr} `status`/s |", "|---|---:|---:|"]
    t1 += [f"| {a} | {b} |" for a, b in rows]

    pw, pq = res["paced"]["without"], res["paced"]["with"]

    def both(f):
        return " | ".join(f(x) if x else "–" for x in (pw, pq))

    cpu_w = statistics.median(r["cpu_s"] for r in pw) if pw else None
    cpu_q = statistics.median(r["cpu_s"] for r in pq) if pq else None
    per_scrape = None
    if pw and pq:
        reqs = statistics.median(r["scrapes"]["metrics"]["sent"] + r["scrapes"]["status"]["sent"]
                                 for r in pq)
        per_scrape = (cpu_q - cpu_w) / max(1, reqs) * 1e6
    rows2 = [
        (f"ACK latency p50 / p99 / max, {npace:,} msgs at {rate:,}/s"
         + (f" (median of {rep} runs; p99 min–max)" if rep > 1 else ""), both(lat_cell)),
        ("ACK latency p99 of each run, ms", both(lambda rs: ", ".join(
            report.ms(report.pct(r["ack_ms"], .99)) for r in rs))),
        ("end-to-end to the group member p50 / p99 / max", both(lambda rs: lat_cell(rs, "e2e_ms_member"))),
        ("daemon CPU in the window (pushes + tail), s; µs per message (median)", both(
            lambda rs: f"{statistics.median(r['cpu_s'] for r in rs):.2f} s; "
                       f"{statistics.median(r['cpu_us_per_msg'] for r in rs):.1f} µs")),
        (f"`GET /metrics` ({mr}/s, one connection each)", "– | " + (scrape_cell(pq, "metrics") if pq else "–")),
        (f"`status` on the control socket ({sr}/s)", "– | " + (scrape_cell(pq, "status") if pq else "–")),
        ("reader pauses in the window", both(lambda rs: ", ".join(
            str(r["stream_delta"]["reader_pauses"]) for r in rs))),
        ("CPU / I/O pressure (PSI some) in each run", both(lambda rs: ", ".join(
            f"{psi(r, 'cpu')}/{psi(r, 'io')}" for r in rs))),
        ("the simulator's pacing, max lag in each run", both(lambda rs: ", ".join(
            r["pace_line"].split("max lag ")[1] for r in rs))),
    ]
    t2 = ["| measure | metrics on, not scraped | scraped: "
          f"{mr} `GET /metrics`/s + {sr} `status`/s |", "|---|---:|---:|"]
    t2 += [f"| {a} | {b} |" for a, b in rows2]

    notes = []
    if pw and pq:
        d99 = (statistics.median(report.pct(r["ack_ms"], .99) for r in pq)
               - statistics.median(report.pct(r["ack_ms"], .99) for r in pw))
        d50 = (statistics.median(report.pct(r["ack_ms"], .5) for r in pq)
               - statistics.median(report.pct(r["ack_ms"], .5) for r in pw))
        spread = max(max(p) - min(p) for p in (
            [report.pct(r["ack_ms"], .99) for r in pw], [report.pct(r["ack_ms"], .99) for r in pq]))
        notes.append(f"Scraped minus not scraped (medians): ACK p50 {d50:+.2f} ms, p99 {d99:+.2f} ms"
                     + (f" (runs of one kind differ in p99 by up to {spread:.1f} ms on this machine, "
                        f"so the difference is {'within' if abs(d99) <= spread else 'beyond'} that "
                        "noise)" if len(pw) > 1 else "")
                     + f"; daemon CPU {cpu_q - cpu_w:+.2f} s in the window "
                     f"({per_scrape:+.0f} µs per request answered; paced runs of one kind differ by "
                     f"up to {max(max(r['cpu_s'] for r in x) - min(r['cpu_s'] for r in x) for x in (pw, pq)):.2f} s).")
        ic = [r["idle_cost_us"] for r in pq]
        im, ist = (statistics.median(c[k] for c in ic) for k in ("metrics", "status"))
        notes.append(f"The cost of a request without the noise: after each scraped run's window, "
                     f"{cfg['n_idle']:,} `GET /metrics` and then {cfg['n_idle']:,} `status` back to back "
                     f"on the quiet daemon took **{im:.0f} µs** and **{ist:.0f} µs** of its CPU per "
                     f"request (median of {len(ic)}); at {mr} + {sr} per second that is "
                     f"{(im * mr + ist * sr) / 1e4:.2f} % of one core.")
    for mode, rs in (("alone", bw), ("scraped", bq)):
        if not rs:
            continue
        b = sorted(rs, key=lambda r: r["cpu_s"])[(len(rs) - 1) // 2]
        th = sorted(b.get("thread_cpu_s", {}).items(), key=lambda kv: -kv[1])[:5]
        if th:
            notes.append(f"Daemon CPU by thread in the median {mode} burst's window "
                         f"({b['cpu_s']:.2f} s), s: " + ", ".join(f"{k} {v:.2f}" for k, v in th) + ".")
    every = every_burst + pw + pq
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
        "<!-- Written by scripts/bench --only trust (or a full scripts/bench): running it again "
        "replaces everything from the heading above to the end marker below. -->",
        "",
        f"Command: `{info.get('env', '')}scripts/bench --only trust{' --quick' if quick else ''}` (this stage: "
        f"{info['minutes']:.0f} min, {info['started']}); also part of a full `scripts/bench`.",
        "",
        report.machine_line(info),
        "",
        report.versions_line(info, sdks=False),
        "",
        f"**Method:** the release daemon with the config `dingtalk-streamd-sim --write-config` writes, "
        f"plus `groups: [bench]`, every limit at its default (`limits.max_pending_acks` 10,000, "
        f"`max_pending_bytes` 64 MiB, `recent_cache_bytes` 16 MiB); one tap and one acking group "
        f"member (`scripts/bench-lib/consumer.py`). The simulator pushes the SDK comparison's mix "
        f"over TLS on 127.0.0.1 (pings off; redelivery after {cfg['redeliver_after']}, so a lost "
        f"connection would show as a second one, not as a hang). Each run starts a fresh "
        f"simulator and daemon, pushes a {cfg['warmup']}-message warm-up and waits for quiet. "
        f"The config adds `metrics: {{listen: 127.0.0.1:PORT}}` in every run; in the right-hand "
        f"columns `scripts/bench-lib/scraper.py` sends {mr} `GET /metrics` per second (a new TCP "
        f"connection each, as the endpoint answers one request per connection) and {sr} "
        f"`{{\"cmd\":\"status\"}}` per second on the control socket, each on a fixed schedule, "
        f"from just before the first push to the end of the window; every answer is checked. "
        f"**Burst:** {nb:,} messages with one `/burst`; peak RSS = the daemon's VmHWM after the "
        f"burst (its whole life, start-up and warm-up included); the daemon's `status --json` "
        f"(control socket) is read just before the burst and after its window (last ACK + 1.5 s) "
        f"for the `stream.*` and `consumers.*` deltas; the simulator's `/status` counts "
        f"connections opened and redeliveries over the run. **Paced:** {npace:,} messages with "
        f"`/pace {npace} {rate}`. "
        f"ACK latency = frame queued at the simulator → its ACK read there (the ACK log's µs "
        f"times; in a burst it is mostly the wait behind the messages pushed before); the daemon "
        f"ACKs after the SQLite commit with fsync. "
        f"{rep} run{'s' if rep > 1 else ''} of each; the pairs alternate which goes first.",
        "",
        verdict,
        "",
        "\n".join(t1),
        "",
        "\n".join(t2),
        "",
        "Notes from this run:",
        "",
        *[f"- {n}" for n in notes],
        "",
        END,
    ])
