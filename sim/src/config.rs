//! The gateway's configuration and the plain types of its public API.
//!
//! Defaults follow what DingTalk documents or field reports show (docs/protocol.md §1.1, §3.5,
//! §4.2), so a test states only what it changes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::events::ConnId;

/// Ticket lifetime DingTalk documents (docs/protocol.md §1.1).
pub const DEFAULT_TICKET_TTL: Duration = Duration::from_secs(90);
/// Redelivery delay seen in field reports for unACKed bot messages (docs/protocol.md §3.5).
pub const DEFAULT_REDELIVER_AFTER: Duration = Duration::from_secs(60);
/// Lifetime of access tokens, as DingTalk's `expireIn` (seconds) says it.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(7200);
/// Silence between `disconnect` and the TCP close (docs/protocol.md §4.2).
pub const DEFAULT_DISCONNECT_GRACE: Duration = Duration::from_secs(10);

/// How the fake gateway behaves. `Default` suits tests: plain `ws://` on `127.0.0.1:0`, no
/// periodic pings, redelivery after 60 s.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Where to listen (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Serve HTTPS/WSS with a throwaway CA (see [`super::FakeGateway::ca_pem`]).
    pub tls: bool,
    /// The accepted `clientId`.
    pub client_id: String,
    /// The accepted `clientSecret`.
    pub client_secret: String,
    /// `appId` header on every frame.
    pub app_id: String,
    /// Host put in the returned `endpoint` (default: the listen IP, or 127.0.0.1 if unspecified).
    pub public_host: Option<String>,
    /// How long an issued ticket can be used.
    pub ticket_ttl: Duration,
    /// How long an access token from `POST /v1.0/oauth2/accessToken` is valid (`expireIn`).
    pub token_ttl: Duration,
    /// Period of SYSTEM `ping` frames on every connection; `None` = only on demand.
    pub ping_interval: Option<Duration>,
    /// Redeliver an EVENT/CALLBACK not ACKed (or ACKed with failure) after this; `None` = never.
    pub redeliver_after: Option<Duration>,
    /// How many times one frame is redelivered at most.
    pub max_redeliveries: u32,
    /// Delay between `disconnect` and the TCP close.
    pub disconnect_grace: Duration,
    /// Answer every new connection with `disconnect` as soon as it opens; the window starts
    /// when the gateway starts. Switch it at run time with
    /// [`super::FakeGateway::set_disconnect_storm`]. `None` = off.
    pub disconnect_storm: Option<DisconnectStorm>,
    /// Append one line per push (`pushed <messageId> <msgId>`) and per first successful ACK
    /// (`acked <messageId>`) to this file, for soak checks (see `ack_log.rs`). `None` = off.
    pub ack_log: Option<PathBuf>,
    /// End every ACK log line with the wall clock in microseconds (for latency
    /// measurements, see `ack_log.rs`).
    pub ack_log_times: bool,
}

impl Default for GatewayConfig {
    fn default() -> GatewayConfig {
        GatewayConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: false,
            client_id: "sim-client".into(),
            client_secret: "sim-secret".into(),
            app_id: "3bb3c6d6-c31b-4473-addd-60f5cdc50ce0".into(),
            public_host: None,
            ticket_ttl: DEFAULT_TICKET_TTL,
            token_ttl: DEFAULT_TOKEN_TTL,
            ping_interval: None,
            redeliver_after: Some(DEFAULT_REDELIVER_AFTER),
            max_redeliveries: 3,
            disconnect_grace: DEFAULT_DISCONNECT_GRACE,
            disconnect_storm: None,
            ack_log: None,
            ack_log_times: false,
        }
    }
}

/// A `disconnect` storm: DingTalk recycling every connection, so each new one is told to go
/// away right after its WebSocket opens (docs/protocol.md §4.2), then closed after a grace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DisconnectStorm {
    /// How long the storm lasts from when it starts; `None` = until switched off.
    pub window: Option<Duration>,
    /// Delay between each `disconnect` and its TCP close; `None` = the gateway's
    /// [`GatewayConfig::disconnect_grace`].
    pub grace: Option<Duration>,
}

impl DisconnectStorm {
    /// A storm until switched off, with the gateway's grace.
    pub fn until_off() -> DisconnectStorm {
        DisconnectStorm::default()
    }

    /// A storm that ends by itself after `window`.
    pub fn for_window(window: Duration) -> DisconnectStorm {
        DisconnectStorm {
            window: Some(window),
            grace: None,
        }
    }

    /// The same storm with its own grace before each TCP close.
    pub fn with_grace(self, grace: Duration) -> DisconnectStorm {
        DisconnectStorm {
            grace: Some(grace),
            ..self
        }
    }

    /// Whether a storm that started at `started` is still raging at `now`.
    pub fn active_at(&self, started: Instant, now: Instant) -> bool {
        self.window
            .is_none_or(|w| now.saturating_duration_since(started) < w)
    }
}

/// Errors starting the gateway.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Binding or socket setup failed.
    #[error("simulator I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Generating the CA or the TLS config failed.
    #[error("simulator TLS setup: {0}")]
    Tls(String),
}

/// Why a push could not be queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// No connection that accepts deliveries (open, not draining, not zombie).
    #[error("no open connection to push to")]
    NoConnection,
    /// The named connection is not open.
    #[error("connection {0} is not open")]
    UnknownConnection(ConnId),
    /// The named connection got `disconnect`; DingTalk delivers nothing more on it.
    #[error("connection {0} is draining after disconnect")]
    Draining(ConnId),
    /// [`Route::Wait`] ran out.
    #[error("no connection opened within {0:?}")]
    Timeout(Duration),
}

/// How much the gateway has done so far (for `/status` and soak runs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Connections open now.
    pub open_connections: usize,
    /// WebSocket connections opened since start.
    pub connections_opened: u64,
    /// Tickets issued since start.
    pub tickets_issued: usize,
    /// EVENT/CALLBACK frames pushed (first deliveries).
    pub pushed: u64,
    /// Redeliveries of unACKed frames.
    pub redelivered: u64,
    /// ACK frames received, of any kind (pings included).
    pub acks_received: u64,
    /// Distinct pushed messageIds released by a successful ACK (the `acked` lines of the ACK log).
    pub messages_acked: u64,
    /// Frames still awaiting a successful ACK (redelivery pending).
    pub awaiting_ack: usize,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "open connections: {}; connections opened: {}; tickets issued: {}; pushed: {}; \
             redelivered: {}; ACKs received: {}; messages ACKed: {}; awaiting ACK: {}",
            self.open_connections,
            self.connections_opened,
            self.tickets_issued,
            self.pushed,
            self.redelivered,
            self.acks_received,
            self.messages_acked,
            self.awaiting_ack
        )
    }
}

/// Where a push goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A random deliverable connection, like DingTalk's load balancing (docs/protocol.md §7).
    Random,
    /// This connection (a zombie swallows it; a draining one is refused).
    To(ConnId),
    /// A random deliverable connection, waiting up to this long for one to open.
    Wait(Duration),
}

/// A frame queued for delivery.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// The connection it went to.
    pub conn: ConnId,
    /// Its `messageId` (empty for raw frames).
    pub message_id: String,
    /// The exact text frame.
    pub text: String,
}

/// One ACK received.
#[derive(Debug, Clone)]
pub struct AckRecord {
    /// When.
    pub at: Instant,
    /// Connection it came on.
    pub conn: ConnId,
    /// `headers.messageId`.
    pub message_id: String,
    /// `code`.
    pub code: i64,
    /// `data` ("" when absent).
    pub data: String,
}
