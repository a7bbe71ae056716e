//! The NATS JetStream sink against a real `nats-server`: two hosts (two daemons with their own
//! spools on one fake gateway) publish every message exactly once to the stream, across
//! cross-host redeliveries and a broker outage; an existing stream that does not cover our
//! subjects stops the daemon with exit code 78; credentials never show.

mod common;

use common::nats::{NatsServer, header, nats_server_or_skip, read_stream, stream_len};
use common::*;
use dingtalk_streamd_sim::{BotMessage, OutFrame, Route};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Catching up after the broker comes back: PubAcks pending across the outage time out first
/// (`reconnect.connect_timeout`, 2 s here), then the backoff.
const CATCH_UP: Duration = Duration::from_secs(30);

/// `n` bot messages (frames stamped at each push, so pushing them again gives new messageIds
/// with the same data) and their msgIds.
fn bot_messages(n: usize, tag: &str) -> (Vec<OutFrame>, Vec<String>) {
    (0..n)
        .map(|i| {
            let m = BotMessage::text(&format!("{tag} {i}"));
            let id = m.msg_id.clone();
            (m.into_frame(), id)
        })
        .unzip()
}

fn sink<'a>(st: &'a Value, name: &str) -> &'a Value {
    &st["sinks"][name]
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Waits until the stream holds `n` messages and each daemon's NATS sink has no backlog.
async fn caught_up(
    js: &async_nats::jetstream::Context,
    hosts: &[&Daemon],
    n: u64,
    within: Duration,
) {
    until(
        within,
        &format!("{n} messages in the stream, no backlog"),
        async || {
            let len = stream_len(js, "DINGTALK").await;
            let mut backlogs = Vec::new();
            for d in hosts {
                backlogs.push(num(&sink(&d.status().await, "nats")["backlog"]));
            }
            if len == n && backlogs.iter().all(|b| *b == 0) {
                Ok(())
            } else {
                Err(format!("stream has {len}, backlogs {backlogs:?}"))
            }
        },
    )
    .await;
}

