//! Redeliveries are ACKed again but stored and delivered once: by messageId, by
//! bot msgId or eventId under a new messageId, across a daemon restart and across two
//! overlapping connections.

mod common;

use common::*;
use dingtalk_streamd_sim::{BotMessage, OutFrame, Route};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn same_message_id_is_acked_again_and_delivered_once() {
    let gw = gateway(false).await;
    let d = Daemon::start(&gw, "").await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let mut tap = d.tap().await;
    let bot = BotMessage::text("once");
    let first = gw
        .push(bot.clone().into_frame(), Route::Random)
        .await
        .unwrap();
    wait_acked(&gw, &[&first.message_id]).await;
    let v = tap.expect_message(&first.message_id).await;
    gw.push(
        bot.into_frame().with_message_id(&first.message_id),
        Route::Random,
    )
    .await
    .unwrap();
    gw.wait_until(|g| g.acks(&first.message_id).len() == 2, WAIT)
        .await
        .unwrap();
    let marker = gw.push_bot_text("marker").await.unwrap();
    let m = tap.expect_message(&marker.message_id).await;
    assert_eq!(
        m["seq"].as_u64(),
        v["seq"].as_u64().map(|s| s + 1),
        "no seq spent on the duplicate"
    );
    let st = d.status().await;
    assert_eq!(
        (
            st["spool"]["stored"].as_u64(),
            st["spool"]["duplicates"].as_u64()
        ),
        (Some(2), Some(1)),
        "{st}"
    );
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn same_bot_msg_id_or_event_id_under_a_new_message_id_is_a_duplicate() {
    let gw = gateway(false).await;
    let d = Daemon::start(&gw, "").await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let mut tap = d.tap().await;

    let bot = BotMessage::text("same msgId");
    let a = gw
        .push(bot.clone().into_frame(), Route::Random)
        .await
        .unwrap();
    let b = gw.push(bot.into_frame(), Route::Random).await.unwrap();
    assert_ne!(a.message_id, b.message_id);

    let event = |event_id: &str| match OutFrame::event("user_add_org", &json!({"userId": ["u1"]})) {
        OutFrame::Envelope(mut env) => {
            env.headers.insert("eventId".into(), event_id.into());
            OutFrame::Envelope(env)
        }
        raw => raw,
    };
    let e1 = gw.push(event("ev-0001"), Route::Random).await.unwrap();
    let e2 = gw.push(event("ev-0001"), Route::Random).await.unwrap();
    assert_ne!(e1.message_id, e2.message_id);
    wait_acked(
        &gw,
        &[&a.message_id, &b.message_id, &e1.message_id, &e2.message_id],
    )
    .await;
    for ack in gw.acks(&e2.message_id) {
        assert_eq!(
            (ack.code, ack.data.contains("SUCCESS")),
            (200, true),
            "{ack:?}"
        );
    }
    let marker = gw.push_bot_text("marker").await.unwrap();
    tap.expect_message(&a.message_id).await;
    tap.expect_message(&e1.message_id).await;
    tap.expect_message(&marker.message_id).await;
    assert_eq!(d.status().await["spool"]["duplicates"], 2);
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn dedupe_survives_a_restart() {
    let gw = gateway(false).await;
    let d = Daemon::start(&gw, "").await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let bot = BotMessage::text("before restart");
    let first = gw
        .push(bot.clone().into_frame(), Route::Random)
        .await
        .unwrap();
    wait_acked(&gw, &[&first.message_id]).await;
    let (r, paths) = d.stop().await;
    r.unwrap();

    let d = Daemon::start_at(paths, &gw, "").await;
    gw.wait_until(|g| g.open_connections().len() == 1, WAIT)
        .await
        .unwrap();
    let mut tap = d.tap().await;
    let same_id = gw
        .push(
            bot.clone().into_frame().with_message_id(&first.message_id),
            Route::Random,
        )
        .await
        .unwrap();
    let same_msg = gw.push(bot.into_frame(), Route::Random).await.unwrap();
    gw.wait_until(|g| g.acks(&first.message_id).len() == 2, WAIT)
        .await
        .unwrap();
    wait_acked(&gw, &[&same_id.message_id, &same_msg.message_id]).await;
    let marker = gw.push_bot_text("marker").await.unwrap();
    let v = tap.expect_message(&marker.message_id).await;
    assert_eq!(
        v["seq"], 2,
        "seq continues after the one stored message: {v}"
    );
    assert_eq!(d.status().await["spool"]["duplicates"], 2);
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn dedupe_works_across_two_overlapping_connections() {
    let gw = gateway_with(|c| {
        c.redeliver_after = Some(Duration::from_millis(300));
        c.max_redeliveries = 20;
    })
    .await;
    let d = Daemon::start(&gw, "").await;
    let c1 = gw.wait_connected(1, WAIT).await.unwrap()[0];
    let mut tap = d.tap().await;
    let bot = BotMessage::text("handover");
    let first = gw
        .push(bot.clone().into_frame(), Route::To(c1))
        .await
        .unwrap();
    wait_acked(&gw, &[&first.message_id]).await;
    gw.send_disconnect(c1).unwrap();
    let both = gw.wait_connected(2, WAIT).await.unwrap();
    let c2 = *both
        .iter()
        .find(|c| **c != c1)
        .expect("a second connection");
    // While c1 drains, the same message comes again on c2: as the same messageId and as the
    // same msgId under a new messageId (what DingTalk does on a redelivery to another node).
    gw.push(
        bot.clone().into_frame().with_message_id(&first.message_id),
        Route::To(c2),
    )
    .await
    .unwrap();
    let other = gw.push(bot.into_frame(), Route::To(c2)).await.unwrap();
    gw.wait_until(|g| g.acks(&first.message_id).len() == 2, WAIT)
        .await
        .unwrap();
    wait_acked(&gw, &[&other.message_id]).await;
    let acks = gw.acks(&first.message_id);
    assert_eq!(
        (acks[0].conn, acks[1].conn),
        (c1, c2),
        "each ACK on the connection the frame came on"
    );
    assert!(gw.acks(&other.message_id).iter().all(|a| a.conn == c2));
    let marker = gw
        .push(OutFrame::bot_text("marker"), Route::To(c2))
        .await
        .unwrap();
    tap.expect_message(&first.message_id).await;
    tap.expect_message(&marker.message_id).await;
    assert!(
        gw.unacked().is_empty(),
        "nothing left for the fake to redeliver: {:?}",
        gw.unacked()
    );
    d.stop().await.0.unwrap();
}
