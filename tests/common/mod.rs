//! Shared test harness: the project's fake gateway on 127.0.0.1:0, a daemon config with
//! sub-second timers, the daemon in-process (`run`) or as the real binary, and consumer clients.
//! Everything waits on events with deadlines; nothing sleeps to synchronise.
#![allow(dead_code)]

use dingtalk_streamd::config::Config;
use dingtalk_streamd_sim::{FakeGateway, GatewayConfig};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::sync::CancellationToken;

/// A generous deadline for things that normally take milliseconds.
pub const WAIT: Duration = Duration::from_secs(10);

/// The client secret the fake gateway accepts.
pub const SECRET: &str = "sim-secret-4b1d9f0e";

/// A fake gateway with the test secret, plain ws:// (or TLS when `tls`).
pub async fn gateway(tls: bool) -> FakeGateway {
    gateway_with(|c| c.tls = tls).await
}

/// A fake gateway with a customised config.
pub async fn gateway_with(f: impl FnOnce(&mut GatewayConfig)) -> FakeGateway {
    let mut c = GatewayConfig {
        client_secret: SECRET.into(),
        ..GatewayConfig::default()
    };
    f(&mut c);
    FakeGateway::start(c).await.expect("fake gateway starts")
}

/// Paths of one daemon instance in a temp dir.
pub struct Paths {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub control: PathBuf,
    pub spool: PathBuf,
}

impl Paths {
    pub fn new() -> Paths {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = dir.path().join("spool");
        std::fs::create_dir(&spool).expect("spool dir");
        Paths {
            config: dir.path().join("config.yml"),
            socket: dir.path().join("stream.sock"),
            control: dir.path().join("control.sock"),
            spool,
            dir,
        }
    }
}

/// A config for `gw` with fast timers; `extra` is appended (top-level YAML keys).
pub fn config_yaml(gw: &FakeGateway, p: &Paths, extra: &str) -> String {
    let tls = match gw.ca_pem() {
        Some(_) => {
            let ca = p.dir.path().join("ca.pem");
            gw.write_ca_pem(&ca).expect("write ca");
            format!("tls:\n  ca_file: {}\n", ca.display())
        }
        None => String::new(),
    };
    let has = |k: &str| extra.lines().any(|l| l.starts_with(k));
    let mut y = format!(
        "dingtalk:\n  client_id: {}\n  client_secret: {SECRET}\n  open_url: {}\n{tls}socket:\n  path: {}\n  mode: \"0600\"\ncontrol:\n  path: {}\nspool:\n  dir: {}\n",
        gw.config().client_id,
        gw.open_url(),
        p.socket.display(),
        p.control.display(),
        p.spool.display(),
    );
    if !has("keepalive:") {
        y += "keepalive:\n  ping_interval: 300ms\n  pong_timeout: 200ms\n  tcp_keepalive_idle: 1s\n  tcp_keepalive_interval: 1s\n  tcp_keepalive_count: 2\n  tcp_user_timeout: 2s\n";
    }
    if !has("reconnect:") {
        y += "reconnect:\n  initial_delay: 50ms\n  max_delay: 400ms\n  stable_after: 1s\n  connect_timeout: 2s\n";
    }
    if !has("log:") {
        y += "log:\n  level: info\n";
    }
    y += extra;
    y
}

/// The daemon running in-process through the library's `run`.
pub struct Daemon {
    pub paths: Paths,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), dingtalk_streamd::Error>>,
}

impl Daemon {
    /// Writes the config, starts `run`, and waits until the consumer socket accepts.
    pub async fn start(gw: &FakeGateway, extra: &str) -> Daemon {
        Daemon::start_at(Paths::new(), gw, extra).await
    }

    /// Same, reusing existing paths (a restart over the same spool).
    pub async fn start_at(paths: Paths, gw: &FakeGateway, extra: &str) -> Daemon {
        std::fs::write(&paths.config, config_yaml(gw, &paths, extra)).expect("write config");
        let loaded = Config::load(&paths.config).expect("config loads");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(dingtalk_streamd::run(loaded, shutdown.clone()));
        wait_for_socket(&paths.socket).await;
        Daemon {
            paths,
            shutdown,
            task,
        }
    }

    /// Stops it and returns its result and paths.
    pub async fn stop(self) -> (Result<(), dingtalk_streamd::Error>, Paths) {
        self.shutdown.cancel();
        let r = tokio::time::timeout(WAIT, self.task)
            .await
            .expect("daemon stops in time")
            .expect("daemon task");
        (r, self.paths)
    }

