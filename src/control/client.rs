//! The client side of the CLI: `status` asks the control socket, `tail` reads the consumer
//! socket as a tap or as a group member that acks what it printed.

use std::io::Write;
use std::path::Path;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Exit codes of `status` (LSB): running and connected.
pub const STATUS_CONNECTED: u8 = 0;
/// Running but not connected.
pub const STATUS_NOT_CONNECTED: u8 = 1;
/// Not running.
pub const STATUS_NOT_RUNNING: u8 = 3;

/// Asks the daemon for its status and prints it; returns the exit code.
pub async fn status(control: &Path, json: bool) -> u8 {
    let reply = async {
        let mut s = UnixStream::connect(control).await?;
        s.write_all(b"{\"cmd\":\"status\"}\n").await?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).await?;
        Ok::<_, std::io::Error>(line)
    };
    let line = match tokio::time::timeout(std::time::Duration::from_secs(10), reply).await {
        Ok(Ok(l)) if !l.trim().is_empty() => l,
        Ok(Ok(_)) => {
            eprintln!(
                "dingtalk-streamd is not running: {} closed without an answer",
                control.display()
            );
            return STATUS_NOT_RUNNING;
        }
        Ok(Err(e)) => {
            eprintln!(
                "dingtalk-streamd is not running: no answer on {}: {e}",
                control.display()
            );
            return STATUS_NOT_RUNNING;
        }
        Err(_) => {
            eprintln!(
                "dingtalk-streamd is not running: {} did not answer within 10s",
                control.display()
            );
            return STATUS_NOT_RUNNING;
        }
    };
    let v: serde_json::Value = match serde_json::from_str(line.trim()) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("unreadable answer from {}: {e}", control.display());
            return STATUS_NOT_RUNNING;
        }
    };
    if json {
        println!("{}", line.trim());
    } else {
        print!("{}", human(&v));
    }
    if v["state"] == "connected" {
        STATUS_CONNECTED
    } else {
        STATUS_NOT_CONNECTED
    }
}

fn human(v: &serde_json::Value) -> String {
    let u = |x: &serde_json::Value| x.as_u64().unwrap_or(0);
    let s = |x: &serde_json::Value| x.as_str().unwrap_or("-").to_owned();
    let l = &v["link"];
    let mut out = format!(
        "dingtalk-streamd {}  pid {}  up {}\n",
        s(&v["version"]),
        u(&v["pid"]),
        super::status::short_duration(std::time::Duration::from_secs(u(&v["uptime_s"])))
    );
    out += &format!("summary:   {}\n", s(&v["summary"]));
    let mut link = format!("link:      {}", s(&v["state"]));
    if v["state"] == "connected" {
        link += &format!(
            " since {} ({} to {})",
            s(&l["since"]),
            s(&l["connection"]),
            s(&l["peer"])
        );
    }
    if let Some(c) = l["cause"].as_str().or(l["last_cause"].as_str()) {
        link += &format!("; last cause: {c}");
    }
    out += &format!(
        "{link}\n           {} connections opened, {} disconnect handovers\n",
        u(&l["connections_opened"]),
        u(&l["handovers"])
    );
    let st = &v["stream"];
    out += &format!(
        "stream:    {} frames in, {} ACKs sent, {} pings answered, {} malformed\n",
        u(&st["frames_in"]),
        u(&st["acks_sent"]),
        u(&st["pings_answered"]),
        u(&st["malformed_frames"])
    );
    let sp = &v["spool"];
    out += &format!(
        "spool:     {} messages, {} bytes, newest seq {}, {} pending ACKs, {} duplicates, {}\n",
        u(&sp["messages"]),
        u(&sp["bytes"]),
        u(&sp["newest_seq"]),
        u(&sp["pending_acks"]),
        u(&sp["duplicates"]),
        if sp["degraded"] == true {
            format!("DEGRADED: {}", s(&sp["last_error"]))
        } else {
            "healthy".into()
        }
    );
    let c = &v["consumers"];
    out += &format!(
        "consumers: {} connected ({} taps), {} slow taps dropped, {} refused\n",
        u(&c["connected"]),
        u(&c["taps"]),
        u(&c["taps_dropped_slow"]),
        u(&c["refused"])
    );
    if let Some(groups) = v["groups"].as_object() {
        for (name, g) in groups {
            let parked: Vec<String> = g["parked_seqs"]
                .as_array()
                .map(|a| a.iter().map(|v| v.to_string()).collect())
                .unwrap_or_default();
            out += &format!(
                "group {name}: {} member(s), backlog {}, in flight {}, parked {}{}\n",
                u(&g["members"]),
                u(&g["backlog"]),
                u(&g["in_flight"]),
                parked.len(),
                if parked.is_empty() {
                    String::new()
                } else {
                    format!(" (seqs {})", parked.join(", "))
                }
            );
        }
    }
    out
}

/// Reads messages until the daemon closes the socket or stdout goes away; returns the exit code.
pub async fn tail(socket: &Path, group: Option<&str>, json: bool) -> u8 {
    let stream = match UnixStream::connect(socket).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot connect to {}: {e}", socket.display());
            return 3;
        }
    };
    let (rd, mut wr) = stream.into_split();
    let mut lines = BufReader::new(rd).lines();
    if let Some(g) = group {
        let hello = serde_json::json!({"hello": {"group": g}}).to_string();
        if wr.write_all(format!("{hello}\n").as_bytes()).await.is_err() {
            eprintln!("the daemon closed the connection");
            return 1;
        }
    }
    let mut stdout = std::io::stdout().lock();
    loop {
        let line = match lines.next_line().await {
            Ok(Some(l)) => l,
            Ok(None) => return 0,
            Err(e) => {
                eprintln!("reading {}: {e}", socket.display());
                return 1;
            }
        };
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or(serde_json::Value::Null);
        let text = if json {
            line.clone()
        } else {
            describe(&v, &line)
        };
        if writeln!(stdout, "{text}")
            .and_then(|_| stdout.flush())
            .is_err()
        {
            return 0;
        }
        if group.is_some()
            && let Some(seq) = v["seq"].as_u64()
            && wr
                .write_all(format!("{{\"ack\":{seq}}}\n").as_bytes())
                .await
                .is_err()
        {
            return 1;
        }
    }
}

fn describe(v: &serde_json::Value, raw: &str) -> String {
    if let Some(w) = v.get("welcome") {
        return format!("joined group {} (protocol {})", w["group"], w["protocol"]);
    }
    if let Some(e) = v.get("error") {
        return format!("error {}: {}", e["code"], e["message"]);
    }
    let Some(seq) = v["seq"].as_u64() else {
        return raw.to_owned();
    };
    let data = &v["data"];
    let what = if let Some(t) = data["text"]["content"].as_str() {
        format!(
            "{}: {}",
            data["senderNick"].as_str().unwrap_or("?"),
            t.trim()
        )
    } else if let Some(et) = v["headers"]["eventType"].as_str() {
        format!("event {et}")
    } else {
        data.to_string().chars().take(120).collect()
    };
    let again = if v["redelivered"] == true {
        " (redelivered)"
    } else {
        ""
    };
    format!(
        "#{seq} {} {} {what}{again}",
        v["type"].as_str().unwrap_or("?"),
        v["topic"].as_str().unwrap_or("?")
    )
}
