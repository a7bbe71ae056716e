//! The one reconnect loop. It alone starts connections (one code path: [`Supervisor::attempt`]),
//! fetching a fresh ticket each time; it backs off with full jitter, hands over
//! make-before-break on `disconnect`, publishes the link state for status and STATUS=, and
//! feeds the watchdog from its own `select!`.

pub mod backoff;
pub mod policy;
mod state;

pub use state::{LinkState, LinkStatus};

use crate::gateway::ticket::{TicketClient, TicketError};
use crate::notify::{Progress, Watchdog};
use crate::stream::connect::{self, ConnectError, ConnectParams, Established};
use crate::stream::connection::{self, ConnCtx, End, Liveness};
use crate::stream::{ConnEvent, ConnId, Inbound, StreamStats};
use policy::{Decision, Event, Policy};
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

/// Instructions from the rest of the daemon.
pub enum Command {
    /// A reloaded config. Every new setting is taken; with `relink` (credentials, endpoint,
    /// subscriptions, CA or proxy changed) the link is also replaced make-before-break.
    Reload {
        /// The new ticket client (credentials, endpoint, `connect_timeout`).
        ticket: Box<TicketClient>,
        /// The new connect parameters (socket options apply to the next connection).
        connect: Box<ConnectParams>,
        /// initial_delay, max_delay, stable_after.
        reconnect: (Duration, Duration, Duration),
        /// Replace the current connection (and any attempt still using the old settings).
        relink: bool,
    },
}

/// Everything the loop needs.
pub struct Supervisor {
    /// Ticket requests.
    pub ticket: TicketClient,
    /// WebSocket parameters.
    pub connect: ConnectParams,
    /// Frames to the spool writer.
    pub inbound: mpsc::Sender<Inbound>,
    /// Traffic counters.
    pub stats: Arc<StreamStats>,
    /// The published link state.
    pub link: watch::Sender<LinkStatus>,
    /// Live ping settings.
    pub liveness: watch::Receiver<Liveness>,
    /// Backoff and its memory.
    pub policy: Policy,
    /// The reader's progress counter (shared by all connections).
    pub reader_progress: Arc<Progress>,
    /// The watchdog check.
    pub watchdog: Watchdog,
    /// Reload commands.
    pub commands: mpsc::UnboundedReceiver<Command>,
}

type AttemptFuture = Pin<Box<dyn Future<Output = Result<Established, AttemptError>> + Send>>;

struct Current {
    id: ConnId,
    opened: Instant,
    cancel: CancellationToken,
}

impl Supervisor {
    /// The only place a connection attempt is started: fresh ticket, then the WebSocket.
    fn attempt(&self) -> AttemptFuture {
        let ticket = self.ticket.clone();
        let params = self.connect.clone();
        Box::pin(async move {
            let t = ticket.fetch().await?;
            Ok(connect::establish(&t, &params).await?)
        })
    }

    fn publish(&self, f: impl FnOnce(&mut LinkStatus)) {
        self.link.send_modify(f);
    }

    /// Runs until `shutdown`, or until credentials are rejected before the first success.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), FatalCredentials> {
        let (events_tx, mut events_rx) = mpsc::unbounded_channel::<ConnEvent>();
        let mut conns: JoinSet<End> = JoinSet::new();
        // Which connection each task runs, so a task that fails (a panic) is still known.
        let mut task_conn: HashMap<tokio::task::Id, ConnId> = HashMap::new();
        let mut current: Option<Current> = None;
        let mut draining: HashMap<ConnId, CancellationToken> = HashMap::new();
        let mut retire_on_open: Vec<CancellationToken> = Vec::new();
        let mut next_id = 0u64;
        let mut attempt: Option<AttemptFuture> = Some(self.attempt());
        let mut attempt_no: u32 = 1;
        let mut wait_until: Option<tokio::time::Instant> = None;
        let mut watchdog_tick =
            tokio::time::interval(self.watchdog.interval.unwrap_or(Duration::from_secs(3600)));
        let watchdog_on = self.watchdog.interval.is_some();
        self.publish(|s| {
            s.state = LinkState::Connecting {
                attempt: attempt_no,
                since: SystemTime::now(),
            }
        });
        info!(attempt = attempt_no, "connecting to DingTalk");

