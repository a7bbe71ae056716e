//! The OpenAPI reverse proxy: any other `/v1.0/` or `/v2.0/` request of a local app goes to
//! DingTalk's API origin (the origin of `dingtalk.open_url`) unchanged (method, path, query,
//! headers such as `x-acs-dingtalk-access-token`, body), and the answer comes back unchanged,
//! both bodies streamed, never buffered. Only hop-by-hop headers are dropped, as any proxy
//! does. Connecting is bounded by `reconnect.connect_timeout`; nothing else is, since an
//! upload or a download may take long. Headers and bodies are never logged.

use super::token::describe;
use super::upstream::Upstream;
use super::{BoxBody, error_response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName};
use hyper::{Request, Response, StatusCode};
use tracing::{debug, warn};

/// Headers that belong to one connection, not to the request (RFC 9110 §7.6.1), and `Host`.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    header::HOST,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
];

/// Whether the endpoint forwards requests for `path`.
pub fn forwards(path: &str) -> bool {
    path.starts_with("/v1.0/") || path.starts_with("/v2.0/")
}

/// Copies `from` without hop-by-hop headers (including those `Connection` names).
fn end_to_end(from: &HeaderMap) -> HeaderMap {
    let named: Vec<String> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::with_capacity(from.len());
    for (k, v) in from {
        if HOP_BY_HOP.contains(k) || named.iter().any(|n| n == k.as_str()) {
            continue;
        }
        out.append(k.clone(), v.clone());
    }
    out
}

/// Forwards one request and streams the answer back.
pub async fn forward(up: &Upstream, req: Request<Incoming>) -> Response<BoxBody> {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let url = match up.url(&path) {
        Ok(u) => u,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, "invalidParameter", &e),
    };
    let method = req.method().clone();
    let headers = end_to_end(req.headers());
    let body = reqwest::Body::wrap(req.into_body());
    let sent = up
        .http
        .request(method.clone(), url)
        .headers(headers)
        .body(body)
        .send()
        .await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) => {
            let why = describe(&e);
            warn!(%method, path = %path_only(&path), error = %why, "cannot forward an OpenAPI request to DingTalk");
            let (status, code) = if e.is_timeout() || e.is_connect() {
                (StatusCode::GATEWAY_TIMEOUT, "upstreamUnavailable")
            } else {
                (StatusCode::BAD_GATEWAY, "upstreamError")
            };
            return error_response(
                status,
                code,
                &format!("DingTalk's API cannot be reached: {why}"),
            );
        }
    };
    debug!(%method, path = %path_only(&path), status = resp.status().as_u16(), "OpenAPI request forwarded");
    let status = resp.status();
    let headers = end_to_end(resp.headers());
    let mut out = Response::new(
        reqwest::Body::from(resp)
            .map_err(|e| Box::new(e) as super::BoxError)
            .boxed(),
    );
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

/// The path without the query (queries may carry credentials, e.g. the legacy `gettoken`).
fn path_only(path_and_query: &str) -> &str {
    path_and_query.split('?').next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:9470"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("x-acs-dingtalk-access-token", HeaderValue::from_static("t"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let out = end_to_end(&h);
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(out.contains_key("x-acs-dingtalk-access-token"));
        assert!(out.contains_key(header::CONTENT_TYPE));
        assert!(forwards("/v1.0/robot/x") && forwards("/v2.0/x") && !forwards("/connect"));
        assert_eq!(path_only("/gettoken?appsecret=s"), "/gettoken");
    }
}
