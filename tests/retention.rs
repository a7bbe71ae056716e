//! What the spool keeps and how long: a message stays until every known group acked it;
//! max_age and max_bytes force out unacked messages loudly (counted in status); and callback
//! ACKs carry the consumer's response, or null after the topic's timeout.

mod common;

use common::*;
use dingtalk_streamd_sim::{FakeGateway, OutFrame, Route, TOPIC_CARD_CALLBACK};
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test]
async fn max_age_forces_out_unacked_messages_counted_in_status() {
    let gw = gateway(false).await;
    let d = Daemon::start_with_spool(&gw, "  max_age: 1s\n", "groups: [bot]\n").await;
    gw.wait_connected(1, WAIT).await.unwrap();
    push_acked(&gw, 3, "old").await;
    let st = d
        .status_until("3 forced out", |s| s["spool"]["forced_out_unacked"] == 3)
        .await;
    assert_eq!(st["spool"]["messages"], 0, "{st}");
    // The group that never came is not stuck on messages that are gone.
    let fresh = gw.push_bot_text("fresh").await.unwrap();
    let mut m = d.member("bot").await;
    let v = m.next().await;
    assert_eq!(v["message_id"], fresh.message_id.as_str(), "{v}");
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn max_bytes_forces_out_the_oldest_unacked_messages_counted_in_status() {
    let gw = gateway(false).await;
    let d = Daemon::start_with_spool(&gw, "  max_bytes: 1MiB\n", "groups: [bot]\n").await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..40 {
        let p = gw
            .push(
                OutFrame::bot_text(&big_text(&format!("m{i}"), 40)),
                Route::Random,
            )
            .await
            .unwrap();
        ids.push(p.message_id);
    }
    wait_acked(&gw, &ids).await;
    let st = d
        .status_until("forced out", |s| {
            s["spool"]["forced_out_unacked"].as_u64() > Some(0)
                && s["spool"]["bytes"].as_u64() <= Some(1024 * 1024)
        })
        .await;
    let forced = st["spool"]["forced_out_unacked"].as_u64().unwrap();
    let kept = st["spool"]["messages"].as_u64().unwrap();
    assert_eq!(
        forced + kept,
        40,
        "every message is either kept or counted: {st}"
    );
    assert!(kept >= 15, "only what the bound needs is forced out: {st}");
    // The oldest went; the group gets the newest ones, in order.
    let mut m = d.member("bot").await;
    let first = m.next().await;
    assert_eq!(
        first["message_id"],
        ids[forced as usize].as_str(),
        "{}",
        first["seq"]
    );
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn a_message_stays_until_every_group_acked_it() {
    let gw = gateway(false).await;
    let d = Daemon::start(&gw, "groups: [a, b]\n").await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let p = gw.push_bot_text("kept").await.unwrap();
    wait_acked(&gw, &[&p.message_id]).await;
    let mut a = d.member("a").await;
    let v = a.next().await;
    a.ack(v["seq"].as_u64().unwrap()).await;
    d.status_until("a's ack", |s| s["groups"]["a"]["cursor"] == 1)
        .await;
    // Retention runs every second: give it two passes, the message must still be there.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(2500);
    while tokio::time::Instant::now() < deadline {
        assert_eq!(
            d.status().await["spool"]["messages"],
            1,
            "deleted before b acked it"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut b = d.member("b").await;
    let v = b.next().await;
    b.ack(v["seq"].as_u64().unwrap()).await;
    let st = d
        .status_until("the message gone", |s| s["spool"]["messages"] == 0)
        .await;
    assert_eq!(st["spool"]["forced_out_unacked"], 0, "{st}");
    d.stop().await.0.unwrap();
}

/// A connected daemon whose card callbacks go to group `cards` with `timeout`, and a member of
/// that group.
async fn card_callbacks(timeout: &str) -> (FakeGateway, Daemon, Consumer) {
    let gw = gateway(false).await;
    let extra = format!(
        "groups: [cards]\ncallbacks:\n  - {{ topic: {TOPIC_CARD_CALLBACK}, group: cards, timeout: {timeout} }}\n"
    );
    let d = Daemon::start(&gw, &extra).await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let m = d.member("cards").await;
    (gw, d, m)
}

#[tokio::test]
async fn callback_ack_carries_the_members_response_or_null_on_timeout() {
    let (gw, d, mut m) = card_callbacks("600ms").await;

    let p = gw
        .push(
            OutFrame::card_callback("track-1", "user-1", &json!({"k": "v"})),
            Route::Random,
        )
        .await
        .unwrap();
    let v = m.next().await;
    assert_eq!(v["message_id"], p.message_id.as_str());
    assert!(
        gw.acks(&p.message_id).is_empty(),
        "ACK held until the member answers"
    );
    let seq = v["seq"].as_u64().unwrap();
    m.send(&format!(
        "{{\"ack\":{seq},\"response\":{{\"cardData\":{{\"ok\":true}}}}}}"
    ))
    .await;
    wait_acked(&gw, &[&p.message_id]).await;
    let ack = &gw.acks(&p.message_id)[0];
    assert_eq!(ack.code, 200);
    let data: Value = serde_json::from_str(&ack.data).unwrap();
    assert_eq!(
        data,
        json!({"response": {"cardData": {"ok": true}}}),
        "{}",
        ack.data
    );

    // Nobody answers: after the topic's timeout the ACK goes out with a null response.
    let started = std::time::Instant::now();
    let q = gw
        .push(
            OutFrame::card_callback("track-2", "user-1", &json!({})),
            Route::Random,
        )
        .await
        .unwrap();
    let _unanswered = m.next().await;
    wait_acked(&gw, &[&q.message_id]).await;
    assert!(
        started.elapsed() >= Duration::from_millis(550),
        "ACKed before the timeout"
    );
    let data: Value = serde_json::from_str(&gw.acks(&q.message_id)[0].data).unwrap();
    assert_eq!(data, json!({"response": null}));

    d.stop().await.0.unwrap();
}

/// A plain `{"ack":seq}` on a held callback releases it at once with a null response: the
/// consumer will not answer again. The topic's timeout is 30 s, so a daemon that waited for it
/// instead cannot pass within `WAIT` (10 s).
#[tokio::test]
async fn a_plain_ack_releases_a_held_callback_at_once() {
    let (gw, d, mut m) = card_callbacks("30s").await;
    let r = gw
        .push(
            OutFrame::card_callback("track-3", "user-1", &json!({})),
            Route::Random,
        )
        .await
        .unwrap();
    let v = m.next().await;
    assert_eq!(v["message_id"], r.message_id.as_str(), "{v}");
    assert!(
        gw.acks(&r.message_id).is_empty(),
        "ACKed before the consumer answered"
    );
    m.ack(v["seq"].as_u64().unwrap()).await;
    wait_acked(&gw, &[&r.message_id]).await;
    assert_eq!(gw.acks(&r.message_id)[0].data, r#"{"response":null}"#);
    d.stop().await.0.unwrap();
}
