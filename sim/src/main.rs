//! `dingtalk-streamd-sim`: a local fake DingTalk gateway for trying the daemon without
//! DingTalk credentials, and for consumer authors developing offline.
//!
//! It prints a daemon config snippet pointing at itself, then sends bot messages: at a fixed
//! `--rate`, or one per line typed on stdin (lines starting with `/` are commands).
//!
//! For soak runs: `--ack-log PATH` appends `pushed <messageId> <msgId>` per push and
//! `acked <messageId>` per first successful ACK (format in the library's `ack_log.rs`), and
//! `/status` prints running counts. `--disconnect-storm` (or `/storm`) tells every new
//! connection to go away as soon as it opens.
//!
//! For benchmarks (`scripts/bench`): `/burst N` pushes N frames of the fixed mix (90 % bot
//! messages, 10 % events; the library's `mix.rs`) at once, `/pace N RATE` pushes them at RATE
//! per second, and `--ack-log-times` ends every ACK log line with the wall clock in µs.
//! `/fill N [WINDOW]` pushes N small bot messages (two dedupe keys each, ~0.55 KB frames) as fast
//! as they are ACKed, at most WINDOW (default 20,000) awaiting an ACK: a spool with a full
//! dedupe window in seconds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use dingtalk_streamd_sim::{
    DisconnectStorm, FakeGateway, GatewayConfig, OutFrame, Route, TicketFault, now_ms,
};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tracing::{error, info, warn};

/// How long a typed message waits for the daemon to be connected.
const TYPED_WAIT: Duration = Duration::from_secs(30);
/// Fill frames awaiting an ACK at most, unless `/fill` says otherwise.
const FILL_WINDOW: u64 = 20_000;

/// A local DingTalk Stream Mode gateway simulator (ticket endpoint + WebSocket on one port).
#[derive(Parser, Debug)]
#[command(name = "dingtalk-streamd-sim", version, about, long_about = None)]
struct Cli {
    /// Address to listen on (HTTPS and WSS share it).
    #[arg(long, default_value = "127.0.0.1:18443")]
    listen: SocketAddr,
    /// Serve plain http:// and ws:// (the daemon allows that only on loopback).
    #[arg(long)]
    no_tls: bool,
    /// Where to write ca.pem (and default socket/spool paths for --write-config).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The clientId the simulator accepts.
    #[arg(long, default_value = "sim-client")]
    client_id: String,
    /// The clientSecret the simulator accepts.
    #[arg(long, default_value = "sim-secret")]
    client_secret: String,
    /// Send bot messages automatically at this rate (per second) instead of reading stdin.
    #[arg(long)]
    rate: Option<f64>,
    /// With --rate: how many messages in total (then keep running). Default: unlimited.
    #[arg(long)]
    count: Option<u64>,
    /// SYSTEM ping period, or "off".
    #[arg(long, default_value = "20s", value_parser = parse_opt_duration)]
    ping_interval: OptDuration,
    /// Redeliver an unACKed message after this, or "off".
    #[arg(long, default_value = "60s", value_parser = parse_opt_duration)]
    redeliver_after: OptDuration,
    /// How many times an unACKed message is redelivered at most.
    #[arg(long, default_value_t = 3)]
    max_redeliveries: u32,
    /// Send `disconnect` to every connection this often (DingTalk recycles connections).
    #[arg(long, value_parser = humantime::parse_duration)]
    disconnect_every: Option<Duration>,
    /// Silence between `disconnect` and the TCP close.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    disconnect_grace: Duration,
    /// Answer every new connection with `disconnect` right after it opens: "on" (until
    /// `/storm off`) or for a time from start, e.g. "30s".
    #[arg(long, value_name = "on|DURATION", value_parser = parse_storm)]
    disconnect_storm: Option<DisconnectStorm>,
    /// Append `pushed <messageId> <msgId>` per push and `acked <messageId>` per first
    /// successful ACK to this file (for soak checks).
    #[arg(long, value_name = "PATH")]
    ack_log: Option<PathBuf>,
    /// End every --ack-log line with the wall clock in microseconds since the Unix epoch.
    #[arg(long, requires = "ack_log")]
    ack_log_times: bool,
    /// Also write a complete daemon config file here.
    #[arg(long)]
    write_config: Option<PathBuf>,
    /// socket.path for --write-config (default: <state-dir>/stream.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// control.path for --write-config (default: <state-dir>/control.sock).
    #[arg(long)]
    control: Option<PathBuf>,
    /// spool.dir for --write-config (default: <state-dir>/spool).
    #[arg(long)]
    spool_dir: Option<PathBuf>,
    /// Exit when stdin closes (default: keep running, e.g. when started in the background).
    #[arg(long)]
    exit_on_eof: bool,
}

