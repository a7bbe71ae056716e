//! Tests of the fake DingTalk gateway itself, with a tiny raw client (reqwest + tungstenite).
//!
//! Real sockets on 127.0.0.1:0; every wait has a deadline; no sleeps as synchronisation.

use std::sync::Arc;
use std::time::Duration;

use dingtalk_streamd_sim::{
    CloseReason, ConnId, FakeGateway, GatewayConfig, GatewayEvent, HandshakeFault, OutFrame,
    PushError, Route, TicketFault,
};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const T: Duration = Duration::from_secs(5);

async fn start(tls: bool, tweak: impl FnOnce(&mut GatewayConfig)) -> FakeGateway {
    let mut config = GatewayConfig {
        tls,
        ..GatewayConfig::default()
    };
    tweak(&mut config);
    FakeGateway::start(config).await.expect("gateway starts")
}

fn tls_config(gw: &FakeGateway) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = gw.ca_pem() {
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).expect("CA PEM parses");
        roots.add(der).expect("CA is a valid root");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

fn http(gw: &FakeGateway) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls_config(gw))
        .timeout(T)
        .build()
        .expect("reqwest client")
}

fn open_body(secret: &str) -> Value {
    json!({
        "clientId": "sim-client",
        "clientSecret": secret,
        "subscriptions": [
            {"type": "SYSTEM", "topic": "ping"},
            {"type": "EVENT", "topic": "*"},
            {"type": "CALLBACK", "topic": "/v1.0/im/bot/messages/get"},
        ],
        "ua": "dingtalk-streamd/0.1.0",
        "localIp": "10.0.0.12",
        "extras": null,
    })
}

async fn request_ticket(gw: &FakeGateway, secret: &str) -> reqwest::Response {
    http(gw)
        .post(gw.open_url())
        .header("Accept", "application/json")
        .json(&open_body(secret))
        .send()
        .await
        .expect("ticket request answered")
}

/// Gets a ticket and returns the WebSocket URL to dial.
async fn ws_url(gw: &FakeGateway) -> String {
    let resp = request_ticket(gw, "sim-secret").await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("JSON body");
    let endpoint = body["endpoint"].as_str().expect("endpoint");
    let ticket = body["ticket"].as_str().expect("ticket");
    format!("{endpoint}?ticket={ticket}")
}

async fn dial(gw: &FakeGateway, url: &str) -> Result<Ws, tungstenite::Error> {
    let connector = Connector::Rustls(Arc::new(tls_config(gw)));
    tokio_tungstenite::connect_async_tls_with_config(url, None, true, Some(connector))
        .await
        .map(|(ws, _)| ws)
}

/// Connects a fresh client and returns it with its simulator id.
async fn connect(gw: &FakeGateway) -> (Ws, ConnId) {
    let mut events = gw.subscribe();
    let url = ws_url(gw).await;
    let ws = dial(gw, &url).await.expect("WebSocket connects");
    let ev = events
        .wait_for(|e| matches!(e, GatewayEvent::Connected { .. }), T)
        .await
        .expect("Connected event");
    let GatewayEvent::Connected { conn, .. } = ev.event else {
        unreachable!()
    };
    (ws, conn)
}

/// The next text frame, parsed (skipping control frames).
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(T, ws.next())
            .await
            .expect("a frame before the deadline")
            .expect("stream open")
            .expect("frame ok");
        if let Message::Text(text) = msg {
            return serde_json::from_str(text.as_str()).expect("frame is JSON");
        }
    }
}

async fn ack(ws: &mut Ws, frame: &Value, data: &str) {
    let ack = json!({
        "code": 200,
        "headers": {"messageId": frame["headers"]["messageId"], "contentType": "application/json"},
        "message": "OK",
        "data": data,
    });
    ws.send(Message::text(ack.to_string()))
        .await
        .expect("ACK sent");
}

