//! What the daemon knows about itself, in one place: the JSON of `status` (control socket),
//! the `STATUS=` one-liner for `systemctl status`, and the numbers behind `/metrics`. Nothing
//! here can hold a secret: connections are named by their short id, peers by host:port.

use crate::sink::callbacks::Callbacks;
use crate::sink::group::GroupRegistry;
use crate::sink::hub::Hub;
use crate::spool::SpoolHandle;
use crate::stream::StreamStats;
use crate::supervisor::{LinkState, LinkStatus};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Handles to every part that status reports on.
#[derive(Clone)]
pub struct Shared {
    /// When the daemon started.
    pub started: SystemTime,
    /// The link state.
    pub link: watch::Receiver<LinkStatus>,
    /// Stream counters.
    pub stream: Arc<StreamStats>,
    /// The spool.
    pub spool: SpoolHandle,
    /// The hub (taps, sink counters).
    pub hub: Arc<Hub>,
    /// Consumer groups.
    pub groups: GroupRegistry,
    /// Held callbacks.
    pub callbacks: Callbacks,
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// `2h13m`, `45s`: compact, for the one-liner.
pub fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

impl Shared {
    /// Messages not yet acked by the slowest group (0 with no groups).
    pub fn backlog(&self) -> u64 {
        let newest = self.hub.newest_seq();
        self.groups
            .snapshots()
            .iter()
            .map(|(_, s)| newest.saturating_sub(s.cursor))
            .max()
            .unwrap_or(0)
    }

    /// The STATUS= line.
    pub fn one_liner(&self) -> String {
        let link = self.link.borrow().clone();
        let frames = StreamStats::get(&self.stream.frames_in);
        let consumers = self.hub.stats.consumers.load(Relaxed);
        let spool = if self.spool.health.degraded.load(Relaxed) {
            " · spool full: not acking".to_string()
        } else {
            String::new()
        };
        let now = SystemTime::now();
        let head = match &link.state {
            LinkState::Open { since, .. } => {
                format!(
                    "connected {}",
                    short_duration(now.duration_since(*since).unwrap_or_default())
                )
            }
            LinkState::Connecting { attempt, .. } => format!("connecting (attempt {attempt})"),
            LinkState::Backoff {
                attempt,
                until,
                cause,
                credentials_rejected,
            } => {
                // Rounded up: "backing off 0s" would read as "stuck".
                let left = short_duration(
                    until.duration_since(now).unwrap_or_default() + Duration::from_millis(999),
                );
                // `ticket_503` reads as "ticket 503" for a person; the log keeps CAUSE=ticket_503.
                let cause = cause.replace('_', " ");
                if *credentials_rejected {
                    format!("credentials rejected ({cause}): retrying in {left}")
                } else {
                    format!("backing off {left} after {cause} (attempt {attempt})")
                }
            }
            LinkState::Starting => "starting".into(),
            LinkState::Stopped => "stopping".into(),
        };
        format!(
            "{head} · {frames} in · backlog {} · {consumers} consumer{}{spool}",
            self.backlog(),
            if consumers == 1 { "" } else { "s" }
        )
    }

