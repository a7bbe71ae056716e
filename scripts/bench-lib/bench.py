#!/usr/bin/env python3
"""The driver behind scripts/bench (which builds, installs and then runs this).

Phases, each run with a fresh simulator and a fresh client on 127.0.0.1 over TLS:
  1. burst:  a warm-up, then N messages at once (ACKed msg/s, CPU µs/msg, RSS), 3 times per
             client (1 with --quick), clients interleaved;
  2. paced:  a warm-up, then M messages at RATE/s (ACK and end-to-end latency), as often;
  3. strace: a warm-up, then N messages at once under `strace -f -c` (syscalls/msg).
The simulator with its trivial Rust client (ack_sink) gives the simulator's own ceiling.
Before each run it waits (up to BENCH_CALM_WAIT s: 120, 20 with --quick; at most
BENCH_CALM_BUDGET s in all: 900, 120) for one second in which other work on the shared machine
kept tasks waiting for a CPU < 20 % and for I/O < 10 % of the time (Linux PSI); what it found
is kept with the run. A run in which the daemon cut off the bench's tap for falling behind
(the Python consumer descheduled on a busy machine) is done again, at most twice, and counted
in the notes.
Results go to RESULTS.json in the work dir, the table to stdout and (with --write) to the
"## Side by side with the official SDKs" section of BENCHMARKS.md.

Two more stages, each with its own results file and BENCHMARKS.md section (`--only` picks
stages; the default runs all three in this order):
  trust:  "## Bursts, pauses and scrapes" (trust.py): peak RSS, ACK latency, reader pauses
          and connections in a 20,000 burst with default limits, and ACK latency at 1,000
          msg/s, each with and without 100 GET /metrics + 10 status per second.
          RESULTS-trust.json.
  window: "## A full dedupe window" (window.py): CPU µs per message of a 20,000 burst with an
          empty dedupe window (a fresh spool, and a used one whose receipts expired) and with
          300,000 and 1,000,000 messages in it (`spool.dedupe_keys`); start-up time and RSS
          after the index rebuild.
          RESULTS-window.json.
Their calm-machine budget is BENCH_CALM_BUDGET s per stage (default 180; 30 with --quick).
"""
import argparse
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402
import runs  # noqa: E402
import trust  # noqa: E402
import window  # noqa: E402
from procs import BenchError, Proc  # noqa: E402

CLIENTS = ["daemon", "python", "node", "sink"]
# The burst also runs the daemon with one tap and no group (what the CPU must is about).
BURST_CLIENTS = ["daemon", "tap", "python", "node", "sink"]
STAGES = ["sdk", "trust", "window"]
free_port = runs.free_port


def patch_node_sdk(node_dir, open_url):
    """Points the Node SDK's hard-coded GATEWAY_URL (both module variants) at the simulator."""
    dist = os.path.join(node_dir, "node_modules", "dingtalk-stream", "dist")
    for name in ("constants.mjs", "constants.cjs"):
        path = os.path.join(dist, name)
        with open(path) as f:
            text = f.read()
        lines = text.splitlines(keepends=True)
        hits = 0
        for i, line in enumerate(lines):
            if line.startswith("const GATEWAY_URL = "):
                lines[i] = f'const GATEWAY_URL = "{open_url}";\n'
                hits += 1
        if hits != 1:
            raise BenchError(f"stage 'patch Node SDK': no single GATEWAY_URL line in {path}")
        with open(path, "w") as f:
            f.write("".join(lines))


