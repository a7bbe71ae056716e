//! The local DingTalk-compatible endpoint (`compat:`) with a raw SDK-like client: frames as
//! DingTalk sends them (original headers and data string, a fresh messageId, the ticket as
//! connectionId), ACKs acking the group's seq, LATER / silence / a closed connection giving a
//! message again, the backlog, callback responses, tickets and local credentials, the
//! access-token cache and the OpenAPI proxy, and the goodbye at stop. The official SDKs run
//! against it in tests/compat_sdk.rs.

mod common;

use common::systemd::Service;
use common::*;
use dingtalk_streamd_sim::{FakeGateway, OutFrame, Route, TOPIC_CARD_CALLBACK};
use serde_json::{Value, json};
use std::time::Duration;

/// A daemon with the endpoint at `ep`, `consumers:` timers as given, and `extra` keys.
async fn daemon(gw: &FakeGateway, ep: &Endpoint, ack_wait: &str, extra: &str) -> Daemon {
    let p = Paths::new();
    let yaml = format!("{}consumers:\n  ack_wait: {ack_wait}\n{extra}", ep.yaml(&p));
    let d = Daemon::start_at(p, gw, &yaml).await;
    gw.wait_connected(1, WAIT).await.unwrap();
    d
}

/// The original `data` string of a push.
fn pushed_data(text: &str) -> String {
    let v: Value = serde_json::from_str(text).unwrap();
    v["data"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn frames_carry_the_original_headers_and_data_with_a_fresh_message_id() {
    let gw = gateway(false).await;
    let ep = Endpoint::new();
    let d = daemon(&gw, &ep, "30s", "").await;
    let mut sdk = Sdk::connect(&ep).await;
    let bot = gw.push_bot_text("hello sdk").await.unwrap();
    let ev = gw
        .push_event("user_add_org", &json!({"userId": ["u1"]}))
        .await
        .unwrap();
    for pushed in [&bot, &ev] {
        let f = sdk.push().await;
        let original: Value = serde_json::from_str(&pushed.text).unwrap();
        assert_eq!(f["specVersion"], "1.0");
        assert_eq!(f["type"], original["type"], "{f}");
        assert_eq!(
            f["data"],
            pushed_data(&pushed.text),
            "the original data string"
        );
        let h = &f["headers"];
        for key in ["topic", "appId", "time", "contentType"] {
            assert_eq!(h[key], original["headers"][key], "{key}: {f}");
        }
        if f["type"] == "EVENT" {
            assert_eq!(h["eventId"], original["headers"]["eventId"]);
            assert_eq!(h["eventType"], "user_add_org");
        }
        assert_ne!(
            h["messageId"],
            pushed.message_id.as_str(),
            "a fresh messageId"
        );
        assert_eq!(h["connectionId"], sdk.ticket.as_str(), "the ticket");
        assert!(h.as_object().unwrap().values().all(Value::is_string));
        sdk.ack(&f).await;
    }
    let st = d
        .status_until("both acked by the SDK", |s| {
            s["groups"]["sdk"]["acked"] == 2
        })
        .await;
    assert_eq!(st["groups"]["sdk"]["configured"], true, "{st}");
    assert_eq!(st["groups"]["sdk"]["members"], 1, "{st}");
    assert!(sdk.push_within(QUIET).await.is_none(), "nothing more");
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn later_or_no_ack_gives_the_message_again_after_ack_wait() {
    let gw = gateway(false).await;
    let ep = Endpoint::new();
    let d = daemon(&gw, &ep, "400ms", "").await;
    let mut sdk = Sdk::connect(&ep).await;
    gw.push_event("e", &json!({"n": 1})).await.unwrap();
    let first = sdk.push().await;
    // NODE's LATER: code 200, status LATER.
    sdk.ack_raw(&first, 200, "OK", r#"{"status":"LATER"}"#)
        .await;
    let again = sdk.push().await;
    assert_eq!(again["data"], first["data"]);
    assert_ne!(again["headers"]["messageId"], first["headers"]["messageId"]);
    // No ACK at all: given again after ack_wait.
    let third = sdk.push().await;
    assert_eq!(third["data"], first["data"]);
    // The ACK of an earlier delivery of the same message counts (a late SDK).
    sdk.ack(&again).await;
    d.status_until("acked", |s| s["groups"]["sdk"]["acked"] == 1)
        .await;
    sdk.ack(&third).await;
    assert!(sdk.push_within(Duration::from_millis(900)).await.is_none());
    let st = d.status().await;
    assert_eq!(st["groups"]["sdk"]["acked"], 1, "{st}");
    assert_eq!(st["groups"]["sdk"]["in_flight"], 0, "{st}");
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn a_closed_connection_hands_its_messages_to_another_at_once() {
    let gw = gateway(false).await;
    let ep = Endpoint::new();
    let d = daemon(&gw, &ep, "60s", "").await;
    let mut a = Sdk::connect(&ep).await;
    let mut b = Sdk::connect(&ep).await;
    d.status_until("two SDK members", |s| s["groups"]["sdk"]["members"] == 2)
        .await;
    gw.push_bot_text("one").await.unwrap();
    let (mut holder, mut other) = tokio::select! {
        f = a.push() => ((a, f), b),
        f = b.push() => ((b, f), a),
    };
    let held = holder.1.clone();
    holder.0.ws.close(None).await.unwrap();
    drop(holder);
    let f = other
        .push_within(Duration::from_secs(5))
        .await
        .expect("handed over at once");
    assert_eq!(text_of(&f), "one");
    assert_eq!(f["data"], held["data"]);
    other.ack(&f).await;
    d.status_until("acked", |s| s["groups"]["sdk"]["acked"] == 1)
        .await;
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn messages_wait_in_the_backlog_until_an_app_connects() {
    let gw = gateway(false).await;
    let ep = Endpoint::new();
    let d = daemon(&gw, &ep, "30s", "").await;
    let ids = push_acked(&gw, 3, "while away").await;
    d.status_until("backlog of 3", |s| s["groups"]["sdk"]["backlog"] == 3)
        .await;
    let mut sdk = Sdk::connect(&ep).await;
    let mut texts = Vec::new();
    for _ in &ids {
        let f = sdk.push().await;
        texts.push(text_of(&f));
        sdk.ack(&f).await;
    }
    assert_eq!(texts, ["while away 0", "while away 1", "while away 2"]);
    d.status_until("backlog drained", |s| s["groups"]["sdk"]["backlog"] == 0)
        .await;
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn a_callback_answer_reaches_dingtalk_as_the_response() {
    let gw = gateway(false).await;
    let ep = Endpoint::new();
    let extra =
        format!("callbacks:\n  - topic: {TOPIC_CARD_CALLBACK}\n    group: sdk\n    timeout: 5s\n");
    let d = daemon(&gw, &ep, "30s", &extra).await;
    let mut sdk = Sdk::connect(&ep).await;
    let card = gw
        .push(
            OutFrame::card_callback("card-1", "user-1", &json!({"action": "accept"})),
            Route::Random,
        )
        .await
        .unwrap();
    let f = sdk.push().await;
    assert_eq!(f["headers"]["topic"], TOPIC_CARD_CALLBACK);
    assert!(gw.acks(&card.message_id).is_empty(), "held for the answer");
    // PY's CallbackHandler: spaces after separators, message "".
    let answer = r#"{"response": {"cardData": {"cardParamMap": {"clicked": "yes"}}}}"#;
    sdk.ack_raw(&f, 200, "", answer).await;
    wait_acked(&gw, &[card.message_id.as_str()]).await;
    let ack = &gw.acks(&card.message_id)[0];
    let data: Value = serde_json::from_str(&ack.data).unwrap();
    assert_eq!(
        data,
        json!({"response": {"cardData": {"cardParamMap": {"clicked": "yes"}}}})
    );
    // A bot message (no route) is acked as usual.
    gw.push_bot_text("plain").await.unwrap();
    let f = sdk.push().await;
    sdk.ack_raw(&f, 200, "", r#"{"response": "OK"}"#).await;
    d.status_until("both acked", |s| s["groups"]["sdk"]["acked"] == 2)
        .await;
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn tickets_are_single_use_and_wrong_local_credentials_get_401() {
    let gw = gateway(false).await;
    let ep = Endpoint::new();
    let d = daemon(&gw, &ep, "30s", "").await;
    for (id, secret) in [
        (LOCAL_ID, "wrong"),
        ("other-app", LOCAL_SECRET),
        (gw.config().client_id.as_str(), SECRET),
    ] {
        let r = open(&ep, id, secret).await;
        assert_eq!(r.status(), 401, "{id}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["code"], "authFailed", "{v}");
        assert!(
            v["requestid"].is_string() && v["message"].is_string(),
            "{v}"
        );
        let r = access_token(&ep, id, secret).await;
        assert_eq!(r.status(), 401, "token for {id}");
        let v: Value = r.json().await.unwrap();
        assert!(v.get("accessToken").is_none(), "{v}");
    }
    let r = open(&ep, LOCAL_ID, LOCAL_SECRET).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let endpoint = v["endpoint"].as_str().unwrap().to_owned();
    assert_eq!(endpoint, format!("ws://127.0.0.1:{}/connect", ep.port));
    let ticket = v["ticket"].as_str().unwrap().to_owned();
    let mut first = Sdk::connect_with(&endpoint, &ticket).await;
    // The same ticket again: upgraded (a refused handshake makes NODE storm), then told to go.
    let mut second = Sdk::connect_with(&endpoint, &ticket).await;
    let f = second.frame_within(WAIT).await.expect("disconnect");
    assert_eq!(
        (f["type"].as_str(), f["headers"]["topic"].as_str()),
        (Some("SYSTEM"), Some("disconnect")),
        "{f}"
    );
    assert!(second.frame_within(WAIT).await.is_none(), "closed");
    let mut made_up = Sdk::connect_with(&endpoint, "made-up").await;
    assert_eq!(
        made_up.frame_within(WAIT).await.unwrap()["headers"]["topic"],
        "disconnect"
    );
    // The first connection works.
    gw.push_bot_text("still here").await.unwrap();
    let f = first.push().await;
    assert_eq!(text_of(&f), "still here");
    let r = http().get(ep.url("/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn the_access_token_is_shared_and_openapi_requests_are_forwarded() {
    let gw = gateway(false).await;
    let ep = Endpoint::new();
    let d = daemon(&gw, &ep, "30s", "").await;
    let (a, b) = tokio::join!(
        access_token(&ep, LOCAL_ID, LOCAL_SECRET),
        access_token(&ep, LOCAL_ID, LOCAL_SECRET)
    );
    let (a, b): (Value, Value) = (a.json().await.unwrap(), b.json().await.unwrap());
    assert_eq!(a["accessToken"], b["accessToken"], "one token for all");
    let issued = gw.tokens_issued();
    assert_eq!(issued.len(), 1, "single flight: one request to DingTalk");
    assert_eq!(a["accessToken"], issued[0].as_str());
    let left = a["expireIn"].as_u64().unwrap();
    assert!((7100..=7200).contains(&left), "{a}");
    let token = issued[0].clone();
    // A robot send through the proxy, exactly as an app makes it.
    let body = json!({"robotCode": "dingbot", "userIds": ["manager807"], "msgKey": "sampleText", "msgParam": "{\"content\":\"hi\"}"});
    let r = http()
        .post(ep.url("/v1.0/robot/oToMessages/batchSend?trace=1"))
        .header("x-acs-dingtalk-access-token", &token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["processQueryKey"].is_string(), "{v}");
    let sends = gw.robot_sends();
    assert_eq!(sends.len(), 1);
    assert_eq!(
        (sends[0].token.as_str(), &sends[0].body),
        (token.as_str(), &body)
    );
    // DingTalk's errors come back unchanged.
    let r = http()
        .post(ep.url("/v1.0/robot/oToMessages/batchSend"))
        .header("x-acs-dingtalk-access-token", "not-a-token")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "InvalidAuthentication");
    assert_eq!(gw.robot_sends().len(), 1);
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn the_app_gets_disconnect_then_close_when_the_daemon_stops() {
    let gw = gateway(false).await;
    let ep = Endpoint::new();
    let d = daemon(&gw, &ep, "30s", "").await;
    let mut sdk = Sdk::connect(&ep).await;
    d.status_until("member", |s| s["groups"]["sdk"]["members"] == 1)
        .await;
    let stop = tokio::spawn(d.stop());
    let mut saw_disconnect = false;
    while let Some(f) = sdk.frame_within(WAIT).await {
        match f["headers"]["topic"].as_str() {
            Some("ping") => {}
            Some("disconnect") if !saw_disconnect => saw_disconnect = true,
            _ => panic!("unexpected frame: {f}"),
        }
    }
    assert!(saw_disconnect, "disconnect before the close");
    stop.await.unwrap().0.unwrap();
    let r = http()
        .post(ep.url("/v1.0/gateway/connections/open"))
        .json(&json!({}))
        .send()
        .await;
    assert!(r.is_err(), "nothing listens after the stop");
}

#[tokio::test]
async fn compat_listen_must_be_loopback() {
    let gw = gateway(false).await;
    let p = Paths::new();
    write_private(&p.path("s"), "x\n");
    let yaml = format!(
        "compat:\n  listen: 0.0.0.0:9470\n  client_id: a\n  client_secret_file: {}\n",
        p.path("s").display()
    );
    p.configure(&gw, &yaml);
    let e = dingtalk_streamd::config::Config::load(&p.config).unwrap_err();
    assert!(e.to_string().contains("compat.listen"), "{e}");
}

/// SIGHUP through the real binary: a reload that leaves `compat:` alone leaves SDK connections
/// alone; one that changes its secret gives each `disconnect` and a close, and the endpoint
/// comes back with the new secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_compat_disconnects_sdk_apps_and_rebinds() {
    let gw = gateway(false).await;
    let ep = Endpoint::new();
    let p = Paths::new();
    let compat = ep.yaml(&p);
    p.configure(&gw, &compat);
    let mut d = Service::run(&p.config, &[]);
    d.ready().await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let mut sdk = Sdk::connect(&ep).await;
    p.configure(&gw, &format!("{compat}log:\n  level: debug\n"));
    d.reload().await;
    gw.push_bot_text("kept").await.unwrap();
    let f = sdk.push().await;
    assert_eq!(
        text_of(&f),
        "kept",
        "the same connection after an unrelated reload"
    );
    sdk.ack(&f).await;

    write_private(&p.path("compat_secret"), "rotated-local-secret\n");
    d.reload().await;
    let mut saw_disconnect = false;
    while let Some(f) = sdk.frame_within(WAIT).await {
        match f["headers"]["topic"].as_str() {
            Some("ping") => {}
            Some("disconnect") => saw_disconnect = true,
            _ => panic!("unexpected frame: {f}"),
        }
    }
    assert!(saw_disconnect, "disconnect, then the close");
    until(WAIT, "the endpoint back with the new secret", async || {
        let r = http()
            .post(ep.url("/v1.0/gateway/connections/open"))
            .json(&json!({"clientId": LOCAL_ID, "clientSecret": "rotated-local-secret"}))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if r.status() == 200 {
            Ok(())
        } else {
            Err(format!("HTTP {}", r.status()))
        }
    })
    .await;
    assert_eq!(open(&ep, LOCAL_ID, LOCAL_SECRET).await.status(), 401);
    gw.push_bot_text("after").await.unwrap();
    let mut again = Sdk::connect_with_secret(&ep, "rotated-local-secret").await;
    assert_eq!(text_of(&again.push().await), "after");
    d.stop().await;
}
