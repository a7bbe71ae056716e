//! The consumer socket under misbehaving peers: a stuck tap is cut off (counted) without
//! slowing a fast tap or the ACKs; a silent tap gets what was committed during its 200 ms hello
//! window; bad lines get `{"error":...}` replies and never crash the daemon; and
//! `limits.max_consumers` refuses the extra peer with a reason.

mod common;

use common::*;
use dingtalk_streamd::consumers::hub::{TAP_QUEUE_BYTES, TAP_QUEUE_LINES};
use dingtalk_streamd::consumers::peer::HELLO_WAIT;
use serde_json::Value;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Reads what is left on a connection the daemon should be closing; returns the complete lines.
async fn read_to_eof(mut s: UnixStream) -> Vec<String> {
    let mut all = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut all))
        .await
        .expect("the daemon closed the connection in time")
        .expect("read");
    let text = String::from_utf8_lossy(&all);
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(|l| l.trim_end().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_tap_is_cut_off_and_never_slows_a_fast_tap_or_the_acks() {
    let gw = gateway(false).await;
    let d = Daemon::start(&gw, "").await;
    gw.wait_connected(1, WAIT).await.unwrap();
    // Connects and never reads a byte.
    let stuck = UnixStream::connect(&d.paths.socket).await.unwrap();
    let mut fast = d.tap().await;
    d.status_until("two taps", |s| s["consumers"]["taps"] == 2)
        .await;

    // 64 KiB texts: the stuck tap's socket buffer fills within a few messages, then its queue
    // (TAP_QUEUE_BYTES) overflows well before n. The fast tap reads as it goes; each round of
    // pushes waits for it, so it is never the slow one, and the stuck one never holds it up.
    const TEXT: usize = 64 * 1024;
    const ROUND: usize = 16;
    let n = TAP_QUEUE_BYTES / TEXT + 10 * ROUND;
    assert!(
        n < TAP_QUEUE_LINES,
        "the byte bound is the one exercised here"
    );
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let reader = tokio::spawn(async move {
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            let v = fast.next().await;
            let text = v["data"]["text"]["content"].as_str().map_or(0, str::len);
            got.push((
                v["message_id"].as_str().unwrap_or_default().to_owned(),
                v["seq"].as_u64(),
                text,
                v,
            ));
            progress_tx.send_replace(got.len());
        }
        (fast, got)
    });
    let started = Instant::now();
    let mut sent = Vec::with_capacity(n);
    while sent.len() < n {
        for _ in 0..ROUND.min(n - sent.len()) {
            let mut text = format!("{:06} ", sent.len());
            text.push_str(&"x".repeat(TEXT - text.len()));
            sent.push(gw.push_bot_text(&text).await.unwrap().message_id);
        }
        let want = sent.len();
        let waited = tokio::time::timeout(WAIT, progress.wait_for(|got| *got >= want))
            .await
            .map(|r| r.is_ok());
        assert_eq!(
            waited,
            Ok(true),
            "the fast tap stalled at {} of {want}",
            *progress.borrow()
        );
    }
    let fast_done = started.elapsed();
    for mid in &sent {
        gw.wait_until(|g| g.acks(mid).iter().any(|a| a.code == 200), WAIT)
            .await
            .unwrap_or_else(|e| panic!("{mid} not ACKed while a tap was stuck: {e}"));
    }
    let acked_after = started.elapsed();
    let (mut fast, got) = tokio::time::timeout(WAIT, reader)
        .await
        .expect("reader done")
        .unwrap();
    assert_eq!(got.len(), n);
    let mut last = 0;
    for (i, ((mid, seq, len, v), want)) in got.iter().zip(&sent).enumerate() {
        assert_eq!(
            mid,
            want,
            "fast tap line {i} out of order: {:.200}",
            v.to_string()
        );
        assert_eq!(*len, TEXT, "line {i} incomplete");
        let seq = seq.expect("a message line");
        assert!(seq > last);
        last = seq;
    }

    let st = d
        .status_until("the stuck tap dropped", |s| {
            s["consumers"]["taps_dropped_slow"] == 1
        })
        .await;
    assert_eq!(st["consumers"]["taps"], 1, "{st}");
    // Its connection is closed without waiting for it to read (it holds no consumer slot).
    d.status_until("the stuck tap's connection gone", |s| {
        s["consumers"]["connected"] == 1
    })
    .await;
    // The stuck tap was closed: what it finally reads is a prefix, then EOF.
    let lines = read_to_eof(stuck).await;
    assert!(
        lines.len() < n,
        "the stuck tap got everything ({}), so it was never cut off",
        lines.len()
    );
    for (i, l) in lines.iter().enumerate() {
        let v: Value = serde_json::from_str(l).unwrap();
        if v.get("error").is_some() {
            assert_eq!(v["error"]["code"], "too_slow");
            continue;
        }
        assert_eq!(v["message_id"], sent[i].as_str(), "stuck tap line {i}");
    }
    // The fast tap is still served.
    let p = gw.push_bot_text("after the cut").await.unwrap();
    assert_eq!(fast.next().await["message_id"], p.message_id.as_str());
    eprintln!(
        "{n} × 64 KiB: fast tap complete after {fast_done:?}, all ACKed after {acked_after:?}, stuck tap got {} lines before the cut",
        lines.len()
    );
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn messages_committed_during_the_hello_window_reach_a_silent_tap() {
    let gw = gateway(false).await;
    let d = Daemon::start(&gw, "").await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let mut taps: Vec<Consumer> = Vec::new();
    let mut proved = false;
    for attempt in 0..5 {
        let t0 = Instant::now();
        let mut tap = d.tap().await;
        d.status_until("the new peer registered", |s| {
            s["consumers"]["taps"] == taps.len() + 1
        })
        .await;
        let sent = push_acked(&gw, 5, &format!("attempt {attempt} message")).await;
        // An ACK follows the commit, so all five were committed within this time of connecting.
        let committed_within = t0.elapsed();
        for (i, mid) in sent.iter().enumerate() {
            let v = tap.next().await;
            assert_eq!(
                v["message_id"],
                mid.as_str(),
                "attempt {attempt} line {i}: {v}"
            );
        }
        // Earlier taps get them too, after their own windows.
        for (j, t) in taps.iter_mut().enumerate() {
            for mid in &sent {
                assert_eq!(t.next().await["message_id"], mid.as_str(), "older tap {j}");
            }
        }
        taps.push(tap);
        if committed_within < HELLO_WAIT {
            proved = true;
            break;
        }
        eprintln!("attempt {attempt}: committed only after {committed_within:?}; trying again");
    }
    assert!(
        proved,
        "never managed to commit inside the 200 ms window (machine too loaded?)"
    );
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn bad_consumer_lines_get_error_replies_and_never_crash_the_daemon() {
    let gw = gateway(false).await;
    let d = Daemon::start(&gw, "limits:\n  max_line_bytes: 1KiB\n").await;
    gw.wait_connected(1, WAIT).await.unwrap();

    // A group member that says all the wrong things.
    let mut m = d.member("bot").await;
    let long = format!("{{\"ack\":1,\"pad\":\"{}\"}}", "x".repeat(4096));
    for (line, code) in [
        (r#"{"hello":{"group":"bot"}}"#, "bad_hello"),
        ("garbage", "bad_json"),
        ("[1,2]", "bad_json"),
        (r#"{"ack":"7"}"#, "bad_ack"),
        (r#"{"what":1}"#, "bad_request"),
        (r#"{"ack":424242}"#, "unknown_seq"),
        (long.as_str(), "too_long"),
        ("\u{0}\u{1}{{{{", "bad_json"),
    ] {
        m.send(line).await;
        let v = m.next().await;
        assert_eq!(v["error"]["code"], code, "reply to {:.40}: {v}", line);
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|s| !s.is_empty()),
            "{v}"
        );
    }
    // Bytes that are not UTF-8 are a bad line too, not the end of the connection.
    m.wr.write_all(b"{\"ack\":\xff\xfe}\n").await.unwrap();
    assert_eq!(m.next().await["error"]["code"], "bad_json");
    // ... and is still a working member.
    let p = gw.push_bot_text("still served").await.unwrap();
    let v = m.next().await;
    assert_eq!(v["message_id"], p.message_id.as_str());
    m.ack(v["seq"].as_u64().unwrap()).await;
    d.status_until("the ack", |s| s["groups"]["bot"]["acked"] == 1)
        .await;

    // A tap's lines are ignored, however bad; it keeps getting messages (a hello after the
    // window is the exception: tests/hello_window.rs).
    let mut tap = d.tap().await;
    tap.first_push_through(&gw, "a tap").await;
    tap.send("not json").await;
    tap.send(&"y".repeat(8192)).await;
    let p = gw.push_bot_text("tap still served").await.unwrap();
    assert_eq!(tap.next().await["message_id"], p.message_id.as_str());
    // The member got the pushes that made the tap known first.
    loop {
        let v = m.next().await;
        m.ack(seq(&v)).await;
        if v["message_id"] == p.message_id.as_str() {
            break;
        }
    }

    // A bad hello as the first line: an error, then the connection is closed.
    for hello in [
        r#"{"hello":{"group":"a b"}}"#,
        r#"{"hello":{"grp":"bot"}}"#,
        r#"{"hello":42}"#,
    ] {
        let mut c = Consumer::tap(&d.paths.socket).await;
        c.send(hello).await;
        let v = c.next().await;
        assert_eq!(v["error"]["code"], "bad_hello", "{hello}: {v}");
        c.expect_closed(hello).await;
    }
    // A first line that is too long is no hello either.
    let mut c = Consumer::tap(&d.paths.socket).await;
    c.send(&"z".repeat(4096)).await;
    assert_eq!(c.next().await["error"]["code"], "bad_hello");
    c.expect_closed("a long first line").await;

    let st = d.status().await;
    assert!(st["consumers"]["bad_lines"].as_u64().unwrap() >= 11, "{st}");
    assert_eq!(st["state"], "connected");
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn max_consumers_refuses_the_extra_peer_with_a_reason() {
    let gw = gateway(false).await;
    let d = Daemon::start(&gw, "limits:\n  max_consumers: 2\n").await;
    gw.wait_connected(1, WAIT).await.unwrap();
    // The probe that saw the socket accept holds a slot until its task has run.
    d.status_until("no consumer", |s| s["consumers"]["connected"] == 0)
        .await;
    let a = d.tap().await;
    d.status_until("the tap", |s| s["consumers"]["connected"] == 1)
        .await;
    let mut b = d.member("bot").await;
    d.status_until("two consumers", |s| s["consumers"]["connected"] == 2)
        .await;

    let mut extra = d.tap().await;
    let v = extra.next().await;
    assert_eq!(v["error"]["code"], "too_many_consumers", "{v}");
    extra.expect_closed("the refused peer").await;
    let st = d.status().await;
    assert_eq!(st["consumers"]["refused"], 1, "{st}");
    assert_eq!(st["consumers"]["connected"], 2, "{st}");

    // A slot freed is a slot available.
    drop(a);
    d.status_until("one consumer", |s| s["consumers"]["connected"] == 1)
        .await;
    let mut c = d.tap().await;
    d.status_until("two consumers again", |s| s["consumers"]["connected"] == 2)
        .await;
    let p = gw.push_bot_text("to the new tap").await.unwrap();
    assert_eq!(c.next().await["message_id"], p.message_id.as_str());
    assert_eq!(b.next().await["message_id"], p.message_id.as_str());
    assert_eq!(d.status().await["consumers"]["refused"], 1);
    d.stop().await.0.unwrap();
}
