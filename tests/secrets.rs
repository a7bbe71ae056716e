//! Nothing secret is ever printed, at any log level: a full run of the real binary at trace
//! level (`log.level` and `RUST_LOG`, so every crate's trace events are asked for) against the
//! TLS fake gateway through an authenticating CONNECT proxy, with bot messages (bearer
//! `sessionWebhook` URLs), events, pings, a disconnect handover, a reload, a dropped
//! connection, a 401 after success, and an access token fetched through the local SDK
//! endpoint; plus `check-config`, `status`, `status --json` and `/metrics`. None of the client
//! secret, the local SDK secret, the tickets (= `connectionId`), the `?ticket=` query, the
//! webhook URLs or their tokens, the proxy password or the access tokens may appear in any of
//! it. Also pins the shape of the ticket request.

mod common;

use common::compat::{Endpoint, LOCAL_ID, LOCAL_SECRET, access_token};
use common::exposition::get_metrics;
use common::proxy::{Mode, Proxy, basic, basic_token};
use common::*;
use dingtalk_streamd_sim::{FakeGateway, GatewayEvent, TicketFault};
use nix::sys::signal::Signal;
use std::time::Duration;

const PROXY_USER: &str = "streamd";
const PROXY_PASSWORD: &str = "pr0xy-Pa55-c0ffee";

/// The sessionWebhook URL inside a pushed bot message frame.
fn webhook_of(frame_text: &str) -> String {
    let frame: serde_json::Value = serde_json::from_str(frame_text).unwrap();
    let data: serde_json::Value = serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
    data["sessionWebhook"]
        .as_str()
        .expect("bot message has a sessionWebhook")
        .to_owned()
}

/// Three bot messages (their webhooks kept) and one event, each ACKed; their messageIds in order.
async fn push_round(
    gw: &FakeGateway,
    round: &str,
    webhooks: &mut Vec<String>,
    ids: &mut Vec<String>,
) {
    for i in 0..3 {
        let p = gw.push_bot_text(&format!("{round} bot {i}")).await.unwrap();
        webhooks.push(webhook_of(&p.text));
        ids.push(p.message_id);
    }
    let p = gw
        .push_event(
            "user_add_org",
            &serde_json::json!({"userId": ["u1"], "round": round}),
        )
        .await
        .unwrap();
    ids.push(p.message_id);
    // ACKed (so durable) before the test breaks the connection they came on.
    for id in &ids[ids.len() - 4..] {
        gw.wait_until(|g| g.acks(id).iter().any(|a| a.code == 200), WAIT)
            .await
            .unwrap_or_else(|e| panic!("{round}: {id} not ACKed: {e}"));
    }
}

