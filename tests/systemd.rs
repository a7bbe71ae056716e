//! The daemon under (fake) systemd, through the real binary: sd_notify on a fake
//! `NOTIFY_SOCKET` (READY before DingTalk answers, WATCHDOG cadence and its stop when a part is
//! wedged, STATUS text, STOPPING, RELOADING around SIGHUP reloads), socket activation with fake
//! `LISTEN_FDS` (tests/support/listenfds.py), the secret from `$CREDENTIALS_DIRECTORY`, and
//! exit 78 when not configured. The journald side is in tests/journald.rs.

mod common;

use common::{Paths, SECRET, WAIT, bin, config_yaml, gateway, gateway_with};
use dingtalk_streamd::sim::{GatewayEvent, TicketFault};
use nix::sys::signal::Signal;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::net::UnixDatagram;
use tokio::sync::mpsc;

/// `WATCHDOG_USEC` for the watchdog tests: pings expected every 0.5 s.
const WATCHDOG_USEC: &str = "1000000";

fn support(script: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(script)
}

/// One datagram from the daemon on the fake `NOTIFY_SOCKET`.
#[derive(Debug, Clone)]
struct Note {
    at: Instant,
    text: String,
}

impl Note {
    fn has(&self, line: &str) -> bool {
        self.text.lines().any(|l| l == line)
    }
    fn value(&self, key: &str) -> Option<&str> {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    }
}