def progress(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--write", dest="write", action="store_true", default=None)
    ap.add_argument("--no-write", dest="write", action="store_false")
    ap.add_argument("--only", default=",".join(STAGES),
                    help="comma-separated stages: " + ", ".join(STAGES))
    for k in ("work", "repo", "sim-bin", "daemon-bin"):
        ap.add_argument(f"--{k}", required=True)
    for k in ("sink-bin", "venv-python", "node-dir"):  # the SDK comparison only
        ap.add_argument(f"--{k}")
    a = ap.parse_args()
    stages = [x for x in a.only.split(",") if x]
    bad = [x for x in stages if x not in STAGES]
    if bad or not stages:
        raise BenchError(f"stage 'arguments': unknown stage(s) {bad} (known: {', '.join(STAGES)})")
    if "sdk" in stages and not (a.sink_bin and a.venv_python and a.node_dir):
        raise BenchError("stage 'arguments': the sdk stage needs --sink-bin, --venv-python and --node-dir")
    env = a
    env.python, env.node = sys.executable, "node"
    if a.write is None:
        a.write = not a.quick
    env.port = free_port()
    for stage in STAGES:
        if stage in stages:
            {"sdk": sdk_stage, "trust": other_stage, "window": other_stage}[stage](env, a, stage)


def other_stage(env, a, stage):
    """The trust or window stage: measures, writes RESULTS-<stage>.json and its section."""
    mod = {"trust": trust, "window": window}[stage]
    env.calm_wait = float(os.environ.get("BENCH_CALM_WAIT", 20 if a.quick else 120))
    env.calm_budget = float(os.environ.get("BENCH_CALM_BUDGET", 30 if a.quick else 180))
    info = report.machine_and_versions(a)
    info["load_start"] = report.loadavg()
    info["started"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    info["env"] = report.env_prefix()
    t_start = time.monotonic()
    progress(f"stage {stage}: work dir {a.work}; simulator port {env.port}; load average "
             f"{info['load_start']}")
    res = mod.run_stage(env, progress)
    info["load_end"] = report.loadavg()
    info["minutes"] = (time.monotonic() - t_start) / 60
    res["info"] = info
    out = os.path.join(a.work, f"RESULTS-{stage}.json")
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    text = mod.section(res, info)
    print()
    print(text)
    if a.write:
        path = os.path.join(a.repo, "BENCHMARKS.md")
        report.write_section(path, text, mod.HEADING, mod.END, mod.AFTER)
        progress(f"wrote the {stage} section into {path}")
    else:
        progress(f"BENCHMARKS.md not changed ({'--quick' if a.quick else '--no-write'}; pass --write to change it)")
    progress(f"raw results: {out}")


def sdk_stage(env, a, _stage):
    if a.quick:
        env.n_burst, env.n_pace, env.rate, env.warmup, env.n_strace, env.repeat = 3000, 2000, 1000, 100, 2000, 1
    else:
        env.n_burst, env.n_pace, env.rate, env.warmup, env.n_strace, env.repeat = 20000, 10000, 1000, 200, 20000, 3
    # Before each run, wait up to this long for other work on the machine to quieten down.
    env.calm_wait = float(os.environ.get("BENCH_CALM_WAIT", 20 if a.quick else 120))
    env.calm_budget = float(os.environ.get("BENCH_CALM_BUDGET", 120 if a.quick else 900))
    patch_node_sdk(a.node_dir, f"https://127.0.0.1:{env.port}/v1.0/gateway/connections/open")
    info = report.machine_and_versions(a)
    info["load_start"] = report.loadavg()
    info["started"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    t_start = time.monotonic()
    progress(f"work dir {a.work}; simulator port {env.port}; load average {info['load_start']}")
    res = {"config": {k: getattr(env, k) for k in
                      ("n_burst", "n_pace", "rate", "warmup", "n_strace", "repeat", "quick",
                       "calm_wait")},
           "burst": {c: [] for c in BURST_CLIENTS}, "paced": {c: [] for c in CLIENTS}, "strace": {}}

    for rep in range(env.repeat):
        order = BURST_CLIENTS[rep % len(BURST_CLIENTS):] + BURST_CLIENTS[:rep % len(BURST_CLIENTS)]
        for c in order:
            r = runs.one(env, "burst", c, rep + 1, n=env.n_burst, warmup=env.warmup)
            res["burst"][c].append(r)
            progress(f"burst {rep + 1}/{env.repeat} {c:6s}: {r['ack_rate']:8,.0f} ACKed msg/s, "
                     f"{r['cpu_us_per_msg']:6.1f} µs/msg CPU (sim {r['sim_cpu_us_per_msg']:.1f}), "
                     f"RSS idle {r['rss_idle_kib'] / 1024:.1f} MiB peak {r['rss_peak_kib'] / 1024:.1f} MiB")
    for rep in range(env.repeat):
        order = CLIENTS[rep % len(CLIENTS):] + CLIENTS[:rep % len(CLIENTS)]
        for c in order:
            r = runs.one(env, "paced", c, rep + 1, n=env.n_pace, warmup=env.warmup, rate=env.rate)
            res["paced"][c].append(r)
            e2e = [k for k in r if k.startswith("e2e_ms_")]
            progress(f"paced {rep + 1}/{env.repeat} {c:6s}: ACK p50/p99/max {report.pcts(r['ack_ms'])}"
                     + "".join(f"; {k[7:]} e2e {report.pcts(r[k])}" for k in e2e)
                     + "; PSI some cpu/io " + "/".join(
                         "?" if v is None else f"{v:.0%}" for v in r["psi_some"].values()))
    for c in ("daemon", "tap", "python", "node"):
        r = runs.one(env, "strace", c, 1, n=env.n_strace, warmup=env.warmup, strace=True)
        res["strace"][c] = r
        progress(f"strace {c:6s}: {r['syscalls_per_msg']:.1f} syscalls/msg "
                 f"(top: {', '.join(f'{n} {k}' for n, k in r['syscalls']['top'][:3])})")

    info["load_end"] = report.loadavg()
    info["minutes"] = (time.monotonic() - t_start) / 60
    res["info"] = info
    with open(os.path.join(a.work, "RESULTS.json"), "w") as f:
        json.dump(res, f, indent=1)
    section = report.section(res, quick=a.quick)
    print()
    print(section)
    if a.write:
        path = os.path.join(a.repo, "BENCHMARKS.md")
        report.write_section(path, section)
        progress(f"wrote the section into {path}")
    else:
        progress(f"BENCHMARKS.md not changed ({'--quick' if a.quick else '--no-write'}; pass --write to change it)")
    progress(f"raw results: {os.path.join(a.work, 'RESULTS.json')}")


if __name__ == "__main__":
    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        main()
    except BenchError as e:
        print(f"\nscripts/bench FAILED at {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        Proc.stop_all()
