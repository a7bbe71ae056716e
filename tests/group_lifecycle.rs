//! The life of consumer groups over the real sockets: `limits.max_groups` (`too_many_groups`),
//! `consumers.adhoc_groups: false` (`unknown_group`), an idle ad-hoc group expiring after
//! `consumers.adhoc_ttl` and releasing its backlog (logged), a group with members never
//! expiring, and every group the spool knows showing in status after a restart, with its idle
//! clock kept.

mod common;

use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;
use std::time::Duration;

/// Connects, says hello to `group`, and expects the error `code` and the connection closed.
async fn refused_hello(d: &Daemon, group: &str, code: &str) -> Value {
    let mut c = d.tap().await;
    c.send(&format!("{{\"hello\":{{\"group\":\"{group}\"}}}}"))
        .await;
    let v = c.next().await;
    assert_eq!(v["error"]["code"], code, "hello {group}: {v}");
    let msg = v["error"]["message"].as_str().expect("a message");
    assert!(msg.contains(group), "the message names the group: {msg}");
    c.expect_closed("a refused hello").await;
    v
}

fn group_names(st: &Value) -> Vec<String> {
    st["groups"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_hello_that_would_create_a_group_beyond_max_groups_gets_too_many_groups() {
    let gw = gateway(false).await;
    let d = Daemon::start(&gw, "groups: [bot]\nlimits:\n  max_groups: 3\n").await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let _a = d.member("a").await;
    let _b = d.member("b").await;
    let v = refused_hello(&d, "c", "too_many_groups").await;
    assert!(
        v["error"]["message"].as_str().unwrap().contains("(3)"),
        "names the limit: {v}"
    );
    // Joining a group that exists adds none (welcomed); a configured group always works.
    let _a2 = d.member("a").await;
    let mut bot = d.member("bot").await;
    let ids = push_acked(&gw, 1, "limit").await;
    assert_eq!(mid(&bot.next().await), ids[0]);
    let st = d.status().await;
    assert_eq!(group_names(&st), ["a", "b", "bot"], "{st}");
    assert_eq!(st["groups"]["bot"]["configured"], true, "{st}");
    assert_eq!(st["groups"]["a"]["configured"], false, "{st}");
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn without_adhoc_groups_a_hello_for_an_unlisted_group_gets_unknown_group() {
    let gw = gateway(false).await;
    let d = Daemon::start(&gw, "groups: [bot]\nconsumers:\n  adhoc_groups: false\n").await;
    gw.wait_connected(1, WAIT).await.unwrap();
    refused_hello(&d, "stranger", "unknown_group").await;
    let mut bot = d.member("bot").await;
    let ids = push_acked(&gw, 2, "listed").await;
    for id in &ids {
        let v = bot.next().await;
        assert_eq!(&mid(&v), id);
        bot.ack(seq(&v)).await;
    }
    let st = d.status().await;
    assert_eq!(group_names(&st), ["bot"], "no group was created: {st}");
    assert!(st["consumers"]["bad_lines"].as_u64().unwrap() >= 1, "{st}");
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn an_idle_ad_hoc_group_expires_after_adhoc_ttl_and_releases_its_backlog() {
    let gw = gateway(false).await;
    let paths = Paths::new();
    paths.configure(&gw, "consumers:\n  adhoc_ttl: 300ms\n");
    let p = start_run(&paths, &[]).await;
    gw.wait_connected(1, WAIT).await.unwrap();
    wait_for_socket(&paths.control).await;
    let mut m = Consumer::member(&paths.socket, "temp").await;
    let ids = push_acked(&gw, 3, "held").await;
    for id in &ids {
        assert_eq!(&mid(&m.next().await), id, "given, never acked");
    }
    // A group with a member never expires, however long past the ttl.
    assert!(m.next_within(Duration::from_millis(900)).await.is_none());
    let st = status(&paths.control).await;
    assert_eq!(st["groups"]["temp"]["members"], 1, "{st}");
    assert!(st["groups"]["temp"]["expires_in_ms"].is_null(), "{st}");
    assert_eq!(st["spool"]["messages"], 3, "held back for temp: {st}");
    drop(m);
    let line = p
        .wait_for("ad-hoc consumer group removed", WAIT + SLACK)
        .await
        .text;
    assert_eq!(field(&line, "group"), Some("temp"), "{line}");
    assert_eq!(field(&line, "backlog"), Some("3"), "{line}");
    status_until(&paths.control, "temp gone and its messages deleted", |st| {
        st["groups"].get("temp").is_none() && st["spool"]["messages"] == 0
    })
    .await;
    // The name is free again: a new hello starts a fresh group at the newest message.
    let mut again = Consumer::member(&paths.socket, "temp").await;
    let late = push_acked(&gw, 1, "late").await;
    assert_eq!(mid(&again.next().await), late[0]);
    p.signal(Signal::SIGTERM);
}

#[tokio::test]
async fn every_group_the_spool_knows_shows_in_status_after_a_restart_with_its_idle_clock() {
    const TTL_MS: u64 = 60_000;
    let gw = gateway(false).await;
    let extra = "groups: [bot]\nconsumers:\n  adhoc_ttl: 60s\n";
    let d = Daemon::start(&gw, extra).await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let mut m = d.member("visitor").await;
    let ids = push_acked(&gw, 2, "before").await;
    assert_eq!(mid(&m.next().await), ids[0]);
    drop(m);
    // The clock started when the member left: wait until it has run 1.5 s.
    d.status_until("visitor idle for 1.5s", |st| {
        st["groups"]["visitor"]["expires_in_ms"]
            .as_u64()
            .is_some_and(|ms| ms < TTL_MS - 1500)
    })
    .await;
    let (r, paths) = d.stop().await;
    r.unwrap();

    let d = Daemon::start_at(paths, &gw, extra).await;
    let st = d
        .status_until("visitor after the restart, expiring", |st| {
            st["groups"]["visitor"]["expires_in_ms"].is_u64()
        })
        .await;
    let v = &st["groups"]["visitor"];
    assert_eq!(v["members"], 0, "{st}");
    assert_eq!(v["configured"], false, "{st}");
    assert_eq!(v["backlog"], 2, "nothing acked: {st}");
    let left = v["expires_in_ms"]
        .as_u64()
        .expect("an idle ad-hoc group expires");
    assert!(
        left < TTL_MS - 1500,
        "the idle clock survived the restart (it did not start again): {left} ms left"
    );
    assert!(st["groups"]["bot"].is_object(), "{st}");
    // And the backlog is still its own: a member gets both messages.
    let mut m = d.member("visitor").await;
    for id in &ids {
        assert_eq!(&mid(&m.next().await), id);
    }
    d.stop().await.0.unwrap();
}
