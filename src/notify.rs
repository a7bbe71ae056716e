//! sd_notify glue (READY, STATUS, WATCHDOG, STOPPING, RELOADING); every call is a no-op without
//! `NOTIFY_SOCKET`. The watchdog is honest: [`Watchdog::check`] feeds systemd only while the
//! WebSocket reader, the spool writer and the consumer sink have each shown progress (or had
//! nothing to do) since the previous check. It is driven from the supervisor's `select!`, never
//! from a detached timer, so a wedged supervisor stops it too.

use sd_notify::NotifyState;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The heartbeat when systemd does not watch us: nobody reads the beats, so an idle daemon
/// does not wake up for them.
const UNWATCHED_HEARTBEAT: Duration = Duration::from_secs(3600);
/// The shortest heartbeat, whatever `WATCHDOG_USEC` says (systemd's floor is 1 s anyway).
const MIN_HEARTBEAT: Duration = Duration::from_millis(50);

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Whether systemd listens (`NOTIFY_SOCKET` is set): without it, nothing needs refreshing.
pub fn listening() -> bool {
    static SET: OnceLock<bool> = OnceLock::new();
    *SET.get_or_init(|| std::env::var_os("NOTIFY_SOCKET").is_some_and(|v| !v.is_empty()))
}

/// `READY=1` with a status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `STATUS=...`: the one-liner `systemctl status` shows.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// A bare `WATCHDOG=1`, for a phase where the daemon is healthy by definition (waiting for
/// disk space at start, before its parts run).
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// `STOPPING=1`.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// `RELOADING=1` with `MONOTONIC_USEC` (required by `Type=notify-reload` on newer systemd,
/// harmless on 252).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(m) => send(&[
            NotifyState::Reloading,
            m,
            NotifyState::Status("reloading the configuration"),
        ]),
        Err(_) => send(&[
            NotifyState::Reloading,
            NotifyState::Status("reloading the configuration"),
        ]),
    }
}

/// The keep-alive interval: half of `WATCHDOG_USEC` (sd_watchdog_enabled(3)), when enabled for
/// this PID. Read once: the environment does not change under a running daemon.
pub fn watchdog_interval() -> Option<Duration> {
    static INTERVAL: OnceLock<Option<Duration>> = OnceLock::new();
    *INTERVAL.get_or_init(|| sd_notify::watchdog_enabled().map(|d| d / 2))
}

