//! The one reconnect loop. Its decisions are [`machine::Machine`]'s (pure, unit-tested); this
//! shell only performs them: it runs the attempt (fresh ticket, then the WebSocket: the only
//! place a connection is started), spawns and closes connection tasks, arms the backoff timer,
//! publishes the link state for status and STATUS=, and feeds the systemd watchdog from its own
//! `select!`.

pub mod backoff;
mod link;
pub mod machine;

pub use link::{LinkState, LinkStatus};

use crate::gateway::ticket::{TicketClient, TicketError};
use crate::notify::{Progress, Watchdog};
use crate::observe::Observations;
use crate::relay::Relay;
use crate::stream::connect::{self, ConnectError, ConnectParams, Established};
use crate::stream::connection::{self, ConnCtx, End, Liveness};
use crate::stream::socket::SocketReport;
use crate::stream::{ConnEvent, ConnId, StreamStats};
use machine::{Action, Event, Machine, Phase, SHUTDOWN, Settings};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// How long shutdown lets an attempt under way finish, so its WebSocket can be closed cleanly.
const ATTEMPT_GRACE: Duration = Duration::from_millis(500);
/// How long shutdown waits for connections to send their Close frames.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// No ticket.
    #[error(transparent)]
    Ticket(#[from] TicketError),
    /// No WebSocket.
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

impl AttemptError {
    /// Short cause.
    pub fn cause(&self) -> String {
        match self {
            AttemptError::Ticket(e) => e.cause(),
            AttemptError::Connect(e) => e.cause(),
        }
    }
}

/// The run ended because DingTalk rejected the credentials before any success (exit 78).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FatalCredentials(pub TicketError);

/// A reloaded config, for the supervisor. Every new setting is taken; with `relink`
/// (credentials, endpoint, subscriptions, CA or proxy changed) the link is also replaced
/// make-before-break.
pub struct Reload {
    /// The new ticket client (credentials, endpoint, `connect_timeout`).
    pub ticket: TicketClient,
    /// The new connect parameters (socket options apply to the next connection).
    pub connect: ConnectParams,
    /// initial_delay, max_delay, stable_after.
    pub reconnect: (Duration, Duration, Duration),
    /// Replace the current connection (and any attempt still using the old settings).
    pub relink: bool,
}

/// Everything the loop needs.
pub struct Supervisor {
    /// Ticket requests.
    pub ticket: TicketClient,
    /// WebSocket parameters.
    pub connect: ConnectParams,
    /// Where connections hand their frames.
    pub relay: Relay,
    /// Traffic counters.
    pub stats: Arc<StreamStats>,
    /// Reconnects, ticket outcomes, failed attempts; handed on to each connection.
    pub observed: Arc<Observations>,
    /// The published link state.
    pub link: watch::Sender<LinkStatus>,
    /// Live ping settings.
    pub liveness: watch::Receiver<Liveness>,
    /// Backoff settings.
    pub settings: Settings,
    /// The reader's progress counter (shared by all connections).
    pub reader_progress: Arc<Progress>,
    /// The watchdog check.
    pub watchdog: Watchdog,
    /// Reloads.
    pub reloads: mpsc::UnboundedReceiver<Reload>,
}

type AttemptFuture = Pin<Box<dyn Future<Output = Result<Established, AttemptError>> + Send>>;

/// The shell's side of the machine's state: what it holds to perform actions.
struct Shell {
    attempt: Option<AttemptFuture>,
    /// The last attempt's error, kept for the fatal exit.
    last_error: Option<AttemptError>,
    /// The WebSocket an attempt opened, until the machine says which connection it is.
    opened: Option<Established>,
    wait_until: Option<tokio::time::Instant>,
    conns: JoinSet<End>,
    /// Which connection each task runs, so a task that fails (a panic) is still known.
    task_conn: HashMap<tokio::task::Id, ConnId>,
    cancel: HashMap<ConnId, CancellationToken>,
    sockets: HashMap<ConnId, SocketReport>,
    fatal: bool,
}

impl Supervisor {
    /// The only place a connection attempt is started: fresh ticket, then the WebSocket.
    fn attempt(&self) -> AttemptFuture {
        let ticket = self.ticket.clone();
        let params = self.connect.clone();
        let observed = self.observed.clone();
        Box::pin(async move {
            let fetched = ticket.fetch().await;
            match &fetched {
                Ok(_) => observed.ticket_request(Ok(())),
                Err(e) => observed.ticket_request(Err(&e.cause())),
            }
            Ok(connect::establish(&fetched?, &params).await?)
        })
    }

    /// Runs until `shutdown`, or until credentials are rejected before the first success.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), FatalCredentials> {
        let (events_tx, mut events_rx) = mpsc::unbounded_channel::<ConnEvent>();
        let jitter = <rand::rngs::StdRng as rand::SeedableRng>::from_rng(&mut rand::rng());
        let mut machine = Machine::new(self.settings, Box::new(jitter));
        let mut sh = Shell {
            attempt: None,
            last_error: None,
            opened: None,
            wait_until: None,
            conns: JoinSet::new(),
            task_conn: HashMap::new(),
            cancel: HashMap::new(),
            sockets: HashMap::new(),
            fatal: false,
        };
        let mut watchdog_tick =
            tokio::time::interval(self.watchdog.interval.unwrap_or(Duration::from_secs(3600)));
        let watchdog_on = self.watchdog.interval.is_some();
        let mut ev = Some((Event::Start, None));

        loop {
            if let Some((e, note)) = ev.take() {
                let attempt = machine.attempt_no();
                let now = Instant::now();
                let actions = machine.on(e, now);
                log_outcome(note, &actions, attempt, now);
                self.perform(&machine, actions, attempt, &mut sh, &shutdown, &events_tx);
                if sh.fatal {
                    break;
                }
                continue;
            }
            ev = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = watchdog_tick.tick(), if watchdog_on => {
                    if let Err(part) = self.watchdog.check() {
                        error!(part, "not feeding the systemd watchdog: the {part} made no progress while it had work");
                    }
                    None
                }
                Some(r) = self.reloads.recv() => {
                    self.ticket = r.ticket;
                    self.connect = r.connect;
                    if r.relink {
                        info!(cause = "reload", "credentials or endpoint changed: opening a replacement before closing the current connection");
                        if machine.current().is_some() {
                            self.observed.reconnects.add("reload");
                        }
                    }
                    Some((Event::Reload { reconnect: r.reconnect, relink: r.relink }, None))
                }
                res = async { sh.attempt.as_mut().expect("guarded").await }, if sh.attempt.is_some() => {
                    sh.attempt = None;
                    Some(match res {
                        Ok(est) => {
                            let peer = est.peer.clone();
                            sh.opened = Some(est);
                            (Event::AttemptOpened { peer }, None)
                        }
                        Err(e) => {
                            let cause = e.cause();
                            let (credentials, retry_after) = match &e {
                                AttemptError::Ticket(t) => (t.is_credentials(), t.retry_after()),
                                AttemptError::Connect(_) => (false, None),
                            };
                            self.observed.connect_failures.add(&cause);
                            let note = Note::AttemptFailed { cause: cause.clone(), error: e.to_string() };
                            sh.last_error = Some(e);
                            (Event::AttemptFailed { cause, credentials, retry_after }, Some(note))
                        }
                    })
                }
                _ = tokio::time::sleep_until(sh.wait_until.unwrap_or_else(tokio::time::Instant::now)), if sh.wait_until.is_some() => {
                    sh.wait_until = None;
                    Some((Event::WaitOver, None))
                }
                Some(ConnEvent::Disconnect { id, reason }) = events_rx.recv() => {
                    info!(connection = %id, cause = "server_disconnect", reason = %reason, "opening the replacement connection now (make-before-break)");
                    if machine.is_current(id) {
                        self.observed.reconnects.add(machine::SERVER_DISCONNECT);
                    }
                    Some((Event::Disconnect { conn: id }, None))
                }
                Some(joined) = sh.conns.join_next_with_id(), if !sh.conns.is_empty() => {
                    let (task, end) = match joined {
                        Ok((task, end)) => (task, end),
                        // A failed task is a lost connection like any other: never a stall.
                        Err(e) => {
                            error!(error = %e, "a connection task failed");
                            (e.id(), End::Io(format!("connection task failed: {e}")))
                        }
                    };
                    sh.task_conn.remove(&task).map(|conn| {
                        sh.cancel.remove(&conn);
                        sh.sockets.remove(&conn);
                        let cause = if end == End::Cancelled { SHUTDOWN } else { end.cause() };
                        let note = if !machine.is_current(conn) {
                            Note::Retired { conn, cause }
                        } else {
                            if cause != SHUTDOWN {
                                self.observed.reconnects.add(cause);
                            }
                            Note::Lost {
                                conn,
                                cause,
                                detail: format!("{end:?}"),
                                up_for: machine.current_up_for(Instant::now()).unwrap_or_default(),
                            }
                        };
                        (Event::Ended { conn, cause: cause.into() }, Some(note))
                    })
                }
            };
        }

        let result = if sh.fatal {
            match sh.last_error.take() {
                Some(AttemptError::Ticket(t)) => {
                    error!(cause = %t.cause(), "{t}");
                    Err(FatalCredentials(t))
                }
                _ => Ok(()),
            }
        } else {
            Ok(())
        };
        // Shutdown: every connection sends its Close frame, under a deadline. An attempt under
        // way may just have opened a WebSocket: let it finish briefly and close it properly
        // instead of dropping it (a dropped socket can reach DingTalk as a reset).
        if result.is_ok()
            && let Some(pending) = sh.attempt.take()
            && let Ok(Ok(mut est)) = tokio::time::timeout(ATTEMPT_GRACE, pending).await
        {
            connection::close_handshake(&mut est.ws, "").await;
        }
        for (_, t) in sh.cancel.drain() {
            t.cancel();
        }
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while sh.conns.join_next().await.is_some() {}
        })
        .await;
        sh.conns.abort_all();
        self.link.send_modify(|s| s.enter(LinkState::Stopped));
        result
    }

    /// Performs the machine's actions. `attempt` is the attempt number before the event.
    fn perform(
        &mut self,
        machine: &Machine,
        actions: Vec<Action>,
        attempt: u32,
        sh: &mut Shell,
        shutdown: &CancellationToken,
        events: &mpsc::UnboundedSender<ConnEvent>,
    ) {
        for action in actions {
            match action {
                Action::Attempt => {
                    sh.wait_until = None;
                    info!(attempt = machine.attempt_no(), "connecting to DingTalk");
                    sh.attempt = Some(self.attempt());
                }
                Action::AttemptAt(at) => {
                    sh.wait_until = Some(tokio::time::Instant::from_std(at));
                }
                Action::Serve(id) => {
                    let Some(est) = sh.opened.take() else {
                        continue;
                    };
                    let cancel = shutdown.child_token();
                    let ctx = ConnCtx {
                        id,
                        liveness: self.liveness.clone(),
                        relay: self.relay.clone(),
                        events: events.clone(),
                        cancel: cancel.clone(),
                        stats: self.stats.clone(),
                        observed: self.observed.clone(),
                        progress: self.reader_progress.clone(),
                        fragments: est.fragments.clone(),
                    };
                    info!(connection = %id, attempt, peer = %est.peer, handover = machine.open_connections().len() > 1, "connected to DingTalk");
                    sh.sockets.insert(id, est.socket.clone());
                    let task = sh.conns.spawn(connection::run(est.ws, ctx));
                    sh.task_conn.insert(task.id(), id);
                    sh.cancel.insert(id, cancel);
                }
                Action::Close(id) => {
                    if let Some(c) = sh.cancel.get(&id) {
                        c.cancel();
                    }
                }
                Action::Publish => {
                    let view = machine.view();
                    let socket = match &view.phase {
                        Phase::Open { conn, .. } => sh.sockets.get(conn).cloned(),
                        _ => None,
                    };
                    self.link.send_modify(|s| {
                        s.enter(LinkState::from_phase(&view.phase));
                        s.last_cause = view.last_cause.clone();
                        s.connections_opened = view.connections_opened;
                        s.handovers = view.handovers;
                        if socket.is_some() || !s.state.is_open() {
                            s.socket = socket;
                        }
                    });
                }
                Action::Fatal => sh.fatal = true,
            }
        }
    }
}

