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
mod http;
mod tickets;
mod token;
mod upstream;

pub use http::error_response;
pub use token::RENEW_BEFORE;
pub use upstream::Upstream;

use crate::consumers::groups::GroupRegistry;
use crate::relay::callbacks::Callbacks;
use crate::secret::Secret;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tickets::Tickets;
use token::TokenCache;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type BoxBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

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
    /// The endpoint of a loaded config, bound and serving; `None` without `compat:`.
    pub async fn of_config(l: &crate::config::Loaded, env: Env) -> std::io::Result<Option<Server>> {
        match Settings::of(l) {
            Some(s) => Server::start(s, env).await.map(Some),
            None => Ok(None),
        }
    }

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
        (&Method::POST, "/v1.0/gateway/connections/open") => http::open(&shared, req).await,
        (_, "/connect") => http::handshake(&shared, req),
        (&Method::POST, "/v1.0/oauth2/accessToken") => http::access_token(&shared, req).await,
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

/// What a reload does to the endpoint: keeps it when `compat:` and its secret are unchanged,
/// restarts it when they changed (SDK connections get `disconnect` and reconnect), starts or
/// stops it when `compat:` was added or removed.
pub fn reload(current: Option<Server>, next: Option<Settings>, env: &Env) -> Option<Server> {
    match (current, next) {
        (None, None) => None,
        (Some(old), None) => {
            info!("compat removed from the config: the local SDK endpoint stops");
            old.stop();
            None
        }
        (None, Some(s)) => {
            info!("compat added to the config: the local SDK endpoint starts");
            Some(Server::launch(s, env.clone(), None))
        }
        (Some(old), Some(s)) if old.settings.same_endpoint(&s) => Some(old),
        (Some(old), Some(s)) => {
            info!(
                "compat changed: the local SDK endpoint restarts; SDK apps get disconnect and reconnect"
            );
            Some(old.restart(s, env.clone()))
        }
    }
}