/// How often a watched part beats when it has nothing to do: twice per watchdog check (so a
/// healthy idle part is never mistaken for a wedged one), and rarely when nothing watches.
pub fn heartbeat() -> Duration {
    match watchdog_interval() {
        Some(i) => (i / 2).max(MIN_HEARTBEAT),
        None => UNWATCHED_HEARTBEAT,
    }
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

/// How a part reports progress: one counter, or one per unit that runs on its own (a consumer
/// group's task), where every unit must move.
pub enum Counters {
    /// A single counter.
    One(Arc<Progress>),
    /// Named counters, read at each check; units may come and go.
    Each(Box<dyn Fn() -> Vec<(String, u64)> + Send>),
}

/// One watched part: its progress counters and a test for "nothing to do".
pub struct Part {
    /// Name used in the log when it is wedged.
    pub name: &'static str,
    /// Its counters.
    pub counters: Counters,
    /// True when the part has no pending work (so no progress is needed).
    pub idle: Box<dyn Fn() -> bool + Send>,
    /// The counts at the previous check; empty before the first one.
    last: HashMap<String, u64>,
}

impl Part {
    /// Watches a part with one counter.
    pub fn new(
        name: &'static str,
        progress: Arc<Progress>,
        idle: Box<dyn Fn() -> bool + Send>,
    ) -> Part {
        Part {
            name,
            counters: Counters::One(progress),
            idle,
            last: HashMap::new(),
        }
    }

    /// Watches a part made of units that each must progress (a new unit is judged from its
    /// second check on, like everything at startup).
    pub fn each(name: &'static str, counters: Box<dyn Fn() -> Vec<(String, u64)> + Send>) -> Part {
        Part {
            name,
            counters: Counters::Each(counters),
            idle: Box::new(|| false),
            last: HashMap::new(),
        }
    }

    /// True when some counter seen at the previous check has not moved (and the part had work).
    fn stuck(&mut self) -> bool {
        let now: Vec<(String, u64)> = match &self.counters {
            Counters::One(p) => vec![(String::new(), p.get())],
            Counters::Each(f) => f(),
        };
        let unmoved = now.iter().any(|(k, v)| self.last.get(k) == Some(v));
        self.last = now.into_iter().collect();
        unmoved && !(self.idle)()
    }
}

/// The watchdog check over all parts.
pub struct Watchdog {
    parts: Vec<Part>,
    /// How often to check (half of WATCHDOG_USEC); `None` when systemd does not watch us.
    pub interval: Option<Duration>,
    last_check: Option<Instant>,
}

impl Watchdog {
    /// Builds the check; the interval comes from the environment.
    pub fn new(parts: Vec<Part>) -> Watchdog {
        Watchdog::with_interval(parts, watchdog_interval())
    }

    /// Builds the check with an explicit interval (tests).
    pub fn with_interval(parts: Vec<Part>, interval: Option<Duration>) -> Watchdog {
        Watchdog {
            parts,
            interval,
            last_check: None,
        }
    }

    /// Sends `WATCHDOG=1` if every part progressed or is idle since the previous check;
    /// otherwise returns the first wedged part's name and sends nothing, so systemd's
    /// `WatchdogSec=` restarts us. A check that comes much sooner than `interval` after the
    /// previous one (a burst of late timer ticks) is skipped: the parts have had no chance to
    /// beat, and a verdict would be a false alarm.
    pub fn check(&mut self) -> Result<(), &'static str> {
        let now = Instant::now();
        if let (Some(prev), Some(interval)) = (self.last_check, self.interval)
            && now.duration_since(prev) < interval / 2
        {
            return Ok(());
        }
        self.last_check = Some(now);
        let mut wedged = None;
        for p in &mut self.parts {
            if p.stuck() {
                wedged.get_or_insert(p.name);
            }
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

/// Test hook, never set in production: `DINGTALK_STREAMD_TEST_WEDGE=writer|reader|sink` (read
/// once) makes that part stop for good after it has done its first piece of work, so the tests
/// can prove that a wedged part stops `WATCHDOG=1` while STATUS goes on. Each part calls
/// [`wedge_point`] at the top of its loop; with the variable unset that is one load of a
/// `OnceLock` and returns at once.
pub fn wedged_for_test(part: &str) -> bool {
    static WEDGE: OnceLock<Option<String>> = OnceLock::new();
    WEDGE
        .get_or_init(|| {
            std::env::var("DINGTALK_STREAMD_TEST_WEDGE")
                .ok()
                .filter(|v| !v.is_empty())
        })
        .as_deref()
        == Some(part)
}

/// See [`wedged_for_test`]: when the hook names `part` and it `has_worked`, logs once and never
/// returns (the task stays alive, holding its work, and stops beating).
pub async fn wedge_point(part: &'static str, has_worked: bool) {
    if has_worked && wedged_for_test(part) {
        tracing::warn!(
            part,
            "DINGTALK_STREAMD_TEST_WEDGE: wedging the {part} on purpose (test hook)"
        );
        std::future::pending::<()>().await;
    }
}

/// [`wedge_point`] for a part that runs on its own thread (the spool writer): blocks the thread
/// for good instead of awaiting.
pub fn wedge_point_blocking(part: &'static str, has_worked: bool) {
    if has_worked && wedged_for_test(part) {
        tracing::warn!(
            part,
            "DINGTALK_STREAMD_TEST_WEDGE: wedging the {part} on purpose (test hook)"
        );
        loop {
            std::thread::park();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn part(name: &'static str, idle: bool) -> (Arc<Progress>, Arc<AtomicBool>, Part) {
        let p = Progress::new();
        let flag = Arc::new(AtomicBool::new(idle));
        let f = flag.clone();
        (
            p.clone(),
            flag,
            Part::new(name, p, Box::new(move || f.load(Ordering::Relaxed))),
        )
    }

    #[test]
    fn feeds_only_while_every_busy_part_progresses() {
        let (reader, _, r) = part("reader", false);
        let (_writer, writer_idle, w) = part("writer", true);
        let mut wd = Watchdog::with_interval(vec![r, w], None);
        assert_eq!(
            wd.check(),
            Ok(()),
            "the first check has nothing to compare with"
        );
        assert_eq!(
            wd.check(),
            Err("reader"),
            "busy and no beat since the last check"
        );
        reader.beat();
        assert_eq!(wd.check(), Ok(()));
        reader.beat();
        writer_idle.store(false, Ordering::Relaxed);
        assert_eq!(
            wd.check(),
            Err("writer"),
            "the writer got work and did not move"
        );
        writer_idle.store(true, Ordering::Relaxed);
        reader.beat();
        assert_eq!(wd.check(), Ok(()), "idle again: no progress needed");
    }

    #[test]
    fn a_burst_of_late_ticks_is_not_a_verdict() {
        let (_p, _, a) = part("sink", false);
        let mut wd = Watchdog::with_interval(vec![a], Some(Duration::from_secs(60)));
        assert_eq!(wd.check(), Ok(()));
        assert_eq!(
            wd.check(),
            Ok(()),
            "second tick of a burst is skipped, not judged"
        );
    }

    #[test]
    fn heartbeat_is_bounded() {
        assert!(heartbeat() >= MIN_HEARTBEAT);
    }

    #[test]
    fn every_unit_of_a_part_must_progress() {
        let a = Progress::new();
        let b = Progress::new();
        let units = Arc::new(std::sync::Mutex::new(vec![
            ("a", a.clone()),
            ("b", b.clone()),
        ]));
        let u = units.clone();
        let part = Part::each(
            "consumer sink",
            Box::new(move || {
                u.lock()
                    .unwrap()
                    .iter()
                    .map(|(n, p)| (n.to_string(), p.get()))
                    .collect()
            }),
        );
        let mut wd = Watchdog::with_interval(vec![part], None);
        assert_eq!(wd.check(), Ok(()), "first check: nothing to compare");
        a.beat();
        b.beat();
        assert_eq!(wd.check(), Ok(()), "both moved");
        a.beat();
        assert_eq!(wd.check(), Err("consumer sink"), "b is wedged while a runs");
        // A new unit is only judged from its second check; a gone unit no longer counts.
        let c = Progress::new();
        units.lock().unwrap().retain(|(n, _)| *n != "b");
        units.lock().unwrap().push(("c", c.clone()));
        a.beat();
        assert_eq!(wd.check(), Ok(()));
        a.beat();
        assert_eq!(wd.check(), Err("consumer sink"), "c never moved");
    }
}
