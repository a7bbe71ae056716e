//! Every listening socket the daemon serves, and how it gets them: the consumer socket and the
//! control socket (from systemd socket activation, else bound here: [`activation`]) and the
//! optional metrics endpoint. Each accept loop hands a connection to its own task; what a
//! connection says is handled by [`crate::consumers`] and [`crate::control`].

pub mod activation;
pub mod limiter;

use crate::config::Config;
use crate::consumers::peer::{self, Peer, PeerEnv};
use crate::consumers::protocol::LineError;
use crate::status::Sources;
use activation::{Inherited, ListenError, Matched};
use limiter::Limiter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// How long an accept loop waits after a failed accept (EMFILE and friends) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long an answer may take to be written before the client is dropped.
const ANSWER_WRITE: Duration = Duration::from_secs(3);

/// The bounds of a request listener (`limits.max_listener_connections`,
/// `limits.request_timeout`).
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Connections held at once.
    pub max_connections: usize,
    /// A client must send its whole request within this.
    pub request_timeout: Duration,
}

/// The two Unix sockets, and the paths the daemon bound itself (removed when it stops;
/// sockets passed by systemd belong to systemd and are never removed).
pub struct UnixSockets {
    /// The consumer socket.
    pub stream: UnixListener,
    /// The control socket.
    pub control: UnixListener,
    /// Paths to remove on stop.
    pub bound: Vec<PathBuf>,
}

impl UnixSockets {
    /// Takes the sockets systemd passed (`LISTEN_FDS`), else binds `socket.path` and
    /// `control.path` with `socket.mode`.
    pub fn open(c: &Config) -> Result<UnixSockets, ListenError> {
        let mut inherited = Inherited::from_env()?;
        let mut bound = Vec::new();
        let mode = c.socket.mode.0;
        let stream = take_or_bind(
            &mut inherited,
            "stream",
            0,
            &c.socket.path,
            &c.control.path,
            mode,
            &mut bound,
        )?;
        let control = take_or_bind(
            &mut inherited,
            "control",
            1,
            &c.control.path,
            &c.socket.path,
            mode,
            &mut bound,
        )?;
        let unclaimed = inherited.unclaimed();
        if !unclaimed.is_empty() {
            warn!(sockets = ?unclaimed, "LISTEN_FDS passed sockets that match neither socket.path nor control.path; closing them");
        }
        Ok(UnixSockets {
            stream,
            control,
            bound,
        })
    }
}

/// Removes the socket files the daemon bound itself.
pub fn remove_bound(paths: &[PathBuf]) {
    for p in paths {
        if let Err(e) = std::fs::remove_file(p) {
            warn!(path = %p.display(), error = %e, "cannot remove socket file");
        }
    }
}

/// The listener for `role`: the inherited one when there is one, else bound at `path`.
fn take_or_bind(
    inherited: &mut Inherited,
    role: &'static str,
    index: usize,
    path: &Path,
    other: &Path,
    mode: u32,
    bound: &mut Vec<PathBuf>,
) -> Result<UnixListener, ListenError> {
    let std_listener = match inherited.take(role, index, path, &[other]) {
        Some((l, how, at)) => {
            let at = at.map_or_else(
                || "an unnamed socket".to_owned(),
                |p| p.display().to_string(),
            );
            if how == Matched::Path {
                info!(socket = role, path = %at, "using the socket passed by systemd");
            } else {
                warn!(socket = role, path = %at, configured = %path.display(), matched = ?how, "using the socket passed by systemd, although it is not bound to the configured path");
            }
            l
        }
        None => {
            let l = activation::bind(path, mode)?;
            bound.push(path.to_owned());
            l
        }
    };
    UnixListener::from_std(std_listener).map_err(|source| ListenError::Io {
        path: path.to_owned(),
        source,
    })
}

/// A listener of either kind.
trait Accept {
    type Stream;
    async fn accept_one(&self) -> std::io::Result<Self::Stream>;
}

impl Accept for UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept_one(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(s, _)| s)
    }
}

impl Accept for TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept_one(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(s, _)| s)
    }
}

