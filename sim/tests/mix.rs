//! The benchmark mix: `burst`/`pace` and the spool filler `fill` (library and the binary's
//! `/burst`, `/pace`, `/fill`) and the timestamped ACK log (`--ack-log-times`).
//!
//! Real sockets on 127.0.0.1:0, plain ws://; every wait has a deadline.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dingtalk_streamd_sim::{FakeGateway, GatewayConfig, MIX_EVENT_TYPE};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const T: Duration = Duration::from_secs(10);

/// Ticket from `open_url`, then the WebSocket (plain).
async fn dial(open_url: &str) -> Ws {
    let body = json!({"clientId": "sim-client", "clientSecret": "sim-secret", "subscriptions": []});
    let url = common::ws_url_from(open_url, &body, T).await;
    tokio_tungstenite::connect_async(url)
        .await
        .expect("WebSocket connects")
        .0
}

/// Reads `n` frames and ACKs each; returns them.
async fn read_and_ack(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut frames = Vec::new();
    while frames.len() < n {
        let msg = tokio::time::timeout(T, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("ok");
        let Message::Text(text) = msg else { continue };
        let frame: Value = serde_json::from_str(text.as_str()).expect("JSON");
        let ack = json!({
            "code": 200,
            "headers": {"messageId": frame["headers"]["messageId"], "contentType": "application/json"},
            "message": "OK",
            "data": "{}",
        });
        ws.send(Message::text(ack.to_string()))
            .await
            .expect("ACK sent");
        frames.push(frame);
    }
    frames
}

fn is_event(frame: &Value) -> bool {
    frame["type"] == "EVENT" && frame["headers"]["eventType"] == MIX_EVENT_TYPE
}

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_micros()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_and_pace_push_the_mix_and_the_ack_log_has_times() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("acks.log");
    let gw = FakeGateway::start(GatewayConfig {
        ack_log: Some(path.clone()),
        ack_log_times: true,
        ..GatewayConfig::default()
    })
    .await
    .expect("gateway starts");
    let before = now_us();
    let mut ws = dial(&gw.open_url()).await;

    let pushed = gw.burst(20, T).await.expect("burst queued");
    assert_eq!(pushed.len(), 20);
    let frames = read_and_ack(&mut ws, 20).await;
    let events: Vec<usize> = (1..=20).filter(|&i| is_event(&frames[i - 1])).collect();
    assert_eq!(events, [10, 20], "every 10th frame is an event");
    let data: Value = serde_json::from_str(frames[0]["data"].as_str().expect("str")).expect("json");
    assert_eq!(data["text"]["content"], "bench message 1");

    let started = Instant::now();
    let (report, frames) = tokio::join!(gw.pace(5, 200.0, T), read_and_ack(&mut ws, 5));
    let report = report.expect("paced");
    assert_eq!(report.pushed, 5);
    assert!(
        started.elapsed() >= Duration::from_millis(20),
        "4 periods of 5 ms"
    );
    assert_eq!(frames.len(), 5);
    gw.wait_until(|g| g.counts().messages_acked == 25, T)
        .await
        .expect("every ACK read");
    gw.shutdown().await;

    let log = std::fs::read_to_string(&path).expect("ACK log");
    let (mut pushed_at, mut acked_at) = (HashMap::new(), HashMap::new());
    for line in log.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let t: u128 = f.last().expect("time").parse().expect("µs number");
        assert!(t >= before && t <= now_us(), "wall-clock µs: {line}");
        match (f[0], f.len()) {
            ("pushed", 4) => pushed_at.insert(f[1].to_owned(), t),
            ("acked", 3) => acked_at.insert(f[1].to_owned(), t),
            _ => panic!("unexpected line {line:?}"),
        };
    }
    assert_eq!((pushed_at.len(), acked_at.len()), (25, 25));
    for (id, acked) in &acked_at {
        assert!(*acked >= pushed_at[id], "{id} ACKed after its push");
    }
}