/// A duration that can be switched off.
#[derive(Debug, Clone, Copy)]
struct OptDuration(Option<Duration>);

fn parse_opt_duration(s: &str) -> Result<OptDuration, String> {
    if matches!(s, "off" | "none" | "0" | "0s") {
        return Ok(OptDuration(None));
    }
    humantime::parse_duration(s)
        .map(|d| OptDuration(Some(d)))
        .map_err(|e| e.to_string())
}

/// `on` (until switched off) or a window such as `30s`.
fn parse_storm(s: &str) -> Result<DisconnectStorm, String> {
    match s {
        "on" | "forever" => Ok(DisconnectStorm::until_off()),
        _ => humantime::parse_duration(s)
            .map(DisconnectStorm::for_window)
            .map_err(|e| format!("{e} (expected \"on\" or a duration such as 30s)")),
    }
}

/// How long shutdown waits for leftover tasks (a pending stdin read never finishes by itself).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(cli));
    rt.shutdown_timeout(SHUTDOWN_WAIT);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let state_dir = cli
        .state_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("dingtalk-streamd-sim"));
    std::fs::create_dir_all(&state_dir)
        .map_err(|e| format!("cannot create {}: {e}", state_dir.display()))?;
    let config = GatewayConfig {
        listen: cli.listen,
        tls: !cli.no_tls,
        client_id: cli.client_id.clone(),
        client_secret: cli.client_secret.clone(),
        ping_interval: cli.ping_interval.0,
        redeliver_after: cli.redeliver_after.0,
        max_redeliveries: cli.max_redeliveries,
        disconnect_grace: cli.disconnect_grace,
        disconnect_storm: cli.disconnect_storm,
        ack_log: cli.ack_log.clone(),
        ack_log_times: cli.ack_log_times,
        ..GatewayConfig::default()
    };
    let gw = FakeGateway::start(config)
        .await
        .map_err(|e| format!("cannot start the simulator on {}: {e}", cli.listen))?;
    let ca_file = if gw.ca_pem().is_some() {
        let path = state_dir.join("ca.pem");
        gw.write_ca_pem(&path)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Some(path)
    } else {
        None
    };

    let snippet = dingtalk_yaml(&gw, &cli, ca_file.as_deref());
    if let Some(path) = &cli.write_config {
        let full = full_config(&snippet, &cli, &state_dir);
        // It holds the simulator's client secret inline: the daemon refuses a config that
        // every user can read.
        write_private(path, &full).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("# complete config written to {}", path.display());
    }
    println!("# dingtalk-streamd config for this simulator:\n{snippet}");
    if cli.rate.is_none() {
        println!("# type a line to send it as a bot message; /help lists commands");
    }

    if let Some(every) = cli.disconnect_every {
        let gw = gw.clone();
        tokio::spawn(async move { recycle(gw, every).await });
    }
    let driver = {
        let gw = gw.clone();
        let (rate, count, exit_on_eof) = (cli.rate, cli.count, cli.exit_on_eof);
        tokio::spawn(async move {
            match rate {
                Some(rate) => send_at_rate(gw, rate, count).await,
                None => read_stdin(gw, exit_on_eof).await,
            }
        })
    };
    tokio::select! {
        () = shutdown_signal() => info!("signal received; shutting down"),
        _ = driver => info!("input finished; shutting down"),
    }
    gw.shutdown().await;
    Ok(())
}

fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

fn dingtalk_yaml(gw: &FakeGateway, cli: &Cli, ca_file: Option<&Path>) -> String {
    let mut out = format!(
        "dingtalk:\n  client_id: {}\n  client_secret: {}\n  open_url: {}\n",
        q(&cli.client_id),
        q(&cli.client_secret),
        q(&gw.open_url())
    );
    if let Some(ca) = ca_file {
        out.push_str(&format!("tls:\n  ca_file: {}\n", q(&ca.to_string_lossy())));
    }
    out
}

