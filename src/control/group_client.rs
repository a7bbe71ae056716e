//! The client side of `group list`, `group rm`, `group replay` and `tail --group G --peek`:
//! one request on the control socket each. Exit codes: 0 done, 1 refused or failed (the
//! daemon's message on stderr), 3 the daemon is not running, 4 it accepted the
//! connection but did not answer.

use super::client::{ask, describe};
use super::groups::{GroupList, Peeked, Removed, Replayed};
use crate::status::short_duration;
use serde::de::DeserializeOwned;
use serde_json::json;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// Exit code: done.
pub const OK: u8 = 0;
/// Exit code: refused or failed.
pub const REFUSED: u8 = 1;

/// Sends `request`, and reads the answer as `T`, or prints the daemon's error.
async fn request<T: DeserializeOwned>(control: &Path, request: serde_json::Value) -> Result<T, u8> {
    let line = ask(control, &request.to_string()).await?;
    let value: serde_json::Value = serde_json::from_str(&line).map_err(|e| {
        eprintln!("unreadable answer from {}: {e}", control.display());
        REFUSED
    })?;
    if let Some(e) = value.get("error") {
        eprintln!(
            "dingtalk-streamd: {} ({})",
            e["message"].as_str().unwrap_or("refused"),
            e["code"].as_str().unwrap_or("error")
        );
        return Err(REFUSED);
    }
    serde_json::from_value(value).map_err(|e| {
        eprintln!("unexpected answer from {}: {e}", control.display());
        REFUSED
    })
}

/// `group list [--json]`: every group with its kind, members, backlog, in-flight and parked
/// messages, and when an idle ad-hoc group expires.
pub async fn list(control: &Path, json: bool) -> u8 {
    let list: GroupList = match request(control, json!({"cmd": "group_list"})).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    if json {
        println!("{}", serde_json::to_string(&list).unwrap_or_default());
        return OK;
    }
    let mut out = format!(
        "{:<24} {:<10} {:>7} {:>8} {:>9} {:>6}  EXPIRES IN\n",
        "GROUP", "KIND", "MEMBERS", "BACKLOG", "IN FLIGHT", "PARKED"
    );
    for (name, g) in &list.groups {
        let expires = g.expires_in_ms.map_or_else(
            || "-".to_owned(),
            |ms| short_duration(Duration::from_millis(ms)),
        );
        out += &format!(
            "{name:<24} {:<10} {:>7} {:>8} {:>9} {:>6}  {expires}\n",
            if g.configured { "configured" } else { "ad-hoc" },
            g.members,
            g.backlog,
            g.in_flight,
            g.parked_seqs.len(),
        );
    }
    print!("{out}");
    OK
}

/// `group rm G`: removes an ad-hoc group without members and releases its backlog.
pub async fn rm(control: &Path, group: &str) -> u8 {
    match request::<Removed>(control, json!({"cmd": "group_rm", "group": group})).await {
        Ok(r) => {
            println!(
                "removed group {}: released {} unacked and {} parked message(s)",
                r.removed, r.backlog, r.parked
            );
            OK
        }
        Err(code) => code,
    }
}

/// `group replay G --parked | --from SEQ`: gives the group those messages again.
pub async fn replay(control: &Path, group: &str, parked: bool, from: Option<u64>) -> u8 {
    let req = match from {
        Some(seq) if !parked => json!({"cmd": "group_replay", "group": group, "from": seq}),
        _ => json!({"cmd": "group_replay", "group": group, "parked": true}),
    };
    match request::<Replayed>(control, req).await {
        Ok(r) => {
            println!(
                "group {}: {} message(s) given again",
                r.replayed, r.messages
            );
            OK
        }
        Err(code) => code,
    }
}

/// `tail --group G --peek [--limit N] [--json]`: prints the group's backlog without taking or
/// acking anything; how many were left out goes to stderr.
pub async fn peek(control: &Path, group: &str, limit: usize, json: bool) -> u8 {
    let req = json!({"cmd": "group_peek", "group": group, "limit": limit});
    let p: Peeked = match request(control, req).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut stdout = std::io::stdout().lock();
    for m in &p.messages {
        let raw = m.get();
        let text = if json {
            raw.to_owned()
        } else {
            let v = serde_json::from_str(raw).unwrap_or(serde_json::Value::Null);
            describe(&v, raw)
        };
        if writeln!(stdout, "{text}").is_err() {
            return OK;
        }
    }
    let _ = stdout.flush();
    eprintln!(
        "group {}: {} message(s) after seq {} not yet acked; {} shown, {} left out",
        p.group,
        p.total,
        p.cursor,
        p.messages.len(),
        p.left_out
    );
    OK
}