/// The real binary with a fake `NOTIFY_SOCKET`, its stderr collected line by line.
struct Daemon {
    child: Child,
    notes: mpsc::UnboundedReceiver<Note>,
    /// Every note received so far, in order.
    seen: Vec<Note>,
    log: mpsc::UnboundedReceiver<String>,
    /// Every stderr line read so far.
    logged: Vec<String>,
    _notify_dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `program args` (the daemon, or a launcher that execs it) with `envs`.
    fn spawn(program: &Path, args: &[&str], envs: &[(&str, &str)]) -> Daemon {
        let notify_dir = tempfile::tempdir().expect("tempdir");
        let notify_path = notify_dir.path().join("notify");
        let sock = UnixDatagram::bind(&notify_path).expect("bind fake NOTIFY_SOCKET");
        let (tx, notes) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = sock.recv(&mut buf).await {
                let note = Note {
                    at: Instant::now(),
                    text: String::from_utf8_lossy(&buf[..n]).into_owned(),
                };
                if tx.send(note).is_err() {
                    return;
                }
            }
        });
        let mut c = Command::new(program);
        c.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for k in [
            "RUST_LOG",
            "JOURNAL_STREAM",
            "LISTEN_FDS",
            "LISTEN_PID",
            "LISTEN_FDNAMES",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "CREDENTIALS_DIRECTORY",
            "DINGTALK_STREAMD_TEST_WEDGE",
        ] {
            c.env_remove(k);
        }
        c.env("NOTIFY_SOCKET", &notify_path);
        for (k, v) in envs {
            c.env(k, v);
        }
        let mut child = c.spawn().expect("spawn");
        let stderr = child.stderr.take().expect("stderr");
        let (ltx, log) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if ltx.send(line).is_err() {
                    return;
                }
            }
        });
        Daemon {
            child,
            notes,
            seen: Vec::new(),
            log,
            logged: Vec::new(),
            _notify_dir: notify_dir,
        }
    }

    /// The daemon with `--config PATH run`.
    fn run(config: &Path, envs: &[(&str, &str)]) -> Daemon {
        let cfg = config.to_str().expect("utf-8 path");
        Daemon::spawn(Path::new(bin()), &["--config", cfg, "run"], envs)
    }

    /// Waits for the next note matching `pred` (notes before it are kept in `seen`).
    async fn note(&mut self, what: &str, timeout: Duration, pred: impl Fn(&Note) -> bool) -> Note {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.notes.recv()).await {
                Ok(Some(n)) => {
                    self.seen.push(n.clone());
                    if pred(&n) {
                        return n;
                    }
                }
                Ok(None) => panic!("notify socket closed while waiting for {what}"),
                Err(_) => {
                    let log = self.drain_log();
                    panic!(
                        "no {what} within {timeout:?}; notes: {:#?}\nlog:\n{log}",
                        self.seen
                    )
                }
            }
        }
    }

    /// Collects notes for `d`.
    async fn notes_for(&mut self, d: Duration) -> Vec<Note> {
        let deadline = tokio::time::Instant::now() + d;
        let mut got = Vec::new();
        while let Ok(Some(n)) = tokio::time::timeout_at(deadline, self.notes.recv()).await {
            self.seen.push(n.clone());
            got.push(n);
        }
        got
    }

    async fn ready(&mut self) -> Note {
        self.note("READY=1", WAIT, |n| n.has("READY=1")).await
    }

    /// Waits for a stderr line containing `needle`.
    async fn logs(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.log.recv()).await {
                Ok(Some(l)) => {
                    self.logged.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Ok(None) => panic!(
                    "stderr closed while waiting for {needle:?}:\n{}",
                    self.logged.join("\n")
                ),
                Err(_) => panic!(
                    "no log line with {needle:?} within {timeout:?}:\n{}",
                    self.logged.join("\n")
                ),
            }
        }
    }

    /// Everything logged so far (also what is still queued).
    fn drain_log(&mut self) -> String {
        while let Ok(l) = self.log.try_recv() {
            self.logged.push(l);
        }
        self.logged.join("\n")
    }

    fn signal(&self, sig: Signal) {
        common::signal(&self.child, sig);
    }

    /// SIGTERM, STOPPING=1, exit.
    async fn stop(&mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        self.note("STOPPING=1", WAIT, |n| n.has("STOPPING=1")).await;
        self.wait_exit().await
    }

    async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit in time:\n{}",
                self.drain_log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGHUP and waits for `RELOADING=1` (with `MONOTONIC_USEC`) and then `READY=1`.
    async fn reload(&mut self) -> Note {
        self.signal(Signal::SIGHUP);
        let r = self
            .note("RELOADING=1", WAIT, |n| n.has("RELOADING=1"))
            .await;
        let usec: u64 = r
            .value("MONOTONIC_USEC")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {r:?}"));
        assert!(usec > 0);
        self.note("READY=1 after the reload", WAIT, |n| n.has("READY=1"))
            .await
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(p: &Paths, yaml: &str) {
    // Write-then-rename, as an editor would: the daemon never reads half a file.
    let tmp = p.config.with_extension("tmp");
    std::fs::write(&tmp, yaml).expect("write config");
    std::fs::rename(&tmp, &p.config).expect("rename config");
}

fn connectable(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// READY=1 comes once the config is loaded, the spool open and both sockets accept, without
/// waiting for DingTalk (here: ticket 503 forever). STATUS then says why it is not connected,
/// in the words; SIGTERM gives STOPPING=1, exit 0, and the sockets it bound are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_without_dingtalk_backoff_status_and_stopping() {
    let gw = gateway(false).await;
    gw.set_ticket_fault(Some(TicketFault::status(503)));
    let p = Paths::new();
    write_config(&p, &config_yaml(&gw, &p, ""));
    let mut d = Daemon::run(&p.config, &[]);

    let ready = d.ready().await;
    assert!(
        connectable(&p.socket),
        "READY=1 before the consumer socket accepts"
    );
    assert!(
        connectable(&p.control),
        "READY=1 before the control socket accepts"
    );
    assert!(
        gw.open_connections().is_empty() && gw.tickets_issued() == 0,
        "no DingTalk connection is needed for READY"
    );
    assert!(
        ready.value("STATUS").is_some(),
        "READY=1 carries a STATUS=: {ready:?}"
    );

    let st = d
        .note("STATUS=backing off ... after ticket 503", WAIT, |n| {
            n.value("STATUS").is_some_and(|s| {
                s.starts_with("backing off ") && s.contains(" after ticket 503 (attempt ")
            })
        })
        .await;
    let line = st.value("STATUS").unwrap_or_default();
    let re_ok = {
        // "backing off 1s after ticket 503 (attempt 3) · 0 in · backlog 0 · 0 consumers"
        let (head, tail) = line.split_once(" · ").expect("one-liner with ' · ' parts");
        let delay = head
            .trim_start_matches("backing off ")
            .split(' ')
            .next()
            .unwrap_or_default();
        delay.ends_with('s')
            && delay[..delay.len() - 1]
                .chars()
                .all(|c| c.is_ascii_digit() || c == 'm')
            && tail == "0 in · backlog 0 · 0 consumers"
    };
    assert!(re_ok, "STATUS= line: {line:?}");
    let rejected = gw
        .events()
        .iter()
        .filter(|e| matches!(e.event, GatewayEvent::TicketRejected { status: 503 }))
        .count();
    assert!(rejected >= 2, "it kept trying: {rejected} ticket requests");

    let status = d.stop().await;
    assert!(status.success(), "clean stop exits 0: {status:?}");
    assert!(
        !p.socket.exists() && !p.control.exists(),
        "sockets it bound itself are removed on exit"
    );
}

/// `WATCHDOG=1` every WATCHDOG_USEC/2 while everything is healthy (messages flowing to a
/// group member); STATUS= shows the connection, the traffic and the consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_cadence_and_connected_status() {
    let gw = gateway(false).await;
    let p = Paths::new();
    write_config(&p, &config_yaml(&gw, &p, "groups: [bot]\n"));
    let mut d = Daemon::run(&p.config, &[("WATCHDOG_USEC", WATCHDOG_USEC)]);
    d.ready().await;
    gw.wait_connected(1, WAIT).await.expect("connected");
    let mut member = common::Consumer::member(&p.socket, "bot").await;

    let first = d.note("WATCHDOG=1", WAIT, |n| n.has("WATCHDOG=1")).await;
    let mut pings = vec![first.at];
    let window = Instant::now() + Duration::from_millis(3500);
    let mut sent = 0;
    while Instant::now() < window {
        if sent < 5 {
            gw.push_bot_text(&format!("hello {sent}"))
                .await
                .expect("push");
            let m = member.next().await;
            member.ack(m["seq"].as_u64().expect("seq")).await;
            sent += 1;
        }
        for n in d.notes_for(Duration::from_millis(100)).await {
            if n.has("WATCHDOG=1") {
                pings.push(n.at);
            }
        }
    }
    let gaps: Vec<f64> = pings
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    assert!(pings.len() >= 5, "too few WATCHDOG=1 in 3.5 s: {gaps:?}");
    assert!(
        gaps.iter().all(|g| *g < 0.9),
        "a gap reached WATCHDOG_USEC (1 s): {gaps:?}"
    );
    let mut sorted = gaps.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    eprintln!(
        "WATCHDOG_USEC=1000000: {} pings, median gap {median:.3}s, gaps {gaps:.3?}",
        pings.len()
    );
    assert!(
        (0.35..=0.7).contains(&median),
        "median gap {median:.3}s, want ~0.5 s: {gaps:?}"
    );

    let st = d
        .note("STATUS=connected ...", WAIT, |n| {
            n.value("STATUS")
                .is_some_and(|s| s.starts_with("connected "))
        })
        .await;
    let line = st.value("STATUS").unwrap_or_default().to_owned();
    assert!(
        line.ends_with(" · 5 in · backlog 0 · 1 consumer"),
        "STATUS= {line:?}"
    );
    assert!(
        !d.drain_log().contains("not feeding the systemd watchdog"),
        "false wedge verdict:\n{}",
        d.drain_log()
    );
    assert!(d.stop().await.success());
}

