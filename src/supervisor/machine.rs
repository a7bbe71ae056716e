//! The reconnect rules as a pure state machine: [`Machine::on`] takes what happened and returns
//! what to do. No I/O and no clock reads: time comes in with each event, randomness (the
//! backoff jitter) from an injected generator, so every rule is unit-tested without sockets.
//!
//! The rules: one attempt at a time, each with a fresh ticket; a failed attempt or an
//! unexpected drop waits a full-jitter backoff (the first retry after a drop too: no stampede);
//! credentials rejected before any success are fatal (exit 78), later they are retried at
//! `max_delay`; the backoff resets once a connection stayed up `stable_after`; a server
//! `disconnect` opens the replacement before the old connection goes (make-before-break), at
//! once for a connection that was stable, after the normal backoff for a younger one (a
//! gateway that recycles every new connection cannot drive a storm); at most two connections
//! drain at once (the oldest is closed rather than a fourth opened); a reload that changes
//! credentials or the endpoint replaces the link make-before-break and closes the old one.

use super::backoff::Backoff;
use crate::stream::ConnId;
use rand::Rng;
use std::time::{Duration, Instant};

/// Where the link is, as the machine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Before the first event.
    Starting,
    /// An attempt (ticket, TCP, TLS, upgrade) is under way, with nothing open.
    Connecting {
        /// 1-based attempt number since the last success.
        attempt: u32,
        /// When it started.
        since: Instant,
    },
    /// A connection serves.
    Open {
        /// The serving connection.
        conn: ConnId,
        /// When it opened.
        since: Instant,
        /// The gateway's host:port.
        peer: String,
    },
    /// Waiting before the next attempt.
    Backoff {
        /// The attempt that failed; 0 for the wait after a connection ended (no attempt has
        /// failed yet).
        attempt: u32,
        /// When the next attempt starts.
        until: Instant,
        /// Why.
        cause: String,
        /// DingTalk rejected the credentials (after an earlier success).
        credentials_rejected: bool,
    },
    /// Shut down.
    Stopped,
}

/// What happened.
#[derive(Debug, Clone)]
pub enum Event {
    /// The daemon starts: connect.
    Start,
    /// The attempt under way opened a WebSocket to `peer`.
    AttemptOpened {
        /// The gateway's host:port.
        peer: String,
    },
    /// The attempt under way failed.
    AttemptFailed {
        /// Short cause (`ticket_503`, `tcp_timeout`, ...).
        cause: String,
        /// Credentials rejected (401, or 400 systemError).
        credentials: bool,
        /// The server's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// The backoff wait is over.
    WaitOver,
    /// The server sent `disconnect` on `conn`.
    Disconnect {
        /// Which connection.
        conn: ConnId,
    },
    /// Connection `conn`'s task ended (a task that failed counts as an I/O error).
    Ended {
        /// Which connection.
        conn: ConnId,
        /// Why (`pong_timeout`, `eof`, ... or `shutdown` when the daemon closed it).
        cause: String,
    },
    /// A reloaded config.
    Reload {
        /// New `initial_delay`, `max_delay`, `stable_after`.
        reconnect: (Duration, Duration, Duration),
        /// Credentials, endpoint, subscriptions, CA or proxy changed: replace the link.
        relink: bool,
    },
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start an attempt now (fresh ticket), dropping any attempt under way.
    Attempt,
    /// Start an attempt at this time (a backoff wait).
    AttemptAt(Instant),
    /// Serve the WebSocket the attempt opened as connection `conn`.
    Serve(ConnId),
    /// Close connection `conn` (a Close frame, then wait for the peer's).
    Close(ConnId),
    /// The link state changed: publish it.
    Publish,
    /// Credentials rejected before any success: stop the daemon (exit 78).
    Fatal,
}

/// Reconnect settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Ceiling of the first wait.
    pub initial_delay: Duration,
    /// Ceiling of every wait.
    pub max_delay: Duration,
    /// A connection up this long resets the backoff.
    pub stable_after: Duration,
}

#[derive(Debug, Clone)]
struct Conn {
    id: ConnId,
    opened: Instant,
}