    pub async fn tap(&self) -> Consumer {
        Consumer::tap(&self.paths.socket).await
    }

    pub async fn member(&self, group: &str) -> Consumer {
        Consumer::member(&self.paths.socket, group).await
    }

    /// The status document from the control socket.
    pub async fn status(&self) -> Value {
        status(&self.paths.control).await
    }
}

/// Asks a control socket for status.
pub async fn status(control: &Path) -> Value {
    let mut s = UnixStream::connect(control).await.expect("control socket");
    s.write_all(b"{\"cmd\":\"status\"}\n").await.expect("write");
    let mut line = String::new();
    tokio::time::timeout(WAIT, BufReader::new(s).read_line(&mut line))
        .await
        .expect("status in time")
        .expect("read");
    serde_json::from_str(&line).expect("status JSON")
}

/// Waits until a Unix socket accepts connections.
pub async fn wait_for_socket(path: &Path) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if UnixStream::connect(path).await.is_ok() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never accepted",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A consumer connection.
pub struct Consumer {
    pub lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    pub wr: OwnedWriteHalf,
}

impl Consumer {
    /// A tap: connects and says nothing; registered at once by the daemon.
    pub async fn tap(path: &Path) -> Consumer {
        let s = UnixStream::connect(path).await.expect("connect tap");
        let (rd, wr) = s.into_split();
        Consumer {
            lines: BufReader::new(rd).lines(),
            wr,
        }
    }

    /// A group member: hello, then waits for the welcome.
    pub async fn member(path: &Path, group: &str) -> Consumer {
        let mut c = Consumer::tap(path).await;
        c.send(&format!("{{\"hello\":{{\"group\":\"{group}\"}}}}"))
            .await;
        let w = c.next().await;
        assert_eq!(w["welcome"]["group"], group, "welcome: {w}");
        c
    }

    pub async fn send(&mut self, line: &str) {
        self.wr
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("send line");
    }

    pub async fn ack(&mut self, seq: u64) {
        self.send(&format!("{{\"ack\":{seq}}}")).await;
    }

    /// The next line as JSON, within [`WAIT`].
    pub async fn next(&mut self) -> Value {
        self.next_within(WAIT).await.expect("a line in time")
    }

    /// The next line within `d`, or None on timeout.
    pub async fn next_within(&mut self, d: Duration) -> Option<Value> {
        match tokio::time::timeout(d, self.lines.next_line()).await {
            Ok(Ok(Some(l))) => {
                Some(serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            }
            Ok(Ok(None)) => panic!("the daemon closed the consumer connection"),
            Ok(Err(e)) => panic!("read error: {e}"),
            Err(_) => None,
        }
    }
}

/// The daemon binary.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_dingtalk-streamd")
}

/// The simulator binary. It is another package of the workspace, so Cargo only builds it
/// for `cargo test --workspace` (what `scripts/test` runs), next to the daemon's binary.
pub fn sim_bin() -> PathBuf {
    let p = Path::new(bin()).with_file_name("dingtalk-streamd-sim");
    assert!(
        p.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (scripts/test does)",
        p.display()
    );
    p
}

/// Runs the binary with `args`, capturing stdout and stderr.
pub fn spawn_bin(args: &[&str], envs: &[(&str, &str)]) -> Child {
    let mut c = Command::new(bin());
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c.env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .env_remove("LISTEN_FDS");
    for (k, v) in envs {
        c.env(k, v);
    }
    c.spawn().expect("spawn daemon binary")
}

/// Waits for a child to exit within `d`; kills it and panics otherwise.
pub fn wait_exit(child: &mut Child, d: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + d;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {d:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends a signal to a child.
pub fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).expect("kill");
}

/// A test that needs root-only machinery (mount namespaces, tmpfs, a fake journald) and cannot
/// have it here: skipped with a message, or a failure when `DTS_REQUIRE_PRIVILEGED=1` (CI runs
/// as root and sets it, so these tests can never pass there without running).
pub fn skip_or_fail(test: &str, why: &str) {
    assert!(
        std::env::var("DTS_REQUIRE_PRIVILEGED").map_or(true, |v| v != "1"),
        "{test} cannot run: {why} (DTS_REQUIRE_PRIVILEGED=1)"
    );
    eprintln!("SKIPPED {test}: {why}");
}