async fn wedge(part: &'static str, verdict: &'static str) {
    let gw = gateway(false).await;
    let p = Paths::new();
    write_config(&p, &config_yaml(&gw, &p, "groups: [bot]\n"));
    let mut d = Daemon::run(
        &p.config,
        &[
            ("WATCHDOG_USEC", WATCHDOG_USEC),
            ("DINGTALK_STREAMD_TEST_WEDGE", part),
        ],
    );
    d.ready().await;
    gw.wait_connected(1, WAIT).await.expect("connected");
    let mut member = common::Consumer::member(&p.socket, "bot").await;
    d.note("WATCHDOG=1 while healthy", WAIT, |n| n.has("WATCHDOG=1"))
        .await;

    gw.push_bot_text("first").await.expect("push");
    d.logs(&format!("wedging the {part} on purpose"), WAIT)
        .await;
    // Work the wedged part now holds (a frame to commit, to read, to deliver).
    gw.push_bot_text("second").await.expect("push");
    let _ = member.next_within(Duration::from_millis(10)).await;
    let line = d.logs("not feeding the systemd watchdog", WAIT).await;
    assert!(
        line.contains(verdict),
        "{part}: verdict names the part: {line}"
    );

    // From here on: no WATCHDOG=1 at all (systemd would kill us after 1 s), STATUS= goes on.
    // Notes still queued from before the verdict are told apart by their arrival time.
    let verdict_at = Instant::now();
    let mut notes: Vec<Note> = d.notes_for(Duration::from_secs(3)).await;
    notes.retain(|n| n.at > verdict_at + Duration::from_millis(100));
    let pings: Vec<&Note> = notes.iter().filter(|n| n.has("WATCHDOG=1")).collect();
    assert!(
        pings.is_empty(),
        "{part} wedged, yet WATCHDOG=1 was sent: {notes:#?}\nlog:\n{}",
        d.drain_log()
    );
    assert!(
        notes.iter().any(|n| n.value("STATUS").is_some()),
        "{part}: STATUS= stopped too: {notes:#?}"
    );
}

