//! The local SDK endpoint (`compat:`) with the official Python SDK (dingtalk-stream 0.24.3, in
//! the venv tests/support/sdk-install keeps under target/sdk): messages per second through
//! the endpoint to one Python SDK process, and the latency the extra hop adds at 100 msg/s,
//! each next to the same Python SDK connected straight to the fake gateway.
//!
//! `cargo bench --bench compat` (installs the SDK on first use; needs PyPI then). Latency runs
//! from the push at the fake gateway (its epoch µs in the message text) to the SDK's handler
//! (`time.time()` in tests/support/py_bot.py), on one clock. Via the endpoint the path is
//! gateway → daemon (spool commit, fsync) → group → endpoint → SDK; straight it is gateway →
//! SDK. Prints a Markdown table.

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use dingtalk_streamd_sim::{FakeGateway, OutFrame, Route};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const PACED: usize = 1000;
const BURST: usize = 5000;
const WARMUP: usize = 20;

fn epoch_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn python() -> PathBuf {
    let dir = Path::new(bin())
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("sdk/python-venv");
    let st = std::process::Command::new(support("sdk-install"))
        .arg("python")
        .arg(&dir)
        .status()
        .expect("sdk-install");
    assert!(st.success(), "cannot install the Python SDK");
    dir.join("bin/python")
}

fn bot(py: &Path, base: &str, id: &str, secret: &str) -> Proc {
    let script = support("py_bot.py");
    let envs = [
        ("DINGTALK_OPENAPI_ENDPOINT", base),
        ("APP_ID", id),
        ("APP_SECRET", secret),
    ];
    Proc::spawn("py_bot", command(py, &[script.to_str().unwrap()], &envs))
}

/// Waits for `n` bot records after `*from`; returns them.
async fn take(p: &Proc, from: &mut usize, n: usize) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let l = p
            .try_wait_line(
                from,
                |l| l.starts_with("@@ ") && l.contains("\"bot\""),
                Duration::from_secs(60),
            )
            .await
            .unwrap_or_else(|o| panic!("{} of {n} records: {o}", out.len()));
        out.push(serde_json::from_str(&l.text[3..]).unwrap());
    }
    out
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// (p50, p99, max) in ms of the latency at 100 msg/s, and msg/s of a burst.
async fn measure(gw: &FakeGateway, p: &Proc) -> ((f64, f64, f64), f64) {
    let mut from = 0;
    for i in 0..WARMUP {
        gw.push_bot_text(&format!("warm {i}")).await.unwrap();
    }
    take(p, &mut from, WARMUP).await;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for _ in 0..PACED {
        tick.tick().await;
        gw.push_bot_text(&format!("lat {}", epoch_us()))
            .await
            .unwrap();
    }
    let recs = take(p, &mut from, PACED).await;
    let mut lat: Vec<f64> = recs
        .iter()
        .map(|r| {
            let sent: f64 = r["text"].as_str().unwrap()[4..].parse().unwrap();
            r["t"].as_f64().unwrap() * 1e3 - sent / 1e3
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    let lat = (pct(&lat, 0.5), pct(&lat, 0.99), *lat.last().unwrap());
    let started = epoch_us() as f64 / 1e6;
    let frames = (0..BURST).map(|i| OutFrame::bot_text(&format!("burst {i}")));
    gw.push_many(frames, Route::Random).await.unwrap();
    let recs = take(p, &mut from, BURST).await;
    let last = recs
        .iter()
        .map(|r| r["t"].as_f64().unwrap())
        .fold(0.0, f64::max);
    (lat, BURST as f64 / (last - started))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let py = python();

    let gw = gateway(false).await;
    let base = gw.open_url().replace("/v1.0/gateway/connections/open", "");
    let direct = bot(&py, &base, &gw.config().client_id, SECRET);
    gw.wait_connected(1, WAIT).await.unwrap();
    let (d_lat, d_rate) = measure(&gw, &direct).await;
    drop(direct);
    gw.shutdown().await;

    let gw = gateway(false).await;
    let ep = Endpoint::new();
    let p = Paths::new();
    let yaml = ep.yaml(&p);
    let d = Daemon::start_at(p, &gw, &yaml).await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let via = bot(&py, &ep.base, LOCAL_ID, LOCAL_SECRET);
    d.status_until("the SDK joined", |s| s["groups"]["sdk"]["members"] == 1)
        .await;
    let (c_lat, c_rate) = measure(&gw, &via).await;
    drop(via);
    d.stop().await.0.unwrap();

    println!("| path | burst of {BURST}: msg/s | latency at 100 msg/s p50 | p99 | max |");
    println!("|---|---:|---:|---:|---:|");
    for (name, (l50, l99, lmax), rate) in [
        ("Python SDK straight to the fake gateway", d_lat, d_rate),
        (
            "Python SDK through dingtalk-streamd's compat endpoint",
            c_lat,
            c_rate,
        ),
    ] {
        println!("| {name} | {rate:.0} | {l50:.2} ms | {l99:.2} ms | {lmax:.2} ms |");
    }
    println!(
        "| the extra hop (difference) | | {:+.2} ms | {:+.2} ms | |",
        c_lat.0 - d_lat.0,
        c_lat.1 - d_lat.1
    );
}
