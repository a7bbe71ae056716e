//! `POST connections/open` (docs/protocol.md §1): trade the client id and secret for a one-time
//! ticket and the WebSocket endpoint. One request per connection attempt; the ticket is never
//! stored or reused. [`TicketError`] tells the supervisor whether to give up, back off, or
//! honour a `Retry-After`.

use super::proxy::ProxySettings;
use crate::config::{Config, Subscription};
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// What we call ourselves in `ua`, in DingTalk's `name-sdk-lang/version` form.
pub const USER_AGENT: &str = concat!("dingtalk-streamd-rust/v", env!("CARGO_PKG_VERSION"));
/// An error body larger than this is not read further.
const MAX_BODY: usize = 64 * 1024;

/// A fresh ticket: valid for one connection, about 90 s.
pub struct Ticket {
    /// `wss://.../connect`, as returned.
    pub endpoint: reqwest::Url,
    /// The ticket; also the frames' `connectionId`.
    pub ticket: Secret,
}

/// Why no ticket was obtained.
#[derive(Debug, thiserror::Error)]
pub enum TicketError {
    /// 401: wrong id or secret.
    #[error(
        "DingTalk rejected the credentials (HTTP 401 {code}: {message}). Check dingtalk.client_id and \
         the client secret: copy both again from the developer console (no spaces or line breaks), \
         and check that the app is published"
    )]
    AuthFailed {
        /// DingTalk's error code, e.g. `authFailed`.
        code: String,
        /// DingTalk's message.
        message: String,
    },
    /// 400: usually an app that is not published or not in Stream mode (docs/protocol.md §1.2).
    #[error(
        "DingTalk refused to open a connection (HTTP 400 {code}: {message}). Usually the app is not \
         published, its robot capability is off, its message receiving mode is not \"Stream\", or its \
         visibility scope is empty; also check dingtalk.client_id and the secret"
    )]
    Rejected {
        /// e.g. `systemError`.
        code: String,
        /// DingTalk's message.
        message: String,
    },
    /// 429, 408 or 5xx: try again later.
    #[error("ticket endpoint answered HTTP {status}{}", retry_after.map(|d| format!(" (Retry-After {}s)", d.as_secs())).unwrap_or_default())]
    Unavailable {
        /// The status code.
        status: u16,
        /// `Retry-After`, when given in seconds.
        retry_after: Option<Duration>,
    },
    /// Another status: probably a wrong `open_url` or a broken proxy.
    #[error("ticket endpoint answered HTTP {status}: {snippet}")]
    Unexpected {
        /// The status code.
        status: u16,
        /// The start of the body.
        snippet: String,
    },
    /// The HTTP proxy asked for credentials (407): the request never reached DingTalk.
    #[error(
        "the HTTP proxy refused the ticket request with 407 (proxy authentication required): \
         set the proxy's user and password in `proxy` (http://USER:PASSWORD@HOST:PORT) or \
         HTTPS_PROXY, or check them"
    )]
    ProxyAuth,
    /// `reconnect.connect_timeout` passed.
    #[error("ticket request timed out")]
    Timeout,
    /// DNS, TCP, TLS or proxy failure.
    #[error("ticket request failed: {0}")]
    Network(String),
    /// 200 but no usable endpoint/ticket.
    #[error("ticket endpoint sent an unusable answer: {0}")]
    BadResponse(String),
}

impl TicketError {
    /// Credentials or app setup rejected: fatal before the first successful connection.
    pub fn is_credentials(&self) -> bool {
        matches!(
            self,
            TicketError::AuthFailed { .. } | TicketError::Rejected { .. }
        )
    }