/// The deliberate wedge hook (`DINGTALK_STREAMD_TEST_WEDGE`) stops each part in turn after its
/// first message: the watchdog stops within one check and stays stopped, while STATUS goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_part_stops_the_watchdog() {
    tokio::join!(
        wedge("writer", "spool writer"),
        wedge("reader", "WebSocket reader"),
        wedge("sink", "consumer sink"),
    );
}

/// SIGHUP through the real binary: the log level changes, keepalive changes without a new
/// connection, a new group starts, a broken config is rejected (old one kept, still serving),
/// and new credentials reconnect make-before-break. Each reload is RELOADING=1 (with
/// MONOTONIC_USEC) then READY=1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reload() {
    let gw = gateway(false).await;
    let p = Paths::new();
    let slow = "keepalive:\n  ping_interval: 1s\n  pong_timeout: 500ms\n  tcp_keepalive_idle: 1s\n  tcp_keepalive_interval: 1s\n  tcp_keepalive_count: 2\n  tcp_user_timeout: 3s\n";
    let fast = "keepalive:\n  ping_interval: 200ms\n  pong_timeout: 150ms\n  tcp_keepalive_idle: 1s\n  tcp_keepalive_interval: 1s\n  tcp_keepalive_count: 2\n  tcp_user_timeout: 3s\n";
    write_config(&p, &config_yaml(&gw, &p, slow));
    let mut d = Daemon::run(&p.config, &[]);
    d.ready().await;
    let conn_a = gw.wait_connected(1, WAIT).await.expect("connected")[0];
    let mut tap = common::Consumer::tap(&p.socket).await;
    // The hub registers a tap after its silent 200 ms; wait until a push reaches it.
    let pushed = loop {
        let m = gw.push_bot_text("before").await.expect("push");
        if let Some(v) = tap.next_within(Duration::from_millis(500)).await {
            assert_eq!(v["message_id"], m.message_id.as_str());
            break m;
        }
    };

    // 1. Log level: info -> debug for the daemon's own events.
    assert!(
        !d.drain_log().contains(&pushed.message_id),
        "per-frame events are debug; info logged one"
    );
    write_config(
        &p,
        &config_yaml(
            &gw,
            &p,
            &format!("{slow}log:\n  level: info,dingtalk_streamd=debug\n"),
        ),
    );
    d.reload().await;
    let m = gw.push_bot_text("after").await.expect("push");
    tap.next().await;
    let line = d.logs(&m.message_id, WAIT).await;
    assert!(
        line.contains("DEBUG"),
        "debug event after the reload: {line}"
    );

    // 2. Keepalive: pings every 200 ms instead of 1 s, on the same connection.
    let mut cur = gw.subscribe();
    write_config(
        &p,
        &config_yaml(
            &gw,
            &p,
            &format!("{fast}log:\n  level: info,dingtalk_streamd=debug\n"),
        ),
    );
    d.reload().await;
    let mut pings = Vec::new();
    while pings.len() < 6 {
        let e = cur
            .wait_for(
                |e| matches!(e, GatewayEvent::ClientWsPing { .. }),
                Duration::from_secs(5),
            )
            .await
            .expect("client WebSocket pings go on");
        let GatewayEvent::ClientWsPing { conn } = e.event else {
            unreachable!()
        };
        assert_eq!(conn, conn_a, "pings on the original connection");
        pings.push(e.at);
    }
    let mut gaps: Vec<f64> = pings
        .windows(2)
        .skip(1)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    gaps.sort_by(f64::total_cmp);
    assert!(
        gaps[gaps.len() / 2] < 0.6,
        "ping_interval 200ms not applied (was 1s): {gaps:?}"
    );
    assert_eq!(
        gw.open_connections(),
        vec![conn_a],
        "keepalive change reconnected"
    );
    assert_eq!(
        gw.tickets_issued(),
        1,
        "keepalive change fetched a new ticket"
    );

    // 3. A new group starts at once.
    let with_group = config_yaml(
        &gw,
        &p,
        &format!("{fast}log:\n  level: info,dingtalk_streamd=debug\ngroups: [audit]\n"),
    );
    write_config(&p, &with_group);
    d.reload().await;
    let st = common::status(&p.control).await;
    assert!(
        st["groups"]["audit"].is_object(),
        "group audit not started: {st}"
    );

    // 4. A broken config is rejected; the old one stays in force and the daemon serves.
    write_config(&p, "dingtalk:\n  client_id: [broken\n");
    let ready = d.reload().await;
    d.logs("reload rejected: keeping the running configuration", WAIT)
        .await;
    assert!(
        ready
            .value("STATUS")
            .is_some_and(|s| s.contains("last reload rejected")),
        "STATUS= shows the rejection: {ready:?}"
    );
    let m = gw.push_bot_text("still serving").await.expect("push");
    assert_eq!(tap.next().await["message_id"], m.message_id.as_str());
    assert!(common::status(&p.control).await["groups"]["audit"].is_object());
    assert_eq!(gw.open_connections(), vec![conn_a]);

    // 5. New credentials and endpoint: the new connection opens before the old one closes.
    let gw2 = gateway_with(|c| c.client_id = "sim-client-2".into()).await;
    let mut cur1 = gw.subscribe();
    let with_new = config_yaml(&gw2, &p, &format!("{fast}groups: [audit]\n"));
    write_config(&p, &with_new);
    d.reload().await;
    let opened = gw2
        .wait_for(|e| matches!(e, GatewayEvent::Connected { .. }), WAIT)
        .await
        .expect("new connection");
    let closed = cur1
        .wait_for(
            |e| matches!(e, GatewayEvent::Closed { conn, .. } if *conn == conn_a),
            WAIT,
        )
        .await
        .expect("old connection retired");
    assert!(
        opened.at < closed.at,
        "make-before-break: old closed {:?} before the new opened",
        opened.at - closed.at
    );
    let m = gw2.push_bot_text("via the new app").await.expect("push");
    assert_eq!(tap.next().await["message_id"], m.message_id.as_str());

    assert!(d.stop().await.success());
    assert!(!d.drain_log().contains(SECRET), "the secret was logged");
}

