//! The example consumers, run as a user would run them, against the daemon and the fake
//! gateway over TLS: examples/consumer.py (Python standard library only) and
//! examples/consumer.mjs (Node, no npm packages). Each joins group `bot`, answers every bot
//! message through the message's `sessionWebhook` (served by the fake gateway, which records
//! the reply against the message's `msgId`), and acks every message it handled, events
//! included. Node is skipped with a message when it is not installed, unless
//! `DTS_REQUIRE_SDKS=1` (CI, which installs it) makes that a failure. The example systemd unit
//! passes `systemd-analyze verify` and stays hardened.

mod common;

use common::privileged::skip_or_fail;
use common::*;
use dingtalk_streamd_sim::{OutFrame, Route};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Set to 1 to make a test that has no `node` fail instead of skip (shared with compat_sdk).
const REQUIRE_SDKS: &str = "DTS_REQUIRE_SDKS";
/// An interpreter's start-up comes on top of the usual deadline.
const EXAMPLE_WAIT: Duration = Duration::from_secs(20);

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Starts the example `start(socket, ca_file)` against a daemon and a TLS gateway, pushes
/// bot messages and an event, and checks that each bot message got its reply and that
/// everything was acked.
async fn replies_and_acks(name: &str, start: impl FnOnce(&Path, &Path) -> Proc) {
    let gw = gateway(true).await;
    let d = Daemon::start(&gw, "groups: [bot]\n").await;
    gw.wait_connected(1, WAIT).await.expect("daemon connected");
    let ca = d.paths.path("ca.pem");
    let bot = start(&d.paths.socket, &ca);
    bot.try_wait_line(&mut 0, |l| l.contains("joined group bot"), EXAMPLE_WAIT)
        .await
        .unwrap_or_else(|out| panic!("{name} did not join the group:\n{out}"));

    let texts = ["hello", "what time is it?", "多谢"];
    let mut frames: Vec<OutFrame> = texts.iter().map(|t| OutFrame::bot_text(t)).collect();
    frames.insert(
        1,
        OutFrame::event("user_add_org", &json!({"userId": ["u1"]})),
    );
    let pushed = gw.push_many(frames, Route::Random).await.expect("pushed");
    let mut msg_ids = Vec::new();
    for p in pushed.iter().filter(|p| p.text.contains("\"CALLBACK\"")) {
        let frame: serde_json::Value = serde_json::from_str(&p.text).expect("frame JSON");
        let data: serde_json::Value =
            serde_json::from_str(frame["data"].as_str().expect("data")).expect("data JSON");
        msg_ids.push((
            data["msgId"].as_str().expect("msgId").to_owned(),
            data["text"]["content"].as_str().expect("text").to_owned(),
        ));
    }
    assert_eq!(msg_ids.len(), texts.len());
    for (msg_id, text) in &msg_ids {
        let reply = gw
            .wait_webhook_reply(msg_id, EXAMPLE_WAIT)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}; output:\n{}", bot.text()));
        assert_eq!(
            reply.text(),
            Some(format!("got it: {text}").as_str()),
            "{name}"
        );
        assert_eq!(reply.body["msgtype"], "text", "{name}");
        assert_eq!(
            reply.content_type.as_deref(),
            Some("application/json"),
            "{name}"
        );
    }
    let st = d
        .status_until("the example acked every message", |st| {
            let g = &st["groups"]["bot"];
            g["acked"] == 4 && g["backlog"] == 0
        })
        .await;
    assert_eq!(st["groups"]["bot"]["members"], 1, "{st}");
    assert_eq!(
        gw.webhook_replies().len(),
        texts.len(),
        "{name}: one reply per bot message, none for the event"
    );
    let out = bot.text();
    assert!(
        !out.contains("sendBySession"),
        "{name} printed a sessionWebhook URL:\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_consumer_replies_through_the_session_webhook_and_acks() {
    let python = std::env::var("PYTHON3").unwrap_or_else(|_| "python3".into());
    let script = example("consumer.py");
    replies_and_acks("consumer.py", |socket, ca| {
        let args = [
            s(&script),
            "--socket",
            s(socket),
            "--group",
            "bot",
            "--ca-file",
            s(ca),
        ];
        Proc::spawn("consumer.py", command(&python, &args, &[]))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_consumer_replies_through_the_session_webhook_and_acks() {
    let test = "node_consumer_replies_through_the_session_webhook_and_acks";
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        skip_or_fail(REQUIRE_SDKS, test, "node is not installed");
        return;
    }
    let script = example("consumer.mjs");
    replies_and_acks("consumer.mjs", |socket, ca| {
        let envs = [
            ("DINGTALK_STREAMD_SOCKET", s(socket)),
            ("DINGTALK_STREAMD_GROUP", "bot"),
            ("NODE_EXTRA_CA_CERTS", s(ca)),
        ];
        Proc::spawn("consumer.mjs", command("node", &[s(&script)], &envs))
    })
    .await;
}

/// A consumer that cannot join says why and exits 1 (here: a group the daemon refuses).
#[tokio::test]
async fn python_consumer_says_why_it_cannot_join() {
    let python = std::env::var("PYTHON3").unwrap_or_else(|_| "python3".into());
    let gw = gateway(false).await;
    let d = Daemon::start(&gw, "consumers:\n  adhoc_groups: false\n").await;
    let script = example("consumer.py");
    let args = [
        s(&script),
        "--socket",
        s(&d.paths.socket),
        "--group",
        "nope",
    ];
    let mut bot = Proc::spawn("consumer.py", command(&python, &args, &[]));
    let status = bot.wait_exit(EXAMPLE_WAIT).await;
    assert_eq!(status.code(), Some(1), "{}", bot.text());
    assert!(
        bot.stderr().contains("not admitted to group nope")
            && bot.stderr().contains("unknown_group"),
        "{}",
        bot.text()
    );
    let missing = d.paths.path("missing.sock");
    let args = [s(&script), "--socket", s(&missing)];
    let mut bot = Proc::spawn("consumer.py", command(&python, &args, &[]));
    assert_eq!(bot.wait_exit(EXAMPLE_WAIT).await.code(), Some(1));
    assert!(bot.stderr().contains("cannot connect to"), "{}", bot.text());
}

/// The example unit is valid for systemd (`verify` prints nothing) and keeps its sandbox
/// (`security --offline` exposure at most 1.5). Skipped where systemd-analyze is missing.
#[test]
fn the_example_unit_verifies_and_is_hardened() {
    let test = "the_example_unit_verifies_and_is_hardened";
    if std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED {test}: systemd-analyze is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = dir.path().join("dingtalk-consumer.service");
    std::fs::copy(example("dingtalk-consumer.service"), &unit).expect("copy unit");
    let verify = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no", s(&unit)])
        .output()
        .expect("systemd-analyze verify");
    let said = String::from_utf8_lossy(&verify.stdout).into_owned()
        + &String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
    let security = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--threshold=15", s(&unit)])
        .output()
        .expect("systemd-analyze security");
    assert!(
        security.status.success(),
        "exposure above 1.5:\n{}",
        String::from_utf8_lossy(&security.stdout)
    );
}
