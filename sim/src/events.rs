//! What the fake gateway saw and did, as timestamped events tests can wait on.
//!
//! Every event is appended to a bounded log; waiters are woken through a `watch` counter, so a
//! test never misses an event that happened between its action and its wait (use a cursor
//! taken before the action) and never sleeps to synchronise.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Events kept in memory; older ones are forgotten (the binary may run for days).
const MAX_EVENTS: usize = 100_000;

/// A connection's id inside the simulator (`c1`, `c2`, ...). The ticket is DingTalk's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// A client secret as received; `Debug` prints `***` so events can be printed safely.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub(crate) fn new(s: String) -> Secret {
        Secret(s)
    }
    /// The secret itself, for assertions only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// One `subscriptions[]` entry of a ticket request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Subscription {
    /// `EVENT`, `CALLBACK` or `SYSTEM`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The topic.
    pub topic: String,
}

/// A `POST connections/open` as received, so tests can assert what the client sends.
#[derive(Debug, Clone)]
pub struct TicketRequest {
    /// `clientId`.
    pub client_id: String,
    /// `clientSecret`: kept for assertions, redacted in `Debug`, never logged.
    pub client_secret: Secret,
    /// `subscriptions`, in the order sent.
    pub subscriptions: Vec<Subscription>,
    /// `ua`, if present.
    pub ua: Option<String>,
    /// `localIp`, if present.
    pub local_ip: Option<String>,
    /// `extras` (GO sends `null`).
    pub extras: Option<serde_json::Value>,
    /// The HTTP `Accept` header (DingTalk wants `application/json`).
    pub accept: Option<String>,
    /// The HTTP `Content-Type` header.
    pub content_type: Option<String>,
    /// The HTTP `User-Agent` header.
    pub user_agent: Option<String>,
}

/// Why a WebSocket connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent a close frame.
    ClientClose {
        /// Close code (1005 when none was given).
        code: u16,
        /// Close reason text.
        reason: String,
    },
    /// TCP closed without a close frame.
    Eof,
    /// A read or write error.
    Error(String),
    /// [`crate::FakeGateway::drop_connection`]: socket reset, no close frame.
    Dropped,
    /// [`crate::FakeGateway::close_connection`]: the server sent a close frame.
    ServerClose {
        /// Close code sent.
        code: u16,
    },
    /// Closed by the server at the end of the grace period after `disconnect`.
    AfterDisconnect,
    /// The gateway shut down.
    Shutdown,
}

/// Something the gateway observed or did.
#[derive(Debug, Clone)]
pub enum GatewayEvent {
    /// A ticket request arrived (before any fault or auth decision).
    TicketRequested(Box<TicketRequest>),
    /// The ticket endpoint got a body it could not parse (answered 400).
    TicketRequestMalformed {
        /// Parser error.
        error: String,
    },
    /// A ticket was issued.
    TicketIssued {
        /// The ticket (= the future `connectionId`).
        ticket: String,
    },
    /// The ticket endpoint answered an error (bad credentials or an injected fault).
    TicketRejected {
        /// HTTP status.
        status: u16,
    },
    /// The ticket endpoint is hanging a request on purpose.
    TicketHung,
    /// The ticket endpoint answered with an injected body (status as given).
    TicketOddAnswer {
        /// HTTP status.
        status: u16,
    },
    /// The ticket endpoint began an answer it will never finish.
    TicketUnfinished,
    /// A WebSocket upgrade request is left unanswered on purpose.
    HandshakeHung,
    /// A connection was made to misbehave.
    Misbehaved {
        /// Where.
        conn: ConnId,
        /// What it did.
        what: super::faults::Misbehaviour,
    },
    /// `POST /v1.0/oauth2/accessToken` issued a token.
    TokenIssued {
        /// The token (the value a client must send as `x-acs-dingtalk-access-token`).
        token: String,
    },
    /// `POST /v1.0/oauth2/accessToken` refused wrong credentials.
    TokenRefused,
    /// A robot message was sent through `POST /v1.0/robot/oToMessages/batchSend`.
    RobotSent(Box<super::openapi::RobotSend>),
    /// A reply to a bot message arrived on its `sessionWebhook`.
    WebhookReplied(Box<super::webhook::WebhookReply>),
    /// A POST to a `sessionWebhook` was refused (unknown or expired session, not a message).
    WebhookRefused {
        /// The robot API's `errcode` answered.
        errcode: i64,
        /// Why.
        reason: String,
    },
    /// A WebSocket handshake was refused before upgrading.
    HandshakeRejected {
        /// HTTP status.
        status: u16,
        /// Why (unknown / used / expired ticket, bad path, injected fault).
        reason: String,
    },
    /// A WebSocket connection opened.
    Connected {
        /// Simulator id.
        conn: ConnId,
        /// The ticket used (= `connectionId` header).
        ticket: String,
    },
    /// A tracked or system frame was written to a connection.
    FrameSent {
        /// Where.
        conn: ConnId,
        /// `messageId`, empty for raw frames.
        message_id: String,
        /// `topic`, empty for raw frames.
        topic: String,
        /// 0 for the first delivery, n for the n-th redelivery.
        redelivery: u32,
    },
    /// A frame for a zombie connection was swallowed.
    FrameSwallowed {
        /// Where.
        conn: ConnId,
        /// `messageId`, empty for raw frames.
        message_id: String,
    },
    /// An ACK arrived.
    Ack {
        /// Connection it came on.
        conn: ConnId,
        /// `headers.messageId`.
        message_id: String,
        /// `code`.
        code: i64,
        /// `message` ("" when absent).
        message: String,
        /// `data` ("" when absent).
        data: String,
    },
    /// The ACK of a SYSTEM ping arrived; `opaque_ok` says whether it echoed the opaque.
    PingAcked {
        /// Connection.
        conn: ConnId,
        /// The ping's messageId.
        message_id: String,
        /// Whether `data.opaque` matched.
        opaque_ok: bool,
    },
    /// An unACKed EVENT/CALLBACK was pushed again.
    Redelivered {
        /// Where it went this time.
        conn: ConnId,
        /// Same `messageId` as the first delivery.
        message_id: String,
        /// 1 for the first redelivery.
        attempt: u32,
    },
    /// A frame from the client that is not an ACK (bad JSON, binary, ...).
    UnexpectedFrame {
        /// Connection.
        conn: ConnId,
        /// What was wrong.
        detail: String,
    },
    /// The client sent a WebSocket ping (answered unless zombie).
    ClientWsPing {
        /// Connection.
        conn: ConnId,
    },
    /// A `disconnect` frame was sent; the connection gets nothing more.
    DisconnectSent {
        /// Connection.
        conn: ConnId,
        /// Its messageId.
        message_id: String,
    },
    /// Zombie mode switched on a connection.
    ZombieSet {
        /// Connection.
        conn: ConnId,
        /// On or off.
        on: bool,
    },
    /// A connection ended.
    Closed {
        /// Connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
}

/// An event and when it happened.
#[derive(Debug, Clone)]
pub struct TimedEvent {
    /// When.
    pub at: Instant,
    /// What.
    pub event: GatewayEvent,
}

/// A wait ran past its deadline.
#[derive(Debug, Clone, thiserror::Error)]
#[error("timed out after {waited:?} waiting for {what}")]
pub struct Timeout {
    /// What was awaited.
    pub what: String,
    /// How long.
    pub waited: Duration,
}

struct Log {
    first: u64,
    events: VecDeque<TimedEvent>,
}

/// The bounded event log with change notification.
pub(crate) struct EventLog {
    log: Mutex<Log>,
    seq: watch::Sender<u64>,
}

impl EventLog {
    pub(crate) fn new() -> EventLog {
        EventLog {
            log: Mutex::new(Log {
                first: 0,
                events: VecDeque::new(),
            }),
            seq: watch::Sender::new(0),
        }
    }