/// Dials `url` expecting the handshake to be refused; returns the HTTP status.
async fn rejected(gw: &FakeGateway, url: &str) -> u16 {
    match dial(gw, url).await {
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(other) => panic!("expected an HTTP rejection, got {other}"),
        Ok(_) => panic!("handshake unexpectedly accepted"),
    }
}

#[tokio::test]
async fn ticket_is_issued_over_tls_and_bad_secret_gets_401() {
    let gw = start(true, |_| {}).await;
    assert!(gw.open_url().starts_with("https://127.0.0.1:"));
    let resp = request_ticket(&gw, "sim-secret").await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    let port = gw.local_addr().port();
    assert_eq!(body["endpoint"], format!("wss://127.0.0.1:{port}/connect"));
    assert!(body["ticket"].as_str().is_some_and(|t| t.len() == 36));

    let req = &gw.ticket_requests()[0];
    assert_eq!(req.ua.as_deref(), Some("dingtalk-streamd/0.1.0"));
    assert_eq!(req.local_ip.as_deref(), Some("10.0.0.12"));
    assert_eq!(req.accept.as_deref(), Some("application/json"));
    assert_eq!(req.subscriptions.len(), 3);
    assert_eq!(req.subscriptions[0].kind, "SYSTEM");
    assert!(
        !format!("{req:?}").contains("sim-secret"),
        "secret redacted"
    );

    let resp = request_ticket(&gw, "wrong").await;
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["code"], "authFailed");
    assert_eq!(body["message"], "鉴权失败");
    assert!(body["requestid"].is_string());
    assert_eq!(gw.tickets_issued(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn ticket_is_single_use_and_expires() {
    let gw = start(false, |_| {}).await;
    let url = ws_url(&gw).await;
    let _ws = dial(&gw, &url).await.expect("first use works");
    assert_eq!(rejected(&gw, &url).await, 403);
    let unknown = format!("{}?ticket=nope", gw.endpoint());
    assert_eq!(rejected(&gw, &unknown).await, 401);
    let wrong_path = url.replace("/connect", "/other");
    assert_eq!(rejected(&gw, &wrong_path).await, 404);

    let gw2 = start(false, |c| c.ticket_ttl = Duration::ZERO).await;
    let url = ws_url(&gw2).await;
    assert_eq!(rejected(&gw2, &url).await, 403);
    gw2.wait_for(
        |e| matches!(e, GatewayEvent::HandshakeRejected { reason, .. } if reason == "ticket expired"),
        T,
    )
    .await
    .expect("rejection recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_over_tls_carries_opaque_and_ack_is_checked() {
    let gw = start(true, |c| c.ping_interval = Some(Duration::from_millis(100))).await;
    let (mut ws, conn) = connect(&gw).await;
    let ticket = gw.connection_ticket(conn).expect("ticket");

    let ping = next_json(&mut ws).await;
    assert_eq!(ping["type"], "SYSTEM");
    assert_eq!(ping["headers"]["topic"], "ping");
    assert_eq!(ping["headers"]["connectionId"], ticket.as_str());
    for key in ["appId", "contentType", "messageId", "time"] {
        assert!(ping["headers"][key].is_string(), "{key}");
    }
    let data = ping["data"].as_str().expect("data is a string");
    assert!(serde_json::from_str::<Value>(data).expect("json")["opaque"].is_string());
    ack(&mut ws, &ping, data).await;
    let id = ping["headers"]["messageId"]
        .as_str()
        .expect("id")
        .to_owned();
    let ev = gw
        .wait_for(
            |e| matches!(e, GatewayEvent::PingAcked { message_id, .. } if *message_id == id),
            T,
        )
        .await
        .expect("ping ACK seen");
    assert!(
        matches!(ev.event, GatewayEvent::PingAcked { opaque_ok: true, conn: c, .. } if c == conn)
    );

    // An on-demand ping answered with the wrong opaque is flagged.
    let sent = gw.send_ping(conn).expect("ping sent");
    let frame = loop {
        let f = next_json(&mut ws).await;
        if f["headers"]["messageId"] == sent.message_id.as_str() {
            break f;
        }
    };
    ack(&mut ws, &frame, r#"{"opaque":"wrong"}"#).await;
    let ev = gw
        .wait_for(
            |e| matches!(e, GatewayEvent::PingAcked { message_id, .. } if *message_id == sent.message_id),
            T,
        )
        .await
        .expect("second ping ACK");
    assert!(matches!(
        ev.event,
        GatewayEvent::PingAcked {
            opaque_ok: false,
            ..
        }
    ));
}

#[tokio::test]
async fn unacked_message_is_redelivered_identically() {
    let gw = start(false, |c| {
        c.redeliver_after = Some(Duration::from_millis(300))
    })
    .await;
    let (mut ws, _conn) = connect(&gw).await;
    let pushed = gw.push_bot_text("hello").await.expect("pushed");
    let first = next_json(&mut ws).await;
    assert_eq!(first["type"], "CALLBACK");
    assert_eq!(first["headers"]["topic"], "/v1.0/im/bot/messages/get");
    let data: Value = serde_json::from_str(first["data"].as_str().expect("str")).expect("json");
    assert_eq!(data["text"]["content"], "hello");
    assert!(data["msgId"].as_str().is_some_and(|m| m.starts_with("msg")));

    let second = next_json(&mut ws).await;
    assert_eq!(second["headers"]["messageId"], pushed.message_id.as_str());
    assert_eq!(second["data"], first["data"]);
    ack(&mut ws, &second, r#"{"response":null}"#).await;
    gw.wait_until(|g| g.acks(&pushed.message_id).len() == 1, T)
        .await
        .expect("ACK recorded");
    assert!(gw.unacked().is_empty());
    let redeliveries = gw
        .events()
        .into_iter()
        .filter(|e| matches!(&e.event, GatewayEvent::Redelivered { message_id, .. } if *message_id == pushed.message_id))
        .count();
    assert_eq!(redeliveries, 1);
}

#[tokio::test]
async fn disconnect_stops_delivery_then_server_closes() {
    let gw = start(false, |_| {}).await;
    let (mut ws, conn) = connect(&gw).await;
    gw.send_disconnect_with_grace(conn, Duration::from_millis(200))
        .expect("disconnect");
    let frame = next_json(&mut ws).await;
    assert_eq!(frame["headers"]["topic"], "disconnect");
    let data: Value = serde_json::from_str(frame["data"].as_str().expect("str")).expect("json");
    assert_eq!(data["reason"], "persistent connection is timeout");
    assert_eq!(
        gw.push(OutFrame::bot_text("x"), Route::To(conn))
            .await
            .err(),
        Some(PushError::Draining(conn))
    );
    assert_eq!(
        gw.push_bot_text("x").await.err(),
        Some(PushError::NoConnection)
    );
    let end = tokio::time::timeout(T, ws.next())
        .await
        .expect("closed in time");
    assert!(
        !matches!(end, Some(Ok(Message::Close(_)))),
        "no close frame: {end:?}"
    );
    gw.wait_for(
        |e| {
            matches!(
                e,
                GatewayEvent::Closed {
                    reason: CloseReason::AfterDisconnect,
                    ..
                }
            )
        },
        T,
    )
    .await
    .expect("closed after grace");
}

#[tokio::test]
async fn drop_closes_without_close_frame() {
    let gw = start(false, |_| {}).await;
    let (mut ws, conn) = connect(&gw).await;
    gw.drop_connection(conn).expect("drop");
    let end = tokio::time::timeout(T, ws.next())
        .await
        .expect("ends in time");
    assert!(
        matches!(end, None | Some(Err(_))),
        "expected EOF/reset, got {end:?}"
    );
    gw.wait_for(
        |e| {
            matches!(
                e,
                GatewayEvent::Closed {
                    reason: CloseReason::Dropped,
                    ..
                }
            )
        },
        T,
    )
    .await
    .expect("Closed(Dropped)");
    assert!(gw.open_connections().is_empty());
}

#[tokio::test]
async fn zombie_does_not_answer_ws_ping() {
    let gw = start(false, |_| {}).await;
    let (mut ws, conn) = connect(&gw).await;
    ws.send(Message::Ping(b"alive?".to_vec().into()))
        .await
        .expect("ping");
    let pong = tokio::time::timeout(T, ws.next())
        .await
        .expect("pong in time");
    assert!(matches!(pong, Some(Ok(Message::Pong(_)))), "{pong:?}");

    let mut events = gw.subscribe();
    gw.set_zombie(conn, true).expect("zombie");
    events
        .wait_for(|e| matches!(e, GatewayEvent::ZombieSet { on: true, .. }), T)
        .await
        .expect("zombie on");
    ws.send(Message::Ping(b"alive?".to_vec().into()))
        .await
        .expect("ping");
    let silent = tokio::time::timeout(Duration::from_millis(500), ws.next()).await;
    assert!(silent.is_err(), "zombie answered: {silent:?}");
    let swallowed = gw.push(OutFrame::bot_text("lost"), Route::To(conn)).await;
    assert!(swallowed.is_ok());
    events
        .wait_for(|e| matches!(e, GatewayEvent::FrameSwallowed { .. }), T)
        .await
        .expect("push swallowed");
    assert!(
        !events
            .drain()
            .iter()
            .any(|e| matches!(e.event, GatewayEvent::ClientWsPing { .. }))
    );
}

#[tokio::test]
async fn ticket_faults_503_with_retry_after_then_recover_and_hang() {
    let gw = start(false, |_| {}).await;
    gw.set_ticket_fault(Some(
        TicketFault::status(503)
            .retry_after(Duration::from_secs(7))
            .times(1),
    ));
    let resp = request_ticket(&gw, "sim-secret").await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "7");
    let resp = request_ticket(&gw, "sim-secret").await;
    assert_eq!(resp.status(), 200);

    gw.set_ticket_fault(Some(TicketFault::status(400)));
    let body: Value = request_ticket(&gw, "sim-secret")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(body["code"], "systemError");

    gw.set_ticket_fault(Some(TicketFault::hang()));
    let err = http(&gw)
        .post(gw.open_url())
        .timeout(Duration::from_millis(300))
        .json(&open_body("sim-secret"))
        .send()
        .await
        .expect_err("hangs");
    assert!(err.is_timeout());
    gw.set_ticket_fault(None);
    assert_eq!(request_ticket(&gw, "sim-secret").await.status(), 200);

    let resp = http(&gw)
        .post(gw.open_url())
        .body("{not json")
        .send()
        .await
        .expect("answered");
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn handshake_fault_rejects_before_upgrade() {
    let gw = start(false, |_| {}).await;
    gw.set_handshake_fault(Some(HandshakeFault::status(403).times(1)));
    let url = ws_url(&gw).await;
    assert_eq!(rejected(&gw, &url).await, 403);
    gw.wait_for(
        |e| matches!(e, GatewayEvent::HandshakeRejected { status: 403, .. }),
        T,
    )
    .await
    .expect("recorded");
    dial(&gw, &url)
        .await
        .expect("fault was for one handshake only");
}

#[tokio::test]
async fn raw_frames_events_routing_and_bad_client_input() {
    let gw = start(false, |_| {}).await;
    let waiter = {
        let gw = gw.clone();
        tokio::spawn(async move { gw.push(OutFrame::raw("{not json"), Route::Wait(T)).await })
    };
    let (mut a, ca) = connect(&gw).await;
    let pushed = waiter.await.expect("join").expect("pushed once connected");
    assert_eq!(pushed.conn, ca);
    let raw = tokio::time::timeout(T, a.next()).await.expect("in time");
    assert!(matches!(raw, Some(Ok(Message::Text(t))) if t.as_str() == "{not json"));

    gw.push_event("user_add_org", &json!({"userId": ["u1"]}))
        .await
        .expect("event");
    let ev = next_json(&mut a).await;
    assert_eq!(ev["type"], "EVENT");
    assert_eq!(ev["headers"]["topic"], "*");
    assert_eq!(ev["headers"]["eventType"], "user_add_org");
    assert!(ev["headers"]["eventBornTime"].is_string());

    a.send(Message::text("garbage")).await.expect("sent");
    gw.wait_for(|e| matches!(e, GatewayEvent::UnexpectedFrame { .. }), T)
        .await
        .expect("bad input recorded");

    let (mut b, cb) = connect(&gw).await;
    let mut seen = std::collections::HashSet::new();
    for i in 0..20 {
        seen.insert(gw.push_bot_text(&format!("m{i}")).await.expect("push").conn);
    }
    assert_eq!(
        seen,
        [ca, cb].into_iter().collect(),
        "both connections used"
    );
    a.close(None).await.expect("close");
    gw.wait_for(|e| matches!(e, GatewayEvent::Closed { conn, reason: CloseReason::ClientClose { code: 1005, .. } } if *conn == ca), T)
        .await
        .expect("client close recorded");
    let card = gw
        .push(
            OutFrame::card_callback("track-1", "user-1", &json!({"action": "ok"})),
            Route::Random,
        )
        .await
        .expect("card");
    assert_eq!(card.conn, cb);
    loop {
        let f = next_json(&mut b).await;
        if f["headers"]["topic"] == "/v1.0/card/instances/callback" {
            break;
        }
    }
}

#[tokio::test]
async fn redelivery_moves_to_another_connection_and_later_ack_retries() {
    let gw = start(false, |c| {
        c.redeliver_after = Some(Duration::from_millis(300));
        c.max_redeliveries = 10;
    })
    .await;
    let (mut a, ca) = connect(&gw).await;
    let pushed = gw
        .push(
            OutFrame::event("chat_update", &json!({"x": 1})),
            Route::To(ca),
        )
        .await
        .expect("pushed");
    let first = next_json(&mut a).await;
    assert_eq!(first["headers"]["messageId"], pushed.message_id.as_str());
    ack(&mut a, &first, r#"{"status":"LATER","message":"later"}"#).await;
    let again = next_json(&mut a).await;
    assert_eq!(again["headers"]["messageId"], pushed.message_id.as_str());

    let (mut b, cb) = connect(&gw).await;
    drop(a);
    gw.wait_for(
        |e| matches!(e, GatewayEvent::Closed { conn, .. } if *conn == ca),
        T,
    )
    .await
    .expect("first connection gone");
    let moved = next_json(&mut b).await;
    assert_eq!(moved["headers"]["messageId"], pushed.message_id.as_str());
    assert_eq!(moved["data"], first["data"]);
    assert_eq!(
        moved["headers"]["connectionId"],
        gw.connection_ticket(cb).expect("ticket").as_str()
    );
    ack(&mut b, &moved, r#"{"status":"SUCCESS"}"#).await;
    gw.wait_until(|g| g.unacked().is_empty(), T)
        .await
        .expect("released by the SUCCESS ACK");
}

#[tokio::test]
async fn binary_prints_config_sends_at_rate_and_stops_on_sigterm() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.yml");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dingtalk-streamd-sim"))
        .args(["--listen", "127.0.0.1:0", "--rate", "50", "--count", "2"])
        .arg("--state-dir")
        .arg(dir.path())
        .arg("--write-config")
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("simulator starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let open_url = loop {
        let line = tokio::time::timeout(T, lines.next_line())
            .await
            .expect("config printed in time")
            .expect("stdout readable")
            .expect("open_url line before EOF");
        if let Some(url) = line.trim().strip_prefix("open_url: ") {
            break url.trim_matches('"').to_owned();
        }
    };
    let written = std::fs::read_to_string(&config).expect("config written");
    assert!(written.contains(&open_url) && written.contains("ca_file:"));
    let ca = std::fs::read_to_string(dir.path().join("ca.pem")).expect("ca.pem written");

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.as_bytes()).expect("pem"))
        .expect("root");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls.clone())
        .timeout(T)
        .build()
        .expect("client");
    let body: Value = client
        .post(&open_url)
        .json(&open_body("sim-secret"))
        .send()
        .await
        .expect("ticket")
        .json()
        .await
        .expect("json");
    let url = format!(
        "{}?ticket={}",
        body["endpoint"].as_str().expect("endpoint"),
        body["ticket"].as_str().expect("ticket")
    );
    let connector = Connector::Rustls(Arc::new(tls));
    let (mut ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(url, None, true, Some(connector))
            .await
            .expect("wss connects");
    for n in 1..=2 {
        let frame = loop {
            let f = next_json(&mut ws).await;
            if f["type"] == "CALLBACK" {
                break f;
            }
        };
        let data: Value = serde_json::from_str(frame["data"].as_str().expect("str")).expect("json");
        assert_eq!(data["text"]["content"], format!("sim message {n}"));
        ack(&mut ws, &frame, r#"{"response":null}"#).await;
    }

    let pid =
        nix::unistd::Pid::from_raw(i32::try_from(child.id().expect("pid")).expect("pid fits"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM sent");
    let status = tokio::time::timeout(T, child.wait())
        .await
        .expect("exits in time")
        .expect("wait");
    assert!(status.success(), "{status:?}");
}

/// A bot message's `sessionWebhook` points at the gateway, over its TLS; a text reply POSTed
/// there is recorded against the message's `msgId`; an unknown session and a body that is not
/// a message get the robot API's non-zero `errcode`.
#[tokio::test]
async fn session_webhook_is_served_over_tls_and_replies_are_recorded() {
    let gw = start(true, |_| {}).await;
    let (mut ws, _conn) = connect(&gw).await;
    gw.push_bot_text("hello").await.expect("pushed");
    let frame = next_json(&mut ws).await;
    let data: Value = serde_json::from_str(frame["data"].as_str().expect("str")).expect("json");
    let msg_id = data["msgId"].as_str().expect("msgId");
    let hook = data["sessionWebhook"].as_str().expect("sessionWebhook");
    let origin = gw.open_url().replace("/v1.0/gateway/connections/open", "");
    assert!(
        hook.starts_with(&format!("{origin}/robot/sendBySession?session=")),
        "{hook} points at {origin}"
    );
    let client = http(&gw);
    let post = |url: String, body: Value| {
        let client = client.clone();
        async move {
            let resp = client.post(url).json(&body).send().await.expect("answered");
            assert_eq!(resp.status(), 200);
            resp.json::<Value>().await.expect("JSON answer")
        }
    };
    let reply = json!({"msgtype": "text", "text": {"content": "hi back"}});
    let answer = post(hook.to_owned(), reply.clone()).await;
    assert_eq!(answer, json!({"errcode": 0, "errmsg": "ok"}));
    let got = gw
        .wait_webhook_reply(msg_id, T)
        .await
        .expect("reply recorded");
    assert_eq!(got.text(), Some("hi back"));
    assert_eq!(got.body, reply);
    assert_eq!(got.content_type.as_deref(), Some("application/json"));

    let unknown = format!("{origin}/robot/sendBySession?session=nope");
    assert_eq!(post(unknown, reply.clone()).await["errcode"], 300001);
    let bad = post(hook.to_owned(), json!({"msgtype": "text"})).await;
    assert_eq!(bad["errcode"], 40035, "{bad}");
    assert_eq!(
        gw.webhook_replies().len(),
        1,
        "refused POSTs are not replies"
    );
    assert!(
        gw.wait_webhook_reply("msg-never-sent", Duration::from_millis(50))
            .await
            .is_err()
    );
}
