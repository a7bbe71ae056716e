//! Helpers shared by the spool tests (dedupe, retention, spool_failures): waiting for ACKs and
//! for a status condition, a daemon with custom spool keys, the next line of a consumer.
#![allow(dead_code)]

use super::common::*;
use dingtalk_streamd_sim::FakeGateway;
use serde_json::Value;
use std::time::Duration;

/// Long enough to be sure nothing more is coming in a "nothing arrives" check.
pub const QUIET: Duration = Duration::from_millis(400);

pub async fn wait_acked(gw: &FakeGateway, ids: &[&str]) {
    gw.wait_until(|g| ids.iter().all(|m| !g.acks(m).is_empty()), WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}: {ids:?}"));
}

/// Polls the control socket at `control` until `pred` holds (deadline `within`).
pub async fn wait_status_at(
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
pub async fn start_with_spool(gw: &FakeGateway, spool_keys: &str, extra: &str) -> Daemon {
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
pub async fn expect_next(tap: &mut Consumer, id: &str) -> Value {
    let v = tap.next().await;
    assert_eq!(v["message_id"], id, "{v}");
    v
}

/// A big text, so that one frame needs more WAL than any earlier commit left allocated.
pub fn big_text(tag: &str, kib: usize) -> String {
    format!("{tag} {}", "x".repeat(kib * 1024))
}
