//! Bursts, disconnect storms and the soak log: the fake gateway under load.
//!
//! Real sockets on 127.0.0.1:0, plain ws://; every wait has a deadline; no sleeps as
//! synchronisation (a client "pauses" by not reading until the gateway reports what it waits for).

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use dingtalk_streamd_sim::{
    CloseReason, ConnId, DisconnectStorm, FakeGateway, GatewayConfig, GatewayEvent, OutFrame,
    PushError, Route,
};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const T: Duration = Duration::from_secs(10);

async fn start(tweak: impl FnOnce(&mut GatewayConfig)) -> FakeGateway {
    let mut config = GatewayConfig::default();
    tweak(&mut config);
    FakeGateway::start(config).await.expect("gateway starts")
}

/// Gets a ticket from `open_url` and returns the WebSocket URL to dial.
async fn ws_url_from(open_url: &str) -> String {
    let body = json!({
        "clientId": "sim-client",
        "clientSecret": "sim-secret",
        "subscriptions": [{"type": "CALLBACK", "topic": "/v1.0/im/bot/messages/get"}],
        "ua": "burst-test",
    });
    common::ws_url_from(open_url, &body, T).await
}

/// Dials `open_url`'s gateway over plain TCP (tiny socket buffers when `small`, so
/// backpressure shows at once).
async fn dial(open_url: &str, addr: std::net::SocketAddr, small: bool) -> Ws {
    let url = ws_url_from(open_url).await;
    let sock = TcpSocket::new_v4().expect("socket");
    if small {
        sock.set_send_buffer_size(4096).expect("SO_SNDBUF");
        sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    }
    let tcp = sock.connect(addr).await.expect("TCP connects");
    let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp))
        .await
        .expect("WebSocket connects");
    ws
}

/// Connects a client; returns it with its simulator id.
async fn connect_with(gw: &FakeGateway, small: bool) -> (Ws, ConnId) {
    let mut events = gw.subscribe();
    let ws = dial(&gw.open_url(), gw.local_addr(), small).await;
    let ev = events
        .wait_for(|e| matches!(e, GatewayEvent::Connected { .. }), T)
        .await
        .expect("Connected event");
    let GatewayEvent::Connected { conn, .. } = ev.event else {
        unreachable!()
    };
    (ws, conn)
}

async fn connect(gw: &FakeGateway) -> (Ws, ConnId) {
    connect_with(gw, false).await
}

