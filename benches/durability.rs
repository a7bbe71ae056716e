//! End-to-end durability benchmark: the daemon in-process (`run`) against the fake gateway on
//! 127.0.0.1, a consumer group member acking every line, the spool on a real disk.
//!
//! - sustained durable throughput at saturation: the gateway keeps `WINDOW` frames unACKed at
//!   all times; a frame counts once its ACK reached the gateway *and* its line reached the
//!   consumer (frame in → commit → ACK out → consumer).
//! - ACK latency at 1,000 msg/s: one frame per millisecond, time from the push to the ACK
//!   arriving at the gateway (p50/p99).
//! - the raw fsync latency of a 4 KiB append on the same filesystem, for comparison.
//!
//! The fake gateway runs in the same process and costs CPU of its own (two cores here), so the
//! figures are a lower bound for the daemon. `$DURABILITY_BENCH_DIR` overrides the directory
//! (default: under the target dir; never tmpfs, where fsync is free). `DURABILITY_BENCH_N` sets
//! the frames of the throughput run (default 100,000).
//!
//! `cargo bench --bench durability` (`DURABILITY_BENCH_RUNS` latency runs per mode, default 3)

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dingtalk_streamd::config::Config;
use dingtalk_streamd_sim::{FakeGateway, GatewayConfig, GatewayEvent, OutFrame, Route};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "bench-secret-5d1c";
/// Frames the gateway keeps unACKed in the saturation run (well under max_pending_acks).
const WINDOW: u64 = 4000;
const LATENCY_RATE_PER_S: u64 = 1000;
const LATENCY_SECS: u64 = 10;
const FSYNC_SAMPLES: usize = 2000;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() {
    let root = std::env::var_os("DURABILITY_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("durability-bench"));
    let n: u64 = std::env::var("DURABILITY_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Err(e) = rt.block_on(run(&root, n)) {
        eprintln!("durability bench failed in {}: {e}", root.display());
        std::process::exit(1);
    }
}

async fn run(root: &Path, n: u64) -> Result<(), BoxError> {
    let _ = fs::remove_dir_all(root);
    fs::create_dir_all(root)?;
    let runs: usize = std::env::var("DURABILITY_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let fsync = fsync_latencies(root)?;
    let mut rows = Vec::new();
    for mode in [Mode::Process, Mode::InProcess] {
        let sat = saturation(&root.join("saturation"), n, mode).await?;
        rows.push(format!(
            "| sustained durable throughput, daemon {} ({} msgs, window {WINDOW}; {:.0} frames per commit) | **{:.0} msg/s** | – | – | – |",
            mode.name(),
            sat.messages,
            sat.messages as f64 / sat.batches.max(1) as f64,
            sat.rate
        ));
        for run in 1..=runs {
            let lat = latency(&root.join("latency"), mode).await?;
            rows.push(format!(
                "| ACK latency at {LATENCY_RATE_PER_S} msg/s, daemon {}, run {run}/{runs} ({} msgs, push → ACK at gateway) | {:.0} msg/s | {} | **{}** | {} |",
                mode.name(),
                lat.len(),
                lat.len() as f64 / LATENCY_SECS as f64,
                fmt(pct(&lat, 50)),
                fmt(pct(&lat, 99)),
                fmt(pct(&lat, 100))
            ));
        }
    }
    println!(
        "directory: {} ({}), {} CPUs",
        root.display(),
        fs_name(root),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!("| measurement | result | p50 | p99 | max |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| raw 4 KiB append + `fdatasync` ({FSYNC_SAMPLES}×) | {:.0} fsync/s | {} | {} | {} |",
        1.0 / mean(&fsync).as_secs_f64(),
        fmt(pct(&fsync, 50)),
        fmt(pct(&fsync, 99)),
        fmt(pct(&fsync, 100))
    );
    for r in rows {
        println!("{r}");
    }
    Ok(())
}

/// Where the daemon runs during a measurement.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `run()` on the bench's own tokio runtime, beside the fake gateway and the driver.
    InProcess,
    /// The real binary (release build) as its own process, as in production.
    Process,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::InProcess => "in-process",
            Mode::Process => "own process",
        }
    }
}

/// The daemon with its spool in `dir` (in-process or as the real binary), and a gateway;
/// returns both and the token.
async fn daemon(
    dir: &Path,
    mode: Mode,
) -> Result<
    (
        FakeGateway,
        PathBuf,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ),
    BoxError,
> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir.join("spool"))?;
    let gw = FakeGateway::start(GatewayConfig {
        client_secret: SECRET.into(),
        redeliver_after: None,
        ..GatewayConfig::default()
    })
    .await?;
    let socket = dir.join("stream.sock");
    let yaml = format!(
        "dingtalk:\n  client_id: {}\n  client_secret: {SECRET}\n  open_url: {}\nsocket:\n  path: {}\ncontrol:\n  path: {}\nspool:\n  dir: {}\ngroups: [bench]\nconsumers:\n  in_flight: 10000\nlimits:\n  max_pending_acks: 100000\nlog:\n  level: warn\n",
        gw.config().client_id,
        gw.open_url(),
        socket.display(),
        dir.join("control.sock").display(),
        dir.join("spool").display(),
    );
    let config = dir.join("config.yml");
    fs::write(&config, yaml)?;
    // The secret is inline: the daemon refuses a config others can read.
    fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let loaded = Config::load(&config)?;
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = if mode == Mode::InProcess {
        tokio::spawn(async move {
            if let Err(e) = dingtalk_streamd::run(loaded, token).await {
                eprintln!("daemon: {e}");
            }
        })
    } else {
        // As in production: the daemon is its own process (the real binary, release build),
        // so the fake gateway and the load driver do not share its tokio workers.
        drop(loaded);
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dingtalk-streamd"))
            .args(["--config", &config.display().to_string(), "run"])
            .env_remove("NOTIFY_SOCKET")
            .env_remove("RUST_LOG")
            .kill_on_drop(true)
            .spawn()?;
        tokio::spawn(async move {
            token.cancelled().await;
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
            let _ = child.wait().await;
        })
    };
    gw.wait_connected(1, Duration::from_secs(10)).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&socket).await.is_err() {
        if Instant::now() > deadline {
            return Err("consumer socket never came up".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((gw, socket, shutdown, task))
}

/// A `bench` group member that acks every line; counts lines.
async fn member(
    socket: &Path,
    lines: Arc<AtomicU64>,
) -> Result<tokio::task::JoinHandle<()>, BoxError> {
    let s = UnixStream::connect(socket).await?;
    let (rd, mut wr) = s.into_split();
    wr.write_all(b"{\"hello\":{\"group\":\"bench\"}}\n").await?;
    let mut rd = BufReader::new(rd).lines();
    let welcome = rd.next_line().await?.ok_or("no welcome")?;
    if !welcome.contains("welcome") {
        return Err(format!("unexpected: {welcome}").into());
    }
    Ok(tokio::spawn(async move {
        let mut acks = Vec::with_capacity(64 * 1024);
        while let Ok(Some(line)) = rd.next_line().await {
            let Some(seq) = line
                .strip_prefix("{\"seq\":")
                .and_then(|r| r.split([',', '}']).next())
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            acks.clear();
            acks.extend_from_slice(format!("{{\"ack\":{seq}}}\n").as_bytes());
            if wr.write_all(&acks).await.is_err() {
                return;
            }
            lines.fetch_add(1, Ordering::Relaxed);
        }
    }))
}

struct Saturation {
    messages: u64,
    rate: f64,
    batches: u64,
}

async fn saturation(dir: &Path, n: u64, mode: Mode) -> Result<Saturation, BoxError> {
    let (gw, socket, shutdown, task) = daemon(dir, mode).await?;
    let lines = Arc::new(AtomicU64::new(0));
    let consumer = member(&socket, lines.clone()).await?;
    let conn = gw.open_connections()[0];
    let frames: Vec<OutFrame> = (0..n)
        .map(|i| OutFrame::bot_text(&format!("saturation {i}")))
        .collect();
    let mut cursor = gw.subscribe();
    let mut acked = 0u64;
    let mut pushed = 0u64;
    let started = Instant::now();
    let mut frames = frames.into_iter();
    while acked < n || lines.load(Ordering::Relaxed) < n {
        while pushed < n && pushed - acked < WINDOW {
            let f = frames.next().ok_or("ran out of frames")?;
            gw.push(f, Route::To(conn)).await?;
            pushed += 1;
        }
        acked += cursor
            .drain()
            .iter()
            .filter(|e| matches!(e.event, GatewayEvent::Ack { .. }))
            .count() as u64;
        if started.elapsed() > Duration::from_secs(300) {
            return Err(format!(
                "stalled: {acked} ACKs, {} lines of {n}",
                lines.load(Ordering::Relaxed)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let elapsed = started.elapsed();
    let batches = status_batches(&dir.join("control.sock")).await.unwrap_or(0);
    shutdown.cancel();
    let _ = task.await;
    consumer.abort();
    gw.shutdown().await;
    Ok(Saturation {
        messages: n,
        rate: n as f64 / elapsed.as_secs_f64(),
        batches,
    })
}

async fn status_batches(control: &Path) -> Result<u64, BoxError> {
    let mut s = UnixStream::connect(control).await?;
    s.write_all(b"{\"cmd\":\"status\"}\n").await?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).await?;
    let v: serde_json::Value = serde_json::from_str(&line)?;
    Ok(v["spool"]["batches"].as_u64().unwrap_or(0))
}

async fn latency(dir: &Path, mode: Mode) -> Result<Vec<Duration>, BoxError> {
    let (gw, socket, shutdown, task) = daemon(dir, mode).await?;
    let lines = Arc::new(AtomicU64::new(0));
    let consumer = member(&socket, lines.clone()).await?;
    let conn = gw.open_connections()[0];
    let total = LATENCY_RATE_PER_S * LATENCY_SECS;
    let mut sent_at: HashMap<String, Instant> = HashMap::with_capacity(total as usize);
    let mut lat = Vec::with_capacity(total as usize);
    let mut cursor = gw.subscribe();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / LATENCY_RATE_PER_S));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    // Warm-up outside the measurement: caches, the first WAL pages, the group's first reads.
    for i in 0..200 {
        tick.tick().await;
        gw.push(OutFrame::bot_text(&format!("warm-up {i}")), Route::To(conn))
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    cursor.drain();
    // A fresh interval: the old one would fire the ~300 ticks missed during the pause at once
    // (MissedTickBehavior::Burst), i.e. a burst instead of 1,000 msg/s.
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / LATENCY_RATE_PER_S));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let collect = |cursor: &mut dingtalk_streamd_sim::EventCursor,
                   sent_at: &mut HashMap<String, Instant>,
                   lat: &mut Vec<Duration>| {
        for e in cursor.drain() {
            if let GatewayEvent::Ack { message_id, .. } = &e.event
                && let Some(t0) = sent_at.remove(message_id)
            {
                lat.push(e.at.saturating_duration_since(t0));
            }
        }
    };
    for i in 0..total {
        tick.tick().await;
        let f = OutFrame::bot_text(&format!("latency {i}"));
        let t0 = Instant::now();
        let p = gw.push(f, Route::To(conn)).await?;
        sent_at.insert(p.message_id, t0);
        collect(&mut cursor, &mut sent_at, &mut lat);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sent_at.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
        collect(&mut cursor, &mut sent_at, &mut lat);
    }
    if !sent_at.is_empty() {
        return Err(format!("{} frames never ACKed", sent_at.len()).into());
    }
    shutdown.cancel();
    let _ = task.await;
    consumer.abort();
    gw.shutdown().await;
    lat.sort();
    Ok(lat)
}

/// 4 KiB appends to one file, each followed by `fdatasync`, as the WAL does.
fn fsync_latencies(dir: &Path) -> std::io::Result<Vec<Duration>> {
    let path = dir.join("fsync-probe");
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    let block = vec![0x5au8; 4096];
    let mut out = Vec::with_capacity(FSYNC_SAMPLES);
    for _ in 0..FSYNC_SAMPLES {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        out.push(t.elapsed());
    }
    drop(f);
    fs::remove_file(&path)?;
    out.sort();
    Ok(out)
}

fn pct(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = (sorted.len() * p / 100).min(sorted.len() - 1);
    sorted[idx]
}

fn mean(v: &[Duration]) -> Duration {
    v.iter().sum::<Duration>() / u32::try_from(v.len().max(1)).unwrap_or(u32::MAX)
}

fn fmt(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// The filesystem type of `dir`, from /proc/mounts (longest matching mount point).
fn fs_name(dir: &Path) -> String {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (_dev, mnt, ty) = (it.next()?, it.next()?, it.next()?);
            dir.starts_with(mnt).then(|| (mnt.len(), ty.to_owned()))
        })
        .max()
        .map_or_else(|| "unknown".into(), |(_, ty)| ty)
}