        let result = loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ok(()),
                _ = watchdog_tick.tick(), if watchdog_on => {
                    if let Err(part) = self.watchdog.check() {
                        error!(part, "not feeding the systemd watchdog: the {part} made no progress while it had work");
                    }
                }
                Some(Command::Reload { ticket, connect, reconnect, relink }) = self.commands.recv() => {
                    self.ticket = *ticket;
                    self.connect = *connect;
                    self.policy.backoff.set_bounds(reconnect.0, reconnect.1);
                    self.policy.stable_after = reconnect.2;
                    if relink {
                        if let Some(cur) = current.take() {
                            info!(connection = %cur.id, cause = "reload", "credentials or endpoint changed: opening a replacement before closing this connection");
                            // The old connection keeps running until the new one is open.
                            retire_on_open.push(cur.cancel.clone());
                            draining.insert(cur.id, cur.cancel);
                        }
                        // An attempt under way still uses the old settings: start over.
                        wait_until = None;
                        attempt_no = 1;
                        self.publish(|s| s.state = LinkState::Connecting { attempt: 1, since: SystemTime::now() });
                        attempt = Some(self.attempt());
                    }
                }
                res = async { attempt.as_mut().expect("guarded").await }, if attempt.is_some() => {
                    attempt = None;
                    match res {
                        Ok(est) => {
                            next_id += 1;
                            let id = ConnId(next_id);
                            let cancel = shutdown.child_token();
                            let ctx = ConnCtx {
                                id,
                                liveness: self.liveness.clone(),
                                inbound: self.inbound.clone(),
                                events: events_tx.clone(),
                                cancel: cancel.clone(),
                                stats: self.stats.clone(),
                                progress: self.reader_progress.clone(),
                            };
                            let task = conns.spawn(connection::run(est.ws, ctx));
                            task_conn.insert(task.id(), id);
                            self.policy.decide(&Event::Connected);
                            // Make-before-break: whatever was current keeps draining.
                            for t in retire_on_open.drain(..) {
                                t.cancel();
                            }
                            info!(connection = %id, attempt = attempt_no, peer = %est.peer, handover = !draining.is_empty(), "connected to DingTalk");
                            let socket = est.socket.clone();
                            self.publish(|s| {
                                s.state = LinkState::Open { since: SystemTime::now(), conn: id, peer: est.peer.clone() };
                                s.socket = Some(socket);
                                s.connections_opened += 1;
                            });
                            current = Some(Current { id, opened: Instant::now(), cancel });
                            attempt_no = 0;
                        }
                        Err(e) => {
                            let cause = e.cause();
                            let (credentials, retry_after) = match &e {
                                AttemptError::Ticket(t) => (t.is_credentials(), t.retry_after()),
                                AttemptError::Connect(_) => (false, None),
                            };
                            match self.policy.decide(&Event::AttemptFailed { credentials, retry_after }) {
                                Decision::Fatal => {
                                    let AttemptError::Ticket(t) = e else { unreachable!("only ticket errors are credentials") };
                                    error!(cause = %cause, "{t}");
                                    break Err(FatalCredentials(t));
                                }
                                Decision::Wait(delay) => {
                                    warn!(attempt = attempt_no, cause = %cause, delay_ms = delay.as_millis() as u64, error = %e, "connection attempt failed; backing off");
                                    self.schedule(&mut wait_until, delay, attempt_no, cause, credentials);
                                }
                                Decision::ConnectNow | Decision::Stay => {
                                    attempt = Some(self.attempt());
                                }
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(wait_until.unwrap_or_else(tokio::time::Instant::now)), if wait_until.is_some() => {
                    wait_until = None;
                    attempt_no += 1;
                    info!(attempt = attempt_no, "connecting to DingTalk");
                    self.publish(|s| s.state = LinkState::Connecting { attempt: attempt_no, since: SystemTime::now() });
                    attempt = Some(self.attempt());
                }
                Some(ev) = events_rx.recv() => match ev {
                    ConnEvent::Disconnect { id, reason } => {
                        if let Some(cur) = current.take_if(|c| c.id == id) {
                            draining.insert(cur.id, cur.cancel);
                            self.stats_handover();
                            if self.policy.decide(&Event::DisconnectRequested) == Decision::ConnectNow && attempt.is_none() {
                                wait_until = None;
                                attempt_no = 1;
                                info!(connection = %id, cause = "server_disconnect", reason = %reason, "opening the replacement connection now (make-before-break)");
                                // The state stays Open: the draining connection is still live
                                // and ACKing until the replacement is up.
                                attempt = Some(self.attempt());
                            }
                        }
                    }
                },
                Some(joined) = conns.join_next_with_id(), if !conns.is_empty() => {
                    let (task, end) = match joined {
                        Ok((task, end)) => (task, end),
                        // A failed task is a lost connection like any other: never a stall.
                        Err(e) => {
                            error!(error = %e, "a connection task failed");
                            (e.id(), End::Io(format!("connection task failed: {e}")))
                        }
                    };
                    let Some(id) = task_conn.remove(&task) else { continue };
                    if draining.remove(&id).is_some() {
                        info!(connection = %id, cause = end.cause(), "retired connection closed");
                        if current.is_none() && attempt.is_some() && draining.is_empty() {
                            // The handover's replacement is not up yet and nothing is live now.
                            self.publish(|s| s.state = LinkState::Connecting { attempt: attempt_no.max(1), since: SystemTime::now() });
                        }
                        continue;
                    }
                    let Some(cur) = current.take_if(|c| c.id == id) else { continue };
                    let up_for = cur.opened.elapsed();
                    if end == End::Cancelled {
                        continue;
                    }
                    let Decision::Wait(delay) = self.policy.decide(&Event::Dropped { up_for }) else { continue };
                    warn!(connection = %id, cause = end.cause(), detail = ?end, up_for_ms = up_for.as_millis() as u64, delay_ms = delay.as_millis() as u64, "connection lost; reconnecting with a fresh ticket");
                    if attempt.is_none() {
                        self.schedule(&mut wait_until, delay, attempt_no, end.cause().to_string(), false);
                    }
                }
            }
        };

        // Shutdown: every connection sends its Close frame, under a deadline. An attempt under
        // way may just have opened a WebSocket: let it finish briefly and close it properly
        // instead of dropping it (a dropped socket can reach DingTalk as a reset).
        if result.is_ok()
            && let Some(pending) = attempt.take()
            && let Ok(Ok(mut est)) = tokio::time::timeout(ATTEMPT_GRACE, pending).await
        {
            connection::close_handshake(&mut est.ws, "").await;
        }
        if let Some(cur) = current.take() {
            cur.cancel.cancel();
        }
        for (_, t) in draining.drain() {
            t.cancel();
        }
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        conns.abort_all();
        self.publish(|s| s.state = LinkState::Stopped);
        result
    }

    fn schedule(
        &self,
        wait_until: &mut Option<tokio::time::Instant>,
        delay: Duration,
        attempt: u32,
        cause: String,
        credentials: bool,
    ) {
        *wait_until = Some(tokio::time::Instant::now() + delay);
        let until = SystemTime::now() + delay;
        self.publish(|s| {
            s.state = LinkState::Backoff {
                attempt,
                until,
                cause: cause.clone(),
                credentials_rejected: credentials,
            };
            s.last_cause = Some(cause);
        });
    }

    fn stats_handover(&self) {
        self.publish(|s| s.handovers += 1);
    }
}
