//! Proof of receipt through the real binaries: `inspect` by seq, messageId, msgId and eventId
//! shows when and on which connection a message arrived and what each group did with it
//! (acked, parked, pending); the receipt outlives the body (a tiny `spool.max_age`) and the
//! daemon (the spool file is read read-only, creating nothing); an unknown id is "not found"
//! with the range searched (exit 1); nothing readable at all is exit 3. No output carries the
//! message body (its sessionWebhook).

mod common;

use common::*;
use dingtalk_streamd_sim::{BotMessage, FakeGateway, OutFrame, Route};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::Path;

/// `dingtalk-streamd --config CONFIG inspect args...`
async fn inspect(paths: &Paths, args: &[&str]) -> Output {
    let cfg = paths.config.to_str().expect("utf-8 path");
    let mut all = vec!["--config", cfg, "inspect"];
    all.extend_from_slice(args);
    output(&all, &[]).await
}

/// `inspect WHAT --json` until `pred` holds on the found message (within `WAIT`: acks reach
/// the spool with the writer's next commit).
async fn inspect_until(paths: &Paths, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    until(WAIT, &format!("inspect {what}"), async || {
        let o = inspect(paths, &[what, "--json"]).await;
        let v: Value = serde_json::from_str(o.stdout.trim())
            .map_err(|e| format!("exit {:?}, {e}: {}{}", o.code, o.stdout, o.stderr))?;
        if o.code == Some(0) && pred(&v["found"][0]) {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
    .await
}

/// A bot message whose ids the test knows; pushed, ACKed (so stored); returns its messageId.
async fn push_bot(gw: &FakeGateway, text: &str) -> (String, String) {
    let m = BotMessage::text(text);
    let msg_id = m.msg_id.clone();
    let p = gw.push(m.into_frame(), Route::Random).await.expect("push");
    wait_acked(gw, &[&p.message_id]).await;
    (p.message_id, msg_id)
}

/// Delivered to `acks` (acked) and `parks` (never acked: parked after two deliveries);
/// `later` has no member.
const GROUPS: &str =
    "groups: [acks, parks, later]\nconsumers:\n  ack_wait: 200ms\n  max_deliveries: 2\n";

/// One member of `acks` acks it, one of `parks` lets it be parked (and, with `wait`, waits
/// until status shows it parked); returns its seq and the members (a group parks only while a
/// member is there to give the message to).
async fn ack_and_park(paths: &Paths, wait: bool) -> (u64, [Consumer; 2]) {
    let mut acks = Consumer::member(&paths.socket, "acks").await;
    let mut parks = Consumer::member(&paths.socket, "parks").await;
    let v = acks.next().await;
    let s = seq(&v);
    acks.ack(s).await;
    assert_eq!(seq(&parks.next().await), s);
    let again = parks.next().await;
    assert_eq!((seq(&again), &again["redelivered"]), (s, &json!(true)));
    if !wait {
        return (s, [acks, parks]);
    }
    status_until(&paths.control, "the message parked", |st| {
        st["groups"]["parks"]["parked_seqs"] == json!([s]) && st["groups"]["acks"]["cursor"] == s
    })
    .await;
    (s, [acks, parks])
}

fn no_body(o: &Output) {
    for secret in ["sessionWebhook", "oapi.dingtalk.com", "inspect me"] {
        assert!(
            !o.stdout.contains(secret) && !o.stderr.contains(secret),
            "{secret:?} printed:\n{}{}",
            o.stdout,
            o.stderr
        );
    }
}

#[tokio::test]
async fn inspect_shows_arrival_ids_and_what_each_group_did() {
    let gw = gateway(false).await;
    let paths = Paths::new();
    paths.configure(&gw, GROUPS);
    let mut daemon = start_run(&paths, &[]).await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let (message_id, msg_id) = push_bot(&gw, "inspect me").await;
    let (s, _members) = ack_and_park(&paths, true).await;
    let seq_arg = s.to_string();

    let v = inspect_until(&paths, &seq_arg, |m| {
        m["groups"]["acks"]["state"] == "acked" && m["groups"]["parks"]["state"] == "parked"
    })
    .await;
    let m = &v["found"][0];
    assert_eq!(m["seq"], s, "{v}");
    assert_eq!(m["connection"], "c1", "{v}");
    assert!(m["lag_ms"].is_i64(), "the sim sends a time header: {v}");
    assert!(
        m["received_at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{v}"
    );
    assert_eq!(m["topic"], "/v1.0/im/bot/messages/get", "{v}");
    assert!(m["size"].as_u64() > Some(100), "{v}");
    assert_eq!(
        m["keys"],
        json!({"message_id": message_id, "msg_id": msg_id}),
        "{v}"
    );
    assert_eq!(m["body"], "stored", "{v}");
    assert_eq!(
        m["groups"]["acks"]["acked_at"].as_array().map(Vec::len),
        Some(1),
        "{v}"
    );
    assert_eq!(m["groups"]["parks"]["parked"][0]["deliveries"], 2, "{v}");
    assert_eq!(m["groups"]["later"]["state"], "pending", "{v}");
    assert_eq!(v["searched"]["newest_seq"], s, "{v}");
    assert_eq!(v["spool"], paths.spool.display().to_string(), "{v}");

    // The same message by its messageId and its msgId; the human form says the same.
    for id in [&message_id, &msg_id] {
        let o = inspect(&paths, &[id.as_str(), "--json"]).await;
        assert_eq!(o.code, Some(0), "{}", o.stderr);
        let w: Value = serde_json::from_str(o.stdout.trim()).expect("json");
        assert_eq!(w["found"][0], *m, "by {id}");
        assert!(o.stderr.is_empty(), "the daemon answered: {}", o.stderr);
        no_body(&o);
    }
    let o = inspect(&paths, &[&msg_id]).await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    for want in [
        format!("seq {s}"),
        "on connection c1".into(),
        format!("messageId {message_id}, msgId {msg_id}"),
        "still in the spool".into(),
        "group acks: acked at ".into(),
        "group parks: parked at ".into(),
        "after 2 deliveries".into(),
        "group later: pending".into(),
    ] {
        assert!(o.stdout.contains(&want), "{want:?} not in:\n{}", o.stdout);
    }
    no_body(&o);

    // An event, by its eventId.
    let mut tap = Consumer::tap(&paths.socket).await;
    let ev = gw
        .push(
            OutFrame::event("user_add_org", &json!({"x": 1})),
            Route::Random,
        )
        .await
        .expect("push event");
    let line = tap.expect_message(&ev.message_id).await;
    let event_id = line["headers"]["eventId"]
        .as_str()
        .expect("eventId")
        .to_owned();
    let w = inspect_until(&paths, &event_id, |m| m["seq"] == seq(&line)).await;
    assert_eq!(w["found"][0]["keys"]["event_id"], event_id.as_str(), "{w}");

    // Never delivered here: exit 1, and what was searched.
    let o = inspect(&paths, &["msgNeverSeen=="]).await;
    assert_eq!(o.code, Some(1), "{}{}", o.stdout, o.stderr);
    assert!(o.stdout.contains("not found"), "{}", o.stdout);
    assert!(
        o.stdout
            .contains(&format!("searched: 2 receipts, seq {s} (received ")),
        "{}",
        o.stdout
    );
    let o = inspect(&paths, &["msgNeverSeen==", "--json"]).await;
    assert_eq!(o.code, Some(1));
    let w: Value = serde_json::from_str(o.stdout.trim()).expect("json");
    assert_eq!(w["found"], json!([]), "{w}");
    assert_eq!(w["searched"]["oldest_seq"], s, "{w}");
    let o = inspect(&paths, &["999"]).await;
    assert_eq!(o.code, Some(1));
    assert!(
        o.stdout.contains("seq 999 was never assigned"),
        "{}",
        o.stdout
    );
    // Digits taken as an id on request; bad input named, exit 2.
    assert_eq!(inspect(&paths, &["--id", &seq_arg]).await.code, Some(1));
    let o = inspect(&paths, &["0"]).await;
    assert_eq!(o.code, Some(2), "{}", o.stderr);
    assert!(o.stderr.contains("seq"), "{}", o.stderr);

    daemon.stop(WAIT).await.expect("daemon stops");
}

#[tokio::test]
async fn the_receipt_outlives_the_body_and_the_daemon() {
    let gw = gateway(false).await;
    let paths = Paths::new();
    paths.write_config(&config_yaml_with_spool(
        &gw,
        &paths,
        "  max_age: 2s\n",
        GROUPS,
    ));
    let mut daemon = start_run(&paths, &[]).await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let (_, msg_id) = push_bot(&gw, "inspect me").await;
    // Parked after 2 × 200 ms, forced out at 2 s: status may never show it parked.
    let (s, members) = ack_and_park(&paths, false).await;
    status_until(&paths.control, "the body forced out", |st| {
        st["spool"]["messages"] == 0
    })
    .await;
    let v = inspect_until(&paths, &msg_id, |m| m["body"] == "forced_out").await;
    let m = v["found"][0].clone();
    assert_eq!(m["seq"], s, "{v}");
    assert!(m["forced_out_at"].is_string(), "{v}");
    assert!(
        m["size"].as_u64() > Some(100),
        "the size outlives the body: {v}"
    );
    assert_eq!(m["groups"]["acks"]["state"], "acked", "{v}");
    assert_eq!(m["groups"]["parks"]["state"], "forced_out", "{v}");
    assert_eq!(m["groups"]["parks"]["parked"][0]["deliveries"], 2, "{v}");
    assert_eq!(m["groups"]["later"]["state"], "forced_out", "{v}");

    drop(members);
    // No daemon: the spool file itself, read-only; nothing is created beside it.
    assert!(daemon.stop(WAIT).await.is_some_and(|s| s.success()));
    let files = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .expect("spool dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect()
    };
    let before = files(&paths.spool);
    let o = inspect(&paths, &[&msg_id, "--json"]).await;
    assert_eq!(o.code, Some(0), "{}{}", o.stdout, o.stderr);
    assert!(o.stderr.contains("is not running"), "{}", o.stderr);
    assert!(
        o.stderr.contains(&format!(
            "read the spool file in {} directly",
            paths.spool.display()
        )),
        "{}",
        o.stderr
    );
    let w: Value = serde_json::from_str(o.stdout.trim()).expect("json");
    assert_eq!(w["found"][0], m, "the file says what the daemon said");
    assert_eq!(files(&paths.spool), before, "a reader created files");
    let o = inspect(&paths, &["msgNeverSeen=="]).await;
    assert_eq!(o.code, Some(1), "{}{}", o.stdout, o.stderr);
    assert!(
        o.stdout.contains(&format!("seq {s} (received ")),
        "{}",
        o.stdout
    );
    no_body(&o);

    // The daemon starts again on that spool, and answers the same.
    let mut daemon = start_run(&paths, &[]).await;
    let again = inspect_until(&paths, &msg_id, |_| true).await;
    assert_eq!(again["found"][0], m);
    daemon.stop(WAIT).await.expect("daemon stops");
}

#[tokio::test]
async fn nothing_to_read_is_exit_3_naming_both_places() {
    let paths = Paths::new();
    let spool = paths.path("no-such-spool");
    let control = paths.path("no-daemon.sock");
    let o = output(
        &[
            "--config",
            paths.path("missing.yml").to_str().expect("utf-8"),
            "inspect",
            "msgX",
            "--control",
            control.to_str().expect("utf-8"),
            "--spool",
            spool.to_str().expect("utf-8"),
        ],
        &[],
    )
    .await;
    assert_eq!(o.code, Some(3), "{}{}", o.stdout, o.stderr);
    assert!(
        o.stderr.contains(&control.display().to_string()),
        "{}",
        o.stderr
    );
    assert!(
        o.stderr.contains(&spool.display().to_string()),
        "{}",
        o.stderr
    );
    assert!(o.stdout.is_empty(), "{}", o.stdout);
}
