//! Consumer groups over the real socket: hello/welcome, fan-out across groups,
//! load sharing inside a group, in_flight, ack_wait redelivery, handover on disconnect, parking,
//! configured vs ad-hoc start, backlog after an absence and after a restart, and bad lines.

mod common;

use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

#[tokio::test]
async fn hello_welcome_and_every_group_gets_everything() {
    let gw = gateway(false).await;
    let d = Daemon::start(&gw, "").await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let mut a = d.member("alpha").await;
    let mut b = d.member("beta").await;
    let ids = push_acked(&gw, 5, "fan").await;
    for m in [&mut a, &mut b] {
        let mut last = 0;
        for id in &ids {
            let v = m.next().await;
            assert_eq!(&mid(&v), id, "{v}");
            assert!(seq(&v) > last);
            assert!(v.get("redelivered").is_none(), "first delivery: {v}");
            last = seq(&v);
            m.ack(last).await;
        }
    }
    let st = d
        .status_until("both groups acked", |s| {
            s["groups"]["alpha"]["acked"] == 5 && s["groups"]["beta"]["acked"] == 5
        })
        .await;
    assert_eq!(st["groups"]["alpha"]["members"], 1, "{st}");
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn members_of_one_group_share_the_load_in_order() {
    let gw = gateway(false).await;
    let d = Daemon::start(&gw, "").await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let mut m1 = d.member("work").await;
    let mut m2 = d.member("work").await;
    let ids = push_acked(&gw, 20, "share").await;
    let mut got: BTreeMap<u64, String> = BTreeMap::new();
    let mut per_member: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.len() < ids.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {} delivered",
            got.len(),
            ids.len()
        );
        for (i, m) in [&mut m1, &mut m2].into_iter().enumerate() {
            if let Some(v) = m.next_within(Duration::from_millis(20)).await {
                assert!(
                    got.insert(seq(&v), mid(&v)).is_none(),
                    "seq given twice: {v}"
                );
                per_member[i].push(seq(&v));
                m.ack(seq(&v)).await;
            }
        }
    }
    assert_eq!(
        got.values().cloned().collect::<BTreeSet<_>>(),
        ids.iter().cloned().collect::<BTreeSet<_>>()
    );
    for (i, seqs) in per_member.iter().enumerate() {
        assert!(!seqs.is_empty(), "member {i} got nothing: {per_member:?}");
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "member {i} out of order: {seqs:?}"
        );
    }
    assert!(m1.next_within(QUIET).await.is_none() && m2.next_within(QUIET).await.is_none());
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn in_flight_limits_unacked_messages_per_member() {
    let gw = gateway(false).await;
    let d = Daemon::start(&gw, "consumers:\n  in_flight: 2\n").await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let mut m = d.member("slow").await;
    let ids = push_acked(&gw, 5, "flight").await;
    let first = m.next().await;
    let second = m.next().await;
    assert_eq!(
        (mid(&first), mid(&second)),
        (ids[0].clone(), ids[1].clone())
    );
    assert!(
        m.next_within(QUIET).await.is_none(),
        "a third message while two are unacked"
    );
    m.ack(seq(&first)).await;
    assert_eq!(mid(&m.next().await), ids[2]);
    assert!(m.next_within(QUIET).await.is_none(), "in_flight is 2 again");
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn unacked_message_comes_again_after_ack_wait_with_the_same_seq() {
    let gw = gateway(false).await;
    let d = Daemon::start(&gw, "consumers:\n  ack_wait: 300ms\n").await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let mut m = d.member("forgetful").await;
    let ids = push_acked(&gw, 1, "again").await;
    let v = m.next().await;
    let started = tokio::time::Instant::now();
    let again = m.next().await;
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "came back before ack_wait"
    );
    assert_eq!((seq(&again), mid(&again)), (seq(&v), ids[0].clone()));
    assert_eq!(again["redelivered"], true, "{again}");
    assert_eq!(again["data"], v["data"], "the same message");
    m.ack(seq(&again)).await;
    assert!(
        m.next_within(Duration::from_millis(700)).await.is_none(),
        "acked: not given again"
    );
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn a_leaving_member_hands_its_messages_to_another_at_once() {
    let gw = gateway(false).await;
    // ack_wait is far away: only the disconnect can explain a quick redelivery.
    let d = Daemon::start(&gw, "consumers:\n  ack_wait: 60s\n  in_flight: 1\n").await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let mut m1 = d.member("pair").await;
    let mut m2 = d.member("pair").await;
    let ids = push_acked(&gw, 2, "handover").await;
    let a = m1.next().await;
    let b = m2.next().await;
    assert_eq!(
        BTreeSet::from([mid(&a), mid(&b)]),
        ids.iter().cloned().collect::<BTreeSet<_>>()
    );
    drop(m1);
    // m2 has b in flight (in_flight 1): once it acks b, a comes to it, long before ack_wait.
    m2.ack(seq(&b)).await;
    let again = m2
        .next_within(Duration::from_secs(5))
        .await
        .expect("a handed over to m2");
    assert_eq!(
        (seq(&again), again["redelivered"].clone()),
        (seq(&a), Value::Bool(true)),
        "{again}"
    );
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn after_max_deliveries_a_message_is_parked_and_shown_in_status() {
    let gw = gateway(false).await;
    let d = Daemon::start(&gw, "consumers:\n  ack_wait: 200ms\n  max_deliveries: 2\n").await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let mut m = d.member("picky").await;
    let ids = push_acked(&gw, 1, "poison").await;
    let first = m.next().await;
    let second = m.next().await;
    assert_eq!(
        (seq(&second), second["redelivered"].clone()),
        (seq(&first), Value::Bool(true))
    );
    let s = seq(&first);
    // The group's list and the spool's count are two reads of a moving spool: wait for both.
    let st = d
        .status_until("a parked seq", |st| {
            st["groups"]["picky"]["parked_seqs"] == serde_json::json!([s])
                && st["spool"]["parked"] == 1
        })
        .await;
    assert_eq!(st["groups"]["picky"]["parked"], 1, "{st}");
    assert_eq!(st["spool"]["parked"], 1, "{st}");
    assert!(m.next_within(QUIET).await.is_none(), "parked: skipped");
    // The group goes on with the next message.
    let next = push_acked(&gw, 1, "after").await;
    let v = m.next().await;
    assert_eq!(mid(&v), next[0]);
    assert_ne!(mid(&v), ids[0]);
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn configured_group_keeps_its_backlog_and_ad_hoc_group_starts_at_newest() {
    let gw = gateway(false).await;
    let d = Daemon::start(&gw, "groups: [bot]\n").await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let early = push_acked(&gw, 3, "early").await;
    let mut bot = d.member("bot").await;
    let mut adhoc = d.member("adhoc").await;
    let late = push_acked(&gw, 1, "late").await;
    for id in early.iter().chain(&late) {
        let v = bot.next().await;
        assert_eq!(&mid(&v), id);
        bot.ack(seq(&v)).await;
    }
    let v = adhoc.next().await;
    assert_eq!(
        mid(&v),
        late[0],
        "an ad-hoc group starts at the newest message: {v}"
    );
    assert!(adhoc.next_within(QUIET).await.is_none());
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn a_group_that_was_away_gets_its_backlog_also_after_a_restart() {
    let gw = gateway(false).await;
    let d = Daemon::start(&gw, "groups: [bot]\n").await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let first = push_acked(&gw, 2, "first").await;
    let mut m = d.member("bot").await;
    for id in &first {
        let v = m.next().await;
        assert_eq!(&mid(&v), id);
        m.ack(seq(&v)).await;
    }
    drop(m);
    let away = push_acked(&gw, 3, "away").await;
    let mut m = d.member("bot").await;
    let mut seqs = Vec::new();
    for id in &away[..2] {
        let v = m.next().await;
        assert_eq!(&mid(&v), id, "backlog after reconnecting: {v}");
        seqs.push(seq(&v));
        m.ack(seq(&v)).await;
    }
    let unacked = m.next().await;
    assert_eq!(mid(&unacked), away[2]);
    let acked_through = seqs[1];
    d.status_until("the acks", |st| {
        st["groups"]["bot"]["cursor"] == acked_through
    })
    .await;
    drop(m);
    let (r, paths) = d.stop().await;
    r.unwrap();

    let d = Daemon::start_at(paths, &gw, "groups: [bot]\n").await;
    gw.wait_until(|g| g.open_connections().len() == 1, WAIT)
        .await
        .unwrap();
    let after = push_acked(&gw, 1, "after restart").await;
    let mut m = d.member("bot").await;
    let v = m.next().await;
    assert_eq!(
        (mid(&v), seq(&v)),
        (away[2].clone(), seq(&unacked)),
        "the unacked one, same seq: {v}"
    );
    m.ack(seq(&v)).await;
    let v = m.next().await;
    assert_eq!(mid(&v), after[0]);
    assert!(
        seq(&v) > seq(&unacked),
        "seq stable and increasing across the restart"
    );
    m.ack(seq(&v)).await;
    assert!(
        m.next_within(QUIET).await.is_none(),
        "acked messages are not given again"
    );
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn bad_lines_and_unknown_seqs_get_errors_and_the_member_stays() {
    let gw = gateway(false).await;
    let d = Daemon::start(&gw, "").await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let mut m = d.member("robust").await;
    let cases: [(&str, &str); 5] = [
        ("{\"ack\":999999}", "unknown_seq"),
        ("not json at all", "bad_json"),
        ("{\"hello\":{\"group\":\"other\"}}", "bad_hello"),
        ("[1,2,3]", "bad_json"),
        ("{\"ack\":\"seven\"}", ""),
    ];
    for (line, code) in cases {
        m.send(line).await;
        let v = m.next().await;
        let got = v["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error for {line:?}: {v}"));
        if !code.is_empty() {
            assert_eq!(got, code, "{line:?}: {v}");
        }
        assert!(v["error"]["message"].is_string(), "{v}");
    }
    let ids = push_acked(&gw, 1, "still here").await;
    let v = m.next().await;
    assert_eq!(mid(&v), ids[0]);
    let st = d.status().await;
    // unknown_seq is an answer about a seq, not a malformed line; the other four are counted.
    assert!(st["consumers"]["bad_lines"].as_u64().unwrap() >= 4, "{st}");
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn a_member_sending_bad_lines_faster_than_it_reads_the_replies_is_cut_off_saying_so() {
    use dingtalk_streamd::consumers::member::SLOW_REPLIES;
    use tokio::io::AsyncWriteExt;
    let gw = gateway(false).await;
    let p = Paths::new();
    p.configure(&gw, "");
    let mut d = start_run(&p, &[]).await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let mut m = Consumer::member(&p.socket, "bot").await;
    // Bad lines and no reading: the error replies fill the socket, then their queue. It is
    // cut off then (its writes fail), and the log says what it did, not "not reading".
    let burst = "garbage\n".repeat(1024);
    let cut = tokio::time::timeout(WAIT, async {
        while m.wr.write_all(burst.as_bytes()).await.is_ok() {}
    })
    .await;
    assert!(cut.is_ok(), "still connected after {WAIT:?} of bad lines");
    let line = d.wait_for(SLOW_REPLIES, WAIT).await;
    assert!(
        line.text.contains("faster than it reads the error replies") && line.text.contains("WARN"),
        "{}",
        line.text
    );
    assert!(!d.text().contains("without reading"), "{}", d.text());
    // Nothing else is hurt.
    let mut good = Consumer::member(&p.socket, "bot").await;
    let pushed = gw.push_bot_text("after the flood").await.unwrap();
    good.expect_message(&pushed.message_id).await;
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait_exit(WAIT).await.code(), Some(0), "{}", d.stderr());
}
