//! NATS JetStream sink benchmark, against a real `nats-server` (skipped, saying so, where it is
//! missing). The daemon runs as the real release binary in its own process, so its CPU time
//! (utime + stime from /proc/PID/stat, all threads) is its own; the fake gateway and the
//! measuring client run in the bench process.
//!
//! - **catch-up rate**: a burst of `N` bot messages is ACKed while the broker is away (the
//!   sink's backlog holds them all), then nats-server starts: messages per second from the
//!   first to the last one stored in the stream (spool read, publish, PubAck in order, ack).
//! - **added CPU per message**: the same burst with the broker up, once without sinks and
//!   once with `sinks.nats`; the daemon's CPU from the first push until every message is ACKed
//!   (without) or also in the stream (with), the difference divided by `N`.
//!
//! `cargo bench --bench sink_nats` (`SINK_BENCH_N` messages per burst, default 20,000;
//! `SINK_BENCH_RUNS` runs, default 3).

#[path = "../tests/common/mod.rs"]
mod common;

use common::nats::{NatsServer, free_port, stream_len};
use common::{Paths, config_yaml, gateway, spawn_run, wait_for_socket};
use dingtalk_streamd_sim::{FakeGateway, OutFrame, Route};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often the stream's length is read while waiting for it.
const POLL: Duration = Duration::from_millis(20);
/// Give up on a run after this.
const RUN_LIMIT: Duration = Duration::from_secs(300);

fn main() {
    let Some(bin) = nats_server() else {
        println!(
            "sink_nats bench skipped: nats-server is not installed (apt-get install nats-server)"
        );
        return;
    };
    let n: usize = env("SINK_BENCH_N", 20_000);
    let runs: usize = env("SINK_BENCH_RUNS", 3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut rows = Vec::new();
        for run in 1..=runs {
            let catch_up = catch_up(&bin, n).await;
            rows.push(format!(
                "| catch-up from a backlog of {n} ({} bytes per message in the stream), run {run}/{runs} | **{:.0} msg/s** | {:.1} µs |",
                catch_up.bytes_per_message,
                n as f64 / catch_up.secs,
                catch_up.cpu_us / n as f64
            ));
        }
        for run in 1..=runs {
            let without = burst(&bin, n, false).await;
            let with = burst(&bin, n, true).await;
            rows.push(format!(
                "| burst of {n}, without sinks / with sinks.nats, run {run}/{runs} | {:.0} / {:.0} msg/s end to end | {:.1} / {:.1} µs per message, **+{:.1} µs** with the sink |",
                n as f64 / without.secs,
                n as f64 / with.secs,
                without.cpu_us / n as f64,
                with.cpu_us / n as f64,
                (with.cpu_us - without.cpu_us) / n as f64
            ));
        }
        println!("| measurement | rate | daemon CPU |\n|---|---:|---:|");
        for r in rows {
            println!("{r}");
        }
    });
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn nats_server() -> Option<PathBuf> {
    [
        "/usr/sbin/nats-server",
        "/usr/local/bin/nats-server",
        "/usr/bin/nats-server",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

/// The daemon's CPU time so far (all threads), in microseconds.
fn cpu_us(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0);
    let hz: f64 = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0);
    ticks / hz * 1e6
}

struct Measured {
    secs: f64,
    cpu_us: f64,
    /// Stored bytes per message (body, subject, headers), as the stream counts them.
    bytes_per_message: u64,
}

/// A daemon (release binary) for `gw`, with `extra` config; waits until it is connected.
async fn start(gw: &FakeGateway, extra: &str) -> (Paths, common::Proc) {
    let p = Paths::new();
    let extra = format!(
        "log:\n  level: warn\nlimits:\n  max_pending_acks: 100000\nreconnect:\n  initial_delay: 50ms\n  max_delay: 200ms\n  stable_after: 1s\n  connect_timeout: 5s\n{extra}"
    );
    p.write_config(&config_yaml(gw, &p, &extra));
    let d = spawn_run(&p.config, &[]);
    wait_for_socket(&p.socket).await;
    gw.wait_until(|g| g.open_connections().len() == 1, Duration::from_secs(10))
        .await
        .expect("the daemon connects");
    (p, d)
}

/// Pushes `n` bot messages at once and waits until each is ACKed.
async fn push_burst(gw: &FakeGateway, n: usize, tag: &str) {
    let frames = (0..n).map(|i| OutFrame::bot_text(&format!("{tag} {i}")));
    let ids: Vec<String> = gw
        .push_many(frames, Route::Random)
        .await
        .expect("push")
        .into_iter()
        .map(|p| p.message_id)
        .collect();
    gw.wait_acked(&ids, RUN_LIMIT)
        .await
        .expect("every message ACKed");
}

/// Waits until the stream holds `n` messages; returns when it first held any.
async fn stream_filled(nats: &NatsServer, n: u64) -> Instant {
    let js = nats.jetstream().await;
    let started = Instant::now();
    let mut first = None;
    loop {
        let len = stream_len(&js, "DINGTALK").await;
        if len > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if len >= n {
            return first.unwrap_or_else(Instant::now);
        }
        assert!(started.elapsed() < RUN_LIMIT, "stalled at {len} of {n}");
        tokio::time::sleep(POLL).await;
    }
}

/// The backlog of `n` ACKed while the broker is away, then published once it is up.
async fn catch_up(bin: &Path, n: usize) -> Measured {
    let gw = gateway(false).await;
    let port = free_port();
    let (_p, d) = start(
        &gw,
        &format!("sinks:\n  nats:\n    url: nats://127.0.0.1:{port}\n"),
    )
    .await;
    push_burst(&gw, n, "backlog").await;
    let nats = NatsServer::start_on(bin, port).await;
    let cpu0 = cpu_us(d.child.id());
    let first = stream_filled(&nats, n as u64).await;
    let secs = first.elapsed().as_secs_f64();
    let cpu = cpu_us(d.child.id()) - cpu0;
    drop(d);
    let js = nats.jetstream().await;
    let mut stream = js.get_stream("DINGTALK").await.expect("the stream");
    let state = &stream.info().await.expect("stream info").state;
    Measured {
        secs,
        cpu_us: cpu,
        bytes_per_message: state.bytes / state.messages.max(1),
    }
}

/// The burst with the broker up, with or without the sink: time and CPU from the first push
/// until all is ACKed (and in the stream).
async fn burst(bin: &Path, n: usize, sink: bool) -> Measured {
    let nats = NatsServer::start(bin).await;
    let gw = gateway(false).await;
    let extra = if sink {
        format!("sinks:\n  nats:\n    url: {}\n", nats.url())
    } else {
        String::new()
    };
    let (_p, d) = start(&gw, &extra).await;
    if sink {
        // The stream exists before the clock starts.
        push_burst(&gw, 1, "warm-up").await;
        stream_filled(&nats, 1).await;
    }
    let started = Instant::now();
    let cpu0 = cpu_us(d.child.id());
    push_burst(&gw, n, "burst").await;
    if sink {
        stream_filled(&nats, n as u64 + 1).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_us(d.child.id()) - cpu0;
    drop(d);
    Measured {
        secs,
        cpu_us: cpu,
        bytes_per_message: 0,
    }
}