/// The secret from `$CREDENTIALS_DIRECTORY/client_secret` (systemd's LoadCredential=) when the
/// config names none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_from_credentials_directory() {
    let gw = gateway(false).await;
    let p = Paths::new();
    let yaml: String = config_yaml(&gw, &p, "")
        .lines()
        .filter(|l| !l.contains("client_secret"))
        .map(|l| format!("{l}\n"))
        .collect();
    write_config(&p, &yaml);
    let creds = p.dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("client_secret"), format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(
        creds.join("client_secret"),
        std::fs::Permissions::from_mode(0o400),
    )
    .unwrap();
    let creds_s = creds.to_str().unwrap();

    let out = Command::new(bin())
        .args(["--config", p.config.to_str().unwrap(), "check-config"])
        .env("CREDENTIALS_DIRECTORY", creds_s)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("systemd credential"),
        "{text}"
    );
    assert!(!text.contains(SECRET));
    let without = Command::new(bin())
        .args(["--config", p.config.to_str().unwrap(), "check-config"])
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    assert_eq!(
        without.status.code(),
        Some(78),
        "no secret anywhere is a config error"
    );

    let mut d = Daemon::run(&p.config, &[("CREDENTIALS_DIRECTORY", creds_s)]);
    d.ready().await;
    gw.wait_connected(1, WAIT)
        .await
        .expect("the credential's secret was accepted");
    assert!(d.stop().await.success());
    assert!(!d.drain_log().contains(SECRET));
}

