//! The fake systemd around the real binary, shared by the sd_notify, reload and activation
//! tests: a fake `NOTIFY_SOCKET` collecting datagrams with timestamps, the daemon process with
//! its environment, and small helpers.
#![allow(dead_code)]

use super::common::{Paths, WAIT, bin};
use nix::sys::signal::Signal;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::net::UnixDatagram;
use tokio::sync::mpsc;

/// `WATCHDOG_USEC` for the watchdog tests: pings expected every 0.5 s.
pub const WATCHDOG_USEC: &str = "1000000";

pub fn support(script: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support")
        .join(script)
}

/// One datagram from the daemon on the fake `NOTIFY_SOCKET`.
#[derive(Debug, Clone)]
pub struct Note {
    pub at: Instant,
    pub text: String,
}

impl Note {
    pub fn has(&self, line: &str) -> bool {
        self.text.lines().any(|l| l == line)
    }
    pub fn value(&self, key: &str) -> Option<&str> {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    }
}

/// The real binary with a fake `NOTIFY_SOCKET`, its stderr collected line by line.
pub struct Daemon {
    pub child: Child,
    pub notes: mpsc::UnboundedReceiver<Note>,
    /// Every note received so far, in order.
    pub seen: Vec<Note>,
    pub log: mpsc::UnboundedReceiver<String>,
    /// Every stderr line read so far.
    pub logged: Vec<String>,
    pub _notify_dir: tempfile::TempDir,
}

impl Daemon {
    /// Starts `program args` (the daemon, or a launcher that execs it) with `envs`.
    pub fn spawn(program: &Path, args: &[&str], envs: &[(&str, &str)]) -> Daemon {
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
    pub fn run(config: &Path, envs: &[(&str, &str)]) -> Daemon {
        let cfg = config.to_str().expect("utf-8 path");
        Daemon::spawn(Path::new(bin()), &["--config", cfg, "run"], envs)
    }

    /// Waits for the next note matching `pred` (notes before it are kept in `seen`).
    pub async fn note(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Note) -> bool,
    ) -> Note {
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
    pub async fn notes_for(&mut self, d: Duration) -> Vec<Note> {
        let deadline = tokio::time::Instant::now() + d;
        let mut got = Vec::new();
        while let Ok(Some(n)) = tokio::time::timeout_at(deadline, self.notes.recv()).await {
            self.seen.push(n.clone());
            got.push(n);
        }
        got
    }

    pub async fn ready(&mut self) -> Note {
        self.note("READY=1", WAIT, |n| n.has("READY=1")).await
    }

    /// Waits for a stderr line containing `needle`.
    pub async fn logs(&mut self, needle: &str, timeout: Duration) -> String {
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
    pub fn drain_log(&mut self) -> String {
        while let Ok(l) = self.log.try_recv() {
            self.logged.push(l);
        }
        self.logged.join("\n")
    }

    pub fn signal(&self, sig: Signal) {
        super::common::signal(&self.child, sig);
    }

    /// SIGTERM, STOPPING=1, exit.
    pub async fn stop(&mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        self.note("STOPPING=1", WAIT, |n| n.has("STOPPING=1")).await;
        self.wait_exit().await
    }

    pub async fn wait_exit(&mut self) -> ExitStatus {
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
    pub async fn reload(&mut self) -> Note {
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

pub fn write_config(p: &Paths, yaml: &str) {
    // Write-then-rename, as an editor would: the daemon never reads half a file.
    let tmp = p.config.with_extension("tmp");
    std::fs::write(&tmp, yaml).expect("write config");
    std::fs::rename(&tmp, &p.config).expect("rename config");
}

pub fn connectable(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}