/// At most this many connections drain at once (retired, still open until the server closes
/// them); a further one makes the daemon close the oldest itself.
pub const MAX_DRAINING: usize = 2;
/// At most this many connections are open at once: the serving one and the draining ones.
pub const MAX_OPEN: usize = MAX_DRAINING + 1;

/// The machine.
pub struct Machine {
    phase: Phase,
    /// The serving connection (also while its replacement is being opened).
    current: Option<Conn>,
    /// Retired connections still open: they drain until the server closes them.
    draining: Vec<Conn>,
    /// Connections the daemon is closing itself (until their task ends).
    closing: Vec<ConnId>,
    /// An attempt waits for a connection to close first (at most [`MAX_OPEN`] open).
    deferred: bool,
    /// When the armed backoff wait ends.
    wait_until: Option<Instant>,
    /// Connections to close once a replacement is open (a reload's make-before-break).
    close_on_open: Vec<ConnId>,
    /// An attempt is under way.
    attempting: bool,
    /// Attempts since the last success (for status).
    attempt_no: u32,
    backoff: Backoff,
    stable_after: Duration,
    ever_connected: bool,
    next_id: u64,
    last_cause: Option<String>,
    connections_opened: u64,
    handovers: u64,
    rng: Box<dyn Rng + Send>,
}

/// What the machine shows to status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// The phase.
    pub phase: Phase,
    /// Why the last connection or attempt ended.
    pub last_cause: Option<String>,
    /// Connections opened since start.
    pub connections_opened: u64,
    /// Server `disconnect` handovers since start.
    pub handovers: u64,
}

impl Machine {
    /// A machine with these settings, drawing jitter from `rng`.
    pub fn new(s: Settings, rng: Box<dyn Rng + Send>) -> Machine {
        Machine {
            phase: Phase::Starting,
            current: None,
            draining: Vec::new(),
            closing: Vec::new(),
            deferred: false,
            wait_until: None,
            close_on_open: Vec::new(),
            attempting: false,
            attempt_no: 0,
            backoff: Backoff::new(s.initial_delay, s.max_delay),
            stable_after: s.stable_after,
            ever_connected: false,
            next_id: 0,
            last_cause: None,
            connections_opened: 0,
            handovers: 0,
            rng,
        }
    }

    /// What status shows now.
    pub fn view(&self) -> View {
        View {
            phase: self.phase.clone(),
            last_cause: self.last_cause.clone(),
            connections_opened: self.connections_opened,
            handovers: self.handovers,
        }
    }

    /// Connections the machine considers open (serving, draining or being closed).
    pub fn open_connections(&self) -> Vec<ConnId> {
        self.current
            .iter()
            .chain(&self.draining)
            .map(|c| c.id)
            .chain(self.closing.iter().copied())
            .collect()
    }

    /// The serving connection, if one serves.
    pub fn current(&self) -> Option<ConnId> {
        self.current.as_ref().map(|c| c.id)
    }

    /// Whether `conn` is the serving connection (not a retired, draining one).
    pub fn is_current(&self, conn: ConnId) -> bool {
        self.current.as_ref().is_some_and(|c| c.id == conn)
    }

    /// How long the serving connection has been up.
    pub fn current_up_for(&self, now: Instant) -> Option<Duration> {
        self.current.as_ref().map(|c| now.duration_since(c.opened))
    }

    /// The attempt number under way or that failed last (1-based).
    pub fn attempt_no(&self) -> u32 {
        self.attempt_no.max(1)
    }

    /// Applies `ev`, which happened at `now`, and says what to do.
    pub fn on(&mut self, ev: Event, now: Instant) -> Vec<Action> {
        match ev {
            Event::Start => self.start_attempt(now, 1),
            Event::AttemptOpened { peer } => self.opened(peer, now),
            Event::AttemptFailed {
                cause,
                credentials,
                retry_after,
            } => self.attempt_failed(cause, credentials, retry_after, now),
            Event::WaitOver => {
                if self.wait_until.take().is_some() && !self.attempting {
                    let n = self.attempt_no.saturating_add(1).max(1);
                    self.start_attempt(now, n)
                } else {
                    Vec::new()
                }
            }
            Event::Disconnect { conn } => self.disconnect(conn, now),
            Event::Ended { conn, cause } => self.ended(conn, cause, now),
            Event::Reload { reconnect, relink } => self.reload(reconnect, relink, now),
        }
    }

