//! The HTTP side: accept loop, optional TLS, routing, and the WebSocket handshake at `/connect`.
//!
//! One port serves `POST /v1.0/gateway/connections/open` (see `ticket.rs`),
//! `GET /connect?ticket=...`, two OpenAPI endpoints (see `openapi.rs`) and bot messages'
//! reply URL (see `webhook.rs`). Tickets are checked and handshake faults applied *before*
//! upgrading, as DingTalk does; bad input is answered and logged, never a panic.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tracing::{debug, info, warn};

use super::events::GatewayEvent;
use super::faults;
use super::state::GatewayCore;
use super::{conn, openapi, ticket, webhook};

/// Path of the ticket endpoint.
pub(crate) const OPEN_PATH: &str = "/v1.0/gateway/connections/open";
/// Path of the WebSocket endpoint (JAVA ignores the returned path and always uses it).
pub(crate) const CONNECT_PATH: &str = "/connect";
/// A TLS handshake slower than this is abandoned.
const TLS_TIMEOUT: Duration = Duration::from_secs(10);

/// A response body: whole (almost always), or streamed (an answer that never ends).
pub(crate) type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A whole response body.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    use http_body_util::BodyExt;
    Full::new(bytes.into()).boxed()
}

/// Accepts connections until cancelled.
pub(crate) async fn serve(
    shared: Arc<GatewayCore>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let accepted = tokio::select! {
            () = shared.cancel.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, peer)) => {
                debug!(%peer, "TCP accepted");
                shared
                    .tracker
                    .spawn(handle_tcp(shared.clone(), tcp, tls.clone()));
            }
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle_tcp(
    shared: Arc<GatewayCore>,
    tcp: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let _ = tcp.set_nodelay(true);
    let sock = socket2::SockRef::from(&tcp).try_clone().ok().map(Arc::new);
    match tls {
        None => serve_http(shared, tcp, sock).await,
        Some(acceptor) => match tokio::time::timeout(TLS_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => serve_http(shared, stream, sock).await,
            Ok(Err(e)) => debug!(error = %e, "TLS handshake failed"),
            Err(_) => debug!("TLS handshake timed out"),
        },
    }
}

async fn serve_http<I>(shared: Arc<GatewayCore>, io: I, sock: Option<Arc<socket2::Socket>>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let cancel = shared.cancel.clone();
    let svc = service_fn(move |req| {
        let shared = shared.clone();
        let sock = sock.clone();
        async move { Ok::<_, Infallible>(route(shared, req, sock).await) }
    });
    let conn = http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::select! {
        r = conn => if let Err(e) = r { debug!(error = %e, "HTTP connection error") },
        () = cancel.cancelled() => {}
    }
}

async fn route(
    shared: Arc<GatewayCore>,
    req: Request<Incoming>,
    sock: Option<Arc<socket2::Socket>>,
) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, OPEN_PATH) => ticket::open(&shared, req).await,
        (_, OPEN_PATH) => json_response(StatusCode::METHOD_NOT_ALLOWED, &faults::error_body(405)),
        (_, CONNECT_PATH) => handshake(&shared, req, sock).await,
        (&Method::POST, openapi::TOKEN_PATH) => openapi::access_token(&shared, req).await,
        (&Method::POST, openapi::BATCH_SEND_PATH) => openapi::batch_send(&shared, req).await,
        (&Method::POST, webhook::SEND_BY_SESSION_PATH) => {
            webhook::send_by_session(&shared, req).await
        }
        _ => json_response(StatusCode::NOT_FOUND, &faults::error_body(404)),
    }
}

/// An upgrade request left unanswered until the gateway shuts down.
async fn hang_until_shutdown(shared: &GatewayCore) -> Response<Body> {
    info!("WebSocket upgrade request left unanswered on purpose");
    shared.emit(GatewayEvent::HandshakeHung);
    shared.cancel.cancelled().await;
    json_response(StatusCode::SERVICE_UNAVAILABLE, &faults::error_body(503))
}

/// Validates the upgrade and the ticket, answers 101 and spawns the connection task.
async fn handshake(
    shared: &Arc<GatewayCore>,
    req: Request<Incoming>,
    sock: Option<Arc<socket2::Socket>>,
) -> Response<Body> {
    let fault = faults::take_one(&mut shared.state().handshake_fault);
    match fault.map(|f| f.kind) {
        Some(faults::HandshakeFaultKind::Status(status)) => {
            return reject(shared, status, "injected handshake fault");
        }
        Some(faults::HandshakeFaultKind::Hang) => return hang_until_shutdown(shared).await,
        None => {}
    }
    let key = match upgrade_key(&req) {
        Ok(key) => key,
        Err(why) => return reject(shared, 400, why),
    };
    let Some(ticket) = query_param(req.uri().query().unwrap_or(""), "ticket") else {
        return reject(shared, 401, "no ticket");
    };
    {
        let mut st = shared.state();
        let ttl = shared.config.ticket_ttl;
        match st.tickets.get_mut(&ticket) {
            None => {
                drop(st);
                return reject(shared, 401, "unknown ticket");
            }
            Some(t) if t.used => {
                drop(st);
                return reject(shared, 403, "ticket already used");
            }
            Some(t) if t.issued.elapsed() > ttl => {
                drop(st);
                return reject(shared, 403, "ticket expired");
            }
            Some(t) => t.used = true,
        }
    }
    let conn = shared.next_conn_id();
    let accept = derive_accept_key(key.as_bytes());
    let task_shared = shared.clone();
    shared.tracker.spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let io = TokioIo::new(upgraded);
                let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
                conn::run(task_shared, conn, ticket, ws, sock).await;
            }
            Err(e) => debug!(%conn, error = %e, "upgrade failed"),
        }
    });
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

/// The `Sec-WebSocket-Key` of a well-formed upgrade request.
fn upgrade_key(req: &Request<Incoming>) -> Result<String, &'static str> {
    if req.method() != Method::GET {
        return Err("WebSocket upgrade must be GET");
    }
    let h = req.headers();
    let has = |name: header::HeaderName, want: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|p| p.trim().eq_ignore_ascii_case(want)))
        })
    };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return Err("not a WebSocket upgrade");
    }
    if !has(header::SEC_WEBSOCKET_VERSION, "13") {
        return Err("unsupported WebSocket version");
    }
    h.get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or("missing Sec-WebSocket-Key")
}

fn reject(shared: &GatewayCore, status: u16, reason: &str) -> Response<Body> {
    info!(status, reason, "WebSocket handshake rejected");
    shared.emit(GatewayEvent::HandshakeRejected {
        status,
        reason: reason.into(),
    });
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    json_response(code, &faults::error_body(status))
}

/// A JSON response with DingTalk's content type.
pub(crate) fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=utf-8"),
    );
    resp
}

/// One query parameter, `+` and `%XX` decoded (PY URL-encodes the ticket).
pub(crate) fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_param_decodes() {
        assert_eq!(
            query_param("a=1&ticket=x%2Dy+z", "ticket").as_deref(),
            Some("x-y z")
        );
        assert_eq!(
            query_param("ticket=abc%", "ticket").as_deref(),
            Some("abc%")
        );
        assert_eq!(query_param("ticket=%zz", "ticket").as_deref(), Some("%zz"));
        assert_eq!(query_param("nothing", "ticket"), None);
    }
}
