//! sd_notify glue (READY, STATUS, WATCHDOG, STOPPING, RELOADING); every call is a no-op without
//! `NOTIFY_SOCKET`. The watchdog is honest: [`Watchdog::check`] feeds systemd only while the
//! WebSocket reader, the spool writer and the consumer sink have each shown progress (or had
//! nothing to do) since the previous check. It is driven from the supervisor's `select!`, never
//! from a detached timer, so a wedged supervisor stops it too.

use sd_notify::NotifyState;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// `READY=1` with a status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `STATUS=...`: the one-liner `systemctl status` shows.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// `STOPPING=1`.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// `RELOADING=1` with `MONOTONIC_USEC` (required by `Type=notify-reload` on newer systemd,
/// harmless on 252).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(m) => send(&[NotifyState::Reloading, m]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// The keep-alive interval: half of `WATCHDOG_USEC` (sd_watchdog_enabled(3)), when enabled for
/// this PID.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

/// A part of the daemon that must keep moving: it bumps its counter on every loop iteration.
#[derive(Debug, Default)]
pub struct Progress {
    beats: AtomicU64,
}

impl Progress {
    /// A new counter.
    pub fn new() -> Arc<Progress> {
        Arc::new(Progress::default())
    }
    /// Marks progress.
    pub fn beat(&self) {
        self.beats.fetch_add(1, Ordering::Relaxed);
    }
    /// The current count.
    pub fn get(&self) -> u64 {
        self.beats.load(Ordering::Relaxed)
    }
}

/// One watched part: its progress counter and a test for "nothing to do".
pub struct Part {
    /// Name used in the log when it is wedged.
    pub name: &'static str,
    /// Its counter.
    pub progress: Arc<Progress>,
    /// True when the part has no pending work (so no progress is needed).
    pub idle: Box<dyn Fn() -> bool + Send>,
    last: u64,
}

impl Part {
    /// Watches a part.
    pub fn new(name: &'static str, progress: Arc<Progress>, idle: Box<dyn Fn() -> bool + Send>) -> Part {
        let last = progress.get();
        Part {
            name,
            progress,
            idle,
            last,
        }
    }
}

/// The watchdog check over all parts.
pub struct Watchdog {
    parts: Vec<Part>,
    /// How often to check (half of WATCHDOG_USEC); `None` when systemd does not watch us.
    pub interval: Option<Duration>,
}

impl Watchdog {
    /// Builds the check; the interval comes from the environment.
    pub fn new(parts: Vec<Part>) -> Watchdog {
        Watchdog {
            parts,
            interval: watchdog_interval(),
        }
    }

    /// Sends `WATCHDOG=1` if every part progressed or is idle; otherwise returns the wedged
    /// part's name and sends nothing, so systemd's `WatchdogSec=` restarts us.
    pub fn check(&mut self) -> Result<(), &'static str> {
        let mut wedged = None;
        for p in &mut self.parts {
            let now = p.progress.get();
            if now == p.last && !(p.idle)() {
                wedged.get_or_insert(p.name);
            }
            p.last = now;
        }
        match wedged {
            None => {
                send(&[NotifyState::Watchdog]);
                Ok(())
            }
            Some(name) => Err(name),
        }
    }
}
