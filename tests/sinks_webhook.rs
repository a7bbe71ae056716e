//! Webhook sinks against a local HTTP server: every message arrives (duplicates allowed: at
//! least once), in seq order, signed, across failing answers (500, 503 with Retry-After) and
//! a SIGKILL of the daemon in the middle of a request; a webhook's topics choose what it gets;
//! what the spool bound forces out while the receiver is away is counted and logged.

mod common;

use common::webhook::{Answer, Received, WebhookServer};
use common::*;
use hmac::{Hmac, Mac};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use sha2::Sha256;
use std::time::Duration;

const KEY: &str = "k3y-hook-1a7e";

fn body(r: &Received) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.body))
}

fn expected_signature(body: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(KEY.as_bytes()).expect("key");
    mac.update(body.as_bytes());
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// The seqs in the order they were first confirmed (2xx), after checking that no request
/// ever skipped ahead of what was confirmed.
fn delivered_in_order(got: &[Received]) -> Vec<u64> {
    let mut confirmed: Vec<u64> = Vec::new();
    for r in got {
        let seq = body(r)["seq"].as_u64().expect("seq");
        let next = confirmed.last().map_or(1, |s| s + 1);
        assert!(
            seq <= next,
            "seq {seq} posted before {next} was confirmed: {:?}",
            got.iter()
                .map(|r| (body(r)["seq"].clone(), r.status))
                .collect::<Vec<_>>()
        );
        if r.status == 200 && seq == next {
            confirmed.push(seq);
        }
    }
    confirmed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_arrives_in_order_and_signed_across_failures_and_a_sigkill() {
    const FIRST: usize = 60;
    const SECOND: usize = 40;
    const BEFORE_HOLD: usize = 30;
    let hook = WebhookServer::start(vec![
        Answer::Status(500),
        Answer::RetryAfter(1),
        Answer::Ok(BEFORE_HOLD),
        Answer::Hold,
    ])
    .await;
    let gw = gateway(false).await;
    let p = Paths::new();
    let key = p.path("hook.key");
    write_private(&key, &format!("{KEY}\n"));
    p.configure(
        &gw,
        &format!(
            "sinks:\n  webhooks:\n    - url: {}\n      secret_file: {}\n      timeout: 3s\n",
            hook.url("/dingtalk?token=q-s3cret"),
            key.display()
        ),
    );
    let mut d = start_run(&p, &[]).await;
    gw.wait_until(|g| g.open_connections().len() == 1, WAIT)
        .await
        .expect("connected");
    let old = gw.open_connections()[0];
    push_acked(&gw, FIRST, "before").await;

    // Killed while the receiver holds a request unanswered.
    hook.wait("the held request", |r| r.iter().any(|x| x.status == 0))
        .await;
    d.signal(Signal::SIGKILL);
    d.wait_exit(WAIT).await;
    let first_run = d.text();
    let mut d = start_run(&p, &[]).await;
    gw.wait_until(
        |g| g.open_connections().len() == 1 && g.open_connections()[0] > old,
        WAIT,
    )
    .await
    .expect("reconnected after the restart");
    push_acked(&gw, SECOND, "after").await;

    let total = (FIRST + SECOND) as u64;
    let got = hook
        .wait_until("every message confirmed", Duration::from_secs(30), |r| {
            r.iter()
                .filter(|x| x.status == 200)
                .filter_map(|x| serde_json::from_str::<Value>(&x.body).ok())
                .filter_map(|v| v["seq"].as_u64())
                .collect::<std::collections::BTreeSet<_>>()
                .len() as u64
                == total
        })
        .await;
    assert_eq!(
        delivered_in_order(&got),
        (1..=total).collect::<Vec<_>>(),
        "nothing missing, in seq order"
    );
    for r in &got {
        assert_eq!(r.path, "/dingtalk");
        assert_eq!(r.content_type, "application/json");
        assert_eq!(
            r.signature.as_deref(),
            Some(expected_signature(&r.body).as_str()),
            "signature of {}",
            r.body
        );
        let v = body(r);
        let seq = v["seq"].as_u64().unwrap();
        let text = v["data"]["text"]["content"].as_str().unwrap();
        let want = if seq <= FIRST as u64 {
            format!("before {}", seq - 1)
        } else {
            format!("after {}", seq - FIRST as u64 - 1)
        };
        assert_eq!(text, want, "the consumer line of seq {seq}");
        assert_eq!(v["type"], "CALLBACK");
    }
    let held = got
        .iter()
        .find(|r| r.status == 0)
        .expect("the held request");
    let held_seq = body(held)["seq"].clone();
    assert!(
        got.iter()
            .any(|r| r.at > held.at && r.status == 200 && body(r)["seq"] == held_seq),
        "the message cut off by the kill came again after the restart"
    );
    // 500, then 503 with Retry-After: 1, honoured, then the same message again.
    assert_eq!(
        (got[0].status, got[1].status, got[2].status),
        (500, 503, 200)
    );
    assert!(got[..3].iter().all(|r| body(r)["seq"] == 1));
    let waited = got[2].at - got[1].at;
    assert!(
        waited >= Duration::from_secs(1),
        "Retry-After honoured: {waited:?}"
    );

    let st = status_until(&p.control, "the webhook caught up", |s| {
        s["sinks"]["webhook:0"]["backlog"] == 0
    })
    .await;
    let w = &st["sinks"]["webhook:0"];
    assert_eq!(w["kind"], "webhook");
    assert_eq!(w["connected"], true);
    assert_eq!(w["target"], hook.url("/dingtalk"), "no query in status");
    d.stop(WAIT).await;
    for text in [first_run, d.text(), st.to_string()] {
        assert!(!text.contains(KEY) && !text.contains("q-s3cret"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_webhook_gets_its_topics_and_keeps_its_own_position() {
    let all = WebhookServer::start(vec![]).await;
    let events = WebhookServer::start(vec![]).await;
    let gw = gateway(false).await;
    let d = Daemon::start(
        &gw,
        &format!(
            "sinks:\n  webhooks:\n    - {{ url: \"{}\" }}\n    - {{ url: \"{}\", topics: [chat_update_title] }}\n",
            all.url("/all"),
            events.url("/events")
        ),
    )
    .await;
    gw.wait_until(|g| g.open_connections().len() == 1, WAIT)
        .await
        .expect("connected");
    push_acked(&gw, 3, "bot").await;
    let ev = gw
        .push_event("chat_update_title", &json!({"title": "t"}))
        .await
        .expect("push event");
    wait_acked(&gw, &[ev.message_id.as_str()]).await;
    all.wait("four posts", |r| r.len() == 4).await;
    let got = events.wait("the event", |r| !r.is_empty()).await;
    let v = body(&got[0]);
    assert_eq!(
        (v["type"].as_str(), v["seq"].as_u64()),
        (Some("EVENT"), Some(4))
    );
    let st = d
        .status_until("both webhooks at seq 4", |s| {
            s["sinks"]["webhook:0"]["cursor"] == 4 && s["sinks"]["webhook:1"]["cursor"] == 4
        })
        .await;
    assert_eq!(st["sinks"]["webhook:0"]["published"], 4);
    assert_eq!(
        st["sinks"]["webhook:1"]["published"], 1,
        "the others are skipped"
    );
    assert_eq!(st["groups"]["sink:webhook:1"]["configured"], true);
    assert_eq!(events.received().len(), 1);
    let config = d.paths.config.to_str().expect("utf-8 path").to_owned();
    let human = output(&["--config", &config, "status"], &[]).await;
    assert!(
        human.stdout.contains(&format!(
            "sink webhook:1: ok ({}), backlog 0, published 1",
            events.url("/events")
        )),
        "{}",
        human.stdout
    );
    let rm = output(&["--config", &config, "group", "rm", "sink:webhook:0"], &[]).await;
    assert_eq!(rm.code, Some(1), "{}", rm.stderr);
    assert!(rm.stderr.contains("is a sink's"), "{}", rm.stderr);
    assert!(d.stop().await.0.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_forced_out_before_delivery_are_counted_per_sink_and_logged() {
    // Nothing listens on the webhook's port yet: every request fails, the backlog grows.
    let port = nats::free_port();
    let gw = gateway(false).await;
    let p = Paths::new();
    p.write_config(&config_yaml_with_spool(
        &gw,
        &p,
        "  max_bytes: 1MiB\n",
        &format!("sinks:\n  webhooks:\n    - {{ url: \"http://127.0.0.1:{port}/late\" }}\n"),
    ));
    let mut d = start_run(&p, &[]).await;
    gw.wait_until(|g| g.open_connections().len() == 1, WAIT)
        .await
        .expect("connected");
    // 2.4 MiB for a 1 MiB spool: more is forced out than the sink holds in its window (those
    // it has already are still delivered).
    const N: u64 = 60;
    let mut ids = Vec::new();
    for i in 0..N {
        let m = gw
            .push(
                dingtalk_streamd_sim::OutFrame::bot_text(&big_text(&format!("m{i}"), 40)),
                dingtalk_streamd_sim::Route::Random,
            )
            .await
            .expect("push");
        ids.push(m.message_id);
    }
    wait_acked(&gw, &ids).await;
    let st = status_until(&p.control, "the sink's forced-out count", |s| {
        s["sinks"]["webhook:0"]["forced_out"].as_u64() > Some(0)
    })
    .await;
    let w = &st["sinks"]["webhook:0"];
    assert_eq!(w["connected"], false, "{w}");
    assert!(w["failures"].as_u64() > Some(0), "{w}");
    assert_eq!(
        st["groups"]["sink:webhook:0"]["forced_out"], w["forced_out"],
        "the sink's count is its group's"
    );
    d.wait_line(&mut 0, "before this sink published them", WAIT)
        .await;
    assert!(
        d.text()
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("forced out of the spool")),
        "logged as an error: {}",
        d.text()
    );

    // The receiver comes up: everything still owed arrives, in order, and nothing else.
    let hook = WebhookServer::start_on(port, vec![]).await;
    let st = status_until(&p.control, "the sink caught up", |s| {
        s["sinks"]["webhook:0"]["backlog"] == 0
    })
    .await;
    let forced = st["sinks"]["webhook:0"]["forced_out"].as_u64().unwrap();
    let seqs: Vec<u64> = hook
        .received()
        .iter()
        .map(|r| {
            assert_eq!(r.status, 200);
            body(r)["seq"].as_u64().expect("seq")
        })
        .collect();
    assert_eq!(
        seqs.len() as u64 + forced,
        N,
        "delivered or counted: {seqs:?}, {forced} forced out; {st}"
    );
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "in seq order: {seqs:?}"
    );
    d.stop(WAIT).await;
}