fn full_config(snippet: &str, cli: &Cli, state_dir: &Path) -> String {
    let path = |p: &Option<PathBuf>, default: &str| {
        q(&p.clone()
            .unwrap_or_else(|| state_dir.join(default))
            .to_string_lossy())
    };
    format!(
        "# Written by dingtalk-streamd-sim: a daemon config pointing at the local simulator.\n\
         {snippet}socket:\n  path: {}\ncontrol:\n  path: {}\nspool:\n  dir: {}\n",
        path(&cli.socket, "stream.sock"),
        path(&cli.control, "control.sock"),
        path(&cli.spool_dir, "spool"),
    )
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

async fn send_at_rate(gw: FakeGateway, rate: f64, count: Option<u64>) {
    let period = if rate.is_finite() && rate > 0.0 {
        Duration::from_secs_f64(1.0 / rate)
    } else {
        warn!(
            rate,
            "--rate must be positive; sending one message per second"
        );
        Duration::from_secs(1)
    };
    info!(
        ?period,
        ?count,
        "waiting for a connection, then sending bot messages"
    );
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    while count.is_none_or(|c| n < c) {
        tick.tick().await;
        n += 1;
        let frame = OutFrame::bot_text(&format!("sim message {n}"));
        match gw.push(frame, Route::Wait(Duration::from_secs(3600))).await {
            Ok(p) => info!(conn = %p.conn, message_id = %p.message_id, n, "bot message sent"),
            Err(e) => warn!(error = %e, n, "bot message not sent"),
        }
    }
    info!(n, "all messages sent; still serving (Ctrl-C to stop)");
    std::future::pending::<()>().await;
}

async fn recycle(gw: FakeGateway, every: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tick.tick().await;
        for conn in gw.open_connections() {
            if gw.send_disconnect(conn).is_ok() {
                info!(%conn, "recycling connection");
            }
        }
    }
}

async fn read_stdin(gw: FakeGateway, exit_on_eof: bool) {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut zombie = false;
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => {
                warn!(error = %e, "cannot read stdin");
                break;
            }
        };
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        if let Some(cmd) = line.strip_prefix('/') {
            if !command(&gw, cmd, &mut zombie).await {
                return;
            }
            continue;
        }
        let (gw, text) = (gw.clone(), line.to_owned());
        tokio::spawn(async move {
            match gw
                .push(OutFrame::bot_text(&text), Route::Wait(TYPED_WAIT))
                .await
            {
                Ok(p) => info!(conn = %p.conn, message_id = %p.message_id, "bot message sent"),
                Err(e) => warn!(error = %e, "bot message not sent (is the daemon connected?)"),
            }
        });
    }
    if !exit_on_eof {
        info!("stdin closed; still serving (Ctrl-C to stop, or use --exit-on-eof)");
        std::future::pending::<()>().await;
    }
}

const HELP: &str = "\
  <text>              send a bot message with this text
  /event [TYPE]       send an EVENT (default user_add_org)
  /card               send an interactive-card callback
  /burst N            push N frames of the benchmark mix (90 % bot, 10 % events) at once
  /pace N RATE        push N frames of the benchmark mix at RATE per second
  /fill N [WINDOW]    push N small bot messages as fast as they are ACKed (WINDOW unACKed at most)
  /ping               send a SYSTEM ping on every connection
  /disconnect         send `disconnect` to every connection (TCP closes after the grace)
  /drop               reset every connection's TCP (no close frame)
  /zombie             toggle zombie mode (no reads, no writes, TCP stays open)
  /storm [on|off|DUR] `disconnect` every new connection at once (until off, or for DUR)
  /ticket STATUS [N]  answer ticket requests with STATUS (N times); /ticket hang; /ticket ok
  /status             show connections, tickets, pushes and ACKs
  /quit               stop the simulator";