    fn start_attempt(&mut self, now: Instant, attempt: u32) -> Vec<Action> {
        self.attempting = true;
        self.attempt_no = attempt;
        self.wait_until = None;
        if self.current.is_none() && self.draining.is_empty() {
            self.phase = Phase::Connecting {
                attempt,
                since: now,
            };
        }
        if self.open_connections().len() >= MAX_OPEN {
            // A connection the daemon is closing goes first; the attempt starts when it ended.
            self.deferred = true;
            return vec![Action::Publish];
        }
        vec![Action::Attempt, Action::Publish]
    }

    /// Retires the serving connection; beyond [`MAX_DRAINING`], the oldest draining one is
    /// closed by the daemon.
    fn retire_current(&mut self) -> Vec<Action> {
        let Some(cur) = self.current.take() else {
            return Vec::new();
        };
        self.draining.push(cur);
        let mut out = Vec::new();
        while self.draining.len() > MAX_DRAINING {
            let oldest = self.draining.remove(0);
            self.closing.push(oldest.id);
            out.push(Action::Close(oldest.id));
        }
        out
    }

    fn opened(&mut self, peer: String, now: Instant) -> Vec<Action> {
        if !self.attempting {
            return Vec::new();
        }
        self.attempting = false;
        self.attempt_no = 0;
        self.ever_connected = true;
        self.next_id += 1;
        let id = ConnId(self.next_id);
        self.connections_opened += 1;
        let mut out = vec![Action::Serve(id)];
        // A reload's make-before-break: the old connection goes now that the new one serves.
        for old in std::mem::take(&mut self.close_on_open) {
            if let Some(i) = self.draining.iter().position(|c| c.id == old) {
                self.draining.remove(i);
                self.closing.push(old);
                out.push(Action::Close(old));
            }
        }
        self.current = Some(Conn { id, opened: now });
        self.phase = Phase::Open {
            conn: id,
            since: now,
            peer,
        };
        out.push(Action::Publish);
        out
    }

    fn attempt_failed(
        &mut self,
        cause: String,
        credentials: bool,
        retry_after: Option<Duration>,
        now: Instant,
    ) -> Vec<Action> {
        if !self.attempting {
            return Vec::new();
        }
        self.attempting = false;
        if credentials && !self.ever_connected {
            self.last_cause = Some(cause);
            return vec![Action::Fatal];
        }
        let delay = if credentials {
            // The secret was rotated under us: no point hurrying, but keep trying.
            self.backoff.next_delay(None, &mut *self.rng);
            self.backoff.max()
        } else {
            self.backoff.next_delay(retry_after, &mut *self.rng)
        };
        self.wait(delay, cause, credentials, now)
    }

    /// Waits `delay` before the next attempt.
    fn wait(
        &mut self,
        delay: Duration,
        cause: String,
        credentials: bool,
        now: Instant,
    ) -> Vec<Action> {
        let until = now + delay;
        self.wait_until = Some(until);
        self.last_cause = Some(cause.clone());
        self.phase = Phase::Backoff {
            attempt: self.attempt_no,
            until,
            cause,
            credentials_rejected: credentials,
        };
        vec![Action::AttemptAt(until), Action::Publish]
    }

    fn disconnect(&mut self, conn: ConnId, now: Instant) -> Vec<Action> {
        let Some(up_for) = self
            .current
            .as_ref()
            .filter(|c| c.id == conn)
            .map(|c| now.duration_since(c.opened))
        else {
            return Vec::new();
        };
        let mut out = self.retire_current();
        self.handovers += 1;
        out.push(Action::Publish);
        if self.attempting || self.wait_until.is_some() {
            return out;
        }
        // Make-before-break either way: the phase stays open (the old connection still ACKs)
        // until the replacement is up.
        if up_for >= self.stable_after {
            self.backoff.reset();
            out.extend(self.start_attempt(now, 1));
        } else {
            // A young connection sent away again: the normal backoff, or a gateway recycling
            // every new connection would have us reconnect in a tight loop.
            let delay = self.backoff.next_delay(None, &mut *self.rng);
            let until = now + delay;
            self.wait_until = Some(until);
            self.attempt_no = 0;
            self.last_cause = Some(SERVER_DISCONNECT.into());
            out.push(Action::AttemptAt(until));
        }
        out
    }