async fn connect_small(gw: &FakeGateway) -> (Ws, ConnId) {
    connect_with(gw, true).await
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

fn message_id(frame: &Value) -> String {
    frame["headers"]["messageId"]
        .as_str()
        .expect("messageId")
        .to_owned()
}

fn ack_text(message_id: &str) -> Message {
    ack_with(message_id, r#"{"response":null}"#)
}

fn ack_with(message_id: &str, data: &str) -> Message {
    let ack = json!({
        "code": 200,
        "headers": {"messageId": message_id, "contentType": "application/json"},
        "message": "OK",
        "data": data,
    });
    Message::text(ack.to_string())
}

async fn send(ws: &mut Ws, msg: Message) {
    tokio::time::timeout(T, ws.send(msg))
        .await
        .expect("sent in time")
        .expect("sent");
}

fn is_closed(conn: ConnId, reason: &CloseReason) -> impl Fn(&GatewayEvent) -> bool {
    move |e| matches!(e, GatewayEvent::Closed { conn: c, reason: r } if *c == conn && r == reason)
}

/// About 1 KB on the wire.
fn kib_frame(i: usize) -> OutFrame {
    OutFrame::bot_text(&format!("burst {i} {}", "x".repeat(300)))
}

/// A client that reads a batch, then stops reading while it writes the batch's ACKs and waits
/// for the gateway to record them (what the daemon does while its spool commits). The gateway
/// must keep reading ACKs while its own writes are blocked, or both sides wait forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_that_keeps_acking_gets_every_frame_of_a_burst() {
    const N: usize = 20_000;
    const BATCH: usize = 2_000;
    let gw = start(|_| {}).await;
    let (mut ws, conn) = connect_small(&gw).await;
    let mut events = gw.subscribe();

    let started = Instant::now();
    let frames: Vec<OutFrame> = (0..N).map(kib_frame).collect();
    eprintln!("built {N} frames in {:?}", started.elapsed());
    let started = Instant::now();
    let pushed = gw
        .push_many(frames, Route::To(conn))
        .await
        .expect("burst queued");
    eprintln!("pushed {N} frames in {:?}", started.elapsed());
    let expected: HashSet<String> = pushed.iter().map(|p| p.message_id.clone()).collect();
    assert_eq!(expected.len(), N);

    let mut seen = HashSet::with_capacity(N);
    while seen.len() < N {
        let mut batch = Vec::with_capacity(BATCH);
        while batch.len() < BATCH && seen.len() + batch.len() < N {
            let frame = next_json(&mut ws).await;
            if frame["type"] == "CALLBACK" {
                batch.push(message_id(&frame));
            }
        }
        // Paused: not reading. ACK the batch, and wait until the gateway has them all.
        for id in &batch {
            tokio::time::timeout(T, ws.feed(ack_text(id)))
                .await
                .expect("ACK accepted while not reading")
                .expect("ACK written");
        }
        tokio::time::timeout(T, ws.flush())
            .await
            .expect("ACKs flushed while not reading")
            .expect("flush");
        gw.wait_acked(&batch, T)
            .await
            .expect("the gateway reads ACKs while its writes are blocked");
        if seen.is_empty() {
            let written = gw
                .events()
                .iter()
                .filter(|e| matches!(e.event, GatewayEvent::FrameSent { .. }))
                .count();
            assert!(
                written < N,
                "the gateway was mid-burst while it read the ACKs ({written} of {N} written)"
            );
        }
        seen.extend(batch);
    }
    eprintln!("burst read and ACKed in {:?}", started.elapsed());
    assert_eq!(seen, expected, "every frame arrived once");
    assert!(gw.unacked().is_empty(), "every ACK recorded");
    assert_eq!(gw.open_connections(), vec![conn], "no write timeout drop");
    assert!(
        !events
            .drain()
            .iter()
            .any(|e| matches!(e.event, GatewayEvent::Closed { .. })),
        "connection stayed open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_many_routes_in_order_and_reports_errors() {
    let gw = start(|_| {}).await;
    assert_eq!(
        gw.push_many([kib_frame(0)], Route::Random).await.err(),
        Some(PushError::NoConnection)
    );
    assert!(
        gw.push_many([], Route::Random)
            .await
            .expect("nothing")
            .is_empty()
    );
    let waiter = {
        let gw = gw.clone();
        tokio::spawn(async move {
            let frames = (0..600).map(kib_frame).chain([OutFrame::raw("raw!")]);
            gw.push_many(frames, Route::Wait(T)).await
        })
    };
    let (mut a, ca) = connect(&gw).await;
    let pushed = waiter.await.expect("join").expect("pushed once connected");
    assert_eq!(pushed.len(), 601);
    assert!(pushed.iter().all(|p| p.conn == ca));
    for p in &pushed[..600] {
        let frame = next_json(&mut a).await;
        assert_eq!(message_id(&frame), p.message_id, "push order kept");
        send(&mut a, ack_text(&p.message_id)).await;
    }
    let raw = tokio::time::timeout(T, a.next())
        .await
        .expect("raw in time");
    assert!(matches!(raw, Some(Ok(Message::Text(t))) if t.as_str() == "raw!"));
    let ids: Vec<&str> = pushed[..600]
        .iter()
        .map(|p| p.message_id.as_str())
        .collect();
    gw.wait_acked(&ids, T).await.expect("all ACKed");
    let counts = gw.counts();
    assert_eq!(
        (counts.pushed, counts.messages_acked, counts.awaiting_ack),
        (600, 600, 0)
    );

    let err = gw
        .wait_acked(&["never-pushed"], Duration::from_millis(50))
        .await
        .expect_err("not ACKed");
    assert!(err.to_string().contains("never-pushed"), "{err}");

    let (_b, cb) = connect(&gw).await;
    let spread = gw
        .push_many((0..200).map(kib_frame), Route::Random)
        .await
        .expect("random");
    let conns: HashSet<ConnId> = spread.iter().map(|p| p.conn).collect();
    assert_eq!(
        conns,
        [ca, cb].into_iter().collect(),
        "both connections used"
    );
    gw.send_disconnect(cb).expect("disconnect");
    assert_eq!(
        gw.push_many([kib_frame(1)], Route::To(cb)).await.err(),
        Some(PushError::Draining(cb))
    );
    assert_eq!(
        gw.push_many([kib_frame(1)], Route::To(ConnId(999)))
            .await
            .err(),
        Some(PushError::UnknownConnection(ConnId(999)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_storm_tells_every_new_connection_to_go_and_counts_them() {
    // A long grace: all three stay open until the clients leave, so they overlap for sure.
    let storm =
        DisconnectStorm::for_window(Duration::from_secs(600)).with_grace(Duration::from_secs(600));
    let gw = start(|c| c.disconnect_storm = Some(storm)).await;
    assert!(gw.disconnect_storm_active());
    let cursor = gw.subscribe();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (mut ws, conn) = connect(&gw).await;
        let first = next_json(&mut ws).await;
        assert_eq!(first["type"], "SYSTEM");
        assert_eq!(first["headers"]["topic"], "disconnect");
        assert_eq!(
            first["headers"]["connectionId"],
            gw.connection_ticket(conn).expect("ticket").as_str()
        );
        assert_eq!(
            gw.push(kib_frame(0), Route::To(conn)).await.err(),
            Some(PushError::Draining(conn)),
            "nothing is delivered on a stormed connection"
        );
        clients.push((ws, conn));
    }
    assert_eq!(
        gw.push(kib_frame(0), Route::Random).await.err(),
        Some(PushError::NoConnection)
    );
    for (ws, conn) in clients {
        drop(ws);
        gw.wait_for(is_closed(conn, &CloseReason::Eof), T)
            .await
            .expect("client left");
    }
    let spans = cursor.connection_spans();
    assert_eq!(spans.len(), 3);
    assert!(
        spans
            .iter()
            .all(|s| s.opened.is_some() && s.closed.is_some())
    );
    assert_eq!(cursor.max_opened_within(Duration::from_secs(10)), 3);
    assert_eq!(cursor.max_open_at_once(), 3);
    assert_eq!(gw.max_open_at_once(), 3, "the whole log agrees");

    // Switched at run time, with a short grace: the gateway closes the connection itself.
    let storm = DisconnectStorm::until_off().with_grace(Duration::from_millis(100));
    gw.set_disconnect_storm(Some(storm));
    let (mut ws, conn) = connect(&gw).await;
    assert_eq!(next_json(&mut ws).await["headers"]["topic"], "disconnect");
    gw.wait_for(is_closed(conn, &CloseReason::AfterDisconnect), T)
        .await
        .expect("closed after the grace");

    // Off again: a new connection gets deliveries.
    gw.set_disconnect_storm(None);
    assert!(!gw.disconnect_storm_active());
    let (mut ws, conn) = connect(&gw).await;
    let pushed = gw
        .push(kib_frame(7), Route::To(conn))
        .await
        .expect("pushed");
    assert_eq!(message_id(&next_json(&mut ws).await), pushed.message_id);
    assert_eq!(gw.counts().connections_opened, 5);
}

#[tokio::test]
async fn disconnect_storm_window_ends_by_itself() {
    let gw =
        start(|c| c.disconnect_storm = Some(DisconnectStorm::for_window(Duration::ZERO))).await;
    assert!(
        !gw.disconnect_storm_active(),
        "a zero window is already over"
    );
    let (mut ws, conn) = connect(&gw).await;
    let pushed = gw
        .push(kib_frame(1), Route::To(conn))
        .await
        .expect("pushed");
    assert_eq!(message_id(&next_json(&mut ws).await), pushed.message_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_log_records_each_push_and_the_first_successful_ack_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("acks.log");
    let gw = start(|c| c.ack_log = Some(path.clone())).await;
    let (mut ws, conn) = connect(&gw).await;
    let bot_a = dingtalk_streamd_sim::BotMessage::text("a");
    let bot_b = dingtalk_streamd_sim::BotMessage::text("b");
    let (msg_a, msg_b) = (bot_a.msg_id.clone(), bot_b.msg_id.clone());
    let frames = [
        bot_a.into_frame(),
        bot_b.into_frame(),
        OutFrame::event("user_add_org", &json!({"userId": ["u1"]})),
        OutFrame::raw("{}"),
    ];
    let pushed = gw.push_many(frames, Route::To(conn)).await.expect("pushed");
    let ids: Vec<String> = pushed[..3].iter().map(|p| p.message_id.clone()).collect();
    let (a, b, e) = (&ids[0], &ids[1], &ids[2]);
    for _ in 0..3 {
        next_json(&mut ws).await;
    }
    let ping = gw.send_ping(conn).expect("ping");
    send(&mut ws, ack_with(a, r#"{"status":"LATER"}"#)).await;
    send(&mut ws, ack_text(b)).await;
    send(&mut ws, ack_text(b)).await;
    send(&mut ws, ack_text(e)).await;
    send(&mut ws, ack_text(a)).await;
    send(&mut ws, ack_with(&ping.message_id, "{}")).await;
    gw.wait_until(|g| g.counts().acks_received == 6, T)
        .await
        .expect("every ACK read");
    let counts = gw.counts();
    assert_eq!((counts.pushed, counts.messages_acked), (3, 3));
    gw.shutdown().await;

    let log = std::fs::read_to_string(&path).expect("ACK log written");
    let want = format!(
        "pushed {a} {msg_a}\npushed {b} {msg_b}\npushed {e} -\nacked {b}\nacked {e}\nacked {a}\n"
    );
    assert_eq!(log, want);
}

/// The binary: `--disconnect-storm`, `/storm off`, a typed message, `/status`, `--ack-log`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_storm_status_and_ack_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("acks.log");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dingtalk-streamd-sim"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--no-tls",
            "--ping-interval",
            "off",
        ])
        .args(["--disconnect-storm", "on", "--disconnect-grace", "60s"])
        .arg("--state-dir")
        .arg(dir.path())
        .arg("--ack-log")
        .arg(&log)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("simulator starts");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut line_with = async |prefix: &str| loop {
        let line = tokio::time::timeout(T, lines.next_line())
            .await
            .expect("output in time")
            .expect("stdout readable")
            .expect("line before EOF");
        if let Some(rest) = line.trim().strip_prefix(prefix) {
            break rest.to_owned();
        }
    };
    let open_url = line_with("open_url: ").await.trim_matches('"').to_owned();
    let addr: std::net::SocketAddr = open_url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .expect("host:port")
        .parse()
        .expect("address");

    let mut stormed = dial(&open_url, addr, false).await;
    assert_eq!(
        next_json(&mut stormed).await["headers"]["topic"],
        "disconnect"
    );
    stdin.write_all(b"/storm off\n").await.expect("stdin");
    line_with("disconnect storm off").await;

    let mut ws = dial(&open_url, addr, false).await;
    stdin.write_all(b"hello soak\n").await.expect("stdin");
    let frame = next_json(&mut ws).await;
    assert_eq!(frame["type"], "CALLBACK");
    let data: Value = serde_json::from_str(frame["data"].as_str().expect("str")).expect("json");
    let msg_id = data["msgId"].as_str().expect("msgId").to_owned();
    let id = message_id(&frame);
    send(&mut ws, ack_text(&id)).await;
    // The gateway answers our close only after reading what came before it: the ACK.
    ws.close(None).await.expect("close sent");
    while let Some(Ok(_)) = tokio::time::timeout(T, ws.next())
        .await
        .expect("closed in time")
    {}

    stdin.write_all(b"/status\n").await.expect("stdin");
    let status = line_with("status: ").await;
    for want in [
        "connections opened: 2;",
        "pushed: 1;",
        "messages ACKed: 1;",
        "awaiting ACK: 0",
        "disconnect storm: off",
    ] {
        assert!(status.contains(want), "{want:?} in {status:?}");
    }
    drop(stormed);

    let pid =
        nix::unistd::Pid::from_raw(i32::try_from(child.id().expect("pid")).expect("pid fits"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM sent");
    let status = tokio::time::timeout(T, child.wait())
        .await
        .expect("exits in time")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    let written = std::fs::read_to_string(&log).expect("ACK log");
    assert_eq!(written, format!("pushed {id} {msg_id}\nacked {id}\n"));
}
