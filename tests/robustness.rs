//! Bad input of any kind never panics and never stops the daemon: mutated frames, consumer
//! lines and config files go through the real parsers; signals arrive at odd moments.

mod common;

use common::*;
use dingtalk_streamd::config::Config;
use dingtalk_streamd::consumers::{line, protocol};
use dingtalk_streamd::stream::ConnId;
use dingtalk_streamd::wire::Frame;
use nix::sys::signal::Signal;
use rand::RngExt;
use std::path::Path;

const SEEDS: &[&str] = &[
    r#"{"specVersion":"1.0","type":"CALLBACK","headers":{"appId":"a","connectionId":"t","contentType":"application/json","messageId":"m1","time":"1","topic":"/v1.0/im/bot/messages/get"},"data":"{\"msgId\":\"x\",\"text\":{\"content\":\"hi\"}}"}"#,
    r#"{"specVersion":"1.0","type":"SYSTEM","headers":{"messageId":"p","topic":"ping"},"data":"{\"opaque\":\"o\"}"}"#,
    r#"{"type":"EVENT","headers":{"topic":"*","messageId":"e","eventId":"ev"},"data":"{}"}"#,
    r#"{"hello":{"group":"bot"}}"#,
    r#"{"ack":42,"response":{"cardData":{"a":[1,2,{"b":null}]}}}"#,
];

/// Random byte-level and token-level damage to a valid input.
fn mutate(rng: &mut impl rand::Rng, s: &str) -> String {
    let mut b = s.as_bytes().to_vec();
    for _ in 0..rng.random_range(1..6) {
        if b.is_empty() {
            break;
        }
        let i = rng.random_range(0..b.len());
        match rng.random_range(0..6) {
            0 => {
                b.remove(i);
            }
            1 => b.insert(i, rng.random()),
            2 => {
                const POOL: &[u8] = b"{}[]\":,\\09eE.-nul";
                b[i] = POOL[rng.random_range(0..POOL.len())];
            }
            3 => b.truncate(i),
            4 => {
                let j = rng.random_range(i..b.len());
                let chunk = b[i..j].to_vec();
                b.splice(i..i, chunk);
            }
            _ => b.insert(i, 0xC3),
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

#[test]
fn parsers_never_panic_on_damaged_input() {
    let mut rng = rand::rng();
    let config = include_str!("../config.example.yml").replace("client_id: \"\"", "client_id: d");
    for round in 0..20_000 {
        let seed = SEEDS[round % SEEDS.len()];
        let text = mutate(&mut rng, seed);
        if let Ok(f) = Frame::parse(&text) {
            // Whatever parses must also produce a consumer line and dedupe keys.
            let info = f.data_info();
            let body = line::body(&f, &info, ConnId(1));
            assert!(
                serde_json::from_str::<serde_json::Value>(&body).is_ok(),
                "the line body is JSON: {body}"
            );
            let _ = f.dedupe_keys(&info);
        }
        let _ = protocol::parse(&text);
        if round % 10 == 0 {
            let damaged = mutate(&mut rng, &config);
            let _ = Config::parse(&damaged, Path::new("/fuzz.yml"));
        }
    }
}

#[tokio::test]
async fn signals_at_odd_moments() {
    let gw = gateway(false).await;
    let p = Paths::new();
    p.configure(&gw, "");

    // SIGTERM right after exec, before the sockets exist: a clean stop.
    let mut daemon = spawn_run(&p.config, &[]);
    daemon.signal(Signal::SIGTERM);
    let st = daemon.wait_exit(WAIT).await;
    assert!(st.success() || st.code().is_none(), "early SIGTERM: {st:?}");

    // A burst of SIGHUPs while running: every reload is applied, the daemon keeps serving.
    let mut daemon = start_run(&p, &[]).await;
    gw.wait_connected(1, WAIT).await.unwrap();
    for _ in 0..10 {
        daemon.signal(Signal::SIGHUP);
    }
    let mut tap = Consumer::tap(&p.socket).await;
    let pushed = gw.push_bot_text("after the reload storm").await.unwrap();
    let v = tap.next().await;
    assert_eq!(v["message_id"], pushed.message_id.as_str());
    assert_eq!(
        gw.open_connections().len(),
        1,
        "a reload without credential changes must not reconnect"
    );

    // Two SIGTERMs in a row: still one clean stop.
    daemon.signal(Signal::SIGTERM);
    daemon.signal(Signal::SIGTERM);
    let st = daemon.wait_exit(WAIT).await;
    assert_eq!(st.code(), Some(0), "{st:?}");
    assert!(!p.socket.exists(), "socket file left behind");
}
