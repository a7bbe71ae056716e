//! Establishing one WebSocket: TCP (options set first, optionally through a CONNECT proxy),
//! TLS, then the upgrade to `{endpoint}?ticket=...`, each stage bounded by
//! `reconnect.connect_timeout`. The URL carries the ticket, so it is never logged, and errors
//! describe the stage and the status code only.

use super::fragments::{Fragments, Watched};
use super::socket::{self, SocketReport};
use crate::config::Keepalive;
use crate::gateway::proxy::ProxySettings;
use crate::gateway::ticket::Ticket;
use crate::secret::Secret;
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The live WebSocket type.
pub type Ws = WebSocketStream<Watched<MaybeTlsStream<TcpStream>>>;

/// What establishing needs, built once per config.
#[derive(Clone)]
pub struct ConnectParams {
    /// Socket options.
    pub keepalive: Keepalive,
    /// Bound on each stage.
    pub timeout: Duration,
    /// rustls config without ALPN.
    pub tls: Arc<rustls::ClientConfig>,
    /// Proxy decision.
    pub proxies: ProxySettings,
    /// Largest frame/message accepted.
    pub max_frame_bytes: usize,
}

/// A connected WebSocket with the TCP options as the kernel reports them.
pub struct Established {
    /// The stream.
    pub ws: Ws,
    /// The socket's options, read back.
    pub socket: SocketReport,
    /// `host:port` of the gateway (no path, no query).
    pub peer: String,
    /// Whether the gateway is in the middle of a fragmented message.
    pub fragments: Fragments,
}

/// Why a WebSocket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A stage took longer than `connect_timeout`.
    #[error("{stage} timed out")]
    Timeout {
        /// `tcp`, `tls` or `websocket`.
        stage: &'static str,
    },
    /// DNS, TCP or proxy failure.
    #[error("TCP connect to {peer} failed: {error}")]
    Tcp {
        /// host:port.
        peer: String,
        /// The error.
        error: std::io::Error,
    },
    /// TLS handshake failed (certificate, protocol).
    #[error("TLS handshake with {peer} failed: {error}")]
    Tls {
        /// host:port.
        peer: String,
        /// The error.
        error: std::io::Error,
    },
    /// The server refused the upgrade (bad, used or expired ticket...).
    #[error("WebSocket upgrade rejected with HTTP {status}")]
    Rejected {
        /// The HTTP status.
        status: u16,
    },
    /// Any other handshake failure.
    #[error("WebSocket handshake failed: {0}")]
    Handshake(String),
    /// The endpoint URL is unusable.
    #[error("bad endpoint: {0}")]
    Endpoint(String),
}

impl ConnectError {
    /// Short cause for logs, journald's CAUSE and status.
    pub fn cause(&self) -> String {
        match self {
            ConnectError::Timeout { stage } => format!("{stage}_timeout"),
            ConnectError::Tcp { .. } => "tcp_error".into(),
            ConnectError::Tls { .. } => "tls_error".into(),
            ConnectError::Rejected { status } => format!("ws_rejected_{status}"),
            ConnectError::Handshake(_) => "ws_handshake_error".into(),
            ConnectError::Endpoint(_) => "bad_endpoint".into(),
        }
    }
}

/// The WebSocket limits we enforce.
pub fn ws_config(max_frame_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_frame_bytes))
        .max_frame_size(Some(max_frame_bytes))
}

/// `{endpoint}?ticket=<urlencoded ticket>`, kept secret.
pub fn ws_url(ticket: &Ticket) -> Secret {
    let mut url = ticket.endpoint.clone();
    url.query_pairs_mut()
        .append_pair("ticket", ticket.ticket.expose());
    Secret::new(url.to_string())
}

/// Opens the WebSocket for a fresh ticket.
pub async fn establish(ticket: &Ticket, p: &ConnectParams) -> Result<Established, ConnectError> {
    let url = &ticket.endpoint;
    let host = url
        .host_str()
        .ok_or_else(|| ConnectError::Endpoint("no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url
        .port_or_known_default()
        .ok_or_else(|| ConnectError::Endpoint("no port".into()))?;
    let peer = format!("{host}:{port}");
    let proxy = p.proxies.for_host(&host);

    let tcp = socket::connect(&host, port, proxy.as_ref(), &p.keepalive, p.timeout)
        .await
        .map_err(|error| {
            if error.kind() == std::io::ErrorKind::TimedOut {
                ConnectError::Timeout { stage: "tcp" }
            } else {
                ConnectError::Tcp {
                    peer: peer.clone(),
                    error,
                }
            }
        })?;
    let report = socket::report(&tcp).map_err(|error| ConnectError::Tcp {
        peer: peer.clone(),
        error,
    })?;

    let stream = if url.scheme() == "wss" {
        let name = ServerName::try_from(host.clone())
            .map_err(|e| ConnectError::Endpoint(format!("bad TLS server name: {e}")))?;
        let tls = tokio::time::timeout(
            p.timeout,
            tokio_rustls::TlsConnector::from(p.tls.clone()).connect(name, tcp),
        )
        .await
        .map_err(|_| ConnectError::Timeout { stage: "tls" })?
        .map_err(|error| ConnectError::Tls {
            peer: peer.clone(),
            error,
        })?;
        MaybeTlsStream::Rustls(tls)
    } else {
        MaybeTlsStream::Plain(tcp)
    };

    let (stream, fragments) = Watched::before_handshake(stream);
    let request = ws_url(ticket)
        .expose()
        .into_client_request()
        .map_err(|_| ConnectError::Endpoint("cannot build the upgrade request".into()))?;
    let (ws, _resp) = tokio::time::timeout(
        p.timeout,
        tokio_tungstenite::client_async_with_config(
            request,
            stream,
            Some(ws_config(p.max_frame_bytes)),
        ),
    )
    .await
    .map_err(|_| ConnectError::Timeout { stage: "websocket" })?
    .map_err(|e| match e {
        tokio_tungstenite::tungstenite::Error::Http(resp) => ConnectError::Rejected {
            status: resp.status().as_u16(),
        },
        // Describe by kind only: some variants can carry the request URL.
        other => ConnectError::Handshake(handshake_kind(&other).into()),
    })?;
    Ok(Established {
        ws,
        socket: report,
        peer,
        fragments,
    })
}

fn handshake_kind(e: &tokio_tungstenite::tungstenite::Error) -> &'static str {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::Io(_) => "I/O error during the upgrade",
        E::Tls(_) => "TLS error during the upgrade",
        E::Protocol(_) => "protocol error in the upgrade response",
        E::Url(_) => "bad URL",
        E::HttpFormat(_) => "malformed HTTP in the upgrade response",
        E::Capacity(_) => "upgrade response too large",
        E::ConnectionClosed | E::AlreadyClosed => "connection closed during the upgrade",
        _ => "unexpected error during the upgrade",
    }
}
