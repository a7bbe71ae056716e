//! The endpoint's own HTTP answers: `connections/open` (tickets for the local credentials),
//! the WebSocket upgrade at `/connect`, `oauth2/accessToken` (the shared real token), and
//! DingTalk's error shape for everything refused.

use super::{BoxBody, Shared, conn, new_id};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tracing::{debug, info, warn};

/// Request bodies the endpoint reads itself (tickets, tokens) are at most this large.
const MAX_BODY: usize = 64 * 1024;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OpenBody {
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    client_secret: String,
}

/// `connections/open` with the local credentials: a ticket and the WebSocket endpoint.
pub(super) async fn open(shared: &Shared, req: Request<Incoming>) -> Response<BoxBody> {
    let body: OpenBody = match read_json(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if body.client_id != shared.client_id || !same(&body.client_secret, shared.secret.expose()) {
        info!("compat endpoint: connections/open with wrong local credentials (401)");
        return auth_failed();
    }
    let ticket = shared.tickets.issue(Instant::now());
    let endpoint = match shared.local.get() {
        Some(a) => format!("ws://{a}/connect"),
        None => return error_response(StatusCode::SERVICE_UNAVAILABLE, "systemError", "not ready"),
    };
    debug!("compat endpoint: ticket issued");
    json_response(
        StatusCode::OK,
        &serde_json::json!({"endpoint": endpoint, "ticket": ticket}),
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenBody {
    #[serde(default)]
    app_key: String,
    #[serde(default)]
    app_secret: String,
}

/// `oauth2/accessToken` with the local credentials: the shared real token.
pub(super) async fn access_token(shared: &Shared, req: Request<Incoming>) -> Response<BoxBody> {
    let body: TokenBody = match read_json(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if body.app_key != shared.client_id || !same(&body.app_secret, shared.secret.expose()) {
        info!("compat endpoint: accessToken with wrong local credentials (401)");
        return auth_failed();
    }
    match shared.token.get().await {
        Ok((token, left)) => json_response(
            StatusCode::OK,
            &serde_json::json!({"accessToken": token.expose(), "expireIn": left.as_secs()}),
        ),
        Err(e) => {
            warn!(error = %e, "no DingTalk access token for a local app");
            error_response(StatusCode::BAD_GATEWAY, "upstreamError", &e.to_string())
        }
    }
}

/// The WebSocket upgrade. A ticket that is unknown, used or expired still gets its upgrade,
/// then `disconnect` and a close (see [`conn::serve`]); only a request that is no WebSocket
/// upgrade at all is refused.
pub(super) fn handshake(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<BoxBody> {
    let key = match upgrade_key(&req) {
        Ok(k) => k,
        Err(why) => return error_response(StatusCode::BAD_REQUEST, "invalidParameter", why),
    };
    let ticket = query_param(req.uri().query().unwrap_or(""), "ticket")
        .filter(|t| shared.tickets.take(t, Instant::now()));
    let task_shared = shared.clone();
    shared.tasks.spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                conn::serve(task_shared, ws, ticket).await;
            }
            Err(e) => debug!(error = %e, "compat endpoint: upgrade failed"),
        }
    });
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

/// The `Sec-WebSocket-Key` of a well-formed upgrade request.
fn upgrade_key(req: &Request<Incoming>) -> Result<String, &'static str> {
    let h = req.headers();
    let has = |name: header::HeaderName, want: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|p| p.trim().eq_ignore_ascii_case(want)))
        })
    };
    if req.method() != Method::GET
        || !has(header::UPGRADE, "websocket")
        || !has(header::CONNECTION, "upgrade")
        || !has(header::SEC_WEBSOCKET_VERSION, "13")
    {
        return Err("not a WebSocket upgrade (GET, Upgrade: websocket, version 13)");
    }
    h.get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or("missing Sec-WebSocket-Key")
}

/// One query parameter, `+` and `%XX` decoded (PY `quote_plus`es the ticket).
fn query_param(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Reads a small JSON body, or the error answer for it.
async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
) -> Result<T, Response<BoxBody>> {
    let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return Err(error_response(
                StatusCode::BAD_REQUEST,
                "invalidParameter",
                "unreadable or too large body",
            ));
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        error_response(
            StatusCode::BAD_REQUEST,
            "invalidParameter",
            &format!("expected a JSON object: {e}"),
        )
    })
}

/// Equal strings, compared in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

fn auth_failed() -> Response<BoxBody> {
    error_response(
        StatusCode::UNAUTHORIZED,
        "authFailed",
        "鉴权失败: wrong client id or secret for the local endpoint (compat.client_id, compat.client_secret_file)",
    )
}

/// DingTalk's error shape: `{"requestid":"...","code":"...","message":"..."}`.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response<BoxBody> {
    let body =
        serde_json::json!({"requestid": new_id().to_uppercase(), "code": code, "message": message});
    json_response(status, &body)
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<BoxBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json;charset=utf-8"),
    );
    resp
}

fn empty() -> BoxBody {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
        assert_eq!(
            query_param("a=1&ticket=x%2Dy+z", "ticket").as_deref(),
            Some("x-y z")
        );
        assert_eq!(query_param("a=1", "ticket"), None);
        assert_eq!(new_id().len(), 36);
    }
}
