//! The spool's promises (design.md §6): redeliveries are ACKed again but stored and delivered
//! once (by messageId, bot msgId, eventId; across a restart and across two connections; and the
//! ACK of a redelivery that arrives before the original is durable waits for it), retention
//! bounds force out unacked messages loudly, callback ACKs carry the consumer's response, and
//! an unusable spool directory or a full disk behave as documented.

mod common;

use common::*;
use dingtalk_streamd::sim::{
    BotMessage, FakeGateway, GatewayEvent, OutFrame, Route, TOPIC_CARD_CALLBACK,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Long enough to be sure nothing more is coming in a "nothing arrives" check.
const QUIET: Duration = Duration::from_millis(400);

async fn wait_acked(gw: &FakeGateway, ids: &[&str]) {
    gw.wait_until(|g| ids.iter().all(|m| !g.acks(m).is_empty()), WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}: {ids:?}"));
}

/// Polls the control socket at `control` until `pred` holds (deadline `within`).
async fn wait_status_at(
    control: &std::path::Path,
    what: &str,
    within: Duration,
    mut pred: impl FnMut(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let st = status(control).await;
        if pred(&st) {
            return st;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "status never showed {what}: {st}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Like `Daemon::start`, with extra keys under `spool:` (the harness writes that section).
async fn start_with_spool(gw: &FakeGateway, spool_keys: &str, extra: &str) -> Daemon {
    let paths = Paths::new();
    let dir_line = format!("spool:\n  dir: {}\n", paths.spool.display());
    let yaml =
        config_yaml(gw, &paths, extra).replace(&dir_line, &format!("{dir_line}{spool_keys}"));
    assert!(yaml.contains(spool_keys), "{yaml}");
    std::fs::write(&paths.config, yaml).unwrap();
    let loaded = dingtalk_streamd::config::Config::load(&paths.config).expect("config loads");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(dingtalk_streamd::run(loaded, shutdown.clone()));
    wait_for_socket(&paths.socket).await;
    Daemon {
        paths,
        shutdown,
        task,
    }
}

/// The tap's next line must be the message `id` (whatever came before it was a bug).
async fn expect_next(tap: &mut Consumer, id: &str) -> Value {
    let v = tap.next().await;
    assert_eq!(v["message_id"], id, "{v}");
    v
}

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
    let v = expect_next(&mut tap, &first.message_id).await;
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
    let m = expect_next(&mut tap, &marker.message_id).await;
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
    expect_next(&mut tap, &a.message_id).await;
    expect_next(&mut tap, &e1.message_id).await;
    expect_next(&mut tap, &marker.message_id).await;
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
    let v = expect_next(&mut tap, &marker.message_id).await;
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
    expect_next(&mut tap, &first.message_id).await;
    expect_next(&mut tap, &marker.message_id).await;
    assert!(
        gw.unacked().is_empty(),
        "nothing left for the fake to redeliver: {:?}",
        gw.unacked()
    );
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn max_age_forces_out_unacked_messages_counted_in_status() {
    let gw = gateway(false).await;
    let d = start_with_spool(&gw, "  max_age: 1s\n", "groups: [bot]\n").await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            gw.push_bot_text(&format!("old {i}"))
                .await
                .unwrap()
                .message_id,
        );
    }
    wait_acked(&gw, &ids.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let st = wait_status_at(&d.paths.control, "3 forced out", WAIT, |s| {
        s["spool"]["forced_out_unacked"] == 3
    })
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
    let d = start_with_spool(&gw, "  max_bytes: 1MiB\n", "groups: [bot]\n").await;
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
    wait_acked(&gw, &ids.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let st = wait_status_at(&d.paths.control, "forced out", WAIT, |s| {
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
    wait_status_at(&d.paths.control, "a's ack", WAIT, |s| {
        s["groups"]["a"]["cursor"] == 1
    })
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
    let st = wait_status_at(&d.paths.control, "the message gone", WAIT, |s| {
        s["spool"]["messages"] == 0
    })
    .await;
    assert_eq!(st["spool"]["forced_out_unacked"], 0, "{st}");
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn callback_ack_carries_the_members_response_or_null_on_timeout() {
    let gw = gateway(false).await;
    let extra = format!(
        "groups: [cards]\ncallbacks:\n  - {{ topic: {TOPIC_CARD_CALLBACK}, group: cards, timeout: 600ms }}\n"
    );
    let d = Daemon::start(&gw, &extra).await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let mut m = d.member("cards").await;

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

    // An ack without a response releases the held ACK at once, with null.
    let r = gw
        .push(
            OutFrame::card_callback("track-3", "user-1", &json!({})),
            Route::Random,
        )
        .await
        .unwrap();
    let mut v = m.next().await;
    if v["message_id"] != r.message_id.as_str() {
        v = m.next().await; // the unanswered one may come again first
    }
    let started = std::time::Instant::now();
    m.ack(v["seq"].as_u64().unwrap()).await;
    wait_acked(&gw, &[&r.message_id]).await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "waited for the timeout after a plain ack"
    );
    assert_eq!(gw.acks(&r.message_id)[0].data, r#"{"response":null}"#);
    d.stop().await.0.unwrap();
}

// ---- failure behaviour with the real binary ----

/// Runs the binary's `run` with `yaml` and expects it to exit 78 naming `must_mention`.
fn expect_exit_78(p: &Paths, yaml: &str, must_mention: &str) {
    std::fs::write(&p.config, yaml).unwrap();
    let mut child = spawn_bin(&["--config", p.config.to_str().unwrap(), "run"], &[]);
    let status = wait_exit(&mut child, WAIT);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(78), "stderr: {err}");
    assert!(
        err.contains(must_mention),
        "stderr does not name {must_mention}: {err}"
    );
    assert!(err.contains("spool"), "{err}");
}

#[tokio::test]
async fn unusable_spool_directory_exits_78_naming_it() {
    let gw = gateway(false).await;
    let p = Paths::new();
    let yaml = config_yaml(&gw, &p, "");
    let spool = p.spool.display().to_string();

    std::fs::remove_dir(&p.spool).unwrap();
    expect_exit_78(&p, &yaml, &spool);

    // Root can write anywhere a permission bit would stop others; /proc refuses even root.
    expect_exit_78(
        &p,
        &yaml.replace(&format!("dir: {spool}"), "dir: /proc"),
        "/proc",
    );

    let file = p.dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    for dir in [file.clone(), file.join("below")] {
        let d = dir.display().to_string();
        expect_exit_78(
            &p,
            &yaml.replace(&format!("dir: {spool}"), &format!("dir: {d}")),
            &d,
        );
    }
}

/// The daemon binary in a private mount namespace with a `size` tmpfs on its spool directory.
/// The test reaches that tmpfs through `/proc/<pid>/root`.
struct TmpfsDaemon {
    child: Child,
    spool_inside: std::path::PathBuf,
}

impl TmpfsDaemon {
    fn start(p: &Paths, size: &str) -> TmpfsDaemon {
        TmpfsDaemon::start_with(p, size, false)
    }

    /// With `full`, the tmpfs is filled before the daemon starts (disk full at start).
    fn start_with(p: &Paths, size: &str, full: bool) -> TmpfsDaemon {
        let spool = p.spool.display();
        let fill = if full {
            format!("(dd if=/dev/zero of='{spool}/filler' bs=4k 2>/dev/null; true) && ")
        } else {
            String::new()
        };
        let script = format!(
            "mount -t tmpfs -o size={size} tmpfs '{spool}' && {fill}exec '{}' --config '{}' run",
            bin(),
            p.config.display()
        );
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .env_remove("LISTEN_FDS")
            .spawn()
            .expect("unshare");
        let spool_inside =
            std::path::PathBuf::from(format!("/proc/{}/root{}", child.id(), p.spool.display()));
        TmpfsDaemon {
            child,
            spool_inside,
        }
    }

    /// Fills the tmpfs with a file until the write fails for lack of space.
    fn fill(&self) {
        let mut f = std::fs::File::create(self.spool_inside.join("filler")).expect("create filler");
        let chunk = vec![0u8; 64 * 1024];
        loop {
            match f.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        let mut small = [0u8; 512];
        while f.write_all(&small[..]).is_ok() {
            small[0] = 1;
        }
    }

    fn free(&self) {
        std::fs::remove_file(self.spool_inside.join("filler")).expect("remove filler");
    }

    fn stop(mut self) -> String {
        signal(&self.child, nix::sys::signal::Signal::SIGTERM);
        let st = wait_exit(&mut self.child, WAIT);
        let mut err = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(st.code(), Some(0), "{err}");
        err
    }
}

fn can_mount_tmpfs() -> bool {
    // Only root (CAP_SYS_ADMIN) can do this; anyone else gets the skip message.
    Command::new("unshare")
        .args([
            "--mount",
            "sh",
            "-c",
            "mount -t tmpfs -o size=64k tmpfs /mnt",
        ])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A big text, so that one frame needs more WAL than any earlier commit left allocated.
fn big_text(tag: &str, kib: usize) -> String {
    format!("{tag} {}", "x".repeat(kib * 1024))
}

#[tokio::test]
async fn disk_full_at_run_time_stops_acking_sheds_and_recovers_by_itself() {
    if !can_mount_tmpfs() {
        eprintln!("SKIPPED: needs root and `unshare --mount` with tmpfs to simulate a full disk");
        return;
    }
    let gw = gateway_with(|c| {
        c.redeliver_after = Some(Duration::from_secs(3));
        c.max_redeliveries = 100;
    })
    .await;
    let p = Paths::new();
    std::fs::write(
        &p.config,
        config_yaml(&gw, &p, "groups: [bot]\nlimits:\n  max_pending_acks: 5\n"),
    )
    .unwrap();
    let daemon = TmpfsDaemon::start(&p, "8m");
    wait_for_socket(&p.socket).await;
    gw.wait_connected(1, WAIT).await.unwrap();
    let mut m = Consumer::member(&p.socket, "bot").await;
    let mut delivered: BTreeMap<String, u64> = BTreeMap::new();
    let before = gw.push_bot_text("before").await.unwrap();
    let v = m.next().await;
    assert_eq!(v["message_id"], before.message_id.as_str());
    m.ack(v["seq"].as_u64().unwrap()).await;

    // Round 1: full disk; a frame and its redelivery (same messageId) arrive before either is
    // durable: neither is ACKed until space returns, then both are, and it is stored once.
    daemon.fill();
    let bot = BotMessage {
        text: big_text("round1", 100),
        ..BotMessage::text("")
    };
    let a = gw
        .push(bot.clone().into_frame(), Route::Random)
        .await
        .unwrap();
    let st = wait_status_at(&p.control, "degraded", WAIT, |s| {
        s["spool"]["degraded"] == true
    })
    .await;
    assert!(
        st["summary"]
            .as_str()
            .unwrap()
            .contains("spool full: not acking"),
        "{st}"
    );
    assert!(
        st["spool"]["last_error"]
            .as_str()
            .unwrap()
            .contains("disk full"),
        "{st}"
    );
    gw.push(
        bot.into_frame().with_message_id(&a.message_id),
        Route::Random,
    )
    .await
    .unwrap();
    assert!(
        m.next_within(QUIET * 2).await.is_none(),
        "nothing new is delivered while full"
    );
    assert!(gw.acks(&a.message_id).is_empty(), "ACKed while not durable");
    daemon.free();
    gw.wait_until(|g| g.acks(&a.message_id).len() >= 2, WAIT)
        .await
        .expect("both deliveries ACKed after recovery");
    let v = m.next().await;
    assert_eq!(v["message_id"], a.message_id.as_str());
    delivered.insert(a.message_id.clone(), v["seq"].as_u64().unwrap());
    m.ack(v["seq"].as_u64().unwrap()).await;
    wait_status_at(&p.control, "recovered", WAIT, |s| {
        s["spool"]["degraded"] == false
    })
    .await;

    // Round 2: full again; frames pile up until max_pending_acks sheds the connection, so
    // DingTalk would route to another host. Then space returns and everything arrives.
    daemon.fill();
    let c1 = gw.open_connections()[0];
    let mut ids = Vec::new();
    for i in 0..12 {
        match gw
            .push(
                OutFrame::bot_text(&big_text(&format!("round2 {i}"), 300)),
                Route::To(c1),
            )
            .await
        {
            Ok(p) => ids.push(p.message_id),
            Err(_) => break, // shed: the connection is gone
        }
        if i == 0 {
            wait_status_at(&p.control, "degraded again", WAIT, |s| {
                s["spool"]["degraded"] == true
            })
            .await;
        }
    }
    gw.wait_for(
        |e| matches!(e, GatewayEvent::Closed { conn, .. } if *conn == c1),
        WAIT,
    )
    .await
    .expect("connection shed after max_pending_acks");
    assert!(
        ids.iter().all(|id| gw.acks(id).is_empty()),
        "ACKed while the disk is full"
    );
    assert!(
        m.next_within(QUIET).await.is_none(),
        "nothing new is delivered while full"
    );
    daemon.free();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while ids.iter().any(|id| !delivered.contains_key(id)) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let v = m.next_within(left).await.unwrap_or_else(|| {
            panic!(
                "not delivered after recovery: {:?}",
                ids.iter()
                    .filter(|i| !delivered.contains_key(*i))
                    .collect::<Vec<_>>()
            )
        });
        let id = v["message_id"].as_str().unwrap().to_owned();
        let seq = v["seq"].as_u64().unwrap();
        if let Some(old) = delivered.insert(id.clone(), seq) {
            assert_eq!(old, seq, "{id} stored twice");
        }
        m.ack(seq).await;
    }
    gw.wait_until(
        |g| ids.iter().all(|id| !g.acks(id).is_empty()),
        Duration::from_secs(30),
    )
    .await
    .expect("all ACKed after recovery");
    let st = wait_status_at(&p.control, "recovered", WAIT, |s| {
        s["spool"]["degraded"] == false
    })
    .await;
    assert_eq!(
        st["spool"]["stored"].as_u64(),
        Some(ids.len() as u64 + 2),
        "each stored once: {st}"
    );
    let log = daemon.stop();
    assert!(log.contains("spool full"), "{log}");
    assert!(log.contains("shedding"), "{log}");
    assert!(log.contains("spool writable again"), "{log}");
}

#[tokio::test]
async fn disk_full_at_start_runs_degraded_then_starts_when_space_returns() {
    if !can_mount_tmpfs() {
        eprintln!("SKIPPED: needs root and `unshare --mount` with tmpfs to simulate a full disk");
        return;
    }
    let gw = gateway(false).await;
    let p = Paths::new();
    std::fs::write(&p.config, config_yaml(&gw, &p, "groups: [bot]\n")).unwrap();
    let mut daemon = TmpfsDaemon::start_with(&p, "1m", true);
    // While the disk is full nothing could be ACKed, so the daemon does not even ask for a
    // ticket; it does not exit either (exit 78/1 would make systemd give up or loop).
    let asked = gw
        .wait_for(
            |e| matches!(e, GatewayEvent::TicketRequested(_)),
            Duration::from_millis(1500),
        )
        .await;
    assert!(
        asked.is_err(),
        "asked DingTalk for a ticket with a full spool"
    );
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the daemon exited with a full disk at start"
    );

    daemon.free();
    gw.wait_connected(1, WAIT).await.unwrap();
    wait_for_socket(&p.socket).await;
    let mut member = Consumer::member(&p.socket, "bot").await;
    let pushed = gw
        .push_bot_text("after the disk had room again")
        .await
        .unwrap();
    let v = member.next().await;
    assert_eq!(v["message_id"], pushed.message_id.as_str());
    let err = daemon.stop();
    assert!(err.contains("spool full at start"), "{err}");
    assert!(err.contains("spool writable again"), "{err}");
}
