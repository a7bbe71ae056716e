//! The official DingTalk Stream SDKs, unmodified, against the local endpoint (`compat:`): the
//! Python SDK (PyPI `dingtalk-stream` 0.24.3, `DINGTALK_OPENAPI_ENDPOINT` pointing at the
//! endpoint) and the Node SDK (npm `dingtalk-stream` 2.1.5, its `GATEWAY_URL` constant
//! patched), each in a throwaway folder under target/sdk (tests/support/sdk-install, cached).
//! Each gets bot messages and events exactly once and ACKs them, gets what arrived while it
//! was killed, shares the group's load with another SDK process; the Python SDK answers a card
//! callback and gets the real access token; examples/sdk_bot.py replies through the OpenAPI.
//!
//! The registries are needed only to install; where that is impossible the tests say so and
//! skip, unless `DTS_REQUIRE_SDKS=1` (CI), which makes a skip a failure.

mod common;

use common::privileged::skip_or_fail;
use common::*;
use dingtalk_streamd_sim::{FakeGateway, OutFrame, Pushed, Route, TOPIC_CARD_CALLBACK};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

/// Set to 1 to make a test that cannot install the SDKs fail instead of skip.
const REQUIRE_SDKS: &str = "DTS_REQUIRE_SDKS";
/// SDK processes start slower than anything else here (Python imports, Node's 1 s retries).
const SDK_WAIT: Duration = Duration::from_secs(30);

/// The cache of installed SDKs: target/sdk.
fn sdk_dir() -> PathBuf {
    let exe = Path::new(bin());
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/dingtalk-streamd")
        .join("sdk")
}

