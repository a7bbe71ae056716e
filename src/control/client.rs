//! The client side of the CLI: `status` asks the control socket, `tail` reads the consumer
//! socket as a tap or as a group member that acks what it printed. The `group` commands and
//! `tail --peek` are in [`super::group_client`].

use crate::status::{Report, short_duration};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Exit codes of `status` (LSB): running and connected.
pub const STATUS_CONNECTED: u8 = 0;
/// Running but not connected.
pub const STATUS_NOT_CONNECTED: u8 = 1;
/// Not running: nothing listens on the control socket (missing, or connection refused).
pub const STATUS_NOT_RUNNING: u8 = 3;
/// Unknown: the socket accepted but no answer came in time (alive, but not answering), or it
/// cannot be reached for another reason (permissions).
pub const STATUS_NOT_ANSWERING: u8 = 4;

/// How long `status` waits for the daemon's answer once connected.
pub const STATUS_WAIT: Duration = Duration::from_secs(5);
/// How long the other commands wait (a replay or a removal commits first).
pub const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// Sends one request line to the control socket at `control` and returns the answer line.
/// When there is none, prints why (naming the socket) and returns the exit code:
/// [`STATUS_NOT_RUNNING`] when nothing listens, [`STATUS_NOT_ANSWERING`] when something
/// accepted the connection but did not answer (or the socket cannot be reached).
pub async fn ask(control: &Path, request: &str) -> Result<String, u8> {
    ask_within(control, request, ANSWER_WAIT).await
}

/// [`ask`], waiting at most `wait` for the answer.
pub async fn ask_within(control: &Path, request: &str, wait: Duration) -> Result<String, u8> {
    let at = control.display();
    let mut s = match UnixStream::connect(control).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            eprintln!("dingtalk-streamd is not running: nothing listens on {at} ({e})");
            return Err(STATUS_NOT_RUNNING);
        }
        Err(e) => {
            let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                " (is this user in the group dingtalk-streamd-clients?)"
            } else {
                ""
            };
            eprintln!("cannot reach dingtalk-streamd on {at}: {e}{hint}");
            return Err(STATUS_NOT_ANSWERING);
        }
    };
    let reply = async {
        s.write_all(format!("{request}\n").as_bytes()).await?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).await?;
        Ok::<_, std::io::Error>(line)
    };
    let why = match tokio::time::timeout(wait, reply).await {
        Ok(Ok(l)) if !l.trim().is_empty() => return Ok(l.trim().to_owned()),
        Ok(Ok(_)) => "closed the connection without an answer".to_owned(),
        Ok(Err(e)) => format!("failed while answering ({e})"),
        Err(_) => format!(
            "accepted the connection but sent no answer within {} s",
            wait.as_secs()
        ),
    };
    eprintln!("dingtalk-streamd is running but not answering: {at} {why}");
    Err(STATUS_NOT_ANSWERING)
}

/// Asks the daemon for its status and prints it; returns the exit code.
pub async fn status(control: &Path, json: bool) -> u8 {
    let line = match ask_within(control, "{\"cmd\":\"status\"}", STATUS_WAIT).await {
        Ok(l) => l,
        Err(code) => return code,
    };
    let report: Report = match serde_json::from_str(line.trim()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "dingtalk-streamd is not answering: unreadable answer from {}: {e}",
                control.display()
            );
            return STATUS_NOT_ANSWERING;
        }
    };
    if json {
        println!("{line}");
    } else {
        print!("{}", human(&report));
    }
    if report.connected() {
        STATUS_CONNECTED
    } else {
        STATUS_NOT_CONNECTED
    }
}

/// `12s ago`, `3m05s ago`.
fn ago_ms(ms: u64) -> String {
    format!("{} ago", short_duration(Duration::from_millis(ms)))
}

