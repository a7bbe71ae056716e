//! The proxy path: a small recording HTTP CONNECT proxy on 127.0.0.1:0 in the test. Both the
//! ticket POST and the WebSocket go through it, with Basic credentials, whether it comes from
//! the `proxy` key or `HTTPS_PROXY`; `NO_PROXY` bypasses it; the credentials never appear in
//! the daemon's output, `check-config` or `status`. The real binary is used throughout because
//! the proxy environment is process-global.

mod common;
mod health_common;

use base64::Engine;
use common::*;
use health_common::*;
use std::process::Command;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const USER: &str = "streamd@corp";
const PASSWORD: &str = "pr0xy:Pa55-w0rd";
/// The same, percent-encoded for the URL's userinfo.
const USERINFO: &str = "streamd%40corp:pr0xy%3APa55-w0rd";

/// One request the proxy received.
#[derive(Debug, Clone)]
struct ProxyRequest {
    method: String,
    target: String,
    auth: Option<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Tunnel CONNECT requests.
    Tunnel,
    /// Answer 407 to everything.
    Refuse,
}

struct Proxy {
    port: u16,
    log: Arc<Mutex<Vec<ProxyRequest>>>,
}

impl Proxy {
    async fn start(mode: Mode) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(serve(s, mode, log2.clone()));
            }
        });
        Proxy { port, log }
    }

    fn url(&self, with_credentials: bool) -> String {
        if with_credentials {
            format!("http://{USERINFO}@127.0.0.1:{}", self.port)
        } else {
            format!("http://127.0.0.1:{}", self.port)
        }
    }

    fn requests(&self) -> Vec<ProxyRequest> {
        self.log.lock().unwrap().clone()
    }
}

async fn serve(mut s: TcpStream, mode: Mode, log: Arc<Mutex<Vec<ProxyRequest>>>) {
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
    log.lock().unwrap().push(ProxyRequest {
        method: method.clone(),
        target: target.clone(),
        auth,
    });
    if mode == Mode::Refuse {
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
    if s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
}

fn basic() -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    )
}

/// The strings that must never appear in any output.
fn leaks(text: &str) -> Vec<&'static str> {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let token: &'static str = Box::leak(token.into_boxed_str());
    [PASSWORD, "pr0xy%3APa55-w0rd", token, SECRET]
        .into_iter()
        .filter(|s| text.contains(s))
        .collect()
}