/// Runs one `/command`; returns false to stop.
async fn command(gw: &FakeGateway, cmd: &str, zombie: &mut bool) -> bool {
    let mut words = cmd.split_whitespace();
    let name = words.next().unwrap_or("");
    let arg = words.next();
    let conns = gw.open_connections();
    match name {
        "event" => {
            let data = json!({"timeStamp": now_ms().to_string(), "userId": ["sim-user"]});
            let frame = OutFrame::event(arg.unwrap_or("user_add_org"), &data);
            report(gw.push(frame, Route::Random).await.map(|_| ()), "event");
        }
        "card" => {
            let frame = OutFrame::card_callback("sim-card-1", "sim-user", &json!({"action": "ok"}));
            report(
                gw.push(frame, Route::Random).await.map(|_| ()),
                "card callback",
            );
        }
        "burst" => match arg.map(str::parse::<u64>) {
            Some(Ok(n)) => {
                tokio::spawn(burst(gw.clone(), n));
            }
            _ => println!("usage: /burst N"),
        },
        "pace" => match (arg.map(str::parse), words.next().map(str::parse::<f64>)) {
            (Some(Ok(n)), Some(Ok(rate))) if rate.is_finite() && rate > 0.0 => {
                tokio::spawn(pace(gw.clone(), n, rate));
            }
            _ => println!("usage: /pace N RATE (RATE per second, > 0)"),
        },
        "fill" => match (
            arg.map(str::parse::<u64>),
            words.next().map_or(Ok(FILL_WINDOW), str::parse::<u64>),
        ) {
            (Some(Ok(n)), Ok(window)) if window > 0 => {
                tokio::spawn(fill(gw.clone(), n, window));
            }
            _ => println!("usage: /fill N [WINDOW] (WINDOW > 0, default {FILL_WINDOW})"),
        },
        "ping" => each(&conns, "ping", |c| gw.send_ping(c).map(|_| ())),
        "disconnect" => each(&conns, "disconnect", |c| gw.send_disconnect(c).map(|_| ())),
        "drop" => each(&conns, "drop", |c| gw.drop_connection(c)),
        "zombie" => {
            *zombie = !*zombie;
            gw.set_zombie_all(*zombie);
            println!("zombie mode {}", if *zombie { "on" } else { "off" });
        }
        "ticket" => match (arg, arg.map(str::parse::<u16>)) {
            (Some("ok"), _) => gw.set_ticket_fault(None),
            (Some("hang"), _) => gw.set_ticket_fault(Some(TicketFault::hang())),
            (_, Some(Ok(status))) => {
                let mut fault = TicketFault::status(status);
                if let Some(n) = words.next().and_then(|n| n.parse().ok()) {
                    fault = fault.times(n);
                }
                gw.set_ticket_fault(Some(fault));
            }
            _ => println!("usage: /ticket STATUS [N] | /ticket hang | /ticket ok"),
        },
        "storm" => match arg.map_or(Ok(DisconnectStorm::until_off()), parse_storm) {
            _ if arg == Some("off") => {
                gw.set_disconnect_storm(None);
                println!("disconnect storm off");
            }
            Ok(storm) => {
                gw.set_disconnect_storm(Some(storm));
                match storm.window {
                    Some(w) => {
                        println!("disconnect storm on for {}", humantime::format_duration(w))
                    }
                    None => println!("disconnect storm on (until /storm off)"),
                }
            }
            Err(e) => println!("usage: /storm [on|off|DURATION]: {e}"),
        },
        "status" => {
            let list: Vec<String> = conns.iter().map(ToString::to_string).collect();
            let storm = if gw.disconnect_storm_active() {
                "on"
            } else {
                "off"
            };
            println!(
                "status: {} [{}]; disconnect storm: {storm}",
                gw.counts(),
                list.join(", ")
            );
        }
        "quit" | "exit" => return false,
        _ => println!("{HELP}"),
    }
    true
}

/// `/burst N`: prints `burst: N frames queued in X ms` (or why not).
async fn burst(gw: FakeGateway, n: u64) {
    let started = std::time::Instant::now();
    match gw.burst(n, TYPED_WAIT).await {
        Ok(p) => println!(
            "burst: {} frames queued in {:.1} ms",
            p.len(),
            started.elapsed().as_secs_f64() * 1e3
        ),
        Err(e) => println!("burst failed: {e}"),
    }
}

/// `/fill N [WINDOW]`: prints `fill: N frames ACKed in X s (R/s)` (or why not).
async fn fill(gw: FakeGateway, n: u64, window: u64) {
    match gw.fill(n, window, TYPED_WAIT).await {
        Ok(r) => println!(
            "fill: {} frames ACKed in {:.3} s ({:.0}/s)",
            r.acked,
            r.elapsed.as_secs_f64(),
            r.acked as f64 / r.elapsed.as_secs_f64().max(1e-9)
        ),
        Err(e) => println!("fill failed: {e}"),
    }
}

/// `/pace N RATE`: prints `pace: N frames in X s (R/s), max lag Y ms` (or why not).
async fn pace(gw: FakeGateway, n: u64, rate: f64) {
    match gw.pace(n, rate, TYPED_WAIT).await {
        Ok(r) => println!(
            "pace: {} frames in {:.3} s ({:.0}/s), max lag {:.1} ms",
            r.pushed,
            r.elapsed.as_secs_f64(),
            r.pushed as f64 / r.elapsed.as_secs_f64().max(1e-9),
            r.max_lag.as_secs_f64() * 1e3
        ),
        Err(e) => println!("pace failed: {e}"),
    }
}

fn report(result: Result<(), dingtalk_streamd_sim::PushError>, what: &str) {
    match result {
        Ok(()) => info!("{what} sent"),
        Err(e) => warn!(error = %e, "{what} not sent"),
    }
}

fn each<F>(conns: &[dingtalk_streamd_sim::ConnId], what: &str, f: F)
where
    F: Fn(dingtalk_streamd_sim::ConnId) -> Result<(), dingtalk_streamd_sim::PushError>,
{
    if conns.is_empty() {
        println!("no open connection");
    }
    for &c in conns {
        report(f(c), what);
    }
}

/// Writes `text` to `path`, readable by its owner only.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(text.as_bytes())
}
