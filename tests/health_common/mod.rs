//! Helpers shared by the connection-health tests (health, proxy, netns): a child process whose
//! stdout and stderr lines are collected with timestamps and can be waited on with deadlines,
//! and a status poll with a deadline. `tests/common` stays untouched (other engineers use it).
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// One output line of a child, with when it was read.
#[derive(Debug, Clone)]
pub struct Line {
    /// When the line was read.
    pub at: Instant,
    /// `out` or `err`.
    pub stream: &'static str,
    /// The text.
    pub text: String,
}

/// A running child process with its output collected; killed when dropped.
pub struct LogChild {
    /// The process.
    pub child: Child,
    lines: Arc<Mutex<Vec<Line>>>,
    seq: watch::Receiver<u64>,
    /// A name for messages.
    pub name: String,
}

impl LogChild {
    /// Spawns `cmd` with piped stdout/stderr and null stdin.
    pub fn spawn(name: &str, mut cmd: Command) -> LogChild {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, seq) = watch::channel(0u64);
        let tx = Arc::new(tx);
        let out = child.stdout.take().expect("stdout piped");
        let err = child.stderr.take().expect("stderr piped");
        pump(out, "out", lines.clone(), tx.clone());
        pump(err, "err", lines.clone(), tx);
        LogChild {
            child,
            lines,
            seq,
            name: name.to_owned(),
        }
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<Line> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// All output as one text.
    pub fn text(&self) -> String {
        self.lines()
            .iter()
            .map(|l| format!("[{}] {}\n", l.stream, l.text))
            .collect()
    }

    /// Waits for the first line at index `>= from` matching `pred`; returns its index and line.
    pub async fn wait_line_from(
        &self,
        from: usize,
        mut pred: impl FnMut(&str) -> bool,
        timeout: Duration,
    ) -> Result<(usize, Line), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seq = self.seq.clone();
        loop {
            seq.borrow_and_update();
            let found = {
                let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
                lines
                    .iter()
                    .enumerate()
                    .skip(from)
                    .find(|(_, l)| pred(&l.text))
                    .map(|(i, l)| (i, l.clone()))
            };
            if let Some(f) = found {
                return Ok(f);
            }
            match tokio::time::timeout_at(deadline, seq.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    // Both pipes closed: one last look, then give up.
                    let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some((i, l)) = lines
                        .iter()
                        .enumerate()
                        .skip(from)
                        .find(|(_, l)| pred(&l.text))
                    {
                        return Ok((i, l.clone()));
                    }
                    return Err(format!(
                        "{} exited without the expected line; output:\n{}",
                        self.name,
                        self.text()
                    ));
                }
                Err(_) => {
                    return Err(format!(
                        "{} printed no expected line within {timeout:?}; output:\n{}",
                        self.name,
                        self.text()
                    ));
                }
            }
        }
    }

    /// Waits for a line containing `needle` (from the start).
    pub async fn wait_for(&self, needle: &str, timeout: Duration) -> Line {
        match self
            .wait_line_from(0, |t| t.contains(needle), timeout)
            .await
        {
            Ok((_, l)) => l,
            Err(e) => panic!("waiting for {needle:?}: {e}"),
        }
    }

    /// Number of lines so far (a cursor for `wait_line_from`).
    pub fn len(&self) -> usize {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Sends SIGTERM, waits up to `d` for the exit, kills otherwise.
    pub fn stop(&mut self, d: Duration) -> Option<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + d;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the exit within `d` (polling without blocking the runtime for long).
    pub async fn wait_exit(&mut self, d: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + d;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {d:?}; output:\n{}",
                self.name,
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for LogChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn pump(
    r: impl Read + Send + 'static,
    stream: &'static str,
    lines: Arc<Mutex<Vec<Line>>>,
    tx: Arc<watch::Sender<u64>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(text) = line else { break };
            lines.lock().unwrap_or_else(|e| e.into_inner()).push(Line {
                at: Instant::now(),
                stream,
                text,
            });
            tx.send_modify(|n| *n += 1);
        }
    });
}

/// The value of `key=...` in a tracing text line (up to the next space).
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!(" {key}=");
    let start = line.find(&pat)? + pat.len();
    let rest = &line[start..];
    Some(rest.split(' ').next().unwrap_or(rest).trim_matches('"'))
}

/// Asks a control socket for status, or `None` when it does not answer.
pub async fn try_status(control: &Path) -> Option<Value> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(control).await.ok()?;
    s.write_all(b"{\"cmd\":\"status\"}\n").await.ok()?;
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::BufReader::new(s).read_line(&mut line),
    )
    .await
    .ok()?
    .ok()?;
    serde_json::from_str(&line).ok()
}

/// Polls status until `pred` holds (every 10 ms, within `timeout`); returns that status.
pub async fn status_until(
    control: &Path,
    mut pred: impl FnMut(&Value) -> bool,
    timeout: Duration,
) -> Value {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = Value::Null;
    loop {
        if let Some(v) = try_status(control).await {
            if pred(&v) {
                return v;
            }
            last = v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "status never matched within {timeout:?}; last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The daemon binary with `--config PATH run`, env cleaned like `common::spawn_bin`.
pub fn daemon_cmd(config: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dingtalk-streamd"));
    c.arg("--config").arg(config).arg("run");
    c.env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .env_remove("LISTEN_FDS");
    for k in [
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
        "HTTP_PROXY",
        "http_proxy",
    ] {
        c.env_remove(k);
    }
    c
}

// Shared by the health test files (liveness, reconnect, handover).

/// Scheduling slack on a shared 2-core machine, added to every upper time bound.
pub const SLACK: Duration = Duration::from_millis(1000);

pub fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

pub fn keepalive(ping: &str, pong: &str) -> String {
    format!(
        "keepalive:\n  ping_interval: {ping}\n  pong_timeout: {pong}\n  tcp_keepalive_idle: 1s\n  tcp_keepalive_interval: 1s\n  tcp_keepalive_count: 2\n  tcp_user_timeout: 3s\n"
    )
}

pub fn reconnect(initial: &str, max: &str, connect_timeout: &str) -> String {
    format!(
        "reconnect:\n  initial_delay: {initial}\n  max_delay: {max}\n  stable_after: 1s\n  connect_timeout: {connect_timeout}\n"
    )
}

pub fn is_connected(e: &dingtalk_streamd_sim::GatewayEvent) -> bool {
    matches!(e, dingtalk_streamd_sim::GatewayEvent::Connected { .. })
}

pub fn connected_conn(e: &dingtalk_streamd_sim::GatewayEvent) -> dingtalk_streamd_sim::ConnId {
    match e {
        dingtalk_streamd_sim::GatewayEvent::Connected { conn, .. } => *conn,
        other => panic!("not a Connected event: {other:?}"),
    }
}