/// The next connection on `listener`, or `None` once `shutdown` is cancelled. A failed accept
/// (EMFILE and friends) is logged, and the loop breathes before the next one, so the others
/// keep being served.
async fn next_connection<L: Accept>(
    listener: &L,
    shutdown: &CancellationToken,
    what: &'static str,
) -> Option<L::Stream> {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return None,
            a = listener.accept_one() => a,
        };
        match accepted {
            Ok(s) => return Some(s),
            Err(e) => {
                warn!(listener = what, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Accepts consumers until shutdown, refusing those over `limits.max_consumers`.
pub async fn serve_consumers(
    listener: UnixListener,
    env: PeerEnv,
    max_consumers: usize,
    tasks: TaskTracker,
) {
    let active = Arc::new(tokio::sync::Semaphore::new(max_consumers));
    while let Some(stream) = next_connection(&listener, &env.shutdown, "consumer").await {
        // SO_PEERCRED: who connected, for every log line about this peer.
        let peer = Peer::of(&stream);
        let Ok(permit) = active.clone().try_acquire_owned() else {
            env.hub.stats.refused.fetch_add(1, Ordering::Relaxed);
            warn!(
                pid = peer.pid,
                uid = peer.uid,
                gid = peer.gid,
                limit = max_consumers,
                "refusing a consumer: limits.max_consumers reached"
            );
            let mut s = stream;
            let line =
                LineError::new("too_many_consumers", "limits.max_consumers reached").to_line();
            tasks.spawn(async move {
                let _ = tokio::time::timeout(
                    crate::consumers::io::WRITE_TIMEOUT,
                    s.write_all(format!("{line}\n").as_bytes()),
                )
                .await;
            });
            continue;
        };
        info!(
            pid = peer.pid,
            uid = peer.uid,
            gid = peer.gid,
            "consumer connected"
        );
        let env = env.clone();
        tasks.spawn(async move {
            env.hub.stats.consumers.fetch_add(1, Ordering::Relaxed);
            peer::serve(stream, env.clone(), peer).await;
            env.hub.stats.consumers.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}

/// Serves the control socket until shutdown: one request line, one response line.
pub async fn serve_control(
    listener: UnixListener,
    sources: Sources,
    limits: RequestLimits,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let limiter = Limiter::new(limits.max_connections);
    while let Some(stream) = next_connection(&listener, &shutdown, "control").await {
        let Some(slot) = limiter.admit() else {
            debug!("control socket full of requests being answered: refusing a client");
            continue;
        };
        let sources = sources.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = answer_control(stream, &sources, &slot, limits.request_timeout) => {}
                _ = slot.closed.cancelled() => debug!("control client closed to make room"),
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

/// One control client: its request line within `timeout`, the answer within [`ANSWER_WRITE`].
async fn answer_control(
    stream: tokio::net::UnixStream,
    sources: &Sources,
    slot: &limiter::Slot,
    timeout: Duration,
) {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let limited = rd.take(crate::control::MAX_REQUEST as u64);
    let read = tokio::time::timeout(timeout, BufReader::new(limited).read_line(&mut line)).await;
    if !matches!(read, Ok(Ok(n)) if n > 0) {
        return;
    }
    slot.requested();
    let reply = crate::control::answer(&line, sources).await;
    debug!("control request answered");
    let _ = tokio::time::timeout(ANSWER_WRITE, wr.write_all(format!("{reply}\n").as_bytes())).await;
}

/// Serves `GET /metrics` (Prometheus text) until shutdown: one request per connection, whose
/// headers must arrive within the request timeout.
pub async fn serve_metrics(
    listener: TcpListener,
    sources: Sources,
    limits: RequestLimits,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    let limiter = Limiter::new(limits.max_connections);
    while let Some(stream) = next_connection(&listener, &shutdown, "metrics").await {
        let Some(slot) = limiter.admit() else {
            debug!("metrics endpoint full of requests being answered: refusing a client");
            continue;
        };
        let slot = Arc::new(slot);
        let sources = sources.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let requested = slot.clone();
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    requested.requested();
                    let sources = sources.clone();
                    async move {
                        let resp = if req.uri().path() == "/metrics" {
                            hyper::Response::builder()
                                .header("content-type", crate::control::metrics::CONTENT_TYPE)
                                .body(Full::new(Bytes::from(crate::control::metrics::scrape(
                                    &sources,
                                ))))
                        } else {
                            hyper::Response::builder()
                                .status(404)
                                .body(Full::new(Bytes::from_static(b"try /metrics\n")))
                        };
                        Ok::<_, std::convert::Infallible>(resp.unwrap_or_default())
                    }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.request_timeout)
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            let answered = tokio::time::timeout(limits.request_timeout + ANSWER_WRITE, conn);
            tokio::select! {
                _ = answered => {}
                _ = slot.closed.cancelled() => debug!("metrics client closed to make room"),
                _ = shutdown.cancelled() => {}
            }
        });
    }
}