/// The binary: `/burst`, `/pace`, their usage errors, and `--ack-log-times`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_burst_and_pace_commands() {
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
        .arg("--state-dir")
        .arg(dir.path())
        .arg("--ack-log")
        .arg(&log)
        .arg("--ack-log-times")
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
    let mut ws = dial(&open_url).await;

    stdin
        .write_all(b"/burst x\n/pace 3\n")
        .await
        .expect("stdin");
    line_with("usage: /burst N").await;
    line_with("usage: /pace N RATE").await;

    stdin.write_all(b"/burst 10\n").await.expect("stdin");
    let frames = read_and_ack(&mut ws, 10).await;
    assert!(is_event(&frames[9]), "the 10th frame is an event");
    assert!(
        line_with("burst: ")
            .await
            .starts_with("10 frames queued in ")
    );

    stdin.write_all(b"/pace 3 100\n").await.expect("stdin");
    read_and_ack(&mut ws, 3).await;
    let paced = line_with("pace: ").await;
    assert!(paced.starts_with("3 frames in "), "{paced}");

    stdin.write_all(b"/status\n").await.expect("stdin");
    let status = line_with("status: ").await;
    assert!(status.contains("pushed: 13;"), "{status}");
    stdin.write_all(b"/quit\n").await.expect("stdin");
    let status = tokio::time::timeout(T, child.wait())
        .await
        .expect("exits in time")
        .expect("wait");
    assert!(status.success(), "{status:?}");
    let written = std::fs::read_to_string(&log).expect("ACK log");
    let pushed = written.lines().filter(|l| l.starts_with("pushed ")).count();
    assert_eq!(pushed, 13);
    assert!(written.lines().all(|l| {
        l.rsplit(' ')
            .next()
            .is_some_and(|t| t.parse::<u128>().is_ok())
    }));
}

/// Reads `n` frames without ACKing them.
async fn read_only(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut frames = Vec::new();
    while frames.len() < n {
        let msg = tokio::time::timeout(T, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("ok");
        let Message::Text(text) = msg else { continue };
        frames.push(serde_json::from_str(text.as_str()).expect("JSON"));
    }
    frames
}

async fn ack_all(ws: &mut Ws, frames: &[Value]) {
    for frame in frames {
        let ack = json!({
            "code": 200,
            "headers": {"messageId": frame["headers"]["messageId"], "contentType": "application/json"},
            "message": "OK",
            "data": "{}",
        });
        ws.send(Message::text(ack.to_string()))
            .await
            .expect("ACK sent");
    }
}

/// `fill` pushes small bot messages, never more than its window awaiting an ACK, and returns
/// once every one is ACKed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fill_keeps_at_most_its_window_unacked_and_waits_for_every_ack() {
    let gw = FakeGateway::start(GatewayConfig::default())
        .await
        .expect("gateway starts");
    let mut ws = dial(&gw.open_url()).await;
    let filler = {
        let gw = gw.clone();
        tokio::spawn(async move { gw.fill(25, 10, T).await })
    };
    // Withhold the ACKs: the fill stops at its window (it waits for ACKs, nothing else).
    let first = read_only(&mut ws, 10).await;
    assert_eq!(gw.counts().pushed, 10, "no more than the window unACKed");
    ack_all(&mut ws, &first).await;
    let rest = read_and_ack(&mut ws, 15).await;
    let report = tokio::time::timeout(T, filler)
        .await
        .expect("fill returns in time")
        .expect("task")
        .expect("fill ok");
    assert_eq!(report.acked, 25);
    assert_eq!(gw.counts().pushed, 25);
    for (i, frame) in first.iter().chain(&rest).enumerate() {
        assert_eq!(frame["type"], "CALLBACK");
        assert_eq!(frame["headers"]["topic"], "/v1.0/im/bot/messages/get");
        let data: Value = serde_json::from_str(frame["data"].as_str().expect("str")).expect("json");
        assert_eq!(data["text"]["content"], format!("fill {}", i + 1));
        assert!(data["msgId"].as_str().is_some_and(|m| m.starts_with("msg")));
        assert!(frame.to_string().len() < 600, "a small frame");
    }
    gw.shutdown().await;
}

/// The binary's `/fill N [WINDOW]` and its usage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_fill_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dingtalk-streamd-sim"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--no-tls",
            "--ping-interval",
            "off",
        ])
        .arg("--state-dir")
        .arg(dir.path())
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
    let mut ws = dial(&open_url).await;

    stdin
        .write_all(b"/fill x\n/fill 3 0\n")
        .await
        .expect("stdin");
    line_with("usage: /fill N [WINDOW]").await;
    line_with("usage: /fill N [WINDOW]").await;

    stdin.write_all(b"/fill 30 7\n").await.expect("stdin");
    read_and_ack(&mut ws, 30).await;
    let filled = line_with("fill: ").await;
    assert!(filled.starts_with("30 frames ACKed in "), "{filled}");
    stdin.write_all(b"/status\n").await.expect("stdin");
    let status = line_with("status: ").await;
    assert!(status.contains("messages ACKed: 30;"), "{status}");
    stdin.write_all(b"/quit\n").await.expect("stdin");
    let status = tokio::time::timeout(T, child.wait())
        .await
        .expect("exits in time")
        .expect("wait");
    assert!(status.success(), "{status:?}");
}