    fn ended(&mut self, conn: ConnId, cause: String, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(i) = self.closing.iter().position(|c| *c == conn) {
            self.closing.remove(i);
        } else if let Some(i) = self.draining.iter().position(|c| c.id == conn) {
            self.draining.remove(i);
        } else if let Some(cur) = self.current.take_if(|c| c.id == conn) {
            if cause == SHUTDOWN {
                return out;
            }
            if now.duration_since(cur.opened) >= self.stable_after {
                self.backoff.reset();
            }
            // Even the first retry waits a random 0..initial_delay: no stampede when a gateway
            // node dies under many hosts at once.
            let delay = self.backoff.next_delay(None, &mut *self.rng);
            self.attempt_no = 0;
            out.extend(self.wait(delay, cause, false, now));
        } else {
            return out;
        }
        if self.deferred && self.open_connections().len() < MAX_OPEN {
            self.deferred = false;
            out.push(Action::Attempt);
        }
        if self.current.is_none() && self.draining.is_empty() {
            // Nothing serves any more: show what the link waits for.
            if self.attempting && !matches!(self.phase, Phase::Connecting { .. }) {
                self.phase = Phase::Connecting {
                    attempt: self.attempt_no.max(1),
                    since: now,
                };
                out.push(Action::Publish);
            } else if let Some(until) = self.wait_until
                && !matches!(self.phase, Phase::Backoff { .. })
            {
                self.phase = Phase::Backoff {
                    attempt: self.attempt_no,
                    until,
                    cause: self
                        .last_cause
                        .clone()
                        .unwrap_or_else(|| SERVER_DISCONNECT.into()),
                    credentials_rejected: false,
                };
                out.push(Action::Publish);
            }
        }
        out
    }

    fn reload(
        &mut self,
        (initial, max, stable_after): (Duration, Duration, Duration),
        relink: bool,
        now: Instant,
    ) -> Vec<Action> {
        self.backoff.set_bounds(initial, max);
        self.stable_after = stable_after;
        if !relink {
            return Vec::new();
        }
        // The old connection keeps serving until the replacement is open; an attempt or a
        // wait still using the old settings is replaced now.
        if let Some(cur) = &self.current {
            self.close_on_open.push(cur.id);
        }
        let mut out = self.retire_current();
        self.attempting = false;
        out.extend(self.start_attempt(now, 1));
        out
    }
}

