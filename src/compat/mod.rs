//! The local DingTalk-compatible endpoint (`compat:`): an unmodified DingTalk Stream SDK app
//! points its endpoint at it and keeps its code. One HTTP listener on a loopback address
//! serves what the SDKs talk to (docs/protocol.md §1, §9):
//!
//! - `POST /v1.0/gateway/connections/open`: the app's `clientId`/`clientSecret` must be the
//!   local ones (`compat.client_id`, the secret in `compat.client_secret_file`; the real secret
//!   never leaves the daemon); the answer is `{"endpoint":"ws://<listen>/connect","ticket":..}`
//!   with a single-use ticket ([`tickets`]), else 401 `authFailed` in DingTalk's error shape.
//! - `GET /connect?ticket=`: the WebSocket ([`conn`]): the app is a member of the consumer
//!   group `compat.group` and gets its messages as DingTalk frames ([`frames`]); its ACK acks
//!   the group's seq, and for a topic under `callbacks:` with that group the ACK's
//!   `{"response": ...}` goes to DingTalk as the callback's response.
//! - `POST /v1.0/oauth2/accessToken` with the local credentials: a real access token, obtained
//!   with the real credentials and shared by all local apps ([`token`]).
//! - any other `/v1.0/` or `/v2.0/` request: forwarded to DingTalk's API unchanged
//!   ([`forward`], through [`upstream`]).
//!
//! A reload that changes `compat:` (or its secret) stops the endpoint (every SDK connection
//! gets `disconnect`, then a close; SDKs reconnect on their own) and starts it again with the
//! new settings; the upstream (real credentials, endpoint, trust, proxy) is replaced live.
//! Nothing secret is logged: not the secrets, not tickets, not tokens.

mod conn;
mod forward;
mod frames;
mod tickets;
mod token;
mod upstream;

pub use token::RENEW_BEFORE;
pub use upstream::Upstream;

use crate::consumers::groups::GroupRegistry;
use crate::relay::callbacks::Callbacks;
use crate::secret::Secret;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tickets::Tickets;
use token::TokenCache;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type BoxBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// Request bodies the endpoint reads itself (tickets, tokens) are at most this large.
const MAX_BODY: usize = 64 * 1024;
/// How long an accept loop waits after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The endpoint's settings, from `compat:` and its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Settings {
    /// `compat.listen`.
    pub listen: SocketAddr,
    /// `compat.group`.
    pub group: String,
    /// `compat.client_id`.
    pub client_id: String,
    /// The local secret.
    pub secret: Secret,
    /// SYSTEM pings to each SDK connection (`keepalive.ping_interval`).
    pub ping_interval: Duration,
}

impl Settings {
    /// Whether `other` can be served by the running endpoint (all but the ping interval,
    /// which the next start of the endpoint takes).
    pub fn same_endpoint(&self, other: &Settings) -> bool {
        self.listen == other.listen
            && self.group == other.group
            && self.client_id == other.client_id
            && self.secret == other.secret
    }

    /// The settings of a loaded config, when it has `compat:`.
    pub fn of(l: &crate::config::Loaded) -> Option<Settings> {
        let c = l.config.compat.as_ref()?;
        Some(Settings {
            listen: c.listen,
            group: c.group.clone(),
            client_id: c.client_id.clone(),
            secret: l.compat_secret.clone()?,
            ping_interval: l.config.keepalive.ping_interval.get(),
        })
    }
}

/// What the endpoint uses of the daemon.
#[derive(Clone)]
pub struct Env {
    /// The consumer groups (SDK connections join `compat.group`).
    pub groups: GroupRegistry,
    /// The held callback ACKs (which topics answer through the compat group).
    pub callbacks: Callbacks,
    /// DingTalk's API as the daemon reaches it.
    pub upstream: watch::Receiver<Arc<Upstream>>,
    /// Cancelled when the daemon stops.
    pub shutdown: CancellationToken,
    /// The daemon's tasks.
    pub tasks: TaskTracker,
}

/// Counters since the endpoint started.
#[derive(Default)]
pub struct Stats {
    /// SDK connections now.
    pub connections: AtomicU64,
    /// SDK ACKs that acked a message.
    pub acked: AtomicU64,
    /// SDK ACKs that said LATER or failed.
    pub later: AtomicU64,
}

/// Everything one endpoint's tasks share.
pub(crate) struct Shared {
    group: String,
    client_id: String,
    secret: Secret,
    groups: GroupRegistry,
    callbacks: Callbacks,
    tickets: Tickets,
    ping_interval: Duration,
    token: TokenCache,
    upstream: watch::Receiver<Arc<Upstream>>,
    /// The endpoint's own stop (a child of the daemon's).
    cancel: CancellationToken,
    /// Its connections.
    tasks: TaskTracker,
    /// The bound address, once bound (the `endpoint` answered with tickets).
    local: OnceLock<SocketAddr>,
    stats: Arc<Stats>,
}

/// A running endpoint.
pub struct Server {
    /// What it runs with (a reload compares against it).
    pub settings: Settings,
    /// Its counters.
    pub stats: Arc<Stats>,
    cancel: CancellationToken,
    done: JoinHandle<()>,
}

