//! A fake systemd around the real binary: a fake `NOTIFY_SOCKET` collecting datagrams with
//! timestamps, and the daemon (or a launcher that execs it) as a [`Service`] on it.

use crate::common::daemon::{bin, command};
use crate::common::process::Proc;
use crate::common::wait::WAIT;
use nix::sys::signal::Signal;
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};
use tokio::net::UnixDatagram;
use tokio::sync::mpsc;

/// `WATCHDOG_USEC` for the watchdog tests: pings expected every 0.5 s.
pub const WATCHDOG_USEC: &str = "1000000";

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

/// A real binary under a fake systemd: `NOTIFY_SOCKET` set, its output collected.
pub struct Service {
    pub proc: Proc,
    notes: mpsc::UnboundedReceiver<Note>,
    /// Every note received so far, in order.
    pub seen: Vec<Note>,
    /// Where [`Service::logs`] looks next.
    log_from: usize,
    _notify_dir: tempfile::TempDir,
}

impl Service {
    /// Starts `program args` (the daemon, or a launcher that execs it) with `envs`.
    pub fn spawn(program: &Path, args: &[&str], envs: &[(&str, &str)]) -> Service {
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
        let mut c = command(program, args, envs);
        c.env("NOTIFY_SOCKET", &notify_path);
        Service {
            proc: Proc::spawn(&program.display().to_string(), c),
            notes,
            seen: Vec::new(),
            log_from: 0,
            _notify_dir: notify_dir,
        }
    }

    /// The daemon with `--config PATH run`.
    pub fn run(config: &Path, envs: &[(&str, &str)]) -> Service {
        let cfg = config.to_str().expect("utf-8 path");
        Service::spawn(Path::new(bin()), &["--config", cfg, "run"], envs)
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
                Err(_) => panic!(
                    "no {what} within {timeout:?}; notes: {:#?}\noutput:\n{}",
                    self.seen,
                    self.proc.text()
                ),
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

    /// Waits for the next output line (after the last one this found) containing `needle`.
    pub async fn logs(&mut self, needle: &str, timeout: Duration) -> String {
        self.proc
            .wait_line(&mut self.log_from, needle, timeout)
            .await
            .text
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.proc.stderr()
    }

    pub fn signal(&self, sig: Signal) {
        self.proc.signal(sig);
    }

    /// SIGTERM, STOPPING=1, exit.
    pub async fn stop(&mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        self.note("STOPPING=1", WAIT, |n| n.has("STOPPING=1")).await;
        self.wait_exit().await
    }

    pub async fn wait_exit(&mut self) -> ExitStatus {
        self.proc.wait_exit(WAIT).await
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

/// Whether a Unix socket accepts a connection right now.
pub fn connectable(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}