/// Installs (once per test binary; the script caches across runs) `kind` into `dir`.
fn install(kind: &str, dir: &Path) -> Result<PathBuf, String> {
    let out = std::process::Command::new(support("sdk-install"))
        .arg(kind)
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run tests/support/sdk-install: {e}"))?;
    if out.status.success() {
        return Ok(dir.to_owned());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = err.lines().rev().take(5).collect();
    Err(format!(
        "installing the {kind} SDK failed (no access to its registry?): {}",
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    ))
}

/// The venv's python, or `None` (skipped) when the SDK cannot be installed here.
fn python(test: &str) -> Option<PathBuf> {
    static VENV: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match VENV.get_or_init(|| install("python", &sdk_dir().join("python-venv"))) {
        Ok(dir) => Some(dir.join("bin/python")),
        Err(e) => {
            skip_or_fail(REQUIRE_SDKS, test, e);
            None
        }
    }
}

/// The Node SDK cache folder, or `None` (skipped).
fn node(test: &str) -> Option<PathBuf> {
    static NODE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let which = std::process::Command::new("node").arg("--version").output();
    if !which.is_ok_and(|o| o.status.success()) {
        skip_or_fail(REQUIRE_SDKS, test, "node is not installed");
        return None;
    }
    match NODE.get_or_init(|| install("node", &sdk_dir().join("node"))) {
        Ok(dir) => Some(dir.clone()),
        Err(e) => {
            skip_or_fail(REQUIRE_SDKS, test, e);
            None
        }
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The Python SDK bot (tests/support/py_bot.py) with `envs` on top of the local credentials.
fn py_bot(py: &Path, ep: &Endpoint, envs: &[(&str, &str)]) -> Proc {
    let script = support("py_bot.py");
    let mut all = vec![
        ("DINGTALK_OPENAPI_ENDPOINT", ep.base.as_str()),
        ("APP_ID", LOCAL_ID),
        ("APP_SECRET", LOCAL_SECRET),
    ];
    all.extend_from_slice(envs);
    Proc::spawn("py_bot", command(py, &[s(&script)], &all))
}

/// The Node SDK bot (tests/support/node_bot.mjs) in its own app folder under `dir`, with the
/// SDK's GATEWAY_URL patched to the endpoint.
fn node_bot(cache: &Path, ep: &Endpoint, dir: &Path) -> Proc {
    let app = dir.join("node-app");
    let url = ep.url("/v1.0/gateway/connections/open");
    let out = std::process::Command::new(support("sdk-install"))
        .args(["node-app", s(cache), s(&app), &url])
        .output()
        .expect("sdk-install node-app");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = app.join("node_bot.mjs");
    std::fs::copy(support("node_bot.mjs"), &script).expect("copy node_bot.mjs");
    let envs = [("APP_ID", LOCAL_ID), ("APP_SECRET", LOCAL_SECRET)];
    Proc::spawn("node_bot", command("node", &[s(&script)], &envs))
}

/// A line recording something handled.
fn is_record(l: &str) -> bool {
    l.starts_with("@@ ") && !l.contains("\"starting\"")
}

/// Waits for `n` more `@@` records of `bot` after `*from`.
async fn records(bot: &Proc, from: &mut usize, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    for _ in 0..n {
        let line = bot
            .try_wait_line(from, is_record, SDK_WAIT)
            .await
            .unwrap_or_else(|out| {
                panic!("{}: {} of {n} records; output:\n{out}", bot.name, got.len())
            });
        got.push(serde_json::from_str(&line.text[3..]).expect("record JSON"));
    }
    got
}

/// Every `@@` record of `bot` of `kind` so far.
fn all_records(bot: &Proc, kind: &str) -> Vec<Value> {
    bot.lines()
        .iter()
        .filter_map(|l| l.text.strip_prefix("@@ "))
        .filter_map(|t| serde_json::from_str::<Value>(t).ok())
        .filter(|v| v["kind"] == kind)
        .collect()
}

/// The key a bot records for a push: a bot message's msgId, an event's eventId.
fn key_of(p: &Pushed) -> String {
    let v: Value = serde_json::from_str(&p.text).unwrap();
    match v["headers"]["eventId"].as_str() {
        Some(e) => e.to_owned(),
        None => {
            let data: Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
            data["msgId"].as_str().unwrap().to_owned()
        }
    }
}

fn record_key(r: &Value) -> String {
    r["msgId"]
        .as_str()
        .or(r["eventId"].as_str())
        .unwrap_or("")
        .to_owned()
}

/// `bots` bot messages and `events` events, pushed and stored; their keys.
async fn push_some(gw: &FakeGateway, tag: &str, bots: usize, events: usize) -> Vec<String> {
    let mut frames: Vec<OutFrame> = (0..bots)
        .map(|i| OutFrame::bot_text(&format!("{tag} {i}")))
        .collect();
    frames
        .extend((0..events).map(|i| OutFrame::event("user_add_org", &json!({"n": i, "tag": tag}))));
    let pushed = gw.push_many(frames, Route::Random).await.expect("push");
    let ids: Vec<&str> = pushed.iter().map(|p| p.message_id.as_str()).collect();
    wait_acked(gw, &ids).await;
    pushed.iter().map(key_of).collect()
}

async fn daemon(gw: &FakeGateway, ep: &Endpoint, extra: &str) -> Daemon {
    let p = Paths::new();
    let yaml = format!("{}consumers:\n  ack_wait: 10s\n{extra}", ep.yaml(&p));
    let d = Daemon::start_at(p, gw, &yaml).await;
    gw.wait_connected(1, WAIT).await.unwrap();
    d
}

async fn members(d: &Daemon, n: u64) {
    status_until(&d.paths.control, &format!("{n} SDK connection(s)"), |s| {
        s["groups"]["sdk"]["members"] == n
    })
    .await;
}

async fn acked(d: &Daemon, n: u64) {
    status_until(&d.paths.control, &format!("{n} acked by the SDKs"), |s| {
        s["groups"]["sdk"]["acked"] == n && s["groups"]["sdk"]["in_flight"] == 0
    })
    .await;
}

/// Everything once, then a kill, a backlog, a restart that gets it: the same for each SDK.
async fn exactly_once_and_after_a_restart(d: &Daemon, gw: &FakeGateway, spawn: impl Fn() -> Proc) {
    let mut bot = spawn();
    members(d, 1).await;
    let first = push_some(gw, "first", 5, 2).await;
    let mut from = 0;
    let got = records(&bot, &mut from, first.len()).await;
    acked(d, 7).await;
    bot.child.kill().expect("kill the SDK process");
    let _ = bot.child.wait();
    members(d, 0).await;
    let meanwhile = push_some(gw, "meanwhile", 3, 1).await;
    let bot2 = spawn();
    let mut from2 = 0;
    let got2 = records(&bot2, &mut from2, meanwhile.len()).await;
    acked(d, 11).await;
    // Nothing more comes (no duplicate, no redelivery).
    assert!(
        bot2.try_wait_line(&mut from2, is_record, QUIET)
            .await
            .is_err()
    );
    let seen: Vec<String> = [
        all_records(&bot, "bot"),
        all_records(&bot, "event"),
        all_records(&bot2, "bot"),
        all_records(&bot2, "event"),
    ]
    .concat()
    .iter()
    .map(record_key)
    .collect();
    assert_eq!(seen.len(), 11, "exactly once: {seen:?}");
    let want: BTreeSet<String> = first.iter().chain(&meanwhile).cloned().collect();
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), want);
    let got2: BTreeSet<String> = got2.iter().map(record_key).collect();
    assert_eq!(
        got2,
        meanwhile.iter().cloned().collect(),
        "the restarted SDK got what arrived meanwhile"
    );
    assert_eq!(got.len(), 7);
}

#[tokio::test]
async fn python_sdk_gets_everything_once_and_what_arrived_while_it_was_down() {
    let Some(py) = python("python_sdk_gets_everything_once_and_what_arrived_while_it_was_down")
    else {
        return;
    };
    let gw = gateway(false).await;
    let ep = Endpoint::new();
    let d = daemon(&gw, &ep, "").await;
    exactly_once_and_after_a_restart(&d, &gw, || py_bot(&py, &ep, &[])).await;
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn node_sdk_gets_everything_once_and_what_arrived_while_it_was_down() {
    let Some(cache) = node("node_sdk_gets_everything_once_and_what_arrived_while_it_was_down")
    else {
        return;
    };
    let gw = gateway(false).await;
    let ep = Endpoint::new();
    let d = daemon(&gw, &ep, "").await;
    let dir = tempfile::tempdir().unwrap();
    exactly_once_and_after_a_restart(&d, &gw, || node_bot(&cache, &ep, dir.path())).await;
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn two_sdk_processes_share_the_groups_load() {
    let test = "two_sdk_processes_share_the_groups_load";
    let (Some(py), Some(cache)) = (python(test), node(test)) else {
        return;
    };
    let gw = gateway(false).await;
    let ep = Endpoint::new();
    let d = daemon(&gw, &ep, "").await;
    let dir = tempfile::tempdir().unwrap();
    let a = py_bot(&py, &ep, &[]);
    let b = node_bot(&cache, &ep, dir.path());
    members(&d, 2).await;
    let keys = push_some(&gw, "shared", 40, 0).await;
    acked(&d, 40).await;
    // Nothing more comes to either.
    let (mut fa, mut fb) = (a.len(), b.len());
    assert!(a.try_wait_line(&mut fa, is_record, QUIET).await.is_err());
    assert!(b.try_wait_line(&mut fb, is_record, QUIET).await.is_err());
    let (ra, rb) = (all_records(&a, "bot"), all_records(&b, "bot"));
    assert!(
        !ra.is_empty() && !rb.is_empty(),
        "both took a share: {} and {}",
        ra.len(),
        rb.len()
    );
    let all: Vec<String> = ra.iter().chain(&rb).map(record_key).collect();
    assert_eq!(all.len(), 40, "each message once");
    assert_eq!(
        all.into_iter().collect::<BTreeSet<_>>(),
        keys.into_iter().collect()
    );
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn a_card_callback_answered_by_the_python_sdk_reaches_dingtalk() {
    let Some(py) = python("a_card_callback_answered_by_the_python_sdk_reaches_dingtalk") else {
        return;
    };
    let gw = gateway(false).await;
    let ep = Endpoint::new();
    let extra =
        format!("callbacks:\n  - topic: {TOPIC_CARD_CALLBACK}\n    group: sdk\n    timeout: 10s\n");
    let d = daemon(&gw, &ep, &extra).await;
    let bot = py_bot(&py, &ep, &[]);
    members(&d, 1).await;
    let card = gw
        .push(
            OutFrame::card_callback("card-42", "user-1", &json!({"action": "accept"})),
            Route::Random,
        )
        .await
        .unwrap();
    let mut from = 0;
    let r = records(&bot, &mut from, 1).await;
    assert_eq!(r[0]["outTrackId"], "card-42");
    wait_acked(&gw, &[card.message_id.as_str()]).await;
    let ack = &gw.acks(&card.message_id)[0];
    let data: Value = serde_json::from_str(&ack.data).unwrap();
    assert_eq!(
        data,
        json!({"response": {"cardData": {"cardParamMap": {"clicked": "yes"}}}})
    );
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn python_sdk_get_access_token_returns_the_token_dingtalk_issued() {
    let Some(py) = python("python_sdk_get_access_token_returns_the_token_dingtalk_issued") else {
        return;
    };
    let gw = gateway(false).await;
    let ep = Endpoint::new();
    let d = daemon(&gw, &ep, "").await;
    let mut bot = py_bot(&py, &ep, &[("BOT_TOKEN", "1")]);
    let mut from = 0;
    let r = records(&bot, &mut from, 1).await;
    let issued = gw.tokens_issued();
    assert_eq!(issued.len(), 1);
    assert_eq!(
        r[0]["token"],
        issued[0].as_str(),
        "the token DingTalk issued for the real credentials"
    );
    bot.wait_exit(SDK_WAIT).await;
    // A wrong local secret gets no token (the SDK sees 401) and costs DingTalk nothing.
    let mut wrong = py_bot(
        &py,
        &ep,
        &[("BOT_TOKEN", "1"), ("APP_SECRET", "not-the-local-secret")],
    );
    let mut from = 0;
    let r = records(&wrong, &mut from, 1).await;
    assert_eq!(r[0]["token"], Value::Null, "{r:?}");
    wrong.wait_exit(SDK_WAIT).await;
    assert_eq!(gw.tokens_issued().len(), 1);
    let resp = open(&ep, LOCAL_ID, "not-the-local-secret").await;
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["code"], "authFailed");
    d.stop().await.0.unwrap();
}

#[tokio::test]
async fn the_example_sdk_bot_answers_through_the_openapi() {
    let Some(py) = python("the_example_sdk_bot_answers_through_the_openapi") else {
        return;
    };
    let gw = gateway(false).await;
    let ep = Endpoint::new();
    let d = daemon(&gw, &ep, "").await;
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sdk_bot.py");
    let envs = [
        ("DINGTALK_OPENAPI_ENDPOINT", ep.base.as_str()),
        ("APP_ID", LOCAL_ID),
        ("APP_SECRET", LOCAL_SECRET),
    ];
    let bot = Proc::spawn("sdk_bot.py", command(&py, &[s(&example)], &envs));
    members(&d, 1).await;
    gw.push_bot_text(" hi there").await.unwrap();
    bot.wait_for("answered", SDK_WAIT).await;
    let sends = gw.robot_sends();
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].token, gw.tokens_issued()[0]);
    assert_eq!(sends[0].body["userIds"], json!(["manager807"]));
    let param: Value = serde_json::from_str(sends[0].body["msgParam"].as_str().unwrap()).unwrap();
    assert_eq!(param["content"], "echo: hi there");
    acked(&d, 1).await;
    d.stop().await.0.unwrap();
}