    /// The full status document.
    pub async fn status(&self) -> serde_json::Value {
        let link = self.link.borrow().clone();
        let now = SystemTime::now();
        let mut link_json = json!({
            "state": link.state.name(),
            "last_cause": link.last_cause,
            "connections_opened": link.connections_opened,
            "handovers": link.handovers,
        });
        match &link.state {
            LinkState::Open { since, conn, peer } => {
                link_json["since"] = json!(rfc3339(*since));
                link_json["since_ms"] = json!(epoch_ms(*since));
                link_json["connection"] = json!(conn.to_string());
                link_json["peer"] = json!(peer);
                link_json["socket"] = json!(link.socket);
            }
            LinkState::Connecting { attempt, since } => {
                link_json["attempt"] = json!(attempt);
                link_json["since"] = json!(rfc3339(*since));
            }
            LinkState::Backoff {
                attempt,
                until,
                cause,
                ..
            } => {
                link_json["attempt"] = json!(attempt);
                link_json["until"] = json!(rfc3339(*until));
                link_json["retry_in_ms"] =
                    json!(until.duration_since(now).unwrap_or_default().as_millis() as u64);
                link_json["cause"] = json!(cause);
            }
            _ => {}
        }
        let spool_stats = self.spool.stats().await;
        let h = &self.spool.health;
        let mut spool = json!({
            "degraded": h.degraded.load(Relaxed),
            "last_error": h.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            "pending_acks": h.pending.load(Relaxed),
            "stored": h.stored.load(Relaxed),
            "duplicates": h.duplicates.load(Relaxed),
            "batches": h.batches.load(Relaxed),
            "forced_out_unacked": h.forced_out.load(Relaxed),
        });
        match spool_stats {
            Ok(s) => {
                spool["messages"] = json!(s.messages);
                spool["bytes"] = json!(s.bytes);
                spool["dedupe_keys"] = json!(s.dedupe_keys);
                spool["oldest_seq"] = json!(s.oldest_seq);
                spool["newest_seq"] = json!(s.newest_seq);
                spool["parked"] = json!(s.parked);
                spool["file_bytes"] = json!(s.file_bytes);
            }
            Err(e) => spool["stats_error"] = json!(e.to_string()),
        }
        let mut groups = serde_json::Map::new();
        for (name, snap) in self.groups.snapshots() {
            let mut g = serde_json::to_value(&snap).unwrap_or_default();
            g["backlog"] = json!(self.hub.newest_seq().saturating_sub(snap.cursor));
            if let Ok(parked) = self.spool.parked(&name).await {
                g["parked_seqs"] = json!(parked.iter().map(|p| p.seq).collect::<Vec<_>>());
            }
            groups.insert(name, g);
        }
        let st = &self.stream;
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "started": rfc3339(self.started),
            "uptime_s": now.duration_since(self.started).unwrap_or_default().as_secs(),
            "state": link.state.name(),
            "link": link_json,
            "summary": self.one_liner(),
            "stream": {
                "frames_in": StreamStats::get(&st.frames_in),
                "acks_sent": StreamStats::get(&st.acks_sent),
                "pings_answered": StreamStats::get(&st.pings),
                "malformed_frames": StreamStats::get(&st.malformed),
            },
            "spool": spool,
            "consumers": {
                "connected": self.hub.stats.consumers.load(Relaxed),
                "taps": self.hub.tap_count(),
                "tap_lines": self.hub.stats.tap_lines.load(Relaxed),
                "taps_dropped_slow": self.hub.stats.taps_dropped_slow.load(Relaxed),
                "refused": self.hub.stats.refused.load(Relaxed),
                "bad_lines": self.hub.stats.bad_lines.load(Relaxed),
            },
            "groups": groups,
            "callbacks_held": self.callbacks.held(),
        })
    }

    /// Prometheus text exposition.
    pub async fn metrics(&self) -> String {
        let s = self.status().await;
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, v: u64, labels: &str| {
            out.push_str(&format!("# HELP dingtalk_streamd_{name} {help}\n# TYPE dingtalk_streamd_{name} gauge\ndingtalk_streamd_{name}{labels} {v}\n"));
        };
        let u = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        gauge(
            "connected",
            "1 while a DingTalk connection is open",
            u64::from(s["state"] == "connected"),
            "",
        );
        gauge(
            "connections_opened",
            "Connections opened since start",
            u(&s["link"]["connections_opened"]),
            "",
        );
        gauge(
            "handovers",
            "Server disconnect handovers since start",
            u(&s["link"]["handovers"]),
            "",
        );
        gauge(
            "frames_in",
            "EVENT/CALLBACK frames received",
            u(&s["stream"]["frames_in"]),
            "",
        );
        gauge(
            "acks_sent",
            "ACK frames sent to DingTalk",
            u(&s["stream"]["acks_sent"]),
            "",
        );
        gauge(
            "malformed_frames",
            "Frames skipped as malformed",
            u(&s["stream"]["malformed_frames"]),
            "",
        );
        gauge(
            "spool_degraded",
            "1 while the spool cannot write (not ACKing)",
            u64::from(s["spool"]["degraded"] == true),
            "",
        );
        gauge(
            "spool_messages",
            "Messages in the spool",
            u(&s["spool"]["messages"]),
            "",
        );
        gauge(
            "spool_bytes",
            "Accounted spool bytes",
            u(&s["spool"]["bytes"]),
            "",
        );
        gauge(
            "spool_duplicates",
            "Redeliveries recognised",
            u(&s["spool"]["duplicates"]),
            "",
        );
        gauge(
            "spool_forced_out_unacked",
            "Unacked messages forced out by bounds",
            u(&s["spool"]["forced_out_unacked"]),
            "",
        );
        gauge(
            "pending_acks",
            "Frames waiting to become durable",
            u(&s["spool"]["pending_acks"]),
            "",
        );
        gauge(
            "consumers",
            "Connected consumers",
            u(&s["consumers"]["connected"]),
            "",
        );
        gauge(
            "taps_dropped_slow",
            "Taps disconnected for not keeping up",
            u(&s["consumers"]["taps_dropped_slow"]),
            "",
        );
        if let Some(groups) = s["groups"].as_object() {
            for (name, g) in groups {
                let l = format!("{{group=\"{name}\"}}");
                gauge(
                    "group_backlog",
                    "Messages not yet acked by the group",
                    u(&g["backlog"]),
                    &l,
                );
                gauge("group_members", "Members connected", u(&g["members"]), &l);
                gauge(
                    "group_parked",
                    "Messages parked since start",
                    u(&g["parked"]),
                    &l,
                );
            }
        }
        out
    }
}
