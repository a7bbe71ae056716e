//! A gateway that breaks the protocol, one case per test against the fake gateway: an oversized
//! frame, a binary frame, a text frame that is not UTF-8, a fragmented message never finished
//! (while pings are still answered), floods of SYSTEM and WebSocket pings, unknown frame types,
//! headers that are not strings, a WebSocket handshake that never completes, ticket answers
//! that are not JSON or never end, and a redelivery whose data differs. Each is survived:
//! skipped where the connection is still good, a reconnect where it is not, and the next
//! message is delivered and ACKed either way.

mod common;

use common::*;
use dingtalk_streamd_sim::{
    ConnId, FakeGateway, GatewayEvent, HandshakeFault, Misbehaviour, OutFrame, Route, TicketFault,
};
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

/// The test config's timers: ping 300 ms, pong 200 ms, connect timeout 2 s, backoff ≤ 400 ms.
const DEAD_WITHIN: Duration = Duration::from_millis(300 + 200);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_millis(400);

/// A daemon with a tap, connected to `gw`; returns them and the connection.
async fn daemon(gw: &FakeGateway, extra: &str) -> (Daemon, Consumer, ConnId) {
    let d = Daemon::start(gw, extra).await;
    let c = gw.wait_connected(1, WAIT).await.expect("connected")[0];
    let mut tap = d.tap().await;
    tap.first_push_through(gw, "before the fault").await;
    (d, tap, c)
}

/// A bot message pushed now reaches the tap and is ACKed: the daemon survived.
async fn still_delivers(gw: &FakeGateway, tap: &mut Consumer, what: &str) {
    let p = gw
        .push(OutFrame::bot_text(what), Route::Wait(WAIT))
        .await
        .expect("push");
    wait_acked(gw, &[&p.message_id]).await;
    loop {
        let v = tap.next().await;
        if v["message_id"] == p.message_id.as_str() {
            break;
        }
    }
}

/// Waits for a connection newer than `old`, no later than `within` from `since`.
async fn reconnected(gw: &FakeGateway, old: ConnId, since: Instant, within: Duration) -> ConnId {
    let c = new_connection(gw, old).await;
    let took = since.elapsed();
    assert!(
        took <= within + SLACK,
        "the replacement took {took:?} (bound {within:?})"
    );
    c
}