/// What to log about an event once the machine decided what follows from it.
enum Note {
    AttemptFailed {
        cause: String,
        error: String,
    },
    Lost {
        conn: ConnId,
        cause: &'static str,
        detail: String,
        up_for: Duration,
    },
    Retired {
        conn: ConnId,
        cause: &'static str,
    },
}

/// Logs an attempt failure or a lost connection with the wait the machine chose.
fn log_outcome(note: Option<Note>, actions: &[Action], attempt: u32, now: Instant) {
    let delay_ms = actions.iter().find_map(|a| match a {
        Action::AttemptAt(at) => Some(at.saturating_duration_since(now).as_millis() as u64),
        _ => None,
    });
    match note {
        Some(Note::AttemptFailed { cause, error }) => {
            if let Some(delay_ms) = delay_ms {
                warn!(attempt, cause = %cause, delay_ms, error = %error, "connection attempt failed; backing off");
            }
        }
        Some(Note::Lost {
            conn,
            cause,
            detail,
            up_for,
        }) if cause != SHUTDOWN => {
            warn!(connection = %conn, cause, detail, up_for_ms = up_for.as_millis() as u64, delay_ms = delay_ms.unwrap_or(0), "connection lost; reconnecting with a fresh ticket");
        }
        Some(Note::Retired { conn, cause }) => {
            info!(connection = %conn, cause, "retired connection closed");
        }
        Some(Note::Lost { .. }) | None => {}
    }
}

impl LinkState {
    /// The published form of a machine phase: monotonic instants become wall-clock times.
    fn from_phase(p: &Phase) -> LinkState {
        let wall = |t: Instant| {
            let now = Instant::now();
            if t >= now {
                SystemTime::now() + (t - now)
            } else {
                SystemTime::now() - (now - t)
            }
        };
        match p {
            Phase::Starting => LinkState::Starting,
            Phase::Connecting { attempt, since } => LinkState::Connecting {
                attempt: *attempt,
                since: wall(*since),
            },
            Phase::Open { conn, since, peer } => LinkState::Open {
                since: wall(*since),
                conn: *conn,
                peer: peer.clone(),
            },
            Phase::Backoff {
                attempt,
                until,
                cause,
                credentials_rejected,
            } => LinkState::Backoff {
                attempt: *attempt,
                until: wall(*until),
                cause: cause.clone(),
                credentials_rejected: *credentials_rejected,
            },
            Phase::Stopped => LinkState::Stopped,
        }
    }
}
