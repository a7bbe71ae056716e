//! The group commands through the real binary against a running daemon binary: `group list`,
//! `group rm` (and its refusals), `group replay --parked` / `--from` to a connected member,
//! `tail --group G --peek` (bounded, nothing taken), and exit code 3 when nothing answers.

mod common;

use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;
use std::path::Path;

/// The real daemon on a fresh config with `extra`, connected, both sockets up.
async fn daemon(gw: &dingtalk_streamd_sim::FakeGateway, extra: &str) -> (Paths, Proc) {
    let paths = Paths::new();
    paths.configure(gw, extra);
    let p = start_run(&paths, &[]).await;
    gw.wait_connected(1, WAIT).await.unwrap();
    wait_for_socket(&paths.control).await;
    (paths, p)
}

/// `dingtalk-streamd --config CONFIG args...`
async fn cli(paths: &Paths, args: &[&str]) -> Output {
    let cfg = paths.config.to_str().expect("utf-8 path");
    let mut all = vec!["--config", cfg];
    all.extend_from_slice(args);
    output(&all, &[]).await
}

/// `group list --json`, parsed.
async fn list(paths: &Paths) -> Value {
    let o = cli(paths, &["group", "list", "--json"]).await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    serde_json::from_str(o.stdout.trim()).expect("group list --json is JSON")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[tokio::test]
async fn group_list_shows_every_group_and_group_rm_removes_an_idle_ad_hoc_one() {
    let gw = gateway(false).await;
    let (paths, p) = daemon(&gw, "groups: [bot]\n").await;
    let mut m = Consumer::member(&paths.socket, "temp").await;
    let ids = push_acked(&gw, 2, "rm").await;
    for id in &ids {
        assert_eq!(&mid(&m.next().await), id);
    }
    let l = list(&paths).await;
    assert_eq!(l["groups"]["bot"]["configured"], true, "{l}");
    assert_eq!(l["groups"]["bot"]["backlog"], 2, "{l}");
    let temp = &l["groups"]["temp"];
    assert_eq!(
        (&temp["configured"], &temp["members"], &temp["in_flight"]),
        (&Value::Bool(false), &Value::from(1), &Value::from(2)),
        "{l}"
    );
    let o = cli(&paths, &["group", "list"]).await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let row = o
        .stdout
        .lines()
        .find(|r| r.starts_with("temp "))
        .unwrap_or_else(|| panic!("no temp row:\n{}", o.stdout));
    assert!(row.contains("ad-hoc"), "{row}");
    assert!(o.stdout.contains("configured"), "{}", o.stdout);

    // Refusals, each naming the group, exit 1.
    let o = cli(&paths, &["group", "rm", "temp"]).await;
    assert_eq!(o.code, Some(1), "{}{}", o.stdout, o.stderr);
    assert!(
        o.stderr.contains("\"temp\"") && o.stderr.contains("1 connected member"),
        "{}",
        o.stderr
    );
    let o = cli(&paths, &["group", "rm", "bot"]).await;
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    assert!(
        o.stderr.contains("\"bot\"") && o.stderr.contains("groups:"),
        "{}",
        o.stderr
    );
    let o = cli(&paths, &["group", "rm", "nope"]).await;
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    assert!(
        o.stderr.contains("no consumer group named \"nope\""),
        "{}",
        o.stderr
    );

    drop(m);
    status_until(&paths.control, "temp without members", |st| {
        st["groups"]["temp"]["members"] == 0
    })
    .await;
    let o = cli(&paths, &["group", "rm", "temp"]).await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(
        o.stdout.contains("removed group temp: released 2 unacked"),
        "{}",
        o.stdout
    );
    // Gone before the command returned.
    let l = list(&paths).await;
    assert!(l["groups"].get("temp").is_none(), "{l}");
    assert!(l["groups"].get("bot").is_some(), "{l}");
    let o = cli(&paths, &["group", "rm", "temp"]).await;
    assert_eq!(o.code, Some(1), "removed twice: {}", o.stderr);

    // Nothing answers: exit 3, naming the socket.
    let other = paths.path("elsewhere.sock");
    let o = output(&["group", "list", "--control", path_str(&other)], &[]).await;
    assert_eq!(o.code, Some(3), "{}", o.stderr);
    assert!(o.stderr.contains(path_str(&other)), "{}", o.stderr);
    p.signal(Signal::SIGTERM);
}

#[tokio::test]
async fn group_replay_gives_parked_and_earlier_messages_again_to_connected_members() {
    let gw = gateway(false).await;
    // `keeper` never acks, so what bot acked stays in the spool for `--from`.
    let (paths, p) = daemon(
        &gw,
        "groups: [bot, keeper]\nconsumers:\n  ack_wait: 1s\n  max_deliveries: 1\n",
    )
    .await;
    let mut m = Consumer::member(&paths.socket, "bot").await;
    let poison = push_acked(&gw, 1, "poison").await;
    let first = m.next().await;
    assert_eq!(mid(&first), poison[0]);
    let s = seq(&first);
    status_until(&paths.control, "the message parked", |st| {
        st["groups"]["bot"]["parked_seqs"] == serde_json::json!([s])
    })
    .await;
    let ok = push_acked(&gw, 2, "fine").await;
    for id in &ok {
        let v = m.next().await;
        assert_eq!(&mid(&v), id);
        m.ack(seq(&v)).await;
    }

    let o = cli(&paths, &["group", "replay", "bot", "--parked"]).await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(
        o.stdout.contains("group bot: 1 message(s) given again"),
        "{}",
        o.stdout
    );
    let again = m.next().await;
    assert_eq!(
        (seq(&again), &again["redelivered"]),
        (s, &Value::Bool(true)),
        "the same connection gets it: {again}"
    );
    m.ack(s).await;
    let l = list(&paths).await;
    assert_eq!(
        l["groups"]["bot"]["parked_seqs"],
        serde_json::json!([]),
        "{l}"
    );

    let o = cli(
        &paths,
        &["group", "replay", "bot", "--from", &s.to_string()],
    )
    .await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    assert!(
        o.stdout.contains("group bot: 3 message(s) given again"),
        "{}",
        o.stdout
    );
    for want in [s, s + 1, s + 2] {
        let v = m.next().await;
        assert_eq!(
            (seq(&v), &v["redelivered"]),
            (want, &Value::Bool(true)),
            "{v}"
        );
        m.ack(want).await;
    }
    assert!(m.next_within(QUIET).await.is_none(), "acked: nothing more");

    let o = cli(&paths, &["group", "replay", "nope", "--parked"]).await;
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    assert!(o.stderr.contains("\"nope\""), "{}", o.stderr);
    let o = cli(&paths, &["group", "replay", "bot"]).await;
    assert_ne!(
        o.code,
        Some(0),
        "--parked or --from is required: {}",
        o.stderr
    );
    let o = cli(
        &paths,
        &["group", "replay", "bot", "--parked", "--from", "1"],
    )
    .await;
    assert_ne!(o.code, Some(0), "not both: {}", o.stderr);
    p.signal(Signal::SIGTERM);
}

/// `tail --group G --peek` with `args`: (stdout lines as JSON, stderr).
async fn peek(paths: &Paths, group: &str, args: &[&str]) -> (Vec<Value>, String) {
    let mut all = vec!["tail", "--group", group, "--peek", "--json"];
    all.extend_from_slice(args);
    let o = cli(paths, &all).await;
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let lines = o
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    (lines, o.stderr)
}

#[tokio::test]
async fn tail_peek_shows_the_backlog_without_taking_or_acking_anything() {
    let gw = gateway(false).await;
    let (paths, p) = daemon(&gw, "groups: [bot]\n").await;
    let ids = push_acked(&gw, 3, "peek").await;
    let (lines, err) = peek(&paths, "bot", &[]).await;
    assert_eq!(lines.iter().map(mid).collect::<Vec<_>>(), ids);
    assert!(
        err.contains("3 message(s)") && err.contains("0 left out"),
        "{err}"
    );
    let (lines, err) = peek(&paths, "bot", &["--limit", "2"]).await;
    assert_eq!(lines.len(), 2);
    assert!(err.contains("1 left out"), "{err}");

    // Nothing was taken: a member gets all three, from the first.
    let mut m = Consumer::member(&paths.socket, "bot").await;
    let first = m.next().await;
    assert_eq!(mid(&first), ids[0]);
    m.ack(seq(&first)).await;
    let rest = until(WAIT, "peek without the acked message", async || {
        let (lines, _) = peek(&paths, "bot", &[]).await;
        let got: Vec<String> = lines.iter().map(mid).collect();
        if got == ids[1..] {
            Ok(got)
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
    assert_eq!(rest.len(), 2, "in flight, not acked: still shown");

    let o = cli(&paths, &["tail", "--group", "nope", "--peek"]).await;
    assert_eq!(o.code, Some(1), "{}", o.stderr);
    assert!(
        o.stderr.contains("no consumer group named \"nope\""),
        "{}",
        o.stderr
    );
    let other = paths.path("elsewhere.sock");
    let o = cli(
        &paths,
        &[
            "tail",
            "--group",
            "bot",
            "--peek",
            "--control",
            path_str(&other),
        ],
    )
    .await;
    assert_eq!(o.code, Some(3), "{}", o.stderr);
    p.signal(Signal::SIGTERM);
}

#[tokio::test]
async fn tail_peek_is_bounded_in_bytes_and_says_how_many_were_left_out() {
    let gw = gateway(false).await;
    let (paths, p) = daemon(&gw, "groups: [bot]\n").await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let m = gw
            .push_bot_text(&big_text(&format!("big {i}"), 900))
            .await
            .expect("push");
        ids.push(m.message_id);
    }
    wait_acked(&gw, &ids).await;
    let (lines, err) = peek(&paths, "bot", &[]).await;
    let bytes: usize = lines.iter().map(|l| l.to_string().len()).sum();
    assert!(
        !lines.is_empty() && lines.len() < 6,
        "{} shown",
        lines.len()
    );
    assert!(bytes <= 4 * 1024 * 1024, "{bytes} bytes");
    let left = 6 - lines.len();
    assert!(
        err.contains("6 message(s)") && err.contains(&format!("{left} left out")),
        "{err}"
    );
    p.signal(Signal::SIGTERM);
}
