//! The consumer socket's first 200 ms decide what a peer is, and nothing it does later changes
//! that silently: a first line that is not a valid hello gets `bad_hello` and the connection
//! closes; a hello after the window gets `late_hello` and closes; a tap may half-close its
//! sending side and keeps receiving (and its slot is freed once it closes for good); a slow
//! tap reads `too_slow` before it is cut off; every accepted peer is logged with its uid and
//! pid (SO_PEERCRED).

mod common;

use common::*;
use dingtalk_streamd::consumers::hub::TAP_QUEUE_BYTES;
use dingtalk_streamd_sim::{OutFrame, Route};
use nix::sys::signal::Signal;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Everything left on a connection the daemon closes, as complete lines.
async fn read_to_eof(s: &mut UnixStream) -> Vec<String> {
    let mut all = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut all))
        .await
        .expect("the daemon closed the connection in time")
        .expect("read");
    String::from_utf8_lossy(&all)
        .split_inclusive('\n')
        .map(|l| {
            assert!(l.ends_with('\n'), "a cut line: {l:.120}");
            l.trim_end().to_owned()
        })
        .collect()
}

#[tokio::test]
async fn a_first_line_that_is_not_a_valid_hello_gets_bad_hello_and_is_closed() {
    let gw = gateway(false).await;
    let d = Daemon::start(&gw, "limits:\n  max_line_bytes: 1KiB\n").await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let long = "z".repeat(4096);
    for first in [
        "not json",
        r#"{"ack":1}"#,
        "[1,2]",
        "",
        r#"{"hello":{"group":"a b"}}"#,
        r#"{"hello":42}"#,
        long.as_str(),
    ] {
        let mut c = Consumer::tap(&d.paths.socket).await;
        c.send(first).await;
        let v = c.next().await;
        assert_eq!(v["error"]["code"], "bad_hello", "{first:.40}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        // Not a tap: no message reaches it, the connection closes.
        c.expect_closed(first).await;
    }
    // The daemon and its consumers are fine.
    let mut m = d.member("bot").await;
    let p = gw.push_bot_text("after the bad hellos").await.unwrap();
    m.expect_message(&p.message_id).await;
    let st = d.status().await;
    assert!(st["consumers"]["bad_lines"].as_u64().unwrap() >= 7, "{st}");
    assert_eq!(st["consumers"]["taps"], 0, "{st}");
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn a_hello_after_the_window_gets_late_hello_and_other_lines_of_a_tap_are_ignored() {
    let gw = gateway(false).await;
    let d = Daemon::start(&gw, "limits:\n  max_line_bytes: 1KiB\n").await;
    gw.wait_connected(1, WAIT).await.unwrap();

    let mut tap = d.tap().await;
    tap.first_push_through(&gw, "makes it a tap").await;
    tap.send("not json").await;
    tap.send(r#"{"ack":1}"#).await;
    tap.send(&"y".repeat(8192)).await;
    let p = gw.push_bot_text("the tap is still served").await.unwrap();
    tap.expect_message(&p.message_id).await;

    for late in [r#"{"hello":{"group":"bot"}}"#, r#"{"hello":{"grp":"x"}}"#] {
        let mut late_tap = d.tap().await;
        late_tap.first_push_through(&gw, "a tap first").await;
        late_tap.send(late).await;
        let v = late_tap.next().await;
        assert_eq!(v["error"]["code"], "late_hello", "{late}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("first line")),
            "{v}"
        );
        late_tap.expect_closed(late).await;
        // The group was not joined behind its back.
        assert!(d.status().await["groups"].get("bot").is_none());
    }
    let p = gw.push_bot_text("the first tap still").await.unwrap();
    // The taps above got the "a tap first" pushes too; skip to this one.
    loop {
        if tap.next().await["message_id"] == p.message_id.as_str() {
            break;
        }
    }
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn a_tap_that_half_closes_keeps_receiving_and_its_slot_is_freed_when_it_closes() {
    let gw = gateway(false).await;
    let d = Daemon::start(&gw, "").await;
    gw.wait_connected(1, WAIT).await.unwrap();

    // `socat - UNIX-CONNECT:...` with stdin at its end: the sending side closes at once,
    // inside the hello window.
    let s = UnixStream::connect(&d.paths.socket).await.unwrap();
    let (rd, mut wr) = s.into_split();
    wr.shutdown().await.unwrap();
    let mut tap = Consumer {
        lines: tokio::io::BufReader::new(rd).lines(),
        wr,
    };
    d.status_until("the half-closed tap", |s| s["consumers"]["taps"] == 1)
        .await;
    let (first, _) = tap.first_push_through(&gw, "to a half-closed tap").await;
    let ids = push_acked(&gw, 3, "more").await;
    for id in &ids {
        tap.expect_message(id).await;
    }
    let st = d.status().await;
    assert_eq!(st["consumers"]["taps_dropped_slow"], 0, "{st}");
    assert!(!first.message_id.is_empty());

    // A tap that half-closes after its window is served the same way.
    let mut later = d.tap().await;
    later.first_push_through(&gw, "a tap").await;
    later.wr.shutdown().await.unwrap();
    let p = gw.push_bot_text("after the half-close").await.unwrap();
    later.expect_message(&p.message_id).await;

    // Closing for good frees the slot (within seconds), with no message to write to find out.
    d.status_until("two consumers", |s| s["consumers"]["connected"] == 2)
        .await;
    drop(tap);
    drop(later);
    d.status_until("both gone", |s| {
        s["consumers"]["connected"] == 0 && s["consumers"]["taps"] == 0
    })
    .await;
    d.stop().await.0.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_tap_reads_too_slow_after_whole_lines_before_it_is_cut_off() {
    let gw = gateway(false).await;
    let d = Daemon::start(&gw, "").await;
    gw.wait_connected(1, WAIT).await.unwrap();
    // Reads nothing until it has been cut off; then reads what the daemon still sends.
    let mut slow = UnixStream::connect(&d.paths.socket).await.unwrap();
    d.status_until("the tap", |s| s["consumers"]["taps"] == 1)
        .await;
    const TEXT: usize = 64 * 1024;
    let n = TAP_QUEUE_BYTES / TEXT + 64;
    let frames = (0..n).map(|i| {
        let mut t = format!("{i:06} ");
        t.push_str(&"x".repeat(TEXT - t.len()));
        OutFrame::bot_text(&t)
    });
    let pushed = gw.push_many(frames, Route::Random).await.unwrap();
    d.status_until("the slow tap cut off", |s| {
        s["consumers"]["taps_dropped_slow"] == 1
    })
    .await;
    let lines = read_to_eof(&mut slow).await;
    let (notice, messages) = lines.split_last().expect("lines before the cut");
    let v: Value = serde_json::from_str(notice).unwrap();
    assert_eq!(
        v["error"]["code"], "too_slow",
        "the last line: {notice:.200}"
    );
    assert!(
        messages.len() < n,
        "it got all {n}: never cut off ({})",
        messages.len()
    );
    for (i, l) in messages.iter().enumerate() {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("line {i}: {e}"));
        assert_eq!(v["message_id"], pushed[i].message_id.as_str(), "line {i}");
    }
    d.status_until("its slot freed", |s| s["consumers"]["connected"] == 0)
        .await;
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn every_accepted_peer_is_logged_with_its_uid_and_pid() {
    let gw = gateway(false).await;
    let p = Paths::new();
    p.configure(&gw, "");
    let mut d = start_run(&p, &[]).await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let _tap = Consumer::tap(&p.socket).await;
    let _member = Consumer::member(&p.socket, "bot").await;
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
    let me = format!("pid={} uid={uid}", std::process::id());
    let mut from = 0;
    for _ in 0..2 {
        let l = d.wait_line(&mut from, "consumer connected", WAIT).await;
        assert!(l.text.contains(&me), "{} lacks {me}", l.text);
        assert!(l.text.contains("INFO"), "{}", l.text);
    }
    d.signal(Signal::SIGTERM);
    assert_eq!(d.wait_exit(WAIT).await.code(), Some(0), "{}", d.stderr());
}