impl Server {
    /// Binds `settings.listen` and starts serving.
    pub async fn start(settings: Settings, env: Env) -> std::io::Result<Server> {
        let listener = TcpListener::bind(settings.listen).await?;
        let shared = Shared::new(&settings, &env);
        let local = listener.local_addr()?;
        let _ = shared.local.set(local);
        info!(listen = %local, group = %settings.group, "local DingTalk-compatible endpoint listening");
        let (cancel, stats) = (shared.cancel.clone(), shared.stats.clone());
        let done = env.tasks.spawn(accept(shared, listener));
        Ok(Server {
            settings,
            stats,
            cancel,
            done,
        })
    }

    /// A reload that changed `compat:`: stops this endpoint (every SDK connection gets
    /// `disconnect`, then a close) and serves `settings` once this one has let go of its
    /// address.
    pub fn restart(self, settings: Settings, env: Env) -> Server {
        self.cancel.cancel();
        Server::launch(settings, env, Some(self.done))
    }

    /// Serves `settings` from a task: binds once `after` (a stopped endpoint) has ended. A
    /// failure to bind is logged: the endpoint is off until the next reload or restart.
    pub fn launch(settings: Settings, env: Env, after: Option<JoinHandle<()>>) -> Server {
        let shared = Shared::new(&settings, &env);
        let (cancel, stats) = (shared.cancel.clone(), shared.stats.clone());
        let listen = settings.listen;
        let done = env.tasks.spawn(async move {
            if let Some(old) = after {
                let _ = old.await;
            }
            match TcpListener::bind(listen).await {
                Ok(listener) => {
                    let local = listener.local_addr().unwrap_or(listen);
                    let _ = shared.local.set(local);
                    info!(listen = %local, group = %shared.group, "local DingTalk-compatible endpoint listening (reload)");
                    accept(shared, listener).await;
                }
                Err(e) => {
                    warn!(listen = %listen, error = %e, "compat.listen cannot be bound; the local endpoint is off until the next reload or restart");
                }
            }
        });
        Server {
            settings,
            stats,
            cancel,
            done,
        }
    }

    /// A reload that removed `compat:`: every SDK connection gets `disconnect`, then a close.
    pub fn stop(self) {
        self.cancel.cancel();
    }
}

impl Shared {
    fn new(settings: &Settings, env: &Env) -> Arc<Shared> {
        Arc::new(Shared {
            group: settings.group.clone(),
            client_id: settings.client_id.clone(),
            secret: settings.secret.clone(),
            groups: env.groups.clone(),
            callbacks: env.callbacks.clone(),
            tickets: Tickets::default(),
            ping_interval: settings.ping_interval,
            token: TokenCache::new(env.upstream.clone()),
            upstream: env.upstream.clone(),
            cancel: env.shutdown.child_token(),
            tasks: TaskTracker::new(),
            local: OnceLock::new(),
            stats: Arc::new(Stats::default()),
        })
    }
}

/// Accepts connections until the endpoint stops, then waits for its connections (each SDK
/// connection says goodbye first).
async fn accept(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = shared.cancel.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, _peer)) => {
                let _ = tcp.set_nodelay(true);
                shared.tasks.spawn(serve_http(shared.clone(), tcp));
            }
            Err(e) => {
                warn!(error = %e, "compat endpoint: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
    drop(listener);
    shared.tasks.close();
    shared.tasks.wait().await;
    debug!("local DingTalk-compatible endpoint stopped");
}

async fn serve_http(shared: Arc<Shared>, tcp: TcpStream) {
    let cancel = shared.cancel.clone();
    let svc = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(route(shared, req).await) }
    });
    let conn = http1::Builder::new()
        .serve_connection(TokioIo::new(tcp), svc)
        .with_upgrades();
    tokio::select! {
        r = conn => if let Err(e) = r { debug!(error = %e, "compat endpoint: HTTP connection error") },
        _ = cancel.cancelled() => {}
    }
}

async fn route(shared: Arc<Shared>, req: Request<Incoming>) -> Response<BoxBody> {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (&Method::POST, "/v1.0/gateway/connections/open") => open(&shared, req).await,
        (_, "/connect") => handshake(&shared, req),
        (&Method::POST, "/v1.0/oauth2/accessToken") => access_token(&shared, req).await,
        (_, p) if forward::forwards(p) => {
            let up = shared.upstream.borrow().clone();
            forward::forward(&up, req).await
        }
        _ => error_response(
            StatusCode::NOT_FOUND,
            "notFound",
            "the local endpoint serves /v1.0/gateway/connections/open, /connect, /v1.0/ and /v2.0/",
        ),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OpenBody {
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    client_secret: String,
}

/// `connections/open` with the local credentials: a ticket and the WebSocket endpoint.
async fn open(shared: &Shared, req: Request<Incoming>) -> Response<BoxBody> {
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
async fn access_token(shared: &Shared, req: Request<Incoming>) -> Response<BoxBody> {
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
fn handshake(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<BoxBody> {
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
pub(crate) fn error_response(status: StatusCode, code: &str, message: &str) -> Response<BoxBody> {
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

/// A random id in UUID form.
pub(crate) fn new_id() -> String {
    let b: [u8; 16] = rand::random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Epoch milliseconds.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