/// The stream's messages by `Nats-Msg-Id`, each checked for shape.
async fn stream_by_key(js: &async_nats::jetstream::Context) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for m in read_stream(js, "DINGTALK").await {
        assert_eq!(
            m.subject.as_str(),
            "dingtalk.sim-client.callback.v1_0.im.bot.messages.get"
        );
        assert_eq!(header(&m, "DingTalk-Type"), "CALLBACK");
        assert_eq!(header(&m, "DingTalk-Topic"), "/v1.0/im/bot/messages/get");
        let body: Value = serde_json::from_slice(&m.payload).expect("JSON body");
        assert_eq!(body["message_id"], header(&m, "DingTalk-Message-Id"));
        assert!(body["seq"].as_u64().is_some() && body["host"].as_str().is_some());
        let key = header(&m, "Nats-Msg-Id").to_owned();
        assert_eq!(
            key,
            format!("sim-client:{}", body["data"]["msgId"].as_str().unwrap())
        );
        assert!(
            out.insert(key.clone(), body).is_none(),
            "{key} twice in the stream"
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_publish_each_message_once_across_redeliveries_and_an_outage() {
    let Some(bin) = nats_server_or_skip("two_hosts_publish_each_message_once") else {
        return;
    };
    let mut nats = NatsServer::start(&bin).await;
    let gw = gateway(false).await;
    let extra = format!("sinks:\n  nats:\n    url: {}\n", nats.url());
    let a = Daemon::start(&gw, &extra).await;
    let b = Daemon::start(&gw, &extra).await;
    gw.wait_until(|g| g.open_connections().len() == 2, WAIT)
        .await
        .expect("both hosts connected");
    let js = nats.jetstream().await;

    // Every message once, then every one again under a new messageId (same data): about
    // half land on the other host, whose spool has not seen them.
    const N: usize = 200;
    let (frames, mut msg_ids) = bot_messages(N, "first");
    push_frames_acked(&gw, frames.clone()).await;
    push_frames_acked(&gw, frames).await;
    caught_up(&js, &[&a, &b], N as u64, CATCH_UP).await;
    let (sa, sb) = (a.status().await, b.status().await);
    let stored = num(&sa["spool"]["stored"]) + num(&sb["spool"]["stored"]);
    let crossed = stored - N as u64;
    assert!(crossed > 0, "some redeliveries landed on the other host");
    let (na, nb) = (sink(&sa, "nats"), sink(&sb, "nats"));
    assert_eq!(
        num(&na["published"]) + num(&nb["published"]),
        stored,
        "each host published what it stored"
    );
    assert_eq!(
        num(&na["duplicates"]) + num(&nb["duplicates"]),
        crossed,
        "JetStream dropped each cross-host redelivery: {na} {nb}"
    );
    assert_eq!(na["connected"], true);
    assert_eq!(sa["groups"]["sink:nats"]["configured"], true);
    let keys: BTreeSet<String> = stream_by_key(&js).await.into_keys().collect();
    let want: BTreeSet<String> = msg_ids.iter().map(|m| format!("sim-client:{m}")).collect();
    assert_eq!(keys, want, "the stream holds each message exactly once");

    // The broker goes away in the middle of a burst (PubAcks pending across the outage time
    // out and are published again); DingTalk is still ACKed, the backlogs grow in the spools.
    const B: usize = 1000;
    let (frames, burst) = bot_messages(B, "burst");
    msg_ids.extend(burst);
    let pushed: Vec<String> = gw
        .push_many(frames, Route::Random)
        .await
        .expect("push the burst")
        .into_iter()
        .map(|p| p.message_id)
        .collect();
    until(
        WAIT,
        "the burst being published",
        async || match stream_len(&js, "DINGTALK").await {
            n if n > N as u64 => Ok(()),
            n => Err(format!("{n} in the stream")),
        },
    )
    .await;
    nats.stop().await;
    wait_acked(&gw, &pushed).await;
    for d in [&a, &b] {
        d.status_until("the NATS sink disconnected", |s| {
            sink(s, "nats")["connected"] == false
        })
        .await;
    }
    const M: usize = 100;
    let (frames, more) = bot_messages(M, "outage");
    push_frames_acked(&gw, frames).await;
    msg_ids.extend(more);
    until(WAIT, "the outage's messages in the backlogs", async || {
        let (x, y) = (a.status().await, b.status().await);
        let backlog = num(&sink(&x, "nats")["backlog"]) + num(&sink(&y, "nats")["backlog"]);
        if backlog >= M as u64 {
            Ok(())
        } else {
            Err(format!("backlogs add up to {backlog}"))
        }
    })
    .await;

    // Back: both hosts catch up; nothing is missing, nothing is there twice.
    nats.restart().await;
    let js = nats.jetstream().await;
    caught_up(&js, &[&a, &b], (N + B + M) as u64, CATCH_UP).await;
    let keys: BTreeSet<String> = stream_by_key(&js).await.into_keys().collect();
    let want: BTreeSet<String> = msg_ids.iter().map(|m| format!("sim-client:{m}")).collect();
    assert_eq!(keys, want, "nothing missing after the outage");
    for d in [&a, &b] {
        let st = d.status().await;
        let s = sink(&st, "nats");
        assert_eq!(s["connected"], true, "{s}");
        assert!(num(&s["failures"]) > 0 || num(&s["published"]) > 0, "{s}");
    }
    assert!(a.stop().await.0.is_ok() && b.stop().await.0.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_stream_that_does_not_cover_our_subjects_is_a_config_error() {
    let Some(bin) = nats_server_or_skip("existing_stream_not_covering") else {
        return;
    };
    let nats = NatsServer::start(&bin).await;
    let js = nats.jetstream().await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "DINGTALK".into(),
        subjects: vec!["other.>".into()],
        ..Default::default()
    })
    .await
    .expect("create a foreign stream");
    let gw = gateway(false).await;
    let p = Paths::new();
    p.configure(&gw, &format!("sinks:\n  nats:\n    url: {}\n", nats.url()));
    let out = run_to_exit(&p).await;
    assert_eq!(out.code, Some(78), "{}", out.stderr);
    assert!(
        out.stderr.contains("sinks.nats.stream")
            && out
                .stderr
                .contains("do not cover dingtalk.sim-client.event.>"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_and_password_auth_never_show_the_secret() {
    let Some(bin) = nats_server_or_skip("token_and_password_auth") else {
        return;
    };
    const TOKEN: &str = "tok-5ecret-9f2e";
    let nats = NatsServer::start_with(&bin, &["--auth", TOKEN]).await;
    let gw = gateway(false).await;

    // The right token: messages reach the stream.
    let p = Paths::new();
    let token = p.path("nats.token");
    write_private(&token, &format!("{TOKEN}\n"));
    p.configure(
        &gw,
        &format!(
            "sinks:\n  nats:\n    url: {}\n    token_file: {}\n",
            nats.url(),
            token.display()
        ),
    );
    let mut good = start_run(&p, &[]).await;
    gw.wait_until(|g| !g.open_connections().is_empty(), WAIT)
        .await
        .expect("connected");
    push_acked(&gw, 5, "auth").await;
    let client = async_nats::ConnectOptions::with_token(TOKEN.into())
        .connect(nats.url())
        .await
        .expect("test client");
    let js = async_nats::jetstream::new(client);
    until(
        CATCH_UP,
        "5 messages in the stream",
        async || match stream_len(&js, "DINGTALK").await {
            5 => Ok(()),
            n => Err(format!("{n} messages")),
        },
    )
    .await;
    let st = status(&p.control).await.to_string();
    assert!(!st.contains(TOKEN), "{st}");
    good.stop(WAIT).await;
    assert!(!good.text().contains(TOKEN), "{}", good.text());

    // A wrong password: not connected, the error in status, the password nowhere.
    const WRONG: &str = "pw-wr0ng-77c1";
    let q = Paths::new();
    let pw = q.path("nats.password");
    write_private(&pw, WRONG);
    // Debug logs too: the client's errors are logged at debug.
    q.configure(
        &gw,
        &format!(
            "log:\n  level: debug\nsinks:\n  nats:\n    url: {}\n    user: streamd\n    password_file: {}\n",
            nats.url(),
            pw.display()
        ),
    );
    let mut bad = start_run(&q, &[]).await;
    let st = status_until(&q.control, "the NATS error in status", |s| {
        s["sinks"]["nats"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("authorization"))
    })
    .await;
    assert_eq!(st["sinks"]["nats"]["connected"], false);
    assert!(!st.to_string().contains(WRONG));
    bad.stop(WAIT).await;
    assert!(!bad.text().contains(WRONG), "{}", bad.text());
}

/// A CA and a server certificate for 127.0.0.1 made with the `openssl` command; `None` (the
/// test skipped, or failed under `DTS_REQUIRE_NATS=1`) without it.
fn test_ca(
    dir: &std::path::Path,
) -> Option<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)> {
    let run = |args: &[&str]| {
        std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .ok()?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ok = run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=sink test CA",
        ],
    ]
    .concat())
        && run(&[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat())
        && run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        ]);
    if !ok {
        privileged::skip_or_fail(
            nats::REQUIRE_NATS,
            "tls_with_a_private_ca",
            "the openssl command cannot make a test CA",
        );
        return None;
    }
    Some((
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca() {
    let Some(bin) = nats_server_or_skip("tls_with_a_private_ca") else {
        return;
    };
    let certs = tempfile::tempdir().expect("cert dir");
    let Some((ca, cert, key)) = test_ca(certs.path()) else {
        return;
    };
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let nats = NatsServer::start_with(&bin, &["--tls", "--tlscert", &cert, "--tlskey", &key]).await;
    let gw = gateway(false).await;
    let url = format!("tls://127.0.0.1:{}", nats.port);
    let d = Daemon::start(
        &gw,
        &format!(
            "sinks:\n  nats:\n    url: {url}\n    tls_ca_file: {}\n",
            ca.display()
        ),
    )
    .await;
    gw.wait_until(|g| g.open_connections().len() == 1, WAIT)
        .await
        .expect("connected");
    push_acked(&gw, 3, "tls").await;
    d.status_until("3 messages published over TLS", |s| {
        s["sinks"]["nats"]["published"] == 3 && s["sinks"]["nats"]["connected"] == true
    })
    .await;
    let client = async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(ca.clone())
        .connect(&url)
        .await
        .expect("test client over TLS");
    let js = async_nats::jetstream::new(client);
    assert_eq!(stream_len(&js, "DINGTALK").await, 3);
    assert!(d.stop().await.0.is_ok());

    // Without the CA the server is not trusted: nothing is published, status says why.
    let d = Daemon::start(&gw, &format!("sinks:\n  nats:\n    url: {url}\n")).await;
    let st = d
        .status_until("a certificate error", |s| {
            s["sinks"]["nats"]["last_error"].as_str().is_some()
        })
        .await;
    assert_eq!(st["sinks"]["nats"]["connected"], false, "{st}");
    assert_eq!(st["sinks"]["nats"]["published"], 0);
    assert!(d.stop().await.0.is_ok());
}
