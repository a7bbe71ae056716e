//! The bridge end to end: frames from the fake gateway reach taps complete and in order, and
//! every frame is ACKed with the right shape on the connection it came on.

mod common;

use common::*;
use dingtalk_streamd_sim::{GatewayEvent, OutFrame, Route};

#[tokio::test]
async fn n_messages_reach_two_taps_complete_and_in_order() {
    let gw = gateway(true).await;
    let d = Daemon::start(&gw, "").await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let mut a = d.tap().await;
    let mut b = d.tap().await;
    // Give the taps' hello window a chance to pass with traffic flowing: messages committed
    // during it are held for them, not lost.
    const N: usize = 200;
    let mut sent = Vec::new();
    for i in 0..N {
        let p = gw.push_bot_text(&format!("message {i}")).await.unwrap();
        sent.push(p.message_id);
    }
    for tap in [&mut a, &mut b] {
        let mut last_seq = 0;
        for (i, mid) in sent.iter().enumerate() {
            let v = tap.next().await;
            assert_eq!(v["message_id"], mid.as_str(), "line {i}: {v}");
            assert_eq!(v["data"]["text"]["content"], format!("message {i}"));
            assert_eq!(v["type"], "CALLBACK");
            assert_eq!(v["topic"], "/v1.0/im/bot/messages/get");
            assert_eq!(v["connection"], "c1");
            assert!(
                v["headers"].get("connectionId").is_none(),
                "ticket leaked: {v}"
            );
            let seq = v["seq"].as_u64().unwrap();
            assert!(seq > last_seq);
            last_seq = seq;
        }
    }
    for mid in &sent {
        gw.wait_until(|g| !g.acks(mid).is_empty(), WAIT)
            .await
            .unwrap();
        let ack = &gw.acks(mid)[0];
        assert_eq!(ack.code, 200);
        assert_eq!(ack.data, r#"{"response":null}"#);
    }
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn ping_and_ack_shapes_and_malformed_frames_survived() {
    let gw = gateway(false).await;
    let d = Daemon::start(&gw, "").await;
    let conn = gw.wait_connected(1, WAIT).await.unwrap()[0];
    let mut tap = d.tap().await;

    let ping = gw.send_ping(conn).unwrap();
    let ev = gw
        .wait_for(|e| matches!(e, GatewayEvent::PingAcked { message_id, .. } if *message_id == ping.message_id), WAIT)
        .await
        .unwrap();
    assert!(
        matches!(
            ev.event,
            GatewayEvent::PingAcked {
                opaque_ok: true,
                ..
            }
        ),
        "{ev:?}"
    );

    for raw in [
        "not json",
        "{\"type\":\"CALLBACK\",\"headers\":{}}",
        "[1,2,3]",
        "{\"type\":\"EVENT\",\"headers\":{\"messageId\":5}",
    ] {
        gw.push(OutFrame::raw(raw), Route::To(conn)).await.unwrap();
    }
    let ev = gw
        .push_event("user_add_org", &serde_json::json!({"userId":["u1"]}))
        .await
        .unwrap();
    let v = tap.next().await;
    assert_eq!(v["message_id"], ev.message_id.as_str());
    assert_eq!(v["type"], "EVENT");
    assert_eq!(v["headers"]["eventType"], "user_add_org");
    gw.wait_until(|g| !g.acks(&ev.message_id).is_empty(), WAIT)
        .await
        .unwrap();
    let ack = &gw.acks(&ev.message_id)[0];
    let data: serde_json::Value = serde_json::from_str(&ack.data).unwrap();
    assert_eq!((ack.code, data["status"].as_str()), (200, Some("SUCCESS")));
    assert_eq!(ack.conn, conn);

    let disc = gw.send_disconnect(conn).unwrap();
    gw.wait_until(|g| !g.acks(&disc.message_id).is_empty(), WAIT)
        .await
        .unwrap();
    assert_eq!(gw.acks(&disc.message_id)[0].code, 200);
    let st = d.status().await;
    assert_eq!(st["stream"]["malformed_frames"], 4, "{st}");
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn a_frame_over_max_frame_bytes_ends_the_connection_unacked_and_the_daemon_recovers() {
    let gw = gateway(false).await;
    let d = Daemon::start(&gw, "limits:\n  max_frame_bytes: 4KiB\n").await;
    let conn = gw.wait_connected(1, WAIT).await.unwrap()[0];
    let mut tap = d.tap().await;

    // 8 KiB of text: over the limit. The connection is closed (never ACKed, so DingTalk keeps
    // the message), and a fresh connection replaces it.
    let big = gw.push_bot_text(&"x".repeat(8 * 1024)).await.unwrap();
    gw.wait_for(
        |e| matches!(e, GatewayEvent::Closed { conn: c, .. } if *c == conn),
        WAIT,
    )
    .await
    .unwrap();
    gw.wait_until(|g| g.open_connections().iter().any(|c| *c != conn), WAIT)
        .await
        .unwrap();
    assert!(
        gw.acks(&big.message_id).is_empty(),
        "an oversized frame was ACKed"
    );

    let small = gw.push_bot_text("small enough").await.unwrap();
    let v = tap.next().await;
    assert_eq!(v["message_id"], small.message_id.as_str(), "{v}");
    let st = d.status().await;
    assert_eq!(st["link"]["last_cause"], "frame_too_large", "{st}");
    d.stop().await.0.unwrap();
}
