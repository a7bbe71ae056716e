//! A local fake DingTalk gateway: the ticket endpoint and the Stream WebSocket on one port.
//!
//! Used in-process by the integration tests (on `127.0.0.1:0`) and by the
//! `dingtalk-streamd-sim` binary, so the daemon can be developed and demonstrated without
//! DingTalk credentials. It speaks the real protocol (docs/protocol.md §9 checklist), records what
//! the client does as [`GatewayEvent`]s, and injects the failures seen in production.
//!
//! Layout: `config` (settings, API types), `frames`/`ids` (wire shapes), `events`
//! (observability), `stats` (counts, connection spans), `faults` (HTTP faults), `ca`
//! (throwaway TLS), `http`/`ticket` (accept loop, handshake, ticket endpoint), `openapi` (the
//! access-token and robot-send endpoints), `webhook` (bot messages' `sessionWebhook`, served
//! here and recorded), `conn` (one WebSocket) with `outbox` (its write side) and `acks` (what an
//! ACK does), `redeliver` (ACK deadlines), `ack_log` (the soak log), `state` (shared
//! bookkeeping), `push`, `mix` (the benchmark's fixed burst and paced runs), `fill` (small
//! frames to fill a spool fast) and `wait` (parts of the public handle), and this file (the
//! handle).

mod ack_log;
mod acks;
mod ca;
mod config;
mod conn;
mod events;
mod faults;
mod fill;
mod frames;
mod http;
mod ids;
mod mix;
mod openapi;
mod outbox;
mod push;
mod redeliver;
mod state;
mod stats;
mod ticket;
mod wait;
mod webhook;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

pub use dingtalk_streamd::wire::gateway::Envelope;
pub use events::{
    CloseReason, ConnId, EventCursor, GatewayEvent, Secret, Subscription, TicketRequest,
    TimedEvent, Timeout,
};
pub use faults::{HandshakeFault, HandshakeFaultKind, Misbehaviour, TicketFault, TicketFaultKind};
pub use fill::{FillError, FillReport, fill_frame};
pub use frames::{
    BotMessage, DISCONNECT_REASON, FrameKind, OutFrame, TOPIC_BOT_MESSAGE, TOPIC_CARD_CALLBACK,
    TOPIC_EVENT_ALL, new_message_id, new_uuid, now_ms,
};
pub use mix::{MIX_EVENT_TYPE, PaceReport, mix_frame};
pub use openapi::RobotSend;
pub use webhook::WebhookReply;

pub use config::{
    AckRecord, Counts, DEFAULT_DISCONNECT_GRACE, DEFAULT_REDELIVER_AFTER, DEFAULT_TICKET_TTL,
    DEFAULT_TOKEN_TTL, DisconnectStorm, GatewayConfig, PushError, Pushed, Route, SimError,
};
pub use stats::{ConnSpan, connection_spans, max_open_at_once, max_opened_within};

use conn::ConnCmd;
use events::EventLog;
use state::{GatewayCore, State};

/// A running fake gateway. Cheap to clone; the last clone dropped (or
/// [`FakeGateway::shutdown`]) stops every task and closes every socket.
#[derive(Clone)]
pub struct FakeGateway {
    shared: Arc<GatewayCore>,
    addr: SocketAddr,
    ca_pem: Option<Arc<str>>,
    _guard: Arc<DropGuard>,
}

