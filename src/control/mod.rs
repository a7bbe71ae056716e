//! The control socket (one JSON request line, one JSON response line: `{"cmd":"status"}`), the
//! optional Prometheus endpoint, and the client side of `status` and `tail`.

pub mod client;
pub mod status;

use status::Shared;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// A request line longer than this is refused.
const MAX_REQUEST: u64 = 4096;

/// Serves the control socket until shutdown.
pub async fn serve(listener: UnixListener, shared: Shared, shutdown: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let (rd, mut wr) = stream.into_split();
            let mut line = String::new();
            let read = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                BufReader::new(rd.take_limited()).read_line(&mut line),
            )
            .await;
            let reply = match read {
                Ok(Ok(_)) => match serde_json::from_str::<serde_json::Value>(line.trim()) {
                    Ok(v) if v["cmd"] == "status" => shared.status().await,
                    Ok(_) => {
                        serde_json::json!({"error":{"code":"bad_request","message":"supported: {\"cmd\":\"status\"}"}})
                    }
                    Err(e) => {
                        serde_json::json!({"error":{"code":"bad_json","message":e.to_string()}})
                    }
                },
                _ => return,
            };
            debug!("control request answered");
            let _ = wr.write_all(format!("{reply}\n").as_bytes()).await;
        });
    }
}

trait TakeLimited: tokio::io::AsyncRead + Sized {
    fn take_limited(self) -> tokio::io::Take<Self> {
        tokio::io::AsyncReadExt::take(self, MAX_REQUEST)
    }
}
impl<T: tokio::io::AsyncRead> TakeLimited for T {}

/// Serves `GET /metrics` (Prometheus text) on `addr` until shutdown.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    shared: Shared,
    shutdown: CancellationToken,
) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let shared = shared.clone();
                    async move {
                        let resp = if req.uri().path() == "/metrics" {
                            hyper::Response::builder()
                                .header("content-type", "text/plain; version=0.0.4")
                                .body(Full::new(Bytes::from(shared.metrics().await)))
                        } else {
                            hyper::Response::builder()
                                .status(404)
                                .body(Full::new(Bytes::from_static(b"try /metrics\n")))
                        };
                        Ok::<_, std::convert::Infallible>(resp.unwrap_or_default())
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}
