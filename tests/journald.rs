//! Logging to journald through the native protocol, captured by a fake journald
//! (tests/support/fake_journald.py) in a private mount namespace with a tmpfs on /run/systemd,
//! because tracing-journald hard-codes /run/systemd/journal/socket. Needs root and `unshare`
//! (CI runs as root); skipped with a message otherwise.

mod common;

use common::privileged::{
    REQUIRE_PRIVILEGED, in_mount_namespace, mount_namespace_with_tmpfs, skip_or_fail,
};
use common::*;
use dingtalk_streamd_sim::GatewayEvent;
use nix::sys::signal::Signal;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn read_journal(path: &Path) -> Vec<serde_json::Map<String, Value>> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v.as_object().cloned())
        .collect()
}

/// The native journal protocol on a fake journald (private mount namespace, tmpfs on
/// /run/systemd, JOURNAL_STREAM naming the daemon's stderr): fields carry no `F_` prefix, so
/// `journalctl CAUSE=pong_timeout` finds the dead-connection verdict; CONNECTION, ATTEMPT,
/// TOPIC, MESSAGE_ID and GROUP are there; SYSLOG_IDENTIFIER is the daemon's; nothing is
/// logged as text on stderr at the same time; no secret or ticket appears anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journald_native_fields() {
    if let Err(why) = mount_namespace_with_tmpfs() {
        skip_or_fail(REQUIRE_PRIVILEGED, "journald_native_fields", &why);
        return;
    }
    let gw = gateway(false).await;
    let p = Paths::new();
    p.configure(
        &gw,
        "groups: [bot]\nlog:\n  level: info,dingtalk_streamd=debug\n",
    );
    let out = p.path("journal.jsonl");
    let pidfile = p.path("daemon.pid");
    let stderr = p.path("stderr.log");
    let script = format!(
        "{{ if [ -d /run/systemd ]; then mount -t tmpfs tmpfs /run/systemd; else mount -t tmpfs tmpfs /run; fi; }} && exec \"${{PYTHON3:-python3}}\" {} {} {} {} -- {} --config {} run",
        support("fake_journald.py").display(),
        out.display(),
        pidfile.display(),
        stderr.display(),
        bin(),
        p.config.display()
    );
    let mut cmd = in_mount_namespace(&script);
    clean_env(&mut cmd);
    let mut journald = Journald {
        proc: Proc::spawn("fake journald", cmd),
        pidfile: pidfile.clone(),
    };

    let conn = gw.wait_connected(1, WAIT).await.expect("connected")[0];
    let mut member = Consumer::member(&p.socket, "bot").await;
    let m = gw.push_bot_text("journal me").await.expect("push");
    member.next().await;
    let mut cur = gw.subscribe();
    gw.set_zombie(conn, true).expect("zombie");
    // The pong deadline declares the connection dead; wait for that entry.
    until(WAIT, "CAUSE=pong_timeout journal entry", async || {
        let entries = read_journal(&out);
        let found = entries
            .iter()
            .any(|e| e.get("CAUSE").and_then(Value::as_str) == Some("pong_timeout"));
        if found {
            Ok(())
        } else {
            Err(format!("{entries:#?}"))
        }
    })
    .await;
    cur.wait_for(|e| matches!(e, GatewayEvent::Connected { .. }), WAIT)
        .await
        .expect("reconnected");
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .expect("pidfile")
        .trim()
        .parse()
        .expect("pid");
    signal(pid, Signal::SIGTERM);
    let status = journald.proc.wait_exit(WAIT).await;
    assert!(status.success(), "fake journald/unshare: {status:?}");

    let entries = read_journal(&out);
    let exit = entries
        .last()
        .and_then(|e| e.get("_EXIT"))
        .and_then(Value::as_i64);
    assert_eq!(exit, Some(0), "daemon exit code");
    let entries = &entries[..entries.len() - 1];
    assert!(
        entries.iter().all(|e| !e.contains_key("_DECODE_ERROR")),
        "undecodable datagram"
    );
    for e in entries {
        assert_eq!(
            e.get("SYSLOG_IDENTIFIER").and_then(Value::as_str),
            Some("dingtalk-streamd"),
            "{e:?}"
        );
        assert!(!e.keys().any(|k| k.starts_with("F_")), "F_ prefix: {e:?}");
    }
    let find = |msg: &str, key: &str| {
        entries
            .iter()
            .find(|e| {
                e.get("MESSAGE")
                    .and_then(Value::as_str)
                    .is_some_and(|m| m.contains(msg))
                    && e.contains_key(key)
            })
            .unwrap_or_else(|| panic!("no entry {msg:?} with {key}: {entries:#?}"))
    };
    let lost = find("connection lost", "CAUSE");
    assert_eq!(lost["CAUSE"], "pong_timeout");
    assert_eq!(lost["CONNECTION"], "c1", "{lost:?}");
    assert_eq!(lost["PRIORITY"], "4", "a dead connection is a warning");
    assert!(find("connected to DingTalk", "ATTEMPT")["CONNECTION"].is_string());
    let frame = find("frame", "MESSAGE_ID");
    assert_eq!(frame["MESSAGE_ID"], m.message_id.as_str());
    assert!(
        frame["TOPIC"]
            .as_str()
            .is_some_and(|t| t.starts_with("/v1.0/")),
        "{frame:?}"
    );
    assert_eq!(find("consumer group created", "GROUP")["GROUP"], "bot");
    assert_eq!(find("group member joined", "GROUP")["GROUP"], "bot");

    let text = std::fs::read_to_string(&out).unwrap_or_default()
        + &std::fs::read_to_string(&stderr).unwrap_or_default();
    assert!(
        !text.contains(SECRET),
        "the client secret reached the journal or stderr"
    );
    for ticket in gw.events().iter().filter_map(|e| match &e.event {
        GatewayEvent::TicketIssued { ticket } => Some(ticket.clone()),
        _ => None,
    }) {
        assert!(!text.contains(&ticket), "a ticket reached the journal");
    }
    let stderr_text = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert!(
        !stderr_text.contains("connection lost"),
        "logged twice (journal and stderr text):\n{stderr_text}"
    );
    assert!(
        !Path::new("/run/systemd/journal/socket").exists() || journal_is_real(),
        "the fake leaked into the host's /run/systemd"
    );
}

fn journal_is_real() -> bool {
    // On a host that runs journald, the socket was there before and is not ours.
    Path::new("/run/systemd/journal/stdout").exists()
}

/// The fake journald in its mount namespace, and the daemon it started (its pid in
/// `pidfile`): the daemon is killed on drop unless the run ended (then `Proc` ends the rest).
struct Journald {
    proc: Proc,
    pidfile: PathBuf,
}

impl Drop for Journald {
    fn drop(&mut self) {
        if self.proc.running()
            && let Some(pid) = std::fs::read_to_string(&self.pidfile)
                .ok()
                .and_then(|s| s.trim().parse().ok())
        {
            let _ = try_signal(pid, Signal::SIGKILL);
        }
    }
}