#[tokio::test]
async fn a_full_trace_run_prints_no_secret_and_sends_a_well_formed_ticket_request() {
    let gw = gateway_with(|c| {
        c.tls = true;
        c.ping_interval = Some(Duration::from_millis(150));
        c.disconnect_grace = Duration::from_millis(300);
    })
    .await;
    // Insists on our Basic credentials.
    let px = Proxy::start(Mode::RequireAuth(basic(PROXY_USER, PROXY_PASSWORD))).await;
    let paths = Paths::new();
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let compat = Endpoint::new();
    let extra = format!(
        "proxy: http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{}\nlog:\n  level: trace\nmetrics:\n  listen: {metrics}\n{}",
        px.port,
        compat.yaml(&paths)
    );
    let subscriptions = "dingtalk:\n  subscriptions:\n    - { type: CALLBACK, topic: /v1.0/im/bot/messages/get }\n    - { type: CALLBACK, topic: /v1.0/card/instances/callback }\n    - { type: EVENT, topic: \"*\" }\n";
    let yaml = config_yaml(&gw, &paths, &extra).replacen("dingtalk:\n", subscriptions, 1);
    paths.write_config(&yaml);
    let cfg = paths.config.to_str().unwrap().to_owned();
    // The proxy must be used for 127.0.0.1 too, whatever the test environment says.
    let env: &[(&str, &str)] = &[
        ("RUST_LOG", "trace"),
        ("NO_PROXY", ""),
        ("no_proxy", ""),
        ("HTTPS_PROXY", ""),
        ("https_proxy", ""),
    ];

    let mut daemon = start_run(&paths, env).await;
    let mut tap = Consumer::tap(&paths.socket).await;
    let c1 = gw
        .wait_connected(1, WAIT)
        .await
        .expect("connected through the proxy")[0];

    let mut webhooks = Vec::new();
    let mut pushed_ids = Vec::new();

    // Traffic on the first connection, with the gateway's pings flowing meanwhile.
    push_round(&gw, "first", &mut webhooks, &mut pushed_ids).await;
    let ping = gw.send_ping(c1).unwrap();
    gw.wait_for(|e| matches!(e, GatewayEvent::PingAcked { message_id, .. } if *message_id == ping.message_id), WAIT)
        .await
        .unwrap();

    // An access token through the local SDK endpoint (fetched from the gateway's OpenAPI
    // with the real credentials, through the proxy).
    let r = access_token(&compat, LOCAL_ID, LOCAL_SECRET).await;
    assert_eq!(r.status(), 200);
    let token: serde_json::Value = r.json().await.unwrap();
    assert!(token["accessToken"].is_string(), "{token}");

    // A disconnect handover.
    gw.send_disconnect(c1).unwrap();
    let c2 = new_connection(&gw, c1).await;
    push_round(&gw, "after handover", &mut webhooks, &mut pushed_ids).await;

    // A reload (the same config: everything is read and resolved again).
    paths.write_config(&yaml);
    let mut from = daemon.len();
    daemon.signal(Signal::SIGHUP);
    daemon
        .wait_line(&mut from, "configuration reloaded", WAIT)
        .await;

    // A dropped connection and the reconnect.
    gw.drop_connection(c2).unwrap();
    let c3 = new_connection(&gw, c2).await;
    push_round(&gw, "after drop", &mut webhooks, &mut pushed_ids).await;

    // Credentials rejected after success: not fatal, shown in status, then recovered.
    let mut rejected = gw.subscribe();
    gw.set_ticket_fault(Some(TicketFault::status(401)));
    gw.drop_connection(c3).unwrap();
    for _ in 0..2 {
        rejected
            .wait_for(
                |e| matches!(e, GatewayEvent::TicketRejected { status: 401 }),
                WAIT,
            )
            .await
            .expect("the daemon keeps asking after a 401 once it has been connected");
    }
    assert!(
        daemon.running(),
        "a 401 after success ended the run:\n{}",
        daemon.stderr()
    );
    let during_401 = output(&["--config", &cfg, "status", "--json"], env).await;
    assert_eq!(
        during_401.code,
        Some(1),
        "{}{}",
        during_401.stdout,
        during_401.stderr
    );
    let human_401 = output(&["--config", &cfg, "status"], env).await;
    assert_eq!(human_401.code, Some(1));
    let metrics_401 = get_metrics(&metrics.to_string()).await;
    gw.set_ticket_fault(None);
    new_connection(&gw, c3).await;
    push_round(&gw, "after 401", &mut webhooks, &mut pushed_ids).await;

    for (i, id) in pushed_ids.iter().enumerate() {
        let v = tap.next().await;
        assert_eq!(v["message_id"], id.as_str(), "line {i}: {v}");
    }

    let status_json = output(&["--config", &cfg, "status", "--json"], env).await;
    assert_eq!(status_json.code, Some(0), "{}", status_json.stderr);
    let st: serde_json::Value = serde_json::from_str(status_json.stdout.trim()).unwrap();
    assert_eq!(st["state"], "connected", "{st}");
    let status_human = output(&["--config", &cfg, "status"], env).await;
    let metrics_text = get_metrics(&metrics.to_string()).await;
    assert!(
        metrics_text.contains("dingtalk_streamd_connected 1"),
        "{metrics_text}"
    );
    // Proof of receipt for the first and the last message (every one carries a
    // sessionWebhook), from the running daemon and, after it stopped, from the spool file.
    let first = pushed_ids.first().expect("pushed").clone();
    let last = pushed_ids.last().expect("pushed").clone();
    let inspect_first = output(&["--config", &cfg, "inspect", &first], env).await;
    assert_eq!(inspect_first.code, Some(0), "{}", inspect_first.stderr);
    let inspect_last = output(&["--config", &cfg, "inspect", "--json", &last], env).await;
    assert_eq!(inspect_last.code, Some(0), "{}", inspect_last.stderr);
    let check = output(&["--config", &cfg, "check-config"], env).await;
    assert_eq!(check.code, Some(0), "{}", check.stderr);
    assert!(
        check.stdout.contains("127.0.0.1"),
        "the proxy is shown (redacted): {}",
        check.stdout
    );

    daemon.signal(Signal::SIGTERM);
    let exit = daemon.wait_exit(WAIT).await;
    assert_eq!(exit.code(), Some(0), "{}", daemon.stderr());
    let (log_out, log_err) = (daemon.stdout(), daemon.stderr());
    let inspect_file = output(&["--config", &cfg, "inspect", &first], env).await;
    assert_eq!(inspect_file.code, Some(0), "{}", inspect_file.stderr);

    // The run was really at trace level and really went through the proxy, so the absence of
    // secrets below means something.
    assert!(log_err.contains("TRACE"), "no trace output:\n{log_err}");
    assert!(log_err.contains("DEBUG"), "no debug output:\n{log_err}");
    assert!(
        pushed_ids.iter().any(|id| log_err.contains(id.as_str())),
        "frames are not logged by messageId"
    );
    assert_eq!(
        px.refused(),
        0,
        "the proxy refused a request (credentials not sent?)"
    );
    assert!(
        px.tunnels() >= 5,
        "tickets and WebSockets must both go through the proxy"
    );

    let mut tickets: Vec<String> = collect(&gw, |e| match e {
        GatewayEvent::TicketIssued { ticket } | GatewayEvent::Connected { ticket, .. } => {
            Some(ticket.clone())
        }
        _ => None,
    });
    tickets.sort();
    tickets.dedup();
    assert!(tickets.len() >= 4, "{tickets:?}");
    assert_eq!(webhooks.len(), 12);
    let proxy_basic = basic_token(PROXY_USER, PROXY_PASSWORD);
    let mut forbidden: Vec<(String, String)> = vec![
        ("the client secret".into(), SECRET.into()),
        ("the local SDK secret".into(), LOCAL_SECRET.into()),
        ("the ticket query".into(), "?ticket=".into()),
        ("the proxy password".into(), PROXY_PASSWORD.into()),
        ("the proxy credentials (Basic)".into(), proxy_basic),
        ("a sessionWebhook endpoint".into(), "sendBySession".into()),
    ];
    for t in &tickets {
        forbidden.push(("a ticket (connectionId)".into(), t.clone()));
    }
    let tokens = gw.tokens_issued();
    assert!(!tokens.is_empty(), "no access token was fetched");
    for t in tokens {
        forbidden.push(("an access token".into(), t));
    }
    for w in &webhooks {
        forbidden.push(("a sessionWebhook URL".into(), w.clone()));
        let token = w
            .split_once("session=")
            .expect("webhook has a session token")
            .1;
        forbidden.push(("a sessionWebhook token".into(), token.to_owned()));
    }
    let outputs = [
        ("daemon stdout", log_out.as_str()),
        ("daemon stderr", log_err.as_str()),
        ("status --json (401)", during_401.stdout.as_str()),
        ("status (401)", human_401.stdout.as_str()),
        ("status --json", status_json.stdout.as_str()),
        ("status", status_human.stdout.as_str()),
        ("/metrics (401)", metrics_401.as_str()),
        ("/metrics", metrics_text.as_str()),
        ("check-config", check.stdout.as_str()),
        ("check-config stderr", check.stderr.as_str()),
        ("inspect", inspect_first.stdout.as_str()),
        ("inspect --json", inspect_last.stdout.as_str()),
        (
            "inspect (from the spool file)",
            inspect_file.stdout.as_str(),
        ),
        ("inspect stderr", inspect_file.stderr.as_str()),
    ];
    for (name, text) in outputs {
        for (what, value) in &forbidden {
            if let Some(i) = text.find(value.as_str()) {
                let from = text[..i].rfind('\n').map_or(0, |n| n + 1);
                let to = text[i..].find('\n').map_or(text.len(), |n| i + n);
                panic!("{what} appears in {name}: {}", &text[from..to]);
            }
        }
    }

    // The ticket request shape (docs/protocol.md §1.1).
    let reqs = gw.ticket_requests();
    assert!(
        reqs.len() >= 4,
        "one ticket request per connection attempt: {}",
        reqs.len()
    );
    for r in &reqs {
        assert_eq!(r.client_id, gw.config().client_id);
        assert_eq!(
            r.client_secret.expose(),
            SECRET,
            "the secret is sent, only never printed"
        );
        assert_eq!(
            r.ua.as_deref(),
            Some(concat!(
                "dingtalk-streamd-rust/v",
                env!("CARGO_PKG_VERSION")
            ))
        );
        let ip = r.local_ip.as_deref().expect("localIp present");
        assert!(ip.parse::<std::net::IpAddr>().is_ok(), "localIp {ip:?}");
        assert_eq!(r.accept.as_deref(), Some("application/json"));
        assert!(
            r.content_type
                .as_deref()
                .is_some_and(|c| c.starts_with("application/json")),
            "{:?}",
            r.content_type
        );
        let subs: Vec<(&str, &str)> = r
            .subscriptions
            .iter()
            .map(|s| (s.kind.as_str(), s.topic.as_str()))
            .collect();
        assert_eq!(
            subs,
            [
                ("CALLBACK", "/v1.0/im/bot/messages/get"),
                ("CALLBACK", "/v1.0/card/instances/callback"),
                ("EVENT", "*")
            ]
        );
    }
}
