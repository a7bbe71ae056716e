//! The proxy path: a small recording HTTP CONNECT proxy on 127.0.0.1:0 in the test. Both the
//! ticket POST and the WebSocket go through it, with Basic credentials, whether it comes from
//! the `proxy` key or `HTTPS_PROXY`; `NO_PROXY` bypasses it; the credentials never appear in
//! the daemon's output, `check-config` or `status`. The real binary is used throughout because
//! the proxy environment is process-global.

mod common;

use common::proxy::{Mode, Proxy, basic, basic_token};
use common::*;

const USER: &str = "streamd@corp";
const PASSWORD: &str = "pr0xy:Pa55-w0rd";
/// The same, percent-encoded for the URL's userinfo.
const USERINFO: &str = "streamd%40corp:pr0xy%3APa55-w0rd";

/// The strings that must never appear in any output.
fn assert_no_leaks(text: &str) {
    assert_eq!(
        leaks(text),
        Vec::<&str>::new(),
        "credentials in the output:\n{text}"
    );
}

fn leaks(text: &str) -> Vec<&'static str> {
    let token: &'static str = Box::leak(basic_token(USER, PASSWORD).into_boxed_str());
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
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut d = spawn_run(&p.config, &envs);
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
    let st = status_until(&p.control, "connected", |s| s["state"] == "connected").await;
    let mut extra = st.to_string();
    let config = p.config.to_str().expect("utf-8 path");
    for args in [
        vec!["check-config"],
        vec!["status", "--json"],
        vec!["status"],
    ] {
        let out = output(&[&["--config", config][..], &args].concat(), &envs).await;
        extra.push_str(&out.stdout);
        extra.push_str(&out.stderr);
    }
    let status = d.stop(WAIT).await;
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
        assert_eq!(
            r.auth.as_deref(),
            Some(basic(USER, PASSWORD).as_str()),
            "{r:?}"
        );
    }
}

#[tokio::test]
async fn proxy_key_carries_the_ticket_request_and_the_websocket_with_credentials() {
    let gw = gateway(true).await;
    let proxy = Proxy::start(Mode::Tunnel).await;
    // An environment proxy that must lose to the key.
    let env_proxy = Proxy::start(Mode::Refuse).await;
    let p = Paths::new();
    let extra = format!(
        "proxy: \"{}\"\nlog:\n  level: debug\n",
        proxy.url(Some(USERINFO))
    );
    p.configure(&gw, &extra);
    let out = run_through(&gw, &p, &[("HTTPS_PROXY", env_proxy.url(None))]).await;
    assert_both_tunnelled(&proxy, &gw);
    assert!(
        env_proxy.requests().is_empty(),
        "the proxy key must win over HTTPS_PROXY"
    );
    assert_no_leaks(&out);
}

#[tokio::test]
async fn https_proxy_env_carries_both_with_credentials() {
    let gw = gateway(true).await;
    let proxy = Proxy::start(Mode::Tunnel).await;
    let p = Paths::new();
    p.configure(&gw, "log:\n  level: debug\n");
    let out = run_through(&gw, &p, &[("HTTPS_PROXY", proxy.url(Some(USERINFO)))]).await;
    assert_both_tunnelled(&proxy, &gw);
    assert_no_leaks(&out);
}

#[tokio::test]
async fn no_proxy_bypasses_the_proxy() {
    let gw = gateway(true).await;
    let proxy = Proxy::start(Mode::Tunnel).await;
    let p = Paths::new();
    p.configure(&gw, "");
    let _ = run_through(
        &gw,
        &p,
        &[
            ("HTTPS_PROXY", proxy.url(Some(USERINFO))),
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
    let extra = format!(
        "proxy: \"{}\"\nlog:\n  level: debug\n",
        proxy.url(Some(USERINFO))
    );
    p.configure(&gw, &extra);
    let mut d = spawn_run(&p.config, &[]);
    let mut from = 0;
    for _ in 0..2 {
        d.wait_line(&mut from, "connection attempt failed; backing off", WAIT)
            .await;
    }
    let st = status_until(&p.control, "a failure cause", |s| {
        s["link"]["last_cause"].is_string()
    })
    .await;
    assert_ne!(st["state"], "connected");
    // The proxy's 407 is blamed on the proxy, not on DingTalk's ticket endpoint.
    assert_eq!(st["link"]["last_cause"], "proxy_407", "{st}");
    let text = d.text();
    assert!(
        text.contains("the HTTP proxy refused the ticket request with 407"),
        "{text}"
    );
    assert!(!text.contains("ticket endpoint answered"), "{text}");
    assert!(
        gw.ticket_requests().is_empty(),
        "the request went around the proxy"
    );
    assert!(proxy.requests().len() >= 2);
    d.stop(WAIT).await;
    let out = d.text() + &st.to_string();
    assert_no_leaks(&out);
}
