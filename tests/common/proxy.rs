//! A small recording HTTP CONNECT proxy on 127.0.0.1:0: tunnels (optionally only with the
//! right Basic credentials) or refuses with 407, and remembers every request.

use base64::Engine;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does with a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    /// Tunnel every CONNECT request.
    Tunnel,
    /// Tunnel CONNECT requests with exactly this `Proxy-Authorization` value; 407 otherwise.
    RequireAuth(String),
    /// Answer 407 to everything.
    Refuse,
}

/// One request the proxy received.
#[derive(Debug, Clone)]
pub struct ProxyRequest {
    pub method: String,
    pub target: String,
    pub auth: Option<String>,
}

#[derive(Default)]
struct Record {
    requests: Mutex<Vec<ProxyRequest>>,
    tunnels: AtomicUsize,
    refused: AtomicUsize,
}

pub struct Proxy {
    pub port: u16,
    record: Arc<Record>,
}

/// The base64 token of Basic credentials.
pub fn basic_token(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// The `Proxy-Authorization` value for Basic credentials.
pub fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", basic_token(user, password))
}

impl Proxy {
    pub async fn start(mode: Mode) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let record = Arc::new(Record::default());
        let r = record.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(serve(s, mode.clone(), r.clone()));
            }
        });
        Proxy { port, record }
    }

    /// Its URL, with `userinfo` (already percent-encoded) when given.
    pub fn url(&self, userinfo: Option<&str>) -> String {
        match userinfo {
            Some(u) => format!("http://{u}@127.0.0.1:{}", self.port),
            None => format!("http://127.0.0.1:{}", self.port),
        }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<ProxyRequest> {
        self.record.requests.lock().unwrap().clone()
    }

    /// Tunnels opened so far.
    pub fn tunnels(&self) -> usize {
        self.record.tunnels.load(Ordering::Relaxed)
    }

    /// Requests answered 407 so far.
    pub fn refused(&self) -> usize {
        self.record.refused.load(Ordering::Relaxed)
    }
}

async fn serve(mut s: TcpStream, mode: Mode, record: Arc<Record>) {
    // The client sends nothing after the head until it has our answer, so a buffered read
    // cannot swallow tunnelled bytes.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 64 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or_default().split_whitespace();
    let method = first.next().unwrap_or_default().to_owned();
    let target = first.next().unwrap_or_default().to_owned();
    let auth = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("proxy-authorization"))
        .map(|(_, v)| v.trim().to_owned());
    record.requests.lock().unwrap().push(ProxyRequest {
        method: method.clone(),
        target: target.clone(),
        auth: auth.clone(),
    });
    let refuse = match &mode {
        Mode::Tunnel => false,
        Mode::RequireAuth(want) => auth.as_deref() != Some(want.as_str()),
        Mode::Refuse => true,
    };
    if refuse {
        record.refused.fetch_add(1, Ordering::Relaxed);
        let _ = s
            .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"t\"\r\nContent-Length: 0\r\n\r\n")
            .await;
        return;
    }
    if method != "CONNECT" {
        let _ = s
            .write_all(b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\n\r\n")
            .await;
        return;
    }
    let Ok(mut up) = TcpStream::connect(&target).await else {
        let _ = s
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            .await;
        return;
    };
    record.tunnels.fetch_add(1, Ordering::Relaxed);
    if s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
}