/// The packaged config (no client_id): exit 78, and STATUS= and the log say what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_configured_exits_78_with_status() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.yml");
    let mut d = Daemon::run(&shipped, &[]);
    let want = format!(
        "not configured: set dingtalk.client_id in {}",
        shipped.display()
    );
    let n = d
        .note("STATUS=not configured", WAIT, |n| {
            n.value("STATUS").is_some()
        })
        .await;
    assert_eq!(n.value("STATUS"), Some(want.as_str()));
    assert_eq!(d.wait_exit().await.code(), Some(78));
    assert!(d.drain_log().contains(&want));
    assert!(
        !d.seen.iter().any(|n| n.has("READY=1")),
        "READY=1 without a config"
    );
}

/// One socket-activation scenario: `bind` sockets at these paths (in this fd order) with these
/// names; `stream_at` / `control_at` are where the daemon must serve each role.
async fn activated(
    names: Option<&str>,
    bind: &[&str],
    stream_at: &str,
    control_at: &str,
    warn_expected: bool,
) {
    let gw = gateway(false).await;
    let p = Paths::new();
    write_config(&p, &config_yaml(&gw, &p, ""));
    let path = |n: &str| p.dir.path().join(n);
    let mut args: Vec<String> = Vec::new();
    if let Some(n) = names {
        args.extend(["--names".into(), n.into()]);
    }
    args.extend(["--mode".into(), "0640".into()]);
    args.extend(bind.iter().map(|b| path(b).display().to_string()));
    args.extend([
        "--".into(),
        bin().into(),
        "--config".into(),
        p.config.display().to_string(),
        "run".into(),
    ]);
    let launcher = std::env::var("PYTHON3").unwrap_or_else(|_| "python3".into());
    let mut all = vec![support("listenfds.py").display().to_string()];
    all.extend(args);
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let mut d = Daemon::spawn(Path::new(&launcher), &refs, &[]);
    d.ready().await;

    let inode = |n: &str| {
        std::fs::metadata(path(n))
            .map(|m| (m.ino(), m.mode() & 0o777))
            .expect("socket file")
    };
    let before: Vec<_> = bind.iter().map(|b| inode(b)).collect();
    for (b, (_, mode)) in bind.iter().zip(&before) {
        assert_eq!(*mode, 0o640, "{b}: the daemon chmodded an inherited socket");
    }
    if !bind.contains(&"stream.sock") {
        assert!(
            !p.socket.exists(),
            "the daemon bound socket.path although it got a socket"
        );
    }
    if !bind.contains(&"control.sock") {
        assert!(
            !p.control.exists(),
            "the daemon bound control.path although it got a socket"
        );
    }
    gw.wait_connected(1, WAIT).await.expect("connected");
    let mut tap = common::Consumer::tap(&path(stream_at)).await;
    let pushed = loop {
        let m = gw
            .push_bot_text("via an inherited socket")
            .await
            .expect("push");
        if let Some(v) = tap.next_within(Duration::from_millis(500)).await {
            break (m, v);
        }
    };
    assert_eq!(
        pushed.1["message_id"],
        pushed.0.message_id.as_str(),
        "the stream role is served at {stream_at}"
    );
    let st: Value = common::status(&path(control_at)).await;
    assert_eq!(
        st["state"], "connected",
        "the control role is served at {control_at}: {st}"
    );
    let log = d.drain_log();
    assert_eq!(
        log.contains("not bound to the configured path"),
        warn_expected,
        "{log}"
    );

    assert!(d.stop().await.success());
    let after: Vec<_> = bind.iter().map(|b| inode(b)).collect();
    assert_eq!(
        before, after,
        "inherited sockets must stay in place, not rebound or removed"
    );
}

/// Fake LISTEN_FDS (one socket unit, two ListenStream=, both fds named after the unit): each
/// fd is recognised by its bound path even in the "wrong" order; the daemon does not rebind,
/// chmod or unlink them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_fds_matched_by_path() {
    let unit = "dingtalk-streamd.socket:dingtalk-streamd.socket";
    activated(
        Some(unit),
        &["control.sock", "stream.sock"],
        "stream.sock",
        "control.sock",
        false,
    )
    .await;
}

/// Sockets not at the configured paths: LISTEN_FDNAMES `stream` / `control` decide, then the
/// order; the configured paths are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_fds_matched_by_name_then_order() {
    activated(
        Some("control:stream"),
        &["a.sock", "b.sock"],
        "b.sock",
        "a.sock",
        true,
    )
    .await;
    activated(None, &["x.sock", "y.sock"], "x.sock", "y.sock", true).await;
}
