//! The status report: one typed document, produced by the daemon and read by everything that
//! shows its state: `dingtalk-streamd status` (human and `--json`), the `STATUS=` line of
//! `systemctl status`, `/metrics`, and the tests. Renaming a field is a compile error in each of
//! them, never a silently missing number. Nothing here can hold a secret: connections are named
//! by their short id, peers by host:port.

use crate::stream::socket::SocketReport;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// The whole report (`{"cmd":"status"}` on the control socket answers with it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The daemon's version.
    pub version: String,
    /// Its process id.
    pub pid: u32,
    /// When it started (RFC 3339).
    pub started: String,
    /// Seconds since then.
    pub uptime_s: u64,
    /// The link state's name (`connected`, `backing_off`, ...), also in `link.state`.
    pub state: String,
    /// The DingTalk link.
    pub link: LinkReport,
    /// The `STATUS=` one-liner.
    pub summary: String,
    /// When the last EVENT or CALLBACK frame was read (RFC 3339, milliseconds), `null` before
    /// the first since start.
    #[serde(default)]
    pub last_inbound: Option<String>,
    /// Its age in milliseconds.
    #[serde(default)]
    pub last_inbound_age_ms: Option<u64>,
    /// Serving connections replaced since start, by cause (`pong_timeout`,
    /// `server_disconnect`, `eof`, ...).
    #[serde(default)]
    pub reconnects: BTreeMap<String, u64>,
    /// Connection attempts that failed since start, by cause (`ticket_503`, `tcp_timeout`, ...).
    #[serde(default)]
    pub connect_failures: BTreeMap<String, u64>,
    /// Ticket requests since start, by outcome (`ok`, `503`, `401`, `timeout`, ...).
    #[serde(default)]
    pub ticket_requests: BTreeMap<String, u64>,
    /// What became of the messages since start.
    #[serde(default)]
    pub messages: MessagesReport,
    /// The address `/metrics` is served on, when `metrics.listen` is set and bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// Frame counters.
    pub stream: StreamReport,
    /// The spool.
    pub spool: SpoolReport,
    /// Consumer connections.
    pub consumers: ConsumersReport,
    /// Consumer groups by name (a sink's group too: `sink:<name>`).
    pub groups: BTreeMap<String, GroupReport>,
    /// Sinks (destinations beyond this host) by name: `nats`, `webhook:0`, ...
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkReport>,
    /// Callback ACKs waiting for a consumer's response.
    pub callbacks_held: u64,
}

/// The DingTalk link.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkReport {
    /// `starting`, `connecting`, `connected`, `backing_off`, `credentials_rejected`, `stopped`.
    pub state: String,
    /// Why the last connection or attempt ended.
    pub last_cause: Option<String>,
    /// When the link entered its current state (RFC 3339): connected, or not connected since.
    #[serde(default)]
    pub state_since: Option<String>,
    /// The last round trip of our WebSocket ping, milliseconds; `null` before the first pong.
    #[serde(default)]
    pub ping_rtt_ms: Option<f64>,
    /// Connections opened since start.
    pub connections_opened: u64,
    /// Server `disconnect` handovers since start.
    pub handovers: u64,
    /// Connected or connecting since (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// The same, epoch milliseconds (connected only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
    /// The connection's short id (`c7`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    /// The gateway's host:port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The connection's TCP options as the kernel reports them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<SocketReport>,
    /// The attempt under way or that failed (connecting, backing off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// When the next attempt starts (RFC 3339; backing off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Milliseconds until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
    /// Why it is backing off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

/// Messages since start, from DingTalk to the consumers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MessagesReport {
    /// EVENT and CALLBACK frames received.
    pub received: u64,
    /// Stored in the spool (the first time each was received).
    pub stored: u64,
    /// ACK frames written to DingTalk (a redelivery is ACKed again).
    pub acked: u64,
    /// Redeliveries recognised: ACKed, not stored or delivered again.
    pub duplicates: u64,
    /// Lines handed to consumers: group deliveries (redeliveries included) and tap lines.
    pub delivered: u64,
    /// Parked by groups after `consumers.max_deliveries`.
    pub parked: u64,
}

/// Frame counters since start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamReport {
    /// EVENT and CALLBACK frames received.
    pub frames_in: u64,
    /// Frames received by type (`EVENT`, `CALLBACK`, `SYSTEM`, `unknown`).
    #[serde(default)]
    pub frames_by_type: BTreeMap<String, u64>,
    /// ACK frames written.
    pub acks_sent: u64,
    /// SYSTEM pings answered.
    pub pings_answered: u64,
    /// Frames skipped as malformed.
    pub malformed_frames: u64,
    /// Times a reader paused because the spool had enough to commit.
    pub reader_pauses: u64,
    /// Time readers spent paused, milliseconds.
    pub reader_paused_ms: u64,
    /// Connections given up because no commit succeeded for `limits.commit_stall`.
    pub stalls: u64,
}

