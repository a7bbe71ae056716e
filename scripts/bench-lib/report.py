"""Machine facts, versions and the Markdown section scripts/bench writes into BENCHMARKS.md."""
import json
import math
import os
import re
import subprocess

HEADING = "## Side by side with the official SDKs"
END = "<!-- end of the scripts/bench section -->"
# A burst is simulator-bound when its rate reaches this share of the simulator's ceiling, or
# when the simulator was this busy compared with its own ceiling run (it ran flat out).
SIM_BOUND = 0.85
NAMES = {"daemon": "dingtalk-streamd", "tap": "dingtalk-streamd (one tap)", "python": "Python SDK 0.24.3",
         "node": "Node SDK 2.1.5", "sink": "simulator ceiling"}


def sh(*argv, cwd=None):
    try:
        out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=30)
        return (out.stdout or out.stderr).strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def pkg_version(node_dir, pkg):
    try:
        with open(os.path.join(node_dir, "node_modules", pkg, "package.json")) as f:
            return json.load(f)["version"].lstrip("v")
    except (OSError, ValueError, KeyError):
        return "?"


def machine_and_versions(a):
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_gib = int(f.readline().split()[1]) / 1024 / 1024
    os_name = "?"
    try:
        with open("/etc/os-release") as f:
            os_name = re.search(r'PRETTY_NAME="([^"]*)"', f.read()).group(1)
    except (OSError, AttributeError):
        pass
    commit = sh("git", "rev-parse", "--short=12", "HEAD", cwd=a.repo)
    # BENCHMARKS.md is this script's output: a change there does not make the build dirty.
    dirty = [line for line in sh("git", "status", "--porcelain", "--untracked-files=no",
                                 cwd=a.repo).splitlines() if not line.endswith(" BENCHMARKS.md")]
    sdks = bool(getattr(a, "venv_python", None))
    py_pkgs = sh(a.venv_python, "-c", "import importlib.metadata as m; print(' '.join("
                 "f'{p} {m.version(p)},' for p in ('dingtalk-stream','websockets','aiohttp',"
                 "'requests')).rstrip(','))") if sdks else "?"
    return {
        "cpu": cpu, "cores": os.cpu_count(), "mem_gib": round(mem_gib, 1),
        "kernel": os.uname().release, "os": os_name,
        "fs": " ".join(sh("findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", a.work).split()),
        "commit": commit + ("-dirty" if dirty else ""), "rustc": sh("rustc", "--version"),
        "python": sh(a.venv_python if sdks else "python3", "--version"), "python_pkgs": py_pkgs,
        "node": sh("node", "--version") if sdks else "?",
        "npm": sh("npm", "--version") if sdks else "?",
        "node_pkgs": ", ".join(f"{p} {pkg_version(a.node_dir, p)}"
                               for p in ("dingtalk-stream", "ws", "axios")) if sdks else "?",
        "strace": (sh("strace", "-V").splitlines() or ["?"])[0].replace("-- version ", ""),
    }


ENV_KNOBS = ("BENCH_CALM_WAIT", "BENCH_CALM_BUDGET", "BENCH_WINDOW_FILL", "BENCH_WINDOW_FULL")


def env_prefix():
    """The bench's environment knobs set for this run, as a command prefix ("" for none)."""
    return "".join(f"{k}={os.environ[k]} " for k in ENV_KNOBS if k in os.environ)


def machine_line(info):
    return (f"**Machine:** {info['cpu']}, {info['cores']} cores, {info['mem_gib']} GiB RAM, "
            f"Linux {info['kernel']}, {info['os']}; work dir (spool) on {info['fs']}. "
            f"**Shared** with other work: load average {info['load_start']} at the start, "
            f"{info['load_end']} at the end (1/5/15 min).")


def versions_line(info, sdks=True):
    if not sdks:
        return (f"**Versions:** dingtalk-streamd and the simulator at commit `{info['commit']}` "
                f"(release build, {info['rustc']}); the bench's consumers and scraper on "
                f"{info['python']} (stdlib only).")
    return (f"**Versions:** dingtalk-streamd and the simulator at commit `{info['commit']}` (release "
            f"build, {info['rustc']}); {info['python']} with {info['python_pkgs']}; Node {info['node']}, "
            f"npm {info['npm']}, {info['node_pkgs']}; {info['strace']}.")