#[tokio::test]
async fn an_oversized_frame_ends_the_connection_unacked_and_it_reconnects() {
    let gw = gateway(false).await;
    let (d, mut tap, c1) = daemon(&gw, "limits:\n  max_frame_bytes: 64KiB\n").await;
    let big = format!(
        r#"{{"type":"CALLBACK","headers":{{"messageId":"big-1","topic":"/v1.0/im/bot/messages/get"}},"data":"{}"}}"#,
        "x".repeat(100 * 1024)
    );
    let at = Instant::now();
    gw.push(OutFrame::Raw(big), Route::To(c1)).await.unwrap();
    reconnected(&gw, c1, at, MAX_BACKOFF).await;
    assert!(gw.acks("big-1").is_empty(), "an oversized frame was ACKed");
    d.status_until("the cause", |s| {
        s["link"]["last_cause"] == "frame_too_large"
    })
    .await;
    still_delivers(&gw, &mut tap, "after the oversized frame").await;
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn a_binary_frame_is_skipped_and_the_connection_kept() {
    let gw = gateway(false).await;
    let (d, mut tap, c1) = daemon(&gw, "").await;
    gw.misbehave(c1, Misbehaviour::Binary(vec![0, 159, 146, 150]))
        .unwrap();
    still_delivers(&gw, &mut tap, "after a binary frame").await;
    assert_eq!(gw.open_connections(), vec![c1], "the connection was kept");
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn a_text_frame_that_is_not_utf8_ends_the_connection_and_it_reconnects() {
    let gw = gateway(false).await;
    let (d, mut tap, c1) = daemon(&gw, "").await;
    let at = Instant::now();
    gw.misbehave(c1, Misbehaviour::InvalidUtf8).unwrap();
    reconnected(&gw, c1, at, MAX_BACKOFF).await;
    d.status_until("the cause", |s| s["link"]["last_cause"] == "protocol_error")
        .await;
    still_delivers(&gw, &mut tap, "after invalid UTF-8").await;
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn a_fragmented_message_never_finished_is_a_dead_connection_although_pongs_flow() {
    let gw = gateway(false).await;
    let (d, mut tap, c1) = daemon(&gw, "").await;
    let mut pings = gw.subscribe();
    let at = Instant::now();
    gw.misbehave(c1, Misbehaviour::UnfinishedFragment).unwrap();
    // The gateway keeps answering the daemon's WebSocket pings meanwhile.
    pings
        .wait_for(
            |e| matches!(e, GatewayEvent::ClientWsPing { conn } if *conn == c1),
            WAIT,
        )
        .await
        .expect("the daemon pings the stuck connection");
    reconnected(&gw, c1, at, DEAD_WITHIN + DEAD_WITHIN + MAX_BACKOFF).await;
    d.status_until("the cause", |s| s["link"]["last_cause"] == "protocol_error")
        .await;
    still_delivers(&gw, &mut tap, "after an unfinished message").await;
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn floods_of_system_and_websocket_pings_are_answered_and_change_nothing() {
    let gw = gateway(false).await;
    let (d, mut tap, c1) = daemon(&gw, "").await;
    const N: usize = 2000;
    let mut ids = Vec::with_capacity(N);
    for _ in 0..N {
        ids.push(gw.send_ping(c1).unwrap().message_id);
    }
    gw.misbehave(c1, Misbehaviour::WsPings(N)).unwrap();
    for _ in 0..N {
        ids.push(gw.send_ping(c1).unwrap().message_id);
    }
    gw.wait_until(
        |g| {
            ids.iter()
                .all(|id| g.acks(id).iter().any(|a| a.code == 200))
        },
        WAIT,
    )
    .await
    .expect("every SYSTEM ping answered");
    still_delivers(&gw, &mut tap, "after the ping floods").await;
    assert_eq!(gw.open_connections(), vec![c1], "the connection was kept");
    let st = d.status().await;
    assert!(
        st["stream"]["pings_answered"].as_u64().unwrap() >= 2 * N as u64,
        "{st}"
    );
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn unknown_types_and_topics_are_skipped_and_headers_of_any_json_type_kept_as_text() {
    let gw = gateway(false).await;
    let (d, mut tap, c1) = daemon(&gw, "").await;
    for raw in [
        r#"{"specVersion":"1.0","type":"FUTURE","headers":{"messageId":"u-1","topic":"x"},"data":"{}"}"#,
        r#"{"type":"SYSTEM","headers":{"messageId":"u-2","topic":"rebalance"},"data":"{}"}"#,
        r#"{"type":"CALLBACK","headers":{"topic":"/v1.0/im/bot/messages/get"},"data":"no messageId"}"#,
        r#"{"type":"EVENT","headers":"not an object","data":"{}"}"#,
        r#"[1,2,3]"#,
    ] {
        gw.push(OutFrame::Raw(raw.into()), Route::To(c1))
            .await
            .unwrap();
    }
    let odd = r#"{"specVersion":"1.0","type":"CALLBACK","headers":{"messageId":"n-1","topic":"/v1.0/im/bot/messages/get","time":1700000000000,"retry":false,"attempt":2.5,"gone":null,"nested":{"a":[1]}},"data":"{\"msgId\":\"n1\",\"text\":{\"content\":\"numbers\"}}"}"#;
    gw.push(OutFrame::Raw(odd.into()), Route::To(c1))
        .await
        .unwrap();
    gw.wait_until(|g| g.acks("n-1").iter().any(|a| a.code == 200), WAIT)
        .await
        .expect("the frame with odd headers is stored and ACKed");
    let v = tap.next().await;
    assert_eq!(v["message_id"], "n-1", "{v}");
    let h = &v["headers"];
    assert_eq!(h["time"], "1700000000000", "{v}");
    assert_eq!(h["retry"], "false", "{v}");
    assert_eq!(h["attempt"], "2.5", "{v}");
    assert_eq!(h["nested"], r#"{"a":[1]}"#, "{v}");
    assert!(h.get("gone").is_none(), "{v}");
    let ack = gw.acks("u-2");
    assert_eq!(
        ack.first().map(|a| a.code),
        Some(404),
        "unknown SYSTEM topic"
    );
    assert!(gw.acks("u-1").is_empty(), "an unknown type was ACKed");
    still_delivers(&gw, &mut tap, "after the odd frames").await;
    assert_eq!(gw.open_connections(), vec![c1], "the connection was kept");
    let st = d.status().await;
    assert!(
        st["stream"]["malformed_frames"].as_u64().unwrap() >= 3,
        "{st}"
    );
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn a_websocket_handshake_that_never_completes_is_cut_at_connect_timeout() {
    let gw = gateway(false).await;
    let (d, mut tap, c1) = daemon(&gw, "").await;
    gw.set_handshake_fault(Some(HandshakeFault::hang().times(1)));
    let mut hung = gw.subscribe();
    let at = Instant::now();
    gw.drop_connection(c1).unwrap();
    hung.wait_for(|e| matches!(e, GatewayEvent::HandshakeHung), WAIT)
        .await
        .expect("the upgrade hangs");
    reconnected(&gw, c1, at, MAX_BACKOFF + CONNECT_TIMEOUT + MAX_BACKOFF).await;
    let st = d.status().await;
    assert_eq!(st["link"]["connections_opened"], 2, "{st}");
    still_delivers(&gw, &mut tap, "after a hung handshake").await;
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn a_ticket_answer_that_is_not_json_is_retried_without_echoing_it() {
    let gw = gateway(false).await;
    let (d, mut tap, c1) = daemon(&gw, "").await;
    let portal = "<html><body>Please log in to the guest network</body></html>";
    gw.set_ticket_fault(Some(TicketFault::body(200, portal).times(2)));
    gw.drop_connection(c1).unwrap();
    let st = d
        .status_until("the cause", |s| {
            s["link"]["last_cause"] == "ticket_bad_response"
        })
        .await;
    assert!(!st.to_string().contains("guest network"), "{st}");
    new_connection(&gw, c1).await;
    still_delivers(&gw, &mut tap, "after a captive portal").await;
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn a_ticket_answer_that_never_ends_is_cut_at_connect_timeout() {
    let gw = gateway(false).await;
    let (d, mut tap, c1) = daemon(&gw, "").await;
    gw.set_ticket_fault(Some(TicketFault::unfinished().times(1)));
    let mut begun = gw.subscribe();
    let at = Instant::now();
    gw.drop_connection(c1).unwrap();
    begun
        .wait_for(|e| matches!(e, GatewayEvent::TicketUnfinished), WAIT)
        .await
        .expect("the endless answer begins");
    reconnected(&gw, c1, at, MAX_BACKOFF + CONNECT_TIMEOUT + MAX_BACKOFF).await;
    d.status_until("the cause", |s| s["link"]["last_cause"] == "ticket_timeout")
        .await;
    still_delivers(&gw, &mut tap, "after an endless ticket answer").await;
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn a_redelivery_with_different_data_is_logged_acked_and_the_first_kept() {
    let gw = gateway(false).await;
    let p = Paths::new();
    p.configure(&gw, "");
    let mut d = start_run(&p, &[]).await;
    let c1 = gw.wait_connected(1, WAIT).await.unwrap()[0];
    let mut tap = Consumer::tap(&p.socket).await;
    tap.first_push_through(&gw, "before").await;
    let frame = |text: &str| {
        format!(
            r#"{{"specVersion":"1.0","type":"EVENT","headers":{{"messageId":"dup-1","topic":"*","eventType":"x"}},"data":"{{\"text\":\"{text}\"}}"}}"#
        )
    };
    gw.push(OutFrame::Raw(frame("first")), Route::To(c1))
        .await
        .unwrap();
    gw.wait_until(|g| !g.acks("dup-1").is_empty(), WAIT)
        .await
        .unwrap();
    gw.push(OutFrame::Raw(frame("second")), Route::To(c1))
        .await
        .unwrap();
    gw.wait_until(|g| g.acks("dup-1").len() == 2, WAIT)
        .await
        .expect("the redelivery is ACKed too");
    let v = tap.next().await;
    assert_eq!(v["message_id"], "dup-1");
    assert_eq!(v["data"]["text"], "first", "{v}");
    still_delivers(&gw, &mut tap, "after the duplicate").await;
    let line = d
        .wait_for("different data than the message stored", WAIT)
        .await;
    assert!(
        line.text.contains("dup-1") && line.text.contains("WARN"),
        "{}",
        line.text
    );
    let st = status(&p.control).await;
    assert_eq!(st["spool"]["duplicates"], 1, "{st}");
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(WAIT).await.code(), Some(0), "{}", d.stderr());
}