    /// The server's requested wait.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            TicketError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A short machine-readable cause for logs, journald's CAUSE field and status.
    pub fn cause(&self) -> String {
        match self {
            TicketError::AuthFailed { .. } => "ticket_401".into(),
            TicketError::Rejected { .. } => "ticket_400".into(),
            TicketError::Unavailable { status, .. } | TicketError::Unexpected { status, .. } => {
                format!("ticket_{status}")
            }
            TicketError::ProxyAuth => "proxy_407".into(),
            TicketError::Timeout => "ticket_timeout".into(),
            TicketError::Network(_) => "ticket_network".into(),
            TicketError::BadResponse(_) => "ticket_bad_response".into(),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OpenRequest<'a> {
    client_id: &'a str,
    client_secret: &'a str,
    subscriptions: &'a [Subscription],
    ua: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    local_ip: Option<String>,
}

#[derive(Deserialize)]
struct OpenResponse {
    #[serde(default)]
    endpoint: String,
    #[serde(default)]
    ticket: String,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// A reusable client for `connections/open`.
#[derive(Clone)]
pub struct TicketClient {
    http: reqwest::Client,
    open_url: reqwest::Url,
    client_id: String,
    secret: Secret,
    subscriptions: Vec<Subscription>,
    timeout: Duration,
}

impl TicketClient {
    /// Builds the HTTP client: rustls with our trust store, the proxy decision, and
    /// `connect_timeout` on connecting and on the whole request.
    pub fn new(
        config: &Config,
        secret: Secret,
        tls: Arc<rustls::ClientConfig>,
        proxies: &ProxySettings,
    ) -> Result<TicketClient, TicketError> {
        let open_url = reqwest::Url::parse(&config.dingtalk.open_url)
            .map_err(|e| TicketError::BadResponse(format!("dingtalk.open_url: {e}")))?;
        let timeout = config.reconnect.connect_timeout.get();
        let http = super::http::client_builder(&tls, proxies)
            .connect_timeout(timeout)
            .timeout(timeout)
            .build()
            .map_err(|e| TicketError::Network(describe(&e)))?;
        Ok(TicketClient {
            http,
            open_url,
            client_id: config.dingtalk.client_id.clone(),
            secret,
            subscriptions: config.dingtalk.subscriptions.clone(),
            timeout,
        })
    }

    /// Requests a fresh ticket.
    pub async fn fetch(&self) -> Result<Ticket, TicketError> {
        let local_ip = tokio::time::timeout(self.timeout, local_ip_towards(&self.open_url))
            .await
            .ok()
            .flatten()
            .map(|ip| ip.to_string());
        let body = OpenRequest {
            client_id: &self.client_id,
            client_secret: self.secret.expose(),
            subscriptions: &self.subscriptions,
            ua: USER_AGENT,
            local_ip,
        };
        let resp = self
            .http
            .post(self.open_url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .json(&body)
            .send()
            .await
            .map_err(classify)?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = read_limited(resp).await?;
        parse_answer(status, retry_after, &bytes)
    }

    /// The bound on each stage of a connection attempt.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// Reads what `connections/open` answered: the status, its `Retry-After` (whole seconds) and
/// the body (at most [`MAX_BODY`] bytes). A ticket, or why there is none; never echoes a value
/// from the body that could be a ticket.
pub fn parse_answer(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
) -> Result<Ticket, TicketError> {
    match status {
        200 => {
            let r: OpenResponse = serde_json::from_slice(body)
                .map_err(|e| TicketError::BadResponse(json_problem(&e)))?;
            if r.endpoint.is_empty() || r.ticket.is_empty() {
                return Err(TicketError::BadResponse("empty endpoint or ticket".into()));
            }
            let endpoint = reqwest::Url::parse(&r.endpoint)
                .map_err(|e| TicketError::BadResponse(format!("endpoint is not a URL: {e}")))?;
            if !matches!(endpoint.scheme(), "wss" | "ws") {
                return Err(TicketError::BadResponse("endpoint is not ws(s)://".into()));
            }
            if endpoint.scheme() == "ws" && !crate::config::is_loopback(&endpoint) {
                return Err(TicketError::BadResponse(
                    "endpoint is plain ws:// to a non-loopback host; refusing".into(),
                ));
            }
            Ok(Ticket {
                endpoint,
                ticket: Secret::new(r.ticket),
            })
        }
        401 | 400 => {
            let e: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
            let code = if e.code.is_empty() {
                "-".into()
            } else {
                e.code
            };
            if status == 401 {
                Err(TicketError::AuthFailed {
                    code,
                    message: e.message,
                })
            } else {
                Err(TicketError::Rejected {
                    code,
                    message: e.message,
                })
            }
        }
        407 => Err(TicketError::ProxyAuth),
        408 | 429 | 500..=599 => Err(TicketError::Unavailable {
            status,
            retry_after,
        }),
        _ => Err(TicketError::Unexpected {
            status,
            snippet: String::from_utf8_lossy(&body[..body.len().min(200)])
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect(),
        }),
    }
}

/// What is wrong with a 200 answer that is not the expected JSON, by kind and position only:
/// serde's own text quotes values, and a value there may be the ticket.
fn json_problem(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Syntax => "not JSON",
        Category::Eof => "JSON cut short",
        Category::Data => "JSON without a string endpoint and ticket",
        Category::Io => "unreadable",
    };
    format!("{what} (line {}, column {})", e.line(), e.column())
}

async fn read_limited(mut resp: reqwest::Response) -> Result<Vec<u8>, TicketError> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(classify)? {
        let room = MAX_BODY.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= MAX_BODY {
            break;
        }
    }
    Ok(out)
}

fn classify(e: reqwest::Error) -> TicketError {
    if e.is_timeout() {
        return TicketError::Timeout;
    }
    let text = describe(&e);
    // The CONNECT tunnel's 407 surfaces as an error of the connector, not as a response.
    if text.contains("proxy authorization required") {
        TicketError::ProxyAuth
    } else {
        TicketError::Network(text)
    }
}

/// The error chain without the URL (it could name a proxy with credentials).
fn describe(e: &reqwest::Error) -> String {
    let mut parts = super::http::causes(e);
    if parts.is_empty() {
        parts.push(
            if e.is_connect() {
                "connect error"
            } else {
                "HTTP error"
            }
            .to_owned(),
        );
    }
    parts.join(": ")
}

/// The local address that routes towards the ticket host (`localIp`, for DingTalk's
/// diagnostics). A connected UDP socket sends nothing; failures just omit the field.
async fn local_ip_towards(url: &reqwest::Url) -> Option<IpAddr> {
    let host = url
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port_or_known_default()?;
    let addr = tokio::net::lookup_host((host.as_str(), port))
        .await
        .ok()?
        .next()?;
    let bind = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let sock = tokio::net::UdpSocket::bind(bind).await.ok()?;
    sock.connect(addr).await.ok()?;
    sock.local_addr().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICKET: &str = "tkt-5e3c1a-secret";

    /// The error (a `Ticket` has no `Debug`, so no `unwrap_err`).
    fn err(r: Result<Ticket, TicketError>) -> TicketError {
        match r {
            Ok(t) => panic!("accepted {}", t.endpoint),
            Err(e) => e,
        }
    }

    fn ok(endpoint: &str) -> Result<Ticket, TicketError> {
        let body = serde_json::json!({"endpoint": endpoint, "ticket": TICKET}).to_string();
        parse_answer(200, None, body.as_bytes())
    }

    #[test]
    fn an_endpoint_must_be_wss_or_loopback_ws() {
        let t = ok("wss://wss-open-connection.dingtalk.com:443/connect").unwrap();
        assert_eq!(t.ticket.expose(), TICKET);
        ok("ws://127.0.0.1:9999/connect").unwrap();
        ok("ws://[::1]:9999/connect").unwrap();
        for bad in [
            "ws://gateway.example/connect",
            "https://gateway.example/connect",
            "not a url",
            "",
        ] {
            let e = err(ok(bad));
            assert_eq!(e.cause(), "ticket_bad_response", "{bad}: {e}");
            assert!(!e.to_string().contains(TICKET), "{e}");
        }
    }

    #[test]
    fn an_unusable_answer_is_described_without_quoting_it() {
        for body in [
            "<html>captive portal</html>".to_owned(),
            format!("{{\"endpoint\": 5, \"ticket\": \"{TICKET}\"}}"),
            format!("{{\"endpoint\": \"wss://x\", \"ticket\": \"{TICKET}\""),
            format!("{{\"ticket\": \"{TICKET}\"}}"),
        ] {
            let e = err(parse_answer(200, None, body.as_bytes()));
            let text = e.to_string();
            assert!(
                text.starts_with("ticket endpoint sent an unusable answer: "),
                "{text}"
            );
            assert!(
                !text.contains(TICKET) && !text.contains("captive"),
                "{text}"
            );
        }
    }

    #[test]
    fn statuses_are_classified_and_a_proxy_407_is_blamed_on_the_proxy() {
        let e = err(parse_answer(407, None, b""));
        assert_eq!(e.cause(), "proxy_407");
        assert!(e.to_string().starts_with("the HTTP proxy refused"), "{e}");
        assert!(!e.to_string().contains("ticket endpoint"), "{e}");
        let e = err(parse_answer(
            401,
            None,
            br#"{"code":"authFailed","message":"m"}"#,
        ));
        assert!(e.is_credentials(), "{e}");
        let e = err(parse_answer(503, Some(Duration::from_secs(7)), b""));
        assert_eq!(e.cause(), "ticket_503");
        let e = err(parse_answer(418, None, b"\x1b[31mred\x00"));
        assert!(!e.to_string().contains('\x1b'), "{e}");
    }
}