impl FakeGateway {
    /// Binds `config.listen`, generates the CA when `config.tls`, and starts serving.
    pub async fn start(config: GatewayConfig) -> Result<FakeGateway, SimError> {
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let host = config.public_host.clone().unwrap_or_else(|| {
            if addr.ip().is_unspecified() {
                "127.0.0.1".into()
            } else {
                addr.ip().to_string()
            }
        });
        let tls = if config.tls {
            let mut hosts = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
            if !hosts.contains(&host) {
                hosts.push(host.clone());
            }
            Some(ca::TestCa::generate(&hosts)?)
        } else {
            None
        };
        let scheme = if tls.is_some() { "wss" } else { "ws" };
        let host_port = if host.contains(':') {
            format!("[{host}]:{}", addr.port())
        } else {
            format!("{host}:{}", addr.port())
        };
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let ack_log = match &config.ack_log {
            Some(path) => {
                let (log, writer) =
                    ack_log::AckLog::open(path, config.ack_log_times, cancel.clone())?;
                tracker.spawn(writer);
                Some(log)
            }
            None => None,
        };
        let state = State {
            storm: config.disconnect_storm.map(|s| (s, Instant::now())),
            ..State::default()
        };
        let endpoint = format!("{scheme}://{host_port}/connect");
        let shared = Arc::new(GatewayCore {
            webhooks: webhook::Webhooks::new(&endpoint),
            endpoint,
            config,
            events: EventLog::new(),
            state: std::sync::Mutex::new(state),
            cancel: cancel.clone(),
            tracker,
            next_conn: AtomicU64::new(1),
            redeliver_wake: Notify::new(),
            ack_log,
        });
        let acceptor = tls
            .as_ref()
            .map(|t| tokio_rustls::TlsAcceptor::from(t.server_config.clone()));
        shared
            .tracker
            .spawn(http::serve(shared.clone(), listener, acceptor));
        shared.tracker.spawn(redeliver::run(shared.clone()));
        tracing::info!(%addr, tls = shared.config.tls, "fake DingTalk gateway listening");
        Ok(FakeGateway {
            shared,
            addr,
            ca_pem: tls.map(|t| Arc::from(t.ca_pem)),
            _guard: Arc::new(cancel.drop_guard()),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The configuration in force.
    pub fn config(&self) -> &GatewayConfig {
        &self.shared.config
    }

    /// The ticket endpoint URL, for the daemon's `dingtalk.open_url`.
    pub fn open_url(&self) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        let ws = &self.shared.endpoint;
        let host_port = ws
            .split_once("://")
            .map_or("", |(_, rest)| rest.trim_end_matches("/connect"));
        format!("{scheme}://{host_port}/v1.0/gateway/connections/open")
    }

    /// The `endpoint` handed out with tickets (`ws(s)://host:port/connect`).
    pub fn endpoint(&self) -> &str {
        &self.shared.endpoint
    }

    /// The throwaway CA certificate (PEM) when TLS is on, for the client's trust store.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// Writes the CA PEM to `path` (the daemon's `tls.ca_file`); an error when TLS is off.
    pub fn write_ca_pem(&self, path: &Path) -> std::io::Result<()> {
        let pem = self.ca_pem().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "TLS is off: there is no CA")
        })?;
        std::fs::write(path, pem)
    }

    /// A cursor at the current end of the event log: wait on it for what happens next.
    pub fn subscribe(&self) -> EventCursor {
        EventCursor {
            next: self.shared.events.end(),
            log: self.shared.clone(),
        }
    }

    /// A cursor at the start of the (bounded) event log.
    pub fn cursor_from_start(&self) -> EventCursor {
        EventCursor {
            next: 0,
            log: self.shared.clone(),
        }
    }

    /// Every event still kept, oldest first.
    pub fn events(&self) -> Vec<TimedEvent> {
        self.shared.events.since(0).0
    }

    /// Open connections (including zombie and draining ones), oldest first.
    pub fn open_connections(&self) -> Vec<ConnId> {
        self.shared.state().conns.keys().copied().collect()
    }

    /// The ticket (= `connectionId` header) of an open connection.
    pub fn connection_ticket(&self, conn: ConnId) -> Option<String> {
        self.shared
            .state()
            .conns
            .get(&conn)
            .map(|e| e.ticket.clone())
    }

    /// How many tickets were issued.
    pub fn tickets_issued(&self) -> usize {
        self.shared.state().tickets_issued
    }

    /// Every access token issued by `POST /v1.0/oauth2/accessToken`, oldest first.
    pub fn tokens_issued(&self) -> Vec<String> {
        self.events()
            .iter()
            .filter_map(|e| match &e.event {
                GatewayEvent::TokenIssued { token } => Some(token.clone()),
                _ => None,
            })
            .collect()
    }

    /// Every robot message sent through `POST /v1.0/robot/oToMessages/batchSend`, oldest first.
    pub fn robot_sends(&self) -> Vec<RobotSend> {
        self.shared.state().robot_sends.clone()
    }

    /// Every reply POSTed to a bot message's `sessionWebhook` (bounded), oldest first.
    pub fn webhook_replies(&self) -> Vec<WebhookReply> {
        self.shared.webhooks.replies()
    }

    /// Waits for a reply to the bot message whose `msgId` is `msg_id` (one that already came
    /// counts); returns the first.
    pub async fn wait_webhook_reply(
        &self,
        msg_id: &str,
        timeout: Duration,
    ) -> Result<WebhookReply, Timeout> {
        let mut found = None;
        let waited = self
            .wait_until(
                |g| {
                    found = g.shared.webhooks.reply_to(msg_id);
                    found.is_some()
                },
                timeout,
            )
            .await;
        found.ok_or_else(|| Timeout {
            what: format!("a sessionWebhook reply to {msg_id}"),
            waited: waited.err().map_or(timeout, |e| e.waited),
        })
    }

    /// Every parsed ticket request, oldest first.
    pub fn ticket_requests(&self) -> Vec<TicketRequest> {
        self.shared.state().ticket_requests.clone()
    }

    /// ACKs received for `message_id`, oldest first.
    pub fn acks(&self, message_id: &str) -> Vec<AckRecord> {
        let st = self.shared.state();
        st.acks
            .iter()
            .filter(|a| a.message_id == message_id)
            .cloned()
            .collect()
    }

    /// Every ACK received (bounded), oldest first.
    pub fn all_acks(&self) -> Vec<AckRecord> {
        self.shared.state().acks.iter().cloned().collect()
    }

    /// messageIds still awaiting a successful ACK (redelivery pending).
    pub fn unacked(&self) -> Vec<String> {
        self.shared.state().pending.keys().cloned().collect()
    }

    /// Sends a SYSTEM `ping` now; its ACK is checked for the opaque ([`GatewayEvent::PingAcked`]).
    pub fn send_ping(&self, conn: ConnId) -> Result<Pushed, PushError> {
        let (env, opaque) = frames::ping_frame();
        let mut st = self.shared.state();
        let pushed = self.shared.send_envelope(&mut st, conn, env)?;
        st.pings.insert(pushed.message_id.clone(), opaque);
        Ok(pushed)
    }

    /// Sends `disconnect`, delivers nothing more on `conn`, and closes its TCP after
    /// [`GatewayConfig::disconnect_grace`].
    pub fn send_disconnect(&self, conn: ConnId) -> Result<Pushed, PushError> {
        self.send_disconnect_with_grace(conn, self.shared.config.disconnect_grace)
    }

    /// [`FakeGateway::send_disconnect`] with an explicit grace period.
    pub fn send_disconnect_with_grace(
        &self,
        conn: ConnId,
        grace: Duration,
    ) -> Result<Pushed, PushError> {
        let mut st = self.shared.state();
        let entry = st
            .conns
            .get_mut(&conn)
            .ok_or(PushError::UnknownConnection(conn))?;
        if entry.draining {
            return Err(PushError::Draining(conn));
        }
        entry.draining = true;
        let (cmd, message_id, text) = self.shared.disconnect_cmd(&entry.ticket, grace);
        entry
            .tx
            .send(cmd)
            .map_err(|_| PushError::UnknownConnection(conn))?;
        Ok(Pushed {
            conn,
            message_id,
            text,
        })
    }

    /// Starts a `disconnect` storm (its window counted from now), or ends it (`None`): every
    /// connection opened meanwhile gets `disconnect` right after its WebSocket opens. Open
    /// connections are left alone. See [`FakeGateway::max_opened_within`] and
    /// [`FakeGateway::max_open_at_once`] for what the client did about it.
    pub fn set_disconnect_storm(&self, storm: Option<DisconnectStorm>) {
        self.shared.state().storm = storm.map(|s| (s, Instant::now()));
    }

    /// Whether a `disconnect` storm is raging now.
    pub fn disconnect_storm_active(&self) -> bool {
        let st = self.shared.state();
        st.storm
            .as_ref()
            .is_some_and(|(s, started)| s.active_at(*started, Instant::now()))
    }

    /// Makes connection `conn` misbehave once (see [`Misbehaviour`]).
    pub fn misbehave(&self, conn: ConnId, what: Misbehaviour) -> Result<(), PushError> {
        self.conn_cmd(conn, ConnCmd::Misbehave(what))
    }

    /// Resets the connection's TCP (RST, no close frame), like a dying gateway node.
    pub fn drop_connection(&self, conn: ConnId) -> Result<(), PushError> {
        self.conn_cmd(conn, ConnCmd::Drop)
    }

    /// Sends a WebSocket close frame with `code` and closes.
    pub fn close_connection(&self, conn: ConnId, code: u16, reason: &str) -> Result<(), PushError> {
        self.conn_cmd(
            conn,
            ConnCmd::Close {
                code,
                reason: reason.into(),
            },
        )
    }

    /// Zombie mode on one connection: it stops reading (client WS pings go unanswered) and
    /// writing (pushes are swallowed), while TCP stays open.
    pub fn set_zombie(&self, conn: ConnId, on: bool) -> Result<(), PushError> {
        let mut st = self.shared.state();
        let entry = st
            .conns
            .get_mut(&conn)
            .ok_or(PushError::UnknownConnection(conn))?;
        entry.zombie = on;
        entry
            .tx
            .send(ConnCmd::Zombie(on))
            .map_err(|_| PushError::UnknownConnection(conn))
    }

    /// Zombie mode on every open connection and every future one (until switched off).
    pub fn set_zombie_all(&self, on: bool) {
        let mut st = self.shared.state();
        st.zombie_all = on;
        for entry in st.conns.values_mut() {
            entry.zombie = on;
            let _ = entry.tx.send(ConnCmd::Zombie(on));
        }
    }

    /// Makes the ticket endpoint fail (`Some`) or behave again (`None`).
    pub fn set_ticket_fault(&self, fault: Option<TicketFault>) {
        self.shared.state().ticket_fault = fault;
    }

    /// Makes WebSocket handshakes fail (`Some`) or succeed again (`None`).
    pub fn set_handshake_fault(&self, fault: Option<HandshakeFault>) {
        self.shared.state().handshake_fault = fault;
    }

    /// Stops every task and closes every socket, waiting up to 5 s for them to finish.
    pub async fn shutdown(self) {
        self.shared.cancel.cancel();
        self.shared.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.shared.tracker.wait()).await;
    }

    fn conn_cmd(&self, conn: ConnId, cmd: ConnCmd) -> Result<(), PushError> {
        let st = self.shared.state();
        let entry = st
            .conns
            .get(&conn)
            .ok_or(PushError::UnknownConnection(conn))?;
        entry
            .tx
            .send(cmd)
            .map_err(|_| PushError::UnknownConnection(conn))
    }
}

impl std::fmt::Debug for FakeGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeGateway")
            .field("addr", &self.addr)
            .field("tls", &self.ca_pem.is_some())
            .finish_non_exhaustive()
    }
}