/// The cause of a connection the daemon closed itself (stopping, or retiring it).
pub const SHUTDOWN: &str = "shutdown";
/// The cause of a replacement waiting after the server sent a young connection away.
pub const SERVER_DISCONNECT: &str = "server_disconnect";

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    const INITIAL: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(10);
    const STABLE: Duration = Duration::from_secs(30);

    fn machine() -> (Machine, Instant) {
        let s = Settings {
            initial_delay: INITIAL,
            max_delay: MAX,
            stable_after: STABLE,
        };
        let rng = rand::rngs::StdRng::seed_from_u64(7);
        (Machine::new(s, Box::new(rng)), Instant::now())
    }

    fn opened() -> Event {
        Event::AttemptOpened {
            peer: "gw:443".into(),
        }
    }

    fn failed(cause: &str, credentials: bool) -> Event {
        Event::AttemptFailed {
            cause: cause.into(),
            credentials,
            retry_after: None,
        }
    }

    fn ended(conn: u64, cause: &str) -> Event {
        Event::Ended {
            conn: ConnId(conn),
            cause: cause.into(),
        }
    }

    /// The wait an action list schedules, relative to `now`.
    fn wait_of(actions: &[Action], now: Instant) -> Duration {
        actions
            .iter()
            .find_map(|a| match a {
                Action::AttemptAt(at) => Some(at.duration_since(now)),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no wait in {actions:?}"))
    }

    /// Starts and opens the first connection (c1).
    fn connected() -> (Machine, Instant) {
        let (mut m, t0) = machine();
        assert_eq!(
            m.on(Event::Start, t0),
            vec![Action::Attempt, Action::Publish]
        );
        assert_eq!(
            m.on(opened(), t0),
            vec![Action::Serve(ConnId(1)), Action::Publish]
        );
        (m, t0)
    }

    #[test]
    fn a_drop_waits_a_jittered_backoff_even_the_first_time() {
        let mut waits = Vec::new();
        for seed in 0..50 {
            let (mut m, t0) = connected();
            m.rng = Box::new(rand::rngs::StdRng::seed_from_u64(seed));
            let t = t0 + STABLE;
            let a = m.on(ended(1, "eof"), t);
            let w = wait_of(&a, t);
            assert!(w <= INITIAL, "first retry after a stable connection: {w:?}");
            // No attempt has failed yet: status says "backing off ... after eof", no number.
            assert!(
                matches!(m.view().phase, Phase::Backoff { attempt: 0, ref cause, .. } if cause == "eof")
            );
            assert_eq!(m.view().last_cause.as_deref(), Some("eof"));
            waits.push(w);
        }
        let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
        assert!(distinct.len() > 40, "jitter spreads the waits: {waits:?}");
    }

    #[test]
    fn the_wait_ends_in_a_new_attempt_with_a_fresh_ticket() {
        let (mut m, t0) = connected();
        m.on(ended(1, "pong_timeout"), t0 + Duration::from_secs(1));
        let a = m.on(Event::WaitOver, t0 + Duration::from_secs(2));
        assert_eq!(a, vec![Action::Attempt, Action::Publish]);
        assert!(matches!(
            m.view().phase,
            Phase::Connecting { attempt: 1, .. }
        ));
        let a = m.on(failed("ticket_503", false), t0 + Duration::from_secs(3));
        assert!(matches!(m.view().phase, Phase::Backoff { attempt: 1, .. }));
        assert!(wait_of(&a, t0 + Duration::from_secs(3)) <= INITIAL * 4);
        m.on(Event::WaitOver, t0 + Duration::from_secs(4));
        assert!(matches!(
            m.view().phase,
            Phase::Connecting { attempt: 2, .. }
        ));
        assert_eq!(
            m.on(opened(), t0 + Duration::from_secs(5)),
            vec![Action::Serve(ConnId(2)), Action::Publish]
        );
    }

    #[test]
    fn flapping_connections_keep_backing_off_and_a_stable_one_resets() {
        let (mut m, mut t) = connected();
        let mut id = 1;
        for _ in 0..5 {
            t += Duration::from_secs(1);
            m.on(ended(id, "eof"), t);
            m.on(Event::WaitOver, t);
            m.on(opened(), t);
            id += 1;
        }
        assert_eq!(m.backoff.failures(), 5, "up 1 s each: never stable");
        t += STABLE;
        let a = m.on(ended(id, "eof"), t);
        assert_eq!(
            m.backoff.failures(),
            1,
            "reset, then the wait after the drop"
        );
        assert!(wait_of(&a, t) <= INITIAL);
    }

    #[test]
    fn credentials_rejected_are_fatal_only_before_the_first_success() {
        let (mut m, t0) = machine();
        m.on(Event::Start, t0);
        assert_eq!(m.on(failed("ticket_401", true), t0), vec![Action::Fatal]);

        let (mut m, t0) = connected();
        m.on(ended(1, "eof"), t0);
        m.on(Event::WaitOver, t0);
        let a = m.on(failed("ticket_401", true), t0);
        assert_eq!(wait_of(&a, t0), MAX, "retried at max_delay");
        assert!(matches!(
            m.view().phase,
            Phase::Backoff {
                credentials_rejected: true,
                ..
            }
        ));
    }

    #[test]
    fn retry_after_is_honoured() {
        let (mut m, t0) = machine();
        m.on(Event::Start, t0);
        let a = m.on(
            Event::AttemptFailed {
                cause: "ticket_503".into(),
                credentials: false,
                retry_after: Some(Duration::from_secs(3)),
            },
            t0,
        );
        assert!(wait_of(&a, t0) >= Duration::from_secs(3));
    }

    #[test]
    fn disconnect_opens_the_replacement_before_the_old_one_goes() {
        let (mut m, t0) = connected();
        let t = t0 + Duration::from_secs(60);
        let a = m.on(Event::Disconnect { conn: ConnId(1) }, t);
        assert!(
            a.contains(&Action::Attempt),
            "a stable connection: at once, {a:?}"
        );
        assert!(
            !a.iter().any(|a| matches!(a, Action::AttemptAt(_))),
            "{a:?}"
        );
        assert!(
            matches!(
                m.view().phase,
                Phase::Open {
                    conn: ConnId(1),
                    ..
                }
            ),
            "still served by c1 meanwhile"
        );
        assert_eq!(m.view().handovers, 1);
        assert_eq!(m.open_connections(), vec![ConnId(1)]);
        let a = m.on(opened(), t);
        assert_eq!(a, vec![Action::Serve(ConnId(2)), Action::Publish]);
        assert!(
            !a.contains(&Action::Close(ConnId(1))),
            "c1 drains until the server closes it"
        );
        assert_eq!(m.open_connections(), vec![ConnId(2), ConnId(1)]);
        assert_eq!(
            m.on(ended(1, "server_close"), t),
            vec![],
            "a drained connection ends quietly"
        );
        assert!(matches!(
            m.view().phase,
            Phase::Open {
                conn: ConnId(2),
                ..
            }
        ));
    }

    #[test]
    fn a_failed_replacement_backs_off_while_the_old_one_drains() {
        let (mut m, t0) = connected();
        m.on(Event::Disconnect { conn: ConnId(1) }, t0 + STABLE);
        let a = m.on(failed("tcp_timeout", false), t0 + STABLE);
        wait_of(&a, t0 + STABLE);
        assert_eq!(m.on(ended(1, "drained"), t0 + STABLE), vec![]);
        m.on(Event::WaitOver, t0 + STABLE);
        assert!(matches!(m.view().phase, Phase::Connecting { .. }));
    }

    #[test]
    fn reload_with_new_credentials_replaces_the_link_make_before_break() {
        let (mut m, t0) = connected();
        let settings = (INITIAL, MAX, STABLE);
        assert_eq!(
            m.on(
                Event::Reload {
                    reconnect: settings,
                    relink: false
                },
                t0
            ),
            vec![],
            "settings only: nothing to do"
        );
        let a = m.on(
            Event::Reload {
                reconnect: settings,
                relink: true,
            },
            t0,
        );
        assert_eq!(a, vec![Action::Attempt, Action::Publish]);
        assert_eq!(m.open_connections(), vec![ConnId(1)], "c1 still open");
        assert!(
            matches!(
                m.view().phase,
                Phase::Open {
                    conn: ConnId(1),
                    ..
                }
            ),
            "and serving"
        );
        let a = m.on(opened(), t0);
        assert_eq!(
            a,
            vec![
                Action::Serve(ConnId(2)),
                Action::Close(ConnId(1)),
                Action::Publish
            ]
        );
        assert_eq!(m.on(ended(1, SHUTDOWN), t0), vec![]);
        assert!(matches!(
            m.view().phase,
            Phase::Open {
                conn: ConnId(2),
                ..
            }
        ));
    }

    #[test]
    fn reload_during_a_backoff_starts_over_at_once() {
        let (mut m, t0) = machine();
        m.on(Event::Start, t0);
        m.on(failed("ticket_503", false), t0);
        let a = m.on(
            Event::Reload {
                reconnect: (INITIAL, MAX, STABLE),
                relink: true,
            },
            t0,
        );
        assert_eq!(a, vec![Action::Attempt, Action::Publish]);
        assert!(matches!(
            m.view().phase,
            Phase::Connecting { attempt: 1, .. }
        ));
        assert_eq!(
            m.on(Event::WaitOver, t0),
            vec![],
            "the old wait no longer counts"
        );
    }

    #[test]
    fn a_failed_connection_task_is_a_drop_like_any_other() {
        let (mut m, t0) = connected();
        let a = m.on(ended(1, "io_error"), t0);
        wait_of(&a, t0);
        assert_eq!(m.view().last_cause.as_deref(), Some("io_error"));
        assert_eq!(m.open_connections(), vec![]);
    }

    #[test]
    fn a_young_connection_sent_away_is_replaced_after_the_backoff_while_it_serves() {
        let (mut m, t0) = connected();
        let t = t0 + Duration::from_secs(1);
        let a = m.on(Event::Disconnect { conn: ConnId(1) }, t);
        assert!(!a.contains(&Action::Attempt), "no attempt at once: {a:?}");
        let w = wait_of(&a, t);
        assert!(w <= INITIAL, "{w:?}");
        assert!(
            matches!(
                m.view().phase,
                Phase::Open {
                    conn: ConnId(1),
                    ..
                }
            ),
            "c1 still serves meanwhile"
        );
        let a = m.on(Event::WaitOver, t + w);
        assert!(a.contains(&Action::Attempt));
        assert_eq!(
            m.on(opened(), t + w),
            vec![Action::Serve(ConnId(2)), Action::Publish]
        );
    }

    #[test]
    fn the_wait_shows_once_the_draining_connection_is_gone() {
        let (mut m, t0) = connected();
        m.on(Event::Disconnect { conn: ConnId(1) }, t0);
        let a = m.on(ended(1, "server_close"), t0);
        assert_eq!(a, vec![Action::Publish]);
        assert!(matches!(
            m.view().phase,
            Phase::Backoff { ref cause, .. } if cause == SERVER_DISCONNECT
        ));
    }

    #[test]
    fn at_most_two_connections_drain_and_three_are_open() {
        let (mut m, t0) = connected();
        // Three stable connections sent away in a row while their predecessors still drain.
        let mut t = t0;
        for id in 1..=3u64 {
            t += STABLE;
            let a = m.on(Event::Disconnect { conn: ConnId(id) }, t);
            if id == 3 {
                assert!(
                    a.contains(&Action::Close(ConnId(1))),
                    "the oldest goes: {a:?}"
                );
                assert!(!a.contains(&Action::Attempt), "not a fourth open: {a:?}");
                assert_eq!(m.open_connections().len(), 3);
                let a = m.on(ended(1, SHUTDOWN), t);
                assert!(a.contains(&Action::Attempt), "once c1 is gone: {a:?}");
            } else {
                assert!(a.contains(&Action::Attempt));
            }
            m.on(opened(), t);
            assert!(m.open_connections().len() <= MAX_OPEN);
        }
        assert_eq!(m.open_connections().len(), 3);
    }

    /// A gateway that sends `disconnect` on every new connection for 10 s: the daemon opens
    /// few connections (the backoff grows because none becomes stable) and never more than
    /// three at once, whatever the jitter draws.
    #[test]
    fn a_disconnect_storm_is_bounded() {
        let s = Settings {
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            stable_after: STABLE,
        };
        let mut worst = 0;
        for seed in 0..500 {
            let mut m = Machine::new(s, Box::new(rand::rngs::StdRng::seed_from_u64(seed)));
            let t0 = Instant::now();
            let end = t0 + Duration::from_secs(10);
            let (mut opened_n, mut max_open) = (0, 0);
            let mut events = std::collections::VecDeque::from([Event::Start]);
            let mut armed: Option<Instant> = None;
            let mut t = t0;
            // Performs what the machine asks, as a gateway that sends every new connection
            // away at once would answer, until the 10 s are over.
            loop {
                while let Some(e) = events.pop_front() {
                    for a in m.on(e, t) {
                        match a {
                            Action::Attempt => events.push_back(opened()),
                            Action::AttemptAt(at) => armed = Some(at),
                            Action::Serve(id) => {
                                opened_n += 1;
                                events.push_back(Event::Disconnect { conn: id });
                            }
                            Action::Close(id) => events.push_back(ended(id.0, SHUTDOWN)),
                            Action::Publish | Action::Fatal => {}
                        }
                    }
                    max_open = max_open.max(m.open_connections().len());
                }
                match armed.take() {
                    Some(at) if at < end => {
                        t = at;
                        events.push_back(Event::WaitOver);
                    }
                    _ => break,
                }
            }
            assert!(max_open <= 3, "seed {seed}: {max_open} open at once");
            worst = worst.max(opened_n);
        }
        assert!(worst <= 24, "at most 24 connections in 10 s, saw {worst}");
        assert!(worst >= 5, "the storm was simulated at all: {worst}");
    }

    #[test]
    fn a_connection_closed_for_shutdown_schedules_nothing() {
        let (mut m, t0) = connected();
        assert_eq!(m.on(ended(1, SHUTDOWN), t0), vec![]);
    }
}