    pub(crate) fn push(&self, event: GatewayEvent) {
        let end = {
            let mut log = lock(&self.log);
            log.events.push_back(TimedEvent {
                at: Instant::now(),
                event,
            });
            if log.events.len() > MAX_EVENTS {
                log.events.pop_front();
                log.first += 1;
            }
            log.first + log.events.len() as u64
        };
        self.seq.send_replace(end);
    }

    /// Index one past the newest event.
    pub(crate) fn end(&self) -> u64 {
        let log = lock(&self.log);
        log.first + log.events.len() as u64
    }

    /// Events from index `from` on (clamped to what is still kept), and the new end.
    pub(crate) fn since(&self, from: u64) -> (Vec<TimedEvent>, u64) {
        let log = lock(&self.log);
        let skip = usize::try_from(from.saturating_sub(log.first)).unwrap_or(usize::MAX);
        let events = log.events.iter().skip(skip).cloned().collect();
        (events, log.first + log.events.len() as u64)
    }

    /// Calls `f` on every event from index `from` on, without copying them; returns the index
    /// of the first event visited (more than `from` when older ones were forgotten) and the end.
    pub(crate) fn visit_since(&self, from: u64, mut f: impl FnMut(&TimedEvent)) -> (u64, u64) {
        let log = lock(&self.log);
        let first = from.max(log.first);
        let skip = usize::try_from(first - log.first)
            .unwrap_or(usize::MAX)
            .min(log.events.len());
        log.events.range(skip..).for_each(&mut f);
        (first, log.first + log.events.len() as u64)
    }

    pub(crate) fn watcher(&self) -> watch::Receiver<u64> {
        self.seq.subscribe()
    }
}

/// A reader of the event log with its own position: take one *before* an action, then wait
/// for the consequence; it sees every event after the point it was taken.
pub struct EventCursor {
    pub(crate) log: std::sync::Arc<super::state::GatewayCore>,
    pub(crate) next: u64,
}

impl EventCursor {
    /// Events since the cursor (or the last call), without waiting.
    pub fn drain(&mut self) -> Vec<TimedEvent> {
        let (events, end) = self.log.events.since(self.next);
        self.next = end;
        events
    }

    /// Waits for the next event matching `pred` (after the cursor) and moves the cursor past it.
    pub async fn wait_for<F>(
        &mut self,
        mut pred: F,
        timeout: Duration,
    ) -> Result<TimedEvent, Timeout>
    where
        F: FnMut(&GatewayEvent) -> bool,
    {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut watcher = self.log.events.watcher();
        loop {
            watcher.borrow_and_update();
            let (events, end) = self.log.events.since(self.next);
            let base = end - events.len() as u64;
            for (i, ev) in events.into_iter().enumerate() {
                if pred(&ev.event) {
                    self.next = base + i as u64 + 1;
                    return Ok(ev);
                }
            }
            self.next = end;
            let changed = tokio::time::timeout_at(deadline, watcher.changed()).await;
            if !matches!(changed, Ok(Ok(()))) {
                return Err(Timeout {
                    what: "a matching gateway event".into(),
                    waited: started.elapsed(),
                });
            }
        }
    }
}

/// Locks a std mutex, ignoring poisoning: the data is plain bookkeeping that stays consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