/// The spool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpoolReport {
    /// Commits fail: nothing is ACKed.
    pub degraded: bool,
    /// ... because the disk is full (else another error: see `last_error`).
    #[serde(default)]
    pub disk_full: bool,
    /// The last commit error while degraded.
    pub last_error: Option<String>,
    /// Frames read and not yet durable.
    pub pending_acks: u64,
    /// Messages stored since start.
    pub stored: u64,
    /// Redeliveries recognised since start.
    pub duplicates: u64,
    /// Commits of messages since start.
    pub batches: u64,
    /// Unacked messages forced out by the bounds since start.
    pub forced_out_unacked: u64,
    /// Messages in the spool.
    pub messages: u64,
    /// Accounted bytes (messages and dedupe keys).
    pub bytes: u64,
    /// Dedupe keys held.
    pub dedupe_keys: u64,
    /// The oldest seq stored (0: none).
    pub oldest_seq: u64,
    /// When the oldest message was stored (RFC 3339), `null` when the spool holds none.
    #[serde(default)]
    pub oldest_stored: Option<String>,
    /// Its age in seconds.
    #[serde(default)]
    pub oldest_age_s: Option<u64>,
    /// The newest seq ever assigned.
    pub newest_seq: u64,
    /// Parked (group, message) pairs.
    pub parked: u64,
    /// Database and WAL size on disk.
    pub file_bytes: u64,
    /// Why the figures above are missing, if they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_error: Option<String>,
}

/// Consumer connections.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConsumersReport {
    /// Connected now (taps and members).
    pub connected: u64,
    /// Taps now.
    pub taps: u64,
    /// Lines handed to taps since start.
    pub tap_lines: u64,
    /// Taps cut off for not keeping up since start.
    pub taps_dropped_slow: u64,
    /// Connections refused at `limits.max_consumers` since start.
    pub refused: u64,
    /// Consumer lines answered with an error since start.
    pub bad_lines: u64,
}

/// One consumer group.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupReport {
    /// Listed in `groups:`; else ad-hoc (created by a hello, expires without members).
    #[serde(default)]
    pub configured: bool,
    /// Milliseconds until an ad-hoc group without members is removed (`consumers.adhoc_ttl`
    /// after its last member left); absent while it has members or when it is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_ms: Option<u64>,
    /// Connected members.
    pub members: u64,
    /// Delivered and not yet acked.
    pub in_flight: u64,
    /// Waiting for redelivery.
    pub retry: u64,
    /// Every seq up to this is acked or parked.
    pub cursor: u64,
    /// Messages not yet acked: newest seq minus cursor.
    pub backlog: u64,
    /// Deliveries since start.
    pub delivered: u64,
    /// Redeliveries since start.
    pub redelivered: u64,
    /// Acks since start.
    pub acked: u64,
    /// Parked since start.
    pub parked: u64,
    /// The parked messages still in the spool.
    pub parked_seqs: Vec<u64>,
    /// Messages a spool bound forced out before the group had them done, since start.
    #[serde(default)]
    pub forced_out: u64,
}

/// One sink. Nothing here can hold a secret: the target has no credentials nor query, and
/// errors come from the destination's answers, never from the config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SinkReport {
    /// `nats` or `webhook`.
    pub kind: String,
    /// Where it delivers: the NATS servers or the webhook URL.
    pub target: String,
    /// The group it reads the spool through.
    pub group: String,
    /// Connected to NATS now; for a webhook, its last request succeeded (or none failed yet).
    pub connected: bool,
    /// Messages stored and not yet delivered: newest seq minus the group's cursor.
    pub backlog: u64,
    /// Every seq up to this is delivered.
    pub cursor: u64,
    /// Messages the destination confirmed since start (duplicates included).
    pub published: u64,
    /// Of those, reported by JetStream as duplicates (published before, by another host or
    /// by this one before a restart).
    pub duplicates: u64,
    /// Messages the destination can never take (above its size limit), skipped.
    pub rejected: u64,
    /// Failed attempts since start, each retried.
    pub failures: u64,
    /// Messages a spool bound forced out before the sink delivered them, since start.
    pub forced_out: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
}

impl Report {
    /// True while a DingTalk connection is open (`status` exits 0).
    pub fn connected(&self) -> bool {
        self.state == "connected"
    }

    /// Messages not yet acked by the slowest group (0 with no groups).
    pub fn backlog(&self) -> u64 {
        self.groups.values().map(|g| g.backlog).max().unwrap_or(0)
    }
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
