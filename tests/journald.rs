//! Logging to journald through the native protocol, captured by a fake journald
//! (tests/support/fake_journald.py) in a private mount namespace with a tmpfs on /run/systemd,
//! because tracing-journald hard-codes /run/systemd/journal/socket. Needs root and `unshare`
//! (CI runs as root); skipped with a message otherwise. The same fields in the stderr text
//! (no privileges needed).

mod common;

use common::privileged::{
    REQUIRE_PRIVILEGED, in_mount_namespace, mount_namespace_with_tmpfs, skip_or_fail,
};
use common::*;
use dingtalk_streamd_sim::{GatewayEvent, TicketFault};
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
/// TOPIC, MESSAGE_ID, GROUP and a member's PID are there; every such field is also in MESSAGE
/// as `key=value` (`group member joined group=bot pid=...`), and a failure's MESSAGE says
/// why (`error="ticket endpoint answered HTTP 503"`); SYSLOG_IDENTIFIER is the daemon's;
/// nothing is logged as text on stderr at the same time; no secret or ticket appears anywhere.
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
    // The first attempt after the dead connection fails (its error must reach MESSAGE).
    gw.set_ticket_fault(Some(TicketFault::status(503).times(1)));
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
    let joined = find("group member joined", "GROUP");
    assert_eq!(joined["GROUP"], "bot");
    let pid = std::process::id().to_string();
    assert_eq!(joined["PID"], pid.as_str(), "the member's pid: {joined:?}");
    let text = |e: &serde_json::Map<String, Value>| e["MESSAGE"].as_str().unwrap_or("").to_owned();
    assert!(
        text(joined).starts_with(&format!("group member joined group=bot pid={pid} uid=")),
        "{joined:?}"
    );
    assert!(
        text(lost).contains(" connection=c1 ") && text(lost).contains(" cause=pong_timeout"),
        "{lost:?}"
    );
    let failed = find("connection attempt failed", "ERROR");
    assert_eq!(failed["CAUSE"], "ticket_503", "{failed:?}");
    assert_eq!(
        failed["ERROR"], "ticket endpoint answered HTTP 503",
        "{failed:?}"
    );
    assert!(
        text(failed).contains(r#" error="ticket endpoint answered HTTP 503""#)
            && text(failed).contains(" cause=ticket_503"),
        "the failure's text says why: {failed:?}"
    );
    // Every field of every entry is in its MESSAGE too, as key=value.
    for e in entries {
        let message = text(e);
        for (key, value) in e.iter().filter(|(k, _)| is_event_field(k)) {
            let value = value.as_str().unwrap_or_default();
            let key = key.to_lowercase();
            let plain = format!("{key}={value}");
            let quoted = format!("{key}={value:?}");
            assert!(
                message.contains(&plain) || message.contains(&quoted),
                "{key} missing from MESSAGE: {e:?}"
            );
        }
    }

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

/// A field the event itself carried (not one tracing-journald adds to every entry).
fn is_event_field(key: &str) -> bool {
    !matches!(
        key,
        "MESSAGE" | "PRIORITY" | "TARGET" | "CODE_FILE" | "CODE_LINE" | "SYSLOG_IDENTIFIER"
    ) && !key.starts_with("SPAN_")
        && !key.starts_with('_')
}

/// Without journald the same text goes to stderr: the message, then the fields as
/// `key=value`, and a failure's cause.
#[tokio::test]
async fn text_log_carries_the_fields() {
    let gw = gateway(false).await;
    let p = Paths::new();
    p.configure(&gw, "groups: [bot]\n");
    let d = start_run(&p, &[]).await;
    let conn = gw.wait_connected(1, WAIT).await.expect("connected")[0];
    let _member = Consumer::member(&p.socket, "bot").await;
    let joined = d.wait_for("group member joined", WAIT).await.text;
    let pid = std::process::id();
    assert!(
        joined.contains(&format!("group member joined group=bot pid={pid} uid=")),
        "{joined}"
    );
    gw.set_ticket_fault(Some(TicketFault::status(503).times(1)));
    gw.drop_connection(conn).expect("drop");
    let failed = d.wait_for("connection attempt failed", WAIT).await.text;
    assert!(
        failed.contains(r#"error="ticket endpoint answered HTTP 503""#)
            && failed.contains("cause=ticket_503"),
        "{failed}"
    );
    let lost = d.wait_for("connection lost", WAIT).await.text;
    assert!(
        lost.contains("connection=c1") && lost.contains("cause="),
        "{lost}"
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