def redone_notes(every):
    """A note on runs done again because the daemon cut off the bench's tap ([] if none)."""
    redone = sum(len(r.get("redone", [])) for r in every)
    if not redone:
        return []
    return [f"{redone} run(s) were done again because the daemon cut off the bench's Python tap "
            "for not keeping up (`consumers.taps_dropped_slow`: its 4,096-line queue overflowed "
            "while the consumer, not the daemon, was behind); the tables hold only complete runs."]


def pct(values, q):
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(q * len(s)) - 1))]


def ms(v):
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def pcts(values):
    return f"{ms(pct(values, .5))} / {ms(pct(values, .99))} / {ms(max(values))} ms"


def median_run(runs):
    """The run with the median ACK rate (the lower middle one for an even count)."""
    s = sorted(runs, key=lambda r: r["ack_rate"])
    return s[(len(s) - 1) // 2]


def section(res, quick=False):
    cfg, info = res["config"], res["info"]
    nb, npace, rate, warm = cfg["n_burst"], cfg["n_pace"], cfg["rate"], cfg["warmup"]
    cols = [c for c in ("daemon", "tap", "python", "node", "sink") if res["burst"].get(c)]
    med = {c: median_run(res["burst"][c]) for c in cols}
    ceiling = med["sink"]["ack_rate"]

    def sim_busy(c):  # cores, see the notes
        return med[c]["sim_cpu_s"] / med[c]["ack_span_s"]

    def sim_bound(c):
        return c != "sink" and (med[c]["ack_rate"] >= SIM_BOUND * ceiling
                                or sim_busy(c) >= SIM_BOUND * sim_busy("sink"))
    rep = cfg["repeat"]
    paced = res["paced"]
    # Latency: of a client's paced runs, the one the machine disturbed least (lowest CPU + I/O
    # pressure, chosen without looking at its latency): other sessions' builds on a shared
    # machine put tens of milliseconds into a tail. Every run is listed in the notes.
    def disturbance(r):
        return sum(v or 0 for v in r.get("psi_some", {}).values())
    p = {c: min(runs, key=disturbance) for c, runs in paced.items() if runs}
    n_paced = len(next(iter(paced.values())))
    n_paced_txt = (f"{npace:,} msgs; the least disturbed of {n_paced} runs" if n_paced > 1
                   else f"{npace:,} msgs")

    def rate_cell(c):
        rs = [r["ack_rate"] for r in res["burst"][c]]
        cell = f"**{med[c]['ack_rate']:,.0f}**"
        if len(rs) > 1:
            cell += f" ({min(rs):,.0f}–{max(rs):,.0f})"
        if sim_bound(c):
            cell += " ⚠ sim-bound"
        return cell

    def cell(c, f):
        try:
            return f(c)
        except (KeyError, ValueError, ZeroDivisionError):
            return "–"

    rows = [
        (f"ACKed msg/s, {nb:,}-message burst" + (f" (median of {rep}; min–max)" if rep > 1 else ""),
         rate_cell),
        ("CPU µs per message, the measured process (same run)",
         lambda c: f"{med[c]['cpu_us_per_msg']:.1f}"),
        ("… the simulator's CPU µs per message in that window",
         lambda c: f"{med[c]['sim_cpu_us_per_msg']:.1f}"),
        (f"syscalls per message (`strace -f -c`, separate {cfg['n_strace']:,} burst)",
         lambda c: f"{res['strace'][c]['syscalls_per_msg']:.1f}"),
        ("RSS idle → peak, MiB (VmRSS after warm-up → VmHWM after the burst)",
         lambda c: f"{med[c]['rss_idle_kib'] / 1024:.1f} → {med[c]['rss_peak_kib'] / 1024:.1f}"),
        (f"ACK latency p50 / p99 / max at {rate:,} msg/s ({n_paced_txt})",
         lambda c: pcts(p[c]["ack_ms"])),
        ("end-to-end latency p50 / p99 / max (push → handler / group member saw it)",
         lambda c: pcts(p[c]["e2e_ms_member" if c == "daemon" else "e2e_ms_bot"])),
    ]
    heads = {"daemon": "dingtalk-streamd (+ tap + acking group member)",
             "tap": "dingtalk-streamd (one tap, no group)", "python": "Python SDK 0.24.3",
             "node": "Node SDK 2.1.5", "sink": "simulator + trivial Rust client (ceiling)"}
    head = "| measure | " + " | ".join(heads[c] for c in cols) + " |"
    lines = [head, "|---|" + "---:|" * len(cols)]
    for title, f in rows:
        lines.append(f"| {title} | " + " | ".join(cell(c, f) for c in cols) + " |")
    table = "\n".join(lines)

    d = med["daemon"]
    notes = []
    clients = [c for c in ("daemon", "tap", "python", "node") if c in cols]
    bound = [NAMES[c] for c in clients if sim_bound(c)]
    notes.append(
        f"Simulator ceiling: {ceiling:,.0f} ACKed msg/s with a trivial Rust client, the simulator "
        f"then busy {sim_busy('sink'):.2f} cores. Marked simulator-bound (rate ≥ {SIM_BOUND:.0%} of "
        f"the ceiling, or the simulator ≥ {SIM_BOUND:.0%} as busy as then): "
        + (", ".join(f"{NAMES[c]} ({med[c]['ack_rate'] / ceiling:.0%} of the ceiling, simulator "
                     f"{sim_busy(c):.2f} cores)" for c in clients if sim_bound(c))
           if bound else "none") + ".")
    if "tap" in med and "python" in med:
        per = {c: [r["cpu_us_per_msg"] for r in res["burst"][c]] for c in ("tap", "python", "node")
               if c in med}
        ratio = med["tap"]["cpu_us_per_msg"] / med["python"]["cpu_us_per_msg"]
        notes.append(
            f"CPU per message, one tap and no group (the configuration of the must ≤ 0.25× the "
            f"Python SDK): {med['tap']['cpu_us_per_msg']:.1f} µs, {ratio:.2f}× the Python SDK's "
            f"{med['python']['cpu_us_per_msg']:.1f} µs in the same run"
            + (f" and {med['tap']['cpu_us_per_msg'] / med['node']['cpu_us_per_msg']:.2f}× the Node "
               f"SDK's" if "node" in med else "")
            + "; every burst, in µs: " + "; ".join(
                f"{NAMES[c]} " + ", ".join(f"{v:.1f}" for v in vs) for c, vs in per.items()) + ".")
    notes.append(f"dingtalk-streamd's two Python consumers used {d['consumers_cpu_us_per_msg']:.1f} µs/msg "
                 f"together (not counted above); in the median burst the tap had every message "
                 f"{d['seen_span_s'][0]:.2f} s and the group member {d['seen_span_s'][1]:.2f} s after "
                 f"the first push (ACKs: {d['ack_span_s']:.2f} s).")
    busy = "; ".join(
        f"{NAMES[c]} {med[c]['cpu_s'] / med[c]['ack_span_s']:.2f}"
        + (f" + its consumers {med[c]['consumers_cpu_s'] / med[c]['ack_span_s']:.2f}" if c == "daemon" else "")
        + f" + simulator {med[c]['sim_cpu_s'] / med[c]['ack_span_s']:.2f}" for c in cols)
    notes.append(f"Cores busy during the median burst, at most (CPU time in the whole window, its 1.5 s "
                 f"tail included, ÷ first push → last ACK), of {info['cores']}: {busy}.")
    if "e2e_ms_tap" in p.get("daemon", {}):
        notes.append(f"dingtalk-streamd end-to-end to the tap at {rate:,} msg/s: "
                     f"{pcts(p['daemon']['e2e_ms_tap'])}.")
    if n_paced > 1:
        p99s = "; ".join(f"{NAMES[c]} " + ", ".join(ms(pct(r["ack_ms"], .99)) for r in paced[c])
                         for c in cols if paced.get(c))
        notes.append(f"ACK latency p99 of each paced run, in ms: {p99s}.")
    def psi(r, k):
        v = r.get("psi_some", {}).get(k)
        return "?" if v is None else f"{v:.0%}"
    pressure = "; ".join(f"{NAMES[c]} " + ", ".join(f"{psi(r, 'cpu')}/{psi(r, 'io')}" for r in paced[c])
                         for c in cols if paced.get(c))
    notes.append("CPU / I/O pressure during each paced run: share of the run in which some task "
                 f"waited for a CPU / for I/O (Linux PSI `some`; our own processes count too, "
                 f"dingtalk-streamd's fsync waits among them): {pressure}.")
    every = [r for kind in ("burst", "paced") for runs in res[kind].values() for r in runs]
    every += list(res["strace"].values())
    uncalm = sum(1 for r in every if not r.get("calm_before", {}).get("calm", True))
    waited = sum(r.get("calm_before", {}).get("waited_s", 0) for r in every)
    notes.extend(redone_notes(every))
    notes.append(f"Before each of the {len(every)} runs the script waited for one calm second "
                 f"(CPU pressure < 20 %, I/O < 10 %): {waited:.0f} s of waiting in all"
                 + (f"; {uncalm} run(s) started without one after {cfg.get('calm_wait', '?')} s." if uncalm
                    else "; every run started calm."))
    lags = "; ".join(f"{NAMES[c]} " + ", ".join(
        r["pace_line"].split("max lag ")[1] for r in paced[c]) for c in cols if paced.get(c))
    notes.append(f"The simulator's pacing ({npace:,} frames at {rate:,}/s in every run) fell behind "
                 f"its schedule by at most: {lags} (a stalled machine shows here as well).")
    tops = "; ".join(f"{NAMES[c]}: " + ", ".join(f"{n} {k}" for n, k in res["strace"][c]["syscalls"]["top"][:4])
                     for c in ("daemon", "tap", "python", "node") if c in res["strace"])
    notes.append(f"Most frequent syscalls in the strace runs (total calls): {tops}.")

    return "\n".join([
        HEADING,
        "",
        "<!-- Written by scripts/bench: running it again replaces everything from the heading above "
        "to the end marker below. -->",
        "",
        f"Command: `scripts/bench{' --quick' if quick else ''}` (this run: {info['minutes']:.0f} min, "
        f"{info['started']}). `scripts/bench --quick` runs smaller counts and only prints.",
        "",
        machine_line(info),
        "",
        versions_line(info),
        "",
        f"**Mix:** 90 % bot text messages (≈1,090 B frames, ≈720 B of data), 10 % events "
        f"(≈820 B frames, ≈310 B of data), the same sequence in every run (`dingtalk-streamd-sim`'s `/burst` and `/pace`). "
        f"Everything over TLS on 127.0.0.1; simulator pings and redelivery off, its log at warn. "
        f"Each run starts a fresh simulator and a fresh client, pushes a {warm}-message warm-up and "
        f"waits for quiet before measuring.",
        "",
        table,
        "",
        "How each figure is measured:",
        "",
        f"- **ACKed msg/s:** {nb:,} messages pushed with one `/burst`; rate = {nb:,} / (last first-time "
        "ACK − first push), both from the simulator's ACK log (`--ack-log-times`, wall clock µs).",
        "- **CPU µs/msg:** utime + stime of the measured process (all threads) from `/proc/PID/stat`, "
        "sampled just before the burst command and again 1.5 s after the last ACK (or after the "
        "last consumer line, if later), divided by the burst size. 10 ms tick resolution. "
        "dingtalk-streamd's figure is the daemon process only; the SDKs' includes their no-op "
        "handlers, which run in-process.",
        "- **syscalls/msg:** a separate run of the same burst with `strace -f -c -p PID` attached "
        "after the warm-up (all threads), stopped after the same 1.5 s tail; total calls / burst "
        "size. strace slows the process, so batching (and the count) can differ from an untraced "
        "run. (`perf trace -s` also works here but reports per thread.)",
        "- **RSS:** VmRSS once connected, warmed up and quiet; VmHWM (peak) right after the burst.",
        f"- **Latency:** {npace:,} messages with `/pace {npace} {rate}` after the warm-up, "
        f"{str(n_paced) + ' runs per client; the table shows the run with the least CPU + I/O pressure (Linux PSI, see the notes), whatever its latency' if n_paced > 1 else 'one run per client'}. "
        "ACK latency = "
        "the frame queued at the simulator → its ACK read by the simulator. End-to-end = the "
        "same push time → the moment the no-op SDK handler ran, or dingtalk-streamd's group "
        "member got the line (wall clock µs in each process). dingtalk-streamd ACKs only after "
        "the SQLite commit with fsync on the spool's ext4 disk.",
        "- **dingtalk-streamd set-up:** the config `dingtalk-streamd-sim --write-config` writes, plus "
        "`groups: [bench]`; every other setting at its default. One tap and one group member "
        "(`scripts/bench-lib/consumer.py`: reads in chunks, acks every line, no JSON decoding).",
        "- **SDK set-up:** a throwaway venv with `dingtalk-stream==0.24.3` (ChatbotHandler + "
        "EventHandler, `DINGTALK_OPENAPI_ENDPOINT`, `SSL_CERT_FILE` + `REQUESTS_CA_BUNDLE`), and a "
        "throwaway npm folder with `dingtalk-stream@2.1.5` (`GATEWAY_URL` patched in "
        "`dist/constants.{mjs,cjs}`, `NODE_EXTRA_CA_CERTS`, callback listener calling "
        "`socketCallBackResponse`, all-events listener returning SUCCESS).",
        "- **Simulator ceiling:** the same burst to `sim/examples/ack_sink.rs`, a Rust client that "
        "ACKs each frame as soon as it reads it. A burst reaching 85 % of that rate, or with the "
        "simulator 85 % as busy as in that run, is marked ⚠ sim-bound.",
        "",
        "Notes from this run:",
        "",
        *[f"- {n}" for n in notes],
        "",
        END,
    ])


def write_section(path, section, heading=HEADING, end_marker=END, after=()):
    """Replaces the section (heading to end marker, or to the next ## heading). A section not
    there yet goes right after the first of the end markers `after` found, else at the end."""
    with open(path) as f:
        text = f.read()
    start = text.find(heading + "\n")
    if start < 0:
        for marker in after:
            at = text.find(marker)
            if at >= 0:
                at += len(marker)
                while at < len(text) and text[at] == "\n":
                    at += 1
                rest = text[at:]
                text = text[:at].rstrip("\n") + "\n\n" + section + "\n" + ("\n" + rest if rest else "")
                break
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
    else:
        end = text.find(end_marker, start)
        if end >= 0:
            end += len(end_marker)
            while end < len(text) and text[end] == "\n":
                end += 1
        else:
            nxt = re.search(r"^## ", text[start + len(heading):], re.M)
            end = start + len(heading) + nxt.start() if nxt else len(text)
        rest = text[end:]
        text = text[:start] + section + "\n" + ("\n" + rest if rest else "")
    with open(path, "w") as f:
        f.write(text)


def render(res):
    """The section and where it goes, for a saved RESULTS*.json of any stage."""
    stage = res.get("stage", "sdk")
    if stage == "sdk":
        return section(res, quick=res["config"]["quick"]), HEADING, END, ()
    import trust
    import window
    mod = {"trust": trust, "window": window}[stage]
    return mod.section(res, res["info"]), mod.HEADING, mod.END, mod.AFTER


if __name__ == "__main__":
    # Renders a section again from a run's results:
    #   report.py RESULTS.json|RESULTS-trust.json|RESULTS-window.json [BENCHMARKS.md]
    import sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    with open(sys.argv[1]) as f:
        res = json.load(f)
    text, heading, end, after = render(res)
    if len(sys.argv) > 2:
        write_section(sys.argv[2], text, heading, end, after)
    print(text)
