//! A webhook receiver for the sink tests: an HTTP/1 server on 127.0.0.1:0 that records every
//! request (when, headers, body) and answers from a script: the first answers may be
//! failures (`500`, `503` with `Retry-After`) or a request held unanswered (to stop the daemon
//! in the middle of one), then `200`. Waits are on its record changing.

use crate::common::wait::WAIT;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub path: String,
    pub content_type: String,
    pub signature: Option<String>,
    pub body: String,
    /// The status it was answered with.
    pub status: u16,
}

/// A scripted answer.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    Status(u16),
    /// 503 with `Retry-After: <secs>`.
    RetryAfter(u64),
    /// 200 this many times.
    Ok(usize),
    /// No answer until the connection goes (recorded with status 0).
    Hold,
}

struct Shared {
    script: Mutex<VecDeque<Answer>>,
    received: Mutex<Vec<Received>>,
    changed: watch::Sender<usize>,
}

/// The running receiver (stops when dropped).
pub struct WebhookServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl WebhookServer {
    /// Listens on 127.0.0.1:0; answers `script` first, then 200.
    pub async fn start(script: Vec<Answer>) -> WebhookServer {
        WebhookServer::start_on(0, script).await
    }

    /// The same on a given port (a receiver that comes up late).
    pub async fn start_on(port: u16, script: Vec<Answer>) -> WebhookServer {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind webhook receiver");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared {
            script: Mutex::new(script.into()),
            received: Mutex::new(Vec::new()),
            changed: watch::channel(0).0,
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(s.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        WebhookServer { addr, shared, task }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared
            .received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits (within `within`) until `pred` holds for the requests so far.
    pub async fn wait_until(
        &self,
        what: &str,
        within: Duration,
        mut pred: impl FnMut(&[Received]) -> bool,
    ) -> Vec<Received> {
        let mut rx = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            rx.borrow_and_update();
            let now = self.received();
            if pred(&now) {
                return now;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                panic!(
                    "no {what} within {within:?}; {} requests received",
                    now.len()
                );
            }
        }
    }

    /// [`WebhookServer::wait_until`] within [`WAIT`].
    pub async fn wait(&self, what: &str, pred: impl FnMut(&[Received]) -> bool) -> Vec<Received> {
        self.wait_until(what, WAIT, pred).await
    }
}

impl Drop for WebhookServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    s: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let at = Instant::now();
    let path = req.uri().path().to_owned();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header("content-type").unwrap_or_default();
    let signature = header("x-dingtalk-streamd-signature");
    let body = req.into_body().collect().await?.to_bytes();
    let next = {
        let mut script = s.script.lock().unwrap_or_else(|p| p.into_inner());
        match script.pop_front() {
            Some(Answer::Ok(n)) if n > 1 => {
                script.push_front(Answer::Ok(n - 1));
                Some(Answer::Ok(1))
            }
            other => other,
        }
    };
    let mut resp = Response::builder();
    let status = match next {
        None | Some(Answer::Ok(_)) => 200,
        Some(Answer::Status(code)) => code,
        Some(Answer::RetryAfter(secs)) => {
            resp = resp.header("Retry-After", secs.to_string());
            503
        }
        Some(Answer::Hold) => 0,
    };
    let n = {
        let mut r = s.received.lock().unwrap_or_else(|p| p.into_inner());
        r.push(Received {
            at,
            path,
            content_type,
            signature,
            body: String::from_utf8_lossy(&body).into_owned(),
            status,
        });
        r.len()
    };
    s.changed.send_replace(n);
    if status == 0 {
        // Until the client goes away (hyper drops this future then).
        std::future::pending::<()>().await;
    }
    Ok(resp
        .status(status)
        .body(Full::new(Bytes::from_static(b"ok")))
        .expect("response"))
}