/// `pong_timeout 2, eof 1`, or `none`.
fn by_cause(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn human(r: &Report) -> String {
    let l = &r.link;
    let dash = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    let mut out = format!(
        "dingtalk-streamd {}  pid {}  up {}\n",
        r.version,
        r.pid,
        short_duration(Duration::from_secs(r.uptime_s))
    );
    out += &format!("summary:   {}\n", r.summary);
    let mut link = format!("link:      {}", r.state);
    if r.connected() {
        link += &format!(
            " since {} ({} to {})",
            dash(&l.since),
            dash(&l.connection),
            dash(&l.peer)
        );
    } else if let Some(since) = &l.state_since {
        link += &format!(" (not connected since {since})");
    }
    if let Some(c) = l.cause.as_ref().or(l.last_cause.as_ref()) {
        link += &format!("; last cause: {c}");
    }
    if let Some(ms) = l.retry_in_ms {
        link += &format!(
            "; next attempt in {}",
            short_duration(Duration::from_millis(ms))
        );
    }
    out += &format!(
        "{link}\n           {} connections opened, {} disconnect handovers, last ping round trip {}\n",
        l.connections_opened,
        l.handovers,
        l.ping_rtt_ms
            .map_or_else(|| "-".into(), |ms| format!("{ms:.1}ms"))
    );
    out += &format!("reconnects: {}\n", by_cause(&r.reconnects));
    if !r.connect_failures.is_empty() {
        out += &format!("failed attempts: {}\n", by_cause(&r.connect_failures));
    }
    out += &format!(
        "last inbound: {}\n",
        match (&r.last_inbound, r.last_inbound_age_ms) {
            (Some(at), Some(age)) => format!("{at} ({})", ago_ms(age)),
            _ => "none since start".into(),
        }
    );
    let m = &r.messages;
    out += &format!(
        "messages:  {} received, {} stored, {} ACKed, {} duplicates, {} delivered, {} parked\n",
        m.received, m.stored, m.acked, m.duplicates, m.delivered, m.parked
    );
    let st = &r.stream;
    out += &format!(
        "stream:    {} frames in, {} pings answered, {} malformed; reader paused {} times, {}ms in all\n",
        st.frames_in, st.pings_answered, st.malformed_frames, st.reader_pauses, st.reader_paused_ms
    );
    let sp = &r.spool;
    out += &format!(
        "spool:     {} messages, {} bytes, newest seq {}, oldest {}, {} pending ACKs, {}\n",
        sp.messages,
        sp.bytes,
        sp.newest_seq,
        match (&sp.oldest_stored, sp.oldest_age_s) {
            (Some(at), Some(age)) => format!(
                "seq {} stored {at} ({} ago)",
                sp.oldest_seq,
                short_duration(Duration::from_secs(age))
            ),
            _ => "-".into(),
        },
        sp.pending_acks,
        if sp.degraded {
            format!("DEGRADED: {}", dash(&sp.last_error))
        } else {
            "healthy".into()
        }
    );
    let c = &r.consumers;
    out += &format!(
        "consumers: {} connected ({} taps), {} slow taps dropped, {} refused\n",
        c.connected, c.taps, c.taps_dropped_slow, c.refused
    );
    for (name, g) in &r.groups {
        let parked: Vec<String> = g.parked_seqs.iter().map(u64::to_string).collect();
        out += &format!(
            "group {name} ({}): {} member(s), backlog {}, in flight {}, parked {}{}\n",
            if g.configured { "configured" } else { "ad-hoc" },
            g.members,
            g.backlog,
            g.in_flight,
            parked.len(),
            if parked.is_empty() {
                String::new()
            } else {
                format!(" (seqs {})", parked.join(", "))
            }
        );
    }
    for (name, k) in &r.sinks {
        let state = match (k.kind.as_str(), k.connected) {
            ("nats", true) => "connected",
            ("nats", false) => "NOT CONNECTED",
            (_, true) => "ok",
            (_, false) => "FAILING",
        };
        out += &format!(
            "sink {name}: {state} ({}), backlog {}, published {}, duplicates {}, failures {}{}{}{}\n",
            k.target,
            k.backlog,
            k.published,
            k.duplicates,
            k.failures,
            if k.forced_out > 0 {
                format!(", FORCED OUT {}", k.forced_out)
            } else {
                String::new()
            },
            if k.rejected > 0 {
                format!(", REJECTED {}", k.rejected)
            } else {
                String::new()
            },
            k.last_error
                .as_ref()
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default()
        );
    }
    if let Some(m) = &r.metrics {
        out += &format!("metrics:   http://{m}/metrics\n");
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

/// One consumer line for a person: `#seq TYPE topic sender: text`, or what the daemon said.
pub(crate) fn describe(v: &serde_json::Value, raw: &str) -> String {
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