/// Starts the binary, waits until it is connected and a message round-trips, stops it.
async fn run_through(
    gw: &dingtalk_streamd_sim::FakeGateway,
    p: &Paths,
    envs: &[(&str, String)],
) -> String {
    let mut cmd = daemon_cmd(&p.config);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut d = LogChild::spawn("daemon", cmd);
    let conn = gw
        .wait_connected(1, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d.text()))[0];
    let m = gw.push_bot_text("through the proxy").await.unwrap();
    gw.wait_until(|g| !g.acks(&m.message_id).is_empty(), WAIT)
        .await
        .unwrap();
    assert_eq!(gw.acks(&m.message_id)[0].conn, conn);
    // status and check-config, from the real CLI, must not show the credentials either.
    let st = status_until(&p.control, |s| s["state"] == "connected", WAIT).await;
    let mut extra = st.to_string();
    for args in [
        vec!["check-config"],
        vec!["status", "--json"],
        vec!["status"],
    ] {
        let mut c = Command::new(env!("CARGO_BIN_EXE_dingtalk-streamd"));
        c.arg("--config").arg(&p.config).args(&args);
        for (k, v) in envs {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        extra.push_str(&String::from_utf8_lossy(&out.stdout));
        extra.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    let status = d.stop(WAIT);
    assert!(status.is_some_and(|s| s.success()), "{}", d.text());
    d.text() + &extra
}

fn assert_both_tunnelled(proxy: &Proxy, gw: &dingtalk_streamd_sim::FakeGateway) {
    let target = format!("127.0.0.1:{}", gw.local_addr().port());
    let reqs = proxy.requests();
    assert_eq!(
        reqs.len(),
        2,
        "one CONNECT for the ticket POST, one for the WebSocket: {reqs:?}"
    );
    for r in &reqs {
        assert_eq!(r.method, "CONNECT", "{r:?}");
        assert_eq!(r.target, target, "{r:?}");
        assert_eq!(r.auth.as_deref(), Some(basic().as_str()), "{r:?}");
    }
}

#[tokio::test]
async fn proxy_key_carries_the_ticket_request_and_the_websocket_with_credentials() {
    let gw = gateway(true).await;
    let proxy = Proxy::start(Mode::Tunnel).await;
    // An environment proxy that must lose to the key.
    let env_proxy = Proxy::start(Mode::Refuse).await;
    let p = Paths::new();
    let extra = format!("proxy: \"{}\"\nlog:\n  level: debug\n", proxy.url(true));
    std::fs::write(&p.config, config_yaml(&gw, &p, &extra)).unwrap();
    let out = run_through(&gw, &p, &[("HTTPS_PROXY", env_proxy.url(false))]).await;
    assert_both_tunnelled(&proxy, &gw);
    assert!(
        env_proxy.requests().is_empty(),
        "the proxy key must win over HTTPS_PROXY"
    );
    assert_eq!(
        leaks(&out),
        Vec::<&str>::new(),
        "credentials in the output:\n{out}"
    );
}

#[tokio::test]
async fn https_proxy_env_carries_both_with_credentials() {
    let gw = gateway(true).await;
    let proxy = Proxy::start(Mode::Tunnel).await;
    let p = Paths::new();
    std::fs::write(&p.config, config_yaml(&gw, &p, "log:\n  level: debug\n")).unwrap();
    let out = run_through(&gw, &p, &[("HTTPS_PROXY", proxy.url(true))]).await;
    assert_both_tunnelled(&proxy, &gw);
    assert_eq!(
        leaks(&out),
        Vec::<&str>::new(),
        "credentials in the output:\n{out}"
    );
}

#[tokio::test]
async fn no_proxy_bypasses_the_proxy() {
    let gw = gateway(true).await;
    let proxy = Proxy::start(Mode::Tunnel).await;
    let p = Paths::new();
    std::fs::write(&p.config, config_yaml(&gw, &p, "")).unwrap();
    let _ = run_through(
        &gw,
        &p,
        &[
            ("HTTPS_PROXY", proxy.url(true)),
            ("NO_PROXY", "localhost,127.0.0.1".into()),
        ],
    )
    .await;
    assert!(
        proxy.requests().is_empty(),
        "NO_PROXY ignored: {:?}",
        proxy.requests()
    );
}

#[tokio::test]
async fn a_refusing_proxy_is_retried_and_its_credentials_never_logged() {
    let gw = gateway(true).await;
    let proxy = Proxy::start(Mode::Refuse).await;
    let p = Paths::new();
    let extra = format!("proxy: \"{}\"\nlog:\n  level: debug\n", proxy.url(true));
    std::fs::write(&p.config, config_yaml(&gw, &p, &extra)).unwrap();
    let mut d = LogChild::spawn("daemon", daemon_cmd(&p.config));
    let mut from = 0;
    for _ in 0..2 {
        let (i, _) = d
            .wait_line_from(
                from,
                |t| t.contains("connection attempt failed; backing off"),
                WAIT,
            )
            .await
            .unwrap();
        from = i + 1;
    }
    let st = status_until(&p.control, |s| s["link"]["last_cause"].is_string(), WAIT).await;
    assert_ne!(st["state"], "connected");
    assert!(
        gw.ticket_requests().is_empty(),
        "the request went around the proxy"
    );
    assert!(proxy.requests().len() >= 2);
    d.stop(WAIT);
    let out = d.text() + &st.to_string();
    assert_eq!(
        leaks(&out),
        Vec::<&str>::new(),
        "credentials in the output:\n{out}"
    );
}
